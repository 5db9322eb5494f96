//! Worker threads, started and stopped one way for every worker-based backend, and the
//! idle-connection tick they share.
//!
//! Each worker sets itself up on its own thread (an io_uring created with SINGLE_ISSUER
//! may only be used by its creator) and reports ready with its doorbell; the acceptor
//! starts only once every worker is ready, so it cannot take the last descriptors before
//! a worker has its event source (seen under a 64-descriptor limit). A worker that fails
//! stops the whole server: its queue would otherwise fill with connections nobody serves.

use std::io;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::book::{ThreadBook, ThreadStats};
use crate::handoff::Inbox;
use crate::notice::Notice;
use crate::shared::Shared;

/// Runs an acceptor and `shared.workers` workers until the server stops, then joins them
/// and closes (with a row each) connections still queued for a worker.
///
/// - `setup(id)` runs on worker `id`'s own thread and returns its state and its doorbell
///   (what the acceptor needs to wake it);
/// - `run(state, inbox, book)` serves until the server stops; every row it books must be
///   written before it returns, error or not;
/// - `accept(inboxes, doorbells, book)` runs on the calling thread once every worker is
///   ready, and returns when the server is stopping.
///
/// Returns every thread's counters, the acceptor's first.
pub fn serve_with_workers<W, D: Send>(
    shared: &Shared,
    kind: &str,
    setup: impl Fn(usize) -> io::Result<(W, D)> + Sync,
    run: impl Fn(W, &Inbox, ThreadBook) -> io::Result<ThreadBook> + Sync,
    accept: impl FnOnce(&[Inbox], Vec<D>, &mut ThreadBook) -> io::Result<()>,
) -> io::Result<Vec<ThreadStats>> {
    let inboxes: Vec<Inbox> = (0..shared.workers).map(|_| Inbox::default()).collect();
    let mut acceptor = ThreadBook::new(0);
    std::thread::scope(|s| {
        let (tx, rx) = mpsc::channel::<(usize, io::Result<D>)>();
        let mut handles = Vec::with_capacity(inboxes.len());
        for (id, inbox) in inboxes.iter().enumerate() {
            let (tx, setup, run) = (tx.clone(), &setup, &run);
            let spawned =
                std::thread::Builder::new().name(format!("ringbench-{kind}-{id}")).spawn_scoped(s, move || {
                    let (state, bell) = match setup(id) {
                        Ok(x) => x,
                        Err(e) => {
                            let _ = tx.send((id, Err(io::Error::new(e.kind(), format!("worker {id} set-up: {e}")))));
                            return Err(e);
                        }
                    };
                    let _ = tx.send((id, Ok(bell)));
                    drop(tx);
                    stop_all_on_error(shared, run(state, inbox, ThreadBook::new(id)))
                });
            match spawned {
                Ok(h) => handles.push(h),
                Err(e) => {
                    shared.stop.trigger();
                    return Err(e);
                }
            }
        }
        drop(tx);
        let accepted = ready_doorbells(&rx, inboxes.len()).and_then(|bells| {
            shared.mark_ready();
            accept(&inboxes, bells, &mut acceptor)
        });
        // Whatever ended the acceptor, stop the workers and account for everyone.
        shared.stop.trigger();
        let mut all = Vec::with_capacity(handles.len() + 1);
        let mut failed = accepted.err();
        for h in handles {
            match h.join() {
                Ok(Ok(book)) => all.push(book.stats),
                Ok(Err(e)) => failed = failed.or(Some(e)),
                Err(_) => failed = failed.or(Some(io::Error::other("a worker thread panicked"))),
            }
        }
        for (id, inbox) in inboxes.iter().enumerate() {
            inbox.close_leftovers(id, &mut acceptor, shared);
        }
        shared.write_rows(&mut acceptor);
        match failed {
            Some(e) => Err(e),
            None => {
                all.insert(0, acceptor.stats);
                Ok(all)
            }
        }
    })
}

/// Collects every worker's doorbell, in worker order, or the first set-up error.
fn ready_doorbells<D>(rx: &mpsc::Receiver<(usize, io::Result<D>)>, n: usize) -> io::Result<Vec<D>> {
    let mut bells: Vec<Option<D>> = (0..n).map(|_| None).collect();
    for (id, bell) in rx.iter().take(n) {
        bells[id] = Some(bell?);
    }
    bells.into_iter().collect::<Option<Vec<D>>>().ok_or_else(|| io::Error::other("a worker exited before it was ready"))
}

/// A worker that fails stops the whole server (after booking its rows).
fn stop_all_on_error(shared: &Shared, r: io::Result<ThreadBook>) -> io::Result<ThreadBook> {
    if let Err(e) = &r {
        shared.notify(Notice::WorkerFailed { error: e.to_string() });
        shared.stop.trigger();
    }
    r
}

/// When to look for idle connections: four times per `--idle-timeout` (at least every
/// 10 ms, at most every second), so an idle connection is closed between one and 1.25
/// timeouts after its last activity.
pub struct IdleTick {
    limit: Duration,
    every: Duration,
    last: Instant,
}

impl IdleTick {
    pub fn new(idle_timeout: Option<Duration>) -> Option<IdleTick> {
        let limit = idle_timeout?;
        Some(IdleTick {
            limit,
            every: (limit / 4).clamp(Duration::from_millis(10), Duration::from_secs(1)),
            last: Instant::now(),
        })
    }

    /// How long a worker may wait for events before it must look.
    pub fn every(&self) -> Duration {
        self.every
    }

    /// The idle limit, when a scan is due at `now`.
    pub fn due(&mut self, now: Instant) -> Option<Duration> {
        if now.duration_since(self.last) >= self.every {
            self.last = now;
            Some(self.limit)
        } else {
            None
        }
    }
}
