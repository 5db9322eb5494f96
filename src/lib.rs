//! ringbench: is io_uring faster than epoll for a TCP echo server on this machine — where,
//! by how much, and why?
//!
//! The backends (the `Backend` trait and every implementation) live in the
//! `ringbench-backends` crate, re-exported here as [`backends`]. This crate drives and
//! measures them. Its modules depend one way: the command line ([`cli`]) parses into
//! typed options; [`app`] runs them with the [`client`], the [`matrix`] (which starts
//! servers through [`server_proc`]) and the [`report`]; the report reads only the
//! [`results`] types and writes through [`files`].

pub mod app;
pub mod cli;
pub mod client;
pub mod env;
pub mod files;
pub mod guard;
pub mod hosts;
pub mod matrix;
pub mod probe;
pub mod report;
pub mod results;
pub mod server_proc;
pub mod steal;
pub mod workload;

pub use ringbench_backends as backends;
