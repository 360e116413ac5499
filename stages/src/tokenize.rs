//! `tokenize`: train a byte-level BPE tokenizer on the corpus (or load an existing
//! `tokenizer.json`, e.g. Qwen2.5's), count tokens per sample, drop samples over the token cap,
//! and pack the rest into a fixed-length token shard with a sample index.
//!
//! Token shard layout (`application/x-davinci-tokens`), all integers little-endian:
//! ```text
//! 0   8  magic  "DVTOKS01"
//! 8   4  u32    seq_len
//! 12  4  u32    vocab_size (with added tokens)
//! 16  4  u32    eos_id     (appended after every sample)
//! 20  4  u32    pad_id     (fills the last sequence; equals eos_id)
//! 24  8  u64    n_tokens   (real tokens, padding excluded)
//! 32  …  u32[ceil(n_tokens / seq_len) * seq_len]  the token stream, cut into sequences
//! ```
//! The `index` output is JSONL: `{"id", "start", "tokens"}` per kept sample, `start` being the
//! sample's first token in the stream. Samples are packed in corpus order; memory holds one
//! sample at a time (the stream goes through a temp file, then behind the header).

use crate::record::Sample;
use crate::shard;
use anyhow::{anyhow, bail, Context};
use ledger::config::{parse_params, ParamError};
use ledger::plan::{Compose, Plan, PlanContext, Source, Unit, UnitSpec};
use ledger::stage::{ExternalInput, ExternalSource, InputSpec, Stage, StageContext};
use serde::{Deserialize, Serialize};
use std::io::{BufWriter, Seek, Write};
use std::path::Path;
use tokenizers::models::bpe::{BpeTrainerBuilder, BPE};
use tokenizers::normalizers::NormalizerWrapper;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::{AddedToken, Tokenizer, TokenizerBuilder};

pub struct Tokenize;

pub const MAGIC: &[u8; 8] = b"DVTOKS01";
pub const HEADER_BYTES: usize = 32;
pub const MEDIA_TYPE: &str = "application/x-davinci-tokens";
const TOKENIZER_INPUT: &str = "file:tokenizer.json";
/// The unit that trains (or passes on) the tokenizer; shard units are named `part.<id>`.
const TOKENIZER_UNIT: &str = "tokenizer";

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Params {
    /// Vocabulary size of the trained tokenizer (ignored with `tokenizer`).
    #[serde(default = "default_vocab")]
    pub vocab_size: usize,
    #[serde(default = "default_min_frequency")]
    pub min_frequency: u64,
    /// Use this `tokenizer.json` (relative to the config file) instead of training one.
    #[serde(default)]
    pub tokenizer: Option<String>,
    #[serde(default = "default_seq_len")]
    pub seq_len: u32,
    /// Samples with more tokens are dropped (the recipe's 32,000).
    #[serde(default = "default_max_tokens")]
    pub max_tokens: usize,
    #[serde(default = "default_eos")]
    pub eos_token: String,
}

fn default_vocab() -> usize {
    8192
}
fn default_min_frequency() -> u64 {
    2
}
fn default_seq_len() -> u32 {
    2048
}
fn default_max_tokens() -> usize {
    32_000
}
fn default_eos() -> String {
    "<|endoftext|>".into()
}

#[derive(Debug, Serialize, Deserialize)]
pub struct IndexEntry {
    pub id: String,
    pub start: u64,
    pub tokens: u64,
}

impl Stage for Tokenize {
    fn name(&self) -> &'static str {
        "tokenize"
    }

    fn version(&self) -> u32 {
        2
    }

    fn description(&self) -> &'static str {
        "byte-level BPE (trained or loaded) → packed fixed-length token shard + sample index"
    }

    fn inputs(&self) -> &'static [InputSpec] {
        &[InputSpec {
            name: "samples",
            required: true,
            description: "a `samples` shard from `reconstruct`",
        }]
    }

    fn outputs(&self) -> &'static [&'static str] {
        &["tokenizer", "tokens", "index"]
    }

    fn check(&self, params: toml::Table) -> Result<serde_json::Value, ParamError> {
        let p: Params = parse_params(params)?;
        if p.seq_len == 0 {
            return Err(ParamError::new("seq_len", "must be positive"));
        }
        if p.tokenizer.is_none() && p.vocab_size < 260 {
            return Err(ParamError::new(
                "vocab_size",
                "must be at least 260 (256 byte symbols plus merges)",
            ));
        }
        Ok(serde_json::to_value(p).expect("params serialize"))
    }

    fn external_inputs(
        &self,
        config: &serde_json::Value,
        base_dir: &Path,
    ) -> anyhow::Result<Vec<ExternalInput>> {
        let p: Params = serde_json::from_value(config.clone())?;
        Ok(p.tokenizer
            .map(|t| ExternalInput {
                name: TOKENIZER_INPUT.into(),
                source: ExternalSource::File(base_dir.join(t)),
            })
            .into_iter()
            .collect())
    }

    /// A `tokenizer` unit trains the BPE over every shard (or passes on the given one); then
    /// one unit per shard encodes it with that tokenizer into a packed token shard and an
    /// index. `tokens` and `index` are manifests of those.
    fn plan(&self, plan: &PlanContext) -> anyhow::Result<Plan> {
        let mut out = Plan::per_part(
            plan,
            "samples",
            &[],
            &[("tokens", MEDIA_TYPE), ("index", "application/x-ndjson")],
        )?;
        let parts = plan.parts(&plan.input("samples").expect("a required input"))?;
        let mut train_inputs: Vec<(String, Source)> = out
            .units
            .iter()
            .zip(&parts)
            .map(|(u, h)| (u.unit.id.clone(), Source::Blob(*h)))
            .collect();
        if let Some(given) = plan.input(TOKENIZER_INPUT) {
            train_inputs = vec![(TOKENIZER_INPUT.to_string(), Source::Blob(given))];
        }
        for unit in &mut out.units {
            unit.inputs.push((
                "tokenizer".into(),
                Source::Unit {
                    unit: TOKENIZER_UNIT.into(),
                    output: "tokenizer".into(),
                },
            ));
        }
        out.units.insert(
            0,
            UnitSpec {
                unit: Unit {
                    id: TOKENIZER_UNIT.into(),
                    params: serde_json::Value::Null,
                },
                inputs: train_inputs,
            },
        );
        out.outputs.push((
            "tokenizer".into(),
            Compose::Unit {
                unit: TOKENIZER_UNIT.into(),
                output: "tokenizer".into(),
            },
        ));
        Ok(out)
    }

    /// Counts add up over the shards; the longest sample and the vocabulary are the largest.
    fn combine_metrics(&self, units: &[Vec<(String, f64)>]) -> Vec<(String, f64)> {
        let mut out = ledger::stage::sum_metrics(units);
        for (name, value) in &mut out {
            if name == "tokens.longest_sample" || name == "vocab_size" {
                *value = units
                    .iter()
                    .flatten()
                    .filter(|(n, _)| n == name)
                    .map(|(_, v)| *v)
                    .fold(0.0, f64::max);
            }
        }
        out
    }

    fn execute(&self, ctx: &mut StageContext) -> anyhow::Result<()> {
        let p: Params = ctx.params()?;
        if ctx.unit().is_some_and(|u| u.id == TOKENIZER_UNIT) {
            let tokenizer = match ctx.input(TOKENIZER_INPUT) {
                Ok(hash) => Tokenizer::from_bytes(ctx.read_blob(&hash)?).map_err(|e| {
                    anyhow!("the tokenizer input is not a valid tokenizer.json: {e}")
                })?,
                Err(_) => {
                    let shards: Vec<ledger::Hash> = ctx.inputs().iter().map(|(_, h)| *h).collect();
                    train(ctx, &shards, &p)?
                }
            };
            let json = tokenizer
                .to_string(false)
                .map_err(|e| anyhow!("serializing the tokenizer: {e}"))?;
            ctx.write_output("tokenizer", "application/json", json.as_bytes())?;
            ctx.metric(
                "vocab_size",
                f64::from(tokenizer.get_vocab_size(true) as u32),
            );
            return Ok(());
        }
        let samples = ctx.input("samples")?;
        let tokenizer = Tokenizer::from_bytes(ctx.read_input("tokenizer")?)
            .map_err(|e| anyhow!("the tokenizer is not a valid tokenizer.json: {e}"))?;
        let eos = tokenizer.token_to_id(&p.eos_token).with_context(|| {
            format!(
                "the tokenizer has no `{}` token (set eos_token)",
                p.eos_token
            )
        })?;
        let vocab = tokenizer.get_vocab_size(true) as u32;

        // Pass over the shard: encode, cap, stream tokens to a temp file, index kept samples.
        let mut stream = BufWriter::new(tempfile::tempfile()?);
        let mut index = ctx.output_writer()?;
        let (mut kept, mut dropped, mut n_tokens, mut longest) = (0u64, 0u64, 0u64, 0u64);
        for sample in shard::read::<Sample>(ctx, &samples, "input `samples`")? {
            let sample = sample?;
            let encoding = tokenizer
                .encode(sample.text.as_str(), false)
                .map_err(|e| anyhow!("tokenizing sample {}: {e}", sample.id))?;
            let ids = encoding.get_ids();
            if ids.len() > p.max_tokens {
                dropped += 1;
                continue;
            }
            for id in ids.iter().chain(std::iter::once(&eos)) {
                stream.write_all(&id.to_le_bytes())?;
            }
            let tokens = ids.len() as u64 + 1;
            serde_json::to_writer(
                &mut index,
                &IndexEntry {
                    id: sample.id,
                    start: n_tokens,
                    tokens,
                },
            )?;
            index.write_all(b"\n")?;
            n_tokens += tokens;
            longest = longest.max(ids.len() as u64);
            kept += 1;
        }
        let seq_len = u64::from(p.seq_len);
        let sequences = n_tokens.div_ceil(seq_len);
        for _ in n_tokens..sequences * seq_len {
            stream.write_all(&eos.to_le_bytes())?;
        }
        let mut stream = stream.into_inner().map_err(|e| e.into_error())?;
        stream.rewind()?;

        let mut out = ctx.output_writer()?;
        out.write_all(MAGIC)?;
        for v in [p.seq_len, vocab, eos, eos] {
            out.write_all(&v.to_le_bytes())?;
        }
        out.write_all(&n_tokens.to_le_bytes())?;
        std::io::copy(&mut stream, &mut out)?;
        ctx.finish_output("tokens", MEDIA_TYPE, out)?;
        ctx.finish_output("index", "application/x-ndjson", index)?;

        ctx.metric("samples.kept", kept as f64);
        ctx.metric("dropped.too_many_tokens", dropped as f64);
        ctx.metric("tokens", n_tokens as f64);
        ctx.metric("tokens.longest_sample", longest as f64);
        ctx.metric("sequences", sequences as f64);
        Ok(())
    }
}

/// Trains the tokenizer over the samples of every shard, in order.
fn train(ctx: &StageContext, shards: &[ledger::Hash], p: &Params) -> anyhow::Result<Tokenizer> {
    // The trainer wants an infallible iterator: remember the first read error and stop.
    let mut failure = None;
    let mut seen = 0u64;
    let mut readers = Vec::new();
    for (i, shard) in shards.iter().enumerate() {
        readers.push(shard::read::<Sample>(
            ctx,
            shard,
            &format!("input `samples`, shard {}", i + 1),
        )?);
    }
    let texts = readers.into_iter().flatten().map_while(|s| match s {
        Ok(s) => {
            seen += 1;
            Some(s.text)
        }
        Err(e) => {
            failure = Some(e);
            None
        }
    });
    let tokenizer = train_bpe(texts, p.vocab_size, p.min_frequency, &p.eos_token)?;
    if let Some(e) = failure {
        bail!(e);
    }
    if seen == 0 {
        bail!("input `samples` gives nothing to train on: it holds no samples");
    }
    Ok(tokenizer)
}

/// Trains the byte-level BPE this stage uses (GPT-2 style byte alphabet, no prefix space,
/// `eos` as the one special token). Deterministic for the same texts and settings.
pub fn train_bpe<I>(
    texts: I,
    vocab_size: usize,
    min_frequency: u64,
    eos: &str,
) -> anyhow::Result<Tokenizer>
where
    I: Iterator<Item = String> + Send,
{
    let mut trainer = BpeTrainerBuilder::new()
        .vocab_size(vocab_size)
        .min_frequency(min_frequency)
        .show_progress(false)
        .special_tokens(vec![AddedToken::from(eos.to_string(), true)])
        .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
        .build();
    let byte_level = ByteLevel::new(false, true, true);
    let mut tokenizer =
        TokenizerBuilder::<BPE, NormalizerWrapper, ByteLevel, ByteLevel, ByteLevel>::new()
            .with_model(BPE::default())
            .with_normalizer(None)
            .with_pre_tokenizer(Some(byte_level))
            .with_post_processor(Some(byte_level))
            .with_decoder(Some(byte_level))
            .build()
            .map_err(|e| anyhow!("building the tokenizer: {e}"))?;
    tokenizer
        .train(&mut trainer, texts)
        .map_err(|e| anyhow!("training the tokenizer: {e}"))?;
    Ok(tokenizer.into())
}
