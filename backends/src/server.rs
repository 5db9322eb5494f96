//! Starting and stopping a server, whatever the backend: binding, the open-file limit,
//! the stop signal, the log, and the summary printed at exit.

use std::collections::BTreeMap;
use std::fmt;
use std::io;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::book::{Coalesce, ConnLog, ThreadStats};
use crate::sys;
use crate::Backend;

/// The listen backlog we ask for. The kernel caps it at `net.core.somaxconn` (4096 by
/// default on current kernels); asking for more costs nothing and helps where it is raised.
pub const LISTEN_BACKLOG: i32 = 65_535;

/// The default event-coalescing window (see [`Coalesce`](crate::Coalesce)), chosen by measurement: the
/// README's table shows syscalls, CPU and latency with and without it.
pub const DEFAULT_COALESCE_US: u32 = 200;

/// The backends a server can run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    Epoll,
    Uring,
}

impl BackendKind {
    pub const ALL: [BackendKind; 2] = [BackendKind::Epoll, BackendKind::Uring];

    pub fn name(self) -> &'static str {
        match self {
            BackendKind::Epoll => "epoll",
            BackendKind::Uring => "uring",
        }
    }

    /// Builds the backend for `cfg`, probing the kernel for what it needs. A backend the
    /// kernel cannot provide fails here, before anything is served.
    pub fn build(self, cfg: &ServerConfig) -> io::Result<Box<dyn Backend>> {
        match self {
            BackendKind::Epoll => Ok(Box::new(crate::epoll::Epoll)),
            BackendKind::Uring => Ok(Box::new(crate::uring::Uring::probe(&cfg.uring)?)),
        }
    }
}

impl fmt::Display for BackendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for BackendKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        BackendKind::ALL
            .into_iter()
            .find(|b| b.name() == s)
            .ok_or_else(|| format!("unknown backend '{s}' (expected epoll or uring)"))
    }
}

/// io_uring feature switches. Each feature is on by default, used when the kernel has it,
/// and can be switched off so its effect can be measured on its own.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UringOptions {
    /// Multishot accept and multishot receive (one request, many completions).
    pub multishot: bool,
    /// Receive into a ring of kernel-picked provided buffers instead of per-connection ones.
    pub bufring: bool,
    /// IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN (else COOP_TASKRUN).
    pub defer_taskrun: bool,
    /// A kernel thread polls the submission queue (opt-in: it burns a CPU while busy).
    pub sqpoll: bool,
    /// Provided buffers per worker (a power of two, at most 32768).
    pub buffers: u16,
    /// Bytes per provided buffer (and per connection without a buffer ring).
    pub buffer_size: usize,
    /// Completion-queue entries per worker ring (its submission queue is at most this
    /// long too). Small values exercise CQ overflow and a full submission queue.
    pub cq_entries: u32,
}

impl Default for UringOptions {
    fn default() -> Self {
        UringOptions {
            multishot: true,
            bufring: true,
            defer_taskrun: true,
            sqpoll: false,
            buffers: crate::uring::DEFAULT_BUFFERS,
            buffer_size: crate::uring::DEFAULT_BUFFER_SIZE_BYTES,
            cq_entries: crate::uring::DEFAULT_CQ_ENTRIES,
        }
    }
}

/// Everything a server run is configured by.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    pub backend: BackendKind,
    pub bind: SocketAddr,
    /// Worker threads; 0 means one per CPU this process may use.
    pub workers: usize,
    /// Per-connection CSV log; `None` counts rows without writing them.
    pub log: Option<PathBuf>,
    /// Close connections idle this long (reason `timeout`); `None` never does.
    pub idle_timeout: Option<Duration>,
    /// Close new connections at once while this many are open (reason `rejected`).
    pub max_conns: Option<usize>,
    /// Event coalescing window in microseconds (see [`Coalesce`](crate::Coalesce)); 0 turns it off.
    pub coalesce_us: u32,
    pub uring: UringOptions,
}

impl ServerConfig {
    pub fn new(backend: BackendKind) -> Self {
        ServerConfig {
            backend,
            bind: SocketAddr::from(([127, 0, 0, 1], 8000)),
            workers: 0,
            log: None,
            idle_timeout: None,
            max_conns: None,
            coalesce_us: DEFAULT_COALESCE_US,
            uring: UringOptions::default(),
        }
    }

    /// The worker count after resolving 0 to the CPUs we may use.
    pub fn worker_count(&self) -> usize {
        if self.workers == 0 {
            sys::allowed_cpus()
        } else {
            self.workers
        }
    }
}

/// A one-way "stop now" flag that event loops can wait on: an eventfd that stays readable
/// once signalled (so a level-triggered epoll or a poll request sees it every time) plus an
/// atomic for cheap checks.
pub struct StopSignal {
    fd: OwnedFd,
    set: AtomicBool,
}

impl StopSignal {
    pub fn new() -> io::Result<Self> {
        Ok(StopSignal { fd: sys::eventfd()?, set: AtomicBool::new(false) })
    }

    /// Asks every thread of the server to stop. Safe to call from any thread, many times.
    pub fn trigger(&self) {
        if !self.set.swap(true, Ordering::SeqCst) {
            // The flag is already visible; failing to wake would only delay the stop
            // until the next event, and eventfd writes do not fail on a valid fd.
            let _ = sys::eventfd_signal(self.fd.as_fd());
        }
    }

    pub fn is_set(&self) -> bool {
        self.set.load(Ordering::Relaxed)
    }

    /// The eventfd to wait on.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// State every thread of one server shares.
pub struct Shared {
    pub cfg: ServerConfig,
    pub workers: usize,
    pub stop: StopSignal,
    pub log: ConnLog,
    /// Connections currently open (accepted, not yet closed), for `--max-conns`.
    pub open: AtomicUsize,
    /// Connections accepted so far (rejected ones included).
    pub accepted: AtomicUsize,
    /// Resource usage when set-up ended (rings, buffers, threads), so the summary's CPU
    /// counts serving only and short runs are not dominated by start-up.
    ready: Mutex<Option<(libc::rusage, Instant)>>,
}

impl Shared {
    /// Called by a backend once its workers are set up, right before it starts accepting.
    pub fn mark_ready(&self) {
        if let Ok(ru) = sys::rusage_self() {
            *self.ready.lock().unwrap_or_else(|p| p.into_inner()) = Some((ru, Instant::now()));
        }
    }

    pub fn coalesce(&self) -> Coalesce {
        Coalesce { wait_us: self.cfg.coalesce_us }
    }

    /// Counts an accepted connection and says whether it must be turned away under
    /// `--max-conns`.
    pub fn admit(&self) -> bool {
        self.accepted.fetch_add(1, Ordering::Relaxed);
        !self.over_limit()
    }

    /// Whether a new connection must be turned away under `--max-conns`.
    pub fn over_limit(&self) -> bool {
        self.cfg.max_conns.is_some_and(|max| self.open.load(Ordering::Relaxed) >= max)
    }
}

/// What a server did, printed at exit and written as JSON with `--summary-json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ServerSummary {
    pub backend: String,
    pub bind: String,
    pub workers: usize,
    /// Connections accepted and served (each has one log row).
    pub connections: u64,
    /// Connections closed at once by `--max-conns` (each also has one log row).
    pub rejected: u64,
    /// Rows in the per-connection log.
    pub log_rows: u64,
    pub bytes: u64,
    pub reads: u64,
    /// From the end of set-up to the end of shutdown.
    pub wall_s: f64,
    /// CPU time of the whole server process (getrusage RUSAGE_SELF, all threads including
    /// io_uring's kernel workers) from the end of set-up to the end of shutdown.
    pub cpu_user_s: f64,
    pub cpu_sys_s: f64,
    pub voluntary_ctx_switches: u64,
    pub involuntary_ctx_switches: u64,
    /// Syscalls the backend made, by name; counted by the backend itself.
    pub syscalls: BTreeMap<String, u64>,
    pub syscalls_total: u64,
    /// accept() failures for lack of descriptors (EMFILE/ENFILE); reported once at the time.
    pub accept_fd_exhausted: u64,
    /// Optional kernel features and whether they are in use.
    pub features: BTreeMap<String, String>,
    /// io_uring counters (zero for epoll).
    pub sqes_submitted: u64,
    pub cqes_reaped: u64,
    pub bufring_empty: u64,
    pub cq_overflow: u64,
    pub nofile_soft: u64,
    pub nofile_hard: u64,
}

impl fmt::Display for ServerSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "ringbench server summary")?;
        writeln!(f, "  backend            {} ({} workers, bind {})", self.backend, self.workers, self.bind)?;
        writeln!(
            f,
            "  connections        {} served, {} rejected, {} log rows",
            self.connections, self.rejected, self.log_rows
        )?;
        writeln!(f, "  bytes              {} in {} reads", self.bytes, self.reads)?;
        writeln!(f, "  wall               {:.3} s", self.wall_s)?;
        writeln!(f, "  cpu                {:.3} s user, {:.3} s sys", self.cpu_user_s, self.cpu_sys_s)?;
        writeln!(
            f,
            "  context switches   {} voluntary, {} involuntary",
            self.voluntary_ctx_switches, self.involuntary_ctx_switches
        )?;
        let kinds: Vec<String> = self.syscalls.iter().map(|(k, v)| format!("{k}={v}")).collect();
        writeln!(f, "  syscalls           {} total: {}", self.syscalls_total, kinds.join(" "))?;
        if self.backend == "uring" {
            writeln!(
                f,
                "  io_uring           {} SQEs submitted, {} CQEs reaped, buffer ring empty {}x, CQ overflow {}",
                self.sqes_submitted, self.cqes_reaped, self.bufring_empty, self.cq_overflow
            )?;
        }
        if !self.features.is_empty() {
            let feats: Vec<String> = self.features.iter().map(|(k, v)| format!("{k}={v}")).collect();
            writeln!(f, "  features           {}", feats.join(" "))?;
        }
        if self.accept_fd_exhausted > 0 {
            writeln!(f, "  accept EMFILE      {} times (descriptors ran out)", self.accept_fd_exhausted)?;
        }
        write!(f, "  open files         soft {} / hard {}", self.nofile_soft, self.nofile_hard)
    }
}

/// A running server. Dropping it without [`ServerHandle::stop`] stops it too.
pub struct ServerHandle {
    addr: SocketAddr,
    shared: Arc<Shared>,
    thread: Option<JoinHandle<io::Result<ServerSummary>>>,
}

impl ServerHandle {
    /// The address the server listens on (with the real port when bound to port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Connections accepted and not yet closed.
    pub fn open_connections(&self) -> usize {
        self.shared.open.load(Ordering::Relaxed)
    }

    /// Connections accepted since the start (rejected ones included).
    pub fn accepted_connections(&self) -> usize {
        self.shared.accepted.load(Ordering::Relaxed)
    }

    /// The shared state, e.g. to trigger the stop from a signal handler thread.
    pub fn shared(&self) -> Arc<Shared> {
        Arc::clone(&self.shared)
    }

    /// Stops the server: no more accepts, every connection closed and logged. Returns the
    /// summary.
    pub fn stop(mut self) -> io::Result<ServerSummary> {
        self.shared.stop.trigger();
        self.join()
    }

    /// Waits for the server to stop (someone else triggers the stop).
    pub fn wait(mut self) -> io::Result<ServerSummary> {
        self.join()
    }

    fn join(&mut self) -> io::Result<ServerSummary> {
        let t = self.thread.take().ok_or_else(|| io::Error::other("server already joined"))?;
        t.join().map_err(|_| io::Error::other("server thread panicked"))?
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        if self.thread.is_some() {
            self.shared.stop.trigger();
            let _ = self.join();
        }
    }
}

/// Binds, probes the backend, and starts serving on a new thread. Returns once the socket
/// listens, so a client may connect as soon as this returns.
pub fn start(cfg: ServerConfig) -> io::Result<ServerHandle> {
    let (nofile_soft, nofile_hard) = sys::raise_nofile_limit()?;
    let backend = cfg.backend.build(&cfg)?;
    let listener = TcpListener::bind(cfg.bind)
        .map_err(|e| io::Error::new(e.kind(), format!("cannot listen on {}: {e}", cfg.bind)))?;
    listener.set_nonblocking(true)?;
    let addr = listener.local_addr()?;
    let listener = OwnedFd::from(listener);
    sys::listen(listener.as_fd(), LISTEN_BACKLOG)?;
    let log = match &cfg.log {
        Some(p) => ConnLog::create(p)
            .map_err(|e| io::Error::new(e.kind(), format!("cannot write log '{}': {e}", p.display())))?,
        None => ConnLog::counting(),
    };
    let workers = cfg.worker_count();
    let mut features: BTreeMap<String, String> = backend.features().into_iter().collect();
    features.insert("listen_backlog".into(), LISTEN_BACKLOG.min(somaxconn()).to_string());
    features.insert("coalesce_us".into(), cfg.coalesce_us.to_string());
    let shared = Arc::new(Shared {
        cfg,
        workers,
        stop: StopSignal::new()?,
        log,
        open: AtomicUsize::new(0),
        accepted: AtomicUsize::new(0),
        ready: Mutex::new(None),
    });

    let sh = Arc::clone(&shared);
    let thread = std::thread::Builder::new().name("ringbench-accept".into()).spawn(move || {
        let start = (sys::rusage_self()?, Instant::now());
        let name = backend.name();
        let per_thread = backend.serve(listener, &sh)?;
        let flushed = sh.log.flush();
        let (ru0, t0) = sh.ready.lock().unwrap_or_else(|p| p.into_inner()).take().unwrap_or(start);
        let wall_s = t0.elapsed().as_secs_f64();
        let ru1 = sys::rusage_self()?;
        flushed?;
        let mut total = ThreadStats::default();
        for t in &per_thread {
            total.merge(t);
        }
        Ok(ServerSummary {
            backend: name.to_string(),
            bind: addr.to_string(),
            workers: sh.workers,
            connections: total.connections - total.rejected,
            rejected: total.rejected,
            log_rows: sh.log.rows(),
            bytes: total.bytes,
            reads: total.reads,
            wall_s,
            cpu_user_s: tv_s(ru1.ru_utime) - tv_s(ru0.ru_utime),
            cpu_sys_s: tv_s(ru1.ru_stime) - tv_s(ru0.ru_stime),
            voluntary_ctx_switches: (ru1.ru_nvcsw - ru0.ru_nvcsw) as u64,
            involuntary_ctx_switches: (ru1.ru_nivcsw - ru0.ru_nivcsw) as u64,
            syscalls: total.syscalls.by_name(),
            syscalls_total: total.syscalls.total(),
            accept_fd_exhausted: total.accept_fd_exhausted,
            features,
            sqes_submitted: total.sqes_submitted,
            cqes_reaped: total.cqes_reaped,
            bufring_empty: total.bufring_empty,
            cq_overflow: total.cq_overflow,
            nofile_soft,
            nofile_hard,
        })
    })?;
    Ok(ServerHandle { addr, shared, thread: Some(thread) })
}

fn tv_s(tv: libc::timeval) -> f64 {
    tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6
}

fn somaxconn() -> i32 {
    std::fs::read_to_string("/proc/sys/net/core/somaxconn").ok().and_then(|s| s.trim().parse().ok()).unwrap_or(4096)
}
