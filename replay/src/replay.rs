//! `ledger replay HASH`: re-execute the step that produced an artifact from its recorded
//! inputs, config, seed and observations, offline, and compare every output bit for bit.

use anyhow::{anyhow, bail, Context, Result};
use ledger::event::EventKind;
use ledger::lineage::{describe, Provenance, StepNode};
use ledger::stage::{Mode, Registry, StageContext};
use ledger::store::BlobStore;
use ledger::{Hash, Ledger};
use serde::Serialize;
use std::fmt;
use std::path::{Path, PathBuf};

#[derive(Debug, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    BitIdentical,
    NotReproducible,
}

#[derive(Debug, Serialize)]
pub struct OutputCheck {
    pub name: String,
    pub recorded: String,
    pub rebuilt: Option<String>,
    pub identical: bool,
    /// Where the bytes first differ, when they do.
    pub first_difference: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct ReplayReport {
    pub target: String,
    pub verdict: Verdict,
    /// The step re-executed; `None` for a source artifact, which is checked by rehashing.
    pub step: Option<StepNode>,
    pub outputs: Vec<OutputCheck>,
    pub seconds: f64,
}

pub fn replay(ledger: &Ledger, registry: &Registry, target: &Hash) -> Result<ReplayReport> {
    let started = std::time::Instant::now();
    let info = describe(ledger, target)?;
    let Provenance::Output { seq, .. } = info.provenance else {
        // A source artifact has nothing to re-execute: its bytes are its definition.
        let (actual, _) = ledger
            .store()
            .rehash(target)
            .with_context(|| format!("source artifact {} cannot be rebuilt", target.short()))?;
        let identical = actual == *target;
        return Ok(ReplayReport {
            target: target.to_hex(),
            verdict: verdict(identical),
            step: None,
            outputs: vec![OutputCheck {
                name: "source".into(),
                recorded: target.to_hex(),
                rebuilt: Some(actual.to_hex()),
                identical,
                first_difference: None,
            }],
            seconds: started.elapsed().as_secs_f64(),
        });
    };
    let EventKind::StageRun(run) = ledger.event(seq)?.event.kind else {
        bail!("event #{seq} is not a stage run");
    };
    let stage = registry.get(&run.stage).ok_or_else(|| {
        anyhow!(
            "stage `{}` is not in this build (known: {})",
            run.stage,
            registry.names().join(", ")
        )
    })?;
    if stage.version() != run.version {
        bail!(
            "{} was made by {} v{}, but this build has v{}: it cannot re-execute that version",
            target.short(),
            run.stage,
            run.version,
            stage.version()
        );
    }
    for (name, input) in &run.inputs {
        if !ledger.store().contains(input) {
            bail!(
                "input `{name}` ({}) of step #{seq} is not in the store; replay it first",
                input.short()
            );
        }
    }
    let scratch_dir = tempfile::Builder::new()
        .prefix("replay-")
        .tempdir_in(ledger.dir().join("tmp"))?;
    let scratch = BlobStore::new(scratch_dir.path());
    scratch.create_dirs()?;
    let workdir = recorded_workdir(ledger, &run.run_id)?;
    let config: serde_json::Value = serde_json::from_str(&run.config)
        .with_context(|| format!("event #{seq} holds a config that is not JSON"))?;
    let mut ctx = StageContext::new(
        Mode::Replay {
            ledger,
            scratch: &scratch,
        },
        &workdir,
        &run.node,
        config,
        run.seed,
        run.inputs.clone(),
        indicatif::ProgressBar::hidden(),
    );
    stage
        .execute(&mut ctx)
        .with_context(|| format!("re-executing step #{seq} ({} `{}`)", run.stage, run.node))?;
    let (rebuilt, _) = ctx.finish();

    let mut outputs = Vec::new();
    for recorded in &run.outputs {
        let again = rebuilt.iter().find(|o| o.name == recorded.name);
        let identical = again.is_some_and(|o| o.hash == recorded.hash);
        let first_difference = match again {
            None => Some("the re-execution did not produce this output".into()),
            Some(_) if identical => None,
            Some(o) => first_difference(ledger.store(), &recorded.hash, &scratch, &o.hash),
        };
        outputs.push(OutputCheck {
            name: recorded.name.clone(),
            recorded: recorded.hash.to_hex(),
            rebuilt: again.map(|o| o.hash.to_hex()),
            identical,
            first_difference,
        });
    }
    let all = outputs.iter().all(|o| o.identical);
    Ok(ReplayReport {
        target: target.to_hex(),
        verdict: verdict(all),
        step: Some(StepNode::from_run(seq, &run)),
        outputs,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// The directory of the config the run was started from, as the run saw it (relative to the
/// current directory), which is where external sources such as a git clone are found again.
fn recorded_workdir(ledger: &Ledger, run_id: &Hash) -> Result<PathBuf> {
    for seq in ledger.index().run_events(run_id)? {
        if let EventKind::RunStarted(r) = ledger.event(seq)?.event.kind {
            let dir = Path::new(&r.config_path)
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(Path::new("."));
            if dir.is_dir() {
                return Ok(dir.to_path_buf());
            }
        }
    }
    Ok(PathBuf::from("."))
}

fn verdict(identical: bool) -> Verdict {
    if identical {
        Verdict::BitIdentical
    } else {
        Verdict::NotReproducible
    }
}

/// The first differing line (for text) or byte offset.
fn first_difference(a_store: &BlobStore, a: &Hash, b_store: &BlobStore, b: &Hash) -> Option<String> {
    let (Ok(x), Ok(y)) = (a_store.read(a), b_store.read(b)) else {
        return Some("the recorded bytes are not in the store to compare".into());
    };
    let at = x.iter().zip(&y).position(|(p, q)| p != q).unwrap_or(x.len().min(y.len()));
    let line = x[..at].iter().filter(|&&c| c == b'\n').count() + 1;
    let show = |v: &[u8]| {
        let start = v[..at.min(v.len())]
            .iter()
            .rposition(|&c| c == b'\n')
            .map_or(0, |p| p + 1);
        let end = v[start..]
            .iter()
            .position(|&c| c == b'\n')
            .map_or(v.len(), |p| start + p);
        let text = String::from_utf8_lossy(&v[start..end.min(start + 160)]).into_owned();
        text
    };
    Some(format!(
        "byte {at} (line {line}), recorded {} bytes vs rebuilt {} bytes\n  recorded: {}\n  rebuilt:  {}",
        x.len(),
        y.len(),
        show(&x),
        show(&y)
    ))
}

impl fmt::Display for ReplayReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.step {
            Some(s) => writeln!(
                f,
                "replayed step #{} {} ({} v{}) for {}",
                s.seq,
                s.node,
                s.stage,
                s.version,
                &self.target[..12]
            )?,
            None => writeln!(f, "{} is a source artifact; rehashed its bytes", &self.target[..12])?,
        }
        for o in &self.outputs {
            let mark = if o.identical { "ok  " } else { "DIFF" };
            writeln!(
                f,
                "  {mark} {:<16} recorded {}  rebuilt {}",
                o.name,
                &o.recorded[..12],
                o.rebuilt.as_deref().map_or("-", |r| &r[..12])
            )?;
            if let Some(d) = &o.first_difference {
                writeln!(f, "       first difference at {d}")?;
            }
        }
        match self.verdict {
            Verdict::BitIdentical => write!(f, "bit-identical"),
            Verdict::NotReproducible => write!(f, "NOT reproducible"),
        }
    }
}
