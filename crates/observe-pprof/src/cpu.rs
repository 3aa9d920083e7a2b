use std::collections::HashMap;
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use flate2::write::GzEncoder;
use flate2::Compression;
use pprof::protos::Message;
use pprof::{Frames, ProfilerGuardBuilder, Report};

use crate::error::PprofError;
use crate::params::ProfileParams;

/// pprof-rs samples with one process-wide `SIGPROF` timer: one profile at a time, whoever asks.
static IN_USE: AtomicBool = AtomicBool::new(false);

/// How often a running profile looks for a client that went away.
const CANCEL_POLL: Duration = Duration::from_millis(25);

/// Unwinding from inside these libraries can deadlock (the signal may land while the thread
/// holds the loader or unwinder lock): samples there are dropped, as pprof-rs recommends.
const BLOCKLIST: [&str; 4] = ["libc", "libgcc", "pthread", "vdso"];

/// The process's CPU profiler: at most one profile runs at a time.
///
/// ```no_run
/// use std::sync::atomic::AtomicBool;
/// use observe_pprof::{CpuProfiler, ProfileParams};
///
/// let params = ProfileParams::parse(Some("seconds=5"), 60)?;
/// let profiler = CpuProfiler::acquire()?; // 409 while another profile runs
/// let profile = profiler.record(params, &AtomicBool::new(false))?; // blocks 5 s
/// let gzipped_protobuf = profile.to_pprof()?;
/// # Ok::<(), observe_pprof::PprofError>(())
/// ```
#[derive(Debug)]
pub struct CpuProfiler {
    _private: (),
}

impl CpuProfiler {
    /// Takes the process's profiler, or [`PprofError::Busy`] while another profile runs.
    /// Dropping it gives it back.
    pub fn acquire() -> Result<Self, PprofError> {
        IN_USE
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .map(|_| CpuProfiler { _private: () })
            .map_err(|_| PprofError::Busy)
    }

    /// Samples every thread of the process for `params.seconds()` at `params.frequency()`,
    /// blocking the calling thread; ends early with [`PprofError::Cancelled`] once `cancel`
    /// is set. Call it off the async workers.
    pub fn record(
        self,
        params: ProfileParams,
        cancel: &AtomicBool,
    ) -> Result<CpuProfile, PprofError> {
        let frequency = params.frequency() as i32;
        let guard = ProfilerGuardBuilder::default()
            .frequency(frequency)
            .blocklist(&BLOCKLIST)
            .build()
            .map_err(|e| match e {
                // Someone else in the process drives pprof-rs directly.
                pprof::Error::Running => PprofError::Busy,
                e => PprofError::Sampler(e.to_string()),
            })?;
        let deadline = Instant::now() + params.duration();
        loop {
            if cancel.load(Ordering::Relaxed) {
                return Err(PprofError::Cancelled);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            std::thread::sleep(left.min(CANCEL_POLL));
        }
        // Copy the raw stacks, stop the timer, and only then symbolize: resolving symbols
        // is the slow part and should not be sampled into the profile itself.
        let unresolved = guard
            .report()
            .build_unresolved()
            .map_err(|e| PprofError::Sampler(e.to_string()))?;
        drop(guard);
        let mut data: HashMap<Frames, isize> = HashMap::with_capacity(unresolved.data.len());
        for (frames, count) in unresolved.data {
            let mut frames = Frames::from(frames);
            strip_sampler_frames(&mut frames);
            *data.entry(frames).or_default() += count;
        }
        Ok(CpuProfile {
            report: Report {
                data,
                timing: unresolved.timing,
            },
            params,
        })
    }
}

impl CpuProfile {
    fn empty_flamegraph(&self) -> Vec<u8> {
        format!(
            r#"<?xml version="1.0" standalone="no"?>
<svg version="1.1" width="1200" height="120" xmlns="http://www.w3.org/2000/svg"><rect x="0" y="0" width="100%" height="100%" fill="rgb(246,248,250)"/><text x="600" y="50" font-size="17" font-family="Verdana" text-anchor="middle">CPU profile: {} s at {} Hz, no samples</text><text x="600" y="80" font-size="13" font-family="Verdana" text-anchor="middle" fill="rgb(89,99,110)">The process used no measurable CPU while it was profiled.</text></svg>
"#,
            self.params.seconds(),
            self.params.frequency()
        )
        .into_bytes()
    }
}

/// pprof-rs drops its signal handler's frame, but without inlining (debug builds) the unwinder's
/// own frames sit above it and would take every sample's "flat" time.
fn strip_sampler_frames(frames: &mut Frames) {
    let sampler = frames
        .frames
        .iter()
        .take_while(|symbols| {
            symbols.iter().any(|s| {
                let name = s.name();
                name.starts_with("backtrace::") || name.contains("pprof::")
            })
        })
        .count();
    frames.frames.drain(..sampler);
}

impl Drop for CpuProfiler {
    fn drop(&mut self) {
        IN_USE.store(false, Ordering::Release);
    }
}

/// A finished CPU profile, symbolized.
pub struct CpuProfile {
    report: Report,
    params: ProfileParams,
}

impl std::fmt::Debug for CpuProfile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CpuProfile")
            .field("params", &self.params)
            .field("samples", &self.samples())
            .finish()
    }
}

impl CpuProfile {
    /// Samples taken (one per `1/frequency` s of CPU time on any thread).
    pub fn samples(&self) -> u64 {
        self.report.data.values().map(|&n| n.max(0) as u64).sum()
    }

    /// The gzipped pprof protobuf `go tool pprof` reads, symbols included.
    pub fn to_pprof(&self) -> Result<Vec<u8>, PprofError> {
        let profile = self
            .report
            .pprof()
            .map_err(|e| PprofError::Encode(e.to_string()))?;
        let raw = profile.encode_to_vec();
        let mut gz = GzEncoder::new(Vec::with_capacity(raw.len() / 3), Compression::default());
        gz.write_all(&raw)
            .and_then(|()| gz.finish())
            .map_err(|e| PprofError::Encode(e.to_string()))
    }

    /// An interactive SVG flame graph (click to zoom, Ctrl+F to search).
    pub fn to_flamegraph(&self) -> Result<Vec<u8>, PprofError> {
        if self.samples() == 0 {
            // inferno writes nothing for no stacks; an idle process still deserves a page.
            return Ok(self.empty_flamegraph());
        }
        let mut options = pprof::flamegraph::Options::default();
        options.title = format!(
            "CPU profile: {} s at {} Hz, {} samples",
            self.params.seconds(),
            self.params.frequency(),
            self.samples()
        );
        options.count_name = "samples".to_owned();
        let mut svg = Vec::with_capacity(64 * 1024);
        self.report
            .flamegraph_with_options(&mut svg, &mut options)
            .map_err(|e| PprofError::Encode(e.to_string()))?;
        Ok(svg)
    }
}
