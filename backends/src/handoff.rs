//! Handing accepted connections from the acceptor to a worker.
//!
//! The acceptor pushes into a worker's queue and rings the worker's doorbell only when the
//! queue was empty, so a burst of accepts costs the worker one wake-up, not one per
//! connection. The doorbell is backend-specific: an eventfd write for epoll, an
//! IORING_OP_MSG_RING completion posted into the worker's ring for io_uring.

use std::io;
use std::os::fd::OwnedFd;
use std::sync::Mutex;
use std::thread::ScopedJoinHandle;

use crate::book::{CloseReason, ConnMeter, ConnRecord, ThreadStats};
use crate::server::Shared;

/// An accepted connection on its way to a worker.
pub struct NewConn {
    pub fd: OwnedFd,
    pub meter: ConnMeter,
}

/// One worker's incoming queue.
#[derive(Default)]
pub struct Inbox {
    queue: Mutex<Vec<NewConn>>,
}

impl Inbox {
    /// Queues `conn`; returns true when the worker must be woken (the queue was empty, so
    /// no wake-up is pending for it yet).
    pub fn push(&self, conn: NewConn) -> bool {
        let mut q = self.queue.lock().unwrap_or_else(|p| p.into_inner());
        q.push(conn);
        q.len() == 1
    }

    /// Takes everything queued so far; `into` must be empty and is reused across calls.
    pub fn take(&self, into: &mut Vec<NewConn>) {
        let mut q = self.queue.lock().unwrap_or_else(|p| p.into_inner());
        std::mem::swap(&mut *q, into);
    }

    /// Closes whatever is still queued at shutdown, one `shutdown` row each, so a
    /// connection accepted in the last instant is still logged.
    pub fn close_leftovers(&self, worker: usize, stats: &mut ThreadStats, rows: &mut Vec<ConnRecord>) {
        let mut left = Vec::new();
        self.take(&mut left);
        for c in left {
            stats.record(rows, c.meter.finish(worker, CloseReason::Shutdown));
            drop(c.fd);
            stats.syscalls.add(crate::Sys::Close);
        }
    }
}

/// The end of every backend's `serve`, once its acceptor has returned: stop the workers
/// (whatever ended the acceptor), join them, and close and log any connection that was
/// queued after its worker's last look. Returns the acceptor's counters first.
pub fn finish_serve(
    shared: &Shared,
    accepted: io::Result<ThreadStats>,
    workers: Vec<ScopedJoinHandle<'_, io::Result<ThreadStats>>>,
    inboxes: &[Inbox],
) -> io::Result<Vec<ThreadStats>> {
    shared.stop.trigger();
    let mut all = vec![accepted?];
    for h in workers {
        all.push(h.join().map_err(|_| io::Error::other("a worker thread panicked"))??);
    }
    let mut rows = Vec::new();
    for (id, inbox) in inboxes.iter().enumerate() {
        inbox.close_leftovers(id, &mut all[0], &mut rows);
    }
    shared.log.append(&mut rows)?;
    Ok(all)
}

/// A worker that fails stops the whole server: its queue would otherwise fill with
/// connections nobody serves while the acceptor goes on accepting.
pub fn stop_all_on_error(shared: &Shared, r: io::Result<ThreadStats>) -> io::Result<ThreadStats> {
    if let Err(e) = &r {
        eprintln!("ringbench: worker failed, stopping the server: {e}");
        shared.stop.trigger();
    }
    r
}
