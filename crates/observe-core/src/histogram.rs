use std::sync::atomic::{AtomicU64, Ordering};

use crate::shard::Shard;

/// Upper bounds of a histogram, kept both in the integer unit we count in (nanoseconds, bytes)
/// and in the unit we expose (seconds, bytes).
#[derive(Debug, Clone)]
pub(crate) struct Bounds {
    /// Inclusive upper bounds in counting units, strictly increasing.
    upper: Box<[u64]>,
    /// The same bounds as exposed in `le`.
    exposed: Box<[f64]>,
    /// Counting units per exposed unit (1e9 for nanoseconds per second).
    pub(crate) units_per_exposed: f64,
}

impl Bounds {
    /// `exposed` must already be validated (finite, positive, strictly increasing).
    pub(crate) fn new(exposed: &[f64], units_per_exposed: f64) -> Self {
        let upper = exposed
            .iter()
            .map(|b| (b * units_per_exposed).round() as u64)
            .collect();
        Bounds {
            upper,
            exposed: exposed.into(),
            units_per_exposed,
        }
    }

    /// Index of the bucket a value falls in; one past the last bound is `+Inf`.
    #[inline]
    pub(crate) fn bucket_of(&self, value: u64) -> usize {
        // A handful of bounds: a linear scan beats a binary search here.
        self.upper
            .iter()
            .position(|&b| value <= b)
            .unwrap_or(self.upper.len())
    }

    pub(crate) fn exposed(&self) -> &[f64] {
        &self.exposed
    }

    /// Cells one histogram with these bounds takes: see [`Bounds::observe`].
    pub(crate) fn cells(&self) -> usize {
        self.upper.len() + 2
    }

    /// Records `value` into `cells`, one histogram's cells in `shard`'s copy: the buckets,
    /// stored non-cumulatively (the last is `+Inf`), then the sum, a float so that it never
    /// wraps (a `u64` of nanoseconds wraps after 584 years of requests in flight: 21 days at
    /// 10,000 concurrent streams). Two additions to the recording thread's own copy, no
    /// lock-prefixed instruction. The count is the sum of the buckets, so count and buckets are
    /// always consistent in an exposition; the sum may lag by observations in flight.
    /// Returns the bucket's index (one past the last bound for `+Inf`).
    #[inline]
    pub(crate) fn observe(&self, cells: &[AtomicU64], shard: Shard, value: u64) -> usize {
        let index = self.bucket_of(value);
        if let [buckets @ .., sum] = cells {
            if let Some(bucket) = buckets.get(index) {
                shard.add(bucket, 1);
            }
            shard.add_f64(sum, value as f64);
        }
        index
    }
}

/// One histogram summed over shards, cumulative like the exposition.
#[derive(Debug, Default)]
pub(crate) struct HistogramSnapshot {
    pub(crate) cumulative: Vec<u64>,
    pub(crate) count: u64,
    /// In counting units (nanoseconds, bytes).
    pub(crate) sum: f64,
}

impl HistogramSnapshot {
    /// Adds one shard's copy of a histogram's cells.
    pub(crate) fn add(&mut self, cells: &[AtomicU64]) {
        let [buckets @ .., sum] = cells else { return };
        if self.cumulative.len() < buckets.len() {
            self.cumulative.resize(buckets.len(), 0);
        }
        for (total, bucket) in self.cumulative.iter_mut().zip(buckets) {
            *total += bucket.load(Ordering::Relaxed);
        }
        // Shards in a fixed order: a sum of non-decreasing floats in a fixed order never
        // decreases either (rounding is monotonic).
        self.sum += f64::from_bits(sum.load(Ordering::Relaxed));
    }

    /// Turns the per-bucket totals into the exposition's cumulative counts and count.
    pub(crate) fn finish(mut self) -> Self {
        let mut running = 0u64;
        for total in &mut self.cumulative {
            running += *total;
            *total = running;
        }
        self.count = running;
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_land_in_the_first_bucket_whose_bound_they_do_not_exceed() {
        let bounds = Bounds::new(&[0.005, 0.01, 1.0], 1e9);
        assert_eq!(bounds.bucket_of(0), 0);
        assert_eq!(bounds.bucket_of(5_000_000), 0, "le is inclusive");
        assert_eq!(bounds.bucket_of(5_000_001), 1);
        assert_eq!(bounds.bucket_of(1_000_000_000), 2);
        assert_eq!(bounds.bucket_of(1_000_000_001), 3, "+Inf");
    }

    #[test]
    fn snapshot_sums_shards_is_cumulative_and_counts_every_observation() {
        let bounds = Bounds::new(&[10.0, 100.0], 1.0);
        let cells = || {
            (0..bounds.cells())
                .map(|_| AtomicU64::new(0))
                .collect::<Vec<_>>()
        };
        let (mine, shared) = (cells(), cells());
        for v in [1, 10, 50] {
            bounds.observe(&mine, Shard::current(), v);
        }
        for v in [500, 5000] {
            bounds.observe(&shared, Shard::SHARED, v);
        }
        let mut s = HistogramSnapshot::default();
        s.add(&mine);
        s.add(&shared);
        let s = s.finish();
        assert_eq!(s.cumulative, vec![2, 3, 5]);
        assert_eq!(s.count, 5);
        assert_eq!(s.sum, 5561.0);
    }

    #[test]
    fn a_sum_past_u64_keeps_growing() {
        let bounds = Bounds::new(&[1.0], 1e9);
        let cells: Vec<_> = (0..bounds.cells()).map(|_| AtomicU64::new(0)).collect();
        let mut last = 0.0;
        // 2^62 ns (146 years) at a time: four of them wrap a u64.
        for _ in 0..8 {
            bounds.observe(&cells, Shard::current(), 1 << 62);
            let mut s = HistogramSnapshot::default();
            s.add(&cells);
            assert!(s.sum > last, "{} after {last}", s.sum);
            last = s.sum;
        }
        assert_eq!(last, 8.0 * (1u64 << 62) as f64);
    }
}
