//! Heap and allocation profiles of both examples (each wraps its allocator in observe's
//! sampling one: the system's in example-axum, mimalloc in example-actix), read by the real
//! `go tool pprof`: a 64 MiB leak through `/leak` in 4 KiB pieces reads 64 MiB ± 25 % at its
//! site in `inuse_space` at Go's rate; `-tagfocus=http_route=/leak` keeps it; `allocs` shows
//! `alloc_space` first; `-base` between two snapshots and a `?seconds=` delta find growth.
//!
//! At Go's rate (512 KiB) 64 MiB is 128 samples on average, a Poisson count: ± 25 % is 2.8
//! standard deviations, so that one check misses about once in 200 runs with a correct
//! sampler. The comparisons run at 64 KiB, where ± 25 % of 16 MiB is 4 of them.
use std::time::Duration;

use integration_tests::{fetch, go_tool_pprof, pprof_traces, Answer, Example};

const LONG: Duration = Duration::from_secs(120);
const MIB: f64 = 1024.0 * 1024.0;

fn get(example: &Example, path: &str) -> Answer {
    fetch(example.addr, path, LONG).unwrap_or_else(|e| panic!("GET {path}: {e}"))
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Fetches a profile and saves it as a file for `go tool pprof`.
fn save(example: &Example, path: &str, name: &str) -> String {
    let answer = get(example, path);
    assert_eq!(answer.status, 200, "{path}: {}", answer.text());
    let file = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    std::fs::write(&file, &answer.body).expect("write the profile");
    file.to_str().expect("a UTF-8 path").to_owned()
}

/// The bytes `go tool pprof` puts at the leak's site (samples whose stack holds `leak_piece`).
fn at_the_leak(file: &str, args: &[&str]) -> f64 {
    pprof_traces(file, &[&["-sample_index=inuse_space"], args].concat())
        .iter()
        .filter(|t| t.has_frame("leak_piece"))
        .map(|t| t.value)
        .sum()
}

fn assert_about(what: &str, bytes: f64, want_mib: f64) {
    let mib = bytes / MIB;
    assert!(
        (mib - want_mib).abs() <= 0.25 * want_mib,
        "{what}: {mib:.1} MiB, want {want_mib} MiB ± 25 %"
    );
    eprintln!("{what}: {mib:.2} MiB (want {want_mib})");
}

fn a_leak_is_found_at_its_site_and_route(package: &str) {
    let example = Example::start(package, &[]);
    let before = save(
        &example,
        "/debug/pprof/heap",
        &format!("heap-before-{package}.pb.gz"),
    );
    assert_eq!(at_the_leak(&before, &[]), 0.0, "nothing leaked yet");
    let leaked = get(&example, "/leak?kb=65536");
    assert_eq!(leaked.status, 200);
    assert_eq!(
        leaked.text(),
        "kept 65536 KiB more, 65536 KiB in all (at most 262144)\n"
    );
    // Requests of other routes beside it allocate too, and free what they allocate.
    for id in 0..50 {
        assert_eq!(get(&example, &format!("/users/{id}")).status, 200);
    }
    let after = save(
        &example,
        "/debug/pprof/heap",
        &format!("heap-after-{package}.pb.gz"),
    );

    assert_about("inuse_space at leak_piece", at_the_leak(&after, &[]), 64.0);
    let kept = at_the_leak(&after, &["-tagfocus=http_route=/leak"]);
    assert_about(
        "inuse_space at leak_piece, -tagfocus=http_route=/leak",
        kept,
        64.0,
    );
    // The server-side filter keeps the same samples, and only those.
    let filtered = save(
        &example,
        "/debug/pprof/heap?http_route=/leak",
        &format!("heap-leak-{package}.pb.gz"),
    );
    let traces = pprof_traces(&filtered, &["-sample_index=inuse_space"]);
    assert!(!traces.is_empty());
    assert!(traces
        .iter()
        .all(|t| t.label("http_route") == Some("/leak")));

    let tags = go_tool_pprof(&["-tags", &after], LONG);
    let tags = text(&tags.stdout);
    assert!(
        tags.contains("http_route") && tags.contains("/leak"),
        "{tags}"
    );
    eprintln!("go tool pprof -tags:\n{tags}");

    // The source line of the allocation, as for CPU profiles.
    let list = go_tool_pprof(
        &["-sample_index=inuse_space", "-list", "leak_piece", &after],
        LONG,
    );
    let list = text(&list.stdout);
    assert!(
        list.lines()
            .any(|l| l.contains("vec![fill | 1; 4096]") && l.contains("MB")),
        "no sampled source line in:\n{list}"
    );

    // allocs: the same samples, everything allocated shown first.
    let allocs = save(
        &example,
        "/debug/pprof/allocs",
        &format!("allocs-{package}.pb.gz"),
    );
    let top = go_tool_pprof(&["-top", &allocs], LONG);
    let top = text(&top.stdout);
    assert!(top.contains("Type: alloc_space"), "{top}");
    let allocated: f64 = pprof_traces(&allocs, &["-sample_index=alloc_space"])
        .iter()
        .filter(|t| t.has_frame("leak_piece"))
        .map(|t| t.value)
        .sum();
    assert_about("alloc_space at leak_piece", allocated, 64.0);
    let objects = go_tool_pprof(&["-sample_index=inuse_objects", "-top", &after], LONG);
    assert!(text(&objects.stdout).contains("Type: inuse_objects"));
}

/// At 64 KiB a sample (1,024 of them in 64 MiB) the figures are tight enough to compare two
/// snapshots: `-base` and a `?seconds=` delta both find the 16 MiB leaked between them.
fn growth_is_found_between_two_snapshots(package: &str) {
    let example = Example::start(package, &[("OBSERVE_HEAP_SAMPLE_BYTES", "65536")]);
    assert_eq!(get(&example, "/leak?kb=65536").status, 200);
    let before = save(
        &example,
        "/debug/pprof/heap",
        &format!("heap-before-{package}.pb.gz"),
    );
    assert_eq!(get(&example, "/leak?kb=16384").status, 200);
    let after = save(
        &example,
        "/debug/pprof/heap",
        &format!("heap-after-{package}.pb.gz"),
    );
    assert_about("inuse_space at leak_piece", at_the_leak(&after, &[]), 80.0);
    assert_about(
        "inuse_space at leak_piece, -base before",
        at_the_leak(&after, &["-base", &before]),
        16.0,
    );
    // A delta profile: what changed over 3 s, while 16 MiB more leak in the middle.
    let addr = example.addr;
    let more = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(1));
        fetch(addr, "/leak?kb=16384", LONG)
            .expect("leak more")
            .status
    });
    let delta = save(
        &example,
        "/debug/pprof/heap?seconds=3",
        &format!("heap-delta-{package}.pb.gz"),
    );
    assert_eq!(more.join().expect("leak thread"), 200);
    assert_about(
        "inuse_space at leak_piece over 3 s",
        at_the_leak(&delta, &[]),
        16.0,
    );
}

fn sampling_off_is_501_saying_how_to_turn_it_on(package: &str) {
    let example = Example::start(package, &[("OBSERVE_HEAP_SAMPLE_BYTES", "0")]);
    for profile in ["heap", "allocs"] {
        let a = get(&example, &format!("/debug/pprof/{profile}"));
        assert_eq!(a.status, 501, "{}", a.text());
        assert_eq!(a.header("x-go-pprof"), Some("1"));
        assert!(
            a.text().contains("OBSERVE_HEAP_SAMPLE_BYTES=0"),
            "{}",
            a.text()
        );
    }
    let index = get(&example, "/debug/pprof/").text();
    assert!(
        !index.contains("href=\"heap\""),
        "the index links a heap profile it cannot serve"
    );
    assert!(index.contains("heap</b> is not available"), "{index}");
    // CPU profiles do not depend on it.
    assert_eq!(get(&example, "/debug/pprof/profile?seconds=1").status, 200);
}

integration_tests::for_both_examples!(
    a_leak_is_found_at_its_site_and_route,
    growth_is_found_between_two_snapshots,
    sampling_off_is_501_saying_how_to_turn_it_on,
);
