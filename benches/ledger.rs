//! `cargo bench --bench ledger` (or `bench/run.sh`): the ledger against the tools it competes
//! with, measured in one run on one machine.
//!
//! 1. Ingest: `ledger add FILE` (a child process) on a pseudo-random file, beside `b3sum FILE`,
//!    `cp FILE DEST` and `sync DEST` (fsync, since ingest fsyncs), with an in-process breakdown
//!    of where ingest time goes.
//! 2. Appends through the library: `Ledger::open_writer` + `append`, batched and unbatched.
//! 3. `ledger verify` (a child process) on the ledger holding the ingested blob and the events.
//!
//! Every contestant reads from a warm page cache; each measurement is repeated and the median
//! reported. Peak RSS of child processes comes from `wait4`'s rusage.
//!
//! Knobs (environment): `BENCH_INGEST_MIB` (default 1024), `BENCH_EVENTS` (batched events per
//! run, default 200000), `BENCH_UNBATCHED_EVENTS` (default 2000), `BENCH_ROUNDS` (default 3),
//! `BENCH_RECYCLE` (default 1, see `Prep`), `BENCH_KEEP=1` (keep the work dir, e.g. to profile).

mod common;

use common::{
    cpu_model, cpus, env_num, find_on_path, median, run_child, thousands, ChildRun, Summary,
};
use ledger::event::{ArtifactAdded, EventKind, Observation, Origin};
use ledger::store::BlobStore;
use ledger::{Hash, Ledger, Wait};
use serde_json::Value;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::mpsc;
use std::thread;
use std::time::Instant;

const LEDGER_BIN: &str = env!("CARGO_BIN_EXE_ledger");
const MIB: u64 = 1 << 20;
/// The chunk size `ledger::store` streams with.
const CHUNK: usize = 1 << 20;
const INGEST_TARGET_RATIO: f64 = 1.2;
const RSS_TARGET_MIB: f64 = 64.0;
const APPEND_TARGET_PER_S: f64 = 50_000.0;
const SMALL_BLOBS: usize = 64;
const SMALL_BLOB_BYTES: usize = 2048;
const INSTALL_B3SUM: &str = "cargo install b3sum --locked";

struct Config {
    ingest_bytes: u64,
    events: usize,
    unbatched: usize,
    rounds: usize,
}

impl Config {
    fn from_env() -> Config {
        Config {
            ingest_bytes: env_num("BENCH_INGEST_MIB", 1024).max(1) * MIB,
            events: env_num("BENCH_EVENTS", 200_000).max(1) as usize,
            unbatched: env_num("BENCH_UNBATCHED_EVENTS", 2_000).max(1) as usize,
            rounds: env_num("BENCH_ROUNDS", 3).max(1) as usize,
        }
    }
}

fn main() {
    // `cargo bench` passes `--bench` (and any filter); there is nothing to filter here.
    let cfg = Config::from_env();
    let tmp_root = Path::new(env!("CARGO_TARGET_TMPDIR"));
    fs::create_dir_all(tmp_root).expect("create the target tmp dir");
    let mut work = tempfile::Builder::new()
        .prefix("ledger-bench-")
        .tempdir_in(tmp_root)
        .expect("create the bench work dir");
    let keep = env_num("BENCH_KEEP", 0) != 0;
    work.disable_cleanup(keep);
    let b3sum = find_on_path("b3sum");

    println!();
    println!("davinci-ledger benchmark");
    println!("  machine    {}", machine());
    println!(
        "  load avg   {} (other work on the machine skews every number below)",
        fs::read_to_string("/proc/loadavg")
            .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
            .unwrap_or_else(|_| "?".into())
    );
    println!("  work dir   {}", work.path().display());
    println!(
        "  rounds     {} per measurement, median reported; page cache warm for every contestant",
        cfg.rounds
    );
    match &b3sum {
        Some(p) => println!("  b3sum      {} ({})", p.display(), tool_version(p)),
        None => println!(
            "  b3sum      NOT FOUND on PATH: install it with `{INSTALL_B3SUM}` (or run bench/run.sh); \
             its columns are skipped"
        ),
    }

    let input = work.path().join("input.bin");
    let started = Instant::now();
    generate(&input, cfg.ingest_bytes);
    println!(
        "  input      {} of xorshift64* bytes, generated and fsynced in {:.1} s",
        mib(cfg.ingest_bytes),
        started.elapsed().as_secs_f64()
    );

    let mut summary = Summary::new([52, 16, 16]);
    let ingest = bench_ingest(&cfg, work.path(), &input, b3sum.as_deref(), &mut summary);
    let events_only = bench_appends(&cfg, work.path(), &mut summary);
    bench_verify(&cfg, &ingest, &events_only, b3sum.is_some(), &mut summary);
    summary.print();
    println!();
    println!("total bench time {:.0} s", started.elapsed().as_secs_f64());
    if keep {
        println!("kept {} (BENCH_KEEP=1)", work.path().display());
    }
}

// ---------------------------------------------------------------------------------------------
// 1. Ingest

struct Ingest {
    /// The last round's ledger, kept for `verify`.
    ledger_dir: PathBuf,
    blob_hash: Hash,
    bytes: u64,
    b3sum_secs: Option<f64>,
    b3sum_1t_secs: Option<f64>,
    hash_1t_secs: f64,
}

/// Puts the machine in the same state before every timed contestant.
///
/// `settle` flushes what earlier steps (and other processes) left dirty, so no writeback or
/// journal commit lands inside a measurement. `before_write` also recycles page-cache memory:
/// on the VM this bench was written on (virtio-balloon free page reporting), copying 1 GiB into
/// page cache was 2-5x slower and very noisy unless page-cache memory had just been freed
/// (most likely host faults on pages the guest had handed back), so every writing contestant
/// first writes and deletes a scratch file of about the same size (it never reaches the
/// disk) and then runs on recently used pages. `BENCH_RECYCLE=0` turns that off.
struct Prep {
    scratch: PathBuf,
    bytes: u64,
    recycle: bool,
}

impl Prep {
    fn settle(&self) {
        // SAFETY: sync(2) takes no arguments and cannot fail.
        unsafe { libc::sync() };
    }

    fn before_write(&self) {
        self.settle();
        if self.recycle {
            let zeros = vec![0u8; 8 << 20];
            let mut f = File::create(&self.scratch).expect("create scratch file");
            let mut left = self.bytes + self.bytes / 4;
            while left > 0 {
                let n = left.min(zeros.len() as u64) as usize;
                f.write_all(&zeros[..n]).expect("write scratch file");
                left -= n as u64;
            }
            drop(f);
            fs::remove_file(&self.scratch).expect("remove scratch file");
        }
    }
}

fn bench_ingest(
    cfg: &Config,
    work: &Path,
    input: &Path,
    b3sum: Option<&Path>,
    summary: &mut Summary,
) -> Ingest {
    let bytes = cfg.ingest_bytes;
    let rounds = cfg.rounds;
    let prep = Prep {
        scratch: work.join("recycle.bin"),
        bytes,
        recycle: env_num("BENCH_RECYCLE", 1) != 0,
    };
    println!();
    println!(
        "1. INGEST of a {} file (child processes; median of {rounds})",
        mib(bytes)
    );
    println!(
        "   before each contestant: sync; before each writer{}",
        if prep.recycle {
            ": also write + delete a scratch file of the same size (BENCH_RECYCLE=0 turns it off)"
        } else {
            " nothing else (BENCH_RECYCLE=0)"
        }
    );

    let mut add = Samples::default();
    let mut add_tiny = Samples::default();
    let mut b3 = Samples::default();
    let mut b3_1t = Samples::default();
    let mut cp = Samples::default();
    let mut cp2 = Samples::default();
    let mut sync = Samples::default();
    let (mut b3_cp, mut b3_cp_sync, mut cp_sync) = (vec![], vec![], vec![]);
    let mut anatomy = Anatomy::default();
    let mut expected: Option<String> = None;
    let mut previous_ledger: Option<PathBuf> = None;
    let dest = work.join("cp-dest.bin");
    let tiny = work.join("tiny.bin");
    fs::write(&tiny, pseudo_random(4096, 7)).expect("write tiny input");

    for round in 0..rounds {
        warm(input);

        // ledger add: the blob is copied, hashed, fsynced and renamed; one event is appended.
        let dir = work.join(format!("ingest-{round}"));
        Ledger::init(&dir).expect("init ledger");
        prep.before_write();
        let run = run_child(
            Command::new(LEDGER_BIN)
                .arg("--ledger")
                .arg(&dir)
                .arg("add")
                .arg(input),
        );
        check_hash(&mut expected, &first_word(&run.stdout), "ledger add");
        add.push(&run);
        if let Some(old) = previous_ledger.replace(dir) {
            fs::remove_dir_all(old).expect("remove an old ledger");
        }

        // b3sum: all threads (its default: mmap + rayon), then one thread like ingest's hasher.
        if let Some(b3sum) = b3sum {
            prep.settle();
            let run = run_child(Command::new(b3sum).arg(input));
            check_hash(&mut expected, &first_word(&run.stdout), "b3sum");
            b3.push(&run);
            prep.settle();
            let run = run_child(Command::new(b3sum).arg("--num-threads").arg("1").arg(input));
            check_hash(
                &mut expected,
                &first_word(&run.stdout),
                "b3sum --num-threads 1",
            );
            b3_1t.push(&run);
        }

        // cp alone (coreutils: one copy_file_range, an in-kernel copy); the rm drops its dirty
        // pages before they reach the disk.
        prep.before_write();
        let run_cp_alone = run_child(Command::new("cp").arg(input).arg(&dest));
        cp.push(&run_cp_alone);
        fs::remove_file(&dest).expect("remove cp output");

        // cp, then fsync of the copy (coreutils `sync FILE` = fsync(FILE)): what ingest owes.
        prep.before_write();
        let run_cp = run_child(Command::new("cp").arg(input).arg(&dest));
        let run_sync = run_child(Command::new("sync").arg(&dest));
        cp2.push(&run_cp);
        sync.push(&run_sync);
        fs::remove_file(&dest).expect("remove cp output");

        let b3_secs = b3.secs.last().copied().unwrap_or(0.0);
        b3_cp.push(b3_secs + run_cp_alone.secs);
        b3_cp_sync.push(b3_secs + run_cp.secs + run_sync.secs);
        cp_sync.push(run_cp.secs + run_sync.secs);

        // Fixed cost of one `ledger add` (process start, index open, one event): a 4 KiB file.
        let dir = work.join(format!("tiny-{round}"));
        Ledger::init(&dir).expect("init ledger");
        prep.settle();
        add_tiny.push(&run_child(
            Command::new(LEDGER_BIN)
                .arg("--ledger")
                .arg(&dir)
                .arg("add")
                .arg(&tiny),
        ));
        fs::remove_dir_all(&dir).expect("remove tiny ledger");

        anatomy.measure(input, work, &prep);
    }

    let blob_hash = Hash::from_hex(expected.as_deref().expect("at least one round"))
        .expect("ledger add prints a hash");
    let add_s = add.median_secs();

    println!();
    println!(
        "   {:<50} {:>9} {:>12} {:>9} {:>11}",
        "contestant", "time", "throughput", "cpu", "peak RSS"
    );
    let line = |label: &str, secs: f64, cpu: Option<f64>, rss: Option<u64>| {
        println!(
            "   {:<50} {:>7.3} s {:>12} {:>9} {:>11}",
            label,
            secs,
            rate(bytes, secs),
            cpu.map_or_else(|| "-".to_string(), |c| format!("{c:.3} s")),
            rss.map_or_else(|| "-".to_string(), rss_mib)
        );
    };
    let sample = |label: &str, s: &Samples| {
        line(
            label,
            s.median_secs(),
            Some(s.median_cpu()),
            Some(s.max_rss()),
        )
    };
    sample("ledger add (copy ‖ hash, fsync, rename)", &add);
    if b3sum.is_some() {
        sample("b3sum FILE (mmap, all threads)", &b3);
        sample("b3sum --num-threads 1 FILE", &b3_1t);
    } else {
        println!(
            "   {:<50} skipped: install with `{INSTALL_B3SUM}`",
            "b3sum FILE"
        );
    }
    sample("cp FILE DEST (no fsync)", &cp);
    sample("cp FILE DEST (followed by sync)", &cp2);
    sample("sync DEST (fsync of that copy)", &sync);
    line("cp + sync", median(&cp_sync), None, None);
    if b3sum.is_some() {
        line("b3sum + cp", median(&b3_cp), None, None);
        line("b3sum + cp + sync", median(&b3_cp_sync), None, None);
    }
    println!(
        "   (cpu = user + system time of the child; b3sum's peak RSS counts the pages of the file it \
         mmaps;\n    sums are medians of per-round sums)"
    );

    println!();
    let verdict = |ok: bool| if ok { "ok" } else { "MISS" };
    let target = format!("<= {INGEST_TARGET_RATIO:.1}x");
    summary.add(
        &format!("ledger add, {}", mib(bytes)),
        format!("{add_s:.3} s"),
        "",
        None,
    );
    if b3sum.is_some() {
        let r = add_s / median(&b3_cp);
        summary.add(
            "ingest / (b3sum + cp)",
            format!("{r:.2}x"),
            &target,
            Some(r <= INGEST_TARGET_RATIO),
        );
        let r = add_s / median(&b3_cp_sync);
        summary.add(
            "ingest / (b3sum + cp + sync)",
            format!("{r:.2}x"),
            &target,
            Some(r <= INGEST_TARGET_RATIO),
        );
    } else {
        summary.add("ingest / (b3sum + cp)", "n/a".into(), INSTALL_B3SUM, None);
    }
    let peak = add.max_rss() as f64 / 1024.0;
    summary.add(
        "ledger add peak RSS",
        format!("{peak:.1} MiB"),
        &format!("< {RSS_TARGET_MIB:.0} MiB"),
        Some(peak < RSS_TARGET_MIB),
    );
    if b3sum.is_some() {
        let r = add_s / median(&b3_cp);
        println!(
            "   ingest / (b3sum + cp)          = {r:>5.2}x   target <= {INGEST_TARGET_RATIO:.1}x   {}",
            verdict(r <= INGEST_TARGET_RATIO)
        );
        let r = add_s / median(&b3_cp_sync);
        println!(
            "   ingest / (b3sum + cp + sync)   = {r:>5.2}x   target <= {INGEST_TARGET_RATIO:.1}x   {}   (like for like: both fsync)",
            verdict(r <= INGEST_TARGET_RATIO)
        );
    } else {
        println!("   ingest / (b3sum + cp)          =   n/a   (b3sum missing: `{INSTALL_B3SUM}`)");
        println!(
            "   ingest / cp                    = {:>5.2}x   ingest / (cp + sync) = {:.2}x",
            add_s / cp.median_secs(),
            add_s / median(&cp_sync)
        );
    }
    println!(
        "   ledger add peak RSS            = {peak:>5.1} MiB target < {RSS_TARGET_MIB:.0} MiB  {}",
        verdict(peak < RSS_TARGET_MIB)
    );

    anatomy.print(bytes, add_s, &add_tiny);

    Ingest {
        ledger_dir: previous_ledger.expect("at least one round"),
        blob_hash,
        bytes,
        b3sum_secs: b3sum.map(|_| b3.median_secs()),
        b3sum_1t_secs: b3sum.map(|_| b3_1t.median_secs()),
        hash_1t_secs: median(&anatomy.hash_1t),
    }
}

/// In-process passes over the same cached file, to show where `ledger add`'s time goes.
#[derive(Default)]
struct Anatomy {
    read: Vec<f64>,
    hash_1t: Vec<f64>,
    hash_mt: Vec<f64>,
    read_write: Vec<f64>,
    fsync: Vec<f64>,
    pipeline: Vec<f64>,
    pipeline_fsync: Vec<f64>,
    pipeline_writeback: Vec<f64>,
}

impl Anatomy {
    fn measure(&mut self, input: &Path, work: &Path, prep: &Prep) {
        let out = work.join("anatomy.bin");

        prep.settle();
        let t = Instant::now();
        stream(input, |_| {});
        self.read.push(t.elapsed().as_secs_f64());

        prep.settle();
        let t = Instant::now();
        let mut h = blake3::Hasher::new();
        stream(input, |b| {
            h.update(b);
        });
        self.hash_1t.push(t.elapsed().as_secs_f64());
        let single = h.finalize();

        prep.settle();
        let t = Instant::now();
        let mut h = blake3::Hasher::new();
        stream(input, |b| {
            h.update_rayon(b);
        });
        self.hash_mt.push(t.elapsed().as_secs_f64());
        assert_eq!(h.finalize(), single, "update_rayon agrees with update");

        // Read + write in 1 MiB chunks (no hash), then fsync of what was written.
        prep.before_write();
        let t = Instant::now();
        let mut f = File::create(&out).expect("create anatomy output");
        stream(input, |b| f.write_all(b).expect("write"));
        self.read_write.push(t.elapsed().as_secs_f64());
        let t = Instant::now();
        f.sync_all().expect("fsync");
        self.fsync.push(t.elapsed().as_secs_f64());
        drop(f);
        fs::remove_file(&out).expect("remove anatomy output");

        // The store's pipeline as written in ledger/src/store.rs: without its fsync, with it,
        // and with writeback started behind the copy so the final fsync has little left to do.
        for (mode, samples) in [
            (Durability::None, &mut self.pipeline),
            (Durability::Fsync, &mut self.pipeline_fsync),
            (Durability::EarlyWriteback, &mut self.pipeline_writeback),
        ] {
            prep.before_write();
            let t = Instant::now();
            let hash = store_pipeline(input, &out, mode);
            samples.push(t.elapsed().as_secs_f64());
            assert_eq!(hash, single, "pipeline replica hashes like blake3");
            fs::remove_file(&out).expect("remove anatomy output");
        }
    }

    fn print(&self, bytes: u64, add_secs: f64, tiny: &Samples) {
        println!();
        println!(
            "   where ingest time goes (in-process passes over the same cached file, 1 MiB chunks):"
        );
        let line = |label: &str, secs: f64| {
            println!("   {:<50} {:>7.3} s {:>12}", label, secs, rate(bytes, secs));
        };
        line("read only", median(&self.read));
        line(
            "read + BLAKE3, 1 thread (= ingest's hasher)",
            median(&self.hash_1t),
        );
        line(
            &format!("read + BLAKE3 update_rayon, {} threads", cpus()),
            median(&self.hash_mt),
        );
        line(
            "read + write (user-space copy), no fsync",
            median(&self.read_write),
        );
        line("fsync of that fresh copy", median(&self.fsync));
        line(
            "store.rs pipeline (read+write ‖ hash), no fsync",
            median(&self.pipeline),
        );
        line(
            "store.rs pipeline + fsync (= ingest)",
            median(&self.pipeline_fsync),
        );
        line(
            "pipeline + sync_file_range behind copy + fsync",
            median(&self.pipeline_writeback),
        );
        println!(
            "   {:<50} {:>7.3} s {:>12} {:>9.3} s {:>11}",
            "ledger add of a 4 KiB file (fixed cost)",
            tiny.median_secs(),
            "-",
            tiny.median_cpu(),
            rss_mib(tiny.max_rss())
        );
        let model = median(&self.pipeline_fsync) + tiny.median_secs();
        println!(
            "   model: pipeline + fsync + fixed cost = {model:.3} s vs `ledger add` {add_secs:.3} s; \
             fsync is ~{:.0}% of ingest",
            100.0 * median(&self.fsync) / add_secs
        );
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Durability {
    None,
    Fsync,
    /// `sync_file_range(SYNC_FILE_RANGE_WRITE)` on each finished 8 MiB window, then fsync.
    EarlyWriteback,
}

/// A replica of `hash_and_copy` + `commit` in ledger/src/store.rs: the caller's thread reads
/// and writes, a helper thread hashes, three 1 MiB buffers circulate; then (maybe) fsync.
fn store_pipeline(input: &Path, output: &Path, durability: Durability) -> blake3::Hash {
    const WINDOW: u64 = 8 << 20;
    let mut input = File::open(input).expect("open input");
    let mut out = File::create(output).expect("create output");
    let (to_hasher, hasher_rx) = mpsc::sync_channel::<(Vec<u8>, usize)>(2);
    let (to_reader, recycled) = mpsc::sync_channel::<Vec<u8>>(4);
    for _ in 0..3 {
        to_reader.send(vec![0u8; CHUNK]).expect("channel has room");
    }
    let hash = thread::scope(|s| {
        let hasher = s.spawn(move || {
            let mut h = blake3::Hasher::new();
            for (buf, n) in hasher_rx {
                h.update(&buf[..n]);
                let _ = to_reader.send(buf);
            }
            h.finalize()
        });
        let (mut written, mut flushed) = (0u64, 0u64);
        loop {
            let mut buf = recycled.recv().expect("hasher returns buffers");
            let n = read_full(&mut input, &mut buf).expect("read input");
            if n == 0 {
                break;
            }
            out.write_all(&buf[..n]).expect("write output");
            written += n as u64;
            if durability == Durability::EarlyWriteback && written - flushed >= WINDOW {
                start_writeback(&out, flushed, written - flushed);
                flushed = written;
            }
            to_hasher.send((buf, n)).expect("hasher is running");
        }
        drop(to_hasher);
        hasher.join().expect("hasher thread")
    });
    if durability != Durability::None {
        out.sync_all().expect("fsync");
    }
    hash
}

/// Asks the kernel to start writing a range back now, without waiting for it.
fn start_writeback(f: &File, offset: u64, len: u64) {
    use std::os::fd::AsRawFd;
    // SAFETY: a plain syscall on an open descriptor; failure only loses the head start.
    unsafe {
        libc::sync_file_range(
            f.as_raw_fd(),
            offset as libc::off64_t,
            len as libc::off64_t,
            libc::SYNC_FILE_RANGE_WRITE,
        );
    }
}

// ---------------------------------------------------------------------------------------------
// 2. Appends

fn bench_appends(cfg: &Config, work: &Path, summary: &mut Summary) -> PathBuf {
    println!();
    println!(
        "2. APPENDS through the library (in-process Ledger::open_writer + append; each append = \
         one write + one fsync, then indexing; median of {})",
        cfg.rounds
    );
    let blobs: Vec<Vec<u8>> = (0..SMALL_BLOBS)
        .map(|i| pseudo_random(SMALL_BLOB_BYTES, 1000 + i as u64))
        .collect();
    let modes = [
        (
            "batched, 10,000 events per append",
            cfg.events,
            10_000,
            true,
        ),
        ("batched, 1,000 events per append", cfg.events, 1_000, true),
        ("unbatched, 1 event per append", cfg.unbatched, 1, true),
        (
            "log::Writer only (no index), 10,000/append",
            cfg.events,
            10_000,
            false,
        ),
    ];
    println!();
    println!(
        "   {:<44} {:>9} {:>8} {:>9} {:>12} {:>10} {:>9} {:>7}",
        "mode", "events", "appends", "time", "events/s", "µs/event", "cpu", "target"
    );
    let mut keep = None;
    let mut frame_bytes = 0.0;
    for (m, &(label, total, batch, indexed)) in modes.iter().enumerate() {
        let (mut secs, mut cpu) = (Vec::new(), Vec::new());
        for round in 0..cfg.rounds {
            let dir = work.join(format!("events-{m}-{round}"));
            let (t, log_bytes) = append_run(&dir, &blobs, total, batch, indexed);
            secs.push(t.wall);
            cpu.push(t.cpu);
            frame_bytes = (log_bytes - 8) as f64 / total as f64;
            if m == 0 && keep.is_none() {
                keep = Some(dir);
            } else {
                fs::remove_dir_all(&dir).expect("remove events ledger");
            }
        }
        let s = median(&secs);
        let per_s = total as f64 / s;
        let target = match (batch > 1, indexed) {
            (true, true) if per_s > APPEND_TARGET_PER_S => "ok",
            (true, true) => "MISS",
            _ => "-",
        };
        let goal = format!("> {}/s", thousands(APPEND_TARGET_PER_S as u64));
        summary.add(
            &format!("appends: {label}"),
            format!("{}/s", thousands(per_s as u64)),
            if batch > 1 && indexed { &goal } else { "" },
            (batch > 1 && indexed).then_some(per_s > APPEND_TARGET_PER_S),
        );
        println!(
            "   {:<44} {:>9} {:>8} {:>7.3} s {:>12} {:>10.2} {:>7.3} s {:>7}",
            label,
            thousands(total as u64),
            thousands(total.div_ceil(batch) as u64),
            s,
            thousands(per_s as u64),
            1e6 * s / total as f64,
            median(&cpu),
            target
        );
    }
    println!(
        "   target: > {} events/s batched. Events: 90% Observation, 10% ArtifactAdded, \
         {frame_bytes:.0} bytes per frame on disk;\n   cpu = this process's user + system time \
         during the appends (sled's threads included)",
        thousands(APPEND_TARGET_PER_S as u64)
    );
    keep.expect("at least one round")
}

struct Timing {
    wall: f64,
    cpu: f64,
}

/// This process's user + system CPU seconds so far.
fn self_cpu() -> f64 {
    // SAFETY: rusage is plain old data; getrusage only writes into it.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

/// Appends `total` events in batches of `batch` to a fresh ledger at `dir` (through the
/// `Ledger`, or straight to its `log::Writer` when not `indexed`); returns the time spent
/// appending and the log's size.
fn append_run(
    dir: &Path,
    blobs: &[Vec<u8>],
    total: usize,
    batch: usize,
    indexed: bool,
) -> (Timing, u64) {
    Ledger::init(dir).expect("init ledger");
    let log_path = dir.join(ledger::ledger::LOG_FILE);
    let t = if indexed {
        let mut ledger = Ledger::open_writer(dir, Wait::Block).expect("open writer");
        let refs = put_blobs(ledger.store(), blobs);
        let t = time_appends(event_batches(&refs, total, batch), |b| {
            ledger.append(b).expect("append");
        });
        drop(ledger);
        t
    } else {
        let refs = put_blobs(&BlobStore::new(dir), blobs);
        let mut writer = ledger::log::Writer::open(
            &log_path,
            ledger::log::Tail::EMPTY,
            0,
            &ledger::storage::Storage::disk(),
        )
        .expect("open the log");
        time_appends(event_batches(&refs, total, batch), |b| {
            writer.append(b).expect("append");
        })
    };
    let log = fs::metadata(&log_path).expect("log exists").len();
    (t, log)
}

/// Stores the small blobs the events point at.
fn put_blobs(store: &BlobStore, blobs: &[Vec<u8>]) -> Vec<(Hash, u64)> {
    blobs
        .iter()
        .map(|b| store.put_bytes(b).expect("store a small blob"))
        .collect()
}

fn event_batches(refs: &[(Hash, u64)], total: usize, batch: usize) -> Vec<Vec<EventKind>> {
    (0..total)
        .collect::<Vec<_>>()
        .chunks(batch)
        .map(|c| c.iter().map(|&i| event_kind(i as u64, refs)).collect())
        .collect()
}

/// Times `append` over prebuilt batches (building them is not part of the measurement).
fn time_appends(batches: Vec<Vec<EventKind>>, mut append: impl FnMut(Vec<EventKind>)) -> Timing {
    let (t, cpu) = (Instant::now(), self_cpu());
    for b in batches {
        append(b);
    }
    Timing {
        wall: t.elapsed().as_secs_f64(),
        cpu: self_cpu() - cpu,
    }
}

/// A realistic event: mostly recorded LLM/HTTP responses, some added dataset shards.
fn event_kind(i: u64, refs: &[(Hash, u64)]) -> EventKind {
    let (hash, size) = refs[(i as usize * 7) % refs.len()];
    if i % 10 == 9 {
        EventKind::ArtifactAdded(ArtifactAdded {
            hash,
            size,
            media_type: "application/x-ndjson".into(),
            origin: Origin::File {
                path: format!("data/swe-trajectories/shard-{i:06}.jsonl"),
            },
        })
    } else {
        EventKind::Observation(Observation {
            source: "llm:https://api.example.com/v1/chat/completions".into(),
            request: Hash::of(&i.to_le_bytes()),
            response: hash,
            response_size: size,
        })
    }
}

// ---------------------------------------------------------------------------------------------
// 3. Verify

fn bench_verify(
    cfg: &Config,
    ingest: &Ingest,
    events_only: &Path,
    have_b3sum: bool,
    summary: &mut Summary,
) {
    // The ingest ledger gets the same events as the batched-append runs (timed once, as a check
    // that a ledger holding a big blob appends as fast).
    let blobs: Vec<Vec<u8>> = (0..SMALL_BLOBS)
        .map(|i| pseudo_random(SMALL_BLOB_BYTES, 1000 + i as u64))
        .collect();
    let mut ledger = Ledger::open_writer(&ingest.ledger_dir, Wait::Block).expect("open writer");
    let refs = put_blobs(ledger.store(), &blobs);
    let appended = time_appends(event_batches(&refs, cfg.events, 10_000), |b| {
        ledger.append(b).expect("append");
    });
    let append_secs = appended.wall;
    let blob_path = ledger.store().path(&ingest.blob_hash);
    drop(ledger);

    println!();
    println!(
        "3. VERIFY (`ledger verify --json`, child process; median of {})",
        cfg.rounds
    );
    println!(
        "   (setup: {} more events appended to the ingest ledger in batches of 10,000: {} events/s)",
        thousands(cfg.events as u64),
        thousands((cfg.events as f64 / append_secs) as u64)
    );
    let mut full = Samples::default();
    let mut full_inner = Vec::new();
    let mut small = Samples::default();
    let mut small_inner = Vec::new();
    let mut full_report = Value::Null;
    let mut rehash_secs = Vec::new();
    let store = BlobStore::new(&ingest.ledger_dir);
    let mut small_report = Value::Null;
    for _ in 0..cfg.rounds {
        warm(&blob_path);
        let t = Instant::now();
        let (rehashed, _) = store.rehash(&ingest.blob_hash).expect("rehash the blob");
        rehash_secs.push(t.elapsed().as_secs_f64());
        assert_eq!(
            rehashed, ingest.blob_hash,
            "the stored blob rehashes to its address"
        );
        for (dir, samples, inner, report) in [
            (
                ingest.ledger_dir.as_path(),
                &mut full,
                &mut full_inner,
                &mut full_report,
            ),
            (events_only, &mut small, &mut small_inner, &mut small_report),
        ] {
            let run = run_child(
                Command::new(LEDGER_BIN)
                    .arg("--ledger")
                    .arg(dir)
                    .arg("verify")
                    .arg("--json"),
            );
            let v: Value = serde_json::from_str(&run.stdout).expect("verify --json output");
            let problems = v["report"]["problems"].as_array().map_or(0, |p| p.len());
            assert_eq!(problems, 0, "verify found problems: {}", run.stdout);
            inner.push(v["seconds"].as_f64().unwrap_or(f64::NAN));
            *report = v["report"].clone();
            samples.push(&run);
        }
    }
    let count = |r: &Value, k: &str| r[k].as_u64().unwrap_or(0);
    println!();
    println!(
        "   {:<40} {:>9} {:>6} {:>10} {:>9} {:>11} {:>9} {:>11}",
        "ledger", "events", "blobs", "blob bytes", "time", "(in verify)", "cpu", "peak RSS"
    );
    for (label, r, s, inner) in [
        (
            "ingest ledger (big blob + events)",
            &full_report,
            &full,
            &full_inner,
        ),
        (
            "events-only ledger (no big blob)",
            &small_report,
            &small,
            &small_inner,
        ),
    ] {
        println!(
            "   {:<40} {:>9} {:>6} {:>10} {:>7.3} s {:>9.3} s {:>7.3} s {:>11}",
            label,
            thousands(count(r, "events")),
            count(r, "blobs"),
            mib(count(r, "blob_bytes")),
            s.median_secs(),
            median(inner),
            s.median_cpu(),
            rss_mib(s.max_rss())
        );
    }
    let t_full = full.median_secs();
    let t_small = small.median_secs();
    let rehash = median(&rehash_secs);
    let events_full = count(&full_report, "events");
    let events_small = count(&small_report, "events");
    println!();
    println!(
        "   blob rehash  {:>12}   BlobStore::rehash of the {} blob in-process (the step verify runs per blob): {:.3} s",
        rate(ingest.bytes, rehash),
        mib(ingest.bytes),
        rehash
    );
    println!(
        "   event walk   {:>12} events/s   ingest ledger: events / (verify wall - blob rehash)",
        thousands((events_full as f64 / (t_full - rehash).max(1e-9)) as u64)
    );
    println!(
        "   event walk   {:>12} events/s   events-only ledger: events / verify wall",
        thousands((events_small as f64 / t_small) as u64)
    );
    println!(
        "   overall      {:>12}   and {} events/s: whole `verify` wall of the ingest ledger",
        rate(ingest.bytes, t_full),
        thousands((events_full as f64 / t_full) as u64)
    );
    println!(
        "   BLAKE3 here  {:>12} (1 thread, in-process)",
        rate(ingest.bytes, ingest.hash_1t_secs)
    );
    summary.add(
        &format!("verify, ingest ledger ({} events)", thousands(events_full)),
        format!("{t_full:.3} s"),
        "",
        None,
    );
    summary.add(
        "verify blob rehash",
        rate(ingest.bytes, rehash),
        &ingest.b3sum_secs.map_or_else(String::new, |mt| {
            format!("b3sum {}", rate(ingest.bytes, mt))
        }),
        None,
    );
    summary.add(
        "verify event walk",
        format!(
            "{}/s",
            thousands((events_full as f64 / (t_full - rehash).max(1e-9)) as u64)
        ),
        "",
        None,
    );
    summary.add("verify peak RSS", rss_mib(full.max_rss()), "", None);
    match (ingest.b3sum_secs, ingest.b3sum_1t_secs) {
        (Some(mt), Some(st)) if have_b3sum => {
            println!(
                "   b3sum        {:>12} (all threads)   {} (1 thread)",
                rate(ingest.bytes, mt),
                rate(ingest.bytes, st)
            );
            println!(
                "   verify's blob rehash takes {:.2}x b3sum's time (all threads), {:.2}x b3sum --num-threads 1",
                rehash / mt,
                rehash / st
            );
        }
        _ => println!("   b3sum        skipped: install with `{INSTALL_B3SUM}`"),
    }
}

// ---------------------------------------------------------------------------------------------
// Child processes

#[derive(Default)]
struct Samples {
    secs: Vec<f64>,
    cpu: Vec<f64>,
    rss: Vec<u64>,
}

impl Samples {
    fn push(&mut self, run: &ChildRun) {
        self.secs.push(run.secs);
        self.cpu.push(run.cpu_secs);
        self.rss.push(run.maxrss_kib);
    }

    fn median_cpu(&self) -> f64 {
        median(&self.cpu)
    }

    fn median_secs(&self) -> f64 {
        median(&self.secs)
    }

    fn max_rss(&self) -> u64 {
        self.rss.iter().copied().max().unwrap_or(0)
    }
}

fn tool_version(path: &Path) -> String {
    Command::new(path)
        .arg("--version")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

fn first_word(s: &str) -> String {
    s.split_whitespace().next().unwrap_or("").to_string()
}

fn check_hash(expected: &mut Option<String>, got: &str, who: &str) {
    match expected {
        None => *expected = Some(got.to_string()),
        Some(e) => assert_eq!(e, got, "{who} disagrees on the file's BLAKE3"),
    }
}

// ---------------------------------------------------------------------------------------------
// Files

/// Fast deterministic bytes: xorshift64*.
fn fill(buf: &mut [u8], state: &mut u64) {
    for word in buf.chunks_mut(8) {
        *state ^= *state >> 12;
        *state ^= *state << 25;
        *state ^= *state >> 27;
        let v = state.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes();
        word.copy_from_slice(&v[..word.len()]);
    }
}

fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut buf = vec![0u8; len];
    fill(&mut buf, &mut state);
    buf
}

/// Writes `len` pseudo-random bytes to `path` and fsyncs them, so no writeback of the input
/// overlaps a measurement.
fn generate(path: &Path, len: u64) {
    let mut f = File::create(path).expect("create input");
    let mut state = 0x5eed_1ed6_e7b0_0c5eu64;
    let mut buf = vec![0u8; 8 << 20];
    let mut left = len;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        fill(&mut buf[..n], &mut state);
        f.write_all(&buf[..n]).expect("write input");
        left -= n as u64;
    }
    f.sync_all().expect("fsync input");
}

/// Reads a file through once so it sits in the page cache.
fn warm(path: &Path) {
    stream(path, |_| {});
}

/// Reads `path` in `CHUNK`-sized pieces, handing each to `each`.
fn stream(path: &Path, mut each: impl FnMut(&[u8])) {
    let mut f = File::open(path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = read_full(&mut f, &mut buf).expect("read");
        if n == 0 {
            break;
        }
        each(&buf[..n]);
    }
}

fn read_full(input: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match input.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

// ---------------------------------------------------------------------------------------------
// Formatting

fn rate(bytes: u64, secs: f64) -> String {
    let per_s = bytes as f64 / secs;
    if per_s >= 1024.0 * MIB as f64 {
        format!("{:.2} GiB/s", per_s / (1024.0 * MIB as f64))
    } else {
        format!("{:.0} MiB/s", per_s / MIB as f64)
    }
}

fn mib(bytes: u64) -> String {
    if bytes >= MIB {
        format!("{} MiB", bytes / MIB)
    } else {
        format!("{:.1} KiB", bytes as f64 / 1024.0)
    }
}

fn rss_mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

fn machine() -> String {
    let model = cpu_model();
    let mem = fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|k| k.parse::<u64>().ok())
        })
        .map_or_else(String::new, |kib| {
            format!(", {:.0} GiB RAM", kib as f64 / (1024.0 * 1024.0))
        });
    format!("{} CPUs, {model}{mem}", cpus())
}
