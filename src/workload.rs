//! What each connection does — the shapes the kernel-networking benchmarks people trust
//! measure (netperf's and neper's TCP_RR, TCP_CRR and TCP_STREAM, memtier's pipelining),
//! and an idle crowd beside a busy few. io_uring's batching, multishot accept and provided
//! buffers should matter differently in each.

use serde::{Deserialize, Serialize};

/// The idle crowd's connections are numbered from here (their payloads and rows must not
/// be taken for an active connection's, whichever process or host holds them).
pub const IDLE_FIRST_THREAD: usize = 1_000_000_000;

/// The default `stream` window: bytes in flight on every connection.
pub const DEFAULT_WINDOW_BYTES: u64 = 256 * 1024;

/// A connection's work. Every byte of every one is verified.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Workload {
    /// One request of `--size` bytes in flight per connection: the seed's.
    #[default]
    Rr,
    /// A new connection per request: connect, send one request, read its echo, close.
    Crr,
    /// `depth` requests in flight on every connection, echoes verified in order.
    Pipeline { depth: u32 },
    /// `--window` bytes in flight on every connection for the whole run, written
    /// `--size` at a time.
    Stream,
    /// `extra` connections opened first and left idle for the run while the others run
    /// `rr`; each idle one echoes one request at the end.
    Idle { extra: u64 },
}

impl Workload {
    /// Parses `rr`, `crr`, `pipeline:D`, `stream`, `idle:K`.
    pub fn parse(s: &str) -> Result<Workload, String> {
        let (kind, arg) = s.split_once(':').map_or((s, None), |(k, a)| (k, Some(a)));
        let number = |what: &str| -> Result<u64, String> {
            let a = arg.ok_or_else(|| format!("'{s}': {kind} needs {what}, e.g. {kind}:8"))?;
            a.parse::<u64>().map_err(|_| format!("'{s}': {what} must be a whole number"))
        };
        match (kind, arg) {
            ("rr", None) => Ok(Workload::Rr),
            ("crr", None) => Ok(Workload::Crr),
            ("stream", None) => Ok(Workload::Stream),
            ("pipeline", _) => match number("a depth (requests in flight)")? {
                0 => Err(format!("'{s}': pipeline:0 has nothing in flight; the depth is at least 1")),
                d if d > 65_536 => Err(format!("'{s}': a depth of at most 65536")),
                d => Ok(Workload::Pipeline { depth: d as u32 }),
            },
            ("idle", _) => Ok(Workload::Idle { extra: number("a number of idle connections")? }),
            (k @ ("rr" | "crr" | "stream"), Some(_)) => Err(format!("'{s}': {k} takes no ':' argument")),
            _ => Err(format!("'{s}': a workload is rr, crr, pipeline:D, stream or idle:K")),
        }
    }

    /// Its name, as `--workload` takes it.
    pub fn name(&self) -> String {
        match self {
            Workload::Rr => "rr".into(),
            Workload::Crr => "crr".into(),
            Workload::Pipeline { depth } => format!("pipeline:{depth}"),
            Workload::Stream => "stream".into(),
            Workload::Idle { extra } => format!("idle:{extra}"),
        }
    }

    /// Its part of a raw file's name (`None` for `rr`, whose names stay the seed's).
    pub fn stem(&self) -> Option<String> {
        match self {
            Workload::Rr => None,
            other => Some(other.name().replace(':', "")),
        }
    }

    /// Parses a [`Workload::stem`].
    pub fn from_stem(stem: &str) -> Option<Workload> {
        let digits = stem.find(|c: char| c.is_ascii_digit()).unwrap_or(stem.len());
        let (kind, n) = stem.split_at(digits);
        let name = if n.is_empty() { kind.to_string() } else { format!("{kind}:{n}") };
        Workload::parse(&name).ok().filter(|w| *w != Workload::Rr)
    }

    /// Requests a connection keeps in flight, for requests of `size` bytes and a stream
    /// window of `window` bytes.
    pub fn depth(&self, size: usize, window: u64) -> usize {
        match self {
            Workload::Pipeline { depth } => *depth as usize,
            Workload::Stream => (window / size.max(1) as u64).max(1) as usize,
            _ => 1,
        }
    }

    /// Idle connections beside the active ones.
    pub fn idle(&self) -> usize {
        match self {
            Workload::Idle { extra } => *extra as usize,
            _ => 0,
        }
    }

    /// Why the seed's engine (a blocking thread per connection, one request at a time)
    /// cannot run it, if it cannot.
    pub fn refused_by_threads_engine(&self) -> Option<String> {
        matches!(self, Workload::Pipeline { .. } | Workload::Stream).then(|| {
            format!(
                "--workload {}: the threads engine's blocking thread has one request out at a time; use --engine epoll",
                self.name()
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workloads_parse_name_and_stem_round_trip_and_bad_ones_say_why() {
        for s in ["rr", "crr", "pipeline:8", "stream", "idle:15000"] {
            let w = Workload::parse(s).unwrap();
            assert_eq!(w.name(), s);
            assert_eq!(w.stem().map_or(Some(Workload::Rr), |st| Workload::from_stem(&st)), Some(w));
        }
        assert_eq!(Workload::parse("pipeline:8").unwrap().stem().as_deref(), Some("pipeline8"));
        assert!(Workload::parse("pipeline:0").unwrap_err().contains("at least 1"));
        assert!(Workload::parse("pipeline").unwrap_err().contains("needs a depth"));
        assert!(Workload::parse("idle:x").unwrap_err().contains("whole number"));
        assert!(Workload::parse("rr:2").unwrap_err().contains("no ':'"));
        assert!(Workload::parse("bulk").unwrap_err().contains("rr, crr"));
        assert_eq!(Workload::Stream.depth(64 * 1024, DEFAULT_WINDOW_BYTES), 4);
        assert_eq!(Workload::Stream.depth(1 << 20, DEFAULT_WINDOW_BYTES), 1);
    }
}
