use quanta::Instant;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::labels::MethodLabel;
use crate::metrics::{Observation, SeriesKey};
use crate::routes::RouteId;

/// Status recorded for a client that went away before the response body was complete.
pub const CLIENT_CLOSED_REQUEST: u16 = 499;
/// Status recorded for a handler panic or an inner service error.
pub const INTERNAL_SERVER_ERROR: u16 = 500;

/// The guard that records one request, exactly once.
///
/// Created by [`HttpMetrics::start`](crate::HttpMetrics::start). Adapters move it from the
/// response future into the response body and call [`complete`](Self::complete) when the body
/// ends. If it is dropped before that, it records what the drop means:
///
/// * unwinding from a panic: `500`;
/// * otherwise (the client went away, the future or body was dropped early): `499`.
///
/// Either way `http_server_active_requests` goes back down.
#[derive(Debug)]
pub struct RequestRecord {
    /// The id of the metrics' state: found again when the request ends (`cache::with_state`),
    /// so that a request in flight touches no shared reference count.
    state: u64,
    started: Instant,
    method: MethodLabel,
    route: RouteId,
    status: u16,
    progress: Progress,
    request_bytes: u64,
    request_tally: Option<ByteTally>,
    response_bytes: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Progress {
    /// No response yet.
    Waiting,
    /// A response head with `status` exists; its body is on its way.
    Responded,
    /// Recorded; nothing more happens on drop.
    Recorded,
}

/// A byte counter a request body wrapper shares with the record (the body is consumed by the
/// handler, far from the response body where the record ends).
#[derive(Debug, Clone, Default)]
pub struct ByteTally(Arc<AtomicU64>);

impl ByteTally {
    /// Adds `n` transferred bytes.
    #[inline]
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    /// Bytes counted so far.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

impl RequestRecord {
    pub(crate) fn new(state: u64, method: MethodLabel, route: RouteId) -> Self {
        RequestRecord {
            state,
            started: Instant::now(),
            method,
            route,
            status: 0,
            progress: Progress::Waiting,
            request_bytes: 0,
            request_tally: None,
            response_bytes: 0,
        }
    }

    /// The request's method label.
    #[inline]
    pub fn method(&self) -> MethodLabel {
        self.method
    }

    /// Sets the route once the framework knows it (actix matches after middleware runs).
    /// An excluded route leaves the request unrecorded.
    #[inline]
    pub fn set_route(&mut self, route: RouteId) {
        self.route = route;
    }

    /// Sets the route from the framework's template, learned after the request started.
    pub fn set_template(&mut self, template: &str) {
        let state = self.state;
        if let Some(route) = crate::cache::with_state(state, |s| s.routes.resolve(Some(template))) {
            self.set_route(route);
        }
    }

    /// A response head with this status exists. Until [`complete`](Self::complete), a drop
    /// still means the client did not get the whole response.
    #[inline]
    pub fn responded(&mut self, status: u16) {
        if self.progress == Progress::Waiting {
            self.status = status;
            self.progress = Progress::Responded;
        }
    }

    /// Whether the response given to [`responded`](Self::responded) carries no body on the
    /// wire (a `HEAD` request, or status 1xx, 204 or 304): servers never poll such a body, so
    /// adapters complete the record as soon as the response exists.
    #[inline]
    pub fn is_bodiless(&self) -> bool {
        self.method.is_head()
            || (100..200).contains(&self.status)
            || self.status == 204
            || self.status == 304
    }

    /// The inner service returned an error instead of a response: recorded as `500` now.
    pub fn fail(&mut self) {
        self.status = INTERNAL_SERVER_ERROR;
        self.progress = Progress::Responded;
        self.complete();
    }

    /// Counts response body bytes sent to the client.
    #[inline]
    pub fn add_response_bytes(&mut self, n: u64) {
        self.response_bytes += n;
    }

    /// Counts request body bytes read by the handler (when the adapter sees them directly).
    #[inline]
    pub fn add_request_bytes(&mut self, n: u64) {
        self.request_bytes += n;
    }

    /// A counter for a request body wrapper that lives apart from the record.
    /// Allocates once; adapters call it only for requests that carry a body.
    pub fn request_tally(&mut self) -> ByteTally {
        self.request_tally
            .get_or_insert_with(ByteTally::default)
            .clone()
    }

    /// The response body ended: records the request with the status given to
    /// [`responded`](Self::responded). Later calls and the drop do nothing.
    #[inline]
    pub fn complete(&mut self) {
        if self.progress == Progress::Responded {
            self.record(self.status);
        } else if self.progress == Progress::Waiting {
            // Completing without a response head cannot happen in a correct adapter; count it
            // as a server error rather than lose the request.
            self.record(INTERNAL_SERVER_ERROR);
        }
    }

    /// Whether the request has been recorded.
    #[inline]
    pub fn is_recorded(&self) -> bool {
        self.progress == Progress::Recorded
    }

    fn record(&mut self, status: u16) {
        self.progress = Progress::Recorded;
        let observation = (!self.route.is_excluded()).then(|| Observation {
            key: SeriesKey::new(self.route, self.method, status),
            started: self.started,
            request_bytes: self.request_bytes
                + self.request_tally.as_ref().map_or(0, ByteTally::get),
            response_bytes: self.response_bytes,
        });
        crate::cache::with_state(self.state, |state| state.finish(self.method, observation));
    }
}

impl Drop for RequestRecord {
    #[inline]
    fn drop(&mut self) {
        if self.progress != Progress::Recorded {
            let status = if std::thread::panicking() {
                INTERNAL_SERVER_ERROR
            } else {
                CLIENT_CLOSED_REQUEST
            };
            self.record(status);
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::{HttpMetrics, MethodLabel, RouteId};

    /// What `/metrics` would serve for `registry`.
    fn exposition(registry: &prometheus::Registry) -> String {
        let out = crate::MetricsEncoder::new(registry.clone())
            .encode(None)
            .unwrap();
        String::from_utf8(out.body).unwrap()
    }

    #[test]
    fn responses_without_a_body_on_the_wire_are_bodiless() {
        let metrics = HttpMetrics::new("t");
        let bodiless = |method: &str, status: u16| {
            let mut record = metrics.start(method, RouteId::UNMATCHED).unwrap();
            record.responded(status);
            record.is_bodiless()
        };
        assert!(bodiless("HEAD", 200));
        assert!(bodiless("GET", 204));
        assert!(bodiless("GET", 304));
        assert!(bodiless("GET", 101));
        assert!(!bodiless("GET", 200));
        assert!(!bodiless("POST", 404));
    }

    #[test]
    fn a_dropped_record_is_a_client_that_went_away_and_the_gauge_returns() {
        let metrics = HttpMetrics::new("t");
        let route = metrics.route(Some("/x"));
        let mut record = metrics.start("GET", route).unwrap();
        assert_eq!(metrics.active_requests("GET"), 1);
        record.responded(200);
        drop(record);
        assert_eq!(metrics.active_requests("GET"), 0);
        let text = exposition(metrics.registry());
        assert!(text.contains(r#"http_server_requests_total{http_request_method="GET",http_response_status_code="499",http_route="/x",service="t"} 1"#));
    }

    #[test]
    fn a_request_started_on_one_thread_and_finished_on_another_is_counted_once() {
        let metrics = HttpMetrics::new("t");
        let route = metrics.route(Some("/x"));
        let records: Vec<_> = (0..100)
            .map(|_| metrics.start("GET", route).unwrap())
            .collect();
        assert_eq!(metrics.active_requests("GET"), 100);
        // Tokio moves tasks between workers: the end lands in another thread's shard.
        std::thread::spawn(move || {
            for mut record in records {
                record.responded(200);
                record.complete();
            }
        })
        .join()
        .unwrap();
        assert_eq!(metrics.active_requests("GET"), 0);
        let text = exposition(metrics.registry());
        assert!(text.contains(r#"http_server_requests_total{http_request_method="GET",http_response_status_code="200",http_route="/x",service="t"} 100"#));
        assert!(text
            .contains(r#"http_server_active_requests{http_request_method="GET",service="t"} 0"#));
    }

    /// A `GET /x` answered 200 whose metrics are dropped before its body ends; the body then
    /// ends on a thread that never met those metrics. Returns the registry if `keep_registry`.
    fn end_after_the_metrics_are_dropped(keep_registry: bool) -> Option<prometheus::Registry> {
        let metrics = HttpMetrics::new("t");
        let registry = keep_registry.then(|| metrics.registry().clone());
        let mut record = metrics.start("GET", metrics.route(Some("/x"))).unwrap();
        record.responded(200);
        drop(metrics);
        std::thread::spawn(move || record.complete())
            .join()
            .unwrap();
        registry
    }

    #[test]
    fn a_request_outliving_its_middleware_is_recorded_while_its_registry_is_readable() {
        let registry = end_after_the_metrics_are_dropped(true).unwrap();
        let text = exposition(&registry);
        assert!(text.contains(r#"http_server_requests_total{http_request_method="GET",http_response_status_code="200",http_route="/x",service="t"} 1"#));
    }

    #[test]
    fn a_request_outliving_everything_that_could_read_it_ends_quietly() {
        // Neither handle nor registry is left: the end finds no state and records nothing.
        assert!(end_after_the_metrics_are_dropped(false).is_none());
    }

    /// Two `GET /x` answered 200 (the second finds the state, or its absence, in the cache the
    /// first filled), started through `id` on a thread of its own whose per-thread cache goes
    /// when it exits; how many were recorded.
    fn requests_through(id: crate::MetricsId) -> usize {
        std::thread::spawn(move || {
            let get = MethodLabel::from_method("GET");
            let records = (0..2).filter_map(|_| id.start(get, Some("/x")));
            records
                .map(|mut record| {
                    record.responded(200);
                    record.complete();
                })
                .count()
        })
        .join()
        .unwrap()
    }

    #[test]
    fn a_metrics_id_records_while_its_registry_is_readable_and_then_nothing() {
        let (id, registry) = std::thread::spawn(|| {
            let metrics = HttpMetrics::new("t");
            (metrics.id(), metrics.registry().clone())
        })
        .join()
        .unwrap();
        assert_eq!(requests_through(id), 2);
        assert_eq!(requests_through(id), 2);
        let text = exposition(&registry);
        assert!(text.contains(r#"http_server_requests_total{http_request_method="GET",http_response_status_code="200",http_route="/x",service="t"} 4"#));
        drop(registry);
        assert_eq!(requests_through(id), 0);
    }

    #[test]
    fn many_metrics_alive_at_once_each_count_their_own_requests() {
        // More than a thread caches: ids share cache slots and evict each other.
        let all: Vec<_> = (0..20).map(|i| HttpMetrics::new(format!("s{i}"))).collect();
        let get = MethodLabel::from_method("GET");
        for round in 0..3 {
            for (i, metrics) in all.iter().enumerate().filter(|(i, _)| i % 3 <= round) {
                let mut record = metrics.id().start(get, Some("/x")).unwrap();
                record.responded(200 + i as u16);
                record.complete();
            }
        }
        for (i, metrics) in all.iter().enumerate() {
            let text = exposition(metrics.registry());
            let expected = 3 - i % 3;
            let line = format!(
                r#"http_server_requests_total{{http_request_method="GET",http_response_status_code="{}",http_route="/x",service="s{i}"}} {expected}"#,
                200 + i
            );
            assert!(text.contains(&line), "{line}\nnot in\n{text}");
            assert_eq!(metrics.active_requests("GET"), 0);
        }
    }
}
