//! Candle side of `bench/train_vs_torch.sh`: trains a Qwen2 config for some steps on random
//! tokens (one untimed warm-up step first), then generates greedily with the KV cache (after an
//! untimed 8-token warm-up); prints one JSON line with tokens/s and peak RSS. With
//! `--save DIR`, also writes the checkpoint directory and the logits of a fixed input
//! (`DIR/logits.json`) for `bench/check_transformers_logits.py`.
//!
//! cargo run --release -p davinci-model --example bench -- \
//!   --vocab 4096 --hidden 256 --layers 4 --heads 8 --kv-heads 2 --inter 704 \
//!   --seq 256 --batch 8 --steps 10 --gen 128 [--save DIR]

use candle_core::Tensor;
use model::generate::{generate, Sampling};
use model::rng::Rng;
use model::train::{train, AdamW, Example, OptimConfig, Plan};
use model::{Device, Qwen2, Qwen2Config};
use std::time::Instant;

fn arg(args: &[String], name: &str, default: usize) -> usize {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map(|v| v.parse().expect("a number"))
        .unwrap_or(default)
}

/// A `/proc/self/status` field in KiB (`VmHWM`: peak RSS, `VmRSS`: current).
fn status_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let mut c = Qwen2Config::tiny(arg(&args, "--vocab", 4096));
    c.hidden_size = arg(&args, "--hidden", 256);
    c.num_hidden_layers = arg(&args, "--layers", 4);
    c.num_attention_heads = arg(&args, "--heads", 8);
    c.num_key_value_heads = Some(arg(&args, "--kv-heads", 2));
    c.intermediate_size = arg(&args, "--inter", 704);
    let (seq, batch, steps, gen) = (
        arg(&args, "--seq", 256),
        arg(&args, "--batch", 8),
        arg(&args, "--steps", 10),
        arg(&args, "--gen", 128),
    );
    let dev = Device::Cpu;
    let start_rss = status_kib("VmRSS:");
    let model = Qwen2::init(&c, 1, &dev)?;
    let mut rng = Rng::new(2);
    let examples: Vec<Example> = (0..batch * (steps + 1))
        .map(|_| Example {
            tokens: (0..seq)
                .map(|_| rng.below(c.vocab_size as u64) as u32)
                .collect(),
            mask: vec![1.0; seq],
        })
        .collect();
    let plan = Plan {
        phases: vec![("bench".into(), (0..examples.len()).collect())],
        global_batch: batch,
        micro_batch: batch,
        rewarm: false,
    };
    let cfg = OptimConfig {
        peak_lr: 1e-4,
        min_lr_ratio: 0.1,
        warmup_ratio: 0.0,
        weight_decay: 0.1,
        beta1: 0.9,
        beta2: 0.95,
        eps: 1e-8,
        grad_clip: 1.0,
    };
    let mut opt = AdamW::new(cfg, &model)?;
    // One warm-up step, untimed.
    train(&model, &mut opt, &examples, &plan, 0, 1, |_| Ok(()))?;
    let t0 = Instant::now();
    let mut last = 0.0;
    train(&model, &mut opt, &examples, &plan, 1, steps + 1, |r| {
        last = r.loss;
        Ok(())
    })?;
    let train_s = t0.elapsed().as_secs_f64();
    let train_tps = (steps * batch * (seq - 1)) as f64 / train_s;

    let prompt: Vec<u32> = (0..16)
        .map(|i| (i * 7 + 3) as u32 % c.vocab_size as u32)
        .collect();
    generate(&model, &prompt, 8, &Sampling::Greedy, &[], true)?; // warm-up, untimed
    let t1 = Instant::now();
    let out = generate(&model, &prompt, gen, &Sampling::Greedy, &[], true)?;
    let gen_s = t1.elapsed().as_secs_f64();

    if let Some(i) = args.iter().position(|a| a == "--save") {
        let dir = std::path::PathBuf::from(&args[i + 1]);
        model.save_dir(&dir)?;
        let ids: Vec<u32> = (0..32)
            .map(|i| (i * 31 + 5) as u32 % c.vocab_size as u32)
            .collect();
        let logits = model
            .forward(&Tensor::new(ids.as_slice(), &dev)?.unsqueeze(0)?, None)?
            .squeeze(0)?
            .to_vec2::<f32>()?;
        std::fs::write(
            dir.join("logits.json"),
            serde_json::to_vec(&serde_json::json!({"input_ids": ids, "logits": logits}))?,
        )?;
    }
    println!(
        "{}",
        serde_json::json!({
            "impl": "candle",
            "params": model.num_parameters(),
            "threads": model::num_threads(),
            "train_tokens_per_s": train_tps,
            "final_loss": last,
            "gen_tokens_per_s": out.len() as f64 / gen_s,
            "peak_rss_mib": status_kib("VmHWM:") as f64 / 1024.0,
            "import_rss_mib": start_rss as f64 / 1024.0,
        })
    );
    Ok(())
}
