//! The blocking engine: one OS thread per connection, blocking sockets, `TCP_NODELAY` —
//! the seed's client, and the default. With hundreds of threads on one CPU, a thread's
//! tail latency is mostly the client's own scheduler: the event engine (`--engine
//! epoll`) is the one for open-loop schedules and tail latency.

use std::io::{self, Read, Write};
use std::net::{IpAddr, TcpStream};
use std::os::fd::AsFd;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ringbench_backends::sys;
use socket2::{Domain, Protocol, SockAddr, Socket, Type};

use super::gate::Gate;
use super::latency::RunLatency;
use super::load::{ConnLoad, Next};
use super::payload::{fill_payload, first_difference, mismatch};
use super::{check_limits, summarise, ClientConfig, ClientError, ClientReport, ConnOutcome, Window};

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
struct Shards(Vec<Mutex<RunLatency>>);

/// One sample: service time, and (open loop) lateness and corrected time.
type Sample = (u64, Option<(u64, u64)>);

/// A thread's samples on their way to its shard.
struct Batch<'a> {
    shard: &'a Mutex<RunLatency>,
    samples: Vec<Sample>,
}

impl Batch<'_> {
    fn flush(&mut self) {
        if self.samples.is_empty() {
            return;
        }
        let mut run = self.shard.lock().unwrap_or_else(|p| p.into_inner());
        for (service, open) in self.samples.drain(..) {
            run.record(service, open);
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

/// Runs the load in this process, calling `before_start` once every connection is made
/// and before the start gate opens (a shard reports ready there and waits for "go").
pub fn run(cfg: &ClientConfig, before_start: impl FnOnce()) -> Result<ClientReport, ClientError> {
    check_limits(cfg)?;
    let gate = Arc::new(Gate::default());
    let shards = Arc::new(Shards((0..SHARDS).map(|_| Mutex::new(RunLatency::default())).collect()));
    let closed = gate.close();
    let mut handles = Vec::with_capacity(cfg.connections);
    let mut outcomes = Vec::with_capacity(cfg.connections);
    for i in 0..cfg.connections {
        let thread = cfg.first_thread + i;
        let (gate, shards, c) = (Arc::clone(&gate), Arc::clone(&shards), cfg.clone());
        let spawned = std::thread::Builder::new()
            .name(format!("client-{thread}"))
            .stack_size(THREAD_STACK_BYTES)
            .spawn(move || connection_thread(&c, i, &gate, &shards.0[i % SHARDS]));
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
    let t0 = gate.open(closed);
    for (thread, h) in handles {
        match h.join() {
            Ok(o) => outcomes.push(o),
            Err(_) => outcomes.push(ConnOutcome::failed(cfg, thread, "client thread panicked".into())),
        }
    }
    let wall_s = t0.elapsed().as_secs_f64();
    let window = window.end(&cfg.phases);
    let mut run = RunLatency::default();
    for s in &shards.0 {
        run.merge(&s.lock().unwrap_or_else(|p| p.into_inner()));
    }
    Ok(summarise(cfg, outcomes, wall_s, window, run))
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

/// Connection `i` of this process.
fn connection_thread(cfg: &ClientConfig, i: usize, gate: &Gate, shard: &Mutex<RunLatency>) -> ConnOutcome {
    let thread = cfg.first_thread + i;
    let c0 = Instant::now();
    let stream = connect(cfg, cfg.source_for(thread));
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
    let mut load = ConnLoad::new(cfg, thread, i, cfg.connections, t0);
    let mut batch = Batch { shard, samples: Vec::with_capacity(BATCH) };
    if let Err(e) = requests(cfg, stream, &mut load, &mut batch) {
        load.failed(e);
    }
    batch.flush();
    ConnOutcome::of(cfg, &load, connect_s)
}

/// Sends every request the load asks for, each at its time, and verifies its echo.
fn requests(
    cfg: &ClientConfig,
    mut stream: TcpStream,
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
            exchange_duplex(&stream, &sent, &mut got, cfg.timeout)
        } else {
            exchange_blocking(&mut stream, &sent, &mut got, cfg.timeout)
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
