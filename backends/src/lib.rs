//! The echo-server backends of ringbench behind one trait.
//!
//! Every backend has the same contract — one log row per connection, syscalls counted by
//! kind, `--idle-timeout`, `--max-conns`, an orderly stop — so a comparison is between
//! kernel interfaces, not between designs:
//!
//! - [`epoll`]: edge-triggered, worker-per-epoll; each connection registered once.
//! - [`uring`]: worker-per-ring io_uring with multishot accept and receive, provided buffer
//!   rings and deferred task running, each feature detected at start with a fallback.
//! - [`threads`]: one blocking thread per connection, the traditional server the seed
//!   compares epoll against.
//!
//! # Layers
//! Dependencies point one way, from the bottom up (checked by `tests/architecture.rs`):
//!
//! 1. [`sys`] — every raw syscall; a typed [`sys::Epoll`]; [`sys::Syscalls`], which makes
//!    the calls and counts them.
//! 2. [`book`] — what a connection and a thread record; [`notice`] — what the server tells
//!    its operator, as data; [`log`] — the per-connection CSV.
//! 3. [`config`] — what a run is configured by, and the feature switches; [`shared`] —
//!    state every thread of a server shares.
//! 4. Shared serving parts: [`accept`] (errno classes, out-of-descriptor pauses, the one
//!    accept-and-route path), [`handoff`] (worker queues), [`table`] (a worker's
//!    connections and their close bookkeeping), [`worker`] (start-up and shutdown of
//!    workers, the idle tick), and the [`Backend`] trait.
//! 5. The backends: [`epoll`], [`uring`], [`threads`]. None imports another.
//! 6. [`server`] — the registry of backends, start and stop, the summary — and
//!    [`variant`], names for backends with switches.

pub mod accept;
mod backend;
pub mod book;
pub mod config;
pub mod epoll;
pub mod handoff;
pub mod log;
pub mod notice;
pub mod server;
pub mod shared;
pub mod sys;
pub mod table;
pub mod threads;
pub mod uring;
pub mod variant;
pub mod worker;

pub use backend::Backend;
pub use book::{CloseReason, ConnMeter, ConnRecord, ThreadBook, ThreadStats};
pub use config::{Coalesce, ServerConfig, UringOptions, DEFAULT_COALESCE_US, SWITCHES};
/// The io-uring crate, for callers of [`uring::BufRing`].
pub use io_uring;
pub use log::{read_log, ConnLog};
pub use notice::{Notice, NoticeSink};
pub use server::{backend, start, Registered, ServerHandle, ServerSummary, BACKENDS};
pub use shared::{Shared, StopSignal};
pub use sys::{Sys, Syscalls};
pub use variant::Variant;
