//! What the server reads from: one follower of the ledger (a reader with a private index, so it
//! never holds the persistent index a `ledger run` needs) and the run table folded from the
//! same events, kept current by a thread that follows the log once a second.
//!
//! Data flows one way: log → [`View`] (behind a read-write lock: many pages read it at once,
//! the follower thread takes it briefly when the log has grown) → pages.

use crate::audit::Audit;
use anyhow::{Context, Result};
use ledger::runs::RunList;
use ledger::Ledger;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

/// How often the follower looks for new events.
pub const FOLLOW_EVERY: Duration = Duration::from_millis(500);

/// The ledger as the pages see it.
pub struct View {
    pub ledger: Ledger,
    pub runs: RunList,
}

/// An ablation file named on the command line, loaded once at start.
pub struct AblationFile {
    pub path: PathBuf,
    pub ablation: replay::Ablation,
}

pub struct Shared {
    pub dir: PathBuf,
    pub view: RwLock<View>,
    pub ablations: Vec<AblationFile>,
    pub audit: Arc<Audit>,
}

impl Shared {
    pub fn open(dir: &Path, ablation_files: &[PathBuf]) -> Result<Arc<Shared>> {
        let registry = stages::registry();
        let ablations = ablation_files
            .iter()
            .map(|path| {
                Ok(AblationFile {
                    path: path.clone(),
                    ablation: replay::Ablation::load(path, &registry)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let started = std::time::Instant::now();
        let mut runs = RunList::new();
        let ledger = Ledger::open_follower(dir, &mut |s| runs.learn(s))
            .with_context(|| format!("opening the ledger at {}", dir.display()))?;
        tracing::info!(
            "indexed {} events and {} runs in {:.2} s",
            ledger.event_count(),
            runs.runs().len(),
            started.elapsed().as_secs_f64()
        );
        Ok(Arc::new(Shared {
            dir: dir.to_path_buf(),
            view: RwLock::new(View { ledger, runs }),
            ablations,
            audit: Arc::new(Audit::default()),
        }))
    }

    /// Runs `f` with the current view (many readers at once).
    pub fn read<T>(&self, f: impl FnOnce(&View) -> T) -> T {
        // A page that panicked while reading leaves the view as it was: nothing is written
        // under a read guard, so a poisoned lock is still sound to read.
        let guard = self.view.read().unwrap_or_else(|p| p.into_inner());
        f(&guard)
    }

    /// Indexes what was appended since the last call; returns how many events that was.
    pub fn follow(&self) -> Result<u64> {
        let log = self.dir.join(ledger::ledger::LOG_FILE);
        let len = std::fs::metadata(&log)
            .with_context(|| format!("{}", log.display()))?
            .len();
        // Most seconds nothing was appended: look without taking the write lock.
        let known = self.read(|v| v.ledger.index().tail().map(|t| t.end).unwrap_or(u64::MAX));
        if len <= known || self.read(|v| v.ledger.index_problem().is_some()) {
            return Ok(0);
        }
        let mut guard = self.view.write().unwrap_or_else(|p| p.into_inner());
        let View { ledger, runs } = &mut *guard;
        Ok(ledger.follow(&mut |s| runs.learn(s))?)
    }

    /// Follows the log on a thread of its own until the process ends.
    pub fn spawn_follower(self: &Arc<Shared>) {
        let shared = Arc::clone(self);
        std::thread::Builder::new()
            .name("ledger-follower".into())
            .spawn(move || loop {
                match shared.follow() {
                    Ok(0) => {}
                    Ok(n) => tracing::debug!("followed {n} new events"),
                    Err(e) => tracing::warn!("following {}: {e:#}", shared.dir.display()),
                }
                std::thread::sleep(FOLLOW_EVERY);
            })
            .expect("spawn the follower thread");
    }
}
