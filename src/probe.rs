//! `ringbench probe`: the costs that decide whether io_uring saves CPU here, measured on
//! this machine, pinned like the sweep — a null syscall, an `epoll_wait` that returns one
//! ready event, a 64-byte write and read over loopback TCP, an io_uring NOP alone and in a
//! batch of 64, and a wake-up from one CPU to the other.
//!
//! Each cost is timed in batches; the figure is the median batch's time per operation,
//! with the 10th and 90th percentile batches as its spread. Machines differ most in the
//! first: a syscall's entry and exit cost what the CPU's speculative-execution
//! mitigations make them cost, and io_uring saves syscalls.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsFd, AsRawFd};
use std::time::{Duration, Instant};

use anyhow::Context;
use ringbench_backends::io_uring::{opcode, IoUring};
use ringbench_backends::sys::{self, Epoll, Events, Interest, Syscalls, Token};
use serde::{Deserialize, Serialize};

/// One measured cost.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Cost {
    pub name: String,
    pub what: String,
    pub median_ns: f64,
    pub p10_ns: f64,
    pub p90_ns: f64,
    /// Batches timed, and operations per batch.
    pub batches: usize,
    pub ops_per_batch: usize,
}

/// Everything the probe measured.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ProbeReport {
    /// The CPU the costs were measured on (the sweep's server CPU), and the other end of
    /// the wake-up (its client CPU); `None` when not pinned.
    pub server_cpu: Option<usize>,
    pub client_cpu: Option<usize>,
    pub costs: Vec<Cost>,
    pub took_s: f64,
    /// Costs it could not measure here, each with why (`cross_cpu_wakeup` on one CPU).
    #[serde(default)]
    pub not_measured: Vec<NotMeasured>,
}

/// A cost the probe names but could not measure on this machine.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct NotMeasured {
    pub name: String,
    pub why: String,
}

impl ProbeReport {
    /// The median cost called `name`, in ns.
    pub fn ns(&self, name: &str) -> Option<f64> {
        self.costs.iter().find(|c| c.name == name).map(|c| c.median_ns)
    }
}

/// Batches per cost: enough for a stable median in well under a second each.
const BATCHES: usize = 25;

/// Operations run before timing starts (caches, branch predictors, lazy set-up).
fn warm_up(n: usize) -> usize {
    n.min(1000)
}

/// Times `op` run `n` times per batch, [`BATCHES`] times, after [`warm_up`] untimed
/// runs; per-operation ns by batch.
fn time(n: usize, mut op: impl FnMut() -> anyhow::Result<()>) -> anyhow::Result<Vec<f64>> {
    for _ in 0..warm_up(n) {
        op()?;
    }
    let mut per_op = Vec::with_capacity(BATCHES);
    for _ in 0..BATCHES {
        let t = Instant::now();
        for _ in 0..n {
            op()?;
        }
        per_op.push(t.elapsed().as_nanos() as f64 / n as f64);
    }
    Ok(per_op)
}

fn cost(name: &str, what: &str, n: usize, mut samples: Vec<f64>) -> Cost {
    samples.sort_by(f64::total_cmp);
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
    Cost {
        name: name.into(),
        what: what.into(),
        median_ns: at(0.5),
        p10_ns: at(0.1),
        p90_ns: at(0.9),
        batches: samples.len(),
        ops_per_batch: n,
    }
}

fn null_syscall() -> anyhow::Result<Cost> {
    let s = time(20_000, || {
        // SAFETY: getppid has no arguments and cannot fail.
        std::hint::black_box(unsafe { libc::syscall(libc::SYS_getppid) });
        Ok(())
    })?;
    Ok(cost("null_syscall", "getppid(2): a syscall's entry and exit", 20_000, s))
}

fn epoll_wait_one() -> anyhow::Result<Cost> {
    let mut sc = Syscalls::default();
    let ep = Epoll::new()?;
    let ready = sys::eventfd()?;
    sys::eventfd_signal(ready.as_fd())?;
    ep.add(&mut sc, ready.as_fd(), Interest::READ, Token(1))?;
    let mut events = Events::with_capacity(1);
    let s = time(10_000, || {
        let n = ep.wait(&mut sc, &mut events, Some(Duration::ZERO))?;
        anyhow::ensure!(n == 1, "epoll_wait returned {n} events");
        Ok(())
    })?;
    Ok(cost("epoll_wait_one_ready", "epoll_wait(2) returning one ready (level-triggered) event", 10_000, s))
}

fn tcp_pair() -> anyhow::Result<(TcpStream, TcpStream)> {
    let l = TcpListener::bind("127.0.0.1:0")?;
    let a = TcpStream::connect(l.local_addr()?)?;
    let (b, _) = l.accept()?;
    a.set_nodelay(true)?;
    b.set_nodelay(true)?;
    Ok((a, b))
}

fn tcp_loopback() -> anyhow::Result<Cost> {
    let (mut a, mut b) = tcp_pair()?;
    let (out, mut back) = ([7u8; 64], [0u8; 64]);
    let s = time(5_000, || {
        a.write_all(&out)?;
        b.read_exact(&mut back)?;
        Ok(())
    })?;
    Ok(cost(
        "tcp_write_read_64B",
        "write(2) of 64 bytes on loopback TCP and read(2) of them at the other end",
        5_000,
        s,
    ))
}

fn uring_nops(batch: usize) -> anyhow::Result<Cost> {
    let mut ring = IoUring::new(128).context("io_uring")?;
    let n = if batch == 1 { 10_000 } else { 500 };
    let s = time(n, || {
        for _ in 0..batch {
            // SAFETY: a NOP points at no memory.
            unsafe { ring.submission().push(&opcode::Nop::new().build()) }
                .map_err(|_| anyhow::anyhow!("submission queue full"))?;
        }
        ring.submit_and_wait(batch)?;
        let reaped = ring.completion().count();
        anyhow::ensure!(reaped == batch, "reaped {reaped} of {batch} NOPs");
        Ok(())
    })?;
    Ok(if batch == 1 {
        cost("io_uring_nop", "io_uring_enter submitting one NOP and reaping it", n, s)
    } else {
        let per_nop = s.into_iter().map(|x| x / batch as f64).collect();
        cost("io_uring_nop_batch64", "per NOP, 64 NOPs submitted and reaped in one io_uring_enter", n * batch, per_nop)
    })
}

/// Half a round trip between a thread on each CPU, each blocked in `read` on an eventfd
/// the other writes: what a loopback echo pays to wake the client's thread.
fn cross_cpu_wakeup(server_cpu: Option<usize>, client_cpu: Option<usize>) -> anyhow::Result<Cost> {
    let ping = sys::eventfd()?;
    let pong = sys::eventfd()?;
    set_blocking(&ping)?;
    set_blocking(&pong)?;
    let rounds = 1_000;
    // The other thread answers exactly as many pings as `time` sends.
    let total = warm_up(rounds) + BATCHES * rounds;
    let (p2, q2) = (ping.try_clone()?, pong.try_clone()?);
    let other = std::thread::spawn(move || -> std::io::Result<()> {
        if let Some(c) = client_cpu {
            sys::set_affinity(&[c])?;
        }
        let mut buf = [0u8; 8];
        for _ in 0..total {
            sys::read(p2.as_fd(), &mut buf)?;
            sys::eventfd_signal(q2.as_fd())?;
        }
        Ok(())
    });
    if let Some(c) = server_cpu {
        sys::set_affinity(&[c])?;
    }
    let mut buf = [0u8; 8];
    let s = time(rounds, || {
        sys::eventfd_signal(ping.as_fd())?;
        sys::read(pong.as_fd(), &mut buf)?;
        Ok(())
    })?;
    other.join().map_err(|_| anyhow::anyhow!("wake-up thread panicked"))??;
    let one_way = s.into_iter().map(|x| x / 2.0).collect();
    Ok(cost("cross_cpu_wakeup", "waking a thread blocked on another CPU (half an eventfd round trip)", rounds, one_way))
}

fn set_blocking(fd: &std::os::fd::OwnedFd) -> anyhow::Result<()> {
    // SAFETY: F_GETFL/F_SETFL on a descriptor we own.
    let flags = sys::cvt(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFL) })?;
    // SAFETY: as above; clearing O_NONBLOCK only.
    sys::cvt(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags & !libc::O_NONBLOCK) })?;
    Ok(())
}

/// Measures every cost, on `server_cpu` (and `client_cpu` for the wake-up) when given.
/// A cost that cannot be measured here (io_uring blocked) is left out, with the reason.
pub fn run(server_cpu: Option<usize>, client_cpu: Option<usize>) -> anyhow::Result<(ProbeReport, Vec<String>)> {
    let t0 = Instant::now();
    let all = sys::affinity().unwrap_or_default();
    let measured = std::thread::scope(|s| {
        s.spawn(|| measure_all(&all, server_cpu, client_cpu))
            .join()
            .map_err(|_| anyhow::anyhow!("probe thread panicked"))?
    })?;
    if !all.is_empty() {
        let _ = sys::set_affinity(&all);
    }
    let (costs, skipped) = measured;
    let not_measured = skipped
        .iter()
        .filter_map(|s| s.split_once(": "))
        .map(|(name, why)| NotMeasured { name: name.into(), why: why.into() })
        .collect();
    Ok((ProbeReport { server_cpu, client_cpu, costs, took_s: t0.elapsed().as_secs_f64(), not_measured }, skipped))
}

/// Every cost, on a thread of its own pinned to `server_cpu`; what cannot be measured
/// here is named with why.
fn measure_all(
    all: &[usize],
    server_cpu: Option<usize>,
    client_cpu: Option<usize>,
) -> anyhow::Result<(Vec<Cost>, Vec<String>)> {
    if let Some(c) = server_cpu {
        sys::set_affinity(&[c])?;
    }
    let mut costs = vec![null_syscall()?, epoll_wait_one()?, tcp_loopback()?];
    let mut skipped = Vec::new();
    for (batch, name) in [(1, "io_uring_nop"), (64, "io_uring_nop_batch64")] {
        match uring_nops(batch) {
            Ok(c) => costs.push(c),
            Err(e) => skipped.push(format!("{name}: not measured ({e:#})")),
        }
    }
    match wakeup_cpus(all, server_cpu, client_cpu) {
        Some((from, to)) => costs.push(cross_cpu_wakeup(Some(from), Some(to))?),
        None => {
            skipped.push("cross_cpu_wakeup: not measured (one CPU): there is no other CPU to wake a thread on".into())
        }
    }
    Ok((costs, skipped))
}

/// The two CPUs of the wake-up: the ones asked for, else the first two this process may
/// use; `None` when there is only one (then a "cross-CPU" wake-up would be a same-CPU one).
fn wakeup_cpus(allowed: &[usize], server: Option<usize>, client: Option<usize>) -> Option<(usize, usize)> {
    let from = server.or(allowed.first().copied())?;
    let to = client.or_else(|| allowed.iter().copied().find(|&c| c != from))?;
    (from != to && allowed.len() > 1).then_some((from, to))
}

impl std::fmt::Display for ProbeReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let cpu = |c: Option<usize>| c.map_or("any".to_string(), |c| c.to_string());
        writeln!(
            f,
            "ringbench probe (CPU {}, wake-ups to CPU {}; median of {BATCHES} batches, p10–p90)",
            cpu(self.server_cpu),
            cpu(self.client_cpu)
        )?;
        for c in &self.costs {
            writeln!(f, "  {:<22} {:>9.1} ns  ({:.1}–{:.1})  {}", c.name, c.median_ns, c.p10_ns, c.p90_ns, c.what)?;
        }
        for n in &self.not_measured {
            writeln!(f, "  {:<22} {}", n.name, n.why)?;
        }
        write!(f, "  took {:.1} s", self.took_s)
    }
}
