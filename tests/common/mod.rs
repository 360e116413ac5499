//! Shared fixture for the end-to-end tests: a throwaway directory holding one ledger, and helpers
//! that run the real `ledger` binary against it.
#![allow(dead_code)] // each test crate uses a different subset

use std::ffi::OsStr;
use std::fmt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

pub const BIN: &str = env!("CARGO_BIN_EXE_ledger");

/// The log header and frame layout (`u32 LE len | payload | 32-byte blake3`).
pub const HEADER: &[u8; 8] = b"DVLEDG01";
pub const SUM_BYTES: u64 = 32;

/// What one `ledger` invocation did.
pub struct Output {
    pub code: i32,
    pub stdout: String,
    pub stdout_bytes: Vec<u8>,
    pub stderr: String,
    pub args: Vec<String>,
}

impl fmt::Debug for Output {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "`ledger {}` exited {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.args.join(" "),
            self.code,
            self.stdout,
            self.stderr
        )
    }
}

impl Output {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}):\n{self:?}"))
    }

    /// Asserts the exit status, showing everything the command printed when it differs.
    #[track_caller]
    pub fn expect_code(self, code: i32) -> Output {
        assert_eq!(self.code, code, "unexpected exit status:\n{self:?}");
        self
    }
}

/// A temporary working directory with a ledger at `<root>/ledger`.
pub struct Ledger {
    pub tmp: tempfile::TempDir,
    pub root: PathBuf,
    pub dir: PathBuf,
}

impl Default for Ledger {
    fn default() -> Self {
        Ledger::new()
    }
}

impl Ledger {
    /// A fixture whose ledger directory does not exist yet.
    pub fn new() -> Ledger {
        let tmp = tempfile::Builder::new()
            .prefix("ledger-e2e-")
            .tempdir()
            .expect("tempdir");
        let root = tmp.path().to_path_buf();
        let dir = root.join("ledger");
        Ledger { tmp, root, dir }
    }

    /// A fixture with an initialised, empty ledger.
    pub fn init() -> Ledger {
        let l = Ledger::new();
        let out = l.run(["init"]).expect_code(0);
        assert!(
            out.stdout.contains("initialised an empty ledger"),
            "{out:?}"
        );
        l
    }

    /// A `ledger --ledger <dir> ARGS` command, run from the fixture root, with no environment
    /// that could change its behaviour.
    pub fn command<I, S>(&self, args: I) -> Command
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut cmd = Command::new(BIN);
        cmd.arg("--ledger")
            .arg(&self.dir)
            .args(args)
            .current_dir(&self.root)
            .env_remove("LEDGER_DIR")
            .env_remove("RUST_LOG")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null());
        cmd
    }

    pub fn run<I, S>(&self, args: I) -> Output
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let args: Vec<String> = args
            .into_iter()
            .map(|a| a.as_ref().to_string_lossy().into_owned())
            .collect();
        let out = self
            .command(&args)
            .output()
            .unwrap_or_else(|e| panic!("cannot start {BIN}: {e}"));
        Output {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stdout_bytes: out.stdout,
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            args,
        }
    }

    /// Runs and asserts exit status 0.
    #[track_caller]
    pub fn ok<I, S>(&self, args: I) -> Output
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.run(args).expect_code(0)
    }

    /// Starts a command without waiting for it, stdout and stderr piped.
    pub fn spawn<I, S>(&self, args: I) -> Child
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.command(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {BIN}: {e}"))
    }

    /// Writes a file under the fixture root (creating parent directories) and returns its path.
    pub fn write(&self, rel: &str, contents: impl AsRef<[u8]>) -> PathBuf {
        let path = self.root.join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, contents).unwrap();
        path
    }

    /// Writes an experiment config under the fixture root and returns its path.
    pub fn config(&self, name: &str, toml: &str) -> PathBuf {
        self.write(name, toml)
    }

    /// A small data set under `<root>/<dir>`: three text files; returns (relative name, bytes).
    pub fn data_set(&self, dir: &str) -> Vec<(String, Vec<u8>)> {
        let files = vec![
            ("a.txt".to_string(), b"alpha\nbeta\n".to_vec()),
            ("b.md".to_string(), b"# title\n\nsome words\n".to_vec()),
            (
                "sub/c.rs".to_string(),
                b"fn main() {\n    println!(\"hi\");\n}\n".to_vec(),
            ),
        ];
        for (name, bytes) in &files {
            self.write(&format!("{dir}/{name}"), bytes);
        }
        files
    }

    /// `ledger run --json --no-progress CONFIG`, asserting success.
    #[track_caller]
    pub fn run_config(&self, config: &Path) -> serde_json::Value {
        self.ok([
            OsStr::new("run"),
            OsStr::new("--json"),
            OsStr::new("--no-progress"),
            config.as_os_str(),
        ])
        .json()
    }

    /// Every event, from `ledger log --json`.
    #[track_caller]
    pub fn events(&self) -> Vec<serde_json::Value> {
        match self.ok(["log", "--json"]).json() {
            serde_json::Value::Array(v) => v,
            other => panic!("log --json is not an array: {other}"),
        }
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.join("events.log")
    }

    pub fn log_bytes(&self) -> Vec<u8> {
        std::fs::read(self.log_path()).expect("events.log")
    }

    /// Where the store keeps a blob.
    pub fn blob_path(&self, hex: &str) -> PathBuf {
        self.dir.join("objects").join(&hex[..2]).join(&hex[2..])
    }

    /// Every blob file in the store, as hex addresses, sorted.
    pub fn blobs(&self) -> Vec<String> {
        let mut out = Vec::new();
        let Ok(shards) = std::fs::read_dir(self.dir.join("objects")) else {
            return out;
        };
        for shard in shards {
            let shard = shard.unwrap();
            let prefix = shard.file_name().to_string_lossy().into_owned();
            for entry in std::fs::read_dir(shard.path()).unwrap() {
                let name = entry.unwrap().file_name().to_string_lossy().into_owned();
                out.push(format!("{prefix}{name}"));
            }
        }
        out.sort();
        out
    }

    /// The frames of events.log: (offset of the frame, payload length).
    pub fn frames(&self) -> Vec<(u64, u64)> {
        frames_of(&self.log_bytes())
    }
}

/// Parses the frame layout of a log (stops at the first incomplete frame).
pub fn frames_of(log: &[u8]) -> Vec<(u64, u64)> {
    assert_eq!(&log[..8], HEADER, "events.log header");
    let mut out = Vec::new();
    let mut off = HEADER.len();
    while off + 4 <= log.len() {
        let len = u32::from_le_bytes(log[off..off + 4].try_into().unwrap()) as usize;
        let end = off + 4 + len + SUM_BYTES as usize;
        if end > log.len() {
            break;
        }
        out.push((off as u64, len as u64));
        off = end;
    }
    out
}

/// BLAKE3 of some bytes, as lowercase hex.
pub fn b3(bytes: &[u8]) -> String {
    blake3::hash(bytes).to_hex().to_string()
}

/// An `ingest` → `pack` experiment over `<data>` (relative to the config's directory).
pub fn ingest_pack_config(name: &str, data: &str, max_file_bytes: u64) -> String {
    format!(
        r#"[experiment]
name = "{name}"
seed = 7

[[stage]]
id = "src"
uses = "ingest"
paths = ["{data}"]

[[stage]]
id = "corpus"
uses = "pack"
inputs = {{ files = "src.files" }}
max_file_bytes = {max_file_bytes}
"#
    )
}

/// The outputs of one step in a `ledger run --json` report.
pub fn step_output(report: &serde_json::Value, node: &str, output: &str) -> String {
    let step = step(report, node);
    step["outputs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o[0] == output)
        .unwrap_or_else(|| panic!("no output {output} in {step}"))[1]
        .as_str()
        .unwrap()
        .to_string()
}

pub fn step<'a>(report: &'a serde_json::Value, node: &str) -> &'a serde_json::Value {
    report["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["node"] == node)
        .unwrap_or_else(|| panic!("no step {node} in {report}"))
}

/// A 64-digit lowercase hex string?
pub fn is_hash(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// The hashes `ledger add` printed: one `<hash>  <path>  (<size>)` per complete line.
pub fn added_hashes(stdout: &str) -> Vec<(String, String)> {
    stdout
        .split_inclusive('\n')
        .filter(|l| l.ends_with('\n'))
        .filter_map(|l| {
            let mut parts = l.trim_end().splitn(3, "  ");
            let hash = parts.next()?;
            let path = parts.next()?;
            is_hash(hash).then(|| (hash.to_string(), path.to_string()))
        })
        .collect()
}

/// xorshift64*: a tiny deterministic generator for kill delays and byte positions.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform-ish in `lo..hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next_u64() % (hi - lo)
    }
}

/// Sends SIGKILL to a child and reaps it.
pub fn sigkill(child: &mut Child) {
    let pid = child.id() as libc::pid_t;
    // SAFETY: plain kill(2) on our own child, which has not been reaped yet.
    let rc = unsafe { libc::kill(pid, libc::SIGKILL) };
    assert!(
        rc == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH),
        "kill({pid}) failed: {}",
        std::io::Error::last_os_error()
    );
    child.wait().expect("reaping the killed writer");
}

/// Flips one bit of the byte at `offset` in a file.
pub fn flip_byte(path: &Path, offset: u64) {
    use std::os::unix::fs::PermissionsExt;
    let mut bytes = std::fs::read(path).unwrap();
    bytes[offset as usize] ^= 0x20;
    // Blobs are stored read-only for the owner on some setups; make sure we can write.
    let mut perm = std::fs::metadata(path).unwrap().permissions();
    perm.set_mode(perm.mode() | 0o200);
    std::fs::set_permissions(path, perm).unwrap();
    std::fs::write(path, bytes).unwrap();
}

/// Runs git in `repo` with fixed dates and no system config.
pub fn git(repo: &Path, when: &str, args: &[&str]) {
    let out = std::process::Command::new("git")
        .args(args)
        .current_dir(repo)
        .env("GIT_AUTHOR_DATE", when)
        .env("GIT_COMMITTER_DATE", when)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .output()
        .expect("git runs");
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A small Python project with a merged PR (two commits) and a squash-merged PR.
pub fn python_repo(l: &Ledger) -> std::path::PathBuf {
    let repo = l.root.join("proj");
    std::fs::create_dir_all(&repo).unwrap();
    let t0 = "2024-03-01T10:00:00Z";
    git(&repo, t0, &["init", "-q", "-b", "main"]);
    git(&repo, t0, &["config", "user.name", "Ada"]);
    git(&repo, t0, &["config", "user.email", "ada@example.com"]);
    l.write(
        "proj/calc/ops.py",
        "def add(a, b):\n    return a - b\n\n\ndef mul(a, b):\n    return a * b\n",
    );
    l.write("proj/README.md", "# calc\n");
    git(&repo, t0, &["add", "-A"]);
    git(&repo, t0, &["commit", "-q", "-m", "Initial import"]);
    git(&repo, t0, &["checkout", "-q", "-b", "fix"]);
    l.write(
        "proj/calc/ops.py",
        "def add(a, b):\n    return a + b\n\n\ndef mul(a, b):\n    return a * b\n",
    );
    git(
        &repo,
        "2024-03-02T10:00:00Z",
        &["commit", "-q", "-am", "Fix add"],
    );
    l.write(
        "proj/tests/test_ops.py",
        "from calc.ops import add\n\n\ndef test_add():\n    assert add(2, 2) == 4\n",
    );
    git(&repo, "2024-03-02T11:00:00Z", &["add", "-A"]);
    git(
        &repo,
        "2024-03-02T11:00:00Z",
        &["commit", "-q", "-m", "Test add"],
    );
    git(&repo, "2024-03-03T10:00:00Z", &["checkout", "-q", "main"]);
    git(
        &repo,
        "2024-03-03T10:00:00Z",
        &[
            "merge",
            "-q",
            "--no-ff",
            "fix",
            "-m",
            "Merge pull request #7 from ada/fix\n\nMake add add",
        ],
    );
    l.write(
        "proj/calc/ops.py",
        "def add(a, b):\n    return a + b\n\n\ndef mul(a, b):\n    return a * b\n\n\ndef neg(a):\n    return -a\n",
    );
    git(
        &repo,
        "2024-03-04T10:00:00Z",
        &["commit", "-q", "-am", "Add neg (#8)"],
    );
    repo
}

/// collect (git, `proj`) → filter → reconstruct (Python) → tokenize, over `python_repo`.
pub const PIPELINE_CONFIG: &str = r#"
[experiment]
name = "pipeline"
seed = 3

[[stage]]
id = "prs"
uses = "collect"
source = "git"
git = { repo = "proj", name = "ada/calc", description = "A calculator" }

[[stage]]
id = "python"
uses = "filter"
inputs = { prs = "prs.prs" }

[[stage]]
id = "samples"
uses = "reconstruct"
inputs = { prs = "python.prs" }
format = "python"

[[stage]]
id = "tokens"
uses = "tokenize"
inputs = { samples = "samples.samples" }
vocab_size = 300
seq_len = 64
"#;

/// Copies a directory tree.
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// A config over the repository of [`python_repo`]: `collect` (one commit per shard), `filter`
/// and `reconstruct`, then a `command` stage running `command` (through `sh -c`) on every
/// shard. `head` goes after `[experiment]` (an `[executor.slurm]` table), `command_extra`
/// into the command stage (its `resources`).
pub fn per_shard_command_config(
    name: &str,
    head: &str,
    command_extra: &str,
    command: &str,
) -> String {
    format!(
        r#"[experiment]
name = "{name}"
seed = 5
{head}
[[stage]]
id = "prs"
uses = "collect"
source = "git"
shard_records = 1
git = {{ repo = "proj", unit = "commit", name = "ada/calc" }}

[[stage]]
id = "kept"
uses = "filter"
inputs = {{ prs = "prs.prs" }}
subset = "general"

[[stage]]
id = "samples"
uses = "reconstruct"
inputs = {{ prs = "kept.prs" }}
format = "general"

[[stage]]
id = "copies"
uses = "command"
inputs = {{ samples = "samples.samples" }}
for_each = "samples"
command = ["sh", "-c", "{command}"]
outputs = ["copy.zst"]
{command_extra}"#
    )
}

/// The action keys of every unit event that succeeded (`node/unit`), with how many times each
/// was recorded: a unit recorded twice shows as 2.
pub fn succeeded_unit_keys(l: &Ledger) -> std::collections::BTreeMap<String, usize> {
    let mut keys = std::collections::BTreeMap::new();
    for e in l.events() {
        let d = &e["detail"];
        if e["kind"] == "stage"
            && d["status"] == "succeeded"
            && d["node"].as_str().unwrap().contains('/')
        {
            *keys
                .entry(d["action_key"].as_str().unwrap().to_string())
                .or_default() += 1;
        }
    }
    keys
}
