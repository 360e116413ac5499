//! `synthesize`: SWE-bench-style task instances from real Python projects (SWE-smith style).
//!
//! For each pinned PyPI sdist (an input artifact, SHA-256 checked): a repository image is
//! built on the base image (source unpacked in `/testbed`, put on Python's path, committed);
//! the project's own test suite runs; `mutate.py` lists single-token AST edits inside
//! function bodies; a seeded, kind-balanced choice of them is applied one at a time and the
//! suite reruns. A bug becomes an instance when at least one passing test now fails
//! (FAIL_TO_PASS) and at least one still passes (PASS_TO_PASS). The buggy tree is committed
//! with a fixed identity and date, so its commit (`base_commit`) depends on content only; the
//! gold patch is the reverse edit; the problem statement is built from the failing tests and
//! their output, without naming the edited line.
//!
//! Instances of the packages listed in `heldout` go to the `heldout` output, the rest to
//! `instances`: evaluation never sees a project that training saw. Every container answer is
//! an observation (see `swe`), so a replay needs no engine.
//!
//! Params: `packages` (each a pinned file — `name`, `version`, `filename`, `url`, `sha256` —
//! plus `source`, the directories bugs go into, and `tests`, the test paths to run),
//! `heldout`, `candidates_per_package` (16), `bugs_per_package` (4), `test_timeout_secs`
//! (300), `parallel` (2), `statement_chars` (3000), `image` (the base image spec).
//! Outputs: `instances`, `heldout` (SWE-bench JSONL), `image` (the base image manifest),
//! `report` (per package: tests, candidates, kept, reasons).

use super::{connect_engine, env_cache_dir, Recorder, Session};
use crate::pypi::PypiFile;
use anyhow::{bail, Context};
use env::container::shell_quote;
use env::grading::parsers::LogParser;
use env::grading::StatusMap;
use env::image::BaseImageSpec;
use env::instance::TaskInstance;
use env::repo_image::{ensure_repo_image, GIT_FIXED};
use ledger::config::{parse_params, ParamError};
use ledger::plan::{Compose, Plan, PlanContext, Source, Unit, UnitSpec};
use ledger::stage::{ExternalInput, ExternalSource, InputSpec, Stage, StageContext};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

pub const MUTATE_PY: &str = include_str!("mutate.py");
const WORKDIR: &str = "/testbed";
const MUTATE_AT: &str = "/tmp/davinci-mutate.py";

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PackageSpec {
    pub name: String,
    pub version: String,
    pub filename: String,
    pub url: String,
    pub sha256: String,
    /// Directories (or files) bugs are injected into, relative to the project root.
    pub source: Vec<String>,
    /// Test paths given to pytest.
    pub tests: Vec<String>,
}

impl PackageSpec {
    pub fn file(&self) -> PypiFile {
        PypiFile {
            name: self.name.clone(),
            version: self.version.clone(),
            filename: self.filename.clone(),
            url: self.url.clone(),
            sha256: self.sha256.clone(),
        }
    }
    fn input_name(&self) -> String {
        format!("sdist:{}", self.name)
    }
    pub fn test_cmd(&self) -> String {
        let paths: Vec<String> = self.tests.iter().map(|t| shell_quote(t)).collect();
        format!(
            "python3 -m pytest -rA -p no:cacheprovider {}",
            paths.join(" ")
        )
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Params {
    pub packages: Vec<PackageSpec>,
    #[serde(default)]
    pub heldout: Vec<String>,
    #[serde(default = "default_candidates")]
    pub candidates_per_package: usize,
    #[serde(default = "default_bugs")]
    pub bugs_per_package: usize,
    #[serde(default = "default_test_timeout")]
    pub test_timeout_secs: u64,
    /// Ignored since packages are units (the executor decides how many run at once); kept
    /// so configs that set it still load.
    #[serde(default = "default_parallel")]
    pub parallel: usize,
    #[serde(default = "default_statement_chars")]
    pub statement_chars: usize,
    #[serde(default)]
    pub image: BaseImageSpec,
}

fn default_candidates() -> usize {
    16
}
fn default_bugs() -> usize {
    4
}
fn default_test_timeout() -> u64 {
    300
}
fn default_parallel() -> usize {
    2
}
fn default_statement_chars() -> usize {
    3000
}

/// One candidate edit, as `mutate.py list` prints it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Site {
    pub file: String,
    pub start: u64,
    pub end: u64,
    pub old: String,
    pub new: String,
    pub kind: String,
    pub line: u64,
    pub function: String,
}

/// What the rollout needs to rebuild an instance's environment on any machine.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Environment {
    /// BLAKE3 of the sdist artifact (an ancestor of the instances).
    pub archive: String,
    pub package: String,
    pub base_image: BaseImageSpec,
    /// Applied and committed (fixed identity and date) on the source commit to reach
    /// `base_commit`.
    pub bug_patch: String,
    pub test_cmd: String,
}

#[derive(Default, Serialize, Deserialize)]
struct PackageReport {
    package: String,
    tests_passing: usize,
    tests_failing: usize,
    sites: usize,
    candidates: usize,
    kept: usize,
    rejected: BTreeMap<String, usize>,
}

pub struct Synthesize;

const INPUTS: [InputSpec; 0] = [];

impl Stage for Synthesize {
    fn name(&self) -> &'static str {
        "synthesize"
    }
    fn version(&self) -> u32 {
        // 2: test logs are read by the harness's pytest parser (XPASS is no status); the
        //    base image carries `patch` for the grading cascade.
        // 3: one unit per package (and the image, and a summary).
        3
    }
    fn description(&self) -> &'static str {
        "PyPI sdists → SWE-bench task instances with injected bugs (train / held-out by package)"
    }
    fn inputs(&self) -> &'static [InputSpec] {
        &INPUTS
    }
    fn outputs(&self) -> &'static [&'static str] {
        &["instances", "heldout", "image", "report"]
    }

    fn check(&self, params: toml::Table) -> Result<serde_json::Value, ParamError> {
        let p: Params = parse_params(params)?;
        if p.packages.is_empty() {
            return Err(ParamError::new("packages", "name at least one package"));
        }
        let mut names = BTreeSet::new();
        for (i, pkg) in p.packages.iter().enumerate() {
            if let Err((field, why)) = pkg.file().validate() {
                return Err(ParamError::new(format!("packages[{i}].{field}"), why));
            }
            if !names.insert(pkg.name.clone()) {
                return Err(ParamError::new(
                    format!("packages[{i}].name"),
                    format!("package `{}` is listed twice", pkg.name),
                ));
            }
            for (field, list) in [("source", &pkg.source), ("tests", &pkg.tests)] {
                if list.is_empty() {
                    return Err(ParamError::new(
                        format!("packages[{i}].{field}"),
                        "must name at least one path",
                    ));
                }
                if let Some(bad) = list
                    .iter()
                    .find(|p| p.starts_with('/') || p.split('/').any(|c| c == ".."))
                {
                    return Err(ParamError::new(
                        format!("packages[{i}].{field}"),
                        format!("`{bad}` must be a relative path inside the project"),
                    ));
                }
            }
        }
        for h in &p.heldout {
            if !names.contains(h) {
                return Err(ParamError::new(
                    "heldout",
                    format!("`{h}` is not one of the packages"),
                ));
            }
        }
        for (key, v) in [
            ("candidates_per_package", p.candidates_per_package),
            ("bugs_per_package", p.bugs_per_package),
            ("parallel", p.parallel),
            ("test_timeout_secs", p.test_timeout_secs as usize),
        ] {
            if v == 0 {
                return Err(ParamError::new(key, "must be at least 1"));
            }
        }
        Ok(serde_json::to_value(p).expect("params serialize"))
    }

    fn external_inputs(
        &self,
        config: &serde_json::Value,
        _base_dir: &Path,
    ) -> anyhow::Result<Vec<ExternalInput>> {
        let p: Params = serde_json::from_value(config.clone())?;
        p.packages
            .iter()
            .map(|pkg| {
                Ok(ExternalInput {
                    name: pkg.input_name(),
                    source: ExternalSource::File(crate::pypi::ensure(&pkg.file())?),
                })
            })
            .collect()
    }

    /// An `image` unit (the base image, recorded), one unit per package (its sdist, in a
    /// container of its own: test suite, mutations, reruns), and a `summary` that splits the
    /// instances into train and held out. Adding a package runs only its unit (and the summary).
    fn plan(&self, plan: &PlanContext) -> anyhow::Result<Plan> {
        let p: Params = plan.params()?;
        let mut units = vec![UnitSpec {
            unit: Unit {
                id: IMAGE_UNIT.into(),
                params: serde_json::Value::Null,
            },
            inputs: Vec::new(),
        }];
        let mut summary = Vec::new();
        for pkg in &p.packages {
            let id = package_unit(pkg);
            let sdist = plan
                .input(&pkg.input_name())
                .with_context(|| format!("input `{}`", pkg.input_name()))?;
            units.push(UnitSpec {
                unit: Unit {
                    id: id.clone(),
                    params: serde_json::to_value(pkg)?,
                },
                inputs: vec![
                    (pkg.input_name(), Source::Blob(sdist)),
                    (
                        "image".into(),
                        Source::Unit {
                            unit: IMAGE_UNIT.into(),
                            output: "image".into(),
                        },
                    ),
                ],
            });
            for output in ["instances", "report"] {
                summary.push((
                    format!("{output}/{}", pkg.name),
                    Source::Unit {
                        unit: id.clone(),
                        output: output.into(),
                    },
                ));
            }
        }
        units.push(UnitSpec {
            unit: Unit {
                id: SUMMARY_UNIT.into(),
                params: serde_json::Value::Null,
            },
            inputs: summary,
        });
        let from = |unit: &str, output: &str| Compose::Unit {
            unit: unit.into(),
            output: output.into(),
        };
        Ok(Plan {
            units,
            outputs: vec![
                ("image".into(), from(IMAGE_UNIT, "image")),
                ("instances".into(), from(SUMMARY_UNIT, "instances")),
                ("heldout".into(), from(SUMMARY_UNIT, "heldout")),
                ("report".into(), from(SUMMARY_UNIT, "report")),
            ],
        })
    }

    /// The image and the package units do not depend on the list of packages (each has its
    /// own in its parameters) nor on which are held out.
    fn unit_config(&self, config: &serde_json::Value, unit: &Unit) -> serde_json::Value {
        let mut config = config.clone();
        if unit.id != SUMMARY_UNIT {
            if let serde_json::Value::Object(map) = &mut config {
                map.insert("packages".into(), serde_json::json!([]));
                map.insert("heldout".into(), serde_json::json!([]));
            }
        }
        ledger::runner::unit_config(&config, unit)
    }

    /// The summary counts everything.
    fn combine_metrics(&self, units: &[Vec<(String, f64)>]) -> Vec<(String, f64)> {
        units.last().cloned().unwrap_or_default()
    }

    fn execute(&self, ctx: &mut StageContext) -> anyhow::Result<()> {
        let p: Params = ctx.params()?;
        let unit = ctx.unit().map(|u| u.id.clone()).unwrap_or_default();
        if unit == SUMMARY_UNIT {
            return summarize(ctx, &p);
        }
        let engine = if ctx.replaying() && !ctx.reexecuting() {
            None
        } else {
            Some(connect_engine()?)
        };
        let base = match &engine {
            Some(engine) => {
                Some(env::image::ensure_base_image(engine, &p.image, &env_cache_dir())?.0)
            }
            None => None,
        };
        if unit == IMAGE_UNIT {
            let spec_key = serde_json::to_vec(&p.image)?;
            let manifest = ctx.observe("image", &spec_key, || {
                Ok(base.as_ref().expect("an engine in a run").manifest_json())
            })?;
            ctx.write_output("image", "application/json", &manifest)?;
            return Ok(());
        }
        let pkg: PackageSpec = ctx.unit_params()?;
        let hash = ctx.input(&pkg.input_name())?;
        let bytes = ctx.read_blob(&hash)?;
        pkg.file()
            .check(&bytes)
            .with_context(|| format!("input `{}`", pkg.input_name()))?;
        let base_tag = base.as_ref().map(|b| b.tag.clone());
        let (instances, report) = synthesize_package(
            ctx.observer(),
            engine.as_ref(),
            base_tag.as_deref(),
            &p,
            &pkg,
            &(hash.to_hex(), bytes),
            ctx.seed(),
        )
        .with_context(|| format!("package {}", pkg.file().label()))?;
        ctx.write_output("instances", "application/x-ndjson", &jsonl(&instances)?)?;
        ctx.write_output("report", "application/json", &serde_json::to_vec(&report)?)?;
        Ok(())
    }
}

const IMAGE_UNIT: &str = "image";
const SUMMARY_UNIT: &str = "summary";

fn package_unit(pkg: &PackageSpec) -> String {
    format!("package.{}", pkg.name)
}

/// The summary unit: every package's instances, split into train and held out, and the
/// reports, in the config's package order.
fn summarize(ctx: &mut StageContext, p: &Params) -> anyhow::Result<()> {
    let (mut train, mut heldout, mut reports) = (Vec::new(), Vec::new(), Vec::new());
    for pkg in &p.packages {
        let text = String::from_utf8(ctx.read_input(&format!("instances/{}", pkg.name))?)?;
        let mut instances = Vec::new();
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            instances.push(env::instance::parse_instance(line)?);
        }
        let report: PackageReport =
            serde_json::from_slice(&ctx.read_input(&format!("report/{}", pkg.name))?)?;
        ctx.metric(&format!("kept.{}", pkg.name), instances.len() as f64);
        if p.heldout.contains(&pkg.name) {
            heldout.extend(instances);
        } else {
            train.extend(instances);
        }
        reports.push(report);
    }
    ctx.metric("instances", train.len() as f64);
    ctx.metric("heldout", heldout.len() as f64);
    ctx.metric(
        "candidates",
        reports.iter().map(|r| r.candidates).sum::<usize>() as f64,
    );
    if train.is_empty() && heldout.is_empty() {
        bail!("no bug produced both a FAIL_TO_PASS and a PASS_TO_PASS test; see the package reports (raise candidates_per_package)");
    }
    ctx.write_output("instances", "application/x-ndjson", &jsonl(&train)?)?;
    ctx.write_output("heldout", "application/x-ndjson", &jsonl(&heldout)?)?;
    ctx.write_output(
        "report",
        "application/json",
        &serde_json::to_vec_pretty(&reports)?,
    )?;
    Ok(())
}

pub fn jsonl<T: Serialize>(items: &[T]) -> anyhow::Result<Vec<u8>> {
    let mut out = Vec::new();
    for i in items {
        serde_json::to_writer(&mut out, i)?;
        out.push(b'\n');
    }
    Ok(out)
}

/// Tests that passed, by the SWE-bench rules (XFAIL passes).
fn passing(statuses: &StatusMap) -> BTreeSet<String> {
    statuses
        .iter()
        .filter(|(name, e)| e.status.is_pass() && name.contains("::"))
        .map(|(n, _)| n.clone())
        .collect()
}

/// A pytest run's statuses, read by the harness's pytest parser.
fn pytest_statuses(log: &str) -> anyhow::Result<StatusMap> {
    Ok(LogParser::Pytest.parse(log)?)
}

/// Kind-balanced, seeded order: each kind shuffled, then taken round-robin by kind name.
pub fn choose_candidates(sites: Vec<Site>, n: usize, seed: u64, label: &str) -> Vec<Site> {
    let mut by_kind: BTreeMap<String, Vec<Site>> = BTreeMap::new();
    for s in sites {
        by_kind.entry(s.kind.clone()).or_default().push(s);
    }
    for (kind, v) in by_kind.iter_mut() {
        model::rng::Rng::for_label(seed, &format!("{label}/{kind}")).shuffle(v);
        v.reverse();
    }
    let mut out = Vec::new();
    while out.len() < n && by_kind.values().any(|v| !v.is_empty()) {
        for v in by_kind.values_mut() {
            if let Some(s) = v.pop() {
                if out.len() < n {
                    out.push(s);
                }
            }
        }
    }
    out
}

fn synthesize_package(
    rec: &Recorder,
    engine: Option<&env::Engine>,
    base_tag: Option<&str>,
    p: &Params,
    pkg: &PackageSpec,
    (archive_hash, archive): &(String, Vec<u8>),
    seed: u64,
) -> anyhow::Result<(Vec<TaskInstance>, PackageReport)> {
    // Everything that shapes a container's answers is in the session label.
    let settings = serde_json::to_vec(&serde_json::json!({
        "package": pkg,
        "image": p.image,
        "test_timeout_secs": p.test_timeout_secs,
        "mutate": MUTATE_PY,
    }))?;
    let label = format!(
        "synthesize/{}=={}/{}",
        pkg.name,
        pkg.version,
        &blake3::hash(&settings).to_hex()[..16]
    );
    let container = match (engine, base_tag) {
        (Some(engine), Some(base)) => {
            let image = ensure_repo_image(engine, base, &pkg.name, archive)?;
            let mut spec = env::ContainerSpec::new(&image.tag);
            spec.rollout_timeout = Duration::from_secs(
                p.test_timeout_secs * (p.candidates_per_package as u64 + 2) + 600,
            );
            spec.exec_timeout = Duration::from_secs(p.test_timeout_secs);
            let c = env::Container::start(engine, spec)?;
            c.write_file(MUTATE_AT, MUTATE_PY.as_bytes(), 0o644)?;
            Some(c)
        }
        _ => None,
    };
    let mut s = Session::new(rec, label.clone(), container.as_ref());
    let timeout = Duration::from_secs(p.test_timeout_secs);
    let short = Duration::from_secs(120);
    let test_cmd = pkg.test_cmd();
    let mut report = PackageReport {
        package: pkg.file().label(),
        ..Default::default()
    };

    let source_commit = s.exec("git rev-parse HEAD", WORKDIR, short)?;
    if !source_commit.success() {
        bail!(
            "the repository image has no commit: {}",
            source_commit.combined()
        );
    }
    let baseline = s.exec(&test_cmd, WORKDIR, timeout)?;
    if baseline.timed_out {
        bail!(
            "the test suite (`{test_cmd}`) timed out after {}s",
            timeout.as_secs()
        );
    }
    let base_status = pytest_statuses(&baseline.combined())?;
    let good = passing(&base_status);
    report.tests_passing = good.len();
    report.tests_failing = base_status.len() - good.len();
    if good.is_empty() {
        bail!(
            "no test passes before any bug is injected (`{test_cmd}`): {}",
            tail(&baseline.combined(), 800)
        );
    }

    let dirs: Vec<String> = pkg.source.iter().map(|d| shell_quote(d)).collect();
    let listed = s.exec(
        &format!("python3 {MUTATE_AT} list {}", dirs.join(" ")),
        WORKDIR,
        short,
    )?;
    if !listed.success() {
        bail!(
            "listing mutation sites failed: {}",
            tail(&listed.combined(), 800)
        );
    }
    let sites: Vec<Site> = listed
        .stdout
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()
        .context("mutate.py printed an unreadable site")?;
    report.sites = sites.len();
    let candidates = choose_candidates(sites, p.candidates_per_package, seed, &label);
    report.candidates = candidates.len();

    let mut out = Vec::new();
    for site in candidates {
        if out.len() >= p.bugs_per_package {
            break;
        }
        let mut reject = |why: &str| *report.rejected.entry(why.to_string()).or_default() += 1;
        let site_json = serde_json::to_string(&site)?;
        let applied = s.exec(
            &format!("python3 {MUTATE_AT} apply {}", shell_quote(&site_json)),
            WORKDIR,
            short,
        )?;
        if !applied.success() {
            reject("does not apply");
            s.exec("git checkout -q -- . && git clean -fdq", WORKDIR, short)?;
            continue;
        }
        let run = s.exec(&test_cmd, WORKDIR, timeout)?;
        // Commit the buggy tree (its id depends on content only), read both patches, and
        // return to the source commit.
        let commit = s.exec(
            &format!(
                "{GIT_FIXED} commit -qam 'synthetic bug' && git rev-parse HEAD && echo '@@BUG@@' \
                 && git diff --no-color HEAD~1 HEAD && echo '@@GOLD@@' && git diff --no-color HEAD HEAD~1; \
                 status=$?; git reset -q --hard {}; exit $status",
                source_commit.stdout.trim()
            ),
            WORKDIR,
            short,
        )?;
        if run.timed_out {
            reject("tests time out");
            continue;
        }
        if !commit.success() {
            reject("cannot commit");
            continue;
        }
        let statuses = pytest_statuses(&run.combined())?;
        let still = passing(&statuses);
        let f2p: Vec<String> = good.difference(&still).cloned().collect();
        let p2p: Vec<String> = good.intersection(&still).cloned().collect();
        if f2p.is_empty() {
            reject("no test fails");
            continue;
        }
        if p2p.is_empty() {
            reject("no test still passes");
            continue;
        }
        let text = commit.stdout;
        let (head, rest) = text.split_once("@@BUG@@\n").context("commit output")?;
        let (bug_patch, gold) = rest.split_once("@@GOLD@@\n").context("commit output")?;
        let base_commit = head.trim().to_string();
        let id_hash = blake3::hash(bug_patch.as_bytes()).to_hex();
        out.push(TaskInstance {
            instance_id: format!(
                "pypi__{}-{}__{}-{}",
                pkg.name,
                pkg.version,
                site.kind,
                &id_hash[..8]
            ),
            repo: format!("pypi/{}", pkg.name),
            base_commit,
            patch: gold.to_string(),
            test_patch: String::new(),
            problem_statement: problem_statement(&f2p, &run.combined(), &test_cmd, p.statement_chars),
            fail_to_pass: f2p,
            pass_to_pass: p2p,
            version: pkg.version.clone(),
            extra: BTreeMap::from([
                (
                    "environment".to_string(),
                    serde_json::to_value(Environment {
                        archive: archive_hash.clone(),
                        package: pkg.name.clone(),
                        base_image: p.image.clone(),
                        bug_patch: bug_patch.to_string(),
                        test_cmd: test_cmd.clone(),
                    })?,
                ),
                (
                    "mutation".to_string(),
                    serde_json::json!({"kind": site.kind, "file": site.file, "line": site.line, "function": site.function}),
                ),
            ]),
        });
    }
    report.kept = out.len();
    drop(s);
    if let Some(c) = container {
        c.remove()?;
    }
    Ok((out, report))
}

fn tail(s: &str, n: usize) -> String {
    let chars: Vec<char> = s.chars().collect();
    chars[chars.len().saturating_sub(n)..].iter().collect()
}

/// An issue-like statement: which tests fail and how, from pytest's failure section, with
/// timings dropped. The edited file and line are not named (the traceback may show them, as a
/// user's report would).
pub fn problem_statement(f2p: &[String], log: &str, test_cmd: &str, max_chars: usize) -> String {
    let mut s = String::from(
        "After a recent change, some of the project's tests fail. They passed before.\n\nFailing tests:\n",
    );
    for t in f2p.iter().take(10) {
        s.push_str(&format!("- {t}\n"));
    }
    if f2p.len() > 10 {
        s.push_str(&format!("- … and {} more\n", f2p.len() - 10));
    }
    let failures = log
        .split_once("= FAILURES =")
        .map(|(_, rest)| rest)
        .unwrap_or(log);
    let failures = failures
        .split("short test summary info")
        .next()
        .unwrap_or("")
        .lines()
        .filter(|l| !(l.starts_with('=') && l.contains(" in ") && l.trim_end().ends_with("s =")))
        .collect::<Vec<_>>()
        .join("\n");
    let failures = failures.trim_start_matches('=').trim();
    let mut cut: String = failures.chars().take(max_chars).collect();
    if cut.len() < failures.len() {
        cut.push_str("\n[… output cut …]");
    }
    s.push_str(&format!(
        "\nRunning `{test_cmd}` shows:\n```\n{cut}\n```\n\nPlease fix the library so these tests pass again without breaking the others. Do not modify the tests.\n"
    ));
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn site(kind: &str, start: u64) -> Site {
        Site {
            file: "a.py".into(),
            start,
            end: start + 1,
            old: "<".into(),
            new: ">=".into(),
            kind: kind.into(),
            line: 1,
            function: "f".into(),
        }
    }

    #[test]
    fn candidates_are_seeded_and_balanced_by_kind() {
        let sites: Vec<Site> = (0..20)
            .map(|i| site("shift_constant", i))
            .chain((20..23).map(|i| site("flip_comparison", i)))
            .collect();
        let a = choose_candidates(sites.clone(), 6, 7, "x");
        let b = choose_candidates(sites.clone(), 6, 7, "x");
        assert_eq!(a, b);
        assert_eq!(a.iter().filter(|s| s.kind == "flip_comparison").count(), 3);
        let c = choose_candidates(sites, 6, 8, "x");
        assert_ne!(
            a.iter().map(|s| s.start).collect::<Vec<_>>(),
            c.iter().map(|s| s.start).collect::<Vec<_>>()
        );
    }

    #[test]
    fn statements_name_tests_and_drop_timings() {
        let log = "==== FAILURES ====\n____ test_a ____\nassert 1 == 2\n==== short test summary info ====\nFAILED t.py::test_a\n==== 1 failed in 0.31s ====\n";
        let s = problem_statement(&["t.py::test_a".into()], log, "pytest t.py", 100);
        assert!(s.contains("- t.py::test_a"));
        assert!(s.contains("assert 1 == 2"));
        assert!(!s.contains("0.31s"));
    }
}
