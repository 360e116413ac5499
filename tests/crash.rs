//! Crash safety: a writer killed with SIGKILL at any point leaves a ledger that verifies clean
//! (at most a torn last frame, which is a warning), the next writer carries on, and everything
//! a writer reported as added is still there.

mod common;

use common::{added_hashes, b3, frames_of, ingest_pack_config, is_hash, sigkill, Ledger, Rng};
use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::time::{Duration, Instant};

const ITERATIONS: usize = 30;
const FILES_PER_ADD: usize = 150;
const FILES_PER_RUN: usize = 25;

/// `ledger verify` must pass; returns its stderr (the warnings).
#[track_caller]
fn verify_clean(l: &Ledger, when: &str) -> String {
    let v = l.run(["verify"]);
    assert_eq!(v.code, 0, "verify after {when}:\n{v:?}");
    assert!(v.stdout.contains(": clean"), "verify after {when}:\n{v:?}");
    assert!(!v.stdout.contains("PROBLEM"), "verify after {when}:\n{v:?}");
    v.stderr
}

#[test]
fn writers_killed_at_random_points_leave_a_clean_ledger() {
    let l = Ledger::init();
    let mut rng = Rng::new(0x00c0_ffee_d15c_0b01);
    // hash → bytes of everything a writer said it added (durable from that moment on).
    let mut promised: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    let mut torn_tails = 0;
    let mut killed_mid_way = 0;
    let mut partial_adds = 0;
    let started = Instant::now();

    // Calibrate: how long does one uninterrupted writer take on this machine? Kill delays are
    // drawn from that span, so kills land mid-way on slow disks and on fast tmpfs alike.
    let mut args = vec![std::ffi::OsString::from("add")];
    for j in 0..FILES_PER_ADD {
        let bytes = format!("calibration file {j}\n").into_bytes();
        args.push(l.write(&format!("calib/f{j:03}.txt"), &bytes).into());
        promised.insert(b3(&bytes), bytes);
    }
    let t0 = Instant::now();
    let out = l.ok(&args);
    let full_ms = (t0.elapsed().as_millis() as u64).max(20);
    assert_eq!(added_hashes(&out.stdout).len(), FILES_PER_ADD, "{out:?}");

    for i in 0..ITERATIONS {
        let run_config = i % 3 == 2;
        let mut files = Vec::new();
        let (mut child, what) = if run_config {
            for j in 0..FILES_PER_RUN {
                let bytes = format!("run {i} file {j}\n").into_bytes();
                l.write(&format!("run{i}/f{j:03}.txt"), &bytes);
                files.push(bytes);
            }
            let config = l.config(
                &format!("run{i}.toml"),
                &ingest_pack_config(&format!("crash{i}"), &format!("run{i}"), 1 << 20),
            );
            let child = l.spawn(["run".as_ref(), "--no-progress".as_ref(), config.as_os_str()]);
            (child, format!("`ledger run {}`", config.display()))
        } else {
            let mut args = vec![std::ffi::OsString::from("add")];
            for j in 0..FILES_PER_ADD {
                let bytes = format!("add {i} file {j}\n").into_bytes();
                args.push(l.write(&format!("add{i}/f{j:03}.txt"), &bytes).into());
                files.push(bytes);
            }
            (l.spawn(&args), format!("`ledger add` #{i}"))
        };

        // Mostly early (opening, first appends), every sixth (an `add`) well into the work.
        let delay = if i % 6 == 4 {
            rng.range(full_ms / 4, full_ms.min(1000) + 1)
        } else {
            rng.range(0, full_ms.min(250) + 1)
        };
        std::thread::sleep(Duration::from_millis(delay));
        let finished_already = child.try_wait().unwrap().is_some();
        sigkill(&mut child);
        let mut stdout = String::new();
        child
            .stdout
            .take()
            .unwrap()
            .read_to_string(&mut stdout)
            .unwrap();
        if !finished_already {
            killed_mid_way += 1;
        }

        if !run_config {
            let n = added_hashes(&stdout).len();
            if n > 0 && n < FILES_PER_ADD {
                partial_adds += 1;
            }
            let by_hash: BTreeMap<String, &Vec<u8>> = files.iter().map(|b| (b3(b), b)).collect();
            for (hash, path) in added_hashes(&stdout) {
                let bytes = by_hash.get(&hash).unwrap_or_else(|| {
                    panic!("{what} printed {hash} for {path}, which is none of its files")
                });
                promised.insert(hash, (*bytes).clone());
            }
        }

        let log = l.log_bytes();
        let complete: u64 = frames_of(&log)
            .last()
            .map_or(8, |(off, len)| off + 4 + len + 32);
        let when = format!("killing {what} after {delay} ms");
        let warnings = verify_clean(&l, &when);
        if complete < log.len() as u64 {
            torn_tails += 1;
            assert!(
                warnings.contains("interrupted append"),
                "a torn tail of {} bytes went unreported after {when}:\n{warnings}",
                log.len() as u64 - complete
            );
        }

        // The next writer finishes, whatever the killed one left behind.
        let marker = format!("marker {i}\n").into_bytes();
        let path = l.write(&format!("markers/{i}.txt"), &marker);
        let out = l.ok(["add".as_ref(), path.as_os_str()]);
        let printed = added_hashes(&out.stdout);
        assert_eq!(printed.len(), 1, "{out:?}");
        assert_eq!(printed[0].0, b3(&marker));
        promised.insert(b3(&marker), marker);

        if run_config {
            // Re-running the killed experiment completes it.
            let config = l.root.join(format!("run{i}.toml"));
            let report = l.run_config(&config);
            let corpus = common::step_output(&report, "corpus", "corpus");
            let text = std::fs::read_to_string(l.blob_path(&corpus)).unwrap();
            assert_eq!(
                text.lines().count(),
                FILES_PER_RUN,
                "the corpus of the re-run is incomplete"
            );
            for bytes in files {
                promised.insert(b3(&bytes), bytes);
            }
            promised.insert(corpus, text.into_bytes());
        }
    }

    let warnings = verify_clean(&l, "the last iteration");
    assert!(
        !warnings.contains("interrupted append"),
        "the last writer left a torn tail:\n{warnings}"
    );
    // Everything promised is recorded, stored and byte-exact.
    let recorded: BTreeSet<String> = l
        .events()
        .iter()
        .flat_map(|e| {
            let d = &e["detail"];
            let mut v: Vec<String> = d["hash"].as_str().map(str::to_string).into_iter().collect();
            if let Some(outputs) = d["outputs"].as_array() {
                v.extend(
                    outputs
                        .iter()
                        .map(|o| o["hash"].as_str().unwrap().to_string()),
                );
            }
            v
        })
        .collect();
    for (hash, bytes) in &promised {
        assert!(is_hash(hash));
        assert!(
            recorded.contains(hash),
            "{hash} was promised but is not in the log"
        );
        let stored = std::fs::read(l.blob_path(hash))
            .unwrap_or_else(|e| panic!("{hash} was promised but its blob is gone: {e}"));
        assert!(stored == *bytes, "{hash}: stored bytes differ");
    }
    // Spot-check through the CLI too.
    for (hash, bytes) in promised.iter().step_by(97) {
        assert_eq!(&l.ok(["cat", hash]).stdout_bytes, bytes);
    }
    assert!(
        killed_mid_way >= ITERATIONS / 2,
        "only {killed_mid_way} of {ITERATIONS} writers were still running when killed"
    );
    eprintln!(
        "{ITERATIONS} kills ({killed_mid_way} mid-way, {partial_adds} adds cut part-way, \
         {torn_tails} torn tails; a full add takes {full_ms} ms), {} artifacts promised, {:.1}s",
        promised.len(),
        started.elapsed().as_secs_f64()
    );
}

#[test]
fn a_torn_tail_is_a_warning_and_the_next_writer_cuts_it() {
    let l = Ledger::init();
    for i in 0..3 {
        let f = l.write(&format!("f{i}.txt"), format!("file {i}\n"));
        l.ok(["add".as_ref(), f.as_os_str()]);
    }
    let events = l.events().len();
    assert_eq!(events, 3);

    let frame_bytes = |log: &[u8]| -> Vec<u8> {
        let (off, len) = *frames_of(log).last().unwrap();
        log[off as usize..(off + 4 + len + 32) as usize].to_vec()
    };
    let last = frame_bytes(&l.log_bytes());
    let tails: Vec<(&str, Vec<u8>)> = vec![
        (
            "garbage claiming an 80-byte frame",
            b"\x50\x00\x00\x00abcdefg".to_vec(),
        ),
        ("two bytes of a length field", b"\x07\x00".to_vec()),
        ("half of a real frame", last[..last.len() / 2].to_vec()),
        (
            "a frame without its checksum",
            last[..last.len() - 5].to_vec(),
        ),
        ("an absurd length", b"\xff\xff\xff\x7f0123".to_vec()),
    ];

    for (n, (what, tail)) in tails.into_iter().enumerate() {
        let good = l.log_bytes();
        let end = good.len();
        let mut torn = good.clone();
        torn.extend_from_slice(&tail);
        std::fs::write(l.log_path(), &torn).unwrap();

        let v = l.run(["verify"]);
        assert_eq!(v.code, 0, "{what}: a torn tail is not a problem:\n{v:?}");
        assert!(v.stdout.contains(": clean"), "{what}:\n{v:?}");
        assert!(
            v.stderr.contains(&format!(
                "{} bytes of an interrupted append at byte {end}",
                tail.len()
            )),
            "{what}: expected a warning naming the torn bytes:\n{v:?}"
        );
        // Readers see the intact events only.
        assert_eq!(l.events().len(), events + n, "{what}");

        // The next writer cuts the tail and appends after the last good frame.
        let bytes = format!("after tear {n}\n");
        let f = l.write(&format!("tear{n}.txt"), &bytes);
        let out = l.ok(["add".as_ref(), f.as_os_str()]);
        assert_eq!(added_hashes(&out.stdout)[0].0, b3(bytes.as_bytes()));
        assert!(out.stderr.contains("discarding"), "{what}:\n{out:?}");
        let after = l.log_bytes();
        assert_eq!(&after[..end], &good[..], "{what}: the good prefix changed");
        let frames = frames_of(&after);
        let (off, len) = *frames.last().unwrap();
        assert_eq!(
            off as usize, end,
            "{what}: the new event does not start where the tear was"
        );
        assert_eq!(
            (off + 4 + len + 32) as usize,
            after.len(),
            "{what}: bytes left after the new event"
        );
        let v = l.ok(["verify"]);
        assert!(v.stdout.contains(": clean"), "{what}:\n{v:?}");
        assert!(!v.stderr.contains("interrupted"), "{what}:\n{v:?}");
        let all = l.events();
        assert_eq!(all.len(), events + n + 1, "{what}");
        assert_eq!(all.last().unwrap()["seq"], (events + n) as u64);
    }
}
