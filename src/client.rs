//! The blocking, threaded load client: the seed's `basic_client`, made to verify every byte.
//!
//! One OS thread per connection, blocking sockets, `TCP_NODELAY`. Every thread connects
//! first; a start gate then releases them all at once, so the measured phase runs at full
//! concurrency. Each request writes `size` bytes of a payload unique to its thread and
//! request number, reads exactly that many back and compares them byte for byte, so crossed,
//! stale, dropped or duplicated bytes are caught. Latency is *closed-loop*: each connection
//! has one request in flight, so it measures round-trip time under this offered load and is
//! not a measure of an open-loop arrival rate.
//!
//! A failure is data: a refused, timed-out or reset connection or a mismatched byte ends
//! that thread's run with an error in its row, and every other thread goes on.

use std::fs::File;
use std::io::{self, BufWriter, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::os::fd::AsFd;
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use ringbench_backends::sys;
use serde::{Deserialize, Serialize};
use socket2::{Domain, Protocol, SockAddr, Socket, Type};

/// The largest `--size` accepted (64 MiB): each thread holds two buffers of this size.
pub const MAX_SIZE_BYTES: usize = 64 * 1024 * 1024;
/// Messages larger than this are sent and received at the same time (poll loop): written
/// whole before reading, they could fill both directions' socket buffers and deadlock
/// against a server that, correctly, stops reading while its echo is not being read.
pub const DUPLEX_ABOVE_BYTES: usize = 64 * 1024;
/// Stack for each client thread: its buffers live on the heap, so a small stack lets
/// thousands of threads fit.
const THREAD_STACK_BYTES: usize = 128 * 1024;
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
        }
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

/// One row of the client CSV: what one thread (one connection) did.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ThreadRow {
    pub thread: usize,
    pub label: String,
    /// Requests completed and verified.
    pub requests: u64,
    /// Bytes echoed back and verified.
    pub bytes: u64,
    /// From the start gate to the thread's last reply (the seed's "Total Duration").
    pub total_duration_s: f64,
    /// Mean round-trip time of its requests (the seed's "Avg Response").
    pub avg_response_s: f64,
    pub p50_response_s: f64,
    pub p99_response_s: f64,
    pub max_response_s: f64,
    /// Errors on this connection (a connection stops at its first error, so 0 or 1).
    pub errors: u64,
    /// The first error's text; empty if none.
    pub error: String,
}

/// The run as a whole: printed on stdout and written with `--json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ClientSummary {
    pub label: String,
    pub server: String,
    pub connections: usize,
    pub connections_ok: usize,
    pub connections_failed: usize,
    pub requests_per_connection: u64,
    pub size_bytes: usize,
    /// Requests completed and verified, over all connections.
    pub requests: u64,
    pub bytes: u64,
    /// Threads whose run ended with an error (failed connects included).
    pub errors: u64,
    /// From the start gate until the last thread finished.
    pub wall_s: f64,
    pub throughput_rps: f64,
    pub latency_mean_us: f64,
    pub latency_p50_us: f64,
    pub latency_p90_us: f64,
    pub latency_p99_us: f64,
    pub latency_p999_us: f64,
    pub latency_max_us: f64,
    /// The seed's AvgTotalDuration: the mean of the threads' total durations.
    pub avg_total_duration_s: f64,
    /// The seed's AvgResponseTime: the mean of the threads' mean round trips.
    pub avg_response_time_s: f64,
    /// Time to establish the connections before the start gate.
    pub connect_mean_s: f64,
    pub connect_max_s: f64,
    pub latency_model: String,
    /// Every round trip in nanoseconds as an HdrHistogram (V2 serialization, base64), so
    /// reports can merge the latencies of several client hosts exactly.
    #[serde(default)]
    pub latency_histogram: String,
}

/// Everything a run produced.
pub struct ClientReport {
    pub summary: ClientSummary,
    pub rows: Vec<ThreadRow>,
    /// All round trips, in nanoseconds, merged over threads.
    pub histogram: Histogram<u64>,
}

impl ClientReport {
    /// Whether every connection completed every request.
    pub fn ok(&self) -> bool {
        self.summary.errors == 0
            && self.summary.requests == self.summary.connections as u64 * self.summary.requests_per_connection
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

/// Fills `buf` with the payload of `request` on `thread`: distinct for every pair, so an
/// echo from another connection or an earlier request never matches.
pub fn fill_payload(buf: &mut [u8], thread: usize, request: u64) {
    let mut state = ((thread as u64) << 32) ^ request ^ 0x9E37_79B9_7F4A_7C15;
    for chunk in buf.chunks_mut(8) {
        // splitmix64: cheap and well mixed.
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        chunk.copy_from_slice(&z.to_le_bytes()[..chunk.len()]);
    }
}

/// A start gate: threads report ready and wait; the main thread opens it for all at once.
///
/// The gate itself is a write-locked `RwLock`: releasing the write lock wakes every waiting
/// reader together. (A condvar would hand its mutex to thousands of threads one at a time,
/// so the last would start hundreds of milliseconds after the first.)
struct Gate {
    ready: Mutex<usize>,
    ready_cv: Condvar,
    door: std::sync::RwLock<()>,
    /// When the gate opened; set before it opens, read lock-free after.
    opened_at: std::sync::OnceLock<Instant>,
}

impl Gate {
    fn arrive_and_wait(&self) -> Instant {
        *self.ready.lock().unwrap_or_else(|p| p.into_inner()) += 1;
        self.ready_cv.notify_one();
        drop(self.door.read().unwrap_or_else(|p| p.into_inner()));
        self.opened_at.get().copied().unwrap_or_else(Instant::now)
    }

    fn wait_for(&self, n: usize) {
        let mut g = self.ready.lock().unwrap_or_else(|p| p.into_inner());
        while *g < n {
            g = self.ready_cv.wait(g).unwrap_or_else(|p| p.into_inner());
        }
    }
}

struct ThreadOutcome {
    row: ThreadRow,
    latencies_ns: Vec<u64>,
    connect_s: f64,
    connected: bool,
}

/// Runs the load: connects every thread, opens the gate, verifies every echo.
/// `Err` only when the run cannot start; failed connections are reported in the rows.
pub fn run(cfg: &ClientConfig) -> Result<ClientReport, ClientError> {
    if cfg.processes > 1 {
        return run_sharded(cfg);
    }
    run_with_start_hook(cfg, || {})
}

/// Like [`run`] in this process, calling `before_start` once every connection is made and
/// before the start gate opens (a child of a sharded run reports ready there and waits).
pub fn run_with_start_hook(cfg: &ClientConfig, before_start: impl FnOnce()) -> Result<ClientReport, ClientError> {
    check_limits(cfg)?;
    let gate = Arc::new(Gate {
        ready: Mutex::new(0),
        ready_cv: Condvar::new(),
        door: std::sync::RwLock::new(()),
        opened_at: std::sync::OnceLock::new(),
    });
    let closed = gate.door.write().unwrap_or_else(|p| p.into_inner());
    let mut handles = Vec::with_capacity(cfg.connections);
    let mut outcomes = Vec::with_capacity(cfg.connections);
    for i in 0..cfg.connections {
        let thread = cfg.first_thread + i;
        let (gate, c) = (Arc::clone(&gate), cfg.clone());
        // Spread by the run-wide thread number, so shards in several processes together
        // use every source address evenly.
        let source = (!c.source_ips.is_empty()).then(|| c.source_ips[thread % c.source_ips.len()]);
        let spawned = std::thread::Builder::new()
            .name(format!("client-{thread}"))
            .stack_size(THREAD_STACK_BYTES)
            .spawn(move || connection_thread(&c, thread, source, &gate));
        match spawned {
            Ok(h) => handles.push((thread, h)),
            Err(e) => outcomes.push(failed_outcome(
                cfg,
                thread,
                format!("could not start thread: {e} (raise ulimit -u / vm.max_map_count, or use --processes)"),
            )),
        }
    }
    gate.wait_for(handles.len());
    before_start();
    let t0 = Instant::now();
    let _ = gate.opened_at.set(t0);
    drop(closed);
    for (thread, h) in handles {
        match h.join() {
            Ok(o) => outcomes.push(o),
            Err(_) => outcomes.push(failed_outcome(cfg, thread, "client thread panicked".into())),
        }
    }
    let wall_s = t0.elapsed().as_secs_f64();
    outcomes.sort_by_key(|o| o.row.thread);
    Ok(summarise(cfg, outcomes, wall_s))
}

/// Splits the connections over `cfg.processes` child processes of this binary, each with
/// its own descriptor limit, starts them all at once, and merges what they report.
fn run_sharded(cfg: &ClientConfig) -> Result<ClientReport, ClientError> {
    use std::io::BufRead;
    use std::process::{Command, Stdio};
    check_limits(cfg)?;
    let exe = std::env::current_exe()?;
    let dir = std::env::temp_dir().join(format!("ringbench-client-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let n = cfg.processes.min(cfg.connections).max(1);
    let mut children = Vec::with_capacity(n);
    let mut first = cfg.first_thread;
    for i in 0..n {
        let share = cfg.connections / n + usize::from(i < cfg.connections % n);
        let mut cmd = Command::new(&exe);
        cmd.args(["client", "--server", &cfg.server.to_string()])
            .args(["--connections", &share.to_string(), "--requests", &cfg.requests.to_string()])
            .args(["--size", &cfg.size.to_string(), "--timeout", &cfg.timeout.as_secs_f64().to_string()])
            .args(["--label", &cfg.label, "--first-thread", &first.to_string(), "--shard-child"])
            .arg("--out")
            .arg(dir.join(format!("{i}.csv")))
            .arg("--json")
            .arg(dir.join(format!("{i}.json")))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        if !cfg.source_ips.is_empty() {
            let ips: Vec<String> = cfg.source_ips.iter().map(|ip| ip.to_string()).collect();
            cmd.args(["--source-ips", &ips.join(",")]);
        }
        children.push(cmd.spawn()?);
        first += share;
    }
    // Every child connects, says "ready", and waits for "go": the measured phase starts
    // together across processes, as it does across threads.
    for c in &mut children {
        if let Some(out) = c.stdout.take() {
            let mut line = String::new();
            let _ = std::io::BufReader::new(out).read_line(&mut line);
        }
    }
    for c in &mut children {
        if let Some(mut stdin) = c.stdin.take() {
            let _ = stdin.write_all(b"go\n");
        }
    }
    let mut parts = Vec::with_capacity(n);
    for (i, mut c) in children.into_iter().enumerate() {
        let status = c.wait()?;
        let rows = read_rows_csv(&dir.join(format!("{i}.csv")));
        let summary: Option<ClientSummary> =
            std::fs::read_to_string(dir.join(format!("{i}.json"))).ok().and_then(|s| serde_json::from_str(&s).ok());
        match (rows, summary) {
            (Ok(rows), Some(summary)) => parts.push((summary, rows)),
            _ => {
                // The whole shard is lost: count each of its connections as failed.
                let share = cfg.connections / n + usize::from(i < cfg.connections % n);
                let start = cfg.first_thread
                    + (0..i).map(|j| cfg.connections / n + usize::from(j < cfg.connections % n)).sum::<usize>();
                let rows = (start..start + share)
                    .map(|t| failed_outcome(cfg, t, format!("client process {i} failed ({status})")).row)
                    .collect();
                parts.push((empty_summary(cfg, share), rows));
            }
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(merge(cfg, parts))
}

fn empty_summary(cfg: &ClientConfig, connections: usize) -> ClientSummary {
    let mut r = summarise(&ClientConfig { connections, ..cfg.clone() }, Vec::new(), 0.0);
    r.summary.connections_failed = connections;
    r.summary
}

/// Merges shard reports (same run, simultaneous start) into one.
fn merge(cfg: &ClientConfig, parts: Vec<(ClientSummary, Vec<ThreadRow>)>) -> ClientReport {
    let mut hist = Histogram::<u64>::new(3).expect("3 significant figures is a valid histogram precision");
    let mut rows = Vec::new();
    let mut wall_s = 0.0f64;
    let mut connects = Connects::default();
    for (s, r) in parts {
        if let Some(h) = decode_histogram(&s.latency_histogram) {
            let _ = hist.add(&h);
        }
        wall_s = wall_s.max(s.wall_s);
        connects.ok += s.connections_ok;
        connects.sum_s += s.connect_mean_s * s.connections_ok as f64;
        connects.max_s = connects.max_s.max(s.connect_max_s);
        rows.extend(r);
    }
    rows.sort_by_key(|r| r.thread);
    report(cfg, rows, hist, wall_s, connects)
}

/// Connection set-up over the threads of a run.
#[derive(Default)]
struct Connects {
    ok: usize,
    sum_s: f64,
    max_s: f64,
}

/// The report of a run from its rows and merged latencies: one place that defines every
/// summary figure, for a single process and for merged shards alike.
fn report(cfg: &ClientConfig, rows: Vec<ThreadRow>, hist: Histogram<u64>, wall_s: f64, c: Connects) -> ClientReport {
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
        avg_total_duration_s: rows.iter().map(|r| r.total_duration_s).sum::<f64>() / n,
        avg_response_time_s: rows.iter().map(|r| r.avg_response_s).sum::<f64>() / n,
        connect_mean_s: if c.ok > 0 { c.sum_s / c.ok as f64 } else { 0.0 },
        connect_max_s: c.max_s,
        latency_model: LATENCY_MODEL.into(),
        latency_histogram: encode_histogram(&hist),
    };
    ClientReport { summary, rows, histogram: hist }
}

fn failed_outcome(cfg: &ClientConfig, thread: usize, error: String) -> ThreadOutcome {
    ThreadOutcome {
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
        },
        latencies_ns: Vec::new(),
        connect_s: 0.0,
        connected: false,
    }
}

fn connect(cfg: &ClientConfig, source: Option<IpAddr>) -> io::Result<TcpStream> {
    let sock = Socket::new(Domain::for_address(cfg.server), Type::STREAM, Some(Protocol::TCP))?;
    if let Some(ip) = source {
        // Let the kernel pick the port even though the address is fixed, so each source
        // address gets its own range of ephemeral ports.
        sys::setsockopt_int(sock.as_fd(), libc::IPPROTO_IP, libc::IP_BIND_ADDRESS_NO_PORT, 1)?;
        sock.bind(&SockAddr::from(SocketAddr::new(ip, 0)))?;
    }
    sock.connect_timeout(&SockAddr::from(cfg.server), cfg.timeout)?;
    let stream = TcpStream::from(sock);
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(cfg.timeout))?;
    stream.set_write_timeout(Some(cfg.timeout))?;
    Ok(stream)
}

fn connection_thread(cfg: &ClientConfig, thread: usize, source: Option<IpAddr>, gate: &Gate) -> ThreadOutcome {
    let c0 = Instant::now();
    let stream = connect(cfg, source);
    let connect_s = c0.elapsed().as_secs_f64();
    // Every thread reaches the gate, connected or not, so the main thread can count them.
    let t0 = gate.arrive_and_wait();
    let mut stream = match stream {
        Ok(s) => s,
        Err(e) => {
            let mut o =
                failed_outcome(cfg, thread, format!("connect to {}: {}", cfg.server, describe(&e, cfg.timeout)));
            o.connect_s = connect_s;
            return o;
        }
    };
    let mut latencies_ns = Vec::with_capacity(cfg.requests as usize);
    let mut sent = vec![0u8; cfg.size];
    let mut got = vec![0u8; cfg.size];
    let mut error = String::new();
    let duplex = cfg.size > DUPLEX_ABOVE_BYTES;
    if duplex {
        if let Err(e) = stream.set_nonblocking(true) {
            error = format!("setting non-blocking mode: {e}");
        }
    }
    for r in 0..cfg.requests {
        if !error.is_empty() {
            break;
        }
        fill_payload(&mut sent, thread, r);
        let t = Instant::now();
        let res = if duplex {
            exchange_duplex(&stream, &sent, &mut got, cfg.timeout)
        } else {
            exchange_blocking(&mut stream, &sent, &mut got, cfg.timeout)
        };
        let elapsed_ns = t.elapsed().as_nanos() as u64;
        if let Err(e) = res {
            error = format!("request {r}: {e}");
        } else if let Some(at) = first_difference(&sent, &got) {
            error = format!(
                "request {r}: echo mismatch at byte {at} of {} (sent {:#04x}, got {:#04x})",
                cfg.size, sent[at], got[at]
            );
        } else {
            latencies_ns.push(elapsed_ns);
        }
    }
    let total_duration_s = t0.elapsed().as_secs_f64();
    let requests = latencies_ns.len() as u64;
    let mut sorted = latencies_ns.clone();
    sorted.sort_unstable();
    let secs = |ns: u64| ns as f64 / 1e9;
    let mean = if sorted.is_empty() { 0.0 } else { secs(sorted.iter().sum::<u64>()) / sorted.len() as f64 };
    ThreadOutcome {
        row: ThreadRow {
            thread,
            label: cfg.label.clone(),
            requests,
            bytes: requests * cfg.size as u64,
            total_duration_s,
            avg_response_s: mean,
            p50_response_s: secs(nearest_rank(&sorted, 0.50)),
            p99_response_s: secs(nearest_rank(&sorted, 0.99)),
            max_response_s: secs(sorted.last().copied().unwrap_or(0)),
            errors: u64::from(!error.is_empty()),
            error,
        },
        latencies_ns,
        connect_s,
        connected: true,
    }
}

/// The value at quantile `q` of sorted samples, by nearest rank; 0 when empty.
pub fn nearest_rank(sorted: &[u64], q: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = (q * sorted.len() as f64).ceil().max(1.0) as usize;
    sorted[rank.min(sorted.len()) - 1]
}

fn first_difference(a: &[u8], b: &[u8]) -> Option<usize> {
    if a == b {
        return None;
    }
    a.iter().zip(b).position(|(x, y)| x != y).or(Some(a.len().min(b.len())))
}

fn describe(e: &io::Error, timeout: Duration) -> String {
    match e.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => {
            format!("timed out after {:.1} s", timeout.as_secs_f64())
        }
        _ => e.to_string(),
    }
}

/// Write the whole request, then read the whole reply, with blocking calls.
fn exchange_blocking(stream: &mut TcpStream, sent: &[u8], got: &mut [u8], timeout: Duration) -> Result<(), String> {
    stream.write_all(sent).map_err(|e| format!("write: {}", describe(&e, timeout)))?;
    let mut have = 0;
    while have < got.len() {
        match stream.read(&mut got[have..]) {
            Ok(0) => return Err(format!("server closed the connection after {have} of {} reply bytes", got.len())),
            Ok(n) => have += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(format!("read: {}", describe(&e, timeout))),
        }
    }
    Ok(())
}

/// Send and receive at the same time on a non-blocking socket, waiting with poll.
fn exchange_duplex(stream: &TcpStream, sent: &[u8], got: &mut [u8], timeout: Duration) -> Result<(), String> {
    let (mut w, mut r) = (0usize, 0usize);
    let timeout_ms = timeout.as_millis().min(i32::MAX as u128) as i32;
    let mut s = stream;
    while r < got.len() {
        let want = libc::POLLIN | if w < sent.len() { libc::POLLOUT } else { 0 };
        let rev = sys::poll_one(stream.as_fd(), want, timeout_ms).map_err(|e| format!("poll: {e}"))?;
        if rev == 0 {
            return Err(format!(
                "timed out after {:.1} s with {w} of {} bytes sent and {r} received",
                timeout.as_secs_f64(),
                sent.len()
            ));
        }
        if w < sent.len() && rev & (libc::POLLOUT | libc::POLLERR | libc::POLLHUP) != 0 {
            match s.write(&sent[w..]) {
                Ok(n) => w += n,
                Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted) => {}
                Err(e) => return Err(format!("write: {e}")),
            }
        }
        if rev & (libc::POLLIN | libc::POLLERR | libc::POLLHUP) != 0 {
            match s.read(&mut got[r..]) {
                Ok(0) => return Err(format!("server closed the connection after {r} of {} reply bytes", got.len())),
                Ok(n) => r += n,
                Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted) => {}
                Err(e) => return Err(format!("read: {e}")),
            }
        }
    }
    Ok(())
}

fn summarise(cfg: &ClientConfig, outcomes: Vec<ThreadOutcome>, wall_s: f64) -> ClientReport {
    let mut hist = Histogram::<u64>::new(3).expect("3 significant figures is a valid histogram precision");
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
    report(cfg, rows, hist, wall_s, connects)
}

/// A histogram as base64 of its V2 serialization (empty if it cannot be serialized).
pub fn encode_histogram(h: &Histogram<u64>) -> String {
    use base64::Engine;
    use hdrhistogram::serialization::Serializer;
    let mut buf = Vec::new();
    match hdrhistogram::serialization::V2Serializer::new().serialize(h, &mut buf) {
        Ok(_) => base64::engine::general_purpose::STANDARD.encode(buf),
        Err(_) => String::new(),
    }
}

/// The inverse of [`encode_histogram`].
pub fn decode_histogram(s: &str) -> Option<Histogram<u64>> {
    use base64::Engine;
    let bytes = base64::engine::general_purpose::STANDARD.decode(s).ok()?;
    hdrhistogram::serialization::Deserializer::new().deserialize(&mut bytes.as_slice()).ok()
}

/// How to read the latency figures; printed with them.
pub const LATENCY_MODEL: &str =
    "closed-loop: one request in flight per connection; each latency is one full round trip";

/// Writes the per-thread CSV.
pub fn write_rows_csv(path: &Path, rows: &[ThreadRow]) -> io::Result<()> {
    let mut w = csv::Writer::from_writer(BufWriter::new(File::create(path)?));
    for r in rows {
        w.serialize(r).map_err(io::Error::other)?;
    }
    w.flush()
}

/// Reads a per-thread CSV back.
pub fn read_rows_csv(path: &Path) -> io::Result<Vec<ThreadRow>> {
    let mut r = csv::Reader::from_path(path).map_err(io::Error::other)?;
    r.deserialize().map(|row| row.map_err(io::Error::other)).collect()
}

impl std::fmt::Display for ClientSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "ringbench client summary ({})", self.label)?;
        writeln!(f, "  server             {}", self.server)?;
        writeln!(
            f,
            "  connections        {} ok, {} failed of {}",
            self.connections_ok, self.connections_failed, self.connections
        )?;
        writeln!(
            f,
            "  requests           {} verified ({} per connection x {} bytes), {} bytes, {} errors",
            self.requests, self.requests_per_connection, self.size_bytes, self.bytes, self.errors
        )?;
        writeln!(f, "  wall               {:.3} s   throughput {:.0} req/s", self.wall_s, self.throughput_rps)?;
        writeln!(
            f,
            "  latency (us)       mean {:.1}  p50 {:.1}  p90 {:.1}  p99 {:.1}  p99.9 {:.1}  max {:.1}",
            self.latency_mean_us,
            self.latency_p50_us,
            self.latency_p90_us,
            self.latency_p99_us,
            self.latency_p999_us,
            self.latency_max_us
        )?;
        writeln!(f, "  latency model      {}", self.latency_model)?;
        writeln!(f, "  AvgTotalDuration   {:.6} s", self.avg_total_duration_s)?;
        writeln!(f, "  AvgResponseTime    {:.6} s", self.avg_response_time_s)?;
        write!(f, "  connect            mean {:.6} s, max {:.6} s", self.connect_mean_s, self.connect_max_s)
    }
}
