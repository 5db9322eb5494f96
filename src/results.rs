//! What a run produces, as data: the client's per-connection rows and summary, the raw
//! file names of a sweep, latency histograms in a form that merges across hosts, and (in
//! `slices`) the record of a paired point.
//!
//! The client writes these, the sweep names them, and the report reads them; the report
//! depends on nothing else of the tool.

use std::io;
use std::path::Path;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::workload::Workload;

mod slices;
pub use slices::{BlockRecord, Isolation, SliceLog, SliceRecord};

/// One row of the client CSV: what one thread (one connection) did.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ThreadRow {
    pub thread: usize,
    pub label: String,
    /// Requests completed and verified.
    pub requests: u64,
    /// Bytes echoed back and verified.
    pub bytes: u64,
    /// From the start gate to the thread's last reply (the seed's "Total Duration" when
    /// it ran one round).
    pub total_duration_s: f64,
    /// Mean round-trip time of its requests (the seed's "Avg Response").
    pub avg_response_s: f64,
    pub p50_response_s: f64,
    pub p99_response_s: f64,
    pub max_response_s: f64,
    /// Errors on this connection (a connection stops at its first error, so 0 or 1).
    pub errors: u64,
    /// The first error's text; empty if none.
    pub error: String,
    /// Rounds of `requests_per_connection` it ran (more than one with `--min-run-s`).
    #[serde(default = "one")]
    pub rounds: u64,
}

fn one() -> u64 {
    1
}

fn threads_engine() -> String {
    "threads".into()
}

/// A latency distribution's summary, in microseconds.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Percentiles {
    pub count: u64,
    pub mean_us: f64,
    pub p50_us: f64,
    pub p90_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub p9999_us: f64,
    pub max_us: f64,
}

impl Percentiles {
    pub fn of(h: &Histogram<u64>) -> Percentiles {
        if h.is_empty() {
            return Percentiles::default();
        }
        let us = |q: f64| h.value_at_quantile(q) as f64 / 1e3;
        Percentiles {
            count: h.len(),
            mean_us: h.mean() / 1e3,
            p50_us: us(0.50),
            p90_us: us(0.90),
            p99_us: us(0.99),
            p999_us: us(0.999),
            p9999_us: us(0.9999),
            max_us: h.max() as f64 / 1e3,
        }
    }
}

impl ThreadRow {
    /// Time for one round of its requests: the seed's Total Duration.
    pub fn round_duration_s(&self) -> f64 {
        self.total_duration_s / self.rounds.max(1) as f64
    }
}

/// The run as a whole: printed on stdout and written with `--json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ClientSummary {
    pub label: String,
    pub server: String,
    pub connections: usize,
    pub connections_ok: usize,
    pub connections_failed: usize,
    /// Requests per connection and round.
    pub requests_per_connection: u64,
    /// With `--min-run-s`: each connection repeats its requests in rounds until the run
    /// has lasted this long (0: one round, the seed's workload).
    #[serde(default)]
    pub min_run_s: f64,
    /// Requests the connections were to complete: their rounds × requests per round.
    #[serde(default)]
    pub requests_expected: u64,
    pub size_bytes: usize,
    /// Requests completed and verified, over all connections.
    pub requests: u64,
    pub bytes: u64,
    /// Threads whose run ended with an error (failed connects included).
    pub errors: u64,
    /// From the start gate until the last thread finished.
    pub wall_s: f64,
    pub throughput_rps: f64,
    pub latency_mean_us: f64,
    pub latency_p50_us: f64,
    pub latency_p90_us: f64,
    pub latency_p99_us: f64,
    pub latency_p999_us: f64,
    pub latency_max_us: f64,
    /// The seed's AvgTotalDuration: the mean over connections of the time for one round.
    pub avg_total_duration_s: f64,
    /// The seed's AvgResponseTime: the mean of the threads' mean round trips.
    pub avg_response_time_s: f64,
    /// Time to establish the connections before the start gate.
    pub connect_mean_s: f64,
    pub connect_max_s: f64,
    /// What the latency figures measure, in words.
    pub latency_model: String,
    /// `threads` (a blocking thread per connection) or `epoll` (a few event loops).
    #[serde(default = "threads_engine")]
    pub engine: String,
    /// Open loop: the rate asked for and the rate that left in the measured window, and
    /// whether it held (`held`, `client-bound`, `saturated`).
    #[serde(default)]
    pub target_rate_rps: Option<f64>,
    #[serde(default)]
    pub achieved_rate_rps: Option<f64>,
    #[serde(default)]
    pub rate_status: Option<String>,
    /// Open loop: the warm-up (not measured) and the measured window, in seconds.
    #[serde(default)]
    pub warmup_s: f64,
    #[serde(default)]
    pub duration_s: f64,
    /// Round trips from the actual send; the latency_* fields above are the same.
    #[serde(default)]
    pub service: Percentiles,
    /// From the intended send of an open-loop schedule (coordinated omission corrected);
    /// the same as `service` in a closed loop.
    #[serde(default)]
    pub corrected: Percentiles,
    /// Open loop: how late sends left against their schedule.
    #[serde(default)]
    pub send_lateness: Option<Percentiles>,
    /// The client process's own CPU time over the measured phase (user + system).
    #[serde(default)]
    pub client_cpu_s: f64,
    /// Every round trip in nanoseconds as an HdrHistogram (V2 serialization, base64), so
    /// reports can merge the latencies of several client hosts exactly: service times,
    /// corrected times, send lateness.
    #[serde(default)]
    pub latency_histogram: String,
    #[serde(default)]
    pub corrected_histogram: String,
    #[serde(default)]
    pub lateness_histogram: String,
    /// When the measured phase began (the start gate opened) and ended (the last
    /// connection finished): UTC, microseconds since the Unix epoch.
    #[serde(default)]
    pub measured_start_unix_us: u64,
    #[serde(default)]
    pub measured_end_unix_us: u64,
    /// The first failed connection's error, so a summary without rows (a paired slice)
    /// still says what went wrong.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_error: Option<String>,
    /// What each connection did (`rr`, `crr`, `pipeline:D`, `stream`, `idle:K`).
    #[serde(default = "rr")]
    pub workload: String,
    /// crr: each connection's connect, as a histogram (ns) and its summary.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub connect_histogram: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connect: Option<Percentiles>,
    /// idle:K: the idle connections, and how many echoed their one request at the end.
    #[serde(default)]
    pub idle_connections: usize,
    #[serde(default)]
    pub idle_echoed: usize,
}

fn rr() -> String {
    "rr".into()
}

/// How to read the latency figures; printed with them.
pub const LATENCY_MODEL: &str =
    "closed-loop: one request in flight per connection; each latency is one full round trip";

/// A histogram as base64 of its V2 serialization (empty if it cannot be serialized).
pub fn encode_histogram(h: &Histogram<u64>) -> String {
    use base64::Engine;
    use hdrhistogram::serialization::Serializer;
    let mut buf = Vec::new();
    match hdrhistogram::serialization::V2Serializer::new().serialize(h, &mut buf) {
        Ok(_) => base64::engine::general_purpose::STANDARD.encode(buf),
        Err(_) => String::new(),
    }
}

/// The inverse of [`encode_histogram`].
pub fn decode_histogram(s: &str) -> Option<Histogram<u64>> {
    use base64::Engine;
    let bytes = base64::engine::general_purpose::STANDARD.decode(s).ok()?;
    hdrhistogram::serialization::Deserializer::new().deserialize(&mut bytes.as_slice()).ok()
}

/// Writes the per-thread CSV (whole, or an error naming the file).
pub fn write_rows_csv(path: &Path, rows: &[ThreadRow]) -> anyhow::Result<()> {
    crate::files::write_csv(path, rows)
}

/// Reads a per-thread CSV back.
pub fn read_rows_csv(path: &Path) -> io::Result<Vec<ThreadRow>> {
    let mut r = csv::Reader::from_path(path).map_err(io::Error::other)?;
    r.deserialize().map(|row| row.map_err(io::Error::other)).collect()
}

/// What a run is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Pass {
    /// Every figure (`_r{n}` in file names).
    Measure,
    /// Only the server's syscalls, counted by `perf` in a run of its own because tracing
    /// costs CPU per syscall (`_p{n}`).
    Syscalls,
    /// One server's life in one block of a paired point (`_session{block}`): its log, its
    /// summary, its exit, and its clients' rows over every slice of the block. Its slices
    /// are `Measure` runs, the repeat number being the round.
    Session,
}

/// Which run a raw file belongs to.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RunKey {
    /// The server: a backend (or variant) name, or an external target's name.
    pub backend: String,
    /// What each connection did (`rr` leaves file names as they always were).
    pub workload: Workload,
    pub connections: usize,
    pub size_bytes: usize,
    /// The open-loop rate offered, requests per second (`None`: a closed loop).
    pub rate: Option<u64>,
    pub repeat: usize,
    pub pass: Pass,
}

impl RunKey {
    /// The file-name stem, e.g. `uring_c1000_s64_r2` (`_p1` for a syscall run,
    /// `_q20000` before it for an open loop at 20,000 req/s, `_wcrr` after the server for
    /// another workload than rr).
    pub fn stem(&self) -> String {
        let run = match self.pass {
            Pass::Measure => format!("r{}", self.repeat),
            Pass::Syscalls => format!("p{}", self.repeat),
            Pass::Session => format!("session{}", self.repeat),
        };
        format!("{}_{}_{run}", self.backend, self.place().stem())
    }

    /// Where in the sweep the run is.
    pub fn place(&self) -> Place {
        Place { workload: self.workload, connections: self.connections, size_bytes: self.size_bytes, rate: self.rate }
    }

    /// Parses a stem written by [`RunKey::stem`].
    pub fn parse(stem: &str) -> Option<RunKey> {
        let mut parts: Vec<&str> = stem.split('_').collect();
        let last = parts.pop()?;
        let (pass, repeat) = match (last.strip_prefix('r'), last.strip_prefix('p')) {
            _ if last.starts_with("session") => (Pass::Session, last["session".len()..].parse().ok()?),
            (Some(n), _) => (Pass::Measure, n.parse().ok()?),
            (_, Some(n)) => (Pass::Syscalls, n.parse().ok()?),
            _ => return None,
        };
        let rate = match parts.last().and_then(|p| p.strip_prefix('q')) {
            Some(r) => {
                let r = r.parse().ok()?;
                parts.pop();
                Some(r)
            }
            None => None,
        };
        let size_bytes = parts.pop()?.strip_prefix('s')?.parse().ok()?;
        let connections = parts.pop()?.strip_prefix('c')?.parse().ok()?;
        let workload = match parts.last().and_then(|p| p.strip_prefix('w')).and_then(Workload::from_stem) {
            Some(w) if parts.len() > 1 => {
                parts.pop();
                w
            }
            _ => Workload::Rr,
        };
        let backend = parts.join("_");
        (!backend.is_empty()).then_some(RunKey { backend, workload, connections, size_bytes, rate, repeat, pass })
    }
}

/// What the sweep saw of one run's server process (`{stem}.server-proc.json`): the same
/// for ringbench's backends and for external targets.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ServerProcRecord {
    /// `ringbench` (one of its backends) or `target` (any other server).
    pub kind: String,
    pub command: String,
    pub pid: i32,
    /// CPU time (user + system) of the whole server process, every thread, from when the
    /// client's start gate opened to when its last connection finished, sampled at the
    /// client's marks: the process's CPU clock (`clock_getcpuclockid`), in nanoseconds.
    pub cpu_s: Option<f64>,
    /// The same, from `/proc/PID/stat` utime + stime: the same total, rounded by the
    /// kernel to clock ticks (10 ms); a cross-check.
    #[serde(default)]
    pub cpu_proc_stat_s: Option<f64>,
    /// Wall time between the two samples.
    pub measured_s: Option<f64>,
    /// A paired slice of a ringbench backend: the syscalls it counted itself over the
    /// slice (read from its live counters, between the same two samples).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub syscalls: Option<u64>,
    /// A syscall run: `raw_syscalls:sys_enter` counted by `perf stat -p PID`, from after
    /// the server was ready until it exited.
    pub perf_syscalls: Option<u64>,
    /// Why `perf` counted nothing, when it was asked to.
    pub perf_error: Option<String>,
    /// How it ended after SIGTERM (`exit 0`, `signal 15`, `killed after 10 s`).
    pub exit: String,
    /// Why the server could not be run (it never listened, it exited early).
    pub error: Option<String>,
}

/// The name of the A/A calibration's second instance of `baseline` (`--aa`).
pub fn aa_name(baseline: &str) -> String {
    format!("{baseline}-aa")
}

/// A place in a sweep: the workload, connections, request size, and the offered rate of
/// an open loop.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Place {
    #[serde(default)]
    pub workload: Workload,
    pub connections: usize,
    pub size_bytes: usize,
    pub rate: Option<u64>,
}

impl Place {
    /// `c1000_s64` (`_q20000` for an open loop at 20,000 req/s, `wcrr_` before it for
    /// another workload than rr): the slice log's name.
    pub fn stem(&self) -> String {
        let q = self.rate.map_or(String::new(), |r| format!("_q{r}"));
        let w = self.workload.stem().map_or(String::new(), |w| format!("w{w}_"));
        format!("{w}c{}_s{}{q}", self.connections, self.size_bytes)
    }

    /// The run of `server` here.
    pub fn key(&self, server: &str, repeat: usize, pass: Pass) -> RunKey {
        RunKey {
            backend: server.to_string(),
            workload: self.workload,
            connections: self.connections,
            size_bytes: self.size_bytes,
            rate: self.rate,
            repeat,
            pass,
        }
    }

    /// Parses a stem written by [`Place::stem`].
    pub fn parse(stem: &str) -> Option<Place> {
        let probe = RunKey::parse(&format!("x_{stem}_r1"))?;
        Some(probe.place())
    }
}

impl std::fmt::Display for ClientSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "ringbench client summary ({})", self.label)?;
        writeln!(f, "  server             {}", self.server)?;
        writeln!(
            f,
            "  connections        {} ok, {} failed of {}",
            self.connections_ok, self.connections_failed, self.connections
        )?;
        let each = match self.target_rate_rps {
            Some(_) => format!("open loop, warm-up included, {} bytes each", self.size_bytes),
            None => format!("{} per connection x {} bytes", self.requests_per_connection, self.size_bytes),
        };
        writeln!(
            f,
            "  requests           {} verified ({each}), {} bytes, {} errors",
            self.requests, self.bytes, self.errors
        )?;
        writeln!(
            f,
            "  wall               {:.3} s   throughput {:.0} req/s   engine {}   client CPU {:.3} s",
            self.wall_s, self.throughput_rps, self.engine, self.client_cpu_s
        )?;
        if let (Some(t), Some(a)) = (self.target_rate_rps, self.achieved_rate_rps) {
            writeln!(
                f,
                "  rate               {a:.0} of {t:.0} req/s over {:.1} s after a {:.1} s warm-up: {}",
                self.duration_s,
                self.warmup_s,
                self.rate_status.as_deref().unwrap_or("?")
            )?;
        }
        let line = |f: &mut std::fmt::Formatter<'_>, name: &str, p: &Percentiles| {
            writeln!(
                f,
                "  {name:<18} mean {:.1}  p50 {:.1}  p90 {:.1}  p99 {:.1}  p99.9 {:.1}  p99.99 {:.1}  max {:.1}",
                p.mean_us, p.p50_us, p.p90_us, p.p99_us, p.p999_us, p.p9999_us, p.max_us
            )
        };
        if self.target_rate_rps.is_some() {
            line(f, "corrected (us)", &self.corrected)?;
            line(f, "service (us)", &self.service)?;
            if let Some(l) = &self.send_lateness {
                line(f, "send late (us)", l)?;
            }
        } else {
            line(f, "latency (us)", &self.service)?;
        }
        writeln!(f, "  latency model      {}", self.latency_model)?;
        writeln!(f, "  AvgTotalDuration   {:.6} s", self.avg_total_duration_s)?;
        writeln!(f, "  AvgResponseTime    {:.6} s", self.avg_response_time_s)?;
        if let Some(c) = &self.connect {
            writeln!(
                f,
                "  connect (us)       mean {:.1}  p50 {:.1}  p99 {:.1}  max {:.1}  ({} connections, one a request)",
                c.mean_us, c.p50_us, c.p99_us, c.max_us, c.count
            )?;
        }
        if self.idle_connections > 0 {
            writeln!(
                f,
                "  idle               {} of {} idle connections echoed at the end",
                self.idle_echoed, self.idle_connections
            )?;
        }
        writeln!(f, "  workload           {}", self.workload)?;
        write!(f, "  connect            mean {:.6} s, max {:.6} s", self.connect_mean_s, self.connect_max_s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_keys_round_trip_with_hyphenated_backends() {
        let mut k = RunKey {
            backend: "uring-no-bufring".into(),
            workload: Workload::Rr,
            connections: 1500,
            size_bytes: 64,
            rate: None,
            repeat: 3,
            pass: Pass::Measure,
        };
        assert_eq!(k.stem(), "uring-no-bufring_c1500_s64_r3");
        assert_eq!(RunKey::parse(&k.stem()), Some(k.clone()));
        k.pass = Pass::Syscalls;
        assert_eq!(k.stem(), "uring-no-bufring_c1500_s64_p3");
        assert_eq!(RunKey::parse(&k.stem()), Some(k.clone()));
        k.rate = Some(20_000);
        assert_eq!(k.stem(), "uring-no-bufring_c1500_s64_q20000_p3");
        assert_eq!(RunKey::parse(&k.stem()), Some(k.clone()));
        k.pass = Pass::Session;
        k.repeat = 2;
        assert_eq!(k.stem(), "uring-no-bufring_c1500_s64_q20000_session2");
        assert_eq!(RunKey::parse(&k.stem()), Some(k.clone()));
        assert_eq!(k.place().stem(), "c1500_s64_q20000");
        assert_eq!(Place::parse("c1500_s64_q20000"), Some(k.place()));
        k.workload = Workload::Pipeline { depth: 8 };
        assert_eq!(k.stem(), "uring-no-bufring_wpipeline8_c1500_s64_q20000_session2");
        assert_eq!(RunKey::parse(&k.stem()), Some(k.clone()));
        assert_eq!(Place::parse("wpipeline8_c1500_s64_q20000"), Some(k.place()));
        assert_eq!(RunKey::parse("notes"), None);
        assert_eq!(RunKey::parse("_c1_s1_r1"), None);
    }
}
