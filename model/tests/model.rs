//! Model-crate tests on a tiny Qwen2 (vocab 512, hidden 64, 2 layers, sequences of 64).

use model::checkpoint::Cursor;
use model::generate::{generate, Sampling};
use model::rng::Rng;
use model::train::{evaluate, train, AdamW, Example, OptimConfig, Plan};
use model::{Device, Qwen2, Qwen2Config};

const SEQ: usize = 64;

fn cfg() -> Qwen2Config {
    Qwen2Config::tiny(512)
}

fn optim() -> OptimConfig {
    OptimConfig {
        peak_lr: 3e-3,
        min_lr_ratio: 0.1,
        warmup_ratio: 0.1,
        weight_decay: 0.01,
        beta1: 0.9,
        beta2: 0.95,
        eps: 1e-8,
        grad_clip: 1.0,
    }
}

/// Learnable synthetic sequences: an affine recurrence mod 256 from a random start.
fn data(n: usize, seed: u64) -> Vec<Example> {
    let mut rng = Rng::new(seed);
    (0..n)
        .map(|_| {
            let mut t = rng.below(256) as u32;
            let step = 1 + rng.below(3) as u32;
            let tokens: Vec<u32> = (0..SEQ)
                .map(|_| {
                    t = (t * 5 + step) % 256;
                    t
                })
                .collect();
            Example {
                mask: vec![1.0; SEQ],
                tokens,
            }
        })
        .collect()
}

fn plan(n: usize) -> Plan {
    Plan {
        phases: vec![("all".into(), (0..n).collect())],
        global_batch: 8,
        micro_batch: 4,
        rewarm: false,
    }
}

fn run(steps: usize) -> (Vec<u8>, Vec<u8>, Vec<f64>) {
    let dev = Device::Cpu;
    let m = Qwen2::init(&cfg(), 7, &dev).unwrap();
    let mut opt = AdamW::new(optim(), &m).unwrap();
    let ex = data(64, 1);
    let mut losses = Vec::new();
    train(&m, &mut opt, &ex, &plan(ex.len()), 0, steps, |r| {
        losses.push(r.loss);
        Ok(())
    })
    .unwrap();
    (
        m.to_safetensors().unwrap(),
        opt.to_safetensors().unwrap(),
        losses,
    )
}

#[test]
fn init_is_seeded_and_matches_config() {
    let dev = Device::Cpu;
    let a = Qwen2::init(&cfg(), 1, &dev)
        .unwrap()
        .to_safetensors()
        .unwrap();
    let b = Qwen2::init(&cfg(), 1, &dev)
        .unwrap()
        .to_safetensors()
        .unwrap();
    let c = Qwen2::init(&cfg(), 2, &dev)
        .unwrap()
        .to_safetensors()
        .unwrap();
    assert!(a == b);
    assert_ne!(a, c);
    let m = Qwen2::init(&cfg(), 1, &dev).unwrap();
    assert_eq!(m.num_parameters(), cfg().num_parameters());
}

#[test]
fn same_seed_same_checkpoint_bytes() {
    let (m1, o1, l1) = run(6);
    let (m2, o2, l2) = run(6);
    assert_eq!(l1, l2);
    assert!(m1 == m2, "model bytes differ between identical runs");
    assert!(o1 == o2, "optimizer bytes differ between identical runs");
}

/// The same bytes for any number of threads. Each count runs in a child process (this test
/// binary again, `RAYON_NUM_THREADS` set): the thread pools are sized once per process.
#[test]
fn same_bytes_for_any_thread_count() {
    if let Ok(path) = std::env::var("MODEL_TEST_THREADS_OUT") {
        let (mut bytes, opt, losses) = run(4);
        bytes.extend(opt);
        bytes.extend(format!("{losses:?}").into_bytes());
        std::fs::write(path, bytes).unwrap();
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    let runs: Vec<(usize, Vec<u8>)> = [1usize, 2, 3]
        .into_iter()
        .map(|n| {
            let path = dir.path().join(n.to_string());
            let out = std::process::Command::new(&exe)
                .args([
                    "same_bytes_for_any_thread_count",
                    "--exact",
                    "--test-threads=1",
                ])
                .env("MODEL_TEST_THREADS_OUT", &path)
                .env("RAYON_NUM_THREADS", n.to_string())
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "child with {n} threads failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            (n, std::fs::read(&path).unwrap())
        })
        .collect();
    for (n, bytes) in &runs[1..] {
        assert!(
            *bytes == runs[0].1,
            "{n} threads give different bytes than 1 thread"
        );
    }
}

#[test]
fn resume_gives_identical_weights() {
    let dev = Device::Cpu;
    let ex = data(64, 1);
    let p = plan(ex.len());
    let total = p.total_steps();
    let (full, full_opt, _) = run(total);

    // First half, then checkpoint to bytes.
    let m = Qwen2::init(&cfg(), 7, &dev).unwrap();
    let mut opt = AdamW::new(optim(), &m).unwrap();
    train(&m, &mut opt, &ex, &p, 0, 3, |_| Ok(())).unwrap();
    let (wbytes, obytes) = (m.to_safetensors().unwrap(), opt.to_safetensors().unwrap());
    drop((m, opt));

    // Resume from the bytes in a fresh model.
    let m = Qwen2::from_safetensors(&cfg(), &wbytes, &dev).unwrap();
    let mut opt = AdamW::from_safetensors(optim(), &m, &obytes).unwrap();
    assert_eq!(opt.step, 3);
    train(&m, &mut opt, &ex, &p, 3, total, |_| Ok(())).unwrap();
    assert!(m.to_safetensors().unwrap() == full);
    assert!(opt.to_safetensors().unwrap() == full_opt);
}

#[test]
fn heldout_loss_decreases() {
    let dev = Device::Cpu;
    let m = Qwen2::init(&cfg(), 3, &dev).unwrap();
    let mut opt = AdamW::new(optim(), &m).unwrap();
    let ex = data(128, 1);
    let held = data(16, 99);
    let before = evaluate(&m, &held, 8).unwrap();
    let p = Plan {
        phases: vec![("all".into(), (0..ex.len()).chain(0..ex.len()).collect())],
        ..plan(0)
    };
    train(&m, &mut opt, &ex, &p, 0, usize::MAX, |_| Ok(())).unwrap();
    let after = evaluate(&m, &held, 8).unwrap();
    assert!(
        before > 6.0,
        "random init should be near ln(512) = 6.24, got {before}"
    );
    assert!(after < before - 1.0, "held-out loss {before} -> {after}");
}

#[test]
fn shape_mismatch_and_corrupt_checkpoints_are_errors() {
    let dev = Device::Cpu;
    let bytes = Qwen2::init(&cfg(), 1, &dev)
        .unwrap()
        .to_safetensors()
        .unwrap();
    let mut bigger = cfg();
    bigger.hidden_size = 128;
    let e = Qwen2::from_safetensors(&bigger, &bytes, &dev)
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("has shape") && e.contains("model.embed_tokens.weight"),
        "{e}"
    );
    let mut untied = cfg();
    untied.tie_word_embeddings = false;
    let e = Qwen2::from_safetensors(&untied, &bytes, &dev)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("missing tensor `lm_head.weight`"), "{e}");

    let e = Qwen2::from_safetensors(&cfg(), &bytes[..bytes.len() / 2], &dev)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("not a valid safetensors file"), "{e}");
    let e = Qwen2::from_safetensors(&cfg(), b"garbage!garbage!", &dev)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("not a valid safetensors file"), "{e}");
}

#[test]
fn kv_cache_generation_equals_full_recompute() {
    let dev = Device::Cpu;
    let m = Qwen2::init(&cfg(), 5, &dev).unwrap();
    let prompt = [3u32, 17, 99, 250, 4];
    let a = generate(&m, &prompt, 24, &Sampling::Greedy, &[], true).unwrap();
    let b = generate(&m, &prompt, 24, &Sampling::Greedy, &[], false).unwrap();
    assert_eq!(a.len(), 24);
    assert!(a == b);
    let s = Sampling::Sample {
        temperature: 1.0,
        top_p: 0.9,
        seed: 11,
    };
    let c = generate(&m, &prompt, 24, &s, &[], true).unwrap();
    let d = generate(&m, &prompt, 24, &s, &[], true).unwrap();
    assert_eq!(c, d, "seeded sampling is reproducible");
}

#[test]
fn save_dir_round_trips() {
    let dev = Device::Cpu;
    let dir = tempfile::tempdir().unwrap();
    let m = Qwen2::init(&cfg(), 5, &dev).unwrap();
    m.save_dir(dir.path()).unwrap();
    let back = Qwen2::load_dir(dir.path(), &dev).unwrap();
    assert_eq!(back.config, m.config);
    assert!(back.to_safetensors().unwrap() == m.to_safetensors().unwrap());
    let cursor = Cursor {
        step: 1,
        total_steps: 2,
        position: 8,
        epoch: 0,
        phase: "all".into(),
        model: None,
        optimizer: None,
        curve: None,
        fingerprint: "x".into(),
    };
    let json = serde_json::to_string(&cursor).unwrap();
    assert_eq!(serde_json::from_str::<Cursor>(&json).unwrap(), cursor);
}
