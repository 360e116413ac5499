//! Rebuild, verify and diff lineages.

pub mod diff;
pub mod replay;

pub use diff::{diff, DiffReport};
pub use replay::{replay, ReplayOptions, ReplayReport, Verdict};
