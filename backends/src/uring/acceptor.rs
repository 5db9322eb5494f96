//! The io_uring acceptor: one multishot accept on the registered listening socket (or a
//! few single-shot ones, which carry the peer's address); connections go to workers
//! through the shared [`Router`], with an `IORING_OP_MSG_RING` doorbell when a worker's
//! queue was empty — an SQE in the next batch, not a syscall per connection.

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::time::Duration;

use io_uring::opcode;
use io_uring::squeue;
use io_uring::types::{self, CancelBuilder, Timespec};

use super::probe::Features;
use super::ring::{Cqe, Ring};
use super::user_data;
use crate::accept::{AcceptError, Router, ACCEPT_RETRY};
use crate::book::ThreadBook;
use crate::handoff::Inbox;
use crate::notice::Notice;
use crate::shared::Shared;
use crate::sys::{self, Sys};
use crate::table::Key;

/// Single-shot accepts kept armed at once when multishot accept is off.
const ACCEPTS_ARMED: usize = 16;
/// How long a stopping acceptor waits in one turn.
const STOP_TURN: Duration = Duration::from_millis(50);

/// The acceptor's operations, as `user_data` tags.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
enum Op {
    Accept = 1,
    /// The retry timer while descriptors are short.
    Timer = 2,
    Cancel = 3,
    Stop = 4,
}

impl Op {
    fn from_tag(tag: u8) -> Option<Op> {
        [Op::Accept, Op::Timer, Op::Cancel, Op::Stop].into_iter().find(|o| *o as u8 == tag)
    }
}

fn key(i: usize) -> Key {
    Key { slot: i as u32, gen: 0 }
}

/// The accept requests: one multishot accept, or [`ACCEPTS_ARMED`] single-shot accepts,
/// each with its own address buffer (so, unlike multishot, they report the peer). The
/// buffers must outlive every request: the loop returns only once none is in flight.
struct Accepts {
    multishot: bool,
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
    fn arm_all(&mut self, ring: &mut Ring, book: &mut ThreadBook) {
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
            ring.push(e, Op::Accept as u8, key(i), &mut book.stats);
        }
    }

    /// The peer of the connection request `i` just accepted, if it carried one.
    fn peer(&self, i: usize) -> Option<SocketAddr> {
        (!self.multishot).then(|| sys::sockaddr_to_std(&self.addrs[i].0))
    }
}

struct Acceptor<'a, 'r> {
    ring: Ring<'r>,
    accepts: Accepts,
    router: Router<'a>,
    /// Each worker's ring, the target of its doorbell.
    targets: &'a [OwnedFd],
    retry: Timespec,
    timer_armed: bool,
    stopping: bool,
}

/// Accepts until the server stops and every accept request has come back.
pub fn run(
    feat: &Features,
    listener: &OwnedFd,
    shared: &Shared,
    inboxes: &[Inbox],
    targets: &[OwnedFd],
    book: &mut ThreadBook,
) -> io::Result<()> {
    let mut raw_ring = feat.build_ring(256, 1024)?;
    let ring = Ring::new(&mut raw_ring, feat, &mut book.stats);
    book.stats.syscalls.count(Sys::IoUringRegister);
    ring.sub.register_files(&[listener.as_raw_fd()])?;
    let mut a = Acceptor {
        ring,
        accepts: Accepts::new(feat.multishot_accept),
        router: Router::new(shared, inboxes),
        targets,
        retry: Timespec::new().nsec(ACCEPT_RETRY.as_nanos() as u32),
        timer_armed: false,
        stopping: false,
    };
    a.accepts.arm_all(&mut a.ring, book);
    let stop = opcode::PollAdd::new(types::Fd(shared.stop.fd().as_raw_fd()), libc::POLLIN as u32).build();
    a.ring.push(stop, Op::Stop as u8, key(0), &mut book.stats);
    let mut cqes = Vec::with_capacity(256);
    loop {
        a.ring.enter(1, 0, a.stopping.then_some(STOP_TURN), &mut book.stats)?;
        a.ring.reap(&mut cqes, &mut book.stats);
        for cqe in &cqes {
            a.on_cqe(cqe, book)?;
        }
        shared.write_rows(book);
        if a.stopping && (a.ring.inflight() == 0 || shared.stop.is_abort()) {
            return Ok(());
        }
    }
}

impl Acceptor<'_, '_> {
    fn on_cqe(&mut self, cqe: &Cqe, book: &mut ThreadBook) -> io::Result<()> {
        if cqe.tag == user_data::WAKE {
            // Only failed doorbells complete (SKIP_SUCCESS). The connection waits in the
            // queue; the worker takes it at its next doorbell or at shutdown.
            self.router
                .shared()
                .notify(Notice::DoorbellFailed { worker: cqe.key.slot as usize, error: cqe.error().to_string() });
            return Ok(());
        }
        match Op::from_tag(cqe.tag) {
            Some(Op::Accept) => self.on_accept(cqe, book)?,
            Some(Op::Timer) => {
                self.timer_armed = false;
                if !self.stopping {
                    self.accepts.arm_all(&mut self.ring, book);
                }
            }
            Some(Op::Stop) => {
                self.stopping = true;
                // Cancel the accepts and the timer; a connection the kernel accepted
                // before the cancel still arrives as a completion and is logged.
                let cancel = opcode::AsyncCancel2::new(CancelBuilder::any()).build();
                self.ring.push(cancel, Op::Cancel as u8, key(0), &mut book.stats);
            }
            Some(Op::Cancel) => {}
            None => return Err(io::Error::other(format!("a completion with an unknown tag {:#x}: {cqe:?}", cqe.tag))),
        }
        Ok(())
    }

    fn on_accept(&mut self, cqe: &Cqe, book: &mut ThreadBook) -> io::Result<()> {
        let i = cqe.key.slot as usize;
        if !cqe.more() {
            self.accepts.armed[i] = false;
        }
        if cqe.res >= 0 {
            // SAFETY: a successful accept returns a new descriptor that we own.
            let fd = unsafe { OwnedFd::from_raw_fd(cqe.res) };
            let peer = match self.accepts.peer(i) {
                Some(p) => p,
                // Multishot accept reports no address. A client that has already reset has
                // none left to ask for: logged as 0.0.0.0:0.
                None => book.stats.syscalls.peer_addr(fd.as_fd()).unwrap_or(SocketAddr::from(([0, 0, 0, 0], 0))),
            };
            if let Some(w) = self.router.route(fd, peer, book) {
                self.ring_doorbell(w, book);
            }
        } else if self.router.failed(cqe.error(), book)? == AcceptError::OutOfResources
            && self.accepts.any_armed()
            && !self.stopping
        {
            // Stop accepting until the retry timer: the listen queue keeps the waiting
            // clients meanwhile.
            let cancel = opcode::AsyncCancel2::new(CancelBuilder::fd(types::Fixed(0)).all()).build();
            self.ring.push(cancel, Op::Cancel as u8, key(0), &mut book.stats);
        }
        if self.stopping || self.timer_armed {
            return Ok(());
        }
        if !self.router.paused() {
            self.accepts.arm_all(&mut self.ring, book);
        } else if !self.accepts.any_armed() {
            let timer = opcode::Timeout::new(&self.retry).build();
            self.ring.push(timer, Op::Timer as u8, key(0), &mut book.stats);
            self.timer_armed = true;
        }
        Ok(())
    }

    /// Posts a completion into worker `w`'s ring. Only a failure completes here.
    fn ring_doorbell(&mut self, w: usize, book: &mut ThreadBook) {
        let data = user_data::pack(user_data::WAKE, key(w));
        let bell = opcode::MsgRingData::new(types::Fd(self.targets[w].as_raw_fd()), 0, data, None)
            .build()
            .flags(squeue::Flags::SKIP_SUCCESS);
        self.ring.push(bell, user_data::WAKE, key(w), &mut book.stats);
    }
}
