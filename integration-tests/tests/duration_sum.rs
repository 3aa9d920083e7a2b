//! The duration histogram's `_sum` is a counter: it must never go down, however long requests
//! run in total. A mock clock (quanta's, which observe reads) makes each request last 2^62 ns
//! (146 years), so four of them add up past what a `u64` of nanoseconds holds; the sums are
//! read from `/metrics` over a real socket after each one.

use std::sync::Arc;
use std::time::Duration;

use axum::routing::get;
use axum::Router;
use integration_tests::contract::{client, requests, scrape, value};
use observe_tower::ObserveLayer;
use tokio::sync::{mpsc, Notify};

/// How long the mock clock says each request took.
const NANOS_PER_REQUEST: u64 = 1 << 62;

#[test]
fn the_duration_sum_never_decreases_past_u64_nanoseconds() {
    let (clock, mock) = quanta::Clock::mock();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    // Server and client on this one thread, so the server reads the mock clock.
    quanta::with_clock(&clock, || {
        runtime.block_on(async {
            let (arrived, mut in_handler) = mpsc::unbounded_channel::<()>();
            let release = Arc::new(Notify::new());
            let gate = release.clone();
            let observe = ObserveLayer::new("sums");
            let app = Router::new()
                .route(
                    "/hold",
                    get(move || {
                        let (arrived, gate) = (arrived.clone(), gate.clone());
                        async move {
                            let released = gate.notified();
                            arrived.send(()).unwrap();
                            released.await;
                            "held"
                        }
                    }),
                )
                .merge(observe.routes())
                .layer(observe.clone());
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let base = format!("http://{}", listener.local_addr().unwrap());
            tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

            let labels = [
                ("http_route", "/hold"),
                ("http_response_status_code", "200"),
            ];
            let mut last_sum = 0.0;
            for n in 1..=6u32 {
                let url = format!("{base}/hold");
                let request = tokio::spawn(async move { client().get(url).send().await });
                tokio::time::timeout(Duration::from_secs(10), in_handler.recv())
                    .await
                    .expect("the request reaches its handler");
                mock.increment(NANOS_PER_REQUEST);
                release.notify_one();
                let response = request.await.unwrap().unwrap();
                assert_eq!(response.status(), 200);
                response.bytes().await.unwrap();
                // Back again, so the mock (a u64 itself) can lend the next request 146 years.
                mock.decrement(NANOS_PER_REQUEST);

                let s = scrape(&base).await;
                assert_eq!(requests(&s, "/hold", "GET", "200"), f64::from(n));
                let sum = value(&s, "http_server_request_duration_seconds_sum", &labels);
                assert!(sum >= last_sum, "the sum went down: {last_sum} -> {sum}");
                let expected = f64::from(n) * NANOS_PER_REQUEST as f64 / 1e9;
                assert!(
                    (sum - expected).abs() <= expected * 1e-9,
                    "after {n} requests: {sum} s, expected {expected} s"
                );
                // Each lasted 146 years: the +Inf bucket, no other.
                let inf = [
                    ("http_route", "/hold"),
                    ("http_response_status_code", "200"),
                    ("le", "+Inf"),
                ];
                let ten_s = [
                    ("http_route", "/hold"),
                    ("http_response_status_code", "200"),
                    ("le", "10"),
                ];
                let bucket = "http_server_request_duration_seconds_bucket";
                assert_eq!(value(&s, bucket, &inf), f64::from(n));
                assert_eq!(value(&s, bucket, &ten_s), 0.0);
                last_sum = sum;
            }
        })
    });
}
