//! `/debug/pprof/tasks`: every tokio task's await-point backtrace as text, the Rust answer to
//! Go's `goroutine?debug=2`. tokio can only trace tasks in a binary built with
//! `RUSTFLAGS="--cfg tokio_unstable"` and tokio's `taskdump` feature (observe's `taskdump`
//! feature turns it on), on Linux; any other build answers `501` saying so.

use std::time::Duration;

use crate::error::PprofError;

/// How long a dump waits for the runtimes' answers. A multi-thread runtime traces once every
/// worker has reached a safe point; a worker stuck in a blocking call never does.
pub const TASK_DUMP_TIMEOUT: Duration = Duration::from_secs(10);

/// The dump text stops after the task that reaches this size; the tasks beyond it are
/// counted, not shown.
pub const MAX_TASK_DUMP_BYTES: usize = 16 * 1024 * 1024;

/// Whether this binary can dump its tasks: `Err` says how to build one that can.
pub(crate) fn availability() -> Result<(), PprofError> {
    if cfg!(all(
        tokio_unstable,
        feature = "taskdump",
        all(
            target_os = "linux",
            any(target_arch = "x86_64", target_arch = "aarch64")
        )
    )) {
        return Ok(());
    }
    let missing = [
        (!cfg!(tokio_unstable), "RUSTFLAGS=\"--cfg tokio_unstable\""),
        (
            !cfg!(feature = "taskdump"),
            "the `taskdump` feature of observe-tower / observe-actix (observe-pprof/taskdump)",
        ),
        (
            !cfg!(all(
                target_os = "linux",
                any(target_arch = "x86_64", target_arch = "aarch64")
            )),
            "Linux on x86_64 or aarch64",
        ),
    ];
    let missing: Vec<&str> = missing
        .iter()
        .filter(|(m, _)| *m)
        .map(|(_, what)| *what)
        .collect();
    Err(PprofError::TasksUnavailable(format!(
        "task dumps need a binary built with RUSTFLAGS=\"--cfg tokio_unstable\" and the `taskdump` feature, on Linux x86_64 or aarch64; this one lacks: {}",
        missing.join(", ")
    )))
}

#[cfg(all(
    tokio_unstable,
    feature = "taskdump",
    target_os = "linux",
    any(target_arch = "x86_64", target_arch = "aarch64")
))]
pub(crate) use traced::{alive, dump};

/// This build cannot trace tasks; [`availability`] says why.
#[cfg(not(all(
    tokio_unstable,
    feature = "taskdump",
    target_os = "linux",
    any(target_arch = "x86_64", target_arch = "aarch64")
)))]
pub(crate) fn dump(_cancel: &std::sync::atomic::AtomicBool) -> Result<Vec<u8>, PprofError> {
    availability().map(|()| Vec::new())
}

/// This build cannot trace tasks: a dump would hold none.
#[cfg(not(all(
    tokio_unstable,
    feature = "taskdump",
    target_os = "linux",
    any(target_arch = "x86_64", target_arch = "aarch64")
)))]
pub(crate) fn alive() -> usize {
    0
}

/// The dump, in the builds that can take one.
#[cfg(all(
    tokio_unstable,
    feature = "taskdump",
    target_os = "linux",
    any(target_arch = "x86_64", target_arch = "aarch64")
))]
mod traced {
    use std::fmt::Write;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::mpsc::{self, RecvTimeoutError};
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use tokio::runtime::{Dump, Handle, RuntimeFlavor};
    use tokio::task::Id;

    use super::{MAX_TASK_DUMP_BYTES, TASK_DUMP_TIMEOUT};
    use crate::error::PprofError;

    /// The tasks a dump would hold now: those of the watched runtimes (observe's left out), or
    /// when none is watched, of the runtime this thread belongs to.
    pub(crate) fn alive() -> usize {
        if observe_core::runtime::watched_runtimes().is_empty() {
            return Handle::try_current().map_or(0, |h| h.metrics().num_alive_tasks());
        }
        observe_core::runtime::alive_tasks()
    }

    /// Dumps every watched runtime (or, when none is watched, the one this thread belongs to)
    /// as text. Blocks up to [`TASK_DUMP_TIMEOUT`]; stops early once `cancel` is set.
    pub(crate) fn dump(cancel: &AtomicBool) -> Result<Vec<u8>, PprofError> {
        let started = Instant::now();
        let outstanding = Outstanding::claim()?;
        let mut runtimes = observe_core::runtime::watched_runtimes();
        if runtimes.is_empty() {
            runtimes.extend(Handle::try_current().ok());
        }
        if runtimes.is_empty() {
            return Err(PprofError::TasksUnavailable(
                "no tokio runtime to dump: serve /debug/pprof/tasks from a tokio runtime"
                    .to_owned(),
            ));
        }
        // A multi-thread runtime traces once every worker has reached a safe point, and a
        // current-thread one once its worker runs the dump's task: with a stalled worker the
        // dump would be outstanding for as long as the stall.
        let stalled = observe_core::runtime::stalled_workers();
        if stalled > 0 {
            return Err(PprofError::TaskDumpTimeout(format!(
                "{stalled} worker thread(s) have been running one task for 0.1 s or more (see tokio_worker_current_stall_seconds on /metrics); a task dump waits for every worker, so none was taken: retry when the stall has ended"
            )));
        }
        // tokio's multi-thread dump first moves every task queued on the workers into one
        // bounded queue, and spins forever once more than 128 are queued (tokio 1.54's
        // `Shared::steal_all`): wait for the queues to drain below that, or refuse.
        let settled = started + QUEUE_SETTLE_TIMEOUT;
        let queued = loop {
            let queued = runtimes.iter().map(queued_on_workers).max().unwrap_or(0);
            if queued <= MAX_QUEUED_FOR_A_DUMP || Instant::now() >= settled {
                break queued;
            }
            if cancel.load(Ordering::Relaxed) {
                return Err(PprofError::Cancelled);
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        if queued > MAX_QUEUED_FOR_A_DUMP {
            return Err(PprofError::TaskDumpTimeout(format!(
                "{queued} tasks are queued to run; tokio's task dump can hang a multi-thread runtime with more than 128 queued, so none was taken: retry when the service is less busy"
            )));
        }
        let (answers, answered) = mpsc::channel();
        // The dump's own tasks, left out of it with the runtimes' watch tasks.
        let mut ours: Vec<Id> = Vec::with_capacity(runtimes.len());
        for (index, handle) in runtimes.iter().enumerate() {
            let answers = answers.clone();
            let outstanding = outstanding.clone();
            // A current-thread runtime can only be traced from a task of its own; a multi-thread
            // one traces from a thread tokio starts for the purpose.
            let task = handle.spawn(async move {
                let dump = Handle::current().dump().await;
                drop(outstanding);
                let _ = answers.send((index, dump));
            });
            ours.push(task.id());
        }
        drop(answers);
        drop(outstanding);
        let deadline = started + TASK_DUMP_TIMEOUT;
        let mut dumps: Vec<Option<Dump>> = runtimes.iter().map(|_| None).collect();
        let mut waiting = runtimes.len();
        while waiting > 0 {
            if cancel.load(Ordering::Relaxed) {
                return Err(PprofError::Cancelled);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            match answered.recv_timeout(left.min(Duration::from_millis(25))) {
                Ok((index, dump)) => {
                    dumps[index] = Some(dump);
                    waiting -= 1;
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
        }
        if waiting == runtimes.len() {
            return Err(PprofError::TaskDumpTimeout(format!(
                "no tokio runtime answered the task dump within {} s: a worker thread is blocked (see tokio_worker_current_stall_seconds on /metrics); the dump waits for it, and another is refused until it ends",
                TASK_DUMP_TIMEOUT.as_secs()
            )));
        }
        let traced = started.elapsed();
        ours.extend(observe_core::runtime::watch_tasks());
        let total: usize = dumps
            .iter()
            .flatten()
            .map(|d| listed(d, &ours).count())
            .sum();
        let mut out = String::new();
        let _ = writeln!(
            out,
            "tokio task dump: {} runtime(s), {total} task(s), traced in {:.3} s\n\
             Each task's await points, outermost first. Tasks spawned on an actix-web worker's LocalSet \
             (actix_web::rt::spawn) are not traced by tokio.",
            runtimes.len(),
            traced.as_secs_f64(),
        );
        let mut shown = 0usize;
        let mut truncated = false;
        for (index, (handle, dump)) in runtimes.iter().zip(&dumps).enumerate() {
            let flavor = match handle.runtime_flavor() {
                RuntimeFlavor::CurrentThread => "current-thread",
                _ => "multi-thread",
            };
            let Some(dump) = dump else {
                let _ = writeln!(
                    out,
                    "\nruntime {index} ({flavor}): no answer within {} s, a worker is blocked (the dump waits for it, and another is refused until it ends)",
                    TASK_DUMP_TIMEOUT.as_secs()
                );
                continue;
            };
            let tasks = listed(dump, &ours).count();
            let _ = writeln!(out, "\nruntime {index} ({flavor}): {tasks} task(s)");
            for task in listed(dump, &ours) {
                if truncated || out.len() >= MAX_TASK_DUMP_BYTES {
                    truncated = true;
                    break;
                }
                let _ = writeln!(out, "\ntask {}:\n{}", task.id(), task.trace());
                shown += 1;
            }
        }
        if truncated {
            let _ = writeln!(
                out,
                "\n[observe: {} more task(s) not shown: the dump is capped at {} MiB]",
                total - shown,
                MAX_TASK_DUMP_BYTES / (1024 * 1024)
            );
        }
        Ok(out.into_bytes())
    }

    /// The tasks of `dump` a user sees: all but observe's own (`ours`: the dump's, and those
    /// that only wait for their runtime to shut down, see `observe_core::runtime`).
    fn listed<'a>(
        dump: &'a Dump,
        ours: &'a [Id],
    ) -> impl Iterator<Item = &'a tokio::runtime::dump::Task> {
        dump.tasks()
            .iter()
            .filter(|task| !ours.contains(&task.id()))
    }

    /// Set while a dump's tasks are out on the runtimes. A multi-thread runtime's dump that
    /// waits for a blocked worker is not idle: tokio's trace request keeps every healthy
    /// worker waiting up to 250 ms at each of its checks, and a second request spins on a
    /// thread of its own until the first is done. A dump that gave up waiting leaves its tasks
    /// behind, so the next one is refused until they end.
    static OUTSTANDING: AtomicBool = AtomicBool::new(false);

    /// A dump's hold on [`OUTSTANDING`], shared with the tasks it spawns: the last of them to
    /// finish clears it, and so does tokio dropping them when their runtime shuts down.
    struct Outstanding(());

    impl Outstanding {
        fn claim() -> Result<Arc<Outstanding>, PprofError> {
            OUTSTANDING
                .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
                .map(|_| Arc::new(Outstanding(())))
                .map_err(|_| {
                    PprofError::TaskDumpTimeout(
                        "a previous task dump is still waiting for a blocked worker (see tokio_worker_current_stall_seconds on /metrics); another would only add to the wait: retry once it has ended".to_owned(),
                    )
                })
        }
    }

    impl Drop for Outstanding {
        fn drop(&mut self) {
            OUTSTANDING.store(false, Ordering::Release);
        }
    }

    /// Tasks queued to run on a multi-thread runtime: on its workers' local queues and on the
    /// global queue they refill those from (a current-thread runtime traces its own queue in
    /// place: 0).
    fn queued_on_workers(handle: &tokio::runtime::Handle) -> usize {
        if handle.runtime_flavor() == tokio::runtime::RuntimeFlavor::CurrentThread {
            return 0;
        }
        let metrics = handle.metrics();
        let local: usize = (0..metrics.num_workers())
            .map(|worker| metrics.worker_local_queue_depth(worker))
            .sum();
        local + metrics.global_queue_depth()
    }

    /// The most tasks queued on a multi-thread runtime's workers a dump starts with: half of
    /// the 128 tokio's dump can gather, leaving room for tasks queued while it starts.
    const MAX_QUEUED_FOR_A_DUMP: usize = 64;

    /// How long a dump waits for the workers' queues to drain below [`MAX_QUEUED_FOR_A_DUMP`].
    const QUEUE_SETTLE_TIMEOUT: Duration = Duration::from_secs(2);

    #[cfg(test)]
    mod tests {
        use super::*;
        use crate::cpu::one_profiling_test_at_a_time;

        fn multi_thread() -> tokio::runtime::Runtime {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .build()
                .unwrap();
            assert!(rt.block_on(async { observe_core::runtime::watch_current() }));
            rt
        }

        /// Whether `done` holds within 2 s.
        fn within_2s(done: impl Fn() -> bool) -> bool {
            (0..1000).any(|_| {
                std::thread::sleep(Duration::from_millis(2));
                done()
            })
        }

        #[test]
        fn the_dump_lists_the_service_s_tasks_and_leaves_observes_own_out() {
            let _serial = one_profiling_test_at_a_time();
            let rt = multi_thread();
            let ours = observe_core::runtime::watch_tasks();
            assert_eq!(ours.len(), 1);
            for _ in 0..3 {
                rt.spawn(std::future::pending::<()>());
            }
            let text = String::from_utf8(dump(&AtomicBool::new(false)).unwrap()).unwrap();
            assert!(
                text.starts_with("tokio task dump: 1 runtime(s), 3 task(s)"),
                "{text}"
            );
            assert!(!text.contains(&format!("\ntask {}:", ours[0])), "{text}");
        }

        #[test]
        fn a_stalled_worker_refuses_the_dump_and_says_where_to_look() {
            let _serial = one_profiling_test_at_a_time();
            let rt = multi_thread();
            let blocked = rt.spawn(async { std::thread::sleep(Duration::from_millis(800)) });
            assert!(within_2s(|| observe_core::runtime::stalled_workers() > 0));
            let refused = dump(&AtomicBool::new(false)).unwrap_err();
            assert_eq!(refused.status(), 503);
            assert!(
                refused
                    .to_string()
                    .contains("see tokio_worker_current_stall_seconds on /metrics"),
                "{refused}"
            );
            rt.block_on(blocked).unwrap();
            // Refused before anything was asked of tokio: nothing is left waiting.
            assert!(within_2s(|| observe_core::runtime::stalled_workers() == 0));
            assert!(dump(&AtomicBool::new(false)).is_ok());
        }

        #[test]
        fn a_dump_still_waiting_for_a_runtime_refuses_the_next_until_its_task_ends() {
            let _serial = one_profiling_test_at_a_time();
            // A runtime nothing drives, as if its one worker were blocked: a dump's task waits
            // in its queue.
            let rt = tokio::runtime::Builder::new_current_thread()
                .build()
                .unwrap();
            let entered = rt.enter();
            // Cancelled: it returns at once and leaves its task behind.
            let gave_up = dump(&AtomicBool::new(true));
            assert!(matches!(gave_up, Err(PprofError::Cancelled)), "{gave_up:?}");
            let refused = dump(&AtomicBool::new(false)).unwrap_err();
            assert_eq!(refused.status(), 503);
            assert!(
                refused
                    .to_string()
                    .starts_with("a previous task dump is still waiting for a blocked worker"),
                "{refused}"
            );
            // tokio drops the waiting task with its runtime: the next dump gets past the check
            // (and finds no runtime here).
            drop(entered);
            drop(rt);
            let next = dump(&AtomicBool::new(false)).unwrap_err();
            assert!(matches!(next, PprofError::TasksUnavailable(_)), "{next}");
        }
    }
}
