//! SWE-bench grading.
//!
//! The model patch must apply (`git apply --check`); the instance's test patch is applied on
//! top, the tests run, and the pytest log (`-rA` summary lines such as `PASSED path::test`,
//! `FAILED path::test - msg`) is parsed. The instance is resolved when every FAIL_TO_PASS and
//! every PASS_TO_PASS test passed. As in SWE-bench: PASSED and XFAIL count as passed; FAILED,
//! ERROR, SKIPPED and XPASS do not; a test missing from the log counts as failed. When a test
//! appears several times, its last line wins.

use crate::container::{shell_quote, Container, ExecRequest};
use crate::instance::TaskInstance;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Duration;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum TestStatus {
    Passed,
    Failed,
    Error,
    Skipped,
    Xfail,
    Xpass,
}

impl TestStatus {
    pub const ALL: [TestStatus; 6] = [
        TestStatus::Passed,
        TestStatus::Failed,
        TestStatus::Error,
        TestStatus::Skipped,
        TestStatus::Xfail,
        TestStatus::Xpass,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            TestStatus::Passed => "PASSED",
            TestStatus::Failed => "FAILED",
            TestStatus::Error => "ERROR",
            TestStatus::Skipped => "SKIPPED",
            TestStatus::Xfail => "XFAIL",
            TestStatus::Xpass => "XPASS",
        }
    }

    /// Whether the status counts as a pass (PASSED, XFAIL).
    pub fn is_pass(self) -> bool {
        matches!(self, TestStatus::Passed | TestStatus::Xfail)
    }
}

/// Test name → status, from a pytest log (the SWE-bench `parse_log_pytest` rules: a line that
/// starts with a status names the test in its second field, `FAILED a - msg` included; a line
/// that ends with a status, older pytest style, names it in its first field).
pub fn parse_pytest_log(log: &str) -> BTreeMap<String, TestStatus> {
    let mut map = BTreeMap::new();
    for line in log.lines() {
        let line = line.trim_end();
        if let Some(st) = TestStatus::ALL
            .into_iter()
            .find(|s| line.starts_with(s.as_str()))
        {
            let fields: Vec<&str> = line.split_whitespace().collect();
            // `PASSED` alone, or a word that merely starts with a status (`ERRORS`), names no test.
            if fields.len() > 1 && fields[0] == st.as_str() {
                map.insert(fields[1].to_string(), st);
            }
        } else if let Some(st) = TestStatus::ALL
            .into_iter()
            .find(|s| line.ends_with(s.as_str()))
        {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.len() > 1 && fields[fields.len() - 1] == st.as_str() {
                map.insert(fields[0].to_string(), st);
            }
        }
    }
    map
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TestOutcome {
    pub name: String,
    /// `None`: the test is not in the log (counts as failed).
    pub status: Option<TestStatus>,
    pub passed: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GradeReport {
    pub instance_id: String,
    pub patch_applied: bool,
    /// Why the patch did not apply (empty patch, `git apply --check` output).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub patch_error: Option<String>,
    pub resolved: bool,
    pub fail_to_pass: Vec<TestOutcome>,
    pub pass_to_pass: Vec<TestOutcome>,
    /// The test command's output, as parsed.
    pub test_log: String,
    #[serde(default)]
    pub tests_timed_out: bool,
}

/// Grades FAIL_TO_PASS / PASS_TO_PASS against a parsed log. Returns
/// (resolved, fail_to_pass outcomes, pass_to_pass outcomes).
pub fn grade_statuses(
    statuses: &BTreeMap<String, TestStatus>,
    fail_to_pass: &[String],
    pass_to_pass: &[String],
) -> (bool, Vec<TestOutcome>, Vec<TestOutcome>) {
    let outcome = |name: &String| {
        let status = statuses.get(name).copied();
        TestOutcome {
            name: name.clone(),
            status,
            passed: status.is_some_and(TestStatus::is_pass),
        }
    };
    let f2p: Vec<TestOutcome> = fail_to_pass.iter().map(outcome).collect();
    let p2p: Vec<TestOutcome> = pass_to_pass.iter().map(outcome).collect();
    let resolved = f2p.iter().chain(&p2p).all(|t| t.passed);
    (resolved, f2p, p2p)
}

/// How the tests are run.
#[derive(Clone, Debug)]
pub struct GradeOptions {
    /// The repository inside the container.
    pub repo_dir: String,
    /// The test command; `None`: `python3 -m pytest -rA -p no:cacheprovider` over the files
    /// the test patch touches (the whole suite when it touches none).
    pub test_cmd: Option<String>,
    pub test_timeout: Duration,
}

impl Default for GradeOptions {
    fn default() -> Self {
        GradeOptions {
            repo_dir: "/testbed".into(),
            test_cmd: None,
            test_timeout: Duration::from_secs(1800),
        }
    }
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

/// Grades `model_patch` for `instance` in `container`, whose repository must hold the
/// instance's `base_commit`: resets the repository to it, checks and applies the patch,
/// applies the test patch, runs the tests and parses the log.
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
    let reset = sh(
        &format!(
            "git reset -q --hard {} && git clean -fdxq",
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
    let not_applied = |why: String| {
        let (_, f2p, p2p) = grade_statuses(
            &BTreeMap::new(),
            &instance.fail_to_pass,
            &instance.pass_to_pass,
        );
        GradeReport {
            instance_id: instance.instance_id.clone(),
            patch_applied: false,
            patch_error: Some(why),
            resolved: false,
            fail_to_pass: f2p,
            pass_to_pass: p2p,
            test_log: String::new(),
            tests_timed_out: false,
        }
    };
    if model_patch.trim().is_empty() {
        return Ok(not_applied("the patch is empty".into()));
    }
    let dir = "/tmp/davinci-grading";
    let mut patch = model_patch.to_string();
    if !patch.ends_with('\n') {
        patch.push('\n');
    }
    container.write_file(&format!("{dir}/model.patch"), patch.as_bytes(), 0o644)?;
    let check = sh(&format!("git apply --check -v {dir}/model.patch"), short)?;
    if !check.success() {
        return Ok(not_applied(format!(
            "git apply --check failed ({}): {}",
            check.exit_code,
            check.combined().trim()
        )));
    }
    let apply = sh(&format!("git apply -v {dir}/model.patch"), short)?;
    if !apply.success() {
        return Ok(not_applied(format!(
            "git apply failed ({}): {}",
            apply.exit_code,
            apply.combined().trim()
        )));
    }
    if !instance.test_patch.trim().is_empty() {
        let mut tp = instance.test_patch.clone();
        if !tp.ends_with('\n') {
            tp.push('\n');
        }
        container.write_file(&format!("{dir}/test.patch"), tp.as_bytes(), 0o644)?;
        // Test files are the instance's: restore them before applying its test patch.
        let files = patched_files(&instance.test_patch);
        let mut restore = String::new();
        for f in &files {
            restore.push_str(&format!(
                "git cat-file -e {}:{} 2>/dev/null && git checkout -q {} -- {}; ",
                shell_quote(&instance.base_commit),
                shell_quote(f),
                shell_quote(&instance.base_commit),
                shell_quote(f)
            ));
        }
        let tp = sh(&format!("{restore}git apply -v {dir}/test.patch"), short)?;
        if !tp.success() {
            anyhow::bail!(
                "{}: the instance's test patch does not apply: {}",
                instance.instance_id,
                tp.combined().trim()
            );
        }
    }
    let cmd = match &opts.test_cmd {
        Some(c) => c.clone(),
        None => {
            let files: Vec<String> = patched_files(&instance.test_patch)
                .iter()
                .map(|f| shell_quote(f))
                .collect();
            format!(
                "python3 -m pytest -rA -p no:cacheprovider {}",
                files.join(" ")
            )
        }
    };
    let run = sh(&cmd, opts.test_timeout)?;
    let log = run.combined();
    let statuses = parse_pytest_log(&log);
    let (resolved, f2p, p2p) =
        grade_statuses(&statuses, &instance.fail_to_pass, &instance.pass_to_pass);
    Ok(GradeReport {
        instance_id: instance.instance_id.clone(),
        patch_applied: true,
        patch_error: None,
        resolved,
        fail_to_pass: f2p,
        pass_to_pass: p2p,
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

test_a.py ..F.xX                                                        [100%]

=========================== short test summary info ============================
PASSED test_a.py::test_one
PASSED test_a.py::test_param[1-2]
FAILED test_a.py::test_two - AssertionError: assert 1 == 2
ERROR test_b.py::test_setup - RuntimeError
SKIPPED [1] test_a.py:20: no reason
XFAIL test_a.py::test_known - reason: bug 12
XPASS test_a.py::test_lucky
test_old.py::test_legacy PASSED
=================== 1 failed, 2 passed, 1 xfailed, 1 xpassed ===================
";

    #[test]
    fn parses_pytest_ra_summary_lines() {
        let m = parse_pytest_log(LOG);
        assert_eq!(m["test_a.py::test_one"], TestStatus::Passed);
        assert_eq!(m["test_a.py::test_param[1-2]"], TestStatus::Passed);
        assert_eq!(m["test_a.py::test_two"], TestStatus::Failed);
        assert_eq!(m["test_b.py::test_setup"], TestStatus::Error);
        assert_eq!(m["test_a.py::test_known"], TestStatus::Xfail);
        assert_eq!(m["test_a.py::test_lucky"], TestStatus::Xpass);
        assert_eq!(m["test_old.py::test_legacy"], TestStatus::Passed);
        assert_eq!(m["[1]"], TestStatus::Skipped);
    }

    #[test]
    fn grading_rules_follow_swebench() {
        let m = parse_pytest_log(LOG);
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        // XFAIL counts as passed.
        let (ok, f2p, p2p) = grade_statuses(
            &m,
            &s(&["test_a.py::test_one"]),
            &s(&["test_a.py::test_known", "test_old.py::test_legacy"]),
        );
        assert!(ok);
        assert!(f2p[0].passed && p2p.iter().all(|t| t.passed));
        // A test missing from the log counts as failed.
        let (ok, f2p, _) = grade_statuses(&m, &s(&["test_a.py::test_gone"]), &[]);
        assert!(!ok);
        assert_eq!(f2p[0].status, None);
        assert!(!f2p[0].passed);
        // FAILED, ERROR and XPASS are not passes.
        for t in [
            "test_a.py::test_two",
            "test_b.py::test_setup",
            "test_a.py::test_lucky",
        ] {
            let (ok, _, p2p) = grade_statuses(&m, &[], &s(&[t]));
            assert!(!ok, "{t}");
            assert!(!p2p[0].passed);
        }
    }

    #[test]
    fn patched_files_reads_the_b_side() {
        let p = "diff --git a/x.py b/x.py\n--- a/x.py\n+++ b/x.py\n@@ -1 +1 @@\n-a\n+b\n\
                 diff --git a/t/y.py b/t/y.py\nnew file mode 100644\n--- /dev/null\n+++ b/t/y.py\n";
        assert_eq!(patched_files(p), vec!["x.py", "t/y.py"]);
    }
}
