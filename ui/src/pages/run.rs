//! Run: its steps in log order (executed / cached / failed, duration), each with its config,
//! inputs, outputs, metrics and the facts of where it ran.

use super::layout::{self, missing, Frame, Nav};
use crate::state::View;
use crate::web::{Page, PageError, PageResult, Query};
use ledger::event::{EventKind, RunStatus, StageRun};
use ledger::Hash;
use maud::{html, Markup};

pub const STEPS_PER_PAGE: usize = 200;

/// One step of the run, as the log holds it.
pub struct Step {
    pub seq: u64,
    pub run: StageRun,
    pub foreign: bool,
}

/// The run's stage-run events (`skip`/`take` over them, in log order) and how many there are.
pub fn steps(
    view: &View,
    run: &Hash,
    skip: usize,
    take: usize,
) -> Result<(Vec<Step>, usize), PageError> {
    let seqs = view.ledger.index().run_events(run)?;
    let mut out = Vec::new();
    let mut count = 0;
    for seq in seqs {
        let stored = view.ledger.event(seq)?;
        let (kind, import) = stored.event.kind.into_claim();
        if let EventKind::StageRun(s) = kind {
            if count >= skip && out.len() < take {
                out.push(Step {
                    seq,
                    run: s,
                    foreign: import.is_some(),
                });
            }
            count += 1;
        }
    }
    Ok((out, count))
}

pub fn status_badge(status: &RunStatus) -> Markup {
    match status {
        RunStatus::Succeeded => html! { span.badge.executed { "executed" } },
        RunStatus::Cached { source_seq } => {
            html! { span.badge.cached title={ "outputs reused from the step recorded at event #" (source_seq) } { "cached from #" (source_seq) } }
        }
        RunStatus::Failed { .. } => html! { span.badge.failed { "failed" } },
    }
}

pub fn page(view: &View, what: &str, query: &Query) -> PageResult {
    let run = crate::web::resolve(view, what)?;
    if !view.ledger.index().is_run(&run)? {
        return Ok(Page::Redirect(format!("/artifact/{run}")));
    }
    let summary = view.runs.get(&run);
    let page_no = query.number("page").unwrap_or(0) as usize;
    let (steps, count) = steps(view, &run, page_no * STEPS_PER_PAGE, STEPS_PER_PAGE)?;
    let id = run.to_hex();
    let others: Vec<_> = view
        .runs
        .runs()
        .iter()
        .rev()
        .filter(|r| r.run_id != run)
        .take(200)
        .collect();
    let body = html! {
        h1 { "Run " span.hash { (layout::short(&id)) } }
        dl.facts #run-facts {
            dt { "run id" } dd.mono #run-id { (id) }
            @if let Some(s) = summary {
                dt { "experiment" } dd #experiment { (s.experiment) @if s.foreign { " " span.badge.foreign { "imported" } } }
                dt { "config" } dd.mono { @if let Some(c) = &s.config { a href={ "/artifact/" (c.to_hex()) } { (s.config_path) } } @else { (missing()) } }
                dt { "started" } dd { (layout::time(s.started_ms)) }
                dt { "ended" } dd { (layout::time(s.ended_ms)) " (" (layout::seconds(s.ended_ms.saturating_sub(s.started_ms))) ")" }
                dt { "status" } dd { span class={ "badge " (s.status()) } { (s.status()) } " "
                    (s.executed) " executed, " (s.cached) " cached, " (s.failed) " failed" }
            }
        }
        form.filters method="get" action="/compare" {
            input type="hidden" name="run" value=(id);
            label { "compare with"
                select name="run" {
                    @for r in &others {
                        option value=(r.run_id.to_hex()) { (layout::short(&r.run_id.to_hex())) " " (r.experiment) " · " (layout::time(r.started_ms)) }
                    }
                }
            }
            button type="submit" disabled[others.is_empty()] { "Compare" }
        }
        h2 { "Steps (" (count) ")" }
        table #steps {
            thead { tr { th { "#" } th { "node" } th { "stage" } th { "status" } th.num { "duration" } th { "outputs" } th { "metrics" } } }
            tbody {
                @for s in &steps {
                    tr id={ "step-" (s.seq) } data-node=(s.run.node) {
                        td.num { a href={ "#detail-" (s.seq) } { (s.seq) } }
                        td { (s.run.node) @if s.foreign { " " span.badge.foreign { "imported" } } }
                        td { (s.run.stage) " v" (s.run.version) }
                        td { (status_badge(&s.run.status)) }
                        td.num { (layout::seconds(s.run.ended_ms.saturating_sub(s.run.started_ms))) }
                        td {
                            @for o in &s.run.outputs {
                                div { span.mono { (o.name) } " " (layout::artifact_link(&o.hash.to_hex())) " " span.note { (layout::size(o.size)) } }
                            }
                        }
                        td {
                            @for (name, v) in &s.run.metrics {
                                div.mono data-metric=(name) { (name) " = " span title=(v) { (layout::metric(*v)) } }
                            }
                        }
                    }
                }
            }
        }
        @if count > STEPS_PER_PAGE {
            div.pager {
                @if page_no > 0 { a href=(query.with("page", &(page_no - 1).to_string())) { "← earlier steps" } }
                span { "steps " (page_no * STEPS_PER_PAGE + 1) "–" ((page_no * STEPS_PER_PAGE + steps.len())) " of " (count) }
                @if (page_no + 1) * STEPS_PER_PAGE < count { a href=(query.with("page", &(page_no + 1).to_string())) { "later steps →" } }
            }
        }
        h2 { "Step details" }
        @for s in &steps { (detail(s)) }
    };
    Ok(Page::Html(layout::page(
        Frame {
            title: &format!("run {}", layout::short(&id)),
            nav: Nav::Runs,
            events: view.ledger.event_count(),
        },
        body,
    )))
}

fn detail(s: &Step) -> Markup {
    let r = &s.run;
    let config: serde_json::Value = serde_json::from_str(&r.config).unwrap_or_default();
    html! {
        section.record id={ "detail-" (s.seq) } {
            h3 { "#" (s.seq) " " (r.node) " (" (r.stage) " v" (r.version) ") " (status_badge(&r.status)) }
            @if let RunStatus::Failed { error } = &r.status { pre.error { (error) } }
            dl.facts {
                dt { "action key" } dd.mono { (r.action_key.to_hex()) }
                dt { "seed" } dd { (r.seed) }
                dt { "started" } dd { (layout::time(r.started_ms)) " for " (layout::seconds(r.ended_ms.saturating_sub(r.started_ms))) }
                dt { "host" } dd { (r.env.host) " (" (r.env.os) "/" (r.env.arch) ")" }
                dt { "threads" } dd { (r.env.threads) }
                dt { "device" } dd { (r.env.device) }
                dt { "CPU features" } dd.mono { (r.env.cpu_features.join(" ")) }
                dt { "ledger" } dd { "v" (r.env.ledger_version) }
            }
            h3 { "Inputs" }
            @if r.inputs.is_empty() { p.note { "none (external sources are in the config)" } }
            table { tbody {
                @for (name, h) in &r.inputs {
                    tr { td.mono { (name) } td { (layout::artifact_link(&h.to_hex())) } td { a href={ "/lineage/" (h.to_hex()) } { "lineage" } } }
                }
            } }
            h3 { "Outputs" }
            table { tbody {
                @for o in &r.outputs {
                    tr { td.mono { (o.name) } td { (layout::artifact_link(&o.hash.to_hex())) } td { (o.media_type) } td.num { (layout::size(o.size)) } td { a href={ "/lineage/" (o.hash.to_hex()) } { "lineage" } } }
                }
            } }
            details {
                summary { "config" }
                pre.config { (layout::pretty(&config)) }
            }
        }
    }
}
