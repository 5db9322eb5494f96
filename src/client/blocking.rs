//! The blocking engine: one OS thread per connection, blocking sockets, `TCP_NODELAY` —
//! the seed's client. Latency is closed-loop: each connection has one request in flight,
//! so it measures round trips under this offered load, not an open-loop arrival rate.

use std::io::{self, Read, Write};
use std::net::{IpAddr, TcpStream};
use std::os::fd::AsFd;
use std::sync::{Arc, Condvar, Mutex, OnceLock, RwLock};
use std::time::{Duration, Instant};

use ringbench_backends::sys;
use socket2::{Domain, Protocol, SockAddr, Socket, Type};

use super::payload::{fill_payload, first_difference, mismatch, nearest_rank};
use super::{check_limits, summarise, ClientConfig, ClientError, ClientReport, ConnOutcome, Window};
use crate::results::ThreadRow;

/// Messages larger than this are sent and received at the same time (poll loop): written
/// whole before reading, they could fill both directions' socket buffers and deadlock
/// against a server that, correctly, stops reading while its echo is not being read.
pub const DUPLEX_ABOVE_BYTES: usize = 64 * 1024;
/// Stack for each client thread: its buffers live on the heap, so a small stack lets
/// thousands of threads fit.
const THREAD_STACK_BYTES: usize = 128 * 1024;

/// A start gate: threads report ready and wait; the main thread opens it for all at once.
///
/// The gate itself is a write-locked `RwLock`: releasing the write lock wakes every waiting
/// reader together. (A condvar would hand its mutex to thousands of threads one at a time,
/// so the last would start hundreds of milliseconds after the first.)
struct Gate {
    ready: Mutex<usize>,
    ready_cv: Condvar,
    door: RwLock<()>,
    /// When the gate opened; set before it opens, read lock-free after.
    opened_at: OnceLock<Instant>,
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

/// Runs the load in this process, calling `before_start` once every connection is made
/// and before the start gate opens (a shard reports ready there and waits for "go").
pub fn run(cfg: &ClientConfig, before_start: impl FnOnce()) -> Result<ClientReport, ClientError> {
    check_limits(cfg)?;
    let gate = Arc::new(Gate {
        ready: Mutex::new(0),
        ready_cv: Condvar::new(),
        door: RwLock::new(()),
        opened_at: OnceLock::new(),
    });
    let closed = gate.door.write().unwrap_or_else(|p| p.into_inner());
    let mut handles = Vec::with_capacity(cfg.connections);
    let mut outcomes = Vec::with_capacity(cfg.connections);
    for i in 0..cfg.connections {
        let thread = cfg.first_thread + i;
        let (gate, c) = (Arc::clone(&gate), cfg.clone());
        let source = c.source_for(thread);
        let spawned = std::thread::Builder::new()
            .name(format!("client-{thread}"))
            .stack_size(THREAD_STACK_BYTES)
            .spawn(move || connection_thread(&c, thread, source, &gate));
        match spawned {
            Ok(h) => handles.push((thread, h)),
            Err(e) => outcomes.push(ConnOutcome::failed(
                cfg,
                thread,
                format!("could not start thread: {e} (raise ulimit -u / vm.max_map_count, or use --processes)"),
            )),
        }
    }
    gate.wait_for(handles.len());
    before_start();
    // Marked before the gate opens: once thousands of threads are released, this thread
    // may not run again until most of the work is done.
    let window = Window::start(&cfg.phases);
    let t0 = Instant::now();
    let _ = gate.opened_at.set(t0);
    drop(closed);
    for (thread, h) in handles {
        match h.join() {
            Ok(o) => outcomes.push(o),
            Err(_) => outcomes.push(ConnOutcome::failed(cfg, thread, "client thread panicked".into())),
        }
    }
    let wall_s = t0.elapsed().as_secs_f64();
    Ok(summarise(cfg, outcomes, wall_s, window.end(&cfg.phases)))
}

/// A connected stream: from `source` if given, `TCP_NODELAY`, every operation bounded by
/// the timeout.
pub fn connect(cfg: &ClientConfig, source: Option<IpAddr>) -> io::Result<TcpStream> {
    let sock = Socket::new(Domain::for_address(cfg.server), Type::STREAM, Some(Protocol::TCP))?;
    if let Some(ip) = source {
        // Let the kernel pick the port even though the address is fixed, so each source
        // address gets its own range of ephemeral ports.
        sys::setsockopt_int(sock.as_fd(), libc::IPPROTO_IP, libc::IP_BIND_ADDRESS_NO_PORT, 1)?;
        sock.bind(&SockAddr::from(std::net::SocketAddr::new(ip, 0)))?;
    }
    sock.connect_timeout(&SockAddr::from(cfg.server), cfg.timeout)?;
    let stream = TcpStream::from(sock);
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(cfg.timeout))?;
    stream.set_write_timeout(Some(cfg.timeout))?;
    Ok(stream)
}

fn connection_thread(cfg: &ClientConfig, thread: usize, source: Option<IpAddr>, gate: &Gate) -> ConnOutcome {
    let c0 = Instant::now();
    let stream = connect(cfg, source);
    let connect_s = c0.elapsed().as_secs_f64();
    // Every thread reaches the gate, connected or not, so the main thread can count them.
    let t0 = gate.arrive_and_wait();
    let stream = match stream {
        Ok(s) => s,
        Err(e) => {
            let mut o =
                ConnOutcome::failed(cfg, thread, format!("connect to {}: {}", cfg.server, describe(&e, cfg.timeout)));
            o.connect_s = connect_s;
            return o;
        }
    };
    let (latencies_ns, rounds, error) = requests(cfg, thread, stream, t0);
    let total_duration_s = t0.elapsed().as_secs_f64();
    let mut row = row(cfg, thread, &latencies_ns, total_duration_s, error);
    row.rounds = rounds;
    ConnOutcome { row, latencies_ns, connect_s, connected: true }
}

/// Sends every request and verifies its echo, round after round until `--min-run-s` has
/// passed since `t0` (one round without it); returns the round trips, the rounds begun,
/// and the first error.
fn requests(cfg: &ClientConfig, thread: usize, mut stream: TcpStream, t0: Instant) -> (Vec<u64>, u64, String) {
    let mut latencies_ns = Vec::with_capacity(cfg.requests as usize);
    let mut sent = vec![0u8; cfg.size];
    let mut got = vec![0u8; cfg.size];
    let duplex = cfg.size > DUPLEX_ABOVE_BYTES;
    if duplex {
        if let Err(e) = stream.set_nonblocking(true) {
            return (latencies_ns, 1, format!("setting non-blocking mode: {e}"));
        }
    }
    let mut rounds = 0;
    loop {
        rounds += 1;
        if let Err(e) = round(cfg, thread, &mut stream, rounds, &mut latencies_ns, (&mut sent, &mut got)) {
            return (latencies_ns, rounds, e);
        }
        if cfg.min_run.is_none_or(|d| t0.elapsed() >= d) {
            return (latencies_ns, rounds, String::new());
        }
    }
}

/// One round of `--requests` requests; request numbers go on across rounds, so every
/// payload stays unique.
fn round(
    cfg: &ClientConfig,
    thread: usize,
    stream: &mut TcpStream,
    round: u64,
    latencies_ns: &mut Vec<u64>,
    (sent, got): (&mut [u8], &mut [u8]),
) -> Result<(), String> {
    let duplex = cfg.size > DUPLEX_ABOVE_BYTES;
    for r in (round - 1) * cfg.requests..round * cfg.requests {
        fill_payload(sent, thread, r);
        let t = Instant::now();
        let res = if duplex {
            exchange_duplex(stream, sent, got, cfg.timeout)
        } else {
            exchange_blocking(stream, sent, got, cfg.timeout)
        };
        let elapsed_ns = t.elapsed().as_nanos() as u64;
        if let Err(e) = res {
            return Err(format!("request {r}: {e}"));
        }
        if let Some(at) = first_difference(sent, got) {
            return Err(mismatch(r, sent, got, at));
        }
        latencies_ns.push(elapsed_ns);
    }
    Ok(())
}

/// One connection's CSV row from its round trips.
pub fn row(cfg: &ClientConfig, thread: usize, latencies_ns: &[u64], total_duration_s: f64, error: String) -> ThreadRow {
    let requests = latencies_ns.len() as u64;
    let mut sorted = latencies_ns.to_vec();
    sorted.sort_unstable();
    let secs = |ns: u64| ns as f64 / 1e9;
    let mean = if sorted.is_empty() { 0.0 } else { secs(sorted.iter().sum::<u64>()) / sorted.len() as f64 };
    ThreadRow {
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
        rounds: 1,
    }
}

pub fn describe(e: &io::Error, timeout: Duration) -> String {
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
