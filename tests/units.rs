//! Work units through the real binary on the local executor: datasets as manifests of shards,
//! one unit per shard downstream, reruns that execute only the units they lack (after new
//! data, and after a kill), and external programs as stages.

mod common;

use common::{git, python_repo, sigkill, step, step_output, Ledger};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

/// collect (one shard a commit) → filter → reconstruct → a command over every shard.
fn units_config(command: &str) -> String {
    common::per_shard_command_config("units", "", "", command)
}

/// Unit events of the run `run_id`, by node: how many executed (succeeded) and failed.
fn unit_events(l: &Ledger, run_id: &str) -> BTreeMap<String, (usize, usize)> {
    let mut out: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    for e in l.events() {
        let d = &e["detail"];
        if e["kind"] != "stage" || d["run_id"] != run_id {
            continue;
        }
        let node = d["node"].as_str().unwrap();
        let Some((node, _)) = node.split_once('/') else {
            continue;
        };
        let entry = out.entry(node.to_string()).or_default();
        if d["status"] == "succeeded" {
            entry.0 += 1;
        } else if d["status"].get("failed").is_some() {
            entry.1 += 1;
        }
    }
    out
}

fn zstd_records(bytes: &[u8]) -> Vec<Value> {
    let text = zstd::decode_all(bytes).expect("a zstd stream");
    String::from_utf8(text)
        .unwrap()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn datasets_are_manifests_of_shards_and_a_rerun_executes_only_the_new_units() {
    let l = Ledger::init();
    let repo = python_repo(&l);
    let config = l.config(
        "units.toml",
        &units_config("cp {in:samples} {out:copy.zst}"),
    );
    let first = l.run_config(&config);
    // One unit for the clone, one per shard (and a dedupe) downstream.
    assert_eq!(step(&first, "prs")["units"]["total"], 1, "{first:#}");
    assert_eq!(step(&first, "kept")["units"]["total"], 5, "{first:#}");
    assert_eq!(step(&first, "samples")["units"]["total"], 4, "{first:#}");
    assert_eq!(step(&first, "copies")["units"]["total"], 4, "{first:#}");

    // A manifest reads as the whole dataset, and says what its shards are.
    let prs = step_output(&first, "prs", "prs");
    let records = zstd_records(&l.ok(["cat", &prs]).stdout_bytes);
    assert_eq!(records.len(), 4);
    let show = l.ok(["show", &prs]);
    assert!(show.stdout.contains("manifest   4 parts"), "{show:?}");
    let json = l.ok(["show", "--json", &prs]).json();
    let parts = json["manifest"]["parts"].as_array().unwrap();
    assert_eq!(parts.len(), 4);
    let copies = step_output(&first, "copies", "copy.zst");
    assert_eq!(
        l.ok(["cat", &copies]).stdout_bytes,
        l.ok(["cat", &step_output(&first, "samples", "samples")])
            .stdout_bytes,
        "the command copied every shard"
    );
    let v = l.ok(["verify"]);
    assert!(v.stdout.contains(": clean"), "{v:?}");

    // A new commit adds one shard: only its units execute (the clone is mined again, and the
    // dedupe looks at every shard once more).
    l.write("proj/calc/extra.py", "def sub(a, b):\n    return a - b\n");
    git(&repo, "2024-03-05T10:00:00Z", &["add", "-A"]);
    git(
        &repo,
        "2024-03-05T10:00:00Z",
        &["commit", "-q", "-m", "Add sub"],
    );
    let second = l.run_config(&config);
    let run = second["run_id"].as_str().unwrap();
    let executed = unit_events(&l, run);
    assert_eq!(executed["prs"], (1, 0), "{executed:?}");
    assert_eq!(
        executed["kept"],
        (2, 0),
        "dedupe + the new shard: {executed:?}"
    );
    assert_eq!(executed["samples"], (1, 0), "{executed:?}");
    assert_eq!(executed["copies"], (1, 0), "{executed:?}");
    assert_eq!(step(&second, "samples")["units"]["cached"], 4, "{second:#}");
    assert_eq!(
        zstd_records(
            &l.ok(["cat", &step_output(&second, "prs", "prs")])
                .stdout_bytes
        )
        .len(),
        5
    );

    // Replays: the whole node (every unit, then the composition), and one shard's unit.
    let copies = step_output(&second, "copies", "copy.zst");
    let replay = l.ok(["replay", "--json", &copies]).json();
    assert_eq!(replay["verdict"], "bit_identical", "{replay:#}");
    assert_eq!(
        replay["steps"].as_array().unwrap().len(),
        6,
        "5 units + the node"
    );
    let part = l.ok(["show", "--json", &copies]).json()["manifest"]["parts"][0]["hash"]
        .as_str()
        .unwrap()
        .to_string();
    let one = l.ok(["replay", "--json", &part]).json();
    assert_eq!(one["verdict"], "bit_identical", "{one:#}");

    // gc keeps every part; a bundle of a manifest carries its shards and verifies elsewhere.
    let gc = l.ok(["gc", "--dry-run", "--json"]).json();
    let removable: BTreeSet<&str> = gc["removed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r[0].as_str().unwrap())
        .collect();
    assert!(!removable.contains(part.as_str()), "{gc:#}");
    let bundle = l.root.join("copies.bundle");
    l.ok(["export", &copies, "-o", bundle.to_str().unwrap()]);
    let other = Ledger::init();
    other.ok(["import", bundle.to_str().unwrap()]);
    let v = other.ok(["verify"]);
    assert!(v.stdout.contains(": clean"), "{v:?}");
    assert_eq!(
        other.ok(["cat", &copies]).stdout_bytes,
        l.ok(["cat", &copies]).stdout_bytes
    );
}

#[test]
fn a_run_killed_mid_node_resumes_with_only_the_unfinished_units() {
    let l = Ledger::init();
    python_repo(&l);
    let config = l.config(
        "slow.toml",
        &units_config("sleep 0.6 && cp {in:samples} {out:copy.zst}"),
    );
    let mut child = l.spawn([
        "run",
        "--no-progress",
        "--jobs",
        "1",
        config.to_str().unwrap(),
    ]);
    // Kill it once two of the four slow units are recorded.
    let started = Instant::now();
    loop {
        let done = common::succeeded_unit_keys(&l).len();
        // 1 (prs) + 5 (kept) + 4 (samples) before the slow ones.
        if done >= 10 + 2 {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(120), "no progress");
        std::thread::sleep(Duration::from_millis(50));
    }
    sigkill(&mut child);
    let before = common::succeeded_unit_keys(&l).len();
    let report = l.run_config(&config);
    let run = report["run_id"].as_str().unwrap();
    let executed = unit_events(&l, run);
    assert!(!executed.contains_key("prs"), "{executed:?}");
    let copies = executed["copies"].0;
    assert_eq!(
        copies,
        14 - before,
        "only the unfinished units ran: {executed:?}"
    );
    assert!(copies < 4, "{executed:?}");
    // No unit executed twice, and the ledger is clean.
    let keys = common::succeeded_unit_keys(&l);
    assert!(keys.values().all(|n| *n == 1), "{keys:?}");
    assert_eq!(keys.len(), 14);
    let v = l.ok(["verify"]);
    assert!(v.stdout.contains(": clean"), "{v:?}");
}

fn command_config(script: &str) -> String {
    format!(
        r#"[[stage]]
id = "src"
uses = "ingest"
paths = ["data"]

[[stage]]
id = "prog"
uses = "command"
inputs = {{ files = "src.files" }}
command = ["python3", "-c", {script:?}, "{{in:files}}", "{{out:summary.json}}", "{{out:metrics.json}}"]
outputs = ["summary.json", "metrics.json"]
metrics = "metrics.json"
versions = [["python3", "--version"]]
"#
    )
}

#[test]
fn external_programs_are_stages_replayed_and_their_non_determinism_reported() {
    let l = Ledger::init();
    l.data_set("data");
    let deterministic = "import json,sys; m=json.load(open(sys.argv[1])); \
        json.dump({'files': len(m)}, open(sys.argv[2],'w')); \
        json.dump({'files': len(m), 'answer': 42}, open(sys.argv[3],'w'))";
    let config = l.config("det.toml", &command_config(deterministic));
    let report = l.run_config(&config);
    let metrics: BTreeMap<String, f64> = step(&report, "prog")["metrics"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| (m[0].as_str().unwrap().to_string(), m[1].as_f64().unwrap()))
        .collect();
    assert_eq!(metrics["answer"], 42.0, "{metrics:?}");
    assert_eq!(metrics["exit_status"], 0.0);
    let summary = step_output(&report, "prog", "summary.json");
    assert_eq!(l.ok(["cat", &summary]).stdout, "{\"files\": 3}");
    let replay = l.ok(["replay", &summary]);
    assert!(replay.stdout.contains("bit-identical"), "{replay:?}");

    // A program whose output changes from run to run is reported as not reproducible.
    let clock = "import json,sys,time; json.dump({'t': time.time_ns()}, open(sys.argv[2],'w')); \
        json.dump({}, open(sys.argv[3],'w'))";
    let config = l.config("clock.toml", &command_config(clock));
    let report = l.run_config(&config);
    let out = step_output(&report, "prog", "summary.json");
    let replay = l.run(["replay", &out]).expect_code(3);
    assert!(replay.stdout.contains("NOT reproducible"), "{replay:?}");

    // A failing program fails the step with what it printed.
    let failing = "import sys; print('the dataset is empty', file=sys.stderr); sys.exit(7)";
    let config = l.config("fail.toml", &command_config(failing));
    let out = l
        .run(["run", "--no-progress", config.to_str().unwrap()])
        .expect_code(1);
    assert!(out.stderr.contains("exited with exit status: 7"), "{out:?}");
    assert!(out.stderr.contains("the dataset is empty"), "{out:?}");
}
