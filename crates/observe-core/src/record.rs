//! The per-request record: [`MetricsId::start`] opens it, and its types let it end exactly
//! once ([`RequestRecord`], then [`ResponseRecord`]).

use quanta::Instant;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::labels::MethodLabel;
use crate::request_labels::RequestLabels;
use crate::routes::RouteId;
use crate::store::{with_store, Observation, SeriesKey};
use crate::trace::{self, TraceContext, TraceHeaders};

/// Status recorded for a client that went away before the response body was complete.
pub const CLIENT_CLOSED_REQUEST: u16 = 499;
/// Status recorded for a handler panic or an inner service error.
pub const INTERNAL_SERVER_ERROR: u16 = 500;

/// A `Copy` handle on [`HttpMetrics`](crate::HttpMetrics), for what is created or cloned for
/// every request: the service axum clones per request and the request record hold one
/// instead of an `Arc`, so no worker writes a reference count that other workers share (on two
/// threads a shared count costs more than the whole record: `docs/performance.md`).
///
/// It finds the metrics in a per-thread cache. It records while they are open (see
/// [`HttpMetrics`](crate::HttpMetrics)), and does nothing once they are closed.
///
/// ```
/// let metrics = observe_core::HttpMetrics::new("svc");
/// let id = metrics.id();
/// let record = id.start("GET", Some("/users/{id}")).unwrap();
/// record.respond(200).finish();
/// assert_eq!(metrics.active_requests("GET"), 0);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MetricsId(pub(crate) u64);

impl MetricsId {
    /// Starts recording a request to `template` (the framework's route template; `None`:
    /// nothing matched, or not known yet): the clock starts now, and the request counts in
    /// `http_server_active_requests`. `None` when the route is excluded or the metrics are
    /// closed.
    ///
    /// actix knows the route only after the request ran: start with `None` and call
    /// [`RequestRecord::set_route`] then.
    #[inline]
    pub fn start(self, method: &str, template: Option<&str>) -> Option<RequestRecord> {
        // Not one path with `start_with`: carrying an empty trace through it costs the
        // requests without headers to read (docs/performance.md, "What recording costs").
        let method = MethodLabel::from_method(method);
        let route = with_store(self.0, |store| {
            let route = store.routes.resolve(template);
            (!route.is_excluded()).then(|| {
                store.count_start(method);
                route
            })
        })??;
        Some(RequestRecord::new(self.0, method, route, None))
    }

    /// [`start`](Self::start) for a request with these `headers`: a sampled trace in them
    /// (its `traceparent`, or what the configured
    /// [`trace_context`](crate::ObserveBuilder::trace_context) hook finds) becomes the
    /// exemplar of the request's bucket. A request without one costs one header lookup.
    #[inline]
    pub fn start_with(
        self,
        method: &str,
        template: Option<&str>,
        headers: &impl TraceHeaders,
    ) -> Option<RequestRecord> {
        let method = MethodLabel::from_method(method);
        let (route, trace) = with_store(self.0, |store| {
            let route = store.routes.resolve(template);
            // An excluded route (`/metrics`) is not recorded: its headers are not read.
            if route.is_excluded() {
                return None;
            }
            // Read before the start is counted: a trace hook that panics leaves no request in
            // flight for ever.
            let trace = store
                .exemplars
                .then(|| trace::extract(store.trace_hook.as_ref(), headers))
                .flatten();
            store.count_start(method);
            Some((route, trace))
        })??;
        Some(RequestRecord::new(self.0, method, route, trace))
    }

    /// The label id of a route template, as
    /// [`HttpMetrics::route`](crate::HttpMetrics::route) gives it; [`RouteId::UNMATCHED`] once
    /// the metrics are closed.
    pub fn route(self, template: Option<&str>) -> RouteId {
        with_store(self.0, |store| store.routes.resolve(template)).unwrap_or(RouteId::UNMATCHED)
    }
}

/// A request in flight, before its response exists: the first half of the guard that records
/// one request exactly once.
///
/// Created by [`MetricsId::start`](MetricsId::start). It ends in exactly one way,
/// and each way takes it by value, so a request can be recorded only once whatever an adapter
/// calls:
///
/// * [`respond`](Self::respond) turns it into the [`ResponseRecord`] that the response body
///   carries to its end;
/// * [`fail`](Self::fail): the inner service returned an error instead of a response (`500`);
/// * dropped: unwinding from a panic records `500`, anything else (the client went away, the
///   future was dropped) `499`.
///
/// Either way `http_server_active_requests` goes back down.
///
/// ```compile_fail
/// let metrics = observe_core::HttpMetrics::new("svc");
/// let record = metrics.id().start("GET", Some("/x")).unwrap();
/// record.fail();
/// record.fail(); // `record` was moved: a second ending does not compile
/// ```
#[derive(Debug)]
pub struct RequestRecord {
    recording: Recording,
}

/// A request whose response head exists (status known): the second half of the guard, carried
/// by the response body.
///
/// Ends with [`finish`](Self::finish) when the body ends, [`fail`](Self::fail) when the body
/// fails mid-stream (`500`), or dropped before either: `499` (the client went away), `500`
/// while a panic unwinds.
///
/// ```
/// let metrics = observe_core::HttpMetrics::new("svc");
/// let record = metrics.id().start("GET", Some("/x")).unwrap();
/// let mut response = record.respond(200);
/// response.add_response_bytes(42);
/// response.finish();
/// assert_eq!(metrics.active_requests("GET"), 0);
/// ```
///
/// ```compile_fail
/// let metrics = observe_core::HttpMetrics::new("svc");
/// let response = metrics.id().start("GET", Some("/x")).unwrap().respond(200);
/// response.finish();
/// response.fail(); // `response` was moved: a second ending does not compile
/// ```
#[derive(Debug)]
pub struct ResponseRecord {
    recording: Recording,
    status: u16,
}

/// What both halves carry; recorded once, by [`Recording::record`] or on drop.
#[derive(Debug)]
struct Recording {
    /// Its metrics' store id, found again when the request ends: a request in flight holds
    /// no reference count.
    metrics: u64,
    started: Instant,
    method: MethodLabel,
    route: RouteId,
    request_bytes: u64,
    request_tally: Option<ByteTally>,
    response_bytes: u64,
    /// The request's sampled trace, kept as an exemplar of its bucket.
    trace: Option<TraceContext>,
    recorded: bool,
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
    /// Starts the clock; the caller has counted the request in flight.
    #[inline]
    pub(crate) fn new(
        metrics: u64,
        method: MethodLabel,
        route: RouteId,
        trace: Option<TraceContext>,
    ) -> Self {
        RequestRecord {
            recording: Recording {
                metrics,
                started: Instant::now(),
                method,
                route,
                request_bytes: 0,
                request_tally: None,
                response_bytes: 0,
                trace,
                recorded: false,
            },
        }
    }

    /// The request's method label.
    #[inline]
    pub fn method(&self) -> MethodLabel {
        self.recording.method
    }

    /// Time since the request started.
    #[inline]
    pub fn elapsed(&self) -> std::time::Duration {
        self.recording.started.elapsed()
    }

    /// Sets the route once the framework knows it (actix matches after middleware runs), from
    /// [`HttpMetrics::route`](crate::HttpMetrics::route) or [`MetricsId::route`](MetricsId::route). An excluded
    /// route leaves the request unrecorded (it still leaves the in-flight gauge when it ends).
    #[inline]
    pub fn set_route(&mut self, route: RouteId) {
        self.recording.route = route;
    }

    /// What a CPU profile sample records of this request (see
    /// [`poll_labelled`](crate::adapter::poll_labelled)).
    #[inline]
    pub fn labels(&self) -> RequestLabels {
        self.recording.labels()
    }

    /// The request's trace, for its exemplar (set by
    /// [`MetricsId::start_with`](MetricsId::start_with) from the headers).
    #[inline]
    pub fn trace(&self) -> Option<&TraceContext> {
        self.recording.trace.as_ref()
    }

    /// Counts request body bytes read by the handler (when the adapter sees them directly).
    #[inline]
    pub fn add_request_bytes(&mut self, n: u64) {
        self.recording.request_bytes += n;
    }

    /// A counter for a request body wrapper that lives apart from the record.
    /// Allocates once; adapters call it only for requests that carry a body.
    pub fn request_tally(&mut self) -> ByteTally {
        self.recording
            .request_tally
            .get_or_insert_with(ByteTally::default)
            .clone()
    }

    /// A response head with `status` exists; the returned half travels with its body.
    #[inline]
    pub fn respond(self, status: u16) -> ResponseRecord {
        ResponseRecord {
            recording: self.recording,
            status,
        }
    }

    /// The inner service returned an error instead of a response: recorded as `500` now.
    pub fn fail(mut self) {
        self.recording.record(INTERNAL_SERVER_ERROR);
    }
}

impl ResponseRecord {
    /// What a CPU profile sample records of this request (see
    /// [`poll_labelled`](crate::adapter::poll_labelled)).
    #[inline]
    pub fn labels(&self) -> RequestLabels {
        self.recording.labels()
    }

    /// The response's status, as it will be recorded when the body ends.
    #[inline]
    pub fn status(&self) -> u16 {
        self.status
    }

    /// Whether the response carries no body on the wire (a `HEAD` request, or status 1xx, 204
    /// or 304): servers never poll such a body, so adapters finish the record as soon as the
    /// response exists.
    #[inline]
    pub fn is_bodiless(&self) -> bool {
        self.recording.method.is_head()
            || (100..200).contains(&self.status)
            || self.status == 204
            || self.status == 304
    }

    /// Counts response body bytes sent to the client.
    #[inline]
    pub fn add_response_bytes(&mut self, n: u64) {
        self.recording.response_bytes += n;
    }

    /// The response body ended: records the request with its status.
    #[inline]
    pub fn finish(mut self) {
        self.recording.record(self.status);
    }

    /// The response body failed mid-stream: recorded as `500`.
    pub fn fail(mut self) {
        self.recording.record(INTERNAL_SERVER_ERROR);
    }
}

impl Recording {
    #[inline]
    fn labels(&self) -> RequestLabels {
        RequestLabels::new(self.metrics, self.route, self.method, self.trace.as_ref())
    }

    #[inline]
    fn record(&mut self, status: u16) {
        // Only `Drop` can reach this twice (after an ending that took the record by value).
        if std::mem::replace(&mut self.recorded, true) {
            return;
        }
        let observation = (!self.route.is_excluded()).then(|| Observation {
            key: SeriesKey::new(self.route, self.method, status),
            started: self.started,
            request_bytes: self.request_bytes
                + self.request_tally.as_ref().map_or(0, ByteTally::get),
            response_bytes: self.response_bytes,
            trace: self.trace.take(),
        });
        // Closed metrics (nobody can read them any more) take nothing.
        with_store(self.metrics, |store| store.finish(self.method, observation));
    }
}

impl Drop for Recording {
    #[inline]
    fn drop(&mut self) {
        if !self.recorded {
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
    use crate::HttpMetrics;

    /// What `/metrics` would serve for `registry`.
    fn exposition(registry: &prometheus::Registry) -> String {
        let out = crate::MetricsEncoder::new(registry.clone())
            .encode(crate::Format::Text, None)
            .unwrap();
        String::from_utf8(out.body).unwrap()
    }

    /// `http_server_requests_total` of `GET /x` with `status` in service `t`, 0 if absent.
    fn count(metrics: &HttpMetrics, status: u16) -> u64 {
        let family = metrics
            .registry()
            .gather()
            .into_iter()
            .find(|f| f.name() == "http_server_requests_total")
            .unwrap();
        family
            .get_metric()
            .iter()
            .filter(|m| {
                m.get_label().iter().any(|l| {
                    l.name() == "http_response_status_code" && l.value() == status.to_string()
                })
            })
            .map(|m| m.get_counter().value() as u64)
            .sum()
    }

    #[test]
    fn responses_without_a_body_on_the_wire_are_bodiless() {
        let metrics = HttpMetrics::new("t");
        let bodiless = |method: &str, status: u16| {
            let record = metrics.id().start(method, None).unwrap();
            record.respond(status).is_bodiless()
        };
        assert!(bodiless("HEAD", 200));
        assert!(bodiless("GET", 204));
        assert!(bodiless("GET", 304));
        assert!(bodiless("GET", 101));
        assert!(!bodiless("GET", 200));
        assert!(!bodiless("POST", 404));
    }

    /// One way a request can end, after whatever an adapter may do before.
    #[derive(Debug, Clone, Copy)]
    enum Ending {
        DropWaiting,
        Fail,
        DropResponded,
        FinishResponded,
        FailResponded,
    }

    #[test]
    fn every_sequence_of_calls_records_once_and_returns_the_gauge() {
        use Ending::*;
        let endings = [
            (DropWaiting, 499),
            (Fail, 500),
            (DropResponded, 499),
            (FinishResponded, 201),
            (FailResponded, 500),
        ];
        // Every subset of the non-terminal calls, in both orders, before every ending.
        for (ending, status) in endings {
            for calls in 0u8..16 {
                for reversed in [false, true] {
                    let metrics = HttpMetrics::new("t");
                    let route = metrics.route(Some("/x"));
                    let mut record = metrics.id().start("GET", None).unwrap();
                    assert_eq!(metrics.active_requests("GET"), 1);
                    let mut steps: Vec<u8> = (0..3).filter(|b| calls & (1 << b) != 0).collect();
                    if reversed {
                        steps.reverse();
                    }
                    for step in steps {
                        match step {
                            0 => record.set_route(route),
                            1 => record.add_request_bytes(3),
                            _ => record.request_tally().add(4),
                        }
                    }
                    record.set_route(route);
                    match ending {
                        DropWaiting => drop(record),
                        Fail => record.fail(),
                        _ => {
                            let mut response = record.respond(201);
                            if calls & 8 != 0 {
                                response.add_response_bytes(5);
                            }
                            match ending {
                                DropResponded => drop(response),
                                FinishResponded => response.finish(),
                                _ => response.fail(),
                            }
                        }
                    }
                    let what = format!("{ending:?} after calls {calls:#b} reversed {reversed}");
                    assert_eq!(count(&metrics, status), 1, "{what}");
                    let all: u64 = [201, 499, 500].iter().map(|s| count(&metrics, *s)).sum();
                    assert_eq!(all, 1, "{what}");
                    assert_eq!(metrics.active_requests("GET"), 0, "{what}");
                }
            }
        }
    }

    #[test]
    fn a_dropped_record_is_a_client_that_went_away_and_the_gauge_returns() {
        let metrics = HttpMetrics::new("t");
        let record = metrics.id().start("GET", Some("/x")).unwrap();
        assert_eq!(metrics.active_requests("GET"), 1);
        drop(record.respond(200));
        assert_eq!(metrics.active_requests("GET"), 0);
        let text = exposition(metrics.registry());
        assert!(text.contains(r#"http_server_requests_total{http_request_method="GET",http_response_status_code="499",http_route="/x",service="t"} 1"#));
    }

    #[test]
    fn a_record_dropped_while_a_panic_unwinds_is_a_server_error() {
        let metrics = HttpMetrics::new("t");
        let record = metrics.id().start("GET", Some("/x")).unwrap();
        let unwound = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
            let _record = record;
            panic!("handler panicked");
        }));
        assert!(unwound.is_err());
        assert_eq!(count(&metrics, 500), 1);
        assert_eq!(metrics.active_requests("GET"), 0);
    }

    #[test]
    fn a_request_started_on_one_thread_and_finished_on_another_is_counted_once() {
        let metrics = HttpMetrics::new("t");
        let records: Vec<_> = (0..100)
            .map(|_| metrics.id().start("GET", Some("/x")).unwrap())
            .collect();
        assert_eq!(metrics.active_requests("GET"), 100);
        // Tokio moves tasks between workers: the end lands in another thread's shard.
        std::thread::spawn(move || {
            for record in records {
                record.respond(200).finish();
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
        let response = metrics.id().start("GET", Some("/x")).unwrap().respond(200);
        drop(metrics);
        std::thread::spawn(move || response.finish())
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
        // Neither handle nor registry is left: the end finds the metrics closed.
        assert!(end_after_the_metrics_are_dropped(false).is_none());
    }

    #[test]
    fn closed_metrics_are_freed_by_every_thread_that_cached_them() {
        // A long-lived thread (a worker) records, so it caches the store; the metrics close
        // while it runs; its next request, for other metrics, lets go of them.
        let (closed_tx, closed_rx) = std::sync::mpsc::channel::<()>();
        let (weak_tx, weak_rx) = std::sync::mpsc::channel();
        let worker = std::thread::spawn(move || {
            let metrics = HttpMetrics::new("closing");
            metrics
                .id()
                .start("GET", Some("/x"))
                .unwrap()
                .respond(200)
                .finish();
            weak_tx
                .send(std::sync::Arc::downgrade(metrics.store()))
                .unwrap();
            let id = metrics.id();
            drop(metrics);
            closed_rx.recv().unwrap();
            // A request of the closed metrics, then of others: neither is recorded into them.
            assert!(id.start("GET", Some("/x")).is_none());
            let other = HttpMetrics::new("other");
            other
                .id()
                .start("GET", Some("/y"))
                .unwrap()
                .respond(200)
                .finish();
        });
        let weak = weak_rx.recv().unwrap();
        assert!(
            weak.upgrade().is_some(),
            "the worker's cache holds the store"
        );
        closed_tx.send(()).unwrap();
        worker.join().unwrap();
        assert!(weak.upgrade().is_none(), "closed metrics are freed");
    }

    #[test]
    fn a_metrics_id_records_while_its_registry_is_readable_and_then_nothing() {
        let metrics = HttpMetrics::new("t");
        let (id, registry) = (metrics.id(), metrics.registry().clone());
        drop(metrics);
        let two = |id: super::MetricsId| {
            std::thread::spawn(move || {
                (0..2)
                    .filter_map(|_| id.start("GET", Some("/x")))
                    .map(|record| record.respond(200).finish())
                    .count()
            })
            .join()
            .unwrap()
        };
        assert_eq!(two(id), 2);
        let text = exposition(&registry);
        assert!(text.contains(r#"http_server_requests_total{http_request_method="GET",http_response_status_code="200",http_route="/x",service="t"} 2"#));
        drop(registry);
        assert_eq!(two(id), 0);
    }

    #[test]
    fn many_metrics_alive_at_once_each_count_their_own_requests() {
        // More than a thread caches: ids share cache slots and evict each other.
        let all: Vec<_> = (0..20).map(|i| HttpMetrics::new(format!("s{i}"))).collect();
        for round in 0..3 {
            for (i, metrics) in all.iter().enumerate().filter(|(i, _)| i % 3 <= round) {
                let record = metrics.id().start("GET", Some("/x")).unwrap();
                record.respond(200 + i as u16).finish();
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
