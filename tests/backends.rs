//! The behaviour every backend must show. Each test is written once and runs once per
//! backend in the list at the top of `backend_suite!`.

mod common;

use std::collections::HashSet;
use std::io::Write;
use std::net::Shutdown;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use ringbench::backends::CloseReason;
use ringbench::client::{self, ClientConfig};

fn client_cfg(addr: std::net::SocketAddr, conns: usize, requests: u64, size: usize) -> ClientConfig {
    let mut c = ClientConfig::new(addr, conns, requests, size);
    c.timeout = Duration::from_secs(30);
    c.label = "test".into();
    c
}

#[track_caller]
fn assert_ok(r: &client::ClientReport) {
    let first = r.rows.iter().find(|t| t.errors > 0).map(|t| t.error.clone());
    assert!(r.ok(), "client run failed: {} errors, first: {first:?}", r.summary.errors);
}

backend_suite!([epoll, uring, uring_no_multishot, uring_no_bufring, uring_no_defer_taskrun, uring_sqpoll] {
    fn echoes_every_size_byte_exact(backend) {
        let srv = TestServer::start(backend);
        let mut expected_rows = 0;
        for (size, requests) in [(1usize, 50u64), (64, 50), (4096, 20), (1 << 20, 3)] {
            let r = client::run(&client_cfg(srv.addr, 4, requests, size)).unwrap();
            assert_ok(&r);
            assert_eq!(r.summary.bytes, 4 * requests * size as u64, "size {size}");
            expected_rows += 4;
        }
        let (summary, rows) = srv.stop();
        assert_eq!(rows.len(), expected_rows);
        assert_eq!(summary.connections, expected_rows as u64);
        assert!(rows.iter().all(|r| r.close_reason == CloseReason::Eof), "{rows:?}");
    }

    fn verifies_1000_concurrent_connections(backend) {
        let srv = TestServer::start(backend);
        let r = client::run(&client_cfg(srv.addr, 1000, 10, 64)).unwrap();
        assert_ok(&r);
        assert_eq!(r.summary.requests, 10_000);
        assert_eq!(r.rows.len(), 1000);
        let (summary, rows) = srv.stop();
        assert_eq!(rows.len(), 1000);
        assert_eq!(summary.log_rows, 1000);
        assert!(rows.iter().all(|r| r.bytes == 640 && r.close_reason == CloseReason::Eof));
    }

    fn logs_exactly_one_row_per_connection(backend) {
        let srv = TestServer::start(backend);
        // Three kinds of connection: a full client run, ones that close without a byte,
        // and ones that reset after a partial request.
        assert_ok(&client::run(&client_cfg(srv.addr, 30, 5, 64)).unwrap());
        for _ in 0..20 {
            drop(connect(srv.addr));
        }
        for i in 0..10 {
            let mut s = connect(srv.addr);
            checked_write(&mut s, &pattern(i, 10));
            reset(s);
        }
        srv.wait_settled(60, 0);
        let (summary, rows) = srv.stop();
        assert_eq!(rows.len(), 60, "one row per connection");
        assert_eq!(summary.connections, 60);
        // A backend that learns the peer after accepting (io_uring's multishot accept has no
        // address) cannot name a client that reset first; those are logged as 0.0.0.0:0.
        let unknown = rows.iter().filter(|r| r.peer.port() == 0).count();
        assert!(unknown <= 10, "{unknown} rows without a peer");
        let peers: HashSet<_> = rows.iter().map(|r| r.peer).filter(|p| p.port() != 0).collect();
        assert_eq!(peers.len(), 60 - unknown, "no connection logged twice");
        assert_eq!(rows.iter().filter(|r| r.bytes == 320).count(), 30);
    }

    fn echoes_8_mib_written_before_any_read_in_order(backend) {
        let srv = TestServer::start(backend);
        let data = pattern(7, 8 << 20);
        let mut s = connect(srv.addr);
        let mut w = s.try_clone().unwrap();
        let sent = data.clone();
        let writer = std::thread::spawn(move || w.write_all(&sent).map(|_| w));
        // Read nothing for a while: the server must hold its echo back, not drop it.
        std::thread::sleep(Duration::from_millis(500));
        expect_read(&mut s, &data);
        let w = writer.join().unwrap().expect("writer finished");
        w.shutdown(Shutdown::Write).unwrap();
        expect_eof(&mut s);
        let (_, rows) = srv.stop();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].bytes, 8 << 20);
        assert_eq!(rows[0].close_reason, CloseReason::Eof);
    }

    fn half_close_gets_every_byte_then_eof(backend) {
        let srv = TestServer::start(backend);
        let data = pattern(3, 300_000);
        let mut s = connect(srv.addr);
        checked_write(&mut s, &data);
        s.shutdown(Shutdown::Write).unwrap();
        expect_read(&mut s, &data);
        expect_eof(&mut s);
        let (_, rows) = srv.stop();
        assert_eq!(rows.len(), 1);
        assert_eq!((rows[0].bytes, rows[0].close_reason), (300_000, CloseReason::Eof));
    }

    fn reset_mid_request_leaves_others_served(backend) {
        let srv = TestServer::start(backend);
        let mut good = connect(srv.addr);
        checked_write(&mut good, &pattern(1, 64));
        expect_read(&mut good, &pattern(1, 64));
        for i in 0..50 {
            let mut s = connect(srv.addr);
            checked_write(&mut s, &pattern(100 + i, 32));
            reset(s);
        }
        for i in 0..20 {
            let p = pattern(200 + i, 64);
            checked_write(&mut good, &p);
            expect_read(&mut good, &p);
        }
        srv.wait_settled(51, 1);
        drop(good);
        srv.wait_settled(51, 0);
        let (_, rows) = srv.stop();
        assert_eq!(rows.len(), 51);
        let resets = rows.iter().filter(|r| r.close_reason == CloseReason::Reset).count();
        assert_eq!(resets, 50, "{rows:?}");
    }

    fn shutdown_closes_and_logs_every_connection(backend) {
        let srv = TestServer::start(backend);
        let idle: Vec<_> = (0..100).map(|_| connect(srv.addr)).collect();
        let mut busy: Vec<_> = (0..10).map(|_| connect(srv.addr)).collect();
        for (i, s) in busy.iter_mut().enumerate() {
            checked_write(s, &pattern(i, 1000));
            expect_read(s, &pattern(i, 1000));
        }
        srv.wait_settled(110, 110);
        let t = Instant::now();
        let (summary, rows) = srv.stop();
        assert!(t.elapsed() < Duration::from_secs(3), "stop took {:?}", t.elapsed());
        assert_eq!(rows.len(), 110);
        assert_eq!(summary.log_rows, 110);
        assert!(rows.iter().all(|r| r.close_reason == CloseReason::Shutdown));
        for mut s in idle.into_iter().chain(busy) {
            expect_eof(&mut s);
        }
    }

    fn idle_timeout_closes_quiet_connections(backend) {
        let srv = TestServer::start_with(backend, |c| c.idle_timeout = Some(Duration::from_millis(300)));
        let mut quiet: Vec<_> = (0..5).map(|_| connect(srv.addr)).collect();
        let t = Instant::now();
        for s in &mut quiet {
            expect_eof(s);
        }
        assert!(t.elapsed() >= Duration::from_millis(250), "closed too early: {:?}", t.elapsed());
        let (_, rows) = srv.stop();
        assert_eq!(rows.len(), 5);
        assert!(rows.iter().all(|r| r.close_reason == CloseReason::Timeout), "{rows:?}");
    }

    fn max_conns_turns_away_the_excess_and_keeps_serving(backend) {
        let srv = TestServer::start_with(backend, |c| c.max_conns = Some(5));
        let mut kept: Vec<_> = (0..5).map(|_| connect(srv.addr)).collect();
        srv.wait_settled(5, 5);
        let mut extra = connect(srv.addr);
        expect_eof(&mut extra);
        for (i, s) in kept.iter_mut().enumerate() {
            checked_write(s, &pattern(i, 64));
            expect_read(s, &pattern(i, 64));
        }
        drop(kept);
        srv.wait_settled(6, 0);
        let (summary, rows) = srv.stop();
        assert_eq!(summary.rejected, 1);
        assert_eq!(rows.len(), 6);
        assert_eq!(rows.iter().filter(|r| r.close_reason == CloseReason::Rejected).count(), 1);
    }

    fn random_sizes_and_chunking_echo_exactly(backend) {
        use proptest::prelude::*;
        use proptest::test_runner::{Config, TestRunner};
        let srv = TestServer::start(backend);
        let addr = srv.addr;
        let mut runner = TestRunner::new(Config { cases: 16, failure_persistence: None, ..Config::default() });
        let strategy = (
            proptest::collection::vec(1usize..70_000, 1..6),
            1usize..5,
            proptest::collection::vec(1usize..20_000, 1..8),
            proptest::collection::vec(1usize..20_000, 1..8),
        );
        let conns_total = std::cell::Cell::new(0usize);
        runner
            .run(&strategy, |(sizes, conns, writes, reads)| {
                conns_total.set(conns_total.get() + conns);
                let mut handles = Vec::new();
                for c in 0..conns {
                    let (sizes, writes, reads) = (sizes.clone(), writes.clone(), reads.clone());
                    handles.push(std::thread::spawn(move || {
                        let data: Vec<u8> = sizes.iter().enumerate().flat_map(|(i, &n)| pattern(c * 100 + i, n)).collect();
                        let mut s = connect(addr);
                        let mut w = s.try_clone().unwrap();
                        let sent = data.clone();
                        // Write in the drawn chunk sizes while reading in others.
                        let writer = std::thread::spawn(move || {
                            let mut off = 0;
                            for n in writes.iter().cycle() {
                                if off == sent.len() {
                                    break;
                                }
                                let end = (off + n).min(sent.len());
                                w.write_all(&sent[off..end]).unwrap();
                                off = end;
                            }
                        });
                        let mut got = Vec::with_capacity(data.len());
                        let mut buf = vec![0u8; 20_000];
                        for n in reads.iter().cycle() {
                            if got.len() == data.len() {
                                break;
                            }
                            let want = (*n).min(data.len() - got.len());
                            let k = std::io::Read::read(&mut s, &mut buf[..want]).unwrap();
                            assert!(k > 0, "EOF after {} of {} bytes", got.len(), data.len());
                            got.extend_from_slice(&buf[..k]);
                        }
                        writer.join().unwrap();
                        got == data
                    }));
                }
                for h in handles {
                    prop_assert!(h.join().map_err(|_| TestCaseError::fail("connection thread panicked"))?, "echo differs");
                }
                Ok(())
            })
            .unwrap();
        srv.wait_settled(conns_total.get(), 0);
        let (_, rows) = srv.stop();
        assert_eq!(rows.len(), conns_total.get());
    }

    fn binary_serves_then_exits_0_on_sigterm_with_every_row(backend) {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("log.csv");
        let summary = dir.path().join("summary.json");
        let mut child = Command::new(env!("CARGO_BIN_EXE_ringbench"))
            .args(["server", "--backend", backend.kind.name(), "--bind", "127.0.0.1:0", "--workers", "2"])
            .args(&backend.flags)
            .arg("--log")
            .arg(&log)
            .arg("--summary-json")
            .arg(&summary)
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let addr = read_listening_addr(&mut child);
        let r = client::run(&client_cfg(addr, 50, 20, 64)).unwrap();
        assert_ok(&r);
        let idle: Vec<_> = (0..20).map(|_| connect(addr)).collect();
        std::thread::sleep(Duration::from_millis(200));
        let t = Instant::now();
        // SAFETY: kill(2) on our own child's pid.
        assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
        let status = child.wait().unwrap();
        assert!(t.elapsed() < Duration::from_secs(3), "exit took {:?}", t.elapsed());
        assert!(status.success(), "{status:?}");
        let rows = ringbench::backends::read_log(&log).unwrap();
        assert_eq!(rows.len(), 70);
        let json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&summary).unwrap()).unwrap();
        assert_eq!(json["connections"], 70);
        assert_eq!(json["backend"], backend.kind.name());
        let by_kind: u64 = json["syscalls"].as_object().unwrap().values().map(|v| v.as_u64().unwrap()).sum();
        assert!(by_kind > 0);
        assert_eq!(json["syscalls_total"].as_u64().unwrap(), by_kind);
        drop(idle);
    }
});

/// Reads the server's stderr until its "listening on ADDR" line and returns ADDR; the rest
/// of stderr is drained by a thread so the server never blocks on a full pipe.
fn read_listening_addr(child: &mut std::process::Child) -> std::net::SocketAddr {
    use std::io::BufRead;
    let mut lines = std::io::BufReader::new(child.stderr.take().unwrap()).lines();
    for line in lines.by_ref() {
        let line = line.unwrap();
        if let Some(rest) = line.split("listening on ").nth(1) {
            let addr = rest.split_whitespace().next().unwrap().parse().unwrap();
            std::thread::spawn(move || lines.for_each(drop));
            return addr;
        }
    }
    panic!("server exited before listening");
}

/// Runs 200 connections × 20 verified 3000-byte requests against one io_uring worker
/// starved of one resource by `tweak`, checks nothing was lost, and returns the summary.
fn uring_under_scarcity(
    tweak: impl FnOnce(&mut ringbench::backends::UringOptions),
) -> ringbench::backends::ServerSummary {
    let v = ringbench::variant::Variant::parse("uring").unwrap();
    let srv = TestServer::start_with(v, |c| {
        c.workers = 1;
        tweak(&mut c.uring);
    });
    let r = client::run(&client_cfg(srv.addr, 200, 20, 3000)).unwrap();
    assert_ok(&r);
    srv.wait_settled(200, 0);
    let (summary, rows) = srv.stop();
    assert_eq!(rows.len(), 200);
    assert!(rows.iter().all(|r| r.bytes == 20 * 3000 && r.close_reason == CloseReason::Eof));
    summary
}

/// io_uring only (epoll has no shared buffers): a provided-buffer ring far smaller than the
/// load runs dry (ENOBUFS ends the multishot receive) again and again; receives are re-armed
/// as buffers come back, and not a byte is lost.
#[test]
fn uring_buffer_ring_exhaustion_loses_nothing() {
    let summary = uring_under_scarcity(|u| {
        u.buffers = 2;
        u.buffer_size = 1024;
    });
    assert!(summary.bufring_empty > 0, "the ring never ran dry: the test did not test ENOBUFS");
}

/// io_uring only: rings of 8 entries under 200 connections. The completion queue overflows
/// (the kernel holds completions back and they are flushed by the next wait) and the
/// submission queue fills (entries wait in the backlog): nothing is lost or reordered.
#[test]
fn uring_cq_overflow_and_full_sq_lose_nothing() {
    let summary = uring_under_scarcity(|u| u.cq_entries = 8);
    assert!(summary.cq_overflow > 0, "the CQ never overflowed: the test did not test overflow");
}
