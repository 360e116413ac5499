//! Experiment configs: TOML files listing stages, their parameters and which earlier outputs
//! they consume. Every error names the file, the line and the key.
//!
//! ```toml
//! [experiment]
//! name = "quickstart"
//! seed = 7                       # default seed of every stage
//!
//! [[stage]]
//! id = "sources"                 # node id, unique in the file
//! uses = "ingest"                # which stage implementation
//! paths = ["../README.md"]       # every other key is a parameter of the stage
//!
//! [[stage]]
//! id = "corpus"
//! uses = "pack"
//! inputs = { files = "sources.files" }   # input name -> "<node id>.<output name>"
//! ```

use crate::stage::Registry;
use serde::Deserialize;
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};
use toml::Spanned;

#[derive(Debug)]
pub struct ConfigError {
    pub file: PathBuf,
    pub line: Option<usize>,
    pub key: Option<String>,
    pub message: String,
}

/// The 1-based line of a byte offset in a TOML source (one question: for many, build a
/// [`LineIndex`] once).
pub fn line_of(source: &str, offset: usize) -> usize {
    source[..offset.min(source.len())].matches('\n').count() + 1
}

/// Where each line of a source starts, so the line of any offset is a binary search (a config
/// of 10,000 stages asks it tens of thousands of times).
pub struct LineIndex {
    starts: Vec<usize>,
}

impl LineIndex {
    pub fn new(source: &str) -> LineIndex {
        let starts = std::iter::once(0)
            .chain(source.match_indices('\n').map(|(i, _)| i + 1))
            .collect();
        LineIndex { starts }
    }

    /// The 1-based line of a byte offset.
    pub fn line(&self, offset: usize) -> usize {
        self.starts.partition_point(|start| *start <= offset)
    }

    /// How many lines the source has.
    pub fn lines(&self) -> usize {
        self.starts.len()
    }
}

/// Parses a TOML file into `T`; a syntax or shape error names the file, the line and the key
/// (`a.b[2].c`, without the private segment `toml::Spanned` adds to the path).
pub fn parse_toml<T: serde::de::DeserializeOwned>(
    path: &Path,
    source: &str,
) -> Result<T, ConfigError> {
    let err = |line: Option<usize>, key: Option<String>, message: String| ConfigError {
        file: path.to_path_buf(),
        line,
        key,
        message,
    };
    let document = toml::Deserializer::parse(source).map_err(|e| {
        err(
            e.span().map(|s| line_of(source, s.start)),
            None,
            e.message().to_string(),
        )
    })?;
    serde_path_to_error::deserialize(document).map_err(|e| {
        let key = e
            .path()
            .to_string()
            .replace(".$__serde_spanned_private_value", "");
        let inner = e.into_inner();
        err(
            inner.span().map(|s| line_of(source, s.start)),
            (key != "." && !key.is_empty()).then_some(key),
            inner.message().to_string(),
        )
    })
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        if let Some(key) = &self.key {
            write!(f, ": key `{key}`")?;
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for ConfigError {}

/// A parameter problem found by a stage's `check`.
#[derive(Debug)]
pub struct ParamError {
    /// Dotted path of the offending key, when known.
    pub key: Option<String>,
    pub message: String,
}

impl ParamError {
    pub fn new(key: impl Into<String>, message: impl Into<String>) -> ParamError {
        ParamError {
            key: Some(key.into()),
            message: message.into(),
        }
    }
}

/// Deserializes a stage's parameter table into its typed form, naming the failing key.
/// Use `#[serde(deny_unknown_fields)]` on `T` so misspelt keys are errors.
pub fn parse_params<T: serde::de::DeserializeOwned>(params: toml::Table) -> Result<T, ParamError> {
    let known: Vec<String> = params.keys().cloned().collect();
    serde_path_to_error::deserialize(toml::Value::Table(params)).map_err(|e| {
        let path = e.path().to_string();
        let message = e.inner().message().to_string();
        let key = if path == "." || path.is_empty() {
            // Unknown or missing fields are reported at the table; find the key in the message.
            known
                .into_iter()
                .find(|k| message.contains(&format!("`{k}`")))
                .or_else(|| {
                    message
                        .split('`')
                        .nth(1)
                        .filter(|_| message.starts_with("missing field"))
                        .map(str::to_string)
                })
        } else {
            Some(path)
        };
        ParamError { key, message }
    })
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    experiment: Option<RawExperiment>,
    #[serde(default)]
    executor: Option<RawExecutor>,
    #[serde(default)]
    stage: Vec<BTreeMap<String, Spanned<toml::Value>>>,
}

/// `[executor.*]`: where units run; never part of an action key.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawExecutor {
    #[serde(default)]
    slurm: Option<crate::slurm::SlurmConfig>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawExperiment {
    name: Option<String>,
    seed: Option<u64>,
}

/// A parsed, validated experiment, in execution order.
#[derive(Debug, Clone)]
pub struct Experiment {
    pub path: PathBuf,
    pub name: String,
    pub source: String,
    /// Nodes in a topological order (config order where the DAG leaves a choice).
    pub nodes: Vec<Node>,
    /// `[executor.slurm]`: defaults for Slurm jobs (used with `--executor slurm`).
    pub slurm: crate::slurm::SlurmConfig,
}

#[derive(Debug, Clone)]
pub struct Node {
    pub id: String,
    pub stage: String,
    pub version: u32,
    pub seed: u64,
    /// Canonical parameters, defaults filled in.
    pub config: serde_json::Value,
    pub inputs: BTreeMap<String, InputRef>,
    /// `[stage.resources]`: what its Slurm jobs ask for (never part of an action key).
    pub resources: crate::slurm::Resources,
    /// Line of the stage's first key, and of its `inputs` key (for error messages).
    pub line: usize,
    pub inputs_line: usize,
}

/// Where a stage input comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InputRef {
    /// `"<node id>.<output name>"`: an output of another stage of this experiment.
    Output { node: String, output: String },
    /// `"@<hash prefix or tag>"`: an artifact already in the ledger.
    Artifact(String),
}

impl InputRef {
    fn node(&self) -> Option<&str> {
        match self {
            InputRef::Output { node, .. } => Some(node),
            InputRef::Artifact(_) => None,
        }
    }
}

const RESERVED: [&str; 5] = ["id", "uses", "inputs", "seed", "resources"];

impl Experiment {
    pub fn load(path: &Path, registry: &Registry) -> Result<Experiment, ConfigError> {
        let err = |line: Option<usize>, message: String| ConfigError {
            file: path.to_path_buf(),
            line,
            key: None,
            message,
        };
        let bytes = std::fs::read(path).map_err(|e| err(None, format!("cannot read: {e}")))?;
        let source = String::from_utf8(bytes).map_err(|e| {
            let at = e.utf8_error().valid_up_to();
            let line = e.as_bytes()[..at].iter().filter(|b| **b == b'\n').count() + 1;
            err(
                Some(line),
                format!("not valid UTF-8 (byte {at} of the file); TOML files are UTF-8"),
            )
        })?;
        Experiment::parse(path, source, registry)
    }

    pub fn parse(
        path: &Path,
        source: String,
        registry: &Registry,
    ) -> Result<Experiment, ConfigError> {
        let lines = LineIndex::new(&source);
        let line_of = |offset: usize| lines.line(offset);
        let err = |line: Option<usize>, key: Option<&str>, message: String| ConfigError {
            file: path.to_path_buf(),
            line,
            key: key.map(str::to_string),
            message,
        };
        let raw: RawConfig = parse_toml(path, &source)?;
        let raw_executor = raw.executor;
        let experiment = raw.experiment.unwrap_or(RawExperiment {
            name: None,
            seed: None,
        });
        let name = experiment.name.unwrap_or_else(|| {
            path.file_stem()
                .map_or("experiment".into(), |s| s.to_string_lossy().into_owned())
        });
        let default_seed = experiment.seed.unwrap_or(0);
        if raw.stage.is_empty() {
            return Err(err(
                Some(lines.lines()),
                None,
                "no [[stage]] entries: an experiment needs at least one stage".into(),
            ));
        }

        let mut nodes = Vec::new();
        let mut lines = HashMap::new();
        for table in raw.stage {
            let first_line = table
                .values()
                .map(|v| line_of(v.span().start))
                .min()
                .unwrap_or(1);
            let key_line = |k: &str| table.get(k).map(|v| line_of(v.span().start));
            let string_of = |k: &str| -> Result<Option<String>, ConfigError> {
                match table.get(k).map(|v| v.get_ref()) {
                    None => Ok(None),
                    Some(toml::Value::String(s)) => Ok(Some(s.clone())),
                    Some(other) => Err(err(
                        key_line(k),
                        Some(k),
                        format!("expected a string, found {}", other.type_str()),
                    )),
                }
            };
            let id = string_of("id")?.ok_or_else(|| {
                err(
                    Some(first_line),
                    Some("id"),
                    "every [[stage]] needs an `id`".into(),
                )
            })?;
            if id.is_empty()
                || !id
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
            {
                return Err(err(
                    key_line("id"),
                    Some("id"),
                    format!("`{id}` is not a valid id (letters, digits, `_` and `-`)"),
                ));
            }
            if lines.contains_key(&id) {
                return Err(err(
                    key_line("id"),
                    Some("id"),
                    format!("duplicate stage id `{id}` (first at line {})", lines[&id]),
                ));
            }
            let uses = string_of("uses")?.ok_or_else(|| {
                err(
                    Some(first_line),
                    Some("uses"),
                    format!("stage `{id}` needs `uses = \"<stage>\"`"),
                )
            })?;
            let Some(stage) = registry.get(&uses) else {
                return Err(err(
                    key_line("uses"),
                    Some("uses"),
                    format!(
                        "unknown stage `{uses}`; known stages: {}",
                        registry.names().join(", ")
                    ),
                ));
            };
            let seed = match table.get("seed").map(|v| v.get_ref()) {
                None => default_seed,
                Some(toml::Value::Integer(i)) if *i >= 0 => *i as u64,
                Some(other) => {
                    return Err(err(
                        key_line("seed"),
                        Some("seed"),
                        format!("expected a non-negative integer, found {other}"),
                    ))
                }
            };

            let mut inputs = BTreeMap::new();
            if let Some(v) = table.get("inputs") {
                let line = Some(line_of(v.span().start));
                let toml::Value::Table(t) = v.get_ref() else {
                    return Err(err(
                        line,
                        Some("inputs"),
                        "expected a table of input name = \"<stage id>.<output>\"".into(),
                    ));
                };
                for (name, reference) in t {
                    let key = format!("inputs.{name}");
                    let accepted = stage
                        .inputs()
                        .iter()
                        .any(|i| i.name == name || i.name == crate::stage::ANY_INPUT);
                    if !accepted {
                        return Err(err(
                            line,
                            Some(&key),
                            format!(
                                "stage `{uses}` has no input `{name}`; its inputs: {}",
                                list(stage.inputs().iter().map(|i| i.name))
                            ),
                        ));
                    }
                    let reference = match reference.as_str() {
                        Some(r) if r.len() > 1 && r.starts_with('@') => {
                            Some(InputRef::Artifact(r[1..].to_string()))
                        }
                        Some(r) => r.split_once('.').map(|(node, output)| InputRef::Output {
                            node: node.to_string(),
                            output: output.to_string(),
                        }),
                        None => None,
                    };
                    let Some(reference) = reference else {
                        return Err(err(
                            line,
                            Some(&key),
                            "expected \"<stage id>.<output name>\" or \"@<artifact hash or tag>\""
                                .into(),
                        ));
                    };
                    inputs.insert(name.to_string(), reference);
                }
            }
            for spec in stage.inputs() {
                if spec.required
                    && spec.name != crate::stage::ANY_INPUT
                    && !inputs.contains_key(spec.name)
                {
                    return Err(err(
                        Some(first_line),
                        Some("inputs"),
                        format!("stage `{id}` ({uses}) needs input `{}`", spec.name),
                    ));
                }
            }

            let resources = match table.get("resources") {
                None => crate::slurm::Resources::default(),
                Some(v) => v
                    .get_ref()
                    .clone()
                    .try_into()
                    .map_err(|e: toml::de::Error| {
                        err(
                            key_line("resources"),
                            Some("resources"),
                            format!("stage `{id}`: {}", e.message()),
                        )
                    })?,
            };
            let params: toml::Table = table
                .iter()
                .filter(|(k, _)| !RESERVED.contains(&k.as_str()))
                .map(|(k, v)| (k.clone(), v.get_ref().clone()))
                .collect();
            let config = stage.check(params).map_err(|e| {
                // The parameter's own key: `paths` of `paths[0]`, `git` of `git.repo`.
                let top = e
                    .key
                    .as_deref()
                    .map(|k| k.split(['.', '[']).next().unwrap_or(k));
                let line = top.and_then(key_line).or(Some(first_line));
                err(
                    line,
                    e.key.as_deref(),
                    format!("stage `{id}` ({uses}): {}", e.message),
                )
            })?;
            lines.insert(id.clone(), first_line);
            nodes.push(Node {
                id,
                stage: uses,
                version: stage.version(),
                seed,
                config,
                inputs,
                resources,
                line: first_line,
                inputs_line: key_line("inputs").unwrap_or(first_line),
            });
        }

        // Every reference must name an earlier-or-later node and one of its outputs.
        let by_id: HashMap<&str, &Node> = nodes.iter().map(|n| (n.id.as_str(), n)).collect();
        for node in &nodes {
            for (input, reference) in &node.inputs {
                let InputRef::Output { node: from, output } = reference else {
                    continue;
                };
                let key = format!("inputs.{input}");
                let Some(producer) = by_id.get(from.as_str()) else {
                    return Err(err(
                        Some(node.inputs_line),
                        Some(&key),
                        format!(
                            "stage `{}` reads `{from}.{output}`, but no stage has id `{from}`",
                            node.id
                        ),
                    ));
                };
                let outputs = registry
                    .get(&producer.stage)
                    .expect("checked")
                    .outputs_for(&producer.config);
                if !outputs.iter().any(|o| o == output) {
                    return Err(err(
                        Some(node.inputs_line),
                        Some(&key),
                        format!(
                            "stage `{from}` ({}) has no output `{output}`; its outputs: {}",
                            producer.stage,
                            list(outputs.iter().map(String::as_str))
                        ),
                    ));
                }
            }
        }

        let inputs_lines: HashMap<String, usize> = nodes
            .iter()
            .map(|n| (n.id.clone(), n.inputs_line))
            .collect();
        let nodes = topological_order(nodes).map_err(|cycle| {
            err(
                inputs_lines.get(&cycle[0]).copied(),
                Some("inputs"),
                format!("the stages form a cycle: {}", cycle.join(" -> ")),
            )
        })?;
        Ok(Experiment {
            path: path.to_path_buf(),
            name,
            source,
            nodes,
            slurm: raw_executor.and_then(|e| e.slurm).unwrap_or_default(),
        })
    }

    pub fn base_dir(&self) -> &Path {
        self.path.parent().unwrap_or(Path::new("."))
    }
}

fn list<'a>(items: impl Iterator<Item = &'a str>) -> String {
    let v: Vec<_> = items.collect();
    if v.is_empty() {
        "none".into()
    } else {
        v.join(", ")
    }
}

/// Kahn's algorithm, stable in config order: of the nodes whose inputs are all produced, the
/// first in the file runs first. O((nodes + edges) log nodes). On a cycle, returns the ids
/// along it.
fn topological_order(nodes: Vec<Node>) -> Result<Vec<Node>, Vec<String>> {
    use std::collections::BTreeSet;
    let index: HashMap<&str, usize> = nodes
        .iter()
        .enumerate()
        .map(|(i, n)| (n.id.as_str(), i))
        .collect();
    // For each node, the distinct earlier-needed producers; for each producer, its consumers.
    // (In input-name order, each producer once: the cycle report follows the first.)
    let deps: Vec<Vec<usize>> = nodes
        .iter()
        .map(|n| {
            let mut d: Vec<usize> = Vec::new();
            for from in n.inputs.values().filter_map(InputRef::node) {
                if !d.contains(&index[from]) {
                    d.push(index[from]);
                }
            }
            d
        })
        .collect();
    let mut consumers: Vec<Vec<usize>> = vec![Vec::new(); nodes.len()];
    for (i, d) in deps.iter().enumerate() {
        for &from in d {
            consumers[from].push(i);
        }
    }
    let mut waiting: Vec<usize> = deps.iter().map(Vec::len).collect();
    let mut ready: BTreeSet<usize> = (0..nodes.len()).filter(|i| waiting[*i] == 0).collect();
    let mut order = Vec::with_capacity(nodes.len());
    while let Some(i) = ready.pop_first() {
        order.push(i);
        for &c in &consumers[i] {
            waiting[c] -= 1;
            if waiting[c] == 0 {
                ready.insert(c);
            }
        }
    }
    if order.len() < nodes.len() {
        // Follow unmet dependencies from the first unscheduled node until one repeats.
        let mut path = vec![(0..nodes.len())
            .find(|i| waiting[*i] > 0)
            .expect("unscheduled")];
        loop {
            let current = *path.last().expect("non-empty");
            let next = *deps[current]
                .iter()
                .find(|d| waiting[**d] > 0)
                .expect("a node left unscheduled has an unscheduled dependency");
            if let Some(start) = path.iter().position(|p| *p == next) {
                let mut cycle: Vec<String> =
                    path[start..].iter().map(|i| nodes[*i].id.clone()).collect();
                cycle.push(nodes[next].id.clone());
                return Err(cycle);
            }
            path.push(next);
        }
    }
    let mut slots: Vec<Option<Node>> = nodes.into_iter().map(Some).collect();
    Ok(order
        .into_iter()
        .map(|i| slots[i].take().expect("each node once"))
        .collect())
}
