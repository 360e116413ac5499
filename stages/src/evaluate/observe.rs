//! Recorded external work, performed on several threads: each worker performs a request (an
//! HTTP request, a program run in a container) and records it through the unit's observer.
//! A response is durable as soon as it is recorded: a run that fails half-way keeps what it
//! performed, and the next run performs only the rest.

use anyhow::anyhow;
use ledger::stage::StageContext;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Instant;

/// The recorded response to each request, `None` where there is none. Performs nothing. In a
/// replay an unrecorded request is an error: replays never perform work.
pub fn recorded(
    ctx: &StageContext,
    source: &str,
    requests: &[Vec<u8>],
) -> anyhow::Result<Vec<Option<Vec<u8>>>> {
    requests
        .iter()
        .map(|request| match ctx.recorded(request)? {
            None if ctx.replaying() => Err(anyhow!(
                "{source} request {} was never recorded; a replay cannot perform it",
                ledger::Hash::of(request).short()
            )),
            found => Ok(found),
        })
        .collect()
}

/// One performed request: its response and how long performing it took.
pub struct Performed {
    pub response: Vec<u8>,
    pub seconds: f64,
}

/// Performs `requests` on up to `workers` threads and records each response under `source`
/// as it arrives, through the unit's observer (the stage contract's `Send + Clone` handle, so
/// the recording happens from the worker threads). Each thread first builds its state with
/// `start(worker_index)` (e.g. starts a container), then takes requests from a shared queue.
/// The first error stops the others (they finish the request in hand, which is still
/// recorded) and is returned.
pub fn perform_all<W, S, P>(
    ctx: &StageContext,
    source: &str,
    requests: &[Vec<u8>],
    workers: usize,
    start: S,
    perform: P,
) -> anyhow::Result<Vec<Performed>>
where
    S: Fn(usize) -> anyhow::Result<W> + Sync,
    P: Fn(&mut W, &[u8]) -> anyhow::Result<Vec<u8>> + Sync,
{
    if requests.is_empty() {
        return Ok(Vec::new());
    }
    let workers = workers.clamp(1, requests.len());
    let queue: Mutex<VecDeque<usize>> = Mutex::new((0..requests.len()).collect());
    let stop = AtomicBool::new(false);
    let done: Mutex<Vec<Option<Performed>>> =
        Mutex::new((0..requests.len()).map(|_| None).collect());
    let first_error: Mutex<Option<anyhow::Error>> = Mutex::new(None);
    let fail = |e: anyhow::Error| {
        stop.store(true, Ordering::SeqCst);
        first_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_or_insert(e);
    };
    let observer = ctx.observer();
    let progress = ctx.progress();
    std::thread::scope(|scope| {
        for w in 0..workers {
            let (queue, stop, start, perform, done, fail) =
                (&queue, &stop, &start, &perform, &done, &fail);
            scope.spawn(move || {
                let mut state = match start(w) {
                    Ok(s) => s,
                    Err(e) => return fail(e),
                };
                while !stop.load(Ordering::SeqCst) {
                    let next = queue.lock().unwrap_or_else(|p| p.into_inner()).pop_front();
                    let Some(i) = next else { break };
                    let t = Instant::now();
                    let mut seconds = 0.0;
                    let answered = observer.observe(source, &requests[i], || {
                        let response = perform(&mut state, &requests[i]);
                        seconds = t.elapsed().as_secs_f64();
                        response
                    });
                    match answered {
                        Ok(response) => {
                            done.lock().unwrap_or_else(|p| p.into_inner())[i] =
                                Some(Performed { response, seconds });
                            progress.inc(1);
                        }
                        Err(e) => return fail(e),
                    }
                }
            });
        }
    });
    if let Some(e) = first_error.into_inner().unwrap_or_else(|p| p.into_inner()) {
        return Err(e);
    }
    done.into_inner()
        .unwrap_or_else(|p| p.into_inner())
        .into_iter()
        .enumerate()
        .map(|(i, d)| d.ok_or_else(|| anyhow!("{source} request #{i} was never performed")))
        .collect()
}
