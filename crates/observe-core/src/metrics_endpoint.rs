//! `/metrics` itself, guarded as Go's `promhttp` guards it: the format the scraper asks for, at
//! most so many scrapes encoding at once, an encoding that takes too long answered `503`, and
//! the endpoint's own metrics (`observe_metrics_handler_*`, beside the families it serves).

use std::future::Future;
use std::pin::pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use prometheus::{Histogram, HistogramOpts, IntCounterVec, IntGauge, Opts, Registry};

use crate::encode::{Format, MetricsEncoder};
use crate::error::ObserveError;
use crate::executor::{race, BlockingWork, Executor};
use crate::labels::SERVICE;
use crate::response::EndpointResponse;
use crate::settings::{DEFAULT_MAX_CONCURRENT_SCRAPES, DEFAULT_SCRAPE_TIMEOUT};

/// The `/metrics` endpoint of a registry: what the adapters' `routes()` serve, and what a
/// framework without an adapter calls for each scrape ([`respond`](Self::respond) with the
/// framework's [`Executor`], or [`respond_blocking`](Self::respond_blocking)).
#[derive(Debug, Clone)]
pub struct MetricsEndpoint {
    encoder: MetricsEncoder,
    limits: Arc<ScrapeLimits>,
}

impl MetricsEndpoint {
    /// `/metrics` for everything on `registry`, with the default limits and no endpoint
    /// metrics of its own ([`HttpMetrics::endpoint`](crate::HttpMetrics::endpoint) gives the
    /// configured ones).
    pub fn new(registry: Registry) -> Self {
        let limits =
            ScrapeLimits::unmetered(DEFAULT_MAX_CONCURRENT_SCRAPES, DEFAULT_SCRAPE_TIMEOUT);
        MetricsEndpoint::with_limits(registry, Arc::new(limits))
    }

    pub(crate) fn with_limits(registry: Registry, limits: Arc<ScrapeLimits>) -> Self {
        MetricsEndpoint {
            encoder: MetricsEncoder::new(registry),
            limits,
        }
    }

    /// The response to a scrape with these `Accept` and `Accept-Encoding` headers: the
    /// registry in the negotiated format (gzipped when accepted) with its `Content-Type`,
    /// `Content-Encoding` and `Vary`; `503` when too many scrapes encode at once or the
    /// encoding outlasts the scrape timeout (it still holds its place until it ends); `500`
    /// naming what failed. The encoding runs on `E`'s blocking threads, and every response is
    /// counted once in `observe_metrics_handler_requests_total`, with the status it is sent.
    pub async fn respond<E: Executor>(
        &self,
        accept: Option<&str>,
        accept_encoding: Option<&str>,
    ) -> EndpointResponse {
        let response = match self.limits.enter() {
            Err(busy) => busy,
            Ok(slot) => {
                let job = EncodeJob {
                    encoder: self.encoder.clone(),
                    format: Format::negotiate(accept),
                    accept_encoding: accept_encoding.map(str::to_owned),
                    slot,
                };
                let timeout = self.limits.timeout;
                let ran = race(async { Some(E::spawn_blocking(job).await) }, async {
                    E::sleep(timeout).await;
                    None
                });
                match ran.await {
                    Some(Ok(response)) => response,
                    Some(Err(failed)) => {
                        EndpointResponse::text(500, &format!("encoding metrics failed: {failed}"))
                            .with_header("vary", VARY)
                    }
                    None => busy(&format!(
                        "encoding /metrics took longer than {timeout:?} (scrape_timeout)"
                    )),
                }
            }
        };
        self.limits.count(response.status);
        response
    }

    /// [`respond`](Self::respond) for a server without an async runtime: encodes on the
    /// calling thread, which it blocks meanwhile (there is nothing to time out then).
    ///
    /// ```
    /// let metrics = observe_core::HttpMetrics::new("svc");
    /// let response = metrics.endpoint().respond_blocking(None, Some("gzip"));
    /// assert_eq!(response.status, 200);
    /// assert_eq!(response.header("content-encoding"), Some("gzip"));
    /// assert_eq!(response.header("vary"), Some("accept, accept-encoding"));
    /// ```
    pub fn respond_blocking(
        &self,
        accept: Option<&str>,
        accept_encoding: Option<&str>,
    ) -> EndpointResponse {
        let mut response = pin!(self.respond::<Inline>(accept, accept_encoding));
        match response
            .as_mut()
            .poll(&mut Context::from_waker(Waker::noop()))
        {
            Poll::Ready(response) => response,
            Poll::Pending => unreachable!("an inline encoding completes when first polled"),
        }
    }
}

/// Runs the encoding where it is asked for, and never times out.
struct Inline;

impl Executor for Inline {
    fn spawn_blocking<W: BlockingWork>(
        work: W,
    ) -> impl Future<Output = Result<EndpointResponse, String>> + Send {
        std::future::ready(Ok(work.run()))
    }

    fn sleep(_: Duration) -> impl Future<Output = ()> + Send {
        std::future::pending()
    }
}

/// Every `/metrics` response depends on these request headers.
const VARY: &str = "accept, accept-encoding";

/// One scrape's encoding, run off the async workers.
struct EncodeJob {
    encoder: MetricsEncoder,
    format: Format,
    accept_encoding: Option<String>,
    /// Its place under the concurrency limit, held until the encoding ends.
    slot: ScrapeSlot,
}

impl BlockingWork for EncodeJob {
    fn run(self) -> EndpointResponse {
        let started = Instant::now();
        let response = match self
            .encoder
            .encode(self.format, self.accept_encoding.as_deref())
        {
            Ok(metrics) => {
                let response = EndpointResponse::ok(metrics.content_type, metrics.body);
                match metrics.content_encoding {
                    Some(encoding) => response.with_header("content-encoding", encoding),
                    None => response,
                }
            }
            Err(error) => EndpointResponse::text(500, &error.to_string()),
        };
        if let Some(m) = &self.slot.limits.metrics {
            m.encode.observe(started.elapsed().as_secs_f64());
        }
        response.with_header("vary", VARY)
    }
}

/// The limits of one `/metrics` endpoint and its own metrics.
#[derive(Debug)]
pub(crate) struct ScrapeLimits {
    max: usize,
    timeout: Duration,
    in_flight: AtomicUsize,
    metrics: Option<EndpointMetrics>,
}

/// `observe_metrics_handler_*`: what the endpoint answered, how long encoding took, how many
/// encode now.
#[derive(Debug)]
struct EndpointMetrics {
    requests: IntCounterVec,
    in_flight: IntGauge,
    encode: Histogram,
}

impl ScrapeLimits {
    /// Limits without metrics of their own (an endpoint made from a bare registry).
    pub(crate) fn unmetered(max: usize, timeout: Duration) -> Self {
        ScrapeLimits {
            max,
            timeout,
            in_flight: AtomicUsize::new(0),
            metrics: None,
        }
    }

    /// Limits whose endpoint metrics are registered on `registry`, labelled with `service`.
    pub(crate) fn registered(
        max: usize,
        timeout: Duration,
        registry: &Registry,
        service: &str,
    ) -> Result<Self, ObserveError> {
        let label = |opts: Opts| opts.const_label(SERVICE, service);
        let requests = IntCounterVec::new(
            label(Opts::new(
                "observe_metrics_handler_requests_total",
                "Scrapes of /metrics answered, by HTTP status: 200, 503 (too many at once, or the encoding timed out), 500.",
            )),
            &["code"],
        )
        .map_err(ObserveError::Registration)?;
        let in_flight = IntGauge::with_opts(label(Opts::new(
            "observe_metrics_handler_requests_in_flight",
            "Scrapes of /metrics encoding now.",
        )))
        .map_err(ObserveError::Registration)?;
        let encode = Histogram::with_opts(
            HistogramOpts::new(
                "observe_metrics_handler_encode_duration_seconds",
                "Time to gather and encode the registry for one scrape.",
            )
            .const_label(SERVICE, service)
            .buckets(vec![0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0]),
        )
        .map_err(ObserveError::Registration)?;
        for metric in [
            Box::new(requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(in_flight.clone()),
            Box::new(encode.clone()),
        ] {
            registry
                .register(metric)
                .map_err(ObserveError::Registration)?;
        }
        Ok(ScrapeLimits {
            metrics: Some(EndpointMetrics {
                requests,
                in_flight,
                encode,
            }),
            ..ScrapeLimits::unmetered(max, timeout)
        })
    }

    /// A place for one more scrape, or the `503` when `max` encode already.
    fn enter(self: &Arc<Self>) -> Result<ScrapeSlot, EndpointResponse> {
        let now = self.in_flight.fetch_add(1, Ordering::AcqRel) + 1;
        if now > self.max {
            self.in_flight.fetch_sub(1, Ordering::AcqRel);
            return Err(busy(&format!(
                "too many concurrent scrapes of /metrics: {} encode at once at most (max_concurrent_scrapes)",
                self.max
            )));
        }
        if let Some(m) = &self.metrics {
            m.in_flight.inc();
        }
        Ok(ScrapeSlot {
            limits: self.clone(),
        })
    }

    /// Counts a response sent, by its status.
    fn count(&self, status: u16) {
        if let Some(m) = &self.metrics {
            m.requests.with_label_values(&[&status.to_string()]).inc();
        }
    }
}

/// A scrape's place under the concurrency limit; dropping it leaves the count of scrapes
/// encoding.
#[derive(Debug)]
struct ScrapeSlot {
    limits: Arc<ScrapeLimits>,
}

impl Drop for ScrapeSlot {
    fn drop(&mut self) {
        self.limits.in_flight.fetch_sub(1, Ordering::AcqRel);
        if let Some(m) = &self.limits.metrics {
            m.in_flight.dec();
        }
    }
}

fn busy(message: &str) -> EndpointResponse {
    EndpointResponse::text(503, message)
        .with_header("retry-after", "1")
        .with_header("vary", VARY)
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;
    use std::sync::Mutex;

    use super::*;
    use crate::HttpMetrics;

    fn handled(metrics: &HttpMetrics, code: &str) -> u64 {
        metrics
            .registry()
            .gather()
            .iter()
            .filter(|f| f.name() == "observe_metrics_handler_requests_total")
            .flat_map(|f| f.get_metric())
            .filter(|m| {
                m.get_label()
                    .iter()
                    .any(|l| l.name() == "code" && l.value() == code)
            })
            .map(|m| m.get_counter().value() as u64)
            .sum()
    }

    /// Polls `future` once: every executor here answers at once.
    fn block_on<F: Future>(future: F) -> F::Output {
        match pin!(future)
            .as_mut()
            .poll(&mut Context::from_waker(Waker::noop()))
        {
            Poll::Ready(out) => out,
            Poll::Pending => panic!("these executors answer when first polled"),
        }
    }

    /// Jobs handed to [`Parked`], kept until a test runs or drops them.
    static PARKED: Mutex<Vec<Box<dyn FnOnce() + Send>>> = Mutex::new(Vec::new());

    /// Keeps each job without running it, and times out at once: a scrape whose encoding
    /// outlasts its timeout.
    struct Parked;

    impl Executor for Parked {
        fn spawn_blocking<W: BlockingWork>(
            work: W,
        ) -> impl Future<Output = Result<EndpointResponse, String>> + Send {
            let (done, result) = mpsc::channel();
            PARKED.lock().unwrap().push(Box::new(move || {
                let _ = done.send(work.run());
            }));
            std::future::poll_fn(move |_| match result.try_recv() {
                Ok(response) => std::task::Poll::Ready(Ok(response)),
                Err(_) => std::task::Poll::Pending,
            })
        }

        fn sleep(_: Duration) -> impl Future<Output = ()> + Send {
            std::future::ready(())
        }
    }

    /// A blocking pool that refuses the work.
    struct ShutDown;

    impl Executor for ShutDown {
        fn spawn_blocking<W: BlockingWork>(
            work: W,
        ) -> impl Future<Output = Result<EndpointResponse, String>> + Send {
            drop(work);
            std::future::ready(Err("the blocking pool shut down".to_owned()))
        }

        fn sleep(_: Duration) -> impl Future<Output = ()> + Send {
            std::future::pending()
        }
    }

    #[test]
    fn scrapes_beyond_the_limit_are_refused_until_one_ends_and_each_is_counted_once() {
        let metrics = HttpMetrics::builder("svc")
            .max_concurrent_scrapes(2)
            .unwrap()
            .build()
            .unwrap();
        let endpoint = metrics.endpoint();
        // Two encodings outlast their timeout: each answered 503 and still encoding.
        for _ in 0..2 {
            let late = block_on(endpoint.respond::<Parked>(None, None));
            assert_eq!(late.status, 503);
            assert!(late
                .body_text()
                .contains("took longer than 10s (scrape_timeout)"));
        }
        let refused = block_on(endpoint.respond::<Inline>(None, None));
        assert_eq!(refused.status, 503);
        assert!(refused.body_text().contains("2 encode at once at most"));
        assert_eq!(refused.header("retry-after"), Some("1"));
        assert_eq!(refused.header("vary"), Some(VARY));
        // The late encodings end: nothing more is sent or counted, and the places are free.
        for job in PARKED.lock().unwrap().drain(..) {
            job();
        }
        let ok = block_on(endpoint.respond::<Inline>(Some("application/openmetrics-text"), None));
        assert_eq!(ok.status, 200);
        assert_eq!(ok.content_type, crate::OPENMETRICS_CONTENT_TYPE);
        let failed = block_on(endpoint.respond::<ShutDown>(None, None));
        assert_eq!(failed.status, 500);
        assert_eq!(
            failed.body_text(),
            "encoding metrics failed: the blocking pool shut down\n"
        );
        assert_eq!(
            (
                handled(&metrics, "200"),
                handled(&metrics, "503"),
                handled(&metrics, "500")
            ),
            (1, 3, 1)
        );
        // Nothing left in flight: both places are free again.
        for _ in 0..2 {
            assert_eq!(block_on(endpoint.respond::<Parked>(None, None)).status, 503);
        }
        assert!(block_on(endpoint.respond::<Inline>(None, None))
            .body_text()
            .contains("encode at once"));
        PARKED.lock().unwrap().clear();
        assert_eq!(block_on(endpoint.respond::<Inline>(None, None)).status, 200);
    }

    #[test]
    fn limits_out_of_range_are_refused() {
        assert!(HttpMetrics::builder("svc")
            .max_concurrent_scrapes(0)
            .is_err());
        assert!(HttpMetrics::builder("svc")
            .scrape_timeout(Duration::ZERO)
            .is_err());
    }
}
