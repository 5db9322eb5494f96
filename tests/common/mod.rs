//! Helpers shared by the integration tests: start a server of any backend on port 0 with a
//! log in a temporary directory, raw-socket helpers that fail loudly, and the macro that
//! runs each behaviour test once per backend.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use ringbench::backends::{self, ConnRecord, ServerConfig, ServerHandle, ServerSummary, Variant};
use ringbench::client::fill_payload;
use ringbench::server_proc::{self, Readiness, Spec};

/// Runs each test body once per backend, in a module named after the backend.
/// Adding a backend is one more name in the list at the call site; no test changes.
#[macro_export]
macro_rules! backend_suite {
    ([$($backend:ident),* $(,)?] $tests:tt) => {
        $( $crate::backend_suite!(@one $backend $tests); )*
    };
    (@one $backend:ident { $( $(#[$meta:meta])* fn $name:ident($b:ident) $body:block )* }) => {
        mod $backend {
            #[allow(unused_imports)]
            use super::*;
            $(
                $(#[$meta])*
                #[test]
                fn $name() {
                    let $b = ringbench::backends::Variant::parse(stringify!($backend)).expect("variant in the suite list");
                    $body
                }
            )*
        }
    };
}

/// A server under test with its log file.
pub struct TestServer {
    pub handle: ServerHandle,
    pub addr: SocketAddr,
    pub log: PathBuf,
    _dir: tempfile::TempDir,
}

impl TestServer {
    pub fn start(backend: Variant) -> TestServer {
        Self::start_with(backend, |_| {})
    }

    /// Starts with two workers (so hand-off between threads is exercised) on port 0,
    /// after `tweak` adjusts the config.
    pub fn start_with(backend: Variant, tweak: impl FnOnce(&mut ServerConfig)) -> TestServer {
        let dir = tempfile::tempdir().expect("temp dir");
        let log = dir.path().join("server.csv");
        let mut cfg = backend.config();
        cfg.bind = "127.0.0.1:0".parse().unwrap();
        cfg.workers = 2;
        cfg.log = Some(log.clone());
        tweak(&mut cfg);
        let handle = backends::start(backend.backend, cfg).expect("server starts");
        let addr = handle.local_addr();
        TestServer { handle, addr, log, _dir: dir }
    }

    /// Waits until the server has accepted `accepted` connections in all and holds exactly
    /// `open` of them open.
    #[track_caller]
    pub fn wait_settled(&self, accepted: usize, open: usize) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.handle.accepted_connections() != accepted || self.handle.open_connections() != open {
            assert!(
                Instant::now() < deadline,
                "server accepted {} and holds {} open connections, expected {accepted} and {open}",
                self.handle.accepted_connections(),
                self.handle.open_connections()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Stops the server and returns its summary and every log row.
    pub fn stop(self) -> (ServerSummary, Vec<ConnRecord>) {
        let summary = self.handle.stop().expect("server stops cleanly");
        let rows = backends::read_log(&self.log).expect("log parses");
        (summary, rows)
    }
}

/// A connected blocking stream with a timeout so a broken server fails the test instead
/// of hanging it.
#[track_caller]
pub fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(20))).unwrap();
    s.set_nodelay(true).unwrap();
    s
}

/// `len` bytes of a pattern unique to `seed`.
pub fn pattern(seed: usize, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    fill_payload(&mut v, seed, 0xABCD);
    v
}

/// Writes all of `data` or fails the test.
#[track_caller]
pub fn checked_write(s: &mut TcpStream, data: &[u8]) {
    s.write_all(data).unwrap_or_else(|e| panic!("write of {} bytes failed: {e}", data.len()));
}

/// Reads exactly `want.len()` bytes and asserts they equal `want`, naming the first
/// differing offset.
#[track_caller]
pub fn expect_read(s: &mut TcpStream, want: &[u8]) {
    let mut got = vec![0u8; want.len()];
    let mut have = 0;
    while have < got.len() {
        match s.read(&mut got[have..]) {
            Ok(0) => panic!("EOF after {have} of {} expected bytes", want.len()),
            Ok(n) => have += n,
            Err(e) => panic!("read failed after {have} of {} bytes: {e}", want.len()),
        }
    }
    if let Some(i) = got.iter().zip(want).position(|(a, b)| a != b) {
        panic!("byte {i} differs: got {:#04x}, want {:#04x}", got[i], want[i]);
    }
}

/// Asserts the next read returns EOF.
#[track_caller]
pub fn expect_eof(s: &mut TcpStream) {
    let mut b = [0u8; 1];
    match s.read(&mut b) {
        Ok(0) => {}
        Ok(_) => panic!("expected EOF, got data"),
        Err(e) => panic!("expected EOF, got error {e}"),
    }
}

/// Closes `s` with a TCP reset (SO_LINGER 0) instead of a FIN.
pub fn reset(s: TcpStream) {
    let l = libc::linger { l_onoff: 1, l_linger: 0 };
    use std::os::fd::AsRawFd;
    // SAFETY: `l` is a valid linger struct for the call and `s` an open socket.
    let rc = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&l as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "SO_LINGER");
    drop(s);
}

/// Polls `cond` until it holds or 20 s pass.
#[track_caller]
pub fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A server run as the `ringbench` binary, for tests that need its own process: its own
/// descriptor limit, its memory and CPU, signals. Started through the tool's one
/// [`server_proc::ServerProc`], with its log and summary in a temporary directory.
pub struct ServerProc {
    pub proc: server_proc::ServerProc,
    pub addr: SocketAddr,
    pub log: PathBuf,
    pub summary: PathBuf,
    _dir: tempfile::TempDir,
}

impl ServerProc {
    /// Starts `ringbench server` for `backend` on port 0 with `args`, optionally under an
    /// open-file limit (soft and hard) set before exec.
    pub fn spawn(backend: &Variant, args: &[&str], nofile: Option<u64>) -> ServerProc {
        Self::spawn_with(backend, args, nofile, None, None)
    }

    /// As [`spawn`](Self::spawn), with the log and the summary where the test says.
    pub fn spawn_with(
        backend: &Variant,
        args: &[&str],
        nofile: Option<u64>,
        log: Option<PathBuf>,
        summary: Option<PathBuf>,
    ) -> ServerProc {
        let dir = tempfile::tempdir().unwrap();
        let log = log.unwrap_or_else(|| dir.path().join("log.csv"));
        let summary = summary.unwrap_or_else(|| dir.path().join("summary.json"));
        let mut argv: Vec<String> =
            ["server", "--backend", &backend.name, "--bind", "127.0.0.1:0"].map(String::from).to_vec();
        argv.extend(args.iter().map(|a| a.to_string()));
        argv.extend([
            "--log".into(),
            log.display().to_string(),
            "--summary-json".into(),
            summary.display().to_string(),
        ]);
        let mut spec = Spec::new(env!("CARGO_BIN_EXE_ringbench"), argv, Readiness::ListeningLine);
        spec.nofile = nofile;
        let proc = server_proc::ServerProc::spawn(spec, Duration::from_secs(20)).expect("server starts");
        ServerProc { addr: proc.addr(), proc, log, summary, _dir: dir }
    }

    pub fn pid(&self) -> i32 {
        self.proc.pid()
    }

    /// Resident memory in KiB (VmRSS).
    pub fn rss_kib(&self) -> u64 {
        self.proc.rss_kib().unwrap()
    }

    /// CPU time used so far (user + system), in seconds.
    pub fn cpu_s(&self) -> f64 {
        self.proc.cpu_s().unwrap()
    }

    /// Connections the server holds open: the sockets on its port that it has not closed
    /// (established, or closed by the client only). Counted from the kernel's socket table,
    /// not /proc/PID/fd, because a direct descriptor (a slot of io_uring's file table) has
    /// no entry there. The table is read in pieces while other tests' sockets churn, so an
    /// entry can be missed or seen twice: a count is taken only when two reads agree.
    pub fn established(&self) -> usize {
        let port = format!(":{:04X}", self.addr.port());
        let count = || {
            let Ok(table) = std::fs::read_to_string("/proc/net/tcp") else { return 0 };
            table
                .lines()
                .skip(1)
                .filter_map(|l| {
                    let f: Vec<&str> = l.split_whitespace().collect();
                    (f.len() > 3).then(|| (f[1].ends_with(&port), f[3] == "01" || f[3] == "08"))
                })
                .filter(|&(ours, open)| ours && open)
                .count()
        };
        let mut last = count();
        for _ in 0..10 {
            let now = count();
            if now == last {
                return now;
            }
            last = now;
        }
        last
    }

    /// Connections the server has not closed yet (closed by the client or not).
    pub fn unclosed(&self) -> usize {
        self.established()
    }

    /// The summary the server wrote, as JSON (null if it wrote none).
    pub fn summary_json(&self) -> serde_json::Value {
        read_json_file(&self.summary)
    }

    /// Sends `sig` to the server.
    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child.
        assert_eq!(unsafe { libc::kill(self.pid(), sig) }, 0);
    }

    /// Its stderr so far.
    pub fn output(&self) -> Vec<String> {
        self.proc.output_lines()
    }

    /// Sends SIGTERM; returns the exit status, how long the exit took, the log rows and
    /// the summary.
    pub fn terminate(self) -> (std::process::ExitStatus, Duration, Vec<ConnRecord>, serde_json::Value) {
        let (status, took, rows, summary, _) = self.terminate_with_output();
        (status, took, rows, summary)
    }

    /// As [`terminate`](Self::terminate), with every line the server printed.
    pub fn terminate_with_output(
        self,
    ) -> (std::process::ExitStatus, Duration, Vec<ConnRecord>, serde_json::Value, Vec<String>) {
        let stopped = self.proc.stop(Duration::from_secs(20)).unwrap();
        let status = stopped.status.expect("the server exited after SIGTERM");
        let rows = backends::read_log(&self.log).unwrap_or_default();
        let summary = read_json_file(&self.summary);
        (status, stopped.took, rows, summary, stopped.output)
    }
}

/// A JSON file, or null if it is missing, unreadable, or not a regular file (a summary
/// sent to /dev/full must not be read back: it never ends).
pub fn read_json_file(path: &std::path::Path) -> serde_json::Value {
    if !std::fs::metadata(path).is_ok_and(|m| m.is_file()) {
        return serde_json::Value::Null;
    }
    std::fs::read_to_string(path).ok().and_then(|s| serde_json::from_str(&s).ok()).unwrap_or(serde_json::Value::Null)
}

/// The notices of a summary of kind `kind` (e.g. `out_of_fds`).
pub fn notices_of(summary: &serde_json::Value, kind: &str) -> usize {
    summary["notices"].as_array().map_or(0, |a| a.iter().filter(|n| n["kind"] == kind).count())
}

/// A tmpfs of a few KiB mounted on a temporary directory, to fill up on purpose; unmounted
/// when dropped. `None` (with the reason printed) where this process may not mount.
pub struct TinyFs {
    dir: tempfile::TempDir,
}

impl TinyFs {
    pub fn mount(size_kib: u64) -> Option<TinyFs> {
        use std::ffi::CString;
        let dir = tempfile::tempdir().ok()?;
        let target = CString::new(dir.path().as_os_str().as_encoded_bytes()).ok()?;
        let opts = CString::new(format!("size={size_kib}k")).ok()?;
        // SAFETY: every pointer is a valid NUL-terminated string for the duration of the call.
        let rc = unsafe { libc::mount(c"tmpfs".as_ptr(), target.as_ptr(), c"tmpfs".as_ptr(), 0, opts.as_ptr().cast()) };
        if rc != 0 {
            eprintln!(
                "skipped: cannot mount a {size_kib} KiB tmpfs here ({}); the test needs root",
                std::io::Error::last_os_error()
            );
            return None;
        }
        Some(TinyFs { dir })
    }

    pub fn path(&self) -> &std::path::Path {
        self.dir.path()
    }
}

impl Drop for TinyFs {
    fn drop(&mut self) {
        if let Ok(target) = std::ffi::CString::new(self.dir.path().as_os_str().as_encoded_bytes()) {
            // SAFETY: a valid path string; MNT_DETACH unmounts even if a file is still open.
            unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
        }
    }
}
