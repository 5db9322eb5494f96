//! The one place where raw Linux calls are made: the bottom layer of the crate.
//!
//! Every call goes through [`cvt`], so no call site can forget `errno`, and each `unsafe`
//! block is a few lines long with a `// SAFETY:` note saying why it holds. Backends serve
//! through [`Syscalls`], which makes these calls and counts each one, and through the
//! typed [`Epoll`]; the free functions are for set-up and for the tools.

mod count;
mod epoll;
mod live;
mod thread;

pub use count::{Sys, Syscalls};
pub use epoll::{Epoll, Event, Events, Interest, Token};
pub use live::LiveCounters;
pub use thread::spawn_detached;

use std::io;
use std::mem::{size_of, MaybeUninit};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

/// Values a syscall returns, where `-1` means "look at errno".
pub trait MinusOne: Copy + PartialEq {
    const MINUS_ONE: Self;
}
impl MinusOne for i32 {
    const MINUS_ONE: Self = -1;
}
impl MinusOne for isize {
    const MINUS_ONE: Self = -1;
}

/// Turns a raw syscall return into `io::Result`: `-1` becomes `io::Error::last_os_error()`.
#[inline]
pub fn cvt<T: MinusOne>(ret: T) -> io::Result<T> {
    if ret == T::MINUS_ONE {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// Takes ownership of a descriptor the kernel just returned to us.
fn owned(fd: RawFd) -> OwnedFd {
    // SAFETY: `fd` was returned by a successful syscall in this module a moment ago and
    // nothing else holds it, so this OwnedFd is its only owner.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// `read(2)` into `buf`.
#[inline]
pub fn read(fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: `buf` is valid for writes of `buf.len()` bytes for the whole call.
    let n = cvt(unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) })?;
    Ok(n as usize)
}

/// `write(2)` from `buf`.
#[inline]
pub fn write(fd: BorrowedFd<'_>, buf: &[u8]) -> io::Result<usize> {
    // SAFETY: `buf` is valid for reads of `buf.len()` bytes for the whole call.
    let n = cvt(unsafe { libc::write(fd.as_raw_fd(), buf.as_ptr().cast(), buf.len()) })?;
    Ok(n as usize)
}

/// `accept4(2)`: a close-on-exec connection (plus `flags`, e.g. `SOCK_NONBLOCK`) and its
/// peer address.
pub fn accept4(listener: BorrowedFd<'_>, flags: i32) -> io::Result<(OwnedFd, SocketAddr)> {
    let mut storage = MaybeUninit::<libc::sockaddr_storage>::zeroed();
    let mut len = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: `storage` is a writable sockaddr_storage and `len` holds its size, as
    // accept4 requires; the kernel writes at most `len` bytes.
    let fd = cvt(unsafe {
        libc::accept4(listener.as_raw_fd(), storage.as_mut_ptr().cast(), &mut len, libc::SOCK_CLOEXEC | flags)
    })?;
    let fd = owned(fd);
    // SAFETY: zero-initialised above and possibly filled by the kernel: every bit pattern
    // of sockaddr_storage is valid.
    let storage = unsafe { storage.assume_init() };
    Ok((fd, sockaddr_to_std(&storage)))
}

/// `getpeername(2)`, for connections accepted without an address (io_uring multishot accept).
pub fn peer_addr(fd: BorrowedFd<'_>) -> io::Result<SocketAddr> {
    let mut storage = MaybeUninit::<libc::sockaddr_storage>::zeroed();
    let mut len = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: as in accept4: a writable buffer and its length.
    cvt(unsafe { libc::getpeername(fd.as_raw_fd(), storage.as_mut_ptr().cast(), &mut len) })?;
    // SAFETY: zero-initialised; any bit pattern is a valid sockaddr_storage.
    Ok(sockaddr_to_std(&unsafe { storage.assume_init() }))
}

/// Converts a kernel socket address to the standard library's type. Unknown families map to
/// the unspecified IPv4 address rather than failing: the address only feeds the log.
pub fn sockaddr_to_std(storage: &libc::sockaddr_storage) -> SocketAddr {
    match storage.ss_family as libc::c_int {
        libc::AF_INET => {
            // SAFETY: the family says this storage holds a sockaddr_in, which it is large
            // and aligned enough for.
            let a = unsafe { &*(storage as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr)), u16::from_be(a.sin_port)))
        }
        libc::AF_INET6 => {
            // SAFETY: as above, for sockaddr_in6.
            let a = unsafe { &*(storage as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>() };
            SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(a.sin6_addr.s6_addr),
                u16::from_be(a.sin6_port),
                a.sin6_flowinfo,
                a.sin6_scope_id,
            ))
        }
        _ => SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0)),
    }
}

/// `listen(2)` again on a bound socket: Linux applies the new backlog, which is how we get
/// a deeper queue than the standard library's default without hand-building the socket.
pub fn listen(fd: BorrowedFd<'_>, backlog: i32) -> io::Result<()> {
    // SAFETY: plain integer arguments.
    cvt(unsafe { libc::listen(fd.as_raw_fd(), backlog) })?;
    Ok(())
}

/// A close-on-exec pipe: `(read end, write end)`.
pub fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0i32; 2];
    // SAFETY: `fds` is a writable array of two ints, as pipe2 requires.
    cvt(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) })?;
    Ok((owned(fds[0]), owned(fds[1])))
}

/// A connected pair of close-on-exec Unix stream sockets (for probes).
pub fn socketpair() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0i32; 2];
    // SAFETY: `fds` is a writable array of two ints, as socketpair requires.
    cvt(unsafe { libc::socketpair(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0, fds.as_mut_ptr()) })?;
    Ok((owned(fds[0]), owned(fds[1])))
}

/// Duplicates `fd` onto descriptor number `to` (without close-on-exec). Makes one
/// syscall and no allocation, so it may run in a `pre_exec` hook.
pub fn dup_to(fd: RawFd, to: RawFd) -> io::Result<()> {
    if fd == to {
        // dup2 onto itself does nothing, close-on-exec included: clear that flag instead.
        // SAFETY: plain integer arguments.
        cvt(unsafe { libc::fcntl(fd, libc::F_SETFD, 0) })?;
        return Ok(());
    }
    // SAFETY: plain integer arguments; `to` is replaced, which is what the caller asks.
    cvt(unsafe { libc::dup2(fd, to) })?;
    Ok(())
}

/// For a `pre_exec` hook: this process (a child about to exec) gets SIGKILL when the
/// thread that started it exits, however that ends — a crash, `kill -9`, the OOM killer.
/// A parent that died before the request took effect is caught too (our parent is then
/// someone else), and the child refuses to start. Two syscalls, no allocation.
pub fn die_with_parent(parent: i32) -> io::Result<()> {
    // SAFETY: prctl with integer arguments only.
    cvt(unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong, 0, 0, 0) })?;
    // SAFETY: getppid has no arguments and cannot fail.
    if unsafe { libc::getppid() } != parent {
        return Err(io::Error::other("the process that started this one is gone"));
    }
    Ok(())
}

/// Waits up to `limit` until child `pid` is stopped (a SIGSTOP it was sent has taken
/// effect on every thread); `false` if it was not by then. The stop is left to be seen
/// by other waits (WNOWAIT), and an exit is not reaped.
pub fn wait_stopped(pid: i32, limit: std::time::Duration) -> io::Result<bool> {
    let deadline = std::time::Instant::now() + limit;
    loop {
        // SAFETY: siginfo_t is plain data; all zeroes means "nothing reported".
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: waitid on our own child, writing into `info`.
        cvt(unsafe {
            libc::waitid(libc::P_PID, pid as libc::id_t, &mut info, libc::WSTOPPED | libc::WNOHANG | libc::WNOWAIT)
        })?;
        // SAFETY: reading the pid field of a siginfo_t the kernel filled (or zeroed).
        if unsafe { info.si_pid() } == pid {
            return Ok(true);
        }
        if std::time::Instant::now() >= deadline {
            return Ok(false);
        }
        std::thread::sleep(std::time::Duration::from_micros(200));
    }
}

/// Whether `fd` is an open descriptor of this process.
pub fn is_open(fd: RawFd) -> bool {
    // SAFETY: F_GETFD on any integer is harmless; -1 (EBADF) means not open.
    unsafe { libc::fcntl(fd, libc::F_GETFD) != -1 }
}

/// A non-blocking, close-on-exec timer on the monotonic clock (the clock `Instant` reads).
pub fn timerfd() -> io::Result<OwnedFd> {
    // SAFETY: plain integer arguments.
    Ok(owned(cvt(unsafe { libc::timerfd_create(libc::CLOCK_MONOTONIC, libc::TFD_NONBLOCK | libc::TFD_CLOEXEC) })?))
}

/// Arms `timer` to fire once, `after` from now (at least 1 ns: zero would disarm it).
pub fn timerfd_arm(timer: BorrowedFd<'_>, after: std::time::Duration) -> io::Result<()> {
    let after = after.max(std::time::Duration::from_nanos(1));
    let spec = libc::itimerspec {
        it_interval: libc::timespec { tv_sec: 0, tv_nsec: 0 },
        it_value: libc::timespec {
            tv_sec: after.as_secs() as libc::time_t,
            tv_nsec: after.subsec_nanos() as libc::c_long,
        },
    };
    // SAFETY: `spec` is a valid itimerspec; the old value is not asked for.
    cvt(unsafe { libc::timerfd_settime(timer.as_raw_fd(), 0, &spec, std::ptr::null_mut()) })?;
    Ok(())
}

/// A non-blocking, close-on-exec eventfd.
pub fn eventfd() -> io::Result<OwnedFd> {
    // SAFETY: plain integer arguments.
    Ok(owned(cvt(unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) })?))
}

/// Adds one to an eventfd's counter, waking whoever waits on it.
pub fn eventfd_signal(fd: BorrowedFd<'_>) -> io::Result<()> {
    let one = 1u64.to_ne_bytes();
    match write(fd, &one) {
        Ok(_) => Ok(()),
        // The counter is saturated: the waiter has a wake-up pending anyway.
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(()),
        Err(e) => Err(e),
    }
}

/// Resource usage of the whole process (every thread, including io_uring's kernel workers,
/// which are threads of this process).
pub fn rusage_self() -> io::Result<libc::rusage> {
    let mut ru = MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: `ru` is a writable rusage.
    cvt(unsafe { libc::getrusage(libc::RUSAGE_SELF, ru.as_mut_ptr()) })?;
    // SAFETY: zero-initialised and filled by the kernel; all-integer struct.
    Ok(unsafe { ru.assume_init() })
}

/// Raises the open-file soft limit to the hard limit and returns `(soft, hard)` after.
pub fn raise_nofile_limit() -> io::Result<(u64, u64)> {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: `lim` is a writable rlimit.
    cvt(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) })?;
    if lim.rlim_cur < lim.rlim_max {
        let want = libc::rlimit { rlim_cur: lim.rlim_max, rlim_max: lim.rlim_max };
        // SAFETY: `want` is a valid rlimit; raising soft up to hard needs no privilege.
        cvt(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &want) })?;
        lim.rlim_cur = lim.rlim_max;
    }
    Ok((lim.rlim_cur, lim.rlim_max))
}

/// Sets the open-file limit, soft and hard, to `n`. One syscall on stack data, so it may
/// run in a `pre_exec` hook between fork and exec.
pub fn set_nofile_limit(n: u64) -> io::Result<()> {
    let lim = libc::rlimit { rlim_cur: n, rlim_max: n };
    // SAFETY: `lim` is a valid rlimit for the duration of the call.
    cvt(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) })?;
    Ok(())
}

/// CPU time (user + system) that process `pid` has used so far — every thread, the exited
/// ones included — in nanoseconds: the figure `/proc/PID/stat` rounds to clock ticks.
pub fn process_cpu_ns(pid: i32) -> io::Result<u64> {
    let mut clock: libc::clockid_t = 0;
    // SAFETY: `clock` is a writable clockid_t; clock_getcpuclockid returns an error
    // number rather than setting errno.
    let err = unsafe { libc::clock_getcpuclockid(pid, &mut clock) };
    if err != 0 {
        return Err(io::Error::from_raw_os_error(err));
    }
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a writable timespec.
    cvt(unsafe { libc::clock_gettime(clock, &mut ts) })?;
    Ok(ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64)
}

/// Clock ticks per second, the unit of `/proc/PID/stat` CPU times.
pub fn clock_ticks_per_s() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if hz > 0 {
        hz as f64
    } else {
        100.0
    }
}

/// The current open-file limits `(soft, hard)`.
pub fn nofile_limit() -> io::Result<(u64, u64)> {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: `lim` is a writable rlimit.
    cvt(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) })?;
    Ok((lim.rlim_cur, lim.rlim_max))
}

/// The number of CPUs this process may run on (its affinity mask), at least 1.
pub fn allowed_cpus() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}

/// Microseconds since the Unix epoch (UTC).
pub fn unix_now_us() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_micros() as u64).unwrap_or(0)
}

/// Seconds since the Unix epoch, with microseconds, for log rows.
pub fn unix_now_s() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

/// `shutdown(2)` of both directions.
pub fn shutdown(fd: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: plain integer arguments.
    cvt(unsafe { libc::shutdown(fd.as_raw_fd(), libc::SHUT_RDWR) })?;
    Ok(())
}

/// Receive and send timeouts (SO_RCVTIMEO, SO_SNDTIMEO) on a blocking socket: a read or a
/// write that waits longer fails with EAGAIN.
pub fn set_socket_timeouts(fd: BorrowedFd<'_>, t: std::time::Duration) -> io::Result<()> {
    let tv = libc::timeval { tv_sec: t.as_secs() as libc::time_t, tv_usec: t.subsec_micros() as libc::suseconds_t };
    for opt in [libc::SO_RCVTIMEO, libc::SO_SNDTIMEO] {
        // SAFETY: `tv` is a valid timeval for the duration of the call and its size is passed.
        cvt(unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                opt,
                (&tv as *const libc::timeval).cast(),
                size_of::<libc::timeval>() as libc::socklen_t,
            )
        })?;
    }
    Ok(())
}

/// `poll(2)` on one descriptor; returns the revents (0 on timeout).
pub fn poll_one(fd: BorrowedFd<'_>, events: i16, timeout_ms: i32) -> io::Result<i16> {
    let mut pfd = libc::pollfd { fd: fd.as_raw_fd(), events, revents: 0 };
    // SAFETY: `pfd` is one valid pollfd for the duration of the call.
    let n = cvt(unsafe { libc::poll(&mut pfd, 1, timeout_ms) })?;
    Ok(if n == 0 { 0 } else { pfd.revents })
}

/// Sets the calling thread's nice value (`setpriority(2)` on its thread id); lowering it
/// below 0 needs CAP_SYS_NICE.
pub fn set_thread_nice(nice: i32) -> io::Result<()> {
    // SAFETY: gettid has no arguments and cannot fail.
    let tid = unsafe { libc::gettid() };
    // SAFETY: setpriority on our own thread id; it reads nothing from memory.
    cvt(unsafe { libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, nice) }).map(drop)
}

/// `setsockopt(2)` for an integer option.
pub fn setsockopt_int(fd: BorrowedFd<'_>, level: i32, name: i32, value: i32) -> io::Result<()> {
    // SAFETY: `value` is a valid c_int for the duration of the call and its size is passed.
    cvt(unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (&value as *const i32).cast(),
            size_of::<i32>() as libc::socklen_t,
        )
    })?;
    Ok(())
}

/// The running kernel's `(major, minor)` version, from uname(2); `(0, 0)` if unparsable.
pub fn kernel_version() -> (u32, u32) {
    let mut u = MaybeUninit::<libc::utsname>::zeroed();
    // SAFETY: `u` is a writable utsname.
    if cvt(unsafe { libc::uname(u.as_mut_ptr()) }).is_err() {
        return (0, 0);
    }
    // SAFETY: zero-initialised and filled by the kernel with NUL-terminated strings.
    let u = unsafe { u.assume_init() };
    let release: String = u.release.iter().take_while(|&&c| c != 0).map(|&c| c as u8 as char).collect();
    let mut parts = release.split(|c: char| !c.is_ascii_digit()).filter_map(|p| p.parse().ok());
    (parts.next().unwrap_or(0), parts.next().unwrap_or(0))
}

/// The CPUs this process may run on (sched_getaffinity).
pub fn affinity() -> io::Result<Vec<usize>> {
    // SAFETY: cpu_set_t is plain data; all zeroes is an empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a writable cpu_set_t of the size passed.
    cvt(unsafe { libc::sched_getaffinity(0, size_of::<libc::cpu_set_t>(), &mut set) })?;
    // SAFETY: CPU_ISSET reads the set we own, for indexes inside its capacity.
    Ok((0..libc::CPU_SETSIZE as usize).filter(|&c| unsafe { libc::CPU_ISSET(c, &set) }).collect())
}

/// Restricts the calling thread (and what it execs) to `cpus`. Makes one syscall and no
/// allocation, so it may run in a `pre_exec` hook between fork and exec.
pub fn set_affinity(cpus: &[usize]) -> io::Result<()> {
    // SAFETY: cpu_set_t is plain data; all zeroes is an empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    for &c in cpus.iter().filter(|&&c| c < libc::CPU_SETSIZE as usize) {
        // SAFETY: `c` is inside the set's capacity (checked above).
        unsafe { libc::CPU_SET(c, &mut set) };
    }
    // SAFETY: `set` is a valid cpu_set_t of the size passed.
    cvt(unsafe { libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set) })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    /// The server sets `TCP_NODELAY` once, on the listening socket: that only works if
    /// accepted connections inherit it, which this checks on the running kernel.
    #[test]
    fn accepted_sockets_inherit_nodelay_from_the_listener() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        setsockopt_int(l.as_fd(), libc::IPPROTO_TCP, libc::TCP_NODELAY, 1).unwrap();
        let _c = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (accepted, _) = l.accept().unwrap();
        assert!(accepted.nodelay().unwrap());
        let plain = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let _c = std::net::TcpStream::connect(plain.local_addr().unwrap()).unwrap();
        assert!(!plain.accept().unwrap().0.nodelay().unwrap(), "the check itself cannot tell");
    }
}
