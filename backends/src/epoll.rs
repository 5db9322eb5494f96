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
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::book::{CloseReason, ConnMeter, ConnRecord, Sys, SyscallCounts, ThreadStats};
use crate::handoff::{finish_serve, stop_all_on_error, Inbox, NewConn};
use crate::server::Shared;
use crate::{sys, Backend};

/// Bytes read per `read` call; also the most a connection can have pending.
pub const READ_BUF_BYTES: usize = 64 * 1024;
/// Events fetched per `epoll_wait`.
const EVENTS_PER_WAIT: usize = 1024;
/// How long the acceptor waits before retrying after running out of descriptors.
pub const ACCEPT_RETRY_MS: i32 = 10;
/// A pending buffer larger than this is freed once drained, so a burst does not pin
/// memory for the rest of a connection's life.
const KEEP_PENDING_CAPACITY_BYTES: usize = 16 * 1024;

const TOKEN_STOP: u64 = u64::MAX;
const TOKEN_WAKE: u64 = u64::MAX - 1;
const TOKEN_LISTENER: u64 = 0;

/// The epoll backend.
pub struct Epoll;

impl Backend for Epoll {
    fn name(&self) -> &'static str {
        "epoll"
    }

    fn serve(self: Box<Self>, listener: OwnedFd, shared: &Shared) -> io::Result<Vec<ThreadStats>> {
        let inboxes: Vec<Inbox> = (0..shared.workers).map(|_| Inbox::default()).collect();
        // Each worker's doorbell: an eventfd the acceptor writes when its queue was empty.
        let doorbells = (0..shared.workers).map(|_| sys::eventfd()).collect::<io::Result<Vec<_>>>()?;
        // Workers are set up here, before anything is accepted: set up on their own threads
        // they raced the acceptor, which could take the last descriptors first and leave a
        // worker without its epoll instance (seen under a 64-descriptor limit).
        let workers = inboxes
            .iter()
            .zip(&doorbells)
            .enumerate()
            .map(|(id, (inbox, bell))| Worker::new(id, shared, inbox, bell))
            .collect::<io::Result<Vec<_>>>()?;
        std::thread::scope(|s| {
            let mut handles = Vec::with_capacity(workers.len());
            for w in workers {
                let h = std::thread::Builder::new()
                    .name(format!("ringbench-epoll-{}", w.id))
                    .spawn_scoped(s, move || stop_all_on_error(shared, w.run()));
                match h {
                    Ok(h) => handles.push(h),
                    Err(e) => {
                        shared.stop.trigger();
                        return Err(e);
                    }
                }
            }
            let accepted = accept_loop(&listener, shared, &inboxes, &doorbells);
            // No more connections: new clients are refused rather than left in the queue.
            drop(listener);
            finish_serve(shared, accepted, handles, &inboxes)
        })
    }
}

/// The acceptor: level-triggered epoll on the listening socket and the stop signal.
/// Accepts until EAGAIN each time the socket is ready and deals connections round-robin.
fn accept_loop(
    listener: &OwnedFd,
    shared: &Shared,
    inboxes: &[Inbox],
    doorbells: &[OwnedFd],
) -> io::Result<ThreadStats> {
    let mut st = ThreadStats::default();
    let mut rows: Vec<ConnRecord> = Vec::new();
    let ep = sys::epoll_create()?;
    sys::epoll_ctl(ep.as_fd(), libc::EPOLL_CTL_ADD, listener.as_raw_fd(), libc::EPOLLIN as u32, TOKEN_LISTENER)?;
    sys::epoll_ctl(ep.as_fd(), libc::EPOLL_CTL_ADD, shared.stop.fd().as_raw_fd(), libc::EPOLLIN as u32, TOKEN_STOP)?;
    st.syscalls.add(Sys::EpollCtl);
    st.syscalls.add(Sys::EpollCtl);
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 2];
    let mut next = 0usize;
    shared.mark_ready();
    let mut out_of_fds = OutOfFds::default();
    loop {
        let timeout = if out_of_fds.active { ACCEPT_RETRY_MS } else { -1 };
        st.syscalls.add(Sys::EpollWait);
        match sys::epoll_wait(ep.as_fd(), &mut events, timeout) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
        if shared.stop.is_set() {
            break;
        }
        if out_of_fds.active {
            // Listen again; if descriptors are still short the next accept says so.
            st.syscalls.add(Sys::EpollCtl);
            sys::epoll_ctl(
                ep.as_fd(),
                libc::EPOLL_CTL_MOD,
                listener.as_raw_fd(),
                libc::EPOLLIN as u32,
                TOKEN_LISTENER,
            )?;
        }
        loop {
            st.syscalls.add(Sys::Accept);
            match sys::accept4(listener.as_fd()) {
                Ok((fd, peer)) => {
                    out_of_fds.recovered();
                    let meter = ConnMeter::new(peer, fd.as_raw_fd());
                    let id = next % inboxes.len();
                    next = next.wrapping_add(1);
                    if !shared.admit() {
                        st.rejected += 1;
                        st.record(&mut rows, meter.finish(id, CloseReason::Rejected));
                        drop(fd);
                        st.syscalls.add(Sys::Close);
                        continue;
                    }
                    shared.open.fetch_add(1, Ordering::Relaxed);
                    if inboxes[id].push(NewConn { fd, meter }) {
                        st.syscalls.add(Sys::EventfdWrite);
                        sys::eventfd_signal(doorbells[id].as_fd())?;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e)
                    if matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)) =>
                {
                    // Out of descriptors (or kernel memory). The listen queue keeps the
                    // waiting clients; stop watching the socket (level-triggered, it would
                    // wake us at once, forever) and retry after a short sleep.
                    st.accept_fd_exhausted += 1;
                    out_of_fds.hit(&e, shared.open.load(Ordering::Relaxed));
                    st.syscalls.add(Sys::EpollCtl);
                    sys::epoll_ctl(ep.as_fd(), libc::EPOLL_CTL_MOD, listener.as_raw_fd(), 0, TOKEN_LISTENER)?;
                    break;
                }
                // The client gave up between SYN and accept, or a signal: keep accepting.
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::ECONNABORTED | libc::EINTR | libc::EPROTO | libc::EPERM)
                    ) => {}
                Err(e) => return Err(io::Error::new(e.kind(), format!("accept failed: {e}"))),
            }
        }
        shared.log.append(&mut rows)?;
    }
    shared.log.append(&mut rows)?;
    Ok(st)
}

/// Reports running out of descriptors once per episode instead of once per attempt.
///
/// Near the limit the acceptor flaps: one descriptor frees up, one accept succeeds, the
/// next fails again. An episode therefore only ends after a second with no failure, so a
/// flapping server reports once, not once per freed descriptor.
#[derive(Default)]
pub struct OutOfFds {
    /// Accepting is paused (the acceptor retries every [`ACCEPT_RETRY_MS`]).
    pub active: bool,
    reported: bool,
    attempts: u64,
    last_hit: Option<Instant>,
}

impl OutOfFds {
    const QUIET: Duration = Duration::from_secs(1);

    pub fn hit(&mut self, e: &io::Error, open: usize) {
        self.attempts += 1;
        self.active = true;
        self.last_hit = Some(Instant::now());
        if !self.reported {
            self.reported = true;
            eprintln!(
                "ringbench: accept failed: {e}; still serving the {open} open connections, \
                 retrying every {ACCEPT_RETRY_MS} ms (reported once; raise the limit with ulimit -n)"
            );
        }
    }

    /// A connection was accepted.
    pub fn recovered(&mut self) {
        self.active = false;
        if self.reported && self.last_hit.is_some_and(|t| t.elapsed() >= Self::QUIET) {
            eprintln!("ringbench: accepting again after {} failed attempts", self.attempts);
            self.reported = false;
            self.attempts = 0;
        }
    }
}

/// One connection as an epoll worker holds it.
struct Conn {
    fd: OwnedFd,
    meter: ConnMeter,
    /// Echo bytes the socket would not take yet; sent from `sent` on at the next EPOLLOUT.
    pending: Vec<u8>,
    sent: usize,
    /// The last readiness edge said there may be data we have not read.
    readable: bool,
    /// The peer half-closed: no further edge will come, so read until 0.
    peer_closed: bool,
    last_active: Instant,
}

impl Conn {
    fn has_pending(&self) -> bool {
        self.sent < self.pending.len()
    }

    /// Does what the connection's readiness allows: first flush what is pending, then, if
    /// nothing is pending, read and echo. `Some(reason)` means the connection is over.
    fn pump(
        &mut self,
        can_write: bool,
        scratch: &mut [u8],
        sc: &mut SyscallCounts,
        now: Instant,
    ) -> Option<CloseReason> {
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
        if !self.readable {
            return None;
        }
        loop {
            sc.add(Sys::Read);
            match sys::read(self.fd.as_fd(), scratch) {
                Ok(0) => return Some(CloseReason::Eof),
                Ok(n) => {
                    self.meter.on_read(n);
                    self.last_active = now;
                    match self.echo(&scratch[..n], sc) {
                        Err(r) => return Some(r),
                        // The socket is full: stop reading until it drains.
                        Ok(true) => return None,
                        Ok(false) => {}
                    }
                    if n < scratch.len() && !self.peer_closed {
                        self.readable = false;
                        return None;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.readable = false;
                    return None;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Some(CloseReason::from_error(&e)),
            }
        }
    }

    /// Writes `data`; what the socket does not take is kept in `pending`. Returns whether
    /// anything was kept.
    fn echo(&mut self, data: &[u8], sc: &mut SyscallCounts) -> Result<bool, CloseReason> {
        let mut off = 0;
        loop {
            sc.add(Sys::Write);
            match sys::write(self.fd.as_fd(), &data[off..]) {
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
    fn flush(&mut self, sc: &mut SyscallCounts, now: Instant) -> Result<(), CloseReason> {
        while self.has_pending() {
            sc.add(Sys::Write);
            match sys::write(self.fd.as_fd(), &self.pending[self.sent..]) {
                Ok(m) => {
                    self.sent += m;
                    self.last_active = now;
                    if self.has_pending() {
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
    id: usize,
    ep: OwnedFd,
    shared: &'a Shared,
    inbox: &'a Inbox,
    conns: Vec<Option<Conn>>,
    free: Vec<usize>,
    /// Connections held now (slots in use).
    open: usize,
    scratch: Box<[u8]>,
    stats: ThreadStats,
    rows: Vec<ConnRecord>,
}

impl<'a> Worker<'a> {
    fn new(id: usize, shared: &'a Shared, inbox: &'a Inbox, doorbell: &'a OwnedFd) -> io::Result<Self> {
        let ep = sys::epoll_create()?;
        // The stop signal is level-triggered: once set, every wait returns at once.
        sys::epoll_ctl(
            ep.as_fd(),
            libc::EPOLL_CTL_ADD,
            shared.stop.fd().as_raw_fd(),
            libc::EPOLLIN as u32,
            TOKEN_STOP,
        )?;
        sys::epoll_ctl(
            ep.as_fd(),
            libc::EPOLL_CTL_ADD,
            doorbell.as_raw_fd(),
            (libc::EPOLLIN | libc::EPOLLET) as u32,
            TOKEN_WAKE,
        )?;
        let mut stats = ThreadStats::default();
        stats.syscalls.add(Sys::EpollCtl);
        stats.syscalls.add(Sys::EpollCtl);
        Ok(Worker {
            id,
            ep,
            shared,
            inbox,
            conns: Vec::new(),
            free: Vec::new(),
            open: 0,
            scratch: vec![0u8; READ_BUF_BYTES].into_boxed_slice(),
            stats,
            rows: Vec::new(),
        })
    }

    fn run(mut self) -> io::Result<ThreadStats> {
        let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; EVENTS_PER_WAIT];
        let mut arrivals = Vec::new();
        let idle = self.shared.cfg.idle_timeout;
        // With an idle timeout, wake a few times per timeout period to look for idle
        // connections; without one, sleep until something happens.
        let tick_ms = idle.map_or(-1, |d| (d.as_millis() / 4).clamp(10, 1000) as i32);
        let mut last_scan = Instant::now();
        let coalesce = self.shared.coalesce();
        loop {
            self.stats.syscalls.add(Sys::EpollWait);
            let n = match sys::epoll_wait(self.ep.as_fd(), &mut events, tick_ms) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => 0,
                Err(e) => return Err(e),
            };
            let now = Instant::now();
            let mut woken = false;
            for ev in &events[..n] {
                let (token, mask) = (ev.u64, ev.events);
                match token {
                    TOKEN_STOP => {}
                    TOKEN_WAKE => woken = true,
                    idx => self.on_event(idx as usize, mask, now),
                }
            }
            if self.shared.stop.is_set() {
                break;
            }
            // New connections are adopted after the batch, so a slot freed in this batch
            // is never reused while an event for its old connection is still unread.
            if woken {
                // No read of the eventfd: registered edge-triggered, every signal is a new
                // edge, so its counter never needs resetting (it would take 2^64 wake-ups
                // to saturate), and the read would cost a syscall per batch of arrivals.
                self.inbox.take(&mut arrivals);
                for c in arrivals.drain(..) {
                    self.adopt(c, now)?;
                }
            }
            if let Some(limit) = idle {
                if now.duration_since(last_scan) >= Duration::from_millis(tick_ms as u64) {
                    last_scan = now;
                    self.close_idle(now, limit);
                }
            }
            self.shared.log.append(&mut self.rows)?;
            if n > 0 && n < coalesce.want(self.open) {
                self.stats.syscalls.add(Sys::Nanosleep);
                std::thread::sleep(Duration::from_micros(u64::from(coalesce.wait_us)));
            }
        }
        // Shutdown: close every connection we hold and everything still queued for us.
        for idx in 0..self.conns.len() {
            if self.conns[idx].is_some() {
                self.close(idx, CloseReason::Shutdown);
            }
        }
        self.inbox.close_leftovers(self.id, &mut self.stats, &mut self.rows);
        self.shared.log.append(&mut self.rows)?;
        Ok(self.stats)
    }

    fn adopt(&mut self, c: NewConn, now: Instant) -> io::Result<()> {
        let idx = self.free.pop().unwrap_or_else(|| {
            self.conns.push(None);
            self.conns.len() - 1
        });
        let events = (libc::EPOLLIN | libc::EPOLLOUT | libc::EPOLLRDHUP | libc::EPOLLET) as u32;
        self.stats.syscalls.add(Sys::EpollCtl);
        if let Err(e) = sys::epoll_ctl(self.ep.as_fd(), libc::EPOLL_CTL_ADD, c.fd.as_raw_fd(), events, idx as u64) {
            // Registration failed (kernel memory): the connection cannot be served, but it
            // still gets its row.
            self.free.push(idx);
            self.stats.record(&mut self.rows, c.meter.finish(self.id, CloseReason::Error));
            self.shared.open.fetch_sub(1, Ordering::Relaxed);
            self.stats.syscalls.add(Sys::Close);
            eprintln!("ringbench: epoll_ctl(ADD) failed for a new connection: {e}");
            return Ok(());
        }
        // Data that arrived before registration is reported by the ADD itself (epoll checks
        // readiness when a file is added), so nothing is missed here.
        self.open += 1;
        self.conns[idx] = Some(Conn {
            fd: c.fd,
            meter: c.meter,
            pending: Vec::new(),
            sent: 0,
            readable: false,
            peer_closed: false,
            last_active: now,
        });
        Ok(())
    }

    fn on_event(&mut self, idx: usize, mask: u32, now: Instant) {
        let Some(conn) = self.conns.get_mut(idx).and_then(Option::as_mut) else {
            return;
        };
        let hup = (libc::EPOLLRDHUP | libc::EPOLLHUP) as u32;
        if mask & (libc::EPOLLIN as u32 | libc::EPOLLERR as u32 | hup) != 0 {
            conn.readable = true;
        }
        if mask & hup != 0 {
            conn.peer_closed = true;
        }
        let can_write = mask & (libc::EPOLLOUT | libc::EPOLLERR | libc::EPOLLHUP) as u32 != 0;
        if let Some(reason) = conn.pump(can_write, &mut self.scratch, &mut self.stats.syscalls, now) {
            self.close(idx, reason);
        }
    }

    fn close_idle(&mut self, now: Instant, limit: Duration) {
        for idx in 0..self.conns.len() {
            if self.conns[idx].as_ref().is_some_and(|c| now.duration_since(c.last_active) >= limit) {
                self.close(idx, CloseReason::Timeout);
            }
        }
    }

    fn close(&mut self, idx: usize, reason: CloseReason) {
        if let Some(conn) = self.conns[idx].take() {
            self.free.push(idx);
            self.open -= 1;
            self.stats.record(&mut self.rows, conn.meter.finish(self.id, reason));
            // Closing removes the descriptor from the epoll set as well.
            drop(conn.fd);
            self.stats.syscalls.add(Sys::Close);
            self.shared.open.fetch_sub(1, Ordering::Relaxed);
        }
    }
}
