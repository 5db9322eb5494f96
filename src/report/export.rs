//! The sweep as files: `overall.csv` (one row per backend × connections × size: the
//! seed's "Overall" columns, then every metric), `overall.json`, and `summary.md`. The
//! columns come from the metric table, so every file shows the same figures.

use std::fmt::Write as _;
use std::path::Path;

use super::charts::Chart;
use super::context::caption;
use super::metrics::{Metric, METRICS};
use super::points::{sizes, Point, Spread};
use crate::files;

/// The identity columns at the front of `overall.csv`: the seed's Overall sheet.
const IDENTITY: [&str; 7] = [
    "backend",
    "connections",
    "status",
    "requests_per_connection",
    "data_per_connection_bytes",
    "total_requests",
    "total_data_bytes",
];
/// After the headline metrics.
const COUNTS: [&str; 3] = ["errors", "repeats", "size_bytes"];

/// One cell of the overall table.
enum Cell {
    Text(String),
    Int(u64),
    Num(f64),
    NotApplicable,
}

impl Cell {
    fn csv(&self) -> String {
        match self {
            Cell::Text(s) => s.clone(),
            Cell::Int(n) => n.to_string(),
            Cell::Num(x) => x.to_string(),
            Cell::NotApplicable => "n/a".into(),
        }
    }

    fn json(&self) -> serde_json::Value {
        match self {
            Cell::Text(s) => serde_json::Value::from(s.as_str()),
            Cell::Int(n) => serde_json::Value::from(*n),
            Cell::Num(x) => serde_json::Value::from(*x),
            Cell::NotApplicable => serde_json::Value::Null,
        }
    }
}

/// Rounds to `digits` decimals, so the CSV reads like a table and not like float noise.
fn round(x: f64, digits: i32) -> f64 {
    let m = 10f64.powi(digits);
    (x * m).round() / m
}

fn num(s: Option<&Spread>, m: &Metric, f: fn(&Spread) -> f64) -> Cell {
    s.map_or(Cell::NotApplicable, |s| Cell::Num(round(f(s), m.digits)))
}

/// The columns of `overall.csv`, in order, with each point's cells.
fn overall(points: &[Point]) -> (Vec<String>, Vec<Vec<Cell>>) {
    let headline = METRICS.iter().filter(|m| m.headline);
    let others = METRICS.iter().filter(|m| !m.headline);
    let mut cols: Vec<String> = IDENTITY.iter().map(|s| s.to_string()).collect();
    cols.extend(headline.clone().map(|m| m.key.to_string()));
    cols.extend(COUNTS.iter().map(|s| s.to_string()));
    cols.extend(others.clone().map(|m| m.key.to_string()));
    for m in METRICS {
        cols.push(format!("{}_min", m.key));
        cols.push(format!("{}_max", m.key));
    }
    let rows = points
        .iter()
        .map(|p| {
            let total_requests = p.connections as u64 * p.requests_per_connection;
            let mut row = vec![
                Cell::Text(p.backend.clone()),
                Cell::Int(p.connections as u64),
                Cell::Text(if p.ok { "Success" } else { "Fail" }.into()),
                Cell::Int(p.requests_per_connection),
                Cell::Int(p.requests_per_connection * p.size_bytes as u64),
                Cell::Int(total_requests),
                Cell::Int(total_requests * p.size_bytes as u64),
            ];
            row.extend(headline.clone().map(|m| num(p.get(m), m, |s| s.mean)));
            row.extend([Cell::Int(p.errors), Cell::Int(p.repeats as u64), Cell::Int(p.size_bytes as u64)]);
            row.extend(others.clone().map(|m| num(p.get(m), m, |s| s.mean)));
            for m in METRICS {
                row.push(num(p.get(m), m, |s| s.min));
                row.push(num(p.get(m), m, |s| s.max));
            }
            row
        })
        .collect();
    (cols, rows)
}

pub fn write_overall_csv(path: &Path, points: &[Point]) -> anyhow::Result<()> {
    let (cols, rows) = overall(points);
    let mut w = csv::Writer::from_writer(Vec::new());
    w.write_record(&cols)?;
    for r in rows {
        w.write_record(r.iter().map(Cell::csv))?;
    }
    files::write_whole(path, &w.into_inner().map_err(|e| anyhow::anyhow!("{e}"))?)
}

pub fn write_overall_json(path: &Path, points: &[Point]) -> anyhow::Result<()> {
    let (cols, rows) = overall(points);
    let objects: Vec<serde_json::Map<String, serde_json::Value>> =
        rows.iter().map(|r| cols.iter().cloned().zip(r.iter().map(Cell::json)).collect()).collect();
    files::write_json(path, &objects)
}

/// The comparison sentence for one chart: each backend against the first (the baseline),
/// at 1000 connections when measured (else the largest point), and its range over points.
pub fn sentence(points: &[Point], order: &[String], chart: &Chart) -> String {
    let Some(base) = order.first() else { return String::new() };
    let m = chart.metric;
    let value = |b: &str, c: usize| {
        points
            .iter()
            .find(|p| p.backend == b && p.connections == c && p.size_bytes == chart.size_bytes && p.ok)
            .and_then(|p| p.get(m))
            .map(|s| s.mean)
    };
    let ratio = |b: &str, c: usize| match (value(b, c), value(base, c)) {
        (Some(x), Some(y)) if y > 0.0 => Some(x / y),
        _ => None,
    };
    let mut conns: Vec<usize> =
        points.iter().filter(|p| p.size_bytes == chart.size_bytes).map(|p| p.connections).collect();
    conns.dedup();
    let focus = if conns.contains(&1000) { 1000 } else { conns.iter().copied().max().unwrap_or(0) };
    let mut parts = Vec::new();
    for b in order.iter().skip(1) {
        let ratios: Vec<f64> = conns.iter().filter_map(|&c| ratio(b, c)).collect();
        if let Some(fr) = ratio(b, focus) {
            let lo = ratios.iter().copied().fold(f64::INFINITY, f64::min);
            let hi = ratios.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            parts.push(format!(
                "{b} had {fr:.2}× the {} of {base} at {focus} connections ({lo:.2}×–{hi:.2}× over all {} points)",
                m.what,
                ratios.len()
            ));
        }
    }
    if parts.is_empty() {
        format!("{} by backend and connections.", m.title)
    } else {
        format!("{}; {}.", parts.join("; "), m.better.phrase())
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
    let _ = writeln!(md, "# ringbench: {}\n", order.join(" vs "));
    let _ = writeln!(md, "_{}_\n", caption(env));
    machine_section(&mut md, env);
    overall_section(&mut md, points);
    let _ = writeln!(md, "\n## Charts\n");
    for c in charts {
        let _ = writeln!(md, "### {}\n", c.metric.title);
        let _ = writeln!(md, "![{}](plots/{})\n", c.metric.title, c.file);
        let _ = writeln!(md, "{}\n", sentence(points, order, c));
    }
    let expected = METRICS.iter().filter(|m| m.chart.is_some()).count() * sizes(points).len();
    if charts.is_empty() {
        let _ = writeln!(md, "(no charts: see the message printed by the run; the data above is complete)\n");
    }
    let _ = writeln!(md, "Charts drawn: {} of {expected}.", charts.len());
    files::write_whole(path, md.as_bytes())
}

fn machine_section(md: &mut String, env: &serde_json::Value) {
    if env.is_null() {
        return;
    }
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
        let _ = writeln!(md, "| settings | `{st}` |");
    }
    let _ = writeln!(md);
}

fn overall_section(md: &mut String, points: &[Point]) {
    let _ = writeln!(md, "## Overall\n");
    let _ = writeln!(
        md,
        "Latency is closed-loop: each connection has one request in flight, and every echoed byte is verified.\n\
         CPU and syscalls are the server's, per verified request. Each figure is the mean over repeats; \
         n/a: not measured for this server.\n"
    );
    let cols: Vec<(&Metric, &str, usize)> = METRICS.iter().filter_map(|m| m.table.map(|(h, d)| (m, h, d))).collect();
    let headers: Vec<&str> = cols.iter().map(|c| c.1).collect();
    let _ = writeln!(md, "| backend | conns | size B | status | {} | errors | repeats |", headers.join(" | "));
    let _ = writeln!(md, "|---|---:|---:|---|{}---:|---:|", "---:|".repeat(cols.len()));
    for p in points {
        let cells: Vec<String> = cols
            .iter()
            .map(|(m, _, d)| p.get(m).map_or_else(|| "n/a".to_string(), |s| format!("{:.*}", *d, s.mean)))
            .collect();
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} | {} |",
            p.backend,
            p.connections,
            p.size_bytes,
            if p.ok { "Success" } else { "Fail" },
            cells.join(" | "),
            p.errors,
            p.repeats
        );
    }
    let failed: Vec<&Point> = points.iter().filter(|p| !p.ok).collect();
    if !failed.is_empty() {
        let _ = writeln!(md, "\n### Failed points\n");
        for p in failed {
            let _ = writeln!(md, "- {} at {} connections: {}", p.backend, p.connections, p.problems.join("; "));
        }
    }
}
