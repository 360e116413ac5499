//! `collect`: merged pull requests from a source into a `prs` shard of `PrRecord`s.
//!
//! Sources share one output schema:
//! - `git`: a local clone (`git.rs`), pinned by the commit it mines from;
//! - `github`: the REST API (`github.rs`), every response recorded as an observation.

pub mod git;

use crate::record::PrRecord;
use crate::shard::ShardWriter;
use anyhow::Context;
use ledger::config::{parse_params, ParamError};
use ledger::stage::{ExternalInput, ExternalSource, InputSpec, Stage, StageContext};
use serde::{Deserialize, Serialize};
use std::path::Path;

pub struct Collect;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    Git,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Params {
    pub source: Source,
    #[serde(default)]
    pub git: Option<git::GitParams>,
}

const GIT_INPUT: &str = "source:git";

impl Stage for Collect {
    fn name(&self) -> &'static str {
        "collect"
    }

    fn version(&self) -> u32 {
        1
    }

    fn description(&self) -> &'static str {
        "merged pull requests (local git clone or GitHub REST) → `prs` shard"
    }

    fn inputs(&self) -> &'static [InputSpec] {
        &[]
    }

    fn outputs(&self) -> &'static [&'static str] {
        &["prs"]
    }

    fn check(&self, params: toml::Table) -> Result<serde_json::Value, ParamError> {
        let p: Params = parse_params(params)?;
        match p.source {
            Source::Git if p.git.is_none() => {
                return Err(ParamError::new(
                    "git",
                    "source = \"git\" needs a `git = { repo = \"<path>\" }` table",
                ))
            }
            _ => {}
        }
        Ok(serde_json::to_value(p).expect("params serialize"))
    }

    fn external_inputs(
        &self,
        config: &serde_json::Value,
        base_dir: &Path,
    ) -> anyhow::Result<Vec<ExternalInput>> {
        let p: Params = serde_json::from_value(config.clone())?;
        match p.source {
            Source::Git => {
                let g = p.git.expect("checked");
                let fp = git::fingerprint(base_dir, &g)?;
                Ok(vec![ExternalInput {
                    name: GIT_INPUT.into(),
                    source: ExternalSource::Snapshot {
                        origin: format!("git {}@{}", fp.repo_name, fp.commit),
                        bytes: serde_json::to_vec_pretty(&fp)?,
                        media_type: "application/json".into(),
                    },
                }])
            }
        }
    }

    fn execute(&self, ctx: &mut StageContext) -> anyhow::Result<()> {
        let p: Params = ctx.params()?;
        let mut shard = ShardWriter::new(ctx)?;
        let mut push = |r: PrRecord| shard.push(&r);
        match p.source {
            Source::Git => {
                let g = p.git.expect("checked");
                let fp: git::Fingerprint = serde_json::from_slice(&ctx.read_input(GIT_INPUT)?)
                    .context("the git fingerprint input is not valid")?;
                let repo = git::open(ctx.workdir(), &g)?;
                let stats = git::collect(&repo, &g, &fp, ctx.progress(), &mut push)?;
                ctx.metric("records", stats.records as f64);
                ctx.metric("commits", stats.commits as f64);
                ctx.metric("merge_prs", stats.merge_prs as f64);
                ctx.metric("squash_prs", stats.squash_prs as f64);
            }
        }
        shard.finish(ctx, "prs")?;
        Ok(())
    }
}
