//! What a server run is configured by, whatever the backend, and the feature switches a
//! backend can be measured without — each defined once, here: the `server` command line,
//! the variant names of a sweep (`uring-no-bufring`) and the tests all read this table.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::notice::NoticeSink;
use crate::sys::LiveCounters;

/// The listen backlog we ask for. The kernel caps it at `net.core.somaxconn` (4096 by
/// default on current kernels); asking for more costs nothing and helps where it is raised.
pub const LISTEN_BACKLOG: i32 = 65_535;

/// The default event-coalescing window (see [`Coalesce`]); the README's feature table
/// shows syscalls, CPU and latency with and without it.
pub const DEFAULT_COALESCE_US: u32 = 200;

/// io_uring defaults: provided buffers per worker (a power of two, at most 32768), bytes
/// per buffer, and completion-queue entries per worker ring (room for a burst from every
/// connection; beyond it the kernel holds completions back, with no drops, until we reap).
pub const DEFAULT_URING_BUFFERS: u16 = 2048;
pub const DEFAULT_URING_BUFFER_SIZE_BYTES: usize = 4096;
pub const DEFAULT_URING_CQ_ENTRIES: u32 = 65_536;

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
    /// One vectored send (`sendmsg`) carries several queued receive buffers.
    #[serde(default = "yes")]
    pub sendvec: bool,
    /// Receive bundles (Linux 6.10+): one multishot completion carries every buffer the
    /// data that arrived filled, not one completion per buffer. (Raw files written before
    /// bundles existed had none.)
    #[serde(default)]
    pub bundle: bool,
    /// Zero-copy sends (`SEND_ZC`/`SENDMSG_ZC`) for sends of at least this many bytes;
    /// `None`: never. Off by default: loopback copies the pages anyway (see the README).
    #[serde(default)]
    pub zc_min_bytes: Option<u32>,
    /// Zero-copy sends name the buffer ring's memory as a registered buffer, so the kernel
    /// need not pin its pages on every send.
    #[serde(default)]
    pub regbuf: bool,
    /// Connections move to direct descriptors (a slot of their worker ring's file table):
    /// no descriptor lookup per request.
    #[serde(default)]
    pub direct: bool,
    /// Incremental buffer consumption (Linux 6.12+): each receive takes only the bytes it
    /// needs from the buffer at the ring's head, so the ring's memory goes into fewer,
    /// larger buffers ([`INC_BUFFER_SCALE`] times larger) without a small message
    /// taking a whole one.
    #[serde(default)]
    pub incremental: bool,
    /// Each multishot receive is armed with a byte cap, the connection's flow-control
    /// headroom (Linux 6.17+): the kernel ends it once that much arrived. Without it the
    /// kernel may fill hundreds of buffers for one client before the cancel at 64 KiB of
    /// queued echo lands. (Raw files written before had none.)
    #[serde(default)]
    pub recv_cap: bool,
    /// Provided buffers per worker (a power of two, at most 32768).
    pub buffers: u16,
    /// Bytes per provided buffer (and per connection without a buffer ring).
    pub buffer_size: usize,
    /// Completion-queue entries per worker ring (its submission queue is at most this
    /// long too). Small values exercise CQ overflow and a full submission queue.
    pub cq_entries: u32,
}

/// With incremental consumption, buffers are this many times larger and this many times
/// fewer (the same memory): a 4 KiB default becomes 64 KiB, the size epoll reads into,
/// so a large request arrives in one completion instead of sixteen.
pub const INC_BUFFER_SCALE: u16 = 16;

/// Raw files written before a feature existed had it on.
fn yes() -> bool {
    true
}

impl Default for UringOptions {
    fn default() -> Self {
        UringOptions {
            multishot: true,
            bufring: true,
            defer_taskrun: true,
            sqpoll: false,
            sendvec: true,
            bundle: false,
            zc_min_bytes: None,
            regbuf: false,
            direct: false,
            incremental: false,
            recv_cap: true,
            buffers: DEFAULT_URING_BUFFERS,
            buffer_size: DEFAULT_URING_BUFFER_SIZE_BYTES,
            cq_entries: DEFAULT_URING_CQ_ENTRIES,
        }
    }
}

/// Everything a server run is configured by, for any backend.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    pub bind: SocketAddr,
    /// Worker threads; 0 means one per CPU this process may use.
    pub workers: usize,
    /// Per-connection CSV log; `None` counts rows without writing them.
    pub log: Option<PathBuf>,
    /// Close connections idle this long (reason `timeout`); `None` never does.
    pub idle_timeout: Option<Duration>,
    /// Close new connections at once while this many are open (reason `rejected`).
    pub max_conns: Option<usize>,
    /// Event coalescing window in microseconds (see [`Coalesce`]); 0 turns it off.
    pub coalesce_us: u32,
    /// `TCP_NODELAY` on every connection (set once, on the listening socket, which the
    /// accepted ones inherit). Without it a reply sent in pieces waits out the client's
    /// delayed ACK: 43 ms per 64 KiB request for io_uring, whose echo leaves in 4 KiB
    /// buffers as they arrive.
    pub nodelay: bool,
    pub uring: UringOptions,
    /// Threads backend: the most connection threads at once (beyond it, `rejected`).
    /// `None`: as many as the machine lets us create.
    pub max_threads: Option<usize>,
    /// Where notices go as they happen (they are also kept for the summary).
    pub notices: Option<NoticeSink>,
    /// Counters shared with a measuring process (`--counters-fd`); `None`: private ones.
    pub live: Option<Arc<LiveCounters>>,
    /// CPU burnt on every read (`--spin-ns-per-read`): a server slower on purpose, to
    /// check that a sweep finds a known difference.
    pub spin_per_read: Option<Duration>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            bind: SocketAddr::from(([127, 0, 0, 1], 8000)),
            workers: 0,
            log: None,
            idle_timeout: None,
            max_conns: None,
            coalesce_us: DEFAULT_COALESCE_US,
            nodelay: true,
            uring: UringOptions::default(),
            max_threads: None,
            notices: None,
            live: None,
            spin_per_read: None,
        }
    }
}

impl ServerConfig {
    /// The worker count after resolving 0 to the CPUs we may use.
    pub fn worker_count(&self) -> usize {
        if self.workers == 0 {
            crate::sys::allowed_cpus()
        } else {
            self.workers
        }
    }

    pub fn coalesce(&self) -> Coalesce {
        Coalesce { wait_us: self.coalesce_us }
    }
}

/// A feature switch: a variant-name suffix (`uring-no-bufring`), the `server` flag that
/// sets it, and what it changes.
pub struct Switch {
    /// The suffix in a variant name, e.g. `no-bufring`.
    pub name: &'static str,
    /// The backend it applies to; `None`: every backend.
    pub backend: Option<&'static str>,
    /// Its `ringbench server` flag, when it has a flag of its own (`no-coalesce` is
    /// `--coalesce-us 0`).
    pub flag: Option<&'static str>,
    pub help: &'static str,
    pub apply: fn(&mut ServerConfig),
}

impl std::fmt::Debug for Switch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name)
    }
}

/// Every switch; variant names and server flags are made from this table.
pub const SWITCHES: &[Switch] = &[
    Switch {
        name: "no-multishot",
        backend: Some("uring"),
        flag: Some("uring-no-multishot"),
        help: "io_uring: single-shot accept and receive instead of multishot",
        apply: |c| c.uring.multishot = false,
    },
    Switch {
        name: "no-bufring",
        backend: Some("uring"),
        flag: Some("uring-no-bufring"),
        help: "io_uring: a receive buffer per connection instead of a shared provided-buffer ring \
               (implies single-shot receive)",
        apply: |c| c.uring.bufring = false,
    },
    Switch {
        name: "no-defer-taskrun",
        backend: Some("uring"),
        flag: Some("uring-no-defer-taskrun"),
        help: "io_uring: COOP_TASKRUN instead of SINGLE_ISSUER + DEFER_TASKRUN",
        apply: |c| c.uring.defer_taskrun = false,
    },
    Switch {
        name: "no-sendvec",
        backend: Some("uring"),
        flag: Some("uring-no-sendvec"),
        help: "io_uring: one send per received buffer instead of one vectored send for all queued",
        apply: |c| c.uring.sendvec = false,
    },
    Switch {
        name: "no-recv-cap",
        backend: Some("uring"),
        flag: Some("uring-no-recv-cap"),
        help: "io_uring: multishot receives without a byte cap; flow control only by cancelling them",
        apply: |c| c.uring.recv_cap = false,
    },
    Switch {
        name: "bundle",
        backend: Some("uring"),
        flag: Some("uring-bundle"),
        help: "io_uring: receive bundles, one completion for every buffer an arrival filled (Linux 6.10+)",
        apply: |c| c.uring.bundle = true,
    },
    Switch {
        name: "inc",
        backend: Some("uring"),
        flag: Some("uring-inc"),
        help: "io_uring: incremental buffer consumption (Linux 6.12+): the ring's memory in 16x larger, \
               16x fewer buffers, each shared by as many receives as fit in it",
        apply: |c| c.uring.incremental = true,
    },
    Switch {
        name: "direct",
        backend: Some("uring"),
        flag: Some("uring-direct"),
        help: "io_uring: connections moved to direct descriptors in their worker ring's file table",
        apply: |c| c.uring.direct = true,
    },
    Switch {
        name: "zc",
        backend: Some("uring"),
        flag: Some("uring-zc"),
        help: "io_uring: every send zero-copy (SEND_ZC); --uring-zc-min-bytes sets a threshold",
        apply: |c| {
            c.uring.zc_min_bytes.get_or_insert(0);
        },
    },
    Switch {
        name: "regbuf",
        backend: Some("uring"),
        flag: Some("uring-regbuf"),
        help: "io_uring: zero-copy sends from the buffer ring registered as a fixed buffer (implies \
               --uring-zc unless a threshold is set)",
        apply: |c| {
            c.uring.zc_min_bytes.get_or_insert(0);
            c.uring.regbuf = true;
        },
    },
    Switch {
        name: "sqpoll",
        backend: Some("uring"),
        flag: Some("sqpoll"),
        help: "io_uring: a kernel thread polls the submission queue (burns CPU while busy)",
        apply: |c| c.uring.sqpoll = true,
    },
    Switch {
        name: "nagle",
        backend: None,
        flag: Some("nagle"),
        help: "Nagle's algorithm left on: no TCP_NODELAY on the connections",
        apply: |c| c.nodelay = false,
    },
    Switch {
        name: "no-coalesce",
        backend: None,
        flag: None,
        help: "event coalescing off (--coalesce-us 0)",
        apply: |c| c.coalesce_us = 0,
    },
];

/// Event coalescing, the same policy for every event-driven backend: when a worker holds
/// many connections but its last wait returned only a few events, it lets events gather
/// for a short while before waiting again, so one wake-up serves many requests.
///
/// Under closed-loop load with hundreds of connections, a server pinned to its own CPU is
/// otherwise woken for almost every request (about one wait per request), which costs a
/// syscall, a context switch and an IPI to the client's CPU each time. With few
/// connections it never engages, so single-connection latency is untouched.
/// `--coalesce-us 0` turns it off.
///
/// The backends differ only in how they wait: epoll must sleep (`clock_nanosleep`,
/// counted) and then `epoll_wait`; io_uring waits for completions *or* the window in one
/// `io_uring_enter`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Coalesce {
    pub wait_us: u32,
}

impl Coalesce {
    /// Below this many open connections a worker never waits for more events.
    pub const MIN_OPEN: usize = 64;
    /// The most events worth waiting for.
    pub const MAX_WANT: usize = 64;

    /// How many events a worker with `open` connections should gather before it serves
    /// them; 1 means "serve whatever is ready now".
    #[inline]
    pub fn want(self, open: usize) -> usize {
        if self.wait_us == 0 || open < Self::MIN_OPEN {
            1
        } else {
            (open / 8).clamp(2, Self::MAX_WANT)
        }
    }

    pub fn window(self) -> Duration {
        Duration::from_micros(u64::from(self.wait_us))
    }
}
