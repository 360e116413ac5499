//! One module per page. Each reads what it shows from the [`View`](crate::state::View) into
//! plain values, then renders them with maud (which escapes every text); none writes anything.

pub mod ablation;
pub mod artifact;
pub mod audit;
pub mod compare;
pub mod layout;
pub mod lineage;
pub mod run;
pub mod runs;
