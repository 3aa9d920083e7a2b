use thiserror::Error;

/// Everything that can go wrong while configuring observe or encoding `/metrics`.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ObserveError {
    /// Histogram buckets must be finite, positive and strictly increasing.
    #[error("invalid buckets for {metric}: {reason} (give finite, positive, strictly increasing upper bounds, e.g. [0.005, 0.01, 0.025])")]
    InvalidBuckets {
        /// Which histogram the buckets were meant for.
        metric: &'static str,
        /// What is wrong with them.
        reason: String,
    },
    /// A constant label name is not a valid Prometheus label name or clashes with a contract label.
    #[error("invalid constant label name {name:?}: {reason}")]
    InvalidLabel {
        /// The offending label name.
        name: String,
        /// Why it was refused.
        reason: &'static str,
    },
    /// `max_routes` must leave room for at least one route.
    #[error("max_routes must be at least 1, got {0}")]
    InvalidMaxRoutes(usize),
    /// The registry refused the metric families, e.g. a second layer with the same service name.
    #[error("could not register observe's metrics: {0} (each service name may be registered once per registry, and services sharing a registry must use the same constant label names)")]
    Registration(#[source] prometheus::Error),
    /// A `/metrics` limit is out of range.
    #[error("invalid scrape limit: {0}")]
    InvalidScrapeLimit(String),
    /// A native histogram setting is out of range.
    #[error("invalid native histogram setting: {0}")]
    InvalidNativeHistogram(String),
    /// Compressing the encoded metrics failed.
    #[error("could not gzip metrics: {0}")]
    Compress(#[source] std::io::Error),
}
