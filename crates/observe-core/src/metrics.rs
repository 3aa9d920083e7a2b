use quanta::Instant;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, RwLock};

use prometheus::Registry;

use crate::collector::HttpCollector;
use crate::config::ObserveBuilder;
use crate::error::ObserveError;
use crate::histogram::{Bounds, HistogramSnapshot};
use crate::labels::MethodLabel;
use crate::record::RequestRecord;
use crate::routes::{read, write, RouteId, RouteTable};
use crate::shard::{Shard, SHARDS};

/// One service's HTTP metric families, registered on a [`Registry`].
///
/// Cheap to clone (an `Arc`); every clone records into the same series. Framework adapters
/// hold one, or its `Copy` [`MetricsId`], and call [`MetricsId::start`] per request.
///
/// The metrics stay open while anything can read them: a handle, or the registry they are
/// registered on (which `/metrics` serves). Once every handle and that registry are gone they
/// close: requests still in flight end unrecorded, and each thread that recorded lets go of its
/// cached copy at its next request (or when it exits).
#[derive(Debug, Clone)]
pub struct HttpMetrics {
    owner: Arc<Owner>,
    registry: Registry,
}

/// Held by every [`HttpMetrics`] handle and by the collector on the registry: its drop is the
/// moment nobody can read the metrics any more.
#[derive(Debug)]
pub(crate) struct Owner {
    pub(crate) state: Arc<State>,
}

impl Drop for Owner {
    fn drop(&mut self) {
        self.state.closed.store(true, Ordering::Release);
        crate::cache::close_state(self.state.id);
    }
}

/// What requests write into and `/metrics` reads from.
#[derive(Debug)]
pub(crate) struct State {
    /// Never reused, so per-thread caches can key on it.
    pub(crate) id: u64,
    /// Nobody can read these metrics any more (see [`Owner`]).
    pub(crate) closed: AtomicBool,
    pub(crate) service: String,
    pub(crate) const_labels: Vec<(String, String)>,
    pub(crate) routes: RouteTable,
    pub(crate) series: RwLock<HashMap<SeriesKey, Arc<Series>, foldhash::fast::RandomState>>,
    pub(crate) duration_bounds: Bounds,
    pub(crate) size_bounds: Option<Bounds>,
    /// Requests started and finished per method, per shard: the in-flight gauge is their
    /// difference.
    requests: Box<[MethodCounters; SHARDS]>,
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
#[derive(Debug, Default)]
pub(crate) struct Series {
    shards: [OnceLock<Box<[AtomicU64]>>; SHARDS],
}

/// Which of a series' histograms.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Histogram {
    Duration,
    RequestSize,
    ResponseSize,
}

impl Series {
    /// `shard`'s copy of the cells, allocated on first use.
    #[inline]
    fn cells(&self, shard: Shard, state: &State) -> &[AtomicU64] {
        self.shards[shard.index()].get_or_init(|| {
            (0..state.cells_per_shard())
                .map(|_| AtomicU64::new(0))
                .collect()
        })
    }

    /// One histogram summed over the shards.
    pub(crate) fn snapshot(&self, state: &State, which: Histogram) -> HistogramSnapshot {
        let range = state.cells_of(which);
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
}

impl HttpMetrics {
    /// Metrics for `service` with the default configuration on a fresh registry.
    ///
    /// ```
    /// let metrics = observe_core::HttpMetrics::new("checkout");
    /// assert!(metrics.registry().gather().iter().any(|f| f.name() == "process_cpu_seconds_total"));
    /// ```
    pub fn new(service: impl Into<String>) -> Self {
        // A fresh registry holds nothing that could clash with our families.
        Self::builder(service)
            .build()
            .expect("registering on a fresh registry cannot fail")
    }

    /// Configures metrics for `service`; see [`ObserveBuilder`].
    pub fn builder(service: impl Into<String>) -> ObserveBuilder<HttpMetrics> {
        ObserveBuilder::new(service)
    }

    pub(crate) fn from_builder<T>(config: ObserveBuilder<T>) -> Result<Self, ObserveError> {
        let (registry, fresh) = match config.registry {
            Some(registry) => (registry, false),
            None => (Registry::new(), true),
        };
        let state = Arc::new(State {
            id: crate::cache::new_state_id(),
            closed: AtomicBool::new(false),
            const_labels: config.const_labels.into_iter().collect(),
            routes: RouteTable::new(&config.excluded_routes, config.max_routes),
            series: RwLock::new(HashMap::default()),
            duration_bounds: Bounds::new(&config.duration_buckets, 1e9),
            size_bounds: config
                .size_histograms
                .then(|| Bounds::new(&config.size_buckets, 1.0)),
            requests: Box::default(),
            service: config.service,
        });
        crate::cache::open_state(&state);
        let owner = Arc::new(Owner { state });
        let collector = HttpCollector::new(owner.clone())?;
        registry
            .register(Box::new(collector))
            .map_err(ObserveError::Registration)?;
        register_process_metrics(&registry, fresh)?;
        Ok(HttpMetrics { owner, registry })
    }

    #[inline]
    pub(crate) fn state(&self) -> &Arc<State> {
        &self.owner.state
    }

    /// The registry these metrics live on; `/metrics` serves all of it.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The `service` label value.
    pub fn service(&self) -> &str {
        &self.state().service
    }

    /// Resolves a framework's route template (`None`: nothing matched) to its label, for
    /// [`RequestRecord::set_route`].
    #[inline]
    pub fn route(&self, template: Option<&str>) -> RouteId {
        self.state().routes.resolve(template)
    }

    /// Whether a raw request path equals one of the excluded templates (`/metrics` by
    /// default). For adapters that only learn the template after the request started (actix):
    /// a request to a literal excluded path can skip [`MetricsId::start`] altogether and so
    /// never touch `http_server_active_requests`. Interns nothing, takes no lock.
    ///
    /// ```
    /// let metrics = observe_core::HttpMetrics::new("svc");
    /// assert!(metrics.is_excluded_path("/metrics"));
    /// assert!(!metrics.is_excluded_path("/users/7"));
    /// ```
    #[inline]
    pub fn is_excluded_path(&self, path: &str) -> bool {
        self.state().routes.is_excluded_path(path)
    }

    /// The `Copy` handle requests and per-request services hold.
    #[inline]
    pub fn id(&self) -> MetricsId {
        MetricsId(self.state().id)
    }

    /// Current `http_server_active_requests` for one method.
    pub fn active_requests(&self, method: &str) -> i64 {
        self.state()
            .active_requests(MethodLabel::from_method(method))
            .unwrap_or(0)
    }
}

/// A `Copy` handle on [`HttpMetrics`], for what is created or cloned for every request: the
/// service axum clones per request and the request record hold one instead of an `Arc`, so
/// no worker writes a reference count that other workers share (measured in
/// `docs/performance.md`: on two threads a shared count costs more than the whole record).
///
/// It finds the metrics in a per-thread cache. It records while they are open (see
/// [`HttpMetrics`]), and does nothing once they are closed.
///
/// ```
/// let metrics = observe_core::HttpMetrics::new("svc");
/// let id = metrics.id();
/// let record = id.start("GET", Some("/users/{id}")).unwrap();
/// record.respond(200).finish();
/// assert_eq!(metrics.active_requests("GET"), 0);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MetricsId(u64);

impl MetricsId {
    /// Starts recording a request to `template` (the framework's route template; `None`:
    /// nothing matched, or not known yet): the clock starts now, and the request counts in
    /// `http_server_active_requests`. `None` when the route is excluded or the metrics are
    /// closed.
    ///
    /// actix knows the route only after the request ran: start with `None` and call
    /// [`RequestRecord::set_route`] then.
    #[inline]
    pub fn start(self, method: &str, template: Option<&str>) -> Option<RequestRecord> {
        let method = MethodLabel::from_method(method);
        let route = crate::cache::with_state(self.0, |state| {
            let route = state.routes.resolve(template);
            state.count_start(method, route).then_some(route)
        })??;
        Some(RequestRecord::new(self, method, route))
    }

    /// [`HttpMetrics::route`] through the id; [`RouteId::UNMATCHED`] once the metrics are
    /// closed.
    pub fn route(self, template: Option<&str>) -> RouteId {
        crate::cache::with_state(self.0, |state| state.routes.resolve(template))
            .unwrap_or(RouteId::UNMATCHED)
    }

    #[inline]
    pub(crate) fn get(self) -> u64 {
        self.0
    }
}

impl State {
    /// Counts a request to `route` in flight; `false` (and nothing counted) if the route is
    /// excluded.
    #[inline]
    fn count_start(&self, method: MethodLabel, route: RouteId) -> bool {
        if route.is_excluded() {
            return false;
        }
        let shard = Shard::current();
        shard.add(&self.requests[shard.index()].started[method.index()], 1);
        true
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
        crate::cache::with_series(
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
        series.entry(key).or_default().clone()
    }

    #[inline]
    fn observe_into(&self, s: &Series, shard: Shard, nanos: u64, o: &Observation) {
        let cells = s.cells(shard, self);
        let (duration, sizes) = cells.split_at(self.duration_bounds.cells());
        self.duration_bounds.observe(duration, shard, nanos);
        if let Some(bounds) = &self.size_bounds {
            let (request, response) = sizes.split_at(bounds.cells());
            bounds.observe(request, shard, o.request_bytes);
            bounds.observe(response, shard, o.response_bytes);
        }
    }
}

fn register_process_metrics(registry: &Registry, fresh: bool) -> Result<(), ObserveError> {
    #[cfg(target_os = "linux")]
    {
        let pc = prometheus::process_collector::ProcessCollector::for_self();
        match registry.register(Box::new(pc)) {
            Ok(()) => {}
            // A user's registry may already carry process metrics (the default one does).
            Err(prometheus::Error::AlreadyReg) if !fresh => {}
            Err(e) => return Err(ObserveError::Registration(e)),
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (registry, fresh);
    Ok(())
}
