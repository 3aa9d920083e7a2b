use axum::body::Body;
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use http::header::{ACCEPT, ACCEPT_ENCODING, CONTENT_TYPE};
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use observe_core::adapter::Answer;
use observe_core::MetricsEncoder;

use crate::layer::ObserveLayer;

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
        let encoder = self.metrics.encoder();
        let router = Router::new().route(
            "/metrics",
            get(move |headers: HeaderMap| serve_metrics(encoder.clone(), headers)),
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

async fn serve_metrics(encoder: MetricsEncoder, headers: HeaderMap) -> Response {
    let header = |name| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let (accept, accept_encoding) = (header(ACCEPT), header(ACCEPT_ENCODING));
    let scrape = match encoder.admit() {
        Ok(scrape) => scrape,
        Err(busy) => return into_response(busy),
    };
    // Gathering walks every series: keep it off the async workers, and give up waiting after
    // the scrape timeout (the encoding still counts in flight until it ends).
    let work = tokio::task::spawn_blocking(move || {
        scrape.respond(accept.as_deref(), accept_encoding.as_deref())
    });
    let outcome = tokio::time::timeout(encoder.scrape_timeout(), work).await;
    into_response(encoder.conclude(outcome.ok().map(|r| r.map_err(|e| e.to_string()))))
}

/// An observe answer (`/metrics`, `/debug/pprof`) as an axum response.
pub(crate) fn into_response(answer: Answer) -> Response {
    let mut response = Response::new(Body::from(answer.body));
    *response.status_mut() =
        StatusCode::from_u16(answer.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(answer.content_type));
    for (name, value) in answer.headers {
        if let Ok(value) = HeaderValue::from_str(&value) {
            headers.insert(HeaderName::from_static(name), value);
        }
    }
    response
}
