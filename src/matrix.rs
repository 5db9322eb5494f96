//! The sweep: every backend at every connection count (and size), repeated, each run
//! against a fresh server process, backends interleaved within each point so machine drift
//! hits them alike. Raw files first; the report is then built from them alone.

use std::io::{IsTerminal, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use indicatif::{ProgressBar, ProgressStyle};
use ringbench_backends::{sys, Variant};
use serde::Serialize;

use crate::report;
use crate::results::{ClientSummary, RunKey};
use crate::server_proc::{Readiness, ServerProc, Spec};

/// What a sweep runs.
#[derive(Clone, Debug, Serialize)]
pub struct MatrixConfig {
    pub connections: Vec<usize>,
    pub backends: Vec<String>,
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
    /// Extra `ringbench server` arguments for every run.
    pub server_args: Vec<String>,
    pub label: String,
}

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

struct Planned {
    key: RunKey,
    variant: Variant,
}

/// Runs the sweep and builds the report. Exit status: 0 when every point succeeded, 1 when
/// a point failed (recorded as Fail), 130 when interrupted (what was measured is kept).
pub fn run(cfg: &MatrixConfig) -> anyhow::Result<ExitCode> {
    let exe = std::env::current_exe().context("cannot find the ringbench executable")?;
    let variants: Vec<Variant> =
        cfg.backends.iter().map(|b| Variant::parse(b).map_err(anyhow::Error::msg)).collect::<anyhow::Result<_>>()?;
    let raw = cfg.out.join("raw");
    std::fs::create_dir_all(&raw).with_context(|| format!("cannot create '{}'", raw.display()))?;
    let settings = serde_json::to_value(cfg)?;
    let env = crate::env::collect(describe_pinning(cfg), settings);
    crate::files::write_json(&cfg.out.join("env.json"), &env)?;
    if variants.iter().any(|v| v.backend.name == "uring") {
        if let Some(why) = env.io_uring_features.get("unavailable") {
            bail!("{why}");
        }
    }

    let mut plan = Vec::new();
    for &size in &cfg.sizes {
        for &conns in &cfg.connections {
            for repeat in 1..=cfg.repeats {
                for v in &variants {
                    let key = RunKey { backend: v.name.clone(), connections: conns, size_bytes: size, repeat };
                    plan.push(Planned { key, variant: v.clone() });
                }
            }
        }
    }

    let interrupted = Arc::new(AtomicBool::new(false));
    for sig in [libc::SIGINT, libc::SIGTERM] {
        signal_hook::flag::register(sig, Arc::clone(&interrupted)).context("cannot install signal handlers")?;
    }
    let tty = std::io::stderr().is_terminal();
    let bar = if tty { ProgressBar::new(plan.len() as u64) } else { ProgressBar::hidden() };
    bar.set_style(
        ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {pos}/{len} runs, ETA {eta} · {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    eprintln!(
        "ringbench matrix: {} runs ({} backends × {} connection counts × {} sizes × {} repeats) into {}; {}",
        plan.len(),
        variants.len(),
        cfg.connections.len(),
        cfg.sizes.len(),
        cfg.repeats,
        cfg.out.display(),
        describe_pinning(cfg)
    );
    let t0 = Instant::now();
    let mut stopped_early = false;
    for (i, p) in plan.iter().enumerate() {
        if interrupted.load(Ordering::Relaxed) {
            stopped_early = true;
            break;
        }
        bar.set_message(format!("{} at {} connections, repeat {}", p.key.backend, p.key.connections, p.key.repeat));
        let outcome = run_one(&exe, cfg, p, &raw, &interrupted);
        let line = match &outcome {
            Ok(RunOutcome::Done(s)) => s.clone(),
            Ok(RunOutcome::Interrupted) => {
                stopped_early = true;
                "interrupted".into()
            }
            Err(e) => format!("failed: {e:#}"),
        };
        if tty {
            bar.println(format!("  {} c={} r={}: {line}", p.key.backend, p.key.connections, p.key.repeat));
        } else {
            eprintln!(
                "[{}/{}] {} c={} r={}: {line}",
                i + 1,
                plan.len(),
                p.key.backend,
                p.key.connections,
                p.key.repeat
            );
        }
        bar.inc(1);
        if stopped_early {
            break;
        }
    }
    bar.finish_and_clear();
    eprintln!("ringbench matrix: runs took {:.0} s; building the report", t0.elapsed().as_secs_f64());
    let built = report::build(&cfg.out, &cfg.backends)?;
    if let Some(why) = &built.charts_failed {
        eprintln!("ringbench matrix: charts not drawn: {why}");
    }
    let charts_failed = built.charts_failed.is_some();
    let points = built.points;
    let failed = points.iter().filter(|p| !p.ok).count();
    let _ = writeln!(std::io::stdout(), "{}", cfg.out.join("summary.md").display());
    eprintln!(
        "ringbench matrix: {} points, {} failed; overall.csv, summary.md and plots/ in {}",
        points.len(),
        failed,
        cfg.out.display()
    );
    Ok(if stopped_early {
        eprintln!("ringbench matrix: interrupted; the report covers the runs that finished");
        ExitCode::from(130)
    } else if failed > 0 || charts_failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

enum RunOutcome {
    Done(String),
    Interrupted,
}

/// Starts `cmd` in its own process group (so a terminal's Ctrl-C reaches only the matrix,
/// which then stops its children in order) pinned to `cpus`.
fn spawn_pinned(cmd: &mut Command, cpus: &[usize]) -> std::io::Result<Child> {
    let cpus = cpus.to_vec();
    cmd.process_group(0);
    if !cpus.is_empty() {
        // SAFETY: the hook makes one sched_setaffinity syscall on a stack buffer: no
        // allocation or lock, as is required between fork and exec.
        unsafe {
            cmd.pre_exec(move || sys::set_affinity(&cpus));
        }
    }
    cmd.spawn()
}

/// Waits for `child` up to `limit`; `None` if it is still running (or the sweep was
/// interrupted).
fn wait_for(
    child: &mut Child,
    limit: Duration,
    interrupted: &AtomicBool,
) -> std::io::Result<Option<std::process::ExitStatus>> {
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

/// How long a server may take to exit after SIGTERM before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(10);

fn run_one(
    exe: &Path,
    cfg: &MatrixConfig,
    p: &Planned,
    raw: &Path,
    interrupted: &AtomicBool,
) -> anyhow::Result<RunOutcome> {
    let stem = p.key.stem();
    let file = |part: &str| raw.join(format!("{stem}.{part}"));
    let workers = cfg.workers.unwrap_or(cfg.server_cpus.len().max(1));
    let mut args: Vec<String> =
        ["server", "--backend", &p.variant.name, "--bind", "127.0.0.1:0", "--workers", &workers.to_string()]
            .map(String::from)
            .to_vec();
    args.extend(cfg.server_args.iter().cloned());
    args.extend(["--log".into(), file("server.csv").display().to_string()]);
    args.extend(["--summary-json".into(), file("server.json").display().to_string()]);
    let mut spec = Spec::new(exe, args, Readiness::ListeningLine);
    spec.cpus = cfg.server_cpus.clone();
    spec.output_log = Some(file("server.log"));
    let server = ServerProc::spawn(spec, Duration::from_secs(10))
        .with_context(|| format!("server not started (see {})", file("server.log").display()))?;

    let label = &cfg.label;
    let mut client = Command::new(exe);
    client
        .args(["client", "--server", &server.addr().to_string(), "--connections"])
        .arg(p.key.connections.to_string())
        .arg("--requests")
        .arg(cfg.requests.to_string())
        .arg("--size")
        .arg(p.key.size_bytes.to_string())
        .arg("--timeout")
        .arg(cfg.timeout_s.to_string())
        .arg("--label")
        .arg(label)
        .arg("--out")
        .arg(file(&format!("client-{label}.csv")))
        .arg("--json")
        .arg(file(&format!("client-{label}.json")))
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(file(&format!("client-{label}.txt")))?)
        .stderr(Stdio::piped());
    let mut client = spawn_pinned(&mut client, &cfg.client_cpus).context("cannot start the client")?;
    // The client bounds itself with --timeout per operation; the limit here only guards
    // against a wedged process.
    let limit =
        Duration::from_secs_f64(60.0 + cfg.timeout_s * 3.0 + cfg.requests as f64 * p.key.connections as f64 / 2000.0);
    let client_status = wait_for(&mut client, limit, interrupted)?;
    if client_status.is_none() {
        // SAFETY: kill(2) on our own child's pid; at worst ESRCH if it already exited.
        unsafe { libc::kill(client.id() as i32, libc::SIGKILL) };
        let _ = client.wait();
    }
    let mut client_err = String::new();
    if let Some(mut e) = client.stderr.take() {
        let _ = std::io::Read::read_to_string(&mut e, &mut client_err);
    }
    let stopped = server.stop(STOP_GRACE)?;

    if interrupted.load(Ordering::Relaxed) {
        // A run cut short is not a measurement: remove its files.
        if let Ok(entries) = std::fs::read_dir(raw) {
            for e in entries.flatten() {
                if e.file_name().to_string_lossy().starts_with(&format!("{stem}.")) {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
        return Ok(RunOutcome::Interrupted);
    }
    if !client_err.trim().is_empty() {
        crate::files::write_whole(&file(&format!("client-{label}.stderr")), client_err.as_bytes())?;
    }
    let mut notes = Vec::new();
    match client_status {
        None => notes.push("client killed after the time limit".to_string()),
        Some(st) if !st.success() => notes.push(format!("client exit {}", st.code().unwrap_or(-1))),
        _ => {}
    }
    if let Some(e) = &stopped.log_error {
        notes.push(format!("cannot write '{}': {e}", file("server.log").display()));
    }
    match stopped.status {
        None => notes.push(format!("server did not stop within {} s of SIGTERM (killed)", STOP_GRACE.as_secs())),
        Some(st) if !st.success() => notes.push(format!("server exit {}", st.code().unwrap_or(-1))),
        _ => {}
    }
    let summary: Option<ClientSummary> =
        std::fs::read_to_string(file(&format!("client-{label}.json"))).ok().and_then(|s| serde_json::from_str(&s).ok());
    let first = client_err.lines().next().unwrap_or("").to_string();
    let text = match summary {
        Some(s) => format!("{:.0} req/s, p99 {:.0} µs, {} errors", s.throughput_rps, s.latency_p99_us, s.errors),
        None => format!("no client summary {first}"),
    };
    Ok(RunOutcome::Done(if notes.is_empty() { text } else { format!("{text} ({})", notes.join("; ")) }))
}
