//! `ledger diff A B`: compare two runs (stage by stage) or two artifacts (their producing steps).

use anyhow::{bail, Result};
use ledger::event::{EventKind, StageRun};
use ledger::lineage::{describe, human_size, lineage};
use ledger::{Hash, Ledger};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

#[derive(Debug, Serialize)]
pub struct DiffReport {
    pub kind: &'static str,
    pub a: String,
    pub b: String,
    pub steps: Vec<StepDiff>,
    pub only_in_a: Vec<String>,
    pub only_in_b: Vec<String>,
    /// For artifacts: size and media type of each side.
    pub artifacts: Option<[(u64, String); 2]>,
    /// Data flow between nodes (producer → consumer), from either side.
    pub edges: Vec<(String, String)>,
}

#[derive(Debug, Serialize)]
pub struct StepDiff {
    pub node: String,
    pub stage: [String; 2],
    pub version: [u32; 2],
    pub seed: [u64; 2],
    pub same_action: bool,
    /// Config keys (dotted paths) whose values differ: key → [a, b].
    pub config: BTreeMap<String, [serde_json::Value; 2]>,
    pub inputs: BTreeMap<String, [Option<String>; 2]>,
    pub outputs: BTreeMap<String, [Option<String>; 2]>,
    pub metrics: BTreeMap<String, [Option<f64>; 2]>,
}

impl StepDiff {
    pub fn identical(&self) -> bool {
        self.same_action && self.outputs.values().all(|[a, b]| a == b)
    }
}

pub fn diff(ledger: &Ledger, a: &Hash, b: &Hash) -> Result<DiffReport> {
    let (a_run, b_run) = (ledger.index().is_run(a)?, ledger.index().is_run(b)?);
    match (a_run, b_run) {
        (true, true) => diff_runs(ledger, a, b),
        (false, false) => diff_artifacts(ledger, a, b),
        _ => bail!("compare a run with a run, or an artifact with an artifact"),
    }
}

fn stage_runs(ledger: &Ledger, run: &Hash) -> Result<Vec<StageRun>> {
    let mut out = Vec::new();
    for seq in ledger.index().run_events(run)? {
        if let EventKind::StageRun(s) = ledger.event(seq)?.event.kind {
            out.push(s);
        }
    }
    Ok(out)
}

fn diff_runs(ledger: &Ledger, a: &Hash, b: &Hash) -> Result<DiffReport> {
    let left = stage_runs(ledger, a)?;
    let right = stage_runs(ledger, b)?;
    Ok(align("runs", a, b, &left, &right, None))
}

/// Two artifacts: align their whole lineages by node id.
fn diff_artifacts(ledger: &Ledger, a: &Hash, b: &Hash) -> Result<DiffReport> {
    let (ia, ib) = (describe(ledger, a)?, describe(ledger, b)?);
    let steps_of = |h: &Hash| -> Result<Vec<StageRun>> {
        let graph = lineage(ledger, h)?;
        let mut out = Vec::new();
        for seq in graph.steps.keys() {
            if let EventKind::StageRun(s) = ledger.event(*seq)?.event.kind {
                out.push(s);
            }
        }
        Ok(out)
    };
    let (left, right) = (steps_of(a)?, steps_of(b)?);
    Ok(align(
        "artifacts",
        a,
        b,
        &left,
        &right,
        Some([(ia.size, ia.media_type), (ib.size, ib.media_type)]),
    ))
}

fn align(
    kind: &'static str,
    a: &Hash,
    b: &Hash,
    left: &[StageRun],
    right: &[StageRun],
    artifacts: Option<[(u64, String); 2]>,
) -> DiffReport {
    let mut steps = Vec::new();
    let mut only_in_a = Vec::new();
    for l in left {
        match right.iter().find(|r| r.node == l.node) {
            Some(r) => steps.push(step_diff(l, r)),
            None => only_in_a.push(l.node.clone()),
        }
    }
    let only_in_b = right
        .iter()
        .filter(|r| !left.iter().any(|l| l.node == r.node))
        .map(|r| r.node.clone())
        .collect();
    let mut edges = BTreeSet::new();
    for side in [left, right] {
        for consumer in side {
            for (_, input) in &consumer.inputs {
                for producer in side
                    .iter()
                    .filter(|p| p.outputs.iter().any(|o| o.hash == *input))
                {
                    edges.insert((producer.node.clone(), consumer.node.clone()));
                }
            }
        }
    }
    DiffReport {
        kind,
        a: a.to_hex(),
        b: b.to_hex(),
        steps,
        only_in_a,
        only_in_b,
        artifacts,
        edges: edges.into_iter().collect(),
    }
}

fn step_diff(l: &StageRun, r: &StageRun) -> StepDiff {
    let parse = |s: &str| serde_json::from_str(s).unwrap_or(serde_json::Value::Null);
    let (mut cl, mut cr) = (BTreeMap::new(), BTreeMap::new());
    flatten("", &parse(&l.config), &mut cl);
    flatten("", &parse(&r.config), &mut cr);
    let mut config = BTreeMap::new();
    for key in cl.keys().chain(cr.keys()) {
        let (x, y) = (
            cl.get(key).cloned().unwrap_or(serde_json::Value::Null),
            cr.get(key).cloned().unwrap_or(serde_json::Value::Null),
        );
        if x != y {
            config.insert(key.clone(), [x, y]);
        }
    }
    StepDiff {
        node: l.node.clone(),
        stage: [l.stage.clone(), r.stage.clone()],
        version: [l.version, r.version],
        seed: [l.seed, r.seed],
        same_action: l.action_key == r.action_key,
        config,
        inputs: side_by_side(
            l.inputs.iter().map(|(n, h)| (n.clone(), h.to_hex())),
            r.inputs.iter().map(|(n, h)| (n.clone(), h.to_hex())),
        ),
        outputs: side_by_side(
            l.outputs.iter().map(|o| (o.name.clone(), o.hash.to_hex())),
            r.outputs.iter().map(|o| (o.name.clone(), o.hash.to_hex())),
        ),
        metrics: side_by_side(l.metrics.iter().cloned(), r.metrics.iter().cloned()),
    }
}

fn side_by_side<V: Clone>(
    a: impl Iterator<Item = (String, V)>,
    b: impl Iterator<Item = (String, V)>,
) -> BTreeMap<String, [Option<V>; 2]> {
    let mut out: BTreeMap<String, [Option<V>; 2]> = BTreeMap::new();
    for (k, v) in a {
        out.entry(k).or_insert([None, None])[0] = Some(v);
    }
    for (k, v) in b {
        out.entry(k).or_insert([None, None])[1] = Some(v);
    }
    out
}

fn flatten(prefix: &str, v: &serde_json::Value, out: &mut BTreeMap<String, serde_json::Value>) {
    match v {
        serde_json::Value::Object(map) if !map.is_empty() => {
            for (k, v) in map {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(&key, v, out);
            }
        }
        other => {
            out.insert(prefix.to_string(), other.clone());
        }
    }
}

impl DiffReport {
    /// Graphviz DOT of the aligned lineages: shared steps grey, divergent steps orange,
    /// steps on one side only blue (A) or green (B).
    pub fn to_dot(&self) -> String {
        let mut out = format!(
            "digraph diff {{\n  rankdir=LR;\n  node [shape=box,style=\"rounded,filled\",fontname=\"monospace\"];\n  label=\"A = {}  B = {}\";\n",
            &self.a[..12],
            &self.b[..12]
        );
        for s in &self.steps {
            let (color, note) = if s.identical() {
                ("lightgrey", "shared")
            } else {
                ("orange", "diverges")
            };
            out.push_str(&format!(
                "  \"{}\" [fillcolor={color},label=\"{}\\n{} ({note})\"];\n",
                s.node, s.node, s.stage[0]
            ));
        }
        for (nodes, color, side) in [
            (&self.only_in_a, "lightblue", "A"),
            (&self.only_in_b, "palegreen", "B"),
        ] {
            for n in nodes {
                out.push_str(&format!(
                    "  \"{n}\" [fillcolor={color},label=\"{n}\\nonly in {side}\"];\n"
                ));
            }
        }
        for (from, to) in &self.edges {
            out.push_str(&format!("  \"{from}\" -> \"{to}\";\n"));
        }
        out.push_str("}\n");
        out
    }
}

fn short(h: &Option<String>) -> &str {
    h.as_deref().map_or("-", |s| &s[..12.min(s.len())])
}

impl fmt::Display for DiffReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "diff of {}: A = {}  B = {}",
            self.kind,
            &self.a[..12],
            &self.b[..12]
        )?;
        if let Some([(sa, ma), (sb, mb)]) = &self.artifacts {
            writeln!(
                f,
                "  A: {} {ma}\n  B: {} {mb}",
                human_size(*sa),
                human_size(*sb)
            )?;
            if self.steps.is_empty() {
                writeln!(
                    f,
                    "  (not both stage outputs: no producing steps to compare)"
                )?;
            }
        }
        let mut first = true;
        for s in &self.steps {
            if s.identical() {
                writeln!(
                    f,
                    "= {} ({}): same action, same outputs",
                    s.node, s.stage[0]
                )?;
                continue;
            }
            let tag = if std::mem::take(&mut first) {
                "  <- first divergence"
            } else {
                ""
            };
            writeln!(f, "~ {} ({}){tag}", s.node, s.stage[0])?;
            if s.stage[0] != s.stage[1] || s.version[0] != s.version[1] {
                writeln!(
                    f,
                    "    stage: {} v{} | {} v{}",
                    s.stage[0], s.version[0], s.stage[1], s.version[1]
                )?;
            }
            if s.seed[0] != s.seed[1] {
                writeln!(f, "    seed: {} | {}", s.seed[0], s.seed[1])?;
            }
            for (k, [a, b]) in &s.config {
                writeln!(f, "    config {k}: {a} | {b}")?;
            }
            for (k, [a, b]) in &s.inputs {
                if a != b {
                    writeln!(f, "    input {k}: {} | {}", short(a), short(b))?;
                }
            }
            for (k, [a, b]) in &s.outputs {
                let same = if a == b { "=" } else { "≠" };
                writeln!(f, "    output {k}: {} {same} {}", short(a), short(b))?;
            }
            for (k, [a, b]) in &s.metrics {
                let num = |v: &Option<f64>| v.map_or("-".to_string(), |x| format!("{x}"));
                let delta = match (a, b) {
                    (Some(x), Some(y)) if x != y => format!("  (Δ {:+})", y - x),
                    _ => String::new(),
                };
                writeln!(f, "    metric {k}: {} | {}{delta}", num(a), num(b))?;
            }
        }
        for n in &self.only_in_a {
            writeln!(f, "- {n}: only in A")?;
        }
        for n in &self.only_in_b {
            writeln!(f, "+ {n}: only in B")?;
        }
        Ok(())
    }
}
