//! The handles: [`HttpMetrics`], what users hold and configure, and [`MetricsId`], the `Copy`
//! handle adapters give each request. [`ObserveBuilder::build`] assembles them here: the
//! state, its collector on the registry, the process metrics.

use std::sync::Arc;

use prometheus::Registry;

use crate::collector::HttpCollector;
use crate::config::ObserveBuilder;
use crate::encode::MetricsEncoder;
use crate::error::ObserveError;
use crate::labels::MethodLabel;
use crate::record::RequestRecord;
use crate::routes::RouteId;
use crate::scrape::ScrapeLimits;
use crate::state::{with_state, Owner, State};
use crate::trace::{self, TraceHeaders};

/// One service's HTTP metric families, registered on a [`Registry`].
///
/// Cheap to clone (an `Arc`); every clone records into the same series. Framework adapters
/// hold one, or its `Copy` [`MetricsId`], and call [`MetricsId::start`] per request.
///
/// The metrics stay open while anything can read them: a handle, or the registry they are
/// registered on (which `/metrics` serves). Once every handle and that registry are gone they
/// close: requests still in flight end unrecorded, and each thread that recorded lets go of its
/// cached copy at its next request (or when it exits).
#[derive(Clone)]
pub struct HttpMetrics {
    owner: Arc<Owner>,
    registry: Registry,
    scrape: Arc<ScrapeLimits>,
}

/// Names the service only: the state behind it holds every series.
impl std::fmt::Debug for HttpMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpMetrics")
            .field("service", &self.service())
            .finish_non_exhaustive()
    }
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

    #[inline]
    pub(crate) fn state(&self) -> &Arc<State> {
        &self.owner.state
    }

    /// The registry these metrics live on; `/metrics` serves all of it.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The `/metrics` encoder of this registry, with the configured scrape limits and the
    /// handler's own metrics (`observe_metrics_handler_*`): what the adapters' routes serve.
    pub fn encoder(&self) -> MetricsEncoder {
        MetricsEncoder::with_limits(self.registry.clone(), self.scrape.clone())
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
        // Not a shared path with `start_with`: carrying the (empty) trace through one measured
        // 657 instructions a request against 645 here (callgrind, 2026-12-01), on the path
        // every request without headers to read takes.
        let method = MethodLabel::from_method(method);
        let route = with_state(self.0, |state| {
            let route = state.routes.resolve(template);
            (!route.is_excluded()).then(|| {
                state.count_start(method);
                route
            })
        })??;
        Some(RequestRecord::new(self.0, method, route, None))
    }

    /// [`start`](Self::start) for a request with these `headers`: a sampled trace in them
    /// (its `traceparent`, or what the configured
    /// [`trace_context`](crate::ObserveBuilder::trace_context) hook finds) becomes the
    /// exemplar of the request's bucket. A request without one costs one header lookup.
    #[inline]
    pub fn start_with(
        self,
        method: &str,
        template: Option<&str>,
        headers: &impl TraceHeaders,
    ) -> Option<RequestRecord> {
        let method = MethodLabel::from_method(method);
        let (route, trace) = with_state(self.0, |state| {
            let route = state.routes.resolve(template);
            // An excluded route (`/metrics`) is not recorded: its headers are not read.
            if route.is_excluded() {
                return None;
            }
            // Read before the start is counted: a trace hook that panics leaves no request in
            // flight for ever.
            let trace = state
                .exemplars
                .then(|| trace::extract(state.trace_hook.as_ref(), headers))
                .flatten();
            state.count_start(method);
            Some((route, trace))
        })??;
        Some(RequestRecord::new(self.0, method, route, trace))
    }

    /// [`HttpMetrics::route`] through the id; [`RouteId::UNMATCHED`] once the metrics are
    /// closed.
    pub fn route(self, template: Option<&str>) -> RouteId {
        with_state(self.0, |state| state.routes.resolve(template)).unwrap_or(RouteId::UNMATCHED)
    }
}

impl<T: From<HttpMetrics>> ObserveBuilder<T> {
    /// Registers the metric families and returns the configured middleware.
    ///
    /// Fails when the registry already holds this service's metrics.
    pub fn build(mut self) -> Result<T, ObserveError> {
        let (registry, fresh) = match self.registry.take() {
            Some(registry) => (registry, false),
            None => (Registry::new(), true),
        };
        #[cfg(feature = "runtime-metrics")]
        let runtime_metrics = self.runtime_metrics;
        let (max_scrapes, scrape_timeout) = (self.max_concurrent_scrapes, self.scrape_timeout);
        let owner = Owner::open(self);
        let collector = HttpCollector::new(owner.clone())?;
        registry
            .register(Box::new(collector))
            .map_err(ObserveError::Registration)?;
        register_process_metrics(&registry, fresh)?;
        #[cfg(feature = "runtime-metrics")]
        if runtime_metrics {
            register_runtime_metrics(&registry)?;
        }
        let scrape =
            ScrapeLimits::registered(max_scrapes, scrape_timeout, &registry, &owner.state.service)?;
        Ok(HttpMetrics {
            owner,
            registry,
            scrape: Arc::new(scrape),
        }
        .into())
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

/// The `tokio_*` families, once per registry (a second service on it shares them).
#[cfg(feature = "runtime-metrics")]
fn register_runtime_metrics(registry: &Registry) -> Result<(), ObserveError> {
    let collector = crate::runtime::RuntimeCollector::new().map_err(ObserveError::Registration)?;
    match registry.register(Box::new(collector)) {
        Ok(()) | Err(prometheus::Error::AlreadyReg) => Ok(()),
        Err(e) => Err(ObserveError::Registration(e)),
    }
}
