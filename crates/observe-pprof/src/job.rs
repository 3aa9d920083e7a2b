//! A `/debug/pprof` request as [`Pprof::handle`](crate::Pprof::handle) leaves it: answered,
//! or blocking work for the adapter to run off its async workers.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use observe_core::adapter::Answer;

use crate::cpu::CpuProfiler;
use crate::params::ProfileParams;
use crate::{heap, response, tasks};

/// What [`Pprof::handle`](crate::Pprof::handle) made of a request: its answer, or the blocking work that gives it.
#[derive(Debug)]
#[must_use]
pub enum Handled {
    /// The answer, at once (the index, `cmdline`, any error, 409).
    Ready(Answer),
    /// Blocking work: run [`ProfileJob::run`] on a blocking thread.
    Blocking(ProfileJob),
}

/// A profile to take, off the async workers. For a CPU profile it already holds the process's
/// profiler, so a concurrent request has been answered 409.
#[derive(Debug)]
pub struct ProfileJob {
    pub(crate) work: Work,
    pub(crate) cancel: Arc<AtomicBool>,
}

#[derive(Debug)]
pub(crate) enum Work {
    Cpu {
        profiler: CpuProfiler,
        params: ProfileParams,
        flamegraph: bool,
    },
    Heap,
    /// Holds the CPU profiler too: one profiling operation at a time.
    Tasks {
        _profiler: CpuProfiler,
    },
}

/// Stops the [`ProfileJob`] it came from when dropped. Keep it in the request's future:
/// a client that disconnects drops the future, and the profiler is free again within ~25 ms.
#[derive(Debug)]
pub struct CancelOnDrop(Arc<AtomicBool>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

impl ProfileJob {
    /// A guard that stops this job when dropped (harmless once the job is done).
    pub fn cancel_on_drop(&self) -> CancelOnDrop {
        CancelOnDrop(self.cancel.clone())
    }

    /// Takes the profile and encodes it. Blocks for the profile's duration.
    pub fn run(self) -> Answer {
        let result = match self.work {
            Work::Cpu {
                profiler,
                params,
                flamegraph,
            } => profiler.record(params, &self.cancel).and_then(|profile| {
                if flamegraph {
                    profile
                        .to_flamegraph()
                        .map(|svg| Answer::ok("image/svg+xml", svg))
                } else {
                    profile
                        .to_pprof()
                        .map(|pb| response::attachment(pb, "profile"))
                }
            }),
            Work::Heap => heap::dump().map(|pb| response::attachment(pb, "heap")),
            Work::Tasks { _profiler } => tasks::dump(&self.cancel)
                .map(|text| Answer::ok(observe_core::adapter::TEXT_PLAIN, text)),
        };
        result.unwrap_or_else(Answer::from)
    }
}
