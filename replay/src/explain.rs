//! Why a rebuilt output differs from the recorded one, as a structured explanation.
//!
//! - Checkpoints (safetensors): which tensors differ (shape or dtype changes, how many
//!   elements, the largest absolute difference, computed in f64 from F32/F64/BF16/F16 and
//!   integer data), tensors present on one side only, and changed metadata.
//! - JSON and JSONL whose records carry an id (`instance_id` or `task_id`, e.g. scores with an
//!   `instances` array): which records changed and which of their fields, records on one side
//!   only, and the aggregate fields outside the records that differ.
//! - Other JSON: the fields that differ, by path (`a.b[3].c`).
//! - Anything else (also inside zstd shards): the first differing byte and its line/record.
//!
//! Lists show the first few entries and count the rest.

use ledger::store::BlobStore;
use ledger::Hash;
use safetensors::{Dtype, SafeTensors};
use serde::{Serialize, Serializer};
use serde_json::Value;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;

/// How many entries each list keeps; the rest are counted.
pub const SHOWN: usize = 8;
/// Id fields that key the records of scores and task lists, in order of preference.
pub const ID_FIELDS: [&str; 2] = ["instance_id", "task_id"];
const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];

/// Explanations decompress at most this much of a zstd blob: past it (or on a bad stream) the
/// compressed bytes are compared as they are, so a decompression bomb cannot take the memory.
const MAX_DECOMPRESSED: u64 = 512 << 20;

fn decompress_bounded(bytes: &[u8]) -> Option<Vec<u8>> {
    use std::io::Read;
    let mut out = Vec::new();
    zstd::stream::read::Decoder::new(bytes)
        .ok()?
        .take(MAX_DECOMPRESSED + 1)
        .read_to_end(&mut out)
        .ok()?;
    (out.len() as u64 <= MAX_DECOMPRESSED).then_some(out)
}
pub const SAFETENSORS: &str = "application/x-safetensors";

#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Divergence {
    /// The re-execution did not produce this output at all.
    NotProduced,
    /// One side's bytes could not be read.
    Unreadable {
        reason: String,
    },
    Bytes(BytesDifference),
    Tensors(TensorsDifference),
    Json(JsonDifference),
}

/// The first differing byte, and the line (record) around it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct BytesDifference {
    /// `bytes` or `decompressed records` (zstd).
    pub what: String,
    pub offset: u64,
    /// 1-based line/record number of the difference.
    pub record: u64,
    pub recorded_len: u64,
    pub rebuilt_len: u64,
    pub recorded_excerpt: String,
    pub rebuilt_excerpt: String,
    /// Why no structured explanation was given, when one was expected.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// Two safetensors files compared tensor by tensor.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct TensorsDifference {
    pub recorded_tensors: usize,
    pub rebuilt_tensors: usize,
    /// Tensors present on both sides with the same dtype, shape and bytes.
    pub identical: usize,
    /// The first `SHOWN` differing tensors, by name.
    pub changed: Vec<TensorChange>,
    pub changed_count: usize,
    pub only_recorded: Vec<String>,
    pub only_recorded_count: usize,
    pub only_rebuilt: Vec<String>,
    pub only_rebuilt_count: usize,
    /// Metadata keys whose values differ.
    pub metadata: Vec<FieldChange>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct TensorChange {
    pub name: String,
    /// Recorded, rebuilt.
    pub dtype: [String; 2],
    pub shape: [Vec<usize>; 2],
    /// Elements compared: the tensor's size when the shapes agree, else 0.
    pub elements: u64,
    /// Elements that differ; `None` when the shapes differ or the dtype cannot be compared
    /// element by element.
    pub differing: Option<u64>,
    /// Largest |recorded - rebuilt| over the elements, in f64 (`inf` where only one side is
    /// NaN or infinite); `None` when not comparable as numbers.
    #[serde(serialize_with = "finite_or_string")]
    pub max_abs_diff: Option<f64>,
}

/// Two JSON (or JSONL) documents compared by value.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct JsonDifference {
    /// `json` or `jsonl`, with ` (zstd)` when decompressed first.
    pub format: String,
    /// Records keyed by an id field, when both sides have them.
    pub records: Option<RecordsDifference>,
    /// Differing fields outside the records (aggregates), by path; the first `SHOWN`.
    pub fields: Vec<FieldChange>,
    pub fields_count: usize,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct RecordsDifference {
    /// Where the records are: the array field (`instances`), or empty for a top-level array
    /// or JSONL lines.
    pub path: String,
    pub id_field: String,
    pub recorded: usize,
    pub rebuilt: usize,
    /// Changed records in recorded order; the first `SHOWN`.
    pub changed: Vec<RecordChange>,
    pub changed_count: usize,
    pub only_recorded: Vec<String>,
    pub only_recorded_count: usize,
    pub only_rebuilt: Vec<String>,
    pub only_rebuilt_count: usize,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct RecordChange {
    pub id: String,
    /// The first `SHOWN` differing fields.
    pub fields: Vec<FieldChange>,
    pub fields_count: usize,
}

/// A field (by path) that differs; `None` where a side lacks it. Long strings are shortened.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct FieldChange {
    pub path: String,
    pub recorded: Option<Value>,
    pub rebuilt: Option<Value>,
}

fn finite_or_string<S: Serializer>(v: &Option<f64>, s: S) -> Result<S::Ok, S::Error> {
    match v {
        Some(x) if x.is_finite() => s.serialize_f64(*x),
        Some(x) => s.serialize_str(&x.to_string()),
        None => s.serialize_none(),
    }
}

/// Explains how `recorded` (in `recorded_store`) and `rebuilt` (in `rebuilt_store`) differ.
/// `media_type` is the recorded output's; safetensors are also recognised by their bytes.
pub fn explain(
    recorded_store: &BlobStore,
    recorded: &Hash,
    rebuilt_store: &BlobStore,
    rebuilt: &Hash,
    media_type: &str,
) -> Divergence {
    let x = match recorded_store.read(recorded) {
        Ok(x) => x,
        Err(e) => {
            return Divergence::Unreadable {
                reason: format!("recorded {}: {e}", recorded.short()),
            }
        }
    };
    let y = match rebuilt_store.read(rebuilt) {
        Ok(y) => y,
        Err(e) => {
            return Divergence::Unreadable {
                reason: format!("rebuilt {}: {e}", rebuilt.short()),
            }
        }
    };
    explain_bytes(&x, &y, media_type)
}

/// `explain` over bytes in memory.
pub fn explain_bytes(x: &[u8], y: &[u8], media_type: &str) -> Divergence {
    let mut note = None;
    if media_type == SAFETENSORS || (looks_like_safetensors(x) && looks_like_safetensors(y)) {
        match (SafeTensors::deserialize(x), SafeTensors::deserialize(y)) {
            (Ok(a), Ok(b)) => return Divergence::Tensors(compare_tensors(x, &a, y, &b)),
            (a, b) => {
                let side = |r: Result<_, safetensors::SafeTensorError>, name: &str| {
                    r.err()
                        .map(|e| format!("the {name} bytes are not safetensors: {e}"))
                };
                let why: Vec<String> = [
                    side(a.map(|_| ()), "recorded"),
                    side(b.map(|_| ()), "rebuilt"),
                ]
                .into_iter()
                .flatten()
                .collect();
                note = Some(why.join("; "));
            }
        }
    }
    let (mut x, mut y) = (x.to_vec(), y.to_vec());
    let mut compressed = false;
    if x.starts_with(&ZSTD_MAGIC) && y.starts_with(&ZSTD_MAGIC) {
        if let (Some(dx), Some(dy)) = (decompress_bounded(&x), decompress_bounded(&y)) {
            (x, y) = (dx, dy);
            compressed = true;
        }
    }
    let suffix = if compressed { " (zstd)" } else { "" };
    if let Some(json) = compare_json_documents(&x, &y) {
        match json {
            Ok(mut d) => {
                d.format.push_str(suffix);
                return Divergence::Json(d);
            }
            Err(same) => note = Some(same),
        }
    }
    let mut bytes = first_byte_difference(&x, &y, compressed);
    bytes.note = note;
    Divergence::Bytes(bytes)
}

fn looks_like_safetensors(b: &[u8]) -> bool {
    b.len() >= 10
        && u64::from_le_bytes(b[..8].try_into().expect("8 bytes")) <= (b.len() - 8) as u64
        && b[8] == b'{'
}

// ---------------------------------------------------------------------------------------------
// Tensors

fn compare_tensors(x: &[u8], a: &SafeTensors, y: &[u8], b: &SafeTensors) -> TensorsDifference {
    let left: BTreeMap<&str, _> = a.iter().collect();
    let right: BTreeMap<&str, _> = b.iter().collect();
    let mut d = TensorsDifference {
        recorded_tensors: left.len(),
        rebuilt_tensors: right.len(),
        identical: 0,
        changed: Vec::new(),
        changed_count: 0,
        only_recorded: Vec::new(),
        only_recorded_count: 0,
        only_rebuilt: Vec::new(),
        only_rebuilt_count: 0,
        metadata: Vec::new(),
    };
    for (name, ta) in &left {
        let Some(tb) = right.get(name) else {
            push_capped(
                &mut d.only_recorded,
                &mut d.only_recorded_count,
                name.to_string(),
            );
            continue;
        };
        if ta.dtype() == tb.dtype() && ta.shape() == tb.shape() && ta.data() == tb.data() {
            d.identical += 1;
            continue;
        }
        let change = tensor_change(name, ta, tb);
        push_capped(&mut d.changed, &mut d.changed_count, change);
    }
    for name in right.keys().filter(|n| !left.contains_key(*n)) {
        push_capped(
            &mut d.only_rebuilt,
            &mut d.only_rebuilt_count,
            name.to_string(),
        );
    }
    let meta = |s: &[u8]| {
        SafeTensors::read_metadata(s)
            .ok()
            .and_then(|(_, m)| m.metadata().clone())
            .unwrap_or_default()
    };
    let (ma, mb) = (meta(x), meta(y));
    let keys: std::collections::BTreeSet<&String> = ma.keys().chain(mb.keys()).collect();
    for k in keys {
        let (va, vb) = (ma.get(k), mb.get(k));
        if va != vb {
            d.metadata.push(FieldChange {
                path: k.clone(),
                recorded: va.map(|v| clip(&Value::String(v.clone()))),
                rebuilt: vb.map(|v| clip(&Value::String(v.clone()))),
            });
        }
    }
    d
}

fn tensor_change(
    name: &str,
    a: &safetensors::tensor::TensorView,
    b: &safetensors::tensor::TensorView,
) -> TensorChange {
    let mut change = TensorChange {
        name: name.to_string(),
        dtype: [a.dtype().to_string(), b.dtype().to_string()],
        shape: [a.shape().to_vec(), b.shape().to_vec()],
        elements: 0,
        differing: None,
        max_abs_diff: None,
    };
    if a.shape() != b.shape() {
        return change;
    }
    let n: usize = a.shape().iter().product();
    change.elements = n as u64;
    let (da, db) = (decoder(a.dtype()), decoder(b.dtype()));
    let same_dtype = a.dtype() == b.dtype();
    let (wa, wb) = (a.dtype().bitsize(), b.dtype().bitsize());
    if wa % 8 != 0 || wb % 8 != 0 {
        return change; // sub-byte formats: only "the bytes differ"
    }
    let (wa, wb) = (wa / 8, wb / 8);
    let (xa, xb) = (a.data(), b.data());
    if xa.len() != n * wa || xb.len() != n * wb {
        return change;
    }
    let mut differing = 0u64;
    let mut max = 0f64;
    for i in 0..n {
        let (ea, eb) = (&xa[i * wa..(i + 1) * wa], &xb[i * wb..(i + 1) * wb]);
        let values = da.zip(db).map(|(fa, fb)| (fa(ea), fb(eb)));
        let differs = if same_dtype {
            ea != eb
        } else {
            match values {
                Some((p, q)) => !(p == q || (p.is_nan() && q.is_nan())),
                None => true,
            }
        };
        if !differs {
            continue;
        }
        differing += 1;
        if let Some((p, q)) = values {
            let one_sided = p.is_nan() != q.is_nan();
            let infinite = (p.is_infinite() || q.is_infinite()) && p != q;
            let delta = if one_sided || infinite {
                f64::INFINITY
            } else if p.is_nan() {
                0.0
            } else {
                (p - q).abs()
            };
            max = max.max(delta);
        }
    }
    change.differing = Some(differing);
    change.max_abs_diff = da.zip(db).map(|_| max);
    change
}

type Decode = fn(&[u8]) -> f64;

/// Reads one little-endian element as f64, for the dtypes that are numbers.
fn decoder(dtype: Dtype) -> Option<Decode> {
    fn arr<const N: usize>(b: &[u8]) -> [u8; N] {
        b.try_into().expect("element width")
    }
    Some(match dtype {
        Dtype::F64 => |b| f64::from_le_bytes(arr(b)),
        Dtype::F32 => |b| f32::from_le_bytes(arr(b)) as f64,
        Dtype::F16 => |b| half::f16::from_le_bytes(arr(b)).to_f64(),
        Dtype::BF16 => |b| half::bf16::from_le_bytes(arr(b)).to_f64(),
        Dtype::I64 => |b| i64::from_le_bytes(arr(b)) as f64,
        Dtype::U64 => |b| u64::from_le_bytes(arr(b)) as f64,
        Dtype::I32 => |b| i32::from_le_bytes(arr(b)) as f64,
        Dtype::U32 => |b| u32::from_le_bytes(arr(b)) as f64,
        Dtype::I16 => |b| i16::from_le_bytes(arr(b)) as f64,
        Dtype::U16 => |b| u16::from_le_bytes(arr(b)) as f64,
        Dtype::I8 => |b| b[0] as i8 as f64,
        Dtype::U8 | Dtype::BOOL => |b| b[0] as f64,
        _ => return None,
    })
}

// ---------------------------------------------------------------------------------------------
// JSON

/// `None` when the bytes are not JSON (nor JSONL with keyed records); `Err` with a note when
/// they are JSON with equal values (so only formatting differs).
fn compare_json_documents(x: &[u8], y: &[u8]) -> Option<Result<JsonDifference, String>> {
    if let (Ok(a), Ok(b)) = (
        serde_json::from_slice::<Value>(x),
        serde_json::from_slice::<Value>(y),
    ) {
        if a == b {
            return Some(Err(
                "both sides hold equal JSON values: only the formatting differs".into(),
            ));
        }
        return Some(Ok(compare_json(&a, &b)));
    }
    let (a, b) = (jsonl(x)?, jsonl(y)?);
    let id_field = ID_FIELDS
        .into_iter()
        .find(|f| keyed_by(&a, f) && keyed_by(&b, f))?;
    Some(Ok(JsonDifference {
        format: "jsonl".into(),
        records: Some(compare_records("", id_field, &a, &b)),
        fields: Vec::new(),
        fields_count: 0,
    }))
}

/// One JSON value per non-empty line, or `None`.
fn jsonl(bytes: &[u8]) -> Option<Vec<Value>> {
    let text = std::str::from_utf8(bytes).ok()?;
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// Compares two JSON values: keyed records if both have them, every other field by path.
pub fn compare_json(a: &Value, b: &Value) -> JsonDifference {
    let mut d = JsonDifference {
        format: "json".into(),
        records: None,
        fields: Vec::new(),
        fields_count: 0,
    };
    let (mut rest_a, mut rest_b) = (a.clone(), b.clone());
    if let Some((path, id_field)) = records_location(a, b) {
        let take = |v: &mut Value| -> Vec<Value> {
            let slot = if path.is_empty() {
                Some(v)
            } else {
                v.get_mut(&path)
            };
            match slot.map(Value::take) {
                Some(Value::Array(items)) => items,
                _ => Vec::new(),
            }
        };
        let (ra, rb) = (take(&mut rest_a), take(&mut rest_b));
        d.records = Some(compare_records(&path, id_field, &ra, &rb));
        if let (Value::Object(ma), Value::Object(mb)) = (&mut rest_a, &mut rest_b) {
            ma.remove(&path);
            mb.remove(&path);
        }
    }
    let (fa, fb) = (flatten(&rest_a), flatten(&rest_b));
    for change in field_changes(&fa, &fb) {
        push_capped(&mut d.fields, &mut d.fields_count, change);
    }
    d
}

/// Where both values keep records keyed by an id: `("", field)` for top-level arrays, or
/// `(key, field)` for an array field (`instances` first).
fn records_location(a: &Value, b: &Value) -> Option<(String, &'static str)> {
    let fits = |x: &Value, y: &Value| -> Option<&'static str> {
        let (Value::Array(x), Value::Array(y)) = (x, y) else {
            return None;
        };
        if x.is_empty() && y.is_empty() {
            return None;
        }
        ID_FIELDS
            .into_iter()
            .find(|f| keyed_by(x, f) && keyed_by(y, f))
    };
    if let Some(f) = fits(a, b) {
        return Some((String::new(), f));
    }
    let (Value::Object(ma), Value::Object(mb)) = (a, b) else {
        return None;
    };
    let mut keys: Vec<&String> = ma.keys().filter(|k| mb.contains_key(*k)).collect();
    keys.sort_by_key(|k| *k != "instances");
    keys.into_iter()
        .find_map(|k| fits(&ma[k], &mb[k]).map(|f| (k.clone(), f)))
}

/// Every item is an object with a unique scalar `field`.
fn keyed_by(items: &[Value], field: &str) -> bool {
    let mut seen = HashSet::new();
    items.iter().all(|v| match v.get(field).and_then(id_of) {
        Some(id) => seen.insert(id),
        None => false,
    })
}

fn id_of(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn compare_records(path: &str, id_field: &str, a: &[Value], b: &[Value]) -> RecordsDifference {
    let id = |v: &Value| v.get(id_field).and_then(id_of).unwrap_or_default();
    let right: HashMap<String, &Value> = b.iter().map(|v| (id(v), v)).collect();
    let left: HashSet<String> = a.iter().map(id).collect();
    let mut d = RecordsDifference {
        path: path.to_string(),
        id_field: id_field.to_string(),
        recorded: a.len(),
        rebuilt: b.len(),
        changed: Vec::new(),
        changed_count: 0,
        only_recorded: Vec::new(),
        only_recorded_count: 0,
        only_rebuilt: Vec::new(),
        only_rebuilt_count: 0,
    };
    for ra in a {
        let key = id(ra);
        let Some(rb) = right.get(&key) else {
            push_capped(&mut d.only_recorded, &mut d.only_recorded_count, key);
            continue;
        };
        if ra == *rb {
            continue;
        }
        let mut change = RecordChange {
            id: key,
            fields: Vec::new(),
            fields_count: 0,
        };
        for f in field_changes(&flatten(ra), &flatten(rb)) {
            push_capped(&mut change.fields, &mut change.fields_count, f);
        }
        push_capped(&mut d.changed, &mut d.changed_count, change);
    }
    for rb in b {
        let key = id(rb);
        if !left.contains(&key) {
            push_capped(&mut d.only_rebuilt, &mut d.only_rebuilt_count, key);
        }
    }
    d
}

/// Leaves of a JSON value by path: `a.b`, `a[3]`; empty objects and arrays are leaves.
fn flatten(v: &Value) -> BTreeMap<String, &Value> {
    fn walk<'a>(path: String, v: &'a Value, out: &mut BTreeMap<String, &'a Value>) {
        match v {
            Value::Object(m) if !m.is_empty() => {
                for (k, x) in m {
                    let p = if path.is_empty() {
                        k.clone()
                    } else {
                        format!("{path}.{k}")
                    };
                    walk(p, x, out);
                }
            }
            Value::Array(items) if !items.is_empty() => {
                for (i, x) in items.iter().enumerate() {
                    walk(format!("{path}[{i}]"), x, out);
                }
            }
            _ => {
                out.insert(path, v);
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(String::new(), v, &mut out);
    out
}

fn field_changes<'a>(
    a: &'a BTreeMap<String, &'a Value>,
    b: &'a BTreeMap<String, &'a Value>,
) -> impl Iterator<Item = FieldChange> + 'a {
    let mut keys: Vec<&String> = a
        .keys()
        .chain(b.keys().filter(|k| !a.contains_key(*k)))
        .collect();
    keys.sort();
    keys.into_iter().filter_map(move |k| {
        let (x, y) = (a.get(k).copied(), b.get(k).copied());
        (x != y).then(|| FieldChange {
            path: if k.is_empty() {
                "(value)".into()
            } else {
                k.clone()
            },
            recorded: x.map(clip),
            rebuilt: y.map(clip),
        })
    })
}

/// Long strings shortened to their start and their length.
fn clip(v: &Value) -> Value {
    const MAX: usize = 120;
    match v {
        Value::String(s) if s.chars().count() > MAX => {
            let head: String = s.chars().take(MAX - 20).collect();
            Value::String(format!("{head}… ({} chars)", s.chars().count()))
        }
        other => other.clone(),
    }
}

fn push_capped<T>(list: &mut Vec<T>, count: &mut usize, item: T) {
    *count += 1;
    if list.len() < SHOWN {
        list.push(item);
    }
}

// ---------------------------------------------------------------------------------------------
// Bytes

fn first_byte_difference(x: &[u8], y: &[u8], decompressed: bool) -> BytesDifference {
    let at = x
        .iter()
        .zip(y)
        .position(|(p, q)| p != q)
        .unwrap_or(x.len().min(y.len()));
    let record = x[..at].iter().filter(|&&c| c == b'\n').count() + 1;
    let line_of = |v: &[u8]| {
        let start = v[..at.min(v.len())]
            .iter()
            .rposition(|&c| c == b'\n')
            .map_or(0, |p| p + 1);
        let end = v[start..]
            .iter()
            .position(|&c| c == b'\n')
            .map_or(v.len(), |p| start + p);
        let column = at - start;
        let from = column.saturating_sub(60) + start;
        let text = String::from_utf8_lossy(&v[from.min(end)..end.min(from + 160)]).into_owned();
        format!("…{text}")
    };
    BytesDifference {
        what: if decompressed {
            "decompressed records".into()
        } else {
            "bytes".into()
        },
        offset: at as u64,
        record: record as u64,
        recorded_len: x.len() as u64,
        rebuilt_len: y.len() as u64,
        recorded_excerpt: line_of(x),
        rebuilt_excerpt: line_of(y),
        note: None,
    }
}

// ---------------------------------------------------------------------------------------------
// Text

fn value_text(v: &Option<Value>) -> String {
    match v {
        None => "(absent)".into(),
        Some(v) => v.to_string(),
    }
}

fn fields_text(fields: &[FieldChange], count: usize) -> String {
    let mut parts: Vec<String> = fields
        .iter()
        .map(|f| {
            format!(
                "{} {} → {}",
                f.path,
                value_text(&f.recorded),
                value_text(&f.rebuilt)
            )
        })
        .collect();
    if count > fields.len() {
        parts.push(format!("and {} more", count - fields.len()));
    }
    parts.join("; ")
}

fn names_text(names: &[String], count: usize) -> String {
    let mut s = names.join(", ");
    if count > names.len() {
        s.push_str(&format!(" and {} more", count - names.len()));
    }
    s
}

fn shape_text(shape: &[usize]) -> String {
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    format!("[{}]", dims.join(", "))
}

impl fmt::Display for Divergence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Divergence::NotProduced => write!(f, "the re-execution did not produce this output"),
            Divergence::Unreadable { reason } => {
                write!(f, "the bytes cannot be compared: {reason}")
            }
            Divergence::Bytes(b) => {
                write!(
                    f,
                    "{}: first difference at byte {}, line/record {} (recorded {} bytes, rebuilt {} bytes)\n  recorded: {}\n  rebuilt:  {}",
                    b.what, b.offset, b.record, b.recorded_len, b.rebuilt_len, b.recorded_excerpt, b.rebuilt_excerpt
                )?;
                if let Some(note) = &b.note {
                    write!(f, "\n  ({note})")?;
                }
                Ok(())
            }
            Divergence::Tensors(t) => {
                write!(
                    f,
                    "checkpoint: {} of {} tensors differ, {} only in recorded, {} only in rebuilt ({} rebuilt tensors)",
                    t.changed_count,
                    t.recorded_tensors,
                    t.only_recorded_count,
                    t.only_rebuilt_count,
                    t.rebuilt_tensors
                )?;
                for c in &t.changed {
                    write!(f, "\n  {}", c.name)?;
                    if c.dtype[0] != c.dtype[1] {
                        write!(f, " dtype {} → {}", c.dtype[0], c.dtype[1])?;
                    } else {
                        write!(f, " {}", c.dtype[0])?;
                    }
                    if c.shape[0] != c.shape[1] {
                        write!(
                            f,
                            " shape {} → {}",
                            shape_text(&c.shape[0]),
                            shape_text(&c.shape[1])
                        )?;
                    } else {
                        write!(f, " {}", shape_text(&c.shape[0]))?;
                    }
                    if let Some(n) = c.differing {
                        write!(f, ": {n} of {} elements differ", c.elements)?;
                    }
                    if let Some(m) = c.max_abs_diff {
                        write!(f, ", max |Δ| {m:.3e}")?;
                    }
                }
                if t.changed_count > t.changed.len() {
                    write!(f, "\n  and {} more", t.changed_count - t.changed.len())?;
                }
                if t.only_recorded_count > 0 {
                    write!(
                        f,
                        "\n  only in recorded: {}",
                        names_text(&t.only_recorded, t.only_recorded_count)
                    )?;
                }
                if t.only_rebuilt_count > 0 {
                    write!(
                        f,
                        "\n  only in rebuilt: {}",
                        names_text(&t.only_rebuilt, t.only_rebuilt_count)
                    )?;
                }
                if !t.metadata.is_empty() {
                    write!(
                        f,
                        "\n  metadata: {}",
                        fields_text(&t.metadata, t.metadata.len())
                    )?;
                }
                if t.changed_count + t.only_recorded_count + t.only_rebuilt_count == 0
                    && t.metadata.is_empty()
                {
                    write!(
                        f,
                        "\n  every tensor and the metadata are equal: only the file layout differs"
                    )?;
                }
                Ok(())
            }
            Divergence::Json(j) => {
                write!(f, "{}: ", j.format)?;
                if let Some(r) = &j.records {
                    let place = if r.path.is_empty() {
                        format!("by `{}`", r.id_field)
                    } else {
                        format!("in `{}` by `{}`", r.path, r.id_field)
                    };
                    write!(
                        f,
                        "{} of {} records ({place}) changed, {} only in recorded, {} only in rebuilt ({} rebuilt records)",
                        r.changed_count,
                        r.recorded,
                        r.only_recorded_count,
                        r.only_rebuilt_count,
                        r.rebuilt
                    )?;
                    for c in &r.changed {
                        write!(
                            f,
                            "\n  {}: {}",
                            c.id,
                            fields_text(&c.fields, c.fields_count)
                        )?;
                    }
                    if r.changed_count > r.changed.len() {
                        write!(
                            f,
                            "\n  and {} more changed records",
                            r.changed_count - r.changed.len()
                        )?;
                    }
                    if r.only_recorded_count > 0 {
                        write!(
                            f,
                            "\n  only in recorded: {}",
                            names_text(&r.only_recorded, r.only_recorded_count)
                        )?;
                    }
                    if r.only_rebuilt_count > 0 {
                        write!(
                            f,
                            "\n  only in rebuilt: {}",
                            names_text(&r.only_rebuilt, r.only_rebuilt_count)
                        )?;
                    }
                    if j.fields_count > 0 {
                        write!(
                            f,
                            "\n  aggregate fields: {}",
                            fields_text(&j.fields, j.fields_count)
                        )?;
                    }
                    Ok(())
                } else {
                    write!(
                        f,
                        "{} fields differ\n  {}",
                        j.fields_count,
                        fields_text(&j.fields, j.fields_count)
                    )
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device, Tensor};
    use serde_json::json;

    fn tensor(values: &[f32], shape: &[usize], dtype: DType) -> Tensor {
        Tensor::from_vec(values.to_vec(), shape, &Device::Cpu)
            .unwrap()
            .to_dtype(dtype)
            .unwrap()
    }

    /// Safetensors bytes written by the checkpoint writer the training stages use.
    fn checkpoint(tensors: Vec<(&str, Tensor)>, format: &str) -> Vec<u8> {
        let named: Vec<(String, Tensor)> = tensors
            .into_iter()
            .map(|(n, t)| (n.to_string(), t))
            .collect();
        model::checkpoint::to_safetensors(&named, &[("format", format.to_string())]).unwrap()
    }

    /// Both versions put in real blob stores, then explained as replay does.
    fn explain_stored(x: &[u8], y: &[u8], media_type: &str) -> Divergence {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (
            BlobStore::new(&dir.path().join("a")),
            BlobStore::new(&dir.path().join("b")),
        );
        a.create_dirs().unwrap();
        b.create_dirs().unwrap();
        let (ha, _) = a.put_bytes(x).unwrap();
        let (hb, _) = b.put_bytes(y).unwrap();
        explain(&a, &ha, &b, &hb, media_type)
    }

    #[test]
    fn checkpoints_name_the_tensors_that_differ_and_by_how_much() {
        let recorded = checkpoint(
            vec![
                (
                    "a.weight",
                    tensor(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], &[2, 3], DType::F32),
                ),
                ("b.bf16", tensor(&[0.5, 1.5, -2.0, 8.0], &[4], DType::BF16)),
                ("c.f16", tensor(&[1.0, 2.0], &[2], DType::F16)),
                ("d.same", tensor(&[7.0], &[1], DType::F32)),
                (
                    "e.reshaped",
                    tensor(&[1.0, 2.0, 3.0, 4.0], &[4], DType::F32),
                ),
                ("gone", tensor(&[0.0], &[1], DType::F32)),
            ],
            "pt",
        );
        let rebuilt = checkpoint(
            vec![
                // two elements off, the largest by 0.5
                (
                    "a.weight",
                    tensor(&[1.0, 2.25, 3.0, 4.0, 5.5, 6.0], &[2, 3], DType::F32),
                ),
                // one element off by 0.25 (exact in bf16)
                ("b.bf16", tensor(&[0.5, 1.5, -2.25, 8.0], &[4], DType::BF16)),
                // same values, but stored as f32 now
                ("c.f16", tensor(&[1.0, 2.0], &[2], DType::F32)),
                ("d.same", tensor(&[7.0], &[1], DType::F32)),
                (
                    "e.reshaped",
                    tensor(&[1.0, 2.0, 3.0, 4.0], &[2, 2], DType::F32),
                ),
                ("new", tensor(&[1.0], &[1], DType::F32)),
            ],
            "np",
        );
        let d = explain_stored(&recorded, &rebuilt, SAFETENSORS);
        let Divergence::Tensors(t) = &d else {
            panic!("expected a tensor explanation, got {d:?}")
        };
        assert_eq!(
            (t.recorded_tensors, t.rebuilt_tensors, t.identical),
            (6, 6, 1)
        );
        let names: Vec<&str> = t.changed.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["a.weight", "b.bf16", "c.f16", "e.reshaped"]);
        assert_eq!(t.changed_count, 4);
        let a = &t.changed[0];
        assert_eq!(a.dtype, ["F32".to_string(), "F32".to_string()]);
        assert_eq!(
            (a.elements, a.differing, a.max_abs_diff),
            (6, Some(2), Some(0.5))
        );
        let b = &t.changed[1];
        assert_eq!(b.dtype, ["BF16".to_string(), "BF16".to_string()]);
        assert_eq!(
            (b.elements, b.differing, b.max_abs_diff),
            (4, Some(1), Some(0.25))
        );
        // A dtype change with equal values: the values are compared, none differ.
        let c = &t.changed[2];
        assert_eq!(c.dtype, ["F16".to_string(), "F32".to_string()]);
        assert_eq!((c.differing, c.max_abs_diff), (Some(0), Some(0.0)));
        let e = &t.changed[3];
        assert_eq!(e.shape, [vec![4], vec![2, 2]]);
        assert_eq!((e.differing, e.max_abs_diff), (None, None));
        assert_eq!(t.only_recorded, ["gone"]);
        assert_eq!(t.only_rebuilt, ["new"]);
        assert_eq!(
            t.metadata,
            [FieldChange {
                path: "format".into(),
                recorded: Some(json!("pt")),
                rebuilt: Some(json!("np")),
            }]
        );
        let text = d.to_string();
        assert!(
            text.starts_with(
                "checkpoint: 4 of 6 tensors differ, 1 only in recorded, 1 only in rebuilt"
            ),
            "{text}"
        );
        assert!(
            text.contains("a.weight F32 [2, 3]: 2 of 6 elements differ, max |Δ| 5.000e-1"),
            "{text}"
        );
        assert!(text.contains("c.f16 dtype F16 → F32 [2]"), "{text}");
        assert!(text.contains("e.reshaped F32 shape [4] → [2, 2]"), "{text}");
        assert!(text.contains("only in recorded: gone"), "{text}");
        assert!(text.contains("metadata: format \"pt\" → \"np\""), "{text}");
        // The structured form is what `ledger replay --json` prints.
        let v = serde_json::to_value(&d).unwrap();
        assert_eq!(v["kind"], "tensors");
        assert_eq!(v["changed"][0]["max_abs_diff"], 0.5);
    }

    #[test]
    fn many_differing_tensors_list_the_first_few_and_count_the_rest() {
        let n = SHOWN + 5;
        let names: Vec<String> = (0..n).map(|i| format!("layer.{i:02}")).collect();
        let side = |v: f32| {
            checkpoint(
                names
                    .iter()
                    .map(|n| (n.as_str(), tensor(&[v, 1.0], &[2], DType::F32)))
                    .collect(),
                "pt",
            )
        };
        // Recognised by its bytes even under a generic media type.
        let d = explain_stored(&side(1.0), &side(-1.0), "application/octet-stream");
        let Divergence::Tensors(t) = &d else {
            panic!("expected a tensor explanation, got {d:?}")
        };
        assert_eq!(t.changed_count, n);
        assert_eq!(t.changed.len(), SHOWN);
        assert_eq!(t.changed[0].name, "layer.00");
        assert_eq!(t.changed[0].max_abs_diff, Some(2.0));
        assert!(d.to_string().contains("and 5 more"), "{d}");
    }

    #[test]
    fn a_nan_on_one_side_is_an_infinite_difference() {
        let x = checkpoint(
            vec![("w", tensor(&[1.0, f32::NAN], &[2], DType::F32))],
            "pt",
        );
        let y = checkpoint(vec![("w", tensor(&[1.0, 2.0], &[2], DType::F32))], "pt");
        let Divergence::Tensors(t) = explain_bytes(&x, &y, SAFETENSORS) else {
            panic!("tensors")
        };
        assert_eq!(t.changed[0].differing, Some(1));
        assert_eq!(t.changed[0].max_abs_diff, Some(f64::INFINITY));
        let v = serde_json::to_value(&t.changed[0]).unwrap();
        assert_eq!(v["max_abs_diff"], "inf");
    }

    #[test]
    fn a_damaged_checkpoint_falls_back_to_bytes_and_says_why() {
        let good = checkpoint(vec![("w", tensor(&[1.0], &[1], DType::F32))], "pt");
        let d = explain_bytes(&good, b"not a checkpoint", SAFETENSORS);
        let Divergence::Bytes(b) = &d else {
            panic!("bytes, got {d:?}")
        };
        assert_eq!(b.offset, 0);
        let note = b.note.as_deref().unwrap();
        assert!(
            note.contains("the rebuilt bytes are not safetensors"),
            "{note}"
        );
    }

    fn scores(instances: Value, resolved: u64) -> Vec<u8> {
        serde_json::to_vec_pretty(&json!({
            "benchmark": "swe-bench-verified",
            "summary": { "resolved": resolved, "total": 3 },
            "instances": instances,
        }))
        .unwrap()
    }

    #[test]
    fn scores_name_the_instances_that_changed_and_the_aggregates() {
        let recorded = scores(
            json!([
                { "instance_id": "django__django-11099", "resolved": true, "tests": { "failed": 0 } },
                { "instance_id": "astropy__astropy-12907", "resolved": true, "tests": { "failed": 0 } },
                { "instance_id": "sympy__sympy-20590", "resolved": false, "tests": { "failed": 2 } },
                { "instance_id": "gone-1", "resolved": false },
            ]),
            2,
        );
        let rebuilt = scores(
            json!([
                { "instance_id": "astropy__astropy-12907", "resolved": true, "tests": { "failed": 0 } },
                { "instance_id": "django__django-11099", "resolved": false, "tests": { "failed": 1 } },
                { "instance_id": "sympy__sympy-20590", "resolved": false, "tests": { "failed": 3 } },
                { "instance_id": "new-1", "resolved": true },
            ]),
            1,
        );
        let d = explain_stored(&recorded, &rebuilt, "application/json");
        let Divergence::Json(j) = &d else {
            panic!("expected a JSON explanation, got {d:?}")
        };
        assert_eq!(j.format, "json");
        let r = j.records.as_ref().expect("keyed records");
        assert_eq!(
            (r.path.as_str(), r.id_field.as_str()),
            ("instances", "instance_id")
        );
        assert_eq!((r.recorded, r.rebuilt, r.changed_count), (4, 4, 2));
        assert_eq!(r.changed[0].id, "django__django-11099");
        assert_eq!(
            r.changed[0].fields,
            [
                FieldChange {
                    path: "resolved".into(),
                    recorded: Some(json!(true)),
                    rebuilt: Some(json!(false)),
                },
                FieldChange {
                    path: "tests.failed".into(),
                    recorded: Some(json!(0)),
                    rebuilt: Some(json!(1)),
                },
            ]
        );
        assert_eq!(r.changed[1].id, "sympy__sympy-20590");
        assert_eq!(r.only_recorded, ["gone-1"]);
        assert_eq!(r.only_rebuilt, ["new-1"]);
        // Reordering alone is no change; the aggregates outside `instances` are compared.
        assert_eq!(
            j.fields,
            [FieldChange {
                path: "summary.resolved".into(),
                recorded: Some(json!(2)),
                rebuilt: Some(json!(1)),
            }]
        );
        let text = d.to_string();
        assert!(
            text.starts_with(
                "json: 2 of 4 records (in `instances` by `instance_id`) changed, 1 only in recorded, 1 only in rebuilt"
            ),
            "{text}"
        );
        assert!(
            text.contains("django__django-11099: resolved true → false; tests.failed 0 → 1"),
            "{text}"
        );
        assert!(
            text.contains("aggregate fields: summary.resolved 2 → 1"),
            "{text}"
        );
    }

    #[test]
    fn jsonl_records_keyed_by_task_id_also_inside_zstd() {
        let lines = |rows: &[Value]| {
            let mut s = String::new();
            for r in rows {
                s.push_str(&r.to_string());
                s.push('\n');
            }
            zstd::encode_all(s.as_bytes(), 3).unwrap()
        };
        let recorded = lines(&[
            json!({"task_id": 1, "passed": true, "completion": "return a + b"}),
            json!({"task_id": 2, "passed": true, "completion": "return a * b"}),
        ]);
        let rebuilt = lines(&[
            json!({"task_id": 1, "passed": true, "completion": "return a + b"}),
            json!({"task_id": 2, "passed": false, "completion": "return a - b"}),
            json!({"task_id": 3, "passed": true, "completion": "pass"}),
        ]);
        let d = explain_stored(&recorded, &rebuilt, "application/zstd");
        let Divergence::Json(j) = &d else {
            panic!("expected a JSON explanation, got {d:?}")
        };
        assert_eq!(j.format, "jsonl (zstd)");
        let r = j.records.as_ref().unwrap();
        assert_eq!((r.id_field.as_str(), r.changed_count), ("task_id", 1));
        assert_eq!(r.changed[0].id, "2");
        let paths: Vec<&str> = r.changed[0]
            .fields
            .iter()
            .map(|f| f.path.as_str())
            .collect();
        assert_eq!(paths, ["completion", "passed"]);
        assert_eq!(r.only_rebuilt, ["3"]);
    }

    #[test]
    fn other_json_lists_the_fields_that_differ_by_path() {
        let x = serde_json::to_vec(
            &json!([{"path": "a.txt", "size": 3}, {"path": "b.txt", "size": 4}]),
        )
        .unwrap();
        let y = serde_json::to_vec(
            &json!([{"path": "a.txt", "size": 3}, {"path": "b.txt", "size": 5}, {"path": "c"}]),
        )
        .unwrap();
        let d = explain_bytes(&x, &y, "application/json");
        let Divergence::Json(j) = &d else {
            panic!("json, got {d:?}")
        };
        assert!(j.records.is_none());
        let paths: Vec<&str> = j.fields.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(paths, ["[1].size", "[2].path"]);
        assert_eq!(j.fields[1].recorded, None);
        assert!(
            d.to_string()
                .contains("[1].size 4 → 5; [2].path (absent) → \"c\""),
            "{d}"
        );
    }

    #[test]
    fn long_strings_are_shortened() {
        let long = "x".repeat(5000);
        let d = explain_bytes(
            json!({"text": long}).to_string().as_bytes(),
            json!({"text": "y"}).to_string().as_bytes(),
            "application/json",
        );
        let Divergence::Json(j) = d else {
            panic!("json")
        };
        let shown = j.fields[0].recorded.as_ref().unwrap().as_str().unwrap();
        assert!(
            shown.len() < 200 && shown.ends_with("(5000 chars)"),
            "{shown}"
        );
    }

    #[test]
    fn text_and_unkeyed_jsonl_name_the_first_differing_record() {
        let d = explain_bytes(
            b"alpha\nbeta\ngamma\n",
            b"alpha\nbeta\ngamma!\n",
            "text/plain",
        );
        let Divergence::Bytes(b) = &d else {
            panic!("bytes, got {d:?}")
        };
        assert_eq!((b.offset, b.record), (16, 3));
        assert_eq!(b.recorded_excerpt, "…gamma");
        assert_eq!(b.rebuilt_excerpt, "…gamma!");

        let x = zstd::encode_all(&b"{\"a\":1}\n{\"a\":2}\n"[..], 3).unwrap();
        let y = zstd::encode_all(&b"{\"a\":1}\n{\"a\":3}\n"[..], 3).unwrap();
        let d = explain_bytes(&x, &y, "application/zstd");
        let Divergence::Bytes(b) = &d else {
            panic!("bytes, got {d:?}")
        };
        assert_eq!((b.what.as_str(), b.record), ("decompressed records", 2));
        assert!(
            d.to_string()
                .starts_with("decompressed records: first difference at byte 13, line/record 2"),
            "{d}"
        );
    }

    #[test]
    fn equal_json_in_another_layout_is_called_a_formatting_difference() {
        let d = explain_bytes(
            b"{\"a\": 1, \"b\": 2}",
            b"{\"b\":2,\"a\":1}",
            "application/json",
        );
        let Divergence::Bytes(b) = &d else {
            panic!("bytes, got {d:?}")
        };
        assert!(b
            .note
            .as_deref()
            .unwrap()
            .contains("only the formatting differs"));
    }

    #[test]
    fn a_missing_blob_is_unreadable_not_a_difference() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::new(dir.path());
        store.create_dirs().unwrap();
        let (there, _) = store.put_bytes(b"there").unwrap();
        let gone = Hash::of(b"gone");
        let d = explain(&store, &gone, &store, &there, "text/plain");
        let Divergence::Unreadable { reason } = &d else {
            panic!("unreadable, got {d:?}")
        };
        assert!(
            reason.starts_with(&format!("recorded {}", gone.short())),
            "{reason}"
        );
    }
}
