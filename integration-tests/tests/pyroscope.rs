//! Continuous profiling of the examples to a local receiver that checks every push against
//! Pyroscope's documented ingest API; every pushed profile is read by the real `go tool pprof`.
//! No Pyroscope server can be installed here: `integration_tests::pyroscope::Receiver` stands
//! in for its ingest endpoint.
use std::io::Read;
use std::net::TcpListener;
use std::time::{Duration, Instant};

use integration_tests::pyroscope::{Mode, Push, Receiver};
use integration_tests::{fetch, go_tool_pprof, parse_exposition, pprof_traces, Example, Load};

const MIB: u64 = 1024 * 1024;

fn wait_for_pushes(receiver: &Receiver, n: usize, within: Duration) -> Vec<Push> {
    let deadline = Instant::now() + within;
    loop {
        let pushes = receiver.pushes();
        if pushes.len() >= n || Instant::now() > deadline {
            return pushes;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `observe_profile_uploads_total{result}` as `/metrics` serves it.
fn uploads(example: &Example, result: &str) -> f64 {
    let answer = fetch(example.addr, "/metrics", Duration::from_secs(10)).expect("/metrics");
    let text = String::from_utf8_lossy(&answer.body).into_owned();
    parse_exposition(&text)
        .iter()
        .find(|s| s.name == "observe_profile_uploads_total" && s.label("result") == Some(result))
        .map_or(0.0, |s| s.value)
}

/// The `cum%` of `function` in `go tool pprof -top` output, 0 if absent.
fn cumulative_percent(top: &str, function: &str) -> f64 {
    top.lines()
        .find(|l| l.trim_end().ends_with(function))
        .and_then(|l| l.split_whitespace().nth(4))
        .and_then(|p| p.trim_end_matches('%').parse().ok())
        .unwrap_or(0.0)
}

/// A pushed profile saved as `name` and read by `go tool pprof -top`: the file and the output.
fn read_pushed(push: &Push, name: &str) -> (std::path::PathBuf, String) {
    let profile = push.profile.as_ref().expect("a profile part");
    assert_eq!(&profile[..2], &[0x1f, 0x8b], "gzipped pprof");
    let file = std::env::temp_dir().join(name);
    std::fs::write(&file, profile).expect("write the pushed profile");
    let out = go_tool_pprof(&["-top", file.to_str().unwrap()], Duration::from_secs(60));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    (file, String::from_utf8_lossy(&out.stdout).into_owned())
}

fn gunzip(bytes: &[u8]) -> Vec<u8> {
    let mut raw = Vec::new();
    flate2::read::GzDecoder::new(bytes)
        .read_to_end(&mut raw)
        .expect("the profile is gzipped");
    raw
}

fn pushes_follow_the_ingest_api_and_profiles_show_the_workload(package: &str) {
    let receiver = Receiver::start(Mode::Accept);
    let url = receiver.url();
    let example = Example::start(
        package,
        &[
            ("OBSERVE_PYROSCOPE_URL", url.as_str()),
            ("OBSERVE_PYROSCOPE_EVERY_SECONDS", "2"),
            ("OBSERVE_PYROSCOPE_TENANT", "team-a"),
            ("OBSERVE_PYROSCOPE_USER", "user"),
            ("OBSERVE_PYROSCOPE_PASSWORD", "secret"),
        ],
    );
    // 20 ms of CPU work a request: it outweighs what a debug build spends on each request
    // around it (connection, parsing, routing), as the assertion below expects.
    // Two clients: the workload outweighs the push thread's own symbolizing (a debug build's
    // debug info), which the next window counts.
    let load = Load::start(example.addr, "/work?ms=20", 2, u64::MAX);
    // Each window: its CPU profile, then its allocation profile.
    let pushes = wait_for_pushes(&receiver, 6, Duration::from_secs(30));
    // Meanwhile an on-demand profile shares the sampler: no 409 because of the agent.
    let on_demand = fetch(
        example.addr,
        "/debug/pprof/profile?seconds=1",
        Duration::from_secs(30),
    )
    .expect("on-demand profile");
    let (ok, failed) = load.finish();
    assert_eq!(
        on_demand.status,
        200,
        "{}",
        String::from_utf8_lossy(&on_demand.body)
    );
    assert!(ok > 0 && failed == 0, "load: {ok} ok, {failed} failed");
    let (cpu, heap): (Vec<&Push>, Vec<&Push>) =
        pushes.iter().partition(|p| p.sample_type_config.is_none());
    assert!(cpu.len() >= 3, "{} CPU pushes in 30 s", cpu.len());
    assert!(heap.len() >= 2, "{} allocation pushes in 30 s", heap.len());
    for (i, push) in heap.iter().enumerate() {
        assert_eq!(push.path, "/ingest");
        assert_eq!(
            push.query["name"],
            format!("{package}{{service={package}}}")
        );
        assert_eq!(push.query["format"], "pprof");
        // Pyroscope reads the window's allocations as they are and averages what is allocated.
        let config = push
            .sample_type_config
            .as_ref()
            .expect("a sample_type_config");
        for (sample_type, units) in [
            ("alloc_objects", "objects"),
            ("alloc_space", "bytes"),
            ("inuse_objects", "objects"),
            ("inuse_space", "bytes"),
        ] {
            assert_eq!(config[sample_type]["units"], units, "{config}");
            assert_eq!(config[sample_type]["cumulative"], false, "{config}");
        }
        assert_eq!(config["inuse_space"]["aggregation"], "average");
        let (_, top) = read_pushed(push, &format!("observe-push-{package}-allocs-{i}.pb.gz"));
        assert!(top.contains("Type: alloc_space"), "push {i}:\n{top}");
    }
    for (i, push) in cpu.iter().enumerate() {
        assert_eq!(push.method, "POST");
        assert_eq!(push.path, "/ingest");
        let q = &push.query;
        assert_eq!(q["name"], format!("{package}{{service={package}}}"));
        assert_eq!(q["format"], "pprof");
        assert_eq!(q["sampleRate"], "99");
        assert_eq!(q["spyName"], "observe");
        let (from, until): (u64, u64) = (q["from"].parse().unwrap(), q["until"].parse().unwrap());
        // A window ends when the pusher takes it, every 2 s on schedule; a push that runs late
        // (symbolizing a debug build's debug info on a machine loaded by other tests) makes
        // the next window longer, never lost.
        assert!(
            from <= until && until - from <= 5,
            "from {from} until {until}"
        );
        assert_eq!(push.headers["x-scope-orgid"], "team-a");
        assert_eq!(push.headers["authorization"], "Basic dXNlcjpzZWNyZXQ=");
        let profile = push.profile.as_ref().expect("a profile part");
        let (file, top) = read_pushed(push, &format!("observe-push-{package}-{i}.pb.gz"));
        // The workload holds most of the CPU time (cumulative: in a debug build its flat time
        // sits in the iterator functions it calls).
        assert!(
            cumulative_percent(&top, "busy_work::busy_work") >= 50.0,
            "push {i}:\n{top}"
        );
        assert!(gunzip(profile).len() > 100);
        // The samples carry their request's labels, which Pyroscope's ingest turns into
        // series labels: most of the pushed CPU time is labelled with the loaded route.
        let traces = pprof_traces(file.to_str().unwrap(), &[]);
        let total: f64 = traces.iter().map(|t| t.value).sum();
        let work: f64 = traces
            .iter()
            .filter(|t| {
                t.label("http_route") == Some("/work")
                    && t.label("http_request_method") == Some("GET")
            })
            .map(|t| t.value)
            .sum();
        assert!(
            work >= 0.5 * total,
            "push {i}: {work:.2} s of {total:.2} s labelled /work"
        );
    }
    assert!(uploads(&example, "ok") >= 3.0);
    assert_eq!(uploads(&example, "failed"), 0.0);
}

#[test]
fn axum_pushes_follow_the_ingest_api_and_profiles_show_the_workload() {
    pushes_follow_the_ingest_api_and_profiles_show_the_workload("example-axum");
}

#[test]
fn actix_pushes_follow_the_ingest_api_and_profiles_show_the_workload() {
    pushes_follow_the_ingest_api_and_profiles_show_the_workload("example-actix");
}

/// A Pyroscope that refuses connections, then answers 500, then stalls: the service answers
/// all along, its memory stays flat, and the counter shows every dropped window.
#[test]
fn an_outage_drops_windows_and_counts_them_without_touching_the_service() {
    // A port nobody listens on yet: connections are refused.
    let port = TcpListener::bind("127.0.0.1:0")
        .expect("a free port")
        .local_addr()
        .unwrap();
    let example = Example::start(
        "example-axum",
        &[
            ("OBSERVE_PYROSCOPE_URL", &format!("http://{port}")),
            ("OBSERVE_PYROSCOPE_EVERY_SECONDS", "1"),
            ("OBSERVE_PYROSCOPE_TIMEOUT_MS", "500"),
        ],
    );
    let load = Load::start(example.addr, "/work?ms=2", 1, u64::MAX);
    std::thread::sleep(Duration::from_secs(2));
    let rss_start = example.rss();
    let mut phases = Vec::new();
    let mut phase = |name: &str, seconds: u64| {
        let before = uploads(&example, "failed");
        std::thread::sleep(Duration::from_secs(seconds));
        let after = uploads(&example, "failed");
        println!(
            "{name}: {} windows dropped in {seconds} s, RSS {:.1} MiB",
            after - before,
            example.rss() as f64 / MIB as f64
        );
        phases.push((name.to_owned(), after - before));
    };
    phase("refused", 5);
    let receiver = Receiver::start_on(port, Mode::Fail);
    phase("answering 500", 5);
    receiver.set_mode(Mode::Stall);
    phase("stalling", 8);
    let rss_end = example.rss();
    let (ok, failed) = load.finish();
    println!(
        "load: {ok} requests, {failed} failed; RSS {:.1} -> {:.1} MiB",
        rss_start as f64 / MIB as f64,
        rss_end as f64 / MIB as f64
    );
    assert_eq!(failed, 0, "every request was answered");
    for (name, dropped) in &phases {
        assert!(*dropped >= 1.0, "{name}: no window counted as dropped");
    }
    assert_eq!(uploads(&example, "ok"), 0.0);
    assert!(
        rss_end.saturating_sub(rss_start) < 8 * MIB,
        "memory grew by {} MiB during the outage",
        (rss_end - rss_start) / MIB
    );
    // The receiver saw the pushes it failed: the requests were well-formed all along.
    assert!(receiver
        .pushes()
        .iter()
        .all(|p| p.path == "/ingest" && p.profile.is_ok()));
}

/// A server that refuses a push (4xx: wrong credentials, limits) gets it once: the window is
/// counted as refused and dropped, never retried.
#[test]
fn a_refused_push_is_counted_and_not_retried() {
    let receiver = Receiver::start(Mode::Unauthorized);
    let url = receiver.url();
    let example = Example::start(
        "example-actix",
        &[
            ("OBSERVE_PYROSCOPE_URL", url.as_str()),
            ("OBSERVE_PYROSCOPE_EVERY_SECONDS", "1"),
        ],
    );
    let load = Load::start(example.addr, "/work?ms=2", 1, u64::MAX);
    wait_for_pushes(&receiver, 3, Duration::from_secs(30));
    let (ok, failed) = load.finish();
    assert!(ok > 0 && failed == 0, "load: {ok} ok, {failed} failed");
    // Counted after the answer: read the counter first, then the pushes the server saw.
    let refused = uploads(&example, "refused");
    let pushes = receiver.pushes().len() as f64;
    assert!(refused >= 3.0, "refused: {refused}");
    assert!(
        pushes - refused <= 1.0,
        "{pushes} pushes for {refused} refused windows"
    );
    assert_eq!(uploads(&example, "failed"), 0.0);
    assert_eq!(uploads(&example, "ok"), 0.0);
}
