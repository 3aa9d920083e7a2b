//! `example-axum`, the service a newcomer runs first, driven over TCP by a real HTTP client.
use integration_tests::{parse_exposition, Example, Sample};

fn requests(samples: &[Sample], route: &str, status: &str) -> f64 {
    samples
        .iter()
        .filter(|s| {
            s.name == "http_server_requests_total"
                && s.label("http_route") == Some(route)
                && s.label("http_response_status_code") == Some(status)
        })
        .map(|s| s.value)
        .sum()
}

#[tokio::test]
async fn the_example_serves_its_api_and_counts_it() {
    let example = Example::start("example-axum", &[]);
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let get = |path: &str| client.get(example.url(path)).send();

    let user = get("/users/7").await.unwrap();
    assert_eq!(user.status(), 200);
    assert_eq!(user.text().await.unwrap(), r#"{"id":7,"name":"user-7"}"#);
    let item = get("/api/items/3").await.unwrap();
    assert_eq!(item.text().await.unwrap(), r#"{"id":3,"kind":"item"}"#);
    assert_eq!(get("/fail").await.unwrap().status(), 500);
    assert_eq!(
        get("/slow?ms=20").await.unwrap().text().await.unwrap(),
        "slept 20 ms\n"
    );
    let stream = get("/stream?chunks=3&delay_ms=10")
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(stream, "chunk 0\nchunk 1\nchunk 2\n");
    assert_eq!(get("/.env").await.unwrap().status(), 404);

    let text = get("/metrics").await.unwrap().text().await.unwrap();
    let s = parse_exposition(&text);
    assert!(s
        .iter()
        .all(|x| !x.name.starts_with("http_") || x.label("service") == Some("example-axum")));
    assert_eq!(requests(&s, "/users/{id}", "200"), 1.0);
    assert_eq!(requests(&s, "/api/items/{id}", "200"), 1.0);
    assert_eq!(requests(&s, "/fail", "500"), 1.0);
    assert_eq!(requests(&s, "/slow", "200"), 1.0);
    assert_eq!(requests(&s, "/stream", "200"), 1.0);
    assert_eq!(requests(&s, "unmatched", "404"), 1.0);
    assert_eq!(
        requests(&s, "/metrics", "200"),
        0.0,
        "scrapes are not recorded"
    );
}
