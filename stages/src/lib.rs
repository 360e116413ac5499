//! The pipeline's stages, one module each. `registry()` is the list the binary runs with.

pub mod collect;
pub mod ingest;
pub mod pack;
pub mod record;
pub mod shard;

use ledger::stage::Registry;

/// Every stage this build knows.
pub fn registry() -> Registry {
    let mut r = Registry::new();
    r.register(Box::new(ingest::Ingest));
    r.register(Box::new(pack::Pack));
    r
}
