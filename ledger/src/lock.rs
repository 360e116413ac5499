//! One writer at a time: an advisory lock on `<ledger>/LOCK`, whose contents name the holder.
//! The kernel drops the lock when the holder exits, however it exits, so a killed writer never
//! leaves a stale lock behind.

use crate::error::{Error, Result};
use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wait {
    /// Block until the current writer finishes, saying who it is.
    Block,
    /// Fail at once, naming the holder.
    NoWait,
}

pub struct WriterLock {
    _file: File,
}

impl WriterLock {
    pub fn acquire(dir: &Path, wait: Wait) -> Result<WriterLock> {
        let path = dir.join("LOCK");
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| Error::io(&path, e))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let holder = read_holder(&mut file);
                match wait {
                    Wait::NoWait => {
                        return Err(Error::Locked(format!(
                            "the ledger at {} is being written by {holder}; try again later (or drop --no-wait to wait)",
                            dir.display()
                        )))
                    }
                    Wait::Block => {
                        tracing::info!("waiting for the writer lock, held by {holder}");
                        eprintln!("waiting for the ledger writer lock, held by {holder} ...");
                        file.lock().map_err(|e| Error::io(&path, e))?;
                    }
                }
            }
            Err(TryLockError::Error(e)) => return Err(Error::io(&path, e)),
        }
        let me = format!(
            "pid {} ({}) since {}",
            std::process::id(),
            std::env::args().collect::<Vec<_>>().join(" "),
            crate::event::now_ms() / 1000
        );
        let written = (|| {
            file.set_len(0)?;
            file.seek(SeekFrom::Start(0))?;
            file.write_all(me.as_bytes())
        })();
        written.map_err(|e| Error::io(&path, e))?;
        Ok(WriterLock { _file: file })
    }
}

fn read_holder(file: &mut File) -> String {
    let mut s = String::new();
    let _ = file.seek(SeekFrom::Start(0));
    let _ = file.read_to_string(&mut s);
    let s = s.trim();
    if s.is_empty() {
        "another process".to_string()
    } else {
        s.to_string()
    }
}
