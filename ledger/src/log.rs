//! The append-only event log: the ledger's source of truth.
//!
//! File layout: an 8-byte header `DVLEDG01`, then frames of
//! `u32 little-endian payload length | postcard payload | BLAKE3(payload)`.
//! The BLAKE3 digest is both the frame checksum and the event's id; each event carries the id of
//! the one before it, so the log is a hash chain. A crash can only leave an incomplete last frame
//! (a "torn tail"), which readers ignore and the next writer cuts off. Anything else that does
//! not read as a chain of intact events is damage: reported, never cut (see [`Scanner`]).

use crate::error::{Error, Result};
use crate::event::{now_ms, Event, EventKind};
use crate::hash::Hash;
use crate::storage::{Op, Storage};
use std::fs::{File, OpenOptions};
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

pub const HEADER: &[u8; 8] = b"DVLEDG01";
/// No single event may be larger; a bigger length field means a damaged frame.
pub const MAX_FRAME: u32 = 64 << 20;
const LEN_BYTES: u64 = 4;
const SUM_BYTES: u64 = 32;
const OVERHEAD: u64 = LEN_BYTES + SUM_BYTES;
/// The smallest payload an event encodes to (seq, the 32-byte prev, time, kind and its
/// smallest body): no writer ever frames fewer bytes.
const MIN_PAYLOAD: u64 = 35;
/// How much of the file a search for the next intact frame reads at a time.
const SEARCH_WINDOW: usize = 4 << 20;

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

/// Creates the log of a new ledger with nothing but its header, atomically: the header is
/// written to a temp file beside it, synced, and renamed into place, so a crash leaves either
/// no log or a complete empty one (never the 0-byte file a killed `init` used to leave).
/// The caller holds the writer lock.
pub fn create(path: &Path, storage: &Storage) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = path.with_extension("log.init");
    let io = |e| Error::io(&tmp, e);
    storage.allow(Op::Create(&tmp)).map_err(io)?;
    // A leftover of a killed `init` is replaced: it never held an event.
    let mut f = File::create(&tmp).map_err(io)?;
    storage.write_all(&mut f, &tmp, HEADER).map_err(io)?;
    storage.sync_all(&f, &tmp).map_err(io)?;
    drop(f);
    storage.rename(&tmp, path).map_err(|e| Error::io(path, e))?;
    storage.sync_dir(dir).map_err(|e| Error::io(dir, e))?;
    Ok(())
}

/// What the first bytes of a log file say about it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeaderState {
    Good,
    /// 0 to 7 bytes, all a prefix of the header: the remains of an `init` killed by an older
    /// version (which wrote the log in place). It never held an event.
    Unfinished,
    Bad,
}

pub fn header_state(path: &Path) -> Result<HeaderState> {
    let mut file = File::open(path).map_err(|e| Error::io(path, e))?;
    let mut first = Vec::with_capacity(HEADER.len());
    (&mut file)
        .take(HEADER.len() as u64)
        .read_to_end(&mut first)
        .map_err(|e| Error::io(path, e))?;
    let len = file.metadata().map_err(|e| Error::io(path, e))?.len();
    Ok(if first == HEADER {
        HeaderState::Good
    } else if len < HEADER.len() as u64 && HEADER.starts_with(&first) {
        HeaderState::Unfinished
    } else {
        HeaderState::Bad
    })
}

fn bad_header(path: &Path) -> Error {
    Error::Corrupt(format!(
        "{}: not a ledger event log (its 8-byte header is damaged or missing); `ledger verify` reports what else it finds",
        path.display()
    ))
}

/// Sequential reader over the frames of a log, starting at a known-good tail.
///
/// A frame that cannot be read as it stands is told apart precisely:
/// - an intact event whose *length field* is damaged (its payload decodes, and the 32 bytes
///   after it are its BLAKE3) is reported as damage, and the scan goes on after it;
/// - otherwise, when an intact frame starts anywhere later in the file, the bytes up to it are
///   reported as damage, and the scan resynchronises there;
/// - only when nothing intact follows, and the frame is incomplete (its length field, which is
///   written first, points past the end of the file; or fewer than 4 bytes are left; or all
///   that is left is zero bytes, which a file system can leave after a crash), is it a torn
///   tail: an interrupted append, the one thing the next writer may cut off.
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
        if header_state(path)? != HeaderState::Good {
            return Err(bad_header(path));
        }
        Scanner::open_unchecked(path, from)
    }

    /// A scanner that does not insist on the header (for `verify`, which reports a damaged
    /// header and still checks every frame after it).
    pub fn open_unchecked(path: &Path, from: Tail) -> Result<Scanner> {
        let mut file = File::open(path).map_err(|e| Error::io(path, e))?;
        let len = file.metadata().map_err(|e| Error::io(path, e))?.len();
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

    /// The tail after the last frame returned so far (after a damaged frame: past it).
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

    fn io(&self, e: std::io::Error) -> Error {
        Error::io(&self.path, e)
    }

    fn seek_to(&mut self, pos: u64) -> Result<()> {
        self.pos = pos;
        self.reader
            .seek(SeekFrom::Start(pos))
            .map_err(|e| Error::io(&self.path, e))?;
        Ok(())
    }

    fn next_frame(&mut self) -> Result<Option<Frame>> {
        let offset = self.pos;
        let remaining = self.len - offset;
        if remaining == 0 {
            return Ok(None);
        }
        if remaining < LEN_BYTES {
            return self.unframed(offset, None).map(Some);
        }
        let mut len_buf = [0u8; 4];
        self.reader
            .read_exact(&mut len_buf)
            .map_err(|e| Error::io(&self.path, e))?;
        let len = u32::from_le_bytes(len_buf);
        let frame_len = OVERHEAD + len as u64;
        // No writer frames fewer bytes than the smallest event, or more than the limit.
        if (len as u64) < MIN_PAYLOAD || len > MAX_FRAME || frame_len > remaining {
            return self.unframed(offset, Some(len)).map(Some);
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
            // The length field may be what is damaged: an intact event of another length.
            if let Some(frame) = self.relength(offset, Some(len))? {
                return Ok(Some(frame));
            }
            // Resynchronise: the stored checksum is the original id of this event (unless the
            // damage is in the checksum itself, in which case the payload's hash is).
            let (payload, sum) = self.body.split_at(len as usize);
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
            let reason = self.chain_break(&event);
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

    fn chain_break(&self, event: &Event) -> String {
        format!(
            "hash chain broken: expected event #{} after {}, found event #{} after {}",
            self.expect_seq,
            self.expect_prev.short(),
            event.seq,
            event.prev.short()
        )
    }

    /// The frame at `offset` cannot be read by its length field (`stated`; `None` when fewer
    /// than 4 bytes are left): damage, or a torn tail (see [`Scanner`]).
    fn unframed(&mut self, offset: u64, stated: Option<u32>) -> Result<Frame> {
        if let Some(frame) = self.relength(offset, stated)? {
            return Ok(frame);
        }
        let shown = |l: u32| format!("its length field says {l} bytes");
        if let Some((at, event)) = self.find_frame(offset + 1)? {
            self.seek_to(at)?;
            let reason = format!(
                "{} bytes cannot be read as events ({}); the next intact event, #{}, starts at byte {at}",
                at - offset,
                stated.map_or_else(|| "a cut length field".to_string(), shown),
                event.seq
            );
            // Resynchronise on the frame found, so the events after the damage read as what
            // they are (the events lost in between are what this report is about).
            self.expect_seq = event.seq;
            self.expect_prev = event.prev;
            self.alt_prev = None;
            return Ok(Frame::Damaged {
                offset,
                reason,
                event: None,
            });
        }
        let remaining = self.len - offset;
        let incomplete = match stated {
            None => true,
            Some(l) => OVERHEAD + l as u64 > remaining,
        };
        if incomplete || self.all_zero(offset)? {
            self.seek_to(self.len)?;
            return Ok(Frame::Torn {
                offset,
                bytes: remaining,
            });
        }
        self.seek_to(self.len)?;
        Ok(Frame::Damaged {
            offset,
            reason: format!(
                "the last {remaining} bytes cannot be read as events ({}), and they are not an interrupted append",
                stated.map_or_else(|| "a cut length field".to_string(), shown)
            ),
            event: None,
        })
    }

    /// An intact event at `offset` whose length field says something else (`stated`): its
    /// payload decodes, and the 32 bytes after it are the payload's BLAKE3. The scan goes on
    /// after it.
    fn relength(&mut self, offset: u64, stated: Option<u32>) -> Result<Option<Frame>> {
        let start = offset + LEN_BYTES;
        if self.len < start + MIN_PAYLOAD + SUM_BYTES {
            return Ok(None);
        }
        let available = (self.len - start).min(MAX_FRAME as u64 + SUM_BYTES);
        let mut want = available.min(1 << 20);
        let mut buf = Vec::new();
        let (event, size) = loop {
            buf.resize(want as usize, 0);
            self.reader
                .get_ref()
                .read_exact_at(&mut buf, start)
                .map_err(|e| self.io(e))?;
            match postcard::take_from_bytes::<Event>(&buf) {
                Ok((event, rest)) => break (event, buf.len() - rest.len()),
                Err(postcard::Error::DeserializeUnexpectedEnd) if want < available => {
                    want = available
                }
                Err(_) => return Ok(None),
            }
        };
        if stated == Some(size as u32) || buf.len() < size + SUM_BYTES as usize {
            return Ok(None);
        }
        let id = Hash::of(&buf[..size]);
        if id.0[..] != buf[size..size + SUM_BYTES as usize] {
            return Ok(None);
        }
        self.seek_to(start + size as u64 + SUM_BYTES)?;
        let mut reason = format!(
            "the frame's length field is damaged ({}; the event it frames is {size} bytes and intact)",
            stated.map_or_else(|| "cut".to_string(), |l| format!("it says {l} bytes"))
        );
        if event.seq != self.expect_seq || event.prev != self.expect_prev {
            reason.push_str(&format!("; {}", self.chain_break(&event)));
        }
        self.expect_seq = event.seq + 1;
        self.expect_prev = id;
        self.alt_prev = None;
        Ok(Some(Frame::Damaged {
            offset,
            reason,
            event: Some(Box::new(event)),
        }))
    }

    /// The first intact frame starting at or after `from` (its checksum matches, it decodes,
    /// and its seq is not below the one expected), searched in windows of the file.
    fn find_frame(&self, from: u64) -> Result<Option<(u64, Event)>> {
        let file = self.reader.get_ref();
        let min_frame = OVERHEAD + MIN_PAYLOAD;
        let mut window = Vec::new();
        let mut body = Vec::new();
        let mut start = from;
        while start + min_frame <= self.len {
            let n = ((self.len - start) as usize).min(SEARCH_WINDOW);
            window.resize(n, 0);
            file.read_exact_at(&mut window, start)
                .map_err(|e| self.io(e))?;
            // Positions whose length field lies in this window; the next window starts after.
            let last = n - LEN_BYTES as usize;
            for i in 0..=last {
                let at = start + i as u64;
                if at + min_frame > self.len {
                    return Ok(None);
                }
                let len = u32::from_le_bytes(window[i..i + 4].try_into().expect("4 bytes")) as u64;
                if len < MIN_PAYLOAD || len > MAX_FRAME as u64 || at + OVERHEAD + len > self.len {
                    continue;
                }
                // Cheap before hashing: the payload opens with the event's seq.
                let seq_bytes = &window[(i + 4).min(n)..(i + 14).min(n)];
                if varint(seq_bytes).is_some_and(|seq| seq < self.expect_seq) {
                    continue;
                }
                let body_len = (len + SUM_BYTES) as usize;
                let frame: &[u8] = if i + 4 + body_len <= n {
                    &window[i + 4..i + 4 + body_len]
                } else {
                    body.resize(body_len, 0);
                    file.read_exact_at(&mut body, at + LEN_BYTES)
                        .map_err(|e| self.io(e))?;
                    &body
                };
                let (payload, sum) = frame.split_at(len as usize);
                if Hash::of(payload).0[..] == sum[..] {
                    if let Ok(event) = Event::decode(payload) {
                        return Ok(Some((at, event)));
                    }
                }
            }
            start += last as u64 + 1;
        }
        Ok(None)
    }

    fn all_zero(&self, from: u64) -> Result<bool> {
        let file = self.reader.get_ref();
        let mut buf = vec![0u8; SEARCH_WINDOW];
        let mut at = from;
        while at < self.len {
            let n = ((self.len - at) as usize).min(buf.len());
            file.read_exact_at(&mut buf[..n], at)
                .map_err(|e| self.io(e))?;
            if buf[..n].iter().any(|b| *b != 0) {
                return Ok(false);
            }
            at += n as u64;
        }
        Ok(true)
    }
}

/// A postcard (LEB128) varint at the start of `bytes`, if it is complete there.
fn varint(bytes: &[u8]) -> Option<u64> {
    let mut value = 0u64;
    for (i, b) in bytes.iter().take(10).enumerate() {
        value |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Some(value);
        }
    }
    None
}

impl Iterator for Scanner {
    type Item = Result<Frame>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let item = self.next_frame().transpose();
        // Nothing after a torn tail can be framed, and an I/O error ends the scan.
        if matches!(item, None | Some(Err(_)) | Some(Ok(Frame::Torn { .. }))) {
            self.done = true;
        }
        item
    }
}

/// Checks the first events of a log, up to `upto` (which the index says it holds), before a
/// writer builds on them: every frame's checksum and the hash chain, without decoding events
/// (an event opens with its seq and the id of its predecessor). On damage, the error names the
/// first damaged frame as a full scan describes it.
pub fn check_chain(path: &Path, upto: Tail) -> Result<()> {
    let fast = (|| -> std::io::Result<bool> {
        let file = File::open(path)?;
        let len = file.metadata()?.len();
        if len < upto.end {
            return Ok(false);
        }
        let mut reader = BufReader::with_capacity(1 << 20, file);
        let mut header = [0u8; 8];
        reader.read_exact(&mut header)?;
        if &header != HEADER {
            return Ok(false);
        }
        let mut pos = HEADER.len() as u64;
        let (mut seq, mut prev) = (0u64, Hash::ZERO);
        let mut body = Vec::new();
        while pos < upto.end {
            let mut len_buf = [0u8; 4];
            reader.read_exact(&mut len_buf)?;
            let len = u32::from_le_bytes(len_buf) as u64;
            if len < MIN_PAYLOAD || len > MAX_FRAME as u64 || pos + OVERHEAD + len > upto.end {
                return Ok(false);
            }
            body.resize((len + SUM_BYTES) as usize, 0);
            reader.read_exact(&mut body)?;
            let (payload, sum) = body.split_at(len as usize);
            let id = Hash::of(payload);
            if id.0[..] != sum[..] {
                return Ok(false);
            }
            let Some(stored_seq) = varint(payload) else {
                return Ok(false);
            };
            let at = payload
                .iter()
                .position(|b| b & 0x80 == 0)
                .expect("a varint")
                + 1;
            if stored_seq != seq || payload.get(at..at + 32) != Some(&prev.0[..]) {
                return Ok(false);
            }
            seq += 1;
            prev = id;
            pos += OVERHEAD + len;
        }
        Ok(pos == upto.end && seq == upto.next_seq && prev == upto.last_id)
    })()
    .map_err(|e| Error::io(path, e))?;
    if fast {
        return Ok(());
    }
    // Name the damage as `verify` would.
    let scanner = Scanner::open(path, Tail::EMPTY)?;
    let mut last = Tail::EMPTY;
    for frame in scanner {
        match frame? {
            Frame::Good(s) => {
                last = Tail {
                    next_seq: s.event.seq + 1,
                    last_id: s.id,
                    end: s.end,
                };
                if s.end >= upto.end {
                    break;
                }
            }
            Frame::Torn { offset, .. } => {
                return Err(Error::Corrupt(format!(
                    "{}: the log ends at byte {offset}, inside event #{}, which the index says is complete: the log was truncated; `ledger verify` names what is affected",
                    path.display(),
                    last.next_seq
                )))
            }
            Frame::Damaged { offset, reason, .. } => {
                return Err(Error::Corrupt(format!(
                    "{}: event log damaged at byte {offset}: {reason}; writers refuse to build on a damaged log (restore events.log from a copy; `ledger verify` names what is affected)",
                    path.display()
                )))
            }
        }
    }
    if last == upto {
        return Ok(());
    }
    Err(Error::Corrupt(format!(
        "{}: the log does not hold the {} events the index describes (it holds {}): the log was truncated or replaced. \
         `ledger verify` shows the damage; `ledger reindex` accepts the log as it is",
        path.display(),
        upto.next_seq,
        last.next_seq
    )))
}

/// Reads the single event stored at `offset` (random access through the index).
pub fn read_at(file: &File, path: &Path, offset: u64) -> Result<Stored> {
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
    storage: Storage,
}

impl Writer {
    /// Opens for appending after `tail`. `torn` is the number of bytes after `tail` that a
    /// scan found to be an interrupted append (a torn tail): those, and only those, are cut
    /// off. Any other bytes after `tail` mean the caller's view of the log is stale.
    pub fn open(path: &Path, tail: Tail, torn: u64, storage: &Storage) -> Result<Writer> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(|e| Error::io(path, e))?;
        let len = file.metadata().map_err(|e| Error::io(path, e))?.len();
        if len != tail.end + torn {
            return Err(Error::Corrupt(format!(
                "{}: the log is {len} bytes, but its last event ends at byte {} and {torn} bytes after it were found torn; refusing to append",
                path.display(),
                tail.end
            )));
        }
        if torn > 0 {
            tracing::warn!(
                "discarding {torn} bytes of an interrupted append at the end of {}",
                path.display()
            );
            storage
                .set_len(&file, path, tail.end)
                .and_then(|()| storage.sync_all(&file, path))
                .map_err(|e| Error::io(path, e))?;
        }
        Ok(Writer {
            path: path.to_path_buf(),
            file,
            tail,
            storage: storage.clone(),
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
        let write = self
            .storage
            .write_all_at(&self.file, &self.path, &buf, self.tail.end)
            .and_then(|()| self.storage.sync_data(&self.file, &self.path));
        if let Err(e) = write {
            // Leave no partial frame behind for a later append to build on.
            let _ = self.storage.set_len(&self.file, &self.path, self.tail.end);
            return Err(Error::io(&self.path, e));
        }
        self.tail = tail;
        Ok(stored)
    }
}
