//! Per-route RED metrics for actix-web: `.wrap(Observe::new("svc"))`.
//!
//! ```no_run
//! use actix_web::{web, App, HttpServer};
//! use observe_actix::Observe;
//!
//! #[actix_web::main]
//! async fn main() -> std::io::Result<()> {
//!     let observe = Observe::new("checkout");
//!     HttpServer::new(move || {
//!         App::new()
//!             .route("/users/{id}", web::get().to(|| async { "hi" }))
//!             .configure(observe.routes()) // GET /metrics
//!             .wrap(observe.clone())
//!     })
//!     .on_connect(observe_actix::on_connect) // a client that gave up is recorded as 499
//!     .bind("127.0.0.1:3000")?
//!     .run()
//!     .await
//! }
//! ```
//!
//! Every request is recorded once, when its response body ends or is dropped, into the
//! families of `docs/metrics.md`: `http_server_request_duration_seconds`,
//! `http_server_requests_total`, `http_server_active_requests` and the body size histograms.
//!
//! * `http_route` is the matched resource pattern, full through `web::scope` nesting
//!   (`/api/items/{id}`), `unmatched` when no resource matched (the default service answered).
//! * An inner service `Err` is recorded with the status of the error response actix sends for
//!   it, under the pattern actix's resource map gives for the request path.
//! * A handler panic is recorded as `500`. When actix drops a request because its connection
//!   failed (the client reset it, or a write failed mid-body) the request is recorded as
//!   `499`. actix-web lets a handler run on after the client closed the connection and then
//!   writes the response to the socket, which the kernel accepts: install [`on_connect`] with
//!   `HttpServer::on_connect` and such a request is recorded as `499` too (without it, with the
//!   handler's status).
//! * Request body bytes are the bytes the handler read from the payload; a request without a
//!   payload costs nothing extra, one with a payload two small allocations (the counter and
//!   the boxed counting stream).
//! * Requests to an excluded literal template (`/metrics` by default) are not recorded at all,
//!   not even in the active-requests gauge. An excluded template with parameters is only known
//!   after routing: such requests count in the gauge while in flight, never in the series.
//!
//! Wrap the `App`, once. Build `Observe` outside `HttpServer::new` and clone it into the app
//! factory: the clones share one set of series across all workers.

mod body;
mod connection;
mod endpoints;
mod future;
mod middleware;
#[cfg(feature = "pprof")]
mod pprof;
mod response;
mod route;
mod service;

pub use body::ResponseBody;
pub use connection::on_connect;
pub use future::ResponseFuture;
pub use middleware::Observe;
pub use observe_core::{
    self, in_current_request, prometheus, HttpMetrics, InCurrentRequest, ObserveBuilder,
    ObserveError,
};
#[cfg(feature = "pprof")]
pub use observe_pprof::{
    self, Access, ContinuousProfiling, Pprof, ProfiledAllocator, ProfilingSettings,
};
#[cfg(feature = "pprof")]
pub use pprof::{pprof_routes, serve_pprof_on_loopback};
pub use service::ObserveMiddleware;
