//! The per-request work of observe-core, without any framework around it.
//!
//! `record_cached_route`: resolve a route template seen before, start a record, respond,
//! count a body, complete — what every adapter does once per request.
//! `record_contended_2_threads`: the same on two threads at once, on the same series.
//! `record_traced`, `record_traced_every_exemplar_kept`: with a sampled `traceparent`.
//! `record_native`: with native histogram buckets on.

// criterion's macros generate undocumented items.
#![allow(missing_docs)]

use criterion::{criterion_group, criterion_main, Criterion};
use observe_core::{HttpMetrics, TraceHeaders};

/// Request headers holding only a `traceparent`.
struct Traceparent(&'static [u8]);

impl TraceHeaders for Traceparent {
    fn get(&self, name: &str) -> Option<&[u8]> {
        (name == "traceparent").then_some(self.0)
    }

    fn traceparent(&self) -> Option<&[u8]> {
        Some(self.0)
    }
}

/// What request labels add to a request: the same record with its three polls (the response
/// future's, the body's data and end) run bare, then through `poll_labelled` with no profile
/// running (one relaxed load each), then while a profile runs (labels copied and installed
/// for each poll).
fn labels(c: &mut Criterion) {
    use observe_core::adapter::{poll_labelled, WantLabels};
    use std::hint::black_box;

    let metrics = HttpMetrics::new("bench");
    let request = |labelled: bool| {
        let record = metrics.id().start("GET", Some("/users/{id}")).unwrap();
        for poll in 0..3u32 {
            if labelled {
                poll_labelled(|| Some(record.labels()), || black_box(poll));
            } else {
                black_box(poll);
            }
        }
        let mut response = record.respond(200);
        response.add_response_bytes(7);
        response.finish();
    };
    c.bench_function("labels_three_polls_bare", |b| b.iter(|| request(false)));
    c.bench_function("labels_three_polls_no_profile", |b| {
        b.iter(|| request(true))
    });
    let wanted = WantLabels::new();
    c.bench_function("labels_three_polls_profile_running", |b| {
        b.iter(|| request(true))
    });
    drop(wanted);
}

fn record(c: &mut Criterion) {
    let metrics = HttpMetrics::new("bench");
    c.bench_function("record_cached_route", |b| {
        b.iter(|| {
            let record = metrics.id().start("GET", Some("/users/{id}")).unwrap();
            let mut response = record.respond(200);
            response.add_response_bytes(7);
            response.finish();
        })
    });
    // The same request carrying a sampled W3C `traceparent`: parsed, carried, and offered to
    // its bucket's exemplar (kept at most every 100 ms by default, so mostly only checked).
    let traced = Traceparent(b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
    c.bench_function("record_traced", |b| {
        b.iter(|| {
            let record = metrics
                .id()
                .start_with("GET", Some("/users/{id}"), &traced)
                .unwrap();
            let mut response = record.respond(200);
            response.add_response_bytes(7);
            response.finish();
        })
    });
    // The worst case: every traced request replaces the exemplar.
    let every = HttpMetrics::builder("bench")
        .exemplar_interval(std::time::Duration::ZERO)
        .build()
        .unwrap();
    c.bench_function("record_traced_every_exemplar_kept", |b| {
        b.iter(|| {
            let record = every
                .id()
                .start_with("GET", Some("/users/{id}"), &traced)
                .unwrap();
            let mut response = record.respond(200);
            response.add_response_bytes(7);
            response.finish();
        })
    });
    // Native histogram buckets on, beside the classic ones.
    let native = HttpMetrics::builder("bench")
        .native_histograms(true)
        .build()
        .unwrap();
    c.bench_function("record_native", |b| {
        b.iter(|| {
            let record = native.id().start("GET", Some("/users/{id}")).unwrap();
            let mut response = record.respond(200);
            response.add_response_bytes(7);
            response.finish();
        })
    });
    let metrics = HttpMetrics::builder("bench")
        .size_histograms(false)
        .build()
        .unwrap();
    c.bench_function("record_cached_route_no_sizes", |b| {
        b.iter(|| {
            let record = metrics.id().start("GET", Some("/users/{id}")).unwrap();
            record.respond(200).finish();
        })
    });
    let route = metrics.route(Some("/users/{id}"));
    c.bench_function("route_lookup", |b| {
        b.iter(|| metrics.route(std::hint::black_box(Some("/users/{id}"))))
    });
    // As actix does: the route is only known when the response exists.
    c.bench_function("record_route_set_later", |b| {
        b.iter(|| {
            let mut record = metrics.id().start("GET", None).unwrap();
            record.set_route(route);
            record.respond(200).finish();
        })
    });
    // Two threads recording the same series at once, as two busy workers on one hot route:
    // time per record on each thread. Shared counters would bounce between the cores here.
    let metrics = HttpMetrics::new("bench");
    c.bench_function("record_contended_2_threads", |b| {
        b.iter_custom(|iters| {
            let barrier = std::sync::Barrier::new(2);
            let one = || {
                barrier.wait();
                let start = std::time::Instant::now();
                for _ in 0..iters {
                    let record = metrics.id().start("GET", Some("/users/{id}")).unwrap();
                    let mut response = record.respond(200);
                    response.add_response_bytes(7);
                    response.finish();
                }
                start.elapsed()
            };
            std::thread::scope(|s| {
                let other = s.spawn(one);
                let mine = one();
                mine.max(other.join().unwrap())
            })
        })
    });
    // What holding a reference-counted handle per request costs (one clone, one drop).
    let shared = std::sync::Arc::new(0u64);
    c.bench_function("arc_clone_drop", |b| {
        b.iter(|| drop(std::hint::black_box(shared.clone())))
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
    targets = labels, record
}
criterion_main!(benches);
