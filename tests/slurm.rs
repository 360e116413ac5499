//! The Slurm executor against a real Slurm (`scripts/slurm.sh` starts a one-node cluster;
//! `scripts/test.sh` sets `LEDGER_REQUIRE_SLURM=1`, so a missing cluster fails instead of
//! skipping): the same outputs as the local executor, a cancelled job retried, a coordinator
//! killed with SIGKILL and started again, and a failing unit named.

mod common;

use common::{python_repo, sigkill, step_output, Ledger};
use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, Instant};

fn slurm_up() -> bool {
    let up = Command::new("sinfo")
        .arg("-h")
        .output()
        .is_ok_and(|o| o.status.success());
    if !up {
        assert!(
            std::env::var_os("LEDGER_REQUIRE_SLURM").is_none(),
            "LEDGER_REQUIRE_SLURM is set but no Slurm cluster answers (run scripts/slurm.sh)"
        );
        eprintln!("SKIPPED: no Slurm cluster answers `sinfo` (scripts/slurm.sh starts one)");
    }
    up
}

fn config(command: &str) -> String {
    common::per_shard_command_config(
        "slurm",
        "\n[executor.slurm]\npoll_ms = 200\nmax_retries = 2\n",
        "resources = { cpus = 1, mem = \"256M\" }\n",
        command,
    )
}

fn outputs(report: &serde_json::Value) -> BTreeMap<String, String> {
    report["steps"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|s| {
            let node = s["node"].as_str().unwrap().to_string();
            s["outputs"].as_array().unwrap().iter().map(move |o| {
                (
                    format!("{node}.{}", o[0].as_str().unwrap()),
                    o[1].as_str().unwrap().to_string(),
                )
            })
        })
        .collect()
}

fn slurm_run(l: &Ledger, config: &std::path::Path) -> serde_json::Value {
    l.ok([
        "run",
        "--json",
        "--no-progress",
        "--executor",
        "slurm",
        config.to_str().unwrap(),
    ])
    .json()
}

/// A fresh ledger with the Python repository and the config whose `command` stage runs
/// `command` per shard.
fn ledger_running(command: &str) -> (Ledger, std::path::PathBuf) {
    let l = Ledger::init();
    python_repo(&l);
    let c = l.config("exp.toml", &config(command));
    (l, c)
}

#[test]
fn slurm_and_local_executors_give_the_same_outputs() {
    if !slurm_up() {
        return;
    }
    let (local, c) = ledger_running("cp {in:samples} {out:copy.zst}");
    let by_local = outputs(&local.run_config(&c));
    let (cluster, c) = ledger_running("cp {in:samples} {out:copy.zst}");
    let report = slurm_run(&cluster, &c);
    assert_eq!(outputs(&report), by_local);
    // Units ran as Slurm tasks: each left its log.
    let logs = std::fs::read_dir(cluster.dir.join("slurm/logs"))
        .unwrap()
        .count();
    assert!(logs >= 14, "{logs} task logs");
    let v = cluster.ok(["verify"]);
    assert!(v.stdout.contains(": clean"), "{v:?}");
    // A second run is answered from the cache: nothing is submitted.
    let again = slurm_run(&cluster, &c);
    assert_eq!(outputs(&again), by_local);
    assert_eq!(
        std::fs::read_dir(cluster.dir.join("slurm/logs"))
            .unwrap()
            .count(),
        logs
    );
}

/// This ledger's Slurm tasks of node `node` in a state (`R`, `PD`, `R,PD`), from the
/// submissions the coordinator records (other tests submit at the same time).
fn own_jobs(l: &Ledger, node: &str, state: &str) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(l.dir.join("slurm/submitted")) else {
        return Vec::new();
    };
    let mine: Vec<String> = entries
        .filter_map(|e| std::fs::read_to_string(e.ok()?.path()).ok())
        .map(|s| s.trim().to_string())
        .collect();
    let out = Command::new("squeue")
        .args([
            "-h",
            "-t",
            state,
            "-n",
            &format!("ledger-{node}"),
            "-o",
            "%i",
        ])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .filter(|job| mine.contains(job))
        .collect()
}

/// The first of [`own_jobs`], waited for (three minutes at most).
fn first_own_job(l: &Ledger, node: &str, state: &str) -> String {
    let started = Instant::now();
    loop {
        if let Some(job) = own_jobs(l, node, state).into_iter().next() {
            return job;
        }
        assert!(
            started.elapsed() < Duration::from_secs(180),
            "no {node} task in state {state}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_cancelled_job_is_retried_and_the_outputs_do_not_change() {
    if !slurm_up() {
        return;
    }
    let (local, c) = ledger_running("sleep 2 && cp {in:samples} {out:copy.zst}");
    let by_local = outputs(&local.run_config(&c));

    let (l, c) = ledger_running("sleep 2 && cp {in:samples} {out:copy.zst}");
    let child = l.spawn([
        "run",
        "--json",
        "--no-progress",
        "--executor",
        "slurm",
        c.to_str().unwrap(),
    ]);
    let victim = first_own_job(&l, "copies", "R");
    let cancelled = Command::new("scancel").arg(&victim).status().unwrap();
    assert!(cancelled.success());
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(outputs(&report), by_local);
    // The attempt that died is on record, with its reason.
    let retried: Vec<serde_json::Value> = l
        .events()
        .into_iter()
        .filter(|e| {
            e["detail"]["status"]["failed"]
                .as_str()
                .is_some_and(|f| f.contains("CANCELLED") && f.contains("retried"))
        })
        .collect();
    assert_eq!(retried.len(), 1, "{retried:#?}");
    let v = l.ok(["verify"]);
    assert!(v.stdout.contains(": clean"), "{v:?}");
}

#[test]
fn a_coordinator_killed_mid_node_is_resumed_without_recording_a_unit_twice() {
    if !slurm_up() {
        return;
    }
    let (l, c) = ledger_running("sleep 1 && cp {in:samples} {out:copy.zst}");
    let mut child = l.spawn([
        "run",
        "--no-progress",
        "--executor",
        "slurm",
        c.to_str().unwrap(),
    ]);
    first_own_job(&l, "copies", "R,PD");
    sigkill(&mut child);
    // The tasks go on without their coordinator; a new one records what they finished.
    let report = slurm_run(&l, &c);
    let keys = common::succeeded_unit_keys(&l);
    assert_eq!(keys.len(), 14, "{keys:?}");
    assert!(
        keys.values().all(|n| *n == 1),
        "a unit recorded twice: {keys:?}"
    );
    let (local, lc) = ledger_running("sleep 1 && cp {in:samples} {out:copy.zst}");
    assert_eq!(outputs(&report), outputs(&local.run_config(&lc)));
    let v = l.ok(["verify"]);
    assert!(v.stdout.contains(": clean"), "{v:?}");
    let _ = step_output(&report, "copies", "copy.zst");
}

#[test]
fn a_unit_that_fails_fails_the_node_naming_it_and_its_output() {
    if !slurm_up() {
        return;
    }
    let (l, c) = ledger_running("echo the shard is unreadable >&2; exit 3");
    let out = l
        .run([
            "run",
            "--no-progress",
            "--executor",
            "slurm",
            c.to_str().unwrap(),
        ])
        .expect_code(1);
    assert!(out.stderr.contains("stage `copies/part."), "{out:?}");
    assert!(out.stderr.contains("exit status: 3"), "{out:?}");
    assert!(out.stderr.contains("the shard is unreadable"), "{out:?}");
}
