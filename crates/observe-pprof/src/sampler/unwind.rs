//! Unwinding the running thread's stack into a fixed buffer, without a lock or an allocation:
//! what the `SIGPROF` handler and the heap sampler (inside the allocator) both need.
#![allow(unsafe_code)]

use super::ring::{INNER, MAX_DEPTH, TRUNCATED};

/// Frames an unwind follows at most: a deeper stack keeps the innermost [`INNER`] and the
/// outermost of the first `UNWIND_LIMIT`.
const UNWIND_LIMIT: usize = 1024;

/// Unwinds the calling thread into `frames`, innermost first, and returns the depth kept. With
/// `from`, the frames above the one at that address (a signal handler's own) are skipped and
/// that frame's address is kept exact; every other frame is a return address, kept one less,
/// inside the call, which is what names the caller's line and function. A stack deeper than
/// [`MAX_DEPTH`] keeps its innermost [`INNER`] frames, then [`TRUNCATED`], then its outermost
/// ones in their order (up to `UNWIND_LIMIT` deep), so its samples stay under its root.
pub(crate) fn unwind(from: Option<usize>, frames: &mut [usize; MAX_DEPTH]) -> usize {
    const OUTER: usize = MAX_DEPTH - INNER - 1;
    let mut outer = [0usize; OUTER];
    let mut depth = 0;
    let mut reached = from.is_none();
    // SAFETY: `trace_unsynchronized` needs no other thread to unwind at the same time through
    // backtrace's lock-free path; libgcc's unwinder is what Go's cgo traceback and other Rust
    // profilers use from signal handlers and allocators. It allocates nothing on this path.
    unsafe {
        backtrace::trace_unsynchronized(|frame| {
            let ip = frame.ip() as usize;
            if ip == 0 {
                // The end of the stack (a thread's root has no caller).
                return false;
            }
            if !reached {
                reached = Some(ip) == from;
                if !reached {
                    return true;
                }
            }
            let address = if depth == 0 && from.is_some() {
                ip
            } else {
                ip.saturating_sub(1)
            };
            if depth < MAX_DEPTH {
                frames[depth] = address;
            }
            if depth >= INNER {
                outer[(depth - INNER) % OUTER] = address;
            }
            depth += 1;
            depth < UNWIND_LIMIT
        });
    }
    if depth > MAX_DEPTH {
        // Both ends: the innermost frames, the marker, the outermost in their order.
        frames[INNER] = TRUNCATED;
        let first = (depth - INNER) % OUTER;
        for i in 0..OUTER {
            frames[INNER + 1 + i] = outer[(first + i) % OUTER];
        }
        depth = MAX_DEPTH;
    }
    depth
}
