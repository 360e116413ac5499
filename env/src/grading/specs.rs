//! How the official harness runs an instance's tests, per repository and version (the facts
//! of `swebench` 4.x `MAP_REPO_VERSION_TO_SPECS` and `get_test_directives`, which the
//! published eval scripts of SWE-bench Verified were generated from): the test command, the
//! test files the `test_patch` touches appended to it (as Django module labels for Django),
//! and the environment some Django versions export first.

use regex::Regex;
use std::sync::OnceLock;

/// `pytest -rA` (the harness's `TEST_PYTEST`, as it ends up defined).
pub const TEST_PYTEST: &str = "pytest -rA";
pub const TEST_ASTROPY_PYTEST: &str = "pytest -rA -vv -o console_output_style=classic --tb=no";
pub const TEST_DJANGO: &str =
    "./tests/runtests.py --verbosity 2 --settings=test_sqlite --parallel 1";
pub const TEST_DJANGO_NO_PARALLEL: &str = "./tests/runtests.py --verbosity 2";
pub const TEST_SEABORN: &str = "pytest --no-header -rA";
pub const TEST_SPHINX: &str = "tox --current-env -epy39 -v --";
pub const TEST_SYMPY: &str =
    "PYTHONWARNINGS='ignore::UserWarning,ignore::SyntaxWarning' bin/test -C --verbose";

/// Extensions whose files are no test directive (`NON_TEST_EXTS`; `csv` has no dot there).
pub const NON_TEST_EXTS: [&str; 11] = [
    ".json", ".png", "csv", ".txt", ".md", ".jpg", ".jpeg", ".pkl", ".yml", ".yaml", ".toml",
];

/// The harness's test command for `repo` at `version`, without directives. `None` for a
/// repository or version it has no spec for.
pub fn test_cmd(repo: &str, version: &str) -> Option<&'static str> {
    let v = version;
    let among = |vs: &[&str]| vs.contains(&v);
    Some(match repo {
        "astropy/astropy" if among(&["0.1", "0.2", "0.3", "0.4", "1.1", "1.2", "1.3"]) => {
            TEST_ASTROPY_PYTEST
        }
        "astropy/astropy"
            if among(&[
                "3.0", "3.1", "3.2", "4.1", "4.2", "4.3", "5.0", "5.1", "5.2", "v5.3",
            ]) =>
        {
            TEST_PYTEST
        }
        "django/django" if v == "1.9" => TEST_DJANGO_NO_PARALLEL,
        "django/django"
            if among(&[
                "1.4", "1.5", "1.6", "1.7", "1.8", "1.10", "1.11", "2.0", "2.1", "2.2", "3.0",
                "3.1", "3.2", "4.0", "4.1", "4.2", "5.0", "5.1", "5.2",
            ]) =>
        {
            TEST_DJANGO
        }
        "mwaskom/seaborn" if among(&["0.11", "0.12", "0.13", "0.14"]) => TEST_SEABORN,
        "sphinx-doc/sphinx" => TEST_SPHINX,
        "sympy/sympy" => TEST_SYMPY,
        "matplotlib/matplotlib"
        | "pallets/flask"
        | "psf/requests"
        | "pydata/xarray"
        | "pylint-dev/pylint"
        | "pytest-dev/pytest"
        | "scikit-learn/scikit-learn"
        | "marshmallow-code/marshmallow"
        | "pvlib/pvlib-python"
        | "pydicom/pydicom"
        | "pylint-dev/astroid"
        | "pyvista/pyvista"
        | "sqlfluff/sqlfluff" => TEST_PYTEST,
        _ => return None,
    })
}

/// Commands the harness's eval script runs before the tests for `repo` at `version` (Django
/// up to 3.2 sets an English UTF-8 locale). The locale generation itself needs root and a
/// `locales` package, which the official images have; the exports are what the tests see.
pub fn eval_exports(repo: &str, version: &str) -> &'static [&'static str] {
    const OLD: [&str; 4] = [
        "export LANG=en_US.UTF-8",
        "export LC_ALL=en_US.UTF-8",
        "export PYTHONIOENCODING=utf8",
        "export LANGUAGE=en_US:en",
    ];
    const THREE: [&str; 3] = [
        "export LANG=en_US.UTF-8",
        "export LANGUAGE=en_US:en",
        "export LC_ALL=en_US.UTF-8",
    ];
    match (repo, version) {
        ("django/django", "1.7" | "1.8" | "1.9" | "1.10" | "1.11" | "2.0" | "2.1" | "2.2") => &OLD,
        ("django/django", "3.0" | "3.1" | "3.2") => &THREE,
        _ => &[],
    }
}

/// The test files a `test_patch` touches (`diff --git a/… b/<path>`), without data files;
/// for Django as module labels (`tests/` and `.py` dropped, `/` → `.`).
pub fn test_directives(repo: &str, test_patch: &str) -> Vec<String> {
    static DIFF: OnceLock<Regex> = OnceLock::new();
    let re = DIFF.get_or_init(|| Regex::new(r"diff --git a/.* b/(.*)").expect("diff regex"));
    let files = re
        .captures_iter(test_patch)
        .map(|c| c[1].to_string())
        .filter(|d| !NON_TEST_EXTS.iter().any(|e| d.ends_with(e)));
    if repo != "django/django" {
        return files.collect();
    }
    files
        .map(|d| {
            let d = d.strip_suffix(".py").unwrap_or(&d);
            let d = d.strip_prefix("tests/").unwrap_or(d);
            d.replace('/', ".")
        })
        .collect()
}

/// The files of a patch that exist before it (`--- a/<path>`, not `/dev/null`): what the
/// harness checks out at `base_commit` before applying the test patch, and after the tests.
pub fn modified_files(patch: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for l in patch.lines() {
        if let Some(p) = l.strip_prefix("--- a/") {
            // A tab may separate a timestamp (`diff -u` style).
            let p = p.split('\t').next().unwrap_or(p).trim_end().to_string();
            if !out.contains(&p) {
                out.push(p);
            }
        }
    }
    out
}

/// The full test command: the repository's command, or `cmd` when given, with the test
/// directives appended (unquoted, joined by spaces, as the harness's eval script has them).
pub fn full_test_cmd(base: &str, directives: &[String]) -> String {
    std::iter::once(base.to_string())
        .chain(directives.iter().cloned())
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_per_repository_and_version() {
        assert_eq!(test_cmd("django/django", "5.0"), Some(TEST_DJANGO));
        assert_eq!(
            test_cmd("django/django", "1.9"),
            Some(TEST_DJANGO_NO_PARALLEL)
        );
        assert_eq!(
            test_cmd("astropy/astropy", "1.3"),
            Some(TEST_ASTROPY_PYTEST)
        );
        assert_eq!(test_cmd("astropy/astropy", "v5.3"), Some(TEST_PYTEST));
        assert_eq!(test_cmd("mwaskom/seaborn", "0.12"), Some(TEST_SEABORN));
        assert_eq!(test_cmd("sympy/sympy", "1.12"), Some(TEST_SYMPY));
        assert_eq!(test_cmd("pallets/flask", "2.3"), Some(TEST_PYTEST));
        assert_eq!(test_cmd("pypi/toolz", "1"), None);
        assert_eq!(eval_exports("django/django", "3.2").len(), 3);
        assert!(eval_exports("django/django", "5.0").is_empty());
    }

    #[test]
    fn directives_from_the_test_patch() {
        let tp = "diff --git a/tests/forms_tests/tests/test_formsets.py b/tests/forms_tests/tests/test_formsets.py\n\
                  --- a/tests/forms_tests/tests/test_formsets.py\n+++ b/tests/forms_tests/tests/test_formsets.py\n\
                  diff --git a/tests/data.json b/tests/data.json\nnew file mode 100644\n--- /dev/null\n+++ b/tests/data.json\n";
        assert_eq!(
            test_directives("django/django", tp),
            vec!["forms_tests.tests.test_formsets"]
        );
        assert_eq!(
            test_directives("pallets/flask", tp),
            vec!["tests/forms_tests/tests/test_formsets.py"]
        );
        assert_eq!(
            modified_files(tp),
            vec!["tests/forms_tests/tests/test_formsets.py"]
        );
        assert_eq!(
            full_test_cmd("pytest -rA", &["a.py".into(), "b.py".into()]),
            "pytest -rA a.py b.py"
        );
    }
}
