//! `ledger ablate FILE`: run every arm (a variant experiment) of an ablation in one ledger and
//! tabulate the metrics it names, arm by arm.
//!
//! ```toml
//! [ablation]                      # optional
//! name = "midtrain"               # default: the file's stem
//!
//! [[arm]]
//! name = "full"
//! config = "configs/full.toml"    # relative to this file
//!
//! [[arm]]
//! name = "no-midtrain"
//! config = "ablations/no_midtrain.toml"
//!
//! [[metric]]
//! label = "held-out loss"         # the column title (default "<node>.<name>")
//! node = "sft"                    # a node id of the arms' configs
//! name = "heldout_loss"           # a metric recorded on that node's stage run
//! ```
//!
//! Every arm runs through `ledger::runner::run`, exactly as `ledger run` would run its config,
//! so a step the arms share (same stage, config, inputs and seed) executes once and is answered
//! from the run cache for the others. Every config is loaded and every metric checked against
//! them before anything is written.

use anyhow::{bail, Context, Result};
use ledger::config::{ConfigError, Experiment};
use ledger::runner::{self, Outcome, RunOptions, RunReport};
use ledger::stage::Registry;
use ledger::Ledger;
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use toml::Spanned;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAblation {
    ablation: Option<RawHeader>,
    #[serde(default)]
    arm: Vec<Spanned<RawArm>>,
    #[serde(default)]
    metric: Vec<Spanned<RawMetric>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHeader {
    name: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawArm {
    name: Spanned<String>,
    config: Spanned<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMetric {
    label: Option<Spanned<String>>,
    node: Spanned<String>,
    name: String,
}

/// A parsed ablation whose arms' configs are all loaded and valid.
#[derive(Debug)]
pub struct Ablation {
    pub path: PathBuf,
    pub name: String,
    pub arms: Vec<Arm>,
    pub metrics: Vec<Metric>,
}

#[derive(Debug)]
pub struct Arm {
    pub name: String,
    /// The config path as written in the file, and the experiment it holds.
    pub config: String,
    pub experiment: Experiment,
}

#[derive(Debug, Clone, Serialize)]
pub struct Metric {
    pub label: String,
    pub node: String,
    pub name: String,
}

#[derive(Debug, Serialize)]
pub struct AblationReport {
    pub ablation: String,
    pub file: String,
    pub metrics: Vec<Metric>,
    pub arms: Vec<ArmReport>,
    /// Metrics no arm recorded, with what the node did record.
    pub warnings: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct ArmReport {
    pub name: String,
    pub config: String,
    pub run_id: String,
    /// One per metric, in the file's order; `None` where the arm has no such node or its
    /// step recorded no such metric.
    pub values: Vec<MetricValue>,
    /// Node ids answered from the run cache, and executed, in execution order.
    pub cached: Vec<String>,
    pub executed: Vec<String>,
    pub run: RunReport,
}

#[derive(Debug, Serialize)]
pub struct MetricValue {
    pub label: String,
    pub value: Option<f64>,
}

impl Ablation {
    /// Reads and checks an ablation file: every arm's config loads, names are unique, and
    /// every metric's node is a node of at least one arm. Errors name the file, the line and
    /// the arm or metric.
    pub fn load(path: &Path, registry: &Registry) -> Result<Ablation> {
        let source = std::fs::read_to_string(path)
            .with_context(|| format!("{}: cannot read the ablation file", path.display()))?;
        let line_of = |offset: usize| ledger::config::line_of(&source, offset);
        let err = |line: Option<usize>, key: Option<String>, message: String| ConfigError {
            file: path.to_path_buf(),
            line,
            key,
            message,
        };
        let raw: RawAblation = ledger::config::parse_toml(path, &source)?;
        let name = raw.ablation.and_then(|h| h.name).unwrap_or_else(|| {
            path.file_stem()
                .map_or("ablation".into(), |s| s.to_string_lossy().into_owned())
        });
        if raw.arm.is_empty() {
            bail!(err(None, None, "no [[arm]] entries".into()));
        }
        if raw.metric.is_empty() {
            bail!(err(None, None, "no [[metric]] entries".into()));
        }
        let base = path.parent().unwrap_or(Path::new("."));
        let mut arms: Vec<Arm> = Vec::new();
        for (i, arm) in raw.arm.iter().enumerate() {
            let arm = arm.get_ref();
            let at = |v: &Spanned<String>| Some(line_of(v.span().start));
            let key = |k: &str| Some(format!("arm[{i}].{k}"));
            let name = arm.name.get_ref();
            if name.trim().is_empty() {
                bail!(err(
                    at(&arm.name),
                    key("name"),
                    "an arm needs a non-empty name".into()
                ));
            }
            if arms.iter().any(|a| &a.name == name) {
                bail!(err(
                    at(&arm.name),
                    key("name"),
                    format!("duplicate arm name `{name}`")
                ));
            }
            let config = base.join(arm.config.get_ref());
            let experiment = Experiment::load(&config, registry).map_err(|e| {
                err(
                    at(&arm.config),
                    key("config"),
                    format!("arm `{name}`: its config does not load: {e}"),
                )
            })?;
            arms.push(Arm {
                name: name.clone(),
                config: arm.config.get_ref().clone(),
                experiment,
            });
        }
        let mut metrics: Vec<Metric> = Vec::new();
        for (i, m) in raw.metric.iter().enumerate() {
            let table_line = Some(line_of(m.span().start));
            let m = m.get_ref();
            let node = m.node.get_ref();
            let label = m
                .label
                .as_ref()
                .map_or_else(|| format!("{node}.{}", m.name), |l| l.get_ref().clone());
            if metrics.iter().any(|x| x.label == label) {
                bail!(err(
                    m.label
                        .as_ref()
                        .map_or(table_line, |l| Some(line_of(l.span().start))),
                    Some(format!("metric[{i}].label")),
                    format!("duplicate metric label `{label}`")
                ));
            }
            let in_some_arm = arms
                .iter()
                .any(|a| a.experiment.nodes.iter().any(|n| &n.id == node));
            if !in_some_arm {
                let nodes: BTreeSet<&str> = arms
                    .iter()
                    .flat_map(|a| a.experiment.nodes.iter().map(|n| n.id.as_str()))
                    .collect();
                bail!(err(
                    Some(line_of(m.node.span().start)),
                    Some(format!("metric[{i}].node")),
                    format!(
                        "metric `{label}`: no arm has a node `{node}` (their nodes: {})",
                        nodes.into_iter().collect::<Vec<_>>().join(", ")
                    )
                ));
            }
            metrics.push(Metric {
                label,
                node: node.clone(),
                name: m.name.clone(),
            });
        }
        Ok(Ablation {
            path: path.to_path_buf(),
            name,
            arms,
            metrics,
        })
    }
}

/// Runs every arm, in the file's order, in `ledger`, and collects the metrics.
pub fn ablate(
    ledger: &mut Ledger,
    registry: &Registry,
    ablation: &Ablation,
    options: &RunOptions,
) -> Result<AblationReport> {
    let mut arms = Vec::new();
    for arm in &ablation.arms {
        let run = runner::run(ledger, registry, &arm.experiment, options).with_context(|| {
            format!(
                "{}: arm `{}` ({})",
                ablation.path.display(),
                arm.name,
                arm.experiment.path.display()
            )
        })?;
        let values = ablation
            .metrics
            .iter()
            .map(|m| MetricValue {
                label: m.label.clone(),
                value: run
                    .steps
                    .iter()
                    .find(|s| s.node == m.node)
                    .and_then(|s| s.metrics.iter().find(|(n, _)| *n == m.name))
                    .map(|(_, v)| *v),
            })
            .collect();
        let nodes = |cached: bool| {
            run.steps
                .iter()
                .filter(|s| matches!(s.outcome, Outcome::Cached { .. }) == cached)
                .map(|s| s.node.clone())
                .collect()
        };
        arms.push(ArmReport {
            name: arm.name.clone(),
            config: arm.config.clone(),
            run_id: run.run_id.clone(),
            values,
            cached: nodes(true),
            executed: nodes(false),
            run,
        });
    }
    let mut warnings = Vec::new();
    for (i, m) in ablation.metrics.iter().enumerate() {
        if arms.iter().any(|a| a.values[i].value.is_some()) {
            continue;
        }
        let recorded: BTreeSet<&str> = arms
            .iter()
            .flat_map(|a| a.run.steps.iter().filter(|s| s.node == m.node))
            .flat_map(|s| s.metrics.iter().map(|(n, _)| n.as_str()))
            .collect();
        warnings.push(format!(
            "{}: metric `{}`: no arm's step `{}` recorded a metric `{}` (it records: {})",
            ablation.path.display(),
            m.label,
            m.node,
            m.name,
            if recorded.is_empty() {
                "nothing".to_string()
            } else {
                recorded.into_iter().collect::<Vec<_>>().join(", ")
            }
        ));
    }
    Ok(AblationReport {
        ablation: ablation.name.clone(),
        file: ablation.path.display().to_string(),
        metrics: ablation.metrics.clone(),
        arms,
        warnings,
    })
}

impl AblationReport {
    /// The table: one row per arm, one column per metric (`-` where missing), then which steps
    /// were cached and which executed.
    pub fn to_table(&self) -> String {
        let mut header = vec!["arm".to_string()];
        header.extend(self.metrics.iter().map(|m| m.label.clone()));
        header.push("steps".to_string());
        let rows: Vec<Vec<String>> = self
            .arms
            .iter()
            .map(|a| {
                let mut row = vec![a.name.clone()];
                row.extend(
                    a.values
                        .iter()
                        .map(|v| v.value.map_or("-".to_string(), ledger::display::metric)),
                );
                let list = |v: &[String]| {
                    if v.is_empty() {
                        "-".to_string()
                    } else {
                        v.join(", ")
                    }
                };
                row.push(format!(
                    "cached: {}; executed: {}",
                    list(&a.cached),
                    list(&a.executed)
                ));
                row
            })
            .collect();
        let widths: Vec<usize> = (0..header.len())
            .map(|c| {
                std::iter::once(&header)
                    .chain(&rows)
                    .map(|r| r[c].chars().count())
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let mut out = String::new();
        for row in std::iter::once(&header).chain(&rows) {
            let last = row.len() - 1;
            let cells: Vec<String> = row
                .iter()
                .enumerate()
                .map(|(c, cell)| {
                    if c == last {
                        cell.clone()
                    } else if c == 0 {
                        format!("{cell:<w$}", w = widths[c])
                    } else {
                        format!("{cell:>w$}", w = widths[c])
                    }
                })
                .collect();
            out.push_str(&cells.join("  "));
            out.push('\n');
        }
        out
    }
}
