//! SWE-bench grading against the official harness, and real SWE-bench Verified instances
//! built offline in Docker.
//!
//! - `grading_parity_with_the_official_harness`: a corpus of test logs — real runs of the
//!   pytest (Flask), Django and SymPy suites in offline-built containers, plus adversarial
//!   texts (passes printed in captured output or after pytest's summary, ANSI colour, ids
//!   with spaces and unicode, killed runs, duplicate ids, collection errors, odd status
//!   tokens, forged markers) — graded by this crate's grader and by `swebench==5.0.2` (a
//!   venv from `scripts/swebench-harness.sh`) under every applicable parser. Per-test
//!   statuses, the harness's maps, counts and resolution must agree; the only allowed
//!   difference is a documented refusal of a pass (harness resolved, here not). Prints the
//!   table (`bench/swebench_parity.sh`).
//!
//! It needs a Docker engine (skipped without one unless `LEDGER_REQUIRE_DOCKER` is set),
//! `../shared` (skipped when absent: a fresh clone has none) and the harness venv (skipped
//! without it unless `SWEBENCH_REQUIRE_HARNESS` is set). The three real instances run
//! through the binary in `tests/swebench.rs`.

#[path = "swebench/pins.rs"]
mod pins;

use env::grading::harness::{self, EvalType, Outcome};
use env::grading::parsers::LogParser;
use env::grading::{grade_output, Graded};
use env::offline::{ensure_offline_image, OfflineImage, OfflineSpec};
use env::{Container, ContainerSpec, Engine, ExecRequest};
use stages::pypi::PypiFile;
use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

fn shared() -> Option<PathBuf> {
    let d = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/reference/swebench");
    if d.join("offline_instances.jsonl").is_file() {
        return Some(d);
    }
    eprintln!(
        "SKIPPED: {} is absent (a fresh clone has no ../shared; CI has it)",
        d.display()
    );
    None
}

fn engine() -> Option<Engine> {
    if env::engine::docker_info_ok() {
        return Some(Engine::connect().expect("`docker info` answers but bollard cannot connect"));
    }
    if std::env::var_os("LEDGER_REQUIRE_DOCKER").is_none() {
        eprintln!(
            "SKIPPED: no Docker engine (`docker info` fails) and LEDGER_REQUIRE_DOCKER is unset"
        );
        return None;
    }
    Some(
        env::engine::start_with_setup_script()
            .expect("LEDGER_REQUIRE_DOCKER is set but no engine could be started"),
    )
}

fn harness_python() -> Option<PathBuf> {
    let p = std::env::var_os("SWEBENCH_HARNESS_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/swebench-5.0.2/bin/python")
        });
    if p.is_file() {
        return Some(p);
    }
    if std::env::var_os("SWEBENCH_REQUIRE_HARNESS").is_some() {
        panic!("SWEBENCH_REQUIRE_HARNESS is set but {} is missing (scripts/swebench-harness.sh installs it)", p.display());
    }
    eprintln!(
        "SKIPPED: no swebench==5.0.2 venv at {} (run scripts/swebench-harness.sh)",
        p.display()
    );
    None
}

fn cache_dir() -> PathBuf {
    std::env::var_os("DAVINCI_ENV_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/env-cache"))
}

fn fetch(f: &PypiFile) -> Vec<u8> {
    let path = stages::pypi::ensure(f).unwrap_or_else(|e| panic!("{}: {e:#}", f.label()));
    let bytes = std::fs::read(&path).unwrap();
    f.check(&bytes).unwrap();
    bytes
}

/// The offline environment of one of the three (`repo` picks the pins).
fn build(engine: &Engine, repo: &str, reverse: Vec<&str>) -> OfflineImage {
    let (base, _) =
        env::image::ensure_base_image(engine, &Default::default(), &cache_dir()).unwrap();
    let (sdist, wheels) = match repo {
        "pallets/flask" => pins::flask(),
        "django/django" => pins::django(),
        "sympy/sympy" => pins::sympy(),
        other => panic!("no pins for {other}"),
    };
    let sdist_bytes = fetch(&sdist);
    let wheel_bytes: Vec<(String, Vec<u8>)> = wheels
        .iter()
        .map(|w| (w.filename.clone(), fetch(w)))
        .collect();
    let name = format!("{}-{}", sdist.name.to_lowercase(), sdist.version);
    let spec = OfflineSpec {
        name: &name,
        sdist: &sdist_bytes,
        wheels: wheel_bytes
            .iter()
            .map(|(n, b)| (n.as_str(), b.as_slice()))
            .collect(),
        reverse,
    };
    let t = std::time::Instant::now();
    let img =
        ensure_offline_image(engine, &base.tag, &spec).unwrap_or_else(|e| panic!("{name}: {e:#}"));
    eprintln!(
        "{name}: {} at {} in {:.1?}",
        img.tag,
        img.commit,
        t.elapsed()
    );
    img
}

fn container(engine: &Engine, image: &str, what: &str) -> Container {
    let mut s = ContainerSpec::new(image);
    s.rollout_timeout = Duration::from_secs(1800);
    s.exec_timeout = Duration::from_secs(900);
    s.labels.insert(
        "davinci.env.test".into(),
        format!("swebench-{what}-{}", std::process::id()),
    );
    Container::start(engine, s).unwrap()
}

// ------------------------------------------------------------------------------------------
// the corpus

#[derive(Clone, Debug)]
struct Log {
    id: String,
    source: &'static str,
    /// Parsers that apply to it.
    parsers: Vec<LogParser>,
    test_cmd: String,
    output: String,
    exit_code: i64,
    timed_out: bool,
    /// For adversarial texts: the FAIL_TO_PASS / PASS_TO_PASS lists, and whether the run
    /// they describe truly resolved the instance (`None`: not a question of faking).
    lists: Option<(Vec<String>, Vec<String>, Option<bool>)>,
}

const PYTEST_FAMILY: [LogParser; 5] = [
    LogParser::Pytest,
    LogParser::PytestOptions,
    LogParser::PytestV2,
    LogParser::Seaborn,
    LogParser::Matplotlib,
];

/// Runs every `(id, command)` in the container, one log each.
fn run_logs(
    c: &Container,
    source: &'static str,
    parsers: &[LogParser],
    cmds: &[(String, String, u64)],
) -> Vec<Log> {
    cmds.iter()
        .map(|(id, cmd, limit)| {
            let r = c
                .exec_with(
                    &ExecRequest::bash(&format!("{{ {cmd}\n}} 2>&1"))
                        .workdir("/testbed")
                        .timeout(Duration::from_secs(*limit)),
                )
                .unwrap();
            Log {
                id: id.clone(),
                source,
                parsers: parsers.to_vec(),
                test_cmd: cmd.clone(),
                output: r.combined(),
                exit_code: r.exit_code,
                timed_out: r.timed_out,
                lists: None,
            }
        })
        .collect()
}

fn real_logs(engine: &Engine) -> Vec<Log> {
    let mut logs = Vec::new();
    // Flask's pytest suite, file by file, plainly, in colour, verbose, and one killed.
    let flask = build(engine, "pallets/flask", vec![]);
    let c = container(engine, &flask.tag, "flask");
    let files = c.exec("ls tests/test_*.py").unwrap().stdout;
    let files: Vec<&str> = files.lines().collect();
    assert!(files.len() >= 15, "{files:?}");
    let mut cmds = Vec::new();
    for (i, f) in files.iter().enumerate() {
        cmds.push((format!("flask/{f}"), format!("pytest -rA {f}"), 300));
        if i % 3 == 0 {
            cmds.push((
                format!("flask/{f}/color"),
                format!("pytest -rA --color=yes {f}"),
                300,
            ));
        }
        if i % 4 == 1 {
            cmds.push((
                format!("flask/{f}/verbose"),
                format!("pytest -rA -vv -o console_output_style=classic {f}"),
                300,
            ));
        }
    }
    cmds.push(("flask/killed".into(), "pytest -rA tests/test_basic.py -p no:cacheprovider & sleep 1.5; python3 -c 'import time; time.sleep(60)'".into(), 3));
    logs.extend(run_logs(&c, "pytest (flask)", &PYTEST_FAMILY, &cmds));
    drop(c);

    // Django's runner, module by module (the harness's command).
    let django = build(engine, "django/django", vec![]);
    let c = container(engine, &django.tag, "django");
    let modules = [
        "forms_tests.tests.test_formsets",
        "utils_tests.test_text",
        "utils_tests.test_html",
        "utils_tests.test_dateformat",
        "utils_tests.test_http",
        "utils_tests.test_crypto",
        "utils_tests.test_functional",
        "utils_tests.test_numberformat",
        "utils_tests.test_datastructures",
        "template_tests.filter_tests.test_upper",
        "template_tests.filter_tests.test_truncatewords",
        "template_tests.filter_tests.test_slugify",
        "forms_tests.field_tests.test_charfield",
        "forms_tests.field_tests.test_integerfield",
        "forms_tests.field_tests.test_emailfield",
        "validators",
        "basic",
        "get_or_create",
        "str",
        "lookup",
        "dates",
        "humanize_tests",
        "signing",
        "urlpatterns",
        "check_framework",
    ];
    let cmds: Vec<(String, String, u64)> = modules
        .iter()
        .map(|m| {
            (
                format!("django/{m}"),
                format!(
                    "./tests/runtests.py --verbosity 2 --settings=test_sqlite --parallel 1 {m}"
                ),
                600,
            )
        })
        .chain(std::iter::once((
            "django/killed".to_string(),
            "./tests/runtests.py --verbosity 2 --settings=test_sqlite --parallel 1 utils_tests"
                .to_string(),
            4,
        )))
        .collect();
    logs.extend(run_logs(&c, "django", &[LogParser::Django], &cmds));
    drop(c);

    // SymPy's runner, file by file.
    let sympy = build(engine, "sympy/sympy", vec![]);
    let c = container(engine, &sympy.tag, "sympy");
    let files = [
        "sympy/polys/tests/test_rings.py",
        "sympy/utilities/tests/test_iterables.py",
        "sympy/sets/tests/test_contains.py",
        "sympy/strategies/tests/test_core.py",
        "sympy/strategies/tests/test_rl.py",
        "sympy/strategies/tests/test_tools.py",
        "sympy/multipledispatch/tests/test_dispatcher.py",
        "sympy/unify/tests/test_unify.py",
        "sympy/crypto/tests/test_crypto.py",
        "sympy/codegen/tests/test_ast.py",
        "sympy/core/tests/test_sympify.py",
        "sympy/core/tests/test_containers.py",
        "sympy/polys/tests/test_monomials.py",
        "sympy/polys/tests/test_orderings.py",
        "sympy/ntheory/tests/test_bbp_pi.py",
        "sympy/combinatorics/tests/test_subsets.py",
        "sympy/combinatorics/tests/test_graycode.py",
        "sympy/logic/tests/test_dimacs.py",
        "sympy/printing/tests/test_python.py",
        "sympy/utilities/tests/test_misc.py",
    ];
    let cmds: Vec<(String, String, u64)> = files
        .iter()
        .map(|f| (format!("sympy/{f}"), format!("PYTHONWARNINGS='ignore::UserWarning,ignore::SyntaxWarning' python3 -c \"import sympy; sympy.test('{f}', verbose=True)\""), 600))
        .chain(std::iter::once(("sympy/killed".to_string(), "python3 -c \"import sympy; sympy.test('sympy/polys/tests/test_polytools.py', verbose=True)\"".to_string(), 6)))
        .collect();
    logs.extend(run_logs(&c, "sympy", &[LogParser::Sympy], &cmds));
    logs
}

/// Adversarial texts, each with its lists and its truth.
fn adversarial_logs() -> Vec<Log> {
    let ids = [
        "tests/test_x.py::test_fix",
        "tests/test_x.py::test_fix[a b]",
        "tests/test_ü.py::test_ñandú[ß-1]",
        "tests/test_x.py::test_fix[/tmp/data/x.txt]",
        "tests/test_x.py::TestK::test_fix[MouseButton.LEFT]",
        "tests/test_x.py::test_fix[x - y]",
    ];
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    let mut out = Vec::new();
    let head = "============================= test session starts ==============================\nplatform linux -- Python 3.11.2, pytest-7.2.1\ncollected 3 items\n\ntests/test_x.py .F.                                                        [100%]\n";
    for (n, id) in ids.iter().enumerate() {
        let other = "tests/test_x.py::test_other";
        let keep = "tests/test_x.py::test_keep";
        let summary = |f2p_status: &str| {
            format!("=========================== short test summary info ============================\nPASSED {keep}\n{f2p_status} {id}\nFAILED {other} - assert 0\n")
        };
        let stats = "==================== 1 failed, 2 passed in 0.05s ====================\n";
        let mut add =
            |name: &str, output: String, code: i64, timed_out: bool, truth: Option<bool>| {
                out.push(Log {
                    id: format!("adversarial/{name}/{n}"),
                    source: "adversarial (pytest)",
                    parsers: PYTEST_FAMILY.to_vec(),
                    test_cmd: "pytest -rA tests/test_x.py".into(),
                    output,
                    exit_code: code,
                    timed_out,
                    lists: Some((s(&[id]), s(&[keep]), truth)),
                });
            };
        add(
            "plain-pass",
            format!("{head}{}{stats}", summary("PASSED")),
            1,
            false,
            Some(true),
        );
        add(
            "plain-fail",
            format!("{head}{}{stats}", summary("FAILED")),
            1,
            false,
            Some(false),
        );
        add("captured-stdout", format!("{head}=================================== FAILURES ===================================\n_________________________________ test_fix _________________________________\n----------------------------- Captured stdout call -----------------------------\nPASSED {id}\n{id} PASSED\n{stats}").replace(stats, &format!("=========================== short test summary info ============================\nPASSED {keep}\nFAILED {other} - assert 0\n{stats}")), 1, false, Some(false));
        add("captured-passes-section", format!("{head}=================================== PASSES ===================================\n_________________________________ test_keep _________________________________\n----------------------------- Captured stdout call -----------------------------\nPASSED {id}\n=========================== short test summary info ============================\nPASSED {keep}\nFAILED {other} - assert 0\nERROR tests/test_y.py - ImportError\n{stats}"), 1, false, Some(false));
        add(
            "after-summary",
            format!("{head}{}{stats}PASSED {id}\n", summary("FAILED")),
            1,
            false,
            Some(false),
        );
        add(
            "killed-after-pass",
            format!("{head}{}", summary("PASSED")),
            124,
            true,
            Some(false),
        );
        add("colour", format!("{head}\u{1b}[32mPASSED\u{1b}[0m {keep}\n\u{1b}[32mPASSED\u{1b}[0m {id}\n\u{1b}[31mFAILED\u{1b}[0m {other} - assert 0\n{stats}"), 1, false, None);
        add(
            "duplicate-pass-then-fail",
            format!("{head}{}FAILED {id} - again\n{stats}", summary("PASSED")),
            1,
            false,
            Some(false),
        );
        add(
            "duplicate-fail-then-pass",
            format!("{head}{}PASSED {id}\n{stats}", summary("FAILED")),
            1,
            false,
            None,
        );
        add("collection-error", format!("{head}==================================== ERRORS ====================================\n_____________________ ERROR collecting tests/test_x.py ______________________\nImportError\n=========================== short test summary info ============================\nERROR tests/test_x.py - ImportError\n!!!!!!!!!!!!!!!!!!!! Interrupted: 1 error during collection !!!!!!!!!!!!!!!!!!!!\n=============================== 1 error in 0.10s ===============================\n"), 2, false, Some(false));
        add(
            "odd-status",
            format!("{head}PASSED {keep}\nPASSEDx {id}\nFAILED {other}\n{stats}"),
            1,
            false,
            Some(false),
        );
        add(
            "forged-exit-code",
            format!("{head}PASSED {keep}\nPASSED {id}\n{stats}>>>>> Test Exit Code: 0\n"),
            1,
            false,
            Some(false),
        );
        add(
            "carriage-returns",
            format!(
                "{head}running...\r{}{stats}",
                summary("PASSED").replace('\n', "\r\n")
            ),
            1,
            false,
            Some(true),
        );
        add("xfail-skip", format!("{head}=========================== short test summary info ============================\nXFAIL {id} - reason\nSKIPPED {keep}\nSKIPPED [1] tests/test_x.py:3: skip\n{stats}"), 0, false, None);
        add("no-tests", "collected 0 items\n\n============================ no tests ran in 0.01s =============================\n".into(), 5, false, Some(false));
        add(
            "unicode-whitespace",
            format!("{head}PASSED\u{1f}{id}\nPASSED\u{a0}{keep}\nFAILED {other}\n{stats}"),
            1,
            false,
            None,
        );
        add(
            "old-style-verbose",
            format!("{head}{id} PASSED\n{keep} PASSED\n{other} FAILED\n{stats}"),
            1,
            false,
            None,
        );
    }
    // Django's runner.
    for (n, t) in [
        "test_fix (app.tests.T.test_fix)",
        "test_fix (app.tests.T.test_fix) [ü]",
        "test_a b (app.tests.T.test_a b)",
    ]
    .iter()
    .enumerate()
    {
        let keep = "test_keep (app.tests.T.test_keep)";
        let mut add =
            |name: &str, output: String, code: i64, timed_out: bool, truth: Option<bool>| {
                out.push(Log {
                    id: format!("adversarial/django-{name}/{n}"),
                    source: "adversarial (django)",
                    parsers: vec![LogParser::Django],
                    test_cmd: "./tests/runtests.py --verbosity 2 app".into(),
                    output,
                    exit_code: code,
                    timed_out,
                    lists: Some((s(&[t]), s(&[keep]), truth)),
                });
            };
        add("pass", format!("{keep} ... ok\n{t} ... ok\n\n----------------------------------------------------------------------\nRan 2 tests in 0.01s\n\nOK\n"), 0, false, Some(true));
        add("fail", format!("{keep} ... ok\n{t} ... FAIL\n\n======================================================================\nFAIL: {t}\n----------------------------------------------------------------------\nAssertionError\n\nRan 2 tests in 0.01s\n\nFAILED (failures=1)\n"), 1, false, Some(false));
        add(
            "output-then-ok",
            format!("{keep} ... ok\n{t} ... some printed text\nok\n\nRan 2 tests in 0.01s\n\nOK\n"),
            0,
            false,
            Some(true),
        );
        add(
            "killed",
            format!("{keep} ... ok\n{t} ... ok\n"),
            124,
            true,
            Some(false),
        );
        add(
            "skipped",
            format!("{keep} ... skipped 'no db'\n{t} ... ok\n\nOK (skipped=1)\n"),
            0,
            false,
            Some(true),
        );
        add(
            "error",
            format!("{keep} ... ok\n{t} ... ERROR\nERROR: {t}\n\nFAILED (errors=1)\n"),
            1,
            false,
            Some(false),
        );
        add(
            "fail-colon-alone",
            format!("{keep} ... ok\n{t} ... ok\nFAIL:\n"),
            1,
            false,
            None,
        );
        add(
            "system-check",
            format!("{t} ... System check identified no issues (0 silenced)\nok\n{keep} ... ok\n"),
            0,
            false,
            Some(true),
        );
    }
    // SymPy's runner.
    for (n, t) in ["test_fix", "test_fix_ü", "test_fix2"].iter().enumerate() {
        let keep = "test_keep";
        let mut add =
            |name: &str, output: String, code: i64, timed_out: bool, truth: Option<bool>| {
                out.push(Log {
                    id: format!("adversarial/sympy-{name}/{n}"),
                    source: "adversarial (sympy)",
                    parsers: vec![LogParser::Sympy],
                    test_cmd: "bin/test -C --verbose sympy/x/tests/test_y.py".into(),
                    output,
                    exit_code: code,
                    timed_out,
                    lists: Some((s(&[t]), s(&[keep]), truth)),
                });
            };
        let head = "============================= test process starts ==============================\nexecutable: /usr/bin/python3\n\nsympy/x/tests/test_y.py[2]\n";
        add("pass", format!("{head}{keep} ok\n{t} ok\n\n================== tests finished: 2 passed, in 0.01 seconds ===================\n"), 0, false, Some(true));
        add("fail", format!("{head}{keep} ok\n{t} F\n\n________________________________________________________________________________\n_________________ sympy/x/tests/test_y.py:{t} __________________\nAssertionError\n=== tests finished: 1 passed, 1 failed, in 0.01 seconds ===\nDO *NOT* COMMIT!\n"), 1, false, Some(false));
        add(
            "error",
            format!("{head}{keep} ok\n{t} E\n"),
            1,
            false,
            Some(false),
        );
        add(
            "killed",
            format!("{head}{keep} ok\n{t} ok\n"),
            124,
            true,
            Some(false),
        );
        add(
            "indented",
            format!("{head}   {keep} ok\n\t{t} ok\n"),
            0,
            false,
            Some(true),
        );
    }
    out
}

// ------------------------------------------------------------------------------------------
// comparison

/// The lists real logs are graded with: chosen from what the log reports (both graders see
/// the same lists), including a missing id and a truncated parametrized one.
fn list_variants(log: &Log, parser: LogParser) -> Vec<(Vec<String>, Vec<String>, Option<bool>)> {
    if let Some(l) = &log.lists {
        return vec![l.clone()];
    }
    let Ok(map) = parser.parse(&log.output) else {
        return vec![(vec!["missing".into()], vec![], None)];
    };
    let pairs = map.pairs();
    let passing: Vec<String> = pairs
        .iter()
        .filter(|(_, s)| s == "PASSED" || s == "XFAIL")
        .map(|(k, _)| k.clone())
        .collect();
    let other: Vec<String> = pairs
        .iter()
        .filter(|(_, s)| s != "PASSED" && s != "XFAIL")
        .map(|(k, _)| k.clone())
        .collect();
    let mut v = vec![(
        passing.iter().take(2).cloned().collect(),
        passing.iter().skip(2).take(6).cloned().collect(),
        None,
    )];
    let mut p2p: Vec<String> = passing.iter().take(3).cloned().collect();
    if let Some(p) = pairs.iter().map(|(k, _)| k).find(|k| k.contains('[')) {
        p2p.push(p[..p.find('[').unwrap() + 2.min(p.len() - p.find('[').unwrap())].to_string());
    }
    p2p.push("tests/never_ran.py::test_gone".into());
    v.push((
        other
            .iter()
            .take(1)
            .cloned()
            .chain(std::iter::once(passing.last().cloned().unwrap_or_default()))
            .collect(),
        p2p,
        None,
    ));
    v
}

#[derive(serde::Deserialize, Debug)]
struct Verdict {
    id: String,
    parsed: Option<Vec<(String, String)>>,
    parse_error: Option<String>,
    found: Option<bool>,
    map: Option<Vec<(String, String)>>,
    f2p: Option<BTreeMap<String, Vec<String>>>,
    p2p: Option<BTreeMap<String, Vec<String>>>,
    resolution: Option<String>,
    resolved: bool,
    error: Option<String>,
}

struct Case {
    log: usize,
    parser: LogParser,
    f2p: Vec<String>,
    p2p: Vec<String>,
    truth: Option<bool>,
    ours: Graded,
}

fn lists_of(v: &[env::grading::TestOutcome], o: Outcome) -> Vec<String> {
    v.iter()
        .filter(|t| t.harness == o)
        .map(|t| t.name.clone())
        .collect()
}

#[test]
fn grading_parity_with_the_official_harness() {
    let (Some(_), Some(engine), Some(python)) = (shared(), engine(), harness_python()) else {
        return;
    };
    let mut logs = real_logs(&engine);
    let real = logs.len();
    logs.extend(adversarial_logs());
    let mut cases = Vec::new();
    for (i, log) in logs.iter().enumerate() {
        for &parser in &log.parsers {
            for (f2p, p2p, truth) in list_variants(log, parser) {
                let ours = grade_output(
                    parser,
                    &log.test_cmd,
                    &log.output,
                    log.exit_code,
                    log.timed_out,
                    &f2p,
                    &p2p,
                    EvalType::PassAndFail,
                );
                cases.push(Case {
                    log: i,
                    parser,
                    f2p,
                    p2p,
                    truth,
                    ours,
                });
            }
        }
    }
    // The harness, on the same bytes.
    let mut input = Vec::new();
    for (n, c) in cases.iter().enumerate() {
        let log = &logs[c.log];
        serde_json::to_writer(
            &mut input,
            &serde_json::json!({
                "id": n.to_string(), "parser": c.parser.name(), "output": log.output,
                "file": harness::eval_log(&log.test_cmd, &log.output, log.exit_code),
                "f2p": c.f2p, "p2p": c.p2p, "timed_out": log.timed_out,
            }),
        )
        .unwrap();
        input.push(b'\n');
    }
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/swebench/harness_grade.py");
    let mut child = std::process::Command::new(&python)
        .arg(&script)
        .env("PYTHONUTF8", "1")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let writer = std::thread::spawn(move || stdin.write_all(&input));
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap().unwrap();
    assert!(out.status.success(), "the harness driver failed");
    let verdicts: Vec<Verdict> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(verdicts.len(), cases.len());

    // Row: (source, parser) → logs, cases, agree, refused (deliberate), differ, FP here, FP harness.
    let mut rows: BTreeMap<(String, String), [usize; 7]> = BTreeMap::new();
    let mut differences = Vec::new();
    let mut false_positives = Vec::new();
    let mut logs_seen = std::collections::BTreeSet::new();
    for (c, v) in cases.iter().zip(&verdicts) {
        assert_eq!(
            v.id,
            (cases.iter().position(|x| std::ptr::eq(x, c)).unwrap()).to_string()
        );
        let log = &logs[c.log];
        let key = (log.source.to_string(), c.parser.name().to_string());
        let row = rows.entry(key).or_default();
        if logs_seen.insert((c.log, c.parser.name())) {
            row[0] += 1;
            row[6] += v.parsed.as_ref().map_or(0, Vec::len);
        }
        let mut why = Vec::new();
        match (c.parser.parse(&log.output), &v.parsed, &v.parse_error) {
            (Ok(m), Some(p), _) if &m.pairs() == p => {}
            (Err(e), None, Some(x)) if e.exception == x => {}
            (mine, theirs, err) => why.push(format!(
                "statuses: ours {:?} / harness {theirs:?} {err:?}",
                mine.map(|m| m.pairs())
            )),
        }
        let file = harness::eval_log(&log.test_cmd, &log.output, log.exit_code);
        let eval = harness::logs_eval(c.parser, &file);
        match (&eval, v.error.as_deref()) {
            (Ok(e), None) => {
                if Some(e.found) != v.found || Some(e.statuses.pairs()) != v.map {
                    why.push(format!(
                        "logs_eval: ours {} {:?} / harness {:?} {:?}",
                        e.found,
                        e.statuses.pairs(),
                        v.found,
                        v.map
                    ));
                }
                if !log.timed_out && e.found {
                    let f = v.f2p.as_ref().unwrap();
                    let p = v.p2p.as_ref().unwrap();
                    for (mine, theirs, name) in [
                        (&c.ours.fail_to_pass, f, "F2P"),
                        (&c.ours.pass_to_pass, p, "P2P"),
                    ] {
                        if lists_of(mine, Outcome::Success) != theirs["success"]
                            || lists_of(mine, Outcome::Failure) != theirs["failure"]
                        {
                            why.push(format!("{name}: ours {mine:?} / harness {theirs:?}"));
                        }
                    }
                    if Some(c.ours.harness_resolution.as_str()) != v.resolution.as_deref() {
                        why.push(format!(
                            "resolution: ours {:?} / harness {:?}",
                            c.ours.harness_resolution, v.resolution
                        ));
                    }
                }
            }
            (Err(_), Some(_)) => {}
            (a, b) => why.push(format!(
                "errors: ours {:?} / harness {b:?}",
                a.as_ref().err()
            )),
        }
        if c.ours.harness_resolved != v.resolved {
            why.push(format!(
                "harness verdict: ours says the harness gives {} / harness {}",
                c.ours.harness_resolved, v.resolved
            ));
        }
        let refused = v.resolved && !c.ours.resolved && c.ours.refused > 0;
        if why.is_empty() && c.ours.resolved == v.resolved {
            row[1] += 1;
        } else if why.is_empty() && refused {
            row[2] += 1;
        } else {
            row[3] += 1;
            differences.push(format!(
                "{} [{}] f2p={:?} p2p={:?}: {}",
                log.id,
                c.parser,
                c.f2p,
                c.p2p,
                why.join("; ")
            ));
        }
        if c.truth == Some(false) {
            row[4] += c.ours.resolved as usize;
            row[5] += v.resolved as usize;
            if c.ours.resolved {
                false_positives.push(format!("{} [{}]", log.id, c.parser));
            }
        }
    }
    let total_logs = logs.len();
    println!("\nSWE-bench grading parity: this grader vs swebench==5.0.2 ({total_logs} logs: {real} real container runs, {} adversarial; {} gradings)", total_logs - real, cases.len());
    let line = |a: &str, b: &str, r: [String; 7]| {
        println!(
            "{a:<22} {b:<26} {:>5} {:>9} {:>7} {:>8} {:>7} {:>6} {:>10}",
            r[0], r[1], r[2], r[3], r[4], r[5], r[6]
        )
    };
    let cols = |r: &[usize; 7]| [r[0], r[6], r[1], r[2], r[3], r[4], r[5]].map(|x| x.to_string());
    line(
        "logs",
        "parser",
        [
            "logs",
            "statuses",
            "agree",
            "refused",
            "differ",
            "FP",
            "FP harness",
        ]
        .map(String::from),
    );
    let mut sum = [0usize; 7];
    for ((source, parser), r) in &rows {
        line(source, parser, cols(r));
        for (s, x) in sum.iter_mut().zip(r) {
            *s += x;
        }
    }
    line("total", "", cols(&sum));
    println!("(statuses: per-test statuses compared; agree / refused / differ count gradings; refused: the harness resolves, this grader refuses a fakeable pass, as documented; FP: resolved although the run did not resolve it)");
    assert!(
        differences.is_empty(),
        "{} unexplained differences:\n{}",
        differences.len(),
        differences.join("\n")
    );
    assert!(total_logs >= 200, "{total_logs} logs");
    assert!(
        false_positives.is_empty(),
        "false positives here: {false_positives:?}"
    );
    assert!(
        sum[5] > 0,
        "the adversarial corpus should fool the harness somewhere, or it tests nothing"
    );
    assert!(real >= 60, "{real} real logs");
}
