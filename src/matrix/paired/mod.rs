//! Paired slices: at each point every server under test starts once and stays up, each
//! with its own client connected; short slices of load then alternate between them in
//! rounds (in the block's start order every round: A B, A B, …, so no server runs two
//! slices in a row; blocks rotate the order, every other rotation the reversed list)
//! until the comparison with the baseline is as precise as asked, or the point's rounds
//! or time run out. A point with a precision target runs a first stage of at least
//! [`FIRST_STAGE_ROTATIONS`] rotations (more where its budget pays for them) before it
//! may stop, and its intervals' spread is that stage's (see [`blocked_ratio`]).
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
use super::{places, Budget, Contender, MatrixConfig, Planned};
use crate::files;
use crate::report::paired::time_needed_s;
use crate::report::points::block_spans;
use crate::report::stats::blocked_ratio;
use crate::results::{BlockRecord, Pass, Place, SliceLog};

mod up;

use up::{connect_clients, settle, slice, start_server, wind_down, Figures, Up};

/// Runs every point in paired slices; returns whether the sweep was interrupted.
pub fn run_all(ctx: &Ctx<'_>, contenders: &[Contender], perf: bool, pinning: &str) -> bool {
    let cfg = ctx.cfg;
    let places: Vec<Place> = places(cfg);
    let per_block: Vec<usize> = places
        .iter()
        .map(|p| match plan(cfg, p, contenders.len()) {
            Plan::Fixed(b) => b.iter().copied().max().unwrap_or(0),
            Plan::Open { per_block } => per_block,
        })
        .collect();
    let (fewest, most) = (per_block.iter().min().copied().unwrap_or(0), per_block.iter().max().copied().unwrap_or(0));
    let blocks =
        if fewest == most { format!("blocks of {most} rounds") } else { format!("blocks of {fewest}–{most} rounds") };
    let rounds = match cfg.fixed_rounds {
        Some(n) => format!("{n} rounds in {blocks}"),
        None => format!(
            "{blocks} in whole rotations until ±{:.1} % over blocks, {}–{} rounds and at most {:.0} s a point{}",
            cfg.precision * 100.0,
            cfg.min_rounds,
            cfg.max_rounds,
            cfg.budget.asked_s(),
            match cfg.budget {
                Budget::Given(_) => "",
                Budget::Default(_) => " (more where three rotations need it)",
            }
        ),
    };
    let each: Vec<Duration> =
        places.iter().map(|p| Duration::from_secs_f64(point_guess_s(cfg, p, contenders.len()))).collect();
    let guess: Duration = each.iter().sum();
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
    progress.at_most(each);
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

/// The most a point should take: its time budget, or its fixed rounds, and at least
/// one rotation of blocks (a point always runs one).
fn point_guess_s(cfg: &MatrixConfig, p: &Place, servers: usize) -> f64 {
    let t = BlockTimes::guess(cfg, p, servers);
    let wind_down_s = servers as f64;
    match plan(cfg, p, servers) {
        Plan::Fixed(blocks) => blocks.iter().map(|&r| t.block_s(r)).sum::<f64>() + wind_down_s,
        Plan::Open { per_block } => {
            let rotation_s = servers.max(1) as f64 * t.block_s(per_block);
            let capped_s = (cfg.max_rounds as f64 / per_block as f64).ceil() * t.block_s(per_block);
            rotation_s.max(budget_s(cfg, p, servers).min(capped_s)) + wind_down_s
        }
    }
}

/// A guess at how long a point's blocks take, before any has run.
struct BlockTimes {
    /// Starting every server and connecting every client.
    start_s: f64,
    round_s: f64,
}

impl BlockTimes {
    /// Measured here (A/A, 2 servers): 0.3 s between blocks at 100 connections, 0.35–0.46 s
    /// at 1000, 0.5 s (event client) to 1.1 s (thread per connection) at 4000; a round
    /// 1.03–1.2 slice lengths per server.
    fn guess(cfg: &MatrixConfig, p: &Place, servers: usize) -> BlockTimes {
        let n = servers as f64;
        BlockTimes {
            start_s: n * (0.25 + p.connections as f64 / 8000.0),
            round_s: n * (cfg.slice_for(p.connections) * 1.3 + 0.05 + cfg.warmup_s.unwrap_or(0.0)),
        }
    }

    fn block_s(&self, rounds: usize) -> f64 {
        self.start_s + rounds as f64 * self.round_s
    }
}

/// Rounds per block by default: eight, so that a block's median stands on enough pairs
/// to ignore one that straddles a regime switch.
pub const DEFAULT_BLOCK_ROUNDS: usize = 8;
/// The fewest rounds a block is shortened to when the budget is tight: a median of three
/// still ignores one wild pair.
pub const MIN_BLOCK_ROUNDS: usize = 3;
/// Rotations a default block length is chosen to fit in the budget. Two are the least an
/// interval over blocks needs, but with two blocks of each start order it has 2 degrees
/// of freedom (t = 4.30): default sweeps planned for two reached only ±3–35 % at
/// 1500–4000 connections. Three give 4 (t = 2.78), and shorter blocks leave room for more.
const ROTATIONS_PLANNED: usize = 3;
/// The fewest rotations of a point's first stage: the blocks whose spread alone sets its
/// intervals' width (see [`blocked_ratio`]); a point never stops on precision before they
/// have run. The rotations a default budget is planned for, so a default point can finish
/// them.
const FIRST_STAGE_ROTATIONS: usize = ROTATIONS_PLANNED;
/// The most: ten rotations of two servers give the spread 18 degrees of freedom (t = 2.10,
/// against 2.78 with three); more would buy little.
const MOST_FIRST_STAGE_ROTATIONS: usize = 10;

/// The rotations of a point's first stage: as many as are expected to take a third of its
/// budget, from [`FIRST_STAGE_ROTATIONS`] to [`MOST_FIRST_STAGE_ROTATIONS`], and no more
/// than half its `--max-rounds`. Why: the first stage's degrees of freedom set Student's
/// t for the whole point, and at t = 2.78 a target costs twice the blocks it costs at
/// 1.96 — on a noisy host that is what ends long points on their budget (A/A here at 100
/// connections: 124 blocks for ±1.1–1.6 %). A larger stage is only allowed where the
/// budget can pay for it, and it is fixed from the plan before any block has run, so the
/// stopping rule still cannot be steered by the blocks' agreement.
fn first_stage_rotations(cfg: &MatrixConfig, p: &Place, servers: usize, per_block: usize) -> usize {
    let n = servers.max(1);
    let rotation_s = n as f64 * BlockTimes::guess(cfg, p, servers).block_s(per_block);
    let fit = (budget_s(cfg, p, servers) / 3.0 / rotation_s).floor().max(0.0) as usize;
    let rounds_cap = cfg.max_rounds / 2 / (n * per_block.max(1));
    fit.min(rounds_cap).clamp(FIRST_STAGE_ROTATIONS, MOST_FIRST_STAGE_ROTATIONS)
}

/// How a point's blocks are laid out.
#[derive(Clone, Debug, PartialEq)]
enum Plan {
    /// `--repeats N`: exactly these rounds, block by block.
    Fixed(Vec<usize>),
    /// Whole rotations of blocks of `per_block` rounds, until the interval over blocks is
    /// as precise as asked or the point's rounds or time run out.
    Open { per_block: usize },
}

/// The blocks of a point with `servers` servers. Fixed rounds are spread over whole
/// rotations of blocks of at most the block length (at least one block per server,
/// while there are rounds enough for one each). Open-ended points use `--block-rounds`,
/// or by default the longest block up to [`DEFAULT_BLOCK_ROUNDS`] that lets two
/// rotations fit the budget (an interval over blocks needs two blocks of each start
/// order), never shorter than [`MIN_BLOCK_ROUNDS`]; and never so long that one rotation
/// would pass `--max-rounds`.
fn plan(cfg: &MatrixConfig, p: &Place, servers: usize) -> Plan {
    let n = servers.max(1);
    let per_block = cfg.block_rounds.unwrap_or(DEFAULT_BLOCK_ROUNDS);
    if let Some(total) = cfg.fixed_rounds {
        let blocks = (total.div_ceil(per_block).max(n).div_ceil(n) * n).min(total).max(1);
        return Plan::Fixed((0..blocks).map(|b| total / blocks + usize::from(b < total % blocks)).collect());
    }
    // A rotation never runs past --max-rounds.
    let most = (cfg.max_rounds / n).max(1);
    if cfg.block_rounds.is_some() {
        return Plan::Open { per_block: per_block.min(most) };
    }
    let t = BlockTimes::guess(cfg, p, servers);
    let per_block_s = budget_s(cfg, p, servers) / (ROTATIONS_PLANNED * n) as f64;
    let fits = ((per_block_s - t.start_s) / t.round_s).floor().max(0.0) as usize;
    Plan::Open { per_block: fits.clamp(MIN_BLOCK_ROUNDS, DEFAULT_BLOCK_ROUNDS).min(most) }
}

/// A point's time budget in seconds (see [`Budget`]).
fn budget_s(cfg: &MatrixConfig, p: &Place, servers: usize) -> f64 {
    match cfg.budget {
        Budget::Given(s) => s,
        Budget::Default(s) => {
            let rotations_s = (ROTATIONS_PLANNED * servers.max(1)) as f64
                * BlockTimes::guess(cfg, p, servers).block_s(MIN_BLOCK_ROUNDS);
            s.max(1.25 * rotations_s)
        }
    }
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
/// Why blocks: the order in which servers start matters, and so does which processes
/// they are. Measured here with the A/A calibration at 1000 connections, the server
/// started first (with its client connected first) served 2–4 % more requests per second
/// than its twin started second, and a pair of fresh processes differs by up to ~1.5 %
/// for as long as both live. So the start order is rotated from block to block, blocks
/// run in whole rotations (every server starts in every position equally often) and are
/// short, so that a point samples many pairs of processes and its interval is taken over
/// them ([`crate::report::stats::blocked_ratio`]). Whether to go on is decided only
/// between rotations.
fn run_point(
    ctx: &Ctx<'_>,
    place: &Place,
    contenders: &[Contender],
    progress: &Progress,
) -> anyhow::Result<(String, Vec<String>)> {
    let cfg = ctx.cfg;
    let n = contenders.len().max(1);
    let plan = plan(cfg, place, contenders.len());
    let mut log = SliceLog {
        place: Some(*place),
        servers: contenders.iter().map(|c| c.name.clone()).collect(),
        slice_s: cfg.slice_for(place.connections),
        precision_target: cfg.fixed_rounds.is_none().then_some(cfg.precision),
        min_rounds: cfg.fixed_rounds.unwrap_or(cfg.min_rounds),
        max_rounds: cfg.fixed_rounds.unwrap_or(cfg.max_rounds),
        budget_s: budget_s(cfg, place, contenders.len()),
        block_rounds: match &plan {
            Plan::Fixed(b) => b.iter().copied().max().unwrap_or(0),
            Plan::Open { per_block } => *per_block,
        },
        first_stage_blocks: match plan {
            Plan::Open { per_block } if n >= 2 => first_stage_rotations(cfg, place, n, per_block) * n,
            _ => 0,
        },
        ..SliceLog::default()
    };
    let t0 = Instant::now();
    let mut figures: Figures = BTreeMap::new();
    let mut failed: Vec<String> = Vec::new();
    let mut rotation_t0 = Instant::now();
    let mut slowest_rotation_s = 0.0f64;
    for block in 1.. {
        let rounds_here = match &plan {
            Plan::Fixed(blocks) => match blocks.get(block - 1) {
                Some(&r) => r,
                None => break,
            },
            Plan::Open { per_block } => {
                // One server has nothing to compare: one block, as long as asked.
                let per_block = if n < 2 { (*per_block).max(cfg.min_rounds) } else { *per_block };
                if block > 1 && (block - 1) % n == 0 {
                    slowest_rotation_s = slowest_rotation_s.max(rotation_t0.elapsed().as_secs_f64());
                    rotation_t0 = Instant::now();
                    let stop = if n < 2 {
                        Some("one server")
                    } else if log.blocks.len() >= log.first_stage_blocks
                        && precision(&log, &figures).is_some_and(|p| p.over_blocks && p.worst <= cfg.precision)
                        && log.rounds >= cfg.min_rounds
                    {
                        Some("precision reached")
                    } else if log.rounds + n * per_block > cfg.max_rounds {
                        Some("max rounds")
                    } else if t0.elapsed().as_secs_f64() + slowest_rotation_s > log.budget_s {
                        Some("budget")
                    } else {
                        None
                    };
                    if let Some(why) = stop {
                        log.stopped = why.into();
                        break;
                    }
                }
                per_block
            }
        };
        let order = block_order(block, n);
        progress.message(format!("{} connections: block {block}, starting servers", place.connections));
        let mut ups = start_block(ctx, place, contenders, &order, block, &mut log, progress);
        let outcome = rounds(ctx, place, &mut ups, &order, &mut log, &mut figures, rounds_here, block, progress);
        log.blocks.last_mut().into_iter().for_each(|b| b.last_round = log.rounds);
        failed.extend(ups.iter().filter(|u| u.broken.is_some() || u.lost_requests).map(|u| u.c.name.clone()));
        let ended = wind_down(ctx, place, &mut ups, block);
        outcome?;
        ended?;
        if matches!(log.stopped.as_str(), "interrupted" | "failed") {
            break;
        }
    }
    log.elapsed_s = t0.elapsed().as_secs_f64();
    let reached = precision(&log, &figures);
    if log.stopped.is_empty() {
        log.stopped = "fixed rounds".into();
    }
    files::write_json(&ctx.raw.join(format!("{}.slices.json", place.stem())), &log)?;
    let over = |p: &Precision| if p.over_blocks { "over blocks" } else { "over pairs only" };
    let line = match reached {
        Some(p) => {
            let more = log
                .precision_target
                .and_then(|target| {
                    let t = time_needed_s(&log.stopped, p.over_blocks, log.elapsed_s, p.worst, target)?;
                    Some(format!("; ±{:.1} % in about {t:.0} s: --budget-s {t:.0}", target * 100.0))
                })
                .unwrap_or_default();
            format!(
                "{} rounds in {} blocks, {:.0} s, ±{:.1} % {} ({}{more})",
                log.rounds,
                log.blocks.len(),
                log.elapsed_s,
                p.worst * 100.0,
                over(&p),
                log.stopped
            )
        }
        None => {
            format!("{} rounds in {} blocks, {:.0} s ({})", log.rounds, log.blocks.len(), log.elapsed_s, log.stopped)
        }
    };
    let stolen = match log.stolen_shares() {
        Some((srv, cli)) if srv.max(cli) >= 0.01 => {
            format!(
                "; the hypervisor took {:.0} % of the server's CPUs, {:.0} % of the client's",
                srv * 100.0,
                cli * 100.0
            )
        }
        _ => String::new(),
    };
    let notes = if log.failures.is_empty() { String::new() } else { format!("; {}", log.failures.join("; ")) };
    Ok((format!("{line}{stolen}{notes}"), failed))
}

/// The start order of block `block` (from 1) of `n` servers, as indices into the
/// contenders. Each rotation of `n` blocks puts every server in every position once; odd
/// rotations shift the list forwards (A B C, B C A, C A B), even ones the reversed list
/// (C B A, B A C, A C B). Why both: shifting alone keeps the cyclic order, so with three or
/// more servers each always starts right after the same one — and in an A/A probe with a
/// third instance the servers after the baseline came out 0.2 % and 1.0 % low on req/s.
/// Two servers keep A B, B A: both directions give those same two orders.
fn block_order(block: usize, n: usize) -> Vec<usize> {
    let n = n.max(1);
    let (rotation, k) = ((block.max(1) - 1) / n, (block.max(1) - 1) % n);
    (0..n).map(|i| if rotation % 2 == 0 || n < 3 { (k + i) % n } else { (k + 2 * n - 1 - i) % n }).collect()
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

/// The `count` rounds of one block, numbered on from the point's earlier blocks, each
/// in the block's start `order`.
///
/// Why not A B, B A, …: that runs each server twice in a row at every turn, and with the
/// seed's client at 4000 connections a client's second slice in a row ran slow — the
/// same requests and server CPU, but 0.33 s more wall time (4000 threads just back from
/// one slice, released into the next) — in 4 of 18 A/A blocks, which moved those blocks'
/// req/s ratios by 15–20 %. (Most likely the client's futex-walk stall, since fixed: see
/// `client::gate::Gate`.) In the start order every slice follows another server's, and
/// the rotation of start orders between blocks balances the positions instead.
#[allow(clippy::too_many_arguments)]
fn rounds(
    ctx: &Ctx<'_>,
    place: &Place,
    ups: &mut [Up],
    order: &[usize],
    log: &mut SliceLog,
    figures: &mut Figures,
    count: usize,
    block: usize,
    progress: &Progress,
) -> anyhow::Result<()> {
    let first = log.rounds + 1;
    for round in first..first + count {
        if ups.first().is_none_or(|u| u.broken.is_some()) || ups.iter().all(|u| u.broken.is_some()) {
            log.stopped = "failed".into();
            return Ok(());
        }
        for &i in order {
            if ctx.interrupted.load(Ordering::Relaxed) {
                log.stopped = "interrupted".into();
                return Ok(());
            }
            if ups[i].broken.is_none() {
                slice(ctx, place, ups, i, round, log, figures)?;
            }
        }
        log.rounds = round;
        let shown = precision(log, figures).map_or("no interval yet".to_string(), |p| {
            format!("±{:.1} % over {}", p.worst * 100.0, if p.over_blocks { "blocks" } else { "pairs" })
        });
        progress.message(format!("{} connections: block {block}, round {round}, {shown}", place.connections));
    }
    Ok(())
}

/// How precise a point is so far.
#[derive(Clone, Copy, Debug)]
struct Precision {
    /// The widest headline interval, as a ± fraction.
    worst: f64,
    /// Whether every headline interval was taken over blocks (else over pairs alone:
    /// too few blocks yet, which does not count as precise).
    over_blocks: bool,
}

/// The widest headline interval (CPU per request and req/s of every server against the
/// baseline) as a ± fraction, over the rounds no idle server disturbed, with the
/// estimator the report uses; `None` while any comparison has no interval.
fn precision(log: &SliceLog, figures: &Figures) -> Option<Precision> {
    let left_out = log.disturbed_rounds();
    let base_name = log.servers.first()?;
    let base = figures.get(base_name)?;
    let mut worst: Option<Precision> = None;
    for name in log.servers.iter().skip(1) {
        let other = figures.get(name)?;
        let spans = block_spans(&log.blocks, log.first_stage_blocks, base_name, name);
        for pick in [|x: &(usize, f64, f64)| x.1, |x: &(usize, f64, f64)| x.2] {
            let pairs: Vec<(usize, f64)> = other
                .iter()
                .filter(|o| !left_out.contains(&o.0))
                .filter_map(|o| {
                    let b = base.iter().find(|b| b.0 == o.0)?;
                    (pick(o) > 0.0 && pick(b) > 0.0).then(|| (o.0, (pick(o) / pick(b)).ln()))
                })
                .collect();
            let r = blocked_ratio(&pairs, &spans)?;
            let here = Precision { worst: r.half_width()?, over_blocks: r.blocks > 0 };
            worst = Some(match worst {
                None => here,
                Some(w) => Precision { worst: w.worst.max(here.worst), over_blocks: w.over_blocks && here.over_blocks },
            });
        }
    }
    worst
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotations_alternate_direction_so_no_server_always_follows_the_same_one() {
        let orders: Vec<Vec<usize>> = (1..=6).map(|b| block_order(b, 3)).collect();
        assert_eq!(orders, [[0, 1, 2], [1, 2, 0], [2, 0, 1], [2, 1, 0], [0, 2, 1], [1, 0, 2]]);
        // Over the two rotations every server starts right after every other equally often.
        let mut follows = BTreeMap::new();
        for o in &orders {
            for w in o.windows(2) {
                *follows.entry((w[0], w[1])).or_insert(0) += 1;
            }
        }
        assert_eq!(follows.len(), 6, "{follows:?}");
        assert!(follows.values().all(|&c| c == 2), "{follows:?}");
        // Every rotation still puts every server in every position once.
        for rotation in orders.chunks(3) {
            for pos in 0..3 {
                let mut at: Vec<usize> = rotation.iter().map(|o| o[pos]).collect();
                at.sort();
                assert_eq!(at, [0, 1, 2]);
            }
        }
    }

    #[test]
    fn two_servers_keep_their_two_orders() {
        let orders: Vec<Vec<usize>> = (1..=4).map(|b| block_order(b, 2)).collect();
        assert_eq!(orders, [[0, 1], [1, 0], [0, 1], [1, 0]]);
        assert_eq!(block_order(1, 1), [0]);
    }
}
