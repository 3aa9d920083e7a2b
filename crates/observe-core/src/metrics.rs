//! What users hold and configure: [`HttpMetrics`], one service's metric families on a
//! registry, and [`ObserveBuilder`], which checks every setting and builds them (the store, its
//! collector on the registry, the process metrics, the `/metrics` endpoint's limits).

use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use prometheus::Registry;

use crate::collector::HttpCollector;
use crate::error::ObserveError;
use crate::labels::{is_valid_label_name, MethodLabel, METHOD, ROUTE, SERVICE, STATUS};
use crate::metrics_endpoint::{MetricsEndpoint, ScrapeLimits};
use crate::record::MetricsId;
use crate::routes::RouteId;
use crate::settings::Settings;
use crate::store::{MetricsStore, StoreOwner};
use crate::trace::{TraceContext, TraceHeaders, TraceHook};

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
    owner: Arc<StoreOwner>,
    registry: Registry,
    limits: Arc<ScrapeLimits>,
}

/// Names the service only: the store behind it holds every series.
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
    pub(crate) fn store(&self) -> &Arc<MetricsStore> {
        &self.owner.store
    }

    /// The registry these metrics live on; `/metrics` serves all of it.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The `/metrics` endpoint of this registry, with the configured scrape limits and its
    /// own metrics (`observe_metrics_handler_*`): what the adapters' routes serve.
    pub fn endpoint(&self) -> MetricsEndpoint {
        MetricsEndpoint::with_limits(self.registry.clone(), self.limits.clone())
    }

    /// The `service` label value.
    pub fn service(&self) -> &str {
        &self.store().service
    }

    /// Resolves a framework's route template (`None`: nothing matched) to its label, for
    /// [`RequestRecord::set_route`](crate::adapter::RequestRecord::set_route).
    #[inline]
    pub fn route(&self, template: Option<&str>) -> RouteId {
        self.store().routes.resolve(template)
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
        self.store().routes.is_excluded_path(path)
    }

    /// The `Copy` handle requests and per-request services hold.
    #[inline]
    pub fn id(&self) -> MetricsId {
        MetricsId(self.store().id)
    }

    /// Current `http_server_active_requests` for one method.
    pub fn active_requests(&self, method: &str) -> i64 {
        self.store()
            .active_requests(MethodLabel::from_method(method))
            .unwrap_or(0)
    }
}

/// Configuration of one service's metrics. Framework crates hand it out as
/// `ObserveLayer::builder` / `Observe::builder`; `build` gives whatever they are (`T`).
///
/// ```
/// use observe_core::{HttpMetrics, ObserveBuilder};
///
/// let registry = prometheus::Registry::new();
/// let metrics: HttpMetrics = ObserveBuilder::new("checkout")
///     .buckets(&[0.01, 0.1, 1.0])?
///     .const_label("region", "eu-west-1")?
///     .registry(registry.clone())
///     .exclude_routes(["/metrics", "/healthz"])
///     .size_histograms(false)
///     .build()?;
/// # Ok::<(), observe_core::ObserveError>(())
/// ```
#[derive(Debug)]
#[must_use]
pub struct ObserveBuilder<T> {
    settings: Settings,
    registry: Option<Registry>,
    output: PhantomData<fn() -> T>,
}

impl<T> ObserveBuilder<T> {
    /// Starts from the defaults: OpenTelemetry buckets, a fresh registry with process
    /// metrics, `/metrics` and `/debug/pprof` excluded, size histograms on, at most 1000
    /// routes.
    pub fn new(service: impl Into<String>) -> Self {
        ObserveBuilder {
            settings: Settings::new(service.into()),
            registry: None,
            output: PhantomData,
        }
    }

    /// Upper bounds of the duration histogram, in seconds.
    pub fn buckets(mut self, seconds: &[f64]) -> Result<Self, ObserveError> {
        validate_buckets("http_server_request_duration_seconds", seconds)?;
        self.settings.duration_buckets = seconds.to_vec();
        Ok(self)
    }

    /// Upper bounds of both body size histograms, in bytes.
    pub fn size_buckets(mut self, bytes: &[f64]) -> Result<Self, ObserveError> {
        validate_buckets("http_server_*_body_size_bytes", bytes)?;
        self.settings.size_buckets = bytes.to_vec();
        Ok(self)
    }

    /// A label with a fixed value on every series of this service (e.g. `region`).
    pub fn const_label(
        mut self,
        name: impl Into<String>,
        value: impl Into<String>,
    ) -> Result<Self, ObserveError> {
        let name = name.into();
        let reason = if !is_valid_label_name(&name) {
            Some("not a Prometheus label name ([a-zA-Z_][a-zA-Z0-9_]*, no leading __)")
        } else if [SERVICE, ROUTE, METHOD, STATUS, "le"].contains(&name.as_str()) {
            Some("observe sets this label itself")
        } else if self.settings.const_labels.contains_key(&name) {
            Some("given twice")
        } else {
            None
        };
        if let Some(reason) = reason {
            return Err(ObserveError::InvalidLabel { name, reason });
        }
        self.settings.const_labels.insert(name, value.into());
        Ok(self)
    }

    /// Registers on this registry instead of a fresh one, so metrics the application registers
    /// there appear on the same `/metrics` (pass `prometheus::default_registry().clone()` to
    /// serve what the `prometheus` crate's `register_*!` macros create).
    pub fn registry(mut self, registry: Registry) -> Self {
        self.registry = Some(registry);
        self
    }

    /// Route templates whose requests are not recorded at all. Replaces the default
    /// ([`DEFAULT_EXCLUDED_ROUTES`](crate::DEFAULT_EXCLUDED_ROUTES): `/metrics` and the `/debug/pprof` routes); pass an
    /// empty list to record everything.
    pub fn exclude_routes<I, S>(mut self, routes: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.settings.excluded_routes = routes.into_iter().map(Into::into).collect();
        self
    }

    /// Turns the request and response body size histograms on (default) or off.
    pub fn size_histograms(mut self, enabled: bool) -> Self {
        self.settings.size_histograms = enabled;
        self
    }

    /// Registers the `tokio_*` families of the watched runtimes on the registry (default on;
    /// see [`crate::runtime`]).
    #[cfg(feature = "runtime-metrics")]
    pub fn runtime_metrics(mut self, enabled: bool) -> Self {
        self.settings.runtime_metrics = enabled;
        self
    }

    /// At most this many distinct route templates get their own `http_route` value; further
    /// ones are recorded as `_overflow`. Guards a custom route function against unbounded
    /// series.
    pub fn max_routes(mut self, max_routes: usize) -> Result<Self, ObserveError> {
        if max_routes == 0 {
            return Err(ObserveError::InvalidMaxRoutes(max_routes));
        }
        self.settings.max_routes = max_routes;
        Ok(self)
    }

    /// At most this many scrapes of `/metrics` encode at once (default 40, node_exporter's
    /// choice); more are answered `503` at once, so that many scrapers of a large registry
    /// cannot pile up encoding work.
    pub fn max_concurrent_scrapes(mut self, max: usize) -> Result<Self, ObserveError> {
        if max == 0 {
            return Err(ObserveError::InvalidScrapeLimit(
                "max_concurrent_scrapes must be at least 1".to_owned(),
            ));
        }
        self.settings.max_concurrent_scrapes = max;
        Ok(self)
    }

    /// How long encoding one scrape may take before it is answered `503` (default 10 s,
    /// Prometheus' default `scrape_timeout`).
    pub fn scrape_timeout(mut self, timeout: Duration) -> Result<Self, ObserveError> {
        if timeout.is_zero() {
            return Err(ObserveError::InvalidScrapeLimit(
                "scrape_timeout must be longer than zero".to_owned(),
            ));
        }
        self.settings.scrape_timeout = timeout;
        Ok(self)
    }

    /// Adds native (exponential) buckets to `http_server_request_duration_seconds`, exposed
    /// in the protobuf format that Prometheus asks for with
    /// `--enable-feature=native-histograms`. The classic buckets stay alongside (as in Go's
    /// client), so text scrapers and existing dashboards see no change. Defaults: bucket
    /// factor 1.1 (schema 3), at most 160 populated buckets, zero threshold 2^-128 s.
    pub fn native_histograms(mut self, enabled: bool) -> Self {
        self.settings.native = enabled.then(|| self.settings.native.take().unwrap_or_default());
        self
    }

    /// The largest ratio between a native bucket's bounds (> 1); the schema is the coarsest
    /// whose ratio is at most this. Turns native histograms on.
    pub fn native_bucket_factor(mut self, factor: f64) -> Result<Self, ObserveError> {
        if factor.is_nan() || factor <= 1.0 || factor.is_infinite() {
            return Err(ObserveError::InvalidNativeHistogram(format!(
                "bucket factor {factor} is not a finite number above 1"
            )));
        }
        self.settings
            .native
            .get_or_insert_with(Default::default)
            .bucket_factor = factor;
        Ok(self)
    }

    /// At most this many populated native buckets per series; more halve the resolution until
    /// they fit. Turns native histograms on.
    pub fn native_max_buckets(mut self, max_buckets: usize) -> Result<Self, ObserveError> {
        if max_buckets == 0 {
            return Err(ObserveError::InvalidNativeHistogram(
                "the maximum bucket count must be at least 1".to_owned(),
            ));
        }
        self.settings
            .native
            .get_or_insert_with(Default::default)
            .max_buckets = max_buckets;
        Ok(self)
    }

    /// Durations at most this long (seconds, ≥ 0) count in the native zero bucket. Turns
    /// native histograms on.
    pub fn native_zero_threshold(mut self, seconds: f64) -> Result<Self, ObserveError> {
        if seconds.is_nan() || seconds < 0.0 || seconds.is_infinite() {
            return Err(ObserveError::InvalidNativeHistogram(format!(
                "zero threshold {seconds} is not a finite number of seconds, 0 or more"
            )));
        }
        self.settings
            .native
            .get_or_insert_with(Default::default)
            .zero_threshold = seconds;
        Ok(self)
    }

    /// Keeps the trace of sampled requests as exemplars on the duration buckets and the
    /// request counter (default: on). A request without trace context costs nothing more.
    pub fn exemplars(mut self, enabled: bool) -> Self {
        self.settings.exemplars = enabled;
        self
    }

    /// The minimum time between two replacements of one bucket's exemplar (default 100 ms):
    /// the newest traced request wins, at most once per interval.
    pub fn exemplar_interval(mut self, interval: Duration) -> Self {
        self.settings.exemplar_interval = interval;
        self
    }

    /// Where a request's trace comes from, instead of its W3C `traceparent` header: e.g. the
    /// current OpenTelemetry context, or a vendor header. Called once per request with its
    /// headers; `None` means no exemplar.
    ///
    /// ```
    /// use observe_core::{HttpMetrics, TraceContext};
    ///
    /// let metrics = HttpMetrics::builder("svc")
    ///     .trace_context(|headers| {
    ///         let id = headers.get("x-request-trace")?;
    ///         let id: [u8; 16] = id.get(..16)?.try_into().ok()?;
    ///         TraceContext::new(id, [1; 8])
    ///     })
    ///     .build()?;
    /// # Ok::<(), observe_core::ObserveError>(())
    /// ```
    pub fn trace_context<F>(mut self, hook: F) -> Self
    where
        F: Fn(&dyn TraceHeaders) -> Option<TraceContext> + Send + Sync + 'static,
    {
        self.settings.trace_hook = Some(TraceHook(Arc::new(hook)));
        self
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
        let settings = self.settings;
        #[cfg(feature = "runtime-metrics")]
        let runtime_metrics = settings.runtime_metrics;
        let (max_scrapes, scrape_timeout) =
            (settings.max_concurrent_scrapes, settings.scrape_timeout);
        let owner = StoreOwner::open(settings);
        let collector = HttpCollector::new(owner.clone())?;
        registry
            .register(Box::new(collector))
            .map_err(ObserveError::Registration)?;
        register_process_metrics(&registry, fresh)?;
        #[cfg(feature = "runtime-metrics")]
        if runtime_metrics {
            register_runtime_metrics(&registry)?;
        }
        let limits =
            ScrapeLimits::registered(max_scrapes, scrape_timeout, &registry, &owner.store.service)?;
        Ok(HttpMetrics {
            owner,
            registry,
            limits: Arc::new(limits),
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

fn validate_buckets(metric: &'static str, bounds: &[f64]) -> Result<(), ObserveError> {
    let reason = if bounds.is_empty() {
        Some("no buckets given".to_owned())
    } else if let Some(b) = bounds.iter().find(|b| !b.is_finite() || **b <= 0.0) {
        Some(format!("{b} is not a finite positive number"))
    } else {
        bounds
            .windows(2)
            .find(|w| w[0] >= w[1])
            .map(|w| format!("{} is not below {}", w[0], w[1]))
    };
    match reason {
        Some(reason) => Err(ObserveError::InvalidBuckets { metric, reason }),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn builder() -> ObserveBuilder<crate::HttpMetrics> {
        ObserveBuilder::new("svc")
    }

    #[test]
    fn bad_buckets_are_refused_with_a_reason() {
        for bad in [
            &[][..],
            &[0.1, 0.1],
            &[0.2, 0.1],
            &[-1.0],
            &[f64::NAN],
            &[f64::INFINITY],
        ] {
            let err = builder().buckets(bad).unwrap_err();
            assert!(
                matches!(err, ObserveError::InvalidBuckets { .. }),
                "{bad:?}"
            );
        }
        assert!(builder().buckets(&[0.1, 0.2]).is_ok());
    }

    #[test]
    fn const_labels_may_not_shadow_contract_labels_or_be_invalid() {
        for bad in ["service", "http_route", "le", "1abc", "a-b", "__x"] {
            assert!(builder().const_label(bad, "x").is_err(), "{bad}");
        }
        let b = builder().const_label("region", "eu").unwrap();
        assert!(b.const_label("region", "us").is_err());
    }

    #[test]
    fn zero_max_routes_is_refused() {
        assert!(builder().max_routes(0).is_err());
    }
}
