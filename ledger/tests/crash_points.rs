//! Deterministic crash points through every write path of the ledger: `init`, `add`, `run`,
//! `import`, `gc`, `reindex` and `tag`.
//!
//! Each path is first run through a counting fault plan (`storage::CrashAt`) to learn how many
//! operations it sends through the storage seam. Then, for every one of them, the path runs on a
//! fresh copy of the same ledger with a plan that crashes there — the operation fails (a write is
//! torn in half in a second pass), and so does every later one, as if the process had been
//! killed at that instant. After each crash the test checks what a user relies on:
//! - the ledger opens, and `verify` is clean (a torn tail is only a warning);
//! - nothing committed before is lost: the log still starts with every event it had, every blob
//!   it had is stored and intact, and the index answers every question as a fresh one does (a
//!   crash in `reindex` included);
//! - the same operation, run again without faults, succeeds, and `verify` is clean after it.
//!
//! The total number of crash points exercised is printed (`--no-capture` shows it).

use indicatif::ProgressBar;
use ledger::config::{parse_params, Experiment, ParamError};
use ledger::event::{EventKind, Tag};
use ledger::runner::{run, RunOptions};
use ledger::stage::{ExternalInput, ExternalSource, InputSpec, Registry, Stage, StageContext};
use ledger::storage::{CrashAt, Storage};
use ledger::verify::verify;
use ledger::{Hash, Ledger, Wait};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Reads a file (an external input), observes one external request about it, and writes two
/// outputs: the text upper-cased and its length as recorded by the "service".
struct Shout;

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ShoutParams {
    path: String,
    #[serde(default)]
    salt: u32,
}

impl Stage for Shout {
    fn name(&self) -> &'static str {
        "shout"
    }
    fn version(&self) -> u32 {
        1
    }
    fn description(&self) -> &'static str {
        "upper-cases a file"
    }
    fn inputs(&self) -> &'static [InputSpec] {
        &[]
    }
    fn outputs(&self) -> &'static [&'static str] {
        &["upper", "length"]
    }
    fn check(&self, params: toml::Table) -> Result<serde_json::Value, ParamError> {
        let p: ShoutParams = parse_params(params)?;
        Ok(serde_json::to_value(p).unwrap())
    }
    fn external_inputs(
        &self,
        config: &serde_json::Value,
        base_dir: &Path,
    ) -> anyhow::Result<Vec<ExternalInput>> {
        let p: ShoutParams = serde_json::from_value(config.clone())?;
        Ok(vec![ExternalInput {
            name: "file".into(),
            source: ExternalSource::File(base_dir.join(p.path)),
        }])
    }
    fn execute(&self, ctx: &mut StageContext) -> anyhow::Result<()> {
        let p: ShoutParams = ctx.params()?;
        let text = String::from_utf8(ctx.read_input("file")?)?;
        let request = format!("length of {} with salt {}", text.len(), p.salt);
        let length = ctx.observe("counter", request.as_bytes(), || {
            Ok(format!("{}\n", text.len() + p.salt as usize).into_bytes())
        })?;
        ctx.write_output("upper", "text/plain", text.to_uppercase().as_bytes())?;
        ctx.write_output("length", "text/plain", &length)?;
        Ok(())
    }
}

fn registry() -> Registry {
    let mut r = Registry::new();
    r.register(Box::new(Shout));
    r
}

fn config(dir: &Path, salt: u32) -> Experiment {
    let path = dir.join(format!("exp{salt}.toml"));
    let source = format!(
        "[experiment]\nname = \"crash\"\n\n[[stage]]\nid = \"loud\"\nuses = \"shout\"\npath = \"words.txt\"\nsalt = {salt}\n"
    );
    std::fs::write(&path, &source).unwrap();
    Experiment::parse(&path, source, &registry()).unwrap()
}

/// Everything the index answers about a ledger, keyed by question (seqs included).
fn answers(dir: &Path) -> BTreeMap<String, String> {
    let l = Ledger::open(dir).unwrap();
    let mut out = BTreeMap::new();
    for frame in l.scan().unwrap() {
        let ledger::log::Frame::Good(s) = frame.unwrap() else {
            continue;
        };
        for h in s.event.artifacts() {
            out.insert(
                format!("introducer {h}"),
                format!("{:?}", l.index().introducer(&h).unwrap()),
            );
            out.insert(
                format!("consumers {h}"),
                format!("{:?}", l.index().consumers(&h).unwrap()),
            );
            out.insert(
                format!("collected {h}"),
                format!("{:?}", l.index().is_collected(&h).unwrap()),
            );
        }
        match s.event.kind.claim().0 {
            EventKind::StageRun(r) => {
                out.insert(
                    format!("action {}", r.action_key),
                    format!("{:?}", l.index().action(&r.action_key).unwrap()),
                );
                out.insert(
                    format!("run {}", r.run_id),
                    format!("{:?}", l.index().run_events(&r.run_id).unwrap()),
                );
            }
            EventKind::Observation(o) => {
                out.insert(
                    format!("observation {}", o.request),
                    format!(
                        "{:?} {:?}",
                        l.index().observation(&o.request).unwrap(),
                        l.index().foreign_observation(&o.request).unwrap()
                    ),
                );
            }
            _ => {}
        }
    }
    out.insert("tags".into(), format!("{:?}", l.index().tags().unwrap()));
    out.insert("events".into(), l.event_count().to_string());
    out
}

/// What the ledger knows, without positions: the artifacts it records, the actions it can
/// answer from its cache, the requests it has answers for, its tags.
fn facts(dir: &Path) -> BTreeMap<String, bool> {
    answers(dir)
        .into_iter()
        .filter_map(|(question, answer)| {
            let known = answer != "None" && answer != "None None" && answer != "false";
            match question.split_once(' ') {
                Some(("introducer" | "action" | "observation" | "collected", _)) => {
                    Some((question, known))
                }
                _ if question == "tags" => Some((answer, true)),
                _ => None,
            }
        })
        .collect()
}

/// The answers of an index built from scratch from the same log.
fn fresh_answers(dir: &Path, scratch: &Path) -> BTreeMap<String, String> {
    copy_dir(dir, scratch);
    std::fs::remove_dir_all(scratch.join("index")).unwrap();
    let answers = answers(scratch);
    std::fs::remove_dir_all(scratch).unwrap();
    answers
}

/// The ids of the log's events, in order.
fn event_ids(dir: &Path) -> Vec<Hash> {
    let l = Ledger::open(dir).unwrap();
    l.scan()
        .unwrap()
        .filter_map(|f| match f.unwrap() {
            ledger::log::Frame::Good(s) => Some(s.id),
            _ => None,
        })
        .collect()
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

#[track_caller]
fn assert_clean(dir: &Path, when: &str) {
    let l = Ledger::open(dir).unwrap_or_else(|e| panic!("{when}: the ledger does not open: {e}"));
    let report = verify(&l, &ProgressBar::hidden()).unwrap();
    assert!(
        report.clean(),
        "{when}: verify found {:#?} (warnings {:#?})",
        report.problems,
        report.warnings
    );
}

/// A write path: runs against the ledger at `dir` with `storage`.
type Path_ = fn(&Fixture, &Path, Storage) -> ledger::Result<()>;

struct Fixture {
    /// A ledger with files, a run (outputs and an observation), a tag and an unused file.
    base: PathBuf,
    /// A bundle exported from another ledger (a run of its own).
    bundle: PathBuf,
    /// Files to add.
    files: Vec<PathBuf>,
    _tmp: tempfile::TempDir,
}

fn fixture() -> Fixture {
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path().join("base");
    Ledger::init(&base).unwrap();
    std::fs::write(base.join("words.txt"), "some words\n").unwrap();
    let mut l = Ledger::open_writer(&base, Wait::Block).unwrap();
    let (unused, _) = l
        .add(
            &mut &b"a file no run uses\n"[..],
            "unused",
            "text/plain",
            origin(),
        )
        .unwrap();
    let report = run(&mut l, &registry(), &config(&base, 0), &options()).unwrap();
    let upper = Hash::from_hex(&report.steps[0].outputs[1].1).unwrap();
    l.append_one(EventKind::Tag(Tag {
        name: "loud".into(),
        target: upper,
    }))
    .unwrap();
    let _ = unused;
    drop(l);

    // Another ledger's run, as a bundle.
    let other = tmp.path().join("other");
    Ledger::init(&other).unwrap();
    std::fs::write(other.join("words.txt"), "other words entirely\n").unwrap();
    let mut o = Ledger::open_writer(&other, Wait::Block).unwrap();
    let report = run(&mut o, &registry(), &config(&other, 5), &options()).unwrap();
    let root = Hash::from_hex(&report.steps[0].outputs[1].1).unwrap();
    let bundle = tmp.path().join("other.bundle");
    ledger::bundle::export(&o, &root, &bundle).unwrap();
    drop(o);

    let mut files = Vec::new();
    for (i, size) in [10usize, 3 << 20, 100].into_iter().enumerate() {
        let path = tmp.path().join(format!("file{i}.bin"));
        let bytes: Vec<u8> = (0..size).map(|j| (j * 7 + i) as u8).collect();
        std::fs::write(&path, bytes).unwrap();
        files.push(path);
    }
    Fixture {
        base,
        bundle,
        files,
        _tmp: tmp,
    }
}

fn origin() -> ledger::event::Origin {
    ledger::event::Origin::File {
        path: "test".into(),
    }
}

fn options() -> RunOptions {
    RunOptions {
        progress: false,
        ..Default::default()
    }
}

fn do_init(_: &Fixture, dir: &Path, storage: Storage) -> ledger::Result<()> {
    // `init` makes a new ledger: the copy of the base is not used.
    let fresh = dir.join("fresh");
    Ledger::init_with(&fresh, &storage)
}

fn do_add(f: &Fixture, dir: &Path, storage: Storage) -> ledger::Result<()> {
    let mut l = Ledger::open_writer_with(dir, Wait::NoWait, storage)?;
    for file in &f.files {
        l.add_file(file)?;
    }
    Ok(())
}

fn do_run(_: &Fixture, dir: &Path, storage: Storage) -> ledger::Result<()> {
    let mut l = Ledger::open_writer_with(dir, Wait::NoWait, storage)?;
    run(&mut l, &registry(), &config(dir, 1), &options()).map(|_| ())
}

fn do_import(f: &Fixture, dir: &Path, storage: Storage) -> ledger::Result<()> {
    let mut l = Ledger::open_writer_with(dir, Wait::NoWait, storage)?;
    ledger::bundle::import(&mut l, &f.bundle, Default::default()).map(|_| ())
}

fn do_gc(_: &Fixture, dir: &Path, storage: Storage) -> ledger::Result<()> {
    let mut l = Ledger::open_writer_with(dir, Wait::NoWait, storage)?;
    // A leftover of an interrupted import, for gc to clean.
    let staging = dir.join("tmp/import-leftover/objects");
    std::fs::create_dir_all(&staging).unwrap();
    std::fs::write(staging.join("x"), b"staged").unwrap();
    ledger::gc::gc(&mut l, false).map(|_| ())
}

fn do_reindex(_: &Fixture, dir: &Path, storage: Storage) -> ledger::Result<()> {
    Ledger::reindex_with(dir, Wait::NoWait, storage).map(|_| ())
}

fn do_tag(_: &Fixture, dir: &Path, storage: Storage) -> ledger::Result<()> {
    let mut l = Ledger::open_writer_with(dir, Wait::NoWait, storage)?;
    let target = l.resolve("loud")?;
    l.append(vec![
        EventKind::Tag(Tag {
            name: "again".into(),
            target,
        }),
        EventKind::Tag(Tag {
            name: "loud".into(),
            target,
        }),
    ])
    .map(|_| ())
}

/// Where the path leaves its result: the ledger itself, except for `init`.
fn target(name: &str, dir: &Path) -> PathBuf {
    if name == "init" {
        dir.join("fresh")
    } else {
        dir.to_path_buf()
    }
}

#[test]
fn every_crash_point_of_every_write_path_leaves_a_ledger_that_opens_verifies_and_loses_nothing() {
    let f = fixture();
    let base_ids = event_ids(&f.base);
    let base_answers = answers(&f.base);
    let base_blobs = ledger::store::BlobStore::new(&f.base).list().unwrap();
    let paths: [(&str, Path_); 7] = [
        ("init", do_init),
        ("add", do_add),
        ("run", do_run),
        ("import", do_import),
        ("gc", do_gc),
        ("reindex", do_reindex),
        ("tag", do_tag),
    ];
    let work = tempfile::tempdir().unwrap();
    let mut exercised: BTreeMap<&str, u64> = BTreeMap::new();
    let mut case = 0u64;
    for (name, path) in paths {
        // How many operations does the path send through the seam?
        let count_dir = work.path().join(format!("count-{name}"));
        copy_dir(&f.base, &count_dir);
        let counter = CrashAt::new(None, false);
        path(&f, &count_dir, Storage::with_faults(counter.clone()))
            .unwrap_or_else(|e| panic!("{name} without faults: {e}"));
        let ops = counter.seen();
        assert!(ops > 0, "{name} sent nothing through the storage seam");
        let expected_after = facts(&target(name, &count_dir));

        for tear in [false, true] {
            for k in 0..ops {
                case += 1;
                let dir = work.path().join(format!("case-{case}"));
                copy_dir(&f.base, &dir);
                let plan = CrashAt::new(Some(k), tear);
                let outcome = path(&f, &dir, Storage::with_faults(plan.clone()));
                let at = plan.crashed_at().unwrap_or_else(|| "nothing".into());
                let when = format!("{name}, crash at operation {k} of {ops} ({at}, torn: {tear})");
                let ledger_dir = target(name, &dir);
                let opened = Ledger::open(&ledger_dir);
                if name == "init" && opened.is_err() {
                    // No log yet: nothing was committed, and `init` may simply run again.
                    assert!(
                        !ledger_dir.join("events.log").exists() || outcome.is_err(),
                        "{when}"
                    );
                } else {
                    drop(opened.unwrap_or_else(|e| panic!("{when}: does not open: {e}")));
                    assert_clean(&ledger_dir, &when);
                    if name != "init" {
                        // Nothing committed is lost: the log keeps its prefix, the blobs their
                        // bytes (except what gc had recorded as collected), the index its answers.
                        let ids = event_ids(&dir);
                        assert!(
                            ids.len() >= base_ids.len() && ids[..base_ids.len()] == base_ids[..],
                            "{when}: the log lost committed events"
                        );
                        let store = ledger::store::BlobStore::new(&dir);
                        let l = Ledger::open(&dir).unwrap();
                        for blob in &base_blobs {
                            if name == "gc" && l.index().is_collected(blob).unwrap() {
                                continue;
                            }
                            store
                                .read(blob)
                                .unwrap_or_else(|e| panic!("{when}: blob {blob}: {e}"));
                        }
                        drop(l);
                        // The persistent index, as the crash left it, answers like a fresh one.
                        let now = answers(&dir);
                        let fresh = fresh_answers(&dir, &work.path().join("fresh-index"));
                        assert_eq!(now, fresh, "{when}: the index answers unlike a rebuilt one");
                        for (question, answer) in &base_answers {
                            if question != "events" && !question.starts_with("collected") {
                                assert!(
                                    now.contains_key(question),
                                    "{when}: lost {question} = {answer}"
                                );
                            }
                        }
                    }
                }
                if outcome.is_ok() && name != "init" {
                    assert_eq!(facts(&ledger_dir), expected_after, "{when}: reported done");
                }
                // The next attempt, without faults, succeeds (an `init` whose log appeared has
                // made the ledger: running it again says so).
                let again = path(&f, &dir, Storage::disk());
                match again {
                    Err(e)
                        if name == "init"
                            && outcome.is_err()
                            && ledger_dir.join("events.log").exists() =>
                    {
                        assert!(e.to_string().contains("already a ledger"), "{when}: {e}");
                    }
                    other => {
                        other.unwrap_or_else(|e| panic!("{when}: running it again failed: {e}"))
                    }
                }
                assert_clean(&ledger_dir, &format!("{when}, then again"));
                assert_eq!(
                    facts(&ledger_dir),
                    expected_after,
                    "{when}, then again: not what an uninterrupted run leaves"
                );
                *exercised.entry(name).or_default() += 1;
                std::fs::remove_dir_all(&dir).unwrap();
            }
        }
    }
    let total: u64 = exercised.values().sum();
    println!("crash points exercised: {total} ({exercised:?})");
    assert!(total >= 7 * 4, "{exercised:?}");
}
