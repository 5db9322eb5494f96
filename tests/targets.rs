//! External servers in the sweep: one that works is measured beside the backends (its
//! CPU sampled the same way, its syscalls by perf where perf works, n/a otherwise); one
//! that never listens, exits early, or echoes wrong bytes is a Fail with its reason, and
//! the sweep goes on.
//!
//! The faulty servers are this test binary run again as the target, with the fault in
//! its environment (see `helper_faulty_server`), so nothing beyond the build is needed.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::process::Command;

/// Not a test: the body of the faulty targets. Does nothing unless `RB_FAULT` is set.
#[test]
fn helper_faulty_server() {
    let Ok(fault) = std::env::var("RB_FAULT") else { return };
    let port: u16 = std::env::var("RB_PORT").unwrap().parse().unwrap();
    match fault.as_str() {
        // Up, but listening on nothing.
        "never" => std::thread::sleep(std::time::Duration::from_secs(60)),
        "exit" => std::process::exit(3),
        "wrong" => {
            let l = TcpListener::bind(("127.0.0.1", port)).unwrap();
            for s in l.incoming() {
                let s = s.unwrap();
                std::thread::spawn(move || echo_flipped(s));
            }
        }
        other => panic!("unknown fault {other}"),
    }
}

/// Echoes every byte with its lowest bit flipped.
fn echo_flipped(mut s: std::net::TcpStream) {
    let mut buf = [0u8; 4096];
    while let Ok(n @ 1..) = s.read(&mut buf) {
        buf[..n].iter_mut().for_each(|b| *b ^= 1);
        if s.write_all(&buf[..n]).is_err() {
            return;
        }
    }
}

fn faulty(fault: &str) -> String {
    let me = std::env::current_exe().unwrap();
    format!("{fault}=env RB_FAULT={fault} RB_PORT={{port}} {} helper_faulty_server --exact --nocapture", me.display())
}

#[test]
fn a_sweep_measures_external_servers_and_fails_faulty_ones_with_their_reason() {
    let dir = tempfile::tempdir().unwrap();
    let bin = env!("CARGO_BIN_EXE_ringbench");
    let out = Command::new(bin)
        .args(["matrix", "--connections", "4", "--requests", "5", "--repeats", "1", "--backends", "epoll"])
        .args(["--ready-timeout", "2", "--timeout", "3", "--no-probe"])
        .arg("--target")
        .arg(format!("other={bin} server --backend threads --bind 127.0.0.1:{{port}}"))
        .args(["--target", &faulty("never"), "--target", &faulty("exit"), "--target", &faulty("wrong")])
        .arg("--out")
        .arg(dir.path())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "faulty targets fail their points: {err}");
    let mut r = csv::Reader::from_path(dir.path().join("overall.csv")).unwrap();
    let h = r.headers().unwrap().clone();
    let col = |name: &str| h.iter().position(|x| x == name).unwrap();
    let rows: Vec<csv::StringRecord> = r.records().map(|x| x.unwrap()).collect();
    let names: Vec<&str> = rows.iter().map(|r| &r[0]).collect();
    assert_eq!(names, ["epoll", "other", "never", "exit", "wrong"], "every server is a series, in order");
    let row = |n: &str| rows.iter().find(|r| &r[0] == n).unwrap();
    for ok in ["epoll", "other"] {
        assert_eq!(&row(ok)[col("status")], "Success", "{ok}: {err}");
        let cpu: f64 = row(ok)[col("server_cpu_us_per_request")].parse().unwrap();
        assert!(cpu > 0.0, "{ok}: the server's CPU was sampled");
    }
    // An external server keeps no summary of its own: its syscalls come from perf, or are
    // n/a — never a Fail.
    let sys = &row("other")[col("server_syscalls_per_request")];
    assert!(sys == "n/a" || sys.parse::<f64>().is_ok_and(|s| s > 0.0), "{sys}");
    for bad in ["never", "exit", "wrong"] {
        assert_eq!(&row(bad)[col("status")], "Fail", "{bad}");
    }
    let md = std::fs::read_to_string(dir.path().join("summary.md")).unwrap();
    assert!(md.contains("never at 4 connections: server did not start: nothing accepted connections"), "{md}");
    assert!(md.contains("exit at 4 connections: server did not start: the server exited before it was ready"), "{md}");
    assert!(md.contains("wrong at 4 connections: 4 client errors (first: request 0: echo mismatch at byte 0"), "{md}");
    // A server that echoed wrong bytes gets no ratio anywhere — never a "faster" cell.
    let table = md.split("### wrong ÷ epoll").nth(1).unwrap().split("\n\n").nth(1).unwrap();
    for row in table.lines().skip(2) {
        let cells: Vec<&str> = row.split('|').map(str::trim).filter(|c| !c.is_empty()).skip(2).collect();
        assert!(!cells.is_empty() && cells.iter().all(|c| c.starts_with("Fail[^")), "{table}");
    }
    assert!(md.contains("No ratio where a point failed: wrong failed at 4 connections: 4 client errors"), "{md}");
    let wrong = row("wrong");
    assert_eq!(&wrong[col("server_cpu_us_per_request_ratio")], "n/a", "no ratio for a failed point in overall.csv");
}
