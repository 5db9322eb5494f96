//! A ring split into its parts for the life of one thread, with the bookkeeping every
//! user of it needs: every SQE and `io_uring_enter` counted, a backlog for entries that do
//! not fit a full submission queue, and — in one place — the in-flight count: a request
//! is in flight from its push until its final completion (one without `F_MORE`) is reaped.

use std::collections::VecDeque;
use std::io;
use std::time::Duration;

use io_uring::squeue::Entry;
use io_uring::types::{SubmitArgs, Timespec};
use io_uring::{cqueue, CompletionQueue, IoUring, SubmissionQueue, Submitter};

use super::probe::Features;
use super::user_data;
use crate::book::ThreadStats;
use crate::sys::Sys;
use crate::table::Key;

/// One completion, decoded.
#[derive(Clone, Copy, Debug)]
pub struct Cqe {
    pub tag: u8,
    pub key: Key,
    pub res: i32,
    pub flags: u32,
}

impl Cqe {
    /// More completions will follow for the same (multishot) request.
    pub fn more(&self) -> bool {
        cqueue::more(self.flags)
    }

    /// The provided buffer the kernel picked for this completion's data.
    pub fn buffer(&self) -> Option<u16> {
        cqueue::buffer_select(self.flags)
    }

    pub fn error(&self) -> io::Error {
        io::Error::from_raw_os_error(-self.res)
    }
}

pub struct Ring<'r> {
    pub sub: Submitter<'r>,
    sq: SubmissionQueue<'r>,
    cq: CompletionQueue<'r>,
    /// Entries that did not fit in a full submission queue; pushed first next turn.
    backlog: VecDeque<Entry>,
    /// Our requests whose final completion has not arrived yet.
    inflight: usize,
}

impl<'r> Ring<'r> {
    pub fn new(ring: &'r mut IoUring, feat: &Features, stats: &mut ThreadStats) -> Ring<'r> {
        let (mut sub, sq, cq) = ring.split();
        if feat.registered_ring_fd {
            stats.syscalls.count(Sys::IoUringRegister);
            // Optional: without it each enter looks the ring fd up, which still works.
            let _ = sub.register_ring_fd();
        }
        Ring { sub, sq, cq, backlog: VecDeque::new(), inflight: 0 }
    }

    /// Requests in flight.
    pub fn inflight(&self) -> usize {
        self.inflight
    }

    /// Queues `e` for the connection (or slot) `key`, tagged `tag`. Unless the tag says
    /// otherwise ([`user_data::WAKE`]), it is in flight until its final completion.
    pub fn push(&mut self, e: Entry, tag: u8, key: Key, stats: &mut ThreadStats) {
        if user_data::is_request(tag) {
            self.inflight += 1;
        }
        let e = e.user_data(user_data::pack(tag, key));
        stats.sqes_submitted += 1;
        if !self.backlog.is_empty() || !self.try_push(&e) {
            // The queue is full: hand what it holds to the kernel now, then retry. If that
            // fails too (the kernel is backed up), keep the entry for the next turn.
            self.sq.sync();
            stats.syscalls.count(Sys::IoUringEnter);
            let _ = self.sub.submit();
            self.sq.sync();
            if !self.backlog.is_empty() || !self.try_push(&e) {
                self.backlog.push_back(e);
            }
        }
    }

    fn try_push(&mut self, e: &Entry) -> bool {
        // SAFETY: every buffer an entry points to is owned by a connection or by the worker's
        // buffer ring, and neither is freed before the entry's final completion (a
        // connection is dropped only with nothing in flight; a worker that cannot wait for
        // its requests leaks its buffers instead of freeing them).
        unsafe { self.sq.push(e).is_ok() }
    }

    fn drain_backlog(&mut self) {
        while let Some(e) = self.backlog.pop_front() {
            if !self.try_push(&e) {
                self.backlog.push_front(e);
                break;
            }
        }
    }

    /// Submits everything queued and waits: for `want` completions, for at least one and
    /// then up to `min_wait_us` for more, or until `timeout`. Interrupted, timed-out and
    /// busy waits are normal returns: the caller reaps whatever is there.
    pub fn enter(
        &mut self,
        want: usize,
        min_wait_us: u32,
        timeout: Option<Duration>,
        stats: &mut ThreadStats,
    ) -> io::Result<()> {
        self.drain_backlog();
        self.sq.sync();
        stats.syscalls.count(Sys::IoUringEnter);
        let ts = timeout.map(|d| Timespec::new().sec(d.as_secs()).nsec(d.subsec_nanos()));
        let res = match (&ts, min_wait_us) {
            (None, 0) => self.sub.submit_and_wait(want),
            (None, us) => self.sub.submit_with_args(want, &SubmitArgs::new().min_wait_usec(us)),
            (Some(ts), us) => self.sub.submit_with_args(want, &SubmitArgs::new().min_wait_usec(us).timespec(ts)),
        };
        self.cq.sync();
        match res {
            Ok(_) => Ok(()),
            Err(e) if matches!(e.raw_os_error(), Some(libc::ETIME | libc::EINTR | libc::EBUSY | libc::EAGAIN)) => {
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// Moves every available completion into `out`, ending the life of each request whose
    /// final completion it is.
    pub fn reap(&mut self, out: &mut Vec<Cqe>, stats: &mut ThreadStats) {
        out.clear();
        self.cq.sync();
        for c in &mut self.cq {
            let ud = c.user_data();
            let cqe = Cqe { tag: user_data::tag(ud), key: user_data::key(ud), res: c.result(), flags: c.flags() };
            if user_data::is_request(cqe.tag) && !cqe.more() {
                debug_assert!(self.inflight > 0, "a completion for a request that was not in flight: {cqe:?}");
                self.inflight -= 1;
            }
            out.push(cqe);
        }
        stats.cqes_reaped += out.len() as u64;
        // With IORING_FEAT_NODROP a full CQ loses nothing: the kernel holds completions
        // back and flags it; the next enter (GETEVENTS) flushes them. Count those turns.
        if self.sq.cq_overflow() {
            stats.cq_overflow += 1;
        }
    }
}
