//! Trajectories and the chat template.
//!
//! A trajectory (one JSON object per line of a trajectories file):
//! ```json
//! {"id": "repo__task-1#0",            // optional
//!  "resolved": true,                  // optional: all tests pass (D_pass); absent = unknown
//!  "messages": [
//!    {"role": "system", "content": "You are a software engineer..."},
//!    {"role": "user", "content": "Fix the issue ..."},
//!    {"role": "assistant", "content": "Let me look.",
//!     "tool_calls": [{"id": "c1", "type": "function",
//!                     "function": {"name": "bash", "arguments": {"command": "ls"}}}]},
//!    {"role": "tool", "tool_call_id": "c1", "content": "setup.py\nsrc\n"},
//!    {"role": "assistant", "content": "", "tool_calls": [
//!        {"function": {"name": "submit", "arguments": "{}"}}]}]}
//! ```
//! `role` is `system`, `user`, `assistant` or `tool`; `content` may be null or absent;
//! `arguments` is an object or a JSON-encoded object string (OpenAI style). Unknown fields are
//! ignored.
//!
//! The template is Qwen's ChatML: `<|im_start|>{role}\n{content}<|im_end|>\n` per message,
//! tool messages keeping the role `tool`. Tool calls follow the assistant text, rendered as
//! the recipe's XML function calls, one per call:
//! `<function=NAME>\n<parameter=KEY>VALUE</parameter>\n...</function>` (keys sorted; string
//! values verbatim, others as JSON). For training, a message is split into segments: only an
//! assistant's content, tool calls and closing `<|im_end|>` are trainable; its
//! `<|im_start|>assistant\n` header, the newline after `<|im_end|>`, and every system, user and
//! tool token are not.

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

pub const IM_START: &str = "<|im_start|>";
pub const IM_END: &str = "<|im_end|>";

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Trajectory {
    #[serde(default)]
    pub id: Option<String>,
    #[serde(default)]
    pub resolved: Option<bool>,
    pub messages: Vec<Message>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Message {
    pub role: String,
    #[serde(default)]
    pub content: Option<String>,
    #[serde(default)]
    pub tool_calls: Option<Vec<ToolCall>>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ToolCall {
    #[serde(default)]
    pub id: Option<String>,
    pub function: FunctionCall,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FunctionCall {
    pub name: String,
    #[serde(default)]
    pub arguments: serde_json::Value,
}

/// A piece of rendered text and whether its tokens carry loss.
#[derive(Clone, Debug, PartialEq)]
pub struct Segment {
    pub text: String,
    pub trainable: bool,
}

/// Parses a JSONL trajectories file; errors name the line.
pub fn parse_trajectories(text: &str) -> Result<Vec<Trajectory>> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let t: Trajectory = serde_json::from_str(line)
            .with_context(|| format!("trajectories line {}: not a trajectory", i + 1))?;
        for m in &t.messages {
            if !matches!(m.role.as_str(), "system" | "user" | "assistant" | "tool") {
                bail!("trajectories line {}: unknown role `{}`", i + 1, m.role);
            }
        }
        out.push(t);
    }
    Ok(out)
}

fn render_tool_call(call: &ToolCall) -> Result<String> {
    let args = match &call.function.arguments {
        serde_json::Value::String(s) if s.trim().is_empty() => serde_json::json!({}),
        serde_json::Value::String(s) => serde_json::from_str(s).with_context(|| {
            format!("tool call `{}`: arguments are not JSON", call.function.name)
        })?,
        serde_json::Value::Null => serde_json::json!({}),
        v => v.clone(),
    };
    let obj = args.as_object().with_context(|| {
        format!(
            "tool call `{}`: arguments are not an object",
            call.function.name
        )
    })?;
    let mut keys: Vec<&String> = obj.keys().collect();
    keys.sort();
    let mut s = format!("<function={}>\n", call.function.name);
    for k in keys {
        let v = match &obj[k] {
            serde_json::Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        s.push_str(&format!("<parameter={k}>{v}</parameter>\n"));
    }
    s.push_str("</function>");
    Ok(s)
}

/// Renders messages into segments (see the module docs).
pub fn render_segments(messages: &[Message]) -> Result<Vec<Segment>> {
    let mut out = Vec::new();
    let push = |out: &mut Vec<Segment>, text: String, trainable: bool| {
        if !text.is_empty() {
            out.push(Segment { text, trainable });
        }
    };
    for m in messages {
        let content = m.content.clone().unwrap_or_default();
        if m.role == "assistant" {
            push(&mut out, format!("{IM_START}assistant\n"), false);
            let mut body = content;
            for call in m.tool_calls.iter().flatten() {
                if !body.is_empty() {
                    body.push('\n');
                }
                body.push_str(&render_tool_call(call)?);
            }
            body.push_str(IM_END);
            push(&mut out, body, true);
            push(&mut out, "\n".into(), false);
        } else {
            push(
                &mut out,
                format!("{IM_START}{}\n{content}{IM_END}\n", m.role),
                false,
            );
        }
    }
    Ok(out)
}

/// The whole conversation as one string (mid-training renders trajectories this way).
pub fn render_text(messages: &[Message]) -> Result<String> {
    Ok(render_segments(messages)?
        .into_iter()
        .map(|s| s.text)
        .collect())
}

/// A generation prompt: the conversation followed by `<|im_start|>assistant\n`.
pub fn render_prompt(messages: &[Message]) -> Result<String> {
    Ok(format!("{}{IM_START}assistant\n", render_text(messages)?))
}
