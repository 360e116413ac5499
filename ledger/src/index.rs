//! The sled index: derived lookups over the event log, rebuildable from it at any time.
//!
//! Applying an event is idempotent, and the `meta/tail` record is written after the event's
//! entries, so a crash between the two just re-applies the event on the next open.

use crate::error::Result;
use crate::event::{EventKind, RunStatus};
use crate::hash::Hash;
use crate::log::{Stored, Tail};
use std::path::Path;

#[derive(Clone)]
pub struct Index {
    db: sled::Db,
    /// seq → offset ++ event id
    events: sled::Tree,
    /// artifact → seq of the event that first brought its bytes
    artifacts: sled::Tree,
    /// action key → seq of the latest successful stage run
    actions: sled::Tree,
    /// run id ++ seq → ()
    runs: sled::Tree,
    /// tag name → artifact
    tags: sled::Tree,
    /// request hash → seq of the observation
    observations: sled::Tree,
    /// artifact ++ seq of a stage run that consumed it → ()
    consumers: sled::Tree,
    /// artifact → seq of the `gc` that removed its bytes
    collected: sled::Tree,
    meta: sled::Tree,
}

/// The outcome of opening the persistent index.
pub enum OpenIndex {
    Ready(Index),
    /// Another process holds the sled database.
    Busy,
    /// sled could not open its files (e.g. damaged by a crash); the log can rebuild it.
    Broken(String),
}

const TREES: [&str; 8] = [
    "events",
    "artifacts",
    "actions",
    "runs",
    "tags",
    "observations",
    "consumers",
    "collected",
];

impl Index {
    pub fn open(path: &Path) -> Result<OpenIndex> {
        match sled::Config::new().path(path).open() {
            Ok(db) => Ok(OpenIndex::Ready(Index::from_db(db)?)),
            Err(sled::Error::Io(e)) if e.to_string().contains("could not acquire lock") => {
                Ok(OpenIndex::Busy)
            }
            Err(e) => Ok(OpenIndex::Broken(format!(
                "cannot open the index at {}: {e}",
                path.display()
            ))),
        }
    }

    /// An in-memory index, for readers while a writer holds the persistent one, and for checks.
    pub fn temporary() -> Result<Index> {
        Index::from_db(sled::Config::new().temporary(true).open()?)
    }

    fn from_db(db: sled::Db) -> Result<Index> {
        Ok(Index {
            events: db.open_tree("events")?,
            artifacts: db.open_tree("artifacts")?,
            actions: db.open_tree("actions")?,
            runs: db.open_tree("runs")?,
            tags: db.open_tree("tags")?,
            observations: db.open_tree("observations")?,
            consumers: db.open_tree("consumers")?,
            collected: db.open_tree("collected")?,
            meta: db.open_tree("meta")?,
            db,
        })
    }

    pub fn clear(&self) -> Result<()> {
        for t in self.trees() {
            t.clear()?;
        }
        self.meta.clear()?;
        Ok(())
    }

    fn trees(&self) -> [&sled::Tree; 8] {
        [
            &self.events,
            &self.artifacts,
            &self.actions,
            &self.runs,
            &self.tags,
            &self.observations,
            &self.consumers,
            &self.collected,
        ]
    }

    /// Where the index has caught up to in the log.
    pub fn tail(&self) -> Result<Tail> {
        Ok(match self.meta.get("tail")? {
            Some(v) if v.len() == 48 => Tail {
                next_seq: u64::from_be_bytes(v[..8].try_into().unwrap()),
                last_id: Hash(v[8..40].try_into().unwrap()),
                end: u64::from_be_bytes(v[40..48].try_into().unwrap()),
            },
            _ => Tail::EMPTY,
        })
    }

    fn set_tail(&self, tail: Tail) -> Result<()> {
        let mut v = Vec::with_capacity(48);
        v.extend_from_slice(&tail.next_seq.to_be_bytes());
        v.extend_from_slice(tail.last_id.as_bytes());
        v.extend_from_slice(&tail.end.to_be_bytes());
        self.meta.insert("tail", v)?;
        Ok(())
    }

    /// Applies events (in log order) and records the new tail.
    pub fn apply(&self, events: &[Stored], tail: Tail) -> Result<()> {
        for s in events {
            self.apply_one(s)?;
        }
        self.set_tail(tail)
    }

    fn apply_one(&self, s: &Stored) -> Result<()> {
        let seq = s.event.seq.to_be_bytes();
        let mut loc = Vec::with_capacity(40);
        loc.extend_from_slice(&s.offset.to_be_bytes());
        loc.extend_from_slice(s.id.as_bytes());
        self.events.insert(seq, loc)?;
        match &s.event.kind {
            EventKind::ArtifactAdded(a) => self.introduce(&a.hash, &seq)?,
            EventKind::RunStarted(r) => {
                self.introduce(&r.config, &seq)?;
                self.runs.insert(cat(&r.run_id, &seq), &[])?;
            }
            EventKind::StageRun(run) => {
                self.runs.insert(cat(&run.run_id, &seq), &[])?;
                for (_, input) in &run.inputs {
                    self.consumers.insert(cat(input, &seq), &[])?;
                }
                if let RunStatus::Succeeded = run.status {
                    for o in &run.outputs {
                        self.introduce(&o.hash, &seq)?;
                    }
                    self.actions.insert(run.action_key.as_bytes(), &seq)?;
                }
            }
            EventKind::Observation(o) => {
                self.introduce(&o.response, &seq)?;
                self.observations
                    .compare_and_swap(o.request.as_bytes(), None as Option<&[u8]>, Some(&seq))?
                    .ok();
            }
            EventKind::Tag(t) => {
                self.tags.insert(t.name.as_bytes(), t.target.as_bytes())?;
            }
            EventKind::Collected(c) => {
                for h in &c.hashes {
                    self.collected.insert(h.as_bytes(), &seq)?;
                }
            }
        }
        Ok(())
    }

    /// Records the first event that brought an artifact's bytes; bytes brought again after a
    /// `gc` are no longer collected.
    fn introduce(&self, hash: &Hash, seq: &[u8; 8]) -> Result<()> {
        self.artifacts
            .compare_and_swap(hash.as_bytes(), None as Option<&[u8]>, Some(seq))?
            .ok();
        if let Some(at) = self.collected.get(hash.as_bytes())? {
            if at.as_ref() < &seq[..] {
                self.collected.remove(hash.as_bytes())?;
            }
        }
        Ok(())
    }

    pub fn flush(&self) -> Result<()> {
        self.db.flush()?;
        Ok(())
    }

    pub fn event_location(&self, seq: u64) -> Result<Option<(u64, Hash)>> {
        Ok(self.events.get(seq.to_be_bytes())?.map(|v| {
            (
                u64::from_be_bytes(v[..8].try_into().unwrap()),
                Hash(v[8..40].try_into().unwrap()),
            )
        }))
    }

    pub fn event_count(&self) -> u64 {
        self.events.len() as u64
    }

    /// The event that first brought an artifact's bytes.
    pub fn introducer(&self, hash: &Hash) -> Result<Option<u64>> {
        Ok(self.artifacts.get(hash.as_bytes())?.map(|v| be_u64(&v)))
    }

    pub fn action(&self, key: &Hash) -> Result<Option<u64>> {
        Ok(self.actions.get(key.as_bytes())?.map(|v| be_u64(&v)))
    }

    pub fn observation(&self, request: &Hash) -> Result<Option<u64>> {
        Ok(self
            .observations
            .get(request.as_bytes())?
            .map(|v| be_u64(&v)))
    }

    pub fn tag(&self, name: &str) -> Result<Option<Hash>> {
        Ok(self
            .tags
            .get(name.as_bytes())?
            .map(|v| Hash(v.as_ref().try_into().unwrap())))
    }

    pub fn tags(&self) -> Result<Vec<(String, Hash)>> {
        self.tags
            .iter()
            .map(|kv| {
                let (k, v) = kv?;
                Ok((
                    String::from_utf8_lossy(&k).into_owned(),
                    Hash(v.as_ref().try_into().unwrap()),
                ))
            })
            .collect()
    }

    pub fn is_collected(&self, hash: &Hash) -> Result<bool> {
        Ok(self.collected.contains_key(hash.as_bytes())?)
    }

    /// Sequence numbers of a run's events, in order.
    pub fn run_events(&self, run: &Hash) -> Result<Vec<u64>> {
        suffix_seqs(&self.runs, run)
    }

    /// Stage runs that consumed `hash`.
    pub fn consumers(&self, hash: &Hash) -> Result<Vec<u64>> {
        suffix_seqs(&self.consumers, hash)
    }

    /// Known artifacts and runs whose hex address starts with `prefix`.
    pub fn match_prefix(&self, prefix: &str) -> Result<Vec<Hash>> {
        let mut out = Vec::new();
        let even = &prefix[..prefix.len() & !1];
        let bytes: Vec<u8> = (0..even.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&even[i..i + 2], 16).unwrap_or(0))
            .collect();
        for kv in self.artifacts.scan_prefix(&bytes) {
            let (k, _) = kv?;
            let h = Hash(k.as_ref().try_into().unwrap());
            if h.to_hex().starts_with(prefix) {
                out.push(h);
            }
        }
        for kv in self.runs.scan_prefix(&bytes) {
            let (k, _) = kv?;
            let h = Hash(k[..32].try_into().unwrap());
            if h.to_hex().starts_with(prefix) && !out.contains(&h) {
                out.push(h);
            }
        }
        Ok(out)
    }

    pub fn is_run(&self, hash: &Hash) -> Result<bool> {
        Ok(self.runs.scan_prefix(hash.as_bytes()).next().is_some())
    }

    /// The trees whose entries differ from `other`'s, with both entry counts. Streams both
    /// sides in key order, so memory stays flat however large the index.
    pub fn differences(&self, other: &Index) -> Result<Vec<(&'static str, usize, usize)>> {
        let mut out = Vec::new();
        for ((name, ours), theirs) in TREES.iter().zip(self.trees()).zip(other.trees()) {
            let mut a = ours.iter();
            let mut b = theirs.iter();
            let mut same = true;
            loop {
                match (a.next().transpose()?, b.next().transpose()?) {
                    (None, None) => break,
                    (Some(x), Some(y)) if x == y => {}
                    _ => {
                        same = false;
                        break;
                    }
                }
            }
            if !same {
                out.push((*name, ours.len(), theirs.len()));
            }
        }
        Ok(out)
    }
}

fn cat(hash: &Hash, seq: &[u8; 8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(40);
    k.extend_from_slice(hash.as_bytes());
    k.extend_from_slice(seq);
    k
}

fn be_u64(v: &[u8]) -> u64 {
    u64::from_be_bytes(v[..8].try_into().unwrap())
}

fn suffix_seqs(tree: &sled::Tree, hash: &Hash) -> Result<Vec<u64>> {
    tree.scan_prefix(hash.as_bytes())
        .map(|kv| Ok(be_u64(&kv?.0[32..])))
        .collect()
}
