//! The one table of figures a report shows. Each entry says how a run's value is computed
//! and where it appears: its column in `overall.csv`/`overall.json`, its column in
//! `summary.md`, its chart. Adding a figure to the report is one entry here.

use hdrhistogram::Histogram;
use ringbench_backends::ServerSummary;

use crate::results::{ClientSummary, ServerProcRecord, ThreadRow};

/// Which way is better, for sentences and chart subtitles.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Better {
    Lower,
    Higher,
}

impl Better {
    pub fn phrase(self) -> &'static str {
        match self {
            Better::Lower => "lower is better",
            Better::Higher => "higher is better",
        }
    }
}

/// How a chart shows a figure.
pub struct ChartSpec {
    /// File name without extension.
    pub file: &'static str,
    /// The y axis.
    pub axis: &'static str,
    /// From the stored unit to the axis's (1e3: seconds shown as milliseconds).
    pub scale: f64,
}

/// A figure of the report.
pub struct Metric {
    /// Its column in `overall.csv`, with its unit (`throughput_rps`).
    pub key: &'static str,
    pub title: &'static str,
    /// How a sentence names it ("CPU per request").
    pub what: &'static str,
    pub better: Better,
    /// Decimals kept in `overall.csv`.
    pub digits: i32,
    /// One of the headline columns at the front of `overall.csv` (the seed's and ours).
    pub headline: bool,
    /// Its `summary.md` column: header and decimals.
    pub table: Option<(&'static str, usize)>,
    pub chart: Option<ChartSpec>,
    /// Also drawn as a chart of each server's ratio to the baseline, with its interval.
    pub ratio_chart: bool,
    /// Also taken from the runs that count syscalls with perf (external targets), which
    /// give nothing else: tracing costs CPU per syscall and would bias the rest.
    pub syscall_run: bool,
    /// Its value for one run; `None` when the run has no such figure (n/a).
    pub of: fn(&RunView) -> Option<f64>,
}

/// A figure kept in `overall.csv` (with its spread and ratio) but not among the headline
/// columns, not in `summary.md`'s table, not charted, and not taken from syscall runs.
const fn detail(
    key: &'static str,
    title: &'static str,
    what: &'static str,
    better: Better,
    digits: i32,
    of: fn(&RunView) -> Option<f64>,
) -> Metric {
    Metric {
        key,
        title,
        what,
        better,
        digits,
        headline: false,
        table: None,
        chart: None,
        ratio_chart: false,
        syscall_run: false,
        of,
    }
}

/// One run as the metrics see it: every client host's rows and summaries, their merged
/// latency histogram, and the server's summary when there is one.
pub struct RunView<'a> {
    pub rows: Vec<&'a ThreadRow>,
    pub summaries: Vec<&'a ClientSummary>,
    /// Every host's round trips merged; `None` if a host's histogram is missing.
    pub latency: Option<Histogram<u64>>,
    /// Open loop: every host's corrected latencies and send lateness, merged.
    pub corrected: Option<Histogram<u64>>,
    pub lateness: Option<Histogram<u64>>,
    pub server: Option<&'a ServerSummary>,
    /// What the sweep saw of the server process.
    pub proc: Option<&'a ServerProcRecord>,
    /// Requests completed and verified, over every host.
    pub requests: u64,
    /// crr: every host's connects, merged.
    pub connect: Option<Histogram<u64>>,
}

impl RunView<'_> {
    /// The mean over every connection of `f`; without per-connection rows (a run kept
    /// as summaries only), the hosts' own means, weighted by their connections.
    fn mean_of_rows(&self, f: fn(&ThreadRow) -> f64, per_host: fn(&ClientSummary) -> f64) -> Option<f64> {
        if !self.rows.is_empty() {
            return Some(self.rows.iter().map(|r| f(r)).sum::<f64>() / self.rows.len() as f64);
        }
        let n: usize = self.summaries.iter().map(|s| s.connections).sum();
        (n > 0).then(|| self.summaries.iter().map(|s| per_host(s) * s.connections as f64).sum::<f64>() / n as f64)
    }

    /// A latency percentile in µs from the merged histogram, or — without one — the worst
    /// host's own figure, the honest bound.
    fn latency_us(&self, q: f64, per_host: fn(&ClientSummary) -> f64) -> Option<f64> {
        match &self.latency {
            Some(h) if !h.is_empty() => Some(h.value_at_quantile(q) as f64 / 1e3),
            _ => self.summaries.iter().map(|s| per_host(s)).reduce(f64::max),
        }
    }

    /// A service-time percentile in µs (`q` = 1: the max).
    fn service_us(&self, q: f64) -> Option<f64> {
        let h = self.latency.as_ref().filter(|h| !h.is_empty())?;
        Some(if q >= 1.0 { h.max() } else { h.value_at_quantile(q) } as f64 / 1e3)
    }

    /// An open loop's corrected percentile in µs (`q` = 1: the max); none in a closed loop.
    fn corrected_us(&self, q: f64) -> Option<f64> {
        let h = self.corrected.as_ref().filter(|h| !h.is_empty())?;
        Some(if q >= 1.0 { h.max() } else { h.value_at_quantile(q) } as f64 / 1e3)
    }

    fn lateness_us(&self, q: f64) -> Option<f64> {
        let h = self.lateness.as_ref().filter(|h| !h.is_empty())?;
        Some(h.value_at_quantile(q) as f64 / 1e3)
    }

    /// An open loop's achieved rate over every host.
    fn achieved_rps(&self) -> Option<f64> {
        let rates: Vec<f64> = self.summaries.iter().filter_map(|s| s.achieved_rate_rps).collect();
        (!rates.is_empty()).then(|| rates.iter().sum())
    }

    /// A server figure per verified request.
    fn per_request(&self, x: Option<f64>) -> Option<f64> {
        (self.requests > 0).then_some(x? / self.requests as f64)
    }

    /// Whether every host ran `workload`.
    fn ran(&self, workload: &str) -> bool {
        !self.summaries.is_empty() && self.summaries.iter().all(|s| s.workload == workload)
    }

    /// Mebibytes echoed and verified, over every host.
    fn mib(&self) -> f64 {
        self.summaries.iter().map(|s| s.bytes).sum::<u64>() as f64 / MIB
    }

    /// A crr connect percentile in µs (`q` = 1: the max).
    fn connect_us(&self, q: f64) -> Option<f64> {
        let h = self.connect.as_ref().filter(|h| !h.is_empty())?;
        Some(if q >= 1.0 { h.max() } else { h.value_at_quantile(q) } as f64 / 1e3)
    }

    /// The server's CPU over the measured phase, sampled by the sweep the same way for
    /// every server; for sweeps that did not sample it, the backend's own figure.
    fn server_cpu_s(&self) -> Option<f64> {
        match self.proc {
            Some(p) => p.cpu_s,
            None => self.server.map(|s| s.cpu_user_s + s.cpu_sys_s),
        }
    }

    /// Syscalls the server made: perf's count in a syscall run, else the backend's own
    /// (over a paired slice: its live count between the slice's marks).
    fn server_syscalls(&self) -> Option<f64> {
        match self.proc.and_then(|p| p.perf_syscalls.or(p.syscalls)) {
            Some(n) => Some(n as f64),
            None => self.server.map(|s| s.syscalls_total as f64),
        }
    }
}

/// Bytes in a mebibyte.
const MIB: f64 = 1024.0 * 1024.0;

pub const METRICS: &[Metric] = &[
    Metric {
        key: "avg_total_duration_s",
        title: "AvgTotalDuration: time for each connection's requests",
        what: "average total duration",
        better: Better::Lower,
        digits: 6,
        headline: true,
        table: Some(("AvgTotalDuration s", 4)),
        chart: Some(ChartSpec { file: "avg_total_duration", axis: "seconds (mean over connections)", scale: 1.0 }),
        ratio_chart: false,
        syscall_run: false,
        of: |r| r.mean_of_rows(|t| t.round_duration_s(), |s| s.avg_total_duration_s),
    },
    Metric {
        key: "avg_response_time_s",
        title: "AvgResponseTime: mean round trip per request",
        what: "average response time",
        better: Better::Lower,
        digits: 9,
        headline: true,
        table: Some(("AvgResponseTime s", 6)),
        chart: Some(ChartSpec {
            file: "avg_response_time",
            axis: "milliseconds per round trip (closed-loop)",
            scale: 1e3,
        }),
        ratio_chart: false,
        syscall_run: false,
        of: |r| r.mean_of_rows(|t| t.avg_response_s, |s| s.avg_response_time_s),
    },
    Metric {
        key: "throughput_rps",
        title: "Throughput",
        what: "throughput",
        better: Better::Higher,
        digits: 1,
        headline: true,
        table: Some(("req/s", 0)),
        chart: Some(ChartSpec { file: "throughput", axis: "verified requests per second", scale: 1.0 }),
        ratio_chart: true,
        syscall_run: false,
        of: |r| (!r.summaries.is_empty()).then(|| r.summaries.iter().map(|s| s.throughput_rps).sum()),
    },
    Metric {
        key: "p50_response_us",
        title: "p50 round-trip latency",
        what: "median latency",
        better: Better::Lower,
        digits: 1,
        headline: true,
        table: Some(("p50 µs", 0)),
        chart: None,
        ratio_chart: false,
        syscall_run: false,
        of: |r| r.latency_us(0.50, |s| s.latency_p50_us),
    },
    Metric {
        key: "p99_response_us",
        title: "p99 round-trip latency",
        what: "p99 latency",
        better: Better::Lower,
        digits: 1,
        headline: true,
        table: Some(("p99 µs", 0)),
        chart: Some(ChartSpec { file: "p99_latency", axis: "milliseconds from the actual send", scale: 1e-3 }),
        ratio_chart: false,
        syscall_run: false,
        of: |r| r.latency_us(0.99, |s| s.latency_p99_us),
    },
    Metric {
        key: "server_cpu_us_per_request",
        title: "Server CPU per request",
        what: "CPU per request",
        better: Better::Lower,
        digits: 3,
        headline: true,
        table: Some(("CPU µs/req", 2)),
        chart: Some(ChartSpec { file: "cpu_per_request", axis: "µs of CPU (user + sys) per request", scale: 1.0 }),
        ratio_chart: true,
        syscall_run: false,
        of: |r| r.per_request(r.server_cpu_s().map(|s| s * 1e6)),
    },
    Metric {
        key: "server_syscalls_per_request",
        title: "Server syscalls per request",
        what: "syscalls per request",
        better: Better::Lower,
        digits: 4,
        headline: true,
        table: Some(("syscalls/req", 3)),
        chart: Some(ChartSpec {
            file: "syscalls_per_request",
            axis: "syscalls per request (server's own count)",
            scale: 1.0,
        }),
        ratio_chart: false,
        syscall_run: true,
        of: |r| r.per_request(r.server_syscalls()),
    },
    detail(
        "server_cpu_self_us_per_request",
        "Server CPU per request, by the server's own getrusage",
        "CPU per request (own count)",
        Better::Lower,
        3,
        // A cross-check of the sampled figure: from the end of set-up to the end of the
        // stop, so it includes accepting and closing; ringbench's backends only.
        |r| r.per_request(r.server.map(|s| (s.cpu_user_s + s.cpu_sys_s) * 1e6)),
    ),
    detail("p90_response_us", "p90 round-trip latency", "p90 latency", Better::Lower, 1, |r| r.service_us(0.90)),
    detail("p999_response_us", "p99.9 round-trip latency", "p99.9 latency", Better::Lower, 1, |r| r.service_us(0.999)),
    detail("p9999_response_us", "p99.99 round-trip latency", "p99.99 latency", Better::Lower, 1, |r| {
        r.service_us(0.9999)
    }),
    detail("max_response_us", "Longest round trip", "longest round trip", Better::Lower, 1, |r| r.service_us(1.0)),
    Metric {
        key: "achieved_rate_rps",
        title: "Open loop: requests sent per second",
        what: "achieved rate",
        better: Better::Higher,
        digits: 1,
        headline: false,
        table: Some(("sent req/s", 0)),
        chart: None,
        ratio_chart: false,
        syscall_run: false,
        of: |r| r.achieved_rps(),
    },
    detail(
        "corrected_p50_us",
        "Open loop: p50 latency from the intended send",
        "corrected p50 latency",
        Better::Lower,
        1,
        |r| r.corrected_us(0.50),
    ),
    detail(
        "corrected_p90_us",
        "Open loop: p90 latency from the intended send",
        "corrected p90 latency",
        Better::Lower,
        1,
        |r| r.corrected_us(0.90),
    ),
    Metric {
        key: "corrected_p99_us",
        title: "Open loop: p99 latency from the intended send",
        what: "corrected p99 latency",
        better: Better::Lower,
        digits: 1,
        headline: false,
        table: Some(("corrected p99 µs", 0)),
        chart: Some(ChartSpec {
            file: "corrected_p99_latency",
            axis: "milliseconds from the intended send",
            scale: 1e-3,
        }),
        ratio_chart: false,
        syscall_run: false,
        of: |r| r.corrected_us(0.99),
    },
    detail(
        "corrected_p999_us",
        "Open loop: p99.9 latency from the intended send",
        "corrected p99.9 latency",
        Better::Lower,
        1,
        |r| r.corrected_us(0.999),
    ),
    detail(
        "corrected_p9999_us",
        "Open loop: p99.99 latency from the intended send",
        "corrected p99.99 latency",
        Better::Lower,
        1,
        |r| r.corrected_us(0.9999),
    ),
    detail(
        "corrected_max_us",
        "Open loop: longest latency from the intended send",
        "corrected longest latency",
        Better::Lower,
        1,
        |r| r.corrected_us(1.0),
    ),
    detail("send_lateness_p50_us", "Open loop: median send lateness", "median send lateness", Better::Lower, 1, |r| {
        r.lateness_us(0.50)
    }),
    detail("send_lateness_p99_us", "Open loop: p99 send lateness", "p99 send lateness", Better::Lower, 1, |r| {
        r.lateness_us(0.99)
    }),
    detail("client_cpu_us_per_request", "Client CPU per request", "client CPU per request", Better::Lower, 3, |r| {
        r.per_request(Some(r.summaries.iter().map(|s| s.client_cpu_s).sum::<f64>() * 1e6))
    }),
    Metric {
        key: "throughput_mib_s",
        title: "stream: verified MiB per second",
        what: "stream throughput",
        better: Better::Higher,
        digits: 2,
        headline: false,
        table: Some(("MiB/s", 1)),
        chart: Some(ChartSpec { file: "throughput_mib", axis: "MiB per second, echoed and verified", scale: 1.0 }),
        ratio_chart: true,
        syscall_run: false,
        // Each host's bytes over its own measured phase, added like its req/s.
        of: |r| {
            r.ran("stream")
                .then(|| r.summaries.iter().filter(|s| s.wall_s > 0.0).map(|s| s.bytes as f64 / MIB / s.wall_s).sum())
        },
    },
    Metric {
        key: "server_cpu_us_per_mib",
        title: "stream: server CPU per MiB",
        what: "CPU per MiB",
        better: Better::Lower,
        digits: 2,
        headline: false,
        table: Some(("CPU µs/MiB", 0)),
        chart: Some(ChartSpec { file: "cpu_per_mib", axis: "µs of CPU (user + sys) per MiB echoed", scale: 1.0 }),
        ratio_chart: true,
        syscall_run: false,
        of: |r| (r.ran("stream") && r.mib() > 0.0).then(|| r.server_cpu_s().map(|c| c * 1e6 / r.mib())).flatten(),
    },
    Metric {
        key: "connect_p50_us",
        title: "crr: median connect",
        what: "median connect time",
        better: Better::Lower,
        digits: 1,
        headline: false,
        table: Some(("connect p50 µs", 0)),
        chart: None,
        ratio_chart: false,
        syscall_run: false,
        of: |r| r.connect_us(0.50),
    },
    Metric {
        key: "connect_p99_us",
        title: "crr: p99 connect",
        what: "p99 connect time",
        better: Better::Lower,
        digits: 1,
        headline: false,
        table: Some(("connect p99 µs", 0)),
        chart: Some(ChartSpec { file: "connect_p99", axis: "milliseconds from connect() to connected", scale: 1e-3 }),
        ratio_chart: false,
        syscall_run: false,
        of: |r| r.connect_us(0.99),
    },
];

/// The metric with column `key`.
pub fn metric(key: &str) -> Option<&'static Metric> {
    METRICS.iter().find(|m| m.key == key)
}

/// The position of `m` in [`METRICS`].
pub fn index(m: &Metric) -> usize {
    METRICS.iter().position(|x| x.key == m.key).unwrap_or(usize::MAX)
}
