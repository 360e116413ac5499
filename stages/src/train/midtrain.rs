//! `midtrain`: continued pre-training on packed token shards and rendered trajectories, in
//! data stages (the recipe: stage 1 `ctx_gen`; stage 2 `ctx_py` + `env` with passing
//! trajectories upsampled ×3). No loss mask except padding. One schedule over all stages
//! unless `rewarm = true`. See the module docs of `train` for outputs and resume.
//!
//! Inputs: `ctx_gen`, `ctx_py` — token shards from `tokenize` (`DVTOKS01`); `env` — a
//! trajectories JSONL (schema in `model::chat`), rendered with the ChatML template plus the
//! EOS token and packed into `seq_len` sequences, passing and failing trajectories packed
//! separately so upsampling repeats whole sequences; `tokenizer` is required with `env`.

use super::{check, load_tokenizer, model_config, optional_input, run, split, Data, Kind, Params};
use crate::tokenize::{HEADER_BYTES, MAGIC};
use anyhow::{anyhow, bail, Context, Result};
use ledger::config::ParamError;
use ledger::stage::{InputSpec, Stage, StageContext};
use model::train::Example;

pub struct Midtrain;

pub const DATA_INPUTS: [&str; 3] = ["ctx_gen", "ctx_py", "env"];

const INPUTS: [InputSpec; 7] = [
    InputSpec {
        name: "ctx_gen",
        required: false,
        description: "token shard of D_ctx_gen (general PRs)",
    },
    InputSpec {
        name: "ctx_py",
        required: false,
        description: "token shard of D_ctx_py (Python PRs)",
    },
    InputSpec {
        name: "env",
        required: false,
        description: "trajectories JSONL (D_env); `resolved` marks passing ones",
    },
    super::COMMON_INPUTS[0],
    super::COMMON_INPUTS[1],
    super::COMMON_INPUTS[2],
    super::COMMON_INPUTS[3],
];

/// A parsed `DVTOKS01` token shard.
#[derive(Debug)]
pub struct Shard {
    pub seq_len: usize,
    pub vocab_size: usize,
    pub eos_id: u32,
    pub pad_id: u32,
    pub n_tokens: u64,
    pub tokens: Vec<u32>,
}

/// Parses and validates a token shard; `what` names it in errors.
pub fn parse_shard(bytes: &[u8], what: &str) -> Result<Shard> {
    if bytes.len() < HEADER_BYTES || &bytes[..8] != MAGIC {
        bail!("{what} is not a token shard (no DVTOKS01 header)");
    }
    let u32_at = |o: usize| u32::from_le_bytes(bytes[o..o + 4].try_into().expect("4 bytes"));
    let seq_len = u32_at(8) as usize;
    let n_tokens = u64::from_le_bytes(bytes[24..32].try_into().expect("8 bytes"));
    if n_tokens == 0 {
        bail!("{what} is an empty token shard (0 tokens): nothing to train on");
    }
    if seq_len < 2 {
        bail!("{what} has seq_len {seq_len}; at least 2 is needed");
    }
    let body = &bytes[HEADER_BYTES..];
    let expect = n_tokens.div_ceil(seq_len as u64) * seq_len as u64 * 4;
    if body.len() as u64 != expect {
        bail!(
            "{what} is truncated or corrupt: {} token bytes for {n_tokens} tokens in sequences of {seq_len} (expected {expect})",
            body.len()
        );
    }
    let tokens = body
        .chunks_exact(4)
        .map(|c| u32::from_le_bytes(c.try_into().expect("4 bytes")))
        .collect();
    Ok(Shard {
        seq_len,
        vocab_size: u32_at(12) as usize,
        eos_id: u32_at(16),
        pad_id: u32_at(20),
        n_tokens,
        tokens,
    })
}

/// Cuts a token stream into sequences of `len`, padding the last with `pad` (mask 0).
pub fn pack(stream: &[u32], real: usize, len: usize, pad: u32) -> Vec<Example> {
    stream
        .chunks(len)
        .enumerate()
        .map(|(k, c)| {
            let mut tokens = c.to_vec();
            tokens.resize(len, pad);
            let mask = (0..len)
                .map(|i| if k * len + i < real { 1.0 } else { 0.0 })
                .collect();
            Example { tokens, mask }
        })
        .collect()
}

impl Stage for Midtrain {
    fn name(&self) -> &'static str {
        "midtrain"
    }

    fn version(&self) -> u32 {
        // 2: fused CPU kernels and an explicit backward pass (float results differ from 1);
        // the tokenizer always gets the ChatML specials.
        // 3: states name their curve, so a resumed run's curve and plot hold every step.
        3
    }

    fn description(&self) -> &'static str {
        "token shards + trajectories → Qwen2 checkpoint (staged mid-training)"
    }

    fn inputs(&self) -> &'static [InputSpec] {
        &INPUTS
    }

    fn outputs(&self) -> &'static [&'static str] {
        &["model", "config", "optimizer", "state", "curve", "plot"]
    }

    fn check(&self, params: toml::Table) -> Result<serde_json::Value, ParamError> {
        check(params, Kind::Midtrain)
    }

    fn execute(&self, ctx: &mut StageContext) -> Result<()> {
        let p: Params = ctx.params()?;
        crate::device::require_runnable(p.device, "midtrain")?;
        let seed = ctx.seed();
        let has_env = optional_input(ctx, "env").is_some();
        // The ChatML specials are always added, so the model has room for them and any
        // mid-trained checkpoint can go on to SFT (a D_ctx-only run included).
        let tokenizer = load_tokenizer(ctx, true)?;
        if has_env && tokenizer.is_none() {
            bail!("input `env` (trajectories) needs a `tokenizer` input");
        }

        // Shards first: their errors (empty, corrupt) come before anything else. An input may
        // be a manifest of token shards (one per `tokenize` unit): each is packed on its own.
        let mut shards = Vec::new();
        for name in ["ctx_gen", "ctx_py"] {
            if let Some(h) = optional_input(ctx, name) {
                let parts = ctx.parts(&h)?;
                let mut kept = 0;
                for (i, part) in parts.iter().enumerate() {
                    let what = if parts.len() == 1 {
                        format!("input `{name}`")
                    } else {
                        format!("input `{name}`, shard {} of {}", i + 1, parts.len())
                    };
                    match parse_shard(&ctx.read_blob(part)?, &what) {
                        Ok(shard) => {
                            kept += 1;
                            shards.push((name, shard));
                        }
                        // A shard all of whose samples were too long holds no tokens.
                        Err(e)
                            if parts.len() > 1 && e.to_string().contains("empty token shard") => {}
                        Err(e) => return Err(e),
                    }
                }
                if kept == 0 {
                    bail!("input `{name}` holds no tokens in any of its {} shards: nothing to train on", parts.len());
                }
            }
        }
        let mut seq_len = p.seq_len;
        for (name, s) in &shards {
            match seq_len {
                Some(l) if l != s.seq_len => bail!(
                    "input `{name}` has seq_len {}, but the run uses {l} (the seq_len parameter or another shard)",
                    s.seq_len
                ),
                _ => seq_len = Some(s.seq_len),
            }
        }
        let seq_len = seq_len.unwrap_or(2048);
        let data_vocab = shards.iter().map(|(_, s)| s.vocab_size).max();
        let config = model_config(ctx, &p, tokenizer.as_ref(), data_vocab)?;

        // Sources → (train examples, heldout examples), by input name.
        let mut sources: Vec<(&str, Vec<Example>, Vec<Example>)> = Vec::new();
        let mut heldout = Vec::new();
        for name in ["ctx_gen", "ctx_py"] {
            let of_name: Vec<&Shard> = shards
                .iter()
                .filter(|(n, _)| *n == name)
                .map(|(_, s)| s)
                .collect();
            if of_name.is_empty() {
                continue;
            }
            // Each shard is packed on its own (its last sequence padded), then all are split.
            let seqs: Vec<Example> = of_name
                .iter()
                .flat_map(|s| pack(&s.tokens, s.n_tokens as usize, s.seq_len, s.pad_id))
                .collect();
            let tokens: u64 = of_name.iter().map(|s| s.n_tokens).sum();
            let (train, held) = split(seqs, &p, seed, name);
            ctx.metric(
                &format!("data.{name}.sequences"),
                (train.len() + held.len()) as f64,
            );
            ctx.metric(&format!("data.{name}.tokens"), tokens as f64);
            heldout.extend(held);
            sources.push((name, train, Vec::new()));
        }
        if let (Some(h), Some(tok)) = (optional_input(ctx, "env"), tokenizer.as_ref()) {
            let text =
                String::from_utf8(ctx.read_whole(&h)?).context("input `env` is not UTF-8")?;
            let trajs = model::chat::parse_trajectories(&text).context("input `env`")?;
            if trajs.is_empty() {
                bail!("input `env` has no trajectories");
            }
            let eos_token = p.eos_token.clone().unwrap_or_default();
            let eos = tok.token_to_id(&eos_token).with_context(|| {
                format!("the tokenizer has no `{eos_token}` token (set eos_token)")
            })?;
            let (train, held) = split(trajs, &p, seed, "env");
            let encode = |ts: &[model::chat::Trajectory]| -> Result<(Vec<u32>, usize)> {
                let mut stream = Vec::new();
                for t in ts {
                    let text = model::chat::render_text(&t.messages)?;
                    let enc = tok
                        .encode(text.as_str(), false)
                        .map_err(|e| anyhow!("tokenizing a trajectory: {e}"))?;
                    stream.extend_from_slice(enc.get_ids());
                    stream.push(eos);
                }
                let n = stream.len();
                Ok((stream, n))
            };
            let (pass, fail): (Vec<_>, Vec<_>) =
                train.into_iter().partition(|t| t.resolved == Some(true));
            let fail: Vec<_> = if p.include_failed.unwrap_or(true) {
                fail
            } else {
                Vec::new()
            };
            ctx.metric("data.env.pass", pass.len() as f64);
            ctx.metric("data.env.fail", fail.len() as f64);
            let (ps, pn) = encode(&pass)?;
            let (fs, fnn) = encode(&fail)?;
            let (hs, hn) = encode(&held)?;
            heldout.extend(pack(&hs, hn, seq_len, eos));
            let pass_seqs = pack(&ps, pn, seq_len, eos);
            let fail_seqs = pack(&fs, fnn, seq_len, eos);
            let up = p.pass_upsample.unwrap_or(1);
            ctx.metric("data.env.tokens", (pn + fnn) as f64);
            // Upsampled copies are listed as repeated indices below; store once here.
            sources.push(("env", pass_seqs, fail_seqs));
            ctx.metric("data.env.pass_upsample", up as f64);
        }

        let mut examples: Vec<Example> = Vec::new();
        let mut ranges: Vec<(&str, Vec<usize>)> = Vec::new();
        for (name, main, extra) in sources {
            let start = examples.len();
            let main_n = main.len();
            examples.extend(main);
            let mut idx = Vec::new();
            let reps = if name == "env" {
                p.pass_upsample.unwrap_or(1)
            } else {
                1
            };
            for _ in 0..reps {
                idx.extend(start..start + main_n);
            }
            let s2 = examples.len();
            let extra_n = extra.len();
            examples.extend(extra);
            idx.extend(s2..s2 + extra_n);
            ranges.push((name, idx));
        }
        let mut phases = Vec::new();
        for (i, stage) in p.stages.iter().flatten().enumerate() {
            let mut idx = Vec::new();
            for name in stage {
                if let Some((_, r)) = ranges.iter().find(|(n, _)| *n == name.as_str()) {
                    idx.extend(r.iter().copied());
                }
            }
            phases.push((format!("stage{}", i + 1), idx));
        }
        if phases.iter().all(|(_, i)| i.is_empty()) {
            bail!("no training data: give at least one of the inputs named in `stages` (ctx_gen, ctx_py, env)");
        }
        let data = Data {
            examples,
            heldout,
            phases,
        };
        run(ctx, &p, config, data, tokenizer.as_ref())
    }
}
