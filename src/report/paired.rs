//! How sure a sweep of paired slices is, place by place: how many rounds ran and why they
//! stopped, the precision the headline intervals reached, the rounds in which the machine
//! changed speed regime (every server's CPU per request moved together, far more than the
//! pairs' spread), the pairs that straddled such a change, and the servers set apart for
//! using CPU while idle. And the A/A calibration: whether the baseline's twin held 1.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use super::metrics::{metric, Metric};
use super::points::ratio;
use super::points::Point;
use super::stats::{median, paired_logs, robust_sd, Pairing};
use crate::results::{aa_name, Place, SliceLog};

/// A round is in another regime when the servers' common level is this far (or four of
/// the pairs' robust spreads, if more) from the point's usual level.
const REGIME_SHIFT: f64 = 1.10;
/// A pair straddled a switch when its ratio is this far (or four robust spreads) from
/// the median ratio.
const STRADDLE_SHIFT: f64 = 1.02;

/// Steal above this share of the server's or the client's CPUs is called out.
const SHARED_MACHINE: f64 = 0.05;

/// How sure one paired place is.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PlaceSure {
    pub place: Option<Place>,
    pub rounds: usize,
    pub left_out: usize,
    pub slice_s: f64,
    /// The widest headline interval (CPU/request, req/s against the baseline), ± fraction.
    pub precision: Option<f64>,
    pub target: Option<f64>,
    pub stopped: String,
    /// Rounds in another speed regime, and the range of their levels (× the usual).
    pub regime_rounds: usize,
    pub regime_levels: Option<(f64, f64)>,
    /// Pairs whose ratio was an outlier (a switch between its two slices).
    pub straddling: usize,
    pub isolated: Vec<String>,
    /// The blocks the point ran in, and the rounds of each.
    pub blocks: usize,
    pub block_rounds: usize,
    /// Whether every headline interval here was taken over blocks (`false`: some over
    /// pairs alone, for want of blocks).
    pub over_blocks: bool,
    /// The share of the server's CPUs' time and of the client's that the hypervisor gave
    /// to someone else during the slices (`None` for a log from before it was read).
    pub stolen: Option<(f64, f64)>,
    /// Wall time of the point, its blocks' start-ups included.
    pub elapsed_s: f64,
}

impl PlaceSure {
    /// For a point that stopped on its budget short of its target, over blocks: about how
    /// long it would have needed (see [`time_for_precision`]).
    pub fn time_needed_s(&self) -> Option<f64> {
        time_needed_s(&self.stopped, self.over_blocks, self.elapsed_s, self.precision?, self.target?)
    }
}

/// For a point that stopped on `stopped` at `reached` in `elapsed_s`: about how long it
/// would have needed for `target` — only where time was what it lacked and its interval is
/// over blocks (one over pairs alone has no blocks' spread to scale).
pub fn time_needed_s(stopped: &str, over_blocks: bool, elapsed_s: f64, reached: f64, target: f64) -> Option<f64> {
    (stopped == "budget" && over_blocks).then(|| time_for_precision(elapsed_s, reached, target)).flatten()
}

/// About how long a point that reached `reached` (± fraction) in `elapsed_s` would need to
/// reach `target`, at the spread its blocks showed: an interval over blocks narrows as one
/// over the root of their number (a two-stage interval's spread and t are fixed by its
/// first stage), and each block costs about the same time. Rounded up to 10 s. An
/// estimate: the machine's noise moves, and with it the blocks' spread.
pub fn time_for_precision(elapsed_s: f64, reached: f64, target: f64) -> Option<f64> {
    (reached > target && target > 0.0 && elapsed_s > 0.0)
        .then(|| (elapsed_s * (reached / target).powi(2) / 10.0).ceil() * 10.0)
}

fn headline() -> Vec<&'static Metric> {
    ["server_cpu_us_per_request", "throughput_rps"].iter().filter_map(|k| metric(k)).collect()
}

/// The widest headline interval of `p` against the baseline, as a ± fraction; `None`
/// for the baseline itself, or while an interval is missing.
pub fn point_precision(points: &[Point], p: &Point, base: &str) -> Option<f64> {
    if p.backend == base {
        return None;
    }
    let mut worst = None::<f64>;
    for m in headline() {
        let h = ratio(points, p, m, base)?.half_width()?;
        worst = Some(worst.map_or(h, |w| w.max(h)));
    }
    worst
}

/// Every paired place, in sweep order.
pub fn places(points: &[Point], logs: &BTreeMap<Place, SliceLog>, base: &str) -> Vec<PlaceSure> {
    let cpu = metric("server_cpu_us_per_request");
    logs.iter()
        .map(|(place, log)| {
            let here: Vec<&Point> = points.iter().filter(|p| p.place() == *place).collect();
            let precision = here
                .iter()
                .filter(|p| p.backend != base)
                .map(|p| point_precision(points, p, base))
                .try_fold(None::<f64>, |w, h| h.map(|h| Some(w.map_or(h, |w| w.max(h)))))
                .flatten();
            let (regime_rounds, regime_levels, straddling) = cpu.map_or((0, None, 0), |m| regimes(&here, m, base));
            let over_blocks = here
                .iter()
                .filter(|p| p.backend != base)
                .flat_map(|p| headline().into_iter().map(move |m| ratio(points, p, m, base)))
                .all(|r| r.is_some_and(|r| r.blocks > 0));
            PlaceSure {
                place: Some(*place),
                rounds: log.rounds,
                left_out: log.disturbed_rounds().len(),
                slice_s: log.slice_s,
                precision,
                target: log.precision_target,
                stopped: stopped_now(&log.stopped, precision, log.precision_target),
                regime_rounds,
                regime_levels,
                straddling,
                isolated: log
                    .isolated
                    .iter()
                    .map(|i| format!("{} from round {}: {}", i.server, i.from_round, i.why))
                    .collect(),
                blocks: log.blocks.len(),
                block_rounds: block_rounds(log),
                over_blocks,
                stolen: log.stolen_shares(),
                elapsed_s: log.elapsed_s,
            }
        })
        .collect()
}

/// Rounds per block: as logged, or for a log written before blocks had a fixed length,
/// the longest block's.
fn block_rounds(log: &SliceLog) -> usize {
    if log.block_rounds > 0 {
        return log.block_rounds;
    }
    log.blocks.iter().map(|b| (b.last_round + 1).saturating_sub(b.first_round)).max().unwrap_or(0)
}

const REACHED_BY_THE_RUN: &str = "precision reached by the run's estimator, not this one";

/// Why a point stopped, as logged — unless the run's own estimator said the precision was
/// reached and this one finds the intervals wider (a log from an older version, rebuilt
/// by `report`): then that is said, rather than a precision the table contradicts.
fn stopped_now(logged: &str, precision: Option<f64>, target: Option<f64>) -> String {
    match (precision, target) {
        (Some(p), Some(t)) if logged == "precision reached" && p > t => REACHED_BY_THE_RUN.to_string(),
        _ => logged.to_string(),
    }
}

/// Rounds in another regime (with the range of their levels) and straddling pairs, from
/// every server's figure `m` at one place.
fn regimes(here: &[&Point], m: &Metric, base: &str) -> (usize, Option<(f64, f64)>, usize) {
    let Some(b) = here.iter().find(|p| p.backend == base).and_then(|p| p.get(m)) else { return (0, None, 0) };
    let others: Vec<_> = here.iter().filter(|p| p.backend != base).filter_map(|p| p.get(m)).collect();
    let pairs: Vec<Vec<f64>> = others.iter().map(|o| paired_logs(b, o)).collect();
    let spread = robust_sd(&pairs.iter().flatten().copied().collect::<Vec<_>>());
    // Each round's level: the mean over servers of the log of their value over their median.
    let mut by_round: BTreeMap<usize, Vec<f64>> = BTreeMap::new();
    for s in std::iter::once(b).chain(others.iter().copied()) {
        let med = median(&s.samples.iter().map(|x| x.1).collect::<Vec<_>>());
        for &(r, v) in s.samples.iter().filter(|x| x.1 > 0.0 && med > 0.0) {
            by_round.entry(r).or_default().push((v / med).ln());
        }
    }
    let levels: Vec<f64> = by_round.values().map(|v| v.iter().sum::<f64>() / v.len() as f64).collect();
    let usual = median(&levels);
    let shift = REGIME_SHIFT.ln().max(4.0 * spread);
    let off: Vec<f64> = levels.iter().filter(|l| (*l - usual).abs() > shift).map(|l| (l - usual).exp()).collect();
    let range = off.iter().copied().reduce(f64::min).zip(off.iter().copied().reduce(f64::max));
    let straddle = STRADDLE_SHIFT.ln().max(4.0 * spread);
    let straddling =
        pairs.iter().map(|ls| ls.iter().filter(|l| (*l - median(ls)).abs() > straddle).count()).sum::<usize>();
    (off.len(), range, straddling)
}

/// summary.md's section on how sure paired slices are, place by place.
pub fn write_sureness(md: &mut String, points: &[Point], logs: &BTreeMap<Place, SliceLog>, base: &str) {
    let sure = places(points, logs, base);
    if sure.is_empty() {
        return;
    }
    let _ = writeln!(md, "## How sure: paired slices\n");
    let _ = writeln!(
        md,
        "Every server ran side by side for the whole point, each with its own client connected; short slices \
         of load alternated between them in rounds, each block's rounds in its start order (no server twice in a row). Rounds ran in \
         **blocks**, each starting every server afresh in a rotated order, blocks in whole rotations. A ratio \
         is the mean of the blocks' median paired ratios with a Student t 95 % interval over blocks (start \
         order taken out); **interval over** says \
         `pairs` where blocks were too few for that (the interval is then over pairs alone and does not \
         cover the spread between server processes — read it as narrower than it is). **Precision** is the \
         widest headline interval (CPU per request and req/s against {base}) as ±; **regime changes** are \
         rounds in which every server's CPU per request moved together by more than {:.0} % (or four of the \
         pairs' spreads) from the point's usual level — the machine, not a server; **straddling pairs** are \
         pairs whose ratio was an outlier (a switch between their two slices), which a median does not \
         follow. Rounds during which an idle server's CPU moved are left out. **CPU stolen** is the share of \
         the server's CPUs' time · the client's that the hypervisor gave to other guests during the slices \
         (`/proc/stat` steal): with paravirtual time accounting no server's CPU clock counts it, but \
         requests wait through it, so where it is more than a few % the pairs scatter and intervals widen — \
         the machine, not the servers.\n",
        (REGIME_SHIFT - 1.0) * 100.0
    );
    let _ = writeln!(
        md,
        "| conns | size B | rate | slice s | rounds | blocks × rounds | left out | precision | interval over | target | stopped on | regime changes | straddling pairs | CPU stolen |"
    );
    let _ = writeln!(md, "|---:|---:|---|---:|---:|---:|---:|---:|---|---:|---|---|---:|---:|");
    for s in &sure {
        let Some(p) = s.place else { continue };
        let pct = |x: Option<f64>| x.map_or("n/a".to_string(), |x| format!("±{:.1} %", x * 100.0));
        let regimes = match s.regime_levels {
            Some((lo, hi)) => format!("{} ({lo:.2}–{hi:.2}× the usual)", s.regime_rounds),
            None => s.regime_rounds.to_string(),
        };
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} × {} | {} | {} | {} | {} | {} | {regimes} | {} | {} |",
            p.connections,
            p.size_bytes,
            p.rate.map_or("closed".into(), |r| r.to_string()),
            s.slice_s,
            s.rounds,
            s.blocks,
            s.block_rounds,
            s.left_out,
            pct(s.precision),
            if s.over_blocks { "blocks" } else { "pairs" },
            pct(s.target),
            s.stopped,
            s.straddling,
            s.stolen.map_or("n/a".into(), |(srv, cli)| format!("{:.0} % · {:.0} %", srv * 100.0, cli * 100.0))
        );
    }
    let budget: Vec<String> = sure
        .iter()
        .filter(|s| s.stopped == "budget" || s.stopped == "max rounds" || s.stopped == REACHED_BY_THE_RUN)
        .filter_map(|s| {
            let p = s.place?;
            Some(match (s.time_needed_s(), s.target) {
                (Some(t), Some(target)) => {
                    format!("{} connections ({}; ±{:.1} % in about {t:.0} s)", p.connections, s.stopped, target * 100.0)
                }
                _ => format!("{} connections ({})", p.connections, s.stopped),
            })
        })
        .collect();
    if !budget.is_empty() {
        let _ = write!(md, "\nStopped before reaching the precision asked for: {}.", budget.join(", "));
        match sure.iter().filter_map(PlaceSure::time_needed_s).reduce(f64::max) {
            Some(t) => {
                let _ = writeln!(
                    md,
                    " The times are estimated from the spread each point's blocks showed (intervals narrow as one over \
                     the root of the blocks); a sweep with `--budget-s {t:.0}` gives each of them its time."
                );
            }
            None => {
                let _ = writeln!(md);
            }
        }
    }
    let shared: Vec<String> = sure
        .iter()
        .filter_map(|s| Some((s.place?, s.stolen?)))
        .filter(|(_, (srv, cli))| srv.max(*cli) > SHARED_MACHINE)
        .map(|(p, (srv, cli))| format!("{} connections ({:.0} % · {:.0} %)", p.connections, srv * 100.0, cli * 100.0))
        .collect();
    if !shared.is_empty() {
        let _ = writeln!(
            md,
            "\n**The machine was shared while it measured**: the hypervisor took more than {:.0} % of the server's \
             or the client's CPUs at {}. Wide intervals there are its noise; a run at a quieter time narrows them.",
            SHARED_MACHINE * 100.0,
            shared.join(", ")
        );
    }
    let isolated: Vec<String> = sure
        .iter()
        .flat_map(|s| s.isolated.iter().map(move |i| (s.place, i)))
        .filter_map(|(p, i)| p.map(|p| format!("- at {} connections: {i}", p.connections)))
        .collect();
    if !isolated.is_empty() {
        let _ = writeln!(
            md,
            "\nServers set apart (stopped with SIGSTOP outside their own slices, because they used CPU while \
             not loaded and would have taken it from the server being measured):\n\n{}",
            isolated.join("\n")
        );
    }
    let _ = writeln!(md);
}

/// summary.md's A/A section: did the baseline's second instance hold 1 at every point?
pub fn write_calibration(md: &mut String, points: &[Point], base: &str) {
    let twin = aa_name(base);
    let twins: Vec<&Point> = points.iter().filter(|p| p.backend == twin).collect();
    if twins.is_empty() {
        return;
    }
    let _ = writeln!(md, "## Calibration (A/A): {twin} ÷ {base}\n");
    let _ = writeln!(
        md,
        "{twin} is a second instance of {base}, run as a server of its own: every interval should hold 1. One \
         that does not says the sweep can see a difference where there is none, by at least that much.\n"
    );
    let _ = writeln!(md, "| conns | size B | CPU/request | req/s | held 1 |");
    let _ = writeln!(md, "|---:|---:|---|---|---|");
    let mut held = 0;
    for p in &twins {
        let cells: Vec<Option<super::stats::Ratio>> = headline().iter().map(|m| ratio(points, p, m, base)).collect();
        let ok = cells.iter().all(|r| r.is_some_and(|r| r.holds_one()));
        held += usize::from(ok);
        let show = |r: &Option<super::stats::Ratio>| r.map_or("n/a".into(), |r| r.cell());
        let (a, b, verdict) = match (ok, super::points::failed_pair(points, p, base)) {
            (_, Some(why)) => ("Fail".to_string(), "Fail".to_string(), format!("Fail: {why}")),
            (true, None) => (show(&cells[0]), show(&cells[1]), "yes".into()),
            (false, None) => (show(&cells[0]), show(&cells[1]), "**no**".into()),
        };
        let _ = writeln!(md, "| {} | {} | {a} | {b} | {verdict} |", p.connections, p.size_bytes);
    }
    let how = if twins.iter().all(|p| p.pairing == Pairing::Slices) { "paired slices" } else { "fresh servers" };
    let _ = writeln!(md, "\nHeld 1 at {held} of {} points ({how}).\n", twins.len());
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::results::{BlockRecord, SliceRecord};

    #[test]
    fn an_older_log_gets_its_block_length_from_its_blocks() {
        let block =
            |block, first_round, last_round| BlockRecord { block, start_order: vec![], first_round, last_round };
        let mut log = SliceLog { blocks: vec![block(1, 1, 117), block(2, 118, 240)], ..SliceLog::default() };
        assert_eq!(block_rounds(&log), 123);
        log.block_rounds = 8;
        assert_eq!(block_rounds(&log), 8, "a logged length is taken as it is");
    }

    #[test]
    fn steal_is_weighted_by_slice_length_and_an_older_log_has_none() {
        let slice = |start_unix_us, end_unix_us, srv, cli| SliceRecord {
            start_unix_us,
            end_unix_us,
            server_cpus_stolen_share: srv,
            client_cpus_stolen_share: cli,
            ..SliceRecord::default()
        };
        let log = SliceLog {
            slices: vec![slice(0, 100_000, Some(0.4), Some(0.1)), slice(200_000, 500_000, Some(0.0), Some(0.5))],
            ..SliceLog::default()
        };
        let (srv, cli) = log.stolen_shares().unwrap();
        assert!((srv - 0.1).abs() < 1e-12 && (cli - 0.4).abs() < 1e-12, "{srv} {cli}");
        let older = SliceLog { slices: vec![slice(0, 100_000, None, None)], ..SliceLog::default() };
        assert_eq!(older.stolen_shares(), None);
    }

    #[test]
    fn a_shared_machine_is_called_out_beside_the_table() {
        let log = |srv| SliceLog {
            slices: vec![SliceRecord {
                end_unix_us: 1_000_000,
                server_cpus_stolen_share: Some(srv),
                client_cpus_stolen_share: Some(0.0),
                ..SliceRecord::default()
            }],
            ..SliceLog::default()
        };
        let place = |c| Place::parse(&format!("c{c}_s64")).unwrap();
        let logs = BTreeMap::from([(place(100), log(0.38)), (place(1000), log(0.01))]);
        let mut md = String::new();
        write_sureness(&mut md, &[], &logs, "epoll");
        assert!(md.contains("| 38 % · 0 % |") && md.contains("| 1 % · 0 % |"), "{md}");
        assert!(md.contains("**The machine was shared") && md.contains("at 100 connections (38 % · 0 %)."), "{md}");
        assert!(!md.contains("1000 connections (1 %"), "{md}");
    }

    #[test]
    fn a_point_short_on_its_budget_is_told_about_the_time_it_needs() {
        // ±3.4 % in 38 s where ±2 % was asked: (3.4 / 2)² = 2.89 times the blocks, 110 s.
        assert_eq!(time_for_precision(38.0, 0.034, 0.02), Some(110.0));
        assert_eq!(time_for_precision(38.0, 0.019, 0.02), None, "reached already");
        let sure = |stopped: &str, over_blocks| PlaceSure {
            stopped: stopped.into(),
            over_blocks,
            precision: Some(0.034),
            target: Some(0.02),
            elapsed_s: 38.0,
            ..PlaceSure::default()
        };
        assert_eq!(sure("budget", true).time_needed_s(), Some(110.0));
        assert_eq!(sure("budget", false).time_needed_s(), None, "over pairs alone: no blocks' spread to scale");
        assert_eq!(sure("max rounds", true).time_needed_s(), None, "time was not what it lacked");
    }

    #[test]
    fn a_precision_the_rebuilt_intervals_miss_is_not_called_reached() {
        assert_eq!(stopped_now("precision reached", Some(0.015), Some(0.02)), "precision reached");
        assert_eq!(stopped_now("precision reached", Some(0.058), Some(0.02)), REACHED_BY_THE_RUN);
        assert_eq!(stopped_now("budget", Some(0.058), Some(0.02)), "budget");
    }
}
