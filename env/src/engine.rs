//! The connection to the local Docker engine.
//!
//! Only a local unix socket is ever used (`DOCKER_HOST=unix://...` or `/var/run/docker.sock`):
//! environments never talk to a remote engine. The public API is blocking; a small private
//! tokio runtime drives bollard underneath, so a `Stage::execute` can call it directly.

use anyhow::{bail, Context};
use bollard::Docker;
use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// The socket used when `DOCKER_HOST` does not name one.
pub const DEFAULT_SOCKET: &str = "/var/run/docker.sock";

/// Seconds bollard waits for any single engine response (an image import can be slow).
const CLIENT_TIMEOUT_SECS: u64 = 900;

/// Errors that say the engine itself is not there (as opposed to a failed operation).
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(
        "no Docker engine answers on unix socket {socket}: {reason} \
         (start one with `bash scripts/setup.sh`, or `dockerd --bridge=none --iptables=false`)"
    )]
    Unavailable { socket: String, reason: String },
    #[error("the Docker engine on {socket} went away during `{operation}`: {reason}")]
    Lost {
        socket: String,
        operation: String,
        reason: String,
    },
    #[error("DOCKER_HOST={0} is not a unix socket; environments only use a local engine")]
    NotLocal(String),
}

/// A connected, version-negotiated engine. Cheap to clone.
#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

struct Inner {
    rt: tokio::runtime::Runtime,
    docker: Docker,
    socket: String,
    api_version: String,
}

/// The socket `DOCKER_HOST` names, or the default one.
pub fn socket_path() -> Result<String, EngineError> {
    match std::env::var("DOCKER_HOST") {
        Ok(h) if !h.is_empty() => match h.strip_prefix("unix://") {
            Some(p) => Ok(p.to_string()),
            None => Err(EngineError::NotLocal(h)),
        },
        _ => Ok(DEFAULT_SOCKET.to_string()),
    }
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("socket", &self.inner.socket)
            .field("api_version", &self.inner.api_version)
            .finish()
    }
}

impl Engine {
    /// Connects to the local engine (see `socket_path`).
    pub fn connect() -> anyhow::Result<Engine> {
        Engine::connect_socket(&socket_path()?)
    }

    /// Connects to the engine on `socket` and negotiates the API version (the engine may
    /// speak an older API than bollard, e.g. 1.41 for Debian's docker.io 20.10).
    pub fn connect_socket(socket: &str) -> anyhow::Result<Engine> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("davinci-env-engine")
            .enable_all()
            .build()
            .context("starting the engine client runtime")?;
        let unavailable = |reason: String| EngineError::Unavailable {
            socket: socket.to_string(),
            reason,
        };
        let docker =
            Docker::connect_with_unix(socket, CLIENT_TIMEOUT_SECS, bollard::API_DEFAULT_VERSION)
                .map_err(|e| unavailable(e.to_string()))?;
        let docker = rt
            .block_on(async {
                tokio::time::timeout(Duration::from_secs(15), docker.negotiate_version()).await
            })
            .map_err(|_| unavailable("no answer within 15s".into()))?
            .map_err(|e| unavailable(e.to_string()))?;
        let v = docker.client_version();
        let api_version = format!("{}.{}", v.major_version, v.minor_version);
        tracing::debug!(socket, api_version, "connected to the Docker engine");
        Ok(Engine {
            inner: Arc::new(Inner {
                rt,
                docker,
                socket: socket.to_string(),
                api_version,
            }),
        })
    }

    pub fn docker(&self) -> &Docker {
        &self.inner.docker
    }

    pub fn socket(&self) -> &str {
        &self.inner.socket
    }

    /// The negotiated API version, e.g. `1.41`.
    pub fn api_version(&self) -> &str {
        &self.inner.api_version
    }

    /// Runs a future on the engine's runtime. Safe to call from inside another tokio
    /// runtime's thread (it hops to a plain thread then).
    pub fn block_on<F>(&self, f: F) -> F::Output
    where
        F: Future + Send,
        F::Output: Send,
    {
        if tokio::runtime::Handle::try_current().is_ok() {
            std::thread::scope(|s| s.spawn(|| self.inner.rt.block_on(f)).join())
                .unwrap_or_else(|p| std::panic::resume_unwind(p))
        } else {
            self.inner.rt.block_on(f)
        }
    }

    pub(crate) fn runtime(&self) -> &tokio::runtime::Runtime {
        &self.inner.rt
    }

    /// Answers whether the engine still responds.
    pub fn ping(&self) -> anyhow::Result<()> {
        let docker = self.docker().clone();
        self.block_on(async move { docker.ping().await })
            .map_err(|e| self.classify(e, "ping"))?;
        Ok(())
    }

    /// Turns a bollard error into an `anyhow::Error`, naming the operation; transport
    /// failures become `EngineError::Lost` so a dead engine is never mistaken for a result.
    pub fn classify(&self, e: bollard::errors::Error, operation: &str) -> anyhow::Error {
        use bollard::errors::Error as B;
        let lost = matches!(
            e,
            B::IOError { .. }
                | B::HyperResponseError { .. }
                | B::RequestTimeoutError
                | B::SocketNotFoundError(_)
                | B::HyperLegacyError { .. }
        );
        if lost || !Path::new(self.socket()).exists() {
            EngineError::Lost {
                socket: self.socket().to_string(),
                operation: operation.to_string(),
                reason: e.to_string(),
            }
            .into()
        } else {
            anyhow::Error::new(e).context(format!("docker {operation}"))
        }
    }
}

/// Whether `docker info` answers (the CLI check the setup script uses too).
pub fn docker_info_ok() -> bool {
    std::process::Command::new("docker")
        .arg("info")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// The project's `scripts/setup.sh`, compiled in: an installed `ledger` starts an engine
/// without the source tree it was built from.
pub const SETUP_SCRIPT: &str = include_str!("../../scripts/setup.sh");

/// Runs the setup script (which installs docker.io and debootstrap when missing and starts
/// `dockerd --bridge=none --iptables=false` when `docker info` fails), then connects.
pub fn start_with_setup_script() -> anyhow::Result<Engine> {
    let status = std::process::Command::new("bash")
        .arg("-c")
        .arg(SETUP_SCRIPT)
        .arg("setup.sh")
        .status()
        .context("running the setup script (scripts/setup.sh) with bash")?;
    if !status.success() {
        bail!("the setup script (scripts/setup.sh) failed ({status})");
    }
    Engine::connect()
}
