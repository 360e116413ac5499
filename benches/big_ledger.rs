//! `cargo bench --bench big_ledger` (or `bench/run.sh big`): a ledger at production scale —
//! at least 1,000,000 events and 10,000 artifacts — and what it costs to create, verify,
//! walk and replay.
//!
//! The ledger is built the way real ones are:
//! 1. artifacts: `SHARDS` experiments, each `ingest` (a directory of text files) → `pack`,
//!    executed in-process through `ledger::runner::run` with the real stages, so every file is
//!    a stored, fsynced blob, and every corpus a real stage output that `ledger replay` can
//!    rebuild;
//! 2. events: the rest of the events appended through `Ledger::append` in batches of 10,000:
//!    recorded LLM responses (observations, 90%), re-runs of the pack steps answered from the
//!    cache (one `RunStarted`, then cached `StageRun`s), and a tag every 1,000 events.
//!
//! Then, each a child process of the release `ledger` binary (median of `BIG_ROUNDS`):
//! `ledger verify --json` (events/s and GiB/s of blobs, against `b3sum` and in-process BLAKE3
//! over the same blob files, measured in the same run), `ledger lineage` of a corpus, and
//! `ledger replay` of a corpus; and in-process `lineage()` walks of many artifacts, first and
//! second (page cache warm) time.
//!
//! Knobs (environment): `BIG_EVENTS` (default 1000000), `BIG_FILES` (file artifacts, default
//! 10000), `BIG_SHARDS` (default 100), `BIG_FILE_KIB` (default 64), `BIG_ROUNDS` (default 3),
//! `BIG_KEEP=1` (keep the work dir), `BIG_REUSE=DIR` (measure a work dir kept by an earlier
//! run instead of building one; its creation numbers are read back from `DIR/meta.json`).

mod common;

use common::{cpu_model, cpus, env_num, find_on_path, median, run_child, thousands, Summary};
use ledger::config::Experiment;
use ledger::event::{EventKind, Observation, RunStarted, RunStatus, Tag};
use ledger::lineage::lineage;
use ledger::runner::{self, Outcome, RunOptions};
use ledger::{Hash, Ledger, Wait};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::fs::{self, File};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread;
use std::time::Instant;

const LEDGER_BIN: &str = env!("CARGO_BIN_EXE_ledger");
const GIB: f64 = (1u64 << 30) as f64;
const BATCH: usize = 10_000;
const RESPONSES: usize = 1_000;
const RESPONSE_BYTES: usize = 2048;
/// Artifacts whose lineage is walked in-process.
const WALKS: usize = 40;

// Targets.
const APPEND_TARGET: f64 = 50_000.0;
/// `verify` of 1,000,000 events in 2 s on 2 cores (33 s when it rebuilt a sled index; 2.9-3.7 s
/// while the seq → frame table was a sled tree).
const VERIFY_EVENTS_TARGET: f64 = 500_000.0;
const LINEAGE_TARGET_S: f64 = 0.1;
const LINEAGE_CLI_TARGET_S: f64 = 1.0;
/// Replay wall time beyond the recorded execution time of the step.
const REPLAY_OVERHEAD_TARGET_S: f64 = 1.0;
/// `ledger ui`: time to the first byte of a page once the server is warm.
const UI_TTFB_TARGET_S: f64 = 0.2;

struct Config {
    events: u64,
    files: usize,
    shards: usize,
    file_bytes: usize,
    rounds: usize,
}

/// What building the ledger measured, kept beside it for `BIG_REUSE`.
#[derive(Serialize, Deserialize)]
struct Meta {
    events: u64,
    artifacts: u64,
    file_bytes: u64,
    /// Phase 1: the ingest → pack experiments.
    pipeline_secs: f64,
    pipeline_blobs: u64,
    pipeline_bytes: u64,
    /// Phase 2: batched appends.
    appended: u64,
    append_secs: f64,
    /// Corpus hash and the recorded execution time of the pack step that made it, per shard.
    corpora: Vec<(String, f64)>,
    /// Some file artifacts, for lineage walks.
    files: Vec<String>,
}

fn main() {
    let cfg = Config {
        events: env_num("BIG_EVENTS", 1_000_000),
        files: env_num("BIG_FILES", 10_000).max(1) as usize,
        shards: env_num("BIG_SHARDS", 100).max(1) as usize,
        file_bytes: (env_num("BIG_FILE_KIB", 64).max(1) * 1024) as usize,
        rounds: env_num("BIG_ROUNDS", 3).max(1) as usize,
    };
    let started = Instant::now();
    let reuse = std::env::var_os("BIG_REUSE").map(PathBuf::from);
    let tmp_root = Path::new(env!("CARGO_TARGET_TMPDIR"));
    fs::create_dir_all(tmp_root).expect("create the target tmp dir");
    let mut owned = None;
    let work = match &reuse {
        Some(dir) => dir.clone(),
        None => {
            let mut dir = tempfile::Builder::new()
                .prefix("big-ledger-")
                .tempdir_in(tmp_root)
                .expect("create the bench work dir");
            dir.disable_cleanup(env_num("BIG_KEEP", 0) != 0);
            let path = dir.path().to_path_buf();
            owned = Some(dir);
            path
        }
    };
    let ledger_dir = work.join("ledger");

    println!();
    println!("davinci-ledger: a big ledger");
    println!("  machine    {}", machine());
    println!(
        "  load avg   {} (other work on the machine skews every number below)",
        fs::read_to_string("/proc/loadavg")
            .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
            .unwrap_or_else(|_| "?".into())
    );
    println!("  work dir   {}", work.display());
    let b3sum = find_on_path("b3sum");
    match &b3sum {
        Some(p) => println!("  b3sum      {}", p.display()),
        None => println!(
            "  b3sum      NOT FOUND: `cargo install b3sum --locked` (or bench/run.sh); in-process BLAKE3 only"
        ),
    }

    let meta = match &reuse {
        Some(dir) => {
            let meta: Meta = serde_json::from_slice(
                &fs::read(dir.join("meta.json")).expect("BIG_REUSE dir holds meta.json"),
            )
            .expect("meta.json");
            println!(
                "  reusing    a ledger of {} events, {} artifacts (BIG_REUSE)",
                thousands(meta.events),
                thousands(meta.artifacts)
            );
            meta
        }
        None => {
            let meta = build(&cfg, &work, &ledger_dir);
            fs::write(
                work.join("meta.json"),
                serde_json::to_vec_pretty(&meta).unwrap(),
            )
            .expect("write meta.json");
            meta
        }
    };

    let mut summary = Summary::new([46, 28, 22]);
    creation_summary(&meta, &mut summary);
    // `BIG_UI_ONLY=1`: measure only the web interface (with BIG_REUSE, a quick re-measure).
    if env_num("BIG_UI_ONLY", 0) == 0 {
        bench_verify(&cfg, &ledger_dir, b3sum.as_deref(), &mut summary);
        bench_lineage(&cfg, &ledger_dir, &meta, &mut summary);
        bench_replay(&cfg, &ledger_dir, &meta, &mut summary);
    }
    bench_ui(&ledger_dir, &meta, &mut summary);
    summary.print();
    println!();
    println!("total bench time {:.0} s", started.elapsed().as_secs_f64());
    if let Some(dir) = owned {
        if env_num("BIG_KEEP", 0) != 0 {
            println!(
                "kept {} (BIG_KEEP=1; measure it again with BIG_REUSE={})",
                dir.path().display(),
                dir.path().display()
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Building the ledger

fn build(cfg: &Config, work: &Path, ledger_dir: &Path) -> Meta {
    let per_shard = cfg.files.div_ceil(cfg.shards);
    println!();
    println!(
        "1. CREATION: {} experiments of `ingest` ({} files of {} KiB) → `pack`, then batched appends to {} events",
        cfg.shards,
        per_shard,
        cfg.file_bytes / 1024,
        thousands(cfg.events)
    );
    let t = Instant::now();
    let mut file_no = 0;
    let mut configs = Vec::new();
    for shard in 0..cfg.shards {
        let dir = work.join(format!("data/shard-{shard:03}"));
        fs::create_dir_all(&dir).expect("create a data dir");
        for _ in 0..per_shard.min(cfg.files - file_no) {
            fs::write(
                dir.join(format!("file-{file_no:06}.txt")),
                text(cfg.file_bytes, file_no as u64),
            )
            .expect("write a data file");
            file_no += 1;
        }
        let config = work.join(format!("configs/shard-{shard:03}.toml"));
        fs::create_dir_all(config.parent().unwrap()).expect("create the configs dir");
        fs::write(
            &config,
            format!(
                "[experiment]\nname = \"shard-{shard:03}\"\nseed = 7\n\n\
                 [[stage]]\nid = \"src\"\nuses = \"ingest\"\npaths = [\"../data/shard-{shard:03}\"]\n\n\
                 [[stage]]\nid = \"corpus\"\nuses = \"pack\"\ninputs = {{ files = \"src.files\" }}\n"
            ),
        )
        .expect("write a config");
        configs.push(config);
    }
    println!(
        "   input: {} files written in {:.1} s",
        thousands(file_no as u64),
        t.elapsed().as_secs_f64()
    );

    Ledger::init(ledger_dir).expect("init the ledger");
    let registry = stages::registry();
    let mut ledger = Ledger::open_writer(ledger_dir, Wait::Block).expect("open the writer");
    let t = Instant::now();
    let mut corpora = Vec::new();
    let mut pack_runs = Vec::new();
    let mut files = Vec::new();
    for config in &configs {
        let experiment = Experiment::load(config, &registry).expect("a valid config");
        let report = runner::run(
            &mut ledger,
            &registry,
            &experiment,
            &RunOptions {
                progress: false,
                ..Default::default()
            },
        )
        .expect("the experiment runs");
        let pack = report.steps.iter().find(|s| s.node == "corpus").unwrap();
        assert!(matches!(pack.outcome, Outcome::Executed));
        corpora.push((pack.outputs[0].1.clone(), pack.seconds));
        pack_runs.push(pack.event_seq);
        let ingest = report.steps.iter().find(|s| s.node == "src").unwrap();
        let EventKind::StageRun(run) = ledger.event(ingest.event_seq).unwrap().event.kind else {
            panic!("a stage run event")
        };
        if files.len() < WALKS {
            files.push(run.inputs[0].1.to_hex());
        }
    }
    let pipeline_secs = t.elapsed().as_secs_f64();
    let blobs = ledger.store().list().expect("list blobs");
    let pipeline_bytes: u64 = blobs
        .iter()
        .map(|h| fs::metadata(ledger.store().path(h)).unwrap().len())
        .sum();
    println!(
        "   {} experiments: {} blobs ({:.2} GiB) and {} events in {:.1} s: {:.0} blobs/s, {:.0} MiB/s",
        cfg.shards,
        thousands(blobs.len() as u64),
        pipeline_bytes as f64 / GIB,
        thousands(ledger.event_count()),
        pipeline_secs,
        blobs.len() as f64 / pipeline_secs,
        pipeline_bytes as f64 / pipeline_secs / (1 << 20) as f64
    );

    // Recorded responses the observations point at.
    let responses: Vec<(Hash, u64)> = (0..RESPONSES)
        .map(|i| {
            ledger
                .store()
                .put_bytes(&text(RESPONSE_BYTES, 1_000_000 + i as u64))
                .expect("store a response")
        })
        .collect();
    let packs: Vec<_> = pack_runs
        .iter()
        .map(|seq| match ledger.event(*seq).unwrap().event.kind {
            EventKind::StageRun(run) => (*seq, run),
            _ => panic!("a stage run event"),
        })
        .collect();
    let (rerun_config, _) = ledger
        .store()
        .put_bytes(b"[experiment]\nname = \"rerun\"\n")
        .expect("store the re-run config");
    let before = ledger.event_count();
    let total = cfg.events.saturating_sub(before);
    let (mut secs, mut i, mut batch_no, mut observed) = (0.0, 0u64, 0u64, 0usize);
    while i < total {
        let n = (total - i).min(BATCH as u64);
        let run_id = Hash::of(format!("rerun {batch_no}").as_bytes());
        let mut batch = Vec::with_capacity(n as usize);
        batch.push(EventKind::RunStarted(RunStarted {
            run_id,
            experiment: "rerun".into(),
            config: rerun_config,
            config_path: "configs/rerun.toml".into(),
        }));
        for j in i + 1..i + n {
            batch.push(if j % 1000 == 500 {
                let (corpus, _) = &corpora[(j / 1000) as usize % corpora.len()];
                EventKind::Tag(Tag {
                    name: format!("release-{j}"),
                    target: Hash::from_hex(corpus).unwrap(),
                })
            } else if j % 10 == 9 {
                let (seq, run) = &packs[(j / 10) as usize % packs.len()];
                let mut run = run.clone();
                run.run_id = run_id;
                run.status = RunStatus::Cached { source_seq: *seq };
                EventKind::StageRun(run)
            } else {
                let (response, size) = responses[observed % responses.len()];
                observed += 1;
                EventKind::Observation(Observation {
                    source: "llm:https://api.example.com/v1/chat/completions".into(),
                    request: Hash::of(&j.to_le_bytes()),
                    response,
                    response_size: size,
                })
            });
        }
        let t = Instant::now();
        ledger.append(batch).expect("append a batch");
        secs += t.elapsed().as_secs_f64();
        i += n;
        batch_no += 1;
    }
    let t = Instant::now();
    let events = ledger.event_count();
    let artifacts = ledger.store().list().unwrap().len() as u64;
    drop(ledger);
    secs += t.elapsed().as_secs_f64();
    println!(
        "   {} events appended in batches of {}: {:.1} s, {} events/s (index flush included)",
        thousands(total),
        thousands(BATCH as u64),
        secs,
        thousands((total as f64 / secs) as u64)
    );
    println!(
        "   ledger: {} events, {} artifacts, log {:.0} MiB",
        thousands(events),
        thousands(artifacts),
        fs::metadata(ledger_dir.join("events.log")).unwrap().len() as f64 / (1 << 20) as f64
    );
    Meta {
        events,
        artifacts,
        file_bytes: cfg.file_bytes as u64,
        pipeline_secs,
        pipeline_blobs: blobs.len() as u64,
        pipeline_bytes,
        appended: total,
        append_secs: secs,
        corpora,
        files,
    }
}

fn creation_summary(meta: &Meta, summary: &mut Summary) {
    summary.add(
        "ledger size",
        format!(
            "{} events, {} artifacts",
            thousands(meta.events),
            thousands(meta.artifacts)
        ),
        ">= 1,000,000 / 10,000",
        Some(meta.events >= 1_000_000 && meta.artifacts >= 10_000),
    );
    summary.add(
        "creation: ingest → pack experiments",
        format!(
            "{:.0} blobs/s, {:.0} MiB/s",
            meta.pipeline_blobs as f64 / meta.pipeline_secs,
            meta.pipeline_bytes as f64 / meta.pipeline_secs / (1 << 20) as f64
        ),
        "",
        None,
    );
    let per_s = meta.appended as f64 / meta.append_secs;
    summary.add(
        "creation: batched appends",
        format!("{}/s", thousands(per_s as u64)),
        &format!("> {}/s", thousands(APPEND_TARGET as u64)),
        Some(per_s > APPEND_TARGET),
    );
}

// ---------------------------------------------------------------------------------------------
// Verify

fn bench_verify(cfg: &Config, ledger_dir: &Path, b3sum: Option<&Path>, summary: &mut Summary) {
    let store = ledger::store::BlobStore::new(ledger_dir);
    let blobs: Vec<PathBuf> = store
        .list()
        .expect("list blobs")
        .iter()
        .map(|h| store.path(h))
        .collect();
    let bytes: u64 = blobs.iter().map(|p| fs::metadata(p).unwrap().len()).sum();
    println!();
    println!(
        "2. VERIFY (`ledger verify --json`, child process, page cache warm; median of {})",
        cfg.rounds
    );
    // The references, over the same blob files: b3sum, and BLAKE3 in-process.
    for p in &blobs {
        stream(p, |_| {});
    }
    let mut b3 = Vec::new();
    let mut b3_1t = Vec::new();
    let mut inproc_1t = Vec::new();
    let mut inproc_mt = Vec::new();
    let mut frames_1t = Vec::new();
    let threads = cpus();
    let log = ledger_dir.join("events.log");
    for _ in 0..cfg.rounds {
        if let Some(b3sum) = b3sum {
            b3.push(b3sum_all(b3sum, &blobs, &[]));
            b3_1t.push(b3sum_all(b3sum, &blobs, &["--num-threads", "1"]));
        }
        inproc_1t.push(hash_files(&blobs, 1));
        inproc_mt.push(hash_files(&blobs, threads));
        frames_1t.push(hash_frames(&log));
    }
    let mut walls = Vec::new();
    let mut inner = Vec::new();
    let mut cpu = Vec::new();
    let mut rss = 0;
    let mut report = Value::Null;
    for _ in 0..cfg.rounds {
        let run = run_child(
            Command::new(LEDGER_BIN)
                .arg("--ledger")
                .arg(ledger_dir)
                .arg("verify")
                .arg("--json"),
        );
        let v: Value = serde_json::from_str(&run.stdout).expect("verify --json output");
        let problems = v["report"]["problems"].as_array().map_or(0, |p| p.len());
        assert_eq!(problems, 0, "verify found problems: {}", run.stdout);
        walls.push(run.secs);
        inner.push(v["seconds"].as_f64().unwrap_or(f64::NAN));
        cpu.push(run.cpu_secs);
        rss = rss.max(run.maxrss_kib);
        report = v["report"].clone();
    }
    let events = report["events"].as_u64().unwrap_or(0);
    let wall = median(&walls);
    println!();
    println!(
        "   {:<44} {:>10} {:>14} {:>12}",
        "", "time", "events/s", "blobs GiB/s"
    );
    println!(
        "   {:<44} {:>8.3} s {:>14} {:>12.2}",
        format!(
            "ledger verify ({} events, {} blobs)",
            thousands(events),
            thousands(blobs.len() as u64)
        ),
        wall,
        thousands((events as f64 / wall) as u64),
        bytes as f64 / GIB / wall
    );
    if let Some(phases) = report["phase_seconds"].as_object() {
        for (phase, secs) in phases {
            println!(
                "     {:<42} {:>8.3} s",
                phase,
                secs.as_f64().unwrap_or(f64::NAN)
            );
        }
    }
    let reference = |label: &str, xs: &[f64]| {
        let s = median(xs);
        println!(
            "   {:<44} {:>8.3} s {:>14} {:>12.2}",
            label,
            s,
            "-",
            bytes as f64 / GIB / s
        );
    };
    if b3sum.is_some() {
        reference("b3sum of every blob file", &b3);
        reference("b3sum --num-threads 1 of every blob file", &b3_1t);
    }
    reference("read + BLAKE3 in-process, 1 thread", &inproc_1t);
    reference(
        &format!("read + BLAKE3 in-process, {threads} threads (files)"),
        &inproc_mt,
    );
    // The hash chain needs one BLAKE3 per event: small inputs, far below BLAKE3's bulk speed.
    println!(
        "   {:<44} {:>8.3} s {:>14}",
        "BLAKE3 of each log frame, 1 thread",
        median(&frames_1t),
        thousands((events as f64 / median(&frames_1t)) as u64)
    );
    // Every hash verify must compute (each blob, each frame), spread perfectly over the cores.
    let floor = (median(&inproc_1t) + median(&frames_1t)) / threads as f64;
    println!(
        "   {:<44} {:>8.3} s",
        format!("all of that hashing, ideal on {threads} cores"),
        floor
    );
    println!(
        "   verify: {:.3} s inside the command, cpu {:.3} s, peak RSS {:.1} MiB; blobs {:.2} GiB",
        median(&inner),
        median(&cpu),
        rss as f64 / 1024.0,
        bytes as f64 / GIB
    );
    let per_s = events as f64 / wall;
    summary.add(
        "verify: events/s (whole command)",
        format!("{}/s", thousands(per_s as u64)),
        &format!("> {}/s", thousands(VERIFY_EVENTS_TARGET as u64)),
        Some(per_s > VERIFY_EVENTS_TARGET),
    );
    summary.add("verify: wall time", format!("{wall:.3} s"), "", None);
    summary.add(
        "verify: CPU time (user + sys)",
        format!("{:.3} s", median(&cpu)),
        "",
        None,
    );
    summary.add(
        "verify: blob bytes / wall",
        format!("{:.2} GiB/s", bytes as f64 / GIB / wall),
        "",
        None,
    );
    let best = if b3sum.is_some() {
        median(&b3)
    } else {
        median(&inproc_mt)
    };
    // Informational: verify also walks the log and reads the whole index.
    summary.add(
        if b3sum.is_some() {
            "verify wall / b3sum of the blobs"
        } else {
            "verify wall / in-process BLAKE3 of the blobs"
        },
        format!(
            "{:.2}x ({:.2} GiB/s ref)",
            wall / best,
            bytes as f64 / GIB / best
        ),
        "",
        None,
    );
    summary.add(
        "verify wall / its hashing, ideal on all cores",
        format!("{:.2}x ({floor:.3} s)", wall / floor),
        "",
        None,
    );
    summary.add(
        "verify: peak RSS",
        format!("{:.0} MiB", rss as f64 / 1024.0),
        "",
        None,
    );
}

/// b3sum over every file, in invocations of 1,000 paths; total seconds.
fn b3sum_all(b3sum: &Path, files: &[PathBuf], args: &[&str]) -> f64 {
    files
        .chunks(1000)
        .map(|chunk| {
            let run = run_child(Command::new(b3sum).args(args).args(chunk));
            assert_eq!(run.stdout.lines().count(), chunk.len(), "b3sum output");
            run.secs
        })
        .sum()
}

/// Reads and hashes every file, split across `threads` threads; seconds.
fn hash_files(files: &[PathBuf], threads: usize) -> f64 {
    let t = Instant::now();
    let next = std::sync::atomic::AtomicUsize::new(0);
    thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                let mut buf = Vec::new();
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let Some(p) = files.get(i) else { break };
                    buf.clear();
                    File::open(p).unwrap().read_to_end(&mut buf).unwrap();
                    let name = p.file_name().unwrap().to_string_lossy();
                    let hex = blake3::hash(&buf).to_hex();
                    assert!(
                        hex.ends_with(name.as_ref()),
                        "blob {} rehashes",
                        p.display()
                    );
                }
            });
        }
    });
    t.elapsed().as_secs_f64()
}

/// Hashes each frame's payload of an event log, as the hash chain's check must (the format is
/// `ledger::log`'s: an 8-byte header, then `u32 LE length | payload | 32-byte BLAKE3`);
/// seconds.
fn hash_frames(log: &Path) -> f64 {
    let t = Instant::now();
    let bytes = fs::read(log).expect("read the event log");
    let mut at = 8;
    while at + 4 <= bytes.len() {
        let len = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
        let payload = &bytes[at + 4..at + 4 + len];
        let sum = &bytes[at + 4 + len..at + 4 + len + 32];
        assert_eq!(blake3::hash(payload).as_bytes(), sum, "frame at byte {at}");
        at += 4 + len + 32;
    }
    t.elapsed().as_secs_f64()
}

// ---------------------------------------------------------------------------------------------
// Lineage

fn bench_lineage(cfg: &Config, ledger_dir: &Path, meta: &Meta, summary: &mut Summary) {
    println!();
    println!("3. LINEAGE");
    let t = Instant::now();
    let ledger = Ledger::open(ledger_dir).expect("open the ledger");
    let open = t.elapsed().as_secs_f64();
    let targets: Vec<Hash> = meta
        .corpora
        .iter()
        .map(|(h, _)| h)
        .take(WALKS)
        .chain(&meta.files)
        .map(|h| Hash::from_hex(h).unwrap())
        .collect();
    let (mut first, mut again) = (Vec::new(), Vec::new());
    let mut nodes = 0;
    for h in &targets {
        let t = Instant::now();
        let g = lineage(&ledger, h).expect("lineage");
        first.push(t.elapsed().as_secs_f64());
        nodes = nodes.max(g.artifacts.len());
        let t = Instant::now();
        lineage(&ledger, h).expect("lineage");
        again.push(t.elapsed().as_secs_f64());
    }
    drop(ledger);
    let corpus = &meta.corpora[0].0;
    let mut cli = Vec::new();
    for _ in 0..cfg.rounds {
        let run = run_child(
            Command::new(LEDGER_BIN)
                .arg("--ledger")
                .arg(ledger_dir)
                .args(["lineage", "--format", "json", corpus]),
        );
        let v: Value = serde_json::from_str(&run.stdout).expect("lineage --json");
        assert_eq!(v["root"].as_str(), Some(corpus.as_str()));
        cli.push(run.secs);
    }
    // While a writer holds the index (all through a `ledger run`), a reader indexes the log
    // privately, in memory.
    let writer = Ledger::open_writer(ledger_dir, ledger::Wait::Block).expect("open a writer");
    let mut busy = Vec::new();
    for _ in 0..cfg.rounds {
        let run = run_child(
            Command::new(LEDGER_BIN)
                .arg("--ledger")
                .arg(ledger_dir)
                .args(["show", "--json", corpus]),
        );
        let v: Value = serde_json::from_str(&run.stdout).expect("show --json");
        assert_eq!(v["artifact"]["hash"].as_str(), Some(corpus.as_str()));
        busy.push(run.secs);
    }
    drop(writer);
    // Every writer checks the checksums and hash chain of the whole log when it opens, so a
    // write command pays for it: the check alone, and a whole `ledger tag` (open, check,
    // one event).
    let tail = Ledger::open(ledger_dir)
        .expect("open the ledger")
        .index()
        .tail()
        .expect("the index tail");
    let mut check = Vec::new();
    let mut tag = Vec::new();
    for round in 0..cfg.rounds {
        let t = Instant::now();
        ledger::log::check_chain(&ledger_dir.join("events.log"), tail).expect("an intact log");
        check.push(t.elapsed().as_secs_f64());
        let run = run_child(
            Command::new(LEDGER_BIN)
                .arg("--ledger")
                .arg(ledger_dir)
                .args(["tag", &format!("bench-{round}"), corpus]),
        );
        tag.push(run.secs);
    }
    let max = |xs: &[f64]| xs.iter().copied().fold(0.0, f64::max);
    println!(
        "   the writer's whole-log check (checksums + hash chain)       {:>8.3} s",
        median(&check)
    );
    println!(
        "   `ledger tag` (a writer: open, whole-log check, one event)  {:>8.3} s",
        median(&tag)
    );
    println!(
        "   Ledger::open (reader)                      {:>8.3} s",
        open
    );
    println!(
        "   lineage() of {} artifacts (up to {} nodes): first walk median {:.4} s, max {:.4} s",
        targets.len(),
        nodes,
        median(&first),
        max(&first)
    );
    println!(
        "   lineage() again (warm):                     median {:.4} s, max {:.4} s",
        median(&again),
        max(&again)
    );
    println!(
        "   `ledger lineage --format json` of a corpus (child, open included): {:.3} s",
        median(&cli)
    );
    println!(
        "   `ledger show --json` of a corpus while a writer holds the index: {:.3} s",
        median(&busy)
    );
    summary.add(
        "lineage walk per artifact (warm, max)",
        format!("{:.4} s", max(&again)),
        &format!("< {LINEAGE_TARGET_S} s"),
        Some(max(&again) < LINEAGE_TARGET_S),
    );
    summary.add(
        "lineage walk per artifact (first, max)",
        format!("{:.4} s", max(&first)),
        &format!("< {LINEAGE_TARGET_S} s"),
        Some(max(&first) < LINEAGE_TARGET_S),
    );
    summary.add(
        "`ledger lineage` command",
        format!("{:.3} s", median(&cli)),
        &format!("< {LINEAGE_CLI_TARGET_S} s"),
        Some(median(&cli) < LINEAGE_CLI_TARGET_S),
    );
    summary.add(
        "`ledger show` while a writer holds the index",
        format!("{:.3} s", median(&busy)),
        "",
        None,
    );
    summary.add(
        "writer's whole-log check",
        format!("{:.3} s", median(&check)),
        "",
        None,
    );
    summary.add(
        "`ledger tag` (one write command)",
        format!("{:.3} s", median(&tag)),
        "",
        None,
    );
}

// ---------------------------------------------------------------------------------------------
// Replay

fn bench_replay(cfg: &Config, ledger_dir: &Path, meta: &Meta, summary: &mut Summary) {
    println!();
    println!("4. REPLAY of one corpus (`ledger replay --json`, child process)");
    let (corpus, step_secs) = &meta.corpora[0];
    let mut walls = Vec::new();
    let mut inner = Vec::new();
    for _ in 0..cfg.rounds {
        let run = run_child(
            Command::new(LEDGER_BIN)
                .arg("--ledger")
                .arg(ledger_dir)
                .args(["replay", "--json", corpus]),
        );
        let v: Value = serde_json::from_str(&run.stdout).expect("replay --json");
        assert_eq!(v["verdict"], "bit_identical", "{}", run.stdout);
        walls.push(run.secs);
        inner.push(v["steps"][0]["seconds"].as_f64().unwrap_or(f64::NAN));
    }
    let wall = median(&walls);
    println!(
        "   replay {:.3} s (re-executing the step: {:.3} s; the step took {:.3} s when recorded)",
        wall,
        median(&inner),
        step_secs
    );
    let overhead = wall - step_secs;
    summary.add(
        "replay of a corpus: wall - recorded step time",
        format!("{overhead:.3} s"),
        &format!("< {REPLAY_OVERHEAD_TARGET_S} s"),
        Some(overhead < REPLAY_OVERHEAD_TARGET_S),
    );
}

// ---------------------------------------------------------------------------------------------
// Helpers

/// Deterministic printable text: lines of 64 hex digits from xorshift64*.
fn text(len: usize, seed: u64) -> Vec<u8> {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        for _ in 0..4 {
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            let v = state.wrapping_mul(0x2545_f491_4f6c_dd1d);
            out.extend((0..16).map(|k| HEX[((v >> (4 * k)) & 15) as usize]));
        }
        out.push(b'\n');
    }
    out.truncate(len);
    out
}

fn stream(path: &Path, mut each: impl FnMut(&[u8])) {
    let mut f = File::open(path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).expect("read");
        if n == 0 {
            break;
        }
        each(&buf[..n]);
    }
}

fn machine() -> String {
    format!("{} CPUs, {}", cpus(), cpu_model())
}

// ---------------------------------------------------------------------------------------------
// The web interface

/// One GET over a fresh connection: (seconds to the first byte of the response, seconds to
/// its last, the response).
fn http_get(addr: &str, path: &str) -> (f64, f64, Vec<u8>) {
    use std::io::Write;
    let t = Instant::now();
    let mut s = std::net::TcpStream::connect(addr).expect("connect to ledger ui");
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut first = [0u8; 1];
    s.read_exact(&mut first).expect("a response");
    let ttfb = t.elapsed().as_secs_f64();
    let mut rest = first.to_vec();
    s.read_to_end(&mut rest).unwrap();
    assert!(
        rest.starts_with(b"HTTP/1.1 200"),
        "GET {path}: {}",
        String::from_utf8_lossy(&rest[..rest.len().min(300)])
    );
    (ttfb, t.elapsed().as_secs_f64(), rest)
}

/// A `/proc/<pid>/status` field in KiB.
fn proc_kib(pid: u32, field: &str) -> u64 {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

fn bench_ui(ledger_dir: &Path, meta: &Meta, summary: &mut Summary) {
    use std::io::BufRead;
    let requests = env_num("BIG_UI_REQUESTS", 20).max(1) as usize;
    println!();
    println!(
        "5. UI (`ledger ui`, child process): time to first byte of 1 cold and {requests} warm requests per page, and peak memory"
    );
    let t = Instant::now();
    let mut child = Command::new(LEDGER_BIN)
        .arg("--ledger")
        .arg(ledger_dir)
        .args(["ui", "--port", "0"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .expect("start ledger ui");
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let startup = t.elapsed().as_secs_f64();
    let addr = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("http://"))
        .unwrap_or_else(|| panic!("no address in `{line}`"))
        .trim_end_matches('/')
        .to_string();
    let pid = child.id();
    let rss_started = proc_kib(pid, "VmRSS:");
    println!(
        "   serving after {startup:.2} s (the private index of every event built), RSS {:.0} MiB",
        rss_started as f64 / 1024.0
    );
    // The newest run (a re-run of ~1,000 cached steps, when the ledger is `build`'s) and a
    // corpus, whose page shows its first records.
    let (_, _, runs) = http_get(&addr, "/");
    let runs = String::from_utf8_lossy(&runs);
    let run = runs
        .split("data-run=\"")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .expect("a run on the runs page")
        .to_string();
    let pages = [
        ("runs page", "/".to_string()),
        ("run page (newest run)", format!("/run/{run}")),
        (
            "artifact page (a corpus)",
            format!("/artifact/{}", meta.corpora[0].0),
        ),
    ];
    for (what, path) in &pages {
        let (cold, _, _) = http_get(&addr, path);
        let mut ttfb = Vec::new();
        let mut total = Vec::new();
        let mut bytes = 0;
        for _ in 0..requests {
            let (a, b, body) = http_get(&addr, path);
            ttfb.push(a);
            total.push(b);
            bytes = body.len();
        }
        let warm = median(&ttfb);
        let worst = ttfb.iter().copied().fold(0.0, f64::max);
        println!(
            "   {what:<26} cold {:.1} ms, warm median {:.1} ms (worst {:.1} ms), whole response {:.1} ms, {} KiB",
            cold * 1e3,
            warm * 1e3,
            worst * 1e3,
            median(&total) * 1e3,
            bytes / 1024
        );
        summary.add(
            &format!("ui: {what}, first byte (warm)"),
            format!("{:.1} ms (cold {:.1} ms)", warm * 1e3, cold * 1e3),
            &format!("< {:.0} ms", UI_TTFB_TARGET_S * 1e3),
            Some(warm < UI_TTFB_TARGET_S),
        );
    }
    let peak = proc_kib(pid, "VmHWM:");
    println!("   peak memory (VmHWM) {:.0} MiB", peak as f64 / 1024.0);
    summary.add(
        "ui: peak memory of the server (VmHWM)",
        format!("{:.0} MiB", peak as f64 / 1024.0),
        "",
        None,
    );
    let _ = child.kill();
    let _ = child.wait();
}
