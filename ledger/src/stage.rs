//! The `Stage` trait and the context a stage executes in.
//!
//! A stage is a pure function of its configuration, its input artifacts, its seed and the
//! external responses it observes: everything it reads comes through `StageContext`, and
//! everything it produces goes out through it, so the runner can key, cache and replay it.

use crate::config::ParamError;
use crate::error::{Error, Result};
use crate::event::{EventKind, Observation, Output};
use crate::hash::Hash;
use crate::ledger::Ledger;
use crate::store::{BlobStore, BlobWriter, VerifiedBlob};
use indicatif::ProgressBar;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

#[derive(Clone, Copy, Debug)]
pub struct InputSpec {
    pub name: &'static str,
    pub required: bool,
    pub description: &'static str,
}

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
    fn execute(&self, ctx: &mut StageContext) -> anyhow::Result<()>;
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

/// How observations behave: recorded and reused in a run, reused only in a replay.
pub enum Mode<'a> {
    Run(&'a mut Ledger),
    /// Offline: outputs go to a scratch store, every observation must already be recorded.
    Replay {
        ledger: &'a Ledger,
        scratch: &'a BlobStore,
    },
    /// A replay that also performs external actions again (e.g. rollout commands in fresh
    /// containers) to compare them with the record; the record still decides every output.
    Reexecute {
        ledger: &'a Ledger,
        scratch: &'a BlobStore,
    },
}

/// What a stage produced: its outputs (sorted by name) and its metrics.
pub type Finished = (Vec<Output>, Vec<(String, f64)>);

pub struct StageContext<'a> {
    mode: Mode<'a>,
    /// The experiment config's directory: where relative locations of external sources
    /// (e.g. a git clone) are resolved. Content is pinned by the inputs, never by this path.
    workdir: PathBuf,
    node: String,
    config: serde_json::Value,
    seed: u64,
    inputs: Vec<(String, Hash)>,
    outputs: Vec<Output>,
    metrics: Vec<(String, f64)>,
    progress: ProgressBar,
    /// Damage found in blobs the stage opened and did not read to the end (see
    /// `BlobStore::open_verified`): the step fails if there is any.
    unread_damage: Arc<Mutex<Vec<String>>>,
}

impl<'a> StageContext<'a> {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        mode: Mode<'a>,
        workdir: &Path,
        node: &str,
        config: serde_json::Value,
        seed: u64,
        inputs: Vec<(String, Hash)>,
        progress: ProgressBar,
    ) -> StageContext<'a> {
        StageContext {
            mode,
            workdir: workdir.to_path_buf(),
            node: node.to_string(),
            config,
            seed,
            inputs,
            outputs: Vec::new(),
            metrics: Vec::new(),
            progress,
            unread_damage: Arc::default(),
        }
    }

    fn ledger(&self) -> &Ledger {
        match &self.mode {
            Mode::Run(l) => l,
            Mode::Replay { ledger, .. } | Mode::Reexecute { ledger, .. } => ledger,
        }
    }

    fn input_store(&self) -> &BlobStore {
        self.ledger().store()
    }

    fn output_store(&self) -> &BlobStore {
        match &self.mode {
            Mode::Run(l) => l.store(),
            Mode::Replay { scratch, .. } | Mode::Reexecute { scratch, .. } => scratch,
        }
    }

    pub fn workdir(&self) -> &Path {
        &self.workdir
    }

    pub fn node(&self) -> &str {
        &self.node
    }

    pub fn seed(&self) -> u64 {
        self.seed
    }

    pub fn config(&self) -> &serde_json::Value {
        &self.config
    }

    /// The stage's typed parameters (from the canonical config).
    pub fn params<T: serde::de::DeserializeOwned>(&self) -> anyhow::Result<T> {
        Ok(serde_json::from_value(self.config.clone())?)
    }

    pub fn inputs(&self) -> &[(String, Hash)] {
        &self.inputs
    }

    pub fn input(&self, name: &str) -> Result<Hash> {
        self.inputs
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, h)| *h)
            .ok_or_else(|| Error::NotFound(format!("stage `{}` has no input `{name}`", self.node)))
    }

    /// A blob's bytes, checked against its address (a damaged blob is an error naming it).
    pub fn read_blob(&self, hash: &Hash) -> Result<Vec<u8>> {
        self.input_store().read(hash)
    }

    /// A blob as a stream, checked against its address as it is read: reading past its end
    /// fails if the bytes were altered, and a stream dropped early is checked then (the step
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

    pub fn write_output(&mut self, name: &str, media_type: &str, bytes: &[u8]) -> Result<Hash> {
        let (hash, size) = self.output_store().put_bytes(bytes)?;
        self.record_output(name, media_type, hash, size);
        Ok(hash)
    }

    /// A streaming writer for a large output; hand it back to `finish_output`.
    pub fn output_writer(&self) -> Result<BlobWriter> {
        self.output_store().writer()
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
        &self.progress
    }

    /// Answers an external request from its recorded observation, or performs it with
    /// `fetch` and records the response durably before returning it. In a replay, an
    /// unrecorded request is an error: replays never touch the network.
    /// True when outputs go to a scratch store and every observation must come from the record.
    pub fn replaying(&self) -> bool {
        !matches!(self.mode, Mode::Run(_))
    }

    /// True in a replay that should perform external actions again to compare them.
    pub fn reexecuting(&self) -> bool {
        matches!(self.mode, Mode::Reexecute { .. })
    }

    /// The recorded response to `request`, if there is one (checked against its hash). A
    /// running stage is answered only by this ledger's own observations (or a trusted
    /// import's); a replay, which re-derives recorded outputs and records nothing, may also
    /// use those an imported bundle recorded for its steps.
    pub fn recorded(&self, request: &[u8]) -> anyhow::Result<Option<Vec<u8>>> {
        let request_hash = Hash::of(request);
        let index = self.ledger().index();
        let seq = match index.observation(&request_hash)? {
            Some(seq) => Some(seq),
            None if self.replaying() => index.foreign_observation(&request_hash)?,
            None => None,
        };
        let Some(seq) = seq else {
            return Ok(None);
        };
        let (crate::event::EventKind::Observation(o), _) =
            self.ledger().event(seq)?.event.kind.into_claim()
        else {
            return Ok(None);
        };
        // A recorded answer is only as good as its bytes (`read` checks them).
        match self.input_store().read(&o.response) {
            Ok(response) => Ok(Some(response)),
            Err(Error::Corrupt(_)) => anyhow::bail!(
                "the recorded {} response {} (event #{seq}) is damaged: its bytes no longer match; run `ledger verify`",
                o.source,
                o.response.short()
            ),
            Err(e) => Err(e.into()),
        }
    }

    pub fn observe(
        &mut self,
        source: &str,
        request: &[u8],
        fetch: impl FnOnce() -> anyhow::Result<Vec<u8>>,
    ) -> anyhow::Result<Vec<u8>> {
        let request_hash = Hash::of(request);
        if let Some(response) = self.recorded(request)? {
            return Ok(response);
        }
        match &mut self.mode {
            Mode::Replay { .. } | Mode::Reexecute { .. } => anyhow::bail!(
                "{source} request {} was never recorded; a replay cannot perform it",
                request_hash.short()
            ),
            Mode::Run(ledger) => {
                let response = fetch()?;
                let (hash, size) = ledger.store().put_bytes(&response)?;
                ledger.append_one(EventKind::Observation(Observation {
                    source: source.to_string(),
                    request: request_hash,
                    response: hash,
                    response_size: size,
                }))?;
                Ok(response)
            }
        }
    }

    /// The outputs (by name) and metrics; an error if a blob the stage streamed was damaged
    /// (found after the stage stopped reading it).
    pub fn finish(self) -> Result<Finished> {
        let damage = std::mem::take(&mut *self.unread_damage.lock().expect("not poisoned"));
        if let Some(first) = damage.first() {
            return Err(Error::Corrupt(format!(
                "stage `{}` read a damaged input: {first}",
                self.node
            )));
        }
        let mut outputs = self.outputs;
        outputs.sort_by(|a, b| a.name.cmp(&b.name));
        Ok((outputs, self.metrics))
    }
}
