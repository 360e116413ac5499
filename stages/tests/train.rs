//! midtrain / sft through the runner on a tiny Qwen2 (vocab 512, hidden 64, 2 layers,
//! sequences of 64): determinism, exact resume, held-out loss, the SFT loss mask, and
//! bad inputs rejected before training.

use ledger::config::Experiment;
use ledger::runner::{run, RunOptions, RunReport};
use ledger::{Ledger, Wait};
use model::chat::{FunctionCall, Message, ToolCall, Trajectory};
use std::path::{Path, PathBuf};
use tokenizers::{AddedToken, Tokenizer};

const SEQ: usize = 64;

fn corpus(n: usize, offset: usize) -> Vec<String> {
    (offset..offset + n)
        .map(|i| {
            format!(
                "def f{a}(x):\n    return x * {b} + {c}\n\n\nclass C{a}:\n    value = {b}\n",
                a = i % 23,
                b = i % 7,
                c = i % 5
            )
        })
        .collect()
}

fn tokenizer(texts: &[String]) -> Tokenizer {
    stages::tokenize::train_bpe(texts.iter().cloned(), 400, 2, "<|endoftext|>").unwrap()
}

fn shard(tok: &Tokenizer, texts: &[String]) -> Vec<u8> {
    let eos = tok.token_to_id("<|endoftext|>").unwrap();
    let mut stream = Vec::new();
    for t in texts {
        stream.extend_from_slice(tok.encode(t.as_str(), false).unwrap().get_ids());
        stream.push(eos);
    }
    let n = stream.len() as u64;
    while stream.len() % SEQ != 0 {
        stream.push(eos);
    }
    let mut out = b"DVTOKS01".to_vec();
    for v in [SEQ as u32, tok.get_vocab_size(true) as u32, eos, eos] {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out.extend_from_slice(&n.to_le_bytes());
    for t in stream {
        out.extend_from_slice(&t.to_le_bytes());
    }
    out
}

fn trajectory(i: usize) -> Trajectory {
    let m = |role: &str, content: &str| Message {
        role: role.into(),
        content: Some(content.into()),
        tool_calls: None,
    };
    Trajectory {
        id: Some(format!("t{i}")),
        resolved: Some(i.is_multiple_of(2)),
        messages: vec![
            m("system", "You are a careful engineer."),
            m("user", &format!("Fix f{} so tests pass.", i % 23)),
            Message {
                role: "assistant".into(),
                content: Some("Let me look.".into()),
                tool_calls: Some(vec![ToolCall {
                    id: Some("c1".into()),
                    function: FunctionCall {
                        name: "bash".into(),
                        arguments: serde_json::json!({ "command": format!("cat f{}.py", i % 23) }),
                    },
                }]),
            },
            m("tool", &format!("def f{}(x):\n    return x", i % 23)),
            m("assistant", &format!("return x * {} + {}", i % 7, i % 5)),
        ],
    }
}

struct Fixture {
    dir: tempfile::TempDir,
    tokens: String,
    tokenizer: String,
    trajectories: String,
}

fn add(ledger: &mut Ledger, dir: &Path, name: &str, bytes: &[u8]) -> String {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    ledger.add_file(&p).unwrap().0.to_hex()
}

/// Fixture bytes, made once so every ledger gets identical inputs.
fn fixture_bytes() -> &'static (Vec<u8>, Vec<u8>, Vec<u8>) {
    static BYTES: std::sync::OnceLock<(Vec<u8>, Vec<u8>, Vec<u8>)> = std::sync::OnceLock::new();
    BYTES.get_or_init(|| {
        let texts = corpus(160, 0);
        let tok = tokenizer(&texts);
        let trajs: String = (0..48)
            .map(|i| serde_json::to_string(&trajectory(i)).unwrap() + "\n")
            .collect();
        (
            shard(&tok, &texts),
            tok.to_string(false).unwrap().into_bytes(),
            trajs.into_bytes(),
        )
    })
}

fn fixture() -> (Fixture, Ledger) {
    let dir = tempfile::tempdir().unwrap();
    let ledger_dir = dir.path().join("ledger");
    Ledger::init(&ledger_dir).unwrap();
    let mut ledger = Ledger::open_writer(&ledger_dir, Wait::Block).unwrap();
    let (shard_bytes, tok_bytes, traj_bytes) = fixture_bytes();
    let tokens = add(&mut ledger, dir.path(), "tokens.bin", shard_bytes);
    let tokenizer = add(&mut ledger, dir.path(), "tokenizer.json", tok_bytes);
    let trajectories = add(&mut ledger, dir.path(), "traj.jsonl", traj_bytes);
    (
        Fixture {
            dir,
            tokens,
            tokenizer,
            trajectories,
        },
        ledger,
    )
}

const TINY: &str = "model = { vocab_size = 512, hidden_size = 64, intermediate_size = 176, num_hidden_layers = 2, num_attention_heads = 4, num_key_value_heads = 2 }\n";

fn run_config(
    ledger: &mut Ledger,
    dir: &Path,
    name: &str,
    body: &str,
) -> anyhow::Result<RunReport> {
    let path: PathBuf = dir.join(format!("{name}.toml"));
    std::fs::write(
        &path,
        format!("[experiment]\nname = \"{name}\"\nseed = 5\n\n{body}"),
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

fn midtrain_stage(f: &Fixture, id: &str, extra: &str) -> String {
    format!(
        "[[stage]]\nid = \"{id}\"\nuses = \"midtrain\"\ninputs = {{ ctx_gen = \"@{}\", env = \"@{}\", tokenizer = \"@{}\" {extra} }}\n{TINY}peak_lr = 3e-3\nglobal_batch = 8\nmicro_batch = 4\nheldout_fraction = 0.1\nstages = [[\"ctx_gen\"], [\"env\"]]\n",
        f.tokens, f.trajectories, f.tokenizer
    )
}

fn output(report: &RunReport, step: usize, name: &str) -> String {
    report.steps[step]
        .outputs
        .iter()
        .find(|(n, _)| n == name)
        .unwrap_or_else(|| panic!("no output {name}"))
        .1
        .clone()
}

fn metric(report: &RunReport, step: usize, name: &str) -> f64 {
    report.steps[step]
        .metrics
        .iter()
        .find(|(n, _)| n == name)
        .unwrap_or_else(|| panic!("no metric {name}"))
        .1
}

#[test]
fn midtrain_is_deterministic_resumable_and_learns() {
    // Two independent ledgers, same config, seed and data: same checkpoint bytes.
    let (f1, mut l1) = fixture();
    let (f2, mut l2) = fixture();
    let a = run_config(&mut l1, f1.dir.path(), "a", &midtrain_stage(&f1, "mid", "")).unwrap();
    let b = run_config(&mut l2, f2.dir.path(), "a", &midtrain_stage(&f2, "mid", "")).unwrap();
    for out in ["model", "optimizer", "state", "curve", "plot", "config"] {
        assert_eq!(
            output(&a, 0, out),
            output(&b, 0, out),
            "output {out} differs"
        );
    }
    let before = metric(&a, 0, "heldout_loss.before");
    let after = metric(&a, 0, "heldout_loss.after");
    assert!(after < before - 0.5, "held-out loss {before} -> {after}");
    let total = metric(&a, 0, "steps.total") as usize;
    assert!(total >= 6, "{total} steps");

    // Stop half-way, then resume from the state: the same final model and optimizer.
    let half = total / 2;
    let first = midtrain_stage(&f1, "first", "").replace(
        "stages = ",
        &format!("stop_after_steps = {half}\nstages = "),
    );
    let r1 = run_config(&mut l1, f1.dir.path(), "first", &first).unwrap();
    assert_ne!(output(&r1, 0, "model"), output(&a, 0, "model"));
    let state = output(&r1, 0, "state");
    let resumed = midtrain_stage(&f1, "second", &format!(", resume = \"@{state}\""));
    let r2 = run_config(&mut l1, f1.dir.path(), "second", &resumed).unwrap();
    assert_eq!(metric(&r2, 0, "steps") as usize, total - half);
    // Every output, the curve (which names every step) and its plot included; the plot's
    // title is the node id.
    for out in ["model", "optimizer", "state", "curve", "config"] {
        assert_eq!(output(&r2, 0, out), output(&a, 0, out), "resumed {out}");
    }
    let plot = |l: &Ledger, r: &RunReport, node: &str| {
        let h = ledger::Hash::from_hex(&output(r, 0, "plot")).unwrap();
        let svg = String::from_utf8(l.store().read(&h).unwrap()).unwrap();
        assert!(svg.contains(&format!(">{node} — ")), "{svg}");
        svg.replace(&format!(">{node} — "), ">NODE — ")
    };
    assert_eq!(
        plot(&l1, &r2, "second"),
        plot(&l1, &a, "mid"),
        "resumed plot"
    );

    // The same from an intermediate checkpoint (`checkpoint_every`) of a run that went on.
    let every = 2;
    let third = midtrain_stage(&f1, "third", "").replace(
        "stages = ",
        &format!("checkpoint_every = {every}\nstages = "),
    );
    let r3 = run_config(&mut l1, f1.dir.path(), "third", &third).unwrap();
    assert_eq!(output(&r3, 0, "model"), output(&a, 0, "model"));
    let ckpt = output(&r3, 0, &format!("ckpt.step{every:06}.state"));
    let state: serde_json::Value = serde_json::from_slice(
        &l1.store()
            .read(&ledger::Hash::from_hex(&ckpt).unwrap())
            .unwrap(),
    )
    .unwrap();
    assert_eq!(
        state["curve"].as_str(),
        Some(output(&r3, 0, &format!("ckpt.step{every:06}.curve")).as_str())
    );
    let fourth = midtrain_stage(&f1, "fourth", &format!(", resume = \"@{ckpt}\""));
    let r4 = run_config(&mut l1, f1.dir.path(), "fourth", &fourth).unwrap();
    assert_eq!(metric(&r4, 0, "steps") as usize, total - every);
    for out in ["model", "optimizer", "state", "curve"] {
        assert_eq!(
            output(&r4, 0, out),
            output(&a, 0, out),
            "resumed from step {every}: {out}"
        );
    }
    assert_eq!(plot(&l1, &r4, "fourth"), plot(&l1, &a, "mid"));
}

#[test]
fn sft_mask_covers_assistant_tokens_only() {
    let texts = corpus(160, 0);
    let mut tok = tokenizer(&texts);
    tok.add_special_tokens(vec![
        AddedToken::from("<|im_start|>", true),
        AddedToken::from("<|im_end|>", true),
    ])
    .unwrap();
    let t = trajectory(3);
    let (ids, mask) = stages::train::sft::encode_trajectory(&tok, &t).unwrap();
    assert_eq!(ids.len(), mask.len());
    let trained: Vec<u32> = ids
        .iter()
        .zip(&mask)
        .filter(|(_, m)| **m > 0.0)
        .map(|(i, _)| *i)
        .collect();
    let untrained: Vec<u32> = ids
        .iter()
        .zip(&mask)
        .filter(|(_, m)| **m == 0.0)
        .map(|(i, _)| *i)
        .collect();
    let trained_text = tok.decode(&trained, false).unwrap();
    let untrained_text = tok.decode(&untrained, false).unwrap();
    assert_eq!(
        trained_text,
        "Let me look.\n<function=bash>\n<parameter=command>cat f3.py</parameter>\n</function><|im_end|>return x * 3 + 3<|im_end|>"
    );
    for s in [
        "You are a careful engineer.",
        "Fix f3 so tests pass.",
        "def f3(x):\n    return x",
        "<|im_start|>system",
        "<|im_start|>user",
        "<|im_start|>tool",
        "<|im_start|>assistant\n",
    ] {
        assert!(
            untrained_text.contains(s),
            "{s:?} should be masked out: {untrained_text:?}"
        );
        assert!(!trained_text.contains(s), "{s:?} must carry no loss");
    }
    // The mask is exactly the assistant spans: every masked-in token sits after an
    // `<|im_start|>assistant\n` header and before the next `<|im_start|>`.
    let start = tok.token_to_id("<|im_start|>").unwrap();
    let mut role_is_assistant = false;
    for (k, (&id, &m)) in ids.iter().zip(&mask).enumerate() {
        if id == start {
            let role = tok
                .decode(&ids[k + 1..(k + 10).min(ids.len())], false)
                .unwrap();
            role_is_assistant = role.starts_with("assistant");
            assert_eq!(m, 0.0);
        } else if m > 0.0 {
            assert!(
                role_is_assistant,
                "token {k} trained outside an assistant turn"
            );
        }
    }
}

#[test]
fn sft_strong_and_weak() {
    let (f, mut l) = fixture();
    let stage = |id: &str, setting: &str| {
        format!(
            "[[stage]]\nid = \"{id}\"\nuses = \"sft\"\ninputs = {{ trajectories = \"@{}\", tokenizer = \"@{}\" }}\n{TINY}setting = \"{setting}\"\nseq_len = 192\npeak_lr = 3e-3\nglobal_batch = 8\nepochs = 3\nheldout_fraction = 0.15\n",
            f.trajectories, f.tokenizer
        )
    };
    let strong = run_config(&mut l, f.dir.path(), "strong", &stage("strong", "strong")).unwrap();
    assert_eq!(metric(&strong, 0, "trajectories.used"), 24.0);
    let before = metric(&strong, 0, "heldout_loss.before");
    let after = metric(&strong, 0, "heldout_loss.after");
    assert!(after < before - 0.5, "held-out loss {before} -> {after}");
    let weak = run_config(&mut l, f.dir.path(), "weak", &stage("weak", "weak")).unwrap();
    assert_eq!(metric(&weak, 0, "trajectories.used"), 48.0);
}

fn expect_err(l: &mut Ledger, dir: &Path, name: &str, body: &str, needle: &str) {
    let e = match run_config(l, dir, name, body) {
        Ok(_) => panic!("the run should fail"),
        Err(e) => e,
    };
    let msg = format!("{e:#}");
    assert!(msg.contains(needle), "expected {needle:?} in: {msg}");
}

#[test]
fn bad_inputs_fail_before_training() {
    let (f, mut l) = fixture();
    let d = f.dir.path().to_path_buf();
    // A checkpoint with other shapes (hidden 32) as `init` of a hidden-64 model.
    let small = midtrain_stage(&f, "small", "")
        .replace("hidden_size = 64", "hidden_size = 32")
        .replace("peak_lr", "stop_after_steps = 1\npeak_lr");
    let r = run_config(&mut l, &d, "small", &small).unwrap();
    let init = output(&r, 0, "model");
    expect_err(
        &mut l,
        &d,
        "shape",
        &midtrain_stage(&f, "shape", &format!(", init = \"@{init}\"")),
        "has shape",
    );
    // A corrupt safetensors file.
    let bad = add(
        &mut l,
        &d,
        "bad.safetensors",
        b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all",
    );
    expect_err(
        &mut l,
        &d,
        "corrupt",
        &midtrain_stage(&f, "corrupt", &format!(", init = \"@{bad}\"")),
        "not a valid safetensors file",
    );
    // An empty shard.
    let mut empty = b"DVTOKS01".to_vec();
    for v in [SEQ as u32, 400, 0, 0] {
        empty.extend_from_slice(&v.to_le_bytes());
    }
    empty.extend_from_slice(&0u64.to_le_bytes());
    let empty = add(&mut l, &d, "empty.bin", &empty);
    let body = midtrain_stage(&f, "empty", "").replace(&f.tokens, &empty);
    expect_err(&mut l, &d, "empty", &body, "empty token shard");
    // A tokenizer bigger than the model's vocabulary.
    let body = midtrain_stage(&f, "vocab", "").replace("vocab_size = 512", "vocab_size = 256");
    expect_err(&mut l, &d, "vocab", &body, "does not fit the model");
    // None of these produced a checkpoint.
    assert!(l.resolve("shape.model").is_err());
}
