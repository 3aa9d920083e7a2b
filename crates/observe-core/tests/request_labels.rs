//! Property tests of what observe-core reads from a request: the method, the route template
//! a framework (or a custom route function) gives, the status, and `Accept-Encoding`. Whatever
//! a client sends, nothing panics and every label value stays in its bounded set
//! (`docs/metrics.md`, "Label values").
use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;

use observe_core::adapter::MethodLabel;
use observe_core::prometheus::{IntCounter, Registry};
use observe_core::{
    Format, HttpMetrics, MetricsEncoder, MetricsEndpoint, OVERFLOW_ROUTE, UNMATCHED_ROUTE,
};
use proptest::prelude::*;

const STANDARD_METHODS: [&str; 9] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH",
];

/// Methods as clients send them: the standard ones, near misses, and anything at all.
fn method() -> impl Strategy<Value = String> {
    prop_oneof![
        proptest::sample::select(&STANDARD_METHODS[..]).prop_map(str::to_owned),
        proptest::sample::select(&STANDARD_METHODS[..]).prop_map(|m| m.to_ascii_lowercase()),
        "[A-Z]{1,12}",
        ".{0,20}",
    ]
}

/// Route templates, as a custom route function might return them from raw paths: few enough
/// to repeat, and some with the characters exposition escapes.
fn template() -> impl Strategy<Value = Option<String>> {
    prop_oneof![
        1 => Just(None),
        4 => "/r[0-9]{1,2}".prop_map(Some),
        1 => ".{0,30}".prop_map(Some),
        1 => Just(Some("/q\"uote\\d\nline".to_owned())),
    ]
}

/// `(http_request_method, http_route, http_response_status_code)` of a series.
type Series = (String, String, String);

/// Each series of `http_server_requests_total` with its value, and the methods of the
/// active-requests gauge.
fn recorded(metrics: &HttpMetrics) -> (BTreeMap<Series, u64>, Vec<String>) {
    let mut requests = BTreeMap::new();
    let mut active_methods = Vec::new();
    for family in metrics.registry().gather() {
        for m in family.get_metric() {
            let label = |name: &str| {
                m.get_label()
                    .iter()
                    .find(|l| l.name() == name)
                    .map(|l| l.value().to_owned())
                    .unwrap_or_default()
            };
            match family.name() {
                "http_server_requests_total" => {
                    let key = (
                        label("http_request_method"),
                        label("http_route"),
                        label("http_response_status_code"),
                    );
                    *requests.entry(key).or_default() += m.get_counter().value() as u64;
                }
                "http_server_active_requests" => {
                    assert_eq!(m.get_gauge().value(), 0.0, "nothing is in flight");
                    active_methods.push(label("http_request_method"));
                }
                _ => {}
            }
        }
    }
    (requests, active_methods)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn a_method_label_is_the_method_if_standard_else_other(method in method()) {
        let label = MethodLabel::from_method(&method).as_str();
        if STANDARD_METHODS.contains(&method.as_str()) {
            prop_assert_eq!(label, method.as_str());
        } else {
            prop_assert_eq!(label, "_OTHER");
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Requests with any method, template and status, through the whole record path: each is
    /// counted once, in a series whose method is one of ten, whose route is a template seen
    /// among the first `max_routes` (or `unmatched`, `_overflow`), and whose status is the
    /// number given; excluded templates are never counted.
    #[test]
    fn every_recorded_label_stays_in_its_bounded_set(
        max_routes in 1usize..6,
        requests in proptest::collection::vec((method(), template(), 100u16..1000), 1..60),
    ) {
        let metrics = HttpMetrics::builder("svc")
            .max_routes(max_routes)
            .unwrap()
            .exclude_routes(["/r0"])
            .build()
            .unwrap();
        let mut expected: BTreeMap<Series, u64> = BTreeMap::new();
        let mut interned: Vec<String> = Vec::new();
        for (method, template, status) in &requests {
            let record = metrics.id().start(method, template.as_deref());
            let route = match template.as_deref() {
                Some("/r0") => {
                    prop_assert!(record.is_none(), "an excluded route was recorded");
                    continue;
                }
                None => UNMATCHED_ROUTE.to_owned(),
                Some(t) if interned.iter().any(|i| i == t) => t.to_owned(),
                Some(t) if interned.len() < max_routes => {
                    interned.push(t.to_owned());
                    t.to_owned()
                }
                Some(_) => OVERFLOW_ROUTE.to_owned(),
            };
            record.expect("not excluded").respond(*status).finish();
            let method = MethodLabel::from_method(method).as_str().to_owned();
            *expected.entry((method, route, status.to_string())).or_default() += 1;
        }
        let (counted, active_methods) = recorded(&metrics);
        prop_assert_eq!(&counted, &expected);
        let methods: BTreeSet<&str> = STANDARD_METHODS.iter().copied().chain(["_OTHER"]).collect();
        for (method, route, _) in counted.keys() {
            prop_assert!(methods.contains(method.as_str()), "method {:?}", method);
            prop_assert!(
                route == UNMATCHED_ROUTE || route == OVERFLOW_ROUTE || interned.contains(route),
                "route {:?}", route
            );
        }
        for method in &active_methods {
            prop_assert!(methods.contains(method.as_str()), "gauge method {:?}", method);
        }
        // Whatever the templates held, the exposition is one line per sample.
        let text = MetricsEncoder::new(metrics.registry().clone()).encode(Format::Text, None).unwrap().body;
        let text = String::from_utf8(text).unwrap();
        let samples = text
            .lines()
            .filter(|l| l.starts_with("http_server_requests_total{"))
            .count();
        prop_assert_eq!(samples, expected.len());
    }
}

/// One `Accept-Encoding` item: a coding and an optional weight, written as clients do.
fn coding() -> impl Strategy<Value = (String, Option<String>)> {
    let name = prop_oneof![
        Just("gzip".to_owned()),
        Just("GZip".to_owned()),
        Just("x-gzip".to_owned()),
        Just("*".to_owned()),
        Just("br".to_owned()),
        Just("deflate".to_owned()),
        Just("identity".to_owned()),
        "[a-z]{1,8}",
    ];
    let weight = prop_oneof![
        Just(None),
        Just(Some("0".to_owned())),
        Just(Some("0.0".to_owned())),
        Just(Some("0.000".to_owned())),
        Just(Some("1".to_owned())),
        Just(Some("1.0".to_owned())),
        (1u32..=999).prop_map(|w| Some(format!("0.{w:03}"))),
    ];
    (name, weight)
}

/// RFC 9110 §12.5.3 as observe reads it: the last `gzip`/`x-gzip` item decides by its weight;
/// without one, the last `*`; without either, no gzip.
fn accepts_gzip_model(items: &[(String, Option<String>)]) -> bool {
    let positive =
        |w: &Option<String>| w.as_deref().is_none_or(|w| w.parse::<f32>().unwrap() > 0.0);
    let last = |pred: &dyn Fn(&str) -> bool| {
        items
            .iter()
            .rev()
            .find(|(c, _)| pred(c))
            .map(|(_, w)| positive(w))
    };
    last(&|c| c.eq_ignore_ascii_case("gzip") || c.eq_ignore_ascii_case("x-gzip"))
        .or_else(|| last(&|c| c == "*"))
        .unwrap_or(false)
}

fn small_registry() -> Registry {
    let registry = Registry::new();
    let counter = IntCounter::new("jobs_total", "Jobs.").unwrap();
    counter.inc_by(7);
    registry.register(Box::new(counter)).unwrap();
    registry
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Any header value at all: no panic, and the answer is the exposition, plain or gzipped.
    #[test]
    fn any_accept_encoding_gets_the_exposition_plain_or_gzipped(header in ".{0,80}") {
        let encoder = MetricsEncoder::new(small_registry());
        let plain = encoder.encode(Format::Text, None).unwrap().body;
        let out = encoder.encode(Format::Text, Some(&header)).unwrap();
        match out.content_encoding {
            None => prop_assert_eq!(&out.body, &plain),
            Some(encoding) => {
                prop_assert_eq!(encoding, "gzip");
                let mut text = Vec::new();
                flate2::read::GzDecoder::new(&out.body[..]).read_to_end(&mut text).unwrap();
                prop_assert_eq!(&text, &plain);
            }
        }
        let answer = MetricsEndpoint::new(small_registry()).respond_blocking(None, Some(&header));
        prop_assert_eq!(answer.status, 200);
        prop_assert_eq!(answer.header("vary"), Some("accept, accept-encoding"));
    }

    /// Well-formed lists with weights: gzip exactly when the RFC's rule says so.
    #[test]
    fn gzip_is_chosen_as_the_weights_say(
        items in proptest::collection::vec(coding(), 0..6),
        spaces in proptest::bool::ANY,
    ) {
        let sep = if spaces { ", " } else { "," };
        let header = items
            .iter()
            .map(|(c, w)| match w {
                Some(w) if spaces => format!("{c} ; q={w}"),
                Some(w) => format!("{c};q={w}"),
                None => c.clone(),
            })
            .collect::<Vec<_>>()
            .join(sep);
        let out = MetricsEncoder::new(small_registry()).encode(Format::Text, Some(&header)).unwrap();
        prop_assert_eq!(out.content_encoding.is_some(), accepts_gzip_model(&items), "{:?}", header);
    }

    /// Any `Accept` value at all: no panic, a 200 in one of the three formats, the
    /// `Content-Type` saying which.
    #[test]
    fn any_accept_gets_one_of_the_three_formats(header in ".{0,120}") {
        let format = Format::negotiate(Some(&header));
        let answer = MetricsEndpoint::new(small_registry()).respond_blocking(Some(&header), None);
        prop_assert_eq!(answer.status, 200);
        prop_assert_eq!(answer.content_type, format.content_type());
        prop_assert!([Format::Text, Format::OpenMetrics, Format::Protobuf].contains(&format));
    }

    /// Lists of the types scrapers send, with weights: the supported type of the highest
    /// weight wins (the first of equal weights), text when none is acceptable.
    #[test]
    fn the_highest_weighted_supported_format_wins(
        items in proptest::collection::vec((0usize..5, proptest::option::of(0u32..=10)), 0..6),
    ) {
        const TYPES: [(&str, Option<Format>); 5] = [
            ("application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=delimited", Some(Format::Protobuf)),
            ("application/openmetrics-text;version=1.0.0", Some(Format::OpenMetrics)),
            ("text/plain;version=0.0.4", Some(Format::Text)),
            ("application/json", None),
            ("application/openmetrics-text;version=9.9.9", None),
        ];
        let header = items
            .iter()
            .map(|&(t, q)| match q {
                Some(q) => format!("{};q={}", TYPES[t].0, q as f32 / 10.0),
                None => TYPES[t].0.to_owned(),
            })
            .collect::<Vec<_>>()
            .join(",");
        let mut want = (0.0f32, Format::Text);
        for &(t, q) in &items {
            let q = q.map_or(1.0, |q| q as f32 / 10.0);
            if let Some(format) = TYPES[t].1 {
                if q > want.0 {
                    want = (q, format);
                }
            }
        }
        prop_assert_eq!(Format::negotiate(Some(&header)), want.1, "{}", header);
    }
}
