//! Order statistics over measured samples.
//!
//! Latencies are summarised by the median and the 99th percentile of *all*
//! samples of all rounds of a case (the rounds are pooled, not averaged).
//! The median of an even number of samples is the mean of the two middle
//! samples; percentiles use the nearest-rank definition: the p-th percentile
//! is the smallest sample such that at least p % of the samples are less than
//! or equal to it. Nearest-rank never interpolates, so a reported p99 is
//! always a value that was actually observed.

/// Median and 99th percentile of a set of samples, in the samples' unit.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Summary {
    /// The median (mean of the two middle samples for an even count).
    pub median: f64,
    /// The nearest-rank 99th percentile.
    pub p99: f64,
}

impl Summary {
    /// Sorts `samples` in place and summarises them; `None` when there are none.
    pub fn of(samples: &mut [u64]) -> Option<Self> {
        if samples.is_empty() {
            return None;
        }
        samples.sort_unstable();
        Some(Self {
            median: median_sorted(samples),
            p99: percentile_sorted(samples, 99.0),
        })
    }

    /// The summary with both statistics divided by `divisor` (used to turn
    /// per-batch times into per-operation times; order statistics commute
    /// with scaling by a positive constant).
    pub fn scaled_down(self, divisor: f64) -> Self {
        Self {
            median: self.median / divisor,
            p99: self.p99 / divisor,
        }
    }
}

/// Median of samples sorted in ascending order; `NaN` when empty.
pub fn median_sorted(sorted: &[u64]) -> f64 {
    let n = sorted.len();
    match n {
        0 => f64::NAN,
        _ if n % 2 == 1 => sorted[n / 2] as f64,
        _ => (sorted[n / 2 - 1] as f64 + sorted[n / 2] as f64) / 2.0,
    }
}

/// Nearest-rank `p`-th percentile (`0 < p <= 100`) of samples sorted in
/// ascending order; `NaN` when empty.
pub fn percentile_sorted(sorted: &[u64], p: f64) -> f64 {
    let n = sorted.len();
    if n == 0 {
        return f64::NAN;
    }
    // 1-based rank ceil(p/100 * n), clamped into 1..=n.
    let rank = ((p / 100.0) * n as f64).ceil() as usize;
    sorted[rank.clamp(1, n) - 1] as f64
}

/// Median of unsorted floating-point values (the per-round throughputs);
/// `None` when empty.
pub fn median_f64(values: &[f64]) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let mut v = values.to_vec();
    v.sort_unstable_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_odd_and_even() {
        assert_eq!(median_sorted(&[7]), 7.0);
        assert_eq!(median_sorted(&[1, 2, 9]), 2.0);
        assert_eq!(median_sorted(&[1, 2, 4, 9]), 3.0);
        assert!(median_sorted(&[]).is_nan());
    }

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile_sorted(&v, 99.0), 99.0);
        assert_eq!(percentile_sorted(&v, 50.0), 50.0);
        assert_eq!(percentile_sorted(&v, 100.0), 100.0);
        let v: Vec<u64> = (1..=1000).collect();
        assert_eq!(percentile_sorted(&v, 99.0), 990.0);
        // Fewer than 100 samples: p99 is the maximum.
        assert_eq!(percentile_sorted(&[3, 5, 8], 99.0), 8.0);
        assert_eq!(percentile_sorted(&[4], 99.0), 4.0);
    }

    #[test]
    fn summary_sorts_and_pools() {
        // 98 fast samples, two slow outliers, unsorted.
        let mut v = vec![100u64; 98];
        v.insert(10, 5000);
        v.push(9000);
        let s = Summary::of(&mut v).unwrap();
        assert_eq!(s.median, 100.0);
        // rank ceil(0.99 * 100) = 99 -> the smaller outlier.
        assert_eq!(s.p99, 5000.0);
        assert!(v.windows(2).all(|w| w[0] <= w[1]));
        assert_eq!(Summary::of(&mut []), None);
        assert_eq!(
            s.scaled_down(100.0),
            Summary {
                median: 1.0,
                p99: 50.0
            }
        );
    }

    #[test]
    fn median_of_floats() {
        assert_eq!(median_f64(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median_f64(&[4.0, 1.0]), Some(2.5));
        assert_eq!(median_f64(&[]), None);
    }
}
