//! Runtime visibility on both examples, over real sockets: the `tokio_*` metrics count the
//! tasks a service spawned and show a worker blocked by `std::thread::sleep` while it is
//! blocked, and `/debug/pprof/tasks` lists every task's await points in the build that can
//! (`--cfg tokio_unstable`, built by `scripts/test.sh`) and answers 501 with the flags in
//! the one that cannot.
use std::time::{Duration, Instant};

use integration_tests::{fetch, parse_exposition, wait_until, Answer, Example, Sample};

const EXAMPLES: [&str; 2] = ["example-axum", "example-actix"];
const LONG: Duration = Duration::from_secs(60);

fn get(example: &Example, path: &str) -> Answer {
    let started = Instant::now();
    fetch(example.addr, path, LONG)
        .unwrap_or_else(|e| panic!("GET {path}: {e} after {:?}", started.elapsed()))
}

/// The `tokio_*` samples of one scrape, or `None` when it took longer than `timeout` (it
/// landed on a blocked worker).
fn scrape(example: &Example, timeout: Duration) -> Option<Vec<Sample>> {
    let answer = fetch(example.addr, "/metrics", timeout).ok()?;
    assert_eq!(answer.status, 200);
    let samples = parse_exposition(&answer.text());
    Some(
        samples
            .into_iter()
            .filter(|s| s.name.starts_with("tokio_"))
            .collect(),
    )
}

fn value(samples: &[Sample], name: &str) -> f64 {
    samples
        .iter()
        .find(|s| s.name == name)
        .unwrap_or_else(|| panic!("{name} missing from {samples:?}"))
        .value
}

/// `name` per `worker` label.
fn per_worker(samples: &[Sample], name: &str) -> Vec<(String, f64)> {
    let values: Vec<(String, f64)> = samples
        .iter()
        .filter(|s| s.name == name)
        .map(|s| (s.label("worker").expect("worker label").to_owned(), s.value))
        .collect();
    assert!(!values.is_empty(), "{name} missing from {samples:?}");
    values
}

fn max(values: &[(String, f64)]) -> f64 {
    values.iter().map(|(_, v)| *v).fold(0.0, f64::max)
}

fn sum(values: &[(String, f64)]) -> f64 {
    values.iter().map(|(_, v)| *v).sum()
}

fn alive_tasks_read_what_the_service_spawned(package: &str) {
    const N: f64 = 500.0;
    let example = Example::start(package, &[]);
    let before = scrape(&example, LONG).expect("a scrape");
    assert_eq!(
        value(&before, "tokio_workers"),
        2.0,
        "{package}: two workers"
    );
    let alive_before = value(&before, "tokio_alive_tasks");
    let spawned = get(&example, "/idle-tasks?n=500&seconds=300");
    assert_eq!(spawned.text(), "spawned 500 idle tasks\n");
    let after = scrape(&example, LONG).expect("a scrape");
    let alive_after = value(&after, "tokio_alive_tasks");
    println!("{package}: tokio_alive_tasks {alive_before} before, {alive_after} after spawning 500 idle tasks");
    // The server's own tasks (the connection of each request, the accept loop) come and go.
    assert!(
        (alive_after - alive_before - N).abs() <= 3.0,
        "{package}: alive tasks went from {alive_before} to {alive_after} after spawning {N}"
    );
}

fn a_blocked_worker_shows_as_stalled_during_the_blocking_request(package: &str) {
    let example = Example::start(package, &[]);
    let before = scrape(&example, LONG).expect("a scrape");
    let stalled_before = per_worker(&before, "tokio_worker_current_stall_seconds");
    let total_before = sum(&per_worker(&before, "tokio_worker_stalled_seconds_total"));
    let busy_before = sum(&per_worker(&before, "tokio_worker_busy_seconds_total"));
    assert_eq!(
        max(&stalled_before),
        0.0,
        "{package}: idle, nothing stalled"
    );

    let addr = example.addr;
    let blocking = std::thread::spawn(move || fetch(addr, "/block?ms=3000", LONG));
    // A scrape that lands on the blocked worker waits for it: give up on it after 300 ms
    // and open another connection, which goes to the other worker.
    let during = wait_until(
        "a stalled worker on /metrics during the blocking request",
        Duration::from_secs(10),
        || {
            let samples = scrape(&example, Duration::from_millis(300))?;
            let stalled = per_worker(&samples, "tokio_worker_current_stall_seconds");
            (max(&stalled) >= 0.5).then_some(stalled)
        },
    );
    let answer = blocking.join().unwrap().expect("the blocking request");
    assert_eq!(answer.text(), "blocked a worker for 3000 ms\n");
    // tokio publishes a worker's figures when it next parks: the stall reads as over within
    // one watchdog period of that (a scrape served by that worker itself keeps it busy).
    let after = wait_until("the stall to end", Duration::from_secs(10), || {
        let samples = scrape(&example, LONG)?;
        (max(&per_worker(&samples, "tokio_worker_current_stall_seconds")) == 0.0).then_some(samples)
    });
    let stalled_after = per_worker(&after, "tokio_worker_current_stall_seconds");
    let total_after = sum(&per_worker(&after, "tokio_worker_stalled_seconds_total"));
    let busy_after = sum(&per_worker(&after, "tokio_worker_busy_seconds_total"));
    println!(
        "{package}: tokio_worker_current_stall_seconds before {stalled_before:?}, during {during:?}, after {stalled_after:?}; \
         tokio_worker_stalled_seconds_total {total_before:.3} -> {total_after:.3}; \
         tokio_worker_busy_seconds_total {busy_before:.3} -> {busy_after:.3}"
    );
    // One worker stalled, the other served the scrape.
    assert_eq!(
        during.iter().filter(|(_, v)| *v > 0.0).count(),
        1,
        "{during:?}"
    );
    // The stall's 3 s, less the threshold's granularity (stalls count from their start).
    assert!(
        total_after - total_before >= 2.5,
        "{package}: stalled seconds grew by {}",
        total_after - total_before
    );
    assert!(
        busy_after - busy_before >= 2.9,
        "{package}: busy seconds grew by {}",
        busy_after - busy_before
    );
}

#[test]
fn axum_alive_tasks_read_what_the_service_spawned() {
    alive_tasks_read_what_the_service_spawned("example-axum");
}

#[test]
fn actix_alive_tasks_read_what_the_service_spawned() {
    alive_tasks_read_what_the_service_spawned("example-actix");
}

#[test]
fn axum_a_blocked_worker_shows_as_stalled_during_the_blocking_request() {
    a_blocked_worker_shows_as_stalled_during_the_blocking_request("example-axum");
}

#[test]
fn actix_a_blocked_worker_shows_as_stalled_during_the_blocking_request() {
    a_blocked_worker_shows_as_stalled_during_the_blocking_request("example-actix");
}

#[test]
fn without_the_flags_the_task_dump_is_501_saying_which() {
    for package in EXAMPLES {
        let example = Example::start(package, &[]);
        let answer = get(&example, "/debug/pprof/tasks");
        assert_eq!(answer.status, 501, "{package}: {}", answer.text());
        assert_eq!(
            answer.text(),
            "task dumps need a binary built with RUSTFLAGS=\"--cfg tokio_unstable\" and the \
             `taskdump` feature, on Linux x86_64 or aarch64; this one lacks: \
             RUSTFLAGS=\"--cfg tokio_unstable\"\n",
            "{package}"
        );
        assert_eq!(answer.header("x-go-pprof"), Some("1"));
        let index = get(&example, "/debug/pprof/").text();
        assert!(
            index.contains("<b>tasks</b> is not available: task dumps need"),
            "{package}: {index}"
        );
    }
}

/// The dump of 10,000 idle tasks, in the release build (built with `--cfg tokio_unstable`).
fn the_task_dump_lists_every_idle_task_at_its_await_point(package: &str) {
    const N: usize = 10_000;
    let example = Example::start_release(package, &[]);
    let index = get(&example, "/debug/pprof/").text();
    assert!(index.contains(r#"href="tasks""#), "{package}: {index}");
    // One profiling job at a time: while a CPU profile runs, a dump is 409. (A dump that
    // reaches the server first takes the guard itself and the profile is the 409: try again.)
    let addr = example.addr;
    let busy = (0..5)
        .find_map(|_| {
            let profile =
                std::thread::spawn(move || fetch(addr, "/debug/pprof/profile?seconds=2", LONG));
            std::thread::sleep(Duration::from_millis(500));
            let dump = get(&example, "/debug/pprof/tasks");
            let profile = profile.join().unwrap().expect("the profile");
            (dump.status == 409 && profile.status == 200).then_some(dump)
        })
        .expect("a dump answered 409 while a CPU profile ran");
    assert!(
        busy.text().contains("profiling is already in use"),
        "{}",
        busy.text()
    );
    let spawned = get(&example, &format!("/idle-tasks?n={N}&seconds=300"));
    assert_eq!(spawned.text(), format!("spawned {N} idle tasks\n"));
    // tokio's unstable metrics join the stable ones in this build. (A current-thread
    // runtime, an actix worker's, counts no polls: only the family is checked.)
    let unstable = scrape(&example, LONG).expect("a scrape");
    let spawned = value(&unstable, "tokio_spawned_tasks_total");
    assert!(spawned >= N as f64, "{package}: {spawned} spawned");
    assert_eq!(per_worker(&unstable, "tokio_worker_polls_total").len(), 2);
    let rss_before = example.rss();
    let started = Instant::now();
    let answer = get(&example, "/debug/pprof/tasks");
    let took = started.elapsed();
    let rss_after = example.rss();
    let text = answer.text();
    assert_eq!(answer.status, 200, "{package}: {text}");
    assert_eq!(
        answer.header("content-type"),
        Some("text/plain; charset=utf-8")
    );
    // Each idle task waits in its future's poll (examples/shared/runtime_load.rs), inside
    // tokio's `Sleep` (tokio's src/time/sleep.rs): a release build names frames by their
    // short name, file and line (line tables only).
    let tasks: Vec<&str> = text.split("\ntask ").skip(1).collect();
    let idle = tasks
        .iter()
        .filter(|t| t.contains("shared/runtime_load.rs:") && t.contains("time/sleep.rs:"))
        .count();
    println!(
        "{package}: dump of {} tasks ({idle} idle) in {:.2} s, {} bytes, VmRSS {:.1} -> {:.1} MiB; header and first task:\n{}",
        tasks.len(),
        took.as_secs_f64(),
        answer.body.len(),
        rss_before as f64 / 1048576.0,
        rss_after as f64 / 1048576.0,
        text.split("\ntask ").take(2).collect::<Vec<_>>().join("\ntask ")
    );
    assert_eq!(idle, N, "{package}: idle tasks in the dump");
    assert!(text.starts_with("tokio task dump: "), "{package}");
    // The dump gave the profiler's guard back. (Checked with a CPU profile, not a second
    // dump: right after a dump of 10,000 tasks tokio's next multi-thread dump can hang, see
    // docs/pprof.md.)
    assert_eq!(get(&example, "/debug/pprof/profile?seconds=1").status, 200);
}

#[test]
fn axum_the_task_dump_lists_every_idle_task_at_its_await_point() {
    the_task_dump_lists_every_idle_task_at_its_await_point("example-axum");
}

#[test]
fn actix_the_task_dump_lists_every_idle_task_at_its_await_point() {
    the_task_dump_lists_every_idle_task_at_its_await_point("example-actix");
}
