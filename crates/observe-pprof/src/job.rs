//! A `/debug/pprof` request as the endpoints plan it: answered at once, or a profile to take
//! off the async workers ([`ProfileJob`]).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use observe_core::adapter::{BlockingWork, EndpointResponse, TEXT_PLAIN};

use crate::cpu::CpuProfiler;
use crate::heap::MemoryProfile;
use crate::params::{HeapParams, ProfileParams};
use crate::{heap, response, tasks};

/// What a request comes to once checked: its response, or the profile that gives it.
#[derive(Debug)]
pub(crate) enum Plan {
    /// The response, at once (the index, `cmdline`, any error, 409).
    Respond(EndpointResponse),
    /// A profile to take on a blocking thread.
    Profile(ProfileJob),
}

/// A profile to take, off the async workers. For a CPU profile it already holds the process's
/// profiler, so a concurrent request has been answered 409.
#[derive(Debug)]
pub(crate) struct ProfileJob {
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
    /// A heap or allocation profile (the allocator's samples).
    Memory {
        which: MemoryProfile,
        params: HeapParams,
    },
    /// Holds the CPU profiler too: one profiling operation at a time.
    Tasks { _profiler: CpuProfiler },
}

/// Stops the [`ProfileJob`] it came from when dropped. Kept in the request's future: a client
/// that disconnects drops the future, and the profiler is free again within ~25 ms.
#[derive(Debug)]
pub(crate) struct CancelOnDrop(Arc<AtomicBool>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

impl ProfileJob {
    /// A guard that stops this job when dropped (harmless once the job is done).
    pub(crate) fn cancel_on_drop(&self) -> CancelOnDrop {
        CancelOnDrop(self.cancel.clone())
    }
}

impl BlockingWork for ProfileJob {
    /// Takes the profile and encodes it. Blocks for the profile's duration.
    fn run(self) -> EndpointResponse {
        let result = match self.work {
            Work::Cpu {
                profiler,
                params,
                flamegraph,
            } => profiler.record(params, &self.cancel).and_then(|profile| {
                if flamegraph {
                    profile
                        .to_flamegraph()
                        .map(|svg| EndpointResponse::ok("image/svg+xml", svg))
                } else {
                    profile
                        .to_pprof()
                        .map(|pb| response::attachment(pb, "profile"))
                }
            }),
            Work::Memory { which, params } => heap::profile(which, &params, &self.cancel)
                .map(|pb| response::attachment(pb, which.name())),
            Work::Tasks { _profiler } => {
                tasks::dump(&self.cancel).map(|text| EndpointResponse::ok(TEXT_PLAIN, text))
            }
        };
        result.unwrap_or_else(EndpointResponse::from)
    }
}
