//! An io_uring worker: one ring, one provided-buffer ring, and every connection it is
//! handed. One `io_uring_enter` per loop turn submits everything queued and waits; then
//! every completion is reaped and handed to its connection.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};
use std::rc::Rc;
use std::time::{Duration, Instant};

use io_uring::types;
use io_uring::IoUring;
use io_uring::{cqueue, opcode};

use super::buf_ring::RingBuf;
use super::buf_ring::{BufRing, BUF_GROUP};
use super::chunk::Filled;
use super::conn::{Io, UConn};
use super::probe::Features;
use super::ring::{Cqe, Ring};
use super::user_data::{self, zc_seq, Op};
use crate::book::{CloseReason, ThreadBook};
use crate::handoff::{Inbox, NewConn};
use crate::shared::Shared;
use crate::sys::{self, Sys};
use crate::table::{ConnTable, Key};
use crate::worker::IdleTick;

/// Submission-queue entries per worker ring (at most its completion-queue size).
const SQ_ENTRIES: u32 = 4096;
/// The largest file table a worker registers for direct descriptors (the open-file limit
/// caps it first: the kernel refuses a table larger than `RLIMIT_NOFILE`).
const DIRECT_SLOTS_MAX: u64 = 1 << 20;
/// How long a stopping worker waits for the kernel to return its cancelled requests.
const STOP_GRACE: Duration = Duration::from_secs(2);
/// How long a stopping worker waits in one turn.
const STOP_TURN: Duration = Duration::from_millis(50);
/// How long a worker waits in one turn while receives wait for buffers (see
/// [`Worker::rearm_starved`]).
const STARVED_TURN: Duration = Duration::from_millis(1);

/// What a worker sets up on its own thread (SINGLE_ISSUER: the creating thread is the
/// only submitter): its ring and, if used, its buffer ring.
pub struct Setup {
    ring: IoUring,
    bufs: Option<BufRing>,
    /// The buffer ring's memory is registered buffer 0 (for zero-copy sends).
    fixed: bool,
    /// The ring has a file table for direct descriptors.
    direct: bool,
    stats_registers: u64,
}

/// Creates worker `id`'s ring and buffers, and a duplicate of the ring's descriptor for
/// the acceptor: its `MSG_RING` target, which keeps the ring file alive however the
/// worker ends.
pub fn setup(feat: &Features) -> io::Result<(Setup, OwnedFd)> {
    let cq = feat.cq_entries.max(2);
    let ring = feat.build_ring(SQ_ENTRIES.min(cq), cq)?;
    // SAFETY: the ring's descriptor is open for as long as `ring` lives, which covers this
    // call; the clone is a new descriptor of our own.
    let target = unsafe { BorrowedFd::borrow_raw(ring.as_raw_fd()) }.try_clone_to_owned()?;
    let bufs = if feat.bufring {
        let b = BufRing::new(&ring.submitter(), feat.buffers, feat.buffer_size, feat.incremental)
            .map_err(|e| io::Error::new(e.kind(), format!("provided buffer ring: {e}")))?;
        Some(b)
    } else {
        None
    };
    let fixed = match &bufs {
        // SAFETY: the region is the buffer ring's memory, which lives until the worker
        // ends; it is unregistered there before the memory is freed, or leaked with it.
        // If the kernel refuses (a locked-memory limit, say), zero-copy sends go without.
        Some(b) if feat.regbuf => unsafe { ring.submitter().register_buffers(&[b.region()]) }.is_ok(),
        _ => false,
    };
    // A sparse file table with room for every connection this process may hold.
    let direct = feat.direct && {
        let slots = sys::nofile_limit().map_or(1024, |(soft, _)| soft).min(DIRECT_SLOTS_MAX);
        ring.submitter().register_files_sparse(slots as u32).is_ok()
    };
    let stats_registers = u64::from(bufs.is_some()) + u64::from(fixed) + u64::from(feat.direct);
    Ok((Setup { ring, stats_registers, bufs, fixed, direct }, target))
}

/// Incremental consumption: the buffer a completion's data lies in, and where in it the
/// data starts. A buffer the kernel keeps (`BUF_MORE`) stays in `filling`, its next start
/// moved past this data; one it is done with leaves `filling`, so it goes back to the
/// ring once every chunk of it has been sent.
fn fill_part(filling: &mut Vec<(u16, Rc<RingBuf>, u32)>, ring: &BufRing, bid: u16, cqe: &Cqe) -> (Rc<RingBuf>, u32) {
    let n = cqe.res.max(0) as u32;
    let more = cqueue::buffer_more(cqe.flags);
    let Some(i) = filling.iter().position(|(b, _, _)| *b == bid) else {
        let buf = Rc::new(ring.take(bid));
        if more {
            filling.push((bid, Rc::clone(&buf), n));
        }
        return (buf, 0);
    };
    let (_, buf, off) = &mut filling[i];
    let part = (Rc::clone(buf), *off);
    if more {
        *off += n;
    } else {
        filling.swap_remove(i);
    }
    part
}

/// Where the worker is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Serving,
    /// Closing everything since this instant; waiting for the kernel's completions.
    Stopping(Instant),
}

struct Worker<'a, 'r> {
    ring: Ring<'r>,
    feat: &'a Features,
    shared: &'a Shared,
    inbox: &'a Inbox,
    conns: ConnTable<UConn>,
    bufs: Option<BufRing>,
    fixed: bool,
    direct: bool,
    /// Buffers a receive completion handed over, on their way to its connection.
    taken: Filled,
    /// Incremental consumption: buffers the kernel is still filling (their last
    /// completion said `BUF_MORE`), each with where its next data starts. The worker's
    /// handle keeps such a buffer out of the ring until the kernel is done with it.
    filling: Vec<(u16, Rc<RingBuf>, u32)>,
    /// Connections whose receive ended for want of buffers, oldest first.
    starved: VecDeque<Key>,
    book: ThreadBook,
    now: Instant,
    phase: Phase,
}

/// Serves until the server stops, then closes every connection and waits for the kernel
/// to finish with them (up to [`STOP_GRACE`]; an abort does not wait).
pub fn run(
    feat: &Features,
    setup: Setup,
    shared: &Shared,
    inbox: &Inbox,
    mut book: ThreadBook,
) -> io::Result<ThreadBook> {
    let Setup { mut ring, bufs, fixed, direct, stats_registers } = setup;
    for _ in 0..stats_registers {
        book.stats.syscalls.count(Sys::IoUringRegister);
    }
    let ring = Ring::new(&mut ring, feat, &mut book.stats);
    let mut w = Worker {
        ring,
        feat,
        shared,
        inbox,
        conns: ConnTable::default(),
        bufs,
        fixed,
        direct,
        taken: Filled::default(),
        filling: Vec::new(),
        starved: VecDeque::new(),
        book,
        now: Instant::now(),
        phase: Phase::Serving,
    };
    let res = w.serve();
    w.finish(res)
}

impl<'r> Worker<'_, 'r> {
    /// The connection methods' view of the worker.
    fn io(&mut self) -> (Io<'_, 'r>, &mut ConnTable<UConn>) {
        let io = Io {
            ring: &mut self.ring,
            stats: &mut self.book.stats,
            bufs: self.bufs.as_ref(),
            multishot: self.feat.multishot_recv,
            sendvec: self.feat.sendvec,
            bundle: self.feat.bundle,
            recv_cap: self.feat.recv_cap,
            zc_min_bytes: self.feat.zc_min_bytes,
            fixed: self.fixed,
            direct: self.direct,
            buffer_size: self.feat.buffer_size,
            now: self.now,
        };
        (io, &mut self.conns)
    }

    fn serve(&mut self) -> io::Result<()> {
        let stop = opcode::PollAdd::new(types::Fd(self.shared.stop.fd().as_raw_fd()), libc::POLLIN as u32).build();
        self.ring.push(stop, Op::Stop as u8, Key { slot: 0, gen: 0 }, &mut self.book.stats);
        let mut idle = IdleTick::new(self.shared.cfg.idle_timeout);
        let mut cqes = Vec::with_capacity(1024);
        let mut arrivals = Vec::new();
        let mut last_reaped = 0usize;
        loop {
            let (want, min_wait_us, timeout) = self.wait_plan(last_reaped, idle.as_ref());
            self.ring.enter(want, min_wait_us, timeout, &mut self.book.stats)?;
            self.ring.reap(&mut cqes, &mut self.book.stats);
            last_reaped = cqes.len();
            self.now = Instant::now();
            let mut woken = false;
            for cqe in &cqes {
                woken |= self.on_cqe(cqe)?;
            }
            if woken && self.phase == Phase::Serving {
                self.inbox.take(&mut arrivals);
                for c in arrivals.drain(..) {
                    self.adopt(c);
                }
            }
            if let Some(b) = &self.bufs {
                b.publish();
            }
            self.rearm_starved();
            if let Some(limit) = idle.as_mut().and_then(|t| t.due(self.now)) {
                if self.phase == Phase::Serving {
                    self.close_all(self.conns.idle_keys(self.now, limit), CloseReason::Timeout);
                }
            }
            self.shared.write_rows(&mut self.book);
            if let Phase::Stopping(since) = self.phase {
                if self.conns.is_empty() && self.ring.inflight() == 0 {
                    return Ok(());
                }
                if self.shared.stop.is_abort() {
                    return Err(io::Error::other("aborted"));
                }
                if self.now.duration_since(since) > STOP_GRACE {
                    return Err(io::Error::other(format!(
                        "{} io_uring requests still in flight {} s after stop",
                        self.ring.inflight(),
                        STOP_GRACE.as_secs()
                    )));
                }
            }
        }
    }

    /// How the next enter waits: `(want, min_wait_us, timeout)`.
    ///
    /// Each request is about two completions (receive, send). Coalescing engages on the
    /// same condition as epoll's (a short last batch with many connections open) and then,
    /// like epoll's sleep, takes the whole window unless every connection has completed:
    /// returning after a fixed batch served connections in smaller, more frequent batches
    /// and less evenly (a higher p99 at the same mean; see the README).
    fn wait_plan(&self, last_reaped: usize, idle: Option<&IdleTick>) -> (usize, u32, Option<Duration>) {
        let coalesce = self.shared.cfg.coalesce();
        if let Phase::Stopping(_) = self.phase {
            return (1, 0, Some(STOP_TURN));
        }
        let threshold = 2 * coalesce.want(self.conns.len());
        let gather = threshold > 2 && last_reaped > 0 && last_reaped < threshold;
        let tick = idle.map(IdleTick::every);
        // Starved receives are re-armed a few per turn, so while buffers are there to give
        // a turn must come even if no completion does. (With none, only a completion can
        // bring one back, and it turns the loop itself.)
        let tick = if self.starved.is_empty() || self.rearm_budget() == 0 {
            tick
        } else {
            Some(tick.map_or(STARVED_TURN, |t| t.min(STARVED_TURN)))
        };
        match (gather, self.feat.min_wait) {
            (false, _) => (1, 0, tick),
            (true, true) => (2 * self.conns.len(), coalesce.wait_us, tick),
            // Without min_wait support the coalescing window is a plain timeout.
            (true, false) => (2 * self.conns.len(), 0, Some(coalesce.window())),
        }
    }

    /// Hands one completion to its connection; returns whether it was a doorbell.
    fn on_cqe(&mut self, cqe: &Cqe) -> io::Result<bool> {
        if cqe.tag == user_data::WAKE {
            return Ok(true);
        }
        if let Some(seq) = zc_seq(cqe.tag) {
            // A zero-copy send: its result, then (if that said more) its notification.
            if cqueue::notif(cqe.flags) {
                self.with_conn(cqe.key, |c, io| c.on_notif(seq, io));
            } else {
                self.with_conn(cqe.key, |c, io| c.on_send(cqe.res, cqe.more(), io));
            }
            return Ok(false);
        }
        match Op::from_tag(cqe.tag) {
            Some(Op::Recv) => self.on_recv(cqe),
            Some(Op::Send) => self.with_conn(cqe.key, |c, io| c.on_send(cqe.res, false, io)),
            Some(Op::Install) => self.with_conn(cqe.key, |c, io| c.on_install(cqe.res, io)),
            Some(Op::Cancel | Op::Close) => {}
            Some(Op::Stop) => self.begin_stop(),
            None => return Err(io::Error::other(format!("a completion with an unknown tag {:#x}: {cqe:?}", cqe.tag))),
        }
        Ok(false)
    }

    fn on_recv(&mut self, cqe: &Cqe) {
        // The buffer is ours from here on, whatever became of its connection: if the
        // connection is gone, dropping the handle returns it.
        let mut taken = std::mem::take(&mut self.taken);
        if let (Some(bid), Some(b)) = (cqe.buffer(), &self.bufs) {
            if self.feat.incremental {
                let part = fill_part(&mut self.filling, b, bid, cqe);
                self.book.stats.shared_buffer_receives += u64::from(part.1 > 0);
                taken.part = Some(part);
            } else {
                // A bundle's data filled its buffers in ring order, each to the full size.
                let n = if self.feat.bundle { (cqe.res.max(1) as usize).div_ceil(b.buffer_size()) } else { 1 };
                b.take_bundle(bid, n, &mut taken.bufs);
                self.book.stats.bundle_extra_buffers += n as u64 - 1;
            }
        }
        let mut starved = false;
        self.with_conn(cqe.key, |c, io| starved = c.on_recv(cqe, &mut taken, io));
        // A connection that is gone did not take them: dropping returns them to the ring.
        taken.clear();
        self.taken = taken;
        if starved {
            self.starved.push_back(cqe.key);
        }
    }

    /// Runs `f` on the connection `key` names (if it is still there), then settles it:
    /// finishes it if it is done, or lets it re-arm its receive.
    fn with_conn(&mut self, key: Key, f: impl FnOnce(&mut UConn, &mut Io<'_, '_>)) {
        let (mut io, conns) = self.io();
        let Some(c) = conns.get_mut(key) else { return };
        f(c, &mut io);
        if let Some(reason) = c.settle(&mut io) {
            self.finish_conn(key, reason);
        }
    }

    fn finish_conn(&mut self, key: Key, reason: CloseReason) {
        if let Some(c) = self.conns.close(key, reason, &mut self.book, self.shared) {
            let (mut io, _) = self.io();
            c.close(&mut io);
        }
    }

    fn adopt(&mut self, n: NewConn) {
        let own = (self.bufs.is_none()).then(|| vec![0u8; self.feat.buffer_size].into_boxed_slice());
        let key = self.conns.insert_with(|key| UConn::new(key, n.fd, n.meter, own));
        self.with_conn(key, |c, io| {
            c.arm_recv(io);
            c.install(io);
        });
    }

    /// Re-arms receives that ran out of buffers, one per buffer the ring holds now
    /// (re-arming all of them for a few buffers only buys a storm of ENOBUFS). This runs
    /// every turn, not only when buffers come back: a receive left starved when traffic
    /// stops would otherwise never be re-armed (found at 19,000 connections).
    ///
    /// A re-armed receive need not take a buffer: a multishot receive armed on an empty
    /// ring ends with ENOBUFS at once, data or not, so a starved connection may have
    /// nothing to read, and re-armed it waits without a completion. While any are left
    /// starved and buffers are free, the worker therefore turns at least every
    /// [`STARVED_TURN`], re-arming the next few each time. Without that, receive bundles stalled: a bundle that takes the
    /// ring's last buffers ends without ENOBUFS, its re-arm meets the empty ring and
    /// starves with nothing to read; with the buffers spent on such connections, the
    /// worker slept while others had a request unread (16 of 200 connections in one
    /// run; 3 of 8 runs with 2 buffers).
    fn rearm_starved(&mut self) {
        let mut budget = self.rearm_budget();
        while budget > 0 {
            let Some(key) = self.starved.pop_front() else { break };
            let mut rearmed = false;
            self.with_conn(key, |c, _| rearmed = c.unstarve());
            budget -= usize::from(rearmed);
        }
    }

    /// How many starved receives are worth re-arming now: one per buffer the kernel can
    /// pick. A buffer it is still filling (incremental consumption) is ours by count but
    /// still in its ring.
    fn rearm_budget(&self) -> usize {
        self.bufs.as_ref().map_or(0, BufRing::available) + self.filling.len()
    }

    fn begin_stop(&mut self) {
        if self.phase == Phase::Serving {
            self.phase = Phase::Stopping(self.now);
            self.close_all(self.conns.keys(), CloseReason::Shutdown);
        }
    }

    fn close_all(&mut self, keys: Vec<Key>, reason: CloseReason) {
        for key in keys {
            self.with_conn(key, |c, io| c.begin_close(reason, io));
        }
    }

    /// Ends the worker: every connection still held gets its row; buffers are freed only
    /// if no request can still reach them.
    fn finish(mut self, res: io::Result<()>) -> io::Result<ThreadBook> {
        let quiet = self.ring.inflight() == 0;
        let held: Vec<UConn> = self.conns.drain().collect();
        for c in held {
            self.book.closed(crate::table::Tracked::meter(&c), c.close_reason());
            self.shared.closed_one();
            let fd = if quiet { c.into_fd() } else { c.abandon() };
            match fd {
                // On an abort only the rows matter: the process exit closes descriptors.
                Some(fd) if self.shared.stop.is_abort() => std::mem::forget(fd),
                Some(fd) => self.book.stats.syscalls.close(fd),
                None => {}
            }
        }
        self.inbox.close_leftovers(self.book.id, &mut self.book, self.shared);
        self.shared.write_rows(&mut self.book);
        if let Some(b) = self.bufs.take() {
            if quiet {
                self.filling.clear();
                self.book.stats.syscalls.count(Sys::IoUringRegister);
                let _ = self.ring.sub.unregister_buf_ring(BUF_GROUP);
                if self.fixed {
                    self.book.stats.syscalls.count(Sys::IoUringRegister);
                    let _ = self.ring.sub.unregister_buffers();
                }
                drop(b);
            } else {
                // The kernel may still write into these buffers: never free them.
                std::mem::forget(b);
            }
        }
        match res {
            Ok(()) => Ok(self.book),
            // An abort ends the worker early on purpose; every row is written above.
            Err(_) if self.shared.stop.is_abort() => Ok(self.book),
            Err(e) => Err(io::Error::new(e.kind(), format!("uring worker {}: {e}", self.book.id))),
        }
    }
}
