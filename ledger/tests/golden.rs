//! Golden bytes: the postcard encoding of every event kind and the action-key derivation are
//! pinned here, so a dependency upgrade or a careless edit cannot silently move hashes.
//! If one of these fails, the on-disk format changed: that needs a new log header version and
//! a migration, never an edited expectation.

use ledger::action::{action_key, canonical_json};
use ledger::event::*;
use ledger::Hash;

fn h(byte: u8) -> Hash {
    Hash([byte; 32])
}

fn env() -> Environment {
    Environment {
        host: "h".into(),
        os: "linux".into(),
        arch: "x86_64".into(),
        threads: 2,
        device: "cpu".into(),
        cpu_features: vec!["avx2".into()],
        ledger_version: "0.1.0".into(),
    }
}

fn event(kind: EventKind) -> Event {
    Event {
        seq: 300,
        prev: h(0xab),
        time_ms: 1_700_000_000_000,
        kind,
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Prefix shared by all the golden events: seq 300, prev = 32 x 0xab, time.
const HEAD: &str = concat!(
    "ac02",
    "abababababababababababababababababababababababababababababababab",
    "80d095ffbc31"
);

fn assert_golden(kind: EventKind, body: &str) {
    let e = event(kind);
    let bytes = e.encode();
    assert_eq!(
        hex(&bytes),
        format!("{HEAD}{body}"),
        "encoding of {:?}",
        e.kind.name()
    );
    assert_eq!(Event::decode(&bytes).unwrap(), e, "round trip");
}

#[test]
fn artifact_added() {
    assert_golden(
        EventKind::ArtifactAdded(ArtifactAdded {
            hash: h(1),
            size: 1234,
            media_type: "text/plain".into(),
            origin: Origin::File {
                path: "a.txt".into(),
            },
        }),
        concat!(
            "00",
            "0101010101010101010101010101010101010101010101010101010101010101",
            "d209",
            "0a746578742f706c61696e",
            "00",
            "05612e747874"
        ),
    );
    assert_golden(
        EventKind::ArtifactAdded(ArtifactAdded {
            hash: h(1),
            size: 0,
            media_type: String::new(),
            origin: Origin::Config { path: "c".into() },
        }),
        concat!(
            "00",
            "0101010101010101010101010101010101010101010101010101010101010101",
            "00",
            "00",
            "01",
            "0163"
        ),
    );
}

#[test]
fn run_started() {
    assert_golden(
        EventKind::RunStarted(RunStarted {
            run_id: h(2),
            experiment: "q".into(),
            config: h(3),
            config_path: "q.toml".into(),
        }),
        concat!(
            "01",
            "0202020202020202020202020202020202020202020202020202020202020202",
            "0171",
            "0303030303030303030303030303030303030303030303030303030303030303",
            "06712e746f6d6c"
        ),
    );
}

fn stage_run(status: RunStatus) -> EventKind {
    EventKind::StageRun(StageRun {
        run_id: h(2),
        node: "n".into(),
        stage: "s".into(),
        version: 1,
        action_key: h(4),
        config: "{}".into(),
        seed: 7,
        inputs: vec![("i".into(), h(5))],
        outputs: vec![Output {
            name: "o".into(),
            hash: h(6),
            size: 9,
            media_type: "m".into(),
        }],
        metrics: vec![("loss".into(), 0.5)],
        env: env(),
        status,
        started_ms: 1,
        ended_ms: 2,
    })
}

const STAGE_BODY: &str = concat!(
    "02",
    "0202020202020202020202020202020202020202020202020202020202020202",
    "016e",
    "0173",
    "01",
    "0404040404040404040404040404040404040404040404040404040404040404",
    "027b7d",
    "07",
    "01",
    "0169",
    "0505050505050505050505050505050505050505050505050505050505050505",
    "01",
    "016f",
    "0606060606060606060606060606060606060606060606060606060606060606",
    "09",
    "016d",
    "01",
    "046c6f7373",
    "000000000000e03f",
    "0168",
    "056c696e7578",
    "067838365f3634",
    "02",
    "03637075",
    "01",
    "0461767832",
    "05302e312e30",
);

#[test]
fn stage_run_each_status() {
    assert_golden(
        stage_run(RunStatus::Succeeded),
        &format!("{STAGE_BODY}000102"),
    );
    assert_golden(
        stage_run(RunStatus::Cached { source_seq: 300 }),
        &format!("{STAGE_BODY}01ac020102"),
    );
    assert_golden(
        stage_run(RunStatus::Failed { error: "x".into() }),
        &format!("{STAGE_BODY}0201780102"),
    );
}

#[test]
fn observation() {
    assert_golden(
        EventKind::Observation(Observation {
            source: "http".into(),
            request: h(7),
            response: h(8),
            response_size: 100,
        }),
        concat!(
            "03",
            "0468747470",
            "0707070707070707070707070707070707070707070707070707070707070707",
            "0808080808080808080808080808080808080808080808080808080808080808",
            "64"
        ),
    );
}

#[test]
fn tag_and_collected() {
    assert_golden(
        EventKind::Tag(Tag {
            name: "best".into(),
            target: h(9),
        }),
        concat!(
            "04",
            "0462657374",
            "0909090909090909090909090909090909090909090909090909090909090909"
        ),
    );
    assert_golden(
        EventKind::Collected(Collected {
            hashes: vec![h(10), h(11)],
        }),
        concat!(
            "05",
            "02",
            "0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a",
            "0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b"
        ),
    );
}

#[test]
fn imported_and_foreign() {
    assert_golden(
        EventKind::Imported(Imported {
            bundle: h(12),
            root: h(13),
            path: "b".into(),
            events: 3,
            appended: 2,
            blobs: 1,
            blobs_added: 0,
            trusted: false,
        }),
        concat!(
            "06",
            "0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c",
            "0d0d0d0d0d0d0d0d0d0d0d0d0d0d0d0d0d0d0d0d0d0d0d0d0d0d0d0d0d0d0d0d",
            "0162",
            "03020100",
            "00"
        ),
    );
    assert_golden(
        EventKind::Foreign(Foreign {
            bundle: h(12),
            trusted: true,
            event: Box::new(EventKind::Tag(Tag {
                name: "best".into(),
                target: h(9),
            })),
        }),
        concat!(
            "07",
            "0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c",
            "01",
            "04",
            "0462657374",
            "0909090909090909090909090909090909090909090909090909090909090909"
        ),
    );
}

#[test]
fn action_key_is_pinned() {
    let config: serde_json::Value = serde_json::from_str(r#"{"b":[1,2.5],"a":"x"}"#).unwrap();
    let canonical = canonical_json(&config);
    assert_eq!(canonical, r#"{"a":"x","b":[1,2.5]}"#);
    let key = action_key(
        "pack",
        1,
        &canonical,
        &[("files".into(), h(1)), ("extra".into(), h(2))],
        42,
    );
    assert_eq!(
        key.to_hex(),
        "2d8ca953b7ce7d0fdcf10db60a6f2bf9495c39b0ca0ccd8efeb5b4001d203c95"
    );
}

#[test]
fn log_file_layout_is_pinned() {
    use ledger::log::{self, Tail, Writer};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.log");
    log::create(&path, &ledger::storage::Storage::disk()).unwrap();
    let mut w = Writer::open(&path, Tail::EMPTY, 0, &ledger::storage::Storage::disk()).unwrap();
    let tag = || {
        EventKind::Tag(Tag {
            name: "t".into(),
            target: h(9),
        })
    };
    let stored = w.append(vec![tag(), tag()]).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    assert_eq!(&bytes[..8], b"DVLEDG01");
    let mut at = 8;
    let mut prev = Hash::ZERO;
    for (i, s) in stored.iter().enumerate() {
        assert_eq!(s.offset, at as u64);
        let len = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
        let payload = &bytes[at + 4..at + 4 + len];
        assert_eq!(payload, s.event.encode().as_slice());
        assert_eq!(
            &bytes[at + 4 + len..at + 4 + len + 32],
            blake3::hash(payload).as_bytes()
        );
        assert_eq!(s.event.seq, i as u64);
        assert_eq!(s.event.prev, prev, "each event names the one before");
        prev = s.id;
        at += 4 + len + 32;
    }
    assert_eq!(at, bytes.len());
}
