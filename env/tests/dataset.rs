//! Task files as HF ships them: parquet written by pyarrow (the library `datasets` writes
//! with; taken from the harness venv of `scripts/swebench-harness.sh`), with list fields as
//! JSON strings (SWE-bench Verified) or as lists (SWE-rebench), snappy and zstd compressed,
//! read back equal to the same instances as JSON and JSONL.

use std::path::PathBuf;

fn python() -> Option<PathBuf> {
    let p = std::env::var_os("SWEBENCH_HARNESS_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/swebench-5.0.2/bin/python")
        });
    if p.is_file() {
        return Some(p);
    }
    if std::env::var_os("SWEBENCH_REQUIRE_HARNESS").is_some() {
        panic!(
            "SWEBENCH_REQUIRE_HARNESS is set but {} is missing",
            p.display()
        );
    }
    eprintln!(
        "SKIPPED: no harness venv with pyarrow at {} (scripts/swebench-harness.sh)",
        p.display()
    );
    None
}

const WRITE: &str = r#"
import json, sys
import pyarrow as pa, pyarrow.parquet as pq
rows = json.load(open(sys.argv[1]))
out = sys.argv[2]
# SWE-bench Verified: every column a string, the lists JSON-encoded.
strings = {k: [r[k] if isinstance(r[k], str) else json.dumps(r[k]) for r in rows] for k in rows[0]}
pq.write_table(pa.table(strings), out + "/verified.parquet")
# SWE-rebench style: real list columns, an integer column, zstd.
lists = dict(strings)
lists["FAIL_TO_PASS"] = pa.array([r["FAIL_TO_PASS"] for r in rows], pa.list_(pa.string()))
lists["PASS_TO_PASS"] = pa.array([r["PASS_TO_PASS"] for r in rows], pa.list_(pa.string()))
lists["stars"] = pa.array([7 for _ in rows], pa.int64())
pq.write_table(pa.table(lists), out + "/rebench.parquet", compression="zstd")
"#;

#[test]
fn parquet_json_and_jsonl_task_files_agree() {
    let Some(py) = python() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let rows = serde_json::json!([
        {"instance_id": "o__r-1", "repo": "o/r", "base_commit": "abc", "patch": "diff --git a/x b/x\n",
         "test_patch": "diff --git a/t b/t\n", "problem_statement": "ünïcode\nstatement",
         "FAIL_TO_PASS": ["t.py::a", "t.py::b[x y]"], "PASS_TO_PASS": [], "version": "1.2",
         "created_at": "2024-01-01T00:00:00Z"},
        {"instance_id": "o__r-2", "repo": "o/r", "base_commit": "def", "patch": "p",
         "test_patch": "t", "problem_statement": "s", "FAIL_TO_PASS": ["t.py::c"],
         "PASS_TO_PASS": ["t.py::d"], "version": "2.0", "created_at": "2024-02-02T00:00:00Z"}
    ]);
    let json = dir.path().join("tasks.json");
    std::fs::write(&json, serde_json::to_vec(&rows).unwrap()).unwrap();
    let jsonl = dir.path().join("tasks.jsonl");
    let lines: String = rows
        .as_array()
        .unwrap()
        .iter()
        .map(|r| format!("{r}\n"))
        .collect();
    std::fs::write(&jsonl, lines).unwrap();
    let out = std::process::Command::new(&py)
        .args(["-c", WRITE])
        .arg(&json)
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let from_json = env::dataset::load(&json).unwrap();
    assert_eq!(from_json.len(), 2);
    assert_eq!(from_json[0].fail_to_pass, vec!["t.py::a", "t.py::b[x y]"]);
    assert_eq!(env::dataset::load(&jsonl).unwrap(), from_json);
    let verified = env::dataset::load(&dir.path().join("verified.parquet")).unwrap();
    assert_eq!(verified, from_json, "string columns, lists as JSON strings");
    let rebench = env::dataset::load(&dir.path().join("rebench.parquet")).unwrap();
    assert_eq!(rebench.len(), 2);
    for (a, b) in rebench.iter().zip(&from_json) {
        assert_eq!(
            (&a.instance_id, &a.fail_to_pass, &a.pass_to_pass, &a.version),
            (&b.instance_id, &b.fail_to_pass, &b.pass_to_pass, &b.version)
        );
        assert_eq!(a.extra["stars"], 7);
    }
}
