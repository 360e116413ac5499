mod common;

use env::image::BuildOutcome;

#[test]
fn base_image_builds_once_and_is_cached() {
    let Some(engine) = common::engine() else {
        return;
    };
    assert!(
        engine.api_version().starts_with("1."),
        "{}",
        engine.api_version()
    );
    let (first, _) = common::base_image(&engine);
    assert_eq!(
        first.tag,
        format!("davinci-env-base:{}", first.rootfs_blake3)
    );
    assert_eq!(first.rootfs_blake3.len(), 64);
    for p in ["python3", "python3-pytest", "python3-pip", "git"] {
        assert!(
            first.packages.iter().any(|k| k.name == p),
            "{p} missing from the package list"
        );
    }
    // Second time: nothing is rebuilt or re-imported.
    let t = std::time::Instant::now();
    let (second, outcome) = common::base_image(&engine);
    assert_eq!(outcome, BuildOutcome::Cached);
    assert_eq!(second, first);
    assert!(
        t.elapsed().as_secs() < 10,
        "cached lookup took {:?}",
        t.elapsed()
    );
    // The manifest (the ledger artifact's bytes) is stable and engine-independent.
    let m = first.manifest_json();
    assert_eq!(m, second.manifest_json());
    let v: serde_json::Value = serde_json::from_slice(&m).unwrap();
    assert!(v.get("image_id").is_none());
    assert_eq!(v["rootfs_blake3"], first.rootfs_blake3.as_str());
}
