//! Corpus shards: zstd-compressed JSONL, one record a line, readable with `zstdcat | jq`.
//!
//! Writing streams straight into a blob writer, so memory is bounded by one record, not by the
//! shard. Compression runs at a fixed level on one thread, so the bytes (and the hash) depend
//! only on the records.

use anyhow::{bail, Context, Result};
use ledger::stage::StageContext;
use ledger::Hash;
use serde::{de::DeserializeOwned, Serialize};
use std::io::{BufRead, BufReader, Read, Write};

pub const MEDIA_TYPE: &str = "application/x-ndjson+zstd";
const LEVEL: i32 = 9;

/// Streams records into a new output blob.
pub struct ShardWriter {
    encoder: zstd::Encoder<'static, ledger::store::BlobWriter>,
    records: u64,
}

impl ShardWriter {
    pub fn new(ctx: &StageContext) -> Result<ShardWriter> {
        let encoder = zstd::Encoder::new(ctx.output_writer()?, LEVEL)?;
        Ok(ShardWriter {
            encoder,
            records: 0,
        })
    }

    pub fn push<T: Serialize>(&mut self, record: &T) -> Result<()> {
        serde_json::to_writer(&mut self.encoder, record)?;
        self.encoder.write_all(b"\n")?;
        self.records += 1;
        Ok(())
    }

    pub fn records(&self) -> u64 {
        self.records
    }

    /// Finishes the frame and records the blob as output `name` of the stage.
    pub fn finish(self, ctx: &mut StageContext, name: &str) -> Result<Hash> {
        let writer = self.encoder.finish()?;
        Ok(ctx.finish_output(name, MEDIA_TYPE, writer)?)
    }
}

/// Writes records into shards of at most `per_shard` records each, recorded (at `finish`) as
/// outputs `<prefix>00000`, `<prefix>00001`, … — at least one, empty if there are no records —
/// so a node's output can be the manifest of them all. It needs the context only to start
/// and to finish, so records can come from code that holds the context meanwhile.
pub struct ShardSet {
    prefix: String,
    per_shard: u64,
    store: ledger::store::BlobStore,
    current: Option<(zstd::Encoder<'static, ledger::store::BlobWriter>, u64)>,
    done: Vec<(Hash, u64)>,
    records: u64,
}

impl ShardSet {
    pub fn new(ctx: &StageContext, prefix: &str, per_shard: u64) -> ShardSet {
        ShardSet {
            prefix: prefix.to_string(),
            per_shard: per_shard.max(1),
            store: ctx.output_store(),
            current: None,
            done: Vec::new(),
            records: 0,
        }
    }

    pub fn push<T: Serialize>(&mut self, record: &T) -> Result<()> {
        if self
            .current
            .as_ref()
            .is_some_and(|(_, n)| *n >= self.per_shard)
        {
            self.close()?;
        }
        if self.current.is_none() {
            self.current = Some((zstd::Encoder::new(self.store.writer()?, LEVEL)?, 0));
        }
        let (encoder, n) = self.current.as_mut().expect("open");
        serde_json::to_writer(&mut *encoder, record)?;
        encoder.write_all(b"\n")?;
        *n += 1;
        self.records += 1;
        Ok(())
    }

    fn close(&mut self) -> Result<()> {
        if let Some((encoder, _)) = self.current.take() {
            self.done.push(encoder.finish()?.finish()?);
        }
        Ok(())
    }

    /// Finishes the last shard and records every shard as an output; returns (shards,
    /// records).
    pub fn finish(mut self, ctx: &mut StageContext) -> Result<(u64, u64)> {
        if self.current.is_none() && self.done.is_empty() {
            self.current = Some((zstd::Encoder::new(self.store.writer()?, LEVEL)?, 0));
        }
        self.close()?;
        for (i, (hash, size)) in self.done.iter().enumerate() {
            ctx.add_output(&format!("{}{i:05}", self.prefix), MEDIA_TYPE, *hash, *size)?;
        }
        Ok((self.done.len() as u64, self.records))
    }
}

/// The largest record a shard may hold once decompressed. A reconstructed sample is capped at
/// 32,000 tokens and a PR record at its files' `max_file_bytes` each, so real records are far
/// smaller; the bound keeps a decompression bomb (a few KB of zstd expanding to one line of
/// gigabytes) from taking the machine's memory before it fails.
pub const MAX_RECORD_BYTES: usize = 64 << 20;

/// Reads the records of a shard one at a time; `what` names it in errors. Every record is
/// bounded by [`MAX_RECORD_BYTES`]; a blob that is not a zstd stream (an empty one included)
/// is an error, while a valid stream of no records reads as none.
pub fn read<T: DeserializeOwned>(
    ctx: &StageContext,
    hash: &Hash,
    what: &str,
) -> Result<impl Iterator<Item = Result<T>>> {
    read_bounded(ctx, hash, what, MAX_RECORD_BYTES)
}

fn read_bounded<T: DeserializeOwned>(
    ctx: &StageContext,
    hash: &Hash,
    what: &str,
    max_record: usize,
) -> Result<impl Iterator<Item = Result<T>>> {
    let file = ctx.open_blob(hash)?;
    if file.is_empty() {
        bail!("{what}: an empty blob (0 bytes) is not a zstd stream");
    }
    let decoder = zstd::Decoder::new(file).with_context(|| format!("{what}: not a zstd stream"))?;
    let what = what.to_string();
    let mut reader = BufReader::new(decoder);
    let mut line_no = 0usize;
    let mut line = Vec::new();
    let mut done = false;
    Ok(std::iter::from_fn(move || loop {
        if done {
            return None;
        }
        line.clear();
        line_no += 1;
        let read = (&mut reader)
            .take(max_record as u64 + 1)
            .read_until(b'\n', &mut line)
            .with_context(|| format!("{what}: reading line {line_no}"));
        match read {
            Err(e) => {
                done = true;
                return Some(Err(e));
            }
            Ok(0) => return None,
            Ok(_) => {}
        }
        if line.last() == Some(&b'\n') {
            line.pop();
        } else if line.len() > max_record {
            done = true;
            return Some(Err(anyhow::anyhow!(
                "{what}: line {line_no} is longer than the {max_record}-byte limit of a record (a damaged or hostile shard)"
            )));
        }
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        return Some(
            serde_json::from_slice(&line)
                .with_context(|| format!("{what}: line {line_no} is not a valid record")),
        );
    }))
}
