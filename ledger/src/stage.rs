//! The `Stage` trait and the context a stage executes in.
//!
//! A stage is a pure function of its configuration, its input artifacts, its seed and the
//! external responses it observes: everything it reads comes through `StageContext`, and
//! everything it produces goes out through it, so the runner can key, cache and replay it.

use crate::config::ParamError;
use crate::error::{Error, Result};
use crate::event::Output;
use crate::hash::Hash;
use crate::manifest::Manifest;
use crate::observe::Observer;
use crate::plan::{Plan, PlanContext, Unit};
use crate::store::{BlobStore, BlobWriter, VerifiedBlob};
use indicatif::ProgressBar;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

#[derive(Clone, Copy, Debug)]
pub struct InputSpec {
    /// The input's name; `*` accepts inputs of any name (a stage taking however many).
    pub name: &'static str,
    pub required: bool,
    pub description: &'static str,
}

/// The name of an `InputSpec` that accepts inputs of any name.
pub const ANY_INPUT: &str = "*";

/// Something outside the ledger that a configuration reads. The runner ingests it as an
/// artifact before keying, so a changed file (or a moved git branch) is a different action.
#[derive(Clone, Debug)]
pub struct ExternalInput {
    /// Input name recorded on the stage run, e.g. `file:src/lib.rs`.
    pub name: String,
    pub source: ExternalSource,
}

#[derive(Clone, Debug)]
pub enum ExternalSource {
    /// A file, ingested as it is.
    File(PathBuf),
    /// A description of external state that pins it by content (e.g. a git commit id),
    /// recorded as an artifact whose origin is `origin`.
    Snapshot {
        bytes: Vec<u8>,
        media_type: String,
        origin: String,
    },
}

pub trait Stage: Send + Sync {
    fn name(&self) -> &'static str;
    /// Bump when the same inputs and config would produce different bytes.
    fn version(&self) -> u32;
    fn description(&self) -> &'static str;
    fn inputs(&self) -> &'static [InputSpec];
    fn outputs(&self) -> &'static [&'static str];
    /// The outputs a configuration produces (a stage whose outputs depend on its parameters,
    /// such as `command`, says so here); by default `outputs`.
    fn outputs_for(&self, _config: &serde_json::Value) -> Vec<String> {
        self.outputs().iter().map(|o| o.to_string()).collect()
    }
    /// Validates the parameter table and returns the canonical config, defaults filled in.
    fn check(&self, params: toml::Table) -> Result<serde_json::Value, ParamError>;
    /// Files outside the ledger this configuration reads, relative paths resolved against
    /// `base_dir` (the config file's directory).
    fn external_inputs(
        &self,
        _config: &serde_json::Value,
        _base_dir: &Path,
    ) -> anyhow::Result<Vec<ExternalInput>> {
        Ok(Vec::new())
    }
    /// How the work splits into units (see `plan`). The default is one unit, the whole node.
    fn plan(&self, _plan: &PlanContext) -> anyhow::Result<Plan> {
        Ok(Plan::whole())
    }
    /// The config a unit is keyed and recorded by: the node's, with the unit's id and
    /// parameters (`$unit`). A stage may leave out what the unit does not depend on (the list
    /// of every package, when the unit makes one of them), so that a change there leaves the
    /// unit's key and cached result alone; the unit then executes with exactly this config.
    fn unit_config(&self, config: &serde_json::Value, unit: &Unit) -> serde_json::Value {
        crate::runner::unit_config(config, unit)
    }
    /// The node's metrics from its units' metrics (for a plan of several units). The default
    /// sums each metric over the units.
    fn combine_metrics(&self, units: &[Vec<(String, f64)>]) -> Vec<(String, f64)> {
        sum_metrics(units)
    }
    /// Executes one unit (`ctx.unit()`; `None` for a whole-node plan).
    fn execute(&self, ctx: &mut StageContext) -> anyhow::Result<()>;
}

/// Each metric summed over the units, in the order of first appearance.
pub fn sum_metrics(units: &[Vec<(String, f64)>]) -> Vec<(String, f64)> {
    let mut out: Vec<(String, f64)> = Vec::new();
    for metrics in units {
        for (name, value) in metrics {
            match out.iter_mut().find(|(n, _)| n == name) {
                Some((_, total)) => *total += value,
                None => out.push((name.clone(), *value)),
            }
        }
    }
    out
}

/// The stages a binary knows, by name.
#[derive(Default)]
pub struct Registry {
    stages: BTreeMap<&'static str, Box<dyn Stage>>,
}

impl Registry {
    pub fn new() -> Registry {
        Registry::default()
    }

    pub fn register(&mut self, stage: Box<dyn Stage>) {
        self.stages.insert(stage.name(), stage);
    }

    pub fn get(&self, name: &str) -> Option<&dyn Stage> {
        self.stages.get(name).map(|s| s.as_ref())
    }

    pub fn names(&self) -> Vec<&'static str> {
        self.stages.keys().copied().collect()
    }

    pub fn iter(&self) -> impl Iterator<Item = &dyn Stage> {
        self.stages.values().map(|s| s.as_ref())
    }
}

/// What one unit works on: everything about it that is not where its bytes go.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct Job {
    pub node: String,
    /// `None` for a whole-node plan.
    pub unit: Option<Unit>,
    /// The node's canonical config (the unit's id and parameters are in `unit`).
    pub config: serde_json::Value,
    pub seed: u64,
    pub inputs: Vec<(String, Hash)>,
    /// The experiment config's directory: where relative locations of external sources
    /// (e.g. a git clone) are resolved. Content is pinned by the inputs, never by this path.
    pub workdir: PathBuf,
}

/// Where a unit's bytes come from and go to, and its way to the recorded world.
#[derive(Clone)]
pub struct Io {
    pub inputs: BlobStore,
    /// The ledger's store in a run; a scratch store in a replay.
    pub outputs: BlobStore,
    pub observer: Observer,
    pub progress: ProgressBar,
}

/// What a unit produced.
#[derive(Debug)]
pub struct Finished {
    /// Sorted by name.
    pub outputs: Vec<Output>,
    pub metrics: Vec<(String, f64)>,
    /// Every observation the unit was answered with: (request, response).
    pub observed: Vec<(Hash, Hash)>,
}

pub struct StageContext {
    job: Job,
    io: Io,
    outputs: Vec<Output>,
    metrics: Vec<(String, f64)>,
    /// Damage found in blobs the stage opened and did not read to the end (see
    /// `BlobStore::open_verified`): the unit fails if there is any.
    unread_damage: Arc<Mutex<Vec<String>>>,
}

impl StageContext {
    pub fn new(job: Job, io: Io) -> StageContext {
        StageContext {
            job,
            io,
            outputs: Vec::new(),
            metrics: Vec::new(),
            unread_damage: Arc::default(),
        }
    }

    fn input_store(&self) -> &BlobStore {
        &self.io.inputs
    }

    pub fn workdir(&self) -> &Path {
        &self.job.workdir
    }

    pub fn node(&self) -> &str {
        &self.job.node
    }

    /// The unit this context executes (`None`: the whole node).
    pub fn unit(&self) -> Option<&Unit> {
        self.job.unit.as_ref()
    }

    /// The unit's parameters, typed (an error for a whole-node plan).
    pub fn unit_params<T: serde::de::DeserializeOwned>(&self) -> anyhow::Result<T> {
        let unit = self
            .unit()
            .ok_or_else(|| anyhow::anyhow!("stage `{}` runs as one unit here", self.job.node))?;
        Ok(serde_json::from_value(unit.params.clone())?)
    }

    pub fn seed(&self) -> u64 {
        self.job.seed
    }

    pub fn config(&self) -> &serde_json::Value {
        &self.job.config
    }

    /// The stage's typed parameters (from the canonical config).
    pub fn params<T: serde::de::DeserializeOwned>(&self) -> anyhow::Result<T> {
        Ok(serde_json::from_value(self.job.config.clone())?)
    }

    pub fn inputs(&self) -> &[(String, Hash)] {
        &self.job.inputs
    }

    pub fn input(&self, name: &str) -> Result<Hash> {
        self.job
            .inputs
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, h)| *h)
            .ok_or_else(|| {
                Error::NotFound(format!("stage `{}` has no input `{name}`", self.job.node))
            })
    }

    /// A blob's bytes, checked against its address (a damaged blob is an error naming it).
    pub fn read_blob(&self, hash: &Hash) -> Result<Vec<u8>> {
        self.input_store().read(hash)
    }

    /// A blob as a stream, checked against its address as it is read: reading past its end
    /// fails if the bytes were altered, and a stream dropped early is checked then (the unit
    /// fails). A stage never builds an output from bytes that are not what its inputs name.
    pub fn open_blob(&self, hash: &Hash) -> Result<VerifiedBlob> {
        self.input_store()
            .open_verified(hash, Some(self.unread_damage.clone()))
    }

    /// The size of a stored blob.
    pub fn blob_size(&self, hash: &Hash) -> Result<u64> {
        self.input_store().size(hash)
    }

    pub fn read_input(&self, name: &str) -> Result<Vec<u8>> {
        self.read_blob(&self.input(name)?)
    }

    /// The parts of a blob: a manifest's (a dataset of shards), or the blob itself.
    pub fn parts(&self, hash: &Hash) -> Result<Vec<Hash>> {
        Manifest::parts_of(self.input_store(), hash)
    }

    /// A whole input's bytes: a manifest's parts concatenated, or the blob.
    pub fn read_whole(&self, hash: &Hash) -> Result<Vec<u8>> {
        let mut bytes = Vec::new();
        for part in self.parts(hash)? {
            bytes.extend(self.read_blob(&part)?);
        }
        Ok(bytes)
    }

    pub fn write_output(&mut self, name: &str, media_type: &str, bytes: &[u8]) -> Result<Hash> {
        let (hash, size) = self.io.outputs.put_bytes(bytes)?;
        self.record_output(name, media_type, hash, size);
        Ok(hash)
    }

    /// A streaming writer for a large output; hand it back to `finish_output`.
    pub fn output_writer(&self) -> Result<BlobWriter> {
        self.io.outputs.writer()
    }

    pub fn finish_output(
        &mut self,
        name: &str,
        media_type: &str,
        writer: BlobWriter,
    ) -> Result<Hash> {
        let (hash, size) = writer.finish()?;
        self.record_output(name, media_type, hash, size);
        Ok(hash)
    }

    /// Where outputs go, for writers that make several outputs before recording them (see
    /// `add_output`).
    pub fn output_store(&self) -> BlobStore {
        self.io.outputs.clone()
    }

    /// Records a blob already written to the output store as output `name`.
    pub fn add_output(
        &mut self,
        name: &str,
        media_type: &str,
        hash: Hash,
        size: u64,
    ) -> Result<()> {
        if !self.io.outputs.contains(&hash) {
            return Err(Error::NotFound(format!(
                "stage `{}`: output `{name}` ({}) was never written",
                self.job.node,
                hash.short()
            )));
        }
        self.record_output(name, media_type, hash, size);
        Ok(())
    }

    fn record_output(&mut self, name: &str, media_type: &str, hash: Hash, size: u64) {
        self.outputs.retain(|o| o.name != name);
        self.outputs.push(Output {
            name: name.to_string(),
            hash,
            size,
            media_type: media_type.to_string(),
        });
    }

    pub fn metric(&mut self, name: &str, value: f64) {
        self.metrics.retain(|(n, _)| n != name);
        self.metrics.push((name.to_string(), value));
    }

    pub fn progress(&self) -> &ProgressBar {
        &self.io.progress
    }

    /// The unit's observer, to hand to worker threads (it is `Send + Clone`; what any clone
    /// is answered with counts among the unit's observations).
    pub fn observer(&self) -> &Observer {
        &self.io.observer
    }

    /// True when outputs go to a scratch store and every observation must come from the record.
    pub fn replaying(&self) -> bool {
        self.io.observer.replaying()
    }

    /// True in a replay that should perform external actions again to compare them.
    pub fn reexecuting(&self) -> bool {
        self.io.observer.reexecuting()
    }

    /// The recorded response to `request`, if there is one (checked against its hash).
    pub fn recorded(&self, request: &[u8]) -> anyhow::Result<Option<Vec<u8>>> {
        Ok(self.io.observer.recorded(request)?)
    }

    /// Answers an external request from its recorded observation, or performs it with
    /// `fetch` and records the response durably before returning it. In a replay, an
    /// unrecorded request is an error: replays never touch the network.
    pub fn observe(
        &self,
        source: &str,
        request: &[u8],
        fetch: impl FnOnce() -> anyhow::Result<Vec<u8>>,
    ) -> anyhow::Result<Vec<u8>> {
        self.io.observer.observe(source, request, fetch)
    }

    /// What the unit produced; an error if a blob it streamed was damaged (found after the
    /// stage stopped reading it).
    pub fn finish(&mut self) -> Result<Finished> {
        let damage = std::mem::take(&mut *self.unread_damage.lock().expect("not poisoned"));
        if let Some(first) = damage.first() {
            return Err(Error::Corrupt(format!(
                "stage `{}` read a damaged input: {first}",
                self.job.node
            )));
        }
        let mut outputs = std::mem::take(&mut self.outputs);
        outputs.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(Finished {
            outputs,
            metrics: std::mem::take(&mut self.metrics),
            observed: self.io.observer.observed(),
        })
    }
}
