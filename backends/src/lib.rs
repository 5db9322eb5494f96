//! The echo-server backends of ringbench behind one trait.
//!
//! Both backends have the same shape, so the comparison is between kernel interfaces and
//! not between designs: one acceptor thread and N workers, each worker owning its own
//! event source (an epoll instance, or an io_uring) and every connection it is handed.
//!
//! - [`epoll`]: edge-triggered, worker-per-epoll; each connection registered once.
//! - [`uring`]: worker-per-ring io_uring with multishot accept and receive, provided buffer
//!   rings and deferred task running, each feature detected at start with a fallback.
//!
//! What a backend records (one [`ConnRecord`] per connection, syscall counts, the summary)
//! is shared code in [`book`], so the two logs compare column by column.

pub mod book;
pub mod epoll;
mod handoff;
mod server;
pub mod sys;
pub mod uring;

pub use book::{read_log, CloseReason, Coalesce, ConnLog, ConnMeter, ConnRecord, Sys, SyscallCounts, ThreadStats};
/// The io_uring crate, for callers of [`uring::BufRing`].
pub use io_uring;
pub use server::{
    start, BackendKind, ServerConfig, ServerHandle, ServerSummary, Shared, StopSignal, UringOptions,
    DEFAULT_COALESCE_US,
};

use std::io;
use std::os::fd::OwnedFd;

/// A way of serving echo connections. Implementations receive a bound, listening,
/// non-blocking socket and serve it until [`Shared::stop`] fires, then close every
/// connection (one log row each) and return the per-thread counters.
pub trait Backend: Send {
    /// The name used on the command line and in every report (`epoll`, `uring`).
    fn name(&self) -> &'static str;

    /// Serves `listener` until stopped. Runs on the caller's thread (it becomes the
    /// acceptor) and spawns the workers itself.
    fn serve(self: Box<Self>, listener: OwnedFd, shared: &Shared) -> io::Result<Vec<ThreadStats>>;

    /// Which optional kernel features this backend ended up using, for the summary.
    fn features(&self) -> Vec<(String, String)> {
        Vec::new()
    }
}
