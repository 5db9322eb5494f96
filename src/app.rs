//! The binary: parse the command line, run the task, print one clear line on failure.
//!
//! Exit status: 0 success; 1 a failure of the environment or of the run (port in use,
//! unwritable file, unreachable server, lost bytes); 2 bad arguments; 130 interrupted.

use std::process::ExitCode;

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
        Task::Report { dir, order } => run_report(&dir, &order),
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
    let ServerOptions { variant, mut cfg, summary_json } = o;
    if let Some(p) = &summary_json {
        files::check_writable(p)?;
    }
    cfg.notices = Some(ringbench_backends::NoticeSink(std::sync::Arc::new(|n| eprintln!("ringbench: {n}"))));
    // Signals are routed to a thread before the server exists, so a SIGTERM that arrives
    // during start-up is not lost and never kills the process half-way.
    let mut signals =
        signal_hook::iterator::Signals::new([libc::SIGINT, libc::SIGTERM]).context("cannot install signal handlers")?;
    let handle = ringbench_backends::start(variant.backend, cfg)?;
    let shared = handle.shared();
    eprintln!(
        "ringbench: {} server {LISTENING_ON}{} with {} workers (SIGINT/SIGTERM stops it)",
        variant.name,
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
    if let Some(p) = &summary_json {
        files::write_json(p, &summary)?;
    }
    Ok(if summary.complete() { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

fn run_client(o: ClientOptions) -> anyhow::Result<ExitCode> {
    let ClientOptions { cfg, out, json, shard_child } = o;
    if shard_child {
        let ok =
            shard::serve_as_shard(&cfg, std::io::stdin().lock(), std::io::stdout().lock()).map_err(client_error)?;
        return Ok(if ok { ExitCode::SUCCESS } else { ExitCode::from(1) });
    }
    // Fail on unwritable outputs before spending minutes on the run.
    for p in [&out, &json].into_iter().flatten() {
        files::check_writable(p)?;
    }
    let report = client::run(&cfg).map_err(client_error)?;
    if let Some(p) = &out {
        crate::results::write_rows_csv(p, &report.rows)?;
    }
    if let Some(p) = &json {
        files::write_json(p, &report.summary)?;
    }
    println!("{}", report.summary);
    if let Some(first) = report.rows.iter().find(|r| r.errors > 0) {
        println!("  first error        thread {}: {}", first.thread, first.error);
    }
    Ok(if report.ok() { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

fn client_error(e: client::ClientError) -> anyhow::Error {
    if e.is_usage() {
        UsageError(e.to_string()).into()
    } else {
        e.into()
    }
}

fn run_report(dir: &std::path::Path, order: &[String]) -> anyhow::Result<ExitCode> {
    let built = report::build(dir, order)?;
    if let Some(why) = &built.charts_failed {
        eprintln!("ringbench report: charts not drawn: {why}");
    }
    let failed = built.points.iter().filter(|p| !p.ok).count();
    println!("{}", dir.join("summary.md").display());
    eprintln!("ringbench report: {} points ({failed} failed) from {}", built.points.len(), dir.join("raw").display());
    Ok(ExitCode::SUCCESS)
}
