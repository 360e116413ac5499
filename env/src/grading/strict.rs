//! Where this grader deliberately refuses what the harness accepts: passes that a patch can
//! fake. Each refusal only ever turns a harness `success` into a failure, so a refused
//! instance is one the harness calls resolved and this grader does not — never the reverse.
//!
//! - `captured_output`: in a pytest log, a pass decided by a line inside the report sections
//!   (where captured stdout/stderr/log of tests is replayed verbatim) rather than by pytest's
//!   progress lines or its final `short test summary info` block. A test that prints
//!   `PASSED tests/test_x.py::test_fix` is not a pass of `test_fix`.
//! - `after_summary`: in a pytest log, a pass decided by a line after pytest's final
//!   `=== N passed in Xs ===` line (a `pytest_unconfigure` hook or an `atexit` handler that
//!   prints).
//! - `uncounted_status`: a FAIL_TO_PASS / PASS_TO_PASS test whose status is no status word
//!   (`PASSEDx`): the harness leaves it out of both counts, so an instance whose tests all
//!   read that way scores full; here it fails.
//! - `malformed_line`: in a pytest log, a pass read from a line on which the status word is no
//!   word of its own (`PASSEDx tests/t.py::test_fix` is a pass to seaborn's parser).
//! - `later_failure`: in a pytest log, a pass followed by a `FAILED` / `ERROR` line for the
//!   same test id (which a parser may have cut at ` - ` or a space and missed).
//! - `marker_in_output`: the test output itself holds one of the harness's log markers
//!   (`>>>>> Test Exit Code: 0`, `>>>>> End Test Output`, ...), which steer the harness's
//!   reading of the log (the first exit code wins; the end marker cuts the log short).
//!
//! What text alone cannot show stays possible: output printed outside pytest's capture while
//! tests run, or a complete forged summary printed after pytest's own, reads like pytest's.

use super::harness::{Outcome, MARKERS};
use super::parsers::{py_isspace, py_split, LogParser};
use super::StatusMap;
use regex::Regex;
use serde::{Deserialize, Serialize};
use std::sync::OnceLock;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Refusal {
    CapturedOutput,
    AfterSummary,
    UncountedStatus,
    MalformedLine,
    LaterFailure,
    MarkerInOutput,
}

impl Refusal {
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::CapturedOutput => "captured_output",
            Refusal::AfterSummary => "after_summary",
            Refusal::UncountedStatus => "uncounted_status",
            Refusal::MalformedLine => "malformed_line",
            Refusal::LaterFailure => "later_failure",
            Refusal::MarkerInOutput => "marker_in_output",
        }
    }
}

/// The parts of a pytest log whose lines are pytest's own.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PytestRegions {
    /// Lines before the first report section (the progress lines).
    pub sections_start: usize,
    /// The last `short test summary info` header.
    pub summary: Option<usize>,
    /// pytest's final statistics line.
    pub final_stats: Option<usize>,
}

fn strip_ansi(s: &str) -> std::borrow::Cow<'_, str> {
    static ANSI: OnceLock<Regex> = OnceLock::new();
    ANSI.get_or_init(|| Regex::new(r"\x1b\[[0-9;]*[A-Za-z]").expect("ansi regex"))
        .replace_all(s, "")
}

impl PytestRegions {
    pub fn of(text: &str) -> PytestRegions {
        static HEADER: OnceLock<Regex> = OnceLock::new();
        static STATS: OnceLock<Regex> = OnceLock::new();
        let header = HEADER.get_or_init(|| Regex::new(r"^={3,} (.+) ={3,}$").expect("header"));
        let stats = STATS.get_or_init(|| {
            Regex::new(r"^={3,} .*\b(passed|failed|errors?|skipped|xfailed|xpassed|deselected|warnings?|no tests ran)\b.* in [0-9.]+s\b.* ={3,}$")
                .expect("stats")
        });
        let lines: Vec<String> = text
            .split('\n')
            .map(|l| strip_ansi(l.trim_end()).into_owned())
            .collect();
        let summary = lines.iter().rposition(|l| {
            header
                .captures(l)
                .is_some_and(|c| c[1].trim() == "short test summary info")
        });
        let is_stats = |l: &String| stats.is_match(l);
        let final_stats = match summary {
            Some(s) => lines[s + 1..].iter().position(is_stats).map(|p| p + s + 1),
            None => lines.iter().rposition(is_stats),
        };
        let sections_start = lines
            .iter()
            .position(|l| {
                header
                    .captures(l)
                    .is_some_and(|c| !c[1].contains("test session starts") && !stats.is_match(l))
            })
            .or(final_stats)
            .unwrap_or(lines.len());
        PytestRegions {
            sections_start,
            summary,
            final_stats,
        }
    }

    /// Why a status decided at `line` is not pytest's own, if it is not.
    pub fn distrust(&self, line: usize) -> Option<Refusal> {
        if self.final_stats.is_some_and(|f| line > f) {
            return Some(Refusal::AfterSummary);
        }
        if line < self.sections_start {
            return None;
        }
        match self.summary {
            Some(s) if line > s => None,
            _ => Some(Refusal::CapturedOutput),
        }
    }
}

/// The refusal, if any, of one FAIL_TO_PASS / PASS_TO_PASS test the harness counted as
/// `outcome` with the status-map entry `key`, parsed from `text`.
pub fn refuse(
    parser: LogParser,
    regions: Option<&PytestRegions>,
    text: &str,
    map: &StatusMap,
    key: Option<&str>,
    outcome: Outcome,
    output_has_marker: bool,
) -> Option<Refusal> {
    match outcome {
        Outcome::Failure => None,
        Outcome::Uncounted => Some(Refusal::UncountedStatus),
        Outcome::Success => {
            if output_has_marker {
                return Some(Refusal::MarkerInOutput);
            }
            let key = key?;
            let entry = map.get(key)?;
            if !entry.status.is_pass() || !parser.is_pytest_family() {
                return None;
            }
            if let Some(r) = regions.and_then(|r| r.distrust(entry.line)) {
                return Some(r);
            }
            let lines: Vec<&str> = text.split('\n').collect();
            let word = entry.status.to_string();
            let deciding = lines
                .get(entry.line)
                .map(|l| strip_ansi(l))
                .unwrap_or_default();
            if !py_split(&deciding).contains(&word.as_str()) {
                return Some(Refusal::MalformedLine);
            }
            let later_failure = lines.iter().skip(entry.line + 1).any(|l| {
                let l = strip_ansi(l);
                let rest = l
                    .strip_prefix("FAILED ")
                    .or_else(|| l.strip_prefix("ERROR "))
                    .map(|r| r.trim_start_matches(py_isspace));
                rest.and_then(|r| r.strip_prefix(key))
                    .is_some_and(|after| after.is_empty() || after.starts_with(py_isspace))
            });
            later_failure.then_some(Refusal::LaterFailure)
        }
    }
}

/// Whether the test command's own output holds a harness marker.
pub fn has_marker(output: &str) -> bool {
    MARKERS.iter().any(|m| output.contains(m))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regions_of_a_pytest_log() {
        let log = "\
============================= test session starts ==============================
t.py ..F                                                                 [100%]
=================================== FAILURES ===================================
___________________________________ test_c ____________________________________
----------------------------- Captured stdout call -----------------------------
PASSED t.py::test_c
=========================== short test summary info ============================
PASSED t.py::test_a
FAILED t.py::test_c - assert 0
========================= 1 failed, 2 passed in 0.05s ==========================
PASSED t.py::test_c
";
        let r = PytestRegions::of(log);
        assert_eq!(r.sections_start, 2);
        assert_eq!(r.summary, Some(6));
        assert_eq!(r.final_stats, Some(9));
        assert_eq!(r.distrust(1), None);
        assert_eq!(r.distrust(5), Some(Refusal::CapturedOutput));
        assert_eq!(r.distrust(7), None);
        assert_eq!(r.distrust(10), Some(Refusal::AfterSummary));
        // Colour codes do not hide the structure.
        let coloured = log
            .replace("=== short", "=== \u{1b}[1mshort")
            .replace("info ===", "info\u{1b}[0m ===");
        assert_eq!(PytestRegions::of(&coloured).summary, Some(6));
    }
}
