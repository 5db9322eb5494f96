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
    /// Added to the pace-based estimate before the first unit ends (what the plan says).
    first_guess: Option<Duration>,
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
        Progress { bar, tty, total, done: 0, unit, t0: Instant::now(), first_guess: None }
    }

    /// Before any unit has finished, the time left is this guess (from the plan).
    pub fn guess(&mut self, total: Duration) {
        self.first_guess = Some(total);
    }

    /// What is running now (shown on the bar).
    pub fn message(&self, m: String) {
        self.bar.set_message(format!("{} · {m}", self.left()));
    }

    /// About how long is left: the pace so far times what remains.
    pub fn left(&self) -> String {
        let left = if self.done == 0 {
            self.first_guess.map(|g| g.saturating_sub(self.t0.elapsed()))
        } else {
            let each = self.t0.elapsed().as_secs_f64() / self.done as f64;
            Some(Duration::from_secs_f64(each * (self.total - self.done) as f64))
        };
        match left {
            Some(d) if self.done < self.total => format!("about {} left", human(d)),
            Some(_) => "done".into(),
            None => "time left not known yet".into(),
        }
    }

    /// A unit finished: its line, with how many are done and the time left.
    pub fn done_one(&mut self, line: &str) {
        self.done += 1;
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
