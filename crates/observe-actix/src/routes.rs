use actix_web::http::header::{HeaderValue, ACCEPT_ENCODING, CONTENT_ENCODING, CONTENT_TYPE, VARY};
use actix_web::{guard, web, HttpRequest, HttpResponse};
use observe_core::MetricsEncoder;

use crate::middleware::Observe;

impl Observe {
    /// Serves `GET /metrics` (and `HEAD`): the middleware's whole registry in the Prometheus
    /// text format, gzipped when the scraper accepts it. Encoding runs on actix's blocking
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
        let encoder = MetricsEncoder::new(self.metrics.registry().clone());
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
    let accept = req
        .headers()
        .get(ACCEPT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    // Gathering walks every series: keep it off the async workers.
    let encoded = web::block(move || encoder.encode(accept.as_deref())).await;
    let mut response = match encoded {
        Ok(Ok(metrics)) => {
            let mut response = HttpResponse::Ok();
            response.insert_header((CONTENT_TYPE, metrics.content_type));
            if let Some(encoding) = metrics.content_encoding {
                response.insert_header((CONTENT_ENCODING, encoding));
            }
            response.body(metrics.body)
        }
        Ok(Err(error)) => plain_error(error.to_string()),
        Err(blocking) => plain_error(format!("encoding metrics failed: {blocking}")),
    };
    response
        .headers_mut()
        .insert(VARY, HeaderValue::from_static("accept-encoding"));
    response
}

fn plain_error(message: String) -> HttpResponse {
    HttpResponse::InternalServerError()
        .insert_header((CONTENT_TYPE, "text/plain; charset=utf-8"))
        .body(message + "\n")
}
