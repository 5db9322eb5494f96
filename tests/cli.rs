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
    let rows = ringbench::results::read_rows_csv(&csv).unwrap();
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

/// io_uring blocked the way a container's seccomp profile blocks it: the server must fail
/// with one line that names the cause and suggests epoll, not panic or hang.
#[cfg(target_arch = "x86_64")]
#[test]
fn uring_unavailable_under_seccomp_fails_with_one_line_suggesting_epoll() {
    use std::os::unix::process::CommandExt;

    fn deny_io_uring_setup() -> std::io::Result<()> {
        const AUDIT_ARCH_X86_64: u32 = 0xC000_003E;
        let stmt = |code: u16, k: u32| libc::sock_filter { code, jt: 0, jf: 0, k };
        let jeq = |k: u32, jt: u8, jf: u8| libc::sock_filter {
            code: (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16,
            jt,
            jf,
            k,
        };
        let load = (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16;
        let ret = (libc::BPF_RET | libc::BPF_K) as u16;
        let filter = [
            stmt(load, 4), // seccomp_data.arch
            jeq(AUDIT_ARCH_X86_64, 0, 3),
            stmt(load, 0), // seccomp_data.nr
            jeq(libc::SYS_io_uring_setup as u32, 0, 1),
            stmt(ret, libc::SECCOMP_RET_ERRNO | libc::EPERM as u32),
            stmt(ret, libc::SECCOMP_RET_ALLOW),
        ];
        let prog = libc::sock_fprog { len: filter.len() as u16, filter: filter.as_ptr() as *mut libc::sock_filter };
        // SAFETY: plain prctl calls in the forked child; `prog` outlives the call.
        unsafe {
            if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0
                || libc::prctl(libc::PR_SET_SECCOMP, libc::SECCOMP_MODE_FILTER, &prog as *const libc::sock_fprog) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
        }
        Ok(())
    }

    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ringbench"));
    cmd.args(["server", "--backend", "uring", "--bind", "127.0.0.1:0"]);
    // SAFETY: the hook only makes two prctl syscalls, which are async-signal-safe.
    unsafe { cmd.pre_exec(deny_io_uring_setup) };
    let out = cmd.output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 1, "{err}");
    assert!(lines[0].contains("io_uring is unavailable") && lines[0].contains("--backend epoll"), "{err}");
    assert!(lines[0].contains("Operation not permitted"), "{err}");
}

#[test]
fn too_many_threads_for_one_process_exits_2_suggesting_processes() {
    assert_fails(&["client", "--connections", "19000"], 2, &["--connections 19000", "--processes"]);
}

/// A client output that takes no bytes: one line naming the file, exit 1, after the run.
#[test]
fn client_outputs_that_cannot_be_written_are_one_line_naming_the_file() {
    if !std::path::Path::new("/dev/full").exists() {
        eprintln!("skipped: no /dev/full here");
        return;
    }
    let server = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = server.local_addr().unwrap().to_string();
    // An echo server of two connections, enough for the client's two connections.
    let echo = std::thread::spawn(move || {
        for s in server.incoming().take(2) {
            let mut s = s.unwrap();
            std::thread::spawn(move || {
                let mut r = s.try_clone().unwrap();
                let _ = std::io::copy(&mut r, &mut s);
            });
        }
    });
    for flag in ["--out", "--json"] {
        let args = ["client", "--server", &addr, "--connections", "1", "--requests", "3", flag, "/dev/full"];
        assert_fails(&args, 1, &["cannot write '/dev/full'", "No space left"]);
    }
    echo.join().unwrap();
}
