//! A latency histogram with bounded relative error, for percentiles of millions of samples.
//!
//! Buckets are log-linear: values below 128 are counted exactly, every larger power of two
//! is split into 64 equal buckets, so a reported percentile is at most 1/64 (1.6 %) above the
//! true value. Recording is an index computation and an increment, with no allocation, so a
//! consumer can record every message it receives.

use serde::Serialize;

/// Sub-buckets per power of two, as a power of two.
const SUB_BITS: u32 = 6;
/// Sub-buckets per power of two.
const SUB: u64 = 1 << SUB_BITS;
/// Buckets needed for every `u64`: values up to `2 * SUB` exactly, then `SUB` for each of the
/// shifts 1..=63-SUB_BITS.
const BUCKETS: usize = ((64 - SUB_BITS + 1) as usize) * SUB as usize;

/// Counts of values (nanoseconds, in Warren's use) in log-linear buckets.
#[derive(Debug, Clone)]
pub struct Histogram {
    counts: Vec<u64>,
    total: u64,
    min: u64,
    max: u64,
    sum: u128,
}

impl Default for Histogram {
    fn default() -> Self {
        Self::new()
    }
}

/// The bucket a value falls into.
fn index(v: u64) -> usize {
    if v < 2 * SUB {
        return v as usize;
    }
    let exp = 63 - v.leading_zeros();
    let shift = exp - SUB_BITS;
    // `top` is in SUB..2*SUB: the value's leading SUB_BITS+1 bits.
    let top = v >> shift;
    shift as usize * SUB as usize + top as usize
}

/// The highest value that falls into bucket `i`.
fn upper(i: usize) -> u64 {
    let i = i as u64;
    if i < 2 * SUB {
        return i;
    }
    let shift = i / SUB - 1;
    let top = i - shift * SUB;
    // The last bucket's upper bound is u64::MAX: compute in u128 to avoid overflow.
    (((u128::from(top) + 1) << shift) - 1).min(u128::from(u64::MAX)) as u64
}

impl Histogram {
    /// An empty histogram.
    pub fn new() -> Self {
        Histogram {
            counts: vec![0; BUCKETS],
            total: 0,
            min: u64::MAX,
            max: 0,
            sum: 0,
        }
    }

    /// Counts one value.
    #[inline]
    pub fn record(&mut self, v: u64) {
        self.counts[index(v)] += 1;
        self.total += 1;
        self.min = self.min.min(v);
        self.max = self.max.max(v);
        self.sum += u128::from(v);
    }

    /// Adds every value counted by `other`.
    pub fn merge(&mut self, other: &Histogram) {
        if other.total == 0 {
            return;
        }
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += *b;
        }
        self.total += other.total;
        self.min = self.min.min(other.min);
        self.max = self.max.max(other.max);
        self.sum += other.sum;
    }

    /// Forgets every value.
    pub fn clear(&mut self) {
        if self.total > 0 {
            self.counts.iter_mut().for_each(|c| *c = 0);
        }
        self.total = 0;
        self.min = u64::MAX;
        self.max = 0;
        self.sum = 0;
    }

    /// Number of values counted.
    pub fn count(&self) -> u64 {
        self.total
    }

    /// True when nothing was counted.
    pub fn is_empty(&self) -> bool {
        self.total == 0
    }

    /// The smallest value (0 when empty).
    pub fn min(&self) -> u64 {
        if self.total == 0 {
            0
        } else {
            self.min
        }
    }

    /// The largest value (0 when empty).
    pub fn max(&self) -> u64 {
        self.max
    }

    /// The mean value (0 when empty).
    pub fn mean(&self) -> f64 {
        if self.total == 0 {
            0.0
        } else {
            self.sum as f64 / self.total as f64
        }
    }

    /// The value below or at which `p` percent of the values fall (nearest-rank), reported
    /// as its bucket's upper bound but never above the largest value seen; 0 when empty.
    pub fn percentile(&self, p: f64) -> u64 {
        if self.total == 0 {
            return 0;
        }
        if p <= 0.0 {
            return self.min;
        }
        let rank = ((p / 100.0) * self.total as f64).ceil() as u64;
        let rank = rank.clamp(1, self.total);
        let mut seen = 0u64;
        for (i, &c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return upper(i).min(self.max).max(self.min);
            }
        }
        self.max
    }

    /// The usual summary, in microseconds.
    pub fn summary_us(&self) -> LatencySummary {
        let us = |ns: u64| ns as f64 / 1000.0;
        LatencySummary {
            count: self.total,
            min_us: us(self.min()),
            mean_us: self.mean() / 1000.0,
            p50_us: us(self.percentile(50.0)),
            p95_us: us(self.percentile(95.0)),
            p99_us: us(self.percentile(99.0)),
            max_us: us(self.max()),
        }
    }
}

/// Latency percentiles of a run, in microseconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct LatencySummary {
    /// Samples counted.
    pub count: u64,
    /// Smallest latency.
    pub min_us: f64,
    /// Mean latency.
    pub mean_us: f64,
    /// Median.
    pub p50_us: f64,
    /// 95th percentile.
    pub p95_us: f64,
    /// 99th percentile.
    pub p99_us: f64,
    /// Largest latency.
    pub max_us: f64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_contiguous_and_cover_u64() {
        let mut last = 0usize;
        for v in [0u64, 1, 127, 128, 129, 255, 256, 1000, 1 << 40, u64::MAX] {
            let i = index(v);
            assert!(i >= last, "index must grow with the value");
            assert!(i < BUCKETS);
            assert!(upper(i) >= v, "bucket {i} upper {} below {v}", upper(i));
            last = i;
        }
        assert_eq!(index(u64::MAX), BUCKETS - 1);
        assert_eq!(upper(BUCKETS - 1), u64::MAX);
        // Each bucket starts right after the previous one ends.
        for i in 1..BUCKETS {
            assert_eq!(index(upper(i - 1) + 1), i, "gap after bucket {}", i - 1);
        }
    }

    #[test]
    fn small_values_are_exact() {
        let mut h = Histogram::new();
        for v in 1..=100 {
            h.record(v);
        }
        assert_eq!(h.count(), 100);
        assert_eq!(h.percentile(50.0), 50);
        assert_eq!(h.percentile(99.0), 99);
        assert_eq!(h.percentile(100.0), 100);
        assert_eq!(h.percentile(0.0), 1);
        assert_eq!(h.min(), 1);
        assert_eq!(h.max(), 100);
        assert!((h.mean() - 50.5).abs() < 1e-9);
    }

    #[test]
    fn large_values_stay_within_relative_error() {
        let mut h = Histogram::new();
        // 1..=10_000 microseconds, in nanoseconds.
        for us in 1..=10_000u64 {
            h.record(us * 1000);
        }
        for p in [50.0, 90.0, 95.0, 99.0, 99.9] {
            let exact = (p / 100.0 * 10_000.0_f64).ceil() * 1000.0;
            let got = h.percentile(p) as f64;
            assert!(got >= exact, "p{p}: {got} below exact {exact}");
            assert!(
                got <= exact * (1.0 + 1.0 / 64.0),
                "p{p}: {got} too far above {exact}"
            );
        }
        assert_eq!(h.percentile(100.0), 10_000_000);
    }

    #[test]
    fn merge_and_clear() {
        let mut a = Histogram::new();
        let mut b = Histogram::new();
        a.record(10);
        b.record(1_000_000);
        b.record(5);
        a.merge(&b);
        assert_eq!(a.count(), 3);
        assert_eq!(a.min(), 5);
        assert_eq!(a.max(), 1_000_000);
        assert_eq!(a.percentile(50.0), 10);
        a.clear();
        assert!(a.is_empty());
        assert_eq!(a.percentile(99.0), 0);
        assert_eq!(a.min(), 0);
        assert_eq!(a.max(), 0);
    }

    #[test]
    fn summary_is_in_microseconds() {
        let mut h = Histogram::new();
        h.record(2_000);
        h.record(4_000);
        let s = h.summary_us();
        assert_eq!(s.count, 2);
        assert_eq!(s.min_us, 2.0);
        assert_eq!(s.max_us, 4.0);
        assert_eq!(s.mean_us, 3.0);
        assert!(s.p50_us >= 2.0 && s.p50_us <= 2.0 * (1.0 + 1.0 / 64.0));
    }
}
