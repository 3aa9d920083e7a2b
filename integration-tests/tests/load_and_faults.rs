//! Each release example under concurrent keep-alive load while `/metrics` is scraped and a CPU
//! profile runs, with faults mixed in: clients that leave mid-request, invalid and oversized
//! heads, odd methods, junk paths. Then, over the real sockets:
//!
//! - every request the load client read whole is counted, exactly, in its series of
//!   `http_server_requests_total`, and nothing else is: the only other series are the junk's
//!   (in bounded label values) and one `499` per client that went away mid-request;
//! - `http_server_active_requests` is back to 0;
//! - resident memory grew by at most [`RSS_GROWTH_BOUND`] (`docs/performance.md`);
//! - the service still answers, and the profiler is free.
//!
//! The figures print (`cargo test -p integration-tests --test load_and_faults -- --nocapture`).
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use integration_tests::load::{raw_exchange, LoadClient, SeriesKey, Target};
use integration_tests::{fetch, parse_exposition, Example};

const MIB: u64 = 1024 * 1024;
/// How much resident memory a load-and-fault run may leave behind (`docs/performance.md`).
const RSS_GROWTH_BOUND: u64 = 16 * MIB;
/// Keep-alive connections of the load client.
const CONNECTIONS: usize = 16;
/// How long the load runs.
const LOAD_FOR: Duration = Duration::from_secs(6);
/// Clients that ask for `/slow?ms=1000` and close their connection 100 ms later.
const LEAVE_SLOW: usize = 20;
/// Clients that read the first chunk of a slow stream and close their connection.
const LEAVE_STREAM: usize = 10;

/// The methods and routes a label may take in these examples (`docs/metrics.md`).
const METHODS: [&str; 10] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH", "_OTHER",
];
const ROUTES: [&str; 8] = [
    "/users/{id}",
    "/slow",
    "/fail",
    "/stream",
    "/work",
    "/api/items/{id}",
    "unmatched",
    "_overflow",
];

/// A request no ordinary client sends: its raw bytes, the status the example answers, and the
/// series it lands in (`None`: refused by the HTTP server before any route, so not recorded).
struct Junk {
    what: &'static str,
    raw: Vec<u8>,
    status: u16,
    series: Option<(&'static str, &'static str)>,
}

fn junk() -> Vec<Junk> {
    let head = |method: &str, path: &str| {
        format!("{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").into_bytes()
    };
    let header_of = |kib: usize| {
        format!(
            "GET /users/1 HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
            "a".repeat(kib * 1024)
        )
        .into_bytes()
    };
    let many_headers = format!(
        "GET /users/1 HTTP/1.1\r\nHost: x\r\n{}\r\n",
        (0..200)
            .map(|i| format!("X-H{i}: {i}\r\n"))
            .collect::<String>()
    );
    vec![
        Junk {
            what: "a header line without a colon",
            raw: b"GET /users/1 HTTP/1.1\r\nHost: x\r\nno colon here\r\n\r\n".to_vec(),
            status: 400,
            series: None,
        },
        Junk {
            what: "a control byte in a header value",
            raw: b"GET /users/1 HTTP/1.1\r\nHost: x\r\nX-A: a\x01b\r\n\r\n".to_vec(),
            status: 400,
            series: None,
        },
        Junk {
            what: "a TLS client hello on the plain port",
            raw: b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n".to_vec(),
            status: 400,
            series: None,
        },
        Junk {
            // Over the examples' head limit (128 KiB: actix-web's, and example-axum's, where
            // hyper's default would have taken ~400 KiB).
            what: "a 200 KiB header",
            raw: header_of(200),
            status: 431,
            series: None,
        },
        Junk {
            what: "a 512 KiB header",
            raw: header_of(512),
            status: 431,
            series: None,
        },
        Junk {
            what: "200 headers",
            raw: many_headers.into_bytes(),
            status: 431,
            series: None,
        },
        Junk {
            what: "method FOO",
            raw: head("FOO", "/users/1"),
            status: 405,
            series: Some(("_OTHER", "/users/{id}")),
        },
        Junk {
            what: "method get, lowercase",
            raw: head("get", "/api/items/3"),
            status: 405,
            series: Some(("_OTHER", "/api/items/{id}")),
        },
        Junk {
            what: "method PURGE on a junk path",
            raw: head("PURGE", "/wp-login.php"),
            status: 404,
            series: Some(("_OTHER", "unmatched")),
        },
        Junk {
            what: "dot segments",
            raw: head("GET", "/../../etc/passwd"),
            status: 404,
            series: Some(("GET", "unmatched")),
        },
        Junk {
            what: "percent-encoded junk",
            raw: head("GET", "/%00%ff/%2e%2e/x?%zz=1"),
            status: 404,
            series: Some(("GET", "unmatched")),
        },
        Junk {
            what: "a 4 KiB path",
            raw: head("GET", &format!("/{}", "x".repeat(4096))),
            status: 404,
            series: Some(("GET", "unmatched")),
        },
        Junk {
            what: "a route with a bad parameter",
            raw: head("DELETE", "/users/%ff"),
            status: 405,
            series: Some(("DELETE", "/users/{id}")),
        },
    ]
}

/// `http_server_requests_total` and `http_server_active_requests` of one scrape, without
/// `service`.
struct Scrape {
    requests: BTreeMap<SeriesKey, u64>,
    active: f64,
    rss_reported: f64,
}

fn scrape(addr: SocketAddr) -> Scrape {
    let answer = fetch(addr, "/metrics", Duration::from_secs(10)).expect("GET /metrics");
    assert_eq!(answer.status, 200, "{}", answer.text());
    let samples = parse_exposition(&answer.text());
    let mut requests = BTreeMap::new();
    let mut active = 0.0;
    let mut rss_reported = 0.0;
    for s in &samples {
        match s.name.as_str() {
            "http_server_requests_total" => {
                let method = s.label("http_request_method").expect("method label");
                let route = s.label("http_route").expect("route label");
                let status = s.label("http_response_status_code").expect("status label");
                assert!(METHODS.contains(&method), "method label {method:?}");
                assert!(ROUTES.contains(&route), "route label {route:?}");
                let status: u16 = status.parse().expect("a numeric status label");
                assert!((100..600).contains(&status), "status label {status}");
                requests.insert(
                    (method.to_owned(), route.to_owned(), status),
                    s.value as u64,
                );
            }
            "http_server_active_requests" => active += s.value,
            "process_resident_memory_bytes" => rss_reported = s.value,
            _ => {}
        }
    }
    Scrape {
        requests,
        active,
        rss_reported,
    }
}

/// Clients that send a request and close their connection before the answer (`/slow`), or
/// after the first bytes of a streamed answer (`/stream`).
fn leave_mid_request(addr: SocketAddr) -> (usize, usize) {
    let slow: Vec<TcpStream> = (0..LEAVE_SLOW)
        .map(|_| {
            let mut tcp = TcpStream::connect(addr).expect("connect");
            write!(tcp, "GET /slow?ms=1000 HTTP/1.1\r\nHost: x\r\n\r\n").expect("send");
            tcp
        })
        .collect();
    let mut streams = Vec::new();
    for _ in 0..LEAVE_STREAM {
        let mut tcp = TcpStream::connect(addr).expect("connect");
        tcp.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        write!(
            tcp,
            "GET /stream?chunks=200&delay_ms=20 HTTP/1.1\r\nHost: x\r\n\r\n"
        )
        .expect("send");
        // The status line, at least: the handler runs and its body has started.
        let mut first = Vec::new();
        let mut buf = [0u8; 64];
        while first.len() < 12 {
            let n = tcp.read(&mut buf).expect("the stream starts");
            assert!(n > 0, "closed before the status line");
            first.extend_from_slice(&buf[..n]);
        }
        assert!(
            first.starts_with(b"HTTP/1.1 200"),
            "{:?}",
            String::from_utf8_lossy(&first)
        );
        streams.push(tcp);
    }
    std::thread::sleep(Duration::from_millis(100));
    let counts = (slow.len(), streams.len());
    drop(slow);
    drop(streams);
    counts
}

fn load_and_faults(package: &str) {
    let started = Instant::now();
    let example = Example::start_release(package, &[]);
    let addr = example.addr;
    // Warm up every route and the allocator's arenas, so that the baseline is steady.
    let warm = LoadClient::start(addr, CONNECTIONS, &targets());
    std::thread::sleep(Duration::from_millis(500));
    let warm = warm.finish();
    assert_eq!(warm.failed, 0, "warm-up: {warm:?}");
    std::thread::sleep(Duration::from_millis(500));
    let rss_before = example.rss();

    let load = LoadClient::start(addr, CONNECTIONS, &targets());
    let load_started = Instant::now();
    // `/metrics`, scraped all along.
    let stop = Arc::new(AtomicBool::new(false));
    let scrapes = Arc::new(AtomicU64::new(0));
    let scraper = {
        let (stop, scrapes) = (stop.clone(), scrapes.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                scrape(addr);
                scrapes.fetch_add(1, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(50));
            }
        })
    };
    // A CPU profile, all along too.
    let profile = std::thread::spawn(move || {
        fetch(
            addr,
            "/debug/pprof/profile?seconds=3",
            Duration::from_secs(30),
        )
    });

    let (left_slow, left_stream) = leave_mid_request(addr);
    let mut junk_statuses = Vec::new();
    let mut expected_junk: BTreeMap<SeriesKey, u64> = BTreeMap::new();
    for case in junk() {
        let status = raw_exchange(addr, &case.raw, Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("{}: {e}", case.what));
        assert_eq!(status, Some(case.status), "{}", case.what);
        junk_statuses.push((case.what, case.status));
        if let Some((method, route)) = case.series {
            *expected_junk
                .entry((method.to_owned(), route.to_owned(), case.status))
                .or_default() += 1;
        }
    }
    std::thread::sleep(LOAD_FOR.saturating_sub(load_started.elapsed()));

    let report = load.finish();
    stop.store(true, Ordering::Relaxed);
    scraper
        .join()
        .expect("every scrape answered 200 with bounded labels");
    let profile = profile
        .join()
        .expect("profile thread")
        .expect("GET /debug/pprof/profile");
    assert_eq!(profile.status, 200, "{}", profile.text());
    assert_eq!(&profile.body[..2], &[0x1f, 0x8b], "a gzipped profile");
    assert_eq!(
        report.failed, 0,
        "the load client lost requests: {report:?}"
    );

    // What observe must have recorded: the warm-up, the load, the junk that reached a route,
    // and one 499 per client that left.
    let mut expected = warm.completed.clone();
    for (key, n) in report.completed.iter().chain(&expected_junk) {
        *expected.entry(key.clone()).or_default() += n;
    }
    *expected
        .entry(("GET".into(), "/slow".into(), 499))
        .or_default() += left_slow as u64;
    *expected
        .entry(("GET".into(), "/stream".into(), 499))
        .or_default() += left_stream as u64;
    // The clients that left are recorded when the server notices (actix: when the handler
    // ends); everything else when its body ended. Wait for the gauge, then compare.
    let deadline = Instant::now() + Duration::from_secs(15);
    let last = loop {
        let s = scrape(addr);
        if (s.active == 0.0 && s.requests == expected) || Instant::now() >= deadline {
            break s;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(
        last.active, 0.0,
        "http_server_active_requests after the load"
    );
    assert_eq!(
        last.requests, expected,
        "http_server_requests_total (left) against what the clients saw (right)"
    );
    let counted: u64 = last.requests.values().sum();
    let four_nineteens: u64 = last
        .requests
        .iter()
        .filter(|((_, _, status), _)| *status == 499)
        .map(|(_, n)| n)
        .sum();
    assert_eq!(four_nineteens, (LEAVE_SLOW + LEAVE_STREAM) as u64);

    let rss_after = example.rss();
    let growth = rss_after.saturating_sub(rss_before);
    assert_eq!(
        fetch(addr, "/users/9", Duration::from_secs(10))
            .expect("still answers")
            .status,
        200
    );
    assert_eq!(
        fetch(
            addr,
            "/debug/pprof/profile?seconds=1",
            Duration::from_secs(30)
        )
        .expect("profiler")
        .status,
        200,
        "the profiler is free again"
    );
    let mib = |b: u64| b as f64 / MIB as f64;
    println!(
        "{package}: {} requests read whole by {CONNECTIONS} keep-alive connections ({} with the warm-up), \
         {counted} counted in http_server_requests_total, 499s: {four_nineteens} \
         ({left_slow} left /slow, {left_stream} left /stream), junk: {junk_statuses:?}, \
         {} scrapes, RSS before {:.1} MiB, after {:.1} MiB (+{:.1}; the process reports {:.1} MiB), {:.1} s",
        report.total(),
        report.total() + warm.total(),
        scrapes.load(Ordering::Relaxed),
        mib(rss_before),
        mib(rss_after),
        mib(growth),
        last.rss_reported / MIB as f64,
        started.elapsed().as_secs_f64(),
    );
    assert!(
        growth <= RSS_GROWTH_BOUND,
        "{package}: RSS grew by {:.1} MiB",
        mib(growth)
    );
}

/// What the load client sends: every kind of status the API gives.
fn targets() -> Vec<Target> {
    let mut targets: Vec<Target> = (1..=8)
        .map(|i| Target::get(format!("/users/{i}"), "/users/{id}"))
        .collect();
    targets.extend((1..=4).map(|i| Target::get(format!("/api/items/{i}"), "/api/items/{id}")));
    targets.push(Target::get("/users/abc", "/users/{id}"));
    targets.push(Target::get("/fail", "/fail"));
    targets.push(Target::get("/slow?ms=1", "/slow"));
    targets.push(Target::get("/stream?chunks=3", "/stream"));
    targets.push(Target::get("/no/such/page", "unmatched"));
    targets
}

#[test]
fn axum_under_load_and_faults_counts_every_request() {
    load_and_faults("example-axum");
}

#[test]
fn actix_under_load_and_faults_counts_every_request() {
    load_and_faults("example-actix");
}
