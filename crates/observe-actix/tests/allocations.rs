//! Heap allocations per request, counted by a global allocator.
//!
//! The same actix `App` is driven in-process (`actix_web::test::call_service`, body read to
//! the end) without and with `Observe`. actix itself allocates for every request (the test
//! request, the app's boxed routing future, the response); `Observe` must add nothing to that
//! once it has seen a route: no per-request `match_pattern()` string, no boxing.

use actix_web::body::MessageBody;
use actix_web::dev::{Service, ServiceResponse};
use actix_web::{test, web, App, Error};
use integration_tests::allocations::{on_this_thread as allocations, CountingAllocator};
use observe_actix::Observe;

#[global_allocator]
static GLOBAL: CountingAllocator = CountingAllocator;

const REQUESTS: u64 = 1000;

fn api(config: &mut web::ServiceConfig) {
    config
        .route("/users/{id}", web::get().to(|| async { "user" }))
        .service(web::scope("/api").route("/items/{id}", web::get().to(|| async { "item" })))
        .route("/health", web::get().to(|| async { "ok" }))
        .route(
            "/upload",
            web::post().to(|body: web::Bytes| async move { body.len().to_string() }),
        );
}

/// A bodyless GET as actix's HTTP/1 decoder hands it over: no payload at all, and a `Uri`
/// parsed from the request line (not a static one). `TestRequest` would attach an empty
/// payload, which a real GET never carries, and which `Observe` would wrap to count.
fn get(path: &str) -> actix_http::Request {
    let mut request = actix_http::Request::new();
    request.head_mut().method = actix_http::Method::GET;
    request.head_mut().uri = actix_http::Uri::try_from(path).expect("a valid path");
    request
}

/// Allocations per request of `app` serving `path`, after 100 warm-up requests.
async fn allocations_per_request<S, R, B>(app: &S, request: impl Fn() -> R) -> f64
where
    S: Service<R, Response = ServiceResponse<B>, Error = Error>,
    B: MessageBody,
{
    for _ in 0..100 {
        test::read_body(test::call_service(app, request()).await).await;
    }
    let before = allocations();
    for _ in 0..REQUESTS {
        let response = test::call_service(app, request()).await;
        assert!(response.status().as_u16() < 500);
        test::read_body(response).await;
    }
    (allocations() - before) as f64 / REQUESTS as f64
}

#[actix_web::test]
async fn observe_adds_no_allocation_per_request() {
    let bare = test::init_service(App::new().configure(api)).await;
    let observed = test::init_service(App::new().configure(api).wrap(Observe::new("alloc"))).await;
    for path in ["/users/42", "/api/items/7", "/health", "/nowhere"] {
        let request = || get(path);
        let without = allocations_per_request(&bare, request).await;
        let with = allocations_per_request(&observed, request).await;
        println!("{path}: actix alone {without} allocations per request, with Observe {with}");
        assert_eq!(
            with,
            without,
            "{path}: Observe added {} allocations",
            with - without
        );
    }
}

/// A request with a payload: counting what the handler reads costs the shared counter and
/// the boxed counting stream, two allocations.
#[actix_web::test]
async fn counting_a_request_body_costs_two_allocations() {
    let bare = test::init_service(App::new().configure(api)).await;
    let observed = test::init_service(App::new().configure(api).wrap(Observe::new("alloc"))).await;
    let upload = || {
        let payload = actix_http::Payload::from(web::Bytes::from_static(&[7; 100]));
        let mut request = actix_http::Request::with_payload(payload);
        request.head_mut().method = actix_http::Method::POST;
        request.head_mut().uri = actix_http::Uri::try_from("/upload").expect("a valid path");
        request
    };
    let without = allocations_per_request(&bare, upload).await;
    let with = allocations_per_request(&observed, upload).await;
    println!("POST /upload: actix alone {without} allocations per request, with Observe {with}");
    assert_eq!(with - without, 2.0);
}
