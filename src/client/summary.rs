//! The one place that defines every summary figure of a client run, for a run in one
//! process and for merged parts (processes, hosts) alike.

use hdrhistogram::Histogram;
use ringbench_backends::sys;

use super::latency::{run_histogram, RunLatency};
use super::{ClientConfig, ClientReport, ConnOutcome, Engine, Window};
use crate::results::{decode_histogram, encode_histogram, ClientSummary, Percentiles, ThreadRow};

/// An open loop that sent this much less than asked has not held its rate.
const HELD_RATE_SHARE: f64 = 0.95;
/// ... and is client-bound rather than server-bound when the client was this busy.
const CLIENT_BOUND_CPU_SHARE: f64 = 0.9;

/// What is summed over connections (or parts) besides the rows.
#[derive(Default)]
struct Totals {
    connected: usize,
    connect_sum_s: f64,
    connect_max_s: f64,
    expected: u64,
    sent_in_window: u64,
    client_cpu_s: f64,
    /// The sum over connections of their time for one round.
    round_sum_s: f64,
}

/// The report of a run in this process from its connections' outcomes and run
/// histograms.
pub fn summarise(
    cfg: &ClientConfig,
    outcomes: Vec<ConnOutcome>,
    wall_s: f64,
    window: Window,
    run: RunLatency,
) -> ClientReport {
    let mut rows = Vec::with_capacity(outcomes.len());
    let mut t = Totals { client_cpu_s: window.client_cpu_s, ..Totals::default() };
    for o in outcomes {
        if o.connected {
            t.connected += 1;
            t.connect_sum_s += o.connect_s;
            t.connect_max_s = t.connect_max_s.max(o.connect_s);
        }
        t.expected += o.expected;
        t.sent_in_window += o.sent_in_window;
        t.round_sum_s += o.round_s;
        rows.push(o.row);
    }
    rows.sort_by_key(|r| r.thread);
    report(cfg, rows, run, wall_s, t, window)
}

/// Merges reports of parts of one run (processes or hosts started together) into one,
/// whose measured phase is `window`.
pub fn merge(cfg: &ClientConfig, parts: Vec<ClientReport>, window: Window) -> ClientReport {
    let mut run = RunLatency::default();
    let mut rows = Vec::new();
    let mut wall_s = 0.0f64;
    let mut t = Totals::default();
    let idle: (usize, usize) =
        parts.iter().fold((0, 0), |(n, ok), p| (n + p.summary.idle_connections, ok + p.summary.idle_echoed));
    for p in parts {
        let s = &p.summary;
        add(&mut run.service, &s.latency_histogram);
        // A closed loop's corrected latency is its service time (kept once).
        let corrected = if s.corrected_histogram.is_empty() { &s.latency_histogram } else { &s.corrected_histogram };
        add(&mut run.corrected, corrected);
        add(&mut run.connect, &s.connect_histogram);
        add(&mut run.lateness, &s.lateness_histogram);
        wall_s = wall_s.max(s.wall_s);
        t.connected += s.connections_ok;
        t.connect_sum_s += s.connect_mean_s * s.connections_ok as f64;
        t.connect_max_s = t.connect_max_s.max(s.connect_max_s);
        t.expected += s.requests_expected;
        t.sent_in_window += s.achieved_rate_rps.map_or(0, |r| (r * s.duration_s).round() as u64);
        t.client_cpu_s += s.client_cpu_s;
        t.round_sum_s += s.avg_total_duration_s * s.connections as f64;
        rows.extend(p.rows);
    }
    rows.sort_by_key(|r| r.thread);
    let mut merged = report(cfg, rows, run, wall_s, t, window);
    (merged.summary.idle_connections, merged.summary.idle_echoed) = idle;
    merged
}

fn add(into: &mut Histogram<u64>, encoded: &str) {
    if let Some(h) = decode_histogram(encoded) {
        let _ = into.add(&h);
    }
}

/// How to read the latency figures, printed with them.
fn latency_model(cfg: &ClientConfig) -> String {
    match &cfg.open {
        Some(o) => format!(
            "open-loop: {:.0} requests/s over all connections, one in flight per connection; 'corrected' \
             counts from each request's intended send time (coordinated omission corrected), 'service' from \
             its actual send; requests not sent by the end of the window are not sent (the achieved rate \
             shows them)",
            o.rate_rps
        ),
        None => "closed-loop: one request in flight per connection; each latency is one full round trip".into(),
    }
}

fn report(
    cfg: &ClientConfig,
    rows: Vec<ThreadRow>,
    run: RunLatency,
    wall_s: f64,
    t: Totals,
    window: Window,
) -> ClientReport {
    let n = rows.len().max(1) as f64;
    let requests: u64 = rows.iter().map(|r| r.requests).sum();
    let service = Percentiles::of(&run.service);
    let mut summary = ClientSummary {
        label: cfg.label.clone(),
        server: cfg.server.to_string(),
        connections: cfg.connections,
        connections_ok: t.connected,
        connections_failed: cfg.connections.saturating_sub(t.connected),
        requests_per_connection: cfg.requests,
        min_run_s: cfg.min_run.map_or(0.0, |d| d.as_secs_f64()),
        requests_expected: t.expected,
        size_bytes: cfg.size,
        requests,
        bytes: rows.iter().map(|r| r.bytes).sum(),
        errors: rows.iter().map(|r| r.errors).sum(),
        wall_s,
        throughput_rps: if wall_s > 0.0 { requests as f64 / wall_s } else { 0.0 },
        latency_mean_us: service.mean_us,
        latency_p50_us: service.p50_us,
        latency_p90_us: service.p90_us,
        latency_p99_us: service.p99_us,
        latency_p999_us: service.p999_us,
        latency_max_us: service.max_us,
        avg_total_duration_s: t.round_sum_s / n,
        avg_response_time_s: rows.iter().map(|r| r.avg_response_s).sum::<f64>() / n,
        connect_mean_s: if t.connected > 0 { t.connect_sum_s / t.connected as f64 } else { 0.0 },
        connect_max_s: t.connect_max_s,
        latency_model: latency_model(cfg),
        engine: cfg.engine.name().into(),
        target_rate_rps: None,
        achieved_rate_rps: None,
        rate_status: None,
        warmup_s: 0.0,
        duration_s: 0.0,
        service,
        corrected: Percentiles::of(&run.corrected),
        send_lateness: None,
        client_cpu_s: t.client_cpu_s,
        latency_histogram: encode_histogram(&run.service),
        // In a closed loop it is the service histogram again: not kept twice.
        corrected_histogram: if cfg.open.is_some() { encode_histogram(&run.corrected) } else { String::new() },
        lateness_histogram: encode_histogram(&run.lateness),
        measured_start_unix_us: window.start_unix_us,
        measured_end_unix_us: window.end_unix_us,
        first_error: rows.iter().find(|r| r.errors > 0).map(|r| r.error.clone()),
        workload: cfg.workload.name(),
        connect_histogram: if run.connect.is_empty() { String::new() } else { encode_histogram(&run.connect) },
        connect: (!run.connect.is_empty()).then(|| Percentiles::of(&run.connect)),
        idle_connections: 0,
        idle_echoed: 0,
    };
    if let Some(o) = &cfg.open {
        let achieved = t.sent_in_window as f64 / o.duration.as_secs_f64();
        summary.target_rate_rps = Some(o.rate_rps);
        summary.achieved_rate_rps = Some(achieved);
        summary.warmup_s = o.warmup.as_secs_f64();
        summary.duration_s = o.duration.as_secs_f64();
        summary.send_lateness = Some(Percentiles::of(&run.lateness));
        summary.rate_status = Some(rate_status(cfg, achieved, o.rate_rps, t.client_cpu_s, wall_s).into());
    }
    ClientReport { summary, rows }
}

/// Whether an open loop held its rate, and if not, whose fault it likely was: a client
/// that used nearly all the CPU it had could not send faster; otherwise the server did
/// not answer fast enough.
fn rate_status(cfg: &ClientConfig, achieved: f64, target: f64, cpu_s: f64, wall_s: f64) -> &'static str {
    if achieved >= HELD_RATE_SHARE * target {
        return "held";
    }
    let cpus = match cfg.engine {
        Engine::Epoll => cfg.engine_threads().min(sys::allowed_cpus()),
        Engine::Threads => sys::allowed_cpus(),
    };
    if wall_s > 0.0 && cpu_s >= CLIENT_BOUND_CPU_SHARE * wall_s * cpus as f64 {
        "client-bound"
    } else {
        "saturated"
    }
}

/// An empty run histogram set (for a part that reported nothing).
pub fn no_latency() -> RunLatency {
    RunLatency {
        service: run_histogram(),
        corrected: run_histogram(),
        lateness: run_histogram(),
        connect: run_histogram(),
    }
}
