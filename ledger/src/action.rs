//! Action keys: what makes two stage executions "the same work".
//!
//! key = BLAKE3(postcard(domain, stage, version, canonical config, sorted named inputs, seed)).
//! Timestamps, hosts and output bytes never enter a key; outputs are recorded separately by
//! content hash, as in Bazel's action cache.

use crate::hash::Hash;
use serde::Serialize;
use serde_json::Value;

const DOMAIN: &str = "davinci-ledger/action/v1";

#[derive(Serialize)]
struct KeyMaterial<'a> {
    domain: &'a str,
    stage: &'a str,
    version: u32,
    config: &'a str,
    inputs: &'a [(String, Hash)],
    seed: u64,
}

pub fn action_key(
    stage: &str,
    version: u32,
    canonical_config: &str,
    inputs: &[(String, Hash)],
    seed: u64,
) -> Hash {
    let mut inputs = inputs.to_vec();
    inputs.sort();
    let material = KeyMaterial {
        domain: DOMAIN,
        stage,
        version,
        config: canonical_config,
        inputs: &inputs,
        seed,
    };
    Hash::of(&postcard::to_stdvec(&material).expect("key material encodes"))
}

/// JSON with object keys sorted at every level and no insignificant whitespace, whatever
/// serde_json's map features are in the build.
pub fn canonical_json(value: &Value) -> String {
    let mut out = String::new();
    write_canonical(value, &mut out);
    out
}

fn write_canonical(value: &Value, out: &mut String) {
    match value {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push('{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(k.clone()).to_string());
                out.push(':');
                write_canonical(&map[k], out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, v) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(v, out);
            }
            out.push(']');
        }
        scalar => out.push_str(&scalar.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_json_sorts_keys() {
        let v: Value = serde_json::from_str(r#"{"b":1,"a":{"d":[1,2],"c":"x"}}"#).unwrap();
        assert_eq!(canonical_json(&v), r#"{"a":{"c":"x","d":[1,2]},"b":1}"#);
    }

    #[test]
    fn key_ignores_input_order_but_not_names() {
        let a = Hash::of(b"a");
        let b = Hash::of(b"b");
        let k1 = action_key("s", 1, "{}", &[("x".into(), a), ("y".into(), b)], 0);
        let k2 = action_key("s", 1, "{}", &[("y".into(), b), ("x".into(), a)], 0);
        let k3 = action_key("s", 1, "{}", &[("x".into(), b), ("y".into(), a)], 0);
        assert_eq!(k1, k2);
        assert_ne!(k1, k3);
        assert_ne!(
            k1,
            action_key("s", 1, "{}", &[("x".into(), a), ("y".into(), b)], 1)
        );
        assert_ne!(
            k1,
            action_key("s", 2, "{}", &[("x".into(), a), ("y".into(), b)], 0)
        );
    }
}
