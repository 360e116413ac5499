//! LLM enhancement through any OpenAI-compatible `/chat/completions` endpoint: a 1-4 sentence
//! PR summary and a rewrite of each commit message.
//!
//! Every request goes through `StageContext::observe("llm", request, ..)`. The observation key
//! is the request body exactly as sent: compact JSON with a fixed field order
//! (`model`, `messages`, `temperature`, `max_tokens`), so the same prompt to the same model
//! with the same settings is the same observation whichever server answers it; the endpoint
//! URL and the API key are not part of it. The recorded response is the HTTP status line
//! `HTTP <code>\n` followed by the raw response body, byte for byte. Any HTTP answer is
//! recorded (a 500 included, after `max_retries` retries of 429 and 5xx), so a later run
//! replays exactly what this one saw, offline; a transport failure (refused, timed out) is not
//! an answer and is not recorded.
//!
//! A reply is used when it is a 200 with `choices[0].message.content`, not cut off
//! (`finish_reason` is not `length`), and not empty once a leading `<think>…</think>` block and
//! a wrapping code fence are removed. Anything else is a failure: the summary is left out, the
//! original commit message is kept, and the sample is not dropped.
//!
//! Plain `http://` (local vLLM, llama.cpp, Ollama servers) and `https://` (rustls) both work.

use crate::record::{FileChange, PrRecord};
use serde::{Deserialize, Serialize};
use std::time::Duration;

pub const SOURCE: &str = "llm";

/// Free text (PR body, issue body) is cut to this many characters in the summary prompt.
const TEXT_CHARS: usize = 4000;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LlmParams {
    /// The API root, e.g. `http://127.0.0.1:8000/v1`; `/chat/completions` is appended (unless
    /// it already ends with it).
    pub base_url: String,
    pub model: String,
    #[serde(default)]
    pub temperature: f64,
    /// Reply budget of the PR summary (recipe: 512).
    #[serde(default = "default_summary_max_tokens")]
    pub summary_max_tokens: u32,
    /// Reply budget of a commit-message rewrite (recipe: 256).
    #[serde(default = "default_message_max_tokens")]
    pub message_max_tokens: u32,
    /// A commit's patch is cut to this many characters in the rewrite prompt (recipe: 2,000).
    #[serde(default = "default_patch_chars")]
    pub patch_chars: usize,
    /// The PR's diff is cut to this many characters in the summary prompt (not published).
    #[serde(default = "default_summary_patch_chars")]
    pub summary_patch_chars: usize,
    /// Whole-request timeout.
    #[serde(default = "default_timeout_secs")]
    pub timeout_secs: u64,
    /// Retries of a transport failure, 429 or 5xx, with 1 s, 2 s, 4 s … between them.
    #[serde(default = "default_max_retries")]
    pub max_retries: u32,
    /// Name of the environment variable holding a bearer token (the token itself never goes
    /// into the config, the ledger or the observation key).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key_env: Option<String>,
}

fn default_summary_max_tokens() -> u32 {
    512
}
fn default_message_max_tokens() -> u32 {
    256
}
fn default_patch_chars() -> usize {
    2000
}
fn default_summary_patch_chars() -> usize {
    8000
}
fn default_timeout_secs() -> u64 {
    120
}
fn default_max_retries() -> u32 {
    2
}

impl LlmParams {
    /// Problems with the values, as (key, message).
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        if !self.base_url.starts_with("http://") && !self.base_url.starts_with("https://") {
            return Err(("base_url", "must start with http:// or https://".into()));
        }
        if self.model.trim().is_empty() {
            return Err(("model", "must not be empty".into()));
        }
        if !(0.0..=2.0).contains(&self.temperature) {
            return Err(("temperature", "must be between 0 and 2".into()));
        }
        for (key, v) in [
            ("summary_max_tokens", self.summary_max_tokens as u64),
            ("message_max_tokens", self.message_max_tokens as u64),
            ("patch_chars", self.patch_chars as u64),
            ("summary_patch_chars", self.summary_patch_chars as u64),
            ("timeout_secs", self.timeout_secs),
        ] {
            if v == 0 {
                return Err((key, "must be positive".into()));
            }
        }
        Ok(())
    }

    pub fn endpoint(&self) -> String {
        let base = self.base_url.trim_end_matches('/');
        if base.ends_with("/chat/completions") {
            base.to_string()
        } else {
            format!("{base}/chat/completions")
        }
    }
}

#[derive(Serialize)]
struct ChatRequest<'a> {
    model: &'a str,
    messages: [Message<'a>; 2],
    temperature: f64,
    max_tokens: u32,
}

#[derive(Serialize)]
struct Message<'a> {
    role: &'a str,
    content: &'a str,
}

fn request(p: &LlmParams, system: &str, user: &str, max_tokens: u32) -> Vec<u8> {
    serde_json::to_vec(&ChatRequest {
        model: &p.model,
        messages: [
            Message {
                role: "system",
                content: system,
            },
            Message {
                role: "user",
                content: user,
            },
        ],
        temperature: p.temperature,
        max_tokens,
    })
    .expect("a chat request serializes")
}

/// The first `n` characters of `s`, and whether anything was cut.
pub fn truncate_chars(s: &str, n: usize) -> (&str, bool) {
    match s.char_indices().nth(n) {
        Some((i, _)) => (&s[..i], true),
        None => (s, false),
    }
}

fn cut(s: &str, n: usize) -> String {
    let s = s.replace("\r\n", "\n");
    let s = s.trim();
    match truncate_chars(s, n) {
        (head, true) => format!("{head}\n[... truncated]"),
        (all, false) => all.to_string(),
    }
}

/// The changes as one unified diff: each file with `---`/`+++` headers and its hunks.
pub fn diff_text(diffs: &[FileChange]) -> String {
    let mut out = String::new();
    for f in diffs {
        out.push_str(&super::patch::file_header(f));
        match f.patch.as_deref() {
            Some(p) if !p.is_empty() => {
                out.push_str(p);
                if !p.ends_with('\n') {
                    out.push('\n');
                }
            }
            _ => out.push_str("(no textual diff)\n"),
        }
    }
    out
}

const SUMMARY_SYSTEM: &str =
    "You summarize merged GitHub pull requests accurately and concisely for software engineers.";

/// The request for a PR summary.
pub fn summary_request(p: &LlmParams, record: &PrRecord) -> Vec<u8> {
    let mut user = String::from(
        "Summarize the pull request below in 1 to 4 sentences: the problem it addresses and how \
         the change solves it. Use only what is shown; do not invent details. Reply with the \
         summary only, without a preamble.\n\n",
    );
    user.push_str(&format!("Repository: {}\n", record.repo_name));
    user.push_str(&format!("Title: {}\n", record.title.trim()));
    let body = cut(&record.body, TEXT_CHARS);
    if !body.is_empty() {
        user.push_str(&format!("\nDescription:\n{body}\n"));
    }
    if let Some(issue) = &record.related_issue {
        user.push_str(&format!("\nLinked issue: {}\n", issue.title.trim()));
        let body = cut(&issue.body, TEXT_CHARS);
        if !body.is_empty() {
            user.push_str(&format!("{body}\n"));
        }
    }
    if !record.commits.is_empty() {
        user.push_str("\nCommits:\n");
        for c in &record.commits {
            let subject = c.message.lines().next().unwrap_or("").trim();
            user.push_str(&format!("- {subject}\n"));
        }
    }
    let diffs: Vec<FileChange> = if record.files.is_empty() {
        record
            .commits
            .iter()
            .flat_map(|c| c.diffs.iter().cloned())
            .collect()
    } else {
        record.files.clone()
    };
    let diff = diff_text(&diffs);
    let (diff, truncated) = truncate_chars(&diff, p.summary_patch_chars);
    user.push_str(&format!(
        "\nChanges{}:\n{diff}",
        if truncated { " (truncated)" } else { "" }
    ));
    request(p, SUMMARY_SYSTEM, &user, p.summary_max_tokens)
}

const MESSAGE_SYSTEM: &str =
    "You rewrite git commit messages so that they describe the change clearly and accurately.";

/// The request for a rewrite of one commit's message; the patch is cut to `patch_chars`.
pub fn message_request(
    p: &LlmParams,
    record: &PrRecord,
    message: &str,
    diffs: &[FileChange],
) -> Vec<u8> {
    let patch = diff_text(diffs);
    let (patch, truncated) = truncate_chars(&patch, p.patch_chars);
    let user = format!(
        "Rewrite the commit message below so that it accurately describes the change in the \
         patch: a short imperative subject line and, if useful, a brief body explaining what \
         changed and why. Use only what the original message and the patch show. Reply with \
         the commit message only.\n\nRepository: {}\nPull request: {}\n\nOriginal message:\n{}\n\nPatch{}:\n{patch}",
        record.repo_name,
        record.title.trim(),
        message.replace("\r\n", "\n").trim(),
        if truncated { " (truncated)" } else { "" }
    );
    request(p, MESSAGE_SYSTEM, &user, p.message_max_tokens)
}

/// A blocking client for one endpoint.
pub struct Client {
    agent: ureq::Agent,
    url: String,
    api_key_env: Option<String>,
    max_retries: u32,
}

impl Client {
    pub fn new(p: &LlmParams) -> Client {
        let agent = crate::http::agent(Duration::from_secs(p.timeout_secs));
        Client {
            agent,
            url: p.endpoint(),
            api_key_env: p.api_key_env.clone(),
            max_retries: p.max_retries,
        }
    }

    /// POSTs a request body and returns the recorded form of the answer:
    /// `HTTP <code>\n<raw body>`. Retries transport failures, 429 and 5xx.
    pub fn send(&self, body: &[u8]) -> anyhow::Result<Vec<u8>> {
        let key =
            match &self.api_key_env {
                Some(var) => Some(std::env::var(var).map_err(|_| {
                    anyhow::anyhow!("llm.api_key_env names `{var}`, which is not set")
                })?),
                None => None,
            };
        crate::http::post_json_recorded(
            &self.agent,
            &self.url,
            key.as_deref(),
            body,
            self.max_retries,
        )
    }
}

/// The usable text of a recorded answer, or why there is none.
pub fn parse_reply(recorded: &[u8]) -> Result<String, String> {
    let (status, body) = crate::http::split_recorded(recorded)?;
    if status != 200 {
        let snippet: String = String::from_utf8_lossy(body).chars().take(200).collect();
        return Err(format!("HTTP {status}: {snippet}"));
    }
    let value: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| format!("the answer is not JSON: {e}"))?;
    let choice = value
        .get("choices")
        .and_then(|c| c.get(0))
        .ok_or("the answer has no choices")?;
    if choice.get("finish_reason").and_then(|f| f.as_str()) == Some("length") {
        return Err("the reply was cut off at max_tokens".into());
    }
    let content = choice
        .pointer("/message/content")
        .and_then(|c| c.as_str())
        .ok_or("the answer has no choices[0].message.content")?;
    let text = clean(content);
    if text.is_empty() {
        Err("the reply is empty".into())
    } else {
        Ok(text)
    }
}

/// Drops a leading `<think>…</think>` block and a code fence wrapping the whole reply.
fn clean(content: &str) -> String {
    let mut text = content.replace("\r\n", "\n");
    if text.trim_start().starts_with("<think>") {
        text = match text.find("</think>") {
            Some(end) => text[end + "</think>".len()..].to_string(),
            None => String::new(),
        };
    }
    let trimmed = text.trim();
    if let Some(inner) = trimmed.strip_prefix("```") {
        if let Some(inner) = inner.strip_suffix("```") {
            // Skip an info string on the opening line.
            let inner = inner.split_once('\n').map_or("", |(_, rest)| rest);
            return inner.trim().to_string();
        }
    }
    trimmed.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params() -> LlmParams {
        LlmParams {
            base_url: "http://127.0.0.1:9/v1/".into(),
            model: "m".into(),
            temperature: 0.0,
            summary_max_tokens: 512,
            message_max_tokens: 256,
            patch_chars: 10,
            summary_patch_chars: 8000,
            timeout_secs: 5,
            max_retries: 0,
            api_key_env: None,
        }
    }

    #[test]
    fn endpoint_appends_chat_completions_once() {
        assert_eq!(
            params().endpoint(),
            "http://127.0.0.1:9/v1/chat/completions"
        );
        let mut p = params();
        p.base_url = "http://h/v1/chat/completions".into();
        assert_eq!(p.endpoint(), "http://h/v1/chat/completions");
    }

    #[test]
    fn requests_are_canonical_json_with_a_truncated_patch() {
        let record = PrRecord {
            repo_name: "o/r".into(),
            title: "T".into(),
            ..Default::default()
        };
        let diffs = vec![FileChange {
            path: "a.py".into(),
            status: "modified".into(),
            patch: Some("@@ -1 +1 @@\n-a\n+b\n".into()),
            ..Default::default()
        }];
        let body = message_request(&params(), &record, "fix\r\n", &diffs);
        let text = String::from_utf8(body.clone()).unwrap();
        assert!(
            text.starts_with("{\"model\":\"m\",\"messages\":[{\"role\":\"system\",\"content\":")
        );
        assert!(text.ends_with(",\"temperature\":0.0,\"max_tokens\":256}"));
        // "--- a/a.py" is exactly ten characters.
        assert!(text.contains("Patch (truncated):\\n--- a/a.py\""), "{text}");
        assert!(text.contains("Original message:\\nfix\\n"), "{text}");
        assert_eq!(body, message_request(&params(), &record, "fix\r\n", &diffs));
    }

    #[test]
    fn replies_are_checked() {
        let ok = |content: &str| {
            format!(
                "HTTP 200\n{}",
                serde_json::json!({"choices":[{"message":{"role":"assistant","content":content},"finish_reason":"stop"}]})
            )
        };
        assert_eq!(
            parse_reply(ok(" Fix it. ").as_bytes()),
            Ok("Fix it.".into())
        );
        assert_eq!(
            parse_reply(ok("<think>hmm</think>\n```text\nFix it.\n```").as_bytes()),
            Ok("Fix it.".into())
        );
        assert_eq!(
            parse_reply(ok("  ").as_bytes()),
            Err("the reply is empty".into())
        );
        assert_eq!(parse_reply(b"HTTP 500\noops"), Err("HTTP 500: oops".into()));
        assert!(parse_reply(b"HTTP 200\n{not json")
            .unwrap_err()
            .contains("not JSON"));
        let cut = "HTTP 200\n{\"choices\":[{\"message\":{\"content\":\"a\"},\"finish_reason\":\"length\"}]}";
        assert_eq!(
            parse_reply(cut.as_bytes()),
            Err("the reply was cut off at max_tokens".into())
        );
    }

    #[test]
    fn truncation_counts_characters_not_bytes() {
        assert_eq!(truncate_chars("éééé", 2), ("éé", true));
        assert_eq!(truncate_chars("éé", 2), ("éé", false));
    }
}
