//! The io_uring backend: the same contract as epoll, built on the kernel's completion API.
//!
//! # Shape
//! The same as [`epoll`](crate::epoll), so the comparison is between kernel interfaces and
//! not between designs: one acceptor and N workers, each worker owning one ring and every
//! connection it is handed (worker-per-ring).
//!
//! - **Accept.** The acceptor keeps one *multishot accept* armed on the listening socket
//!   (registered as a fixed file): one request, one completion per connection. Each new
//!   descriptor is queued for a worker round-robin, and when that worker's queue was empty
//!   the acceptor posts an `IORING_OP_MSG_RING` completion into the worker's ring as its
//!   doorbell. That is an SQE in the acceptor's next batch, not a syscall per connection.
//! - **Why regular descriptors for connections, not direct ones.** Accepting into the fixed
//!   file table and passing slots with `MSG_RING` would save a descriptor lookup per
//!   operation, but a direct descriptor has no `getpeername`, and the per-connection log
//!   needs the peer. One `getpeername` per connection costs 0.01 syscalls per request at the
//!   seed's 100 requests per connection; the log is worth it.
//! - **Receive.** Each connection has one *multishot receive* selecting buffers from a
//!   *provided buffer ring* shared by the worker's connections: the kernel picks a buffer
//!   when data arrives, so idle connections pin no memory. A buffer goes back to the ring
//!   only after the send that echoes it completes.
//! - **Send.** One send in flight per connection, so bytes leave in order; a short send is
//!   resubmitted from where it stopped. Sends are queued behind it in arrival order.
//! - **Waiting.** One `io_uring_enter` per loop turn submits everything queued and waits;
//!   then every completion is reaped. Rings are created with `SINGLE_ISSUER | DEFER_TASKRUN`
//!   (completions are processed only when we ask, in our thread, in batches) and
//!   `SUBMIT_ALL`; the ring fd is registered so each enter skips the fd lookup. Event
//!   coalescing (see [`Coalesce`](crate::Coalesce)) is one call here: wait for `want` completions with a
//!   `min_wait` timeout (Linux 6.12+), falling back to a plain timeout.
//!
//! Every feature is probed at start, falls back when missing, can be switched off
//! (`--uring-no-multishot`, `--uring-no-bufring`, `--uring-no-defer-taskrun`), and is
//! reported in the summary.
//!
//! # Correctness rules
//! - A connection's state, its queued buffers and its own buffer (without a buffer ring)
//!   live until its last in-flight operation completes; only then is its descriptor closed
//!   (with `IORING_OP_CLOSE`) and its slot reused, with a new generation in `user_data` so a
//!   stale completion can never be mistaken for the new connection's.
//! - Flow control: when a client does not read its echo, queued bytes grow; at
//!   [`PENDING_HIGH_BYTES`] the multishot receive is cancelled and is re-armed only when the
//!   queue drains below [`PENDING_LOW_BYTES`]. The client is then held back by TCP flow
//!   control, as with epoll, and memory per connection stays bounded.
//! - `ENOBUFS` (the buffer ring ran dry) ends a multishot receive without losing data (it
//!   stays in the socket); the connection is re-armed as soon as buffers come back.
//! - A multishot request that ends (no `IORING_CQE_F_MORE`) is re-armed if still wanted.
//! - Shutdown cancels every request and waits for the cancellations before any buffer is
//!   freed; if the kernel has not answered within two seconds the buffers are leaked, not
//!   freed, so a late completion can never write into freed memory.

use std::alloc::{self, Layout};
use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use io_uring::cqueue;
use io_uring::opcode;
use io_uring::squeue::{self, Entry};
use io_uring::types::{self, BufRingEntry, CancelBuilder, SubmitArgs, Timespec};
use io_uring::{CompletionQueue, IoUring, Probe, SubmissionQueue, Submitter};

use crate::book::{CloseReason, ConnMeter, ConnRecord, Sys, ThreadStats};
use crate::epoll::{OutOfFds, ACCEPT_RETRY_MS};
use crate::handoff::{finish_serve, stop_all_on_error, Inbox, NewConn};
use crate::server::{Shared, UringOptions};
use crate::{sys, Backend};

/// Default size of each provided buffer (and of a connection's own buffer without a
/// buffer ring).
pub const DEFAULT_BUFFER_SIZE_BYTES: usize = 4096;
/// Default provided buffers per worker (a power of two, at most 32768).
pub const DEFAULT_BUFFERS: u16 = 2048;
/// Stop receiving from a client once this much of its echo is queued: the same bound as
/// epoll's one read buffer, and it keeps one client that does not read from holding more
/// than 16 of a worker's 2048 default buffers.
pub const PENDING_HIGH_BYTES: usize = 64 * 1024;
/// Receive again once its queue has drained below this.
pub const PENDING_LOW_BYTES: usize = 16 * 1024;
const BUF_GROUP: u16 = 0;
const SQ_ENTRIES: u32 = 4096;
/// Default completion-queue entries per worker ring: room for a burst from every
/// connection; beyond it the kernel holds completions back (no drops) until we reap.
pub const DEFAULT_CQ_ENTRIES: u32 = 65_536;
/// How long a stopping worker waits for the kernel to return its cancelled requests.
const STOP_GRACE: Duration = Duration::from_secs(2);

/// What a completion is for, in the top byte of `user_data`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
enum Op {
    Recv = 1,
    Send = 2,
    Cancel = 3,
    Close = 4,
    /// A doorbell posted by the acceptor with MSG_RING (not our request).
    Wake = 5,
    Stop = 6,
    Accept = 7,
    Timer = 8,
}

impl Op {
    fn from_u8(v: u8) -> Option<Op> {
        Some(match v {
            1 => Op::Recv,
            2 => Op::Send,
            3 => Op::Cancel,
            4 => Op::Close,
            5 => Op::Wake,
            6 => Op::Stop,
            7 => Op::Accept,
            8 => Op::Timer,
            _ => return None,
        })
    }
}

/// `user_data`: op (8 bits) | generation (24 bits) | slot (32 bits).
fn ud(op: Op, slot: u32, gen: u32) -> u64 {
    (op as u64) << 56 | u64::from(gen & 0xFF_FFFF) << 32 | u64::from(slot)
}

fn parse_ud(v: u64) -> (Option<Op>, u32, u32) {
    (Op::from_u8((v >> 56) as u8), slot_of(v), ((v >> 32) & 0xFF_FFFF) as u32)
}

fn slot_of(v: u64) -> u32 {
    v as u32
}

/// How completions are run in the submitting task.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Taskrun {
    /// SINGLE_ISSUER | DEFER_TASKRUN: only when we wait, in our thread, batched.
    Defer,
    /// COOP_TASKRUN: no interrupting IPIs, run at the next transition to the kernel.
    Coop,
    /// Neither (older kernels).
    Plain,
}

/// What the kernel offers and what we use.
#[derive(Clone, Debug)]
pub struct Features {
    cq_entries: u32,
    buffers: u16,
    buffer_size: usize,
    taskrun: Taskrun,
    submit_all: bool,
    multishot_accept: bool,
    multishot_recv: bool,
    bufring: bool,
    min_wait: bool,
    sqpoll: bool,
    registered_ring_fd: bool,
}

/// The io_uring backend, with the features the probe found.
pub struct Uring {
    feat: Features,
}

fn unavailable(e: io::Error) -> io::Error {
    let disabled = std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled")
        .map(|s| format!("kernel.io_uring_disabled={}", s.trim()))
        .unwrap_or_else(|_| "kernel.io_uring_disabled unknown".into());
    io::Error::new(
        io::ErrorKind::Unsupported,
        format!(
            "io_uring is unavailable here (io_uring_setup: {e}; {disabled}; a seccomp filter such as a \
             container's default profile also blocks it); use --backend epoll"
        ),
    )
}

impl Uring {
    /// Probes the kernel: fails with one clear line if io_uring cannot be used at all or
    /// lacks an operation we need; otherwise records which optional features to use.
    pub fn probe(opts: &UringOptions) -> io::Result<Uring> {
        // Probe rings are made and torn down on a throwaway thread: tearing a ring down
        // queues exit work that interrupts its creating thread later (TIF_NOTIFY_SIGNAL),
        // and a caller blocked in a socket read with a timeout would see EINTR.
        std::thread::scope(|s| {
            s.spawn(|| Self::probe_here(opts))
                .join()
                .unwrap_or_else(|_| Err(io::Error::other("io_uring probe panicked")))
        })
    }

    fn probe_here(opts: &UringOptions) -> io::Result<Uring> {
        let ring = IoUring::new(8).map_err(unavailable)?;
        let mut probe = Probe::new();
        ring.submitter().register_probe(&mut probe).map_err(unavailable)?;
        for (code, name) in [
            (opcode::MsgRingData::CODE, "IORING_OP_MSG_RING (Linux 5.18)"),
            (opcode::Accept::CODE, "IORING_OP_ACCEPT"),
            (opcode::Recv::CODE, "IORING_OP_RECV"),
            (opcode::Send::CODE, "IORING_OP_SEND"),
            (opcode::AsyncCancel::CODE, "IORING_OP_ASYNC_CANCEL"),
            (opcode::Close::CODE, "IORING_OP_CLOSE"),
            (opcode::PollAdd::CODE, "IORING_OP_POLL_ADD"),
            (opcode::Timeout::CODE, "IORING_OP_TIMEOUT"),
        ] {
            if !probe.is_supported(code) {
                return Err(io::Error::new(
                    io::ErrorKind::Unsupported,
                    format!("io_uring on this kernel lacks {name}; use --backend epoll"),
                ));
            }
        }
        let works = |f: &dyn Fn(&mut io_uring::Builder)| {
            let mut b = IoUring::builder();
            f(&mut b);
            b.build(8).is_ok()
        };
        let sqpoll = opts.sqpoll
            && works(&|b| {
                b.setup_sqpoll(1000);
            });
        // With SQPOLL the kernel thread runs completions, so the task-run flags are
        // refused (EINVAL) alongside it.
        let taskrun = if sqpoll {
            Taskrun::Plain
        } else if opts.defer_taskrun
            && works(&|b| {
                b.setup_single_issuer().setup_defer_taskrun();
            })
        {
            Taskrun::Defer
        } else if works(&|b| {
            b.setup_coop_taskrun();
        }) {
            Taskrun::Coop
        } else {
            Taskrun::Plain
        };
        let submit_all = works(&|b| {
            b.setup_submit_all();
        });
        let kernel = sys::kernel_version();
        let bufring = opts.bufring && kernel >= (5, 19) && BufRing::new(&ring.submitter(), 8, 64).is_ok();
        let uring = Uring {
            feat: Features {
                cq_entries: opts.cq_entries,
                buffers: opts.buffers,
                buffer_size: opts.buffer_size,
                taskrun,
                submit_all,
                multishot_accept: opts.multishot && kernel >= (5, 19),
                // Multishot receive needs buffer selection, hence a buffer ring.
                multishot_recv: opts.multishot && bufring && kernel >= (6, 0),
                bufring,
                min_wait: ring.params().is_feature_min_timeout(),
                sqpoll,
                registered_ring_fd: kernel >= (5, 18),
            },
        };
        // The flags were probed one by one; make sure the combination is accepted too.
        uring.build_ring(8, 16)?;
        Ok(uring)
    }

    fn build_ring(&self, entries: u32, cq_entries: u32) -> io::Result<IoUring> {
        let f = &self.feat;
        let mut b = IoUring::builder();
        b.setup_cqsize(cq_entries);
        match f.taskrun {
            Taskrun::Defer => {
                b.setup_single_issuer().setup_defer_taskrun();
            }
            Taskrun::Coop => {
                b.setup_coop_taskrun();
            }
            Taskrun::Plain => {}
        }
        if f.submit_all {
            b.setup_submit_all();
        }
        if f.sqpoll {
            b.setup_sqpoll(1000);
        }
        b.build(entries).map_err(|e| match e.raw_os_error() {
            Some(libc::EPERM | libc::ENOSYS | libc::EACCES) => unavailable(e),
            _ => io::Error::new(
                e.kind(),
                format!("cannot set up an io_uring with the probed features ({:?}): {e}", self.feat),
            ),
        })
    }
}

impl Backend for Uring {
    fn name(&self) -> &'static str {
        "uring"
    }

    fn features(&self) -> Vec<(String, String)> {
        let f = &self.feat;
        let on = |b: bool| if b { "on" } else { "off" }.to_string();
        vec![
            ("handoff".into(), "msg_ring".into()),
            ("multishot_accept".into(), on(f.multishot_accept)),
            ("multishot_recv".into(), on(f.multishot_recv)),
            ("bufring".into(), if f.bufring { format!("{}x{}B", f.buffers, f.buffer_size) } else { "off".into() }),
            (
                "taskrun".into(),
                match f.taskrun {
                    Taskrun::Defer => "single_issuer+defer_taskrun",
                    Taskrun::Coop => "coop_taskrun",
                    Taskrun::Plain => "plain",
                }
                .into(),
            ),
            ("submit_all".into(), on(f.submit_all)),
            ("registered_ring_fd".into(), on(f.registered_ring_fd)),
            ("registered_listener".into(), "on".into()),
            ("min_wait".into(), on(f.min_wait)),
            ("sqpoll".into(), on(f.sqpoll)),
        ]
    }

    fn serve(self: Box<Self>, listener: OwnedFd, shared: &Shared) -> io::Result<Vec<ThreadStats>> {
        let inboxes: Vec<Inbox> = (0..shared.workers).map(|_| Inbox::default()).collect();
        let this = &*self;
        std::thread::scope(|s| {
            // Each worker creates its own ring (SINGLE_ISSUER: the creating thread is the
            // only submitter) and sends back a duplicate of the ring's descriptor: the
            // acceptor's MSG_RING target, which keeps the ring file alive however the
            // worker ends.
            let (tx, rx) = mpsc::channel::<(usize, io::Result<OwnedFd>)>();
            let mut handles = Vec::with_capacity(inboxes.len());
            for (id, inbox) in inboxes.iter().enumerate() {
                let tx = tx.clone();
                let h = std::thread::Builder::new()
                    .name(format!("ringbench-uring-{id}"))
                    .spawn_scoped(s, move || stop_all_on_error(shared, run_worker(id, this, shared, inbox, tx)));
                match h {
                    Ok(h) => handles.push(h),
                    Err(e) => {
                        shared.stop.trigger();
                        return Err(e);
                    }
                }
            }
            drop(tx);
            let mut targets: Vec<Option<OwnedFd>> = (0..inboxes.len()).map(|_| None).collect();
            let mut setup_err = None;
            for (id, fd) in rx.iter().take(inboxes.len()) {
                match fd {
                    Ok(fd) => targets[id] = Some(fd),
                    Err(e) => setup_err = Some(e),
                }
            }
            let accepted = match (setup_err, targets.into_iter().collect::<Option<Vec<OwnedFd>>>()) {
                (None, Some(targets)) => {
                    shared.mark_ready();
                    accept_loop(this, &listener, shared, &inboxes, &targets)
                }
                (Some(e), _) => Err(e),
                (None, None) => Err(io::Error::other("a uring worker exited before its ring was ready")),
            };
            // No more connections: new clients are refused rather than left in the queue.
            drop(listener);
            finish_serve(shared, accepted, handles, &inboxes)
        })
    }
}

/// A ring split into its three parts for the life of one thread, with the syscall
/// bookkeeping every user of it needs.
struct Ring<'r> {
    sub: Submitter<'r>,
    sq: SubmissionQueue<'r>,
    cq: CompletionQueue<'r>,
    /// Entries that did not fit in a full submission queue; pushed first next turn.
    backlog: VecDeque<Entry>,
    /// Our requests whose final completion has not arrived yet.
    inflight: usize,
}

impl<'r> Ring<'r> {
    fn new(ring: &'r mut IoUring, feat: &Features, stats: &mut ThreadStats) -> Ring<'r> {
        let (mut sub, sq, cq) = ring.split();
        if feat.registered_ring_fd {
            stats.syscalls.add(Sys::IoUringRegister);
            // Optional: without it each enter looks the ring fd up, which still works.
            let _ = sub.register_ring_fd();
        }
        Ring { sub, sq, cq, backlog: VecDeque::new(), inflight: 0 }
    }

    /// Queues one request of ours (counted in `inflight` until its final completion).
    fn push(&mut self, e: Entry, stats: &mut ThreadStats) {
        self.inflight += 1;
        self.push_untracked(e, stats);
    }

    /// Queues an entry without a completion we wait for (MSG_RING with CQE_SKIP_SUCCESS).
    fn push_untracked(&mut self, e: Entry, stats: &mut ThreadStats) {
        stats.sqes_submitted += 1;
        if !self.backlog.is_empty() || !self.try_push(&e) {
            // The queue is full: hand what it holds to the kernel now, then retry. If that
            // fails too (the kernel is backed up), keep the entry for the next turn.
            self.sq.sync();
            stats.syscalls.add(Sys::IoUringEnter);
            let _ = self.sub.submit();
            self.sq.sync();
            if !self.backlog.is_empty() || !self.try_push(&e) {
                self.backlog.push_back(e);
            }
        }
    }

    fn try_push(&mut self, e: &Entry) -> bool {
        // SAFETY: every buffer an entry points to is owned by a connection or by the worker's
        // buffer ring, and neither is freed before the entry's final completion (`inflight`
        // and `UConn::inflight` count them; a worker that cannot wait for them leaks them).
        unsafe { self.sq.push(e).is_ok() }
    }

    fn drain_backlog(&mut self) {
        while let Some(e) = self.backlog.pop_front() {
            if !self.try_push(&e) {
                self.backlog.push_front(e);
                break;
            }
        }
    }

    /// Submits everything queued and waits: for `want` completions, for at least one and
    /// then up to `min_wait_us` for more, or until `timeout`. Interrupted, timed-out and
    /// busy waits are normal returns: the caller reaps whatever is there.
    fn enter(
        &mut self,
        want: usize,
        min_wait_us: u32,
        timeout: Option<Duration>,
        stats: &mut ThreadStats,
    ) -> io::Result<()> {
        self.drain_backlog();
        self.sq.sync();
        stats.syscalls.add(Sys::IoUringEnter);
        let ts = timeout.map(|d| Timespec::new().sec(d.as_secs()).nsec(d.subsec_nanos()));
        let res = match (&ts, min_wait_us) {
            (None, 0) => self.sub.submit_and_wait(want),
            (None, us) => self.sub.submit_with_args(want, &SubmitArgs::new().min_wait_usec(us)),
            (Some(ts), us) => self.sub.submit_with_args(want, &SubmitArgs::new().min_wait_usec(us).timespec(ts)),
        };
        self.cq.sync();
        match res {
            Ok(_) => Ok(()),
            Err(e) if matches!(e.raw_os_error(), Some(libc::ETIME | libc::EINTR | libc::EBUSY | libc::EAGAIN)) => {
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// Moves every available completion into `out` as `(user_data, result, flags)`.
    fn reap(&mut self, out: &mut Vec<(u64, i32, u32)>, stats: &mut ThreadStats) {
        out.clear();
        self.cq.sync();
        for c in &mut self.cq {
            out.push((c.user_data(), c.result(), c.flags()));
        }
        stats.cqes_reaped += out.len() as u64;
        // With IORING_FEAT_NODROP a full CQ loses nothing: the kernel holds completions
        // back and flags it; the next enter (GETEVENTS) flushes them. Count those turns.
        if self.sq.cq_overflow() {
            stats.cq_overflow += 1;
        }
    }
}

/// A provided-buffer ring: `count` buffers of `size` bytes that the kernel picks from when
/// data arrives. The entry array is page-aligned memory shared with the kernel.
/// Public so its recycle path can be benchmarked on its own.
pub struct BufRing {
    entries: NonNull<BufRingEntry>,
    layout: Layout,
    pool: Box<[u8]>,
    size: usize,
    mask: u16,
    tail: u16,
    count: u16,
    /// Buffers the kernel has handed us (in completions) and we have not returned yet.
    out: u16,
}

impl BufRing {
    /// Allocates the buffers and registers them with the ring as group 0.
    pub fn new(sub: &Submitter<'_>, count: u16, size: usize) -> io::Result<BufRing> {
        if !count.is_power_of_two() || size == 0 || size > u32::MAX as usize {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("a buffer ring needs a power-of-two count and a size that fits u32 (got {count} x {size})"),
            ));
        }
        let layout = Layout::from_size_align(usize::from(count) * std::mem::size_of::<BufRingEntry>(), 4096)
            .map_err(io::Error::other)?;
        // SAFETY: the layout has a non-zero size.
        let ptr = unsafe { alloc::alloc_zeroed(layout) }.cast::<BufRingEntry>();
        let entries = NonNull::new(ptr).ok_or_else(|| io::Error::from(io::ErrorKind::OutOfMemory))?;
        let mut ring = BufRing {
            entries,
            layout,
            pool: vec![0u8; usize::from(count) * size].into_boxed_slice(),
            size,
            mask: count - 1,
            tail: 0,
            count,
            // Every buffer starts "out" and is handed to the kernel by the loop below.
            out: count,
        };
        // SAFETY: `entries` is page-aligned, zeroed, `count` entries long, and lives until
        // `Drop`, which runs only after the group is unregistered or the ring is gone.
        unsafe { sub.register_buf_ring_with_flags(entries.as_ptr() as u64, count, BUF_GROUP, 0)? };
        for bid in 0..count {
            ring.recycle(bid);
        }
        ring.publish();
        Ok(ring)
    }

    /// The start of buffer `bid`.
    pub fn ptr(&self, bid: u16) -> *const u8 {
        self.pool[usize::from(bid) * self.size..].as_ptr()
    }

    /// Puts buffer `bid` back in the ring (visible to the kernel after [`publish`](Self::publish)).
    pub fn recycle(&mut self, bid: u16) {
        let addr = self.ptr(bid) as u64;
        // SAFETY: `tail & mask` indexes inside the `mask + 1` entries we allocated, and the
        // kernel only reads entries between its head and the published tail, never this one.
        let e = unsafe { &mut *self.entries.as_ptr().add(usize::from(self.tail & self.mask)) };
        e.set_addr(addr);
        e.set_len(self.size as u32);
        e.set_bid(bid);
        self.tail = self.tail.wrapping_add(1);
        self.out = self.out.saturating_sub(1);
    }

    /// Notes that a completion handed us a buffer (it is ours until [`recycle`](Self::recycle)).
    pub fn taken(&mut self) {
        self.out = self.out.saturating_add(1).min(self.count);
    }

    /// Buffers the kernel can pick from now (once published).
    pub fn available(&self) -> usize {
        usize::from(self.count - self.out)
    }

    /// Makes recycled buffers visible to the kernel.
    pub fn publish(&self) {
        // SAFETY: the tail field is the `resv` of the first entry, a u16 inside our
        // allocation; the kernel reads it with acquire semantics, so a release store makes
        // the entries written before it visible.
        unsafe {
            let tail = BufRingEntry::tail(self.entries.as_ptr()) as *const AtomicU16;
            (*tail).store(self.tail, Ordering::Release);
        }
    }
}

impl Drop for BufRing {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout.
        unsafe { alloc::dealloc(self.entries.as_ptr().cast(), self.layout) };
    }
}

/// Where queued echo bytes live.
#[derive(Clone, Copy, Debug)]
enum BufRef {
    Ring(u16),
    Own,
}

/// Echo bytes waiting to be sent: `buf[off..len]`.
#[derive(Clone, Copy, Debug)]
struct Chunk {
    buf: BufRef,
    off: u32,
    len: u32,
}

struct UConn {
    /// `None` once handed to the close request.
    fd: Option<OwnedFd>,
    raw: RawFd,
    gen: u32,
    meter: ConnMeter,
    /// Without a buffer ring: this connection's receive buffer.
    own: Option<Box<[u8]>>,
    queue: VecDeque<Chunk>,
    queued_bytes: usize,
    recv_armed: bool,
    send_inflight: bool,
    /// A flow-control cancel of the receive has been issued.
    recv_cancelled: bool,
    /// Our requests on this connection not yet finally completed.
    inflight: u32,
    peer_eof: bool,
    /// The receive ended with ENOBUFS; re-arm when buffers come back.
    starved: bool,
    closing: Option<CloseReason>,
    last_active: Instant,
}

struct UWorker<'a, 'r> {
    id: usize,
    ring: Ring<'r>,
    feat: &'a Features,
    shared: &'a Shared,
    inbox: &'a Inbox,
    conns: Vec<Option<UConn>>,
    free: Vec<u32>,
    next_gen: u32,
    open: usize,
    bufs: Option<BufRing>,
    /// Buffers went back to the ring this turn: publish the tail at the end of the turn.
    recycled: bool,
    /// Connections whose receive ended with ENOBUFS: (slot, generation).
    starved: VecDeque<(u32, u32)>,
    stats: ThreadStats,
    rows: Vec<ConnRecord>,
    now: Instant,
}

/// A worker: sets up its ring and buffers, reports ready (sending the acceptor a
/// duplicate of its ring's descriptor, or the set-up error), then serves.
fn run_worker(
    id: usize,
    this: &Uring,
    shared: &Shared,
    inbox: &Inbox,
    ready: mpsc::Sender<(usize, io::Result<OwnedFd>)>,
) -> io::Result<ThreadStats> {
    let feat = &this.feat;
    let mut stats = ThreadStats::default();
    let cq = feat.cq_entries.max(2);
    let set_up = this.build_ring(SQ_ENTRIES.min(cq), cq).and_then(|raw| {
        // SAFETY: the ring's descriptor is open for as long as `raw` lives, which covers
        // this call; the clone is a new descriptor of our own.
        let target = unsafe { std::os::fd::BorrowedFd::borrow_raw(raw.as_raw_fd()) }.try_clone_to_owned()?;
        Ok((raw, target))
    });
    let (mut raw, target) = match set_up {
        Ok(x) => x,
        Err(e) => {
            let _ = ready.send((id, Err(io::Error::new(e.kind(), e.to_string()))));
            return Err(e);
        }
    };
    let ring = Ring::new(&mut raw, feat, &mut stats);
    let bufs = if feat.bufring {
        stats.syscalls.add(Sys::IoUringRegister);
        match BufRing::new(&ring.sub, feat.buffers, feat.buffer_size) {
            Ok(b) => Some(b),
            Err(e) => {
                let _ = ready.send((id, Err(io::Error::new(e.kind(), format!("provided buffer ring: {e}")))));
                return Err(e);
            }
        }
    } else {
        None
    };
    let _ = ready.send((id, Ok(target)));
    drop(ready);
    let mut w = UWorker {
        id,
        ring,
        feat,
        shared,
        inbox,
        conns: Vec::new(),
        free: Vec::new(),
        next_gen: 0,
        open: 0,
        bufs,
        recycled: false,
        starved: VecDeque::new(),
        stats,
        rows: Vec::new(),
        now: Instant::now(),
    };
    let res = w.run();
    w.finish(res)
}

impl UWorker<'_, '_> {
    fn run(&mut self) -> io::Result<()> {
        let stop_fd = self.shared.stop.fd().as_raw_fd();
        self.ring.push(
            opcode::PollAdd::new(types::Fd(stop_fd), libc::POLLIN as u32).build().user_data(ud(Op::Stop, 0, 0)),
            &mut self.stats,
        );
        let coalesce = self.shared.coalesce();
        let idle = self.shared.cfg.idle_timeout;
        let tick = idle.map(|d| (d / 4).clamp(Duration::from_millis(10), Duration::from_secs(1)));
        let mut last_scan = Instant::now();
        let mut cqes = Vec::with_capacity(1024);
        let mut arrivals = Vec::new();
        let mut stopping: Option<Instant> = None;
        let mut last_reaped = 0usize;
        loop {
            // Each request is about two completions (receive, send). Coalescing engages on
            // the same condition as epoll's (a short last batch with many connections open)
            // and then, like epoll's sleep, takes the whole window unless every connection
            // has completed. Returning as soon as a fixed batch (128 completions) was in
            // served connections in smaller, more frequent batches: at equal mean latency
            // p99 was 1.2-1.4x epoll's from 1000 connections (84 ms against 71 ms at 4000,
            // 3 repeats each, pinned); with the whole window it matches (71 ms against 74).
            let threshold = 2 * coalesce.want(self.open);
            let (want, min_wait) = if stopping.is_none() && threshold > 2 && last_reaped > 0 && last_reaped < threshold
            {
                (2 * self.open, coalesce.wait_us)
            } else {
                (1, 0)
            };
            let timeout = match (stopping, min_wait, self.feat.min_wait) {
                (Some(_), _, _) => Some(Duration::from_millis(50)),
                // Without min_wait support the coalescing window is a plain timeout.
                (None, us, false) if us > 0 => Some(Duration::from_micros(u64::from(us))),
                _ => tick,
            };
            let min_wait = if self.feat.min_wait { min_wait } else { 0 };
            self.ring.enter(want, min_wait, timeout, &mut self.stats)?;
            self.ring.reap(&mut cqes, &mut self.stats);
            last_reaped = cqes.len();
            self.now = Instant::now();
            let mut woken = false;
            for &(data, res, flags) in &cqes {
                let (op, slot, gen) = parse_ud(data);
                match op {
                    Some(Op::Recv) => self.on_recv(slot, gen, res, flags),
                    Some(Op::Send) => self.on_send(slot, gen, res),
                    Some(Op::Cancel | Op::Close | Op::Timer | Op::Accept) => self.ring.inflight -= 1,
                    Some(Op::Stop) => {
                        self.ring.inflight -= 1;
                        if stopping.is_none() {
                            stopping = Some(self.now);
                            self.begin_stop();
                        }
                    }
                    Some(Op::Wake) => woken = true,
                    None => {}
                }
            }
            if woken && stopping.is_none() {
                self.inbox.take(&mut arrivals);
                for c in arrivals.drain(..) {
                    self.adopt(c);
                }
            }
            if std::mem::take(&mut self.recycled) {
                if let Some(b) = &self.bufs {
                    b.publish();
                }
            }
            // Re-arm receives that ran out of buffers, one per buffer the ring holds now
            // (re-arming all of them for a few buffers only buys a storm of ENOBUFS). This
            // runs every turn, not only when buffers come back: a receive left starved
            // when traffic stops would otherwise never be re-armed (found at 19,000
            // connections, where it stalled 473 of them).
            let mut budget = self.bufs.as_ref().map_or(0, BufRing::available);
            while budget > 0 {
                let Some((slot, gen)) = self.starved.pop_front() else { break };
                if let Some(c) = self.conn(slot, gen).filter(|c| c.starved) {
                    c.starved = false;
                    budget -= 1;
                    self.after_io(slot);
                }
            }
            if let (Some(limit), Some(t)) = (idle, tick) {
                if stopping.is_none() && self.now.duration_since(last_scan) >= t {
                    last_scan = self.now;
                    self.close_idle(limit);
                }
            }
            self.shared.log.append(&mut self.rows)?;
            if let Some(since) = stopping {
                if self.open == 0 && self.ring.inflight == 0 {
                    return Ok(());
                }
                if self.now.duration_since(since) > STOP_GRACE {
                    return Err(io::Error::other(format!(
                        "{} io_uring requests still in flight {} s after stop",
                        self.ring.inflight,
                        STOP_GRACE.as_secs()
                    )));
                }
            }
        }
    }

    /// Ends the worker: every connection still held gets its row; buffers are freed only
    /// if no request can still reach them.
    fn finish(mut self, res: io::Result<()>) -> io::Result<ThreadStats> {
        let quiet = self.ring.inflight == 0;
        for slot in 0..self.conns.len() {
            if let Some(mut c) = self.conns[slot].take() {
                let reason = c.closing.unwrap_or(CloseReason::Shutdown);
                self.stats.record(&mut self.rows, c.meter.finish(self.id, reason));
                if !quiet {
                    // The kernel may still write into this buffer: never free it.
                    std::mem::forget(c.own.take());
                }
                drop(c.fd.take());
                self.stats.syscalls.add(Sys::Close);
            }
        }
        self.inbox.close_leftovers(self.id, &mut self.stats, &mut self.rows);
        let logged = self.shared.log.append(&mut self.rows);
        if let Some(b) = self.bufs.take() {
            if quiet {
                self.stats.syscalls.add(Sys::IoUringRegister);
                let _ = self.ring.sub.unregister_buf_ring(BUF_GROUP);
                drop(b);
            } else {
                std::mem::forget(b);
            }
        }
        // Every connection has its row; now report the failure (which stops the server).
        res.map_err(|e| io::Error::new(e.kind(), format!("uring worker {}: {e}", self.id)))?;
        logged?;
        Ok(std::mem::take(&mut self.stats))
    }

    fn conn(&mut self, slot: u32, gen: u32) -> Option<&mut UConn> {
        self.conns.get_mut(slot as usize)?.as_mut().filter(|c| c.gen == gen)
    }

    fn adopt(&mut self, n: NewConn) {
        let slot = self.free.pop().unwrap_or_else(|| {
            self.conns.push(None);
            (self.conns.len() - 1) as u32
        });
        self.next_gen = self.next_gen.wrapping_add(1) & 0xFF_FFFF;
        let raw = n.fd.as_raw_fd();
        self.conns[slot as usize] = Some(UConn {
            fd: Some(n.fd),
            raw,
            gen: self.next_gen,
            meter: n.meter,
            own: if self.bufs.is_none() { Some(vec![0u8; self.feat.buffer_size].into_boxed_slice()) } else { None },
            queue: VecDeque::new(),
            queued_bytes: 0,
            recv_armed: false,
            send_inflight: false,
            recv_cancelled: false,
            inflight: 0,
            peer_eof: false,
            starved: false,
            closing: None,
            last_active: self.now,
        });
        self.open += 1;
        self.arm_recv(slot);
    }

    fn arm_recv(&mut self, slot: u32) {
        let multishot = self.feat.multishot_recv;
        let bufring = self.bufs.is_some();
        let Some(c) = self.conns[slot as usize].as_mut() else { return };
        let fd = types::Fd(c.raw);
        let e = if multishot {
            opcode::RecvMulti::new(fd, BUF_GROUP).build()
        } else if bufring {
            opcode::Recv::new(fd, std::ptr::null_mut(), self.feat.buffer_size as u32)
                .buf_group(BUF_GROUP)
                .build()
                .flags(squeue::Flags::BUFFER_SELECT)
        } else {
            let Some(own) = c.own.as_mut() else { return };
            opcode::Recv::new(fd, own.as_mut_ptr(), own.len() as u32).build()
        };
        c.recv_armed = true;
        c.recv_cancelled = false;
        c.inflight += 1;
        let e = e.user_data(ud(Op::Recv, slot, c.gen));
        self.ring.push(e, &mut self.stats);
    }

    fn send_front(&mut self, slot: u32) {
        let Some(c) = self.conns[slot as usize].as_mut() else { return };
        let Some(ch) = c.queue.front().copied() else { return };
        let base = match ch.buf {
            BufRef::Ring(bid) => match &self.bufs {
                Some(b) => b.ptr(bid),
                None => return,
            },
            BufRef::Own => match &c.own {
                Some(o) => o.as_ptr(),
                None => return,
            },
        };
        // SAFETY: `off < len <= buffer size`, so the pointer stays inside the buffer.
        let ptr = unsafe { base.add(ch.off as usize) };
        c.send_inflight = true;
        c.inflight += 1;
        let e = opcode::Send::new(types::Fd(c.raw), ptr, ch.len - ch.off).build().user_data(ud(Op::Send, slot, c.gen));
        self.ring.push(e, &mut self.stats);
    }

    fn recycle(&mut self, buf: BufRef) {
        if let (BufRef::Ring(bid), Some(b)) = (buf, self.bufs.as_mut()) {
            b.recycle(bid);
            self.recycled = true;
        }
    }

    fn on_recv(&mut self, slot: u32, gen: u32, res: i32, flags: u32) {
        let terminal = !cqueue::more(flags);
        if terminal {
            self.ring.inflight -= 1;
        }
        let buf = cqueue::buffer_select(flags).map(BufRef::Ring);
        if let (Some(_), Some(b)) = (buf, self.bufs.as_mut()) {
            b.taken();
        }
        let multishot = self.feat.multishot_recv;
        let now = self.now;
        let Some(c) = self.conn(slot, gen) else {
            // Cannot happen (a slot is reused only after its last completion); if it did,
            // the buffer must still go back to the ring.
            if let Some(b) = buf {
                self.recycle(b);
            }
            return;
        };
        if terminal {
            c.recv_armed = false;
            c.inflight -= 1;
        }
        let mut give_back = None;
        let mut cancel = false;
        let mut close = None;
        let mut start_send = false;
        if res > 0 {
            c.meter.on_read(res as usize);
            c.last_active = now;
            if c.closing.is_some() {
                give_back = buf;
            } else {
                c.queue.push_back(Chunk { buf: buf.unwrap_or(BufRef::Own), off: 0, len: res as u32 });
                c.queued_bytes += res as usize;
                start_send = !c.send_inflight;
                // Flow control: a client that is not reading its echo stops being read.
                if multishot && c.recv_armed && !c.recv_cancelled && c.queued_bytes >= PENDING_HIGH_BYTES {
                    c.recv_cancelled = true;
                    cancel = true;
                }
            }
        } else {
            give_back = buf;
            match -res {
                0 => c.peer_eof = true,
                libc::ENOBUFS => {
                    c.starved = true;
                    self.stats.bufring_empty += 1;
                    self.starved.push_back((slot, gen));
                }
                libc::ECANCELED | libc::EINTR | libc::EAGAIN => {}
                e => close = Some(CloseReason::from_error(&io::Error::from_raw_os_error(e))),
            }
        }
        let recv_ud = ud(Op::Recv, slot, gen);
        if let Some(b) = give_back {
            self.recycle(b);
        }
        if cancel {
            self.ring
                .push(opcode::AsyncCancel::new(recv_ud).build().user_data(ud(Op::Cancel, slot, gen)), &mut self.stats);
        }
        if start_send {
            self.send_front(slot);
        }
        if let Some(r) = close {
            self.begin_close(slot, r);
        }
        self.after_io(slot);
    }

    fn on_send(&mut self, slot: u32, gen: u32, res: i32) {
        self.ring.inflight -= 1;
        let now = self.now;
        let Some(c) = self.conn(slot, gen) else { return };
        c.inflight -= 1;
        c.send_inflight = false;
        let mut done = None;
        let mut close = None;
        if res <= 0 || c.closing.is_some() {
            // Failed, or the connection is closing: nothing more will be sent.
            if c.closing.is_none() {
                close = Some(if res == 0 {
                    CloseReason::Error
                } else {
                    CloseReason::from_error(&io::Error::from_raw_os_error(-res))
                });
            }
            done = c.queue.pop_front().map(|ch| ch.buf);
        } else if let Some(front) = c.queue.front_mut() {
            c.last_active = now;
            front.off += res as u32;
            c.queued_bytes -= res as usize;
            if front.off >= front.len {
                done = c.queue.pop_front().map(|ch| ch.buf);
            }
        }
        let more = c.closing.is_none() && close.is_none() && !c.queue.is_empty();
        if let Some(b) = done {
            self.recycle(b);
        }
        if let Some(r) = close {
            self.begin_close(slot, r);
        }
        if more {
            // The rest of a short send, or the next chunk: always in order, one at a time.
            self.send_front(slot);
        }
        self.after_io(slot);
    }

    /// Decides what a connection needs next after any completion: close it, or arm its
    /// receive again.
    fn after_io(&mut self, slot: u32) {
        let bufring = self.bufs.is_some();
        let Some(c) = self.conns[slot as usize].as_mut() else { return };
        if c.closing.is_none() && c.peer_eof && c.queue.is_empty() && !c.send_inflight {
            // The client half-closed and has every byte back: done.
            c.closing = Some(CloseReason::Eof);
        }
        if c.closing.is_some() {
            if c.inflight == 0 {
                self.finish_close(slot);
            }
            return;
        }
        let drained_enough = if bufring { c.queued_bytes <= PENDING_LOW_BYTES } else { c.queue.is_empty() };
        if !c.recv_armed && !c.peer_eof && !c.starved && drained_enough {
            self.arm_recv(slot);
        }
    }

    fn begin_close(&mut self, slot: u32, reason: CloseReason) {
        let Some(c) = self.conns[slot as usize].as_mut() else { return };
        if c.closing.is_some() {
            return;
        }
        c.closing = Some(reason);
        // Queued chunks not being sent go back now; the one in flight returns with its
        // completion.
        let keep = usize::from(c.send_inflight);
        let dropped: Vec<BufRef> = c.queue.drain(keep..).map(|ch| ch.buf).collect();
        c.queued_bytes = c.queue.iter().map(|ch| (ch.len - ch.off) as usize).sum();
        let pending = c.inflight > 0;
        let (raw, gen) = (c.raw, c.gen);
        for b in dropped {
            self.recycle(b);
        }
        if pending {
            // Cancel every request on this descriptor; their completions come back with
            // -ECANCELED and the connection is closed after the last one.
            self.ring.push(
                opcode::AsyncCancel2::new(CancelBuilder::fd(types::Fd(raw)).all()).build().user_data(ud(
                    Op::Cancel,
                    slot,
                    gen,
                )),
                &mut self.stats,
            );
        }
    }

    /// Closes a connection with nothing in flight: close request, log row, free slot.
    fn finish_close(&mut self, slot: u32) {
        let Some(mut c) = self.conns[slot as usize].take() else { return };
        if let Some(fd) = c.fd.take() {
            // The close request takes ownership of the descriptor.
            let raw = fd.into_raw_fd();
            self.ring.push(
                opcode::Close::new(types::Fd(raw)).build().user_data(ud(Op::Close, slot, c.gen)),
                &mut self.stats,
            );
        }
        for ch in c.queue.drain(..) {
            self.recycle(ch.buf);
        }
        let reason = c.closing.unwrap_or(CloseReason::Error);
        self.stats.record(&mut self.rows, c.meter.finish(self.id, reason));
        self.free.push(slot);
        self.open -= 1;
        self.shared.open.fetch_sub(1, Ordering::Relaxed);
    }

    fn begin_stop(&mut self) {
        for slot in 0..self.conns.len() as u32 {
            self.begin_close(slot, CloseReason::Shutdown);
            self.after_io(slot);
        }
    }

    fn close_idle(&mut self, limit: Duration) {
        let now = self.now;
        for slot in 0..self.conns.len() as u32 {
            let idle = self.conns[slot as usize]
                .as_ref()
                .is_some_and(|c| c.closing.is_none() && now.duration_since(c.last_active) >= limit);
            if idle {
                self.begin_close(slot, CloseReason::Timeout);
                self.after_io(slot);
            }
        }
    }
}

/// Single-shot accepts kept armed at once when multishot accept is off.
const ACCEPTS_ARMED: usize = 16;

/// The acceptor's accept requests: one multishot accept, or [`ACCEPTS_ARMED`] single-shot
/// accepts, each with its own address buffer (so, unlike multishot, they report the peer).
struct Accepts {
    multishot: bool,
    /// Per single-shot request: the peer address the kernel fills in, and its length.
    addrs: Box<[(libc::sockaddr_storage, libc::socklen_t)]>,
    armed: Vec<bool>,
}

impl Accepts {
    fn new(multishot: bool) -> Accepts {
        let n = if multishot { 1 } else { ACCEPTS_ARMED };
        // SAFETY: sockaddr_storage is plain data; all zeroes is a valid value.
        let zero: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
        Accepts { multishot, addrs: vec![(zero, 0); n].into_boxed_slice(), armed: vec![false; n] }
    }

    fn any_armed(&self) -> bool {
        self.armed.iter().any(|&a| a)
    }

    /// Arms every request that is not armed.
    fn arm_all(&mut self, ring: &mut Ring, st: &mut ThreadStats) {
        let listen = types::Fixed(0);
        for i in 0..self.armed.len() {
            if self.armed[i] {
                continue;
            }
            let e = if self.multishot {
                opcode::AcceptMulti::new(listen).flags(libc::SOCK_CLOEXEC).build()
            } else {
                let (addr, len) = &mut self.addrs[i];
                *len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
                opcode::Accept::new(listen, (addr as *mut libc::sockaddr_storage).cast(), len)
                    .flags(libc::SOCK_CLOEXEC)
                    .build()
            };
            self.armed[i] = true;
            ring.push(e.user_data(ud(Op::Accept, i as u32, 0)), st);
        }
    }

    /// The peer of the connection request `i` just accepted, if it carried one.
    fn peer(&self, i: usize) -> Option<std::net::SocketAddr> {
        (!self.multishot).then(|| sys::sockaddr_to_std(&self.addrs[i].0))
    }
}

/// The acceptor: multishot accept on the registered listening socket; connections go to
/// workers round-robin with a MSG_RING doorbell when a worker's queue was empty.
fn accept_loop(
    this: &Uring,
    listener: &OwnedFd,
    shared: &Shared,
    inboxes: &[Inbox],
    targets: &[OwnedFd],
) -> io::Result<ThreadStats> {
    let mut st = ThreadStats::default();
    let mut rows: Vec<ConnRecord> = Vec::new();
    let mut raw_ring = this.build_ring(256, 1024)?;
    let mut ring = Ring::new(&mut raw_ring, &this.feat, &mut st);
    st.syscalls.add(Sys::IoUringRegister);
    ring.sub.register_files(&[listener.as_raw_fd()])?;
    // The address buffers must outlive every accept request: the loop below returns only
    // once none is in flight.
    let mut accepts = Accepts::new(this.feat.multishot_accept);
    accepts.arm_all(&mut ring, &mut st);
    ring.push(
        opcode::PollAdd::new(types::Fd(shared.stop.fd().as_raw_fd()), libc::POLLIN as u32).build().user_data(ud(
            Op::Stop,
            0,
            0,
        )),
        &mut st,
    );
    let retry = Timespec::new().nsec(ACCEPT_RETRY_MS as u32 * 1_000_000);
    let mut timer_armed = false;
    let mut stopping = false;
    let mut next = 0usize;
    let mut out_of_fds = OutOfFds::default();
    let mut cqes = Vec::with_capacity(256);
    loop {
        ring.enter(1, 0, stopping.then_some(Duration::from_millis(50)), &mut st)?;
        ring.reap(&mut cqes, &mut st);
        for &(data, res, flags) in &cqes {
            let (op, slot, _) = parse_ud(data);
            match op {
                Some(Op::Accept) => {
                    let i = slot as usize;
                    if !cqueue::more(flags) {
                        ring.inflight -= 1;
                        accepts.armed[i] = false;
                    }
                    if res >= 0 {
                        // SAFETY: a successful accept returns a new descriptor that we own.
                        let fd = unsafe { OwnedFd::from_raw_fd(res) };
                        out_of_fds.recovered();
                        let peer = accepts.peer(i).unwrap_or_else(|| {
                            // Multishot accept reports no address. A client that has
                            // already reset has none left to ask for: logged as 0.0.0.0:0.
                            st.syscalls.add(Sys::Getpeername);
                            sys::peer_addr(fd.as_fd()).unwrap_or_else(|_| std::net::SocketAddr::from(([0, 0, 0, 0], 0)))
                        });
                        let meter = ConnMeter::new(peer, fd.as_raw_fd());
                        let id = next % inboxes.len();
                        next = next.wrapping_add(1);
                        if !shared.admit() || stopping {
                            let reason = if shared.over_limit() && !stopping {
                                CloseReason::Rejected
                            } else {
                                CloseReason::Shutdown
                            };
                            st.rejected += u64::from(reason == CloseReason::Rejected);
                            st.record(&mut rows, meter.finish(id, reason));
                            drop(fd);
                            st.syscalls.add(Sys::Close);
                        } else {
                            shared.open.fetch_add(1, Ordering::Relaxed);
                            if inboxes[id].push(NewConn { fd, meter }) {
                                let bell = opcode::MsgRingData::new(
                                    types::Fd(targets[id].as_raw_fd()),
                                    0,
                                    ud(Op::Wake, id as u32, 0),
                                    None,
                                )
                                .build()
                                .flags(squeue::Flags::SKIP_SUCCESS)
                                .user_data(ud(Op::Wake, id as u32, 0));
                                ring.push_untracked(bell, &mut st);
                            }
                        }
                    } else {
                        let e = io::Error::from_raw_os_error(-res);
                        match -res {
                            libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM => {
                                st.accept_fd_exhausted += 1;
                                out_of_fds.hit(&e, shared.open.load(Ordering::Relaxed));
                                if accepts.any_armed() && !stopping {
                                    // Stop accepting until the retry timer: the listen queue
                                    // keeps the waiting clients meanwhile.
                                    ring.push(
                                        opcode::AsyncCancel2::new(CancelBuilder::fd(types::Fixed(0)).all())
                                            .build()
                                            .user_data(ud(Op::Cancel, 0, 0)),
                                        &mut st,
                                    );
                                }
                            }
                            libc::ECANCELED | libc::ECONNABORTED | libc::EINTR | libc::EPROTO | libc::EPERM => {}
                            _ => return Err(io::Error::new(e.kind(), format!("accept failed: {e}"))),
                        }
                    }
                    if !stopping && !timer_armed {
                        if out_of_fds.active {
                            if !accepts.any_armed() {
                                ring.push(opcode::Timeout::new(&retry).build().user_data(ud(Op::Timer, 0, 0)), &mut st);
                                timer_armed = true;
                            }
                        } else {
                            accepts.arm_all(&mut ring, &mut st);
                        }
                    }
                }
                Some(Op::Timer) => {
                    ring.inflight -= 1;
                    timer_armed = false;
                    if !stopping {
                        accepts.arm_all(&mut ring, &mut st);
                    }
                }
                Some(Op::Stop) => {
                    ring.inflight -= 1;
                    stopping = true;
                    // Cancel the accepts and the timer; a connection the kernel accepted
                    // before the cancel still arrives as a completion and is logged.
                    ring.push(
                        opcode::AsyncCancel2::new(CancelBuilder::any()).build().user_data(ud(Op::Cancel, 0, 0)),
                        &mut st,
                    );
                }
                Some(Op::Cancel) => ring.inflight -= 1,
                Some(Op::Wake) => {
                    // Only failed doorbells complete (SKIP_SUCCESS). The connection waits in
                    // the queue; the worker takes it at its next doorbell or at shutdown.
                    eprintln!(
                        "ringbench: MSG_RING to worker {} failed: {}",
                        slot_of(data),
                        io::Error::from_raw_os_error(-res)
                    );
                }
                _ => {}
            }
        }
        shared.log.append(&mut rows)?;
        if stopping && ring.inflight == 0 {
            break;
        }
    }
    Ok(st)
}
