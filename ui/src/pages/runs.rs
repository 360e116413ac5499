//! Runs: every run, filtered and sorted as the query says, with the metric columns it names.
//!
//! `?q=` (text in the experiment, config path or run id), `status=succeeded|failed`,
//! `sort=started|experiment|steps|executed|cached|duration|metric:<node.name>`,
//! `dir=asc|desc`, `metric=<node.name>` (repeated: the columns), `page=N`.

use super::layout::{self, missing, Frame, Nav};
use crate::state::View;
use crate::web::{Page, PageResult, Query};
use ledger::runs::RunSummary;
use maud::{html, Markup};
use std::cmp::Ordering;
use std::collections::BTreeSet;

pub const PER_PAGE: usize = 100;

/// The rows to show, in order, and what was asked.
pub struct RunsModel<'a> {
    pub rows: Vec<&'a RunSummary>,
    pub total: usize,
    pub metric_names: Vec<String>,
    pub metrics: Vec<String>,
    pub sort: String,
    pub descending: bool,
    pub page: usize,
}

pub fn model<'a>(view: &'a View, query: &Query) -> RunsModel<'a> {
    let runs = view.runs.runs();
    let needle = query.get("q").map(str::to_lowercase);
    let status = query.get("status");
    let mut rows: Vec<&RunSummary> = runs
        .iter()
        .filter(|r| {
            needle.as_ref().is_none_or(|n| {
                r.experiment.to_lowercase().contains(n)
                    || r.config_path.to_lowercase().contains(n)
                    || r.run_id.to_hex().starts_with(n.as_str())
            })
        })
        .filter(|r| status.is_none_or(|s| r.status() == s))
        .collect();
    let sort = query.get("sort").unwrap_or("started").to_string();
    let descending = query.get("dir").map_or(sort == "started", |d| d == "desc");
    let key = |a: &&RunSummary, b: &&RunSummary| -> Ordering {
        match sort.as_str() {
            "experiment" => a.experiment.cmp(&b.experiment),
            "steps" => a.steps().cmp(&b.steps()),
            "executed" => a.executed.cmp(&b.executed),
            "cached" => a.cached.cmp(&b.cached),
            "duration" => (a.ended_ms - a.started_ms.min(a.ended_ms))
                .cmp(&(b.ended_ms - b.started_ms.min(b.ended_ms))),
            s if s.starts_with("metric:") => {
                let m = &s["metric:".len()..];
                match (a.metrics.get(m), b.metrics.get(m)) {
                    (Some(x), Some(y)) => x.total_cmp(y),
                    _ => Ordering::Equal,
                }
            }
            _ => a.first_seq.cmp(&b.first_seq),
        }
    };
    // Runs without the sorted metric come last in either direction.
    let lacks = |r: &&RunSummary| {
        sort.strip_prefix("metric:")
            .is_some_and(|m| !r.metrics.contains_key(m))
    };
    rows.sort_by(|a, b| {
        let o = key(a, b);
        let o = if descending { o.reverse() } else { o };
        lacks(a)
            .cmp(&lacks(b))
            .then(o)
            .then(b.first_seq.cmp(&a.first_seq))
    });
    let metric_names: BTreeSet<&String> = runs.iter().flat_map(|r| r.metrics.keys()).collect();
    let total = rows.len();
    let page = query.number("page").unwrap_or(0) as usize;
    let rows = rows
        .into_iter()
        .skip(page * PER_PAGE)
        .take(PER_PAGE)
        .collect();
    RunsModel {
        rows,
        total,
        metric_names: metric_names.into_iter().cloned().collect(),
        metrics: query.all("metric").into_iter().map(String::from).collect(),
        sort,
        descending,
        page,
    }
}

pub fn page(view: &View, query: &Query) -> PageResult {
    let m = model(view, query);
    let sort_link = |key: &str, label: &str| -> Markup {
        let active = m.sort == key;
        let dir = if active && !m.descending {
            "desc"
        } else {
            "asc"
        };
        let mut q = query.clone();
        q.0.retain(|(k, _)| k != "sort" && k != "dir" && k != "page");
        let href = format!("{}&dir={dir}", q.with("sort", key));
        let arrow = match (active, m.descending) {
            (false, _) => "",
            (true, true) => " ▼",
            (true, false) => " ▲",
        };
        html! { a.sorted[active] href=(href) { (label) (arrow) } }
    };
    let kept = |skip: &[&str]| -> Markup {
        html! {
            @for (k, v) in &query.0 {
                @if !skip.contains(&k.as_str()) && !v.is_empty() {
                    input type="hidden" name=(k) value=(v);
                }
            }
        }
    };
    let pages = m.total.div_ceil(PER_PAGE).max(1);
    let body = html! {
        h1 { "Runs" }
        form.filters method="get" action="/" {
            label { "filter" input type="search" name="q" value=[query.get("q")] placeholder="experiment, config or run id"; }
            label { "status"
                select name="status" {
                    option value="" { "any" }
                    @for s in ["succeeded", "failed"] {
                        option value=(s) selected[query.get("status") == Some(s)] { (s) }
                    }
                }
            }
            (kept(&["q", "status", "page"]))
            button type="submit" { "Apply" }
            span.note { (m.total) " of " (view.runs.runs().len()) " runs" }
        }
        @if !m.metric_names.is_empty() {
            details open[m.metrics.is_empty()] {
                summary { "Metric columns (" (m.metrics.len()) " shown)" }
                form method="get" action="/" {
                    (kept(&["metric", "page"]))
                    div.metric-picker {
                        @for name in &m.metric_names {
                            label { input type="checkbox" name="metric" value=(name) checked[m.metrics.contains(name)]; " " (name) }
                        }
                    }
                    button type="submit" { "Show these columns" }
                }
            }
        }
        form #compare-form method="get" action="/compare" {
            table #runs {
                thead { tr {
                    th { }
                    th { "run" }
                    th { (sort_link("experiment", "experiment")) }
                    th { "config" }
                    th { (sort_link("started", "started")) }
                    th { "ended" }
                    th.num { (sort_link("duration", "duration")) }
                    th { "status" }
                    th.num { (sort_link("executed", "executed")) }
                    th.num { (sort_link("cached", "cached")) }
                    th.num { "failed" }
                    @for metric in &m.metrics {
                        th.num { (sort_link(&format!("metric:{metric}"), metric)) }
                    }
                } }
                tbody {
                    @for r in &m.rows {
                        @let id = r.run_id.to_hex();
                        tr data-run=(id) {
                            td { input.pick type="checkbox" name="run" value=(id) aria-label="compare"; }
                            td { (layout::run_link(&id)) }
                            td.experiment {
                                @if r.experiment.is_empty() { (missing()) } @else { (r.experiment) }
                                @if r.foreign { " " span.badge.foreign { "imported" } }
                            }
                            td.mono { @if let Some(c) = &r.config { a href={ "/artifact/" (c.to_hex()) } { (r.config_path) } } @else { (missing()) } }
                            td { (layout::time(r.started_ms)) }
                            td { (layout::time(r.ended_ms)) }
                            td.num { (layout::seconds(r.ended_ms.saturating_sub(r.started_ms))) }
                            td { span class={ "badge " (r.status()) } { (r.status()) } }
                            td.num.executed { (r.executed) }
                            td.num.cached { (r.cached) }
                            td.num { (r.failed) }
                            @for metric in &m.metrics {
                                td.num data-metric=(metric) {
                                    @match r.metrics.get(metric) {
                                        Some(v) => span title=(v) { (layout::metric(*v)) },
                                        None => (missing()),
                                    }
                                }
                            }
                        }
                    }
                }
            }
            @if m.rows.is_empty() { p.note { "No runs match. `ledger run CONFIG` makes one." } }
            button type="submit" { "Compare ticked runs" }
        }
        @if pages > 1 {
            div.pager {
                @if m.page > 0 { a href=(query.with("page", &(m.page - 1).to_string())) { "← newer" } }
                span { "page " (m.page + 1) " of " (pages) }
                @if m.page + 1 < pages { a href=(query.with("page", &(m.page + 1).to_string())) { "older →" } }
            }
        }
    };
    Ok(Page::Html(layout::page(
        Frame {
            title: "Runs",
            nav: Nav::Runs,
            events: view.ledger.event_count(),
        },
        body,
    )))
}
