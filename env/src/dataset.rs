//! Task files as users have them: SWE-bench / SWE-rebench / SWE-smith instances as HF
//! parquet (e.g. the `test` split of SWE-bench Verified), a JSON array, or JSONL. List fields
//! (`FAIL_TO_PASS`, `PASS_TO_PASS`) may be lists or JSON strings holding a list, as the
//! datasets differ on that; other columns are kept in `extra`. Errors name the file and the
//! row or line.

use crate::instance::{parse_instance, TaskInstance};
use anyhow::{bail, Context};
use std::collections::HashMap;
use std::path::Path;

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    Parquet,
    Json,
    Jsonl,
}

impl Format {
    /// By extension (`.parquet`, `.json`, `.jsonl` / `.ndjson`).
    pub fn of(path: &Path) -> Option<Format> {
        match path.extension()?.to_str()?.to_ascii_lowercase().as_str() {
            "parquet" => Some(Format::Parquet),
            "json" => Some(Format::Json),
            "jsonl" | "ndjson" => Some(Format::Jsonl),
            _ => None,
        }
    }
}

/// Reads a task file, its format from its extension.
pub fn load(path: &Path) -> anyhow::Result<Vec<TaskInstance>> {
    let format = Format::of(path).with_context(|| {
        format!(
            "{}: unknown task file format (expected .parquet, .json or .jsonl)",
            path.display()
        )
    })?;
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    read(&bytes, format, &path.display().to_string())
}

/// Reads task instances from `bytes` in `format`; `source` names them in errors.
pub fn read(bytes: &[u8], format: Format, source: &str) -> anyhow::Result<Vec<TaskInstance>> {
    let records: Vec<(String, anyhow::Result<TaskInstance>)> = match format {
        Format::Jsonl => std::str::from_utf8(bytes)
            .with_context(|| format!("{source}: not UTF-8"))?
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
            .map(|(i, l)| (format!("{source}:{}", i + 1), parse_instance(l)))
            .collect(),
        Format::Json => {
            let v: serde_json::Value =
                serde_json::from_slice(bytes).with_context(|| format!("{source}: not JSON"))?;
            let serde_json::Value::Array(items) = v else {
                bail!("{source}: a JSON task file must hold an array of instances");
            };
            items
                .into_iter()
                .enumerate()
                .map(|(i, v)| {
                    (
                        format!("{source}: element {i}"),
                        parse_instance(&v.to_string()),
                    )
                })
                .collect()
        }
        Format::Parquet => parquet_rows(bytes, source)?
            .into_iter()
            .enumerate()
            .map(|(i, v)| (format!("{source}: row {i}"), parse_instance(&v.to_string())))
            .collect(),
    };
    let mut out = Vec::with_capacity(records.len());
    let mut seen: HashMap<String, String> = HashMap::new();
    for (at, r) in records {
        let inst = r.with_context(|| at.clone())?;
        if let Some(first) = seen.insert(inst.instance_id.clone(), at.clone()) {
            bail!(
                "{at}: instance `{}` already appears at {first}",
                inst.instance_id
            );
        }
        out.push(inst);
    }
    Ok(out)
}

/// Every row of a parquet file as a JSON object (lists as arrays, nulls as null).
fn parquet_rows(bytes: &[u8], source: &str) -> anyhow::Result<Vec<serde_json::Value>> {
    use parquet::file::reader::{FileReader, SerializedFileReader};
    let reader = SerializedFileReader::new(bytes::Bytes::copy_from_slice(bytes))
        .with_context(|| format!("{source}: not a parquet file"))?;
    let rows = reader
        .get_row_iter(None)
        .with_context(|| format!("{source}: reading its rows"))?;
    rows.enumerate()
        .map(|(i, r)| {
            r.map(|row| row.to_json_value())
                .with_context(|| format!("{source}: row {i}"))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(f2p: serde_json::Value) -> serde_json::Value {
        serde_json::json!({
            "instance_id": "o__r-1", "repo": "o/r", "base_commit": "abc", "patch": "p",
            "test_patch": "t", "problem_statement": "ps", "FAIL_TO_PASS": f2p,
            "PASS_TO_PASS": [], "version": "1.0"
        })
    }

    #[test]
    fn json_and_jsonl_with_lists_or_strings() {
        let a = obj(serde_json::json!(["t::a"]));
        let b = obj(serde_json::json!("[\"t::a\"]"));
        let json = serde_json::to_vec(&serde_json::json!([a])).unwrap();
        let jsonl = format!("{b}\n\n");
        let x = read(&json, Format::Json, "x.json").unwrap();
        let y = read(jsonl.as_bytes(), Format::Jsonl, "y.jsonl").unwrap();
        assert_eq!(x, y);
        assert_eq!(x[0].fail_to_pass, vec!["t::a"]);
        let twice = format!("{b}\n{b}\n");
        let e = format!(
            "{:#}",
            read(twice.as_bytes(), Format::Jsonl, "y.jsonl").unwrap_err()
        );
        assert!(e.contains("y.jsonl:2") && e.contains("y.jsonl:1"), "{e}");
        let e = format!("{:#}", read(b"{}", Format::Json, "x.json").unwrap_err());
        assert!(e.contains("array"), "{e}");
        assert_eq!(
            Format::of(Path::new("test-00000-of-00001.parquet")),
            Some(Format::Parquet)
        );
    }
}
