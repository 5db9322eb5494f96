//! ringbench: is io_uring faster than epoll for a TCP echo server on this machine — where,
//! by how much, and why?
//!
//! The backends (the `Backend` trait, epoll, io_uring) live in the `ringbench-backends`
//! crate, re-exported here as [`backends`]. This crate holds what drives and measures them:
//! the verifying load [`client`] and the command line ([`cli`]).

pub mod cli;
pub mod client;
pub mod env;
pub mod matrix;
pub mod report;
pub mod variant;

pub use ringbench_backends as backends;
