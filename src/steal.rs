//! CPU time the hypervisor gave to someone else: `/proc/stat`'s steal column, per CPU.
//!
//! Why: on a shared VM the server's and the client's virtual CPUs are descheduled by the
//! host for stretches the guest cannot see except here. With paravirtual time accounting
//! (`CONFIG_PARAVIRT_TIME_ACCOUNTING`, as on these machines) the kernel leaves steal out
//! of task time, so no server's CPU clock counts it; but requests wait through it, so
//! req/s and the pairs' spread move with it. Paired slices read it at every slice's marks, and
//! summary.md says how much of the measured time was stolen: where it is high, wide
//! intervals are the machine's, not the sweep's.

use std::io;

use ringbench_backends::sys;

/// Steal of `cpus` (every CPU when empty) so far, in clock ticks, from the text of
/// `/proc/stat`; `None` if a CPU asked for has no line or the line has no steal column
/// (a kernel before 2.6.11).
pub fn steal_ticks(stat: &str, cpus: &[usize]) -> Option<u64> {
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
    (found == wanted).then_some(total)
}

/// Steal so far of each list of CPUs (every CPU for an empty list), in seconds, from one
/// read of `/proc/stat`; `None` for a list whose CPUs have no steal column.
pub fn steal_s<const N: usize>(lists: [&[usize]; N]) -> io::Result<[Option<f64>; N]> {
    let stat = std::fs::read_to_string("/proc/stat")?;
    Ok(lists.map(|cpus| steal_ticks(&stat, cpus).map(|t| t as f64 / sys::clock_ticks_per_s())))
}

/// How many CPUs `cpus` stands for (every online CPU when empty).
pub fn cpu_count(cpus: &[usize]) -> usize {
    if cpus.is_empty() {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    } else {
        cpus.len()
    }
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
        assert_eq!(steal_ticks(STAT, &[0]), Some(4100));
        assert_eq!(steal_ticks(STAT, &[1]), Some(4209));
        assert_eq!(steal_ticks(STAT, &[0, 1]), Some(8309));
        // Every CPU: the per-CPU lines, not the summary line counted again.
        assert_eq!(steal_ticks(STAT, &[]), Some(8309));
    }

    #[test]
    fn a_cpu_without_a_line_or_a_short_line_gives_none() {
        assert_eq!(steal_ticks(STAT, &[2]), None);
        assert_eq!(steal_ticks("cpu0 1 2 3 4\n", &[0]), None);
    }

    #[test]
    fn this_machine_reports_steal() {
        let [all, first] = steal_s([&[], &[0]]).expect("/proc/stat is readable");
        let (all, first) = (all.expect("a steal column on Linux 6"), first.expect("CPU 0 has a line"));
        assert!(all >= first && first >= 0.0, "{all} {first}");
    }
}
