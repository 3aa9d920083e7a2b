//! What both examples' API routes read and answer, written once: each example's handlers only
//! take their framework's extractors apart and put these answers into its response type, so
//! the two services answer the same requests with the same bytes (tested in
//! `integration-tests/tests/examples_agree.rs`). Each example includes this file as its `api`
//! module, beside `busy_work`.

use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;
use futures_util::Stream;
use serde::Deserialize;
use serde_json::{json, Value};

use super::busy_work::busy_work;
use super::in_current_request;

/// `GET /users/{id}`.
pub(crate) fn user(id: u64) -> Value {
    json!({ "id": id, "name": format!("user-{id}") })
}

/// `GET /api/items/{id}`.
pub(crate) fn item(id: u64) -> Value {
    json!({ "id": id, "kind": "item" })
}

/// `GET /slow?ms=..`: how long to sleep before answering.
#[derive(Deserialize)]
pub(crate) struct SlowParams {
    #[serde(default)]
    ms: u64,
}

/// Sleeps `ms` milliseconds (capped at 60 s) before answering.
pub(crate) async fn slow(p: SlowParams) -> String {
    let ms = p.ms.min(60_000);
    tokio::time::sleep(Duration::from_millis(ms)).await;
    format!("slept {ms} ms\n")
}

/// `GET /fail`'s body (with status 500).
pub(crate) const FAIL: &str = "this endpoint always fails\n";

/// `GET /stream?chunks=..&delay_ms=..&pad=..`.
#[derive(Deserialize)]
pub(crate) struct StreamParams {
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

/// `chunks` lines (at most 10,000), `delay_ms` (at most 10 s) apart, each `pad` bytes long
/// when that is more than the line.
pub(crate) fn stream(p: StreamParams) -> impl Stream<Item = Result<Bytes, std::io::Error>> {
    let chunks = p.chunks.min(10_000);
    let delay = Duration::from_millis(p.delay_ms.min(10_000));
    let pad = p.pad.min(1 << 20).saturating_sub(1);
    futures_util::stream::unfold(0u32, move |i| async move {
        if i == chunks {
            return None;
        }
        if i > 0 {
            tokio::time::sleep(delay).await;
        }
        let mut line = format!("chunk {i}");
        line.extend(std::iter::repeat_n(' ', pad.saturating_sub(line.len())));
        line.push('\n');
        Some((Ok(Bytes::from(line)), i + 1))
    })
}

/// `GET /work?ms=..`: how much CPU to burn.
#[derive(Deserialize)]
pub(crate) struct WorkParams {
    #[serde(default = "default_work_ms")]
    ms: u64,
}

fn default_work_ms() -> u64 {
    10
}

/// Burns `ms` milliseconds of CPU (at most 1 s) on tokio's blocking pool (an actix worker is
/// a tokio runtime too): a workload for the CPU profile to find. `in_current_request` hands
/// the request's labels to the blocking thread, so its samples count for `/work`.
pub(crate) async fn work(p: WorkParams) -> String {
    let budget = Duration::from_millis(p.ms.min(1000));
    let rounds = tokio::task::spawn_blocking(in_current_request(move || busy_work(budget)))
        .await
        .unwrap_or(0);
    format!("worked {} ms, {rounds} rounds\n", budget.as_millis())
}

/// `GET /work/inline?ms=..&slice_ms=..`: how much CPU to burn, in slices of how long.
#[derive(Deserialize)]
pub(crate) struct InlineWorkParams {
    #[serde(default = "default_work_ms")]
    ms: u64,
    #[serde(default = "default_slice_ms")]
    slice_ms: u64,
}

fn default_slice_ms() -> u64 {
    1
}

/// Burns `ms` milliseconds of CPU (at most 1 s) in the handler itself, on the async worker,
/// in slices of `slice_ms` (1 by default) with a `yield_now` between them, so the task may
/// move to another worker between slices: what a handler that computes inline does (and why
/// it should not burn long: each slice holds a worker).
pub(crate) async fn work_inline(p: InlineWorkParams) -> String {
    let budget = Duration::from_millis(p.ms.min(1000));
    let slice = Duration::from_millis(p.slice_ms.max(1));
    let (mut spent, mut rounds) = (Duration::ZERO, 0);
    while spent < budget {
        let this = slice.min(budget - spent);
        rounds += busy_work(this);
        spent += this;
        tokio::task::yield_now().await;
    }
    format!("worked {} ms inline, {rounds} rounds\n", budget.as_millis())
}

/// `GET /leak?kb=..`: how much more memory to keep.
#[derive(Deserialize)]
pub(crate) struct LeakParams {
    #[serde(default)]
    kb: u64,
}

/// The most `/leak` keeps in all, in KiB (256 MiB).
pub(crate) const LEAK_CAP_KIB: u64 = 256 * 1024;

/// The pieces `/leak` keeps, until the process ends.
static LEAKED: Mutex<Vec<Box<[u8]>>> = Mutex::new(Vec::new());

/// Keeps `kb` KiB more, in 4 KiB pieces (each written, so they are really in memory), until
/// the process ends, up to [`LEAK_CAP_KIB`] in all: a leak for the heap profile to find
/// (`go tool pprof -sample_index=inuse_space .../debug/pprof/heap`, `list leak_piece`).
pub(crate) fn leak(p: LeakParams) -> String {
    let mut leaked = LEAKED.lock().unwrap_or_else(|e| e.into_inner());
    let kept = leaked.len() as u64 * 4;
    let more = p.kb.min(LEAK_CAP_KIB - kept) / 4;
    leaked.reserve(more as usize);
    for i in 0..more {
        leaked.push(leak_piece(i as u8));
    }
    let all = leaked.len() as u64 * 4;
    format!(
        "kept {} KiB more, {all} KiB in all (at most {LEAK_CAP_KIB})\n",
        more * 4
    )
}

/// One 4 KiB piece of the leak, where the heap profile finds it.
#[inline(never)]
fn leak_piece(fill: u8) -> Box<[u8]> {
    vec![fill | 1; 4096].into_boxed_slice()
}
