//! Corpus shards: zstd-compressed JSONL, one record a line, readable with `zstdcat | jq`.
//!
//! Writing streams straight into a blob writer, so memory is bounded by one record, not by the
//! shard. Compression runs at a fixed level on one thread, so the bytes (and the hash) depend
//! only on the records.

use anyhow::{Context, Result};
use ledger::stage::StageContext;
use ledger::Hash;
use serde::{de::DeserializeOwned, Serialize};
use std::io::{BufRead, BufReader, Write};

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

/// Reads the records of a shard one at a time; `what` names it in errors.
pub fn read<T: DeserializeOwned>(
    ctx: &StageContext,
    hash: &Hash,
    what: &str,
) -> Result<impl Iterator<Item = Result<T>>> {
    let file = ctx.open_blob(hash)?;
    let decoder = zstd::Decoder::new(file).with_context(|| format!("{what}: not a zstd stream"))?;
    let what = what.to_string();
    Ok(BufReader::new(decoder)
        .lines()
        .enumerate()
        .filter(|(_, line)| !matches!(line, Ok(l) if l.trim().is_empty()))
        .map(move |(i, line)| {
            let line = line.with_context(|| format!("{what}: reading line {}", i + 1))?;
            serde_json::from_str(&line)
                .with_context(|| format!("{what}: line {} is not a valid record", i + 1))
        }))
}
