//! `pack`: turn an ingested file set into a JSONL text corpus, one record per UTF-8 file.

use anyhow::Context;
use ledger::config::{parse_params, ParamError};
use ledger::stage::{InputSpec, Stage, StageContext};
use ledger::Hash;
use serde::{Deserialize, Serialize};
use std::io::Write;

use crate::ingest::ManifestEntry;

pub struct Pack;

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Params {
    /// Files larger than this are left out (and counted).
    #[serde(default = "default_max_file_bytes")]
    pub max_file_bytes: u64,
}

fn default_max_file_bytes() -> u64 {
    1 << 20
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Record {
    pub path: String,
    pub hash: String,
    pub lines: u64,
    pub bytes: u64,
    pub text: String,
}

impl Stage for Pack {
    fn name(&self) -> &'static str {
        "pack"
    }

    fn version(&self) -> u32 {
        1
    }

    fn description(&self) -> &'static str {
        "file manifest → JSONL corpus of the UTF-8 files"
    }

    fn inputs(&self) -> &'static [InputSpec] {
        &[InputSpec {
            name: "files",
            required: true,
            description: "a manifest from `ingest`",
        }]
    }

    fn outputs(&self) -> &'static [&'static str] {
        &["corpus"]
    }

    fn check(&self, params: toml::Table) -> Result<serde_json::Value, ParamError> {
        let p: Params = parse_params(params)?;
        if p.max_file_bytes == 0 {
            return Err(ParamError::new("max_file_bytes", "must be positive"));
        }
        Ok(serde_json::to_value(p).expect("params serialize"))
    }

    fn execute(&self, ctx: &mut StageContext) -> anyhow::Result<()> {
        let p: Params = ctx.params()?;
        let manifest: Vec<ManifestEntry> = serde_json::from_slice(&ctx.read_input("files")?)
            .context("input `files` is not an ingest manifest")?;
        ctx.progress().set_length(manifest.len() as u64);
        let mut out = ctx.output_writer()?;
        let (mut records, mut bytes, mut lines, mut binary, mut large) =
            (0u64, 0u64, 0u64, 0u64, 0u64);
        for entry in &manifest {
            ctx.progress().inc(1);
            if entry.size > p.max_file_bytes {
                large += 1;
                continue;
            }
            let hash = Hash::from_hex(&entry.hash)
                .with_context(|| format!("manifest entry {} has a bad hash", entry.path))?;
            let Ok(text) = String::from_utf8(ctx.read_blob(&hash)?) else {
                binary += 1;
                continue;
            };
            let record = Record {
                path: entry.path.clone(),
                hash: entry.hash.clone(),
                lines: text.lines().count() as u64,
                bytes: text.len() as u64,
                text,
            };
            records += 1;
            bytes += record.bytes;
            lines += record.lines;
            serde_json::to_writer(&mut out, &record)?;
            out.write_all(b"\n")?;
        }
        ctx.finish_output("corpus", "application/x-ndjson", out)?;
        ctx.metric("records", records as f64);
        ctx.metric("bytes", bytes as f64);
        ctx.metric("lines", lines as f64);
        ctx.metric("dropped.binary", binary as f64);
        ctx.metric("dropped.too_large", large as f64);
        Ok(())
    }
}
