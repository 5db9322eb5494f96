//! One run's clients on several hosts (`--client-hosts`): the run's connections split
//! evenly over the hosts, each host a `ringbench client --shard-child` — started here, in
//! its namespace, or through ssh — that connects everything and says `ready`. Once every
//! host is ready the measured phase starts for all of them with one `go`, so hosts start
//! within a few milliseconds of each other; each sends its whole report back over its
//! own stdout (no copy, no shared disk), and each host's files go to `raw/` under its
//! label, where the report merges them only if their measured phases overlapped.

use std::io::Write;
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use ringbench_backends::sys;

use super::{open_loop_args, MatrixConfig};
use crate::client::shard::Shard;
use crate::client::{ClientConfig, ClientReport};
use crate::files;
use crate::hosts::{shell_quote, HostSpec, Network};
use crate::results::write_rows_csv;

/// What a run's clients need besides the workload.
pub struct Hosts<'a> {
    pub exe: &'a std::path::Path,
    pub cfg: &'a MatrixConfig,
    pub network: &'a Network,
    /// Set by Ctrl-C: every host is stopped at once.
    pub interrupted: &'a AtomicBool,
}

/// Waits up to `limit` for a line from `shard`, in short slices so that a Ctrl-C is seen
/// within a fraction of a second.
pub fn wait_line(shard: &mut Shard, limit: Duration, interrupted: &AtomicBool) -> Result<(), String> {
    let deadline = Instant::now() + limit;
    loop {
        if interrupted.load(Ordering::Relaxed) {
            return Err("interrupted".into());
        }
        let left = deadline.saturating_duration_since(Instant::now());
        match shard.wait_readable(left.min(Duration::from_millis(200))) {
            Ok(()) => return Ok(()),
            Err(_) if left > Duration::from_millis(200) => {}
            Err(e) => return Err(e),
        }
    }
}

/// The command that runs `args` (a `ringbench client` invocation) on host `i`.
fn host_command(h: &Hosts<'_>, i: usize, host: &HostSpec, args: &[String]) -> Command {
    let cfg = h.cfg;
    let mut cmd = match host {
        HostSpec::Ssh { dest } => {
            let mut words = cfg.ssh_command.iter();
            let mut cmd = Command::new(words.next().map_or("ssh", String::as_str));
            // ssh joins its arguments into one remote shell command: quote each word.
            let remote: Vec<String> = std::iter::once(cfg.remote_ringbench.as_str())
                .chain(args.iter().map(String::as_str))
                .map(shell_quote)
                .collect();
            cmd.args(words).arg(dest).arg(remote.join(" "));
            crate::guard::dies_with_us(&mut cmd);
            return cmd;
        }
        HostSpec::Local | HostSpec::Netns(_) => {
            let prefix = h.network.host_prefix(i);
            let mut cmd = match prefix.split_first() {
                Some((p, rest)) => {
                    let mut c = Command::new(p);
                    c.args(rest).arg(h.exe);
                    c
                }
                None => Command::new(h.exe),
            };
            cmd.args(args);
            cmd
        }
    };
    let cpus = cfg.client_cpus.clone();
    // SAFETY: the hook makes one syscall (sched_setaffinity) on data copied before fork:
    // no allocation or lock, as is required between fork and exec.
    unsafe {
        cmd.pre_exec(move || if cpus.is_empty() { Ok(()) } else { sys::set_affinity(&cpus) });
    }
    crate::guard::dies_with_us(&mut cmd);
    cmd
}

/// One host's client process of a run: its label, its share of the connections, and
/// the shard protocol to it.
pub struct HostShard {
    pub label: String,
    pub share: usize,
    pub shard: Shard,
}

/// Starts `workload` (client arguments without outputs) on every host against `server`,
/// the connections split evenly; each host's stderr goes to `raw/{stem}.client-{label}.log`.
pub fn spawn(
    h: &Hosts<'_>,
    connections: usize,
    workload: &[String],
    rate: Option<u64>,
    file: &dyn Fn(&str) -> String,
) -> anyhow::Result<Vec<HostShard>> {
    let hosts = &h.cfg.client_hosts;
    let n = hosts.len();
    let mut shards = Vec::with_capacity(n);
    let mut first = 0;
    for (i, host) in hosts.iter().enumerate() {
        let share = connections / n + usize::from(i < connections % n);
        // One local host is this machine's client, named as a single client is.
        let label = if n == 1 && *host == HostSpec::Local { h.cfg.label.clone() } else { host.label() };
        let mut args = split_idle(workload, i, n);
        args.extend(["--connections".into(), share.to_string(), "--label".into(), label.clone()]);
        args.extend(["--first-thread".into(), first.to_string(), "--shard-child".into()]);
        if let Some(r) = rate {
            // Each host offers its connections' share of the rate.
            args.extend(open_loop_args(h.cfg, r as f64 * share as f64 / connections.max(1) as f64));
        }
        let log_path = file(&format!("client-{label}.log"));
        let log = std::fs::File::create(&log_path).with_context(|| format!("cannot create '{log_path}'"))?;
        let mut cmd = host_command(h, i, host, &args);
        cmd.stderr(Stdio::from(log)).process_group(0);
        let shard = Shard::spawn(cmd, first, share).with_context(|| format!("cannot start client host {label}"));
        shards.push(HostShard { label, share, shard: shard? });
        first += share;
    }
    Ok(shards)
}

/// Waits until every host has connected everything and says `ready`; a host that does not
/// within a limit (connecting thousands takes seconds) is killed. Returns why each of
/// those did not start.
pub fn await_ready(h: &Hosts<'_>, shards: &mut [HostShard], connections: usize) -> Vec<String> {
    let ready_limit = Duration::from_secs_f64(30.0 + h.cfg.timeout_s * 3.0 + connections as f64 / 500.0);
    let mut failed_to_start = Vec::new();
    let ready_by = Instant::now() + ready_limit;
    for HostShard { label, shard, .. } in shards.iter_mut() {
        let left = ready_by.saturating_duration_since(Instant::now());
        let ready = wait_line(shard, left, h.interrupted).and_then(|()| shard.wait_ready_within(Duration::ZERO));
        if let Err(why) = ready {
            shard.kill();
            failed_to_start.push(format!("{label} {why}"));
        }
    }
    failed_to_start
}

/// Runs `workload` (client arguments without outputs) from every host against `server`,
/// writing `raw/{stem}.client-{label}.json/.csv` for each, and `start`/`end` marks on
/// `marks` around the measured phase. Returns the progress line.
pub fn run(
    h: &Hosts<'_>,
    server: SocketAddr,
    connections: usize,
    workload: &[String],
    rate: Option<u64>,
    marks: &mut std::fs::File,
    file: &dyn Fn(&str) -> String,
) -> anyhow::Result<String> {
    let mut shards = spawn(h, connections, workload, rate, file)?;
    let failed_to_start = await_ready(h, &mut shards, connections);
    let _ = writeln!(marks, "start");
    for s in &mut shards {
        s.shard.go();
    }
    let run_limit =
        Duration::from_secs_f64(60.0 + h.cfg.timeout_s * 3.0 + h.cfg.min_run_s + h.cfg.duration_s.unwrap_or(0.0) * 2.0);
    let mut parts = Vec::with_capacity(shards.len());
    let done_by = Instant::now() + run_limit;
    for HostShard { label, share, shard: mut s } in shards {
        if wait_line(&mut s, done_by.saturating_duration_since(Instant::now()), h.interrupted).is_err() {
            s.kill();
        }
        let part = ClientConfig { label: label.clone(), ..ClientConfig::new(server, share, h.cfg.requests, 0) };
        parts.push((label.clone(), s.finish(&part, &format!("client host {label}"))));
    }
    let _ = writeln!(marks, "end");
    let mut line = Vec::new();
    for (label, report) in &parts {
        write_host(report, &file(&format!("client-{label}.json")), &file(&format!("client-{label}.csv")))?;
        let s = &report.summary;
        line.push(format!("{label} {:.0} req/s, {} errors", s.throughput_rps, s.errors));
    }
    let mut text = line.join(" · ");
    if !failed_to_start.is_empty() {
        text.push_str(&format!(" (not started: {})", failed_to_start.join("; ")));
    }
    Ok(text)
}

fn write_host(report: &ClientReport, json: &str, csv: &str) -> anyhow::Result<()> {
    files::write_json(std::path::Path::new(json), &report.summary)?;
    write_rows_csv(std::path::Path::new(csv), &report.rows)
}

/// The workload arguments for host `i` of `n`: an idle crowd (`idle:K`) is split over the
/// hosts like the connections, everything else is the same for all.
fn split_idle(workload: &[String], i: usize, n: usize) -> Vec<String> {
    let mut args = workload.to_vec();
    if let Some(pos) = args.iter().position(|a| a == "--workload") {
        if let Some(k) = args.get(pos + 1).and_then(|w| w.strip_prefix("idle:")).and_then(|k| k.parse::<usize>().ok()) {
            args[pos + 1] = format!("idle:{}", k / n + usize::from(i < k % n));
        }
    }
    args
}
