//! Rebuild, verify and diff lineages; run and tabulate ablations.

pub mod ablate;
pub mod diff;
pub mod explain;
pub mod replay;

pub use ablate::{ablate, Ablation, AblationReport};
pub use diff::{diff, DiffReport};
pub use explain::{explain, Divergence};
pub use replay::{replay, ReplayOptions, ReplayReport, Verdict};
