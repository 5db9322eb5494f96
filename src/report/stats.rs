//! How sure a comparison is. Servers alternate within each point, so repeat (or round)
//! `r` of every server ran close together in time: each is a pair, and the ratio of a
//! server's figure to the baseline's is taken pair by pair, on logarithms (ratios
//! multiply; their logs add). Two estimators, one per way of running a point:
//!
//! - **fresh servers** (`--fresh-servers`, the seed's way): the geometric mean of the
//!   paired ratios with a 95 % Student t-interval — the figures sweeps have always had;
//! - **paired slices** (the default): the median of the paired log-ratios with its
//!   distribution-free 95 % interval from the sign test (order statistics of the pairs).
//!   On a shared VM that switches between speed regimes for seconds, a pair that
//!   straddles a switch gives one wild ratio; a mean and its t-interval follow it (one
//!   such pair widened an interval from ±0.3 % to [0.84, 1.07]), the median does not, and
//!   its interval assumes nothing about the shape of the ratios' distribution. It is
//!   exact and deterministic (no resampling), so a report rebuilds byte for byte.

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
            Some((lo, hi)) if self.significant() => format!("{:.3}× (95 % CI {lo:.3}–{hi:.3})", self.ratio),
            Some((lo, hi)) => format!("no significant difference ({:.3}×, 95 % CI {lo:.3}–{hi:.3})", self.ratio),
            None => format!("{:.3}× ({} pairs: no interval)", self.ratio, self.pairs),
        }
    }

    /// How far the interval reaches from the estimate, as a fraction of it (0.01: the
    /// interval is within ±1 %); `None` without an interval.
    pub fn half_width(&self) -> Option<f64> {
        let (lo, hi) = self.ci95?;
        Some((hi / self.ratio - 1.0).max(1.0 - lo / self.ratio))
    }

    /// As a table cell: `0.928× [0.925, 0.931]`, with `≈` when the interval holds 1 —
    /// three decimals, as paired slices resolve differences of a few tenths of a percent.
    pub fn cell(&self) -> String {
        match self.ci95 {
            Some((lo, hi)) => {
                let mark = if self.significant() { "" } else { "≈ " };
                format!("{mark}{:.3}× [{lo:.3}, {hi:.3}]", self.ratio)
            }
            None => format!("{:.3}× (no interval: {} pairs)", self.ratio, self.pairs),
        }
    }

    /// Whether the interval holds 1 (an A/A comparison should).
    pub fn holds_one(&self) -> bool {
        self.ci95.is_some_and(|(lo, hi)| lo <= 1.0 && hi >= 1.0)
    }
}

/// How a point's servers were run, and so which estimator its ratios use.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Pairing {
    /// A fresh server per run, servers alternated within each repeat.
    #[default]
    Repeats,
    /// Servers up side by side, short slices of load alternated in rounds.
    Slices,
}

/// The logarithms of `other`'s samples over `base`'s, paired by repeat (round) number.
pub fn paired_logs(base: &Spread, other: &Spread) -> Vec<f64> {
    other
        .samples
        .iter()
        .filter_map(|&(r, x)| {
            let (_, b) = base.samples.iter().find(|(rb, _)| *rb == r)?;
            (x > 0.0 && *b > 0.0).then(|| (x / b).ln())
        })
        .collect()
}

/// `other` against `base` with the estimator `pairing` calls for.
pub fn ratio_by(pairing: Pairing, base: &Spread, other: &Spread) -> Option<Ratio> {
    match pairing {
        Pairing::Repeats => paired_ratio(base, other),
        Pairing::Slices => median_ratio(&paired_logs(base, other)),
    }
}

/// The median of `v` (0 when empty).
pub fn median(v: &[f64]) -> f64 {
    let mut v: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// The median absolute deviation of `v`, scaled (× 1.4826) to estimate a standard
/// deviation that one wild value does not inflate.
pub fn robust_sd(v: &[f64]) -> f64 {
    let m = median(v);
    1.4826 * median(&v.iter().map(|x| (x - m).abs()).collect::<Vec<_>>())
}

/// The smallest number of pairs that gives the median a 95 % interval: with fewer, even
/// the widest one (from the smallest to the largest pair) covers it less often.
pub const MIN_PAIRS_FOR_INTERVAL: usize = 6;

/// The rank `k` (from 1) for which the `k`-th smallest and `k`-th largest of `n` pairs
/// bound the median with at least 95 % confidence: the largest `k` with
/// P(Binomial(n, ½) ≤ k − 1) ≤ 2.5 %. `None` below [`MIN_PAIRS_FOR_INTERVAL`].
pub fn sign_rank(n: usize) -> Option<usize> {
    let mut term = 0.5f64.powi(n as i32); // P(B = 0)
    let mut cdf = 0.0;
    let mut k = 0;
    for j in 0..n {
        cdf += term;
        if cdf > 0.025 {
            break;
        }
        k = j + 1;
        term *= (n - j) as f64 / (j + 1) as f64;
    }
    (k >= 1).then_some(k)
}

/// The median of paired log-ratios and its sign-test interval, as a ratio.
pub fn median_ratio(logs: &[f64]) -> Option<Ratio> {
    let mut v: Vec<f64> = logs.iter().copied().filter(|x| x.is_finite()).collect();
    let n = v.len();
    if n == 0 {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let ci95 = sign_rank(n).map(|k| (v[k - 1].exp(), v[n - k].exp()));
    Some(Ratio { ratio: median(&v).exp(), ci95, pairs: n })
}

/// `other` against `base`, pairing their samples by repeat number: the geometric mean
/// and its Student t-interval.
pub fn paired_ratio(base: &Spread, other: &Spread) -> Option<Ratio> {
    let logs = paired_logs(base, other);
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
    fn the_sign_interval_is_the_order_statistics_that_cover_95_percent() {
        // Known ranks: n = 6 → 1 (96.9 %), 10 → 2 (97.9 %), 12 → 3, 20 → 6 (95.9 %).
        assert_eq!(sign_rank(5), None);
        assert_eq!([6, 10, 12, 20].map(sign_rank), [Some(1), Some(2), Some(3), Some(6)]);
        let logs: Vec<f64> = (1..=20).map(|i| (1.0 + i as f64 / 1000.0).ln()).collect();
        let r = median_ratio(&logs).unwrap();
        assert!((r.ratio - (1.0105f64.ln().exp())).abs() < 1e-3, "{r:?}");
        let (lo, hi) = r.ci95.unwrap();
        assert!((lo - 1.006).abs() < 1e-9 && (hi - 1.015).abs() < 1e-9, "{lo} {hi}");
    }

    #[test]
    fn one_pair_that_straddles_a_regime_switch_does_not_move_the_median() {
        // 15 pairs near 0.90; one pair caught the fast regime on one side only.
        let mut logs: Vec<f64> = (0..14).map(|i| (0.90 + (i % 5) as f64 * 0.001).ln()).collect();
        logs.push(2.2f64.ln());
        let m = median_ratio(&logs).unwrap();
        let (lo, hi) = m.ci95.unwrap();
        assert!(hi < 0.91 && lo > 0.89, "the median's interval ignores the outlier: {m:?}");
        let t = paired_ratio(
            &Spread::of((0..15).map(|i| (i, 1.0)).collect()).unwrap(),
            &Spread::of(logs.iter().enumerate().map(|(i, l)| (i, l.exp())).collect()).unwrap(),
        )
        .unwrap();
        assert!(!t.significant(), "the mean's interval is dragged over 1 by it: {t:?}");
        assert!(m.half_width().unwrap() < 0.01);
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
