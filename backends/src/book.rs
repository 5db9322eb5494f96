//! Bookkeeping shared by every backend: the per-connection log row, what one connection
//! counts while it is open, and what one server thread counts. Backends differ in how they
//! move bytes, never in what they record, so logs from any two backends compare column by
//! column. (The sink that writes rows is [`crate::log`].)

use std::io;
use std::net::SocketAddr;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::sys::{unix_now_s, LiveCounters, Syscalls};

/// Why a connection ended. Exactly one reason per connection, in its one log row.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CloseReason {
    /// The client closed its side (read returned 0) and every byte had been echoed.
    Eof,
    /// The client reset the connection (ECONNRESET, EPIPE).
    Reset,
    /// Any other socket error.
    Error,
    /// The server was stopped (SIGINT/SIGTERM) while the connection was open.
    Shutdown,
    /// The connection was idle for `--idle-timeout`.
    Timeout,
    /// Closed at once because `--max-conns` connections were already open.
    Rejected,
}

impl CloseReason {
    /// Classifies an I/O error on a connection.
    pub fn from_error(e: &io::Error) -> CloseReason {
        match e.raw_os_error() {
            Some(libc::ECONNRESET) | Some(libc::EPIPE) | Some(libc::ECONNABORTED) => CloseReason::Reset,
            Some(libc::ETIMEDOUT) => CloseReason::Timeout,
            _ => CloseReason::Error,
        }
    }
}

/// One row of the per-connection log, written when the connection ends.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ConnRecord {
    /// The client's address and port.
    pub peer: SocketAddr,
    /// The descriptor the server used (reused after close, so not unique over a run).
    pub fd: i32,
    /// The index of the worker thread that served the connection.
    pub worker: usize,
    /// Bytes received from the client (and echoed, unless the connection broke first).
    pub bytes: u64,
    /// Reads that returned data (for the seed's 64-byte requests, about one per request).
    pub reads: u64,
    /// When the server accepted the connection, seconds since the Unix epoch.
    pub opened_unix_s: f64,
    /// When the server closed it, seconds since the Unix epoch.
    pub closed_unix_s: f64,
    /// Why it ended.
    pub close_reason: CloseReason,
}

/// The counters one connection carries while it is open; every backend embeds it.
#[derive(Clone, Debug)]
pub struct ConnMeter {
    pub peer: SocketAddr,
    pub fd: i32,
    pub opened_unix_s: f64,
    pub bytes: u64,
    pub reads: u64,
    /// The last time bytes moved either way (for `--idle-timeout`).
    pub last_active: Instant,
    /// A test server made slower on purpose (`--spin-ns-per-read`): CPU burnt per read.
    pub spin: Option<std::time::Duration>,
}

impl ConnMeter {
    pub fn new(peer: SocketAddr, fd: i32) -> Self {
        ConnMeter { peer, fd, opened_unix_s: unix_now_s(), bytes: 0, reads: 0, last_active: Instant::now(), spin: None }
    }

    /// The same, burning `spin` of CPU on every read (a server slower by a known amount,
    /// to check that a sweep finds it slower by that much).
    pub fn with_spin(mut self, spin: Option<std::time::Duration>) -> Self {
        self.spin = spin.filter(|d| !d.is_zero());
        self
    }

    /// Counts one read that returned `n > 0` bytes, at `now`.
    #[inline]
    pub fn on_read(&mut self, n: usize, now: Instant) {
        self.reads += 1;
        self.bytes += n as u64;
        self.last_active = now;
        if let Some(d) = self.spin {
            // Busy, not asleep: the point is CPU time (the clock read is a vDSO call). From
            // now, not from `now`, which is when the batch of events began.
            let t = Instant::now();
            while t.elapsed() < d {
                std::hint::spin_loop();
            }
        }
    }

    /// Bytes moved the other way (an echo went out) at `now`.
    #[inline]
    pub fn touch(&mut self, now: Instant) {
        self.last_active = now;
    }

    /// The log row for this connection, closed now for `reason` by `worker`.
    pub fn finish(&self, worker: usize, reason: CloseReason) -> ConnRecord {
        ConnRecord {
            peer: self.peer,
            fd: self.fd,
            worker,
            bytes: self.bytes,
            reads: self.reads,
            opened_unix_s: self.opened_unix_s,
            closed_unix_s: unix_now_s(),
            close_reason: reason,
        }
    }
}

/// What one server thread did, merged into the summary at exit.
#[derive(Clone, Debug, Default)]
pub struct ThreadStats {
    pub syscalls: Syscalls,
    /// Connections this thread closed (and logged).
    pub connections: u64,
    pub bytes: u64,
    pub reads: u64,
    /// Connections turned away by `--max-conns` (acceptor only).
    pub rejected: u64,
    /// accept() calls that failed with EMFILE/ENFILE (acceptor only).
    pub accept_fd_exhausted: u64,
    /// io_uring only: submission entries handed to the kernel and completions reaped.
    pub sqes_submitted: u64,
    pub cqes_reaped: u64,
    /// io_uring only: times the provided-buffer ring ran dry (ENOBUFS) and recv was re-armed.
    pub bufring_empty: u64,
    /// io_uring only: loop turns that found the CQ ring full (the kernel held completions
    /// back until the next wait; none are lost).
    pub cq_overflow: u64,
    /// io_uring only: buffers a receive bundle carried beyond its first (how much bundles
    /// saved: one completion each).
    pub bundle_extra_buffers: u64,
    /// io_uring only: zero-copy sends, counted at their notification.
    pub zc_notifications: u64,
    /// io_uring only, incremental consumption: receives whose data went into a buffer
    /// an earlier receive had used part of (what incremental buffers save: a buffer each).
    pub shared_buffer_receives: u64,
    /// io_uring only: receives into a connection's own fallback buffer because the ring
    /// had none to give (clients that do not read their echoes can hold every buffer).
    pub own_buffer_receives: u64,
}

impl ThreadStats {
    pub fn merge(&mut self, o: &ThreadStats) {
        self.syscalls.merge(&o.syscalls);
        self.connections += o.connections;
        self.bytes += o.bytes;
        self.reads += o.reads;
        self.rejected += o.rejected;
        self.accept_fd_exhausted += o.accept_fd_exhausted;
        self.sqes_submitted += o.sqes_submitted;
        self.cqes_reaped += o.cqes_reaped;
        self.bufring_empty += o.bufring_empty;
        self.cq_overflow += o.cq_overflow;
        self.bundle_extra_buffers += o.bundle_extra_buffers;
        self.zc_notifications += o.zc_notifications;
        self.shared_buffer_receives += o.shared_buffer_receives;
        self.own_buffer_receives += o.own_buffer_receives;
    }
}

/// One server thread's books: its counters, and the log rows it has not yet handed to the
/// log. Rows are handed over once per event-loop turn ([`crate::log::ConnLog::append`]),
/// so the log's lock is taken once per turn, not once per connection.
#[derive(Debug, Default)]
pub struct ThreadBook {
    /// The thread's index: the worker number in each row it writes.
    pub id: usize,
    pub stats: ThreadStats,
    pub rows: Vec<ConnRecord>,
    /// The syscalls already added to the live counters.
    published: Published,
}

impl ThreadBook {
    pub fn new(id: usize) -> ThreadBook {
        ThreadBook { id, ..ThreadBook::default() }
    }

    /// Adds the syscalls made since the last call to `live` (once per loop turn).
    #[inline]
    pub fn publish(&mut self, live: &LiveCounters) {
        self.published.publish(live, self.id, &self.stats.syscalls);
    }

    /// Books the end of a connection: its one log row, closed now for `reason`.
    pub fn closed(&mut self, meter: &ConnMeter, reason: CloseReason) {
        self.closed_for(self.id, meter, reason);
    }

    /// As [`closed`](Self::closed), for a connection that was meant for `worker` (the
    /// acceptor books connections it turns away, or that never reached their worker).
    pub fn closed_for(&mut self, worker: usize, meter: &ConnMeter, reason: CloseReason) {
        let row = meter.finish(worker, reason);
        self.stats.connections += 1;
        self.stats.rejected += u64::from(reason == CloseReason::Rejected);
        self.stats.bytes += row.bytes;
        self.stats.reads += row.reads;
        self.rows.push(row);
    }
}

/// How many of a thread's syscalls it has added to the live counters, so each turn adds
/// only what is new.
#[derive(Clone, Copy, Debug, Default)]
pub struct Published(u64);

impl Published {
    /// Adds what `calls` counted since the last call to `live`'s slot for thread `id`.
    #[inline]
    pub fn publish(&mut self, live: &LiveCounters, id: usize, calls: &Syscalls) {
        let total = calls.total();
        if total > self.0 {
            live.add(id, total - self.0);
            self.0 = total;
        }
    }
}
