//! Text and bytes, a window at a time: text in pages of `TEXT_WINDOW` bytes, the rest as a
//! hex dump of `HEX_WINDOW` bytes.

use crate::pages::layout;
use crate::web::Query;
use maud::{html, Markup};

pub const TEXT_WINDOW: usize = 64 << 10;
pub const HEX_WINDOW: usize = 4 << 10;

/// Whether bytes read as text: valid UTF-8 (a character cut at the end of the window allowed)
/// with few control characters.
pub fn looks_like_text(bytes: &[u8]) -> bool {
    let valid = match std::str::from_utf8(bytes) {
        Ok(_) => true,
        Err(e) => e.error_len().is_none(),
    };
    valid
        && bytes
            .iter()
            .filter(|&&b| b < 0x20 && !matches!(b, b'\n' | b'\r' | b'\t'))
            .count()
            * 100
            <= bytes.len()
}

fn pager(query: &Query, offset: u64, window: usize, shown: usize, size: u64) -> Markup {
    let w = window as u64;
    html! {
        div.pager {
            @if offset > 0 { a href=(query.with("offset", &offset.saturating_sub(w).to_string())) { "← previous" } }
            span { "bytes " (layout::thousands(offset)) "–" (layout::thousands(offset + shown as u64)) " of " (layout::thousands(size)) }
            @if offset + (shown as u64) < size { a href=(query.with("offset", &(offset + w).to_string())) { "next →" } }
        }
    }
}

pub fn text(bytes: &[u8], offset: u64, size: u64, query: &Query) -> Markup {
    html! {
        @if (bytes.len() as u64) < size { (pager(query, offset, TEXT_WINDOW, bytes.len(), size)) }
        pre #text-view { (String::from_utf8_lossy(bytes)) }
    }
}

pub fn hex(bytes: &[u8], offset: u64, size: u64, query: &Query) -> Markup {
    html! {
        (pager(query, offset, HEX_WINDOW, bytes.len(), size))
        table.hex #hex-view {
            tbody {
                @for (i, row) in bytes.chunks(16).enumerate() {
                    tr {
                        td.note { (format!("{:08x}", offset + i as u64 * 16)) }
                        td { (row.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(" ")) }
                        td { (row.iter().map(|&b| if (0x20..0x7f).contains(&b) { b as char } else { '.' }).collect::<String>()) }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn text_is_told_from_bytes() {
        assert!(super::looks_like_text(b"hello\nworld\t!"));
        assert!(super::looks_like_text("héllo".as_bytes()));
        // A character cut at the end of the window is still text.
        assert!(super::looks_like_text(&"é".as_bytes()[..1]));
        assert!(!super::looks_like_text(&[0, 1, 2, 3, 0xff, 0xfe]));
    }
}
