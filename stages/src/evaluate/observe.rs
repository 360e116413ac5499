//! Recorded external work, performed on several threads. `StageContext::observe` borrows the
//! context mutably, so the work (an HTTP request, a program run in a container) happens on
//! worker threads and only the recording happens on the stage's thread, in completion order.
//! A response is durable as soon as it is recorded: a run that fails half-way keeps what it
//! performed, and the next run performs only the rest.

use anyhow::anyhow;
use ledger::stage::StageContext;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Mutex};
use std::time::Instant;

/// The error a probing `observe` returns when nothing is recorded (never surfaces).
#[derive(Debug)]
struct NotRecorded;

impl std::fmt::Display for NotRecorded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("not recorded")
    }
}

impl std::error::Error for NotRecorded {}

/// The recorded response to each request, `None` where there is none. Performs nothing. In a
/// replay an unrecorded request is an error (`observe` names it): replays never perform work.
pub fn recorded(
    ctx: &mut StageContext,
    source: &str,
    requests: &[Vec<u8>],
) -> anyhow::Result<Vec<Option<Vec<u8>>>> {
    let mut out = Vec::with_capacity(requests.len());
    for request in requests {
        match ctx.observe(source, request, || Err(NotRecorded.into())) {
            Ok(response) => out.push(Some(response)),
            Err(e) if e.is::<NotRecorded>() => out.push(None),
            Err(e) => return Err(e),
        }
    }
    Ok(out)
}

/// One performed request: its response and how long performing it took.
pub struct Performed {
    pub response: Vec<u8>,
    pub seconds: f64,
}

enum Message {
    Done(usize, anyhow::Result<Vec<u8>>, f64),
    WorkerFailed(anyhow::Error),
}

/// Performs `requests` on up to `workers` threads and records each response under `source`
/// as it arrives. Each thread first builds its state with `start(worker_index)` (e.g. starts
/// a container), then takes requests from a shared queue. The first error stops the others
/// (they finish the request in hand, which is still recorded) and is returned.
pub fn perform_all<W, S, P>(
    ctx: &mut StageContext,
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
    let mut done: Vec<Option<Performed>> = (0..requests.len()).map(|_| None).collect();
    let mut first_error: Option<anyhow::Error> = None;
    let (tx, rx) = mpsc::channel::<Message>();
    std::thread::scope(|scope| {
        for w in 0..workers {
            let tx = tx.clone();
            let (queue, stop, start, perform) = (&queue, &stop, &start, &perform);
            scope.spawn(move || {
                let mut state = match start(w) {
                    Ok(s) => s,
                    Err(e) => {
                        let _ = tx.send(Message::WorkerFailed(e));
                        return;
                    }
                };
                while !stop.load(Ordering::SeqCst) {
                    let next = queue.lock().unwrap_or_else(|p| p.into_inner()).pop_front();
                    let Some(i) = next else { break };
                    let t = Instant::now();
                    let result = perform(&mut state, &requests[i]);
                    if tx
                        .send(Message::Done(i, result, t.elapsed().as_secs_f64()))
                        .is_err()
                    {
                        break;
                    }
                }
            });
        }
        drop(tx);
        for message in rx {
            let failure = match message {
                Message::Done(i, Ok(response), seconds) => {
                    // Already performed: `observe` stores and records it, nothing runs twice.
                    match ctx.observe(source, &requests[i], || Ok(response)) {
                        Ok(response) => {
                            done[i] = Some(Performed { response, seconds });
                            ctx.progress().inc(1);
                            None
                        }
                        Err(e) => Some(e),
                    }
                }
                Message::Done(_, Err(e), _) | Message::WorkerFailed(e) => Some(e),
            };
            if let Some(e) = failure {
                stop.store(true, Ordering::SeqCst);
                first_error.get_or_insert(e);
            }
        }
    });
    if let Some(e) = first_error {
        return Err(e);
    }
    done.into_iter()
        .enumerate()
        .map(|(i, d)| d.ok_or_else(|| anyhow!("{source} request #{i} was never performed")))
        .collect()
}
