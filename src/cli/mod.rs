//! The `ringbench` command line: parsing and validation into typed options, nothing else.
//!
//! Every check of the arguments is here, so the rest of the tool receives options that
//! are already valid. A malformed argument prints one line naming the flag (with clap's
//! "did you mean" tip for a misspelt one) and exits 2.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use clap::{Arg, ArgAction, ArgMatches, Args, FromArgMatches, Parser, Subcommand};
use ringbench_backends::config::{
    Switch, DEFAULT_URING_BUFFERS, DEFAULT_URING_BUFFER_SIZE_BYTES, DEFAULT_URING_CQ_ENTRIES,
};
use ringbench_backends::{ServerConfig, Variant, DEFAULT_COALESCE_US, SWITCHES};

mod matrix_args;
mod values;

use matrix_args::MatrixArgs;
pub use matrix_args::{DEFAULT_BUDGET_S, DEFAULT_MAX_ROUNDS, DEFAULT_MIN_ROUNDS, DEFAULT_PRECISION};

use crate::client::{self, ClientConfig, Phases};
use crate::matrix::{self, MatrixConfig};
use values::{
    parse_buffer_size, parse_buffers, parse_open_fd, parse_positive_ms, parse_positive_secs, parse_rate, parse_server,
    parse_size,
};

#[derive(Parser, Debug)]
#[command(name = "ringbench", version, about = "Is io_uring faster than epoll for a TCP echo server on this machine?")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the echo server until SIGINT/SIGTERM, then print its summary.
    Server(ServerArgs),
    /// Run the verifying load client against a server.
    Client(ClientArgs),
    /// Sweep servers × connections (× sizes × offered rates), repeated and interleaved, and
    /// build the report and charts.
    Matrix(Box<MatrixArgs>),
    /// Rebuild overall.csv, summary.md and plots/ of a sweep directory from its raw/ files.
    Report(ReportArgs),
    /// Measure the costs that decide the answer here: a syscall, epoll_wait, loopback TCP,
    /// io_uring NOPs, a cross-CPU wake-up.
    Probe(ProbeArgs),
    /// The guard of a sweep (started by the sweep itself): cleans up if the sweep dies.
    #[command(hide = true)]
    Guard {
        /// The sweep's process id, for its lines.
        sweep: u32,
    },
}

#[derive(Args, Debug)]
struct ProbeArgs {
    /// The CPU to measure on [default: the sweep's server CPU].
    #[arg(long, value_name = "CPU")]
    server_cpu: Option<usize>,
    /// The other CPU of the wake-up [default: the sweep's client CPU].
    #[arg(long, value_name = "CPU")]
    client_cpu: Option<usize>,
    /// Also write the figures as JSON here.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
}

#[derive(Args, Debug)]
struct ServerArgs {
    /// Which backend serves the connections: epoll, uring, or a variant with a feature
    /// switched off such as uring-no-bufring.
    #[arg(long, value_parser = Variant::parse)]
    backend: Variant,
    /// Address to listen on; use 0.0.0.0:8000 to accept clients from other machines.
    #[arg(long, default_value = "127.0.0.1:8000")]
    bind: SocketAddr,
    /// Worker threads (default: one per CPU this process may use).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=1024))]
    workers: Option<u32>,
    /// Per-connection CSV log: one row when each connection ends.
    #[arg(long, value_name = "FILE.csv")]
    log: Option<PathBuf>,
    /// Write the exit summary as JSON here too.
    #[arg(long, value_name = "FILE")]
    summary_json: Option<PathBuf>,
    /// Close connections idle for this many seconds (reason `timeout`); off by default.
    #[arg(long, value_name = "SECS", value_parser = parse_positive_secs)]
    idle_timeout: Option<Duration>,
    /// Close new connections at once while this many are open (reason `rejected`).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    max_conns: Option<u64>,
    /// Event coalescing: with 64+ connections open and few events ready, let events gather
    /// this long before waiting again (one wake-up then serves many requests). 0 turns it off.
    #[arg(long, value_name = "MICROS", default_value_t = DEFAULT_COALESCE_US,
          value_parser = clap::value_parser!(u32).range(0..=100_000))]
    coalesce_us: u32,
    /// threads: at most this many connection threads; beyond it new connections are
    /// closed at once (reason `rejected`), as when the machine cannot create a thread.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    max_threads: Option<u64>,
    #[command(flatten)]
    switches: SwitchFlags,
    /// Publish the syscall count live into this shared-memory descriptor (given by a
    /// sweep, which reads it at every slice boundary).
    #[arg(long, hide = true, value_name = "FD", value_parser = parse_open_fd)]
    counters_fd: Option<i32>,
    /// A server slower on purpose: burn this many nanoseconds of CPU on every read (to
    /// check that a sweep finds a known difference).
    #[arg(long, hide = true, value_name = "NS", value_parser = clap::value_parser!(u64).range(0..=10_000_000))]
    spin_ns_per_read: Option<u64>,
    /// io_uring: provided buffers per worker (a power of two, 1 to 32768).
    #[arg(long, value_name = "N", default_value_t = DEFAULT_URING_BUFFERS, value_parser = parse_buffers)]
    uring_buffers: u16,
    /// io_uring: bytes per provided buffer (64 to 1048576).
    #[arg(long, value_name = "BYTES", default_value_t = DEFAULT_URING_BUFFER_SIZE_BYTES, value_parser = parse_buffer_size)]
    uring_buffer_size: usize,
    /// io_uring: completion-queue entries per worker ring (2 to 1048576; the kernel rounds
    /// up to a power of two). Small values exercise CQ overflow and a full submission queue.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_URING_CQ_ENTRIES,
          value_parser = clap::value_parser!(u32).range(2..=1_048_576))]
    uring_cq_entries: u32,
    /// io_uring: zero-copy sends for sends of at least this many bytes (0: every send;
    /// `--uring-zc` without it is 0).
    #[arg(long, value_name = "BYTES", value_parser = clap::value_parser!(u32))]
    uring_zc_min_bytes: Option<u32>,
}

/// The flags of the feature switches that have one (`--uring-no-bufring`, `--sqpoll`),
/// made from the backends' switch table so they are defined in one place.
#[derive(Debug, Default, Clone)]
struct SwitchFlags(Vec<&'static Switch>);

impl FromArgMatches for SwitchFlags {
    fn from_arg_matches(m: &ArgMatches) -> Result<Self, clap::Error> {
        Ok(SwitchFlags(SWITCHES.iter().filter(|s| s.flag.is_some_and(|f| m.get_flag(f))).collect()))
    }

    fn update_from_arg_matches(&mut self, m: &ArgMatches) -> Result<(), clap::Error> {
        *self = Self::from_arg_matches(m)?;
        Ok(())
    }
}

impl Args for SwitchFlags {
    fn augment_args(cmd: clap::Command) -> clap::Command {
        SWITCHES.iter().fold(cmd, |cmd, s| match s.flag {
            Some(f) => cmd.arg(Arg::new(f).long(f).action(ArgAction::SetTrue).help(s.help)),
            None => cmd,
        })
    }

    fn augment_args_for_update(cmd: clap::Command) -> clap::Command {
        Self::augment_args(cmd)
    }
}

#[derive(Args, Debug)]
struct ClientArgs {
    /// The echo server to load: HOST:PORT (a name is resolved once, at start).
    #[arg(long, default_value = "127.0.0.1:8000", value_parser = parse_server)]
    server: SocketAddr,
    /// Concurrent connections (a thread each with --engine threads).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    connections: u64,
    /// Requests per connection.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..))]
    requests: u64,
    /// Bytes per request (at most 64 MiB = 67108864).
    #[arg(long, default_value_t = 64, value_parser = parse_size)]
    size: usize,
    /// Per-connection CSV, one row per connection.
    #[arg(long, value_name = "FILE.csv")]
    out: Option<PathBuf>,
    /// The summary as JSON.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// Names this client host in every row (default: the hostname).
    #[arg(long)]
    label: Option<String>,
    /// Seconds allowed for every connect, read and write.
    #[arg(long, default_value = "10", value_name = "SECS", value_parser = parse_positive_secs)]
    timeout: Duration,
    /// Local source addresses to spread connections over (each has its own ephemeral ports).
    #[arg(long, value_delimiter = ',', value_name = "IP,IP,...")]
    source_ips: Vec<IpAddr>,
    /// Spread the connections over this many client processes (each has its own
    /// open-file limit); they start together and report as one.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=256))]
    processes: u32,
    /// Repeat each connection's requests in rounds until the run has lasted this long
    /// (AvgTotalDuration stays the time for one round).
    #[arg(long, value_name = "SECS", value_parser = parse_positive_secs)]
    min_run_s: Option<Duration>,
    /// threads: a blocking thread per connection (the seed's client); epoll: a few event
    /// loops, each multiplexing many connections (for open-loop schedules, tail latency,
    /// and more connections than threads).
    #[arg(long, value_enum, default_value = "threads")]
    engine: EngineArg,
    /// epoll engine: its threads [default: one per CPU this process may use].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1024))]
    threads: Option<u32>,
    /// Open loop: this many requests per second over all connections, each connection on
    /// its own schedule; latency is also counted from each request's intended send time.
    #[arg(long, value_name = "REQ/S", value_parser = parse_rate, requires = "duration")]
    rate: Option<f64>,
    /// How long to run, instead of --requests: with --rate, the measured window; without,
    /// a closed loop repeating its requests until then.
    #[arg(long, value_name = "SECS", value_parser = parse_positive_secs)]
    duration: Option<Duration>,
    /// With --rate: run this long first without measuring (warm-up).
    #[arg(long, value_name = "SECS", value_parser = parse_positive_secs, requires = "rate")]
    warmup: Option<Duration>,
    /// A line on stderr every this many seconds: req/s, errors, p99.
    #[arg(long = "interval-s", value_name = "SECS", value_parser = parse_positive_secs)]
    interval: Option<Duration>,
    /// Write the latency percentile spectra (HdrHistogram's layout, as wrk2 -L prints) to
    /// PREFIX.corrected.hgrm and PREFIX.service.hgrm.
    #[arg(long, value_name = "PREFIX")]
    spectrum: Option<PathBuf>,
    /// What each connection does: rr (one request in flight, the seed's), crr (a new
    /// connection per request), pipeline:D (D requests in flight), stream (--window bytes
    /// in flight, written --size at a time), idle:K (K more connections opened first and
    /// left idle, each echoing once at the end).
    #[arg(long, default_value = "rr", value_parser = crate::workload::Workload::parse)]
    workload: crate::workload::Workload,
    /// stream: bytes in flight on every connection.
    #[arg(long, value_name = "BYTES", default_value_t = crate::workload::DEFAULT_WINDOW_BYTES,
          value_parser = clap::value_parser!(u64).range(1..=1_073_741_824))]
    window: u64,
    /// The first connection number (set by a parent running this as a shard).
    #[arg(long, hide = true, default_value_t = 0)]
    first_thread: usize,
    /// Run as a shard of a parent: say "ready" once connected, start on "go", and print the
    /// report as one JSON line.
    #[arg(long, hide = true)]
    shard_child: bool,
    /// Write "start" when the measured phase begins and "end" when it ends to this open
    /// descriptor (the sweep samples the server's CPU time at those instants).
    #[arg(long, hide = true, value_name = "FD", value_parser = parse_open_fd)]
    phase_fd: Option<i32>,
}

#[derive(Args, Debug)]
struct ReportArgs {
    /// A sweep directory (the --out of `ringbench matrix`), holding raw/.
    dir: PathBuf,
    /// Server order in tables and charts [default: as the sweep ran them].
    #[arg(long, value_delimiter = ',', value_name = "NAME,...")]
    backends: Vec<String>,
    /// The server every other is compared with [default: as the sweep chose].
    #[arg(long, value_name = "NAME")]
    baseline: Option<String>,
    /// Name the highest offered rate each server held with corrected p99 ≤ MS
    /// [default: the sweep's --slo-ms].
    #[arg(long, value_name = "MS", value_parser = parse_positive_ms)]
    slo_ms: Option<f64>,
}

/// What to run, with every option validated.
pub enum Task {
    Server(ServerOptions),
    Client(ClientOptions),
    Matrix(Box<MatrixConfig>),
    Report { dir: PathBuf, opts: crate::report::Options },
    Probe { server_cpu: Option<usize>, client_cpu: Option<usize>, json: Option<PathBuf> },
    Guard { sweep: u32 },
}

pub struct ServerOptions {
    pub variant: Variant,
    pub cfg: ServerConfig,
    pub summary_json: Option<PathBuf>,
    /// The live counters' descriptor, mapped when the server starts.
    pub counters_fd: Option<i32>,
}

pub struct ClientOptions {
    pub cfg: ClientConfig,
    pub out: Option<PathBuf>,
    pub json: Option<PathBuf>,
    pub spectrum: Option<PathBuf>,
    pub shard_child: bool,
}

/// The client engines, as the command line names them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub(super) enum EngineArg {
    Threads,
    Epoll,
}

/// Arguments that parse but cannot be used (exit 2).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// Parses and validates the command line; on a usage error prints one line and exits 2
/// (help and version print in full and exit 0).
pub fn parse() -> Task {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            use clap::error::ErrorKind;
            if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
                e.exit();
            }
            usage_exit(&one_line(&e.render().to_string()))
        }
    };
    match task(cli.command) {
        Ok(t) => t,
        Err(e) => usage_exit(&e.0),
    }
}

fn usage_exit(line: &str) -> ! {
    eprintln!("ringbench: {line}");
    std::process::exit(2)
}

fn task(c: Command) -> Result<Task, UsageError> {
    Ok(match c {
        Command::Server(a) => Task::Server(a.into_options()),
        Command::Client(a) => Task::Client(a.into_options()),
        Command::Matrix(a) => Task::Matrix(Box::new((*a).into_config()?)),
        Command::Report(a) => Task::Report {
            dir: a.dir,
            opts: crate::report::Options { order: a.backends, baseline: a.baseline, slo_ms: a.slo_ms },
        },
        Command::Guard { sweep } => Task::Guard { sweep },
        Command::Probe(a) => {
            let (server, client) = matrix::default_pinning();
            Task::Probe {
                server_cpu: a.server_cpu.or(server.first().copied()),
                client_cpu: a.client_cpu.or(client.first().copied()),
                json: a.json,
            }
        }
    })
}

impl ServerArgs {
    fn into_options(self) -> ServerOptions {
        let mut cfg = ServerConfig {
            bind: self.bind,
            workers: self.workers.unwrap_or(0) as usize,
            log: self.log,
            idle_timeout: self.idle_timeout,
            max_conns: self.max_conns.map(|n| n as usize),
            max_threads: self.max_threads.map(|n| n as usize),
            coalesce_us: self.coalesce_us,
            spin_per_read: self.spin_ns_per_read.map(Duration::from_nanos),
            ..ServerConfig::default()
        };
        cfg.uring.buffers = self.uring_buffers;
        cfg.uring.buffer_size = self.uring_buffer_size;
        cfg.uring.cq_entries = self.uring_cq_entries;
        cfg.uring.zc_min_bytes = self.uring_zc_min_bytes;
        self.backend.apply(&mut cfg);
        for s in &self.switches.0 {
            (s.apply)(&mut cfg);
        }
        ServerOptions { variant: self.backend, cfg, summary_json: self.summary_json, counters_fd: self.counters_fd }
    }
}

impl ClientArgs {
    fn into_options(self) -> ClientOptions {
        let mut cfg = ClientConfig::new(self.server, self.connections as usize, self.requests, self.size);
        cfg.timeout = self.timeout;
        cfg.source_ips = self.source_ips;
        cfg.processes = self.processes as usize;
        cfg.first_thread = self.first_thread;
        cfg.min_run = self.min_run_s.or(self.duration.filter(|_| self.rate.is_none()));
        cfg.engine = match self.engine {
            EngineArg::Threads => client::Engine::Threads,
            EngineArg::Epoll => client::Engine::Epoll,
        };
        cfg.threads = self.threads.unwrap_or(0) as usize;
        cfg.workload = self.workload;
        cfg.window = self.window;
        if let (Some(rate_rps), Some(duration)) = (self.rate, self.duration) {
            cfg.open = Some(client::OpenLoop { rate_rps, duration, warmup: self.warmup.unwrap_or_default() });
        }
        cfg.interval = self.interval;
        if self.interval.is_some() {
            cfg.progress = Some(std::sync::Arc::new(client::Progress::new(16)));
        }
        if let Some(l) = self.label {
            cfg.label = l;
        }
        if let Some(fd) = self.phase_fd {
            // SAFETY: the parent gave us this descriptor open (checked while parsing) for us
            // to write to; nothing else in this process uses it, so we may own it.
            cfg.phases = Phases::to(unsafe { std::os::fd::FromRawFd::from_raw_fd(fd) });
        }
        ClientOptions { cfg, out: self.out, json: self.json, spectrum: self.spectrum, shard_child: self.shard_child }
    }
}

/// Folds clap's multi-line error into one line: the error, the possible values, and a
/// "did you mean" tip, without the usage block and the "--help" pointer.
fn one_line(rendered: &str) -> String {
    let mut parts = Vec::new();
    for line in rendered.lines().map(str::trim) {
        if line.starts_with("Usage:") || line.starts_with("For more information") {
            break;
        }
        if line.is_empty() {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_switch_with_a_flag_is_a_server_flag() {
        let cli = Cli::try_parse_from(["ringbench", "server", "--backend", "uring", "--uring-no-bufring", "--sqpoll"]);
        let Ok(Cli { command: Command::Server(a) }) = cli else { panic!("parse failed") };
        let o = a.into_options();
        assert!(!o.cfg.uring.bufring && o.cfg.uring.sqpoll && o.cfg.uring.multishot);
        let v = Cli::try_parse_from(["ringbench", "server", "--backend", "uring-no-multishot"]);
        let Ok(Cli { command: Command::Server(a) }) = v else { panic!("parse failed") };
        assert!(!a.into_options().cfg.uring.multishot);
    }

    #[test]
    fn a_misspelt_flag_keeps_the_did_you_mean_tip_on_one_line() {
        let e = Cli::try_parse_from(["ringbench", "client", "--connectons", "5"]).unwrap_err();
        let line = one_line(&e.render().to_string());
        assert!(!line.contains('\n') && line.contains("--connections"), "{line}");
    }
}
