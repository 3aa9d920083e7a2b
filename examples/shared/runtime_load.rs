//! What the runtime metrics and the task dump are shown with: idle tasks, and a handler that
//! blocks its worker thread. Both examples serve them the same way. They are demonstrations,
//! bounded so that a client cannot take the example down with them; a real service has no
//! such routes.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use serde::Deserialize;

/// `GET /idle-tasks?n=..&seconds=..`: how many idle tasks, waiting how long (default 60 s).
#[derive(Deserialize)]
pub(crate) struct IdleParams {
    pub(crate) n: usize,
    #[serde(default = "default_idle_seconds")]
    pub(crate) seconds: u64,
}

fn default_idle_seconds() -> u64 {
    60
}

/// `GET /block?ms=..`: how long to block the worker.
#[derive(Deserialize)]
pub(crate) struct BlockParams {
    #[serde(default)]
    pub(crate) ms: u64,
}

/// The most idle tasks alive at once, all requests together.
pub(crate) const MAX_IDLE_TASKS: usize = 100_000;

/// Idle tasks alive now.
static IDLE_TASKS: AtomicUsize = AtomicUsize::new(0);

/// One idle task's place under [`MAX_IDLE_TASKS`], given back when the task ends or is
/// dropped unpolled.
struct Place;

impl Drop for Place {
    fn drop(&mut self) {
        IDLE_TASKS.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Spawns up to `n` tasks on the current tokio runtime (as `tokio::spawn` does, so tokio
/// counts them) that wait `seconds` on a timer and end; fewer when [`MAX_IDLE_TASKS`] are
/// alive. Returns how many it spawned.
pub(crate) fn spawn_idle_tasks(n: usize, seconds: u64) -> usize {
    let wait = Duration::from_secs(seconds.min(3600));
    let mut spawned = 0;
    while spawned < n
        && IDLE_TASKS
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |alive| {
                (alive < MAX_IDLE_TASKS).then_some(alive + 1)
            })
            .is_ok()
    {
        tokio::spawn(idle_task(wait, Place));
        spawned += 1;
    }
    spawned
}

/// An idle task: the task dump shows it waiting in `tokio::time::sleep`, at this file's
/// line. A future of its own whose `poll` is a frame of its own, so that a release build shows
/// it too: there an `async fn`'s state machine is inlined into tokio's poll of the task, above
/// the await points the dump shows (docs/pprof.md).
struct IdleTask {
    sleep: Pin<Box<tokio::time::Sleep>>,
    _place: Place,
}

impl Future for IdleTask {
    type Output = ();

    #[inline(never)]
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let polled = self.sleep.as_mut().poll(cx);
        // Not a tail call: the call stays a frame of this function.
        std::hint::black_box(&polled);
        polled
    }
}

fn idle_task(wait: Duration, place: Place) -> IdleTask {
    IdleTask {
        sleep: Box::pin(tokio::time::sleep(wait)),
        _place: place,
    }
}

/// Blocks the calling thread, a tokio worker, for `ms` milliseconds (at most 10 s): the
/// mistake the stalled-worker metric shows.
pub(crate) fn block_worker(ms: u64) -> u64 {
    let ms = ms.min(10_000);
    std::thread::sleep(Duration::from_millis(ms));
    ms
}
