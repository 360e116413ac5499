//! A line chart drawn in the page as SVG: loss curves overlaid, one series per run and node.
//! Colours come from the style sheet (classes `c0`..`c7`), so the SVG carries no style.

use crate::pages::layout;
use maud::{html, Markup};

pub struct Series {
    pub label: String,
    pub points: Vec<(f64, f64)>,
    /// Held-out evaluations are drawn dashed beside the training loss.
    pub dashed: bool,
    /// Colour index (runs keep theirs across their series).
    pub colour: usize,
}

const W: f64 = 820.0;
const H: f64 = 320.0;
const LEFT: f64 = 64.0;
const RIGHT: f64 = 16.0;
const TOP: f64 = 12.0;
const BOTTOM: f64 = 36.0;

/// Round tick steps over `lo..hi`.
fn ticks(lo: f64, hi: f64, n: usize) -> Vec<f64> {
    if hi <= lo || !lo.is_finite() || !hi.is_finite() {
        return vec![lo];
    }
    let raw = (hi - lo) / n as f64;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * mag);
    let mut t = (lo / step).ceil() * step;
    let mut out = Vec::new();
    while t <= hi + step * 1e-9 {
        out.push(t);
        t += step;
    }
    out
}

pub fn render(series: &[Series], x_label: &str, y_label: &str) -> Markup {
    let all = series
        .iter()
        .flat_map(|s| s.points.iter())
        .filter(|(x, y)| x.is_finite() && y.is_finite());
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for &(x, y) in all {
        x0 = x0.min(x);
        x1 = x1.max(x);
        y0 = y0.min(y);
        y1 = y1.max(y);
    }
    if x0 > x1 {
        return html! { p.note { "no points to draw" } };
    }
    if x1 == x0 {
        x1 = x0 + 1.0;
    }
    if y1 == y0 {
        y1 = y0 + 1.0;
    }
    let px = |x: f64| LEFT + (x - x0) / (x1 - x0) * (W - LEFT - RIGHT);
    let py = |y: f64| TOP + (1.0 - (y - y0) / (y1 - y0)) * (H - TOP - BOTTOM);
    let legend_h = 16.0 * series.len() as f64 + 8.0;
    html! {
        svg.chart xmlns="http://www.w3.org/2000/svg" width=(W) height=(H + legend_h) viewBox={ "0 0 " (W) " " (H + legend_h) } role="img" aria-label=(y_label) {
            @for t in ticks(y0, y1, 5) {
                line.grid x1=(LEFT) x2=(W - RIGHT) y1=(py(t)) y2=(py(t)) {}
                text x=(LEFT - 6.0) y=(py(t) + 4.0) text-anchor="end" { (layout::metric(t)) }
            }
            @for t in ticks(x0, x1, 8) {
                line.grid x1=(px(t)) x2=(px(t)) y1=(TOP) y2=(H - BOTTOM) {}
                text x=(px(t)) y=(H - BOTTOM + 14.0) text-anchor="middle" { (layout::metric(t)) }
            }
            line.axis x1=(LEFT) x2=(W - RIGHT) y1=(H - BOTTOM) y2=(H - BOTTOM) {}
            line.axis x1=(LEFT) x2=(LEFT) y1=(TOP) y2=(H - BOTTOM) {}
            text x=((LEFT + W - RIGHT) / 2.0) y=(H - 4.0) text-anchor="middle" { (x_label) }
            text x="12" y=(TOP + (H - TOP - BOTTOM) / 2.0) text-anchor="middle" transform={ "rotate(-90 12 " (TOP + (H - TOP - BOTTOM) / 2.0) ")" } { (y_label) }
            @for s in series {
                @let pts = s.points.iter().filter(|(x, y)| x.is_finite() && y.is_finite()).map(|&(x, y)| format!("{:.1},{:.1}", px(x), py(y))).collect::<Vec<_>>().join(" ");
                polyline class={ "series c" (s.colour % 8) @if s.dashed { " dashed" } } points=(pts) data-label=(s.label) { title { (s.label) } }
            }
            @for (i, s) in series.iter().enumerate() {
                @let y = H + 4.0 + 16.0 * i as f64;
                rect class={ "key c" (s.colour % 8) } x=(LEFT) y=(y + 2.0) width="18" height=(if s.dashed { 2 } else { 4 }) {}
                text x=(LEFT + 26.0) y=(y + 8.0) { (s.label) }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_are_round() {
        assert_eq!(ticks(0.0, 10.0, 5), vec![0.0, 2.0, 4.0, 6.0, 8.0, 10.0]);
        let t = ticks(1.23, 4.56, 4);
        assert!(t.iter().all(|x| (x * 10.0).round() == x * 10.0), "{t:?}");
    }

    #[test]
    fn series_labels_are_escaped() {
        let svg = render(
            &[Series {
                label: "<script>x</script>".into(),
                points: vec![(0.0, 1.0), (1.0, 0.5)],
                dashed: false,
                colour: 0,
            }],
            "step",
            "loss",
        )
        .into_string();
        assert!(svg.contains("&lt;script&gt;"), "{svg}");
        assert!(svg.contains("<polyline"), "{svg}");
    }
}
