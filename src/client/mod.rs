//! The load client: the seed's `basic_client`, made to verify every byte.
//!
//! Every connection sends requests of a payload unique to its thread and request number
//! and reads exactly that many bytes back, comparing them byte for byte, so crossed,
//! stale, dropped or duplicated bytes are caught. All connections are made first; a start
//! gate then releases them at once, so the measured phase runs at full concurrency.
//!
//! A failure is data: a refused, timed-out or reset connection or a mismatched byte ends
//! that connection's run with an error in its row, and every other connection goes on.
//!
//! Two engines drive the same load, closed or open loop:
//! - [`blocking`]: one OS thread per connection with blocking sockets (the seed's model,
//!   and the default);
//! - [`event`]: a few threads, each multiplexing many non-blocking connections with epoll
//!   and holding open-loop schedules to tens of microseconds;
//!
//! and around them: [`load`] (what each connection sends and when), [`latency`]
//! (histograms, not samples), [`summary`] (the run's figures), [`shard`] (a run spread
//! over processes, started together and merged), [`payload`] (what is sent, and how an
//! echo is checked).

pub mod blocking;
pub mod event;
pub mod gate;
pub mod latency;
pub mod load;
pub mod payload;
pub mod session;
pub mod shard;
pub mod summary;

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::time::Duration;

use ringbench_backends::sys;

use crate::results::{ClientSummary, ThreadRow};

pub use crate::workload::{self as workload, Workload};
pub use latency::Progress;
pub use load::{OpenLoop, Stop};
pub use payload::fill_payload;
pub use summary::{merge, summarise};

/// How a client drives its connections.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Engine {
    /// A blocking thread per connection (the seed's client).
    Threads,
    /// A few threads multiplexing non-blocking connections with epoll.
    Epoll,
}

impl Engine {
    pub fn name(self) -> &'static str {
        match self {
            Engine::Threads => "threads",
            Engine::Epoll => "epoll",
        }
    }
}

/// The largest `--size` accepted (64 MiB): each connection holds two buffers of this size.
pub const MAX_SIZE_BYTES: usize = 64 * 1024 * 1024;
/// Descriptors kept free for everything that is not a connection (stdio, files, epoll).
pub const SPARE_FDS: u64 = 64;

/// What one client run does.
#[derive(Clone, Debug)]
pub struct ClientConfig {
    pub server: SocketAddr,
    pub connections: usize,
    pub requests: u64,
    pub size: usize,
    /// Bounds every connect, read and write.
    pub timeout: Duration,
    /// Names the client host in every row, so runs from several hosts can be merged.
    pub label: String,
    /// Local addresses to connect from, round-robin (empty: let the kernel choose).
    pub source_ips: Vec<IpAddr>,
    /// The first thread number (when several processes share one run).
    pub first_thread: usize,
    /// Child processes to spread the connections over (each has its own fd limit).
    pub processes: usize,
    /// Repeat each connection's requests in rounds until the measured phase has lasted
    /// this long (`None`: one round). Closed loop only.
    pub min_run: Option<Duration>,
    /// An open loop instead of a closed one.
    pub open: Option<OpenLoop>,
    pub engine: Engine,
    /// The event engine's threads (0: one per CPU this process may use).
    pub threads: usize,
    /// `--interval-s`: a line on stderr this often.
    pub interval: Option<Duration>,
    /// For `--interval-s`: told of every request.
    pub progress: Option<Arc<Progress>>,
    /// Where to say when the measured phase starts and ends.
    pub phases: Phases,
    /// What each connection does.
    pub workload: Workload,
    /// `stream`: bytes in flight on every connection.
    pub window: u64,
}

/// Marks of the measured phase — `start` when the start gate opens, `end` when the last
/// connection has finished — written as lines to a descriptor the caller gave, so a
/// sweep can sample the server's CPU time at those instants.
#[derive(Clone, Debug, Default)]
pub struct Phases(Option<Arc<OwnedFd>>);

impl Phases {
    pub fn to(fd: OwnedFd) -> Phases {
        Phases(Some(Arc::new(fd)))
    }

    /// Writes `what` as a line; a reader that has gone away is not the run's problem.
    pub fn mark(&self, what: &str) {
        if let Some(fd) = &self.0 {
            let _ = sys::write(fd.as_fd(), format!("{what}\n").as_bytes());
        }
    }
}

/// When a measured phase ran, in UTC microseconds, and the client's own CPU time over it.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Window {
    pub start_unix_us: u64,
    pub end_unix_us: u64,
    pub client_cpu_s: f64,
    cpu_at_start_s: f64,
}

impl Window {
    /// The phase starts now: says so, and returns its start.
    pub fn start(phases: &Phases) -> Window {
        let w = Window { start_unix_us: sys::unix_now_us(), cpu_at_start_s: own_cpu_s(), ..Window::default() };
        phases.mark("start");
        w
    }

    /// From the start of `first` to the end of `last`, with `client_cpu_s` spent in
    /// between (a session's slices).
    pub fn spanning(first: Window, last: Window, client_cpu_s: f64) -> Window {
        Window { start_unix_us: first.start_unix_us, end_unix_us: last.end_unix_us, client_cpu_s, cpu_at_start_s: 0.0 }
    }

    /// The phase ends now.
    pub fn end(mut self, phases: &Phases) -> Window {
        self.end_unix_us = sys::unix_now_us();
        self.client_cpu_s = own_cpu_s() - self.cpu_at_start_s;
        phases.mark("end");
        self
    }
}

/// This process's CPU time so far (user + system), in seconds.
fn own_cpu_s() -> f64 {
    sys::process_cpu_ns(0).map_or(0.0, |ns| ns as f64 / 1e9)
}

impl ClientConfig {
    pub fn new(server: SocketAddr, connections: usize, requests: u64, size: usize) -> Self {
        ClientConfig {
            server,
            connections,
            requests,
            size,
            timeout: Duration::from_secs(10),
            label: default_label(),
            source_ips: Vec::new(),
            first_thread: 0,
            processes: 1,
            min_run: None,
            open: None,
            engine: Engine::Threads,
            threads: 0,
            interval: None,
            progress: None,
            phases: Phases::default(),
            workload: Workload::Rr,
            window: workload::DEFAULT_WINDOW_BYTES,
        }
    }

    /// How each connection's load ends in a one-shot run: an open loop, or rounds.
    pub fn stop(&self) -> Stop {
        match self.open {
            Some(o) => Stop::Open(o),
            None => Stop::Rounds { min_run: self.min_run },
        }
    }

    /// This configuration as a run that stops as `stop` says (what its summary reports).
    pub fn with_stop(&self, stop: Stop) -> ClientConfig {
        let (open, min_run) = match stop {
            Stop::Open(o) => (Some(o), None),
            Stop::Rounds { min_run } => (None, min_run),
            Stop::After(_) => (None, None),
        };
        ClientConfig { open, min_run, ..self.clone() }
    }

    /// The event engine's thread count, resolved.
    pub fn engine_threads(&self) -> usize {
        let n = if self.threads == 0 { sys::allowed_cpus() } else { self.threads };
        n.min(self.connections.max(1))
    }

    /// The source address for run-wide connection number `thread`: spread by that number,
    /// so shards in several processes together use every source address evenly.
    pub fn source_for(&self, thread: usize) -> Option<IpAddr> {
        (!self.source_ips.is_empty()).then(|| self.source_ips[thread % self.source_ips.len()])
    }
}

/// This host's name, the default `--label`.
pub fn default_label() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "client".into())
}

/// Everything a run produced.
pub struct ClientReport {
    pub summary: ClientSummary,
    pub rows: Vec<ThreadRow>,
}

impl ClientReport {
    /// Whether every connection completed every request.
    pub fn ok(&self) -> bool {
        self.summary.errors == 0 && self.summary.requests == self.summary.requests_expected
    }
}

/// Why a run could not start at all (as opposed to connections that failed, which are data).
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(
        "--connections {connections} needs about {needed} open files per process but the limit is {hard}; \
         raise the hard limit (ulimit -Hn, LimitNOFILE=) or split the load with --processes"
    )]
    TooManyFiles { connections: usize, needed: u64, hard: u64 },
    #[error(
        "--connections {connections} exceeds the {ports} ephemeral ports available per source address \
         (net.ipv4.ip_local_port_range) with {sources} source address(es); add loopback sources with \
         --source-ips 127.0.0.2,127.0.0.3 or widen the port range"
    )]
    TooFewPorts { connections: usize, ports: u64, sources: usize },
    #[error(
        "--connections {connections} puts {per_process} threads in one process, but vm.max_map_count \
         ({max_map_count}) allows about {max_threads} (each thread maps a stack, an alternate signal stack \
         and their guard pages); use --processes {suggest} or raise vm.max_map_count"
    )]
    TooManyThreads { connections: usize, per_process: usize, max_threads: usize, max_map_count: usize, suggest: usize },
    #[error("{0}")]
    Refused(String),
    #[error("{0}")]
    Io(#[from] io::Error),
}

impl ClientError {
    /// The arguments ask for more than this machine allows: the user must change them.
    pub fn is_usage(&self) -> bool {
        !matches!(self, ClientError::Io(_))
    }
}

/// Memory mappings each client thread costs: its stack and guard page, and the alternate
/// signal stack and guard page the standard library gives every thread.
const MAPS_PER_THREAD: usize = 4;
/// Mappings kept for everything else in the process (code, heap, libraries).
const SPARE_MAPS: usize = 4096;

fn max_map_count() -> usize {
    std::fs::read_to_string("/proc/sys/vm/max_map_count").ok().and_then(|s| s.trim().parse().ok()).unwrap_or(65_530)
}

/// Checks the run fits this process's limits, raising the open-file soft limit first, and
/// that its engine can run its workload.
pub fn check_limits(cfg: &ClientConfig) -> Result<(), ClientError> {
    if let (Engine::Threads, Some(why)) = (cfg.engine, cfg.workload.refused_by_threads_engine()) {
        return Err(ClientError::Refused(why));
    }
    if cfg.workload == Workload::Stream && cfg.open.is_some() {
        return Err(ClientError::Refused("--workload stream keeps its window full: it takes no --rate".into()));
    }
    let (soft, hard) = sys::raise_nofile_limit()?;
    let per_process = cfg.connections.div_ceil(cfg.processes.max(1));
    // The idle crowd is held by the process beside its share of the active connections.
    let needed = (per_process + cfg.workload.idle()) as u64 + SPARE_FDS;
    if needed > soft {
        return Err(ClientError::TooManyFiles { connections: cfg.connections, needed, hard: hard.max(soft) });
    }
    let maps = max_map_count();
    let max_threads = maps.saturating_sub(SPARE_MAPS) / MAPS_PER_THREAD;
    // Only the blocking engine has a thread per connection.
    if cfg.engine == Engine::Threads && per_process > max_threads {
        return Err(ClientError::TooManyThreads {
            connections: cfg.connections,
            per_process,
            max_threads,
            max_map_count: maps,
            suggest: cfg.connections.div_ceil(max_threads.max(1)),
        });
    }
    if cfg.server.ip().is_loopback() || cfg.server.ip().is_unspecified() {
        let ports = ephemeral_ports();
        let sources = cfg.source_ips.len().max(1);
        let open = cfg.connections + cfg.workload.idle();
        if open as u64 > ports * sources as u64 {
            return Err(ClientError::TooFewPorts { connections: open, ports, sources });
        }
    }
    Ok(())
}

/// The size of the local port range each source address can use toward one destination.
pub fn ephemeral_ports() -> u64 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| {
            let mut it = s.split_whitespace().map(|x| x.parse::<u64>().ok());
            let (lo, hi) = (it.next()??, it.next()??);
            Some(hi.saturating_sub(lo) + 1)
        })
        .unwrap_or(28_232)
}

/// Runs the load: connects everything, opens the gate, verifies every echo. `Err` only
/// when the run cannot start; failed connections are reported in the rows.
pub fn run(cfg: &ClientConfig) -> Result<ClientReport, ClientError> {
    if cfg.processes > 1 {
        return shard::run(cfg);
    }
    run_here(cfg, || {})
}

/// Connects every connection of `cfg` with its engine; the session drives them.
pub(crate) fn connect_engine(cfg: &ClientConfig) -> Result<Box<dyn session::Connected>, ClientError> {
    Ok(match cfg.engine {
        Engine::Threads => Box::new(blocking::Connections::connect(cfg)?),
        Engine::Epoll => Box::new(event::Connections::connect(cfg)?),
    })
}

/// Runs the load in this process with its engine, calling `before_start` once every
/// connection is made and before the start gate opens.
pub fn run_here(cfg: &ClientConfig, before_start: impl FnOnce()) -> Result<ClientReport, ClientError> {
    let stop = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|s| {
        if let (Some(p), Some(every)) = (&cfg.progress, cfg.interval) {
            let stop = &stop;
            s.spawn(move || p.report_every(every, stop));
        }
        let mut before_start = Some(before_start);
        let r = session::Session::connect(cfg).and_then(|mut s| {
            let run = s.slice(cfg.stop(), || {
                if let Some(f) = before_start.take() {
                    f()
                }
            })?;
            // The idle crowd echoes as the session closes: its rows join the run's.
            Ok(session::with_idle(run, s.close()))
        });
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        r
    })
}

/// One connection's outcome, from any engine.
pub struct ConnOutcome {
    pub row: ThreadRow,
    /// Requests it was to complete.
    pub expected: u64,
    /// Open loop: its sends inside the measured window.
    pub sent_in_window: u64,
    /// Time to connect (before the start gate).
    pub connect_s: f64,
    pub connected: bool,
    /// The seed's Total Duration of this connection: the time for one round.
    pub round_s: f64,
}

impl ConnOutcome {
    /// A connection that failed before any request, with `error` in its row.
    pub fn failed(cfg: &ClientConfig, thread: usize, error: String) -> ConnOutcome {
        ConnOutcome {
            row: ThreadRow {
                thread,
                label: cfg.label.clone(),
                requests: 0,
                bytes: 0,
                total_duration_s: 0.0,
                avg_response_s: 0.0,
                p50_response_s: 0.0,
                p99_response_s: 0.0,
                max_response_s: 0.0,
                errors: 1,
                error,
                rounds: 1,
            },
            expected: if cfg.open.is_some() { 1 } else { cfg.requests },
            sent_in_window: 0,
            connect_s: 0.0,
            connected: false,
            round_s: 0.0,
        }
    }

    /// A connection that ran, from its load's tally.
    pub fn of(cfg: &ClientConfig, load: &load::ConnLoad, connect_s: f64) -> ConnOutcome {
        ConnOutcome {
            row: load.row(cfg),
            expected: load.expected(),
            sent_in_window: load.sent_in_window,
            connect_s,
            connected: true,
            round_s: load.round_duration_s(),
        }
    }
}
