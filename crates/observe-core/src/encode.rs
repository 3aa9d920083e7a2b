//! Encoding a registry for `/metrics`: the formats a scraper can ask for ([`Format`]) and the
//! bytes of each ([`MetricsEncoder`]), gzipped when accepted.

use std::io::Write;

use flate2::write::GzEncoder;
use flate2::Compression;
use prometheus::Registry;

use crate::collector::gather;
use crate::error::ObserveError;
use crate::exposition::{protobuf, text};

/// `Content-Type` of the Prometheus text exposition format 0.0.4.
pub const TEXT_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";
/// `Content-Type` of the OpenMetrics 1.0 text format.
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// `Content-Type` of the Prometheus protobuf format (length-delimited `MetricFamily`
/// messages), the one that carries native histograms.
pub const PROTOBUF_CONTENT_TYPE: &str =
    "application/vnd.google.protobuf; proto=io.prometheus.client.MetricFamily; encoding=delimited";

/// An exposition format `/metrics` can answer in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// The Prometheus text format 0.0.4: no exemplars, no native histograms. The default.
    Text,
    /// OpenMetrics 1.0 text: exemplars, `_created`.
    OpenMetrics,
    /// The Prometheus protobuf format: exemplars, native histograms.
    Protobuf,
}

impl Format {
    /// The format a scraper's `Accept` header asks for, as Go's `promhttp` picks it: the
    /// acceptable type with the highest weight among protobuf (`proto=io.prometheus.client.
    /// MetricFamily; encoding=delimited`), OpenMetrics (version 1.0.0, 0.0.1 or none) and text;
    /// the text format when nothing matches or no header was sent.
    ///
    /// ```
    /// use observe_core::Format;
    /// assert_eq!(Format::negotiate(None), Format::Text);
    /// assert_eq!(Format::negotiate(Some("application/openmetrics-text;version=1.0.0")), Format::OpenMetrics);
    /// assert_eq!(
    ///     Format::negotiate(Some("application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=delimited;q=0.8,text/plain;q=0.5")),
    ///     Format::Protobuf,
    /// );
    /// assert_eq!(Format::negotiate(Some("application/json")), Format::Text);
    /// ```
    pub fn negotiate(accept: Option<&str>) -> Format {
        let Some(accept) = accept else {
            return Format::Text;
        };
        let mut best = (0.0f32, Format::Text);
        for item in accept.split(',') {
            let mut parts = item.split(';');
            let media = parts.next().unwrap_or("").trim();
            let mut q = 1.0f32;
            let (mut proto, mut encoding, mut version) = (None, None, None);
            for param in parts {
                let Some((k, v)) = param.split_once('=') else {
                    continue;
                };
                let (k, v) = (k.trim(), v.trim().trim_matches('"'));
                if k.eq_ignore_ascii_case("q") {
                    q = v.parse().unwrap_or(0.0);
                } else if k.eq_ignore_ascii_case("proto") {
                    proto = Some(v);
                } else if k.eq_ignore_ascii_case("encoding") {
                    encoding = Some(v);
                } else if k.eq_ignore_ascii_case("version") {
                    version = Some(v);
                }
            }
            let format = if media.eq_ignore_ascii_case("application/vnd.google.protobuf")
                && proto == Some("io.prometheus.client.MetricFamily")
                && encoding == Some("delimited")
            {
                Format::Protobuf
            } else if media.eq_ignore_ascii_case("application/openmetrics-text")
                && matches!(version, None | Some("1.0.0") | Some("0.0.1"))
            {
                Format::OpenMetrics
            } else if (media.eq_ignore_ascii_case("text/plain")
                && matches!(version, None | Some("0.0.4")))
                || media == "*/*"
                || media.eq_ignore_ascii_case("text/*")
            {
                Format::Text
            } else {
                continue;
            };
            // The first of equal weights wins, as the order of the header says.
            if q.is_finite() && q > best.0 {
                best = (q, format);
            }
        }
        best.1
    }

    /// The `Content-Type` of an answer in this format.
    pub fn content_type(self) -> &'static str {
        match self {
            Format::Text => TEXT_CONTENT_TYPE,
            Format::OpenMetrics => OPENMETRICS_CONTENT_TYPE,
            Format::Protobuf => PROTOBUF_CONTENT_TYPE,
        }
    }
}

/// Encodes a registry for a `/metrics` response, negotiating the format and gzip.
///
/// Every family on the registry is written in the format asked for; observe's own carry their
/// exemplars (OpenMetrics, protobuf) and native histograms (protobuf) when configured.
///
/// Encoding walks every series: call it off the async worker threads, as
/// [`MetricsEndpoint`](crate::MetricsEndpoint) does (it also bounds concurrent scrapes and
/// times them out).
///
/// ```
/// use observe_core::{Format, HttpMetrics, MetricsEncoder};
///
/// let metrics = HttpMetrics::new("svc");
/// let encoder = MetricsEncoder::new(metrics.registry().clone());
/// let plain = encoder.encode(Format::Text, None)?;
/// assert_eq!(plain.content_encoding, None);
/// let gzipped = encoder.encode(Format::OpenMetrics, Some("gzip, deflate, br"))?;
/// assert_eq!(gzipped.content_encoding, Some("gzip"));
/// # Ok::<(), observe_core::ObserveError>(())
/// ```
#[derive(Debug, Clone)]
pub struct MetricsEncoder {
    registry: Registry,
}

/// A ready `/metrics` response body and the headers that describe it.
#[derive(Debug)]
pub struct EncodedMetrics {
    /// The body, compressed when `content_encoding` says so.
    pub body: Vec<u8>,
    /// The format's `Content-Type`.
    pub content_type: &'static str,
    /// `Some("gzip")` when the body is gzipped.
    pub content_encoding: Option<&'static str>,
}

impl MetricsEncoder {
    /// An encoder for everything registered on `registry`.
    pub fn new(registry: Registry) -> Self {
        MetricsEncoder { registry }
    }

    /// Gathers and encodes the registry in `format`; gzips when `accept_encoding` (the
    /// request's `Accept-Encoding` header, if any) accepts gzip.
    pub fn encode(
        &self,
        format: Format,
        accept_encoding: Option<&str>,
    ) -> Result<EncodedMetrics, ObserveError> {
        let families = gather(&self.registry);
        let body = match format {
            Format::Text | Format::OpenMetrics => {
                let dialect = match format {
                    Format::OpenMetrics => text::Dialect::OpenMetrics,
                    _ => text::Dialect::Prometheus,
                };
                let mut out = String::with_capacity(64 * 1024);
                text::write(&families, dialect, &mut out);
                out.into_bytes()
            }
            Format::Protobuf => {
                let mut out = Vec::with_capacity(32 * 1024);
                protobuf::write(&families, &mut out);
                out
            }
        };
        let content_type = format.content_type();
        if !accept_encoding.is_some_and(accepts_gzip) {
            return Ok(EncodedMetrics {
                body,
                content_type,
                content_encoding: None,
            });
        }
        let mut gz = GzEncoder::new(Vec::with_capacity(body.len() / 4), Compression::fast());
        gz.write_all(&body).map_err(ObserveError::Compress)?;
        Ok(EncodedMetrics {
            body: gz.finish().map_err(ObserveError::Compress)?,
            content_type,
            content_encoding: Some("gzip"),
        })
    }
}

/// Whether an `Accept-Encoding` value accepts gzip (RFC 9110 §12.5.3): `gzip`, `x-gzip` or
/// `*` with a non-zero weight, unless gzip itself is refused with `q=0`.
pub(crate) fn accepts_gzip(accept_encoding: &str) -> bool {
    let mut gzip = None;
    let mut star = None;
    for item in accept_encoding.split(',') {
        let mut parts = item.split(';');
        let coding = parts.next().unwrap_or("").trim();
        let q = parts
            .filter_map(|p| {
                let (k, v) = p.split_once('=')?;
                k.trim()
                    .eq_ignore_ascii_case("q")
                    .then(|| v.trim().parse::<f32>().ok())?
            })
            .next()
            .unwrap_or(1.0);
        if coding.eq_ignore_ascii_case("gzip") || coding.eq_ignore_ascii_case("x-gzip") {
            gzip = Some(q > 0.0);
        } else if coding == "*" {
            star = Some(q > 0.0);
        }
    }
    gzip.or(star).unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::accepts_gzip;

    #[test]
    fn gzip_negotiation_follows_weights() {
        for yes in [
            "gzip",
            "GZIP",
            "deflate, gzip;q=0.5",
            "x-gzip",
            "*",
            "br, *;q=0.1",
            " gzip ; q=1",
        ] {
            assert!(accepts_gzip(yes), "{yes:?}");
        }
        for no in [
            "",
            "identity",
            "br",
            "gzip;q=0",
            "*;q=0",
            "gzip;q=0, *",
            "gzip;q=bogus-is-not-zero-but",
            ";;;",
        ] {
            if no == "gzip;q=bogus-is-not-zero-but" {
                // An unparsable weight is ignored: the coding counts as accepted.
                assert!(accepts_gzip(no));
                continue;
            }
            assert!(!accepts_gzip(no), "{no:?}");
        }
    }
}

#[cfg(test)]
mod format_tests {
    use super::*;
    use crate::HttpMetrics;

    /// A registry with observe's families and some of every kind the `prometheus` crate makes.
    fn busy_registry() -> HttpMetrics {
        let metrics = HttpMetrics::builder("svc")
            .const_label("region", "eu \"west\"\\1\n")
            .unwrap()
            .build()
            .unwrap();
        for (route, status) in [("/a", 200), ("/b/{id}", 404), ("/a", 500)] {
            let record = metrics.id().start("GET", Some(route)).unwrap();
            record.respond(status).finish();
        }
        let registry = metrics.registry();
        let counter = prometheus::IntCounterVec::new(
            prometheus::Opts::new("user_jobs_total", "Jobs.\nDone \\ \"here\"."),
            &["kind"],
        )
        .unwrap();
        counter.with_label_values(&["x"]).inc_by(3);
        registry.register(Box::new(counter)).unwrap();
        let gauge = prometheus::Gauge::new("user_temperature", "T.").unwrap();
        gauge.set(-1.5e-7);
        registry.register(Box::new(gauge)).unwrap();
        let histogram = prometheus::Histogram::with_opts(
            prometheus::HistogramOpts::new("user_latency_seconds", "L.").buckets(vec![0.5, 1.0]),
        )
        .unwrap();
        histogram.observe(0.7);
        registry.register(Box::new(histogram)).unwrap();
        metrics
    }

    fn body(metrics: &HttpMetrics, format: Format) -> Vec<u8> {
        MetricsEncoder::new(metrics.registry().clone())
            .encode(format, None)
            .unwrap()
            .body
    }

    #[test]
    fn the_text_format_is_what_the_prometheus_crate_writes() {
        let metrics = busy_registry();
        let ours = String::from_utf8(body(&metrics, Format::Text)).unwrap();
        let mut theirs = Vec::new();
        prometheus::Encoder::encode(
            &prometheus::TextEncoder::new(),
            &metrics.registry().gather(),
            &mut theirs,
        )
        .unwrap();
        let theirs = String::from_utf8(theirs).unwrap();
        // Process metrics change between the two reads; everything else must be identical.
        let stable = |s: &str| {
            s.lines()
                .filter(|l| !l.contains("process_"))
                .map(str::to_owned)
                .collect::<Vec<_>>()
        };
        assert_eq!(stable(&ours), stable(&theirs));
        assert!(ours.contains("process_cpu_seconds_total"));
    }

    #[test]
    fn openmetrics_names_counters_without_total_has_created_and_ends_in_eof() {
        let metrics = busy_registry();
        let om = String::from_utf8(body(&metrics, Format::OpenMetrics)).unwrap();
        assert!(om.ends_with("# EOF\n"), "{om}");
        assert!(om.contains("# TYPE http_server_requests counter\n"), "{om}");
        assert!(om.contains("# TYPE user_jobs counter\n"), "{om}");
        assert!(om.contains("user_jobs_total{kind=\"x\"} 3\n"), "{om}");
        assert!(
            om.contains("# HELP user_jobs Jobs.\\nDone \\\\ \\\"here\\\".\n"),
            "{om}"
        );
        let created = om
            .lines()
            .find(|l| l.starts_with("http_server_requests_created{"))
            .unwrap();
        let seconds: f64 = created.rsplit(' ').next().unwrap().parse().unwrap();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        assert!((now - 60.0..=now).contains(&seconds), "{created}");
    }

    #[test]
    fn every_format_has_every_family() {
        let metrics = busy_registry();
        let names: Vec<String> = metrics
            .registry()
            .gather()
            .iter()
            .map(|f| f.name().to_owned())
            .collect();
        let text = String::from_utf8(body(&metrics, Format::Text)).unwrap();
        let om = String::from_utf8(body(&metrics, Format::OpenMetrics)).unwrap();
        let pb = body(&metrics, Format::Protobuf);
        for name in &names {
            assert!(text.contains(&format!("# TYPE {name} ")), "{name}");
            let om_name = name.strip_suffix("_total").unwrap_or(name);
            assert!(om.contains(&format!("# TYPE {om_name} ")), "{name}");
            assert!(
                pb.windows(name.len()).any(|w| w == name.as_bytes()),
                "{name} in protobuf"
            );
        }
    }

    /// A registry made with `Registry::new_custom` prefixes and labels every family it gathers;
    /// observe's families, handed over around the crate's model, get the same.
    #[test]
    fn a_custom_registry_prefixes_and_labels_observes_families_too() {
        let labels = std::collections::HashMap::from([("env".to_owned(), "prod".to_owned())]);
        let registry = prometheus::Registry::new_custom(Some("app".into()), Some(labels)).unwrap();
        let metrics = HttpMetrics::builder("svc")
            .registry(registry.clone())
            .build()
            .unwrap();
        let record = metrics.id().start("GET", Some("/a")).unwrap();
        record.respond(200).finish();
        let mut theirs = Vec::new();
        prometheus::Encoder::encode(
            &prometheus::TextEncoder::new(),
            &registry.gather(),
            &mut theirs,
        )
        .unwrap();
        let theirs = String::from_utf8(theirs).unwrap();
        assert!(
            theirs.contains("app_http_server_requests_total{"),
            "{theirs}"
        );
        for format in [Format::Text, Format::OpenMetrics] {
            let ours = String::from_utf8(body(&metrics, format)).unwrap();
            let samples: Vec<&str> = ours.lines().filter(|l| !l.starts_with('#')).collect();
            assert!(
                samples
                    .iter()
                    .any(|l| l.starts_with("app_http_server_requests_total{")),
                "{format:?}: {ours}"
            );
            for line in samples {
                assert!(line.starts_with("app_"), "{format:?}: {line}");
                assert!(line.contains("env=\"prod\""), "{format:?}: {line}");
                assert!(!line.contains("__observe"), "{format:?}: {line}");
            }
        }
        let pb = body(&metrics, Format::Protobuf);
        let name = b"app_http_server_request_duration_seconds";
        assert!(pb.windows(name.len()).any(|w| w == name));
    }

    /// A sample's timestamp is in milliseconds in the Prometheus text format and in seconds
    /// in OpenMetrics.
    #[test]
    fn timestamps_are_milliseconds_in_text_and_seconds_in_openmetrics() {
        struct Stamped(prometheus::core::Desc);
        impl prometheus::core::Collector for Stamped {
            fn desc(&self) -> Vec<&prometheus::core::Desc> {
                vec![&self.0]
            }
            fn collect(&self) -> Vec<prometheus::proto::MetricFamily> {
                let mut gauge = prometheus::proto::Gauge::default();
                gauge.set_value(2.0);
                let mut metric = prometheus::proto::Metric::default();
                metric.set_gauge(gauge);
                metric.set_timestamp_ms(1_700_000_000_123);
                let mut family = prometheus::proto::MetricFamily::default();
                family.set_name("user_stamped".to_owned());
                family.set_help("S.".to_owned());
                family.set_field_type(prometheus::proto::MetricType::GAUGE);
                family.set_metric(vec![metric]);
                vec![family]
            }
        }
        let metrics = busy_registry();
        let desc = prometheus::core::Desc::new(
            "user_stamped".to_owned(),
            "S.".to_owned(),
            Vec::new(),
            Default::default(),
        )
        .unwrap();
        metrics
            .registry()
            .register(Box::new(Stamped(desc)))
            .unwrap();
        let text = String::from_utf8(body(&metrics, Format::Text)).unwrap();
        assert!(text.contains("\nuser_stamped 2 1700000000123\n"), "{text}");
        let om = String::from_utf8(body(&metrics, Format::OpenMetrics)).unwrap();
        assert!(om.contains("\nuser_stamped 2 1700000000.123\n"), "{om}");
    }

    /// A collector that gathers another registry from inside a scrape (through observe's
    /// encoder) leaves the outer scrape's families whole.
    #[test]
    fn a_scrape_inside_a_scrape_loses_nothing() {
        struct Nested(HttpMetrics);
        impl prometheus::core::Collector for Nested {
            fn desc(&self) -> Vec<&prometheus::core::Desc> {
                Vec::new()
            }
            fn collect(&self) -> Vec<prometheus::proto::MetricFamily> {
                let inner = body(&self.0, Format::Text);
                assert!(!inner.is_empty());
                Vec::new()
            }
        }
        let outer = busy_registry();
        let alone = String::from_utf8(body(&outer, Format::OpenMetrics)).unwrap();
        let inner = HttpMetrics::builder("inner").build().unwrap();
        outer.registry().register(Box::new(Nested(inner))).unwrap();
        let nested = String::from_utf8(body(&outer, Format::OpenMetrics)).unwrap();
        let observes = |s: &str| -> Vec<String> {
            s.lines()
                .filter(|l| l.starts_with("http_server_"))
                .map(str::to_owned)
                .collect()
        };
        assert_eq!(observes(&alone), observes(&nested));
    }

    /// OpenMetrics names a counter family without `_total`: a gauge `x` beside a counter
    /// `x_total` would be two families of one name, which parsers refuse (it happened to the
    /// runtime families once: `runtime::collector` checks its own names the same way).
    #[test]
    fn every_openmetrics_family_name_is_unique() {
        let om = String::from_utf8(body(&busy_registry(), Format::OpenMetrics)).unwrap();
        let mut names: Vec<&str> = om
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .filter_map(|l| l.split(' ').next())
            .collect();
        let all = names.len();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), all, "{om}");
    }

    #[test]
    fn negotiation_follows_weights_and_parameters() {
        let pb = "application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=delimited";
        let om = "application/openmetrics-text;version=1.0.0";
        for (accept, expected) in [
            ("", Format::Text),
            ("*/*", Format::Text),
            ("text/plain", Format::Text),
            (om, Format::OpenMetrics),
            ("application/openmetrics-text; version=0.0.1", Format::OpenMetrics),
            ("application/openmetrics-text; version=2.0.0", Format::Text),
            (pb, Format::Protobuf),
            ("application/vnd.google.protobuf;proto=other;encoding=delimited", Format::Text),
            ("application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=text", Format::Text),
            (&format!("{pb};q=0.5,{om};q=0.6"), Format::OpenMetrics),
            (&format!("{om};q=0.7,text/plain;version=0.0.4;q=0.8"), Format::Text),
            (&format!("{pb};q=0,{om};q=0"), Format::Text),
            (&format!("{pb},{om}"), Format::Protobuf),
            (&format!("{om},{pb}"), Format::OpenMetrics),
            ("application/openmetrics-text;q=bogus", Format::Text),
            (";;;,,,=;q=", Format::Text),
        ] {
            assert_eq!(Format::negotiate(Some(accept)), expected, "{accept:?}");
        }
    }
}

#[cfg(test)]
mod exemplar_tests {
    use super::*;
    use crate::{HttpMetrics, TraceContext, TraceHeaders};

    /// Request headers from a list.
    struct Headers(Vec<(&'static str, &'static str)>);

    impl TraceHeaders for Headers {
        fn get(&self, name: &str) -> Option<&[u8]> {
            self.0
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| v.as_bytes())
        }
    }

    const SAMPLED: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    fn openmetrics(metrics: &HttpMetrics) -> String {
        let out = MetricsEncoder::new(metrics.registry().clone())
            .encode(Format::OpenMetrics, None)
            .unwrap();
        String::from_utf8(out.body).unwrap()
    }

    fn request(metrics: &HttpMetrics, headers: Vec<(&'static str, &'static str)>) {
        let record = metrics
            .id()
            .start_with("GET", Some("/x"), &Headers(headers))
            .unwrap();
        record.respond(200).finish();
    }

    #[test]
    fn a_hook_replaces_traceparent_and_exemplars_can_be_turned_off() {
        let hooked = HttpMetrics::builder("svc")
            .trace_context(|headers| {
                let id = headers.get("x-trace")?;
                TraceContext::new(id.try_into().ok()?, [7; 8])
            })
            .build()
            .unwrap();
        // The hook decides: a valid traceparent alone gives nothing.
        request(&hooked, vec![("traceparent", SAMPLED)]);
        assert!(!openmetrics(&hooked).contains("trace_id"));
        request(&hooked, vec![("x-trace", "0123456789abcdef")]);
        let om = openmetrics(&hooked);
        assert!(
            om.contains(
                r#"# {trace_id="30313233343536373839616263646566",span_id="0707070707070707"}"#
            ),
            "{om}"
        );

        let off = HttpMetrics::builder("svc")
            .exemplars(false)
            .build()
            .unwrap();
        request(&off, vec![("traceparent", SAMPLED)]);
        assert!(!openmetrics(&off).contains("trace_id"));
    }

    /// The hook is the user's code: when it panics, the request was never counted as started,
    /// so nothing stays in flight.
    #[test]
    fn a_hook_that_panics_leaves_no_request_in_flight() {
        let metrics = HttpMetrics::builder("svc")
            .trace_context(|_| -> Option<TraceContext> { panic!("a bug in the hook") })
            .build()
            .unwrap();
        let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            metrics
                .id()
                .start_with("GET", Some("/x"), &Headers(vec![("traceparent", SAMPLED)]))
        }));
        assert!(caught.is_err());
        metrics
            .id()
            .start("GET", Some("/x"))
            .unwrap()
            .respond(200)
            .finish();
        let om = openmetrics(&metrics);
        let active: Vec<&str> = om
            .lines()
            .filter(|l| l.starts_with("http_server_active_requests{"))
            .collect();
        assert!(!active.is_empty(), "{om}");
        assert!(active.iter().all(|l| l.ends_with(" 0")), "{active:?}");
    }

    #[test]
    fn the_native_count_is_the_histograms_count_in_protobuf() {
        let metrics = HttpMetrics::builder("svc")
            .native_histograms(true)
            .build()
            .unwrap();
        for _ in 0..5 {
            request(&metrics, vec![("traceparent", SAMPLED)]);
        }
        let families = crate::collector::gather(metrics.registry());
        let duration = families
            .iter()
            .find(|f| f.name == "http_server_request_duration_seconds")
            .unwrap();
        let crate::exposition::model::Value::Histogram(h) = &duration.metrics[0].value else {
            panic!("a histogram");
        };
        let native = h.native.as_ref().expect("native buckets");
        assert_eq!(native.schema, 3);
        let total: u64 = native.zero_count + native.positive.iter().map(|b| b.1).sum::<u64>();
        assert_eq!((total, h.count), (5, 5));
        assert!(h.buckets.iter().any(|b| b.exemplar.is_some()));
    }
}
