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

#[derive(Debug, Serialize)]
pub struct GcReport {
    pub dry_run: bool,
    pub removed: Vec<(String, u64)>,
    pub bytes: u64,
    pub temp_files: usize,
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
                match &event.kind {
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
    let temp_dir = ledger.dir().join("tmp");
    let temps: Vec<_> = std::fs::read_dir(&temp_dir)
        .map_err(|e| Error::io(&temp_dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    if !dry_run {
        if !collected.is_empty() {
            ledger.append_one(EventKind::Collected(Collected { hashes: collected }))?;
        }
        for (hash, _) in &removed {
            ledger.store().remove(hash)?;
        }
        // Only writers create temp files, and we hold the writer lock: these are leftovers.
        for t in &temps {
            std::fs::remove_file(t).map_err(|e| Error::io(t, e))?;
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
    })
}
