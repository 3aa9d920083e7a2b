//! Added cost per request of `ObserveLayer`, driven in-process with `ready().call()`.
//!
//! `axum_bare` and `axum_observed` run the same axum router without and with the layer, each
//! request read to the end of its response body (where the record finishes). The difference
//! of their medians is the overhead reported in `docs/performance.md`. `service_bare` and
//! `service_observed` do the same around a minimal `tower::service_fn`, which isolates the
//! layer from axum's own per-layer boxing. `axum_added` measures the router difference directly,
//! alternating the two routers block by block within each sample (the time reported is with
//! minus without). `axum_noop_layer` and `axum_floor_layer` are what axum charges for any layer
//! and the least any recording layer costs; `axum_layer_outside` is the layer around the whole
//! router, given the route by a function (a reference without axum's per-layer cost). The
//! `two_threads` group drives one router from two threads at once.

// criterion's macros generate undocumented items.
#![allow(missing_docs)]
use std::convert::Infallible;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::routing::get;
use axum::Router;
use criterion::{criterion_group, criterion_main, Criterion};
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use integration_tests::bench::paired;
use observe_tower::ObserveLayer;
use tower::{Service, ServiceExt};

fn router() -> Router {
    Router::new()
        .route("/users/{id}", get(|| async { "user" }))
        .route("/health", get(|| async { "ok" }))
}

/// Finalizes the routes, as `axum::serve` does: without it a Router builds each handler's
/// route, and applies its layers, on every request.
fn served(router: Router) -> Router {
    router.with_state(())
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

/// Times `iters` requests through one long-lived service, as a server would run them.
fn bench<S, F>(
    c: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    rt: &tokio::runtime::Runtime,
    name: &str,
    svc: S,
    _driver: F,
) where
    S: Clone + 'static,
    F: AsyncDriver<S>,
{
    c.bench_function(name, |b| {
        b.to_async(rt).iter_custom(|iters| {
            let mut svc = svc.clone();
            async move {
                let start = Instant::now();
                for _ in 0..iters {
                    F::drive(&mut svc).await;
                }
                start.elapsed()
            }
        })
    });
}

/// One request, read to the end of its body.
trait AsyncDriver<S> {
    async fn drive(svc: &mut S);
}

struct AxumRequest;
impl<S, B> AsyncDriver<S> for AxumRequest
where
    S: Service<Request<Body>, Response = Response<B>, Error = Infallible>,
    B: http_body::Body,
    B::Error: std::fmt::Debug,
{
    async fn drive(svc: &mut S) {
        drive(svc).await
    }
}

struct PlainRequest;
impl<S, B> AsyncDriver<S> for PlainRequest
where
    S: Service<Request<Full<bytes::Bytes>>, Response = Response<B>, Error = Infallible>,
    B: http_body::Body,
    B::Error: std::fmt::Debug,
{
    async fn drive(svc: &mut S) {
        drive_plain(svc).await
    }
}

/// `n` requests through a clone of `router` (as `axum::serve` clones it per connection).
async fn drive_n(router: &Router, n: u64) -> Duration {
    let mut svc = router.clone();
    let start = Instant::now();
    for _ in 0..n {
        drive(&mut svc).await;
    }
    start.elapsed()
}

fn overhead(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let mut group = c.benchmark_group("per_request");
    // Kept alive to the end, as a server keeps its `/metrics`: layered services record only
    // while someone can read their metrics.
    let observe = ObserveLayer::new("bench");
    bench(&mut group, &rt, "axum_bare", served(router()), AxumRequest);
    bench(
        &mut group,
        &rt,
        "axum_observed",
        served(router().layer(observe.clone())),
        AxumRequest,
    );
    // The difference itself, measured in pairs: blocks of requests alternate between the two
    // routers, so the machine's drift between two benchmarks cannot enter it.
    let (without, with) = (served(router()), served(router().layer(observe.clone())));
    group.bench_function("axum_added", |b| {
        b.to_async(&rt)
            .iter_custom(|iters| paired(iters, |n| drive_n(&without, n), |n| drive_n(&with, n)))
    });
    // The layer wrapped around the whole router, given the route by a function: what it costs
    // without axum's per-layer boxing. Not a way to use it (outside the router there is no
    // `MatchedPath`), a reference.
    let outside = ObserveLayer::new("bench").with_route_fn(|_| Some("/users/{id}"));
    bench(
        &mut group,
        &rt,
        "axum_layer_outside",
        tower::Layer::layer(&outside, served(router())),
        AxumRequest,
    );
    // What axum charges for any `Router::layer`, to tell it apart from the layer's own cost.
    bench(
        &mut group,
        &rt,
        "axum_noop_layer",
        served(router().layer(tower::util::MapRequestLayer::new(|req: Request<Body>| req))),
        AxumRequest,
    );

    let handler = || {
        tower::service_fn(|_req: Request<Full<bytes::Bytes>>| async {
            Ok::<_, Infallible>(Response::new(Full::new(bytes::Bytes::from_static(b"user"))))
        })
    };
    bench(&mut group, &rt, "service_bare", handler(), PlainRequest);
    let layer = ObserveLayer::new("bench").with_route_fn(|_| Some("/users/{id}"));
    bench(
        &mut group,
        &rt,
        "service_observed",
        tower::Layer::layer(&layer, handler()),
        PlainRequest,
    );
    // An excluded route: the layer's wrapping alone, nothing recorded.
    let skipping = ObserveLayer::new("bench").with_route_fn(|_| Some("/metrics"));
    bench(
        &mut group,
        &rt,
        "service_excluded",
        tower::Layer::layer(&skipping, handler()),
        PlainRequest,
    );
    // The least any recording layer must do, through the same `Router::layer`: read the clock
    // when the request enters and again when its response body ends (which means wrapping the
    // body). The gap between this and `axum_bare` is the floor under any layer's added cost.
    bench(
        &mut group,
        &rt,
        "axum_floor_layer",
        served(router().layer(floor::FloorLayer)),
        AxumRequest,
    );
    group.finish();
    two_threads(c, &observe);
    drop(observe);
}

/// The same router driven from two threads at once, as a multi-threaded runtime's workers share
/// it: whatever the layer writes that both threads share (a reference count, a counter) costs
/// here, not in the single-threaded figures. The time is per request on each thread.
fn two_threads(c: &mut Criterion, observe: &ObserveLayer) {
    let mut group = c.benchmark_group("two_threads");
    let bare = served(router());
    group.bench_function("axum_bare", |b| {
        b.iter_custom(|iters| on_two_threads(&bare, iters))
    });
    let observed = served(router().layer(observe.clone()));
    group.bench_function("axum_observed", |b| {
        b.iter_custom(|iters| on_two_threads(&observed, iters))
    });
    group.finish();
}

/// `iters` requests on each of two threads, each with its own clone of `svc`; the longer
/// thread's time.
fn on_two_threads(svc: &Router, iters: u64) -> Duration {
    let start = std::sync::Arc::new(std::sync::Barrier::new(2));
    let threads: Vec<_> = (0..2)
        .map(|_| {
            let (mut svc, start) = (svc.clone(), start.clone());
            std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .build()
                    .unwrap();
                start.wait();
                rt.block_on(async move {
                    let started = Instant::now();
                    for _ in 0..iters {
                        drive(&mut svc).await;
                    }
                    started.elapsed()
                })
            })
        })
        .collect();
    threads
        .into_iter()
        .map(|t| t.join().unwrap())
        .max()
        .unwrap_or_default()
}

/// A layer that only times requests to the end of their response bodies, and records nothing.
mod floor {
    use std::future::Future;
    use std::pin::Pin;
    use std::task::{ready, Context, Poll};

    use http::{Request, Response};
    use http_body::{Body, Frame};
    use pin_project_lite::pin_project;
    use tower::{Layer, Service};

    #[derive(Clone)]
    pub(crate) struct FloorLayer;

    impl<S> Layer<S> for FloorLayer {
        type Service = Floor<S>;
        fn layer(&self, inner: S) -> Floor<S> {
            Floor(inner)
        }
    }

    #[derive(Clone)]
    pub(crate) struct Floor<S>(S);

    impl<S, Q, B> Service<Request<Q>> for Floor<S>
    where
        S: Service<Request<Q>, Response = Response<B>>,
    {
        type Response = Response<FloorBody<B>>;
        type Error = S::Error;
        type Future = FloorFuture<S::Future>;

        fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
            self.0.poll_ready(cx)
        }

        fn call(&mut self, req: Request<Q>) -> Self::Future {
            FloorFuture {
                inner: self.0.call(req),
                started: Some(quanta::Instant::now()),
            }
        }
    }

    pin_project! {
        pub(crate) struct FloorFuture<F> {
            #[pin]
            inner: F,
            started: Option<quanta::Instant>,
        }
    }

    impl<F, B, E> Future for FloorFuture<F>
    where
        F: Future<Output = Result<Response<B>, E>>,
    {
        type Output = Result<Response<FloorBody<B>>, E>;

        fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
            let this = self.project();
            let result = ready!(this.inner.poll(cx));
            let started = this.started.take();
            Poll::Ready(result.map(|r| r.map(|inner| FloorBody { inner, started })))
        }
    }

    pin_project! {
        pub(crate) struct FloorBody<B> {
            #[pin]
            inner: B,
            started: Option<quanta::Instant>,
        }
    }

    impl<B: Body> Body for FloorBody<B> {
        type Data = B::Data;
        type Error = B::Error;

        fn poll_frame(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
            let this = self.project();
            let frame = ready!(this.inner.poll_frame(cx));
            if frame.is_none() {
                if let Some(started) = this.started.take() {
                    std::hint::black_box(started.elapsed());
                }
            }
            Poll::Ready(frame)
        }

        // Forwarded, as any layer must: axum sets `Content-Length` from the size hint.
        fn is_end_stream(&self) -> bool {
            self.inner.is_end_stream()
        }

        fn size_hint(&self) -> http_body::SizeHint {
            self.inner.size_hint()
        }
    }
}

criterion_group!(benches, overhead);
criterion_main!(benches);
