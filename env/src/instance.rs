//! Task instances in the SWE-bench / SWE-rebench schema, one JSON object per line.
//!
//! `FAIL_TO_PASS` and `PASS_TO_PASS` may be JSON arrays or JSON strings holding an array (as
//! the SWE-bench datasets ship them); `version` may be a string or a number; `test_patch` may
//! be absent (SWE-smith). Other keys are kept in `extra`. Errors name the file, the line and
//! the key.

use anyhow::{bail, Context};
use serde::{Deserialize, Deserializer, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::io::BufRead;
use std::path::Path;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TaskInstance {
    pub instance_id: String,
    /// `owner/name`.
    pub repo: String,
    pub base_commit: String,
    /// The gold patch.
    pub patch: String,
    /// Empty where the tests are already in the repository (SWE-smith task files have none).
    #[serde(default)]
    pub test_patch: String,
    pub problem_statement: String,
    #[serde(rename = "FAIL_TO_PASS", deserialize_with = "string_list")]
    pub fail_to_pass: Vec<String>,
    #[serde(rename = "PASS_TO_PASS", deserialize_with = "string_list")]
    pub pass_to_pass: Vec<String>,
    #[serde(default, deserialize_with = "scalar_string")]
    pub version: String,
    #[serde(flatten)]
    pub extra: BTreeMap<String, serde_json::Value>,
}

fn string_list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    use serde::de::Error;
    match serde_json::Value::deserialize(d)? {
        serde_json::Value::Array(items) => items
            .into_iter()
            .map(|v| match v {
                serde_json::Value::String(s) => Ok(s),
                other => Err(D::Error::custom(format!(
                    "expected a list of strings, found an element {other}"
                ))),
            })
            .collect(),
        serde_json::Value::String(s) => serde_json::from_str::<Vec<String>>(&s).map_err(|e| {
            D::Error::custom(format!(
                "a string must hold a JSON list of strings ({e}): {s:.80}"
            ))
        }),
        serde_json::Value::Null => Ok(Vec::new()),
        other => Err(D::Error::custom(format!(
            "expected a list of strings or a JSON string of one, found {other:.80}"
        ))),
    }
}

fn scalar_string<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    use serde::de::Error;
    match serde_json::Value::deserialize(d)? {
        serde_json::Value::String(s) => Ok(s),
        serde_json::Value::Number(n) => Ok(n.to_string()),
        serde_json::Value::Null => Ok(String::new()),
        other => Err(D::Error::custom(format!(
            "expected a string or a number, found {other}"
        ))),
    }
}

/// Parses one instance; errors name the key that failed.
pub fn parse_instance(line: &str) -> anyhow::Result<TaskInstance> {
    let de = &mut serde_json::Deserializer::from_str(line);
    let inst: TaskInstance = serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if path == "." || path.is_empty() {
            anyhow::anyhow!("{inner}")
        } else {
            anyhow::anyhow!("key `{path}`: {inner}")
        }
    })?;
    for (key, v) in [
        ("instance_id", &inst.instance_id),
        ("repo", &inst.repo),
        ("base_commit", &inst.base_commit),
    ] {
        if v.trim().is_empty() {
            bail!("key `{key}` is empty");
        }
    }
    Ok(inst)
}

/// Loads every instance of a JSONL file (blank lines are skipped). Duplicate instance ids are
/// an error naming both lines.
pub fn load_jsonl(path: &Path) -> anyhow::Result<Vec<TaskInstance>> {
    let f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut out = Vec::new();
    let mut seen: HashMap<String, usize> = HashMap::new();
    for (i, line) in std::io::BufReader::new(f).lines().enumerate() {
        let n = i + 1;
        let line = line.with_context(|| format!("{}:{n}: reading", path.display()))?;
        if line.trim().is_empty() {
            continue;
        }
        let inst = parse_instance(&line).with_context(|| format!("{}:{n}", path.display()))?;
        if let Some(first) = seen.insert(inst.instance_id.clone(), n) {
            bail!(
                "{}:{n}: instance `{}` already appears on line {first}",
                path.display(),
                inst.instance_id
            );
        }
        out.push(inst);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn line(f2p: &str, version: &str) -> String {
        format!(
            r#"{{"instance_id":"o__r-1","repo":"o/r","base_commit":"abc","patch":"p","test_patch":"t","problem_statement":"ps","FAIL_TO_PASS":{f2p},"PASS_TO_PASS":[],"version":{version},"created_at":"2024"}}"#
        )
    }

    #[test]
    fn list_fields_may_be_json_strings_and_version_a_number() {
        let a = parse_instance(&line(r#"["t.py::a","t.py::b"]"#, r#""1.2""#)).unwrap();
        let b = parse_instance(&line(r#""[\"t.py::a\", \"t.py::b\"]""#, "1.2")).unwrap();
        assert_eq!(a.fail_to_pass, vec!["t.py::a", "t.py::b"]);
        assert_eq!(a.fail_to_pass, b.fail_to_pass);
        assert_eq!(b.version, "1.2");
        assert_eq!(a.extra["created_at"], "2024");
    }

    #[test]
    fn swe_smith_records_have_no_test_patch() {
        let i = parse_instance(
            r#"{"instance_id":"o__r.abc.func_pm_op__1","repo":"swesmith/o__r.abc","base_commit":"abc","patch":"p","problem_statement":"ps","FAIL_TO_PASS":["t.py::a"],"PASS_TO_PASS":[],"image_name":"swesmith/x:latest"}"#,
        )
        .unwrap();
        assert_eq!(i.test_patch, "");
        assert_eq!(i.extra["image_name"], "swesmith/x:latest");
    }

    #[test]
    fn errors_name_file_line_and_key() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("tasks.jsonl");
        let mut f = std::fs::File::create(&p).unwrap();
        writeln!(f, "{}", line("[]", "1")).unwrap();
        writeln!(f).unwrap();
        writeln!(f, "{}", line(r#""not a list""#, "1")).unwrap();
        drop(f);
        let e = format!("{:#}", load_jsonl(&p).unwrap_err());
        assert!(e.contains("tasks.jsonl:3"), "{e}");
        assert!(e.contains("FAIL_TO_PASS"), "{e}");

        std::fs::write(&p, format!("{}\n{}\n", line("[]", "1"), line("[]", "1"))).unwrap();
        let e = format!("{:#}", load_jsonl(&p).unwrap_err());
        assert!(e.contains(":2") && e.contains("line 1"), "{e}");

        std::fs::write(&p, "{\"instance_id\": \"x\"}\n").unwrap();
        let e = format!("{:#}", load_jsonl(&p).unwrap_err());
        assert!(
            e.contains("tasks.jsonl:1") && e.contains("missing field"),
            "{e}"
        );

        std::fs::write(&p, format!("{}\n", line("[]", "1"))).unwrap();
        assert_eq!(load_jsonl(&p).unwrap().len(), 1);
    }
}
