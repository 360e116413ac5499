//! One shell for a whole rollout, as SWE-agent keeps one through SWE-ReX: `cd`, `export`,
//! an activated environment and shell variables carry over from one `bash` call to the next.
//!
//! The shell is `bash --norc --noprofile` in a single long-lived exec with stdin attached
//! and no TTY, so stdout and stderr stay apart. Each command is written to its stdin as
//! `eval $'<command>' </dev/null` — quoted byte for byte, so no quoting, heredoc or syntax
//! error can leave the shell waiting for more input, and the command reads no stdin of ours —
//! followed by an end marker carrying a fresh random nonce and the exit status, on stdout
//! and on stderr. The command's output is what arrives before the markers.
//!
//! A command that outlives its timeout is ended without ending the shell: every descendant
//! process of the shell is killed (found through `/proc` from a separate exec as root), and
//! the shell, back from its wait, prints the markers. A command that keeps the shell itself
//! busy (a `while :; do :; done` of builtins) cannot be interrupted that way; then the shell
//! is killed and the next command gets a fresh one, and the observation says so. `exit` ends
//! the shell the same way.
//!
//! Round trips avoid creating a process per call (runc's start of an exec process is most of
//! a `docker exec`): `bench/env.sh` measures both.

use crate::container::{Container, ExecOutput, ExecRequest};
use anyhow::{anyhow, bail, Context};
use futures_util::StreamExt;
use std::pin::Pin;
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};
use tokio::io::{AsyncWrite, AsyncWriteExt};

enum Chunk {
    Out(Vec<u8>),
    Err(Vec<u8>),
    /// The stream ended (the shell exited or the engine went away); the error, if any.
    End(Option<String>),
}

struct Live {
    exec_id: String,
    pid: i64,
    input: Pin<Box<dyn AsyncWrite + Send>>,
    rx: Receiver<Chunk>,
}

/// A persistent shell in a container.
pub struct ShellSession<'c> {
    container: &'c Container,
    workdir: String,
    /// Lines run once when a shell starts (activating an environment).
    pub init: Vec<String>,
    live: Option<Live>,
    /// Set when the last shell died or was killed: said in the next observation.
    restarted: Option<String>,
    counter: u64,
}

/// Time a killed command's shell gets to come back before the shell itself is replaced.
const GRACE: Duration = Duration::from_secs(5);

/// `$'…'`: bash's ANSI-C quoting of arbitrary bytes.
pub fn ansi_c_quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 3);
    out.push_str("$'");
    for b in s.bytes() {
        match b {
            b'\'' | b'\\' => {
                out.push('\\');
                out.push(b as char);
            }
            0x20..=0x7e => out.push(b as char),
            _ => out.push_str(&format!("\\x{b:02x}")),
        }
    }
    out.push('\'');
    out
}

/// Finds every descendant of `$ROOT` in `/proc` and sends them `$SIG` (and the shell too,
/// with `$SHELL_TOO`); prints their pids.
const KILL_DESCENDANTS: &str = r#"declare -A kids
for s in /proc/[0-9]*/stat; do
  read -r line < "$s" 2>/dev/null || continue
  pid=${s#/proc/}; pid=${pid%/stat}
  rest=${line##*) }
  set -- $rest
  kids[$2]+=" $pid"
done
todo="${kids[$ROOT]}"; all=""
while [ -n "${todo// /}" ]; do
  set -- $todo; p=$1; shift; todo="$*"
  all="$all $p"; todo="$todo ${kids[$p]}"
done
[ -n "$SHELL_TOO" ] && kill -"$SIG" "$ROOT" 2>/dev/null
[ -n "${all// /}" ] && kill -"$SIG" $all 2>/dev/null
echo "$all"
"#;

impl<'c> ShellSession<'c> {
    pub fn new(container: &'c Container, workdir: &str) -> ShellSession<'c> {
        ShellSession {
            container,
            workdir: workdir.to_string(),
            init: Vec::new(),
            live: None,
            restarted: None,
            counter: 0,
        }
    }

    /// The shell's pid in the container, once started.
    pub fn pid(&self) -> Option<i64> {
        self.live.as_ref().map(|l| l.pid)
    }

    fn start(&mut self) -> anyhow::Result<()> {
        let engine = self.container.engine().clone();
        let spec = self.container.spec();
        let config = bollard::models::ExecConfig {
            attach_stdin: Some(true),
            attach_stdout: Some(true),
            attach_stderr: Some(true),
            tty: Some(false),
            cmd: Some(vec!["bash".into(), "--norc".into(), "--noprofile".into()]),
            user: Some(spec.user.clone()),
            working_dir: Some(self.workdir.clone()),
            env: Some(spec.env.clone()),
            ..Default::default()
        };
        let docker = engine.docker().clone();
        let id = self.container.id().to_string();
        let what = format!(
            "starting a shell in container {}",
            self.container.short_id()
        );
        let (exec_id, started) = engine
            .block_on(async move {
                let created = docker.create_exec(&id, config).await?;
                let started = docker.start_exec(&created.id, None).await?;
                Ok::<_, bollard::errors::Error>((created.id, started))
            })
            .map_err(|e| engine.classify(e, &what))?;
        let (output, input) = match started {
            bollard::exec::StartExecResults::Attached { output, input } => (output, input),
            bollard::exec::StartExecResults::Detached => bail!("{what}: the exec started detached"),
        };
        let (tx, rx) = channel();
        engine.runtime().spawn(async move {
            let mut output = output;
            while let Some(item) = output.next().await {
                let chunk = match item {
                    Ok(bollard::container::LogOutput::StdOut { message })
                    | Ok(bollard::container::LogOutput::Console { message }) => {
                        Chunk::Out(message.to_vec())
                    }
                    Ok(bollard::container::LogOutput::StdErr { message }) => {
                        Chunk::Err(message.to_vec())
                    }
                    Ok(bollard::container::LogOutput::StdIn { .. }) => continue,
                    Err(e) => {
                        let _ = tx.send(Chunk::End(Some(e.to_string())));
                        return;
                    }
                };
                if tx.send(chunk).is_err() {
                    return;
                }
            }
            let _ = tx.send(Chunk::End(None));
        });
        self.live = Some(Live {
            exec_id,
            pid: 0,
            input,
            rx,
        });
        let pid = self.raw("echo $$", Duration::from_secs(30))?;
        let pid: i64 = pid
            .stdout
            .trim()
            .parse()
            .with_context(|| format!("{what}: the shell did not tell its pid: {pid:?}"))?;
        self.live.as_mut().expect("just started").pid = pid;
        for line in self.init.clone() {
            let out = self.raw(&line, Duration::from_secs(120))?;
            if out.exit_code != 0 {
                bail!(
                    "{what}: `{line}` exited {}: {}",
                    out.exit_code,
                    out.combined().trim()
                );
            }
        }
        Ok(())
    }

    /// Runs `command` in the session's shell, its own time limit `timeout` (and never past
    /// the rollout's).
    pub fn run(&mut self, command: &str, timeout: Duration) -> anyhow::Result<ExecOutput> {
        if self.live.is_none() {
            self.start()?;
        }
        let mut out = self.raw(command, timeout)?;
        if let Some(note) = self.restarted.take() {
            out.stderr.push_str(&note);
        }
        Ok(out)
    }

    fn nonce(&mut self) -> String {
        self.counter += 1;
        let mut h = blake3::Hasher::new();
        h.update(&self.counter.to_le_bytes());
        h.update(self.container.id().as_bytes());
        h.update(&std::process::id().to_le_bytes());
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        h.update(&t.as_nanos().to_le_bytes());
        format!("__DAVINCI_END_{}__", &h.finalize().to_hex()[..24])
    }

    fn raw(&mut self, command: &str, timeout: Duration) -> anyhow::Result<ExecOutput> {
        let remaining = self.container.remaining();
        if remaining.is_zero() {
            return Err(crate::container::RolloutExpired {
                id: self.container.short_id().to_string(),
                limit: self.container.spec().rollout_timeout,
            }
            .into());
        }
        let limit = timeout.min(remaining);
        let marker = self.nonce();
        let script = format!(
            "eval {} </dev/null\n__davinci_rc=$?\nprintf '\\n{marker}%s\\n' \"$__davinci_rc\"\nprintf '\\n{marker}\\n' >&2\n",
            ansi_c_quote(command)
        );
        let engine = self.container.engine().clone();
        let max = self.container.spec().max_output_bytes;
        let t0 = Instant::now();
        {
            let live = self.live.as_mut().expect("a live shell");
            let input = &mut live.input;
            let what = format!(
                "writing to the shell in container {}",
                self.container.short_id()
            );
            engine
                .block_on(async move {
                    input.write_all(script.as_bytes()).await?;
                    input.flush().await
                })
                .map_err(|e| anyhow!("{what}: {e}"))?;
        }
        let mut out = Vec::new();
        let mut err = Vec::new();
        let mut truncated = false;
        let mut code: Option<i64> = None;
        let mut err_done = false;
        let mut timed_out = false;
        // 0: running; 1: interrupted; 2: its processes killed.
        let mut stage = 0u8;
        let mut deadline = t0 + limit;
        let out_tag = format!("\n{marker}");
        let err_tag = format!("\n{marker}\n");
        loop {
            if code.is_some() && err_done {
                break;
            }
            let now = Instant::now();
            let chunk = if now >= deadline {
                Err(RecvTimeoutError::Timeout)
            } else {
                self.live
                    .as_ref()
                    .expect("a live shell")
                    .rx
                    .recv_timeout(deadline - now)
            };
            match chunk {
                // Output after a stream's marker belongs to nothing this command waits for
                // (a background process of an earlier command).
                Ok(Chunk::Out(_)) if code.is_some() => {}
                Ok(Chunk::Err(_)) if err_done => {}
                Ok(Chunk::Out(b)) => {
                    let from = append(&mut out, &b, max, out_tag.len(), &mut truncated);
                    if let Some(at) = find(&out, from, out_tag.as_bytes()) {
                        let rest = &out[at + out_tag.len()..];
                        if let Some(nl) = rest.iter().position(|c| *c == b'\n') {
                            code = String::from_utf8_lossy(&rest[..nl]).trim().parse().ok();
                            if code.is_none() {
                                code = Some(-1);
                            }
                            out.truncate(at);
                        }
                    }
                }
                Ok(Chunk::Err(b)) => {
                    let from = append(&mut err, &b, max, err_tag.len(), &mut truncated);
                    if let Some(at) = find(&err, from, err_tag.as_bytes()) {
                        err.truncate(at);
                        err_done = true;
                    }
                }
                Ok(Chunk::End(reason)) => {
                    // The shell is gone: `exit`, a fatal `set -e`, or the container stopped.
                    let exit = self.exec_exit_code();
                    self.live = None;
                    if let Some(r) = reason {
                        self.container.engine().ping()?;
                        tracing::warn!(container = %self.container.short_id(), "shell stream ended: {r}");
                    }
                    if !self.container.is_running()? {
                        bail!(
                            "the shell in container {} ended with the container (rollout limit reached, or killed)",
                            self.container.short_id()
                        );
                    }
                    self.restarted = Some(
                        "\n<<< the shell exited; the next command starts a new shell in the repository >>>"
                            .into(),
                    );
                    let mut o = output(out, err, exit.unwrap_or(-1), timed_out, truncated, t0);
                    if let Some(note) = self.restarted.take() {
                        o.stderr.push_str(&note);
                    }
                    return Ok(o);
                }
                Err(RecvTimeoutError::Disconnected) => {
                    self.live = None;
                    bail!(
                        "the shell reader in container {} stopped",
                        self.container.short_id()
                    );
                }
                Err(RecvTimeoutError::Timeout) if stage == 0 => {
                    timed_out = true;
                    stage = 1;
                    self.signal_descendants("INT", false)?;
                    deadline = Instant::now() + Duration::from_secs(2);
                }
                Err(RecvTimeoutError::Timeout) if stage == 1 => {
                    stage = 2;
                    self.signal_descendants("KILL", false)?;
                    deadline = Instant::now() + GRACE;
                }
                Err(RecvTimeoutError::Timeout) => {
                    // Busy in the shell itself: replace the shell.
                    self.kill_shell()?;
                    self.restarted = Some(
                        "\n<<< the shell did not come back and was restarted: working directory and environment are reset >>>"
                            .into(),
                    );
                    let mut o = output(out, err, -1, true, truncated, t0);
                    if let Some(note) = self.restarted.take() {
                        o.stderr.push_str(&note);
                    }
                    return Ok(o);
                }
            }
        }
        Ok(output(
            out,
            err,
            code.unwrap_or(-1),
            timed_out,
            truncated,
            t0,
        ))
    }

    fn exec_exit_code(&self) -> Option<i64> {
        let live = self.live.as_ref()?;
        let docker = self.container.engine().docker().clone();
        let id = live.exec_id.clone();
        self.container
            .engine()
            .block_on(async move { docker.inspect_exec(&id).await })
            .ok()
            .and_then(|i| i.exit_code)
    }

    fn signal_descendants(&self, signal: &str, shell_too: bool) -> anyhow::Result<()> {
        let Some(live) = &self.live else {
            return Ok(());
        };
        let r = self.container.exec_with(
            &ExecRequest {
                env: vec![
                    format!("ROOT={}", live.pid),
                    format!("SIG={signal}"),
                    format!("SHELL_TOO={}", if shell_too { "1" } else { "" }),
                ],
                ..ExecRequest::bash(KILL_DESCENDANTS)
            }
            .as_root()
            .timeout(Duration::from_secs(30)),
        )?;
        tracing::debug!(signal, pids = %r.stdout.trim(), "signalled a timed-out command's processes");
        Ok(())
    }

    fn kill_shell(&mut self) -> anyhow::Result<()> {
        if let Some(live) = self.live.take() {
            self.container.exec_with(
                &ExecRequest {
                    argv: vec!["kill".into(), "-KILL".into(), live.pid.to_string()],
                    ..Default::default()
                }
                .as_root()
                .timeout(Duration::from_secs(30)),
            )?;
        }
        Ok(())
    }
}

/// Appends a chunk; returns where a marker of `tag` bytes may start in the grown buffer.
/// Past `max` bytes the middle is dropped (flagged), keeping the head and a tail long enough
/// to find the marker in.
fn append(buf: &mut Vec<u8>, b: &[u8], max: usize, tag: usize, truncated: &mut bool) -> usize {
    let window = tag + 64;
    if buf.len() + b.len() > max + (1 << 16) {
        *truncated = true;
        let keep_from = buf.len().saturating_sub(window).max(max.min(buf.len()));
        buf.drain(max.min(buf.len())..keep_from);
    }
    let from = buf.len().saturating_sub(tag + 24);
    buf.extend_from_slice(b);
    from
}

fn find(hay: &[u8], from: usize, needle: &[u8]) -> Option<usize> {
    hay.get(from..)?
        .windows(needle.len())
        .position(|w| w == needle)
        .map(|p| p + from)
}

fn output(
    out: Vec<u8>,
    err: Vec<u8>,
    exit_code: i64,
    timed_out: bool,
    truncated: bool,
    t0: Instant,
) -> ExecOutput {
    ExecOutput {
        exit_code,
        stdout: String::from_utf8_lossy(&out).into_owned(),
        stderr: String::from_utf8_lossy(&err).into_owned(),
        timed_out,
        output_truncated: truncated,
        duration_ms: t0.elapsed().as_millis() as u64,
    }
}

#[cfg(test)]
mod tests {
    use super::ansi_c_quote;

    #[test]
    fn ansi_c_quoting_keeps_every_byte() {
        assert_eq!(ansi_c_quote("echo 'a' \\ b"), r"$'echo \'a\' \\ b'");
        assert_eq!(ansi_c_quote("a\nb\tü"), r"$'a\x0ab\x09\xc3\xbc'");
    }
}
