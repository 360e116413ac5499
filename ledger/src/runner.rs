//! Executes an experiment: config → plan (already ordered by `Experiment`) → execute → events.
//!
//! For each node: resolve its inputs (earlier outputs and ingested external files), compute the
//! action key, answer it from the run cache when a successful run with the same key exists and
//! its outputs are still stored, otherwise execute the stage and record the result.

use crate::action::{action_key, canonical_json};
use crate::config::{Experiment, InputRef};
use crate::error::{Error, Result};
use crate::event::{
    now_ms, ArtifactAdded, Environment, EventKind, Origin, Output, RunStarted, RunStatus, StageRun,
};
use crate::hash::Hash;
use crate::ledger::Ledger;
use crate::stage::{ExternalSource, Mode, Registry, StageContext};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::collections::HashMap;
use std::time::Instant;

#[derive(Clone, Debug)]
pub struct RunOptions {
    /// Show progress bars on stderr.
    pub progress: bool,
}

#[derive(Clone, Debug, serde::Serialize)]
pub enum Outcome {
    Executed,
    Cached { source_seq: u64 },
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct StepReport {
    pub node: String,
    pub stage: String,
    pub outcome: Outcome,
    pub action_key: String,
    pub outputs: Vec<(String, String)>,
    pub metrics: Vec<(String, f64)>,
    pub seconds: f64,
    pub event_seq: u64,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct RunReport {
    pub run_id: String,
    pub experiment: String,
    pub steps: Vec<StepReport>,
}

pub fn run(
    ledger: &mut Ledger,
    registry: &Registry,
    experiment: &Experiment,
    options: &RunOptions,
) -> Result<RunReport> {
    let config_bytes = experiment.source.as_bytes();
    let (config_hash, config_size) = ledger.store().put_bytes(config_bytes)?;
    let run_id = {
        let mut h = blake3::Hasher::new();
        h.update(config_hash.as_bytes());
        h.update(&std::process::id().to_le_bytes());
        h.update(
            &std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos())
                .to_le_bytes(),
        );
        Hash::from(h.finalize())
    };
    let config_path = experiment.path.display().to_string();
    let mut header = Vec::new();
    if ledger.index().introducer(&config_hash)?.is_none() {
        header.push(EventKind::ArtifactAdded(ArtifactAdded {
            hash: config_hash,
            size: config_size,
            media_type: "application/toml".into(),
            origin: Origin::Config {
                path: config_path.clone(),
            },
        }));
    }
    header.push(EventKind::RunStarted(RunStarted {
        run_id,
        experiment: experiment.name.clone(),
        config: config_hash,
        config_path,
    }));
    ledger.append(header)?;

    let bars = MultiProgress::with_draw_target(if options.progress {
        ProgressDrawTarget::stderr()
    } else {
        ProgressDrawTarget::hidden()
    });
    let env = Environment::current();
    let mut produced: HashMap<(String, String), Hash> = HashMap::new();
    let mut steps = Vec::new();
    let total = experiment.nodes.len();

    for (i, node) in experiment.nodes.iter().enumerate() {
        let stage = registry
            .get(&node.stage)
            .ok_or_else(|| Error::Invalid(format!("unknown stage `{}`", node.stage)))?;
        let mut inputs = Vec::new();
        for (name, reference) in &node.inputs {
            let hash = match reference {
                InputRef::Output { node, output } => produced[&(node.clone(), output.clone())],
                InputRef::Artifact(what) => {
                    let hash = ledger.resolve(what).map_err(|e| {
                        Error::Invalid(format!(
                            "{}: stage `{}` input `{name}`: {e}",
                            experiment.path.display(),
                            node.id
                        ))
                    })?;
                    if !ledger.store().contains(&hash) {
                        return Err(Error::NotFound(format!(
                            "stage `{}` input `{name}`: artifact {} is not in the store",
                            node.id,
                            hash.short()
                        )));
                    }
                    hash
                }
            };
            inputs.push((name.clone(), hash));
        }
        let external = stage
            .external_inputs(&node.config, experiment.base_dir())
            .map_err(|e| stage_error(node.id.as_str(), &node.stage, &e))?;
        // Every external input is stored first, then recorded in one durable batch.
        let mut added = Vec::new();
        let mut batched = std::collections::HashSet::new();
        let hidden = ProgressBar::hidden();
        for ext in external {
            let (hash, _, event) = match ext.source {
                ExternalSource::File(path) => ledger.prepare_add_file(&path, &hidden)?,
                ExternalSource::Snapshot {
                    bytes,
                    media_type,
                    origin,
                } => ledger.prepare_add(
                    &mut bytes.as_slice(),
                    &origin,
                    &media_type,
                    Origin::File {
                        path: origin.clone(),
                    },
                )?,
            };
            if let Some(event) = event.filter(|_| batched.insert(hash)) {
                added.push(event);
            }
            inputs.push((ext.name, hash));
        }
        if !added.is_empty() {
            ledger.append(added)?;
        }
        inputs.sort();
        let config = canonical_json(&node.config);
        let key = action_key(&node.stage, node.version, &config, &inputs, node.seed);

        let bar = bars.add(ProgressBar::new_spinner());
        bar.set_style(
            ProgressStyle::with_template("{prefix:.bold} {spinner} {msg} {wide_bar} {pos}/{len}")
                .expect("valid template"),
        );
        bar.set_prefix(format!("[{}/{total}] {} ({})", i + 1, node.id, node.stage));
        let started = Instant::now();
        let started_ms = now_ms();

        let record = |outputs: Vec<Output>, metrics: Vec<(String, f64)>, status| StageRun {
            run_id,
            node: node.id.clone(),
            stage: node.stage.clone(),
            version: node.version,
            action_key: key,
            config: config.clone(),
            seed: node.seed,
            inputs: inputs.clone(),
            outputs,
            metrics,
            env: env.clone(),
            status,
            started_ms,
            ended_ms: now_ms(),
        };
        let cached = cached_run(ledger, &key)?;
        let (outputs, metrics, status, outcome) = match cached {
            Some((source_seq, source)) => {
                bar.finish_with_message("cached");
                tracing::info!("{}: cache hit (action {})", node.id, key.short());
                (
                    source.outputs,
                    source.metrics,
                    RunStatus::Cached { source_seq },
                    Outcome::Cached { source_seq },
                )
            }
            None => {
                tracing::info!("{}: executing {} v{}", node.id, node.stage, node.version);
                let mut ctx = StageContext::new(
                    Mode::Run(ledger),
                    experiment.base_dir(),
                    &node.id,
                    node.config.clone(),
                    node.seed,
                    inputs.clone(),
                    bar.clone(),
                );
                let result = stage.execute(&mut ctx);
                let finished = ctx.finish();
                let checked = result
                    .map_err(|e| stage_error(&node.id, &node.stage, &e))
                    .and(finished)
                    .and_then(|(outputs, metrics)| {
                        check_outputs(stage.outputs(), &outputs, &node.id)?;
                        Ok((outputs, metrics))
                    });
                let (outputs, metrics) = match checked {
                    Ok(done) => done,
                    Err(error) => {
                        bar.abandon_with_message("failed");
                        let status = RunStatus::Failed {
                            error: error.to_string(),
                        };
                        let failed = record(Vec::new(), Vec::new(), status);
                        ledger.append_one(EventKind::StageRun(failed))?;
                        return Err(error);
                    }
                };
                bar.finish_with_message("done");
                (outputs, metrics, RunStatus::Succeeded, Outcome::Executed)
            }
        };
        for o in &outputs {
            produced.insert((node.id.clone(), o.name.clone()), o.hash);
        }
        let succeeded = record(outputs.clone(), metrics.clone(), status);
        let stored = ledger.append_one(EventKind::StageRun(succeeded))?;
        steps.push(StepReport {
            node: node.id.clone(),
            stage: node.stage.clone(),
            outcome,
            action_key: key.to_hex(),
            outputs: outputs
                .iter()
                .map(|o| (o.name.clone(), o.hash.to_hex()))
                .collect(),
            metrics,
            seconds: started.elapsed().as_secs_f64(),
            event_seq: stored.event.seq,
        });
    }
    ledger.flush()?;
    Ok(RunReport {
        run_id: run_id.to_hex(),
        experiment: experiment.name.clone(),
        steps,
    })
}

/// The successful run recorded under `key`, if all its outputs are still stored.
fn cached_run(ledger: &Ledger, key: &Hash) -> Result<Option<(u64, StageRun)>> {
    let Some(seq) = ledger.index().action(key)? else {
        return Ok(None);
    };
    // A foreign step is in the action index only when its import was trusted.
    let (EventKind::StageRun(run), _) = ledger.event(seq)?.event.kind.into_claim() else {
        return Ok(None);
    };
    let intact = run.outputs.iter().all(|o| ledger.store().contains(&o.hash));
    Ok(intact.then_some((seq, run)))
}

fn check_outputs(declared: &[&str], outputs: &[Output], node: &str) -> Result<()> {
    for name in declared {
        if !outputs.iter().any(|o| o.name == *name) {
            return Err(Error::Invalid(format!(
                "stage `{node}` finished without producing its output `{name}`"
            )));
        }
    }
    Ok(())
}

fn stage_error(node: &str, stage: &str, e: &anyhow::Error) -> Error {
    Error::Stage(format!("stage `{node}` ({stage}) failed: {e:#}"))
}
