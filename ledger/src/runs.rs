//! Every run of a ledger in one small table, kept current event by event (for readers that
//! list runs often, such as `ledger ui`): a run's experiment, times, step counts and the
//! latest value of each metric its steps recorded, without reading the run's events again.
//!
//! The table is a fold over the log: [`RunList::learn`] takes events in log order (from
//! [`Ledger::open_follower`](crate::Ledger::open_follower) and
//! [`Ledger::follow`](crate::Ledger::follow)) and ignores any it has already seen, so feeding
//! it the same event twice changes nothing.

use crate::event::{EventKind, RunStatus};
use crate::hash::Hash;
use crate::log::Stored;
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};

/// What the log says about one run so far.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RunSummary {
    pub run_id: Hash,
    /// The experiment's name; empty for a run known only from imported steps.
    pub experiment: String,
    /// The config artifact and the path it was read from (as given to `ledger run`).
    pub config: Option<Hash>,
    pub config_path: String,
    /// The run's first and last event.
    pub first_seq: u64,
    pub last_seq: u64,
    /// When the run started (its first event was appended) and when its last step ended.
    pub started_ms: u64,
    pub ended_ms: u64,
    pub executed: u32,
    pub cached: u32,
    pub failed: u32,
    /// `node.metric` → the value the latest step of that node recorded.
    pub metrics: BTreeMap<String, f64>,
    /// Known only from an imported bundle.
    pub foreign: bool,
}

impl RunSummary {
    pub fn steps(&self) -> u32 {
        self.executed + self.cached + self.failed
    }

    /// `failed` if any step failed, else `succeeded` (a run still writing reads as its steps
    /// so far).
    pub fn status(&self) -> &'static str {
        if self.failed > 0 {
            "failed"
        } else {
            "succeeded"
        }
    }
}

/// Every run, in the order of its first event.
#[derive(Debug, Default)]
pub struct RunList {
    runs: Vec<RunSummary>,
    by_id: HashMap<Hash, usize>,
    /// The next event this table has not seen.
    next_seq: u64,
}

impl RunList {
    pub fn new() -> RunList {
        RunList::default()
    }

    /// Takes one event, in log order; events already taken are ignored.
    pub fn learn(&mut self, stored: &Stored) {
        let event = &stored.event;
        if event.seq < self.next_seq {
            return;
        }
        self.next_seq = event.seq + 1;
        let (kind, import) = event.kind.claim();
        let foreign = import.is_some();
        match kind {
            EventKind::RunStarted(r) => {
                let run = self.entry(r.run_id, event.seq, event.time_ms, foreign);
                run.experiment = r.experiment.clone();
                run.config = Some(r.config);
                run.config_path = r.config_path.clone();
            }
            EventKind::StageRun(s) => {
                let run = self.entry(s.run_id, event.seq, s.started_ms, foreign);
                run.last_seq = event.seq;
                run.started_ms = run.started_ms.min(s.started_ms);
                run.ended_ms = run.ended_ms.max(s.ended_ms);
                match s.status {
                    RunStatus::Succeeded => run.executed += 1,
                    RunStatus::Cached { .. } => run.cached += 1,
                    RunStatus::Failed { .. } => run.failed += 1,
                }
                for (name, value) in &s.metrics {
                    run.metrics.insert(format!("{}.{name}", s.node), *value);
                }
            }
            _ => {}
        }
    }

    fn entry(&mut self, run_id: Hash, seq: u64, time_ms: u64, foreign: bool) -> &mut RunSummary {
        let i = *self.by_id.entry(run_id).or_insert_with(|| {
            self.runs.push(RunSummary {
                run_id,
                experiment: String::new(),
                config: None,
                config_path: String::new(),
                first_seq: seq,
                last_seq: seq,
                started_ms: time_ms,
                ended_ms: time_ms,
                executed: 0,
                cached: 0,
                failed: 0,
                metrics: BTreeMap::new(),
                foreign,
            });
            self.runs.len() - 1
        });
        &mut self.runs[i]
    }

    /// Every run, oldest first.
    pub fn runs(&self) -> &[RunSummary] {
        &self.runs
    }

    pub fn get(&self, run_id: &Hash) -> Option<&RunSummary> {
        self.by_id.get(run_id).map(|&i| &self.runs[i])
    }

    /// How many events the table has seen.
    pub fn events_seen(&self) -> u64 {
        self.next_seq
    }

    /// The latest run whose config artifact is `config`, if any.
    pub fn latest_with_config(&self, config: &Hash) -> Option<&RunSummary> {
        self.runs
            .iter()
            .rev()
            .find(|r| r.config.as_ref() == Some(config))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Environment, Event, Foreign, Output, RunStarted, StageRun};

    fn stored(seq: u64, kind: EventKind) -> Stored {
        Stored {
            offset: 0,
            end: 0,
            id: Hash::ZERO,
            event: Event {
                seq,
                prev: Hash::ZERO,
                time_ms: 1000 + seq,
                kind,
            },
        }
    }

    fn step(run: Hash, node: &str, status: RunStatus, metrics: &[(&str, f64)]) -> EventKind {
        EventKind::StageRun(StageRun {
            run_id: run,
            node: node.into(),
            stage: "pack".into(),
            version: 1,
            action_key: Hash::of(node.as_bytes()),
            config: "{}".into(),
            seed: 7,
            inputs: vec![],
            outputs: vec![Output {
                name: "corpus".into(),
                hash: Hash::of(b"out"),
                size: 3,
                media_type: "text/plain".into(),
            }],
            metrics: metrics.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
            env: Environment::current(),
            status,
            started_ms: 5000,
            ended_ms: 7000,
        })
    }

    #[test]
    fn folds_runs_once_each() {
        let (a, b) = (Hash::of(b"a"), Hash::of(b"b"));
        let started = |run| {
            EventKind::RunStarted(RunStarted {
                run_id: run,
                experiment: "exp".into(),
                config: Hash::of(b"config"),
                config_path: "c.toml".into(),
            })
        };
        let events = [
            stored(0, started(a)),
            stored(1, step(a, "src", RunStatus::Succeeded, &[("files", 3.0)])),
            stored(2, started(b)),
            stored(
                3,
                step(a, "corpus", RunStatus::Cached { source_seq: 1 }, &[]),
            ),
            stored(
                4,
                step(b, "src", RunStatus::Failed { error: "x".into() }, &[]),
            ),
            stored(
                5,
                EventKind::Foreign(Foreign {
                    bundle: Hash::ZERO,
                    trusted: false,
                    event: Box::new(step(Hash::of(b"c"), "src", RunStatus::Succeeded, &[])),
                }),
            ),
        ];
        let mut list = RunList::new();
        for e in events.iter().chain(&events[..3]) {
            list.learn(e);
        }
        assert_eq!(list.events_seen(), 6);
        let runs = list.runs();
        assert_eq!(runs.len(), 3);
        assert_eq!(runs[0].run_id, a);
        assert_eq!(
            (runs[0].executed, runs[0].cached, runs[0].failed),
            (1, 1, 0)
        );
        assert_eq!(runs[0].metrics["src.files"], 3.0);
        assert_eq!((runs[0].first_seq, runs[0].last_seq), (0, 3));
        assert_eq!((runs[0].started_ms, runs[0].ended_ms), (1000, 7000));
        assert_eq!(runs[1].status(), "failed");
        assert!(runs[2].foreign && runs[2].experiment.is_empty());
        assert_eq!(
            list.latest_with_config(&Hash::of(b"config"))
                .unwrap()
                .run_id,
            b
        );
        assert_eq!(list.get(&a).unwrap().steps(), 2);
    }
}
