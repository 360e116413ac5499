//! The seam between the ledger's durable writes and the file system.
//!
//! Every write that makes ledger state durable goes through a [`Storage`]: log appends, the cut
//! of a torn tail, blob temp files, fsyncs, renames into the store and out of a bundle's
//! staging area, removals by `gc`, the log's creation by `init`, and each step of indexing. In
//! production it is the file system itself. Crash tests give it a [`Faults`] plan instead, which
//! stops the writes at a chosen operation (optionally tearing that write in half), as redb's
//! crash tests do through its `StorageBackend`: every crash point of every write path is then
//! exercised deterministically instead of by killing a process at random instants.
//!
//! A plan that "crashes" fails every operation after the crash point too, so nothing the
//! process does afterwards (error paths, `Drop`) reaches the disk through the seam: what is on
//! disk is what a process killed at that instant would have left (the page cache survives a
//! kill, so written bytes stay written whether or not they were synced).

use std::fmt;
use std::fs::File;
use std::io::{self, Write};
use std::path::Path;
use std::sync::Arc;

/// One operation on the way to durable state, as a fault plan sees it.
#[derive(Clone, Copy, Debug)]
pub enum Op<'a> {
    /// Create a file (a blob's temp file, the log, a staging directory).
    Create(&'a Path),
    /// Write `len` bytes to a file.
    Write { path: &'a Path, len: usize },
    /// `fsync` / `fdatasync` of a file or directory.
    Sync(&'a Path),
    /// Truncate or extend a file.
    SetLen { path: &'a Path, len: u64 },
    /// Rename (`from` → `to`); how blobs, the new log and staged imports become visible.
    Rename { from: &'a Path, to: &'a Path },
    /// Remove a file or a directory tree.
    Remove(&'a Path),
    /// Create a directory and its parents.
    CreateDir(&'a Path),
    /// A step of indexing (a batch of index entries, the index's tail record, a flush): the
    /// index is derived from the log, so a crash here may only ever cost re-indexing.
    Index(&'static str),
}

impl fmt::Display for Op<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Op::Create(p) => write!(f, "create {}", p.display()),
            Op::Write { path, len } => write!(f, "write {len} bytes to {}", path.display()),
            Op::Sync(p) => write!(f, "sync {}", p.display()),
            Op::SetLen { path, len } => write!(f, "set the length of {} to {len}", path.display()),
            Op::Rename { from, to } => {
                write!(f, "rename {} to {}", from.display(), to.display())
            }
            Op::Remove(p) => write!(f, "remove {}", p.display()),
            Op::CreateDir(p) => write!(f, "create directory {}", p.display()),
            Op::Index(what) => write!(f, "index: {what}"),
        }
    }
}

/// What a fault plan does with an operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Perform it.
    Proceed,
    /// Do not perform it; fail with an injected error.
    Fail,
    /// For a write: write only this many bytes, then fail (a torn write). Other operations
    /// fail as with `Fail`.
    Tear(usize),
}

/// A fault plan: consulted before every operation through the seam.
pub trait Faults: Send + Sync {
    fn check(&self, op: &Op<'_>) -> Fault;
}

/// The ledger's durable writes: the file system, or the file system behind a fault plan.
#[derive(Clone, Default)]
pub struct Storage {
    faults: Option<Arc<dyn Faults>>,
}

impl fmt::Debug for Storage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.faults.is_some() {
            "Storage(with faults)"
        } else {
            "Storage(disk)"
        })
    }
}

fn injected(op: &Op<'_>) -> io::Error {
    io::Error::other(format!("injected fault: {op}"))
}

impl Storage {
    /// The file system, with no faults.
    pub fn disk() -> Storage {
        Storage::default()
    }

    /// The file system behind a fault plan (for crash tests).
    pub fn with_faults(faults: Arc<dyn Faults>) -> Storage {
        Storage {
            faults: Some(faults),
        }
    }

    fn check(&self, op: Op<'_>) -> io::Result<Fault> {
        match self
            .faults
            .as_ref()
            .map_or(Fault::Proceed, |f| f.check(&op))
        {
            Fault::Proceed => Ok(Fault::Proceed),
            Fault::Tear(n) if matches!(op, Op::Write { .. }) => Ok(Fault::Tear(n)),
            Fault::Fail | Fault::Tear(_) => Err(injected(&op)),
        }
    }

    /// Checks an operation the caller performs itself (e.g. `tempfile`'s create).
    pub fn allow(&self, op: Op<'_>) -> io::Result<()> {
        self.check(op).map(|_| ())
    }

    /// Writes all of `buf` to `out` (which writes to the file at `path`).
    pub fn write_all(&self, out: &mut dyn Write, path: &Path, buf: &[u8]) -> io::Result<()> {
        match self.check(Op::Write {
            path,
            len: buf.len(),
        })? {
            Fault::Tear(n) => {
                out.write_all(&buf[..n.min(buf.len())])?;
                out.flush()?;
                Err(injected(&Op::Write {
                    path,
                    len: buf.len(),
                }))
            }
            _ => out.write_all(buf),
        }
    }

    /// Writes all of `buf` at `offset` of `file`.
    pub fn write_all_at(
        &self,
        file: &File,
        path: &Path,
        buf: &[u8],
        offset: u64,
    ) -> io::Result<()> {
        use std::os::unix::fs::FileExt;
        match self.check(Op::Write {
            path,
            len: buf.len(),
        })? {
            Fault::Tear(n) => {
                file.write_all_at(&buf[..n.min(buf.len())], offset)?;
                Err(injected(&Op::Write {
                    path,
                    len: buf.len(),
                }))
            }
            _ => file.write_all_at(buf, offset),
        }
    }

    pub fn sync_data(&self, file: &File, path: &Path) -> io::Result<()> {
        self.check(Op::Sync(path))?;
        file.sync_data()
    }

    pub fn sync_all(&self, file: &File, path: &Path) -> io::Result<()> {
        self.check(Op::Sync(path))?;
        file.sync_all()
    }

    /// Makes the entries of a directory (a rename or creation in it) durable.
    pub fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        self.check(Op::Sync(dir))?;
        File::open(dir)?.sync_all()
    }

    pub fn set_len(&self, file: &File, path: &Path, len: u64) -> io::Result<()> {
        self.check(Op::SetLen { path, len })?;
        file.set_len(len)
    }

    pub fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.check(Op::Rename { from, to })?;
        std::fs::rename(from, to)
    }

    pub fn remove_file(&self, path: &Path) -> io::Result<()> {
        self.check(Op::Remove(path))?;
        std::fs::remove_file(path)
    }

    pub fn remove_dir_all(&self, path: &Path) -> io::Result<()> {
        self.check(Op::Remove(path))?;
        std::fs::remove_dir_all(path)
    }

    pub fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        self.check(Op::CreateDir(path))?;
        std::fs::create_dir_all(path)
    }

    /// A crash point between two steps of indexing.
    pub fn index_step(&self, what: &'static str) -> io::Result<()> {
        self.check(Op::Index(what)).map(|_| ())
    }

    /// Whether a fault plan is attached (crash tests), so callers can skip work that only
    /// matters to a process that goes on living.
    pub fn has_faults(&self) -> bool {
        self.faults.is_some()
    }
}

/// A [`Faults`] plan for crash tests: counts operations, and from the `crash_at`-th on
/// (0-based) fails every one, tearing the first in half when it is a write and `tear` is set.
/// With `crash_at = None` it only counts.
pub struct CrashAt {
    crash_at: Option<u64>,
    tear: bool,
    seen: std::sync::atomic::AtomicU64,
    /// The operation the crash happened at, for messages.
    at: std::sync::Mutex<Option<String>>,
}

impl CrashAt {
    pub fn new(crash_at: Option<u64>, tear: bool) -> Arc<CrashAt> {
        Arc::new(CrashAt {
            crash_at,
            tear,
            seen: Default::default(),
            at: Default::default(),
        })
    }

    /// Operations seen so far.
    pub fn seen(&self) -> u64 {
        self.seen.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// The operation the crash happened at, if it happened.
    pub fn crashed_at(&self) -> Option<String> {
        self.at.lock().expect("not poisoned").clone()
    }
}

impl Faults for CrashAt {
    fn check(&self, op: &Op<'_>) -> Fault {
        let n = self.seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        match self.crash_at {
            Some(k) if n == k => {
                *self.at.lock().expect("not poisoned") = Some(op.to_string());
                match op {
                    Op::Write { len, .. } if self.tear && *len > 1 => Fault::Tear(len / 2),
                    _ => Fault::Fail,
                }
            }
            Some(k) if n > k => Fault::Fail,
            _ => Fault::Proceed,
        }
    }
}
