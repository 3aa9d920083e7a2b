//! The metric contract (`docs/metrics.md`) for actix-web, over real TCP sockets: a real
//! `HttpServer` on a loopback port, a real HTTP client, and the real `/metrics` output.
use std::future::ready;
use std::net::SocketAddr;
use std::time::Duration;

use actix_web::dev::{ServerHandle, Service, ServiceResponse};
use actix_web::error::{ErrorForbidden, ErrorServiceUnavailable};
use actix_web::{guard, web, App, HttpResponse, HttpServer, Route};
use bytes::Bytes;
use integration_tests::contract::{
    self, active, client, eventually, requests, scrape, send, value, Case, Request, Series,
};
use observe_actix::{prometheus, Observe};
use serde::Deserialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[derive(Deserialize)]
struct Params {
    ms: Option<u64>,
    chunks: Option<u32>,
    delay_ms: Option<u64>,
}

async fn slow(p: web::Query<Params>) -> &'static str {
    actix_web::rt::time::sleep(Duration::from_millis(p.ms.unwrap_or(0).min(10_000))).await;
    "slept\n"
}

async fn stream(p: web::Query<Params>) -> HttpResponse {
    let chunks = p.chunks.unwrap_or(5).min(10_000);
    let delay = Duration::from_millis(p.delay_ms.unwrap_or(0).min(10_000));
    let lines = futures_util::stream::unfold(0u32, move |i| async move {
        if i == chunks {
            return None;
        }
        if i > 0 {
            actix_web::rt::time::sleep(delay).await;
        }
        Some((
            Ok::<_, std::io::Error>(Bytes::from(format!("chunk {i}\n"))),
            i + 1,
        ))
    });
    HttpResponse::Ok().streaming(lines)
}

async fn panics() -> &'static str {
    panic!("handler panicked on purpose")
}

/// GET and HEAD, like axum's `get`; other methods get 405 under the resource's pattern.
fn get() -> Route {
    web::route().guard(guard::Any(guard::Get()).or(guard::Head()))
}

/// The routes of `integration_tests::contract`, plus same-shaped, slow, streaming, panicking,
/// excluded and failing ones.
fn api(config: &mut web::ServiceConfig) {
    config
        .service(web::resource("/users/{id}").route(get().to(|| async { "user\n" })))
        .service(web::resource("/health").route(get().to(|| async { "ok" })))
        .service(
            web::resource("/fail")
                .route(get().to(|| async { HttpResponse::InternalServerError().body("failed") })),
        )
        .service(web::resource("/echo").route(web::post().to(|body: Bytes| async move { body })))
        // No guard: every method, invented ones included.
        .service(web::resource("/any").route(web::route().to(|| async { "any method" })))
        // Same shape, different resources: the labels must stay apart.
        .service(web::resource("/files/{n:\\d+}").route(get().to(|| async { "number" })))
        .service(web::resource("/files/{name:[a-z]+}").route(get().to(|| async { "name" })))
        .service(
            web::scope("/api")
                .service(web::resource("/items/{id}").route(get().to(|| async { "item" })))
                .service(
                    web::scope("/v{version}")
                        .service(web::resource("/items/{id}").route(get().to(|| async { "item" })))
                        .service(web::resource("/status").route(get().to(|| async { "up" }))),
                ),
        )
        .service(web::resource("/slow").route(get().to(slow)))
        .service(web::resource("/stream").route(get().to(stream)))
        .service(web::resource("/panic").route(get().to(panics)))
        .service(web::resource("/ignore-body").route(web::post().to(|| async { "ignored" })))
        .service(web::resource("/healthz").route(get().to(|| async { "ok" })))
        // A service mounted on a prefix: its label is the prefix.
        .service(actix_files::Files::new(
            "/static",
            env!("CARGO_MANIFEST_DIR"),
        ))
        .service(web::resource("/jobs/{id}").route(get().to(|| async { "job" })))
        // Inner services that return `Err` instead of a response: actix answers with the
        // error's status.
        .service(
            web::resource("/forbidden/{id}")
                .wrap_fn(|_req, _srv| ready(Err::<ServiceResponse, _>(ErrorForbidden("no entry"))))
                .route(get().to(|| async { "never" })),
        )
        .service(
            web::resource("/unavailable")
                .wrap_fn(|req, srv| {
                    let fut = srv.call(req);
                    async move {
                        let _ = fut.await?;
                        Err::<ServiceResponse, _>(ErrorServiceUnavailable("down for maintenance"))
                    }
                })
                .route(get().to(|| async { "fine" })),
        );
}

struct Server {
    addr: SocketAddr,
    /// `http://ADDR`, what the `contract` helpers take.
    base_url: String,
    observe: Observe,
    handle: ServerHandle,
}

impl Drop for Server {
    fn drop(&mut self) {
        // Stopping returns a future; nothing waits for it: the test process ends anyway.
        drop(self.handle.stop(false));
    }
}

/// Runs the test app wrapped in `observe` on a loopback port, on a thread of its own.
fn serve(observe: Observe) -> Server {
    let (tx, rx) = std::sync::mpsc::channel();
    let app_observe = observe.clone();
    std::thread::spawn(move || {
        actix_web::rt::System::new().block_on(async move {
            let server = HttpServer::new(move || {
                App::new()
                    .configure(api)
                    .configure(app_observe.routes())
                    .wrap(app_observe.clone())
            })
            .workers(2)
            .disable_signals()
            .on_connect(observe_actix::on_connect)
            .bind("127.0.0.1:0")
            .expect("bind a loopback port");
            let addr = server.addrs()[0];
            let server = server.run();
            tx.send((addr, server.handle())).expect("test waits");
            server.await
        })
    });
    let (addr, handle) = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("server starts");
    Server {
        addr,
        base_url: format!("http://{addr}"),
        observe,
        handle,
    }
}

fn start(service: &str) -> Server {
    serve(Observe::new(service))
}

fn url(server: &Server, path: &str) -> String {
    format!("{}{path}", server.base_url)
}

#[tokio::test]
async fn every_shared_contract_case_holds() {
    let server = start("contract");
    contract::run_cases(&server.base_url, "contract", &contract::cases()).await;
}

#[tokio::test]
async fn resources_of_the_same_shape_keep_their_own_patterns() {
    let server = start("shapes");
    let case = Case {
        name: "/files/{n:\\d+} and /files/{name:[a-z]+} stay apart",
        requests: vec![
            Request::new("GET", "/files/42", 200),
            Request::new("GET", "/files/abc", 200).times(2),
            Request::new("GET", "/files/4b", 404),
        ],
        series: vec![
            Series {
                route: "/files/{n:\\d+}",
                method: "GET",
                status: 200,
                count: 1,
            },
            Series {
                route: "/files/{name:[a-z]+}",
                method: "GET",
                status: 200,
                count: 2,
            },
            Series {
                route: "unmatched",
                method: "GET",
                status: 404,
                count: 1,
            },
        ],
    };
    contract::run_cases(&server.base_url, "shapes", &[case]).await;
}

#[tokio::test]
async fn a_service_mounted_on_a_prefix_is_labelled_with_the_prefix() {
    let server = start("prefix");
    let prefix = |status, count| Series {
        route: "/static",
        method: "GET",
        status,
        count,
    };
    let unmatched = |count| Series {
        route: "unmatched",
        method: "GET",
        status: 404,
        count,
    };
    let case = Case {
        name: "actix-files under /static is /static, not unmatched; 404s stay unmatched",
        requests: vec![
            Request::new("GET", "/static/Cargo.toml", 200).times(2),
            Request::new("GET", "/static/no-such-file", 404),
            Request::new("GET", "/nowhere", 404),
            Request::new("GET", "/api/nowhere", 404),
        ],
        series: vec![prefix(200, 2), prefix(404, 1), unmatched(2)],
    };
    contract::run_cases(&server.base_url, "prefix", &[case]).await;
}

async fn raw_request(server: &Server, path: &str) -> TcpStream {
    let mut tcp = TcpStream::connect(server.addr).await.expect("connect");
    let head = format!("GET {path} HTTP/1.1\r\nHost: test\r\n\r\n");
    tcp.write_all(head.as_bytes()).await.expect("send request");
    tcp
}

#[tokio::test]
async fn a_client_gone_before_the_response_is_499() {
    let server = start("gone-early");
    let tcp = raw_request(&server, "/slow?ms=5000").await;
    eventually(&server.base_url, "the slow request is in flight", |s| {
        active(s, "GET") == 1.0
    })
    .await;
    // A reset, not a half-close: actix sees the connection fail and drops the request.
    tcp.set_zero_linger().expect("linger");
    drop(tcp);
    let s = eventually(&server.base_url, "the request is recorded", |s| {
        active(s, "GET") == 0.0
    })
    .await;
    assert_eq!(requests(&s, "/slow", "GET", "499"), 1.0);
    assert_eq!(requests(&s, "/slow", "GET", "200"), 0.0);
}

#[tokio::test]
async fn a_client_whose_timeout_fired_is_499() {
    let server = start("gave-up");
    contract::check_client_that_gives_up(&server.base_url).await;
}

#[tokio::test]
async fn a_client_gone_mid_stream_is_499() {
    let server = start("gone-mid-stream");
    let mut tcp = raw_request(&server, "/stream?chunks=1000&delay_ms=5").await;
    let mut seen = Vec::new();
    let mut buf = [0u8; 1024];
    while !String::from_utf8_lossy(&seen).contains("chunk 0\n") {
        let n = tcp.read(&mut buf).await.expect("read");
        assert!(n > 0, "stream ended early");
        seen.extend_from_slice(&buf[..n]);
    }
    drop(tcp);
    let s = eventually(&server.base_url, "the stream is recorded", |s| {
        active(s, "GET") == 0.0
    })
    .await;
    assert_eq!(requests(&s, "/stream", "GET", "499"), 1.0);
    assert_eq!(requests(&s, "/stream", "GET", "200"), 0.0);
    let sent = value(
        &s,
        "http_server_response_body_size_bytes_sum",
        &[
            ("http_route", "/stream"),
            ("http_response_status_code", "499"),
        ],
    );
    assert!(
        (8.0..8890.0).contains(&sent),
        "bytes written before the drop: {sent}"
    );
}

#[tokio::test]
async fn a_panicking_handler_is_500() {
    let server = start("panics");
    let result = client().get(url(&server, "/panic")).send().await;
    assert!(
        result.is_err(),
        "actix drops the connection of a panicked handler"
    );
    let s = eventually(&server.base_url, "the panic is recorded", |s| {
        requests(s, "/panic", "GET", "500") == 1.0
    })
    .await;
    assert_eq!(active(&s, "GET"), 0.0);
    // The worker was restarted; the server still answers.
    assert_eq!(send(&server.base_url, "GET", "/health").await, 200);
}

#[tokio::test]
async fn an_inner_error_is_recorded_with_the_status_actix_sends() {
    let server = start("errors");
    let case = Case {
        name: "an inner Err is recorded with the status of actix's error response",
        requests: vec![
            Request::new("GET", "/forbidden/1", 403),
            Request::new("GET", "/forbidden/2", 403),
            Request::new("GET", "/unavailable", 503),
        ],
        series: vec![
            Series {
                route: "/forbidden/{id}",
                method: "GET",
                status: 403,
                count: 2,
            },
            Series {
                route: "/unavailable",
                method: "GET",
                status: 503,
                count: 1,
            },
        ],
    };
    contract::run_cases(&server.base_url, "errors", &[case]).await;
}

#[tokio::test]
async fn a_streamed_response_is_timed_to_its_last_chunk() {
    let server = start("streaming");
    let body = client()
        .get(url(&server, "/stream?chunks=5&delay_ms=40"))
        .send()
        .await
        .expect("response")
        .text()
        .await
        .expect("body");
    assert_eq!(body, "chunk 0\nchunk 1\nchunk 2\nchunk 3\nchunk 4\n");
    let s = scrape(&server.base_url).await;
    let labels = [
        ("http_route", "/stream"),
        ("http_response_status_code", "200"),
    ];
    assert_eq!(
        value(&s, "http_server_request_duration_seconds_count", &labels),
        1.0
    );
    let seconds = value(&s, "http_server_request_duration_seconds_sum", &labels);
    assert!(seconds >= 0.160, "4 delays of 40 ms, recorded {seconds} s");
    assert_eq!(
        value(&s, "http_server_response_body_size_bytes_sum", &labels),
        40.0
    );
}

#[tokio::test]
async fn the_active_gauge_counts_in_flight_requests_and_returns_to_zero() {
    let server = start("gauge");
    contract::check_in_flight_requests(&server.base_url, 4).await;
}

#[tokio::test]
async fn body_sizes_are_the_bytes_transferred() {
    let server = start("sizes");
    contract::check_body_sizes(&server.base_url).await;
}

#[tokio::test]
async fn metrics_are_gzipped_only_when_the_scraper_asks() {
    let server = start("gzip");
    contract::check_metrics_encoding(&server.base_url, "gzip").await;
}

#[tokio::test]
async fn too_many_or_too_slow_scrapes_are_503_and_counted() {
    let observe = Observe::builder("limits")
        .max_concurrent_scrapes(1)
        .expect("limit")
        .scrape_timeout(Duration::from_millis(300))
        .expect("timeout")
        .build()
        .expect("observe");
    let gate = contract::Gate::closed();
    observe
        .metrics()
        .registry()
        .register(Box::new(gate.clone()))
        .expect("gate");
    let server = serve(observe);
    contract::check_scrape_limits(&server.base_url, "limits", &gate).await;
}

#[tokio::test]
async fn promtool_accepts_the_exposition() {
    let observe = Observe::builder("promtool")
        .const_label("region", "eu-west-1")
        .expect("label")
        .build()
        .expect("observe");
    let server = serve(observe);
    let paths = [
        "/users/1",
        "/api/v3/items/4",
        "/nowhere",
        "/forbidden/9",
        "/stream?chunks=2",
    ];
    let text = contract::check_promtool_accepts(&server.base_url, &paths).await;
    assert!(text.contains(r#"region="eu-west-1""#));
}

#[tokio::test]
async fn excluded_routes_are_not_recorded_at_all() {
    let observe = Observe::builder("excluded")
        .exclude_routes(["/metrics", "/healthz", "/jobs/{id}"])
        .build()
        .expect("observe");
    let server = serve(observe);
    assert_eq!(send(&server.base_url, "GET", "/healthz").await, 200);
    assert_eq!(send(&server.base_url, "GET", "/jobs/12").await, 200);
    assert_eq!(send(&server.base_url, "GET", "/health").await, 200);
    let s = scrape(&server.base_url).await;
    let routes: Vec<&str> = s
        .iter()
        .filter(|x| x.name == "http_server_requests_total")
        .filter_map(|x| x.label("http_route"))
        .collect();
    assert_eq!(routes, vec!["/health"]);
    assert_eq!(active(&s, "GET"), 0.0);
}

#[tokio::test]
async fn services_share_a_registry_with_the_applications_metrics() {
    let registry = prometheus::Registry::new();
    let jobs = prometheus::IntCounter::new("app_jobs_total", "Jobs the app ran.").expect("counter");
    registry.register(Box::new(jobs.clone())).expect("register");
    jobs.inc_by(3);
    let observe = Observe::builder("shared")
        .registry(registry.clone())
        .build()
        .expect("observe");
    assert!(
        Observe::builder("shared")
            .registry(registry)
            .build()
            .is_err(),
        "a service name registers once per registry"
    );
    let server = serve(observe);
    assert_eq!(send(&server.base_url, "GET", "/health").await, 200);
    let s = scrape(&server.base_url).await;
    assert_eq!(value(&s, "app_jobs_total", &[]), 3.0);
    assert_eq!(requests(&s, "/health", "GET", "200"), 1.0);
    assert_eq!(server.observe.metrics().service(), "shared");
}
