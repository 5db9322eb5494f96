//! Accepting, the same way for every backend: what an accept error means, pausing when
//! descriptors run out (reported once per episode), and one accept-and-route path that
//! counts each connection, turns it away under `--max-conns` or at shutdown (with its
//! row), and deals the rest to workers round-robin.

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::book::{CloseReason, ConnMeter, ThreadBook};
use crate::handoff::{Inbox, NewConn};
use crate::notice::{Episode, Notice};
use crate::shared::Shared;
use crate::sys::{Epoll, Events, Interest, Token};

/// How long accepting pauses after running out of descriptors before it is tried again.
pub const ACCEPT_RETRY: Duration = Duration::from_millis(10);

/// What a failed accept means for the acceptor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AcceptError {
    /// The client gave up between SYN and accept, a signal, or a cancelled request:
    /// accept the next one.
    Transient,
    /// Out of descriptors or kernel memory: the listen queue keeps the waiting clients;
    /// pause accepting and retry after [`ACCEPT_RETRY`].
    OutOfResources,
    /// Anything else stops the server.
    Fatal,
}

impl AcceptError {
    pub fn classify(errno: i32) -> AcceptError {
        match errno {
            libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM => AcceptError::OutOfResources,
            libc::ECONNABORTED | libc::EINTR | libc::EPROTO | libc::EPERM | libc::ECANCELED | libc::EAGAIN => {
                AcceptError::Transient
            }
            _ => AcceptError::Fatal,
        }
    }
}

/// Running out of descriptors: accepting pauses until the retry, and each episode is
/// reported once.
#[derive(Default)]
struct OutOfFds {
    /// Accepting is paused until the retry.
    active: bool,
    episode: Episode,
}

impl OutOfFds {
    fn hit(&mut self, shared: &Shared, e: &io::Error) {
        self.active = true;
        if self.episode.failed() {
            shared.notify(Notice::OutOfFds {
                error: e.to_string(),
                open: shared.open.load(Ordering::Relaxed),
                retry_ms: ACCEPT_RETRY.as_millis() as u64,
            });
        }
    }

    fn recovered(&mut self, shared: &Shared) {
        self.active = false;
        if let Some(failed_attempts) = self.episode.succeeded() {
            shared.notify(Notice::AcceptingAgain { failed_attempts });
        }
    }
}

/// Where accepted connections go: the one accept-and-route path of every backend.
pub struct Router<'a> {
    shared: &'a Shared,
    inboxes: &'a [Inbox],
    next: usize,
    out_of_fds: OutOfFds,
}

impl<'a> Router<'a> {
    /// Routes to `inboxes` round-robin (a backend without workers passes none).
    pub fn new(shared: &'a Shared, inboxes: &'a [Inbox]) -> Router<'a> {
        Router { shared, inboxes, next: 0, out_of_fds: OutOfFds::default() }
    }

    pub fn shared(&self) -> &'a Shared {
        self.shared
    }

    /// Accepting is paused for lack of descriptors.
    pub fn paused(&self) -> bool {
        self.out_of_fds.active
    }

    /// Counts an accepted connection and decides its fate: `Some((worker, conn))` to
    /// serve it, or `None` when it was closed at once with its row — `shutdown` if the
    /// server is stopping, `rejected` under `--max-conns`.
    pub fn admit(&mut self, fd: OwnedFd, peer: SocketAddr, book: &mut ThreadBook) -> Option<(usize, NewConn)> {
        let shared = self.shared;
        self.out_of_fds.recovered(shared);
        shared.accepted.fetch_add(1, Ordering::Relaxed);
        let meter = ConnMeter::new(peer, fd.as_raw_fd()).with_spin(shared.cfg.spin_per_read);
        let worker = self.next % self.inboxes.len().max(1);
        self.next = self.next.wrapping_add(1);
        let turned_away = if shared.stop.is_set() {
            Some(CloseReason::Shutdown)
        } else if shared.over_limit() {
            Some(CloseReason::Rejected)
        } else {
            None
        };
        if let Some(reason) = turned_away {
            book.closed_for(worker, &meter, reason);
            book.stats.syscalls.close(fd);
            return None;
        }
        shared.open.fetch_add(1, Ordering::Relaxed);
        Some((worker, NewConn { fd, meter }))
    }

    /// [`admit`](Self::admit), then queue for its worker: `Some(worker)` when that
    /// worker's doorbell must ring (its queue was empty).
    pub fn route(&mut self, fd: OwnedFd, peer: SocketAddr, book: &mut ThreadBook) -> Option<usize> {
        let (worker, conn) = self.admit(fd, peer, book)?;
        self.inboxes[worker].push(conn).then_some(worker)
    }

    /// An accept failed: what to do about it. Out of descriptors is counted and
    /// reported once per episode, and pauses accepting; a fatal error is returned.
    pub fn failed(&mut self, e: io::Error, book: &mut ThreadBook) -> io::Result<AcceptError> {
        let class = e.raw_os_error().map_or(AcceptError::Fatal, AcceptError::classify);
        match class {
            AcceptError::OutOfResources => {
                book.stats.accept_fd_exhausted += 1;
                self.out_of_fds.hit(self.shared, &e);
            }
            AcceptError::Transient => {}
            AcceptError::Fatal => return Err(io::Error::new(e.kind(), format!("accept failed: {e}"))),
        }
        Ok(class)
    }
}

const TOKEN_LISTENER: Token = Token(0);
const TOKEN_STOP: Token = Token(1);

/// The acceptor of the readiness-based backends: a level-triggered epoll on the
/// listening socket and the stop signal. Each time the socket is ready it accepts until
/// EAGAIN (with `accept_flags`, e.g. `SOCK_NONBLOCK`) and hands each connection to
/// `on_accept` with the router. Returns once the server is stopping.
pub fn readiness_loop(
    listener: &OwnedFd,
    router: &mut Router<'_>,
    book: &mut ThreadBook,
    accept_flags: i32,
    mut on_accept: impl FnMut(&mut Router<'_>, OwnedFd, SocketAddr, &mut ThreadBook) -> io::Result<()>,
) -> io::Result<()> {
    let shared = router.shared;
    let ep = Epoll::new()?;
    let sc = &mut book.stats.syscalls;
    ep.add(sc, listener.as_fd(), Interest::READ, TOKEN_LISTENER)?;
    ep.add(sc, shared.stop.fd(), Interest::READ, TOKEN_STOP)?;
    let mut events = Events::with_capacity(2);
    loop {
        let timeout = router.paused().then_some(ACCEPT_RETRY);
        ep.wait(&mut book.stats.syscalls, &mut events, timeout)?;
        if shared.stop.is_set() {
            return Ok(());
        }
        if router.paused() {
            // Listen again; if descriptors are still short the next accept says so.
            ep.modify(&mut book.stats.syscalls, listener.as_fd(), Interest::READ, TOKEN_LISTENER)?;
        }
        loop {
            match book.stats.syscalls.accept(listener.as_fd(), accept_flags) {
                Ok((fd, peer)) => on_accept(router, fd, peer, book)?,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    if router.failed(e, book)? == AcceptError::OutOfResources {
                        // Level-triggered, the socket would wake us at once, forever: stop
                        // watching it until the retry.
                        ep.modify(&mut book.stats.syscalls, listener.as_fd(), Interest::NONE, TOKEN_LISTENER)?;
                        break;
                    }
                }
            }
        }
        shared.write_rows(book);
    }
}
