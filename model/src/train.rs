//! The training loop: AdamW (own implementation, so its state can be checkpointed), linear
//! warmup + cosine decay, gradient accumulation to a global batch, global-norm clipping, and
//! resumable execution over a deterministic plan of examples.
//!
//! Determinism: the plan is a pure function of the data and the seed, every reduction runs in
//! sorted parameter order or over fixed blocks (see [`crate::ops`]), and there is no dropout;
//! the same config, seed and data give the same bytes for any thread count (tested with 1, 2
//! and 3 threads). Gradients come from [`Qwen2::loss_and_grads`], an explicit backward pass.

use crate::checkpoint::{from_safetensors, to_safetensors};
use crate::ops::{sum_sq_f64, AdamStep};
use crate::qwen2::Qwen2;
use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Mutex;

/// One training sequence: `tokens[i]` is predicted from `tokens[..i]` with weight `mask[i]`
/// (`mask[0]` is unused). All examples of a run have the same length.
#[derive(Clone, Debug, PartialEq)]
pub struct Example {
    pub tokens: Vec<u32>,
    pub mask: Vec<f32>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OptimConfig {
    pub peak_lr: f64,
    /// Final LR as a fraction of the peak (cosine floor).
    pub min_lr_ratio: f64,
    /// Warmup steps as a fraction of the schedule's steps.
    pub warmup_ratio: f64,
    /// Decoupled weight decay, applied to matrices only (not norms, biases).
    pub weight_decay: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    /// Global gradient-norm clip (0 disables).
    pub grad_clip: f64,
}

/// A run: phases in order (e.g. mid-training stage 1, stage 2), each an ordered list of
/// example indices (epochs and upsampling already expanded), cut into global batches.
#[derive(Clone, Debug)]
pub struct Plan {
    pub phases: Vec<(String, Vec<usize>)>,
    /// Examples per optimizer step.
    pub global_batch: usize,
    /// Examples per forward/backward (accumulated up to the global batch).
    pub micro_batch: usize,
    /// Restart warmup + cosine at each phase instead of one schedule over the run.
    pub rewarm: bool,
}

impl Plan {
    pub fn phase_steps(&self) -> Vec<usize> {
        self.phases
            .iter()
            .map(|(_, ex)| ex.len().div_ceil(self.global_batch))
            .collect()
    }

    pub fn total_steps(&self) -> usize {
        self.phase_steps().iter().sum()
    }

    /// (phase index, examples of the step) for a global step.
    pub fn step(&self, step: usize) -> Option<(usize, &[usize])> {
        let mut s = step;
        for (p, n) in self.phase_steps().into_iter().enumerate() {
            if s < n {
                let ex = &self.phases[p].1;
                let start = s * self.global_batch;
                let end = (start + self.global_batch).min(ex.len());
                return Some((p, &ex[start..end]));
            }
            s -= n;
        }
        None
    }

    /// Examples consumed before `step`.
    pub fn position(&self, step: usize) -> usize {
        (0..step)
            .filter_map(|s| self.step(s).map(|(_, e)| e.len()))
            .sum()
    }

    /// LR at `step` under `cfg`.
    pub fn lr(&self, cfg: &OptimConfig, step: usize) -> f64 {
        let (local, total) = if self.rewarm {
            let mut s = step;
            let mut found = (step, self.total_steps());
            for n in self.phase_steps() {
                if s < n {
                    found = (s, n);
                    break;
                }
                s -= n;
            }
            found
        } else {
            (step, self.total_steps())
        };
        schedule(cfg, local, total)
    }
}

/// Linear warmup to the peak over `ceil(warmup_ratio * total)` steps, then cosine decay to
/// `min_lr_ratio * peak` at the last step.
pub fn schedule(cfg: &OptimConfig, step: usize, total: usize) -> f64 {
    let warmup = (cfg.warmup_ratio * total as f64).ceil() as usize;
    let min = cfg.peak_lr * cfg.min_lr_ratio;
    if step < warmup {
        return cfg.peak_lr * (step + 1) as f64 / warmup as f64;
    }
    let decay = total.saturating_sub(warmup).saturating_sub(1).max(1);
    let progress = ((step - warmup) as f64 / decay as f64).min(1.0);
    min + (cfg.peak_lr - min) * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos())
}

/// AdamW with decoupled weight decay; state keyed by parameter name. Each step is one fused
/// in-place pass over a parameter, its gradient and its two moment buffers.
pub struct AdamW {
    pub cfg: OptimConfig,
    pub step: usize,
    m: BTreeMap<String, Vec<f32>>,
    v: BTreeMap<String, Vec<f32>>,
    shapes: BTreeMap<String, Vec<usize>>,
}

impl AdamW {
    pub fn new(cfg: OptimConfig, model: &Qwen2) -> Result<AdamW> {
        let (mut m, mut v, mut shapes) = (BTreeMap::new(), BTreeMap::new(), BTreeMap::new());
        for (name, var) in model.params() {
            m.insert(name.clone(), vec![0.0; var.elem_count()]);
            v.insert(name.clone(), vec![0.0; var.elem_count()]);
            shapes.insert(name.clone(), var.dims().to_vec());
        }
        Ok(AdamW {
            cfg,
            step: 0,
            m,
            v,
            shapes,
        })
    }

    /// Applies one update with the given gradients (already clipped).
    pub fn update(
        &mut self,
        model: &Qwen2,
        grads: &BTreeMap<String, Tensor>,
        lr: f64,
    ) -> Result<()> {
        self.update_scaled(model, grads, lr, 1.0)
    }

    /// Applies one update with the gradients multiplied by `grad_scale` (global-norm clipping,
    /// folded into the same pass).
    pub fn update_scaled(
        &mut self,
        model: &Qwen2,
        grads: &BTreeMap<String, Tensor>,
        lr: f64,
        grad_scale: f64,
    ) -> Result<()> {
        self.step += 1;
        let (b1, b2) = (self.cfg.beta1, self.cfg.beta2);
        let bc1 = 1.0 - b1.powi(self.step as i32);
        let bc2 = 1.0 - b2.powi(self.step as i32);
        for (name, var) in model.params() {
            let g = grads
                .get(name)
                .with_context(|| format!("no gradient for `{name}`"))?
                .contiguous()?;
            let m = self.m.get_mut(name).context("optimizer state")?;
            let v = self.v.get_mut(name).context("optimizer state")?;
            let theta = var.as_tensor();
            let decay = if theta.rank() >= 2 && self.cfg.weight_decay > 0.0 {
                1.0 - lr * self.cfg.weight_decay
            } else {
                1.0
            };
            let op = AdamStep {
                m: Mutex::new(m.as_mut_slice()),
                v: Mutex::new(v.as_mut_slice()),
                lr: lr as f32,
                beta1: b1 as f32,
                beta2: b2 as f32,
                bc1: bc1 as f32,
                bc2: bc2 as f32,
                eps: self.cfg.eps as f32,
                decay: decay as f32,
                grad_scale: grad_scale as f32,
            };
            theta
                .inplace_op2(&g, &op)
                .with_context(|| format!("AdamW step for `{name}`"))?;
        }
        Ok(())
    }

    /// Optimizer state as safetensors (`exp_avg.<param>`, `exp_avg_sq.<param>`; metadata
    /// `step`). The hyperparameters come from the run's config, not from this file.
    pub fn to_safetensors(&self) -> Result<Vec<u8>> {
        let mut tensors = Vec::new();
        for (prefix, map) in [("exp_avg", &self.m), ("exp_avg_sq", &self.v)] {
            for (n, values) in map {
                let shape = self.shapes.get(n).context("optimizer state")?;
                let t = Tensor::from_slice(values, shape.as_slice(), &Device::Cpu)?;
                tensors.push((format!("{prefix}.{n}"), t));
            }
        }
        to_safetensors(&tensors, &[("step", self.step.to_string())])
    }

    /// Restores state saved by `to_safetensors` for `model` (names and shapes checked).
    pub fn from_safetensors(cfg: OptimConfig, model: &Qwen2, bytes: &[u8]) -> Result<AdamW> {
        let (mut tensors, meta) = from_safetensors(bytes, "the optimizer state", model.device())?;
        let step: usize = meta
            .get("step")
            .context("optimizer state has no `step`")?
            .parse()
            .context("optimizer state `step` is not a number")?;
        let mut opt = AdamW::new(cfg, model)?;
        opt.step = step;
        for (name, var) in model.params() {
            for (prefix, map) in [("exp_avg", &mut opt.m), ("exp_avg_sq", &mut opt.v)] {
                let key = format!("{prefix}.{name}");
                let t = tensors
                    .remove(&key)
                    .with_context(|| format!("optimizer state has no `{key}`"))?;
                if t.dims() != var.dims() {
                    bail!(
                        "optimizer state `{key}` has shape {:?}, the model has {:?}",
                        t.dims(),
                        var.dims()
                    );
                }
                map.insert(name.clone(), t.flatten_all()?.to_vec1::<f32>()?);
            }
        }
        Ok(opt)
    }
}

/// What happened in one optimizer step.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StepReport {
    pub step: usize,
    pub phase: String,
    pub lr: f64,
    /// Mean token loss over the global batch (before the update).
    pub loss: f64,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
    /// Tokens counted in the loss.
    pub tokens: u64,
    /// Tokens processed (inputs), for throughput.
    #[serde(skip)]
    pub processed_tokens: u64,
    #[serde(skip)]
    pub seconds: f64,
}

fn batch_tensors(examples: &[&Example], device: &Device) -> Result<(Tensor, Tensor)> {
    let len = examples[0].tokens.len();
    let mut toks = Vec::with_capacity(examples.len() * len);
    let mut mask = Vec::with_capacity(examples.len() * len);
    for e in examples {
        if e.tokens.len() != len || e.mask.len() != len {
            bail!("examples in a batch must have the same length");
        }
        toks.extend_from_slice(&e.tokens);
        mask.extend_from_slice(&e.mask);
    }
    Ok((
        Tensor::from_vec(toks, (examples.len(), len), device)?,
        Tensor::from_vec(mask, (examples.len(), len), device)?,
    ))
}

/// Runs steps `start..stop` (`stop` at most the plan's total), calling `report` after each.
pub fn train(
    model: &Qwen2,
    opt: &mut AdamW,
    examples: &[Example],
    plan: &Plan,
    start: usize,
    stop: usize,
    mut report: impl FnMut(&StepReport) -> Result<()>,
) -> Result<()> {
    if plan.global_batch == 0 || plan.micro_batch == 0 {
        bail!("global_batch and micro_batch must be positive");
    }
    let stop = stop.min(plan.total_steps());
    for step in start..stop {
        let t0 = std::time::Instant::now();
        let (phase, batch) = plan.step(step).context("step outside the plan")?;
        let batch: Vec<&Example> = batch.iter().map(|&i| &examples[i]).collect();
        let counted: f64 = batch
            .iter()
            .map(|e| e.mask.iter().skip(1).map(|&m| f64::from(m)).sum::<f64>())
            .sum();
        let denom = counted.max(1.0);
        let mut grads: BTreeMap<String, Tensor> = BTreeMap::new();
        let mut loss_total = 0.0f64;
        let mut processed = 0u64;
        for micro in batch.chunks(plan.micro_batch) {
            let (toks, mask) = batch_tensors(micro, model.device())?;
            processed += (toks.elem_count() - micro.len()) as u64;
            let (loss, _, mut g) = model.loss_and_grads(&toks, &mask, Some(1.0 / denom))?;
            loss_total += loss;
            for (name, var) in model.params() {
                let gi = match g.remove(name) {
                    Some(t) => t,
                    None => var.as_tensor().zeros_like()?,
                };
                let acc = match grads.remove(name) {
                    Some(prev) => crate::ops::add(&prev, &gi)?,
                    None => gi,
                };
                grads.insert(name.clone(), acc);
            }
        }
        // Global norm in sorted-name order, accumulated in f64.
        let mut sq = 0.0f64;
        for g in grads.values() {
            sq += sum_sq_f64(g)?;
        }
        let norm = sq.sqrt();
        let clip = if opt.cfg.grad_clip > 0.0 && norm > opt.cfg.grad_clip {
            opt.cfg.grad_clip / (norm + 1e-6)
        } else {
            1.0
        };
        let lr = plan.lr(&opt.cfg, step);
        opt.update_scaled(model, &grads, lr, clip)?;
        report(&StepReport {
            step: step + 1,
            phase: plan.phases[phase].0.clone(),
            lr,
            loss: loss_total / denom,
            grad_norm: norm,
            tokens: counted as u64,
            processed_tokens: processed,
            seconds: t0.elapsed().as_secs_f64(),
        })?;
    }
    Ok(())
}

/// Mean token loss over `examples` (no update), in batches of `batch`.
pub fn evaluate(model: &Qwen2, examples: &[Example], batch: usize) -> Result<f64> {
    let (mut sum, mut count) = (0.0f64, 0.0f64);
    let refs: Vec<&Example> = examples.iter().collect();
    for chunk in refs.chunks(batch.max(1)) {
        let (toks, mask) = batch_tensors(chunk, model.device())?;
        let (loss, n, _) = model.loss_and_grads(&toks, &mask, None)?;
        sum += loss;
        count += n;
    }
    if count == 0.0 {
        bail!("no counted tokens to evaluate");
    }
    Ok(sum / count)
}
