//! The open loop and the event engine, checked against what they exist for: a server that
//! stalls shows in the corrected latency (from each request's intended send time) and not
//! in the service time, while a closed loop hides the stall; the offered rate is held; and
//! the event engine verifies every byte like the blocking one.

mod common;

use std::time::Duration;

use common::*;
use ringbench::backends::Variant;
use ringbench::client::{self, ClientConfig, Engine, OpenLoop};

fn cfg(addr: std::net::SocketAddr, conns: usize, engine: Engine) -> ClientConfig {
    let mut c = ClientConfig::new(addr, conns, 100, 64);
    c.timeout = Duration::from_secs(20);
    c.label = "test".into();
    c.engine = engine;
    c
}

/// Stops the server process for `stall` after `after`, then lets it go on.
fn stall_server(pid: i32, after: Duration, stall: Duration) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        std::thread::sleep(after);
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(pid, libc::SIGSTOP) };
        std::thread::sleep(stall);
        // SAFETY: as above.
        unsafe { libc::kill(pid, libc::SIGCONT) };
    })
}

#[test]
fn a_stalled_server_shows_in_corrected_latency_and_a_closed_loop_hides_it() {
    let epoll = Variant::parse("epoll").unwrap();
    // Open loop: 5000 req/s over 100 connections for 3 s; the server stops for 500 ms in
    // the middle. Every request meant to leave during the stall waits for its end.
    let srv = ServerProc::spawn(&epoll, &["--workers", "1"], None);
    let mut open = cfg(srv.addr, 100, Engine::Epoll);
    open.open =
        Some(OpenLoop { rate_rps: 5000.0, duration: Duration::from_secs(3), warmup: Duration::from_millis(200) });
    let stall = stall_server(srv.pid(), Duration::from_millis(1400), Duration::from_millis(500));
    let r = client::run(&open).unwrap();
    stall.join().unwrap();
    assert!(r.ok(), "{:?}", r.rows.iter().find(|t| t.errors > 0));
    let s = &r.summary;
    eprintln!(
        "open loop with a 500 ms stall: corrected p90 {:.1} ms p99 {:.1} ms; service p90 {:.3} ms p99 {:.3} ms",
        s.corrected.p90_us / 1e3,
        s.corrected.p99_us / 1e3,
        s.service.p90_us / 1e3,
        s.service.p99_us / 1e3
    );
    assert!(s.corrected.p99_us > 300_000.0, "the stall does not show in corrected p99: {:?}", s.corrected);
    assert!(s.corrected.p90_us > 50_000.0, "the stall does not show in corrected p90: {:?}", s.corrected);
    // Each connection had at most one request in flight when the server stopped: those
    // few wait, every later one is a late *send*, with a short service time.
    assert!(s.service.p90_us < 20_000.0, "service time shows the stall: {:?}", s.service);
    assert!(s.corrected.p99_us > 10.0 * s.service.p99_us, "{:?} vs {:?}", s.corrected, s.service);
    let (status, ..) = srv.terminate();
    assert!(status.success());

    // The same stall under a closed loop: only the requests in flight wait, the rest are
    // simply not sent, and the tail barely moves.
    let srv = ServerProc::spawn(&epoll, &["--workers", "1"], None);
    let mut closed = cfg(srv.addr, 100, Engine::Epoll);
    closed.min_run = Some(Duration::from_secs(3));
    let stall = stall_server(srv.pid(), Duration::from_millis(1400), Duration::from_millis(500));
    let c = client::run(&closed).unwrap();
    stall.join().unwrap();
    assert!(c.ok());
    eprintln!("closed loop with the same stall: p99 {:.3} ms", c.summary.service.p99_us / 1e3);
    assert!(
        c.summary.service.p99_us * 5.0 < s.corrected.p99_us,
        "the closed loop's p99 ({} us) should hide the stall the open loop shows ({} us)",
        c.summary.service.p99_us,
        s.corrected.p99_us
    );
    let (status, ..) = srv.terminate();
    assert!(status.success());
}

#[test]
fn an_open_loop_holds_its_rate_within_2_percent_against_a_fast_server() {
    for engine in [Engine::Epoll, Engine::Threads] {
        let srv = TestServer::start(Variant::parse("epoll").unwrap());
        let mut c = cfg(srv.addr, 50, engine);
        c.open =
            Some(OpenLoop { rate_rps: 2000.0, duration: Duration::from_secs(2), warmup: Duration::from_millis(200) });
        let r = client::run(&c).unwrap();
        assert!(r.ok(), "{:?}", r.rows.iter().find(|t| t.errors > 0));
        let s = &r.summary;
        let achieved = s.achieved_rate_rps.unwrap();
        eprintln!(
            "{}: {achieved:.1} of 2000 req/s, send lateness p50 {:.1} us p99 {:.1} us",
            engine.name(),
            s.send_lateness.as_ref().unwrap().p50_us,
            s.send_lateness.as_ref().unwrap().p99_us
        );
        assert!((achieved - 2000.0).abs() <= 40.0, "{}: achieved {achieved} req/s", engine.name());
        assert_eq!(s.rate_status.as_deref(), Some("held"));
        assert_eq!(s.target_rate_rps, Some(2000.0));
        // Warm-up excluded: the measured requests are the window's.
        let measured = s.corrected.count as f64;
        assert!((measured - 4000.0).abs() <= 100.0, "{measured} measured requests in a 2 s window at 2000/s");
    }
}

#[test]
fn the_event_engine_verifies_every_byte_of_every_size() {
    let srv = TestServer::start(Variant::parse("uring").unwrap());
    let mut rows = 0;
    for (size, requests) in [(1usize, 50u64), (64, 50), (4096, 20), (300_000, 3)] {
        let mut c = cfg(srv.addr, 40, Engine::Epoll);
        c.threads = 3;
        c.requests = requests;
        c.size = size;
        let r = client::run(&c).unwrap();
        assert!(r.ok(), "size {size}: {:?}", r.rows.iter().find(|t| t.errors > 0));
        assert_eq!(r.summary.bytes, 40 * requests * size as u64);
        assert_eq!(r.rows.len(), 40);
        assert!(r.rows.iter().all(|t| t.requests == requests));
        rows += 40;
    }
    srv.wait_settled(rows, 0);
    let (_, logged) = srv.stop();
    assert_eq!(logged.len(), rows);
}

#[test]
fn the_event_engine_reports_a_wrong_byte_and_a_refused_connection() {
    // Nobody listens here: every connection is refused, each with its row.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut c = cfg(std::net::SocketAddr::from(([127, 0, 0, 1], port)), 5, Engine::Epoll);
    c.requests = 3;
    let r = client::run(&c).unwrap();
    assert_eq!(r.rows.len(), 5);
    assert!(r.rows.iter().all(|t| t.errors == 1 && t.error.contains("refused")), "{:?}", r.rows);
    // A server that flips one bit of every echo.
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for s in l.incoming().take(2) {
            let mut s = s.unwrap();
            std::thread::spawn(move || {
                let mut buf = [0u8; 64];
                while let Ok(n @ 1..) = std::io::Read::read(&mut s, &mut buf) {
                    buf[0] ^= 4;
                    let _ = std::io::Write::write_all(&mut s, &buf[..n]);
                }
            });
        }
    });
    let mut c = cfg(addr, 2, Engine::Epoll);
    c.requests = 3;
    let r = client::run(&c).unwrap();
    assert!(!r.ok());
    assert!(r.rows.iter().all(|t| t.error.contains("echo mismatch at byte 0")), "{:?}", r.rows);
}

/// A rate sweep end to end: each rate is a point with its offered and achieved rate and
/// its status; the knee and spectrum charts are drawn; the SLO names the highest rate
/// held; and the spectrum files are in wrk2's layout.
#[test]
fn a_rate_sweep_reports_each_rate_its_knee_and_the_highest_rate_held() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ringbench"))
        .args(["matrix", "--connections", "20", "--rates", "1000,3000", "--duration", "0.6", "--warmup", "0.1"])
        .args(["--engine", "epoll", "--repeats", "2", "--backends", "epoll,uring", "--slo-ms", "1000", "--no-probe"])
        // Fresh servers: each run writes its own spectrum files (checked at the end).
        .arg("--fresh-servers")
        .arg("--out")
        .arg(dir.path())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    let mut r = csv::Reader::from_path(dir.path().join("overall.csv")).unwrap();
    let h = r.headers().unwrap().clone();
    let col = |name: &str| h.iter().position(|x| x == name).unwrap_or_else(|| panic!("no column {name}"));
    let rows: Vec<csv::StringRecord> = r.records().map(|x| x.unwrap()).collect();
    let cells: Vec<(&str, &str)> = rows.iter().map(|r| (&r[0], &r[col("offered_rate_rps")])).collect();
    assert_eq!(cells, [("epoll", "1000"), ("uring", "1000"), ("epoll", "3000"), ("uring", "3000")]);
    for row in &rows {
        let offered: f64 = row[col("offered_rate_rps")].parse().unwrap();
        let sent: f64 = row[col("achieved_rate_rps")].parse().unwrap();
        assert_eq!(&row[col("rate_status")], "held", "{err}");
        assert!((sent - offered).abs() <= 0.05 * offered, "{sent} sent of {offered}");
        assert!(row[col("corrected_p99_us")].parse::<f64>().unwrap() > 0.0);
        assert_eq!(&row[col("requests_per_connection")], "n/a", "an open loop has no fixed count");
        // Paired with the baseline at the same rate, not another rate.
        let ratio = &row[col("achieved_rate_rps_ratio")];
        assert!(ratio.parse::<f64>().is_ok_and(|x| (x - 1.0).abs() < 0.05), "{ratio}");
    }
    let plots = dir.path().join("plots");
    for f in [
        "knee_c20.png",
        "knee_c20.svg",
        "spectrum_c20_q1000.png",
        "spectrum_c20_q3000.png",
        "corrected_p99_latency.png",
    ] {
        assert!(plots.join(f).exists(), "{f}");
    }
    let md = std::fs::read_to_string(dir.path().join("summary.md")).unwrap();
    assert!(md.contains("## Highest rate held within p99 ≤ 1000 ms"), "{md}");
    assert!(md.contains("| 20 | 64 | 3000 req/s | 3000 req/s |"), "{md}");
    assert!(md.contains("| epoll | 20 | 64 | 3000 | held | Success |"), "{md}");
    let spectrum =
        std::fs::read_to_string(dir.path().join("raw/epoll_c20_s64_q3000_r1.spectrum.corrected.hgrm")).unwrap();
    assert!(spectrum.trim_start().starts_with("Value"), "{spectrum}");
    assert!(spectrum.contains("#[Mean"), "{spectrum}");
}

/// 19,000 connections in one client process with the epoll engine, every byte verified.
#[test]
#[ignore = "heavy: 19,000 connections"]
fn nineteen_thousand_connections_fit_in_one_event_engine_process() {
    let _ = ringbench::backends::sys::raise_nofile_limit();
    let srv = ServerProc::spawn(&Variant::parse("epoll").unwrap(), &[], None);
    let mut c = cfg(srv.addr, 19_000, Engine::Epoll);
    c.requests = 20;
    c.timeout = Duration::from_secs(60);
    let r = client::run(&c).unwrap();
    assert!(r.ok(), "{:?}", r.rows.iter().find(|t| t.errors > 0));
    assert_eq!(r.summary.requests, 19_000 * 20);
    assert_eq!(r.summary.bytes, 19_000 * 20 * 64);
    eprintln!("19,000 connections, one process: {:.0} req/s", r.summary.throughput_rps);
    let (status, _, rows, _) = srv.terminate();
    assert!(status.success());
    assert_eq!(rows.len(), 19_000, "one server row per connection");
}
