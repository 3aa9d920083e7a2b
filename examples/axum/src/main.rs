//! `example-axum`: a small service instrumented with observe.
//!
//! ```text
//! cargo run -p example-axum                 # listens on 127.0.0.1:3000
//! cargo run -p example-axum -- 127.0.0.1:8080
//! curl localhost:3000/users/7; curl localhost:3000/metrics
//! go tool pprof -top 'http://127.0.0.1:3000/debug/pprof/profile?seconds=5'  # while: curl localhost:3000/work?ms=200
//! open http://127.0.0.1:3000/debug/pprof/
//! ```
//!
//! `/debug/pprof/*` answers loopback clients only (observe's default); see docs/pprof.md.

#[path = "../../shared/api.rs"]
mod api;
#[path = "../../shared/busy_work.rs"]
mod busy_work;
#[path = "../../shared/continuous_profiling.rs"]
mod continuous_profiling;
#[path = "../../shared/runtime_load.rs"]
mod runtime_load;
mod server;

use axum::body::Body;
use axum::extract::{Path, Query};
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use observe_tower::{in_current_request, observe_pprof};
use observe_tower::{ObserveLayer, ProfilingSettings};
use serde_json::Value;
use std::net::SocketAddr;

/// The system's allocator serves every allocation, sampled once per 512 KiB on average:
/// `/debug/pprof/heap` shows where live memory was allocated, `/debug/pprof/allocs` where
/// allocations come from, by route.
#[global_allocator]
static ALLOCATOR: observe_tower::ProfiledAllocator<std::alloc::System> =
    observe_tower::ProfiledAllocator::new(std::alloc::System);

/// The service's routes, without observe, so tests can compare with and without.
fn api() -> Router {
    let items = Router::new().route("/items/{id}", get(item));
    Router::new()
        .route("/users/{id}", get(user))
        .route("/slow", get(slow))
        .route("/fail", get(fail))
        .route("/stream", get(stream))
        .route("/work", get(work))
        .route("/leak", get(leak))
        .route("/work/inline", get(work_inline))
        .route("/idle-tasks", get(idle_tasks))
        .route("/block", get(block))
        .nest("/api", items)
}

async fn user(Path(id): Path<u64>) -> Json<Value> {
    Json(api::user(id))
}

async fn item(Path(id): Path<u64>) -> Json<Value> {
    Json(api::item(id))
}

async fn slow(Query(p): Query<api::SlowParams>) -> String {
    api::slow(p).await
}

async fn fail() -> (StatusCode, &'static str) {
    (StatusCode::INTERNAL_SERVER_ERROR, api::FAIL)
}

async fn stream(Query(p): Query<api::StreamParams>) -> Body {
    Body::from_stream(api::stream(p))
}

async fn work(Query(p): Query<api::WorkParams>) -> String {
    api::work(p).await
}

async fn leak(Query(p): Query<api::LeakParams>) -> String {
    api::leak(p)
}

async fn work_inline(Query(p): Query<api::InlineWorkParams>) -> String {
    api::work_inline(p).await
}

/// Spawns `n` tasks (at most 100,000 alive at once) that sleep `seconds` (default 60, at most 3600): they
/// show in `tokio_alive_tasks` and in `/debug/pprof/tasks`.
async fn idle_tasks(Query(p): Query<runtime_load::IdleParams>) -> String {
    let n = runtime_load::spawn_idle_tasks(p.n, p.seconds);
    format!("spawned {n} idle tasks\n")
}

/// The mistake to catch: blocks the worker thread with `std::thread::sleep` for `ms`
/// milliseconds (at most 10 s) instead of awaiting. `tokio_worker_current_stall_seconds` shows it.
async fn block(Query(p): Query<runtime_load::BlockParams>) -> String {
    format!(
        "blocked a worker for {} ms\n",
        runtime_load::block_worker(p.ms)
    )
}

/// The example's whole app: the API, `/metrics`, and the layer around both.
fn app(observe: ObserveLayer) -> Router {
    api().merge(observe.routes()).layer(observe)
}

#[tokio::main]
async fn main() {
    let addr: SocketAddr = match std::env::args().nth(1).map(|a| a.parse()) {
        None => SocketAddr::from(([127, 0, 0, 1], 3000)),
        Some(Ok(addr)) => addr,
        Some(Err(e)) => {
            eprintln!("example-axum: the first argument must be a listen address like 127.0.0.1:3000 ({e})");
            std::process::exit(2);
        }
    };
    let listener = match tokio::net::TcpListener::bind(addr).await {
        Ok(listener) => listener,
        Err(e) => {
            eprintln!("example-axum: cannot listen on {addr}: {e}");
            std::process::exit(1);
        }
    };
    println!(
        "example-axum listening on http://{}",
        listener.local_addr().unwrap_or(addr)
    );
    let observe = continuous_profiling::from_env(
        // Native histograms on, for a Prometheus started with
        // `--enable-feature=native-histograms`; text scrapers see the classic buckets only.
        ObserveLayer::builder("example-axum")
            .native_histograms(true)
            .build()
            .expect("a fresh registry takes observe's metrics"),
        ObserveLayer::with_continuous_profiling,
    );
    let app = app(observe);
    let shutdown = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    // Not `axum::serve`: it sets no header read timeout, so a client that opens connections
    // and sends nothing would hold them forever (see server.rs). The client address lets
    // observe's default pprof rule answer loopback clients only.
    server::serve(listener, app, shutdown).await;
}
