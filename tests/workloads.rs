//! Workloads beyond ping-pong — crr, pipeline:D, stream, idle:K beside rr — against every
//! backend from one test body each, a corrupting server that every workload catches, the
//! refusals, and a sweep with the workload as an axis. The heavy forms (19,000 connections
//! churning in crr for 60 s; 18,000 idle) are `#[ignore]`d:
//! `cargo test --release --test workloads -- --ignored --test-threads 1 --nocapture`.

mod common;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::process::Command;
use std::time::Duration;

use common::*;
use ringbench::backends::CloseReason;
use ringbench::client::{self, ClientConfig, Engine, Workload};

fn cfg(addr: std::net::SocketAddr, conns: usize, requests: u64, size: usize, w: &str, engine: Engine) -> ClientConfig {
    let mut c = ClientConfig::new(addr, conns, requests, size);
    c.timeout = Duration::from_secs(30);
    c.label = "test".into();
    c.workload = Workload::parse(w).unwrap();
    c.engine = engine;
    c.window = 8 * 1024;
    c
}

#[track_caller]
fn assert_ok(r: &client::ClientReport, what: &str) {
    let first = r.rows.iter().find(|t| t.errors > 0).map(|t| t.error.clone());
    assert!(r.ok(), "{what}: {} errors, first: {first:?}", r.summary.errors);
}

/// Every workload with each engine that runs it: the requests it was to do, every byte
/// verified, and what the server logged — one row per connection it saw.
const CASES: [(&str, Engine, u64); 8] = [
    ("rr", Engine::Epoll, 6),
    ("rr", Engine::Threads, 6),
    ("crr", Engine::Epoll, 120),
    ("crr", Engine::Threads, 120),
    ("pipeline:4", Engine::Epoll, 6),
    ("stream", Engine::Epoll, 6),
    ("idle:30", Engine::Epoll, 36),
    ("idle:30", Engine::Threads, 36),
];

backend_suite!([epoll, uring, uring_no_multishot, uring_no_bufring, uring_no_defer_taskrun, uring_no_sendvec, uring_no_recv_cap, uring_bundle, uring_inc, uring_zc, uring_regbuf, uring_direct, uring_direct_zc_regbuf, uring_direct_inc_zc_regbuf, uring_direct_bundle_zc_regbuf, uring_sqpoll, threads] {
    fn every_workload_verifies_every_byte_and_gets_one_row_per_connection(backend) {
        let srv = TestServer::start(backend);
        let mut rows_expected = 0;
        for (w, engine, rows) in CASES {
            let r = client::run(&cfg(srv.addr, 6, 20, 512, w, engine)).unwrap();
            let what = format!("{w} with the {} engine", engine.name());
            assert_ok(&r, &what);
            let idle = Workload::parse(w).unwrap().idle() as u64;
            assert_eq!(r.summary.requests, 6 * 20 + idle, "{what}");
            assert_eq!(r.summary.bytes, (6 * 20 + idle) * 512, "{what}");
            assert_eq!(r.summary.workload, w);
            if w == "crr" {
                assert_eq!(r.summary.connect.as_ref().map(|c| c.count), Some(120), "{what}: every connect timed");
            }
            if idle > 0 {
                assert_eq!((r.summary.idle_connections, r.summary.idle_echoed), (30, 30), "{what}");
            }
            rows_expected += rows as usize;
        }
        srv.wait_settled(rows_expected, 0);
        let (summary, rows) = srv.stop();
        assert_eq!(rows.len(), rows_expected, "one row per connection, crr's one a request");
        assert_eq!(summary.log_rows, rows_expected as u64);
        assert!(rows.iter().all(|r| r.close_reason == CloseReason::Eof), "{rows:?}");
    }

    fn a_stream_of_large_writes_with_a_deep_window_echoes_in_order(backend) {
        let srv = TestServer::start(backend);
        let mut c = cfg(srv.addr, 2, 40, 64 * 1024, "stream", Engine::Epoll);
        c.window = 1024 * 1024;
        let r = client::run(&c).unwrap();
        assert_ok(&r, "stream of 64 KiB writes, 1 MiB in flight");
        assert_eq!(r.summary.bytes, 2 * 40 * 64 * 1024);
        srv.wait_settled(2, 0);
        srv.stop();
    }

    fn an_idle_connection_the_server_dropped_is_a_failure_of_the_run(backend) {
        let srv = TestServer::start_with(backend, |c| c.idle_timeout = Some(Duration::from_millis(200)));
        let mut c = cfg(srv.addr, 2, 10, 64, "idle:5", Engine::Epoll);
        c.min_run = Some(Duration::from_millis(700));
        let r = client::run(&c).unwrap();
        assert!(!r.ok(), "dropped idle connections must fail the run");
        assert_eq!((r.summary.idle_connections, r.summary.idle_echoed), (5, 0));
        assert!(r.summary.first_error.as_deref().is_some_and(|e| e.contains("idle connection") || e.contains("closed")), "{:?}", r.summary.first_error);
        srv.stop();
    }

    #[ignore = "heavy: 19,000 connections churning in crr for 60 s"]
    fn crr_churns_19000_connections_for_a_minute_and_logs_every_one(backend) {
        heavy_crr(backend);
    }

    #[ignore = "heavy: 18,000 idle connections beside 1000 active"]
    fn an_idle_crowd_of_18000_echoes_at_the_end(backend) {
        heavy_idle(backend);
    }
});

/// A server that echoes every byte with its lowest bit flipped.
fn flipping_server() -> std::net::SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { return };
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n @ 1..) = s.read(&mut buf) {
                    buf[..n].iter_mut().for_each(|b| *b ^= 1);
                    if s.write_all(&buf[..n]).is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

#[test]
fn every_workload_catches_a_server_that_corrupts_its_echo() {
    let addr = flipping_server();
    for (w, engine, _) in CASES {
        let mut c = cfg(addr, 3, 5, 256, w, engine);
        c.timeout = Duration::from_secs(5);
        let r = client::run(&c).unwrap();
        let what = format!("{w} with the {} engine", engine.name());
        assert!(!r.ok() && r.summary.errors > 0, "{what}: the corruption went unseen");
        let first = r.summary.first_error.clone().unwrap_or_default();
        assert!(first.contains("echo mismatch at byte 0"), "{what}: {first}");
    }
}

fn ringbench() -> Command {
    Command::new(env!("CARGO_BIN_EXE_ringbench"))
}

/// Combinations that cannot work: one line, exit 2.
#[test]
fn impossible_workloads_are_refused_in_one_line() {
    for (args, says) in [
        (&["client", "--connections", "1", "--workload", "pipeline:0"][..], "pipeline:0"),
        (
            &[
                "client",
                "--connections",
                "1",
                "--engine",
                "epoll",
                "--workload",
                "stream",
                "--rate",
                "10",
                "--duration",
                "1",
            ][..],
            "takes no --rate",
        ),
        (&["client", "--connections", "1", "--workload", "pipeline:4"][..], "use --engine epoll"),
        (&["matrix", "--workloads", "stream", "--rates", "1000", "--engine", "epoll"][..], "takes no --rates"),
        (&["matrix", "--workloads", "idle:100000", "--engine", "epoll"][..], "past this machine's limit"),
        (&["matrix", "--workloads", "bulk"][..], "a workload is rr, crr"),
    ] {
        let out = ringbench().args(args).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(says) && err.trim().lines().count() == 1, "{args:?}: {err}");
    }
}

/// The workload as a sweep axis: each a point of its own with its column, a table of its
/// own in summary.md, its charts, and one chart across workloads.
#[test]
fn a_sweep_over_every_workload_reports_each_and_compares_across_them() {
    let dir = tempfile::tempdir().unwrap();
    let out = ringbench()
        .args([
            "matrix",
            "--no-probe",
            "--engine",
            "epoll",
            "--connections",
            "10",
            "--size",
            "512",
            "--slice-s",
            "0.03",
        ])
        .args(["--workloads", "rr,crr,pipeline:4,stream,idle:20", "--window", "4096", "--repeats", "2", "--out"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let mut r = csv::Reader::from_path(dir.path().join("overall.csv")).unwrap();
    let h = r.headers().unwrap().clone();
    let col = |n: &str| h.iter().position(|x| x == n).unwrap_or_else(|| panic!("no column {n}"));
    let rows: Vec<csv::StringRecord> = r.records().map(|x| x.unwrap()).collect();
    let cells: Vec<(String, String)> =
        rows.iter().map(|r| (r[0].to_string(), r[col("workload")].to_string())).collect();
    assert_eq!(cells.len(), 10);
    for w in ["rr", "crr", "pipeline:4", "stream", "idle:20"] {
        assert!(cells.contains(&("uring".into(), w.into())), "{cells:?}");
    }
    for row in &rows {
        assert_eq!(&row[col("status")], "Success");
        let stream = &row[col("workload")] == "stream";
        assert_eq!(row[col("throughput_mib_s")].parse::<f64>().is_ok(), stream, "MiB/s is stream's figure");
    }
    let crr = rows.iter().find(|r| &r[col("workload")] == "crr").unwrap();
    assert!(crr[col("connect_p99_us")].parse::<f64>().is_ok_and(|us| us > 0.0));
    let md = std::fs::read_to_string(dir.path().join("summary.md")).unwrap();
    for t in ["### uring ÷ epoll — crr", "### uring ÷ epoll — stream", "### uring ÷ epoll — idle:20", "CPU µs/MiB"]
    {
        assert!(md.contains(t), "{t}: {md}");
    }
    let plots = dir.path().join("plots");
    for f in ["ratio_workloads_cpu_per_request_c10.png", "throughput_mib_wstream.png", "connect_p99_wcrr.png"] {
        assert!(plots.join(f).exists(), "{f}");
    }
    let raw: Vec<String> = std::fs::read_dir(dir.path().join("raw"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into())
        .collect();
    assert!(raw.iter().any(|n| n.starts_with("uring_wpipeline4_c10_s512_r1.client-")), "raw files name the workload");
    assert!(raw.iter().any(|n| n == "wcrr_c10_s512.slices.json"));
}

/// The client as a process of its own (a server in this process holds as many descriptors
/// as the client does).
fn client_process(addr: std::net::SocketAddr, args: &[&str]) -> std::process::Output {
    ringbench()
        .args(["client", "--server", &addr.to_string(), "--engine", "epoll", "--timeout", "60"])
        .args(args)
        .output()
        .unwrap()
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").map(|d| d.count()).unwrap_or(0)
}

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0)
}

fn heavy_crr(backend: ringbench::backends::Variant) {
    let _ = ringbench::backends::sys::raise_nofile_limit();
    let srv = TestServer::start(backend);
    let (fds0, rss0) = (open_fds(), rss_kib());
    // Rounds of 5 requests a slot, so the run ends within seconds of its minute.
    let args = ["--connections", "19000", "--workload", "crr", "--requests", "5", "--duration", "60"];
    let out = client_process(srv.addr, &[&args[..], &["--json", "/dev/stdout"]].concat());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    let summary: serde_json::Value =
        serde_json::from_str(text.split("ringbench client summary").next().unwrap()).unwrap();
    let requests = summary["requests"].as_u64().unwrap();
    eprintln!("crr: {requests} connections in 60 s, {:.0}/s", summary["throughput_rps"].as_f64().unwrap());
    srv.wait_settled(requests as usize, 0);
    let (s, rows) = srv.stop();
    assert_eq!(rows.len() as u64, requests, "one row per connection");
    assert_eq!(s.log_rows, requests);
    let (fds1, rss1) = (open_fds(), rss_kib());
    eprintln!("fds {fds0} → {fds1}, RSS {rss0} → {rss1} KiB");
    assert!(fds1 <= fds0 + 2, "descriptors back to baseline: {fds0} → {fds1}");
    // The allocator keeps some of what it was given; a leak of even a few hundred bytes a
    // connection would be tens of MiB here.
    assert!(rss1 < rss0 + 64 * 1024, "memory back near its baseline: {rss0} → {rss1} KiB");
}

fn heavy_idle(backend: ringbench::backends::Variant) {
    let _ = ringbench::backends::sys::raise_nofile_limit();
    let srv = TestServer::start(backend);
    let (fds0, rss0) = (open_fds(), rss_kib());
    let out = client_process(
        srv.addr,
        &["--connections", "1000", "--workload", "idle:18000", "--requests", "20", "--json", "/dev/stdout"],
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    let summary: serde_json::Value =
        serde_json::from_str(text.split("ringbench client summary").next().unwrap()).unwrap();
    assert_eq!((summary["idle_connections"].as_u64(), summary["idle_echoed"].as_u64()), (Some(18_000), Some(18_000)));
    srv.wait_settled(19_000, 0);
    let (_, rows) = srv.stop();
    assert_eq!(rows.len(), 19_000, "one row per connection, idle ones included");
    let (fds1, rss1) = (open_fds(), rss_kib());
    eprintln!("fds {fds0} → {fds1}, RSS {rss0} → {rss1} KiB");
    assert!(fds1 <= fds0 + 2, "descriptors back to baseline: {fds0} → {fds1}");
    // The allocator keeps some of what it was given; a leak of even a few hundred bytes a
    // connection would be tens of MiB here.
    assert!(rss1 < rss0 + 64 * 1024, "memory back near its baseline: {rss0} → {rss1} KiB");
}
