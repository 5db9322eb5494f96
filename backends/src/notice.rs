//! Things a running server has to tell its operator, as data.
//!
//! The library never prints. It reports a [`Notice`] to [`Notices`], which hands it to the
//! sink the caller installed (the `ringbench` binary prints one line to stderr) and keeps
//! it for the summary, where tests and the sweep read it as data instead of scraping text.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// One event worth telling the operator about. Each is reported once per episode, not
/// once per attempt, so a server near a limit does not flood its log.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Notice {
    /// `accept` failed for lack of descriptors or kernel memory: accepting pauses and is
    /// retried every `retry_ms`, while the open connections are still served.
    OutOfFds { error: String, open: usize, retry_ms: u64 },
    /// Accepting again after an out-of-descriptors episode.
    AcceptingAgain { failed_attempts: u64 },
    /// A worker failed; the server stops (every connection is still logged).
    WorkerFailed { error: String },
    /// A new connection could not be registered with its worker and was closed.
    RegisterFailed { error: String },
    /// The io_uring acceptor's doorbell to a worker failed; the connection waits in the
    /// worker's queue until its next doorbell.
    DoorbellFailed { worker: usize, error: String },
    /// A file could not be written (rows are being lost; serving goes on).
    WriteFailed { path: String, error: String, rows_lost: u64 },
    /// A thread for a new connection could not be created: the connection was rejected.
    ThreadSpawnFailed { error: String, open: usize },
    /// Threads could be created again after `rejected` connections were turned away.
    ThreadSpawnRecovered { rejected: u64 },
}

impl fmt::Display for Notice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Notice::OutOfFds { error, open, retry_ms } => write!(
                f,
                "accept failed: {error}; still serving the {open} open connections, retrying every \
                 {retry_ms} ms (reported once; raise the limit with ulimit -n)"
            ),
            Notice::AcceptingAgain { failed_attempts } => {
                write!(f, "accepting again after {failed_attempts} failed attempts")
            }
            Notice::WorkerFailed { error } => write!(f, "worker failed, stopping the server: {error}"),
            Notice::RegisterFailed { error } => write!(f, "a new connection could not be registered: {error}"),
            Notice::DoorbellFailed { worker, error } => write!(f, "MSG_RING to worker {worker} failed: {error}"),
            Notice::WriteFailed { path, error, rows_lost } => {
                write!(f, "cannot write {path}: {error}; {rows_lost} rows lost so far, still serving")
            }
            Notice::ThreadSpawnFailed { error, open } => write!(
                f,
                "cannot create a thread for a new connection: {error}; rejecting new connections while \
                 {open} are open (reported once; see ulimit -u, vm.max_map_count, kernel.threads-max)"
            ),
            Notice::ThreadSpawnRecovered { rejected } => {
                write!(f, "threads can be created again after {rejected} connections were rejected")
            }
        }
    }
}

/// One kind of trouble, reported once per episode instead of once per occurrence.
///
/// Near a limit a server flaps: one resource frees up, one attempt succeeds, the next
/// fails again. An episode therefore ends only after a quiet second with no failure, so a
/// flapping server reports once, not once per freed resource.
#[derive(Debug, Default)]
pub struct Episode {
    reported: bool,
    failures: u64,
    last_failure: Option<Instant>,
}

impl Episode {
    const QUIET: Duration = Duration::from_secs(1);

    /// Counts a failure; true when it starts an episode (report it).
    pub fn failed(&mut self) -> bool {
        self.failures += 1;
        self.last_failure = Some(Instant::now());
        !std::mem::replace(&mut self.reported, true)
    }

    /// A success: `Some(failures)` when it ends a reported episode (report that too).
    pub fn succeeded(&mut self) -> Option<u64> {
        if self.reported && self.last_failure.is_some_and(|t| t.elapsed() >= Self::QUIET) {
            self.reported = false;
            return Some(std::mem::take(&mut self.failures));
        }
        None
    }
}

/// Where notices go as they happen (the binary prints them).
#[derive(Clone)]
pub struct NoticeSink(pub Arc<dyn Fn(&Notice) + Send + Sync>);

impl fmt::Debug for NoticeSink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("NoticeSink")
    }
}

/// The notices of one server run: handed to the sink, and kept for the summary.
#[derive(Default)]
pub struct Notices {
    sink: Option<NoticeSink>,
    kept: Mutex<Vec<Notice>>,
    dropped: AtomicU64,
}

impl Notices {
    /// Notices kept for the summary at most; the rest are counted.
    const KEEP: usize = 256;

    pub fn new(sink: Option<NoticeSink>) -> Notices {
        Notices { sink, ..Notices::default() }
    }

    pub fn report(&self, n: Notice) {
        if let Some(s) = &self.sink {
            (s.0)(&n);
        }
        let mut kept = self.kept.lock().unwrap_or_else(|p| p.into_inner());
        if kept.len() < Self::KEEP {
            kept.push(n);
        } else {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Every notice kept so far, and how many more there were.
    pub fn snapshot(&self) -> (Vec<Notice>, u64) {
        (self.kept.lock().unwrap_or_else(|p| p.into_inner()).clone(), self.dropped.load(Ordering::Relaxed))
    }
}
