//! Added cost per request of `ObserveLayer`, driven in-process with `ready().call()`.
//!
//! `axum_bare` and `axum_observed` run the same axum router without and with the layer, each
//! request read to the end of its response body (where the record finishes). The difference
//! of their medians is the overhead reported in `docs/performance.md`. `service_bare` and
//! `service_observed` do the same around a minimal `tower::service_fn`, which isolates the
//! layer from axum's own per-layer boxing.
use std::convert::Infallible;

use axum::body::Body;
use axum::routing::get;
use axum::Router;
use criterion::{criterion_group, criterion_main, Criterion};
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use observe_tower::ObserveLayer;
use tower::{Service, ServiceExt};

fn router() -> Router {
    Router::new()
        .route("/users/{id}", get(|| async { "user" }))
        .route("/health", get(|| async { "ok" }))
}

async fn drive<S, B>(svc: &mut S)
where
    S: Service<Request<Body>, Response = Response<B>, Error = Infallible>,
    B: http_body::Body,
    B::Error: std::fmt::Debug,
{
    let req = Request::get("/users/42").body(Body::empty()).unwrap();
    let res = svc.ready().await.unwrap().call(req).await.unwrap();
    let body = res.into_body().collect().await.unwrap();
    std::hint::black_box(body);
}

async fn drive_plain<S, B>(svc: &mut S)
where
    S: Service<Request<Full<bytes::Bytes>>, Response = Response<B>, Error = Infallible>,
    B: http_body::Body,
    B::Error: std::fmt::Debug,
{
    let req = Request::get("/users/42").body(Full::default()).unwrap();
    let res = svc.ready().await.unwrap().call(req).await.unwrap();
    let body = res.into_body().collect().await.unwrap();
    std::hint::black_box(body);
}

fn overhead(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
    let mut group = c.benchmark_group("per_request");

    let mut bare = router();
    group.bench_function("axum_bare", |b| b.to_async(&rt).iter(|| drive(&mut bare)));
    // Clone per iteration is avoided: the same router serves every request, as in a server.
    let mut observed = router().layer(ObserveLayer::new("bench"));
    group.bench_function("axum_observed", |b| {
        b.to_async(&rt).iter(|| drive(&mut observed))
    });

    let handler = || {
        tower::service_fn(|_req: Request<Full<bytes::Bytes>>| async {
            Ok::<_, Infallible>(Response::new(Full::new(bytes::Bytes::from_static(b"user"))))
        })
    };
    let mut bare = handler();
    group.bench_function("service_bare", |b| {
        b.to_async(&rt).iter(|| drive_plain(&mut bare))
    });
    let layer = ObserveLayer::new("bench").with_route_fn(|_| Some("/users/{id}"));
    let mut observed = tower::Layer::layer(&layer, handler());
    group.bench_function("service_observed", |b| {
        b.to_async(&rt).iter(|| drive_plain(&mut observed))
    });
    group.finish();
}

criterion_group!(benches, overhead);
criterion_main!(benches);
