//! Framework-agnostic core of **observe**.
//!
//! This crate owns everything the framework adapters (`observe-tower`, `observe-actix`) share:
//!
//! * the metric families of the contract in `docs/metrics.md` ([`HttpMetrics`]),
//! * the label policy: route templates, `unmatched`, `_OTHER` methods ([`RouteId`], [`MethodLabel`]),
//! * the per-request guard that records a request exactly once ([`RequestRecord`], then
//!   [`ResponseRecord`]: every ending takes the record by value),
//! * `/metrics` encoding with content negotiation ([`MetricsEncoder`]),
//! * configuration ([`ObserveBuilder`]),
//! * with the `pprof` feature, `/debug/pprof/*` for every adapter (`profiling`).
//!
//! It has no tower, axum or actix types: adapters translate their framework's request and
//! response into the few calls of [`RequestRecord`] and [`ResponseRecord`].
//!
//! ```
//! use observe_core::{HttpMetrics, MetricsEncoder};
//!
//! let metrics = HttpMetrics::new("checkout");
//! let record = metrics.id().start("GET", Some("/users/{id}")).expect("route is not excluded");
//! let mut response = record.respond(200);
//! response.add_response_bytes(42);
//! response.finish();
//!
//! let out = MetricsEncoder::new(metrics.registry().clone()).encode(None).unwrap();
//! let text = String::from_utf8(out.body).unwrap();
//! assert!(text.contains(r#"http_server_requests_total{http_request_method="GET",http_response_status_code="200",http_route="/users/{id}",service="checkout"} 1"#));
//! ```

mod answer;
mod cache;
mod collector;
mod config;
mod encode;
mod error;
mod histogram;
mod labels;
mod metrics;
#[cfg(feature = "pprof")]
pub mod profiling;
mod record;
mod routes;
mod shard;

pub use answer::{Answer, TEXT_PLAIN};
pub use config::{
    ObserveBuilder, DEFAULT_DURATION_BUCKETS, DEFAULT_MAX_ROUTES, DEFAULT_SIZE_BUCKETS,
};
pub use encode::{EncodedMetrics, MetricsEncoder, TEXT_CONTENT_TYPE};
pub use error::ObserveError;
pub use labels::MethodLabel;
pub use metrics::{HttpMetrics, MetricsId};
pub use record::{
    ByteTally, RequestRecord, ResponseRecord, CLIENT_CLOSED_REQUEST, INTERNAL_SERVER_ERROR,
};
pub use routes::{RouteId, OVERFLOW_ROUTE, UNMATCHED_ROUTE};

/// The `prometheus` crate this core is built on, re-exported so users register their own
/// metrics on the same [`prometheus::Registry`] without a version mismatch.
pub use prometheus;
