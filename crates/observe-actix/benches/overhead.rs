//! Added cost per request of `Observe`, driven in-process with `actix_web::test::call_service`.
//!
//! `actix_bare` and `actix_observed` run the same actix `App` without and with the middleware,
//! each request read to the end of its response body (where the record finishes). The
//! difference of their medians is the overhead reported in `docs/performance.md`.
//! `actix_observed_scope` routes through a nested scope; `actix_*_unmatched` is a 404;
//! `actix_*_waiting` has a handler that waits once (returns `Pending`) before it answers, as one
//! that awaits I/O does: its response is where observe looks for a client that left.
//! `actix_added*` measure that difference directly, alternating the two apps block by block
//! within each sample (the time reported is with minus without). `actix_floor` is the least
//! any recording middleware costs.

// `criterion_group!` defines an undocumented public function.
#![allow(missing_docs)]
use std::time::{Duration, Instant};

use actix_web::body::MessageBody;
use actix_web::dev::{Service, ServiceResponse};
use actix_web::{test, web, App, Error};
use criterion::{criterion_group, criterion_main, Criterion};
use integration_tests::bench::paired;
use observe_actix::Observe;

fn api(config: &mut web::ServiceConfig) {
    config
        .route("/users/{id}", web::get().to(|| async { "user" }))
        .service(web::scope("/api").route("/items/{id}", web::get().to(|| async { "item" })))
        .route("/health", web::get().to(|| async { "ok" }))
        .route(
            "/wait",
            web::get().to(|| async {
                actix_web::rt::task::yield_now().await;
                "waited"
            }),
        );
}

/// A bodyless GET as actix's HTTP/1 decoder produces it (no payload, a parsed `Uri`).
fn get(path: &'static str) -> actix_http::Request {
    let mut request = actix_http::Request::new();
    request.head_mut().method = actix_http::Method::GET;
    request.head_mut().uri = actix_http::Uri::try_from(path).expect("a valid path");
    request
}

async fn drive<S, B>(app: &S, iters: u64, path: &'static str) -> Duration
where
    S: Service<actix_http::Request, Response = ServiceResponse<B>, Error = Error>,
    B: MessageBody,
{
    let start = Instant::now();
    for _ in 0..iters {
        let response = test::call_service(app, get(path)).await;
        std::hint::black_box(test::read_body(response).await);
    }
    start.elapsed()
}

fn overhead(c: &mut Criterion) {
    let system = actix_web::rt::System::new();
    let bare = system.block_on(test::init_service(App::new().configure(api)));
    let observed = system.block_on(test::init_service(
        App::new().configure(api).wrap(Observe::new("bench")),
    ));
    let mut group = c.benchmark_group("per_request");
    for (name, path) in [
        ("", "/users/42"),
        ("_scope", "/api/items/7"),
        ("_unmatched", "/nowhere"),
        ("_waiting", "/wait"),
    ] {
        group.bench_function(format!("actix_bare{name}"), |b| {
            b.iter_custom(|iters| system.block_on(drive(&bare, iters, path)))
        });
        group.bench_function(format!("actix_observed{name}"), |b| {
            b.iter_custom(|iters| system.block_on(drive(&observed, iters, path)))
        });
        // The difference itself, measured in pairs: blocks of requests alternate between the
        // two apps, so the machine's drift between two benchmarks cannot enter it.
        group.bench_function(format!("actix_added{name}"), |b| {
            b.iter_custom(|iters| {
                system.block_on(paired(
                    iters,
                    |n| drive(&bare, n, path),
                    |n| drive(&observed, n, path),
                ))
            })
        });
    }
    // The least any recording middleware must do through the same `wrap`: read the clock when
    // the request enters and again when its response body ends (which means wrapping it).
    let floor = system.block_on(test::init_service(
        App::new().configure(api).wrap(floor::Floor),
    ));
    group.bench_function("actix_floor", |b| {
        b.iter_custom(|iters| system.block_on(drive(&floor, iters, "/users/42")))
    });
    group.bench_function("actix_floor_added", |b| {
        b.iter_custom(|iters| {
            system.block_on(paired(
                iters,
                |n| drive(&bare, n, "/users/42"),
                |n| drive(&floor, n, "/users/42"),
            ))
        })
    });
    group.finish();
}

/// A middleware that only times requests to the end of their response bodies.
mod floor {
    use std::future::{ready, Future, Ready};
    use std::pin::Pin;
    use std::task::{Context, Poll};

    use actix_web::body::{BodySize, MessageBody};
    use actix_web::dev::{forward_ready, Service, ServiceRequest, ServiceResponse, Transform};
    use actix_web::Error;
    use bytes::Bytes;
    use pin_project_lite::pin_project;

    pub(crate) struct Floor;

    impl<S, B> Transform<S, ServiceRequest> for Floor
    where
        S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = Error>,
        B: MessageBody,
    {
        type Response = ServiceResponse<FloorBody<B>>;
        type Error = Error;
        type Transform = FloorService<S>;
        type InitError = ();
        type Future = Ready<Result<FloorService<S>, ()>>;

        fn new_transform(&self, service: S) -> Self::Future {
            ready(Ok(FloorService { service }))
        }
    }

    pub(crate) struct FloorService<S> {
        service: S,
    }

    impl<S, B> Service<ServiceRequest> for FloorService<S>
    where
        S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = Error>,
        B: MessageBody,
    {
        type Response = ServiceResponse<FloorBody<B>>;
        type Error = Error;
        type Future = FloorFuture<S::Future>;

        forward_ready!(service);

        fn call(&self, req: ServiceRequest) -> Self::Future {
            FloorFuture {
                inner: self.service.call(req),
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

    impl<F, B> Future for FloorFuture<F>
    where
        F: Future<Output = Result<ServiceResponse<B>, Error>>,
    {
        type Output = Result<ServiceResponse<FloorBody<B>>, Error>;

        fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
            let this = self.project();
            let result = std::task::ready!(this.inner.poll(cx));
            let started = this.started.take();
            Poll::Ready(result.map(|r| r.map_body(|_, inner| FloorBody { inner, started })))
        }
    }

    pin_project! {
        pub(crate) struct FloorBody<B> {
            #[pin]
            inner: B,
            started: Option<quanta::Instant>,
        }
    }

    impl<B: MessageBody> MessageBody for FloorBody<B> {
        type Error = B::Error;

        fn size(&self) -> BodySize {
            self.inner.size()
        }

        fn poll_next(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Bytes, Self::Error>>> {
            let this = self.project();
            let item = std::task::ready!(this.inner.poll_next(cx));
            if item.is_none() {
                if let Some(started) = this.started.take() {
                    std::hint::black_box(started.elapsed());
                }
            }
            Poll::Ready(item)
        }
    }
}

criterion_group!(benches, overhead);
criterion_main!(benches);
