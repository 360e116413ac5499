//! Ablations: the table of an ablation file (`ledger ablate FILE`, named with
//! `ledger ui --ablation FILE`) from the runs already in the ledger: each arm's latest run of
//! its config, one row per arm, one column per metric, with deltas against the first arm.
//! Nothing is run from here; an arm not run yet says how to run it.

use super::layout::{self, missing, Frame, Nav};
use crate::state::{Shared, View};
use crate::web::{query_string, Page, PageError, PageResult};
use ledger::runs::RunSummary;
use ledger::Hash;
use maud::html;

pub fn list(shared: &Shared, view: &View) -> PageResult {
    let body = html! {
        h1 { "Ablations" }
        @if shared.ablations.is_empty() {
            p { "No ablation file was named. Start the server with " code { "ledger ui --ablation configs/ablations.toml" } " (repeatable) to see its table here." }
        }
        ul {
            @for (i, a) in shared.ablations.iter().enumerate() {
                li { a href={ "/ablation/" (i) } { (a.ablation.name) } " " span.note.mono { (a.path.display().to_string()) } }
            }
        }
    };
    Ok(Page::Html(layout::page(
        Frame {
            title: "Ablations",
            nav: Nav::Ablations,
            events: view.ledger.event_count(),
        },
        body,
    )))
}

pub fn page(shared: &Shared, view: &View, index: usize) -> PageResult {
    let file = shared.ablations.get(index).ok_or_else(|| {
        PageError::NotFound(format!(
            "no ablation #{index} (the server was started with {})",
            shared.ablations.len()
        ))
    })?;
    let a = &file.ablation;
    let arms: Vec<(&replay::ablate::Arm, Option<&RunSummary>)> = a
        .arms
        .iter()
        .map(|arm| {
            let config = Hash::of(arm.experiment.source.as_bytes());
            (arm, view.runs.latest_with_config(&config))
        })
        .collect();
    let value = |run: Option<&RunSummary>, m: &replay::ablate::Metric| {
        run.and_then(|r| r.metrics.get(&format!("{}.{}", m.node, m.name)).copied())
    };
    let base = arms.first().and_then(|(_, r)| *r);
    let run_ids: Vec<String> = arms
        .iter()
        .filter_map(|(_, r)| r.map(|r| r.run_id.to_hex()))
        .collect();
    let compare = query_string(run_ids.iter().map(|id| ("run", id.as_str())));
    let body = html! {
        h1 { "Ablation: " (a.name) }
        p.note.mono { (file.path.display().to_string()) }
        table #ablation {
            thead { tr {
                th { "arm" } th { "run" }
                @for m in &a.metrics { th.num { (m.label) } th.num { "Δ" } }
                th.num { "executed" } th.num { "cached" }
            } }
            tbody {
                @for (arm, run) in &arms {
                    tr data-arm=(arm.name) {
                        td { (arm.name) div.note.mono { (arm.config) } }
                        td { @match run { Some(r) => (layout::run_link(&r.run_id.to_hex())), None => span.warning { "not run in this ledger" } } }
                        @for m in &a.metrics {
                            @let v = value(*run, m);
                            td.num data-metric=(m.label) { @match v { Some(v) => span title=(v) { (layout::metric(v)) }, None => (missing()) } }
                            td.num { @match (value(base, m), v) { (Some(b), Some(v)) => (layout::delta(b, v)), _ => (missing()) } }
                        }
                        td.num { (run.map_or(0, |r| r.executed)) }
                        td.num { (run.map_or(0, |r| r.cached)) }
                    }
                }
            }
        }
        @if arms.iter().any(|(_, r)| r.is_none()) {
            p { "Arms not run yet: " code { "ledger ablate " (file.path.display().to_string()) } " runs them (shared steps come from the cache)." }
        }
        @if run_ids.len() >= 2 { p { a #compare-arms href={ "/compare" (compare) } { "Compare these arms" } } }
    };
    Ok(Page::Html(layout::page(
        Frame {
            title: &a.name,
            nav: Nav::Ablations,
            events: view.ledger.event_count(),
        },
        body,
    )))
}
