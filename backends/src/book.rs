//! Bookkeeping shared by every backend: the per-connection log row, the syscall counters,
//! and the sink that writes rows. Backends differ in how they move bytes, never in what
//! they record, so a log from `epoll` and one from `uring` can be compared column by column.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, BufWriter};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use crate::sys::unix_now_s;

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

/// The counters one connection carries while it is open; both backends embed it.
#[derive(Clone, Debug)]
pub struct ConnMeter {
    pub peer: SocketAddr,
    pub fd: i32,
    pub opened_unix_s: f64,
    pub bytes: u64,
    pub reads: u64,
}

impl ConnMeter {
    pub fn new(peer: SocketAddr, fd: i32) -> Self {
        ConnMeter { peer, fd, opened_unix_s: unix_now_s(), bytes: 0, reads: 0 }
    }

    /// Counts one read that returned `n > 0` bytes.
    #[inline]
    pub fn on_read(&mut self, n: usize) {
        self.reads += 1;
        self.bytes += n as u64;
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

/// The kinds of syscall the backends make, counted so syscalls per request can be shown.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sys {
    Accept,
    Read,
    Write,
    Close,
    EpollWait,
    EpollCtl,
    EventfdWrite,
    Getpeername,
    IoUringEnter,
    IoUringRegister,
    Nanosleep,
}

impl Sys {
    const ALL: [Sys; 11] = [
        Sys::Accept,
        Sys::Read,
        Sys::Write,
        Sys::Close,
        Sys::EpollWait,
        Sys::EpollCtl,
        Sys::EventfdWrite,
        Sys::Getpeername,
        Sys::IoUringEnter,
        Sys::IoUringRegister,
        Sys::Nanosleep,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Sys::Accept => "accept4",
            Sys::Read => "read",
            Sys::Write => "write",
            Sys::Close => "close",
            Sys::EpollWait => "epoll_wait",
            Sys::EpollCtl => "epoll_ctl",
            Sys::EventfdWrite => "eventfd_write",
            Sys::Getpeername => "getpeername",
            Sys::IoUringEnter => "io_uring_enter",
            Sys::IoUringRegister => "io_uring_register",
            Sys::Nanosleep => "clock_nanosleep",
        }
    }
}

/// Per-thread syscall counts: plain integers, merged once at exit, so counting costs an add.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SyscallCounts([u64; Sys::ALL.len()]);

impl SyscallCounts {
    #[inline]
    pub fn add(&mut self, kind: Sys) {
        self.0[kind as usize] += 1;
    }

    pub fn merge(&mut self, other: &SyscallCounts) {
        for (a, b) in self.0.iter_mut().zip(other.0.iter()) {
            *a += b;
        }
    }

    pub fn total(&self) -> u64 {
        self.0.iter().sum()
    }

    pub fn get(&self, kind: Sys) -> u64 {
        self.0[kind as usize]
    }

    /// Non-zero counts by syscall name.
    pub fn by_name(&self) -> BTreeMap<String, u64> {
        Sys::ALL.iter().filter(|k| self.get(**k) > 0).map(|k| (k.name().to_string(), self.get(*k))).collect()
    }
}

/// What one server thread did, merged into the summary at exit.
#[derive(Clone, Debug, Default)]
pub struct ThreadStats {
    pub syscalls: SyscallCounts,
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
    }

    /// Books a finished connection's row into these counters and into `rows`.
    pub fn record(&mut self, rows: &mut Vec<ConnRecord>, row: ConnRecord) {
        self.connections += 1;
        self.bytes += row.bytes;
        self.reads += row.reads;
        rows.push(row);
    }
}

/// Where log rows go: a CSV file shared by all workers, or nowhere (rows are still counted).
///
/// Workers collect rows in a local vector and hand them over once per event-loop turn,
/// so the lock is taken at most once per turn, not once per connection.
pub struct ConnLog {
    writer: Option<Mutex<csv::Writer<BufWriter<File>>>>,
    rows: AtomicU64,
}

impl ConnLog {
    /// A log that only counts rows.
    pub fn counting() -> Self {
        ConnLog { writer: None, rows: AtomicU64::new(0) }
    }

    /// A CSV log at `path` (created or truncated now, so an unwritable path fails at start).
    pub fn create(path: &Path) -> io::Result<Self> {
        let file = File::create(path)?;
        let mut w = csv::WriterBuilder::new().has_headers(false).from_writer(BufWriter::new(file));
        w.write_record(["peer", "fd", "worker", "bytes", "reads", "opened_unix_s", "closed_unix_s", "close_reason"])
            .map_err(io::Error::other)?;
        Ok(ConnLog { writer: Some(Mutex::new(w)), rows: AtomicU64::new(0) })
    }

    /// Appends `rows` (and empties the vector). A write error is returned, not swallowed:
    /// losing log rows silently would break the "one row per connection" promise.
    pub fn append(&self, rows: &mut Vec<ConnRecord>) -> io::Result<()> {
        if rows.is_empty() {
            return Ok(());
        }
        self.rows.fetch_add(rows.len() as u64, Ordering::Relaxed);
        if let Some(w) = &self.writer {
            let mut w = w.lock().unwrap_or_else(|p| p.into_inner());
            for r in rows.iter() {
                w.serialize(r).map_err(io::Error::other)?;
            }
        }
        rows.clear();
        Ok(())
    }

    /// Rows appended so far.
    pub fn rows(&self) -> u64 {
        self.rows.load(Ordering::Relaxed)
    }

    /// Flushes buffered rows to the file.
    pub fn flush(&self) -> io::Result<()> {
        if let Some(w) = &self.writer {
            w.lock().unwrap_or_else(|p| p.into_inner()).flush()?;
        }
        Ok(())
    }
}

/// Reads a per-connection log back (tests and the report use it).
pub fn read_log(path: &Path) -> io::Result<Vec<ConnRecord>> {
    let mut r = csv::Reader::from_path(path).map_err(io::Error::other)?;
    r.deserialize().map(|row| row.map_err(io::Error::other)).collect()
}

/// Event coalescing, the same policy for every backend: when a worker holds many
/// connections but its last wait returned only a few events, it lets events gather for a
/// short while before waiting again, so one wake-up serves many requests.
///
/// Under closed-loop load with hundreds of connections a server pinned to its own CPU is
/// otherwise woken for almost every request (about one `epoll_wait` per request), which
/// costs a syscall, a context switch and an IPI to the client's CPU each time. Gathering
/// for ~100 µs cuts that to a few per hundred requests and, measured here, raises
/// throughput too. With few connections it never engages, so single-connection latency is
/// untouched. `--coalesce-us 0` turns it off.
///
/// The backends differ only in how they wait: epoll must sleep (`clock_nanosleep`, counted)
/// and then `epoll_wait`; io_uring waits for `want` completions *or* the timeout in one
/// `io_uring_enter`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Coalesce {
    pub wait_us: u32,
}

impl Coalesce {
    /// Below this many open connections a worker never waits for more events.
    pub const MIN_OPEN: usize = 64;
    /// The most events worth waiting for.
    pub const MAX_WANT: usize = 64;

    /// How many events a worker with `open` connections should gather before it serves
    /// them; 1 means "serve whatever is ready now".
    #[inline]
    pub fn want(self, open: usize) -> usize {
        if self.wait_us == 0 || open < Self::MIN_OPEN {
            1
        } else {
            (open / 8).clamp(2, Self::MAX_WANT)
        }
    }
}
