//! The blocking engine: one OS thread per connection, blocking sockets, `TCP_NODELAY` —
//! the seed's client, and the default. With hundreds of threads on one CPU, a thread's
//! tail latency is mostly the client's own scheduler: the event engine (`--engine
//! epoll`) is the one for open-loop schedules and tail latency.

use std::io::{self, Read, Write};
use std::net::{IpAddr, TcpStream};
use std::os::fd::AsFd;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use ringbench_backends::sys;
use socket2::{Domain, Protocol, SockAddr, Socket, Type};

use super::latency::RunLatency;
use super::load::{ConnLoad, Next, Stop};
use super::payload::{fill_payload, first_difference, mismatch};
use super::session::{Board, Connected, SliceOut, Tally};
use super::{check_limits, ClientConfig, ClientError, ConnOutcome};
use crate::workload::Workload;

/// Messages larger than this are sent and received at the same time (poll loop): written
/// whole before reading, they could fill both directions' socket buffers and deadlock
/// against a server that, correctly, stops reading while its echo is not being read.
pub const DUPLEX_ABOVE_BYTES: usize = 64 * 1024;
/// Stack for each client thread: its buffers live on the heap, so a small stack lets
/// thousands of threads fit.
const THREAD_STACK_BYTES: usize = 128 * 1024;
/// Run histograms shared by the threads (a full-precision histogram per thread would cost
/// half a MiB each); each thread hands over its samples in batches.
const SHARDS: usize = 16;
const BATCH: usize = 256;

/// The run histograms, in shards.
pub struct Shards(Vec<Mutex<RunLatency>>);

/// One sample: service time, and (open loop) lateness and corrected time.
type Sample = (u64, Option<(u64, u64)>);

/// A thread's samples on their way to its shard.
struct Batch<'a> {
    shard: &'a Mutex<RunLatency>,
    samples: Vec<Sample>,
    /// crr: each connection's connect, in ns.
    connects: Vec<u64>,
}

impl<'a> Batch<'a> {
    fn new(shard: &'a Mutex<RunLatency>) -> Batch<'a> {
        Batch { shard, samples: Vec::with_capacity(BATCH), connects: Vec::new() }
    }

    fn flush(&mut self) {
        if self.samples.is_empty() && self.connects.is_empty() {
            return;
        }
        let mut run = self.shard.lock().unwrap_or_else(|p| p.into_inner());
        for (service, open) in self.samples.drain(..) {
            run.record(service, open);
        }
        for ns in self.connects.drain(..) {
            run.record_connect(ns);
        }
    }
}

impl super::latency::Sink for Batch<'_> {
    fn record(&mut self, service_ns: u64, open: Option<(u64, u64)>) {
        self.samples.push((service_ns, open));
        if self.samples.len() >= BATCH {
            self.flush();
        }
    }
}

/// The connections of this process, a blocking thread each, between slices.
pub struct Connections {
    cfg: ClientConfig,
    board: Arc<Board<Shards, ConnOutcome>>,
    threads: Vec<(usize, JoinHandle<Tally>)>,
    /// Connections whose thread could not be started.
    unstarted: Vec<Tally>,
    /// The idle crowd (`idle:K`): connected by this thread, no thread of their own (they
    /// do nothing until their one echo at the end).
    idle: Vec<(Tally, Option<TcpStream>)>,
}

impl Connections {
    /// Starts a thread per connection and returns once every one has connected (or
    /// failed to).
    pub fn connect(cfg: &ClientConfig) -> Result<Connections, ClientError> {
        check_limits(cfg)?;
        let board: Arc<Board<Shards, ConnOutcome>> = Arc::new(Board::default());
        let mut threads = Vec::with_capacity(cfg.connections);
        let mut unstarted = Vec::new();
        for i in 0..cfg.connections {
            let thread = cfg.first_thread + i;
            let (board, c) = (Arc::clone(&board), cfg.clone());
            let spawned = std::thread::Builder::new()
                .name(format!("client-{thread}"))
                .stack_size(THREAD_STACK_BYTES)
                .spawn(move || connection_thread(&c, i, &board));
            match spawned {
                Ok(h) => threads.push((thread, h)),
                Err(e) => {
                    let mut t = Tally::new(thread);
                    t.error = Some(format!(
                        "could not start thread: {e} (raise ulimit -u / vm.max_map_count, or use --processes)"
                    ));
                    unstarted.push(t);
                }
            }
        }
        board.wait_connected(threads.len());
        let first_idle = crate::workload::IDLE_FIRST_THREAD + cfg.first_thread;
        let idle = (0..cfg.workload.idle()).map(|i| connect_idle(cfg, first_idle + i)).collect();
        Ok(Connections { cfg: cfg.clone(), board, threads, unstarted, idle })
    }
}

impl Connected for Connections {
    fn slice(&mut self, stop: Stop, before_start: &mut dyn FnMut()) -> std::io::Result<SliceOut> {
        let shards = Shards((0..SHARDS).map(|_| Mutex::new(RunLatency::default())).collect());
        let (run, mut outcomes, window, wall_s) =
            self.board.run_slice(self.threads.len(), stop, shards, &self.cfg, before_start);
        let cfg = self.cfg.with_stop(stop);
        outcomes.extend(self.unstarted.iter().map(|t| t.absent(&cfg)));
        let mut latency = RunLatency::default();
        for s in &run.shared.0 {
            latency.merge(&s.lock().unwrap_or_else(|p| p.into_inner()));
        }
        Ok(SliceOut { outcomes, run: latency, window, wall_s })
    }

    fn close(self: Box<Self>) -> Vec<Tally> {
        self.board.quit();
        let mut tallies = self.unstarted;
        tallies.extend(echo_idle(&self.cfg, self.idle));
        for (thread, h) in self.threads {
            tallies.push(h.join().unwrap_or_else(|_| {
                let mut t = Tally::new(thread);
                t.error = Some("client thread panicked".into());
                t
            }));
        }
        tallies.sort_by_key(|t| t.thread);
        tallies
    }
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

/// Connection `i` of this process: connects, then runs every slice posted on `board`
/// until the session ends, and returns its tally (its stream closes then).
fn connection_thread(cfg: &ClientConfig, i: usize, board: &Board<Shards, ConnOutcome>) -> Tally {
    let thread = cfg.first_thread + i;
    let mut tally = Tally::new(thread);
    let crr = cfg.workload == Workload::Crr;
    // A crr slot keeps no connection: each of its requests opens its own, in the slices.
    let mut stream = if crr {
        tally.connected = true;
        None
    } else {
        let c0 = Instant::now();
        let connected = connect(cfg, cfg.source_for(thread));
        tally.connect_s = c0.elapsed().as_secs_f64();
        match connected {
            Ok(s) => {
                tally.connected = true;
                Some(s)
            }
            Err(e) => {
                tally.error = Some(format!("connect to {}: {}", cfg.server, describe(&e, cfg.timeout)));
                None
            }
        }
    };
    // Every thread says so, connected or not, so the main thread can count them.
    board.connected();
    let mut seen = 0;
    while let Some(run) = board.next(&mut seen) {
        let t0 = run.gate.arrive_and_wait();
        let slice_cfg = cfg.with_stop(run.stop);
        let outcome = match stream.as_mut().filter(|_| tally.usable()) {
            _ if !tally.usable() => tally.absent(&slice_cfg),
            s if s.is_some() || crr => {
                let mut load = ConnLoad::new(&slice_cfg, run.stop, thread, i, cfg.connections, t0);
                let mut batch = Batch::new(&run.shared.0[i % SHARDS]);
                let done = match s {
                    Some(s) => requests(cfg, s, &mut load, &mut batch),
                    None => crr_requests(cfg, &mut load, &mut batch),
                };
                if let Err(e) = done {
                    load.failed(e);
                }
                batch.flush();
                tally.add(&load);
                ConnOutcome::of(&slice_cfg, &load, tally.connect_s)
            }
            _ => tally.absent(&slice_cfg),
        };
        run.deliver(outcome);
    }
    tally
}

/// crr: every request the load asks for on a connection of its own — connect (timed),
/// send, read and verify the echo, close.
fn crr_requests(cfg: &ClientConfig, load: &mut ConnLoad, batch: &mut Batch<'_>) -> Result<(), String> {
    let mut sent = vec![0u8; cfg.size];
    let mut got = vec![0u8; cfg.size];
    let mut next = load.first();
    while let Next::Send { k, at } = next {
        if let Some(wait) = at.and_then(|at| at.checked_duration_since(Instant::now())) {
            std::thread::sleep(wait);
        }
        let c0 = Instant::now();
        let mut stream = connect(cfg, cfg.source_for(load.thread))
            .map_err(|e| format!("request {k}: connect to {}: {}", cfg.server, describe(&e, cfg.timeout)))?;
        batch.connects.push(c0.elapsed().as_nanos() as u64);
        fill_payload(&mut sent, load.thread, k);
        let t = Instant::now();
        load.sent(k, t);
        exchange_blocking(&mut stream, &sent, &mut got, cfg.timeout).map_err(|e| format!("request {k}: {e}"))?;
        if let Some(at) = first_difference(&sent, &got) {
            return Err(mismatch(k, &sent, &got, at));
        }
        load.verified(batch, k, t, Instant::now());
        // Closed here, before the next request opens its own.
        drop(stream);
        next = load.next_after(Some(k));
    }
    Ok(())
}

/// Connects one connection of the idle crowd (numbered `thread`); a failure is its row.
fn connect_idle(cfg: &ClientConfig, thread: usize) -> (Tally, Option<TcpStream>) {
    let mut tally = Tally::new(thread);
    let c0 = Instant::now();
    let stream = match connect(cfg, cfg.source_for(thread)) {
        Ok(s) => {
            tally.connected = true;
            Some(s)
        }
        Err(e) => {
            tally.error = Some(format!("idle connection: connect to {}: {}", cfg.server, describe(&e, cfg.timeout)));
            None
        }
    };
    tally.connect_s = c0.elapsed().as_secs_f64();
    (tally, stream)
}

/// After the last slice: every idle connection sends one request and verifies its echo
/// (one after another: they are idle, not a load), so one the server dropped is a failure.
fn echo_idle(cfg: &ClientConfig, idle: Vec<(Tally, Option<TcpStream>)>) -> Vec<Tally> {
    let one = ClientConfig { requests: 1, ..cfg.with_stop(Stop::Rounds { min_run: None }) };
    let shard = Mutex::new(RunLatency::default());
    idle.into_iter()
        .map(|(mut tally, stream)| {
            if let (Some(mut s), true) = (stream, tally.usable()) {
                let mut load = ConnLoad::new(&one, Stop::Rounds { min_run: None }, tally.thread, 0, 1, Instant::now());
                let mut batch = Batch::new(&shard);
                if let Err(e) = requests(&one, &mut s, &mut load, &mut batch) {
                    load.failed(format!("idle connection: {e}"));
                }
                tally.add(&load);
            }
            tally
        })
        .collect()
}

/// Sends every request the load asks for, each at its time, and verifies its echo.
fn requests(
    cfg: &ClientConfig,
    stream: &mut TcpStream,
    load: &mut ConnLoad,
    batch: &mut Batch<'_>,
) -> Result<(), String> {
    let mut sent = vec![0u8; cfg.size];
    let mut got = vec![0u8; cfg.size];
    let duplex = cfg.size > DUPLEX_ABOVE_BYTES;
    if duplex {
        stream.set_nonblocking(true).map_err(|e| format!("setting non-blocking mode: {e}"))?;
    }
    let mut next = load.first();
    while let Next::Send { k, at } = next {
        if let Some(wait) = at.and_then(|at| at.checked_duration_since(Instant::now())) {
            std::thread::sleep(wait);
        }
        fill_payload(&mut sent, load.thread, k);
        let t = Instant::now();
        load.sent(k, t);
        let res = if duplex {
            exchange_duplex(stream, &sent, &mut got, cfg.timeout)
        } else {
            exchange_blocking(stream, &sent, &mut got, cfg.timeout)
        };
        res.map_err(|e| format!("request {k}: {e}"))?;
        if let Some(at) = first_difference(&sent, &got) {
            return Err(mismatch(k, &sent, &got, at));
        }
        load.verified(batch, k, t, Instant::now());
        next = load.next_after(Some(k));
    }
    Ok(())
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
