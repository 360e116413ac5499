//! `command`: any program as a stage — a torchrun or Megatron training, vLLM, an evaluation
//! harness, a script — recorded like every other step.
//!
//! ```toml
//! [[stage]]
//! id = "train"
//! uses = "command"
//! inputs = { data = "tokens.tokens", init = "@base-model" }   # any names
//! command = ["torchrun", "--nproc-per-node=8", "train.py", "--data", "{in:data}", "--out", "{out:model.safetensors}"]
//! outputs = ["model.safetensors", "metrics.json"]
//! metrics = "metrics.json"                       # optional: {"name": number, ...} become metrics
//! env = { OMP_NUM_THREADS = "8" }
//! versions = [["python3", "--version"], ["python3", "-c", "import torch; print(torch.__version__)"]]
//! resources = { gres = "gpu:8", time = "24:00:00" }   # under --executor slurm
//! for_each = "data"                              # optional: one unit per shard of `data`
//! ```
//!
//! The program runs in a fresh working directory: each input is materialized there read-only
//! (`{in:NAME}`; a manifest as its parts concatenated), each declared output file must be
//! written where `{out:FILE}` says (under `{outputs}`), and `{dir}` is the working directory.
//! Its environment is only `PATH`, `HOME`, `LANG` and `env`, so nothing undeclared leaks in.
//! The command line, exit status and duration are metrics and config; the environment it ran in
//! (the `versions` commands' answers, the host) is recorded as an observation, for audit. A
//! replay runs the program again on the same inputs and reports bit-identical or the first
//! divergence: a program that is not deterministic is reported so, never hidden.

use anyhow::{bail, Context};
use ledger::config::{parse_params, ParamError};
use ledger::plan::{Plan, PlanContext};
use ledger::stage::{InputSpec, Stage, StageContext, ANY_INPUT};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command as Process, Stdio};
use std::time::Instant;

pub struct Command;

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Params {
    /// The program and its arguments, with `{in:NAME}`, `{out:FILE}`, `{outputs}` and `{dir}`
    /// replaced.
    pub command: Vec<String>,
    /// Files the program writes under `{outputs}`, each recorded as an output of that name.
    pub outputs: Vec<String>,
    /// One of `outputs` holding a JSON object of numbers, read as the step's metrics.
    #[serde(default)]
    pub metrics: Option<String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Commands whose output describes the environment (interpreter, package versions).
    #[serde(default)]
    pub versions: Vec<Vec<String>>,
    /// Kill the program after this long.
    #[serde(default = "default_timeout")]
    pub timeout_secs: u64,
    /// Run the program once per part of this input (a dataset of shards): each unit sees its
    /// part as `{in:NAME}`, and each output is the manifest of the units' files.
    #[serde(default)]
    pub for_each: Option<String>,
}

fn default_timeout() -> u64 {
    7 * 24 * 3600
}

const INPUTS: &[InputSpec] = &[InputSpec {
    name: ANY_INPUT,
    required: false,
    description: "any artifacts, materialized read-only for the program as {in:NAME}",
}];

impl Stage for Command {
    fn name(&self) -> &'static str {
        "command"
    }

    fn version(&self) -> u32 {
        1
    }

    fn description(&self) -> &'static str {
        "any program on declared inputs → declared output files (a training, an evaluation harness, a script)"
    }

    fn inputs(&self) -> &'static [InputSpec] {
        INPUTS
    }

    fn outputs(&self) -> &'static [&'static str] {
        &[]
    }

    fn outputs_for(&self, config: &serde_json::Value) -> Vec<String> {
        serde_json::from_value::<Params>(config.clone())
            .map(|p| p.outputs)
            .unwrap_or_default()
    }

    fn check(&self, params: toml::Table) -> Result<serde_json::Value, ParamError> {
        let p: Params = parse_params(params)?;
        if p.command.is_empty() {
            return Err(ParamError::new("command", "must name a program"));
        }
        for o in &p.outputs {
            if o.is_empty() || o.contains('/') || o.starts_with('.') {
                return Err(ParamError::new(
                    "outputs",
                    format!("`{o}` must be a plain file name"),
                ));
            }
        }
        if let Some(m) = &p.metrics {
            if !p.outputs.contains(m) {
                return Err(ParamError::new("metrics", "must be one of `outputs`"));
            }
        }
        if p.for_each.as_deref().is_some_and(str::is_empty) {
            return Err(ParamError::new("for_each", "must name an input"));
        }
        Ok(serde_json::to_value(p).expect("params serialize"))
    }

    fn plan(&self, plan: &PlanContext) -> anyhow::Result<Plan> {
        let p: Params = plan.params()?;
        let Some(each) = &p.for_each else {
            return Ok(Plan::whole());
        };
        let others: Vec<&str> = plan
            .inputs
            .iter()
            .map(|(n, _)| n.as_str())
            .filter(|n| n != each)
            .collect();
        let outputs: Vec<(&str, &str)> = p
            .outputs
            .iter()
            .map(|o| (o.as_str(), media_type(o)))
            .collect();
        Ok(Plan::per_part(plan, each, &others, &outputs)?)
    }

    fn execute(&self, ctx: &mut StageContext) -> anyhow::Result<()> {
        let p: Params = ctx.params()?;
        let dir = tempfile::Builder::new()
            .prefix("ledger-command-")
            .tempdir()?;
        let inputs_dir = dir.path().join("inputs");
        let outputs_dir = dir.path().join("outputs");
        std::fs::create_dir_all(&inputs_dir)?;
        std::fs::create_dir_all(&outputs_dir)?;
        let mut paths = BTreeMap::new();
        for (name, hash) in ctx.inputs().to_vec() {
            if name.contains('/') || name.starts_with('.') {
                bail!("input `{name}` cannot be a file name");
            }
            let path = inputs_dir.join(&name);
            let mut out = std::fs::File::create(&path)?;
            for part in ctx.parts(&hash)? {
                std::io::copy(&mut ctx.open_blob(&part)?, &mut out)?;
            }
            set_read_only(&path)?;
            paths.insert(name, path);
        }
        let expand = |arg: &str| -> anyhow::Result<String> {
            let mut out = arg
                .replace("{outputs}", &outputs_dir.display().to_string())
                .replace("{dir}", &dir.path().display().to_string());
            while let Some(start) = out.find("{in:").or_else(|| out.find("{out:")) {
                let end = out[start..]
                    .find('}')
                    .map(|e| start + e)
                    .with_context(|| format!("an unclosed placeholder in `{arg}`"))?;
                let (kind, name) = out[start + 1..end].split_once(':').expect("a colon");
                let with = match kind {
                    "in" => paths
                        .get(name)
                        .with_context(|| {
                            format!("`{arg}` names input `{name}`, which is not given")
                        })?
                        .display()
                        .to_string(),
                    _ => {
                        if !p.outputs.iter().any(|o| o == name) {
                            bail!("`{arg}` names output `{name}`, which `outputs` does not list");
                        }
                        outputs_dir.join(name).display().to_string()
                    }
                };
                out.replace_range(start..=end, &with);
            }
            Ok(out)
        };
        let argv: Vec<String> = p
            .command
            .iter()
            .map(|a| expand(a))
            .collect::<anyhow::Result<_>>()?;

        // The environment the program runs in, for audit (answered from the record on replay).
        let facts = serde_json::json!({ "versions": p.versions });
        let env = ctx.observe("environment", &serde_json::to_vec(&facts)?, || {
            let mut seen = BTreeMap::new();
            for v in &p.versions {
                let answer = run_quietly(v, dir.path(), &p.env);
                seen.insert(v.join(" "), answer);
            }
            Ok(serde_json::to_vec(&serde_json::json!({
                "host": ledger::event::Environment::current().host,
                "versions": seen,
            }))?)
        })?;
        tracing::debug!(
            "{}: environment {}",
            ctx.node(),
            String::from_utf8_lossy(&env)
        );

        let log_path = dir.path().join("log");
        let log = std::fs::File::create(&log_path)?;
        let started = Instant::now();
        let mut child = clean_command(&argv[0], &p.env)
            .args(&argv[1..])
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("cannot start `{}`", argv[0]))?;
        let deadline = started + std::time::Duration::from_secs(p.timeout_secs);
        let status = loop {
            if let Some(status) = child.try_wait()? {
                break status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!(
                    "`{}` ran past its {} s timeout{}",
                    argv.join(" "),
                    p.timeout_secs,
                    log_tail(&log_path)
                );
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        };
        let seconds = started.elapsed().as_secs_f64();
        if !status.success() {
            bail!(
                "`{}` exited with {status}{}",
                argv.join(" "),
                log_tail(&log_path)
            );
        }
        for name in &p.outputs {
            let path = outputs_dir.join(name);
            let file = std::fs::File::open(&path).with_context(|| {
                format!(
                    "`{}` succeeded but did not write its output `{name}`{}",
                    argv.join(" "),
                    log_tail(&log_path)
                )
            })?;
            let mut writer = ctx.output_writer()?;
            std::io::copy(&mut std::io::BufReader::new(file), &mut writer)?;
            ctx.finish_output(name, media_type(name), writer)?;
        }
        if let Some(m) = &p.metrics {
            let values: BTreeMap<String, serde_json::Value> =
                serde_json::from_slice(&std::fs::read(outputs_dir.join(m))?)
                    .with_context(|| format!("output `{m}` is not a JSON object"))?;
            for (name, value) in values {
                if let Some(v) = value.as_f64() {
                    ctx.metric(&name, v);
                }
            }
        }
        ctx.metric("exit_status", f64::from(status.code().unwrap_or(0)));
        ctx.metric("seconds", seconds);
        Ok(())
    }
}

fn clean_command(program: &str, env: &BTreeMap<String, String>) -> Process {
    let mut cmd = Process::new(program);
    cmd.env_clear();
    for key in ["PATH", "HOME", "LANG"] {
        if let Some(v) = std::env::var_os(key) {
            cmd.env(key, v);
        }
    }
    cmd.envs(env);
    cmd
}

fn run_quietly(argv: &[String], dir: &Path, env: &BTreeMap<String, String>) -> String {
    let Some((program, args)) = argv.split_first() else {
        return String::new();
    };
    match clean_command(program, env)
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
    {
        Ok(o) => format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout).trim(),
            String::from_utf8_lossy(&o.stderr).trim()
        ),
        Err(e) => format!("cannot run: {e}"),
    }
}

fn set_read_only(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o444))
}

fn media_type(name: &str) -> &'static str {
    ledger::ledger::media_type_for(Path::new(name))
}

fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    if lines.is_empty() {
        return String::new();
    }
    let from = lines.len().saturating_sub(20);
    format!("; the end of its output:\n{}", lines[from..].join("\n"))
}
