//! The CPU workload both examples serve at `/work`: one definition, so that both show the
//! same function in a CPU profile (`busy_work`), which the pprof tests look for by name.
//! Each example includes this file as its `busy_work` module.

use std::hint::black_box;
use std::time::Duration;

/// Hashes in a loop until this thread has spent `budget` of CPU time; returns the rounds done.
/// CPU time, not wall time, so a request costs what it asks for however busy the machine is
/// (the tests compare profiles and counters against it). Never inlined, so profiles show it
/// by name.
#[inline(never)]
pub(crate) fn busy_work(budget: Duration) -> u64 {
    let until = thread_cpu_time() + budget;
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut rounds = 0;
    while thread_cpu_time() < until {
        for _ in 0..10_000 {
            // xorshift64*: cheap, and black_box keeps the optimizer from skipping it.
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            state = black_box(state.wrapping_mul(0x2545_f491_4f6c_dd1d));
        }
        rounds += 1;
    }
    black_box(state);
    rounds
}

/// The CPU time this thread has used. (std has no safe way to read a thread's CPU clock: the
/// examples' one `unsafe`, a plain system call.)
#[allow(unsafe_code)]
fn thread_cpu_time() -> Duration {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `now` is a valid timespec to write into; this clock exists on every Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut now) };
    Duration::new(now.tv_sec as u64, now.tv_nsec as u32)
}
