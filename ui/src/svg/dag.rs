//! A DAG drawn in the page as SVG, left to right: nodes in layers by their longest path from a
//! source, ordered within a layer to keep edges short (barycentre sweeps), each node a link.

use maud::{html, Markup};
use std::collections::HashMap;

pub struct Node {
    pub id: String,
    /// First line (bold) and second line of the box.
    pub title: String,
    pub subtitle: String,
    pub href: String,
    /// CSS classes (`step`, `root`, `only-a`, `shared`, ...).
    pub class: String,
    pub tooltip: String,
}

pub struct Edge {
    pub from: String,
    pub to: String,
    pub label: String,
    pub class: String,
}

const NODE_W: f64 = 200.0;
const NODE_H: f64 = 40.0;
const GAP_X: f64 = 70.0;
const GAP_Y: f64 = 14.0;
const PAD: f64 = 10.0;
/// Characters that fit on a line of a box.
const FIT: usize = 27;

fn fit(s: &str) -> String {
    if s.chars().count() <= FIT {
        s.to_string()
    } else {
        let mut t: String = s.chars().take(FIT - 1).collect();
        t.push('…');
        t
    }
}

/// Node positions: (layer, order within the layer).
fn layout(nodes: &[Node], edges: &[Edge]) -> Vec<(usize, usize)> {
    let index: HashMap<&str, usize> = nodes
        .iter()
        .enumerate()
        .map(|(i, n)| (n.id.as_str(), i))
        .collect();
    let links: Vec<(usize, usize)> = edges
        .iter()
        .filter_map(|e| Some((*index.get(e.from.as_str())?, *index.get(e.to.as_str())?)))
        .collect();
    // Longest path from a source; a cycle (never in a lineage) just stops growing.
    let mut layer = vec![0usize; nodes.len()];
    for _ in 0..nodes.len() {
        let mut changed = false;
        for &(a, b) in &links {
            if layer[b] < layer[a] + 1 {
                layer[b] = layer[a] + 1;
                changed = true;
            }
        }
        if !changed {
            break;
        }
    }
    let layers = layer.iter().max().map_or(0, |m| m + 1);
    let mut rows: Vec<Vec<usize>> = vec![Vec::new(); layers];
    for (i, &l) in layer.iter().enumerate() {
        rows[l].push(i);
    }
    let mut pos = vec![0f64; nodes.len()];
    for row in &rows {
        for (k, &i) in row.iter().enumerate() {
            pos[i] = k as f64;
        }
    }
    for sweep in 0..4 {
        let forward = sweep % 2 == 0;
        let order: Vec<usize> = if forward {
            (1..layers).collect()
        } else {
            (0..layers.saturating_sub(1)).rev().collect()
        };
        for l in order {
            let mut bary: Vec<(f64, usize)> = rows[l]
                .iter()
                .map(|&i| {
                    let ns: Vec<f64> = links
                        .iter()
                        .filter_map(|&(a, b)| match forward {
                            true if b == i => Some(pos[a]),
                            false if a == i => Some(pos[b]),
                            _ => None,
                        })
                        .collect();
                    let b = if ns.is_empty() {
                        pos[i]
                    } else {
                        ns.iter().sum::<f64>() / ns.len() as f64
                    };
                    (b, i)
                })
                .collect();
            bary.sort_by(|x, y| x.0.total_cmp(&y.0).then(x.1.cmp(&y.1)));
            rows[l] = bary.into_iter().map(|(_, i)| i).collect();
            for (k, &i) in rows[l].iter().enumerate() {
                pos[i] = k as f64;
            }
        }
    }
    (0..nodes.len())
        .map(|i| (layer[i], pos[i] as usize))
        .collect()
}

pub fn render(nodes: &[Node], edges: &[Edge]) -> Markup {
    let at = layout(nodes, edges);
    let tallest = {
        let mut counts: HashMap<usize, usize> = HashMap::new();
        for (l, _) in &at {
            *counts.entry(*l).or_default() += 1;
        }
        counts.values().copied().max().unwrap_or(1)
    };
    let layers = at.iter().map(|(l, _)| l + 1).max().unwrap_or(1);
    let width = PAD * 2.0 + layers as f64 * NODE_W + (layers - 1) as f64 * GAP_X;
    let height = PAD * 2.0 + tallest as f64 * (NODE_H + GAP_Y);
    let xy = |i: usize| {
        let (l, k) = at[i];
        (
            PAD + l as f64 * (NODE_W + GAP_X),
            PAD + k as f64 * (NODE_H + GAP_Y),
        )
    };
    let index: HashMap<&str, usize> = nodes
        .iter()
        .enumerate()
        .map(|(i, n)| (n.id.as_str(), i))
        .collect();
    html! {
        svg.dag xmlns="http://www.w3.org/2000/svg" width=(width) height=(height) viewBox={ "0 0 " (width) " " (height) } {
            defs {
                marker #arrow viewBox="0 0 10 10" refX="10" refY="5" markerWidth="7" markerHeight="7" orient="auto-start-reverse" {
                    path d="M 0 0 L 10 5 L 0 10 z" fill="#8c959f" {}
                }
            }
            @for e in edges {
                @if let (Some(&a), Some(&b)) = (index.get(e.from.as_str()), index.get(e.to.as_str())) {
                    @let ((ax, ay), (bx, by)) = (xy(a), xy(b));
                    @let (x1, y1, x2, y2) = (ax + NODE_W, ay + NODE_H / 2.0, bx, by + NODE_H / 2.0);
                    @let mid = (x1 + x2) / 2.0;
                    path class={ "edge " (e.class) } marker-end="url(#arrow)" d=(format!("M{x1:.1},{y1:.1} C{mid:.1},{y1:.1} {mid:.1},{y2:.1} {x2:.1},{y2:.1}")) {
                        @if !e.label.is_empty() { title { (e.label) } }
                    }
                }
            }
            @for (i, n) in nodes.iter().enumerate() {
                @let (x, y) = xy(i);
                a href=(n.href) data-node=(n.id) {
                    g class={ "node " (n.class) } {
                        title { (n.tooltip) }
                        rect x=(x) y=(y) width=(NODE_W) height=(NODE_H) rx="4" {}
                        text x=(x + 8.0) y=(y + 16.0) font-weight="600" { (fit(&n.title)) }
                        text x=(x + 8.0) y=(y + 31.0) { (fit(&n.subtitle)) }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: &str) -> Node {
        Node {
            id: id.into(),
            title: id.into(),
            subtitle: String::new(),
            href: format!("/x/{id}"),
            class: String::new(),
            tooltip: id.into(),
        }
    }

    fn edge(a: &str, b: &str) -> Edge {
        Edge {
            from: a.into(),
            to: b.into(),
            label: String::new(),
            class: String::new(),
        }
    }

    #[test]
    fn layers_follow_the_longest_path() {
        let nodes: Vec<Node> = ["a", "b", "c", "d"].into_iter().map(node).collect();
        let edges = vec![
            edge("a", "b"),
            edge("b", "c"),
            edge("a", "c"),
            edge("d", "c"),
        ];
        let at = layout(&nodes, &edges);
        assert_eq!(at[0].0, 0);
        assert_eq!(at[1].0, 1);
        assert_eq!(at[2].0, 2);
        assert_eq!(at[3].0, 0);
        let svg = render(&nodes, &edges).into_string();
        assert_eq!(svg.matches("<a href=").count(), 4, "{svg}");
        assert_eq!(svg.matches("<path class=\"edge").count(), 4, "{svg}");
    }
}
