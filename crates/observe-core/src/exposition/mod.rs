//! The exposition formats `/metrics` speaks, all written from one [`model`]: the Prometheus
//! text format 0.0.4 and OpenMetrics 1.0 ([`text`]), and the Prometheus protobuf format
//! ([`protobuf`]), the only one with native histograms.

pub(crate) mod model;
pub(crate) mod protobuf;
pub(crate) mod text;
