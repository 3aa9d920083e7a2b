//! What one service's metrics are configured with, and the defaults: the plain values the
//! builder ([`ObserveBuilder`](crate::ObserveBuilder)) checks and fills in, and the store and
//! the `/metrics` endpoint read.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::exemplar::DEFAULT_EXEMPLAR_INTERVAL;
use crate::native::{
    DEFAULT_NATIVE_BUCKET_FACTOR, DEFAULT_NATIVE_MAX_BUCKETS, DEFAULT_NATIVE_ZERO_THRESHOLD,
};
use crate::trace::TraceHook;

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

/// Default cap on scrapes encoding at once: node_exporter's `--web.max-requests` default, the
/// Prometheus project's own choice for `promhttp`'s `MaxRequestsInFlight`.
pub const DEFAULT_MAX_CONCURRENT_SCRAPES: usize = 40;

/// Default time an encoding may take before the scrape is answered `503`: Prometheus' default
/// `scrape_timeout`, after which the scraper has given up anyway.
pub const DEFAULT_SCRAPE_TIMEOUT: Duration = Duration::from_secs(10);

/// Every setting of one service's metrics, checked.
#[derive(Debug)]
pub(crate) struct Settings {
    pub(crate) service: String,
    pub(crate) duration_buckets: Vec<f64>,
    pub(crate) size_buckets: Vec<f64>,
    pub(crate) const_labels: BTreeMap<String, String>,
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

impl Settings {
    /// The defaults for `service`: OpenTelemetry buckets, `/metrics` and `/debug/pprof`
    /// excluded, size histograms on, at most 1000 routes, exemplars on.
    pub(crate) fn new(service: String) -> Self {
        Settings {
            service,
            duration_buckets: DEFAULT_DURATION_BUCKETS.to_vec(),
            size_buckets: DEFAULT_SIZE_BUCKETS.to_vec(),
            const_labels: BTreeMap::new(),
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
        }
    }
}
