//! Artifact: what it is, who produced it, from which inputs, who used it, and its content in
//! the view that fits its kind.

use super::layout::{self, Frame, Nav};
use crate::state::View;
use crate::web::{Page, PageError, PageResult, Query};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use ledger::event::EventKind;
use ledger::lineage::{describe, Provenance};
use maud::html;

/// Consumers listed at most (a shared input may feed thousands of steps).
const CONSUMERS_SHOWN: usize = 100;

pub fn page(view: &View, what: &str, query: &Query) -> PageResult {
    let hash = crate::web::resolve(view, what)?;
    if view.ledger.index().is_run(&hash)? {
        return Ok(Page::Redirect(format!("/run/{hash}")));
    }
    let info = describe(&view.ledger, &hash)?;
    let consumers = view.ledger.index().consumers(&hash)?;
    let mut used_by = Vec::new();
    for seq in consumers.iter().take(CONSUMERS_SHOWN) {
        if let (EventKind::StageRun(s), _) = view.ledger.event(*seq)?.event.kind.into_claim() {
            used_by.push((*seq, s));
        }
    }
    let content = crate::content::render(view.ledger.store(), &hash, &info, query)?;
    let hex = hash.to_hex();
    let body = html! {
        h1 { "Artifact " span.hash { (layout::short(&hex)) } }
        dl.facts #artifact-facts {
            dt { "address" } dd.mono #hash { (hex) }
            dt { "size" } dd #size data-bytes=(info.size) { (layout::size(info.size)) " (" (layout::thousands(info.size)) " bytes)" }
            dt { "media type" } dd #media-type { (info.media_type) }
            dt { "bytes" } dd { @if info.stored { span.badge.succeeded { "stored" } } @else if info.collected { span.badge.failed { "collected by gc" } } @else { span.badge.failed { "missing" } } }
            @if !info.tags.is_empty() { dt { "tags" } dd { @for t in &info.tags { span.badge { (t) } " " } } }
            @if let Some(b) = &info.imported_from { dt { "imported" } dd { span.badge.foreign { "foreign" } " from bundle " span.mono { (layout::short(b)) } " — what follows is the bundle's claim" } }
            @match &info.provenance {
                Provenance::File { path } => { dt { "origin" } dd { "file " span.mono { (path) } } }
                Provenance::Config { path } => { dt { "origin" } dd { "experiment config " span.mono { (path) } } }
                Provenance::Observation { source, request } => { dt { "origin" } dd { (source) " response to request " span.mono { (layout::short(request)) } } }
                Provenance::Output { output, step, .. } => {
                    dt { "produced" } dd #producer { "output " span.mono #output-name { (output) } " of step "
                        a href={ "/run/" (step.run_id) "#detail-" (step.seq) } { "#" (step.seq) " " (step.node) } " (" (step.stage) " v" (step.version) ")" }
                    dt { "run" } dd { (layout::run_link(&step.run_id)) }
                    dt { "seed" } dd { (step.seed) }
                    dt { "inputs" } dd { table { tbody { @for (n, h) in &step.inputs { tr { td.mono { (n) } td { (layout::artifact_link(h)) } } } } } }
                    @if !step.metrics.is_empty() {
                        dt { "metrics" } dd { @for (n, v) in &step.metrics { div.mono { (n) " = " (layout::metric(*v)) } } }
                    }
                }
            }
            dt { "used by" } dd #consumers {
                @if consumers.is_empty() { span.note { "no step" } }
                @for (seq, s) in &used_by {
                    div { a href={ "/run/" (s.run_id.to_hex()) "#detail-" (seq) } { "#" (seq) " " (s.node) } " (" (s.stage) ") in run " (layout::run_link(&s.run_id.to_hex())) }
                }
                @if consumers.len() > CONSUMERS_SHOWN { div.note { "and " (consumers.len() - CONSUMERS_SHOWN) " more steps" } }
            }
        }
        div.pager {
            a #lineage-link href={ "/lineage/" (hex) } { "Lineage" }
            form.inline method="get" action={ "/lineage/" (hex) } {
                input type="text" name="with" placeholder="another artifact, to compare lineages" size="44";
                button type="submit" { "Compare lineages" }
            }
            @if matches!(info.provenance, Provenance::Output { .. }) {
                form.inline method="post" action="/audit/replay" {
                    input type="hidden" name="hash" value=(hex);
                    button type="submit" title="re-execute the producing step offline and compare bit for bit (reads only)" { "Replay" }
                }
            }
        }
        h2 { "Content" }
        (content)
    };
    Ok(Page::Html(layout::page(
        Frame {
            title: &format!("artifact {}", layout::short(&hex)),
            nav: Nav::None,
            events: view.ledger.event_count(),
        },
        body,
    )))
}

/// An SVG artifact's bytes, for the `<img>` of its page: only SVG, only small ones, checked
/// against the address, under a policy that runs no script even when opened directly.
pub fn svg(view: &View, what: &str) -> Result<Response, PageError> {
    let hash = crate::web::resolve(view, what)?;
    let info = describe(&view.ledger, &hash)?;
    if info.media_type != "image/svg+xml" {
        return Err(PageError::BadRequest(format!(
            "{hash} is {}, not SVG",
            info.media_type
        )));
    }
    if info.size > crate::content::WHOLE_LIMIT {
        return Err(PageError::BadRequest(format!(
            "{hash} is too large to show as an image ({})",
            layout::size(info.size)
        )));
    }
    let bytes = view.ledger.store().read(&hash)?;
    Ok((
        StatusCode::OK,
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("image/svg+xml"),
            ),
            (
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static(crate::security::SVG_CSP),
            ),
        ],
        bytes,
    )
        .into_response())
}
