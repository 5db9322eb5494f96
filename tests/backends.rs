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

/// Whether the server's feature list shows `switch` in use: what the switch is for, written
/// down apart from the code that applies it.
fn shows(switch: &str, f: &std::collections::BTreeMap<String, String>) -> bool {
    let is = |k: &str, v: &str| f.get(k).map(String::as_str) == Some(v);
    match switch {
        "no-multishot" => is("multishot_accept", "off") && is("multishot_recv", "off"),
        "no-bufring" => is("bufring", "off"),
        "no-defer-taskrun" => !is("taskrun", "single_issuer+defer_taskrun"),
        "no-sendvec" => is("sendvec", "off"),
        "no-recv-cap" => is("recv_cap", "off"),
        "bundle" => is("bundle", "on"),
        "inc" => is("incremental_buffers", "on"),
        "direct" => is("direct_descriptors", "on"),
        "zc" => f.get("zc").is_some_and(|v| v != "off"),
        "regbuf" => is("regbuf", "on"),
        "sqpoll" => is("sqpoll", "on"),
        "nagle" => is("tcp_nodelay", "off"),
        "no-coalesce" => is("coalesce_us", "0"),
        other => panic!("switch {other} is new to this test: add what it shows in the feature list"),
    }
}

backend_suite!([epoll, uring, uring_no_multishot, uring_no_bufring, uring_no_defer_taskrun, uring_no_sendvec, uring_no_recv_cap, uring_bundle, uring_inc, uring_zc, uring_regbuf, uring_direct, uring_direct_zc_regbuf, uring_direct_inc_zc_regbuf, uring_direct_bundle_zc_regbuf, uring_sqpoll, threads] {
    fn runs_with_the_features_its_name_asks_for(backend) {
        let srv = TestServer::start(backend.clone());
        let r = client::run(&client_cfg(srv.addr, 2, 5, 64)).unwrap();
        assert_ok(&r);
        srv.wait_settled(2, 0);
        let (summary, _) = srv.stop();
        let mine = |s: &&ringbench::backends::config::Switch| s.backend.is_none_or(|b| b == backend.backend.name);
        for s in ringbench::backends::SWITCHES.iter().filter(mine) {
            let named = backend.switches.iter().any(|n| n.name == s.name);
            // A combination may imply more than it names (regbuf turns zero-copy on), so
            // only a variant without switches is checked for switches it does not name.
            if named || backend.switches.is_empty() {
                assert_eq!(shows(s.name, &summary.features), named, "{backend:?}, switch {}: {:?}", s.name, summary.features);
            }
        }
    }

    fn echoes_every_size_byte_exact(backend) {
        let srv = TestServer::start(backend);
        let mut expected_rows = 0;
        for (size, requests) in [(1usize, 50u64), (64, 50), (4096, 20), (1 << 20, 3)] {
            let r = client::run(&client_cfg(srv.addr, 4, requests, size)).unwrap();
            assert_ok(&r);
            assert_eq!(r.summary.bytes, 4 * requests * size as u64, "size {size}");
            expected_rows += 4;
        }
        // The client has closed every connection; let the server see every close first.
        srv.wait_settled(expected_rows, 0);
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
        srv.wait_settled(1000, 0);
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
                        echo_in_chunks(addr, &data, &writes, &reads) == data
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
        let srv = ServerProc::spawn(&backend, &["--workers", "2"], None);
        let r = client::run(&client_cfg(srv.addr, 50, 20, 64)).unwrap();
        assert_ok(&r);
        let idle: Vec<_> = (0..20).map(|_| connect(srv.addr)).collect();
        std::thread::sleep(Duration::from_millis(200));
        let (status, took, rows, json) = srv.terminate();
        assert!(took < Duration::from_secs(3), "exit took {took:?}");
        assert!(status.success(), "{status:?}");
        assert_eq!(rows.len(), 70);
        assert_eq!(json["connections"], 70);
        assert_eq!(json["log_rows"], 70);
        assert_eq!(json["backend"], backend.backend.name);
        assert!(json["syscalls_total"].as_u64().unwrap() > 0);
        drop(idle);
    }

    fn counted_reads_and_writes_agree_with_the_kernels_count(backend) {
        // The kernel counts every read- and write-like syscall of a process (syscr and
        // syscw in /proc/PID/io, read here once the server has exited but before it is
        // reaped). The backend's own read and write counts must match them, give or take
        // the few calls it does not make itself (signal handling, printing the summary).
        let srv = ServerProc::spawn(&backend, &["--workers", "2"], None);
        let r = client::run(&client_cfg(srv.addr, 50, 40, 64)).unwrap();
        assert_ok(&r);
        let (io, json) = io_counts_at_exit(srv);
        let own = |k: &str| json["syscalls"][k].as_u64().unwrap_or(0);
        let (own_reads, own_writes) = (own("read"), own("write") + own("eventfd_write"));
        eprintln!("{}: own reads {own_reads} writes {own_writes}; kernel syscr {} syscw {}", backend.name, io.0, io.1);
        const SLACK: u64 = 200;
        assert!(io.0 >= own_reads && io.0 <= own_reads + SLACK, "reads: counted {own_reads}, kernel {}", io.0);
        assert!(io.1 >= own_writes && io.1 <= own_writes + SLACK, "writes: counted {own_writes}, kernel {}", io.1);
    }

    fn counted_syscalls_agree_with_perf(backend) {
        let srv = ServerProc::spawn(&backend, &["--workers", "2"], None);
        let Some(perf) = Perf::attach(srv.pid()) else { return };
        let r = client::run(&client_cfg(srv.addr, 50, 40, 64)).unwrap();
        assert_ok(&r);
        let (status, _, _, json) = srv.terminate();
        assert!(status.success());
        let Some(seen) = perf.count() else { return };
        let own = json["syscalls_total"].as_u64().unwrap();
        eprintln!("{}: own count {own}, perf raw_syscalls:sys_enter {seen}", backend.name);
        // perf attaches after set-up and also sees calls the backend does not make itself:
        // futexes, printing the summary, and the C library's part of creating and ending
        // each thread the backend starts (stacks, signal masks, robust lists: about 20 a
        // thread) — a few hundred either way plus that, not thousands.
        let threads = json["syscalls"]["clone3"].as_u64().unwrap_or(0);
        let slack = 300 + own / 20 + 25 * threads;
        assert!(seen + slack >= own && seen <= own + slack, "own {own} vs perf {seen}");
    }
});

/// Writes `data` in chunks of the `writes` sizes (cycled) while reading its echo in chunks
/// of the `reads` sizes; returns what came back.
fn echo_in_chunks(addr: std::net::SocketAddr, data: &[u8], writes: &[usize], reads: &[usize]) -> Vec<u8> {
    let mut s = connect(addr);
    let mut w = s.try_clone().unwrap();
    let sent = data.to_vec();
    let writes = writes.to_vec();
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
    got
}

/// SIGTERMs the server, waits for it to exit without reaping it, and reads the kernel's
/// `(syscr, syscw)` for the whole process; returns them with the summary.
fn io_counts_at_exit(srv: ServerProc) -> ((u64, u64), serde_json::Value) {
    let pid = srv.pid();
    // SAFETY: kill(2) on our own child.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    // SAFETY: waitid with WNOWAIT leaves the child a zombie, so /proc/PID/io still holds
    // its totals; `info` is a writable siginfo_t.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::waitid(libc::P_PID, pid as libc::id_t, &mut info, libc::WEXITED | libc::WNOWAIT) };
    assert_eq!(rc, 0, "waitid: {}", std::io::Error::last_os_error());
    let text = std::fs::read_to_string(format!("/proc/{pid}/io")).unwrap();
    let field =
        |k: &str| -> u64 { text.lines().find_map(|l| l.strip_prefix(k)).and_then(|v| v.trim().parse().ok()).unwrap() };
    let io = (field("syscr:"), field("syscw:"));
    let json = srv.summary_json();
    let (status, ..) = srv.terminate();
    assert!(status.success(), "{status:?}");
    (io, json)
}

/// `perf stat -e raw_syscalls:sys_enter -p PID`, when perf is installed and allowed.
struct Perf {
    child: std::process::Child,
}

impl Perf {
    fn attach(pid: i32) -> Option<Perf> {
        let child = Command::new("perf")
            .args(["stat", "-x", ",", "-e", "raw_syscalls:sys_enter", "-p", &pid.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn();
        match child {
            Ok(c) => {
                // perf prints nothing until the end: give it time to attach.
                std::thread::sleep(Duration::from_millis(500));
                Some(Perf { child: c })
            }
            Err(e) => {
                eprintln!("skipped: perf is not available here ({e})");
                None
            }
        }
    }

    /// The count, once the traced process has exited (perf exits with it).
    fn count(self) -> Option<u64> {
        let out = self.child.wait_with_output().ok()?;
        let text = String::from_utf8_lossy(&out.stderr);
        let n =
            text.lines().find(|l| l.contains("raw_syscalls:sys_enter")).and_then(|l| l.split(',').next()?.parse().ok());
        if n.is_none() {
            eprintln!("skipped: perf could not count raw_syscalls:sys_enter here: {}", text.trim());
        }
        n
    }
}

/// The io_uring variants the scarcity tests run, with the buffers each runs dry with: the
/// default, and the optional features that survive a dry ring, at once (zero-copy sends
/// hold their buffers until the peer's ACK frees the pages, which changes how a ring runs
/// dry: with 2 buffers it waits out a delayed ACK per buffer, 85 s here; 32 still run dry
/// 12,000 times in 3 s). Bundles are here since a dry ring no longer stalls them (a
/// starved receive with a request unread while the worker slept, 3 of 8 parallel runs;
/// see `Worker::rearm_starved`); `uring_bundles_carry_several_buffers` tests them with a
/// ring that stays wet. Incremental consumption turns 2 buffers into one of twice the size, shared by every
/// receive until it is full.
const SCARCE_VARIANTS: [(&str, u16); 4] =
    [("uring", 2), ("uring-bundle", 2), ("uring-inc", 2), ("uring-direct-zc-regbuf", 32)];

/// Runs 200 connections × 20 verified 3000-byte requests against one io_uring worker of
/// `variant` starved of one resource by `tweak`, checks nothing was lost, and returns
/// the summary.
fn uring_under_scarcity(
    variant: &str,
    tweak: impl FnOnce(&mut ringbench::backends::UringOptions),
) -> ringbench::backends::ServerSummary {
    let v = ringbench::backends::Variant::parse(variant).unwrap();
    let srv = TestServer::start_with(v, |c| {
        c.workers = 1;
        tweak(&mut c.uring);
    });
    let r = client::run(&client_cfg(srv.addr, 200, 20, 3000)).unwrap();
    assert_ok(&r);
    srv.wait_settled(200, 0);
    let (summary, rows) = srv.stop();
    // The features the variant names were in use.
    if variant.contains("-zc") {
        assert!(summary.zc_notifications > 0, "{variant}: no zero-copy send completed");
    }
    if variant.contains("-inc") {
        assert_eq!(summary.features.get("incremental_buffers").map(String::as_str), Some("on"), "{variant}");
    }
    if variant.contains("-regbuf") {
        assert_eq!(summary.features.get("regbuf").map(String::as_str), Some("on"), "{variant}");
    }
    assert_eq!(rows.len(), 200);
    assert!(rows.iter().all(|r| r.bytes == 20 * 3000 && r.close_reason == CloseReason::Eof));
    summary
}

/// io_uring only (epoll has no shared buffers): a provided-buffer ring far smaller than the
/// load runs dry (ENOBUFS ends the multishot receive) again and again; receives are re-armed
/// as buffers come back, and not a byte is lost.
#[test]
fn uring_buffer_ring_exhaustion_loses_nothing() {
    for (v, buffers) in SCARCE_VARIANTS {
        let summary = uring_under_scarcity(v, |u| {
            u.buffers = buffers;
            u.buffer_size = 1024;
        });
        assert!(summary.bufring_empty > 0, "{v}: the ring never ran dry: the test did not test ENOBUFS");
    }
}

/// Receive bundles: 3000-byte requests into 1024-byte buffers, so a full receive fills
/// three, handed over by one completion (which names only the first) and returned in
/// any order; every byte comes back in order, with room enough that the ring never runs
/// dry.
#[test]
fn uring_bundles_carry_several_buffers() {
    let summary = uring_under_scarcity("uring-bundle", |u| {
        u.buffers = 4096;
        u.buffer_size = 1024;
    });
    assert!(summary.bundle_extra_buffers > 0, "no receive carried more than one buffer");
    assert_eq!(summary.bufring_empty, 0, "the ring ran dry: this is not the test for that");
}

/// Incremental buffer consumption: the default ring's memory as 128 buffers of 64 KiB,
/// each filled by many receives in turn (3000-byte requests from 200 connections), every
/// slice echoed from where it lies and the buffer returned only once the kernel is done
/// with it and its last slice is sent.
#[test]
fn uring_incremental_buffers_are_shared_by_receives() {
    let summary = uring_under_scarcity("uring-inc", |_| {});
    assert_eq!(summary.features.get("incremental_buffers").map(String::as_str), Some("on"));
    assert_eq!(summary.features.get("bufring").map(String::as_str), Some("128x65536B"));
    assert!(summary.shared_buffer_receives > 0, "no receive went into a buffer another had used");
}

/// io_uring only: rings of 8 entries under 200 connections. The completion queue overflows
/// (the kernel holds completions back and they are flushed by the next wait) and the
/// submission queue fills (entries wait in the backlog): nothing is lost or reordered.
#[test]
fn uring_cq_overflow_and_full_sq_lose_nothing() {
    for (v, _) in SCARCE_VARIANTS {
        let summary = uring_under_scarcity(v, |u| u.cq_entries = 8);
        assert!(summary.cq_overflow > 0, "{v}: the CQ never overflowed: the test did not test overflow");
    }
}
