use std::sync::Arc;

use http::request::Parts;
use observe_core::{HttpMetrics, ObserveBuilder};
use tower_layer::Layer;

use crate::route::RouteFn;
use crate::service::Observe;

/// The tower [`Layer`] that records per-route RED metrics.
///
/// Cheap to clone: clones share the same series.
///
/// ```
/// use observe_tower::ObserveLayer;
///
/// let plain = ObserveLayer::new("checkout");
/// let tuned = ObserveLayer::builder("checkout")
///     .buckets(&[0.01, 0.05, 0.25, 1.0])?
///     .const_label("region", "eu-west-1")?
///     .exclude_routes(["/metrics", "/healthz"])
///     .build()?;
/// # Ok::<(), observe_tower::ObserveError>(())
/// ```
///
/// For a router mounted with `Router::nest_service`, the outer router does not know the
/// inner template; layer the inner router with a clone of the same layer and the request is
/// still recorded once, by the outer layer, under the full template.
///
/// The services it wraps hold the metrics' id, not a reference (axum clones a layered route for
/// every request): they record while the metrics can be read, that is while `routes()`, the
/// registry or a clone of the layer is alive. Mount `routes()` (or keep the registry you gave
/// the builder) as a server does.
#[derive(Debug, Clone)]
pub struct ObserveLayer {
    pub(crate) metrics: HttpMetrics,
    pub(crate) route_fn: Option<RouteFn>,
    /// What `routes()` serves under `/debug/pprof`; `None`: nothing.
    #[cfg(feature = "pprof")]
    pub(crate) pprof: Option<observe_pprof::Pprof>,
}

impl ObserveLayer {
    /// Metrics for `service` with the defaults, on a registry of their own.
    pub fn new(service: impl Into<String>) -> Self {
        HttpMetrics::new(service).into()
    }

    /// Configures buckets, labels, registry, exclusions; see [`ObserveBuilder`].
    pub fn builder(service: impl Into<String>) -> ObserveBuilder<ObserveLayer> {
        ObserveBuilder::new(service)
    }

    /// Takes `http_route` from `route_fn` instead of axum's `MatchedPath` (for hyper or tonic,
    /// whose gRPC paths are already bounded). Return a borrowed template, or `None` for
    /// `unmatched`; templates past `max_routes` are recorded as `_overflow`.
    ///
    /// ```
    /// let layer = observe_tower::ObserveLayer::new("grpc")
    ///     .with_route_fn(|parts| Some(parts.uri.path()));
    /// ```
    pub fn with_route_fn<F>(mut self, route_fn: F) -> Self
    where
        F: for<'a> Fn(&'a Parts) -> Option<&'a str> + Send + Sync + 'static,
    {
        self.route_fn = Some(RouteFn(Arc::new(route_fn)));
        self
    }

    /// The metrics this layer records into (and their registry).
    pub fn metrics(&self) -> &HttpMetrics {
        &self.metrics
    }
}

impl From<HttpMetrics> for ObserveLayer {
    fn from(metrics: HttpMetrics) -> Self {
        // The runtime the layer is built in is the service's (`#[tokio::main]`); `routes()`
        // watches it too, for a layer built before the runtime started.
        #[cfg(feature = "runtime-metrics")]
        observe_core::runtime::watch_current();
        ObserveLayer {
            metrics,
            route_fn: None,
            #[cfg(feature = "pprof")]
            pprof: Some(observe_pprof::Pprof::new()),
        }
    }
}

impl<S> Layer<S> for ObserveLayer {
    type Service = Observe<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Observe {
            inner,
            metrics: self.metrics.id(),
            route_fn: self.route_fn.clone(),
        }
    }
}
