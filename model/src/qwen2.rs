//! The Qwen2 decoder (RMSNorm, RoPE, grouped-query attention with q/k/v biases, SwiGLU MLP,
//! optionally tied embeddings), parameters held as candle `Var`s under their Hugging Face
//! names. Every op is differentiable (the fused CPU kernels of [`crate::ops`] carry their own
//! backward passes), so the same forward serves training, evaluation and generation.
//! Activations are `[tokens, features]` matrices (heads side by side in the features), so
//! nothing is transposed or copied between the projections and attention. Computation is f32.

use crate::config::Qwen2Config;
use crate::ops::{self, Attention, GateUp, Linear, RmsNorm, RopeTable, Third};
use crate::rng::Rng;
use anyhow::{bail, Context, Result};
use candle_core::{CustomOp2, CustomOp3, DType, Device, Tensor, Var};
use std::collections::{BTreeMap, HashMap};

pub struct Qwen2 {
    pub config: Qwen2Config,
    device: Device,
    params: BTreeMap<String, Var>,
}

/// Per-layer key/value cache for incremental decoding (`[batch, tokens, kv_heads · head_dim]`).
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
            Some(Some((k, _))) => k.dim(1).unwrap_or(0),
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

    /// Logits `[batch, len, vocab]` for token ids `[batch, len]` (u32). With a cache, the ids
    /// continue the cached sequence and the cache is extended.
    pub fn forward(&self, ids: &Tensor, cache: Option<&mut KvCache>) -> Result<Tensor> {
        let (b, t) = ids.dims2()?;
        Ok(self
            .logits(ids, cache)?
            .reshape((b, t, self.config.vocab_size))?)
    }

    /// Logits `[batch · len, vocab]`.
    fn logits(&self, ids: &Tensor, cache: Option<&mut KvCache>) -> Result<Tensor> {
        let x = self.hidden(ids, cache)?;
        let head = if self.config.tie_word_embeddings {
            self.p("model.embed_tokens.weight")?
        } else {
            self.p("lm_head.weight")?
        };
        Ok(ops::linear(&x, head, None)?)
    }

    /// The final normed hidden states, `[batch · len, hidden]`: activations stay
    /// `[tokens, features]` matrices throughout, heads side by side in the features.
    fn hidden(&self, ids: &Tensor, mut cache: Option<&mut KvCache>) -> Result<Tensor> {
        let (b, t) = ids.dims2()?;
        let c = &self.config;
        let (nh, nkv, hd) = (c.num_attention_heads, c.kv_heads(), c.head_dim());
        let offset = cache.as_ref().map(|c| c.len()).unwrap_or(0);
        if let Some(cache) = cache.as_mut() {
            cache.layers.resize(c.num_hidden_layers, None);
        }
        let vocab = c.vocab_size as u32;
        let flat = ids.flatten_all()?;
        if let Some(bad) = flat.to_vec1::<u32>()?.into_iter().find(|&i| i >= vocab) {
            bail!("token id {bad} is outside the model's vocabulary ({vocab})");
        }
        let mut x = self
            .p("model.embed_tokens.weight")?
            .index_select(&flat, 0)?;
        let table = RopeTable::new(hd, c.rope_theta as f32, offset, t);
        let scale = 1.0 / (hd as f64).sqrt();
        for l in 0..c.num_hidden_layers {
            let pre = format!("model.layers.{l}");
            let w = |n: &str| self.p(&format!("{pre}.{n}"));
            let hs = ops::rms_norm(&x, w("input_layernorm.weight")?, c.rms_norm_eps)?;
            let q = ops::linear_rope(
                &hs,
                w("self_attn.q_proj.weight")?,
                w("self_attn.q_proj.bias")?,
                &table,
            )?;
            let mut k = ops::linear_rope(
                &hs,
                w("self_attn.k_proj.weight")?,
                w("self_attn.k_proj.bias")?,
                &table,
            )?;
            let mut v = ops::linear(
                &hs,
                w("self_attn.v_proj.weight")?,
                Some(w("self_attn.v_proj.bias")?),
            )?;
            if let Some(cache) = cache.as_mut() {
                let kv = nkv * hd;
                if let Some((pk, pv)) = &cache.layers[l] {
                    k = Tensor::cat(&[pk, &k.reshape((b, t, kv))?], 1)?;
                    v = Tensor::cat(&[pv, &v.reshape((b, t, kv))?], 1)?;
                } else {
                    k = k.reshape((b, t, kv))?;
                    v = v.reshape((b, t, kv))?;
                }
                cache.layers[l] = Some((k.clone(), v.clone()));
                let keys = k.dim(1)?;
                k = k.reshape((b * keys, kv))?;
                v = v.reshape((b * keys, kv))?;
            }
            let y = ops::causal_attention(&q, &k, &v, (b, nh, nkv), scale)?;
            x = ops::linear_residual(&y, w("self_attn.o_proj.weight")?, &x)?;
            let hs = ops::rms_norm(&x, w("post_attention_layernorm.weight")?, c.rms_norm_eps)?;
            let act =
                ops::swiglu_gate_up(&hs, w("mlp.gate_proj.weight")?, w("mlp.up_proj.weight")?)?;
            x = ops::linear_residual(&act, w("mlp.down_proj.weight")?, &x)?;
        }
        Ok(ops::rms_norm(
            &x,
            self.p("model.norm.weight")?,
            c.rms_norm_eps,
        )?)
    }

    /// Summed token loss and the number of counted tokens for a batch of equal-length
    /// sequences: position `i` predicts `tokens[i]` from `tokens[..i]`, weighted by `mask[i]`.
    /// The loss is differentiable (candle autograd); training uses [`Qwen2::loss_and_grads`].
    pub fn loss_sum(&self, tokens: &Tensor, mask: &Tensor) -> Result<(Tensor, f64)> {
        let (inputs, targets, weights) = split_batch(tokens, mask)?;
        let count: f64 = weights.iter().map(|&w| f64::from(w)).sum();
        let logits = self.logits(&inputs, None)?;
        let loss = ops::token_loss(&logits, targets, weights)?;
        Ok((loss, count))
    }

    /// The summed token loss and counted tokens of [`Qwen2::loss_sum`], and with
    /// `Some(scale)` the gradient of `scale · loss` for every parameter, by name.
    ///
    /// The forward pass runs the same fused kernels; the backward pass then calls their
    /// backward kernels in reverse order, explicitly: no autograd graph, so each gradient is
    /// written once, with no zero-filled accumulators and no elementwise adds on candle's
    /// separate thread pool. The LM head and the loss run together a block of rows at a time
    /// ([`ops::head_loss`]), so the logits never exist whole.
    pub fn loss_and_grads(
        &self,
        tokens: &Tensor,
        mask: &Tensor,
        scale: Option<f64>,
    ) -> Result<(f64, f64, BTreeMap<String, Tensor>)> {
        let c = &self.config;
        let keep = scale.is_some();
        let (b, _) = tokens.dims2()?;
        let (inputs, targets, weights) = split_batch(tokens, mask)?;
        let count: f64 = weights.iter().map(|&w| f64::from(w)).sum();
        let t = inputs.dim(1)?;
        let ids = inputs.flatten_all()?.to_vec1::<u32>()?;
        let vocab = c.vocab_size;
        if let Some(bad) = ids.iter().find(|&&i| i as usize >= vocab) {
            bail!("token id {bad} is outside the model's vocabulary ({vocab})");
        }
        // Detached parameters: the kernels below build no graph.
        let p = |n: &str| -> Result<Tensor> { Ok(self.p(n)?.detach()) };
        let (nh, nkv, hd) = (c.num_attention_heads, c.kv_heads(), c.head_dim());
        let table = RopeTable::new(hd, c.rope_theta as f32, 0, t);
        let att_scale = 1.0 / (hd as f64).sqrt();
        let embed = p("model.embed_tokens.weight")?;
        let mut x = embed.index_select(&Tensor::from_slice(&ids, ids.len(), &self.device)?, 0)?;
        let mut tapes = Vec::new();
        for l in 0..c.num_hidden_layers {
            let w = |n: &str| p(&format!("model.layers.{l}.{n}"));
            let ln1 = (RmsNorm::new(c.rms_norm_eps), w("input_layernorm.weight")?);
            let hs = x.apply_op2_no_bwd(&ln1.1, &ln1.0)?;
            let proj = |n: &str, rope: bool| -> Result<(Linear, Tensor, Tensor, Tensor)> {
                let op = Linear::new(Some(Third::Bias), rope.then(|| table.clone()));
                let (wt, bs) = (
                    w(&format!("self_attn.{n}_proj.weight"))?,
                    w(&format!("self_attn.{n}_proj.bias"))?,
                );
                let y = hs.apply_op3_no_bwd(&wt, &bs, &op)?;
                Ok((op, wt, bs, y))
            };
            let (q, k, v) = (proj("q", true)?, proj("k", true)?, proj("v", false)?);
            let att = Attention::new((b, nh, nkv), att_scale, keep);
            let y = q.3.apply_op3_no_bwd(&k.3, &v.3, &att)?;
            let o = (
                Linear::new(Some(Third::Residual), None),
                w("self_attn.o_proj.weight")?,
            );
            let xm = y.apply_op3_no_bwd(&o.1, &x, &o.0)?;
            let ln2 = (
                RmsNorm::new(c.rms_norm_eps),
                w("post_attention_layernorm.weight")?,
            );
            let hs2 = xm.apply_op2_no_bwd(&ln2.1, &ln2.0)?;
            let gu = (
                GateUp::new(keep),
                w("mlp.gate_proj.weight")?,
                w("mlp.up_proj.weight")?,
            );
            let act = hs2.apply_op3_no_bwd(&gu.1, &gu.2, &gu.0)?;
            let down = (
                Linear::new(Some(Third::Residual), None),
                w("mlp.down_proj.weight")?,
            );
            let next = act.apply_op3_no_bwd(&down.1, &xm, &down.0)?;
            if keep {
                tapes.push(LayerTape {
                    x,
                    ln1,
                    hs,
                    q,
                    k,
                    v,
                    att,
                    y,
                    o,
                    xm,
                    ln2,
                    hs2,
                    gu,
                    act,
                    down,
                });
            }
            x = next;
        }
        let lnf = (RmsNorm::new(c.rms_norm_eps), p("model.norm.weight")?);
        let xf = x.apply_op2_no_bwd(&lnf.1, &lnf.0)?;
        let head = if c.tie_word_embeddings {
            embed.clone()
        } else {
            p("lm_head.weight")?
        };
        // The head and the loss together, a block of rows at a time (no whole logits).
        let (loss, head_grads) =
            ops::head_loss(&xf, &head, &targets, &weights, scale.map(|s| s as f32))?;
        let Some((d_xf, d_head)) = head_grads else {
            return Ok((loss, count, BTreeMap::new()));
        };

        let mut grads = BTreeMap::new();
        let mut put = |name: String, g: Option<Tensor>| -> Result<()> {
            let g = g.with_context(|| format!("no gradient for `{name}`"))?;
            grads.insert(name, g);
            Ok(())
        };
        let (d_x, d_norm) = lnf.0.bwd(&x, &lnf.1, &xf, &d_xf)?;
        put("model.norm.weight".into(), d_norm)?;
        let mut d_x = d_x.context("no gradient for the final hidden states")?;
        while let Some(tp) = tapes.pop() {
            let l = tapes.len();
            let name = |n: &str| format!("model.layers.{l}.{n}");
            // x' = xm + act · Wdᵀ
            let (d_act, d_wd, _) = tp.down.0.grads(&tp.act, &tp.down.1, &d_x)?;
            put(name("mlp.down_proj.weight"), Some(d_wd))?;
            let (d_hs2, d_wg, d_wu) = tp.gu.0.bwd(&tp.hs2, &tp.gu.1, &tp.gu.2, &tp.act, &d_act)?;
            put(name("mlp.gate_proj.weight"), d_wg)?;
            put(name("mlp.up_proj.weight"), d_wu)?;
            let d_hs2 = d_hs2.context("no gradient for the MLP input")?;
            let (d_xm, d_ln2) = tp.ln2.0.bwd(&tp.xm, &tp.ln2.1, &tp.hs2, &d_hs2)?;
            put(name("post_attention_layernorm.weight"), d_ln2)?;
            let d_xm = ops::add(&d_x, &d_xm.context("no gradient for the residual")?)?;
            // xm = x + y · Woᵀ
            let (d_y, d_wo, _) = tp.o.0.grads(&tp.y, &tp.o.1, &d_xm)?;
            put(name("self_attn.o_proj.weight"), Some(d_wo))?;
            let (d_q, d_k, d_v) = tp.att.bwd(&tp.q.3, &tp.k.3, &tp.v.3, &tp.y, &d_y)?;
            let mut d_hs: Option<Tensor> = None;
            for ((op, wt, _, _), d, n) in [(&tp.q, d_q, "q"), (&tp.k, d_k, "k"), (&tp.v, d_v, "v")]
            {
                let d = d.with_context(|| format!("no gradient for {n}"))?;
                let (dh, dw, db) = op.grads(&tp.hs, wt, &d)?;
                put(name(&format!("self_attn.{n}_proj.weight")), Some(dw))?;
                put(name(&format!("self_attn.{n}_proj.bias")), db)?;
                d_hs = Some(match d_hs {
                    Some(acc) => ops::add(&acc, &dh)?,
                    None => dh,
                });
            }
            let d_hs = d_hs.context("no gradient for the attention input")?;
            let (d_xn, d_ln1) = tp.ln1.0.bwd(&tp.x, &tp.ln1.1, &tp.hs, &d_hs)?;
            put(name("input_layernorm.weight"), d_ln1)?;
            d_x = ops::add(&d_xm, &d_xn.context("no gradient for the layer input")?)?;
        }
        let h = c.hidden_size;
        if c.tie_word_embeddings {
            let d = ops::embedding_grad(&ids, &d_x, (vocab, h), Some(&d_head))?;
            put("model.embed_tokens.weight".into(), Some(d))?;
        } else {
            let d = ops::embedding_grad(&ids, &d_x, (vocab, h), None)?;
            put("model.embed_tokens.weight".into(), Some(d))?;
            put("lm_head.weight".into(), Some(d_head))?;
        }
        Ok((loss, count, grads))
    }
}

/// What the backward pass of [`Qwen2::loss_and_grads`] needs of one decoder layer: each
/// kernel's inputs, its op (some keep activations) and its weights.
struct LayerTape {
    x: Tensor,
    ln1: (RmsNorm, Tensor),
    hs: Tensor,
    q: (Linear, Tensor, Tensor, Tensor),
    k: (Linear, Tensor, Tensor, Tensor),
    v: (Linear, Tensor, Tensor, Tensor),
    att: Attention,
    y: Tensor,
    o: (Linear, Tensor),
    xm: Tensor,
    ln2: (RmsNorm, Tensor),
    hs2: Tensor,
    gu: (GateUp, Tensor, Tensor),
    act: Tensor,
    down: (Linear, Tensor),
}

/// Inputs `tokens[.., ..len - 1]` (contiguous), targets `tokens[.., 1..]` and their weights
/// `mask[.., 1..]`.
fn split_batch(tokens: &Tensor, mask: &Tensor) -> Result<(Tensor, Vec<u32>, Vec<f32>)> {
    let (b, len) = tokens.dims2()?;
    if len < 2 || mask.dims() != [b, len] {
        bail!(
            "a batch needs sequences of at least 2 tokens and a mask of the same shape (tokens {:?}, mask {:?})",
            tokens.dims(),
            mask.dims()
        );
    }
    let inputs = tokens.narrow(1, 0, len - 1)?.contiguous()?;
    let targets = tokens
        .narrow(1, 1, len - 1)?
        .flatten_all()?
        .to_vec1::<u32>()?;
    let weights = mask
        .narrow(1, 1, len - 1)?
        .flatten_all()?
        .to_vec1::<f32>()?;
    Ok((inputs, targets, weights))
}
