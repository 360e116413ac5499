mod common;

use env::container::{Container, ContainerSpec};
use env::grading::{self, GradeOptions, Status, TestStatus};
use env::instance::TaskInstance;
use env::tools::{EditorCommand, Tools};
use std::time::Duration;

fn start(engine: &env::Engine, test: &str) -> Container {
    let (img, _) = common::base_image(engine);
    let mut s = ContainerSpec::new(&img.tag);
    s.labels
        .insert("davinci.env.test".into(), common::run_label(test));
    Container::start(engine, s).unwrap()
}

/// A tiny Python repository with a bug in `add`, committed in /testbed. Returns the commit.
fn tiny_repo(c: &Container) -> String {
    let files: &[(&str, &str)] = &[
        ("calc.py", "def add(a, b):\n    return a - b\n\n\ndef mul(a, b):\n    return a * b\n"),
        // `_version.py` is an ignored build output (as an editable install generates one):
        // grading must not delete it.
        (".gitignore", "_version.py\n"),
        (
            "test_calc.py",
            "import pytest\n\nfrom calc import mul\nfrom _version import VERSION\n\n\ndef test_mul():\n    assert mul(2, 3) == 6\n\n\n\
             @pytest.mark.xfail(reason='known')\ndef test_known_bug():\n    assert mul(2, 2) == 5\n",
        ),
        ("README.md", "calc\n"),
    ];
    for (p, body) in files {
        c.write_file(&format!("/testbed/{p}"), body.as_bytes(), 0o644)
            .unwrap();
    }
    let r = c
        .exec("git init -q && git add -A && git commit -qm base && git rev-parse HEAD")
        .unwrap();
    assert!(r.success(), "{r:?}");
    c.write_file("/testbed/_version.py", b"VERSION = '1.0'\n", 0o644)
        .unwrap();
    r.stdout.trim().to_string()
}

const GOLD: &str = "diff --git a/calc.py b/calc.py
--- a/calc.py
+++ b/calc.py
@@ -1,5 +1,5 @@
 def add(a, b):
-    return a - b
+    return a + b
 
 
 def mul(a, b):
";

const TEST_PATCH: &str = "diff --git a/test_add.py b/test_add.py
new file mode 100644
--- /dev/null
+++ b/test_add.py
@@ -0,0 +1,5 @@
+from calc import add
+
+
+def test_add():
+    assert add(2, 3) == 5
";

const UNRELATED: &str = "diff --git a/README.md b/README.md
--- a/README.md
+++ b/README.md
@@ -1 +1 @@
-calc
+calc: a calculator
";

fn instance(base: &str, p2p: &[&str]) -> TaskInstance {
    let line = serde_json::json!({
        "instance_id": "tiny__calc-1",
        "repo": "tiny/calc",
        "base_commit": base,
        "patch": GOLD,
        "test_patch": TEST_PATCH,
        "problem_statement": "add subtracts",
        "FAIL_TO_PASS": "[\"test_add.py::test_add\"]",
        "PASS_TO_PASS": p2p,
        "version": "0.1",
    });
    env::instance::parse_instance(&line.to_string()).unwrap()
}

#[test]
fn grading_a_tiny_python_repo() {
    let Some(engine) = common::engine() else {
        return;
    };
    let c = start(&engine, "grading");
    let base = tiny_repo(&c);
    let inst = instance(
        &base,
        &["test_calc.py::test_mul", "test_calc.py::test_known_bug"],
    );
    let opts = GradeOptions {
        test_cmd: Some("python3 -m pytest -rA -p no:cacheprovider test_calc.py test_add.py".into()),
        test_timeout: Duration::from_secs(120),
        ..Default::default()
    };

    // The gold patch resolves it; the xfail test counts as passed.
    let gold = grading::evaluate(&c, &inst, GOLD, &opts).unwrap();
    assert!(gold.patch_applied && gold.resolved, "{gold:#?}");
    assert!(gold.harness_resolved);
    assert_eq!(gold.apply_method.as_deref(), Some("git apply --verbose"));
    assert_eq!(
        gold.fail_to_pass[0].status,
        Some(Status::Known(TestStatus::Passed))
    );
    assert_eq!(
        gold.pass_to_pass[1].status,
        Some(Status::Known(TestStatus::Xfail))
    );
    assert!(gold.pass_to_pass[1].passed);
    // The ignored build output survived the resets.
    assert!(c.read_file("/testbed/_version.py").unwrap().is_some());

    // A patch whose context no longer matches exactly: `git apply` (plain, --3way and
    // --reject) refuses it, `patch --fuzz=5` applies it, and the method is recorded.
    let fuzzy = GOLD.replace(" def mul(a, b):", " def mul(x, y):");
    let r = grading::evaluate(&c, &inst, &fuzzy, &opts).unwrap();
    assert!(r.patch_applied && r.resolved, "{r:#?}");
    assert_eq!(
        r.apply_method.as_deref(),
        Some("patch --batch --forward --fuzz=5 -p1 -i")
    );

    // An empty patch is unresolved (nothing to apply).
    let empty = grading::evaluate(&c, &inst, "", &opts).unwrap();
    assert!(!empty.patch_applied && !empty.resolved);
    assert!(empty.fail_to_pass.iter().all(|t| !t.passed));

    // A patch that applies but does not fix the bug: FAIL_TO_PASS fails.
    let wrong = grading::evaluate(&c, &inst, UNRELATED, &opts).unwrap();
    assert!(wrong.patch_applied && !wrong.resolved, "{wrong:#?}");
    assert_eq!(
        wrong.fail_to_pass[0].status,
        Some(Status::Known(TestStatus::Failed))
    );
    assert!(wrong.pass_to_pass.iter().all(|t| t.passed));

    // A patch that does not apply.
    // A patch that does not apply at any fuzz: its removed line is not in the file.
    let bad = grading::evaluate(
        &c,
        &inst,
        &GOLD.replace("-    return a - b", "-    return a ** b"),
        &opts,
    )
    .unwrap();
    assert!(!bad.patch_applied && !bad.resolved, "{bad:#?}");
    let why = bad.patch_error.unwrap();
    assert!(
        why.contains("patch --batch"),
        "the whole cascade was tried: {why}"
    );

    // A PASS_TO_PASS test missing from the log counts as failed.
    let missing = instance(
        &base,
        &["test_calc.py::test_mul", "test_calc.py::test_gone"],
    );
    let r = grading::evaluate(&c, &missing, GOLD, &opts).unwrap();
    assert!(r.patch_applied && !r.resolved);
    assert_eq!(r.pass_to_pass[1].status, None);
    assert!(!r.pass_to_pass[1].passed);

    // A test run that exceeds its limit is killed: unresolved, flagged, never a pass.
    let slow = GradeOptions {
        test_cmd: Some(
            "sleep 30; python3 -m pytest -rA -p no:cacheprovider test_calc.py test_add.py".into(),
        ),
        test_timeout: Duration::from_secs(2),
        ..Default::default()
    };
    let r = grading::evaluate(&c, &inst, GOLD, &slow).unwrap();
    assert!(
        r.patch_applied && r.tests_timed_out && !r.resolved,
        "{r:#?}"
    );
    assert!(r
        .fail_to_pass
        .iter()
        .all(|t| t.status.is_none() && !t.passed));

    // The default test command runs the files the test patch touches.
    let r = grading::evaluate(&c, &inst, GOLD, &GradeOptions::default()).unwrap();
    assert!(r.fail_to_pass[0].passed, "{}", r.test_log);
}

#[test]
fn tools_bash_editor_submit() {
    let Some(engine) = common::engine() else {
        return;
    };
    let c = start(&engine, "tools");
    tiny_repo(&c);
    let mut t = Tools::new(&c, "/testbed");

    let r = t
        .bash("python3 -c 'import calc; print(calc.add(2, 3))'")
        .unwrap();
    assert_eq!(
        (r.output.as_str(), r.exit_code, r.is_error),
        ("-1\n", Some(0), false)
    );
    let r = t.bash("cat nope").unwrap();
    assert!(r.is_error && r.exit_code == Some(1) && r.output.contains("No such file"));

    // Long observations are cut with a visible marker.
    t.max_observation_chars = 100;
    let r = t.bash("seq 1 1000").unwrap();
    assert!(
        r.output.contains("<<< observation truncated"),
        "{}",
        r.output
    );
    assert!(r.output.starts_with("1\n2\n") && r.output.ends_with("1000\n"));
    t.max_observation_chars = 16_000;

    // Per-command timeout.
    t.bash_timeout = Duration::from_secs(1);
    let r = t.bash("sleep 30").unwrap();
    assert!(
        r.timed_out && r.is_error && r.output.contains("timed out"),
        "{r:?}"
    );
    t.bash_timeout = Duration::from_secs(60);

    let path = "/testbed/calc.py".to_string();
    let original = c.read_file(&path).unwrap().unwrap().0;
    // view
    let v = t
        .str_replace_editor(&EditorCommand::View {
            path: path.clone(),
            view_range: Some([1, 2]),
        })
        .unwrap();
    assert!(
        v.output
            .contains("     1\tdef add(a, b):\n     2\t    return a - b"),
        "{}",
        v.output
    );
    let d = t
        .str_replace_editor(&EditorCommand::View {
            path: "/testbed".into(),
            view_range: None,
        })
        .unwrap();
    assert!(
        d.output.contains("/testbed/calc.py") && !d.output.contains(".git"),
        "{}",
        d.output
    );

    // old_str must match exactly once.
    let r = t
        .str_replace_editor(&EditorCommand::StrReplace {
            path: path.clone(),
            old_str: "return a".into(),
            new_str: Some("return b".into()),
        })
        .unwrap();
    assert!(
        r.is_error && r.output.contains("found 2 times"),
        "{}",
        r.output
    );
    let r = t
        .str_replace_editor(&EditorCommand::StrReplace {
            path: path.clone(),
            old_str: "return  a - b".into(),
            new_str: None,
        })
        .unwrap();
    assert!(
        r.is_error && r.output.contains("found 0 times"),
        "{}",
        r.output
    );
    assert_eq!(
        c.read_file(&path).unwrap().unwrap().0,
        original,
        "errors do not edit"
    );

    let r = t
        .str_replace_editor(&EditorCommand::StrReplace {
            path: path.clone(),
            old_str: "return a - b".into(),
            new_str: Some("return a + b".into()),
        })
        .unwrap();
    assert!(!r.is_error, "{}", r.output);
    assert_eq!(
        t.bash("python3 -c 'import calc; print(calc.add(2, 3))'")
            .unwrap()
            .output,
        "5\n"
    );

    // insert, then undo twice back to the original.
    let r = t
        .str_replace_editor(&EditorCommand::Insert {
            path: path.clone(),
            insert_line: 0,
            new_str: "\"\"\"Calculator.\"\"\"".into(),
        })
        .unwrap();
    assert!(!r.is_error, "{}", r.output);
    let now = String::from_utf8(c.read_file(&path).unwrap().unwrap().0).unwrap();
    assert!(now.starts_with("\"\"\"Calculator.\"\"\"\ndef add"), "{now}");
    t.str_replace_editor(&EditorCommand::UndoEdit { path: path.clone() })
        .unwrap();
    let r = t
        .str_replace_editor(&EditorCommand::UndoEdit { path: path.clone() })
        .unwrap();
    assert!(!r.is_error, "{}", r.output);
    assert_eq!(c.read_file(&path).unwrap().unwrap().0, original);
    let r = t
        .str_replace_editor(&EditorCommand::UndoEdit { path: path.clone() })
        .unwrap();
    assert!(r.is_error && r.output.contains("No edit history"));

    // create (never overwrites), undo of a create removes the file.
    let newf = "/testbed/pkg/new.py".to_string();
    let r = t
        .str_replace_editor(&EditorCommand::Create {
            path: newf.clone(),
            file_text: "X = 1\n".into(),
        })
        .unwrap();
    assert!(!r.is_error, "{}", r.output);
    let r = t
        .str_replace_editor(&EditorCommand::Create {
            path: newf.clone(),
            file_text: "Y\n".into(),
        })
        .unwrap();
    assert!(r.is_error && r.output.contains("already exists"));
    t.str_replace_editor(&EditorCommand::UndoEdit { path: newf.clone() })
        .unwrap();
    assert!(c.read_file(&newf).unwrap().is_none());
    let r = t
        .str_replace_editor(&EditorCommand::View {
            path: "relative.py".into(),
            view_range: None,
        })
        .unwrap();
    assert!(r.is_error && r.output.contains("absolute"));

    // submit: the diff of the repository, through the JSON tool-call entry point too.
    t.call(
        "str_replace_editor",
        &serde_json::json!({"command": "str_replace", "path": path, "old_str": "a - b", "new_str": "a + b"}),
    )
    .unwrap();
    let diff = t.call("submit", &serde_json::json!({})).unwrap().output;
    assert!(
        diff.contains("-    return a - b\n+    return a + b"),
        "{diff}"
    );
    assert!(diff.starts_with("diff --git a/calc.py b/calc.py"), "{diff}");
    let r = t.call("nope", &serde_json::json!({})).unwrap();
    assert!(r.is_error);
}

/// One shell for the whole rollout, as SWE-agent's: state carries over, a command past its
/// timeout is killed without losing the session, and a shell that cannot be interrupted or
/// that exits is replaced (and the observation says so).
#[test]
fn bash_keeps_one_shell_session() {
    let Some(engine) = common::engine() else {
        return;
    };
    let c = start(&engine, "shell");
    tiny_repo(&c);
    let mut t = Tools::new(&c, "/testbed");
    t.bash_timeout = Duration::from_secs(2);
    let out = |t: &mut Tools, cmd: &str| t.bash(cmd).unwrap();

    assert_eq!(out(&mut t, "pwd").output, "/testbed\n");
    out(&mut t, "cd /tmp && export GREETING=hello && WHO=world");
    assert_eq!(
        out(&mut t, "echo \"$PWD $GREETING $WHO\"").output,
        "/tmp hello world\n"
    );
    // Quoting, heredocs and unbalanced quotes cannot wedge the shell.
    assert_eq!(
        out(&mut t, "cat <<'EOF'\nit's $HOME\nEOF").output,
        "it's $HOME\n"
    );
    let r = out(&mut t, "echo 'unterminated");
    assert!(r.is_error, "{r:?}");
    assert_eq!(out(&mut t, "echo still $GREETING").output, "still hello\n");
    // Exit codes and stderr.
    let r = out(
        &mut t,
        "echo out; echo err >&2; exit_code() { return 3; }; exit_code",
    );
    assert_eq!((r.exit_code, r.output.as_str()), (Some(3), "out\nerr\n"));
    // Output without a final newline stays as it is.
    assert_eq!(out(&mut t, "printf abc").output, "abc");
    // stdin is not ours: a command reading it sees end of file.
    assert_eq!(out(&mut t, "cat; echo done").output, "done\n");

    // A command past its timeout is killed, with its children; the session lives on.
    let r = out(
        &mut t,
        "sleep 60 & python3 -c 'import time; time.sleep(30)'",
    );
    assert!(
        r.timed_out && r.output.contains("KeyboardInterrupt"),
        "{r:?}"
    );
    let after = out(&mut t, "echo $PWD $GREETING");
    assert_eq!(after.output, "/tmp hello\n", "after {r:?}");
    // The timed-out program is gone (its background sibling was the command's too).
    let left = c
        .exec("cat /proc/[0-9]*/cmdline 2>/dev/null | tr '\\0' ' ' | grep -c 'time[.]sleep(30)' || true")
        .unwrap();
    assert_eq!(left.stdout.trim(), "0", "{left:?}");

    // A loop of builtins keeps the shell itself busy: the shell is replaced and says so.
    let r = out(&mut t, "while :; do :; done");
    assert!(r.timed_out && r.output.contains("restarted"), "{r:?}");
    assert_eq!(out(&mut t, "pwd").output, "/testbed\n");
    out(&mut t, "cd /tmp");
    // `exit` ends the shell; the next command gets a new one.
    let r = out(&mut t, "cd /tmp; exit 4");
    assert_eq!(r.exit_code, Some(4), "{r:?}");
    assert!(r.output.contains("new shell"), "{r:?}");
    assert_eq!(out(&mut t, "pwd").output, "/testbed\n");
}
