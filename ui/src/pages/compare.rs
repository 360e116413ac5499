//! Compare: two or more runs (or ablation arms) side by side against the first, the baseline:
//! the first divergent step, config differences highlighted, metrics with deltas, the loss
//! curves overlaid on one chart, and the outputs that differ. The alignment is
//! `replay::diff`'s (steps by node id), once per run against the baseline.

use super::layout::{self, missing, Frame, Nav};
use crate::content::{curve_series, WHOLE_LIMIT};
use crate::state::View;
use crate::svg::chart;
use crate::web::{Page, PageError, PageResult, Query};
use ledger::event::EventKind;
use ledger::Hash;
use maud::{html, Markup};
use std::collections::BTreeMap;

/// Runs compared at most.
const MAX_RUNS: usize = 8;

pub fn page(view: &View, query: &Query) -> PageResult {
    let mut runs: Vec<Hash> = Vec::new();
    for what in query.all("run") {
        let h = crate::web::resolve(view, what.trim())?;
        if !view.ledger.index().is_run(&h)? {
            return Err(PageError::BadRequest(format!(
                "{h} is an artifact, not a run; the lineage page compares artifacts"
            )));
        }
        if !runs.contains(&h) {
            runs.push(h);
        }
    }
    if runs.len() > MAX_RUNS {
        return Err(PageError::BadRequest(format!(
            "compare at most {MAX_RUNS} runs at a time"
        )));
    }
    let frame = |title: &str, body: Markup| {
        Page::Html(layout::page(
            Frame {
                title,
                nav: Nav::Compare,
                events: view.ledger.event_count(),
            },
            body,
        ))
    };
    if runs.len() < 2 {
        return Ok(frame("Compare", chooser(view, &runs)));
    }
    let base = runs[0];
    let diffs: Vec<replay::DiffReport> = runs[1..]
        .iter()
        .map(|r| replay::diff(&view.ledger, &base, r))
        .collect::<anyhow::Result<_>>()?;
    let hex: Vec<String> = runs.iter().map(Hash::to_hex).collect();
    let name = |i: usize| -> String {
        let exp = view
            .runs
            .get(&runs[i])
            .map(|r| r.experiment.clone())
            .unwrap_or_default();
        format!("{} {exp}", layout::short(&hex[i]))
    };

    // Config: (node, key) → the value of every run (the baseline's where a run agrees).
    let mut config: BTreeMap<(String, String), Vec<Option<serde_json::Value>>> = BTreeMap::new();
    // Metrics: (node, name) → every run's value.
    let mut metrics: BTreeMap<(String, String), Vec<Option<f64>>> = BTreeMap::new();
    let mut outputs: BTreeMap<(String, String), Vec<Option<String>>> = BTreeMap::new();
    for (i, d) in diffs.iter().enumerate() {
        let col = i + 1;
        for s in &d.steps {
            for (k, [x, y]) in &s.config {
                let row = config
                    .entry((s.node.clone(), k.clone()))
                    .or_insert_with(|| vec![None; runs.len()]);
                row[0] = Some(x.clone());
                row[col] = Some(y.clone());
            }
            for (k, [x, y]) in &s.metrics {
                let row = metrics
                    .entry((s.node.clone(), k.clone()))
                    .or_insert_with(|| vec![None; runs.len()]);
                row[0] = *x;
                row[col] = *y;
            }
            for (k, [x, y]) in &s.outputs {
                let row = outputs
                    .entry((s.node.clone(), k.clone()))
                    .or_insert_with(|| vec![None; runs.len()]);
                row[0] = x.clone();
                row[col] = y.clone();
            }
        }
    }
    // A run that agrees with the baseline on a key is not in that pair's diff.
    for row in config.values_mut() {
        let base = row[0].clone();
        for v in row.iter_mut().skip(1) {
            if v.is_none() {
                *v = base.clone();
            }
        }
    }
    let curves = curves(view, &runs, &name)?;
    let body = html! {
        h1 { "Compare " (runs.len()) " runs" }
        table #compared {
            thead { tr { th { "" } th { "run" } th { "experiment" } th { "started" } th { "status" } th.num { "executed" } th.num { "cached" } } }
            tbody {
                @for (i, r) in runs.iter().enumerate() {
                    @let s = view.runs.get(r);
                    tr {
                        td { @if i == 0 { span.badge { "baseline" } } }
                        td { (layout::run_link(&hex[i])) }
                        td { (s.map(|s| s.experiment.as_str()).unwrap_or("")) }
                        td { (s.map(|s| layout::time(s.started_ms)).unwrap_or_default()) }
                        td { @if let Some(s) = s { span class={ "badge " (s.status()) } { (s.status()) } } }
                        td.num { (s.map_or(0, |s| s.executed)) }
                        td.num { (s.map_or(0, |s| s.cached)) }
                    }
                }
            }
        }
        h2 { "First divergent step" }
        table #divergence {
            tbody {
                @for (i, d) in diffs.iter().enumerate() {
                    tr {
                        td { (name(i + 1)) " vs the baseline" }
                        td {
                            @match d.steps.iter().find(|s| !s.identical()) {
                                Some(s) => {
                                    span.badge.diverged { "diverges" } " at step " strong.first-divergent { (s.node) }
                                    @if !s.config.is_empty() { " (config " (s.config.keys().cloned().collect::<Vec<_>>().join(", ")) ")" }
                                    @else if !s.same_action { " (its inputs or seed differ)" }
                                    @else { " (same action, different outputs: not reproducible)" }
                                }
                                None => {
                                    @if d.only_in_a.is_empty() && d.only_in_b.is_empty() { span.badge.identical { "identical" } " every step the same action with the same outputs" }
                                }
                            }
                            @if !d.only_in_a.is_empty() { div { "steps only in the baseline: " (d.only_in_a.join(", ")) } }
                            @if !d.only_in_b.is_empty() { div { "steps only in this run: " (d.only_in_b.join(", ")) } }
                        }
                    }
                }
            }
        }
        h2 { "Config differences" }
        @if config.is_empty() { p.note #no-config-diff { "The aligned steps have the same configs." } }
        @else {
            table #config-diff {
                thead { tr { th { "node" } th { "key" } @for i in 0..runs.len() { th { (name(i)) } } } }
                tbody {
                    @for ((node, key), values) in &config {
                        tr.changed data-key={ (node) "." (key) } {
                            td { (node) } td.mono { (key) }
                            @for (i, v) in values.iter().enumerate() {
                                td.mono.diff[i > 0 && *v != values[0]] { @match v { Some(v) => (v.to_string()), None => (missing()) } }
                            }
                        }
                    }
                }
            }
        }
        h2 { "Loss curves" }
        @if curves.is_empty() { p.note #no-curves { "None of these runs trained a model (no `curve` output)." } }
        @else { div.graph #curves { (chart::render(&curves, "step", "loss")) } }
        h2 { "Metrics" }
        @if metrics.is_empty() { p.note { "No aligned step recorded a metric." } }
        @else {
            @let changed = metrics.iter().filter(|(_, v)| v.iter().any(|x| *x != v[0])).count();
            p.note { (changed) " of " (metrics.len()) " metrics differ; they come first" }
            table #metrics-diff {
                thead { tr { th { "node" } th { "metric" } th.num { (name(0)) } @for i in 1..runs.len() { th.num { (name(i)) } th.num { "Δ" } } } }
                tbody {
                    @for ((node, metric), values) in metrics.iter().filter(|(_, v)| v.iter().any(|x| *x != v[0])).chain(metrics.iter().filter(|(_, v)| v.iter().all(|x| *x == v[0]))) {
                        tr data-metric={ (node) "." (metric) } {
                            td { (node) } td.mono { (metric) }
                            td.num { @match values[0] { Some(v) => span title=(v) { (layout::metric(v)) }, None => (missing()) } }
                            @for v in &values[1..] {
                                td.num.diff[*v != values[0]] { @match v { Some(v) => span title=(v) { (layout::metric(*v)) }, None => (missing()) } }
                                td.num.delta { @match (values[0], v) { (Some(a), Some(b)) => (layout::delta(a, *b)), _ => (missing()) } }
                            }
                        }
                    }
                }
            }
        }
        h2 { "Outputs" }
        table #outputs-diff {
            thead { tr { th { "node" } th { "output" } @for i in 0..runs.len() { th { (name(i)) } } } }
            tbody {
                @for ((node, output), values) in &outputs {
                    tr {
                        td { (node) } td.mono { (output) }
                        @for (i, v) in values.iter().enumerate() {
                            td.diff[i > 0 && *v != values[0]] { @match v { Some(h) => (layout::artifact_link(h)), None => (missing()) } }
                        }
                    }
                }
            }
        }
    };
    Ok(frame("Compare", body))
}

/// Every `curve` output of the runs' steps, as series coloured by run.
fn curves(
    view: &View,
    runs: &[Hash],
    name: &dyn Fn(usize) -> String,
) -> Result<Vec<chart::Series>, PageError> {
    let mut out = Vec::new();
    for (i, run) in runs.iter().enumerate() {
        for seq in view.ledger.index().run_events(run)? {
            let (EventKind::StageRun(s), _) = view.ledger.event(seq)?.event.kind.into_claim()
            else {
                continue;
            };
            for o in s.outputs.iter().filter(|o| o.name == "curve") {
                if o.size > WHOLE_LIMIT || !view.ledger.store().contains(&o.hash) {
                    continue;
                }
                let bytes = view.ledger.store().read(&o.hash)?;
                out.extend(curve_series(&bytes, &format!("{} {}", name(i), s.node), i));
            }
        }
    }
    Ok(out)
}

fn chooser(view: &View, chosen: &[Hash]) -> Markup {
    let recent: Vec<_> = view.runs.runs().iter().rev().take(50).collect();
    html! {
        h1 { "Compare runs" }
        p { "Tick two or more runs on the " a href="/" { "runs page" } ", or choose them here; the first is the baseline." }
        form method="get" action="/compare" {
            table {
                thead { tr { th {} th { "run" } th { "experiment" } th { "started" } } }
                tbody {
                    @for r in &recent {
                        @let id = r.run_id.to_hex();
                        tr {
                            td { input.pick type="checkbox" name="run" value=(id) checked[chosen.contains(&r.run_id)]; }
                            td { (layout::run_link(&id)) }
                            td { (r.experiment) }
                            td { (layout::time(r.started_ms)) }
                        }
                    }
                }
            }
            button type="submit" { "Compare" }
        }
    }
}
