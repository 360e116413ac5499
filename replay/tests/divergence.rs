//! A step that does not reproduce: `replay` names what differs in each output, structured
//! (in the report `ledger replay --json` prints) and as text.

use candle_core::{Device, Tensor};
use ledger::config::{Experiment, ParamError};
use ledger::runner::{run, RunOptions};
use ledger::stage::{InputSpec, Registry, Stage, StageContext};
use ledger::{Hash, Ledger, Wait};
use replay::explain::Divergence;
use replay::{ReplayOptions, Verdict};
use serde_json::json;
use std::sync::atomic::{AtomicU32, Ordering};

/// Counts executions; its outputs depend on the count, as a stage with hidden state would.
static EXECUTIONS: AtomicU32 = AtomicU32::new(0);

struct Drifting;

impl Stage for Drifting {
    fn name(&self) -> &'static str {
        "drifting"
    }
    fn version(&self) -> u32 {
        1
    }
    fn description(&self) -> &'static str {
        "scores and a checkpoint that change with every execution"
    }
    fn inputs(&self) -> &'static [InputSpec] {
        &[]
    }
    fn outputs(&self) -> &'static [&'static str] {
        &["scores", "model"]
    }
    fn check(&self, params: toml::Table) -> Result<serde_json::Value, ParamError> {
        match params.keys().next() {
            Some(k) => Err(ParamError::new(k.clone(), "no parameters")),
            None => Ok(json!({})),
        }
    }
    fn execute(&self, ctx: &mut StageContext) -> anyhow::Result<()> {
        let n = EXECUTIONS.fetch_add(1, Ordering::SeqCst);
        let first = n == 0;
        let scores = json!({
            "summary": { "resolved": if first { 2 } else { 1 } },
            "instances": [
                { "instance_id": "django__django-11099", "resolved": first },
                { "instance_id": "astropy__astropy-12907", "resolved": true },
            ],
        });
        ctx.write_output("scores", "application/json", &serde_json::to_vec(&scores)?)?;
        let w = Tensor::new(&[1.0f32, 2.0 + n as f32 * 0.5], &Device::Cpu)?;
        let b = Tensor::new(&[0.0f32], &Device::Cpu)?;
        let bytes = model::checkpoint::to_safetensors(
            &[("w".to_string(), w), ("b".to_string(), b)],
            &[("format", "pt".to_string())],
        )?;
        ctx.write_output("model", "application/x-safetensors", &bytes)?;
        Ok(())
    }
}

#[test]
fn replay_reports_which_instances_and_tensors_diverged() {
    let dir = tempfile::tempdir().unwrap();
    let ledger_dir = dir.path().join("ledger");
    Ledger::init(&ledger_dir).unwrap();
    let config = dir.path().join("eval.toml");
    std::fs::write(
        &config,
        "[experiment]\nname = \"eval\"\n\n[[stage]]\nid = \"eval\"\nuses = \"drifting\"\n",
    )
    .unwrap();
    let mut registry = Registry::new();
    registry.register(Box::new(Drifting));
    let experiment = Experiment::load(&config, &registry).unwrap();
    let mut ledger = Ledger::open_writer(&ledger_dir, Wait::Block).unwrap();
    let report = run(
        &mut ledger,
        &registry,
        &experiment,
        &RunOptions {
            progress: false,
            ..Default::default()
        },
    )
    .unwrap();
    let (_, scores) = report.steps[0]
        .outputs
        .iter()
        .find(|(name, _)| name == "scores")
        .unwrap();
    let scores = Hash::from_hex(scores).unwrap();

    let options = ReplayOptions {
        repeat: 1,
        ..ReplayOptions::default()
    };
    let replayed = replay::replay(&ledger, &registry, &scores, &options).unwrap();
    assert_eq!(replayed.verdict, Verdict::NotReproducible);
    let outputs = &replayed.steps[0].outputs;
    let output = |name: &str| outputs.iter().find(|o| o.name == name).unwrap();

    let Some(Divergence::Json(j)) = &output("scores").divergence else {
        panic!("scores: {:?}", output("scores").divergence)
    };
    let records = j.records.as_ref().unwrap();
    assert_eq!(records.changed_count, 1);
    assert_eq!(records.changed[0].id, "django__django-11099");
    assert_eq!(records.changed[0].fields[0].path, "resolved");
    assert_eq!(j.fields[0].path, "summary.resolved");

    let Some(Divergence::Tensors(t)) = &output("model").divergence else {
        panic!("model: {:?}", output("model").divergence)
    };
    assert_eq!((t.identical, t.changed_count), (1, 1));
    assert_eq!(t.changed[0].name, "w");
    assert_eq!(t.changed[0].differing, Some(1));
    assert_eq!(t.changed[0].max_abs_diff, Some(0.5));

    // The JSON report carries the structure; the text report the explanation.
    let v = serde_json::to_value(&replayed).unwrap();
    let model = v["steps"][0]["outputs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["name"] == "model")
        .unwrap()
        .clone();
    assert_eq!(model["divergence"]["kind"], "tensors");
    assert_eq!(model["divergence"]["changed"][0]["name"], "w");
    let text = replayed.to_string();
    assert!(
        text.contains("django__django-11099: resolved true → false"),
        "{text}"
    );
    assert!(text.contains("checkpoint: 1 of 2 tensors differ"), "{text}");
    assert!(
        text.ends_with("NOT reproducible: first divergence at step #2"),
        "{text}"
    );
}
