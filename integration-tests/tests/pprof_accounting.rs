//! A CPU profile adds up: its total is the CPU time the process used over the profile, read
//! from `/proc/<pid>/stat`, with both cores saturated, at the default 99 Hz and at the highest
//! frequency a request may ask for (each thread is sampled on its own CPU clock, and a sample
//! counts every period the kernel folded into its signal).
//!
//! The figures print (`cargo nextest run -p integration-tests --test pprof_accounting
//! --no-capture`).
use std::time::Duration;

use integration_tests::{fetch, go_tool_pprof, Example, Load, TempDir};

/// The process's CPU time so far (user + system), in seconds, from `/proc/<pid>/stat`.
fn process_cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("the example runs");
    // The command may hold spaces and parentheses: the fields start after the last ')'.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .expect("a stat line");
    // utime and stime are fields 14 and 15 (the 12th and 13th after the command).
    let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
    // In clock ticks of USER_HZ, 100 a second on every Linux architecture.
    ticks / 100.0
}

/// "Total samples = 17.87s" of `go tool pprof -top`, in seconds.
fn total_seconds(top: &str) -> f64 {
    let total = top
        .split("Total samples = ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no total in:\n{top}"));
    let (number, unit) = total.split_at(total.find(|c: char| c.is_alphabetic()).unwrap());
    let number: f64 = number.parse().unwrap();
    match unit {
        "s" => number,
        "ms" => number / 1e3,
        "mins" => number * 60.0,
        _ => panic!("unit {unit:?} in {total:?}"),
    }
}

fn a_profile_counts_every_cpu_second_the_process_used(package: &str) {
    let example = Example::start_release(package, &[]);
    // Three loops of CPU work on the blocking pool: both cores busy, whatever else runs.
    let load = Load::start(example.addr, "/work?ms=50", 3, u64::MAX);
    std::thread::sleep(Duration::from_millis(500));
    let dir = TempDir::new("observe-pprof-accounting");
    for frequency in [99, 1000] {
        let before = process_cpu_seconds(example.pid());
        let answer = fetch(
            example.addr,
            &format!("/debug/pprof/profile?seconds=5&frequency={frequency}"),
            Duration::from_secs(60),
        )
        .expect("the profile");
        let used = process_cpu_seconds(example.pid()) - before;
        assert_eq!(answer.status, 200, "{}", answer.text());
        let file = dir.path().join(format!("profile-{frequency}.pb.gz"));
        std::fs::write(&file, &answer.body).unwrap();
        let pprof = |report: &str| {
            let out = go_tool_pprof(&[report, file.to_str().unwrap()], Duration::from_secs(60));
            String::from_utf8_lossy(&out.stdout).into_owned()
        };
        let (top, comments) = (pprof("-top"), pprof("-comments"));
        let counted = total_seconds(&top);
        println!(
            "{package}: {frequency} Hz: process CPU {used:.2} s, profile total {counted:.2} s, \
             counted {:.0} %",
            100.0 * counted / used
        );
        assert!(
            comments.contains("per-thread timers"),
            "{package}: the profile names its clock:\n{comments}"
        );
        assert!(
            (0.9..=1.1).contains(&(counted / used)),
            "{package} at {frequency} Hz: the profile counts {counted:.2} s of {used:.2} s \
             used:\n{top}"
        );
    }
    let (ok, failed) = load.finish();
    assert!(ok > 0 && failed == 0, "{ok} answered, {failed} failed");
}

integration_tests::for_both_examples!(a_profile_counts_every_cpu_second_the_process_used);
