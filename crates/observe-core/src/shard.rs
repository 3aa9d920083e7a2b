//! Per-thread shards of every counter a request writes, so that recording a request takes no
//! lock-prefixed (read-modify-write) atomic instruction.
//!
//! A thread that records claims one of [`OWNED`] shard indexes for as long as it lives. Every
//! counter exists once per shard; only the thread holding an index writes that shard's copy,
//! with a plain load and store. Readers (`/metrics`) sum the copies. When all owned indexes are
//! taken, further threads share the last shard, [`SHARED`], with atomic additions.
//!
//! A thread releases its index when it exits (release ordering), and the next thread to claim
//! it acquires it, so it continues from the last values the previous owner wrote: nothing is
//! lost and every copy keeps a single writer.

use std::cell::Cell;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

/// Shard indexes threads can own; memory per series grows with the threads that record it, up
/// to this many plus the shared one.
pub(crate) const OWNED: usize = 16;
/// Copies of every counter: the owned shards and the shared one.
pub(crate) const SHARDS: usize = OWNED + 1;
/// The shard of threads that found no free index (or record while exiting).
pub(crate) const SHARED: usize = OWNED;

/// Which owned indexes are held by a live thread.
static CLAIMED: AtomicU32 = AtomicU32::new(0);

/// The shard index this thread writes to.
struct Claim(Cell<Option<usize>>);

impl Claim {
    fn index(&self) -> usize {
        if let Some(index) = self.0.get() {
            return index;
        }
        let index = claim();
        self.0.set(Some(index));
        index
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        if let Some(index) = self.0.get().filter(|&i| i != SHARED) {
            // Release: the next owner sees everything this thread wrote into the shard.
            CLAIMED.fetch_and(!(1 << index), Ordering::Release);
        }
    }
}

fn claim() -> usize {
    let mut claimed = CLAIMED.load(Ordering::Relaxed);
    loop {
        let free = !claimed & ((1u32 << OWNED) - 1);
        if free == 0 {
            return SHARED;
        }
        let index = free.trailing_zeros();
        match CLAIMED.compare_exchange_weak(
            claimed,
            claimed | (1 << index),
            Ordering::Acquire,
            Ordering::Relaxed,
        ) {
            Ok(_) => return index as usize,
            Err(now) => claimed = now,
        }
    }
}

thread_local! {
    static SHARD: Claim = const { Claim(Cell::new(None)) };
}

/// This thread's shard: where its writes go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Shard(usize);

impl Shard {
    /// The shard of threads without one of their own.
    #[cfg(test)]
    pub(crate) const SHARED: Shard = Shard(SHARED);

    /// The calling thread's shard, claimed on its first request.
    #[inline]
    pub(crate) fn current() -> Shard {
        // During thread exit, after the claim is gone, the shared shard is always correct.
        Shard(SHARD.try_with(Claim::index).unwrap_or(SHARED))
    }

    /// The index of this shard's copy of a counter.
    #[inline]
    pub(crate) fn index(self) -> usize {
        self.0
    }

    /// Adds `n` to this shard's copy of a counter.
    #[inline]
    pub(crate) fn add(self, cell: &AtomicU64, n: u64) {
        self.add_ordered(cell, n, Ordering::Relaxed);
    }

    /// [`add`](Self::add) with `order` for the write: `Release` publishes everything this
    /// thread did before (a request's start, wherever it was counted) to a reader that loads
    /// the cell with `Acquire`.
    #[inline]
    pub(crate) fn add_ordered(self, cell: &AtomicU64, n: u64, order: Ordering) {
        if self.0 == SHARED {
            cell.fetch_add(n, order);
        } else {
            // The only writer of this copy: no read-modify-write instruction needed.
            cell.store(cell.load(Ordering::Relaxed).wrapping_add(n), order);
        }
    }

    /// Adds `x` (finite, not negative) to this shard's copy of a float held as its bits. A float
    /// sum only grows; an integer one would wrap.
    #[inline]
    pub(crate) fn add_f64(self, cell: &AtomicU64, x: f64) {
        let plus = |bits: u64| (f64::from_bits(bits) + x).to_bits();
        if self.0 == SHARED {
            let _ = cell.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |bits| {
                Some(plus(bits))
            });
        } else {
            cell.store(plus(cell.load(Ordering::Relaxed)), Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One test, so that no other test of this module holds indexes meanwhile.
    #[test]
    fn threads_own_distinct_indexes_give_them_back_and_overflow_to_the_shared_shard() {
        let here = Shard::current();
        assert_ne!(here, std::thread::spawn(Shard::current).join().unwrap());
        // Exited threads release their index: many threads in turn never run out.
        for _ in 0..10 * OWNED {
            let shard = std::thread::spawn(Shard::current).join().unwrap();
            assert_ne!(shard.index(), SHARED);
        }
        // More threads alive at once than owned indexes: the rest share one, losing nothing.
        let cell = std::sync::Arc::new(AtomicU64::new(0));
        let barrier = std::sync::Arc::new(std::sync::Barrier::new(OWNED + 4));
        let threads: Vec<_> = (0..OWNED + 4)
            .map(|_| {
                let (cell, barrier) = (cell.clone(), barrier.clone());
                std::thread::spawn(move || {
                    let shard = Shard::current();
                    barrier.wait();
                    if shard.index() == SHARED {
                        for _ in 0..10_000 {
                            shard.add(&cell, 1);
                        }
                    }
                    shard
                })
            })
            .collect();
        let shards: Vec<Shard> = threads.into_iter().map(|t| t.join().unwrap()).collect();
        let shared = shards.iter().filter(|s| s.index() == SHARED).count();
        assert!(shared >= 4, "{shared} threads on the shared shard");
        assert_eq!(cell.load(Ordering::Relaxed), shared as u64 * 10_000);
    }
}
