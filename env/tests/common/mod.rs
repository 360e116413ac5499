//! Shared test setup: a real engine (started by `scripts/setup.sh` when `LEDGER_REQUIRE_DOCKER`
//! is set) and the cached base image.
#![allow(dead_code)]

use env::engine::{self, Engine};
use env::image::{BaseImage, BaseImageSpec, BuildOutcome};
use std::path::PathBuf;

/// The engine, or `None` (test skipped) when `docker info` fails and `LEDGER_REQUIRE_DOCKER`
/// is unset. With the variable set, the engine is started the way setup does it, and failing
/// to get one fails the test.
pub fn engine() -> Option<Engine> {
    if engine::docker_info_ok() {
        return Some(Engine::connect().expect("`docker info` answers but bollard cannot connect"));
    }
    if std::env::var_os("LEDGER_REQUIRE_DOCKER").is_none() {
        eprintln!(
            "SKIPPED: no Docker engine (`docker info` fails) and LEDGER_REQUIRE_DOCKER is unset"
        );
        return None;
    }
    Some(
        engine::start_with_setup_script()
            .expect("LEDGER_REQUIRE_DOCKER is set but no engine could be started"),
    )
}

/// `<target>/env-cache`: debootstrap runs once per machine.
pub fn cache_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("DAVINCI_ENV_CACHE") {
        return PathBuf::from(d);
    }
    PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .expect("target dir")
        .join("env-cache")
}

pub fn base_image(engine: &Engine) -> (BaseImage, BuildOutcome) {
    let t = std::time::Instant::now();
    let r = env::image::ensure_base_image(engine, &BaseImageSpec::default(), &cache_dir())
        .expect("base image");
    eprintln!("base image {} ({:?}) in {:.1?}", r.0.tag, r.1, t.elapsed());
    r
}

/// A label value unique to this test process and name, to find its containers.
pub fn run_label(test: &str) -> String {
    format!("{test}-{}", std::process::id())
}
