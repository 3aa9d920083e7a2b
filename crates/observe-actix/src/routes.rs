use actix_web::http::header::{HeaderName, HeaderValue, ACCEPT, ACCEPT_ENCODING, CONTENT_TYPE};
use actix_web::http::StatusCode;
use actix_web::{guard, web, HttpRequest, HttpResponse};
use observe_core::adapter::Answer;
use observe_core::MetricsEncoder;

use crate::middleware::Observe;

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
        let encoder = self.metrics.encoder();
        #[cfg(feature = "pprof")]
        let pprof = self.pprof.clone();
        move |config: &mut web::ServiceConfig| {
            // With the `pprof` feature: `/debug/pprof/*` too (see `crate::pprof`).
            #[cfg(feature = "pprof")]
            if let Some(pprof) = &pprof {
                crate::pprof::configure(config, pprof.clone());
            }
            let encoder = encoder.clone();
            config.route(
                "/metrics",
                web::route()
                    .guard(guard::Any(guard::Get()).or(guard::Head()))
                    .to(move |req: HttpRequest| serve_metrics(encoder.clone(), req)),
            );
        }
    }
}

async fn serve_metrics(encoder: MetricsEncoder, req: HttpRequest) -> HttpResponse {
    let header = |name| {
        req.headers()
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
    let work = web::block(move || scrape.respond(accept.as_deref(), accept_encoding.as_deref()));
    let outcome = actix_web::rt::time::timeout(encoder.scrape_timeout(), work).await;
    into_response(encoder.conclude(outcome.ok().map(|r| r.map_err(|e| e.to_string()))))
}

/// An observe answer (`/metrics`, `/debug/pprof`) as an actix-web response.
pub(crate) fn into_response(answer: Answer) -> HttpResponse {
    let status = StatusCode::from_u16(answer.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut response = HttpResponse::build(status);
    response.insert_header((CONTENT_TYPE, answer.content_type));
    for (name, value) in answer.headers {
        if let Ok(value) = HeaderValue::from_str(&value) {
            response.insert_header((HeaderName::from_static(name), value));
        }
    }
    response.body(answer.body)
}
