//! What requests write into and `/metrics` reads from: one service's [`MetricsStore`] (its
//! series, in-flight counters and route table), the [`StoreOwner`] whose drop closes it, and the
//! per-thread caches a request uses to find its store and series without a lock.
//!
//! A request in flight holds its metrics' id, not a reference: it finds the [`MetricsStore`]
//! through [`with_store`]. A thread keeps the stores it met (at most [`STORE_SLOTS`]) until they
//! close (every handle and the registry dropped, see [`StoreOwner`]): closing bumps [`CLOSED`],
//! and each thread drops its closed stores at its next request, or when it exits. A request
//! whose store closed ends unrecorded: nobody could read it. Series (their counters) a thread cached
//! stay until their slots are reused, at most [`CACHE_SLOTS`] of them. Ids are never reused and
//! series are never removed, so an entry is never stale. A hit costs no lock and no atomic
//! read-modify-write (`docs/performance.md` gives what each cache saves).

use quanta::Instant;
use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex, OnceLock, RwLock, Weak};

use crate::exemplar::{stamp, ExemplarCell, Recorded};
use crate::exposition::model::NativeBuckets;
use crate::histogram::{Bounds, HistogramSnapshot};
use crate::labels::MethodLabel;
use crate::native::{NativeCells, NativeLayout};
use crate::routes::{RouteId, RouteTable};
use crate::settings::Settings;
use crate::shard::{Shard, SHARDS};
use crate::sync::{cache_slot, read, write, CACHE_SLOTS};
use crate::trace::{TraceContext, TraceHook};

/// Held by every [`HttpMetrics`](crate::HttpMetrics) handle and by the collector on the registry: its drop is the
/// moment nobody can read the metrics any more.
#[derive(Debug)]
pub(crate) struct StoreOwner {
    pub(crate) store: Arc<MetricsStore>,
}

impl Drop for StoreOwner {
    fn drop(&mut self) {
        self.store.closed.store(true, Ordering::Release);
        close_store(self.store.id);
    }
}

/// What requests write into and `/metrics` reads from.
#[derive(Debug)]
pub(crate) struct MetricsStore {
    /// Never reused, so per-thread caches can key on it.
    pub(crate) id: u64,
    /// Nobody can read these metrics any more (see [`StoreOwner`]).
    pub(crate) closed: AtomicBool,
    pub(crate) service: String,
    pub(crate) const_labels: Vec<(String, String)>,
    pub(crate) routes: RouteTable,
    pub(crate) series: RwLock<HashMap<SeriesKey, Arc<Series>, foldhash::fast::RandomState>>,
    pub(crate) duration_bounds: Bounds,
    pub(crate) size_bounds: Option<Bounds>,
    /// Native buckets of the duration histogram, when turned on.
    pub(crate) native: Option<NativeLayout>,
    /// Whether requests' traces are kept as exemplars.
    pub(crate) exemplars: bool,
    /// Minimum time between two replacements of a bucket's exemplar, nanoseconds.
    exemplar_interval: u64,
    /// Where a request's trace comes from, when not its `traceparent` header.
    pub(crate) trace_hook: Option<TraceHook>,
    /// Requests started and finished per method, per shard: the in-flight gauge is their
    /// difference.
    requests: Box<[MethodCounters; SHARDS]>,
    /// CPU seconds the profiler sampled per route and method (`http_server_cpu_seconds_total`):
    /// added by the sampler's thread every few milliseconds while it runs, never per request.
    pub(crate) cpu: Mutex<HashMap<(RouteId, MethodLabel), f64>>,
}

/// One shard's started and finished requests per method, on cache lines of their own.
#[derive(Debug, Default)]
#[repr(align(128))]
struct MethodCounters {
    started: [AtomicU64; MethodLabel::COUNT],
    finished: [AtomicU64; MethodLabel::COUNT],
}

/// `(route, method, status)` packed into one word.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct SeriesKey(pub(crate) u64);

impl SeriesKey {
    pub(crate) fn new(route: RouteId, method: MethodLabel, status: u16) -> Self {
        SeriesKey(((route.0 as u64) << 32) | ((method.index() as u64) << 16) | status as u64)
    }

    pub(crate) fn route(self) -> usize {
        (self.0 >> 32) as usize
    }

    pub(crate) fn method(self) -> MethodLabel {
        MethodLabel::from_index((self.0 >> 16) as u16 as usize)
    }

    pub(crate) fn status(self) -> u16 {
        self.0 as u16
    }
}

/// The histograms of one `(route, method, status)`, one copy per shard that recorded into it
/// (allocated on a thread's first request of the series): duration, then, unless turned off,
/// request and response size. The request counter is the duration histogram's count, so it
/// costs nothing extra.
#[derive(Debug)]
pub(crate) struct Series {
    shards: [OnceLock<Box<[AtomicU64]>>; SHARDS],
    /// Native buckets of the duration, per shard; empty when they are off.
    native: Box<[OnceLock<NativeCells>]>,
    /// One exemplar per duration bucket (`+Inf` last), allocated by the first request with a
    /// trace.
    exemplars: OnceLock<Box<[ExemplarCell]>>,
    /// When the series was created, in seconds since the Unix epoch (`_created`).
    created: f64,
}

/// Which of a series' histograms.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Histogram {
    Duration,
    RequestSize,
    ResponseSize,
}

impl Series {
    fn new(store: &MetricsStore) -> Self {
        let created = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        let native_shards = if store.native.is_some() { SHARDS } else { 0 };
        Series {
            shards: Default::default(),
            native: (0..native_shards).map(|_| OnceLock::new()).collect(),
            exemplars: OnceLock::new(),
            created,
        }
    }

    /// The native buckets of the duration summed over the shards, when they are on.
    pub(crate) fn native_snapshot(&self, store: &MetricsStore) -> Option<NativeBuckets> {
        let layout = store.native.as_ref()?;
        Some(layout.snapshot(self.native.iter().filter_map(OnceLock::get)))
    }

    /// Each duration bucket's exemplar (`+Inf` last); empty if no request had a trace.
    pub(crate) fn exemplars(&self) -> Vec<Option<Recorded>> {
        self.exemplars
            .get()
            .map(|cells| cells.iter().map(ExemplarCell::read).collect())
            .unwrap_or_default()
    }

    /// When the series was created, in seconds since the Unix epoch.
    pub(crate) fn created(&self) -> f64 {
        self.created
    }

    /// `shard`'s copy of the cells, allocated on first use.
    #[inline]
    fn cells(&self, shard: Shard, store: &MetricsStore) -> &[AtomicU64] {
        self.shards[shard.index()].get_or_init(|| {
            (0..store.cells_per_shard())
                .map(|_| AtomicU64::new(0))
                .collect()
        })
    }

    /// One histogram summed over the shards.
    pub(crate) fn snapshot(&self, store: &MetricsStore, which: Histogram) -> HistogramSnapshot {
        let range = store.cells_of(which);
        let mut snapshot = HistogramSnapshot::default();
        for cells in self.shards.iter().filter_map(OnceLock::get) {
            snapshot.add(&cells[range.clone()]);
        }
        snapshot.finish()
    }
}

/// What a finished request contributes to its series.
pub(crate) struct Observation {
    pub(crate) key: SeriesKey,
    pub(crate) started: Instant,
    pub(crate) request_bytes: u64,
    pub(crate) response_bytes: u64,
    pub(crate) trace: Option<TraceContext>,
}

impl StoreOwner {
    /// The store `config` describes, open: requests find it from now on.
    pub(crate) fn open(config: Settings) -> Arc<StoreOwner> {
        if config.exemplars {
            // Exemplar times count from this clock pair: set it before any request starts, or
            // the first traced request (started earlier) would be stamped in the future.
            crate::exemplar::start_clock();
        }
        let store = Arc::new(MetricsStore {
            id: new_store_id(),
            closed: AtomicBool::new(false),
            const_labels: config.const_labels.into_iter().collect(),
            routes: RouteTable::new(&config.excluded_routes, config.max_routes),
            series: RwLock::new(HashMap::default()),
            duration_bounds: Bounds::new(&config.duration_buckets, 1e9),
            size_bounds: config
                .size_histograms
                .then(|| Bounds::new(&config.size_buckets, 1.0)),
            native: config
                .native
                .as_ref()
                .map(|n| NativeLayout::new(n.bucket_factor, n.zero_threshold, n.max_buckets)),
            exemplars: config.exemplars,
            exemplar_interval: config.exemplar_interval.as_nanos().min(u64::MAX as u128) as u64,
            trace_hook: config.trace_hook,
            requests: Box::default(),
            cpu: Mutex::default(),
            service: config.service,
        });
        write(&LIVE).insert(store.id, Arc::downgrade(&store));
        Arc::new(StoreOwner { store })
    }
}

impl MetricsStore {
    /// Adds CPU time sampled on `route` (a route this table named; not an excluded one).
    pub(crate) fn add_cpu_seconds(&self, route: RouteId, method: MethodLabel, seconds: f64) {
        if route.is_excluded() || self.routes.name(route).is_none() {
            return;
        }
        let mut cpu = self.cpu.lock().unwrap_or_else(|e| e.into_inner());
        *cpu.entry((route, method)).or_default() += seconds;
    }

    /// Counts a request in flight (its route is one that is recorded).
    #[inline]
    pub(crate) fn count_start(&self, method: MethodLabel) {
        let shard = Shard::current();
        shard.add(&self.requests[shard.index()].started[method.index()], 1);
    }

    /// Requests of `method` in flight; `None` if none ever started.
    pub(crate) fn active_requests(&self, method: MethodLabel) -> Option<i64> {
        let total = |counter: fn(&MethodCounters) -> &[AtomicU64; MethodLabel::COUNT],
                     order: Ordering| {
            self.requests
                .iter()
                .map(|shard| counter(shard)[method.index()].load(order))
                .fold(0u64, u64::wrapping_add)
        };
        // Finished first, with acquire: a request's end is counted (release) after its start,
        // so every start of a request counted finished here is seen below, and the difference
        // is never negative. Each request is finished exactly once (the record's types see to
        // it), so it is exact once nothing is in flight.
        let finished = total(|c| &c.finished, Ordering::Acquire);
        let started = total(|c| &c.started, Ordering::Relaxed);
        (started > 0).then(|| started.wrapping_sub(finished) as i64)
    }

    /// A request ends: it leaves the gauge and, unless its route is excluded, is observed.
    pub(crate) fn finish(&self, method: MethodLabel, o: Option<Observation>) {
        let shard = Shard::current();
        let finished = &self.requests[shard.index()].finished[method.index()];
        shard.add_ordered(finished, 1, Ordering::Release);
        let Some(o) = o else { return };
        let nanos = o.started.elapsed().as_nanos().min(u64::MAX as u128) as u64;
        with_series(
            self.id,
            o.key,
            || self.series(o.key),
            |s| self.observe_into(s, shard, nanos, &o),
        );
    }

    /// Cells of one shard of a series.
    fn cells_per_shard(&self) -> usize {
        self.duration_bounds.cells() + 2 * self.size_bounds.as_ref().map_or(0, Bounds::cells)
    }

    /// Where a histogram's cells lie in a shard of a series.
    pub(crate) fn cells_of(&self, which: Histogram) -> std::ops::Range<usize> {
        let duration = self.duration_bounds.cells();
        let size = self.size_bounds.as_ref().map_or(0, Bounds::cells);
        match which {
            Histogram::Duration => 0..duration,
            Histogram::RequestSize => duration..duration + size,
            Histogram::ResponseSize => duration + size..duration + 2 * size,
        }
    }

    fn series(&self, key: SeriesKey) -> Arc<Series> {
        if let Some(s) = read(&self.series).get(&key) {
            return s.clone();
        }
        let mut series = write(&self.series);
        series
            .entry(key)
            .or_insert_with(|| Arc::new(Series::new(self)))
            .clone()
    }

    #[inline]
    fn observe_into(&self, s: &Series, shard: Shard, nanos: u64, o: &Observation) {
        let cells = s.cells(shard, self);
        let (duration, sizes) = cells.split_at(self.duration_bounds.cells());
        let bucket = self.duration_bounds.observe(duration, shard, nanos);
        if let Some(bounds) = &self.size_bounds {
            let (request, response) = sizes.split_at(bounds.cells());
            bounds.observe(request, shard, o.request_bytes);
            bounds.observe(response, shard, o.response_bytes);
        }
        // One test for both extras, on the common path.
        if self.native.is_some() | o.trace.is_some() {
            self.observe_extras(s, shard, nanos, bucket, o);
        }
    }

    /// Native buckets (when on) and the exemplar (when the request has a trace).
    #[inline(never)]
    fn observe_extras(&self, s: &Series, shard: Shard, nanos: u64, bucket: usize, o: &Observation) {
        // Written after the classic buckets; the collector reads them in the other order, so
        // a scrape never sees more native observations than classic ones.
        if let Some(layout) = &self.native {
            if let Some(native) = s.native.get(shard.index()) {
                layout.observe(native.get_or_init(|| layout.cells()), shard, nanos);
            }
        }
        if let Some(trace) = &o.trace {
            let cells = s.exemplars.get_or_init(|| {
                (0..self.duration_bounds.exposed().len() + 1)
                    .map(|_| ExemplarCell::default())
                    .collect()
            });
            if let Some(cell) = cells.get(bucket) {
                // The end of the request, without reading the clock again.
                let at = stamp(o.started).saturating_add(nanos);
                cell.offer(trace, nanos, at, self.exemplar_interval);
            }
        }
    }
}

/// A fresh id for a [`MetricsStore`] (and its series map); ids are never reused, and consecutive so
/// that a process's first [`STORE_SLOTS`] stores never collide in the per-thread cache.
fn new_store_id() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// Stores a thread remembers, and stores it found closed (ids are never reused, so a closed
/// store stays closed: a layer whose metrics nobody can read pays no lock per request).
const STORE_SLOTS: usize = 8;

type SeriesSlot = Option<(u64, SeriesKey, Arc<Series>)>;
/// `(id, None)`: known to be closed.
type StoreSlot = Option<(u64, Option<Arc<MetricsStore>>)>;

/// A thread's stores, and the [`CLOSED`] count it last saw.
struct Stores {
    closed_seen: u64,
    slots: [StoreSlot; STORE_SLOTS],
}

thread_local! {
    static SERIES: RefCell<[SeriesSlot; CACHE_SLOTS]> = const { RefCell::new([const { None }; CACHE_SLOTS]) };
    static STORES: RefCell<Stores> = const {
        RefCell::new(Stores { closed_seen: 0, slots: [const { None }; STORE_SLOTS] })
    };
}

/// Every open store, by id, for threads that have not met it yet.
static LIVE: LazyLock<RwLock<HashMap<u64, Weak<MetricsStore>>>> = LazyLock::new(Default::default);

/// How many stores have closed so far: a thread that sees it change drops its closed stores.
/// Written once per close, read by every request (a cache line that stays shared).
static CLOSED: AtomicU64 = AtomicU64::new(0);

/// Nobody can read store `id` any more: no thread finds it again, and threads holding it let
/// go at their next request.
fn close_store(id: u64) {
    write(&LIVE).remove(&id);
    CLOSED.fetch_add(1, Ordering::Release);
}

/// Runs `f` on the open store `id`; `None` if it is closed.
#[inline]
pub(crate) fn with_store<R>(id: u64, f: impl FnOnce(&MetricsStore) -> R) -> Option<R> {
    let slot = id as usize % STORE_SLOTS;
    let closed = CLOSED.load(Ordering::Acquire);
    let mut f = Some(f);
    let hit = STORES
        .try_with(|cache| {
            let cache = cache.try_borrow().ok()?;
            if cache.closed_seen != closed {
                return None;
            }
            match &cache.slots[slot] {
                Some((i, store)) if *i == id => {
                    Some(store.as_deref().and_then(|s| f.take().map(|f| f(s))))
                }
                _ => None,
            }
        })
        .ok()
        .flatten();
    match hit {
        Some(result) => result,
        None => with_store_uncached(id, slot, closed, f?),
    }
}

#[cold]
fn with_store_uncached<R>(
    id: u64,
    slot: usize,
    closed: u64,
    f: impl FnOnce(&MetricsStore) -> R,
) -> Option<R> {
    let store = read(&LIVE).get(&id).and_then(Weak::upgrade);
    let result = store.as_deref().map(f);
    let mut dropped: [StoreSlot; STORE_SLOTS] = [const { None }; STORE_SLOTS];
    let _ = STORES.try_with(|cache| {
        let Ok(mut cache) = cache.try_borrow_mut() else {
            return;
        };
        if cache.closed_seen != closed {
            // Some store closed since this thread last looked: let go of the closed ones.
            for (kept, dropped) in cache.slots.iter_mut().zip(&mut dropped) {
                if let Some((_, Some(s))) = kept {
                    if s.closed.load(Ordering::Acquire) {
                        *dropped = kept.take();
                    }
                }
            }
            cache.closed_seen = closed;
        }
        let evicted = cache.slots[slot].replace((id, store));
        if evicted.is_some() {
            dropped[slot] = evicted;
        }
    });
    // Dropped outside the borrow: they may be stores' last references.
    drop(dropped);
    result
}

/// Runs `observe` on the series `key` of table `table`, found in the cache or by `miss()`.
#[inline]
fn with_series(
    table: u64,
    key: SeriesKey,
    miss: impl FnOnce() -> Arc<Series>,
    observe: impl FnOnce(&Series),
) {
    let slot = cache_slot(table, key.0.wrapping_mul(0xff51_afd7_ed55_8ccd) >> 32);
    let mut observe = Some(observe);
    let hit = SERIES
        .try_with(|cache| match &cache.borrow()[slot] {
            Some((t, k, series)) if *t == table && *k == key => {
                if let Some(observe) = observe.take() {
                    observe(series);
                }
                true
            }
            _ => false,
        })
        .unwrap_or(false);
    if !hit {
        let series = miss();
        if let Some(observe) = observe.take() {
            observe(&series);
        }
        let _ = SERIES.try_with(|cache| cache.borrow_mut()[slot] = Some((table, key, series)));
    }
}
