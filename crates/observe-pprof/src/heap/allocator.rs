//! [`ProfiledAllocator`]: any global allocator, with Go's heap sampling on top.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout};
use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use observe_core::adapter::{RequestLabels, WantLabels};

use super::table;
use crate::sampler::{unwind::unwind, MAX_DEPTH};

/// Go's default sampling rate (`runtime.MemProfileRate`): one sample per 512 KiB allocated,
/// on average.
pub const DEFAULT_HEAP_SAMPLE_BYTES: usize = 512 * 1024;

/// Wraps the process's global allocator (`System`, mimalloc, jemalloc, …) and samples its
/// allocations as Go does, for `/debug/pprof/heap` and `/debug/pprof/allocs`: after every
/// `sample_bytes` allocated on average (the gaps drawn at random, exponentially distributed,
/// per thread), one allocation's stack and request labels are kept until it is freed. In the
/// binary crate, one line:
///
/// ```ignore
/// #[global_allocator]
/// static ALLOCATOR: observe_pprof::ProfiledAllocator<std::alloc::System> =
///     observe_pprof::ProfiledAllocator::new(std::alloc::System);
/// ```
///
/// An allocation that is not sampled costs one thread-local subtraction and a free one
/// lock-free load (`docs/performance.md`); nothing is allocated for the sampler's own use
/// (its table is one fixed mapping, at most 3.9 MiB, its pages used as samples fill it), and
/// beyond its bounds samples are dropped and counted. It works in executables (whose
/// thread-locals are static); a shared library that installs it must be linked at start-up.
#[derive(Debug)]
pub struct ProfiledAllocator<A> {
    inner: A,
    sample_bytes: usize,
}

impl<A> ProfiledAllocator<A> {
    /// `inner`, sampled once per [`DEFAULT_HEAP_SAMPLE_BYTES`] (512 KiB) on average.
    pub const fn new(inner: A) -> Self {
        ProfiledAllocator {
            inner,
            sample_bytes: DEFAULT_HEAP_SAMPLE_BYTES,
        }
    }

    /// `inner`, sampled once per `sample_bytes` allocated on average; `0` samples nothing
    /// (the heap endpoints then answer 501). `OBSERVE_HEAP_SAMPLE_BYTES` in the environment
    /// overrides it (and [`new`](Self::new)'s default) when the process starts.
    pub const fn with_sample_bytes(inner: A, sample_bytes: usize) -> Self {
        ProfiledAllocator {
            inner,
            sample_bytes,
        }
    }
}

thread_local! {
    /// Bytes this thread may still allocate before its next sample; 0 before its first.
    static UNTIL_SAMPLE: Cell<usize> = const { Cell::new(0) };
    /// This thread's random state (0: not seeded yet, the thread's first allocation).
    static RANDOM: Cell<u64> = const { Cell::new(0) };
    /// Set while this thread samples: the unwinder's own allocations are never sampled.
    static SAMPLING: Cell<bool> = const { Cell::new(false) };
}

impl<A: GlobalAlloc> ProfiledAllocator<A> {
    /// Counts `size` bytes allocated at `ptr` against this thread's gap; samples at its end.
    #[inline]
    fn allocated(&self, ptr: *mut u8, size: usize) {
        if ptr.is_null() {
            return;
        }
        let sample = UNTIL_SAMPLE.with(|left| {
            let now = left.get();
            if size < now {
                left.set(now - size);
                false
            } else {
                true
            }
        });
        if sample {
            at_gap_end(ptr as usize, size, self.sample_bytes);
        }
    }
}

// SAFETY: every block comes from `inner` and goes back to it with the layout it was asked
// with; the sampler only reads addresses and never touches the blocks.
unsafe impl<A: GlobalAlloc> GlobalAlloc for ProfiledAllocator<A> {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract, passed on.
        let ptr = unsafe { self.inner.alloc(layout) };
        self.allocated(ptr, layout.size());
        ptr
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract, passed on.
        let ptr = unsafe { self.inner.alloc_zeroed(layout) };
        self.allocated(ptr, layout.size());
        ptr
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // Forgotten before the block goes back: once it has, another thread may get (and
        // sample) the same address.
        table::record_free(ptr as usize);
        // SAFETY: the caller's contract, passed on.
        unsafe { self.inner.dealloc(ptr, layout) }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // A move is a free and an allocation, as Go counts them.
        let sampled = table::record_free(ptr as usize);
        // SAFETY: the caller's contract, passed on.
        let moved = unsafe { self.inner.realloc(ptr, layout, new_size) };
        if moved.is_null() {
            // The old block is still allocated.
            if let Some(sampled) = sampled {
                table::restore(ptr as usize, sampled);
            }
            return moved;
        }
        self.allocated(moved, new_size);
        moved
    }
}

/// A thread's gap ran out at the allocation of `size` bytes at `address`: sample it (or, on
/// the thread's first allocation, only draw the first gap), and draw the next gap.
#[cold]
#[inline(never)]
fn at_gap_end(address: usize, size: usize, sample_bytes: usize) {
    if SAMPLING.get() {
        return;
    }
    SAMPLING.set(true);
    let sample_bytes = process_rate(sample_bytes);
    let mut random = RANDOM.get();
    if random == 0 {
        random = seed();
    } else if sample_bytes > 0 {
        let mut frames = [0usize; MAX_DEPTH];
        let depth = unwind(None, &mut frames);
        // Trace ids would make a stack per request: heap samples keep the route and method.
        let labels = RequestLabels::current()
            .map(|l| l.without_trace().to_words())
            .unwrap_or_default();
        table::record_alloc(address, size, &frames[..depth], labels);
    }
    let (gap, next) = draw_gap(random, sample_bytes);
    RANDOM.set(next);
    UNTIL_SAMPLE.set(gap);
    SAMPLING.set(false);
}

/// The rate this process samples at: `OBSERVE_HEAP_SAMPLE_BYTES` from the environment if it
/// is set to a number (`0`: off, as Go's `GODEBUG=memprofilerate=0`), else `configured`. The
/// first call also asks the adapters for request labels from now on (a sample may come any
/// time) and warms the unwinder up.
fn process_rate(configured: usize) -> usize {
    if let Some(rate) = table::rate() {
        return rate;
    }
    static FIRST: AtomicBool = AtomicBool::new(true);
    if !FIRST.swap(false, Ordering::Relaxed) {
        // Another thread is installing it right now.
        return configured;
    }
    let rate = rate_from_environment().unwrap_or(configured);
    if rate > 0 {
        std::mem::forget(WantLabels::new());
        // The unwinder's first use finds and caches the process's unwind tables: do it now,
        // outside any sample, with this thread's allocations unsampled.
        let mut frames = [0usize; MAX_DEPTH];
        unwind(None, &mut frames);
    }
    table::installed(rate);
    rate
}

/// `OBSERVE_HEAP_SAMPLE_BYTES`, read without allocating (this runs inside the allocator).
fn rate_from_environment() -> Option<usize> {
    // SAFETY: getenv reads the environment without allocating; the pointer it returns is
    // read at once, as a NUL-terminated string.
    let value = unsafe { libc::getenv(c"OBSERVE_HEAP_SAMPLE_BYTES".as_ptr()) };
    if value.is_null() {
        return None;
    }
    // SAFETY: as above.
    let bytes = unsafe { std::ffi::CStr::from_ptr(value) }.to_bytes();
    if bytes.is_empty() || bytes.len() > 19 || !bytes.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(
        bytes
            .iter()
            .fold(0usize, |n, d| n * 10 + usize::from(d - b'0')),
    )
}

/// A random state for a new thread (never 0): its stack address and a process-wide counter.
fn seed() -> u64 {
    static THREADS: AtomicU64 = AtomicU64::new(0);
    let local = 0u8;
    let mut x = (&local as *const u8 as u64)
        ^ THREADS
            .fetch_add(0x9e37_79b9_7f4a_7c15, Ordering::Relaxed)
            .rotate_left(17);
    // splitmix64's finalizer.
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    (x ^ (x >> 31)) | 1
}

/// The bytes until the next sample, exponentially distributed with mean `sample_bytes`
/// (Go's `nextSample`), and the next random state (xorshift64*).
fn draw_gap(random: u64, sample_bytes: usize) -> (usize, u64) {
    if sample_bytes == 0 {
        return (usize::MAX, random);
    }
    let mut x = random;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    let bits = x.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11;
    // Uniform in (0, 1].
    let uniform = (bits + 1) as f64 / (1u64 << 53) as f64;
    let gap = -uniform.ln() * sample_bytes as f64;
    (gap.min(usize::MAX as f64 / 2.0) as usize + 1, x)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gaps_average_the_rate_and_vary() {
        let mut random = seed();
        let n = 100_000;
        let mut total = 0f64;
        let mut small = 0;
        for _ in 0..n {
            let (gap, next) = draw_gap(random, 512 * 1024);
            random = next;
            total += gap as f64;
            if gap < 512 * 1024 / 2 {
                small += 1;
            }
        }
        let mean = total / n as f64;
        assert!((mean / (512.0 * 1024.0) - 1.0).abs() < 0.02, "{mean}");
        // P(gap < mean/2) = 1 - e^-0.5 = 39.3 %.
        let share = small as f64 / n as f64;
        assert!((share - 0.393).abs() < 0.01, "{share}");
        assert_eq!(draw_gap(random, 0).0, usize::MAX);
    }
}
