//! `ledger verify`: rehash every blob, walk the hash chain, check the index against the log,
//! and name every artifact downstream of a damaged one.
//!
//! The three passes run at once: blobs are rehashed on worker threads, the index's sled trees
//! are read into order-independent digests on others, and this thread walks the log, building
//! the digests the trees should have (`index::Expected`, from the same event → entries mapping
//! indexing uses) and comparing the location table record by record. No second index is built.

use crate::error::Result;
use crate::event::{Event, EventKind, RunStatus};
use crate::hash::Hash;
use crate::index::{differences, DigestKeys, Expected};
use crate::ledger::Ledger;
use crate::locations::{Location, LocationIter};
use crate::log::{Frame, Stored};
use foldhash::{HashMap, HashSet};
use indicatif::ProgressBar;
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

/// At most this many threads rehash blobs (beside the log walk and the index check).
const MAX_REHASH_THREADS: usize = 8;

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
    /// Where the time went: the log walk, the index digests, the wait for the blob rehash
    /// (which runs beside both), and the total.
    pub phase_seconds: BTreeMap<String, f64>,
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
            if !facts.collected.is_empty() {
                facts.collected.remove(&h);
            }
        };
        // A foreign event counts for what it claims: its blobs must be here, and damage
        // propagates through its steps like through local ones.
        let (kind, import) = event.kind.claim();
        match kind {
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
            EventKind::Collected(c) if import.is_none() => {
                self.collected.extend(c.hashes.iter().copied())
            }
            EventKind::Collected(_)
            | EventKind::Tag(_)
            | EventKind::Imported(_)
            | EventKind::Foreign(_) => {}
        }
    }
}

/// The index's location table against the events of the log, as the walk meets them.
struct LocationCheck<'a> {
    table: LocationIter<'a>,
    /// The seq of the table's next record.
    next: u64,
    checked: u64,
    differing: u64,
    first_differing: Option<u64>,
}

impl LocationCheck<'_> {
    fn check(&mut self, stored: &Stored) -> Result<()> {
        // After damage the walk may skip events; their records are skipped too.
        while self.next <= stored.event.seq {
            let Some(record) = self.table.next().transpose()? else {
                break;
            };
            self.next += 1;
            if self.next - 1 == stored.event.seq {
                self.checked += 1;
                if record != Location::of(stored) {
                    self.differing += 1;
                    self.first_differing.get_or_insert(stored.event.seq);
                }
            }
        }
        Ok(())
    }

    fn problem(&self, indexed: u64) -> Option<Problem> {
        let missing = indexed.saturating_sub(self.checked);
        if self.differing == 0 && missing == 0 {
            return None;
        }
        let mut detail = format!(
            "{} of its {indexed} records differ from the log",
            self.differing + missing
        );
        if let Some(seq) = self.first_differing {
            detail.push_str(&format!(" (the first: event #{seq})"));
        }
        detail.push_str("; `ledger reindex` rebuilds it");
        Some(Problem {
            kind: "index",
            subject: "index table `locations`".into(),
            detail,
        })
    }
}

pub fn verify(ledger: &Ledger, progress: &ProgressBar) -> Result<VerifyReport> {
    let started = Instant::now();
    let mut problems = Vec::new();
    let mut warnings = Vec::new();
    let mut facts = LogFacts::default();
    let mut phase_seconds = BTreeMap::new();
    // Artifacts named by damaged events: their provenance can no longer be trusted.
    let mut damaged: BTreeMap<Hash, String> = BTreeMap::new();

    // The log as it is now (a scanner reads up to the length it found on opening), then the
    // blobs: blobs are stored before the events naming them, so every event walked has its
    // blob listed, even while a writer appends.
    let scanner = ledger.scan()?;
    let blobs = ledger.store().list()?;
    progress.set_length(blobs.len() as u64);
    progress.set_message("walking the event log, checking the index, rehashing blobs");
    // The index describes the events before its tail; a writer may append more meanwhile
    // (when this reader built a private index because the writer holds the persistent one).
    let index_tail = ledger.index().tail()?.next_seq;
    // A private index (a writer holds the persistent one) was just built from this very log:
    // checking it would prove nothing.
    let check_index = match (ledger.index_problem(), ledger.index().is_private()) {
        (Some(_), _) => false,
        (None, true) => {
            warnings.push(
                "the index is in use by a writer (a `ledger run`?), so it was not checked; the log and blobs were"
                    .into(),
            );
            false
        }
        (None, false) => true,
    };
    let keys = DigestKeys::new();
    let mut expected = Expected::new(keys.clone());
    let mut locations = LocationCheck {
        table: ledger.index().locations(index_tail)?,
        next: 0,
        checked: 0,
        differing: 0,
        first_differing: None,
    };
    let mut chain_broken = false;
    let next = AtomicUsize::new(0);

    // Three independent jobs at once: the index's digests, the blobs' hashes (over the
    // available cores) and, on this thread, the walk of the log.
    let (index_digests, rehashed) = std::thread::scope(|s| -> Result<_> {
        let index_job = check_index.then(|| {
            s.spawn(|| {
                let t = Instant::now();
                ledger.index().digests(&keys).map(|d| (d, t.elapsed()))
            })
        });
        let workers = std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .clamp(1, MAX_REHASH_THREADS)
            .min(blobs.len().max(1));
        let blob_jobs: Vec<_> = (0..workers)
            .map(|_| {
                s.spawn(|| -> Result<Vec<(usize, Hash, u64)>> {
                    let mut out = Vec::new();
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(hash) = blobs.get(i) else {
                            return Ok(out);
                        };
                        let (actual, size) = ledger.store().rehash(hash)?;
                        progress.inc(1);
                        out.push((i, actual, size));
                    }
                })
            })
            .collect();

        // 1. The hash chain, and the index it implies.
        let t = Instant::now();
        for frame in scanner {
            match frame? {
                Frame::Good(stored) => {
                    facts.learn(&stored.event);
                    if check_index && stored.event.seq < index_tail {
                        expected.learn(&stored);
                        locations.check(&stored)?;
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
                            damaged.entry(h).or_insert_with(|| {
                                format!("named by a damaged event at byte {offset}")
                            });
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
        phase_seconds.insert("log walk".to_string(), t.elapsed().as_secs_f64());

        let t = Instant::now();
        let mut rehashed = vec![(Hash::ZERO, 0); blobs.len()];
        for job in blob_jobs {
            for (i, actual, size) in job.join().expect("a rehash thread does not panic")? {
                rehashed[i] = (actual, size);
            }
        }
        let index_digests = match index_job {
            Some(job) => {
                let (digests, took) = job.join().expect("the index thread does not panic")?;
                phase_seconds.insert("index digests".to_string(), took.as_secs_f64());
                Some(digests)
            }
            None => None,
        };
        phase_seconds.insert(
            "waiting for blobs and index".to_string(),
            t.elapsed().as_secs_f64(),
        );
        Ok((index_digests, rehashed))
    })?;

    // 2. The index against the log.
    if let Some(problem) = ledger.index_problem().filter(|_| ledger.index_unreadable()) {
        // The index is derived data (e.g. sled files torn by a SIGKILL): the log and the blobs,
        // which were checked against a private index, are what the ledger is.
        warnings.push(format!(
            "{problem}; the log and blobs were checked without it, and the next writer (or `ledger reindex`) rebuilds it"
        ));
    } else if let Some(problem) = ledger.index_problem() {
        problems.push(Problem {
            kind: "index",
            subject: "index".into(),
            detail: problem.to_string(),
        });
    } else if let (false, Some(ours)) = (chain_broken, index_digests) {
        problems.extend(locations.problem(index_tail));
        for (tree, ours, theirs) in differences(&ours, &expected.digests()) {
            problems.push(Problem {
                kind: "index",
                subject: format!("index tree `{tree}`"),
                detail: format!(
                    "{ours} entries that differ from the {theirs} the log implies; `ledger reindex` rebuilds it"
                ),
            });
        }
    }
    drop(expected);

    // 3. Every blob against its address, and every artifact against the store.
    let mut blob_bytes = 0;
    let stored: HashSet<Hash> = blobs.iter().copied().collect();
    for (hash, (actual, size)) in blobs.iter().zip(rehashed) {
        blob_bytes += size;
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

    // Leftovers of interrupted writers (a killed import leaves its whole staging area).
    let temps = crate::gc::leftovers(ledger.store().tmp_dir())?;
    if !temps.is_empty() {
        let dirs = temps.iter().filter(|t| t.is_dir).count();
        warnings.push(format!(
            "{} holds {} files and {dirs} directories ({}): in-flight writes of a running writer, or leftovers of interrupted ones; `ledger gc` removes leftovers",
            ledger.store().tmp_dir().display(),
            temps.len() - dirs,
            crate::lineage::human_size(temps.iter().map(|t| t.bytes).sum())
        ));
    }

    progress.finish_and_clear();
    phase_seconds.insert("total".to_string(), started.elapsed().as_secs_f64());
    Ok(VerifyReport {
        events: facts.events,
        blobs: blobs.len() as u64,
        blob_bytes,
        problems,
        downstream,
        warnings,
        phase_seconds,
    })
}
