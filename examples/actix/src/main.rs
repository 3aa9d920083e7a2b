//! `example-actix`: a small actix-web service instrumented with observe, the twin of
//! `example-axum` (same routes, same responses, same metrics for the same traffic).
//!
//! ```text
//! cargo run -p example-actix                 # listens on 127.0.0.1:3001
//! cargo run -p example-actix -- 127.0.0.1:8081
//! curl localhost:3001/users/7; curl localhost:3001/metrics
//! go tool pprof -top 'http://127.0.0.1:3001/debug/pprof/profile?seconds=5'  # while: curl localhost:3001/work?ms=200
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

use std::net::SocketAddr;
use std::time::Duration;

use actix_web::error::ErrorBadRequest;
use actix_web::{guard, web, App, HttpResponse, HttpServer, Responder, Route};
use observe_actix::{in_current_request, observe_pprof};
use observe_actix::{Observe, ProfilingSettings};

/// mimalloc serves every allocation, sampled once per 512 KiB on average: `/debug/pprof/heap`
/// shows where live memory was allocated, `/debug/pprof/allocs` where allocations come from,
/// by route.
#[global_allocator]
static ALLOCATOR: observe_actix::ProfiledAllocator<mimalloc::MiMalloc> =
    observe_actix::ProfiledAllocator::new(mimalloc::MiMalloc);

/// The service's routes, without observe, so tests can compare with and without.
fn api(config: &mut web::ServiceConfig) {
    config
        // axum answers a path parameter that does not parse with 400; actix's default is 404.
        .app_data(web::PathConfig::default().error_handler(|err, _| ErrorBadRequest(err)))
        .service(web::resource("/users/{id}").route(get().to(user)))
        .service(web::resource("/slow").route(get().to(slow)))
        .service(web::resource("/fail").route(get().to(fail)))
        .service(web::resource("/stream").route(get().to(stream)))
        .service(web::resource("/work").route(get().to(work)))
        .service(web::resource("/work/inline").route(get().to(work_inline)))
        .service(web::resource("/leak").route(get().to(leak)))
        .service(web::resource("/idle-tasks").route(get().to(idle_tasks)))
        .service(web::resource("/block").route(get().to(block)))
        .service(web::scope("/api").service(web::resource("/items/{id}").route(get().to(item))));
}

/// A route for GET and HEAD, like axum's `get`. Inside a `web::resource`, other methods get
/// `405 Method Not Allowed` under the resource's pattern, as with axum (`App::route` would
/// turn them into unmatched 404s instead).
fn get() -> Route {
    web::route().guard(guard::Any(guard::Get()).or(guard::Head()))
}

async fn user(id: web::Path<u64>) -> HttpResponse {
    HttpResponse::Ok().json(api::user(id.into_inner()))
}

async fn item(id: web::Path<u64>) -> HttpResponse {
    HttpResponse::Ok().json(api::item(id.into_inner()))
}

async fn slow(p: web::Query<api::SlowParams>) -> String {
    api::slow(p.into_inner()).await
}

async fn fail() -> HttpResponse {
    HttpResponse::InternalServerError().body(api::FAIL)
}

async fn stream(p: web::Query<api::StreamParams>) -> impl Responder {
    HttpResponse::Ok().streaming(api::stream(p.into_inner()))
}

async fn work(p: web::Query<api::WorkParams>) -> String {
    api::work(p.into_inner()).await
}

async fn leak(p: web::Query<api::LeakParams>) -> String {
    api::leak(p.into_inner())
}

async fn work_inline(p: web::Query<api::InlineWorkParams>) -> String {
    api::work_inline(p.into_inner()).await
}

/// Spawns `n` tasks (at most 100,000 alive at once) that sleep `seconds` (default 60, at most 3600) on this
/// worker's tokio runtime (`tokio::spawn`: tokio does not count `actix_web::rt::spawn`'s
/// LocalSet tasks): they show in `tokio_alive_tasks` and in `/debug/pprof/tasks`.
async fn idle_tasks(p: web::Query<runtime_load::IdleParams>) -> String {
    let n = runtime_load::spawn_idle_tasks(p.n, p.seconds);
    format!("spawned {n} idle tasks\n")
}

/// The mistake to catch: blocks the worker thread with `std::thread::sleep` for `ms`
/// milliseconds (at most 10 s) instead of awaiting. `tokio_worker_current_stall_seconds` shows it.
async fn block(p: web::Query<runtime_load::BlockParams>) -> String {
    format!(
        "blocked a worker for {} ms\n",
        runtime_load::block_worker(p.ms)
    )
}

#[actix_web::main]
async fn main() {
    let addr: SocketAddr = match std::env::args().nth(1).map(|a| a.parse()) {
        None => SocketAddr::from(([127, 0, 0, 1], 3001)),
        Some(Ok(addr)) => addr,
        Some(Err(e)) => {
            eprintln!("example-actix: the first argument must be a listen address like 127.0.0.1:3001 ({e})");
            std::process::exit(2);
        }
    };
    // One `Observe` for the whole server: every worker's app records into the same series.
    let observe = continuous_profiling::from_env(
        // Native histograms on, for a Prometheus started with
        // `--enable-feature=native-histograms`; text scrapers see the classic buckets only.
        Observe::builder("example-actix")
            .native_histograms(true)
            .build()
            .expect("a fresh registry takes observe's metrics"),
        Observe::with_continuous_profiling,
    );
    let server = HttpServer::new(move || {
        App::new()
            .configure(api)
            .configure(observe.routes())
            .wrap(observe.clone())
    })
    .workers(2)
    // A connection must send a whole request head within 5 s of opening, and of its previous
    // response, or it is closed (with a 408 when it sent nothing usable): a client that opens
    // connections and sends nothing, or a head byte by byte, cannot hold them. These are
    // actix-web's defaults, stated so they are not lost; example-axum sets the same
    // (tested in integration-tests/tests/slow_clients.rs).
    .client_request_timeout(Duration::from_secs(5))
    .keep_alive(Duration::from_secs(5))
    // Records a client that left before its response as 499, and lets a CPU profile stop when
    // its client disconnects (actix runs handlers on otherwise).
    .on_connect(observe_actix::on_connect)
    .bind(addr);
    let server = match server {
        Ok(server) => server,
        Err(e) => {
            eprintln!("example-actix: cannot listen on {addr}: {e}");
            std::process::exit(1);
        }
    };
    let bound = server.addrs().first().copied().unwrap_or(addr);
    println!("example-actix listening on http://{bound}");
    if let Err(e) = server.run().await {
        eprintln!("example-actix: server error: {e}");
        std::process::exit(1);
    }
}
