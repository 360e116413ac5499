//! `sft`: supervised fine-tuning on chat trajectories with the loss only on assistant tokens
//! (content, tool calls and the closing `<|im_end|>`; never system, user or tool tokens).
//! `setting = "strong"` keeps resolved trajectories only (D_pass); `"weak"` uses every
//! trajectory of the input (an external set). Each trajectory is one sequence, padded to
//! `seq_len`; longer ones are dropped (counted in `dropped.too_long`).

use super::{check, encode_segments, load_tokenizer, model_config, run, split, Data, Kind, Params};
use anyhow::{bail, Context, Result};
use ledger::config::ParamError;
use ledger::stage::{InputSpec, Stage, StageContext};
use model::chat::{parse_trajectories, render_segments, Trajectory};
use model::train::Example;
use tokenizers::Tokenizer;

pub struct Sft;

const INPUTS: [InputSpec; 5] = [
    InputSpec {
        name: "trajectories",
        required: true,
        description: "trajectories JSONL (schema in model::chat)",
    },
    InputSpec {
        name: "tokenizer",
        required: true,
        description: "tokenizer.json; ChatML specials are added when missing",
    },
    super::COMMON_INPUTS[1],
    super::COMMON_INPUTS[2],
    super::COMMON_INPUTS[3],
];

/// Token ids and loss mask of one trajectory (mask 1 on assistant tokens only).
pub fn encode_trajectory(tok: &Tokenizer, t: &Trajectory) -> Result<(Vec<u32>, Vec<f32>)> {
    encode_segments(tok, &render_segments(&t.messages)?)
}

impl Stage for Sft {
    fn name(&self) -> &'static str {
        "sft"
    }

    fn version(&self) -> u32 {
        // 2: fused CPU kernels and an explicit backward pass (float results differ from 1).
        // 3: states name their curve, so a resumed run's curve and plot hold every step.
        3
    }

    fn description(&self) -> &'static str {
        "chat trajectories → Qwen2 checkpoint (loss on assistant tokens)"
    }

    fn inputs(&self) -> &'static [InputSpec] {
        &INPUTS
    }

    fn outputs(&self) -> &'static [&'static str] {
        &[
            "model",
            "config",
            "optimizer",
            "state",
            "curve",
            "plot",
            "tokenizer",
        ]
    }

    fn check(&self, params: toml::Table) -> Result<serde_json::Value, ParamError> {
        check(params, Kind::Sft)
    }

    fn execute(&self, ctx: &mut StageContext) -> Result<()> {
        let p: Params = ctx.params()?;
        crate::device::require_runnable(p.device, "sft")?;
        let seed = ctx.seed();
        let tok = load_tokenizer(ctx, true)?.context("sft needs a `tokenizer` input")?;
        let config = model_config(ctx, &p, Some(&tok), None)?;
        let text = String::from_utf8(ctx.read_whole(&ctx.input("trajectories")?)?)
            .context("input `trajectories` is not UTF-8")?;
        let all = parse_trajectories(&text).context("input `trajectories`")?;
        let strong = p.setting.as_deref() == Some("strong");
        let n_all = all.len();
        let chosen: Vec<Trajectory> = all
            .into_iter()
            .filter(|t| !strong || t.resolved == Some(true))
            .collect();
        ctx.metric("trajectories.in", n_all as f64);
        ctx.metric("trajectories.used", chosen.len() as f64);
        if chosen.is_empty() {
            bail!(
                "no trajectories to train on ({n_all} in the input{})",
                if strong {
                    ", none resolved; use setting = \"weak\" for unresolved ones"
                } else {
                    ""
                }
            );
        }
        let seq_len = p.seq_len.unwrap_or(2048);
        let eos_token = p.eos_token.clone().unwrap_or_default();
        let pad = tok
            .token_to_id(&eos_token)
            .with_context(|| format!("the tokenizer has no `{eos_token}` token (set eos_token)"))?;
        let (mut long, mut trained_tokens) = (0u64, 0f64);
        let mut seqs = Vec::new();
        for t in &chosen {
            let (mut tokens, mut mask) = encode_trajectory(&tok, t)?;
            if tokens.len() > seq_len {
                long += 1;
                continue;
            }
            if !mask.iter().any(|&m| m > 0.0) {
                continue;
            }
            trained_tokens += mask.iter().map(|&m| f64::from(m)).sum::<f64>();
            tokens.resize(seq_len, pad);
            mask.resize(seq_len, 0.0);
            seqs.push(Example { tokens, mask });
        }
        ctx.metric("dropped.too_long", long as f64);
        ctx.metric("data.assistant_tokens", trained_tokens);
        if seqs.is_empty() {
            bail!("every trajectory is longer than seq_len {seq_len} or has no assistant tokens");
        }
        let (examples, heldout) = split(seqs, &p, seed, "sft");
        let phases = vec![("sft".to_string(), (0..examples.len()).collect())];
        let data = Data {
            examples,
            heldout,
            phases,
        };
        run(ctx, &p, config, data, Some(&tok))
    }
}
