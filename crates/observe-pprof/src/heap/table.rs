//! The heap sampler's table: the stacks that sampled allocations came from, with their counts
//! (what `/debug/pprof/allocs` and `/debug/pprof/heap` report), and the sampled blocks still
//! allocated. It is written from inside the global allocator, so it never allocates: its
//! storage is one anonymous mapping of fixed size, made on the first sample (the kernel hands
//! out its pages as they are first written, so memory grows with what is kept, to at most
//! [`STORAGE_BYTES`]). Beyond its bounds samples are dropped and counted, never grown.
//!
//! A spin lock guards it, held only for a few hundred instructions of table work (never while
//! unwinding, allocating or freeing), and taken around `fork()` so a child never inherits it
//! held. A free looks at the [`Filter`] first, without the lock: only a block whose address
//! hashes to a counter a sampled block raised takes the lock.
#![allow(unsafe_code)]

use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, AtomicU8, AtomicUsize, Ordering};

use crate::sampler::MAX_DEPTH;

/// Sampled blocks kept alive at most: at the default rate (one sample per 512 KiB allocated)
/// that is ~16 GiB of live heap before samples are dropped.
pub(crate) const MAX_LIVE: usize = 32_768;
/// Distinct (stack, labels) pairs kept at most, and their frames in all.
pub(crate) const MAX_STACKS: usize = 8_192;
pub(crate) const MAX_FRAMES: usize = 262_144;

const LIVE_SLOTS: usize = 2 * MAX_LIVE;
const STACK_SLOTS: usize = 2 * MAX_STACKS;
const FILTER_SLOTS: usize = 1 << 16;
/// A block's size is kept in the low 40 bits of its slot (larger sizes saturate), its stack in
/// the high 24.
const SIZE_BITS: u32 = 40;

/// One counter per hash of a block's address: how many sampled blocks hash there (saturated
/// at 255, then never lowered). Zero means "not sampled", for sure.
type Filter = [AtomicU8; FILTER_SLOTS];

/// A sampled block still allocated: its address (0: an empty slot), size and stack.
#[derive(Clone, Copy)]
#[repr(C)]
struct Live {
    address: usize,
    size_and_stack: u64,
}

/// A stack and the request labels its samples were taken under, and what was sampled there.
#[derive(Clone, Copy)]
#[repr(C)]
struct Stack {
    hash: u64,
    labels: [u64; 5],
    frames_at: u32,
    depth: u32,
    counts: Counts,
}

/// Sampled allocations and frees at one stack (objects, and their bytes as asked for).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub(crate) struct Counts {
    pub(crate) allocs: u64,
    pub(crate) alloc_bytes: u64,
    pub(crate) frees: u64,
    pub(crate) free_bytes: u64,
}

/// Everything behind the lock.
#[repr(C)]
struct Locked {
    live_count: usize,
    stack_count: usize,
    frame_count: usize,
    live: [Live; LIVE_SLOTS],
    /// Open addressing over `stacks` (index + 1; 0: empty).
    stack_slots: [u32; STACK_SLOTS],
    stacks: [Stack; MAX_STACKS],
    frames: [usize; MAX_FRAMES],
}

/// The mapping's size: the filter, then the locked part. 3.9 MiB.
pub(crate) const STORAGE_BYTES: usize =
    std::mem::size_of::<Filter>() + std::mem::size_of::<Locked>();

static FILTER: AtomicPtr<Filter> = AtomicPtr::new(std::ptr::null_mut());
static LOCKED: AtomicPtr<Locked> = AtomicPtr::new(std::ptr::null_mut());
static LOCK: AtomicBool = AtomicBool::new(false);
/// 0: no storage yet; 1: being made; 2: made; 3: the mapping failed (nothing is sampled).
static STATE: AtomicU8 = AtomicU8::new(0);
/// Samples that found the table full (live blocks or stacks), counted instead of kept.
static DROPPED: AtomicU64 = AtomicU64::new(0);
/// The sampling rate of the allocator that writes here (bytes; 0: off), once it first ran.
static RATE: AtomicUsize = AtomicUsize::new(0);
static INSTALLED: AtomicBool = AtomicBool::new(false);

/// Called by the allocator on each thread's first allocation: notes that it serves this
/// process, and at which rate.
pub(crate) fn installed(rate: usize) {
    RATE.store(rate, Ordering::Relaxed);
    INSTALLED.store(true, Ordering::Release);
}

/// The rate of the process's sampling allocator, `None` when none serves it.
pub(crate) fn rate() -> Option<usize> {
    INSTALLED
        .load(Ordering::Acquire)
        .then(|| RATE.load(Ordering::Relaxed))
}

fn mix(x: u64) -> u64 {
    x.wrapping_mul(0x9e37_79b9_7f4a_7c15)
}

fn filter_slot(address: usize) -> usize {
    (mix(address as u64) >> (64 - FILTER_SLOTS.trailing_zeros())) as usize
}

/// Whether the block at `address` may have been sampled (lock-free; false means certainly
/// not). A sampled block raised its counter before its address left the allocator, so a free
/// of it, which happens after, sees the raise.
#[inline]
pub(crate) fn may_be_sampled(address: usize) -> bool {
    let filter = FILTER.load(Ordering::Acquire);
    if filter.is_null() {
        return false;
    }
    // SAFETY: the mapping is made once and never unmapped.
    let filter = unsafe { &*filter };
    filter[filter_slot(address)].load(Ordering::Relaxed) != 0
}

/// The storage, made on first use; `None` while another thread makes it or if it failed.
fn storage() -> Option<*mut Locked> {
    match STATE.load(Ordering::Acquire) {
        2 => return Some(LOCKED.load(Ordering::Relaxed)),
        0 => {}
        _ => return None,
    }
    if STATE
        .compare_exchange(0, 1, Ordering::Acquire, Ordering::Relaxed)
        .is_err()
    {
        return None;
    }
    // SAFETY: an anonymous private mapping, checked below; zero-filled, which is every field's
    // empty value.
    let base = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            STORAGE_BYTES,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if base == libc::MAP_FAILED {
        STATE.store(3, Ordering::Release);
        return None;
    }
    // A child forked while another thread held the lock would never see it released.
    // SAFETY: the handlers are plain functions that only touch the lock.
    unsafe { libc::pthread_atfork(Some(before_fork), Some(after_fork), Some(after_fork)) };
    let filter = base.cast::<Filter>();
    // SAFETY: the filter's size is a multiple of the locked part's alignment (8).
    let locked = unsafe { base.cast::<u8>().add(std::mem::size_of::<Filter>()) }.cast::<Locked>();
    LOCKED.store(locked, Ordering::Relaxed);
    FILTER.store(filter, Ordering::Release);
    STATE.store(2, Ordering::Release);
    Some(locked)
}

extern "C" fn before_fork() {
    std::mem::forget(lock());
}

extern "C" fn after_fork() {
    LOCK.store(false, Ordering::Release);
}

/// The lock, released on drop.
struct Guard;

fn lock() -> Guard {
    let mut spins = 0u32;
    while LOCK
        .compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed)
        .is_err()
    {
        spins += 1;
        if spins < 100 {
            std::hint::spin_loop();
        } else {
            // SAFETY: no preconditions; it allocates nothing.
            unsafe { libc::sched_yield() };
        }
    }
    Guard
}

impl Drop for Guard {
    fn drop(&mut self) {
        LOCK.store(false, Ordering::Release);
    }
}

/// The locked part, with the lock held (`_guard`).
fn locked(_guard: &Guard) -> Option<&'static mut Locked> {
    if STATE.load(Ordering::Acquire) != 2 {
        return None;
    }
    // SAFETY: made once, never unmapped; the guard makes this the only reference.
    Some(unsafe { &mut *LOCKED.load(Ordering::Relaxed) })
}

/// Records a sampled allocation of `size` bytes at `address`, taken at `frames` (innermost
/// first) under `labels` (`RequestLabels::to_words`, or zeros).
pub(crate) fn record_alloc(address: usize, size: usize, frames: &[usize], labels: [u64; 5]) {
    if storage().is_none() {
        return;
    }
    let guard = lock();
    let Some(t) = locked(&guard) else { return };
    if t.live_count >= MAX_LIVE {
        DROPPED.fetch_add(1, Ordering::Relaxed);
        return;
    }
    let Some(stack) = t.intern(frames, labels) else {
        DROPPED.fetch_add(1, Ordering::Relaxed);
        return;
    };
    let counts = &mut t.stacks[stack].counts;
    counts.allocs += 1;
    counts.alloc_bytes += size as u64;
    let size_and_stack = (size as u64).min((1 << SIZE_BITS) - 1) | (stack as u64) << SIZE_BITS;
    if let Some(old) = t.insert_live(address, size_and_stack) {
        // A block we never saw freed (freed behind the allocator's back): count it freed.
        t.count_free(old);
    } else {
        raise(address);
    }
}

/// Forgets the sampled block at `address` if it is one, counting it freed; returns what it
/// was, so a failed `realloc` can put it back.
#[inline]
pub(crate) fn record_free(address: usize) -> Option<u64> {
    if !may_be_sampled(address) {
        return None;
    }
    record_free_slow(address)
}

#[cold]
fn record_free_slow(address: usize) -> Option<u64> {
    let guard = lock();
    let t = locked(&guard)?;
    let old = t.remove_live(address)?;
    t.count_free(old);
    lower(address);
    Some(old)
}

/// Puts back a block [`record_free`] forgot, whose `realloc` failed (it is still allocated).
pub(crate) fn restore(address: usize, size_and_stack: u64) {
    let guard = lock();
    let Some(t) = locked(&guard) else { return };
    let counts = &mut t.stacks[(size_and_stack >> SIZE_BITS) as usize].counts;
    counts.frees -= 1;
    counts.free_bytes -= size_and_stack & ((1 << SIZE_BITS) - 1);
    if t.insert_live(address, size_and_stack).is_none() {
        raise(address);
    }
}

fn raise(address: usize) {
    // SAFETY: set before the locked part is reachable; never unmapped.
    let filter = unsafe { &*FILTER.load(Ordering::Acquire) };
    let counter = &filter[filter_slot(address)];
    let now = counter.load(Ordering::Relaxed);
    if now < u8::MAX {
        counter.store(now + 1, Ordering::Relaxed);
    }
}

fn lower(address: usize) {
    // SAFETY: as in `raise`.
    let filter = unsafe { &*FILTER.load(Ordering::Acquire) };
    let counter = &filter[filter_slot(address)];
    let now = counter.load(Ordering::Relaxed);
    // A saturated counter no longer knows how many it counts: it stays raised.
    if now > 0 && now < u8::MAX {
        counter.store(now - 1, Ordering::Relaxed);
    }
}

impl Locked {
    fn count_free(&mut self, size_and_stack: u64) {
        let counts = &mut self.stacks[(size_and_stack >> SIZE_BITS) as usize].counts;
        counts.frees += 1;
        counts.free_bytes += size_and_stack & ((1 << SIZE_BITS) - 1);
    }

    /// The index of the stack `frames` under `labels`, added if new; `None` when full.
    fn intern(&mut self, frames: &[usize], labels: [u64; 5]) -> Option<usize> {
        let words = frames.iter().map(|&f| f as u64).chain(labels);
        let hash = words.fold(frames.len() as u64, |h, w| mix(h ^ w).rotate_left(29));
        let mut slot = (hash as usize) % STACK_SLOTS;
        loop {
            let index = self.stack_slots[slot];
            if index == 0 {
                break;
            }
            let stack = &self.stacks[index as usize - 1];
            if stack.hash == hash && stack.labels == labels && self.frames_of(stack) == frames {
                return Some(index as usize - 1);
            }
            slot = (slot + 1) % STACK_SLOTS;
        }
        if self.stack_count == MAX_STACKS || self.frame_count + frames.len() > MAX_FRAMES {
            return None;
        }
        let index = self.stack_count;
        let at = self.frame_count;
        self.frames[at..at + frames.len()].copy_from_slice(frames);
        self.stacks[index] = Stack {
            hash,
            labels,
            frames_at: at as u32,
            depth: frames.len() as u32,
            counts: Counts::default(),
        };
        self.stack_slots[slot] = index as u32 + 1;
        self.stack_count += 1;
        self.frame_count += frames.len();
        Some(index)
    }

    fn frames_of(&self, stack: &Stack) -> &[usize] {
        let at = stack.frames_at as usize;
        &self.frames[at..at + stack.depth as usize]
    }

    fn live_home(address: usize) -> usize {
        (mix(address as u64) >> 32) as usize % LIVE_SLOTS
    }

    /// Inserts a live block; returns what the same address held before, if anything.
    fn insert_live(&mut self, address: usize, size_and_stack: u64) -> Option<u64> {
        let mut slot = Self::live_home(address);
        loop {
            let live = &mut self.live[slot];
            if live.address == address {
                return Some(std::mem::replace(&mut live.size_and_stack, size_and_stack));
            }
            if live.address == 0 {
                *live = Live {
                    address,
                    size_and_stack,
                };
                self.live_count += 1;
                return None;
            }
            slot = (slot + 1) % LIVE_SLOTS;
        }
    }

    /// Removes a live block (linear probing, shifting later entries back so no probe chain
    /// breaks); returns its size and stack.
    fn remove_live(&mut self, address: usize) -> Option<u64> {
        let mut slot = Self::live_home(address);
        loop {
            let live = self.live[slot];
            if live.address == 0 {
                return None;
            }
            if live.address == address {
                break;
            }
            slot = (slot + 1) % LIVE_SLOTS;
        }
        let removed = self.live[slot].size_and_stack;
        let mut hole = slot;
        let mut next = (hole + 1) % LIVE_SLOTS;
        while self.live[next].address != 0 {
            let home = Self::live_home(self.live[next].address);
            // The entry at `next` may move into the hole if its home is not in (hole, next].
            let stays = if hole <= next {
                hole < home && home <= next
            } else {
                hole < home || home <= next
            };
            if !stays {
                self.live[hole] = self.live[next];
                hole = next;
            }
            next = (next + 1) % LIVE_SLOTS;
        }
        self.live[hole] = Live {
            address: 0,
            size_and_stack: 0,
        };
        self.live_count -= 1;
        Some(removed)
    }
}

/// One stack of a [`Snapshot`].
#[derive(Debug, Clone)]
pub(crate) struct SampledStack {
    /// Innermost first, as unwound from inside the allocator (its own frames included).
    pub(crate) frames: Vec<usize>,
    /// `RequestLabels::to_words`, or zeros.
    pub(crate) labels: [u64; 5],
    pub(crate) counts: Counts,
}

/// What the table holds at one moment. Stack `i` is the same stack in every snapshot.
#[derive(Debug, Clone, Default)]
pub(crate) struct Snapshot {
    pub(crate) stacks: Vec<SampledStack>,
    pub(crate) live: usize,
    pub(crate) dropped: u64,
    pub(crate) frames: usize,
}

/// Copies the table. The copies are allocated before the lock is taken (the allocator may
/// sample them, which takes the lock): stacks added meanwhile wait for the next snapshot.
pub(crate) fn snapshot() -> Snapshot {
    if STATE.load(Ordering::Acquire) != 2 {
        return Snapshot::default();
    }
    let (stacks, frames) = {
        let guard = lock();
        let Some(t) = locked(&guard) else {
            return Snapshot::default();
        };
        (t.stack_count, t.frame_count)
    };
    let mut copied: Vec<Stack> = Vec::with_capacity(stacks);
    let mut frame_copy: Vec<usize> = Vec::with_capacity(frames);
    let live;
    {
        let guard = lock();
        let Some(t) = locked(&guard) else {
            return Snapshot::default();
        };
        copied.extend_from_slice(&t.stacks[..stacks]);
        frame_copy.extend_from_slice(&t.frames[..frames]);
        live = t.live_count;
    }
    Snapshot {
        stacks: copied
            .iter()
            .map(|s| SampledStack {
                frames: frame_copy[s.frames_at as usize..][..s.depth as usize].to_vec(),
                labels: s.labels,
                counts: s.counts,
            })
            .collect(),
        live,
        dropped: DROPPED.load(Ordering::Relaxed),
        frames,
    }
}

/// The sampled blocks still allocated, as (address, size).
#[cfg(test)]
pub(crate) fn live_blocks() -> Vec<(usize, u64)> {
    let capacity = {
        let guard = lock();
        locked(&guard).map_or(0, |t| t.live_count)
    };
    let mut blocks = Vec::with_capacity(capacity + 1024);
    let guard = lock();
    if let Some(t) = locked(&guard) {
        let room = blocks.capacity();
        blocks.extend(
            t.live
                .iter()
                .filter(|l| l.address != 0)
                .take(room)
                .map(|l| (l.address, l.size_and_stack & ((1 << SIZE_BITS) - 1))),
        );
    }
    drop(guard);
    blocks
}

/// Sampled allocations and frees in all, and whether the stacks' counts add up with the live
/// blocks, read under one lock (nothing allocated meanwhile).
#[cfg(test)]
pub(crate) fn totals() -> (u64, u64, bool) {
    let guard = lock();
    let Some(t) = locked(&guard) else {
        return (0, 0, true);
    };
    let stacks = &t.stacks[..t.stack_count];
    let allocs = stacks.iter().map(|s| s.counts.allocs).sum::<u64>();
    let frees = stacks.iter().map(|s| s.counts.frees).sum::<u64>();
    let in_use = stacks
        .iter()
        .map(|s| s.counts.alloc_bytes - s.counts.free_bytes)
        .sum::<u64>();
    let live_bytes = t
        .live
        .iter()
        .filter(|l| l.address != 0)
        .map(|l| l.size_and_stack & ((1 << SIZE_BITS) - 1))
        .sum::<u64>();
    let live = t.live.iter().filter(|l| l.address != 0).count();
    let adds_up = in_use == live_bytes && (allocs - frees) as usize == live && live == t.live_count;
    (allocs, frees, adds_up)
}

const _: () = assert!(MAX_DEPTH <= 1 << 16);
const _: () = assert!(MAX_STACKS < 1 << (64 - SIZE_BITS));
