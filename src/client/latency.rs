//! Latency kept as histograms, not samples, so a client's memory stays flat however long
//! it runs.
//!
//! Each connection keeps a small histogram (two significant figures, in microseconds) for
//! its own row; each engine thread keeps full-precision run histograms (three significant
//! figures, nanoseconds) of every latency kind, merged once at the end:
//!
//! - **service**: from the actual send of a request to its whole echo — what closed-loop
//!   clients report;
//! - **corrected**: from the *intended* send time of an open-loop schedule to the whole
//!   echo, so a request that had to wait for a slow server is charged for the wait
//!   (coordinated omission corrected, as wrk2 does); the same as service in a closed loop;
//! - **lateness**: how late each send left against its schedule (open loop only).

use std::io::{self, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

/// Where an engine puts each request's latencies.
pub trait Sink {
    /// One verified request: its service time and, in an open loop, how late it left
    /// and its time from the intended send.
    fn record(&mut self, service_ns: u64, open: Option<(u64, u64)>);
}

/// A run histogram: nanoseconds, three significant figures, growing as needed.
pub fn run_histogram() -> Histogram<u64> {
    Histogram::<u64>::new(3).expect("3 significant figures is a valid histogram precision")
}

/// One connection's round trips, for its CSV row.
#[derive(Clone, Debug)]
pub struct ConnLatency {
    /// Microseconds, two significant figures: a few KiB per connection at most.
    hist: Histogram<u32>,
    count: u64,
    sum_ns: u128,
    max_ns: u64,
}

impl Default for ConnLatency {
    fn default() -> Self {
        ConnLatency {
            hist: Histogram::<u32>::new(2).expect("2 significant figures is a valid histogram precision"),
            count: 0,
            sum_ns: 0,
            max_ns: 0,
        }
    }
}

impl ConnLatency {
    pub fn record(&mut self, ns: u64) {
        self.count += 1;
        self.sum_ns += u128::from(ns);
        self.max_ns = self.max_ns.max(ns);
        // Auto-resizing, so a value always fits; a count cannot reach u32::MAX in a run.
        let _ = self.hist.record((ns / 1000).max(1));
    }

    pub fn count(&self) -> u64 {
        self.count
    }

    /// Adds another connection's (or slice's) round trips: exact, as both are histograms
    /// of the same precision with exact sums.
    pub fn merge(&mut self, o: &ConnLatency) {
        let _ = self.hist.add(&o.hist);
        self.count += o.count;
        self.sum_ns += o.sum_ns;
        self.max_ns = self.max_ns.max(o.max_ns);
    }

    pub fn mean_s(&self) -> f64 {
        if self.count == 0 {
            0.0
        } else {
            self.sum_ns as f64 / self.count as f64 / 1e9
        }
    }

    /// The value at quantile `q`, in seconds (to two significant figures).
    pub fn quantile_s(&self, q: f64) -> f64 {
        if self.count == 0 {
            0.0
        } else {
            self.hist.value_at_quantile(q) as f64 / 1e6
        }
    }

    pub fn max_s(&self) -> f64 {
        self.max_ns as f64 / 1e9
    }
}

/// The run histograms of one engine thread (or of one shard of the blocking engine).
#[derive(Clone, Debug)]
pub struct RunLatency {
    pub service: Histogram<u64>,
    pub corrected: Histogram<u64>,
    pub lateness: Histogram<u64>,
    /// crr: each connection's connect, from the connect call to the connection made.
    pub connect: Histogram<u64>,
}

impl Default for RunLatency {
    fn default() -> Self {
        RunLatency {
            service: run_histogram(),
            corrected: run_histogram(),
            lateness: run_histogram(),
            connect: run_histogram(),
        }
    }
}

impl Sink for RunLatency {
    fn record(&mut self, service_ns: u64, open: Option<(u64, u64)>) {
        RunLatency::record(self, service_ns, open);
    }
}

impl RunLatency {
    /// Records one request: its service time and, in an open loop, how late it left and
    /// its time from the intended send (`None` in a closed loop, where it is the service
    /// time).
    pub fn record(&mut self, service_ns: u64, open: Option<(u64, u64)>) {
        let _ = self.service.record(service_ns.max(1));
        match open {
            Some((late_ns, corrected_ns)) => {
                let _ = self.lateness.record(late_ns.max(1));
                let _ = self.corrected.record(corrected_ns.max(1));
            }
            None => {
                let _ = self.corrected.record(service_ns.max(1));
            }
        }
    }

    pub fn merge(&mut self, o: &RunLatency) {
        let _ = self.service.add(&o.service);
        let _ = self.corrected.add(&o.corrected);
        let _ = self.lateness.add(&o.lateness);
        let _ = self.connect.add(&o.connect);
    }

    /// One connect of a crr run took `ns`.
    pub fn record_connect(&mut self, ns: u64) {
        let _ = self.connect.record(ns.max(1));
    }
}

/// Progress for `--interval-s`: what completed since the last line, for one line per
/// interval on stderr during long runs.
pub struct Progress {
    done: AtomicU64,
    errors: AtomicU64,
    shards: Vec<Mutex<Histogram<u64>>>,
}

impl std::fmt::Debug for Progress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Progress").field("done", &self.done).field("errors", &self.errors).finish_non_exhaustive()
    }
}

impl Progress {
    pub fn new(shards: usize) -> Progress {
        Progress {
            done: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            shards: (0..shards.max(1)).map(|_| Mutex::new(run_histogram())).collect(),
        }
    }

    /// A request completed, `ns` after it was meant to leave; `shard` spreads the locks.
    pub fn record(&self, shard: usize, ns: u64) {
        self.done.fetch_add(1, Ordering::Relaxed);
        let mut h = self.shards[shard % self.shards.len()].lock().unwrap_or_else(|p| p.into_inner());
        let _ = h.record(ns.max(1));
    }

    pub fn error(&self) {
        self.errors.fetch_add(1, Ordering::Relaxed);
    }

    /// The line for the interval just ended (`secs` long, ending `at` seconds in), and a
    /// fresh start for the next.
    pub fn take_line(&self, secs: f64, at: f64) -> String {
        let done = self.done.swap(0, Ordering::Relaxed);
        let errors = self.errors.swap(0, Ordering::Relaxed);
        let mut all = run_histogram();
        for s in &self.shards {
            let mut h = s.lock().unwrap_or_else(|p| p.into_inner());
            let _ = all.add(&*h);
            h.reset();
        }
        let p99 = if all.is_empty() { 0.0 } else { all.value_at_quantile(0.99) as f64 / 1e6 };
        format!("ringbench client: {at:>7.1} s  {:>9.0} req/s  {errors} errors  p99 {p99:.3} ms", done as f64 / secs)
    }

    /// Prints a line every `every` on stderr until `stop` says so (called on a thread of
    /// its own).
    pub fn report_every(&self, every: Duration, stop: &std::sync::atomic::AtomicBool) {
        let t0 = Instant::now();
        let mut last = t0;
        while !stop.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(20));
            if last.elapsed() >= every {
                let now = Instant::now();
                eprintln!(
                    "{}",
                    self.take_line(now.duration_since(last).as_secs_f64(), now.duration_since(t0).as_secs_f64())
                );
                last = now;
            }
        }
    }
}

/// Writes `h` (nanoseconds) as a percentile spectrum in milliseconds, in the layout of
/// HdrHistogram's `outputPercentileDistribution` — what wrk2 prints after "Detailed
/// Percentile spectrum" with `-L`, and what HdrHistogram's plotting tools read.
pub fn write_spectrum(h: &Histogram<u64>, out: &mut impl Write) -> io::Result<()> {
    const TICKS_PER_HALF_DISTANCE: u32 = 5;
    let ms = |ns: u64| ns as f64 / 1e6;
    writeln!(out, "{:>12} {:>14} {:>10} {:>14}\n", "Value", "Percentile", "TotalCount", "1/(1-Percentile)")?;
    let mut total = 0u64;
    for v in h.iter_quantiles(TICKS_PER_HALF_DISTANCE) {
        total += v.count_since_last_iteration();
        let q = v.quantile_iterated_to();
        if q < 1.0 {
            writeln!(out, "{:>12.3} {:>14.12} {:>10} {:>14.2}", ms(v.value_iterated_to()), q, total, 1.0 / (1.0 - q))?;
        } else {
            writeln!(out, "{:>12.3} {:>14.12} {:>10}", ms(v.value_iterated_to()), q, total)?;
        }
    }
    let (mean, sd) = if h.is_empty() { (0.0, 0.0) } else { (h.mean() / 1e6, h.stdev() / 1e6) };
    writeln!(out, "#[Mean    = {mean:>12.3}, StdDeviation   = {sd:>12.3}]")?;
    writeln!(out, "#[Max     = {:>12.3}, Total count    = {:>12}]", ms(h.max()), h.len())?;
    let sub_buckets = (2 * 10u32.pow(u32::from(h.sigfig()))).next_power_of_two();
    writeln!(out, "#[Buckets = {:>12}, SubBuckets     = {:>12}]", h.buckets(), sub_buckets)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connection_keeps_two_figures_and_exact_mean_and_max() {
        let mut c = ConnLatency::default();
        for us in 1..=1000u64 {
            c.record(us * 1000);
        }
        assert_eq!(c.count(), 1000);
        assert!((c.mean_s() - 500.5e-6).abs() < 1e-12);
        assert!((c.quantile_s(0.5) - 500e-6).abs() / 500e-6 < 0.01);
        assert!((c.quantile_s(0.99) - 990e-6).abs() / 990e-6 < 0.01);
        assert_eq!(c.max_s(), 1e-3);
    }

    #[test]
    fn the_spectrum_ends_at_the_max_with_every_count() {
        let mut h = run_histogram();
        for v in 1..=10_000u64 {
            h.record(v * 1000).unwrap();
        }
        let mut out = Vec::new();
        write_spectrum(&h, &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("       Value     Percentile TotalCount 1/(1-Percentile)"));
        let last: Vec<&str> =
            text.lines().rfind(|l| !l.starts_with('#') && !l.trim().is_empty()).unwrap().split_whitespace().collect();
        assert_eq!((last[1], last[2]), ("1.000000000000", "10000"));
        assert!(text.contains("Total count    =        10000]"), "{text}");
    }
}
