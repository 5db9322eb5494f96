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
//! - [`blocking`]: one OS thread per connection with blocking sockets (the seed's model);
//! - [`shard`]: the same load spread over several processes (each with its own limits),
//!   started together and merged;
//! - [`payload`]: what is sent, and how an echo is checked.

pub mod blocking;
pub mod payload;
pub mod shard;

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::time::Duration;

use hdrhistogram::Histogram;
use ringbench_backends::sys;

use crate::results::{decode_histogram, encode_histogram, ClientSummary, ThreadRow, LATENCY_MODEL};

pub use payload::fill_payload;

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
    /// this long (`None`: one round).
    pub min_run: Option<Duration>,
    /// Where to say when the measured phase starts and ends.
    pub phases: Phases,
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

/// When a measured phase ran, in UTC microseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Window {
    pub start_unix_us: u64,
    pub end_unix_us: u64,
}

impl Window {
    /// The phase starts now: says so, and returns its start.
    pub fn start(phases: &Phases) -> Window {
        let w = Window { start_unix_us: sys::unix_now_us(), end_unix_us: 0 };
        phases.mark("start");
        w
    }

    /// The phase ends now.
    pub fn end(mut self, phases: &Phases) -> Window {
        self.end_unix_us = sys::unix_now_us();
        phases.mark("end");
        self
    }
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
            phases: Phases::default(),
        }
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

/// Checks the run fits this process's limits, raising the open-file soft limit first.
pub fn check_limits(cfg: &ClientConfig) -> Result<(), ClientError> {
    let (soft, hard) = sys::raise_nofile_limit()?;
    let per_process = cfg.connections.div_ceil(cfg.processes.max(1));
    let needed = per_process as u64 + SPARE_FDS;
    if needed > soft {
        return Err(ClientError::TooManyFiles { connections: cfg.connections, needed, hard: hard.max(soft) });
    }
    let maps = max_map_count();
    let max_threads = maps.saturating_sub(SPARE_MAPS) / MAPS_PER_THREAD;
    if per_process > max_threads {
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
        if cfg.connections as u64 > ports * sources as u64 {
            return Err(ClientError::TooFewPorts { connections: cfg.connections, ports, sources });
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
    blocking::run(cfg, || {})
}

/// One connection's outcome, from any engine.
pub struct ConnOutcome {
    pub row: ThreadRow,
    /// Its verified round trips, in nanoseconds.
    pub latencies_ns: Vec<u64>,
    /// Time to connect (before the start gate).
    pub connect_s: f64,
    pub connected: bool,
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
            latencies_ns: Vec::new(),
            connect_s: 0.0,
            connected: false,
        }
    }
}

/// Connection set-up over the connections of a run.
#[derive(Default)]
struct Connects {
    ok: usize,
    sum_s: f64,
    max_s: f64,
}

/// The report of a run in this process from its connections' outcomes.
pub fn summarise(cfg: &ClientConfig, outcomes: Vec<ConnOutcome>, wall_s: f64, window: Window) -> ClientReport {
    let mut hist = new_histogram();
    let mut rows = Vec::with_capacity(outcomes.len());
    let mut connects = Connects::default();
    for o in outcomes {
        for &ns in &o.latencies_ns {
            // Auto-resizing histogram: recording cannot fail for u64 values.
            let _ = hist.record(ns.max(1));
        }
        if o.connected {
            connects.ok += 1;
            connects.sum_s += o.connect_s;
            connects.max_s = connects.max_s.max(o.connect_s);
        }
        rows.push(o.row);
    }
    rows.sort_by_key(|r| r.thread);
    report(cfg, rows, hist, wall_s, connects, window)
}

/// Merges reports of parts of one run (processes or hosts started together) into one,
/// whose measured phase is `window`.
pub fn merge(cfg: &ClientConfig, parts: Vec<ClientReport>, window: Window) -> ClientReport {
    let mut hist = new_histogram();
    let mut rows = Vec::new();
    let mut wall_s = 0.0f64;
    let mut connects = Connects::default();
    for p in parts {
        let s = &p.summary;
        if let Some(h) = decode_histogram(&s.latency_histogram) {
            let _ = hist.add(&h);
        }
        wall_s = wall_s.max(s.wall_s);
        connects.ok += s.connections_ok;
        connects.sum_s += s.connect_mean_s * s.connections_ok as f64;
        connects.max_s = connects.max_s.max(s.connect_max_s);
        rows.extend(p.rows);
    }
    rows.sort_by_key(|r| r.thread);
    report(cfg, rows, hist, wall_s, connects, window)
}

fn new_histogram() -> Histogram<u64> {
    Histogram::<u64>::new(3).expect("3 significant figures is a valid histogram precision")
}

/// The one place that defines every summary figure, for a run in one process and for
/// merged parts alike.
fn report(
    cfg: &ClientConfig,
    rows: Vec<ThreadRow>,
    hist: Histogram<u64>,
    wall_s: f64,
    c: Connects,
    window: Window,
) -> ClientReport {
    let n = rows.len().max(1) as f64;
    let requests: u64 = rows.iter().map(|r| r.requests).sum();
    let us = |ns: u64| ns as f64 / 1e3;
    let summary = ClientSummary {
        label: cfg.label.clone(),
        server: cfg.server.to_string(),
        connections: cfg.connections,
        connections_ok: c.ok,
        connections_failed: cfg.connections.saturating_sub(c.ok),
        requests_per_connection: cfg.requests,
        min_run_s: cfg.min_run.map_or(0.0, |d| d.as_secs_f64()),
        requests_expected: rows.iter().map(|r| r.rounds.max(1) * cfg.requests).sum::<u64>()
            + cfg.connections.saturating_sub(rows.len()) as u64 * cfg.requests,
        size_bytes: cfg.size,
        requests,
        bytes: rows.iter().map(|r| r.bytes).sum(),
        errors: rows.iter().map(|r| r.errors).sum(),
        wall_s,
        throughput_rps: if wall_s > 0.0 { requests as f64 / wall_s } else { 0.0 },
        latency_mean_us: hist.mean() / 1e3,
        latency_p50_us: us(hist.value_at_quantile(0.50)),
        latency_p90_us: us(hist.value_at_quantile(0.90)),
        latency_p99_us: us(hist.value_at_quantile(0.99)),
        latency_p999_us: us(hist.value_at_quantile(0.999)),
        latency_max_us: us(hist.max()),
        avg_total_duration_s: rows.iter().map(|r| r.round_duration_s()).sum::<f64>() / n,
        avg_response_time_s: rows.iter().map(|r| r.avg_response_s).sum::<f64>() / n,
        connect_mean_s: if c.ok > 0 { c.sum_s / c.ok as f64 } else { 0.0 },
        connect_max_s: c.max_s,
        latency_model: LATENCY_MODEL.into(),
        latency_histogram: encode_histogram(&hist),
        measured_start_unix_us: window.start_unix_us,
        measured_end_unix_us: window.end_unix_us,
    };
    ClientReport { summary, rows }
}
