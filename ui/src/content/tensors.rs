//! A safetensors file as a table of its tensors (name, dtype, shape, elements, bytes), read
//! from its header alone: the 8-byte header length and the JSON header, never the data.

use crate::pages::layout;
use anyhow::{bail, Context, Result};
use ledger::store::BlobStore;
use ledger::Hash;
use maud::{html, Markup};
use std::io::Read;

/// The largest header read (safetensors itself refuses more than 100 MB).
const MAX_HEADER: u64 = 100 << 20;

pub struct Tensor {
    pub name: String,
    pub dtype: String,
    pub shape: Vec<u64>,
    pub bytes: u64,
}

pub struct Tensors {
    pub tensors: Vec<Tensor>,
    pub metadata: Vec<(String, String)>,
}

/// Whether the first bytes look like a safetensors header (a length, then `{`).
pub fn sniff(head: &[u8]) -> bool {
    head.len() > 8
        && u64::from_le_bytes(head[..8].try_into().unwrap()) <= MAX_HEADER
        && head[8] == b'{'
}

pub fn read(store: &BlobStore, hash: &Hash) -> Result<Tensors> {
    let mut file = store.open(hash)?;
    let mut len = [0u8; 8];
    file.read_exact(&mut len)
        .with_context(|| format!("blob {hash}: reading the safetensors header length"))?;
    let n = u64::from_le_bytes(len);
    if n > MAX_HEADER {
        bail!(
            "blob {hash}: a safetensors header of {n} bytes is more than the {MAX_HEADER} allowed"
        );
    }
    let mut header = Vec::with_capacity(n as usize);
    file.take(n)
        .read_to_end(&mut header)
        .with_context(|| format!("blob {hash}: reading the safetensors header"))?;
    let value: serde_json::Value = serde_json::from_slice(&header)
        .with_context(|| format!("blob {hash}: the safetensors header is not JSON"))?;
    let Some(map) = value.as_object() else {
        bail!("blob {hash}: the safetensors header is not a JSON object");
    };
    let mut tensors = Vec::new();
    let mut metadata = Vec::new();
    for (name, v) in map {
        if name == "__metadata__" {
            if let Some(m) = v.as_object() {
                metadata = m
                    .iter()
                    .map(|(k, v)| {
                        (
                            k.clone(),
                            v.as_str().map_or_else(|| v.to_string(), String::from),
                        )
                    })
                    .collect();
            }
            continue;
        }
        let offsets: Vec<u64> = v["data_offsets"]
            .as_array()
            .map(|a| a.iter().filter_map(|x| x.as_u64()).collect())
            .unwrap_or_default();
        tensors.push(Tensor {
            name: name.clone(),
            dtype: v["dtype"].as_str().unwrap_or("?").to_string(),
            shape: v["shape"]
                .as_array()
                .map(|a| a.iter().filter_map(|x| x.as_u64()).collect())
                .unwrap_or_default(),
            bytes: match offsets[..] {
                [a, b] => b.saturating_sub(a),
                _ => 0,
            },
        });
    }
    tensors.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(Tensors { tensors, metadata })
}

pub fn render(t: &Tensors) -> Markup {
    let elements: u64 = t
        .tensors
        .iter()
        .map(|x| x.shape.iter().product::<u64>())
        .sum();
    html! {
        p { (t.tensors.len()) " tensors, " (layout::thousands(elements)) " elements" }
        @if !t.metadata.is_empty() {
            dl.facts { @for (k, v) in &t.metadata { dt { (k) } dd.mono { (v) } } }
        }
        table #tensors {
            thead { tr { th { "name" } th { "dtype" } th { "shape" } th.num { "elements" } th.num { "bytes" } } }
            tbody {
                @for x in &t.tensors {
                    tr {
                        td.mono { (x.name) }
                        td { (x.dtype) }
                        td.mono { "[" (x.shape.iter().map(u64::to_string).collect::<Vec<_>>().join(", ")) "]" }
                        td.num { (layout::thousands(x.shape.iter().product())) }
                        td.num { (layout::size(x.bytes)) }
                    }
                }
            }
        }
    }
}
