//! davinci-ledger's embedded core: an append-only, hash-chained event log (the source of
//! truth), a content-addressed blob store, a sled index derived from the log, lineage, and the
//! stage runner with its action cache.

pub mod action;
pub mod bundle;
pub mod config;
pub mod display;
pub mod error;
pub mod event;
pub mod exec;
pub mod gc;
pub mod hash;
pub mod index;
pub mod ledger;
pub mod lineage;
pub mod locations;
pub mod lock;
pub mod log;
pub mod manifest;
pub mod observe;
pub mod plan;
pub mod records;
pub mod runner;
pub mod runs;
pub mod slurm;
pub mod stage;
pub mod storage;
pub mod store;
mod tree;
pub mod verify;

pub use error::{Error, Result};
pub use hash::Hash;
pub use ledger::Ledger;
pub use lock::Wait;
