//! Executes an experiment: config → plan (already ordered by `Experiment`) → units → executor
//! → events.
//!
//! For each node: resolve its inputs (earlier outputs and ingested external files), compute the
//! action key, and answer it from the run cache when a successful run with the same key exists
//! and its outputs are still stored. Otherwise the stage plans the node's units; each unit has
//! its own action key and is answered from the cache the same way, so a rerun after adding one
//! shard or instance, or after a kill, executes only the units it lacks. The rest run on the
//! executor's workers (`exec`); each finished unit is recorded at once (its outputs, metrics and
//! the observations it was answered with), then the node's outputs are composed (one unit's
//! output, or a manifest of many) and the node is recorded.

use crate::action::{action_key, canonical_json};
use crate::config::{Experiment, InputRef, Node};
use crate::error::{Error, Result};
use crate::event::{
    now_ms, ArtifactAdded, Environment, EventKind, Origin, Output, RunStarted, RunStatus, StageRun,
};
use crate::exec::{self, Done, Scheduler, Task};
use crate::hash::Hash;
use crate::ledger::Ledger;
use crate::manifest::{self, Manifest, Part};
use crate::observe::{Mode, Served};
use crate::plan::{Compose, Plan, PlanContext, Source, Unit, UnitSpec};
use crate::stage::{ExternalSource, Finished, Job, Registry, Stage};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::collections::HashMap;
use std::path::Path;
use std::time::Instant;

#[derive(Clone, Debug)]
pub struct RunOptions {
    /// Show progress bars on stderr.
    pub progress: bool,
    /// Units executing at once on this machine (at least 1; the local executor).
    pub jobs: usize,
    pub executor: Executor,
}

/// Where units run. Either gives the same outputs: what runs where never enters a key.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub enum Executor {
    /// Worker threads of this process.
    #[default]
    Local,
    /// Slurm array jobs (`[executor.slurm]`, `[stage.resources]`).
    Slurm,
}

impl Default for RunOptions {
    fn default() -> RunOptions {
        RunOptions {
            progress: false,
            jobs: default_jobs(),
            executor: Executor::Local,
        }
    }
}

/// One worker per core.
pub fn default_jobs() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

#[derive(Clone, Debug, serde::Serialize)]
pub enum Outcome {
    Executed,
    Cached { source_seq: u64 },
}

/// How a node's units went.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct UnitCounts {
    pub total: usize,
    pub executed: usize,
    pub cached: usize,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct StepReport {
    pub node: String,
    pub stage: String,
    pub outcome: Outcome,
    pub action_key: String,
    pub outputs: Vec<(String, String)>,
    pub metrics: Vec<(String, f64)>,
    pub seconds: f64,
    pub event_seq: u64,
    /// For a node of several units.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub units: Option<UnitCounts>,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct RunReport {
    pub run_id: String,
    pub experiment: String,
    pub steps: Vec<StepReport>,
}

/// The key of the config recorded for a unit: the node's config with the unit's id and
/// parameters under it (canonical JSON sorts it first).
pub const UNIT_KEY: &str = "$unit";
/// Input-name prefixes of what a step records beside its real inputs: the observations it was
/// answered with (`obs/<request>`), and the parts its manifests list (`part/<output>/<unit>`).
pub const OBSERVED_PREFIX: &str = "obs/";
pub const PART_PREFIX: &str = "part/";

/// The recorded config of a unit: the node's config with `$unit`.
pub fn unit_config(config: &serde_json::Value, unit: &Unit) -> serde_json::Value {
    let mut config = config.clone();
    if let serde_json::Value::Object(map) = &mut config {
        map.insert(
            UNIT_KEY.into(),
            serde_json::json!({ "id": unit.id, "params": unit.params }),
        );
    }
    config
}

/// A recorded config split back into the node's config and its unit, if it is a unit's.
pub fn split_unit_config(mut config: serde_json::Value) -> (serde_json::Value, Option<Unit>) {
    let unit = match &mut config {
        serde_json::Value::Object(map) => map
            .remove(UNIT_KEY)
            .and_then(|u| serde_json::from_value::<Unit>(u).ok()),
        _ => None,
    };
    (config, unit)
}

/// The inputs a step was keyed by, without what was recorded beside them.
pub fn keyed_inputs(inputs: &[(String, Hash)]) -> Vec<(String, Hash)> {
    inputs
        .iter()
        .filter(|(n, _)| !n.starts_with(OBSERVED_PREFIX) && !n.starts_with(PART_PREFIX))
        .cloned()
        .collect()
}

fn with_observed(
    mut inputs: Vec<(String, Hash)>,
    observed: &[(Hash, Hash)],
) -> Vec<(String, Hash)> {
    inputs.extend(
        observed
            .iter()
            .map(|(request, response)| (format!("{OBSERVED_PREFIX}{request}"), *response)),
    );
    inputs
}

pub fn run(
    ledger: &mut Ledger,
    registry: &Registry,
    experiment: &Experiment,
    options: &RunOptions,
) -> Result<RunReport> {
    let config_bytes = experiment.source.as_bytes();
    let (config_hash, config_size) = ledger.store().put_bytes(config_bytes)?;
    let run_id = {
        let mut h = blake3::Hasher::new();
        h.update(config_hash.as_bytes());
        h.update(&std::process::id().to_le_bytes());
        h.update(
            &std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos())
                .to_le_bytes(),
        );
        Hash::from(h.finalize())
    };
    let config_path = experiment.path.display().to_string();
    let mut header = Vec::new();
    if ledger.index().introducer(&config_hash)?.is_none() {
        header.push(EventKind::ArtifactAdded(ArtifactAdded {
            hash: config_hash,
            size: config_size,
            media_type: "application/toml".into(),
            origin: Origin::Config {
                path: config_path.clone(),
            },
        }));
    }
    header.push(EventKind::RunStarted(RunStarted {
        run_id,
        experiment: experiment.name.clone(),
        config: config_hash,
        config_path,
    }));
    ledger.append(header)?;

    let bars = MultiProgress::with_draw_target(if options.progress {
        ProgressDrawTarget::stderr()
    } else {
        ProgressDrawTarget::hidden()
    });
    let env = Environment::current();
    let mut produced: HashMap<(String, String), Hash> = HashMap::new();
    let mut steps = Vec::new();
    let total = experiment.nodes.len();

    for (i, node) in experiment.nodes.iter().enumerate() {
        let stage = registry
            .get(&node.stage)
            .ok_or_else(|| Error::Invalid(format!("unknown stage `{}`", node.stage)))?;
        let inputs = node_inputs(ledger, experiment, node, stage, &produced)?;
        let config = canonical_json(&node.config);
        let key = action_key(&node.stage, node.version, &config, &inputs, node.seed);

        let bar = bars.add(ProgressBar::new_spinner());
        bar.set_style(
            ProgressStyle::with_template("{prefix:.bold} {spinner} {msg} {wide_bar} {pos}/{len}")
                .expect("valid template"),
        );
        bar.set_prefix(format!("[{}/{total}] {} ({})", i + 1, node.id, node.stage));
        let started = Instant::now();
        let started_ms = now_ms();
        let record = |inputs: Vec<(String, Hash)>,
                      outputs: Vec<Output>,
                      metrics: Vec<(String, f64)>,
                      status| StageRun {
            run_id,
            node: node.id.clone(),
            stage: node.stage.clone(),
            version: node.version,
            action_key: key,
            config: config.clone(),
            seed: node.seed,
            inputs,
            outputs,
            metrics,
            env: env.clone(),
            status,
            started_ms,
            ended_ms: now_ms(),
        };

        let (recorded_inputs, outputs, metrics, status, outcome, units) =
            match cached_run(ledger, &key)? {
                Some((source_seq, source)) => {
                    bar.finish_with_message("cached");
                    tracing::info!("{}: cache hit (action {})", node.id, key.short());
                    (
                        source.inputs,
                        source.outputs,
                        source.metrics,
                        RunStatus::Cached { source_seq },
                        Outcome::Cached { source_seq },
                        None,
                    )
                }
                None => {
                    tracing::info!("{}: executing {} v{}", node.id, node.stage, node.version);
                    let executed = execute_node(
                        ledger,
                        stage,
                        node,
                        experiment,
                        &inputs,
                        &NodeRecord {
                            run_id,
                            env: &env,
                            key,
                        },
                        options,
                        &bar,
                    )
                    .and_then(|done| {
                        check_outputs(&stage.outputs_for(&node.config), &done.outputs, &node.id)?;
                        Ok(done)
                    });
                    match executed {
                        Ok(done) => {
                            bar.finish_with_message("done");
                            (
                                done.inputs,
                                done.outputs,
                                done.metrics,
                                RunStatus::Succeeded,
                                Outcome::Executed,
                                done.units,
                            )
                        }
                        Err(error) => {
                            bar.abandon_with_message("failed");
                            let status = RunStatus::Failed {
                                error: error.to_string(),
                            };
                            let failed = record(inputs.clone(), Vec::new(), Vec::new(), status);
                            ledger.append_one(EventKind::StageRun(failed))?;
                            return Err(error);
                        }
                    }
                }
            };
        for o in &outputs {
            produced.insert((node.id.clone(), o.name.clone()), o.hash);
        }
        let succeeded = record(recorded_inputs, outputs.clone(), metrics.clone(), status);
        let stored = ledger.append_one(EventKind::StageRun(succeeded))?;
        steps.push(StepReport {
            node: node.id.clone(),
            stage: node.stage.clone(),
            outcome,
            action_key: key.to_hex(),
            outputs: outputs
                .iter()
                .map(|o| (o.name.clone(), o.hash.to_hex()))
                .collect(),
            metrics,
            seconds: started.elapsed().as_secs_f64(),
            event_seq: stored.event.seq,
            units,
        });
    }
    ledger.flush()?;
    Ok(RunReport {
        run_id: run_id.to_hex(),
        experiment: experiment.name.clone(),
        steps,
    })
}

/// A node's inputs: earlier outputs, artifacts named in the config, and its external inputs
/// (ingested first and recorded in one durable batch), sorted by name.
fn node_inputs(
    ledger: &mut Ledger,
    experiment: &Experiment,
    node: &Node,
    stage: &dyn Stage,
    produced: &HashMap<(String, String), Hash>,
) -> Result<Vec<(String, Hash)>> {
    let mut inputs = Vec::new();
    for (name, reference) in &node.inputs {
        let hash = match reference {
            InputRef::Output { node, output } => produced[&(node.clone(), output.clone())],
            InputRef::Artifact(what) => {
                let hash = ledger.resolve(what).map_err(|e| {
                    Error::Invalid(format!(
                        "{}: stage `{}` input `{name}`: {e}",
                        experiment.path.display(),
                        node.id
                    ))
                })?;
                if !ledger.store().contains(&hash) {
                    return Err(Error::NotFound(format!(
                        "stage `{}` input `{name}`: artifact {} is not in the store",
                        node.id,
                        hash.short()
                    )));
                }
                hash
            }
        };
        inputs.push((name.clone(), hash));
    }
    let external = stage
        .external_inputs(&node.config, experiment.base_dir())
        .map_err(|e| stage_error(node.id.as_str(), &node.stage, &e))?;
    let mut added = Vec::new();
    let mut batched = std::collections::HashSet::new();
    let hidden = ProgressBar::hidden();
    for ext in external {
        let (hash, _, event) = match ext.source {
            ExternalSource::File(path) => ledger.prepare_add_file(&path, &hidden)?,
            ExternalSource::Snapshot {
                bytes,
                media_type,
                origin,
            } => ledger.prepare_add(
                &mut bytes.as_slice(),
                &origin,
                &media_type,
                Origin::File {
                    path: origin.clone(),
                },
            )?,
        };
        if let Some(event) = event.filter(|_| batched.insert(hash)) {
            added.push(event);
        }
        inputs.push((ext.name, hash));
    }
    if !added.is_empty() {
        ledger.append(added)?;
    }
    inputs.sort();
    Ok(inputs)
}

/// What the node's event will hold, once its units are done.
struct NodeDone {
    inputs: Vec<(String, Hash)>,
    outputs: Vec<Output>,
    metrics: Vec<(String, f64)>,
    units: Option<UnitCounts>,
}

/// What every unit event of a node shares.
struct NodeRecord<'a> {
    run_id: Hash,
    env: &'a crate::event::Environment,
    /// The node's action key.
    key: Hash,
}

/// Runs `scheduler`'s tasks on the chosen executor.
fn dispatch<'s>(
    ledger: &mut Ledger,
    scheduler: &mut dyn Scheduler<'s>,
    node: &Node,
    experiment: &Experiment,
    options: &RunOptions,
    workers: usize,
) -> Result<()> {
    let mut served = Served::Writer(ledger);
    match options.executor {
        Executor::Local => exec::execute(&mut served, Mode::Run, workers, scheduler),
        Executor::Slurm => {
            crate::slurm::execute(&mut served, scheduler, &experiment.slurm, &node.resources)
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn execute_node(
    ledger: &mut Ledger,
    stage: &dyn Stage,
    node: &Node,
    experiment: &Experiment,
    inputs: &[(String, Hash)],
    record: &NodeRecord,
    options: &RunOptions,
    bar: &ProgressBar,
) -> Result<NodeDone> {
    let plan = stage
        .plan(&PlanContext {
            node: &node.id,
            config: &node.config,
            seed: node.seed,
            inputs,
            store: ledger.store(),
        })
        .map_err(|e| stage_error(&node.id, &node.stage, &e))?;
    let workdir = experiment.base_dir();
    let job = |unit: Option<Unit>, inputs: Vec<(String, Hash)>| Job {
        node: node.id.clone(),
        unit,
        config: node.config.clone(),
        seed: node.seed,
        inputs,
        workdir: workdir.to_path_buf(),
    };
    if plan.is_whole() {
        // The old behaviour: the node is one action, recorded as the node's own event.
        let mut whole = Whole {
            task: Some(Task {
                stage,
                key: record.key,
                job: job(None, inputs.to_vec()),
                outputs: ledger.store().clone(),
                progress: bar.clone(),
            }),
            done: None,
        };
        dispatch(ledger, &mut whole, node, experiment, options, 1)?;
        let finished = whole
            .done
            .expect("the one task finished")
            .map_err(|e| stage_error(&node.id, &node.stage, &e))?;
        return Ok(NodeDone {
            inputs: with_observed(inputs.to_vec(), &finished.observed),
            outputs: finished.outputs,
            metrics: finished.metrics,
            units: None,
        });
    }

    let mut units = Units::new(stage, node, &plan, workdir, record, bar)?;
    bar.set_length(units.states.len() as u64);
    dispatch(ledger, &mut units, node, experiment, options, options.jobs)?;
    units.compose(ledger, inputs, &plan)
}

/// The scheduler of a whole-node plan: one task.
struct Whole<'s> {
    task: Option<Task<'s>>,
    done: Option<anyhow::Result<Finished>>,
}

impl<'s> Scheduler<'s> for Whole<'s> {
    fn ready(&mut self, _: &mut Served) -> Result<Vec<(usize, Task<'s>)>> {
        Ok(self.task.take().map(|t| (0, t)).into_iter().collect())
    }

    fn finished(&mut self, _: &mut Served, _: usize, done: Done) -> Result<()> {
        self.done = Some(done.result);
        Ok(())
    }

    fn exhausted(&self) -> bool {
        self.task.is_none()
    }
}

enum State {
    Waiting,
    Running,
    /// Its outputs, and its metrics.
    Done(Vec<Output>, Vec<(String, f64)>),
}

/// A running unit's action key, keyed inputs and start time.
struct Keyed {
    key: Hash,
    inputs: Vec<(String, Hash)>,
    started_ms: u64,
}

/// The scheduler of a plan of several units.
struct Units<'s, 'a> {
    stage: &'s dyn Stage,
    node: &'a Node,
    workdir: &'a Path,
    record: &'a NodeRecord<'a>,
    bar: &'a ProgressBar,
    specs: Vec<UnitSpec>,
    by_id: HashMap<String, usize>,
    states: Vec<State>,
    /// Running units: what recording them needs.
    keyed: HashMap<usize, Keyed>,
    counts: UnitCounts,
    running: usize,
    failed: usize,
}

impl<'s, 'a> Units<'s, 'a> {
    fn new(
        stage: &'s dyn Stage,
        node: &'a Node,
        plan: &Plan,
        workdir: &'a Path,
        record: &'a NodeRecord<'a>,
        bar: &'a ProgressBar,
    ) -> Result<Units<'s, 'a>> {
        let mut by_id = HashMap::new();
        for (i, spec) in plan.units.iter().enumerate() {
            if by_id.insert(spec.unit.id.clone(), i).is_some() || spec.unit.id.is_empty() {
                return Err(Error::Stage(format!(
                    "stage `{}` ({}) planned unit `{}` twice (or with an empty id)",
                    node.id, node.stage, spec.unit.id
                )));
            }
        }
        for spec in &plan.units {
            for (_, source) in &spec.inputs {
                if let Source::Unit { unit, .. } = source {
                    if !by_id.contains_key(unit) {
                        return Err(Error::Stage(format!(
                            "stage `{}` ({}): unit `{}` reads from unit `{unit}`, which the plan lacks",
                            node.id, node.stage, spec.unit.id
                        )));
                    }
                }
            }
        }
        Ok(Units {
            stage,
            node,
            workdir,
            record,
            bar,
            states: plan.units.iter().map(|_| State::Waiting).collect(),
            specs: plan.units.clone(),
            by_id,
            keyed: HashMap::new(),
            counts: UnitCounts {
                total: plan.units.len(),
                ..UnitCounts::default()
            },
            running: 0,
            failed: 0,
        })
    }

    fn output_of(&self, unit: &str, output: &str) -> Option<&Output> {
        match &self.states[self.by_id[unit]] {
            State::Done(outputs, _) => outputs.iter().find(|o| o.name == output),
            _ => None,
        }
    }

    fn message(&self) {
        let done = self.counts.executed + self.counts.cached;
        self.bar.set_position(done as u64);
        self.bar.set_message(format!(
            "units: {done} done ({} cached), {} running, {} queued{}",
            self.counts.cached,
            self.running,
            self.counts.total - done - self.running,
            if self.failed > 0 {
                format!(", {} failed", self.failed)
            } else {
                String::new()
            }
        ));
    }

    /// The node's outputs (manifests of parts, or unit outputs), its metrics, and its inputs
    /// with the parts it lists.
    fn compose(&self, ledger: &Ledger, inputs: &[(String, Hash)], plan: &Plan) -> Result<NodeDone> {
        let missing = |unit: &str, output: &str| {
            Error::Stage(format!(
                "stage `{}` ({}): unit `{unit}` did not produce output `{output}`",
                self.node.id, self.node.stage
            ))
        };
        let mut recorded_inputs = inputs.to_vec();
        let mut outputs = Vec::new();
        for (name, compose) in &plan.outputs {
            let output = match compose {
                Compose::Unit { unit, output } => {
                    let o = self
                        .output_of(unit, output)
                        .ok_or_else(|| missing(unit, output))?;
                    Output {
                        name: name.clone(),
                        ..o.clone()
                    }
                }
                Compose::Manifest { parts, media_type } => {
                    let mut list = Vec::new();
                    for (unit, output) in parts {
                        let o = self
                            .output_of(unit, output)
                            .ok_or_else(|| missing(unit, output))?;
                        list.push(Part {
                            unit: unit.clone(),
                            hash: o.hash,
                            size: o.size,
                        });
                    }
                    manifest_output(ledger, name, media_type, list)?
                }
                Compose::ManifestOfPrefix {
                    units,
                    prefix,
                    media_type,
                } => {
                    let mut list = Vec::new();
                    for unit in units {
                        let State::Done(outs, _) = &self.states[self.by_id[unit]] else {
                            return Err(missing(unit, prefix));
                        };
                        for o in outs.iter().filter(|o| o.name.starts_with(prefix.as_str())) {
                            list.push(Part {
                                unit: format!("{unit}:{}", o.name),
                                hash: o.hash,
                                size: o.size,
                            });
                        }
                    }
                    manifest_output(ledger, name, media_type, list)?
                }
            };
            if let Some(m) = Manifest::read(ledger.store(), &output.hash)? {
                for part in &m.parts {
                    recorded_inputs.push((format!("{PART_PREFIX}{name}/{}", part.unit), part.hash));
                }
            }
            outputs.push(output);
        }
        outputs.sort_by(|a, b| a.name.cmp(&b.name));
        let per_unit: Vec<Vec<(String, f64)>> = self
            .states
            .iter()
            .map(|s| match s {
                State::Done(_, metrics) => metrics.clone(),
                _ => Vec::new(),
            })
            .collect();
        let mut metrics = self.stage.combine_metrics(&per_unit);
        metrics.push(("units".into(), self.counts.total as f64));
        metrics.push(("units.executed".into(), self.counts.executed as f64));
        metrics.push(("units.cached".into(), self.counts.cached as f64));
        Ok(NodeDone {
            inputs: recorded_inputs,
            outputs,
            metrics,
            units: Some(self.counts.clone()),
        })
    }
}

fn manifest_output(
    ledger: &Ledger,
    name: &str,
    media_type: &str,
    parts: Vec<Part>,
) -> Result<Output> {
    let bytes = Manifest::new(media_type, parts).encode();
    let (hash, size) = ledger.store().put_bytes(&bytes)?;
    Ok(Output {
        name: name.to_string(),
        hash,
        size,
        media_type: manifest::MEDIA_TYPE.to_string(),
    })
}

impl<'s> Scheduler<'s> for Units<'s, '_> {
    fn ready(&mut self, served: &mut Served) -> Result<Vec<(usize, Task<'s>)>> {
        let ledger = served.ledger();
        let mut tasks = Vec::new();
        // Units the cache answers free others, so look again until nothing changes.
        loop {
            let mut progressed = false;
            for i in 0..self.specs.len() {
                if !matches!(self.states[i], State::Waiting) {
                    continue;
                }
                let mut inputs = Vec::new();
                let mut blocked = false;
                for (name, source) in &self.specs[i].inputs {
                    match source {
                        Source::Blob(h) => inputs.push((name.clone(), *h)),
                        Source::Unit { unit, output } => match &self.states[self.by_id[unit]] {
                            State::Done(outs, _) => {
                                let o = outs.iter().find(|o| &o.name == output).ok_or_else(|| {
                                        Error::Stage(format!(
                                            "stage `{}` ({}): unit `{unit}` has no output `{output}`, which unit `{}` reads",
                                            self.node.id, self.node.stage, self.specs[i].unit.id
                                        ))
                                    })?;
                                inputs.push((name.clone(), o.hash));
                            }
                            _ => blocked = true,
                        },
                    }
                }
                if blocked {
                    continue;
                }
                inputs.sort();
                let unit = self.specs[i].unit.clone();
                let recorded = self.stage.unit_config(&self.node.config, &unit);
                let config = canonical_json(&recorded);
                let key = action_key(
                    &self.node.stage,
                    self.node.version,
                    &config,
                    &inputs,
                    self.node.seed,
                );
                progressed = true;
                if let Some((_, cached)) = cached_run(ledger, &key)? {
                    self.states[i] = State::Done(cached.outputs, cached.metrics);
                    self.counts.cached += 1;
                    continue;
                }
                self.states[i] = State::Running;
                self.running += 1;
                self.keyed.insert(
                    i,
                    Keyed {
                        key,
                        inputs: inputs.clone(),
                        started_ms: now_ms(),
                    },
                );
                tasks.push((
                    i,
                    Task {
                        stage: self.stage,
                        key,
                        job: Job {
                            node: self.node.id.clone(),
                            unit: Some(unit),
                            // What the unit is keyed and recorded by, so a replay (which has
                            // only the record) gives it the same.
                            config: split_unit_config(recorded).0,
                            seed: self.node.seed,
                            inputs,
                            workdir: self.workdir.to_path_buf(),
                        },
                        outputs: ledger.store().clone(),
                        progress: ProgressBar::hidden(),
                    },
                ));
            }
            if !progressed {
                break;
            }
        }
        self.message();
        Ok(tasks)
    }

    fn finished(&mut self, served: &mut Served, i: usize, done: Done) -> Result<()> {
        self.running -= 1;
        let Keyed {
            key,
            inputs,
            started_ms,
        } = self.keyed.remove(&i).expect("a running unit");
        let unit = &self.specs[i].unit;
        let config = canonical_json(&self.stage.unit_config(&self.node.config, unit));
        let name = format!("{}/{}", self.node.id, unit.id);
        let Served::Writer(ledger) = served else {
            unreachable!("a run records with the writer")
        };
        let event = |inputs, outputs, metrics, status| StageRun {
            run_id: self.record.run_id,
            node: name.clone(),
            stage: self.node.stage.clone(),
            version: self.node.version,
            action_key: key,
            config: config.clone(),
            seed: self.node.seed,
            inputs,
            outputs,
            metrics,
            env: self.record.env.clone(),
            status,
            started_ms,
            ended_ms: now_ms(),
        };
        let checked = done
            .result
            .map_err(|e| stage_error(&name, &self.node.stage, &e));
        match checked {
            Ok(finished) => {
                let inputs = with_observed(inputs, &finished.observed);
                ledger.append_one(EventKind::StageRun(event(
                    inputs,
                    finished.outputs.clone(),
                    finished.metrics.clone(),
                    RunStatus::Succeeded,
                )))?;
                self.states[i] = State::Done(finished.outputs, finished.metrics);
                self.counts.executed += 1;
                self.message();
                Ok(())
            }
            Err(error) => {
                self.failed += 1;
                self.message();
                ledger.append_one(EventKind::StageRun(event(
                    inputs,
                    Vec::new(),
                    Vec::new(),
                    RunStatus::Failed {
                        error: error.to_string(),
                    },
                )))?;
                Err(error)
            }
        }
    }

    fn exhausted(&self) -> bool {
        self.states.iter().all(|s| matches!(s, State::Done(..)))
    }

    /// Records the attempt that died, as a failed unit event with the reason.
    fn retrying(&mut self, served: &mut Served, i: usize, why: &str) -> Result<()> {
        let Served::Writer(ledger) = served else {
            unreachable!("a run records with the writer")
        };
        let keyed = &self.keyed[&i];
        let unit = &self.specs[i].unit;
        ledger.append_one(EventKind::StageRun(StageRun {
            run_id: self.record.run_id,
            node: format!("{}/{}", self.node.id, unit.id),
            stage: self.node.stage.clone(),
            version: self.node.version,
            action_key: keyed.key,
            config: canonical_json(&self.stage.unit_config(&self.node.config, unit)),
            seed: self.node.seed,
            inputs: keyed.inputs.clone(),
            outputs: Vec::new(),
            metrics: Vec::new(),
            env: self.record.env.clone(),
            status: RunStatus::Failed {
                error: format!("{why}; retried"),
            },
            started_ms: keyed.started_ms,
            ended_ms: now_ms(),
        }))?;
        Ok(())
    }
}

/// The successful run recorded under `key`, if all its outputs are still stored.
fn cached_run(ledger: &Ledger, key: &Hash) -> Result<Option<(u64, StageRun)>> {
    let Some(seq) = ledger.index().action(key)? else {
        return Ok(None);
    };
    // A foreign step is in the action index only when its import was trusted.
    let (EventKind::StageRun(run), _) = ledger.event(seq)?.event.kind.into_claim() else {
        return Ok(None);
    };
    let intact = run.outputs.iter().all(|o| ledger.store().contains(&o.hash));
    Ok(intact.then_some((seq, run)))
}

fn check_outputs(declared: &[String], outputs: &[Output], node: &str) -> Result<()> {
    for name in declared {
        if !outputs.iter().any(|o| &o.name == name) {
            return Err(Error::Invalid(format!(
                "stage `{node}` finished without producing its output `{name}`"
            )));
        }
    }
    Ok(())
}

pub(crate) fn stage_error(node: &str, stage: &str, e: &anyhow::Error) -> Error {
    Error::Stage(format!("stage `{node}` ({stage}) failed: {e:#}"))
}
