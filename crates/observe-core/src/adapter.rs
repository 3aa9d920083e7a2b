//! What a framework adapter needs and a user never does: the per-request record, route and
//! metrics ids, body byte counting, the one `traceparent` of a request's headers, the
//! framework-neutral [`EndpointResponse`] that `/metrics` and `/debug/pprof` give (each adapter
//! converts it into its response type in one place), and the [`Executor`] an adapter lends
//! those endpoints.
//!
//! A request is recorded exactly once, by type: [`MetricsId::start`] gives a
//! [`RequestRecord`]; it ends in [`RequestRecord::respond`] (giving a [`ResponseRecord`]),
//! [`RequestRecord::fail`], or its drop (`499`, or `500` while a panic unwinds); a
//! [`ResponseRecord`] ends in [`ResponseRecord::finish`], [`ResponseRecord::fail`] or its
//! drop. Every ending takes the record by value, so none can happen twice.
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
//! let out = MetricsEncoder::new(metrics.registry().clone()).encode(observe_core::Format::Text, None).unwrap();
//! let text = String::from_utf8(out.body).unwrap();
//! assert!(text.contains(r#"http_server_requests_total{http_request_method="GET",http_response_status_code="200",http_route="/users/{id}",service="checkout"} 1"#));
//! ```

pub use crate::body::{BodyEvent, BodyTracker};
pub use crate::executor::{race, BlockingWork, Executor};
pub use crate::labels::MethodLabel;
pub use crate::record::{
    ByteTally, MetricsId, RequestRecord, ResponseRecord, CLIENT_CLOSED_REQUEST,
    INTERNAL_SERVER_ERROR,
};
pub use crate::request_labels::{labels_wanted, poll_labelled, RequestLabels, WantLabels};
pub use crate::response::{EndpointResponse, TEXT_PLAIN};
pub use crate::routes::RouteId;
pub use crate::trace::sole_header;
