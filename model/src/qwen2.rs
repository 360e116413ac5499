//! The Qwen2 decoder (RMSNorm, RoPE, grouped-query attention with q/k/v biases, SwiGLU MLP,
//! optionally tied embeddings), parameters held as candle `Var`s under their Hugging Face
//! names. Every op is differentiable and composed from candle core ops, so the same forward
//! serves training, evaluation and generation. Computation is f32.

use crate::config::Qwen2Config;
use crate::rng::Rng;
use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor, Var, D};
use std::collections::{BTreeMap, HashMap};

pub struct Qwen2 {
    pub config: Qwen2Config,
    device: Device,
    params: BTreeMap<String, Var>,
}

/// Per-layer key/value cache for incremental decoding.
#[derive(Default)]
pub struct KvCache {
    layers: Vec<Option<(Tensor, Tensor)>>,
}

impl KvCache {
    pub fn new() -> KvCache {
        KvCache::default()
    }

    /// Tokens already in the cache.
    pub fn len(&self) -> usize {
        match self.layers.first() {
            Some(Some((k, _))) => k.dim(2).unwrap_or(0),
            _ => 0,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Qwen2 {
    /// Random initialisation from `seed`, like HF's `_init_weights`: linear and embedding
    /// weights ~ N(0, initializer_range), biases 0, norm weights 1. Parameters are visited in
    /// sorted name order, each drawing from its own stream (`Rng::for_label`).
    pub fn init(config: &Qwen2Config, seed: u64, device: &Device) -> Result<Qwen2> {
        config.validate()?;
        let mut params = BTreeMap::new();
        for (name, shape) in config.parameter_shapes() {
            let n: usize = shape.iter().product();
            let values: Vec<f32> = if name.ends_with("norm.weight") {
                vec![1.0; n]
            } else if name.ends_with(".bias") {
                vec![0.0; n]
            } else {
                let mut rng = Rng::for_label(seed, &name);
                (0..n)
                    .map(|_| (rng.normal() * config.initializer_range) as f32)
                    .collect()
            };
            let t = Tensor::from_vec(values, shape, device)?;
            params.insert(name, Var::from_tensor(&t)?);
        }
        Ok(Qwen2 {
            config: config.clone(),
            device: device.clone(),
            params,
        })
    }

    /// Builds the model from named tensors (any float dtype; converted to f32), checking that
    /// every parameter the config implies is present with its shape. Extra tensors are an
    /// error, except `lm_head.weight` with tied embeddings (some exporters write it).
    pub fn from_tensors(
        config: &Qwen2Config,
        mut tensors: HashMap<String, Tensor>,
        device: &Device,
    ) -> Result<Qwen2> {
        config.validate()?;
        let mut params = BTreeMap::new();
        let mut problems = Vec::new();
        for (name, shape) in config.parameter_shapes() {
            match tensors.remove(&name) {
                None => problems.push(format!(
                    "missing tensor `{name}` (expected shape {shape:?})"
                )),
                Some(t) if t.dims() != shape.as_slice() => problems.push(format!(
                    "tensor `{name}` has shape {:?}, the config implies {shape:?}",
                    t.dims()
                )),
                Some(t) => {
                    let t = t.to_dtype(DType::F32)?.to_device(device)?;
                    params.insert(name, Var::from_tensor(&t)?);
                }
            }
        }
        if config.tie_word_embeddings {
            tensors.remove("lm_head.weight");
        }
        let mut extra: Vec<_> = tensors.keys().cloned().collect();
        extra.sort();
        for name in extra.iter().take(5) {
            problems.push(format!("unexpected tensor `{name}`"));
        }
        if !problems.is_empty() {
            bail!(
                "checkpoint does not match the model config ({} problems): {}",
                problems.len() + extra.len().saturating_sub(5),
                problems.join("; ")
            );
        }
        Ok(Qwen2 {
            config: config.clone(),
            device: device.clone(),
            params,
        })
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Parameters by HF name, sorted.
    pub fn params(&self) -> &BTreeMap<String, Var> {
        &self.params
    }

    pub fn num_parameters(&self) -> usize {
        self.params.values().map(|v| v.elem_count()).sum()
    }

    fn p(&self, name: &str) -> Result<&Tensor> {
        self.params
            .get(name)
            .map(|v| v.as_tensor())
            .with_context(|| format!("no parameter `{name}`"))
    }

    /// `cos`, `sin` for positions `offset..offset + len`, shape `[len, head_dim]` (HF layout:
    /// the half-dim frequencies repeated twice), computed in f32 as transformers does.
    fn rope(&self, offset: usize, len: usize) -> Result<(Tensor, Tensor)> {
        let d = self.config.head_dim();
        let theta = self.config.rope_theta as f32;
        let inv: Vec<f32> = (0..d / 2)
            .map(|j| 1.0f32 / theta.powf((2 * j) as f32 / d as f32))
            .collect();
        let mut cos = Vec::with_capacity(len * d);
        let mut sin = Vec::with_capacity(len * d);
        for pos in offset..offset + len {
            for _ in 0..2 {
                for f in &inv {
                    let a = pos as f32 * f;
                    cos.push(a.cos());
                    sin.push(a.sin());
                }
            }
        }
        Ok((
            Tensor::from_vec(cos, (len, d), &self.device)?,
            Tensor::from_vec(sin, (len, d), &self.device)?,
        ))
    }

    /// Logits `[batch, len, vocab]` for token ids `[batch, len]` (u32). With a cache, the ids
    /// continue the cached sequence and the cache is extended.
    pub fn forward(&self, ids: &Tensor, mut cache: Option<&mut KvCache>) -> Result<Tensor> {
        let (b, t) = ids.dims2()?;
        let c = &self.config;
        let (h, nh, nkv, hd) = (
            c.hidden_size,
            c.num_attention_heads,
            c.kv_heads(),
            c.head_dim(),
        );
        let offset = cache.as_ref().map(|c| c.len()).unwrap_or(0);
        if let Some(cache) = cache.as_mut() {
            cache.layers.resize(c.num_hidden_layers, None);
        }
        let vocab = c.vocab_size as u32;
        if let Some(bad) = ids
            .flatten_all()?
            .to_vec1::<u32>()?
            .into_iter()
            .find(|&i| i >= vocab)
        {
            bail!("token id {bad} is outside the model's vocabulary ({vocab})");
        }
        let embed = self.p("model.embed_tokens.weight")?;
        let mut x = embed
            .index_select(&ids.flatten_all()?, 0)?
            .reshape((b, t, h))?;
        let (cos, sin) = self.rope(offset, t)?;
        let total = offset + t;
        let mask = if t > 1 {
            let m: Vec<f32> = (0..t)
                .flat_map(|i| {
                    (0..total).map(move |j| {
                        if j > offset + i {
                            f32::NEG_INFINITY
                        } else {
                            0.0
                        }
                    })
                })
                .collect();
            Some(Tensor::from_vec(m, (t, total), &self.device)?)
        } else {
            None
        };
        let scale = 1.0 / (hd as f64).sqrt();
        for l in 0..c.num_hidden_layers {
            let pre = format!("model.layers.{l}");
            let w = |n: &str| self.p(&format!("{pre}.{n}"));
            let hs = rms_norm(&x, w("input_layernorm.weight")?, c.rms_norm_eps)?;
            let q = linear(
                &hs,
                w("self_attn.q_proj.weight")?,
                Some(w("self_attn.q_proj.bias")?),
            )?;
            let k = linear(
                &hs,
                w("self_attn.k_proj.weight")?,
                Some(w("self_attn.k_proj.bias")?),
            )?;
            let v = linear(
                &hs,
                w("self_attn.v_proj.weight")?,
                Some(w("self_attn.v_proj.bias")?),
            )?;
            let q = q.reshape((b, t, nh, hd))?.transpose(1, 2)?.contiguous()?;
            let k = k.reshape((b, t, nkv, hd))?.transpose(1, 2)?.contiguous()?;
            let v = v.reshape((b, t, nkv, hd))?.transpose(1, 2)?.contiguous()?;
            let q = apply_rope(&q, &cos, &sin)?;
            let mut k = apply_rope(&k, &cos, &sin)?;
            let mut v = v;
            if let Some(cache) = cache.as_mut() {
                if let Some((pk, pv)) = &cache.layers[l] {
                    k = Tensor::cat(&[pk, &k], 2)?;
                    v = Tensor::cat(&[pv, &v], 2)?;
                }
                cache.layers[l] = Some((k.clone(), v.clone()));
            }
            let k = repeat_kv(&k, nh / nkv)?;
            let v = repeat_kv(&v, nh / nkv)?;
            let mut att = (q.matmul(&k.t()?.contiguous()?)? * scale)?;
            if let Some(m) = &mask {
                att = att.broadcast_add(m)?;
            }
            let att = candle_nn::ops::softmax(&att, D::Minus1)?;
            let y = att.matmul(&v)?.transpose(1, 2)?.reshape((b, t, h))?;
            let y = linear(&y, w("self_attn.o_proj.weight")?, None)?;
            x = (x + y)?;
            let hs = rms_norm(&x, w("post_attention_layernorm.weight")?, c.rms_norm_eps)?;
            let gate = linear(&hs, w("mlp.gate_proj.weight")?, None)?.silu()?;
            let up = linear(&hs, w("mlp.up_proj.weight")?, None)?;
            let y = linear(&(gate * up)?, w("mlp.down_proj.weight")?, None)?;
            x = (x + y)?;
        }
        let x = rms_norm(&x, self.p("model.norm.weight")?, c.rms_norm_eps)?;
        let head = if c.tie_word_embeddings {
            embed
        } else {
            self.p("lm_head.weight")?
        };
        Ok(linear(&x, head, None)?)
    }

    /// Summed token loss and the number of counted tokens for a batch of equal-length
    /// sequences: position `i` predicts `tokens[i]` from `tokens[..i]`, weighted by `mask[i]`.
    pub fn loss_sum(&self, tokens: &Tensor, mask: &Tensor) -> Result<(Tensor, f64)> {
        let (_b, len) = tokens.dims2()?;
        let inputs = tokens.narrow(1, 0, len - 1)?;
        let targets = tokens.narrow(1, 1, len - 1)?.contiguous()?;
        let weights = mask.narrow(1, 1, len - 1)?.contiguous()?;
        let logits = self.forward(&inputs, None)?;
        let logp = candle_nn::ops::log_softmax(&logits, D::Minus1)?;
        let picked = logp.gather(&targets.unsqueeze(2)?, 2)?.squeeze(2)?;
        let loss = (picked * &weights)?.sum_all()?.neg()?;
        let count = f64::from(weights.sum_all()?.to_scalar::<f32>()?);
        Ok((loss, count))
    }
}

fn linear(x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> candle_core::Result<Tensor> {
    let dims = x.dims().to_vec();
    let (rows, inner) = (
        dims[..dims.len() - 1].iter().product::<usize>(),
        dims[dims.len() - 1],
    );
    let out = w.dim(0)?;
    let y = x.reshape((rows, inner))?.matmul(&w.t()?)?;
    let y = match b {
        Some(b) => y.broadcast_add(b)?,
        None => y,
    };
    let mut shape = dims;
    *shape.last_mut().expect("non-empty") = out;
    y.reshape(shape)
}

fn rms_norm(x: &Tensor, w: &Tensor, eps: f64) -> candle_core::Result<Tensor> {
    let var = x.sqr()?.mean_keepdim(D::Minus1)?;
    let inv = (var + eps)?.sqrt()?.recip()?;
    x.broadcast_mul(&inv)?.broadcast_mul(w)
}

fn apply_rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> candle_core::Result<Tensor> {
    let d = x.dim(D::Minus1)?;
    let x1 = x.narrow(D::Minus1, 0, d / 2)?;
    let x2 = x.narrow(D::Minus1, d / 2, d / 2)?;
    let rotated = Tensor::cat(&[&x2.neg()?, &x1], D::Minus1)?;
    x.broadcast_mul(cos)? + rotated.broadcast_mul(sin)?
}

fn repeat_kv(x: &Tensor, n_rep: usize) -> candle_core::Result<Tensor> {
    if n_rep == 1 {
        return Ok(x.clone());
    }
    let (b, nkv, s, d) = x.dims4()?;
    x.unsqueeze(2)?
        .broadcast_as((b, nkv, n_rep, s, d))?
        .reshape((b, nkv * n_rep, s, d))
}
