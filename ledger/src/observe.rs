//! Observations through the stage contract: a unit's way to the recorded world.
//!
//! An [`Observer`] answers a request from its recorded observation, or performs it and records
//! the response. It is `Send + Clone`, so any thread of a unit may use it:
//! - in this process, it asks the coordinator — the one thread that holds the ledger — over a
//!   channel; the coordinator looks requests up in the index and appends new observations
//!   (one writer, as always);
//! - in a worker process (a Slurm job), it performs, stores the response in the shared blob
//!   store, and keeps the observation for the unit's result file; the coordinator appends it
//!   when it records the unit.
//!
//! The rules are the ledger's: a request is keyed by its hash; the first recorded response
//! wins; a replay answers only from the record and never performs; a re-execution performs
//! again and compares with the record (the record still decides).

use crate::error::{Error, Result};
use crate::event::{EventKind, Observation};
use crate::hash::Hash;
use crate::ledger::Ledger;
use crate::store::BlobStore;
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{channel, Sender};
use std::sync::{Arc, Mutex};

/// How observations behave for a unit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Answered from the record when recorded, else performed and recorded.
    Run,
    /// Offline: every observation must already be recorded.
    Replay,
    /// A replay that also performs recorded actions again to compare them with the record.
    Reexecute,
}

/// Re-performed actions (`Mode::Reexecute`) that matched the record after normalization,
/// and those that did not.
#[derive(Debug, Default)]
pub struct Reexecution {
    pub actions: AtomicU64,
    pub equivalent: AtomicU64,
    pub differing: AtomicU64,
}

/// The counts of a [`Reexecution`], as a value.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReexecutionCounts {
    pub actions: u64,
    pub equivalent: u64,
    pub differing: u64,
}

impl Reexecution {
    pub fn counts(&self) -> ReexecutionCounts {
        ReexecutionCounts {
            actions: self.actions.load(Ordering::SeqCst),
            equivalent: self.equivalent.load(Ordering::SeqCst),
            differing: self.differing.load(Ordering::SeqCst),
        }
    }
}

/// A question for the coordinator.
pub(crate) enum Ask {
    /// The recorded response to a request, if any.
    Lookup {
        request: Vec<u8>,
        reply: Sender<Result<Option<Vec<u8>>>>,
    },
    /// Record a performed request; answers with the response that counts (the first
    /// recorded one wins).
    Record {
        source: String,
        request: Vec<u8>,
        response: Vec<u8>,
        reply: Sender<Result<Option<Vec<u8>>>>,
    },
}

/// An observation a worker process made, for its result file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Made {
    pub source: String,
    #[serde(with = "crate::hash::hex")]
    pub request: Hash,
    #[serde(with = "crate::hash::hex")]
    pub response: Hash,
    pub response_size: u64,
}

/// What the coordinator's one channel carries: questions from units, and finished units.
pub(crate) enum ToCoordinator {
    Ask(Ask),
    Done {
        task: usize,
        result: Box<anyhow::Result<crate::stage::Finished>>,
        reexecution: ReexecutionCounts,
    },
}

/// The observations a ledger holds, as a sorted table in a file, for processes that cannot
/// open the index (Slurm tasks, while the coordinator holds it): `DVOBS001`, then 64-byte
/// records `request | response`, sorted by request. Written by the coordinator before it
/// submits units, so a task answers recorded requests from the record, as a local unit does.
pub struct Snapshot {
    file: std::fs::File,
    path: std::path::PathBuf,
    records: u64,
}

const SNAPSHOT_MAGIC: &[u8; 8] = b"DVOBS001";

impl Snapshot {
    /// Writes the snapshot of `ledger`'s observations to `path` (atomically).
    pub fn write(ledger: &Ledger, path: &std::path::Path) -> Result<()> {
        let mut records = Vec::new();
        for (request, seq) in ledger.index().local_observations()? {
            if let (EventKind::Observation(o), _) = ledger.event(seq)?.event.kind.into_claim() {
                records.push((request, o.response));
            }
        }
        records.sort();
        let mut bytes = Vec::with_capacity(8 + records.len() * 64);
        bytes.extend_from_slice(SNAPSHOT_MAGIC);
        for (request, response) in &records {
            bytes.extend_from_slice(request.as_bytes());
            bytes.extend_from_slice(response.as_bytes());
        }
        let dir = path.parent().unwrap_or(std::path::Path::new("."));
        let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(|e| Error::io(dir, e))?;
        std::io::Write::write_all(&mut tmp, &bytes).map_err(|e| Error::io(path, e))?;
        tmp.persist(path).map_err(|e| Error::io(path, e.error))?;
        Ok(())
    }

    pub fn open(path: &std::path::Path) -> Result<Snapshot> {
        use std::os::unix::fs::FileExt;
        let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
        let len = file.metadata().map_err(|e| Error::io(path, e))?.len();
        let mut magic = [0u8; 8];
        let intact = len >= 8
            && (len - 8) % 64 == 0
            && file.read_exact_at(&mut magic, 0).is_ok()
            && &magic == SNAPSHOT_MAGIC;
        if !intact {
            return Err(Error::Corrupt(format!(
                "{}: not an observation snapshot",
                path.display()
            )));
        }
        Ok(Snapshot {
            file,
            path: path.to_path_buf(),
            records: (len - 8) / 64,
        })
    }

    /// The recorded response to `request`, by binary search.
    pub fn response(&self, request: &Hash) -> Result<Option<Hash>> {
        use std::os::unix::fs::FileExt;
        let (mut lo, mut hi) = (0u64, self.records);
        let mut record = [0u8; 64];
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            self.file
                .read_exact_at(&mut record, 8 + mid * 64)
                .map_err(|e| Error::io(&self.path, e))?;
            match record[..32].cmp(request.as_bytes()) {
                std::cmp::Ordering::Equal => {
                    return Ok(Some(Hash(record[32..].try_into().expect("32 bytes"))))
                }
                std::cmp::Ordering::Less => lo = mid + 1,
                std::cmp::Ordering::Greater => hi = mid,
            }
        }
        Ok(None)
    }
}

/// What a recording observer observed: each observation with its response's bytes.
type MadeList = Arc<Mutex<Vec<(Made, Vec<u8>)>>>;

#[derive(Clone)]
enum Link {
    /// The coordinator of this process answers and records.
    Served(Sender<ToCoordinator>),
    /// A worker process: performs and stores; the observations go into its result file.
    Recording {
        store: BlobStore,
        made: MadeList,
        /// What the ledger had recorded when the unit was submitted.
        snapshot: Option<Arc<Snapshot>>,
    },
}

/// See the module docs. Clones share what they observed: one observer per unit.
#[derive(Clone)]
pub struct Observer {
    link: Link,
    mode: Mode,
    reexecution: Arc<Reexecution>,
    /// Every observation the unit was answered with: (request, response).
    used: Arc<Mutex<Vec<(Hash, Hash)>>>,
}

impl Observer {
    /// An observer served by a coordinator holding the ledger (see `serve`).
    pub(crate) fn served(tx: Sender<ToCoordinator>, mode: Mode) -> Observer {
        Observer {
            link: Link::Served(tx),
            mode,
            reexecution: Arc::default(),
            used: Arc::default(),
        }
    }

    /// An observer for a unit running in a worker process: responses go to `store`, and
    /// [`Observer::made`] lists what was observed.
    pub fn recording(store: BlobStore, snapshot: Option<Snapshot>) -> Observer {
        Observer {
            link: Link::Recording {
                store,
                made: Arc::default(),
                snapshot: snapshot.map(Arc::new),
            },
            mode: Mode::Run,
            reexecution: Arc::default(),
            used: Arc::default(),
        }
    }

    /// Every observation this unit was answered with, as (request, response), sorted.
    pub fn observed(&self) -> Vec<(Hash, Hash)> {
        let mut used = self.used.lock().expect("not poisoned").clone();
        used.sort();
        used.dedup();
        used
    }

    fn note(&self, request: &[u8], response: &[u8]) {
        self.used
            .lock()
            .expect("not poisoned")
            .push((Hash::of(request), Hash::of(response)));
    }

    pub fn mode(&self) -> Mode {
        self.mode
    }

    pub fn replaying(&self) -> bool {
        self.mode != Mode::Run
    }

    pub fn reexecuting(&self) -> bool {
        self.mode == Mode::Reexecute
    }

    /// What re-performed actions found so far (`Mode::Reexecute`).
    pub fn reexecution(&self) -> ReexecutionCounts {
        self.reexecution.counts()
    }

    /// What a recording observer observed, in order (empty for a served one).
    pub fn made(&self) -> Vec<Made> {
        match &self.link {
            Link::Served(_) => Vec::new(),
            Link::Recording { made, .. } => made
                .lock()
                .expect("not poisoned")
                .iter()
                .map(|(m, _)| m.clone())
                .collect(),
        }
    }

    fn ask(
        &self,
        make: impl FnOnce(Sender<Result<Option<Vec<u8>>>>) -> Ask,
    ) -> Result<Option<Vec<u8>>> {
        let Link::Served(tx) = &self.link else {
            unreachable!("only a served observer asks")
        };
        let (reply, rx) = channel();
        tx.send(ToCoordinator::Ask(make(reply)))
            .map_err(|_| Error::Invalid("the coordinator stopped serving observations".into()))?;
        rx.recv()
            .map_err(|_| Error::Invalid("the coordinator stopped serving observations".into()))?
    }

    /// The recorded response to `request`, if there is one (checked against its hash).
    pub fn recorded(&self, request: &[u8]) -> Result<Option<Vec<u8>>> {
        let found = self.lookup(request)?;
        if let Some(response) = &found {
            self.note(request, response);
        }
        Ok(found)
    }

    fn lookup(&self, request: &[u8]) -> Result<Option<Vec<u8>>> {
        match &self.link {
            Link::Served(_) => self.ask(|reply| Ask::Lookup {
                request: request.to_vec(),
                reply,
            }),
            Link::Recording {
                made,
                store,
                snapshot,
            } => {
                let key = Hash::of(request);
                let mine = made
                    .lock()
                    .expect("not poisoned")
                    .iter()
                    .find(|(m, _)| m.request == key)
                    .map(|(_, bytes)| bytes.clone());
                if mine.is_some() {
                    return Ok(mine);
                }
                // The record wins, as for a unit in the coordinator's process.
                match snapshot
                    .as_ref()
                    .map(|s| s.response(&key))
                    .transpose()?
                    .flatten()
                {
                    Some(response) => Ok(Some(store.read(&response)?)),
                    None => Ok(None),
                }
            }
        }
    }

    fn record(&self, source: &str, request: &[u8], response: Vec<u8>) -> Result<Vec<u8>> {
        let response = self.store_response(source, request, response)?;
        self.note(request, &response);
        Ok(response)
    }

    fn store_response(&self, source: &str, request: &[u8], response: Vec<u8>) -> Result<Vec<u8>> {
        match &self.link {
            Link::Served(_) => Ok(self
                .ask(|reply| Ask::Record {
                    source: source.to_string(),
                    request: request.to_vec(),
                    response,
                    reply,
                })?
                .expect("a recorded response")),
            Link::Recording {
                store,
                made,
                snapshot,
            } => {
                let key = Hash::of(request);
                let mut made = made.lock().expect("not poisoned");
                if let Some((_, bytes)) = made.iter().find(|(m, _)| m.request == key) {
                    return Ok(bytes.clone());
                }
                // A request the ledger had answered: the record wins over what was performed.
                if let Some(recorded) = snapshot
                    .as_ref()
                    .map(|s| s.response(&key))
                    .transpose()?
                    .flatten()
                {
                    return store.read(&recorded);
                }
                let (hash, size) = store.put_bytes(&response)?;
                made.push((
                    Made {
                        source: source.to_string(),
                        request: key,
                        response: hash,
                        response_size: size,
                    },
                    response.clone(),
                ));
                Ok(response)
            }
        }
    }

    /// Answers an external request from its recorded observation, or performs it with
    /// `fetch` and records the response before returning it. In a replay an unrecorded
    /// request is an error: replays never touch the network.
    pub fn observe(
        &self,
        source: &str,
        request: &[u8],
        fetch: impl FnOnce() -> anyhow::Result<Vec<u8>>,
    ) -> anyhow::Result<Vec<u8>> {
        if let Some(response) = self.recorded(request)? {
            return Ok(response);
        }
        if self.replaying() {
            anyhow::bail!(
                "{source} request {} was never recorded; a replay cannot perform it",
                Hash::of(request).short()
            );
        }
        let response = fetch()?;
        Ok(self.record(source, request, response)?)
    }

    /// Performs an action whose effects later actions depend on (a command in a container):
    /// always in a run (then recorded, the record winning), never in a replay, and again in a
    /// re-execution, where it is compared with the record after `normalize` (the record still
    /// counts).
    pub fn execute(
        &self,
        source: &str,
        request: &[u8],
        normalize: impl Fn(&[u8]) -> String,
        perform: impl FnOnce() -> anyhow::Result<Vec<u8>>,
    ) -> anyhow::Result<Vec<u8>> {
        let from_record = || -> anyhow::Result<Vec<u8>> {
            self.recorded(request)?.ok_or_else(|| {
                anyhow::anyhow!(
                    "{source} request {} was never recorded; a replay cannot perform it",
                    Hash::of(request).short()
                )
            })
        };
        match self.mode {
            Mode::Replay => from_record(),
            Mode::Run => {
                let live = perform()?;
                Ok(self.record(source, request, live)?)
            }
            Mode::Reexecute => {
                let live = perform()?;
                let recorded = from_record()?;
                self.reexecution.actions.fetch_add(1, Ordering::Relaxed);
                let (a, b) = (normalize(&recorded), normalize(&live));
                if a == b {
                    self.reexecution.equivalent.fetch_add(1, Ordering::Relaxed);
                } else {
                    self.reexecution.differing.fetch_add(1, Ordering::Relaxed);
                    let at = a
                        .chars()
                        .zip(b.chars())
                        .position(|(x, y)| x != y)
                        .unwrap_or(a.chars().count().min(b.chars().count()));
                    let around = |s: &str| {
                        s.chars()
                            .skip(at.saturating_sub(80))
                            .take(160)
                            .collect::<String>()
                    };
                    tracing::warn!(
                        source,
                        request = %String::from_utf8_lossy(&request[..request.len().min(200)]),
                        recorded = %around(&a),
                        live = %around(&b),
                        "re-executed action differs from the record"
                    );
                }
                Ok(recorded)
            }
        }
    }
}

/// The ledger a coordinator serves observations from: a writer records, a reader (a replay)
/// only looks up.
pub(crate) enum Served<'a> {
    Writer(&'a mut Ledger),
    Reader(&'a Ledger),
}

impl Served<'_> {
    pub(crate) fn ledger(&self) -> &Ledger {
        match self {
            Served::Writer(l) => l,
            Served::Reader(l) => l,
        }
    }

    /// Answers one question (on the coordinator's thread).
    pub(crate) fn answer(&mut self, ask: Ask, mode: Mode) {
        match ask {
            Ask::Lookup { request, reply } => {
                let _ = reply.send(lookup(self.ledger(), &request, mode));
            }
            Ask::Record {
                source,
                request,
                response,
                reply,
            } => {
                let _ = reply.send(self.record(&source, &request, response).map(Some));
            }
        }
    }

    /// Records what a unit in a worker process observed (its responses already stored and
    /// checked), in one batch. An observation this ledger already holds is not recorded again;
    /// one whose request was answered differently before is recorded too, so its response is
    /// introduced (the unit names its own answers among its inputs).
    pub(crate) fn record_made(&mut self, made: &[Made]) -> Result<()> {
        let Served::Writer(ledger) = self else {
            return Err(Error::Invalid("a replay cannot record observations".into()));
        };
        let mut events = Vec::new();
        for m in made {
            let known = match ledger.index().observation(&m.request)? {
                Some(seq) => matches!(
                    ledger.event(seq)?.event.kind.into_claim().0,
                    EventKind::Observation(o) if o.response == m.response
                ),
                None => false,
            };
            if !known {
                events.push(EventKind::Observation(Observation {
                    source: m.source.clone(),
                    request: m.request,
                    response: m.response,
                    response_size: m.response_size,
                }));
            }
        }
        if !events.is_empty() {
            ledger.append(events)?;
        }
        Ok(())
    }

    fn record(&mut self, source: &str, request: &[u8], response: Vec<u8>) -> Result<Vec<u8>> {
        if let Some(recorded) = lookup(self.ledger(), request, Mode::Run)? {
            return Ok(recorded);
        }
        let Served::Writer(ledger) = self else {
            return Err(Error::Invalid("a replay cannot record observations".into()));
        };
        let (hash, size) = ledger.store().put_bytes(&response)?;
        ledger.append_one(EventKind::Observation(Observation {
            source: source.to_string(),
            request: Hash::of(request),
            response: hash,
            response_size: size,
        }))?;
        Ok(response)
    }
}

/// The recorded response to `request`, checked against its hash. A running unit is answered
/// only by this ledger's own observations (or a trusted import's); a replay, which re-derives
/// recorded outputs and records nothing, may also use those an imported bundle recorded for its
/// steps.
pub(crate) fn lookup(ledger: &Ledger, request: &[u8], mode: Mode) -> Result<Option<Vec<u8>>> {
    let request_hash = Hash::of(request);
    let index = ledger.index();
    let seq = match index.observation(&request_hash)? {
        Some(seq) => Some(seq),
        None if mode != Mode::Run => index.foreign_observation(&request_hash)?,
        None => None,
    };
    let Some(seq) = seq else {
        return Ok(None);
    };
    let (EventKind::Observation(o), _) = ledger.event(seq)?.event.kind.into_claim() else {
        return Ok(None);
    };
    // A recorded answer is only as good as its bytes (`read` checks them).
    match ledger.store().read(&o.response) {
        Ok(response) => Ok(Some(response)),
        Err(Error::Corrupt(_)) => Err(Error::Corrupt(format!(
            "the recorded {} response {} (event #{seq}) is damaged: its bytes no longer match; run `ledger verify`",
            o.source,
            o.response.short()
        ))),
        Err(e) => Err(e),
    }
}
