//! D_env end to end through the real binary and the real Docker engine: instances
//! synthesized from three real PyPI projects (held out by package), scripted rollouts that
//! make both D_pass and D_fail, the gold / empty grading baselines, an offline replay that
//! rebuilds the trajectories bit for bit with no engine reachable, and `--reexecute`.
//!
//! Needs an engine: skipped when `docker info` fails and `LEDGER_REQUIRE_DOCKER` is unset
//! (`scripts/test.sh` sets it, and runs `scripts/setup.sh` first).

mod common;

use common::{step, step_output, Ledger};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// An OpenAI-compatible `/v1/chat/completions` server on 127.0.0.1: its first answer calls
/// `bash` (`ls`), the next one `submit`, judged by the assistant turns in the request. Counts
/// requests.
fn chat_server() -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/v1", listener.local_addr().unwrap());
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = hits.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let (mut line, mut length) = (String::new(), 0usize);
            while reader.read_line(&mut line).unwrap_or(0) > 0 && line != "\r\n" {
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    length = v.trim().parse().unwrap();
                }
                line.clear();
            }
            let mut body = vec![0u8; length];
            reader.read_exact(&mut body).unwrap();
            counter.fetch_add(1, Ordering::SeqCst);
            let req: serde_json::Value = serde_json::from_slice(&body).unwrap();
            assert!(
                req["tools"].as_array().unwrap().len() == 3,
                "the three tools are offered"
            );
            let turns = req["messages"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|m| m["role"] == "assistant")
                .count();
            let (name, args) = if turns == 0 {
                ("bash", r#"{\"command\": \"ls\"}"#)
            } else {
                ("submit", "{}")
            };
            let answer = format!(
                r#"{{"id":"x","object":"chat.completion","choices":[{{"index":0,"finish_reason":"tool_calls","message":{{"role":"assistant","content":"step {turns}","tool_calls":[{{"id":"c{turns}","type":"function","function":{{"name":"{name}","arguments":"{args}"}}}}]}}}}]}}"#
            );
            let head = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                answer.len()
            );
            let _ = stream.write_all(head.as_bytes());
            let _ = stream.write_all(answer.as_bytes());
        }
    });
    (url, hits)
}

const PACKAGES: &str = r#"
[[stage.packages]]
name = "toolz"
version = "0.12.1"
filename = "toolz-0.12.1.tar.gz"
url = "https://files.pythonhosted.org/packages/3e/bf/5e12db234df984f6df3c7f12f1428aa680ba4e101f63f4b8b3f9e8d2e617/toolz-0.12.1.tar.gz"
sha256 = "ecca342664893f177a13dac0e6b41cbd8ac25a358e5f215316d43e2100224f4d"
source = ["toolz"]
tests = ["toolz/tests"]

[[stage.packages]]
name = "more-itertools"
version = "10.5.0"
filename = "more-itertools-10.5.0.tar.gz"
url = "https://files.pythonhosted.org/packages/51/78/65922308c4248e0eb08ebcbe67c95d48615cc6f27854b6f2e57143e9178f/more-itertools-10.5.0.tar.gz"
sha256 = "5482bfef7849c25dc3c6dd53a6173ae4795da2a41a80faea6700d9f5846c5da6"
source = ["more_itertools"]
tests = ["tests"]

[[stage.packages]]
name = "inflection"
version = "0.5.1"
filename = "inflection-0.5.1.tar.gz"
url = "https://files.pythonhosted.org/packages/e1/7e/691d061b7329bc8d54edbf0ec22fbfb2afe61facb681f9aaa9bff7a27d04/inflection-0.5.1.tar.gz"
sha256 = "1a29730d366e996aaacffb2f1f1cb9593dc38e2ddd30c91250c6dde09ea9b417"
source = ["inflection"]
tests = ["test_inflection.py"]
"#;

fn slurm_up() -> bool {
    let up = std::process::Command::new("sinfo")
        .arg("-h")
        .output()
        .is_ok_and(|o| o.status.success());
    if !up {
        assert!(
            std::env::var_os("LEDGER_REQUIRE_SLURM").is_none(),
            "LEDGER_REQUIRE_SLURM is set but no Slurm cluster answers (run scripts/slurm.sh)"
        );
        eprintln!("SKIPPED the Slurm half: no Slurm cluster answers `sinfo`");
    }
    up
}

fn docker_available() -> bool {
    let ok = std::process::Command::new("docker")
        .arg("info")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok && std::env::var_os("LEDGER_REQUIRE_DOCKER").is_none() {
        eprintln!(
            "SKIPPED: no Docker engine (`docker info` fails) and LEDGER_REQUIRE_DOCKER is unset"
        );
        return false;
    }
    true
}

/// The base image cache the env crate's tests use: debootstrap runs once per machine.
fn env_cache() -> PathBuf {
    std::env::var_os("DAVINCI_ENV_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
                .parent()
                .expect("target dir")
                .join("env-cache")
        })
}

fn metric(step: &serde_json::Value, name: &str) -> f64 {
    step["metrics"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m[0] == name)
        .unwrap_or_else(|| panic!("no metric {name} in {step}"))[1]
        .as_f64()
        .unwrap()
}

fn lines(l: &Ledger, hash: &str) -> Vec<serde_json::Value> {
    l.ok(["cat", hash])
        .stdout
        .lines()
        .map(|x| serde_json::from_str(x).unwrap())
        .collect()
}

/// The units (`node/unit`) that executed successfully in the run of `report`, sorted.
fn executed_units(l: &Ledger, report: &serde_json::Value) -> Vec<String> {
    let run = report["run_id"].as_str().unwrap();
    let mut units: Vec<String> = l
        .events()
        .iter()
        .map(|e| &e["detail"])
        .filter(|d| d["run_id"] == run && d["status"] == "succeeded")
        .filter_map(|d| d["node"].as_str())
        .filter(|n| n.contains('/'))
        .map(str::to_string)
        .collect();
    units.sort();
    units
}

#[test]
fn synthesized_instances_rollouts_grading_and_offline_replay() {
    if !docker_available() {
        return;
    }
    std::env::set_var("DAVINCI_ENV_CACHE", env_cache());
    let l = Ledger::init();
    let (llm, llm_hits) = chat_server();
    let config = l.config(
        "env.toml",
        &format!(
            r#"[experiment]
name = "d-env"
seed = 11

[[stage]]
id = "bugs"
uses = "synthesize"
candidates_per_package = 6
bugs_per_package = 1
heldout = ["inflection"]
{PACKAGES}

[[stage]]
id = "rollouts"
uses = "rollout"
inputs = {{ instances = "bugs.instances" }}
policy = {{ kind = "scripted", withhold_fraction = 0.5 }}
runs = 2
max_observation_chars = 4000

[[stage]]
id = "gold"
uses = "rollout"
inputs = {{ instances = "bugs.heldout" }}
policy = {{ kind = "gold" }}

[[stage]]
id = "empty"
uses = "rollout"
inputs = {{ instances = "bugs.heldout" }}
policy = {{ kind = "empty" }}

[[stage]]
id = "agent"
uses = "rollout"
inputs = {{ instances = "bugs.heldout" }}
policy = {{ kind = "endpoint", base_url = "{llm}", model = "local-test" }}
"#
        ),
    );
    // First the synthesis of two of the three packages; the full config below adds the third,
    // and must execute only that package's unit and the summary of the `bugs` node.
    let two = PACKAGES
        .split("[[stage.packages]]")
        .filter(|p| !p.contains("\"inflection\""))
        .collect::<Vec<_>>()
        .join("[[stage.packages]]");
    let first = l.config(
        "two.toml",
        &format!(
            "[experiment]\nname = \"d-env\"\nseed = 11\n\n[[stage]]\nid = \"bugs\"\nuses = \"synthesize\"\ncandidates_per_package = 6\nbugs_per_package = 1\n{two}"
        ),
    );
    let before = l.run_config(&first);
    assert_eq!(
        executed_units(&l, &before),
        [
            "bugs/image",
            "bugs/package.more-itertools",
            "bugs/package.toolz",
            "bugs/summary"
        ]
    );
    let report = l.run_config(&config);
    let executed = executed_units(&l, &report);
    let bugs: Vec<_> = executed.iter().filter(|u| u.starts_with("bugs/")).collect();
    assert_eq!(
        bugs,
        ["bugs/package.inflection", "bugs/summary"],
        "adding a package executes only its unit and the summary"
    );
    let (rollouts, gold, empty) = (
        step(&report, "rollouts"),
        step(&report, "gold"),
        step(&report, "empty"),
    );

    // Instances: held out by package, each with >= 1 FAIL_TO_PASS and >= 1 PASS_TO_PASS.
    let train = lines(&l, &step_output(&report, "bugs", "instances"));
    let heldout = lines(&l, &step_output(&report, "bugs", "heldout"));
    assert_eq!(train.len(), 2, "one bug each from toolz and more-itertools");
    assert_eq!(heldout.len(), 1);
    for i in &train {
        assert!(!i["repo"].as_str().unwrap().contains("inflection"), "{i}");
    }
    assert_eq!(heldout[0]["repo"], "pypi/inflection");
    for i in train.iter().chain(&heldout) {
        assert!(!i["FAIL_TO_PASS"].as_array().unwrap().is_empty(), "{i}");
        assert!(!i["PASS_TO_PASS"].as_array().unwrap().is_empty(), "{i}");
        assert!(i["patch"].as_str().unwrap().starts_with("diff --git a/"));
        assert_eq!(i["base_commit"].as_str().unwrap().len(), 40);
        assert!(i["problem_statement"]
            .as_str()
            .unwrap()
            .contains("Failing tests:"));
    }
    let image: serde_json::Value =
        serde_json::from_str(&l.ok(["cat", &step_output(&report, "bugs", "image")]).stdout)
            .unwrap();
    assert!(image["packages"]
        .as_array()
        .unwrap()
        .iter()
        .any(|p| p["name"] == "python3-pytest"));

    // Scripted rollouts: real passing demonstrations and withheld (failing) ones.
    let all = lines(&l, &step_output(&report, "rollouts", "trajectories"));
    let pass = lines(&l, &step_output(&report, "rollouts", "pass"));
    let fail = lines(&l, &step_output(&report, "rollouts", "fail"));
    assert_eq!(all.len(), 4);
    assert_eq!(pass.len() + fail.len(), 4);
    assert!(
        !pass.is_empty() && !fail.is_empty(),
        "seed 11 withholds some fixes: {} pass, {} fail",
        pass.len(),
        fail.len()
    );
    assert_eq!(metric(rollouts, "resolved") as usize, pass.len());
    for t in &pass {
        assert_eq!(t["resolved"], true);
        assert_eq!(t["stop_reason"], "submitted");
        assert!(t["policy"]
            .as_str()
            .unwrap()
            .starts_with("scripted-reference"));
        let msgs = t["messages"].as_array().unwrap();
        assert_eq!(msgs[0]["role"], "system");
        let edits = msgs
            .iter()
            .filter_map(|m| m["tool_calls"].as_array())
            .flatten()
            .filter(|c| c["function"]["name"] == "str_replace_editor")
            .count();
        assert!(edits >= 1, "the fix is made with the editor");
        // Every tool result answers a call by id.
        for m in msgs.iter().filter(|m| m["role"] == "tool") {
            assert!(m["tool_call_id"].as_str().unwrap().starts_with("call_"));
        }
        assert!(!t["patch"].as_str().unwrap().is_empty());
    }
    for t in &fail {
        assert_eq!(t["resolved"], false);
        assert_eq!(t["patch"], "");
    }

    // Grading baselines on the held-out instance.
    assert_eq!(metric(gold, "resolved_rate"), 1.0);
    assert_eq!(metric(empty, "resolved_rate"), 0.0);
    let score: serde_json::Value = serde_json::from_str(
        &l.ok(["cat", &step_output(&report, "empty", "score")])
            .stdout,
    )
    .unwrap();
    assert_eq!(score["instances"][0]["runs"][0]["patch_applied"], false);

    // An OpenAI-compatible endpoint as the policy: its answers drive real tool calls, the
    // trajectory names the policy, and the unresolved submit is graded.
    assert_eq!(llm_hits.load(Ordering::SeqCst), 2);
    let t = &lines(&l, &step_output(&report, "agent", "trajectories"))[0];
    assert_eq!(t["policy"], "endpoint(model=local-test, temperature=0)");
    assert_eq!(t["stop_reason"], "submitted");
    assert_eq!(t["resolved"], false);
    let msgs = t["messages"].as_array().unwrap();
    assert_eq!(
        msgs[2]["tool_calls"][0]["function"]["arguments"]["command"],
        "ls"
    );
    assert!(
        msgs[3]["content"]
            .as_str()
            .unwrap()
            .contains("test_inflection.py"),
        "{}",
        msgs[3]
    );
    // Its replay needs neither the endpoint nor the engine.
    let out = l
        .command([
            "replay",
            "--json",
            &step_output(&report, "agent", "trajectories"),
        ])
        .env("DOCKER_HOST", "unix:///nonexistent/docker.sock")
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        llm_hits.load(Ordering::SeqCst),
        2,
        "the replay asked the endpoint nothing"
    );

    // An offline replay: no engine is reachable, every container answer comes from the record.
    let traj = step_output(&report, "rollouts", "trajectories");
    let out = l
        .command(["replay", "--check", "--json", traj.as_str()])
        .env("DOCKER_HOST", "unix:///nonexistent/docker.sock")
        .output()
        .unwrap();
    let replay: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
    assert_eq!(out.status.code(), Some(0), "{replay}");
    assert_eq!(replay["verdict"], "bit_identical", "{replay}");

    // Re-executing the gold grading in a fresh container agrees with the record.
    let r = l
        .ok([
            "replay",
            "--reexecute",
            "--json",
            &step_output(&report, "gold", "score"),
        ])
        .json();
    let actions = &r["steps"][0]["actions"];
    assert!(actions["actions"].as_u64().unwrap() >= 1, "{r}");
    assert_eq!(actions["differing"], 0, "{r}");
    assert_eq!(r["verdict"], "bit_identical");

    // One more run per instance executes only the new rollouts (and the node's summary).
    let three = l.config(
        "three.toml",
        &std::fs::read_to_string(&config)
            .unwrap()
            .replace("runs = 2", "runs = 3"),
    );
    let more = l.run_config(&three);
    let rollout_units: Vec<_> = executed_units(&l, &more)
        .into_iter()
        .filter(|u| u.starts_with("rollouts/"))
        .collect();
    assert_eq!(rollout_units.len(), 3, "{rollout_units:?}");
    assert_eq!(
        rollout_units
            .iter()
            .filter(|u| u.ends_with("/summary"))
            .count(),
        1,
        "{rollout_units:?}"
    );
    assert!(
        rollout_units
            .iter()
            .all(|u| u.ends_with("/summary") || u.ends_with(".2")),
        "only the third run of each instance executes: {rollout_units:?}"
    );
    assert_eq!(
        lines(&l, &step_output(&more, "rollouts", "trajectories")).len(),
        6
    );

    // The same rollouts as Slurm tasks (their containers started from the tasks) give the
    // same outputs, byte for byte: on a copy of this ledger, with a parameter that changes the
    // rollouts' action keys but not their work (`parallel`), so they execute again and are
    // answered from the same record as here.
    if slurm_up() {
        let cluster = Ledger::new();
        common::copy_dir(&l.dir, &cluster.dir);
        let text = std::fs::read_to_string(&config)
            .unwrap()
            .replace("uses = \"rollout\"", "uses = \"rollout\"\nparallel = 3");
        let again = cluster.config("env.toml", &text);
        let by_slurm = cluster
            .ok([
                "run",
                "--json",
                "--no-progress",
                "--executor",
                "slurm",
                again.to_str().unwrap(),
            ])
            .json();
        for s in report["steps"].as_array().unwrap() {
            let node = s["node"].as_str().unwrap();
            if s["stage"] == "rollout" {
                assert_eq!(step(&by_slurm, node)["outcome"], "Executed", "{by_slurm:#}");
            }
            assert_eq!(
                step(&by_slurm, node)["outputs"],
                s["outputs"],
                "{node}: the Slurm executor made other outputs"
            );
        }
    }

    // A tampered container answer: the replay names the damaged record instead of rebuilding
    // from it, and verify names the trajectories built from it.
    let events = l.events();
    let tool = events
        .iter()
        .find(|e| e["kind"] == "observation" && e["detail"]["source"] == "grade")
        .expect("a recorded grading");
    let response = tool["detail"]["response"].as_str().unwrap();
    common::flip_byte(&l.blob_path(response), 10);
    let out = l.run(["replay", "--check", traj.as_str()]);
    assert_ne!(out.code, 0, "{out:?}");
    assert!(
        out.stderr.contains("grade response") && out.stderr.contains("damaged"),
        "{out:?}"
    );
    let verify = l.run(["verify"]).expect_code(1);
    assert!(verify.stdout.contains(response), "{verify:?}");
}
