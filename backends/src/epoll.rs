//! The edge-triggered, worker-per-epoll backend: the seed's design, done right.
//!
//! The acceptor waits on the listening socket with its own epoll and accepts with
//! `accept4` until EAGAIN; connections go round-robin to N workers. Each worker owns an
//! epoll instance and registers each connection once, for `EPOLLIN | EPOLLOUT | EPOLLRDHUP`
//! edge-triggered, so serving a request never needs `epoll_ctl`.
//!
//! Edge-triggered means an event is only reported when readiness *changes*, so a worker
//! must leave every connection in a state where the next change will be reported:
//! - it reads until EAGAIN, or until a read returns less than the buffer (the receive
//!   queue was then empty; new data makes a new edge) — saving the EAGAIN read is what
//!   keeps a 64-byte request at two syscalls (read + write);
//! - once the peer has half-closed (EPOLLRDHUP) no new edge will come, so it reads to 0;
//! - when a write is partial the socket is full, so the rest is kept and sent on the next
//!   EPOLLOUT edge. While bytes are pending the worker reads nothing more from that client:
//!   memory per connection stays bounded by one read buffer, and a client that does not
//!   read is slowed by TCP flow control instead of filling the server's memory.

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::time::Instant;

use crate::accept::{readiness_loop, Router};
use crate::backend::Backend;
use crate::book::{CloseReason, ConnMeter, ThreadBook, ThreadStats};
use crate::config::ServerConfig;
use crate::handoff::{Inbox, NewConn};
use crate::notice::Notice;
use crate::shared::Shared;
use crate::sys::{self, Epoll, Event, Events, Interest, Syscalls, Token};
use crate::table::{ConnTable, Key, Tracked};
use crate::worker::{serve_with_workers, IdleTick};

/// Bytes read per `read` call; also the most a connection can have pending.
pub const READ_BUF_BYTES: usize = 64 * 1024;
/// Events fetched per `epoll_wait`.
const EVENTS_PER_WAIT: usize = 1024;
/// A pending buffer larger than this is freed once drained, so a burst does not pin
/// memory for the rest of a connection's life.
const KEEP_PENDING_CAPACITY_BYTES: usize = 16 * 1024;

// Connection tokens are packed keys, whose top byte is always zero.
const TOKEN_STOP: Token = Token(u64::MAX);
const TOKEN_WAKE: Token = Token(u64::MAX - 1);

/// The epoll backend.
pub struct EpollBackend;

/// Builds the backend (the registry's constructor): nothing to probe.
pub fn build(_cfg: &ServerConfig) -> io::Result<Box<dyn Backend>> {
    Ok(Box::new(EpollBackend))
}

impl Backend for EpollBackend {
    fn serve(self: Box<Self>, listener: OwnedFd, shared: &Arc<Shared>) -> io::Result<Vec<ThreadStats>> {
        let shared: &Shared = shared;
        serve_with_workers(
            shared,
            "epoll",
            |_| Setup::new(shared),
            |setup, inbox, book| Worker::new(setup, shared, inbox, book).run(),
            |inboxes, bells: Vec<Arc<OwnedFd>>, book| {
                let mut router = Router::new(shared, inboxes);
                readiness_loop(&listener, &mut router, book, libc::SOCK_NONBLOCK, |router, fd, peer, book| {
                    if let Some(w) = router.route(fd, peer, book) {
                        book.stats.syscalls.signal_eventfd(bells[w].as_fd())?;
                    }
                    Ok(())
                })
            },
        )
    }
}

/// What a worker sets up on its own thread: its epoll with the stop signal and its
/// doorbell registered.
struct Setup {
    ep: Epoll,
    bell: Arc<OwnedFd>,
    sc: Syscalls,
}

impl Setup {
    fn new(shared: &Shared) -> io::Result<(Setup, Arc<OwnedFd>)> {
        let mut sc = Syscalls::default();
        let ep = Epoll::new()?;
        let bell = Arc::new(sys::eventfd()?);
        // The stop signal is level-triggered: once set, every wait returns at once. The
        // doorbell is edge-triggered and never read: each write is a new edge, so its
        // counter never needs resetting (it would take 2^64 wake-ups to saturate), and a
        // read would cost a syscall per batch of arrivals.
        ep.add(&mut sc, shared.stop.fd(), Interest::READ, TOKEN_STOP)?;
        ep.add(&mut sc, bell.as_fd(), Interest::READ_EDGE, TOKEN_WAKE)?;
        Ok((Setup { ep, bell: Arc::clone(&bell), sc }, bell))
    }
}

/// Whether a connection may have unread data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Input {
    /// Everything readable has been read; the next edge will say when more arrives.
    Drained,
    /// The last edge said there may be data we have not read.
    Readable,
    /// The peer half-closed: no further edge will come, so read until 0.
    PeerClosed,
}

/// One connection as an epoll worker holds it.
struct Conn {
    fd: OwnedFd,
    meter: ConnMeter,
    /// Echo bytes the socket would not take yet; sent from `sent` on at the next EPOLLOUT.
    pending: Vec<u8>,
    sent: usize,
    input: Input,
}

impl Tracked for Conn {
    fn meter(&self) -> &ConnMeter {
        &self.meter
    }
}

impl Conn {
    fn has_pending(&self) -> bool {
        self.sent < self.pending.len()
    }

    /// Notes what an edge reported.
    fn on_edge(&mut self, ev: &Event) {
        if ev.peer_closed() {
            self.input = Input::PeerClosed;
        } else if ev.readable() && self.input == Input::Drained {
            self.input = Input::Readable;
        }
    }

    /// Does what the connection's readiness allows: first flush what is pending, then, if
    /// nothing is pending, read and echo. `Some(reason)` means the connection is over.
    fn pump(&mut self, can_write: bool, scratch: &mut [u8], sc: &mut Syscalls, now: Instant) -> Option<CloseReason> {
        if self.has_pending() {
            if !can_write {
                return None;
            }
            if let Err(r) = self.flush(sc, now) {
                return Some(r);
            }
            if self.has_pending() {
                return None;
            }
        }
        while self.input != Input::Drained {
            match sc.read(self.fd.as_fd(), scratch) {
                Ok(0) => return Some(CloseReason::Eof),
                Ok(n) => {
                    self.meter.on_read(n, now);
                    match self.echo(&scratch[..n], sc) {
                        Err(r) => return Some(r),
                        // The socket is full: stop reading until it drains.
                        Ok(true) => return None,
                        Ok(false) => {}
                    }
                    if n < scratch.len() && self.input == Input::Readable {
                        self.input = Input::Drained;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.input = Input::Drained,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Some(CloseReason::from_error(&e)),
            }
        }
        None
    }

    /// Writes `data`; what the socket does not take is kept in `pending`. Returns whether
    /// anything was kept.
    fn echo(&mut self, data: &[u8], sc: &mut Syscalls) -> Result<bool, CloseReason> {
        let mut off = 0;
        loop {
            match sc.write(self.fd.as_fd(), &data[off..]) {
                Ok(m) => {
                    off += m;
                    if off == data.len() {
                        return Ok(false);
                    }
                    // A short write means the send buffer is full: retrying now would only
                    // get EAGAIN. Keep the rest for the EPOLLOUT edge.
                    break;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(CloseReason::from_error(&e)),
            }
        }
        self.pending.clear();
        self.pending.extend_from_slice(&data[off..]);
        self.sent = 0;
        Ok(true)
    }

    /// Sends pending bytes, in order, until done or the socket is full again.
    fn flush(&mut self, sc: &mut Syscalls, now: Instant) -> Result<(), CloseReason> {
        while self.has_pending() {
            match sc.write(self.fd.as_fd(), &self.pending[self.sent..]) {
                Ok(m) => {
                    self.sent += m;
                    self.meter.touch(now);
                    if self.has_pending() {
                        // Short: the socket is full again; the next EPOLLOUT edge resumes.
                        return Ok(());
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(CloseReason::from_error(&e)),
            }
        }
        self.pending.clear();
        self.sent = 0;
        if self.pending.capacity() > KEEP_PENDING_CAPACITY_BYTES {
            self.pending = Vec::new();
        }
        Ok(())
    }
}

struct Worker<'a> {
    ep: Epoll,
    /// Keeps the doorbell open for as long as it is registered.
    _bell: Arc<OwnedFd>,
    shared: &'a Shared,
    inbox: &'a Inbox,
    conns: ConnTable<Conn>,
    scratch: Box<[u8]>,
    book: ThreadBook,
}

impl<'a> Worker<'a> {
    fn new(setup: Setup, shared: &'a Shared, inbox: &'a Inbox, mut book: ThreadBook) -> Worker<'a> {
        book.stats.syscalls.merge(&setup.sc);
        Worker {
            ep: setup.ep,
            _bell: setup.bell,
            shared,
            inbox,
            conns: ConnTable::default(),
            scratch: vec![0u8; READ_BUF_BYTES].into_boxed_slice(),
            book,
        }
    }

    fn run(mut self) -> io::Result<ThreadBook> {
        let served = self.serve();
        self.shut_down();
        served.map(|()| self.book)
    }

    fn serve(&mut self) -> io::Result<()> {
        let mut events = Events::with_capacity(EVENTS_PER_WAIT);
        let mut arrivals = Vec::new();
        let mut idle = IdleTick::new(self.shared.cfg.idle_timeout);
        let coalesce = self.shared.cfg.coalesce();
        loop {
            let n = self.ep.wait(&mut self.book.stats.syscalls, &mut events, idle.as_ref().map(IdleTick::every))?;
            let now = Instant::now();
            let mut woken = false;
            for ev in events.iter() {
                match ev.token {
                    TOKEN_STOP => {}
                    TOKEN_WAKE => woken = true,
                    Token(t) => self.on_event(Key::unpack(t), &ev, now),
                }
            }
            if self.shared.stop.is_set() {
                return Ok(());
            }
            // New connections are adopted after the batch, so a slot freed in this batch
            // is never reused while an event for its old connection is still unread.
            if woken {
                self.inbox.take(&mut arrivals);
                for c in arrivals.drain(..) {
                    self.adopt(c);
                }
            }
            if let Some(limit) = idle.as_mut().and_then(|t| t.due(now)) {
                for key in self.conns.idle_keys(now, limit) {
                    self.close(key, CloseReason::Timeout);
                }
            }
            self.shared.write_rows(&mut self.book);
            if n > 0 && n < coalesce.want(self.conns.len()) {
                self.book.stats.syscalls.sleep(coalesce.window());
            }
        }
    }

    /// Closes every connection held and everything still queued, one row each. On an
    /// abort (which may come while this runs) the descriptors are left to the process
    /// exit: only the rows matter then.
    fn shut_down(&mut self) {
        for key in self.conns.keys() {
            if let Some(c) = self.conns.close(key, CloseReason::Shutdown, &mut self.book, self.shared) {
                if self.shared.stop.is_abort() {
                    std::mem::forget(c.fd);
                } else {
                    self.book.stats.syscalls.close(c.fd);
                }
            }
        }
        self.inbox.close_leftovers(self.book.id, &mut self.book, self.shared);
        self.shared.write_rows(&mut self.book);
    }

    fn adopt(&mut self, c: NewConn) {
        let NewConn { fd, meter } = c;
        let key = self.conns.insert_with(|_| Conn { fd, meter, pending: Vec::new(), sent: 0, input: Input::Drained });
        let Some(conn) = self.conns.get_mut(key) else { return };
        // Data that arrived before registration is reported by the ADD itself (epoll
        // checks readiness when a file is added), so nothing is missed here.
        let added = self.ep.add(&mut self.book.stats.syscalls, conn.fd.as_fd(), Interest::CONN_EDGE, Token(key.pack()));
        if let Err(e) = added {
            // Registration failed (kernel memory): the connection cannot be served, but it
            // still gets its row.
            self.shared.notify(Notice::RegisterFailed { error: format!("epoll_ctl(ADD): {e}") });
            self.close(key, CloseReason::Error);
        }
    }

    fn on_event(&mut self, key: Key, ev: &Event, now: Instant) {
        let Some(conn) = self.conns.get_mut(key) else { return };
        conn.on_edge(ev);
        if let Some(reason) = conn.pump(ev.writable(), &mut self.scratch, &mut self.book.stats.syscalls, now) {
            self.close(key, reason);
        }
    }

    fn close(&mut self, key: Key, reason: CloseReason) {
        if let Some(conn) = self.conns.close(key, reason, &mut self.book, self.shared) {
            // Closing removes the descriptor from the epoll set as well.
            self.book.stats.syscalls.close(conn.fd);
        }
    }
}
