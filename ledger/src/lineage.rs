//! Provenance of artifacts: what an artifact is, which step produced it, and its full ancestry.

use crate::error::{Error, Result};
use crate::event::{EventKind, Origin, StageRun};
use crate::hash::Hash;
use crate::ledger::Ledger;
use serde::Serialize;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt::Write;

/// How an artifact's bytes entered the ledger.
#[derive(Clone, Debug, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Provenance {
    File {
        path: String,
    },
    Config {
        path: String,
    },
    Output {
        seq: u64,
        output: String,
        step: Box<StepNode>,
    },
    Observation {
        source: String,
        request: String,
    },
}

#[derive(Clone, Debug, Serialize)]
pub struct ArtifactInfo {
    pub hash: String,
    pub size: u64,
    pub media_type: String,
    pub stored: bool,
    pub collected: bool,
    pub provenance: Provenance,
    pub tags: Vec<String>,
    /// The bundle (its BLAKE3) whose import brought the event that records this artifact,
    /// when that event is foreign: its provenance is the bundle's claim, not this ledger's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub imported_from: Option<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct StepNode {
    pub seq: u64,
    pub node: String,
    pub stage: String,
    pub version: u32,
    pub run_id: String,
    pub action_key: String,
    pub config: serde_json::Value,
    pub seed: u64,
    pub inputs: Vec<(String, String)>,
    pub outputs: Vec<(String, String)>,
    pub metrics: Vec<(String, f64)>,
    /// The bundle whose import brought this step, when it is foreign.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub imported_from: Option<String>,
}

impl StepNode {
    pub fn from_run(seq: u64, run: &StageRun) -> StepNode {
        StepNode {
            seq,
            node: run.node.clone(),
            stage: run.stage.clone(),
            version: run.version,
            run_id: run.run_id.to_hex(),
            action_key: run.action_key.to_hex(),
            config: serde_json::from_str(&run.config).unwrap_or(serde_json::Value::Null),
            seed: run.seed,
            inputs: run
                .inputs
                .iter()
                .map(|(n, h)| (n.clone(), h.to_hex()))
                .collect(),
            outputs: run
                .outputs
                .iter()
                .map(|o| (o.name.clone(), o.hash.to_hex()))
                .collect(),
            metrics: run.metrics.clone(),
            imported_from: None,
        }
    }
}

/// What `hash` is and where it came from.
pub fn describe(ledger: &Ledger, hash: &Hash) -> Result<ArtifactInfo> {
    describe_with(ledger, hash, &tags_by_target(ledger)?)
}

/// Every tag name, by the artifact it points at (read once for a whole lineage: a ledger may
/// hold thousands of tags).
fn tags_by_target(ledger: &Ledger) -> Result<HashMap<Hash, Vec<String>>> {
    let mut tags: HashMap<Hash, Vec<String>> = HashMap::new();
    for (name, target) in ledger.index().tags()? {
        tags.entry(target).or_default().push(name);
    }
    Ok(tags)
}

fn describe_with(
    ledger: &Ledger,
    hash: &Hash,
    tags: &HashMap<Hash, Vec<String>>,
) -> Result<ArtifactInfo> {
    let stored = ledger
        .introducer(hash)?
        .ok_or_else(|| Error::NotFound(format!("no artifact {hash} in the ledger")))?;
    let seq = stored.event.seq;
    let (kind, bundle) = stored.event.kind.into_claim();
    let imported_from = bundle.map(|b| b.to_hex());
    let (size, media_type, provenance) = match kind {
        EventKind::ArtifactAdded(a) => match a.origin {
            Origin::File { path } => (a.size, a.media_type, Provenance::File { path }),
            Origin::Config { path } => (a.size, a.media_type, Provenance::Config { path }),
        },
        EventKind::StageRun(run) => {
            let o = run
                .outputs
                .iter()
                .find(|o| o.hash == *hash)
                .expect("the index points at a run that produced it");
            (
                o.size,
                o.media_type.clone(),
                Provenance::Output {
                    seq,
                    output: o.name.clone(),
                    step: Box::new(StepNode {
                        imported_from: imported_from.clone(),
                        ..StepNode::from_run(seq, &run)
                    }),
                },
            )
        }
        EventKind::Observation(o) => (
            o.response_size,
            "application/octet-stream".into(),
            Provenance::Observation {
                source: o.source,
                request: o.request.to_hex(),
            },
        ),
        EventKind::RunStarted(r) => (
            0,
            "application/toml".into(),
            Provenance::Config {
                path: r.config_path,
            },
        ),
        other => {
            return Err(Error::Corrupt(format!(
                "index says event #{seq} ({}) introduced {hash}",
                other.name()
            )))
        }
    };
    let tags = tags.get(hash).cloned().unwrap_or_default();
    Ok(ArtifactInfo {
        hash: hash.to_hex(),
        size,
        media_type,
        stored: ledger.store().contains(hash),
        collected: ledger.index().is_collected(hash)?,
        provenance,
        tags,
        imported_from,
    })
}

/// The ancestry DAG of an artifact: every artifact and step it depends on.
#[derive(Clone, Debug, Serialize)]
pub struct Lineage {
    pub root: String,
    pub artifacts: BTreeMap<String, ArtifactInfo>,
    pub steps: BTreeMap<u64, StepNode>,
}

pub fn lineage(ledger: &Ledger, root: &Hash) -> Result<Lineage> {
    let mut artifacts = BTreeMap::new();
    let mut steps = BTreeMap::new();
    let mut queue = VecDeque::from([*root]);
    let tags = tags_by_target(ledger)?;
    while let Some(hash) = queue.pop_front() {
        if artifacts.contains_key(&hash.to_hex()) {
            continue;
        }
        let info = describe_with(ledger, &hash, &tags)?;
        if let Provenance::Output { seq, step, .. } = &info.provenance {
            if !steps.contains_key(seq) {
                for (_, input) in &step.inputs {
                    queue.push_back(Hash::from_hex(input).expect("hex from a hash"));
                }
                steps.insert(*seq, (**step).clone());
            }
        }
        artifacts.insert(hash.to_hex(), info);
    }
    Ok(Lineage {
        root: root.to_hex(),
        artifacts,
        steps,
    })
}

impl Lineage {
    /// An indented tree, each shared ancestor expanded once.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        let mut seen = std::collections::HashSet::new();
        self.text_artifact(&self.root, "", "", &mut seen, &mut out);
        out
    }

    fn text_artifact(
        &self,
        hash: &str,
        label: &str,
        indent: &str,
        seen: &mut std::collections::HashSet<String>,
        out: &mut String,
    ) {
        let a = &self.artifacts[hash];
        let what = match &a.provenance {
            Provenance::File { path } => format!("file {path}"),
            Provenance::Config { path } => format!("config {path}"),
            Provenance::Output { output, step, .. } => {
                format!(
                    "output `{output}` of {} ({} v{})",
                    step.node, step.stage, step.version
                )
            }
            Provenance::Observation { source, .. } => format!("{source} observation"),
        };
        let missing = if a.stored { "" } else { " [not stored]" };
        let foreign = a.imported_from.as_deref().map_or(String::new(), |b| {
            format!(" [imported from bundle {}]", &b[..12])
        });
        let _ = writeln!(
            out,
            "{label}{} {} {}{missing}{foreign}",
            &hash[..12],
            what,
            human_size(a.size)
        );
        if let Provenance::Output { seq, .. } = &a.provenance {
            if !seen.insert(hash.to_string()) {
                let _ = writeln!(out, "{indent}   (ancestry shown above)");
                return;
            }
            let step = &self.steps[seq];
            let _ = writeln!(
                out,
                "{indent}└─ step #{seq}: {} ({} v{}), action {}",
                step.node,
                step.stage,
                step.version,
                &step.action_key[..12]
            );
            let n = step.inputs.len();
            for (i, (name, input)) in step.inputs.iter().enumerate() {
                let last = i + 1 == n;
                let branch = if last { "└─ " } else { "├─ " };
                let child = format!("{indent}   {}", if last { "   " } else { "│  " });
                self.text_artifact(
                    input,
                    &format!("{indent}   {branch}{name}: "),
                    &child,
                    seen,
                    out,
                );
            }
        }
    }

    /// Graphviz DOT: artifacts as ellipses, steps as boxes.
    pub fn to_dot(&self) -> String {
        let mut out =
            String::from("digraph lineage {\n  rankdir=LR;\n  node [fontname=\"monospace\"];\n");
        for (hash, a) in &self.artifacts {
            let label = match &a.provenance {
                Provenance::File { path } | Provenance::Config { path } => path.clone(),
                Provenance::Output { output, .. } => output.clone(),
                Provenance::Observation { source, .. } => source.clone(),
            };
            let _ = writeln!(
                out,
                "  \"a{}\" [shape=ellipse,label=\"{}\\n{}\"{}];",
                hash,
                escape(&label),
                &hash[..12],
                if *hash == self.root {
                    ",penwidth=2"
                } else {
                    ""
                }
            );
        }
        for (seq, s) in &self.steps {
            let _ = writeln!(
                out,
                "  \"s{seq}\" [shape=box,style=rounded,label=\"{} ({} v{})\\n#{seq}\"];",
                escape(&s.node),
                escape(&s.stage),
                s.version
            );
            for (name, input) in &s.inputs {
                let _ = writeln!(
                    out,
                    "  \"a{input}\" -> \"s{seq}\" [label=\"{}\"];",
                    escape(name)
                );
            }
            for (_, output) in &s.outputs {
                if self.artifacts.contains_key(output) {
                    let _ = writeln!(out, "  \"s{seq}\" -> \"a{output}\";");
                }
            }
        }
        out.push_str("}\n");
        out
    }
}

fn escape(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"")
}

pub fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}
