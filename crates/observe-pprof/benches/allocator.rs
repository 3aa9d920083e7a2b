//! What the sampling allocator adds to an allocation and its free: the system allocator bare,
//! then through `ProfiledAllocator` at Go's rate (this binary's global allocator, so its table
//! is in use and a sample is taken once per 512 KiB, its cost spread over the rest), for a
//! small and a page-sized block. Run the pairs in one go; `docs/performance.md` has figures.

// criterion's macros generate undocumented items.
#![allow(missing_docs)]
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use observe_pprof::ProfiledAllocator;

#[global_allocator]
static ALLOCATOR: ProfiledAllocator<System> = ProfiledAllocator::new(System);

fn alloc_free(allocator: &impl GlobalAlloc, layout: Layout) {
    // SAFETY: a non-zero layout, freed with the same layout by the allocator that gave it.
    unsafe {
        let block = allocator.alloc(layout);
        black_box(block);
        allocator.dealloc(block, layout);
    }
}

fn allocator(c: &mut Criterion) {
    // Something sampled and still allocated, as in a service: the filter is in use.
    let live: Vec<Vec<u8>> = (0..64).map(|_| vec![1u8; 256 * 1024]).collect();
    for size in [64, 4096] {
        let layout = Layout::from_size_align(size, 8).expect("a layout");
        c.bench_function(&format!("alloc_free_{size}_system"), |b| {
            b.iter(|| alloc_free(&System, layout))
        });
        c.bench_function(&format!("alloc_free_{size}_profiled"), |b| {
            b.iter(|| alloc_free(&ALLOCATOR, layout))
        });
    }
    drop(live);
}

criterion_group!(benches, allocator);
criterion_main!(benches);
