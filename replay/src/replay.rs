//! `ledger replay HASH`: rebuild an artifact by re-executing its lineage from recorded inputs,
//! configs, seeds and observations — offline — and compare every rebuilt output with its
//! recorded hash.
//!
//! Which steps run (in log order, which is topological):
//! - the step that produced the target, always;
//! - every ancestor step whose outputs are no longer stored (after `gc`, or on another
//!   machine), so a missing artifact is restored — verified bytes are put back in the store;
//! - with `check`, every step of the lineage (Nix's `--check`);
//! - with `from`, the steps of that node or stage and everything downstream of them.
//!
//! Intact ancestors are reused. `repeat` re-executes the chosen steps N times.

use crate::explain::{explain, Divergence};
use anyhow::{anyhow, bail, Context, Result};
use ledger::event::{EventKind, StageRun};
use ledger::lineage::{describe, lineage, Provenance, StepNode};
use ledger::manifest::{Manifest, Part};
use ledger::observe::Mode;
use ledger::runner::{keyed_inputs, split_unit_config, PART_PREFIX};
use ledger::stage::{Job, Registry};
use ledger::store::BlobStore;
use ledger::{Hash, Ledger};
use serde::Serialize;
use std::collections::BTreeSet;
use std::fmt;
use std::path::{Path, PathBuf};

#[derive(Debug, Serialize, PartialEq, Eq, Clone, Copy)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    BitIdentical,
    NotReproducible,
}

#[derive(Debug, Clone, Default)]
pub struct ReplayOptions {
    /// Re-execute every step of the lineage, not only the target's.
    pub check: bool,
    /// Re-execute this many times (at least 1).
    pub repeat: u32,
    /// Re-execute the steps of this node id or stage name and everything downstream.
    pub from: Option<String>,
    /// Also perform recorded external actions again (rollout commands in fresh containers)
    /// and compare them with the record, timings normalized. Outputs still come from the
    /// record.
    pub reexecute: bool,
    /// Where re-executed steps find external sources named by relative paths in their config
    /// (a git clone). Default: the directory of the run's config as recorded, for this
    /// ledger's own runs; an empty scratch directory for imported ones (a bundle's recorded
    /// paths are never used as directories here).
    pub workdir: Option<PathBuf>,
}

/// What a step's stage reported about its re-performed actions (`--reexecute`).
#[derive(Debug, Serialize)]
pub struct ActionCheck {
    pub actions: u64,
    pub equivalent: u64,
    pub differing: u64,
}

#[derive(Debug, Serialize)]
pub struct OutputCheck {
    pub name: String,
    pub recorded: String,
    pub rebuilt: Option<String>,
    pub identical: bool,
    /// How the rebuilt output differs, for people (the text of `divergence`).
    pub first_difference: Option<String>,
    /// How the rebuilt output differs: tensors of a checkpoint, records of scores, fields of
    /// JSON, or the first differing byte.
    pub divergence: Option<Divergence>,
}

#[derive(Debug, Serialize)]
pub struct StepReplay {
    pub step: StepNode,
    /// 1-based repetition.
    pub round: u32,
    pub outputs: Vec<OutputCheck>,
    pub identical: bool,
    /// `--reexecute`: the stage's re-performed actions compared with the record.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub actions: Option<ActionCheck>,
    pub seconds: f64,
}

#[derive(Debug, Serialize)]
pub struct ReplayReport {
    pub target: String,
    pub verdict: Verdict,
    /// Re-executed steps, in order; empty for a source artifact (checked by rehashing).
    pub steps: Vec<StepReplay>,
    /// Artifacts that were missing and are stored again, verified.
    pub restored: Vec<String>,
    /// The first step whose outputs differ, if any.
    pub first_divergence: Option<u64>,
    pub seconds: f64,
}

pub fn replay(
    ledger: &Ledger,
    registry: &Registry,
    target: &Hash,
    options: &ReplayOptions,
) -> Result<ReplayReport> {
    let started = std::time::Instant::now();
    let info = describe(ledger, target)?;
    if !matches!(info.provenance, Provenance::Output { .. }) {
        // A source artifact has nothing to re-execute: its bytes are its definition.
        let (actual, _) = ledger.store().rehash(target).with_context(|| {
            format!(
                "source artifact {} cannot be rebuilt: only its original bytes define it",
                target.short()
            )
        })?;
        let identical = actual == *target;
        return Ok(ReplayReport {
            target: target.to_hex(),
            verdict: verdict(identical),
            steps: Vec::new(),
            restored: Vec::new(),
            first_divergence: None,
            seconds: started.elapsed().as_secs_f64(),
        });
    }

    let graph = lineage(ledger, target)?;
    let producer = |hash: &str| match &graph.artifacts[hash].provenance {
        Provenance::Output { seq, .. } => Some(*seq),
        _ => None,
    };
    let target_step = producer(&target.to_hex()).expect("target is an output");
    let mut chosen: BTreeSet<u64> = BTreeSet::from([target_step]);
    // A node of several units is re-derived by its units: replaying an output of it
    // re-executes every unit of the node it came from (a summary's rollouts, a manifest's
    // shards), and checks that the parts compose to what was recorded.
    let node_of = |s: &StepNode| {
        (
            s.run_id.clone(),
            s.node.split('/').next().unwrap_or("").to_string(),
        )
    };
    let target_node = node_of(&graph.steps[&target_step]);
    chosen.extend(
        graph
            .steps
            .iter()
            .filter(|(_, s)| node_of(s) == target_node)
            .map(|(seq, _)| *seq),
    );
    for (_, part) in graph.steps[&target_step]
        .inputs
        .iter()
        .filter(|(n, _)| n.starts_with(PART_PREFIX))
    {
        if let Some(seq) = producer(part) {
            chosen.insert(seq);
        }
    }
    if options.check {
        chosen.extend(graph.steps.keys().copied());
    }
    if let Some(from) = &options.from {
        let seeds: Vec<u64> = graph
            .steps
            .iter()
            .filter(|(_, s)| &s.node == from || &s.stage == from)
            .map(|(seq, _)| *seq)
            .collect();
        if seeds.is_empty() {
            bail!("no step of this lineage has node id or stage `{from}`");
        }
        // Downstream closure within the lineage (log order is topological).
        let mut tainted: BTreeSet<String> = BTreeSet::new();
        for (seq, step) in &graph.steps {
            let hit = seeds.contains(seq) || step.inputs.iter().any(|(_, h)| tainted.contains(h));
            if hit {
                chosen.insert(*seq);
                tainted.extend(step.outputs.iter().map(|(_, h)| h.clone()));
            }
        }
    }
    // Ancestors whose bytes are gone must run again for their dependants to run.
    for (hash, artifact) in graph.artifacts.iter().rev() {
        if !artifact.stored {
            match producer(hash) {
                Some(seq) => {
                    chosen.insert(seq);
                }
                None => bail!(
                    "source artifact {} is not stored and cannot be rebuilt; `ledger add` it again",
                    &hash[..12]
                ),
            }
        }
    }

    let scratch_dir = tempfile::Builder::new()
        .prefix("replay-")
        .tempdir_in(ledger.dir().join("tmp"))?;
    let mut steps = Vec::new();
    let mut restored = Vec::new();
    let mut first_divergence = None;
    'rounds: for round in 1..=options.repeat.max(1) {
        for seq in &chosen {
            let scratch = BlobStore::new(&scratch_dir.path().join(format!("{round}-{seq}")));
            scratch.create_dirs()?;
            let (run, imported_from) = stage_run(ledger, *seq)?;
            if run.inputs.iter().any(|(n, _)| n.starts_with(PART_PREFIX)) {
                let mut result = recompose(ledger, *seq, &run)?;
                result.step.imported_from = imported_from.map(|b| b.to_hex());
                result.round = round;
                let identical = result.identical;
                steps.push(result);
                if !identical {
                    first_divergence = Some(*seq);
                    break 'rounds;
                }
                continue;
            }
            let workdir = match (&options.workdir, imported_from) {
                (Some(dir), _) => dir.clone(),
                (None, Some(_)) => {
                    let empty = scratch_dir.path().join(format!("{round}-{seq}-workdir"));
                    std::fs::create_dir_all(&empty)?;
                    empty
                }
                (None, None) => recorded_workdir(ledger, &run.run_id)?,
            };
            let mut result = reexecute(
                ledger,
                registry,
                *seq,
                &run,
                &scratch,
                &workdir,
                options.reexecute,
            )?;
            result.step.imported_from = imported_from.map(|b| b.to_hex());
            result.round = round;
            for check in result.outputs.iter().filter(|o| o.identical) {
                let hash = Hash::from_hex(&check.recorded).expect("hex");
                if !ledger.store().contains(&hash) {
                    ledger.store().adopt(&scratch, &hash)?;
                    restored.push(check.recorded.clone());
                }
            }
            let identical = result.identical;
            steps.push(result);
            if !identical {
                first_divergence = Some(*seq);
                break 'rounds;
            }
        }
    }
    Ok(ReplayReport {
        target: target.to_hex(),
        verdict: verdict(first_divergence.is_none()),
        steps,
        restored,
        first_divergence,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// The step recorded at `seq`, and the bundle it was imported with if it is foreign.
fn stage_run(ledger: &Ledger, seq: u64) -> Result<(StageRun, Option<Hash>)> {
    match ledger.event(seq)?.event.kind.into_claim() {
        (EventKind::StageRun(run), bundle) => Ok((run, bundle)),
        (other, _) => bail!("event #{seq} is a {} event, not a stage run", other.name()),
    }
}

/// Re-executes one recorded step into `scratch` and compares its outputs.
fn reexecute(
    ledger: &Ledger,
    registry: &Registry,
    seq: u64,
    run: &StageRun,
    scratch: &BlobStore,
    workdir: &Path,
    perform_again: bool,
) -> Result<StepReplay> {
    let started = std::time::Instant::now();
    let stage = registry.get(&run.stage).ok_or_else(|| {
        anyhow!(
            "stage `{}` is not in this build (known: {})",
            run.stage,
            registry.names().join(", ")
        )
    })?;
    if stage.version() != run.version {
        bail!(
            "step #{seq} was made by {} v{}, but this build has v{}: it cannot re-execute that version",
            run.stage,
            run.version,
            stage.version()
        );
    }
    // An audit re-executes from verified inputs only: a damaged input is named as such
    // rather than blamed on the step.
    for (name, input) in &run.inputs {
        if !ledger.store().contains(input) {
            bail!(
                "input `{name}` ({}) of step #{seq} is not in the store",
                input.short()
            );
        }
        let (actual, _) = ledger.store().rehash(input)?;
        if actual != *input {
            if let Some(source) = observed_source(ledger, name)? {
                bail!(
                    "the recorded {source} response {} (input `{name}`) of step #{seq} is damaged: its bytes hash to {}; run `ledger verify`",
                    input.short(),
                    actual.short()
                );
            }
            bail!(
                "input `{name}` ({}) of step #{seq} is damaged: its bytes hash to {}; run `ledger verify`",
                input.short(),
                actual.short()
            );
        }
    }
    let config: serde_json::Value = serde_json::from_str(&run.config)
        .with_context(|| format!("event #{seq} holds a config that is not JSON"))?;
    let (config, unit) = split_unit_config(config);
    let mode = if perform_again {
        Mode::Reexecute
    } else {
        Mode::Replay
    };
    let job = Job {
        node: run.node.split('/').next().unwrap_or(&run.node).to_string(),
        unit,
        config,
        seed: run.seed,
        inputs: keyed_inputs(&run.inputs),
        workdir: workdir.to_path_buf(),
    };
    let (finished, reexecution) = ledger::exec::replay_stage(ledger, stage, job, scratch, mode)
        .with_context(|| format!("re-executing step #{seq} ({} `{}`)", run.stage, run.node))?;
    let rebuilt = finished.outputs;
    let actions = perform_again.then_some(ActionCheck {
        actions: reexecution.actions,
        equivalent: reexecution.equivalent,
        differing: reexecution.differing,
    });

    let mut outputs = Vec::new();
    for recorded in &run.outputs {
        let again = rebuilt.iter().find(|o| o.name == recorded.name);
        let identical = again.is_some_and(|o| o.hash == recorded.hash);
        let divergence = match again {
            None => Some(Divergence::NotProduced),
            Some(_) if identical => None,
            Some(o) => Some(explain(
                ledger.store(),
                &recorded.hash,
                scratch,
                &o.hash,
                &recorded.media_type,
            )),
        };
        outputs.push(OutputCheck {
            name: recorded.name.clone(),
            recorded: recorded.hash.to_hex(),
            rebuilt: again.map(|o| o.hash.to_hex()),
            identical,
            first_difference: divergence.as_ref().map(|d| d.to_string()),
            divergence,
        });
    }
    Ok(StepReplay {
        step: StepNode::from_run(seq, run),
        round: 0,
        identical: outputs.iter().all(|o| o.identical)
            && actions.as_ref().is_none_or(|a| a.differing == 0),
        outputs,
        actions,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// The source of the observation an `obs/<request>` input names (`None` for other inputs).
fn observed_source(ledger: &Ledger, name: &str) -> Result<Option<String>> {
    let Some(request) = name
        .strip_prefix(ledger::runner::OBSERVED_PREFIX)
        .and_then(Hash::from_hex)
    else {
        return Ok(None);
    };
    let seq = match ledger.index().observation(&request)? {
        Some(seq) => Some(seq),
        None => ledger.index().foreign_observation(&request)?,
    };
    let Some(seq) = seq else { return Ok(None) };
    Ok(match ledger.event(seq)?.event.kind.into_claim().0 {
        EventKind::Observation(o) => Some(o.source),
        _ => None,
    })
}

/// Checks a node of several units: each manifest it recorded must be what its recorded parts
/// compose to (the parts themselves are re-derived by replaying their units).
fn recompose(ledger: &Ledger, seq: u64, run: &StageRun) -> Result<StepReplay> {
    let started = std::time::Instant::now();
    let mut outputs = Vec::new();
    for recorded in &run.outputs {
        let prefix = format!("{PART_PREFIX}{}/", recorded.name);
        let parts: Vec<Part> = run
            .inputs
            .iter()
            .filter_map(|(n, h)| {
                n.strip_prefix(&prefix).map(|unit| {
                    let size = ledger.store().size(h).unwrap_or(0);
                    Part {
                        unit: unit.to_string(),
                        hash: *h,
                        size,
                    }
                })
            })
            .collect();
        let rebuilt = match Manifest::read(ledger.store(), &recorded.hash)? {
            // The manifest as its parts make it, in its recorded media type.
            Some(m) => Some(Hash::of(&Manifest::new(&m.media_type, parts).encode())),
            // A unit's output passed through as the node's: nothing to compose.
            None => Some(recorded.hash),
        };
        let identical = rebuilt == Some(recorded.hash);
        outputs.push(OutputCheck {
            name: recorded.name.clone(),
            recorded: recorded.hash.to_hex(),
            rebuilt: rebuilt.map(|h| h.to_hex()),
            identical,
            first_difference: (!identical)
                .then(|| "the recorded parts do not compose to the recorded manifest".to_string()),
            divergence: None,
        });
    }
    Ok(StepReplay {
        step: StepNode::from_run(seq, run),
        round: 0,
        identical: outputs.iter().all(|o| o.identical),
        outputs,
        actions: None,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// The directory of the config this ledger's run was started from, as the run saw it
/// (relative to the current directory), which is where external sources such as a git clone
/// are found again. (Only a local `RunStarted` counts: see `ReplayOptions::workdir`.)
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

impl fmt::Display for ReplayReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.steps.is_empty() {
            writeln!(
                f,
                "{} is a source artifact; rehashed its bytes",
                &self.target[..12]
            )?;
        }
        for s in &self.steps {
            writeln!(
                f,
                "replayed step #{} {} ({} v{}) in {:.2}s",
                s.step.seq, s.step.node, s.step.stage, s.step.version, s.seconds
            )?;
            for o in &s.outputs {
                let mark = if o.identical { "ok  " } else { "DIFF" };
                writeln!(
                    f,
                    "  {mark} {:<16} recorded {}  rebuilt {}",
                    o.name,
                    &o.recorded[..12],
                    o.rebuilt.as_deref().map_or("-", |r| &r[..12])
                )?;
                for line in o.first_difference.iter().flat_map(|d| d.lines()) {
                    writeln!(f, "       {line}")?;
                }
            }
            if let Some(a) = &s.actions {
                let mark = if a.differing == 0 { "ok  " } else { "DIFF" };
                writeln!(
                    f,
                    "  {mark} re-performed {} recorded actions in fresh containers: {} equivalent, {} differing (timings normalized)",
                    a.actions, a.equivalent, a.differing
                )?;
            }
        }
        for r in &self.restored {
            writeln!(f, "restored {r}")?;
        }
        match (self.verdict, self.first_divergence) {
            (Verdict::BitIdentical, _) => write!(f, "bit-identical"),
            (Verdict::NotReproducible, Some(seq)) => {
                write!(f, "NOT reproducible: first divergence at step #{seq}")
            }
            (Verdict::NotReproducible, None) => write!(f, "NOT reproducible"),
        }
    }
}
