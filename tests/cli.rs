//! The everyday workflow through the real `ledger` binary: init, add, cat, run, show, lineage,
//! replay, diff, tag, gc, verify.

mod common;

use common::{added_hashes, b3, ingest_pack_config, is_hash, step, step_output, Ledger};
use serde_json::Value;
use std::collections::BTreeSet;

/// A ledger with the three-file data set under `data/` and one successful run of
/// `ingest → pack`; returns (fixture, config path, run report).
fn ran() -> (Ledger, std::path::PathBuf, Value) {
    let l = Ledger::init();
    l.data_set("data");
    let config = l.config("exp.toml", &ingest_pack_config("exp", "data", 1 << 20));
    let report = l.run_config(&config);
    (l, config, report)
}

#[test]
fn init_add_and_cat_round_trip_exact_bytes() {
    let l = Ledger::init();
    assert!(l.log_path().is_file());
    let again = l.run(["init"]).expect_code(1);
    assert!(again.stderr.contains("already a ledger"), "{again:?}");

    let text = b"hello ledger\n".to_vec();
    let binary: Vec<u8> = (0..=255u8).cycle().take(4096).collect();
    let a = l.write("in/hello.txt", &text);
    let b = l.write("in/blob.bin", &binary);
    let out = l.ok(["add".as_ref(), a.as_os_str(), b.as_os_str()]);
    let printed = added_hashes(&out.stdout);
    assert_eq!(printed.len(), 2, "{out:?}");
    assert_eq!(printed[0].0, b3(&text));
    assert_eq!(printed[1].0, b3(&binary));
    assert!(printed[0].1.ends_with("hello.txt"), "{out:?}");
    assert!(out.stdout.contains("(13 B)"), "{out:?}");

    let cat = l.ok(["cat", &printed[0].0]);
    assert_eq!(cat.stdout_bytes, text);
    let cat = l.ok(["cat", &printed[1].0]);
    assert_eq!(cat.stdout_bytes, binary, "binary bytes came back altered");

    // Adding known bytes again prints the same hash and records nothing new.
    let before = l.events().len();
    assert_eq!(before, 2);
    let again = l.ok(["add".as_ref(), a.as_os_str()]);
    assert_eq!(added_hashes(&again.stdout)[0].0, b3(&text));
    assert_eq!(
        l.events().len(),
        before,
        "re-adding known bytes appended an event"
    );

    let events = l.events();
    assert_eq!(events[0]["kind"], "artifact");
    assert_eq!(events[0]["detail"]["hash"], b3(&text).as_str());
    assert_eq!(events[0]["detail"]["size"], 13);
    assert_eq!(events[1]["detail"]["hash"], b3(&binary).as_str());
    l.ok(["verify"]);
}

#[test]
fn add_creates_the_ledger_and_missing_ledger_is_a_clear_error() {
    let l = Ledger::new();
    let missing = l.run(["log"]).expect_code(1);
    assert!(missing.stderr.contains("no ledger at"), "{missing:?}");
    assert!(
        missing.stderr.contains(&l.dir.display().to_string()),
        "{missing:?}"
    );
    assert!(!l.dir.exists(), "a read command created the ledger");

    let f = l.write("x.txt", "x");
    let out = l.ok(["add".as_ref(), f.as_os_str()]);
    assert!(out.stderr.contains("created a new ledger"), "{out:?}");
    assert_eq!(added_hashes(&out.stdout)[0].0, b3(b"x"));

    let nothing = l.run(["add", "does-not-exist.txt"]).expect_code(1);
    assert!(nothing.stderr.contains("does-not-exist.txt"), "{nothing:?}");
    let dir = l.run(["add", "ledger"]).expect_code(1);
    assert!(dir.stderr.contains("is a directory"), "{dir:?}");
}

#[test]
fn prefix_resolution_needs_eight_digits_and_names_unknown_prefixes() {
    let l = Ledger::init();
    let f = l.write("p.txt", "prefix test\n");
    l.ok(["add".as_ref(), f.as_os_str()]);
    let hash = b3(b"prefix test\n");

    assert_eq!(l.ok(["cat", &hash[..8]]).stdout, "prefix test\n");
    assert_eq!(l.ok(["cat", &hash[..20]]).stdout, "prefix test\n");
    assert_eq!(
        l.ok(["cat", &hash[..12].to_ascii_uppercase()]).stdout,
        "prefix test\n",
        "hex prefixes are case-insensitive"
    );

    let short = l.run(["cat", &hash[..7]]).expect_code(1);
    assert!(short.stderr.contains("too short"), "{short:?}");
    assert!(short.stderr.contains("at least 8 hex digits"), "{short:?}");
    assert!(short.stdout.is_empty(), "{short:?}");

    // A prefix that is not this hash's (flip the first digit).
    let first = if hash.starts_with('0') { '1' } else { '0' };
    let unknown = format!("{first}{}", &hash[1..10]);
    let out = l.run(["show", &unknown]).expect_code(1);
    assert!(out.stderr.contains("no artifact or run"), "{out:?}");
    assert!(out.stderr.contains(&unknown), "{out:?}");

    let neither = l.run(["cat", "not-a-tag"]).expect_code(1);
    assert!(
        neither.stderr.contains("neither a tag nor a hex address"),
        "{neither:?}"
    );
}

#[test]
fn running_a_config_twice_answers_from_the_cache() {
    let l = Ledger::init();
    let data = l.data_set("data");
    let config = l.config("exp.toml", &ingest_pack_config("exp", "data", 1 << 20));

    let first = l
        .ok(["run".as_ref(), "--no-progress".as_ref(), config.as_os_str()])
        .stdout;
    assert_eq!(first.matches("executed").count(), 2, "{first}");
    assert!(!first.contains("cached"), "{first}");
    let second = l
        .ok(["run".as_ref(), "--no-progress".as_ref(), config.as_os_str()])
        .stdout;
    assert_eq!(
        second.matches("cached (reused step #").count(),
        2,
        "{second}"
    );
    assert!(!second.contains("executed"), "{second}");

    // The JSON report names the steps the cache answered from, and the outputs are the same.
    let third = l.run_config(&config);
    let events = l.events();
    let executed: Vec<u64> = events
        .iter()
        .filter(|e| e["kind"] == "stage" && e["detail"]["status"] == "succeeded")
        .map(|e| e["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(executed.len(), 2, "only the first run executes");
    for (i, node) in ["src", "corpus"].iter().enumerate() {
        let s = step(&third, node);
        assert_eq!(s["outcome"]["Cached"]["source_seq"], executed[i], "{s}");
    }
    let stage_events = events.iter().filter(|e| e["kind"] == "stage").count();
    assert_eq!(stage_events, 6, "three runs of two stages");
    // The ingested files were each recorded once, by content.
    let files: BTreeSet<String> = events
        .iter()
        .filter(|e| e["kind"] == "artifact" && e["detail"]["origin"]["file"].is_string())
        .map(|e| e["detail"]["hash"].as_str().unwrap().to_string())
        .collect();
    let expected: BTreeSet<String> = data.iter().map(|(_, b)| b3(b)).collect();
    assert_eq!(files, expected);
}

#[test]
fn show_json_names_the_producing_stage_and_its_inputs() {
    let (l, _, report) = ran();
    let manifest = step_output(&report, "src", "files");
    let corpus = step_output(&report, "corpus", "corpus");

    let shown = l.ok(["show", "--json", &corpus[..10]]).json();
    let art = &shown["artifact"];
    assert_eq!(art["hash"], corpus.as_str());
    assert_eq!(art["stored"], true);
    assert_eq!(art["media_type"], "application/x-ndjson");
    let prov = &art["provenance"];
    assert_eq!(prov["kind"], "output", "{shown}");
    assert_eq!(prov["output"], "corpus");
    assert_eq!(prov["step"]["stage"], "pack");
    assert_eq!(prov["step"]["node"], "corpus");
    assert_eq!(prov["step"]["run_id"], report["run_id"]);
    assert_eq!(prov["step"]["config"]["max_file_bytes"], 1 << 20);
    assert_eq!(prov["step"]["seed"], 7);
    assert_eq!(
        prov["step"]["inputs"],
        serde_json::json!([["files", manifest]]),
        "{shown}"
    );
    let size = std::fs::metadata(l.blob_path(&corpus)).unwrap().len();
    assert_eq!(art["size"], size);

    // The manifest was made by ingest from the data files, and is consumed by the pack step.
    let shown = l.ok(["show", "--json", &manifest]).json();
    let step = &shown["artifact"]["provenance"]["step"];
    assert_eq!(step["stage"], "ingest");
    let inputs: BTreeSet<(String, String)> = step["inputs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p[0].as_str().unwrap().to_string(),
                p[1].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let expected: BTreeSet<(String, String)> = [
        ("file:data/a.txt", b3(b"alpha\nbeta\n")),
        ("file:data/b.md", b3(b"# title\n\nsome words\n")),
        (
            "file:data/sub/c.rs",
            b3(b"fn main() {\n    println!(\"hi\");\n}\n"),
        ),
    ]
    .into_iter()
    .map(|(n, h)| (n.to_string(), h))
    .collect();
    assert_eq!(inputs, expected);
    let pack_seq = step_json_seq(&report, "corpus");
    assert_eq!(shown["consumed_by_events"], serde_json::json!([pack_seq]));

    // The text form says the same.
    let text = l.ok(["show", &corpus]).stdout;
    assert!(
        text.contains("produced   output `corpus` of step #"),
        "{text}"
    );
    assert!(text.contains("`corpus` (pack v1)"), "{text}");
    assert!(text.contains(&manifest), "{text}");

    // A run id shows its events.
    let run = report["run_id"].as_str().unwrap();
    let shown = l.ok(["show", "--json", run]).json();
    assert_eq!(shown["run"], run);
    let kinds: Vec<&str> = shown["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["run", "stage", "stage"]);
}

fn step_json_seq(report: &Value, node: &str) -> u64 {
    step(report, node)["event_seq"].as_u64().unwrap()
}

#[test]
fn lineage_json_has_every_ancestor_and_dot_is_well_formed() {
    let (l, _, report) = ran();
    let manifest = step_output(&report, "src", "files");
    let corpus = step_output(&report, "corpus", "corpus");

    let graph = l.ok(["lineage", "--format", "json", &corpus]).json();
    assert_eq!(graph["root"], corpus.as_str());
    let artifacts: BTreeSet<String> = graph["artifacts"]
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect();
    let mut expected: BTreeSet<String> = [corpus.clone(), manifest.clone()].into();
    for bytes in [
        &b"alpha\nbeta\n"[..],
        b"# title\n\nsome words\n",
        b"fn main() {\n    println!(\"hi\");\n}\n",
    ] {
        expected.insert(b3(bytes));
    }
    assert_eq!(artifacts, expected, "lineage artifacts");
    let steps = graph["steps"].as_object().unwrap();
    let seqs: BTreeSet<u64> = steps.keys().map(|k| k.parse().unwrap()).collect();
    assert_eq!(
        seqs,
        [
            step_json_seq(&report, "src"),
            step_json_seq(&report, "corpus")
        ]
        .into()
    );
    assert_eq!(
        graph["artifacts"][&manifest]["provenance"]["kind"],
        "output"
    );
    assert_eq!(
        graph["artifacts"][b3(b"alpha\nbeta\n")]["provenance"]["kind"],
        "file"
    );

    // The lineage of a source file is just itself.
    let src = l
        .ok(["lineage", "--format", "json", &b3(b"alpha\nbeta\n")])
        .json();
    assert_eq!(src["artifacts"].as_object().unwrap().len(), 1);
    assert!(src["steps"].as_object().unwrap().is_empty());

    let dot = l.ok(["lineage", "--format", "dot", &corpus]).stdout;
    assert!(dot.starts_with("digraph lineage {\n"), "{dot}");
    assert!(dot.ends_with("}\n"), "{dot}");
    assert_eq!(dot.matches('{').count(), dot.matches('}').count(), "{dot}");
    assert_eq!(dot.matches('"').count() % 2, 0, "unbalanced quotes:\n{dot}");
    let body: Vec<&str> = dot.lines().skip(1).filter(|l| *l != "}").collect();
    for line in &body {
        assert!(line.ends_with(';'), "DOT statement without `;`: {line}");
    }
    for hash in &expected {
        let node = format!("\"a{hash}\" [shape=ellipse");
        assert_eq!(dot.matches(&node).count(), 1, "node for {hash}:\n{dot}");
    }
    assert_eq!(dot.matches("[shape=box").count(), 2, "{dot}");
    // Edges: 3 file inputs + 1 manifest input, and the two outputs.
    assert_eq!(dot.matches(" -> ").count(), 6, "{dot}");
    assert!(
        dot.contains(&format!(
            "\"a{manifest}\" -> \"s{}\" [label=\"files\"];",
            step_json_seq(&report, "corpus")
        )),
        "{dot}"
    );
    let text = l.ok(["lineage", &corpus]).stdout;
    assert!(text.starts_with(&corpus[..12]), "{text}");
    assert!(
        text.contains("file a.txt") || text.contains("data/a.txt"),
        "{text}"
    );
}

#[test]
fn replay_of_an_output_is_bit_identical() {
    let (l, _, report) = ran();
    let corpus = step_output(&report, "corpus", "corpus");
    let manifest = step_output(&report, "src", "files");

    let out = l.ok(["replay", &corpus]);
    assert!(out.stdout.trim_end().ends_with("bit-identical"), "{out:?}");
    assert!(out.stdout.contains("ok   corpus"), "{out:?}");

    let json = l.ok(["replay", "--json", "--check", &corpus]).json();
    assert_eq!(json["verdict"], "bit_identical");
    assert_eq!(
        json["steps"].as_array().unwrap().len(),
        2,
        "--check reruns both steps"
    );
    assert_eq!(json["first_divergence"], Value::Null);

    let json = l
        .ok(["replay", "--json", "--repeat", "2", &manifest])
        .json();
    assert_eq!(json["verdict"], "bit_identical");
    assert_eq!(json["steps"].as_array().unwrap().len(), 2);

    // A source artifact is checked by rehashing it.
    let src = l.ok(["replay", &b3(b"alpha\nbeta\n")]);
    assert!(src.stdout.contains("source artifact"), "{src:?}");

    // Replaying leaves the ledger as it was.
    let v = l.ok(["verify"]);
    assert!(v.stdout.contains("clean"), "{v:?}");
}

#[test]
fn diff_of_two_runs_names_the_changed_config_key() {
    let l = Ledger::init();
    l.data_set("data");
    let a = l.config("a.toml", &ingest_pack_config("exp", "data", 1000));
    let b = l.config("b.toml", &ingest_pack_config("exp", "data", 12));
    let ra = l.run_config(&a);
    let rb = l.run_config(&b);
    assert!(step(&rb, "src")["outcome"]["Cached"].is_object(), "{rb}");
    assert_eq!(step(&rb, "corpus")["outcome"], "Executed", "{rb}");
    let (run_a, run_b) = (
        ra["run_id"].as_str().unwrap(),
        rb["run_id"].as_str().unwrap(),
    );

    let out = l.ok(["diff", run_a, run_b]);
    assert!(
        out.stdout.contains("config max_file_bytes: 1000 | 12"),
        "{out:?}"
    );
    assert!(
        out.stdout
            .contains("= src (ingest): same action, same outputs"),
        "{out:?}"
    );
    assert!(out.stdout.contains("~ corpus (pack)"), "{out:?}");
    assert!(out.stdout.contains("first divergence"), "{out:?}");

    let json = l.ok(["diff", "--json", run_a, run_b]).json();
    assert_eq!(json["kind"], "runs");
    let steps = json["steps"].as_array().unwrap();
    let src = steps.iter().find(|s| s["node"] == "src").unwrap();
    assert_eq!(src["same_action"], true);
    assert_eq!(src["config"], serde_json::json!({}));
    let pack = steps.iter().find(|s| s["node"] == "corpus").unwrap();
    assert_eq!(pack["same_action"], false);
    assert_eq!(
        pack["config"],
        serde_json::json!({"max_file_bytes": [1000, 12]}),
        "exactly one config key differs"
    );
    // Two of the three files are larger than 12 bytes.
    assert_eq!(
        pack["metrics"]["dropped.too_large"],
        serde_json::json!([0.0, 2.0])
    );

    // Diffing the two corpora compares their producing steps.
    let ca = step_output(&ra, "corpus", "corpus");
    let cb = step_output(&rb, "corpus", "corpus");
    assert_ne!(ca, cb);
    let json = l.ok(["diff", "--json", &ca, &cb]).json();
    assert_eq!(json["kind"], "artifacts");
    let pack = json["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["node"] == "corpus")
        .unwrap_or_else(|| panic!("no corpus step in the artifact diff: {json}"));
    assert_eq!(
        pack["config"],
        serde_json::json!({"max_file_bytes": [1000, 12]})
    );

    let mixed = l.run(["diff", run_a, &ca]).expect_code(1);
    assert!(
        mixed.stderr.contains("compare a run with a run"),
        "{mixed:?}"
    );
}

#[test]
fn tag_then_cat_by_tag() {
    let (l, _, report) = ran();
    let corpus = step_output(&report, "corpus", "corpus");
    let out = l.ok(["tag", "best", &corpus[..12]]);
    assert_eq!(out.stdout.trim(), format!("best -> {corpus}"));
    assert_eq!(
        l.ok(["cat", "best"]).stdout_bytes,
        std::fs::read(l.blob_path(&corpus)).unwrap()
    );
    let shown = l.ok(["show", "--json", "best"]).json();
    assert_eq!(shown["artifact"]["hash"], corpus.as_str());
    assert_eq!(shown["artifact"]["tags"], serde_json::json!(["best"]));
    let events = l.events();
    let last = events.last().unwrap();
    assert_eq!(last["kind"], "tag");
    assert_eq!(last["detail"]["name"], "best");

    // Moving the tag.
    let manifest = step_output(&report, "src", "files");
    l.ok(["tag", "best", &manifest]);
    assert_eq!(
        l.ok(["cat", "best"]).stdout_bytes,
        std::fs::read(l.blob_path(&manifest)).unwrap()
    );

    let hexy = l.run(["tag", "deadbeef", &corpus]).expect_code(1);
    assert!(hexy.stderr.contains("looks like a hash"), "{hexy:?}");
    let spaced = l.run(["tag", "two words", &corpus]).expect_code(1);
    assert!(spaced.stderr.contains("no spaces"), "{spaced:?}");
    let run = report["run_id"].as_str().unwrap();
    let not_artifact = l.run(["tag", "r", run]).expect_code(1);
    assert!(
        not_artifact.stderr.contains("is not an artifact"),
        "{not_artifact:?}"
    );
    let count = l.events().len();
    assert_eq!(count, events.len() + 1, "rejected tags appended events");
    l.ok(["verify"]);
}

#[test]
fn gc_removes_an_unused_file_and_verify_stays_clean() {
    let (l, _, report) = ran();
    let corpus = step_output(&report, "corpus", "corpus");
    let unused_bytes = b"nobody uses me\n";
    let unused_path = l.write("unused.txt", unused_bytes);
    l.ok(["add".as_ref(), unused_path.as_os_str()]);
    let unused = b3(unused_bytes);
    let blobs_before = l.blobs();
    assert!(blobs_before.contains(&unused));

    let dry = l.ok(["gc", "--dry-run"]);
    assert!(
        dry.stdout
            .contains(&format!("would remove {unused} (15 B)")),
        "{dry:?}"
    );
    assert!(dry.stdout.contains("would remove 1 blobs"), "{dry:?}");
    assert_eq!(l.blobs(), blobs_before, "--dry-run removed something");
    let dry_json = l.ok(["gc", "--dry-run", "--json"]).json();
    assert_eq!(dry_json["removed"], serde_json::json!([[unused, 15]]));

    let events_before = l.events().len();
    let gc = l.ok(["gc"]);
    assert!(gc.stdout.contains(&format!("removed {unused}")), "{gc:?}");
    assert!(!l.blob_path(&unused).exists(), "gc left the unused blob");
    let mut expected = blobs_before.clone();
    expected.retain(|h| *h != unused);
    assert_eq!(l.blobs(), expected, "gc removed more than the unused blob");
    let events = l.events();
    assert_eq!(events.len(), events_before + 1);
    assert_eq!(events.last().unwrap()["kind"], "collected");
    assert_eq!(
        events.last().unwrap()["detail"]["hashes"],
        serde_json::json!([unused])
    );

    let v = l.ok(["verify"]);
    assert!(v.stdout.contains(": clean"), "{v:?}");
    let shown = l.ok(["show", &unused]);
    assert!(shown.stdout.contains("collected by gc"), "{shown:?}");
    let shown = l.ok(["show", "--json", &unused]).json();
    assert_eq!(shown["artifact"]["collected"], true);
    assert_eq!(shown["artifact"]["stored"], false);
    let cat = l.run(["cat", &unused]).expect_code(1);
    assert!(cat.stderr.contains("not in the store"), "{cat:?}");

    // Everything a run reaches is still there and still replays.
    l.ok(["replay", &corpus]);
    let again = l.ok(["gc", "--dry-run"]);
    assert!(again.stdout.contains("would remove 0 blobs"), "{again:?}");

    // Adding the bytes again brings the artifact back.
    l.ok(["add".as_ref(), unused_path.as_os_str()]);
    assert_eq!(l.ok(["cat", &unused]).stdout_bytes, unused_bytes);
    l.ok(["verify"]);
}

#[test]
fn editing_an_ingested_file_executes_again() {
    let (l, config, first) = ran();
    let old = b"alpha\nbeta\n";
    l.write("data/a.txt", "alpha\nBETA changed\n");
    let second = l.run_config(&config);
    assert_eq!(step(&second, "src")["outcome"], "Executed", "{second}");
    assert_eq!(step(&second, "corpus")["outcome"], "Executed", "{second}");
    assert_ne!(
        step_output(&first, "corpus", "corpus"),
        step_output(&second, "corpus", "corpus")
    );
    let corpus = l
        .ok(["cat", &step_output(&second, "corpus", "corpus")])
        .stdout;
    assert!(corpus.contains("BETA changed"), "{corpus}");
    let files = l
        .events()
        .iter()
        .filter(|e| e["kind"] == "artifact" && e["detail"]["origin"]["file"].is_string())
        .count();
    assert_eq!(files, 4, "only the edited file is new");

    // Putting the old bytes back is a cache hit on the first run's steps.
    l.write("data/a.txt", old);
    let third = l.run_config(&config);
    assert_eq!(
        step(&third, "src")["outcome"]["Cached"]["source_seq"],
        step(&first, "src")["event_seq"]
    );
    assert_eq!(
        step_output(&third, "corpus", "corpus"),
        step_output(&first, "corpus", "corpus")
    );

    // So is a new file: it executes.
    l.write("data/new.txt", "new\n");
    let fourth = l.run_config(&config);
    assert_eq!(step(&fourth, "src")["outcome"], "Executed");
    l.ok(["verify"]);
}

#[test]
fn stages_and_reindex() {
    let stages = Ledger::new().ok(["stages", "--json"]).json();
    let names: Vec<&str> = stages
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert!(
        names.contains(&"ingest") && names.contains(&"pack"),
        "{names:?}"
    );
    let pack = stages
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "pack")
        .unwrap();
    assert_eq!(pack["outputs"], serde_json::json!(["corpus"]));
    assert_eq!(pack["inputs"][0]["name"], "files");
    assert_eq!(pack["inputs"][0]["required"], true);

    let (l, _, report) = ran();
    let count = l.events().len();
    let out = l.ok(["reindex"]);
    assert_eq!(out.stdout.trim(), format!("reindexed {count} events"));
    // With the index thrown away, readers and writers rebuild it from the log.
    std::fs::remove_dir_all(l.dir.join("index")).unwrap();
    let corpus = step_output(&report, "corpus", "corpus");
    assert!(is_hash(&corpus));
    l.ok(["show", &corpus[..8]]);
    l.ok(["tag", "t", &corpus]);
    assert_eq!(
        l.ok(["cat", "t"]).stdout_bytes,
        std::fs::read(l.blob_path(&corpus)).unwrap()
    );
    let v = l.ok(["verify"]);
    assert!(v.stdout.contains(": clean"), "{v:?}");
}
