//! The thread that notices a worker stuck in one poll: tokio only publishes a worker's busy
//! time when the poll ends, so a scrape during a blocking call could not see it otherwise.

use std::sync::Once;
use std::time::Instant;

use super::{watched, WATCHDOG_PERIOD};

/// Starts the process's watchdog thread, once. It runs for the life of the process (a
/// thread blocked in `sleep` costs nothing but its stack).
pub(super) fn start() {
    static STARTED: Once = Once::new();
    STARTED.call_once(|| {
        // Without the thread the gauges stay 0; the rest of the metrics still work.
        let _ = std::thread::Builder::new()
            .name("observe-watchdg".to_owned())
            .spawn(|| loop {
                std::thread::sleep(WATCHDOG_PERIOD);
                tick(Instant::now());
            });
    });
}

/// One look at every worker of every watched runtime.
pub(super) fn tick(now: Instant) {
    for runtime in watched().runtimes.iter_mut() {
        let metrics = runtime.handle.metrics();
        for (index, worker) in runtime.workers.iter_mut().enumerate() {
            worker.observe(
                metrics.worker_total_busy_duration(index),
                metrics.worker_park_unpark_count(index),
                now,
            );
        }
    }
}
