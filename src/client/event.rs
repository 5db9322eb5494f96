//! The event engine: a few threads (one per CPU the client may use, by default), each
//! multiplexing its share of the connections over non-blocking sockets with epoll — the
//! same payloads, the same byte-for-byte verification and the same rows as the blocking
//! engine, with no thread per connection, so 19,000 connections fit in one process.
//!
//! An open-loop schedule is held with a timer: each thread keeps its connections' next
//! send times in a heap and arms a timerfd (nanosecond resolution) for the earliest, so a
//! send leaves within tens of microseconds of its time while the client keeps up.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use ringbench_backends::sys::{self, Epoll, Event, Events, Interest, Syscalls, Token};
use socket2::{Domain, Protocol, SockAddr, Socket, Type};

use super::latency::RunLatency;
use super::load::{ConnLoad, Next, Stop};
use super::payload::{fill_payload, first_difference, mismatch};
use super::session::{Board, Connected, SliceOut, Tally};
use super::{check_limits, ClientConfig, ClientError, ConnOutcome};

const TOKEN_TIMER: Token = Token(u64::MAX);
/// Connects in flight per thread: more at once only overflows the server's SYN queue,
/// and the refused SYNs wait a whole second to be retried.
const CONNECTS_IN_FLIGHT: usize = 256;
/// Bytes read per call.
const READ_BYTES: usize = 64 * 1024;
/// How often stalled connections are looked for.
const TIMEOUT_SCAN: Duration = Duration::from_millis(100);

/// Where one connection stands.
enum Phase {
    /// Not yet asked to connect.
    Queued,
    Connecting,
    /// Connected, waiting for a slice's start gate (or resting between slices).
    Ready,
    /// Waiting for the time of its request `k` (open loop).
    Scheduled {
        k: u64,
    },
    /// Request `k` is out: `written` of it sent, `echoed` of it back and verified.
    Exchange {
        k: u64,
        sent_at: Instant,
        written: usize,
        echoed: usize,
    },
    Finished,
}

struct Conn {
    /// `None` before connecting and after closing.
    fd: Option<OwnedFd>,
    /// Its index in this process, and its run-wide number.
    index: usize,
    thread: usize,
    phase: Phase,
    /// The current request's payload.
    payload: Vec<u8>,
    connect_started: Option<Instant>,
    last_progress: Instant,
    /// Its load in the slice running now.
    load: Option<ConnLoad>,
    /// Whether it still works in the slice running now.
    active: bool,
    /// Over the whole session: its connect, its requests, its first error.
    tally: Tally,
}

/// One engine thread and its connections.
struct Engine {
    cfg: Arc<ClientConfig>,
    /// The configuration as the running slice stops (what its outcomes report).
    slice_cfg: ClientConfig,
    ep: Epoll,
    timer: OwnedFd,
    sc: Syscalls,
    conns: Vec<Conn>,
    /// Open loop: when each waiting connection sends next.
    due: BinaryHeap<Reverse<(Instant, usize)>>,
    /// The time the timer is armed for.
    armed: Option<Instant>,
    run: RunLatency,
    scratch: Vec<u8>,
    active: usize,
}

/// What an engine thread hands back for one slice.
type ThreadSlice = io::Result<(Vec<ConnOutcome>, RunLatency)>;

/// The connections of this process on `cfg.engine_threads()` threads, between slices.
pub struct Connections {
    cfg: ClientConfig,
    board: Arc<Board<(), ThreadSlice>>,
    threads: Vec<JoinHandle<io::Result<Vec<Tally>>>>,
}

impl Connections {
    /// Starts the engine threads and returns once each has connected its share.
    pub fn connect(cfg: &ClientConfig) -> Result<Connections, ClientError> {
        check_limits(cfg)?;
        let n = cfg.engine_threads();
        let board: Arc<Board<(), ThreadSlice>> = Arc::new(Board::default());
        let mut threads = Vec::with_capacity(n);
        for t in 0..n {
            let indexes: Vec<usize> = (t..cfg.connections).step_by(n).collect();
            let (shared, c) = (Arc::clone(&board), Arc::new(cfg.clone()));
            let spawned = std::thread::Builder::new()
                .name(format!("client-engine-{t}"))
                .spawn(move || engine_thread(c, indexes, &shared));
            match spawned {
                Ok(h) => threads.push(h),
                Err(e) => {
                    board.quit();
                    return Err(ClientError::Io(e));
                }
            }
        }
        board.wait_connected(threads.len());
        Ok(Connections { cfg: cfg.clone(), board, threads })
    }
}

impl Connected for Connections {
    fn slice(&mut self, stop: Stop, before_start: &mut dyn FnMut()) -> io::Result<SliceOut> {
        let (_, parts, window, wall_s) = self.board.run_slice(self.threads.len(), stop, (), &self.cfg, before_start);
        let mut outcomes = Vec::with_capacity(self.cfg.connections);
        let mut run = RunLatency::default();
        for p in parts {
            let (o, r) = p?;
            outcomes.extend(o);
            run.merge(&r);
        }
        Ok(SliceOut { outcomes, run, window, wall_s })
    }

    fn close(self: Box<Self>) -> Vec<Tally> {
        self.board.quit();
        let mut tallies = Vec::with_capacity(self.cfg.connections);
        for h in self.threads {
            if let Ok(Ok(t)) = h.join() {
                tallies.extend(t);
            }
        }
        tallies.sort_by_key(|t| t.thread);
        tallies
    }
}

/// Connects `indexes`, then drives them through every slice posted on `board`.
fn engine_thread(
    cfg: Arc<ClientConfig>,
    indexes: Vec<usize>,
    board: &Board<(), ThreadSlice>,
) -> io::Result<Vec<Tally>> {
    let made = Engine::new(Arc::clone(&cfg), indexes).and_then(|mut e| e.connect_all().map(|()| e));
    board.connected();
    let mut engine = made;
    let mut seen = 0;
    while let Some(run) = board.next(&mut seen) {
        let t0 = run.gate.arrive_and_wait();
        let result = match &mut engine {
            Ok(e) => e.run_slice(run.stop, t0),
            Err(err) => Err(io::Error::new(err.kind(), err.to_string())),
        };
        run.deliver(result);
    }
    engine.map(|e| e.conns.into_iter().map(|c| c.tally).collect())
}

impl Engine {
    fn new(cfg: Arc<ClientConfig>, indexes: Vec<usize>) -> io::Result<Engine> {
        let mut sc = Syscalls::default();
        let ep = Epoll::new()?;
        let timer = sys::timerfd()?;
        ep.add(&mut sc, timer.as_fd(), Interest::READ, TOKEN_TIMER)?;
        let now = Instant::now();
        let conns = indexes
            .into_iter()
            .map(|index| Conn {
                fd: None,
                index,
                thread: cfg.first_thread + index,
                phase: Phase::Queued,
                payload: vec![0u8; cfg.size],
                connect_started: None,
                last_progress: now,
                load: None,
                active: false,
                tally: Tally::new(cfg.first_thread + index),
            })
            .collect();
        Ok(Engine {
            slice_cfg: (*cfg).clone(),
            cfg,
            ep,
            timer,
            sc,
            conns,
            due: BinaryHeap::new(),
            armed: None,
            run: RunLatency::default(),
            scratch: vec![0u8; READ_BYTES],
            active: 0,
        })
    }

    /// Runs one slice from `t0` until every connection is done with it; returns each
    /// connection's outcome in it and the slice's latencies.
    fn run_slice(&mut self, stop: Stop, t0: Instant) -> io::Result<(Vec<ConnOutcome>, RunLatency)> {
        self.slice_cfg = self.cfg.with_stop(stop);
        self.due.clear();
        self.start(stop, t0)?;
        self.drive()?;
        let cfg = &self.slice_cfg;
        let outcomes = self
            .conns
            .iter_mut()
            .map(|c| match c.load.take() {
                Some(load) => {
                    c.tally.add(&load);
                    ConnOutcome::of(cfg, &load, c.tally.connect_s)
                }
                None => c.tally.absent(cfg),
            })
            .collect();
        Ok((outcomes, std::mem::take(&mut self.run)))
    }

    /// Opens a non-blocking connect for connection `i`.
    fn begin_connect(&mut self, i: usize) {
        let cfg = Arc::clone(&self.cfg);
        let c = &mut self.conns[i];
        let started = (|| -> io::Result<OwnedFd> {
            let sock = Socket::new(Domain::for_address(cfg.server), Type::STREAM.nonblocking(), Some(Protocol::TCP))?;
            if let Some(ip) = cfg.source_for(c.thread) {
                // Let the kernel pick the port even though the address is fixed, so each
                // source address gets its own range of ephemeral ports.
                sys::setsockopt_int(sock.as_fd(), libc::IPPROTO_IP, libc::IP_BIND_ADDRESS_NO_PORT, 1)?;
                sock.bind(&SockAddr::from(std::net::SocketAddr::new(ip, 0)))?;
            }
            sock.set_tcp_nodelay(true)?;
            match sock.connect(&SockAddr::from(cfg.server)) {
                Ok(()) => {}
                Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
                Err(e) => return Err(e),
            }
            Ok(OwnedFd::from(sock))
        })();
        c.connect_started = Some(Instant::now());
        match started
            .and_then(|fd| self.ep.add(&mut self.sc, fd.as_fd(), Interest::CONN_EDGE, Token(i as u64)).map(|()| fd))
        {
            Ok(fd) => {
                c.fd = Some(fd);
                c.phase = Phase::Connecting;
            }
            Err(e) => {
                c.tally.error = Some(format!("connect to {}: {e}", cfg.server));
                c.phase = Phase::Finished;
            }
        }
    }

    /// Connects every connection, a bounded number at a time; each either connects or
    /// records why not. An error here is the engine's own (epoll failed).
    fn connect_all(&mut self) -> io::Result<()> {
        let deadline = Instant::now() + self.cfg.timeout;
        let mut next = 0;
        let mut pending = 0;
        let mut events = Events::with_capacity(1024);
        loop {
            while pending < CONNECTS_IN_FLIGHT && next < self.conns.len() {
                self.begin_connect(next);
                pending += usize::from(matches!(self.conns[next].phase, Phase::Connecting));
                next += 1;
            }
            if pending == 0 && next == self.conns.len() {
                return Ok(());
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                for c in self.conns.iter_mut().filter(|c| matches!(c.phase, Phase::Connecting | Phase::Queued)) {
                    c.tally.error = Some(format!(
                        "connect to {}: timed out after {:.1} s",
                        self.cfg.server,
                        self.cfg.timeout.as_secs_f64()
                    ));
                    c.phase = Phase::Finished;
                    c.fd = None;
                }
                return Ok(());
            }
            self.ep.wait(&mut self.sc, &mut events, Some(left))?;
            for ev in events.iter().filter(|ev| ev.token != TOKEN_TIMER) {
                pending -= usize::from(self.connected(ev.token.0 as usize));
            }
        }
    }

    /// A connecting socket reported: returns whether it finished connecting (either way).
    fn connected(&mut self, i: usize) -> bool {
        let c = &mut self.conns[i];
        let (Phase::Connecting, Some(fd)) = (&c.phase, &c.fd) else { return false };
        let so_error = socket2::SockRef::from(fd).take_error();
        c.tally.connect_s = c.connect_started.map_or(0.0, |t| t.elapsed().as_secs_f64());
        match so_error {
            Ok(None) => {
                c.phase = Phase::Ready;
                c.tally.connected = true;
            }
            Ok(Some(e)) | Err(e) => {
                c.tally.error = Some(format!("connect to {}: {e}", self.cfg.server));
                c.phase = Phase::Finished;
                c.fd = None;
            }
        }
        true
    }

    /// The gate opened at `t0`: every connected connection starts its load.
    fn start(&mut self, stop: Stop, t0: Instant) -> io::Result<()> {
        for i in 0..self.conns.len() {
            let c = &mut self.conns[i];
            if !matches!(c.phase, Phase::Ready) || !c.tally.usable() {
                continue;
            }
            let load = ConnLoad::new(&self.slice_cfg, stop, c.thread, c.index, self.cfg.connections, t0);
            let first = load.first();
            c.load = Some(load);
            c.active = true;
            self.active += 1;
            self.follow(i, first, t0);
        }
        self.arm_timer()
    }

    /// Acts on what the load says comes next for connection `i`.
    fn follow(&mut self, i: usize, next: Next, now: Instant) {
        match next {
            Next::Send { k, at: Some(at) } if at > now => {
                self.conns[i].phase = Phase::Scheduled { k };
                self.due.push(Reverse((at, i)));
            }
            Next::Send { k, .. } => self.send(i, k, now),
            Next::Done => self.finish(i, None),
        }
    }

    /// Connection `i` is done with this slice: it rests, still connected, until the next
    /// one; or, with `error`, it failed and is closed for good.
    fn finish(&mut self, i: usize, error: Option<String>) {
        let c = &mut self.conns[i];
        if matches!(c.phase, Phase::Finished) {
            return;
        }
        match error {
            None => c.phase = Phase::Ready,
            Some(e) => {
                match c.load.as_mut() {
                    Some(load) => load.failed(e),
                    None => c.tally.error = c.tally.error.take().or(Some(e)),
                }
                c.phase = Phase::Finished;
                if let Some(fd) = c.fd.take() {
                    self.sc.close(fd);
                }
            }
        }
        if std::mem::take(&mut c.active) {
            self.active -= 1;
        }
    }

    /// Sends request `k` on connection `i` (as much as the socket takes now).
    fn send(&mut self, i: usize, k: u64, now: Instant) {
        let c = &mut self.conns[i];
        fill_payload(&mut c.payload, c.thread, k);
        if let Some(load) = c.load.as_mut() {
            load.sent(k, now);
        }
        c.phase = Phase::Exchange { k, sent_at: now, written: 0, echoed: 0 };
        c.last_progress = now;
        self.pump_out(i);
    }

    /// Writes what is left of the current request.
    fn pump_out(&mut self, i: usize) {
        let c = &mut self.conns[i];
        let (Phase::Exchange { written, .. }, Some(fd)) = (&mut c.phase, &c.fd) else { return };
        while *written < c.payload.len() {
            match self.sc.write(fd.as_fd(), &c.payload[*written..]) {
                Ok(n) => *written += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    let why = format!("request: write: {e}");
                    return self.finish(i, Some(why));
                }
            }
        }
    }

    /// Reads and verifies what the socket has; completes the request when it is all back.
    fn pump_in(&mut self, i: usize, now: Instant) {
        loop {
            let c = &mut self.conns[i];
            let Some(fd) = &c.fd else { return };
            let n = match self.sc.read(fd.as_fd(), &mut self.scratch) {
                Ok(0) => {
                    let why = closed_early(&c.phase, c.payload.len());
                    return self.finish(i, Some(why));
                }
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return self.finish(i, Some(format!("read: {e}"))),
            };
            let Phase::Exchange { k, sent_at, echoed, .. } = &mut c.phase else {
                return self.finish(i, Some(format!("{n} bytes arrived with no request out")));
            };
            let (k, sent_at) = (*k, *sent_at);
            let expected = &c.payload[*echoed..];
            if n > expected.len() {
                let why = format!("request {k}: {} bytes more than were sent", n - expected.len());
                return self.finish(i, Some(why));
            }
            if let Some(at) = first_difference(&expected[..n], &self.scratch[..n]) {
                let at = *echoed + at;
                let mut got = c.payload.clone();
                got[*echoed..*echoed + n].copy_from_slice(&self.scratch[..n]);
                let why = mismatch(k, &c.payload, &got, at);
                return self.finish(i, Some(why));
            }
            *echoed += n;
            c.last_progress = now;
            if *echoed == c.payload.len() {
                let Some(load) = c.load.as_mut() else { return };
                load.verified(&mut self.run, k, sent_at, Instant::now());
                let next = load.next_after(Some(k));
                self.follow(i, next, Instant::now());
            }
        }
    }

    fn on_event(&mut self, ev: &Event, now: Instant) {
        let i = ev.token.0 as usize;
        if ev.writable() {
            self.pump_out(i);
        }
        if ev.readable() {
            self.pump_in(i, now);
        }
    }

    /// Sends everything due by `now`.
    fn send_due(&mut self, now: Instant) {
        while let Some(&Reverse((at, i))) = self.due.peek() {
            if at > now {
                break;
            }
            self.due.pop();
            if let Phase::Scheduled { k } = self.conns[i].phase {
                self.send(i, k, now);
            }
        }
    }

    /// Arms the timer for the earliest due send, if it changed.
    fn arm_timer(&mut self) -> io::Result<()> {
        let next = self.due.peek().map(|Reverse((at, _))| *at);
        if next != self.armed {
            if let Some(at) = next {
                sys::timerfd_arm(self.timer.as_fd(), at.saturating_duration_since(Instant::now()))?;
            }
            self.armed = next;
        }
        Ok(())
    }

    /// Runs until every connection has finished.
    fn drive(&mut self) -> io::Result<()> {
        let mut events = Events::with_capacity(1024);
        let mut last_scan = Instant::now();
        while self.active > 0 {
            self.ep.wait(&mut self.sc, &mut events, Some(TIMEOUT_SCAN))?;
            let now = Instant::now();
            for ev in events.iter() {
                if ev.token == TOKEN_TIMER {
                    let mut b = [0u8; 8];
                    let _ = self.sc.read(self.timer.as_fd(), &mut b);
                    self.armed = None;
                } else {
                    self.on_event(&ev, now);
                }
            }
            self.send_due(Instant::now());
            self.arm_timer()?;
            if now.duration_since(last_scan) >= TIMEOUT_SCAN {
                last_scan = now;
                self.time_out_stalled(now);
            }
        }
        Ok(())
    }

    /// Fails connections whose request made no progress for the timeout.
    fn time_out_stalled(&mut self, now: Instant) {
        let limit = self.cfg.timeout;
        for i in 0..self.conns.len() {
            let c = &self.conns[i];
            if let Phase::Exchange { k, written, echoed, .. } = c.phase {
                if now.duration_since(c.last_progress) >= limit {
                    let why = format!(
                        "request {k}: timed out after {:.1} s with {written} of {} bytes sent and {echoed} received",
                        limit.as_secs_f64(),
                        c.payload.len()
                    );
                    self.finish(i, Some(why));
                }
            }
        }
    }
}

/// Why a connection that the server closed failed.
fn closed_early(phase: &Phase, len: usize) -> String {
    match phase {
        Phase::Exchange { k, echoed, .. } => {
            format!("request {k}: server closed the connection after {echoed} of {len} reply bytes")
        }
        _ => "server closed the connection".into(),
    }
}
