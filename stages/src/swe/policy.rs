//! Policies behind one interface: given the conversation so far, the next assistant turn.
//!
//! - `scripted`: the reference demonstrator. It lists the repository, runs the failing tests,
//!   views each file the gold patch edits, applies every hunk with `str_replace_editor`,
//!   reruns the tests and submits. With `withhold_fraction > 0` it leaves the fix out on a
//!   seeded fraction of rollouts (it explores and submits nothing), which gives D_fail real
//!   unresolved trajectories. Deterministic: a pure function of the instance and the step.
//! - `endpoint`: any OpenAI-compatible `/chat/completions` server, with the three tools as
//!   function schemas. Requests and responses are observations (source `llm`), keyed by the
//!   request body as sent (no URL, no key), so a replay answers from the record.
//! - `checkpoint`: our own Qwen2 checkpoint, generating in-process with the ChatML template
//!   and parsing the recipe's XML function calls out of the text. Deterministic given the
//!   seed, so a replay recomputes it.
//!
//! Turns whose text carries no tool call are answered by the rollout with a reminder.

use super::Recorder;
use anyhow::{anyhow, bail, Context};
use env::instance::TaskInstance;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// A chat message as rollouts record it (the released data's shape: `tool_calls` on the
/// assistant, `tool_call_id` on tool results).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ChatMessage {
    pub role: String,
    pub content: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Vec<Call>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
}

impl ChatMessage {
    pub fn text(role: &str, content: impl Into<String>) -> ChatMessage {
        ChatMessage {
            role: role.into(),
            content: Some(content.into()),
            tool_calls: None,
            tool_call_id: None,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Call {
    pub id: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub function: CallFunction,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CallFunction {
    pub name: String,
    /// An object (OpenAI sends a JSON string; it is parsed on the way in).
    pub arguments: serde_json::Value,
}

/// One assistant turn.
#[derive(Clone, Debug, PartialEq)]
pub struct Turn {
    pub content: String,
    pub calls: Vec<(String, serde_json::Value)>,
}

/// What a policy sees besides the conversation.
pub struct TurnContext<'a> {
    pub instance: &'a TaskInstance,
    /// 0-based rollout index of this instance (k runs).
    pub run: u32,
    pub seed: u64,
    pub recorder: &'a Recorder,
}

pub trait Policy: Send + Sync {
    /// Recorded in every trajectory's metadata.
    fn describe(&self) -> String;
    fn next(&self, cx: &TurnContext, messages: &[ChatMessage]) -> anyhow::Result<Turn>;
}

pub const SYSTEM_PROMPT: &str = "You are a software engineer working in a repository at /testbed. \
You have three tools: `bash` (runs a command in your shell session, which starts in /testbed; `cd` and `export` carry over between calls), \
`str_replace_editor` (view, create, str_replace, insert, undo_edit on absolute paths; old_str must match exactly once) \
and `submit` (ends the task; your changes in /testbed are the patch). Fix the issue, check your fix, then submit.";

pub fn task_prompt(instance: &TaskInstance) -> String {
    format!(
        "<issue>\n{}\n</issue>\n\nThe repository is checked out at /testbed. Make the smallest change to non-test files that resolves the issue.",
        instance.problem_statement.trim()
    )
}

/// The tools as OpenAI function schemas.
pub fn tool_schemas() -> serde_json::Value {
    serde_json::json!([
        {"type": "function", "function": {"name": "bash",
            "description": "Run a bash command in your persistent shell session (starts in /testbed; cd and export carry over).",
            "parameters": {"type": "object", "properties": {"command": {"type": "string"}}, "required": ["command"]}}},
        {"type": "function", "function": {"name": "str_replace_editor",
            "description": "View, create and edit files. old_str must match exactly once.",
            "parameters": {"type": "object", "properties": {
                "command": {"type": "string", "enum": ["view", "create", "str_replace", "insert", "undo_edit"]},
                "path": {"type": "string"}, "file_text": {"type": "string"}, "old_str": {"type": "string"},
                "new_str": {"type": "string"}, "insert_line": {"type": "integer"},
                "view_range": {"type": "array", "items": {"type": "integer"}}},
                "required": ["command", "path"]}}},
        {"type": "function", "function": {"name": "submit",
            "description": "Submit the changes in /testbed and end the task.",
            "parameters": {"type": "object", "properties": {}}}}
    ])
}

// ---------------------------------------------------------------------------------------------
// scripted

pub struct Scripted {
    pub withhold_fraction: f64,
}

/// A hunk of a unified diff as an editor replacement.
#[derive(Clone, Debug, PartialEq)]
pub struct Replacement {
    pub path: String,
    pub old: String,
    pub new: String,
    /// First line of the hunk in the old file (1-based).
    pub line: usize,
    pub old_lines: usize,
}

/// Splits a unified diff into per-hunk replacements (context + removed → context + added).
pub fn replacements(patch: &str) -> anyhow::Result<Vec<Replacement>> {
    let mut out = Vec::new();
    let mut path: Option<String> = None;
    let mut cur: Option<(Replacement, Vec<String>, Vec<String>)> = None;
    let flush = |cur: &mut Option<(Replacement, Vec<String>, Vec<String>)>,
                 out: &mut Vec<Replacement>| {
        if let Some((mut r, old, new)) = cur.take() {
            r.old = old.join("\n");
            r.new = new.join("\n");
            r.old_lines = old.len();
            out.push(r);
        }
    };
    for line in patch.lines() {
        if let Some(p) = line.strip_prefix("+++ ") {
            flush(&mut cur, &mut out);
            path = Some(p.trim().trim_start_matches("b/").to_string());
        } else if line.starts_with("--- ")
            || line.starts_with("diff --git")
            || line.starts_with("index ")
        {
            flush(&mut cur, &mut out);
        } else if let Some(h) = line.strip_prefix("@@ ") {
            flush(&mut cur, &mut out);
            let p = path.clone().context("a hunk before any file header")?;
            let start = h
                .split_whitespace()
                .next()
                .and_then(|s| s.strip_prefix('-'))
                .and_then(|s| s.split(',').next())
                .and_then(|s| s.parse::<usize>().ok())
                .with_context(|| format!("unreadable hunk header `@@ {h}`"))?;
            cur = Some((
                Replacement {
                    path: p,
                    old: String::new(),
                    new: String::new(),
                    line: start,
                    old_lines: 0,
                },
                Vec::new(),
                Vec::new(),
            ));
        } else if let Some((_, old, new)) = cur.as_mut() {
            if let Some(t) = line.strip_prefix('-') {
                old.push(t.to_string());
            } else if let Some(t) = line.strip_prefix('+') {
                new.push(t.to_string());
            } else if let Some(t) = line.strip_prefix(' ') {
                old.push(t.to_string());
                new.push(t.to_string());
            } else if line.is_empty() {
                old.push(String::new());
                new.push(String::new());
            }
        }
    }
    flush(&mut cur, &mut out);
    Ok(out)
}

impl Scripted {
    fn withholds(&self, cx: &TurnContext) -> bool {
        if self.withhold_fraction <= 0.0 {
            return false;
        }
        let mut rng = model::rng::Rng::for_label(
            cx.seed,
            &format!("withhold/{}/{}", cx.instance.instance_id, cx.run),
        );
        rng.uniform() < self.withhold_fraction
    }

    /// The whole plan; turn `i` is the `i`-th element.
    pub fn plan(&self, cx: &TurnContext) -> anyhow::Result<Vec<Turn>> {
        let inst = cx.instance;
        let call = |content: &str, name: &str, args: serde_json::Value| Turn {
            content: content.into(),
            calls: vec![(name.into(), args)],
        };
        let tests: Vec<String> = inst
            .fail_to_pass
            .iter()
            .take(5)
            .map(|t| env::container::shell_quote(t))
            .collect();
        let run_tests = format!(
            "python3 -m pytest -q -p no:cacheprovider {} 2>&1 | tail -n 30",
            tests.join(" ")
        );
        let mut plan = vec![
            call(
                "Let me look at the repository layout first.",
                "bash",
                serde_json::json!({"command": "ls"}),
            ),
            call(
                "Now I will reproduce the failure by running the failing tests.",
                "bash",
                serde_json::json!({"command": run_tests}),
            ),
        ];
        if self.withholds(cx) {
            plan.push(call(
                "I could not find the cause with confidence; submitting without changes.",
                "submit",
                serde_json::json!({}),
            ));
            return Ok(plan);
        }
        let reps = replacements(&inst.patch)?;
        if reps.is_empty() {
            bail!("{}: the gold patch has no hunks", inst.instance_id);
        }
        for r in &reps {
            let from = r.line.saturating_sub(5).max(1);
            let to = r.line + r.old_lines + 5;
            plan.push(call(
                &format!("Let me read the code around line {} of {}.", r.line, r.path),
                "bash",
                serde_json::json!({"command": format!("nl -ba {} | sed -n '{from},{to}p'", env::container::shell_quote(&r.path))}),
            ));
        }
        for r in &reps {
            plan.push(call(
                &format!("This is the faulty logic in {}; fixing it.", r.path),
                "str_replace_editor",
                serde_json::json!({"command": "str_replace", "path": format!("/testbed/{}", r.path), "old_str": r.old, "new_str": r.new}),
            ));
        }
        plan.push(call(
            "Rerunning the failing tests to check the fix.",
            "bash",
            serde_json::json!({"command": run_tests}),
        ));
        plan.push(call(
            "The tests pass now; submitting.",
            "submit",
            serde_json::json!({}),
        ));
        Ok(plan)
    }
}

impl Policy for Scripted {
    fn describe(&self) -> String {
        format!(
            "scripted-reference(withhold_fraction={})",
            self.withhold_fraction
        )
    }

    fn next(&self, cx: &TurnContext, messages: &[ChatMessage]) -> anyhow::Result<Turn> {
        let done = messages.iter().filter(|m| m.role == "assistant").count();
        let plan = self.plan(cx)?;
        Ok(plan.get(done).cloned().unwrap_or(Turn {
            content: "Submitting.".into(),
            calls: vec![("submit".into(), serde_json::json!({}))],
        }))
    }
}

// ---------------------------------------------------------------------------------------------
// XML function calls (the recipe's rendering), parsed back from model text

/// Parses `<function=NAME>\n<parameter=KEY>VALUE</parameter>…</function>` blocks. Returns
/// the text before the first block and the calls. Integer-looking values of `insert_line`
/// and JSON arrays of `view_range` are decoded.
pub fn parse_xml_calls(text: &str) -> (String, Vec<(String, serde_json::Value)>) {
    let mut calls = Vec::new();
    let content = text
        .split("<function=")
        .next()
        .unwrap_or("")
        .trim()
        .to_string();
    let mut rest = text;
    while let Some(start) = rest.find("<function=") {
        let after = &rest[start + "<function=".len()..];
        let Some(name_end) = after.find('>') else {
            break;
        };
        let name = after[..name_end].trim().to_string();
        let body_all = &after[name_end + 1..];
        let (body, next) = match body_all.find("</function>") {
            Some(e) => (&body_all[..e], &body_all[e + "</function>".len()..]),
            None => (body_all, ""),
        };
        let mut args = serde_json::Map::new();
        let mut b = body;
        while let Some(ps) = b.find("<parameter=") {
            let a = &b[ps + "<parameter=".len()..];
            let Some(ke) = a.find('>') else { break };
            let key = a[..ke].trim().to_string();
            let v = &a[ke + 1..];
            let (value, after_v) = match v.find("</parameter>") {
                Some(e) => (&v[..e], &v[e + "</parameter>".len()..]),
                None => (v, ""),
            };
            let decoded = match key.as_str() {
                "insert_line" | "view_range" => serde_json::from_str(value.trim())
                    .unwrap_or_else(|_| serde_json::Value::String(value.to_string())),
                _ => serde_json::Value::String(value.to_string()),
            };
            args.insert(key, decoded);
            b = after_v;
        }
        if !name.is_empty() {
            calls.push((name, serde_json::Value::Object(args)));
        }
        rest = next;
    }
    (content, calls)
}

// ---------------------------------------------------------------------------------------------
// endpoint

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointParams {
    /// API root, e.g. `http://127.0.0.1:8000/v1`.
    pub base_url: String,
    pub model: String,
    #[serde(default)]
    pub temperature: f64,
    #[serde(default = "default_max_tokens")]
    pub max_tokens: u32,
    #[serde(default = "default_timeout")]
    pub timeout_secs: u64,
    /// Environment variable holding a bearer token (never recorded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key_env: Option<String>,
}

fn default_max_tokens() -> u32 {
    4096
}
fn default_timeout() -> u64 {
    600
}

pub struct Endpoint {
    pub params: EndpointParams,
    agent: ureq::Agent,
}

impl Endpoint {
    pub fn new(params: EndpointParams) -> Endpoint {
        let agent = crate::http::agent(Duration::from_secs(params.timeout_secs));
        Endpoint { params, agent }
    }

    pub fn url(&self) -> String {
        let base = self.params.base_url.trim_end_matches('/');
        if base.ends_with("/chat/completions") {
            base.to_string()
        } else {
            format!("{base}/chat/completions")
        }
    }

    /// The request body, in a fixed field order: the observation key.
    pub fn request(&self, messages: &[ChatMessage]) -> Vec<u8> {
        let msgs: Vec<serde_json::Value> = messages
            .iter()
            .map(|m| {
                let mut v = serde_json::json!({"role": m.role, "content": m.content});
                if let Some(calls) = &m.tool_calls {
                    v["tool_calls"] = calls
                        .iter()
                        .map(|c| serde_json::json!({"id": c.id, "type": "function", "function": {"name": c.function.name, "arguments": c.function.arguments.to_string()}}))
                        .collect();
                }
                if let Some(id) = &m.tool_call_id {
                    v["tool_call_id"] = serde_json::json!(id);
                }
                v
            })
            .collect();
        let body = serde_json::json!({
            "model": self.params.model,
            "messages": msgs,
            "tools": tool_schemas(),
            "temperature": self.params.temperature,
            "max_tokens": self.params.max_tokens,
        });
        serde_json::to_vec(&body).expect("request serializes")
    }

    fn send(&self, body: &[u8]) -> anyhow::Result<Vec<u8>> {
        let key = match &self.params.api_key_env {
            Some(var) => Some(
                std::env::var(var)
                    .with_context(|| format!("the API key variable `{var}` is not set"))?,
            ),
            None => None,
        };
        let url = self.url();
        let recorded = crate::http::post_json_recorded(&self.agent, &url, key.as_deref(), body, 3)?;
        // Rate limits and server errors that outlast the retries are not answers here.
        match crate::http::split_recorded(&recorded) {
            Ok((status, _)) if status == 429 || status >= 500 => {
                bail!("POST {url}: HTTP {status}")
            }
            _ => Ok(recorded),
        }
    }
}

/// Reads a recorded `HTTP <code>\n<body>` chat completion into a turn.
pub fn parse_completion(recorded: &[u8]) -> anyhow::Result<Turn> {
    let (status, body) = crate::http::split_recorded(recorded).map_err(|e| anyhow!(e))?;
    if status != 200 {
        let snippet: String = String::from_utf8_lossy(body).chars().take(300).collect();
        bail!("the endpoint answered HTTP {status}: {snippet}");
    }
    let v: serde_json::Value =
        serde_json::from_slice(body).context("the endpoint's answer is not JSON")?;
    let msg = v
        .pointer("/choices/0/message")
        .ok_or_else(|| anyhow!("the endpoint's answer has no choices[0].message"))?;
    let content = msg
        .get("content")
        .and_then(|c| c.as_str())
        .unwrap_or("")
        .to_string();
    let mut calls = Vec::new();
    for c in msg
        .get("tool_calls")
        .and_then(|t| t.as_array())
        .into_iter()
        .flatten()
    {
        let name = c
            .pointer("/function/name")
            .and_then(|n| n.as_str())
            .unwrap_or("")
            .to_string();
        let args = match c.pointer("/function/arguments") {
            Some(serde_json::Value::String(s)) => {
                serde_json::from_str(s).unwrap_or(serde_json::Value::String(s.clone()))
            }
            Some(v) => v.clone(),
            None => serde_json::json!({}),
        };
        calls.push((name, args));
    }
    if calls.is_empty() {
        let (before, xml) = parse_xml_calls(&content);
        if !xml.is_empty() {
            return Ok(Turn {
                content: before,
                calls: xml,
            });
        }
    }
    Ok(Turn { content, calls })
}

impl Policy for Endpoint {
    fn describe(&self) -> String {
        format!(
            "endpoint(model={}, temperature={})",
            self.params.model, self.params.temperature
        )
    }

    fn next(&self, cx: &TurnContext, messages: &[ChatMessage]) -> anyhow::Result<Turn> {
        let body = self.request(messages);
        let recorded = cx.recorder.observe("llm", &body, || self.send(&body))?;
        parse_completion(&recorded)
    }
}

// ---------------------------------------------------------------------------------------------
// checkpoint

pub struct Checkpoint {
    pub model: model::qwen2::Qwen2,
    pub tokenizer: tokenizers::Tokenizer,
    pub label: String,
    pub max_new_tokens: usize,
    pub temperature: f64,
    /// The model's context; the prompt keeps its last `context - max_new_tokens` tokens.
    pub context: usize,
}

impl Policy for Checkpoint {
    fn describe(&self) -> String {
        format!(
            "checkpoint({}, temperature={})",
            self.label, self.temperature
        )
    }

    fn next(&self, cx: &TurnContext, messages: &[ChatMessage]) -> anyhow::Result<Turn> {
        let msgs: Vec<model::chat::Message> =
            serde_json::from_value(serde_json::to_value(messages)?)?;
        let prompt = model::chat::render_prompt(&msgs)?;
        let enc = self
            .tokenizer
            .encode(prompt.as_str(), false)
            .map_err(|e| anyhow!("tokenizing the prompt: {e}"))?;
        let ids = enc.get_ids();
        let keep = self.context.saturating_sub(self.max_new_tokens).max(1);
        let ids = &ids[ids.len().saturating_sub(keep)..];
        let stop: Vec<u32> = self
            .tokenizer
            .token_to_id(model::chat::IM_END)
            .into_iter()
            .collect();
        let sampling = if self.temperature <= 0.0 {
            model::generate::Sampling::Greedy
        } else {
            let step = messages.iter().filter(|m| m.role == "assistant").count() as u64;
            model::generate::Sampling::Sample {
                temperature: self.temperature,
                top_p: 0.95,
                seed: model::rng::Rng::for_label(
                    cx.seed,
                    &format!("{}/{}/{step}", cx.instance.instance_id, cx.run),
                )
                .next_u64(),
            }
        };
        let out = model::generate::generate(
            &self.model,
            ids,
            self.max_new_tokens,
            &sampling,
            &stop,
            true,
        )?;
        let text = self
            .tokenizer
            .decode(&out, true)
            .map_err(|e| anyhow!("decoding: {e}"))?;
        let (content, calls) = parse_xml_calls(&text);
        Ok(Turn { content, calls })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hunks_become_replacements() {
        let patch = "diff --git a/pkg/m.py b/pkg/m.py\nindex 1..2 100644\n--- a/pkg/m.py\n+++ b/pkg/m.py\n@@ -10,4 +10,4 @@ def f(x):\n     a = 1\n-    return x < a\n+    return x >= a\n \n     pass\n";
        let r = replacements(patch).unwrap();
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].path, "pkg/m.py");
        assert_eq!(r[0].line, 10);
        assert_eq!(r[0].old, "    a = 1\n    return x < a\n\n    pass");
        assert_eq!(r[0].new, "    a = 1\n    return x >= a\n\n    pass");
    }

    #[test]
    fn xml_calls_round_trip_the_chat_rendering() {
        let call = model::chat::ToolCall {
            id: None,
            function: model::chat::FunctionCall {
                name: "str_replace_editor".into(),
                arguments: serde_json::json!({"command": "view", "path": "/testbed/a.py", "view_range": [1, 5]}),
            },
        };
        let msgs = vec![model::chat::Message {
            role: "assistant".into(),
            content: Some("Looking.".into()),
            tool_calls: Some(vec![call]),
        }];
        let text = model::chat::render_text(&msgs).unwrap();
        let (content, calls) = parse_xml_calls(&text);
        assert!(content.ends_with("Looking."));
        assert_eq!(calls.len(), 1);
        assert_eq!(calls[0].0, "str_replace_editor");
        assert_eq!(
            calls[0].1,
            serde_json::json!({"command": "view", "path": "/testbed/a.py", "view_range": [1, 5]})
        );
        assert_eq!(parse_xml_calls("no calls here").1, vec![]);
    }

    #[test]
    fn completions_with_tool_calls_or_xml_are_read() {
        let r = br#"HTTP 200
{"choices":[{"message":{"content":"hi","tool_calls":[{"id":"a","type":"function","function":{"name":"bash","arguments":"{\"command\":\"ls\"}"}}]}}]}"#;
        let t = parse_completion(r).unwrap();
        assert_eq!(
            t.calls,
            vec![("bash".to_string(), serde_json::json!({"command": "ls"}))]
        );
        let x = b"HTTP 200\n{\"choices\":[{\"message\":{\"content\":\"ok\\n<function=submit>\\n</function>\"}}]}";
        assert_eq!(parse_completion(x).unwrap().calls[0].0, "submit");
        assert!(parse_completion(b"HTTP 500\noops").is_err());
    }
}
