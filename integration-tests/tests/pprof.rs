//! `/debug/pprof/*` of the examples, read by the real `go tool pprof` and headless Chromium.
//!
//! Each test starts its own example process: a process takes one CPU profile at a time, so
//! tests running in parallel cannot see each other's profiles.
use std::collections::HashMap;
use std::io::Write;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use integration_tests::{
    chromium_screenshot, fetch, go_tool_pprof, pprof_traces, Answer, Example, Load,
};

const LONG: Duration = Duration::from_secs(120);

fn get(example: &Example, path: &str) -> Answer {
    fetch(example.addr, path, LONG).unwrap_or_else(|e| panic!("GET {path}: {e}"))
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A 5 s CPU profile fetched over HTTP by `go tool pprof` while `/work` burns CPU, then read
/// in its views: the hottest functions, source lines, inlined frames and the mappings.
fn cpu_profile_under_load_shows_the_workload(package: &str) {
    let example = Example::start(package, &[]);
    let load = Load::start(example.addr, "/work?ms=20", 2, 20_000);
    let url = example.url("/debug/pprof/profile?seconds=5");
    let out = go_tool_pprof(&["-proto", &url], LONG);
    let (ok, failed) = load.finish();
    assert!(
        out.status.success(),
        "go tool pprof failed: {}",
        text(&out.stderr)
    );
    assert!(ok > 0, "the load generator got no answer");
    assert_eq!(
        failed, 0,
        "{failed} requests failed while profiling ({ok} ok)"
    );
    let file = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("pprof-workload-{package}.pb.gz"));
    std::fs::write(&file, &out.stdout).expect("write the profile");
    let file = file.to_str().expect("a UTF-8 path");
    let view = |args: &[&str]| {
        let out = go_tool_pprof(&[args, &[file]].concat(), LONG);
        let stdout = text(&out.stdout);
        assert!(
            out.status.success(),
            "go tool pprof {args:?} failed: {}\n{stdout}",
            text(&out.stderr)
        );
        stdout
    };
    let top = view(&["-top"]);
    assert!(top.contains("Type: cpu"), "{top}");
    assert!(
        top.contains("busy_work"),
        "the workload is missing from:\n{top}"
    );
    // Source lines: the function's source, numbered, with samples on its loop's lines.
    let list = view(&["-list", "busy_work::busy_work"]);
    assert!(
        list.contains("ROUTINE") && list.contains("busy_work.rs"),
        "{list}"
    );
    let sampled_lines = list
        .lines()
        .filter(|l| {
            let fields: Vec<&str> = l.split_whitespace().collect();
            fields.len() >= 3
                && fields[0].ends_with('s')
                && fields[0] != "."
                && fields[2].trim_end_matches(':').parse::<u32>().is_ok()
        })
        .count();
    assert!(sampled_lines >= 1, "no numbered line with samples:\n{list}");
    // Each location by file and line, inlined frames marked.
    let lines = view(&["-lines", "-top"]);
    assert!(lines.contains("busy_work.rs:"), "{lines}");
    assert!(lines.contains("(inline)"), "{lines}");
    // The mappings: the executable first, with its build id and what its locations carry.
    let raw = view(&["-raw"]);
    let first_mapping = raw
        .lines()
        .skip_while(|l| *l != "Mappings")
        .nth(1)
        .unwrap_or_default();
    assert!(
        first_mapping.contains(package) && first_mapping.contains("[FN][FL][LN][IN]"),
        "{raw}"
    );
}

/// A debug build's handler that burns 20 ms inline, on the async worker: its stacks are deep
/// (tokio, the framework, observe's layer, the handler), and every sample of it stays under
/// one root, so the flame graph shows it as one tower.
fn a_debug_build_handler_that_burns_inline_is_one_tower(package: &str) {
    let example = Example::start(package, &[]);
    let load = Load::start(example.addr, "/work/inline?ms=20&slice_ms=20", 2, 20_000);
    let answer = get(&example, "/debug/pprof/profile?seconds=5");
    load.finish();
    assert_eq!(answer.status, 200, "{}", answer.text());
    let file = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("pprof-tower-{package}.pb.gz"));
    std::fs::write(&file, &answer.body).expect("write the profile");
    let traces = pprof_traces(file.to_str().expect("a UTF-8 path"), &[]);
    // Each sample of the handler's work by its path from the root to the handler (or to the
    // mark of a truncated stack): one path is one tower.
    let mut towers: HashMap<Vec<&str>, f64> = HashMap::new();
    let mut total = 0.0;
    for trace in traces.iter().filter(|t| t.has_frame("busy_work")) {
        let mut path = Vec::new();
        for frame in trace.frames.iter().rev() {
            path.push(frame.as_str());
            if frame.contains("work_inline") || frame.contains("frames truncated") {
                break;
            }
        }
        *towers.entry(path).or_default() += trace.value;
        total += trace.value;
    }
    let (path, largest) = towers
        .iter()
        .max_by(|a, b| a.1.total_cmp(b.1))
        .expect("samples of busy_work");
    let shares: Vec<String> = towers
        .values()
        .map(|v| format!("{:.1} %", 100.0 * v / total))
        .collect();
    println!(
        "{package}: busy_work {total:.2} s in {} tower(s): {shares:?}",
        towers.len()
    );
    assert!(
        path.last().is_some_and(|f| f.contains("work_inline")),
        "the largest tower does not reach the handler: {path:#?}"
    );
    assert!(
        largest / total >= 0.95,
        "the largest tower holds {:.1} % of busy_work's {total:.2} s: {shares:?}",
        100.0 * largest / total
    );
}

fn heap_profile_reads_in_go_tool_pprof(package: &str) {
    let example = Example::start(package, &[]);
    // Something to have allocated: a few requests through the whole stack.
    for _ in 0..20 {
        assert_eq!(get(&example, "/users/1").status, 200);
    }
    let raw = get(&example, "/debug/pprof/heap");
    assert_eq!(raw.status, 200, "{}", raw.text());
    assert_eq!(raw.header("content-type"), Some("application/octet-stream"));
    assert_eq!(&raw.body[..2], &[0x1f, 0x8b], "gzip magic");
    let out = go_tool_pprof(&["-top", &example.url("/debug/pprof/heap")], LONG);
    let stdout = text(&out.stdout);
    assert!(
        out.status.success(),
        "go tool pprof failed: {}\n{stdout}",
        text(&out.stderr)
    );
    assert!(stdout.contains("Type: inuse_space"), "{stdout}");
    assert!(stdout.contains("flat%"), "no table in:\n{stdout}");
}

fn the_flame_graph_is_well_formed_svg_showing_the_workload(package: &str) {
    let example = Example::start(package, &[]);
    let load = Load::start(example.addr, "/work?ms=20", 2, 20_000);
    let svg = get(&example, "/debug/pprof/flamegraph?seconds=3");
    let (_, failed) = load.finish();
    assert_eq!(failed, 0);
    assert_eq!(svg.status, 200, "{}", svg.text());
    assert_eq!(svg.header("content-type"), Some("image/svg+xml"));
    let body = svg.text();
    assert!(
        body.starts_with("<?xml"),
        "{}",
        &body[..body.len().min(200)]
    );
    assert_well_formed_svg(&svg.body);
    assert!(
        body.contains("busy_work"),
        "no frame of the workload in the flame graph"
    );
}

/// Parses the whole document: tags balance, one `<svg>` root, nothing after it.
fn assert_well_formed_svg(bytes: &[u8]) {
    use quick_xml::events::Event;
    let mut reader = quick_xml::Reader::from_reader(bytes);
    reader.check_end_names(true);
    let mut buf = Vec::new();
    let (mut depth, mut roots, mut elements) = (0usize, Vec::new(), 0usize);
    loop {
        match reader.read_event_into(&mut buf) {
            Ok(Event::Start(e)) => {
                if depth == 0 {
                    roots.push(String::from_utf8_lossy(e.name().as_ref()).into_owned());
                }
                depth += 1;
                elements += 1;
            }
            Ok(Event::Empty(e)) => {
                if depth == 0 {
                    roots.push(String::from_utf8_lossy(e.name().as_ref()).into_owned());
                }
                elements += 1;
            }
            Ok(Event::End(_)) => depth = depth.checked_sub(1).expect("an end tag without a start"),
            Ok(Event::Eof) => break,
            Ok(_) => {}
            Err(e) => panic!(
                "not well-formed XML at byte {}: {e}",
                reader.buffer_position()
            ),
        }
        buf.clear();
    }
    assert_eq!(depth, 0, "unclosed elements");
    assert_eq!(roots, ["svg"], "the document's root elements");
    assert!(elements > 20, "a flame graph of {elements} elements");
}

fn bad_input_gets_its_status_and_a_one_line_reason_for_go_tool_pprof(package: &str) {
    let example = Example::start(package, &[]);
    let cases: &[(&str, u16, &str)] = &[
        (
            "/debug/pprof/profile?seconds=0",
            400,
            "seconds must be an integer from 1 to 60",
        ),
        (
            "/debug/pprof/profile?seconds=61",
            400,
            "seconds must be an integer from 1 to 60",
        ),
        (
            "/debug/pprof/profile?seconds=-3",
            400,
            "seconds must be an integer from 1 to 60",
        ),
        (
            "/debug/pprof/profile?seconds=1.5",
            400,
            "seconds must be an integer from 1 to 60",
        ),
        (
            "/debug/pprof/profile?seconds=abc",
            400,
            "seconds must be an integer from 1 to 60",
        ),
        (
            "/debug/pprof/profile?seconds=",
            400,
            "seconds must be an integer from 1 to 60",
        ),
        (
            "/debug/pprof/flamegraph?seconds=100000",
            400,
            "seconds must be an integer from 1 to 60",
        ),
        (
            "/debug/pprof/profile?seconds=1&frequency=0",
            400,
            "frequency must be an integer from 1 to 1000",
        ),
        (
            "/debug/pprof/profile?frequency=1001",
            400,
            "frequency must be an integer from 1 to 1000",
        ),
        (
            "/debug/pprof/flamegraph?frequency=fast",
            400,
            "frequency must be an integer from 1 to 1000",
        ),
        (
            "/debug/pprof/flamegraph?frequency=9.9",
            400,
            "frequency must be an integer from 1 to 1000",
        ),
        (
            "/debug/pprof/goroutine",
            404,
            "unknown profile \"goroutine\"",
        ),
        ("/debug/pprof/symbol", 404, "unknown profile \"symbol\""),
        ("/debug/pprof/cmdline", 404, "cmdline is disabled"),
    ];
    for &(path, status, reason) in cases {
        let a = get(&example, path);
        let body = a.text();
        assert_eq!(a.status, status, "{path}: {body}");
        assert!(body.contains(reason), "{path}: {body:?}");
        assert_eq!(body.trim_end().lines().count(), 1, "{path}: {body:?}");
        assert_eq!(
            a.header("content-type"),
            Some("text/plain; charset=utf-8"),
            "{path}"
        );
        assert_eq!(a.header("x-go-pprof"), Some("1"), "{path}");
    }
    // go tool pprof shows the reason.
    let out = go_tool_pprof(
        &["-top", &example.url("/debug/pprof/profile?seconds=61")],
        LONG,
    );
    assert!(!out.status.success());
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("400 Bad Request - seconds must be an integer from 1 to 60"),
        "{stderr}"
    );
}

fn a_second_cpu_profile_while_one_runs_is_409(package: &str) {
    let example = Example::start(package, &[]);
    let addr = example.addr;
    let first = std::thread::spawn(move || fetch(addr, "/debug/pprof/profile?seconds=4", LONG));
    std::thread::sleep(Duration::from_secs(1));
    for path in [
        "/debug/pprof/profile?seconds=1",
        "/debug/pprof/flamegraph?seconds=1",
    ] {
        let second = get(&example, path);
        assert_eq!(second.status, 409, "{path}: {}", second.text());
        assert_eq!(second.text(), "profiling is already in use: one CPU profile runs at a time per process; retry when it ends\n");
        assert_eq!(second.header("x-go-pprof"), Some("1"));
    }
    // The heap profile and the index are not CPU profiles: they still answer.
    assert_eq!(get(&example, "/debug/pprof/heap").status, 200);
    assert_eq!(get(&example, "/debug/pprof/").status, 200);
    let first = first.join().unwrap().expect("the first profile");
    assert_eq!(first.status, 200, "{}", first.text());
    assert_eq!(
        first.header("content-disposition"),
        Some("attachment; filename=\"profile\"")
    );
    // Free again afterwards.
    assert_eq!(get(&example, "/debug/pprof/profile?seconds=1").status, 200);
}

fn a_client_that_disconnects_frees_the_profiler(package: &str) {
    let example = Example::start(package, &[]);
    let mut stream = TcpStream::connect(example.addr).unwrap();
    write!(
        stream,
        "GET /debug/pprof/profile?seconds=60 HTTP/1.1\r\nHost: x\r\n\r\n"
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    // It is running: a second profile is refused.
    assert_eq!(get(&example, "/debug/pprof/profile?seconds=1").status, 409);
    drop(stream);
    let gone = Instant::now();
    // Bounded wait (the profile asked for 60 s): the next request gets the profiler.
    let mut statuses = Vec::new();
    while gone.elapsed() < Duration::from_secs(10) {
        let a = get(&example, "/debug/pprof/profile?seconds=1");
        statuses.push(a.status);
        if a.status == 200 {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        statuses.last(),
        Some(&200),
        "still busy after the client left: {statuses:?}"
    );
    eprintln!(
        "profiler free again {:?} after the disconnect ({} tries)",
        gone.elapsed(),
        statuses.len()
    );
}

fn repeated_profiles_under_load_break_no_response(package: &str) {
    let example = Example::start(package, &[]);
    // One client each: both kinds of request run through every profile, and the machine keeps
    // a core for the tests beside this one.
    let work = Load::start(example.addr, "/work?ms=5", 1, 50_000);
    let api = Load::start(example.addr, "/users/1", 1, 50_000);
    for round in 0..4 {
        let path = if round % 2 == 0 {
            "/debug/pprof/profile?seconds=2&frequency=1000"
        } else {
            "/debug/pprof/flamegraph?seconds=2&frequency=500"
        };
        let a = get(&example, path);
        assert_eq!(a.status, 200, "{path}: {}", a.text());
        assert_eq!(get(&example, "/debug/pprof/heap").status, 200);
    }
    let (work_ok, work_failed) = work.finish();
    let (api_ok, api_failed) = api.finish();
    assert_eq!(
        (work_failed, api_failed),
        (0, 0),
        "failed requests while profiling"
    );
    assert!(work_ok > 0 && api_ok > 0);
    assert_eq!(
        get(&example, "/users/2").status,
        200,
        "still serving afterwards"
    );
}

#[test]
fn axum_index_renders_in_chromium_and_every_link_answers_200() {
    let example = Example::start("example-axum", &[]);
    let index = get(&example, "/debug/pprof/");
    assert_eq!(index.status, 200);
    assert_eq!(
        index.header("content-type"),
        Some("text/html; charset=utf-8")
    );
    let html = index.text();
    // The example is built with line tables: no note asks for them.
    assert!(!html.contains("source lines"), "{html}");
    // Without the trailing slash: redirected, so relative links still resolve.
    let bare = get(&example, "/debug/pprof");
    assert_eq!(
        (bare.status, bare.header("location")),
        (308, Some("pprof/"))
    );

    let png = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("pprof-index.png");
    let _ = std::fs::remove_file(&png);
    let out = chromium_screenshot(&example.url("/debug/pprof/"), &png, 1000, 700);
    assert!(
        out.status.success(),
        "chromium failed: {}",
        text(&out.stderr)
    );
    let shot = std::fs::read(&png).expect("chromium wrote the screenshot");
    assert_eq!(&shot[..8], b"\x89PNG\r\n\x1a\n");
    // A blank 1000x700 page compresses to a few KB; text, table and borders do not.
    assert!(
        shot.len() > 15_000,
        "screenshot of {} bytes: blank?",
        shot.len()
    );
    eprintln!("index screenshot: {}", png.display());

    let links: Vec<&str> = html
        .split("href=\"")
        .skip(1)
        .filter_map(|s| s.split('"').next())
        .collect();
    assert_eq!(
        links,
        ["profile", "flamegraph?seconds=10", "heap", "allocs"],
        "the example serves CPU, heap and allocation profiles, not cmdline"
    );
    for link in links {
        let a = get(&example, &format!("/debug/pprof/{link}"));
        assert_eq!(a.status, 200, "{link}: {}", a.text());
        assert!(!a.body.is_empty(), "{link}");
    }
}

fn debug_routes_stay_out_of_the_red_metrics(package: &str) {
    let example = Example::start(package, &[]);
    for path in [
        "/debug/pprof/",
        "/debug/pprof",
        "/debug/pprof/nope",
        "/debug/pprof/profile?seconds=0",
        "/debug/pprof/tasks",
        "/users/1",
    ] {
        get(&example, path);
    }
    let metrics = get(&example, "/metrics").text();
    assert!(
        metrics.contains("http_route=\"/users/{id}\""),
        "the API is recorded"
    );
    assert!(
        !metrics.contains("/debug/pprof"),
        "debug routes were recorded:\n{metrics}"
    );
}

/// Behind a proxy on the same host every client is 127.0.0.1: the default loopback rule
/// refuses a request that carries a proxy header, and says what to use instead.
fn a_request_through_a_proxy_is_refused_by_the_loopback_rule(package: &str) {
    use std::io::Read;

    let example = Example::start(package, &[]);
    assert_eq!(
        get(&example, "/debug/pprof/").status,
        200,
        "direct, from loopback"
    );
    for header in [
        &b"X-Forwarded-For: 203.0.113.7"[..],
        b"Forwarded: for=203.0.113.7;proto=https",
        b"X-Real-IP: 203.0.113.7",
        // What nginx's `$proxy_add_x_forwarded_for` makes of a client's own header that is
        // not text: still a proxy header.
        b"X-Forwarded-For: \xff\xfe, 203.0.113.7",
    ] {
        let mut tcp = TcpStream::connect(example.addr).expect("connect");
        tcp.write_all(b"GET /debug/pprof/ HTTP/1.0\r\nHost: example\r\n")
            .and_then(|()| tcp.write_all(header))
            .and_then(|()| tcp.write_all(b"\r\n\r\n"))
            .expect("send");
        let header = text(header);
        let mut answer = Vec::new();
        tcp.read_to_end(&mut answer).expect("answer");
        let answer = text(&answer);
        assert!(
            answer.starts_with("HTTP/1.0 403") || answer.starts_with("HTTP/1.1 403"),
            "{header}: {answer}"
        );
        assert!(
            answer.contains("Access::bearer_token"),
            "{header}: {answer}"
        );
        assert!(
            answer.contains("serve_pprof_on_loopback"),
            "{header}: {answer}"
        );
    }
}

integration_tests::for_both_examples!(
    cpu_profile_under_load_shows_the_workload,
    a_debug_build_handler_that_burns_inline_is_one_tower,
    heap_profile_reads_in_go_tool_pprof,
    the_flame_graph_is_well_formed_svg_showing_the_workload,
    bad_input_gets_its_status_and_a_one_line_reason_for_go_tool_pprof,
    a_second_cpu_profile_while_one_runs_is_409,
    a_client_that_disconnects_frees_the_profiler,
    repeated_profiles_under_load_break_no_response,
    debug_routes_stay_out_of_the_red_metrics,
    a_request_through_a_proxy_is_refused_by_the_loopback_rule,
);
