mod common;

use env::container::{self, Container, ContainerSpec, ExecRequest};
use std::time::{Duration, Instant};

fn spec(engine: &env::Engine, test: &str) -> ContainerSpec {
    let (img, _) = common::base_image(engine);
    let mut s = ContainerSpec::new(&img.tag);
    s.labels
        .insert("davinci.env.test".into(), common::run_label(test));
    s
}

fn leftovers(engine: &env::Engine, test: &str) -> Vec<String> {
    container::list_labeled(engine, "davinci.env.test", &common::run_label(test)).unwrap()
}

#[test]
fn exec_reports_exit_codes_and_output_as_non_root_without_network() {
    let Some(engine) = common::engine() else {
        return;
    };
    let c = Container::start(&engine, spec(&engine, "exec")).unwrap();
    let ok = c.exec("echo out; echo err >&2; id -u; pwd").unwrap();
    assert_eq!(ok.exit_code, 0);
    assert_eq!(ok.stdout, "out\n1000\n/testbed\n");
    assert_eq!(ok.stderr, "err\n");
    assert!(!ok.timed_out);
    let fail = c.exec("exit 3").unwrap();
    assert_eq!(fail.exit_code, 3);
    assert!(!fail.success());
    // Root only when asked; the workdir belongs to the agent.
    let root = c.exec_with(&ExecRequest::bash("id -u").as_root()).unwrap();
    assert_eq!(root.stdout.trim(), "0");
    assert_eq!(
        c.exec("touch /testbed/x && echo ok").unwrap().stdout,
        "ok\n"
    );
    assert_ne!(c.exec("touch /etc/x").unwrap().exit_code, 0);
    // No network: only the loopback interface.
    let net = c.exec("ls /sys/class/net").unwrap();
    assert_eq!(net.stdout.trim(), "lo");
    // Files in and out, exact bytes.
    let data = b"line 1\n\xffbinary\n";
    c.write_file("/testbed/sub/dir/f.bin", data, 0o644).unwrap();
    assert_eq!(
        c.read_file("/testbed/sub/dir/f.bin").unwrap().unwrap(),
        (data.to_vec(), 0o644)
    );
    assert_eq!(
        c.exec("stat -c %u /testbed/sub/dir/f.bin").unwrap().stdout,
        "1000\n"
    );
    assert!(c.read_file("/testbed/nope").unwrap().is_none());
    let host = tempfile::tempdir().unwrap();
    c.copy_out("/testbed/sub", host.path()).unwrap();
    assert_eq!(
        std::fs::read(host.path().join("sub/dir/f.bin")).unwrap(),
        data
    );
    let src = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(src.path().join("pkg")).unwrap();
    std::fs::write(src.path().join("pkg/a.py"), "A = 1\n").unwrap();
    c.copy_in_dir(src.path(), "/testbed").unwrap();
    let r = c.exec("cat pkg/a.py && stat -c %u pkg/a.py").unwrap();
    assert_eq!(r.stdout, "A = 1\n1000\n");
    let id = c.id().to_string();
    c.remove().unwrap();
    assert!(leftovers(&engine, "exec").is_empty(), "{id} left behind");
}

#[test]
fn exec_timeout_kills_the_command_and_its_children() {
    let Some(engine) = common::engine() else {
        return;
    };
    let c = Container::start(&engine, spec(&engine, "timeout")).unwrap();
    let t = Instant::now();
    let r = c
        .exec_with(
            &ExecRequest::bash("echo started; (sleep 300 &); sleep 300")
                .timeout(Duration::from_secs(2)),
        )
        .unwrap();
    assert!(r.timed_out, "{r:?}");
    assert_eq!(r.stdout, "started\n");
    assert!(t.elapsed() < Duration::from_secs(15), "{:?}", t.elapsed());
    // Nothing of it survives.
    let ps = c
        .exec("for p in /proc/[0-9]*; do cat $p/cmdline | tr '\\0' ' '; echo; done")
        .unwrap();
    assert!(!ps.stdout.contains("sleep 300"), "{}", ps.stdout);
    // A command that merely exits 124 is not a timeout.
    let r = c.exec("exit 124").unwrap();
    assert_eq!(r.exit_code, 124);
    assert!(!r.timed_out);
}

#[test]
fn rollout_limit_ends_the_rollout() {
    let Some(engine) = common::engine() else {
        return;
    };
    let mut s = spec(&engine, "rollout");
    s.rollout_timeout = Duration::from_secs(3);
    let c = Container::start(&engine, s).unwrap();
    let r = c.exec("sleep 30").unwrap();
    assert!(
        r.timed_out,
        "the exec is cut at the rollout's remaining time"
    );
    let e = c.exec("true").unwrap_err();
    assert!(
        e.downcast_ref::<container::RolloutExpired>().is_some(),
        "{e:#}"
    );
}

#[test]
fn container_is_removed_when_its_owner_panics() {
    let Some(engine) = common::engine() else {
        return;
    };
    let s = spec(&engine, "panic");
    let e2 = engine.clone();
    let res = std::thread::spawn(move || {
        let c = Container::start(&e2, s).unwrap();
        assert_eq!(c.exec("true").unwrap().exit_code, 0);
        panic!("boom while holding {}", c.short_id());
    })
    .join();
    assert!(res.is_err(), "the thread panicked");
    assert!(
        leftovers(&engine, "panic").is_empty(),
        "a container outlived the panic"
    );
}

#[test]
fn a_missing_engine_is_a_clear_error() {
    let e = env::Engine::connect_socket("/nonexistent/docker.sock").unwrap_err();
    let msg = format!("{e:#}");
    assert!(msg.contains("/nonexistent/docker.sock"), "{msg}");
    assert!(e.downcast_ref::<env::EngineError>().is_some());
}
