//! `ingest`: bring local files into the ledger as artifacts and list them in a manifest.
//!
//! The files are external inputs: the runner hashes them before keying, so editing any file
//! makes a new action while an unchanged tree is a cache hit.

use anyhow::{bail, Context};
use ledger::config::{parse_params, ParamError};
use ledger::stage::{ExternalInput, ExternalSource, InputSpec, Stage, StageContext};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

pub struct Ingest;

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Params {
    /// The directory `paths` are relative to, itself relative to the config file's directory.
    /// Manifest paths are recorded relative to it.
    #[serde(default = "default_root")]
    pub root: String,
    /// Files, directories (walked recursively) or glob patterns, relative to `root`.
    pub paths: Vec<String>,
    /// Glob patterns (matched against the relative path) to leave out.
    #[serde(default)]
    pub exclude: Vec<String>,
    /// Refuse to ingest more files than this (a guard against a mistyped pattern).
    #[serde(default = "default_max_files")]
    pub max_files: usize,
}

fn default_root() -> String {
    ".".into()
}

fn default_max_files() -> usize {
    100_000
}

/// One line of the `files` manifest.
#[derive(Debug, Serialize, Deserialize)]
pub struct ManifestEntry {
    pub path: String,
    pub hash: String,
    pub size: u64,
}

const PREFIX: &str = "file:";

impl Stage for Ingest {
    fn name(&self) -> &'static str {
        "ingest"
    }

    fn version(&self) -> u32 {
        1
    }

    fn description(&self) -> &'static str {
        "local files → artifacts, listed in a JSON manifest"
    }

    fn inputs(&self) -> &'static [InputSpec] {
        &[]
    }

    fn outputs(&self) -> &'static [&'static str] {
        &["files"]
    }

    fn check(&self, params: toml::Table) -> Result<serde_json::Value, ParamError> {
        let p: Params = parse_params(params)?;
        if p.paths.is_empty() {
            return Err(ParamError::new("paths", "give at least one path"));
        }
        for pattern in p.paths.iter().chain(&p.exclude) {
            glob::Pattern::new(pattern)
                .map_err(|e| ParamError::new("paths", format!("bad pattern `{pattern}`: {e}")))?;
        }
        Ok(serde_json::to_value(p).expect("params serialize"))
    }

    fn external_inputs(
        &self,
        config: &serde_json::Value,
        base_dir: &Path,
    ) -> anyhow::Result<Vec<ExternalInput>> {
        let p: Params = serde_json::from_value(config.clone())?;
        let base_dir = &base_dir.join(&p.root);
        if !base_dir.is_dir() {
            bail!(
                "root `{}` is not a directory ({})",
                p.root,
                base_dir.display()
            );
        }
        let excludes: Vec<glob::Pattern> = p
            .exclude
            .iter()
            .map(|e| glob::Pattern::new(e))
            .collect::<Result<_, _>>()?;
        let mut files = Vec::new();
        for pattern in &p.paths {
            let matched = expand(base_dir, pattern)?;
            if matched.is_empty() {
                bail!(
                    "`{pattern}` matches no file (relative to {})",
                    base_dir.display()
                );
            }
            files.extend(matched);
        }
        files.sort();
        files.dedup();
        files.retain(|rel| !excludes.iter().any(|e| e.matches(rel)));
        if files.len() > p.max_files {
            bail!(
                "{} files match, more than max_files = {}",
                files.len(),
                p.max_files
            );
        }
        Ok(files
            .into_iter()
            .map(|rel| ExternalInput {
                source: ExternalSource::File(base_dir.join(&rel)),
                name: format!("{PREFIX}{rel}"),
            })
            .collect())
    }

    fn execute(&self, ctx: &mut StageContext) -> anyhow::Result<()> {
        let mut manifest = Vec::new();
        let mut bytes = 0;
        for (name, hash) in ctx.inputs().to_vec() {
            let Some(path) = name.strip_prefix(PREFIX) else {
                continue;
            };
            let size = ctx.blob_size(&hash)?;
            bytes += size;
            manifest.push(ManifestEntry {
                path: path.to_string(),
                hash: hash.to_hex(),
                size,
            });
        }
        ctx.metric("files", manifest.len() as f64);
        ctx.metric("bytes", bytes as f64);
        let json = serde_json::to_vec_pretty(&manifest)?;
        ctx.write_output("files", "application/json", &json)?;
        Ok(())
    }
}

/// Relative paths (with `/`) of the regular files `pattern` names under `base`.
fn expand(base: &Path, pattern: &str) -> anyhow::Result<Vec<String>> {
    let full = base.join(pattern);
    let mut out = Vec::new();
    if full.is_dir() {
        walk(&full, &mut out)?;
    } else {
        let text = full.to_str().context("paths must be UTF-8")?;
        for entry in glob::glob(text)? {
            let path = entry?;
            if path.is_dir() {
                walk(&path, &mut out)?;
            } else if path.is_file() {
                out.push(path);
            }
        }
    }
    out.into_iter()
        .map(|p| {
            let rel = p.strip_prefix(base).unwrap_or(&p);
            rel.to_str()
                .map(|s| s.replace('\\', "/"))
                .with_context(|| format!("{}: path is not UTF-8", p.display()))
        })
        .collect()
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> anyhow::Result<()> {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .collect::<Result<_, _>>()?;
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let path = e.path();
        let kind = e.file_type()?;
        if kind.is_dir() {
            walk(&path, out)?;
        } else if kind.is_file() {
            out.push(path);
        }
    }
    Ok(())
}
