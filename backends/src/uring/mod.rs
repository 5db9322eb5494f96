//! The io_uring backend: the same contract as epoll, built on the kernel's completion API.
//!
//! # Shape
//! The same as [`epoll`](crate::epoll), so the comparison is between kernel interfaces and
//! not between designs: one acceptor and N workers, each worker owning one ring and every
//! connection it is handed (worker-per-ring).
//!
//! - **Accept.** The acceptor keeps one *multishot accept* armed on the listening socket
//!   (registered as a fixed file): one request, one completion per connection. Each new
//!   descriptor is queued for a worker round-robin, and when that worker's queue was empty
//!   the acceptor posts an `IORING_OP_MSG_RING` completion into the worker's ring as its
//!   doorbell. That is an SQE in the acceptor's next batch, not a syscall per connection.
//! - **Why connections arrive as regular descriptors.** The per-connection log needs the
//!   peer, and a direct descriptor has no `getpeername`; one `getpeername` per connection
//!   costs 0.01 syscalls per request at the seed's 100 requests per connection. With
//!   `--uring-direct` the worker then moves each connection into its ring's file table
//!   (two SQEs, no syscall; see `desc`), keeping the address the acceptor read.
//! - **Receive.** Each connection has one *multishot receive* selecting buffers from a
//!   *provided buffer ring* shared by the worker's connections: the kernel picks a buffer
//!   when data arrives, so idle connections pin no memory. A buffer goes back to the ring
//!   only after the send that echoes it completes.
//! - **Send.** One send in flight per connection, so bytes leave in order; a short send is
//!   resubmitted from where it stopped. Sends are queued behind it in arrival order, and
//!   the next send carries up to 16 queued buffers in one vectored `sendmsg`.
//! - **Waiting.** One `io_uring_enter` per loop turn submits everything queued and waits;
//!   then every completion is reaped. Rings are created with `SINGLE_ISSUER | DEFER_TASKRUN`
//!   (completions are processed only when we ask, in our thread, in batches) and
//!   `SUBMIT_ALL`; the ring fd is registered so each enter skips the fd lookup. Event
//!   coalescing (see [`Coalesce`](crate::config::Coalesce)) is one call here: wait for `want`
//!   completions with a `min_wait` timeout (Linux 6.12+), falling back to a plain timeout.
//!
//! - **Opt-in** (see the README's feature table): receive bundles (`--uring-bundle`, Linux
//!   6.10+: one completion for every buffer an arrival filled; they pay from 4 KiB, but a
//!   bundle receive armed on a dry buffer ring was seen never to complete), direct
//!   descriptors (`--uring-direct`, see `desc`), zero-copy sends (`--uring-zc`,
//!   `--uring-zc-min-bytes`: the buffers are held until the kernel's notification, which
//!   on TCP comes with the peer's ACK) and the buffer ring registered as a fixed buffer
//!   for them (`--uring-regbuf`).
//!
//! Every feature is probed at start, falls back when missing, can be switched off
//! (`--uring-no-multishot`, `--uring-no-bufring`, `--uring-no-defer-taskrun`,
//! `--uring-no-sendvec`, `--uring-no-recv-cap`) or on, and is reported in the summary.
//!
//! # Correctness rules
//! - A connection's state, its queued buffers and its own buffer (without a buffer ring)
//!   live until its last in-flight operation completes; only then is its descriptor closed
//!   (with `IORING_OP_CLOSE`) and its slot reused, with a new generation in `user_data` so a
//!   stale completion can never be mistaken for the new connection's.
//! - Flow control: when a client does not read its echo, queued bytes grow; the multishot
//!   receive is armed with a byte cap (Linux 6.17+) so the kernel ends it at
//!   [`PENDING_HIGH_BYTES`] of queued echo (without the cap it is cancelled there), and it
//!   is re-armed only when the queue drains below [`PENDING_LOW_BYTES`]. The client is then
//!   held back by TCP flow control, as with epoll, and memory per connection stays
//!   bounded: 66–87 KiB of a client that never reads, where the cancel alone let one
//!   such client hold 680–880 KiB (tests/limits.rs, 200 such clients).
//! - `ENOBUFS` (the buffer ring ran dry) ends a multishot receive without losing data (it
//!   stays in the socket); the connection is re-armed as soon as buffers come back.
//! - A multishot request that ends (no `IORING_CQE_F_MORE`) is re-armed if still wanted.
//! - Shutdown cancels every request and waits for the cancellations before any buffer is
//!   freed; if the kernel has not answered within two seconds the buffers are leaked, not
//!   freed, so a late completion can never write into freed memory.
//!
//! # Layout
//! [`probe`](Features) (what the kernel offers) · `ring` (submission, waiting, and the
//! in-flight count in one place) · `user_data` (what a completion is for) · [`buf_ring`]
//! (buffers that return to the ring when dropped) · `conn` (one connection's state and
//! what it asks of the ring) · `worker` · `acceptor`.

mod acceptor;
pub mod buf_ring;
mod chunk;
mod conn;
mod desc;
mod probe;
mod ring;
mod sqe;
mod user_data;
mod worker;

use std::io;
use std::os::fd::OwnedFd;
use std::sync::Arc;

pub use buf_ring::{BufRing, RingBuf};
pub use conn::{PENDING_HIGH_BYTES, PENDING_LOW_BYTES};
pub use probe::Features;

use crate::backend::Backend;
use crate::book::ThreadStats;
use crate::config::ServerConfig;
use crate::shared::Shared;
use crate::worker::serve_with_workers;

/// The io_uring backend, with the features the probe found.
pub struct UringBackend {
    feat: Features,
}

/// Builds the backend (the registry's constructor): probes the kernel, failing with one
/// clear line if io_uring cannot be used here.
pub fn build(cfg: &ServerConfig) -> io::Result<Box<dyn Backend>> {
    Ok(Box::new(UringBackend { feat: Features::probe(&cfg.uring)? }))
}

impl Backend for UringBackend {
    fn features(&self) -> Vec<(String, String)> {
        self.feat.describe()
    }

    fn serve(self: Box<Self>, listener: OwnedFd, shared: &Arc<Shared>) -> io::Result<Vec<ThreadStats>> {
        let shared: &Shared = shared;
        let feat = &self.feat;
        serve_with_workers(
            shared,
            "uring",
            |_| worker::setup(feat),
            |setup, inbox, book| worker::run(feat, setup, shared, inbox, book),
            move |inboxes, targets, book| {
                let accepted = acceptor::run(feat, &listener, shared, inboxes, &targets, book);
                // No more connections: new clients are refused rather than left in the queue.
                drop(listener);
                accepted
            },
        )
    }
}
