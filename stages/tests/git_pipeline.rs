//! collect (local git) → filter on a real repository built with the git CLI: merge-commit and
//! squash PRs, a rename, a bot, a non-Python PR; then caching and re-keying on new history.

use ledger::config::Experiment;
use ledger::runner::{run, Outcome, RunOptions};
use ledger::{Ledger, Wait};
use stages::record::PrRecord;
use std::io::BufRead;
use std::path::Path;
use std::process::Command;

fn git(repo: &Path, args: &[&str]) {
    commit_at(repo, "2024-01-01T00:00:00Z", args);
}

fn commit_at(repo: &Path, when: &str, args: &[&str]) {
    let out = Command::new("git")
        .args(args)
        .current_dir(repo)
        .env("GIT_AUTHOR_DATE", when)
        .env("GIT_COMMITTER_DATE", when)
        .output()
        .expect("git runs");
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn write(repo: &Path, path: &str, text: &str) {
    let p = repo.join(path);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, text).unwrap();
}

fn fixture(repo: &Path) {
    std::fs::create_dir_all(repo).unwrap();
    git(repo, &["init", "-q", "-b", "main"]);
    git(repo, &["config", "user.name", "Alice"]);
    git(repo, &["config", "user.email", "alice@example.com"]);
    write(
        repo,
        "pkg/core.py",
        "def add(a, b):\n    return a - b\n\n\ndef sub(a, b):\n    return a - b\n",
    );
    write(
        repo,
        "pkg/util.py",
        "def clamp(x, lo, hi):\n    return max(lo, min(x, hi))\n",
    );
    write(repo, "src/lib.rs", "pub fn f() {}\n");
    write(repo, "README.md", "# demo\n");
    git(repo, &["add", "-A"]);
    commit_at(
        repo,
        "2024-01-01T00:00:00Z",
        &["commit", "-q", "-m", "Initial commit"],
    );

    // PR #1 on a branch, merged with a merge commit.
    git(repo, &["checkout", "-q", "-b", "fix-add"]);
    write(
        repo,
        "pkg/core.py",
        "def add(a, b):\n    return a + b\n\n\ndef sub(a, b):\n    return a - b\n",
    );
    git(repo, &["add", "-A"]);
    commit_at(
        repo,
        "2024-01-02T00:00:00Z",
        &["commit", "-q", "-m", "Fix add"],
    );
    write(
        repo,
        "tests/test_core.py",
        "from pkg.core import add\n\n\ndef test_add():\n    assert add(1, 2) == 3\n",
    );
    git(repo, &["add", "-A"]);
    commit_at(
        repo,
        "2024-01-03T00:00:00Z",
        &["commit", "-q", "-m", "Add a test"],
    );
    git(repo, &["checkout", "-q", "main"]);
    commit_at(
        repo,
        "2024-01-04T00:00:00Z",
        &["merge", "-q", "--no-ff", "fix-add", "-m", "Merge pull request #1 from alice/fix-add\n\nFix add returning a difference\n\nFixes #3"],
    );

    // PR #2, squash-merged: a rename plus an edit.
    git(repo, &["mv", "pkg/util.py", "pkg/helpers.py"]);
    write(repo, "pkg/core.py", "from pkg.helpers import clamp\n\n\ndef add(a, b):\n    return a + b\n\n\ndef sub(a, b):\n    return a - b\n");
    git(repo, &["add", "-A"]);
    commit_at(
        repo,
        "2024-01-05T00:00:00Z",
        &[
            "commit",
            "-q",
            "-m",
            "Rename util to helpers (#2)\n\nKeeps imports tidy.",
        ],
    );

    // PR #4 by a bot, PR #5 touching Rust: both dropped by the Python filter.
    write(repo, "requirements.txt", "numpy==2.0\n");
    git(repo, &["add", "-A"]);
    commit_at(
        repo,
        "2024-01-06T00:00:00Z",
        &[
            "-c",
            "user.name=dependabot[bot]",
            "commit",
            "-q",
            "-m",
            "Bump numpy (#4)",
        ],
    );
    write(repo, "src/lib.rs", "pub fn f() -> u8 { 1 }\n");
    write(repo, "pkg/core.py", "from pkg.helpers import clamp\n\n\ndef add(a, b):\n    return a + b\n\n\ndef sub(a, b):\n    return b - a\n");
    git(repo, &["add", "-A"]);
    commit_at(
        repo,
        "2024-01-07T00:00:00Z",
        &["commit", "-q", "-m", "Touch Rust and Python (#5)"],
    );
    // A direct push with no PR number: not a PR.
    write(repo, "README.md", "# demo\n\nMore.\n");
    git(repo, &["add", "-A"]);
    commit_at(
        repo,
        "2024-01-08T00:00:00Z",
        &["commit", "-q", "-m", "Docs"],
    );
}

const CONFIG: &str = r#"
[experiment]
name = "git-test"

[[stage]]
id = "prs"
uses = "collect"
source = "git"
git = { repo = "repo", name = "demo/demo", description = "A demo" }

[[stage]]
id = "python"
uses = "filter"
inputs = { prs = "prs.prs" }
"#;

fn read_shard(ledger: &Ledger, hex: &str) -> Vec<PrRecord> {
    let hash = ledger::Hash::from_hex(hex).unwrap();
    let file = ledger::manifest::open_whole(ledger.store(), &hash).unwrap();
    std::io::BufReader::new(zstd::Decoder::new(file).unwrap())
        .lines()
        .map(|l| serde_json::from_str(&l.unwrap()).unwrap())
        .collect()
}

#[test]
fn mines_prs_from_a_clone_and_filters_them() {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    fixture(&repo);
    let config_path = dir.path().join("exp.toml");
    std::fs::write(&config_path, CONFIG).unwrap();
    let registry = stages::registry();
    let experiment = Experiment::load(&config_path, &registry).unwrap();
    let ledger_dir = dir.path().join("ledger");
    Ledger::init(&ledger_dir).unwrap();
    let mut ledger = Ledger::open_writer(&ledger_dir, Wait::Block).unwrap();
    let opts = RunOptions {
        progress: false,
        ..Default::default()
    };
    let report = run(&mut ledger, &registry, &experiment, &opts).unwrap();

    let collected = read_shard(&ledger, &report.steps[0].outputs[0].1);
    let numbers: Vec<u64> = collected.iter().map(|r| r.number).collect();
    assert_eq!(numbers, vec![1, 2, 4, 5]);

    let pr1 = &collected[0];
    assert_eq!(pr1.repo_name, "demo/demo");
    assert_eq!(pr1.repo_description, "A demo");
    assert_eq!(pr1.title, "Fix add returning a difference");
    assert_eq!(pr1.body, "Fixes #3");
    assert_eq!(pr1.author, "Alice");
    assert_eq!(pr1.commits.len(), 2);
    assert_eq!(pr1.commits[0].message, "Fix add");
    assert_eq!(pr1.commits[0].diffs[0].path, "pkg/core.py");
    let patch = pr1.commits[0].diffs[0].patch.as_deref().unwrap();
    assert!(patch.starts_with("@@ -1,"), "{patch}");
    assert!(
        patch.contains("-    return a - b\n+    return a + b\n"),
        "{patch}"
    );
    let files: Vec<(&str, &str)> = pr1
        .files
        .iter()
        .map(|f| (f.path.as_str(), f.status.as_str()))
        .collect();
    assert_eq!(
        files,
        vec![("pkg/core.py", "modified"), ("tests/test_core.py", "added")]
    );
    // Relevant files: touched files at the snapshot (the parent of the first PR commit);
    // added files are not context.
    assert_eq!(pr1.relevant_files.len(), 1);
    assert_eq!(pr1.relevant_files[0].path, "pkg/core.py");
    assert!(pr1.relevant_files[0]
        .content
        .contains("return a - b\n\n\ndef sub"));
    assert_eq!(pr1.merged_at.as_deref(), Some("2024-01-04T00:00:00Z"));

    let pr2 = &collected[1];
    assert_eq!(pr2.title, "Rename util to helpers");
    assert_eq!(pr2.body, "Keeps imports tidy.");
    let rename = pr2
        .files
        .iter()
        .find(|f| f.status == "renamed")
        .expect("a rename");
    assert_eq!(rename.path, "pkg/helpers.py");
    assert_eq!(rename.previous_path.as_deref(), Some("pkg/util.py"));
    let relevant: Vec<&str> = pr2.relevant_files.iter().map(|f| f.path.as_str()).collect();
    assert_eq!(
        relevant,
        vec!["pkg/core.py", "pkg/util.py"],
        "renamed files use their old path"
    );
    assert_eq!(collected[2].author_type, "Bot");

    let kept = read_shard(&ledger, &report.steps[1].outputs[0].1);
    assert_eq!(
        kept.iter().map(|r| r.number).collect::<Vec<_>>(),
        vec![1, 2]
    );
    let metric = |name: &str| {
        report.steps[1]
            .metrics
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| *v)
            .unwrap()
    };
    assert_eq!(metric("records.in"), 4.0);
    assert_eq!(metric("dropped.bot_author"), 1.0);
    assert_eq!(metric("dropped.non_python_files"), 1.0);

    // Same history: fully cached. New history: collect runs again.
    let again = run(&mut ledger, &registry, &experiment, &opts).unwrap();
    assert!(again
        .steps
        .iter()
        .all(|s| matches!(s.outcome, Outcome::Cached { .. })));
    write(&repo, "pkg/new.py", "X = 1\n");
    git(&repo, &["add", "-A"]);
    commit_at(
        &repo,
        "2024-01-09T00:00:00Z",
        &["commit", "-q", "-m", "Add constant (#6)"],
    );
    let third = run(&mut ledger, &registry, &experiment, &opts).unwrap();
    assert!(matches!(third.steps[0].outcome, Outcome::Executed));
    assert_eq!(read_shard(&ledger, &third.steps[0].outputs[0].1).len(), 5);

    // Commit mode: every non-merge commit.
    let commits_cfg = CONFIG.replace("description = \"A demo\"", "unit = \"commit\"");
    let commits_path = dir.path().join("commits.toml");
    std::fs::write(&commits_path, commits_cfg).unwrap();
    let experiment = Experiment::load(&commits_path, &registry).unwrap();
    let report = run(&mut ledger, &registry, &experiment, &opts).unwrap();
    let commits = read_shard(&ledger, &report.steps[0].outputs[0].1);
    assert_eq!(commits.len(), 8, "8 non-merge commits");
    assert_eq!(commits[0].title, "Initial commit");
}
