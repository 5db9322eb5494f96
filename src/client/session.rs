//! A client whose connections outlive one measured phase: connected once, then loaded
//! slice after slice, then closed. A paired sweep keeps every server under test running
//! and alternates short slices of load between them; each server's client stays
//! connected between its slices, so connecting is never part of a measurement and the
//! server sees each connection once. A one-shot run is a session of one slice.
//!
//! Both engines run their threads the same way: each thread connects its share and says
//! so on the [`Board`]; for every slice it picks up the [`SliceRun`] the main thread posts,
//! waits at that slice's start gate, runs its connections until the slice's [`Stop`], and
//! hands back its results. Every connection keeps a [`Tally`] over all slices for its
//! row in the session's CSV.

use std::io;
use std::sync::{Arc, Condvar, Mutex};

use super::gate::Gate;
use super::latency::{ConnLatency, RunLatency};
use super::load::{ConnLoad, Stop};
use super::{summarise, ClientConfig, ClientError, ClientReport, ConnOutcome, Window};
use crate::results::ThreadRow;

/// Where the main thread posts slices and engine threads pick them up.
pub struct Board<X, R> {
    state: Mutex<Posted<X, R>>,
    posted: Condvar,
    connected: Mutex<usize>,
    connected_cv: Condvar,
}

struct Posted<X, R> {
    generation: u64,
    current: Option<Arc<SliceRun<X, R>>>,
    quit: bool,
}

/// One slice: how it stops, its start gate, what its threads share (the blocking
/// engine's histograms), and what they hand back.
pub struct SliceRun<X, R> {
    pub stop: Stop,
    pub gate: Gate,
    pub shared: X,
    results: Mutex<Vec<R>>,
    delivered: Condvar,
}

impl<X, R> Default for Board<X, R> {
    fn default() -> Self {
        Board {
            state: Mutex::new(Posted { generation: 0, current: None, quit: false }),
            posted: Condvar::new(),
            connected: Mutex::new(0),
            connected_cv: Condvar::new(),
        }
    }
}

impl<X, R> Board<X, R> {
    /// A thread has made its connections (or failed to).
    pub fn connected(&self) {
        *self.connected.lock().unwrap_or_else(|p| p.into_inner()) += 1;
        self.connected_cv.notify_all();
    }

    /// Waits until `n` threads have connected.
    pub fn wait_connected(&self, n: usize) {
        let mut g = self.connected.lock().unwrap_or_else(|p| p.into_inner());
        while *g < n {
            g = self.connected_cv.wait(g).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// The slice after the one numbered `seen` (which it updates), or `None` once the
    /// session is over.
    pub fn next(&self, seen: &mut u64) -> Option<Arc<SliceRun<X, R>>> {
        let mut g = self.state.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if g.quit {
                return None;
            }
            if g.generation > *seen {
                *seen = g.generation;
                return g.current.clone();
            }
            g = self.posted.wait(g).unwrap_or_else(|p| p.into_inner());
        }
    }

    fn post(&self, run: Arc<SliceRun<X, R>>) {
        let mut g = self.state.lock().unwrap_or_else(|p| p.into_inner());
        g.generation += 1;
        g.current = Some(run);
        self.posted.notify_all();
    }

    /// Ends the session: every thread's `next` returns `None`.
    pub fn quit(&self) {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).quit = true;
        self.posted.notify_all();
    }

    /// Runs one slice over `n` threads: posts it, waits until all are at its gate, calls
    /// `before_start`, marks the start, opens the gate and collects every thread's
    /// results. Returns them with the measured window and the wall time from the gate.
    pub fn run_slice(
        &self,
        n: usize,
        stop: Stop,
        shared: X,
        cfg: &ClientConfig,
        before_start: &mut dyn FnMut(),
    ) -> (Arc<SliceRun<X, R>>, Vec<R>, Window, f64) {
        let run = Arc::new(SliceRun {
            stop,
            gate: Gate::new(n),
            shared,
            results: Mutex::new(Vec::with_capacity(n)),
            delivered: Condvar::new(),
        });
        let closed = run.gate.close();
        self.post(Arc::clone(&run));
        run.gate.wait_for_all();
        before_start();
        // Marked before the gate opens: once thousands of threads are released, this
        // thread may not run again until most of the work is done.
        let window = Window::start(&cfg.phases);
        let t0 = run.gate.open(closed);
        let results = run.collect();
        let wall_s = t0.elapsed().as_secs_f64();
        (Arc::clone(&run), results, window.end(&cfg.phases), wall_s)
    }
}

impl<X, R> SliceRun<X, R> {
    /// A thread's results for this slice; the last of the gate's threads to deliver wakes
    /// the collector (one wake-up a slice, not one a thread: see `Gate`).
    pub fn deliver(&self, r: R) {
        let all_in = {
            let mut results = self.results.lock().unwrap_or_else(|p| p.into_inner());
            results.push(r);
            results.len() >= self.gate.expected()
        };
        if all_in {
            self.delivered.notify_one();
        }
    }

    fn collect(&self) -> Vec<R> {
        let mut g = self.results.lock().unwrap_or_else(|p| p.into_inner());
        while g.len() < self.gate.expected() {
            g = self.delivered.wait(g).unwrap_or_else(|p| p.into_inner());
        }
        std::mem::take(&mut *g)
    }
}

/// One connection over a whole session.
#[derive(Clone, Debug)]
pub struct Tally {
    pub thread: usize,
    pub connected: bool,
    pub connect_s: f64,
    pub requests: u64,
    pub latency: ConnLatency,
    /// Time spent loading, from each slice's gate to its last reply.
    pub loaded_s: f64,
    pub rounds: u64,
    /// The first error; the connection does nothing after it.
    pub error: Option<String>,
}

impl Tally {
    pub fn new(thread: usize) -> Tally {
        Tally {
            thread,
            connected: false,
            connect_s: 0.0,
            requests: 0,
            latency: ConnLatency::default(),
            loaded_s: 0.0,
            rounds: 0,
            error: None,
        }
    }

    /// Whether it can take part in a slice.
    pub fn usable(&self) -> bool {
        self.connected && self.error.is_none()
    }

    /// Adds one slice's load.
    pub fn add(&mut self, load: &ConnLoad) {
        self.requests += load.verified;
        self.latency.merge(&load.latency);
        self.loaded_s += load.loaded_s();
        self.rounds += load.rounds();
        if self.error.is_none() {
            self.error.clone_from(&load.error);
        }
    }

    /// Its outcome in a slice it could not take part in.
    pub fn absent(&self, cfg: &ClientConfig) -> ConnOutcome {
        let why = self.error.clone().unwrap_or_else(|| "never connected".into());
        let mut o = ConnOutcome::failed(cfg, self.thread, why);
        o.connect_s = self.connect_s;
        o.connected = self.connected;
        o
    }

    /// Its outcome over the whole session.
    pub fn outcome(&self, cfg: &ClientConfig) -> ConnOutcome {
        let per_round = cfg.requests.max(1);
        let row = ThreadRow {
            thread: self.thread,
            label: cfg.label.clone(),
            requests: self.requests,
            bytes: self.requests * cfg.size as u64,
            total_duration_s: self.loaded_s,
            avg_response_s: self.latency.mean_s(),
            p50_response_s: self.latency.quantile_s(0.50),
            p99_response_s: self.latency.quantile_s(0.99),
            max_response_s: self.latency.max_s(),
            errors: u64::from(self.error.is_some()),
            error: self.error.clone().unwrap_or_default(),
            rounds: self.rounds.max(1),
        };
        ConnOutcome {
            row,
            expected: self.requests + u64::from(self.error.is_some()),
            sent_in_window: 0,
            connect_s: self.connect_s,
            connected: self.connected,
            round_s: if self.requests > 0 { self.loaded_s * per_round as f64 / self.requests as f64 } else { 0.0 },
        }
    }
}

/// What one slice produced in an engine.
pub struct SliceOut {
    pub outcomes: Vec<ConnOutcome>,
    pub run: RunLatency,
    pub window: Window,
    pub wall_s: f64,
}

/// An engine's connections, made once and loaded slice after slice.
pub trait Connected: Send {
    /// Runs one slice on every connection, calling `before_start` once all wait at the
    /// gate. An error is the engine's own (epoll failed), not a connection's.
    fn slice(&mut self, stop: Stop, before_start: &mut dyn FnMut()) -> io::Result<SliceOut>;
    /// Closes every connection; returns each one's tally, in connection order.
    fn close(self: Box<Self>) -> Vec<Tally>;
}

/// A connected client and what its slices added up to.
pub struct Session {
    cfg: ClientConfig,
    engine: Option<Box<dyn Connected>>,
    run: RunLatency,
    wall_s: f64,
    client_cpu_s: f64,
    first: Option<Window>,
    last: Window,
}

impl Session {
    /// Connects every connection of `cfg` with its engine.
    pub fn connect(cfg: &ClientConfig) -> Result<Session, ClientError> {
        let engine = super::connect_engine(cfg)?;
        Ok(Session {
            cfg: cfg.clone(),
            engine: Some(engine),
            run: RunLatency::default(),
            wall_s: 0.0,
            client_cpu_s: 0.0,
            first: None,
            last: Window::default(),
        })
    }

    /// Runs one slice that ends as `stop` says; its report has a row per connection for
    /// this slice alone.
    pub fn slice(&mut self, stop: Stop, mut before_start: impl FnMut()) -> Result<ClientReport, ClientError> {
        let engine = self.engine.as_mut().ok_or_else(|| io::Error::other("session closed"))?;
        let out = engine.slice(stop, &mut before_start)?;
        self.run.merge(&out.run);
        self.wall_s += out.wall_s;
        self.client_cpu_s += out.window.client_cpu_s;
        self.first.get_or_insert(out.window);
        self.last = out.window;
        Ok(summarise(&self.cfg.with_stop(stop), out.outcomes, out.wall_s, out.window, out.run))
    }

    /// Closes every connection; the report covers every slice, a row per connection.
    pub fn close(mut self) -> ClientReport {
        let tallies = self.engine.take().map(|e| e.close()).unwrap_or_default();
        let outcomes = tallies.iter().map(|t| t.outcome(&self.cfg)).collect();
        let first = self.first.unwrap_or_default();
        let window = Window::spanning(first, self.last, self.client_cpu_s);
        // Every connection has its row here, the idle crowd's too.
        let connections = self.cfg.connections + self.cfg.workload.idle();
        let cfg = ClientConfig { min_run: None, open: None, connections, ..self.cfg.clone() };
        let idle: Vec<&Tally> = tallies.iter().filter(|t| t.thread >= crate::workload::IDLE_FIRST_THREAD).collect();
        let mut report = summarise(&cfg, outcomes, self.wall_s, window, std::mem::take(&mut self.run));
        report.summary.idle_connections = idle.len();
        report.summary.idle_echoed = idle.iter().filter(|t| t.error.is_none() && t.requests > 0).count();
        report
    }
}

/// A one-shot run's report with the idle crowd's rows (from the closing report) added: a
/// dropped idle connection is an error of the run.
pub fn with_idle(mut run: ClientReport, closed: ClientReport) -> ClientReport {
    let idle: Vec<ThreadRow> =
        closed.rows.into_iter().filter(|r| r.thread >= crate::workload::IDLE_FIRST_THREAD).collect();
    if idle.is_empty() {
        return run;
    }
    let s = &mut run.summary;
    // Each idle connection's one request is the run's too.
    s.errors += idle.iter().map(|r| r.errors).sum::<u64>();
    s.requests += idle.iter().map(|r| r.requests).sum::<u64>();
    s.bytes += idle.iter().map(|r| r.bytes).sum::<u64>();
    s.requests_expected += idle.len() as u64;
    if s.first_error.is_none() {
        s.first_error = idle.iter().find(|r| r.errors > 0).map(|r| r.error.clone());
    }
    (s.idle_connections, s.idle_echoed) = (closed.summary.idle_connections, closed.summary.idle_echoed);
    run.rows.extend(idle);
    run
}

impl Drop for Session {
    fn drop(&mut self) {
        if let Some(e) = self.engine.take() {
            e.close();
        }
    }
}
