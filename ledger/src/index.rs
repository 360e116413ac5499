//! The index: derived lookups over the event log, rebuildable from it at any time. Keyed
//! lookups live in sled trees (or, for a reader's private index, in memory: `tree`); the dense
//! `seq → frame` table lives in a flat file beside them (`locations`).
//!
//! Applying an event is idempotent, and the `meta/tail` record is written after the event's
//! entries and location, so a crash between the two just re-applies the event on the next open.

use crate::error::Result;
use crate::event::{EventKind, RunStatus};
use crate::hash::Hash;
use crate::locations::{Location, LocationIter, Locations};
use crate::log::{Stored, Tail};
use crate::tree::Tree;
use foldhash::HashMap;
use std::hash::{BuildHasher, Hasher, RandomState};
use std::path::Path;

pub struct Index {
    /// The persistent index's database; none for a private index.
    db: Option<sled::Db>,
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

impl Index {
    pub fn open(path: &Path) -> Result<OpenIndex> {
        let db = match sled::Config::new().path(path).open() {
            Ok(db) => db,
            Err(sled::Error::Io(e)) if e.to_string().contains("could not acquire lock") => {
                return Ok(OpenIndex::Busy)
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
            locations: Locations::open(&path.join(LOCATIONS_FILE))?,
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

    pub fn clear(&mut self) -> Result<()> {
        for t in self.trees_mut() {
            t.clear()?;
        }
        self.meta.clear()?;
        self.locations.truncate(0)
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
        let mut located = Vec::with_capacity(events.len());
        // Most ledgers never ran `gc`: spare every introduction its `collected` lookup.
        let mut any_collected = !self.collected.is_empty();
        for s in events {
            self.apply_one(s, &mut any_collected, &mut located)?;
        }
        if let Some(first) = events.first() {
            self.locations.write(first.event.seq, &located)?;
        }
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
                Change::Introduced { hash, seq } => self.introduce(hash, &seq, *any_collected)?,
                Change::RunEvent { run, seq } => self.runs.insert(&cat(run, &seq), &[])?,
                Change::Consumed { hash, seq } => self.consumers.insert(&cat(hash, &seq), &[])?,
                Change::Action { key, seq } => self.actions.insert(key.as_bytes(), &seq)?,
                Change::Observed { request, seq } => {
                    self.observations.insert_new(request.as_bytes(), &seq)?
                }
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

    /// Records the first event that brought an artifact's bytes; bytes brought again after a
    /// `gc` are no longer collected.
    fn introduce(&mut self, hash: &Hash, seq: &[u8; 8], any_collected: bool) -> Result<()> {
        self.artifacts.insert_new(hash.as_bytes(), seq)?;
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

    pub fn observation(&self, request: &Hash) -> Result<Option<u64>> {
        self.observations.get(request.as_bytes(), be_u64)
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
    /// `artifacts`: the first event wins; clears an older `collected` entry.
    Introduced { hash: &'a Hash, seq: [u8; 8] },
    /// `runs`: run id ++ seq.
    RunEvent { run: &'a Hash, seq: [u8; 8] },
    /// `consumers`: artifact ++ seq.
    Consumed { hash: &'a Hash, seq: [u8; 8] },
    /// `actions`: the latest successful run wins.
    Action { key: &'a Hash, seq: [u8; 8] },
    /// `observations`: the first response to a request wins.
    Observed { request: &'a Hash, seq: [u8; 8] },
    /// `tags`: the latest wins.
    Tagged { name: &'a str, target: &'a Hash },
    /// `collected`: artifact → seq of the gc.
    Collected { hash: &'a Hash, seq: [u8; 8] },
}

/// The index changes of one event, in the order they are applied.
fn changes<'a, E>(
    s: &'a Stored,
    mut f: impl FnMut(Change<'a>) -> std::result::Result<(), E>,
) -> std::result::Result<(), E> {
    let seq = s.event.seq.to_be_bytes();
    f(Change::Located(Location::of(s)))?;
    match &s.event.kind {
        EventKind::ArtifactAdded(a) => f(Change::Introduced { hash: &a.hash, seq }),
        EventKind::RunStarted(r) => {
            f(Change::Introduced {
                hash: &r.config,
                seq,
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
                    f(Change::Introduced { hash: &o.hash, seq })?;
                }
                f(Change::Action {
                    key: &run.action_key,
                    seq,
                })?;
            }
            Ok(())
        }
        EventKind::Observation(o) => {
            f(Change::Introduced {
                hash: &o.response,
                seq,
            })?;
            f(Change::Observed {
                request: &o.request,
                seq,
            })
        }
        EventKind::Tag(t) => f(Change::Tagged {
            name: &t.name,
            target: &t.target,
        }),
        EventKind::Collected(c) => {
            for hash in &c.hashes {
                f(Change::Collected { hash, seq })?;
            }
            Ok(())
        }
    }
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
    artifacts: HashMap<Hash, [u8; 8]>,
    actions: HashMap<Hash, [u8; 8]>,
    observations: HashMap<Hash, [u8; 8]>,
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
                Change::Introduced { hash, seq } => {
                    self.artifacts.entry(*hash).or_insert(seq);
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
                Change::Observed { request, seq } => {
                    self.observations.entry(*request).or_insert(seq);
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
        [
            map(&self.artifacts),
            map(&self.actions),
            self.runs,
            tags,
            map(&self.observations),
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
