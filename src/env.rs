//! Facts about the machine and the build, recorded with every sweep (`env.json`) so a
//! result can be read, compared with another machine's, and reproduced: what decides the
//! answer (the CPU and its speculative-execution mitigations, the hypervisor, the kernel
//! and its command line, the network sysctls) and what was built (commit, rustc, flags).

use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

use ringbench_backends::{server, sys, ServerConfig};
use serde::Serialize;

use crate::probe::ProbeReport;

/// What the binary was built from, recorded at build time (`build.rs`).
#[derive(Debug, Serialize)]
pub struct Build {
    pub commit: &'static str,
    pub rustc: &'static str,
    pub rustflags: &'static str,
    pub profile: &'static str,
    pub version: &'static str,
}

pub const BUILD: Build = Build {
    commit: env!("RINGBENCH_BUILD_COMMIT"),
    rustc: env!("RINGBENCH_BUILD_RUSTC"),
    rustflags: env!("RINGBENCH_BUILD_RUSTFLAGS"),
    profile: env!("RINGBENCH_BUILD_PROFILE"),
    version: env!("CARGO_PKG_VERSION"),
};

#[derive(Debug, Serialize)]
pub struct Env {
    pub kernel: String,
    pub kernel_cmdline: String,
    pub cpu_model: String,
    /// The CPU flags that bear on syscall and wake-up costs, of those this CPU has.
    pub cpu_flags: Vec<String>,
    /// The hypervisor's vendor (from CPUID), or "none".
    pub hypervisor: String,
    /// Every file of /sys/devices/system/cpu/vulnerabilities.
    pub vulnerabilities: BTreeMap<String, String>,
    /// Which of them have a mitigation on, in one line.
    pub mitigations: String,
    pub frequency_governor: String,
    pub smt: String,
    /// CPUs this process may use.
    pub cpus: usize,
    pub cpu_list: Vec<usize>,
    pub nofile_soft: u64,
    pub nofile_hard: u64,
    /// The sysctls that shape a run (listen backlog, socket buffers, port range, …).
    pub sysctls: BTreeMap<String, String>,
    pub ephemeral_ports: u64,
    /// What the io_uring backend would use here, or why it cannot run.
    pub io_uring_features: BTreeMap<String, String>,
    pub build: Build,
    /// The same as `build.commit` and `build.profile`, where older reports look.
    pub git_commit: &'static str,
    pub build_profile: &'static str,
    pub started_utc: String,
    pub pinning: String,
    /// What `ringbench probe` measured before the sweep.
    pub probe: Option<ProbeReport>,
    /// Every setting of the run.
    pub settings: serde_json::Value,
}

fn read(path: &str) -> String {
    std::fs::read_to_string(path).map(|s| s.trim().to_string()).unwrap_or_else(|_| "unknown".into())
}

fn cpuinfo_field(name: &str) -> Option<String> {
    let info = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    info.lines().find(|l| l.starts_with(name)).and_then(|l| l.split_once(':')).map(|(_, v)| v.trim().to_string())
}

pub fn cpu_model() -> String {
    cpuinfo_field("model name").unwrap_or_else(|| "unknown CPU".into())
}

/// Flags that bear on what a syscall or a wake-up costs.
const FLAGS_OF_INTEREST: &[&str] = &[
    "hypervisor",
    "pti",
    "pcid",
    "invpcid",
    "smep",
    "smap",
    "ibrs",
    "ibrs_enhanced",
    "ibpb",
    "stibp",
    "ssbd",
    "md_clear",
    "flush_l1d",
    "arch_capabilities",
    "ibt",
    "user_shstk",
    "rdpid",
    "constant_tsc",
    "nonstop_tsc",
];

fn cpu_flags() -> Vec<String> {
    let flags = cpuinfo_field("flags").unwrap_or_default();
    let have: Vec<&str> = flags.split_whitespace().collect();
    FLAGS_OF_INTEREST.iter().filter(|f| have.contains(f)).map(|f| f.to_string()).collect()
}

/// The hypervisor's vendor string from CPUID leaf 0x40000000, when the hypervisor bit is
/// set.
fn hypervisor() -> String {
    if !cpu_flags().iter().any(|f| f == "hypervisor") {
        return "none".into();
    }
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: CPUID is available on every x86_64 CPU, and the hypervisor leaf is
        // defined when the hypervisor bit is set (checked above). (`__cpuid` is a safe
        // function from Rust 1.87; the block keeps older compilers happy.)
        #[allow(unused_unsafe)]
        let r = unsafe { std::arch::x86_64::__cpuid(0x4000_0000) };
        let bytes: Vec<u8> = [r.ebx, r.ecx, r.edx].iter().flat_map(|w| w.to_le_bytes()).collect();
        let vendor = String::from_utf8_lossy(&bytes).trim_matches(char::from(0)).trim().to_string();
        if !vendor.is_empty() {
            return vendor;
        }
    }
    "yes (vendor unknown)".into()
}

fn vulnerabilities() -> BTreeMap<String, String> {
    let dir = "/sys/devices/system/cpu/vulnerabilities";
    let Ok(entries) = std::fs::read_dir(dir) else { return BTreeMap::new() };
    entries
        .flatten()
        .map(|e| (e.file_name().to_string_lossy().into_owned(), read(&e.path().display().to_string())))
        .collect()
}

/// `name(how)` for each vulnerability with a mitigation on, e.g. `retbleed(untrained
/// return thunk)`.
fn mitigations(v: &BTreeMap<String, String>) -> String {
    let on: Vec<String> = v
        .iter()
        .filter_map(|(k, s)| {
            let how = s.strip_prefix("Mitigation: ")?;
            Some(format!("{k}({})", how.split(';').next().unwrap_or(how).trim()))
        })
        .collect();
    if on.is_empty() {
        "none".into()
    } else {
        on.join(", ")
    }
}

const SYSCTLS: &[&str] = &[
    "net.core.somaxconn",
    "net.core.netdev_max_backlog",
    "net.ipv4.tcp_rmem",
    "net.ipv4.tcp_wmem",
    "net.ipv4.tcp_congestion_control",
    "net.ipv4.ip_local_port_range",
    "kernel.io_uring_disabled",
    "vm.max_map_count",
    "kernel.threads-max",
];

fn sysctls() -> BTreeMap<String, String> {
    SYSCTLS.iter().map(|k| (k.to_string(), read(&format!("/proc/sys/{}", k.replace('.', "/"))))).collect()
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

pub fn collect(pinning: String, settings: serde_json::Value, probe: Option<ProbeReport>) -> Env {
    let (nofile_soft, nofile_hard) = sys::nofile_limit().unwrap_or((0, 0));
    let vulnerabilities = vulnerabilities();
    Env {
        kernel: read("/proc/sys/kernel/osrelease"),
        kernel_cmdline: read("/proc/cmdline"),
        cpu_model: cpu_model(),
        cpu_flags: cpu_flags(),
        hypervisor: hypervisor(),
        mitigations: mitigations(&vulnerabilities),
        vulnerabilities,
        frequency_governor: read("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor"),
        smt: read("/sys/devices/system/cpu/smt/control"),
        cpus: sys::allowed_cpus(),
        cpu_list: sys::affinity().unwrap_or_default(),
        nofile_soft,
        nofile_hard,
        sysctls: sysctls(),
        ephemeral_ports: crate::client::ephemeral_ports(),
        io_uring_features: io_uring_features(),
        git_commit: BUILD.commit,
        build_profile: BUILD.profile,
        build: BUILD,
        started_utc: utc_now(),
        pinning,
        probe,
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

    #[test]
    fn mitigations_name_each_one_on() {
        let v = [
            ("retbleed", "Mitigation: untrained return thunk; SMT disabled"),
            ("meltdown", "Not affected"),
            ("spec_rstack_overflow", "Mitigation: Safe RET"),
        ]
        .map(|(k, s)| (k.to_string(), s.to_string()))
        .into();
        assert_eq!(super::mitigations(&v), "retbleed(untrained return thunk), spec_rstack_overflow(Safe RET)");
    }
}
