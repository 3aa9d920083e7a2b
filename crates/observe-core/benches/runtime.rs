//! What the `tokio_*` families add to a scrape (`runtime-metrics` feature).
//!
//! Two registries of the same service, 50 label sets (900 series): one built with
//! `runtime_metrics(false)`, one with the families of a watched 2-worker multi-thread runtime
//! (and its watchdog running, as in a service).
//!
//! * `encode_without_runtime_metrics`, `encode_with_runtime_metrics`: one `/metrics` encode.
//! * `runtime_metrics_added`: the difference, paired: blocks of 100 encodes alternate between
//!   the two registries inside every sample; the time reported is with minus without, per
//!   encode.

// criterion's macros generate undocumented items.
#![allow(missing_docs)]
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use observe_core::{HttpMetrics, MetricsEncoder};

fn service(runtime_metrics: bool) -> MetricsEncoder {
    let metrics = HttpMetrics::builder("bench")
        .size_histograms(false)
        .runtime_metrics(runtime_metrics)
        .build()
        .unwrap();
    for i in 0..50 {
        let template = format!("/route/{i}/{{id}}");
        let record = metrics.id().start("GET", Some(&template)).unwrap();
        record.respond(200).finish();
    }
    MetricsEncoder::new(metrics.registry().clone())
}

fn encode_n(encoder: &MetricsEncoder, n: u64) -> Duration {
    let start = Instant::now();
    for _ in 0..n {
        std::hint::black_box(
            encoder
                .encode(observe_core::Format::Text, None)
                .unwrap()
                .body
                .len(),
        );
    }
    start.elapsed()
}

fn runtime(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .unwrap();
    assert!(rt.block_on(async { observe_core::runtime::watch_current() }));
    let without = service(false);
    let with = service(true);
    let text =
        String::from_utf8(with.encode(observe_core::Format::Text, None).unwrap().body).unwrap();
    assert!(text.contains("tokio_worker_busy_seconds_total{worker=\"1\"}"));
    let text = String::from_utf8(
        without
            .encode(observe_core::Format::Text, None)
            .unwrap()
            .body,
    )
    .unwrap();
    assert!(!text.contains("tokio_"));

    c.bench_function("encode_without_runtime_metrics", |b| {
        b.iter(|| {
            without
                .encode(observe_core::Format::Text, None)
                .unwrap()
                .body
                .len()
        })
    });
    c.bench_function("encode_with_runtime_metrics", |b| {
        b.iter(|| {
            with.encode(observe_core::Format::Text, None)
                .unwrap()
                .body
                .len()
        })
    });
    c.bench_function("runtime_metrics_added", |b| {
        b.iter_custom(|iters| {
            const BLOCK: u64 = 100;
            // Signed: a block where "with" came out faster counts against the others.
            let mut added: i128 = 0;
            let mut left = iters;
            while left > 0 {
                let n = left.min(BLOCK);
                let a = encode_n(&without, n);
                let b = encode_n(&with, n);
                added += b.as_nanos() as i128 - a.as_nanos() as i128;
                left -= n;
            }
            // criterion refuses a zero-time sample.
            Duration::from_nanos(added.max(1) as u64)
        })
    });
}

criterion_group!(benches, runtime);
criterion_main!(benches);
