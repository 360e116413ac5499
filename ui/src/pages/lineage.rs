//! Lineage: an artifact's ancestry DAG drawn in the page, each node a link; with `?with=B`,
//! the union of two lineages, shared and divergent parts marked, and the aligned steps that
//! differ (from `replay::diff`).

use super::layout::{self, Frame, Nav};
use crate::state::View;
use crate::svg::dag::{self, Edge, Node};
use crate::web::{Page, PageError, PageResult, Query};
use ledger::lineage::{lineage, Lineage, Provenance};
use maud::{html, Markup};
use std::collections::BTreeMap;

/// Beyond this many nodes the graph is listed, not drawn.
const MAX_DRAWN: usize = 1500;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Side {
    A,
    B,
    Both,
}

impl Side {
    fn class(self, comparing: bool) -> &'static str {
        match (comparing, self) {
            (false, _) => "",
            (true, Side::A) => "only-a",
            (true, Side::B) => "only-b",
            (true, Side::Both) => "shared",
        }
    }
}

fn basename(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

fn graph(sides: &[(&Lineage, Side)], comparing: bool) -> (Vec<Node>, Vec<Edge>) {
    let mut artifacts: BTreeMap<&str, (&ledger::lineage::ArtifactInfo, Side, bool)> =
        BTreeMap::new();
    let mut steps: BTreeMap<u64, (&ledger::lineage::StepNode, Side)> = BTreeMap::new();
    for (g, side) in sides {
        for (h, a) in &g.artifacts {
            let e = artifacts.entry(h.as_str()).or_insert((a, *side, false));
            if e.1 != *side {
                e.1 = Side::Both;
            }
            e.2 |= *h == g.root;
        }
        for (seq, s) in &g.steps {
            let e = steps.entry(*seq).or_insert((s, *side));
            if e.1 != *side {
                e.1 = Side::Both;
            }
        }
    }
    let mut nodes = Vec::new();
    for (h, (a, side, root)) in &artifacts {
        let title = match &a.provenance {
            Provenance::File { path } => basename(path).to_string(),
            Provenance::Config { path } => format!("config {}", basename(path)),
            Provenance::Output { output, .. } => output.clone(),
            Provenance::Observation { source, .. } => source.clone(),
        };
        let mut class = side.class(comparing).to_string();
        if *root {
            class.push_str(" root");
        }
        if !a.stored {
            class.push_str(" missing");
        }
        nodes.push(Node {
            id: format!("a{h}"),
            subtitle: format!("{} · {}", layout::short(h), layout::size(a.size)),
            tooltip: format!("{title}\n{h}\n{}", a.media_type),
            title,
            href: format!("/artifact/{h}"),
            class,
        });
    }
    let mut edges = Vec::new();
    for (seq, (s, side)) in &steps {
        nodes.push(Node {
            id: format!("s{seq}"),
            title: format!("{} ({} v{})", s.node, s.stage, s.version),
            subtitle: format!("step #{seq}"),
            href: format!("/run/{}#detail-{seq}", s.run_id),
            class: format!("step {}", side.class(comparing)),
            tooltip: format!(
                "step #{seq}: {} ({} v{})\naction {}",
                s.node, s.stage, s.version, s.action_key
            ),
        });
        for (name, input) in &s.inputs {
            edges.push(Edge {
                from: format!("a{input}"),
                to: format!("s{seq}"),
                label: name.clone(),
                class: side.class(comparing).into(),
            });
        }
        for (_, output) in &s.outputs {
            if artifacts.contains_key(output.as_str()) {
                edges.push(Edge {
                    from: format!("s{seq}"),
                    to: format!("a{output}"),
                    label: String::new(),
                    class: side.class(comparing).into(),
                });
            }
        }
    }
    (nodes, edges)
}

pub fn page(view: &View, what: &str, query: &Query) -> PageResult {
    let a = crate::web::resolve(view, what)?;
    if view.ledger.index().is_run(&a)? {
        return Err(PageError::BadRequest(format!(
            "{a} is a run; a lineage is an artifact's (open one of the run's outputs)"
        )));
    }
    let with = match query.get("with") {
        Some(w) => Some(crate::web::resolve(view, w.trim())?),
        None => None,
    };
    let la = lineage(&view.ledger, &a)?;
    let lb = match &with {
        Some(b) => Some(lineage(&view.ledger, b)?),
        None => None,
    };
    let comparing = lb.is_some();
    let sides: Vec<(&Lineage, Side)> = std::iter::once((&la, Side::A))
        .chain(lb.as_ref().map(|l| (l, Side::B)))
        .collect();
    let (nodes, edges) = graph(&sides, comparing);
    let diff = match &with {
        Some(b) => Some(replay::diff(&view.ledger, &a, b)?),
        None => None,
    };
    let hex = a.to_hex();
    let body = html! {
        h1 { "Lineage of " (layout::artifact_link(&hex))
            @if let Some(b) = &with { " and " (layout::artifact_link(&b.to_hex())) } }
        p.note {
            (la.artifacts.len()) " artifacts, " (la.steps.len()) " steps"
            @if let Some(lb) = &lb { " · the other: " (lb.artifacts.len()) " artifacts, " (lb.steps.len()) " steps" }
            " · boxes are links"
        }
        @if comparing {
            p { span.legend-a { "■ only in the first" } " · " span.legend-b { "■ only in the second" } " · grey: shared" }
        }
        @if nodes.len() <= MAX_DRAWN {
            div.graph #lineage-graph { (dag::render(&nodes, &edges)) }
        } @else {
            p.warning { (nodes.len()) " nodes are too many to draw; they are listed below." }
        }
        @if let Some(d) = &diff { (diff_table(d)) }
        h2 { "Steps" }
        table #lineage-steps {
            thead { tr { th { "#" } th { "node" } th { "stage" } th { "run" } th { "inputs" } th { "outputs" } } }
            tbody {
                @for (seq, s) in la.steps.iter().chain(lb.iter().flat_map(|l| l.steps.iter().filter(|(q, _)| !la.steps.contains_key(q)))) {
                    tr {
                        td.num { (seq) }
                        td { (s.node) }
                        td { (s.stage) " v" (s.version) }
                        td { (layout::run_link(&s.run_id)) }
                        td { @for (n, h) in &s.inputs { div { span.mono { (n) } " " (layout::artifact_link(h)) } } }
                        td { @for (n, h) in &s.outputs { div { span.mono { (n) } " " (layout::artifact_link(h)) } } }
                    }
                }
            }
        }
    };
    Ok(Page::Html(layout::page(
        Frame {
            title: &format!("lineage {}", layout::short(&hex)),
            nav: Nav::None,
            events: view.ledger.event_count(),
        },
        body,
    )))
}

/// The aligned steps of two lineages that differ.
pub fn diff_table(d: &replay::DiffReport) -> Markup {
    let differing: Vec<_> = d.steps.iter().filter(|s| !s.identical()).collect();
    html! {
        h2 { "Divergent steps" }
        @if differing.is_empty() && d.only_in_a.is_empty() && d.only_in_b.is_empty() {
            p #no-divergence { "Every aligned step is the same action with the same outputs." }
        }
        @if !d.only_in_a.is_empty() { p { "only in the first: " @for n in &d.only_in_a { span.badge { (n) } " " } } }
        @if !d.only_in_b.is_empty() { p { "only in the second: " @for n in &d.only_in_b { span.badge { (n) } " " } } }
        @if !differing.is_empty() {
            table #divergent {
                thead { tr { th { "node" } th { "what differs" } } }
                tbody {
                    @for s in &differing {
                        tr {
                            td { (s.node) }
                            td {
                                @if s.stage[0] != s.stage[1] || s.version[0] != s.version[1] { div { "stage " (s.stage[0]) " v" (s.version[0]) " → " (s.stage[1]) " v" (s.version[1]) } }
                                @if s.seed[0] != s.seed[1] { div { "seed " (s.seed[0]) " → " (s.seed[1]) } }
                                @for (k, [x, y]) in &s.config { div { "config " span.mono { (k) } ": " span.mono { (x.to_string()) } " → " span.mono { (y.to_string()) } } }
                                @for (k, [x, y]) in &s.inputs { @if x != y { div { "input " span.mono { (k) } " differs" } } }
                                @for (k, [x, y]) in &s.outputs { @if x != y { div { "output " span.mono { (k) } " differs" } } }
                            }
                        }
                    }
                }
            }
        }
    }
}
