//! The per-request work of observe-core, without any framework around it.
//!
//! `record_cached_route`: resolve a route template seen before, start a record, respond,
//! count a body, complete — what every adapter does once per request.

// criterion's macros generate undocumented items.
#![allow(missing_docs)]

use criterion::{criterion_group, criterion_main, Criterion};
use observe_core::HttpMetrics;

fn record(c: &mut Criterion) {
    let metrics = HttpMetrics::new("bench");
    c.bench_function("record_cached_route", |b| {
        b.iter(|| {
            let route = metrics.route(Some("/users/{id}"));
            let mut record = metrics.start("GET", route).unwrap();
            record.responded(200);
            record.add_response_bytes(7);
            record.complete();
        })
    });
    let metrics = HttpMetrics::builder("bench")
        .size_histograms(false)
        .build()
        .unwrap();
    c.bench_function("record_cached_route_no_sizes", |b| {
        b.iter(|| {
            let route = metrics.route(Some("/users/{id}"));
            let mut record = metrics.start("GET", route).unwrap();
            record.responded(200);
            record.complete();
        })
    });
    let route = metrics.route(Some("/users/{id}"));
    c.bench_function("route_lookup", |b| {
        b.iter(|| metrics.route(std::hint::black_box(Some("/users/{id}"))))
    });
    c.bench_function("record_known_route_id", |b| {
        b.iter(|| {
            let mut record = metrics.start("GET", route).unwrap();
            record.responded(200);
            record.complete();
        })
    });
    c.bench_function("std_instant_now_twice", |b| {
        b.iter(|| {
            let t = std::time::Instant::now();
            std::hint::black_box(t.elapsed())
        })
    });
    c.bench_function("quanta_instant_now_twice", |b| {
        b.iter(|| {
            let t = quanta::Instant::now();
            std::hint::black_box(t.elapsed())
        })
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(50);
    targets = record
}
criterion_main!(benches);
