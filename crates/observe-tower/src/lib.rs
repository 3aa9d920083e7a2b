//! Per-route RED metrics for tower stacks: axum, hyper, tonic.
//!
//! ```no_run
//! use axum::{routing::get, Router};
//! use observe_tower::ObserveLayer;
//!
//! # async fn run() {
//! let observe = ObserveLayer::new("checkout");
//! let app = Router::new()
//!     .route("/users/{id}", get(|| async { "hi" }))
//!     .merge(observe.routes()) // GET /metrics
//!     .layer(observe);
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await.unwrap();
//! axum::serve(listener, app).await.unwrap();
//! # }
//! ```
//!
//! Every request is recorded once, when its response body ends or is dropped, into the
//! families of `docs/metrics.md`: `http_server_request_duration_seconds`,
//! `http_server_requests_total`, `http_server_active_requests` and the body size histograms.
//! `http_route` is axum's route template ([`axum::extract::MatchedPath`]), `unmatched` when
//! there is none; without axum, give a route function with [`ObserveLayer::with_route_fn`].
//! For tonic, turn on the `tonic` feature: gRPC request bodies carry no `Content-Length`, and
//! with it their size is the bytes the handler read.
//!
//! Apply the layer once, on the outermost router. A router mounted with `nest_service`
//! keeps its full template when it carries the same layer too (see [`ObserveLayer`]).

mod body;
#[cfg(feature = "axum")]
mod endpoints;
mod future;
mod layer;
#[cfg(feature = "pprof")]
mod pprof;
#[cfg(feature = "axum")]
mod response;
mod route;
mod service;

pub use body::ResponseBody;
pub use future::ResponseFuture;
pub use layer::ObserveLayer;
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
pub use service::Observe;
