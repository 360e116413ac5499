//! `swebench`: a SWE-bench / SWE-rebench / SWE-smith task file as users have it — HF parquet
//! (e.g. the `test` split of SWE-bench Verified), a JSON array or JSONL, list fields as lists
//! or JSON strings — into the `instances` JSONL that `rollout` reads.
//!
//! Params: `dataset` (the file, relative to the config; an external input, keyed by its
//! bytes), `instance_ids` (keep only these, in the file's order; empty: all), `limit`
//! (first N; 0: all), `overrides` (per instance id, fields that replace or add to the
//! instance's, e.g. `log_parser`, `test_cmd`, `image`, or an offline environment's
//! `base_commit`). Where an instance runs is `rollout`'s choice: its `image`, else the
//! official image `swebench/sweb.eval.x86_64.<id>` when the engine has it.

use super::synthesize::jsonl;
use anyhow::{bail, Context};
use ledger::config::{parse_params, ParamError};
use ledger::stage::{ExternalInput, ExternalSource, InputSpec, Stage, StageContext};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Params {
    pub dataset: String,
    #[serde(default)]
    pub instance_ids: Vec<String>,
    #[serde(default)]
    pub limit: usize,
    #[serde(default)]
    pub overrides: BTreeMap<String, serde_json::Map<String, serde_json::Value>>,
}

pub struct SweBench;

const INPUTS: [InputSpec; 0] = [];
const DATASET: &str = "dataset";

impl Stage for SweBench {
    fn name(&self) -> &'static str {
        "swebench"
    }
    fn version(&self) -> u32 {
        1
    }
    fn description(&self) -> &'static str {
        "a SWE-bench task file (HF parquet, JSON, JSONL) → instances JSONL for rollout"
    }
    fn inputs(&self) -> &'static [InputSpec] {
        &INPUTS
    }
    fn outputs(&self) -> &'static [&'static str] {
        &["instances"]
    }

    fn check(&self, params: toml::Table) -> Result<serde_json::Value, ParamError> {
        let p: Params = parse_params(params)?;
        if env::dataset::Format::of(Path::new(&p.dataset)).is_none() {
            return Err(ParamError::new(
                "dataset",
                format!("`{}` is no .parquet, .json or .jsonl file", p.dataset),
            ));
        }
        Ok(serde_json::to_value(p).expect("params serialize"))
    }

    fn external_inputs(
        &self,
        config: &serde_json::Value,
        base_dir: &Path,
    ) -> anyhow::Result<Vec<ExternalInput>> {
        let p: Params = serde_json::from_value(config.clone())?;
        let path = base_dir.join(&p.dataset);
        if !path.is_file() {
            bail!("dataset `{}` is not a file ({})", p.dataset, path.display());
        }
        Ok(vec![ExternalInput {
            name: DATASET.into(),
            source: ExternalSource::File(path),
        }])
    }

    fn execute(&self, ctx: &mut StageContext) -> anyhow::Result<()> {
        let p: Params = ctx.params()?;
        let format = env::dataset::Format::of(Path::new(&p.dataset)).expect("checked");
        let bytes = ctx.read_input(DATASET)?;
        let mut all = env::dataset::read(&bytes, format, &p.dataset)?;
        ctx.metric("dataset_instances", all.len() as f64);
        if !p.instance_ids.is_empty() {
            for id in &p.instance_ids {
                if !all.iter().any(|i| &i.instance_id == id) {
                    bail!("instance_ids: `{id}` is not in {}", p.dataset);
                }
            }
            all.retain(|i| p.instance_ids.contains(&i.instance_id));
        }
        if p.limit > 0 {
            all.truncate(p.limit);
        }
        let mut out = Vec::with_capacity(all.len());
        for inst in all {
            let mut v = serde_json::to_value(&inst)?;
            if let Some(fields) = p.overrides.get(&inst.instance_id) {
                let obj = v.as_object_mut().expect("an instance is an object");
                for (k, val) in fields {
                    obj.insert(k.clone(), val.clone());
                }
            }
            // Read back: overrides obey the schema too.
            let checked = env::instance::parse_instance(&v.to_string())
                .with_context(|| format!("overrides of {}", inst.instance_id))?;
            env::grading::instance_parser(&checked)?;
            out.push(checked);
        }
        for id in p.overrides.keys() {
            if !out.iter().any(|i| &i.instance_id == id) {
                bail!("overrides: `{id}` is not among the selected instances");
            }
        }
        if out.is_empty() {
            bail!("no instance selected from {}", p.dataset);
        }
        ctx.metric("instances", out.len() as f64);
        ctx.write_output("instances", "application/x-ndjson", &jsonl(&out)?)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    /// The config users with the official images run validates: stages, inputs, params.
    #[test]
    fn the_verified_config_validates() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../configs/swebench-verified.toml");
        let exp = ledger::config::Experiment::load(&path, &crate::registry())
            .unwrap_or_else(|e| panic!("{e}"));
        let stages: Vec<(&str, &str)> = exp
            .nodes
            .iter()
            .map(|n| (n.id.as_str(), n.stage.as_str()))
            .collect();
        assert_eq!(
            stages,
            [
                ("verified", "swebench"),
                ("gold", "rollout"),
                ("empty", "rollout"),
                ("agent", "rollout")
            ]
        );
        let agent = &exp.nodes[3].config;
        assert_eq!(
            (agent["runs"].as_u64(), agent["step_limit"].as_u64()),
            (Some(4), Some(100))
        );
    }

    #[test]
    fn datasets_must_be_task_files() {
        use ledger::stage::Stage;
        let mut t = toml::Table::new();
        t.insert("dataset".into(), "tasks.csv".into());
        let e = super::SweBench.check(t).unwrap_err();
        assert_eq!(e.key.as_deref(), Some("dataset"));
    }
}
