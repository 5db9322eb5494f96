//! From runs to points: each run's figures (every metric, and whether the run counts),
//! then each point's spread over its repeats.

use std::collections::BTreeMap;

use hdrhistogram::Histogram;

use super::load::{ClientPart, Run};
use super::metrics::{index, Metric, RunView, METRICS};
use super::per_host::{self, HostFigures, HostPoint};
pub use super::stats::Spread;
use crate::results::{decode_histogram, ClientSummary, Pass, RunKey, ThreadRow};

/// The figures of one run, over all its client hosts.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RunFigures {
    pub ok: bool,
    pub connections: usize,
    pub requests_per_connection: u64,
    pub requests: u64,
    /// Requests the connections were to complete (their rounds × requests per round).
    pub expected: u64,
    pub errors: u64,
    /// One value per entry of [`METRICS`]; `None` is n/a.
    pub values: Vec<Option<f64>>,
    /// Why the run counts as failed (empty when ok).
    pub problems: Vec<String>,
    /// Open loop: whether it held its rate (`held`, `client-bound`, `saturated`).
    pub rate_status: Option<String>,
    /// The distribution charts show: corrected latency (open loop), else service time.
    pub spectrum: Option<Histogram<u64>>,
    /// Each client host's own figures, when there were several (merged ones only).
    pub hosts: Vec<HostFigures>,
}

/// One histogram of every host (`pick` chooses which), merged; `None` if a host lacks it.
fn merged(summaries: &[&ClientSummary], pick: fn(&ClientSummary) -> &str) -> Option<Histogram<u64>> {
    // Auto-resizing, so histograms of any range merge into it.
    let mut merged = Histogram::<u64>::new(3).ok()?;
    for s in summaries {
        merged.add(&decode_histogram(pick(s))?).ok()?;
    }
    (!summaries.is_empty()).then_some(merged)
}

/// The worst of the hosts' rate statuses: one host that fell behind is the run's verdict.
fn worst_status<'a>(statuses: impl Iterator<Item = &'a str>) -> Option<String> {
    let rank = |s: &str| match s {
        "held" => 0,
        "client-bound" => 1,
        _ => 2,
    };
    statuses.max_by_key(|s| rank(s)).map(String::from)
}

/// Computes a run's figures. Several client hosts are merged like the seed's two clients:
/// means over all their connections, throughputs added, latency histograms merged.
pub fn figures(key: &RunKey, run: &Run) -> RunFigures {
    // Hosts whose measured phases did not overlap are not merged: each is a problem.
    let (clients, dropped) = per_host::overlapping(&run.clients);
    let rows: Vec<&ThreadRow> = clients.iter().flat_map(|c| c.rows.iter()).collect();
    let summaries: Vec<&ClientSummary> = clients.iter().filter_map(|c| c.summary.as_ref()).collect();
    // Without per-connection rows (a run kept as summaries only), the hosts' own counts.
    let (requests, errors) = if rows.is_empty() {
        (summaries.iter().map(|s| s.requests).sum(), summaries.iter().map(|s| s.errors).sum())
    } else {
        (rows.iter().map(|r| r.requests).sum(), rows.iter().map(|r| r.errors).sum())
    };
    let open = summaries.iter().any(|s| s.target_rate_rps.is_some());
    let view = RunView {
        latency: merged(&summaries, |s| &s.latency_histogram),
        corrected: if open { merged(&summaries, |s| &s.corrected_histogram) } else { None },
        lateness: if open { merged(&summaries, |s| &s.lateness_histogram) } else { None },
        rows,
        summaries,
        server: run.server.as_ref(),
        proc: run.proc.as_ref(),
        requests,
    };
    let mut f = RunFigures {
        connections: if view.summaries.is_empty() {
            view.rows.len()
        } else {
            view.summaries.iter().map(|s| s.connections).sum()
        },
        requests_per_connection: view.summaries.first().map_or(0, |s| s.requests_per_connection),
        requests,
        expected: 0,
        errors,
        // A syscall run gives syscalls only: tracing biases everything else it measures.
        values: METRICS
            .iter()
            .map(|m| if key.pass == Pass::Syscalls && !m.syscall_run { None } else { (m.of)(&view) })
            .collect(),
        rate_status: worst_status(view.summaries.iter().filter_map(|s| s.rate_status.as_deref())),
        ..RunFigures::default()
    };
    f.spectrum = if open { view.corrected.clone() } else { view.latency.clone() };
    // Older client summaries do not say; their runs were one round.
    f.expected = if view.summaries.iter().all(|s| s.requests_expected > 0) && !view.summaries.is_empty() {
        view.summaries.iter().map(|s| s.requests_expected).sum()
    } else {
        f.connections as u64 * f.requests_per_connection
    };
    f.hosts = per_host::figures(&clients);
    f.problems = dropped;
    f.problems.extend(problems(key, run, &clients, &f));
    f.ok = f.problems.is_empty();
    f
}

/// Why a run does not count: a server that never ran, lost bytes or requests, and — for
/// ringbench's backends, which keep them — a missing or incomplete server log. An external
/// server's status comes from the client's byte verification alone.
fn problems(key: &RunKey, run: &Run, clients: &[&ClientPart], f: &RunFigures) -> Vec<String> {
    let mut p = Vec::new();
    if let Some(e) = run.proc.as_ref().and_then(|r| r.error.as_ref()) {
        // Nothing else about the run means anything then.
        return vec![format!("server did not start: {e}")];
    }
    let external = run.proc.as_ref().is_some_and(|r| r.kind == "target");
    match &run.server {
        Some(s) => {
            // The rows in the log file; kept as summaries only, the server's own count.
            let logged = run.server_log_rows.map_or(s.log_rows, |n| n as u64);
            if logged != s.connections + s.rejected {
                p.push(format!("server log has {logged} rows for {} connections", s.connections + s.rejected));
            }
            if s.log_rows_lost > 0 {
                p.push(format!("server could not write {} log rows", s.log_rows_lost));
            }
        }
        None if external => {}
        None => p.push("no server summary (server did not exit cleanly)".into()),
    }
    if clients.iter().all(|c| c.summary.is_none()) {
        p.push("no client output".into());
    }
    if f.errors > 0 {
        let first = clients.iter().flat_map(|c| c.rows.iter()).find(|r| r.errors > 0);
        let why = first.map_or(String::new(), |r| format!(" (first: {})", r.error));
        p.push(format!("{} client errors{why}", f.errors));
    }
    if f.requests != f.expected {
        p.push(format!("{} of {} requests verified", f.requests, f.expected));
    }
    if f.connections != key.connections {
        p.push(format!("{} connections reported for a {}-connection point", f.connections, key.connections));
    }
    p
}

/// One point of the sweep (backend × connections × size), over its repeats.
#[derive(Clone, Debug, PartialEq)]
pub struct Point {
    pub backend: String,
    pub connections: usize,
    pub size_bytes: usize,
    /// The open-loop rate offered (`None`: a closed loop).
    pub rate: Option<u64>,
    /// Open loop: the worst rate status over its repeats.
    pub rate_status: Option<String>,
    /// Its measured repeats' latency (corrected in an open loop), merged, for spectra.
    pub spectrum: Option<Histogram<u64>>,
    pub ok: bool,
    pub requests_per_connection: u64,
    pub repeats: usize,
    pub errors: u64,
    pub problems: Vec<String>,
    /// One spread per entry of [`METRICS`]; `None` is n/a.
    pub values: Vec<Option<Spread>>,
    /// Each client host's figures, when the runs had several.
    pub hosts: Vec<HostPoint>,
}

impl Point {
    /// Whether `o` is at the same place in the sweep (connections, size, rate), so the
    /// two compare.
    pub fn same_place(&self, o: &Point) -> bool {
        self.connections == o.connections && self.size_bytes == o.size_bytes && self.rate == o.rate
    }

    /// The point held its open-loop rate (a closed loop always "holds").
    pub fn held(&self) -> bool {
        self.rate_status.as_deref().is_none_or(|s| s == "held")
    }

    /// The point's spread of `m`, if it has one.
    pub fn get(&self, m: &Metric) -> Option<&Spread> {
        self.values.get(index(m)).and_then(Option::as_ref)
    }
}

/// A point's identity in sort order: backend rank and name, size, connections, rate.
type PointKey = (usize, String, usize, usize, Option<u64>);

/// Groups runs into points, in backend order of first appearance in `order` (then by
/// name), then by size and connections.
pub fn points(runs: &BTreeMap<RunKey, Run>, order: &[String]) -> Vec<Point> {
    let rank = |b: &str| order.iter().position(|x| x == b).unwrap_or(order.len());
    let mut groups: BTreeMap<PointKey, Vec<(&RunKey, RunFigures)>> = BTreeMap::new();
    for (key, run) in runs {
        let g = (rank(&key.backend), key.backend.clone(), key.size_bytes, key.connections, key.rate);
        groups.entry(g).or_default().push((key, figures(key, run)));
    }
    let mut out: Vec<Point> = groups
        .into_iter()
        .map(|((_, backend, size_bytes, connections, rate), figs)| Point {
            backend,
            connections,
            size_bytes,
            rate,
            rate_status: worst_status(figs.iter().filter_map(|(_, f)| f.rate_status.as_deref())),
            spectrum: figs
                .iter()
                .filter(|(k, _)| k.pass == Pass::Measure)
                .filter_map(|(_, f)| f.spectrum.as_ref())
                .fold(None, add_repeat),
            ok: figs.iter().all(|(_, f)| f.ok),
            requests_per_connection: figs.iter().map(|(_, f)| f.requests_per_connection).max().unwrap_or(0),
            repeats: figs.iter().filter(|(k, _)| k.pass == Pass::Measure).count(),
            errors: figs.iter().map(|(_, f)| f.errors).sum(),
            problems: unique(figs.iter().flat_map(|(_, f)| f.problems.iter().cloned())),
            values: (0..METRICS.len())
                .map(|i| Spread::of(figs.iter().filter_map(|(k, f)| f.values[i].map(|v| (k.repeat, v))).collect()))
                .collect(),
            hosts: per_host::over_repeats(
                figs.iter().filter(|(k, _)| k.pass == Pass::Measure).map(|(k, f)| (*k, f.hosts.as_slice())),
            ),
        })
        .collect();
    // Sizes, then connections, then rates, ascending; backends keep their order within each.
    out.sort_by_key(|p| (p.size_bytes, p.connections, p.rate, rank(&p.backend)));
    out
}

/// Adds one repeat's histogram to the point's (the first starts it).
fn add_repeat(all: Option<Histogram<u64>>, h: &Histogram<u64>) -> Option<Histogram<u64>> {
    match all {
        None => Some(h.clone()),
        Some(mut all) => {
            // Both are run histograms of the same precision; adding can only fail on a
            // value out of range, which an auto-resizing histogram does not have.
            let _ = all.add(h);
            Some(all)
        }
    }
}

/// Each distinct item once, in order of first appearance.
fn unique(items: impl Iterator<Item = String>) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for i in items {
        if !out.contains(&i) {
            out.push(i);
        }
    }
    out
}

/// The request sizes swept, ascending.
pub fn sizes(points: &[Point]) -> Vec<usize> {
    let mut s: Vec<usize> = points.iter().map(|p| p.size_bytes).collect();
    s.sort_unstable();
    s.dedup();
    s
}
