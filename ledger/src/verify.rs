//! `ledger verify`: rehash every blob, walk the hash chain, check the index against the log,
//! and name every artifact downstream of a damaged one.

use crate::error::Result;
use crate::event::{Event, EventKind, RunStatus};
use crate::hash::Hash;
use crate::index::Index;
use crate::ledger::Ledger;
use crate::log::Frame;
use indicatif::ProgressBar;
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

#[derive(Debug, Serialize)]
pub struct Problem {
    /// `log`, `blob`, `missing` or `index`.
    pub kind: &'static str,
    pub subject: String,
    pub detail: String,
}

#[derive(Debug, Serialize)]
pub struct VerifyReport {
    pub events: u64,
    pub blobs: u64,
    pub blob_bytes: u64,
    pub problems: Vec<Problem>,
    /// Artifacts built from damaged or missing ones, each with the damaged ancestor it depends on.
    pub downstream: BTreeMap<String, String>,
    pub warnings: Vec<String>,
}

impl VerifyReport {
    pub fn clean(&self) -> bool {
        self.problems.is_empty()
    }
}

/// What the log says about artifacts, gathered in one scan.
#[derive(Default)]
struct LogFacts {
    events: u64,
    /// artifact → seq of the event that introduced it
    introduced: HashMap<Hash, u64>,
    collected: HashSet<Hash>,
    /// successful (or cached) stage runs: inputs → outputs, in log order
    derivations: Vec<(Vec<Hash>, Vec<Hash>)>,
    /// Responses recorded since the last stage run: a step appends the observations it makes
    /// while it executes, just before its own event, so they count among its inputs.
    observed: Vec<Hash>,
}

impl LogFacts {
    fn learn(&mut self, event: &Event) {
        self.events += 1;
        let seq = event.seq;
        let introduce = |h: Hash, facts: &mut LogFacts| {
            facts.introduced.entry(h).or_insert(seq);
            facts.collected.remove(&h);
        };
        match &event.kind {
            EventKind::ArtifactAdded(a) => introduce(a.hash, self),
            EventKind::RunStarted(r) => {
                introduce(r.config, self);
                self.observed.clear();
            }
            EventKind::Observation(o) => {
                introduce(o.response, self);
                self.observed.push(o.response);
            }
            EventKind::StageRun(run) => {
                let observed = std::mem::take(&mut self.observed);
                if !matches!(run.status, RunStatus::Failed { .. }) {
                    for o in &run.outputs {
                        introduce(o.hash, self);
                    }
                    let inputs = run.inputs.iter().map(|(_, h)| *h).chain(observed);
                    self.derivations.push((
                        inputs.collect(),
                        run.outputs.iter().map(|o| o.hash).collect(),
                    ));
                }
            }
            EventKind::Collected(c) => self.collected.extend(c.hashes.iter().copied()),
            EventKind::Tag(_) => {}
        }
    }
}

pub fn verify(ledger: &Ledger, progress: &ProgressBar) -> Result<VerifyReport> {
    let mut problems = Vec::new();
    let mut warnings = Vec::new();
    let mut facts = LogFacts::default();
    // Artifacts named by damaged events: their provenance can no longer be trusted.
    let mut damaged: BTreeMap<Hash, String> = BTreeMap::new();

    // 1. The hash chain, rebuilding a private index from what is intact.
    progress.set_message("walking the event log");
    let rebuilt = Index::temporary()?;
    let mut scanner = ledger.scan()?;
    let mut batch = Vec::new();
    let mut chain_broken = false;
    while let Some(frame) = scanner.next() {
        match frame? {
            Frame::Good(stored) => {
                facts.learn(&stored.event);
                batch.push(stored);
                if batch.len() >= 8192 {
                    rebuilt.apply(&batch, scanner.tail())?;
                    batch.clear();
                }
            }
            Frame::Torn { offset, bytes } => warnings.push(format!(
                "{}: {bytes} bytes of an interrupted append at byte {offset} (discarded by the next writer)",
                ledger.log_path().display()
            )),
            Frame::Damaged {
                offset,
                reason,
                event,
            } => {
                chain_broken = true;
                let mut detail = reason;
                if let Some(event) = event {
                    detail.push_str(&format!(
                        "; the record claims to be event #{} ({})",
                        event.seq,
                        event.kind.name()
                    ));
                    for h in event.artifacts() {
                        damaged
                            .entry(h)
                            .or_insert_with(|| format!("named by a damaged event at byte {offset}"));
                    }
                }
                problems.push(Problem {
                    kind: "log",
                    subject: format!("{} byte {offset}", ledger.log_path().display()),
                    detail,
                });
            }
        }
    }
    rebuilt.apply(&batch, scanner.tail())?;

    // 2. The index against the log.
    if let Some(problem) = ledger.index_problem() {
        problems.push(Problem {
            kind: "index",
            subject: "index".into(),
            detail: problem.to_string(),
        });
    } else if !chain_broken {
        progress.set_message("checking the index");
        for (tree, ours, theirs) in ledger.index().differences(&rebuilt)? {
            problems.push(Problem {
                kind: "index",
                subject: format!("index tree `{tree}`"),
                detail: format!(
                    "{ours} entries that differ from the {theirs} the log implies; `ledger reindex` rebuilds it"
                ),
            });
        }
    }

    // 3. Every blob against its address, and every artifact against the store.
    let blobs = ledger.store().list()?;
    progress.set_length(blobs.len() as u64);
    progress.set_message("rehashing blobs");
    let mut blob_bytes = 0;
    let stored: BTreeSet<Hash> = blobs.iter().copied().collect();
    for hash in &blobs {
        let (actual, size) = ledger.store().rehash(hash)?;
        blob_bytes += size;
        progress.inc(1);
        if actual != *hash {
            damaged.insert(*hash, "its bytes were altered".into());
            problems.push(Problem {
                kind: "blob",
                subject: hash.to_hex(),
                detail: format!(
                    "content hashes to {} ({}): the bytes were altered",
                    actual.short(),
                    ledger.store().path(hash).display()
                ),
            });
        } else if !facts.introduced.contains_key(hash) {
            warnings.push(format!(
                "blob {} is not referenced by any event (left by an interrupted or failed stage; `ledger gc` removes it)",
                hash.short()
            ));
        }
    }
    let mut missing: Vec<(&Hash, &u64)> = facts
        .introduced
        .iter()
        .filter(|(h, _)| !stored.contains(h) && !facts.collected.contains(h))
        .collect();
    missing.sort();
    for (hash, seq) in missing {
        damaged.insert(*hash, "its blob is missing".into());
        problems.push(Problem {
            kind: "missing",
            subject: hash.to_hex(),
            detail: format!("recorded by event #{seq} but its blob is not in the store"),
        });
    }

    // An input whose introducing event is gone (damaged) has lost its provenance.
    for (inputs, _) in &facts.derivations {
        for input in inputs {
            if !facts.introduced.contains_key(input) {
                damaged
                    .entry(*input)
                    .or_insert_with(|| "the event that recorded it is damaged".into());
            }
        }
    }

    // 4. Propagate damage down the derivations (the log is in topological order).
    let mut downstream = BTreeMap::new();
    let mut tainted: HashMap<Hash, Hash> = damaged.keys().map(|h| (*h, *h)).collect();
    for (inputs, outputs) in &facts.derivations {
        if let Some(root) = inputs.iter().find_map(|i| tainted.get(i).copied()) {
            for o in outputs {
                if !damaged.contains_key(o) {
                    tainted.entry(*o).or_insert(root);
                    downstream.insert(o.to_hex(), root.to_hex());
                }
            }
        }
    }

    progress.finish_and_clear();
    Ok(VerifyReport {
        events: facts.events,
        blobs: blobs.len() as u64,
        blob_bytes,
        problems,
        downstream,
        warnings,
    })
}
