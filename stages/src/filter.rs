//! `filter`: the recipe's collection rules over a `prs` shard. Each rule is a parameter whose
//! default is the paper's value; every dropped record is counted under the first rule it fails
//! (`dropped.<reason>` metrics), in this order: not merged, a commit whose changes the source
//! no longer has (its sample would show edits that are not all there), bot author,
//! decontamination, duplicate (repo, PR), Python-subset file rules, linked-issue comment cap.
//!
//! The 32,000-token cap is applied by `tokenize`, after rendering, where tokens are counted.

use crate::record::PrRecord;
use crate::shard::{self, ShardWriter};
use anyhow::Context;
use ledger::config::{parse_params, ParamError};
use ledger::plan::{Plan, PlanContext, Source, Unit, UnitSpec};
use ledger::stage::{InputSpec, Stage, StageContext};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashSet};

pub struct Filter;

/// The 12 SWE-Bench Verified repositories, dropped by default.
const SWEBENCH_VERIFIED: &str = include_str!("../../configs/swebench_verified_repos.txt");

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Subset {
    /// D_ctx_py: Python sources and docs only, 1–5 Python files, <= 20 files.
    Python,
    /// D_ctx_gen: any language.
    General,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Params {
    #[serde(default = "python")]
    pub subset: Subset,
    #[serde(default = "yes")]
    pub merged_only: bool,
    /// Drop PRs whose author type is "Bot" or whose login ends in "[bot]".
    #[serde(default = "yes")]
    pub drop_bots: bool,
    #[serde(default = "yes")]
    pub dedupe: bool,
    #[serde(default = "python_extensions")]
    pub python_extensions: Vec<String>,
    #[serde(default = "doc_extensions")]
    pub doc_extensions: Vec<String>,
    #[serde(default = "one")]
    pub min_python_files: usize,
    #[serde(default = "five")]
    pub max_python_files: usize,
    #[serde(default = "twenty")]
    pub max_files: usize,
    /// Drop PRs whose linked issue has more comments than this.
    #[serde(default = "twenty")]
    pub max_issue_comments: usize,
    /// `owner/name` repositories to drop (decontamination); SWE-Bench Verified by default.
    #[serde(default = "swebench_verified")]
    pub exclude_repos: Vec<String>,
}

fn python() -> Subset {
    Subset::Python
}
fn yes() -> bool {
    true
}
fn one() -> usize {
    1
}
fn five() -> usize {
    5
}
fn twenty() -> usize {
    20
}
fn python_extensions() -> Vec<String> {
    [".py", ".pyi", ".pyx", ".pyw"].map(String::from).to_vec()
}
fn doc_extensions() -> Vec<String> {
    [".md", ".markdown", ".rst", ".txt"]
        .map(String::from)
        .to_vec()
}
fn swebench_verified() -> Vec<String> {
    SWEBENCH_VERIFIED
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(String::from)
        .collect()
}

pub const REASONS: [&str; 9] = [
    "not_merged",
    "commit_unavailable",
    "bot_author",
    "decontaminated",
    "duplicate",
    "non_python_files",
    "python_file_count",
    "too_many_files",
    "issue_comments",
];

/// Applies the rules in order; `seen` carries the dedupe state across records.
pub fn judge(
    p: &Params,
    r: &PrRecord,
    seen: &mut HashSet<(String, u64)>,
    excluded: &HashSet<String>,
) -> Option<&'static str> {
    if let Some(reason) = before_dedupe(p, r, excluded) {
        return Some(reason);
    }
    if p.dedupe && !seen.insert(dedupe_key(r)) {
        return Some("duplicate");
    }
    after_dedupe(p, r)
}

fn dedupe_key(r: &PrRecord) -> (String, u64) {
    (r.repo_name.to_ascii_lowercase(), r.number)
}

/// The rules checked before the dedupe: a record they drop is not counted as a duplicate.
fn before_dedupe(p: &Params, r: &PrRecord, excluded: &HashSet<String>) -> Option<&'static str> {
    if p.merged_only && !r.merged {
        return Some("not_merged");
    }
    if r.commits.iter().any(|c| c.diffs_unavailable) {
        return Some("commit_unavailable");
    }
    if p.drop_bots && (r.author_type.eq_ignore_ascii_case("bot") || r.author.ends_with("[bot]")) {
        return Some("bot_author");
    }
    if excluded.contains(&r.repo_name.to_ascii_lowercase()) {
        return Some("decontaminated");
    }
    None
}

fn after_dedupe(p: &Params, r: &PrRecord) -> Option<&'static str> {
    if p.subset == Subset::Python {
        let has_ext = |path: &str, exts: &[String]| {
            exts.iter()
                .any(|e| path.to_ascii_lowercase().ends_with(e.as_str()))
        };
        if r.files.iter().any(|f| {
            !has_ext(&f.path, &p.python_extensions) && !has_ext(&f.path, &p.doc_extensions)
        }) {
            return Some("non_python_files");
        }
        let py = r
            .files
            .iter()
            .filter(|f| has_ext(&f.path, &p.python_extensions))
            .count();
        if py < p.min_python_files || py > p.max_python_files {
            return Some("python_file_count");
        }
        if r.files.len() > p.max_files {
            return Some("too_many_files");
        }
    }
    if r.related_issue
        .as_ref()
        .is_some_and(|i| i.comments.len() > p.max_issue_comments)
    {
        return Some("issue_comments");
    }
    None
}

/// The unit that finds duplicates across every shard; shard units are named `part.<id>`.
const DEDUPE_UNIT: &str = "dedupe";

fn excluded(p: &Params) -> HashSet<String> {
    p.exclude_repos
        .iter()
        .map(|r| r.to_ascii_lowercase())
        .collect()
}

impl Stage for Filter {
    fn name(&self) -> &'static str {
        "filter"
    }

    fn version(&self) -> u32 {
        3
    }

    fn description(&self) -> &'static str {
        "the recipe's PR rules (merged, bots, decontamination, dedupe, Python subset, issue size)"
    }

    fn inputs(&self) -> &'static [InputSpec] {
        &[InputSpec {
            name: "prs",
            required: true,
            description: "a `prs` shard from `collect`",
        }]
    }

    fn outputs(&self) -> &'static [&'static str] {
        &["prs"]
    }

    fn check(&self, params: toml::Table) -> Result<serde_json::Value, ParamError> {
        let p: Params = parse_params(params)?;
        if p.min_python_files > p.max_python_files {
            return Err(ParamError::new(
                "min_python_files",
                "must not exceed max_python_files",
            ));
        }
        Ok(serde_json::to_value(p).expect("params serialize"))
    }

    /// One unit per input shard; with `dedupe`, a first unit finds, across every shard, the
    /// records that repeat an earlier (repository, PR), and hands each shard unit its own list
    /// (so a shard whose list did not change is not filtered again).
    fn plan(&self, plan: &PlanContext) -> anyhow::Result<Plan> {
        let p: Params = plan.params()?;
        let mut out = Plan::per_part(plan, "prs", &[], &[("prs", shard::MEDIA_TYPE)])?;
        if p.dedupe {
            let parts = plan.parts(&plan.input("prs").expect("a required input"))?;
            let inputs = out
                .units
                .iter()
                .zip(&parts)
                .map(|(u, h)| (u.unit.id.clone(), Source::Blob(*h)))
                .collect();
            for unit in &mut out.units {
                let id = unit.unit.id.clone();
                unit.inputs.push((
                    "duplicates".into(),
                    Source::Unit {
                        unit: DEDUPE_UNIT.into(),
                        output: id,
                    },
                ));
            }
            out.units.insert(
                0,
                UnitSpec {
                    unit: Unit {
                        id: DEDUPE_UNIT.into(),
                        params: serde_json::Value::Null,
                    },
                    inputs,
                },
            );
        }
        Ok(out)
    }

    fn execute(&self, ctx: &mut StageContext) -> anyhow::Result<()> {
        let p: Params = ctx.params()?;
        let excluded = excluded(&p);
        let unit = ctx.unit().map(|u| u.id.clone()).unwrap_or_default();
        if unit == DEDUPE_UNIT {
            // Each shard's duplicates, as the record numbers (0-based) to drop, in order.
            let mut seen = HashSet::new();
            let shards: Vec<(String, ledger::Hash)> = ctx.inputs().to_vec();
            for (id, hash) in shards {
                let mut drop = Vec::new();
                let what = format!("input `prs`, shard {id}");
                for (i, record) in shard::read::<PrRecord>(ctx, &hash, &what)?.enumerate() {
                    let record = record?;
                    if before_dedupe(&p, &record, &excluded).is_none()
                        && !seen.insert(dedupe_key(&record))
                    {
                        drop.push(i as u64);
                    }
                }
                ctx.write_output(&id, "application/json", &serde_json::to_vec(&drop)?)?;
            }
            return Ok(());
        }
        let duplicates: HashSet<u64> = match ctx.input("duplicates") {
            Ok(h) => serde_json::from_slice(&ctx.read_blob(&h)?)
                .context("the duplicates list is not valid")?,
            Err(_) => HashSet::new(),
        };
        let mut dropped: BTreeMap<&str, u64> = REASONS.iter().map(|r| (*r, 0)).collect();
        let mut out = ShardWriter::new(ctx)?;
        let mut total = 0u64;
        for (i, record) in
            shard::read::<PrRecord>(ctx, &ctx.input("prs")?, "input `prs`")?.enumerate()
        {
            let record = record?;
            total += 1;
            let reason = before_dedupe(&p, &record, &excluded)
                .or_else(|| duplicates.contains(&(i as u64)).then_some("duplicate"))
                .or_else(|| after_dedupe(&p, &record));
            match reason {
                Some(reason) => *dropped.get_mut(reason).expect("known reason") += 1,
                None => out.push(&record)?,
            }
        }
        let kept = out.records();
        out.finish(ctx, "prs")?;
        ctx.metric("records.in", total as f64);
        ctx.metric("records.kept", kept as f64);
        for (reason, n) in dropped {
            ctx.metric(&format!("dropped.{reason}"), n as f64);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{FileChange, Issue, PrRecord};

    fn params() -> Params {
        serde_json::from_value(serde_json::json!({})).unwrap()
    }

    fn pr(repo: &str, n: u64, files: &[&str]) -> PrRecord {
        PrRecord {
            repo_name: repo.into(),
            number: n,
            merged: true,
            author: "alice".into(),
            author_type: "User".into(),
            files: files
                .iter()
                .map(|f| FileChange {
                    path: f.to_string(),
                    status: "modified".into(),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn defaults_are_the_papers() {
        let p = params();
        assert_eq!(
            (
                p.min_python_files,
                p.max_python_files,
                p.max_files,
                p.max_issue_comments
            ),
            (1, 5, 20, 20)
        );
        assert_eq!(p.exclude_repos.len(), 12);
        assert!(p.exclude_repos.contains(&"django/django".to_string()));
    }

    #[test]
    fn each_rule_names_its_reason() {
        let p = params();
        let ex: HashSet<String> = p
            .exclude_repos
            .iter()
            .map(|r| r.to_ascii_lowercase())
            .collect();
        let mut seen = HashSet::new();
        let mut judge = |r: &PrRecord| judge(&p, r, &mut seen, &ex);
        assert_eq!(judge(&pr("a/b", 1, &["x.py", "README.md"])), None);
        assert_eq!(judge(&pr("a/b", 1, &["x.py"])), Some("duplicate"));
        let mut unmerged = pr("a/b", 2, &["x.py"]);
        unmerged.merged = false;
        assert_eq!(judge(&unmerged), Some("not_merged"));
        let mut gone = pr("a/b", 20, &["x.py"]);
        gone.commits = vec![crate::record::Commit {
            diffs_unavailable: true,
            ..Default::default()
        }];
        assert_eq!(judge(&gone), Some("commit_unavailable"));
        let mut bot = pr("a/b", 3, &["x.py"]);
        bot.author = "dependabot[bot]".into();
        assert_eq!(judge(&bot), Some("bot_author"));
        let mut bot2 = pr("a/b", 4, &["x.py"]);
        bot2.author_type = "Bot".into();
        assert_eq!(judge(&bot2), Some("bot_author"));
        assert_eq!(
            judge(&pr("Django/Django", 5, &["x.py"])),
            Some("decontaminated")
        );
        assert_eq!(
            judge(&pr("a/b", 6, &["x.py", "y.rs"])),
            Some("non_python_files")
        );
        assert_eq!(
            judge(&pr("a/b", 7, &["README.md"])),
            Some("python_file_count")
        );
        let six: Vec<String> = (0..6).map(|i| format!("m{i}.py")).collect();
        let six: Vec<&str> = six.iter().map(String::as_str).collect();
        assert_eq!(judge(&pr("a/b", 8, &six)), Some("python_file_count"));
        let many: Vec<String> = (0..21)
            .map(|i| {
                if i < 2 {
                    format!("m{i}.py")
                } else {
                    format!("d{i}.md")
                }
            })
            .collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        assert_eq!(judge(&pr("a/b", 9, &many)), Some("too_many_files"));
        let mut chatty = pr("a/b", 10, &["x.py"]);
        chatty.related_issue = Some(Issue {
            comments: vec![Default::default(); 21],
            ..Default::default()
        });
        assert_eq!(judge(&chatty), Some("issue_comments"));
        chatty.number = 11;
        chatty.related_issue.as_mut().unwrap().comments.truncate(20);
        assert_eq!(judge(&chatty), None);
    }
}
