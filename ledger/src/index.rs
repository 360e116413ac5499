//! The index: derived lookups over the event log, rebuildable from it at any time. Keyed
//! lookups live in sled trees (or, for a reader's private index, in memory: `tree`); the dense
//! `seq → frame` table lives in a flat file beside them (`locations`).
//!
//! Applying an event is idempotent, and the `meta/tail` record is written after the event's
//! entries and location, so a crash between the two just re-applies the event on the next open.

use crate::error::{Error, Result};
use crate::event::{EventKind, RunStatus};
use crate::hash::Hash;
use crate::locations::{Location, LocationIter, Locations};
use crate::log::{Stored, Tail};
use crate::storage::Storage;
use crate::tree::Tree;
use foldhash::HashMap;
use std::hash::{BuildHasher, Hasher, RandomState};
use std::path::Path;

pub struct Index {
    /// The persistent index's database; none for a private index.
    db: Option<sled::Db>,
    /// Where indexing's crash points are checked (see `storage`).
    storage: Storage,
    /// seq → where the event's frame lies, and its id
    locations: Locations,
    /// artifact → seq of the event that first brought its bytes
    artifacts: Tree,
    /// action key → seq of the latest successful stage run
    actions: Tree,
    /// run id ++ seq → ()
    runs: Tree,
    /// tag name → artifact
    tags: Tree,
    /// request hash → seq of the observation
    observations: Tree,
    /// artifact ++ seq of a stage run that consumed it → ()
    consumers: Tree,
    /// artifact → seq of the `gc` that removed its bytes
    collected: Tree,
    /// `tail` → where indexing has caught up to
    meta: Tree,
}

/// The outcome of opening the persistent index.
#[allow(clippy::large_enum_variant)] // made once per command, and `Ready` is the usual answer
pub enum OpenIndex {
    Ready(Index),
    /// Another process holds the sled database.
    Busy,
    /// sled could not open its files (e.g. damaged by a crash); the log can rebuild it.
    Broken(String),
}

/// The file of the location table, inside sled's directory (so sled's lock guards it too).
const LOCATIONS_FILE: &str = "locations";

pub const TREE_COUNT: usize = 7;

const TREES: [&str; TREE_COUNT] = [
    "artifacts",
    "actions",
    "runs",
    "tags",
    "observations",
    "consumers",
    "collected",
];

/// The `meta` key present while the index is being cleared for a rebuild: written and flushed
/// before the first entry is removed, removed after the last, so an index whose clearing was
/// interrupted never passes for a complete one.
const CLEARING: &[u8] = b"clearing";

/// Errors of the file system itself (a full disk, no permission, a read-only or failing
/// device): the index files are not broken, and moving them aside would not help.
fn is_environmental(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(
            libc::ENOSPC
                | libc::EDQUOT
                | libc::EROFS
                | libc::EACCES
                | libc::EPERM
                | libc::EIO
                | libc::ENOMEM
                | libc::EMFILE
                | libc::ENFILE
        )
    )
}

impl Index {
    pub fn open(path: &Path, storage: &Storage) -> Result<OpenIndex> {
        let db = match sled::Config::new().path(path).open() {
            Ok(db) => db,
            Err(sled::Error::Io(e)) if e.to_string().contains("could not acquire lock") => {
                return Ok(OpenIndex::Busy)
            }
            Err(sled::Error::Io(e)) if is_environmental(&e) => {
                return Err(Error::io(path, e));
            }
            Err(e) => {
                return Ok(OpenIndex::Broken(format!(
                    "cannot open the index at {}: {e}",
                    path.display()
                )))
            }
        };
        // Indexes written before the location table kept it in a sled tree.
        if db.tree_names().iter().any(|name| name == b"events") {
            db.drop_tree("events")?;
        }
        let tree = |name: &str| -> Result<Tree> { Ok(Tree::Sled(db.open_tree(name)?)) };
        let mut index = Index {
            storage: storage.clone(),
            locations: Locations::open(&path.join(LOCATIONS_FILE), storage)?,
            artifacts: tree("artifacts")?,
            actions: tree("actions")?,
            runs: tree("runs")?,
            tags: tree("tags")?,
            observations: tree("observations")?,
            consumers: tree("consumers")?,
            collected: tree("collected")?,
            meta: tree("meta")?,
            db: Some(db),
        };
        if index.meta.contains(CLEARING)? {
            tracing::warn!(
                "the index at {} was being rebuilt when its writer stopped; rebuilding it from the log",
                path.display()
            );
            index.clear()?;
        }
        // Locations written after the last recorded tail (a crash in between) are redone.
        let recorded = index.recorded_tail()?.next_seq;
        index.locations.truncate(recorded)?;
        Ok(OpenIndex::Ready(index))
    }

    /// A private index in memory, for readers while a writer holds the persistent one.
    pub fn temporary() -> Index {
        // Trees read by prefix keep their keys in order; the rest are hashed.
        Index {
            db: None,
            storage: Storage::disk(),
            locations: Locations::Memory(Vec::new()),
            artifacts: Tree::ordered(),
            actions: Tree::hashed(),
            runs: Tree::ordered(),
            tags: Tree::hashed(),
            observations: Tree::hashed(),
            consumers: Tree::ordered(),
            collected: Tree::hashed(),
            meta: Tree::hashed(),
        }
    }

    /// True for a reader's private, in-memory index.
    pub fn is_private(&self) -> bool {
        self.db.is_none()
    }

    /// Empties the index for a rebuild. sled persists operations in order, so the marker,
    /// made durable first, outlives any partly cleared state (see `CLEARING`).
    pub fn clear(&mut self) -> Result<()> {
        self.step("mark the index as being rebuilt")?;
        self.meta.insert(CLEARING, &[])?;
        self.meta.remove(b"tail")?;
        if let Some(db) = &self.db {
            self.step("flush the rebuild marker")?;
            db.flush()?;
        }
        self.step("empty the location table")?;
        self.locations.truncate(0)?;
        self.step("empty the trees")?;
        for t in self.trees_mut() {
            t.clear()?;
        }
        self.meta.remove(CLEARING)
    }

    fn step(&self, what: &'static str) -> Result<()> {
        self.storage
            .index_step(what)
            .map_err(|e| Error::io(Path::new("index"), e))
    }

    fn trees(&self) -> [&Tree; TREE_COUNT] {
        [
            &self.artifacts,
            &self.actions,
            &self.runs,
            &self.tags,
            &self.observations,
            &self.consumers,
            &self.collected,
        ]
    }

    fn trees_mut(&mut self) -> [&mut Tree; TREE_COUNT] {
        [
            &mut self.artifacts,
            &mut self.actions,
            &mut self.runs,
            &mut self.tags,
            &mut self.observations,
            &mut self.consumers,
            &mut self.collected,
        ]
    }

    /// Where the index has caught up to in the log: the recorded tail, or the end of the
    /// location table if that holds fewer events (it is not synced with sled; see `locations`).
    pub fn tail(&self) -> Result<Tail> {
        let recorded = self.recorded_tail()?;
        let located = self.locations.records();
        if located >= recorded.next_seq {
            return Ok(recorded);
        }
        if located == 0 {
            return Ok(Tail::EMPTY);
        }
        let last = self
            .locations
            .get(located - 1)?
            .expect("a record below the count");
        Ok(Tail {
            next_seq: located,
            last_id: last.id,
            end: last.end,
        })
    }

    fn recorded_tail(&self) -> Result<Tail> {
        let tail = self.meta.get(b"tail", |v| {
            (v.len() == 48).then(|| Tail {
                next_seq: be_u64(&v[..8]),
                last_id: Hash(v[8..40].try_into().unwrap()),
                end: be_u64(&v[40..48]),
            })
        })?;
        Ok(tail.flatten().unwrap_or(Tail::EMPTY))
    }

    fn set_tail(&mut self, tail: Tail) -> Result<()> {
        let mut v = Vec::with_capacity(48);
        v.extend_from_slice(&tail.next_seq.to_be_bytes());
        v.extend_from_slice(tail.last_id.as_bytes());
        v.extend_from_slice(&tail.end.to_be_bytes());
        self.meta.insert(b"tail", &v)
    }

    /// Applies events (consecutive, in log order) and records the new tail.
    pub fn apply(&mut self, events: &[Stored], tail: Tail) -> Result<()> {
        self.step("apply events")?;
        let mut located = Vec::with_capacity(events.len());
        // Most ledgers never ran `gc`: spare every introduction its `collected` lookup.
        let mut any_collected = !self.collected.is_empty();
        for s in events {
            self.apply_one(s, &mut any_collected, &mut located)?;
        }
        if let Some(first) = events.first() {
            self.locations.write(first.event.seq, &located)?;
        }
        self.step("record the index tail")?;
        self.set_tail(tail)
    }

    fn apply_one(
        &mut self,
        s: &Stored,
        any_collected: &mut bool,
        located: &mut Vec<Location>,
    ) -> Result<()> {
        changes(s, |change| {
            match change {
                Change::Located(location) => located.push(location),
                Change::Introduced { hash, seq, foreign } => {
                    self.introduce(hash, &seq, foreign, *any_collected)?
                }
                Change::RunEvent { run, seq } => self.runs.insert(&cat(run, &seq), &[])?,
                Change::Consumed { hash, seq } => self.consumers.insert(&cat(hash, &seq), &[])?,
                Change::Action { key, seq } => self.actions.insert(key.as_bytes(), &seq)?,
                Change::Observed {
                    request,
                    seq,
                    foreign,
                } => self
                    .observations
                    .insert_new(&observation_key(request, foreign), &seq)?,
                Change::Tagged { name, target } => {
                    self.tags.insert(name.as_bytes(), target.as_bytes())?
                }
                Change::Collected { hash, seq } => {
                    self.collected.insert(hash.as_bytes(), &seq)?;
                    *any_collected = true;
                }
            }
            Ok(())
        })
    }

    /// Records the first event that brought an artifact's bytes (a local one replaces a
    /// foreign one: see `introducer_value`); bytes brought again after a `gc` are no longer
    /// collected.
    fn introduce(
        &mut self,
        hash: &Hash,
        seq: &[u8; 8],
        foreign: bool,
        any_collected: bool,
    ) -> Result<()> {
        let value = introducer_value(seq, foreign);
        self.artifacts
            .insert_unless(hash.as_bytes(), &value, |old| foreign || !is_foreign(old))?;
        if any_collected
            && self
                .collected
                .get(hash.as_bytes(), |at| at < &seq[..])?
                .unwrap_or(false)
        {
            self.collected.remove(hash.as_bytes())?;
        }
        Ok(())
    }

    pub fn flush(&self) -> Result<()> {
        self.step("flush")?;
        self.locations.sync()?;
        if let Some(db) = &self.db {
            db.flush()?;
        }
        Ok(())
    }

    pub fn event_location(&self, seq: u64) -> Result<Option<Location>> {
        self.locations.get(seq)
    }

    /// The locations of the first `n` events, read in order (for checking against the log).
    pub fn locations(&self, n: u64) -> Result<LocationIter<'_>> {
        self.locations.iter(n)
    }

    pub fn event_count(&self) -> u64 {
        self.locations.records()
    }

    /// The event that first brought an artifact's bytes.
    pub fn introducer(&self, hash: &Hash) -> Result<Option<u64>> {
        self.artifacts.get(hash.as_bytes(), be_u64)
    }

    pub fn action(&self, key: &Hash) -> Result<Option<u64>> {
        self.actions.get(key.as_bytes(), be_u64)
    }

    /// The observation recorded for `request` by this ledger's own stages (or a trusted
    /// import): the only one a running stage may be answered with.
    pub fn observation(&self, request: &Hash) -> Result<Option<u64>> {
        self.observations
            .get(&observation_key(request, false), be_u64)
    }

    /// Every observation a running stage may be answered with: (request, seq of its event).
    pub fn local_observations(&self) -> Result<Vec<(Hash, u64)>> {
        let mut out = Vec::new();
        self.observations.for_each(|k, v| {
            if k.len() == 32 {
                out.push((Hash(k.try_into().expect("32 bytes")), be_u64(v)));
            }
        })?;
        Ok(out)
    }

    /// The observation an untrusted bundle recorded for `request` (for replaying its steps).
    pub fn foreign_observation(&self, request: &Hash) -> Result<Option<u64>> {
        self.observations
            .get(&observation_key(request, true), be_u64)
    }

    pub fn tag(&self, name: &str) -> Result<Option<Hash>> {
        self.tags
            .get(name.as_bytes(), |v| Hash(v.try_into().unwrap()))
    }

    pub fn tags(&self) -> Result<Vec<(String, Hash)>> {
        let mut out = Vec::new();
        self.tags.for_each(|k, v| {
            out.push((
                String::from_utf8_lossy(k).into_owned(),
                Hash(v.try_into().unwrap()),
            ))
        })?;
        out.sort_unstable();
        Ok(out)
    }

    pub fn is_collected(&self, hash: &Hash) -> Result<bool> {
        self.collected.contains(hash.as_bytes())
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
        self.artifacts.keys_with_prefix(&bytes, |k| {
            let h = Hash(k.try_into().unwrap());
            if h.to_hex().starts_with(prefix) {
                out.push(h);
            }
            true
        })?;
        self.runs.keys_with_prefix(&bytes, |k| {
            let h = Hash(k[..32].try_into().unwrap());
            if h.to_hex().starts_with(prefix) && !out.contains(&h) {
                out.push(h);
            }
            true
        })?;
        Ok(out)
    }

    pub fn is_run(&self, hash: &Hash) -> Result<bool> {
        let mut found = false;
        self.runs.keys_with_prefix(hash.as_bytes(), |_| {
            found = true;
            false
        })?;
        Ok(found)
    }

    /// Each tree's entry count and digest, in `TREES` order (see `Expected`); the trees are
    /// read on threads of their own.
    pub fn digests(&self, keys: &DigestKeys) -> Result<[TreeDigest; TREE_COUNT]> {
        let digest = |tree: &Tree| -> Result<TreeDigest> {
            let mut d = TreeDigest::default();
            tree.for_each(|k, v| d.add(keys, k, v))?;
            Ok(d)
        };
        let mut out = [TreeDigest::default(); TREE_COUNT];
        std::thread::scope(|s| -> Result<()> {
            let jobs: Vec<_> = self
                .trees()
                .into_iter()
                .map(|tree| s.spawn(move || digest(tree)))
                .collect();
            for (slot, job) in out.iter_mut().zip(jobs) {
                *slot = job.join().expect("a digest thread does not panic")?;
            }
            Ok(())
        })?;
        Ok(out)
    }
}

/// The trees whose digests differ, with both entry counts: (tree, index, log).
pub fn differences(
    index: &[TreeDigest; TREE_COUNT],
    expected: &[TreeDigest; TREE_COUNT],
) -> Vec<(&'static str, u64, u64)> {
    TREES
        .iter()
        .zip(index.iter().zip(expected))
        .filter(|(_, (a, b))| a != b)
        .map(|(name, (a, b))| (*name, a.count, b.count))
        .collect()
}

/// One change an event makes to the index. `Index::apply_one` and `Expected::learn` both take
/// their changes from `changes`, so the check cannot drift from what indexing does.
#[derive(Clone, Copy, Debug)]
enum Change<'a> {
    /// The location table: seq → frame and id.
    Located(Location),
    /// `artifacts`: the first event wins, except that a local one replaces a foreign one;
    /// clears an older `collected` entry.
    Introduced {
        hash: &'a Hash,
        seq: [u8; 8],
        foreign: bool,
    },
    /// `runs`: run id ++ seq.
    RunEvent { run: &'a Hash, seq: [u8; 8] },
    /// `consumers`: artifact ++ seq.
    Consumed { hash: &'a Hash, seq: [u8; 8] },
    /// `actions`: the latest successful run wins.
    Action { key: &'a Hash, seq: [u8; 8] },
    /// `observations`: the first response to a request wins; untrusted foreign ones are kept
    /// apart (see `observation_key`).
    Observed {
        request: &'a Hash,
        seq: [u8; 8],
        foreign: bool,
    },
    /// `tags`: the latest wins.
    Tagged { name: &'a str, target: &'a Hash },
    /// `collected`: artifact → seq of the gc.
    Collected { hash: &'a Hash, seq: [u8; 8] },
}

/// The index changes of one event, in the order they are applied.
///
/// A foreign event (from an imported bundle) is indexed for what it describes — its artifacts,
/// runs, consumers, for lineage and replay — but, unless its import was trusted, it answers no
/// action-cache lookup and no local observation request; a foreign tag or `gc` record never
/// changes this ledger's tags or collected blobs.
fn changes<'a, E>(
    s: &'a Stored,
    mut f: impl FnMut(Change<'a>) -> std::result::Result<(), E>,
) -> std::result::Result<(), E> {
    let seq = s.event.seq.to_be_bytes();
    f(Change::Located(Location::of(s)))?;
    let (kind, import) = s.event.kind.claim();
    let foreign = import.is_some();
    let trusted = import.is_none_or(|i| i.trusted);
    match kind {
        EventKind::ArtifactAdded(a) => f(Change::Introduced {
            hash: &a.hash,
            seq,
            foreign,
        }),
        EventKind::RunStarted(r) => {
            f(Change::Introduced {
                hash: &r.config,
                seq,
                foreign,
            })?;
            f(Change::RunEvent {
                run: &r.run_id,
                seq,
            })
        }
        EventKind::StageRun(run) => {
            f(Change::RunEvent {
                run: &run.run_id,
                seq,
            })?;
            for (_, input) in &run.inputs {
                f(Change::Consumed { hash: input, seq })?;
            }
            if let RunStatus::Succeeded = run.status {
                for o in &run.outputs {
                    f(Change::Introduced {
                        hash: &o.hash,
                        seq,
                        foreign,
                    })?;
                }
                if trusted {
                    f(Change::Action {
                        key: &run.action_key,
                        seq,
                    })?;
                }
            }
            Ok(())
        }
        EventKind::Observation(o) => {
            f(Change::Introduced {
                hash: &o.response,
                seq,
                foreign,
            })?;
            f(Change::Observed {
                request: &o.request,
                seq,
                foreign: !trusted,
            })
        }
        EventKind::Tag(t) if !foreign => f(Change::Tagged {
            name: &t.name,
            target: &t.target,
        }),
        EventKind::Collected(c) if !foreign => {
            for hash in &c.hashes {
                f(Change::Collected { hash, seq })?;
            }
            Ok(())
        }
        EventKind::Tag(_) | EventKind::Collected(_) | EventKind::Imported(_) => Ok(()),
        // An import never nests them; one that does describes nothing this ledger indexes.
        EventKind::Foreign(_) => Ok(()),
    }
}

/// The `artifacts` value: the introducing event's seq, with a ninth byte when it is foreign.
fn introducer_value(seq: &[u8; 8], foreign: bool) -> Vec<u8> {
    let mut v = seq.to_vec();
    if foreign {
        v.push(1);
    }
    v
}

fn is_foreign(introducer: &[u8]) -> bool {
    introducer.len() > 8
}

/// The `observations` key: the request hash, with a 33rd byte for an untrusted
/// foreign observation, so it never answers a local request.
fn observation_key(request: &Hash, foreign: bool) -> Vec<u8> {
    let mut k = request.as_bytes().to_vec();
    if foreign {
        k.push(b'f');
    }
    k
}

/// Secret keys of the entry hash, fresh for every check, so no crafted index can be made to
/// match a log it does not describe.
#[derive(Clone)]
pub struct DigestKeys([RandomState; 2]);

impl DigestKeys {
    pub fn new() -> DigestKeys {
        DigestKeys([RandomState::new(), RandomState::new()])
    }
}

impl Default for DigestKeys {
    fn default() -> Self {
        DigestKeys::new()
    }
}

/// An order-independent digest of a tree: its entry count and the wrapping sum of a keyed
/// 128-bit hash of each (key, value). Equal trees have equal digests; a tree with any entry
/// added, removed or changed differs with overwhelming probability.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TreeDigest {
    pub count: u64,
    sum: u128,
}

impl TreeDigest {
    fn add(&mut self, keys: &DigestKeys, k: &[u8], v: &[u8]) {
        let half = |state: &RandomState| {
            let mut h = state.build_hasher();
            h.write_usize(k.len());
            h.write(k);
            h.write(v);
            h.finish()
        };
        let entry = (u128::from(half(&keys.0[0])) << 64) | u128::from(half(&keys.0[1]));
        self.count += 1;
        self.sum = self.sum.wrapping_add(entry);
    }
}

/// The sled trees a log implies, built in memory while the log is read, as compactly as the
/// check needs: the trees whose keys no two events share (`runs`, `consumers`) only as
/// digests, the others (one entry per artifact, action, request, tag or collected blob) as
/// maps, since later events change their entries. (The location table is compared with the
/// log directly, record by record: see `verify`.)
pub struct Expected {
    keys: DigestKeys,
    runs: TreeDigest,
    consumers: TreeDigest,
    /// `consumers` keys of the current event (an input may be named twice).
    consumed: Vec<[u8; 40]>,
    /// artifact → (introducing seq, foreign)
    artifacts: HashMap<Hash, ([u8; 8], bool)>,
    actions: HashMap<Hash, [u8; 8]>,
    /// (request, foreign) → seq
    observations: HashMap<(Hash, bool), [u8; 8]>,
    tags: HashMap<String, Hash>,
    collected: HashMap<Hash, [u8; 8]>,
}

impl Expected {
    /// An empty expectation whose digests use `keys` (the same as the index's).
    pub fn new(keys: DigestKeys) -> Expected {
        Expected {
            keys,
            runs: TreeDigest::default(),
            consumers: TreeDigest::default(),
            consumed: Vec::new(),
            artifacts: HashMap::default(),
            actions: HashMap::default(),
            observations: HashMap::default(),
            tags: HashMap::default(),
            collected: HashMap::default(),
        }
    }

    /// Applies one event (in log order), as `Index::apply` would.
    pub fn learn(&mut self, s: &Stored) {
        self.consumed.clear();
        let Ok(()) = changes::<std::convert::Infallible>(s, |change| {
            match change {
                Change::Located(_) => {}
                Change::Introduced { hash, seq, foreign } => {
                    let entry = self.artifacts.entry(*hash).or_insert((seq, foreign));
                    if entry.1 && !foreign {
                        *entry = (seq, false);
                    }
                    if self.collected.get(hash).is_some_and(|at| *at < seq) {
                        self.collected.remove(hash);
                    }
                }
                Change::RunEvent { run, seq } => self.runs.add(&self.keys, &cat(run, &seq), &[]),
                Change::Consumed { hash, seq } => {
                    let key = cat(hash, &seq);
                    if !self.consumed.contains(&key) {
                        self.consumed.push(key);
                        self.consumers.add(&self.keys, &key, &[]);
                    }
                }
                Change::Action { key, seq } => {
                    self.actions.insert(*key, seq);
                }
                Change::Observed {
                    request,
                    seq,
                    foreign,
                } => {
                    self.observations.entry((*request, foreign)).or_insert(seq);
                }
                Change::Tagged { name, target } => {
                    self.tags.insert(name.to_string(), *target);
                }
                Change::Collected { hash, seq } => {
                    self.collected.insert(*hash, seq);
                }
            }
            Ok(())
        });
    }

    /// Each tree's digest, in `TREES` order.
    pub fn digests(&self) -> [TreeDigest; TREE_COUNT] {
        let map = |m: &HashMap<Hash, [u8; 8]>| {
            let mut d = TreeDigest::default();
            for (k, v) in m {
                d.add(&self.keys, k.as_bytes(), v);
            }
            d
        };
        let mut tags = TreeDigest::default();
        for (name, target) in &self.tags {
            tags.add(&self.keys, name.as_bytes(), target.as_bytes());
        }
        let mut artifacts = TreeDigest::default();
        for (hash, (seq, foreign)) in &self.artifacts {
            artifacts.add(
                &self.keys,
                hash.as_bytes(),
                &introducer_value(seq, *foreign),
            );
        }
        let mut observations = TreeDigest::default();
        for ((request, foreign), seq) in &self.observations {
            observations.add(&self.keys, &observation_key(request, *foreign), seq);
        }
        [
            artifacts,
            map(&self.actions),
            self.runs,
            tags,
            observations,
            self.consumers,
            map(&self.collected),
        ]
    }
}

fn cat(hash: &Hash, seq: &[u8; 8]) -> [u8; 40] {
    let mut k = [0; 40];
    k[..32].copy_from_slice(hash.as_bytes());
    k[32..].copy_from_slice(seq);
    k
}

fn be_u64(v: &[u8]) -> u64 {
    u64::from_be_bytes(v[..8].try_into().unwrap())
}

fn suffix_seqs(tree: &Tree, hash: &Hash) -> Result<Vec<u64>> {
    let mut seqs = Vec::new();
    tree.keys_with_prefix(hash.as_bytes(), |k| {
        seqs.push(be_u64(&k[32..]));
        true
    })?;
    Ok(seqs)
}
