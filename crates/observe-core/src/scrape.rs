//! Guarding `/metrics` itself, as Go's `promhttp` does: at most so many scrapes encode at once,
//! an encoding that takes too long is answered `503`, and the handler counts its own answers
//! (`observe_metrics_handler_*`, next to the families it serves).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use prometheus::{Histogram, HistogramOpts, IntCounterVec, IntGauge, Opts, Registry};

use crate::answer::Answer;
use crate::encode::{Format, MetricsEncoder};
use crate::error::ObserveError;
use crate::labels::SERVICE;

/// Default cap on scrapes encoding at once: node_exporter's `--web.max-requests` default, the
/// Prometheus project's own choice for `promhttp`'s `MaxRequestsInFlight`.
pub const DEFAULT_MAX_CONCURRENT_SCRAPES: usize = 40;
/// Default time an encoding may take before the scrape is answered `503`: Prometheus' default
/// `scrape_timeout`, after which the scraper has given up anyway.
pub const DEFAULT_SCRAPE_TIMEOUT: Duration = Duration::from_secs(10);

/// The limits of one `/metrics` handler and its own metrics.
#[derive(Debug)]
pub(crate) struct ScrapeLimits {
    max: usize,
    timeout: Duration,
    in_flight: AtomicUsize,
    metrics: Option<HandlerMetrics>,
}

/// `observe_metrics_handler_*`: what the handler answered, how long encoding took, how many
/// encode now.
#[derive(Debug)]
struct HandlerMetrics {
    requests: IntCounterVec,
    in_flight: IntGauge,
    encode: Histogram,
}

impl ScrapeLimits {
    /// Limits without metrics of their own (a `MetricsEncoder` made from a bare registry).
    pub(crate) fn unmetered(max: usize, timeout: Duration) -> Self {
        ScrapeLimits {
            max,
            timeout,
            in_flight: AtomicUsize::new(0),
            metrics: None,
        }
    }

    /// Limits whose handler metrics are registered on `registry`, labelled with `service`.
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
            metrics: Some(HandlerMetrics {
                requests,
                in_flight,
                encode,
            }),
            ..ScrapeLimits::unmetered(max, timeout)
        })
    }

    fn count(&self, status: u16) {
        if let Some(m) = &self.metrics {
            m.requests.with_label_values(&[&status.to_string()]).inc();
        }
    }
}

/// A scrape admitted under the concurrency limit: encode it with [`respond`](Self::respond),
/// off the async workers. Leaves the count of scrapes in flight when dropped.
#[derive(Debug)]
pub struct Scrape {
    encoder: MetricsEncoder,
    limits: Arc<ScrapeLimits>,
}

impl MetricsEncoder {
    /// Admits a scrape, or answers `503` when [`max_concurrent_scrapes`] are encoding already.
    ///
    /// [`max_concurrent_scrapes`]: crate::ObserveBuilder::max_concurrent_scrapes
    pub fn admit(&self) -> Result<Scrape, Answer> {
        let limits = self.limits().clone();
        let now = limits.in_flight.fetch_add(1, Ordering::AcqRel) + 1;
        if now > limits.max {
            limits.in_flight.fetch_sub(1, Ordering::AcqRel);
            limits.count(503);
            return Err(busy(&format!(
                "too many concurrent scrapes of /metrics: {} encode at once at most (max_concurrent_scrapes)",
                limits.max
            )));
        }
        if let Some(m) = &limits.metrics {
            m.in_flight.inc();
        }
        Ok(Scrape {
            encoder: self.clone(),
            limits,
        })
    }

    /// How long an adapter lets an admitted scrape encode before answering the timeout's
    /// `503` ([`conclude`](Self::conclude) with `None`).
    pub fn scrape_timeout(&self) -> Duration {
        self.limits().timeout
    }
}

impl MetricsEncoder {
    /// The answer to a scrape an adapter ran off its async workers and waited for at most
    /// [`scrape_timeout`](Self::scrape_timeout): its own answer, a `500` naming why the
    /// blocking pool failed it (`Err`), or the timeout's `503` (`None`). The answer is counted
    /// in `observe_metrics_handler_requests_total` here, once: the one the client is sent (an
    /// encoding that timed out and ends later is not counted again).
    pub fn conclude(&self, outcome: Option<Result<Answer, String>>) -> Answer {
        let limits = self.limits();
        let answer = match outcome {
            Some(Ok(answer)) => answer,
            Some(Err(failed)) => Answer::text(500, &format!("encoding metrics failed: {failed}"))
                .with_header("vary", "accept, accept-encoding"),
            None => busy(&format!(
                "encoding /metrics took longer than {:?} (scrape_timeout)",
                limits.timeout
            )),
        };
        limits.count(answer.status);
        answer
    }
}

impl Scrape {
    /// The `/metrics` answer for these `Accept` and `Accept-Encoding` headers (see
    /// [`MetricsEncoder::respond`]), timed in `observe_metrics_handler_encode_duration_seconds`.
    /// Blocks while it encodes. Hand it to [`MetricsEncoder::conclude`], which counts what is
    /// sent.
    pub fn respond(self, accept: Option<&str>, accept_encoding: Option<&str>) -> Answer {
        let started = Instant::now();
        let answer = self
            .encoder
            .answer(Format::negotiate(accept), accept_encoding);
        if let Some(m) = &self.limits.metrics {
            m.encode.observe(started.elapsed().as_secs_f64());
        }
        answer
    }
}

impl Drop for Scrape {
    fn drop(&mut self) {
        self.limits.in_flight.fetch_sub(1, Ordering::AcqRel);
        if let Some(m) = &self.limits.metrics {
            m.in_flight.dec();
        }
    }
}

fn busy(message: &str) -> Answer {
    Answer::text(503, message)
        .with_header("retry-after", "1")
        .with_header("vary", "accept, accept-encoding")
}

#[cfg(test)]
mod tests {
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

    #[test]
    fn scrapes_beyond_the_limit_are_refused_until_one_ends() {
        let metrics = HttpMetrics::builder("svc")
            .max_concurrent_scrapes(2)
            .unwrap()
            .build()
            .unwrap();
        let encoder = metrics.encoder();
        let first = encoder.admit().unwrap();
        let second = encoder.admit().unwrap();
        let refused = encoder.admit().unwrap_err();
        assert_eq!(refused.status, 503);
        assert!(refused.body_text().contains("2 encode at once at most"));
        assert_eq!(refused.header("retry-after"), Some("1"));
        drop(first);
        let answer = encoder.conclude(Some(Ok(second.respond(None, None))));
        assert_eq!(answer.status, 200);
        assert_eq!(encoder.respond(None, None).status, 200);
        assert_eq!(encoder.conclude(None).status, 503);
        // Admitted, encoded after its timeout was answered: only the 503 was sent and counted.
        let late = encoder.admit().unwrap();
        assert_eq!(encoder.conclude(None).status, 503);
        late.respond(None, None);
        let failed = encoder.conclude(Some(Err("the blocking pool shut down".to_owned())));
        assert_eq!(failed.status, 500);
        assert_eq!(
            (
                handled(&metrics, "200"),
                handled(&metrics, "503"),
                handled(&metrics, "500")
            ),
            (2, 3, 1)
        );
        // Nothing left in flight: the limit is whole again.
        let again: Vec<_> = (0..2).map(|_| encoder.admit().unwrap()).collect();
        assert!(encoder.admit().is_err());
        drop(again);
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
