//! `leakcheck`: decontamination by 13-gram overlap between the training corpora and each
//! benchmark instance (recipe: leak ratio = shared unique 13-grams / the instance's unique
//! 13-grams; leaked above 0.10).
//!
//! Words (not published; chosen here): the text is lower-cased and split at every character
//! that is not alphanumeric or `_`, so punctuation and whitespace separate words and are
//! dropped (`foo(x, y)` is `foo x y`). N-grams never span two text fields or two strings.
//!
//! Inputs: `benchmark` (JSONL, one instance a line) and one to eight corpora, `corpus` and
//! `corpus_2` … `corpus_8`. A corpus may be a zstd-JSONL shard (`reconstruct` samples) or
//! plain JSONL (trajectories), or plain text, optionally gzip- or zstd-compressed. In JSONL a
//! record with a string `text` field contributes that field only (a sample's rendered
//! training text); any other record contributes every string it holds (messages, tool-call
//! arguments). A file whose first non-empty line is not a JSON object is plain text.
//!
//! Memory is bounded by the benchmark, not the corpus: the instances' 13-grams are hashed
//! (64-bit rolling polynomial over 64-bit FNV-1a word hashes) into one table, and the corpus
//! streams past it, marking the n-grams it contains.
//!
//! | param | default | meaning |
//! | --- | --- | --- |
//! | `n` | 13 | n-gram length in words |
//! | `threshold` | 0.10 | leaked when the ratio is strictly above it |
//! | `fields` | auto | text fields of an instance; auto: `prompt` + `canonical_solution` (HumanEval) or `problem_statement` + `patch` (SWE-bench) |
//! | `id_field` | auto | `task_id`, else `instance_id` |
//!
//! Outputs: `report` (JSON: per instance `id`, `ngrams`, `shared`, `ratio`, `leaked`; the
//! corpora read; counts) and `clean` (the benchmark lines of the instances not leaked, byte for
//! byte). An instance with fewer than `n` words has no n-grams: ratio 0, counted `too_short`.

use anyhow::{anyhow, bail, Context};
use ledger::config::{parse_params, ParamError};
use ledger::stage::{InputSpec, Stage, StageContext};
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet, VecDeque};
use std::io::{BufRead, BufReader, Read};

pub struct LeakCheck;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Params {
    #[serde(default = "default_n")]
    pub n: usize,
    #[serde(default = "default_threshold")]
    pub threshold: f64,
    /// Empty: chosen by the instance's schema.
    #[serde(default)]
    pub fields: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id_field: Option<String>,
}

fn default_n() -> usize {
    13
}
fn default_threshold() -> f64 {
    0.10
}

const CORPORA: [&str; 8] = [
    "corpus", "corpus_2", "corpus_3", "corpus_4", "corpus_5", "corpus_6", "corpus_7", "corpus_8",
];

const INPUTS: [InputSpec; 9] = {
    const fn corpus(name: &'static str, required: bool) -> InputSpec {
        InputSpec {
            name,
            required,
            description: "training data: a zstd-JSONL shard, JSONL (e.g. trajectories) or text",
        }
    }
    [
        InputSpec {
            name: "benchmark",
            required: true,
            description: "benchmark instances, JSONL (HumanEval problems, SWE-bench instances)",
        },
        corpus(CORPORA[0], true),
        corpus(CORPORA[1], false),
        corpus(CORPORA[2], false),
        corpus(CORPORA[3], false),
        corpus(CORPORA[4], false),
        corpus(CORPORA[5], false),
        corpus(CORPORA[6], false),
        corpus(CORPORA[7], false),
    ]
};

/// Calls `f` with each lower-cased word of `text` (runs of alphanumerics and `_`).
pub fn words(text: &str, mut f: impl FnMut(&str)) {
    let mut word = String::new();
    for c in text.chars() {
        if c.is_alphanumeric() || c == '_' {
            word.extend(c.to_lowercase());
        } else if !word.is_empty() {
            f(&word);
            word.clear();
        }
    }
    if !word.is_empty() {
        f(&word);
    }
}

fn word_hash(word: &str) -> u64 {
    // FNV-1a, 64-bit.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in word.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

const BASE: u64 = 0x9e37_79b9_7f4a_7c15;

/// Rolling hash of the last `n` words: `sum w_i * BASE^(n-1-i)` mod 2^64.
pub struct Ngrams {
    n: usize,
    window: VecDeque<u64>,
    hash: u64,
    top: u64,
}

impl Ngrams {
    pub fn new(n: usize) -> Ngrams {
        Ngrams {
            n,
            window: VecDeque::with_capacity(n),
            hash: 0,
            top: BASE.wrapping_pow(n as u32 - 1),
        }
    }

    /// Starts over (a new string: n-grams never span two).
    pub fn reset(&mut self) {
        self.window.clear();
        self.hash = 0;
    }

    /// Adds a word; the hash of the n-gram it completes, once there are `n` words.
    pub fn push(&mut self, word: &str) -> Option<u64> {
        let w = word_hash(word);
        if self.window.len() == self.n {
            let out = self.window.pop_front().expect("a full window");
            self.hash = self.hash.wrapping_sub(out.wrapping_mul(self.top));
        }
        self.window.push_back(w);
        self.hash = self.hash.wrapping_mul(BASE).wrapping_add(w);
        (self.window.len() == self.n).then_some(self.hash)
    }

    /// Every n-gram hash of `text`.
    pub fn of(&mut self, text: &str, mut f: impl FnMut(u64)) {
        self.reset();
        words(text, |w| {
            if let Some(h) = self.push(w) {
                f(h)
            }
        });
        self.reset();
    }
}

struct Instance {
    id: String,
    line: String,
    ngrams: HashSet<u64>,
}

fn text_fields(
    obj: &serde_json::Map<String, serde_json::Value>,
    p: &Params,
    line_no: usize,
) -> anyhow::Result<Vec<String>> {
    let names: Vec<String> = if !p.fields.is_empty() {
        p.fields.clone()
    } else if obj.contains_key("prompt") {
        vec!["prompt".into(), "canonical_solution".into()]
    } else if obj.contains_key("problem_statement") {
        vec!["problem_statement".into(), "patch".into()]
    } else {
        bail!(
            "benchmark line {line_no}: neither `prompt` (HumanEval) nor `problem_statement` \
             (SWE-bench); set `fields`"
        );
    };
    names
        .iter()
        .map(|f| match obj.get(f) {
            Some(serde_json::Value::String(s)) => Ok(s.clone()),
            Some(_) => bail!("benchmark line {line_no}: field `{f}` is not a string"),
            None => bail!("benchmark line {line_no}: no field `{f}`"),
        })
        .collect()
}

fn instance_id(
    obj: &serde_json::Map<String, serde_json::Value>,
    p: &Params,
    line_no: usize,
) -> anyhow::Result<String> {
    let candidates: Vec<&str> = match &p.id_field {
        Some(f) => vec![f.as_str()],
        None => vec!["task_id", "instance_id"],
    };
    for c in &candidates {
        match obj.get(*c) {
            Some(serde_json::Value::String(s)) => return Ok(s.clone()),
            Some(serde_json::Value::Number(n)) => return Ok(n.to_string()),
            _ => {}
        }
    }
    bail!(
        "benchmark line {line_no}: no id field ({})",
        candidates.join(" or ")
    )
}

fn parse_benchmark(bytes: &[u8], p: &Params) -> anyhow::Result<Vec<Instance>> {
    let text = std::str::from_utf8(bytes).context("input `benchmark` is not UTF-8")?;
    let mut ngrams = Ngrams::new(p.n);
    let mut out = Vec::new();
    let mut seen = HashSet::new();
    for (i, line) in text.lines().enumerate() {
        let line_no = i + 1;
        if line.trim().is_empty() {
            continue;
        }
        let value: serde_json::Value = serde_json::from_str(line)
            .with_context(|| format!("benchmark line {line_no} is not JSON"))?;
        let obj = value
            .as_object()
            .ok_or_else(|| anyhow!("benchmark line {line_no} is not a JSON object"))?;
        let id = instance_id(obj, p, line_no)?;
        if !seen.insert(id.clone()) {
            bail!("benchmark line {line_no}: id `{id}` appears twice");
        }
        let mut set = HashSet::new();
        for field in text_fields(obj, p, line_no)? {
            ngrams.of(&field, |h| {
                set.insert(h);
            });
        }
        out.push(Instance {
            id,
            line: line.to_string(),
            ngrams: set,
        });
    }
    Ok(out)
}

/// Counts of one corpus input.
#[derive(Default, Serialize)]
struct CorpusStats {
    input: String,
    hash: String,
    format: &'static str,
    records: u64,
    ngrams: u64,
}

/// Streams one corpus past `table`, marking the n-grams it contains.
fn scan_corpus(
    mut reader: impl Read,
    n: usize,
    table: &mut HashMap<u64, bool>,
    stats: &mut CorpusStats,
    what: &str,
) -> anyhow::Result<()> {
    let mut magic = [0u8; 8];
    let mut got = 0;
    while got < magic.len() {
        let k = reader.read(&mut magic[got..])?;
        if k == 0 {
            break;
        }
        got += k;
    }
    let head = &magic[..got];
    if head == crate::tokenize::MAGIC {
        bail!("{what} is a token shard; give the samples it was tokenized from");
    }
    let chained = std::io::Cursor::new(head.to_vec()).chain(reader);
    let (inner, compression): (Box<dyn Read>, &str) = if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd])
    {
        (
            Box::new(zstd::Decoder::new(chained).with_context(|| format!("{what}: zstd"))?),
            "zstd-",
        )
    } else if head.starts_with(&[0x1f, 0x8b]) {
        (Box::new(flate2::read::GzDecoder::new(chained)), "gzip-")
    } else {
        (Box::new(chained), "")
    };
    let mut lines = BufReader::with_capacity(1 << 20, inner);
    let mut ngrams = Ngrams::new(n);
    let mut mark = |h: u64, stats: &mut CorpusStats| {
        stats.ngrams += 1;
        if let Some(found) = table.get_mut(&h) {
            *found = true;
        }
    };
    let mut json: Option<bool> = None;
    let mut line = String::new();
    let mut line_no = 0u64;
    loop {
        line.clear();
        let limit = crate::shard::MAX_RECORD_BYTES;
        let k = (&mut lines)
            .take(limit as u64 + 1)
            .read_line(&mut line)
            .with_context(|| format!("{what}: reading line {}", line_no + 1))?;
        if k == 0 {
            break;
        }
        if !line.ends_with('\n') && line.len() > limit {
            bail!(
                "{what}: line {} is longer than the {limit}-byte limit of a record (a damaged or hostile corpus)",
                line_no + 1
            );
        }
        line_no += 1;
        let trimmed = line.trim();
        if json.is_none() {
            if trimmed.is_empty() {
                continue;
            }
            let is_json = trimmed.starts_with('{')
                && serde_json::from_str::<serde_json::Value>(trimmed).is_ok_and(|v| v.is_object());
            json = Some(is_json);
            stats.format = match (compression, is_json) {
                ("zstd-", true) => "zstd-jsonl",
                ("gzip-", true) => "gzip-jsonl",
                (_, true) => "jsonl",
                ("zstd-", false) => "zstd-text",
                ("gzip-", false) => "gzip-text",
                (_, false) => "text",
            };
        }
        if json == Some(true) {
            if trimmed.is_empty() {
                continue;
            }
            let value: serde_json::Value = serde_json::from_str(trimmed)
                .with_context(|| format!("{what}: line {line_no} is not JSON"))?;
            stats.records += 1;
            match value.get("text") {
                Some(serde_json::Value::String(text)) => {
                    ngrams.of(text, |h| mark(h, stats));
                }
                _ => each_string(&value, &mut |s| ngrams.of(s, |h| mark(h, stats))),
            }
        } else {
            // Plain text: n-grams run across lines (a newline is just whitespace).
            stats.records += 1;
            words(&line, |w| {
                if let Some(h) = ngrams.push(w) {
                    mark(h, stats);
                }
            });
        }
    }
    if stats.format.is_empty() {
        stats.format = "empty";
    }
    Ok(())
}

fn each_string(v: &serde_json::Value, f: &mut impl FnMut(&str)) {
    match v {
        serde_json::Value::String(s) => f(s),
        serde_json::Value::Array(a) => a.iter().for_each(|x| each_string(x, f)),
        serde_json::Value::Object(o) => o.values().for_each(|x| each_string(x, f)),
        _ => {}
    }
}

impl Stage for LeakCheck {
    fn name(&self) -> &'static str {
        "leakcheck"
    }

    fn version(&self) -> u32 {
        1
    }

    fn description(&self) -> &'static str {
        "13-gram overlap between training corpora and benchmark instances → leak report + clean benchmark"
    }

    fn inputs(&self) -> &'static [InputSpec] {
        &INPUTS
    }

    fn outputs(&self) -> &'static [&'static str] {
        &["report", "clean"]
    }

    fn check(&self, params: toml::Table) -> Result<serde_json::Value, ParamError> {
        let p: Params = parse_params(params)?;
        if !(1..=64).contains(&p.n) {
            return Err(ParamError::new("n", "must be between 1 and 64"));
        }
        if !(0.0..1.0).contains(&p.threshold) {
            return Err(ParamError::new("threshold", "must be in [0, 1)"));
        }
        if p.fields.iter().any(|f| f.is_empty()) {
            return Err(ParamError::new("fields", "field names must not be empty"));
        }
        if p.id_field.as_deref() == Some("") {
            return Err(ParamError::new("id_field", "must not be empty"));
        }
        Ok(serde_json::to_value(p).expect("params serialize"))
    }

    fn execute(&self, ctx: &mut StageContext) -> anyhow::Result<()> {
        let p: Params = ctx.params()?;
        let instances = parse_benchmark(&ctx.read_input("benchmark")?, &p)?;
        let mut table: HashMap<u64, bool> = instances
            .iter()
            .flat_map(|i| i.ngrams.iter().map(|&h| (h, false)))
            .collect();
        let mut corpora = Vec::new();
        for name in CORPORA {
            let Ok(hash) = ctx.input(name) else { continue };
            let what = format!("input `{name}` ({})", hash.short());
            let mut stats = CorpusStats {
                input: name.to_string(),
                hash: hash.to_hex(),
                ..Default::default()
            };
            ctx.progress().set_message(format!("scanning {name}"));
            // A dataset of shards is scanned shard by shard.
            for part in ctx.parts(&hash)? {
                scan_corpus(ctx.open_blob(&part)?, p.n, &mut table, &mut stats, &what)?;
            }
            corpora.push(stats);
        }
        let mut report = Vec::with_capacity(instances.len());
        let mut clean = String::new();
        let (mut leaked, mut too_short) = (0u64, 0u64);
        let mut max_ratio = 0.0f64;
        for inst in &instances {
            let total = inst.ngrams.len();
            let shared = inst.ngrams.iter().filter(|h| table[*h]).count();
            let ratio = if total == 0 {
                too_short += 1;
                0.0
            } else {
                shared as f64 / total as f64
            };
            let is_leaked = ratio > p.threshold;
            max_ratio = max_ratio.max(ratio);
            if is_leaked {
                leaked += 1;
            } else {
                clean.push_str(&inst.line);
                clean.push('\n');
            }
            report.push(serde_json::json!({
                "id": inst.id,
                "ngrams": total,
                "shared": shared,
                "ratio": ratio,
                "leaked": is_leaked,
            }));
        }
        let n_inst = instances.len() as u64;
        ctx.metric("instances", n_inst as f64);
        ctx.metric("leaked", leaked as f64);
        ctx.metric("too_short", too_short as f64);
        ctx.metric("max_ratio", max_ratio);
        ctx.metric(
            "corpus.ngrams",
            corpora.iter().map(|c| c.ngrams).sum::<u64>() as f64,
        );
        let doc = serde_json::json!({
            "n": p.n,
            "threshold": p.threshold,
            "words": "lower-cased runs of alphanumerics and _",
            "fields": if p.fields.is_empty() { serde_json::json!("auto") } else { serde_json::json!(p.fields) },
            "corpora": corpora,
            "counts": {
                "instances": n_inst,
                "leaked": leaked,
                "clean": n_inst - leaked,
                "too_short": too_short,
            },
            "instances": report,
        });
        let mut bytes = serde_json::to_vec_pretty(&doc)?;
        bytes.push(b'\n');
        ctx.write_output("report", "application/json", &bytes)?;
        ctx.write_output("clean", "application/x-ndjson", clean.as_bytes())?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all_words(text: &str) -> Vec<String> {
        let mut out = Vec::new();
        words(text, |w| out.push(w.to_string()));
        out
    }

    #[test]
    fn leakcheck_words_are_lowercased_and_split_at_punctuation() {
        assert_eq!(
            all_words("def Foo_bar(x, y):\n    return x*2 # Ünï"),
            ["def", "foo_bar", "x", "y", "return", "x", "2", "ünï"]
        );
        assert!(all_words(" ... \n").is_empty());
    }

    #[test]
    fn leakcheck_rolling_hash_equals_a_fresh_hash_of_the_window() {
        let text = "a b c d e f g h";
        let mut rolling = Vec::new();
        Ngrams::new(3).of(text, |h| rolling.push(h));
        let ws: Vec<&str> = text.split(' ').collect();
        let fresh: Vec<u64> = ws
            .windows(3)
            .map(|w| {
                let mut g = Ngrams::new(3);
                w.iter().filter_map(|x| g.push(x)).last().unwrap()
            })
            .collect();
        assert_eq!(rolling, fresh);
        assert_eq!(rolling.len(), 6);
        // Same words, other case and punctuation: the same n-grams.
        let mut other = Vec::new();
        Ngrams::new(3).of("A, b; C (d) e - F g. H!", |h| other.push(h));
        assert_eq!(other, rolling);
    }
}
