//! The thread-per-connection backend: "the traditional method of TCP servers using one
//! thread per connection" that the seed measures epoll against.
//!
//! An acceptor (the same readiness loop and router as epoll's) and one OS thread per
//! connection, with blocking reads and writes: read up to 64 KiB, write it all back,
//! repeat. A client that does not read its echo blocks its thread in `write`, and so stops
//! being read: TCP flow control bounds memory, as in the other backends.
//!
//! The same contract as the others: one row per connection, syscalls counted by kind
//! (`clone3` once per connection thread — the few more a thread's creation and exit cost
//! inside the C library are not seen here; `perf` counts them), `--idle-timeout` (socket
//! receive and send timeouts), `--max-conns`. At a stop every connection is `shutdown()`,
//! which wakes its blocked thread; a busy thread sees the stop after its echo and ends
//! itself. A thread or read buffer that cannot be had (vm.max_map_count, memory,
//! threads-max, a pids cgroup) turns its connection away with a `rejected` row, reported
//! once per episode; `--max-threads` caps the threads on purpose. Threads are plain
//! pthreads (see `sys::spawn_detached`): two maps each, so the default vm.max_map_count
//! of 65,530 allows about 32,000 — more than one process's descriptors.

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::accept::{readiness_loop, Router};
use crate::backend::Backend;
use crate::book::{CloseReason, ConnMeter, ThreadBook, ThreadStats};
use crate::config::ServerConfig;
use crate::handoff::NewConn;
use crate::notice::{Episode, Notice};
use crate::shared::Shared;
use crate::sys::{self, Sys, Syscalls};

/// Stack for each connection thread: its buffer is on the heap.
const STACK_BYTES: usize = 64 * 1024;
/// Bytes read per `read`, as epoll's workers read.
const READ_BUF_BYTES: usize = 64 * 1024;
/// How often a stopping acceptor looks for an abort while its threads finish.
const STOP_POLL: Duration = Duration::from_millis(20);

/// The thread-per-connection backend.
pub struct ThreadsBackend;

/// Builds the backend (the registry's constructor): nothing to probe.
pub fn build(_cfg: &ServerConfig) -> io::Result<Box<dyn Backend>> {
    Ok(Box::new(ThreadsBackend))
}

/// One connection, shared by its thread and the acceptor, which shuts it down at a stop
/// (the descriptor closes when the last holder lets go, so it is never a reused number).
struct Conn {
    fd: OwnedFd,
    slot: usize,
    meter: Mutex<ConnMeter>,
    /// Its row is in the log (written by its thread, or booked by an aborting acceptor).
    /// A lock, not a flag: a thread claims the row and hands it to the log in one step,
    /// so an abort can neither log it twice nor exit between the two.
    logged: Mutex<bool>,
    /// The server shut it down: whatever its thread sees next, the reason is `shutdown`.
    stopped: AtomicBool,
}

impl Conn {
    fn meter(&self) -> MutexGuard<'_, ConnMeter> {
        self.meter.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Books the connection's one row, unless someone already has; with `write`, hands it
    /// to the log before letting go.
    fn book_once(&self, book: &mut ThreadBook, shared: &Shared, reason: CloseReason, write: bool) {
        let mut logged = self.logged.lock().unwrap_or_else(|p| p.into_inner());
        if !*logged {
            book.closed_for(self.slot, &self.meter(), reason);
            shared.closed_one();
            if write {
                shared.write_rows(book);
            }
            *logged = true;
        }
    }
}

/// Every live connection thread.
#[derive(Default)]
struct Live {
    inner: Mutex<Slots>,
    empty: Condvar,
    /// The counters of every thread that has ended.
    stats: Mutex<ThreadStats>,
}

#[derive(Default)]
struct Slots {
    conns: Vec<Option<Arc<Conn>>>,
    free: Vec<usize>,
    count: usize,
}

impl Live {
    fn lock(&self) -> MutexGuard<'_, Slots> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn count(&self) -> usize {
        self.lock().count
    }

    /// A slot for a new connection.
    fn reserve(&self) -> usize {
        let mut s = self.lock();
        s.count += 1;
        match s.free.pop() {
            Some(i) => i,
            None => {
                s.conns.push(None);
                s.conns.len() - 1
            }
        }
    }

    fn fill(&self, slot: usize, c: Arc<Conn>) {
        self.lock().conns[slot] = Some(c);
    }

    fn release(&self, slot: usize) {
        let mut s = self.lock();
        s.conns[slot] = None;
        s.free.push(slot);
        s.count -= 1;
        if s.count == 0 {
            self.empty.notify_all();
        }
    }

    fn all(&self) -> Vec<Arc<Conn>> {
        self.lock().conns.iter().flatten().cloned().collect()
    }

    fn add_stats(&self, t: &ThreadStats) {
        self.stats.lock().unwrap_or_else(|p| p.into_inner()).merge(t);
    }

    /// Waits until no connection thread is left, or the server is aborting.
    fn wait_empty(&self, shared: &Shared) {
        let mut s = self.lock();
        while s.count > 0 && !shared.stop.is_abort() {
            s = self.empty.wait_timeout(s, STOP_POLL).unwrap_or_else(|p| p.into_inner()).0;
        }
    }
}

impl Backend for ThreadsBackend {
    fn serve(self: Box<Self>, listener: OwnedFd, shared: &Arc<Shared>) -> io::Result<Vec<ThreadStats>> {
        let live = Arc::new(Live::default());
        let mut book = ThreadBook::new(0);
        let mut spawning = Episode::default();
        let mut router = Router::new(shared, &[]);
        shared.mark_ready();
        // Accepted sockets stay blocking: each is served by blocking calls in its thread.
        let accepted = readiness_loop(&listener, &mut router, &mut book, 0, |router, fd, peer, book| {
            if let Some((_, conn)) = router.admit(fd, peer, book) {
                start_thread(shared, &live, conn, book, &mut spawning);
            }
            Ok(())
        });
        // No more connections: new clients are refused rather than left in the queue.
        drop(listener);
        stop_all(shared, &live, &mut book);
        shared.write_rows(&mut book);
        accepted?;
        let served = std::mem::take(&mut *live.stats.lock().unwrap_or_else(|p| p.into_inner()));
        Ok(vec![book.stats, served])
    }
}

/// Wakes every connection thread with `shutdown()` and waits for them; on an abort, books
/// the rows of those still running instead of waiting.
fn stop_all(shared: &Shared, live: &Live, book: &mut ThreadBook) {
    if !shared.stop.is_abort() {
        for c in live.all() {
            c.stopped.store(true, Ordering::Release);
            // A connection its thread has just closed may fail to shut down: harmless.
            let _ = book.stats.syscalls.shutdown(&c.fd);
        }
        live.wait_empty(shared);
    }
    if shared.stop.is_abort() {
        for c in live.all() {
            c.book_once(book, shared, CloseReason::Shutdown, false);
        }
    }
}

/// Starts the thread for `conn`, or turns the connection away with a `rejected` row when
/// no thread can be had (the `--max-threads` cap, or the machine's limits).
fn start_thread(shared: &Arc<Shared>, live: &Arc<Live>, nc: NewConn, book: &mut ThreadBook, spawning: &mut Episode) {
    let slot = live.reserve();
    let conn = Arc::new(Conn {
        fd: nc.fd,
        slot,
        meter: Mutex::new(nc.meter),
        logged: Mutex::new(false),
        stopped: AtomicBool::new(false),
    });
    let refused = match shared.cfg.max_threads {
        Some(max) if live.count() > max => Err(io::Error::new(
            io::ErrorKind::WouldBlock,
            format!("--max-threads {max} connection threads are running"),
        )),
        _ => read_buffer().and_then(|buf| {
            live.fill(slot, Arc::clone(&conn));
            book.stats.syscalls.count(Sys::Clone);
            let (sh, lv, c) = (Arc::clone(shared), Arc::clone(live), Arc::clone(&conn));
            sys::spawn_detached(STACK_BYTES, Box::new(move || conn_thread(&sh, &lv, &c, buf)))
        }),
    };
    match refused {
        Ok(()) => {
            if let Some(rejected) = spawning.succeeded() {
                shared.notify(Notice::ThreadSpawnRecovered { rejected });
            }
        }
        Err(e) => {
            live.release(slot);
            conn.book_once(book, shared, CloseReason::Rejected, false);
            book.stats.syscalls.count(Sys::Close);
            if spawning.failed() {
                let open = shared.open.load(Ordering::Relaxed);
                shared.notify(Notice::ThreadSpawnFailed { error: e.to_string(), open });
            }
        }
    }
}

/// A connection's read buffer, allocated by the acceptor so that running out of memory
/// turns the connection away with a row instead of aborting the process (a failed
/// allocation inside the thread could not be answered).
fn read_buffer() -> io::Result<Vec<u8>> {
    let mut buf = Vec::new();
    buf.try_reserve_exact(READ_BUF_BYTES)
        .map_err(|e| io::Error::new(io::ErrorKind::OutOfMemory, format!("read buffer: {e}")))?;
    // Zeroed a page at a time by memcpy: `resize` writes byte by byte in a debug build,
    // which made the acceptor, starved of CPU by busy connection threads, fall behind.
    const PAGE: [u8; 4096] = [0; 4096];
    while buf.len() < READ_BUF_BYTES {
        buf.extend_from_slice(&PAGE);
    }
    Ok(buf)
}

/// A connection's thread: echo until the client closes, an error, the idle timeout or a
/// stop; then its row, its counters, and its slot back.
fn conn_thread(shared: &Shared, live: &Live, conn: &Conn, buf: Vec<u8>) {
    let mut book = ThreadBook::new(conn.slot);
    let reason = echo(shared, conn, buf, &mut book);
    let reason = if conn.stopped.load(Ordering::Acquire) { CloseReason::Shutdown } else { reason };
    conn.book_once(&mut book, shared, reason, true);
    // The descriptor closes when the acceptor's handle goes too (now, or at its stop).
    book.stats.syscalls.count(Sys::Close);
    live.add_stats(&book.stats);
    live.release(conn.slot);
}

/// Reads and echoes until the connection ends; returns why.
fn echo(shared: &Shared, conn: &Conn, mut buf: Vec<u8>, book: &mut ThreadBook) -> CloseReason {
    let reason = echo_until_done(shared, conn, &mut buf, book);
    book.publish(&shared.live);
    reason
}

fn echo_until_done(shared: &Shared, conn: &Conn, buf: &mut [u8], book: &mut ThreadBook) -> CloseReason {
    if let Some(idle) = shared.cfg.idle_timeout {
        let sc = &mut book.stats.syscalls;
        // A read or write that waits this long returns EAGAIN: the connection was idle.
        sc.count(Sys::Setsockopt);
        sc.count(Sys::Setsockopt);
        if let Err(e) = sys::set_socket_timeouts(conn.fd.as_fd(), idle) {
            return CloseReason::from_error(&e);
        }
    }
    loop {
        match book.stats.syscalls.read(conn.fd.as_fd(), buf) {
            Ok(0) => return CloseReason::Eof,
            Ok(n) => {
                conn.meter().on_read(n, Instant::now());
                if let Err(r) = write_all(conn, &buf[..n], &mut book.stats.syscalls) {
                    return r;
                }
                // This thread's turn is one echo: its syscalls go to the live counters now.
                book.publish(&shared.live);
                // A busy thread stops itself: under thousands of runnable threads the
                // acceptor's shutdown() of each socket would reach this one only after
                // waiting its turn behind all the others (minutes at 4000 clients).
                if shared.stop.is_set() {
                    return CloseReason::Shutdown;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return blocking_error(&e),
        }
    }
}

fn write_all(conn: &Conn, mut data: &[u8], sc: &mut Syscalls) -> Result<(), CloseReason> {
    while !data.is_empty() {
        match sc.write(conn.fd.as_fd(), data) {
            Ok(n) => {
                data = &data[n..];
                conn.meter().touch(Instant::now());
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(blocking_error(&e)),
        }
    }
    Ok(())
}

/// Why a blocking call on a connection failed: a timed-out wait is the idle timeout.
fn blocking_error(e: &io::Error) -> CloseReason {
    match e.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => CloseReason::Timeout,
        _ => CloseReason::from_error(e),
    }
}
