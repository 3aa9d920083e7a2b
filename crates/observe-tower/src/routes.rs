use axum::body::Body;
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use http::header::{ACCEPT_ENCODING, CONTENT_ENCODING, CONTENT_TYPE, VARY};
use http::{HeaderMap, HeaderValue, StatusCode};
use observe_core::MetricsEncoder;

use crate::layer::ObserveLayer;

impl ObserveLayer {
    /// An axum router serving `GET /metrics`: the layer's whole registry in the Prometheus
    /// text format, gzipped when the scraper accepts it. Merge it into your router.
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
        let encoder = MetricsEncoder::new(self.metrics.registry().clone());
        let router = Router::new().route(
            "/metrics",
            get(move |headers: HeaderMap| serve_metrics(encoder.clone(), headers)),
        );
        // With the `pprof` feature: `/debug/pprof/*` too (see `crate::pprof`).
        #[cfg(feature = "pprof")]
        let router = match &self.pprof {
            Some(pprof) => router.merge(crate::pprof::pprof_router(pprof.clone())),
            None => router,
        };
        router
    }
}

async fn serve_metrics(encoder: MetricsEncoder, headers: HeaderMap) -> Response {
    let accept = headers
        .get(ACCEPT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    // Gathering walks every series: keep it off the async workers.
    let encoded = tokio::task::spawn_blocking(move || encoder.encode(accept.as_deref())).await;
    let mut response = match encoded {
        Ok(Ok(metrics)) => {
            let mut response = Response::new(Body::from(metrics.body));
            let headers = response.headers_mut();
            headers.insert(CONTENT_TYPE, HeaderValue::from_static(metrics.content_type));
            if let Some(encoding) = metrics.content_encoding {
                headers.insert(CONTENT_ENCODING, HeaderValue::from_static(encoding));
            }
            response
        }
        Ok(Err(error)) => plain_error(error.to_string()),
        Err(join) => plain_error(format!("encoding metrics failed: {join}")),
    };
    response
        .headers_mut()
        .insert(VARY, HeaderValue::from_static("accept-encoding"));
    response
}

fn plain_error(message: String) -> Response {
    let mut response = Response::new(Body::from(message + "\n"));
    *response.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}
