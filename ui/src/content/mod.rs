//! An artifact's bytes, shown for what they are: records (JSONL, zstd JSONL), a tensor
//! table (safetensors), a score table, a loss curve, text, SVG, or hex. Only a window of a
//! blob is ever read for a page (a page of records, a header, 64 KiB of text, 4 KiB of hex);
//! a whole blob is read only when it is small (`WHOLE_LIMIT`), and then checked against its
//! address.

pub mod records;
pub mod score;
pub mod tensors;
pub mod text;

use crate::pages::layout;
use crate::svg::chart::{self, Series};
use crate::web::Query;
use anyhow::Result;
use ledger::lineage::ArtifactInfo;
use ledger::records::{Limits, ZSTD_MAGIC};
use ledger::store::BlobStore;
use ledger::Hash;
use maud::{html, Markup};

/// Blobs up to this size may be read whole (drawn as a curve, served as an SVG image).
pub const WHOLE_LIMIT: u64 = 16 << 20;
/// JSON up to this size is parsed and shown pretty (a score as its table); larger JSON is
/// shown as text, a window at a time.
pub const JSON_LIMIT: u64 = 1 << 20;
pub const RECORDS_PER_PAGE: usize = 20;
/// Bytes of one record shown at most.
pub const RECORD_BYTES: usize = 256 << 10;
/// (Decompressed) bytes one page of records may read through at most.
pub const SCAN_LIMIT: u64 = 1 << 30;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Records,
    Tensors,
    Svg,
    Json,
    Text,
    Hex,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Records => "records",
            Kind::Tensors => "tensors",
            Kind::Svg => "svg",
            Kind::Json => "json",
            Kind::Text => "text",
            Kind::Hex => "hex",
        }
    }

    fn parse(s: &str) -> Option<Kind> {
        [
            Kind::Records,
            Kind::Tensors,
            Kind::Svg,
            Kind::Json,
            Kind::Text,
            Kind::Hex,
        ]
        .into_iter()
        .find(|k| k.name() == s)
    }
}

/// The view that fits: by media type, then by the first bytes.
pub fn kind(info: &ArtifactInfo, head: &[u8]) -> Kind {
    let media = info.media_type.as_str();
    match media {
        "application/x-ndjson" | "application/x-ndjson+zstd" | "application/jsonl" => Kind::Records,
        // A dataset of shards: its records, across the parts.
        ledger::manifest::MEDIA_TYPE
            if head.windows(6).any(|w| w == b"ndjson")
                || head.windows(5).any(|w| w == b"jsonl") =>
        {
            Kind::Records
        }
        "application/x-safetensors" => Kind::Tensors,
        "image/svg+xml" => Kind::Svg,
        "application/json" if info.size <= JSON_LIMIT => Kind::Json,
        _ if head.starts_with(&ZSTD_MAGIC) => Kind::Records,
        _ if tensors::sniff(head) => Kind::Tensors,
        _ if media.starts_with("text/")
            || media == "application/toml"
            || media == "application/json" =>
        {
            Kind::Text
        }
        _ if text::looks_like_text(head) => {
            let first = head
                .iter()
                .position(|&b| !b.is_ascii_whitespace())
                .map(|i| head[i]);
            if first == Some(b'{') && head.contains(&b'\n') {
                Kind::Records
            } else {
                Kind::Text
            }
        }
        _ => Kind::Hex,
    }
}

/// The views a blob can be shown in, the fitting one first.
fn views(fitting: Kind) -> Vec<Kind> {
    let mut v = vec![fitting];
    for k in [Kind::Records, Kind::Text, Kind::Hex] {
        if !v.contains(&k) {
            v.push(k);
        }
    }
    v
}

/// Whether an output holds a training curve (`midtrain`/`sft` `curve`).
pub fn is_curve(info: &ArtifactInfo) -> bool {
    matches!(&info.provenance, ledger::lineage::Provenance::Output { output, .. } if output == "curve" || output.ends_with(".curve"))
}

/// The series of a curve's JSONL: training loss by step, and held-out loss when evaluated.
pub fn curve_series(bytes: &[u8], label: &str, colour: usize) -> Vec<Series> {
    let (mut train, mut heldout) = (Vec::new(), Vec::new());
    for line in bytes.split(|&b| b == b'\n') {
        let Ok(v) = serde_json::from_slice::<serde_json::Value>(line) else {
            continue;
        };
        let Some(step) = v["step"].as_f64() else {
            continue;
        };
        if let Some(l) = v["loss"].as_f64() {
            train.push((step, l));
        }
        if let Some(l) = v["heldout_loss"].as_f64() {
            heldout.push((step, l));
        }
    }
    let mut out = Vec::new();
    if !train.is_empty() {
        out.push(Series {
            label: format!("{label} loss"),
            points: train,
            dashed: false,
            colour,
        });
    }
    if !heldout.is_empty() {
        out.push(Series {
            label: format!("{label} held-out loss"),
            points: heldout,
            dashed: true,
            colour,
        });
    }
    out
}

/// The content section of an artifact page.
pub fn render(
    store: &BlobStore,
    hash: &Hash,
    info: &ArtifactInfo,
    query: &Query,
) -> Result<Markup> {
    if !info.stored {
        return Ok(html! { p.warning { "The bytes are not in the store"
        @if info.collected { " (collected by `ledger gc`)" } "; "
        @if matches!(info.provenance, ledger::lineage::Provenance::Output { .. }) { "`ledger replay " (hash) "` rebuilds them." } @else { "`ledger add` the file again to restore them." } } });
    }
    let head = ledger::records::bytes_at(store, hash, 0, 4096)?;
    let fitting = kind(info, &head);
    let shown = query.get("view").and_then(Kind::parse).unwrap_or(fitting);
    let tabs = html! {
        div.pager.views {
            "view: "
            @for k in views(fitting) {
                @if k == shown { strong { (k.name()) } } @else { a href=(view_link(query, k)) { (k.name()) } }
            }
        }
    };
    let body = match shown {
        Kind::Records => {
            let page_no = query.number("page").unwrap_or(0);
            let page = ledger::records::page(
                store,
                hash,
                page_no * RECORDS_PER_PAGE as u64,
                RECORDS_PER_PAGE,
                Limits {
                    max_bytes: RECORD_BYTES,
                    scan_limit: SCAN_LIMIT,
                },
            )?;
            let curve = if is_curve(info) && info.size <= WHOLE_LIMIT {
                let bytes = store.read(hash)?;
                Some(chart::render(&curve_series(&bytes, "", 0), "step", "loss"))
            } else {
                None
            };
            html! {
                @if let Some(c) = curve { div.graph #curve { (c) } }
                (records::render(&page, query, RECORDS_PER_PAGE))
            }
        }
        Kind::Tensors => match tensors::read(store, hash) {
            Ok(t) => tensors::render(&t),
            Err(e) => html! { p.error-text { (format!("{e:#}")) } },
        },
        Kind::Svg => html! {
            p { img.svg-artifact src={ "/blob/" (hash) "/svg" } alt="the SVG artifact"; }
            details { summary { "source" } pre { (String::from_utf8_lossy(&head)) @if info.size > head.len() as u64 { "…" } } }
        },
        Kind::Json if info.size > JSON_LIMIT => {
            let offset = query.number("offset").unwrap_or(0);
            let bytes = ledger::records::bytes_at(store, hash, offset, text::TEXT_WINDOW)?;
            text::text(&bytes, offset, info.size, query)
        }
        Kind::Json => {
            // Small: read whole, checked against the address.
            let bytes = store.read(hash)?;
            match serde_json::from_slice::<serde_json::Value>(&bytes) {
                Ok(v) => html! {
                    @if let Some(table) = score::render(&v) { (table) }
                    pre #json-view { (layout::pretty(&v)) }
                },
                Err(e) => {
                    html! { p.warning { "not valid JSON: " (e) } pre { (String::from_utf8_lossy(&bytes)) } }
                }
            }
        }
        Kind::Text => {
            let offset = query.number("offset").unwrap_or(0);
            let bytes = ledger::records::bytes_at(store, hash, offset, text::TEXT_WINDOW)?;
            text::text(&bytes, offset, info.size, query)
        }
        Kind::Hex => {
            let offset = query.number("offset").unwrap_or(0) / 16 * 16;
            let bytes = ledger::records::bytes_at(store, hash, offset, text::HEX_WINDOW)?;
            text::hex(&bytes, offset, info.size, query)
        }
    };
    Ok(html! {
        (tabs)
        div #content data-kind=(shown.name()) { (body) }
        @if info.size > WHOLE_LIMIT { p.note { "Shown from the stored bytes as they are; `ledger verify` rehashes every blob." } }
    })
}

fn view_link(query: &Query, k: Kind) -> String {
    let mut q = query.clone();
    q.0.retain(|(k, _)| k != "page" && k != "offset");
    q.with("view", k.name())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn curves_have_training_and_heldout_series() {
        let bytes = b"{\"step\":1,\"loss\":2.0,\"lr\":0.1}\n{\"step\":2,\"loss\":1.5}\n{\"step\":2,\"heldout_loss\":1.7}\n";
        let s = curve_series(bytes, "run", 3);
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].points, vec![(1.0, 2.0), (2.0, 1.5)]);
        assert!(s[1].dashed && s[1].points == vec![(2.0, 1.7)]);
    }
}
