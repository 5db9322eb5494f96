//! From raw run files to the comparison: `overall.csv`, `summary.md` and the charts.
//!
//! Everything here is computed from `DIR/raw` alone, so `ringbench report DIR` redraws a
//! sweep (or merges client CSVs copied in from other hosts) exactly as the matrix did.
//!
//! Raw files are named `{backend}_c{connections}_s{size}_r{repeat}.{part}` where part is
//! `server.json` (the server summary), `server.csv` (its per-connection log) or
//! `client-{label}.csv` / `client-{label}.json` (one pair per client host).

pub mod charts;
pub mod export;

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use anyhow::Context;
use hdrhistogram::Histogram;
use ringbench_backends::ServerSummary;
use serde::{Deserialize, Serialize};

use crate::client::{self, ClientSummary, ThreadRow};

/// Which run a raw file belongs to.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RunKey {
    pub backend: String,
    pub connections: usize,
    pub size_bytes: usize,
    pub repeat: usize,
}

impl RunKey {
    /// The file-name stem, e.g. `uring_c1000_s64_r2`.
    pub fn stem(&self) -> String {
        format!("{}_c{}_s{}_r{}", self.backend, self.connections, self.size_bytes, self.repeat)
    }

    /// Parses a stem written by [`RunKey::stem`].
    pub fn parse(stem: &str) -> Option<RunKey> {
        let mut parts = stem.rsplitn(4, '_');
        let repeat = parts.next()?.strip_prefix('r')?.parse().ok()?;
        let size_bytes = parts.next()?.strip_prefix('s')?.parse().ok()?;
        let connections = parts.next()?.strip_prefix('c')?.parse().ok()?;
        let backend = parts.next()?.to_string();
        (!backend.is_empty()).then_some(RunKey { backend, connections, size_bytes, repeat })
    }
}

/// One client host's output for a run.
#[derive(Clone, Debug)]
pub struct ClientPart {
    pub label: String,
    pub summary: Option<ClientSummary>,
    pub rows: Vec<ThreadRow>,
}

/// Everything recorded for one run.
#[derive(Clone, Debug, Default)]
pub struct Run {
    pub clients: Vec<ClientPart>,
    pub server: Option<ServerSummary>,
    /// Rows in the server's per-connection log, if it was kept.
    pub server_log_rows: Option<usize>,
}

/// Reads every run in `raw`.
pub fn load_runs(raw: &Path) -> anyhow::Result<BTreeMap<RunKey, Run>> {
    let mut runs: BTreeMap<RunKey, Run> = BTreeMap::new();
    let entries = fs::read_dir(raw).with_context(|| format!("cannot read '{}'", raw.display()))?;
    let mut files: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
    files.sort();
    for path in files {
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else { continue };
        let Some((stem, part)) = name.split_once('.') else { continue };
        let Some(key) = RunKey::parse(stem) else { continue };
        let run = runs.entry(key).or_default();
        let ctx = || format!("cannot read '{}'", path.display());
        if part == "server.json" {
            run.server = Some(serde_json::from_str(&fs::read_to_string(&path).with_context(ctx)?).with_context(ctx)?);
        } else if part == "server.csv" {
            run.server_log_rows = Some(count_csv_rows(&path).with_context(ctx)?);
        } else if let Some(label) = part.strip_prefix("client-").and_then(|p| p.strip_suffix(".csv")) {
            client_part(run, label).rows = client::read_rows_csv(&path).with_context(ctx)?;
        } else if let Some(label) = part.strip_prefix("client-").and_then(|p| p.strip_suffix(".json")) {
            client_part(run, label).summary =
                Some(serde_json::from_str(&fs::read_to_string(&path).with_context(ctx)?).with_context(ctx)?);
        }
    }
    Ok(runs)
}

fn client_part<'a>(run: &'a mut Run, label: &str) -> &'a mut ClientPart {
    if let Some(i) = run.clients.iter().position(|c| c.label == label) {
        return &mut run.clients[i];
    }
    run.clients.push(ClientPart { label: label.to_string(), summary: None, rows: Vec::new() });
    run.clients.last_mut().expect("just pushed")
}

fn count_csv_rows(path: &Path) -> io::Result<usize> {
    let mut r = csv::Reader::from_path(path).map_err(io::Error::other)?;
    let mut n = 0;
    for rec in r.records() {
        rec.map_err(io::Error::other)?;
        n += 1;
    }
    Ok(n)
}

/// The figures of one run, over all its client hosts.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RunFigures {
    pub ok: bool,
    pub connections: usize,
    pub requests_per_connection: u64,
    pub requests: u64,
    pub errors: u64,
    pub avg_total_duration_s: f64,
    pub avg_response_time_s: f64,
    pub throughput_rps: f64,
    pub p50_response_us: f64,
    pub p99_response_us: f64,
    pub server_cpu_us_per_request: f64,
    pub server_syscalls_per_request: f64,
    /// Why the run counts as failed (empty when ok).
    pub problems: Vec<String>,
}

/// Computes a run's figures. Several client hosts are merged like the seed's two clients:
/// means over all their threads, throughputs added, latency histograms merged.
pub fn figures(key: &RunKey, run: &Run) -> RunFigures {
    let rows: Vec<&ThreadRow> = run.clients.iter().flat_map(|c| c.rows.iter()).collect();
    let summaries: Vec<&ClientSummary> = run.clients.iter().filter_map(|c| c.summary.as_ref()).collect();
    let mut f = RunFigures::default();
    let mean = |v: &mut dyn Iterator<Item = f64>| {
        let (s, n) = v.fold((0.0, 0usize), |(s, n), x| (s + x, n + 1));
        if n == 0 {
            0.0
        } else {
            s / n as f64
        }
    };
    f.connections = if summaries.is_empty() { rows.len() } else { summaries.iter().map(|s| s.connections).sum() };
    f.requests_per_connection = summaries.first().map_or(0, |s| s.requests_per_connection);
    f.requests = rows.iter().map(|r| r.requests).sum();
    f.errors = rows.iter().map(|r| r.errors).sum();
    f.avg_total_duration_s = mean(&mut rows.iter().map(|r| r.total_duration_s));
    f.avg_response_time_s = mean(&mut rows.iter().map(|r| r.avg_response_s));
    f.throughput_rps = summaries.iter().map(|s| s.throughput_rps).sum();
    // Auto-resizing, so histograms of any range merge into it.
    let mut merged = Histogram::<u64>::new(3).ok();
    let mut all_decoded = !summaries.is_empty();
    for s in &summaries {
        match (client::decode_histogram(&s.latency_histogram), merged.as_mut()) {
            (Some(h), Some(m)) => all_decoded &= m.add(&h).is_ok(),
            _ => all_decoded = false,
        }
    }
    match merged.filter(|h| all_decoded && !h.is_empty()) {
        Some(h) => {
            f.p50_response_us = h.value_at_quantile(0.50) as f64 / 1e3;
            f.p99_response_us = h.value_at_quantile(0.99) as f64 / 1e3;
        }
        // Without histograms, the worst host's figure is the honest bound.
        None => {
            f.p50_response_us = summaries.iter().map(|s| s.latency_p50_us).fold(0.0, f64::max);
            f.p99_response_us = summaries.iter().map(|s| s.latency_p99_us).fold(0.0, f64::max);
        }
    }
    if let Some(s) = &run.server {
        if f.requests > 0 {
            f.server_cpu_us_per_request = (s.cpu_user_s + s.cpu_sys_s) * 1e6 / f.requests as f64;
            f.server_syscalls_per_request = s.syscalls_total as f64 / f.requests as f64;
        }
        if let Some(logged) = run.server_log_rows {
            if logged as u64 != s.connections + s.rejected {
                f.problems.push(format!("server log has {logged} rows for {} connections", s.connections + s.rejected));
            }
        }
    } else {
        f.problems.push("no server summary (server did not exit cleanly)".into());
    }
    if run.clients.is_empty() || summaries.is_empty() {
        f.problems.push("no client output".into());
    }
    if f.errors > 0 {
        f.problems.push(format!("{} client errors", f.errors));
    }
    let expected = f.connections as u64 * f.requests_per_connection;
    if f.requests != expected {
        f.problems.push(format!("{} of {expected} requests verified", f.requests));
    }
    if f.connections != key.connections {
        f.problems.push(format!("{} connections reported for a {}-connection point", f.connections, key.connections));
    }
    f.ok = f.problems.is_empty();
    f
}

/// A headline figure over the repeats of one point.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Spread {
    pub mean: f64,
    pub min: f64,
    pub max: f64,
}

impl Spread {
    fn of(values: impl Iterator<Item = f64>) -> Spread {
        let v: Vec<f64> = values.collect();
        if v.is_empty() {
            return Spread::default();
        }
        Spread {
            mean: v.iter().sum::<f64>() / v.len() as f64,
            min: v.iter().copied().fold(f64::INFINITY, f64::min),
            max: v.iter().copied().fold(f64::NEG_INFINITY, f64::max),
        }
    }
}

/// One point of the sweep (backend × connections × size), over its repeats.
#[derive(Clone, Debug, PartialEq)]
pub struct Point {
    pub backend: String,
    pub connections: usize,
    pub size_bytes: usize,
    pub ok: bool,
    pub requests_per_connection: u64,
    pub repeats: usize,
    pub errors: u64,
    pub problems: Vec<String>,
    pub avg_total_duration_s: Spread,
    pub avg_response_time_s: Spread,
    pub throughput_rps: Spread,
    pub p50_response_us: Spread,
    pub p99_response_us: Spread,
    pub server_cpu_us_per_request: Spread,
    pub server_syscalls_per_request: Spread,
}

/// Groups runs into points, in backend order of first appearance in `order` (then by
/// name), then by size and connections.
pub fn points(runs: &BTreeMap<RunKey, Run>, order: &[String]) -> Vec<Point> {
    let mut groups: BTreeMap<(usize, String, usize, usize), Vec<RunFigures>> = BTreeMap::new();
    for (key, run) in runs {
        let rank = order.iter().position(|b| b == &key.backend).unwrap_or(order.len());
        groups.entry((rank, key.backend.clone(), key.size_bytes, key.connections)).or_default().push(figures(key, run));
    }
    let mut out: Vec<Point> = groups
        .into_iter()
        .map(|((_, backend, size_bytes, connections), figs)| {
            let s = |f: fn(&RunFigures) -> f64| Spread::of(figs.iter().map(f));
            Point {
                backend,
                connections,
                size_bytes,
                ok: figs.iter().all(|f| f.ok),
                requests_per_connection: figs.iter().map(|f| f.requests_per_connection).max().unwrap_or(0),
                repeats: figs.len(),
                errors: figs.iter().map(|f| f.errors).sum(),
                problems: figs.iter().flat_map(|f| f.problems.iter().cloned()).collect(),
                avg_total_duration_s: s(|f| f.avg_total_duration_s),
                avg_response_time_s: s(|f| f.avg_response_time_s),
                throughput_rps: s(|f| f.throughput_rps),
                p50_response_us: s(|f| f.p50_response_us),
                p99_response_us: s(|f| f.p99_response_us),
                server_cpu_us_per_request: s(|f| f.server_cpu_us_per_request),
                server_syscalls_per_request: s(|f| f.server_syscalls_per_request),
            }
        })
        .collect();
    // Sizes, then connections, ascending; backends keep their order within each.
    out.sort_by_key(|p| {
        (p.size_bytes, p.connections, order.iter().position(|b| b == &p.backend).unwrap_or(order.len()))
    });
    out
}

/// Rebuilds `overall.csv`, `summary.md` and `plots/` in `dir` from `dir/raw`; `order`
/// gives the backend order (empty: alphabetical). Returns the points.
pub fn build(dir: &Path, order: &[String]) -> anyhow::Result<Vec<Point>> {
    let runs = load_runs(&dir.join("raw"))?;
    anyhow::ensure!(
        !runs.is_empty(),
        "no runs in '{}' (expected files like epoll_c100_s64_r1.client-HOST.csv)",
        dir.join("raw").display()
    );
    let mut order = order.to_vec();
    if order.is_empty() {
        // epoll first, as the baseline every sentence compares against.
        let mut names: Vec<String> = runs.keys().map(|k| k.backend.clone()).collect();
        names.sort_by_key(|n| (n != "epoll", n.clone()));
        names.dedup();
        order = names;
    }
    let pts = points(&runs, &order);
    export::write_overall_csv(&dir.join("overall.csv"), &pts)?;
    export::write_overall_json(&dir.join("overall.json"), &pts)?;
    let env = export::read_env(dir);
    let caption = export::caption(&env);
    // Data is on disk; a chart that fails to render is reported and loses nothing.
    let charts = match charts::draw_all(&dir.join("plots"), &pts, &order, &caption) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("ringbench: charts not drawn: {e:#}");
            Vec::new()
        }
    };
    export::write_summary_md(&dir.join("summary.md"), &pts, &order, &charts, &env)?;
    Ok(pts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_keys_round_trip_with_hyphenated_backends() {
        let k = RunKey { backend: "uring-no-bufring".into(), connections: 1500, size_bytes: 64, repeat: 3 };
        assert_eq!(k.stem(), "uring-no-bufring_c1500_s64_r3");
        assert_eq!(RunKey::parse(&k.stem()), Some(k));
        assert_eq!(RunKey::parse("notes"), None);
        assert_eq!(RunKey::parse("_c1_s1_r1"), None);
    }

    #[test]
    fn spread_is_mean_min_max() {
        let s = Spread::of([1.0, 2.0, 6.0].into_iter());
        assert_eq!(s, Spread { mean: 3.0, min: 1.0, max: 6.0 });
        assert_eq!(Spread::of(std::iter::empty()), Spread::default());
    }
}
