//! How far a sweep has got and about how long is left: a bar on a terminal, and a line
//! per finished unit (a run, or a point of paired slices) everywhere, each saying how
//! many are done and the time left at the pace so far.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

pub struct Progress {
    bar: ProgressBar,
    tty: bool,
    total: usize,
    done: usize,
    unit: &'static str,
    t0: Instant,
    /// When the unit now running began.
    unit_t0: Instant,
    estimate: Estimate,
}

/// How the time left is told.
enum Estimate {
    /// The pace so far times the units left (units of about equal length).
    Pace,
    /// Each unit's planned most, in order: what is left is at most the sum of the units not
    /// yet done (paired points differ tenfold in length, and most stop on their budget).
    AtMost(Vec<Duration>),
}

impl Progress {
    pub fn new(total: usize, unit: &'static str) -> Progress {
        let tty = std::io::stderr().is_terminal();
        let bar = if tty { ProgressBar::new(total as u64) } else { ProgressBar::hidden() };
        bar.set_style(
            ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {pos}/{len} {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
        );
        Progress {
            bar,
            tty,
            total,
            done: 0,
            unit,
            t0: Instant::now(),
            unit_t0: Instant::now(),
            estimate: Estimate::Pace,
        }
    }

    /// Each unit's planned longest time, in order: the time left is told as at most the
    /// plan of the units not yet done.
    pub fn at_most(&mut self, each: Vec<Duration>) {
        self.estimate = Estimate::AtMost(each);
    }

    /// What is running now (shown on the bar).
    pub fn message(&self, m: String) {
        self.bar.set_message(format!("{} · {m}", self.left()));
    }

    /// About how long is left: the pace so far times what remains, or at most what the
    /// plan gives the units not yet done.
    pub fn left(&self) -> String {
        if self.done >= self.total {
            return "done".into();
        }
        match &self.estimate {
            Estimate::AtMost(each) => {
                let running = each.get(self.done).map_or(Duration::ZERO, |d| d.saturating_sub(self.unit_t0.elapsed()));
                let planned: Duration = running + each.iter().skip(self.done + 1).sum::<Duration>();
                format!("at most about {} left", human(planned))
            }
            Estimate::Pace if self.done == 0 => "time left not known yet".into(),
            Estimate::Pace => {
                let each = self.t0.elapsed().as_secs_f64() / self.done as f64;
                format!("about {} left", human(Duration::from_secs_f64(each * (self.total - self.done) as f64)))
            }
        }
    }

    /// A unit finished: its line, with how many are done and the time left.
    pub fn done_one(&mut self, line: &str) {
        self.done += 1;
        self.unit_t0 = Instant::now();
        let text = format!("[{}/{} {}, {}] {line}", self.done, self.total, self.unit, self.left());
        if self.tty {
            self.bar.println(format!("  {text}"));
            self.bar.inc(1);
        } else {
            eprintln!("{text}");
        }
        if self.done == self.total {
            self.bar.finish_and_clear();
        }
    }

    /// A line between units (what a point found, a server set apart).
    pub fn note(&self, line: &str) {
        if self.tty {
            self.bar.println(format!("  {line}"));
        } else {
            eprintln!("{line}");
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.bar.finish_and_clear();
    }
}

/// `45 s`, `3 min`, `1 h 20 min`.
pub fn human(d: Duration) -> String {
    let s = d.as_secs();
    if s < 90 {
        format!("{s} s")
    } else if s < 3600 {
        format!("{} min", (s + 30) / 60)
    } else {
        format!("{} h {} min", s / 3600, (s % 3600 + 30) / 60)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn planned_units_tell_the_most_that_is_left_not_the_pace() {
        let mut p = Progress::new(2, "points");
        p.at_most(vec![Duration::from_secs(640), Duration::from_secs(30)]);
        assert_eq!(p.left(), "at most about 11 min left");
        // A first point that ended early says nothing about the second's budget.
        p.done_one("first");
        let left = p.left();
        assert!(left.starts_with("at most about ") && left.ends_with(" s left") && !left.contains("min"), "{left}");
        p.done_one("second");
        assert_eq!(p.left(), "done");
    }

    #[test]
    fn units_without_a_plan_tell_the_pace_once_one_is_done() {
        let mut p = Progress::new(3, "runs");
        assert_eq!(p.left(), "time left not known yet");
        p.done_one("first");
        assert!(p.left().starts_with("about "), "{}", p.left());
    }
}
