//! The event vocabulary. Events are the source of truth; everything else is derived from them.
//!
//! Encoding is postcard (a specified, stable wire format). Variants and fields are only ever
//! appended, never reordered, so old logs keep decoding and hashes never move; the golden-byte
//! tests in `tests/golden.rs` pin that.

use crate::hash::Hash;
use serde::{Deserialize, Serialize};

/// One record of the log. `prev` chains it to the record before, so truncation or tampering
/// anywhere breaks the chain.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub seq: u64,
    pub prev: Hash,
    /// Wall-clock time of the append, milliseconds since the Unix epoch. Never part of a key.
    pub time_ms: u64,
    pub kind: EventKind,
}

// Events are decoded and handled one at a time; boxing the stage run would only add an
// allocation per event.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum EventKind {
    ArtifactAdded(ArtifactAdded),
    RunStarted(RunStarted),
    StageRun(StageRun),
    Observation(Observation),
    Tag(Tag),
    Collected(Collected),
    /// `ledger import` of a bundle: what it held. The events it brought follow, each wrapped
    /// as `Foreign`.
    Imported(Imported),
    /// An event that came in a bundle. It is kept as the bundle told it, and it is never
    /// taken for this ledger's own: unless the import was trusted, it answers no action-cache
    /// lookup and no observation request of a local stage, and it moves no tag.
    Foreign(Foreign),
}

impl EventKind {
    pub fn name(&self) -> &'static str {
        match self {
            EventKind::ArtifactAdded(_) => "artifact",
            EventKind::RunStarted(_) => "run",
            EventKind::StageRun(_) => "stage",
            EventKind::Observation(_) => "observation",
            EventKind::Tag(_) => "tag",
            EventKind::Collected(_) => "collected",
            EventKind::Imported(_) => "import",
            EventKind::Foreign(_) => "foreign",
        }
    }

    /// The event as it was made, and the import it came with if it is foreign.
    pub fn claim(&self) -> (&EventKind, Option<&Foreign>) {
        match self {
            EventKind::Foreign(f) => (&f.event, Some(f)),
            kind => (kind, None),
        }
    }

    /// The event as it was made, by value, and the bundle it came with if it is foreign.
    pub fn into_claim(self) -> (EventKind, Option<Hash>) {
        match self {
            EventKind::Foreign(f) => (*f.event, Some(f.bundle)),
            kind => (kind, None),
        }
    }
}

/// A blob entered the store from outside a stage (a file, a bundle, a config).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ArtifactAdded {
    pub hash: Hash,
    pub size: u64,
    pub media_type: String,
    pub origin: Origin,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Origin {
    /// `ledger add` or a stage's external input; the path as given.
    File { path: String },
    /// The experiment config of a `ledger run`.
    Config { path: String },
}

/// One invocation of `ledger run`: groups the stage runs it caused.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunStarted {
    pub run_id: Hash,
    pub experiment: String,
    pub config: Hash,
    pub config_path: String,
}

/// One stage executed (or answered from the cache) inside a run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StageRun {
    pub run_id: Hash,
    /// The node id in the experiment config.
    pub node: String,
    pub stage: String,
    pub version: u32,
    pub action_key: Hash,
    /// Canonical JSON of the stage's full parameters, defaults included.
    pub config: String,
    pub seed: u64,
    pub inputs: Vec<(String, Hash)>,
    pub outputs: Vec<Output>,
    pub metrics: Vec<(String, f64)>,
    pub env: Environment,
    pub status: RunStatus,
    pub started_ms: u64,
    pub ended_ms: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Output {
    pub name: String,
    pub hash: Hash,
    pub size: u64,
    pub media_type: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum RunStatus {
    Succeeded,
    /// Outputs reused from the successful run recorded at event `source_seq`.
    Cached {
        source_seq: u64,
    },
    Failed {
        error: String,
    },
}

/// Facts about where a stage ran; recorded for audit, never part of an action key.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Environment {
    pub host: String,
    pub os: String,
    pub arch: String,
    pub threads: u32,
    /// What computed, in words: `cpu: <model>` (every stage runs on the CPU today), then
    /// `; gpu present, unused: cuda:N <name> (cc <major.minor>, <memory>), ...; driver CUDA
    /// <version>, kernel module <release>` for the NVIDIA GPUs the driver API lists. A string, so GPU and driver need no new field (the encoding is pinned).
    pub device: String,
    pub cpu_features: Vec<String>,
    pub ledger_version: String,
}

/// A recorded external response (HTTP, LLM, container exec), keyed by the hash of its request,
/// so a replay needs no network.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Observation {
    pub source: String,
    pub request: Hash,
    pub response: Hash,
    pub response_size: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Tag {
    pub name: String,
    pub target: Hash,
}

/// Blobs deliberately removed by `ledger gc`; their events stay, their bytes do not.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Collected {
    pub hashes: Vec<Hash>,
}

/// One `ledger import`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Imported {
    /// BLAKE3 of the bundle file: what every `Foreign` event of this import names.
    pub bundle: Hash,
    /// The artifact the bundle was exported for.
    pub root: Hash,
    /// The bundle's path as given to `ledger import`, for people (never opened again).
    pub path: String,
    /// Events the bundle held, and how many of them this ledger lacked (appended as `Foreign`).
    pub events: u32,
    pub appended: u32,
    /// Blobs the bundle held, and how many of them this ledger lacked.
    pub blobs: u32,
    pub blobs_added: u32,
    /// The user vouched for the bundle (`--trust`): its steps answer the action cache and its
    /// observations answer requests, as this ledger's own would. Still recorded as foreign.
    pub trusted: bool,
}

/// An event from a bundle, as the bundle holds it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Foreign {
    /// The bundle it came in (see `Imported::bundle`).
    pub bundle: Hash,
    /// See `Imported::trusted`.
    pub trusted: bool,
    pub event: Box<EventKind>,
}

impl Event {
    pub fn encode(&self) -> Vec<u8> {
        postcard::to_stdvec(self).expect("events always encode")
    }

    pub fn decode(bytes: &[u8]) -> Result<Event, postcard::Error> {
        postcard::from_bytes(bytes)
    }

    /// Every artifact address the event mentions.
    pub fn artifacts(&self) -> Vec<Hash> {
        self.kind.artifacts()
    }
}

impl EventKind {
    /// Every artifact address the event mentions (a foreign event: what it claims).
    pub fn artifacts(&self) -> Vec<Hash> {
        match self {
            EventKind::ArtifactAdded(a) => vec![a.hash],
            EventKind::RunStarted(r) => vec![r.config],
            EventKind::StageRun(s) => s
                .inputs
                .iter()
                .map(|(_, h)| *h)
                .chain(s.outputs.iter().map(|o| o.hash))
                .collect(),
            EventKind::Observation(o) => vec![o.response],
            EventKind::Tag(t) => vec![t.target],
            EventKind::Collected(_) | EventKind::Imported(_) => vec![],
            EventKind::Foreign(f) => f.event.artifacts(),
        }
    }
}

impl StageRun {
    pub fn output(&self, name: &str) -> Option<&Output> {
        self.outputs.iter().find(|o| o.name == name)
    }

    pub fn succeeded(&self) -> bool {
        matches!(self.status, RunStatus::Succeeded)
    }
}

impl Environment {
    /// The environment of this process.
    pub fn current() -> Environment {
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get() as u32);
        Environment {
            host: hostname(),
            os: std::env::consts::OS.to_string(),
            arch: std::env::consts::ARCH.to_string(),
            threads,
            device: device(),
            cpu_features: cpu_features(),
            ledger_version: env!("CARGO_PKG_VERSION").to_string(),
        }
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .or_else(|_| std::env::var("HOSTNAME"))
        .unwrap_or_else(|_| "unknown".to_string())
}

/// The `device` description of this machine (see [`Environment::device`]). GPUs come from
/// the CUDA driver API (`gpu::discover`), and the kernel module's release from
/// `/proc/driver/nvidia/version`.
fn device() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| cpu_model(&s))
        .map_or_else(|| "cpu".to_string(), |m| format!("cpu: {m}"));
    let probe = gpu::discover();
    if probe.gpus().is_empty() {
        return cpu;
    }
    let module = std::fs::read_to_string("/proc/driver/nvidia/version")
        .ok()
        .and_then(|t| parse_nvidia_proc(&t))
        .map_or_else(String::new, |v| format!(", kernel module {v}"));
    format!("{cpu}; gpu present, unused: {}{module}", probe.describe())
}

/// The first `model name` (x86) or `Model` (arm) line of `/proc/cpuinfo`.
fn cpu_model(cpuinfo: &str) -> Option<String> {
    cpuinfo.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        let (k, v) = (k.trim(), v.trim());
        (matches!(k, "model name" | "Model") && !v.is_empty()).then(|| v.to_string())
    })
}

/// The driver version in `/proc/driver/nvidia/version`: the first dotted number after
/// `Module` (`NVRM version: NVIDIA UNIX x86_64 Kernel Module  550.54.15  Tue Mar ...`, or
/// `... Open Kernel Module for x86_64  550.54.15  Release Build ...`).
fn parse_nvidia_proc(text: &str) -> Option<String> {
    let line = text.lines().find(|l| l.starts_with("NVRM version:"))?;
    line.split_whitespace()
        .skip_while(|w| *w != "Module")
        .find(|w| w.contains('.') && w.chars().all(|c| c.is_ascii_digit() || c == '.'))
        .map(str::to_string)
}

fn cpu_features() -> Vec<String> {
    #[allow(unused_mut)]
    let mut features = Vec::new();
    #[cfg(target_arch = "x86_64")]
    {
        macro_rules! probe {
            ($($f:tt),*) => {$(
                if std::is_x86_feature_detected!($f) { features.push($f.to_string()); }
            )*};
        }
        probe!("sse4.1", "avx", "avx2", "fma", "avx512f", "avx512bw");
    }
    #[cfg(target_arch = "aarch64")]
    {
        if std::arch::is_aarch64_feature_detected!("neon") {
            features.push("neon".to_string());
        }
    }
    features
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// `YYYY-MM-DDTHH:MM:SSZ` for seconds since the Unix epoch (UTC, proleptic Gregorian).
pub fn rfc3339(secs: i64) -> String {
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn device_description_parsers() {
        let cpuinfo = "processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC 9654\n";
        assert_eq!(super::cpu_model(cpuinfo).as_deref(), Some("AMD EPYC 9654"));
        assert_eq!(super::cpu_model("processor\t: 0\n"), None);
        let proc = "NVRM version: NVIDIA UNIX x86_64 Kernel Module  550.54.15  Tue Mar  5 22:23:56 UTC 2024\nGCC version:  gcc version 12.2.0\n";
        assert_eq!(super::parse_nvidia_proc(proc).as_deref(), Some("550.54.15"));
        let open = "NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  570.86.15  Release Build  (dvs-builder@U16-I3-B03-4-3)\n";
        assert_eq!(super::parse_nvidia_proc(open).as_deref(), Some("570.86.15"));
        assert_eq!(super::parse_nvidia_proc("GCC version: 12\n"), None);
        let here = super::device();
        assert!(here.starts_with("cpu"), "{here}");
    }

    #[test]
    fn rfc3339_formats_utc() {
        assert_eq!(super::rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(super::rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(super::rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
    }
}
