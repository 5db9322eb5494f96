//! How sure a comparison is. Servers alternate within each point, so repeat `r` of every
//! server ran back to back: each repeat is a pair, and the ratio of a server's figure to
//! the baseline's is taken pair by pair. The interval is a Student t-interval on the
//! logarithms of those ratios (ratios multiply; their logs add), turned back into a ratio:
//! a 95 % interval for the geometric mean ratio.

/// A figure over the repeats of one point.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Spread {
    pub mean: f64,
    /// Sample standard deviation (0 with one repeat).
    pub sd: f64,
    pub min: f64,
    pub max: f64,
    /// Each repeat's value, by repeat number.
    pub samples: Vec<(usize, f64)>,
}

impl Spread {
    /// The spread of `samples`; `None` when there are none.
    pub fn of(samples: Vec<(usize, f64)>) -> Option<Spread> {
        if samples.is_empty() {
            return None;
        }
        let n = samples.len() as f64;
        let mean = samples.iter().map(|s| s.1).sum::<f64>() / n;
        let var =
            if samples.len() > 1 { samples.iter().map(|s| (s.1 - mean).powi(2)).sum::<f64>() / (n - 1.0) } else { 0.0 };
        Some(Spread {
            mean,
            sd: var.sqrt(),
            min: samples.iter().map(|s| s.1).fold(f64::INFINITY, f64::min),
            max: samples.iter().map(|s| s.1).fold(f64::NEG_INFINITY, f64::max),
            samples,
        })
    }
}

/// One server against the baseline at one point.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Ratio {
    /// The geometric mean of the paired ratios.
    pub ratio: f64,
    /// The 95 % interval; `None` with fewer than two pairs.
    pub ci95: Option<(f64, f64)>,
    pub pairs: usize,
}

impl Ratio {
    /// Whether the interval leaves out 1: a difference the repeats can tell from noise.
    pub fn significant(&self) -> bool {
        self.ci95.is_some_and(|(lo, hi)| lo > 1.0 || hi < 1.0)
    }

    /// `0.93× (95 % CI 0.90–0.96)`, or "no significant difference (…)" when the interval
    /// holds 1.
    pub fn describe(&self) -> String {
        match self.ci95 {
            Some((lo, hi)) if self.significant() => format!("{:.2}× (95 % CI {lo:.2}–{hi:.2})", self.ratio),
            Some((lo, hi)) => format!("no significant difference ({:.2}×, 95 % CI {lo:.2}–{hi:.2})", self.ratio),
            None => format!("{:.2}× ({} pair: no interval)", self.ratio, self.pairs),
        }
    }

    /// As a table cell: `0.93× [0.90, 0.96]`, with `≈` when the interval holds 1.
    pub fn cell(&self) -> String {
        match self.ci95 {
            Some((lo, hi)) => {
                let mark = if self.significant() { "" } else { "≈ " };
                format!("{mark}{:.2}× [{lo:.2}, {hi:.2}]", self.ratio)
            }
            None => format!("{:.2}×", self.ratio),
        }
    }
}

/// `other` against `base`, pairing their samples by repeat number.
pub fn paired_ratio(base: &Spread, other: &Spread) -> Option<Ratio> {
    let logs: Vec<f64> = other
        .samples
        .iter()
        .filter_map(|&(r, x)| {
            let (_, b) = base.samples.iter().find(|(rb, _)| *rb == r)?;
            (x > 0.0 && *b > 0.0).then(|| (x / b).ln())
        })
        .collect();
    let n = logs.len();
    if n == 0 {
        return None;
    }
    let mean = logs.iter().sum::<f64>() / n as f64;
    let ci95 = (n >= 2).then(|| {
        let var = logs.iter().map(|l| (l - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
        let half = t_975(n - 1) * (var / n as f64).sqrt();
        ((mean - half).exp(), (mean + half).exp())
    });
    Some(Ratio { ratio: mean.exp(), ci95, pairs: n })
}

/// The 97.5th percentile of Student's t with `df` degrees of freedom (two-sided 95 %).
pub fn t_975(df: usize) -> f64 {
    const T: [f64; 30] = [
        12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
        2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042,
    ];
    match df {
        0 => f64::INFINITY,
        1..=30 => T[df - 1],
        31..=60 => 2.000,
        61..=120 => 1.980,
        _ => 1.960,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spread_is_mean_sd_min_max() {
        let s = Spread::of(vec![(1, 1.0), (2, 2.0), (3, 6.0)]).unwrap();
        assert_eq!((s.mean, s.min, s.max), (3.0, 1.0, 6.0));
        assert!((s.sd - 7f64.sqrt()).abs() < 1e-12);
        assert_eq!(Spread::of(Vec::new()), None);
    }

    fn spread(v: &[f64]) -> Spread {
        Spread::of(v.iter().enumerate().map(|(i, &x)| (i + 1, x)).collect()).unwrap()
    }

    #[test]
    fn identical_pairs_give_a_tight_interval_and_noise_gives_none_significant() {
        let base = spread(&[10.0, 12.0, 11.0]);
        let half = paired_ratio(&base, &spread(&[5.0, 6.0, 5.5])).unwrap();
        assert!((half.ratio - 0.5).abs() < 1e-12);
        let (lo, hi) = half.ci95.unwrap();
        assert!((lo - 0.5).abs() < 1e-9 && (hi - 0.5).abs() < 1e-9);
        assert!(half.significant());
        // Ratios 0.8, 1.25, 1.0 straddle 1: no significant difference.
        let noisy = paired_ratio(&base, &spread(&[8.0, 15.0, 11.0])).unwrap();
        assert!(!noisy.significant(), "{noisy:?}");
        assert!(noisy.describe().starts_with("no significant difference"));
    }

    #[test]
    fn the_interval_matches_a_hand_computation() {
        // logs of 0.9, 0.95, 1.0: mean -0.0527, sd 0.0527; t(2) = 4.303; half = 0.1309.
        let base = spread(&[1.0, 1.0, 1.0]);
        let r = paired_ratio(&base, &spread(&[0.9, 0.95, 1.0])).unwrap();
        let logs = [0.9f64.ln(), 0.95f64.ln(), 0.0];
        let m = logs.iter().sum::<f64>() / 3.0;
        let sd = (logs.iter().map(|l| (l - m).powi(2)).sum::<f64>() / 2.0).sqrt();
        let (lo, hi) = r.ci95.unwrap();
        assert!((lo - (m - 4.303 * sd / 3f64.sqrt()).exp()).abs() < 1e-12);
        assert!((hi - (m + 4.303 * sd / 3f64.sqrt()).exp()).abs() < 1e-12);
    }

    #[test]
    fn samples_pair_by_repeat_number() {
        let base = Spread::of(vec![(1, 10.0), (2, 20.0)]).unwrap();
        let other = Spread::of(vec![(2, 10.0), (3, 99.0)]).unwrap();
        let r = paired_ratio(&base, &other).unwrap();
        assert_eq!((r.pairs, r.ratio), (1, 0.5));
        assert_eq!(r.ci95, None);
    }
}
