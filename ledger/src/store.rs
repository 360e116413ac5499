//! The content-addressed blob store: `objects/<2 hex>/<62 hex>`, address = BLAKE3 of the bytes.
//!
//! Ingest streams its input once, hashing and writing in the same pass into a temp file, then
//! fsyncs and renames it into place, so a blob is either absent or complete. Hashing runs on its
//! own thread beside the reads and writes, so ingest costs about one pass over the bytes.
//!
//! Every read for a stage is checked against the address it was asked for: `read` rehashes
//! the bytes it returns, and `open_verified` hashes while it streams and fails at the end of
//! the blob (naming it) if the bytes were altered, so no output is ever built from rotted
//! bytes under the original address. Every durable write goes through the ledger's
//! [`Storage`] seam.

use crate::error::{Error, Result};
use crate::hash::Hash;
use crate::storage::{Op, Storage};
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc, Mutex};

const CHUNK: usize = 1 << 20;
/// Blobs up to this size are rehashed in one read (a hashing thread costs more than it saves).
const SMALL_BLOB: u64 = 4 << 20;

#[derive(Clone, Debug)]
pub struct BlobStore {
    objects: PathBuf,
    tmp: PathBuf,
    storage: Storage,
}

impl BlobStore {
    pub fn new(dir: &Path) -> BlobStore {
        BlobStore::with_storage(dir, Storage::disk())
    }

    /// A store whose durable writes go through `storage` (a fault plan, in crash tests).
    pub fn with_storage(dir: &Path, storage: Storage) -> BlobStore {
        BlobStore {
            objects: dir.join("objects"),
            tmp: dir.join("tmp"),
            storage,
        }
    }

    pub fn create_dirs(&self) -> Result<()> {
        for d in [&self.objects, &self.tmp] {
            self.storage
                .create_dir_all(d)
                .map_err(|e| Error::io(d, e))?;
        }
        Ok(())
    }

    /// Where in-flight blobs are written (never visible as artifacts).
    pub fn tmp_dir(&self) -> &Path {
        &self.tmp
    }

    pub fn path(&self, hash: &Hash) -> PathBuf {
        let hex = hash.to_hex();
        self.objects.join(&hex[..2]).join(&hex[2..])
    }

    pub fn contains(&self, hash: &Hash) -> bool {
        self.path(hash).is_file()
    }

    pub fn open(&self, hash: &Hash) -> Result<File> {
        let path = self.path(hash);
        File::open(&path).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => Error::NotFound(format!(
                "blob {hash} is not in the store (collected by `ledger gc`, or never stored here)"
            )),
            _ => Error::io(&path, e),
        })
    }

    /// A blob's bytes, checked against its address.
    pub fn read(&self, hash: &Hash) -> Result<Vec<u8>> {
        let mut bytes = Vec::new();
        let path = self.path(hash);
        self.open(hash)?
            .read_to_end(&mut bytes)
            .map_err(|e| Error::io(&path, e))?;
        let actual = Hash::of(&bytes);
        if actual != *hash {
            return Err(damaged(hash, &actual, &path));
        }
        Ok(bytes)
    }

    /// A reader of a blob that hashes what it streams and fails at the end of the blob if the
    /// bytes do not hash to `hash`. A reader dropped before the end hashes the rest then, and
    /// reports damage to `unread_damage` (the stage context's list), so a consumer that stops
    /// early cannot hide rotted bytes either.
    pub fn open_verified(
        &self,
        hash: &Hash,
        unread_damage: Option<Arc<Mutex<Vec<String>>>>,
    ) -> Result<VerifiedBlob> {
        let file = self.open(hash)?;
        let path = self.path(hash);
        let size = file.metadata().map_err(|e| Error::io(&path, e))?.len();
        Ok(VerifiedBlob {
            file,
            path,
            hash: *hash,
            hasher: blake3::Hasher::new(),
            size,
            read: 0,
            checked: false,
            unread_damage,
        })
    }

    /// The size of a stored blob.
    pub fn size(&self, hash: &Hash) -> Result<u64> {
        let path = self.path(hash);
        Ok(self
            .open(hash)?
            .metadata()
            .map_err(|e| Error::io(&path, e))?
            .len())
    }

    pub fn put_bytes(&self, bytes: &[u8]) -> Result<(Hash, u64)> {
        let hash = Hash::of(bytes);
        if self.contains(&hash) {
            return Ok((hash, bytes.len() as u64));
        }
        let mut tmp = self.temp_file()?;
        let path = tmp.path().to_path_buf();
        self.storage
            .write_all(tmp.as_file_mut(), &path, bytes)
            .map_err(|e| Error::io(&path, e))?;
        self.commit(tmp, hash)?;
        Ok((hash, bytes.len() as u64))
    }

    /// Streams `input` into the store. `what` names the input in error messages.
    pub fn ingest(&self, input: &mut dyn Read, what: &str) -> Result<(Hash, u64)> {
        let tmp = self.temp_file()?;
        let mut out = Writeback::new(tmp.as_file(), tmp.path(), &self.storage);
        let (hash, size) = hash_and_copy(input, &mut out, what)?;
        if self.contains(&hash) {
            return Ok((hash, size));
        }
        self.commit(tmp, hash)?;
        Ok((hash, size))
    }

    /// A writer whose bytes become a blob when `finish` is called (for stage outputs).
    pub fn writer(&self) -> Result<BlobWriter> {
        Ok(BlobWriter {
            tmp: self.temp_file()?,
            hasher: blake3::Hasher::new(),
            size: 0,
            store: self.clone(),
        })
    }

    fn temp_file(&self) -> Result<tempfile::NamedTempFile> {
        self.storage
            .allow(Op::Create(&self.tmp))
            .map_err(|e| Error::io(&self.tmp, e))?;
        tempfile::Builder::new()
            .prefix("ingest-")
            .tempfile_in(&self.tmp)
            .map_err(|e| Error::io(&self.tmp, e))
    }

    fn commit(&self, tmp: tempfile::NamedTempFile, hash: Hash) -> Result<()> {
        self.storage
            .sync_all(tmp.as_file(), tmp.path())
            .map_err(|e| Error::io(tmp.path(), e))?;
        let dest = self.path(&hash);
        let dir = dest.parent().expect("object paths have a parent");
        self.storage
            .create_dir_all(dir)
            .map_err(|e| Error::io(dir, e))?;
        self.storage
            .allow(Op::Rename {
                from: tmp.path(),
                to: &dest,
            })
            .map_err(|e| Error::io(&dest, e))?;
        tmp.persist(&dest).map_err(|e| Error::io(&dest, e.error))?;
        self.storage.sync_dir(dir).map_err(|e| Error::io(dir, e))?;
        Ok(())
    }

    /// Moves a blob from another store on the same filesystem (a verified staging or scratch
    /// store) into this one, without copying its bytes.
    pub fn adopt(&self, from: &BlobStore, hash: &Hash) -> Result<()> {
        if self.contains(hash) {
            return Ok(());
        }
        let src = from.path(hash);
        let dest = self.path(hash);
        let dir = dest.parent().expect("object paths have a parent");
        self.storage
            .create_dir_all(dir)
            .map_err(|e| Error::io(dir, e))?;
        self.storage
            .rename(&src, &dest)
            .map_err(|e| Error::io(&src, e))?;
        self.storage.sync_dir(dir).map_err(|e| Error::io(dir, e))
    }

    pub fn remove(&self, hash: &Hash) -> Result<()> {
        let path = self.path(hash);
        match self.storage.remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io(&path, e)),
        }
    }

    /// Every blob file in the store, named by its address (not checked against its bytes).
    pub fn list(&self) -> Result<Vec<Hash>> {
        let mut out = Vec::new();
        let rd = match fs::read_dir(&self.objects) {
            Ok(rd) => rd,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(Error::io(&self.objects, e)),
        };
        for shard in rd {
            let shard = shard.map_err(|e| Error::io(&self.objects, e))?;
            let prefix = shard.file_name().to_string_lossy().into_owned();
            let entries = fs::read_dir(shard.path()).map_err(|e| Error::io(&shard.path(), e))?;
            for entry in entries {
                let entry = entry.map_err(|e| Error::io(&shard.path(), e))?;
                let name = entry.file_name().to_string_lossy().into_owned();
                if let Some(h) = Hash::from_hex(&format!("{prefix}{name}")) {
                    out.push(h);
                }
            }
        }
        out.sort();
        Ok(out)
    }

    /// Rehashes a stored blob: small ones in one read on this thread, larger ones streamed
    /// with the read beside the hash.
    pub fn rehash(&self, hash: &Hash) -> Result<(Hash, u64)> {
        let mut f = self.open(hash)?;
        let len = f
            .metadata()
            .map_err(|e| Error::io(&self.path(hash), e))?
            .len();
        if len <= SMALL_BLOB {
            let mut bytes = Vec::with_capacity(len as usize);
            f.read_to_end(&mut bytes)
                .map_err(|e| Error::io(&self.path(hash), e))?;
            return Ok((Hash::of(&bytes), bytes.len() as u64));
        }
        hash_and_copy(
            &mut f,
            &mut io::sink(),
            &self.path(hash).display().to_string(),
        )
    }
}

/// A stage output being written; becomes a blob on `finish`.
pub struct BlobWriter {
    tmp: tempfile::NamedTempFile,
    hasher: blake3::Hasher,
    size: u64,
    store: BlobStore,
}

impl Write for BlobWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let path = self.tmp.path().to_path_buf();
        self.store
            .storage
            .write_all(self.tmp.as_file_mut(), &path, buf)?;
        self.hasher.update(buf);
        self.size += buf.len() as u64;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.tmp.flush()
    }
}

impl BlobWriter {
    pub fn finish(mut self) -> Result<(Hash, u64)> {
        self.tmp
            .flush()
            .map_err(|e| Error::io(self.tmp.path(), e))?;
        let hash = Hash::from(self.hasher.finalize());
        if !self.store.contains(&hash) {
            self.store.commit(self.tmp, hash)?;
        }
        Ok((hash, self.size))
    }
}

/// Writes to a file while asking the kernel to start writeback of each finished 8 MiB window,
/// so the final fsync has little left to do (measured: it removes most of the fsync's cost on
/// a 1 GiB ingest). Waiting on the window two behind caps the dirty data at about 24 MiB.
struct Writeback<'a> {
    file: &'a File,
    path: &'a Path,
    storage: &'a Storage,
    written: u64,
    submitted: u64,
}

const WRITEBACK_WINDOW: u64 = 8 << 20;

impl<'a> Writeback<'a> {
    fn new(file: &'a File, path: &'a Path, storage: &'a Storage) -> Self {
        Writeback {
            file,
            path,
            storage,
            written: 0,
            submitted: 0,
        }
    }

    #[cfg(target_os = "linux")]
    fn start_writeback(&mut self) {
        use std::os::unix::io::AsRawFd;
        while self.written - self.submitted >= WRITEBACK_WINDOW {
            let fd = self.file.as_raw_fd();
            // SAFETY: plain syscalls on a file descriptor we own; failures only cost speed.
            unsafe {
                libc::sync_file_range(
                    fd,
                    self.submitted as libc::off64_t,
                    WRITEBACK_WINDOW as libc::off64_t,
                    libc::SYNC_FILE_RANGE_WRITE,
                );
                if self.submitted >= 2 * WRITEBACK_WINDOW {
                    libc::sync_file_range(
                        fd,
                        (self.submitted - 2 * WRITEBACK_WINDOW) as libc::off64_t,
                        WRITEBACK_WINDOW as libc::off64_t,
                        libc::SYNC_FILE_RANGE_WAIT_BEFORE
                            | libc::SYNC_FILE_RANGE_WRITE
                            | libc::SYNC_FILE_RANGE_WAIT_AFTER,
                    );
                }
            }
            self.submitted += WRITEBACK_WINDOW;
        }
    }

    #[cfg(not(target_os = "linux"))]
    fn start_writeback(&mut self) {}
}

impl Write for Writeback<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.storage.write_all(&mut self.file, self.path, buf)?;
        self.written += buf.len() as u64;
        self.start_writeback();
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        (&*self.file).flush()
    }
}

fn damaged(hash: &Hash, actual: &Hash, path: &Path) -> Error {
    Error::Corrupt(format!(
        "blob {hash} is damaged: its bytes hash to {} ({}); run `ledger verify`",
        actual.short(),
        path.display()
    ))
}

/// A blob opened for a stage: its bytes as they stream, checked against its address (see
/// [`BlobStore::open_verified`]).
pub struct VerifiedBlob {
    file: File,
    path: PathBuf,
    hash: Hash,
    hasher: blake3::Hasher,
    size: u64,
    read: u64,
    checked: bool,
    unread_damage: Option<Arc<Mutex<Vec<String>>>>,
}

impl VerifiedBlob {
    /// The blob's size in bytes.
    pub fn len(&self) -> u64 {
        self.size
    }

    pub fn is_empty(&self) -> bool {
        self.size == 0
    }

    pub fn hash(&self) -> Hash {
        self.hash
    }

    /// At the end of the blob: the bytes read must be the blob, whole and unaltered.
    fn check(&mut self) -> io::Result<()> {
        self.checked = true;
        let actual = Hash::from(self.hasher.finalize());
        if actual != self.hash || self.read != self.size {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                damaged(&self.hash, &actual, &self.path).to_string(),
            ));
        }
        Ok(())
    }
}

impl Read for VerifiedBlob {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.file.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.read += n as u64;
        if n == 0 && !buf.is_empty() && !self.checked {
            self.check()?;
        }
        Ok(n)
    }
}

impl Drop for VerifiedBlob {
    fn drop(&mut self) {
        if self.checked {
            return;
        }
        let Some(sink) = self.unread_damage.take() else {
            return;
        };
        // The consumer stopped early: hash the rest, so what it did read is vouched for.
        let mut buf = vec![0u8; CHUNK];
        let problem = loop {
            match self.read(&mut buf) {
                Ok(0) => break None,
                Ok(_) => {}
                Err(e) => break Some(e.to_string()),
            }
        };
        if let Some(problem) = problem {
            sink.lock().expect("not poisoned").push(problem);
        }
    }
}

/// Copies `input` to `output` once while hashing it on a second thread.
///
/// Buffers circulate between the reader and the hasher, so memory stays at a few chunks
/// whatever the input size.
fn hash_and_copy(input: &mut dyn Read, output: &mut dyn Write, what: &str) -> Result<(Hash, u64)> {
    let io_err = |e: io::Error| Error::io(Path::new(what), e);
    let (to_hasher, hasher_rx) = mpsc::sync_channel::<(Vec<u8>, usize)>(2);
    let (to_reader, recycled) = mpsc::sync_channel::<Vec<u8>>(4);
    for _ in 0..3 {
        to_reader.send(vec![0u8; CHUNK]).expect("channel has room");
    }
    std::thread::scope(|s| {
        let hasher = s.spawn(move || {
            let mut h = blake3::Hasher::new();
            for (buf, n) in hasher_rx {
                h.update(&buf[..n]);
                // The reader may have finished already; then the buffer is simply dropped.
                let _ = to_reader.send(buf);
            }
            Hash::from(h.finalize())
        });
        let mut size = 0u64;
        let copied = (|| -> io::Result<()> {
            loop {
                let mut buf = recycled.recv().expect("hasher returns buffers");
                let n = read_full(input, &mut buf)?;
                if n == 0 {
                    return Ok(());
                }
                output.write_all(&buf[..n])?;
                size += n as u64;
                if to_hasher.send((buf, n)).is_err() {
                    return Ok(());
                }
            }
        })();
        drop(to_hasher);
        let hash = hasher.join().expect("hasher thread does not panic");
        copied.map_err(io_err)?;
        Ok((hash, size))
    })
}

fn read_full(input: &mut dyn Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match input.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}
