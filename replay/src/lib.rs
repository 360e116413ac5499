//! Rebuild, verify and diff lineages.

pub mod diff;
pub mod explain;
pub mod replay;

pub use diff::{diff, DiffReport};
pub use explain::{explain, Divergence};
pub use replay::{replay, ReplayOptions, ReplayReport, Verdict};
