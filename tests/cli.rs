//! The command line as a user meets it: exit codes and one clear line for bad input.

use std::net::TcpListener;
use std::process::{Command, Output};

fn ringbench(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ringbench")).args(args).output().expect("run ringbench")
}

/// Asserts exit status `code` and a single stderr line that mentions every one of `words`.
#[track_caller]
fn assert_fails(args: &[&str], code: i32, words: &[&str]) {
    let out = ringbench(args);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(code), "args {args:?}: stderr {err}");
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "args {args:?}: want one line, got: {err}");
    for w in words {
        assert!(lines[0].contains(w), "args {args:?}: '{}' does not mention '{w}'", lines[0]);
    }
    assert!(!err.contains("panicked") && !err.contains("RUST_BACKTRACE"), "{err}");
}

#[test]
fn unknown_backend_exits_2_naming_the_flag() {
    assert_fails(&["server", "--backend", "kqueue"], 2, &["--backend", "kqueue"]);
}

#[test]
fn zero_connections_exits_2() {
    assert_fails(&["client", "--connections", "0"], 2, &["--connections"]);
}

#[test]
fn zero_requests_exits_2() {
    assert_fails(&["client", "--connections", "1", "--requests", "0"], 2, &["--requests"]);
}

#[test]
fn zero_size_exits_2() {
    assert_fails(&["client", "--connections", "1", "--size", "0"], 2, &["--size"]);
}

#[test]
fn size_over_the_maximum_exits_2() {
    assert_fails(&["client", "--connections", "1", "--size", "67108865"], 2, &["--size", "maximum"]);
}

#[test]
fn unparsable_address_exits_2() {
    assert_fails(&["client", "--connections", "1", "--server", "localhost:http"], 2, &["--server"]);
    assert_fails(&["server", "--backend", "epoll", "--bind", "300.1.1.1:80"], 2, &["--bind"]);
}

#[test]
fn too_many_connections_for_the_fd_limit_exits_2_with_the_numbers() {
    assert_fails(&["client", "--connections", "999999"], 2, &["--connections 999999", "limit", "ulimit"]);
}

#[test]
fn port_in_use_is_one_line_and_nonzero() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    assert_fails(&["server", "--backend", "epoll", "--bind", &addr], 1, &[&addr, "in use"]);
}

#[test]
fn unwritable_log_is_one_line_and_nonzero() {
    assert_fails(
        &["server", "--backend", "epoll", "--bind", "127.0.0.1:0", "--log", "/nonexistent/dir/log.csv"],
        1,
        &["/nonexistent/dir/log.csv"],
    );
}

#[test]
fn unreachable_server_fails_fast_with_status_1_and_a_csv_row_per_thread() {
    // A port nobody listens on: bind one, note it, close it.
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("c.csv");
    let server = format!("127.0.0.1:{port}");
    let t = std::time::Instant::now();
    let out = ringbench(&[
        "client",
        "--server",
        &server,
        "--connections",
        "3",
        "--timeout",
        "2",
        "--out",
        csv.to_str().unwrap(),
    ]);
    assert!(t.elapsed().as_secs() < 3);
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("0 ok, 3 failed"), "{stdout}");
    assert!(stdout.contains("refused"), "{stdout}");
    let rows = ringbench::client::read_rows_csv(&csv).unwrap();
    assert_eq!(rows.len(), 3);
    assert!(rows.iter().all(|r| r.errors == 1 && r.error.contains("refused")));
}

#[test]
fn help_lists_the_subcommands() {
    let out = ringbench(&["--help"]);
    assert!(out.status.success());
    let s = String::from_utf8_lossy(&out.stdout);
    assert!(s.contains("server") && s.contains("client"));
}
