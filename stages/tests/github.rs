//! The GitHub collector driving the real octocrab client against a GitHub-compatible server on
//! 127.0.0.1, recording into a real ledger.

#![recursion_limit = "256"]

mod github_mock;

use github_mock::*;
use ledger::observe::Mode;
use ledger::stage::{Job, StageContext};
use ledger::store::BlobStore;
use ledger::{Ledger, Wait};
use stages::collect::github::{collect, GithubParams, GithubStats, RepoSearch};
use stages::record::{
    Comment, Commit, FileChange, Issue, PrRecord, RelevantFile, Review, ReviewComment,
};
use std::path::Path;
use std::sync::Once;
use std::time::{Duration, Instant};

const TOKEN: &str = "ghp_T0kenThatMustNeverBeRecorded_4242";
const TOKEN_ENV: &str = "DAVINCI_TEST_GITHUB_TOKEN";

fn set_token() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| std::env::set_var(TOKEN_ENV, TOKEN));
}

fn new_ledger() -> (tempfile::TempDir, Ledger) {
    set_token();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ledger");
    Ledger::init(&path).unwrap();
    let ledger = Ledger::open_writer(&path, Wait::Block).unwrap();
    (dir, ledger)
}

/// One repository, small pages, fast retries.
fn params(mock: &MockGithub, repos: &[&str]) -> GithubParams {
    GithubParams {
        base_url: mock.base_url(),
        site: "mock".into(),
        repos: repos.iter().map(|r| r.to_string()).collect(),
        per_page: 2,
        max_retries: 3,
        retry_base_ms: 20,
        max_rate_limit_wait_s: 5,
        secondary_wait_s: 1,
        timeout_s: 10,
        token_env: TOKEN_ENV.into(),
        ..GithubParams::default()
    }
}

/// acme/widgets by name plus a Python search (which finds widgets again, tools and empty).
fn full_params(mock: &MockGithub) -> GithubParams {
    GithubParams {
        search: Some(RepoSearch {
            min_stars: 5,
            language: Some("Python".into()),
            include_archived: false,
            max_repos: 10,
        }),
        ..params(mock, &["acme/widgets"])
    }
}

fn job(params: &GithubParams) -> Job {
    Job {
        node: "collect".into(),
        unit: None,
        config: serde_json::to_value(params).unwrap(),
        seed: 0,
        inputs: Vec::new(),
        workdir: ".".into(),
    }
}

fn collected(
    ctx: &mut StageContext,
    params: &GithubParams,
) -> (anyhow::Result<GithubStats>, Vec<PrRecord>) {
    let mut records = Vec::new();
    let result = collect(ctx, params, &mut |r| {
        records.push(r);
        Ok(())
    });
    (result, records)
}

fn run(ledger: &mut Ledger, params: &GithubParams) -> (anyhow::Result<GithubStats>, Vec<PrRecord>) {
    ledger::exec::run_in_context(ledger, job(params), |ctx| collected(ctx, params))
}

fn replay(
    ledger: &Ledger,
    scratch: &Path,
    params: &GithubParams,
) -> (anyhow::Result<GithubStats>, Vec<PrRecord>) {
    let store = BlobStore::new(scratch);
    store.create_dirs().unwrap();
    ledger::exec::replay_in_context(ledger, job(params), &store, Mode::Replay, |ctx| {
        collected(ctx, params)
    })
}

fn change(
    path: &str,
    previous: Option<&str>,
    status: &str,
    additions: u64,
    deletions: u64,
    patch: &str,
) -> FileChange {
    FileChange {
        path: path.into(),
        previous_path: previous.map(str::to_string),
        status: status.into(),
        additions,
        deletions,
        patch: Some(patch.into()),
    }
}

fn comment(author: &str, at: &str, body: &str) -> Comment {
    Comment {
        author: author.into(),
        created_at: Some(at.into()),
        body: body.into(),
    }
}

fn relevant(path: &str, content: &str) -> RelevantFile {
    RelevantFile {
        path: path.into(),
        content: content.into(),
    }
}

fn s(text: &str) -> Option<String> {
    Some(text.to_string())
}

fn widgets(number: u64) -> PrRecord {
    let base = PrRecord {
        repo_name: "acme/widgets".into(),
        repo_description: "Widgets for the acme toolkit".into(),
        number,
        merged: true,
        source: "github".into(),
        ..PrRecord::default()
    };
    match number {
        1 => PrRecord {
            title: "Refactor the parser and move helpers".into(),
            body: "Splits tokenizing out of `parse`, moves the helpers module.\n\nFixes #10".into(),
            author: "alice".into(),
            author_type: "User".into(),
            merged_at: s("2024-03-03T12:00:00Z"),
            created_at: s("2024-03-01T10:00:00Z"),
            base_sha: sha("b1"),
            merge_commit_sha: Some(sha("d1")),
            // The parent of the first commit, not the (moved) base.
            snapshot_sha: sha("a0"),
            commits: vec![
                Commit {
                    sha: sha("11"),
                    message: "Split tokenizer out of parse".into(),
                    author: "alice".into(),
                    date: s("2024-03-01T09:00:00Z"),
                    diffs_unavailable: false,
                    diffs: vec![
                        change("src/parser.py", None, "modified", 3, 2, PATCH_C1_PARSER),
                        change(
                            "src/helpers.py",
                            Some("src/util.py"),
                            "renamed",
                            1,
                            0,
                            PATCH_C1_HELPERS,
                        ),
                    ],
                },
                Commit {
                    sha: sha("22"),
                    message: "Add parser tests\n\nCovers the tokenizer.".into(),
                    // No GitHub account linked: the git author name.
                    author: "Alice Liddell".into(),
                    date: s("2024-03-01T09:30:00Z"),
                    diffs_unavailable: false,
                    diffs: vec![
                        change("tests/test_parser.py", None, "added", 4, 0, PATCH_C2_TESTS),
                        change("src/parser.py", None, "modified", 1, 1, PATCH_C2_PARSER),
                        change("README.md", None, "modified", 2, 0, PATCH_C2_README),
                    ],
                },
            ],
            files: vec![
                change("src/parser.py", None, "modified", 3, 2, PATCH_PR1_PARSER),
                change(
                    "src/helpers.py",
                    Some("src/util.py"),
                    "renamed",
                    1,
                    0,
                    PATCH_C1_HELPERS,
                ),
                change("tests/test_parser.py", None, "added", 4, 0, PATCH_C2_TESTS),
                change("README.md", None, "modified", 2, 0, PATCH_C2_README),
            ],
            comments: vec![
                comment(
                    "bob",
                    "2024-03-01T11:00:00Z",
                    "Nice cleanup. Does this change the public API?",
                ),
                comment(
                    "alice",
                    "2024-03-01T11:30:00Z",
                    "No, `parse` keeps its signature.",
                ),
                comment("dave", "2024-03-03T12:05:00Z", "Thanks both!"),
            ],
            reviews: vec![
                Review {
                    author: "bob".into(),
                    state: "CHANGES_REQUESTED".into(),
                    submitted_at: s("2024-03-02T08:00:00Z"),
                    body: "A couple of nits.".into(),
                    comments: vec![
                        ReviewComment {
                            author: "bob".into(),
                            path: "src/parser.py".into(),
                            line: Some(4),
                            diff_hunk: HUNK_PARSER.into(),
                            body: "Please name this `tokens`.".into(),
                            created_at: s("2024-03-02T07:59:00Z"),
                        },
                        ReviewComment {
                            author: "bob".into(),
                            path: "src/helpers.py".into(),
                            line: Some(1),
                            diff_hunk: HUNK_HELPERS.into(),
                            body: "Add a docstring?".into(),
                            created_at: s("2024-03-02T07:59:30Z"),
                        },
                    ],
                },
                Review {
                    author: "alice".into(),
                    state: "COMMENTED".into(),
                    submitted_at: s("2024-03-02T09:00:00Z"),
                    body: String::new(),
                    comments: vec![ReviewComment {
                        author: "alice".into(),
                        path: "src/parser.py".into(),
                        line: Some(4),
                        diff_hunk: HUNK_PARSER.into(),
                        body: "Renamed.".into(),
                        created_at: s("2024-03-02T09:00:00Z"),
                    }],
                },
                // An inline comment whose review the API does not list: a review of its own,
                // in time order; an outdated comment keeps its original line.
                Review {
                    author: "carol".into(),
                    state: "COMMENTED".into(),
                    submitted_at: s("2024-03-02T12:00:00Z"),
                    body: String::new(),
                    comments: vec![ReviewComment {
                        author: "carol".into(),
                        path: "src/parser.py".into(),
                        line: Some(2),
                        diff_hunk: HUNK_PARSER.into(),
                        body: "Drive-by: typo here.".into(),
                        created_at: s("2024-03-02T12:00:00Z"),
                    }],
                },
                Review {
                    author: "bob".into(),
                    state: "APPROVED".into(),
                    submitted_at: s("2024-03-03T10:00:00Z"),
                    body: "LGTM".into(),
                    comments: vec![],
                },
            ],
            related_issue: Some(Issue {
                number: 10,
                title: "Parser chokes on nested brackets".into(),
                body: "`parse('[[1]]')` raises IndexError.".into(),
                comments: vec![
                    comment("carol", "2024-02-21T10:00:00Z", "Confirmed on 2.1."),
                    comment("alice", "2024-02-28T10:00:00Z", "Working on it in #1."),
                ],
            }),
            // The renamed file under its old path; the added test file is not context.
            relevant_files: vec![
                relevant("src/parser.py", PARSER_AT_SNAPSHOT),
                relevant("src/util.py", UTIL_AT_SNAPSHOT),
                relevant("README.md", README_AT_SNAPSHOT),
            ],
            ..base
        },
        3 => PrRecord {
            title: "Bump requests from 2.31.0 to 2.32.0".into(),
            body: "Bumps [requests](https://github.com/psf/requests) from 2.31.0 to 2.32.0.".into(),
            author: "dependabot[bot]".into(),
            author_type: "Bot".into(),
            merged_at: s("2024-03-07T12:00:00Z"),
            created_at: s("2024-03-07T10:00:00Z"),
            base_sha: sha("b3"),
            merge_commit_sha: Some(sha("d3")),
            snapshot_sha: sha("b3"),
            commits: vec![Commit {
                sha: sha("33"),
                message: "Bump requests from 2.31.0 to 2.32.0".into(),
                author: "dependabot[bot]".into(),
                date: s("2024-03-07T09:59:00Z"),
                diffs_unavailable: false,
                diffs: vec![change(
                    "requirements.txt",
                    None,
                    "modified",
                    1,
                    1,
                    PATCH_REQUIREMENTS,
                )],
            }],
            files: vec![change(
                "requirements.txt",
                None,
                "modified",
                1,
                1,
                PATCH_REQUIREMENTS,
            )],
            relevant_files: vec![relevant("requirements.txt", REQUIREMENTS_AT_B3)],
            ..base
        },
        4 => PrRecord {
            title: "Document the CLI and drop old notes".into(),
            body: "Follow-up to #1.\r\n\r\nCLOSES #3, fixes acme/widgets#12".into(),
            author: "carol".into(),
            author_type: "User".into(),
            merged_at: s("2024-03-09T10:00:00Z"),
            created_at: s("2024-03-08T10:00:00Z"),
            base_sha: sha("b4"),
            merge_commit_sha: Some(sha("d4")),
            // The first commit has no parent: the base SHA.
            snapshot_sha: sha("b4"),
            commits: vec![Commit {
                sha: sha("44"),
                message: "Document the CLI".into(),
                author: "carol".into(),
                date: s("2024-03-08T09:00:00Z"),
                diffs_unavailable: false,
                diffs: vec![
                    change("docs/cli.md", None, "modified", 1, 1, PATCH_CLI_MD),
                    change("notes.txt", None, "removed", 0, 1, PATCH_NOTES),
                ],
            }],
            files: vec![
                change("docs/cli.md", None, "modified", 1, 1, PATCH_CLI_MD),
                change("notes.txt", None, "removed", 0, 1, PATCH_NOTES),
            ],
            comments: vec![comment("dave", "2024-03-09T11:00:00Z", "Thanks!")],
            reviews: vec![Review {
                author: "bob".into(),
                state: "APPROVED".into(),
                submitted_at: s("2024-03-09T09:00:00Z"),
                body: String::new(),
                comments: vec![],
            }],
            // #3 is a pull request, so the first closed issue is #12.
            related_issue: Some(Issue {
                number: 12,
                title: "CLI is undocumented".into(),
                body: String::new(),
                comments: vec![],
            }),
            relevant_files: vec![
                relevant("docs/cli.md", CLI_MD_AT_B4),
                relevant("notes.txt", NOTES_AT_B4),
            ],
            ..base
        },
        5 => PrRecord {
            title: "Handle empty input".into(),
            body: String::new(),
            author: "alice".into(),
            author_type: "User".into(),
            merged_at: s("2024-03-11T10:00:00Z"),
            created_at: s("2024-03-10T10:00:00Z"),
            base_sha: sha("b5"),
            merge_commit_sha: Some(sha("d5")),
            snapshot_sha: sha("5a"),
            commits: vec![Commit {
                sha: sha("55"),
                message: "Return [] for empty input".into(),
                author: "alice".into(),
                date: s("2024-03-10T09:00:00Z"),
                diffs_unavailable: false,
                diffs: vec![change(
                    "src/parser.py",
                    None,
                    "modified",
                    2,
                    0,
                    PATCH_PR5_PARSER,
                )],
            }],
            files: vec![change(
                "src/parser.py",
                None,
                "modified",
                2,
                0,
                PATCH_PR5_PARSER,
            )],
            // The pending (draft) review is not part of the conversation.
            reviews: vec![Review {
                author: "dave".into(),
                state: "COMMENTED".into(),
                submitted_at: s("2024-03-10T12:00:00Z"),
                body: "Looks fine.".into(),
                comments: vec![],
            }],
            relevant_files: vec![relevant("src/parser.py", PARSER_AT_5A)],
            ..base
        },
        _ => unreachable!(),
    }
}

fn tools_record() -> PrRecord {
    PrRecord {
        repo_name: "acme/tools".into(),
        repo_description: "Command-line tools".into(),
        number: 1,
        title: "Add --verbose flag".into(),
        body: "Resolves #2".into(),
        author: "dave".into(),
        author_type: "User".into(),
        merged: true,
        merged_at: s("2024-04-02T10:00:00Z"),
        created_at: s("2024-04-01T10:00:00Z"),
        base_sha: sha("6b"),
        merge_commit_sha: Some(sha("d6")),
        snapshot_sha: sha("6a"),
        commits: vec![Commit {
            sha: sha("66"),
            message: "Add --verbose".into(),
            author: "dave".into(),
            date: s("2024-04-01T09:00:00Z"),
            diffs_unavailable: false,
            diffs: vec![change("cli.py", None, "modified", 1, 0, PATCH_CLI_PY)],
        }],
        files: vec![change("cli.py", None, "modified", 1, 0, PATCH_CLI_PY)],
        comments: vec![],
        reviews: vec![],
        related_issue: Some(Issue {
            number: 2,
            title: "Need a verbose mode".into(),
            body: "Hard to debug without it.".into(),
            comments: vec![comment("dave", "2024-03-30T10:00:00Z", "On it.")],
        }),
        relevant_files: vec![relevant("cli.py", CLI_PY_AT_6A)],
        source: "github".into(),
    }
}

fn all_records() -> Vec<PrRecord> {
    vec![
        widgets(5),
        widgets(4),
        widgets(3),
        widgets(1),
        tools_record(),
    ]
}

/// Asserts records one by one, so that a failure shows the PR that differs.
fn assert_records(got: &[PrRecord], want: &[PrRecord]) {
    let numbers = |rs: &[PrRecord]| {
        rs.iter()
            .map(|r| format!("{}#{}", r.repo_name, r.number))
            .collect::<Vec<_>>()
    };
    assert_eq!(numbers(got), numbers(want));
    for (g, w) in got.iter().zip(want) {
        assert_eq!(g, w, "{}#{}", w.repo_name, w.number);
    }
}

/// No byte of the ledger directory (log, blobs, index) holds the token.
fn assert_token_absent(dir: &Path) {
    let mut files = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                files += 1;
                let bytes = std::fs::read(&path).unwrap();
                assert!(
                    !bytes.windows(TOKEN.len()).any(|w| w == TOKEN.as_bytes()),
                    "the token is in {}",
                    path.display()
                );
                assert!(
                    !bytes.windows(7).any(|w| w.eq_ignore_ascii_case(b"bearer ")),
                    "an authorization header is in {}",
                    path.display()
                );
            }
        }
    }
    assert!(files > 3, "the ledger should hold a log and blobs");
}

fn requested(mock: &MockGithub, prefix: &str) -> Vec<Logged> {
    mock.requests()
        .into_iter()
        .filter(|r| r.target.starts_with(prefix))
        .collect()
}

#[test]
fn full_crawl_follows_pagination_and_yields_exact_records() {
    let (dir, mut ledger) = new_ledger();
    let mock = MockGithub::start(World::standard(), Some(TOKEN));
    let params = full_params(&mock);
    let (stats, records) = run(&mut ledger, &params);
    let stats = stats.unwrap();
    assert_records(&records, &all_records());

    let log = mock.requests();
    assert_eq!(stats.requests as usize, log.len());
    assert_eq!(
        (stats.from_cache, stats.retries, stats.rate_limit_waits),
        (0, 0, 0)
    );
    assert_eq!((stats.prs, stats.repos), (5, 3));
    assert!(stats.skipped.is_empty(), "{:?}", stats.skipped);
    assert!(log.iter().all(
        |r| r.status == 200 && r.authorization.as_deref() == Some(&*format!("Bearer {TOKEN}"))
    ));
    // Pagination: search (2 pages), PR list (3 pages), files of #1 (2), commit 22's files (2),
    // conversation of #1 (2).
    assert_eq!(requested(&mock, "/search/repositories").len(), 2);
    assert_eq!(requested(&mock, "/repos/acme/widgets/pulls?").len(), 3);
    assert_eq!(
        requested(&mock, "/repos/acme/widgets/pulls/1/files").len(),
        2
    );
    assert_eq!(
        requested(&mock, &format!("/repos/acme/widgets/commits/{}", sha("22"))).len(),
        2
    );
    assert_eq!(
        requested(&mock, "/repos/acme/widgets/issues/1/comments").len(),
        2
    );
    // The unmerged PR is listed but never fetched; added files are not read; zero counts
    // (comments, review comments) cost no request.
    assert!(requested(&mock, "/repos/acme/widgets/pulls/2").is_empty());
    assert!(requested(&mock, "/repos/acme/widgets/contents/tests").is_empty());
    assert!(requested(&mock, "/repos/acme/widgets/issues/3/comments").is_empty());
    assert!(requested(&mock, "/repos/acme/widgets/pulls/3/comments").is_empty());
    // The snapshot is the parent of the first commit, never the base.
    assert!(
        requested(&mock, "/repos/acme/widgets/contents/src/parser.py")
            .iter()
            .all(|r| !r.target.contains(&sha("b1")))
    );

    // A second run answers everything from the recordings.
    let before = mock.request_count();
    let (again, records_again) = run(&mut ledger, &params);
    let again = again.unwrap();
    assert_records(&records_again, &all_records());
    assert_eq!(mock.request_count(), before, "nothing is fetched twice");
    assert_eq!((again.requests, again.from_cache), (0, stats.requests));
    drop(ledger);
    assert_token_absent(&dir.path().join("ledger"));
}

#[test]
fn max_prs_per_repo_stops_the_listing() {
    let (_dir, mut ledger) = new_ledger();
    let mock = MockGithub::start(World::standard(), Some(TOKEN));
    let params = GithubParams {
        max_prs_per_repo: Some(2),
        ..params(&mock, &["acme/widgets"])
    };
    let (stats, records) = run(&mut ledger, &params);
    assert_records(&records, &[widgets(5), widgets(4)]);
    assert_eq!(stats.unwrap().prs, 2);
    assert_eq!(requested(&mock, "/repos/acme/widgets/pulls?").len(), 1);
}

#[test]
fn replay_rebuilds_the_collection_offline() {
    let (dir, mut ledger) = new_ledger();
    let mut mock = MockGithub::start(World::standard(), Some(TOKEN));
    let params = full_params(&mock);
    let (stats, records) = run(&mut ledger, &params);
    let stats = stats.unwrap();
    mock.shutdown();

    let (replayed, replayed_records) = replay(&ledger, &dir.path().join("scratch"), &params);
    let replayed = replayed.unwrap();
    assert_eq!(replayed_records, records);
    assert_records(&replayed_records, &all_records());
    assert_eq!(replayed.requests, 0);
    assert_eq!(replayed.from_cache, stats.requests);

    // What was never recorded cannot be replayed.
    let other = GithubParams {
        epoch: "another crawl".into(),
        ..params.clone()
    };
    let err = replay(&ledger, &dir.path().join("scratch2"), &other)
        .0
        .unwrap_err();
    assert!(format!("{err:#}").contains("never recorded"), "{err:#}");
}

#[test]
fn primary_rate_limit_waits_for_the_reset() {
    let (_dir, mut ledger) = new_ledger();
    let mock = MockGithub::start(World::standard(), Some(TOKEN));
    mock.fault(Fault::new(
        "/repos/acme/tools/pulls/1",
        FaultKind::PrimaryLimit,
        Some(1),
    ));
    let start = Instant::now();
    let (stats, records) = run(&mut ledger, &params(&mock, &["acme/tools"]));
    let stats = stats.unwrap();
    assert!(
        start.elapsed() >= Duration::from_millis(900),
        "{:?}",
        start.elapsed()
    );
    assert_records(&records, &[tools_record()]);
    assert_eq!((stats.rate_limit_waits, stats.retries), (1, 1));
    let tries: Vec<u16> = requested(&mock, "/repos/acme/tools/pulls/1")
        .iter()
        .filter(|r| r.path == "/repos/acme/tools/pulls/1")
        .map(|r| r.status)
        .collect();
    assert_eq!(tries, vec![403, 200]);
    // The 403 was not recorded: a rerun sends nothing.
    let (again, _) = run(&mut ledger, &params(&mock, &["acme/tools"]));
    assert_eq!(again.unwrap().requests, 0);
}

#[test]
fn an_exhausted_quota_pauses_the_next_request_until_the_reset() {
    let (_dir, mut ledger) = new_ledger();
    let mock = MockGithub::start(World::standard(), Some(TOKEN));
    mock.fault(Fault::new(
        "/repos/acme/tools/pulls/1",
        FaultKind::LastOfQuota,
        Some(1),
    ));
    let (stats, records) = run(&mut ledger, &params(&mock, &["acme/tools"]));
    let stats = stats.unwrap();
    assert_records(&records, &[tools_record()]);
    assert_eq!((stats.rate_limit_waits, stats.retries), (1, 0));
    let log = mock.requests();
    let at = log
        .iter()
        .position(|r| r.path == "/repos/acme/tools/pulls/1")
        .unwrap();
    let gap = log[at + 1].at - log[at].at;
    assert!(
        gap >= Duration::from_millis(900),
        "the next request came {gap:?} later"
    );
    assert!(log.iter().all(|r| r.status == 200));
}

#[test]
fn secondary_rate_limits_wait_for_retry_after() {
    let (_dir, mut ledger) = new_ledger();
    let mock = MockGithub::start(World::standard(), Some(TOKEN));
    let message = r#"{"message":"You have exceeded a secondary rate limit. Please wait a few minutes before you try again.","documentation_url":"https://docs.github.com/rest/overview/rate-limits-for-the-rest-api#about-secondary-rate-limits","status":"403"}"#;
    mock.fault(Fault::status(
        "/repos/acme/tools/pulls/1/files",
        403,
        &[("retry-after", "1")],
        message,
        Some(1),
    ));
    mock.fault(Fault::status(
        "/repos/acme/tools/issues/2",
        429,
        &[("retry-after", "1")],
        r#"{"message":"Too Many Requests"}"#,
        Some(1),
    ));
    let start = Instant::now();
    let (stats, records) = run(&mut ledger, &params(&mock, &["acme/tools"]));
    let stats = stats.unwrap();
    assert!(
        start.elapsed() >= Duration::from_millis(1900),
        "{:?}",
        start.elapsed()
    );
    assert_records(&records, &[tools_record()]);
    assert_eq!((stats.rate_limit_waits, stats.retries), (2, 2));
    let statuses = |path: &str| -> Vec<u16> {
        mock.requests()
            .iter()
            .filter(|r| r.path == path)
            .map(|r| r.status)
            .collect()
    };
    assert_eq!(statuses("/repos/acme/tools/pulls/1/files"), vec![403, 200]);
    assert_eq!(statuses("/repos/acme/tools/issues/2"), vec![429, 200]);
}

#[test]
fn server_errors_are_retried_with_backoff() {
    let (_dir, mut ledger) = new_ledger();
    let mock = MockGithub::start(World::standard(), Some(TOKEN));
    mock.fault(Fault::status(
        "/repos/acme/tools/pulls/1/commits",
        502,
        &[],
        "<html>Bad Gateway</html>",
        Some(2),
    ));
    mock.fault(Fault::status(
        "/repos/acme/tools/contents/cli.py",
        500,
        &[],
        r#"{"message":"Server Error"}"#,
        Some(1),
    ));
    let start = Instant::now();
    let (stats, records) = run(&mut ledger, &params(&mock, &["acme/tools"]));
    let stats = stats.unwrap();
    assert_records(&records, &[tools_record()]);
    assert_eq!((stats.retries, stats.rate_limit_waits), (3, 0));
    // Backoff 20 ms, then 40 ms, then 20 ms for the second failure.
    assert!(start.elapsed() >= Duration::from_millis(80));
    let statuses: Vec<u16> = mock
        .requests()
        .iter()
        .filter(|r| r.path == "/repos/acme/tools/pulls/1/commits")
        .map(|r| r.status)
        .collect();
    assert_eq!(statuses, vec![502, 502, 200]);
}

#[test]
fn a_persistent_server_error_fails_naming_the_url_and_status() {
    let (_dir, mut ledger) = new_ledger();
    let mock = MockGithub::start(World::standard(), Some(TOKEN));
    mock.fault(Fault::status(
        "/repos/acme/tools/pulls/1",
        503,
        &[],
        r#"{"message":"Service Unavailable"}"#,
        None,
    ));
    let params = GithubParams {
        max_retries: 2,
        ..params(&mock, &["acme/tools"])
    };
    let err = run(&mut ledger, &params).0.unwrap_err();
    let text = format!("{err:#}");
    assert!(
        text.contains(&format!("{}/repos/acme/tools/pulls/1", mock.base_url())),
        "{text}"
    );
    assert!(text.contains("HTTP 503 Service Unavailable"), "{text}");
    assert!(text.contains("gave up after 3 attempts"), "{text}");
    assert_eq!(requested(&mock, "/repos/acme/tools/pulls/1").len(), 3);
}

#[test]
fn a_rejected_token_fails_at_once() {
    let (_dir, mut ledger) = new_ledger();
    let mock = MockGithub::start(World::standard(), Some(TOKEN));
    let params = GithubParams {
        token_env: "DAVINCI_TEST_GITHUB_TOKEN_THAT_IS_NOT_SET".into(),
        ..params(&mock, &["acme/tools"])
    };
    let err = run(&mut ledger, &params).0.unwrap_err();
    let text = format!("{err:#}");
    assert!(
        text.contains("/repos/acme/tools: HTTP 401 Unauthorized: Bad credentials"),
        "{text}"
    );
    assert_eq!(mock.request_count(), 1, "a 401 is not retried");
}

#[test]
fn not_found_and_unavailable_for_legal_reasons_are_skipped_and_recorded() {
    let (_dir, mut ledger) = new_ledger();
    let mock = MockGithub::start(World::standard(), Some(TOKEN));
    // The file is gone at the snapshot.
    mock.fault(Fault::status("/repos/acme/tools/contents/cli.py", 404, &[], r#"{"message":"Not Found","documentation_url":"https://docs.github.com/rest/repos/contents#get-repository-content","status":"404"}"#, None));
    let params = params(&mock, &["acme/gone", "acme/dmca", "acme/tools"]);
    let (stats, records) = run(&mut ledger, &params);
    let stats = stats.unwrap();
    let base = mock.base_url();
    let expected_skips = vec![
        (
            format!("{base}/repos/acme/gone"),
            "HTTP 404 Not Found: Not Found".to_string(),
        ),
        (
            format!("{base}/repos/acme/dmca"),
            "HTTP 451 Unavailable For Legal Reasons: Repository access blocked".to_string(),
        ),
        (
            format!("{base}/repos/acme/tools/contents/cli.py?ref={}", sha("6a")),
            "HTTP 404 Not Found: Not Found".to_string(),
        ),
    ];
    assert_eq!(stats.skipped, expected_skips);
    assert_records(
        &records,
        &[PrRecord {
            relevant_files: vec![],
            ..tools_record()
        }],
    );
    assert_eq!(stats.retries, 0);

    // The answers were recorded: a rerun sends nothing and skips the same things.
    let before = mock.request_count();
    let (again, records_again) = run(&mut ledger, &params);
    let again = again.unwrap();
    assert_eq!(mock.request_count(), before);
    assert_eq!(again.skipped, expected_skips);
    assert_eq!(records_again, records);
    assert_eq!((again.requests, again.from_cache), (0, stats.requests));
}

#[test]
fn malformed_json_fails_naming_the_url_and_is_not_recorded() {
    let (_dir, mut ledger) = new_ledger();
    let mock = MockGithub::start(World::standard(), Some(TOKEN));
    mock.fault(Fault::new(
        "/repos/acme/tools/pulls/1",
        FaultKind::Malformed,
        None,
    ));
    let params = GithubParams {
        max_retries: 1,
        ..params(&mock, &["acme/tools"])
    };
    let err = run(&mut ledger, &params).0.unwrap_err();
    let text = format!("{err:#}");
    assert!(
        text.contains(&format!(
            "GET {}/repos/acme/tools/pulls/1:",
            mock.base_url()
        )),
        "{text}"
    );
    assert!(text.contains("not valid JSON"), "{text}");
    assert_eq!(requested(&mock, "/repos/acme/tools/pulls/1").len(), 2);

    // Nothing malformed was recorded: once the server answers properly the crawl finishes,
    // fetching that request again but not the ones before it.
    mock.clear_faults();
    let before = mock.request_count();
    let (stats, records) = run(&mut ledger, &params);
    let stats = stats.unwrap();
    assert_records(&records, &[tools_record()]);
    let after = &mock.requests()[before..];
    assert_eq!(after[0].path, "/repos/acme/tools/pulls/1");
    assert!(after.iter().all(
        |r| r.path != "/repos/acme/tools" && !r.target.starts_with("/repos/acme/tools/pulls?")
    ));
    assert_eq!(stats.from_cache, 2);
}

#[test]
fn a_connection_cut_mid_crawl_fails_clearly_and_the_resume_refetches_nothing() {
    let (dir, mut ledger) = new_ledger();
    let first = MockGithub::start(World::standard(), Some(TOKEN));
    // Half a body, then the server is gone for good.
    first.fault(Fault::new(
        "/repos/acme/widgets/pulls/1/reviews",
        FaultKind::CutAndDie,
        Some(1),
    ));
    let params = GithubParams {
        max_retries: 2,
        retry_base_ms: 10,
        ..full_params(&first)
    };
    let (result, early) = run(&mut ledger, &params);
    let text = format!("{:#}", result.unwrap_err());
    assert!(
        text.contains(&format!(
            "GET {}/repos/acme/widgets/pulls/1/reviews?per_page=2",
            first.base_url()
        )),
        "{text}"
    );
    assert!(text.contains("gave up after 3 attempts"), "{text}");
    assert!(
        text.contains("first failure: request failed: reading the body"),
        "{text}"
    );
    assert_records(&early, &all_records()[..3]);

    // A healthy server elsewhere: the resume sends only what was not answered before.
    let second = MockGithub::start(World::standard(), Some(TOKEN));
    let resumed = GithubParams {
        base_url: second.base_url(),
        ..params.clone()
    };
    let (stats, records) = run(&mut ledger, &resumed);
    let stats = stats.unwrap();
    assert_records(&records, &all_records());
    let answered: Vec<String> = first
        .requests()
        .into_iter()
        .filter(|r| r.status == 200 && !r.cut)
        .map(|r| r.target)
        .collect();
    let refetched: Vec<String> = second
        .requests()
        .into_iter()
        .map(|r| r.target)
        .filter(|t| answered.contains(t))
        .collect();
    assert!(refetched.is_empty(), "fetched again: {refetched:?}");
    assert_eq!(
        second.requests()[0].target,
        "/repos/acme/widgets/pulls/1/reviews?per_page=2"
    );
    assert_eq!(stats.from_cache as usize, answered.len());
    assert_eq!(stats.requests as usize, second.request_count());
    drop(ledger);
    assert_token_absent(&dir.path().join("ledger"));
}

#[test]
fn revalidation_sends_if_none_match_and_keeps_what_304_confirms() {
    let (dir, mut ledger) = new_ledger();
    let mock = MockGithub::start(World::standard(), Some(TOKEN));
    let may = GithubParams {
        epoch: "2024-05".into(),
        ..params(&mock, &["acme/tools"])
    };
    let (first, records) = run(&mut ledger, &may);
    let first = first.unwrap();
    assert_records(&records, &[tools_record()]);
    assert!(mock.requests().iter().all(|r| r.if_none_match.is_none()));

    // A month later the issue has one more comment.
    mock.edit(|world| {
        let issue = &mut world.repo_mut("tools").issues[0];
        issue.comments.push(CommentSpec {
            id: 702,
            user: ALICE,
            body: "Shipped in 1.2.",
            at: "2024-04-02T11:00:00Z",
        });
    });
    let june = GithubParams {
        epoch: "2024-06".into(),
        revalidate_epoch: Some("2024-05".into()),
        ..may.clone()
    };
    let before = mock.request_count();
    let (second, records_june) = run(&mut ledger, &june);
    let second = second.unwrap();
    let mut expected = tools_record();
    expected
        .related_issue
        .as_mut()
        .unwrap()
        .comments
        .push(comment("alice", "2024-04-02T11:00:00Z", "Shipped in 1.2."));
    assert_records(&records_june, &[expected.clone()]);
    let log = &mock.requests()[before..];
    assert_eq!(log.len() as u64, first.requests);
    assert!(log.iter().all(|r| r
        .if_none_match
        .as_deref()
        .is_some_and(|e| e.starts_with("W/\""))));
    let changed: Vec<&str> = log
        .iter()
        .filter(|r| r.status == 200)
        .map(|r| r.path.as_str())
        .collect();
    assert_eq!(
        changed,
        vec![
            "/repos/acme/tools/issues/2",
            "/repos/acme/tools/issues/2/comments"
        ]
    );
    assert_eq!(second.not_modified, first.requests - 2);
    assert_eq!(
        log.iter().filter(|r| r.status == 304).count() as u64,
        second.not_modified
    );

    // Each epoch replays on its own.
    let (may_replay, may_records) = replay(&ledger, &dir.path().join("s1"), &may);
    assert_eq!(may_records, records);
    assert_eq!(may_replay.unwrap().requests, 0);
    let (june_replay, june_records) = replay(&ledger, &dir.path().join("s2"), &june);
    assert_eq!(june_records, vec![expected]);
    assert_eq!(june_replay.unwrap().not_modified, second.not_modified);
    drop(ledger);
    assert_token_absent(&dir.path().join("ledger"));
}

/// The `collect` stage driven by an experiment config (`source = "github"`), feeding `filter`.
#[test]
fn the_collect_stage_crawls_github_from_a_config() {
    use ledger::config::Experiment;
    use ledger::runner::{run as run_experiment, RunOptions};
    let (dir, mut ledger) = new_ledger();
    let mock = MockGithub::start(World::standard(), Some(TOKEN));
    let config = format!(
        r#"
[[stage]]
id = "prs"
uses = "collect"
source = "github"

[stage.github]
base_url = "{}"
site = "mock"
repos = ["acme/widgets"]
per_page = 2
token_env = "{TOKEN_ENV}"

[[stage]]
id = "python"
uses = "filter"
inputs = {{ prs = "prs.prs" }}
"#,
        mock.base_url()
    );
    let path = dir.path().join("crawl.toml");
    std::fs::write(&path, config).unwrap();
    let registry = stages::registry();
    let experiment = Experiment::load(&path, &registry).unwrap();
    let opts = RunOptions {
        progress: false,
        ..Default::default()
    };
    let report = run_experiment(&mut ledger, &registry, &experiment, &opts).unwrap();
    let report_first = report.clone();
    let metric = |step: usize, name: &str| {
        report.steps[step]
            .metrics
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| *v)
            .unwrap_or_else(|| panic!("no metric {name}"))
    };
    let collected = metric(0, "records");
    assert!(collected >= 2.0, "{:?}", report.steps[0].metrics);
    assert_eq!(metric(0, "http.requests"), mock.requests().len() as f64);
    assert_eq!(metric(1, "records.in"), collected);
    assert!(
        metric(1, "dropped.bot_author") >= 1.0,
        "{:?}",
        report.steps[1].metrics
    );
    assert_token_absent(dir.path());

    // A second run of the same config is a cache hit: nothing is sent.
    let before = mock.requests().len();
    run_experiment(&mut ledger, &registry, &experiment, &opts).unwrap();
    assert_eq!(mock.requests().len(), before);

    // Tamper with one recorded response: `verify` names it and every output built from it,
    // through both stages.
    let mut response = None;
    for frame in ledger.scan().unwrap() {
        if let ledger::log::Frame::Good(s) = frame.unwrap() {
            if let ledger::event::EventKind::Observation(o) = s.event.kind {
                response.get_or_insert(o.response);
            }
        }
    }
    let response = response.expect("responses were recorded");
    let path = ledger.store().path(&response);
    let mut bytes = std::fs::read(&path).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x01;
    std::fs::write(&path, bytes).unwrap();
    let report = ledger::verify::verify(&ledger, &indicatif::ProgressBar::hidden()).unwrap();
    assert!(report
        .problems
        .iter()
        .any(|p| p.kind == "blob" && p.subject == response.to_hex()));
    for step in &report_outputs(&report_first) {
        assert_eq!(
            report.downstream.get(step).map(String::as_str),
            Some(response.to_hex().as_str()),
            "{:?}",
            report.downstream
        );
    }
}

fn report_outputs(report: &ledger::runner::RunReport) -> Vec<String> {
    report
        .steps
        .iter()
        .flat_map(|s| s.outputs.iter().map(|(_, h)| h.clone()))
        .collect()
}

#[test]
fn a_commit_github_no_longer_has_costs_its_diffs_not_the_pull_request() {
    let (_dir, mut ledger) = new_ledger();
    let mock = MockGithub::start(World::standard(), Some(TOKEN));
    let gone = format!("/repos/acme/tools/commits/{}", sha("66"));
    let message = r#"{"message":"No commit found for SHA: 66","documentation_url":"https://docs.github.com/rest/commits/commits#get-a-commit","status":"422"}"#;
    mock.fault(Fault::status(&gone, 422, &[], message, None));
    let params = params(&mock, &["acme/tools"]);
    let (stats, records) = run(&mut ledger, &params);
    let stats = stats.unwrap();
    let base = mock.base_url();
    assert_eq!(
        stats.skipped,
        vec![(
            format!("{base}{gone}?per_page={}", params.per_page),
            "HTTP 422 Unprocessable Entity: No commit found for SHA: 66".to_string()
        )]
    );
    assert_eq!(stats.commits_unavailable, 1);
    let mut want = tools_record();
    want.commits[0].diffs = Vec::new();
    want.commits[0].diffs_unavailable = true;
    assert_records(&records, &[want]);
}

#[test]
fn a_pull_request_listed_as_merged_whose_detail_says_unmerged_is_skipped_with_a_reason() {
    let (_dir, mut ledger) = new_ledger();
    let mock = MockGithub::start(World::standard(), Some(TOKEN));
    let detail = r#"{"number":1,"title":"Add --verbose flag","body":"Resolves #2","state":"closed",
        "user":{"login":"dave","id":4,"type":"User"},"created_at":"2024-04-01T10:00:00Z",
        "merged":false,"merged_at":null,"merge_commit_sha":null,"comments":0,"review_comments":0,
        "base":{"sha":"6b6b6b6b6b6b6b6b6b6b6b6b6b6b6b6b6b6b6b6b"}}"#;
    mock.fault(Fault::status(
        "/repos/acme/tools/pulls/1",
        200,
        &[],
        detail,
        None,
    ));
    let params = params(&mock, &["acme/tools"]);
    let (stats, records) = run(&mut ledger, &params);
    let stats = stats.unwrap();
    assert!(records.is_empty(), "{records:?}");
    assert_eq!(
        stats.skipped,
        vec![(
            format!("{}/repos/acme/tools/pulls/1", mock.base_url()),
            "PR #1: listed as merged, but its detail says `merged: false` with no `merged_at`"
                .to_string()
        )]
    );
}
