//! `ledger ui`: a local, read-only web interface to a ledger — runs, steps, artifacts shown
//! for what they are, lineage graphs, comparisons of runs and ablation arms, and audits — in
//! one binary (the script and style sheet are compiled in; nothing is fetched at run time).
//!
//! ```text
//! events.log ──follow──> state::View (private index + runs::RunList)
//!                             │ read lock
//!                             v
//!               pages::* (read into plain values) ──maud──> HTML ──security::guard──> browser
//! ```
//! One job per module: `server` (bind, routes, runtime), `security` (headers, Host and
//! Origin checks), `state` (the follower), `web` (queries, errors, blocking reads), `pages`
//! (one per page), `content` (an artifact's bytes by kind), `svg` (graphs and charts),
//! `audit` (verify and replay jobs), `assets` (the compiled-in files).

pub mod assets;
pub mod audit;
pub mod content;
pub mod pages;
pub mod security;
pub mod server;
pub mod state;
pub mod svg;
pub mod web;

pub use server::{router, serve, Options};
