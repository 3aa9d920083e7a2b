//! `/metrics` encoding cost.
//!
//! Series are counted as Prometheus counts them: every exposed sample line is one series.
//! One `(route, method, status)` label set of observe's families (size histograms off) is 18
//! series: 14 buckets + `+Inf` + `_sum` + `_count` of the duration, and the request counter.
//!
//! * `encode_10k_series`: 556 label sets, 10,008 series (and `_openmetrics`, `_protobuf`).
//! * `encode_10k_series_native_*`: the same label sets with native histograms on and
//!   exemplars on every bucket that has requests, in each format.
//! * `encode_10k_label_sets`: 10,000 label sets, 180,000 series.
//! * `encode_10k_counters`: a plain registry of 10,000 counter series, for scale.

// criterion's macros generate undocumented items.
#![allow(missing_docs)]
use criterion::{criterion_group, criterion_main, Criterion};
use observe_core::{Format, HttpMetrics, MetricsEncoder, TraceHeaders};

fn http_metrics_with(label_sets: usize) -> HttpMetrics {
    let metrics = HttpMetrics::builder("bench")
        .max_routes(label_sets)
        .unwrap()
        .size_histograms(false)
        .build()
        .unwrap();
    for i in 0..label_sets {
        let template = format!("/route/{i}/{{id}}");
        let record = metrics.id().start("GET", Some(&template)).unwrap();
        record.respond(200).finish();
    }
    metrics
}

/// As [`http_metrics_with`], with native histograms on and 20 traced requests of spread
/// durations per label set: each series has exemplars and about ten native buckets.
fn http_metrics_native(label_sets: usize) -> HttpMetrics {
    struct Traced(Vec<u8>);
    impl TraceHeaders for Traced {
        fn get(&self, _: &str) -> Option<&[u8]> {
            Some(&self.0)
        }
    }
    let metrics = HttpMetrics::builder("bench")
        .max_routes(label_sets)
        .unwrap()
        .size_histograms(false)
        .native_histograms(true)
        .exemplar_interval(std::time::Duration::ZERO)
        .build()
        .unwrap();
    for i in 0..label_sets {
        let template = format!("/route/{i}/{{id}}");
        for k in 0..20u32 {
            let header = format!("00-4bf92f3577b34da6a3ce929d{i:06x}{k:02x}-00f067aa0ba902b7-01");
            let record = metrics
                .id()
                .start_with("GET", Some(&template), &Traced(header.into_bytes()))
                .unwrap();
            std::thread::sleep(std::time::Duration::from_nanos(1 << (k % 12)));
            record.respond(200).finish();
        }
    }
    metrics
}

fn encode(c: &mut Criterion) {
    let metrics = http_metrics_with(556);
    let encoder = MetricsEncoder::new(metrics.registry().clone());
    c.bench_function("encode_10k_series", |b| {
        b.iter(|| encoder.encode(Format::Text, None).unwrap().body.len())
    });
    c.bench_function("encode_10k_series_openmetrics", |b| {
        b.iter(|| {
            encoder
                .encode(Format::OpenMetrics, None)
                .unwrap()
                .body
                .len()
        })
    });
    c.bench_function("encode_10k_series_protobuf", |b| {
        b.iter(|| encoder.encode(Format::Protobuf, None).unwrap().body.len())
    });
    c.bench_function("encode_10k_series_gzip", |b| {
        b.iter(|| {
            encoder
                .encode(Format::Text, Some("gzip"))
                .unwrap()
                .body
                .len()
        })
    });
    // The same with native histograms on, every series with traced requests (exemplars).
    let native = http_metrics_native(556);
    let native_encoder = MetricsEncoder::new(native.registry().clone());
    for (name, format) in [
        ("encode_10k_series_native_text", Format::Text),
        ("encode_10k_series_native_openmetrics", Format::OpenMetrics),
        ("encode_10k_series_native_protobuf", Format::Protobuf),
    ] {
        c.bench_function(name, |b| {
            b.iter(|| native_encoder.encode(format, None).unwrap().body.len())
        });
    }
    let metrics = http_metrics_with(10_000);
    let encoder = MetricsEncoder::new(metrics.registry().clone());
    c.bench_function("encode_10k_label_sets", |b| {
        b.iter(|| encoder.encode(Format::Text, None).unwrap().body.len())
    });

    let registry = prometheus::Registry::new();
    let counters = prometheus::IntCounterVec::new(
        prometheus::Opts::new("bench_counter_total", "bench"),
        &["id"],
    )
    .unwrap();
    for i in 0..10_000 {
        counters.with_label_values(&[&i.to_string()]).inc();
    }
    registry.register(Box::new(counters)).unwrap();
    let encoder = MetricsEncoder::new(registry);
    c.bench_function("encode_10k_counters", |b| {
        b.iter(|| encoder.encode(Format::Text, None).unwrap().body.len())
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20);
    targets = encode
}
criterion_main!(benches);
