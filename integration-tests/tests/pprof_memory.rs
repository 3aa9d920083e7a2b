//! What a CPU or heap profile costs in memory, on the release examples under load: resident
//! memory (`VmRSS`) before, at its peak while the profile runs and is encoded, and once it is
//! done. The bounds are those `docs/pprof.md` states: a 30 s CPU profile at 99 Hz adds at most
//! 32 MiB at its peak and leaves at most 8 MiB behind; a heap profile likewise.
//!
//! example-actix runs on mimalloc, which gives freed pages back only after its purge delay
//! and only when the process allocates again: an idle process keeps what a profile freed
//! (+12.6 MiB after a 30 s profile, measured). It is measured with `MIMALLOC_PURGE_DELAY=0`,
//! so the figure is observe's and not the allocator's cache (`docs/pprof.md`, "Memory").
//!
//! `OBSERVE_RELEASE_DIR=/other/target/release cargo test -p integration-tests --test
//! pprof_memory -- --nocapture` measures another build the same way (the figures print).
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use integration_tests::{fetch, go_tool_pprof, Example, Load};

const MIB: u64 = 1024 * 1024;
const PEAK_BOUND: u64 = 32 * MIB;
const RETAINED_BOUND: u64 = 8 * MIB;

/// Resident memory before, at the peak during, and after fetching `path`, with load running.
struct Measured {
    before: u64,
    peak: u64,
    after: u64,
}

fn measure(example: &Example, path: &str) -> (Measured, Vec<u8>) {
    // Warm up: routes, connections, the allocator's arenas, so that the baseline is steady.
    std::thread::sleep(Duration::from_secs(3));
    let before = example.rss();
    let peak = Arc::new(AtomicU64::new(before));
    let done = Arc::new(AtomicBool::new(false));
    let watcher = {
        let (peak, done) = (peak.clone(), done.clone());
        let pid_rss = example_rss_reader(example);
        std::thread::spawn(move || {
            while !done.load(Ordering::Relaxed) {
                peak.fetch_max(pid_rss(), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };
    let answer = fetch(example.addr, path, Duration::from_secs(120))
        .unwrap_or_else(|e| panic!("GET {path}: {e}"));
    assert_eq!(
        answer.status,
        200,
        "{}",
        String::from_utf8_lossy(&answer.body)
    );
    // Once answered, the process has freed what the profile used; give the allocator the
    // moment it takes to return pages, with the load still running.
    std::thread::sleep(Duration::from_secs(3));
    done.store(true, Ordering::Relaxed);
    watcher.join().expect("watcher");
    let after = example.rss();
    let peak = peak.load(Ordering::Relaxed).max(after);
    (
        Measured {
            before,
            peak,
            after,
        },
        answer.body,
    )
}

fn example_rss_reader(example: &Example) -> impl Fn() -> u64 + Send + 'static {
    let path = format!("/proc/{}/status", example.pid());
    move || {
        std::fs::read_to_string(&path)
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("VmRSS:"))
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            })
            .unwrap_or(0)
            * 1024
    }
}

impl Measured {
    /// Prints the figures and asserts the bounds `docs/pprof.md` states.
    fn report_and_check(&self, what: &str) {
        let mib = |bytes: u64| bytes as f64 / MIB as f64;
        let (added, left) = (
            self.peak.saturating_sub(self.before),
            self.after.saturating_sub(self.before),
        );
        println!(
            "{what}: RSS before {:.1} MiB, peak {:.1} MiB (+{:.1}), after {:.1} MiB (+{:.1})",
            mib(self.before),
            mib(self.peak),
            mib(added),
            mib(self.after),
            mib(left),
        );
        assert!(
            added <= PEAK_BOUND,
            "{what}: added {:.1} MiB at its peak",
            mib(added)
        );
        assert!(
            left <= RETAINED_BOUND,
            "{what}: left {:.1} MiB behind",
            mib(left)
        );
    }
}

/// Fetches `path` from the release `package` under load; the answer's body.
fn profile_under_load(package: &str, path: &str, what: &str) -> Vec<u8> {
    let example = Example::start_release(package, &[("MIMALLOC_PURGE_DELAY", "0")]);
    let load = Load::start(example.addr, "/work?ms=2", 2, u64::MAX);
    let (measured, body) = measure(&example, path);
    let (ok, failed) = load.finish();
    assert!(ok > 0 && failed == 0, "load: {ok} ok, {failed} failed");
    measured.report_and_check(&format!("{package}, {what}"));
    body
}

fn cpu_profile_memory_is_bounded(package: &str) {
    let path = "/debug/pprof/profile?seconds=30&frequency=99";
    let body = profile_under_load(package, path, "30 s CPU profile at 99 Hz");
    // The profile is real: go tool pprof reads it and names the workload.
    let file = std::env::temp_dir().join(format!("observe-memory-{package}.pb.gz"));
    std::fs::write(&file, &body).expect("write the profile");
    let file = file.to_str().expect("utf-8 path");
    let out = go_tool_pprof(&["-top", file], Duration::from_secs(120));
    let top = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(top.contains("busy_work"), "{top}");
}

fn heap_profile_memory_is_bounded(package: &str) {
    profile_under_load(package, "/debug/pprof/heap", "heap profile");
}

#[test]
fn axum_cpu_profile_memory_is_bounded() {
    cpu_profile_memory_is_bounded("example-axum");
}

#[test]
fn actix_cpu_profile_memory_is_bounded() {
    cpu_profile_memory_is_bounded("example-actix");
}

#[test]
fn axum_heap_profile_memory_is_bounded() {
    heap_profile_memory_is_bounded("example-axum");
}
