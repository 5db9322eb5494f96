//! CPU time the hypervisor gave to someone else: `/proc/stat`'s steal column, per CPU.
//!
//! Why: on a shared VM the server's and the client's virtual CPUs are descheduled by the
//! host for stretches the guest cannot see except here. With paravirtual time accounting
//! (`CONFIG_PARAVIRT_TIME_ACCOUNTING`, as on these machines) the kernel leaves steal out
//! of task time, so no server's CPU clock counts it; but requests wait through it, so
//! req/s and the pairs' spread move with it. Paired slices read it at every slice's
//! marks, and summary.md says how much of the measured time was stolen: where it is
//! high, wide intervals are the machine's, not the sweep's.

use std::io;

use ringbench_backends::sys;

/// Steal of `cpus` (every CPU when empty) so far, in clock ticks, and how many CPUs that
/// was, from the text of `/proc/stat`; `None` if a CPU asked for has no line or the line
/// has no steal column (a kernel before 2.6.11).
pub fn steal_ticks(stat: &str, cpus: &[usize]) -> Option<(u64, usize)> {
    let mut total = 0;
    let mut found = 0;
    for line in stat.lines() {
        let mut f = line.split_whitespace();
        let Some(cpu) = f.next().and_then(|n| n.strip_prefix("cpu")).and_then(|n| n.parse::<usize>().ok()) else {
            continue;
        };
        if !cpus.is_empty() && !cpus.contains(&cpu) {
            continue;
        }
        // user nice system idle iowait irq softirq steal …
        total += f.nth(7)?.parse::<u64>().ok()?;
        found += 1;
    }
    let wanted = if cpus.is_empty() { found.max(1) } else { cpus.len() };
    (found == wanted).then_some((total, found))
}

/// Steal so far of a set of CPUs: seconds, over how many CPUs.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Steal {
    pub s: f64,
    pub cpus: usize,
}

impl Steal {
    /// The share of these CPUs' time stolen since `earlier`, over `wall_s` seconds.
    pub fn share_since(self, earlier: Steal, wall_s: f64) -> Option<f64> {
        let cpu_s = wall_s * self.cpus as f64;
        (cpu_s > 0.0 && self.cpus == earlier.cpus).then(|| ((self.s - earlier.s) / cpu_s).clamp(0.0, 1.0))
    }
}

/// Steal so far of each list of CPUs (every CPU for an empty list), from one read of
/// `/proc/stat`; `None` for a list whose CPUs have no steal column.
pub fn steal_of<const N: usize>(lists: [&[usize]; N]) -> io::Result<[Option<Steal>; N]> {
    let stat = std::fs::read_to_string("/proc/stat")?;
    let tick_s = 1.0 / sys::clock_ticks_per_s();
    Ok(lists.map(|cpus| steal_ticks(&stat, cpus).map(|(t, n)| Steal { s: t as f64 * tick_s, cpus: n })))
}

#[cfg(test)]
mod tests {
    use super::*;

    const STAT: &str = "cpu  70615 0 52266 69479 4381 0 25433 8309 0 0\n\
                        cpu0 35000 0 26000 34000 2400 0 12700 4100 0 0\n\
                        cpu1 35615 0 26266 35479 1981 0 12733 4209 0 0\n\
                        intr 1 2 3\n";

    #[test]
    fn steal_is_the_eighth_column_of_the_cpus_asked_for() {
        assert_eq!(steal_ticks(STAT, &[0]), Some((4100, 1)));
        assert_eq!(steal_ticks(STAT, &[1]), Some((4209, 1)));
        assert_eq!(steal_ticks(STAT, &[0, 1]), Some((8309, 2)));
        // Every CPU: the per-CPU lines, not the summary line counted again.
        assert_eq!(steal_ticks(STAT, &[]), Some((8309, 2)));
    }

    #[test]
    fn a_cpu_without_a_line_or_a_short_line_gives_none() {
        assert_eq!(steal_ticks(STAT, &[2]), None);
        assert_eq!(steal_ticks("cpu0 1 2 3 4\n", &[0]), None);
    }

    #[test]
    fn a_share_is_of_the_cpus_counted_over_the_wall_time() {
        let at = |s, cpus| Steal { s, cpus };
        assert_eq!(at(1.5, 2).share_since(at(1.0, 2), 1.0), Some(0.25));
        assert_eq!(at(1.0, 2).share_since(at(1.5, 2), 1.0), Some(0.0), "never below 0");
        assert_eq!(at(1.5, 2).share_since(at(1.0, 2), 0.0), None, "no time, no share");
        assert_eq!(at(1.5, 2).share_since(at(1.0, 1), 1.0), None, "a CPU came or went");
    }

    #[test]
    fn this_machine_reports_steal() {
        let [all, first] = steal_of([&[], &[0]]).expect("/proc/stat is readable");
        let (all, first) = (all.expect("a steal column on Linux 6"), first.expect("CPU 0 has a line"));
        assert!(all.s >= first.s && first.s >= 0.0 && first.cpus == 1 && all.cpus >= 1, "{all:?} {first:?}");
    }
}
