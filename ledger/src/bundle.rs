//! Self-contained bundles of an artifact's lineage — events and blobs — so a result can be
//! audited (and replayed) on another machine: `ledger export HASH -o FILE`, `ledger import FILE`.
//!
//! Layout: `DVBUNDL1`, then frames `u32 LE length | postcard(Entry) | BLAKE3(payload)`. A
//! `Blob` frame is followed by exactly `size` raw bytes. The final `End` frame carries the
//! BLAKE3 of every byte before it, so truncation and tampering anywhere are caught. A bundle
//! names no file paths that are ever opened: blobs are placed by their verified hash.
//!
//! What an import can and cannot do:
//! - It is all or nothing. The whole bundle is verified before the ledger is touched (no lock
//!   taken, no index opened), then verified again while its blobs are staged inside the
//!   ledger; only then are blobs moved into the store and events appended, in one batch.
//! - It is complete: every blob the bundle's events name must arrive with it or already be
//!   stored, and every artifact they name must be introduced by one of its events or be known
//!   here; exports carry whole steps (every output of every step, its run header and the
//!   observations it made), so an honest export always imports into a ledger that verifies.
//! - It stays foreign: the events are appended wrapped as `Foreign`, after an `Imported`
//!   record of the bundle (its BLAKE3, root and counts). A foreign step never answers this
//!   ledger's action cache and a foreign observation never answers a local stage's request,
//!   unless the user vouches for the bundle with `--trust`; a bundle's tags never move a tag
//!   here unless asked with `--adopt-tags`; a bundle cannot add events to a run of this
//!   ledger, carry `gc` records, or carry import records of its own. `ledger replay --check`
//!   re-derives foreign artifacts from their recorded inputs.

use crate::error::{Error, Result};
use crate::event::{EventKind, Foreign, Imported, RunStatus, Tag};
use crate::hash::Hash;
use crate::ledger::Ledger;
use crate::lineage::{lineage, Provenance};
use crate::store::BlobStore;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeSet, HashMap, HashSet};
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::Path;

const MAGIC: &[u8; 8] = b"DVBUNDL1";
const MAX_FRAME: u32 = 64 << 20;

// Entries are handled one at a time; boxing the event would only add an allocation.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Serialize, Deserialize)]
enum Entry {
    Header { root: Hash, events: u32, blobs: u32 },
    Event(EventKind),
    Blob { hash: Hash, size: u64 },
    End { digest: Hash },
}

#[derive(Debug, Serialize)]
pub struct ExportReport {
    pub root: String,
    pub events: u32,
    pub blobs: u32,
    pub bytes: u64,
}

#[derive(Clone, Copy, Debug, Default)]
pub struct ImportOptions {
    /// Vouch for the bundle: its steps answer the action cache and its observations answer
    /// requests as this ledger's own would (still recorded as foreign).
    pub trust: bool,
    /// Point this ledger's tags where the bundle's tags point (moving existing ones).
    pub adopt_tags: bool,
}

#[derive(Debug, Serialize)]
pub struct ImportReport {
    pub root: String,
    /// BLAKE3 of the bundle file, as the `Imported` event records it.
    pub bundle: String,
    pub events_appended: usize,
    pub events_known: usize,
    pub blobs_added: usize,
    pub trusted: bool,
    /// Tags the bundle carries, and whether each was adopted here.
    pub tags: Vec<(String, String, bool)>,
}

/// A bundle as read and verified.
pub struct Contents {
    pub root: Hash,
    /// BLAKE3 of the whole file.
    pub bundle: Hash,
    pub events: Vec<EventKind>,
    /// Blobs in the bundle, with their sizes.
    pub blobs: Vec<(Hash, u64)>,
}

/// Writes everything that `root` depends on into a bundle at `out`.
pub fn export(ledger: &Ledger, root: &Hash, out: &Path) -> Result<ExportReport> {
    let graph = lineage(ledger, root)?;
    // Events: each artifact's introducing event; for each step, its run header and the
    // observations recorded while it ran (they sit between the run's previous event and the
    // step). Blobs: everything those events name, so every step travels whole (all its
    // outputs, not only the ones on the path to the root).
    let mut seqs: BTreeSet<u64> = BTreeSet::new();
    for (hex, info) in &graph.artifacts {
        let hash = Hash::from_hex(hex).expect("hex");
        if let Some(seq) = ledger.index().introducer(&hash)? {
            seqs.insert(seq);
        }
        if let Provenance::Output { step, .. } = &info.provenance {
            let run = Hash::from_hex(&step.run_id).expect("hex");
            let run_events = ledger.index().run_events(&run)?;
            let before = run_events.iter().take_while(|s| **s < step.seq).copied();
            let previous = before.clone().last().unwrap_or(step.seq);
            seqs.extend(before.take(1)); // the RunStarted
            for seq in previous + 1..step.seq {
                let stored = ledger.event(seq)?;
                if let EventKind::Observation(_) = stored.event.kind.claim().0 {
                    seqs.insert(seq);
                }
            }
        }
    }
    let mut events = Vec::new();
    let mut blobs: BTreeSet<Hash> = BTreeSet::new();
    for seq in &seqs {
        // A foreign event travels as what it claims: the next importer wraps it again.
        let (kind, _) = ledger.event(*seq)?.event.kind.into_claim();
        blobs.extend(kind.artifacts());
        events.push(kind);
    }
    // The ledger's tags on what the bundle carries (adopted by an importer only if asked).
    for (name, target) in ledger.index().tags()? {
        if blobs.contains(&target) {
            events.push(EventKind::Tag(Tag { name, target }));
        }
    }
    for hash in &blobs {
        if !ledger.store().contains(hash) {
            return Err(Error::NotFound(format!(
                "cannot export {}: its lineage names blob {hash}, which is not in the store (`ledger replay {hash}` can rebuild an output; `ledger verify` says what else is missing)",
                root.short()
            )));
        }
    }

    let mut w = Writer::create(out, root, events.len() as u32, blobs.len() as u32)?;
    for kind in &events {
        w.event(kind)?;
    }
    let mut bytes = 0;
    for hash in &blobs {
        // Streamed and checked: a rotted blob is named, never exported under its address.
        let mut blob = ledger.store().open_verified(hash, None)?;
        let size = blob.len();
        w.blob(hash, size, &mut blob)?;
        bytes += size;
    }
    w.finish()?;
    Ok(ExportReport {
        root: root.to_hex(),
        events: events.len() as u32,
        blobs: blobs.len() as u32,
        bytes,
    })
}

/// Writes a bundle entry by entry (`export` is built on it; tests use it to make hostile
/// bundles that are well framed). The file appears at its path only when `finish` succeeds.
pub struct Writer {
    out: std::path::PathBuf,
    tmp: tempfile::NamedTempFile,
    w: HashingWriter<BufWriter<std::fs::File>>,
}

impl Writer {
    /// Starts a bundle for `root` that will hold `events` events and `blobs` blobs.
    pub fn create(out: &Path, root: &Hash, events: u32, blobs: u32) -> Result<Writer> {
        let dir = out
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        // Created with the usual permissions (0666 less the umask), not a temp file's 0600.
        let tmp = tempfile::Builder::new()
            .prefix(".bundle-")
            .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o666))
            .tempfile_in(dir)
            .map_err(|e| Error::io(dir, e))?;
        let file = tmp.reopen().map_err(|e| Error::io(tmp.path(), e))?;
        let mut w = Writer {
            out: out.to_path_buf(),
            tmp,
            w: HashingWriter::new(BufWriter::new(file)),
        };
        w.w.write_all(MAGIC).map_err(|e| Error::io(out, e))?;
        w.frame(&Entry::Header {
            root: *root,
            events,
            blobs,
        })?;
        Ok(w)
    }

    fn frame(&mut self, entry: &Entry) -> Result<()> {
        write_frame(&mut self.w, entry).map_err(|e| Error::io(&self.out, e))
    }

    pub fn event(&mut self, kind: &EventKind) -> Result<()> {
        self.frame(&Entry::Event(kind.clone()))
    }

    /// A blob of `size` bytes read from `bytes` (named `hash`, which is not checked here).
    pub fn blob(&mut self, hash: &Hash, size: u64, bytes: &mut dyn Read) -> Result<()> {
        self.frame(&Entry::Blob { hash: *hash, size })?;
        let copied = std::io::copy(&mut bytes.take(size), &mut self.w)
            .map_err(|e| Error::io(&self.out, e))?;
        if copied != size {
            return Err(Error::Corrupt(format!(
                "blob {hash} changed size while exporting ({copied} of {size} bytes)"
            )));
        }
        Ok(())
    }

    /// Writes the end marker, syncs, and moves the bundle into place.
    pub fn finish(mut self) -> Result<()> {
        let digest = self.w.digest();
        self.frame(&Entry::End { digest })?;
        let io = |e| Error::io(&self.out, e);
        self.w.inner.flush().map_err(io)?;
        self.w.inner.get_ref().sync_all().map_err(io)?;
        self.tmp
            .persist(&self.out)
            .map_err(|e| Error::io(&self.out, e.error))?;
        Ok(())
    }
}

/// Reads and verifies a whole bundle without writing anything: frames, checksums, blob
/// hashes, counts, the end digest, what its events may carry, and — given a ledger (a reader,
/// best with a private index: `Ledger::open_private`) — whether everything it names arrives
/// with it or is there. Run before a writer opens the ledger, so a bad bundle changes nothing
/// there, not even the lock file or the index's files.
pub fn check(path: &Path, into: Option<&Ledger>) -> Result<Contents> {
    let contents = read(path, None)?;
    if let Some(ledger) = into {
        check_against(ledger, &contents).map_err(|msg| {
            Error::Corrupt(format!("{}: {msg}; nothing was imported", path.display()))
        })?;
    }
    Ok(contents)
}

/// Verifies a bundle completely, then adds what the ledger lacks (see the module docs).
pub fn import(ledger: &mut Ledger, path: &Path, options: ImportOptions) -> Result<ImportReport> {
    let bad =
        |msg: String| Error::Corrupt(format!("{}: {msg}; nothing was imported", path.display()));
    if !ledger.is_writer() {
        return Err(Error::Invalid("import needs the writer lock".into()));
    }
    let staging_dir = tempfile::Builder::new()
        .prefix("import-")
        .tempdir_in(ledger.store().tmp_dir())
        .map_err(|e| Error::io(ledger.dir(), e))?;
    let staging = BlobStore::with_storage(staging_dir.path(), ledger.storage().clone());
    staging.create_dirs()?;
    let contents = read(path, Some(&staging))?;
    check_against(ledger, &contents).map_err(bad)?;

    // Commit: blobs first (durable), then the new events in one batch.
    let mut blobs_added = 0;
    for (hash, _) in &contents.blobs {
        if !ledger.store().contains(hash) {
            ledger.store().adopt(&staging, hash)?;
            blobs_added += 1;
        }
    }
    let mut fresh = Vec::new();
    let mut known = 0;
    let mut tags = Vec::new();
    let mut adopted = Vec::new();
    for kind in &contents.events {
        if let EventKind::Tag(t) = kind {
            let here = ledger.index().tag(&t.name)? == Some(t.target);
            let adopt = options.adopt_tags && !here;
            tags.push((t.name.clone(), t.target.to_hex(), here || adopt));
            if adopt {
                adopted.push(EventKind::Tag(t.clone()));
            }
        }
        if already_known(ledger, kind)? {
            known += 1;
        } else {
            fresh.push(kind.clone());
        }
    }
    let appended = fresh.len();
    if appended > 0 || blobs_added > 0 || !adopted.is_empty() {
        let mut batch = Vec::with_capacity(appended + adopted.len() + 1);
        batch.push(EventKind::Imported(Imported {
            bundle: contents.bundle,
            root: contents.root,
            path: path.display().to_string(),
            events: contents.events.len() as u32,
            appended: appended as u32,
            blobs: contents.blobs.len() as u32,
            blobs_added: blobs_added as u32,
            trusted: options.trust,
        }));
        batch.extend(fresh.into_iter().map(|event| {
            EventKind::Foreign(Foreign {
                bundle: contents.bundle,
                trusted: options.trust,
                event: Box::new(event),
            })
        }));
        // Adopted tags are this ledger's own decision: local events, after their targets.
        batch.extend(adopted);
        ledger.append(batch)?;
    }
    Ok(ImportReport {
        root: contents.root.to_hex(),
        bundle: contents.bundle.to_hex(),
        events_appended: appended,
        events_known: known,
        blobs_added,
        trusted: options.trust,
        tags,
    })
}

/// Reads a bundle, verifying everything in it; blobs are staged into `staging` when given,
/// otherwise only hashed.
fn read(path: &Path, staging: Option<&BlobStore>) -> Result<Contents> {
    let bad =
        |msg: String| Error::Corrupt(format!("{}: {msg}; nothing was imported", path.display()));
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut r = HashingReader::new(BufReader::with_capacity(1 << 20, file));
    let mut magic = [0u8; 8];
    r.read_exact(&mut magic)
        .map_err(|_| bad("not a ledger bundle (too short)".into()))?;
    if &magic != MAGIC {
        return Err(bad("not a ledger bundle (bad magic)".into()));
    }
    let Entry::Header {
        root,
        events: n_events,
        blobs: n_blobs,
    } = read_frame(&mut r).map_err(&bad)?
    else {
        return Err(bad("the first entry is not a header".into()));
    };
    let mut events = Vec::new();
    let mut blobs = Vec::new();
    loop {
        let before = r.digest();
        match read_frame(&mut r).map_err(&bad)? {
            Entry::Header { .. } => return Err(bad("a second header".into())),
            Entry::Event(kind) => events.push(kind),
            Entry::Blob { hash, size } => {
                let mut limited = (&mut r).take(size);
                let (actual, got) = match staging {
                    Some(staging) => staging.ingest(&mut limited, &path.display().to_string())?,
                    None => hash_stream(&mut limited).map_err(|e| Error::io(path, e))?,
                };
                if got != size {
                    return Err(bad(format!(
                        "blob {} is truncated ({got} of {size} bytes)",
                        hash.short()
                    )));
                }
                if actual != hash {
                    return Err(bad(format!(
                        "blob {} holds bytes hashing to {}",
                        hash.short(),
                        actual.short()
                    )));
                }
                blobs.push((hash, size));
            }
            Entry::End { digest } => {
                if digest != before {
                    return Err(bad(
                        "the bundle digest does not match its contents (altered or spliced)".into(),
                    ));
                }
                break;
            }
        }
    }
    let mut trailing = [0u8; 1];
    if r.inner
        .read(&mut trailing)
        .map_err(|e| Error::io(path, e))?
        != 0
    {
        return Err(bad("bytes after the end of the bundle".into()));
    }
    if events.len() != n_events as usize || blobs.len() != n_blobs as usize {
        return Err(bad(format!(
            "the header promises {n_events} events and {n_blobs} blobs, the bundle holds {} and {}",
            events.len(),
            blobs.len()
        )));
    }
    let contents = Contents {
        root,
        bundle: r.digest(),
        events,
        blobs,
    };
    check_alone(&contents).map_err(bad)?;
    Ok(contents)
}

/// What a bundle may carry, judged on its own.
fn check_alone(c: &Contents) -> std::result::Result<(), String> {
    let mut seen = HashSet::new();
    for (hash, _) in &c.blobs {
        if !seen.insert(*hash) {
            return Err(format!("blob {} appears twice", hash.short()));
        }
    }
    for kind in &c.events {
        match kind {
            EventKind::ArtifactAdded(_)
            | EventKind::RunStarted(_)
            | EventKind::Observation(_)
            | EventKind::Tag(_) => {}
            EventKind::StageRun(run) => {
                if !matches!(run.status, RunStatus::Succeeded) {
                    return Err(format!("step `{}` is not a successful run", run.node));
                }
            }
            other => {
                return Err(format!(
                    "it carries a `{}` event, which a bundle may not carry",
                    other.name()
                ))
            }
        }
    }
    Ok(())
}

/// What a bundle may carry into this ledger: everything it names arrives with it or is here.
fn check_against(ledger: &Ledger, c: &Contents) -> std::result::Result<(), String> {
    let err = |e: Error| e.to_string();
    let index = ledger.index();
    let in_bundle: HashSet<Hash> = c.blobs.iter().map(|(h, _)| *h).collect();
    // What the bundle's events introduce, and the runs they start.
    let mut introduced: HashSet<Hash> = HashSet::new();
    let mut runs: HashMap<Hash, bool> = HashMap::new();
    for kind in &c.events {
        match kind {
            EventKind::ArtifactAdded(a) => {
                introduced.insert(a.hash);
            }
            EventKind::RunStarted(r) => {
                introduced.insert(r.config);
                runs.insert(r.run_id, true);
            }
            EventKind::StageRun(s) => {
                introduced.extend(s.outputs.iter().map(|o| o.hash));
            }
            EventKind::Observation(o) => {
                introduced.insert(o.response);
            }
            _ => {}
        }
    }
    for kind in &c.events {
        for hash in kind.artifacts() {
            if !in_bundle.contains(&hash) && !ledger.store().contains(&hash) {
                return Err(format!(
                    "its `{}` event names blob {}, which is neither in the bundle nor in this ledger",
                    kind.name(),
                    hash.short()
                ));
            }
            if !introduced.contains(&hash) && index.introducer(&hash).map_err(err)?.is_none() {
                return Err(format!(
                    "its `{}` event names artifact {}, which no event of the bundle or of this ledger records",
                    kind.name(),
                    hash.short()
                ));
            }
        }
        let run = match kind {
            EventKind::RunStarted(r) => Some(r.run_id),
            EventKind::StageRun(s) => Some(s.run_id),
            _ => None,
        };
        if let Some(run) = run {
            if !runs.contains_key(&run) && !index.is_run(&run).map_err(err)? {
                return Err(format!(
                    "its `{}` event belongs to run {}, which neither the bundle nor this ledger starts",
                    kind.name(),
                    run.short()
                ));
            }
            if is_local_run(ledger, &run).map_err(err)?
                && !already_known(ledger, kind).map_err(err)?
            {
                return Err(format!(
                    "its `{}` event would add to run {} of this ledger",
                    kind.name(),
                    run.short()
                ));
            }
        }
    }
    if !c.blobs.iter().any(|(h, _)| *h == c.root) && !ledger.store().contains(&c.root) {
        return Err(format!(
            "the root artifact {} is not in the bundle",
            c.root.short()
        ));
    }
    if !introduced.contains(&c.root) && index.introducer(&c.root).map_err(err)?.is_none() {
        return Err(format!(
            "no event of the bundle records its root artifact {}",
            c.root.short()
        ));
    }
    Ok(())
}

/// A run this ledger started itself (its `RunStarted` is not foreign).
fn is_local_run(ledger: &Ledger, run: &Hash) -> Result<bool> {
    let Some(first) = ledger.index().run_events(run)?.first().copied() else {
        return Ok(false);
    };
    Ok(!matches!(
        ledger.event(first)?.event.kind,
        EventKind::Foreign(_)
    ))
}

/// Whether this ledger already records what `kind` says (as its own or from an import).
fn already_known(ledger: &Ledger, kind: &EventKind) -> Result<bool> {
    let index = ledger.index();
    Ok(match kind {
        EventKind::ArtifactAdded(a) => index.introducer(&a.hash)?.is_some(),
        EventKind::RunStarted(r) => index.is_run(&r.run_id)?,
        EventKind::StageRun(s) => {
            let mut found = false;
            for seq in index.run_events(&s.run_id)? {
                if let (EventKind::StageRun(existing), _) = ledger.event(seq)?.event.kind.claim() {
                    found |= existing.node == s.node && existing.action_key == s.action_key;
                }
            }
            found
        }
        EventKind::Observation(o) => {
            index.observation(&o.request)?.is_some()
                || index.foreign_observation(&o.request)?.is_some()
        }
        EventKind::Tag(t) => index.tag(&t.name)? == Some(t.target),
        EventKind::Collected(_) | EventKind::Imported(_) | EventKind::Foreign(_) => false,
    })
}

fn hash_stream(r: &mut dyn Read) -> std::io::Result<(Hash, u64)> {
    let mut hasher = blake3::Hasher::new();
    let size = std::io::copy(r, &mut hasher)?;
    Ok((Hash::from(hasher.finalize()), size))
}

fn write_frame(w: &mut impl Write, entry: &Entry) -> std::io::Result<()> {
    let payload = postcard::to_stdvec(entry).expect("bundle entries encode");
    w.write_all(&(payload.len() as u32).to_le_bytes())?;
    w.write_all(&payload)?;
    w.write_all(Hash::of(&payload).as_bytes())
}

fn read_frame(r: &mut impl Read) -> std::result::Result<Entry, String> {
    let mut len = [0u8; 4];
    r.read_exact(&mut len)
        .map_err(|_| "truncated (no end marker)".to_string())?;
    let len = u32::from_le_bytes(len);
    if len > MAX_FRAME {
        return Err(format!("an entry claims {len} bytes"));
    }
    let mut payload = vec![0u8; len as usize];
    let mut sum = [0u8; 32];
    r.read_exact(&mut payload)
        .map_err(|_| "truncated inside an entry".to_string())?;
    r.read_exact(&mut sum)
        .map_err(|_| "truncated inside an entry".to_string())?;
    if Hash::of(&payload).0 != sum {
        return Err("an entry fails its checksum".into());
    }
    postcard::from_bytes(&payload).map_err(|e| format!("an entry does not decode: {e}"))
}

/// Hashes everything written through it.
struct HashingWriter<W> {
    inner: W,
    hasher: blake3::Hasher,
}

impl<W: Write> HashingWriter<W> {
    fn new(inner: W) -> Self {
        HashingWriter {
            inner,
            hasher: blake3::Hasher::new(),
        }
    }
    fn digest(&self) -> Hash {
        Hash::from(self.hasher.finalize())
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Hashes everything read through it.
struct HashingReader<R> {
    inner: R,
    hasher: blake3::Hasher,
}

impl<R: Read> HashingReader<R> {
    fn new(inner: R) -> Self {
        HashingReader {
            inner,
            hasher: blake3::Hasher::new(),
        }
    }
    fn digest(&self) -> Hash {
        Hash::from(self.hasher.finalize())
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}
