//! Real SWE-bench Verified instances through the real binary: flask-5014, django-16569 and
//! sympy-24539 from `../shared/reference/swebench`, in offline environments built from their
//! PyPI releases (gold and test patches reverse-applied; see `env::offline`), brought in as a
//! JSON task file by the `swebench` stage. FAIL_TO_PASS / PASS_TO_PASS are derived by the
//! validation rule and must equal the official lists where the file gives them. Gold resolves 3/3, the empty patch 0/3, the
//! scripted policy resolves them through the editor, and `ledger replay` of the scores and
//! trajectories is bit-identical with no engine reachable. Also: a 13-gram leak check of the
//! D_ctx corpus (this repository's history through collect → filter → reconstruct) against
//! the 500 Verified problem statements and gold patches.
//!
//! Skipped where `../shared` is absent (a fresh clone has none; CI has it), and without a
//! Docker engine unless `LEDGER_REQUIRE_DOCKER` is set.

mod common;

#[path = "../stages/tests/swebench/pins.rs"]
mod pins;

use common::{step, step_output, Ledger};
use std::path::PathBuf;
use std::time::Duration;

fn shared() -> Option<PathBuf> {
    let d = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/reference/swebench");
    if d.join("offline_instances.jsonl").is_file() && d.join("verified_problems.jsonl").is_file() {
        return Some(d);
    }
    eprintln!(
        "SKIPPED: {} is absent (a fresh clone has no ../shared; CI has it)",
        d.display()
    );
    None
}

fn engine() -> Option<env::Engine> {
    if env::engine::docker_info_ok() {
        return Some(
            env::Engine::connect().expect("`docker info` answers but bollard cannot connect"),
        );
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

fn cache_dir() -> PathBuf {
    std::env::var_os("DAVINCI_ENV_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
                .parent()
                .unwrap()
                .join("env-cache")
        })
}

fn fetch(f: &stages::pypi::PypiFile) -> Vec<u8> {
    let bytes = std::fs::read(stages::pypi::ensure(f).unwrap()).unwrap();
    f.check(&bytes).unwrap();
    bytes
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

#[test]
fn real_instances_through_rollout_and_replay() {
    let (Some(dir), Some(engine)) = (shared(), engine()) else {
        return;
    };
    std::env::set_var("DAVINCI_ENV_CACHE", cache_dir());
    let (base, _) =
        env::image::ensure_base_image(&engine, &Default::default(), &cache_dir()).unwrap();
    let mut dataset = Vec::new();
    let mut overrides = String::new();
    for line in std::fs::read_to_string(dir.join("offline_instances.jsonl"))
        .unwrap()
        .lines()
        .filter(|l| !l.trim().is_empty())
    {
        let mut v: serde_json::Value = serde_json::from_str(line).unwrap();
        let o = v.as_object_mut().unwrap();
        for k in ["FAIL_TO_PASS", "PASS_TO_PASS"] {
            o.insert(k.into(), serde_json::json!([]));
        }
        let mut inst = env::instance::parse_instance(&v.to_string()).unwrap();
        let (sdist, wheels) = match inst.repo.as_str() {
            "pallets/flask" => pins::flask(),
            "django/django" => pins::django(),
            "sympy/sympy" => pins::sympy(),
            other => panic!("{other}"),
        };
        let sdist_bytes = fetch(&sdist);
        let wheel_bytes: Vec<(String, Vec<u8>)> = wheels
            .iter()
            .map(|w| (w.filename.clone(), fetch(w)))
            .collect();
        let name = format!("{}-{}", sdist.name.to_lowercase(), sdist.version);
        let img = env::offline::ensure_offline_image(
            &engine,
            &base.tag,
            &env::offline::OfflineSpec {
                name: &name,
                sdist: &sdist_bytes,
                wheels: wheel_bytes
                    .iter()
                    .map(|(n, b)| (n.as_str(), b.as_slice()))
                    .collect(),
                reverse: vec![inst.patch.as_str(), inst.test_patch.as_str()],
            },
        )
        .unwrap();
        // SymPy's release has no bin/test; its runner is the same through sympy.test().
        let test_cmd = (inst.repo == "sympy/sympy").then(|| {
            let file = env::grading::specs::test_directives(&inst.repo, &inst.test_patch).join(" ");
            format!("PYTHONWARNINGS='ignore::UserWarning,ignore::SyntaxWarning' python3 -c \"import sympy; sympy.test('{file}', verbose=True)\"")
        });
        if let Some(c) = &test_cmd {
            inst.extra.insert("test_cmd".into(), c.clone().into());
        }
        // The official lists where the file has them, else the validation rule's.
        let (f2p, p2p) =
            env::offline::derive_lists(&engine, &img.tag, &inst, Duration::from_secs(900)).unwrap();
        let official = |k: &str| {
            v[k].as_array().map(|a| {
                a.iter()
                    .map(|x| x.as_str().unwrap().to_string())
                    .collect::<Vec<_>>()
            })
        };
        let sorted = |v: &[String]| {
            let mut v = v.to_vec();
            v.sort();
            v
        };
        for (name, derived) in [("FAIL_TO_PASS", &f2p), ("PASS_TO_PASS", &p2p)] {
            match official(&format!("official_{name}")) {
                Some(o) => {
                    println!(
                        "{} {name}: derived {} / official {}",
                        inst.instance_id,
                        derived.len(),
                        o.len()
                    );
                    assert_eq!(
                        sorted(derived),
                        sorted(&o),
                        "{} {name}: derived by the validation rule",
                        inst.instance_id
                    );
                }
                None => println!(
                    "{} {name}: derived {} (no official list given)",
                    inst.instance_id,
                    derived.len()
                ),
            }
        }
        assert!(
            !f2p.is_empty(),
            "{}: no FAIL_TO_PASS derived",
            inst.instance_id
        );
        let f2p = official("official_FAIL_TO_PASS").unwrap_or(f2p);
        let p2p = official("official_PASS_TO_PASS").unwrap_or(p2p);
        let o = v.as_object_mut().unwrap();
        o.insert("FAIL_TO_PASS".into(), serde_json::json!(f2p));
        // As the HF parquet ships them: a JSON string holding the list.
        o.insert(
            "PASS_TO_PASS".into(),
            serde_json::json!(serde_json::to_string(&p2p).unwrap()),
        );
        dataset.push(v);
        overrides.push_str(&format!(
            "[stage.overrides.\"{}\"]\nimage = \"{}\"\nbase_commit = \"{}\"\n{}\n",
            inst.instance_id,
            img.tag,
            img.commit,
            test_cmd
                .map(|c| format!("test_cmd = {}", toml_quote(&c)))
                .unwrap_or_default()
        ));
    }
    let l = Ledger::init();
    l.write(
        "data/verified-offline.json",
        serde_json::to_vec_pretty(&dataset).unwrap(),
    );
    let config = l.config(
        "swebench.toml",
        &format!(
            r#"[experiment]
name = "swebench-offline"
seed = 3

[[stage]]
id = "verified"
uses = "swebench"
dataset = "data/verified-offline.json"
{overrides}
[[stage]]
id = "gold"
uses = "rollout"
inputs = {{ instances = "verified.instances" }}
policy = {{ kind = "gold" }}
test_timeout_secs = 900

[[stage]]
id = "empty"
uses = "rollout"
inputs = {{ instances = "verified.instances" }}
policy = {{ kind = "empty" }}

[[stage]]
id = "scripted"
uses = "rollout"
inputs = {{ instances = "verified.instances" }}
policy = {{ kind = "scripted" }}
test_timeout_secs = 900
"#
        ),
    );
    let report = l.run_config(&config);
    assert_eq!(metric(step(&report, "verified"), "instances"), 3.0);
    assert_eq!(
        metric(step(&report, "gold"), "resolved_rate"),
        1.0,
        "gold resolves 3/3"
    );
    assert_eq!(
        metric(step(&report, "empty"), "resolved_rate"),
        0.0,
        "the empty patch 0/3"
    );
    assert_eq!(
        metric(step(&report, "scripted"), "resolved_rate"),
        1.0,
        "the scripted policy resolves 3/3"
    );
    let score: serde_json::Value =
        serde_json::from_str(&l.ok(["cat", &step_output(&report, "gold", "score")]).stdout)
            .unwrap();
    for i in score["instances"].as_array().unwrap() {
        let run = &i["runs"][0];
        assert_eq!(run["harness_resolved"], true, "{run}");
        assert_eq!(run["apply_method"], "git apply --verbose", "{run}");
        assert!(
            run["environment"]
                .as_str()
                .unwrap()
                .starts_with("davinci-env-offline:"),
            "{run}"
        );
    }
    let parsers: Vec<&str> = score["instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["runs"][0]["parser"].as_str().unwrap())
        .collect();
    assert_eq!(
        parsers,
        ["parse_log_pytest", "parse_log_django", "parse_log_sympy"]
    );
    for t in l
        .ok(["cat", &step_output(&report, "scripted", "trajectories")])
        .stdout
        .lines()
    {
        let t: serde_json::Value = serde_json::from_str(t).unwrap();
        let edits = t["messages"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|m| m["tool_calls"].as_array())
            .flatten()
            .filter(|c| c["function"]["name"] == "str_replace_editor")
            .count();
        assert!(
            edits >= 1 && t["resolved"] == true,
            "{}: fixed through the editor",
            t["instance_id"]
        );
    }
    // Offline replays: no engine reachable, every answer from the record, bit for bit.
    for (node, output) in [("gold", "score"), ("scripted", "trajectories")] {
        let out = l
            .command([
                "replay",
                "--check",
                "--json",
                &step_output(&report, node, output),
            ])
            .env("DOCKER_HOST", "unix:///nonexistent/docker.sock")
            .output()
            .unwrap();
        let r: serde_json::Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
        assert_eq!(out.status.code(), Some(0), "{r}");
        assert_eq!(r["verdict"], "bit_identical", "{node}.{output}: {r}");
    }
}

fn toml_quote(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The D_ctx corpus of this repository's history against the 500 real problem statements
/// and gold patches; a corpus holding one of them is flagged (the check can fail).
#[test]
fn dctx_corpus_leak_check_against_verified() {
    let Some(dir) = shared() else {
        return;
    };
    let l = Ledger::init();
    let problems = dir.join("verified_problems.jsonl");
    let first: serde_json::Value = serde_json::from_str(
        std::fs::read_to_string(&problems)
            .unwrap()
            .lines()
            .next()
            .unwrap(),
    )
    .unwrap();
    // A positive control: a "corpus" that quotes one instance's statement and patch.
    l.write(
        "control.txt",
        format!(
            "{}\n{}\n",
            first["problem_statement"].as_str().unwrap(),
            first["patch"].as_str().unwrap()
        )
        .as_bytes(),
    );
    let added = common::added_hashes(
        &l.ok(["add", problems.to_str().unwrap(), "control.txt"])
            .stdout,
    );
    assert_eq!(added.len(), 2, "{added:?}");
    let repo = env!("CARGO_MANIFEST_DIR");
    let config = l.config(
        "leak.toml",
        &format!(
            r#"[experiment]
name = "dctx-leak"
seed = 1

[[stage]]
id = "prs"
uses = "collect"
source = "git"
git = {{ repo = "{repo}", unit = "commit", name = "davinci/davinci-ledger" }}

[[stage]]
id = "general"
uses = "filter"
inputs = {{ prs = "prs.prs" }}
subset = "general"

[[stage]]
id = "samples"
uses = "reconstruct"
inputs = {{ prs = "general.prs" }}
format = "general"

[[stage]]
id = "leaks"
uses = "leakcheck"
inputs = {{ benchmark = "@{problems}", corpus = "samples.samples" }}

[[stage]]
id = "control"
uses = "leakcheck"
inputs = {{ benchmark = "@{problems}", corpus = "@{control}" }}
"#,
            problems = added[0].0,
            control = added[1].0,
        ),
    );
    let report = l.run_config(&config);
    let read = |node: &str| -> serde_json::Value {
        serde_json::from_str(&l.ok(["cat", &step_output(&report, node, "report")]).stdout).unwrap()
    };
    let leaks = read("leaks");
    let control = read("control");
    let instances = |r: &serde_json::Value| r["instances"].as_array().unwrap().clone();
    let leaked = |r: &serde_json::Value| {
        instances(r)
            .into_iter()
            .filter(|i| i["leaked"] == true)
            .map(|i| i["id"].as_str().unwrap().to_string())
            .collect::<Vec<_>>()
    };
    assert_eq!(instances(&leaks).len(), 500);
    assert!(
        metric(step(&report, "leaks"), "corpus.ngrams") > 10_000.0,
        "the D_ctx corpus is not empty"
    );
    let max = instances(&leaks)
        .iter()
        .map(|i| i["ratio"].as_f64().unwrap())
        .fold(0.0, f64::max);
    println!(
        "D_ctx vs 500 SWE-bench Verified instances: {} leaked, max ratio {max:.4}",
        leaked(&leaks).len()
    );
    assert_eq!(
        leaked(&leaks),
        Vec::<String>::new(),
        "the D_ctx corpus holds Verified text"
    );
    assert_eq!(
        leaked(&control),
        vec![first["instance_id"].as_str().unwrap().to_string()]
    );
}
