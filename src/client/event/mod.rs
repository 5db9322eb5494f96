//! The event engine: a few threads (one per CPU the client may use, by default), each
//! multiplexing its share of the connections over non-blocking sockets with epoll — the
//! same payloads, the same byte-for-byte verification and the same rows as the blocking
//! engine, with no thread per connection, so 19,000 connections fit in one process.
//!
//! An open-loop schedule is held with a timer: each thread keeps its connections' next
//! send times in a heap and arms a timerfd (nanosecond resolution) for the earliest, so a
//! send leaves within tens of microseconds of its time while the client keeps up.
//!
//! It runs every workload (`flow` keeps each connection's requests in flight): rr,
//! pipeline and stream on connections made once; crr on a new connection per request;
//! and the idle crowd, connected with the others, loaded never, echoing once at the end.

mod flow;

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
use super::session::{Board, Connected, SliceOut, Tally};
use super::{check_limits, ClientConfig, ClientError, ConnOutcome};
use crate::workload::Workload;
use flow::Flow;

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
    /// Connecting before the first slice.
    Connecting,
    /// Waiting for a slice's start gate (or resting between slices): connected, or — a
    /// crr slot — not yet, as each of its requests opens a connection of its own.
    Ready,
    /// Loaded in the running slice: requests in flight, or the next one scheduled.
    Running,
    /// crr, in the running slice: connecting for its next request.
    Reconnecting,
    Finished,
}

struct Conn {
    /// `None` before connecting and after closing.
    fd: Option<OwnedFd>,
    /// Its index in this process, and its run-wide number.
    index: usize,
    thread: usize,
    phase: Phase,
    /// Its requests in flight.
    flow: Flow,
    /// One of the idle crowd (`idle:K`): connected, never loaded, echoes once at the end.
    idle: bool,
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
    workload: Workload,
    /// Requests each connection keeps in flight.
    depth: usize,
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
        let all = cfg.connections + cfg.workload.idle();
        for t in 0..n {
            let indexes: Vec<usize> = (t..all).step_by(n).collect();
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
        let mut tallies = Vec::with_capacity(self.cfg.connections + self.cfg.workload.idle());
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
    let mut engine = engine?;
    engine.echo_idle()?;
    Ok(engine.conns.into_iter().map(|c| c.tally).collect())
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
                thread: thread_number(&cfg, index),
                phase: Phase::Queued,
                flow: Flow::new(cfg.size),
                idle: index >= cfg.connections,
                connect_started: None,
                last_progress: now,
                load: None,
                active: false,
                tally: Tally::new(thread_number(&cfg, index)),
            })
            .collect();
        Ok(Engine {
            slice_cfg: (*cfg).clone(),
            workload: cfg.workload,
            depth: cfg.workload.depth(cfg.size, cfg.window),
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
        self.start(stop, t0, false)?;
        self.drive()?;
        let cfg = &self.slice_cfg;
        let outcomes = self
            .conns
            .iter_mut()
            .filter(|c| !c.idle)
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
                c.phase = if c.active { Phase::Reconnecting } else { Phase::Connecting };
            }
            Err(e) if c.active => {
                let why = format!("connect to {}: {e}", cfg.server);
                self.finish(i, Some(why));
            }
            Err(e) => {
                c.tally.error = Some(format!("connect to {}: {e}", cfg.server));
                c.phase = Phase::Finished;
            }
        }
    }

    /// crr: connection `i`'s request is back; its connection closes, and the next request,
    /// if the load has one, opens a connection of its own.
    fn reconnect(&mut self, i: usize) {
        let c = &mut self.conns[i];
        if let Some(fd) = c.fd.take() {
            self.sc.close(fd);
        }
        let more = c.load.as_ref().is_some_and(|l| matches!(l.next_after(c.flow.last_sent()), Next::Send { .. }));
        if more {
            self.begin_connect(i);
        } else {
            self.finish(i, None);
        }
    }

    /// A connect in the running slice (crr) reported: its next request goes out, or it
    /// failed.
    fn reconnected(&mut self, i: usize, now: Instant) {
        let c = &mut self.conns[i];
        let Some(fd) = &c.fd else { return };
        match socket2::SockRef::from(fd).take_error() {
            Ok(None) => {
                let took = c.connect_started.map_or(0, |t| t.elapsed().as_nanos() as u64);
                self.run.record_connect(took);
                c.phase = Phase::Running;
                c.last_progress = now;
                self.advance(i, now);
            }
            Ok(Some(e)) | Err(e) => {
                let why = format!("connect to {}: {e}", self.cfg.server);
                self.finish(i, Some(why));
            }
        }
    }

    /// Connects every connection, a bounded number at a time; each either connects or
    /// records why not. An error here is the engine's own (epoll failed).
    fn connect_all(&mut self) -> io::Result<()> {
        if self.workload == Workload::Crr {
            // Every request of a crr slot opens its own connection, in the slices.
            for c in &mut self.conns {
                c.phase = Phase::Ready;
                c.tally.connected = true;
            }
            return Ok(());
        }
        // Each connect gets the timeout from its own start: an idle crowd of 18,000 takes
        // longer than any one timeout to connect, a bounded number at a time.
        let limit = self.cfg.timeout;
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
            self.ep.wait(&mut self.sc, &mut events, Some(TIMEOUT_SCAN))?;
            for ev in events.iter().filter(|ev| ev.token != TOKEN_TIMER) {
                pending -= usize::from(self.connected(ev.token.0 as usize));
            }
            let server = self.cfg.server;
            for c in self.conns.iter_mut().filter(|c| matches!(c.phase, Phase::Connecting)) {
                if c.connect_started.is_some_and(|t| t.elapsed() >= limit) {
                    c.tally.error = Some(format!("connect to {server}: timed out after {:.1} s", limit.as_secs_f64()));
                    c.phase = Phase::Finished;
                    c.fd = None;
                    pending -= 1;
                }
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
    fn start(&mut self, stop: Stop, t0: Instant, idle: bool) -> io::Result<()> {
        for i in 0..self.conns.len() {
            let c = &mut self.conns[i];
            if !matches!(c.phase, Phase::Ready) || !c.tally.usable() || c.idle != idle {
                continue;
            }
            c.load = Some(ConnLoad::new(&self.slice_cfg, stop, c.thread, c.index, self.cfg.connections, t0));
            c.flow.reset();
            c.active = true;
            c.last_progress = t0;
            self.active += 1;
            if c.fd.is_none() {
                // crr: the first request's connection is part of the slice.
                self.begin_connect(i);
            } else {
                c.phase = Phase::Running;
                self.advance(i, t0);
            }
        }
        self.arm_timer()
    }

    /// After the last slice: every connection of the idle crowd sends one request and
    /// verifies its echo, so an idle connection the server dropped is a failure.
    fn echo_idle(&mut self) -> io::Result<()> {
        if !self.conns.iter().any(|c| c.idle) {
            return Ok(());
        }
        self.slice_cfg = ClientConfig { requests: 1, ..self.cfg.with_stop(Stop::Rounds { min_run: None }) };
        self.due.clear();
        let t0 = Instant::now();
        self.start(Stop::Rounds { min_run: None }, t0, true)?;
        self.drive()?;
        for c in self.conns.iter_mut().filter(|c| c.idle) {
            if let Some(load) = c.load.take() {
                c.tally.add(&load);
            }
        }
        Ok(())
    }

    /// Connection `i` is done with this slice: it rests, still connected, until the next
    /// one; or, with `error`, it failed and is closed for good.
    fn finish(&mut self, i: usize, error: Option<String>) {
        let c = &mut self.conns[i];
        if matches!(c.phase, Phase::Finished) {
            return;
        }
        match error {
            None => {
                c.phase = Phase::Ready;
                c.flow.pending = None;
            }
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

    fn on_event(&mut self, ev: &Event, now: Instant) {
        let i = ev.token.0 as usize;
        if matches!(self.conns[i].phase, Phase::Reconnecting) {
            return self.reconnected(i, now);
        }
        if ev.writable() {
            self.pump_out(i);
        }
        if ev.readable() {
            self.pump_in(i, now);
        }
        self.advance(i, now);
    }

    /// Sends everything due by `now`.
    fn send_due(&mut self, now: Instant) {
        while let Some(&Reverse((at, i))) = self.due.peek() {
            if at > now {
                break;
            }
            self.due.pop();
            if self.conns[i].flow.pending.is_some() {
                self.advance(i, now);
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
            if now.duration_since(c.last_progress) < limit {
                continue;
            }
            let why = match (&c.phase, c.flow.out.front()) {
                (Phase::Running, Some((k, _))) => format!(
                    "request {k}: timed out after {:.1} s with {} requests in flight, {} of its {} reply bytes received",
                    limit.as_secs_f64(),
                    c.flow.out.len(),
                    c.flow.echoed,
                    c.flow.size()
                ),
                (Phase::Reconnecting, _) => {
                    format!("connect to {}: timed out after {:.1} s", self.cfg.server, limit.as_secs_f64())
                }
                _ => continue,
            };
            self.finish(i, Some(why));
        }
    }
}

/// The run-wide number of this process's connection `index`: the active ones from
/// `first_thread`, the idle crowd after them from [`IDLE_FIRST_THREAD`].
///
/// [`IDLE_FIRST_THREAD`]: crate::workload::IDLE_FIRST_THREAD
fn thread_number(cfg: &ClientConfig, index: usize) -> usize {
    match index.checked_sub(cfg.connections) {
        Some(i) => crate::workload::IDLE_FIRST_THREAD + cfg.first_thread + i,
        None => cfg.first_thread + index,
    }
}
