//! The servers of one block of a paired point and what is done to them: started with
//! live counters, their clients connected, watched idle, loaded one slice at a time with
//! every server's clocks read around each slice, set apart when they use CPU while not
//! loaded, and wound down with every record written.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;
use ringbench_backends::sys::{self, LiveCounters};

use crate::client::shard::ShardReport;
use crate::files;
use crate::matrix::clients::{self, HostShard, Hosts};
use crate::matrix::run::{describe_exit, server_spec, shown, workload_args, Ctx, STOP_GRACE};
use crate::matrix::{Contender, MatrixConfig};
use crate::results::{write_rows_csv, Isolation, Pass, Place, ServerProcRecord, SliceLog, SliceRecord};
use crate::server_proc::{process_cpu_s, ServerProc};
use crate::steal;

/// Each slice's figures of every server: round, CPU µs per request, requests per second.
pub(super) type Figures = BTreeMap<String, Vec<(usize, f64, f64)>>;

/// A server that used more than this share of a CPU while another was loaded (or before
/// any load) is set apart. A spinning server uses all of one; what a crr slice leaves a
/// server to finish (its last connections' closes) measured 1–3 % of the next slice.
const IDLE_CPU_SHARE: f64 = 0.03;
/// One window of watching every server idle before the first round.
const SETTLE: Duration = Duration::from_millis(250);
/// A server that has used less than this share of a CPU over a window of
/// [`QUIET_WINDOW`] is done with its slice; it is waited for at most [`QUIET_LIMIT`].
const QUIET_SHARE: f64 = 0.02;
const QUIET_WINDOW: Duration = Duration::from_millis(5);
const QUIET_LIMIT: Duration = Duration::from_millis(300);
/// How long start-up may take to quieten down before a busy server is set apart.
const SETTLE_LIMIT: Duration = Duration::from_secs(3);

/// One server of a point, up for the whole point.
pub(super) struct Up {
    pub(super) c: Contender,
    proc: Option<ServerProc>,
    record: ServerProcRecord,
    counters: Option<LiveCounters>,
    hosts: Vec<HostShard>,
    /// Why it takes no more slices.
    pub(super) broken: Option<String>,
    /// A slice of it had a client error or an unverified request.
    pub(super) lost_requests: bool,
    /// SIGSTOPped now.
    stopped: bool,
    /// Why it is stopped outside its own slices.
    isolated: Option<String>,
}

impl Up {
    fn pid(&self) -> Option<i32> {
        self.proc.as_ref().map(ServerProc::pid)
    }

    fn signal(&mut self, sig: i32) {
        if let Some(p) = &self.proc {
            p.signal(sig);
            self.stopped = sig == libc::SIGSTOP;
            if self.stopped {
                // A stop takes effect when each thread next enters the kernel; the next
                // slice must not begin while this server still runs.
                let _ = sys::wait_stopped(p.pid(), Duration::from_millis(500));
            }
        }
    }
}

/// Every server's clocks at one instant.
struct Sample {
    at: Instant,
    unix_us: u64,
    cpu_ns: Vec<Option<u64>>,
    stat_s: Vec<Option<f64>>,
    syscalls: Vec<Option<u64>>,
}

fn sample(ups: &[Up]) -> Sample {
    Sample {
        at: Instant::now(),
        unix_us: sys::unix_now_us(),
        cpu_ns: ups.iter().map(|u| u.pid().and_then(|p| sys::process_cpu_ns(p).ok())).collect(),
        stat_s: ups.iter().map(|u| u.pid().and_then(|p| process_cpu_s(p).ok())).collect(),
        syscalls: ups.iter().map(|u| u.counters.as_ref().map(LiveCounters::total)).collect(),
    }
}

/// The hypervisor's steal so far on the server's CPUs and on the client's (every CPU for
/// a side not pinned).
struct Stolen {
    server: Option<steal::Steal>,
    client: Option<steal::Steal>,
}

impl Stolen {
    fn read(cfg: &MatrixConfig) -> Stolen {
        let [server, client] = steal::steal_of([&cfg.server_cpus, &cfg.client_cpus]).unwrap_or_default();
        Stolen { server, client }
    }

    /// Each side's share of its CPUs' time stolen since `earlier`, over `wall`.
    fn share_since(&self, earlier: &Stolen, wall: Duration) -> (Option<f64>, Option<f64>) {
        let share = |now: Option<steal::Steal>, then| now?.share_since(then?, wall.as_secs_f64());
        (share(self.server, earlier.server), share(self.client, earlier.client))
    }
}

/// CPU seconds server `i` used between two samples.
fn cpu_between(a: &Sample, b: &Sample, i: usize) -> Option<f64> {
    Some(b.cpu_ns[i]?.saturating_sub(a.cpu_ns[i]?) as f64 / 1e9)
}

/// Starts `c` for the point, pinned like every server, with live counters for a backend.
/// A server that cannot start is recorded and takes no slices.
pub(super) fn start_server(ctx: &Ctx<'_>, place: &Place, c: &Contender, block: usize) -> Up {
    let stem = place.key(&c.name, block, Pass::Session).stem();
    let file = |part: &str| raw_file(ctx.raw, &stem, part);
    let mut up = Up {
        c: c.clone(),
        proc: None,
        record: ServerProcRecord::default(),
        counters: None,
        hosts: Vec::new(),
        broken: None,
        lost_requests: false,
        stopped: false,
        isolated: None,
    };
    let counters = if c.is_backend() { LiveCounters::create().ok() } else { None };
    let fd = counters.as_ref().map(|(_, fd)| std::os::fd::AsRawFd::as_raw_fd(fd));
    let started = server_spec(ctx, c, &file, fd).and_then(|(spec, kind)| {
        up.record.kind = kind;
        up.record.command = shown(&spec);
        ServerProc::spawn(spec, Duration::from_secs_f64(ctx.cfg.ready_timeout_s))
    });
    match started {
        Ok(p) => {
            up.record.pid = p.pid();
            up.proc = Some(p);
            // The server has its own mapping now; ours reads it, the descriptor can go.
            up.counters = counters.map(|(c, _)| c);
        }
        Err(e) => {
            up.record.error = Some(format!("{e:#}"));
            up.broken = Some(format!("server did not start: {e:#}"));
        }
    }
    up
}

/// Starts every running server's clients (one per client host), in `order`, and waits
/// until each has connected everything.
pub(super) fn connect_clients(ctx: &Ctx<'_>, place: &Place, ups: &mut [Up], order: &[usize], block: usize) {
    let h = Hosts { exe: ctx.exe, cfg: ctx.cfg, network: ctx.network, interrupted: ctx.interrupted };
    for &i in order {
        let u = &mut ups[i];
        if u.broken.is_some() {
            continue;
        }
        let Some(addr) = u.proc.as_ref().map(ServerProc::addr) else { continue };
        let key = place.key(&u.c.name, block, Pass::Session);
        let stem = key.stem();
        let workload = workload_args(ctx.cfg, &key, addr);
        match clients::spawn(&h, place.connections, &workload, place.rate, &|part| raw_file(ctx.raw, &stem, part)) {
            Ok(hosts) => u.hosts = hosts,
            Err(e) => u.broken = Some(format!("client not started: {e:#}")),
        }
    }
    for &i in order {
        let u = &mut ups[i];
        if u.broken.is_some() {
            continue;
        }
        let failed = clients::await_ready(&h, &mut u.hosts, place.connections);
        if !failed.is_empty() {
            u.broken = Some(format!("client host {}", failed.join("; client host ")));
        }
    }
}

/// Watches every server idle for [`SETTLE`]; one that uses CPU meanwhile is set apart
/// before the first round.
pub(super) fn settle(ups: &mut [Up], log: &mut SliceLog) {
    // Start-up may still be finishing (the thread-per-connection server zeroes a read
    // buffer for each of its threads after the client says it is connected): watch in
    // windows until every server is quiet, or the limit; only what still burns CPU then
    // is set apart.
    let deadline = Instant::now() + SETTLE_LIMIT;
    loop {
        let a = sample(ups);
        std::thread::sleep(SETTLE);
        let b = sample(ups);
        let wall = b.at.duration_since(a.at).as_secs_f64();
        let busy: Vec<(usize, f64)> = (0..ups.len())
            .filter_map(|i| cpu_between(&a, &b, i).map(|c| (i, c / wall)))
            .filter(|&(_, share)| share > IDLE_CPU_SHARE)
            .collect();
        if busy.is_empty() {
            return;
        }
        if Instant::now() >= deadline {
            for (i, share) in busy {
                let why = format!("it used {:.0} % of a CPU while no server was loaded", 100.0 * share);
                isolate(&mut ups[i], 0, why, log);
            }
            return;
        }
    }
}

/// Waits until `u`'s CPU clock stands still (moves less than [`QUIET_SHARE`] of a window
/// of [`QUIET_WINDOW`]), for at most [`QUIET_LIMIT`].
fn quiesce(u: &Up) {
    let Some(pid) = u.pid() else { return };
    let deadline = Instant::now() + QUIET_LIMIT;
    let mut last = sys::process_cpu_ns(pid).ok();
    while Instant::now() < deadline {
        std::thread::sleep(QUIET_WINDOW);
        let now = sys::process_cpu_ns(pid).ok();
        match (last, now) {
            (Some(a), Some(b)) if (b.saturating_sub(a) as f64) < QUIET_SHARE * QUIET_WINDOW.as_nanos() as f64 => return,
            (_, None) => return,
            _ => last = now,
        }
    }
}

pub(super) fn isolate(u: &mut Up, round: usize, why: String, log: &mut SliceLog) {
    if u.isolated.is_some() || u.proc.is_none() {
        return;
    }
    u.signal(libc::SIGSTOP);
    log.isolated.push(Isolation { server: u.c.name.clone(), from_round: round, why: why.clone() });
    u.isolated = Some(why);
}

/// One slice of server `i` in `round`: its clients load it for `slice_s` while every
/// server's clocks are read around it; its files are written, and any other server that
/// moved is set apart.
pub(super) fn slice(
    ctx: &Ctx<'_>,
    place: &Place,
    ups: &mut [Up],
    i: usize,
    round: usize,
    log: &mut SliceLog,
    figures: &mut Figures,
) -> anyhow::Result<()> {
    let cfg = ctx.cfg;
    let slice_s = log.slice_s;
    if ups[i].stopped {
        ups[i].signal(libc::SIGCONT);
    }
    let stolen_before = Stolen::read(cfg);
    let before = sample(ups);
    for h in &mut ups[i].hosts {
        if let Err(why) = h.shard.slice(slice_s) {
            ups[i].broken = Some(format!("client host {} failed: {why}", h.label));
        }
    }
    let limit = Duration::from_secs_f64(slice_s + cfg.warmup_s.unwrap_or(0.0) + 3.0 * cfg.timeout_s + 30.0);
    // Waited for in short steps, so a Ctrl-C ends a long slice at once.
    let reports: Vec<(String, Result<ShardReport, String>)> = ups[i]
        .hosts
        .iter_mut()
        .map(|h| {
            let r = clients::wait_line(&mut h.shard, limit, ctx.interrupted)
                .and_then(|()| h.shard.report_within(Duration::ZERO));
            if r.is_err() {
                h.shard.kill();
            }
            (h.label.clone(), r)
        })
        .collect();
    if ctx.interrupted.load(std::sync::atomic::Ordering::Relaxed) {
        // A slice cut short is not a measurement: nothing of it is written.
        ups[i].broken = Some("interrupted".into());
        return Ok(());
    }
    // What the slice left the server to do (closing crr's last connections, writing their
    // log rows) is the slice's: wait until its clock stands still before reading it.
    quiesce(&ups[i]);
    let after = sample(ups);
    let stolen = Stolen::read(cfg).share_since(&stolen_before, after.at.duration_since(before.at));
    if ups[i].isolated.is_some() {
        ups[i].signal(libc::SIGSTOP);
    }
    let name = ups[i].c.name.clone();
    let stem = place.key(&name, round, Pass::Measure).stem();
    let mut requests = 0u64;
    let mut rps = 0.0;
    for (label, r) in reports {
        match r {
            Ok(r) => {
                ups[i].lost_requests |= r.summary.errors > 0 || r.summary.requests != r.summary.requests_expected;
                requests += r.summary.requests;
                rps += r.summary.throughput_rps;
                files::write_json(Path::new(&raw_file(ctx.raw, &stem, &format!("client-{label}.json"))), &r.summary)?;
            }
            Err(why) => {
                let why = format!("client host {label} failed in round {round}: {why}");
                log.failures.push(format!("{name}: {why}"));
                ups[i].broken = Some(why);
            }
        }
    }
    let wall = after.at.duration_since(before.at).as_secs_f64();
    let cpu_s = cpu_between(&before, &after, i);
    let record = ServerProcRecord {
        cpu_s,
        cpu_proc_stat_s: after.stat_s[i].zip(before.stat_s[i]).map(|(b, a)| b - a),
        measured_s: Some(wall),
        syscalls: after.syscalls[i].zip(before.syscalls[i]).map(|(b, a)| b.saturating_sub(a)),
        exit: "running (paired slices: the session's record has its exit)".into(),
        ..ups[i].record.clone()
    };
    files::write_json(Path::new(&raw_file(ctx.raw, &stem, "server-proc.json")), &record)?;
    if let (Some(cpu), true) = (cpu_s, requests > 0) {
        figures.entry(name.clone()).or_default().push((round, cpu * 1e6 / requests as f64, rps));
    }
    let mut rec = SliceRecord {
        round,
        server: name.clone(),
        start_unix_us: before.unix_us,
        end_unix_us: after.unix_us,
        server_cpus_stolen_share: stolen.0,
        client_cpus_stolen_share: stolen.1,
        ..SliceRecord::default()
    };
    for j in (0..ups.len()).filter(|&j| j != i) {
        let Some(moved) = cpu_between(&before, &after, j) else { continue };
        rec.others_cpu_s.push((ups[j].c.name.clone(), moved));
        if moved > IDLE_CPU_SHARE * wall {
            rec.disturbed_by.push(ups[j].c.name.clone());
            let why = format!(
                "it used {:.0} % of a CPU during a slice of {name} (round {round}), while not loaded",
                100.0 * moved / wall
            );
            isolate(&mut ups[j], round, why, log);
        }
    }
    log.slices.push(rec);
    Ok(())
}

/// Ends every client session (their rows over every slice are written) and stops every
/// server (its log and summary are written by itself), whatever happened before.
pub(super) fn wind_down(ctx: &Ctx<'_>, place: &Place, ups: &mut [Up], block: usize) -> anyhow::Result<()> {
    let mut first_error = None;
    for u in ups.iter_mut() {
        let stem = place.key(&u.c.name, block, Pass::Session).stem();
        let limit = Duration::from_secs_f64(30.0 + 3.0 * ctx.cfg.timeout_s + place.connections as f64 / 500.0);
        // A stopped server cannot let its clients close: it goes on first.
        if u.stopped {
            u.signal(libc::SIGCONT);
        }
        for h in &mut u.hosts {
            h.shard.quit();
        }
        for h in &mut u.hosts {
            match h.shard.report_within(limit) {
                Ok(r) => {
                    let json = raw_file(ctx.raw, &stem, &format!("client-{}.json", h.label));
                    let csv = raw_file(ctx.raw, &stem, &format!("client-{}.csv", h.label));
                    let written = files::write_json(Path::new(&json), &r.summary)
                        .and_then(|()| write_rows_csv(Path::new(&csv), &r.rows));
                    if let Err(e) = written {
                        first_error.get_or_insert(e);
                    }
                }
                Err(_) => h.shard.kill(),
            }
        }
        if let Some(p) = u.proc.take() {
            match p.stop(STOP_GRACE) {
                Ok(stopped) => u.record.exit = describe_exit(stopped.status),
                Err(e) => u.record.exit = format!("could not be stopped: {e}"),
            }
        }
        let written = files::write_json(Path::new(&raw_file(ctx.raw, &stem, "server-proc.json")), &u.record)
            .with_context(|| format!("the record of {}", u.c.name));
        if let Err(e) = written {
            first_error.get_or_insert(e);
        }
    }
    first_error.map_or(Ok(()), Err)
}

/// A file of `raw/` for `stem`.
pub(super) fn raw_file(raw: &Path, stem: &str, part: &str) -> String {
    raw.join(format!("{stem}.{part}")).display().to_string()
}
