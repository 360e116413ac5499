//! Bad experiment configs are rejected before the ledger is touched, with the file, the line
//! and the key in the message.

mod common;

use common::{ingest_pack_config, Ledger, Output};

/// A ledger that already holds one successful run, so "nothing written" is a real check.
fn fixture() -> Ledger {
    let l = Ledger::init();
    l.data_set("data");
    let good = l.config("good.toml", &ingest_pack_config("good", "data", 1 << 20));
    l.run_config(&good);
    l
}

/// What a rejected config must leave behind: byte-identical log, same blobs, same events.
struct Snapshot {
    log: Vec<u8>,
    blobs: Vec<String>,
    events: usize,
    tmp_entries: usize,
}

fn snapshot(l: &Ledger) -> Snapshot {
    Snapshot {
        log: l.log_bytes(),
        blobs: l.blobs(),
        events: l.events().len(),
        tmp_entries: std::fs::read_dir(l.dir.join("tmp")).unwrap().count(),
    }
}

/// Runs `bad.toml` holding `toml`, asserts it is rejected with `bad.toml:<line>` (one of
/// `lines`) and, where given, the key, and that the ledger is exactly as before.
#[track_caller]
fn rejected(toml: &str, lines: &[usize], key: Option<&str>, message: &str) -> Output {
    let l = fixture();
    let before = snapshot(&l);
    l.write("bad.toml", toml);
    let out = l.run(["run", "--no-progress", "bad.toml"]);
    assert_ne!(out.code, 0, "a bad config was accepted:\n{out:?}");
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stdout.is_empty(), "{out:?}");
    let stderr = &out.stderr;
    assert!(stderr.contains("bad.toml"), "no file name:\n{out:?}");
    let located = lines
        .iter()
        .any(|line| stderr.contains(&format!("bad.toml:{line}:")));
    assert!(
        located,
        "expected `bad.toml:<line>:` with line in {lines:?}:\n{out:?}"
    );
    if let Some(key) = key {
        assert!(
            stderr.contains(&format!("`{key}`")),
            "the key `{key}` is not named:\n{out:?}"
        );
    }
    assert!(
        stderr.contains(message),
        "expected `{message}` in the message:\n{out:?}"
    );

    let after = snapshot(&l);
    assert_eq!(after.events, before.events, "events were appended");
    assert!(after.log == before.log, "events.log changed");
    assert_eq!(after.blobs, before.blobs, "blobs were written");
    assert_eq!(after.tmp_entries, before.tmp_entries, "temp files left");
    let v = l.ok(["verify"]);
    assert!(v.stdout.contains(": clean"), "{v:?}");
    out
}

const HEAD: &str = "[experiment]\nname = \"bad\"\n\n"; // lines 1-3

#[test]
fn unknown_key_in_a_stage() {
    let toml = format!(
        "{HEAD}[[stage]]\nid = \"src\"\nuses = \"ingest\"\npaths = [\"data\"]\ncolour = \"red\"\n"
    );
    let out = rejected(&toml, &[8], Some("colour"), "unknown field");
    assert!(out.stderr.contains("stage `src` (ingest)"), "{out:?}");
}

#[test]
fn string_where_a_number_is_expected() {
    let toml = format!(
        "{HEAD}[[stage]]\nid = \"src\"\nuses = \"ingest\"\npaths = [\"data\"]\nmax_files = \"ten\"\n"
    );
    rejected(
        &toml,
        &[8],
        Some("max_files"),
        "invalid type: string \"ten\"",
    );
}

#[test]
fn type_error_in_a_later_stage() {
    let toml = format!(
        "{HEAD}[[stage]]\nid = \"src\"\nuses = \"ingest\"\npaths = [\"data\"]\n\n\
         [[stage]]\nid = \"corpus\"\nuses = \"pack\"\ninputs = {{ files = \"src.files\" }}\n\
         max_file_bytes = \"big\"\n"
    );
    let out = rejected(&toml, &[13], Some("max_file_bytes"), "invalid type");
    assert!(out.stderr.contains("stage `corpus` (pack)"), "{out:?}");
}

#[test]
fn negative_seed() {
    let toml = format!(
        "{HEAD}[[stage]]\nid = \"src\"\nuses = \"ingest\"\nseed = -1\npaths = [\"data\"]\n"
    );
    rejected(&toml, &[7], Some("seed"), "non-negative integer");
}

#[test]
fn experiment_seed_of_the_wrong_type_names_the_key() {
    let toml = "[experiment]\nname = \"bad\"\nseed = \"s\"\n\n\
                [[stage]]\nid = \"src\"\nuses = \"ingest\"\npaths = [\"data\"]\n";
    rejected(toml, &[3], Some("experiment.seed"), "invalid type");
}

#[test]
fn unknown_stage_name() {
    let toml = format!("{HEAD}[[stage]]\nid = \"src\"\nuses = \"ingset\"\npaths = [\"data\"]\n");
    let out = rejected(&toml, &[6], Some("uses"), "unknown stage `ingset`");
    // The message lists what is available.
    assert!(
        out.stderr.contains("ingest") && out.stderr.contains("pack"),
        "{out:?}"
    );
}

#[test]
fn missing_required_input() {
    let toml = format!(
        "{HEAD}[[stage]]\nid = \"src\"\nuses = \"ingest\"\npaths = [\"data\"]\n\n\
         [[stage]]\nid = \"corpus\"\nuses = \"pack\"\nmax_file_bytes = 10\n"
    );
    // The stage is at lines 9-12: its `[[stage]]` header or its first key.
    rejected(&toml, &[9, 10], Some("inputs"), "needs input `files`");
}

#[test]
fn unknown_input_name() {
    let toml = format!(
        "{HEAD}[[stage]]\nid = \"src\"\nuses = \"ingest\"\npaths = [\"data\"]\n\n\
         [[stage]]\nid = \"corpus\"\nuses = \"pack\"\n\
         inputs = {{ files = \"src.files\", extra = \"src.files\" }}\n"
    );
    rejected(&toml, &[12], Some("inputs.extra"), "has no input `extra`");
}

#[test]
fn input_referencing_an_unknown_stage_id() {
    let toml = format!(
        "{HEAD}[[stage]]\nid = \"src\"\nuses = \"ingest\"\npaths = [\"data\"]\n\n\
         [[stage]]\nid = \"corpus\"\nuses = \"pack\"\n\
         \n\
         inputs = {{ files = \"nope.files\" }}\n"
    );
    // `inputs` is on line 13; the error must point there, not at the stage's `id` (line 10).
    rejected(&toml, &[13], Some("inputs.files"), "no stage has id `nope`");
}

#[test]
fn input_referencing_an_unknown_output_name() {
    let toml = format!(
        "{HEAD}[[stage]]\nid = \"src\"\nuses = \"ingest\"\npaths = [\"data\"]\n\n\
         [[stage]]\nid = \"corpus\"\nuses = \"pack\"\nmax_file_bytes = 100\n\
         inputs = {{ files = \"src.manifest\" }}\n"
    );
    let out = rejected(
        &toml,
        &[13],
        Some("inputs.files"),
        "has no output `manifest`",
    );
    assert!(out.stderr.contains("its outputs: files"), "{out:?}");
}

#[test]
fn malformed_input_reference() {
    let toml = format!(
        "{HEAD}[[stage]]\nid = \"src\"\nuses = \"ingest\"\npaths = [\"data\"]\n\n\
         [[stage]]\nid = \"corpus\"\nuses = \"pack\"\ninputs = {{ files = \"srcfiles\" }}\n"
    );
    rejected(
        &toml,
        &[12],
        Some("inputs.files"),
        "<stage id>.<output name>",
    );
}

#[test]
fn a_cycle_between_two_stages() {
    let toml = "[[stage]]\nid = \"a\"\nuses = \"pack\"\ninputs = { files = \"b.corpus\" }\n\n\
                [[stage]]\nid = \"b\"\nuses = \"pack\"\ninputs = { files = \"a.corpus\" }\n";
    // Any line of either stage in the cycle will do; but there must be one.
    let out = rejected(toml, &[1, 2, 4, 6, 7, 9], None, "cycle");
    assert!(
        out.stderr.contains("a -> b -> a") || out.stderr.contains("b -> a -> b"),
        "{out:?}"
    );
}

#[test]
fn duplicate_stage_id() {
    let toml = format!(
        "{HEAD}[[stage]]\nid = \"src\"\nuses = \"ingest\"\npaths = [\"data\"]\n\n\
         [[stage]]\nid = \"src\"\nuses = \"ingest\"\npaths = [\"data\"]\n"
    );
    let out = rejected(&toml, &[10], Some("id"), "duplicate stage id `src`");
    assert!(out.stderr.contains("first at line 5"), "{out:?}");
}

#[test]
fn invalid_toml() {
    let toml = format!("{HEAD}[[stage]]\nid = \"src\"\nuses = ingest\npaths = [\"data\"]\n");
    rejected(&toml, &[6], None, "");
}

#[test]
fn unclosed_array() {
    let toml = format!("{HEAD}[[stage]]\nid = \"src\"\nuses = \"ingest\"\npaths = [\"data\"\n");
    rejected(&toml, &[7, 8], None, "");
}

#[test]
fn unknown_experiment_key() {
    let toml = "[experiment]\nnmae = \"x\"\n\n[[stage]]\nid = \"s\"\nuses = \"ingest\"\npaths = [\"data\"]\n";
    rejected(toml, &[2], Some("nmae"), "unknown field");
}

#[test]
fn a_bad_config_does_not_create_a_ledger() {
    let l = Ledger::new();
    l.write(
        "bad.toml",
        "[[stage]]\nid = \"src\"\nuses = \"nope\"\npaths = [\"x\"]\n",
    );
    let out = l.run(["run", "bad.toml"]).expect_code(1);
    assert!(out.stderr.contains("bad.toml:3:"), "{out:?}");
    assert!(!l.dir.exists(), "the ledger directory was created");

    let missing = l.run(["run", "missing.toml"]).expect_code(1);
    assert!(missing.stderr.contains("missing.toml"), "{missing:?}");
    assert!(missing.stderr.contains("cannot read"), "{missing:?}");
    assert!(!l.dir.exists(), "the ledger directory was created");
}
