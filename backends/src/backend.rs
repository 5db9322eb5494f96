//! The trait every backend implements.

use std::io;
use std::os::fd::OwnedFd;
use std::sync::Arc;

use crate::book::ThreadStats;
use crate::shared::Shared;

/// A way of serving echo connections. An implementation receives a bound, listening,
/// non-blocking socket and serves it until [`Shared::stop`] fires, then closes every
/// connection (one log row each) and returns every thread's counters.
///
/// What every backend must do is tested once for all of them (`tests/backends.rs`); a new
/// backend is one file (or folder) and one entry in [`crate::server::BACKENDS`].
pub trait Backend: Send {
    /// Serves `listener` until stopped. Runs on the caller's thread (it becomes the
    /// acceptor) and spawns whatever threads the backend needs.
    fn serve(self: Box<Self>, listener: OwnedFd, shared: &Arc<Shared>) -> io::Result<Vec<ThreadStats>>;

    /// Which optional kernel features this backend ended up using, for the summary.
    fn features(&self) -> Vec<(String, String)> {
        Vec::new()
    }
}
