//! The timers that make the kernel send `SIGPROF`: one per thread, on that thread's own CPU
//! clock and delivered to it (`timer_create` with `SIGEV_THREAD_ID`, as Go does since 1.18),
//! and the process-wide `ITIMER_PROF` for the threads that have none yet.
//!
//! One process-wide timer cannot count a busy process: the kernel checks it on its tick and a
//! pending `SIGPROF` does not queue a second one, so the process gets at most a few hundred
//! signals a second however many threads burn CPU. A thread's own timer is checked on that
//! thread's ticks, and expirations missed between two checks come back as the signal's
//! overrun count: the handler weighs its sample by them, so every CPU-second of every thread
//! is counted, at any frequency, on any number of cores.
//!
//! Threads are found in `/proc/self/task` when sampling starts and again every
//! [`RESCAN_EVERY`](super::RESCAN_EVERY): a thread that starts in between is sampled by the
//! process-wide timer until it gets its own (the handler drops process-wide signals that land
//! on a thread with a timer of its own), and the timer of a thread that exited is deleted.
#![allow(unsafe_code)]

use std::collections::HashMap;
use std::io;
use std::ptr;
use std::sync::Arc;
use std::time::Duration;

use super::signal::{Target, MAX_THREAD_TIMERS, PROCESS_TAG, THREAD_TAG};

/// The highest frequency the process-wide timer alone can deliver on every kernel (the
/// lowest tick rate Linux is built with): where per-thread timers are not available, higher
/// ones are refused.
pub(crate) const PROCESS_TIMER_MAX_HZ: u32 = 100;

/// Whether this process can create per-thread CPU timers (`Err`: why not), checked once.
pub(crate) fn per_thread_timers() -> Result<(), &'static io::Error> {
    static CHECKED: std::sync::OnceLock<Result<(), io::Error>> = std::sync::OnceLock::new();
    CHECKED
        .get_or_init(|| {
            // SAFETY: gettid has no preconditions.
            let me = unsafe { libc::gettid() };
            // SAFETY: a zeroed sigevent is valid; the fields set are those SIGEV_THREAD_ID
            // reads. The timer is never armed, so it sends nothing before it is deleted.
            let mut event: libc::sigevent = unsafe { std::mem::zeroed() };
            event.sigev_notify = libc::SIGEV_THREAD_ID;
            event.sigev_signo = libc::SIGPROF;
            event.sigev_notify_thread_id = me;
            let mut id: libc::timer_t = ptr::null_mut();
            // SAFETY: `event` and `id` are valid for the call.
            if unsafe { libc::timer_create(thread_cpu_clock(me), &mut event, &mut id) } != 0 {
                return Err(io::Error::last_os_error());
            }
            drop(Timer(Some(id)));
            Ok(())
        })
        .as_ref()
        .copied()
}

/// Which clock the samples of a window were taken on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Clock {
    /// Every thread on its own CPU clock (the process-wide timer for threads not armed yet).
    PerThread,
    /// The process-wide `ITIMER_PROF` alone: per-thread timers could not be created here.
    ProcessWide,
}

/// The timers of a running sampler: one per thread, by thread id, and the process-wide one.
pub(crate) struct Timers {
    period: Duration,
    /// The process-wide timer on the process's CPU clock (a POSIX timer, whose signals carry
    /// overruns too), for threads without a timer of their own yet.
    process: Option<Timer>,
    /// `setitimer(ITIMER_PROF)` is on instead (POSIX CPU timers are not available here).
    itimer: bool,
    /// Where the signal handler learns which threads have a timer of their own.
    target: Option<Arc<Target>>,
    timers: HashMap<libc::pid_t, Timer>,
    /// The threads found at the last rescan (`None` before the first).
    seen: Option<Vec<libc::pid_t>>,
    /// Threads alive now that could not get a timer (creating it failed, or over the cap).
    refused: std::collections::HashSet<libc::pid_t>,
    /// The most threads alive at once without a timer they should have had.
    pub(crate) not_armed: u64,
    /// Why per-thread timers are not used, if they are not.
    pub(crate) unavailable: Option<io::Error>,
}

/// A POSIX timer of this process (`None` once deleted: ids start at 0, which `libc` spells
/// as a null pointer, so null cannot mean "none").
struct Timer(Option<libc::timer_t>);

// SAFETY: a `timer_t` is an id the kernel gives this process; any thread may use it.
unsafe impl Send for Timer {}

impl Timer {
    fn id(&self) -> libc::timer_t {
        self.0.unwrap_or(ptr::null_mut())
    }

    fn delete(&mut self) {
        if let Some(id) = self.0.take() {
            // SAFETY: the id came from `timer_create` and is deleted once, here.
            unsafe { libc::timer_delete(id) };
        }
    }
}

impl Drop for Timer {
    fn drop(&mut self) {
        self.delete();
    }
}

impl Timers {
    /// Timers of `period` of CPU time for every thread of the process, noted in `target`, and
    /// the process-wide one; where POSIX CPU timers are not available, `setitimer` alone
    /// ([`Clock::ProcessWide`]).
    pub(crate) fn start(period: Duration, target: Arc<Target>) -> io::Result<Timers> {
        let mut timers = Timers {
            period,
            process: None,
            itimer: false,
            target: Some(target),
            timers: HashMap::new(),
            seen: None,
            refused: Default::default(),
            not_armed: 0,
            unavailable: None,
        };
        match per_thread_timers() {
            Ok(()) => {
                timers.process = Some(arm(None, period, 0)?);
                timers.rescan();
            }
            Err(e) => {
                timers.unavailable = Some(io::Error::new(e.kind(), e.to_string()));
                set_process_timer(period)?;
                timers.itimer = true;
            }
        }
        Ok(timers)
    }

    /// No timers: what a stopped sampler holds.
    pub(crate) fn none() -> Timers {
        Timers {
            period: Duration::ZERO,
            process: None,
            itimer: false,
            target: None,
            timers: HashMap::new(),
            seen: None,
            refused: Default::default(),
            not_armed: 0,
            unavailable: None,
        }
    }

    /// The clock the samples are taken on.
    pub(crate) fn clock(&self) -> Clock {
        if self.unavailable.is_some() {
            Clock::ProcessWide
        } else {
            Clock::PerThread
        }
    }

    /// Gives each thread that has none a timer, and deletes the timers of threads that exited
    /// (a thread id the kernel gave again gets a timer of its own).
    pub(crate) fn rescan(&mut self) {
        if self.unavailable.is_some() {
            return;
        }
        let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
            return;
        };
        let live: Vec<libc::pid_t> = tasks
            .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse().ok())
            .collect();
        let Some(target) = &self.target else {
            return;
        };
        // A timer whose thread exited no longer runs (its next expiry reads as zero).
        self.timers.retain(|&tid, timer| {
            let keep = live.contains(&tid) && is_running(timer);
            if !keep {
                // Deleted before the thread id is forgotten: none of its signals counts twice.
                timer.delete();
                target.unmark_armed(tid);
            }
            keep
        });
        // A thread gets a timer when it was already there at the last rescan (or when sampling
        // starts): one that lives less than a rescan is left to the process-wide timer, whose
        // signals carry its expirations too. Arming it would only lose the end of its life: a
        // thread's own timer is checked on its ticks, and one that exits between two ticks
        // after its timer expired is never signalled.
        let first = self.seen.is_none();
        let seen = self.seen.replace(live.clone()).unwrap_or_default();
        self.refused.retain(|tid| live.contains(tid));
        for (i, tid) in live.into_iter().enumerate() {
            if self.timers.contains_key(&tid) || !(first || seen.contains(&tid)) {
                continue;
            }
            if self.timers.len() >= MAX_THREAD_TIMERS {
                self.refused.insert(tid);
                continue;
            }
            // Noted first: from its first signal on, the process-wide timer's are dropped.
            target.mark_armed(tid);
            match arm(Some(tid), self.period, i as u64) {
                Ok(timer) => {
                    self.timers.insert(tid, timer);
                }
                // The thread exited since it was listed, or the kernel refused: the
                // process-wide timer samples it.
                Err(_) => {
                    target.unmark_armed(tid);
                    self.refused.insert(tid);
                }
            }
        }
        self.not_armed = self.not_armed.max(self.refused.len() as u64);
    }

    /// Threads with a timer of their own now.
    #[cfg(test)]
    pub(crate) fn armed(&self) -> usize {
        self.timers.len()
    }
}

/// The clock id of thread `tid`'s CPU time (what glibc's `pthread_getcpuclockid` computes:
/// `MAKE_THREAD_CPUCLOCK(tid, CPUCLOCK_SCHED)`).
fn thread_cpu_clock(tid: libc::pid_t) -> libc::clockid_t {
    const CPUCLOCK_SCHED: libc::clockid_t = 2;
    const CPUCLOCK_PERTHREAD_MASK: libc::clockid_t = 4;
    ((!tid) << 3) | CPUCLOCK_PERTHREAD_MASK | CPUCLOCK_SCHED
}

/// A timer sending `SIGPROF` to thread `tid` every `period` of its CPU time, or (`None`) to
/// the process every `period` of the process's CPU time. The first expiry is staggered by
/// `seed` so threads armed together do not fire on the same tick.
fn arm(tid: Option<libc::pid_t>, period: Duration, seed: u64) -> io::Result<Timer> {
    // SAFETY: a zeroed sigevent is valid; the fields set are those the kernel reads.
    let mut event: libc::sigevent = unsafe { std::mem::zeroed() };
    event.sigev_signo = libc::SIGPROF;
    let clock = match tid {
        Some(tid) => {
            event.sigev_notify = libc::SIGEV_THREAD_ID;
            event.sigev_notify_thread_id = tid;
            event.sigev_value.sival_ptr = THREAD_TAG as *mut libc::c_void;
            thread_cpu_clock(tid)
        }
        None => {
            event.sigev_notify = libc::SIGEV_SIGNAL;
            event.sigev_value.sival_ptr = PROCESS_TAG as *mut libc::c_void;
            libc::CLOCK_PROCESS_CPUTIME_ID
        }
    };
    let mut id: libc::timer_t = ptr::null_mut();
    // SAFETY: `event` and `id` are valid for the call; the kernel checks that `tid` is a
    // thread of this process.
    if unsafe { libc::timer_create(clock, &mut event, &mut id) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let timer = Timer(Some(id));
    let period_ns = period.as_nanos().clamp(1, u64::MAX as u128) as u64;
    // Golden-ratio steps spread the first expiries over one period.
    let first = 1 + seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) % period_ns;
    let spec = libc::itimerspec {
        it_interval: timespec(period_ns),
        it_value: timespec(first),
    };
    // SAFETY: the timer was just created; `spec` is valid.
    if unsafe { libc::timer_settime(timer.id(), 0, &spec, ptr::null_mut()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(timer)
}

fn timespec(ns: u64) -> libc::timespec {
    libc::timespec {
        tv_sec: (ns / 1_000_000_000) as libc::time_t,
        tv_nsec: (ns % 1_000_000_000) as libc::c_long,
    }
}

/// Whether the timer still counts down: the timer of a thread that exited reads zero.
fn is_running(timer: &Timer) -> bool {
    // SAFETY: a zeroed itimerspec is valid to write into.
    let mut spec: libc::itimerspec = unsafe { std::mem::zeroed() };
    // SAFETY: the timer id is live (deleted only on drop).
    let rc = unsafe { libc::timer_gettime(timer.id(), &mut spec) };
    rc == 0 && (spec.it_value.tv_sec != 0 || spec.it_value.tv_nsec != 0)
}

impl Drop for Timers {
    fn drop(&mut self) {
        if self.itimer {
            // Ignoring an error: disarming a timer with valid arguments does not fail.
            let _ = set_process_timer(Duration::ZERO);
        }
    }
}

/// Sets the process-wide `ITIMER_PROF` to `period` of process CPU time (zero: off).
fn set_process_timer(period: Duration) -> io::Result<()> {
    let interval = libc::timeval {
        tv_sec: period.as_secs() as libc::time_t,
        tv_usec: period.subsec_micros() as libc::suseconds_t,
    };
    let timer = libc::itimerval {
        it_interval: interval,
        it_value: interval,
    };
    // SAFETY: `timer` is a valid itimerval; the old value is not asked for.
    let rc = unsafe { libc::setitimer(libc::ITIMER_PROF, &timer, ptr::null_mut()) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// POSIX timers of this process, from `/proc/self/timers` (one `ID:` line each).
    fn process_timers() -> usize {
        std::fs::read_to_string("/proc/self/timers")
            .map(|t| t.lines().filter(|l| l.starts_with("ID:")).count())
            .unwrap_or(0)
    }

    #[test]
    fn threads_get_timers_and_exited_threads_lose_theirs() {
        // The timers send SIGPROF: without the handler its default action ends the process.
        super::super::signal::install().unwrap();
        let before = process_timers();
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        let parked = std::thread::spawn(move || stopped.recv());
        let target = Arc::new(Target::new(super::super::ring::Ring::new(), Box::new([])));
        let mut timers = Timers::start(Duration::from_millis(10), target).unwrap();
        assert_eq!(timers.clock(), Clock::PerThread, "{:?}", timers.unavailable);
        let armed = timers.armed();
        assert!(armed >= 2, "{armed} timers");
        // One per thread, and the process-wide one.
        assert_eq!(process_timers(), before + armed + 1);
        drop(stop);
        parked.join().unwrap().unwrap_err();
        timers.rescan();
        assert_eq!(
            timers.armed(),
            armed - 1,
            "the exited thread's timer is gone"
        );
        assert_eq!(process_timers(), before + armed);
        drop(timers);
        assert_eq!(process_timers(), before);
    }
}
