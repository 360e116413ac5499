//! Throughput of filter → reconstruct → tokenize on >= 10,000 PR records (`cargo bench --bench
//! pipeline`; `BENCH_PRS=N` changes the count).
//!
//! The records are built from real code: each is a realistic one-line fix to a real module of
//! this machine's Python standard library, with the module's full content as the relevant file
//! and a unified-diff patch, shaped exactly as `collect` emits them. Each stage runs as its own
//! `ledger run` child process on one core (RAYON_NUM_THREADS=1), under GNU time, so its wall
//! time and peak RSS are its own. Running the corpus at a quarter and at full size shows whether peak memory
//! follows the shard size or the corpus size.

#[path = "common/prs.rs"]
mod prs;

use prs::records;
use std::io::Write;
use std::path::Path;
use std::process::Command;
use std::time::Instant;

struct Measured {
    seconds: f64,
    peak_rss_kib: i64,
    stdout: String,
}

/// Runs `cmd` under GNU time for its peak RSS. (The child's own `ru_maxrss` seen through
/// `wait4` is floored at this process's RSS when it forked, and this process holds the corpus.)
fn run_child(cmd: &mut Command) -> Measured {
    let rss_file = tempfile::NamedTempFile::new().unwrap();
    let mut timed = Command::new("/usr/bin/time");
    timed
        .args(["-f", "%M", "-o"])
        .arg(rss_file.path())
        .arg(cmd.get_program())
        .args(cmd.get_args());
    for (key, value) in cmd.get_envs() {
        match value {
            Some(v) => timed.env(key, v),
            None => timed.env_remove(key),
        };
    }
    let started = Instant::now();
    let out = timed
        .output()
        .expect("/usr/bin/time runs (Debian package `time`)");
    let seconds = started.elapsed().as_secs_f64();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "child failed: {cmd:?}\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rss = std::fs::read_to_string(rss_file.path()).unwrap();
    Measured {
        seconds,
        peak_rss_kib: rss.trim().lines().last().unwrap().trim().parse().unwrap(),
        stdout,
    }
}

fn ledger_cmd(dir: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_ledger"));
    c.arg("--ledger")
        .arg(dir)
        .env("RAYON_NUM_THREADS", "1")
        .env("TOKENIZERS_PARALLELISM", "false");
    c
}

/// Runs one single-stage config; returns the measurement and the hash of output `output`.
fn stage(dir: &Path, work: &Path, name: &str, body: &str, output: &str) -> (Measured, String) {
    let config = work.join(format!("{name}.toml"));
    std::fs::write(&config, body).unwrap();
    let m = run_child(
        ledger_cmd(dir)
            .args(["run", "--no-progress", "--json"])
            .arg(&config),
    );
    let report: serde_json::Value = serde_json::from_str(&m.stdout).unwrap();
    let outputs = report["steps"][0]["outputs"].as_array().unwrap();
    let hash = outputs
        .iter()
        .find(|o| o[0] == output)
        .map(|o| o[1].as_str().unwrap().to_string())
        .unwrap();
    (m, hash)
}

fn bench(n: usize) -> Vec<(String, f64, f64, i64)> {
    let work = tempfile::tempdir().unwrap();
    let dir = work.path().join("ledger");
    let prs = records(n);
    let corpus_path = work.path().join("prs.jsonl.zst");
    let mut enc = zstd::Encoder::new(std::fs::File::create(&corpus_path).unwrap(), 3).unwrap();
    let mut raw_bytes = 0usize;
    for r in &prs {
        let line = serde_json::to_vec(r).unwrap();
        raw_bytes += line.len() + 1;
        enc.write_all(&line).unwrap();
        enc.write_all(b"\n").unwrap();
    }
    enc.finish().unwrap();
    drop(prs);
    let add = run_child(ledger_cmd(&dir).arg("add").arg(&corpus_path));
    let prs_hash = add.stdout.split_whitespace().next().unwrap().to_string();
    let mb = raw_bytes as f64 / 1e6;

    let mut rows = Vec::new();
    let (m, kept) = stage(
        &dir,
        work.path(),
        "filter",
        &format!(
            "[[stage]]\nid = \"filter\"\nuses = \"filter\"\ninputs = {{ prs = \"@{prs_hash}\" }}\n"
        ),
        "prs",
    );
    rows.push(("filter".to_string(), m.seconds, mb, m.peak_rss_kib));
    let (m, samples) = stage(
        &dir,
        work.path(),
        "reconstruct",
        &format!("[[stage]]\nid = \"render\"\nuses = \"reconstruct\"\nformat = \"python\"\ninputs = {{ prs = \"@{kept}\" }}\n"),
        "samples",
    );
    rows.push(("reconstruct".to_string(), m.seconds, mb, m.peak_rss_kib));
    let (m, _) = stage(
        &dir,
        work.path(),
        "tokenize",
        &format!("[[stage]]\nid = \"tok\"\nuses = \"tokenize\"\nvocab_size = 8192\ninputs = {{ samples = \"@{samples}\" }}\n"),
        "tokens",
    );
    rows.push((
        "tokenize (train BPE + pack)".to_string(),
        m.seconds,
        mb,
        m.peak_rss_kib,
    ));
    rows
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        println!("pipeline: benchmark");
        return;
    }
    let n: usize = std::env::var("BENCH_PRS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    println!("filter → reconstruct → tokenize, one core per stage, PR records built from real stdlib code");
    for size in [n / 4, n] {
        println!("\n{size} PR records");
        println!(
            "{:<30} {:>9} {:>10} {:>10} {:>14}",
            "stage", "seconds", "PRs/s", "MB/s", "peak RSS MiB"
        );
        for (name, secs, mb, rss) in bench(size) {
            println!(
                "{name:<30} {secs:>9.2} {:>10.0} {:>10.1} {:>14.1}",
                size as f64 / secs,
                mb / secs,
                rss as f64 / 1024.0
            );
        }
    }
    println!("\nMB = uncompressed JSON of the input PR records. Peak RSS that stays flat from the quarter to the full corpus means memory follows the record, not the corpus.");
}
