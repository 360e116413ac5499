//! `ledger gc`: remove blobs that no tag and no run reaches.
//!
//! Reached: tag targets, every input and output of every stage run, run configs and recorded
//! observation responses. What is left are files added by hand and never used, and blobs left
//! by failed or interrupted stages. The `Collected` event is appended before any byte is
//! removed, so a crash mid-gc never leaves an artifact that is missing without a record.

use crate::error::{Error, Result};
use crate::event::{Collected, EventKind};
use crate::hash::Hash;
use crate::ledger::Ledger;
use crate::log::Frame;
use serde::Serialize;
use std::collections::HashSet;

/// An entry of the ledger's `tmp/` directory.
#[derive(Debug)]
pub struct Leftover {
    pub path: std::path::PathBuf,
    pub is_dir: bool,
    /// Bytes in it (a directory: every file under it).
    pub bytes: u64,
}

/// What `tmp/` holds: in-flight writes of a running writer, or leftovers of interrupted ones
/// (a blob's temp file, an import's staging directory).
pub fn leftovers(tmp: &std::path::Path) -> Result<Vec<Leftover>> {
    fn size(path: &std::path::Path) -> u64 {
        match std::fs::symlink_metadata(path) {
            Ok(m) if m.is_dir() => std::fs::read_dir(path)
                .map(|rd| rd.filter_map(|e| e.ok()).map(|e| size(&e.path())).sum())
                .unwrap_or(0),
            Ok(m) => m.len(),
            Err(_) => 0,
        }
    }
    let entries = match std::fs::read_dir(tmp) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io(tmp, e)),
    };
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| Error::io(tmp, e))?;
        let path = entry.path();
        let is_dir = entry.file_type().map_err(|e| Error::io(&path, e))?.is_dir();
        out.push(Leftover {
            bytes: size(&path),
            path,
            is_dir,
        });
    }
    out.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(out)
}

#[derive(Debug, Serialize)]
pub struct GcReport {
    pub dry_run: bool,
    pub removed: Vec<(String, u64)>,
    pub bytes: u64,
    /// Entries of `tmp/` removed (files and import staging directories), and their bytes.
    pub temp_files: usize,
    pub temp_bytes: u64,
}

pub fn gc(ledger: &mut Ledger, dry_run: bool) -> Result<GcReport> {
    if !ledger.is_writer() {
        return Err(Error::Invalid("gc needs the writer lock".into()));
    }
    let mut reached = HashSet::new();
    let mut known = HashSet::new();
    for frame in ledger.scan()? {
        match frame? {
            Frame::Good(stored) => {
                let event = stored.event;
                known.extend(event.artifacts());
                // A foreign event reaches what it claims to (its steps and observations), as a
                // local one does; an added file or a gc record reaches nothing.
                match event.kind.claim().0 {
                    EventKind::ArtifactAdded(_) | EventKind::Collected(_) => {}
                    _ => reached.extend(event.artifacts()),
                }
            }
            Frame::Torn { .. } => break,
            Frame::Damaged { offset, reason, .. } => {
                return Err(Error::Corrupt(format!(
                    "the event log is damaged at byte {offset} ({reason}); gc refuses to run on a damaged ledger: run `ledger verify`"
                )))
            }
        }
    }
    let mut removed = Vec::new();
    let mut bytes = 0;
    let mut collected = Vec::new();
    for hash in ledger.store().list()? {
        if reached.contains(&hash) {
            continue;
        }
        let size = std::fs::metadata(ledger.store().path(&hash)).map_or(0, |m| m.len());
        bytes += size;
        removed.push((hash, size));
        if known.contains(&hash) {
            collected.push(hash);
        }
    }
    let temps = leftovers(ledger.store().tmp_dir())?;
    if !dry_run {
        if !collected.is_empty() {
            ledger.append_one(EventKind::Collected(Collected { hashes: collected }))?;
        }
        for (hash, _) in &removed {
            ledger.store().remove(hash)?;
        }
        // Only writers create temp files and directories (an import's staging area), and we
        // hold the writer lock: these are leftovers of interrupted writers.
        let storage = ledger.storage().clone();
        for t in &temps {
            let removed = if t.is_dir {
                storage.remove_dir_all(&t.path)
            } else {
                storage.remove_file(&t.path)
            };
            removed.map_err(|e| Error::io(&t.path, e))?;
        }
    }
    Ok(GcReport {
        dry_run,
        removed: removed
            .into_iter()
            .map(|(h, s): (Hash, u64)| (h.to_hex(), s))
            .collect(),
        bytes,
        temp_files: temps.len(),
        temp_bytes: temps.iter().map(|t| t.bytes).sum(),
    })
}
