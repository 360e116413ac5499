//! A page of the records of a blob that holds one record a line — JSONL, or zstd-compressed
//! JSONL (the stages' shards) — read from the start of the blob, one line at a time, so a huge
//! blob is never held whole: memory is bounded by the page, each record cut at `max_bytes`,
//! and the work by `scan_limit` bytes of (decompressed) input.
//!
//! These are bytes for display, not for a stage: they are not checked against the blob's
//! address while they stream (`ledger verify` rehashes every blob; stages read through
//! [`BlobStore::open_verified`](crate::store::BlobStore::open_verified)).

use crate::error::{Error, Result};
use crate::hash::Hash;
use crate::store::BlobStore;
use serde::Serialize;
use std::io::{BufRead, BufReader, Read};

/// The first bytes of a zstd frame.
pub const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Encoding {
    Plain,
    Zstd,
}

/// One record: a line that is not blank.
#[derive(Clone, Debug, Serialize)]
pub struct Record {
    /// Its position among the blob's records, from 0.
    pub index: u64,
    /// Its line number in the (decompressed) text, from 1.
    pub line: u64,
    /// The line without its newline, cut at `max_bytes`.
    pub bytes: Vec<u8>,
    /// The whole line's length; more than `bytes.len()` when it was cut.
    pub len: u64,
}

impl Record {
    pub fn truncated(&self) -> bool {
        self.len > self.bytes.len() as u64
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct Page {
    pub encoding: Encoding,
    /// The index of the first record asked for.
    pub first: u64,
    pub records: Vec<Record>,
    /// True when at least one more record follows the page.
    pub more: bool,
    /// Set when the read stopped at `scan_limit` before the page was full or its end known.
    pub stopped: Option<String>,
}

/// Limits of one page read.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Bytes kept of each record.
    pub max_bytes: usize,
    /// (Decompressed) bytes read, at most, before the read stops.
    pub scan_limit: u64,
}

/// Records `first .. first + count` of the blob `hash`; zstd is recognised by its magic bytes.
pub fn page(
    store: &BlobStore,
    hash: &Hash,
    first: u64,
    count: usize,
    limits: Limits,
) -> Result<Page> {
    let path = store.path(hash);
    // A manifest pages through its parts, one after another (a dataset of shards).
    let source: Box<dyn std::io::Read + Send> =
        if crate::manifest::Manifest::read(store, hash)?.is_some() {
            crate::manifest::open_whole(store, hash)?
        } else {
            Box::new(store.open(hash)?)
        };
    let mut file = BufReader::with_capacity(1 << 16, source);
    let head = file.fill_buf().map_err(|e| Error::io(&path, e))?;
    let encoding = if head.starts_with(&ZSTD_MAGIC) {
        Encoding::Zstd
    } else {
        Encoding::Plain
    };
    let what = format!("blob {hash}");
    match encoding {
        Encoding::Plain => read_page(file, encoding, first, count, limits, &what),
        Encoding::Zstd => {
            let decoder = zstd::stream::read::Decoder::with_buffer(file)
                .map_err(|e| Error::Invalid(format!("{what}: not a zstd stream: {e}")))?;
            read_page(
                BufReader::with_capacity(1 << 16, decoder),
                encoding,
                first,
                count,
                limits,
                &what,
            )
        }
    }
}

fn read_page(
    mut input: impl BufRead,
    encoding: Encoding,
    first: u64,
    count: usize,
    limits: Limits,
    what: &str,
) -> Result<Page> {
    let mut page = Page {
        encoding,
        first,
        records: Vec::with_capacity(count.min(1024)),
        more: false,
        stopped: None,
    };
    let (mut index, mut line, mut scanned) = (0u64, 0u64, 0u64);
    let mut bytes = Vec::new();
    loop {
        if scanned >= limits.scan_limit {
            page.stopped = Some(format!(
                "stopped after reading {scanned} bytes (the limit of one page) at line {line}"
            ));
            return Ok(page);
        }
        line += 1;
        bytes.clear();
        let keep = if index >= first && page.records.len() < count {
            limits.max_bytes
        } else {
            // Skipping: only whether the line is blank matters.
            1
        };
        let Some((len, blank)) = read_line(&mut input, &mut bytes, keep, &mut scanned)
            .map_err(|e| Error::Invalid(format!("{what}: reading line {line}: {e}")))?
        else {
            return Ok(page);
        };
        if blank {
            continue;
        }
        if page.records.len() == count && index >= first {
            page.more = true;
            return Ok(page);
        }
        if index >= first {
            page.records.push(Record {
                index,
                line,
                bytes: std::mem::take(&mut bytes),
                len,
            });
        }
        index += 1;
    }
}

/// Reads one line, keeping its first `keep` bytes in `out` (without the newline); returns its
/// length and whether it is blank (only ASCII whitespace), or `None` at the end of the input.
fn read_line(
    input: &mut impl BufRead,
    out: &mut Vec<u8>,
    keep: usize,
    scanned: &mut u64,
) -> std::io::Result<Option<(u64, bool)>> {
    let (mut len, mut blank, mut any) = (0u64, true, false);
    loop {
        let buf = input.fill_buf()?;
        if buf.is_empty() {
            return Ok(any.then_some((len, blank)));
        }
        any = true;
        let (chunk, done) = match buf.iter().position(|&b| b == b'\n') {
            Some(i) => (&buf[..i], true),
            None => (buf, false),
        };
        blank &= chunk.iter().all(u8::is_ascii_whitespace);
        let room = keep.saturating_sub(out.len());
        out.extend_from_slice(&chunk[..chunk.len().min(room)]);
        len += chunk.len() as u64;
        let consumed = chunk.len() + usize::from(done);
        *scanned += consumed as u64;
        input.consume(consumed);
        if done {
            return Ok(Some((len, blank)));
        }
    }
}

/// Up to `n` bytes of a blob from `offset` (for hex and text views of blobs of any size).
pub fn bytes_at(store: &BlobStore, hash: &Hash, offset: u64, n: usize) -> Result<Vec<u8>> {
    use std::io::{Seek, SeekFrom};
    let path = store.path(hash);
    let mut file = store.open(hash)?;
    file.seek(SeekFrom::Start(offset))
        .map_err(|e| Error::io(&path, e))?;
    let mut out = Vec::with_capacity(n.min(1 << 20));
    file.take(n as u64)
        .read_to_end(&mut out)
        .map_err(|e| Error::io(&path, e))?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const WIDE: Limits = Limits {
        max_bytes: 1 << 20,
        scan_limit: u64::MAX,
    };

    fn store_with(bytes: &[u8]) -> (tempfile::TempDir, BlobStore, Hash) {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::new(dir.path());
        store.create_dirs().unwrap();
        let (hash, _) = store.put_bytes(bytes).unwrap();
        (dir, store, hash)
    }

    fn texts(p: &Page) -> Vec<String> {
        p.records
            .iter()
            .map(|r| String::from_utf8(r.bytes.clone()).unwrap())
            .collect()
    }

    #[test]
    fn pages_plain_lines_skipping_blank_ones() {
        let (_d, store, hash) = store_with(b"{\"a\":0}\n\n  \n{\"a\":1}\n{\"a\":2}\n{\"a\":3}");
        let p = page(&store, &hash, 0, 2, WIDE).unwrap();
        assert_eq!(p.encoding, Encoding::Plain);
        assert_eq!(texts(&p), ["{\"a\":0}", "{\"a\":1}"]);
        assert_eq!((p.records[1].index, p.records[1].line), (1, 4));
        assert!(p.more);
        let p = page(&store, &hash, 2, 2, WIDE).unwrap();
        assert_eq!(texts(&p), ["{\"a\":2}", "{\"a\":3}"]);
        assert!(
            !p.more,
            "the last line has no newline and nothing follows it"
        );
        let p = page(&store, &hash, 9, 2, WIDE).unwrap();
        assert!(p.records.is_empty() && !p.more);
    }

    #[test]
    fn pages_zstd_lines_and_cuts_long_records() {
        let text: String = (0..50).map(|i| format!("{}\n", "x".repeat(i))).collect();
        let compressed = zstd::encode_all(text.as_bytes(), 3).unwrap();
        let (_d, store, hash) = store_with(&compressed);
        let limits = Limits {
            max_bytes: 10,
            scan_limit: u64::MAX,
        };
        // Line 1 is empty (blank), so record 0 is one `x`.
        let p = page(&store, &hash, 40, 5, limits).unwrap();
        assert_eq!(p.encoding, Encoding::Zstd);
        assert_eq!(p.records.len(), 5);
        let r = &p.records[0];
        assert_eq!((r.index, r.line, r.len, r.bytes.len()), (40, 42, 41, 10));
        assert!(r.truncated());
        assert!(p.more);
        assert!(!page(&store, &hash, 45, 5, limits).unwrap().more);
    }

    #[test]
    fn a_scan_limit_stops_a_huge_line() {
        let (_d, store, hash) = store_with(&vec![b'y'; 300_000]);
        let p = page(
            &store,
            &hash,
            1,
            1,
            Limits {
                max_bytes: 16,
                scan_limit: 100_000,
            },
        )
        .unwrap();
        assert!(p.records.is_empty());
        assert!(p.stopped.is_some(), "{p:?}");
    }

    #[test]
    fn bad_zstd_is_an_error_naming_the_blob() {
        let mut bytes = ZSTD_MAGIC.to_vec();
        bytes.extend_from_slice(&[0xff; 64]);
        let (_d, store, hash) = store_with(&bytes);
        let err = page(&store, &hash, 0, 10, WIDE).unwrap_err().to_string();
        assert!(err.contains(&hash.to_hex()), "{err}");
    }

    #[test]
    fn bytes_at_reads_a_window() {
        let (_d, store, hash) = store_with(b"0123456789");
        assert_eq!(bytes_at(&store, &hash, 3, 4).unwrap(), b"3456");
        assert_eq!(bytes_at(&store, &hash, 8, 4).unwrap(), b"89");
    }
}
