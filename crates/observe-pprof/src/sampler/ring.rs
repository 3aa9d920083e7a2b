//! Where the signal handler leaves its samples: a fixed set of slots, written without a lock
//! or an allocation (a handler may interrupt any code, the allocator included) and drained by
//! the sampler's thread. Safe code only: every field is an atomic.

use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, AtomicUsize, Ordering};

use observe_core::adapter::RequestLabels;

/// Frames kept of each stack, innermost first (Go keeps 128 too). The examples' deepest
/// stacks measured 96 frames in a debug build and 33 in release (`docs/performance.md`). A
/// deeper stack keeps its [`INNER`] innermost frames, then [`TRUNCATED`], then its outermost
/// frames, so that its samples stay under the same root as the request's others.
pub(crate) const MAX_DEPTH: usize = 128;

/// The innermost frames a truncated stack keeps (where the time is spent).
pub(crate) const INNER: usize = 64;

/// The frame that stands for the frames a truncated stack left out: never a code address.
pub(crate) const TRUNCATED: usize = usize::MAX;

/// Samples that fit between two drains. The sampler drains every [`DRAIN_EVERY`]
/// (`super::DRAIN_EVERY`): at 1,000 Hz on 16 busy cores that is 320 samples.
pub(crate) const SLOTS: usize = 512;

const EMPTY: u8 = 0;
const WRITING: u8 = 1;
const FULL: u8 = 2;

/// One stack, innermost frame first, how many sampling periods it stands for, and the labels
/// of the request it was taken for (all zeros: none).
struct Slot {
    state: AtomicU8,
    depth: AtomicUsize,
    weight: AtomicU32,
    labels: [AtomicU64; 5],
    frames: [AtomicUsize; MAX_DEPTH],
}

/// The slots, and what could not be kept. 512 slots of 128 frames: 524 KiB, allocated when
/// sampling starts and freed when it stops.
pub(crate) struct Ring {
    slots: Box<[Slot]>,
    next: AtomicUsize,
    /// Sampling periods not kept: their slot was still full (the drain fell behind), or the
    /// signal carried no interrupted context. A profile counts them under one "lost" frame.
    pub(crate) dropped: AtomicU64,
}

impl Ring {
    pub(crate) fn new() -> Self {
        let slots = (0..SLOTS)
            .map(|_| Slot {
                state: AtomicU8::new(EMPTY),
                depth: AtomicUsize::new(0),
                weight: AtomicU32::new(0),
                labels: [const { AtomicU64::new(0) }; 5],
                frames: [const { AtomicUsize::new(0) }; MAX_DEPTH],
            })
            .collect();
        Ring {
            slots,
            next: AtomicUsize::new(0),
            dropped: AtomicU64::new(0),
        }
    }

    /// Keeps one stack that stands for `weight` sampling periods. Async-signal-safe: atomics
    /// only, never waits.
    pub(crate) fn push(&self, frames: &[usize], weight: u32, labels: Option<RequestLabels>) {
        let slot = &self.slots[self.next.fetch_add(1, Ordering::Relaxed) % SLOTS];
        if slot
            .state
            .compare_exchange(EMPTY, WRITING, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            self.dropped.fetch_add(u64::from(weight), Ordering::Relaxed);
            return;
        }
        slot.weight.store(weight, Ordering::Relaxed);
        let words = labels.map_or([0; 5], |l| l.to_words());
        for (cell, word) in slot.labels.iter().zip(words) {
            cell.store(word, Ordering::Relaxed);
        }
        let depth = frames.len().min(MAX_DEPTH);
        for (cell, &ip) in slot.frames.iter().zip(&frames[..depth]) {
            cell.store(ip, Ordering::Relaxed);
        }
        slot.depth.store(depth, Ordering::Relaxed);
        slot.state.store(FULL, Ordering::Release);
    }

    /// Hands every complete stack and its weight to `each` and frees its slot. A slot being
    /// written is left for the next drain.
    pub(crate) fn drain(&self, mut each: impl FnMut(&[usize], u32, Option<RequestLabels>)) {
        let mut stack = [0usize; MAX_DEPTH];
        for slot in self.slots.iter() {
            if slot.state.load(Ordering::Acquire) != FULL {
                continue;
            }
            let depth = slot.depth.load(Ordering::Relaxed);
            let weight = slot.weight.load(Ordering::Relaxed);
            let labels = RequestLabels::from_words(
                slot.labels.each_ref().map(|w| w.load(Ordering::Relaxed)),
            );
            for (ip, cell) in stack.iter_mut().zip(&slot.frames[..depth]) {
                *ip = cell.load(Ordering::Relaxed);
            }
            slot.state.store(EMPTY, Ordering::Release);
            each(&stack[..depth], weight, labels);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stacks_pushed_are_drained_once_and_a_full_ring_drops_and_counts() {
        let ring = Ring::new();
        ring.push(&[1, 2, 3], 1, None);
        ring.push(&(0..200).collect::<Vec<_>>(), 3, None);
        let mut seen = Vec::new();
        ring.drain(|s, w, _| seen.push((s.to_vec(), w)));
        assert_eq!(seen.len(), 2);
        assert_eq!(seen[0], (vec![1, 2, 3], 1));
        assert_eq!(
            (seen[1].0.len(), seen[1].1),
            (MAX_DEPTH, 3),
            "the ring keeps at most MAX_DEPTH frames"
        );
        ring.drain(|_, _, _| panic!("drained twice"));
        for i in 0..SLOTS + 10 {
            ring.push(&[i], 2, None);
        }
        assert_eq!(
            ring.dropped.load(Ordering::Relaxed),
            20,
            "10 samples of weight 2"
        );
        let mut n = 0;
        ring.drain(|_, _, _| n += 1);
        assert_eq!(n, SLOTS);
    }

    #[test]
    fn concurrent_pushes_lose_nothing_while_the_ring_keeps_up() {
        let ring = std::sync::Arc::new(Ring::new());
        let writers: Vec<_> = (0..4)
            .map(|t| {
                let ring = ring.clone();
                std::thread::spawn(move || {
                    for i in 0..100 {
                        ring.push(&[t, i], 1, None);
                    }
                })
            })
            .collect();
        for w in writers {
            w.join().unwrap();
        }
        let mut n = 0;
        ring.drain(|s, _, _| {
            assert_eq!(s.len(), 2);
            n += 1;
        });
        assert_eq!(n, 400);
    }
}
