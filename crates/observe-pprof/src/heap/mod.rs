//! `/debug/pprof/heap` and `/debug/pprof/allocs`, as Go serves them, from the samples of
//! [`ProfiledAllocator`] (the process's global allocator, wrapped): the same four sample types
//! (`alloc_objects`, `alloc_space`, `inuse_objects`, `inuse_space`), unsampled with Go's
//! formula, so `inuse_space` estimates the bytes really allocated; `heap` shows `inuse_space`
//! first, `allocs` `alloc_space`. `?seconds=N` gives what changed over N seconds, and samples
//! carry the route and method of the request that allocated, as CPU samples do.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use observe_core::adapter::RequestLabels;

use crate::error::PprofError;
use crate::labels;
use crate::params::HeapParams;
use crate::proto::ProfileBuilder;

mod allocator;
mod table;

pub use allocator::{ProfiledAllocator, DEFAULT_HEAP_SAMPLE_BYTES};
use table::Counts;
pub(crate) use table::Snapshot;

/// What the table may hold at most (its one mapping).
pub(crate) const TABLE_BYTES: usize = table::STORAGE_BYTES;

/// Which of Go's two memory profiles: the same samples, shown by default as what is still
/// allocated (`heap`) or as everything allocated (`allocs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum MemoryProfile {
    Heap,
    Allocs,
}

impl MemoryProfile {
    pub(crate) fn name(self) -> &'static str {
        match self {
            MemoryProfile::Heap => "heap",
            MemoryProfile::Allocs => "allocs",
        }
    }
}

/// What a process needs for heap profiles; said in every "unavailable" answer.
pub(crate) const HOW_TO_ENABLE: &str = "wrap the global allocator in observe's sampling one, \
one line in main.rs: `#[global_allocator] static ALLOCATOR: \
observe_tower::ProfiledAllocator<std::alloc::System> = \
observe_tower::ProfiledAllocator::new(std::alloc::System);` (or observe_actix::, over any \
allocator; see docs/pprof.md)";

/// The rate this process's heap is sampled at, when it can give heap profiles; `Err` says why
/// not and what to do.
pub(crate) fn availability() -> Result<usize, PprofError> {
    match table::rate() {
        Some(rate) if rate > 0 => Ok(rate),
        Some(_) => Err(PprofError::HeapUnavailable(
            "heap sampling is off in this process (OBSERVE_HEAP_SAMPLE_BYTES=0, or \
             ProfiledAllocator::with_sample_bytes(_, 0)): unset it or give a rate in bytes, \
             e.g. 524288"
                .to_owned(),
        )),
        None => Err(PprofError::HeapUnavailable(format!(
            "no allocator samples this process's allocations: {HOW_TO_ENABLE}"
        ))),
    }
}

/// The gzipped pprof profile `go tool pprof` reads: the samples now, or (with `seconds`) what
/// changed over that many seconds. Blocks that long: call it off the async workers. Ends early
/// with [`PprofError::Cancelled`] once `cancel` is set.
pub(crate) fn profile(
    which: MemoryProfile,
    params: &HeapParams,
    cancel: &AtomicBool,
) -> Result<Vec<u8>, PprofError> {
    let rate = availability()?;
    let started = SystemTime::now();
    let first = table::snapshot();
    let (values, snapshot, duration) = match params.delta_seconds {
        None => (changed(&first, &Snapshot::default()), first, Duration::ZERO),
        Some(seconds) => {
            let duration = Duration::from_secs(seconds);
            let end = Instant::now() + duration;
            while let Some(left) = end.checked_duration_since(Instant::now()) {
                if cancel.load(Ordering::Relaxed) {
                    return Err(PprofError::Cancelled);
                }
                std::thread::sleep(left.min(Duration::from_millis(20)));
            }
            let last = table::snapshot();
            (changed(&last, &first), last, duration)
        }
    };
    let raw = encode(
        which,
        &snapshot,
        &values,
        rate,
        &params.labels,
        started,
        duration,
    );
    crate::proto::gzip(&raw)
        .map_err(|e| PprofError::Encode(format!("{} profile: {e}", which.name())))
}

/// A stack's four values, as sampled (before [`unsampled`]): allocations and their bytes,
/// blocks still allocated and their bytes.
type Values = [i64; 4];

/// Allocated and freed since `then`, in all four values (Go's delta profile; since the start
/// with an empty `then`). Stack i is the same stack in both snapshots.
fn changed(now: &Snapshot, then: &Snapshot) -> Vec<Values> {
    let none = Counts::default();
    now.stacks
        .iter()
        .enumerate()
        .map(|(i, s)| in_use(&s.counts, then.stacks.get(i).map_or(&none, |t| &t.counts)))
        .collect()
}

/// Allocations since `then`, and what is allocated now: what a continuous profiler pushes
/// each window (as Pyroscope's Go client does).
fn allocated_since(now: &Snapshot, then: &Snapshot) -> Vec<Values> {
    let since_start = changed(now, &Snapshot::default());
    changed(now, then)
        .into_iter()
        .zip(since_start)
        .map(|([allocs, alloc_bytes, ..], [.., inuse, inuse_bytes])| {
            [allocs, alloc_bytes, inuse, inuse_bytes]
        })
        .collect()
}

fn in_use(now: &Counts, then: &Counts) -> Values {
    let d = |a: u64, b: u64| a as i64 - b as i64;
    let allocs = d(now.allocs, then.allocs);
    let alloc_bytes = d(now.alloc_bytes, then.alloc_bytes);
    [
        allocs,
        alloc_bytes,
        allocs - d(now.frees, then.frees),
        alloc_bytes - d(now.free_bytes, then.free_bytes),
    ]
}

/// The allocation profile of one continuous-profiling window: allocations since `previous`
/// (the last window's snapshot, replaced by this one's) and what is allocated now, gzipped.
/// `None` when this process has no heap samples.
pub(crate) fn window_profile(
    previous: &mut Option<Snapshot>,
    started: SystemTime,
    duration: Duration,
) -> Option<Vec<u8>> {
    let rate = availability().ok()?;
    let now = table::snapshot();
    let values = allocated_since(&now, previous.as_ref().unwrap_or(&Snapshot::default()));
    let raw = encode(
        MemoryProfile::Allocs,
        &now,
        &values,
        rate,
        &crate::labels::LabelFilter::default(),
        started,
        duration,
    );
    *previous = Some(now);
    crate::proto::gzip(&raw).ok()
}

/// How Pyroscope is to read a window's allocation profile (`sample_type_config`): the
/// allocations are this window's, what is allocated is a level to average, not to add up.
pub(crate) const PYROSCOPE_SAMPLE_TYPES: &str = r#"{"alloc_objects":{"units":"objects","cumulative":false},"alloc_space":{"units":"bytes","cumulative":false},"inuse_objects":{"units":"objects","aggregation":"average","cumulative":false},"inuse_space":{"units":"bytes","aggregation":"average","cumulative":false}}"#;

/// Go's `scaleHeapSample`: a block of `avg` bytes is sampled with probability
/// 1 - e^(-avg/rate), so `count` samples of `bytes` in all stand for count/p blocks.
fn unsampled(count: i64, bytes: i64, rate: usize) -> (i64, i64) {
    if count == 0 || bytes == 0 || rate <= 1 {
        return (count, bytes);
    }
    let avg = bytes as f64 / count as f64;
    let scale = 1.0 / (1.0 - (-avg / rate as f64).exp());
    (
        (count as f64 * scale).round() as i64,
        (bytes as f64 * scale).round() as i64,
    )
}

fn encode(
    which: MemoryProfile,
    snapshot: &Snapshot,
    values: &[Values],
    rate: usize,
    filter: &crate::labels::LabelFilter,
    started: SystemTime,
    duration: Duration,
) -> Vec<u8> {
    let kept: Vec<_> = snapshot
        .stacks
        .iter()
        .zip(values)
        .filter(|(_, v)| **v != [0; 4])
        .map(|(s, v)| (s, v, RequestLabels::from_words(s.labels)))
        .filter(|(_, _, labels)| filter.keeps(labels.as_ref()))
        .collect();
    let symbols =
        crate::symbols::symbolize(kept.iter().flat_map(|(s, _, _)| s.frames.iter().copied()));
    let mut profile = ProfileBuilder::new(
        &symbols,
        &[
            ("alloc_objects", "count"),
            ("alloc_space", "bytes"),
            ("inuse_objects", "count"),
            ("inuse_space", "bytes"),
        ],
        ("space", "bytes"),
        rate as i64,
    );
    if which == MemoryProfile::Allocs {
        profile.default_sample_type("alloc_space");
    }
    for (stack, &[allocs, alloc_bytes, inuse, inuse_bytes], labels) in &kept {
        let (allocs, alloc_bytes) = unsampled(allocs, alloc_bytes, rate);
        let (inuse, inuse_bytes) = unsampled(inuse, inuse_bytes, rate);
        let frames = callers_of_the_allocator(&stack.frames, &symbols);
        let labels = labels.as_ref().map(labels::pairs).unwrap_or_default();
        profile.sample(
            frames,
            vec![allocs, alloc_bytes, inuse, inuse_bytes],
            &labels,
        );
    }
    profile.comment(&format!(
        "observe: one allocation sampled per {rate} bytes allocated on average, by \
         ProfiledAllocator; {} sampled blocks still allocated, at {} stacks of {} frames in all",
        snapshot.live,
        snapshot.stacks.len(),
        snapshot.frames
    ));
    if snapshot.dropped > 0 {
        profile.comment(&format!(
            "observe: {} samples dropped since start: the sample table was full ({} blocks, \
             {} stacks or {} frames)",
            snapshot.dropped,
            table::MAX_LIVE,
            table::MAX_STACKS,
            table::MAX_FRAMES
        ));
    }
    if !filter.is_empty() {
        profile.comment(&filter.describe());
    }
    let started = started.duration_since(UNIX_EPOCH).unwrap_or_default();
    profile.finish(started.as_nanos() as i64, duration.as_nanos() as i64)
}

/// A sample's stack from the allocation's caller on: the unwinder's, the sampler's and the
/// allocator's own frames (the innermost ones, up to the global allocator's entry points)
/// are left out, as Go leaves out its `mallocgc`.
fn callers_of_the_allocator<'f>(
    frames: &'f [usize],
    symbols: &crate::symbols::Symbols,
) -> &'f [usize] {
    let is_allocator = |address: &usize| {
        symbols.frames(*address).iter().any(|frame| {
            let name = &symbols.functions[frame.function].name;
            name.starts_with("backtrace::")
                || name.starts_with("_Unwind")
                || name.starts_with("observe_pprof::heap::")
                || name.starts_with("observe_pprof::sampler::unwind::")
                || name.contains("ProfiledAllocator")
                || name.contains("__rust_alloc")
                || name.contains("__rust_realloc")
                || name.contains("__rust_alloc_zeroed")
        })
    };
    match frames.iter().rposition(is_allocator) {
        Some(last) if last + 1 < frames.len() => &frames[last + 1..],
        _ => frames,
    }
}

#[cfg(test)]
mod tests;
