//! What each connection sends and when, the same for every engine: a closed loop (each
//! request after the previous echo, in rounds) or an open loop (requests at a constant
//! rate over all connections, each connection on its own schedule), and the tally that
//! turns its round trips into its row and the run's histograms.

use std::time::{Duration, Instant};

use std::sync::Arc;

use super::latency::{ConnLatency, Progress, Sink};
use super::ClientConfig;
use crate::results::ThreadRow;

/// An open-loop load: `rate_rps` requests a second over all connections; requests meant
/// to leave during the first `warmup` are sent and verified but not measured; none are
/// scheduled after `warmup + duration`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct OpenLoop {
    pub rate_rps: f64,
    pub duration: Duration,
    pub warmup: Duration,
}

/// When one connection's requests are meant to leave: `start + k × interval`, each
/// connection shifted by its share of one interval so they do not fire together.
#[derive(Clone, Copy, Debug)]
pub struct Schedule {
    start: Instant,
    interval: Duration,
    measure_from: Instant,
    end: Instant,
}

impl Schedule {
    /// Connection `i` (of `n`) of an open loop that starts at `t0`.
    pub fn new(open: &OpenLoop, t0: Instant, i: usize, n: usize) -> Schedule {
        let interval = Duration::from_secs_f64(n as f64 / open.rate_rps);
        Schedule {
            start: t0 + interval.mul_f64(i as f64 / n as f64),
            interval,
            measure_from: t0 + open.warmup,
            end: t0 + open.warmup + open.duration,
        }
    }

    /// When request `k` is meant to leave.
    pub fn intended(&self, k: u64) -> Instant {
        self.start + self.interval.mul_f64(k as f64)
    }

    /// Request `k` is past the end, or the run is (a client or server that fell behind
    /// does not stretch the run: what it could not send by the end is left unsent, and
    /// shows as an achieved rate below the target): the connection is done.
    pub fn done(&self, k: u64, now: Instant) -> bool {
        self.intended(k) >= self.end || now >= self.end
    }

    /// Request `k` is meant for the measured window (not the warm-up).
    pub fn measured(&self, k: u64) -> bool {
        self.intended(k) >= self.measure_from
    }

    /// A send at `t` falls in the measured window (for the achieved rate).
    pub fn in_window(&self, t: Instant) -> bool {
        t >= self.measure_from && t < self.end
    }
}

/// When a connection's load in one measured phase ends.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Stop {
    /// A closed loop in rounds of `--requests`, repeated until the phase has lasted
    /// `min_run` (`None`: one round) — the seed's workload.
    Rounds { min_run: Option<Duration> },
    /// A closed loop that stops once `after` has passed since the gate opened, even
    /// mid-round: one slice of a paired sweep. The request in flight then is finished.
    After(Duration),
    /// An open loop.
    Open(OpenLoop),
}

/// What comes next for a connection after request `k` (numbered from 0 over its life).
pub enum Next {
    /// Send request `k` now (closed loop) or at its time (open loop).
    Send {
        k: u64,
        at: Option<Instant>,
    },
    Done,
}

/// One connection's load and running tally.
pub struct ConnLoad {
    pub thread: usize,
    schedule: Option<Schedule>,
    per_round: u64,
    stop: Stop,
    t0: Instant,
    pub latency: ConnLatency,
    /// Requests verified (warm-up included).
    pub verified: u64,
    /// Sends that left inside the measured window (open loop).
    pub sent_in_window: u64,
    pub error: Option<String>,
    last_reply: Option<Instant>,
    /// Closed-loop rounds begun.
    rounds: u64,
    /// Told of every request, for `--interval-s`.
    progress: Option<Arc<Progress>>,
}

impl ConnLoad {
    /// Connection `i` of `cfg`'s `n`, loaded as `stop` says from `t0`.
    pub fn new(cfg: &ClientConfig, stop: Stop, thread: usize, i: usize, n: usize, t0: Instant) -> ConnLoad {
        ConnLoad {
            thread,
            schedule: match stop {
                Stop::Open(o) => Some(Schedule::new(&o, t0, i, n)),
                _ => None,
            },
            per_round: cfg.requests.max(1),
            stop,
            t0,
            latency: ConnLatency::default(),
            verified: 0,
            sent_in_window: 0,
            error: None,
            last_reply: None,
            rounds: 0,
            progress: cfg.progress.clone(),
        }
    }

    /// The first request.
    pub fn first(&self) -> Next {
        self.next_after(None)
    }

    /// What follows request `k` (its echo just verified), or the first when `None`.
    pub fn next_after(&self, k: Option<u64>) -> Next {
        let k = k.map_or(0, |k| k + 1);
        match &self.schedule {
            Some(s) if s.done(k, Instant::now()) => Next::Done,
            Some(s) => Next::Send { k, at: Some(s.intended(k)) },
            None if self.closed_loop_done(k) => Next::Done,
            None => Next::Send { k, at: None },
        }
    }

    /// A closed loop is done before request `k`: a slice's time is up, or a round is over
    /// and the run has lasted long enough.
    fn closed_loop_done(&self, k: u64) -> bool {
        match self.stop {
            Stop::After(d) => k > 0 && self.t0.elapsed() >= d,
            Stop::Rounds { min_run } => {
                k > 0 && k % self.per_round == 0 && min_run.is_none_or(|d| self.t0.elapsed() >= d)
            }
            Stop::Open(_) => false,
        }
    }

    /// Request `k` left at `sent`.
    pub fn sent(&mut self, k: u64, sent: Instant) {
        if self.schedule.is_some_and(|s| s.in_window(sent)) {
            self.sent_in_window += 1;
        }
        if k % self.per_round == 0 {
            self.rounds += 1;
        }
    }

    /// Request `k`, sent at `sent`, was echoed whole and verified at `done`.
    pub fn verified(&mut self, run: &mut impl Sink, k: u64, sent: Instant, done: Instant) {
        self.verified += 1;
        self.last_reply = Some(done);
        let service = done.duration_since(sent).as_nanos() as u64;
        let corrected = match &self.schedule {
            Some(s) => {
                let intended = s.intended(k);
                let late = sent.saturating_duration_since(intended).as_nanos() as u64;
                let corrected = done.saturating_duration_since(intended).as_nanos() as u64;
                // Warm-up requests show in the progress lines, not in the run's figures.
                if s.measured(k) {
                    self.latency.record(corrected);
                    run.record(service, Some((late, corrected)));
                }
                corrected
            }
            None => {
                self.latency.record(service);
                run.record(service, None);
                service
            }
        };
        if let Some(p) = &self.progress {
            p.record(self.thread, corrected);
        }
    }

    /// The connection failed with `e`.
    pub fn failed(&mut self, e: String) {
        if let Some(p) = &self.progress {
            p.error();
        }
        self.error = Some(e);
    }

    /// Rounds begun: the closed loop's unit (a round that failed counts, so the run
    /// expects its requests); an open loop is one round whatever its length.
    pub fn rounds(&self) -> u64 {
        match self.schedule {
            Some(_) => 1,
            None => self.rounds.max(1),
        }
    }

    /// Requests it was to complete: its rounds' worth (closed loop in rounds), or as many
    /// as it sent (open loop and slices: time decides, and a failure shows as an error).
    pub fn expected(&self) -> u64 {
        match self.stop {
            Stop::Rounds { .. } => self.rounds() * self.per_round,
            Stop::After(_) | Stop::Open(_) => self.verified + u64::from(self.error.is_some()),
        }
    }

    /// The seed's Total Duration: the time one round of `--requests` took. A slice that
    /// ends mid-round scales its time to a round's worth of requests.
    pub fn round_duration_s(&self) -> f64 {
        let total_s = self.loaded_s();
        match self.stop {
            Stop::After(_) if self.verified > 0 => total_s * self.per_round as f64 / self.verified as f64,
            Stop::After(_) => 0.0,
            _ => total_s / self.rounds() as f64,
        }
    }

    /// From the gate to its last reply, in seconds.
    pub fn loaded_s(&self) -> f64 {
        self.last_reply.map_or(0.0, |t| t.duration_since(self.t0).as_secs_f64())
    }

    /// Its CSV row.
    pub fn row(&self, cfg: &ClientConfig) -> ThreadRow {
        let total_duration_s = self.loaded_s();
        let error = self.error.clone().unwrap_or_default();
        ThreadRow {
            thread: self.thread,
            label: cfg.label.clone(),
            requests: self.verified,
            bytes: self.verified * cfg.size as u64,
            total_duration_s,
            avg_response_s: self.latency.mean_s(),
            p50_response_s: self.latency.quantile_s(0.50),
            p99_response_s: self.latency.quantile_s(0.99),
            max_response_s: self.latency.max_s(),
            errors: u64::from(!error.is_empty()),
            error,
            rounds: self.rounds(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_are_spread_over_one_interval_and_stop_at_the_end() {
        let open = OpenLoop { rate_rps: 1000.0, duration: Duration::from_secs(1), warmup: Duration::from_millis(100) };
        let t0 = Instant::now();
        // 10 connections at 1000 req/s: each sends every 10 ms, offset by 1 ms from the last.
        let a = Schedule::new(&open, t0, 0, 10);
        let b = Schedule::new(&open, t0, 3, 10);
        assert_eq!(a.intended(1) - a.intended(0), Duration::from_millis(10));
        assert_eq!(b.intended(0) - a.intended(0), Duration::from_millis(3));
        assert!(!a.measured(9) && a.measured(10));
        assert!(!a.done(109, t0) && a.done(110, t0));
        assert!(a.done(0, t0 + Duration::from_millis(1100)), "nothing is sent after the end");
    }
}
