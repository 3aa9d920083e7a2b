//! The process's `SIGPROF` handler and `ITIMER_PROF` timer: observe's only unsafe code, kept
//! to the system calls and the one pointer the handler reads.
//!
//! The handler runs on whichever thread the kernel interrupts, in the middle of any code, the
//! allocator and locks included. It allocates nothing and takes no lock: it reads the
//! interrupted program counter, keeps only that if it lies in code that cannot be unwound
//! safely (the unwinder itself, the loader, libc: the signal may have landed while they hold
//! a lock the unwinder needs), otherwise unwinds with libgcc's unwinder into a buffer on its
//! stack, and leaves the stack in the [`Ring`].
#![allow(unsafe_code)]

use std::ffi::c_void;
use std::ptr;
use std::sync::atomic::{AtomicPtr, AtomicUsize, Ordering};
use std::sync::{Arc, Once};
use std::time::Duration;

use super::ring::{Ring, MAX_DEPTH};

/// What the handler samples into: set while sampling, null otherwise.
static TARGET: AtomicPtr<Target> = AtomicPtr::new(ptr::null_mut());
/// Handlers between their first and last look at [`TARGET`]: [`stop`] waits for them before
/// it frees what they write into.
static IN_HANDLER: AtomicUsize = AtomicUsize::new(0);

/// The ring, and the address ranges whose samples are dropped.
pub(crate) struct Target {
    pub(crate) ring: Ring,
    pub(crate) blocklist: Box<[(usize, usize)]>,
}

impl Target {
    fn blocked(&self, pc: usize) -> bool {
        self.blocklist.iter().any(|&(lo, hi)| lo <= pc && pc < hi)
    }
}

/// Installs the handler (once per process; it stays, doing nothing while nothing samples, so
/// a signal still in flight after [`stop`] never meets the default action, which would end
/// the process), points it at `target` and starts the timer at `frequency` Hz of CPU time.
pub(crate) fn start(target: Arc<Target>, frequency: u32) -> std::io::Result<()> {
    static INSTALLED: Once = Once::new();
    let mut installed = Ok(());
    INSTALLED.call_once(|| installed = install_handler());
    installed?;
    TARGET.store(Arc::into_raw(target).cast_mut(), Ordering::SeqCst);
    let period = Duration::from_secs(1) / frequency.max(1);
    if let Err(e) = set_timer(period) {
        drop(stop());
        return Err(e);
    }
    Ok(())
}

/// Stops the timer and takes the target back once no handler uses it any more.
pub(crate) fn stop() -> Option<Arc<Target>> {
    // Ignoring an error: disarming a timer with valid arguments does not fail.
    let _ = set_timer(Duration::ZERO);
    let target = TARGET.swap(ptr::null_mut(), Ordering::SeqCst);
    // A handler that saw the old pointer is counted in IN_HANDLER (it counts itself before it
    // loads TARGET); later ones see null. Wait for the former: microseconds.
    while IN_HANDLER.load(Ordering::SeqCst) != 0 {
        std::thread::yield_now();
    }
    // SAFETY: `target` came from `Arc::into_raw` in `start`, and no handler holds it now.
    (!target.is_null()).then(|| unsafe { Arc::from_raw(target) })
}

fn set_timer(period: Duration) -> std::io::Result<()> {
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
        Err(std::io::Error::last_os_error())
    }
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

extern "C" fn on_sigprof(_signal: libc::c_int, _info: *mut libc::siginfo_t, context: *mut c_void) {
    // The unwinder may set errno; the interrupted code must not see it change.
    // SAFETY: errno is thread-local; reading and restoring it is what handlers must do.
    let errno = unsafe { *libc::__errno_location() };
    IN_HANDLER.fetch_add(1, Ordering::SeqCst);
    let target = TARGET.load(Ordering::SeqCst);
    if !target.is_null() {
        // SAFETY: `stop` frees the target only after this handler left (IN_HANDLER).
        sample(unsafe { &*target }, interrupted_pc(context));
    }
    IN_HANDLER.fetch_sub(1, Ordering::SeqCst);
    // SAFETY: as above.
    unsafe { *libc::__errno_location() = errno };
}

fn sample(target: &Target, pc: usize) {
    if pc == 0 {
        target.ring.dropped.fetch_add(1, Ordering::Relaxed);
        return;
    }
    if target.blocked(pc) {
        // Where it landed is known without unwinding: keep the sample, one frame deep.
        target.ring.push(&[pc]);
        return;
    }
    let mut frames = [0usize; MAX_DEPTH];
    let mut depth = 0;
    // The unwinder starts in this handler; the interrupted frame is the one at `pc` (the
    // signal frame's CFI hands it over exactly). Frames above it are the sampler's own.
    let mut reached = false;
    // SAFETY: `trace_unsynchronized` needs no other thread to unwind at the same time through
    // backtrace's lock-free path; libgcc's unwinder is what Go's cgo traceback and other Rust profilers
    // use from signal handlers, with the same blocklist against its one lock.
    unsafe {
        backtrace::trace_unsynchronized(|frame| {
            let ip = frame.ip() as usize;
            if ip == 0 {
                // The end of the stack (a thread's root has no caller).
                return false;
            }
            if !reached {
                reached = ip == pc;
                if !reached {
                    return true;
                }
            }
            // The interrupted frame's address is exact; callers' are return addresses: one
            // less is inside the call, which is what names the caller's line and function.
            frames[depth] = if depth == 0 { ip } else { ip.saturating_sub(1) };
            depth += 1;
            depth < MAX_DEPTH
        });
    }
    if depth == 0 {
        // The unwinder could not pass the signal frame: keep at least where it landed.
        frames[0] = pc;
        depth = 1;
    }
    target.ring.push(&frames[..depth]);
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
