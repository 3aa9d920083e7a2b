//! What a profile may need in memory at worst, checked against the configured budget before
//! it starts: a request that would not fit is answered 503, never an out-of-memory kill.
//!
//! The worst case, not the usual: a CPU profile keeps at most [`MAX_STACKS`] stacks of at
//! most [`MAX_DEPTH`](crate::sampler::ring::MAX_DEPTH) frames, [`MAX_FRAMES`] frames in all,
//! symbolizing reads the symbol tables of the modules mapped in
//! the process, and encoding holds about as much again as the stacks. The debug info a
//! profile's lines come from is not counted: its pages are the file's (clean, droppable by the
//! kernel at any time) and are given back after each compilation unit is read. What the examples need
//! in practice, and their worst case, are in `docs/performance.md`.
//!
//! A task dump holds a trace of every task, so it is counted from the tasks alive when it is
//! asked for, at [`TASK`] each.

use crate::error::PprofError;
use crate::sampler::{MAX_FRAMES, MAX_STACKS};

/// The default budget: what a profile may add to the process's memory at its peak.
pub const DEFAULT_MEMORY_BUDGET: u64 = 32 * MIB;

const MIB: u64 = 1024 * 1024;

/// The ring the signal handler writes into.
const RING: u64 = 524 * 1024;
/// The kept stacks: their frames, and per stack its count and the map's overhead.
const STACKS: u64 = MAX_FRAMES as u64 * 8 + MAX_STACKS as u64 * 64;
/// What a heap profile holds besides the symbol tables: two copies of the sample table (a
/// delta profile's), and the encoding, about as much again.
const HEAP_DUMP: u64 = 3 * crate::heap::TABLE_BYTES as u64;

/// A task in a task dump: tokio's trace of it, its symbolized frames and its text; about three
/// times what an idle task measured (`docs/performance.md`), for tasks awaiting deeper.
const TASK: u64 = 2 * 1024;

/// What a CPU profile needs at worst.
pub(crate) fn cpu_profile() -> u64 {
    RING + 2 * STACKS + crate::symbols::table_bytes()
}

/// What a heap profile needs at worst.
pub(crate) fn heap_profile() -> u64 {
    HEAP_DUMP + crate::symbols::table_bytes()
}

/// What a task dump of `tasks` tasks needs. (A build with debug info also loads it, on the
/// first dump, and keeps it: not counted here, it is not the dump's.)
pub(crate) fn task_dump(tasks: usize) -> u64 {
    tasks as u64 * TASK
}

/// `Ok` when `need` fits in `budget`.
pub(crate) fn check(what: &str, need: u64, budget: u64) -> Result<(), PprofError> {
    if need <= budget {
        return Ok(());
    }
    Err(PprofError::OverBudget(format!(
        "a {what} may need up to {:.1} MiB here, more than the {:.1} MiB memory budget; \
         raise it with Pprof::builder().memory_budget(bytes) if the process can afford it",
        need as f64 / MIB as f64,
        budget as f64 / MIB as f64
    )))
}
