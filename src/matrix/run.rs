//! One run of the sweep: a fresh server (a ringbench backend or an external command), the
//! client against it, the server's CPU sampled at the client's start and end marks, and
//! — in a syscall run — `perf` counting the server's syscalls. Every file goes to `raw/`.

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::Context;
use ringbench_backends::sys;

use super::{clients, open_loop_args, Contender, MatrixConfig, Planned, ServerKind, Target};
use crate::files;
use crate::hosts::Network;
use crate::results::{ClientSummary, Pass, RunKey, ServerProcRecord};
use crate::server_proc::{process_cpu_s, Readiness, ServerProc, Spec, PASSED_FD};

/// What the sampler measured between the client's marks.
#[derive(Default)]
struct Sampled {
    cpu_s: Option<f64>,
    cpu_proc_stat_s: Option<f64>,
    measured_s: Option<f64>,
}

/// How long a server may take to exit after SIGTERM before it is killed.
pub(super) const STOP_GRACE: Duration = Duration::from_secs(10);
/// The client's descriptor for its phase marks.
const PHASE_FD: i32 = 3;

/// What every run needs.
pub struct Ctx<'a> {
    pub exe: &'a Path,
    pub cfg: &'a MatrixConfig,
    pub raw: &'a Path,
    pub interrupted: &'a AtomicBool,
    /// The namespaces and links of `--client-hosts` (nothing for local clients).
    pub network: &'a Network,
}

impl Ctx<'_> {
    /// Whether the clients run anywhere but here, as one local client process.
    fn multi_host(&self) -> bool {
        self.cfg.client_hosts.len() > 1 || self.cfg.client_hosts.iter().any(|h| *h != crate::hosts::HostSpec::Local)
    }

    /// The address the server listens on: where the hosts can reach it.
    fn bind_ip(&self) -> std::net::IpAddr {
        match (self.network.server_ip(), self.cfg.server_bind) {
            (Some(ip), _) => ip.into(),
            (None, Some(ip)) => ip,
            (None, None) => std::net::Ipv4Addr::LOCALHOST.into(),
        }
    }
}

pub enum Outcome {
    Done(String),
    Interrupted,
}

/// Whether `perf stat` can count `raw_syscalls:sys_enter` here, or why not.
pub fn perf_works() -> Result<(), String> {
    let out = Command::new("perf")
        .args(["stat", "-x", ",", "-e", "raw_syscalls:sys_enter", "--", "true"])
        .output()
        .map_err(|e| format!("perf is not installed ({e})"))?;
    let text = String::from_utf8_lossy(&out.stderr);
    match parse_perf(&text) {
        Some(_) if out.status.success() => Ok(()),
        _ => Err(format!("perf cannot count raw_syscalls:sys_enter here: {}", text.trim())),
    }
}

fn parse_perf(stderr: &str) -> Option<u64> {
    stderr.lines().find(|l| l.contains("raw_syscalls:sys_enter")).and_then(|l| l.split(',').next()?.trim().parse().ok())
}

/// The server's start-up: what to run, and how it reports ready. A ringbench backend
/// given `counters` publishes its syscalls there as it runs.
pub(super) fn server_spec(
    ctx: &Ctx<'_>,
    c: &Contender,
    file: &dyn Fn(&str) -> String,
    counters: Option<RawFd>,
) -> anyhow::Result<(Spec, String)> {
    let cfg = ctx.cfg;
    let (spec, kind) = match &c.server {
        ServerKind::Backend(v) => {
            let workers = cfg.workers.unwrap_or(cfg.server_cpus.len().max(1)).to_string();
            let bind = SocketAddr::new(ctx.bind_ip(), 0).to_string();
            let mut args: Vec<String> =
                ["server", "--backend", &v.name, "--bind", &bind, "--workers", &workers].map(String::from).to_vec();
            args.extend(cfg.server_args.iter().cloned());
            args.extend(["--log".into(), file("server.csv"), "--summary-json".into(), file("server.json")]);
            if counters.is_some() {
                args.extend(["--counters-fd".into(), PASSED_FD.to_string()]);
            }
            // With --server-netns: `ip netns exec NS ringbench server ...`, which execs, so
            // the process measured is still the server.
            let prefix = ctx.network.server_prefix();
            match prefix.split_first() {
                Some((ip, rest)) => {
                    let all = rest.iter().cloned().chain([ctx.exe.display().to_string()]).chain(args).collect();
                    (Spec::new(ip, all, Readiness::ListeningLine), "ringbench")
                }
                None => (Spec::new(ctx.exe, args, Readiness::ListeningLine), "ringbench"),
            }
        }
        ServerKind::Target(Target { command, .. }) => {
            let port = free_port()?;
            let ip = ctx.bind_ip();
            let cmd = command.replace("{port}", &port.to_string()).replace("{host}", &ip.to_string());
            let addr = SocketAddr::new(ip, port);
            // exec: the process measured is the server itself, not a shell around it.
            (Spec::new("/bin/sh", vec!["-c".into(), format!("exec {cmd}")], Readiness::Connect(addr)), "target")
        }
    };
    let mut spec = spec;
    spec.pass_fd = counters.filter(|_| c.is_backend());
    spec.cpus = cfg.server_cpus.clone();
    spec.output_log = Some(file("server.log").into());
    Ok((spec, kind.to_string()))
}

/// A port nothing listens on now (the kernel's pick; free again once we let go of it).
fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0").context("cannot find a free port")?.local_addr()?.port())
}

pub fn one(ctx: &Ctx<'_>, p: &Planned) -> anyhow::Result<Outcome> {
    let cfg = ctx.cfg;
    let stem = p.key.stem();
    let file = |part: &str| ctx.raw.join(format!("{stem}.{part}")).display().to_string();
    let (spec, kind) = server_spec(ctx, &p.contender, &file, None)?;
    let mut record = ServerProcRecord { kind, command: shown(&spec), ..ServerProcRecord::default() };
    let server = match ServerProc::spawn(spec, Duration::from_secs_f64(cfg.ready_timeout_s)) {
        Ok(s) => s,
        Err(e) => {
            record.error = Some(format!("{e:#}"));
            files::write_json(Path::new(&file("server-proc.json")), &record)?;
            return Ok(Outcome::Done(format!("server not started: {e:#}")));
        }
    };
    record.pid = server.pid();
    let perf = (p.key.pass == Pass::Syscalls).then(|| Perf::attach(server.pid()));
    let workload = workload_args(cfg, &p.key, server.addr());
    let (marks, phase_write) = sys::pipe()?;
    let sampler = sample_cpu(marks, server.pid(), cfg.server_cpus.clone());
    let label = &cfg.label;
    let (client_status, client_err, hosts_line) = if ctx.multi_host() {
        let mut marks = std::fs::File::from(phase_write);
        let hosts = clients::Hosts { exe: ctx.exe, cfg, network: ctx.network, interrupted: ctx.interrupted };
        let line = clients::run(&hosts, server.addr(), p.key.connections, &workload, p.key.rate, &mut marks, &file);
        drop(marks);
        (None, String::new(), Some(line?))
    } else {
        let mut args = workload;
        args.extend(["--connections".into(), p.key.connections.to_string(), "--label".into(), label.clone()]);
        args.extend(p.key.rate.map(|r| open_loop_args(cfg, r as f64)).unwrap_or_default());
        args.extend(["--out".into(), file(&format!("client-{label}.csv")), "--json".into()]);
        args.extend([file(&format!("client-{label}.json")), "--phase-fd".into(), PHASE_FD.to_string()]);
        args.extend(["--spectrum".into(), file("spectrum")]);
        let (status, err) = single_client(ctx, p, &args, phase_write, &file(&format!("client-{label}.txt")))?;
        (status, err, None)
    };
    let sampled = sampler.join().unwrap_or_default();
    (record.cpu_s, record.cpu_proc_stat_s, record.measured_s) =
        (sampled.cpu_s, sampled.cpu_proc_stat_s, sampled.measured_s);
    let stopped = server.stop(STOP_GRACE)?;
    record.exit = describe_exit(stopped.status);
    if let Some(perf) = perf {
        match perf.and_then(Perf::count) {
            Ok(n) => record.perf_syscalls = Some(n),
            Err(why) => record.perf_error = Some(why),
        }
    }
    if ctx.interrupted.load(Ordering::Relaxed) {
        remove_run_files(ctx.raw, &stem);
        return Ok(Outcome::Interrupted);
    }
    files::write_json(Path::new(&file("server-proc.json")), &record)?;
    if !client_err.trim().is_empty() {
        files::write_whole(Path::new(&file(&format!("client-{label}.stderr"))), client_err.as_bytes())?;
    }
    let mut notes = Vec::new();
    match client_status {
        None if hosts_line.is_none() => notes.push("client killed after the time limit".to_string()),
        Some(st) if !st.success() => notes.push(format!("client exit {}", st.code().unwrap_or(-1))),
        _ => {}
    }
    if record.kind == "ringbench" && !stopped.status.is_some_and(|s| s.success()) {
        notes.push(format!("server {}", record.exit));
    }
    if let Some(e) = &stopped.log_error {
        notes.push(format!("cannot write '{}': {e}", file("server.log")));
    }
    let summary: Option<ClientSummary> =
        std::fs::read_to_string(file(&format!("client-{label}.json"))).ok().and_then(|s| serde_json::from_str(&s).ok());
    let text = match (hosts_line, summary) {
        (Some(line), _) => line,
        (None, summary) => match summary {
            Some(s) => match (s.achieved_rate_rps, s.rate_status.as_deref()) {
                (Some(sent), Some(status)) => format!(
                    "{sent:.0} req/s sent ({status}), corrected p99 {:.0} µs, {} errors",
                    s.corrected.p99_us, s.errors
                ),
                _ => format!("{:.0} req/s, p99 {:.0} µs, {} errors", s.throughput_rps, s.latency_p99_us, s.errors),
            },
            None => format!("no client summary {}", client_err.lines().next().unwrap_or("")),
        },
    };
    Ok(Outcome::Done(if notes.is_empty() { text } else { format!("{text} ({})", notes.join("; ")) }))
}

/// The workload every client of a run gets, whatever host it runs on: the server, the
/// requests, the engine and the phase length, and `--client-arg`s.
pub(super) fn workload_args(cfg: &MatrixConfig, key: &RunKey, server: SocketAddr) -> Vec<String> {
    let mut args: Vec<String> = vec![
        "client".into(),
        "--server".into(),
        server.to_string(),
        "--requests".into(),
        cfg.requests.to_string(),
        "--size".into(),
        key.size_bytes.to_string(),
        "--timeout".into(),
        cfg.timeout_s.to_string(),
        "--engine".into(),
        cfg.engine.clone(),
        "--workload".into(),
        key.workload.name(),
        "--window".into(),
        cfg.window.to_string(),
    ];
    match (key.rate, cfg.duration_s) {
        (Some(_), Some(_)) => {} // the rate and its window are each client's share
        (None, Some(d)) => args.extend(["--duration".into(), d.to_string()]),
        _ if cfg.min_run_s > 0.0 => args.extend(["--min-run-s".into(), cfg.min_run_s.to_string()]),
        _ => {}
    }
    args.extend(cfg.client_args.iter().cloned());
    args
}

/// The one local client process of a run: started, waited for (killed past the limit),
/// its stderr kept. `None` status: it was killed.
fn single_client(
    ctx: &Ctx<'_>,
    p: &Planned,
    args: &[String],
    phase_write: OwnedFd,
    stdout_file: &str,
) -> anyhow::Result<(Option<ExitStatus>, String)> {
    let cfg = ctx.cfg;
    let mut client = spawn_client(ctx.exe, args, &cfg.client_cpus, &phase_write, stdout_file)?;
    drop(phase_write);
    // The client bounds itself with --timeout per operation; the limit here only guards
    // against a wedged process.
    let limit =
        Duration::from_secs_f64(60.0 + cfg.timeout_s * 3.0 + cfg.requests as f64 * p.key.connections as f64 / 2000.0);
    let status = wait_for(&mut client, limit, ctx.interrupted)?;
    if status.is_none() {
        // SAFETY: kill(2) on our own child; at worst ESRCH if it already exited.
        unsafe { libc::kill(client.id() as i32, libc::SIGKILL) };
        let _ = client.wait();
    }
    crate::guard::ungroup(client.id() as i32);
    let mut err = String::new();
    if let Some(mut e) = client.stderr.take() {
        let _ = std::io::Read::read_to_string(&mut e, &mut err);
    }
    Ok((status, err))
}

/// The command line a record shows.
pub(super) fn shown(spec: &Spec) -> String {
    std::iter::once(spec.program.display().to_string()).chain(spec.args.iter().cloned()).collect::<Vec<_>>().join(" ")
}

pub(super) fn describe_exit(status: Option<ExitStatus>) -> String {
    match status {
        None => format!("killed after {} s", STOP_GRACE.as_secs()),
        Some(st) => match (st.code(), st.signal()) {
            (Some(c), _) => format!("exit {c}"),
            (_, Some(s)) => format!("signal {s}"),
            _ => st.to_string(),
        },
    }
}

/// Starts the client in its own process group, pinned to `cpus`, with the phase pipe's
/// write end as descriptor [`PHASE_FD`] and its stdout in `stdout_file`.
fn spawn_client(
    exe: &Path,
    args: &[String],
    cpus: &[usize],
    phases: &OwnedFd,
    stdout_file: &str,
) -> anyhow::Result<Child> {
    let stdout = std::fs::File::create(stdout_file).with_context(|| format!("cannot create '{stdout_file}'"))?;
    let mut cmd = Command::new(exe);
    cmd.args(args).stdin(Stdio::null()).stdout(stdout).stderr(Stdio::piped()).process_group(0);
    let (cpus, fd) = (cpus.to_vec(), phases.as_raw_fd());
    // SAFETY: the hook makes two syscalls (sched_setaffinity, dup2) on stack data: no
    // allocation or lock, as is required between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            if !cpus.is_empty() {
                sys::set_affinity(&cpus)?;
            }
            sys::dup_to(fd, PHASE_FD)
        });
    }
    crate::guard::dies_with_us(&mut cmd);
    let child = cmd.spawn().context("cannot start the client")?;
    crate::guard::group(child.id() as i32);
    Ok(child)
}

/// Reads the client's phase marks and samples the server's CPU time at each (its CPU
/// clock, and `/proc/PID/stat`): what it used between `start` and `end`, and the wall
/// time between them (nothing without both marks).
///
/// The sampler runs on the server's CPUs, at the highest nice priority it may have: on the
/// client's CPU the start mark arrives just as thousands of client threads pass the gate,
/// and the sampler waited its turn behind them — 0.4 s of a 1.7 s phase once, server CPU
/// that then went uncounted. (The thread-per-connection server has thousands of threads
/// on its own CPUs, hence the priority too.) Two reads of /proc per run cost the server
/// nothing measurable.
fn sample_cpu(marks: OwnedFd, pid: i32, cpus: Vec<usize>) -> JoinHandle<Sampled> {
    std::thread::spawn(move || {
        // Each is only less timely if refused, never wrong.
        if !cpus.is_empty() {
            let _ = sys::set_affinity(&cpus);
        }
        let _ = sys::set_thread_nice(-20);
        let sample = || -> Option<(Instant, u64, f64)> {
            Some((Instant::now(), sys::process_cpu_ns(pid).ok()?, process_cpu_s(pid).ok()?))
        };
        let mut start = None;
        for line in BufReader::new(std::fs::File::from(marks)).lines().map_while(Result::ok) {
            match (line.trim(), start) {
                ("start", _) => start = sample(),
                ("end", Some((t0, ns0, s0))) => {
                    let Some((t1, ns1, s1)) = sample() else { break };
                    return Sampled {
                        cpu_s: Some(ns1.saturating_sub(ns0) as f64 / 1e9),
                        cpu_proc_stat_s: Some(s1 - s0),
                        measured_s: Some(t1.duration_since(t0).as_secs_f64()),
                    };
                }
                _ => {}
            }
        }
        Sampled::default()
    })
}

/// Waits for `child` up to `limit`; `None` if it is still running (or the sweep was
/// interrupted).
fn wait_for(child: &mut Child, limit: Duration, interrupted: &AtomicBool) -> std::io::Result<Option<ExitStatus>> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(st) = child.try_wait()? {
            return Ok(Some(st));
        }
        if Instant::now() >= deadline || interrupted.load(Ordering::Relaxed) {
            return Ok(None);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A run cut short is not a measurement: remove its files.
fn remove_run_files(raw: &Path, stem: &str) {
    if let Ok(entries) = std::fs::read_dir(raw) {
        for e in entries.flatten() {
            if e.file_name().to_string_lossy().starts_with(&format!("{stem}.")) {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
}

/// `perf stat -e raw_syscalls:sys_enter -p PID`, counting until the server exits.
struct Perf {
    child: Child,
}

impl Perf {
    fn attach(pid: i32) -> Result<Perf, String> {
        let child = crate::guard::dies_with_us(
            Command::new("perf")
                .args(["stat", "-x", ",", "-e", "raw_syscalls:sys_enter", "-p", &pid.to_string()])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped()),
        )
        .spawn()
        .map_err(|e| format!("perf: {e}"))?;
        // perf says nothing until it ends; give it time to attach before the load starts.
        std::thread::sleep(Duration::from_millis(500));
        Ok(Perf { child })
    }

    fn count(self) -> Result<u64, String> {
        let out = self.child.wait_with_output().map_err(|e| format!("perf: {e}"))?;
        let text = String::from_utf8_lossy(&out.stderr);
        parse_perf(&text).ok_or_else(|| format!("perf counted nothing: {}", text.trim()))
    }
}
