//! `ringbench matrix`'s flags, and their check into a [`MatrixConfig`].

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use ringbench_backends::Variant;

use super::values::{
    parse_backend, parse_hosts, parse_positive_ms, parse_positive_secs, parse_precision, parse_secs_or_zero,
    parse_size, parse_slice_secs, parse_target, HostList,
};
use super::{EngineArg, UsageError};
use crate::client::{self, SPARE_FDS};
use crate::matrix::{self, Budget, MatrixConfig, Target};
use crate::workload::{Workload, DEFAULT_WINDOW_BYTES};

/// Paired slices' defaults, chosen from measurements on this project's machines (README,
/// "How sure"): rounds enough for a sign-test interval to be worth reading, no cap on
/// rounds below what the budget allows, and a budget that keeps the default sweep to a
/// few minutes. Slice lengths follow the connections ([`MatrixConfig::slice_for`]).
pub const DEFAULT_PRECISION: f64 = 0.02;
pub const DEFAULT_MIN_ROUNDS: u64 = 8;
pub const DEFAULT_MAX_ROUNDS: u64 = 1000;
pub const DEFAULT_BUDGET_S: f64 = 40.0;

#[derive(Args, Debug)]
pub(super) struct MatrixArgs {
    /// Connection counts to sweep [default: 100,200,500,1000,1500,2000,2500,3000,4000].
    #[arg(long, value_delimiter = ',', value_name = "N,N,...", value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    connections: Vec<u64>,
    /// Backends (and variants such as uring-no-bufring) to compare, interleaved; `none`
    /// for --target servers alone [default: epoll,uring, with any --target added].
    #[arg(long, value_delimiter = ',', value_name = "NAME,NAME,...", value_parser = parse_backend)]
    backends: Vec<Option<Variant>>,
    /// Requests per connection [default: 100].
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    requests: Option<u64>,
    /// Bytes per request; a list sweeps sizes too [default: 64].
    #[arg(long, value_delimiter = ',', value_name = "BYTES,...", value_parser = parse_size)]
    size: Vec<usize>,
    /// With --fresh-servers: repeats of each point [default: 3], servers alternating within
    /// each. With paired slices: exactly this many rounds at every point, instead of
    /// adding rounds until --precision.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=1000))]
    repeats: Option<u64>,
    /// A fresh server process per run, servers interleaved within each repeat (the seed's
    /// way), instead of paired slices between servers that stay up.
    #[arg(long)]
    fresh_servers: bool,
    /// Paired slices: each slice's measured length in seconds [default: 0.25 ms per
    /// connection, from 0.05 to 1].
    #[arg(long, value_name = "SECS", value_parser = parse_slice_secs)]
    slice_s: Option<f64>,
    /// Paired slices: add rounds until the intervals of CPU per request and req/s against
    /// the baseline are at most ± this fraction wide [default: 0.02].
    #[arg(long, value_name = "F", value_parser = parse_precision)]
    precision: Option<f64>,
    /// Paired slices: the fewest rounds at a point [default: 8; 6 give a 95 % interval].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=1000))]
    min_rounds: Option<u64>,
    /// Paired slices: the most rounds at a point [default: 1000].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=1000))]
    max_rounds: Option<u64>,
    /// Paired slices: a point's time budget, starting servers and connecting included, in
    /// seconds [default: 40, more where three rotations of the shortest blocks take longer];
    /// a rotation of blocks is started only when it is expected to fit.
    #[arg(long, value_name = "SECS", value_parser = parse_positive_secs)]
    budget_s: Option<Duration>,
    /// Paired slices: the rounds of each block (every block starts every server afresh,
    /// blocks come in whole rotations of the start order) [default: 8, fewer when the
    /// budget would otherwise not fit three rotations; at least 3].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=1000))]
    block_rounds: Option<u64>,
    /// Calibration (A/A): a second instance of the baseline as a server of its own, so
    /// summary.md can say whether its intervals held 1.
    #[arg(long)]
    aa: bool,
    /// Each run repeats its workload in rounds until it lasts this long [default: 1; 0:
    /// one round, the seed's workload exactly].
    #[arg(long, value_name = "SECS", value_parser = parse_secs_or_zero)]
    min_run_s: Option<f64>,
    /// The server every other is compared with [default: epoll, else the first].
    #[arg(long, value_name = "NAME")]
    baseline: Option<String>,
    /// Skip `ringbench probe` before the sweep (env.json then has no probe figures).
    #[arg(long)]
    no_probe: bool,
    /// Open-loop rates to sweep at each connection count, requests per second over all
    /// connections (needs --duration): where each server's latency knee is.
    #[arg(long, value_delimiter = ',', value_name = "REQ/S,...", value_parser = clap::value_parser!(u64).range(1..=1_000_000_000))]
    rates: Vec<u64>,
    /// Workloads to sweep: rr (one request in flight per connection, the seed's), crr (a
    /// new connection per request), pipeline:D (D in flight), stream (--window bytes in
    /// flight), idle:K (K idle connections beside the active ones) [default: rr].
    #[arg(long, value_delimiter = ',', value_name = "W,W,...", value_parser = Workload::parse)]
    workloads: Vec<Workload>,
    /// stream: bytes in flight on every connection.
    #[arg(long, value_name = "BYTES", default_value_t = DEFAULT_WINDOW_BYTES, value_parser = clap::value_parser!(u64).range(1..=1_073_741_824))]
    window: u64,
    /// The client engine: threads (a thread per connection) or epoll (event loops).
    #[arg(long, value_enum, default_value = "threads")]
    engine: EngineArg,
    /// Each run's measured window with --rates; without, how long each closed-loop run lasts.
    #[arg(long, value_name = "SECS", value_parser = parse_positive_secs)]
    duration: Option<Duration>,
    /// With --rates: a warm-up before each measured window.
    #[arg(long, value_name = "SECS", value_parser = parse_positive_secs)]
    warmup: Option<Duration>,
    /// A latency objective: summary.md names the highest rate each server held with a
    /// corrected p99 at or under this many milliseconds.
    #[arg(long, value_name = "MS", value_parser = parse_positive_ms)]
    slo_ms: Option<f64>,
    /// Server worker threads [default: one per server CPU].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=1024))]
    workers: Option<u32>,
    /// Output directory (default: results/UTC-TIMESTAMP, e.g. results/2026-11-29T03-07-51Z).
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// A smoke sweep in seconds: 50 and 200 connections, 20 requests, 1 repeat.
    #[arg(long)]
    quick: bool,
    /// CPUs for the server [default: the first half of the CPUs this process may use].
    #[arg(long, value_delimiter = ',', value_name = "CPU,...")]
    server_cpus: Vec<usize>,
    /// CPUs for the client [default: the other half].
    #[arg(long, value_delimiter = ',', value_name = "CPU,...")]
    client_cpus: Vec<usize>,
    /// Do not pin the server and the client to CPUs.
    #[arg(long)]
    no_pin: bool,
    /// Client timeout for every connect, read and write, in seconds.
    #[arg(long, default_value = "10", value_name = "SECS", value_parser = parse_positive_secs)]
    timeout: Duration,
    /// How long a server may take to be ready (report listening, or accept a connection).
    #[arg(long, default_value = "10", value_name = "SECS", value_parser = parse_positive_secs)]
    ready_timeout: Duration,
    /// Names this client host in the raw files and rows (default: the hostname).
    #[arg(long)]
    label: Option<String>,
    /// An extra `ringbench server` argument for every run (repeatable), e.g. --server-arg=--coalesce-us=0.
    #[arg(long = "server-arg", value_name = "ARG", allow_hyphen_values = true)]
    server_args: Vec<String>,
    /// An extra `ringbench client` argument for every run (repeatable), e.g. --client-arg=--processes=2.
    #[arg(long = "client-arg", value_name = "ARG", allow_hyphen_values = true)]
    client_args: Vec<String>,
    /// Any server in the same sweep, beside the backends (repeatable): NAME='COMMAND ...
    /// {port}'. {port} becomes a free port; the command is exec'd by sh, in its own process
    /// group, pinned like the backends; it is ready once the port accepts a connection.
    #[arg(long = "target", value_name = "NAME=COMMAND", value_parser = parse_target)]
    targets: Vec<Target>,
    /// Where the clients run, the connections split evenly: local, netns:NAME[:rate=100mbit]
    /// (a namespace over a veth link, addresses from 198.18.0.0/15; needs root), or
    /// ssh:[user@]host; e.g. netns:a,netns:b:rate=100mbit [default: local].
    #[arg(long, value_name = "SPEC,SPEC,...", value_parser = parse_hosts)]
    client_hosts: Option<HostList>,
    /// Put the server in a namespace of its own too, so both ends leave loopback (netns
    /// client hosts only).
    #[arg(long)]
    server_netns: bool,
    /// What runs a client on an ssh host, words split on spaces (a stand-in for tests).
    #[arg(long, default_value = "ssh", value_name = "COMMAND")]
    ssh_command: String,
    /// The ringbench binary on ssh hosts.
    #[arg(long, default_value = "ringbench", value_name = "PATH")]
    remote_ringbench: String,
    /// The address the server binds to for ssh hosts: one of this machine's they can reach.
    #[arg(long, value_name = "ADDR")]
    server_bind: Option<std::net::IpAddr>,
}

impl MatrixArgs {
    pub(super) fn into_config(self) -> Result<MatrixConfig, UsageError> {
        let q = self.quick;
        let pick = |v: Vec<u64>, quick: &[u64], full: &[u64]| -> Vec<usize> {
            let v = if !v.is_empty() {
                v
            } else if q {
                quick.to_vec()
            } else {
                full.to_vec()
            };
            v.into_iter().map(|x| x as usize).collect()
        };
        let (mut server_cpus, mut client_cpus) = matrix::default_pinning();
        if !self.server_cpus.is_empty() || !self.client_cpus.is_empty() {
            (server_cpus, client_cpus) = (self.server_cpus, self.client_cpus);
        }
        if self.no_pin {
            (server_cpus, client_cpus) = (Vec::new(), Vec::new());
        }
        let allowed = ringbench_backends::sys::affinity().unwrap_or_default();
        if let Some(c) = server_cpus.iter().chain(&client_cpus).find(|c| !allowed.contains(c)) {
            return Err(UsageError(format!(
                "--server-cpus/--client-cpus: CPU {c} is not one this process may use ({allowed:?})"
            )));
        }
        // --target adds to the default backends; `--backends none` leaves targets alone.
        let none = self.backends.iter().any(Option::is_none);
        if none && self.backends.len() > 1 {
            return Err(UsageError("--backends none cannot be listed with backends".into()));
        }
        if none && self.targets.is_empty() {
            return Err(UsageError("--backends none needs at least one --target to compare".into()));
        }
        let backends = if self.backends.is_empty() {
            vec!["epoll".into(), "uring".into()]
        } else {
            self.backends.into_iter().flatten().map(|v| v.name).collect::<Vec<String>>()
        };
        check_workloads(&self.workloads, &self.rates, self.engine, &self.connections)?;
        if !self.rates.is_empty() && self.duration.is_none() && self.fresh_servers {
            return Err(UsageError("--rates needs --duration: how long each rate is measured".into()));
        }
        let paired_only = [
            (self.slice_s.is_some(), "--slice-s"),
            (self.precision.is_some(), "--precision"),
            (self.min_rounds.is_some(), "--min-rounds"),
            (self.max_rounds.is_some(), "--max-rounds"),
            (self.budget_s.is_some(), "--budget-s"),
            (self.block_rounds.is_some(), "--block-rounds"),
        ];
        if let (true, Some((_, flag))) = (self.fresh_servers, paired_only.iter().find(|(set, _)| *set)) {
            return Err(UsageError(format!("{flag} goes with paired slices, not --fresh-servers")));
        }
        let min_rounds = self.min_rounds.unwrap_or(DEFAULT_MIN_ROUNDS) as usize;
        let max_rounds = self.max_rounds.unwrap_or(DEFAULT_MAX_ROUNDS.max(min_rounds as u64)) as usize;
        if max_rounds < min_rounds {
            return Err(UsageError(format!("--max-rounds {max_rounds} is below --min-rounds {min_rounds}")));
        }

        if self.warmup.is_some() && self.rates.is_empty() {
            return Err(UsageError("--warmup goes with --rates (an open loop)".into()));
        }
        let mut names: Vec<&str> = backends.iter().map(String::as_str).collect();
        if let Some(b) = &self.baseline {
            let known = backends.contains(b) || self.targets.iter().any(|t| &t.name == b);
            if !known {
                return Err(UsageError(format!("--baseline {b}: not one of the servers in this sweep")));
            }
        }
        for t in &self.targets {
            if names.contains(&t.name.as_str()) {
                return Err(UsageError(format!("--target {}: the name is already used in this sweep", t.name)));
            }
            names.push(&t.name);
        }
        if self.aa {
            let base =
                self.baseline.as_deref().or(names.iter().copied().find(|n| *n == "epoll")).or(names.first().copied());
            let twin = base.map(matrix::aa_name).unwrap_or_default();
            if names.contains(&twin.as_str()) {
                return Err(UsageError(format!(
                    "--aa: its second instance would be named {twin}, which a server here already is"
                )));
            }
        }
        Ok(MatrixConfig {
            connections: pick(self.connections, &[50, 200], &[100, 200, 500, 1000, 1500, 2000, 2500, 3000, 4000]),
            backends,
            requests: self.requests.unwrap_or(if q { 20 } else { 100 }),
            sizes: if self.size.is_empty() { vec![64] } else { self.size },
            repeats: self.repeats.unwrap_or(if q { 1 } else { 3 }) as usize,
            // Recorded resolved, so the report names the worker count that ran.
            workers: Some(self.workers.map_or(
                if server_cpus.is_empty() { ringbench_backends::sys::allowed_cpus() } else { server_cpus.len() },
                |w| w as usize,
            )),
            out: self.out.unwrap_or_else(|| PathBuf::from("results").join(crate::env::utc_now().replace(':', "-"))),
            server_cpus,
            client_cpus,
            timeout_s: self.timeout.as_secs_f64(),
            ready_timeout_s: self.ready_timeout.as_secs_f64(),
            server_args: self.server_args,
            client_args: self.client_args,
            min_run_s: self.min_run_s.unwrap_or(if q || self.duration.is_some() { 0.0 } else { 1.0 }),
            rates: self.rates,
            engine: match self.engine {
                EngineArg::Threads => "threads".into(),
                EngineArg::Epoll => "epoll".into(),
            },
            duration_s: self.duration.map(|d| d.as_secs_f64()),
            warmup_s: self.warmup.map(|d| d.as_secs_f64()),
            slo_ms: self.slo_ms,
            baseline: self.baseline,
            probe: !self.no_probe,
            targets: self.targets,
            label: self.label.unwrap_or_else(client::default_label),
            client_hosts: self.client_hosts.map_or_else(|| vec![crate::hosts::HostSpec::Local], |h| h.0),
            server_netns: self.server_netns,
            ssh_command: self.ssh_command.split_whitespace().map(String::from).collect(),
            remote_ringbench: self.remote_ringbench,
            server_bind: self.server_bind,
            workloads: if self.workloads.is_empty() { vec![Workload::Rr] } else { self.workloads },
            window: self.window,
            fresh_servers: self.fresh_servers,
            slice_s: self.slice_s.or(q.then_some(0.1)),
            precision: self.precision.unwrap_or(DEFAULT_PRECISION),
            min_rounds,
            max_rounds,
            budget: self.budget_s.map_or(Budget::Default(DEFAULT_BUDGET_S), |d| Budget::Given(d.as_secs_f64())),
            block_rounds: self.block_rounds.map(|n| n as usize),
            fixed_rounds: if self.fresh_servers { None } else { self.repeats.or(q.then_some(1)).map(|n| n as usize) },
            aa: self.aa,
        })
    }
}

/// Workloads that cannot run as asked are refused before anything starts.
fn check_workloads(
    workloads: &[Workload],
    rates: &[u64],
    engine: EngineArg,
    connections: &[u64],
) -> Result<(), UsageError> {
    for w in workloads {
        if *w == Workload::Stream && !rates.is_empty() {
            return Err(UsageError("--workloads stream keeps its window full: it takes no --rates".into()));
        }
        if let (EngineArg::Threads, Some(why)) = (engine, w.refused_by_threads_engine()) {
            return Err(UsageError(why.replace("--workload ", "--workloads ")));
        }
        if w.idle() > 0 {
            let (_, hard) = ringbench_backends::sys::nofile_limit().unwrap_or((0, u64::MAX));
            let most = connections.iter().copied().max().unwrap_or(4000);
            let needed = w.idle() as u64 + most + SPARE_FDS;
            if needed > hard {
                return Err(UsageError(format!(
                    "--workloads {}: {} idle and {most} active connections need about {needed} open files, past \
                     this machine's limit of {hard} (a server and a client each hold one per connection)",
                    w.name(),
                    w.idle()
                )));
            }
        }
    }
    Ok(())
}
