//! A server in its own process — `ringbench server`, or any command — as the sweep and the
//! tests run it: in its own process group (a terminal's Ctrl-C reaches only the sweep,
//! which then stops its children in order), pinned to CPUs, ready when it says "listening
//! on ADDR" or when its port accepts a connection, and stopped with SIGTERM, then SIGKILL
//! after a grace period.

use std::io::{self, BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::RawFd;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use ringbench_backends::sys;

/// What `ringbench server` prints once its socket listens, before the address.
pub const LISTENING_ON: &str = "listening on ";

/// The address in a "listening on ADDR" line.
pub fn parse_listening(line: &str) -> Option<SocketAddr> {
    line.split(LISTENING_ON).nth(1)?.split_whitespace().next()?.parse().ok()
}

/// How to tell that the server is ready.
#[derive(Clone, Debug)]
pub enum Readiness {
    /// It prints "listening on ADDR" on stderr (`ringbench server`).
    ListeningLine,
    /// It accepts a TCP connection at this address (any server).
    Connect(SocketAddr),
}

/// What to start.
#[derive(Clone, Debug)]
pub struct Spec {
    pub program: PathBuf,
    pub args: Vec<String>,
    /// CPUs to pin it to (empty: not pinned).
    pub cpus: Vec<usize>,
    /// An open-file limit (soft and hard) set before exec.
    pub nofile: Option<u64>,
    pub readiness: Readiness,
    /// Every line of its stderr (and stdout) is copied here.
    pub output_log: Option<PathBuf>,
    /// A descriptor of ours it gets as descriptor [`PASSED_FD`] (the live counters).
    pub pass_fd: Option<RawFd>,
}

/// The descriptor number a server gets [`Spec::pass_fd`] as.
pub const PASSED_FD: RawFd = 3;

impl Spec {
    pub fn new(program: impl Into<PathBuf>, args: Vec<String>, readiness: Readiness) -> Spec {
        Spec {
            program: program.into(),
            args,
            cpus: Vec::new(),
            nofile: None,
            readiness,
            output_log: None,
            pass_fd: None,
        }
    }
}

/// How a stop ended.
#[derive(Debug)]
pub struct Stopped {
    /// `None` if it had to be killed.
    pub status: Option<ExitStatus>,
    pub took: Duration,
    /// Why its output log is incomplete, if it is.
    pub log_error: Option<String>,
    /// Its output, line by line (the last lines, if it printed very many).
    pub output: Vec<String>,
}

/// A running server process.
pub struct ServerProc {
    child: Child,
    addr: SocketAddr,
    lines: Arc<Mutex<Vec<String>>>,
    copiers: Vec<JoinHandle<()>>,
    /// The first failure to write the output log (the rest of the output is lost).
    log_error: Arc<Mutex<Option<String>>>,
}

/// Lines of output kept in memory (all of them go to the log file).
const KEEP_LINES: usize = 10_000;

impl ServerProc {
    /// Starts the server and returns once it is ready, or fails within `ready_within`
    /// saying why (it exited, it never became ready) with the end of its output.
    pub fn spawn(spec: Spec, ready_within: Duration) -> anyhow::Result<ServerProc> {
        let mut cmd = Command::new(&spec.program);
        cmd.args(&spec.args).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).process_group(0);
        let (cpus, nofile, pass_fd) = (spec.cpus.clone(), spec.nofile, spec.pass_fd);
        // SAFETY: the hook makes at most three syscalls (sched_setaffinity, setrlimit,
        // dup2) on stack data: no allocation or lock, as is required between fork and exec.
        unsafe {
            cmd.pre_exec(move || pre_exec(&cpus, nofile, pass_fd));
        }
        crate::guard::dies_with_us(&mut cmd);
        let mut child = cmd.spawn().with_context(|| format!("cannot start '{}'", spec.program.display()))?;
        crate::guard::group(child.id() as i32);
        let log = match &spec.output_log {
            Some(p) => Some(Arc::new(Mutex::new(
                std::fs::File::create(p).with_context(|| format!("cannot create '{}'", p.display()))?,
            ))),
            None => None,
        };
        let lines = Arc::new(Mutex::new(Vec::new()));
        let log_error = Arc::new(Mutex::new(None));
        let (tx, rx) = mpsc::channel::<SocketAddr>();
        let mut copiers = Vec::new();
        let sink =
            |tx| Sink { lines: Arc::clone(&lines), log: log.clone(), log_error: Arc::clone(&log_error), ready: tx };
        if let Some(err) = child.stderr.take() {
            copiers.push(copy_lines(err, sink(Some(tx))));
        }
        if let Some(out) = child.stdout.take() {
            copiers.push(copy_lines(out, sink(None)));
        }
        let mut proc = ServerProc { child, addr: SocketAddr::from(([127, 0, 0, 1], 0)), lines, copiers, log_error };
        match proc.await_ready(&spec.readiness, &rx, ready_within) {
            Ok(addr) => {
                proc.addr = addr;
                Ok(proc)
            }
            Err(e) => {
                let _ = proc.stop_in_place(Duration::from_secs(2));
                let tail: Vec<String> = proc.tail(3).into_iter().filter(|l| !l.trim().is_empty()).collect();
                if tail.is_empty() {
                    Err(e)
                } else {
                    Err(anyhow::anyhow!("{e:#}; its last output: {}", tail.join(" | ")))
                }
            }
        }
    }

    fn await_ready(
        &mut self,
        r: &Readiness,
        rx: &mpsc::Receiver<SocketAddr>,
        within: Duration,
    ) -> anyhow::Result<SocketAddr> {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Some(st) = self.child.try_wait()? {
                bail!("the server exited before it was ready ({st})");
            }
            match r {
                Readiness::ListeningLine => {
                    if let Ok(a) = rx.recv_timeout(Duration::from_millis(50)) {
                        return Ok(a);
                    }
                }
                Readiness::Connect(addr) => {
                    if TcpStream::connect_timeout(addr, Duration::from_millis(200)).is_ok() {
                        return Ok(*addr);
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        }
        match r {
            Readiness::ListeningLine => {
                bail!("the server did not report listening within {:.0} s", within.as_secs_f64())
            }
            Readiness::Connect(a) => bail!("nothing accepted connections on {a} within {:.0} s", within.as_secs_f64()),
        }
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Its output so far, line by line.
    pub fn output_lines(&self) -> Vec<String> {
        self.lines.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Why its output log is incomplete, if it is.
    pub fn log_error(&self) -> Option<String> {
        self.log_error.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn tail(&self, n: usize) -> Vec<String> {
        let lines = self.lines.lock().unwrap_or_else(|p| p.into_inner());
        lines[lines.len().saturating_sub(n)..].to_vec()
    }

    /// CPU time (user + system) the whole process has used so far, in seconds.
    pub fn cpu_s(&self) -> io::Result<f64> {
        process_cpu_s(self.pid())
    }

    /// Resident memory in KiB (VmRSS).
    pub fn rss_kib(&self) -> io::Result<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))?;
        status
            .lines()
            .find(|l| l.starts_with("VmRSS:"))
            .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
            .ok_or_else(|| io::Error::other("no VmRSS in /proc/PID/status"))
    }

    /// Sends `sig` to its whole process group.
    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child's process group; at worst ESRCH if it is gone.
        unsafe { libc::kill(-self.pid(), sig) };
    }

    /// Whether it has exited, without waiting.
    pub fn try_wait(&mut self) -> io::Result<Option<ExitStatus>> {
        self.child.try_wait()
    }

    /// Waits up to `limit` for it to exit by itself.
    pub fn wait_for(&mut self, limit: Duration) -> io::Result<Option<ExitStatus>> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(st) = self.child.try_wait()? {
                return Ok(Some(st));
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// SIGTERM, then SIGKILL if it has not exited within `grace`; its output is copied to
    /// the end before this returns.
    pub fn stop(mut self, grace: Duration) -> io::Result<Stopped> {
        self.stop_in_place(grace)
    }

    fn stop_in_place(&mut self, grace: Duration) -> io::Result<Stopped> {
        let t = Instant::now();
        self.signal(libc::SIGTERM);
        let status = self.wait_for(grace)?;
        if status.is_none() {
            self.signal(libc::SIGKILL);
            let _ = self.child.wait();
        }
        crate::guard::ungroup(self.pid());
        for c in self.copiers.drain(..) {
            let _ = c.join();
        }
        Ok(Stopped { status, took: t.elapsed(), log_error: self.log_error(), output: self.output_lines() })
    }
}

impl Drop for ServerProc {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            self.signal(libc::SIGKILL);
            let _ = self.child.wait();
            crate::guard::ungroup(self.pid());
        }
    }
}

fn pre_exec(cpus: &[usize], nofile: Option<u64>, pass_fd: Option<RawFd>) -> io::Result<()> {
    if !cpus.is_empty() {
        sys::set_affinity(cpus)?;
    }
    if let Some(n) = nofile {
        sys::set_nofile_limit(n)?;
    }
    if let Some(fd) = pass_fd {
        sys::dup_to(fd, PASSED_FD)?;
    }
    Ok(())
}

/// Where a copier puts each line of output.
struct Sink {
    /// The last [`KEEP_LINES`] lines.
    lines: Arc<Mutex<Vec<String>>>,
    log: Option<Arc<Mutex<std::fs::File>>>,
    log_error: Arc<Mutex<Option<String>>>,
    /// Told the address of a "listening on" line.
    ready: Option<mpsc::Sender<SocketAddr>>,
}

fn copy_lines(from: impl io::Read + Send + 'static, sink: Sink) -> JoinHandle<()> {
    std::thread::spawn(move || {
        for line in BufReader::new(from).lines().map_while(Result::ok) {
            if let (Some(tx), Some(a)) = (&sink.ready, parse_listening(&line)) {
                let _ = tx.send(a);
            }
            if let Some(f) = &sink.log {
                if let Err(e) = writeln!(f.lock().unwrap_or_else(|p| p.into_inner()), "{line}") {
                    sink.log_error.lock().unwrap_or_else(|p| p.into_inner()).get_or_insert_with(|| e.to_string());
                }
            }
            let mut kept = sink.lines.lock().unwrap_or_else(|p| p.into_inner());
            if kept.len() >= KEEP_LINES {
                kept.remove(0);
            }
            kept.push(line);
        }
    })
}

/// CPU time (user + system) of process `pid` so far, in seconds, from `/proc/PID/stat`
/// (every thread of the process, as the kernel sums them).
pub fn process_cpu_s(pid: i32) -> io::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the ")" that ends the command name: utime is the 12th, stime the 13th.
    let rest = stat.rfind(')').map(|i| &stat[i + 1..]).ok_or_else(|| io::Error::other("malformed /proc/PID/stat"))?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let field = |i: usize| -> io::Result<f64> {
        f.get(i).and_then(|v| v.parse().ok()).ok_or_else(|| io::Error::other("malformed /proc/PID/stat"))
    };
    Ok((field(11)? + field(12)?) / sys::clock_ticks_per_s())
}
