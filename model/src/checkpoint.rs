//! Checkpoints in the Hugging Face layout: `model.safetensors` (HF tensor names, f32,
//! metadata `format = pt`), `config.json`; plus our optimizer state (safetensors of AdamW
//! moments `exp_avg.<param>` / `exp_avg_sq.<param>`, step in the metadata) and a JSON cursor.
//! Also loads a real Qwen2 / Qwen2.5 directory (`model.safetensors` or sharded with
//! `model.safetensors.index.json`; bf16/f16 converted to f32).

use crate::config::Qwen2Config;
use crate::qwen2::Qwen2;
use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::Path;

/// Serializes named tensors as safetensors bytes. Deterministic: the format orders tensors by
/// dtype then name. The metadata is a `HashMap` whose JSON order is not stable, so at most
/// one metadata key is allowed.
pub fn to_safetensors(
    tensors: &[(String, Tensor)],
    metadata: &[(&str, String)],
) -> Result<Vec<u8>> {
    if metadata.len() > 1 {
        bail!("at most one safetensors metadata key (its order would not be deterministic)");
    }
    let meta: HashMap<String, String> = metadata
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect();
    let contiguous: Vec<(String, Tensor)> = tensors
        .iter()
        .map(|(n, t)| Ok((n.clone(), t.contiguous()?)))
        .collect::<Result<_>>()?;
    let data = contiguous.iter().map(|(n, t)| (n.as_str(), t));
    Ok(safetensors::serialize(data, Some(meta))?)
}

/// Parses safetensors bytes into tensors and metadata, with a clear error for a corrupt file.
pub fn from_safetensors(
    bytes: &[u8],
    what: &str,
    device: &Device,
) -> Result<(HashMap<String, Tensor>, HashMap<String, String>)> {
    let (_, header) = safetensors::SafeTensors::read_metadata(bytes)
        .map_err(|e| anyhow::anyhow!("{what} is not a valid safetensors file: {e}"))?;
    let metadata = header.metadata().clone().unwrap_or_default();
    let tensors = candle_core::safetensors::load_buffer(bytes, device)
        .map_err(|e| anyhow::anyhow!("{what} is not a valid safetensors file: {e}"))?;
    Ok((tensors, metadata))
}

impl Qwen2 {
    /// `model.safetensors` bytes with HF names (no `lm_head.weight` when tied, as HF writes).
    pub fn to_safetensors(&self) -> Result<Vec<u8>> {
        let tensors: Vec<(String, Tensor)> = self
            .params()
            .iter()
            .map(|(n, v)| (n.clone(), v.as_tensor().clone()))
            .collect();
        to_safetensors(&tensors, &[("format", "pt".to_string())])
    }

    /// Loads weights for `config` from safetensors bytes; shape or name mismatches are errors.
    pub fn from_safetensors(config: &Qwen2Config, bytes: &[u8], device: &Device) -> Result<Qwen2> {
        let (tensors, _) = from_safetensors(bytes, "the checkpoint", device)?;
        Qwen2::from_tensors(config, tensors, device)
    }

    /// Writes `config.json` and `model.safetensors` into `dir`: loadable by
    /// `transformers.AutoModelForCausalLM.from_pretrained(dir)`.
    pub fn save_dir(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir)?;
        std::fs::write(dir.join("config.json"), config_json(&self.config)?)?;
        std::fs::write(dir.join("model.safetensors"), self.to_safetensors()?)?;
        Ok(())
    }

    /// Loads an HF checkpoint directory (ours or a real Qwen2/Qwen2.5 one).
    pub fn load_dir(dir: &Path, device: &Device) -> Result<Qwen2> {
        let config: Qwen2Config = serde_json::from_slice(
            &std::fs::read(dir.join("config.json"))
                .with_context(|| format!("reading {}/config.json", dir.display()))?,
        )
        .with_context(|| format!("{}/config.json is not a Qwen2 config", dir.display()))?;
        let single = dir.join("model.safetensors");
        let files: Vec<std::path::PathBuf> = if single.exists() {
            vec![single]
        } else {
            let index_path = dir.join("model.safetensors.index.json");
            let index: serde_json::Value =
                serde_json::from_slice(&std::fs::read(&index_path).with_context(|| {
                    format!("no model.safetensors or index in {}", dir.display())
                })?)?;
            let map = index["weight_map"]
                .as_object()
                .context("model.safetensors.index.json has no weight_map")?;
            let mut shards: Vec<&str> = map.values().filter_map(|v| v.as_str()).collect();
            shards.sort();
            shards.dedup();
            shards.into_iter().map(|s| dir.join(s)).collect()
        };
        let mut tensors = HashMap::new();
        for f in files {
            let bytes = std::fs::read(&f).with_context(|| format!("reading {}", f.display()))?;
            let (t, _) = from_safetensors(&bytes, &f.display().to_string(), device)?;
            tensors.extend(t);
        }
        Qwen2::from_tensors(&config, tensors, device)
    }
}

/// `config.json` bytes, pretty-printed with a trailing newline (deterministic field order).
pub fn config_json(config: &Qwen2Config) -> Result<Vec<u8>> {
    let mut v = serde_json::to_vec_pretty(config)?;
    v.push(b'\n');
    Ok(v)
}

/// Where a run stands: enough to resume exactly.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Cursor {
    /// Optimizer steps taken.
    pub step: usize,
    /// Steps in the whole run.
    pub total_steps: usize,
    /// Training examples consumed so far (over all epochs and phases).
    pub position: usize,
    /// The epoch the next example belongs to (0-based), and the phase (data stage) name.
    pub epoch: usize,
    pub phase: String,
    /// Hashes of the model and optimizer artifacts of this checkpoint (hex), when written by
    /// a stage, so a `resume` input needs only this cursor.
    #[serde(default)]
    pub model: Option<String>,
    #[serde(default)]
    pub optimizer: Option<String>,
    /// Hash of the training curve up to this checkpoint (hex), so a resumed run's curve holds
    /// every step, as an uninterrupted run's does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub curve: Option<String>,
    /// Fingerprint of the training configuration and data; resuming checks it.
    pub fingerprint: String,
}

/// Checks that a bad-file error surfaces before anything else: used by callers that read
/// a checkpoint whose bytes may be empty.
pub fn ensure_nonempty(bytes: &[u8], what: &str) -> Result<()> {
    if bytes.is_empty() {
        bail!("{what} is empty");
    }
    Ok(())
}
