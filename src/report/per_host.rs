//! Several client hosts in one run: which of them may be merged, and each host's own
//! figures beside the merged ones, as the seed compared its two client machines.
//!
//! Hosts are merged only when their measured phases overlapped: a host that started late
//! or ran on its own measured another load, and adding its throughput would describe a
//! load that never happened. Phases may differ in length (a rate-limited host takes longer
//! for the same requests), so the overlap is taken over the shorter of two phases: at
//! least [`OVERLAP_MIN`] of it must lie within the other, allowing [`START_SLACK_US`] for
//! the few milliseconds within which hosts start together — without it, a run of a few
//! milliseconds would fail on a skew of one.

use super::load::ClientPart;
use super::stats::Spread;
use crate::results::{ClientSummary, RunKey};

/// The share of the shorter phase that must lie within the other for two hosts to merge.
pub const OVERLAP_MIN: f64 = 0.9;

/// How far apart hosts may start and still count as started together (µs).
pub const START_SLACK_US: u64 = 50_000;

/// One host's figures in one run.
#[derive(Clone, Debug, PartialEq)]
pub struct HostFigures {
    pub label: String,
    pub connections: usize,
    pub throughput_rps: f64,
    pub avg_total_duration_s: f64,
    pub avg_response_time_s: f64,
    pub p99_us: f64,
}

/// One host's figures at one point, over the repeats.
#[derive(Clone, Debug, PartialEq)]
pub struct HostPoint {
    pub label: String,
    pub connections: usize,
    pub throughput_rps: Spread,
    pub avg_total_duration_s: Spread,
    pub avg_response_time_s: Spread,
    pub p99_us: Spread,
}

/// The measured phase in µs since the epoch, if the summary records it.
fn phase(s: &ClientSummary) -> Option<(u64, u64)> {
    (s.measured_start_unix_us > 0 && s.measured_end_unix_us >= s.measured_start_unix_us)
        .then_some((s.measured_start_unix_us, s.measured_end_unix_us))
}

/// How much of the shorter of two phases lies within the other, 0 to 1, a skew of up to
/// [`START_SLACK_US`] forgiven.
pub fn overlap(a: (u64, u64), b: (u64, u64)) -> f64 {
    let shorter = (a.1 - a.0).min(b.1 - b.0);
    // Negative when they are apart: then the gap counts against the slack.
    let common = a.1.min(b.1) as i128 - a.0.max(b.0) as i128;
    let forgiven = (common + i128::from(START_SLACK_US)).clamp(0, i128::from(shorter));
    if shorter == 0 {
        return f64::from(u8::from(common + i128::from(START_SLACK_US) >= 0));
    }
    forgiven as f64 / shorter as f64
}

/// The hosts that may be merged, and why each other one may not. The reference is the
/// host whose phase overlaps the others most; a host without recorded phase times (files
/// from before they were kept) is merged as before.
pub fn overlapping(clients: &[ClientPart]) -> (Vec<&ClientPart>, Vec<String>) {
    let phases: Vec<Option<(u64, u64)>> = clients.iter().map(|c| c.summary.as_ref().and_then(phase)).collect();
    let timed: Vec<(usize, (u64, u64))> = phases.iter().enumerate().filter_map(|(i, p)| p.map(|p| (i, p))).collect();
    if timed.len() < 2 {
        return (clients.iter().collect(), Vec::new());
    }
    let score = |a: (u64, u64)| timed.iter().map(|&(_, b)| overlap(a, b)).sum::<f64>();
    let reference = timed.iter().map(|&(_, p)| p).max_by(|a, b| score(*a).total_cmp(&score(*b)));
    let Some(reference) = reference else { return (clients.iter().collect(), Vec::new()) };
    let mut kept = Vec::new();
    let mut dropped = Vec::new();
    for (c, p) in clients.iter().zip(&phases) {
        match p.map(|p| overlap(p, reference)) {
            Some(o) if o < OVERLAP_MIN => dropped.push(format!(
                "client host {} not merged: its measured phase overlapped the others' by {:.0} % (< {:.0} %)",
                c.label,
                o * 100.0,
                OVERLAP_MIN * 100.0
            )),
            _ => kept.push(c),
        }
    }
    (kept, dropped)
}

/// Each host's figures, when a run has more than one.
pub fn figures(clients: &[&ClientPart]) -> Vec<HostFigures> {
    if clients.len() < 2 {
        return Vec::new();
    }
    clients
        .iter()
        .filter_map(|c| {
            let s = c.summary.as_ref()?;
            Some(HostFigures {
                label: c.label.clone(),
                connections: s.connections,
                throughput_rps: s.throughput_rps,
                avg_total_duration_s: s.avg_total_duration_s,
                avg_response_time_s: s.avg_response_time_s,
                p99_us: s.latency_p99_us,
            })
        })
        .collect()
}

/// Each host's figures over a point's repeats, hosts in order of first appearance.
pub fn over_repeats<'a>(runs: impl Iterator<Item = (&'a RunKey, &'a [HostFigures])> + Clone) -> Vec<HostPoint> {
    let mut labels: Vec<&str> = Vec::new();
    for (_, hosts) in runs.clone() {
        for h in hosts {
            if !labels.contains(&h.label.as_str()) {
                labels.push(&h.label);
            }
        }
    }
    labels
        .into_iter()
        .filter_map(|label| {
            let of = |pick: fn(&HostFigures) -> f64| {
                Spread::of(
                    runs.clone()
                        .filter_map(|(k, hosts)| hosts.iter().find(|h| h.label == label).map(|h| (k.repeat, pick(h))))
                        .collect(),
                )
            };
            let connections = runs.clone().flat_map(|(_, h)| h.iter()).find(|h| h.label == label)?.connections;
            Some(HostPoint {
                label: label.to_string(),
                connections,
                throughput_rps: of(|h| h.throughput_rps)?,
                avg_total_duration_s: of(|h| h.avg_total_duration_s)?,
                avg_response_time_s: of(|h| h.avg_response_time_s)?,
                p99_us: of(|h| h.p99_us)?,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlap_is_over_the_shorter_phase() {
        const S: u64 = 1_000_000;
        assert_eq!(overlap((0, S), (0, S)), 1.0);
        // A short host inside a long one (a rate-limited host takes longer): merged.
        assert_eq!(overlap((10 * S, 20 * S), (0, 1000 * S)), 1.0);
        // Half a second apart in one-second phases: the slack forgives 50 ms of it.
        assert_eq!(overlap((0, S), (S / 2, 3 * S / 2)), 0.55);
        assert_eq!(overlap((0, S), (2 * S, 3 * S)), 0.0);
        // A run of 2 ms with hosts 1 ms apart: started together.
        assert_eq!(overlap((0, 2_000), (1_000, 3_000)), 1.0);
        assert_eq!(overlap((5, 5), (0, 10)), 1.0);
    }
}
