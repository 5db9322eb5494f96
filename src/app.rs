//! The binary: parse the command line, run the task, print one clear line on failure.
//!
//! Exit status: 0 success; 1 a failure of the environment or of the run (port in use,
//! unwritable file, unreachable server, lost bytes); 2 bad arguments; 130 interrupted.

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;

use crate::cli::{self, ClientOptions, ServerOptions, Task, UsageError};
use crate::client::{self, shard};
use crate::server_proc::LISTENING_ON;
use crate::{files, matrix, report};

/// Entry point of the binary.
pub fn main() -> ExitCode {
    let result = match cli::parse() {
        Task::Server(o) => run_server(o),
        Task::Client(o) => run_client(o),
        Task::Matrix(cfg) => matrix::run(&cfg),
        Task::Report { dir, opts } => run_report(&dir, &opts),
        Task::Probe { server_cpu, client_cpu, json } => run_probe(server_cpu, client_cpu, json),
        Task::Guard { sweep } => {
            crate::guard::serve(sweep, std::io::stdin().lock());
            Ok(ExitCode::SUCCESS)
        }
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("ringbench: {e:#}");
            ExitCode::from(e.downcast_ref::<UsageError>().map_or(1, |_| 2))
        }
    }
}

fn run_server(o: ServerOptions) -> anyhow::Result<ExitCode> {
    let ServerOptions { variant, mut cfg, summary_json, counters_fd } = o;
    if let Some(fd) = counters_fd {
        // SAFETY: the parent gave us this descriptor open (checked while parsing) for us
        // to map; nothing else in this process uses it, so we may own it.
        let fd = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
        let live = ringbench_backends::sys::LiveCounters::open(std::os::fd::AsFd::as_fd(&fd))
            .with_context(|| format!("--counters-fd {}", std::os::fd::AsRawFd::as_raw_fd(&fd)))?;
        cfg.live = Some(std::sync::Arc::new(live));
    }
    if let Some(p) = &summary_json {
        files::check_writable(p)?;
    }
    cfg.notices = Some(ringbench_backends::NoticeSink(std::sync::Arc::new(|n| eprintln!("ringbench: {n}"))));
    // Handlers go in before the server exists, so a signal during start-up is not lost.
    stop_signals::install().context("cannot install signal handlers")?;
    let handle = ringbench_backends::start(variant.backend, cfg)?;
    let shared = handle.shared();
    stop_signals::serve(std::sync::Arc::clone(&shared));
    eprintln!(
        "ringbench: {} server {LISTENING_ON}{} with {} workers (SIGINT/SIGTERM stops it)",
        variant.name,
        handle.local_addr(),
        shared.workers
    );
    let summary = handle.wait()?;
    // One write, so the summary is not interleaved with anything else.
    let text = format!("{summary}\n");
    let _ = std::io::stderr().write_all(text.as_bytes());
    if let Some(p) = &summary_json {
        files::write_json(p, &summary)?;
    }
    // A second signal means the operator interrupted: 130, even if the orderly stop had
    // finished by the time it arrived.
    Ok(if summary.aborted || shared.stop.is_abort() {
        ExitCode::from(130)
    } else if summary.complete() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// SIGINT and SIGTERM for the server: the first stops it in order; the second aborts
/// (skip the orderly close, still write every row and the summary), and if that has not
/// ended the process within [`ABORT_DEADLINE`], it exits anyway.
///
/// Signals are counted in the handler itself: an iterator thread would see two signals
/// that arrive before it wakes as one, and an impatient double Ctrl-C would be lost.
mod stop_signals {
    use std::io;
    use std::os::fd::{AsFd, AsRawFd, OwnedFd};
    use std::sync::atomic::{AtomicI32, AtomicUsize, Ordering};
    use std::sync::{Arc, OnceLock};

    use ringbench_backends::{sys, Shared};

    use super::ABORT_DEADLINE;

    static COUNT: AtomicUsize = AtomicUsize::new(0);
    static SERVER: OnceLock<Arc<Shared>> = OnceLock::new();
    /// The eventfd that wakes the deadline thread on an abort.
    static DEADLINE_FD: AtomicI32 = AtomicI32::new(-1);
    static DEADLINE: OnceLock<OwnedFd> = OnceLock::new();

    /// What the `n`th signal does to the server.
    fn act(shared: &Shared, n: usize) {
        if n == 1 {
            shared.stop.trigger();
        } else if n > 1 {
            shared.stop.abort();
            let fd = DEADLINE_FD.load(Ordering::SeqCst);
            if fd >= 0 {
                // SAFETY: write(2) of 8 bytes from a stack array to an eventfd we keep
                // open for the life of the process; async-signal-safe.
                unsafe { libc::write(fd, 1u64.to_ne_bytes().as_ptr().cast(), 8) };
            }
        }
    }

    fn on_signal() {
        let n = COUNT.fetch_add(1, Ordering::SeqCst) + 1;
        if let Some(sh) = SERVER.get() {
            act(sh, n);
        }
    }

    pub fn install() -> io::Result<()> {
        if DEADLINE.get().is_none() {
            let _ = DEADLINE.set(sys::eventfd()?);
        }
        if let Some(fd) = DEADLINE.get() {
            DEADLINE_FD.store(fd.as_raw_fd(), Ordering::SeqCst);
        }
        for sig in [libc::SIGINT, libc::SIGTERM] {
            // SAFETY: the handler only does async-signal-safe things: atomic operations,
            // a lock-free OnceLock read, and write(2) to eventfds (the stop signal's and
            // the deadline's).
            unsafe { signal_hook::low_level::register(sig, on_signal) }?;
        }
        Ok(())
    }

    /// From now on signals act on `shared`; signals that came before act now.
    pub fn serve(shared: Arc<Shared>) {
        let _ = SERVER.set(Arc::clone(&shared));
        act(&shared, COUNT.load(Ordering::SeqCst));
        let spawned = std::thread::Builder::new().name("ringbench-deadline".into()).spawn(|| {
            let Some(fd) = DEADLINE.get() else { return };
            if sys::poll_one(fd.as_fd(), libc::POLLIN, -1).is_ok() {
                std::thread::sleep(ABORT_DEADLINE);
                eprintln!("ringbench: still stopping {} s after the second signal; exiting", ABORT_DEADLINE.as_secs());
                std::process::exit(130);
            }
        });
        if let Err(e) = spawned {
            eprintln!("ringbench: no deadline for an aborted stop ({e})");
        }
    }
}

/// How long a server may take to write its rows and summary after a second signal.
const ABORT_DEADLINE: Duration = Duration::from_secs(5);

/// Prints to standard output; a closed pipe ends the program quietly (as `head` expects),
/// any other failure is one line.
fn print_out(text: &str) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    match writeln!(out, "{text}").and_then(|()| out.flush()) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => std::process::exit(0),
        Err(e) => Err(anyhow::anyhow!("cannot write to standard output: {e}")),
    }
}

fn run_client(o: ClientOptions) -> anyhow::Result<ExitCode> {
    let ClientOptions { cfg, out, json, spectrum, shard_child } = o;
    if shard_child {
        let ok =
            shard::serve_as_shard(&cfg, std::io::stdin().lock(), std::io::stdout().lock()).map_err(client_error)?;
        return Ok(if ok { ExitCode::SUCCESS } else { ExitCode::from(1) });
    }
    let spectra = spectrum.map(|p| {
        let with = |kind: &str| std::path::PathBuf::from(format!("{}.{kind}.hgrm", p.display()));
        [(with("corrected"), true), (with("service"), false)]
    });
    // Fail on unwritable outputs before spending minutes on the run.
    for p in [&out, &json].into_iter().flatten().chain(spectra.iter().flatten().map(|(p, _)| p)) {
        files::check_writable(p)?;
    }
    let report = client::run(&cfg).map_err(client_error)?;
    if let Some(p) = &out {
        crate::results::write_rows_csv(p, &report.rows)?;
    }
    if let Some(p) = &json {
        files::write_json(p, &report.summary)?;
    }
    for (path, corrected) in spectra.iter().flatten() {
        let s = &report.summary;
        // A closed loop keeps one histogram: its corrected latency is its service time.
        let encoded =
            if *corrected && !s.corrected_histogram.is_empty() { &s.corrected_histogram } else { &s.latency_histogram };
        let h = crate::results::decode_histogram(encoded).unwrap_or_else(client::latency::run_histogram);
        let mut text = Vec::new();
        client::latency::write_spectrum(&h, &mut text)?;
        files::write_whole(path, &text)?;
    }
    let mut text = report.summary.to_string();
    if let Some(first) = report.rows.iter().find(|r| r.errors > 0) {
        text += &format!("\n  first error        thread {}: {}", first.thread, first.error);
    }
    print_out(&text)?;
    Ok(if report.ok() { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

fn client_error(e: client::ClientError) -> anyhow::Error {
    if e.is_usage() {
        UsageError(e.to_string()).into()
    } else {
        e.into()
    }
}

fn run_probe(
    server_cpu: Option<usize>,
    client_cpu: Option<usize>,
    json: Option<std::path::PathBuf>,
) -> anyhow::Result<ExitCode> {
    if let Some(p) = &json {
        files::check_writable(p)?;
    }
    let (report, skipped) = crate::probe::run(server_cpu, client_cpu)?;
    for s in skipped {
        eprintln!("ringbench probe: {s}");
    }
    print_out(&report.to_string())?;
    if let Some(p) = &json {
        files::write_json(p, &report)?;
    }
    Ok(ExitCode::SUCCESS)
}

fn run_report(dir: &std::path::Path, opts: &report::Options) -> anyhow::Result<ExitCode> {
    let built = report::build(dir, opts)?;
    let failed = built.points.iter().filter(|p| !p.ok).count();
    print_out(&dir.join("summary.md").display().to_string())?;
    eprintln!("ringbench report: {} points ({failed} failed) from {}", built.points.len(), dir.join("raw").display());
    if let Some(why) = &built.charts_failed {
        eprintln!("ringbench report: charts not drawn: {why}");
        return Ok(ExitCode::from(1));
    }
    Ok(ExitCode::SUCCESS)
}
