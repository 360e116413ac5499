//! Benchmark scores (`rollout` and `humaneval` outputs) as tables: per instance for SWE-style
//! resolution, per task for HumanEval.

use crate::pages::layout;
use maud::{html, Markup};
use serde_json::Value;

fn s(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// The score table, or `None` when the JSON is not a score.
pub fn render(v: &Value) -> Option<Markup> {
    let instances = v.get("instances")?.as_array()?;
    match v.get("benchmark")?.as_str()? {
        "swe" => Some(html! {
            p.score {
                "SWE-style resolution rate "
                strong #resolved-rate { (layout::metric(v["resolved_rate"].as_f64().unwrap_or(f64::NAN))) }
                " (" (instances.len()) " instances, " (s(&v["runs_per_instance"])) " run(s) each, policy " (s(&v["policy"])) ")"
            }
            table #score {
                thead { tr { th { "instance" } th.num { "run" } th { "resolved" } th.num { "FAIL_TO_PASS" } th.num { "PASS_TO_PASS" } th.num { "steps" } th { "stop" } } }
                tbody {
                    @for i in instances {
                        @for r in i["runs"].as_array().map(Vec::as_slice).unwrap_or(&[]) {
                            tr {
                                td.mono { (s(&i["instance_id"])) }
                                td.num { (s(&r["run"])) }
                                td { @if r["resolved"].as_bool() == Some(true) { span.badge.succeeded { "yes" } } @else { span.badge.failed { "no" } } }
                                td.num { (s(&r["fail_to_pass"][0])) "/" (s(&r["fail_to_pass"][1])) }
                                td.num { (s(&r["pass_to_pass"][0])) "/" (s(&r["pass_to_pass"][1])) }
                                td.num { (s(&r["steps"])) }
                                td { (s(&r["stop_reason"])) @if r["patch_applied"].as_bool() == Some(false) { " (patch not applied)" } }
                            }
                        }
                    }
                }
            }
        }),
        "humaneval" => {
            let ks = v.get("pass_at_k")?.as_object()?;
            Some(html! {
                p.score {
                    "HumanEval "
                    @for (k, p) in ks { "pass@" (k) " " strong { (layout::metric(p.as_f64().unwrap_or(f64::NAN))) } " " }
                    "(" (instances.len()) " tasks, n = " (s(&v["n"])) ", policy " (s(&v["policy"])) ")"
                }
                table #score {
                    thead { tr { th { "task" } th.num { "correct" } th.num { "n" } th { "first result" } } }
                    tbody {
                        @for i in instances {
                            tr {
                                td.mono { (s(&i["task_id"])) }
                                td.num { (s(&i["correct"])) }
                                td.num { (s(&i["n"])) }
                                td { (i["results"].as_array().and_then(|r| r.first()).map(s).unwrap_or_default()) }
                            }
                        }
                    }
                }
            })
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    #[test]
    fn swe_and_humaneval_scores_are_tables_with_escaped_ids() {
        let swe = json!({"benchmark": "swe", "resolved_rate": 0.5, "runs_per_instance": 1, "policy": "scripted",
            "instances": [{"instance_id": "<b>x</b>", "runs": [{"run": 0, "resolved": true, "fail_to_pass": [1, 1],
                "pass_to_pass": [2, 3], "steps": 4, "stop_reason": "submitted"}]}]});
        let html = super::render(&swe).unwrap().into_string();
        assert!(
            html.contains(r#"<strong id="resolved-rate">0.5000</strong>"#),
            "{html}"
        );
        assert!(
            html.contains("&lt;b&gt;x&lt;/b&gt;") && !html.contains("<b>x"),
            "{html}"
        );
        assert!(html.contains("<td class=\"num\">2/3</td>"), "{html}");
        let he = json!({"benchmark": "humaneval", "pass_at_k": {"1": 0.25}, "n": 1, "policy": "checkpoint",
            "instances": [{"task_id": "HumanEval/0", "correct": 1, "n": 1, "results": ["passed"]}]});
        let html = super::render(&he).unwrap().into_string();
        assert!(html.contains("pass@1 <strong>0.2500</strong>"), "{html}");
        assert!(
            html.contains("HumanEval/0") && html.contains("passed"),
            "{html}"
        );
        assert!(super::render(&json!({"benchmark": "other", "instances": []})).is_none());
        assert!(super::render(&json!({"a": 1})).is_none());
    }
}
