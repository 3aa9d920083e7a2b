//! The CPU workload both examples serve at `/work`: one definition, so that both show the
//! same function in a CPU profile (`busy_work`), which the pprof tests look for by name.
//! Each example includes this file as its `busy_work` module.

use std::hint::black_box;
use std::time::{Duration, Instant};

/// Hashes in a loop until `budget` is spent; returns the rounds done. Never inlined, so
/// profiles show it by name.
#[inline(never)]
pub(crate) fn busy_work(budget: Duration) -> u64 {
    let started = Instant::now();
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut rounds = 0;
    while started.elapsed() < budget {
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
