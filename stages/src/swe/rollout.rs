//! `rollout`: a policy works on task instances in Docker with the SWE-agent tools; every
//! result is graded exactly as SWE-bench grades it. The same stage evaluates a policy on
//! held-out instances (k runs, temperature 0): its `score` is the resolution rate.
//!
//! One unit per rollout (instance × run, each in its own container; as many at once as the
//! executor runs units), then a `summary` unit:
//! 1. the environment: the instance's repository image (rebuilt from the sdist artifact and the
//!    base image spec when the engine lacks it), the bug committed to reach `base_commit`
//!    (checked), or for instances brought from elsewhere, their `image` and `base_commit`;
//! 2. the loop: the policy's turn, each tool call (`bash`, `str_replace_editor`, `submit`)
//!    executed and recorded, until `submit`, the step limit, the token cap or the rollout's
//!    wall-clock limit; without a submit the working tree's diff is the patch;
//! 3. grading in a fresh container: reset to `base_commit`, apply the patch and the test
//!    patch, run the tests, FAIL_TO_PASS and PASS_TO_PASS must all pass (XFAIL passes, a test
//!    missing from the log fails).
//!
//! Policies: `scripted`, `endpoint`, `checkpoint` (see `policy`), and the grading-only
//! baselines `gold` (the instance's patch), `empty` (no patch) and `predictions` (patches
//! from a SWE-bench predictions file: input `predictions`, lines with `instance_id`,
//! `model_patch`, `model_name_or_path`).
//!
//! Outputs: `trajectories` (every rollout: the chat `messages` with `tool_calls`, plus
//! `instance_id`, `run`, `policy`, `resolved`, `stop_reason`, `steps`, `patch`), `pass` and
//! `fail` (D_pass / D_fail: resolved or not, within `max_tokens`), `score` (per instance and
//! run: resolved, F2P/P2P counts, steps, stop reason, patch; pass@1 averaged over runs) and
//! `predictions` (SWE-bench format, run 0). Token counts use the `tokenizer` input when given
//! (the ChatML rendering), else bytes / 4.
//!
//! A Docker engine that fails mid-rollout fails the stage with the rollout named: the
//! observations made so far stay in the ledger, no output is recorded.

use super::policy::{
    task_prompt, Call, CallFunction, ChatMessage, Checkpoint, Endpoint, EndpointParams, Policy,
    Scripted, TurnContext, SYSTEM_PROMPT,
};
use super::synthesize::{jsonl, Environment};
use super::{connect_engine, env_cache_dir, Recorder, Session};
use anyhow::{anyhow, bail, Context};
use env::grading::{evaluate, GradeOptions, GradeReport};
use env::instance::TaskInstance;
use env::repo_image::GIT_FIXED;
use env::tools::{ToolResult, Tools};
use ledger::config::{parse_params, ParamError};
use ledger::plan::{Compose, Plan, PlanContext, Source, Unit, UnitSpec};
use ledger::stage::{InputSpec, Stage, StageContext};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum PolicyParams {
    Scripted {
        #[serde(default)]
        withhold_fraction: f64,
    },
    Endpoint(EndpointParams),
    Checkpoint {
        #[serde(default = "default_new_tokens")]
        max_new_tokens: usize,
        #[serde(default)]
        temperature: f64,
        /// Where the checkpoint generates: `cpu` (default) or `cuda:N`.
        #[serde(default, skip_serializing_if = "crate::device::is_cpu")]
        device: crate::device::Device,
    },
    Gold,
    Empty,
    Predictions,
}

fn default_new_tokens() -> usize {
    256
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Params {
    pub policy: PolicyParams,
    /// Rollouts per instance (k).
    #[serde(default = "one")]
    pub runs: u32,
    /// Ignored since rollouts are units (the executor's `--jobs`, or Slurm, decides how many
    /// run at once); kept so configs that set it still load.
    #[serde(default = "default_parallel")]
    pub parallel: usize,
    #[serde(default = "default_steps")]
    pub step_limit: usize,
    #[serde(default = "default_command_timeout")]
    pub command_timeout_secs: u64,
    #[serde(default = "default_rollout_timeout")]
    pub rollout_timeout_secs: u64,
    #[serde(default = "default_test_timeout")]
    pub test_timeout_secs: u64,
    #[serde(default = "default_observation_chars")]
    pub max_observation_chars: usize,
    /// The context cap: longer trajectories stop, and stay out of `pass` / `fail`.
    #[serde(default = "default_max_tokens")]
    pub max_tokens: usize,
    /// First N instances (0: all).
    #[serde(default)]
    pub limit: usize,
    #[serde(default = "default_cpus")]
    pub cpus: f64,
    #[serde(default = "default_memory_mb")]
    pub memory_mb: i64,
    /// The harness log parser for every instance (`parse_log_pytest`, `parse_log_django`,
    /// ...); unset: each instance's `log_parser`, else its repository's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_parser: Option<String>,
}

fn one() -> u32 {
    1
}
fn default_parallel() -> usize {
    2
}
fn default_steps() -> usize {
    100
}
fn default_command_timeout() -> u64 {
    120
}
fn default_rollout_timeout() -> u64 {
    1800
}
fn default_test_timeout() -> u64 {
    600
}
fn default_observation_chars() -> usize {
    16_000
}
fn default_max_tokens() -> usize {
    131_072
}
fn default_cpus() -> f64 {
    1.0
}
fn default_memory_mb() -> i64 {
    2048
}

const INPUTS: [InputSpec; 5] = [
    InputSpec {
        name: "instances",
        required: true,
        description: "task instances, SWE-bench JSONL (from `synthesize` or your own)",
    },
    InputSpec {
        name: "tokenizer",
        required: false,
        description: "tokenizer.json: exact token counts (and the checkpoint policy's tokenizer)",
    },
    InputSpec {
        name: "model",
        required: false,
        description: "checkpoint policy: model.safetensors",
    },
    InputSpec {
        name: "config",
        required: false,
        description: "checkpoint policy: config.json",
    },
    InputSpec {
        name: "predictions",
        required: false,
        description: "predictions policy: SWE-bench predictions JSONL",
    },
];

/// One rollout as recorded in `trajectories`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RolloutRecord {
    pub id: String,
    pub instance_id: String,
    pub run: u32,
    pub policy: String,
    pub resolved: bool,
    pub stop_reason: String,
    pub steps: usize,
    pub tokens: usize,
    pub patch: String,
    /// The grading cascade step that applied the patch (none: it did not apply).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub apply_method: Option<String>,
    pub messages: Vec<ChatMessage>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct RunScore {
    run: u32,
    resolved: bool,
    patch_applied: bool,
    fail_to_pass: (usize, usize),
    pass_to_pass: (usize, usize),
    steps: usize,
    stop_reason: String,
    tests_timed_out: bool,
    /// The cascade step that applied the patch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    apply_method: Option<String>,
    /// The official harness's verdict on the same log; differs from `resolved` only where
    /// a pass was refused (`refused` tests).
    harness_resolved: bool,
    refused: usize,
    parser: String,
    /// The image it was graded in.
    environment: String,
    patch: String,
}

pub struct Rollout;

impl Stage for Rollout {
    fn name(&self) -> &'static str {
        "rollout"
    }
    fn version(&self) -> u32 {
        // 2: checkpoint generation runs on the fused model kernels.
        // 3: tokens are counted a message at a time (equal to the whole rendering's count
        //    when the ChatML markers are special tokens, which `load_tokenizer` ensures).
        // 4: grading as the official harness (per-repository parsers and commands, the patch
        //    cascade, ignored build outputs kept); the score records the apply method, the
        //    harness's verdict and refusals.
        // 5: one unit per instance and run, then a summary.
        5
    }
    fn description(&self) -> &'static str {
        "task instances → agent trajectories in Docker, graded as SWE-bench (D_pass / D_fail, score)"
    }
    fn inputs(&self) -> &'static [InputSpec] {
        &INPUTS
    }
    fn outputs(&self) -> &'static [&'static str] {
        &["trajectories", "pass", "fail", "score", "predictions"]
    }

    fn check(&self, params: toml::Table) -> Result<serde_json::Value, ParamError> {
        let p: Params = parse_params(params)?;
        for (key, v) in [
            ("runs", p.runs as usize),
            ("parallel", p.parallel),
            ("step_limit", p.step_limit),
            ("command_timeout_secs", p.command_timeout_secs as usize),
            ("rollout_timeout_secs", p.rollout_timeout_secs as usize),
            ("max_tokens", p.max_tokens),
        ] {
            if v == 0 {
                return Err(ParamError::new(key, "must be at least 1"));
            }
        }
        if let Some(name) = &p.log_parser {
            if env::grading::parsers::LogParser::from_name(name).is_none() {
                return Err(ParamError::new(
                    "log_parser",
                    format!(
                        "`{name}` is none of the harness's Python parsers ({})",
                        env::grading::parsers::LogParser::ALL
                            .map(|p| p.name())
                            .join(", ")
                    ),
                ));
            }
        }
        match &p.policy {
            PolicyParams::Scripted { withhold_fraction }
                if !(0.0..=1.0).contains(withhold_fraction) =>
            {
                return Err(ParamError::new(
                    "policy.withhold_fraction",
                    "must be between 0 and 1",
                ))
            }
            PolicyParams::Endpoint(e) => {
                if !e.base_url.starts_with("http://") && !e.base_url.starts_with("https://") {
                    return Err(ParamError::new(
                        "policy.base_url",
                        "must start with http:// or https://",
                    ));
                }
                if e.model.trim().is_empty() {
                    return Err(ParamError::new("policy.model", "must not be empty"));
                }
            }
            PolicyParams::Checkpoint { max_new_tokens, .. } if *max_new_tokens == 0 => {
                return Err(ParamError::new(
                    "policy.max_new_tokens",
                    "must be at least 1",
                ))
            }
            _ => {}
        }
        Ok(serde_json::to_value(p).expect("params serialize"))
    }

    /// One unit per instance and run (`rollout.<instance>.<run>`: a container, a policy, a
    /// grading), then a `summary` unit that makes the trajectories, D_pass / D_fail, the score
    /// and the predictions from theirs. Adding an instance runs only its rollouts again.
    fn plan(&self, plan: &PlanContext) -> anyhow::Result<Plan> {
        let p: Params = plan.params()?;
        let instances = parse_instances(
            &plan.read_whole(&plan.input("instances").expect("a required input"))?,
            p.limit,
        )?;
        // A rollout reads its own instance (in its parameters), not the instances file: adding
        // an instance leaves every other rollout's key, and cached result, as it was.
        let shared: Vec<(String, Source)> = plan
            .inputs
            .iter()
            .filter(|(n, _)| n != "instances")
            .map(|(n, h)| (n.clone(), Source::Blob(*h)))
            .collect();
        let mut units = Vec::new();
        let mut summary_inputs: Vec<(String, Source)> = plan
            .inputs
            .iter()
            .map(|(n, h)| (n.clone(), Source::Blob(*h)))
            .collect();
        for inst in &instances {
            for run in 0..p.runs {
                let id = rollout_unit(&inst.instance_id, run);
                for output in ["record", "score"] {
                    summary_inputs.push((
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
                        params: serde_json::json!({ "instance": inst, "run": run }),
                    },
                    inputs: shared.clone(),
                });
            }
        }
        units.push(UnitSpec {
            unit: Unit {
                id: SUMMARY_UNIT.into(),
                params: serde_json::Value::Null,
            },
            inputs: summary_inputs,
        });
        let outputs = ["trajectories", "pass", "fail", "score", "predictions"]
            .into_iter()
            .map(|name| {
                (
                    name.to_string(),
                    Compose::Unit {
                        unit: SUMMARY_UNIT.into(),
                        output: name.into(),
                    },
                )
            })
            .collect();
        Ok(Plan { units, outputs })
    }

    /// A rollout does not depend on how many instances or runs the node has (`limit`, `runs`
    /// only choose which rollouts there are): left out of its key, so raising them runs only
    /// the new rollouts.
    fn unit_config(&self, config: &serde_json::Value, unit: &Unit) -> serde_json::Value {
        let mut config = config.clone();
        if unit.id != SUMMARY_UNIT {
            if let serde_json::Value::Object(map) = &mut config {
                map.insert("limit".into(), 0.into());
                map.insert("runs".into(), 0.into());
            }
        }
        ledger::runner::unit_config(&config, unit)
    }

    /// Rollouts are counted by the summary, which sees them all.
    fn combine_metrics(&self, units: &[Vec<(String, f64)>]) -> Vec<(String, f64)> {
        units.last().cloned().unwrap_or_default()
    }

    fn execute(&self, ctx: &mut StageContext) -> anyhow::Result<()> {
        let p: Params = ctx.params()?;
        let unit = ctx.unit().map(|u| u.id.clone()).unwrap_or_default();
        if unit == SUMMARY_UNIT {
            let instances = parse_instances(&ctx.read_whole(&ctx.input("instances")?)?, p.limit)?;
            return summarize(ctx, &p, &instances);
        }
        #[derive(Deserialize)]
        struct One {
            instance: TaskInstance,
            run: u32,
        }
        let one: One = ctx.unit_params()?;
        let inst = &one.instance;
        let prepared = prepare(ctx, &p, std::slice::from_ref(inst))?;
        let engine = if ctx.replaying() && !ctx.reexecuting() {
            None
        } else {
            Some(connect_engine()?)
        };
        let env_images = Mutex::new(BTreeMap::<String, String>::new());
        let (record, score) = one_rollout(
            ctx.observer(),
            engine.as_ref(),
            &env_images,
            &prepared.archives,
            &p,
            prepared.policy.as_deref(),
            &prepared.policy_name,
            &prepared.predictions,
            prepared.tokenizer.as_ref(),
            inst,
            one.run,
            ctx.seed(),
        )
        .with_context(|| format!("rollout {} #{}", inst.instance_id, one.run))?;
        ctx.write_output("record", "application/json", &serde_json::to_vec(&record)?)?;
        ctx.write_output("score", "application/json", &serde_json::to_vec(&score)?)?;
        Ok(())
    }
}

/// The summary unit's name, and a rollout unit's.
const SUMMARY_UNIT: &str = "summary";

fn rollout_unit(instance: &str, run: u32) -> String {
    format!("rollout.{instance}.{run}")
}

/// The task instances of the input, at most `limit` (all when 0).
fn parse_instances(bytes: &[u8], limit: usize) -> anyhow::Result<Vec<TaskInstance>> {
    let text = std::str::from_utf8(bytes).context("input `instances` is not UTF-8")?;
    let mut instances = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        instances.push(
            env::instance::parse_instance(line)
                .with_context(|| format!("input `instances`, line {}", i + 1))?,
        );
    }
    if limit > 0 {
        instances.truncate(limit);
    }
    if instances.is_empty() {
        bail!("input `instances` holds no task instance");
    }
    Ok(instances)
}

/// What every rollout unit reads from the ledger before its container starts.
struct Prepared {
    tokenizer: Option<tokenizers::Tokenizer>,
    policy: Option<Box<dyn Policy>>,
    policy_name: String,
    predictions: BTreeMap<String, String>,
    archives: BTreeMap<String, Vec<u8>>,
}

fn prepare(ctx: &StageContext, p: &Params, instances: &[TaskInstance]) -> anyhow::Result<Prepared> {
    let tokenizer = crate::train::load_tokenizer(ctx, true)?;
    let policy: Option<Box<dyn Policy>> = match &p.policy {
        PolicyParams::Scripted { withhold_fraction } => Some(Box::new(Scripted {
            withhold_fraction: *withhold_fraction,
        })),
        PolicyParams::Endpoint(e) => Some(Box::new(Endpoint::new(e.clone()))),
        PolicyParams::Checkpoint {
            max_new_tokens,
            temperature,
            device,
        } => {
            crate::device::require_runnable(*device, "rollout (checkpoint policy)")?;
            let tok = tokenizer
                .clone()
                .context("the checkpoint policy needs a `tokenizer` input")?;
            let cfg_hash = ctx
                .input("config")
                .context("the checkpoint policy needs a `config` input")?;
            let config: model::config::Qwen2Config =
                serde_json::from_slice(&ctx.read_blob(&cfg_hash)?)
                    .context("input `config` is not a Qwen2 config.json")?;
            config.validate()?;
            let model_hash = ctx
                .input("model")
                .context("the checkpoint policy needs a `model` input")?;
            let model = model::qwen2::Qwen2::from_safetensors(
                &config,
                &ctx.read_blob(&model_hash)?,
                &model::Device::Cpu,
            )
            .context("input `model`")?;
            if tok.get_vocab_size(true) > config.vocab_size {
                bail!(
                    "the tokenizer has {} tokens but the model's vocab_size is {}",
                    tok.get_vocab_size(true),
                    config.vocab_size
                );
            }
            Some(Box::new(Checkpoint {
                model,
                tokenizer: tok,
                label: format!("model {}", model_hash.short()),
                max_new_tokens: *max_new_tokens,
                temperature: *temperature,
                context: config.max_position_embeddings,
            }))
        }
        PolicyParams::Gold | PolicyParams::Empty | PolicyParams::Predictions => None,
    };
    let predictions: BTreeMap<String, String> = match p.policy {
        PolicyParams::Predictions => read_predictions(
            &ctx.read_input("predictions")
                .context("the predictions policy needs a `predictions` input")?,
        )?,
        _ => BTreeMap::new(),
    };
    let policy_name = match (&policy, &p.policy) {
        (Some(pol), _) => pol.describe(),
        (None, PolicyParams::Gold) => "gold-patch".into(),
        (None, PolicyParams::Empty) => "empty-patch".into(),
        (None, _) => "predictions-file".into(),
    };

    // Everything a rollout reads from the ledger is read here, on the stage's thread.
    let mut archives: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    for inst in instances {
        if let Some(env) = environment(inst)? {
            if !archives.contains_key(&env.archive) {
                let h = ledger::Hash::from_hex(&env.archive).with_context(|| {
                    format!(
                        "{}: environment.archive is not a BLAKE3 hash",
                        inst.instance_id
                    )
                })?;
                archives.insert(
                    env.archive.clone(),
                    ctx.read_blob(&h).with_context(|| {
                        format!(
                            "{}: the sdist artifact {} is not in the store",
                            inst.instance_id,
                            h.short()
                        )
                    })?,
                );
            }
        }
    }
    Ok(Prepared {
        tokenizer,
        policy,
        policy_name,
        predictions,
        archives,
    })
}

/// The summary unit: every rollout's record and score, in instance and run order.
fn summarize(ctx: &mut StageContext, p: &Params, instances: &[TaskInstance]) -> anyhow::Result<()> {
    let mut records = Vec::new();
    let mut scores: BTreeMap<String, Vec<RunScore>> = BTreeMap::new();
    let mut policy_name = String::new();
    for inst in instances {
        for run in 0..p.runs {
            let id = rollout_unit(&inst.instance_id, run);
            let record: RolloutRecord =
                serde_json::from_slice(&ctx.read_input(&format!("record/{id}"))?)
                    .with_context(|| format!("the record of {id} is not valid"))?;
            let score: RunScore = serde_json::from_slice(&ctx.read_input(&format!("score/{id}"))?)
                .with_context(|| format!("the score of {id} is not valid"))?;
            policy_name.clone_from(&record.policy);
            scores
                .entry(record.instance_id.clone())
                .or_default()
                .push(score);
            records.push(record);
        }
    }
    write_outputs(ctx, p, &policy_name, instances, records, scores)
}

fn write_outputs(
    ctx: &mut StageContext,
    p: &Params,
    policy_name: &str,
    instances: &[TaskInstance],
    records: Vec<RolloutRecord>,
    scores: BTreeMap<String, Vec<RunScore>>,
) -> anyhow::Result<()> {
    let within = |r: &&RolloutRecord| r.tokens <= p.max_tokens && !r.messages.is_empty();
    let pass: Vec<&RolloutRecord> = records
        .iter()
        .filter(|r| r.resolved)
        .filter(within)
        .collect();
    let fail: Vec<&RolloutRecord> = records
        .iter()
        .filter(|r| !r.resolved)
        .filter(within)
        .collect();
    let over = records.iter().filter(|r| r.tokens > p.max_tokens).count();
    let resolved = records.iter().filter(|r| r.resolved).count();
    let mut per_instance = Vec::new();
    let mut rate_sum = 0.0;
    for inst in instances {
        let runs = &scores[&inst.instance_id];
        let frac = runs.iter().filter(|r| r.resolved).count() as f64 / runs.len() as f64;
        rate_sum += frac;
        per_instance.push(serde_json::json!({
            "instance_id": inst.instance_id,
            "resolved": frac,
            "runs": runs,
        }));
    }
    let rate = rate_sum / instances.len() as f64;
    let score = serde_json::json!({
        "benchmark": "swe",
        "policy": policy_name,
        "runs_per_instance": p.runs,
        "step_limit": p.step_limit,
        "max_tokens": p.max_tokens,
        "instances_total": instances.len(),
        "resolved_rate": rate,
        "instances": per_instance,
    });
    let predictions: Vec<serde_json::Value> = records
        .iter()
        .filter(|r| r.run == 0)
        .map(|r| serde_json::json!({"instance_id": r.instance_id, "model_patch": r.patch, "model_name_or_path": policy_name}))
        .collect();
    ctx.metric("rollouts", records.len() as f64);
    ctx.metric("resolved", resolved as f64);
    ctx.metric("resolved_rate", rate);
    ctx.metric("pass", pass.len() as f64);
    ctx.metric("fail", fail.len() as f64);
    ctx.metric("over_token_cap", over as f64);
    ctx.metric(
        "mean_steps",
        records.iter().map(|r| r.steps as f64).sum::<f64>() / records.len() as f64,
    );
    ctx.write_output("trajectories", "application/x-ndjson", &jsonl(&records)?)?;
    ctx.write_output("pass", "application/x-ndjson", &jsonl(&pass)?)?;
    ctx.write_output("fail", "application/x-ndjson", &jsonl(&fail)?)?;
    ctx.write_output(
        "score",
        "application/json",
        &serde_json::to_vec_pretty(&score)?,
    )?;
    ctx.write_output("predictions", "application/x-ndjson", &jsonl(&predictions)?)?;
    Ok(())
}

/// SWE-bench predictions: `instance_id` → `model_patch` (errors name the line).
pub fn read_predictions(bytes: &[u8]) -> anyhow::Result<BTreeMap<String, String>> {
    let text = std::str::from_utf8(bytes).context("input `predictions` is not UTF-8")?;
    let mut out = BTreeMap::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        #[derive(Deserialize)]
        struct Prediction {
            instance_id: String,
            model_patch: Option<String>,
            #[allow(dead_code)]
            model_name_or_path: Option<String>,
        }
        let p: Prediction = serde_json::from_str(line).with_context(|| {
            format!(
                "input `predictions`, line {}: not a SWE-bench prediction",
                i + 1
            )
        })?;
        out.insert(p.instance_id, p.model_patch.unwrap_or_default());
    }
    Ok(out)
}

fn environment(inst: &TaskInstance) -> anyhow::Result<Option<Environment>> {
    inst.extra
        .get("environment")
        .map(|v| {
            serde_json::from_value(v.clone())
                .with_context(|| format!("{}: `environment` is not readable", inst.instance_id))
        })
        .transpose()
}

/// The image and the test command of an instance; builds the repository image when missing.
fn instance_image(
    engine: &env::Engine,
    cache: &Mutex<BTreeMap<String, String>>,
    archives: &BTreeMap<String, Vec<u8>>,
    inst: &TaskInstance,
) -> anyhow::Result<String> {
    if let Some(env) = environment(inst)? {
        let key = format!(
            "{}/{}",
            env.archive,
            serde_json::to_string(&env.base_image)?
        );
        // One build per environment, even with parallel workers.
        let mut cache = cache.lock().unwrap();
        if let Some(tag) = cache.get(&key) {
            return Ok(tag.clone());
        }
        let (base, _) = env::image::ensure_base_image(engine, &env.base_image, &env_cache_dir())?;
        let img = env::repo_image::ensure_repo_image(
            engine,
            &base.tag,
            &env.package,
            &archives[&env.archive],
        )?;
        cache.insert(key, img.tag.clone());
        return Ok(img.tag);
    }
    // The official image, when the engine has it (users with the images run the real
    // benchmark); else the instance's own `image` (an offline-built environment).
    let official = env::offline::official_image(&inst.instance_id);
    if env::image::image_id(engine, &official)?.is_some() {
        return Ok(official);
    }
    // `image_name`: SWE-smith task files name their image so.
    inst.extra
        .get("image")
        .or_else(|| inst.extra.get("image_name"))
        .and_then(|v| v.as_str())
        .map(str::to_string)
        .ok_or_else(|| {
            anyhow!(
                "{}: the engine has no official image {official}, and neither `environment` nor `image` says where else it runs",
                inst.instance_id
            )
        })
}

/// Whether `image` is an official SWE-bench image (conda env `testbed` under
/// `/opt/miniconda3`, repository in `/testbed`, used as root).
fn is_official(image: &str) -> bool {
    image.starts_with("swebench/sweb.eval.")
}

/// Puts the container at the instance's `base_commit`. Untracked files go, ignored ones
/// (build outputs of the environment: generated version files, compiled extensions) stay.
fn setup_script(inst: &TaskInstance) -> anyhow::Result<String> {
    Ok(match environment(inst)? {
        Some(env) => format!(
            "set -e; git reset -q --hard && git clean -fdq && printf '%s' {} > /tmp/davinci-bug.patch && git apply /tmp/davinci-bug.patch && {GIT_FIXED} commit -qam 'synthetic bug' && rm /tmp/davinci-bug.patch && git rev-parse HEAD",
            env::container::shell_quote(&env.bug_patch)
        ),
        None => format!(
            "set -e; git checkout -qf {} && git clean -fdq && git rev-parse HEAD",
            env::container::shell_quote(&inst.base_commit)
        ),
    })
}

fn test_cmd(inst: &TaskInstance) -> anyhow::Result<Option<String>> {
    Ok(match environment(inst)? {
        Some(env) => Some(env.test_cmd),
        None => inst
            .extra
            .get("test_cmd")
            .and_then(|v| v.as_str())
            .map(str::to_string),
    })
}

#[allow(clippy::too_many_arguments)]
fn one_rollout(
    rec: &Recorder,
    engine: Option<&env::Engine>,
    images: &Mutex<BTreeMap<String, String>>,
    archives: &BTreeMap<String, Vec<u8>>,
    p: &Params,
    policy: Option<&dyn Policy>,
    policy_name: &str,
    predictions: &BTreeMap<String, String>,
    tokenizer: Option<&tokenizers::Tokenizer>,
    inst: &TaskInstance,
    run: u32,
    seed: u64,
) -> anyhow::Result<(RolloutRecord, RunScore)> {
    // Everything that shapes a container's answers is in the session label, so a changed
    // setting never reuses a recorded answer made under another one.
    let settings = serde_json::to_vec(&serde_json::json!({
        "instance": inst,
        "command_timeout_secs": p.command_timeout_secs,
        "max_observation_chars": p.max_observation_chars,
        "test_timeout_secs": p.test_timeout_secs,
        "cpus": p.cpus,
        "memory_mb": p.memory_mb,
    }))?;
    let label = format!(
        "rollout/{policy_name}/{}/{run}/seed{seed}/{}",
        inst.instance_id,
        &blake3::hash(&settings).to_hex()[..16]
    );
    let image = match engine {
        Some(e) => Some(instance_image(e, images, archives, inst)?),
        None => None,
    };
    let start = |what: &str| -> anyhow::Result<Option<env::Container>> {
        let (Some(engine), Some(image)) = (engine, &image) else {
            return Ok(None);
        };
        let mut spec = env::ContainerSpec::new(image);
        if is_official(image) {
            spec.user = "root".into();
        }
        spec.cpus = p.cpus;
        spec.memory_bytes = p.memory_mb << 20;
        spec.exec_timeout = Duration::from_secs(p.command_timeout_secs);
        spec.rollout_timeout = Duration::from_secs(p.rollout_timeout_secs + p.test_timeout_secs);
        spec.labels.insert(
            "davinci.rollout".into(),
            format!("{}#{run}/{what}", inst.instance_id),
        );
        Ok(Some(env::Container::start(engine, spec)?))
    };
    let short = Duration::from_secs(120);

    let mut messages = Vec::new();
    let mut counted = TokenCount::new(tokenizer);
    let mut steps = 0;
    let stop_reason;
    let patch;
    match policy {
        None => {
            patch = match &p.policy {
                PolicyParams::Gold => inst.patch.clone(),
                PolicyParams::Empty => String::new(),
                _ => predictions
                    .get(&inst.instance_id)
                    .cloned()
                    .unwrap_or_default(),
            };
            stop_reason = "graded_only".to_string();
        }
        Some(policy) => {
            let container = start("agent")?;
            let mut s = Session::new(rec, label.clone(), container.as_ref());
            let head = s.exec(&setup_script(inst)?, "/testbed", short)?;
            if !head.success() || head.stdout.trim() != inst.base_commit {
                bail!(
                    "the environment does not reproduce base_commit {} (got `{}`): {}",
                    inst.base_commit,
                    head.stdout.trim(),
                    head.combined().trim()
                );
            }
            let mut tools = container.as_ref().map(|c| {
                let mut t = Tools::new(c, "/testbed");
                if image.as_deref().is_some_and(is_official) {
                    t.set_shell_init(vec![env::offline::OFFICIAL_SHELL_INIT.to_string()]);
                }
                t.bash_timeout = Duration::from_secs(p.command_timeout_secs);
                t.max_observation_chars = p.max_observation_chars;
                t
            });
            messages.push(ChatMessage::text("system", SYSTEM_PROMPT));
            messages.push(ChatMessage::text("user", task_prompt(inst)));
            let cx = TurnContext {
                instance: inst,
                run,
                seed,
                recorder: rec,
            };
            let mut submitted: Option<String> = None;
            let mut reason = "step_limit".to_string();
            'steps: while steps < p.step_limit {
                steps += 1;
                let turn = match policy.next(&cx, &messages) {
                    Ok(t) => t,
                    Err(e) => {
                        reason = format!("policy_error: {e:#}");
                        break;
                    }
                };
                let calls: Vec<Call> = turn
                    .calls
                    .iter()
                    .enumerate()
                    .map(|(j, (name, args))| Call {
                        id: format!("call_{steps}_{j}"),
                        kind: "function".into(),
                        function: CallFunction {
                            name: name.clone(),
                            arguments: args.clone(),
                        },
                    })
                    .collect();
                messages.push(ChatMessage {
                    role: "assistant".into(),
                    content: Some(turn.content.clone()),
                    tool_calls: (!calls.is_empty()).then(|| calls.clone()),
                    tool_call_id: None,
                });
                if calls.is_empty() {
                    messages.push(ChatMessage::text(
                        "user",
                        "No tool call was found in your reply. Call one of the tools: bash, str_replace_editor or submit.",
                    ));
                } else {
                    for call in &calls {
                        let name = call.function.name.clone();
                        let args = call.function.arguments.clone();
                        let result: ToolResult = s.act(
                            "tool",
                            serde_json::json!({"tool": name, "args": args}),
                            || {
                                let t = tools.as_mut().expect("a container in a run");
                                if name == "submit" {
                                    Ok(ToolResult {
                                        output: t.submit()?,
                                        is_error: false,
                                        exit_code: None,
                                        timed_out: false,
                                    })
                                } else {
                                    t.call(&name, &args)
                                }
                            },
                        )?;
                        if name == "submit" {
                            messages.push(ChatMessage {
                                role: "tool".into(),
                                content: Some("Your changes were submitted.".into()),
                                tool_calls: None,
                                tool_call_id: Some(call.id.clone()),
                            });
                            submitted = Some(result.output);
                            reason = "submitted".into();
                            break 'steps;
                        }
                        messages.push(ChatMessage {
                            role: "tool".into(),
                            content: Some(result.output),
                            tool_calls: None,
                            tool_call_id: Some(call.id.clone()),
                        });
                    }
                }
                if counted.update(&messages)? > p.max_tokens {
                    reason = "token_cap".into();
                    break;
                }
            }
            patch = match submitted {
                Some(patch) => patch,
                // No submit: the working tree is the patch, as SWE-agent's autosubmit does.
                None => {
                    s.act(
                        "tool",
                        serde_json::json!({"tool": "submit", "auto": true}),
                        || {
                            let t = tools.as_mut().expect("a container in a run");
                            Ok(ToolResult {
                                output: t.submit()?,
                                is_error: false,
                                exit_code: None,
                                timed_out: false,
                            })
                        },
                    )?
                    .output
                }
            };
            stop_reason = reason;
            drop(tools);
            if let Some(c) = container {
                c.remove()?;
            }
        }
    }

    // Grading, in a fresh container.
    let container = start("grade")?;
    let mut g = Session::new(rec, format!("{label}/grade"), container.as_ref());
    // Which environment graded it (the official image, or an offline-built one) is part of
    // the record, and of every later action's key.
    let environment: String = g.act(
        "environment",
        serde_json::json!({"image_for": inst.instance_id}),
        || Ok(image.clone().unwrap_or_default()),
    )?;
    let opts = GradeOptions {
        test_cmd: test_cmd(inst)?,
        parser: match &p.log_parser {
            Some(name) => env::grading::parsers::LogParser::from_name(name),
            None => Some(env::grading::instance_parser(inst)?),
        },
        test_timeout: Duration::from_secs(p.test_timeout_secs),
        prelude: if image.as_deref().is_some_and(is_official) {
            vec![env::offline::OFFICIAL_SHELL_INIT.to_string()]
        } else {
            Vec::new()
        },
        ..GradeOptions::default()
    };
    let setup = setup_script(inst)?;
    let report: GradeReport = g.act(
        "grade",
        serde_json::json!({"patch": patch, "test_cmd": opts.test_cmd, "parser": opts.parser, "fail_to_pass": inst.fail_to_pass, "pass_to_pass": inst.pass_to_pass}),
        || {
            let c = container.as_ref().expect("a container in a run");
            let head = c.exec_with(&env::ExecRequest::bash(&setup).workdir("/testbed").timeout(short))?;
            if !head.success() || head.stdout.trim() != inst.base_commit {
                bail!("the grading environment does not reproduce base_commit {}: {}", inst.base_commit, head.combined().trim());
            }
            evaluate(c, inst, &patch, &opts)
        },
    )?;
    if let Some(c) = container {
        c.remove()?;
    }
    let passed = |v: &[env::grading::TestOutcome]| (v.iter().filter(|t| t.passed).count(), v.len());
    let tokens = counted.update(&messages)?;
    let record = RolloutRecord {
        id: format!("{}#{run}", inst.instance_id),
        instance_id: inst.instance_id.clone(),
        run,
        policy: policy_name.to_string(),
        resolved: report.resolved,
        stop_reason: stop_reason.clone(),
        steps,
        tokens,
        patch: patch.clone(),
        apply_method: report.apply_method.clone(),
        messages,
    };
    let score = RunScore {
        run,
        resolved: report.resolved,
        patch_applied: report.patch_applied,
        fail_to_pass: passed(&report.fail_to_pass),
        pass_to_pass: passed(&report.pass_to_pass),
        steps,
        stop_reason,
        tests_timed_out: report.tests_timed_out,
        apply_method: report.apply_method.clone(),
        harness_resolved: report.harness_resolved,
        refused: report.graded.as_ref().map_or(0, |g| g.refused),
        parser: report
            .graded
            .as_ref()
            .map_or_else(String::new, |g| g.parser.name().to_string()),
        environment,
        patch,
    };
    Ok((record, score))
}

/// Tokens of a conversation's ChatML rendering with the tokenizer, else its bytes / 4,
/// counted a message at a time as the conversation grows: recounting the whole rendering
/// after every step was quadratic in its length. Every message renders as
/// `<|im_start|>…<|im_end|>\n`, and with those two as special tokens (as `load_tokenizer`
/// makes them) the tokenizer splits on them before anything else, so the sum over messages
/// is the count of the whole rendering (`token_counts_add_up_per_message`).
struct TokenCount<'a> {
    tokenizer: Option<&'a tokenizers::Tokenizer>,
    /// Messages counted so far, and their tokens (or bytes, without a tokenizer).
    messages: usize,
    total: usize,
}

impl<'a> TokenCount<'a> {
    fn new(tokenizer: Option<&'a tokenizers::Tokenizer>) -> Self {
        TokenCount {
            tokenizer,
            messages: 0,
            total: 0,
        }
    }

    /// Counts the messages added since the last call; returns the conversation's tokens.
    fn update(&mut self, messages: &[ChatMessage]) -> anyhow::Result<usize> {
        for m in &messages[self.messages.min(messages.len())..] {
            let msg: model::chat::Message = serde_json::from_value(serde_json::to_value(m)?)?;
            let text = model::chat::render_text(std::slice::from_ref(&msg))?;
            self.total += match self.tokenizer {
                Some(t) => t
                    .encode(text.as_str(), false)
                    .map_err(|e| anyhow!("counting tokens: {e}"))?
                    .len(),
                None => text.len(),
            };
        }
        self.messages = messages.len();
        Ok(match self.tokenizer {
            Some(_) => self.total,
            None => self.total.div_ceil(4),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conversation() -> Vec<ChatMessage> {
        let mut m = vec![
            ChatMessage::text("system", SYSTEM_PROMPT),
            ChatMessage::text("user", "Fix `pluralize('ox')`.\n  def f(x):\n\treturn x"),
        ];
        for i in 0..4 {
            m.push(ChatMessage {
                role: "assistant".into(),
                content: Some(if i % 2 == 0 { "Let me look.".into() } else { String::new() }),
                tool_calls: Some(vec![Call {
                    id: format!("call_{i}"),
                    kind: "function".into(),
                    function: CallFunction {
                        name: "bash".into(),
                        arguments: serde_json::json!({"command": format!("grep -n 'ox' file{i}.py")}),
                    },
                }]),
                tool_call_id: None,
            });
            m.push(ChatMessage {
                role: "tool".into(),
                content: Some(format!("{i}: return word + 'en'  # ünïcode\n\n")),
                tool_calls: None,
                tool_call_id: Some(format!("call_{i}")),
            });
        }
        m
    }

    fn whole(tok: Option<&tokenizers::Tokenizer>, messages: &[ChatMessage]) -> usize {
        let msgs: Vec<model::chat::Message> =
            serde_json::from_value(serde_json::to_value(messages).unwrap()).unwrap();
        let text = model::chat::render_text(&msgs).unwrap();
        match tok {
            Some(t) => t.encode(text.as_str(), false).unwrap().len(),
            None => text.len().div_ceil(4),
        }
    }

    /// Counting a message at a time gives the count of the whole rendering, at every length
    /// of the conversation, with a trained byte-level BPE (plus the ChatML specials, as
    /// `load_tokenizer` adds them) and without a tokenizer.
    #[test]
    fn token_counts_add_up_per_message() {
        let texts: Vec<String> = conversation()
            .iter()
            .filter_map(|m| m.content.clone())
            .chain((0..50).map(|i| format!("def f{i}(x):\n    return x + {i}\n")))
            .collect();
        let mut tok =
            crate::tokenize::train_bpe(texts.into_iter(), 300, 2, "<|endoftext|>").unwrap();
        tok.add_special_tokens(vec![
            tokenizers::AddedToken::from(model::chat::IM_START, true),
            tokenizers::AddedToken::from(model::chat::IM_END, true),
        ])
        .unwrap();
        let all = conversation();
        for t in [Some(&tok), None] {
            let mut counted = TokenCount::new(t);
            for n in 0..=all.len() {
                assert_eq!(
                    counted.update(&all[..n]).unwrap(),
                    whole(t, &all[..n]),
                    "{n} messages"
                );
            }
            // Several messages at once, as a step with many tool calls adds them.
            let mut counted = TokenCount::new(t);
            counted.update(&all[..3]).unwrap();
            assert_eq!(counted.update(&all).unwrap(), whole(t, &all));
        }
        assert!(whole(Some(&tok), &all) > 100);
    }

    /// A measurement, not a check of speed: counting a 100-step conversation after every step,
    /// by recounting the whole rendering (as `rollout` v2 did) and a message at a time. Run it
    /// with `cargo nextest run --release -p davinci-stages token_counting_cost --run-ignored
    /// only --no-capture`.
    #[test]
    #[ignore]
    fn token_counting_cost() {
        let texts = (0..2000).map(|i| format!("def f{i}(x):\n    return x + {i} # line\n"));
        let mut tok = crate::tokenize::train_bpe(texts, 2048, 2, "<|endoftext|>").unwrap();
        tok.add_special_tokens(vec![
            tokenizers::AddedToken::from(model::chat::IM_START, true),
            tokenizers::AddedToken::from(model::chat::IM_END, true),
        ])
        .unwrap();
        let observation: String = (0..120)
            .map(|i| format!("{i}: def f{i}(x): return x + {i}  # some output here\n"))
            .collect();
        let mut messages = vec![
            ChatMessage::text("system", SYSTEM_PROMPT),
            ChatMessage::text("user", "fix it"),
        ];
        let mut counted = TokenCount::new(Some(&tok));
        let (mut recount, mut per_message) = (Duration::ZERO, Duration::ZERO);
        let mut tokens = 0;
        for step in 0..100 {
            messages.push(ChatMessage::text("assistant", format!("step {step}")));
            messages.push(ChatMessage::text("tool", &observation));
            let t = std::time::Instant::now();
            let all = whole(Some(&tok), &messages);
            recount += t.elapsed();
            let t = std::time::Instant::now();
            tokens = counted.update(&messages).unwrap();
            per_message += t.elapsed();
            assert_eq!(tokens, all);
        }
        println!(
            "100 steps, {tokens} tokens: recounting the whole rendering {:.3} s, a message at a time {:.3} s",
            recount.as_secs_f64(),
            per_message.as_secs_f64()
        );
    }
}
