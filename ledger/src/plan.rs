//! How a node's work splits into units: the plan a stage makes before anything executes.
//!
//! A unit is the smallest piece of work with its own action key (stage, version, the node's
//! canonical config with the unit's id and parameters, the unit's inputs, seed), its own
//! recorded outputs, metrics and observations. Units may depend on other units of the same
//! node (a reduce over map units, or a tokenizer trained before the shards are encoded). A
//! node's outputs are composed from its units' outputs: one unit's output as it is, or a
//! **manifest** listing several (a dataset as a manifest of shards).
//!
//! A plan of one unit that is the whole node ([`Plan::whole`]) is the old behaviour: the node
//! executes as one action and records one event.

use crate::hash::Hash;
use crate::manifest::Manifest;
use crate::store::BlobStore;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A unit of a node, as the stage context sees it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Unit {
    /// Unique within the node; part of the unit's action key and of its event's node name
    /// (`<node>/<id>`).
    pub id: String,
    /// What this unit does, beyond the node's config (an instance id, a page range); part of
    /// its action key.
    pub params: Value,
}

/// Where a unit input comes from.
#[derive(Clone, Debug, PartialEq)]
pub enum Source {
    /// A blob already known when planning (a node input, a part of one).
    Blob(Hash),
    /// An output of another unit of the same node.
    Unit { unit: String, output: String },
}

#[derive(Clone, Debug, PartialEq)]
pub struct UnitSpec {
    pub unit: Unit,
    pub inputs: Vec<(String, Source)>,
}

/// How a node output is made from unit outputs.
#[derive(Clone, Debug, PartialEq)]
pub enum Compose {
    /// One unit's output, as it is.
    Unit { unit: String, output: String },
    /// A manifest of these unit outputs, in this order (parts of media type `media_type`).
    Manifest {
        parts: Vec<(String, String)>,
        media_type: String,
    },
    /// A manifest of every output of these units whose name starts with `prefix` (for units
    /// that write a number of shards known only once they ran), in unit order, then output
    /// name order.
    ManifestOfPrefix {
        units: Vec<String>,
        prefix: String,
        media_type: String,
    },
}

/// A node's work: units, and how its outputs are made from theirs.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    pub units: Vec<UnitSpec>,
    pub outputs: Vec<(String, Compose)>,
}

/// The id of the one unit of a whole-node plan.
pub const WHOLE: &str = "";

impl Plan {
    /// The whole node as one unit: the old behaviour.
    pub fn whole() -> Plan {
        Plan {
            units: Vec::new(),
            outputs: Vec::new(),
        }
    }

    pub fn is_whole(&self) -> bool {
        self.units.is_empty()
    }
}

/// What a stage can see while it plans: its config, seed and inputs, and the blobs they name.
pub struct PlanContext<'a> {
    pub node: &'a str,
    pub config: &'a Value,
    pub seed: u64,
    pub inputs: &'a [(String, Hash)],
    pub store: &'a BlobStore,
}

impl PlanContext<'_> {
    pub fn input(&self, name: &str) -> Option<Hash> {
        self.inputs.iter().find(|(n, _)| n == name).map(|(_, h)| *h)
    }

    pub fn params<T: serde::de::DeserializeOwned>(&self) -> anyhow::Result<T> {
        Ok(serde_json::from_value(self.config.clone())?)
    }

    /// A blob's bytes, checked against its address.
    pub fn read(&self, hash: &Hash) -> crate::Result<Vec<u8>> {
        self.store.read(hash)
    }

    /// The parts of a blob: those of a manifest, or the blob itself.
    pub fn parts(&self, hash: &Hash) -> crate::Result<Vec<Hash>> {
        Manifest::parts_of(self.store, hash)
    }

    /// A whole input's bytes: a manifest's parts concatenated, or the blob.
    pub fn read_whole(&self, hash: &Hash) -> crate::Result<Vec<u8>> {
        let mut bytes = Vec::new();
        for part in self.parts(hash)? {
            bytes.extend(self.read(&part)?);
        }
        Ok(bytes)
    }
}

/// Unit ids for parts, from their addresses: adding, removing or moving a part elsewhere in a
/// manifest leaves every other unit's id — and so its action key and cached result — as it
/// was. A part that occurs again gets `-2`, `-3`, … after its id.
pub fn part_ids(prefix: &str, parts: &[Hash]) -> Vec<String> {
    let mut seen: std::collections::HashMap<Hash, usize> = std::collections::HashMap::new();
    parts
        .iter()
        .map(|h| {
            let n = seen.entry(*h).or_insert(0);
            *n += 1;
            let short = &h.to_hex()[..16];
            if *n == 1 {
                format!("{prefix}{short}")
            } else {
                format!("{prefix}{short}-{n}")
            }
        })
        .collect()
}

impl Plan {
    /// One unit per part of input `input` (a manifest's parts, or the blob itself), each
    /// reading its part under the name `input` and the node's `shared` inputs as they are;
    /// each node output of `outputs` (name, media type of its parts) is the manifest of the
    /// units' output of that name, in the input's order.
    pub fn per_part(
        p: &PlanContext,
        input: &str,
        shared: &[&str],
        outputs: &[(&str, &str)],
    ) -> crate::Result<Plan> {
        let hash = p.input(input).ok_or_else(|| {
            crate::Error::NotFound(format!("stage `{}` has no input `{input}`", p.node))
        })?;
        let parts = p.parts(&hash)?;
        let ids = part_ids("part.", &parts);
        let units: Vec<UnitSpec> = parts
            .iter()
            .zip(&ids)
            .map(|(part, id)| {
                let mut inputs = vec![(input.to_string(), Source::Blob(*part))];
                for name in shared {
                    if let Some(h) = p.input(name) {
                        inputs.push((name.to_string(), Source::Blob(h)));
                    }
                }
                UnitSpec {
                    unit: Unit {
                        id: id.clone(),
                        params: Value::Null,
                    },
                    inputs,
                }
            })
            .collect();
        let outputs = outputs
            .iter()
            .map(|(name, media_type)| {
                (
                    name.to_string(),
                    Compose::Manifest {
                        parts: ids
                            .iter()
                            .map(|id| (id.clone(), name.to_string()))
                            .collect(),
                        media_type: media_type.to_string(),
                    },
                )
            })
            .collect();
        Ok(Plan { units, outputs })
    }
}
