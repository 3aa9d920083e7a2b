//! CPU profiles: one at a time on demand ([`CpuProfiler`]), taken from the process's one
//! sampler (`crate::sampler`), symbolized and encoded as pprof or a flame graph ([`CpuProfile`]).

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, UNIX_EPOCH};

use crate::error::PprofError;
use crate::labels;
use crate::params::ProfileParams;
use crate::proto::{self, ProfileBuilder};
use crate::sampler::{self, Clock, Window, MAX_FRAMES, MAX_STACKS};
use crate::symbols::{self, Symbols};

/// One on-demand CPU profile at a time, as Go allows: a second request is answered 409 while
/// one runs. Continuous profiling shares the sampler without taking this.
static IN_USE: AtomicBool = AtomicBool::new(false);

/// How often a running profile looks for a client that went away.
const CANCEL_POLL: Duration = Duration::from_millis(25);

/// The right to take the process's on-demand CPU profile: at most one at a time.
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
    /// Takes the process's on-demand profiler, or [`PprofError::Busy`] while another profile
    /// runs. Dropping it gives it back.
    pub fn acquire() -> Result<Self, PprofError> {
        IN_USE
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .map(|_| CpuProfiler { _private: () })
            .map_err(|_| PprofError::Busy)
    }

    /// Samples every thread of the process for `params.seconds()` at `params.frequency()`
    /// (or at the frequency continuous profiling already samples at), blocking the calling
    /// thread; ends early with [`PprofError::Cancelled`] once `cancel` is set. Call it off
    /// the async workers.
    ///
    /// Each thread is sampled on its own CPU clock. The kernel checks a thread's timer on its
    /// tick, so above the tick's rate one signal stands for several periods, and its sample
    /// counts them all: the profile's total is the CPU time used, whatever the frequency and
    /// the number of busy cores.
    pub fn record(
        self,
        params: ProfileParams,
        cancel: &AtomicBool,
    ) -> Result<CpuProfile, PprofError> {
        let subscription = sampler::subscribe(params.frequency())?;
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
        // The sampler stops (if nobody else samples) before symbolizing, the slow part,
        // which should not be sampled into the profile itself.
        let mut window = subscription.finish();
        let filter = params.labels();
        if filter.is_empty() {
            return Ok(CpuProfile::new(window));
        }
        window.retain_labels(|labels| filter.keeps(labels));
        let mut profile = CpuProfile::new(window);
        profile.filtered = Some(filter.describe());
        Ok(profile)
    }
}

impl Drop for CpuProfiler {
    fn drop(&mut self) {
        IN_USE.store(false, Ordering::Release);
    }
}

/// A finished CPU profile, symbolized.
pub struct CpuProfile {
    window: Window,
    symbols: Symbols,
    /// The label filters it was taken with, described for its comments.
    filtered: Option<String>,
}

impl std::fmt::Debug for CpuProfile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CpuProfile")
            .field("frequency", &self.window.frequency)
            .field("duration", &self.window.duration)
            .field("samples", &self.samples())
            .finish()
    }
}

/// Names of the samples a profile could not keep apart.
const OTHERS: &str = "[observe: stacks beyond the 20000 (or 1200000 frames) kept]";
const LOST: &str = "[observe: samples lost (the sampler fell behind, or no context)]";

impl CpuProfile {
    pub(crate) fn new(window: Window) -> Self {
        let addresses = window
            .each_stack()
            .flat_map(|(_, frames, _)| frames.iter().copied());
        let symbols = symbols::symbolize(addresses);
        CpuProfile {
            window,
            symbols,
            filtered: None,
        }
    }

    /// Sampling periods counted: one per `1/frequency` s of CPU time on any thread (a sample
    /// can stand for several, see [`CpuProfiler::record`]).
    pub fn samples(&self) -> u64 {
        self.window.samples() + self.window.lost
    }

    /// The sampling frequency, Hz.
    pub fn frequency(&self) -> u32 {
        self.window.frequency
    }

    /// How long the profile sampled.
    pub fn duration(&self) -> Duration {
        self.window.duration
    }

    /// The pprof protobuf, uncompressed.
    pub(crate) fn to_proto(&self) -> Vec<u8> {
        let period = 1_000_000_000 / i64::from(self.window.frequency.max(1));
        let mut profile = ProfileBuilder::new(
            &self.symbols,
            &[("samples", "count"), ("cpu", "nanoseconds")],
            ("cpu", "nanoseconds"),
            period,
        );
        let value = |n: u64| vec![n as i64, n as i64 * period];
        for (labels, stacks) in &self.window.stacks {
            let labels = labels.as_ref().map(labels::pairs).unwrap_or_default();
            for (stack, &n) in stacks {
                profile.sample(stack, value(n), &labels);
            }
        }
        for (name, n) in [(OTHERS, self.window.others), (LOST, self.window.lost)] {
            if n > 0 {
                profile.named_sample(name, value(n));
            }
        }
        for comment in self.comments() {
            profile.comment(&comment);
        }
        let started = self
            .window
            .started
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        profile.finish(
            started.as_nanos() as i64,
            self.window.duration.as_nanos() as i64,
        )
    }

    /// What the profile says of how it was taken (`go tool pprof -comments`): the clock, and
    /// what it could not count.
    pub(crate) fn comments(&self) -> Vec<String> {
        let w = &self.window;
        let mut comments = vec![match w.clock {
            Clock::PerThread => format!(
                "observe: sampled at {} Hz of each thread's own CPU time (per-thread timers)",
                w.frequency
            ),
            Clock::ProcessWide => format!(
                "observe: sampled at {} Hz of the process's CPU time by the process-wide timer \
                 (per-thread timers are not available here): beyond a few hundred samples a \
                 second in all, the kernel delivers fewer and the profile counts less CPU than \
                 was used",
                w.frequency
            ),
        }];
        if w.lost > 0 {
            comments.push(format!(
                "observe: {} samples lost (the sampler fell behind, or the signal had no context)",
                w.lost
            ));
        }
        if let Some(filtered) = &self.filtered {
            comments.push(filtered.clone());
        }
        if w.not_armed > 0 {
            comments.push(format!(
                "observe: {} threads got no timer of their own (sampled by the process-wide timer)",
                w.not_armed
            ));
        }
        comments
    }

    /// The gzipped pprof protobuf `go tool pprof` reads, symbols included.
    pub fn to_pprof(&self) -> Result<Vec<u8>, PprofError> {
        proto::gzip(&self.to_proto()).map_err(|e| PprofError::Encode(e.to_string()))
    }

    /// The stacks as folded lines (`outer;…;inner count`), inlined functions expanded.
    fn folded(&self) -> Vec<String> {
        let name = |f: usize| self.symbols.functions[f].name.replace(';', ":");
        let mut lines: Vec<String> = self
            .window
            .each_stack()
            .map(|(_, stack, n)| {
                let frames: Vec<String> = stack
                    .iter()
                    .rev()
                    .flat_map(|&a| self.symbols.frames(a).iter().rev())
                    .map(|frame| name(frame.function))
                    .collect();
                format!("{} {n}", frames.join(";"))
            })
            .collect();
        for (label, n) in [(OTHERS, self.window.others), (LOST, self.window.lost)] {
            if n > 0 {
                lines.push(format!("{label} {n}"));
            }
        }
        lines.sort_unstable();
        lines
    }

    /// An interactive SVG flame graph (click to zoom, Ctrl+F to search).
    pub fn to_flamegraph(&self) -> Result<Vec<u8>, PprofError> {
        let seconds = self.window.duration.as_secs_f64().round();
        if self.samples() == 0 {
            // inferno writes nothing for no stacks; an idle process still deserves a page.
            return Ok(empty_flamegraph(seconds, self.window.frequency));
        }
        let mut options = inferno::flamegraph::Options::default();
        options.title = format!(
            "CPU profile: {seconds} s at {} Hz, {} samples",
            self.window.frequency,
            self.samples()
        );
        options.count_name = "samples".to_owned();
        let lines = self.folded();
        let mut svg = Vec::with_capacity(64 * 1024);
        inferno::flamegraph::from_lines(&mut options, lines.iter().map(String::as_str), &mut svg)
            .map_err(|e| PprofError::Encode(e.to_string()))?;
        Ok(svg)
    }
}

fn empty_flamegraph(seconds: f64, frequency: u32) -> Vec<u8> {
    format!(
        r#"<?xml version="1.0" standalone="no"?>
<svg version="1.1" width="1200" height="120" xmlns="http://www.w3.org/2000/svg"><rect x="0" y="0" width="100%" height="100%" fill="rgb(246,248,250)"/><text x="600" y="50" font-size="17" font-family="Verdana" text-anchor="middle">CPU profile: {seconds} s at {frequency} Hz, no samples</text><text x="600" y="80" font-size="13" font-family="Verdana" text-anchor="middle" fill="rgb(89,99,110)">The process used no measurable CPU while it was profiled.</text></svg>
"#
    )
    .into_bytes()
}

const _: () = assert!(
    MAX_STACKS == 20_000 && MAX_FRAMES == 1_200_000,
    "OTHERS names the limits"
);

/// Tests that take the process's profiler run one after the other (the test harness runs
/// tests on parallel threads of one process).
#[cfg(test)]
pub(crate) fn one_profiling_test_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Seconds of CPU time the calling thread has used.
    fn thread_cpu_seconds() -> f64 {
        let mut now = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: `now` is a valid timespec to write into.
        #[allow(unsafe_code)]
        let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut now) };
        assert_eq!(rc, 0);
        now.tv_sec as f64 + now.tv_nsec as f64 / 1e9
    }

    /// Burns CPU until `stop` is set; returns the CPU seconds it got (the test shares the
    /// machine with others, so not necessarily a whole core).
    #[inline(never)]
    fn spin_for_the_cpu_profile_test(stop: &AtomicBool) -> f64 {
        let started = thread_cpu_seconds();
        let mut x = 1u64;
        while !stop.load(Ordering::Relaxed) {
            for _ in 0..1000 {
                x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
            }
        }
        std::hint::black_box(x);
        thread_cpu_seconds() - started
    }

    /// Recurses `depth` calls deep, then spins until `stop`.
    #[inline(never)]
    fn deep_then_spin(depth: usize, stop: &AtomicBool) -> f64 {
        if depth == 0 {
            return spin_for_the_cpu_profile_test(stop);
        }
        // Not a tail call: the frame stays on the stack.
        std::hint::black_box(deep_then_spin(depth - 1, stop)) + 0.0
    }

    #[test]
    fn a_stack_too_deep_keeps_both_ends_and_its_root() {
        let params = ProfileParams::parse(Some("seconds=1&frequency=250"), 60).unwrap();
        let _serial = one_profiling_test_at_a_time();
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let spinning = stop.clone();
        let spinner = std::thread::spawn(move || deep_then_spin(300, &spinning));
        let profile = CpuProfiler::acquire()
            .unwrap()
            .record(params, &AtomicBool::new(false))
            .unwrap();
        stop.store(true, Ordering::Relaxed);
        spinner.join().unwrap();
        let deep: Vec<&[usize]> = profile
            .window
            .each_stack()
            .map(|(_, frames, _)| frames)
            .filter(|s| s.contains(&sampler::TRUNCATED))
            .collect();
        assert!(!deep.is_empty(), "no truncated stack in {profile:?}");
        let root = |s: &[usize]| s[s.len() - 8..].to_vec();
        for stack in &deep {
            assert_eq!(stack.len(), sampler::MAX_DEPTH);
            assert_eq!(stack[sampler::INNER], sampler::TRUNCATED);
            // The outermost frames are the thread's own start, the same for every sample.
            assert_eq!(root(stack), root(deep[0]));
        }
        let folded = profile.folded();
        let line = folded
            .iter()
            .find(|l| l.contains("[observe: frames truncated]"))
            .expect("the marker is named");
        let frames: Vec<&str> = line.split(';').collect();
        let marker = frames
            .iter()
            .position(|f| f.contains("frames truncated"))
            .unwrap();
        assert!(frames[marker - 1].contains("deep_then_spin"), "{line}");
        assert!(frames[marker + 1].contains("deep_then_spin"), "{line}");
        assert!(line.contains("spin_for_the_cpu_profile_test"), "{line}");
    }

    #[test]
    fn a_profile_names_the_function_that_burned_the_cpu_in_every_format() {
        let params = ProfileParams::parse(Some("seconds=1&frequency=250"), 60).unwrap();
        let _serial = one_profiling_test_at_a_time();
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let spinning = stop.clone();
        let spinner = std::thread::spawn(move || spin_for_the_cpu_profile_test(&spinning));
        let profile = CpuProfiler::acquire()
            .unwrap()
            .record(params, &AtomicBool::new(false))
            .unwrap();
        stop.store(true, Ordering::Relaxed);
        let spun = spinner.join().unwrap();
        // 250 samples per CPU-second the spinner got (CPU time, not wall time): it began
        // before the profile and ended after, so the profile saw at most all of it.
        let expected = spun * 250.0;
        assert!(
            profile.samples() as f64 > 0.5 * expected,
            "{profile:?}, the spinner got {spun:.2} CPU-s"
        );
        let spinning: u64 = profile
            .folded()
            .iter()
            .filter(|l| l.contains("spin_for_the_cpu_profile_test"))
            .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
            .sum();
        assert!(
            spinning * 2 > profile.samples(),
            "{spinning} of {} samples in the spinning function",
            profile.samples()
        );
        let decoded =
            <proto::Profile as prost::Message>::decode(profile.to_proto().as_slice()).unwrap();
        assert_eq!(decoded.period, 4_000_000);
        assert!(decoded
            .string_table
            .iter()
            .any(|s| s.ends_with("spin_for_the_cpu_profile_test")));
        let svg = String::from_utf8(profile.to_flamegraph().unwrap()).unwrap();
        assert!(svg.contains("spin_for_the_cpu_profile_test"));
    }

    /// Seconds of CPU time this process has used.
    fn process_cpu_seconds() -> f64 {
        // SAFETY: a zeroed rusage is valid to write into.
        #[allow(unsafe_code)]
        let usage = unsafe {
            let mut usage: libc::rusage = std::mem::zeroed();
            assert_eq!(libc::getrusage(libc::RUSAGE_SELF, &mut usage), 0);
            usage
        };
        let seconds = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
        seconds(usage.ru_utime) + seconds(usage.ru_stime)
    }

    /// POSIX timers of this process (`/proc/self/timers`), and its resident memory in bytes.
    fn timers_and_rss() -> (usize, u64) {
        let timers = std::fs::read_to_string("/proc/self/timers")
            .map(|t| t.lines().filter(|l| l.starts_with("ID:")).count())
            .unwrap_or(0);
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let rss = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .unwrap()
            * 1024;
        (timers, rss)
    }

    /// Burns `seconds` of this thread's CPU time.
    #[inline(never)]
    fn burn(seconds: f64) {
        let until = thread_cpu_seconds() + seconds;
        let mut x = 1u64;
        while thread_cpu_seconds() < until {
            for _ in 0..1000 {
                x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
            }
        }
    }

    #[test]
    fn short_lived_threads_are_counted_and_take_their_timers_with_them() {
        let _serial = one_profiling_test_at_a_time();
        let (timers_before, rss_before) = timers_and_rss();
        // 1,000 threads that burn 2 ms each and exit, four alive at a time: most live less
        // than a rescan (the process-wide timer samples those), some get a timer of their
        // own and take it with them when they exit.
        let churn = std::thread::spawn(|| {
            for _ in 0..250 {
                let wave: Vec<_> = (0..4).map(|_| std::thread::spawn(|| burn(0.002))).collect();
                for thread in wave {
                    thread.join().unwrap();
                }
            }
        });
        // The sampler's own window, so that the CPU time compared is the sampled time's
        // (symbolizing, after it, is not sampled).
        let _profiler = CpuProfiler::acquire().unwrap();
        let before = process_cpu_seconds();
        let subscription = sampler::subscribe(99).unwrap();
        std::thread::sleep(Duration::from_secs(4));
        let window = subscription.finish();
        let used = process_cpu_seconds() - before;
        churn.join().unwrap();
        let started = Instant::now();
        let profile = CpuProfile::new(window);
        let counted = profile.samples() as f64 / 99.0;
        println!(
            "churn: process CPU {used:.3} s, profile {counted:.3} s, symbolized in {:.3} s",
            started.elapsed().as_secs_f64()
        );
        assert!(
            (0.9..=1.1).contains(&(counted / used)),
            "the profile counts {counted:.3} s of {used:.3} s"
        );
        let (timers, rss) = timers_and_rss();
        assert_eq!(timers, timers_before, "every thread's timer was deleted");
        assert!(
            rss < rss_before + 8 * 1024 * 1024,
            "resident memory {rss_before} -> {rss} bytes"
        );
    }
}
