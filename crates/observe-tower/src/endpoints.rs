//! The routes observe serves in an axum app: `/metrics`, and `/debug/pprof/*` with the
//! `pprof` feature.

use axum::response::Response;
use axum::routing::get;
use axum::Router;
use http::header::{ACCEPT, ACCEPT_ENCODING};
use http::HeaderMap;
use observe_core::MetricsEndpoint;

use crate::layer::ObserveLayer;
use crate::response::{into_response, Tokio};

impl ObserveLayer {
    /// An axum router serving `GET /metrics`: the layer's whole registry in the format the
    /// scraper's `Accept` asks for (Prometheus text by default, OpenMetrics with exemplars, or
    /// protobuf with native histograms), gzipped when it accepts gzip. Merge it into your router.
    ///
    /// With the `pprof` feature it also serves `/debug/pprof/*` (loopback clients only unless
    /// configured otherwise with `with_pprof`: see `docs/pprof.md`).
    ///
    /// ```
    /// use axum::{routing::get, Router};
    /// let observe = observe_tower::ObserveLayer::new("svc");
    /// let app: Router = Router::new()
    ///     .route("/", get(|| async { "hello" }))
    ///     .merge(observe.routes())
    ///     .layer(observe);
    /// ```
    pub fn routes<S>(&self) -> Router<S>
    where
        S: Clone + Send + Sync + 'static,
    {
        #[cfg(feature = "runtime-metrics")]
        observe_core::runtime::watch_current();
        let endpoint = self.metrics.endpoint();
        let router = Router::new().route(
            "/metrics",
            get(move |headers: HeaderMap| serve_metrics(endpoint.clone(), headers)),
        );
        // With the `pprof` feature: `/debug/pprof/*` too (see `crate::pprof`).
        #[cfg(feature = "pprof")]
        let router = match &self.pprof {
            Some(pprof) => router.merge(crate::pprof::pprof_routes(pprof.clone())),
            None => router,
        };
        router
    }
}

async fn serve_metrics(endpoint: MetricsEndpoint, headers: HeaderMap) -> Response {
    let header = |name| headers.get(name).and_then(|v| v.to_str().ok());
    into_response(
        endpoint
            .respond::<Tokio>(header(ACCEPT), header(ACCEPT_ENCODING))
            .await,
    )
}
