//! The sweep as files: `overall.csv` (one row per backend × connections × size, the seed's
//! "Overall" columns and more), `overall.json`, and `summary.md`.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::Context;
use serde::Serialize;

use super::charts::{Chart, METRICS};
use super::Point;

/// One row of `overall.csv`. The first sixteen columns are the seed's Overall sheet and
/// the headline figures; then the size, and the min and max over repeats of each figure.
#[derive(Debug, Serialize)]
pub struct OverallRow {
    pub backend: String,
    pub connections: usize,
    /// `Success` when every repeat verified every byte and logged every connection.
    pub status: &'static str,
    pub requests_per_connection: u64,
    /// The seed's "Data Transferred (Bytes)" per connection: requests × size.
    pub data_per_connection_bytes: u64,
    pub total_requests: u64,
    pub total_data_bytes: u64,
    /// The seed's AvgTotalDuration, mean over repeats.
    pub avg_total_duration_s: f64,
    /// The seed's AvgResponseTime, mean over repeats.
    pub avg_response_time_s: f64,
    pub throughput_rps: f64,
    pub p50_response_us: f64,
    pub p99_response_us: f64,
    /// Server CPU (user + sys, whole process) per verified request.
    pub server_cpu_us_per_request: f64,
    /// Syscalls the server made per verified request (its own count).
    pub server_syscalls_per_request: f64,
    /// Client errors over all repeats.
    pub errors: u64,
    pub repeats: usize,
    pub size_bytes: usize,
    pub avg_total_duration_s_min: f64,
    pub avg_total_duration_s_max: f64,
    pub avg_response_time_s_min: f64,
    pub avg_response_time_s_max: f64,
    pub throughput_rps_min: f64,
    pub throughput_rps_max: f64,
    pub p99_response_us_min: f64,
    pub p99_response_us_max: f64,
    pub server_cpu_us_per_request_min: f64,
    pub server_cpu_us_per_request_max: f64,
    pub server_syscalls_per_request_min: f64,
    pub server_syscalls_per_request_max: f64,
}

/// Rounds to `digits` decimals, so the CSV reads like a table and not like float noise.
fn r(x: f64, digits: i32) -> f64 {
    let m = 10f64.powi(digits);
    (x * m).round() / m
}

impl From<&Point> for OverallRow {
    fn from(p: &Point) -> Self {
        let total_requests = p.connections as u64 * p.requests_per_connection;
        OverallRow {
            backend: p.backend.clone(),
            connections: p.connections,
            status: if p.ok { "Success" } else { "Fail" },
            requests_per_connection: p.requests_per_connection,
            data_per_connection_bytes: p.requests_per_connection * p.size_bytes as u64,
            total_requests,
            total_data_bytes: total_requests * p.size_bytes as u64,
            avg_total_duration_s: r(p.avg_total_duration_s.mean, 6),
            avg_response_time_s: r(p.avg_response_time_s.mean, 9),
            throughput_rps: r(p.throughput_rps.mean, 1),
            p50_response_us: r(p.p50_response_us.mean, 1),
            p99_response_us: r(p.p99_response_us.mean, 1),
            server_cpu_us_per_request: r(p.server_cpu_us_per_request.mean, 3),
            server_syscalls_per_request: r(p.server_syscalls_per_request.mean, 4),
            errors: p.errors,
            repeats: p.repeats,
            size_bytes: p.size_bytes,
            avg_total_duration_s_min: r(p.avg_total_duration_s.min, 6),
            avg_total_duration_s_max: r(p.avg_total_duration_s.max, 6),
            avg_response_time_s_min: r(p.avg_response_time_s.min, 9),
            avg_response_time_s_max: r(p.avg_response_time_s.max, 9),
            throughput_rps_min: r(p.throughput_rps.min, 1),
            throughput_rps_max: r(p.throughput_rps.max, 1),
            p99_response_us_min: r(p.p99_response_us.min, 1),
            p99_response_us_max: r(p.p99_response_us.max, 1),
            server_cpu_us_per_request_min: r(p.server_cpu_us_per_request.min, 3),
            server_cpu_us_per_request_max: r(p.server_cpu_us_per_request.max, 3),
            server_syscalls_per_request_min: r(p.server_syscalls_per_request.min, 4),
            server_syscalls_per_request_max: r(p.server_syscalls_per_request.max, 4),
        }
    }
}

pub fn write_overall_csv(path: &Path, points: &[Point]) -> anyhow::Result<()> {
    let mut w = csv::Writer::from_path(path).with_context(|| format!("cannot create '{}'", path.display()))?;
    for p in points {
        w.serialize(OverallRow::from(p))?;
    }
    w.flush().with_context(|| format!("cannot write '{}'", path.display()))
}

pub fn write_overall_json(path: &Path, points: &[Point]) -> anyhow::Result<()> {
    let rows: Vec<OverallRow> = points.iter().map(OverallRow::from).collect();
    crate::cli::write_json(path, &rows)
}

/// `DIR/env.json` if present (written by the matrix), else JSON null.
pub fn read_env(dir: &Path) -> serde_json::Value {
    std::fs::read_to_string(dir.join("env.json"))
        .ok()
        .and_then(|s| serde_json::from_str(&s).ok())
        .unwrap_or(serde_json::Value::Null)
}

/// One line naming the machine and the settings, for chart captions.
pub fn caption(env: &serde_json::Value) -> String {
    let s = |k: &str| env.get(k).and_then(|v| v.as_str()).unwrap_or("?").to_string();
    if env.is_null() {
        return "machine not recorded (no env.json)".into();
    }
    let pin = env.get("pinning").and_then(|p| p.as_str()).unwrap_or("not pinned");
    format!(
        "{} · Linux {} · {} CPUs · {} · {} workers",
        s("cpu_model"),
        s("kernel"),
        env.get("cpus").and_then(|v| v.as_u64()).unwrap_or(0),
        pin,
        env.pointer("/settings/workers").and_then(|v| v.as_u64()).map_or("?".into(), |w| w.to_string()),
    )
}

/// The comparison sentence for one chart: each backend against the first (epoll), at
/// 1000 connections when measured (else the largest point), and its range over points.
pub fn sentence(points: &[Point], order: &[String], chart: &Chart) -> String {
    let Some(base) = order.first() else { return String::new() };
    let size = chart.size_bytes;
    let at = |b: &str, c: usize| {
        points.iter().find(|p| p.backend == b && p.connections == c && p.size_bytes == size && p.ok)
    };
    let mut conns: Vec<usize> = points.iter().filter(|p| p.size_bytes == size).map(|p| p.connections).collect();
    conns.dedup();
    let focus = if conns.contains(&1000) { 1000 } else { conns.iter().copied().max().unwrap_or(0) };
    let metric = chart.metric;
    let mut parts = Vec::new();
    for b in order.iter().skip(1) {
        let ratios: Vec<f64> = conns
            .iter()
            .filter_map(|&c| {
                let (x, y) = (at(b, c)?, at(base, c)?);
                let (xv, yv) = ((metric.get)(x).mean, (metric.get)(y).mean);
                (yv > 0.0).then_some(xv / yv)
            })
            .collect();
        let focus_ratio = match (at(b, focus), at(base, focus)) {
            (Some(x), Some(y)) if (metric.get)(y).mean > 0.0 => Some((metric.get)(x).mean / (metric.get)(y).mean),
            _ => None,
        };
        if let Some(fr) = focus_ratio {
            let lo = ratios.iter().copied().fold(f64::INFINITY, f64::min);
            let hi = ratios.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            parts.push(format!(
                "{b} had {fr:.2}× the {} of {base} at {focus} connections ({lo:.2}×–{hi:.2}× over all {} points)",
                metric.what,
                ratios.len()
            ));
        }
    }
    if parts.is_empty() {
        format!("{} by backend and connections.", metric.title)
    } else {
        format!("{}; {}.", parts.join("; "), metric.better)
    }
}

pub fn write_summary_md(
    path: &Path,
    points: &[Point],
    order: &[String],
    charts: &[Chart],
    env: &serde_json::Value,
) -> anyhow::Result<()> {
    let mut md = String::new();
    let _ = writeln!(md, "# ringbench: epoll vs io_uring echo server\n");
    let _ = writeln!(md, "_{}_\n", caption(env));
    if !env.is_null() {
        let s = |k: &str| env.get(k).map(|v| v.to_string().trim_matches('"').to_string()).unwrap_or_default();
        let _ = writeln!(md, "## Machine and settings\n");
        let _ = writeln!(md, "| | |\n|---|---|");
        for k in [
            "kernel",
            "cpu_model",
            "cpus",
            "nofile_soft",
            "nofile_hard",
            "git_commit",
            "build_profile",
            "pinning",
            "started_utc",
        ] {
            let _ = writeln!(md, "| {k} | {} |", s(k));
        }
        if let Some(f) = env.get("io_uring_features").and_then(|f| f.as_object()) {
            let feats: Vec<String> = f.iter().map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or(""))).collect();
            let _ = writeln!(md, "| io_uring features | {} |", feats.join(", "));
        }
        if let Some(st) = env.get("settings") {
            let _ = writeln!(md, "| settings | `{}` |", st);
        }
        let _ = writeln!(md);
    }
    let _ = writeln!(md, "## Overall\n");
    let _ = writeln!(
        md,
        "Latency is closed-loop: each connection has one request in flight, and every echoed byte is verified.\n\
         CPU and syscalls are the server's, per verified request. Each figure is the mean over repeats.\n"
    );
    let _ = writeln!(
        md,
        "| backend | conns | size B | status | AvgTotalDuration s | AvgResponseTime s | req/s | p50 µs | p99 µs | CPU µs/req | syscalls/req | errors | repeats |"
    );
    let _ = writeln!(md, "|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for p in points {
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {:.4} | {:.6} | {:.0} | {:.0} | {:.0} | {:.2} | {:.3} | {} | {} |",
            p.backend,
            p.connections,
            p.size_bytes,
            if p.ok { "Success" } else { "Fail" },
            p.avg_total_duration_s.mean,
            p.avg_response_time_s.mean,
            p.throughput_rps.mean,
            p.p50_response_us.mean,
            p.p99_response_us.mean,
            p.server_cpu_us_per_request.mean,
            p.server_syscalls_per_request.mean,
            p.errors,
            p.repeats
        );
    }
    let failed: Vec<&Point> = points.iter().filter(|p| !p.ok).collect();
    if !failed.is_empty() {
        let _ = writeln!(md, "\n### Failed points\n");
        for p in failed {
            let mut problems = p.problems.clone();
            problems.dedup();
            let _ = writeln!(md, "- {} at {} connections: {}", p.backend, p.connections, problems.join("; "));
        }
    }
    let _ = writeln!(md, "\n## Charts\n");
    for c in charts {
        let _ = writeln!(md, "### {}\n", c.metric.title);
        let _ = writeln!(md, "![{}](plots/{})\n", c.metric.title, c.file);
        let _ = writeln!(md, "{}\n", sentence(points, order, c));
    }
    if charts.is_empty() {
        let _ = writeln!(md, "(no charts: see the message printed by the run; the data above is complete)\n");
    }
    let _ = writeln!(md, "Charts drawn: {} of {}.", charts.len(), METRICS.len() * sizes(points).len());
    std::fs::write(path, md).with_context(|| format!("cannot write '{}'", path.display()))
}

pub fn sizes(points: &[Point]) -> Vec<usize> {
    let mut s: Vec<usize> = points.iter().map(|p| p.size_bytes).collect();
    s.sort_unstable();
    s.dedup();
    s
}
