//! `example-axum` and `example-actix` serve the same API through the two adapters: for the
//! same traffic over TCP they must expose the same series with the same values.
use std::collections::BTreeMap;
use std::time::Duration;

use integration_tests::{parse_exposition, Example, Sample};

/// The traffic both examples get: every route, every kind of status, unmatched paths,
/// methods a route does not take and methods nobody uses.
const TRAFFIC: &[(&str, &str, u16)] = &[
    ("GET", "/users/1", 200),
    ("GET", "/users/2", 200),
    ("GET", "/users/2", 200),
    ("GET", "/users/abc", 400),
    ("GET", "/api/items/5", 200),
    ("GET", "/api/items/6", 200),
    ("GET", "/slow?ms=5", 200),
    ("GET", "/slow?ms=bogus", 400),
    ("GET", "/fail", 500),
    ("GET", "/fail", 500),
    ("GET", "/stream?chunks=3&delay_ms=1", 200),
    ("GET", "/nowhere", 404),
    ("GET", "/users/1/extra", 404),
    ("GET", "/api/nothing", 404),
    ("POST", "/users/1", 405),
    ("DELETE", "/api/items/1", 405),
    ("BREW", "/users/3", 405),
    ("PURGE", "/scanner/wp-login.php", 404),
    ("GET", "/metrics", 200),
];

/// Per family, each series (labels without `service`) and its value.
type Series = BTreeMap<String, BTreeMap<Vec<(String, String)>, f64>>;

fn series(samples: &[Sample]) -> Series {
    let families = [
        "http_server_requests_total",
        "http_server_request_duration_seconds_count",
        "http_server_request_body_size_bytes_count",
        "http_server_response_body_size_bytes_count",
        "http_server_active_requests",
    ];
    let mut out = Series::new();
    for s in samples
        .iter()
        .filter(|s| families.contains(&s.name.as_str()))
    {
        let labels = s
            .labels
            .iter()
            .filter(|(k, _)| k != "service")
            .cloned()
            .collect();
        out.entry(s.name.clone())
            .or_default()
            .insert(labels, s.value);
    }
    out
}

async fn scrape(client: &reqwest::Client, example: &Example) -> Series {
    let text = client
        .get(example.url("/metrics"))
        .send()
        .await
        .expect("scrape")
        .text()
        .await
        .expect("exposition");
    series(&parse_exposition(&text))
}

#[tokio::test]
async fn axum_and_actix_examples_expose_the_same_series_for_the_same_traffic() {
    let axum = Example::start("example-axum", &[]);
    let actix = Example::start("example-actix", &[]);
    let client = reqwest::Client::new();
    for example in [&axum, &actix] {
        for &(method, path, status) in TRAFFIC {
            let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
            let res = client
                .request(method.clone(), example.url(path))
                .body(if method == reqwest::Method::POST {
                    "hello"
                } else {
                    ""
                })
                .send()
                .await
                .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
            assert_eq!(
                res.status().as_u16(),
                status,
                "{method} {path} on {}",
                example.addr
            );
            res.bytes().await.expect("whole body");
        }
    }
    // Both record a request when its body ends, which the client has just seen; allow the
    // servers a moment before calling a difference real.
    let mut pair = (scrape(&client, &axum).await, scrape(&client, &actix).await);
    for _ in 0..50 {
        if pair.0 == pair.1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        pair = (scrape(&client, &axum).await, scrape(&client, &actix).await);
    }
    assert_eq!(pair.0, pair.1, "axum (left) and actix (right) disagree");
    let agreed = pair.0;
    let requests = &agreed["http_server_requests_total"];
    let total: f64 = requests.values().sum();
    assert_eq!(
        total,
        (TRAFFIC.len() - 1) as f64,
        "everything but /metrics is counted"
    );
    let users_200 = vec![
        ("http_request_method".to_owned(), "GET".to_owned()),
        ("http_response_status_code".to_owned(), "200".to_owned()),
        ("http_route".to_owned(), "/users/{id}".to_owned()),
    ];
    assert_eq!(requests[&users_200], 3.0);
    let other = requests
        .iter()
        .filter(|(labels, _)| {
            labels
                .iter()
                .any(|(k, v)| k == "http_request_method" && v == "_OTHER")
        })
        .map(|(_, v)| v)
        .sum::<f64>();
    assert_eq!(other, 2.0);
}
