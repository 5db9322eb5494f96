//! From runs to points: each run's figures (every metric, and whether the run counts),
//! then each point's spread over its repeats.

use std::collections::BTreeMap;

use hdrhistogram::Histogram;

use super::load::{ClientPart, Run};
use super::metrics::{index, Metric, RunView, METRICS};
use super::per_host::{self, HostFigures, HostPoint};
pub use super::stats::Spread;
use super::stats::{ratio_by, BlockSpan, Pairing, Ratio};
use crate::results::{decode_histogram, BlockRecord, ClientSummary, Pass, Place, RunKey, SliceLog, ThreadRow};
use crate::workload::Workload;

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

/// Like [`merged`], for a histogram only some runs have (crr's connects): `None` when no
/// host has it.
fn merged_nonempty(summaries: &[&ClientSummary], pick: fn(&ClientSummary) -> &str) -> Option<Histogram<u64>> {
    let with: Vec<&ClientSummary> = summaries.iter().copied().filter(|s| !pick(s).is_empty()).collect();
    merged(&with, pick)
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
/// means over all their connections, throughputs added, latency histograms merged. A
/// slice of a paired point (`slice`) has no server summary of its own: its server's log
/// and exit are its session's.
pub fn figures(key: &RunKey, run: &Run, slice: bool) -> RunFigures {
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
    let connect = merged_nonempty(&summaries, |s| &s.connect_histogram);
    let view = RunView {
        latency: merged(&summaries, |s| &s.latency_histogram),
        corrected: if open { merged(&summaries, |s| &s.corrected_histogram) } else { None },
        lateness: if open { merged(&summaries, |s| &s.lateness_histogram) } else { None },
        rows,
        summaries,
        server: run.server.as_ref(),
        proc: run.proc.as_ref(),
        requests,
        connect,
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
    f.problems.extend(problems(key, run, &clients, &f, slice));
    f.ok = f.problems.is_empty();
    f
}

/// Why a run does not count: a server that never ran, lost bytes or requests, and — for
/// ringbench's backends, which keep them — a missing or incomplete server log. An external
/// server's status comes from the client's byte verification alone.
fn problems(key: &RunKey, run: &Run, clients: &[&ClientPart], f: &RunFigures, slice: bool) -> Vec<String> {
    let mut p = Vec::new();
    if let Some(e) = run.proc.as_ref().and_then(|r| r.error.as_ref()) {
        // Nothing else about the run means anything then.
        return vec![format!("server did not start: {e}")];
    }
    if !slice {
        p.extend(server_problems(run));
    }
    if clients.iter().all(|c| c.summary.is_none()) {
        p.push("no client output".into());
    }
    if f.errors > 0 {
        let first = clients.iter().flat_map(|c| c.rows.iter()).find(|r| r.errors > 0).map(|r| r.error.clone());
        // A paired slice keeps summaries only: each says its first error.
        let first = first.or_else(|| clients.iter().find_map(|c| c.summary.as_ref()?.first_error.clone()));
        let why = first.map_or(String::new(), |e| format!(" (first: {e})"));
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

/// What a ringbench backend's own records say is wrong: its log has a row for every
/// connection it saw, it lost none, and it exited cleanly. An external server keeps no
/// such records.
fn server_problems(run: &Run) -> Vec<String> {
    let mut p = Vec::new();
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
    p
}

/// What a paired point's session of one server says is wrong: it did not start, its own
/// records (log, exit), or what the sweep saw go wrong with it (a client host that failed).
fn session_problems(name: &str, run: &Run, log: Option<&SliceLog>) -> Vec<String> {
    if let Some(e) = run.proc.as_ref().and_then(|r| r.error.as_ref()) {
        return vec![format!("server did not start: {e}")];
    }
    let mut p = server_problems(run);
    if let Some(r) = run.proc.as_ref().filter(|r| r.kind == "ringbench" && !r.exit.is_empty() && r.exit != "exit 0") {
        p.push(format!("server {}", r.exit));
    }
    let prefix = format!("{name}: ");
    p.extend(log.iter().flat_map(|l| l.failures.iter()).filter_map(|f| f.strip_prefix(&prefix)).map(String::from));
    // The idle crowd echoes once as the session closes: one that did not was dropped.
    for s in run.clients.iter().filter_map(|c| c.summary.as_ref()) {
        if s.idle_echoed < s.idle_connections {
            let first = s.first_error.as_deref().map_or(String::new(), |e| format!(" (first: {e})"));
            p.push(format!(
                "{} of {} idle connections did not echo at the end{first}",
                s.idle_connections - s.idle_echoed,
                s.idle_connections
            ));
        }
    }
    p
}

/// One point of the sweep (backend × connections × size), over its repeats.
#[derive(Clone, Debug, PartialEq)]
pub struct Point {
    pub backend: String,
    /// What each connection did.
    pub workload: Workload,
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
    /// How its runs were paired with the baseline's, and so which estimator its ratios use.
    pub pairing: Pairing,
    /// Paired slices: rounds left out because an idle server's CPU moved during them.
    pub rounds_left_out: usize,
    /// Paired slices: the point's blocks (each started every server afresh).
    pub blocks: Vec<BlockRecord>,
    /// Paired slices: how many of them are the first stage (0: one stage).
    pub first_stage_blocks: usize,
}

impl Point {
    /// Where it is in the sweep.
    pub fn place(&self) -> Place {
        Place { workload: self.workload, connections: self.connections, size_bytes: self.size_bytes, rate: self.rate }
    }

    /// Whether `o` is at the same place in the sweep (connections, size, rate), so the
    /// two compare.
    pub fn same_place(&self, o: &Point) -> bool {
        self.place() == o.place()
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
type PointKey = (usize, String, usize, Workload, usize, Option<u64>);

/// Groups runs into points, in backend order of first appearance in `order` (then by
/// name), then by size and connections. Points with a slice log are paired slices: their
/// sessions' problems are theirs, and rounds an idle server disturbed are left out.
pub fn points(runs: &BTreeMap<RunKey, Run>, slices: &BTreeMap<Place, SliceLog>, order: &[String]) -> Vec<Point> {
    let rank = |b: &str| order.iter().position(|x| x == b).unwrap_or(order.len());
    let mut groups: BTreeMap<PointKey, Group> = BTreeMap::new();
    for (key, run) in runs {
        let g = (rank(&key.backend), key.backend.clone(), key.size_bytes, key.workload, key.connections, key.rate);
        let log = slices.get(&key.place());
        let group = groups.entry(g).or_default();
        match (key.pass, log) {
            (Pass::Session, _) => group.problems.extend(session_problems(&key.backend, run, log)),
            (Pass::Measure, Some(l)) if l.disturbed_rounds().contains(&key.repeat) => group.left_out += 1,
            _ => group.figs.push((key, figures(key, run, log.is_some()))),
        }
    }
    let mut out: Vec<Point> = groups
        .into_iter()
        .map(|((_, backend, size_bytes, workload, connections, rate), g)| {
            let figs = g.figs;
            let place = Place { workload, connections, size_bytes, rate };
            let mut problems = g.problems;
            problems.extend(figs.iter().flat_map(|(_, f)| f.problems.iter().cloned()));
            Point {
                backend,
                workload,
                connections,
                size_bytes,
                rate,
                rate_status: worst_status(figs.iter().filter_map(|(_, f)| f.rate_status.as_deref())),
                spectrum: figs
                    .iter()
                    .filter(|(k, _)| k.pass == Pass::Measure)
                    .filter_map(|(_, f)| f.spectrum.as_ref())
                    .fold(None, add_repeat),
                ok: problems.is_empty() && figs.iter().any(|(k, _)| k.pass == Pass::Measure),
                requests_per_connection: figs.iter().map(|(_, f)| f.requests_per_connection).max().unwrap_or(0),
                repeats: figs.iter().filter(|(k, _)| k.pass == Pass::Measure).count(),
                errors: figs.iter().map(|(_, f)| f.errors).sum(),
                problems: unique(problems.into_iter()),
                values: (0..METRICS.len())
                    .map(|i| Spread::of(figs.iter().filter_map(|(k, f)| f.values[i].map(|v| (k.repeat, v))).collect()))
                    .collect(),
                hosts: per_host::over_repeats(
                    figs.iter().filter(|(k, _)| k.pass == Pass::Measure).map(|(k, f)| (*k, f.hosts.as_slice())),
                ),
                pairing: if slices.contains_key(&place) { Pairing::Slices } else { Pairing::Repeats },
                rounds_left_out: g.left_out,
                blocks: slices.get(&place).map(|l| l.blocks.clone()).unwrap_or_default(),
                first_stage_blocks: slices.get(&place).map_or(0, |l| l.first_stage_blocks),
            }
        })
        .collect();
    // Sizes, then workloads, connections and rates, ascending; backends keep their order
    // within each.
    out.sort_by_key(|p| (p.size_bytes, p.workload, p.connections, p.rate, rank(&p.backend)));
    out
}

/// The runs of one point, and what its sessions (paired slices) say is wrong.
#[derive(Default)]
struct Group<'a> {
    figs: Vec<(&'a RunKey, RunFigures)>,
    problems: Vec<String>,
    left_out: usize,
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

/// The point of `base` that `p` is compared with (same connections, size and rate).
pub fn baseline_of<'a>(points: &'a [Point], p: &Point, base: &str) -> Option<&'a Point> {
    points.iter().find(|q| q.backend == base && q.same_place(p))
}

/// `p`'s figure `m` against the baseline's, paired by repeat (or round), with the
/// estimator of the way the point was run.
///
/// A point that failed — or whose baseline did — has no ratio: a server that echoed wrong
/// bytes is not "faster", whatever its clock says.
pub fn ratio(points: &[Point], p: &Point, m: &Metric, base: &str) -> Option<Ratio> {
    let b = baseline_of(points, p, base)?;
    if !p.ok || !b.ok {
        return None;
    }
    ratio_by(p.pairing, b.get(m)?, p.get(m)?, &block_spans(&p.blocks, p.first_stage_blocks, base, &p.backend))
}

/// A paired point's blocks as the comparison of `other` with `base` sees them: each
/// block's rounds, whether `base` started first in it, and whether it is one of the
/// first `first_stage` blocks — marked only once that many have run (until then a
/// point has one stage).
pub fn block_spans(blocks: &[BlockRecord], first_stage: usize, base: &str, other: &str) -> Vec<BlockSpan> {
    let staged = first_stage > 0 && blocks.len() >= first_stage;
    blocks
        .iter()
        .enumerate()
        .filter(|(_, b)| b.last_round >= b.first_round)
        .map(|(i, b)| {
            let at = |name: &str| b.start_order.iter().position(|s| s == name);
            BlockSpan {
                first_round: b.first_round,
                last_round: b.last_round,
                base_first: at(base) < at(other),
                first_stage: staged && i < first_stage,
            }
        })
        .collect()
}

/// Why `p` has no ratios against the baseline, when it or the baseline failed there.
pub fn failed_pair(points: &[Point], p: &Point, base: &str) -> Option<String> {
    let b = baseline_of(points, p, base);
    let why = |q: &Point| format!("{} failed at {} connections: {}", q.backend, q.connections, q.problems.join("; "));
    match b {
        _ if !p.ok => Some(why(p)),
        Some(b) if !b.ok => Some(why(b)),
        None => None,
        Some(_) => None,
    }
}
