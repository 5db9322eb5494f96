//! `summary.md`: the answer at every point with how sure it is, why (with the probe's
//! costs of this machine), the machine, the full table, and the charts.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use super::charts::{charted, Chart, Kind};
use super::context::{caption, costs_line, probe_ns};
use super::metrics::{metric, Metric, METRICS};
use super::paired;
use super::points::{failed_pair, ratio};
use super::points::{sizes, Point};
use super::stats::Pairing;
use crate::files;
use crate::results::{Place, SliceLog};
use crate::workload::Workload;

/// How every ratio in the summary is computed, said once: for fresh servers, and for
/// paired slices.
const HOW_TO_READ_REPEATS: &str = "Each cell is the server's figure divided by the baseline's at the same \
    point: the geometric mean of the ratios of paired repeats (a fresh server per run, servers alternating \
    within each repeat), with a 95 % confidence interval from a Student t-interval on the logarithms of \
    those ratios. **≈** marks an interval that holds 1: no significant difference at that point.";
const HOW_TO_READ_SLICES: &str = "Each cell is the server's figure divided by the baseline's at the same \
    point, from paired slices (every server up side by side, short slices of load alternating between them \
    in rounds, in blocks that each start every server afresh). With enough blocks it is the mean of the \
    blocks' median ratios (the two start orders weighted alike) with a Student t 95 % interval over the \
    blocks: it covers the difference between \
    one pair of server processes and the next, and a pair that straddles a change of the machine's speed \
    regime moves its block's median little. A point run until its intervals were narrow enough takes their \
    width from its first stage of blocks alone (its first three or more rotations of blocks, as many as a \
    third of its budget was planned to hold: Stein's two stages), \
    so that stopping just when the blocks happen to agree does not leave its interval too narrow. \
    With too few blocks (the How sure table says where) it is the \
    median of the ratios of all pairs with their distribution-free sign-test interval, which is narrower \
    than the processes' spread. **≈** marks an interval that holds 1: no significant difference at that \
    point.";

pub fn write_summary_md(
    path: &Path,
    points: &[Point],
    slices: &BTreeMap<Place, SliceLog>,
    order: &[String],
    charts: &[Chart],
    env: &serde_json::Value,
    slo_ms: Option<f64>,
) -> anyhow::Result<()> {
    let mut md = String::new();
    let _ = writeln!(md, "# ringbench: {}\n", order.join(" vs "));
    let _ = writeln!(md, "_{}_\n", caption(env));
    if let Some(line) = costs_line(env) {
        let _ = writeln!(md, "_{line}_\n");
    }
    answer_section(&mut md, points, order);
    if let Some(base) = order.first() {
        paired::write_calibration(&mut md, points, base);
        paired::write_sureness(&mut md, points, slices, base);
    }
    slo_section(&mut md, points, order, slo_ms);
    why_section(&mut md, points, order, env);
    hosts_section(&mut md, points);
    machine_section(&mut md, env);
    overall_section(&mut md, points);
    let _ = writeln!(md, "\n## Charts\n");
    for c in charts {
        let _ = writeln!(md, "### {}\n", c.title);
        let _ = writeln!(md, "![{}](plots/{})\n", c.title, c.file);
        let _ = writeln!(md, "{}\n", c.note);
    }
    let expected: usize = sizes(points)
        .iter()
        .map(|&size| {
            let pts: Vec<&Point> = points.iter().filter(|p| p.size_bytes == size).collect();
            charted(&pts).count()
        })
        .sum();
    if charts.is_empty() {
        let _ = writeln!(md, "(no charts: see the message printed by the run; the data above is complete)\n");
    }
    let drawn = charts.iter().filter(|c| c.kind == Kind::Bars).count();
    let _ = writeln!(md, "Charts drawn: {drawn} of {expected}, and {} of ratios.", charts.len() - drawn);
    files::write_whole(path, md.as_bytes())
}

/// Every point's ratios to the baseline, one table per server.
fn answer_section(md: &mut String, points: &[Point], order: &[String]) {
    let Some(base) = order.first() else { return };
    if order.len() < 2 {
        return;
    }
    let _ = writeln!(md, "## The answer, point by point\n");
    let how = match (
        points.iter().any(|p| p.pairing == Pairing::Slices),
        points.iter().any(|p| p.pairing == Pairing::Repeats),
    ) {
        (true, true) => format!("{HOW_TO_READ_SLICES} At points run with fresh servers: {HOW_TO_READ_REPEATS}"),
        (true, false) => HOW_TO_READ_SLICES.to_string(),
        _ => HOW_TO_READ_REPEATS.to_string(),
    };
    let _ = writeln!(md, "{how} Lower is better for every column but req/s and MiB/s.\n");
    let place = PlaceColumns::of(points);
    // One table per server and workload: each workload has the columns it has figures of.
    for workload in workloads(points) {
        let here: Vec<&Point> = points.iter().filter(|p| p.workload == workload).collect();
        let cols: Vec<&Metric> = charted(&here).collect();
        let heads: Vec<&str> = cols.iter().map(|m| m.table.map_or(m.key, |t| t.0)).collect();
        let named = if workload == Workload::Rr && here.len() == points.len() {
            String::new()
        } else {
            format!(" — {}", workload.name())
        };
        for server in order.iter().skip(1) {
            let _ = writeln!(md, "### {server} ÷ {base}{named}\n");
            let _ = writeln!(md, "| {} | {} |", place.heads(), heads.join(" | "));
            let _ = writeln!(md, "|{}{}", place.rule(), "---|".repeat(cols.len()));
            answer_rows(md, points, &here, server, base, &place, &cols);
        }
    }
}

/// The rows of one server's answer table: each point's ratios, or `Fail` with a footnote.
fn answer_rows(
    md: &mut String,
    points: &[Point],
    here: &[&Point],
    server: &str,
    base: &str,
    place: &PlaceColumns,
    cols: &[&Metric],
) {
    {
        let mut footnotes = Vec::new();
        for p in here.iter().filter(|p| p.backend == server) {
            let cells: Vec<String> = match failed_pair(points, p, base) {
                Some(why) => {
                    footnotes.push(why);
                    vec![format!("Fail[^{}]", footnotes.len()); cols.len()]
                }
                None => cols.iter().map(|m| ratio(points, p, m, base).map_or("n/a".into(), |r| r.cell())).collect(),
            };
            let _ = writeln!(md, "| {} | {} |", place.cells(p), cells.join(" | "));
        }
        let _ = writeln!(md);
        for (i, why) in footnotes.iter().enumerate() {
            let _ = writeln!(md, "[^{}]: No ratio where a point failed: {why}.", i + 1);
        }
        if !footnotes.is_empty() {
            let _ = writeln!(md);
        }
    }
}

/// The workloads of a sweep, in sweep order.
pub fn workloads(points: &[Point]) -> Vec<Workload> {
    let mut w: Vec<Workload> = points.iter().map(|p| p.workload).collect();
    w.sort_unstable();
    w.dedup();
    w
}

/// The columns that say where a point is: connections and size, and the offered rate
/// with whether it held when the sweep has rates.
struct PlaceColumns {
    open: bool,
    /// Whether a workload other than rr ran (then every table names each point's).
    workloads: bool,
}

impl PlaceColumns {
    fn of(points: &[Point]) -> PlaceColumns {
        PlaceColumns {
            open: points.iter().any(|p| p.rate.is_some()),
            workloads: points.iter().any(|p| p.workload != Workload::Rr),
        }
    }

    fn heads(&self) -> String {
        let w = if self.workloads { "workload | " } else { "" };
        if self.open {
            format!("{w}conns | size B | offered req/s | rate")
        } else {
            format!("{w}conns | size B")
        }
    }

    fn rule(&self) -> String {
        let w = if self.workloads { "---|" } else { "" };
        if self.open {
            format!("{w}---:|---:|---:|---|")
        } else {
            format!("{w}---:|---:|")
        }
    }

    fn cells(&self, p: &Point) -> String {
        let w = if self.workloads { format!("{} | ", p.workload.name()) } else { String::new() };
        match (self.open, p.rate) {
            (true, Some(r)) => {
                format!("{w}{} | {} | {r} | {}", p.connections, p.size_bytes, p.rate_status.as_deref().unwrap_or("n/a"))
            }
            (true, None) => format!("{w}{} | {} | closed loop | —", p.connections, p.size_bytes),
            (false, _) => format!("{w}{} | {}", p.connections, p.size_bytes),
        }
    }
}

/// With an SLO and an open-loop sweep: the highest offered rate each server held (it sent
/// at least 95 % of it, every byte verified) with its corrected p99 within the SLO, at
/// each connection count and size.
fn slo_section(md: &mut String, points: &[Point], order: &[String], slo_ms: Option<f64>) {
    let (Some(slo_ms), Some(p99)) = (slo_ms, metric("corrected_p99_us")) else { return };
    let open: Vec<&Point> = points.iter().filter(|p| p.rate.is_some()).collect();
    if open.is_empty() {
        return;
    }
    let _ = writeln!(md, "## Highest rate held within p99 ≤ {slo_ms} ms\n");
    let _ = writeln!(
        md,
        "The highest offered rate at which the server held the rate (sent at least 95 % of it, every byte \
         verified) and its p99 latency from the intended send — the mean over repeats — stayed within \
         {slo_ms} ms. \"none\": not even the lowest rate swept.\n"
    );
    let mut places: Vec<(usize, usize)> = open.iter().map(|p| (p.size_bytes, p.connections)).collect();
    places.sort_unstable();
    places.dedup();
    let servers: Vec<&String> = order.iter().filter(|b| open.iter().any(|p| &&p.backend == b)).collect();
    let names: Vec<&str> = servers.iter().map(|s| s.as_str()).collect();
    let _ = writeln!(md, "| conns | size B | {} |", names.join(" | "));
    let _ = writeln!(md, "|---:|---:|{}", "---:|".repeat(servers.len()));
    for (size, conns) in places {
        let cells: Vec<String> = servers
            .iter()
            .map(|b| {
                let mut held: Vec<u64> = open
                    .iter()
                    .filter(|p| &&p.backend == b && p.size_bytes == size && p.connections == conns)
                    .filter(|p| p.ok && p.held() && p.get(p99).is_some_and(|s| s.mean <= slo_ms * 1e3))
                    .filter_map(|p| p.rate)
                    .collect();
                held.sort_unstable();
                held.last().map_or("none".into(), |r| format!("{r} req/s"))
            })
            .collect();
        let _ = writeln!(md, "| {conns} | {size} | {} |", cells.join(" | "));
    }
    let _ = writeln!(md);
}

/// How much of each server's CPU difference from the baseline its syscall count explains:
/// syscalls saved per request × the probe's cost of a syscall, against the CPU actually
/// saved per request.
fn why_section(md: &mut String, points: &[Point], order: &[String], env: &serde_json::Value) {
    let Some(base) = order.first().filter(|_| order.len() > 1) else { return };
    let Some(syscall_ns) = probe_ns(env, "null_syscall") else {
        let why = if env.get("probe").is_none_or(|p| p.is_null()) {
            "the probe did not run (`--no-probe`, or it failed: see the sweep's output)".to_string()
        } else {
            "the probe could not measure a null syscall here".to_string()
        };
        let _ = writeln!(
            md,
            "## Why

No syscall cost to weigh the syscalls saved against: {why}.
"
        );
        return;
    };
    let (Some(cpu), Some(sys)) = (metric("server_cpu_us_per_request"), metric("server_syscalls_per_request")) else {
        return;
    };
    let _ = writeln!(md, "## Why\n");
    let _ = writeln!(
        md,
        "A syscall's entry and exit cost {syscall_ns:.0} ns on this machine (`ringbench probe`, a null syscall). \
         If the syscalls a server saves were all it saved, it would use (syscalls saved per request) × \
         {syscall_ns:.0} ns less CPU per request than {base}; the table puts that next to the CPU it \
         actually saved. What the syscall count does not explain is elsewhere: the TCP stack both pay, \
         wake-ups across CPUs, io_uring's own completion work, or another design (threads, an async \
         runtime).\n"
    );
    for server in order.iter().skip(1) {
        let rows: Vec<String> = points
            .iter()
            .filter(|p| &p.backend == server)
            .filter_map(|p| {
                if failed_pair(points, p, base).is_some() {
                    return Some(format!(
                        "| {} | Fail | Fail | Fail | Fail (see the answer's footnotes) |",
                        p.connections
                    ));
                }
                let b = super::points::baseline_of(points, p, base)?;
                let saved_sys = b.get(sys)?.mean - p.get(sys)?.mean;
                let saved_cpu_us = b.get(cpu)?.mean - p.get(cpu)?.mean;
                let predicted_us = saved_sys * syscall_ns / 1e3;
                let cpu_ratio = ratio(points, p, cpu, base);
                let share = explained(predicted_us, saved_cpu_us, cpu_ratio.is_some_and(|r| r.significant()));
                let measured =
                    cpu_ratio.map_or(format!("{saved_cpu_us:.2}"), |r| format!("{saved_cpu_us:.2} ({})", r.cell()));
                Some(format!("| {} | {saved_sys:.3} | {predicted_us:.2} | {measured} | {share} |", p.connections))
            })
            .collect();
        if rows.is_empty() {
            continue;
        }
        let _ = writeln!(md, "### {server} against {base}\n");
        let _ = writeln!(
            md,
            "| conns | syscalls saved per request | × {syscall_ns:.0} ns = µs predicted | CPU µs saved per request, measured (÷ {base} [95 % CI]) | explained by syscalls |"
        );
        let _ = writeln!(md, "|---:|---:|---:|---:|---:|");
        for r in rows {
            let _ = writeln!(md, "{r}");
        }
        let _ = writeln!(md);
    }
}

/// The share of a measured CPU saving that the syscalls saved would account for — only
/// where there is a difference to explain: the CPU ratio's interval leaves out 1 and the
/// two go the same way. Otherwise a share would be a ratio of noise.
fn explained(predicted_us: f64, saved_cpu_us: f64, significant: bool) -> String {
    if !significant {
        "— (no significant CPU difference)".into()
    } else if predicted_us * saved_cpu_us <= 0.0 {
        "— (the CPU difference goes the other way: not syscalls)".into()
    } else {
        format!("{:.0} %", 100.0 * predicted_us / saved_cpu_us)
    }
}

/// Each client host side by side with the merged totals, like the seed's two clients.
fn hosts_section(md: &mut String, points: &[Point]) {
    if points.iter().all(|p| p.hosts.is_empty()) {
        return;
    }
    let _ = writeln!(md, "## Client hosts\n");
    let _ = writeln!(
        md,
        "Each host's own figures (mean over repeats) beside the merged point: its connections, \
         its verified requests per second, the seed's AvgTotalDuration and AvgResponseTime over \
         its connections, and the p99 of its round trips. Hosts are merged only when their \
         measured phases overlapped by at least 90 % of the shorter, allowing 50 ms for the start.\n"
    );
    let _ = writeln!(
        md,
        "| server | conns | host | connections | req/s | AvgTotalDuration s | AvgResponseTime s | p99 ms |"
    );
    let _ = writeln!(md, "|---|---:|---|---:|---:|---:|---:|---:|");
    let mean = |p: &Point, key: &str| metric(key).and_then(|m| p.get(m)).map(|s| s.mean);
    for p in points.iter().filter(|p| !p.hosts.is_empty()) {
        let place = format!("{} | {}", p.backend, p.connections);
        for h in &p.hosts {
            let _ = writeln!(
                md,
                "| {place} | {} | {} | {:.0} | {:.4} | {:.6} | {:.2} |",
                h.label,
                h.connections,
                h.throughput_rps.mean,
                h.avg_total_duration_s.mean,
                h.avg_response_time_s.mean,
                h.p99_us.mean / 1e3
            );
        }
        let cell =
            |v: Option<f64>, scale: f64, digits: usize| v.map_or("n/a".into(), |v| format!("{:.*}", digits, v * scale));
        let _ = writeln!(
            md,
            "| {place} | **all, merged** | {} | {} | {} | {} | {} |",
            p.hosts.iter().map(|h| h.connections).sum::<usize>(),
            cell(mean(p, "throughput_rps"), 1.0, 0),
            cell(mean(p, "avg_total_duration_s"), 1.0, 4),
            cell(mean(p, "avg_response_time_s"), 1.0, 6),
            cell(mean(p, "p99_response_us"), 1e-3, 2),
        );
    }
    let _ = writeln!(md);
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
        "hypervisor",
        "mitigations",
        "cpus",
        "smt",
        "frequency_governor",
        "nofile_soft",
        "nofile_hard",
        "git_commit",
        "build_profile",
        "pinning",
        "started_utc",
    ] {
        if env.get(k).is_some() {
            let _ = writeln!(md, "| {k} | {} |", s(k));
        }
    }
    if let Some(f) = env.get("io_uring_features").and_then(|f| f.as_object()) {
        let feats: Vec<String> = f.iter().map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or(""))).collect();
        let _ = writeln!(md, "| io_uring features | {} |", feats.join(", "));
    }
    if let Some(costs) = env.pointer("/probe/costs").and_then(|c| c.as_array()) {
        let line: Vec<String> = costs
            .iter()
            .map(|c| format!("{} {:.0} ns", c["name"].as_str().unwrap_or("?"), c["median_ns"].as_f64().unwrap_or(0.0)))
            .collect();
        let _ = writeln!(md, "| probe (median) | {} |", line.join(", "));
    }
    if let Some(missing) = env.pointer("/probe/not_measured").and_then(|c| c.as_array()).filter(|m| !m.is_empty()) {
        let line: Vec<String> = missing
            .iter()
            .map(|c| format!("{}: {}", c["name"].as_str().unwrap_or("?"), c["why"].as_str().unwrap_or("?")))
            .collect();
        let _ = writeln!(md, "| probe, not measured | {} |", line.join("; "));
    }
    if let Some(st) = env.get("settings") {
        let _ = writeln!(md, "| settings | `{st}` |");
    }
    let _ = writeln!(md);
}

fn overall_section(md: &mut String, points: &[Point]) {
    let _ = writeln!(md, "## Overall\n");
    let place = PlaceColumns::of(points);
    let model = if place.open {
        "Latency at an offered rate is open-loop: each connection sends on its own schedule, one request in \
         flight; \"corrected\" counts from each request's intended send time (coordinated omission \
         corrected), the other latencies from its actual send. Closed-loop latency is one full round trip."
    } else {
        "Latency is closed-loop: each connection has one request in flight; each latency is one full round trip."
    };
    let _ = writeln!(
        md,
        "{model} Every echoed byte is verified.\n\
         CPU is the server process's, sampled over the measured phase; syscalls are the server's own count \
         (perf's for external servers), per verified request. Each figure is the mean ± standard deviation \
         over repeats; n/a: not measured for this server.\n"
    );
    // Columns no point has a value of (open-loop figures in a closed-loop sweep) are left out.
    let cols: Vec<(&Metric, &str, usize)> = METRICS
        .iter()
        .filter(|m| points.iter().any(|p| p.get(m).is_some()))
        .filter_map(|m| m.table.map(|(h, d)| (m, h, d)))
        .collect();
    let headers: Vec<&str> = cols.iter().map(|c| c.1).collect();
    let _ = writeln!(md, "| server | {} | status | {} | errors | repeats |", place.heads(), headers.join(" | "));
    let _ = writeln!(md, "|---|{}---|{}---:|---:|", place.rule(), "---:|".repeat(cols.len()));
    for p in points {
        let cells: Vec<String> = cols
            .iter()
            .map(|(m, _, d)| {
                p.get(m).map_or_else(|| "n/a".to_string(), |s| format!("{:.*} ± {:.*}", *d, s.mean, *d, s.sd))
            })
            .collect();
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} |",
            p.backend,
            place.cells(p),
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
            let at = p.rate.map_or(String::new(), |r| format!(", {r} req/s offered"));
            let _ = writeln!(md, "- {} at {} connections{at}: {}", p.backend, p.connections, p.problems.join("; "));
        }
    }
}
