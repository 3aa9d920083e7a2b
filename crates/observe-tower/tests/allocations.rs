//! Heap allocations per request, counted by a global allocator.
//!
//! The layer itself must allocate nothing once it has seen a route: measured around a
//! minimal `tower::service_fn`. Through axum's `Router::layer`, axum boxes every layered
//! route's future and response body; that structural cost is measured and pinned too, so a
//! change that adds to it fails here.

use axum::body::Body;
use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use integration_tests::allocations::{on_this_thread as allocations, CountingAllocator};
use observe_tower::ObserveLayer;
use std::convert::Infallible;
use tower::{Service, ServiceExt};

#[global_allocator]
static GLOBAL: CountingAllocator = CountingAllocator;

const REQUESTS: u64 = 1000;

/// Allocations per request of `svc` serving `make_request()`, after 100 warm-up requests.
fn allocations_per_request<S, ReqB, ResB>(
    mut svc: S,
    make_request: impl Fn() -> Request<ReqB>,
) -> f64
where
    S: Service<Request<ReqB>, Response = Response<ResB>, Error = Infallible>,
    ResB: http_body::Body,
    ResB::Error: std::fmt::Debug,
{
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    rt.block_on(async {
        drive(&mut svc, (0..100).map(|_| make_request()).collect()).await;
        let allocations = drive(&mut svc, (0..REQUESTS).map(|_| make_request()).collect()).await;
        allocations as f64 / REQUESTS as f64
    })
}

/// Serves `requests` one by one, each read to the end of its body; returns the allocations.
async fn drive<S, ReqB, ResB>(svc: &mut S, requests: Vec<Request<ReqB>>) -> u64
where
    S: Service<Request<ReqB>, Response = Response<ResB>, Error = Infallible>,
    ResB: http_body::Body,
    ResB::Error: std::fmt::Debug,
{
    let before = allocations();
    for req in requests {
        let res = svc.ready().await.unwrap().call(req).await.unwrap();
        let mut body = std::pin::pin!(res.into_body());
        while let Some(frame) = body.frame().await {
            drop(frame.unwrap());
        }
    }
    allocations() - before
}

/// Requests `layer` has recorded: every warm-up and measured one, or the figures above would
/// be those of a layer that records nothing.
fn recorded(layer: &ObserveLayer) -> f64 {
    layer
        .metrics()
        .registry()
        .gather()
        .iter()
        .filter(|family| family.name() == "http_server_requests_total")
        .flat_map(|family| family.get_metric())
        .map(|metric| metric.get_counter().value())
        .sum()
}

/// Warm-up and measured requests of one `allocations_per_request`.
const SERVED: f64 = (100 + REQUESTS) as f64;

fn handler(
) -> impl Service<Request<Full<Bytes>>, Response = Response<Full<Bytes>>, Error = Infallible> {
    tower::service_fn(|_req: Request<Full<Bytes>>| async {
        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"user 42"))))
    })
}

fn plain_request() -> Request<Full<Bytes>> {
    Request::get("/users/42").body(Full::default()).unwrap()
}

#[test]
fn the_layer_allocates_nothing_on_a_seen_route() {
    let bare = allocations_per_request(handler(), plain_request);
    let layer = ObserveLayer::new("alloc").with_route_fn(|_| Some("/users/{id}"));
    let observed = allocations_per_request(tower::Layer::layer(&layer, handler()), plain_request);
    println!("service_fn: {bare} allocations/request bare, {observed} with ObserveLayer");
    assert_eq!(recorded(&layer), SERVED);
    assert_eq!(observed - bare, 0.0);
}

#[test]
fn through_axum_the_layer_adds_only_axums_boxing() {
    let router = || Router::new().route("/users/{id}", get(|| async { "user 42" }));
    let request = || Request::get("/users/42").body(Body::empty()).unwrap();
    // `with_state` finalizes the routes as `axum::serve` does; a Router called without it
    // builds each handler's route (and applies its layers) on every request.
    let serve = |router: Router| router.with_state::<()>(());
    let bare = allocations_per_request(serve(router()), request);

    // Wrapped around the whole router the layer adds nothing (but sees no route template).
    let layer = ObserveLayer::new("outside").with_route_fn(|_| Some("/users/{id}"));
    let outside = allocations_per_request(tower::Layer::layer(&layer, serve(router())), request);
    assert_eq!(recorded(&layer), SERVED);
    assert_eq!(outside - bare, 0.0);

    // Any layer on a Router costs axum two boxes per call (the cloned route and its future).
    let noop = tower::util::MapRequestLayer::new(|req: Request<Body>| req);
    let any_layer = allocations_per_request(serve(router().layer(noop)), request);
    let observe = ObserveLayer::new("alloc");
    let observed = allocations_per_request(serve(router().layer(observe.clone())), request);
    assert_eq!(recorded(&observe), SERVED);
    println!(
        "axum Router: {bare} allocations/request bare, {outside} with ObserveLayer around it, \
         {any_layer} with a no-op Router::layer, {observed} with ObserveLayer as Router::layer"
    );
    // Beyond what any layer pays, axum boxes the layer's response body into its own `Body`.
    assert_eq!(observed - any_layer, 1.0);
}
