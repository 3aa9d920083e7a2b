//! The sampling allocator under the crate's own unit tests: this test binary allocates through
//! it (one sample per 64 KiB on average, so tests see many), beside the CPU sampler's tests.
#![allow(unsafe_code)]

use std::alloc::System;
use std::collections::HashMap;
use std::sync::mpsc;

use super::*;
use crate::sampler::TRUNCATED;

const TEST_RATE: usize = 64 * 1024;

#[global_allocator]
static ALLOCATOR: ProfiledAllocator<System> =
    ProfiledAllocator::with_sample_bytes(System, TEST_RATE);

/// xorshift64: the sizes the tests allocate.
fn next(x: &mut u64) -> u64 {
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    *x
}

#[test]
fn unsampling_is_go_s_formula() {
    // One sample of a 512 KiB block at 512 KiB: p = 1 - 1/e.
    let (n, b) = unsampled(1, 512 * 1024, 512 * 1024);
    assert_eq!(n, 2);
    assert_eq!(b, (512.0 * 1024.0 / (1.0 - (-1f64).exp())).round() as i64);
    // Small blocks: each sample stands for about rate / size of them.
    let (n, b) = unsampled(10, 10 * 64, 512 * 1024);
    assert!((n - 81_920).abs() < 10, "{n}");
    assert!((b - 10 * 64 * 8192).abs() < 10 * 64 * 2, "{b}");
    assert_eq!(unsampled(0, 0, 512 * 1024), (0, 0));
}

/// Four threads allocate, grow (realloc) and free blocks of 16 B to 16 KiB, half of them
/// freed by another thread than the one that allocated them; each keeps its last 200. Then
/// the live samples are exactly the sampled blocks still allocated, their sizes right, the
/// stacks' counts add up with them, and freeing the kept blocks counts each sampled one freed.
#[test]
fn blocks_freed_across_threads_leave_exactly_the_live_ones_sampled() {
    let _alone = crate::cpu::one_profiling_test_at_a_time();
    const THREADS: usize = 4;
    const ROUNDS: u64 = 20_000;
    let (senders, receivers): (Vec<_>, Vec<_>) =
        (0..THREADS).map(|_| mpsc::channel::<Box<[u8]>>()).unzip();
    let mut receivers: Vec<Option<mpsc::Receiver<Box<[u8]>>>> =
        receivers.into_iter().map(Some).collect();
    let workers: Vec<_> = (0..THREADS)
        .map(|i| {
            let to_next = senders[(i + 1) % THREADS].clone();
            let from_previous = receivers[i].take().expect("one receiver each");
            std::thread::spawn(move || {
                let mut x = 0x9e37_79b9 ^ (i as u64 + 1) << 20;
                let mut kept: Vec<Box<[u8]>> = Vec::new();
                for round in 0..ROUNDS {
                    let size = 16 + (next(&mut x) % 16_384) as usize;
                    let mut block = vec![round as u8; size];
                    if round % 3 == 0 {
                        // Grow it: a realloc, sampled as a free and an allocation.
                        block.reserve_exact(size);
                        block.resize(2 * size, 1);
                    }
                    let block = block.into_boxed_slice();
                    if round % 2 == 0 {
                        to_next.send(block).expect("the next thread listens");
                    } else {
                        kept.push(block);
                        if kept.len() > 200 {
                            kept.remove(0);
                        }
                    }
                    // Free what the previous thread allocated.
                    while let Ok(theirs) = from_previous.try_recv() {
                        drop(theirs);
                    }
                }
                drop(to_next);
                // Whatever is still on the way is freed here too.
                (kept, from_previous)
            })
        })
        .collect();
    drop(senders);
    let mut kept = Vec::new();
    let mut pending = Vec::new();
    for worker in workers {
        let (blocks, receiver) = worker.join().expect("worker");
        kept.extend(blocks);
        pending.push(receiver);
    }
    for receiver in pending {
        while let Ok(block) = receiver.recv() {
            drop(block);
        }
    }
    let sizes: HashMap<usize, u64> = kept
        .iter()
        .map(|b| (b.as_ptr() as usize, b.len() as u64))
        .collect();
    let live = table::live_blocks();
    let mut sampled_kept = 0;
    for (address, size) in &live {
        if let Some(&kept_size) = sizes.get(address) {
            assert_eq!(*size, kept_size, "a live sample's size");
            sampled_kept += 1;
        }
    }
    // Each kept block is sampled with probability about 1 - e^(-size/rate).
    let expected: f64 = sizes
        .values()
        .map(|&s| 1.0 - (-(s as f64) / TEST_RATE as f64).exp())
        .sum();
    assert!(
        (sampled_kept as f64 - expected).abs() < 0.35 * expected,
        "{sampled_kept} of {} kept blocks sampled, {expected:.0} expected",
        sizes.len()
    );
    let (_, frees_before, adds_up) = table::totals();
    assert!(
        adds_up,
        "the stacks' counts do not add up with the live samples"
    );
    let outer = kept.as_ptr() as usize;
    let outer_sampled = live.iter().any(|(a, _)| *a == outer) as u64;
    drop(live);
    drop(kept);
    let (_, frees_after, adds_up) = table::totals();
    assert!(adds_up);
    // The live list's own buffer may have been sampled too: 0 or 1 more.
    let freed = frees_after - frees_before;
    let want = sampled_kept + outer_sampled;
    assert!(
        freed == want || freed == want + 1,
        "freeing {sampled_kept} sampled kept blocks counted {freed} frees"
    );
}

/// A child forked while other threads sample (and hold the table's lock now and then)
/// allocates through the sampler and exits: the lock is never inherited held.
#[test]
fn a_forked_child_allocates_and_exits() {
    let _alone = crate::cpu::one_profiling_test_at_a_time();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let busy: Vec<_> = (0..2)
        .map(|_| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut blocks = Vec::new();
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    // 64 KiB: most are sampled, so the lock is taken all the time.
                    blocks.push(vec![1u8; 64 * 1024]);
                    if blocks.len() > 64 {
                        blocks.clear();
                    }
                }
            })
        })
        .collect();
    for _ in 0..100 {
        // SAFETY: the child only allocates, frees and exits.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork failed");
        if pid == 0 {
            let mut blocks = Vec::new();
            for i in 0..200 {
                blocks.push(vec![i as u8; 64 * 1024]);
            }
            drop(blocks);
            // SAFETY: ends the child without running the parent's exit handlers.
            unsafe { libc::_exit(7) };
        }
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        let mut status = 0;
        loop {
            // SAFETY: waits for our own child, without blocking.
            let done = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
            if done == pid {
                break;
            }
            if std::time::Instant::now() > deadline {
                // SAFETY: our own child.
                unsafe { libc::kill(pid, libc::SIGKILL) };
                stop.store(true, std::sync::atomic::Ordering::Relaxed);
                panic!("a forked child hung in the allocator");
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        assert!(
            libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 7,
            "{status}"
        );
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for thread in busy {
        thread.join().expect("busy thread");
    }
}

fn allocate_deep(depth: usize, blocks: &mut Vec<Vec<u8>>) {
    if depth == 0 {
        for _ in 0..64 {
            blocks.push(vec![3u8; 64 * 1024]);
        }
        return;
    }
    allocate_deep(depth - 1, blocks);
    // After the call, so it is not a tail call: each level keeps its frame.
    std::hint::black_box(&blocks);
}

/// Allocations 300 calls deep are sampled with the truncated stack (both ends kept), and a
/// panic unwinding through code that allocates on the way (the sampler unwinding inside it)
/// completes.
#[test]
fn deep_stacks_and_panics_allocate_through_the_sampler() {
    let _alone = crate::cpu::one_profiling_test_at_a_time();
    let mut blocks = Vec::new();
    allocate_deep(300, &mut blocks);
    let snapshot = table::snapshot();
    assert!(
        snapshot
            .stacks
            .iter()
            .any(|s| s.frames.len() == crate::sampler::MAX_DEPTH && s.frames.contains(&TRUNCATED)),
        "no truncated stack among {} sampled",
        snapshot.stacks.len()
    );
    struct AllocatesOnDrop;
    impl Drop for AllocatesOnDrop {
        fn drop(&mut self) {
            std::hint::black_box(vec![5u8; 256 * 1024]);
        }
    }
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    for i in 0..100 {
        let caught = std::panic::catch_unwind(|| {
            let _on_the_way = AllocatesOnDrop;
            let message = format!("{i}: {}", "x".repeat(128 * 1024));
            std::panic::panic_any(message);
        });
        assert!(caught.is_err());
    }
    std::panic::set_hook(hook);
    let (_, _, adds_up) = table::totals();
    assert!(adds_up);
}
