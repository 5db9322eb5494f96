//! The sweep: every server under test — ringbench's backends and any external command —
//! at every connection count (and size, and offered rate), side by side. Raw files first;
//! the report is then built from them alone.
//!
//! Two ways to run a point:
//! - **paired slices** (the default, `paired`): every server starts once per block and stays up,
//!   each with its own client connected; short slices of load alternate between them in
//!   rounds until the comparison is as precise as asked;
//! - **fresh servers** (`--fresh-servers`, the seed's way, `run`): a fresh server process
//!   and client per run, servers interleaved within each repeat.

mod clients;
mod paired;
mod progress;
mod run;

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context};
use ringbench_backends::{sys, Variant};
use serde::Serialize;

use crate::hosts::{HostSpec, Network};
use crate::report;
use crate::results::{Pass, Place, RunKey};

/// An external server in the sweep: `NAME='COMMAND ... {port}'`.
#[derive(Clone, Debug, Serialize)]
pub struct Target {
    pub name: String,
    /// Run with `sh -c 'exec COMMAND'` after `{port}` is replaced by a free port.
    pub command: String,
}

/// What a sweep runs.
#[derive(Clone, Debug, Serialize)]
pub struct MatrixConfig {
    pub connections: Vec<usize>,
    /// ringbench backends and variants, by name.
    pub backends: Vec<String>,
    /// External servers, after the backends in every point.
    pub targets: Vec<Target>,
    pub requests: u64,
    pub sizes: Vec<usize>,
    pub repeats: usize,
    /// Server workers; `None`: one per server CPU.
    pub workers: Option<usize>,
    pub out: PathBuf,
    /// CPUs for the server and for the client; empty lists mean "not pinned".
    pub server_cpus: Vec<usize>,
    pub client_cpus: Vec<usize>,
    pub timeout_s: f64,
    /// How long a server may take to be ready (to say it listens, or to accept).
    pub ready_timeout_s: f64,
    /// Extra `ringbench server` arguments for every run of a backend.
    pub server_args: Vec<String>,
    /// Extra `ringbench client` arguments for every run.
    pub client_args: Vec<String>,
    /// Each run repeats its workload until it lasts this long (0: one round).
    pub min_run_s: f64,
    /// The server every other is compared with (`None`: epoll, else the first).
    pub baseline: Option<String>,
    /// Open-loop rates to sweep at each connection count (empty: closed loop).
    pub rates: Vec<u64>,
    /// Workloads to sweep (`rr`, the seed's, by default).
    pub workloads: Vec<crate::workload::Workload>,
    /// `stream`: bytes in flight on every connection.
    pub window: u64,
    /// The client engine (`threads` or `epoll`).
    pub engine: String,
    /// Each run's measured window (open loop), or how long a closed loop runs.
    pub duration_s: Option<f64>,
    /// Open loop: the warm-up before each measured window.
    pub warmup_s: Option<f64>,
    /// The latency objective: summary.md names the highest rate each server held with a
    /// corrected p99 at or under it.
    pub slo_ms: Option<f64>,
    /// Run `ringbench probe` first and keep its figures in env.json.
    pub probe: bool,
    pub label: String,
    /// Where the clients run (`--client-hosts`); one local host by default.
    pub client_hosts: Vec<HostSpec>,
    /// The server in a namespace of its own, so both ends leave loopback.
    pub server_netns: bool,
    /// What runs a client on an ssh host (`ssh`, or a stand-in), and the binary there.
    pub ssh_command: Vec<String>,
    pub remote_ringbench: String,
    /// The address the server binds to for ssh hosts (the address they reach it at).
    pub server_bind: Option<std::net::IpAddr>,
    /// A fresh server process per run, as the seed did, instead of paired slices.
    pub fresh_servers: bool,
    /// Paired slices: each slice's measured length, in seconds (`None`: by connections,
    /// see [`MatrixConfig::slice_for`]).
    pub slice_s: Option<f64>,
    /// Paired slices: rounds are added until the headline intervals (CPU per request and
    /// req/s against the baseline) are at most ± this fraction wide.
    pub precision: f64,
    /// Paired slices: the fewest and the most rounds at a point.
    pub min_rounds: usize,
    pub max_rounds: usize,
    /// Paired slices: how long a point may take, start-ups included.
    pub budget: Budget,
    /// Paired slices: rounds per block (`None`: the default, shortened to fit the budget).
    pub block_rounds: Option<usize>,
    /// Paired slices: exactly this many rounds at every point (`--repeats`), no
    /// precision target.
    pub fixed_rounds: Option<usize>,
    /// A/A calibration: a second instance of the baseline as a server of its own.
    pub aa: bool,
}

/// A point's time budget in paired slices (in env.json: `{"given": s}` or `{"default": s}`).
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Budget {
    /// `--budget-s`: at most this many seconds, however few blocks fit.
    Given(f64),
    /// The default: this many seconds, or where three rotations of the shortest blocks are
    /// expected to take longer (the most connections), that long and a quarter more — an
    /// interval over blocks needs two blocks of each start order, and is wide with only
    /// two.
    Default(f64),
}

impl Budget {
    /// The seconds asked for, before any point's floor.
    pub fn asked_s(self) -> f64 {
        match self {
            Budget::Given(s) | Budget::Default(s) => s,
        }
    }
}

impl MatrixConfig {
    /// Every server under test, in the order points show them: the baseline first, then
    /// its A/A twin (`--aa`), then the rest as given.
    pub fn contenders(&self) -> anyhow::Result<Vec<Contender>> {
        let mut all: Vec<Contender> = self
            .backends
            .iter()
            .map(|b| {
                Variant::parse(b)
                    .map(|v| Contender { name: v.name.clone(), server: ServerKind::Backend(v) })
                    .map_err(anyhow::Error::msg)
            })
            .collect::<anyhow::Result<_>>()?;
        all.extend(
            self.targets.iter().map(|t| Contender { name: t.name.clone(), server: ServerKind::Target(t.clone()) }),
        );
        let base = self.baseline.clone().or_else(|| all.iter().find(|c| c.name == "epoll").map(|c| c.name.clone()));
        if let Some(i) = base.and_then(|b| all.iter().position(|c| c.name == b)) {
            let b = all.remove(i);
            all.insert(0, b);
        }
        if self.aa {
            if let Some(b) = all.first().cloned() {
                all.insert(1, Contender { name: aa_name(&b.name), server: b.server });
            }
        }
        Ok(all)
    }

    /// A slice's length at `connections`: `--slice-s`, else 0.25 ms per connection
    /// between 50 ms and 1 s. A slice must be many round trips long (a round trip takes
    /// connections ÷ req/s: about 1 ms at 100 connections, 80 ms at 4000 with the seed's
    /// client) so that starting thousands of client threads and finishing their last
    /// requests are a small part of it; and short, so that the machine rarely changes speed
    /// between the two slices of a pair and many pairs fit in a point's budget.
    /// `--duration` sets it too: a closed-loop run of that length, or with `--rates` an
    /// open-loop window of it, is what a slice is.
    pub fn slice_for(&self, connections: usize) -> f64 {
        self.slice_s.or(self.duration_s).unwrap_or_else(|| (connections as f64 * 0.000_25).clamp(0.05, 1.0))
    }

    /// Every server's name, in the order points show them, the baseline first.
    pub fn order(&self) -> Vec<String> {
        self.contenders().map(|c| c.into_iter().map(|c| c.name).collect()).unwrap_or_default()
    }
}

/// A server under test: what runs, under the name reports give it (a second instance of
/// the baseline, `--aa`, runs the same server under another name).
#[derive(Clone, Debug)]
pub struct Contender {
    pub name: String,
    pub server: ServerKind,
}

/// What a contender runs.
#[derive(Clone, Debug)]
pub enum ServerKind {
    Backend(Variant),
    Target(Target),
}

impl Contender {
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A ringbench backend (which keeps a log, a summary and live counters).
    pub fn is_backend(&self) -> bool {
        matches!(self.server, ServerKind::Backend(_))
    }
}

pub use crate::results::aa_name;

/// The default CPU split: the server gets the first half of the CPUs we may use (at least
/// one), the client the rest. With one CPU nothing is pinned.
pub fn default_pinning() -> (Vec<usize>, Vec<usize>) {
    let cpus = sys::affinity().unwrap_or_default();
    if cpus.len() < 2 {
        return (Vec::new(), Vec::new());
    }
    let half = cpus.len() / 2;
    (cpus[..half].to_vec(), cpus[half..].to_vec())
}

fn describe_pinning(cfg: &MatrixConfig) -> String {
    if cfg.server_cpus.is_empty() && cfg.client_cpus.is_empty() {
        "not pinned".into()
    } else {
        let list = |v: &[usize]| {
            if v.is_empty() {
                "any".to_string()
            } else {
                v.iter().map(|c| c.to_string()).collect::<Vec<_>>().join(",")
            }
        };
        format!("server on CPU {} · client on CPU {}", list(&cfg.server_cpus), list(&cfg.client_cpus))
    }
}

/// An open loop's arguments for a client offering `rate_rps`: the rate, the measured
/// window and the warm-up.
fn open_loop_args(cfg: &MatrixConfig, rate_rps: f64) -> Vec<String> {
    // Fresh servers: the window is --duration; paired slices: each slice is a window.
    let d = match (cfg.fresh_servers, cfg.duration_s) {
        (true, Some(d)) => d,
        (true, None) => return Vec::new(),
        // Each `slice` command says its length; this only makes the arguments an open loop.
        (false, _) => cfg.slice_s.unwrap_or(1.0),
    };
    let mut args = vec!["--rate".into(), rate_rps.to_string(), "--duration".into(), d.to_string()];
    if let Some(w) = cfg.warmup_s.filter(|w| *w > 0.0) {
        args.extend(["--warmup".into(), w.to_string()]);
    }
    args
}

/// One run of the plan.
pub struct Planned {
    pub key: RunKey,
    pub contender: Contender,
}

/// Every place of the sweep, in sweep order: sizes, then workloads, then connections,
/// then rates.
pub fn places(cfg: &MatrixConfig) -> Vec<Place> {
    let rates: Vec<Option<u64>> =
        if cfg.rates.is_empty() { vec![None] } else { cfg.rates.iter().map(|&r| Some(r)).collect() };
    let mut out = Vec::new();
    for &size_bytes in &cfg.sizes {
        for &workload in &cfg.workloads {
            for &connections in &cfg.connections {
                for &rate in &rates {
                    out.push(Place { workload, connections, size_bytes, rate });
                }
            }
        }
    }
    out
}

/// Every run of fresh servers, in the order they run: per place, the repeats, each with
/// every server in turn; then, where perf can count syscalls, one syscall run per
/// external target.
fn plan(cfg: &MatrixConfig, contenders: &[Contender], perf: bool) -> Vec<Planned> {
    let mut plan = Vec::new();
    for place in places(cfg) {
        // Interleaved: each repeat runs every contender before the next repeat starts.
        for repeat in 1..=cfg.repeats {
            for c in contenders {
                plan.push(Planned { key: place.key(c.name(), repeat, Pass::Measure), contender: c.clone() });
            }
        }
        for c in contenders.iter().filter(|c| perf && !c.is_backend()) {
            plan.push(Planned { key: place.key(c.name(), 1, Pass::Syscalls), contender: c.clone() });
        }
    }
    plan
}

/// Runs the sweep and builds the report. Exit status: 0 when every point succeeded, 1 when
/// a point failed (recorded as Fail) or an output could not be written, 130 when
/// interrupted (what was measured is kept).
pub fn run(cfg: &MatrixConfig) -> anyhow::Result<ExitCode> {
    let exe = std::env::current_exe().context("cannot find the ringbench executable")?;
    check_hosts(cfg)?;
    // Every process the sweep starts (and theirs) carries its pid: what it left behind is
    // then findable, by a user and by the tests. Set before any thread exists.
    std::env::set_var("RINGBENCH_SWEEP", std::process::id().to_string());
    // From here on nothing started outlives the sweep; told `done` when this returns.
    let _guard = crate::guard::Guard::start();
    let contenders = cfg.contenders()?;
    let raw = cfg.out.join("raw");
    std::fs::create_dir_all(&raw).with_context(|| format!("cannot create '{}'", raw.display()))?;
    let perf = if cfg.targets.is_empty() { Err("no external targets".to_string()) } else { run::perf_works() };
    let mut settings = serde_json::to_value(cfg)?;
    // The servers as the report shows them, the A/A twin included.
    settings["order"] = serde_json::Value::from(cfg.order());
    settings["target_syscalls"] = serde_json::Value::from(match &perf {
        Ok(()) => "perf stat -e raw_syscalls:sys_enter, in a run of its own".to_string(),
        Err(why) => format!("n/a ({why})"),
    });
    let interrupted = Arc::new(AtomicBool::new(false));
    for sig in [libc::SIGINT, libc::SIGTERM] {
        signal_hook::flag::register(sig, Arc::clone(&interrupted)).context("cannot install signal handlers")?;
    }
    // After the handlers (a Ctrl-C from here on ends the runs; the network is removed when
    // it goes out of scope, on every way out of this function) and before the probe, so a
    // host that cannot be made fails the sweep at once.
    let network = Network::build(&cfg.client_hosts, cfg.server_netns)?;
    let probe = if cfg.probe {
        eprintln!("ringbench matrix: probing this machine's costs (a few seconds)");
        match crate::probe::run(cfg.server_cpus.first().copied(), cfg.client_cpus.first().copied()) {
            Ok((p, skipped)) => {
                skipped.iter().for_each(|s| eprintln!("ringbench matrix: {s}"));
                Some(p)
            }
            Err(e) => {
                eprintln!("ringbench matrix: probe failed, env.json has no probe figures: {e:#}");
                None
            }
        }
    } else {
        None
    };
    let env = crate::env::collect(describe_pinning(cfg), settings, probe);
    crate::files::write_json(&cfg.out.join("env.json"), &env)?;
    let uring = contenders.iter().any(|c| matches!(&c.server, ServerKind::Backend(v) if v.backend.name == "uring"));
    if let (true, Some(why)) = (uring, env.io_uring_features.get("unavailable")) {
        bail!("{why}");
    }
    if let (false, Err(why)) = (cfg.targets.is_empty(), &perf) {
        eprintln!("ringbench matrix: targets' syscalls will be n/a: {why}");
    }
    let t0 = Instant::now();
    let ctx = run::Ctx { exe: &exe, cfg, raw: &raw, interrupted: &interrupted, network: &network };
    let stopped_early = if cfg.fresh_servers {
        let plan = plan(cfg, &contenders, perf.is_ok());
        eprintln!(
            "ringbench matrix: {} runs ({} servers × {} connection counts × {} rates × {} sizes × {} repeats), a fresh \
             server each, into {}; {}",
            plan.len(),
            contenders.len(),
            cfg.connections.len(),
            cfg.rates.len().max(1),
            cfg.sizes.len(),
            cfg.repeats,
            cfg.out.display(),
            describe_pinning(cfg)
        );
        run_plan(&ctx, &plan)
    } else {
        paired::run_all(&ctx, &contenders, perf.is_ok(), &describe_pinning(cfg))
    };
    eprintln!("ringbench matrix: runs took {:.0} s; building the report", t0.elapsed().as_secs_f64());
    let order = cfg.order();
    let opts = report::Options { baseline: order.first().cloned(), order, slo_ms: cfg.slo_ms };
    let built = match report::build(&cfg.out, &opts) {
        Ok(b) => b,
        Err(e) if stopped_early => {
            eprintln!("ringbench matrix: interrupted before a run finished; no report ({e:#})");
            return Ok(ExitCode::from(130));
        }
        Err(e) => return Err(e),
    };
    if let Some(why) = &built.charts_failed {
        eprintln!("ringbench matrix: charts not drawn: {why}");
    }
    let failed = built.points.iter().filter(|p| !p.ok).count();
    let _ = writeln!(std::io::stdout(), "{}", cfg.out.join("summary.md").display());
    eprintln!(
        "ringbench matrix: {} points, {failed} failed; overall.csv, summary.md and plots/ in {}",
        built.points.len(),
        cfg.out.display()
    );
    Ok(if stopped_early {
        eprintln!("ringbench matrix: interrupted; the report covers the runs that finished");
        ExitCode::from(130)
    } else if failed > 0 || built.charts_failed.is_some() {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

/// Host combinations that cannot work, refused before anything starts.
fn check_hosts(cfg: &MatrixConfig) -> anyhow::Result<()> {
    let ssh = cfg.client_hosts.iter().any(|h| matches!(h, HostSpec::Ssh { .. }));
    if ssh && cfg.server_bind.is_none() {
        bail!("ssh client hosts need --server-bind ADDR: an address of this machine they can reach the server at");
    }
    if cfg.server_netns && !cfg.targets.is_empty() {
        bail!("--server-netns runs ringbench backends only: an external target's readiness is checked by connecting from this namespace");
    }
    Ok(())
}

/// Runs the plan, a line per run (a bar above them on a terminal); returns whether it was
/// interrupted.
fn run_plan(ctx: &run::Ctx<'_>, plan: &[Planned]) -> bool {
    let mut progress = progress::Progress::new(plan.len(), "runs");
    for p in plan {
        if ctx.interrupted.load(Ordering::Relaxed) {
            return true;
        }
        let k = &p.key;
        progress.message(format!("{} at {} connections, {}", k.backend, k.connections, k.stem()));
        let (line, stop) = match run::one(ctx, p) {
            Ok(run::Outcome::Done(s)) => (s, false),
            Ok(run::Outcome::Interrupted) => ("interrupted".to_string(), true),
            Err(e) => (format!("failed: {e:#}"), false),
        };
        progress.done_one(&format!("{}: {line}", k.stem()));
        if stop {
            return true;
        }
    }
    false
}
