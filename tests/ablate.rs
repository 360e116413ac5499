//! `ledger ablate` through the real binary: two arms share an upstream `ingest` node and differ
//! downstream; the shared step executes once and is cached for the second arm, and the table
//! shows the metrics the steps recorded.

mod common;

use common::{ingest_pack_config, Ledger};
use serde_json::Value;

/// `ingest` of `data` → `pack` with a size limit, and optionally a second `pack` node.
fn arm_config(name: &str, max_file_bytes: u64, extra: bool) -> String {
    let mut s = ingest_pack_config(name, "../data", max_file_bytes);
    if extra {
        s.push_str(
            r#"
[[stage]]
id = "extra"
uses = "pack"
inputs = { files = "src.files" }
max_file_bytes = 1
"#,
        );
    }
    s
}

const ABLATION: &str = r#"[ablation]
name = "pack-limit"

[[arm]]
name = "all-files"
config = "arms/all.toml"

[[arm]]
name = "small-files"
config = "arms/small.toml"

[[metric]]
label = "records"
node = "corpus"
name = "records"

[[metric]]
node = "corpus"
name = "dropped.too_large"

[[metric]]
label = "files"
node = "src"
name = "files"

[[metric]]
label = "extra records"
node = "extra"
name = "records"

[[metric]]
label = "never recorded"
node = "corpus"
name = "no_such_metric"
"#;

fn fixture() -> Ledger {
    let l = Ledger::new();
    l.data_set("data");
    l.config("arms/all.toml", &arm_config("all", 1 << 20, false));
    l.config("arms/small.toml", &arm_config("small", 12, true));
    l.write("ablation.toml", ABLATION);
    l
}

/// The metrics a run's stage-run event recorded for `node`, from `ledger log --json`.
fn recorded_metric(l: &Ledger, run_id: &str, node: &str, name: &str) -> Option<f64> {
    l.events()
        .iter()
        .find(|e| {
            e["kind"] == "stage" && e["detail"]["run_id"] == run_id && e["detail"]["node"] == node
        })
        .unwrap_or_else(|| panic!("no stage run of `{node}` in run {run_id}"))["detail"]["metrics"]
        [name]
        .as_f64()
}

fn strings(v: &Value) -> Vec<&str> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_str().unwrap())
        .collect()
}

#[test]
fn arms_share_cached_upstream_steps_and_the_table_shows_the_recorded_metrics() {
    let l = fixture();
    let out = l.ok(["ablate", "--json", "--no-progress", "ablation.toml"]);
    let report = out.json();
    assert_eq!(report["ablation"], "pack-limit");
    let arms = report["arms"].as_array().unwrap();
    assert_eq!(arms.len(), 2);
    let (all, small) = (&arms[0], &arms[1]);
    assert_eq!(all["name"], "all-files");
    assert_eq!(strings(&all["executed"]), ["src", "corpus"]);
    assert!(strings(&all["cached"]).is_empty());
    // The shared `src` step (same stage, config and files) is answered from the run cache.
    assert_eq!(small["name"], "small-files");
    assert_eq!(strings(&small["cached"]), ["src"]);
    assert_eq!(strings(&small["executed"]), ["corpus", "extra"]);

    // Every value is the one recorded on the arm's stage-run event; absent ones are null.
    let labels = [
        ("records", "corpus", "records"),
        ("corpus.dropped.too_large", "corpus", "dropped.too_large"),
        ("files", "src", "files"),
        ("extra records", "extra", "records"),
        ("never recorded", "corpus", "no_such_metric"),
    ];
    for arm in arms {
        let run_id = arm["run_id"].as_str().unwrap();
        let values = arm["values"].as_array().unwrap();
        assert_eq!(values.len(), labels.len());
        for (v, (label, node, name)) in values.iter().zip(labels) {
            assert_eq!(v["label"], label);
            let has_node = !(node == "extra" && arm["name"] == "all-files");
            let expected = if has_node {
                recorded_metric(&l, run_id, node, name)
            } else {
                None
            };
            assert_eq!(v["value"].as_f64(), expected, "{label} of {}", arm["name"]);
        }
    }
    // The data set: three files of 11, 20 and 33 bytes; the small arm keeps those <= 12 bytes.
    assert_eq!(all["values"][0]["value"], 3.0);
    assert_eq!(small["values"][0]["value"], 1.0);
    assert_eq!(small["values"][1]["value"], 2.0);
    assert_eq!(small["values"][2]["value"], 3.0);
    assert_eq!(small["values"][3]["value"], 0.0);
    let warnings = strings(&report["warnings"]);
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(
        warnings[0].contains("metric `never recorded`")
            && warnings[0].contains("no_such_metric")
            && warnings[0].contains("records"),
        "the warning names the metric and what the step does record: {}",
        warnings[0]
    );

    // Again, as a table: everything is cached now, and the values are the same.
    let out = l.ok(["ablate", "--no-progress", "ablation.toml"]);
    let lines: Vec<&str> = out.stdout.lines().collect();
    let header = lines
        .iter()
        .position(|l| l.starts_with("arm "))
        .unwrap_or_else(|| panic!("no table header:\n{}", out.stdout));
    let cells = |line: &str| -> Vec<String> {
        line.split("  ")
            .map(str::trim)
            .filter(|c| !c.is_empty())
            .map(str::to_string)
            .collect()
    };
    assert_eq!(
        cells(lines[header]),
        [
            "arm",
            "records",
            "corpus.dropped.too_large",
            "files",
            "extra records",
            "never recorded",
            "steps"
        ]
    );
    assert_eq!(
        cells(lines[header + 1]),
        [
            "all-files",
            "3",
            "0",
            "3",
            "-",
            "-",
            "cached: src, corpus; executed: -"
        ]
    );
    assert_eq!(
        cells(lines[header + 2]),
        [
            "small-files",
            "1",
            "2",
            "3",
            "0",
            "-",
            "cached: src, corpus, extra; executed: -"
        ]
    );
    assert!(out.stderr.contains("warning:"), "{out:?}");
}

#[test]
fn errors_name_the_file_the_arm_and_the_metric_and_write_nothing() {
    let l = fixture();
    let bad_metric = ABLATION.replace("node = \"extra\"", "node = \"nowhere\"");
    l.write("bad_metric.toml", &bad_metric);
    let out = l.run(["ablate", "bad_metric.toml"]).expect_code(1);
    let line = bad_metric
        .lines()
        .position(|s| s.contains("\"nowhere\""))
        .unwrap();
    for needle in [
        "bad_metric.toml:",
        "metric `extra records`",
        "no arm has a node `nowhere`",
        "(their nodes: corpus, extra, src)",
    ] {
        assert!(out.stderr.contains(needle), "missing {needle:?}:\n{out:?}");
    }
    // The line of the offending key, 1-based.
    assert!(
        out.stderr.contains(&format!(":{}:", line + 1)),
        "the line is named:\n{out:?}"
    );
    assert!(
        !l.dir.exists(),
        "a bad ablation file must not create a ledger"
    );

    l.write(
        "bad_arm.toml",
        ABLATION.replace("arms/small.toml", "arms/missing.toml"),
    );
    let out = l.run(["ablate", "bad_arm.toml"]).expect_code(1);
    for needle in ["bad_arm.toml:", "arm `small-files`", "arms/missing.toml"] {
        assert!(out.stderr.contains(needle), "missing {needle:?}:\n{out:?}");
    }

    l.write(
        "dup_arm.toml",
        ABLATION.replace("name = \"small-files\"", "name = \"all-files\""),
    );
    let out = l.run(["ablate", "dup_arm.toml"]).expect_code(1);
    assert!(
        out.stderr.contains("duplicate arm name `all-files`"),
        "{out:?}"
    );

    l.write(
        "typo.toml",
        ABLATION.replace("label = \"files\"", "lable = \"files\""),
    );
    let out = l.run(["ablate", "typo.toml"]).expect_code(1);
    assert!(
        out.stderr.contains("typo.toml:")
            && out
                .stderr
                .contains("key `metric[2].lable`: unknown field `lable`"),
        "{out:?}"
    );
    assert!(!l.dir.exists());
}
