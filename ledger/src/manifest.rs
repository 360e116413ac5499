//! Manifests: a node output made of several parts (a dataset as a manifest of shards).
//!
//! A manifest is a small canonical JSON blob naming its parts by address, in order. Its bytes
//! depend only on the parts, so the same parts make the same manifest on any executor. Read
//! whole (`ledger cat`), a manifest is the concatenation of its parts: zstd frames and JSONL
//! lines concatenate into a valid stream, so `ledger cat H | zstdcat | jq` reads a dataset of
//! shards as it read one shard.

use crate::error::{Error, Result};
use crate::hash::Hash;
use crate::store::BlobStore;
use serde::{Deserialize, Serialize};
use std::io::Read;

pub const MEDIA_TYPE: &str = "application/vnd.davinci-ledger.manifest+json";
const FORMAT: &str = "davinci-ledger/manifest/v1";

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Part {
    /// The unit that made it.
    pub unit: String,
    #[serde(with = "crate::hash::hex")]
    pub hash: Hash,
    pub size: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub manifest: String,
    /// The media type of every part.
    pub media_type: String,
    pub parts: Vec<Part>,
}

impl Manifest {
    pub fn new(media_type: &str, parts: Vec<Part>) -> Manifest {
        Manifest {
            manifest: FORMAT.to_string(),
            media_type: media_type.to_string(),
            parts,
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut bytes = serde_json::to_vec(self).expect("a manifest serializes");
        bytes.push(b'\n');
        bytes
    }

    /// The manifest these bytes are, if they are one.
    pub fn decode(bytes: &[u8]) -> Option<Manifest> {
        if !bytes.starts_with(b"{\"manifest\":\"") {
            return None;
        }
        serde_json::from_slice::<Manifest>(bytes)
            .ok()
            .filter(|m| m.manifest == FORMAT)
    }

    /// The total size of the parts.
    pub fn size(&self) -> u64 {
        self.parts.iter().map(|p| p.size).sum()
    }

    /// The manifest stored at `hash`, if that blob is one (only its first bytes are read
    /// when it is not).
    pub fn read(store: &BlobStore, hash: &Hash) -> Result<Option<Manifest>> {
        let mut head = [0u8; 13];
        let mut f = store.open(hash)?;
        let n = f
            .read(&mut head)
            .map_err(|e| Error::io(&store.path(hash), e))?;
        if &head[..n] != b"{\"manifest\":\"" {
            return Ok(None);
        }
        Ok(Manifest::decode(&store.read(hash)?))
    }

    /// The parts of `hash`: a manifest's, or the blob itself.
    pub fn parts_of(store: &BlobStore, hash: &Hash) -> Result<Vec<Hash>> {
        Ok(match Manifest::read(store, hash)? {
            Some(m) => m.parts.into_iter().map(|p| p.hash).collect(),
            None => vec![*hash],
        })
    }
}

/// A reader of a blob as a whole: a manifest's parts one after another (each checked against
/// its address as it streams), or the blob itself.
pub fn open_whole(store: &BlobStore, hash: &Hash) -> Result<Box<dyn Read + Send>> {
    let Some(m) = Manifest::read(store, hash)? else {
        return Ok(Box::new(store.open_verified(hash, None)?));
    };
    let mut readers: Vec<Box<dyn Read + Send>> = Vec::new();
    for part in &m.parts {
        readers.push(Box::new(store.open_verified(&part.hash, None)?));
    }
    Ok(Box::new(Concat {
        readers: readers.into(),
    }))
}

struct Concat {
    readers: std::collections::VecDeque<Box<dyn Read + Send>>,
}

impl Read for Concat {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while let Some(r) = self.readers.front_mut() {
            let n = r.read(buf)?;
            if n > 0 || buf.is_empty() {
                return Ok(n);
            }
            self.readers.pop_front();
        }
        Ok(0)
    }
}
