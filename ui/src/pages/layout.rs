//! The frame every page shares, and small pieces the pages reuse: links to runs and
//! artifacts, times, sizes, numbers. Every text goes through maud's escaping; nothing here
//! writes raw HTML.

use maud::{html, Markup, PreEscaped, DOCTYPE};

/// The pages of the top bar.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Nav {
    Runs,
    Compare,
    Ablations,
    Audit,
    None,
}

pub struct Frame<'a> {
    pub title: &'a str,
    pub nav: Nav,
    /// Events indexed when the page was made (the live-update script compares it).
    pub events: u64,
}

pub fn page(frame: Frame<'_>, body: Markup) -> Markup {
    let item = |nav: Nav, href: &str, label: &str| {
        html! { a href=(href) class=[(frame.nav == nav).then_some("active")] { (label) } }
    };
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (frame.title) " · ledger ui" }
                link rel="stylesheet" href=(crate::assets::CSS_PATH);
                script src=(crate::assets::JS_PATH) defer {}
            }
            body data-events=(frame.events) {
                header.top {
                    a.brand href="/" { "ledger" }
                    nav {
                        (item(Nav::Runs, "/", "Runs"))
                        (item(Nav::Compare, "/compare", "Compare"))
                        (item(Nav::Ablations, "/ablations", "Ablations"))
                        (item(Nav::Audit, "/audit", "Audit"))
                    }
                    span #live.live title="new events appear within a few seconds" {
                        (thousands(frame.events)) " events"
                    }
                }
                main #main data-events=(frame.events) { (body) }
            }
        }
    }
}

pub fn error(status: u16, message: &str) -> Markup {
    page(
        Frame {
            title: "error",
            nav: Nav::None,
            events: 0,
        },
        html! {
            h1 { "Error " (status) }
            pre.error { (message) }
            p { a href="/" { "Back to the runs" } }
        },
    )
}

/// A link to an artifact, its address shortened.
pub fn artifact_link(hex: &str) -> Markup {
    html! { a.hash href={ "/artifact/" (hex) } title=(hex) { (short(hex)) } }
}

pub fn run_link(hex: &str) -> Markup {
    html! { a.hash href={ "/run/" (hex) } title=(hex) { (short(hex)) } }
}

pub fn short(hex: &str) -> &str {
    &hex[..hex.len().min(12)]
}

/// `YYYY-MM-DD HH:MM:SS` (UTC).
pub fn time(ms: u64) -> String {
    ledger::event::rfc3339((ms / 1000) as i64)
        .replace('T', " ")
        .trim_end_matches('Z')
        .to_string()
}

pub fn seconds(ms: u64) -> String {
    let s = ms as f64 / 1000.0;
    if s < 120.0 {
        format!("{s:.2} s")
    } else if s < 7200.0 {
        format!("{:.1} min", s / 60.0)
    } else {
        format!("{:.1} h", s / 3600.0)
    }
}

pub fn size(bytes: u64) -> String {
    ledger::lineage::human_size(bytes)
}

pub fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

pub use ledger::display::metric;

/// A signed difference, with the relative change when the base is not zero.
pub fn delta(base: f64, other: f64) -> String {
    let d = other - base;
    if d == 0.0 {
        return "±0".into();
    }
    let sign = if d > 0.0 { "+" } else { "" };
    if base != 0.0 {
        format!("{sign}{} ({sign}{:.1}%)", metric(d), d / base.abs() * 100.0)
    } else {
        format!("{sign}{}", metric(d))
    }
}

/// Pretty JSON of a value, for `<pre>` (escaped by the caller's template).
pub fn pretty(v: &serde_json::Value) -> String {
    serde_json::to_string_pretty(v).unwrap_or_default()
}

/// A non-breaking marker used where a value is missing.
pub fn missing() -> Markup {
    html! { span.missing { (PreEscaped("&ndash;")) } }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_read_well() {
        assert_eq!(thousands(1_000_000), "1,000,000");
        assert_eq!(thousands(999), "999");
        assert_eq!(metric(3.0), "3");
        assert_eq!(metric(0.12345), "0.1235");
        assert_eq!(metric(12.3456), "12.35");
        assert_eq!(metric(0.0001234), "1.234e-4");
        assert_eq!(delta(2.0, 3.0), "+1 (+50.0%)");
        assert_eq!(delta(0.0, -0.5), "-0.5000");
        assert_eq!(delta(1.0, 1.0), "±0");
    }

    #[test]
    fn text_is_escaped_in_links_and_frames() {
        let m = error(404, "<script>alert(1)</script>").into_string();
        assert!(m.contains("&lt;script&gt;alert(1)&lt;/script&gt;"), "{m}");
        assert!(!m.contains("<script>alert"), "{m}");
    }
}
