//! Generation with a KV cache: greedy or seeded sampling (temperature, top-p).

use crate::qwen2::{KvCache, Qwen2};
use crate::rng::Rng;
use anyhow::{bail, Result};
use candle_core::{Tensor, D};

#[derive(Clone, Debug, PartialEq)]
pub enum Sampling {
    Greedy,
    /// Temperature and nucleus sampling from our own seeded RNG.
    Sample {
        temperature: f64,
        top_p: f64,
        seed: u64,
    },
}

/// Generates up to `max_new` tokens after `prompt`, stopping after any token in `stop`.
/// Returns the new tokens only. `use_cache = false` recomputes the whole prefix each step
/// (the reference the cache is tested against).
pub fn generate(
    model: &Qwen2,
    prompt: &[u32],
    max_new: usize,
    sampling: &Sampling,
    stop: &[u32],
    use_cache: bool,
) -> Result<Vec<u32>> {
    if prompt.is_empty() {
        bail!("generation needs a non-empty prompt");
    }
    let mut rng = match sampling {
        Sampling::Sample { seed, .. } => Some(Rng::new(*seed)),
        Sampling::Greedy => None,
    };
    let mut cache = KvCache::new();
    let mut all: Vec<u32> = prompt.to_vec();
    let mut out = Vec::new();
    for i in 0..max_new {
        let logits = if use_cache {
            let feed: &[u32] = if i == 0 {
                prompt
            } else {
                &all[all.len() - 1..]
            };
            let ids = Tensor::new(feed, model.device())?.unsqueeze(0)?;
            model.forward(&ids, Some(&mut cache))?
        } else {
            let ids = Tensor::new(all.as_slice(), model.device())?.unsqueeze(0)?;
            model.forward(&ids, None)?
        };
        let last = logits
            .squeeze(0)?
            .narrow(0, logits.dim(1)? - 1, 1)?
            .squeeze(0)?;
        let next = pick(&last, sampling, rng.as_mut())?;
        all.push(next);
        out.push(next);
        if stop.contains(&next) {
            break;
        }
    }
    Ok(out)
}

fn pick(logits: &Tensor, sampling: &Sampling, rng: Option<&mut Rng>) -> Result<u32> {
    let values = logits.detach().to_vec1::<f32>()?;
    match (sampling, rng) {
        (
            Sampling::Sample {
                temperature, top_p, ..
            },
            Some(rng),
        ) if *temperature > 0.0 => {
            let scaled = (logits.detach() / *temperature)?;
            let probs = candle_nn::ops::softmax(&scaled, D::Minus1)?.to_vec1::<f32>()?;
            let mut order: Vec<usize> = (0..probs.len()).collect();
            order.sort_by(|&a, &b| probs[b].total_cmp(&probs[a]).then(a.cmp(&b)));
            let mut kept = Vec::new();
            let mut mass = 0.0f64;
            for &i in &order {
                kept.push(i);
                mass += f64::from(probs[i]);
                if mass >= *top_p {
                    break;
                }
            }
            let mut u = rng.uniform() * mass;
            for &i in &kept {
                u -= f64::from(probs[i]);
                if u <= 0.0 {
                    return Ok(i as u32);
                }
            }
            Ok(*kept.last().expect("non-empty") as u32)
        }
        _ => Ok(argmax(&values)),
    }
}

/// Index of the largest value (the first on ties).
pub fn argmax(values: &[f32]) -> u32 {
    let mut best = 0;
    for (i, v) in values.iter().enumerate() {
        if *v > values[best] {
            best = i;
        }
    }
    best as u32
}
