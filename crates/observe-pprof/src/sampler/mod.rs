//! The process's one CPU sampler. A process has one `SIGPROF` handler; the timers that send it
//! (one per thread on its own CPU clock, the process-wide one for threads without: see
//! `timers.rs`) run while anyone wants CPU samples. Everyone who does (a
//! `/debug/pprof/profile` request, continuous profiling) subscribes here and gets every
//! sample taken while subscribed. The first subscriber starts the sampler at its frequency;
//! later ones share that frequency; the last one to leave stops it and frees everything it
//! used.
//!
//! Memory is bounded whatever the load and the profile's length: the [`Ring`] the signal
//! handler writes into (524 KiB while sampling), and per subscriber at most [`MAX_STACKS`]
//! distinct stacks of at most [`ring::MAX_DEPTH`] frames, [`MAX_FRAMES`] in all (samples of further stacks are counted,
//! not kept). A thread drains the ring every [`DRAIN_EVERY`] and looks for new threads to
//! give a timer every [`RESCAN_EVERY`].

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use observe_core::adapter::{RequestLabels, WantLabels};

use crate::error::PprofError;

mod ring;
#[cfg(target_os = "linux")]
mod signal;
#[cfg(target_os = "linux")]
mod timers;
pub(crate) mod unwind;

use ring::Ring;
#[cfg(test)]
pub(crate) use ring::INNER;
pub(crate) use ring::{MAX_DEPTH, TRUNCATED};
#[cfg(target_os = "linux")]
pub(crate) use timers::{per_thread_timers, Clock, PROCESS_TIMER_MAX_HZ};

/// Which clock samples were taken on, where there are no per-thread timers.
#[cfg(not(target_os = "linux"))]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Clock {
    /// The process-wide timer alone.
    ProcessWide,
}

/// How often the sampler's thread moves samples from the ring to the subscribers.
pub(crate) const DRAIN_EVERY: Duration = Duration::from_millis(20);

/// How often the sampler's thread gives threads that started meanwhile a timer of their own
/// (until then the process-wide timer samples them) and deletes those of threads that exited.
pub(crate) const RESCAN_EVERY: Duration = Duration::from_millis(100);

/// Distinct stacks one window keeps, and their frames in all; samples of further stacks are
/// counted in [`Window::others`]. At most ~10 MiB (20,000 stacks of 60 frames on average;
/// the examples' average under load is far below: `docs/performance.md`).
pub(crate) const MAX_STACKS: usize = 20_000;
pub(crate) const MAX_FRAMES: usize = 1_200_000;

/// Code where the signal handler does not unwind (it may hold the loader's or the unwinder's
/// lock): its samples keep only the interrupted function.
const BLOCKLIST: [&str; 5] = ["libc.so", "libc-", "libgcc", "pthread", "ld-linux"];

/// Samples gathered for one subscriber since it subscribed or last took them, in sampling
/// periods (a sample of a thread's own timer can stand for several: see `timers.rs`).
#[derive(Debug, Clone)]
pub(crate) struct Window {
    /// Periods per stack, innermost frame first, by the labels of the request they were
    /// taken for (`None`: no request's).
    pub(crate) stacks: HashMap<Option<RequestLabels>, HashMap<Box<[usize]>, u64>>,
    /// How many stacks `stacks` holds.
    kept: usize,
    /// The frames of those stacks, in all.
    frames: usize,
    /// Periods whose stack was not kept (beyond [`MAX_STACKS`] or [`MAX_FRAMES`]).
    pub(crate) others: u64,
    /// Periods the handler could not store (the drain fell behind).
    pub(crate) lost: u64,
    /// The sampling frequency, Hz.
    pub(crate) frequency: u32,
    /// The clock the samples were taken on.
    pub(crate) clock: Clock,
    /// Threads that got no timer of their own in this window (the process-wide timer sampled
    /// them, undercounting them when many threads are busy).
    pub(crate) not_armed: u64,
    /// When the window began (wall clock, for the profile's `time_nanos`).
    pub(crate) started: SystemTime,
    began: Instant,
    /// How long the window lasted; set when taken.
    pub(crate) duration: Duration,
}

impl Window {
    fn new(frequency: u32, clock: Clock) -> Self {
        Window {
            stacks: HashMap::new(),
            kept: 0,
            frames: 0,
            others: 0,
            lost: 0,
            frequency,
            clock,
            not_armed: 0,
            started: SystemTime::now(),
            began: Instant::now(),
            duration: Duration::ZERO,
        }
    }

    fn add(&mut self, stack: &[usize], weight: u32, labels: Option<RequestLabels>) {
        let weight = u64::from(weight);
        if let Some(n) = self.stacks.get_mut(&labels).and_then(|s| s.get_mut(stack)) {
            *n += weight;
        } else if self.kept < MAX_STACKS && self.frames + stack.len() <= MAX_FRAMES {
            self.kept += 1;
            self.frames += stack.len();
            self.stacks
                .entry(labels)
                .or_default()
                .insert(stack.into(), weight);
        } else {
            self.others += weight;
        }
    }

    /// Every kept stack: its labels, its frames (innermost first) and its periods.
    pub(crate) fn each_stack(
        &self,
    ) -> impl Iterator<Item = (Option<&RequestLabels>, &[usize], u64)> {
        self.stacks.iter().flat_map(|(labels, stacks)| {
            stacks
                .iter()
                .map(move |(frames, &n)| (labels.as_ref(), &frames[..], n))
        })
    }

    /// Keeps only the stacks whose labels `keep` accepts; the rest, and what was counted
    /// without a stack (lost, beyond the limits), leave the window.
    pub(crate) fn retain_labels(&mut self, mut keep: impl FnMut(Option<&RequestLabels>) -> bool) {
        self.stacks.retain(|labels, _| keep(labels.as_ref()));
        self.kept = self.stacks.values().map(HashMap::len).sum();
        self.others = 0;
        self.lost = 0;
    }

    /// Sampling periods in the window, kept or not.
    pub(crate) fn samples(&self) -> u64 {
        self.each_stack().map(|(_, _, n)| n).sum::<u64>() + self.others
    }
}

/// The running sampler: its ring, its timers, the subscribers' windows, the draining thread.
struct Running {
    ring: Arc<RingOwner>,
    #[cfg(target_os = "linux")]
    timers: timers::Timers,
    /// Tells this sampler's drain thread to exit (a new sampler may start before it has).
    stopped: Arc<AtomicBool>,
    frequency: u32,
    windows: Vec<Arc<Mutex<Window>>>,
    drainer: Option<JoinHandle<()>>,
    /// Ring counters already handed out as `lost`.
    lost_seen: u64,
    /// Asks the adapters for request labels while sampling.
    _labels: WantLabels,
    /// Threads not armed already handed out.
    not_armed_seen: u64,
}

/// Keeps the signal handler's target alive while the drain thread reads it.
struct RingOwner {
    #[cfg(target_os = "linux")]
    target: Arc<signal::Target>,
}

impl RingOwner {
    fn ring(&self) -> &Ring {
        #[cfg(target_os = "linux")]
        return &self.target.ring;
        #[cfg(not(target_os = "linux"))]
        unreachable!("the sampler never starts on this platform")
    }
}

static SAMPLER: Mutex<Option<Running>> = Mutex::new(None);

fn sampler() -> MutexGuard<'static, Option<Running>> {
    SAMPLER.lock().unwrap_or_else(|e| e.into_inner())
}

/// A subscriber's claim on the sampler; dropping it unsubscribes (the last one stops it).
#[derive(Debug)]
pub(crate) struct Subscription {
    window: Arc<Mutex<Window>>,
}

/// `Ok` when this process's timers can deliver `frequency` samples a second of CPU time: any
/// frequency with per-thread timers, at most [`PROCESS_TIMER_MAX_HZ`] with the process-wide
/// timer alone (more would silently count less CPU than was used).
#[cfg(target_os = "linux")]
pub(crate) fn check_frequency(frequency: u32) -> Result<(), PprofError> {
    match per_thread_timers() {
        Err(why) if frequency > PROCESS_TIMER_MAX_HZ => Err(PprofError::FrequencyTooHigh {
            asked: frequency,
            max: PROCESS_TIMER_MAX_HZ,
            why: why.to_string(),
        }),
        _ => Ok(()),
    }
}

/// Without Linux's timers the sampler does not start at all (see [`subscribe`]).
#[cfg(not(target_os = "linux"))]
pub(crate) fn check_frequency(_frequency: u32) -> Result<(), PprofError> {
    Ok(())
}

/// Subscribes to the process's samples, starting the sampler at `frequency` Hz if it is not
/// running (a running sampler keeps its frequency: see [`Subscription::frequency`]).
pub(crate) fn subscribe(frequency: u32) -> Result<Subscription, PprofError> {
    let mut running = sampler();
    if running.is_none() {
        *running = Some(start(frequency)?);
    }
    let Some(running) = running.as_mut() else {
        unreachable!("started above")
    };
    let window = Arc::new(Mutex::new(Window::new(running.frequency, running.clock())));
    running.windows.push(window.clone());
    Ok(Subscription { window })
}

impl Subscription {
    /// The samples since subscribing or the last take; a new window starts now.
    pub(crate) fn take(&self) -> Window {
        let mut running = sampler();
        if let Some(running) = running.as_mut() {
            running.drain();
        }
        let mut window = lock(&self.window);
        let fresh = Window::new(window.frequency, window.clock);
        let mut taken = std::mem::replace(&mut *window, fresh);
        taken.duration = taken.began.elapsed();
        taken
    }

    /// Unsubscribes and returns the samples of the last window.
    pub(crate) fn finish(self) -> Window {
        self.take()
        // Dropped here: unsubscribes.
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let mut guard = sampler();
        let Some(running) = guard.as_mut() else {
            return;
        };
        running.windows.retain(|w| !Arc::ptr_eq(w, &self.window));
        if running.windows.is_empty() {
            if let Some(mut running) = guard.take() {
                // The timer stops under the lock: a subscriber that starts a new sampler
                // right after finds the handler free.
                running.stop_sampling();
                drop(guard);
                running.join_drainer();
            }
        }
    }
}

fn lock(window: &Mutex<Window>) -> MutexGuard<'_, Window> {
    window.lock().unwrap_or_else(|e| e.into_inner())
}

impl Running {
    /// Moves the ring's samples into every window.
    fn drain(&mut self) {
        let mut windows: Vec<_> = self.windows.iter().map(|w| lock(w)).collect();
        // CPU time per request's route, for `http_server_cpu_seconds_total`: once per sample,
        // whatever the number of windows.
        let mut cpu: HashMap<RequestLabels, u64> = HashMap::new();
        self.ring.ring().drain(|stack, weight, labels| {
            for window in windows.iter_mut() {
                window.add(stack, weight, labels);
            }
            if let Some(labels) = labels {
                *cpu.entry(labels.without_trace()).or_default() += u64::from(weight);
            }
        });
        drop(windows);
        let period = 1.0 / f64::from(self.frequency.max(1));
        for (labels, periods) in cpu {
            labels.add_cpu_seconds(periods as f64 * period);
        }
        let mut windows: Vec<_> = self.windows.iter().map(|w| lock(w)).collect();
        let lost = self.ring.ring().dropped.load(Ordering::Relaxed);
        let new_lost = lost - self.lost_seen;
        self.lost_seen = lost;
        let not_armed = self.not_armed();
        let new_not_armed = not_armed - self.not_armed_seen;
        self.not_armed_seen = not_armed;
        for window in windows.iter_mut() {
            window.lost += new_lost;
            window.not_armed += new_not_armed;
        }
    }

    fn clock(&self) -> Clock {
        #[cfg(target_os = "linux")]
        return self.timers.clock();
        #[cfg(not(target_os = "linux"))]
        Clock::ProcessWide
    }

    fn not_armed(&self) -> u64 {
        #[cfg(target_os = "linux")]
        return self.timers.not_armed;
        #[cfg(not(target_os = "linux"))]
        0
    }

    fn stop_sampling(&mut self) {
        #[cfg(target_os = "linux")]
        {
            // The threads' timers first: no new signal, then the handler's target goes.
            self.timers = timers::Timers::none();
            drop(signal::stop());
        }
        self.stopped.store(true, Ordering::Release);
    }

    /// Waits for the drain thread to exit; the ring is freed with the last reference.
    fn join_drainer(&mut self) {
        if let Some(drainer) = self.drainer.take() {
            drainer.thread().unpark();
            let _ = drainer.join();
        }
    }
}

#[cfg(target_os = "linux")]
fn start(frequency: u32) -> Result<Running, PprofError> {
    let target = Arc::new(signal::Target::new(Ring::new(), blocklisted_ranges()));
    let period = Duration::from_secs(1) / frequency.max(1);
    signal::start(target.clone()).map_err(|e| PprofError::Sampler(e.to_string()))?;
    let timers = match timers::Timers::start(period, target.clone()) {
        Ok(timers) => timers,
        Err(e) => {
            drop(signal::stop());
            return Err(PprofError::Sampler(format!("cannot start the timers: {e}")));
        }
    };
    let stopped = Arc::new(AtomicBool::new(false));
    let flag = stopped.clone();
    let drainer = match std::thread::Builder::new()
        .name("observe-pprof".into())
        .spawn(move || drain_until_stopped(&flag))
    {
        Ok(drainer) => drainer,
        Err(e) => {
            drop(timers);
            drop(signal::stop());
            return Err(PprofError::Sampler(format!(
                "cannot start the sampler's thread: {e}"
            )));
        }
    };
    Ok(Running {
        ring: Arc::new(RingOwner { target }),
        timers,
        stopped,
        frequency,
        windows: Vec::new(),
        drainer: Some(drainer),
        lost_seen: 0,
        not_armed_seen: 0,
        _labels: WantLabels::new(),
    })
}

#[cfg(not(target_os = "linux"))]
fn start(_frequency: u32) -> Result<Running, PprofError> {
    Err(PprofError::Sampler(
        "CPU profiling is only supported on Linux".to_owned(),
    ))
}

/// The drain thread: every [`DRAIN_EVERY`], and a rescan of the threads every
/// [`RESCAN_EVERY`], until its sampler stops.
#[cfg(target_os = "linux")]
fn drain_until_stopped(stopped: &AtomicBool) {
    let mut rescanned = Instant::now();
    loop {
        std::thread::park_timeout(DRAIN_EVERY);
        if stopped.load(Ordering::Acquire) {
            return;
        }
        if let Some(running) = sampler().as_mut() {
            if rescanned.elapsed() >= RESCAN_EVERY {
                rescanned = Instant::now();
                running.timers.rescan();
            }
            running.drain();
        }
    }
}

/// Address ranges of the executable code of the libraries in [`BLOCKLIST`] and the vDSO,
/// from `/proc/self/maps`.
#[cfg(target_os = "linux")]
fn blocklisted_ranges() -> Box<[(usize, usize)]> {
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap_or_default();
    maps.lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let range = fields.next()?;
            let perms = fields.next()?;
            let path = fields.nth(3).unwrap_or("");
            let file = path.rsplit('/').next().unwrap_or("");
            let blocked = path == "[vdso]"
                || BLOCKLIST
                    .iter()
                    .any(|lib| file.starts_with(lib) || file.contains(lib));
            if !perms.contains('x') || !blocked {
                return None;
            }
            let (lo, hi) = range.split_once('-')?;
            Some((
                usize::from_str_radix(lo, 16).ok()?,
                usize::from_str_radix(hi, 16).ok()?,
            ))
        })
        .collect()
}
