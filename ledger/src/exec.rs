//! The local executor: a node's units on a pool of worker threads, while this thread — the
//! coordinator, the only one that holds the ledger — serves their observations and records
//! what they finish. The runner (and `replay`) decide what runs through a [`Scheduler`]; the
//! executor only owns threads, the channel and the order of events.

use crate::error::Result;
use crate::ledger::Ledger;
use crate::observe::{Mode, Observer, ReexecutionCounts, Served, ToCoordinator};
use crate::stage::{Finished, Io, Job, Stage, StageContext};
use crate::store::BlobStore;
use indicatif::ProgressBar;
use std::collections::VecDeque;
use std::sync::mpsc::channel;
use std::sync::{Condvar, Mutex};

/// One unit to execute.
pub struct Task<'s> {
    pub stage: &'s dyn Stage,
    /// Its action key.
    pub key: crate::hash::Hash,
    pub job: Job,
    /// Where its outputs go (the ledger's store in a run, a scratch store in a replay).
    pub outputs: BlobStore,
    pub progress: ProgressBar,
}

/// What a unit reported when it finished.
pub struct Done {
    pub result: anyhow::Result<Finished>,
    pub reexecution: ReexecutionCounts,
}

/// Decides what runs: asked for tasks that can start, told of each that finished (on the
/// coordinator's thread, with the ledger, so it may append events).
pub(crate) trait Scheduler<'s> {
    /// Tasks that can start now, each with an id of the scheduler's choosing.
    fn ready(&mut self, served: &mut Served) -> Result<Vec<(usize, Task<'s>)>>;
    /// A task finished. An error stops the execution: no new task starts, running ones finish.
    fn finished(&mut self, served: &mut Served, task: usize, done: Done) -> Result<()>;
    /// Nothing is left to start.
    fn exhausted(&self) -> bool;
    /// A task's attempt ended without a result (its Slurm job died) and it runs again.
    fn retrying(&mut self, _served: &mut Served, _task: usize, _why: &str) -> Result<()> {
        Ok(())
    }
}

/// A queue the workers take tasks from, closed when the coordinator is done.
struct Queue<'s> {
    tasks: Mutex<(VecDeque<(usize, Task<'s>)>, bool)>,
    more: Condvar,
}

impl<'s> Queue<'s> {
    fn push(&self, task: (usize, Task<'s>)) {
        self.tasks.lock().expect("not poisoned").0.push_back(task);
        self.more.notify_one();
    }

    /// No more tasks: the workers finish what they hold, and nothing queued starts.
    fn close(&self) {
        let mut state = self.tasks.lock().expect("not poisoned");
        state.0.clear();
        state.1 = true;
        self.more.notify_all();
    }

    fn take(&self) -> Option<(usize, Task<'s>)> {
        let mut state = self.tasks.lock().expect("not poisoned");
        loop {
            if let Some(task) = state.0.pop_front() {
                return Some(task);
            }
            if state.1 {
                return None;
            }
            state = self.more.wait(state).expect("not poisoned");
        }
    }
}

/// Runs what `scheduler` hands out on up to `workers` threads, serving observations from
/// `served` in `mode`, until nothing is left or something failed (the first error is returned
/// once the running tasks have finished).
pub(crate) fn execute<'s>(
    served: &mut Served,
    mode: Mode,
    workers: usize,
    scheduler: &mut dyn Scheduler<'s>,
) -> Result<()> {
    let inputs = served.ledger().store().clone();
    let (tx, rx) = channel::<ToCoordinator>();
    let queue = Queue {
        tasks: Mutex::new((VecDeque::new(), false)),
        more: Condvar::new(),
    };
    std::thread::scope(|scope| {
        for _ in 0..workers.max(1) {
            let (tx, queue, inputs) = (tx.clone(), &queue, inputs.clone());
            scope.spawn(move || {
                while let Some((id, task)) = queue.take() {
                    let observer = Observer::served(tx.clone(), mode);
                    let io = Io {
                        inputs: inputs.clone(),
                        outputs: task.outputs,
                        observer: observer.clone(),
                        progress: task.progress,
                    };
                    let mut ctx = StageContext::new(task.job, io);
                    let stage = task.stage;
                    let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        stage.execute(&mut ctx)
                    }));
                    let result = match ran {
                        Ok(Ok(())) => ctx.finish().map_err(anyhow::Error::from),
                        Ok(Err(e)) => Err(e),
                        Err(panic) => Err(anyhow::anyhow!(
                            "the stage panicked: {}",
                            panic
                                .downcast_ref::<String>()
                                .map(String::as_str)
                                .or_else(|| panic.downcast_ref::<&str>().copied())
                                .unwrap_or("(no message)")
                        )),
                    };
                    let done = ToCoordinator::Done {
                        task: id,
                        result: Box::new(result),
                        reexecution: observer.reexecution(),
                    };
                    if tx.send(done).is_err() {
                        break;
                    }
                }
            });
        }
        drop(tx);
        let outcome = coordinate(served, mode, scheduler, &queue, &rx);
        queue.close();
        // Serve the observations of units still running, so they can finish; their results
        // are dropped after a failure.
        while let Ok(message) = rx.recv() {
            if let ToCoordinator::Ask(ask) = message {
                served.answer(ask, mode);
            }
        }
        outcome
    })
}

fn coordinate<'s>(
    served: &mut Served,
    mode: Mode,
    scheduler: &mut dyn Scheduler<'s>,
    queue: &Queue<'s>,
    rx: &std::sync::mpsc::Receiver<ToCoordinator>,
) -> Result<()> {
    let mut running = 0usize;
    loop {
        for task in scheduler.ready(served)? {
            running += 1;
            queue.push(task);
        }
        if running == 0 {
            return if scheduler.exhausted() {
                Ok(())
            } else {
                Err(crate::error::Error::Invalid(
                    "the plan's units wait on each other: none can start".into(),
                ))
            };
        }
        match rx.recv() {
            Ok(ToCoordinator::Ask(ask)) => served.answer(ask, mode),
            Ok(ToCoordinator::Done {
                task,
                result,
                reexecution,
            }) => {
                running -= 1;
                scheduler.finished(
                    served,
                    task,
                    Done {
                        result: *result,
                        reexecution,
                    },
                )?;
            }
            Err(_) => unreachable!("the coordinator holds no sender, workers do until closed"),
        }
    }
}

/// Runs `f` with a context for `job` on a thread of its own while this thread serves its
/// observations from `ledger` (recording them in a run): the harness for executing one stage,
/// or one function of a stage, outside the runner (replays, tests).
pub(crate) fn with_context<T: Send>(
    ledger: Served,
    mode: Mode,
    job: Job,
    outputs: BlobStore,
    progress: ProgressBar,
    f: impl FnOnce(&mut StageContext) -> T + Send,
) -> T {
    let mut served = ledger;
    let (tx, rx) = channel::<ToCoordinator>();
    let io = Io {
        inputs: served.ledger().store().clone(),
        outputs,
        observer: Observer::served(tx, mode),
        progress,
    };
    std::thread::scope(|scope| {
        let worker = scope.spawn(move || {
            let mut ctx = StageContext::new(job, io);
            f(&mut ctx)
        });
        // Every sender lives in the context and its observer's clones: when they are gone,
        // the work is done.
        while let Ok(message) = rx.recv() {
            if let ToCoordinator::Ask(ask) = message {
                served.answer(ask, mode);
            }
        }
        match worker.join() {
            Ok(v) => v,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    })
}

/// Runs `f` with a context for `job` whose observations are served from `ledger` and
/// recorded there (outputs go to its store): one stage, or one function of a stage, outside
/// the runner (tests).
pub fn run_in_context<T: Send>(
    ledger: &mut Ledger,
    job: Job,
    f: impl FnOnce(&mut StageContext) -> T + Send,
) -> T {
    let outputs = ledger.store().clone();
    with_context(
        Served::Writer(ledger),
        Mode::Run,
        job,
        outputs,
        ProgressBar::hidden(),
        f,
    )
}

/// Runs `f` with a context for `job` answered only from what `ledger` recorded (with
/// `Mode::Reexecute`, recorded actions are performed again and compared), its outputs in
/// `scratch`: a replay.
pub fn replay_in_context<T: Send>(
    ledger: &Ledger,
    job: Job,
    scratch: &BlobStore,
    mode: Mode,
    f: impl FnOnce(&mut StageContext) -> T + Send,
) -> T {
    with_context(
        Served::Reader(ledger),
        mode,
        job,
        scratch.clone(),
        ProgressBar::hidden(),
        f,
    )
}

/// Executes `stage` for `job` as one unit, recording its observations in `ledger`.
pub fn run_stage(ledger: &mut Ledger, stage: &dyn Stage, job: Job) -> anyhow::Result<Finished> {
    run_in_context(ledger, job, |ctx| -> anyhow::Result<Finished> {
        stage.execute(ctx)?;
        Ok(ctx.finish()?)
    })
}

/// Executes `stage` for `job` offline, its outputs in `scratch`; also returns what
/// re-performed actions found (`Mode::Reexecute`).
pub fn replay_stage(
    ledger: &Ledger,
    stage: &dyn Stage,
    job: Job,
    scratch: &BlobStore,
    mode: Mode,
) -> anyhow::Result<(Finished, ReexecutionCounts)> {
    replay_in_context(ledger, job, scratch, mode, |ctx| {
        stage.execute(ctx)?;
        let reexecution = ctx.observer().reexecution();
        Ok((ctx.finish()?, reexecution))
    })
}
