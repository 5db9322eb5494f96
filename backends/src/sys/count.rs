//! Syscalls that count themselves.
//!
//! Each server thread owns one [`Syscalls`]: every call a backend makes while serving goes
//! through it and is counted by kind, so syscalls per request are measured by the code
//! that makes them and cannot drift from what it does. Counters are plain integers merged
//! once at exit, so counting costs an add. Calls made by another library (the io-uring
//! crate's `io_uring_enter`) are counted with [`Syscalls::count`] at the call site.

use std::collections::BTreeMap;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::Duration;

/// The kinds of syscall the backends make.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sys {
    Accept,
    Read,
    Write,
    Close,
    EpollWait,
    EpollCtl,
    EventfdWrite,
    Getpeername,
    IoUringEnter,
    IoUringRegister,
    Nanosleep,
    Shutdown,
    Clone,
    Setsockopt,
}

impl Sys {
    pub const ALL: [Sys; 14] = [
        Sys::Accept,
        Sys::Read,
        Sys::Write,
        Sys::Close,
        Sys::EpollWait,
        Sys::EpollCtl,
        Sys::EventfdWrite,
        Sys::Getpeername,
        Sys::IoUringEnter,
        Sys::IoUringRegister,
        Sys::Nanosleep,
        Sys::Shutdown,
        Sys::Clone,
        Sys::Setsockopt,
    ];

    /// The name the kernel's syscall table uses, as in `perf` output.
    pub fn name(self) -> &'static str {
        match self {
            Sys::Accept => "accept4",
            Sys::Read => "read",
            Sys::Write => "write",
            Sys::Close => "close",
            Sys::EpollWait => "epoll_wait",
            Sys::EpollCtl => "epoll_ctl",
            Sys::EventfdWrite => "eventfd_write",
            Sys::Getpeername => "getpeername",
            Sys::IoUringEnter => "io_uring_enter",
            Sys::IoUringRegister => "io_uring_register",
            Sys::Nanosleep => "clock_nanosleep",
            Sys::Shutdown => "shutdown",
            Sys::Clone => "clone3",
            Sys::Setsockopt => "setsockopt",
        }
    }
}

/// One thread's syscall gate and counters.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Syscalls([u64; Sys::ALL.len()]);

impl Syscalls {
    /// Counts a call made outside this type (by another library).
    #[inline]
    pub fn count(&mut self, kind: Sys) {
        self.0[kind as usize] += 1;
    }

    pub fn merge(&mut self, other: &Syscalls) {
        for (a, b) in self.0.iter_mut().zip(other.0.iter()) {
            *a += b;
        }
    }

    pub fn total(&self) -> u64 {
        self.0.iter().sum()
    }

    pub fn get(&self, kind: Sys) -> u64 {
        self.0[kind as usize]
    }

    /// Non-zero counts by syscall name.
    pub fn by_name(&self) -> BTreeMap<String, u64> {
        Sys::ALL.iter().filter(|k| self.get(**k) > 0).map(|k| (k.name().to_string(), self.get(*k))).collect()
    }

    #[inline]
    pub fn read(&mut self, fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<usize> {
        self.count(Sys::Read);
        super::read(fd, buf)
    }

    #[inline]
    pub fn write(&mut self, fd: BorrowedFd<'_>, buf: &[u8]) -> io::Result<usize> {
        self.count(Sys::Write);
        super::write(fd, buf)
    }

    pub fn accept(&mut self, listener: BorrowedFd<'_>, flags: i32) -> io::Result<(OwnedFd, SocketAddr)> {
        self.count(Sys::Accept);
        super::accept4(listener, flags)
    }

    /// Closes `fd` (dropping an `OwnedFd` is the close; this counts it).
    pub fn close(&mut self, fd: OwnedFd) {
        self.count(Sys::Close);
        drop(fd);
    }

    pub fn peer_addr(&mut self, fd: BorrowedFd<'_>) -> io::Result<SocketAddr> {
        self.count(Sys::Getpeername);
        super::peer_addr(fd)
    }

    /// Adds one to an eventfd's counter, waking whoever waits on it.
    pub fn signal_eventfd(&mut self, fd: BorrowedFd<'_>) -> io::Result<()> {
        self.count(Sys::EventfdWrite);
        super::eventfd_signal(fd)
    }

    pub fn sleep(&mut self, d: Duration) {
        self.count(Sys::Nanosleep);
        std::thread::sleep(d);
    }

    /// `shutdown(2)` of both directions: wakes a thread blocked on the socket.
    pub fn shutdown(&mut self, fd: impl AsFd) -> io::Result<()> {
        self.count(Sys::Shutdown);
        super::shutdown(fd.as_fd())
    }
}
