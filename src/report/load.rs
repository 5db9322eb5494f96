//! Reading a sweep's `raw/` directory back into runs.
//!
//! Raw files are named `{backend}_c{connections}_s{size}_r{repeat}.{part}` where part is
//! `server.json` (the server summary), `server.csv` (its per-connection log),
//! `server-proc.json` (what the sweep saw of the server process: its CPU time over the
//! measured phase, perf's syscall count) or `client-{label}.csv` / `client-{label}.json`
//! (one pair per client host). A paired point's slices are `_r{round}` runs (client
//! summaries and the server's CPU over the slice), each server's whole life there is its
//! `_session` run, and `c{connections}_s{size}.slices.json` records how its rounds ran.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use anyhow::Context;
use ringbench_backends::ServerSummary;

use crate::results::{read_rows_csv, ClientSummary, Place, RunKey, ServerProcRecord, SliceLog, ThreadRow};

/// One client host's output for a run.
#[derive(Clone, Debug)]
pub struct ClientPart {
    pub label: String,
    pub summary: Option<ClientSummary>,
    pub rows: Vec<ThreadRow>,
}

/// Everything recorded for one run.
#[derive(Clone, Debug, Default)]
pub struct Run {
    pub clients: Vec<ClientPart>,
    pub server: Option<ServerSummary>,
    /// Rows in the server's per-connection log, if it was kept.
    pub server_log_rows: Option<usize>,
    /// What the sweep saw of the server process (absent in sweeps made before it kept it).
    pub proc: Option<ServerProcRecord>,
}

/// Every run in `raw`, and the slice log of every paired point.
#[derive(Default)]
pub struct Loaded {
    pub runs: BTreeMap<RunKey, Run>,
    pub slices: BTreeMap<Place, SliceLog>,
}

/// Reads every run and slice log in `raw`.
pub fn load(raw: &Path) -> anyhow::Result<Loaded> {
    let runs = load_runs(raw)?;
    let mut slices = BTreeMap::new();
    for e in fs::read_dir(raw).with_context(|| format!("cannot read '{}'", raw.display()))?.flatten() {
        let path = e.path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else { continue };
        let Some(place) = name.strip_suffix(".slices.json").and_then(Place::parse) else { continue };
        let ctx = || format!("cannot read '{}'", path.display());
        let log: SliceLog = serde_json::from_str(&fs::read_to_string(&path).with_context(ctx)?).with_context(ctx)?;
        slices.insert(place, log);
    }
    Ok(Loaded { runs, slices })
}

/// Reads every run in `raw`.
pub fn load_runs(raw: &Path) -> anyhow::Result<BTreeMap<RunKey, Run>> {
    let mut runs: BTreeMap<RunKey, Run> = BTreeMap::new();
    let entries = fs::read_dir(raw).with_context(|| format!("cannot read '{}'", raw.display()))?;
    let mut files: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
    files.sort();
    for path in files {
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else { continue };
        let Some((stem, part)) = name.split_once('.') else { continue };
        let Some(key) = RunKey::parse(stem) else { continue };
        let run = runs.entry(key).or_default();
        let ctx = || format!("cannot read '{}'", path.display());
        if part == "server.json" {
            run.server = Some(serde_json::from_str(&fs::read_to_string(&path).with_context(ctx)?).with_context(ctx)?);
        } else if part == "server-proc.json" {
            run.proc = Some(serde_json::from_str(&fs::read_to_string(&path).with_context(ctx)?).with_context(ctx)?);
        } else if part == "server.csv" {
            run.server_log_rows = Some(count_csv_rows(&path).with_context(ctx)?);
        } else if let Some(label) = part.strip_prefix("client-").and_then(|p| p.strip_suffix(".csv")) {
            client_part(run, label).rows = read_rows_csv(&path).with_context(ctx)?;
        } else if let Some(label) = part.strip_prefix("client-").and_then(|p| p.strip_suffix(".json")) {
            client_part(run, label).summary =
                Some(serde_json::from_str(&fs::read_to_string(&path).with_context(ctx)?).with_context(ctx)?);
        }
    }
    Ok(runs)
}

fn client_part<'a>(run: &'a mut Run, label: &str) -> &'a mut ClientPart {
    if let Some(i) = run.clients.iter().position(|c| c.label == label) {
        return &mut run.clients[i];
    }
    run.clients.push(ClientPart { label: label.to_string(), summary: None, rows: Vec::new() });
    run.clients.last_mut().expect("just pushed")
}

fn count_csv_rows(path: &Path) -> io::Result<usize> {
    let mut r = csv::Reader::from_path(path).map_err(io::Error::other)?;
    let mut n = 0;
    for rec in r.records() {
        rec.map_err(io::Error::other)?;
        n += 1;
    }
    Ok(n)
}
