//! Native (exponential) histograms of request durations, as Prometheus and Go's client define
//! them: at schema `s`, bucket `i` holds durations in `(2^((i-1)/2^s), 2^(i/2^s)]` seconds, so
//! every bucket is the same factor wider than the one before, whatever the latency, and no
//! bucket layout has to be guessed.
//!
//! Each shard of a series keeps its own counts (one writer, no lock-prefixed instruction, as
//! the classic buckets), in chunks of [`CHUNK`] buckets allocated the first time a duration
//! lands in them: memory follows the spread of the latencies, not the range of the schema.
//! When more than the configured maximum of buckets are populated, the exposition halves the
//! resolution (schema − 1, merging pairs of buckets) until they fit, as Go's client does.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

use crate::exposition::model::NativeBuckets;
use crate::shard::Shard;

/// Buckets a chunk holds.
const CHUNK: usize = 32;
/// The bits of 0.5 as an `f64`: the exponent under which a mantissa is a fraction in [0.5, 1).
const HALF_BITS: u64 = 1022 << 52;

/// The default bucket factor: each bucket 1.1 times as wide as the one before at most, which
/// is schema 3 (a factor of 2^(1/8) ≈ 1.09), as Go's client.
pub const DEFAULT_NATIVE_BUCKET_FACTOR: f64 = 1.1;
/// The default cap on populated buckets of one native histogram, as Go's client suggests.
pub const DEFAULT_NATIVE_MAX_BUCKETS: usize = 160;
/// The default zero threshold: durations at most this long (seconds) count in the zero
/// bucket. Go's client default (2^-128): only a zero duration.
pub const DEFAULT_NATIVE_ZERO_THRESHOLD: f64 = 2.938_735_877_055_719e-39;

/// How a service's native histograms are laid out.
#[derive(Debug, Clone)]
pub(crate) struct NativeLayout {
    schema: i32,
    zero_threshold: f64,
    max_buckets: usize,
    /// For schema > 0: the 2^schema fractions of a power of two where buckets end.
    bounds: Box<[f64]>,
    /// Durations (ns) at most this long are in the zero bucket.
    zero_nanos: u64,
    /// The last nanosecond of each bucket from `min_key` on (`upper_nanos[k - min_key]`).
    upper_nanos: Box<[u64]>,
    /// A duration's bucket without floating point: the index of its highest set bit and the
    /// [`slice_bits`](Self::slice_bits) bits after it pick a slice of the integers, narrower
    /// than any bucket, so at most one bucket bound lies inside; this is the bucket of the
    /// slice's first integer, and one comparison with `upper_nanos` finishes it.
    slice_key: Box<[i32]>,
    slice_bits: u32,
    /// The lowest key a duration of 1 ns or more can have; keys start there in the chunks.
    min_key: i32,
    /// Chunks that cover every key from `min_key` to that of the longest duration (`u64`
    /// nanoseconds).
    chunks: usize,
}

/// The schema whose factor between buckets is at most `factor`, in Prometheus' range
/// (-4 to 8), as Go's client picks it.
pub(crate) fn schema_for(factor: f64) -> i32 {
    if factor.is_nan() || factor <= 1.0 || factor.is_infinite() {
        return 8;
    }
    let schema = -(factor.log2().log2().floor()) as i32;
    schema.clamp(-4, 8)
}

impl NativeLayout {
    pub(crate) fn new(factor: f64, zero_threshold: f64, max_buckets: usize) -> Self {
        let schema = schema_for(factor);
        let bounds = if schema > 0 {
            let n = 1usize << schema;
            (0..n)
                .map(|i| 0.5 * 2f64.powf(i as f64 / n as f64))
                .collect()
        } else {
            Box::default()
        };
        let zero_nanos = (zero_threshold * 1e9).floor().min(u64::MAX as f64) as u64;
        let mut layout = NativeLayout {
            schema,
            zero_threshold,
            max_buckets: max_buckets.max(1),
            bounds,
            zero_nanos,
            upper_nanos: Box::default(),
            slice_key: Box::default(),
            // Slices 2^-(schema + 2) of a power of two wide: narrower than a bucket (a factor of
            // 2^(2^-schema) ≥ 1 + 0.69 / 2^schema).
            slice_bits: (schema.max(0) + 2) as u32,
            min_key: 0,
            chunks: 0,
        };
        let lowest =
            layout.key((zero_nanos.saturating_add(1) as f64 * 1e-9).max(f64::MIN_POSITIVE));
        let highest = layout.key(u64::MAX as f64 * 1e-9) + 1;
        layout.min_key = lowest;
        layout.chunks = ((highest - lowest) as usize) / CHUNK + 1;
        // The last nanosecond of each bucket: floor(1e9 · 2^(k / 2^schema)).
        layout.upper_nanos = (lowest..=highest + 1)
            .map(|k| {
                let upper = 1e9 * 2f64.powf(k as f64 / 2f64.powi(schema));
                upper.floor().clamp(0.0, u64::MAX as f64) as u64
            })
            .collect();
        let per_power = 1usize << layout.slice_bits;
        layout.slice_key = (0..64 * per_power)
            .map(|cell| {
                let (power, slice) = ((cell / per_power) as u32, (cell % per_power) as u128);
                // The slice's first integer.
                let first = (1u128 << power) + ((slice << power) >> layout.slice_bits);
                let first = first.min(u64::MAX as u128) as u64;
                let at = layout.upper_nanos.partition_point(|&u| u < first);
                layout.min_key + at as i32
            })
            .collect();
        layout
    }

    /// The bucket of a duration of `nanos` (more than `zero_nanos`): the first whose last
    /// nanosecond is not before it.
    #[inline]
    fn key_of_nanos(&self, nanos: u64) -> i32 {
        let zeros = nanos.leading_zeros();
        let power = 63 - zeros as usize;
        // The bits after the highest one (two shifts: one of 64 would overflow).
        let slice = ((nanos << zeros) << 1) >> (64 - self.slice_bits);
        let cell = (power << self.slice_bits) | slice as usize;
        let key = self.slice_key.get(cell).copied().unwrap_or(self.min_key);
        let upper = self.upper_nanos.get((key - self.min_key) as usize);
        key + upper.is_some_and(|&u| nanos > u) as i32
    }

    /// The bucket of `seconds` (> 0), as Go's client computes it (a search of the fraction of
    /// its power of two among the bounds): how the tables are built, and the reference the
    /// tests hold [`key_of_nanos`](Self::key_of_nanos) to.
    fn key(&self, seconds: f64) -> i32 {
        let bits = seconds.to_bits();
        let exp = ((bits >> 52) & 0x7ff) as i32 - 1022;
        let frac = f64::from_bits((bits & ((1 << 52) - 1)) | HALF_BITS);
        if self.schema > 0 {
            let below = self.bounds.partition_point(|&b| b < frac) as i32;
            below + (exp - 1) * (1 << self.schema)
        } else {
            let key = if frac == 0.5 { exp - 1 } else { exp };
            let offset = (1 << -self.schema) - 1;
            (key + offset) >> -self.schema
        }
    }

    /// Cells for one shard of one series.
    pub(crate) fn cells(&self) -> NativeCells {
        NativeCells {
            zero: AtomicU64::new(0),
            chunks: (0..self.chunks).map(|_| OnceLock::new()).collect(),
        }
    }

    /// Counts a duration of `nanos` into `cells`, `shard`'s copy.
    #[inline]
    pub(crate) fn observe(&self, cells: &NativeCells, shard: Shard, nanos: u64) {
        if nanos <= self.zero_nanos {
            shard.add(&cells.zero, 1);
            return;
        }
        let at = (self.key_of_nanos(nanos) - self.min_key).max(0) as usize;
        if let Some(chunk) = cells.chunks.get(at / CHUNK) {
            let chunk = chunk.get_or_init(|| Box::new([const { AtomicU64::new(0) }; CHUNK]));
            shard.add(&chunk[at % CHUNK], 1);
        }
    }

    /// The buckets summed over `shards`, at most `max_buckets` of them.
    pub(crate) fn snapshot<'a>(
        &self,
        shards: impl Iterator<Item = &'a NativeCells>,
    ) -> NativeBuckets {
        let mut zero = 0u64;
        // Only the chunks some shard has: a fine schema has thousands, a series uses a few.
        let mut sums: Vec<(usize, [u64; CHUNK])> = Vec::new();
        for cells in shards {
            zero += cells.zero.load(Ordering::Relaxed);
            for (c, chunk) in cells.chunks.iter().enumerate() {
                if let Some(chunk) = chunk.get() {
                    let at = match sums.binary_search_by_key(&c, |&(c, _)| c) {
                        Ok(at) => at,
                        Err(at) => {
                            sums.insert(at, (c, [0; CHUNK]));
                            at
                        }
                    };
                    for (sum, cell) in sums[at].1.iter_mut().zip(chunk.iter()) {
                        *sum += cell.load(Ordering::Relaxed);
                    }
                }
            }
        }
        let mut positive: Vec<(i32, u64)> = sums
            .iter()
            .flat_map(|(c, counts)| {
                counts
                    .iter()
                    .enumerate()
                    .map(move |(i, &n)| (c * CHUNK + i, n))
            })
            .filter(|&(_, n)| n > 0)
            .map(|(at, n)| (at as i32 + self.min_key, n))
            .collect();
        let mut schema = self.schema;
        while positive.len() > self.max_buckets && schema > -4 {
            positive = halve(&positive);
            schema -= 1;
        }
        NativeBuckets {
            schema,
            zero_threshold: self.zero_threshold,
            zero_count: zero,
            positive,
        }
    }
}

/// The same counts at half the resolution: bucket `i` of schema `s` lies in bucket
/// `ceil(i / 2)` of schema `s - 1`.
fn halve(buckets: &[(i32, u64)]) -> Vec<(i32, u64)> {
    let mut out: Vec<(i32, u64)> = Vec::with_capacity(buckets.len() / 2 + 1);
    for &(key, n) in buckets {
        let key = (key + 1) >> 1;
        match out.last_mut() {
            Some((last, total)) if *last == key => *total += n,
            _ => out.push((key, n)),
        }
    }
    out
}

/// One shard's native buckets of one series.
#[derive(Debug)]
pub(crate) struct NativeCells {
    zero: AtomicU64,
    chunks: Box<[OnceLock<Box<[AtomicU64; CHUNK]>>]>,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The upper bound of bucket `key` at `schema`.
    fn upper(schema: i32, key: i32) -> f64 {
        2f64.powf(key as f64 / 2f64.powi(schema))
    }

    #[test]
    fn the_integer_bucket_is_the_one_whose_bounds_hold_the_duration() {
        for factor in [1.003, 1.01, 1.1, 1.5, 2.0, 4.0, 300.0] {
            let layout = NativeLayout::new(factor, DEFAULT_NATIVE_ZERO_THRESHOLD, 160);
            let s = layout.schema;
            let mut checked = 0;
            let mut n = 1u64;
            while n < u64::MAX / 2 {
                for x in [n - 1, n, n + 1].into_iter().filter(|&x| x > 0) {
                    let key = layout.key_of_nanos(x);
                    // In exact terms: 1e9 · 2^((key-1)/2^s) < x ≤ 1e9 · 2^(key/2^s).
                    let (low, high) = (1e9 * upper(s, key - 1), 1e9 * upper(s, key));
                    assert!(
                        low.floor() < x as f64 && x as f64 <= high.floor() + 1.0,
                        "schema {s}: {x} ns in bucket {key} ({low}, {high}]"
                    );
                    // And Go's floating-point computation agrees away from a bound.
                    let seconds = x as f64 * 1e-9;
                    if (seconds / upper(s, key)).ln().abs() > 1e-9 {
                        assert_eq!(key, layout.key(seconds), "schema {s}: {x} ns");
                    }
                    checked += 1;
                }
                n = n + n / 97 + 1;
            }
            // Exactly on each bucket's last nanosecond, and just past it: the first bucket
            // whose last nanosecond is not before (buckets narrower than 1 ns hold none).
            let first_holding =
                |x: u64| layout.min_key + layout.upper_nanos.partition_point(|&u| u < x) as i32;
            for &last in layout
                .upper_nanos
                .iter()
                .take(3000)
                .filter(|&&u| u > 0 && u < u64::MAX)
            {
                assert_eq!(layout.key_of_nanos(last), first_holding(last));
                assert_eq!(layout.key_of_nanos(last + 1), first_holding(last + 1));
            }
            assert!(checked > 1000);
        }
    }

    /// A zero threshold beyond what a u64 of nanoseconds holds puts everything in the zero
    /// bucket (and builds a small table, without overflowing).
    #[test]
    fn a_zero_threshold_of_centuries_holds_everything() {
        let layout = NativeLayout::new(1.003, 1e12, 160);
        assert!(layout.chunks <= 2, "{} chunks", layout.chunks);
        let cells = layout.cells();
        layout.observe(&cells, Shard::current(), u64::MAX);
        let buckets = layout.snapshot(std::iter::once(&cells));
        assert_eq!((buckets.zero_count, buckets.positive.len()), (1, 0));
    }

    #[test]
    fn schemas_follow_the_factor_as_in_go() {
        assert_eq!(schema_for(1.1), 3);
        assert_eq!(schema_for(2.0), 0);
        assert_eq!(schema_for(1.0001), 8);
        assert_eq!(schema_for(65536.0), -4);
        assert_eq!(schema_for(1e300), -4);
        assert_eq!(schema_for(f64::NAN), 8);
        assert_eq!(schema_for(0.5), 8);
    }

    #[test]
    fn every_value_lands_in_the_bucket_whose_bounds_hold_it() {
        for schema_factor in [1.1, 1.5, 2.0, 4.0, 300.0, 1.003] {
            let layout = NativeLayout::new(schema_factor, DEFAULT_NATIVE_ZERO_THRESHOLD, 160);
            let s = layout.schema;
            for v in [
                1e-9, 3.3e-7, 0.001, 0.2, 0.25, 0.5, 1.0, 1.5, 2.0, 10.0, 3600.0, 1.8e10,
            ] {
                let key = layout.key(v);
                assert!(
                    upper(s, key - 1) < v * (1.0 + 1e-12) && v <= upper(s, key) * (1.0 + 1e-12),
                    "schema {s}: {v} in bucket {key} ({}, {}]",
                    upper(s, key - 1),
                    upper(s, key)
                );
            }
            // Powers of two are upper bounds: 1 s is the top of bucket 0.
            assert_eq!(layout.key(1.0), 0);
        }
    }

    #[test]
    fn observations_are_counted_and_resolution_drops_to_fit_the_cap() {
        let layout = NativeLayout::new(1.1, DEFAULT_NATIVE_ZERO_THRESHOLD, 160);
        let cells = layout.cells();
        let shard = Shard::current();
        // 0 ns, then 1 µs to ~1000 s in steps of 1 %: about 2,000 distinct durations.
        layout.observe(&cells, shard, 0);
        let mut v = 1_000.0f64;
        let mut n = 1u64;
        while v < 1e12 {
            layout.observe(&cells, shard, v as u64);
            v *= 1.01;
            n += 1;
        }
        let wide = NativeLayout::new(1.1, DEFAULT_NATIVE_ZERO_THRESHOLD, 10_000);
        let full = {
            let cells2 = wide.cells();
            let mut v = 1_000.0f64;
            while v < 1e12 {
                wide.observe(&cells2, shard, v as u64);
                v *= 1.01;
            }
            wide.snapshot([&cells2].into_iter())
        };
        assert_eq!(full.schema, 3);
        assert!(full.positive.len() > 160, "{}", full.positive.len());
        let capped = layout.snapshot([&cells].into_iter());
        assert_eq!(capped.zero_count, 1);
        assert!(capped.positive.len() <= 160);
        assert!(capped.schema < 3, "{}", capped.schema);
        let total: u64 = capped.positive.iter().map(|&(_, n)| n).sum::<u64>() + capped.zero_count;
        assert_eq!(total, n);
        // Halving merges each bucket into the one that holds its range.
        assert_eq!(
            halve(&[(-2, 1), (-1, 1), (0, 1), (1, 1), (2, 1), (3, 1)]),
            vec![(-1, 1), (0, 2), (1, 2), (2, 1)]
        );
    }
}
