//! `reconstruct`: render each pull request as a training sample, in the general XML-like
//! format (D_ctx_gen, [`general`]) or the Python Markdown + search/replace format (D_ctx_py,
//! [`python`]), optionally enhanced by an LLM ([`llm`]).
//!
//! ```toml
//! [[stage]]
//! id = "samples"
//! uses = "reconstruct"
//! inputs = { prs = "filtered.prs" }
//! format = "python"             # or "general"; default "python"
//! max_grow = 20                 # lines a non-unique search block may grow each side
//! # Optional: with no [llm] table samples carry no summary and the original messages.
//! llm = { base_url = "http://127.0.0.1:8000/v1", model = "Qwen2.5-72B-Instruct" }
//! # llm keys: temperature (0.0), summary_max_tokens (512), message_max_tokens (256),
//! # patch_chars (2000), summary_patch_chars (8000), timeout_secs (120), max_retries (2),
//! # api_key_env (unset: no Authorization header).
//! ```
//!
//! Input `prs` is a shard of [`PrRecord`]s; output `samples` a shard of [`Sample`]s with the
//! rendered text in `text`. Records stream through one at a time.
//!
//! The snapshot is the record's: `relevant_files` hold the files at `snapshot_sha` (the parent
//! of the PR's first commit, or the base), and the Python renderer replays every commit's
//! hunks on top of them. A PR whose patches cannot be turned into edits (a patch that does not
//! apply to the snapshot, a malformed patch, a change to a file the snapshot lacks, a text
//! change without a patch, a search block not unique within `max_grow` lines) is dropped from
//! the Python subset and counted under `render_failures.<reason>`: a sample whose edits do not
//! apply to the files it shows would teach wrong edits. The general format shows patches as
//! they are and never drops a PR.
//!
//! With `llm` set, each rendered PR gets a summary request and each rendered commit a rewrite
//! request, made (or answered from the ledger) before the text is put together; Python-format
//! PRs that fail to render make no requests. A failed request leaves the summary out and keeps
//! the original message (`llm.failures`), and never drops the sample.
//!
//! Metrics: `records`, `samples`, `bytes` (of rendered text), `dropped`,
//! `render_failures.<reason>` (every reason listed, zeros too), `edits`, `search_blocks_grown`,
//! `search_grown_lines`, `hunks_relocated`, `creates`, `deletes`, `renames`, `llm.requests`,
//! `llm.recorded` (answered from recorded observations), `llm.failures`, `summaries`,
//! `refined_messages`.

pub mod general;
pub mod llm;
pub mod patch;
pub mod python;

use crate::record::{PrRecord, Sample, SampleCommit};
use crate::shard::{self, ShardWriter};
use ledger::config::{parse_params, ParamError};
use ledger::plan::{Plan, PlanContext};
use ledger::stage::{InputSpec, Stage, StageContext};
use serde::{Deserialize, Serialize};

pub struct Reconstruct;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    General,
    Python,
}

impl Format {
    pub fn as_str(self) -> &'static str {
        match self {
            Format::General => "general",
            Format::Python => "python",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Params {
    #[serde(default = "default_format")]
    pub format: Format,
    /// How many lines a non-unique search block may grow on each side (recipe: 20).
    #[serde(default = "default_max_grow")]
    pub max_grow: usize,
    #[serde(default)]
    pub llm: Option<llm::LlmParams>,
}

fn default_format() -> Format {
    Format::Python
}

fn default_max_grow() -> usize {
    20
}

/// Largest `max_grow` accepted: a bigger block is no longer an edit.
const MAX_GROW_LIMIT: usize = 1000;

#[derive(Default)]
struct Counts {
    records: u64,
    samples: u64,
    bytes: u64,
    failures: Vec<(&'static str, u64)>,
    plan: python::PlanStats,
    llm_requests: u64,
    llm_recorded: u64,
    llm_failures: u64,
    summaries: u64,
    refined: u64,
}

impl Counts {
    fn new() -> Counts {
        Counts {
            failures: python::RenderError::REASONS
                .iter()
                .map(|r| (*r, 0))
                .collect(),
            ..Default::default()
        }
    }

    fn fail(&mut self, reason: &'static str) {
        match self.failures.iter_mut().find(|(r, _)| *r == reason) {
            Some((_, n)) => *n += 1,
            None => self.failures.push((reason, 1)),
        }
    }

    fn add_plan(&mut self, s: &python::PlanStats) {
        let p = &mut self.plan;
        p.edits += s.edits;
        p.grown += s.grown;
        p.grown_lines += s.grown_lines;
        p.relocated += s.relocated;
        p.creates += s.creates;
        p.deletes += s.deletes;
        p.renames += s.renames;
    }

    fn report(&self, ctx: &mut StageContext) {
        ctx.metric("records", self.records as f64);
        ctx.metric("samples", self.samples as f64);
        ctx.metric("bytes", self.bytes as f64);
        let dropped: u64 = self.failures.iter().map(|(_, n)| n).sum();
        ctx.metric("dropped", dropped as f64);
        for (reason, n) in &self.failures {
            ctx.metric(&format!("render_failures.{reason}"), *n as f64);
        }
        let p = &self.plan;
        ctx.metric("edits", p.edits as f64);
        ctx.metric("search_blocks_grown", p.grown as f64);
        ctx.metric("search_grown_lines", p.grown_lines as f64);
        ctx.metric("hunks_relocated", p.relocated as f64);
        ctx.metric("creates", p.creates as f64);
        ctx.metric("deletes", p.deletes as f64);
        ctx.metric("renames", p.renames as f64);
        ctx.metric("llm.requests", self.llm_requests as f64);
        ctx.metric("llm.recorded", self.llm_recorded as f64);
        ctx.metric("llm.failures", self.llm_failures as f64);
        ctx.metric("summaries", self.summaries as f64);
        ctx.metric("refined_messages", self.refined as f64);
    }
}

/// Asks the LLM (or the ledger, when the request was recorded before); `None` when the
/// endpoint failed or gave an unusable answer. A ledger problem (a damaged recording, or a
/// replay asking for one that was never made) is an error, never a silent fallback.
fn ask(
    ctx: &mut StageContext,
    client: &llm::Client,
    request: &[u8],
    what: &str,
    counts: &mut Counts,
) -> anyhow::Result<Option<String>> {
    counts.llm_requests += 1;
    let mut performed = false;
    let answer = ctx.observe(llm::SOURCE, request, || {
        performed = true;
        client.send(request)
    });
    if answer.is_ok() && !performed {
        counts.llm_recorded += 1;
    }
    let answer = match answer {
        Err(e) if !performed => return Err(e.context(format!("llm {what}"))),
        other => other,
    };
    Ok(
        match answer
            .map_err(|e| format!("{e:#}"))
            .and_then(|a| llm::parse_reply(&a))
        {
            Ok(text) => Some(text),
            Err(why) => {
                counts.llm_failures += 1;
                if counts.llm_failures <= 10 {
                    tracing::warn!("llm {what} failed: {why}");
                }
                None
            }
        },
    )
}

impl Stage for Reconstruct {
    fn name(&self) -> &'static str {
        "reconstruct"
    }

    fn version(&self) -> u32 {
        2
    }

    fn description(&self) -> &'static str {
        "PR records → rendered samples (general XML-like or Python search/replace), optional LLM summary and commit messages"
    }

    fn inputs(&self) -> &'static [InputSpec] {
        &[InputSpec {
            name: "prs",
            required: true,
            description: "a shard of PR records (from `collect` / `filter`)",
        }]
    }

    fn outputs(&self) -> &'static [&'static str] {
        &["samples"]
    }

    fn check(&self, params: toml::Table) -> Result<serde_json::Value, ParamError> {
        let p: Params = parse_params(params)?;
        if p.max_grow > MAX_GROW_LIMIT {
            return Err(ParamError::new(
                "max_grow",
                format!("must be at most {MAX_GROW_LIMIT}"),
            ));
        }
        if let Some(l) = &p.llm {
            l.validate()
                .map_err(|(key, message)| ParamError::new(format!("llm.{key}"), message))?;
        }
        Ok(serde_json::to_value(p).expect("params serialize"))
    }

    /// One unit per input shard (each with the requests it sends to the endpoint).
    fn plan(&self, plan: &PlanContext) -> anyhow::Result<Plan> {
        Ok(Plan::per_part(
            plan,
            "prs",
            &[],
            &[("samples", shard::MEDIA_TYPE)],
        )?)
    }

    fn execute(&self, ctx: &mut StageContext) -> anyhow::Result<()> {
        let p: Params = ctx.params()?;
        let llm = p.llm.as_ref().map(|lp| (lp, llm::Client::new(lp)));
        let input = ctx.input("prs")?;
        let records = shard::read::<PrRecord>(ctx, &input, "input `prs`")?;
        let mut out = ShardWriter::new(ctx)?;
        let mut counts = Counts::new();
        for record in records {
            let record = record?;
            counts.records += 1;
            ctx.progress().inc(1);
            let id = format!("{}#{}", record.repo_name, record.number);

            let plan = match p.format {
                Format::General => None,
                Format::Python => match python::plan(&record, p.max_grow) {
                    Ok((ops, stats)) => {
                        counts.add_plan(&stats);
                        Some(ops)
                    }
                    Err(e) => {
                        counts.fail(e.reason());
                        tracing::debug!("{id}: dropped: {e}");
                        continue;
                    }
                },
            };

            // The commits the text shows: all of them, or (Python) those with operations.
            let shown: Vec<bool> = match &plan {
                Some(ops) if !record.commits.is_empty() => {
                    ops.iter().map(|o| !o.is_empty()).collect()
                }
                _ => vec![true; record.commits.len()],
            };
            let mut summary = None;
            let mut refined: Vec<Option<String>> = vec![None; record.commits.len()];
            if let Some((lp, client)) = &llm {
                let request = llm::summary_request(lp, &record);
                summary = ask(
                    ctx,
                    client,
                    &request,
                    &format!("summary of {id}"),
                    &mut counts,
                )?;
                for (i, c) in record.commits.iter().enumerate() {
                    if !shown[i] {
                        continue;
                    }
                    let request = llm::message_request(lp, &record, &c.message, &c.diffs);
                    let what = format!("message of {id} commit {}", c.sha);
                    refined[i] = ask(ctx, client, &request, &what, &mut counts)?;
                }
                counts.summaries += summary.is_some() as u64;
                counts.refined += refined.iter().filter(|r| r.is_some()).count() as u64;
            }

            let messages: Vec<&str> = record
                .commits
                .iter()
                .zip(&refined)
                .map(|(c, r)| r.as_deref().unwrap_or(&c.message))
                .collect();
            let text = match &plan {
                Some(ops) => {
                    let messages = if record.commits.is_empty() {
                        vec![""] // the unnamed commit of the net changes has no message
                    } else {
                        messages
                    };
                    python::render(
                        &record,
                        &python::Rendering {
                            summary: summary.as_deref(),
                            messages,
                            ops,
                        },
                    )
                }
                None => general::render(
                    &record,
                    &general::Rendering {
                        summary: summary.as_deref(),
                        messages,
                    },
                ),
            };

            counts.samples += 1;
            counts.bytes += text.len() as u64;
            let PrRecord {
                repo_name,
                repo_description,
                number,
                title,
                body,
                related_issue,
                relevant_files,
                commits,
                ..
            } = record;
            let sample = Sample {
                id,
                format: p.format.as_str().to_string(),
                repo_name,
                repo_description,
                number,
                title,
                body,
                pr_summary: summary,
                related_issue,
                relevant_files,
                commits: commits
                    .into_iter()
                    .zip(refined)
                    .map(|(c, refined_message)| SampleCommit {
                        sha: c.sha,
                        message: c.message,
                        refined_message,
                        diffs: c.diffs,
                    })
                    .collect(),
                text,
            };
            out.push(&sample)?;
        }
        out.finish(ctx, "samples")?;
        counts.report(ctx);
        Ok(())
    }
}
