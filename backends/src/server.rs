//! The top of the crate: the registry of backends, and starting and stopping a server,
//! whatever the backend — binding, the open-file limit, the log, and the summary.
//!
//! This is the only module that knows every backend. Adding one is a module (a file or
//! a folder) with a `build` function, and one line in [`BACKENDS`].

use std::collections::BTreeMap;
use std::fmt;
use std::io;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::backend::Backend;
use crate::book::ThreadStats;
use crate::config::{ServerConfig, LISTEN_BACKLOG};
use crate::log::ConnLog;
use crate::notice::Notice;
use crate::shared::Shared;
use crate::sys;

/// A backend a server can run.
pub struct Registered {
    /// Its name on the command line and in every report.
    pub name: &'static str,
    /// One line for `--help`.
    pub about: &'static str,
    /// Builds it for a configuration, probing the kernel for what it needs; a backend the
    /// kernel cannot provide fails here, before anything is served.
    pub build: fn(&ServerConfig) -> io::Result<Box<dyn Backend>>,
}

impl fmt::Debug for Registered {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name)
    }
}

/// Every backend, in the order reports list them.
pub const BACKENDS: &[Registered] = &[
    Registered { name: "epoll", about: "edge-triggered epoll, one per worker thread", build: crate::epoll::build },
    Registered {
        name: "uring",
        about: "io_uring, one ring per worker thread: multishot accept and receive, provided buffers",
        build: crate::uring::build,
    },
    Registered {
        name: "threads",
        about: "one blocking thread per connection: the traditional server the seed compares against",
        build: crate::threads::build,
    },
];

/// The backend called `name`.
pub fn backend(name: &str) -> Option<&'static Registered> {
    BACKENDS.iter().find(|b| b.name == name)
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
    /// Rows written to the per-connection log.
    pub log_rows: u64,
    /// Rows that could not be written (a full disk); the run counts as failed.
    #[serde(default)]
    pub log_rows_lost: u64,
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
    /// io_uring counters (zero for other backends).
    pub sqes_submitted: u64,
    pub cqes_reaped: u64,
    pub bufring_empty: u64,
    pub cq_overflow: u64,
    #[serde(default)]
    pub bundle_extra_buffers: u64,
    #[serde(default)]
    pub zc_notifications: u64,
    #[serde(default)]
    pub shared_buffer_receives: u64,
    /// io_uring: receives into a connection's own buffer while the ring had none.
    #[serde(default)]
    pub own_buffer_receives: u64,
    pub nofile_soft: u64,
    pub nofile_hard: u64,
    /// What the server reported while running (each kind once per episode).
    #[serde(default)]
    pub notices: Vec<Notice>,
    /// The stop was an abort (a second signal): the orderly close was skipped.
    #[serde(default)]
    pub aborted: bool,
}

impl ServerSummary {
    /// Whether the run lost nothing it should have recorded.
    pub fn complete(&self) -> bool {
        self.log_rows_lost == 0
    }
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
        if self.log_rows_lost > 0 {
            writeln!(f, "  log rows LOST      {} (the log file could not be written)", self.log_rows_lost)?;
        }
        writeln!(f, "  bytes              {} in {} reads", self.bytes, self.reads)?;
        writeln!(f, "  wall               {:.3} s{}", self.wall_s, if self.aborted { " (aborted)" } else { "" })?;
        writeln!(f, "  cpu                {:.3} s user, {:.3} s sys", self.cpu_user_s, self.cpu_sys_s)?;
        writeln!(
            f,
            "  context switches   {} voluntary, {} involuntary",
            self.voluntary_ctx_switches, self.involuntary_ctx_switches
        )?;
        let kinds: Vec<String> = self.syscalls.iter().map(|(k, v)| format!("{k}={v}")).collect();
        writeln!(f, "  syscalls           {} total: {}", self.syscalls_total, kinds.join(" "))?;
        if self.sqes_submitted > 0 {
            writeln!(
                f,
                "  io_uring           {} SQEs submitted, {} CQEs reaped, buffer ring empty {}x, CQ overflow {}, \
                 {} buffers in bundles past the first, {} zero-copy notifications, {} receives into a \
                 buffer already in use, {} into a connection's own buffer (ring dry)",
                self.sqes_submitted,
                self.cqes_reaped,
                self.bufring_empty,
                self.cq_overflow,
                self.bundle_extra_buffers,
                self.zc_notifications,
                self.shared_buffer_receives,
                self.own_buffer_receives
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

    /// Every notice so far.
    pub fn notices(&self) -> Vec<Notice> {
        self.shared.notices.snapshot().0
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

/// Builds `backend` for `cfg` and reports which optional features it would use.
pub fn features(backend: &Registered, cfg: &ServerConfig) -> io::Result<Vec<(String, String)>> {
    Ok((backend.build)(cfg)?.features())
}

/// Binds, builds the backend, and starts serving on a new thread. Returns once the socket
/// listens, so a client may connect as soon as this returns.
pub fn start(backend: &'static Registered, cfg: ServerConfig) -> io::Result<ServerHandle> {
    let (nofile_soft, nofile_hard) = sys::raise_nofile_limit()?;
    let server = (backend.build)(&cfg)?;
    let listener = TcpListener::bind(cfg.bind)
        .map_err(|e| io::Error::new(e.kind(), format!("cannot listen on {}: {e}", cfg.bind)))?;
    listener.set_nonblocking(true)?;
    let addr = listener.local_addr()?;
    let listener = OwnedFd::from(listener);
    if cfg.nodelay {
        // Accepted sockets inherit it: no syscall per connection, the same for every backend.
        sys::setsockopt_int(listener.as_fd(), libc::IPPROTO_TCP, libc::TCP_NODELAY, 1)?;
    }
    sys::listen(listener.as_fd(), LISTEN_BACKLOG)?;
    let log = match &cfg.log {
        Some(p) => ConnLog::create(p)
            .map_err(|e| io::Error::new(e.kind(), format!("cannot write log '{}': {e}", p.display())))?,
        None => ConnLog::counting(),
    };
    let mut features: BTreeMap<String, String> = server.features().into_iter().collect();
    features.insert("listen_backlog".into(), LISTEN_BACKLOG.min(somaxconn()).to_string());
    features.insert("tcp_nodelay".into(), if cfg.nodelay { "on" } else { "off" }.into());
    features.insert("coalesce_us".into(), cfg.coalesce_us.to_string());
    let shared = Arc::new(Shared::new(cfg, log)?);
    let limits = (nofile_soft, nofile_hard);
    let sh = Arc::clone(&shared);
    let thread = std::thread::Builder::new()
        .name("ringbench-accept".into())
        .spawn(move || serve(backend.name, server, listener, sh, addr, features, limits))?;
    Ok(ServerHandle { addr, shared, thread: Some(thread) })
}

/// The server thread: serves, then sums up.
fn serve(
    name: &str,
    server: Box<dyn Backend>,
    listener: OwnedFd,
    sh: Arc<Shared>,
    addr: SocketAddr,
    features: BTreeMap<String, String>,
    (nofile_soft, nofile_hard): (u64, u64),
) -> io::Result<ServerSummary> {
    let start = (sys::rusage_self()?, Instant::now());
    let per_thread = server.serve(listener, &sh)?;
    sh.log.flush(&sh.notices);
    let (ru0, t0) = sh.ready_mark().unwrap_or(start);
    let wall_s = t0.elapsed().as_secs_f64();
    let ru1 = sys::rusage_self()?;
    let mut total = ThreadStats::default();
    for t in &per_thread {
        total.merge(t);
    }
    let (notices, _) = sh.notices.snapshot();
    Ok(ServerSummary {
        backend: name.to_string(),
        bind: addr.to_string(),
        workers: sh.workers,
        connections: total.connections - total.rejected,
        rejected: total.rejected,
        log_rows: sh.log.rows(),
        log_rows_lost: sh.log.lost(),
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
        bundle_extra_buffers: total.bundle_extra_buffers,
        zc_notifications: total.zc_notifications,
        shared_buffer_receives: total.shared_buffer_receives,
        own_buffer_receives: total.own_buffer_receives,
        nofile_soft,
        nofile_hard,
        notices,
        aborted: sh.stop.is_abort(),
    })
}

fn tv_s(tv: libc::timeval) -> f64 {
    tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6
}

fn somaxconn() -> i32 {
    std::fs::read_to_string("/proc/sys/net/core/somaxconn").ok().and_then(|s| s.trim().parse().ok()).unwrap_or(4096)
}
