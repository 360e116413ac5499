//! D_env: executable environments. `synthesize` makes SWE-bench-style task instances from
//! real PyPI projects; `rollout` runs a policy on them in Docker and grades the result.
//!
//! Everything a container answers goes through the ledger as an observation, so a replay
//! rebuilds instances and trajectories bit for bit without an engine:
//! - work runs on worker threads (one container each), each observing through the unit's
//!   `Observer` (the stage contract's `Send + Clone` handle; `Recorder` here);
//! - each container action is keyed by its session (a stable label: package, or instance +
//!   run), its position, the hash of everything the session observed before it, and the
//!   action itself: the same key means the same history, whatever the machine;
//! - in a run an action is always performed (the container's state needs it) and then
//!   recorded; when the key was already recorded (a resumed run), the record wins. In a replay
//!   nothing is performed; with `--reexecute` it is performed again in a fresh container and
//!   compared with the record after timings are normalized.

pub mod policy;
pub mod rollout;
pub mod swebench;
pub mod synthesize;

use anyhow::{anyhow, Context};
use env::container::{Container, ExecOutput, ExecRequest};
use serde::Serialize;
use std::path::PathBuf;
use std::time::Duration;

/// Where base images' root filesystems are cached: `$DAVINCI_ENV_CACHE`, else
/// `$XDG_CACHE_HOME/davinci-ledger/env`, else `~/.cache/davinci-ledger/env`.
pub fn env_cache_dir() -> PathBuf {
    std::env::var_os("DAVINCI_ENV_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| crate::http::cache_dir("env"))
}

/// The engine, connected (and started through `scripts/setup.sh` when it does not answer).
/// The first connection installs the Ctrl-C / SIGTERM handler that removes this process's
/// containers before it exits.
pub fn connect_engine() -> anyhow::Result<env::Engine> {
    let engine = if env::engine::docker_info_ok() {
        env::Engine::connect()?
    } else {
        env::engine::start_with_setup_script()
            .context("no Docker engine answered, and starting one failed")?
    };
    // The handler lives on this engine's runtime: keep that engine for the process's life.
    static SIGNALS: std::sync::OnceLock<env::Engine> = std::sync::OnceLock::new();
    if SIGNALS.get().is_none() {
        env::container::install_signal_cleanup(&engine)?;
        let _ = SIGNALS.set(engine.clone());
    }
    Ok(engine)
}

/// A unit's handle on its observations (the stage contract's `Observer`: `Send + Clone`, for
/// the worker threads of a unit).
pub type Recorder = ledger::observe::Observer;

/// Replaces timings (`0.52s`, `12ms`, `"duration_ms":123`) and memory addresses
/// (`0x7fae335e23e0`, as in Python reprs) so re-executed output compares equal to the record
/// when only the clock or the allocator differs.
pub fn normalize(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let mut out = String::with_capacity(text.len());
    let chars: Vec<char> = text.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        if chars[i] == '0' && chars.get(i + 1) == Some(&'x') {
            let digits = chars[i + 2..]
                .iter()
                .take_while(|c| c.is_ascii_hexdigit())
                .count();
            if digits >= 6 {
                out.push_str("0x<ADDR>");
                i += 2 + digits;
                continue;
            }
        }
        if chars[i].is_ascii_digit() && (i == 0 || !chars[i - 1].is_alphanumeric()) {
            let start = i;
            while i < chars.len() && (chars[i].is_ascii_digit() || chars[i] == '.') {
                i += 1;
            }
            let unit: String = chars[i..chars.len().min(i + 2)].iter().collect();
            let timed = unit.starts_with('s')
                && !unit[1..].starts_with(|c: char| c.is_alphanumeric())
                || unit == "ms";
            let key_before: String = out.chars().rev().take(14).collect::<String>();
            let duration_field = key_before.starts_with(":\"sm_noitarud\"");
            if timed || duration_field {
                out.push_str("<T>");
                continue;
            }
            out.extend(&chars[start..i]);
            continue;
        }
        out.push(chars[i]);
        i += 1;
    }
    out
}

/// One container's sequence of recorded actions.
pub struct Session<'r, 'c> {
    pub recorder: &'r Recorder,
    /// Stable across machines: what the actions belong to.
    pub label: String,
    /// `None` in a replay: nothing is performed.
    pub container: Option<&'c Container>,
    step: u64,
    /// BLAKE3 of everything observed so far in this session.
    chain: blake3::Hasher,
}

#[derive(Serialize)]
struct ActionKey<'a, T: Serialize> {
    session: &'a str,
    step: u64,
    history: String,
    action: T,
}

impl<'r, 'c> Session<'r, 'c> {
    pub fn new(recorder: &'r Recorder, label: String, container: Option<&'c Container>) -> Self {
        Session {
            recorder,
            label,
            container,
            step: 0,
            chain: blake3::Hasher::new(),
        }
    }

    fn key<T: Serialize>(&self, action: T) -> Vec<u8> {
        serde_json::to_vec(&ActionKey {
            session: &self.label,
            step: self.step,
            history: self.chain.clone().finalize().to_hex().to_string(),
            action,
        })
        .expect("action key serializes")
    }

    fn advance(&mut self, request: &[u8], response: &[u8]) {
        self.step += 1;
        self.chain.update(&(request.len() as u64).to_le_bytes());
        self.chain.update(request);
        self.chain.update(&(response.len() as u64).to_le_bytes());
        self.chain.update(response);
    }

    /// A recorded action whose response is JSON of `R`.
    pub fn act<A: Serialize, R: serde::de::DeserializeOwned + Serialize>(
        &mut self,
        source: &str,
        action: A,
        perform: impl FnOnce() -> anyhow::Result<R>,
    ) -> anyhow::Result<R> {
        let request = self.key(action);
        let response = self.recorder.execute(source, &request, normalize, || {
            Ok(serde_json::to_vec(&perform()?)?)
        })?;
        self.advance(&request, &response);
        serde_json::from_slice(&response)
            .with_context(|| format!("{}: recorded {source} response is not valid", self.label))
    }

    /// `bash -c script` in the container, recorded.
    pub fn exec(
        &mut self,
        script: &str,
        workdir: &str,
        timeout: Duration,
    ) -> anyhow::Result<ExecOutput> {
        let req = ExecRequest::bash(script).workdir(workdir).timeout(timeout);
        let container = self.container;
        let label = self.label.clone();
        self.act(
            "exec",
            serde_json::json!({"exec": script, "workdir": workdir, "timeout_s": timeout.as_secs()}),
            || {
                container
                    .ok_or_else(|| anyhow!("{label}: no container"))?
                    .exec_with(&req)
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::normalize;

    #[test]
    fn timings_are_normalized_and_other_numbers_kept() {
        assert_eq!(
            normalize(b"5 passed in 0.52s\nline 12 took 30ms, x1s"),
            "5 passed in <T>s\nline 12 took <T>ms, x1s"
        );
        assert_eq!(
            normalize(br#"{"exit_code":0,"duration_ms":1234}"#),
            r#"{"exit_code":0,"duration_ms":<T>}"#
        );
        assert_eq!(normalize(b"3 tests, 2 seconds"), "3 tests, 2 seconds");
        assert_eq!(
            normalize(b"<function f at 0x7fae335e23e0> 0x10"),
            "<function f at 0x<ADDR>> 0x10"
        );
    }
}
