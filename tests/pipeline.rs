//! The D_ctx pipeline end to end through the real binary: a real git repository with merged
//! Python PRs → collect → filter → reconstruct (Python format) → tokenize; shards readable with
//! standard tools, a second run fully cached, and every output replayed bit for bit.

mod common;

use common::{step, step_output, Ledger};
use std::path::Path;
use std::process::Command;

fn git(repo: &Path, when: &str, args: &[&str]) {
    let out = Command::new("git")
        .args(args)
        .current_dir(repo)
        .env("GIT_AUTHOR_DATE", when)
        .env("GIT_COMMITTER_DATE", when)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .output()
        .expect("git runs");
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A small Python project with a merged PR (two commits) and a squash-merged PR.
fn python_repo(l: &Ledger) -> std::path::PathBuf {
    let repo = l.root.join("proj");
    std::fs::create_dir_all(&repo).unwrap();
    let t0 = "2024-03-01T10:00:00Z";
    git(&repo, t0, &["init", "-q", "-b", "main"]);
    git(&repo, t0, &["config", "user.name", "Ada"]);
    git(&repo, t0, &["config", "user.email", "ada@example.com"]);
    l.write(
        "proj/calc/ops.py",
        "def add(a, b):\n    return a - b\n\n\ndef mul(a, b):\n    return a * b\n",
    );
    l.write("proj/README.md", "# calc\n");
    git(&repo, t0, &["add", "-A"]);
    git(&repo, t0, &["commit", "-q", "-m", "Initial import"]);
    git(&repo, t0, &["checkout", "-q", "-b", "fix"]);
    l.write(
        "proj/calc/ops.py",
        "def add(a, b):\n    return a + b\n\n\ndef mul(a, b):\n    return a * b\n",
    );
    git(
        &repo,
        "2024-03-02T10:00:00Z",
        &["commit", "-q", "-am", "Fix add"],
    );
    l.write(
        "proj/tests/test_ops.py",
        "from calc.ops import add\n\n\ndef test_add():\n    assert add(2, 2) == 4\n",
    );
    git(&repo, "2024-03-02T11:00:00Z", &["add", "-A"]);
    git(
        &repo,
        "2024-03-02T11:00:00Z",
        &["commit", "-q", "-m", "Test add"],
    );
    git(&repo, "2024-03-03T10:00:00Z", &["checkout", "-q", "main"]);
    git(
        &repo,
        "2024-03-03T10:00:00Z",
        &[
            "merge",
            "-q",
            "--no-ff",
            "fix",
            "-m",
            "Merge pull request #7 from ada/fix\n\nMake add add",
        ],
    );
    l.write(
        "proj/calc/ops.py",
        "def add(a, b):\n    return a + b\n\n\ndef mul(a, b):\n    return a * b\n\n\ndef neg(a):\n    return -a\n",
    );
    git(
        &repo,
        "2024-03-04T10:00:00Z",
        &["commit", "-q", "-am", "Add neg (#8)"],
    );
    repo
}

const CONFIG: &str = r#"
[experiment]
name = "pipeline"
seed = 3

[[stage]]
id = "prs"
uses = "collect"
source = "git"
git = { repo = "proj", name = "ada/calc", description = "A calculator" }

[[stage]]
id = "python"
uses = "filter"
inputs = { prs = "prs.prs" }

[[stage]]
id = "samples"
uses = "reconstruct"
inputs = { prs = "python.prs" }
format = "python"

[[stage]]
id = "tokens"
uses = "tokenize"
inputs = { samples = "samples.samples" }
vocab_size = 300
seq_len = 64
"#;

fn zstd_lines(bytes: &[u8]) -> Vec<serde_json::Value> {
    let text = zstd::decode_all(bytes).expect("a zstd stream");
    String::from_utf8(text)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON record per line"))
        .collect()
}

#[test]
fn dctx_pipeline_runs_caches_and_replays_bit_for_bit() {
    let l = Ledger::new();
    python_repo(&l);
    let config = l.config("pipeline.toml", CONFIG);
    let report = l.run_config(&config);

    // collect: both PRs, read back through `ledger cat` as zstd JSONL.
    let prs_hash = step_output(&report, "prs", "prs");
    let prs = zstd_lines(&l.ok(["cat", &prs_hash]).stdout_bytes);
    let numbers: Vec<u64> = prs.iter().map(|p| p["number"].as_u64().unwrap()).collect();
    assert_eq!(numbers, vec![7, 8]);
    assert_eq!(prs[0]["title"], "Make add add");
    assert_eq!(prs[0]["commits"].as_array().unwrap().len(), 2);

    // reconstruct: real renderings of that history in the Python format.
    let samples = zstd_lines(
        &l.ok(["cat", &step_output(&report, "samples", "samples")])
            .stdout_bytes,
    );
    assert_eq!(samples.len(), 2);
    let text = samples[0]["text"].as_str().unwrap();
    for needle in [
        "# Repository Context",
        "ada/calc",
        "# Pull Request",
        "Make add add",
        "# Relevant Files Found",
        "## calc/ops.py",
        "# Edits",
        "Fix add",
        "Edit: calc/ops.py\nSearch:\n```\ndef add(a, b):\n    return a - b\n",
        "Replace:\n```\ndef add(a, b):\n    return a + b\n",
        "Create: tests/test_ops.py",
    ] {
        assert!(text.contains(needle), "`{needle}` missing from:\n{text}");
    }
    assert!(
        samples[0]["pr_summary"].is_null(),
        "no endpoint, no invented summary"
    );

    // tokenize: header, index and counts agree.
    let tokens = l
        .ok(["cat", &step_output(&report, "tokens", "tokens")])
        .stdout_bytes;
    assert_eq!(&tokens[..8], b"DVTOKS01");
    let seq_len = u32::from_le_bytes(tokens[8..12].try_into().unwrap()) as u64;
    let n_tokens = u64::from_le_bytes(tokens[24..32].try_into().unwrap());
    assert_eq!(seq_len, 64);
    assert_eq!(
        (tokens.len() as u64 - 32) / 4,
        n_tokens.div_ceil(seq_len) * seq_len
    );
    let index = String::from_utf8(
        l.ok(["cat", &step_output(&report, "tokens", "index")])
            .stdout_bytes,
    )
    .unwrap();
    let counted: u64 = index
        .lines()
        .map(|line| {
            serde_json::from_str::<serde_json::Value>(line).unwrap()["tokens"]
                .as_u64()
                .unwrap()
        })
        .sum();
    assert_eq!(counted, n_tokens);

    // Same config, same history: every step is a cache hit.
    let again = l.run_config(&config);
    for node in ["prs", "python", "samples", "tokens"] {
        assert!(
            step(&again, node)["outcome"]["Cached"].is_object(),
            "{node} was not cached: {again}"
        );
    }

    // Every output replays bit for bit, offline.
    for (node, output) in [
        ("prs", "prs"),
        ("python", "prs"),
        ("samples", "samples"),
        ("tokens", "tokens"),
        ("tokens", "index"),
        ("tokens", "tokenizer"),
    ] {
        let hash = step_output(&report, node, output);
        let out = l.ok(["replay", &hash]);
        assert!(
            out.stdout.contains("bit-identical"),
            "{node}.{output}: {out:?}"
        );
    }
    let out = l.ok([
        "replay",
        "--check",
        &step_output(&report, "tokens", "tokens"),
    ]);
    assert!(out.stdout.contains("bit-identical"), "{out:?}");
    l.ok(["verify"]);
}
