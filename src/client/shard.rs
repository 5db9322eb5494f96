//! One run spread over several client processes, each with its own descriptor and
//! thread limits, started together and merged into one report.
//!
//! The protocol between a parent and a shard is three lines over the shard's stdin and
//! stdout, so it works through any pipe (an `ssh` connection included): the shard
//! connects everything and prints `ready`; the parent, once every shard is ready, writes
//! `go` to all of them; each shard runs and prints its whole report as one JSON line.

use std::io::{self, BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::latency::RunLatency;
use super::session::Session;
use super::{
    check_limits, merge, summarise, ClientConfig, ClientError, ClientReport, ConnOutcome, OpenLoop, Stop, Window,
};
use crate::results::{ClientSummary, ThreadRow};

/// What a shard sends back.
#[derive(Serialize, Deserialize)]
pub struct ShardReport {
    pub summary: ClientSummary,
    pub rows: Vec<ThreadRow>,
}

/// The `ringbench client` arguments that make a shard run `connections` of `cfg`'s
/// connections, numbered from `first`.
pub fn shard_args(cfg: &ClientConfig, connections: usize, first: usize) -> Vec<String> {
    let mut a: Vec<String> = vec![
        "client".into(),
        "--server".into(),
        cfg.server.to_string(),
        "--connections".into(),
        connections.to_string(),
        "--requests".into(),
        cfg.requests.to_string(),
        "--size".into(),
        cfg.size.to_string(),
        "--timeout".into(),
        cfg.timeout.as_secs_f64().to_string(),
        "--label".into(),
        cfg.label.clone(),
        "--first-thread".into(),
        first.to_string(),
        "--shard-child".into(),
    ];
    if !cfg.source_ips.is_empty() {
        let ips: Vec<String> = cfg.source_ips.iter().map(|ip| ip.to_string()).collect();
        a.extend(["--source-ips".into(), ips.join(",")]);
    }
    if let Some(d) = cfg.min_run {
        a.extend(["--min-run-s".into(), d.as_secs_f64().to_string()]);
    }
    a.extend(["--engine".into(), cfg.engine.name().into()]);
    a.extend(["--workload".into(), cfg.workload.name(), "--window".into(), cfg.window.to_string()]);
    if cfg.threads > 0 {
        a.extend(["--threads".into(), cfg.threads.to_string()]);
    }
    if let Some(o) = &cfg.open {
        // Each shard offers its connections' share of the rate.
        let share = o.rate_rps * connections as f64 / cfg.connections.max(1) as f64;
        a.extend(["--rate".into(), share.to_string(), "--duration".into(), o.duration.as_secs_f64().to_string()]);
        if !o.warmup.is_zero() {
            a.extend(["--warmup".into(), o.warmup.as_secs_f64().to_string()]);
        }
    }
    a
}

/// Runs as a shard: connects every connection, says `ready` on `output`, then answers
/// the commands that come on `input`, one a line:
///
/// - `go`: the run the arguments describe; its report (rows included) as one JSON line;
///   the shard ends.
/// - `slice SECS`: one slice, SECS long (a closed loop that stops then, or an open-loop
///   window of SECS after the warm-up); its report without rows as one JSON line; the
///   connections stay open for the next command.
/// - `quit`, or the end of input: the connections close; the report over every slice
///   (a row per connection) as one JSON line; the shard ends.
///
/// Returns whether every request was verified.
pub fn serve_as_shard(cfg: &ClientConfig, input: impl BufRead, mut output: impl Write) -> Result<bool, ClientError> {
    if cfg.processes > 1 {
        // A shard is one process of a run already; its slices are not split further.
        return Err(io::Error::other(
            "--processes does not combine with a shard's slices: use --engine epoll (no thread per connection), \
             or --fresh-servers",
        )
        .into());
    }
    let mut session = Session::connect(cfg)?;
    // A parent that has gone away cannot be told anything; the end of input ends us.
    let _ = writeln!(output, "ready").and_then(|()| output.flush());
    let mut ok = true;
    for line in input.lines() {
        let line = line.unwrap_or_default();
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["go"] => {
                let report = session.slice(cfg.stop(), || {})?;
                send(&mut output, &report.summary, &report.rows)?;
                return Ok(report.ok());
            }
            ["slice", secs] => {
                let secs: f64 = secs.parse().map_err(|_| io::Error::other(format!("bad slice length '{secs}'")))?;
                let report = session.slice(slice_stop(cfg, Duration::from_secs_f64(secs)), || {})?;
                ok &= report.ok();
                send(&mut output, &report.summary, &[])?;
            }
            ["quit"] => break,
            _ => return Err(io::Error::other(format!("unknown shard command '{line}'")).into()),
        }
    }
    let report = session.close();
    send(&mut output, &report.summary, &report.rows)?;
    Ok(ok && report.ok())
}

/// How one slice of `secs` stops: a closed loop stops then; an open loop measures a
/// window of `secs` after its warm-up.
pub fn slice_stop(cfg: &ClientConfig, secs: Duration) -> Stop {
    match cfg.open {
        Some(o) => Stop::Open(OpenLoop { duration: secs, ..o }),
        None => Stop::After(secs),
    }
}

fn send(output: &mut impl Write, summary: &ClientSummary, rows: &[ThreadRow]) -> Result<(), ClientError> {
    let line = serde_json::to_string(&ShardReportRef { summary, rows }).map_err(io::Error::other)?;
    writeln!(output, "{line}")?;
    output.flush()?;
    Ok(())
}

/// [`ShardReport`] as it is written, without copying it.
#[derive(Serialize)]
struct ShardReportRef<'a> {
    summary: &'a ClientSummary,
    rows: &'a [ThreadRow],
}

/// A started shard: its process and its output.
pub struct Shard {
    child: Child,
    input: Option<ChildStdin>,
    out: BufReader<std::process::ChildStdout>,
    /// The connections it runs, numbered from `first`.
    first: usize,
    connections: usize,
}

impl Shard {
    /// Starts `cmd` (which must run `ringbench client ... --shard-child`, locally or
    /// through ssh) with piped stdin and stdout.
    pub fn spawn(mut cmd: Command, first: usize, connections: usize) -> io::Result<Shard> {
        let mut child = cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).spawn()?;
        crate::guard::group(child.id() as i32);
        let out = child.stdout.take().map(BufReader::new).ok_or_else(|| io::Error::other("shard stdout"))?;
        let input = child.stdin.take();
        Ok(Shard { child, input, out, first, connections })
    }

    /// Waits for its `ready` line; false if it ended first.
    pub fn wait_ready(&mut self) -> bool {
        let mut line = String::new();
        matches!(self.out.read_line(&mut line), Ok(n) if n > 0) && line.trim() == "ready"
    }

    /// Waits up to `limit` for its `ready` line (a remote host may hang rather than end);
    /// the error says what came instead.
    pub fn wait_ready_within(&mut self, limit: std::time::Duration) -> Result<(), String> {
        self.wait_readable(limit)?;
        let mut line = String::new();
        match self.out.read_line(&mut line) {
            Ok(0) => Err(format!("ended before it was ready ({})", self.status())),
            Ok(_) if line.trim() == "ready" => Ok(()),
            Ok(_) => Err(format!("said '{}' instead of ready", line.trim())),
            Err(e) => Err(e.to_string()),
        }
    }

    /// Waits up to `limit` until its output has a line to read.
    pub fn wait_readable(&mut self, limit: std::time::Duration) -> Result<(), String> {
        use std::os::fd::AsFd;
        if !self.out.buffer().is_empty() {
            return Ok(());
        }
        let ms = i32::try_from(limit.as_millis()).unwrap_or(i32::MAX);
        match ringbench_backends::sys::poll_one(self.out.get_ref().as_fd(), libc::POLLIN, ms) {
            Ok(0) => Err(format!("said nothing within {:.0} s", limit.as_secs_f64())),
            Ok(_) => Ok(()),
            Err(e) => Err(e.to_string()),
        }
    }

    /// Kills it (a host that hangs); its report then counts every connection as failed.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
    }

    fn status(&mut self) -> String {
        match self.child.wait() {
            Ok(st) => st.to_string(),
            Err(e) => e.to_string(),
        }
    }

    /// Tells it to start its one run.
    pub fn go(&mut self) {
        if let Some(mut stdin) = self.input.take() {
            let _ = stdin.write_all(b"go\n");
        }
    }

    /// Tells it to run one slice of `secs`; its report follows on its output.
    pub fn slice(&mut self, secs: f64) -> Result<(), String> {
        let stdin = self.input.as_mut().ok_or("its input is closed")?;
        stdin.write_all(format!("slice {secs}\n").as_bytes()).and_then(|()| stdin.flush()).map_err(|e| e.to_string())
    }

    /// Reads one report line within `limit` (a slice's, or the last one).
    pub fn report_within(&mut self, limit: Duration) -> Result<ShardReport, String> {
        self.wait_readable(limit)?;
        let mut line = String::new();
        match self.out.read_line(&mut line) {
            Ok(0) => Err(format!("ended without a report ({})", self.status())),
            Ok(_) => serde_json::from_str(line.trim()).map_err(|e| format!("sent a report that does not parse: {e}")),
            Err(e) => Err(e.to_string()),
        }
    }

    /// Ends its session: it closes its connections and then sends the report over every
    /// slice.
    pub fn quit(&mut self) {
        if let Some(mut stdin) = self.input.take() {
            let _ = stdin.write_all(b"quit\n");
        }
    }

    /// Waits for its report; a shard that failed counts each of its connections as
    /// failed, with the reason.
    pub fn finish(mut self, cfg: &ClientConfig, name: &str) -> ClientReport {
        let mut line = String::new();
        let _ = self.out.read_line(&mut line);
        let status = self.child.wait();
        match serde_json::from_str::<ShardReport>(line.trim()) {
            Ok(r) => ClientReport { summary: r.summary, rows: r.rows },
            Err(_) => {
                let why = match status {
                    Ok(st) => format!("{name} failed ({st})"),
                    Err(e) => format!("{name} failed ({e})"),
                };
                let part = ClientConfig { connections: self.connections, ..cfg.clone() };
                let failed = (self.first..self.first + self.connections)
                    .map(|t| ConnOutcome::failed(&part, t, why.clone()))
                    .collect();
                summarise(&part, failed, 0.0, Window::default(), RunLatency::default())
            }
        }
    }
}

impl Drop for Shard {
    /// Its input closes (a session shard then closes its connections and ends); it is
    /// given a few seconds to end, then killed, and always reaped.
    fn drop(&mut self) {
        self.input = None;
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while matches!(self.child.try_wait(), Ok(None)) && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        crate::guard::ungroup(self.child.id() as i32);
    }
}

/// Splits the connections over `cfg.processes` child processes of this binary, starts
/// them all at once, and merges what they report.
pub fn run(cfg: &ClientConfig) -> Result<ClientReport, ClientError> {
    check_limits(cfg)?;
    let exe = std::env::current_exe()?;
    let n = cfg.processes.min(cfg.connections).max(1);
    let mut shards = Vec::with_capacity(n);
    let mut first = cfg.first_thread;
    for i in 0..n {
        let share = cfg.connections / n + usize::from(i < cfg.connections % n);
        let mut args = shard_args(cfg, share, first);
        if i > 0 && cfg.workload.idle() > 0 {
            // The idle crowd is held once, by the first process.
            if let Some(w) = args.iter().position(|a| a == "--workload") {
                args[w + 1] = "rr".into();
            }
        }
        let mut cmd = Command::new(&exe);
        cmd.args(args).stderr(Stdio::inherit());
        crate::guard::dies_with_us(&mut cmd);
        shards.push(Shard::spawn(cmd, first, share)?);
        first += share;
    }
    // Every shard connects, says "ready", and waits for "go": the measured phase starts
    // together across processes, as it does across threads.
    for s in &mut shards {
        s.wait_ready();
    }
    let window = Window::start(&cfg.phases);
    for s in &mut shards {
        s.go();
    }
    let parts: Vec<ClientReport> =
        shards.into_iter().enumerate().map(|(i, s)| s.finish(cfg, &format!("client process {i}"))).collect();
    Ok(merge(cfg, parts, window.end(&cfg.phases)))
}
