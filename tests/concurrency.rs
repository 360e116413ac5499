//! One writer at a time: a second writer either fails at once naming the holder (`--no-wait`)
//! or waits its turn; readers never wait for a writer.

mod common;

use common::{added_hashes, b3, ingest_pack_config, Ledger};
use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::process::Child;
use std::sync::mpsc;
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(60);

/// Forwards a child's stdout or stderr, line by line, to a channel.
fn lines_of(stream: impl Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// Collects lines until `done` says so; panics after `WAIT`.
fn wait_for_lines(
    rx: &mpsc::Receiver<String>,
    into: &mut Vec<String>,
    what: &str,
    done: impl Fn(&[String]) -> bool,
) {
    let deadline = Instant::now() + WAIT;
    while !done(into) {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => into.push(line),
            Err(e) => panic!("waiting for {what}: {e}; got so far:\n{}", into.join("\n")),
        }
    }
}

fn mkfifo(path: &Path) {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    let rc = unsafe { libc::mkfifo(c.as_ptr(), 0o600) };
    assert_eq!(rc, 0, "mkfifo: {}", std::io::Error::last_os_error());
}

/// Opens the FIFO's write end once the child has opened its read end, writes, closes.
fn feed_fifo(path: &Path, bytes: &[u8], child: &mut Child) {
    let deadline = Instant::now() + WAIT;
    let mut pipe = loop {
        match std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(path)
        {
            Ok(f) => break f,
            // ENXIO: no reader yet.
            Err(e) if e.raw_os_error() == Some(libc::ENXIO) => {
                assert!(
                    child.try_wait().unwrap().is_none(),
                    "the writer exited before reading the FIFO"
                );
                assert!(
                    Instant::now() < deadline,
                    "the writer never opened the FIFO"
                );
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => panic!("opening the FIFO: {e}"),
        }
    };
    pipe.write_all(bytes).unwrap();
}

fn event_hashes(events: &[serde_json::Value]) -> Vec<String> {
    events
        .iter()
        .filter_map(|e| e["detail"]["hash"].as_str().map(str::to_string))
        .collect()
}

#[track_caller]
fn assert_contiguous(events: &[serde_json::Value]) {
    for (i, e) in events.iter().enumerate() {
        assert_eq!(e["seq"], i as u64, "events out of order: {e}");
    }
}

#[test]
fn a_second_writer_fails_fast_or_waits_and_readers_never_block() {
    let l = Ledger::init();
    let seed_bytes = b"seed artifact\n";
    let seed = l.write("seed.txt", seed_bytes);
    l.ok(["add".as_ref(), seed.as_os_str()]);

    // The long writer: 60 files, then a FIFO that holds it (lock and all) until we feed it,
    // then 60 more files.
    let fifo = l.root.join("pipe");
    mkfifo(&fifo);
    let mut args = vec![std::ffi::OsString::from("add")];
    let mut expected = Vec::new();
    for j in 0..120 {
        if j == 60 {
            args.push(fifo.clone().into());
            expected.push(b"through the pipe\n".to_vec());
        }
        let bytes = format!("long writer file {j}\n").into_bytes();
        args.push(l.write(&format!("long/f{j:03}.txt"), &bytes).into());
        expected.push(bytes);
    }
    let mut writer = l.spawn(&args);
    let writer_pid = writer.id();
    let out_rx = lines_of(writer.stdout.take().unwrap());
    let mut printed = Vec::new();
    wait_for_lines(&out_rx, &mut printed, "the first 60 adds", |l| {
        l.len() >= 60
    });
    assert!(
        writer.try_wait().unwrap().is_none(),
        "the long writer is not blocked"
    );
    let lock = std::fs::read_to_string(l.dir.join("LOCK")).unwrap();
    assert!(
        lock.contains(&format!("pid {writer_pid}")),
        "LOCK holds {lock:?}"
    );

    // 1. --no-wait: fails at once, naming the holder, and writes nothing.
    let other_bytes = b"no-wait writer\n";
    let other = l.write("other.txt", other_bytes);
    let started = Instant::now();
    let refused = l
        .run(["--no-wait".as_ref(), "add".as_ref(), other.as_os_str()])
        .expect_code(1);
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "--no-wait took {:?}",
        started.elapsed()
    );
    assert!(
        refused.stderr.contains(&format!("pid {writer_pid}")),
        "the holder is not named:\n{refused:?}"
    );
    assert!(refused.stderr.contains("being written"), "{refused:?}");
    assert!(refused.stdout.is_empty(), "{refused:?}");
    let tag = l
        .run(["--no-wait", "tag", "t", &b3(seed_bytes)])
        .expect_code(1);
    assert!(tag.stderr.contains(&format!("pid {writer_pid}")), "{tag:?}");
    let gc = l.run(["--no-wait", "gc"]).expect_code(1);
    assert!(gc.stderr.contains(&format!("pid {writer_pid}")), "{gc:?}");

    // 2. Readers work while the writer holds the lock and the index.
    let events = l.events();
    assert_eq!(
        events.len(),
        61,
        "the reader sees the writer's durable events"
    );
    assert_contiguous(&events);
    assert!(!event_hashes(&events).contains(&b3(other_bytes)));
    let show = l.ok(["show", &b3(seed_bytes)]);
    assert!(show.stdout.contains("origin     file"), "{show:?}");
    let first = b3(&expected[0]);
    let shown = l.ok(["show", "--json", &first[..10]]).json();
    assert_eq!(shown["artifact"]["hash"], first.as_str());
    assert_eq!(l.ok(["cat", &b3(seed_bytes)]).stdout_bytes, seed_bytes);
    l.ok(["lineage", "--format", "json", &first]);
    let v = l.ok(["verify"]);
    assert!(v.stdout.contains(": clean"), "{v:?}");
    assert!(v.stderr.contains("in use by a writer"), "{v:?}");

    // 3. A writer without --no-wait waits, says for whom, and goes on when the lock is free.
    let waiter_bytes = b"patient writer\n";
    let waiter_file = l.write("waiter.txt", waiter_bytes);
    let mut waiter = l.spawn(["add".as_ref(), waiter_file.as_os_str()]);
    let err_rx = lines_of(waiter.stderr.take().unwrap());
    let mut waiter_err = Vec::new();
    wait_for_lines(&err_rx, &mut waiter_err, "the waiting message", |l| {
        l.iter()
            .any(|x| x.contains("waiting for the ledger writer lock"))
    });
    assert!(
        waiter_err
            .iter()
            .any(|x| x.contains(&format!("pid {writer_pid}"))),
        "{waiter_err:?}"
    );
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        waiter.try_wait().unwrap().is_none(),
        "the second writer did not wait for the first"
    );

    // 4. Let the long writer go on; read while it appends.
    feed_fifo(&fifo, b"through the pipe\n", &mut writer);
    let mut reads = 0;
    while writer.try_wait().unwrap().is_none() {
        let events = l.events();
        assert_contiguous(&events);
        assert!(events.len() >= 61);
        reads += 1;
    }
    let status = writer.wait().unwrap();
    assert!(status.success(), "the long writer failed: {status}");
    wait_for_lines(&out_rx, &mut printed, "the long writer's output", |l| {
        l.len() >= expected.len()
    });
    let got: Vec<String> = added_hashes(&(printed.join("\n") + "\n"))
        .into_iter()
        .map(|(h, _)| h)
        .collect();
    let want: Vec<String> = expected.iter().map(|b| b3(b)).collect();
    assert_eq!(got, want, "the long writer's hashes");

    let out = waiter.wait_with_output().unwrap();
    assert!(out.status.success(), "the waiting writer failed: {:?}", out);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(added_hashes(&stdout)[0].0, b3(waiter_bytes));

    // 5. Both writers' artifacts are there, the waiter's strictly after the long writer's.
    let events = l.events();
    assert_contiguous(&events);
    let hashes = event_hashes(&events);
    assert_eq!(hashes.len(), 1 + expected.len() + 1, "{hashes:?}");
    assert_eq!(hashes[0], b3(seed_bytes));
    assert_eq!(&hashes[1..=expected.len()], &want[..]);
    assert_eq!(hashes.last().unwrap(), &b3(waiter_bytes));
    for h in &hashes {
        assert!(l.blob_path(h).is_file(), "{h} is not stored");
    }
    let v = l.ok(["verify"]);
    assert!(v.stdout.contains(": clean"), "{v:?}");
    assert!(!v.stderr.contains("interrupted"), "{v:?}");

    // Now the --no-wait writer gets in.
    let out = l.ok(["--no-wait".as_ref(), "add".as_ref(), other.as_os_str()]);
    assert_eq!(added_hashes(&out.stdout)[0].0, b3(other_bytes));
    eprintln!("{reads} reads while the writer appended");
}

#[test]
fn writers_started_together_take_turns() {
    let l = Ledger::init();
    for j in 0..30 {
        l.write(&format!("data/f{j:02}.txt"), format!("run file {j}\n"));
    }
    let config = l.config("exp.toml", &ingest_pack_config("together", "data", 1 << 20));
    let mut add_args = vec![std::ffi::OsString::from("add")];
    let mut add_hashes = Vec::new();
    for j in 0..30 {
        let bytes = format!("add file {j}\n");
        add_args.push(l.write(&format!("adds/f{j:02}.txt"), &bytes).into());
        add_hashes.push(b3(bytes.as_bytes()));
    }
    let runner = l.spawn([
        "run".as_ref(),
        "--json".as_ref(),
        "--no-progress".as_ref(),
        config.as_os_str(),
    ]);
    let adder = l.spawn(&add_args);
    let reader = l.spawn(["log", "--json"]);
    let run_out = runner.wait_with_output().unwrap();
    let add_out = adder.wait_with_output().unwrap();
    let log_out = reader.wait_with_output().unwrap();
    assert!(run_out.status.success(), "{run_out:?}");
    assert!(add_out.status.success(), "{add_out:?}");
    assert!(log_out.status.success(), "{log_out:?}");
    let report: serde_json::Value = serde_json::from_slice(&run_out.stdout).unwrap();
    let corpus = common::step_output(&report, "corpus", "corpus");

    let events = l.events();
    assert_contiguous(&events);
    assert_eq!(
        events.len(),
        30 + 2 + 30 + 2,
        "config, run, files, 2 steps, adds"
    );
    // Each writer's events are one uninterrupted stretch of the log.
    let positions: Vec<usize> = events
        .iter()
        .enumerate()
        .filter(|(_, e)| {
            e["detail"]["hash"]
                .as_str()
                .is_some_and(|h| add_hashes.iter().any(|a| a == h))
        })
        .map(|(i, _)| i)
        .collect();
    assert_eq!(positions.len(), 30);
    assert_eq!(
        positions.last().unwrap() - positions[0],
        29,
        "the two writers' events interleave: {positions:?}"
    );
    let run_id = report["run_id"].as_str().unwrap();
    let run_seqs: BTreeSet<usize> = events
        .iter()
        .enumerate()
        .filter(|(_, e)| e["detail"]["run_id"] == run_id)
        .map(|(i, _)| i)
        .collect();
    assert_eq!(run_seqs.len(), 3);
    assert!(
        run_seqs.iter().all(|s| *s < positions[0]) || run_seqs.iter().all(|s| *s > positions[29]),
        "the run's events interleave with the add's"
    );
    let v = l.ok(["verify"]);
    assert!(v.stdout.contains(": clean"), "{v:?}");
    assert_eq!(
        l.ok(["replay", &corpus])
            .stdout
            .trim_end()
            .rsplit('\n')
            .next(),
        Some("bit-identical")
    );
}
