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
//! Which runtimes: every runtime [`watch`] is given (or [`watch_current`] is called in), from
//! then until it shuts down; once each, known by its [`tokio::runtime::Id`], whichever of its
//! threads watches it. Watching spawns one task on the runtime that waits forever; tokio drops
//! every task of a runtime when the runtime shuts down, and dropping that one ends the watch.
//! So a runtime that a test or set-up code built an axum layer in goes away with it, and the
//! runtime that serves requests is watched once the layer or `routes()` is built in it,
//! whatever runtimes came before; an actix-web worker that dies takes its runtime with it,
//! and the worker that replaces it is watched. Runtimes alive at the same time are all
//! watched, multi-thread ones too. That task is observe's: `tokio_alive_tasks` does not count
//! it, and a task dump leaves it out ([`watch_tasks`]).
//!
//! Labels: families that describe one worker thread carry `worker`, a number given when its
//! runtime is watched and kept until the runtime shuts down: the lowest numbers no watched
//! runtime holds (axum: `0..n` of its multi-thread runtime; actix-web: one per actix worker,
//! each a current-thread runtime). A runtime watched after another shut down takes the
//! numbers it freed, so restarted actix workers add no series; the reused series' counters
//! start again from 0, which Prometheus reads as a counter reset. Runtime-wide families are
//! summed over the watched runtimes; `tokio_spawned_tasks_total` keeps the count of the
//! runtimes that shut down, so that it never decreases.

mod collector;
mod watchdog;

use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::runtime::{Handle, Id};

pub(crate) use collector::RuntimeCollector;

/// A worker counts as stalled once it has run this long without reporting progress: tokio
/// publishes a worker's figures when it parks and after every 61 polls, so a worker that
/// publishes nothing for 100 ms is inside one poll (or 61 polls) that long.
pub const STALL_THRESHOLD: Duration = Duration::from_millis(100);

/// How often the watchdog looks at every worker.
pub(crate) const WATCHDOG_PERIOD: Duration = Duration::from_millis(20);

/// The watched runtimes, and what the families keep of those that shut down.
pub(crate) struct Watched {
    /// In the order they were watched.
    pub(crate) runtimes: Vec<WatchedRuntime>,
    /// `spawned_tasks_count` of the runtimes that shut down, observe's tasks left out: the
    /// sum over runtimes never decreases.
    #[cfg(tokio_unstable)]
    pub(crate) retired_spawned_tasks: u64,
}

pub(crate) struct WatchedRuntime {
    pub(crate) handle: Handle,
    id: Id,
    /// observe's task on the runtime, whose drop at shutdown ends the watch (see [`Retire`]);
    /// `None` for the moment between the watch and its spawn.
    pub(crate) watch_task: Option<tokio::task::Id>,
    /// One per tokio worker of this runtime.
    pub(crate) workers: Vec<WorkerWatch>,
}

/// What the watchdog knows about one worker thread.
#[derive(Debug, Clone)]
pub(crate) struct WorkerWatch {
    /// Its `worker` label.
    pub(crate) number: usize,
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

static WATCHED: Mutex<Watched> = Mutex::new(Watched {
    runtimes: Vec::new(),
    #[cfg(tokio_unstable)]
    retired_spawned_tasks: 0,
});

/// The watched runtimes; never poisoned (every critical section leaves the list whole).
///
/// Nothing that could drop a runtime, a task or a [`Handle`] may run while this is held: a
/// runtime's shutdown drops its watch task, whose [`Retire`] takes the lock on that thread.
pub(crate) fn watched() -> MutexGuard<'static, Watched> {
    WATCHED.lock().unwrap_or_else(|e| e.into_inner())
}

/// Watches the runtime this is called from, if any: its `tokio_*` metrics appear on every
/// registry observe built, and `/debug/pprof/tasks` dumps its tasks, until it shuts down.
/// `false` when there is no runtime here or it is already watched (once per runtime).
pub fn watch_current() -> bool {
    match Handle::try_current() {
        Ok(handle) => watch(handle),
        Err(_) => false,
    }
}

/// Watches `handle`'s runtime, from any thread; see [`watch_current`]. `false` when it is
/// already watched or has shut down.
pub fn watch(handle: Handle) -> bool {
    let id = handle.id();
    let mut list = watched();
    if list.runtimes.iter().any(|r| r.id == id) {
        return false;
    }
    let now = Instant::now();
    let workers = list
        .free_numbers(handle.metrics().num_workers())
        .into_iter()
        .map(|number| WorkerWatch::new(number, now))
        .collect();
    list.runtimes.push(WatchedRuntime {
        handle: handle.clone(),
        id,
        watch_task: None,
        workers,
    });
    drop(list);
    // Made here, not inside the task: a task that is never polled only drops what it
    // captured. Spawned with the list unlocked: on a runtime that has shut down already,
    // tokio drops the task at once, on this thread.
    let retire = Retire(id);
    let task = handle
        .spawn(async move {
            let _retire = retire;
            std::future::pending::<()>().await
        })
        .id();
    let mut list = watched();
    let Some(runtime) = list.runtimes.iter_mut().find(|r| r.id == id) else {
        return false; // it had shut down
    };
    runtime.watch_task = Some(task);
    drop(list);
    watchdog::start();
    true
}

/// Handles of the watched runtimes, in the order they were watched (for a task dump).
pub fn watched_runtimes() -> Vec<Handle> {
    watched()
        .runtimes
        .iter()
        .map(|r| r.handle.clone())
        .collect()
}

/// observe's own task on each watched runtime: it only waits for the runtime to shut down,
/// to end the watch then, so a task dump leaves it out.
pub fn watch_tasks() -> Vec<tokio::task::Id> {
    watched()
        .runtimes
        .iter()
        .filter_map(|r| r.watch_task)
        .collect()
}

/// Tasks alive in the watched runtimes, observe's own left out: what `tokio_alive_tasks`
/// reads.
pub fn alive_tasks() -> usize {
    watched()
        .runtimes
        .iter()
        .map(WatchedRuntime::alive_tasks)
        .sum()
}

/// Workers of the watched runtimes stalled right now, the ones whose
/// `tokio_worker_current_stall_seconds` is above 0 (see [`STALL_THRESHOLD`]).
pub fn stalled_workers() -> usize {
    watched()
        .runtimes
        .iter()
        .flat_map(|r| &r.workers)
        .filter(|w| !w.stalled.is_zero())
        .count()
}

impl Watched {
    /// The `count` lowest worker numbers no watched runtime holds.
    fn free_numbers(&self, count: usize) -> Vec<usize> {
        let mut held: Vec<usize> = self
            .runtimes
            .iter()
            .flat_map(|r| r.workers.iter().map(|w| w.number))
            .collect();
        held.sort_unstable();
        (0..)
            .filter(|n| held.binary_search(n).is_err())
            .take(count)
            .collect()
    }
}

impl WatchedRuntime {
    /// Its alive tasks but observe's.
    pub(crate) fn alive_tasks(&self) -> usize {
        let ours = usize::from(self.watch_task.is_some());
        self.handle.metrics().num_alive_tasks().saturating_sub(ours)
    }

    /// The tasks ever spawned on it but observe's.
    #[cfg(tokio_unstable)]
    pub(crate) fn spawned_tasks(&self) -> u64 {
        let ours = u64::from(self.watch_task.is_some());
        self.handle
            .metrics()
            .spawned_tasks_count()
            .saturating_sub(ours)
    }
}

/// Ends a runtime's watch when dropped. It lives in observe's task on that runtime, which
/// never finishes: tokio drops every task of a runtime when it shuts down (one never polled
/// too), on the thread that drops a current-thread runtime or on a multi-thread one's workers.
struct Retire(Id);

impl Drop for Retire {
    fn drop(&mut self) {
        let mut watched = watched();
        let Some(at) = watched.runtimes.iter().position(|r| r.id == self.0) else {
            return;
        };
        let retired = watched.runtimes.remove(at);
        #[cfg(tokio_unstable)]
        {
            watched.retired_spawned_tasks += retired.spawned_tasks();
        }
        drop(watched);
        // Its handle goes with the list unlocked.
        drop(retired);
    }
}

impl WorkerWatch {
    fn new(number: usize, now: Instant) -> Self {
        WorkerWatch {
            number,
            busy: Duration::ZERO,
            park_unpark: 0,
            progressed_at: now,
            stalled: Duration::ZERO,
            stalled_total: Duration::ZERO,
        }
    }

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
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    fn worker(now: Instant) -> WorkerWatch {
        WorkerWatch::new(0, now)
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

    /// Tests that watch runtimes run one after the other: the watched runtimes are the
    /// process's, and the test harness runs tests on parallel threads of one process.
    fn one_watching_test_at_a_time() -> MutexGuard<'static, ()> {
        static SERIAL: Mutex<()> = Mutex::new(());
        SERIAL.lock().unwrap_or_else(|e| e.into_inner())
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
        let _serial = one_watching_test_at_a_time();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(3)
            .enable_time()
            .build()
            .unwrap();
        assert!(rt.block_on(async { watch_current() }));
        // Watched once per runtime: a second watch of it is refused.
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

    /// The `worker` labels of one per-worker family in a scrape, in order.
    fn worker_numbers(registry: &prometheus::Registry) -> Vec<usize> {
        let mut numbers: Vec<usize> = tokio_lines(registry)
            .iter()
            .filter_map(|l| l.strip_prefix("tokio_worker_current_stall_seconds{worker=\""))
            .map(|l| l.split('"').next().unwrap().parse().unwrap())
            .collect();
        numbers.sort_unstable();
        numbers
    }

    /// The worker numbers `rt` was given.
    fn numbers_of(rt: &Handle) -> Vec<usize> {
        let watched = watched();
        let runtime = watched.runtimes.iter().find(|r| r.id == rt.id()).unwrap();
        runtime.workers.iter().map(|w| w.number).collect()
    }

    fn multi_thread(workers: usize) -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(workers)
            .build()
            .unwrap()
    }

    /// An actix-web worker's runtime: a current-thread runtime driven through a `LocalSet` on
    /// a thread of its own, watched from a task of that `LocalSet`, until `stop` is set.
    fn actix_like_worker(stop: Arc<AtomicBool>) -> std::thread::JoinHandle<()> {
        let (watched, watching) = std::sync::mpsc::channel();
        let worker = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .build()
                .unwrap();
            let local = tokio::task::LocalSet::new();
            local.block_on(&rt, async {
                let watch = tokio::task::spawn_local(async { watch_current() });
                watched.send(watch.await.unwrap()).unwrap();
                while !stop.load(Ordering::Relaxed) {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            });
        });
        assert!(watching.recv().unwrap(), "the worker's runtime watched");
        worker
    }

    #[test]
    fn a_runtime_that_shuts_down_leaves_the_families_and_a_later_one_takes_its_worker_numbers() {
        let _serial = one_watching_test_at_a_time();
        let metrics = crate::HttpMetrics::new("retire");
        let first = multi_thread(2);
        assert!(first.block_on(async { watch_current() }));
        let stop = Arc::new(AtomicBool::new(false));
        let actix_worker = actix_like_worker(stop.clone());
        assert_eq!(worker_numbers(metrics.registry()), [0, 1, 2]);

        // Its workers' last figures stay frozen: before, the watchdog saw them as stalled
        // for ever after, a second more each second.
        drop(first);
        watchdog::tick(Instant::now() + Duration::from_secs(1));
        assert_eq!(worker_numbers(metrics.registry()), [2]);
        let lines = tokio_lines(metrics.registry());
        assert!(lines.contains(&"tokio_workers 1".to_owned()), "{lines:?}");

        // A multi-thread runtime watched later is watched, with the lowest free numbers.
        let second = multi_thread(3);
        assert!(second.block_on(async { watch_current() }));
        assert_eq!(numbers_of(second.handle()), [0, 1, 3]);
        assert_eq!(worker_numbers(metrics.registry()), [0, 1, 2, 3]);

        // The actix worker ends; one that replaces it takes its number. Its runtime's watch
        // task is never polled (nothing drives it): tokio drops it at shutdown all the same.
        stop.store(true, Ordering::Relaxed);
        actix_worker.join().unwrap();
        assert_eq!(worker_numbers(metrics.registry()), [0, 1, 3]);
        let replacement = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        assert!(watch(replacement.handle().clone()));
        assert_eq!(numbers_of(replacement.handle()), [2]);
        drop(replacement);
        drop(second);
        assert!(tokio_lines(metrics.registry()).is_empty());
        assert!(watch_tasks().is_empty());
    }

    #[test]
    fn observes_own_task_is_not_counted_and_a_runtime_is_watched_once_from_any_thread() {
        let _serial = one_watching_test_at_a_time();
        let metrics = crate::HttpMetrics::new("once");
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(async {
            assert!(watch_current());
            // A blocking thread of the runtime (spawn_blocking, actix's web::block) watches
            // the same runtime.
            assert!(!tokio::task::spawn_blocking(watch_current).await.unwrap());
        });
        assert_eq!(rt.metrics().num_alive_tasks(), 1, "observe's watch task");
        assert_eq!(watch_tasks().len(), 1);
        assert_eq!(alive_tasks(), 0);
        let lines = tokio_lines(metrics.registry());
        assert!(
            lines.contains(&"tokio_alive_tasks 0".to_owned()),
            "{lines:?}"
        );
        assert_eq!(worker_numbers(metrics.registry()), [0]);
    }

    #[test]
    fn a_worker_blocked_in_a_task_counts_as_stalled_while_it_is() {
        let _serial = one_watching_test_at_a_time();
        let rt = multi_thread(2);
        assert!(rt.block_on(async { watch_current() }));
        let blocked = rt.spawn(async { std::thread::sleep(Duration::from_millis(600)) });
        let stalled = (0..250).find_map(|_| {
            std::thread::sleep(Duration::from_millis(2));
            Some(stalled_workers()).filter(|n| *n > 0)
        });
        assert_eq!(stalled, Some(1));
        rt.block_on(blocked).unwrap();
        let ended = (0..250).any(|_| {
            std::thread::sleep(Duration::from_millis(2));
            stalled_workers() == 0
        });
        assert!(ended, "the stall ends once the worker parks");
    }

    #[cfg(tokio_unstable)]
    #[test]
    fn spawned_tasks_total_keeps_the_tasks_of_runtimes_that_shut_down() {
        let _serial = one_watching_test_at_a_time();
        let metrics = crate::HttpMetrics::new("spawned");
        let spawned = || {
            let lines = tokio_lines(metrics.registry());
            let line = lines
                .iter()
                .find_map(|l| l.strip_prefix("tokio_spawned_tasks_total "))
                .unwrap_or_else(|| panic!("{lines:?}"));
            line.parse::<f64>().unwrap()
        };
        let current_thread = || {
            tokio::runtime::Builder::new_current_thread()
                .build()
                .unwrap()
        };
        let (first, second) = (current_thread(), current_thread());
        assert!(watch(first.handle().clone()) && watch(second.handle().clone()));
        let before = spawned();
        first.block_on(async {
            for _ in 0..5 {
                tokio::spawn(async {}).await.unwrap();
            }
        });
        assert_eq!(spawned(), before + 5.0);
        drop(first);
        assert_eq!(spawned(), before + 5.0, "never decreases");
        second.block_on(async { tokio::spawn(async {}).await.unwrap() });
        assert_eq!(spawned(), before + 6.0);
    }
}
