//! State every thread of one server shares: the configuration, the stop signal, the log,
//! the notices, and the server-wide connection counts.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::book::ThreadBook;
use crate::config::ServerConfig;
use crate::log::ConnLog;
use crate::notice::{Notice, Notices};
use crate::sys::{self, LiveCounters};

/// How far a stop has gone.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
pub enum StopLevel {
    Running = 0,
    /// Orderly: no more accepts; every connection closed, its row written.
    Stopping = 1,
    /// Now (a second signal): skip waiting on the kernel; rows and summary still written.
    Aborting = 2,
}

/// A one-way "stop" flag that event loops can wait on: an eventfd that stays readable
/// once signalled (so a level-triggered epoll or a poll request sees it every time), and
/// an atomic for cheap checks.
pub struct StopSignal {
    fd: OwnedFd,
    level: AtomicU8,
}

impl StopSignal {
    pub fn new() -> io::Result<Self> {
        Ok(StopSignal { fd: sys::eventfd()?, level: AtomicU8::new(StopLevel::Running as u8) })
    }

    /// Asks every thread of the server to stop. Safe to call from any thread, many times.
    pub fn trigger(&self) {
        self.raise(StopLevel::Stopping);
    }

    /// Asks every thread to stop at once, without waiting for the kernel to hand back what
    /// it holds (the server still writes every row and its summary).
    pub fn abort(&self) {
        self.raise(StopLevel::Aborting);
    }

    fn raise(&self, to: StopLevel) {
        let was = self.level.fetch_max(to as u8, Ordering::SeqCst);
        if was == StopLevel::Running as u8 {
            // The flag is already visible; failing to wake would only delay the stop
            // until the next event, and eventfd writes do not fail on a valid fd.
            let _ = sys::eventfd_signal(self.fd.as_fd());
        }
    }

    pub fn is_set(&self) -> bool {
        self.level.load(Ordering::Relaxed) != StopLevel::Running as u8
    }

    pub fn is_abort(&self) -> bool {
        self.level.load(Ordering::Relaxed) == StopLevel::Aborting as u8
    }

    /// The eventfd to wait on.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// State every thread of one server shares.
pub struct Shared {
    pub cfg: ServerConfig,
    /// Worker threads (resolved from the configuration).
    pub workers: usize,
    pub stop: StopSignal,
    pub log: ConnLog,
    pub notices: Notices,
    /// Connections currently open (accepted, not yet closed), for `--max-conns`.
    pub open: AtomicUsize,
    /// Connections accepted so far (rejected ones included).
    pub accepted: AtomicUsize,
    /// Resource usage when set-up ended (rings, buffers, threads), so the summary's CPU
    /// counts serving only and short runs are not dominated by start-up.
    ready: Mutex<Option<(libc::rusage, Instant)>>,
    /// Syscalls so far, for whoever measures the server while it runs.
    pub live: Arc<LiveCounters>,
}

impl Shared {
    pub fn new(cfg: ServerConfig, log: ConnLog) -> io::Result<Shared> {
        let notices = Notices::new(cfg.notices.clone());
        let cfg_live = cfg.live.clone().unwrap_or_else(|| Arc::new(LiveCounters::private()));
        Ok(Shared {
            workers: cfg.worker_count(),
            cfg,
            stop: StopSignal::new()?,
            log,
            notices,
            open: AtomicUsize::new(0),
            accepted: AtomicUsize::new(0),
            ready: Mutex::new(None),
            live: cfg_live,
        })
    }

    /// Called once the backend's workers are set up, right before it starts accepting.
    pub fn mark_ready(&self) {
        if let Ok(ru) = sys::rusage_self() {
            *self.ready.lock().unwrap_or_else(|p| p.into_inner()) = Some((ru, Instant::now()));
        }
    }

    /// What [`mark_ready`](Self::mark_ready) recorded, if it ran.
    pub fn ready_mark(&self) -> Option<(libc::rusage, Instant)> {
        *self.ready.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether a new connection must be turned away under `--max-conns`.
    pub fn over_limit(&self) -> bool {
        self.cfg.max_conns.is_some_and(|max| self.open.load(Ordering::Relaxed) >= max)
    }

    /// Hands the rows `book` has gathered to the log, and its new syscalls to the live
    /// counters: every backend calls this once per loop turn.
    pub fn write_rows(&self, book: &mut ThreadBook) {
        self.log.append(&mut book.rows, &self.notices);
        book.publish(&self.live);
    }

    pub fn notify(&self, n: Notice) {
        self.notices.report(n);
    }

    /// A connection that was counted open is closed.
    pub fn closed_one(&self) {
        self.open.fetch_sub(1, Ordering::Relaxed);
    }
}
