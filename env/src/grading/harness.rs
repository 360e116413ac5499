//! The official harness's grading (`swebench==5.0.2`, `harness/grading.py`), rule for rule:
//! how a log becomes a status map (`get_logs_eval`), how FAIL_TO_PASS / PASS_TO_PASS are
//! counted (`get_eval_tests_report`, with its prefix match for truncated parametrized ids and
//! PASS_TO_PASS's tolerance of skips) and the resolution (`get_resolution_status`).
//!
//! The harness reads a file its eval script wrote: `set -x` traces, markers around the test
//! command's output and the command's exit status after them. `eval_log` writes that text for
//! a test command run here, so both graders read the same bytes.

use super::parsers::{LogParser, ParseError};
use super::{Status, StatusMap, TestStatus};
use regex::Regex;
use serde::{Deserialize, Serialize};
use std::sync::OnceLock;

pub const APPLY_PATCH_FAIL: &str = ">>>>> Patch Apply Failed";
pub const RESET_FAILED: &str = ">>>>> Reset Failed";
pub const TESTS_ERROR: &str = ">>>>> Tests Errored";
pub const TESTS_TIMEOUT: &str = ">>>>> Tests Timed Out";
pub const START_TEST_OUTPUT: &str = ">>>>> Start Test Output";
pub const END_TEST_OUTPUT: &str = ">>>>> End Test Output";
pub const TEST_EXIT_CODE: &str = ">>>>> Test Exit Code";

/// Every marker whose presence in a log changes how the harness reads it.
pub const MARKERS: [&str; 7] = [
    APPLY_PATCH_FAIL,
    RESET_FAILED,
    TESTS_ERROR,
    TESTS_TIMEOUT,
    START_TEST_OUTPUT,
    END_TEST_OUTPUT,
    TEST_EXIT_CODE,
];

/// The eval script's output around a test command: its `set -x` trace of the start marker
/// and the command, the command's output, the recorded exit status and the end marker.
pub fn eval_log(test_cmd: &str, output: &str, exit_code: i64) -> String {
    let mut s = format!("+ : '{START_TEST_OUTPUT}'\n+ {test_cmd}\n{output}");
    if !output.is_empty() && !output.ends_with('\n') {
        s.push('\n');
    }
    s.push_str(&format!(
        "+ SWEBENCH_TEST_EXIT_CODE={exit_code}\n+ : '{END_TEST_OUTPUT}'\n\
         + echo '{TEST_EXIT_CODE}: {exit_code}'\n{TEST_EXIT_CODE}: {exit_code}\n"
    ));
    s
}

/// What `get_logs_eval` made of a log.
#[derive(Clone, Debug, Default)]
pub struct LogsEval {
    pub statuses: StatusMap,
    /// `False` in the harness: no report, the instance is not resolved.
    pub found: bool,
    /// Why it is not found.
    pub why: Option<String>,
    /// The text the statuses were parsed from (the marked slice, or the whole log when the
    /// slice held no status); lines in `statuses` count in it.
    pub parsed: String,
}

/// Python's `open(path).read()`: universal newlines.
pub fn universal_newlines(s: &str) -> String {
    s.replace("\r\n", "\n").replace('\r', "\n")
}

/// `get_logs_eval`: the status map of a log as the harness reads it from its file.
pub fn logs_eval(parser: LogParser, file_text: &str) -> Result<LogsEval, ParseError> {
    let content = universal_newlines(file_text);
    let not_found = |why: String| LogsEval {
        why: Some(why),
        ..Default::default()
    };
    if let Some(bad) = [APPLY_PATCH_FAIL, RESET_FAILED, TESTS_ERROR, TESTS_TIMEOUT]
        .into_iter()
        .find(|m| content.contains(m))
    {
        return Ok(not_found(format!("the log contains `{bad}`")));
    }
    if !(content.contains(START_TEST_OUTPUT) && content.contains(END_TEST_OUTPUT)) {
        return Ok(not_found("the log has no start and end markers".into()));
    }
    // `content.split(START)[1].split(END)[0]`
    let after_start = content.split(START_TEST_OUTPUT).nth(1).unwrap_or("");
    let sliced = after_start.split(END_TEST_OUTPUT).next().unwrap_or("");
    let mut parsed = sliced.to_string();
    let mut statuses = parser.parse(sliced)?;
    if statuses.is_empty() {
        statuses = parser.parse(&content)?;
        parsed = content.clone();
    }
    if statuses.is_empty() && !suite_ran().is_match(&content) {
        return Ok(not_found(
            "no test status, and no sign that a test suite ran".into(),
        ));
    }
    let exit = exit_code_in(&content);
    if exit.is_some_and(|c| c != 0)
        && !statuses.is_empty()
        && !statuses.iter().any(|(_, e)| {
            matches!(
                e.status,
                Status::Known(TestStatus::Failed) | Status::Known(TestStatus::Error)
            )
        })
    {
        return Ok(not_found(format!(
            "the test command exited {} but the log reports no failure",
            exit.unwrap_or_default()
        )));
    }
    Ok(LogsEval {
        statuses,
        found: true,
        why: None,
        parsed,
    })
}

/// Evidence that some runner executed (the harness's `SUITE_RAN`).
fn suite_ran() -> &'static Regex {
    static RE: OnceLock<Regex> = OnceLock::new();
    RE.get_or_init(|| {
        Regex::new(
            r"(?m)Executed [1-9]\d* of \d+|TOTAL: [1-9]\d* (?:SUCCESS|FAILED)|[1-9]\d* passing|Tests:[\s\x1c-\x1f]+[1-9]\d*|Test Suites:[\s\x1c-\x1f]+(?:\d+ \w+, )*[1-9]\d* total|^# tests [1-9]\d*|[1-9]\d* specs?, \d+ failures?|': ok$",
        )
        .expect("SUITE_RAN regex")
    })
}

/// The first `>>>>> Test Exit Code: N` in the log (the harness's `re.search`).
pub fn exit_code_in(content: &str) -> Option<i64> {
    static RE: OnceLock<Regex> = OnceLock::new();
    let re = RE.get_or_init(|| {
        Regex::new(&format!(
            r"{}:[\s\x1c-\x1f]*(-?\d+)",
            regex::escape(TEST_EXIT_CODE)
        ))
        .expect("exit code regex")
    });
    let c = re.captures(content)?;
    // Python's `int()` reads any Unicode decimal digits.
    let digits: String = c[1]
        .chars()
        .map(|ch| match ch {
            '-' => '-',
            d => char::from_digit(unicode_digit_value(d), 10).unwrap_or('0'),
        })
        .collect();
    digits.parse().ok()
}

/// The value of a Unicode decimal digit: `Nd` characters come in runs of ten, zero first,
/// and adjacent runs start where the block of digits starts.
fn unicode_digit_value(c: char) -> u32 {
    if let Some(v) = c.to_digit(10) {
        return v;
    }
    static DIGIT: OnceLock<Regex> = OnceLock::new();
    let re = DIGIT.get_or_init(|| Regex::new(r"^\d$").expect("digit regex"));
    let mut b = [0u8; 4];
    let mut start = c as u32;
    while let Some(prev) = start.checked_sub(1).and_then(char::from_u32) {
        if !re.is_match(prev.encode_utf8(&mut b)) {
            break;
        }
        start -= 1;
    }
    (c as u32 - start) % 10
}

/// How a FAIL_TO_PASS / PASS_TO_PASS test counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Success,
    Failure,
    /// Neither: its status is no pass and no failure (an odd token), so the harness leaves it
    /// out of both lists, and out of the ratio.
    Uncounted,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum EvalType {
    #[serde(rename = "pass_and_fail")]
    PassAndFail,
    #[serde(rename = "fail_only")]
    FailOnly,
}

/// `_resolve_case`: the status-map key for `case`. An id truncated inside its parameters
/// (more `[` than `]`) matches the ids it begins, when they agree on pass or fail; the first
/// in the map's order is taken.
pub fn resolve_case<'m>(case: &str, map: &'m StatusMap) -> Option<&'m str> {
    if let Some((k, _)) = map.get_key_value(case) {
        return Some(k);
    }
    if case.matches('[').count() > case.matches(']').count() {
        let matches: Vec<(&str, bool)> = map
            .iter()
            .filter(|(k, _)| k.starts_with(case))
            .map(|(k, e)| (k.as_str(), e.status.is_pass()))
            .collect();
        if let Some(first) = matches.first() {
            if matches.iter().all(|(_, p)| *p == first.1) {
                return Some(first.0);
            }
        }
    }
    None
}

fn passed(case: &str, map: &StatusMap) -> bool {
    resolve_case(case, map).is_some_and(|k| map.status(k).is_some_and(Status::is_pass))
}

fn maintained(case: &str, map: &StatusMap) -> bool {
    passed(case, map)
        || resolve_case(case, map)
            .is_some_and(|k| map.status(k) == Some(&Status::Known(TestStatus::Skipped)))
}

fn failed(case: &str, map: &StatusMap) -> bool {
    match resolve_case(case, map) {
        None => true,
        Some(k) => matches!(
            map.status(k),
            Some(Status::Known(
                TestStatus::Failed | TestStatus::Error | TestStatus::Skipped
            ))
        ),
    }
}

/// FAIL_TO_PASS outcome of one test.
pub fn fail_to_pass_outcome(case: &str, map: &StatusMap, eval_type: EvalType) -> Outcome {
    match eval_type {
        EvalType::PassAndFail if passed(case, map) => Outcome::Success,
        EvalType::PassAndFail if failed(case, map) => Outcome::Failure,
        EvalType::PassAndFail => Outcome::Uncounted,
        EvalType::FailOnly => fail_only(case, map),
    }
}

/// PASS_TO_PASS outcome of one test (a skip is no regression).
pub fn pass_to_pass_outcome(case: &str, map: &StatusMap, eval_type: EvalType) -> Outcome {
    match eval_type {
        EvalType::PassAndFail if maintained(case, map) => Outcome::Success,
        EvalType::PassAndFail if failed(case, map) => Outcome::Failure,
        EvalType::PassAndFail => Outcome::Uncounted,
        EvalType::FailOnly => fail_only(case, map),
    }
}

fn fail_only(case: &str, map: &StatusMap) -> Outcome {
    // Exact ids only, and only FAILED fails.
    if map.status(case) == Some(&Status::Known(TestStatus::Failed)) {
        Outcome::Failure
    } else {
        Outcome::Success
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Resolution {
    #[serde(rename = "RESOLVED_FULL")]
    Full,
    #[serde(rename = "RESOLVED_PARTIAL")]
    Partial,
    #[serde(rename = "RESOLVED_NO")]
    No,
}

impl Resolution {
    pub fn as_str(self) -> &'static str {
        match self {
            Resolution::Full => "RESOLVED_FULL",
            Resolution::Partial => "RESOLVED_PARTIAL",
            Resolution::No => "RESOLVED_NO",
        }
    }
}

/// `get_resolution_status` over the two lists' outcomes: FULL when every counted
/// FAIL_TO_PASS and PASS_TO_PASS test succeeded (an empty count is a full score), PARTIAL
/// when some but not all FAIL_TO_PASS did and every PASS_TO_PASS did.
pub fn resolution(f2p: &[Outcome], p2p: &[Outcome]) -> Resolution {
    let count = |v: &[Outcome]| {
        let s = v.iter().filter(|o| **o == Outcome::Success).count();
        let f = v.iter().filter(|o| **o == Outcome::Failure).count();
        (s, s + f)
    };
    let (fs, ft) = count(f2p);
    let (ps, pt) = count(p2p);
    let f2p_full = ft == 0 || fs == ft;
    let p2p_full = pt == 0 || ps == pt;
    if f2p_full && p2p_full {
        Resolution::Full
    } else if ft > 0 && fs > 0 && fs < ft && p2p_full {
        Resolution::Partial
    } else {
        Resolution::No
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(v: &[(&str, &str)]) -> StatusMap {
        let mut m = StatusMap::default();
        for (i, (k, s)) in v.iter().enumerate() {
            m.set(k.to_string(), Status::from_token(s), i);
        }
        m
    }

    #[test]
    fn outcomes_follow_the_harness() {
        let m = map(&[
            ("a", "PASSED"),
            ("b", "XFAIL"),
            ("c", "SKIPPED"),
            ("d", "FAILED"),
            ("e", "PASSEDx"),
            ("t[x-1]", "PASSED"),
            ("t[x-2]", "PASSED"),
            ("u[y-1]", "PASSED"),
            ("u[y-2]", "FAILED"),
        ]);
        let pf = EvalType::PassAndFail;
        assert_eq!(fail_to_pass_outcome("a", &m, pf), Outcome::Success);
        assert_eq!(fail_to_pass_outcome("b", &m, pf), Outcome::Success);
        // A skip fails FAIL_TO_PASS but keeps PASS_TO_PASS.
        assert_eq!(fail_to_pass_outcome("c", &m, pf), Outcome::Failure);
        assert_eq!(pass_to_pass_outcome("c", &m, pf), Outcome::Success);
        assert_eq!(fail_to_pass_outcome("missing", &m, pf), Outcome::Failure);
        assert_eq!(fail_to_pass_outcome("e", &m, pf), Outcome::Uncounted);
        // Truncated ids: prefix match when the candidates agree.
        assert_eq!(fail_to_pass_outcome("t[x", &m, pf), Outcome::Success);
        assert_eq!(fail_to_pass_outcome("u[y", &m, pf), Outcome::Failure);
        assert_eq!(resolution(&[Outcome::Uncounted], &[]), Resolution::Full);
        assert_eq!(
            resolution(&[Outcome::Success, Outcome::Failure], &[Outcome::Success]),
            Resolution::Partial
        );
        assert_eq!(resolution(&[], &[Outcome::Failure]), Resolution::No);
    }

    #[test]
    fn logs_eval_reads_markers_exit_codes_and_falls_back() {
        let p = LogParser::Pytest;
        let ok = logs_eval(p, &eval_log("pytest -rA", "PASSED t.py::a\n", 0)).unwrap();
        assert!(ok.found);
        assert_eq!(
            ok.statuses.status("t.py::a"),
            Some(&Status::Known(TestStatus::Passed))
        );
        // Exit 1 with nothing failing: not a run the log describes.
        let forged = logs_eval(p, &eval_log("pytest -rA", "PASSED t.py::a\n", 1)).unwrap();
        assert!(!forged.found);
        // Nothing parsed and no sign of a run.
        let none = logs_eval(p, &eval_log("pytest -rA", "collected 0 items\n", 5)).unwrap();
        assert!(!none.found);
        // A bad code anywhere.
        let bad = logs_eval(
            p,
            &eval_log("x", &format!("PASSED t.py::a\n{TESTS_TIMEOUT}\n"), 0),
        )
        .unwrap();
        assert!(!bad.found);
        // The first exit code wins, even a printed one.
        assert_eq!(
            exit_code_in(&eval_log("x", &format!("{TEST_EXIT_CODE}: 0\n"), 1)),
            Some(0)
        );
        assert_eq!(
            exit_code_in(&format!("{TEST_EXIT_CODE}: \u{0663}")),
            Some(3)
        );
        // \r is a line break to Python's text files.
        let cr = logs_eval(p, &eval_log("x", "....\rPASSED t.py::b\r\n", 0)).unwrap();
        assert!(cr.statuses.status("t.py::b").is_some());
    }
}
