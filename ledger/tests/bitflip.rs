//! The bit-flip sweep: every byte of a small ledger's `events.log` is flipped in turn (one bit
//! of each byte, rotating, and every bit of every frame's length field), one at a time, on a copy.
//! Each time, `verify` must name damage, and no writer — opening to append, or `reindex` —
//! may shorten the log or change a byte of it.

use indicatif::ProgressBar;
use ledger::event::*;
use ledger::verify::verify;
use ledger::{Hash, Ledger, Wait};
use std::path::Path;

fn env() -> Environment {
    Environment {
        host: "h".into(),
        os: "linux".into(),
        arch: "x86_64".into(),
        threads: 2,
        device: "cpu".into(),
        cpu_features: vec![],
        ledger_version: "0.2.0".into(),
    }
}

/// A ledger holding every kind of event, in 11 frames.
fn every_kind(dir: &Path) {
    Ledger::init(dir).unwrap();
    let mut l = Ledger::open_writer(dir, Wait::Block).unwrap();
    let put = |l: &Ledger, b: &[u8]| l.store().put_bytes(b).unwrap();
    let (src, src_size) = put(&l, b"source\n");
    let (config, _) = put(&l, b"[experiment]\n");
    let (out, out_size) = put(&l, b"output\n");
    let (resp, resp_size) = put(&l, b"response\n");
    let (gone, gone_size) = put(&l, b"collected\n");
    let run = Hash::of(b"run");
    let file = |hash, size| {
        EventKind::ArtifactAdded(ArtifactAdded {
            hash,
            size,
            media_type: "text/plain".into(),
            origin: Origin::File { path: "f".into() },
        })
    };
    let step = EventKind::StageRun(StageRun {
        run_id: run,
        node: "n".into(),
        stage: "s".into(),
        version: 1,
        action_key: Hash::of(b"key"),
        config: "{}".into(),
        seed: 1,
        inputs: vec![("in".into(), src)],
        outputs: vec![Output {
            name: "out".into(),
            hash: out,
            size: out_size,
            media_type: "text/plain".into(),
        }],
        metrics: vec![("m".into(), 0.5)],
        env: env(),
        status: RunStatus::Succeeded,
        started_ms: 1,
        ended_ms: 2,
    });
    l.append(vec![
        file(src, src_size),
        EventKind::RunStarted(RunStarted {
            run_id: run,
            experiment: "e".into(),
            config,
            config_path: "e.toml".into(),
        }),
        EventKind::Observation(Observation {
            source: "http".into(),
            request: Hash::of(b"request"),
            response: resp,
            response_size: resp_size,
        }),
        step.clone(),
        EventKind::Tag(Tag {
            name: "t".into(),
            target: out,
        }),
        file(gone, gone_size),
        EventKind::Collected(Collected { hashes: vec![gone] }),
        EventKind::Imported(Imported {
            bundle: Hash::of(b"bundle"),
            root: out,
            path: "b".into(),
            events: 1,
            appended: 1,
            blobs: 0,
            blobs_added: 0,
            trusted: false,
        }),
        EventKind::Foreign(Foreign {
            bundle: Hash::of(b"bundle"),
            trusted: false,
            event: Box::new(file(src, src_size)),
        }),
    ])
    .unwrap();
    l.append(vec![EventKind::Tag(Tag {
        name: "u".into(),
        target: src,
    })])
    .unwrap();
    l.append(vec![step]).unwrap();
    std::fs::remove_file(l.store().path(&gone)).unwrap();
}

fn frames(log: &[u8]) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut off = 8;
    while off + 4 <= log.len() {
        let len = u32::from_le_bytes(log[off..off + 4].try_into().unwrap()) as usize;
        out.push((off, len));
        off += 4 + len + 32;
    }
    assert_eq!(off, log.len(), "a clean log frames exactly");
    out
}

#[test]
fn every_flipped_byte_is_named_by_verify_and_no_writer_shortens_the_log() {
    let tmp = tempfile::tempdir().unwrap();
    let pristine = tmp.path().join("pristine");
    every_kind(&pristine);
    {
        let l = Ledger::open(&pristine).unwrap();
        assert!(verify(&l, &ProgressBar::hidden()).unwrap().clean());
    }
    let log = std::fs::read(pristine.join("events.log")).unwrap();
    let frames = frames(&log);
    assert_eq!(frames.len(), 11);
    // One bit of every byte, and every bit of every length field.
    let mut flips: Vec<(usize, u8)> = (0..log.len()).map(|i| (i, 1u8 << (i % 8))).collect();
    for (off, _) in &frames {
        for byte in *off..*off + 4 {
            for bit in 0..8 {
                if byte % 8 != bit {
                    flips.push((byte, 1 << bit));
                }
            }
        }
    }

    let work = tmp.path().join("work");
    copy_dir(&pristine, &work);
    let log_path = work.join("events.log");
    let mut named = 0;
    for (at, mask) in &flips {
        let mut bytes = log.clone();
        bytes[*at] ^= mask;
        std::fs::write(&log_path, &bytes).unwrap();
        let what = format!("byte {at} ^ {mask:#04x}");

        // `verify` names the damage (a damaged header is refused, naming it, on opening).
        match Ledger::open_private(&work) {
            Ok(l) => {
                let report = verify(&l, &ProgressBar::hidden()).unwrap();
                assert!(!report.clean(), "{what}: verify says clean");
                named += 1;
            }
            Err(e) => {
                assert!(*at < 8, "{what}: opening failed: {e}");
                assert!(e.to_string().contains("header"), "{what}: {e}");
                named += 1;
            }
        }
        // No writer builds on it, and none changes a byte of it.
        let opened = Ledger::open_writer(&work, Wait::NoWait);
        assert!(opened.is_err(), "{what}: a writer opened on a damaged log");
        drop(opened);
        assert!(
            Ledger::reindex(&work, Wait::NoWait).is_err(),
            "{what}: reindex accepted a damaged log"
        );
        assert!(
            std::fs::read(&log_path).unwrap() == bytes,
            "{what}: the log was changed"
        );
    }
    println!(
        "{} flips of {} bytes: damage named {named} times",
        flips.len(),
        log.len()
    );
    assert_eq!(named, flips.len());
}

fn copy_dir(from: &Path, to: &Path) {
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
