//! The content-addressed blob store: `objects/<2 hex>/<62 hex>`, address = BLAKE3 of the bytes.
//!
//! Ingest streams its input once, hashing and writing in the same pass into a temp file, then
//! fsyncs and renames it into place, so a blob is either absent or complete. Hashing runs on its
//! own thread beside the reads and writes, so ingest costs about one pass over the bytes.

use crate::error::{Error, Result};
use crate::hash::Hash;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc;

const CHUNK: usize = 1 << 20;
/// Blobs up to this size are rehashed in one read (a hashing thread costs more than it saves).
const SMALL_BLOB: u64 = 4 << 20;

#[derive(Clone, Debug)]
pub struct BlobStore {
    objects: PathBuf,
    tmp: PathBuf,
}

impl BlobStore {
    pub fn new(dir: &Path) -> BlobStore {
        BlobStore {
            objects: dir.join("objects"),
            tmp: dir.join("tmp"),
        }
    }

    pub fn create_dirs(&self) -> Result<()> {
        for d in [&self.objects, &self.tmp] {
            fs::create_dir_all(d).map_err(|e| Error::io(d, e))?;
        }
        Ok(())
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

    pub fn read(&self, hash: &Hash) -> Result<Vec<u8>> {
        let mut bytes = Vec::new();
        let path = self.path(hash);
        self.open(hash)?
            .read_to_end(&mut bytes)
            .map_err(|e| Error::io(&path, e))?;
        Ok(bytes)
    }

    pub fn put_bytes(&self, bytes: &[u8]) -> Result<(Hash, u64)> {
        let hash = Hash::of(bytes);
        if self.contains(&hash) {
            return Ok((hash, bytes.len() as u64));
        }
        let mut tmp = self.temp_file()?;
        tmp.write_all(bytes).map_err(|e| Error::io(tmp.path(), e))?;
        self.commit(tmp, hash)?;
        Ok((hash, bytes.len() as u64))
    }

    /// Streams `input` into the store. `what` names the input in error messages.
    pub fn ingest(&self, input: &mut dyn Read, what: &str) -> Result<(Hash, u64)> {
        let tmp = self.temp_file()?;
        let (hash, size) = hash_and_copy(input, &mut Writeback::new(tmp.as_file()), what)?;
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
        tempfile::Builder::new()
            .prefix("ingest-")
            .tempfile_in(&self.tmp)
            .map_err(|e| Error::io(&self.tmp, e))
    }

    fn commit(&self, tmp: tempfile::NamedTempFile, hash: Hash) -> Result<()> {
        tmp.as_file()
            .sync_all()
            .map_err(|e| Error::io(tmp.path(), e))?;
        let dest = self.path(&hash);
        let dir = dest.parent().expect("object paths have a parent");
        fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        tmp.persist(&dest).map_err(|e| Error::io(&dest, e.error))?;
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| Error::io(dir, e))?;
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
        fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        fs::rename(&src, &dest).map_err(|e| Error::io(&src, e))?;
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| Error::io(dir, e))
    }

    pub fn remove(&self, hash: &Hash) -> Result<()> {
        let path = self.path(hash);
        match fs::remove_file(&path) {
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
        let n = self.tmp.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.size += n as u64;
        Ok(n)
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
    written: u64,
    submitted: u64,
}

const WRITEBACK_WINDOW: u64 = 8 << 20;

impl<'a> Writeback<'a> {
    fn new(file: &'a File) -> Self {
        Writeback {
            file,
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
        let n = (&*self.file).write(buf)?;
        self.written += n as u64;
        self.start_writeback();
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        (&*self.file).flush()
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
