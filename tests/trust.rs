//! The ledger keeps its promise under bit rot, killed commands, full disks and hostile bundles:
//! one test per finding of the trust review (issue 16), each through the real binary on a real
//! file system. The deterministic crash points of every write path are in
//! `ledger/tests/crash_points.rs`, the bit-flip sweep of a whole log in
//! `ledger/tests/bitflip.rs`.

mod common;

use common::{
    b3, copy_dir, frames_of, git, ingest_pack_config, python_repo, sigkill, step, step_output,
    Ledger, Output, Rng, PIPELINE_CONFIG,
};
use ledger::event::{ArtifactAdded, EventKind, Origin, Output as StepOutput, RunStarted, Tag};
use ledger::Hash;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

fn flip_bits(path: &Path, offset: u64, mask: u8) {
    let mut bytes = std::fs::read(path).unwrap();
    bytes[offset as usize] ^= mask;
    std::fs::write(path, bytes).unwrap();
}

/// A ledger of 13 events: 3 adds, a run (config, run, 3 files, 2 steps), 3 adds.
fn small_ledger() -> Ledger {
    let l = Ledger::init();
    for i in 0..3 {
        let f = l.write(&format!("before/{i}.txt"), format!("before {i}\n"));
        l.ok(["add".as_ref(), f.as_os_str()]);
    }
    l.data_set("data");
    let config = l.config("exp.toml", &ingest_pack_config("exp", "data", 1 << 20));
    l.run_config(&config);
    for i in 0..3 {
        let f = l.write(&format!("after/{i}.txt"), format!("after {i}\n"));
        l.ok(["add".as_ref(), f.as_os_str()]);
    }
    assert_eq!(l.frames().len(), 13);
    l
}

/// Every writer refuses, and the log keeps every byte.
#[track_caller]
fn writers_refuse(l: &Ledger, what: &str) {
    let before = l.log_bytes();
    let f = l.write("late.txt", "late\n");
    let add = l.run(["add".as_ref(), f.as_os_str()]);
    assert_eq!(
        add.code, 1,
        "{what}: `add` built on a damaged log:\n{add:?}"
    );
    assert!(add.stderr.contains("damaged"), "{what}:\n{add:?}");
    let reindex = l.run(["reindex"]);
    assert_eq!(
        reindex.code, 1,
        "{what}: `reindex` accepted damage:\n{reindex:?}"
    );
    let tag = l.run(["tag", "t", &b3(b"before 0\n")]);
    assert_ne!(tag.code, 0, "{what}:\n{tag:?}");
    let gc = l.run(["gc"]);
    assert_ne!(gc.code, 0, "{what}:\n{gc:?}");
    assert!(
        l.log_bytes() == before,
        "{what}: a refused command changed the log ({} -> {} bytes)",
        before.len(),
        l.log_bytes().len()
    );
}

// 1. A flipped bit in a frame's length field is damage, wherever it is, index or not.
#[test]
fn a_flipped_bit_in_a_frame_length_is_damage_that_no_command_cuts() {
    for (name, event, keep_index) in [
        ("a middle event, with the index", 6usize, true),
        ("a middle event, without an index", 6, false),
        ("the first event", 0, true),
        ("the last event", 12, true),
    ] {
        let l = small_ledger();
        let (offset, _) = l.frames()[event];
        // Bit 7 of byte 3: the length grows by 2^31, past the frame limit and the file's end.
        flip_bits(&l.log_path(), offset + 3, 0x80);
        if !keep_index {
            std::fs::remove_dir_all(l.dir.join("index")).unwrap();
        }
        let before = l.log_bytes();
        let v = l.run(["verify"]).expect_code(1);
        assert!(
            v.stdout.contains(&format!(
                "PROBLEM log: {} byte {offset}",
                l.log_path().display()
            )),
            "{name}:\n{v:?}"
        );
        assert!(
            v.stdout.contains("length field is damaged"),
            "{name}:\n{v:?}"
        );
        writers_refuse(&l, name);
        assert!(l.log_bytes() == before, "{name}");
        // Readers still see the events after the damaged one.
        let log = l.run(["log", "--json"]);
        let shown = log.json().as_array().unwrap().len();
        assert_eq!(shown, 12, "{name}: {log:?}");
    }
}

/// Lets the test build a bundle as a hostile author would: well framed, lying inside.
fn write_bundle(path: &Path, root: &Hash, events: &[EventKind], blobs: &[Vec<u8>]) {
    let mut w = ledger::bundle::Writer::create(path, root, events.len() as u32, blobs.len() as u32)
        .unwrap();
    for e in events {
        w.event(e).unwrap();
    }
    for b in blobs {
        w.blob(&Hash::of(b), b.len() as u64, &mut &b[..]).unwrap();
    }
    w.finish().unwrap();
}

fn stage_event(dir: &Path, node: &str) -> ledger::event::StageRun {
    let l = ledger::Ledger::open(dir).unwrap();
    for frame in l.scan().unwrap() {
        if let ledger::log::Frame::Good(s) = frame.unwrap() {
            if let EventKind::StageRun(r) = s.event.kind {
                if r.node == node && r.succeeded() {
                    return r;
                }
            }
        }
    }
    panic!("no step {node}");
}

// 2. A bundle's events never answer the local action cache, nor move a local tag, unless asked.
#[test]
fn forged_steps_and_tags_in_a_bundle_stay_foreign() {
    // The honest run, to learn the real action key of the `corpus` step.
    let honest = Ledger::init();
    honest.data_set("data");
    let config = ingest_pack_config("exp", "data", 1 << 20);
    honest.run_config(&honest.config("exp.toml", &config));
    let real = stage_event(&honest.dir, "corpus");
    let manifest_hash = real.inputs[0].1;
    let manifest = std::fs::read(honest.blob_path(&manifest_hash.to_hex())).unwrap();

    let victim = Ledger::init();
    victim.data_set("data");
    let mine = victim.write("mine.txt", "my best result\n");
    victim.ok(["add".as_ref(), mine.as_os_str()]);
    victim.ok(["tag", "best", &b3(b"my best result\n")]);

    let fake = b"forged corpus\n".to_vec();
    let fake_hash = Hash::of(&fake);
    let run_config = b"[experiment]\nname = \"forged\"\n".to_vec();
    let run_id = Hash::of(b"a forged run");
    let mut forged = real.clone();
    forged.run_id = run_id;
    forged.outputs = vec![StepOutput {
        name: "corpus".into(),
        hash: fake_hash,
        size: fake.len() as u64,
        media_type: "application/x-ndjson".into(),
    }];
    let events = vec![
        EventKind::ArtifactAdded(ArtifactAdded {
            hash: manifest_hash,
            size: manifest.len() as u64,
            media_type: "application/json".into(),
            origin: Origin::File {
                path: "/etc/passwd".into(),
            },
        }),
        EventKind::RunStarted(RunStarted {
            run_id,
            experiment: "forged".into(),
            config: Hash::of(&run_config),
            config_path: "/etc/exp.toml".into(),
        }),
        EventKind::StageRun(forged),
        EventKind::Tag(Tag {
            name: "best".into(),
            target: fake_hash,
        }),
    ];
    let bundle = victim.root.join("forged.bundle");
    write_bundle(
        &bundle,
        &fake_hash,
        &events,
        &[manifest, run_config, fake.clone()],
    );

    let imported = victim.ok(["import".as_ref(), bundle.as_os_str()]);
    assert!(imported.stdout.contains("as foreign"), "{imported:?}");
    assert!(
        imported.stdout.contains("best"),
        "the unapplied tag is named:\n{imported:?}"
    );
    assert_eq!(
        victim.ok(["cat", "best"]).stdout,
        "my best result\n",
        "a bundle moved a local tag"
    );
    // The next run executes the step: the forged record does not answer the cache.
    let report = victim.run_config(&victim.config("exp.toml", &config));
    let corpus = step(&report, "corpus");
    assert_eq!(corpus["outcome"], "Executed", "{report:#}");
    assert_ne!(step_output(&report, "corpus", "corpus"), fake_hash.to_hex());
    assert_eq!(
        step_output(&report, "corpus", "corpus"),
        real.outputs[0].hash.to_hex()
    );
    // What came in stays visibly foreign.
    let show = victim.ok(["show", &fake_hash.to_hex()]);
    assert!(show.stdout.contains("imported   from bundle"), "{show:?}");
    let log = victim.ok(["log"]);
    assert!(log.stdout.contains("[foreign: bundle"), "{log:?}");
    assert!(log.stdout.contains("import bundle"), "{log:?}");
    let v = victim.ok(["verify"]);
    assert!(v.stdout.contains(": clean"), "{v:?}");

    // Only when the user asks does the bundle's tag apply.
    let adopted = victim.ok([
        "import".as_ref(),
        "--adopt-tags".as_ref(),
        bundle.as_os_str(),
    ]);
    assert!(!adopted.stdout.contains("were not applied"), "{adopted:?}");
    assert_eq!(victim.ok(["cat", "best"]).stdout_bytes, fake);
    // A trusted import answers the cache (still recorded as foreign).
    let trusting = Ledger::init();
    trusting.data_set("data");
    let honest_bundle = honest.root.join("corpus.bundle");
    honest.ok([
        "export".as_ref(),
        real.outputs[0].hash.to_hex().as_ref(),
        "-o".as_ref(),
        honest_bundle.as_os_str(),
    ]);
    trusting.ok([
        "import".as_ref(),
        "--trust".as_ref(),
        honest_bundle.as_os_str(),
    ]);
    let report = trusting.run_config(&trusting.config("exp.toml", &config));
    assert!(
        step(&report, "corpus")["outcome"].get("Cached").is_some(),
        "a trusted import's step answers the cache: {report:#}"
    );
}

fn pipeline_ledger() -> (Ledger, serde_json::Value) {
    let l = Ledger::init();
    python_repo(&l);
    let config = l.config("pipeline.toml", PIPELINE_CONFIG);
    let report = l.run_config(&config);
    (l, report)
}

/// Every file under `dir` with its size and modification time.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, (u64, std::time::SystemTime)> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let entry = entry.unwrap();
            let meta = entry.metadata().unwrap();
            if meta.is_dir() {
                stack.push(entry.path());
            } else {
                out.insert(entry.path(), (meta.len(), meta.modified().unwrap()));
            }
        }
    }
    out
}

// 3. An honest export carries whole steps; a bundle naming a blob it lacks is refused.
#[test]
fn an_honest_export_imports_into_a_ledger_that_verifies_and_an_incomplete_bundle_is_refused() {
    let (source, report) = pipeline_ledger();
    let tokens = step_output(&report, "tokens", "tokens");
    let tokenizer = step_output(&report, "tokens", "tokenizer");
    let bundle = source.root.join("tokens.bundle");
    source.ok(["export", &tokens, "-o", bundle.to_str().unwrap()]);

    let dest = Ledger::init();
    dest.ok(["import", bundle.to_str().unwrap()]);
    let v = dest.ok(["verify"]);
    assert!(
        v.stdout.contains(": clean"),
        "an honest import must verify:\n{v:?}"
    );
    // The sibling outputs of the exported step came along.
    assert_eq!(
        dest.ok(["cat", &tokenizer]).stdout_bytes,
        source.ok(["cat", &tokenizer]).stdout_bytes
    );

    // A bundle whose step names an output that is neither in it nor in the ledger.
    let mut step_run = stage_event(&source.dir, "tokens");
    step_run.run_id = Hash::of(b"another run");
    let missing = Hash::of(b"bytes nobody has");
    step_run.outputs[0].hash = missing;
    let bundle = dest.root.join("incomplete.bundle");
    let root = step_run.outputs[1].hash;
    let config = b"[experiment]\n".to_vec();
    write_bundle(
        &bundle,
        &root,
        &[
            EventKind::RunStarted(RunStarted {
                run_id: step_run.run_id,
                experiment: "x".into(),
                config: Hash::of(&config),
                config_path: "x.toml".into(),
            }),
            EventKind::StageRun(step_run),
        ],
        &[config],
    );
    let before = snapshot(&dest.dir);
    let out = dest
        .run(["import", bundle.to_str().unwrap()])
        .expect_code(1);
    assert!(
        out.stderr
            .contains("neither in the bundle nor in this ledger"),
        "{out:?}"
    );
    assert!(out.stderr.contains("nothing was imported"), "{out:?}");
    assert_eq!(
        snapshot(&dest.dir),
        before,
        "a refused import touched the ledger"
    );
}

// 4. A writer checks the whole log, not only what follows the index's tail.
#[test]
fn writers_refuse_to_build_on_a_log_damaged_anywhere() {
    let template = small_ledger();
    let frames = template.frames();
    let mut rng = Rng::new(0x5eed_f11b);
    for round in 0..20 {
        let l = Ledger::new();
        copy_dir(&template.dir, &l.dir);
        for (i, f) in ["before/0.txt", "before/1.txt", "before/2.txt"]
            .iter()
            .enumerate()
        {
            l.write(f, format!("before {i}\n"));
        }
        // Any byte of any frame but the last (whose damage a scan past the tail would see).
        let (offset, len) = frames[rng.range(0, frames.len() as u64 - 1) as usize];
        let at = offset + rng.range(0, 4 + len + 32);
        flip_bits(&l.log_path(), at, 1 << rng.range(0, 8));
        writers_refuse(&l, &format!("round {round}: bit flipped at byte {at}"));
        l.run(["verify"]).expect_code(1);
    }
}

// 5. What a killed import leaves (its staging area) is named by verify and removed by gc.
#[test]
fn the_staging_area_of_a_killed_import_is_reported_and_collected() {
    let l = small_ledger();
    let staged = l.dir.join("tmp/import-k1ll3d/objects/ab");
    std::fs::create_dir_all(&staged).unwrap();
    std::fs::write(staged.join("cdef"), vec![7u8; 1 << 20]).unwrap();
    std::fs::write(l.dir.join("tmp/ingest-x1"), b"half a blob").unwrap();
    let v = l.ok(["verify"]);
    assert!(
        v.stderr
            .contains("holds 1 files and 1 directories (1.0 MiB)"),
        "{v:?}"
    );
    let gc = l.ok(["gc"]);
    assert!(gc.stdout.contains("2 temp files and directories"), "{gc:?}");
    assert_eq!(std::fs::read_dir(l.dir.join("tmp")).unwrap().count(), 0);
    let again = l.ok(["gc"]);
    assert!(again.stdout.contains("0 temp files"), "{again:?}");
    let v = l.ok(["verify"]);
    assert!(!v.stderr.contains("holds"), "{v:?}");
}

// 6. A `reindex` killed at any instant never leaves an index that passes for complete.
#[test]
fn a_killed_reindex_leaves_an_index_that_answers_correctly() {
    let l = Ledger::init();
    // Enough events for a reindex to take a while: one run ingesting 3,000 files.
    for i in 0..3000 {
        l.write(&format!("many/{i:04}.txt"), format!("file {i}\n"));
    }
    let config = l.config("many.toml", &ingest_pack_config("many", "many", 1 << 20));
    let report = l.run_config(&config);
    let corpus = step_output(&report, "corpus", "corpus");
    let t0 = Instant::now();
    l.ok(["reindex"]);
    let full = t0.elapsed().as_millis() as u64;
    let mut rng = Rng::new(0x0dd_ba11);
    for round in 0..12 {
        let mut child = l.spawn(["reindex"]);
        std::thread::sleep(Duration::from_millis(rng.range(0, full.max(10) + 1)));
        sigkill(&mut child);
        let show = l.run(["show", &corpus]);
        assert_eq!(
            show.code, 0,
            "round {round}: readers answer wrongly:\n{show:?}"
        );
        assert!(
            show.stdout.contains("produced   output `corpus`"),
            "{show:?}"
        );
        for sample in ["many/0000.txt", "many/1500.txt", "many/2999.txt"] {
            let added = b3(format!("file {}\n", sample[5..9].parse::<u32>().unwrap()).as_bytes());
            l.ok(["show", &added]);
        }
        // Running again finds every step in the cache (each external file is hashed again,
        // which costs time: every fourth round).
        if round % 4 == 3 {
            let again = l.run_config(&config);
            for s in again["steps"].as_array().unwrap() {
                assert!(
                    s["outcome"].get("Cached").is_some(),
                    "round {round}: {again:#}"
                );
            }
        }
    }
    let v = l.ok(["verify"]);
    assert!(v.stdout.contains(": clean"), "{v:?}");
}

// 7. A kill during the first `init` leaves no half ledger: `init` just runs again.
#[test]
fn what_an_interrupted_init_left_is_named_and_init_runs_again() {
    for left in [&b""[..], &b"DVL"[..]] {
        let l = Ledger::new();
        std::fs::create_dir_all(&l.dir).unwrap();
        std::fs::write(l.dir.join("events.log"), left).unwrap();
        let log = l.run(["log"]).expect_code(1);
        assert!(log.stderr.contains("interrupted `ledger init`"), "{log:?}");
        assert!(log.stderr.contains("run `ledger init` again"), "{log:?}");
        l.ok(["init"]);
        let v = l.ok(["verify"]);
        assert!(v.stdout.contains(": clean"), "{v:?}");
    }
    // An init never leaves a partial log: it appears whole, by rename.
    let l = Ledger::init();
    assert_eq!(std::fs::read(l.log_path()).unwrap(), b"DVLEDG01");
    assert!(!l.dir.join("events.log.init").exists());
    let again = l.run(["init"]).expect_code(1);
    assert!(again.stderr.contains("already a ledger"), "{again:?}");
}

/// A tmpfs of `mib` MiB mounted for the test; unmounted on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, mib: u32) -> Option<Tmpfs> {
        std::fs::create_dir_all(at).unwrap();
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
            .arg(at)
            .output()
            .ok()?;
        if !out.status.success() {
            eprintln!(
                "SKIPPED: cannot mount a tmpfs here (needs root): {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
            return None;
        }
        Some(Tmpfs(at.to_path_buf()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

// 8. A full disk is the OS error it is, said once; the index is never set aside for it.
#[test]
fn a_full_disk_is_an_error_said_once_and_never_a_broken_index() {
    let l = Ledger::new();
    let Some(fs) = Tmpfs::mount(&l.root.join("small"), 40) else {
        return;
    };
    let dir = fs.0.join("ledger");
    let run = |args: &[&str]| -> Output {
        let out = std::process::Command::new(common::BIN)
            .arg("--ledger")
            .arg(&dir)
            .args(args)
            .env_remove("RUST_LOG")
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        Output {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stdout_bytes: out.stdout,
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            args: args.iter().map(|s| s.to_string()).collect(),
        }
    };
    assert_eq!(run(&["init"]).code, 0);
    let kept = l.write("kept.txt", "committed before the disk filled\n");
    assert_eq!(run(&["add", kept.to_str().unwrap()]).code, 0);
    let events_before = run(&["log", "--json"]).json().as_array().unwrap().len();
    // Fill the file system, then ask for more than is left, several times.
    let filler = fs.0.join("filler");
    let _ = std::process::Command::new("dd")
        .args(["if=/dev/zero", "bs=1M", "count=40"])
        .arg(format!("of={}", filler.display()))
        .output();
    let big = l.write("big.bin", vec![1u8; 4 << 20]);
    for attempt in 0..3 {
        let out = run(&["add", big.to_str().unwrap()]);
        assert_ne!(out.code, 0, "attempt {attempt}: {out:?}");
        assert_eq!(
            out.stderr.matches("No space left on device").count(),
            1,
            "attempt {attempt}: the OS error is said once:\n{out:?}"
        );
        assert!(!out.stderr.contains("Directory not empty"), "{out:?}");
        let aside: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().starts_with("index.broken"))
            .collect();
        assert!(
            aside.is_empty(),
            "attempt {attempt}: a full disk set the index aside"
        );
    }
    std::fs::remove_file(&filler).unwrap();
    let v = run(&["verify"]);
    assert_eq!(v.code, 0, "{v:?}");
    assert_eq!(
        run(&["log", "--json"]).json().as_array().unwrap().len(),
        events_before,
        "nothing was lost or half-written"
    );
    assert_eq!(run(&["add", big.to_str().unwrap()]).code, 0);
    assert_eq!(
        run(&["cat", &b3(&[1u8; 4 << 20])]).stdout_bytes.len(),
        4 << 20
    );
    drop(fs);
}

// 9. A stage never reads bytes that do not hash to the address it was given.
#[test]
fn a_rotted_input_fails_the_step_naming_the_blob() {
    let l = Ledger::init();
    l.data_set("data");
    let report = l.run_config(&l.config("exp.toml", &ingest_pack_config("exp", "data", 1 << 20)));
    let manifest = step_output(&report, "src", "files");
    let text = b3(b"alpha\nbeta\n");
    common::flip_byte(&l.blob_path(&text), 2);
    // A new action over the rotted file (another pack setting).
    let config = l.config("exp2.toml", &ingest_pack_config("exp", "data", 1 << 19));
    let out = l
        .run(["run", "--no-progress", config.to_str().unwrap()])
        .expect_code(1);
    assert!(
        out.stderr.contains(&format!("blob {text} is damaged")),
        "{out:?}"
    );
    let _ = manifest;
    // Nothing built from the rotted bytes was recorded as a success.
    let events = l.events();
    let last = events.last().unwrap();
    assert_eq!(last["kind"], "stage", "{last:#}");
    assert!(last["detail"]["status"].get("failed").is_some(), "{last:#}");
}

/// Runs a command and returns its output and peak RSS in KiB.
fn run_measured(mut cmd: std::process::Command) -> (Output, i64) {
    let child = cmd
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id() as libc::pid_t;
    let out = std::thread::spawn(move || {
        use std::io::Read;
        let mut child = child;
        let (mut o, mut e) = (Vec::new(), Vec::new());
        child.stdout.take().unwrap().read_to_end(&mut o).unwrap();
        child.stderr.take().unwrap().read_to_end(&mut e).unwrap();
        std::mem::forget(child);
        (o, e)
    })
    .join()
    .unwrap();
    let mut status = 0;
    // SAFETY: wait4 on our own child, with valid pointers to locals.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    assert_eq!(rc, pid);
    let code = if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else {
        -1
    };
    (
        Output {
            code,
            stdout: String::from_utf8_lossy(&out.0).into_owned(),
            stdout_bytes: out.0,
            stderr: String::from_utf8_lossy(&out.1).into_owned(),
            args: vec![],
        },
        usage.ru_maxrss,
    )
}

// 10. Decompressed records are bounded; an empty input is an error, not 0 samples.
#[test]
fn a_decompression_bomb_is_refused_within_bounded_memory_and_empty_input_is_an_error() {
    let l = Ledger::init();
    // One line of 1 GiB in a few KB of zstd.
    let bomb = l.root.join("bomb.jsonl.zst");
    {
        use std::io::Write;
        let mut enc = zstd::Encoder::new(std::fs::File::create(&bomb).unwrap(), 3).unwrap();
        enc.write_all(b"{\"id\":\"x\",\"text\":\"").unwrap();
        let chunk = vec![b'a'; 1 << 20];
        for _ in 0..1024 {
            enc.write_all(&chunk).unwrap();
        }
        enc.write_all(b"\"}\n").unwrap();
        enc.finish().unwrap();
    }
    assert!(std::fs::metadata(&bomb).unwrap().len() < 100_000);
    let empty = l.root.join("empty.jsonl.zst");
    std::fs::write(&empty, zstd::encode_all(&b""[..], 3).unwrap()).unwrap();
    for (name, file) in [("bomb", &bomb), ("empty", &empty)] {
        let added = l.ok(["add".as_ref(), file.as_os_str()]);
        let hash = &added.stdout[..64];
        let config = l.config(
            &format!("{name}.toml"),
            &format!(
                "[[stage]]\nid = \"tok\"\nuses = \"tokenize\"\ninputs = {{ samples = \"@{hash}\" }}\nvocab_size = 300\nseq_len = 64\n"
            ),
        );
        let mut cmd = l.command(["run", "--no-progress", config.to_str().unwrap()]);
        cmd.env("RUST_LOG", "off");
        let (out, rss_kib) = run_measured(cmd);
        assert_eq!(out.code, 1, "{name}: {out:?}");
        if name == "bomb" {
            assert!(
                out.stderr.contains("longer than the 67108864-byte limit"),
                "{out:?}"
            );
            assert!(
                rss_kib < 400 * 1024,
                "the bomb took {} MiB before it was refused",
                rss_kib / 1024
            );
        } else {
            assert!(out.stderr.contains("it holds no samples"), "{out:?}");
        }
    }
}

// 11. Validating a config is linear in its size: a guard with a wide margin (the quadratic and
// cubic versions took 25 s and 20 s for these files; the linear one well under a second).
#[test]
fn validating_huge_configs_takes_linear_time() {
    let l = Ledger::new();
    let mut wide = String::new();
    for i in 0..10_000 {
        wide.push_str(&format!(
            "[[stage]]\nid = \"s{i}\"\nuses = \"ingest\"\npaths = [\"x{i}.txt\"]\n\n"
        ));
    }
    wide.push_str("[[stage]]\nid = \"bad\"\nuses = \"ingest\"\npaths = [\"y\"]\nbogus = 1\n");
    let mut chain = String::new();
    for i in (0..4000).rev() {
        let from = if i == 0 {
            "\"@deadbeefdeadbeef\"".to_string()
        } else {
            format!("\"s{}.prs\"", i - 1)
        };
        chain.push_str(&format!(
            "[[stage]]\nid = \"s{i}\"\nuses = \"filter\"\ninputs = {{ prs = {from} }}\n\n"
        ));
    }
    for (name, text, expect) in [
        ("wide.toml", wide, "wide.toml:50005: key `bogus`"),
        ("chain.toml", chain, "no artifact or run"),
    ] {
        let config = l.config(name, &text);
        let t0 = Instant::now();
        let out = l
            .run(["run", "--no-progress", config.to_str().unwrap()])
            .expect_code(1);
        let took = t0.elapsed();
        assert!(out.stderr.contains(expect), "{out:?}");
        assert!(
            took < Duration::from_secs(10),
            "{name}: validation took {took:?}"
        );
    }
}

// 12. The smaller findings: lines in every config error, a failed import writes nothing,
// bundles get the usual permissions, and a replay never uses a bundle's paths as directories.
#[test]
fn config_errors_name_their_line() {
    let l = Ledger::new();
    let cases: [(&str, &[u8], &str); 3] = [
        (
            "utf8.toml",
            b"[[stage]]\nid = \"a\"\nuses = \"ingest\"\npaths = [\"\xff\"]\n",
            "utf8.toml:4: not valid UTF-8",
        ),
        (
            "nostage.toml",
            b"[experiment]\nname = \"x\"\n",
            "nostage.toml:3: no [[stage]] entries",
        ),
        (
            "nested.toml",
            b"[[stage]]\nid = \"a\"\nuses = \"ingest\"\npaths = [[\"x\"]]\n",
            "nested.toml:4: key `paths[0]`",
        ),
    ];
    for (name, text, expect) in cases {
        let config = l.write(name, text);
        let out = l.run(["run".as_ref(), config.as_os_str()]).expect_code(1);
        assert!(out.stderr.contains(expect), "{name}: {out:?}");
    }
}

#[test]
fn a_failed_import_changes_no_file_of_the_ledger() {
    let l = small_ledger();
    let bundle = l.root.join("bad.bundle");
    std::fs::write(&bundle, b"DVBUNDL1 and then nonsense").unwrap();
    // Let the clock move so a rewrite would show in the modification times.
    std::thread::sleep(Duration::from_millis(20));
    let before = snapshot(&l.dir);
    l.run(["import", bundle.to_str().unwrap()]).expect_code(1);
    assert_eq!(snapshot(&l.dir), before);
}

#[test]
fn bundles_are_written_with_the_usual_permissions() {
    use std::os::unix::fs::PermissionsExt;
    // SAFETY: umask(2) only sets this process's file mode mask (inherited by the child).
    unsafe { libc::umask(0o022) };
    let l = small_ledger();
    let out = l.root.join("x.bundle");
    l.ok(["export", &b3(b"before 0\n"), "-o", out.to_str().unwrap()]);
    let mode = std::fs::metadata(&out).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o644, "{mode:o}");
}

#[test]
fn a_replay_of_an_imported_step_never_uses_the_bundles_paths_as_directories() {
    let (source, report) = pipeline_ledger();
    let prs = step_output(&report, "prs", "prs");
    let bundle = source.root.join("prs.bundle");
    source.ok(["export", &prs, "-o", bundle.to_str().unwrap()]);
    let dest = Ledger::init();
    dest.ok(["import", bundle.to_str().unwrap()]);
    // The recorded config path names the source's directory, which exists on this machine:
    // the replay must not go looking there.
    let out = dest.run(["replay", &prs]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stderr.contains("not a git repository"), "{out:?}");
    // Pointed at the clone explicitly, it re-derives the imported collection bit for bit.
    let out = dest.ok(["replay", &prs, "--workdir", source.root.to_str().unwrap()]);
    assert!(out.stdout.contains("bit-identical"), "{out:?}");
}

// 14. A shallow clone: mine what it has, say so, and name the fix when it has nothing.
#[test]
fn a_shallow_clone_is_mined_to_its_boundary_or_refused_with_the_fix() {
    let l = Ledger::init();
    let repo = python_repo(&l);
    let url = format!("file://{}", repo.display());
    let collect = |clone: &str| {
        format!(
            "[[stage]]\nid = \"prs\"\nuses = \"collect\"\nsource = \"git\"\ngit = {{ repo = \"{clone}\", unit = \"commit\" }}\n"
        )
    };
    let clone = |name: &str, depth: u32| {
        git(
            &l.root,
            "2024-03-05T10:00:00Z",
            &["clone", "-q", "--depth", &depth.to_string(), &url, name],
        )
    };
    clone("depth1", 1);
    let config = l.config("one.toml", &collect("depth1"));
    let out = l
        .run(["run", "--no-progress", config.to_str().unwrap()])
        .expect_code(1);
    assert!(out.stderr.contains("is a shallow clone"), "{out:?}");
    assert!(out.stderr.contains("fetch --unshallow"), "{out:?}");

    clone("depth3", 3);
    let config = l.config("three.toml", &collect("depth3"));
    let mut cmd = l.command(["run", "--json", "--no-progress", config.to_str().unwrap()]);
    cmd.env("RUST_LOG", "warn");
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("is a shallow clone"), "{stderr}");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let metrics: BTreeMap<String, f64> = step(&report, "prs")["metrics"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| (m[0].as_str().unwrap().to_string(), m[1].as_f64().unwrap()))
        .collect();
    assert!(metrics["shallow_boundary"] >= 1.0, "{metrics:?}");
    assert!(metrics["records"] >= 1.0, "{metrics:?}");

    // Fetched deeper, the same commit is a new action (what can be mined changed).
    git(
        &l.root.join("depth3"),
        "2024-03-05T10:00:00Z",
        &["fetch", "-q", "--unshallow"],
    );
    let again = l.run_config(&config);
    assert_eq!(step(&again, "prs")["outcome"], "Executed", "{again:#}");
    let _ = frames_of;
}
