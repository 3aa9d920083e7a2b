use std::sync::atomic::{AtomicU64, Ordering};

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

    /// Index of the bucket a value falls in; `len()` is the implicit `+Inf` bucket.
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

    pub(crate) fn len(&self) -> usize {
        self.upper.len()
    }
}

/// A histogram that costs two relaxed atomic additions per observation.
///
/// Buckets are stored non-cumulatively; the count is the sum of the buckets, so count and
/// buckets are always consistent in an exposition. The sum may lag by observations in flight.
#[derive(Debug)]
pub(crate) struct AtomicHistogram {
    buckets: Box<[AtomicU64]>,
    sum: AtomicU64,
}

/// A consistent-enough copy of an [`AtomicHistogram`], cumulative like the exposition.
pub(crate) struct HistogramSnapshot {
    pub(crate) cumulative: Vec<u64>,
    pub(crate) count: u64,
    pub(crate) sum: u64,
}

impl AtomicHistogram {
    pub(crate) fn new(bounds: &Bounds) -> Self {
        AtomicHistogram {
            buckets: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum: AtomicU64::new(0),
        }
    }

    #[inline]
    pub(crate) fn observe(&self, bounds: &Bounds, value: u64) {
        self.buckets[bounds.bucket_of(value)].fetch_add(1, Ordering::Relaxed);
        self.sum.fetch_add(value, Ordering::Relaxed);
    }

    pub(crate) fn snapshot(&self) -> HistogramSnapshot {
        let mut running = 0u64;
        let cumulative: Vec<u64> = self
            .buckets
            .iter()
            .map(|b| {
                running += b.load(Ordering::Relaxed);
                running
            })
            .collect();
        HistogramSnapshot {
            count: running,
            cumulative,
            sum: self.sum.load(Ordering::Relaxed),
        }
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
    fn snapshot_is_cumulative_and_counts_every_observation() {
        let bounds = Bounds::new(&[10.0, 100.0], 1.0);
        let h = AtomicHistogram::new(&bounds);
        for v in [1, 10, 50, 500, 5000] {
            h.observe(&bounds, v);
        }
        let s = h.snapshot();
        assert_eq!(s.cumulative, vec![2, 3, 5]);
        assert_eq!(s.count, 5);
        assert_eq!(s.sum, 5561);
    }
}
