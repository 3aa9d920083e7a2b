//! The routes observe serves in an actix-web app: `/metrics`, and `/debug/pprof/*` with the
//! `pprof` feature.

use actix_web::http::header::{ACCEPT, ACCEPT_ENCODING};
use actix_web::{guard, web, HttpRequest, HttpResponse};
use observe_core::MetricsEndpoint;

use crate::middleware::Observe;
use crate::response::{into_response, Actix};

impl Observe {
    /// Serves `GET /metrics` (and `HEAD`): the middleware's whole registry in the format the
    /// scraper's `Accept` asks for (Prometheus text by default, OpenMetrics with exemplars, or
    /// protobuf with native histograms), gzipped when it accepts gzip. Encoding runs on actix's blocking
    /// thread pool, off the async workers.
    ///
    /// With the `pprof` feature it also serves `/debug/pprof/*` (loopback clients only unless
    /// configured otherwise with `with_pprof`: see `docs/pprof.md`).
    ///
    /// ```
    /// use actix_web::{web, App};
    /// let observe = observe_actix::Observe::new("svc");
    /// let app = App::new()
    ///     .route("/", web::get().to(|| async { "hello" }))
    ///     .configure(observe.routes())
    ///     .wrap(observe.clone());
    /// ```
    pub fn routes(&self) -> impl Fn(&mut web::ServiceConfig) + Clone + 'static {
        let endpoint = self.metrics.endpoint();
        #[cfg(feature = "pprof")]
        let pprof = self.pprof.clone();
        move |config: &mut web::ServiceConfig| {
            // With the `pprof` feature: `/debug/pprof/*` too (see `crate::pprof`).
            #[cfg(feature = "pprof")]
            if let Some(pprof) = &pprof {
                crate::pprof::configure(config, pprof.clone());
            }
            let endpoint = endpoint.clone();
            config.route(
                "/metrics",
                web::route()
                    .guard(guard::Any(guard::Get()).or(guard::Head()))
                    .to(move |req: HttpRequest| serve_metrics(endpoint.clone(), req)),
            );
        }
    }
}

async fn serve_metrics(endpoint: MetricsEndpoint, req: HttpRequest) -> HttpResponse {
    let header = |name| req.headers().get(name).and_then(|v| v.to_str().ok());
    into_response(
        endpoint
            .respond::<Actix>(header(ACCEPT), header(ACCEPT_ENCODING))
            .await,
    )
}
