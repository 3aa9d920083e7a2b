use std::collections::BTreeMap;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use prometheus::Registry;

use crate::error::ObserveError;
use crate::exemplar::DEFAULT_EXEMPLAR_INTERVAL;
use crate::labels::{is_valid_label_name, METHOD, ROUTE, SERVICE, STATUS};
use crate::native::{
    DEFAULT_NATIVE_BUCKET_FACTOR, DEFAULT_NATIVE_MAX_BUCKETS, DEFAULT_NATIVE_ZERO_THRESHOLD,
};
use crate::scrape::{DEFAULT_MAX_CONCURRENT_SCRAPES, DEFAULT_SCRAPE_TIMEOUT};
use crate::trace::{TraceContext, TraceHeaders, TraceHook};

/// Default `http_server_request_duration_seconds` buckets, in seconds (OpenTelemetry HTTP
/// semantic conventions).
pub const DEFAULT_DURATION_BUCKETS: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
];

/// Default body size buckets, in bytes: powers of four from 64 B to 16 MiB.
pub const DEFAULT_SIZE_BUCKETS: [f64; 10] = [
    64.0, 256.0, 1024.0, 4096.0, 16384.0, 65536.0, 262144.0, 1048576.0, 4194304.0, 16777216.0,
];

/// Routes not recorded by default: observe's own, `/metrics` and the `/debug/pprof` routes of
/// `observe-pprof` (excluded whether or not they are mounted, so turning the adapters' `pprof`
/// feature on or off never changes what is counted).
pub const DEFAULT_EXCLUDED_ROUTES: [&str; 4] = [
    "/metrics",
    "/debug/pprof",
    "/debug/pprof/",
    "/debug/pprof/{profile}",
];

/// Default cap on distinct `http_route` values per service; more land in `_overflow`.
pub const DEFAULT_MAX_ROUTES: usize = 1000;

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
    pub(crate) service: String,
    pub(crate) duration_buckets: Vec<f64>,
    pub(crate) size_buckets: Vec<f64>,
    pub(crate) const_labels: BTreeMap<String, String>,
    pub(crate) registry: Option<Registry>,
    pub(crate) excluded_routes: Vec<String>,
    pub(crate) size_histograms: bool,
    pub(crate) max_routes: usize,
    pub(crate) max_concurrent_scrapes: usize,
    pub(crate) scrape_timeout: Duration,
    pub(crate) native: Option<NativeSettings>,
    pub(crate) exemplars: bool,
    pub(crate) exemplar_interval: Duration,
    pub(crate) trace_hook: Option<TraceHook>,
    #[cfg(feature = "runtime-metrics")]
    pub(crate) runtime_metrics: bool,
    output: PhantomData<fn() -> T>,
}

/// How native histograms are laid out, when on.
#[derive(Debug, Clone)]
pub(crate) struct NativeSettings {
    pub(crate) bucket_factor: f64,
    pub(crate) max_buckets: usize,
    pub(crate) zero_threshold: f64,
}

impl Default for NativeSettings {
    fn default() -> Self {
        NativeSettings {
            bucket_factor: DEFAULT_NATIVE_BUCKET_FACTOR,
            max_buckets: DEFAULT_NATIVE_MAX_BUCKETS,
            zero_threshold: DEFAULT_NATIVE_ZERO_THRESHOLD,
        }
    }
}

impl<T> ObserveBuilder<T> {
    /// Starts from the defaults: OpenTelemetry buckets, a fresh registry with process
    /// metrics, `/metrics` excluded, size histograms on, at most 1000 routes.
    pub fn new(service: impl Into<String>) -> Self {
        ObserveBuilder {
            service: service.into(),
            duration_buckets: DEFAULT_DURATION_BUCKETS.to_vec(),
            size_buckets: DEFAULT_SIZE_BUCKETS.to_vec(),
            const_labels: BTreeMap::new(),
            registry: None,
            excluded_routes: DEFAULT_EXCLUDED_ROUTES.map(str::to_owned).to_vec(),
            size_histograms: true,
            max_routes: DEFAULT_MAX_ROUTES,
            max_concurrent_scrapes: DEFAULT_MAX_CONCURRENT_SCRAPES,
            scrape_timeout: DEFAULT_SCRAPE_TIMEOUT,
            native: None,
            exemplars: true,
            exemplar_interval: DEFAULT_EXEMPLAR_INTERVAL,
            trace_hook: None,
            #[cfg(feature = "runtime-metrics")]
            runtime_metrics: true,
            output: PhantomData,
        }
    }

    /// Upper bounds of the duration histogram, in seconds.
    pub fn buckets(mut self, seconds: &[f64]) -> Result<Self, ObserveError> {
        validate_buckets("http_server_request_duration_seconds", seconds)?;
        self.duration_buckets = seconds.to_vec();
        Ok(self)
    }

    /// Upper bounds of both body size histograms, in bytes.
    pub fn size_buckets(mut self, bytes: &[f64]) -> Result<Self, ObserveError> {
        validate_buckets("http_server_*_body_size_bytes", bytes)?;
        self.size_buckets = bytes.to_vec();
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
        } else if self.const_labels.contains_key(&name) {
            Some("given twice")
        } else {
            None
        };
        if let Some(reason) = reason {
            return Err(ObserveError::InvalidLabel { name, reason });
        }
        self.const_labels.insert(name, value.into());
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
    /// ([`DEFAULT_EXCLUDED_ROUTES`]: `/metrics` and the `/debug/pprof` routes); pass an
    /// empty list to record everything.
    pub fn exclude_routes<I, S>(mut self, routes: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.excluded_routes = routes.into_iter().map(Into::into).collect();
        self
    }

    /// Turns the request and response body size histograms on (default) or off.
    pub fn size_histograms(mut self, enabled: bool) -> Self {
        self.size_histograms = enabled;
        self
    }

    /// Registers the `tokio_*` families of the watched runtimes on the registry (default on;
    /// see [`crate::runtime`]).
    #[cfg(feature = "runtime-metrics")]
    pub fn runtime_metrics(mut self, enabled: bool) -> Self {
        self.runtime_metrics = enabled;
        self
    }

    /// At most this many distinct route templates get their own `http_route` value; further
    /// ones are recorded as `_overflow`. Guards a custom route function against unbounded
    /// series.
    pub fn max_routes(mut self, max_routes: usize) -> Result<Self, ObserveError> {
        if max_routes == 0 {
            return Err(ObserveError::InvalidMaxRoutes(max_routes));
        }
        self.max_routes = max_routes;
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
        self.max_concurrent_scrapes = max;
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
        self.scrape_timeout = timeout;
        Ok(self)
    }

    /// Adds native (exponential) buckets to `http_server_request_duration_seconds`, exposed
    /// in the protobuf format that Prometheus asks for with
    /// `--enable-feature=native-histograms`. The classic buckets stay alongside (as in Go's
    /// client), so text scrapers and existing dashboards see no change. Defaults: bucket
    /// factor 1.1 (schema 3), at most 160 populated buckets, zero threshold 2^-128 s.
    pub fn native_histograms(mut self, enabled: bool) -> Self {
        self.native = enabled.then(|| self.native.take().unwrap_or_default());
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
        self.native
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
        self.native.get_or_insert_with(Default::default).max_buckets = max_buckets;
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
        self.native
            .get_or_insert_with(Default::default)
            .zero_threshold = seconds;
        Ok(self)
    }

    /// Keeps the trace of sampled requests as exemplars on the duration buckets and the
    /// request counter (default: on). A request without trace context costs nothing more.
    pub fn exemplars(mut self, enabled: bool) -> Self {
        self.exemplars = enabled;
        self
    }

    /// The minimum time between two replacements of one bucket's exemplar (default 100 ms):
    /// the newest traced request wins, at most once per interval.
    pub fn exemplar_interval(mut self, interval: Duration) -> Self {
        self.exemplar_interval = interval;
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
        self.trace_hook = Some(TraceHook(Arc::new(hook)));
        self
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
