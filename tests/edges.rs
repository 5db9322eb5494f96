//! Nothing lost at the edges, for every backend: a log on a disk that fills up, a summary
//! that cannot be written, and a second stop signal. The heavy form (a second signal
//! under 19,000 connections) is `#[ignore]`d:
//!
//! ```text
//! cargo test --release --test edges -- --ignored --test-threads 1 --nocapture
//! ```

mod common;

use std::io::Read;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::*;
use ringbench::backends::{CloseReason, Variant};
use ringbench::client::{self, ClientConfig};

/// 1000 connections × 5 requests against a server whose log is on a 32 KiB disk: rows for
/// the first few hundred fit, the rest cannot be written.
fn full_log_disk(backend: &Variant) {
    let Some(fs) = TinyFs::mount(32) else { return };
    let log = fs.path().join("log.csv");
    let srv = ServerProc::spawn_with(backend, &["--workers", "2"], None, Some(log.clone()), None);
    let mut cfg = ClientConfig::new(srv.addr, 1000, 5, 64);
    cfg.timeout = Duration::from_secs(30);
    let r = client::run(&cfg).unwrap();
    // The echo service never stopped: every request of every connection was verified.
    assert!(r.ok(), "{} client errors, first: {:?}", r.summary.errors, r.rows.iter().find(|t| t.errors > 0));
    eventually("every connection closed", || srv.unclosed() == 0);
    let (status, _, rows, summary) = srv.terminate();
    assert_eq!(status.code(), Some(1), "a server that lost log rows must exit 1 ({status:?})");
    let (written, lost) = (summary["log_rows"].as_u64().unwrap(), summary["log_rows_lost"].as_u64().unwrap());
    eprintln!("{}: {written} rows written, {lost} lost on a 32 KiB disk", backend.name);
    assert!(lost > 0, "nothing was lost: the disk did not fill, the test tested nothing");
    assert_eq!(written + lost, 1000, "every connection is either in the log or counted as lost");
    assert_eq!(summary["connections"].as_u64(), Some(1000));
    assert_eq!(rows.len() as u64, written, "the log holds exactly the rows it says it wrote");
    assert!(rows.iter().all(|r| r.close_reason == CloseReason::Eof && r.bytes == 320));
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.ends_with('\n'), "the log ends in half a row: {:?}", &text[text.len().saturating_sub(80)..]);
    let failures: Vec<_> =
        summary["notices"].as_array().unwrap().iter().filter(|n| n["kind"] == "write_failed").collect();
    assert_eq!(failures.len(), 1, "reported once: {}", summary["notices"]);
    assert!(failures[0]["path"].as_str().unwrap().ends_with("log.csv"), "{}", failures[0]);
}

/// The summary goes to a file that takes no bytes (/dev/full): one line naming it, exit 1,
/// and the log is still complete.
fn unwritable_summary(backend: &Variant) {
    let full = std::path::PathBuf::from("/dev/full");
    if !full.exists() {
        eprintln!("skipped: no /dev/full here");
        return;
    }
    let srv = ServerProc::spawn_with(backend, &["--workers", "2"], None, None, Some(full));
    let mut s: Vec<TcpStream> = (0..20).map(|_| connect(srv.addr)).collect();
    for (i, c) in s.iter_mut().enumerate() {
        checked_write(c, &pattern(i, 64));
        expect_read(c, &pattern(i, 64));
    }
    drop(s);
    eventually("every connection closed", || srv.unclosed() == 0);
    let (status, _, rows, _, out) = srv.terminate_with_output();
    assert_eq!(status.code(), Some(1), "{status:?}");
    assert_eq!(rows.len(), 20);
    let last = out.last().cloned().unwrap_or_default();
    assert!(last.contains("cannot write '/dev/full'") && last.contains("No space left"), "{out:?}");
}

/// `conns` open connections, then two stop signals a moment apart: the server skips the
/// orderly close but writes a row for every connection and its summary, and exits 130
/// within a second. A connection the server turned away at a machine limit it reported
/// (the threads backend runs out of threads before 19,000) keeps its `rejected` row.
fn second_signal(backend: &Variant, conns: usize) {
    let srv = ServerProc::spawn(backend, &[], None);
    let _ = ringbench::backends::sys::raise_nofile_limit();
    let mut held: Vec<TcpStream> = Vec::with_capacity(conns);
    let mut turned_away = 0;
    for i in 0..conns {
        let mut s = TcpStream::connect(srv.addr).expect("connect");
        // Every connection is checked, so that each is known to be served or turned away
        // before the signals.
        if echoed_or_turned_away(&mut s, &pattern(i, 64)) {
            held.push(s);
        } else {
            turned_away += 1;
        }
    }
    eventually("every connection accepted", || srv.established() == held.len());
    // Back to back, and two different signals (two pending SIGTERMs would be one): the
    // second arrives microseconds after the first, while the orderly close of `conns`
    // connections takes milliseconds, so it is the abort that is tested.
    srv.signal(libc::SIGTERM);
    let t = Instant::now();
    srv.signal(libc::SIGINT);
    let (status, _, rows, summary) = srv.terminate();
    let took = t.elapsed();
    eprintln!(
        "{}: second signal under {} connections ({turned_away} turned away): {status} after {took:?}",
        backend.name,
        held.len()
    );
    assert_eq!(status.code(), Some(130), "{status:?}");
    assert!(took < Duration::from_secs(1), "took {took:?} after the second signal");
    assert_eq!(rows.len(), conns, "one row per connection");
    let count = |reason| rows.iter().filter(|r| r.close_reason == reason).count();
    assert_eq!(count(CloseReason::Shutdown), held.len());
    assert_eq!(count(CloseReason::Rejected), turned_away);
    if turned_away > 0 {
        assert_eq!(notices_of(&summary, "thread_spawn_failed"), 1, "{}", summary["notices"]);
    }
    assert_eq!(summary["connections"].as_u64(), Some(held.len() as u64), "the summary was written");
    // Every connection was closed by the process exit, if not before.
    for mut s in held {
        let mut b = [0u8; 1];
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        assert!(matches!(s.read(&mut b), Ok(0) | Err(_)), "a connection is still open");
    }
}

/// Sends `data` and reads it back: true when echoed byte-exact, false when the server
/// closed the connection without a byte; anything else fails the test.
fn echoed_or_turned_away(s: &mut TcpStream, data: &[u8]) -> bool {
    use std::io::{ErrorKind, Write};
    let closed = |e: &std::io::Error| matches!(e.kind(), ErrorKind::ConnectionReset | ErrorKind::BrokenPipe);
    // The server may have reset a connection it turned away before this timeout is set.
    if let Err(e) = s.set_read_timeout(Some(Duration::from_secs(20))) {
        assert!(closed(&e) || e.kind() == ErrorKind::InvalidInput, "{e}");
        return false;
    }
    match s.write_all(data) {
        Err(e) if closed(&e) => return false,
        r => r.unwrap_or_else(|e| panic!("write failed: {e}")),
    }
    let mut first = [0u8; 1];
    match s.read(&mut first) {
        Ok(0) => return false,
        Err(e) if closed(&e) => return false,
        Ok(_) => assert_eq!(first[0], data[0], "byte 0 differs"),
        Err(e) => panic!("read failed: {e}"),
    }
    expect_read(s, &data[1..]);
    true
}

/// An abort requested before the orderly close begins: every connection still gets its
/// row, the summary says so, and the stop does not wait for the kernel.
fn abort_before_the_orderly_close(backend: &Variant) {
    let srv = TestServer::start(backend.clone());
    let mut held: Vec<TcpStream> = (0..200).map(|_| connect(srv.addr)).collect();
    for (i, s) in held.iter_mut().enumerate().step_by(7) {
        checked_write(s, &pattern(i, 100));
        expect_read(s, &pattern(i, 100));
    }
    srv.wait_settled(200, 200);
    srv.handle.shared().stop.abort();
    let t = Instant::now();
    let (summary, rows) = srv.stop();
    assert!(t.elapsed() < Duration::from_secs(1), "abort took {:?}", t.elapsed());
    assert!(summary.aborted);
    assert_eq!(rows.len(), 200);
    assert!(rows.iter().all(|r| r.close_reason == CloseReason::Shutdown));
    drop(held);
}

backend_suite!([epoll, uring, uring_no_bufring, uring_bundle, uring_inc, uring_zc, uring_direct, uring_direct_zc_regbuf, uring_direct_inc_zc_regbuf, uring_direct_bundle_zc_regbuf, threads] {
    fn an_abort_skips_the_orderly_close_but_logs_every_connection(backend) {
        abort_before_the_orderly_close(&backend);
    }

    fn a_full_log_disk_never_stops_serving_and_never_leaves_half_a_row(backend) {
        full_log_disk(&backend);
    }

    fn an_unwritable_summary_exits_1_with_every_row_written(backend) {
        unwritable_summary(&backend);
    }

    fn a_second_signal_still_writes_every_row_and_the_summary(backend) {
        second_signal(&backend, 1000);
    }

    #[ignore = "heavy: a second signal under 19,000 connections"]
    fn a_second_signal_under_19000_connections(backend) {
        second_signal(&backend, 19_000);
    }
});
