//! Framework-agnostic core of **observe**: the metric families of `docs/metrics.md` and how
//! they are configured, recorded and served.
//!
//! Users meet it through an adapter (`observe-tower`, `observe-actix`), which re-exports what
//! they configure: [`HttpMetrics`] (one service's metric families on a
//! [`prometheus::Registry`]), [`ObserveBuilder`] (buckets, labels, exclusions, the registry)
//! and [`ObserveError`]. A framework without an adapter serves `/metrics` with
//! [`MetricsEndpoint`] (or encodes a registry itself with [`MetricsEncoder`]). [`adapter`]
//! holds what only an adapter needs: the per-request record that records each request exactly
//! once, route ids, the framework-neutral [`adapter::EndpointResponse`] and the
//! [`adapter::Executor`] an adapter lends the endpoints.
//!
//! With the `runtime-metrics` feature, the `runtime` module adds the `tokio_*` families of the
//! service's tokio runtimes to every registry it builds (read when scraped, nothing per
//! request) and keeps the list of runtimes `/debug/pprof/tasks` dumps.
//!
//! Each file uses only those listed before it: settings → routes → store (series, per-thread
//! caches) → record → exposition (collector, encoding) → the `/metrics` endpoint → the handle
//! and its builder ([`HttpMetrics`], [`ObserveBuilder`]).
//!
//! ```
//! use observe_core::{HttpMetrics, MetricsEncoder};
//!
//! let metrics = HttpMetrics::builder("checkout")
//!     .const_label("region", "eu-west-1")?
//!     .build()?;
//! // An adapter records requests into `metrics`; /metrics serves its registry:
//! let out = MetricsEncoder::new(metrics.registry().clone()).encode(observe_core::Format::Text, None)?;
//! let text = String::from_utf8(out.body).unwrap();
//! assert!(text.contains("process_cpu_seconds_total"));
//! # Ok::<(), observe_core::ObserveError>(())
//! ```

pub mod adapter;
mod body;
mod collector;
mod encode;
mod error;
mod executor;
mod exemplar;
mod exposition;
mod histogram;
mod labels;
mod metrics;
mod metrics_endpoint;
mod native;
mod record;
mod request_labels;
mod response;
mod routes;
#[cfg(feature = "runtime-metrics")]
pub mod runtime;
mod settings;
mod shard;
mod store;
mod sync;
mod trace;

pub use encode::{
    EncodedMetrics, Format, MetricsEncoder, OPENMETRICS_CONTENT_TYPE, PROTOBUF_CONTENT_TYPE,
    TEXT_CONTENT_TYPE,
};
pub use error::ObserveError;
pub use exemplar::DEFAULT_EXEMPLAR_INTERVAL;
pub use metrics::{HttpMetrics, ObserveBuilder};
pub use metrics_endpoint::MetricsEndpoint;
pub use native::{
    DEFAULT_NATIVE_BUCKET_FACTOR, DEFAULT_NATIVE_MAX_BUCKETS, DEFAULT_NATIVE_ZERO_THRESHOLD,
};
pub use request_labels::{in_current_request, InCurrentRequest, InRequest};
pub use routes::{OVERFLOW_ROUTE, UNMATCHED_ROUTE};
pub use settings::{
    DEFAULT_DURATION_BUCKETS, DEFAULT_EXCLUDED_ROUTES, DEFAULT_MAX_CONCURRENT_SCRAPES,
    DEFAULT_MAX_ROUTES, DEFAULT_SCRAPE_TIMEOUT, DEFAULT_SIZE_BUCKETS,
};
pub use trace::{TraceContext, TraceHeaders};

/// The `prometheus` crate this core is built on, re-exported so users register their own
/// metrics on the same [`prometheus::Registry`] without a version mismatch.
pub use prometheus;
