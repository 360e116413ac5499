//! `collect`: merged pull requests from a source into a `prs` shard of `PrRecord`s.
//!
//! Sources share one output schema:
//! - `git`: a local clone (`git.rs`), pinned by the commit it mines from;
//! - `github`: the REST API (`github.rs`), every response recorded as an observation.

pub mod git;
pub mod github;

use crate::record::PrRecord;
use crate::shard::ShardSet;
use anyhow::Context;
use ledger::config::{parse_params, ParamError};
use ledger::plan::{Compose, Plan, PlanContext, Source as PlanSource, Unit, UnitSpec};
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
    /// Records per output shard: `prs` is the manifest of the shards, and the D_ctx stages
    /// downstream work one unit per shard.
    #[serde(default = "default_shard_records")]
    pub shard_records: u64,
}

fn default_shard_records() -> u64 {
    1000
}

/// The unit of one repository (`repo.<owner/name>`), or of the whole crawl.
#[derive(Debug, Serialize, Deserialize)]
struct CollectUnit {
    /// The one repository the unit crawls; `None`: every repository the config selects.
    repo: Option<String>,
}

const GIT_INPUT: &str = "source:git";

impl Stage for Collect {
    fn name(&self) -> &'static str {
        "collect"
    }

    fn version(&self) -> u32 {
        3
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
        if p.shard_records == 0 {
            return Err(ParamError::new("shard_records", "must be at least 1"));
        }
        Ok(serde_json::to_value(p).expect("params serialize"))
    }

    /// One unit per repository the config names (a git clone, or each of `github.repos`);
    /// a GitHub crawl that selects repositories by search is one unit (the selection is itself
    /// recorded work). Each unit writes shards of `shard_records`; `prs` is their manifest.
    fn plan(&self, plan: &PlanContext) -> anyhow::Result<Plan> {
        let p: Params = plan.params()?;
        let units: Vec<(String, CollectUnit)> = match (&p.source, &p.github) {
            (Source::Github, Some(g)) if g.search.is_none() => g
                .repos
                .iter()
                .map(|r| {
                    (
                        format!("repo.{r}"),
                        CollectUnit {
                            repo: Some(r.clone()),
                        },
                    )
                })
                .collect(),
            (Source::Github, _) => vec![("crawl".into(), CollectUnit { repo: None })],
            (Source::Git, _) => vec![("git".into(), CollectUnit { repo: None })],
        };
        let inputs: Vec<(String, PlanSource)> = plan
            .inputs
            .iter()
            .map(|(n, h)| (n.clone(), PlanSource::Blob(*h)))
            .collect();
        Ok(Plan {
            outputs: vec![(
                "prs".into(),
                Compose::ManifestOfPrefix {
                    units: units.iter().map(|(id, _)| id.clone()).collect(),
                    prefix: "prs.".into(),
                    media_type: crate::shard::MEDIA_TYPE.into(),
                },
            )],
            units: units
                .into_iter()
                .map(|(id, u)| UnitSpec {
                    unit: Unit {
                        id,
                        params: serde_json::to_value(u).expect("a unit serializes"),
                    },
                    inputs: inputs.clone(),
                })
                .collect(),
        })
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
        let unit: CollectUnit = ctx.unit_params()?;
        let mut shards = ShardSet::new(ctx, "prs.", p.shard_records);
        let mut push = |r: PrRecord| shards.push(&r);
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
                let mut g = p.github.expect("checked");
                if let Some(repo) = unit.repo {
                    g.repos = vec![repo];
                }
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
        let (n, _) = shards.finish(ctx)?;
        ctx.metric("shards", n as f64);
        Ok(())
    }
}
