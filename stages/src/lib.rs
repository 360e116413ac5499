//! The pipeline's stages, one module each. `registry()` is the list the binary runs with.

pub mod collect;
pub mod command;
pub mod device;
pub mod evaluate;
pub mod filter;
pub mod http;
pub mod ingest;
pub mod pack;
pub mod pypi;
pub mod reconstruct;
pub mod record;
pub mod shard;
pub mod swe;
pub mod tokenize;
pub mod train;

use ledger::stage::Registry;

/// Every stage this build knows.
pub fn registry() -> Registry {
    let mut r = Registry::new();
    r.register(Box::new(collect::Collect));
    r.register(Box::new(command::Command));
    r.register(Box::new(evaluate::humaneval::HumanEval));
    r.register(Box::new(evaluate::leakcheck::LeakCheck));
    r.register(Box::new(filter::Filter));
    r.register(Box::new(ingest::Ingest));
    r.register(Box::new(pack::Pack));
    r.register(Box::new(reconstruct::Reconstruct));
    r.register(Box::new(tokenize::Tokenize));
    r.register(Box::new(swe::synthesize::Synthesize));
    r.register(Box::new(swe::rollout::Rollout));
    r.register(Box::new(swe::swebench::SweBench));
    r.register(Box::new(train::midtrain::Midtrain));
    r.register(Box::new(train::sft::Sft));
    r
}
