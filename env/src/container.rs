//! Sandboxed containers: no network, CPU/memory/pids limits, commands run as a non-root user,
//! a wall-clock limit per exec and per rollout, and removal guaranteed.
//!
//! Removal, in depth:
//! - `Container` is a guard: `Drop` force-removes it with a blocking call (also while a panic
//!   unwinds);
//! - every live container is in a process-wide registry; `install_signal_cleanup` removes them
//!   all on Ctrl-C / SIGTERM before exiting, and `cleanup_all` does it on demand;
//! - the engine backstops a killed client: the container's main process is
//!   `sleep <rollout limit + 60s>` under `--init` with AutoRemove, so a container whose owner
//!   died (SIGKILL) disappears on its own; `reap_orphans` removes those of dead processes now.
//!
//! Exec timeouts are enforced twice: inside the container (`timeout -k 5 <secs>` around the
//! command, which signals its whole process group) and by the client, which stops waiting
//! 15 s later and kills every process of the exec's user.

use crate::engine::{Engine, EngineError};
use anyhow::{bail, Context};
use bollard::models::{ContainerCreateBody, HostConfig};
use bollard::query_parameters::{
    CreateContainerOptions, DownloadFromContainerOptions, ListContainersOptions,
    RemoveContainerOptions, UploadToContainerOptions,
};
use futures_util::StreamExt;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// Every container this crate creates carries this label (value `1`).
pub const LABEL: &str = "davinci.env";
/// The creating process id, for `reap_orphans`.
pub const LABEL_PID: &str = "davinci.env.pid";

/// How a container is created.
#[derive(Clone, Debug)]
pub struct ContainerSpec {
    pub image: String,
    /// CPUs (fractional allowed).
    pub cpus: f64,
    pub memory_bytes: i64,
    pub pids_limit: i64,
    /// `uid:gid` that execs run as unless they ask for root.
    pub user: String,
    pub workdir: String,
    /// Default per-exec wall-clock limit.
    pub exec_timeout: Duration,
    /// Wall-clock limit for the whole life of the container (a rollout).
    pub rollout_timeout: Duration,
    /// Extra labels (e.g. a run id), on top of `LABEL` and `LABEL_PID`.
    pub labels: BTreeMap<String, String>,
    /// `KEY=value` environment for every exec.
    pub env: Vec<String>,
    /// Cap on captured bytes per stream per exec; the rest is dropped and flagged.
    pub max_output_bytes: usize,
}

impl ContainerSpec {
    pub fn new(image: &str) -> ContainerSpec {
        ContainerSpec {
            image: image.to_string(),
            cpus: 1.0,
            memory_bytes: 2 << 30,
            pids_limit: 512,
            user: "1000:1000".into(),
            workdir: "/testbed".into(),
            exec_timeout: Duration::from_secs(180),
            rollout_timeout: Duration::from_secs(3600),
            labels: BTreeMap::new(),
            env: vec![
                "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
                "HOME=/home/agent".into(),
                "LANG=C.UTF-8".into(),
                "PYTHONDONTWRITEBYTECODE=1".into(),
                // Set and dict order of strings is part of test output (pytest parametrize
                // over a set): a fixed hash seed makes re-executions comparable.
                "PYTHONHASHSEED=0".into(),
                "PIP_NO_INDEX=1".into(),
            ],
            max_output_bytes: 16 << 20,
        }
    }
}

/// One command to run.
#[derive(Clone, Debug, Default)]
pub struct ExecRequest {
    pub argv: Vec<String>,
    /// `None`: the container's user. `Some("root")` for setup steps.
    pub user: Option<String>,
    pub workdir: Option<String>,
    /// `None`: the container's default.
    pub timeout: Option<Duration>,
    pub env: Vec<String>,
}

impl ExecRequest {
    /// `bash -c <script>`.
    pub fn bash(script: &str) -> ExecRequest {
        ExecRequest {
            argv: vec!["bash".into(), "-c".into(), script.into()],
            ..Default::default()
        }
    }
    pub fn timeout(mut self, t: Duration) -> ExecRequest {
        self.timeout = Some(t);
        self
    }
    pub fn as_root(mut self) -> ExecRequest {
        self.user = Some("root".into());
        self
    }
    pub fn workdir(mut self, dir: &str) -> ExecRequest {
        self.workdir = Some(dir.into());
        self
    }
}

/// `s` as one single-quoted word for `bash -c` scripts.
pub fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// What a finished exec produced.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ExecOutput {
    pub exit_code: i64,
    pub stdout: String,
    pub stderr: String,
    /// Killed by its wall-clock limit (its own, or the rollout's remaining time).
    pub timed_out: bool,
    /// Output beyond `max_output_bytes` was dropped.
    pub output_truncated: bool,
    pub duration_ms: u64,
}

impl ExecOutput {
    pub fn success(&self) -> bool {
        self.exit_code == 0 && !self.timed_out
    }
    /// stdout then stderr, as a terminal would interleave them roughly.
    pub fn combined(&self) -> String {
        let mut s = self.stdout.clone();
        if !self.stderr.is_empty() {
            if !s.is_empty() && !s.ends_with('\n') {
                s.push('\n');
            }
            s.push_str(&self.stderr);
        }
        s
    }
}

/// The rollout's wall-clock budget is spent; the container must not be used further.
#[derive(Debug, thiserror::Error)]
#[error("container {id}: the rollout's wall-clock limit of {limit:?} is spent")]
pub struct RolloutExpired {
    pub id: String,
    pub limit: Duration,
}

fn registry() -> &'static Mutex<HashMap<String, Engine>> {
    static LIVE: OnceLock<Mutex<HashMap<String, Engine>>> = OnceLock::new();
    LIVE.get_or_init(|| Mutex::new(HashMap::new()))
}

fn registry_lock() -> std::sync::MutexGuard<'static, HashMap<String, Engine>> {
    registry().lock().unwrap_or_else(|p| p.into_inner())
}

/// A running container; removed when dropped.
pub struct Container {
    engine: Engine,
    id: String,
    spec: ContainerSpec,
    started: Instant,
    removed: bool,
}

impl std::fmt::Debug for Container {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Container")
            .field("id", &self.id)
            .field("image", &self.spec.image)
            .finish()
    }
}

impl Container {
    /// Creates and starts a container. Nothing is left behind when this fails.
    pub fn start(engine: &Engine, spec: ContainerSpec) -> anyhow::Result<Container> {
        let mut labels: HashMap<String, String> = spec.labels.clone().into_iter().collect();
        labels.insert(LABEL.into(), "1".into());
        labels.insert(LABEL_PID.into(), std::process::id().to_string());
        // The engine-side backstop: the main process ends after the rollout limit.
        let life = spec.rollout_timeout.as_secs() + 60;
        let body = ContainerCreateBody {
            image: Some(spec.image.clone()),
            cmd: Some(vec!["sleep".into(), life.to_string()]),
            labels: Some(labels),
            working_dir: Some(spec.workdir.clone()),
            env: Some(spec.env.clone()),
            network_disabled: Some(true),
            tty: Some(false),
            host_config: Some(HostConfig {
                network_mode: Some("none".into()),
                nano_cpus: Some((spec.cpus * 1e9) as i64),
                memory: Some(spec.memory_bytes),
                memory_swap: Some(spec.memory_bytes),
                pids_limit: Some(spec.pids_limit),
                init: Some(true),
                auto_remove: Some(true),
                security_opt: Some(vec!["no-new-privileges".into()]),
                ..Default::default()
            }),
            ..Default::default()
        };
        let docker = engine.docker().clone();
        let created = engine
            .block_on(async move {
                docker
                    .create_container(None::<CreateContainerOptions>, body)
                    .await
            })
            .map_err(|e| engine.classify(e, &format!("create container from {}", spec.image)))?;
        registry_lock().insert(created.id.clone(), engine.clone());
        // From here on the guard owns it: an error below removes it.
        let c = Container {
            engine: engine.clone(),
            id: created.id,
            spec,
            started: Instant::now(),
            removed: false,
        };
        let docker = engine.docker().clone();
        let id = c.id.clone();
        engine
            .block_on(async move {
                docker
                    .start_container(
                        &id,
                        None::<bollard::query_parameters::StartContainerOptions>,
                    )
                    .await
            })
            .map_err(|e| engine.classify(e, &format!("start container {}", c.short_id())))?;
        Ok(c)
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn short_id(&self) -> &str {
        &self.id[..12.min(self.id.len())]
    }

    pub fn spec(&self) -> &ContainerSpec {
        &self.spec
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Time left of the rollout's wall-clock budget.
    pub fn remaining(&self) -> Duration {
        self.spec
            .rollout_timeout
            .saturating_sub(self.started.elapsed())
    }

    /// `bash -c <script>` as the container's user, in its workdir, default timeout.
    pub fn exec(&self, script: &str) -> anyhow::Result<ExecOutput> {
        self.exec_with(&ExecRequest::bash(script))
    }

    /// Runs a command to completion or to its wall-clock limit. An engine that stops
    /// answering is an error (`EngineError::Lost`), never an `ExecOutput`.
    pub fn exec_with(&self, req: &ExecRequest) -> anyhow::Result<ExecOutput> {
        if req.argv.is_empty() {
            bail!("exec: empty command");
        }
        let remaining = self.remaining();
        if remaining.is_zero() {
            return Err(RolloutExpired {
                id: self.short_id().to_string(),
                limit: self.spec.rollout_timeout,
            }
            .into());
        }
        let limit = req.timeout.unwrap_or(self.spec.exec_timeout).min(remaining);
        let user = req.user.clone().unwrap_or_else(|| self.spec.user.clone());
        let mut argv = vec![
            "timeout".to_string(),
            "-k".into(),
            "5".into(),
            format!("{:.3}", limit.as_secs_f64().max(0.001)),
        ];
        argv.extend(req.argv.iter().cloned());
        let mut env = self.spec.env.clone();
        env.extend(req.env.iter().cloned());
        let config = bollard::models::ExecConfig {
            attach_stdout: Some(true),
            attach_stderr: Some(true),
            tty: Some(false),
            cmd: Some(argv),
            user: Some(user.clone()),
            working_dir: Some(
                req.workdir
                    .clone()
                    .unwrap_or_else(|| self.spec.workdir.clone()),
            ),
            env: Some(env),
            ..Default::default()
        };
        let docker = self.engine.docker().clone();
        let id = self.id.clone();
        let max = self.spec.max_output_bytes;
        let hard_limit = limit + Duration::from_secs(15);
        let t0 = Instant::now();
        let raw = self.engine.block_on(async move {
            let created = docker
                .create_exec(&id, config)
                .await
                .map_err(Failure::Docker)?;
            let started = docker
                .start_exec(&created.id, None)
                .await
                .map_err(Failure::Docker)?;
            let mut output = match started {
                bollard::exec::StartExecResults::Attached { output, .. } => output,
                bollard::exec::StartExecResults::Detached => {
                    return Err(Failure::Other("exec started detached".into()))
                }
            };
            let mut out = Vec::new();
            let mut err = Vec::new();
            let mut truncated = false;
            let read = async {
                while let Some(item) = output.next().await {
                    let (buf, msg) = match item.map_err(Failure::Docker)? {
                        bollard::container::LogOutput::StdOut { message } => (&mut out, message),
                        bollard::container::LogOutput::StdErr { message } => (&mut err, message),
                        bollard::container::LogOutput::Console { message } => (&mut out, message),
                        bollard::container::LogOutput::StdIn { .. } => continue,
                    };
                    let room = max.saturating_sub(buf.len());
                    if msg.len() > room {
                        truncated = true;
                    }
                    buf.extend_from_slice(&msg[..msg.len().min(room)]);
                }
                Ok::<(), Failure>(())
            };
            let hard_timeout = match tokio::time::timeout(hard_limit, read).await {
                Ok(r) => {
                    r?;
                    false
                }
                Err(_) => true,
            };
            if hard_timeout {
                return Ok(RawExec {
                    exit_code: None,
                    out,
                    err,
                    truncated,
                    hard_timeout: true,
                });
            }
            // The stream ended: the process exited, or the engine went away.
            let mut exit_code = None;
            for _ in 0..50 {
                let ins = docker
                    .inspect_exec(&created.id)
                    .await
                    .map_err(Failure::Docker)?;
                if ins.running != Some(true) {
                    exit_code = ins.exit_code;
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Ok(RawExec {
                exit_code,
                out,
                err,
                truncated,
                hard_timeout: false,
            })
        });
        let elapsed = t0.elapsed();
        let what = format!("exec in container {}", self.short_id());
        let raw = match raw {
            Ok(r) => r,
            Err(Failure::Docker(e)) => return Err(self.exec_failure(e, &what)),
            Err(Failure::Other(m)) => bail!("{what}: {m}"),
        };
        if raw.hard_timeout {
            // The in-container `timeout` did not end it: kill everything of that user.
            if user != "root" && user != "0" && !user.starts_with("0:") {
                let _ = self.exec_with(&ExecRequest {
                    argv: vec!["kill".into(), "-9".into(), "-1".into()],
                    user: Some(user.clone()),
                    timeout: Some(Duration::from_secs(10)),
                    ..Default::default()
                });
            }
            return Ok(ExecOutput {
                exit_code: -1,
                stdout: String::from_utf8_lossy(&raw.out).into_owned(),
                stderr: String::from_utf8_lossy(&raw.err).into_owned(),
                timed_out: true,
                output_truncated: raw.truncated,
                duration_ms: elapsed.as_millis() as u64,
            });
        }
        let Some(code) = raw.exit_code else {
            // No exit code: find out whether the engine or the container is gone.
            self.engine.ping()?;
            if !self.is_running()? {
                bail!("{what}: the container stopped (rollout limit reached, or killed)");
            }
            bail!("{what}: the exec ended without an exit code");
        };
        // `timeout` exits 124 (TERM) or 137 (KILL after the grace period).
        let timed_out =
            (code == 124 || code == 137) && elapsed + Duration::from_millis(50) >= limit;
        Ok(ExecOutput {
            exit_code: code,
            stdout: String::from_utf8_lossy(&raw.out).into_owned(),
            stderr: String::from_utf8_lossy(&raw.err).into_owned(),
            timed_out,
            output_truncated: raw.truncated,
            duration_ms: elapsed.as_millis() as u64,
        })
    }

    fn exec_failure(&self, e: bollard::errors::Error, what: &str) -> anyhow::Error {
        if let bollard::errors::Error::DockerResponseServerError {
            status_code: 409 | 404,
            message,
        } = &e
        {
            if self.remaining().is_zero() {
                return RolloutExpired {
                    id: self.short_id().to_string(),
                    limit: self.spec.rollout_timeout,
                }
                .into();
            }
            return anyhow::anyhow!("{what}: the container is gone or stopped: {message}");
        }
        self.engine.classify(e, what)
    }

    /// Whether the container's main process still runs.
    pub fn is_running(&self) -> anyhow::Result<bool> {
        let docker = self.engine.docker().clone();
        let id = self.id.clone();
        match self.engine.block_on(async move {
            docker
                .inspect_container(
                    &id,
                    None::<bollard::query_parameters::InspectContainerOptions>,
                )
                .await
        }) {
            Ok(i) => Ok(i.state.and_then(|s| s.running).unwrap_or(false)),
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            }) => Ok(false),
            Err(e) => Err(self.engine.classify(e, "inspect container")),
        }
    }

    /// Writes one file (parent directories are created as the container's user), owned by
    /// the container's user.
    pub fn write_file(&self, path: &str, bytes: &[u8], mode: u32) -> anyhow::Result<()> {
        let p = Path::new(path);
        let (Some(parent), Some(name)) = (p.parent(), p.file_name()) else {
            bail!("write_file: {path} is not a file path");
        };
        if !p.is_absolute() {
            bail!("write_file: {path} is not absolute");
        }
        let parent = parent.to_string_lossy().into_owned();
        let mk = self.exec_with(&ExecRequest {
            argv: vec!["mkdir".into(), "-p".into(), parent.clone()],
            timeout: Some(Duration::from_secs(30)),
            ..Default::default()
        })?;
        if mk.exit_code != 0 {
            bail!(
                "write_file: cannot create {parent}: {}",
                mk.combined().trim()
            );
        }
        let (uid, gid) = self.uid_gid();
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(bytes.len() as u64);
        h.set_mode(mode);
        h.set_uid(uid);
        h.set_gid(gid);
        h.set_mtime(0);
        h.set_entry_type(tar::EntryType::Regular);
        b.append_data(&mut h, name, bytes)?;
        let tarball = b.into_inner()?;
        self.upload_tar(&parent, tarball)
    }

    /// Uploads a tar archive and extracts it under `dir` (which must exist).
    pub fn upload_tar(&self, dir: &str, tarball: Vec<u8>) -> anyhow::Result<()> {
        let docker = self.engine.docker().clone();
        let id = self.id.clone();
        let opts = UploadToContainerOptions {
            path: dir.to_string(),
            ..Default::default()
        };
        self.engine
            .block_on(async move {
                docker
                    .upload_to_container(
                        &id,
                        Some(opts),
                        bollard::body_full(bytes::Bytes::from(tarball)),
                    )
                    .await
            })
            .map_err(|e| self.exec_failure(e, &format!("upload to {dir}")))
    }

    /// Copies a host directory's contents into `dir` in the container, owned by the
    /// container's user.
    pub fn copy_in_dir(&self, host_dir: &Path, dir: &str) -> anyhow::Result<()> {
        let (uid, gid) = self.uid_gid();
        let mut b = tar::Builder::new(Vec::new());
        b.follow_symlinks(false);
        let mut entries = Vec::new();
        walk(host_dir, host_dir, &mut entries)?;
        entries.sort();
        for rel in entries {
            let full = host_dir.join(&rel);
            let meta = std::fs::symlink_metadata(&full)?;
            let mut h = tar::Header::new_gnu();
            h.set_metadata_in_mode(&meta, tar::HeaderMode::Deterministic);
            h.set_uid(uid);
            h.set_gid(gid);
            if meta.is_file() {
                let f = std::fs::File::open(&full)?;
                b.append_data(&mut h, &rel, f)?;
            } else if meta.is_dir() {
                h.set_size(0);
                b.append_data(&mut h, &rel, std::io::empty())?;
            } else if meta.file_type().is_symlink() {
                let target = std::fs::read_link(&full)?;
                h.set_size(0);
                b.append_link(&mut h, &rel, target)?;
            }
        }
        self.upload_tar(dir, b.into_inner()?)
    }

    /// Downloads `path` (file or directory) as a tar archive.
    pub fn download_tar(&self, path: &str) -> anyhow::Result<Option<Vec<u8>>> {
        let docker = self.engine.docker().clone();
        let id = self.id.clone();
        let opts = DownloadFromContainerOptions {
            path: path.to_string(),
        };
        let res = self.engine.block_on(async move {
            let mut s = docker.download_from_container(&id, Some(opts));
            let mut buf = Vec::new();
            while let Some(chunk) = s.next().await {
                buf.extend_from_slice(&chunk?);
            }
            Ok::<_, bollard::errors::Error>(buf)
        });
        match res {
            Ok(b) => Ok(Some(b)),
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            }) => Ok(None),
            Err(e) => Err(self.exec_failure(e, &format!("download {path}"))),
        }
    }

    /// One file's bytes and mode, `None` when it does not exist; a directory is an error.
    pub fn read_file(&self, path: &str) -> anyhow::Result<Option<(Vec<u8>, u32)>> {
        let Some(tarball) = self.download_tar(path)? else {
            return Ok(None);
        };
        let mut a = tar::Archive::new(&tarball[..]);
        let mut entries = a.entries()?;
        let Some(entry) = entries.next() else {
            bail!("read_file: empty archive for {path}");
        };
        let mut entry = entry?;
        match entry.header().entry_type() {
            tar::EntryType::Regular | tar::EntryType::Continuous => {}
            tar::EntryType::Directory => bail!("{path} is a directory"),
            t => bail!("{path} is not a regular file ({t:?})"),
        }
        let mode = entry.header().mode()? & 0o7777;
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(&mut entry, &mut bytes)?;
        Ok(Some((bytes, mode)))
    }

    /// Copies `path` out of the container into `host_dir` (created if missing).
    pub fn copy_out(&self, path: &str, host_dir: &Path) -> anyhow::Result<()> {
        let tarball = self
            .download_tar(path)?
            .with_context(|| format!("{path} does not exist in the container"))?;
        std::fs::create_dir_all(host_dir)?;
        let mut a = tar::Archive::new(&tarball[..]);
        a.set_preserve_permissions(false);
        a.set_unpack_xattrs(false);
        a.unpack(host_dir)
            .with_context(|| format!("unpacking {path} into {}", host_dir.display()))
    }

    fn uid_gid(&self) -> (u64, u64) {
        let mut it = self.spec.user.split(':');
        let uid = it.next().and_then(|u| u.parse().ok()).unwrap_or(0);
        let gid = it.next().and_then(|g| g.parse().ok()).unwrap_or(uid);
        (uid, gid)
    }

    /// Removes the container now, reporting failure (`Drop` does the same, silently).
    pub fn remove(mut self) -> anyhow::Result<()> {
        self.removed = true;
        registry_lock().remove(&self.id);
        remove_blocking(&self.engine, &self.id)
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        if self.removed {
            return;
        }
        registry_lock().remove(&self.id);
        if let Err(e) = remove_blocking(&self.engine, &self.id) {
            tracing::warn!(container = %self.short_id(), "could not remove container: {e:#}");
        }
    }
}

fn walk(root: &Path, dir: &Path, out: &mut Vec<std::path::PathBuf>) -> anyhow::Result<()> {
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        let p = e.path();
        out.push(p.strip_prefix(root)?.to_path_buf());
        if e.file_type()?.is_dir() {
            walk(root, &p, out)?;
        }
    }
    Ok(())
}

enum Failure {
    Docker(bollard::errors::Error),
    Other(String),
}

struct RawExec {
    exit_code: Option<i64>,
    out: Vec<u8>,
    err: Vec<u8>,
    truncated: bool,
    hard_timeout: bool,
}

async fn remove_async(docker: &bollard::Docker, id: &str) -> Result<(), bollard::errors::Error> {
    let opts = RemoveContainerOptions {
        force: true,
        v: true,
        ..Default::default()
    };
    match docker.remove_container(id, Some(opts)).await {
        Ok(()) => Ok(()),
        // Already gone (AutoRemove), or its removal is already under way.
        Err(bollard::errors::Error::DockerResponseServerError {
            status_code: 404 | 409,
            ..
        }) => Ok(()),
        Err(e) => Err(e),
    }
}

fn remove_blocking(engine: &Engine, id: &str) -> anyhow::Result<()> {
    let docker = engine.docker().clone();
    let id2 = id.to_string();
    let r = engine.block_on(async move {
        tokio::time::timeout(Duration::from_secs(60), remove_async(&docker, &id2)).await
    });
    match r {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(engine.classify(e, &format!("remove container {id}"))),
        Err(_) => Err(EngineError::Lost {
            socket: engine.socket().to_string(),
            operation: format!("remove container {id}"),
            reason: "no answer within 60s".into(),
        }
        .into()),
    }
}

/// Force-removes every container this process still holds. Returns how many.
pub fn cleanup_all() -> usize {
    let live: Vec<(String, Engine)> = registry_lock().drain().collect();
    let n = live.len();
    for (id, engine) in live {
        if let Err(e) = remove_blocking(&engine, &id) {
            tracing::warn!(container = %id, "cleanup: {e:#}");
        }
    }
    n
}

/// Ids of live containers carrying `key=value` (all states).
pub fn list_labeled(engine: &Engine, key: &str, value: &str) -> anyhow::Result<Vec<String>> {
    let docker = engine.docker().clone();
    let filter = format!("{key}={value}");
    let opts = ListContainersOptions {
        all: true,
        filters: Some(HashMap::from([("label".to_string(), vec![filter])])),
        ..Default::default()
    };
    let list = engine
        .block_on(async move { docker.list_containers(Some(opts)).await })
        .map_err(|e| engine.classify(e, "list containers"))?;
    Ok(list.into_iter().filter_map(|c| c.id).collect())
}

/// Removes containers left by processes that no longer exist (e.g. killed with SIGKILL).
pub fn reap_orphans(engine: &Engine) -> anyhow::Result<usize> {
    let docker = engine.docker().clone();
    let opts = ListContainersOptions {
        all: true,
        filters: Some(HashMap::from([(
            "label".to_string(),
            vec![format!("{LABEL}=1")],
        )])),
        ..Default::default()
    };
    let list = engine
        .block_on(async move { docker.list_containers(Some(opts)).await })
        .map_err(|e| engine.classify(e, "list containers"))?;
    let mut n = 0;
    for c in list {
        let pid: Option<i32> = c
            .labels
            .as_ref()
            .and_then(|l| l.get(LABEL_PID))
            .and_then(|p| p.parse().ok());
        // SAFETY: kill with signal 0 only checks whether the process exists.
        let alive = pid.is_some_and(|p| unsafe { libc::kill(p, 0) } == 0);
        if !alive {
            if let Some(id) = c.id {
                remove_blocking(engine, &id)?;
                n += 1;
            }
        }
    }
    Ok(n)
}

/// On Ctrl-C or SIGTERM: removes every live container, then exits (130 / 143).
/// Call once, early, in a binary (tests do not need it).
pub fn install_signal_cleanup(engine: &Engine) -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let _enter = engine.runtime().enter();
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    engine.runtime().spawn(async move {
        let a = Box::pin(int.recv());
        let b = Box::pin(term.recv());
        let code = match futures_util::future::select(a, b).await {
            futures_util::future::Either::Left(_) => 130,
            futures_util::future::Either::Right(_) => 143,
        };
        let live: Vec<(String, Engine)> = registry_lock().drain().collect();
        for (id, engine) in &live {
            let _ =
                tokio::time::timeout(Duration::from_secs(20), remove_async(engine.docker(), id))
                    .await;
        }
        eprintln!("interrupted: removed {} container(s)", live.len());
        std::process::exit(code);
    });
    Ok(())
}
