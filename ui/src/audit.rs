//! The audit jobs the Audit page starts: `verify` of the whole ledger (with progress) and
//! `replay` of an artifact, each on a thread of its own, one of each kind at a time. Both only
//! read: verify opens the ledger as `ledger verify` does, and a replay here refuses a lineage
//! with missing bytes (the CLI's replay would store them again) and rebuilds into a scratch
//! store that is removed afterwards. Results live in this server's memory.

use anyhow::{bail, Result};
use ledger::lineage::lineage;
use ledger::verify::VerifyReport;
use ledger::{Hash, Ledger};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

#[derive(Clone)]
pub enum VerifyState {
    Idle,
    Running {
        started: Instant,
        progress: indicatif::ProgressBar,
    },
    Done {
        report: Arc<VerifyReport>,
        seconds: f64,
        finished: SystemTime,
    },
    Failed {
        error: String,
        finished: SystemTime,
    },
}

/// One replay started from the UI.
#[derive(Clone)]
pub struct ReplayJob {
    pub target: Hash,
    pub started: SystemTime,
    pub outcome: ReplayOutcome,
}

#[derive(Clone)]
pub enum ReplayOutcome {
    Running,
    Done(Arc<replay::ReplayReport>),
    Failed(String),
}

#[derive(Default)]
pub struct Audit {
    verify: Mutex<Option<VerifyState>>,
    replays: Mutex<Vec<ReplayJob>>,
}

/// The verify state as numbers, for the page's progress bar.
#[derive(serde::Serialize)]
pub struct VerifyStatus {
    pub state: &'static str,
    pub done: u64,
    pub total: u64,
    pub seconds: f64,
}

impl Audit {
    pub fn verify_state(&self) -> VerifyState {
        lock(&self.verify).clone().unwrap_or(VerifyState::Idle)
    }

    pub fn verify_status(&self) -> VerifyStatus {
        match self.verify_state() {
            VerifyState::Idle => VerifyStatus {
                state: "idle",
                done: 0,
                total: 0,
                seconds: 0.0,
            },
            VerifyState::Running { started, progress } => VerifyStatus {
                state: "running",
                done: progress.position(),
                total: progress.length().unwrap_or(0),
                seconds: started.elapsed().as_secs_f64(),
            },
            VerifyState::Done {
                report, seconds, ..
            } => VerifyStatus {
                state: if report.clean() { "clean" } else { "problems" },
                done: report.blobs,
                total: report.blobs,
                seconds,
            },
            VerifyState::Failed { .. } => VerifyStatus {
                state: "failed",
                done: 0,
                total: 0,
                seconds: 0.0,
            },
        }
    }

    /// Starts `verify` unless one is running; returns whether it started.
    pub fn start_verify(self: &Arc<Self>, dir: &Path) -> bool {
        let progress = indicatif::ProgressBar::hidden();
        {
            let mut state = lock(&self.verify);
            if matches!(*state, Some(VerifyState::Running { .. })) {
                return false;
            }
            *state = Some(VerifyState::Running {
                started: Instant::now(),
                progress: progress.clone(),
            });
        }
        let (audit, dir) = (Arc::clone(self), dir.to_path_buf());
        std::thread::spawn(move || {
            let started = Instant::now();
            let result = (|| -> Result<VerifyReport> {
                let ledger = Ledger::open(&dir)?;
                Ok(ledger::verify::verify(&ledger, &progress)?)
            })();
            let finished = SystemTime::now();
            let state = match result {
                Ok(report) => {
                    tracing::info!(
                        "verify: {} events, {} blobs, {} problems",
                        report.events,
                        report.blobs,
                        report.problems.len()
                    );
                    VerifyState::Done {
                        report: Arc::new(report),
                        seconds: started.elapsed().as_secs_f64(),
                        finished,
                    }
                }
                Err(e) => VerifyState::Failed {
                    error: format!("{e:#}"),
                    finished,
                },
            };
            *lock(&audit.verify) = Some(state);
        });
        true
    }

    pub fn replays(&self) -> Vec<ReplayJob> {
        lock(&self.replays).clone()
    }

    /// Starts a replay of `target` unless one is running; checks first that it would store
    /// nothing (every artifact of the lineage is stored).
    pub fn start_replay(self: &Arc<Self>, ledger: &Ledger, target: Hash) -> Result<()> {
        let graph = lineage(ledger, &target)?;
        let missing: Vec<&str> = graph
            .artifacts
            .iter()
            .filter(|(_, a)| !a.stored)
            .map(|(h, _)| &h[..12])
            .collect();
        if !missing.is_empty() {
            bail!(
                "{} artifact(s) of this lineage are not stored ({}): a replay would store them again, and this page changes nothing; run `ledger replay {}` in a terminal",
                missing.len(),
                missing.join(", "),
                target
            );
        }
        {
            let mut jobs = lock(&self.replays);
            if jobs
                .iter()
                .any(|j| matches!(j.outcome, ReplayOutcome::Running))
            {
                bail!("a replay is already running; wait for it to finish");
            }
            jobs.insert(
                0,
                ReplayJob {
                    target,
                    started: SystemTime::now(),
                    outcome: ReplayOutcome::Running,
                },
            );
        }
        let (audit, dir): (_, PathBuf) = (Arc::clone(self), ledger.dir().to_path_buf());
        std::thread::spawn(move || {
            let result = (|| -> Result<replay::ReplayReport> {
                // A private index: the replay never holds the persistent one a writer needs.
                let ledger = Ledger::open_private(&dir)?;
                replay::replay(
                    &ledger,
                    &stages::registry(),
                    &target,
                    &replay::ReplayOptions {
                        repeat: 1,
                        ..Default::default()
                    },
                )
            })();
            let outcome = match result {
                Ok(report) => ReplayOutcome::Done(Arc::new(report)),
                Err(e) => ReplayOutcome::Failed(format!("{e:#}")),
            };
            let mut jobs = lock(&audit.replays);
            if let Some(job) = jobs
                .iter_mut()
                .find(|j| j.target == target && matches!(j.outcome, ReplayOutcome::Running))
            {
                job.outcome = outcome;
            }
        });
        Ok(())
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
