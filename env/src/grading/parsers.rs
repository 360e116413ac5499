//! The official harness's log parsers (`swebench==5.0.2`, `harness/log_parsers/python.py`),
//! rule for rule, for the 18 Python repositories it knows (the 12 of SWE-bench Verified among
//! them). Each parser turns a test log into `test id → status`, where a later line about the
//! same test replaces an earlier one but keeps its place (a Python dict's order, which the
//! harness's prefix matching of truncated ids depends on).
//!
//! Python's string semantics are part of the rules and are reproduced: `str.split()` and
//! `str.strip()` split at Python's whitespace (which, unlike Rust's, includes U+001C–U+001F),
//! `str.split(sep)[0]` is the text before the first `sep`, and a status is whatever token the
//! rule reads, even when it is not one of the five words (`PASSEDx`): such a token is kept as
//! `Status::Other`, because the harness keeps it too.
//!
//! Every parsed entry remembers the line that decided it, so the grading can tell where a
//! status came from (see `strict`).

use super::{Status, StatusMap, TestStatus};
use regex::Regex;
use serde::{Deserialize, Serialize};
use std::sync::OnceLock;

/// One of the harness's Python log parsers, by its registry name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum LogParser {
    #[serde(rename = "parse_log_pytest")]
    Pytest,
    #[serde(rename = "parse_log_pytest_options")]
    PytestOptions,
    #[serde(rename = "parse_log_pytest_v2")]
    PytestV2,
    #[serde(rename = "parse_log_django")]
    Django,
    #[serde(rename = "parse_log_seaborn")]
    Seaborn,
    #[serde(rename = "parse_log_sympy")]
    Sympy,
    #[serde(rename = "parse_log_matplotlib")]
    Matplotlib,
}

/// The harness's `MAP_REPO_TO_PARSER_PY`, as parser registry names.
pub const REPO_PARSERS: [(&str, LogParser); 18] = [
    ("astropy/astropy", LogParser::PytestV2),
    ("django/django", LogParser::Django),
    ("marshmallow-code/marshmallow", LogParser::Pytest),
    ("matplotlib/matplotlib", LogParser::Matplotlib),
    ("mwaskom/seaborn", LogParser::Seaborn),
    ("pallets/flask", LogParser::Pytest),
    ("psf/requests", LogParser::PytestOptions),
    ("pvlib/pvlib-python", LogParser::Pytest),
    ("pydata/xarray", LogParser::Pytest),
    ("pydicom/pydicom", LogParser::PytestOptions),
    ("pylint-dev/astroid", LogParser::Pytest),
    ("pylint-dev/pylint", LogParser::PytestOptions),
    ("pytest-dev/pytest", LogParser::Pytest),
    ("pyvista/pyvista", LogParser::Pytest),
    ("scikit-learn/scikit-learn", LogParser::PytestV2),
    ("sqlfluff/sqlfluff", LogParser::Pytest),
    ("sphinx-doc/sphinx", LogParser::PytestV2),
    ("sympy/sympy", LogParser::Sympy),
];

impl LogParser {
    pub const ALL: [LogParser; 7] = [
        LogParser::Pytest,
        LogParser::PytestOptions,
        LogParser::PytestV2,
        LogParser::Django,
        LogParser::Seaborn,
        LogParser::Sympy,
        LogParser::Matplotlib,
    ];

    /// The harness's registry name (`parse_log_pytest`, ...).
    pub fn name(self) -> &'static str {
        match self {
            LogParser::Pytest => "parse_log_pytest",
            LogParser::PytestOptions => "parse_log_pytest_options",
            LogParser::PytestV2 => "parse_log_pytest_v2",
            LogParser::Django => "parse_log_django",
            LogParser::Seaborn => "parse_log_seaborn",
            LogParser::Sympy => "parse_log_sympy",
            LogParser::Matplotlib => "parse_log_matplotlib",
        }
    }

    /// A registry name (with or without the `parse_log_` prefix) or a repository-named alias
    /// the harness registers (`parse_log_flask`, `parse_log_astropy`, ...).
    pub fn from_name(name: &str) -> Option<LogParser> {
        let short = name.strip_prefix("parse_log_").unwrap_or(name);
        Some(match short {
            "pytest" | "astroid" | "flask" | "marshmallow" | "pvlib" | "pyvista" | "sqlfluff"
            | "xarray" => LogParser::Pytest,
            "pytest_options" | "pydicom" | "requests" | "pylint" => LogParser::PytestOptions,
            "pytest_v2" | "astropy" | "scikit" | "sphinx" => LogParser::PytestV2,
            "django" => LogParser::Django,
            "seaborn" => LogParser::Seaborn,
            "sympy" => LogParser::Sympy,
            "matplotlib" => LogParser::Matplotlib,
            _ => return None,
        })
    }

    /// The parser the harness uses for `repo` (`owner/name`); pytest's for any other.
    pub fn for_repo(repo: &str) -> LogParser {
        REPO_PARSERS
            .iter()
            .find(|(r, _)| *r == repo)
            .map(|(_, p)| *p)
            .unwrap_or(LogParser::Pytest)
    }

    /// Whether the parser reads pytest's output (the family whose captured-output sections
    /// `strict` knows).
    pub fn is_pytest_family(self) -> bool {
        !matches!(self, LogParser::Django | LogParser::Sympy)
    }

    /// Test id → status.
    pub fn parse(self, log: &str) -> Result<StatusMap, ParseError> {
        let mut map = StatusMap::default();
        self.parse_into(log, &mut map)?;
        Ok(map)
    }

    /// Test id → status and the 0-based line (of `log.split('\n')`) that decided it.
    pub fn parse_into(self, log: &str, map: &mut StatusMap) -> Result<(), ParseError> {
        match self {
            LogParser::Pytest => pytest(log, map, |l| l.to_string(), false),
            LogParser::Matplotlib => pytest(
                log,
                map,
                |l| {
                    l.replace("MouseButton.LEFT", "1")
                        .replace("MouseButton.RIGHT", "3")
                },
                false,
            ),
            LogParser::PytestOptions => pytest(log, map, |l| l.to_string(), true),
            LogParser::PytestV2 => pytest_v2(log, map),
            LogParser::Seaborn => seaborn(log, map),
            LogParser::Sympy => sympy(log, map),
            LogParser::Django => return django(log, map),
        }
        Ok(())
    }
}

impl std::fmt::Display for LogParser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A log the harness's parser raises on (its run of that log ends in an exception, and the
/// instance is not graded).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{parser}: line {line} makes the harness's parser raise {exception}: {text:.120}")]
pub struct ParseError {
    pub parser: &'static str,
    /// 1-based.
    pub line: usize,
    pub exception: &'static str,
    pub text: String,
}

/// Python's `str.isspace()` for one character.
pub fn py_isspace(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// Python's `str.split()` (no separator).
pub fn py_split(s: &str) -> Vec<&str> {
    s.split(py_isspace).filter(|t| !t.is_empty()).collect()
}

/// Python's `str.strip()` (no argument).
pub fn py_strip(s: &str) -> &str {
    s.trim_matches(py_isspace)
}

/// The five status words, in the order the harness's `TestStatus` enum lists them.
fn starts_with_status(line: &str) -> bool {
    TestStatus::ALL.iter().any(|s| line.starts_with(s.as_str()))
}

fn ends_with_status(line: &str) -> bool {
    TestStatus::ALL.iter().any(|s| line.ends_with(s.as_str()))
}

/// pytest's `SKIPPED [N] path:line: reason` summary, where `[N]` names no test.
fn is_skip_summary(status: &str, name: &str) -> bool {
    static COUNT: OnceLock<Regex> = OnceLock::new();
    // Python's `\d` in a str pattern is any Unicode decimal digit, as the regex crate's is.
    let re = COUNT.get_or_init(|| Regex::new(r"^\[\d+\]$").expect("count regex"));
    status == "SKIPPED" && re.is_match(name)
}

fn pytest(log: &str, map: &mut StatusMap, rewrite: impl Fn(&str) -> String, options: bool) {
    for (i, raw) in log.split('\n').enumerate() {
        let mut line = rewrite(raw);
        if !starts_with_status(&line) {
            continue;
        }
        if line.starts_with("FAILED") {
            line = line.replace(" - ", " ");
        }
        let t = py_split(&line);
        if t.len() <= 1 || is_skip_summary(t[0], t[1]) {
            continue;
        }
        let name = if options {
            option_name(t[1])
        } else {
            t[1].to_string()
        };
        map.set(name, Status::from_token(t[0]), i);
    }
}

/// `requests` / `pylint` / `pydicom` ids: a parameter that looks like a path is cut to its
/// last component (`test[/a/b/c]` → `test[/c]`); anything after the last `]` goes.
fn option_name(id: &str) -> String {
    let (Some(open), Some(close)) = (id.find('['), id.rfind(']')) else {
        return id.to_string();
    };
    if close < open {
        return id.to_string();
    }
    let main = &id[..open];
    let mut option = id[open + 1..close].to_string();
    if option.starts_with('/') && !option.starts_with("//") && !option.contains('*') {
        option = format!("/{}", option.rsplit('/').next().unwrap_or(""));
    }
    format!("{main}[{option}]")
}

fn pytest_v2(log: &str, map: &mut StatusMap) {
    static COLOR: OnceLock<Regex> = OnceLock::new();
    let color = COLOR.get_or_init(|| Regex::new(r"\[(\d+)m").expect("colour regex"));
    for (i, raw) in log.split('\n').enumerate() {
        // `[31m`-style codes go first, then every control character 1..=31 (the ESC before
        // a code included).
        let line: String = color
            .replace_all(raw, "")
            .chars()
            .filter(|c| !('\u{1}'..='\u{1f}').contains(c))
            .collect();
        if starts_with_status(&line) {
            let cut = if line.starts_with("FAILED") {
                line.split(" - ").next().unwrap_or("")
            } else {
                &line
            };
            let t = py_split(cut);
            if t.len() >= 2 && !is_skip_summary(t[0], t[1]) {
                map.set(t[1..].join(" "), Status::from_token(t[0]), i);
            }
        } else if ends_with_status(&line) {
            let t = py_split(&line);
            if t.len() >= 2 {
                map.set(
                    t[..t.len() - 1].join(" "),
                    Status::from_token(t[t.len() - 1]),
                    i,
                );
            }
        }
    }
}

fn seaborn(log: &str, map: &mut StatusMap) {
    for (i, line) in log.split('\n').enumerate() {
        let parts = py_split(line);
        if parts.len() < 2 {
            continue;
        }
        if line.starts_with("FAILED") {
            map.set(parts[1].to_string(), Status::Known(TestStatus::Failed), i);
        } else if line.contains(" PASSED ") {
            if parts[1] == "PASSED" {
                map.set(parts[0].to_string(), Status::Known(TestStatus::Passed), i);
            }
        } else if line.starts_with("PASSED") {
            map.set(parts[1].to_string(), Status::Known(TestStatus::Passed), i);
        }
    }
}

fn sympy(log: &str, map: &mut StatusMap) {
    static FAILED: OnceLock<Regex> = OnceLock::new();
    // A failure's header, `____ sympy/x/tests/test_y.py:test_z ____`.
    let re = FAILED.get_or_init(|| Regex::new(r"(_*) (.*)\.py:(.*) (_*)").expect("sympy regex"));
    for c in re.captures_iter(log) {
        let at = c.get(0).expect("match").start();
        let line = log[..at].matches('\n').count();
        map.set(
            format!("{}.py:{}", &c[2], &c[3]),
            Status::Known(TestStatus::Failed),
            line,
        );
    }
    for (i, raw) in log.split('\n').enumerate() {
        let line = py_strip(raw);
        if !line.starts_with("test_") {
            continue;
        }
        let first = || py_split(line)[0].to_string();
        if line.ends_with(" E") {
            map.set(first(), Status::Known(TestStatus::Error), i);
        }
        if line.ends_with(" F") {
            map.set(first(), Status::Known(TestStatus::Failed), i);
        }
        if line.ends_with(" ok") {
            map.set(first(), Status::Known(TestStatus::Passed), i);
        }
    }
}

fn django(log: &str, map: &mut StatusMap) -> Result<(), ParseError> {
    let mut prev_test: Option<String> = None;
    let passed = || Status::Known(TestStatus::Passed);
    for (i, raw) in log.split('\n').enumerate() {
        let mut line = py_strip(raw).to_string();
        if line.contains("--version is equivalent to version") {
            map.set("--version is equivalent to version".into(), passed(), i);
        }
        if line.contains(" ... ") {
            prev_test = Some(line.split(" ... ").next().unwrap_or("").to_string());
        }
        for suffix in [" ... ok", " ... OK", " ...  OK"] {
            if line.ends_with(suffix) {
                // The harness's special case for django__django-7188, where a migration's
                // output shares the test's line.
                if py_strip(&line)
                    .starts_with("Applying sites.0002_alter_domain_unique...test_no_migrations")
                {
                    line = py_strip(line.split_once("...").map_or("", |(_, b)| b)).to_string();
                }
                let test = rsplit_once_head(&line, suffix);
                map.set(test, passed(), i);
                break;
            }
        }
        if line.contains(" ... skipped") {
            let test = line.split(" ... skipped").next().unwrap_or("").to_string();
            map.set(test, Status::Known(TestStatus::Skipped), i);
        }
        if line.ends_with(" ... FAIL") {
            let test = line.split(" ... FAIL").next().unwrap_or("").to_string();
            map.set(test, Status::Known(TestStatus::Failed), i);
        }
        if line.starts_with("FAIL:") {
            let test = second_token(&line, i)?;
            map.set(test, Status::Known(TestStatus::Failed), i);
        }
        if line.ends_with(" ... ERROR") {
            let test = line.split(" ... ERROR").next().unwrap_or("").to_string();
            map.set(test, Status::Known(TestStatus::Error), i);
        }
        if line.starts_with("ERROR:") {
            let test = second_token(&line, i)?;
            map.set(test, Status::Known(TestStatus::Error), i);
        }
        if line.trim_start_matches(py_isspace).starts_with("ok") {
            // The test's `ok` on a line of its own, after output it printed.
            if let Some(prev) = &prev_test {
                map.set(prev.clone(), passed(), i);
            }
        }
    }
    // Three ways Django's runner output is known to split a test's `ok` from its line.
    static PATTERNS: OnceLock<[Regex; 3]> = OnceLock::new();
    let patterns = PATTERNS.get_or_init(|| {
        // Python's `\s` also matches U+001C..U+001F.
        [
            r"(?m)^(.*?)[\s\x1c-\x1f]\.\.\.[\s\x1c-\x1f]Testing\ against\ Django\ installed\ in\ ((?s:.*?))\ silenced\)\.\nok$",
            r"(?m)^(.*?)[\s\x1c-\x1f]\.\.\.[\s\x1c-\x1f]Internal\ Server\ Error:\ /(.*)/\nok$",
            r"(?m)^(.*?)[\s\x1c-\x1f]\.\.\.[\s\x1c-\x1f]System check identified no issues \(0 silenced\)\nok$",
        ]
        .map(|p| Regex::new(p).expect("django regex"))
    });
    for re in patterns {
        for c in re.captures_iter(log) {
            let at = c.get(0).expect("match").start();
            let line = log[..at].matches('\n').count();
            map.set(c[1].to_string(), passed(), line);
        }
    }
    Ok(())
}

/// Python's `line.rsplit(suffix, 1)[0]`.
fn rsplit_once_head(line: &str, sep: &str) -> String {
    line.rsplit_once(sep)
        .map_or(line, |(head, _)| head)
        .to_string()
}

/// `line.split()[1].strip()`, or the `IndexError` the harness raises on a one-word line.
fn second_token(line: &str, i: usize) -> Result<String, ParseError> {
    match py_split(line).get(1) {
        Some(t) => Ok(py_strip(t).to_string()),
        None => Err(ParseError {
            parser: LogParser::Django.name(),
            line: i + 1,
            exception: "IndexError",
            text: line.to_string(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn statuses(p: LogParser, log: &str) -> Vec<(String, String)> {
        p.parse(log)
            .unwrap()
            .iter()
            .map(|(k, e)| (k.clone(), e.status.to_string()))
            .collect()
    }

    fn pairs(v: &[(&str, &str)]) -> Vec<(String, String)> {
        v.iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    #[test]
    fn pytest_summary_lines_and_python_split() {
        let log = "PASSED t.py::a\nFAILED t.py::b - assert 1 - 2\nSKIPPED [2] t.py:3: no\n\
                   XFAIL t.py::c - reason\nXPASS t.py::d\nERROR t.py::e\u{1f}x\nPASSEDx t.py::f\n\
                   t.py::g PASSED\nPASSED t.py::a\n";
        assert_eq!(
            statuses(LogParser::Pytest, log),
            pairs(&[
                ("t.py::a", "PASSED"),
                ("t.py::b", "FAILED"),
                ("t.py::c", "XFAIL"),
                // U+001F is whitespace to Python.
                ("t.py::e", "ERROR"),
                ("t.py::f", "PASSEDx"),
            ])
        );
    }

    #[test]
    fn pytest_v2_joins_ids_with_spaces_strips_colour_and_reads_old_style() {
        let log = "\u{1b}[32mPASSED\u{1b}[0m t.py::test_a[a b]\n\
                   FAILED t.py::test_b[x - y] - boom\n\
                   t.py::test_old PASSED\n\
                   SKIPPED [1] t.py:2: skip\n";
        assert_eq!(
            statuses(LogParser::PytestV2, log),
            pairs(&[
                ("t.py::test_a[a b]", "PASSED"),
                ("t.py::test_b[x", "FAILED"),
                ("t.py::test_old", "PASSED"),
            ])
        );
        // pytest's parser keeps the colour codes and cuts at the space.
        assert_eq!(
            statuses(LogParser::Pytest, "PASSED t.py::test_a[a b]\n"),
            pairs(&[("t.py::test_a[a", "PASSED")])
        );
    }

    #[test]
    fn options_cut_path_parameters_and_matplotlib_renames_buttons() {
        let log = "PASSED t.py::test_x[/a/b/c.txt]\nPASSED t.py::test_y[//a/b]\nPASSED t.py::test_z[a]tail\n";
        assert_eq!(
            statuses(LogParser::PytestOptions, log),
            pairs(&[
                ("t.py::test_x[/c.txt]", "PASSED"),
                ("t.py::test_y[//a/b]", "PASSED"),
                ("t.py::test_z[a]", "PASSED"),
            ])
        );
        assert_eq!(
            statuses(
                LogParser::Matplotlib,
                "PASSED t.py::test[MouseButton.LEFT]\n"
            ),
            pairs(&[("t.py::test[1]", "PASSED")])
        );
    }

    #[test]
    fn seaborn_knows_only_passed_and_failed() {
        let log = "XFAIL t.py::a\nt.py::b PASSED [ 50%]\nFAILED t.py::c - x\nPASSED t.py::d\n";
        assert_eq!(
            statuses(LogParser::Seaborn, log),
            pairs(&[
                ("t.py::b", "PASSED"),
                ("t.py::c", "FAILED"),
                ("t.py::d", "PASSED")
            ])
        );
    }

    #[test]
    fn django_runner_lines() {
        let log = "test_a (m.T.test_a) ... ok\n\
                   test_b (m.T.test_b) ... FAIL\n\
                   test_c (m.T.test_c) ... skipped 'no db'\n\
                   test_d (m.T.test_d) ... printed something\n\
                   ok\n\
                   test_e (m.T.test_e) ... ERROR\n\
                   FAIL: test_f (m.T.test_f)\n";
        assert_eq!(
            statuses(LogParser::Django, log),
            pairs(&[
                ("test_a (m.T.test_a)", "PASSED"),
                ("test_b (m.T.test_b)", "FAILED"),
                ("test_c (m.T.test_c)", "SKIPPED"),
                ("test_d (m.T.test_d)", "PASSED"),
                ("test_e (m.T.test_e)", "ERROR"),
                ("test_f", "FAILED"),
            ])
        );
        let e = LogParser::Django.parse("x\nFAIL:\n").unwrap_err();
        assert_eq!((e.line, e.exception), (2, "IndexError"));
    }

    #[test]
    fn sympy_runner_lines_and_failure_headers() {
        let log = "test_a ok\ntest_b F\n  test_c E\n\
                   ________ sympy/x/tests/test_y.py:test_b ________\n";
        assert_eq!(
            statuses(LogParser::Sympy, log),
            pairs(&[
                ("sympy/x/tests/test_y.py:test_b", "FAILED"),
                ("test_a", "PASSED"),
                ("test_b", "FAILED"),
                ("test_c", "ERROR"),
            ])
        );
    }

    #[test]
    fn repositories_choose_their_parser() {
        assert_eq!(LogParser::for_repo("django/django"), LogParser::Django);
        assert_eq!(LogParser::for_repo("sympy/sympy"), LogParser::Sympy);
        assert_eq!(LogParser::for_repo("astropy/astropy"), LogParser::PytestV2);
        assert_eq!(
            LogParser::for_repo("psf/requests"),
            LogParser::PytestOptions
        );
        assert_eq!(LogParser::for_repo("pypi/toolz"), LogParser::Pytest);
        assert_eq!(
            LogParser::from_name("parse_log_sphinx"),
            Some(LogParser::PytestV2)
        );
        for p in LogParser::ALL {
            assert_eq!(LogParser::from_name(p.name()), Some(p));
        }
    }
}
