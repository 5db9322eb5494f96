//! Handing accepted connections from the acceptor to a worker.
//!
//! The acceptor pushes into a worker's queue and signals its eventfd only when the queue
//! was empty, so a burst of accepts costs the worker one wake-up, not one per connection.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Mutex;

use crate::book::{CloseReason, ConnMeter, ConnRecord, ThreadStats};
use crate::sys;

/// An accepted connection on its way to a worker.
pub struct NewConn {
    pub fd: OwnedFd,
    pub meter: ConnMeter,
}

/// One worker's incoming queue and the eventfd that wakes it.
pub struct Inbox {
    queue: Mutex<Vec<NewConn>>,
    wake: OwnedFd,
}

impl Inbox {
    pub fn new() -> io::Result<Self> {
        Ok(Inbox { queue: Mutex::new(Vec::new()), wake: sys::eventfd()? })
    }

    /// Queues `conn`; returns true when the worker must be woken (the queue was empty, so
    /// no wake-up is pending for it yet). The caller then calls [`Inbox::wake`].
    pub fn push(&self, conn: NewConn) -> bool {
        let mut q = self.queue.lock().unwrap_or_else(|p| p.into_inner());
        q.push(conn);
        q.len() == 1
    }

    /// Wakes the worker (one eventfd write).
    pub fn wake(&self) -> io::Result<()> {
        sys::eventfd_signal(self.wake.as_fd())
    }

    /// Takes everything queued so far; `into` must be empty and is reused across calls.
    pub fn take(&self, into: &mut Vec<NewConn>) {
        let mut q = self.queue.lock().unwrap_or_else(|p| p.into_inner());
        std::mem::swap(&mut *q, into);
    }

    /// The eventfd the worker waits on.
    pub fn wake_fd(&self) -> BorrowedFd<'_> {
        self.wake.as_fd()
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
