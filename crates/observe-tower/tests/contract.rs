//! The metric contract (`docs/metrics.md`) for axum and hyper, over real TCP sockets.
use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Path, Query};
use axum::http::StatusCode;
use axum::routing::{any, get, post};
use axum::Router;
use integration_tests::contract::{
    self, active, client, eventually, requests, scrape, sum, value, Case, Request, Series,
};
use integration_tests::{parse_exposition, Sample};
use observe_tower::{prometheus, ObserveLayer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

type Params = Query<HashMap<String, u64>>;

fn param(p: &Params, name: &str, default: u64) -> u64 {
    p.0.get(name).copied().unwrap_or(default)
}

async fn slow(p: Params) -> &'static str {
    tokio::time::sleep(Duration::from_millis(param(&p, "ms", 0))).await;
    "slept"
}

async fn stream(p: Params) -> Body {
    let chunks = param(&p, "chunks", 3);
    let delay = Duration::from_millis(param(&p, "delay_ms", 0));
    Body::from_stream(futures_util::stream::unfold(0, move |i| async move {
        if i == chunks {
            return None;
        }
        if i > 0 {
            tokio::time::sleep(delay).await;
        }
        Some((
            Ok::<_, Infallible>(Bytes::from(format!("chunk {i}\n"))),
            i + 1,
        ))
    }))
}

async fn panics() -> &'static str {
    panic!("this handler panics on purpose")
}

/// The API every test serves: the routes of `integration_tests::contract`, plus
/// nest_service'd, slow, streaming and panicking ones.
fn api(observe: Option<&ObserveLayer>) -> Router {
    let versioned = Router::new()
        .route(
            "/items/{id}",
            get(|Path((v, id)): Path<(u32, u32)>| async move { format!("v{v} item {id}") }),
        )
        .route("/status", get(|| async { "up" }));
    let items = Router::new()
        .route(
            "/items/{id}",
            get(|Path(id): Path<u32>| async move { format!("item {id}") }),
        )
        .nest("/v{version}", versioned);
    let mut things = Router::new().route("/things/{id}", get(|| async { "thing" }));
    if let Some(observe) = observe {
        things = things.layer(observe.clone());
    }
    Router::new()
        .route(
            "/users/{id}",
            get(|Path(id): Path<u32>| async move { format!("user {id}") }),
        )
        .route("/health", get(|| async { "ok" }))
        .route("/echo", post(|body: Bytes| async move { body }))
        .route("/ignore-body", post(|| async { "ignored" }))
        .route("/slow", get(slow))
        .route(
            "/fail",
            get(|| async { (StatusCode::INTERNAL_SERVER_ERROR, "failed") }),
        )
        .route("/panic", get(panics))
        .route("/stream", get(stream))
        .route("/any", any(|| async { "any method" }))
        .nest("/api", items)
        .nest_service("/svc", things)
}

fn observed(observe: &ObserveLayer) -> Router {
    api(Some(observe))
        .merge(observe.routes())
        .layer(observe.clone())
}

async fn serve(app: Router) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

/// The test app on a loopback port, its metrics labelled `service="test"`.
async fn start() -> (ObserveLayer, SocketAddr) {
    let observe = ObserveLayer::new("test");
    let addr = serve(observed(&observe)).await;
    (observe, addr)
}

/// `http://ADDR`, what the `contract` helpers take.
fn base(addr: SocketAddr) -> String {
    format!("http://{addr}")
}

async fn get_ok(addr: SocketAddr, path: &str) -> reqwest::Response {
    client()
        .get(format!("http://{addr}{path}"))
        .send()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_shared_contract_case_holds() {
    let (_observe, addr) = start().await;
    contract::run_cases(&base(addr), "test", &contract::cases()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_layered_nest_service_is_recorded_once_with_its_full_template() {
    let (_observe, addr) = start().await;
    let case = Case {
        name: "the outer and the nested router both carry the layer: one record per request",
        requests: vec![Request::new("GET", "/svc/things/1", 200).times(2)],
        series: vec![Series {
            route: "/svc/things/{id}",
            method: "GET",
            status: 200,
            count: 2,
        }],
    };
    contract::run_cases(&base(addr), "test", &[case]).await;
}

/// Sends a raw request and returns the open connection.
async fn raw_request(addr: SocketAddr, path: &str) -> TcpStream {
    let mut conn = TcpStream::connect(addr).await.unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nHost: test\r\n\r\n");
    conn.write_all(req.as_bytes()).await.unwrap();
    conn
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_gone_mid_stream_is_499() {
    let (observe, addr) = start().await;
    let mut conn = raw_request(addr, "/stream?chunks=200&delay_ms=10").await;
    let mut buf = [0u8; 256];
    let n = conn.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    drop(conn);
    let s = eventually(&base(addr), "the stream is recorded as 499", |s| {
        requests(s, "/stream", "GET", "499") == 1.0
    })
    .await;
    assert_eq!(requests(&s, "/stream", "GET", "499"), 1.0);
    assert_eq!(requests(&s, "/stream", "GET", "200"), 0.0);
    assert_eq!(observe.metrics().active_requests("GET"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_gone_before_the_response_is_499() {
    let (observe, addr) = start().await;
    let conn = raw_request(addr, "/slow?ms=30000").await;
    // Wait until the request is in flight, then hang up.
    eventually(&base(addr), "the slow request is in flight", |s| {
        active(s, "GET") == 1.0
    })
    .await;
    assert_eq!(observe.metrics().active_requests("GET"), 1);
    drop(conn);
    let s = eventually(&base(addr), "the slow request is recorded as 499", |s| {
        requests(s, "/slow", "GET", "499") == 1.0
    })
    .await;
    assert_eq!(requests(&s, "/slow", "GET", "499"), 1.0);
    assert_eq!(observe.metrics().active_requests("GET"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_whose_timeout_fired_is_499() {
    let (_observe, addr) = start().await;
    contract::check_client_that_gives_up(&base(addr)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_named_while_metrics_are_scraped_are_always_exposed_with_their_name() {
    // Every path its own route (a route function), thousands of them named over real
    // connections while others scrape `/metrics` over and over.
    const ROUTES: usize = 2_000;
    let observe = ObserveLayer::builder("routes")
        .max_routes(ROUTES)
        .unwrap()
        .build()
        .unwrap()
        .with_route_fn(|parts| Some(parts.uri.path()));
    let app = Router::new()
        .fallback(|| async { "ok" })
        .merge(observe.routes())
        .layer(observe.clone());
    let addr = serve(app).await;
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let scrapers: Vec<_> = (0..2)
        .map(|_| {
            let done = done.clone();
            tokio::spawn(async move {
                let mut scrapes = 0;
                while !done.load(std::sync::atomic::Ordering::Acquire) {
                    let text = contract::scrape_text(&base(addr)).await;
                    let samples: Vec<&str> = text.lines().filter(|l| !l.starts_with('#')).collect();
                    let names: std::collections::HashSet<&str> = samples
                        .iter()
                        .filter_map(|l| l.rsplit_once(' '))
                        .map(|(n, _)| n)
                        .collect();
                    assert_eq!(names.len(), samples.len(), "a duplicate sample in a scrape");
                    assert!(
                        !text.contains(r#"http_route="""#),
                        "a series without its route"
                    );
                    scrapes += 1;
                }
                scrapes
            })
        })
        .collect();
    let senders: Vec<_> = (0..4)
        .map(|sender| {
            tokio::spawn(async move {
                let client = client();
                for i in (sender..ROUTES).step_by(4) {
                    let res = client
                        .get(format!("http://{addr}/route/{i}"))
                        .send()
                        .await
                        .unwrap();
                    assert_eq!(res.status(), 200);
                    res.bytes().await.unwrap();
                }
            })
        })
        .collect();
    for sender in senders {
        sender.await.unwrap();
    }
    done.store(true, std::sync::atomic::Ordering::Release);
    for scraper in scrapers {
        assert!(scraper.await.unwrap() > 0);
    }
    let s = scrape(&base(addr)).await;
    assert_eq!(sum(&s, "http_server_requests_total", &[]), ROUTES as f64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_handler_is_500() {
    let (observe, addr) = start().await;
    // The panic takes the connection down: the client sees an error, not a response.
    assert!(client()
        .get(format!("http://{addr}/panic"))
        .send()
        .await
        .is_err());
    let s = eventually(&base(addr), "the panic is recorded as 500", |s| {
        requests(s, "/panic", "GET", "500") == 1.0
    })
    .await;
    assert_eq!(requests(&s, "/panic", "GET", "500"), 1.0);
    assert_eq!(observe.metrics().active_requests("GET"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_inner_error_is_500_with_hyper() {
    use hyper_util::rt::TokioIo;
    use hyper_util::service::TowerToHyperService;

    let observe = ObserveLayer::new("hyper").with_route_fn(|parts| Some(parts.uri.path()));
    let inner = tower::service_fn(|req: http::Request<hyper::body::Incoming>| async move {
        if req.uri().path() == "/broken" {
            Err(std::io::Error::other("backend unavailable"))
        } else {
            Ok(http::Response::new(http_body_util::Full::new(
                Bytes::from_static(b"fine"),
            )))
        }
    });
    let svc = tower::Layer::layer(&observe, inner);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (io, _) = listener.accept().await.unwrap();
            let svc = TowerToHyperService::new(svc.clone());
            tokio::spawn(
                hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(io), svc),
            );
        }
    });
    assert!(client()
        .get(format!("http://{addr}/broken"))
        .send()
        .await
        .is_err());
    let res = client()
        .post(format!("http://{addr}/ok"))
        .body("abcdef")
        .send()
        .await
        .unwrap();
    assert_eq!(res.text().await.unwrap(), "fine");
    let text =
        observe_tower::observe_core::MetricsEncoder::new(observe.metrics().registry().clone())
            .encode(observe_core::Format::Text, None)
            .unwrap();
    let s = parse_exposition(std::str::from_utf8(&text.body).unwrap());
    assert_eq!(requests(&s, "/broken", "GET", "500"), 1.0);
    assert_eq!(requests(&s, "/ok", "POST", "200"), 1.0);
    // hyper's `Incoming` is not wrapped: its Content-Length is the request size.
    assert_eq!(
        value(
            &s,
            "http_server_request_body_size_bytes_sum",
            &[("http_route", "/ok")]
        ),
        6.0
    );
    assert_eq!(
        value(
            &s,
            "http_server_response_body_size_bytes_sum",
            &[("http_route", "/ok")]
        ),
        4.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streamed_response_is_timed_to_its_last_chunk() {
    let (_observe, addr) = start().await;
    let body = get_ok(addr, "/stream?chunks=5&delay_ms=100")
        .await
        .text()
        .await
        .unwrap();
    assert_eq!(body.lines().count(), 5);
    let s = scrape(&base(addr)).await;
    let seconds = value(
        &s,
        "http_server_request_duration_seconds_sum",
        &[("http_route", "/stream")],
    );
    // Four 100 ms pauses between five chunks: the recorded duration covers all of them.
    assert!(
        seconds >= 0.4,
        "recorded {seconds} s for a stream that takes at least 0.4 s"
    );
    assert_eq!(
        value(
            &s,
            "http_server_request_duration_seconds_bucket",
            &[("http_route", "/stream"), ("le", "0.25")]
        ),
        0.0
    );
    assert_eq!(
        value(
            &s,
            "http_server_response_body_size_bytes_sum",
            &[("http_route", "/stream")]
        ),
        body.len() as f64
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_active_gauge_counts_in_flight_requests_and_returns_to_zero() {
    let (_observe, addr) = start().await;
    contract::check_in_flight_requests(&base(addr), 4).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn body_sizes_are_the_bytes_transferred() {
    let (_observe, addr) = start().await;
    contract::check_body_sizes(&base(addr)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_gzipped_only_when_the_scraper_asks() {
    let (_observe, addr) = start().await;
    contract::check_metrics_encoding(&base(addr), "test").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_many_or_too_slow_scrapes_are_503_and_counted() {
    let observe = ObserveLayer::builder("limits")
        .max_concurrent_scrapes(1)
        .unwrap()
        .scrape_timeout(Duration::from_millis(300))
        .unwrap()
        .build()
        .unwrap();
    let gate = contract::Gate::closed();
    observe
        .metrics()
        .registry()
        .register(Box::new(gate.clone()))
        .unwrap();
    let addr = serve(observed(&observe)).await;
    contract::check_scrape_limits(&base(addr), "limits", &gate).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn promtool_accepts_the_exposition() {
    let (_observe, addr) = start().await;
    let paths = [
        "/users/1",
        "/fail",
        "/api/items/2",
        "/nope",
        "/stream?chunks=2",
    ];
    contract::check_promtool_accepts(&base(addr), &paths).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_share_a_registry_with_the_applications_metrics() {
    let registry = prometheus::Registry::new();
    let jobs = prometheus::IntCounter::new("app_jobs_total", "Jobs the application ran.").unwrap();
    registry.register(Box::new(jobs.clone())).unwrap();
    jobs.inc_by(3);
    let public = ObserveLayer::builder("public").registry(registry.clone());
    // Services sharing a registry share their constant label names (a Prometheus rule).
    let public = public
        .const_label("tier", "public")
        .unwrap()
        .build()
        .unwrap();
    let admin = ObserveLayer::builder("admin")
        .registry(registry.clone())
        .const_label("tier", "internal")
        .unwrap()
        .build()
        .unwrap();
    let again = ObserveLayer::builder("public")
        .registry(registry.clone())
        .const_label("tier", "public")
        .unwrap()
        .build();
    assert!(
        again.is_err(),
        "the same service twice on one registry is refused"
    );

    let a = serve(api(None).merge(public.routes()).layer(public.clone())).await;
    let b = serve(api(None).layer(admin.clone())).await;
    get_ok(a, "/users/1").await;
    get_ok(b, "/users/1").await;
    get_ok(b, "/users/2").await;
    let s = scrape(&base(a)).await;
    assert_eq!(
        value(
            &s,
            "http_server_requests_total",
            &[("service", "public"), ("tier", "public")]
        ),
        1.0
    );
    assert_eq!(
        value(
            &s,
            "http_server_requests_total",
            &[("service", "admin"), ("tier", "internal")]
        ),
        2.0
    );
    assert_eq!(value(&s, "app_jobs_total", &[]), 3.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_requests_get_the_same_answers_with_and_without_the_layer() {
    let (observe, with) = start().await;
    let without = serve(api(None)).await;
    let long_path = format!("/{}", "a".repeat(6000));
    type Hostile = (&'static str, String, Vec<(&'static str, String)>);
    let cases: Vec<Hostile> = vec![
        ("GET", "/users/%ZZ".into(), vec![]),
        ("GET", "/users/99999999999999999999".into(), vec![]),
        ("GET", long_path, vec![]),
        ("GET", "/../../etc/passwd".into(), vec![]),
        ("OPTIONS", "/users/1".into(), vec![]),
        ("DELETE", "/echo".into(), vec![]),
        ("GET", "/users/1".into(), vec![("x-big", "v".repeat(7000))]),
        (
            "POST",
            "/echo".into(),
            vec![("content-type", "application/x-www-form-urlencoded".into())],
        ),
    ];
    for (method, path, headers) in &cases {
        let mut answers = Vec::new();
        for addr in [with, without] {
            let mut req = client().request(
                reqwest::Method::from_bytes(method.as_bytes()).unwrap(),
                format!("http://{addr}{path}"),
            );
            for (k, v) in headers {
                req = req.header(*k, v);
            }
            let res = req.send().await.unwrap();
            answers.push((res.status(), res.bytes().await.unwrap()));
        }
        assert_eq!(
            answers[0],
            answers[1],
            "{method} {}",
            &path[..path.len().min(40)]
        );
    }
    // An upload that promises a megabyte and hangs up after ten bytes.
    let mut conn = TcpStream::connect(with).await.unwrap();
    conn.write_all(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 1000000\r\n\r\n0123456789")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    drop(conn);
    // Garbage that is not HTTP at all.
    let mut conn = TcpStream::connect(with).await.unwrap();
    conn.write_all(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03 not http\r\n\r\n")
        .await
        .unwrap();
    let mut sink = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(2), conn.read_to_end(&mut sink)).await;

    // axum answers a truncated body with 400; whether hyper could still write it or the
    // connection was gone (499), the upload is recorded once and not lost.
    let echo_posts = |s: &[Sample]| {
        sum(
            s,
            "http_server_requests_total",
            &[("http_route", "/echo"), ("http_request_method", "POST")],
        )
    };
    let s = eventually(&base(with), "both posts to /echo are recorded", |s| {
        echo_posts(s) == 2.0
    })
    .await;
    assert_eq!(echo_posts(&s), 2.0, "the form post and the aborted upload");
    assert_eq!(
        requests(&s, "/echo", "POST", "400") + requests(&s, "/echo", "POST", "499"),
        1.0
    );
    assert_eq!(observe.metrics().active_requests("POST"), 0);
    assert_eq!(
        get_ok(with, "/users/1").await.text().await.unwrap(),
        "user 1"
    );
}
