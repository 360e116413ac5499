//! Self-contained bundles of an artifact's lineage — events and blobs — so a result can be
//! audited (and replayed) on another machine: `ledger export HASH -o FILE`, `ledger import FILE`.
//!
//! Layout: `DVBUNDL1`, then frames `u32 LE length | postcard(Entry) | BLAKE3(payload)`. A
//! `Blob` frame is followed by exactly `size` raw bytes. The final `End` frame carries the
//! BLAKE3 of every byte before it, so truncation and tampering anywhere are caught. A bundle
//! names no file paths: blobs are placed by their verified hash, so there are no path tricks
//! to play. Import verifies everything into a staging area first, then moves blobs into the
//! store and appends the events in one durable batch: nothing is ever half-imported.

use crate::error::{Error, Result};
use crate::event::{EventKind, RunStatus};
use crate::hash::Hash;
use crate::ledger::Ledger;
use crate::lineage::{lineage, Provenance};
use crate::store::BlobStore;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeSet, HashSet};
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

#[derive(Debug, Serialize)]
pub struct ImportReport {
    pub root: String,
    pub events_appended: usize,
    pub events_known: usize,
    pub blobs_added: usize,
}

/// Writes everything that `root` depends on into a bundle at `out`.
pub fn export(ledger: &Ledger, root: &Hash, out: &Path) -> Result<ExportReport> {
    let graph = lineage(ledger, root)?;
    // Events: each artifact's introducing event, each step's run header and the observations
    // recorded while the step ran (they sit between the run's previous event and the step).
    let mut seqs: BTreeSet<u64> = BTreeSet::new();
    let mut blobs: BTreeSet<Hash> = BTreeSet::new();
    for (hex, info) in &graph.artifacts {
        let hash = Hash::from_hex(hex).expect("hex");
        blobs.insert(hash);
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
                if let EventKind::Observation(o) = &stored.event.kind {
                    blobs.insert(o.response);
                    seqs.insert(seq);
                }
            }
        }
    }
    let mut events = Vec::new();
    for seq in &seqs {
        let kind = ledger.event(*seq)?.event.kind;
        if let EventKind::RunStarted(r) = &kind {
            blobs.insert(r.config);
        }
        events.push(kind);
    }
    let blobs: Vec<Hash> = blobs
        .into_iter()
        .filter(|h| ledger.store().contains(h))
        .collect();

    let dir = out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let tmp = tempfile::NamedTempFile::new_in(dir).map_err(|e| Error::io(dir, e))?;
    let mut w = HashingWriter::new(BufWriter::new(tmp.as_file()));
    let io = |e| Error::io(out, e);
    w.write_all(MAGIC).map_err(io)?;
    write_frame(
        &mut w,
        &Entry::Header {
            root: *root,
            events: events.len() as u32,
            blobs: blobs.len() as u32,
        },
    )
    .map_err(io)?;
    for kind in events.iter().cloned() {
        write_frame(&mut w, &Entry::Event(kind)).map_err(io)?;
    }
    let mut bytes = 0;
    for hash in &blobs {
        let mut f = ledger.store().open(hash)?;
        let size = f.metadata().map_err(io)?.len();
        write_frame(&mut w, &Entry::Blob { hash: *hash, size }).map_err(io)?;
        let copied = std::io::copy(&mut (&mut f).take(size), &mut w).map_err(io)?;
        if copied != size {
            return Err(Error::Corrupt(format!(
                "blob {hash} changed size while exporting"
            )));
        }
        bytes += size;
    }
    let digest = w.digest();
    write_frame(&mut w, &Entry::End { digest }).map_err(io)?;
    w.inner.flush().map_err(io)?;
    drop(w);
    tmp.as_file().sync_all().map_err(io)?;
    tmp.persist(out).map_err(|e| Error::io(out, e.error))?;
    Ok(ExportReport {
        root: root.to_hex(),
        events: events.len() as u32,
        blobs: blobs.len() as u32,
        bytes,
    })
}

/// Verifies a bundle completely, then adds what the ledger lacks.
pub fn import(ledger: &mut Ledger, path: &Path) -> Result<ImportReport> {
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
    let staging_dir = tempfile::Builder::new()
        .prefix("import-")
        .tempdir_in(ledger.dir().join("tmp"))
        .map_err(|e| Error::io(ledger.dir(), e))?;
    let staging = BlobStore::new(staging_dir.path());
    staging.create_dirs()?;

    let Entry::Header {
        root,
        events: n_events,
        blobs: n_blobs,
    } = read_frame(&mut r).map_err(&bad)?
    else {
        return Err(bad("the first entry is not a header".into()));
    };
    let mut events = Vec::new();
    let mut staged = Vec::new();
    loop {
        let before = r.digest();
        match read_frame(&mut r).map_err(&bad)? {
            Entry::Header { .. } => return Err(bad("a second header".into())),
            Entry::Event(kind) => events.push(kind),
            Entry::Blob { hash, size } => {
                let mut limited = (&mut r).take(size);
                let (actual, got) = staging.ingest(&mut limited, &path.display().to_string())?;
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
                staged.push(hash);
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
    if events.len() != n_events as usize || staged.len() != n_blobs as usize {
        return Err(bad(format!(
            "the header promises {n_events} events and {n_blobs} blobs, the bundle holds {} and {}",
            events.len(),
            staged.len()
        )));
    }
    // Every artifact the events name must arrive with the bundle or already be here.
    let staged_set: HashSet<Hash> = staged.iter().copied().collect();
    for kind in &events {
        if let EventKind::StageRun(run) = kind {
            if !matches!(run.status, RunStatus::Succeeded) {
                return Err(bad(format!("step `{}` is not a successful run", run.node)));
            }
        }
    }
    if !staged_set.contains(&root) && !ledger.store().contains(&root) {
        return Err(bad(format!(
            "the root artifact {} is not in the bundle",
            root.short()
        )));
    }

    // Commit: blobs first (durable), then the new events in one batch.
    let mut blobs_added = 0;
    for hash in &staged {
        if !ledger.store().contains(hash) {
            ledger.store().adopt(&staging, hash)?;
            blobs_added += 1;
        }
    }
    let mut fresh = Vec::new();
    let mut known = 0;
    for kind in events {
        if already_known(ledger, &kind)? {
            known += 1;
        } else {
            fresh.push(kind);
        }
    }
    let appended = fresh.len();
    if !fresh.is_empty() {
        ledger.append(fresh)?;
    }
    Ok(ImportReport {
        root: root.to_hex(),
        events_appended: appended,
        events_known: known,
        blobs_added,
    })
}

fn already_known(ledger: &Ledger, kind: &EventKind) -> Result<bool> {
    let index = ledger.index();
    Ok(match kind {
        EventKind::ArtifactAdded(a) => index.introducer(&a.hash)?.is_some(),
        EventKind::RunStarted(r) => index.is_run(&r.run_id)?,
        EventKind::StageRun(s) => {
            let mut found = false;
            for seq in index.run_events(&s.run_id)? {
                if let EventKind::StageRun(existing) = ledger.event(seq)?.event.kind {
                    found |= existing.node == s.node && existing.action_key == s.action_key;
                }
            }
            found
        }
        EventKind::Observation(o) => index.observation(&o.request)?.is_some(),
        EventKind::Tag(t) => index.tag(&t.name)? == Some(t.target),
        EventKind::Collected(_) => true,
    })
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
