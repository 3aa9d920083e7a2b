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

#[path = "../../shared/busy_work.rs"]
mod busy_work;
#[path = "../../shared/continuous_profiling.rs"]
mod continuous_profiling;
#[path = "../../shared/runtime_load.rs"]
mod runtime_load;
mod server;

use std::net::SocketAddr;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, Query};
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use bytes::Bytes;
use observe_tower::observe_pprof;
use observe_tower::{ObserveLayer, ProfilingSettings};
use serde::Deserialize;
use serde_json::{json, Value};

// jemalloc serves every allocation, with its heap profiler on: `/debug/pprof/heap` shows
// where live memory was allocated.
observe_tower::jemalloc_heap_profiling!();

/// The service's routes, without observe, so tests can compare with and without.
fn api() -> Router {
    let items = Router::new().route("/items/{id}", get(item));
    Router::new()
        .route("/users/{id}", get(user))
        .route("/slow", get(slow))
        .route("/fail", get(fail))
        .route("/stream", get(stream))
        .route("/work", get(work))
        .route("/idle-tasks", get(idle_tasks))
        .route("/block", get(block))
        .nest("/api", items)
}

async fn user(Path(id): Path<u64>) -> Json<Value> {
    Json(json!({ "id": id, "name": format!("user-{id}") }))
}

async fn item(Path(id): Path<u64>) -> Json<Value> {
    Json(json!({ "id": id, "kind": "item" }))
}

#[derive(Deserialize)]
struct SlowParams {
    #[serde(default)]
    ms: u64,
}

/// Sleeps `ms` milliseconds (capped at 60 s) before answering.
async fn slow(Query(p): Query<SlowParams>) -> String {
    let ms = p.ms.min(60_000);
    tokio::time::sleep(Duration::from_millis(ms)).await;
    format!("slept {ms} ms\n")
}

async fn fail() -> (StatusCode, &'static str) {
    (
        StatusCode::INTERNAL_SERVER_ERROR,
        "this endpoint always fails\n",
    )
}

#[derive(Deserialize)]
struct StreamParams {
    #[serde(default = "default_chunks")]
    chunks: u32,
    #[serde(default)]
    delay_ms: u64,
    /// Each line padded with spaces to this many bytes (at most 1 MiB): a long answer.
    #[serde(default)]
    pad: usize,
}

fn default_chunks() -> u32 {
    5
}

/// Streams `chunks` lines (at most 10,000), `delay_ms` (at most 10 s) apart, each `pad` bytes
/// long when that is more than the line.
async fn stream(Query(p): Query<StreamParams>) -> Body {
    let chunks = p.chunks.min(10_000);
    let delay = Duration::from_millis(p.delay_ms.min(10_000));
    let pad = p.pad.min(1 << 20).saturating_sub(1);
    let lines = futures_util::stream::unfold(0u32, move |i| async move {
        if i == chunks {
            return None;
        }
        if i > 0 {
            tokio::time::sleep(delay).await;
        }
        let mut line = format!("chunk {i}");
        line.extend(std::iter::repeat_n(' ', pad.saturating_sub(line.len())));
        line.push('\n');
        Some((Ok::<_, std::io::Error>(Bytes::from(line)), i + 1))
    });
    Body::from_stream(lines)
}

#[derive(Deserialize)]
struct WorkParams {
    #[serde(default = "default_work_ms")]
    ms: u64,
}

fn default_work_ms() -> u64 {
    10
}

/// Burns `ms` milliseconds of CPU (at most 1 s) on a blocking thread: a workload for the
/// CPU profile to find.
async fn work(Query(p): Query<WorkParams>) -> String {
    let budget = Duration::from_millis(p.ms.min(1000));
    let rounds = tokio::task::spawn_blocking(move || busy_work::busy_work(budget))
        .await
        .unwrap_or(0);
    format!("worked {} ms, {rounds} rounds\n", budget.as_millis())
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
