//! One connection as an io_uring worker holds it: its echo queue, the state of its
//! receive, whether a send is in flight, and whether it is closing — and what it asks of
//! the ring after each completion.
//!
//! Rules the methods keep:
//! - one send in flight, from the front of the queue, so bytes leave in order; a short
//!   send is resubmitted from where it stopped. With vectored sends one `sendmsg` carries
//!   up to [`SEND_IOV_MAX`] queued chunks at once, straight from the receive buffers they
//!   arrived in: a 16 KiB write that came in as four 4 KiB completions leaves in one send,
//!   not four sends each waiting for the one before;
//! - flow control: a multishot receive is armed with a byte cap, the room left below
//!   [`PENDING_HIGH_BYTES`] of queued echo, so the kernel ends it there (Linux 6.17+;
//!   without the cap it is cancelled at the mark, and may have filled hundreds of buffers
//!   for one client by the time the cancel lands); it is re-armed only below
//!   [`PENDING_LOW_BYTES`] (with per-connection buffers, only once the queue is empty:
//!   the one buffer is in the queue);
//! - a connection is finished only when nothing of its is in flight, so its buffers
//!   outlive every request that points into them;
//! - a receive starved of ring buffers goes on into the connection's own buffer (made
//!   the first time, [`OWN_FALLBACK_BYTES`]) whenever that buffer is free: clients that
//!   send without reading their echoes each hold up to [`SEND_IOV_MAX`] + 1 buffers, so
//!   about 120 of them can hold a default ring, and without the fallback every other
//!   connection of the worker would wait for them to read;
//! - a zero-copy send's buffers are held until the kernel's notification says it has let
//!   go of them, which comes after the send's own completion. Each zero-copy send has its
//!   own tag ([`ZC_TAG`] with a sequence number), so a notification frees the buffers of
//!   the send it names, in whatever order notifications come; a chunk sent in part is
//!   shared between the sends that carry its halves.

use std::collections::VecDeque;
use std::io;
use std::os::fd::OwnedFd;
use std::time::Instant;

use io_uring::opcode;
use io_uring::squeue;

use super::buf_ring::{BufRing, BUF_GROUP};
use super::chunk::{Buf, Chunk, Filled};
use super::desc::{on_socket, Desc};
use super::ring::{Cqe, Ring};
use super::sqe::with_recv_cap;
use super::user_data::{self, Op, ZC_SEQS, ZC_TAG};
use crate::book::{CloseReason, ConnMeter, ThreadStats};
use crate::table::{Key, Tracked};

/// Stop receiving from a client once this much of its echo is queued: the same bound as
/// epoll's one read buffer, and it keeps one client that does not read from holding more
/// than 16 of a worker's 2048 default buffers.
pub const PENDING_HIGH_BYTES: usize = 64 * 1024;
/// Receive again once its queue has drained below this.
pub const PENDING_LOW_BYTES: usize = 16 * 1024;
/// Chunks one vectored send carries at most: [`PENDING_HIGH_BYTES`] of 4 KiB buffers.
pub const SEND_IOV_MAX: usize = 16;
/// The most a connection's own fallback buffer holds (a ring's buffers may be larger:
/// 64 KiB each with incremental consumption, too much to give every starved connection).
pub const OWN_FALLBACK_BYTES: usize = 4096;

/// Zero-copy sends of one connection whose notification is still due, at most: the next
/// send waits for one (half the sequence space, so a number is never reused while due).
const ZC_HELD_MAX: usize = ZC_SEQS as usize / 2;

/// Where the connection's receive stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Recv {
    /// No receive armed; arm one when the queue allows.
    Idle,
    Armed,
    /// Armed, and a flow-control cancel is on its way.
    Cancelling,
    /// Ended for want of buffers (ENOBUFS); re-armed as buffers come back.
    Starved,
    /// The client closed its side: nothing more to receive.
    Eof,
}

/// Where the connection's send stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sending {
    Idle,
    /// A send is in flight carrying the first `chunks` chunks of the queue; `zc`: a
    /// zero-copy one, with its sequence number.
    Flying {
        chunks: u16,
        zc: Option<u8>,
    },
}

impl Sending {
    /// Chunks at the front of the queue the kernel may be reading.
    fn chunks(self) -> usize {
        match self {
            Sending::Idle => 0,
            Sending::Flying { chunks, .. } => usize::from(chunks),
        }
    }
}

/// A vectored send's message: it must stay where it is until the send completes, so it
/// lives in a box of its own, made once per connection on its first vectored send.
struct SendVec {
    iov: [libc::iovec; SEND_IOV_MAX],
    msg: libc::msghdr,
}

impl SendVec {
    fn new() -> Box<SendVec> {
        // SAFETY: iovec and msghdr are plain C structs for which all-zero bytes are valid
        // (null pointers, zero lengths).
        Box::new(unsafe { std::mem::zeroed() })
    }
}

/// Whether the connection is serving or on its way out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    Open,
    /// Closing for this reason once nothing is in flight.
    Closing(CloseReason),
}

/// What the connection's methods need from the worker.
pub struct Io<'a, 'r> {
    pub ring: &'a mut Ring<'r>,
    pub stats: &'a mut ThreadStats,
    pub bufs: Option<&'a BufRing>,
    pub multishot: bool,
    /// Send several queued chunks in one vectored send.
    pub sendvec: bool,
    /// Receive bundles.
    pub bundle: bool,
    /// Multishot receives capped at the flow-control headroom.
    pub recv_cap: bool,
    /// Zero-copy sends from this many bytes on.
    pub zc_min_bytes: Option<u32>,
    /// The buffer ring's memory is registered buffer 0.
    pub fixed: bool,
    /// Connections move to direct descriptors (the ring's file table has room).
    pub direct: bool,
    pub buffer_size: usize,
    pub now: Instant,
}

pub struct UConn {
    /// Its socket: a regular descriptor or a slot of the ring's file table.
    desc: Desc,
    key: Key,
    meter: ConnMeter,
    /// Without a buffer ring: this connection's receive buffer. With one: its fallback
    /// for when the ring has none to give, made the first time that happens.
    own: Option<Box<[u8]>>,
    queue: VecDeque<Chunk>,
    queued_bytes: usize,
    recv: Recv,
    send: Sending,
    /// The vectored send's message, once one was needed.
    vec: Option<Box<SendVec>>,
    /// Buffers of zero-copy sends whose notification is due, by sequence number.
    zc_held: VecDeque<(u8, Vec<Buf>)>,
    zc_next: u8,
    phase: Phase,
}

impl Tracked for UConn {
    fn meter(&self) -> &ConnMeter {
        &self.meter
    }
}

impl UConn {
    pub fn new(key: Key, fd: OwnedFd, meter: ConnMeter, own: Option<Box<[u8]>>) -> UConn {
        UConn {
            desc: Desc::Plain(fd),
            key,
            meter,
            own,
            queue: VecDeque::new(),
            queued_bytes: 0,
            recv: Recv::Idle,
            send: Sending::Idle,
            vec: None,
            zc_held: VecDeque::new(),
            zc_next: 0,
            phase: Phase::Open,
        }
    }

    /// Something of this connection's is in flight (the kernel may touch its buffers).
    pub fn in_flight(&self) -> bool {
        matches!(self.recv, Recv::Armed | Recv::Cancelling)
            || self.send != Sending::Idle
            || !self.zc_held.is_empty()
            || self.desc.installing()
    }

    /// Moves the connection to a direct descriptor, if they are on (see [`Desc`]).
    pub fn install(&mut self, io: &mut Io<'_, '_>) {
        if io.direct {
            if let Some(e) = self.desc.install() {
                self.push(io, e, Op::Install);
            }
        }
    }

    /// The install completed: from now on requests name the slot; the regular descriptor
    /// is closed through the ring.
    pub fn on_install(&mut self, res: i32, io: &mut Io<'_, '_>) {
        if let Some(e) = self.desc.installed(res) {
            self.push(io, e, Op::Close);
        }
    }

    pub fn is_open(&self) -> bool {
        self.phase == Phase::Open
    }

    fn push(&self, io: &mut Io<'_, '_>, e: squeue::Entry, op: Op) {
        io.ring.push(e, op as u8, self.key, io.stats);
    }

    /// Arms a receive: multishot from the buffer ring, single-shot from it, or into the
    /// connection's own buffer.
    pub fn arm_recv(&mut self, io: &mut Io<'_, '_>) {
        let target = self.desc.target();
        // Capped, the kernel ends the receive once the queue could reach the high mark,
        // instead of filling buffers until the cancel lands (hundreds of them for one
        // client whose socket holds a backlog). Never 0: that means no cap.
        let capped = |e| match io.recv_cap {
            true => with_recv_cap(e, PENDING_HIGH_BYTES.saturating_sub(self.queued_bytes).max(1) as u32),
            false => e,
        };
        let e = if io.multishot && io.bundle {
            capped(on_socket!(target, |fd| opcode::RecvMultiBundle::new(fd, BUF_GROUP).build()))
        } else if io.multishot {
            capped(on_socket!(target, |fd| opcode::RecvMulti::new(fd, BUF_GROUP).build()))
        } else if io.bufs.is_some() {
            let size = io.buffer_size as u32;
            on_socket!(target, |fd| opcode::Recv::new(fd, std::ptr::null_mut(), size)
                .buf_group(BUF_GROUP)
                .build()
                .flags(squeue::Flags::BUFFER_SELECT))
        } else {
            let Some(own) = self.own.as_mut() else { return };
            let (ptr, len) = (own.as_mut_ptr(), own.len() as u32);
            on_socket!(target, |fd| opcode::Recv::new(fd, ptr, len).build())
        };
        self.recv = Recv::Armed;
        self.push(io, e, Op::Recv);
    }

    /// Whether the own buffer may be received into: nothing queued lies in it, and no
    /// zero-copy send may still be reading it (held sends are not told apart by buffer,
    /// so any held one counts).
    fn own_free(&self) -> bool {
        self.zc_held.is_empty() && !self.queue.iter().any(|ch| matches!(ch.buf, Buf::Own))
    }

    /// A starved receive goes on into the connection's own buffer, single-shot: the ring
    /// is tried again after it completes (see [`UConn::settle`]).
    fn arm_own_recv(&mut self, io: &mut Io<'_, '_>) {
        let size = io.buffer_size.min(OWN_FALLBACK_BYTES);
        let own = self.own.get_or_insert_with(|| vec![0u8; size].into_boxed_slice());
        let (ptr, len) = (own.as_mut_ptr(), own.len() as u32);
        let target = self.desc.target();
        let e = on_socket!(target, |fd| opcode::Recv::new(fd, ptr, len).build());
        io.stats.own_buffer_receives += 1;
        self.recv = Recv::Armed;
        self.push(io, e, Op::Recv);
    }

    /// Where a chunk's unsent bytes start.
    fn unsent(&self, ch: &Chunk) -> Option<*const u8> {
        let base = match &ch.buf {
            Buf::Ring(b) => b.ptr(),
            Buf::Shared(b) => b.ptr(),
            Buf::Own => self.own.as_ref()?.as_ptr(),
        };
        // SAFETY: `off < len <= buffer size`, so the pointer stays inside the buffer.
        Some(unsafe { base.add(ch.off as usize) })
    }

    /// Sends the front of the queue (from where a short send stopped): the front chunk,
    /// or with vectored sends up to [`SEND_IOV_MAX`] chunks in one `sendmsg` — zero-copy
    /// if it is large enough and zero-copy sends are on.
    fn send_front(&mut self, io: &mut Io<'_, '_>) {
        let n = if io.sendvec { self.queue.len().min(SEND_IOV_MAX) } else { self.queue.len().min(1) };
        if n == 0 {
            return;
        }
        // Summed only when zero-copy sends are on: this is every send's path.
        let zc = io.zc_min_bytes.is_some_and(|min| {
            self.queue.iter().take(n).map(|ch| (ch.len - ch.off) as usize).sum::<usize>() >= min as usize
        });
        if zc && self.zc_held.len() >= ZC_HELD_MAX {
            // Resumed by the next notification (`on_notif`).
            return;
        }
        // Registered buffer 0 is the buffer ring's memory, where every chunk lies but
        // those in the connection's own fallback buffer.
        let fixed = (zc && io.fixed && !self.queue.iter().take(n).any(|ch| matches!(ch.buf, Buf::Own))).then_some(0);
        let target = self.desc.target();
        let e = if n == 1 {
            let Some(ch) = self.queue.front() else { return };
            let Some(ptr) = self.unsent(ch) else { return };
            let len = ch.len - ch.off;
            if zc {
                on_socket!(target, |fd| opcode::SendZc::new(fd, ptr, len).buf_index(fixed).build())
            } else {
                on_socket!(target, |fd| opcode::Send::new(fd, ptr, len).build())
            }
        } else {
            let mut v = self.vec.take().unwrap_or_else(SendVec::new);
            for (slot, ch) in v.iov.iter_mut().zip(self.queue.iter().take(n)) {
                let Some(ptr) = self.unsent(ch) else { return };
                *slot = libc::iovec { iov_base: ptr.cast_mut().cast(), iov_len: (ch.len - ch.off) as usize };
            }
            v.msg.msg_iov = v.iov.as_mut_ptr();
            v.msg.msg_iovlen = n;
            let msg: *const libc::msghdr = &v.msg;
            let e = if zc {
                on_socket!(target, |fd| opcode::SendMsgZc::new(fd, msg).buf_index(fixed).build())
            } else {
                on_socket!(target, |fd| opcode::SendMsg::new(fd, msg).build())
            };
            // The box stays in the connection until the send completes (see `abandon`).
            self.vec = Some(v);
            e
        };
        let seq = zc.then(|| {
            let seq = self.zc_next;
            self.zc_next = (seq + 1) % ZC_SEQS;
            seq
        });
        self.send = Sending::Flying { chunks: n as u16, zc: seq };
        let tag = seq.map_or(Op::Send as u8, |q| ZC_TAG | q);
        io.ring.push(e, tag, self.key, io.stats);
    }

    /// `n` bytes from the front of the queue left: the chunks they covered go (their
    /// buffers back to the ring, or into `hold` for a zero-copy send's notification), a
    /// chunk sent in part keeps its rest (and `hold` shares it).
    fn consume(&mut self, mut n: usize, mut hold: Option<&mut Vec<Buf>>) {
        self.queued_bytes -= n.min(self.queued_bytes);
        while n > 0 {
            let Some(front) = self.queue.front_mut() else { return };
            let left = (front.len - front.off) as usize;
            if n < left {
                front.off += n as u32;
                if let Some(h) = hold {
                    h.extend(front.buf.share());
                }
                return;
            }
            n -= left;
            if let (Some(ch), Some(h)) = (self.queue.pop_front(), hold.as_deref_mut()) {
                h.push(ch.buf);
            }
        }
    }

    /// A receive completed, with the buffers the kernel filled in `bufs` (several for a
    /// bundle, none without a buffer ring); takes them all. Returns true when the receive
    /// ended for want of buffers (the worker re-arms it as buffers come back).
    pub fn on_recv(&mut self, cqe: &Cqe, got: &mut Filled, io: &mut Io<'_, '_>) -> bool {
        if !cqe.more() {
            self.recv = Recv::Idle;
        }
        if cqe.res > 0 {
            let n = cqe.res as usize;
            self.meter.on_read(n, io.now);
            if self.is_open() {
                self.queue_echo(got, n, io);
            }
            got.clear();
            return false;
        }
        got.clear();
        match -cqe.res {
            0 => self.recv = Recv::Eof,
            libc::ENOBUFS => {
                self.recv = Recv::Starved;
                io.stats.bufring_empty += 1;
                return true;
            }
            libc::ECANCELED | libc::EINTR | libc::EAGAIN => {}
            _ => self.begin_close(CloseReason::from_error(&cqe.error()), io),
        }
        false
    }

    fn queue_echo(&mut self, got: &mut Filled, n: usize, io: &mut Io<'_, '_>) {
        let bufs = &mut got.bufs;
        if let Some((buf, off)) = got.part.take() {
            // Incremental consumption: the data is the next `n` bytes of a buffer that
            // other receives may share.
            self.queue.push_back(Chunk { buf: Buf::Shared(buf), off, len: off + n as u32 });
        } else if bufs.is_empty() {
            self.queue.push_back(Chunk { buf: Buf::Own, off: 0, len: n as u32 });
        } else {
            // A bundle fills its buffers in order, each to the full size but the last.
            let mut left = n;
            for b in bufs.drain(..) {
                let len = left.min(io.buffer_size);
                left -= len;
                self.queue.push_back(Chunk { buf: Buf::Ring(b), off: 0, len: len as u32 });
            }
        }
        self.queued_bytes += n;
        if self.send == Sending::Idle {
            self.send_front(io);
        }
        // Flow control: a client that is not reading its echo stops being read.
        if io.multishot && self.recv == Recv::Armed && self.queued_bytes >= PENDING_HIGH_BYTES {
            self.recv = Recv::Cancelling;
            self.cancel(Op::Recv, io);
        }
    }

    /// The send in flight completed with `res`; `more`: a zero-copy notification follows.
    pub fn on_send(&mut self, res: i32, more: bool, io: &mut Io<'_, '_>) {
        let flying = std::mem::replace(&mut self.send, Sending::Idle);
        let flown = flying.chunks();
        let hold = match flying {
            Sending::Flying { zc: Some(seq), .. } if more => Some(seq),
            _ => None,
        };
        if !self.is_open() || res <= 0 {
            // Closing or failed: the chunks that were in flight were kept until now; they
            // go, or wait for the notification.
            let bufs: Vec<Buf> = self.queue.drain(..flown.min(self.queue.len())).map(|ch| ch.buf).collect();
            self.queued_bytes = self.queue.iter().map(|ch| (ch.len - ch.off) as usize).sum();
            if let Some(seq) = hold {
                self.zc_held.push_back((seq, bufs));
            }
        }
        if !self.is_open() {
            return;
        }
        if res <= 0 {
            let reason = if res == 0 {
                CloseReason::Error
            } else {
                CloseReason::from_error(&io::Error::from_raw_os_error(-res))
            };
            self.begin_close(reason, io);
            return;
        }
        self.meter.touch(io.now);
        match hold {
            Some(seq) => {
                let mut bufs = Vec::new();
                self.consume(res as usize, Some(&mut bufs));
                self.zc_held.push_back((seq, bufs));
            }
            None => self.consume(res as usize, None),
        }
        // The rest of a short send, or the next chunks: always in order, one send at a time.
        self.send_front(io);
    }

    /// The kernel let go of zero-copy send `seq`'s buffers: they go back. A send that
    /// waited for room among the held ones goes now.
    pub fn on_notif(&mut self, seq: u8, io: &mut Io<'_, '_>) {
        io.stats.zc_notifications += 1;
        if let Some(i) = self.zc_held.iter().position(|(s, _)| *s == seq) {
            self.zc_held.remove(i);
        }
        if self.is_open() && self.send == Sending::Idle {
            self.send_front(io);
        }
    }

    /// Decides what the connection needs after any completion: `Some(reason)` when it is
    /// finished (closing, nothing in flight); otherwise it re-arms its receive if the
    /// queue allows.
    pub fn settle(&mut self, io: &mut Io<'_, '_>) -> Option<CloseReason> {
        if self.is_open() && self.recv == Recv::Eof && self.queue.is_empty() && self.send == Sending::Idle {
            // The client half-closed and has every byte back: done.
            self.phase = Phase::Closing(CloseReason::Eof);
        }
        match self.phase {
            Phase::Closing(reason) => (!self.in_flight()).then_some(reason),
            Phase::Open => {
                // The one own buffer is free once nothing queued or held points into it.
                let drained = if io.bufs.is_some() {
                    self.queued_bytes <= PENDING_LOW_BYTES
                } else {
                    self.queue.is_empty() && self.zc_held.is_empty()
                };
                if self.recv == Recv::Idle && drained {
                    self.arm_recv(io);
                } else if self.recv == Recv::Starved && drained && io.bufs.is_some() && self.own_free() {
                    // The ring ran dry on this receive: on at once into the own buffer
                    // rather than wait for buffers that clients not reading may never
                    // give back. (Its entry in the worker's starved list finds it armed.)
                    self.arm_own_recv(io);
                }
                None
            }
        }
    }

    /// Starts closing for `reason`: queued chunks not being sent go back now (those in
    /// flight return with its completion), and each request in flight is cancelled; the
    /// connection is finished after the last completion.
    ///
    /// Requests are cancelled by their own `user_data`, which the kernel finds in a hash
    /// table. Cancelling "everything on this descriptor" instead makes it scan every
    /// pending request of the ring, once per connection: a stop under 19,000 connections
    /// took 3.9 s that way.
    pub fn begin_close(&mut self, reason: CloseReason, io: &mut Io<'_, '_>) {
        if !self.is_open() {
            return;
        }
        self.phase = Phase::Closing(reason);
        self.queue.truncate(self.send.chunks());
        self.queued_bytes = self.queue.iter().map(|ch| (ch.len - ch.off) as usize).sum();
        if self.recv == Recv::Armed {
            self.recv = Recv::Cancelling;
            self.cancel(Op::Recv, io);
        }
        if self.send != Sending::Idle {
            self.cancel(Op::Send, io);
        }
    }

    /// Cancels this connection's request `op` (a recv or a send).
    fn cancel(&self, op: Op, io: &mut Io<'_, '_>) {
        let target = user_data::pack(op as u8, self.key);
        self.push(io, opcode::AsyncCancel::new(target).build(), Op::Cancel);
    }

    /// Buffers are back: a starved receive may be armed again. Returns whether it was
    /// starved.
    pub fn unstarve(&mut self) -> bool {
        let was = self.recv == Recv::Starved;
        if was {
            self.recv = Recv::Idle;
        }
        was
    }

    /// Hands the descriptor of a finished connection to a close request; the connection
    /// (its queue, its buffers) is dropped here.
    pub fn close(mut self, io: &mut Io<'_, '_>) {
        debug_assert!(!self.in_flight(), "closing a connection with requests in flight");
        if let Some(e) = self.desc.close() {
            self.push(io, e, Op::Close);
        }
    }

    /// The reason its row gives: why it was closing, or `shutdown` if it was still open
    /// when its worker ended.
    pub fn close_reason(&self) -> CloseReason {
        match self.phase {
            Phase::Closing(r) => r,
            Phase::Open => CloseReason::Shutdown,
        }
    }

    /// The regular descriptor of a connection with nothing in flight (its buffers are
    /// freed); a direct one closes with the ring's file table.
    pub fn into_fd(mut self) -> Option<OwnedFd> {
        std::mem::replace(&mut self.desc, Desc::Closed).into_fd()
    }

    /// For a worker that cannot wait for the kernel: the descriptor is closed, but any
    /// buffer the kernel might still write into is leaked, never freed.
    pub fn abandon(mut self) -> Option<OwnedFd> {
        std::mem::forget(self.own.take());
        std::mem::forget(std::mem::take(&mut self.queue));
        std::mem::forget(self.vec.take());
        std::mem::forget(std::mem::take(&mut self.zc_held));
        match std::mem::replace(&mut self.desc, Desc::Closed) {
            // The kernel may still write the slot it picks into this box.
            Desc::Installing { fd, slot } => {
                std::mem::forget(slot);
                Some(fd)
            }
            d => d.into_fd(),
        }
    }
}
