//! Facts about the machine and the build, recorded with every sweep (`env.json`) so a
//! result can be read, compared and reproduced later.

use std::collections::BTreeMap;
use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

use ringbench_backends::{server, sys, ServerConfig};
use serde::Serialize;

#[derive(Debug, Serialize)]
pub struct Env {
    pub kernel: String,
    pub cpu_model: String,
    /// CPUs this process may use.
    pub cpus: usize,
    pub cpu_list: Vec<usize>,
    pub nofile_soft: u64,
    pub nofile_hard: u64,
    pub somaxconn: String,
    pub ephemeral_ports: u64,
    /// What the io_uring backend would use here, or why it cannot run.
    pub io_uring_features: BTreeMap<String, String>,
    pub git_commit: String,
    pub build_profile: &'static str,
    pub ringbench_version: &'static str,
    pub started_utc: String,
    pub pinning: String,
    /// Every setting of the run.
    pub settings: serde_json::Value,
}

fn read(path: &str) -> String {
    std::fs::read_to_string(path).map(|s| s.trim().to_string()).unwrap_or_else(|_| "unknown".into())
}

pub fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into())
}

fn git_commit() -> String {
    let out = Command::new("git").args(["rev-parse", "--short=12", "HEAD"]).output();
    match out {
        Ok(o) if o.status.success() => {
            let commit = String::from_utf8_lossy(&o.stdout).trim().to_string();
            let dirty = Command::new("git")
                .args(["status", "--porcelain", "--untracked-files=no"])
                .output()
                .map(|o| !o.stdout.is_empty())
                .unwrap_or(false);
            if dirty {
                format!("{commit}-dirty")
            } else {
                commit
            }
        }
        _ => "unknown (not a git checkout)".into(),
    }
}

/// UTC now as `YYYY-MM-DDTHH:MM:SSZ`.
pub fn utc_now() -> String {
    let secs = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    utc_string(secs)
}

/// Formats Unix seconds as an ISO-8601 UTC timestamp (civil-from-days, no time crate).
pub fn utc_string(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

/// The io_uring features the backend would use with default options, or the reason it
/// cannot run.
pub fn io_uring_features() -> BTreeMap<String, String> {
    let Some(uring) = server::backend("uring") else { return BTreeMap::new() };
    match server::features(uring, &ServerConfig::default()) {
        Ok(f) => f.into_iter().collect(),
        Err(e) => BTreeMap::from([("unavailable".to_string(), e.to_string())]),
    }
}

pub fn collect(pinning: String, settings: serde_json::Value) -> Env {
    let (nofile_soft, nofile_hard) = sys::nofile_limit().unwrap_or((0, 0));
    let cpu_list = sys::affinity().unwrap_or_default();
    Env {
        kernel: read("/proc/sys/kernel/osrelease"),
        cpu_model: cpu_model(),
        cpus: sys::allowed_cpus(),
        cpu_list,
        nofile_soft,
        nofile_hard,
        somaxconn: read("/proc/sys/net/core/somaxconn"),
        ephemeral_ports: crate::client::ephemeral_ports(),
        io_uring_features: io_uring_features(),
        git_commit: git_commit(),
        build_profile: if cfg!(debug_assertions) { "debug" } else { "release" },
        ringbench_version: env!("CARGO_PKG_VERSION"),
        started_utc: utc_now(),
        pinning,
        settings,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn utc_string_matches_known_dates() {
        assert_eq!(super::utc_string(0), "1970-01-01T00:00:00Z");
        assert_eq!(super::utc_string(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(super::utc_string(1_795_920_765), "2026-11-29T02:52:45Z");
    }
}
