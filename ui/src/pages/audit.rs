//! Audit: the ledger's facts, `verify` on request (with progress), and the replays started
//! from this server, with their verdicts and where they diverged.

use super::layout::{self, Frame, Nav};
use crate::audit::{ReplayOutcome, VerifyState};
use crate::state::{Shared, View};
use crate::web::{Page, PageResult};
use maud::{html, Markup};
use std::time::SystemTime;

fn ago(t: SystemTime) -> String {
    let s = SystemTime::now()
        .duration_since(t)
        .map_or(0, |d| d.as_secs());
    match s {
        0..=59 => format!("{s} s ago"),
        60..=3599 => format!("{} min ago", s / 60),
        _ => format!("{} h ago", s / 3600),
    }
}

pub fn page(shared: &Shared, view: &View) -> PageResult {
    let log = view.ledger.log_path();
    let log_bytes = std::fs::metadata(log).map_or(0, |m| m.len());
    let body = html! {
        h1 { "Audit" }
        dl.facts {
            dt { "ledger" } dd.mono { (shared.dir.display().to_string()) }
            dt { "events" } dd #event-count { (view.ledger.event_count()) }
            dt { "runs" } dd { (view.runs.runs().len()) }
            dt { "log" } dd { (layout::size(log_bytes)) }
            dt { "this reader" } dd { "a private index built from the log (it never holds the index a writer needs)" }
            @if let Some(p) = view.ledger.index_problem() { dt { "problem" } dd.error-text { (p) } }
        }
        h2 { "Verify" }
        p.note { "Rehashes every blob, walks the hash chain of the log and checks the index, as " code { "ledger verify" } " does. It only reads." }
        (verify_section(shared))
        h2 { "Replays" }
        p.note { "A replay re-executes an artifact's producing step offline, in a scratch store, and compares the outputs bit for bit (" code { "ledger replay" } "). Start one from an artifact's page; the results of this server's replays are listed here." }
        form method="post" action="/audit/replay" {
            input type="text" name="hash" placeholder="artifact address or tag" size="70";
            " " button type="submit" { "Replay" }
        }
        (replays(shared))
    };
    Ok(Page::Html(layout::page(
        Frame {
            title: "Audit",
            nav: Nav::Audit,
            events: view.ledger.event_count(),
        },
        body,
    )))
}

fn verify_section(shared: &Shared) -> Markup {
    let state = shared.audit.verify_state();
    let status = shared.audit.verify_status();
    let running = matches!(state, VerifyState::Running { .. });
    html! {
        div #verify-progress data-state=(status.state) {
            @match &state {
                VerifyState::Idle => p { "Not run since this server started." },
                VerifyState::Running { .. } => p {
                    span.badge.running { "running" } " "
                    progress max=(status.total.max(1)) value=(status.done) {}
                    " " span.progress-text { (status.done) " of " (status.total) " blobs rehashed" }
                },
                VerifyState::Done { report, seconds, finished } => {
                    p #verify-result {
                        @if report.clean() { span.badge.clean { "clean" } } @else { span.badge.problems { (report.problems.len()) " problem(s)" } }
                        " " (report.events) " events, " (report.blobs) " blobs (" (layout::size(report.blob_bytes)) ") checked in " (format!("{seconds:.2}")) " s, " (ago(*finished))
                    }
                    @for w in &report.warnings { p.warning { (w) } }
                    @if !report.problems.is_empty() {
                        table #problems {
                            thead { tr { th { "kind" } th { "subject" } th { "detail" } } }
                            tbody { @for p in &report.problems { tr { td { (p.kind) } td.mono { (p.subject) } td { (p.detail) } } } }
                        }
                    }
                    @if !report.downstream.is_empty() {
                        h3 { "Built from damaged artifacts" }
                        ul { @for (a, root) in &report.downstream { li { (layout::artifact_link(a)) " from " span.mono { (layout::short(root)) } } } }
                    }
                }
                VerifyState::Failed { error, finished } => p.error-text { "verify failed " (ago(*finished)) ": " (error) },
            }
        }
        form method="post" action="/audit/verify" {
            button #verify-button type="submit" disabled[running] { @if running { "Verifying…" } @else { "Verify now" } }
        }
    }
}

fn replays(shared: &Shared) -> Markup {
    let jobs = shared.audit.replays();
    html! {
        @if jobs.is_empty() { p.note #no-replays { "No replay started from this server yet." } }
        @for j in &jobs {
            section.record.replay data-target=(j.target.to_hex()) data-running[matches!(j.outcome, ReplayOutcome::Running)] {
                div.record-head { "replay of " (layout::artifact_link(&j.target.to_hex())) ", started " (ago(j.started)) }
                @match &j.outcome {
                    ReplayOutcome::Running => p { span.badge.running { "running" } " (this page updates when it is done)" },
                    ReplayOutcome::Failed(e) => p.error-text { (e) },
                    ReplayOutcome::Done(r) => {
                        p.verdict {
                            @match r.verdict {
                                replay::Verdict::BitIdentical => span.badge.identical { "bit-identical" },
                                replay::Verdict::NotReproducible => span.badge.diverged { "not reproducible" },
                            }
                            " in " (format!("{:.2}", r.seconds)) " s"
                            @if let Some(seq) = r.first_divergence { " · first divergence at step #" (seq) }
                        }
                        @if r.steps.is_empty() { p.note { "a source artifact: its bytes were rehashed" } }
                        table {
                            tbody {
                                @for s in &r.steps {
                                    @for o in &s.outputs {
                                        tr {
                                            td { "#" (s.step.seq) " " (s.step.node) } td.mono { (o.name) }
                                            td { @if o.identical { span.badge.identical { "ok" } } @else { span.badge.diverged { "differs" } } }
                                            td { "recorded " (layout::artifact_link(&o.recorded)) }
                                            td { @if let Some(d) = &o.first_difference { pre { (d) } } }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}
