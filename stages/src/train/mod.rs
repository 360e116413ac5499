//! Training stages over the `model` crate: `midtrain` (packed token shards and rendered
//! trajectories, staged schedule) and `sft` (chat trajectories, loss on assistant tokens).
//!
//! Both share the parameters in [`Params`] (defaults differ per stage and are filled into the
//! canonical config by `check`), the checkpoint outputs and the resume protocol:
//!
//! | output | content |
//! | --- | --- |
//! | `model` | `model.safetensors` (HF tensor names, f32) |
//! | `config` | `config.json` (HF `Qwen2ForCausalLM`) |
//! | `optimizer` | AdamW moments as safetensors (`exp_avg.*`, `exp_avg_sq.*`, step in metadata) |
//! | `state` | cursor JSON: step, total_steps, position, epoch, phase, the hashes of this checkpoint's `model` and `optimizer`, and a fingerprint of config + data |
//! | `curve` | JSONL: one line per step (`step, phase, lr, loss, grad_norm, tokens`) and held-out evaluations (`step, heldout_loss`) |
//! | `plot` | SVG of training loss, held-out loss and LR against step |
//! | `tokenizer` | the tokenizer used (with `<\|im_start\|>`/`<\|im_end\|>` added when missing), when one was given |
//! | `ckpt.stepNNNNNN.{model,optimizer,state,curve}` | intermediate checkpoints every `checkpoint_every` steps |
//!
//! Inputs common to both: `tokenizer` (tokenizer.json), `init` (a `model` artifact to start
//! from; its architecture comes from `init_config` when given, else from the `model` table),
//! `init_config` and `resume` (a `state` artifact: training continues from that checkpoint
//! and ends with the same bytes as an uninterrupted run, curve and plot included; a state
//! written before states named their curve gives a curve of the resumed steps only). Outputs hold no timestamps or
//! throughput; those go to metrics only.

pub mod midtrain;
mod plot;
pub mod sft;

use anyhow::{anyhow, bail, Context, Result};
use ledger::config::ParamError;
use ledger::stage::{InputSpec, StageContext};
use ledger::Hash;
use model::checkpoint::{config_json, Cursor};
use model::rng::Rng;
use model::train::{evaluate, train, AdamW, Example, OptimConfig, Plan};
use model::{Device, Qwen2, Qwen2Config};
use serde::{Deserialize, Serialize};
use std::io::Write;
use tokenizers::{AddedToken, Tokenizer};

pub const CHAT_SPECIALS: [&str; 2] = [model::chat::IM_START, model::chat::IM_END];

/// Architecture overrides with HF `config.json` names; unset fields take the tiny quickstart
/// values (`Qwen2Config::tiny`), `vocab_size` the tokenizer's size rounded up to 64.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelParams {
    pub vocab_size: Option<usize>,
    pub hidden_size: Option<usize>,
    pub intermediate_size: Option<usize>,
    pub num_hidden_layers: Option<usize>,
    pub num_attention_heads: Option<usize>,
    pub num_key_value_heads: Option<usize>,
    pub max_position_embeddings: Option<usize>,
    pub rope_theta: Option<f64>,
    pub rms_norm_eps: Option<f64>,
    pub tie_word_embeddings: Option<bool>,
}

impl ModelParams {
    fn resolve(&self, tokenizer_vocab: Option<usize>) -> Result<Qwen2Config> {
        let vocab = match (self.vocab_size, tokenizer_vocab) {
            (Some(v), _) => v,
            (None, Some(t)) => t.div_ceil(64) * 64,
            (None, None) => bail!("set model.vocab_size or give a `tokenizer` input"),
        };
        let mut c = Qwen2Config::tiny(vocab);
        macro_rules! set {
            ($($f:ident),*) => { $( if let Some(v) = self.$f { c.$f = v; } )* };
        }
        set!(
            hidden_size,
            intermediate_size,
            num_hidden_layers,
            num_attention_heads,
            max_position_embeddings,
            rope_theta,
            rms_norm_eps,
            tie_word_embeddings
        );
        if let Some(v) = self.num_key_value_heads {
            c.num_key_value_heads = Some(v);
        }
        c.validate()?;
        Ok(c)
    }
}

/// Parameters of `midtrain` and `sft`. `None` in the TOML means the stage's default; the
/// canonical config has every value filled in.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Params {
    #[serde(default)]
    pub model: ModelParams,
    /// Where the model trains: `cpu` (default) or `cuda:N` (see [`crate::device`]).
    #[serde(default, skip_serializing_if = "crate::device::is_cpu")]
    pub device: crate::device::Device,
    /// Tokens per training sequence (midtrain: must equal the shards' seq_len when given).
    pub seq_len: Option<usize>,
    pub peak_lr: Option<f64>,
    pub min_lr_ratio: Option<f64>,
    pub warmup_ratio: Option<f64>,
    pub weight_decay: Option<f64>,
    pub beta1: Option<f64>,
    pub beta2: Option<f64>,
    pub adam_eps: Option<f64>,
    pub grad_clip: Option<f64>,
    /// Sequences per optimizer step, and per forward/backward pass.
    pub global_batch: Option<usize>,
    pub micro_batch: Option<usize>,
    pub epochs: Option<usize>,
    /// Fraction of the data held out for evaluation (before upsampling), and its cap.
    pub heldout_fraction: Option<f64>,
    pub max_heldout: Option<usize>,
    /// Write `ckpt.stepNNNNNN.*` every this many steps (0: final checkpoint only).
    pub checkpoint_every: Option<usize>,
    /// Stop after this many steps in total (the checkpoint can be resumed); 0 = run to the end.
    pub stop_after_steps: Option<usize>,
    pub eos_token: Option<String>,
    // midtrain
    /// Data stages in order, each a list of inputs (`ctx_gen`, `ctx_py`, `env`).
    pub stages: Option<Vec<Vec<String>>>,
    pub pass_upsample: Option<usize>,
    pub include_failed: Option<bool>,
    /// Restart warmup + cosine at each data stage (not published; default false).
    pub rewarm: Option<bool>,
    // sft
    /// `strong`: resolved trajectories only (D_pass); `weak`: every trajectory in the input.
    pub setting: Option<String>,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Kind {
    Midtrain,
    Sft,
}

fn bad(key: &str, msg: &str) -> ParamError {
    ParamError::new(key, msg)
}

impl Params {
    /// Fills defaults for `kind` and validates.
    pub fn resolve(mut self, kind: Kind) -> Result<Params, ParamError> {
        let mid = kind == Kind::Midtrain;
        macro_rules! d {
            ($f:ident, $v:expr) => {
                if self.$f.is_none() {
                    self.$f = Some($v);
                }
            };
        }
        d!(peak_lr, if mid { 8e-5 } else { 1e-5 });
        d!(min_lr_ratio, 0.1);
        d!(warmup_ratio, if mid { 0.05 } else { 0.1 });
        d!(weight_decay, 0.1);
        d!(beta1, 0.9);
        d!(beta2, 0.95);
        d!(adam_eps, 1e-8);
        d!(grad_clip, 1.0);
        d!(global_batch, if mid { 1024 } else { 128 });
        d!(micro_batch, 4);
        d!(epochs, if mid { 1 } else { 5 });
        d!(heldout_fraction, 0.05);
        d!(max_heldout, 256);
        d!(checkpoint_every, 0);
        d!(stop_after_steps, 0);
        d!(eos_token, "<|endoftext|>".to_string());
        if mid {
            if self.setting.is_some() {
                return Err(bad("setting", "is an `sft` parameter"));
            }
            d!(
                stages,
                vec![vec!["ctx_gen".into()], vec!["ctx_py".into(), "env".into()]]
            );
            d!(pass_upsample, 3);
            d!(include_failed, true);
            d!(rewarm, false);
            for (i, s) in self.stages.iter().flatten().enumerate() {
                if s.is_empty() {
                    return Err(bad(
                        &format!("stages[{i}]"),
                        "a stage needs at least one input",
                    ));
                }
                for name in s {
                    if !midtrain::DATA_INPUTS.contains(&name.as_str()) {
                        return Err(bad(
                            &format!("stages[{i}]"),
                            &format!("unknown data input `{name}` (ctx_gen, ctx_py, env)"),
                        ));
                    }
                }
            }
        } else {
            for (k, set) in [
                ("stages", self.stages.is_some()),
                ("pass_upsample", self.pass_upsample.is_some()),
                ("include_failed", self.include_failed.is_some()),
                ("rewarm", self.rewarm.is_some()),
            ] {
                if set {
                    return Err(bad(k, "is a `midtrain` parameter"));
                }
            }
            d!(setting, "strong".to_string());
            d!(seq_len, 2048);
            if !matches!(self.setting.as_deref(), Some("strong" | "weak")) {
                return Err(bad("setting", "must be `strong` or `weak`"));
            }
        }
        let pos = |k: &str, v: Option<f64>| match v {
            Some(x) if x > 0.0 && x.is_finite() => Ok(()),
            _ => Err(bad(k, "must be positive")),
        };
        pos("peak_lr", self.peak_lr)?;
        pos("global_batch", self.global_batch.map(|v| v as f64))?;
        pos("micro_batch", self.micro_batch.map(|v| v as f64))?;
        pos("epochs", self.epochs.map(|v| v as f64))?;
        if let Some(s) = self.seq_len {
            if s < 2 {
                return Err(bad("seq_len", "must be at least 2"));
            }
        }
        for (k, v) in [
            ("warmup_ratio", self.warmup_ratio),
            ("min_lr_ratio", self.min_lr_ratio),
            ("heldout_fraction", self.heldout_fraction),
            ("beta1", self.beta1),
            ("beta2", self.beta2),
        ] {
            if !matches!(v, Some(x) if (0.0..1.0).contains(&x) || (k == "min_lr_ratio" && x == 1.0))
            {
                return Err(bad(k, "must be in [0, 1)"));
            }
        }
        if let Err(e) = self.model.resolve(Some(64)) {
            if self.model.vocab_size.is_some() || !e.to_string().contains("vocab") {
                return Err(bad("model", &e.to_string()));
            }
        }
        Ok(self)
    }

    fn optim(&self) -> OptimConfig {
        OptimConfig {
            peak_lr: self.peak_lr.unwrap_or_default(),
            min_lr_ratio: self.min_lr_ratio.unwrap_or_default(),
            warmup_ratio: self.warmup_ratio.unwrap_or_default(),
            weight_decay: self.weight_decay.unwrap_or_default(),
            beta1: self.beta1.unwrap_or_default(),
            beta2: self.beta2.unwrap_or_default(),
            eps: self.adam_eps.unwrap_or_default(),
            grad_clip: self.grad_clip.unwrap_or_default(),
        }
    }
}

pub fn check(params: toml::Table, kind: Kind) -> Result<serde_json::Value, ParamError> {
    let p: Params = ledger::config::parse_params(params)?;
    let p = p.resolve(kind)?;
    Ok(serde_json::to_value(p).expect("params serialize"))
}

pub const COMMON_INPUTS: [InputSpec; 4] = [
    InputSpec {
        name: "tokenizer",
        required: false,
        description: "tokenizer.json (from `tokenize`); needed for trajectories, checked against the model vocab",
    },
    InputSpec {
        name: "init",
        required: false,
        description: "a `model` checkpoint (safetensors) to start from",
    },
    InputSpec {
        name: "init_config",
        required: false,
        description: "the `config` (config.json) of `init`; default: the `model` parameter table",
    },
    InputSpec {
        name: "resume",
        required: false,
        description: "a `state` cursor of an earlier run of this configuration: continue from it",
    },
];

pub fn optional_input(ctx: &StageContext, name: &str) -> Option<Hash> {
    ctx.inputs()
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, h)| *h)
}

/// Loads the `tokenizer` input, adding the ChatML specials when `chat` and missing.
pub fn load_tokenizer(ctx: &StageContext, chat: bool) -> Result<Option<Tokenizer>> {
    let Some(h) = optional_input(ctx, "tokenizer") else {
        return Ok(None);
    };
    let mut tok = Tokenizer::from_bytes(ctx.read_blob(&h)?)
        .map_err(|e| anyhow!("input `tokenizer` is not a valid tokenizer.json: {e}"))?;
    if chat {
        let missing: Vec<AddedToken> = CHAT_SPECIALS
            .iter()
            .filter(|s| tok.token_to_id(s).is_none())
            .map(|s| AddedToken::from(s.to_string(), true))
            .collect();
        if !missing.is_empty() {
            tok.add_special_tokens(missing)
                .map_err(|e| anyhow!("adding chat tokens to the tokenizer: {e}"))?;
        }
    }
    Ok(Some(tok))
}

/// The model config: `init_config` when given, else the `model` table (vocab from the
/// tokenizer when unset). Checks that the tokenizer and the data fit the vocabulary.
pub fn model_config(
    ctx: &StageContext,
    p: &Params,
    tokenizer: Option<&Tokenizer>,
    data_vocab: Option<usize>,
) -> Result<Qwen2Config> {
    let tok_vocab = tokenizer.map(|t| t.get_vocab_size(true));
    let config = match optional_input(ctx, "init_config") {
        Some(h) => {
            let c: Qwen2Config = serde_json::from_slice(&ctx.read_blob(&h)?)
                .context("input `init_config` is not a Qwen2 config.json")?;
            c.validate()?;
            c
        }
        None => p.model.resolve(tok_vocab.or(data_vocab))?,
    };
    if let Some(v) = tok_vocab {
        if v > config.vocab_size {
            bail!(
                "the tokenizer has {v} tokens but the model's vocab_size is {}: the vocabulary does not fit the model",
                config.vocab_size
            );
        }
    }
    if let Some(v) = data_vocab {
        if v > config.vocab_size {
            bail!(
                "the token shards were made with a {v}-token vocabulary but the model's vocab_size is {}",
                config.vocab_size
            );
        }
    }
    Ok(config)
}

/// Token ids of segments with per-token loss weights (1 for trainable segments).
pub fn encode_segments(
    tok: &Tokenizer,
    segments: &[model::chat::Segment],
) -> Result<(Vec<u32>, Vec<f32>)> {
    let mut ids = Vec::new();
    let mut mask = Vec::new();
    for s in segments {
        let enc = tok
            .encode(s.text.as_str(), false)
            .map_err(|e| anyhow!("tokenizing a trajectory: {e}"))?;
        ids.extend_from_slice(enc.get_ids());
        mask.extend(std::iter::repeat_n(
            if s.trainable { 1.0 } else { 0.0 },
            enc.len(),
        ));
    }
    Ok((ids, mask))
}

/// Training data ready for the loop.
pub struct Data {
    pub examples: Vec<Example>,
    pub heldout: Vec<Example>,
    /// Phase name → indices into `examples` for one epoch (upsampling applied).
    pub phases: Vec<(String, Vec<usize>)>,
}

/// Splits `items` into (train, heldout) deterministically.
pub fn split<T>(items: Vec<T>, p: &Params, seed: u64, label: &str) -> (Vec<T>, Vec<T>) {
    let n = items.len();
    let want = ((n as f64) * p.heldout_fraction.unwrap_or_default()).round() as usize;
    let k = if p.heldout_fraction.unwrap_or_default() > 0.0 && n >= 2 {
        want.clamp(1, n - 1)
            .min(p.max_heldout.unwrap_or(usize::MAX).max(1))
    } else {
        0
    };
    let mut order: Vec<usize> = (0..n).collect();
    Rng::for_label(seed, &format!("heldout/{label}")).shuffle(&mut order);
    let held: std::collections::BTreeSet<usize> = order[..k].iter().copied().collect();
    let (mut train, mut heldout) = (Vec::new(), Vec::new());
    for (i, item) in items.into_iter().enumerate() {
        if held.contains(&i) {
            heldout.push(item);
        } else {
            train.push(item);
        }
    }
    (train, heldout)
}

fn fingerprint(ctx: &StageContext, p: &Params) -> Result<String> {
    let mut p = p.clone();
    p.stop_after_steps = None;
    p.checkpoint_every = None;
    let mut inputs: Vec<(String, String)> = ctx
        .inputs()
        .iter()
        .filter(|(n, _)| n != "resume")
        .map(|(n, h)| (n.clone(), h.to_hex()))
        .collect();
    inputs.sort();
    let bytes = serde_json::to_vec(&(serde_json::to_value(&p)?, inputs, ctx.seed()))?;
    Ok(Hash::of(&bytes).to_hex())
}

/// An intermediate checkpoint's bytes, written as outputs after the run.
struct Checkpoint {
    step: usize,
    model: Vec<u8>,
    optimizer: Vec<u8>,
    /// The curve up to this step.
    curve: Vec<u8>,
}

#[derive(Serialize)]
struct EvalLine {
    step: usize,
    heldout_loss: f64,
}

/// Builds or loads the model, trains, evaluates and writes every output.
pub fn run(
    ctx: &mut StageContext,
    p: &Params,
    config: Qwen2Config,
    data: Data,
    tokenizer: Option<&Tokenizer>,
) -> Result<()> {
    let device = Device::Cpu;
    let seed = ctx.seed();
    if data.examples.is_empty() {
        bail!("no training examples");
    }
    let epochs = p.epochs.unwrap_or(1);
    let phases: Vec<(String, Vec<usize>)> = data
        .phases
        .iter()
        .filter(|(_, ex)| !ex.is_empty())
        .map(|(name, ex)| {
            let mut all = Vec::with_capacity(ex.len() * epochs);
            for e in 0..epochs {
                let mut order = ex.clone();
                Rng::for_label(seed, &format!("shuffle/{name}/{e}")).shuffle(&mut order);
                all.extend(order);
            }
            (name.clone(), all)
        })
        .collect();
    let per_epoch: Vec<usize> = data
        .phases
        .iter()
        .map(|(_, e)| e.len())
        .filter(|&n| n > 0)
        .collect();
    let plan = Plan {
        phases,
        global_batch: p.global_batch.unwrap_or(1),
        micro_batch: p.micro_batch.unwrap_or(1),
        rewarm: p.rewarm.unwrap_or(false),
    };
    let total = plan.total_steps();
    let fp = fingerprint(ctx, p)?;

    // Every input is checked before the first step.
    let (model, mut opt, start, prior_curve) = match optional_input(ctx, "resume") {
        Some(h) => {
            let cursor: Cursor = serde_json::from_slice(&ctx.read_blob(&h)?)
                .context("input `resume` is not a training `state`")?;
            if cursor.fingerprint != fp {
                bail!("input `resume` is a checkpoint of a different configuration or data (fingerprint {} ≠ {fp})", cursor.fingerprint);
            }
            let blob = |what: &Option<String>, name: &str| -> Result<Vec<u8>> {
                let hex = what
                    .as_deref()
                    .with_context(|| format!("the resume state names no {name}"))?;
                let h = Hash::from_hex(hex)
                    .with_context(|| format!("bad {name} hash in the resume state"))?;
                Ok(ctx.read_blob(&h)?)
            };
            let model = Qwen2::from_safetensors(&config, &blob(&cursor.model, "model")?, &device)
                .context("input `resume`: the model")?;
            let opt =
                AdamW::from_safetensors(p.optim(), &model, &blob(&cursor.optimizer, "optimizer")?)
                    .context("input `resume`: the optimizer state")?;
            if opt.step != cursor.step {
                bail!(
                    "input `resume`: optimizer step {} ≠ cursor step {}",
                    opt.step,
                    cursor.step
                );
            }
            let curve = cursor
                .curve
                .is_some()
                .then(|| blob(&cursor.curve, "curve"))
                .transpose()?;
            (model, opt, cursor.step, curve)
        }
        None => {
            let model = match optional_input(ctx, "init") {
                Some(h) => Qwen2::from_safetensors(&config, &ctx.read_blob(&h)?, &device)
                    .context("input `init`")?,
                None => Qwen2::init(&config, seed, &device)?,
            };
            let opt = AdamW::new(p.optim(), &model)?;
            (model, opt, 0, None)
        }
    };
    for e in data.examples.iter().chain(&data.heldout) {
        if let Some(bad) = e.tokens.iter().find(|&&t| t as usize >= config.vocab_size) {
            bail!(
                "token id {bad} in the data is outside the model's vocabulary ({})",
                config.vocab_size
            );
        }
    }
    let stop = match p.stop_after_steps.unwrap_or(0) {
        0 => total,
        n => n.min(total),
    };

    ctx.metric("threads", model::num_threads() as f64);
    for (name, on) in model::cpu_features() {
        ctx.metric(&format!("cpu.{name}"), if on { 1.0 } else { 0.0 });
    }
    ctx.metric("params", model.num_parameters() as f64);
    ctx.metric("examples.train", data.examples.len() as f64);
    ctx.metric("examples.heldout", data.heldout.len() as f64);
    ctx.metric("steps.total", total as f64);

    // A resumed run's curve goes on from its checkpoint's. That one ends with the held-out
    // evaluation at the checkpoint when it is a run's final curve; an uninterrupted run has
    // none there, so it is left out (and the evaluation below is not repeated in the curve).
    let mut curve = Vec::<u8>::new();
    if let Some(prior) = &prior_curve {
        for (line, l) in plot::curve_lines(prior).context("input `resume`: the curve")? {
            if l.step > start || (l.heldout_loss.is_some() && l.step == start) {
                continue;
            }
            curve.extend_from_slice(line);
            curve.push(b'\n');
        }
    }
    let eval_batch = p.micro_batch.unwrap_or(4);
    if !data.heldout.is_empty() {
        let before = evaluate(&model, &data.heldout, eval_batch)?;
        ctx.metric("heldout_loss.before", before);
        if prior_curve.is_none() {
            serde_json::to_writer(
                &mut curve,
                &EvalLine {
                    step: start,
                    heldout_loss: before,
                },
            )?;
            curve.push(b'\n');
        }
    }
    ctx.progress().set_length((stop - start.min(stop)) as u64);
    let every = p.checkpoint_every.unwrap_or(0);
    let (mut tokens, mut processed, mut seconds) = (0u64, 0u64, 0f64);
    let (mut first, mut last) = (None, None);
    let mut ckpts: Vec<Checkpoint> = Vec::new();
    for s in start..stop {
        let mut rep = None;
        train(&model, &mut opt, &data.examples, &plan, s, s + 1, |r| {
            rep = Some(r.clone());
            Ok(())
        })?;
        let r = rep.context("the training loop skipped a step")?;
        serde_json::to_writer(&mut curve, &r)?;
        curve.push(b'\n');
        tokens += r.tokens;
        processed += r.processed_tokens;
        seconds += r.seconds;
        first.get_or_insert(r.loss);
        last = Some((r.loss, r.grad_norm));
        if every > 0 && r.step % every == 0 && r.step < stop {
            ckpts.push(Checkpoint {
                step: r.step,
                model: model.to_safetensors()?,
                optimizer: opt.to_safetensors()?,
                curve: curve.clone(),
            });
        }
        ctx.progress().inc(1);
    }
    if !data.heldout.is_empty() {
        let after = evaluate(&model, &data.heldout, eval_batch)?;
        ctx.metric("heldout_loss.after", after);
        serde_json::to_writer(
            &mut curve,
            &EvalLine {
                step: stop,
                heldout_loss: after,
            },
        )?;
        curve.push(b'\n');
    }
    if let Some(f) = first {
        ctx.metric("loss.first", f);
    }
    if let Some((l, g)) = last {
        ctx.metric("loss.last", l);
        ctx.metric("grad_norm.last", g);
    }
    ctx.metric("steps", (stop.saturating_sub(start)) as f64);
    ctx.metric("tokens.trained", tokens as f64);
    if seconds > 0.0 {
        ctx.metric("tokens_per_s", processed as f64 / seconds);
    }
    ctx.metric("lr.peak", p.peak_lr.unwrap_or_default());

    let cursor_for = |step: usize, model_hash: Hash, opt_hash: Hash, curve_hash: Hash| -> Cursor {
        let position = plan.position(step);
        let (phase, epoch) = match plan.step(step.min(total.saturating_sub(1))) {
            Some((ph, _)) => {
                let before: usize = plan.phases[..ph].iter().map(|(_, e)| e.len()).sum();
                let n = per_epoch.get(ph).copied().unwrap_or(1).max(1);
                (
                    plan.phases[ph].0.clone(),
                    (position.saturating_sub(before)) / n,
                )
            }
            None => (String::new(), 0),
        };
        Cursor {
            step,
            total_steps: total,
            position,
            epoch: if step >= total { epochs } else { epoch },
            phase,
            model: Some(model_hash.to_hex()),
            optimizer: Some(opt_hash.to_hex()),
            curve: Some(curve_hash.to_hex()),
            fingerprint: fp.clone(),
        }
    };
    for ckpt in ckpts {
        let name = |what: &str| format!("ckpt.step{:06}.{what}", ckpt.step);
        let mh = ctx.write_output(&name("model"), "application/x-safetensors", &ckpt.model)?;
        let oh = ctx.write_output(
            &name("optimizer"),
            "application/x-safetensors",
            &ckpt.optimizer,
        )?;
        let ch = ctx.write_output(&name("curve"), "application/x-ndjson", &ckpt.curve)?;
        let state = serde_json::to_vec_pretty(&cursor_for(ckpt.step, mh, oh, ch))?;
        ctx.write_output(&name("state"), "application/json", &state)?;
    }
    let mh = ctx.write_output(
        "model",
        "application/x-safetensors",
        &model.to_safetensors()?,
    )?;
    let oh = ctx.write_output(
        "optimizer",
        "application/x-safetensors",
        &opt.to_safetensors()?,
    )?;
    ctx.write_output("config", "application/json", &config_json(&config)?)?;
    let ch = ctx.write_output("curve", "application/x-ndjson", &curve)?;
    let state = serde_json::to_vec_pretty(&cursor_for(stop, mh, oh, ch))?;
    ctx.write_output("state", "application/json", &state)?;
    let svg = plot::svg_of_curve(ctx.node(), &curve)?;
    let mut w = ctx.output_writer()?;
    w.write_all(svg.as_bytes())?;
    ctx.finish_output("plot", "image/svg+xml", w)?;
    if let Some(tok) = tokenizer {
        let json = tok
            .to_string(false)
            .map_err(|e| anyhow!("serializing the tokenizer: {e}"))?;
        ctx.write_output("tokenizer", "application/json", json.as_bytes())?;
    }
    Ok(())
}
