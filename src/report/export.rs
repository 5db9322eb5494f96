//! The sweep as tables: `overall.csv` (one row per server × connections × size × offered
//! rate: the seed's "Overall" columns, then every metric with its spread and its ratio to
//! the baseline) and `overall.json`. The columns come from the metric table.

use std::path::Path;

use std::collections::BTreeMap;

use super::metrics::{Metric, METRICS};
use super::paired;
use super::points::{ratio, Point, Spread};
use crate::files;
use crate::results::{Place, SliceLog};

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
const COUNTS: [&str; 6] = ["errors", "repeats", "size_bytes", "baseline", "offered_rate_rps", "rate_status"];

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

/// Each client host's columns, after `host_{label}_`.
const HOST_COLUMNS: [&str; 5] =
    ["connections", "throughput_rps", "avg_total_duration_s", "avg_response_time_s", "p99_response_us"];

/// The client host labels of a sweep run from several hosts, in order of appearance.
pub fn host_labels(points: &[Point]) -> Vec<String> {
    let mut labels: Vec<String> = Vec::new();
    for h in points.iter().flat_map(|p| p.hosts.iter()) {
        if !labels.contains(&h.label) {
            labels.push(h.label.clone());
        }
    }
    labels
}

/// Paired slices' columns, at the end: the pairs each ratio stands on, the precision its
/// headline intervals reached, and how its place's rounds went; then the blocks it ran in
/// and whether its headline intervals were over blocks or (too few blocks) pairs alone.
const PAIRED_COLUMNS: [&str; 8] = [
    "pairs",
    "precision_reached",
    "precision_target",
    "stopped_on",
    "rounds_left_out",
    "regime_changes",
    "blocks",
    "interval_over",
];

/// The columns of `overall.csv`, in order, with each point's cells.
fn overall(points: &[Point], slices: &BTreeMap<Place, SliceLog>, base: &str) -> (Vec<String>, Vec<Vec<Cell>>) {
    let sure = paired::places(points, slices, base);
    let headline = METRICS.iter().filter(|m| m.headline);
    let others = METRICS.iter().filter(|m| !m.headline);
    let mut cols: Vec<String> = IDENTITY.iter().map(|s| s.to_string()).collect();
    cols.extend(headline.clone().map(|m| m.key.to_string()));
    cols.extend(COUNTS.iter().map(|s| s.to_string()));
    cols.extend(others.clone().map(|m| m.key.to_string()));
    for m in METRICS {
        for suffix in ["min", "max", "sd", "ratio", "ratio_ci95_lo", "ratio_ci95_hi"] {
            cols.push(format!("{}_{suffix}", m.key));
        }
    }
    // With several client hosts, each host's own figures (means over repeats) at the end.
    let labels = host_labels(points);
    for l in &labels {
        for f in HOST_COLUMNS {
            cols.push(format!("host_{l}_{f}"));
        }
    }
    cols.extend(PAIRED_COLUMNS.iter().map(|s| s.to_string()));
    cols.push("workload".into());
    let rows = points
        .iter()
        .map(|p| {
            let total_requests = p.connections as u64 * p.requests_per_connection;
            // An open loop has no fixed count per connection: its schedule decides.
            let closed = |n: u64| if p.rate.is_some() { Cell::NotApplicable } else { Cell::Int(n) };
            let mut row = vec![
                Cell::Text(p.backend.clone()),
                Cell::Int(p.connections as u64),
                Cell::Text(if p.ok { "Success" } else { "Fail" }.into()),
                closed(p.requests_per_connection),
                closed(p.requests_per_connection * p.size_bytes as u64),
                closed(total_requests),
                closed(total_requests * p.size_bytes as u64),
            ];
            row.extend(headline.clone().map(|m| num(p.get(m), m, |s| s.mean)));
            row.extend([
                Cell::Int(p.errors),
                Cell::Int(p.repeats as u64),
                Cell::Int(p.size_bytes as u64),
                Cell::Text(base.to_string()),
                p.rate.map_or(Cell::NotApplicable, Cell::Int),
                p.rate_status.clone().map_or(Cell::NotApplicable, Cell::Text),
            ]);
            row.extend(others.clone().map(|m| num(p.get(m), m, |s| s.mean)));
            for m in METRICS {
                row.push(num(p.get(m), m, |s| s.min));
                row.push(num(p.get(m), m, |s| s.max));
                row.push(num(p.get(m), m, |s| s.sd));
                let r = ratio(points, p, m, base);
                let cell = |x: Option<f64>| x.map_or(Cell::NotApplicable, |x| Cell::Num(round(x, 4)));
                row.push(cell(r.map(|r| r.ratio)));
                row.push(cell(r.and_then(|r| r.ci95).map(|c| c.0)));
                row.push(cell(r.and_then(|r| r.ci95).map(|c| c.1)));
            }
            for l in &labels {
                match p.hosts.iter().find(|h| &h.label == l) {
                    Some(h) => row.extend([
                        Cell::Int(h.connections as u64),
                        Cell::Num(round(h.throughput_rps.mean, 1)),
                        Cell::Num(round(h.avg_total_duration_s.mean, 6)),
                        Cell::Num(round(h.avg_response_time_s.mean, 6)),
                        Cell::Num(round(h.p99_us.mean, 1)),
                    ]),
                    None => row.extend(HOST_COLUMNS.iter().map(|_| Cell::NotApplicable)),
                }
            }
            let cpu = super::metrics::metric("server_cpu_us_per_request");
            let pairs = cpu.and_then(|m| ratio(points, p, m, base)).map(|r| r.pairs as u64);
            let here = sure.iter().find(|s| s.place == Some(p.place()));
            let frac = |x: Option<f64>| x.map_or(Cell::NotApplicable, |x| Cell::Num(round(x, 4)));
            row.extend([
                pairs.map_or(Cell::NotApplicable, Cell::Int),
                frac(paired::point_precision(points, p, base)),
                frac(here.and_then(|s| s.target)),
                here.map_or(Cell::NotApplicable, |s| Cell::Text(s.stopped.clone())),
                here.map_or(Cell::NotApplicable, |_| Cell::Int(p.rounds_left_out as u64)),
                here.map_or(Cell::NotApplicable, |s| Cell::Int(s.regime_rounds as u64)),
                here.map_or(Cell::NotApplicable, |s| Cell::Int(s.blocks as u64)),
                match (here, p.backend == base) {
                    (Some(s), false) => Cell::Text(if s.over_blocks { "blocks" } else { "pairs" }.into()),
                    _ => Cell::NotApplicable,
                },
                Cell::Text(p.workload.name()),
            ]);
            row
        })
        .collect();
    (cols, rows)
}

pub fn write_overall_csv(
    path: &Path,
    points: &[Point],
    slices: &BTreeMap<Place, SliceLog>,
    base: &str,
) -> anyhow::Result<()> {
    let (cols, rows) = overall(points, slices, base);
    let mut w = csv::Writer::from_writer(Vec::new());
    w.write_record(&cols)?;
    for r in rows {
        w.write_record(r.iter().map(Cell::csv))?;
    }
    files::write_whole(path, &w.into_inner().map_err(|e| anyhow::anyhow!("{e}"))?)
}

pub fn write_overall_json(
    path: &Path,
    points: &[Point],
    slices: &BTreeMap<Place, SliceLog>,
    base: &str,
) -> anyhow::Result<()> {
    let (cols, rows) = overall(points, slices, base);
    let objects: Vec<serde_json::Map<String, serde_json::Value>> =
        rows.iter().map(|r| cols.iter().cloned().zip(r.iter().map(Cell::json)).collect()).collect();
    files::write_json(path, &objects)
}
