//! Exemplars: per bucket of a series' duration histogram, the trace of one recent request
//! that landed in it.
//!
//! One cell per bucket, a sequence lock over plain atomics: a writer claims the cell with one
//! compare-and-swap (a writer that loses simply drops its exemplar: the cell is being refreshed
//! anyway), readers retry. The newest request wins, but a cell is rewritten at most once per
//! minimum interval ([`DEFAULT_EXEMPLAR_INTERVAL`]), so a hot bucket's cache line is not passed
//! between every worker at every request. Requests without a trace never reach this code.

use std::sync::atomic::{fence, AtomicU64, Ordering};
use std::sync::LazyLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use quanta::Instant;

use crate::trace::TraceContext;

/// The default minimum time between two replacements of one bucket's exemplar.
pub const DEFAULT_EXEMPLAR_INTERVAL: Duration = Duration::from_millis(100);

/// One bucket's exemplar.
#[derive(Debug, Default)]
pub(crate) struct ExemplarCell {
    /// Odd while a writer is in the cell.
    seq: AtomicU64,
    /// Trace id (two words), span id.
    ids: [AtomicU64; 3],
    /// The observed duration, nanoseconds.
    nanos: AtomicU64,
    /// When, in nanoseconds since [`EPOCH`]'s instant; 0 for never.
    at: AtomicU64,
}

/// An exemplar read back.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Recorded {
    pub(crate) trace: TraceContext,
    pub(crate) nanos: u64,
    /// Seconds since the Unix epoch.
    pub(crate) timestamp: f64,
}

/// A process-wide pair of clocks: exemplar times are taken from the cheap monotonic clock the
/// record already reads and turned into wall-clock time only when exposed.
static EPOCH: LazyLock<(Instant, f64)> = LazyLock::new(|| {
    let wall = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    (Instant::now(), wall)
});

/// Sets the clock pair exemplar times count from, if it is not set yet.
pub(crate) fn start_clock() {
    LazyLock::force(&EPOCH);
}

/// `now` as exemplar cells store it (never 0).
#[inline]
pub(crate) fn stamp(now: Instant) -> u64 {
    (now.saturating_duration_since(EPOCH.0).as_nanos() as u64).max(1)
}

impl ExemplarCell {
    /// Keeps `trace` with its duration unless the cell was written less than `interval_nanos`
    /// before `at` (a [`stamp`]) or another writer holds it.
    #[inline]
    pub(crate) fn offer(&self, trace: &TraceContext, nanos: u64, at: u64, interval_nanos: u64) {
        let seq = self.seq.load(Ordering::Acquire);
        let last = self.at.load(Ordering::Relaxed);
        if seq & 1 == 1 || (last != 0 && at.saturating_sub(last) < interval_nanos) {
            return;
        }
        if self
            .seq
            .compare_exchange(seq, seq + 1, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            return;
        }
        // The odd count is visible before any of the stores below: a reader that sees one of
        // them also sees the count change (without this a torn exemplar could pass its check
        // on a weakly ordered CPU).
        fence(Ordering::Release);
        for (cell, word) in self.ids.iter().zip(trace.words()) {
            cell.store(word, Ordering::Relaxed);
        }
        self.nanos.store(nanos, Ordering::Relaxed);
        self.at.store(at, Ordering::Relaxed);
        self.seq.store(seq + 2, Ordering::Release);
    }

    /// The exemplar, if one was ever written.
    pub(crate) fn read(&self) -> Option<Recorded> {
        for _ in 0..64 {
            let before = self.seq.load(Ordering::Acquire);
            if before & 1 == 1 {
                std::hint::spin_loop();
                continue;
            }
            let ids = [0, 1, 2].map(|i| self.ids[i].load(Ordering::Relaxed));
            let nanos = self.nanos.load(Ordering::Relaxed);
            let at = self.at.load(Ordering::Relaxed);
            fence(Ordering::Acquire);
            if self.seq.load(Ordering::Relaxed) != before {
                continue;
            }
            if at == 0 {
                return None;
            }
            return Some(Recorded {
                trace: TraceContext::from_words(ids)?,
                nanos,
                timestamp: EPOCH.1 + at as f64 * 1e-9,
            });
        }
        // Written over and over while we read: skip it this scrape.
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trace(n: u8) -> TraceContext {
        TraceContext::new([n; 16], [n; 8]).unwrap()
    }

    #[test]
    fn the_newest_wins_unless_within_the_interval() {
        let cell = ExemplarCell::default();
        assert_eq!(cell.read(), None);
        // The first is always kept, however early.
        cell.offer(&trace(9), 10, 1, 100);
        assert_eq!(cell.read().unwrap().trace, trace(9));
        cell.offer(&trace(1), 10, 1_000, 100);
        cell.offer(&trace(2), 20, 1_050, 100); // 50 ns later: too soon
        assert_eq!(cell.read().unwrap().trace, trace(1));
        cell.offer(&trace(3), 30, 1_100, 100);
        let read = cell.read().unwrap();
        assert_eq!((read.trace, read.nanos), (trace(3), 30));
    }

    #[test]
    fn concurrent_writers_never_tear_an_exemplar() {
        let cell = std::sync::Arc::new(ExemplarCell::default());
        let writers: Vec<_> = (1..=2u8)
            .map(|n| {
                let cell = cell.clone();
                std::thread::spawn(move || {
                    for i in 0..200_000u64 {
                        cell.offer(&trace(n), n as u64, i + 1, 0);
                    }
                })
            })
            .collect();
        let mut seen = 0;
        while !writers.iter().all(|w| w.is_finished()) {
            if let Some(r) = cell.read() {
                // Ids and value always come from the same write.
                let n = r.nanos as u8;
                assert_eq!(r.trace, trace(n));
                seen += 1;
            }
        }
        for w in writers {
            w.join().unwrap();
        }
        assert!(seen > 0);
    }
}
