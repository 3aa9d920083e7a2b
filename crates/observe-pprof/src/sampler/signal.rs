//! The process's `SIGPROF` handler: observe's only unsafe code besides the timers that send
//! the signal (`timers.rs`), kept to the system calls and the one pointer the handler reads.
//!
//! The handler runs on whichever thread the kernel interrupts, in the middle of any code, the
//! allocator and locks included. It allocates nothing and takes no lock: it reads the
//! interrupted program counter, keeps only that if it lies in code that cannot be unwound
//! safely (the unwinder itself, the loader, libc: the signal may have landed while they hold
//! a lock the unwinder needs), otherwise unwinds with libgcc's unwinder into a buffer on its
//! stack (`unwind.rs`), and leaves the stack in the [`Ring`].
#![allow(unsafe_code)]

use std::ffi::c_void;
use std::ptr;
use std::sync::atomic::{AtomicI32, AtomicPtr, AtomicUsize, Ordering};
use std::sync::{Arc, Once};

use super::ring::{Ring, MAX_DEPTH};
use observe_core::adapter::RequestLabels;

/// What the handler samples into: set while sampling, null otherwise.
static TARGET: AtomicPtr<Target> = AtomicPtr::new(ptr::null_mut());
/// Handlers between their first and last look at [`TARGET`]: [`stop`] waits for them before
/// it frees what they write into.
static IN_HANDLER: AtomicUsize = AtomicUsize::new(0);

/// The ring, the address ranges whose samples are dropped, and the threads that have a timer
/// of their own.
pub(crate) struct Target {
    pub(crate) ring: Ring,
    pub(crate) blocklist: Box<[(usize, usize)]>,
    /// Thread ids with a timer of their own, open addressing (0: free, -1: was taken). The
    /// process-wide timer's signals are dropped on those threads: their own timer counts their
    /// time, and the kernel may hand a process-wide signal to a thread that is not running.
    armed: Box<[AtomicI32]>,
}

/// Slots of [`Target::armed`]: twice the threads that can have a timer.
const ARMED_SLOTS: usize = 2 * MAX_THREAD_TIMERS;

/// At most this many threads get a timer of their own (`timers.rs`); more are sampled by the
/// process-wide timer, and counted.
pub(crate) const MAX_THREAD_TIMERS: usize = 4096;

/// `sigev_value` of a thread's own timer, as the handler reads it back.
pub(crate) const THREAD_TAG: usize = 1;
/// `sigev_value` of the process-wide timer.
pub(crate) const PROCESS_TAG: usize = 2;
const FREED: i32 = -1;

impl Target {
    pub(crate) fn new(ring: Ring, blocklist: Box<[(usize, usize)]>) -> Self {
        Target {
            ring,
            blocklist,
            armed: (0..ARMED_SLOTS).map(|_| AtomicI32::new(0)).collect(),
        }
    }

    fn home(tid: i32) -> usize {
        (tid as u32 as usize).wrapping_mul(0x9e37_79b9) % ARMED_SLOTS
    }

    /// Notes that thread `tid` has a timer of its own (before the timer is set).
    pub(crate) fn mark_armed(&self, tid: i32) {
        let home = Self::home(tid);
        for i in 0..ARMED_SLOTS {
            let slot = &self.armed[(home + i) % ARMED_SLOTS];
            let now = slot.load(Ordering::Relaxed);
            if now == tid {
                return;
            }
            if (now == 0 || now == FREED)
                && slot
                    .compare_exchange(now, tid, Ordering::Release, Ordering::Relaxed)
                    .is_ok()
            {
                return;
            }
        }
    }

    /// Thread `tid`'s timer is gone (once it was deleted).
    pub(crate) fn unmark_armed(&self, tid: i32) {
        let home = Self::home(tid);
        for i in 0..ARMED_SLOTS {
            let slot = &self.armed[(home + i) % ARMED_SLOTS];
            match slot.load(Ordering::Relaxed) {
                0 => return,
                now if now == tid => {
                    slot.store(FREED, Ordering::Release);
                    return;
                }
                _ => {}
            }
        }
    }

    /// Whether thread `tid` has a timer of its own. Async-signal-safe: loads only.
    fn is_armed(&self, tid: i32) -> bool {
        let home = Self::home(tid);
        for i in 0..ARMED_SLOTS {
            match self.armed[(home + i) % ARMED_SLOTS].load(Ordering::Acquire) {
                0 => return false,
                now if now == tid => return true,
                _ => {}
            }
        }
        false
    }
}

impl Target {
    fn blocked(&self, pc: usize) -> bool {
        self.blocklist.iter().any(|&(lo, hi)| lo <= pc && pc < hi)
    }
}

/// Installs the handler, once per process. It stays, doing nothing while nothing samples, so
/// a signal still in flight after [`stop`] never meets the default action, which would end
/// the process.
pub(crate) fn install() -> std::io::Result<()> {
    static INSTALLED: Once = Once::new();
    let mut installed = Ok(());
    INSTALLED.call_once(|| installed = install_handler());
    installed
}

/// Installs the handler and points it at `target` (the timers that send the signal are the
/// caller's, `timers.rs`).
pub(crate) fn start(target: Arc<Target>) -> std::io::Result<()> {
    install()?;
    TARGET.store(Arc::into_raw(target).cast_mut(), Ordering::SeqCst);
    Ok(())
}

/// Takes the target back once no handler uses it any more (stop the timers first).
pub(crate) fn stop() -> Option<Arc<Target>> {
    let target = TARGET.swap(ptr::null_mut(), Ordering::SeqCst);
    // A handler that saw the old pointer is counted in IN_HANDLER (it counts itself before it
    // loads TARGET); later ones see null. Wait for the former: microseconds.
    while IN_HANDLER.load(Ordering::SeqCst) != 0 {
        std::thread::yield_now();
    }
    // SAFETY: `target` came from `Arc::into_raw` in `start`, and no handler holds it now.
    (!target.is_null()).then(|| unsafe { Arc::from_raw(target) })
}

fn install_handler() -> std::io::Result<()> {
    // SAFETY: a zeroed sigaction is a valid starting point; the handler has the signature
    // SA_SIGINFO calls for and is async-signal-safe (see the module docs).
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = on_sigprof as *const () as usize;
        action.sa_flags = libc::SA_SIGINFO | libc::SA_RESTART;
        libc::sigemptyset(&mut action.sa_mask);
        if libc::sigaction(libc::SIGPROF, &action, ptr::null_mut()) != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

extern "C" fn on_sigprof(_signal: libc::c_int, info: *mut libc::siginfo_t, context: *mut c_void) {
    // The unwinder may set errno; the interrupted code must not see it change.
    // SAFETY: errno is thread-local; reading and restoring it is what handlers must do.
    let errno = unsafe { *libc::__errno_location() };
    IN_HANDLER.fetch_add(1, Ordering::SeqCst);
    let target = TARGET.load(Ordering::SeqCst);
    if !target.is_null() {
        // SAFETY: `stop` frees the target only after this handler left (IN_HANDLER).
        let target = unsafe { &*target };
        let weight = weight(info, target);
        if weight > 0 {
            sample(target, interrupted_pc(context), weight);
        }
    }
    IN_HANDLER.fetch_sub(1, Ordering::SeqCst);
    // SAFETY: as above.
    unsafe { *libc::__errno_location() = errno };
}

/// The sampling periods a signal stands for: one plus the timer's overruns (expirations the
/// kernel folded into this signal: it checks CPU timers on its tick, so above the tick's rate
/// one signal covers several periods). The process-wide timer's signals count only on a
/// thread without a timer of its own: that one's own timer counts its time, and the kernel
/// may hand a process-wide signal to a thread that is not even running.
fn weight(info: *const libc::siginfo_t, target: &Target) -> u32 {
    if info.is_null() {
        return 1;
    }
    // SAFETY: with SA_SIGINFO the second argument is the signal's siginfo.
    let code = unsafe { (*info).si_code };
    let (periods, process_wide) = if code == libc::SI_TIMER {
        // SAFETY: a POSIX timer's siginfo carries the timer's fields (`TimerInfo`).
        let timer = unsafe { &*info.cast::<TimerInfo>() };
        let periods = 1 + timer.si_overrun.clamp(0, 1 << 20) as u32;
        match timer.si_value as usize {
            THREAD_TAG => return periods,
            PROCESS_TAG => (periods, true),
            // Some other timer of the process sent SIGPROF: not ours to count.
            _ => return 0,
        }
    } else {
        // `setitimer`'s signal (where POSIX CPU timers are not available): no overruns.
        (1, true)
    };
    // SAFETY: gettid is async-signal-safe and has no preconditions.
    if process_wide && target.is_armed(unsafe { libc::gettid() }) {
        0
    } else {
        periods
    }
}

/// The start of a `siginfo_t` sent by a POSIX timer (Linux's `_timer` member), which the
/// `libc` crate does not expose.
#[repr(C)]
struct TimerInfo {
    si_signo: libc::c_int,
    si_errno: libc::c_int,
    si_code: libc::c_int,
    #[cfg(target_pointer_width = "64")]
    _pad: libc::c_int,
    si_tid: libc::c_int,
    si_overrun: libc::c_int,
    /// The timer's `sigev_value` (a pointer-sized union): which of observe's timers it is.
    si_value: *mut c_void,
}

fn sample(target: &Target, pc: usize, weight: u32) {
    if pc == 0 {
        target
            .ring
            .dropped
            .fetch_add(u64::from(weight), Ordering::Relaxed);
        return;
    }
    // Which request this thread works for, if any: copied from the adapters' thread-local.
    let labels = RequestLabels::current();
    if target.blocked(pc) {
        // Where it landed is known without unwinding: keep the sample, one frame deep.
        target.ring.push(&[pc], weight, labels);
        return;
    }
    let mut frames = [0usize; MAX_DEPTH];
    // The unwinder starts in this handler; the interrupted frame is the one at `pc` (the
    // signal frame's CFI hands it over exactly). Frames above it are the sampler's own.
    let mut depth = super::unwind::unwind(Some(pc), &mut frames);
    if depth == 0 {
        // The unwinder could not pass the signal frame: keep at least where it landed.
        frames[0] = pc;
        depth = 1;
    }
    target.ring.push(&frames[..depth], weight, labels);
}

#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
fn interrupted_pc(context: *mut c_void) -> usize {
    if context.is_null() {
        return 0;
    }
    // SAFETY: with SA_SIGINFO the third argument is the interrupted thread's ucontext_t.
    unsafe {
        (*(context as *const libc::ucontext_t)).uc_mcontext.gregs[libc::REG_RIP as usize] as usize
    }
}

#[cfg(all(target_os = "linux", target_arch = "aarch64"))]
fn interrupted_pc(context: *mut c_void) -> usize {
    if context.is_null() {
        return 0;
    }
    // SAFETY: with SA_SIGINFO the third argument is the interrupted thread's ucontext_t.
    unsafe { (*(context as *const libc::ucontext_t)).uc_mcontext.pc as usize }
}

#[cfg(not(all(
    target_os = "linux",
    any(target_arch = "x86_64", target_arch = "aarch64")
)))]
fn interrupted_pc(_context: *mut c_void) -> usize {
    0
}
