//! A typed epoll instance: interest sets and tokens instead of raw masks and `u64`s, and
//! every `epoll_ctl`/`epoll_wait` counted in the caller's [`Syscalls`].

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::time::Duration;

use super::count::{Sys, Syscalls};
use super::{cvt, owned};

/// What a registered descriptor is, carried back by each of its events.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Token(pub u64);

/// What to be told about, and how.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Interest(u32);

impl Interest {
    /// Readable, level-triggered: reported at every wait while it holds.
    pub const READ: Interest = Interest(libc::EPOLLIN as u32);
    /// Nothing: the registration stays but reports nothing (pausing a listener).
    pub const NONE: Interest = Interest(0);
    /// Readable, edge-triggered: reported once per change.
    pub const READ_EDGE: Interest = Interest((libc::EPOLLIN | libc::EPOLLET) as u32);
    /// Readable, writable and peer half-close, edge-triggered: a connection registered
    /// once for its whole life.
    pub const CONN_EDGE: Interest =
        Interest((libc::EPOLLIN | libc::EPOLLOUT | libc::EPOLLRDHUP | libc::EPOLLET) as u32);
}

/// One reported event.
#[derive(Clone, Copy, Debug)]
pub struct Event {
    pub token: Token,
    mask: u32,
}

impl Event {
    /// Data (or an error or hang-up, which a read will report) may be waiting.
    pub fn readable(&self) -> bool {
        self.mask & (libc::EPOLLIN | libc::EPOLLERR | libc::EPOLLHUP | libc::EPOLLRDHUP) as u32 != 0
    }

    /// The socket may take more bytes (or has failed, which a write will report).
    pub fn writable(&self) -> bool {
        self.mask & (libc::EPOLLOUT | libc::EPOLLERR | libc::EPOLLHUP) as u32 != 0
    }

    /// The peer closed its side: no further readiness edge will come.
    pub fn peer_closed(&self) -> bool {
        self.mask & (libc::EPOLLRDHUP | libc::EPOLLHUP) as u32 != 0
    }
}

/// A reusable buffer of events for [`Epoll::wait`].
pub struct Events {
    buf: Vec<libc::epoll_event>,
    len: usize,
}

impl Events {
    pub fn with_capacity(n: usize) -> Events {
        Events { buf: vec![libc::epoll_event { events: 0, u64: 0 }; n.max(1)], len: 0 }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn iter(&self) -> impl Iterator<Item = Event> + '_ {
        self.buf[..self.len].iter().map(|e| Event { token: Token(e.u64), mask: e.events })
    }
}

/// An epoll instance.
pub struct Epoll {
    fd: OwnedFd,
}

impl Epoll {
    pub fn new() -> io::Result<Epoll> {
        // SAFETY: plain integer argument.
        Ok(Epoll { fd: owned(cvt(unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) })?) })
    }

    pub fn add(&self, sc: &mut Syscalls, fd: BorrowedFd<'_>, interest: Interest, token: Token) -> io::Result<()> {
        self.ctl(sc, libc::EPOLL_CTL_ADD, fd, interest, token)
    }

    pub fn modify(&self, sc: &mut Syscalls, fd: BorrowedFd<'_>, interest: Interest, token: Token) -> io::Result<()> {
        self.ctl(sc, libc::EPOLL_CTL_MOD, fd, interest, token)
    }

    fn ctl(&self, sc: &mut Syscalls, op: i32, fd: BorrowedFd<'_>, interest: Interest, token: Token) -> io::Result<()> {
        sc.count(Sys::EpollCtl);
        let mut ev = libc::epoll_event { events: interest.0, u64: token.0 };
        // SAFETY: `ev` is a valid epoll_event for the duration of the call.
        cvt(unsafe { libc::epoll_ctl(self.fd.as_raw_fd(), op, fd.as_raw_fd(), &mut ev) })?;
        Ok(())
    }

    /// Waits up to `timeout` (`None`: until something happens) and fills `events`.
    /// A wait interrupted by a signal returns no events rather than an error.
    pub fn wait(&self, sc: &mut Syscalls, events: &mut Events, timeout: Option<Duration>) -> io::Result<usize> {
        sc.count(Sys::EpollWait);
        let ms = timeout.map_or(-1, |d| d.as_millis().min(i32::MAX as u128) as i32);
        let max = events.buf.len().min(i32::MAX as usize) as i32;
        // SAFETY: `events.buf` is writable for `max` entries.
        let n = cvt(unsafe { libc::epoll_wait(self.fd.as_raw_fd(), events.buf.as_mut_ptr(), max, ms) });
        events.len = match n {
            Ok(n) => n as usize,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => 0,
            Err(e) => return Err(e),
        };
        Ok(events.len)
    }
}

impl AsFd for Epoll {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}
