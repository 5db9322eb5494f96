//! Handing accepted connections from the acceptor to a worker.
//!
//! The acceptor pushes into a worker's queue and rings the worker's doorbell only when the
//! queue was empty, so a burst of accepts costs the worker one wake-up, not one per
//! connection. The doorbell is backend-specific: an eventfd write for epoll, an
//! IORING_OP_MSG_RING completion posted into the worker's ring for io_uring.

use std::os::fd::OwnedFd;
use std::sync::Mutex;

use crate::book::{CloseReason, ConnMeter, ThreadBook};
use crate::shared::Shared;

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

    /// Closes whatever is still queued at shutdown, one `shutdown` row each (booked as
    /// `worker`'s), so a connection accepted in the last instant is still logged.
    pub fn close_leftovers(&self, worker: usize, book: &mut ThreadBook, shared: &Shared) {
        let mut left = Vec::new();
        self.take(&mut left);
        for c in left {
            book.closed_for(worker, &c.meter, CloseReason::Shutdown);
            book.stats.syscalls.close(c.fd);
            shared.closed_one();
        }
    }
}
