//! What the runtime metrics and the task dump are shown with: idle tasks, and a handler that
//! blocks its worker thread. Both examples serve them the same way.

use std::time::Duration;

/// The most idle tasks one request may spawn.
pub(crate) const MAX_IDLE_TASKS: usize = 100_000;

/// Spawns `n` tasks on the current tokio runtime (as `tokio::spawn` does, so tokio counts
/// them) that wait `seconds` on a timer and end.
pub(crate) fn spawn_idle_tasks(n: usize, seconds: u64) -> usize {
    let n = n.min(MAX_IDLE_TASKS);
    let wait = Duration::from_secs(seconds.min(3600));
    for _ in 0..n {
        tokio::spawn(idle_task(wait));
    }
    n
}

/// An idle task: the task dump shows it waiting in `tokio::time::sleep` under this name.
#[inline(never)]
async fn idle_task(wait: Duration) {
    tokio::time::sleep(wait).await;
}

/// Blocks the calling thread, a tokio worker, for `ms` milliseconds (at most 10 s): the
/// mistake the stalled-worker metric shows.
pub(crate) fn block_worker(ms: u64) -> u64 {
    let ms = ms.min(10_000);
    std::thread::sleep(Duration::from_millis(ms));
    ms
}
