//! Where completions come from: our checkpoint (candle, `model::generate`) or an
//! OpenAI-compatible `/completions` endpoint. Both continue the prompt as plain text, as a
//! base (mid-trained) model is used for HumanEval, and both cut the text at the first stop
//! sequence (the Codex paper's `\ndef `, `\nclass `, `\nif __name__`, `\nprint(`, `\n#`).
//!
//! Endpoint requests go through `StageContext::observe` (source [`SOURCE`]). The observation
//! key is the request body exactly as sent, compact JSON with a fixed field order:
//! `model`, `prompt`, `max_tokens`, `temperature`, `top_p`, `stop`, `seed`. The seed is derived
//! from the stage seed, the task and the sample index, so the samples of one task are distinct
//! requests (and reproducible on servers that honour `seed`). The recorded response is
//! `HTTP <code>\n` and the raw body, as in `reconstruct`'s LLM client; any HTTP answer is
//! recorded (after `max_retries` retries of 429 and 5xx), a transport failure is an error.
//! The server's own stop handling is not trusted: the text is cut again here. OpenAI's hosted
//! API accepts at most 4 stop sequences; vLLM, llama.cpp and Ollama accept more.

use anyhow::{anyhow, bail, Context};
use model::generate::{generate, Sampling};
use model::{Device, Qwen2, Qwen2Config};
use serde::{Deserialize, Serialize};
use std::time::Duration;
use tokenizers::Tokenizer;

/// Observation source of endpoint completions.
pub const SOURCE: &str = "completions";

/// The Codex paper's stop sequences.
pub fn default_stop() -> Vec<String> {
    ["\ndef ", "\nclass ", "\nif __name__", "\nprint(", "\n#"]
        .map(String::from)
        .to_vec()
}

/// `text` up to the earliest stop sequence.
pub fn cut_at_stop<'a>(text: &'a str, stop: &[String]) -> &'a str {
    let end = stop
        .iter()
        .filter(|s| !s.is_empty())
        .filter_map(|s| text.find(s.as_str()))
        .min()
        .unwrap_or(text.len());
    &text[..end]
}

/// A seed for sample `sample` of task `task` (and generation chunk `chunk`), from the stage
/// seed: the first 8 bytes of a BLAKE3, top bit cleared (some servers want a signed int).
pub fn derive_seed(seed: u64, task: &str, sample: usize, chunk: usize) -> u64 {
    let h = blake3::hash(format!("{seed}\0{task}\0{sample}\0{chunk}").as_bytes());
    let mut b = [0u8; 8];
    b.copy_from_slice(&h.as_bytes()[..8]);
    u64::from_le_bytes(b) & 0x7fff_ffff_ffff_ffff
}

// ---------------------------------------------------------------------------------------------
// Endpoint

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointParams {
    /// The API root, e.g. `http://127.0.0.1:8000/v1`; `/completions` is appended (unless it
    /// already ends with it).
    pub base_url: String,
    pub model: String,
    /// Whole-request timeout.
    #[serde(default = "default_timeout_secs")]
    pub timeout_secs: u64,
    /// Retries of a transport failure, 429 or 5xx, with 1 s, 2 s, 4 s … between them.
    #[serde(default = "default_max_retries")]
    pub max_retries: u32,
    /// Requests in flight at once.
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
    /// Name of the environment variable holding a bearer token (never recorded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key_env: Option<String>,
}

fn default_timeout_secs() -> u64 {
    300
}
fn default_max_retries() -> u32 {
    2
}
fn default_concurrency() -> usize {
    4
}

impl EndpointParams {
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        if !self.base_url.starts_with("http://") && !self.base_url.starts_with("https://") {
            return Err(("base_url", "must start with http:// or https://".into()));
        }
        if self.model.trim().is_empty() {
            return Err(("model", "must not be empty".into()));
        }
        if self.timeout_secs == 0 {
            return Err(("timeout_secs", "must be positive".into()));
        }
        if self.concurrency == 0 {
            return Err(("concurrency", "must be positive".into()));
        }
        Ok(())
    }

    pub fn url(&self) -> String {
        let base = self.base_url.trim_end_matches('/');
        if base.ends_with("/completions") {
            base.to_string()
        } else {
            format!("{base}/completions")
        }
    }
}

#[derive(Serialize)]
struct CompletionRequest<'a> {
    model: &'a str,
    prompt: &'a str,
    max_tokens: usize,
    temperature: f64,
    top_p: f64,
    stop: &'a [String],
    seed: u64,
}

/// The request body (and observation key) of one completion.
#[allow(clippy::too_many_arguments)]
pub fn completion_request(
    p: &EndpointParams,
    prompt: &str,
    max_tokens: usize,
    temperature: f64,
    top_p: f64,
    stop: &[String],
    seed: u64,
) -> Vec<u8> {
    serde_json::to_vec(&CompletionRequest {
        model: &p.model,
        prompt,
        max_tokens,
        temperature,
        top_p,
        stop,
        seed,
    })
    .expect("a completion request serializes")
}

/// A blocking client for one endpoint (shared by the worker threads).
pub struct Client {
    agent: ureq::Agent,
    url: String,
    key: Option<String>,
    max_retries: u32,
}

impl Client {
    pub fn new(p: &EndpointParams) -> anyhow::Result<Client> {
        let key = match &p.api_key_env {
            Some(var) => Some(
                std::env::var(var)
                    .map_err(|_| anyhow!("endpoint.api_key_env names `{var}`, which is not set"))?,
            ),
            None => None,
        };
        let agent = crate::http::agent(Duration::from_secs(p.timeout_secs));
        Ok(Client {
            agent,
            url: p.url(),
            key,
            max_retries: p.max_retries,
        })
    }

    /// POSTs a body; returns `HTTP <code>\n<raw body>`. Retries transport failures, 429, 5xx.
    pub fn send(&self, body: &[u8]) -> anyhow::Result<Vec<u8>> {
        crate::http::post_json_recorded(
            &self.agent,
            &self.url,
            self.key.as_deref(),
            body,
            self.max_retries,
        )
    }
}

/// `choices[0].text` of a recorded answer, or why there is none.
pub fn parse_completion(recorded: &[u8]) -> Result<String, String> {
    let (status, body) = crate::http::split_recorded(recorded)?;
    if status != 200 {
        let snippet: String = String::from_utf8_lossy(body).chars().take(200).collect();
        return Err(format!("HTTP {status}: {snippet}"));
    }
    let value: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| format!("the answer is not JSON: {e}"))?;
    value
        .pointer("/choices/0/text")
        .and_then(|t| t.as_str())
        .map(str::to_string)
        .ok_or_else(|| "the answer has no choices[0].text".to_string())
}

// ---------------------------------------------------------------------------------------------
// Checkpoint

/// Special tokens that end a generation when the tokenizer has them.
pub const END_TOKENS: [&str; 2] = ["<|endoftext|>", model::chat::IM_END];
/// Tokens generated per `model::generate` call. Between calls the text is checked for a stop
/// sequence; each call re-reads the whole context (one prefill), so a completion that stops
/// early costs little more than its own tokens.
pub const CHUNK_TOKENS: usize = 64;

/// Our Qwen2 checkpoint and its tokenizer, on the CPU.
pub struct Checkpoint {
    model: Qwen2,
    tokenizer: Tokenizer,
    end_ids: Vec<u32>,
    max_positions: usize,
}

impl Checkpoint {
    pub fn load(model: &[u8], config: &[u8], tokenizer: &[u8]) -> anyhow::Result<Checkpoint> {
        let config: Qwen2Config =
            serde_json::from_slice(config).context("input `config` is not a Qwen2 config.json")?;
        config
            .validate()
            .context("input `config` is not a usable Qwen2 config")?;
        let model = Qwen2::from_safetensors(&config, model, &Device::Cpu)
            .context("input `model` does not load with input `config`")?;
        let tokenizer = Tokenizer::from_bytes(tokenizer)
            .map_err(|e| anyhow!("input `tokenizer` is not a tokenizer.json: {e}"))?;
        let end_ids = END_TOKENS
            .iter()
            .filter_map(|t| tokenizer.token_to_id(t))
            .collect();
        Ok(Checkpoint {
            model,
            tokenizer,
            end_ids,
            max_positions: config.max_position_embeddings,
        })
    }

    /// Continues `prompt` by up to `max_new` tokens, greedy at temperature 0, else seeded
    /// nucleus sampling; stops at an end token or once the text holds a stop sequence.
    /// Returns the completion cut at the stop sequence, and whether the prompt had to be cut
    /// from the left to fit `max_position_embeddings`.
    #[allow(clippy::too_many_arguments)]
    pub fn complete(
        &self,
        prompt: &str,
        max_new: usize,
        temperature: f64,
        top_p: f64,
        stop: &[String],
        seed: impl Fn(usize) -> u64,
    ) -> anyhow::Result<(String, bool)> {
        let encoding = self
            .tokenizer
            .encode(prompt, false)
            .map_err(|e| anyhow!("tokenizing the prompt: {e}"))?;
        let mut context: Vec<u32> = encoding.get_ids().to_vec();
        if context.is_empty() {
            bail!("the prompt tokenizes to nothing");
        }
        let room = self.max_positions.saturating_sub(max_new).max(1);
        let cut = context.len() > room;
        if cut {
            context.drain(..context.len() - room);
        }
        let mut new: Vec<u32> = Vec::new();
        let mut chunk = 0;
        while new.len() < max_new {
            let sampling = if temperature > 0.0 {
                Sampling::Sample {
                    temperature,
                    top_p,
                    seed: seed(chunk),
                }
            } else {
                Sampling::Greedy
            };
            let want = CHUNK_TOKENS.min(max_new - new.len());
            let mut all = context.clone();
            all.extend_from_slice(&new);
            let got = generate(&self.model, &all, want, &sampling, &self.end_ids, true)?;
            let ended = got.last().is_some_and(|t| self.end_ids.contains(t));
            new.extend_from_slice(&got);
            chunk += 1;
            let text = self.decode(&new)?;
            if ended || cut_at_stop(&text, stop).len() < text.len() {
                break;
            }
        }
        let text = self.decode(&new)?;
        Ok((cut_at_stop(&text, stop).to_string(), cut))
    }

    fn decode(&self, ids: &[u32]) -> anyhow::Result<String> {
        self.tokenizer
            .decode(ids, true)
            .map_err(|e| anyhow!("decoding generated tokens: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn humaneval_completions_are_cut_at_the_earliest_stop_sequence() {
        let stop = default_stop();
        let text = "    return x\n\n\ndef g():\n    pass\n# note\n";
        assert_eq!(cut_at_stop(text, &stop), "    return x\n\n");
        assert_eq!(cut_at_stop("    return 1\n", &stop), "    return 1\n");
        assert_eq!(
            cut_at_stop("    y = 1\n# c\nclass A:\n", &stop),
            "    y = 1"
        );
        // Indented definitions are part of the body.
        assert_eq!(
            cut_at_stop("    def h():\n        pass\n", &stop),
            "    def h():\n        pass\n"
        );
    }

    #[test]
    fn humaneval_endpoint_requests_are_canonical_and_answers_checked() {
        let p = EndpointParams {
            base_url: "http://127.0.0.1:9/v1/".into(),
            model: "m".into(),
            timeout_secs: 5,
            max_retries: 0,
            concurrency: 1,
            api_key_env: None,
        };
        assert_eq!(p.url(), "http://127.0.0.1:9/v1/completions");
        let body = completion_request(&p, "def f():\n", 16, 0.0, 0.95, &["\n#".into()], 7);
        assert_eq!(
            String::from_utf8(body).unwrap(),
            r##"{"model":"m","prompt":"def f():\n","max_tokens":16,"temperature":0.0,"top_p":0.95,"stop":["\n#"],"seed":7}"##
        );
        assert_eq!(
            parse_completion(b"HTTP 200\n{\"choices\":[{\"text\":\"  return 1\"}]}"),
            Ok("  return 1".into())
        );
        assert_eq!(
            parse_completion(b"HTTP 503\nbusy"),
            Err("HTTP 503: busy".into())
        );
        assert!(parse_completion(b"HTTP 200\n{}")
            .unwrap_err()
            .contains("choices[0].text"));
        assert_ne!(
            derive_seed(1, "HumanEval/0", 0, 0),
            derive_seed(1, "HumanEval/0", 1, 0)
        );
        assert_eq!(
            derive_seed(1, "HumanEval/0", 0, 0),
            derive_seed(1, "HumanEval/0", 0, 0)
        );
    }
}
