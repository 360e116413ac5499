//! Damage on disk is found by `ledger verify`, named precisely, and propagated to everything
//! built from it; writers refuse to build on a truncated log.

mod common;

use common::{b3, flip_byte, ingest_pack_config, step_output, Ledger};
use std::collections::{BTreeMap, BTreeSet};

const A_TXT: &[u8] = b"alpha\nbeta\n";

/// A ledger holding the data set and one `ingest → pack` run; returns (fixture, manifest,
/// corpus).
fn ran() -> (Ledger, String, String) {
    let l = Ledger::init();
    l.data_set("data");
    let config = l.config("exp.toml", &ingest_pack_config("exp", "data", 1 << 20));
    let report = l.run_config(&config);
    let manifest = step_output(&report, "src", "files");
    let corpus = step_output(&report, "corpus", "corpus");
    (l, manifest, corpus)
}

/// `AFFECTED <hex>: built from damaged <short>` lines of a verify output.
fn affected(stdout: &str) -> BTreeMap<String, String> {
    stdout
        .lines()
        .filter_map(|l| l.strip_prefix("AFFECTED "))
        .map(|rest| {
            let (hash, root) = rest
                .split_once(": built from damaged ")
                .unwrap_or_else(|| panic!("malformed AFFECTED line: {rest}"));
            (hash.to_string(), root.to_string())
        })
        .collect()
}

#[test]
fn a_flipped_byte_in_an_ingested_blob_names_it_and_everything_built_from_it() {
    let (l, manifest, corpus) = ran();
    let file = b3(A_TXT);
    let path = l.blob_path(&file);
    assert_eq!(std::fs::read(&path).unwrap(), A_TXT);
    flip_byte(&path, 2);

    let out = l.run(["verify"]).expect_code(1);
    assert!(
        out.stdout
            .contains(&format!("PROBLEM blob: {file}: content hashes to")),
        "{out:?}"
    );
    assert!(out.stdout.contains("the bytes were altered"), "{out:?}");
    assert_eq!(out.stdout.matches("PROBLEM ").count(), 1, "{out:?}");
    let expected: BTreeMap<String, String> = [
        (manifest.clone(), file[..12].to_string()),
        (corpus.clone(), file[..12].to_string()),
    ]
    .into();
    assert_eq!(affected(&out.stdout), expected, "{out:?}");
    assert!(out.stdout.contains("1 problem(s)"), "{out:?}");

    let json = l.run(["verify", "--json"]).expect_code(1).json();
    let problems = json["report"]["problems"].as_array().unwrap();
    assert_eq!(problems.len(), 1, "{json}");
    assert_eq!(problems[0]["kind"], "blob");
    assert_eq!(problems[0]["subject"], file.as_str());
    assert_eq!(
        json["report"]["downstream"],
        serde_json::json!({ &manifest: file, &corpus: file })
    );

    // Rebuilding the corpus reads the altered bytes: it cannot come out bit-identical.
    let replay = l.run(["replay", &corpus]);
    assert!(
        replay.code == 3 || replay.code == 1,
        "replay of an output built from a damaged blob must fail:\n{replay:?}"
    );
    if replay.code == 3 {
        assert!(replay.stdout.contains("NOT reproducible"), "{replay:?}");
    }
}

#[test]
fn a_flipped_byte_in_an_intermediate_output_affects_only_its_consumers() {
    let (l, manifest, corpus) = ran();
    let path = l.blob_path(&manifest);
    let len = std::fs::metadata(&path).unwrap().len();
    flip_byte(&path, len / 2);

    let out = l.run(["verify"]).expect_code(1);
    assert!(
        out.stdout.contains(&format!("PROBLEM blob: {manifest}:")),
        "{out:?}"
    );
    let expected: BTreeMap<String, String> = [(corpus.clone(), manifest[..12].to_string())].into();
    assert_eq!(affected(&out.stdout), expected, "{out:?}");

    let replay = l.run(["replay", &corpus]);
    assert!(
        replay.code == 3 || replay.code == 1,
        "replay of an output built from a damaged blob must fail:\n{replay:?}"
    );
}

#[test]
fn a_missing_blob_is_a_problem_and_replay_restores_it() {
    let (l, manifest, corpus) = ran();
    std::fs::remove_file(l.blob_path(&manifest)).unwrap();

    let out = l.run(["verify"]).expect_code(1);
    assert!(
        out.stdout
            .contains(&format!("PROBLEM missing: {manifest}:")),
        "{out:?}"
    );
    let expected: BTreeMap<String, String> = [(corpus.clone(), manifest[..12].to_string())].into();
    assert_eq!(affected(&out.stdout), expected, "{out:?}");

    let replay = l.ok(["replay", &corpus]);
    assert!(
        replay.stdout.contains(&format!("restored {manifest}")),
        "{replay:?}"
    );
    assert!(
        replay.stdout.trim_end().ends_with("bit-identical"),
        "{replay:?}"
    );
    let v = l.ok(["verify"]);
    assert!(v.stdout.contains(": clean"), "{v:?}");
}

/// A ledger whose log has an ingested file's `artifact` event in the middle: 4 adds, a run
/// (config, run, 3 files, 2 stages), 4 adds. Returns (fixture, manifest, corpus).
fn busy_ledger() -> (Ledger, String, String) {
    let l = Ledger::init();
    for i in 0..4 {
        let f = l.write(&format!("before/{i}.txt"), format!("before {i}\n"));
        l.ok(["add".as_ref(), f.as_os_str()]);
    }
    l.data_set("data");
    let config = l.config("exp.toml", &ingest_pack_config("exp", "data", 1 << 20));
    let report = l.run_config(&config);
    for i in 0..4 {
        let f = l.write(&format!("after/{i}.txt"), format!("after {i}\n"));
        l.ok(["add".as_ref(), f.as_os_str()]);
    }
    (
        l,
        step_output(&report, "src", "files"),
        step_output(&report, "corpus", "corpus"),
    )
}

#[test]
fn a_flipped_byte_in_a_middle_event_is_a_log_problem_at_its_offset() {
    let (l, manifest, corpus) = busy_ledger();
    let events = l.events();
    assert_eq!(events.len(), 15);
    let frames = l.frames();
    assert_eq!(frames.len(), events.len(), "frames and events disagree");
    // The event that recorded data/a.txt.
    let seq = events
        .iter()
        .find(|e| e["detail"]["hash"] == b3(A_TXT).as_str())
        .unwrap()["seq"]
        .as_u64()
        .unwrap() as usize;
    assert!((4..11).contains(&seq), "not in the middle: #{seq}");
    let (offset, len) = frames[seq];
    flip_byte(&l.log_path(), offset + 4 + len / 2);

    let out = l.run(["verify"]).expect_code(1);
    let log = l.log_path().display().to_string();
    assert!(
        out.stdout.contains(&format!(
            "PROBLEM log: {log} byte {offset}: checksum mismatch"
        )),
        "{out:?}"
    );
    // The artifact it named cannot be trusted any more, nor anything built from it.
    let affected = affected(&out.stdout);
    assert!(affected.contains_key(&manifest), "{out:?}");
    assert!(affected.contains_key(&corpus), "{out:?}");

    let json = l.run(["verify", "--json"]).expect_code(1).json();
    let problems = json["report"]["problems"].as_array().unwrap();
    assert_eq!(problems[0]["kind"], "log", "{json}");
    assert_eq!(problems[0]["subject"], format!("{log} byte {offset}"));
}

#[test]
fn one_flipped_event_is_reported_once_and_its_intact_successor_is_not_blamed() {
    let (l, _, _) = busy_ledger();
    let frames = l.frames();
    // #6 records data/a.txt; #7 (data/b.md) follows it and is intact.
    let (offset, len) = frames[6];
    let (next, _) = frames[7];
    flip_byte(&l.log_path(), offset + 4 + len / 2);

    let json = l.run(["verify", "--json"]).expect_code(1).json();
    let problems = json["report"]["problems"].as_array().unwrap();
    let log_problems: Vec<&serde_json::Value> =
        problems.iter().filter(|p| p["kind"] == "log").collect();
    assert!(
        log_problems.iter().all(|p| !p["subject"]
            .as_str()
            .unwrap()
            .ends_with(&format!("byte {next}"))),
        "the intact event after the damaged one is reported as damaged too: {log_problems:#?}"
    );
    assert_eq!(
        log_problems.len(),
        1,
        "one flipped byte, one damaged event; got {log_problems:#?}"
    );
}

#[test]
fn readers_do_not_silently_hide_events_after_damage() {
    let (l, _, _) = busy_ledger();
    let frames = l.frames();
    let (offset, len) = frames[7];
    flip_byte(&l.log_path(), offset + 4 + len / 2);

    // `ledger log` cannot show what it cannot read, but it must say so.
    let out = l.run(["log"]);
    let shown = out.stdout.lines().count();
    assert!(
        out.code != 0 || out.stderr.contains("damaged"),
        "`ledger log` showed {shown} of 15 events, exit 0, with no word about the damage:\n{out:?}"
    );
}

#[test]
fn a_log_truncated_by_whole_events_is_detected_and_reindex_accepts_it() {
    let (l, manifest, corpus) = busy_ledger();
    let frames = l.frames();
    let total = frames.len();
    assert_eq!(total, 15);
    let keep = total - 3;
    let cut = frames[keep].0;
    let log = l.log_bytes();
    std::fs::write(l.log_path(), &log[..cut as usize]).unwrap();
    assert_eq!(l.frames().len(), keep);

    let out = l.run(["verify"]).expect_code(1);
    assert!(out.stdout.contains("PROBLEM index"), "{out:?}");
    assert!(out.stdout.contains("truncated"), "{out:?}");
    assert!(
        out.stdout.contains(&format!("knows {total} events")),
        "{out:?}"
    );

    // Writers refuse to build on it, and write nothing.
    let before = l.log_bytes();
    let f = l.write("new.txt", "new\n");
    let add = l.run(["add".as_ref(), f.as_os_str()]).expect_code(1);
    assert!(add.stderr.contains("truncated"), "{add:?}");
    assert!(
        add.stderr.contains("reindex"),
        "the message says the way out:\n{add:?}"
    );
    let tag = l.run(["tag", "t", &corpus]).expect_code(1);
    assert!(tag.stderr.contains("truncated"), "{tag:?}");
    assert!(l.log_bytes() == before, "a refused writer changed the log");

    // Readers still read what is there.
    let events = l.events();
    assert_eq!(events.len(), keep);
    l.ok(["show", &manifest]);

    // `reindex` accepts the log as it is.
    let re = l.run(["reindex"]);
    assert_eq!(
        re.code, 0,
        "`ledger reindex` must accept a truncated log (verify and the writer both say so):\n{re:?}"
    );
    assert_eq!(re.stdout.trim(), format!("reindexed {keep} events"));
    let v = l.ok(["verify"]);
    assert!(v.stdout.contains(": clean"), "{v:?}");
    assert!(v.stdout.starts_with(&format!("{keep} events")), "{v:?}");

    // And writers work again; the cut adds come back as new events.
    let out = l.ok(["add".as_ref(), f.as_os_str()]);
    assert_eq!(common::added_hashes(&out.stdout)[0].0, b3(b"new\n"));
    let again = l.ok(["add", "after/3.txt"]);
    assert_eq!(common::added_hashes(&again.stdout)[0].0, b3(b"after 3\n"));
    let hashes: BTreeSet<String> = l
        .events()
        .iter()
        .filter_map(|e| e["detail"]["hash"].as_str().map(str::to_string))
        .collect();
    assert!(hashes.contains(&b3(b"after 3\n")));
    assert_eq!(l.events().len(), keep + 2);
    let v = l.ok(["verify"]);
    assert!(v.stdout.contains(": clean"), "{v:?}");
}
