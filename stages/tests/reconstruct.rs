//! `reconstruct` end to end, through a real ledger: golden renderings in both formats, search
//! block growth, whole-file operations, multi-commit state, malformed patches, and the LLM
//! path against a local OpenAI-compatible server, replayed offline from observations.

use indicatif::ProgressBar;
use ledger::observe::Mode;
use ledger::stage::{Job, Stage};
use ledger::store::BlobStore;
use ledger::{Hash, Ledger, Wait};
use stages::reconstruct::{python, Reconstruct};
use stages::record::{
    Comment, Commit, FileChange, Issue, PrRecord, RelevantFile, Review, ReviewComment, Sample,
};
use stages::shard::ShardWriter;
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

// ---------------------------------------------------------------------------------------------
// Running the stage

struct Run {
    input: Hash,
    hash: Hash,
    samples: Vec<Sample>,
    metrics: BTreeMap<String, f64>,
}

fn params(toml_text: &str) -> serde_json::Value {
    Reconstruct
        .check(toml::from_str(toml_text).expect("test params are TOML"))
        .unwrap_or_else(|e| panic!("params rejected: {:?}: {}", e.key, e.message))
}

fn job(node: &str, config: serde_json::Value, inputs: Vec<(String, Hash)>) -> Job {
    Job {
        node: node.into(),
        unit: None,
        config,
        seed: 0,
        inputs,
        workdir: ".".into(),
    }
}

fn write_input(ledger: &mut Ledger, records: &[PrRecord]) -> Hash {
    ledger::exec::run_in_context(
        ledger,
        job("input", serde_json::json!({}), Vec::new()),
        |ctx| {
            let mut writer = ShardWriter::new(ctx).unwrap();
            for r in records {
                writer.push(r).unwrap();
            }
            writer.finish(ctx, "prs").unwrap()
        },
    )
}

fn read_samples(bytes: &[u8]) -> Vec<Sample> {
    let decoder = zstd::Decoder::new(bytes).unwrap();
    BufReader::new(decoder)
        .lines()
        .map(|l| serde_json::from_str(&l.unwrap()).unwrap())
        .collect()
}

/// Runs the stage in `dir`'s ledger (created if needed) and reads back its samples.
fn run_in(dir: &Path, records: &[PrRecord], toml_text: &str) -> Run {
    if !dir.join("events.log").exists() {
        Ledger::init(dir).unwrap();
    }
    let mut ledger = Ledger::open_writer(dir, Wait::Block).unwrap();
    let input = write_input(&mut ledger, records);
    let finished = ledger::exec::run_stage(
        &mut ledger,
        &Reconstruct,
        job("samples", params(toml_text), vec![("prs".into(), input)]),
    )
    .unwrap();
    let (outputs, metrics) = (finished.outputs, finished.metrics);
    assert_eq!(outputs.len(), 1);
    assert_eq!(outputs[0].name, "samples");
    assert_eq!(outputs[0].media_type, "application/x-ndjson+zstd");
    let hash = outputs[0].hash;
    Run {
        input,
        hash,
        samples: read_samples(&ledger.store().read(&hash).unwrap()),
        metrics: metrics.into_iter().collect(),
    }
}

fn run(records: &[PrRecord], toml_text: &str) -> Run {
    let dir = tempfile::tempdir().unwrap();
    run_in(&dir.path().join("ledger"), records, toml_text)
}

// ---------------------------------------------------------------------------------------------
// A realistic PR: an issue, a conversation, reviews, and three commits (the second edits lines
// the first added; the third creates a file).

const SHAPES: &str = "import math


class Circle:
    def __init__(self, radius):
        self.radius = radius

    def area(self):
        return math.pi * self.radius ** 2


class Square:
    def __init__(self, side):
        self.side = side

    def area(self):
        return self.side ** 2
";

const README: &str = "# geometry\n\nSmall geometry helpers.\n";

/// Patch lines, each ended by a newline (spaces of empty context lines stay visible).
fn patch(lines: &[&str]) -> String {
    lines.iter().map(|l| format!("{l}\n")).collect()
}

fn guard_patch() -> String {
    patch(&[
        "@@ -3,6 +3,8 @@ import math",
        " ",
        " class Circle:",
        "     def __init__(self, radius):",
        "+        if radius < 0:",
        "+            raise ValueError(\"radius must be >= 0\")",
        "         self.radius = radius",
        " ",
        "     def area(self):",
    ])
}

fn message_patch() -> String {
    patch(&[
        "@@ -4,7 +4,7 @@ import math",
        " class Circle:",
        "     def __init__(self, radius):",
        "         if radius < 0:",
        "-            raise ValueError(\"radius must be >= 0\")",
        "+            raise ValueError(f\"radius must be >= 0, got {radius}\")",
        "         self.radius = radius",
        " ",
        "     def area(self):",
    ])
}

fn readme_patch() -> String {
    patch(&[
        "@@ -1,3 +1,5 @@",
        " # geometry",
        " ",
        " Small geometry helpers.",
        "+",
        "+A negative radius raises `ValueError`.",
    ])
}

fn tests_patch() -> String {
    // GitHub leaves the last newline off its patches.
    patch(&[
        "@@ -0,0 +1,7 @@",
        "+import pytest",
        "+",
        "+from geometry.shapes import Circle",
        "+",
        "+",
        "+def test_negative_radius():",
        "+    pytest.raises(ValueError, Circle, -1)",
    ])
    .trim_end_matches('\n')
    .to_string()
}

fn modified(path: &str, patch: String, additions: u64, deletions: u64) -> FileChange {
    FileChange {
        path: path.into(),
        status: "modified".into(),
        additions,
        deletions,
        patch: Some(patch),
        ..Default::default()
    }
}

fn at(time: &str) -> Option<String> {
    Some(time.into())
}

fn geometry_pr() -> PrRecord {
    let review_hunk = "@@ -3,6 +3,8 @@ import math\n \n class Circle:\n     def __init__(self, radius):\n+        if radius < 0:\n+            raise ValueError(\"radius must be >= 0\")";
    let commit1 = vec![modified("geometry/shapes.py", guard_patch(), 2, 0)];
    let commit2 = vec![
        modified("geometry/shapes.py", message_patch(), 1, 1),
        modified("README.md", readme_patch(), 2, 0),
    ];
    let commit3 = vec![FileChange {
        path: "tests/test_shapes.py".into(),
        status: "added".into(),
        additions: 7,
        patch: Some(tests_patch()),
        ..Default::default()
    }];
    PrRecord {
        repo_name: "acme/geometry".into(),
        repo_description: "Small geometry helpers for Python".into(),
        number: 8,
        title: "Reject negative sizes".into(),
        body: "Fixes #7.\r\n\r\nCircle now raises `ValueError` for a negative radius.\r\n".into(),
        author: "alice".into(),
        author_type: "User".into(),
        merged: true,
        merged_at: at("2024-03-03T09:00:00Z"),
        created_at: at("2024-03-01T10:05:00Z"),
        base_sha: "b".repeat(40),
        merge_commit_sha: Some("m".repeat(40)),
        snapshot_sha: "0".repeat(40),
        commits: vec![
            Commit {
                sha: "1".repeat(40),
                message: "validate radius".into(),
                author: "alice".into(),
                date: at("2024-03-01T10:00:00Z"),
                diffs: commit1,
                diffs_unavailable: false,
            },
            Commit {
                sha: "2".repeat(40),
                message: "use a clearer error message\n\nMake the message say which value was rejected.\n"
                    .into(),
                author: "alice".into(),
                // 14:00 UTC: after the review, before the third commit.
                date: at("2024-03-02T15:00:00+01:00"),
                diffs: commit2,
                diffs_unavailable: false,
            },
            Commit {
                sha: "3".repeat(40),
                message: "add tests".into(),
                author: "alice".into(),
                date: at("2024-03-02T16:00:00Z"),
                diffs: commit3,
                diffs_unavailable: false,
            },
        ],
        files: Vec::new(),
        comments: vec![Comment {
            author: "bob".into(),
            created_at: at("2024-03-01T12:00:00Z"),
            body: "Thanks! Could the error say which value was rejected?".into(),
        }],
        reviews: vec![
            Review {
                author: "carol".into(),
                state: "CHANGES_REQUESTED".into(),
                submitted_at: at("2024-03-02T09:00:00Z"),
                body: "A couple of nits.".into(),
                comments: vec![
                    ReviewComment {
                        author: "carol".into(),
                        path: "geometry/shapes.py".into(),
                        line: Some(7),
                        diff_hunk: review_hunk.into(),
                        body: "Please include the value in the message.".into(),
                        created_at: at("2024-03-02T08:58:00Z"),
                    },
                    ReviewComment {
                        author: "carol".into(),
                        path: "README.md".into(),
                        line: Some(3),
                        diff_hunk: "@@ -1,3 +1,3 @@\n # geometry\n \n Small geometry helpers.".into(),
                        body: "Worth a line here too.".into(),
                        created_at: at("2024-03-02T08:59:00Z"),
                    },
                    ReviewComment {
                        author: "carol".into(),
                        path: "geometry/shapes.py".into(),
                        line: Some(7),
                        diff_hunk: review_hunk.into(),
                        body: "And an f-string, please.".into(),
                        created_at: at("2024-03-02T08:59:30Z"),
                    },
                ],
            },
            Review {
                author: "carol".into(),
                state: "APPROVED".into(),
                submitted_at: at("2024-03-03T08:00:00Z"),
                body: String::new(),
                comments: Vec::new(),
            },
        ],
        related_issue: Some(Issue {
            number: 7,
            title: "Negative radius gives a positive area".into(),
            body: "`Circle(-1).area()` returns 3.14 instead of raising.".into(),
            comments: vec![Comment {
                author: "bob".into(),
                created_at: at("2024-02-28T10:00:00Z"),
                body: "Same for `Square(-2)`.".into(),
            }],
        }),
        relevant_files: vec![
            RelevantFile {
                path: "geometry/shapes.py".into(),
                content: SHAPES.into(),
            },
            RelevantFile {
                path: "README.md".into(),
                content: README.into(),
            },
        ],
        source: "github".into(),
    }
}

/// Where the texts differ, for a readable failure.
fn assert_text(actual: &str, expected: &str) {
    if actual != expected {
        let line = actual
            .lines()
            .zip(expected.lines())
            .position(|(a, e)| a != e)
            .unwrap_or_else(|| actual.lines().count().min(expected.lines().count()));
        panic!(
            "rendering differs from the golden text at line {}:\n  actual:   {:?}\n  expected: {:?}\n--- actual ---\n{actual}",
            line + 1,
            actual.lines().nth(line),
            expected.lines().nth(line)
        );
    }
}

#[test]
fn golden_python_rendering() {
    let record = geometry_pr();
    let r = run(std::slice::from_ref(&record), "format = \"python\"");
    assert_eq!(r.samples.len(), 1);
    let s = &r.samples[0];
    assert_text(&s.text, include_str!("golden/reconstruct_python.txt"));
    // No endpoint: no summary and the original messages, never invented text.
    assert_eq!(s.pr_summary, None);
    assert!(s.commits.iter().all(|c| c.refined_message.is_none()));
    assert_eq!(s.id, "acme/geometry#8");
    assert_eq!(s.format, "python");
    assert_eq!(s.commits.len(), 3);
    assert_eq!(s.commits[1].message, record.commits[1].message);
    assert_eq!(s.commits[1].diffs, record.commits[1].diffs);
    assert_eq!(s.relevant_files, record.relevant_files);
    assert_eq!(s.related_issue, record.related_issue);
    let m = &r.metrics;
    assert_eq!(m["records"], 1.0);
    assert_eq!(m["samples"], 1.0);
    assert_eq!(m["bytes"], s.text.len() as f64);
    assert_eq!(m["edits"], 3.0);
    assert_eq!(m["creates"], 1.0);
    assert_eq!(m["search_blocks_grown"], 0.0);
    assert_eq!(m["dropped"], 0.0);
    for reason in python::RenderError::REASONS {
        assert_eq!(m[&format!("render_failures.{reason}")], 0.0, "{reason}");
    }
    assert_eq!(m["llm.requests"], 0.0);
    assert_eq!(m["summaries"], 0.0);
}

#[test]
fn golden_general_rendering() {
    let r = run(&[geometry_pr()], "format = \"general\"");
    assert_eq!(r.samples.len(), 1);
    let s = &r.samples[0];
    assert_text(&s.text, include_str!("golden/reconstruct_general.txt"));
    assert_eq!(s.format, "general");
    assert_eq!(s.pr_summary, None);
    assert_eq!(r.metrics["llm.requests"], 0.0);
}

#[test]
fn default_format_is_python_and_params_are_checked() {
    let config = params("");
    assert_eq!(config["format"], "python");
    assert_eq!(config["max_grow"], 20);
    assert_eq!(config["llm"], serde_json::Value::Null);
    let config = params("[llm]\nbase_url = \"http://127.0.0.1:1/v1\"\nmodel = \"m\"\n");
    assert_eq!(config["llm"]["temperature"], 0.0);
    assert_eq!(config["llm"]["summary_max_tokens"], 512);
    assert_eq!(config["llm"]["message_max_tokens"], 256);
    assert_eq!(config["llm"]["patch_chars"], 2000);

    let rejected = |text: &str| {
        Reconstruct
            .check(toml::from_str(text).unwrap())
            .expect_err(text)
    };
    let e = rejected("formt = \"python\"");
    assert_eq!(e.key.as_deref(), Some("formt"));
    let e = rejected("format = \"xml\"");
    assert_eq!(e.key.as_deref(), Some("format"));
    let e = rejected("[llm]\nbase_url = \"http://h/v1\"\nmodel = \"m\"\nmax_token = 5\n");
    assert!(e.message.contains("max_token"), "{}", e.message);
    let e = rejected("[llm]\nbase_url = \"ftp://h\"\nmodel = \"m\"\n");
    assert_eq!(e.key.as_deref(), Some("llm.base_url"));
    let e = rejected("[llm]\nbase_url = \"http://h\"\nmodel = \"m\"\ntemperature = 3.0\n");
    assert_eq!(e.key.as_deref(), Some("llm.temperature"));
}

// ---------------------------------------------------------------------------------------------
// Search blocks, whole-file operations, multi-commit state, failures

fn one_commit(files: Vec<RelevantFile>, diffs: Vec<FileChange>) -> PrRecord {
    PrRecord {
        repo_name: "acme/x".into(),
        number: 1,
        title: "T".into(),
        commits: vec![Commit {
            sha: "abcdef1234567890".into(),
            message: "change".into(),
            diffs,
            ..Default::default()
        }],
        relevant_files: files,
        ..Default::default()
    }
}

fn file(path: &str, content: &str) -> RelevantFile {
    RelevantFile {
        path: path.into(),
        content: content.into(),
    }
}

/// The `# Edits` section of a Python rendering.
fn edits(text: &str) -> &str {
    &text[text.find("# Edits\n").expect("an Edits section")..]
}

#[test]
fn a_non_unique_search_block_grows_until_unique() {
    let content = "def a():\n    x = 1\n    return x\n\n\ndef b():\n    x = 1\n    return x\n\n\ndef c():\n    x = 1\n    return x\n";
    // A hunk without context lines (git diff -U0 style) in b: `x = 1` and `return x` occur
    // three times, so the block takes one line each side (`def b():` makes it unique).
    let record = one_commit(
        vec![file("m.py", content)],
        vec![modified(
            "m.py",
            patch(&[
                "@@ -7,2 +7,2 @@",
                "-    x = 1",
                "-    return x",
                "+    x = 2",
                "+    return x",
            ]),
            2,
            2,
        )],
    );
    let r = run(&[record], "");
    assert_eq!(
        edits(&r.samples[0].text),
        "# Edits\nchange\n\nEdit: m.py\nSearch:\n```\ndef b():\n    x = 1\n    return x\n\n```\nReplace:\n```\ndef b():\n    x = 2\n    return x\n\n```\n"
    );
    assert_eq!(r.metrics["search_blocks_grown"], 1.0);
    assert_eq!(r.metrics["search_grown_lines"], 2.0);
}

#[test]
fn a_block_still_ambiguous_after_max_grow_lines_drops_the_sample() {
    // 50 identical lines: changing the 25th leaves a 41-line block that occurs ten times.
    let content = "pass\n".repeat(50);
    let record = one_commit(
        vec![file("m.py", &content)],
        vec![modified(
            "m.py",
            patch(&["@@ -25 +25 @@", "-pass", "+return"]),
            1,
            1,
        )],
    );
    let r = run(std::slice::from_ref(&record), "");
    assert!(r.samples.is_empty());
    assert_eq!(r.metrics["render_failures.search_not_unique"], 1.0);
    assert_eq!(r.metrics["dropped"], 1.0);
    assert_eq!(r.metrics["records"], 1.0);
    let error = python::plan(&record, 20).unwrap_err();
    assert_eq!(
        error.to_string(),
        "commit abcdef123456: m.py: the search block of hunk 1 is not unique even with 20 more lines each side"
    );
    // With room for 30 lines the block becomes the whole file, which is unique.
    let r = run(std::slice::from_ref(&record), "max_grow = 30");
    assert_eq!(r.samples.len(), 1);
    let expected_replace = format!("{}return\n{}", "pass\n".repeat(24), "pass\n".repeat(25));
    assert!(edits(&r.samples[0].text).ends_with(&format!(
        "Search:\n```\n{content}```\nReplace:\n```\n{expected_replace}```\n"
    )));
    // The general format shows the patch as it is and never needs a unique block.
    let r = run(&[record], "format = \"general\"");
    assert_eq!(r.samples.len(), 1);
}

#[test]
fn creates_deletes_and_renames_have_their_own_rendering() {
    let record = one_commit(
        vec![
            file("pkg/old_name.py", "def f():\n    return 1\n"),
            file("pkg/gone.py", "X = 1\n"),
        ],
        vec![
            FileChange {
                path: "pkg/new_name.py".into(),
                previous_path: Some("pkg/old_name.py".into()),
                status: "renamed".into(),
                additions: 1,
                deletions: 1,
                patch: Some(patch(&[
                    "@@ -1,2 +1,2 @@",
                    " def f():",
                    "-    return 1",
                    "+    return 2",
                ])),
            },
            FileChange {
                path: "pkg/gone.py".into(),
                status: "removed".into(),
                deletions: 1,
                patch: Some(patch(&["@@ -1 +0,0 @@", "-X = 1"])),
                ..Default::default()
            },
            FileChange {
                path: "pkg/fresh.py".into(),
                status: "added".into(),
                additions: 2,
                patch: Some(patch(&["@@ -0,0 +1,2 @@", "+def g():", "+    return 3"])),
                ..Default::default()
            },
            FileChange {
                path: "pkg/empty.py".into(),
                status: "added".into(),
                patch: None,
                ..Default::default()
            },
            FileChange {
                path: "pkg/moved.py".into(),
                previous_path: Some("pkg/gone_too.py".into()),
                status: "renamed".into(),
                ..Default::default()
            },
        ],
    );
    let mut record = record;
    record
        .relevant_files
        .push(file("pkg/gone_too.py", "Y = 2\n"));
    let r = run(&[record], "");
    assert_eq!(
        edits(&r.samples[0].text),
        "# Edits
change

Rename: pkg/old_name.py -> pkg/new_name.py

Edit: pkg/new_name.py
Search:
```
def f():
    return 1
```
Replace:
```
def f():
    return 2
```

Delete: pkg/gone.py

Create: pkg/fresh.py
```
def g():
    return 3
```

Create: pkg/empty.py
```
```

Rename: pkg/gone_too.py -> pkg/moved.py
"
    );
    let m = &r.metrics;
    assert_eq!((m["creates"], m["deletes"], m["renames"]), (2.0, 1.0, 2.0));
    assert_eq!(m["edits"], 1.0);
}

#[test]
fn later_commits_edit_what_earlier_commits_wrote() {
    let mut record = one_commit(
        vec![file("app.py", "def main():\n    run()\n")],
        vec![
            modified(
                "app.py",
                patch(&[
                    "@@ -1,2 +1,4 @@",
                    " def main():",
                    "+    setup()",
                    "+    check()",
                    "     run()",
                ]),
                2,
                0,
            ),
            FileChange {
                path: "util.py".into(),
                status: "added".into(),
                additions: 2,
                patch: Some(patch(&["@@ -0,0 +1,2 @@", "+def setup():", "+    pass"])),
                ..Default::default()
            },
        ],
    );
    record.commits.push(Commit {
        sha: "second".into(),
        message: "drop the check, log instead".into(),
        diffs: vec![
            modified(
                "app.py",
                patch(&[
                    "@@ -1,4 +1,4 @@",
                    " def main():",
                    "     setup()",
                    "-    check()",
                    "+    log()",
                    "     run()",
                ]),
                1,
                1,
            ),
            modified(
                "util.py",
                patch(&[
                    "@@ -1,2 +1,2 @@",
                    " def setup():",
                    "-    pass",
                    "+    configure()",
                ]),
                1,
                1,
            ),
        ],
        ..Default::default()
    });
    let r = run(&[record], "");
    let text = edits(&r.samples[0].text);
    assert!(
        text.ends_with(
            "drop the check, log instead

Edit: app.py
Search:
```
def main():
    setup()
    check()
    run()
```
Replace:
```
def main():
    setup()
    log()
    run()
```

Edit: util.py
Search:
```
def setup():
    pass
```
Replace:
```
def setup():
    configure()
```
"
        ),
        "{text}"
    );
}

#[test]
fn malformed_and_mismatched_patches_drop_python_samples_with_their_reason() {
    let bad = |p: &str| {
        one_commit(
            vec![file("m.py", "a = 1\nb = 2\n")],
            vec![modified("m.py", p.to_string(), 1, 1)],
        )
    };
    let malformed = bad("@@ -1,2 +1,2 @@\n a = 1\n*b = 2\n");
    let mismatched = bad("@@ -1,2 +1,2 @@\n a = 1\n-b = 3\n+b = 4\n");
    let good = bad("@@ -1,2 +1,2 @@\n a = 1\n-b = 2\n+b = 4\n");
    let mut missing = good.clone();
    missing.commits[0].diffs[0].patch = None;
    let mut unknown = good.clone();
    unknown.relevant_files.clear();

    assert_eq!(
        python::plan(&malformed, 20).unwrap_err().to_string(),
        "commit abcdef123456: m.py: malformed patch at patch line 3: a hunk line must start with ' ', '-', '+' or '\\', found \"*b = 2\""
    );
    assert_eq!(
        python::plan(&mismatched, 20).unwrap_err().to_string(),
        "commit abcdef123456: m.py: hunk 1 does not apply: at file line 2 expected \"b = 3\", found \"b = 2\""
    );

    let records = [malformed, mismatched, missing, unknown, good];
    let r = run(&records, "");
    assert_eq!(r.samples.len(), 1);
    let m = &r.metrics;
    assert_eq!(m["records"], 5.0);
    assert_eq!(m["dropped"], 4.0);
    assert_eq!(m["render_failures.malformed_patch"], 1.0);
    assert_eq!(m["render_failures.patch_does_not_apply"], 1.0);
    assert_eq!(m["render_failures.missing_patch"], 1.0);
    assert_eq!(m["render_failures.unknown_file"], 1.0);
    assert_eq!(m["render_failures.search_not_unique"], 0.0);
    // The general format renders every one of them: it shows patches as they are.
    let r = run(&records, "format = \"general\"");
    assert_eq!(r.samples.len(), 5);
    assert_eq!(r.metrics["dropped"], 0.0);
}

// ---------------------------------------------------------------------------------------------
// The LLM path

/// A tiny OpenAI-compatible server: answers by what the user prompt contains.
struct FakeLlm {
    base_url: String,
    hits: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
}

const SUMMARY: &str = "Circle now rejects a negative radius with a ValueError that names the value. The README documents the behaviour and a test covers it.";
const REFINED: &str =
    "Reject a negative radius in Circle\n\nRaise ValueError instead of computing an area.";

fn answer(prompt: &str) -> (u16, String) {
    let chat = |content: &str| {
        serde_json::json!({
            "id": "chatcmpl-1",
            "object": "chat.completion",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
        })
        .to_string()
    };
    if prompt.starts_with("Summarize the pull request") {
        (200, chat(SUMMARY))
    } else if prompt.contains("Original message:\nvalidate radius") {
        (200, chat(REFINED))
    } else if prompt.contains("Original message:\nuse a clearer error message") {
        (200, "{\"choices\": [".into())
    } else {
        (500, "{\"error\": \"overloaded\"}".into())
    }
}

impl FakeLlm {
    fn start() -> FakeLlm {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let hits = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (h, s) = (hits.clone(), stop.clone());
        let handle = std::thread::spawn(move || {
            for stream in listener.incoming() {
                if s.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(stream) = stream else { continue };
                serve(stream, &h);
            }
        });
        FakeLlm {
            base_url: format!("http://{addr}/v1"),
            hits,
            stop,
            handle: Some(handle),
        }
    }

    fn hits(&self) -> Vec<String> {
        self.hits.lock().unwrap().clone()
    }

    /// Stops accepting and closes the port: later requests are refused.
    fn shutdown(mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let addr = self
            .base_url
            .trim_start_matches("http://")
            .trim_end_matches("/v1");
        let _ = TcpStream::connect(addr);
        self.handle.take().unwrap().join().unwrap();
    }
}

fn serve(stream: TcpStream, hits: &Mutex<Vec<String>>) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut request_line = String::new();
    reader.read_line(&mut request_line).unwrap();
    let mut length = 0usize;
    loop {
        let mut header = String::new();
        reader.read_line(&mut header).unwrap();
        if header == "\r\n" || header.is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':') {
            if name.eq_ignore_ascii_case("content-length") {
                length = value.trim().parse().unwrap();
            }
        }
    }
    assert!(
        request_line.starts_with("POST /v1/chat/completions "),
        "{request_line}"
    );
    let mut body = vec![0; length];
    reader.read_exact(&mut body).unwrap();
    let request: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let prompt = request["messages"][1]["content"]
        .as_str()
        .unwrap()
        .to_string();
    let (status, reply) = answer(&prompt);
    hits.lock().unwrap().push(prompt);
    let mut stream = stream;
    write!(
        stream,
        "HTTP/1.1 {status} {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{reply}",
        if status == 200 { "OK" } else { "Internal Server Error" },
        reply.len()
    )
    .unwrap();
}

#[test]
fn llm_enhancement_is_recorded_and_replays_offline_bit_identically() {
    let server = FakeLlm::start();
    let config = format!(
        "format = \"python\"\n[llm]\nbase_url = \"{}\"\nmodel = \"test-model\"\nmax_retries = 1\ntimeout_secs = 10\n",
        server.base_url
    );
    let dir = tempfile::tempdir().unwrap();
    let ledger_dir = dir.path().join("ledger");
    let record = geometry_pr();

    let first = run_in(&ledger_dir, std::slice::from_ref(&record), &config);
    let hits = server.hits();
    // A summary, three rewrites, and one retry of the 500.
    assert_eq!(hits.len(), 5, "{hits:#?}");
    assert!(hits[0].starts_with("Summarize the pull request"));
    assert_eq!(hits[3], hits[4], "the 500 is retried once");
    server.shutdown();

    let s = &first.samples[0];
    assert_eq!(s.pr_summary.as_deref(), Some(SUMMARY));
    assert_eq!(s.commits[0].refined_message.as_deref(), Some(REFINED));
    // Bad JSON and an HTTP 500: the original messages stay, the sample is not dropped.
    assert_eq!(s.commits[1].refined_message, None);
    assert_eq!(s.commits[2].refined_message, None);
    assert_eq!(s.commits[0].message, "validate radius");
    let golden = include_str!("golden/reconstruct_python.txt");
    let expected = golden.replace(
        "# Edits\nvalidate radius\n",
        &format!("# Edits\n{SUMMARY}\n\n{REFINED}\n"),
    );
    assert_text(&s.text, &expected);
    let m = &first.metrics;
    assert_eq!(m["llm.requests"], 4.0);
    assert_eq!(m["llm.recorded"], 0.0);
    assert_eq!(m["llm.failures"], 2.0);
    assert_eq!(m["summaries"], 1.0);
    assert_eq!(m["refined_messages"], 1.0);
    assert_eq!(m["samples"], 1.0);

    // The server is gone: every answer (the 500 and the bad JSON included) comes from the
    // ledger's observations, and the samples are the same bytes.
    let second = run_in(&ledger_dir, std::slice::from_ref(&record), &config);
    assert_eq!(second.hash, first.hash);
    assert_eq!(second.metrics["llm.recorded"], 4.0);
    assert_eq!(second.metrics["llm.failures"], 2.0);

    // An offline replay into a scratch store gives the same bytes too.
    let ledger = Ledger::open(&ledger_dir).unwrap();
    let scratch = BlobStore::new(&dir.path().join("scratch"));
    scratch.create_dirs().unwrap();
    // The input shard is content-addressed: both runs wrote the same one.
    assert_eq!(second.input, first.input);
    let input = first.input;
    // The stage re-executed offline into the scratch store.
    let replay = || {
        ledger::exec::replay_stage(
            &ledger,
            &Reconstruct,
            job("samples", params(&config), vec![("prs".into(), input)]),
            &scratch,
            Mode::Replay,
        )
    };
    let (finished, _) = replay().unwrap();
    assert_eq!(finished.outputs[0].hash, first.hash);

    // Tamper with one recorded answer: a replay refuses it and names it, and `verify` names
    // the blob. (Attribution to the outputs built from it is tested through the runner in
    // `github.rs`; this test executes the stage without recording a stage run.)
    let mut responses = Vec::new();
    for frame in ledger.scan().unwrap() {
        if let ledger::log::Frame::Good(s) = frame.unwrap() {
            if let ledger::event::EventKind::Observation(o) = s.event.kind {
                responses.push(o.response);
            }
        }
    }
    assert_eq!(responses.len(), 4);
    let victim = ledger.store().path(&responses[0]);
    let mut bytes = std::fs::read(&victim).unwrap();
    bytes[0] ^= 0x20;
    std::fs::write(&victim, bytes).unwrap();
    let err = format!("{:#}", replay().unwrap_err());
    assert!(err.contains("is damaged"), "{err}");
    assert!(err.contains(&responses[0].short()), "{err}");
    let report = ledger::verify::verify(&ledger, &ProgressBar::hidden()).expect("verify runs");
    assert!(report
        .problems
        .iter()
        .any(|p| p.kind == "blob" && p.subject == responses[0].to_hex()));
}

#[test]
fn without_an_endpoint_the_general_format_makes_no_requests_and_invents_nothing() {
    let r = run(&[geometry_pr()], "format = \"general\"");
    let text = &r.samples[0].text;
    assert!(!text.contains("<pr_summary>"));
    assert!(text.contains("<commit_message>\nvalidate radius\n</commit_message>"));
    assert_eq!(r.metrics["llm.requests"], 0.0);
}
