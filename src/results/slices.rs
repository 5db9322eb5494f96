//! The record of a paired point (`raw/{place}.slices.json`): its slices, blocks, the
//! servers set apart, and why it stopped. The sweep writes it; the report reads it back.

use serde::{Deserialize, Serialize};

use super::Place;

/// The record of one paired point (`raw/{place}.slices.json`): how its rounds ran, which
/// servers were set apart and why, and why it stopped. With the slices' own files it is
/// all `ringbench report` needs.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SliceLog {
    pub place: Option<Place>,
    /// The servers, baseline first (each block's record says the order it ran in).
    pub servers: Vec<String>,
    pub slice_s: f64,
    /// The precision asked for (± fraction), and the bounds on rounds and time.
    pub precision_target: Option<f64>,
    pub min_rounds: usize,
    pub max_rounds: usize,
    /// The point's time budget, after the default's floor (see `matrix::Budget`).
    pub budget_s: f64,
    /// Rounds per block (the longest block, with fixed rounds).
    #[serde(default)]
    pub block_rounds: usize,
    pub rounds: usize,
    /// Why no more rounds were run.
    pub stopped: String,
    /// Wall time of the point, its blocks' start-ups included, in seconds.
    pub elapsed_s: f64,
    pub slices: Vec<SliceRecord>,
    /// The blocks: each starts every server afresh, in its own order.
    #[serde(default)]
    pub blocks: Vec<BlockRecord>,
    /// The first stage: once this many blocks have run, the intervals' spread is theirs
    /// alone (see `report::stats::blocked_ratio`). 0: one stage (fixed rounds, no
    /// precision target, or a log from before).
    #[serde(default)]
    pub first_stage_blocks: usize,
    /// Servers stopped (SIGSTOP) outside their own slices because they used CPU while
    /// not loaded.
    pub isolated: Vec<Isolation>,
    /// What kept a server from taking part (it did not start, a client host failed).
    pub failures: Vec<String>,
}

/// One slice of a paired point.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SliceRecord {
    pub round: usize,
    pub server: String,
    pub start_unix_us: u64,
    pub end_unix_us: u64,
    /// CPU seconds every other server used during this slice (each should be ~0).
    pub others_cpu_s: Vec<(String, f64)>,
    /// The other servers whose CPU moved during this slice: its round is left out.
    pub disturbed_by: Vec<String>,
    /// The share of the server's CPUs' time, and of the client's, that the hypervisor
    /// gave to someone else over the slice (`/proc/stat` steal, to its 10 ms ticks).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_cpus_stolen_share: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_cpus_stolen_share: Option<f64>,
}

/// One block of a paired point: the servers started afresh in `start_order`, then rounds
/// `first_round..=last_round`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct BlockRecord {
    pub block: usize,
    pub start_order: Vec<String>,
    pub first_round: usize,
    pub last_round: usize,
}

/// A server set apart in a paired point.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Isolation {
    pub server: String,
    /// The round from which it was stopped outside its slices (0: before the first).
    pub from_round: usize,
    pub why: String,
}

impl SliceLog {
    /// The share of the server's CPUs' time and of the client's that the hypervisor gave
    /// to someone else over the slices, each slice weighted by its length; `None` for a
    /// log from before steal was read.
    pub fn stolen_shares(&self) -> Option<(f64, f64)> {
        let mean = |share: fn(&SliceRecord) -> Option<f64>| {
            let (mut sum, mut wall) = (0.0, 0.0);
            for s in &self.slices {
                let w = s.end_unix_us.saturating_sub(s.start_unix_us) as f64;
                if let Some(x) = share(s) {
                    sum += x * w;
                    wall += w;
                }
            }
            (wall > 0.0).then(|| sum / wall)
        };
        mean(|s| s.server_cpus_stolen_share).zip(mean(|s| s.client_cpus_stolen_share))
    }

    /// Rounds with a disturbed slice: left out of every comparison at this point.
    pub fn disturbed_rounds(&self) -> Vec<usize> {
        let mut r: Vec<usize> = self.slices.iter().filter(|s| !s.disturbed_by.is_empty()).map(|s| s.round).collect();
        r.dedup();
        r
    }
}
