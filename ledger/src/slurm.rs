//! The Slurm executor: a node's units as Slurm array jobs, one `ledger unit` per task.
//!
//! The coordinator (the `ledger run` that holds the writer lock) writes one spec file per unit,
//! submits them as an array with `sbatch`, and waits. Each task runs `ledger unit SPEC` on some
//! node of the cluster: it reads its inputs from the ledger's blob store on the shared file
//! system, writes its outputs there (content-addressed, temp file and rename: two tasks writing
//! the same blob is harmless), performs and stores its observations, and writes a result file
//! (temp file and rename). It never takes the lock and never appends an event: **only the
//! coordinator appends events**. Before recording a unit, the coordinator rehashes every blob
//! the result names.
//!
//! Faults: a task that dies (scancel, time limit, out of memory, node failure) leaves no result;
//! the coordinator reads the reason from `scontrol`, records it as a failed unit event, and
//! submits the unit again, up to `max_retries` times. A unit whose own code fails writes a
//! result with its error: that fails the node, naming the unit and the tail of its log. Result
//! and submission files are keyed by the unit's action key, so a coordinator killed and started
//! again records units whose tasks finished while it was down (from their verified result
//! files), waits for tasks still queued or running, and never records a unit twice (a recorded
//! unit is answered from the cache).

use crate::error::{Error, Result};
use crate::exec::{Done, Scheduler, Task};
use crate::hash::Hash;
use crate::observe::{Made, Observer, Served, Snapshot};
use crate::stage::{Finished, Io, Job, Registry, StageContext};
use crate::store::BlobStore;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// Defaults for every Slurm job of an experiment (`[executor.slurm]`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SlurmConfig {
    #[serde(default)]
    pub partition: Option<String>,
    /// `--time`, e.g. `"01:00:00"`.
    #[serde(default)]
    pub time: Option<String>,
    /// `--mem`, e.g. `"4G"`.
    #[serde(default)]
    pub mem: Option<String>,
    #[serde(default)]
    pub cpus: Option<u32>,
    /// More `sbatch` arguments, as given.
    #[serde(default)]
    pub sbatch: Vec<String>,
    /// Submissions of a unit whose task died, after the first.
    #[serde(default = "default_retries")]
    pub max_retries: u32,
    /// How often the queue is looked at.
    #[serde(default = "default_poll_ms")]
    pub poll_ms: u64,
    /// The `ledger` binary the tasks run (default: this one; it must be on the shared file
    /// system, as the ledger is).
    #[serde(default)]
    pub ledger: Option<PathBuf>,
}

fn default_retries() -> u32 {
    2
}

fn default_poll_ms() -> u64 {
    500
}

/// What a stage's jobs ask for (`[stage.resources]`), over the executor's defaults.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Resources {
    #[serde(default)]
    pub cpus: Option<u32>,
    #[serde(default)]
    pub mem: Option<String>,
    #[serde(default)]
    pub time: Option<String>,
    #[serde(default)]
    pub partition: Option<String>,
    /// `--gres`, e.g. `"gpu:8"`.
    #[serde(default)]
    pub gres: Option<String>,
    #[serde(default)]
    pub sbatch: Vec<String>,
}

/// One unit, as a task reads it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct UnitSpec {
    pub ledger: PathBuf,
    pub stage: String,
    pub version: u32,
    /// The unit's action key: names its result file.
    #[serde(with = "crate::hash::hex")]
    pub key: Hash,
    pub job: Job,
    pub result: PathBuf,
    /// The ledger's observations when the unit was submitted (see `observe::Snapshot`).
    #[serde(default)]
    pub observations: Option<PathBuf>,
}

/// What a task leaves for the coordinator.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct UnitResult {
    #[serde(with = "crate::hash::hex")]
    pub key: Hash,
    /// `Err`: the unit's own error (deterministic: not retried).
    pub outcome: std::result::Result<Produced, String>,
    pub environment: crate::event::Environment,
    pub seconds: f64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Produced {
    pub outputs: Vec<crate::event::Output>,
    pub metrics: Vec<(String, f64)>,
    pub observations: Vec<Made>,
    pub observed: Vec<(Hash, Hash)>,
}

/// The layout of the executor's files inside the ledger directory.
struct Dirs {
    specs: PathBuf,
    results: PathBuf,
    logs: PathBuf,
    submitted: PathBuf,
}

impl Dirs {
    fn new(ledger: &Path) -> Result<Dirs> {
        let root = ledger.join("slurm");
        let dirs = Dirs {
            specs: root.join("specs"),
            results: root.join("results"),
            logs: root.join("logs"),
            submitted: root.join("submitted"),
        };
        for d in [&dirs.specs, &dirs.results, &dirs.logs, &dirs.submitted] {
            std::fs::create_dir_all(d).map_err(|e| Error::io(d, e))?;
        }
        Ok(dirs)
    }
}

fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(|e| Error::io(dir, e))?;
    std::io::Write::write_all(&mut tmp, bytes).map_err(|e| Error::io(path, e))?;
    tmp.as_file().sync_all().map_err(|e| Error::io(path, e))?;
    tmp.persist(path).map_err(|e| Error::io(path, e.error))?;
    Ok(())
}

/// `ledger unit SPEC`: executes one unit in this process and writes its result file. Returns
/// an error (a non-zero exit) when the unit failed; the result file says why either way.
pub fn run_unit(registry: &Registry, spec_path: &Path) -> Result<()> {
    let bytes = std::fs::read(spec_path).map_err(|e| Error::io(spec_path, e))?;
    let spec: UnitSpec = serde_json::from_slice(&bytes)
        .map_err(|e| Error::Invalid(format!("{}: not a unit spec: {e}", spec_path.display())))?;
    let stage = registry
        .get(&spec.stage)
        .ok_or_else(|| Error::Invalid(format!("stage `{}` is not in this build", spec.stage)))?;
    if stage.version() != spec.version {
        return Err(Error::Invalid(format!(
            "the unit was planned for {} v{}, but this build has v{}",
            spec.stage,
            spec.version,
            stage.version()
        )));
    }
    let store = BlobStore::new(&spec.ledger);
    let snapshot = spec
        .observations
        .as_deref()
        .map(Snapshot::open)
        .transpose()?;
    let observer = Observer::recording(store.clone(), snapshot);
    let io = Io {
        inputs: store.clone(),
        outputs: store,
        observer: observer.clone(),
        progress: indicatif::ProgressBar::hidden(),
    };
    let started = Instant::now();
    let mut ctx = StageContext::new(spec.job.clone(), io);
    let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| stage.execute(&mut ctx)));
    let outcome = match ran {
        Ok(Ok(())) => ctx
            .finish()
            .map(|f| Produced {
                outputs: f.outputs,
                metrics: f.metrics,
                observations: observer.made(),
                observed: f.observed,
            })
            .map_err(|e| e.to_string()),
        Ok(Err(e)) => Err(format!("{e:#}")),
        Err(_) => Err("the stage panicked".to_string()),
    };
    let failed = outcome.as_ref().err().cloned();
    let result = UnitResult {
        key: spec.key,
        outcome,
        environment: crate::event::Environment::current(),
        seconds: started.elapsed().as_secs_f64(),
    };
    write_atomically(
        &spec.result,
        &serde_json::to_vec_pretty(&result).expect("a result serializes"),
    )?;
    match failed {
        Some(e) => Err(Error::Stage(e)),
        None => Ok(()),
    }
}

/// A unit submitted to Slurm and not yet recorded.
struct Pending<'s> {
    task: Task<'s>,
    key: Hash,
    spec: PathBuf,
    result: PathBuf,
    job: Option<String>,
    attempts: u32,
}

/// Runs what `scheduler` hands out as Slurm jobs until nothing is left or something failed.
pub(crate) fn execute<'s>(
    served: &mut Served,
    scheduler: &mut dyn Scheduler<'s>,
    config: &SlurmConfig,
    resources: &Resources,
) -> Result<()> {
    let ledger_dir = served.ledger().dir().to_path_buf();
    let dirs = Dirs::new(&ledger_dir)?;
    let binary = match &config.ledger {
        Some(p) => p.clone(),
        None => std::env::current_exe().map_err(|e| Error::io(Path::new("ledger"), e))?,
    };
    let mut pending: HashMap<usize, Pending<'s>> = HashMap::new();
    loop {
        let ready = scheduler.ready(served)?;
        // What the ledger has recorded, for the tasks of this wave to be answered from.
        let snapshot = if ready.is_empty() {
            None
        } else {
            let path = dirs.specs.join(format!(
                "observations-{}.snapshot",
                served.ledger().event_count()
            ));
            if !path.exists() {
                Snapshot::write(served.ledger(), &path)?;
            }
            Some(path)
        };
        let mut fresh = Vec::new();
        for (id, task) in ready {
            let key = task.key;
            let hex = key.to_hex();
            let spec = dirs.specs.join(format!("{hex}.json"));
            let result = dirs.results.join(format!("{hex}.json"));
            let unit = UnitSpec {
                ledger: ledger_dir.clone(),
                stage: task.stage.name().to_string(),
                version: task.stage.version(),
                key,
                job: task.job.clone(),
                result: result.clone(),
                observations: snapshot.clone(),
            };
            write_atomically(
                &spec,
                &serde_json::to_vec_pretty(&unit).expect("a spec serializes"),
            )?;
            // A task of an earlier coordinator may have finished, or still be in the queue.
            let job = std::fs::read_to_string(dirs.submitted.join(&hex))
                .ok()
                .map(|s| s.trim().to_string())
                .filter(|job| result.exists() || job_state(job).is_some_and(|s| s.alive()));
            if job.is_none() && !result.exists() {
                fresh.push(id);
            }
            pending.insert(
                id,
                Pending {
                    task,
                    key,
                    spec,
                    result,
                    job,
                    attempts: 0,
                },
            );
        }
        submit(&dirs, &binary, config, resources, &mut pending, &fresh)?;
        if pending.is_empty() {
            return if scheduler.exhausted() {
                Ok(())
            } else {
                Err(Error::Invalid(
                    "the plan's units wait on each other: none can start".into(),
                ))
            };
        }
        std::thread::sleep(Duration::from_millis(config.poll_ms));
        let ids: Vec<usize> = pending.keys().copied().collect();
        let mut retry = Vec::new();
        for id in ids {
            let p = &pending[&id];
            if p.result.exists() {
                let p = pending.remove(&id).expect("pending");
                let done = collect(served, &p)?;
                let hex = p.key.to_hex();
                let _ = std::fs::remove_file(dirs.submitted.join(&hex));
                scheduler.finished(served, id, done)?;
                continue;
            }
            let Some(job) = p.job.clone() else { continue };
            match job_state(&job) {
                Some(state) if state.alive() => {}
                // Gone without a result: the task died.
                state => {
                    // The result may have landed between the two looks.
                    if p.result.exists() {
                        continue;
                    }
                    let why = state.map_or("no longer known to Slurm".to_string(), |s| s.0);
                    let p = pending.get_mut(&id).expect("pending");
                    p.attempts += 1;
                    let unit = p.task.job.unit.as_ref().map_or("", |u| u.id.as_str());
                    let log = tail(&dirs.logs.join(format!("{}.log", job.replace('_', "-"))));
                    if p.attempts > config.max_retries {
                        return Err(Error::Stage(format!(
                            "unit `{}/{unit}`: Slurm job {job} ended {why} {} times; giving up{log}",
                            p.task.job.node, p.attempts
                        )));
                    }
                    tracing::warn!(
                        "unit `{}/{unit}`: Slurm job {job} ended {why}; submitting it again ({} of {} retries)",
                        p.task.job.node,
                        p.attempts,
                        config.max_retries
                    );
                    scheduler.retrying(
                        served,
                        id,
                        &format!("Slurm job {job} ended {why} (attempt {})", p.attempts),
                    )?;
                    p.job = None;
                    retry.push(id);
                }
            }
        }
        submit(&dirs, &binary, config, resources, &mut pending, &retry)?;
    }
}

/// Submits the pending units `ids` as one array job.
fn submit(
    dirs: &Dirs,
    binary: &Path,
    config: &SlurmConfig,
    resources: &Resources,
    pending: &mut HashMap<usize, Pending>,
    ids: &[usize],
) -> Result<()> {
    if ids.is_empty() {
        return Ok(());
    }
    // The array's tasks read their spec from a list, one path a line.
    let specs: Vec<String> = ids
        .iter()
        .map(|id| pending[id].spec.display().to_string())
        .collect();
    let list = dirs.specs.join(format!(
        "array-{}.list",
        Hash::of(specs.join("\n").as_bytes()).short()
    ));
    write_atomically(&list, format!("{}\n", specs.join("\n")).as_bytes())?;
    let node = pending[&ids[0]].task.job.node.clone();
    let mut cmd = Command::new("sbatch");
    cmd.arg("--parsable")
        .arg(format!("--array=0-{}", ids.len() - 1))
        .arg(format!("--job-name=ledger-{node}"))
        .arg(format!("--output={}/%A-%a.log", dirs.logs.display()));
    let pick = |r: &Option<String>, c: &Option<String>| r.clone().or_else(|| c.clone());
    if let Some(p) = pick(&resources.partition, &config.partition) {
        cmd.arg(format!("--partition={p}"));
    }
    if let Some(t) = pick(&resources.time, &config.time) {
        cmd.arg(format!("--time={t}"));
    }
    if let Some(m) = pick(&resources.mem, &config.mem) {
        cmd.arg(format!("--mem={m}"));
    }
    if let Some(c) = resources.cpus.or(config.cpus) {
        cmd.arg(format!("--cpus-per-task={c}"));
    }
    if let Some(g) = &resources.gres {
        cmd.arg(format!("--gres={g}"));
    }
    cmd.args(&config.sbatch).args(&resources.sbatch);
    cmd.arg(format!(
        "--wrap=exec '{}' unit \"$(sed -n \"$((SLURM_ARRAY_TASK_ID + 1))p\" '{}')\"",
        binary.display(),
        list.display()
    ));
    let out = cmd
        .output()
        .map_err(|e| Error::Invalid(format!("cannot run sbatch: {e} (is Slurm installed?)")))?;
    if !out.status.success() {
        return Err(Error::Invalid(format!(
            "sbatch refused the units of `{node}`: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    let array = String::from_utf8_lossy(&out.stdout)
        .trim()
        .split(';')
        .next()
        .unwrap_or_default()
        .to_string();
    for (i, id) in ids.iter().enumerate() {
        let p = pending.get_mut(id).expect("pending");
        let job = format!("{array}_{i}");
        write_atomically(&dirs.submitted.join(p.key.to_hex()), job.as_bytes())?;
        p.job = Some(job);
    }
    tracing::info!(
        "submitted {} units of `{node}` as Slurm array {array}",
        ids.len()
    );
    Ok(())
}

/// A job's state as `scontrol show job` reports it.
struct JobState(String);

impl JobState {
    fn alive(&self) -> bool {
        matches!(
            self.0.as_str(),
            "PENDING"
                | "RUNNING"
                | "CONFIGURING"
                | "COMPLETING"
                | "SUSPENDED"
                | "REQUEUED"
                | "RESIZING"
        )
    }
}

fn job_state(job: &str) -> Option<JobState> {
    let out = Command::new("scontrol")
        .args(["show", "job", "--oneliner", job])
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8_lossy(&out.stdout);
    text.split_whitespace()
        .find_map(|kv| kv.strip_prefix("JobState="))
        .map(|s| JobState(s.to_string()))
}

fn tail(path: &Path) -> String {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let lines: Vec<&str> = text.lines().collect();
            let from = lines.len().saturating_sub(20);
            format!(
                "; the end of its log ({}):\n{}",
                path.display(),
                lines[from..].join("\n")
            )
        }
        Err(_) => String::new(),
    }
}

/// Reads and verifies a unit's result: every blob it names must hash to its address. Its
/// observations are recorded (their responses introduced) before the unit itself.
fn collect(served: &mut Served, p: &Pending) -> Result<Done> {
    let bytes = std::fs::read(&p.result).map_err(|e| Error::io(&p.result, e))?;
    let result: UnitResult = serde_json::from_slice(&bytes)
        .map_err(|e| Error::Corrupt(format!("{}: not a unit result: {e}", p.result.display())))?;
    if result.key != p.key {
        return Err(Error::Corrupt(format!(
            "{}: the result is for unit {}, not {}",
            p.result.display(),
            result.key.short(),
            p.key.short()
        )));
    }
    let produced = match result.outcome {
        Err(e) => {
            return Ok(Done {
                result: Err(anyhow::anyhow!(e)),
                reexecution: Default::default(),
            })
        }
        Ok(produced) => produced,
    };
    let ledger = served.ledger();
    let check = |hash: &Hash| -> Result<()> {
        let (actual, _) = ledger.store().rehash(hash)?;
        if actual != *hash {
            return Err(Error::Corrupt(format!(
                "{}: the unit's blob {hash} hashes to {}: not recorded",
                p.result.display(),
                actual.short()
            )));
        }
        Ok(())
    };
    for o in &produced.outputs {
        check(&o.hash)?;
    }
    for m in &produced.observations {
        check(&m.response)?;
    }
    served.record_made(&produced.observations)?;
    Ok(Done {
        result: Ok(Finished {
            outputs: produced.outputs,
            metrics: produced.metrics,
            observed: produced.observed,
        }),
        reexecution: Default::default(),
    })
}
