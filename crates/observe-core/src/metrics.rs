use quanta::Instant;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, RwLock};

use prometheus::Registry;

use crate::collector::HttpCollector;
use crate::config::ObserveBuilder;
use crate::error::ObserveError;
use crate::histogram::{AtomicHistogram, Bounds};
use crate::labels::MethodLabel;
use crate::record::RequestRecord;
use crate::routes::{read, write, RouteId, RouteTable};

/// One service's HTTP metric families, registered on a [`Registry`].
///
/// Cheap to clone (an `Arc`); every clone records into the same series. Framework adapters
/// hold one and call [`route`](Self::route) and [`start`](Self::start) per request.
#[derive(Debug, Clone)]
pub struct HttpMetrics {
    pub(crate) state: Arc<State>,
    registry: Registry,
}

/// What requests write into and `/metrics` reads from.
#[derive(Debug)]
pub(crate) struct State {
    /// Never reused, so per-thread caches can key on it.
    pub(crate) id: u64,
    pub(crate) service: String,
    pub(crate) const_labels: Vec<(String, String)>,
    pub(crate) routes: RouteTable,
    pub(crate) series: RwLock<HashMap<SeriesKey, Arc<Series>, foldhash::fast::RandomState>>,
    pub(crate) duration_bounds: Bounds,
    pub(crate) size_bounds: Option<Bounds>,
    pub(crate) active: [AtomicI64; MethodLabel::COUNT],
    pub(crate) active_seen: [AtomicBool; MethodLabel::COUNT],
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

/// The histograms of one `(route, method, status)`; the request counter is the duration
/// histogram's count, so it costs nothing extra.
#[derive(Debug)]
pub(crate) struct Series {
    pub(crate) duration: AtomicHistogram,
    pub(crate) request_size: Option<AtomicHistogram>,
    pub(crate) response_size: Option<AtomicHistogram>,
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
            id: crate::cache::new_table_id(),
            const_labels: config.const_labels.into_iter().collect(),
            routes: RouteTable::new(&config.excluded_routes, config.max_routes),
            series: RwLock::new(HashMap::default()),
            duration_bounds: Bounds::new(&config.duration_buckets, 1e9),
            size_bounds: config
                .size_histograms
                .then(|| Bounds::new(&config.size_buckets, 1.0)),
            active: Default::default(),
            active_seen: Default::default(),
            service: config.service,
        });
        let collector = HttpCollector::new(state.clone())?;
        registry
            .register(Box::new(collector))
            .map_err(ObserveError::Registration)?;
        register_process_metrics(&registry, fresh)?;
        Ok(HttpMetrics { state, registry })
    }

    /// The registry these metrics live on; `/metrics` serves all of it.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The `service` label value.
    pub fn service(&self) -> &str {
        &self.state.service
    }

    /// Resolves a framework's route template (`None`: nothing matched) to its label.
    #[inline]
    pub fn route(&self, template: Option<&str>) -> RouteId {
        self.state.routes.resolve(template)
    }

    /// Whether a raw request path equals one of the excluded templates (`/metrics` by
    /// default). For adapters that only learn the template after the request started (actix):
    /// a request to a literal excluded path can skip [`start`](Self::start) altogether and so
    /// never touch `http_server_active_requests`. Interns nothing, takes no lock.
    ///
    /// ```
    /// let metrics = observe_core::HttpMetrics::new("svc");
    /// assert!(metrics.is_excluded_path("/metrics"));
    /// assert!(!metrics.is_excluded_path("/users/7"));
    /// ```
    #[inline]
    pub fn is_excluded_path(&self, path: &str) -> bool {
        self.state.routes.is_excluded_path(path)
    }

    /// Starts recording a request; `None` when its route is excluded.
    ///
    /// `route` may be [`RouteId::UNMATCHED`] when the framework only knows it later (actix);
    /// call [`RequestRecord::set_route`] then.
    #[inline]
    pub fn start(&self, method: &str, route: RouteId) -> Option<RequestRecord> {
        if route.is_excluded() {
            return None;
        }
        let method = MethodLabel::from_method(method);
        let i = method.index();
        self.state.active[i].fetch_add(1, Ordering::Relaxed);
        if !self.state.active_seen[i].load(Ordering::Relaxed) {
            self.state.active_seen[i].store(true, Ordering::Relaxed);
        }
        Some(RequestRecord::new(self.state.clone(), method, route))
    }

    /// Current `http_server_active_requests` for one method, summed over nothing else.
    pub fn active_requests(&self, method: &str) -> i64 {
        self.state.active[MethodLabel::from_method(method).index()].load(Ordering::Relaxed)
    }
}

impl State {
    pub(crate) fn observe(&self, o: Observation) {
        let nanos = o.started.elapsed().as_nanos().min(u64::MAX as u128) as u64;
        crate::cache::with_series(
            self.id,
            o.key,
            || self.series(o.key),
            |s| self.observe_into(s, nanos, &o),
        );
    }

    fn series(&self, key: SeriesKey) -> Arc<Series> {
        if let Some(s) = read(&self.series).get(&key) {
            return s.clone();
        }
        let mut series = write(&self.series);
        series
            .entry(key)
            .or_insert_with(|| {
                Arc::new(Series {
                    duration: AtomicHistogram::new(&self.duration_bounds),
                    request_size: self.size_bounds.as_ref().map(AtomicHistogram::new),
                    response_size: self.size_bounds.as_ref().map(AtomicHistogram::new),
                })
            })
            .clone()
    }

    #[inline]
    fn observe_into(&self, s: &Series, nanos: u64, o: &Observation) {
        s.duration.observe(&self.duration_bounds, nanos);
        if let (Some(bounds), Some(req), Some(resp)) =
            (&self.size_bounds, &s.request_size, &s.response_size)
        {
            req.observe(bounds, o.request_bytes);
            resp.observe(bounds, o.response_bytes);
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
