//! Summaries of per-second rates: the median, mean, minimum and maximum of the samples a run
//! took once a second, so that a slow start or a stall shows up without hiding the steady
//! rate (the median is what the comparison uses).

use serde::Serialize;

/// Statistics of one rate over a run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct RateSummary {
    /// Events counted over the whole run.
    pub total: u64,
    /// Median of the per-second rates.
    pub median: f64,
    /// Mean of the per-second rates.
    pub mean: f64,
    /// Lowest per-second rate.
    pub min: f64,
    /// Highest per-second rate.
    pub max: f64,
    /// `total` divided by the run's length.
    pub overall: f64,
    /// How many per-second samples there were.
    pub samples: usize,
}

/// The median of `values` (the mean of the two middle ones for an even count); 0 when empty.
pub fn median(values: &[f64]) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    let mut v = values.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    let mid = v.len() / 2;
    if v.len() % 2 == 1 {
        v[mid]
    } else {
        (v[mid - 1] + v[mid]) / 2.0
    }
}

impl RateSummary {
    /// Summarises per-second `samples` of a run of `seconds` that counted `total` events.
    pub fn from_samples(samples: &[f64], total: u64, seconds: f64) -> RateSummary {
        if samples.is_empty() {
            return RateSummary {
                total,
                overall: if seconds > 0.0 {
                    total as f64 / seconds
                } else {
                    0.0
                },
                ..Default::default()
            };
        }
        RateSummary {
            total,
            median: median(samples),
            mean: samples.iter().sum::<f64>() / samples.len() as f64,
            min: samples.iter().copied().fold(f64::INFINITY, f64::min),
            max: samples.iter().copied().fold(f64::NEG_INFINITY, f64::max),
            overall: if seconds > 0.0 {
                total as f64 / seconds
            } else {
                0.0
            },
            samples: samples.len(),
        }
    }
}

/// A rate of `count` events in `seconds`, 0 for an empty interval.
pub fn rate(count: u64, seconds: f64) -> f64 {
    if seconds > 0.0 {
        count as f64 / seconds
    } else {
        0.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(&[]), 0.0);
        assert_eq!(median(&[3.0]), 3.0);
        assert_eq!(median(&[5.0, 1.0, 3.0]), 3.0);
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), 2.5);
    }

    #[test]
    fn summary_ignores_a_slow_first_second_in_the_median() {
        let s = RateSummary::from_samples(&[10.0, 1000.0, 1010.0, 990.0, 1000.0], 4010, 5.0);
        assert_eq!(s.median, 1000.0);
        assert_eq!(s.min, 10.0);
        assert_eq!(s.max, 1010.0);
        assert_eq!(s.mean, 802.0);
        assert_eq!(s.overall, 802.0);
        assert_eq!(s.samples, 5);
        assert_eq!(s.total, 4010);
    }

    #[test]
    fn empty_run_has_zero_rates() {
        let s = RateSummary::from_samples(&[], 0, 0.0);
        assert_eq!(s, RateSummary::default());
        assert_eq!(rate(10, 0.0), 0.0);
        assert_eq!(rate(10, 2.0), 5.0);
    }
}
