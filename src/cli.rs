//! The `ringbench` command line: argument parsing and the thin `server`/`client` drivers.
//!
//! Malformed arguments print one line naming the flag and exit 2; a failure of the
//! environment (port in use, unwritable file, unreachable server) prints one line and
//! exits 1. Nothing here panics on bad input.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand, ValueEnum};
use ringbench_backends::{BackendKind, ServerConfig, UringOptions, DEFAULT_COALESCE_US};

use crate::client::{self, ClientConfig, ClientError, MAX_SIZE_BYTES};
use crate::matrix::{self, MatrixConfig};
use crate::variant::Variant;

#[derive(Parser, Debug)]
#[command(name = "ringbench", version, about = "Is io_uring faster than epoll for a TCP echo server on this machine?")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the echo server until SIGINT/SIGTERM, then print its summary.
    Server(ServerArgs),
    /// Run the blocking threaded load client against a server and verify every byte.
    Client(ClientArgs),
    /// Sweep backends × connections (× sizes), repeated, and build the report and charts.
    Matrix(MatrixArgs),
    /// Rebuild overall.csv, summary.md and plots/ of a sweep directory from its raw/ files.
    Report(ReportArgs),
}

#[derive(Args, Debug)]
pub struct MatrixArgs {
    /// Connection counts to sweep [default: 100,200,500,1000,1500,2000,2500,3000,4000].
    #[arg(long, value_delimiter = ',', value_name = "N,N,...", value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub connections: Vec<u64>,
    /// Backends (and variants such as uring-no-bufring) to compare, interleaved [default: epoll,uring].
    #[arg(long, value_delimiter = ',', value_name = "NAME,NAME,...", value_parser = parse_variant)]
    pub backends: Vec<String>,
    /// Requests per connection [default: 100].
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub requests: Option<u64>,
    /// Bytes per request; a list sweeps sizes too [default: 64].
    #[arg(long, value_delimiter = ',', value_name = "BYTES,...", value_parser = parse_size)]
    pub size: Vec<usize>,
    /// Repeats of each point [default: 3].
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=100))]
    pub repeats: Option<u64>,
    /// Server worker threads [default: one per server CPU].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub workers: Option<u32>,
    /// Output directory (default: results/UTC-TIMESTAMP, e.g. results/2026-11-29T03-07-51Z).
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// A smoke sweep in under a minute: 50 and 200 connections, 20 requests, 1 repeat.
    #[arg(long)]
    pub quick: bool,
    /// CPUs for the server [default: the first half of the CPUs this process may use].
    #[arg(long, value_delimiter = ',', value_name = "CPU,...")]
    pub server_cpus: Vec<usize>,
    /// CPUs for the client [default: the other half].
    #[arg(long, value_delimiter = ',', value_name = "CPU,...")]
    pub client_cpus: Vec<usize>,
    /// Do not pin the server and the client to CPUs.
    #[arg(long)]
    pub no_pin: bool,
    /// Client timeout for every connect, read and write, in seconds.
    #[arg(long, default_value = "10", value_name = "SECS", value_parser = parse_positive_secs)]
    pub timeout: Duration,
    /// Names this client host in the raw files and rows (default: the hostname).
    #[arg(long)]
    pub label: Option<String>,
    /// An extra `ringbench server` argument for every run (repeatable), e.g. --server-arg=--coalesce-us=0.
    #[arg(long = "server-arg", value_name = "ARG", allow_hyphen_values = true)]
    pub server_args: Vec<String>,
}

#[derive(Args, Debug)]
pub struct ReportArgs {
    /// A sweep directory (the --out of `ringbench matrix`), holding raw/.
    pub dir: PathBuf,
    /// Backend order in tables and charts (the first is the baseline of every comparison).
    #[arg(long, value_delimiter = ',', value_name = "NAME,...")]
    pub backends: Vec<String>,
}

fn parse_variant(s: &str) -> Result<String, String> {
    Variant::parse(s).map(|v| v.name)
}

/// The backends, as the command line names them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum BackendArg {
    Epoll,
    Uring,
}

impl From<BackendArg> for BackendKind {
    fn from(b: BackendArg) -> Self {
        match b {
            BackendArg::Epoll => BackendKind::Epoll,
            BackendArg::Uring => BackendKind::Uring,
        }
    }
}

#[derive(Args, Debug)]
pub struct ServerArgs {
    /// Which backend serves the connections.
    #[arg(long, value_enum)]
    pub backend: BackendArg,
    /// Address to listen on; use 0.0.0.0:8000 to accept clients from other machines.
    #[arg(long, default_value = "127.0.0.1:8000")]
    pub bind: SocketAddr,
    /// Worker threads (default: one per CPU this process may use).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub workers: Option<u32>,
    /// Per-connection CSV log: one row when each connection ends.
    #[arg(long, value_name = "FILE.csv")]
    pub log: Option<PathBuf>,
    /// Write the exit summary as JSON here too.
    #[arg(long, value_name = "FILE")]
    pub summary_json: Option<PathBuf>,
    /// Close connections idle for this many seconds (reason `timeout`); off by default.
    #[arg(long, value_name = "SECS", value_parser = parse_positive_secs)]
    pub idle_timeout: Option<Duration>,
    /// Close new connections at once while this many are open (reason `rejected`).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub max_conns: Option<u64>,
    /// Event coalescing: with 64+ connections open and few events ready, let events gather
    /// this long before waiting again (one wake-up then serves many requests). 0 turns it off.
    #[arg(long, value_name = "MICROS", default_value_t = DEFAULT_COALESCE_US,
          value_parser = clap::value_parser!(u32).range(0..=100_000))]
    pub coalesce_us: u32,
    /// io_uring: single-shot accept and receive instead of multishot.
    #[arg(long)]
    pub uring_no_multishot: bool,
    /// io_uring: a receive buffer per connection instead of a shared provided-buffer ring
    /// (implies single-shot receive).
    #[arg(long)]
    pub uring_no_bufring: bool,
    /// io_uring: COOP_TASKRUN instead of SINGLE_ISSUER + DEFER_TASKRUN.
    #[arg(long)]
    pub uring_no_defer_taskrun: bool,
    /// io_uring: a kernel thread polls the submission queue (burns CPU while busy).
    #[arg(long)]
    pub sqpoll: bool,
    /// io_uring: provided buffers per worker (a power of two, 1 to 32768).
    #[arg(long, value_name = "N", default_value_t = ringbench_backends::uring::DEFAULT_BUFFERS, value_parser = parse_buffers)]
    pub uring_buffers: u16,
    /// io_uring: bytes per provided buffer (64 to 1048576).
    #[arg(long, value_name = "BYTES", default_value_t = ringbench_backends::uring::DEFAULT_BUFFER_SIZE_BYTES,
          value_parser = parse_buffer_size)]
    pub uring_buffer_size: usize,
    /// io_uring: completion-queue entries per worker ring (2 to 1048576; the kernel rounds
    /// up to a power of two). Small values exercise CQ overflow and a full submission queue.
    #[arg(long, value_name = "N", default_value_t = ringbench_backends::uring::DEFAULT_CQ_ENTRIES,
          value_parser = clap::value_parser!(u32).range(2..=1_048_576))]
    pub uring_cq_entries: u32,
}

fn parse_buffer_size(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n) if (64..=1_048_576).contains(&n) => Ok(n),
        _ => Err(format!("'{s}' must be a number of bytes from 64 to 1048576")),
    }
}

fn parse_buffers(s: &str) -> Result<u16, String> {
    match s.parse::<u16>() {
        Ok(n) if n.is_power_of_two() && n <= 32_768 => Ok(n),
        _ => Err(format!("'{s}' must be a power of two from 1 to 32768")),
    }
}

#[derive(Args, Debug)]
pub struct ClientArgs {
    /// The echo server to load.
    #[arg(long, default_value = "127.0.0.1:8000")]
    pub server: SocketAddr,
    /// Concurrent connections, one thread each.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub connections: u64,
    /// Requests per connection.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..))]
    pub requests: u64,
    /// Bytes per request (at most 64 MiB = 67108864).
    #[arg(long, default_value_t = 64, value_parser = parse_size)]
    pub size: usize,
    /// Per-thread CSV, one row per connection.
    #[arg(long, value_name = "FILE.csv")]
    pub out: Option<PathBuf>,
    /// The summary as JSON.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Names this client host in every row (default: the hostname).
    #[arg(long)]
    pub label: Option<String>,
    /// Seconds allowed for every connect, read and write.
    #[arg(long, default_value = "10", value_name = "SECS", value_parser = parse_positive_secs)]
    pub timeout: Duration,
    /// Local source addresses to spread connections over (each has its own ephemeral ports).
    #[arg(long, value_delimiter = ',', value_name = "IP,IP,...")]
    pub source_ips: Vec<IpAddr>,
    /// Spread the connections over this many client processes (each has its own
    /// open-file limit); they start together and report as one.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=256))]
    pub processes: u32,
    /// The first thread number (set by a sharded parent).
    #[arg(long, hide = true, default_value_t = 0)]
    pub first_thread: usize,
    /// Run as one shard of a parent: print "ready" once connected, start on "go".
    #[arg(long, hide = true)]
    pub shard_child: bool,
}

fn parse_positive_secs(s: &str) -> Result<Duration, String> {
    let v: f64 = s.parse().map_err(|_| format!("'{s}' is not a number of seconds"))?;
    if !(v > 0.0 && v.is_finite() && v <= 86_400.0) {
        return Err(format!("'{s}' must be more than 0 and at most 86400 seconds"));
    }
    Ok(Duration::from_secs_f64(v))
}

fn parse_size(s: &str) -> Result<usize, String> {
    let v: usize = s.parse().map_err(|_| format!("'{s}' is not a whole number of bytes"))?;
    if v == 0 {
        return Err("must be at least 1 byte".into());
    }
    if v > MAX_SIZE_BYTES {
        return Err(format!("{v} is over the maximum of {MAX_SIZE_BYTES} bytes (64 MiB)"));
    }
    Ok(v)
}

/// Parses the arguments; on a usage error prints one line and exits 2 (help and version
/// print in full and exit 0).
pub fn parse() -> Cli {
    match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            use clap::error::ErrorKind;
            if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
                e.exit();
            }
            eprintln!("ringbench: {}", one_line(&e.render().to_string()));
            std::process::exit(2);
        }
    }
}

/// Folds clap's multi-line error into one line: the error itself and the list of possible
/// values, without the usage block and the "--help" tip.
fn one_line(rendered: &str) -> String {
    let mut parts = Vec::new();
    for line in rendered.lines().map(str::trim) {
        if line.starts_with("Usage:") || line.starts_with("For more information") {
            break;
        }
        if line.is_empty() || line.starts_with("tip:") {
            continue;
        }
        parts.push(line.trim_start_matches("error: "));
    }
    if parts.is_empty() {
        "invalid arguments".into()
    } else {
        parts.join(" ")
    }
}

/// Entry point of the binary.
pub fn main() -> ExitCode {
    let cli = parse();
    let result = match cli.command {
        Command::Server(a) => run_server(a),
        Command::Client(a) => run_client(a),
        Command::Matrix(a) => run_matrix(a),
        Command::Report(a) => run_report(a),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("ringbench: {e:#}");
            ExitCode::from(e.downcast_ref::<UsageError>().map_or(1, |_| 2))
        }
    }
}

/// An error the user must fix in the arguments: exit status 2.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

fn run_server(a: ServerArgs) -> anyhow::Result<ExitCode> {
    let cfg = ServerConfig {
        backend: a.backend.into(),
        bind: a.bind,
        workers: a.workers.unwrap_or(0) as usize,
        log: a.log,
        idle_timeout: a.idle_timeout,
        max_conns: a.max_conns.map(|n| n as usize),
        coalesce_us: a.coalesce_us,
        uring: UringOptions {
            multishot: !a.uring_no_multishot,
            bufring: !a.uring_no_bufring,
            defer_taskrun: !a.uring_no_defer_taskrun,
            sqpoll: a.sqpoll,
            buffers: a.uring_buffers,
            buffer_size: a.uring_buffer_size,
            cq_entries: a.uring_cq_entries,
        },
    };
    // Signals are routed to a thread before the server exists, so a SIGTERM that arrives
    // during start-up is not lost and never kills the process half-way.
    let mut signals =
        signal_hook::iterator::Signals::new([libc::SIGINT, libc::SIGTERM]).context("cannot install signal handlers")?;
    let handle = ringbench_backends::start(cfg)?;
    let shared = handle.shared();
    eprintln!(
        "ringbench: {} server listening on {} with {} workers (SIGINT/SIGTERM stops it)",
        shared.cfg.backend,
        handle.local_addr(),
        shared.workers
    );
    std::thread::Builder::new().name("ringbench-signals".into()).spawn(move || {
        let mut count = 0;
        for _ in signals.forever() {
            count += 1;
            if count == 1 {
                shared.stop.trigger();
            } else {
                // A second signal means "now": skip the orderly shutdown.
                std::process::exit(130);
            }
        }
    })?;
    let summary = handle.wait()?;
    eprintln!("{summary}");
    if let Some(p) = &a.summary_json {
        write_json(p, &summary)?;
    }
    Ok(ExitCode::SUCCESS)
}

fn run_client(a: ClientArgs) -> anyhow::Result<ExitCode> {
    let mut cfg = ClientConfig::new(a.server, a.connections as usize, a.requests, a.size);
    cfg.timeout = a.timeout;
    cfg.source_ips = a.source_ips;
    cfg.processes = a.processes as usize;
    cfg.first_thread = a.first_thread;
    if let Some(l) = a.label {
        cfg.label = l;
    }
    // Fail on unwritable outputs before spending minutes on the run.
    for p in [&a.out, &a.json].into_iter().flatten() {
        std::fs::File::create(p).with_context(|| format!("cannot create '{}'", p.display()))?;
    }
    let result = if a.shard_child {
        client::run_with_start_hook(&cfg, || {
            use std::io::{BufRead, Write};
            println!("ready");
            let _ = std::io::stdout().flush();
            let mut go = String::new();
            let _ = std::io::stdin().lock().read_line(&mut go);
        })
    } else {
        client::run(&cfg)
    };
    let report = match result {
        Ok(r) => r,
        Err(
            e @ (ClientError::TooManyFiles { .. }
            | ClientError::TooFewPorts { .. }
            | ClientError::TooManyThreads { .. }),
        ) => return Err(UsageError(e.to_string()).into()),
        Err(e) => return Err(e.into()),
    };
    if let Some(p) = &a.out {
        client::write_rows_csv(p, &report.rows).with_context(|| format!("cannot write '{}'", p.display()))?;
    }
    if let Some(p) = &a.json {
        write_json(p, &report.summary)?;
    }
    if a.shard_child {
        // The parent merges and prints; a child's stdout is only its "ready" line.
        return Ok(if report.ok() { ExitCode::SUCCESS } else { ExitCode::from(1) });
    }
    println!("{}", report.summary);
    if let Some(first) = report.rows.iter().find(|r| r.errors > 0) {
        println!("  first error        thread {}: {}", first.thread, first.error);
    }
    Ok(if report.ok() { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

fn run_matrix(a: MatrixArgs) -> anyhow::Result<ExitCode> {
    let q = a.quick;
    let or = |v: Vec<u64>, quick: &[u64], full: &[u64]| -> Vec<usize> {
        let v = if v.is_empty() {
            if q {
                quick.to_vec()
            } else {
                full.to_vec()
            }
        } else {
            v
        };
        v.into_iter().map(|x| x as usize).collect()
    };
    let (mut server_cpus, mut client_cpus) = matrix::default_pinning();
    if !a.server_cpus.is_empty() || !a.client_cpus.is_empty() {
        (server_cpus, client_cpus) = (a.server_cpus, a.client_cpus);
    }
    if a.no_pin {
        (server_cpus, client_cpus) = (Vec::new(), Vec::new());
    }
    let allowed = ringbench_backends::sys::affinity().unwrap_or_default();
    if let Some(c) = server_cpus.iter().chain(&client_cpus).find(|c| !allowed.contains(c)) {
        return Err(UsageError(format!(
            "--server-cpus/--client-cpus: CPU {c} is not one this process may use ({allowed:?})"
        ))
        .into());
    }
    let cfg = MatrixConfig {
        connections: or(a.connections, &[50, 200], &[100, 200, 500, 1000, 1500, 2000, 2500, 3000, 4000]),
        backends: if a.backends.is_empty() { vec!["epoll".into(), "uring".into()] } else { a.backends },
        requests: a.requests.unwrap_or(if q { 20 } else { 100 }),
        sizes: if a.size.is_empty() { vec![64] } else { a.size },
        repeats: a.repeats.unwrap_or(if q { 1 } else { 3 }) as usize,
        // Recorded resolved, so the report names the worker count that ran.
        workers: Some(a.workers.map_or(
            if server_cpus.is_empty() { ringbench_backends::sys::allowed_cpus() } else { server_cpus.len() },
            |w| w as usize,
        )),
        out: a.out.unwrap_or_else(|| PathBuf::from("results").join(crate::env::utc_now().replace(':', "-"))),
        server_cpus,
        client_cpus,
        timeout_s: a.timeout.as_secs_f64(),
        server_args: a.server_args,
        label: a.label.unwrap_or_else(client::default_label),
    };
    matrix::run(&cfg)
}

fn run_report(a: ReportArgs) -> anyhow::Result<ExitCode> {
    let points = crate::report::build(&a.dir, &a.backends)?;
    let failed = points.iter().filter(|p| !p.ok).count();
    println!("{}", a.dir.join("summary.md").display());
    eprintln!("ringbench report: {} points ({failed} failed) from {}", points.len(), a.dir.join("raw").display());
    Ok(ExitCode::SUCCESS)
}

/// Writes `value` as pretty JSON to `path`.
pub fn write_json<T: serde::Serialize>(path: &Path, value: &T) -> anyhow::Result<()> {
    let text = serde_json::to_string_pretty(value)?;
    std::fs::write(path, text + "\n").with_context(|| format!("cannot write '{}'", path.display()))
}
