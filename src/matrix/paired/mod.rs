//! Paired slices: at each point every server under test starts once and stays up, each
//! with its own client connected; short slices of load then alternate between them in
//! rounds (the order reversed every other round: A B, B A, …) until the comparison with
//! the baseline is as precise as asked, or the point's rounds or time run out.
//!
//! Why: these machines switch between speed regimes for seconds at a time, so two
//! measurements far apart in time do not compare; two slices a fraction of a second apart
//! do. Connecting stays outside every slice. The sweep reads every server's CPU clock
//! (and each ringbench backend's live syscall count) just before and just after each
//! slice, while nothing runs, so a slice's server CPU is exactly what its load cost.
//!
//! Servers wait side by side on the same CPUs, so one that burns CPU while idle (SQPOLL,
//! busy polling, a spinning runtime) would take it from the one being measured. Every
//! server's clock is read at every slice boundary: one that moved during another's slice
//! is stopped (SIGSTOP) outside its own slices from then on, the round it disturbed is
//! left out, and the slice log says so.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::progress::{human, Progress};
use super::run::{self, Ctx};
use super::{places, Contender, MatrixConfig, Planned};
use crate::files;
use crate::report::stats::median_ratio;
use crate::results::{BlockRecord, Pass, Place, SliceLog};

mod up;

use up::{connect_clients, settle, slice, start_server, wind_down, Figures, Up};

/// Runs every point in paired slices; returns whether the sweep was interrupted.
pub fn run_all(ctx: &Ctx<'_>, contenders: &[Contender], perf: bool, pinning: &str) -> bool {
    let cfg = ctx.cfg;
    let places: Vec<Place> = places(cfg);
    let rounds = match cfg.fixed_rounds {
        Some(n) => format!("{n} rounds"),
        None => format!(
            "{}–{} rounds until ±{:.1} %, at most {:.0} s of rounds a point",
            cfg.min_rounds,
            cfg.max_rounds,
            cfg.precision * 100.0,
            cfg.budget_s
        ),
    };
    let guess = Duration::from_secs_f64(places.iter().map(|p| point_guess_s(cfg, p, contenders.len())).sum());
    let lengths: Vec<f64> = places.iter().map(|p| cfg.slice_for(p.connections)).collect();
    let (shortest, longest) =
        (lengths.iter().copied().fold(f64::MAX, f64::min), lengths.iter().copied().fold(0.0, f64::max));
    let slices = if shortest == longest { format!("{shortest} s") } else { format!("{shortest}–{longest} s") };
    eprintln!(
        "ringbench matrix: {} points × {} servers in paired slices of {slices} ({rounds}) into {}; {pinning}; at most \
         about {}",
        places.len(),
        contenders.len(),
        cfg.out.display(),
        human(guess)
    );
    let mut progress = Progress::new(places.len(), "points");
    progress.guess(guess);
    for place in &places {
        if ctx.interrupted.load(Ordering::Relaxed) {
            return true;
        }
        let (line, failed) = match run_point(ctx, place, contenders, &progress) {
            Ok(done) => done,
            Err(e) => (format!("failed: {e:#}"), contenders.iter().map(|c| c.name.clone()).collect()),
        };
        if perf && !ctx.interrupted.load(Ordering::Relaxed) {
            // A server that did not start or answered wrongly has no syscalls per request.
            let measured: Vec<Contender> = contenders.iter().filter(|c| !failed.contains(&c.name)).cloned().collect();
            syscall_runs(ctx, place, &measured, &progress);
        }
        let workload = if place.workload == crate::workload::Workload::Rr {
            String::new()
        } else {
            format!("{} · ", place.workload.name())
        };
        progress.done_one(&format!(
            "{workload}{} connections, {} B{}: {line}",
            place.connections,
            place.size_bytes,
            rate(place)
        ));
    }
    ctx.interrupted.load(Ordering::Relaxed)
}

fn rate(p: &Place) -> String {
    p.rate.map_or(String::new(), |r| format!(", {r} req/s offered"))
}

/// The most a point should take: starting and connecting, then its rounds' budget.
fn point_guess_s(cfg: &MatrixConfig, p: &Place, servers: usize) -> f64 {
    let connect_s = servers as f64 * (1.0 + p.connections as f64 / 2000.0);
    let round_s = servers as f64 * (cfg.slice_for(p.connections) * 1.3 + 0.05 + cfg.warmup_s.unwrap_or(0.0));
    let rounds_s = match cfg.fixed_rounds {
        Some(n) => n as f64 * round_s,
        None => cfg.budget_s.min(cfg.max_rounds as f64 * round_s),
    };
    connect_s + rounds_s + servers as f64
}

/// The external targets' syscalls: one fresh run each with perf attached (tracing costs
/// CPU per syscall, so it is never a slice).
fn syscall_runs(ctx: &Ctx<'_>, place: &Place, contenders: &[Contender], progress: &Progress) {
    for c in contenders.iter().filter(|c| !c.is_backend()) {
        let planned = Planned { key: place.key(&c.name, 1, Pass::Syscalls), contender: c.clone() };
        if let Err(e) = run::one(ctx, &planned) {
            progress.note(&format!("{}: syscall run failed: {e:#}", planned.key.stem()));
        }
    }
}

/// One point: in each block, every server up (started in that block's order), clients
/// connected, rounds of slices, everything stopped and written. Returns the progress line
/// and the servers that failed here (did not start, or lost a slice or a byte).
///
/// Why blocks: the order in which servers start matters. Measured here with the A/A
/// calibration at 1000 connections, the server started first (with its client connected
/// first) served 2–4 % more requests per second than its twin started second, in every
/// sweep, and swapping the order swapped the sign. The start order is therefore rotated
/// from block to block (one block per server), each block running as many rounds as the
/// first, so every server starts in every position equally often.
fn run_point(
    ctx: &Ctx<'_>,
    place: &Place,
    contenders: &[Contender],
    progress: &Progress,
) -> anyhow::Result<(String, Vec<String>)> {
    let cfg = ctx.cfg;
    let n = contenders.len();
    let blocks = match cfg.fixed_rounds {
        Some(rounds) => n.min(rounds).max(1),
        None => n.max(1),
    };
    let mut log = SliceLog {
        place: Some(*place),
        servers: contenders.iter().map(|c| c.name.clone()).collect(),
        slice_s: cfg.slice_for(place.connections),
        precision_target: cfg.fixed_rounds.is_none().then_some(cfg.precision),
        min_rounds: cfg.fixed_rounds.unwrap_or(cfg.min_rounds),
        max_rounds: cfg.fixed_rounds.unwrap_or(cfg.max_rounds),
        budget_s: cfg.budget_s,
        ..SliceLog::default()
    };
    let t0 = Instant::now();
    let mut figures: Figures = BTreeMap::new();
    let mut first_block_rounds = None;
    let mut failed: Vec<String> = Vec::new();
    let mut first_block_stop = "budget";
    for block in 1..=blocks {
        let order: Vec<usize> = (0..n).map(|k| (k + block - 1) % n).collect();
        progress.message(format!("{} connections: block {block} of {blocks}, starting servers", place.connections));
        let mut ups = start_block(ctx, place, contenders, &order, block, &mut log, progress);
        let limit = match (cfg.fixed_rounds, first_block_rounds) {
            (Some(total), _) => Limit::Exactly(total / blocks + usize::from(block <= total % blocks)),
            (None, Some(r)) => Limit::Exactly(r),
            (None, None) => Limit::Precision { blocks },
        };
        // Each block's share of the budget, for its rounds alone (starting servers and
        // connecting are not rounds). The first block stops on it; the others run as many
        // rounds as the first, with twice their share as a guard against a slower block.
        let share = cfg.budget_s / blocks as f64;
        let budget = if block == 1 { share } else { 2.0 * share };
        let outcome = rounds(ctx, place, &mut ups, &mut log, &mut figures, limit, budget, progress);
        if block == 1 {
            // Why the first block ended decides how many rounds every block runs.
            first_block_stop = match current_precision(&log, &figures) {
                Some(p) if p <= cfg.precision => "precision reached in the first block, not over all blocks",
                _ if log.rounds >= cfg.max_rounds.div_ceil(blocks) => "max rounds",
                _ => "budget",
            };
        }
        let first = log.blocks.last().map_or(0, |b| b.first_round);
        log.blocks.last_mut().into_iter().for_each(|b| b.last_round = log.rounds);
        first_block_rounds.get_or_insert(log.rounds + 1 - first.max(1));
        failed.extend(ups.iter().filter(|u| u.broken.is_some() || u.lost_requests).map(|u| u.c.name.clone()));
        let ended = wind_down(ctx, place, &mut ups, block);
        outcome?;
        ended?;
        if matches!(log.stopped.as_str(), "interrupted" | "failed" | "budget") {
            break;
        }
    }
    log.elapsed_s = t0.elapsed().as_secs_f64();
    let precision = current_precision(&log, &figures);
    if log.stopped.is_empty() {
        log.stopped = match (cfg.fixed_rounds, precision) {
            (Some(_), _) => "fixed rounds".into(),
            (None, _) if n < 2 => "one server".into(),
            (None, Some(p)) if p <= cfg.precision => "precision reached".into(),
            (None, _) => first_block_stop.into(),
        };
    }
    files::write_json(&ctx.raw.join(format!("{}.slices.json", place.stem())), &log)?;
    let line = match precision {
        Some(p) => format!("{} rounds, {:.0} s, ±{:.1} % ({})", log.rounds, log.elapsed_s, p * 100.0, log.stopped),
        None => format!("{} rounds, {:.0} s ({})", log.rounds, log.elapsed_s, log.stopped),
    };
    let notes = if log.failures.is_empty() { String::new() } else { format!("; {}", log.failures.join("; ")) };
    Ok((format!("{line}{notes}"), failed))
}

/// Starts a block: every server in `order`, then every client in the same order, then
/// watches them idle. Returns them in the contenders' order.
fn start_block(
    ctx: &Ctx<'_>,
    place: &Place,
    contenders: &[Contender],
    order: &[usize],
    block: usize,
    log: &mut SliceLog,
    progress: &Progress,
) -> Vec<Up> {
    let mut started: Vec<Option<Up>> = contenders.iter().map(|_| None).collect();
    for &i in order {
        started[i] = Some(start_server(ctx, place, &contenders[i], block));
    }
    let mut ups: Vec<Up> = started.into_iter().flatten().collect();
    progress.message(format!("{} connections: block {block}, connecting every client", place.connections));
    connect_clients(ctx, place, &mut ups, order, block);
    for u in &ups {
        if let Some(why) = &u.broken {
            log.failures.push(format!("{}: {why}", u.c.name));
        }
    }
    log.blocks.push(BlockRecord {
        block,
        start_order: order.iter().map(|&i| contenders[i].name.clone()).collect(),
        first_round: log.rounds + 1,
        last_round: log.rounds,
    });
    let before = log.isolated.len();
    settle(&mut ups, log);
    for iso in &log.isolated[before..] {
        progress.note(&format!("{}: {} is stopped outside its slices: {}", place.stem(), iso.server, iso.why));
    }
    ups
}

/// How many rounds a block runs.
#[derive(Clone, Copy)]
enum Limit {
    /// Exactly this many (fixed rounds, or as many as the first block ran).
    Exactly(usize),
    /// The first block: until the comparison is precise enough, or its share (one of
    /// `blocks`) of the rounds or of the time runs out.
    Precision { blocks: usize },
}

/// The rounds of one block, numbered on from the point's earlier blocks.
#[allow(clippy::too_many_arguments)]
fn rounds(
    ctx: &Ctx<'_>,
    place: &Place,
    ups: &mut [Up],
    log: &mut SliceLog,
    figures: &mut Figures,
    limit: Limit,
    budget_s: f64,
    progress: &Progress,
) -> anyhow::Result<()> {
    let cfg = ctx.cfg;
    let first = log.rounds + 1;
    let t0 = Instant::now();
    let mut slowest_round_s = 0.0f64;
    for round in first.. {
        let done_here = round - first;
        let enough = match limit {
            Limit::Exactly(n) => done_here >= n,
            Limit::Precision { blocks } => {
                let precise = current_precision(log, figures).is_some_and(|p| p <= cfg.precision);
                done_here >= cfg.max_rounds.div_ceil(blocks)
                    || (done_here >= cfg.min_rounds.div_ceil(blocks) && (precise || ups.len() < 2))
            }
        };
        if enough {
            return Ok(());
        }
        // Stop before a round that would end past the budget (fixed rounds have none).
        if cfg.fixed_rounds.is_none() && done_here > 0 && t0.elapsed().as_secs_f64() + slowest_round_s > budget_s {
            if matches!(limit, Limit::Exactly(_)) {
                log.stopped = "budget".into();
            }
            return Ok(());
        }
        if ups.first().is_none_or(|u| u.broken.is_some()) || ups.iter().all(|u| u.broken.is_some()) {
            log.stopped = "failed".into();
            return Ok(());
        }
        let r0 = Instant::now();
        let mut order: Vec<usize> = (0..ups.len()).collect();
        if round % 2 == 0 {
            order.reverse();
        }
        for i in order {
            if ctx.interrupted.load(Ordering::Relaxed) {
                log.stopped = "interrupted".into();
                return Ok(());
            }
            if ups[i].broken.is_none() {
                slice(ctx, place, ups, i, round, log, figures)?;
            }
        }
        log.rounds = round;
        slowest_round_s = slowest_round_s.max(r0.elapsed().as_secs_f64());
        let shown =
            current_precision(log, figures).map_or("no interval yet".to_string(), |p| format!("±{:.1} %", p * 100.0));
        progress.message(format!("{} connections: round {round}, {shown}", place.connections));
    }
    Ok(())
}

/// The widest headline interval (CPU per request and req/s of every server against the
/// baseline) as a ± fraction, over the rounds no idle server disturbed; `None` while any
/// comparison has no interval.
fn current_precision(log: &SliceLog, figures: &Figures) -> Option<f64> {
    let left_out = log.disturbed_rounds();
    let base = figures.get(log.servers.first()?)?;
    let mut worst: Option<f64> = None;
    for name in log.servers.iter().skip(1) {
        let other = figures.get(name)?;
        for pick in [|x: &(usize, f64, f64)| x.1, |x: &(usize, f64, f64)| x.2] {
            let logs: Vec<f64> = other
                .iter()
                .filter(|o| !left_out.contains(&o.0))
                .filter_map(|o| {
                    let b = base.iter().find(|b| b.0 == o.0)?;
                    (pick(o) > 0.0 && pick(b) > 0.0).then(|| (pick(o) / pick(b)).ln())
                })
                .collect();
            let h = median_ratio(&logs)?.half_width()?;
            worst = Some(worst.map_or(h, |w: f64| w.max(h)));
        }
    }
    worst
}
