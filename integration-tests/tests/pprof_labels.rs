//! CPU samples labelled with the request they were taken for, on both examples, read by the
//! real `go tool pprof`: the route's handler keeps its route while its task moves between
//! workers (`/work/inline` yields every millisecond) and on the blocking pool (`/work` hands
//! its work to `spawn_blocking` with `in_current_request`); `-tags` and `-tagfocus` show it;
//! `?http_route=` keeps one route; `http_server_cpu_seconds_total` adds up.
use std::time::Duration;

use integration_tests::contract::sum;
use integration_tests::pyroscope::{Mode, Receiver};
use integration_tests::{fetch, go_tool_pprof, parse_exposition, pprof_traces, Example, Load};

const LONG: Duration = Duration::from_secs(120);

/// A 5 s profile of `example` while `/work/inline`, `/work` and `/users/{id}` run side by
/// side, saved as a file.
fn profile_of_three_routes(example: &Example, name: &str) -> String {
    let inline = Load::start(example.addr, "/work/inline?ms=20", 1, u64::MAX);
    let blocking = Load::start(example.addr, "/work?ms=20", 1, u64::MAX);
    let users = Load::start(example.addr, "/users/7", 1, u64::MAX);
    // 499 Hz: enough samples of each route even when the machine is busy with other tests.
    let answer = fetch(
        example.addr,
        "/debug/pprof/profile?seconds=5&frequency=499",
        LONG,
    )
    .expect("profile");
    for load in [inline, blocking, users] {
        let (ok, failed) = load.finish();
        assert!(ok > 0 && failed == 0, "load: {ok} ok, {failed} failed");
    }
    assert_eq!(answer.status, 200, "{}", answer.text());
    let file = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    std::fs::write(&file, &answer.body).expect("write the profile");
    file.to_str().expect("a UTF-8 path").to_owned()
}

fn samples_follow_their_request_across_workers_and_the_blocking_pool(package: &str) {
    let example = Example::start(package, &[]);
    let file = profile_of_three_routes(&example, &format!("pprof-labels-{package}.pb.gz"));
    let traces = pprof_traces(&file, &[]);
    let seconds = |keep: &dyn Fn(&integration_tests::Trace) -> bool| -> f64 {
        traces.iter().filter(|t| keep(t)).map(|t| t.value).sum()
    };
    let route = |t: &integration_tests::Trace| t.label("http_route").map(str::to_owned);
    // The handler's own work, on whichever worker polled it.
    let inline =
        |t: &integration_tests::Trace| t.has_frame("work_inline") && t.has_frame("busy_work");
    let inline_all = seconds(&inline);
    let inline_right = seconds(&|t| inline(t) && route(t).as_deref() == Some("/work/inline"));
    // The work `/work` handed to the blocking pool.
    let blocking =
        |t: &integration_tests::Trace| t.has_frame("busy_work") && !t.has_frame("work_inline");
    let blocking_all = seconds(&blocking);
    let blocking_right = seconds(&|t| blocking(t) && route(t).as_deref() == Some("/work"));
    // A wrong route: the handler's frames under another route's label, or the CPU-burning
    // function labelled with the route that burns none.
    let labelled = seconds(&|t| route(t).is_some());
    let wrong = seconds(&|t| {
        let route = route(t);
        (t.has_frame("work_inline") && route.as_deref().is_some_and(|r| r != "/work/inline"))
            || (t.has_frame("busy_work") && route.as_deref() == Some("/users/{id}"))
    });
    println!(
        "{package}: /work/inline {:.1} % of {inline_all:.2} s labelled right; /work (blocking pool) {:.1} % of {blocking_all:.2} s; wrong {:.2} % of {labelled:.2} s labelled",
        100.0 * inline_right / inline_all,
        100.0 * blocking_right / blocking_all,
        100.0 * wrong / labelled,
    );
    // At least ~100 samples of each.
    assert!(inline_all > 0.2 && blocking_all > 0.2, "too few samples");
    assert!(inline_right >= 0.95 * inline_all);
    assert!(blocking_right >= 0.95 * blocking_all);
    assert!(wrong <= 0.01 * labelled);
    // The real tool: -tags lists each route's share, -tagfocus keeps one.
    let tags = go_tool_pprof(&["-tags", &file], LONG);
    let tags = String::from_utf8_lossy(&tags.stdout);
    for expected in [
        "http_route:",
        "/work/inline",
        "/work",
        "http_request_method:",
        "GET",
    ] {
        assert!(
            tags.contains(expected),
            "{expected} missing from -tags:\n{tags}"
        );
    }
    let top = go_tool_pprof(
        &["-tagfocus=http_route=^/work$", "-top", "-cum", &file],
        LONG,
    );
    let top = String::from_utf8_lossy(&top.stdout);
    // Below the threads' and the runtime's frames, which every sample passes through, the
    // first function of /work's own is the workload.
    let first_own = top
        .lines()
        .skip_while(|l| !l.trim_start().starts_with("flat"))
        .skip(1)
        .find(|l| l.contains("example_") || l.contains("busy_work"))
        .unwrap_or_default();
    assert!(
        first_own.contains("busy_work") || first_own.contains("work::{{closure}}"),
        "busy_work is not on top of /work's samples:\n{top}"
    );
}

fn a_route_filter_keeps_that_route_and_an_unknown_label_is_400(package: &str) {
    let example = Example::start(package, &[]);
    let unknown = fetch(
        example.addr,
        "/debug/pprof/profile?seconds=1&http_rout=/work",
        LONG,
    )
    .unwrap();
    assert_eq!(unknown.status, 400);
    assert!(
        unknown.text().contains("unknown label \"http_rout\""),
        "{}",
        unknown.text()
    );
    let unknown = fetch(
        example.addr,
        "/debug/pprof/flamegraph?seconds=1&user=1",
        LONG,
    )
    .unwrap();
    assert_eq!(unknown.status, 400, "{}", unknown.text());
    let inline = Load::start(example.addr, "/work/inline?ms=20", 1, u64::MAX);
    let blocking = Load::start(example.addr, "/work?ms=20", 1, u64::MAX);
    let answer = fetch(
        example.addr,
        "/debug/pprof/profile?seconds=3&http_route=%2Fwork",
        LONG,
    )
    .unwrap();
    let svg = fetch(
        example.addr,
        "/debug/pprof/flamegraph?seconds=2&http_route=/work/inline",
        LONG,
    )
    .unwrap();
    inline.finish();
    blocking.finish();
    assert_eq!(answer.status, 200, "{}", answer.text());
    let file = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("pprof-filtered-{package}.pb.gz"));
    std::fs::write(&file, &answer.body).unwrap();
    let traces = pprof_traces(file.to_str().unwrap(), &[]);
    assert!(
        traces.iter().any(|t| t.has_frame("busy_work")),
        "{traces:?}"
    );
    for trace in &traces {
        assert_eq!(trace.label("http_route"), Some("/work"), "{trace:?}");
    }
    let comments = go_tool_pprof(&["-comments", file.to_str().unwrap()], LONG);
    assert!(
        String::from_utf8_lossy(&comments.stdout).contains("only samples with http_route=/work")
    );
    assert_eq!(svg.status, 200);
    let svg = svg.text();
    assert!(
        svg.contains("work_inline"),
        "the filtered flame graph lacks its route's handler"
    );
}

/// 100 requests of `/work?ms=40` while the sampler runs (continuous profiling, to a local
/// stand-in for Pyroscope, keeps it running): the route's CPU counter reads 4.0 s.
fn the_routes_cpu_counter_adds_up_while_the_sampler_runs(package: &str) {
    let pyroscope = Receiver::start(Mode::Accept);
    let url = pyroscope.url();
    let example = Example::start(package, &[("OBSERVE_PYROSCOPE_URL", url.as_str())]);
    let cpu = |example: &Example| {
        let metrics = fetch(example.addr, "/metrics", LONG).unwrap().text();
        sum(
            &parse_exposition(&metrics),
            "http_server_cpu_seconds_total",
            &[("http_route", "/work")],
        )
    };
    let before = cpu(&example);
    for _ in 0..100 {
        assert_eq!(
            fetch(example.addr, "/work?ms=40", LONG).unwrap().status,
            200
        );
    }
    // The sampler hands samples on every 20 ms.
    std::thread::sleep(Duration::from_millis(200));
    let counted = cpu(&example) - before;
    println!("{package}: 100 × /work?ms=40 counted {counted:.3} s of CPU");
    assert!((3.4..=4.6).contains(&counted), "{counted:.3} s");
}

integration_tests::for_both_examples!(
    samples_follow_their_request_across_workers_and_the_blocking_pool,
    a_route_filter_keeps_that_route_and_an_unknown_label_is_400,
    the_routes_cpu_counter_adds_up_while_the_sampler_runs,
);
