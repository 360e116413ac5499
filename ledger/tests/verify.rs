//! `verify` checks the index against the log without building a second index: these tests
//! pin that the log-implied index matches what indexing writes for every kind of event
//! (first-wins, latest-wins, gc and re-introduction, repeated inputs), and that damage to any
//! tree of the persistent index, or to its location table, is reported, naming it, until
//! `reindex` repairs it.

use indicatif::ProgressBar;
use ledger::event::*;
use ledger::verify::{verify, VerifyReport};
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
        ledger_version: "0.1.0".into(),
    }
}

fn stage_run(
    run_id: Hash,
    key: &[u8],
    inputs: &[Hash],
    outputs: &[(Hash, u64)],
    status: RunStatus,
) -> EventKind {
    EventKind::StageRun(StageRun {
        run_id,
        node: "node".into(),
        stage: "stage".into(),
        version: 1,
        action_key: Hash::of(key),
        config: "{}".into(),
        seed: 7,
        inputs: inputs
            .iter()
            .enumerate()
            .map(|(i, h)| (format!("in{i}"), *h))
            .collect(),
        outputs: outputs
            .iter()
            .enumerate()
            .map(|(i, (hash, size))| Output {
                name: format!("out{i}"),
                hash: *hash,
                size: *size,
                media_type: "text/plain".into(),
            })
            .collect(),
        metrics: vec![("m".into(), 1.0)],
        env: env(),
        status,
        started_ms: 1,
        ended_ms: 2,
    })
}

/// A ledger holding every kind of event, including the cases where index entries are kept,
/// replaced or removed by later events.
fn every_kind_of_event(dir: &Path) {
    Ledger::init(dir).unwrap();
    let mut l = Ledger::open_writer(dir, Wait::Block).unwrap();
    let put = |l: &Ledger, bytes: &[u8]| l.store().put_bytes(bytes).unwrap();
    let (src, src_size) = put(&l, b"source\n");
    let (config, config_size) = put(&l, b"[experiment]\n");
    let (out_a, size_a) = put(&l, b"output a\n");
    let (out_b, size_b) = put(&l, b"output b\n");
    let (resp, resp_size) = put(&l, b"response\n");
    let (junk, junk_size) = put(&l, b"collected, then made again\n");
    let run = Hash::of(b"run 1");
    l.append(vec![
        EventKind::ArtifactAdded(ArtifactAdded {
            hash: src,
            size: src_size,
            media_type: "text/plain".into(),
            origin: Origin::File {
                path: "src.txt".into(),
            },
        }),
        EventKind::ArtifactAdded(ArtifactAdded {
            hash: config,
            size: config_size,
            media_type: "application/toml".into(),
            origin: Origin::Config {
                path: "x.toml".into(),
            },
        }),
        EventKind::RunStarted(RunStarted {
            run_id: run,
            experiment: "x".into(),
            config,
            config_path: "x.toml".into(),
        }),
        // Two responses to one request: the first is the one recorded.
        EventKind::Observation(Observation {
            source: "llm".into(),
            request: Hash::of(b"request"),
            response: resp,
            response_size: resp_size,
        }),
        EventKind::Observation(Observation {
            source: "llm".into(),
            request: Hash::of(b"request"),
            response: src,
            response_size: src_size,
        }),
        // The same input named twice; outputs introduced; the action recorded.
        stage_run(
            run,
            b"a",
            &[src, src],
            &[(out_a, size_a), (junk, junk_size)],
            RunStatus::Succeeded,
        ),
        stage_run(
            run,
            b"b",
            &[out_a],
            &[],
            RunStatus::Failed { error: "x".into() },
        ),
        stage_run(
            run,
            b"a",
            &[src, src],
            &[(out_a, size_a), (junk, junk_size)],
            RunStatus::Cached { source_seq: 5 },
        ),
        EventKind::Tag(Tag {
            name: "best".into(),
            target: out_a,
        }),
    ])
    .unwrap();
    // gc removes `junk`; a later step makes it again; a newer run replaces the action.
    l.append_one(EventKind::Collected(Collected { hashes: vec![junk] }))
        .unwrap();
    l.store().remove(&junk).unwrap();
    put(&l, b"collected, then made again\n");
    let run2 = Hash::of(b"run 2");
    l.append(vec![
        EventKind::RunStarted(RunStarted {
            run_id: run2,
            experiment: "x".into(),
            config,
            config_path: "x.toml".into(),
        }),
        stage_run(
            run2,
            b"a",
            &[src],
            &[(out_b, size_b), (junk, junk_size)],
            RunStatus::Succeeded,
        ),
        // Re-pointed tag: the latest wins.
        EventKind::Tag(Tag {
            name: "best".into(),
            target: out_b,
        }),
    ])
    .unwrap();
    // Collected for good.
    l.append_one(EventKind::Collected(Collected { hashes: vec![resp] }))
        .unwrap();
    l.store().remove(&resp).unwrap();
}

fn verify_dir(dir: &Path) -> VerifyReport {
    let l = Ledger::open(dir).unwrap();
    verify(&l, &ProgressBar::hidden()).unwrap()
}

fn index_problems(report: &VerifyReport) -> Vec<String> {
    report
        .problems
        .iter()
        .map(|p| {
            assert_eq!(p.kind, "index", "{p:?}");
            p.subject.clone()
        })
        .collect()
}

#[test]
fn the_index_every_kind_of_event_implies_verifies_clean() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("l");
    every_kind_of_event(&dir);
    let report = verify_dir(&dir);
    assert!(report.clean(), "{:?}", report.problems);
    assert_eq!(report.events, 14);
    assert!(report.warnings.is_empty(), "{:?}", report.warnings);
    // And so does a rebuilt one.
    Ledger::reindex(&dir, Wait::Block).unwrap();
    assert!(verify_dir(&dir).clean());
}

/// Edits one tree of the persistent index directly, as damage would.
fn damage(dir: &Path, edit: impl FnOnce(&sled::Db)) {
    let db = sled::open(dir.join("index")).unwrap();
    edit(&db);
    db.flush().unwrap();
}

#[test]
fn damage_to_any_index_tree_is_named_until_reindex() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("l");
    every_kind_of_event(&dir);

    type Edit = Box<dyn Fn(&sled::Db)>;
    let cases: Vec<(&str, Edit)> = vec![
        // A changed value: the artifact now seems introduced by another event.
        (
            "artifacts",
            Box::new(|db| {
                let t = db.open_tree("artifacts").unwrap();
                let (k, _) = t.iter().next().unwrap().unwrap();
                t.insert(k, &9u64.to_be_bytes()).unwrap();
            }),
        ),
        // An entry the log never implied.
        (
            "consumers",
            Box::new(|db| {
                let mut k = Hash::of(b"nobody").0.to_vec();
                k.extend_from_slice(&5u64.to_be_bytes());
                db.open_tree("consumers").unwrap().insert(k, &[]).unwrap();
            }),
        ),
        (
            "tags",
            Box::new(|db| {
                let t = db.open_tree("tags").unwrap();
                t.insert("best", Hash::of(b"elsewhere").as_bytes()).unwrap();
            }),
        ),
        (
            "observations",
            Box::new(|db| {
                db.open_tree("observations").unwrap().clear().unwrap();
            }),
        ),
        (
            "collected",
            Box::new(|db| {
                let t = db.open_tree("collected").unwrap();
                let (k, _) = t.iter().next().unwrap().unwrap();
                t.remove(k).unwrap();
            }),
        ),
        (
            "actions",
            Box::new(|db| {
                let t = db.open_tree("actions").unwrap();
                t.insert(Hash::of(b"a").as_bytes(), &5u64.to_be_bytes())
                    .unwrap();
            }),
        ),
        (
            "runs",
            Box::new(|db| {
                let t = db.open_tree("runs").unwrap();
                let (k, _) = t.iter().next_back().unwrap().unwrap();
                t.remove(k).unwrap();
            }),
        ),
    ];
    for (tree, edit) in cases {
        damage(&dir, edit);
        let report = verify_dir(&dir);
        assert_eq!(
            index_problems(&report),
            [format!("index tree `{tree}`")],
            "damage to `{tree}` is reported, and only there"
        );
        let detail = &report.problems[0].detail;
        assert!(detail.contains("`ledger reindex` rebuilds it"), "{detail}");
        Ledger::reindex(&dir, Wait::Block).unwrap();
        let report = verify_dir(&dir);
        assert!(report.clean(), "after reindex: {:?}", report.problems);
    }

    // The location table (a flat file beside sled's trees): event #3 now claims another id.
    let table = dir.join("index").join("locations");
    let mut bytes = std::fs::read(&table).unwrap();
    assert_eq!(bytes.len(), 8 + 14 * 48, "one 48-byte record per event");
    bytes[8 + 3 * 48 + 16] ^= 1;
    std::fs::write(&table, &bytes).unwrap();
    let report = verify_dir(&dir);
    assert_eq!(index_problems(&report), ["index table `locations`"]);
    let detail = &report.problems[0].detail;
    assert!(
        detail.contains("1 of its 14 records differ from the log (the first: event #3)"),
        "{detail}"
    );
    Ledger::reindex(&dir, Wait::Block).unwrap();
    assert!(verify_dir(&dir).clean());
}

/// The location table is not synced with sled: after a crash it may hold fewer events than
/// sled's tail says, or more. Either way the next open resumes indexing where both agree.
#[test]
fn a_location_table_out_of_step_with_sled_is_caught_up() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("l");
    every_kind_of_event(&dir);
    let table = dir.join("index").join("locations");
    let full = std::fs::read(&table).unwrap();

    // Behind: the last 5 records were lost.
    std::fs::write(&table, &full[..full.len() - 5 * 48]).unwrap();
    {
        let l = Ledger::open(&dir).unwrap();
        assert_eq!(l.event_count(), 14);
        assert_eq!(l.event(13).unwrap().event.seq, 13);
    }
    assert_eq!(std::fs::read(&table).unwrap(), full, "rebuilt as it was");
    assert!(verify_dir(&dir).clean());

    // Gone altogether (or from an older version that kept it in sled).
    std::fs::remove_file(&table).unwrap();
    let mut l = Ledger::open_writer(&dir, Wait::Block).unwrap();
    assert_eq!(std::fs::read(&table).unwrap(), full);
    // Ahead: records past sled's tail (written just before a crash) are dropped on open, and
    // the writer goes on from the tail.
    l.append_one(EventKind::Tag(Tag {
        name: "later".into(),
        target: Hash::of(b"x"),
    }))
    .unwrap();
    drop(l);
    assert!(verify_dir(&dir).clean());
    let mut ahead = std::fs::read(&table).unwrap();
    assert_eq!(ahead.len(), full.len() + 48);
    ahead.extend_from_slice(&[7; 48]);
    std::fs::write(&table, &ahead).unwrap();
    let l = Ledger::open(&dir).unwrap();
    assert_eq!(l.event_count(), 15);
    drop(l);
    assert_eq!(std::fs::read(&table).unwrap().len(), full.len() + 48);
    assert!(verify_dir(&dir).clean());
}

/// Indexes from before the location table kept it as the sled tree `events`: opening one
/// drops that tree and rebuilds the table from the log.
#[test]
fn an_index_with_the_old_events_tree_is_migrated() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("l");
    every_kind_of_event(&dir);
    std::fs::remove_file(dir.join("index").join("locations")).unwrap();
    damage(&dir, |db| {
        let t = db.open_tree("events").unwrap();
        t.insert(0u64.to_be_bytes(), &[0u8; 40][..]).unwrap();
    });
    let l = Ledger::open(&dir).unwrap();
    assert_eq!(l.event_count(), 14);
    drop(l);
    let db = sled::open(dir.join("index")).unwrap();
    assert!(!db.tree_names().iter().any(|n| n == b"events"));
    drop(db);
    assert!(verify_dir(&dir).clean());
}

/// Every question the index answers, about every address the log names.
fn index_answers(l: &Ledger) -> Vec<String> {
    let index = l.index();
    let mut hashes = Vec::new();
    for frame in l.scan().unwrap() {
        let ledger::log::Frame::Good(s) = frame.unwrap() else {
            panic!("a clean log")
        };
        hashes.extend(s.event.artifacts());
        match &s.event.kind {
            EventKind::RunStarted(r) => hashes.push(r.run_id),
            EventKind::StageRun(r) => hashes.extend([r.run_id, r.action_key]),
            EventKind::Observation(o) => hashes.push(o.request),
            _ => {}
        }
    }
    let mut answers = vec![
        format!("{:?}", index.tail().unwrap()),
        format!("{}", index.event_count()),
        format!("{:?}", index.tags().unwrap()),
        format!("{:?}", index.tag("best").unwrap()),
        format!("{:?}", index.tag("none").unwrap()),
        format!("{:?}", index.match_prefix("").unwrap().len()),
    ];
    for h in hashes {
        answers.push(format!(
            "{h:?}: {:?} {:?} {:?} {:?} {:?} {:?} {:?} {:?} {:?}",
            index.introducer(&h).unwrap(),
            index.is_collected(&h).unwrap(),
            index.consumers(&h).unwrap(),
            index.run_events(&h).unwrap(),
            index.is_run(&h).unwrap(),
            index.observation(&h).unwrap(),
            index.action(&h).unwrap(),
            index.match_prefix(&h.to_hex()[..9]).unwrap(),
            index.match_prefix(&h.to_hex()[..3]).unwrap(),
        ));
    }
    answers
}

/// While a writer holds sled, readers answer from a private in-memory index built from the
/// log: it must answer exactly as the persistent one does.
#[test]
fn a_private_index_answers_like_the_persistent_one() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("l");
    every_kind_of_event(&dir);
    let persistent = index_answers(&Ledger::open(&dir).unwrap());
    // sled releases its file lock when its background flusher, which may outlive the handle by
    // a moment, stops: retry for a while instead of racing it.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let held = loop {
        match sled::open(dir.join("index")) {
            Ok(db) => break db,
            Err(e) if std::time::Instant::now() < deadline => {
                let _ = e;
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            Err(e) => panic!("the index stayed locked: {e}"),
        }
    };
    assert!(matches!(
        ledger::index::Index::open(&dir.join("index"), &ledger::storage::Storage::disk()).unwrap(),
        ledger::index::OpenIndex::Busy
    ));
    let private = Ledger::open(&dir).unwrap();
    assert!(private.index_problem().is_none());
    assert_eq!(index_answers(&private), persistent);
    // verify checks the log and blobs, and says the index was not checked.
    let report = verify(&private, &ProgressBar::hidden()).unwrap();
    assert!(report.clean(), "{:?}", report.problems);
    assert!(
        report
            .warnings
            .iter()
            .any(|w| w.contains("in use by a writer")),
        "{:?}",
        report.warnings
    );
    drop(held);
}

/// What an interrupted rebuild leaves when sled persisted only part of the clearing: the
/// tail record still says complete, but some trees are already empty. The marker written (and
/// flushed) before clearing makes the next open rebuild instead of trusting it.
#[test]
fn an_index_whose_rebuild_was_interrupted_is_rebuilt_not_trusted() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("l");
    every_kind_of_event(&dir);
    let before = {
        let l = Ledger::open(&dir).unwrap();
        index_answers(&l)
    };
    damage(&dir, |db| {
        db.open_tree("meta")
            .unwrap()
            .insert(b"clearing", &[])
            .unwrap();
        db.open_tree("artifacts").unwrap().clear().unwrap();
        db.open_tree("actions").unwrap().clear().unwrap();
    });
    let l = Ledger::open(&dir).unwrap();
    assert_eq!(
        index_answers(&l),
        before,
        "the half-cleared index was trusted"
    );
    let report = verify(&l, &ProgressBar::hidden()).unwrap();
    assert!(report.clean(), "{:?}", report.problems);
}
