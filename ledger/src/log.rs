//! The append-only event log: the ledger's source of truth.
//!
//! File layout: an 8-byte header `DVLEDG01`, then frames of
//! `u32 little-endian payload length | postcard payload | BLAKE3(payload)`.
//! The BLAKE3 digest is both the frame checksum and the event's id; each event carries the id of
//! the one before it, so the log is a hash chain. A crash can only leave an incomplete last frame
//! (a "torn tail"), which readers ignore and the next writer cuts off.

use crate::error::{Error, Result};
use crate::event::{now_ms, Event, EventKind};
use crate::hash::Hash;
use std::fs::{File, OpenOptions};
use std::io::{BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

pub const HEADER: &[u8; 8] = b"DVLEDG01";
/// No single event may be larger; a bigger length field means a damaged frame.
pub const MAX_FRAME: u32 = 64 << 20;
const LEN_BYTES: u64 = 4;
const SUM_BYTES: u64 = 32;

/// Where the chain ends: what the next append must continue from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tail {
    pub next_seq: u64,
    pub last_id: Hash,
    /// Byte offset just past the last good frame.
    pub end: u64,
}

impl Tail {
    pub const EMPTY: Tail = Tail {
        next_seq: 0,
        last_id: Hash::ZERO,
        end: HEADER.len() as u64,
    };
}

/// An event as stored: where its frame is and what its id is.
#[derive(Clone, Debug)]
pub struct Stored {
    /// Byte offset of the frame.
    pub offset: u64,
    /// Byte offset just past the frame (the next frame's offset).
    pub end: u64,
    pub id: Hash,
    pub event: Event,
}

/// One step of a sequential scan.
#[allow(clippy::large_enum_variant)] // yielded one at a time
#[derive(Debug)]
pub enum Frame {
    Good(Stored),
    /// The file ends inside this frame: an interrupted append.
    Torn {
        offset: u64,
        bytes: u64,
    },
    /// A complete frame that fails its checksum, does not decode, or breaks the chain.
    /// `event` is what the payload still decodes to, if anything, to name what it touched.
    Damaged {
        offset: u64,
        reason: String,
        event: Option<Box<Event>>,
    },
}

pub fn create(path: &Path) -> Result<()> {
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(|e| Error::io(path, e))?;
    f.write_all(HEADER).map_err(|e| Error::io(path, e))?;
    f.sync_all().map_err(|e| Error::io(path, e))?;
    Ok(())
}

/// Sequential reader over the frames of a log, starting at a known-good tail.
pub struct Scanner {
    path: PathBuf,
    reader: BufReader<File>,
    /// The current frame's bytes, reused from frame to frame.
    body: Vec<u8>,
    len: u64,
    pos: u64,
    expect_seq: u64,
    expect_prev: Hash,
    /// After a frame that failed its checksum, the id its successor may name instead of
    /// `expect_prev` (the damage may be in the stored checksum rather than the payload).
    alt_prev: Option<Hash>,
    done: bool,
}

impl Scanner {
    pub fn open(path: &Path, from: Tail) -> Result<Scanner> {
        let mut file = File::open(path).map_err(|e| Error::io(path, e))?;
        let len = file.metadata().map_err(|e| Error::io(path, e))?.len();
        let mut header = [0u8; 8];
        if len < HEADER.len() as u64 || file.read_exact(&mut header).is_err() || &header != HEADER {
            return Err(Error::Corrupt(format!(
                "{}: not a ledger event log (bad header)",
                path.display()
            )));
        }
        if from.end > len {
            return Err(Error::Corrupt(format!(
                "{}: the log is {len} bytes but the index expects at least {} bytes: the log was truncated",
                path.display(),
                from.end
            )));
        }
        file.seek(SeekFrom::Start(from.end))
            .map_err(|e| Error::io(path, e))?;
        Ok(Scanner {
            path: path.to_path_buf(),
            reader: BufReader::with_capacity(1 << 20, file),
            body: Vec::new(),
            len,
            pos: from.end,
            expect_seq: from.next_seq,
            expect_prev: from.last_id,
            alt_prev: None,
            done: false,
        })
    }

    /// The tail after the last good frame returned so far.
    pub fn tail(&self) -> Tail {
        Tail {
            next_seq: self.expect_seq,
            last_id: self.expect_prev,
            end: self.pos,
        }
    }

    pub fn file_len(&self) -> u64 {
        self.len
    }

    fn next_frame(&mut self) -> Result<Option<Frame>> {
        let offset = self.pos;
        let remaining = self.len - offset;
        if remaining == 0 {
            return Ok(None);
        }
        if remaining < LEN_BYTES {
            return Ok(Some(Frame::Torn {
                offset,
                bytes: remaining,
            }));
        }
        let mut len_buf = [0u8; 4];
        self.reader
            .read_exact(&mut len_buf)
            .map_err(|e| Error::io(&self.path, e))?;
        let len = u32::from_le_bytes(len_buf);
        let frame_len = LEN_BYTES + len as u64 + SUM_BYTES;
        if len > MAX_FRAME {
            // Treated as a torn tail only when nothing could follow it; otherwise it is damage.
            return Ok(Some(if frame_len > remaining {
                Frame::Torn {
                    offset,
                    bytes: remaining,
                }
            } else {
                Frame::Damaged {
                    offset,
                    reason: format!("frame length {len} exceeds the {MAX_FRAME}-byte limit"),
                    event: None,
                }
            }));
        }
        if frame_len > remaining {
            return Ok(Some(Frame::Torn {
                offset,
                bytes: remaining,
            }));
        }
        self.body.resize(len as usize + SUM_BYTES as usize, 0);
        self.reader
            .read_exact(&mut self.body)
            .map_err(|e| Error::io(&self.path, e))?;
        self.pos += frame_len;
        let (payload, sum) = self.body.split_at(len as usize);
        let id = Hash::of(payload);
        let alt_prev = self.alt_prev.take();
        if id.0[..] != sum[..] {
            // Resynchronise: the stored checksum is the original id of this event (unless the
            // damage is in the checksum itself, in which case the payload's hash is).
            self.expect_seq += 1;
            self.expect_prev = Hash(sum.try_into().expect("32 bytes"));
            self.alt_prev = Some(id);
            return Ok(Some(Frame::Damaged {
                offset,
                reason: "checksum mismatch".into(),
                event: Event::decode(payload).ok().map(Box::new),
            }));
        }
        let event = match Event::decode(payload) {
            Ok(e) => e,
            Err(e) => {
                return Ok(Some(Frame::Damaged {
                    offset,
                    reason: format!("does not decode: {e}"),
                    event: None,
                }))
            }
        };
        if alt_prev == Some(event.prev) {
            self.expect_prev = event.prev;
        }
        if event.seq != self.expect_seq || event.prev != self.expect_prev {
            let reason = format!(
                "hash chain broken: expected event #{} after {}, found event #{} after {}",
                self.expect_seq,
                self.expect_prev.short(),
                event.seq,
                event.prev.short()
            );
            // Resynchronise on the frame we found, so later damage is reported on its own.
            self.expect_seq = event.seq + 1;
            self.expect_prev = id;
            return Ok(Some(Frame::Damaged {
                offset,
                reason,
                event: Some(Box::new(event)),
            }));
        }
        self.expect_seq += 1;
        self.expect_prev = id;
        Ok(Some(Frame::Good(Stored {
            offset,
            end: self.pos,
            id,
            event,
        })))
    }
}

impl Iterator for Scanner {
    type Item = Result<Frame>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let item = self.next_frame().transpose();
        // Nothing after a torn tail or an unreadable length can be framed reliably.
        if matches!(item, None | Some(Err(_)) | Some(Ok(Frame::Torn { .. }))) {
            self.done = true;
        }
        item
    }
}

/// Reads the single event stored at `offset` (random access through the index).
pub fn read_at(file: &File, path: &Path, offset: u64) -> Result<Stored> {
    use std::os::unix::fs::FileExt;
    let mut len_buf = [0u8; 4];
    file.read_exact_at(&mut len_buf, offset)
        .map_err(|e| Error::io(path, e))?;
    let len = u32::from_le_bytes(len_buf);
    if len > MAX_FRAME {
        return Err(Error::Corrupt(format!(
            "{}: bad frame length at offset {offset}",
            path.display()
        )));
    }
    let mut body = vec![0u8; len as usize + SUM_BYTES as usize];
    file.read_exact_at(&mut body, offset + LEN_BYTES)
        .map_err(|e| Error::io(path, e))?;
    let (payload, sum) = body.split_at(len as usize);
    let id = Hash::of(payload);
    if id.0[..] != sum[..] {
        return Err(Error::Corrupt(format!(
            "{}: event at offset {offset} fails its checksum; run `ledger verify`",
            path.display()
        )));
    }
    let event = Event::decode(payload).map_err(|e| {
        Error::Corrupt(format!(
            "{}: event at offset {offset} does not decode: {e}",
            path.display()
        ))
    })?;
    Ok(Stored {
        offset,
        end: offset + LEN_BYTES + len as u64 + SUM_BYTES,
        id,
        event,
    })
}

/// The single appender. Holding one requires the writer lock.
pub struct Writer {
    path: PathBuf,
    file: File,
    tail: Tail,
}

impl Writer {
    /// Opens for appending after `tail`, cutting off a torn tail left by a crash.
    pub fn open(path: &Path, tail: Tail) -> Result<Writer> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(|e| Error::io(path, e))?;
        let len = file.metadata().map_err(|e| Error::io(path, e))?.len();
        if len > tail.end {
            tracing::warn!(
                "discarding {} bytes of an interrupted append at the end of {}",
                len - tail.end,
                path.display()
            );
            file.set_len(tail.end).map_err(|e| Error::io(path, e))?;
            file.sync_all().map_err(|e| Error::io(path, e))?;
        }
        Ok(Writer {
            path: path.to_path_buf(),
            file,
            tail,
        })
    }

    pub fn tail(&self) -> Tail {
        self.tail
    }

    /// Appends events in one write and one fsync; they are durable when this returns.
    pub fn append(&mut self, kinds: Vec<EventKind>) -> Result<Vec<Stored>> {
        let time_ms = now_ms();
        let mut buf = Vec::with_capacity(kinds.len() * 128);
        let mut stored = Vec::with_capacity(kinds.len());
        let mut tail = self.tail;
        for kind in kinds {
            let event = Event {
                seq: tail.next_seq,
                prev: tail.last_id,
                time_ms,
                kind,
            };
            let payload = event.encode();
            let len = u32::try_from(payload.len())
                .ok()
                .filter(|l| *l <= MAX_FRAME)
                .ok_or_else(|| Error::Invalid(format!("event #{} is too large", event.seq)))?;
            let id = Hash::of(&payload);
            let offset = tail.end + buf.len() as u64;
            buf.extend_from_slice(&len.to_le_bytes());
            buf.extend_from_slice(&payload);
            buf.extend_from_slice(id.as_bytes());
            tail.next_seq += 1;
            tail.last_id = id;
            let end = tail.end + buf.len() as u64;
            stored.push(Stored {
                offset,
                end,
                id,
                event,
            });
        }
        tail.end += buf.len() as u64;
        let write = (|| {
            self.file.seek(SeekFrom::Start(self.tail.end))?;
            self.file.write_all(&buf)?;
            self.file.sync_data()
        })();
        if let Err(e) = write {
            // Leave no partial frame behind for a later append to build on.
            let _ = self.file.set_len(self.tail.end);
            return Err(Error::io(&self.path, e));
        }
        self.tail = tail;
        Ok(stored)
    }
}
