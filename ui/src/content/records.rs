//! One page of a JSONL / zstd-JSONL blob, each record shown for what it is: a PR record
//! (`collect`, `filter`), a reconstructed sample (`reconstruct`), a trajectory (`rollout`,
//! SFT data) as a conversation with its tool calls and observations, or any other JSON as
//! such. Every string in a record is untrusted text: it is only ever put into the page
//! through maud's escaping.

use crate::pages::layout;
use ledger::records::{Page, Record};
use maud::{html, Markup};
use serde_json::Value;

/// What a record is, judged by its fields.
#[derive(Debug, PartialEq, Eq)]
pub enum Shape {
    Trajectory,
    PullRequest,
    Sample,
    Json,
    /// Not JSON (or cut short): shown as text.
    Text,
}

pub fn shape(v: Option<&Value>) -> Shape {
    let Some(Value::Object(o)) = v else {
        return if v.is_some() {
            Shape::Json
        } else {
            Shape::Text
        };
    };
    if o.get("messages").is_some_and(Value::is_array) {
        Shape::Trajectory
    } else if o.contains_key("title") && o.contains_key("body") && o.contains_key("commits") {
        Shape::PullRequest
    } else if o.get("text").is_some_and(Value::is_string) {
        Shape::Sample
    } else {
        Shape::Json
    }
}

pub fn render(page: &Page, base_query: &crate::web::Query, per_page: usize) -> Markup {
    let first = page.first;
    html! {
        div.pager {
            @if first > 0 {
                a href=(base_query.with("page", &(first / per_page as u64).saturating_sub(1).to_string())) { "← previous" }
            }
            span #record-range {
                @if page.records.is_empty() { "no records here" }
                @else { "records " (first + 1) "–" (first + page.records.len() as u64) }
                " · " (format!("{:?}", page.encoding).to_lowercase()) " JSONL"
            }
            @if page.more {
                a href=(base_query.with("page", &(first / per_page as u64 + 1).to_string())) { "next →" }
            }
        }
        @if let Some(why) = &page.stopped { p.warning { (why) } }
        div.records {
            @for r in &page.records { (record(r)) }
        }
    }
}

fn record(r: &Record) -> Markup {
    let value: Option<Value> = (!r.truncated())
        .then(|| serde_json::from_slice(&r.bytes).ok())
        .flatten();
    let shape = shape(value.as_ref());
    html! {
        article.record data-shape=(format!("{shape:?}").to_lowercase()) data-index=(r.index) {
            div.record-head {
                "record " (r.index + 1) " · line " (r.line) " · " (layout::size(r.len))
                @if r.truncated() { " · " span.warning { "cut at " (layout::size(r.bytes.len() as u64)) " for display" } }
            }
            @match (&shape, &value) {
                (Shape::Trajectory, Some(v)) => (trajectory(v)),
                (Shape::PullRequest, Some(v)) => (pull_request(v)),
                (Shape::Sample, Some(v)) => (sample(v)),
                (Shape::Json, Some(v)) => pre { (layout::pretty(v)) },
                _ => pre { (String::from_utf8_lossy(&r.bytes)) },
            }
        }
    }
}

fn text_of(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// The scalar fields of an object, for a record's header line.
fn scalars(v: &Value, skip: &[&str]) -> Markup {
    html! {
        dl.facts {
            @if let Value::Object(o) = v {
                @for (k, x) in o {
                    @if !skip.contains(&k.as_str()) && !x.is_object() && !x.is_array() {
                        dt { (k) } dd { (text_of(x)) }
                    }
                }
            }
        }
    }
}

fn trajectory(v: &Value) -> Markup {
    let messages = v["messages"].as_array().map(Vec::as_slice).unwrap_or(&[]);
    html! {
        (scalars(v, &["patch"]))
        div.conversation {
            @for m in messages {
                @let role = m["role"].as_str().unwrap_or("?");
                div class={ "msg " (role_class(role)) } {
                    div.role {
                        (role)
                        @if let Some(id) = m.get("tool_call_id").and_then(Value::as_str) { " · answers " span.mono { (id) } }
                        @if let Some(name) = m.get("name").and_then(Value::as_str) { " · " span.mono { (name) } }
                    }
                    @let content = text_of(&m["content"]);
                    @if !content.is_empty() { div.text-body { (content) } }
                    @if let Some(calls) = m.get("tool_calls").and_then(Value::as_array) {
                        @for c in calls {
                            @let f = c.get("function").unwrap_or(c);
                            div.call {
                                span.fn { (text_of(&f["name"])) }
                                @if let Some(id) = c.get("id").and_then(Value::as_str) { " " span.note { "call " (id) } }
                                (arguments(&f["arguments"]))
                            }
                        }
                    }
                }
            }
        }
        @if let Some(patch) = v.get("patch").and_then(Value::as_str) {
            @if !patch.is_empty() { details { summary { "patch (" (layout::size(patch.len() as u64)) ")" } pre { (patch) } } }
        }
    }
}

fn role_class(role: &str) -> &'static str {
    match role {
        "system" => "system",
        "user" => "user",
        "assistant" => "assistant",
        "tool" => "tool",
        _ => "other",
    }
}

/// Tool-call arguments: an object (or a JSON-encoded object string, OpenAI style) as one
/// field per line.
fn arguments(a: &Value) -> Markup {
    let parsed;
    let a = match a {
        Value::String(s) => match serde_json::from_str::<Value>(s) {
            Ok(v @ Value::Object(_)) => {
                parsed = v;
                &parsed
            }
            _ => a,
        },
        _ => a,
    };
    html! {
        @match a {
            Value::Object(o) => {
                @for (k, x) in o {
                    div { span.mono { (k) ":" } pre { (text_of(x)) } }
                }
            }
            Value::Null => {},
            other => pre { (text_of(other)) },
        }
    }
}

fn pull_request(v: &Value) -> Markup {
    let list = |k: &str| v[k].as_array().map(Vec::as_slice).unwrap_or(&[]).to_vec();
    let (commits, files, comments, reviews) = (
        list("commits"),
        list("files"),
        list("comments"),
        list("reviews"),
    );
    html! {
        div.pr-title { "#" (text_of(&v["number"])) " " span.title { (text_of(&v["title"])) } }
        div.note {
            (text_of(&v["repo_name"])) " · by " (text_of(&v["author"]))
            @if v["merged"].as_bool() == Some(true) { " · merged " (text_of(&v["merged_at"])) }
        }
        h3 { "Body" }
        div.text-body.pr-body { (text_of(&v["body"])) }
        @if !commits.is_empty() {
            h3 { "Commits (" (commits.len()) ")" }
            table { tbody {
                @for c in &commits {
                    tr { td.mono { (layout::short(c["sha"].as_str().unwrap_or(""))) } td { div.text-body { (text_of(&c["message"])) } } td { (text_of(&c["author"])) } }
                }
            } }
        }
        @if !files.is_empty() {
            h3 { "Files (" (files.len()) ")" }
            @for f in &files {
                details {
                    summary { span.mono { (text_of(&f["path"])) } " " (text_of(&f["status"])) " +" (text_of(&f["additions"])) " −" (text_of(&f["deletions"])) }
                    @if let Some(p) = f["patch"].as_str() { pre { (p) } }
                }
            }
        }
        @for c in comments.iter().chain(&reviews) {
            div.msg.user { div.role { "comment · " (text_of(&c["author"])) } div.text-body { (text_of(&c["body"])) } }
        }
        @if let Some(issue) = v.get("related_issue").filter(|i| i.is_object()) {
            h3 { "Issue #" (text_of(&issue["number"])) " " (text_of(&issue["title"])) }
            div.text-body { (text_of(&issue["body"])) }
        }
    }
}

fn sample(v: &Value) -> Markup {
    html! {
        (scalars(v, &["text"]))
        div.text-body.sample-text { (text_of(&v["text"])) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn shapes_are_told_by_their_fields() {
        assert_eq!(shape(Some(&json!({"messages": []}))), Shape::Trajectory);
        assert_eq!(
            shape(Some(&json!({"title": "", "body": "", "commits": []}))),
            Shape::PullRequest
        );
        assert_eq!(shape(Some(&json!({"text": "x"}))), Shape::Sample);
        assert_eq!(shape(Some(&json!([1]))), Shape::Json);
        assert_eq!(shape(None), Shape::Text);
    }

    #[test]
    fn hostile_text_in_a_record_is_escaped() {
        let hostile = r#"<script>alert(1)</script><img src=x onerror="alert(2)">"#;
        let pr = json!({"number": 1, "title": hostile, "body": hostile, "commits": [{"sha": "abc", "message": hostile}],
            "files": [{"path": hostile, "status": "modified", "additions": 1, "deletions": 0, "patch": hostile}]});
        let t = json!({"messages": [{"role": hostile, "content": hostile,
            "tool_calls": [{"id": hostile, "function": {"name": hostile, "arguments": {"command": hostile}}}]}]});
        for v in [pr, t] {
            let r = Record {
                index: 0,
                line: 1,
                bytes: serde_json::to_vec(&v).unwrap(),
                len: 0,
            };
            let html = record(&Record {
                len: r.bytes.len() as u64,
                ..r
            })
            .into_string();
            assert!(!html.contains("<script>"), "{html}");
            assert!(!html.contains("<img"), "{html}");
            assert!(
                html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"),
                "{html}"
            );
        }
    }
}
