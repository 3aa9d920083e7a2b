//! A global allocator that counts the allocations of the calling thread, for tests that pin
//! how many allocations a request costs.
//!
//! ```ignore
//! #[global_allocator]
//! static GLOBAL: integration_tests::allocations::CountingAllocator =
//!     integration_tests::allocations::CountingAllocator;
//! let before = integration_tests::allocations::on_this_thread();
//! ```

// A counting allocator has to implement the unsafe `GlobalAlloc` trait.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

/// Forwards to the system allocator, counting `alloc` and `realloc` calls per thread.
pub struct CountingAllocator;

thread_local! {
    // Per thread, so other tests and the harness do not count; const so it never allocates.
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

/// Allocations made by this thread so far (when [`CountingAllocator`] is the global one).
pub fn on_this_thread() -> u64 {
    ALLOCATIONS.with(Cell::get)
}

// SAFETY: every call is forwarded unchanged to the system allocator.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.with(|n| n.set(n.get() + 1));
        System.alloc(layout)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.with(|n| n.set(n.get() + 1));
        System.realloc(ptr, layout, new_size)
    }
}
