//! `collect`: merged pull requests from a source into a `prs` shard of `PrRecord`s.
//!
//! Sources share one output schema:
//! - `git`: a local clone (`git.rs`), pinned by the commit it mines from;
//! - `github`: the REST API (`github.rs`), every response recorded as an observation.

pub mod git;
pub mod github;

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
    Github,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Params {
    pub source: Source,
    #[serde(default)]
    pub git: Option<git::GitParams>,
    #[serde(default)]
    pub github: Option<github::GithubParams>,
}

const GIT_INPUT: &str = "source:git";

impl Stage for Collect {
    fn name(&self) -> &'static str {
        "collect"
    }

    fn version(&self) -> u32 {
        2
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
            Source::Github => match &p.github {
                None => {
                    return Err(ParamError::new(
                        "github",
                        "source = \"github\" needs a `[stage.github]` table (repos or search)",
                    ))
                }
                Some(g) => g
                    .validate()
                    .map_err(|e| ParamError::new("github", format!("{e:#}")))?,
            },
            Source::Git => {}
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
            // Every response is recorded as an observation; `epoch` names a fresh crawl.
            Source::Github => Ok(Vec::new()),
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
                ctx.metric("shallow_boundary", stats.shallow_boundary as f64);
            }
            Source::Github => {
                let g = p.github.expect("checked");
                let stats = github::collect(ctx, &g, &mut push)?;
                ctx.metric("records", stats.prs as f64);
                ctx.metric("http.requests", stats.requests as f64);
                ctx.metric("http.from_recordings", stats.from_cache as f64);
                ctx.metric("http.retries", stats.retries as f64);
                ctx.metric("http.rate_limit_waits", stats.rate_limit_waits as f64);
                ctx.metric("http.not_modified", stats.not_modified as f64);
                ctx.metric("skipped", stats.skipped.len() as f64);
                ctx.metric("commits_unavailable", stats.commits_unavailable as f64);
                for (url, reason) in &stats.skipped {
                    tracing::warn!("skipped {url}: {reason}");
                }
            }
        }
        shard.finish(ctx, "prs")?;
        Ok(())
    }
}
