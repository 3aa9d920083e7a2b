//! Tokio runtime metrics (`tokio_*`, see `docs/metrics.md`) and the runtimes observe watches,
//! with the `runtime-metrics` feature.
//!
//! A service's runtimes are *watched*: the adapters call [`watch_current`] where they are set
//! up (observe-tower when the layer or `routes()` is built, observe-actix once per worker when
//! its middleware is built in that worker), so nothing happens per request. Every registry
//! built by [`ObserveBuilder::build`](crate::ObserveBuilder::build) carries the collector,
//! which reads each watched runtime's [`tokio::runtime::RuntimeMetrics`] when `/metrics` is
//! scraped; a watchdog thread (one per process, 50 wake-ups a second, a few atomic loads each)
//! notices a worker that makes no progress, the sign of a blocking call in a task.
//!
//! ```
//! let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
//! rt.block_on(async {
//!     let metrics = observe_core::HttpMetrics::new("checkout");
//!     assert!(observe_core::runtime::watch_current());
//!     assert!(!observe_core::runtime::watch_current()); // once per runtime
//!     let out = observe_core::MetricsEncoder::new(metrics.registry().clone()).encode(observe_core::Format::Text, None).unwrap();
//!     let text = String::from_utf8(out.body).unwrap();
//!     assert!(text.contains("tokio_workers 1"));
//! });
//! ```
//!
//! Labels: families that describe one worker thread carry `worker`, numbered across every
//! watched runtime in the order they were watched (axum: `0..n` of its multi-thread runtime;
//! actix-web: one per actix worker, each a current-thread runtime); runtime-wide families are
//! summed over the watched runtimes.

mod collector;
mod watchdog;

use std::sync::{Mutex, MutexGuard};
use std::thread::ThreadId;
use std::time::{Duration, Instant};

use tokio::runtime::{Handle, RuntimeFlavor};

pub(crate) use collector::RuntimeCollector;

/// A worker counts as stalled once it has run this long without reporting progress: tokio
/// publishes a worker's figures when it parks and after every 61 polls, so a worker that
/// publishes nothing for 100 ms is inside one poll (or 61 polls) that long.
pub const STALL_THRESHOLD: Duration = Duration::from_millis(100);

/// How often the watchdog looks at every worker.
pub(crate) const WATCHDOG_PERIOD: Duration = Duration::from_millis(20);

/// Which runtime a watch is: a current-thread runtime is driven by the thread that watched
/// it (an actix-web worker), a multi-thread one is watched once per process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Key {
    CurrentThread(ThreadId),
    MultiThread,
}

pub(crate) struct Watched {
    pub(crate) handle: Handle,
    key: Key,
    /// One per tokio worker of this runtime.
    pub(crate) workers: Vec<WorkerWatch>,
}

/// What the watchdog knows about one worker thread.
#[derive(Debug, Clone)]
pub(crate) struct WorkerWatch {
    /// The figures tokio last published for it.
    busy: Duration,
    park_unpark: u64,
    /// When they last changed (or the worker was last seen parked).
    progressed_at: Instant,
    /// The current stall, zero unless it is at least [`STALL_THRESHOLD`].
    pub(crate) stalled: Duration,
    /// Every stall of at least [`STALL_THRESHOLD`], summed, the current one included.
    pub(crate) stalled_total: Duration,
}

static WATCHED: Mutex<Vec<Watched>> = Mutex::new(Vec::new());

/// The watched runtimes; never poisoned (every critical section leaves the list whole).
pub(crate) fn watched() -> MutexGuard<'static, Vec<Watched>> {
    WATCHED.lock().unwrap_or_else(|e| e.into_inner())
}

/// Watches the runtime this is called from, if any: its `tokio_*` metrics appear on every
/// registry observe built, and `/debug/pprof/tasks` dumps its tasks. `false` when there is no
/// runtime here or it is already watched (a current-thread runtime once per thread that drives
/// it, a multi-thread runtime once per process: the first one watched).
pub fn watch_current() -> bool {
    match Handle::try_current() {
        Ok(handle) => watch(handle),
        Err(_) => false,
    }
}

/// Watches `handle`'s runtime; see [`watch_current`]. A current-thread runtime must be
/// watched from the thread that drives it.
pub fn watch(handle: Handle) -> bool {
    let key = match handle.runtime_flavor() {
        RuntimeFlavor::CurrentThread => Key::CurrentThread(std::thread::current().id()),
        _ => Key::MultiThread,
    };
    let mut watched = watched();
    if watched.iter().any(|w| w.key == key) {
        return false;
    }
    let now = Instant::now();
    let workers = (0..handle.metrics().num_workers())
        .map(|_| WorkerWatch {
            busy: Duration::ZERO,
            park_unpark: 0,
            progressed_at: now,
            stalled: Duration::ZERO,
            stalled_total: Duration::ZERO,
        })
        .collect();
    watched.push(Watched {
        handle,
        key,
        workers,
    });
    drop(watched);
    watchdog::start();
    true
}

/// Handles of the watched runtimes, in the order they were watched (for a task dump).
pub fn watched_runtimes() -> Vec<Handle> {
    watched().iter().map(|w| w.handle.clone()).collect()
}

impl WorkerWatch {
    /// Takes in what tokio publishes now for this worker (`busy`, `park_unpark`; an odd
    /// `park_unpark` means parked) at `now`.
    pub(crate) fn observe(&mut self, busy: Duration, park_unpark: u64, now: Instant) {
        let parked = park_unpark % 2 == 1;
        if parked || busy != self.busy || park_unpark != self.park_unpark {
            self.busy = busy;
            self.park_unpark = park_unpark;
            self.progressed_at = now;
            self.stalled = Duration::ZERO;
            return;
        }
        let stalled = now.saturating_duration_since(self.progressed_at);
        if stalled >= STALL_THRESHOLD {
            // The whole stall counts once it crosses the threshold, then each tick adds its share.
            self.stalled_total += stalled - self.stalled;
            self.stalled = stalled;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn worker(now: Instant) -> WorkerWatch {
        WorkerWatch {
            busy: Duration::ZERO,
            park_unpark: 0,
            progressed_at: now,
            stalled: Duration::ZERO,
            stalled_total: Duration::ZERO,
        }
    }

    #[test]
    fn an_active_worker_that_publishes_nothing_for_the_threshold_is_stalled_until_it_does() {
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        let mut w = worker(t0);
        w.observe(Duration::from_millis(5), 2, ms(10)); // progress
        w.observe(Duration::from_millis(5), 2, ms(60)); // 50 ms: below the threshold
        assert_eq!(w.stalled, Duration::ZERO);
        w.observe(Duration::from_millis(5), 2, ms(310));
        assert_eq!(w.stalled, Duration::from_millis(300));
        assert_eq!(w.stalled_total, Duration::from_millis(300));
        w.observe(Duration::from_millis(5), 2, ms(510));
        assert_eq!(w.stalled, Duration::from_millis(500));
        assert_eq!(w.stalled_total, Duration::from_millis(500));
        w.observe(Duration::from_millis(505), 3, ms(530)); // the poll ended; it parked
        assert_eq!(w.stalled, Duration::ZERO);
        assert_eq!(w.stalled_total, Duration::from_millis(500));
    }

    fn tokio_lines(registry: &prometheus::Registry) -> Vec<String> {
        let out = crate::MetricsEncoder::new(registry.clone())
            .encode(crate::Format::Text, None)
            .unwrap();
        String::from_utf8(out.body)
            .unwrap()
            .lines()
            .filter(|l| l.starts_with("tokio_"))
            .map(str::to_owned)
            .collect()
    }

    #[test]
    fn a_watched_runtime_is_on_every_registry_once_and_counts_its_tasks() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(3)
            .enable_time()
            .build()
            .unwrap();
        let _ = rt.block_on(async { watch_current() });
        // Watched once per process: a second watch of a multi-thread runtime is refused.
        assert!(!watch(rt.handle().clone()));
        let shared = prometheus::Registry::new();
        for service in ["a", "b"] {
            crate::HttpMetrics::builder(service)
                .registry(shared.clone())
                .build()
                .unwrap();
        }
        let off = crate::HttpMetrics::builder("c")
            .runtime_metrics(false)
            .build()
            .unwrap();
        assert!(tokio_lines(off.registry()).is_empty());
        let tasks: Vec<_> = (0..7)
            .map(|_| rt.spawn(async { tokio::time::sleep(Duration::from_secs(60)).await }))
            .collect();
        let lines = tokio_lines(&shared);
        assert!(
            lines.contains(&"tokio_alive_tasks 7".to_owned()),
            "{lines:?}"
        );
        assert!(lines.contains(&"tokio_workers 3".to_owned()), "{lines:?}");
        let busy = lines
            .iter()
            .filter(|l| l.starts_with("tokio_worker_busy_seconds_total{worker="))
            .count();
        assert_eq!(busy, 3, "one per worker, once: {lines:?}");
        tasks.iter().for_each(|t| t.abort());
    }

    #[test]
    fn a_parked_worker_is_never_stalled() {
        let t0 = Instant::now();
        let mut w = worker(t0);
        for n in 1..100 {
            w.observe(Duration::ZERO, 1, t0 + Duration::from_millis(n * 20));
        }
        assert_eq!(w.stalled_total, Duration::ZERO);
    }
}
