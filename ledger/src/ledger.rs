//! The `Ledger` handle: one directory holding the log, the blob store and the index.
//!
//! ```text
//! <dir>/events.log   the append-only hash-chained event log (source of truth)
//! <dir>/objects/     content-addressed blobs
//! <dir>/index/       sled index, derived from the log
//! <dir>/tmp/         in-flight blobs (never visible as artifacts)
//! <dir>/LOCK         writer lock
//! ```
//! Order of writes: blob durable → event durable → index.

use crate::error::{Error, Result};
use crate::event::{ArtifactAdded, EventKind, Origin};
use crate::hash::{is_hex_prefix, Hash};
use crate::index::{Index, OpenIndex};
use crate::lock::{Wait, WriterLock};
use crate::log::{self, Frame, Scanner, Stored, Tail};
use crate::storage::Storage;
use crate::store::BlobStore;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub const LOG_FILE: &str = "events.log";
pub const INDEX_DIR: &str = "index";

pub struct Ledger {
    dir: PathBuf,
    store: BlobStore,
    log_path: PathBuf,
    log_file: File,
    index: Index,
    /// Why this reader fell back to a private index, if it did (reported by `verify`).
    index_problem: Option<String>,
    /// sled could not open its files: derived data lost, not ledger data.
    index_unreadable: bool,
    writer: Option<(log::Writer, WriterLock)>,
    /// Where durable writes go (the file system, or a fault plan in crash tests).
    storage: Storage,
}

impl Ledger {
    /// Creates an empty ledger. Fails if `dir` already holds one.
    pub fn init(dir: &Path) -> Result<()> {
        Ledger::init_with(dir, &Storage::disk())
    }

    /// `init`, its durable writes through `storage`. Under the writer lock, the store's
    /// directories are made, then the log appears atomically (see `log::create`): a crash at
    /// any point leaves either no ledger or a complete empty one, and `init` can be run again.
    pub fn init_with(dir: &Path, storage: &Storage) -> Result<()> {
        storage.create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let _lock = WriterLock::acquire(dir, Wait::NoWait)?;
        let log_path = dir.join(LOG_FILE);
        if log_path.exists() {
            match log::header_state(&log_path)? {
                // What an `init` killed by an older version left: it never held an event.
                log::HeaderState::Unfinished => tracing::warn!(
                    "{}: the log of an interrupted `init` ({} bytes); creating it again",
                    log_path.display(),
                    std::fs::metadata(&log_path).map_or(0, |m| m.len())
                ),
                _ => {
                    return Err(Error::Invalid(format!(
                        "{} is already a ledger",
                        dir.display()
                    )))
                }
            }
        }
        BlobStore::with_storage(dir, storage.clone()).create_dirs()?;
        log::create(&log_path, storage)?;
        Ok(())
    }

    /// Opens for reading. Readers never block on a writer: if the writer holds the persistent
    /// index, the reader builds a private in-memory one from the log.
    pub fn open(dir: &Path) -> Result<Ledger> {
        let log_path = existing_log(dir)?;
        let mut problem = None;
        let index = match Index::open(&dir.join(INDEX_DIR), &Storage::disk())? {
            OpenIndex::Ready(index) => index,
            OpenIndex::Busy => {
                tracing::debug!("index busy; reading through a private index");
                Index::temporary()
            }
            OpenIndex::Broken(why) => {
                tracing::warn!("{why}; reading through a private index (a writer rebuilds it)");
                problem = Some(why);
                Index::temporary()
            }
        };
        let mut ledger = Ledger::assemble(dir, log_path, index, Storage::disk())?;
        ledger.index_unreadable = problem.is_some();
        ledger.index_problem = problem;
        ledger.catch_up(false)?;
        Ok(ledger)
    }

    /// Opens for reading through a private index built from the log, leaving the persistent
    /// index's files alone (for checks that must write nothing, such as a bundle's before
    /// its import).
    pub fn open_private(dir: &Path) -> Result<Ledger> {
        let log_path = existing_log(dir)?;
        let mut ledger = Ledger::assemble(dir, log_path, Index::temporary(), Storage::disk())?;
        ledger.catch_up(false)?;
        Ok(ledger)
    }

    /// Opens a reader that follows the log as writers append to it (for a long-lived reader,
    /// such as `ledger ui`): its index is private, built from the log, so it never holds the
    /// persistent index a writer needs. `seen` is shown every event as it is indexed, in log
    /// order; [`Ledger::follow`] indexes (and shows) what was appended since.
    pub fn open_follower(dir: &Path, seen: &mut dyn FnMut(&Stored)) -> Result<Ledger> {
        let log_path = existing_log(dir)?;
        let mut ledger = Ledger::assemble(dir, log_path, Index::temporary(), Storage::disk())?;
        ledger.catch_up_with(false, seen)?;
        Ok(ledger)
    }

    /// For a reader: indexes the events appended since it opened or last followed, showing
    /// each to `seen`; returns how many there were. A torn last frame (an append in flight)
    /// waits for the next call; damage stops the reader there (see `index_problem`).
    pub fn follow(&mut self, seen: &mut dyn FnMut(&Stored)) -> Result<u64> {
        if self.is_writer() {
            return Err(Error::Invalid(
                "a writer's index is always current; `follow` is for readers".into(),
            ));
        }
        let before = self.event_count();
        self.catch_up_with(false, seen)?;
        Ok(self.event_count() - before)
    }

    /// Opens for writing: takes the writer lock, then the index.
    pub fn open_writer(dir: &Path, wait: Wait) -> Result<Ledger> {
        Ledger::writer(dir, wait, false, Storage::disk())
    }

    /// `open_writer`, its durable writes through `storage` (a fault plan, in crash tests).
    pub fn open_writer_with(dir: &Path, wait: Wait, storage: Storage) -> Result<Ledger> {
        Ledger::writer(dir, wait, false, storage)
    }

    /// Takes the writer lock and rebuilds the index from the log, whatever state the index is
    /// in; returns the number of events indexed. Refuses only a damaged log.
    pub fn reindex(dir: &Path, wait: Wait) -> Result<u64> {
        Ledger::reindex_with(dir, wait, Storage::disk())
    }

    /// `reindex`, its writes through `storage`.
    pub fn reindex_with(dir: &Path, wait: Wait, storage: Storage) -> Result<u64> {
        let ledger = Ledger::writer(dir, wait, true, storage)?;
        ledger.index.flush()?;
        Ok(ledger.writer.as_ref().map_or(0, |(w, _)| w.tail().next_seq))
    }

    fn writer(dir: &Path, wait: Wait, rebuild: bool, storage: Storage) -> Result<Ledger> {
        let log_path = existing_log(dir)?;
        let lock = WriterLock::acquire(dir, wait)?;
        let index_path = dir.join(INDEX_DIR);
        // Readers hold the persistent index only for the length of one command.
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut index = loop {
            match Index::open(&index_path, &storage)? {
                OpenIndex::Ready(index) => break index,
                OpenIndex::Busy if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(50))
                }
                OpenIndex::Busy => {
                    return Err(Error::Locked(format!(
                        "the index at {} stayed busy for 60 s",
                        index_path.display()
                    )))
                }
                OpenIndex::Broken(why) => {
                    // Derived data: set the damaged files aside (only the latest such copy is
                    // kept) and rebuild from the log.
                    remove_broken_indexes(dir, &storage)?;
                    let aside = dir.join(format!("{INDEX_DIR}.broken-{}", crate::event::now_ms()));
                    tracing::warn!("{why}; moving it to {} and rebuilding", aside.display());
                    storage
                        .rename(&index_path, &aside)
                        .map_err(|e| Error::io(&index_path, e))?;
                }
            }
        };
        if rebuild {
            index.clear()?;
        }
        let mut ledger = Ledger::assemble(dir, log_path, index, storage)?;
        let (tail, torn) = ledger.catch_up(true)?;
        let writer = log::Writer::open(&ledger.log_path, tail, torn, &ledger.storage)?;
        ledger.writer = Some((writer, lock));
        Ok(ledger)
    }

    fn assemble(dir: &Path, log_path: PathBuf, index: Index, storage: Storage) -> Result<Ledger> {
        let log_file = File::open(&log_path).map_err(|e| Error::io(&log_path, e))?;
        Ok(Ledger {
            dir: dir.to_path_buf(),
            store: BlobStore::with_storage(dir, storage.clone()),
            log_path,
            log_file,
            index,
            index_problem: None,
            index_unreadable: false,
            writer: None,
            storage,
        })
    }

    /// Brings the index up to the end of the log; returns the tail after the last good event
    /// and how many bytes after it are a torn tail. A writer (`strict`) first checks every
    /// frame the index already covers (checksums and the hash chain: bit rot anywhere in the
    /// log stops it), then refuses to build on a damaged or truncated log; a reader indexes
    /// what it can and warns.
    fn catch_up(&mut self, strict: bool) -> Result<(Tail, u64)> {
        self.catch_up_with(strict, &mut |_| {})
    }

    /// `catch_up`, showing each newly indexed event to `seen`.
    fn catch_up_with(
        &mut self,
        strict: bool,
        seen: &mut dyn FnMut(&Stored),
    ) -> Result<(Tail, u64)> {
        let mut tail = self.index.tail()?;
        if let Err(problem) = self.check_index_tail(tail) {
            if strict {
                return Err(problem);
            }
            tracing::warn!("{problem}; reading through a private index rebuilt from the log");
            self.index_problem = Some(problem.to_string());
            self.index = Index::temporary();
            tail = Tail::EMPTY;
        }
        if strict {
            log::check_chain(&self.log_path, tail)?;
        }
        let mut scanner = Scanner::open(&self.log_path, tail)?;
        let mut batch = Vec::new();
        let mut good = scanner.tail();
        let mut torn = 0;
        while let Some(frame) = scanner.next() {
            match frame? {
                Frame::Good(stored) => {
                    seen(&stored);
                    batch.push(stored);
                    good = scanner.tail();
                    if batch.len() >= 8192 {
                        self.index.apply(&batch, good)?;
                        batch.clear();
                    }
                }
                Frame::Torn { bytes, .. } => {
                    torn = bytes;
                    break;
                }
                Frame::Damaged { offset, reason, .. } => {
                    let msg = format!(
                        "{}: event log damaged at byte {offset}: {reason}; run `ledger verify`",
                        self.log_path.display()
                    );
                    if strict {
                        return Err(Error::Corrupt(msg));
                    }
                    tracing::warn!("{msg}");
                    self.index_problem.get_or_insert(msg);
                    break;
                }
            }
        }
        self.index.apply(&batch, good)?;
        Ok((good, torn))
    }

    /// The index must describe a prefix of this very log.
    fn check_index_tail(&self, tail: Tail) -> Result<()> {
        if tail.next_seq == 0 {
            return Ok(());
        }
        let len = self
            .log_file
            .metadata()
            .map_err(|e| Error::io(&self.log_path, e))?
            .len();
        let truncated = || {
            Error::Corrupt(format!(
                "{}: the index knows {} events but the log holds fewer: the log was truncated or replaced. \
                 `ledger verify` shows the damage; `ledger reindex` accepts the log as it is",
                self.log_path.display(),
                tail.next_seq
            ))
        };
        if len < tail.end {
            return Err(truncated());
        }
        let Some(last) = self.index.event_location(tail.next_seq - 1)? else {
            return Err(truncated());
        };
        match log::read_at(&self.log_file, &self.log_path, last.start) {
            Ok(s) if s.id == last.id && s.id == tail.last_id && s.end == tail.end => Ok(()),
            Ok(_) => Err(truncated()),
            // The bytes are there but no longer read as the event: damage, not a shorter log.
            Err(e) => Err(Error::Corrupt(format!(
                "{}: event #{} is damaged ({e}); writers refuse to build on a damaged log (restore events.log from a copy; `ledger verify` names what is affected)",
                self.log_path.display(),
                tail.next_seq - 1
            ))),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    pub fn store(&self) -> &BlobStore {
        &self.store
    }

    /// Where this handle's durable writes go.
    pub fn storage(&self) -> &Storage {
        &self.storage
    }

    pub fn index(&self) -> &Index {
        &self.index
    }

    /// Set when this reader could not trust the persistent index and rebuilt a private one.
    pub fn index_problem(&self) -> Option<&str> {
        self.index_problem.as_deref()
    }

    /// True when the persistent index's files could not be opened at all (e.g. torn by a
    /// SIGKILL): only derived data is lost, and the next writer rebuilds it.
    pub fn index_unreadable(&self) -> bool {
        self.index_unreadable
    }

    pub fn is_writer(&self) -> bool {
        self.writer.is_some()
    }

    fn require_writer(&mut self) -> Result<&mut log::Writer> {
        self.writer
            .as_mut()
            .map(|(w, _)| w)
            .ok_or_else(|| Error::Invalid("this ledger handle was opened read-only".into()))
    }

    /// Appends events durably, then indexes them.
    pub fn append(&mut self, kinds: Vec<EventKind>) -> Result<Vec<Stored>> {
        let writer = self.require_writer()?;
        let stored = writer.append(kinds)?;
        let tail = writer.tail();
        self.index.apply(&stored, tail)?;
        Ok(stored)
    }

    pub fn append_one(&mut self, kind: EventKind) -> Result<Stored> {
        Ok(self.append(vec![kind])?.remove(0))
    }

    pub fn event(&self, seq: u64) -> Result<Stored> {
        let location = self
            .index
            .event_location(seq)?
            .ok_or_else(|| Error::NotFound(format!("no event #{seq}")))?;
        let stored = log::read_at(&self.log_file, &self.log_path, location.start)?;
        if stored.id != location.id || stored.event.seq != seq {
            return Err(Error::Corrupt(format!(
                "event #{seq} in the log does not match the index; run `ledger verify`"
            )));
        }
        Ok(stored)
    }

    /// Every event from the start of the log.
    pub fn scan(&self) -> Result<Scanner> {
        Scanner::open(&self.log_path, Tail::EMPTY)
    }

    pub fn event_count(&self) -> u64 {
        self.index.event_count()
    }

    /// Adds bytes from a reader as an artifact (one event, unless the bytes are already known).
    pub fn add(
        &mut self,
        input: &mut dyn Read,
        what: &str,
        media_type: &str,
        origin: Origin,
    ) -> Result<(Hash, u64)> {
        let (hash, size, event) = self.prepare_add(input, what, media_type, origin)?;
        if let Some(event) = event {
            self.append_one(event)?;
        }
        Ok((hash, size))
    }

    /// Stores the bytes durably and returns the event that would record them, if the ledger
    /// does not know them yet. Lets callers adding many artifacts append one batch.
    pub fn prepare_add(
        &self,
        input: &mut dyn Read,
        what: &str,
        media_type: &str,
        origin: Origin,
    ) -> Result<(Hash, u64, Option<EventKind>)> {
        if self.writer.is_none() {
            return Err(Error::Invalid(
                "this ledger handle was opened read-only".into(),
            ));
        }
        let (hash, size) = self.store.ingest(input, what)?;
        let known = self.index.introducer(&hash)?.is_some() && !self.index.is_collected(&hash)?;
        let event = (!known).then(|| {
            EventKind::ArtifactAdded(ArtifactAdded {
                hash,
                size,
                media_type: media_type.to_string(),
                origin,
            })
        });
        Ok((hash, size, event))
    }

    pub fn add_file(&mut self, path: &Path) -> Result<(Hash, u64)> {
        self.add_file_with_progress(path, &indicatif::ProgressBar::hidden())
    }

    /// `add_file`, advancing `progress` by the bytes read (its length is set to the file size).
    pub fn add_file_with_progress(
        &mut self,
        path: &Path,
        progress: &indicatif::ProgressBar,
    ) -> Result<(Hash, u64)> {
        let (hash, size, event) = self.prepare_add_file(path, progress)?;
        if let Some(event) = event {
            self.append_one(event)?;
        }
        Ok((hash, size))
    }

    /// `prepare_add` of a file, its path as the origin.
    pub fn prepare_add_file(
        &self,
        path: &Path,
        progress: &indicatif::ProgressBar,
    ) -> Result<(Hash, u64, Option<EventKind>)> {
        let f = File::open(path).map_err(|e| Error::io(path, e))?;
        let meta = f.metadata().map_err(|e| Error::io(path, e))?;
        progress.set_length(meta.len());
        let mut f = progress.wrap_read(f);
        if meta.is_dir() {
            return Err(Error::Invalid(format!(
                "{}: is a directory, not a file",
                path.display()
            )));
        }
        let shown = path.display().to_string();
        self.prepare_add(
            &mut f,
            &shown,
            media_type_for(path),
            Origin::File {
                path: shown.clone(),
            },
        )
    }

    /// Resolves a tag name, a full address or a unique prefix of >= 8 hex digits to an
    /// artifact or run address.
    pub fn resolve(&self, what: &str) -> Result<Hash> {
        if let Some(h) = self.index.tag(what)? {
            return Ok(h);
        }
        if !is_hex_prefix(what) {
            return Err(Error::NotFound(format!(
                "`{what}` is neither a tag nor a hex address"
            )));
        }
        let prefix = what.to_ascii_lowercase();
        if prefix.len() < 8 {
            return Err(Error::Invalid(format!(
                "`{what}` is too short: give at least 8 hex digits"
            )));
        }
        let mut found = self.index.match_prefix(&prefix)?;
        match found.len() {
            0 => Err(Error::NotFound(format!(
                "no artifact or run in {} matches `{what}`",
                self.dir.display()
            ))),
            1 => Ok(found.remove(0)),
            _ => Err(Error::Ambiguous {
                prefix: what.to_string(),
                candidates: found.iter().map(|h| h.to_hex()).collect(),
            }),
        }
    }

    /// The event that first brought an artifact's bytes into the ledger.
    pub fn introducer(&self, hash: &Hash) -> Result<Option<Stored>> {
        self.index
            .introducer(hash)?
            .map(|seq| self.event(seq))
            .transpose()
    }

    pub fn flush(&self) -> Result<()> {
        self.index.flush()
    }
}

impl Drop for Ledger {
    fn drop(&mut self) {
        let _ = self.index.flush();
    }
}

fn existing_log(dir: &Path) -> Result<PathBuf> {
    let log_path = dir.join(LOG_FILE);
    if !log_path.is_file() {
        return Err(Error::NotFound(format!(
            "no ledger at {} (run `ledger init`, or point --ledger / LEDGER_DIR at one)",
            dir.display()
        )));
    }
    if log::header_state(&log_path)? == log::HeaderState::Unfinished {
        return Err(Error::NotFound(format!(
            "{}: the log of an interrupted `ledger init` (it holds no events); run `ledger init` again",
            log_path.display()
        )));
    }
    Ok(log_path)
}

/// Removes the copies of broken indexes set aside earlier (derived data; the latest one is
/// about to be set aside, and one copy is enough to look at).
fn remove_broken_indexes(dir: &Path, storage: &Storage) -> Result<()> {
    let prefix = format!("{INDEX_DIR}.broken-");
    for entry in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let path = entry.map_err(|e| Error::io(dir, e))?.path();
        let old = path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with(&prefix));
        if old {
            storage
                .remove_dir_all(&path)
                .map_err(|e| Error::io(&path, e))?;
        }
    }
    Ok(())
}

/// A media type from a file name, for humans and tools reading `ledger show`.
pub fn media_type_for(path: &Path) -> &'static str {
    match path.extension().and_then(|e| e.to_str()).unwrap_or("") {
        "json" => "application/json",
        "jsonl" | "ndjson" => "application/x-ndjson",
        "zst" => "application/zstd",
        "toml" => "application/toml",
        "safetensors" => "application/x-safetensors",
        "md" | "markdown" => "text/markdown",
        "txt" | "rst" | "rs" | "py" | "pyi" | "c" | "h" | "cpp" | "go" | "js" | "ts" | "sh"
        | "yaml" | "yml" | "csv" | "tsv" => "text/plain",
        _ => "application/octet-stream",
    }
}
