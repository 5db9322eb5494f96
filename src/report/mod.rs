//! From raw run files to the comparison: `overall.csv`, `overall.json`, `summary.md` and
//! the charts.
//!
//! Everything here is computed from `DIR/raw` alone, so `ringbench report DIR` redraws a
//! sweep (or merges client files copied in from other hosts) exactly as the matrix did.
//! The figures shown are the entries of one table, [`metrics::METRICS`].
//!
//! [`load`] reads runs · [`points`] computes each run's figures and each point's spread ·
//! [`stats`] says how sure a comparison is · [`export`] writes the tables · [`summary`]
//! writes summary.md · [`charts`] draws · [`context`] names the machine.

pub mod charts;
pub mod context;
pub mod export;
pub mod load;
pub mod metrics;
pub mod paired;
pub mod per_host;
pub mod points;
pub mod stats;
pub mod summary;

use std::path::Path;

pub use points::{Point, Spread};

/// What building a report produced.
pub struct Built {
    pub points: Vec<Point>,
    /// Why the charts were not drawn, if they were not (the data files are complete).
    pub charts_failed: Option<String>,
}

/// How a report is laid out; every field defaults to what the sweep recorded.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// Server order (empty: as the sweep recorded it in env.json, else epoll first, then
    /// alphabetical).
    pub order: Vec<String>,
    /// The server every other is compared with (`None`: as the sweep chose, else epoll,
    /// else the first). The baseline comes first.
    pub baseline: Option<String>,
    /// The latency objective for "highest rate held" (`None`: the sweep's `--slo-ms`).
    pub slo_ms: Option<f64>,
}

/// Rebuilds `overall.csv`, `overall.json`, `summary.md` and `plots/` in `dir` from
/// `dir/raw`.
pub fn build(dir: &Path, opts: &Options) -> anyhow::Result<Built> {
    let load::Loaded { runs, slices } = load::load(&dir.join("raw"))?;
    anyhow::ensure!(
        !runs.is_empty(),
        "no runs in '{}' (expected files like epoll_c100_s64_r1.client-HOST.csv)",
        dir.join("raw").display()
    );
    let env = context::read_env(dir);
    let present: Vec<String> = {
        let mut n: Vec<String> = runs.keys().map(|k| k.backend.clone()).collect();
        n.dedup();
        n
    };
    let order = context::order(&env, &opts.order, opts.baseline.as_deref(), &present)?;
    let slo_ms = opts.slo_ms.or_else(|| env.pointer("/settings/slo_ms").and_then(|v| v.as_f64()));
    let pts = points::points(&runs, &slices, &order);
    // Data first: a chart that fails to render loses nothing.
    export::write_overall_csv(&dir.join("overall.csv"), &pts, &slices, &order[0])?;
    export::write_overall_json(&dir.join("overall.json"), &pts, &slices, &order[0])?;
    let (charts, charts_failed) = match charts::draw_all(&dir.join("plots"), &pts, &order, &context::caption(&env)) {
        Ok(c) => (c, None),
        Err(e) => (Vec::new(), Some(format!("{e:#}"))),
    };
    summary::write_summary_md(&dir.join("summary.md"), &pts, &slices, &order, &charts, &env, slo_ms)?;
    Ok(Built { points: pts, charts_failed })
}
