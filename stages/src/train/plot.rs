//! A dependency-free SVG plot of a training curve: loss (left axis), held-out loss (points),
//! LR (right axis, dashed).

use anyhow::{Context, Result};
use serde::Deserialize;

/// One line of a `curve` artifact: a training step or a held-out evaluation.
#[derive(Deserialize)]
pub struct CurveLine {
    pub step: usize,
    pub loss: Option<f64>,
    pub lr: Option<f64>,
    pub heldout_loss: Option<f64>,
}

/// The lines of a `curve` artifact (JSONL).
pub fn curve_lines(curve: &[u8]) -> Result<Vec<(&[u8], CurveLine)>> {
    curve
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .enumerate()
        .map(|(i, line)| {
            let parsed = serde_json::from_slice(line)
                .with_context(|| format!("line {} of the training curve", i + 1))?;
            Ok((line, parsed))
        })
        .collect()
}

/// The plot of a `curve` artifact: drawn from its bytes, so equal curves give equal plots.
pub fn svg_of_curve(title: &str, curve: &[u8]) -> Result<String> {
    let (mut points, mut evals) = (Vec::new(), Vec::new());
    for (_, l) in curve_lines(curve)? {
        match (l.heldout_loss, l.loss, l.lr) {
            (Some(h), _, _) => evals.push((l.step, h)),
            (None, Some(loss), Some(lr)) => points.push((l.step, loss, lr)),
            _ => {}
        }
    }
    Ok(svg(title, &points, &evals))
}

pub fn svg(title: &str, points: &[(usize, f64, f64)], evals: &[(usize, f64)]) -> String {
    let (w, h, m) = (720.0f64, 360.0f64, 56.0f64);
    let steps: Vec<usize> = points
        .iter()
        .map(|p| p.0)
        .chain(evals.iter().map(|e| e.0))
        .collect();
    let (x0, x1) = (
        steps.iter().copied().min().unwrap_or(0) as f64,
        steps.iter().copied().max().unwrap_or(1).max(1) as f64,
    );
    let losses: Vec<f64> = points
        .iter()
        .map(|p| p.1)
        .chain(evals.iter().map(|e| e.1))
        .filter(|v| v.is_finite())
        .collect();
    let lo = losses
        .iter()
        .copied()
        .fold(f64::INFINITY, f64::min)
        .min(0.0);
    let hi = losses.iter().copied().fold(0.0f64, f64::max).max(1e-9);
    let lr_hi = points.iter().map(|p| p.2).fold(0.0f64, f64::max).max(1e-12);
    let sx = |x: f64| m + (x - x0) / (x1 - x0).max(1.0) * (w - 2.0 * m);
    let sy = |y: f64| h - m - (y - lo) / (hi - lo).max(1e-12) * (h - 2.0 * m);
    let sl = |y: f64| h - m - y / lr_hi * (h - 2.0 * m);
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" viewBox=\"0 0 {w} {h}\" font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n"
    );
    s += &format!(
        "<text x=\"{m}\" y=\"20\" font-size=\"14\">{} — loss (blue), held-out loss (red), LR (grey, right axis)</text>\n",
        escape(title)
    );
    s += &format!(
        "<line x1=\"{m}\" y1=\"{b}\" x2=\"{r}\" y2=\"{b}\" stroke=\"black\"/><line x1=\"{m}\" y1=\"{m}\" x2=\"{m}\" y2=\"{b}\" stroke=\"black\"/>\n",
        b = h - m,
        r = w - m
    );
    for i in 0..=4 {
        let v = lo + (hi - lo) * f64::from(i) / 4.0;
        s += &format!(
            "<text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{v:.3}</text>\n",
            m - 4.0,
            sy(v) + 4.0
        );
        let l = lr_hi * f64::from(i) / 4.0;
        s += &format!(
            "<text x=\"{}\" y=\"{:.1}\" fill=\"grey\">{l:.1e}</text>\n",
            w - m + 4.0,
            sl(l) + 4.0
        );
    }
    s += &format!(
        "<text x=\"{m}\" y=\"{}\">step {x0}</text><text x=\"{}\" y=\"{}\" text-anchor=\"end\">step {x1}</text>\n",
        h - m + 16.0,
        w - m,
        h - m + 16.0
    );
    let path = |pts: Vec<(f64, f64)>| -> String {
        pts.iter()
            .enumerate()
            .map(|(i, (x, y))| format!("{}{x:.1},{y:.1}", if i == 0 { "M" } else { " L" }))
            .collect()
    };
    if !points.is_empty() {
        let lr: Vec<(f64, f64)> = points.iter().map(|p| (sx(p.0 as f64), sl(p.2))).collect();
        s += &format!(
            "<path d=\"{}\" fill=\"none\" stroke=\"grey\" stroke-dasharray=\"4 3\"/>\n",
            path(lr)
        );
        let loss: Vec<(f64, f64)> = points
            .iter()
            .filter(|p| p.1.is_finite())
            .map(|p| (sx(p.0 as f64), sy(p.1)))
            .collect();
        s += &format!(
            "<path d=\"{}\" fill=\"none\" stroke=\"#1f77b4\" stroke-width=\"1.5\"/>\n",
            path(loss)
        );
    }
    for (x, y) in evals {
        s += &format!(
            "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"4\" fill=\"#d62728\"><title>held-out {y:.4} at step {x}</title></circle>\n",
            sx(*x as f64),
            sy(*y)
        );
    }
    s += "</svg>\n";
    s
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}
