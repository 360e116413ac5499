//! SWE-bench grading, as the official harness (`swebench==5.0.2`) grades, plus a few
//! deliberate refusals of passes a patch can fake.
//!
//! For an instance in a container at its `base_commit`:
//! 1. the model patch is applied by the harness's cascade — `git apply --verbose`, then
//!    `--3way`, then `--reject`, then `patch --batch --forward --fuzz=5 -p1` — with the tree
//!    reset between attempts (`git checkout -- .` and `git clean -fd`: ignored build outputs
//!    such as an editable install's generated `_version.py` or in-tree compiled extensions
//!    stay), and "already applied" when it reverse-applies; the method is recorded;
//! 2. the files the test patch modifies are checked out at `base_commit` and the test patch
//!    is applied;
//! 3. the repository's test command for its version (`specs`), with the test files the test
//!    patch touches, runs;
//! 4. the output is parsed by the repository's parser (`parsers`; overridable per instance,
//!    `log_parser`, or per run) and graded by the harness's rules (`harness`): a PASSED or
//!    XFAIL test passes; FAIL_TO_PASS fails on FAILED, ERROR, SKIPPED or absence, PASS_TO_PASS
//!    only on FAILED, ERROR or absence; resolved is `RESOLVED_FULL`;
//! 5. `strict` lists the passes refused here; the instance is resolved when the harness
//!    resolves it and no FAIL_TO_PASS / PASS_TO_PASS test's pass was refused.
//!
//! The report carries both verdicts, so a score can always be compared with the harness's.

pub mod harness;
pub mod parsers;
pub mod specs;
pub mod strict;

use crate::container::{shell_quote, Container, ExecRequest};
use crate::instance::TaskInstance;
use harness::{EvalType, Outcome, Resolution};
use indexmap::IndexMap;
use parsers::LogParser;
use serde::{Deserialize, Serialize};
use std::time::Duration;
use strict::Refusal;

/// The harness's status vocabulary (its `TestStatus` enum, in its order).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum TestStatus {
    Failed,
    Passed,
    Skipped,
    Error,
    Xfail,
}

impl TestStatus {
    pub const ALL: [TestStatus; 5] = [
        TestStatus::Failed,
        TestStatus::Passed,
        TestStatus::Skipped,
        TestStatus::Error,
        TestStatus::Xfail,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            TestStatus::Failed => "FAILED",
            TestStatus::Passed => "PASSED",
            TestStatus::Skipped => "SKIPPED",
            TestStatus::Error => "ERROR",
            TestStatus::Xfail => "XFAIL",
        }
    }

    /// PASSED and XFAIL count as passed.
    pub fn is_pass(self) -> bool {
        matches!(self, TestStatus::Passed | TestStatus::Xfail)
    }
}

/// A parsed status: one of the five words, or the token a parser's rule read where a status
/// stands (`PASSEDx`), which the harness keeps as it is.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Status {
    Known(TestStatus),
    Other(String),
}

impl Status {
    pub fn from_token(t: &str) -> Status {
        TestStatus::ALL
            .into_iter()
            .find(|s| s.as_str() == t)
            .map(Status::Known)
            .unwrap_or_else(|| Status::Other(t.to_string()))
    }
    pub fn is_pass(&self) -> bool {
        matches!(self, Status::Known(s) if s.is_pass())
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Status::Known(s) => f.write_str(s.as_str()),
            Status::Other(t) => f.write_str(t),
        }
    }
}

impl Serialize for Status {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Status {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(Status::from_token(&String::deserialize(d)?))
    }
}

/// One test's parsed status and the 0-based line that decided it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub status: Status,
    pub line: usize,
}

/// Test id → status, in first-seen order (a later line replaces the status in place).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StatusMap(IndexMap<String, Entry>);

impl StatusMap {
    pub fn set(&mut self, name: String, status: Status, line: usize) {
        self.0.insert(name, Entry { status, line });
    }
    pub fn get(&self, name: &str) -> Option<&Entry> {
        self.0.get(name)
    }
    pub fn get_key_value(&self, name: &str) -> Option<(&String, &Entry)> {
        self.0.get_key_value(name)
    }
    pub fn status(&self, name: &str) -> Option<&Status> {
        self.0.get(name).map(|e| &e.status)
    }
    pub fn iter(&self) -> impl Iterator<Item = (&String, &Entry)> {
        self.0.iter()
    }
    pub fn len(&self) -> usize {
        self.0.len()
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    /// `(id, status)` pairs in order, as the harness's dict holds them.
    pub fn pairs(&self) -> Vec<(String, String)> {
        self.0
            .iter()
            .map(|(k, e)| (k.clone(), e.status.to_string()))
            .collect()
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TestOutcome {
    pub name: String,
    /// The status the harness reads for it (after its truncated-id match); `None`: not in
    /// the log.
    pub status: Option<Status>,
    /// How the harness counts it.
    pub harness: Outcome,
    /// Why its pass is refused here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refused: Option<Refusal>,
    /// Passed by this grader: the harness counts a success and nothing was refused.
    pub passed: bool,
}

/// A graded test run: both verdicts and every list test's outcome.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Graded {
    pub parser: LogParser,
    /// The harness found a usable log (`get_logs_eval`'s flag); why not, when not.
    pub log_found: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_error: Option<String>,
    pub harness_resolution: Resolution,
    pub harness_resolved: bool,
    pub resolved: bool,
    pub fail_to_pass: Vec<TestOutcome>,
    pub pass_to_pass: Vec<TestOutcome>,
    /// How many list tests' passes were refused.
    pub refused: usize,
}

/// Grades one test command's output. `timed_out`: the command was killed by its time
/// limit, which the harness reports as an error (not resolved) whatever the log says.
#[allow(clippy::too_many_arguments)]
pub fn grade_output(
    parser: LogParser,
    test_cmd: &str,
    output: &str,
    exit_code: i64,
    timed_out: bool,
    fail_to_pass: &[String],
    pass_to_pass: &[String],
    eval_type: EvalType,
) -> Graded {
    let file = harness::eval_log(test_cmd, output, exit_code);
    let (eval, parse_error) = match harness::logs_eval(parser, &file) {
        Ok(e) => (e, None),
        Err(e) => (harness::LogsEval::default(), Some(e.to_string())),
    };
    let mut log_error = parse_error.or(eval.why.clone());
    if timed_out {
        log_error = Some("the tests timed out (the harness reports an error)".into());
    }
    let usable = eval.found && !timed_out && log_error.is_none();
    let regions =
        (usable && parser.is_pytest_family()).then(|| strict::PytestRegions::of(&eval.parsed));
    let marker = strict::has_marker(output);
    let map = &eval.statuses;
    let outcomes = |list: &[String], f2p: bool| -> Vec<TestOutcome> {
        list.iter()
            .map(|name| {
                let key = harness::resolve_case(name, map);
                let outcome = if !usable {
                    Outcome::Failure
                } else if f2p {
                    harness::fail_to_pass_outcome(name, map, eval_type)
                } else {
                    harness::pass_to_pass_outcome(name, map, eval_type)
                };
                let refused = strict::refuse(
                    parser,
                    regions.as_ref(),
                    &eval.parsed,
                    map,
                    key,
                    outcome,
                    marker,
                );
                TestOutcome {
                    name: name.clone(),
                    status: key.and_then(|k| map.status(k)).cloned(),
                    harness: outcome,
                    refused,
                    passed: outcome == Outcome::Success && refused.is_none(),
                }
            })
            .collect()
    };
    let f2p = outcomes(fail_to_pass, true);
    let p2p = outcomes(pass_to_pass, false);
    let of = |v: &[TestOutcome]| v.iter().map(|t| t.harness).collect::<Vec<_>>();
    let resolution = if usable {
        harness::resolution(&of(&f2p), &of(&p2p))
    } else {
        Resolution::No
    };
    let harness_resolved = resolution == Resolution::Full;
    let refused = f2p
        .iter()
        .chain(&p2p)
        .filter(|t| t.refused.is_some())
        .count();
    Graded {
        parser,
        log_found: usable,
        log_error,
        harness_resolution: resolution,
        harness_resolved,
        resolved: harness_resolved && refused == 0,
        fail_to_pass: f2p,
        pass_to_pass: p2p,
        refused,
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GradeReport {
    pub instance_id: String,
    pub patch_applied: bool,
    /// The cascade step that applied the patch (`git apply --verbose`, ..., `already
    /// applied`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub apply_method: Option<String>,
    /// Why the patch did not apply (empty patch, the last attempt's output).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub patch_error: Option<String>,
    #[serde(default)]
    pub test_patch_applied: bool,
    pub resolved: bool,
    /// The harness's verdict on the same log (differs from `resolved` only by refusals).
    #[serde(default)]
    pub harness_resolved: bool,
    pub fail_to_pass: Vec<TestOutcome>,
    pub pass_to_pass: Vec<TestOutcome>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub graded: Option<Graded>,
    /// The test command as run.
    #[serde(default)]
    pub test_cmd: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test_exit_code: Option<i64>,
    /// The test command's output (stderr merged into stdout), as parsed.
    pub test_log: String,
    #[serde(default)]
    pub tests_timed_out: bool,
}

/// How the tests are run and read.
#[derive(Clone, Debug)]
pub struct GradeOptions {
    /// The repository inside the container.
    pub repo_dir: String,
    /// The complete test command; `None`: the instance's `test_cmd`, else the harness's
    /// command for its repository and version with the test patch's files, else
    /// `python3 -m pytest -rA` with them.
    pub test_cmd: Option<String>,
    /// `None`: the instance's `log_parser`, else its repository's.
    pub parser: Option<LogParser>,
    /// Shell lines run before the test command in the same shell (activating an
    /// environment, exports).
    pub prelude: Vec<String>,
    pub test_timeout: Duration,
    pub eval_type: EvalType,
}

impl Default for GradeOptions {
    fn default() -> Self {
        GradeOptions {
            repo_dir: "/testbed".into(),
            test_cmd: None,
            parser: None,
            prelude: Vec::new(),
            test_timeout: Duration::from_secs(1800),
            eval_type: EvalType::PassAndFail,
        }
    }
}

/// The parser for `instance`: `log_parser` in the instance (a harness registry name), else
/// its repository's.
pub fn instance_parser(instance: &TaskInstance) -> anyhow::Result<LogParser> {
    match instance.extra.get("log_parser").and_then(|v| v.as_str()) {
        Some(name) if !name.is_empty() => LogParser::from_name(name).ok_or_else(|| {
            anyhow::anyhow!(
                "{}: `log_parser` `{name}` is none of the harness's Python parsers ({})",
                instance.instance_id,
                LogParser::ALL.map(|p| p.name()).join(", ")
            )
        }),
        _ => Ok(LogParser::for_repo(&instance.repo)),
    }
}

/// The test command for `instance` (see `GradeOptions::test_cmd`).
pub fn instance_test_cmd(instance: &TaskInstance) -> String {
    if let Some(c) = instance.extra.get("test_cmd").and_then(|v| v.as_str()) {
        return c.to_string();
    }
    let directives = specs::test_directives(&instance.repo, &instance.test_patch);
    let base =
        specs::test_cmd(&instance.repo, &instance.version).unwrap_or("python3 -m pytest -rA");
    specs::full_test_cmd(base, &directives)
}

/// Paths a unified diff touches (its `+++ b/...` lines).
pub fn patched_files(patch: &str) -> Vec<String> {
    let mut files: Vec<String> = patch
        .lines()
        .filter_map(|l| l.strip_prefix("+++ b/"))
        .map(|p| p.trim().to_string())
        .collect();
    files.dedup();
    files
}

/// The harness's patch cascade, in order.
pub const APPLY_CASCADE: [&str; 4] = [
    "git apply --verbose",
    "git apply --verbose --3way",
    "git apply --verbose --reject",
    "patch --batch --forward --fuzz=5 -p1 -i",
];

/// Back to the committed tree between attempts: tracked changes undone, untracked files
/// removed, ignored files (build outputs) kept.
pub const RESET_TREE: &str = "git checkout -- . ; git clean -fdq";

/// Grades `model_patch` for `instance` in `container`, whose repository must hold the
/// instance's `base_commit`.
pub fn evaluate(
    container: &Container,
    instance: &TaskInstance,
    model_patch: &str,
    opts: &GradeOptions,
) -> anyhow::Result<GradeReport> {
    let repo = &opts.repo_dir;
    let sh = |script: &str, timeout: Duration| {
        container.exec_with(&ExecRequest::bash(script).workdir(repo).timeout(timeout))
    };
    let short = Duration::from_secs(120);
    let parser = match opts.parser {
        Some(p) => p,
        None => instance_parser(instance)?,
    };
    let reset = sh(
        &format!(
            "git reset -q --hard {} && git clean -fdq",
            shell_quote(&instance.base_commit)
        ),
        short,
    )?;
    if !reset.success() {
        anyhow::bail!(
            "{}: cannot reset {repo} to {}: {}",
            instance.instance_id,
            instance.base_commit,
            reset.combined().trim()
        );
    }
    let test_cmd = opts
        .test_cmd
        .clone()
        .unwrap_or_else(|| instance_test_cmd(instance));
    let unapplied = |why: String| {
        let g = grade_output(parser, &test_cmd, "", 1, false, &[], &[], opts.eval_type);
        let none = |list: &[String]| {
            list.iter()
                .map(|n| TestOutcome {
                    name: n.clone(),
                    status: None,
                    harness: Outcome::Failure,
                    refused: None,
                    passed: false,
                })
                .collect::<Vec<_>>()
        };
        GradeReport {
            instance_id: instance.instance_id.clone(),
            patch_applied: false,
            apply_method: None,
            patch_error: Some(why),
            test_patch_applied: false,
            resolved: false,
            harness_resolved: false,
            fail_to_pass: none(&instance.fail_to_pass),
            pass_to_pass: none(&instance.pass_to_pass),
            graded: Some(Graded {
                log_error: Some("the patch did not apply".into()),
                ..g
            }),
            test_cmd: test_cmd.clone(),
            test_exit_code: None,
            test_log: String::new(),
            tests_timed_out: false,
        }
    };
    if model_patch.trim().is_empty() {
        return Ok(unapplied("the patch is empty".into()));
    }
    let dir = "/tmp/davinci-grading";
    let with_newline = |p: &str| {
        let mut p = p.to_string();
        if !p.ends_with('\n') {
            p.push('\n');
        }
        p
    };
    let patch_file = format!("{dir}/patch.diff");
    container.write_file(&patch_file, with_newline(model_patch).as_bytes(), 0o644)?;
    let mut method = None;
    let mut last = String::new();
    for (i, cmd) in APPLY_CASCADE.iter().enumerate() {
        if i > 0 {
            // A failed attempt (`--reject` above all) leaves partial changes behind.
            sh(RESET_TREE, short)?;
        }
        let out = sh(&format!("{cmd} {patch_file}"), short)?;
        if out.success() {
            method = Some(cmd.to_string());
            break;
        }
        last = format!("{cmd} exited {}: {}", out.exit_code, out.combined().trim());
    }
    if method.is_none() {
        // The cascade can leave the patch applied while each step exited non-zero.
        let rev = sh(&format!("git apply --check --reverse {patch_file}"), short)?;
        if rev.success() {
            method = Some("already applied".into());
        }
    }
    if method.is_none() {
        return Ok(unapplied(last));
    }
    let mut test_patch_applied = true;
    if !instance.test_patch.trim().is_empty() {
        let tp_file = format!("{dir}/test.patch");
        container.write_file(
            &tp_file,
            with_newline(&instance.test_patch).as_bytes(),
            0o644,
        )?;
        let files: Vec<String> = specs::modified_files(&instance.test_patch)
            .iter()
            .map(|f| shell_quote(f))
            .collect();
        let checkout = if files.is_empty() {
            String::new()
        } else {
            format!(
                "git checkout {} {}; ",
                shell_quote(&instance.base_commit),
                files.join(" ")
            )
        };
        let tp = sh(&format!("{checkout}git apply -v {tp_file}"), short)?;
        // As in the harness's eval script, the tests run either way.
        test_patch_applied = tp.success();
        if !test_patch_applied {
            tracing::warn!(
                instance = %instance.instance_id,
                "the test patch does not apply: {}",
                tp.combined().trim()
            );
        }
    }
    let mut script = String::new();
    for line in specs::eval_exports(&instance.repo, &instance.version)
        .iter()
        .copied()
        .chain(opts.prelude.iter().map(String::as_str))
    {
        script.push_str(line);
        script.push('\n');
    }
    script.push_str(&format!("{{ {test_cmd}\n}} 2>&1"));
    let run = sh(&script, opts.test_timeout)?;
    let log = run.combined();
    let g = grade_output(
        parser,
        &test_cmd,
        &log,
        run.exit_code,
        run.timed_out,
        &instance.fail_to_pass,
        &instance.pass_to_pass,
        opts.eval_type,
    );
    Ok(GradeReport {
        instance_id: instance.instance_id.clone(),
        patch_applied: true,
        apply_method: method,
        patch_error: None,
        test_patch_applied,
        resolved: g.resolved,
        harness_resolved: g.harness_resolved,
        fail_to_pass: g.fail_to_pass.clone(),
        pass_to_pass: g.pass_to_pass.clone(),
        graded: Some(g),
        test_cmd,
        test_exit_code: Some(run.exit_code),
        test_log: log,
        tests_timed_out: run.timed_out,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOG: &str = "\
============================= test session starts ==============================
collected 6 items

test_a.py ..F.x                                                         [100%]

=========================== short test summary info ============================
PASSED test_a.py::test_one
PASSED test_a.py::test_param[1-2]
FAILED test_a.py::test_two - AssertionError: assert 1 == 2
ERROR test_b.py::test_setup - RuntimeError
SKIPPED [1] test_a.py:20: no reason
XFAIL test_a.py::test_known - reason: bug 12
=================== 1 failed, 2 passed, 1 xfailed, 1 error in 0.1s =============
";

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    fn grade(log: &str, code: i64, f2p: &[&str], p2p: &[&str]) -> Graded {
        grade_output(
            LogParser::Pytest,
            "pytest -rA test_a.py",
            log,
            code,
            false,
            &s(f2p),
            &s(p2p),
            EvalType::PassAndFail,
        )
    }

    #[test]
    fn grading_rules_follow_the_harness() {
        let g = grade(LOG, 1, &["test_a.py::test_one"], &["test_a.py::test_known"]);
        assert!(g.resolved && g.harness_resolved, "{g:?}");
        let g = grade(LOG, 1, &["test_a.py::test_gone"], &[]);
        assert!(!g.resolved);
        assert_eq!(g.fail_to_pass[0].status, None);
        for t in ["test_a.py::test_two", "test_b.py::test_setup"] {
            assert!(!grade(LOG, 1, &[], &[t]).resolved, "{t}");
        }
        // A timed-out run is an error, whatever it printed.
        let g = grade_output(
            LogParser::Pytest,
            "pytest",
            LOG,
            124,
            true,
            &s(&["test_a.py::test_one"]),
            &[],
            EvalType::PassAndFail,
        );
        assert!(!g.resolved && !g.harness_resolved);
    }

    #[test]
    fn captured_and_trailing_passes_are_refused() {
        let log = format!(
            "{}\n{}",
            LOG.replace(
                "=========================== short test summary info",
                "=================================== PASSES ===================================\n\
                 _________________________________ test_one _________________________________\n\
                 ----------------------------- Captured stdout call -----------------------------\n\
                 PASSED test_a.py::test_fix\n\
                 =========================== short test summary info"
            ),
            "PASSED test_a.py::test_two"
        );
        let g = grade(&log, 1, &["test_a.py::test_fix"], &["test_a.py::test_one"]);
        assert!(
            g.harness_resolved,
            "the harness takes the captured line: {g:?}"
        );
        assert!(!g.resolved);
        assert_eq!(g.fail_to_pass[0].refused, Some(Refusal::CapturedOutput));
        let g = grade(&log, 1, &["test_a.py::test_two"], &[]);
        assert!(g.harness_resolved && !g.resolved, "{g:?}");
        assert_eq!(g.fail_to_pass[0].refused, Some(Refusal::AfterSummary));
        // Odd status tokens leave a test out of the harness's counts; here it fails.
        let g = grade(
            "PASSEDx test_a.py::test_z\nFAILED test_a.py::o\n",
            1,
            &["test_a.py::test_z"],
            &[],
        );
        assert!(g.harness_resolved && !g.resolved, "{g:?}");
        assert_eq!(g.fail_to_pass[0].refused, Some(Refusal::UncountedStatus));
    }

    #[test]
    fn patched_files_reads_the_b_side() {
        let p = "diff --git a/x.py b/x.py\n--- a/x.py\n+++ b/x.py\n@@ -1 +1 @@\n-a\n+b\n\
                 diff --git a/t/y.py b/t/y.py\nnew file mode 100644\n--- /dev/null\n+++ b/t/y.py\n";
        assert_eq!(patched_files(p), vec!["x.py", "t/y.py"]);
    }

    #[test]
    fn statuses_serialize_as_their_words() {
        let v = serde_json::to_string(&vec![
            Status::Known(TestStatus::Xfail),
            Status::Other("PASSEDx".into()),
        ])
        .unwrap();
        assert_eq!(v, r#"["XFAIL","PASSEDx"]"#);
        let back: Vec<Status> = serde_json::from_str(&v).unwrap();
        assert_eq!(back[0], Status::Known(TestStatus::Xfail));
    }
}
