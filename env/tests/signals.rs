//! Ctrl-C / SIGTERM removes live containers; a SIGKILLed owner's containers are reaped.
mod common;

use env::container::{self, Container, ContainerSpec};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const HELPER_ENV: &str = "DAVINCI_ENV_SIGNAL_HELPER";

/// Not a test on its own: the child process the other tests signal. It holds a container and
/// waits to be killed.
#[test]
fn signal_helper() {
    let Ok(label) = std::env::var(HELPER_ENV) else {
        return;
    };
    let engine = env::Engine::connect().unwrap();
    let (img, _) = common::base_image(&engine);
    let mut s = ContainerSpec::new(&img.tag);
    s.labels.insert("davinci.env.test".into(), label);
    let c = Container::start(&engine, s).unwrap();
    container::install_signal_cleanup(&engine).unwrap();
    println!("READY {}", c.id());
    std::thread::sleep(Duration::from_secs(120));
}

/// Starts the helper, waits until its container runs; returns the child and the label.
fn spawn_helper(test: &str) -> (std::process::Child, String) {
    let label = common::run_label(test);
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "signal_helper",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(HELPER_ENV, &label)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let out = child.stdout.take().unwrap();
    let mut ready = false;
    for line in BufReader::new(out).lines() {
        if line.unwrap().contains("READY ") {
            ready = true;
            break;
        }
    }
    assert!(ready, "the helper never got its container running");
    (child, label)
}

fn wait_gone(engine: &env::Engine, label: &str) -> Vec<String> {
    let t = Instant::now();
    loop {
        let left = container::list_labeled(engine, "davinci.env.test", label).unwrap();
        if left.is_empty() || t.elapsed() > Duration::from_secs(30) {
            return left;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn ctrl_c_removes_live_containers() {
    let Some(engine) = common::engine() else {
        return;
    };
    let (mut child, label) = spawn_helper("sigint");
    assert_eq!(
        container::list_labeled(&engine, "davinci.env.test", &label)
            .unwrap()
            .len(),
        1
    );
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130), "{status}");
    assert!(
        wait_gone(&engine, &label).is_empty(),
        "container left after Ctrl-C"
    );
}

#[test]
fn containers_of_a_killed_owner_are_reaped() {
    let Some(engine) = common::engine() else {
        return;
    };
    let (mut child, label) = spawn_helper("sigkill");
    child.kill().unwrap(); // SIGKILL: no handler runs
    child.wait().unwrap();
    assert_eq!(
        container::list_labeled(&engine, "davinci.env.test", &label)
            .unwrap()
            .len(),
        1,
        "SIGKILL leaves the container behind (until its rollout limit ends it)"
    );
    assert!(container::reap_orphans(&engine).unwrap() >= 1);
    assert!(wait_gone(&engine, &label).is_empty());
}
