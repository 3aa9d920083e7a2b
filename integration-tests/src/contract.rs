//! The metric contract (`docs/metrics.md`) written once for every framework: a table of
//! [`Case`]s (requests to send, and exactly which series they must add to in `/metrics`),
//! [`run_cases`] to play them against a test app over real TCP, and the sample helpers the
//! framework-specific tests share.
//!
//! Every framework's test app serves the routes the cases name: `GET /users/{id}`,
//! `GET /health`, `GET /fail` (answers 500), `POST /echo` (answers the body it read),
//! `POST /ignore-body` (answers `ignored` and never reads the body), any method on `/any`,
//! `GET /api/items/{id}`, `GET /api/v{version}/items/{id}`, `GET /api/v{version}/status`,
//! `GET /slow?ms=N` and the excluded `GET /metrics`.

use std::time::Duration;

use crate::{parse_exposition, promtool, Sample};

/// The values `http_request_method` may take: the nine standard methods, anything else
/// `_OTHER`.
const METHODS: [&str; 10] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH", "_OTHER",
];

/// Requests a [`Case`] sends, all alike.
#[derive(Debug, Clone)]
pub struct Request {
    /// The method as sent on the wire (case-sensitive: `get` is not `GET`).
    pub method: &'static str,
    /// Path and query.
    pub path: String,
    /// The request body, if any.
    pub body: Option<&'static str>,
    /// How many times it is sent.
    pub times: u32,
    /// The status the client must get back each time.
    pub status: u16,
}

impl Request {
    /// `method path`, sent once, answered with `status`.
    pub fn new(method: &'static str, path: impl Into<String>, status: u16) -> Request {
        Request {
            method,
            path: path.into(),
            body: None,
            times: 1,
            status,
        }
    }

    /// Sent `times` times instead of once.
    pub fn times(self, times: u32) -> Request {
        Request { times, ..self }
    }

    /// Sent with `body`.
    pub fn body(self, body: &'static str) -> Request {
        Request {
            body: Some(body),
            ..self
        }
    }
}

/// One labelled series of `http_server_requests_total` (and of the histograms with the same
/// labels), and how many requests a [`Case`] adds to it.
#[derive(Debug, Clone, Copy)]
pub struct Series {
    /// `http_route`.
    pub route: &'static str,
    /// `http_request_method`.
    pub method: &'static str,
    /// `http_response_status_code`.
    pub status: u16,
    /// Exactly how many requests the case adds.
    pub count: u32,
}

impl Series {
    fn labels(&self, status: &str) -> [(&'static str, String); 3] {
        [
            ("http_route", self.route.to_owned()),
            ("http_request_method", self.method.to_owned()),
            ("http_response_status_code", status.to_owned()),
        ]
    }

    fn holds(&self, sample: &Sample) -> bool {
        sample.label("http_route") == Some(self.route)
            && sample.label("http_request_method") == Some(self.method)
            && sample.label("http_response_status_code") == Some(&self.status.to_string())
    }
}

/// One behaviour of the contract: what to send, and every series it moves.
#[derive(Debug, Clone)]
pub struct Case {
    /// The behaviour, in a sentence.
    pub name: &'static str,
    /// Sent in order, one at a time.
    pub requests: Vec<Request>,
    /// Every series the requests add to, with exactly how much. No other `http_server_*`
    /// sample may change.
    pub series: Vec<Series>,
}

/// The cases every framework must pass, in the order [`run_cases`] plays them.
pub fn cases() -> Vec<Case> {
    vec![
        exact_counts(),
        nested_templates(),
        junk_paths(),
        invented_methods(),
    ]
}

fn exact_counts() -> Case {
    Case {
        name: "counts are exact per route, method and status; /metrics is not recorded",
        requests: vec![
            Request::new("GET", "/users/1", 200).times(3),
            Request::new("GET", "/users/2", 200).times(4),
            Request::new("GET", "/health", 200).times(2),
            Request::new("GET", "/fail", 500).times(3),
            Request::new("POST", "/echo", 200).body("hi").times(2),
            Request::new("POST", "/users/1", 405),
            Request::new("DELETE", "/users/2", 405),
            Request::new("GET", "/nowhere", 404),
            Request::new("GET", "/users/1/extra", 404),
            Request::new("GET", "/metrics", 200),
        ],
        series: vec![
            Series {
                route: "/users/{id}",
                method: "GET",
                status: 200,
                count: 7,
            },
            Series {
                route: "/health",
                method: "GET",
                status: 200,
                count: 2,
            },
            Series {
                route: "/fail",
                method: "GET",
                status: 500,
                count: 3,
            },
            Series {
                route: "/echo",
                method: "POST",
                status: 200,
                count: 2,
            },
            Series {
                route: "/users/{id}",
                method: "POST",
                status: 405,
                count: 1,
            },
            Series {
                route: "/users/{id}",
                method: "DELETE",
                status: 405,
                count: 1,
            },
            Series {
                route: "unmatched",
                method: "GET",
                status: 404,
                count: 2,
            },
        ],
    }
}

fn nested_templates() -> Case {
    Case {
        name: "nested routers and scopes keep their full templates",
        requests: vec![
            Request::new("GET", "/api/items/9", 200).times(4),
            Request::new("GET", "/api/v1/items/7", 200),
            Request::new("GET", "/api/v2/items/8", 200),
            Request::new("GET", "/api/v2/status", 200),
            Request::new("GET", "/api/v2/nothing", 404),
        ],
        series: vec![
            Series {
                route: "/api/items/{id}",
                method: "GET",
                status: 200,
                count: 4,
            },
            Series {
                route: "/api/v{version}/items/{id}",
                method: "GET",
                status: 200,
                count: 2,
            },
            Series {
                route: "/api/v{version}/status",
                method: "GET",
                status: 200,
                count: 1,
            },
            Series {
                route: "unmatched",
                method: "GET",
                status: 404,
                count: 1,
            },
        ],
    }
}

/// 1000 scanner probes (`/wp-admin/…/….php?x=…`) and 1000 paths of random characters
/// (dots, tildes, `%2F`), all different, from fixed seeds so a failure reproduces.
fn junk_paths() -> Case {
    fn xorshift(seed: &mut u64) -> u64 {
        *seed ^= *seed << 13;
        *seed ^= *seed >> 7;
        *seed ^= *seed << 17;
        *seed
    }
    let mut requests = Vec::new();
    let mut seed = 0x2545_f491_4f6c_dd1d;
    for _ in 0..1000 {
        let n = xorshift(&mut seed);
        let path = format!("/wp-admin/{n:x}/{}.php?x={}", n % 977, n >> 40);
        requests.push(Request::new("GET", path, 404));
    }
    let mut seed = 0x9e37_79b9_7f4a_7c15;
    let alphabet = b"abcdefghijklmnopqrstuvwxyz0123456789-._~%2F/";
    for i in 0..1000 {
        let mut path = String::from("/");
        for _ in 0..(8 + i % 24) {
            let n = xorshift(&mut seed) % alphabet.len() as u64;
            path.push(char::from(alphabet[n as usize]));
        }
        path.push_str(&format!("/{i}"));
        requests.push(Request::new("GET", path, 404));
    }
    Case {
        name: "two thousand junk paths stay in one unmatched series",
        requests,
        series: vec![Series {
            route: "unmatched",
            method: "GET",
            status: 404,
            count: 2000,
        }],
    }
}

fn invented_methods() -> Case {
    Case {
        name: "invented and lowercase methods are recorded as _OTHER",
        requests: vec![
            Request::new("PURGE", "/any", 200),
            Request::new("BREW", "/any", 200),
            Request::new("get", "/any", 200),
            Request::new("PATCH", "/any", 200),
            Request::new("BREW", "/users/1", 405),
            Request::new("get", "/users/1", 405),
            Request::new("PATCH", "/users/1", 405),
            Request::new("PURGE", "/nowhere", 404),
        ],
        series: vec![
            Series {
                route: "/any",
                method: "_OTHER",
                status: 200,
                count: 3,
            },
            Series {
                route: "/any",
                method: "PATCH",
                status: 200,
                count: 1,
            },
            Series {
                route: "/users/{id}",
                method: "_OTHER",
                status: 405,
                count: 2,
            },
            Series {
                route: "/users/{id}",
                method: "PATCH",
                status: 405,
                count: 1,
            },
            Series {
                route: "unmatched",
                method: "_OTHER",
                status: 404,
                count: 1,
            },
        ],
    }
}

/// Plays `cases` one after the other against the app at `base_url` (`http://ADDR`), whose
/// metrics carry `service="{service}"`. For each case it scrapes `/metrics` before and after
/// and asserts that:
///
/// - every request got its status;
/// - every expected series grew by exactly its count, in `http_server_requests_total`, the
///   duration `_count` and the duration `+Inf` bucket alike;
/// - `http_server_requests_total` grew by the sum of those counts (every request once, the
///   scrapes not at all), and no other `http_server_*` sample changed or appeared;
/// - every `http_server_*` sample carries the service label, every method label is one of the
///   nine standard methods or `_OTHER`, no series is labelled `/metrics`, and nothing is left
///   in flight.
pub async fn run_cases(base_url: &str, service: &str, cases: &[Case]) {
    let client = client();
    for case in cases {
        let before = scrape(base_url).await;
        for request in &case.requests {
            for _ in 0..request.times {
                let status = send_request(
                    &client,
                    base_url,
                    request.method,
                    &request.path,
                    request.body,
                )
                .await;
                assert_eq!(
                    status, request.status,
                    "{}: {} {}",
                    case.name, request.method, request.path
                );
            }
        }
        let after = scrape(base_url).await;
        check_series(case, &before, &after);
        check_nothing_else_moved(case, service, &before, &after);
    }
}

fn check_series(case: &Case, before: &[Sample], after: &[Sample]) {
    for series in &case.series {
        let status = series.status.to_string();
        let added = requests(after, series.route, series.method, &status)
            - requests(before, series.route, series.method, &status);
        assert_eq!(added, f64::from(series.count), "{}: {series:?}", case.name);
        let labels = series.labels(&status);
        let mut inf: Vec<(&str, &str)> = labels.iter().map(|(k, v)| (*k, v.as_str())).collect();
        inf.push(("le", "+Inf"));
        let bucket = "http_server_request_duration_seconds_bucket";
        assert_eq!(
            value(after, bucket, &inf) - value(before, bucket, &inf),
            added,
            "{}: the +Inf bucket of {series:?} ends at its count",
            case.name
        );
    }
    let total = |s: &[Sample]| sum(s, "http_server_requests_total", &[]);
    let expected: u32 = case.series.iter().map(|s| s.count).sum();
    assert_eq!(
        total(after) - total(before),
        f64::from(expected),
        "{}: every request recorded once, the scrapes not at all",
        case.name
    );
}

fn check_nothing_else_moved(case: &Case, service: &str, before: &[Sample], after: &[Sample]) {
    for sample in after.iter().filter(|s| s.name.starts_with("http_server_")) {
        assert_eq!(
            sample.label("service"),
            Some(service),
            "{}: {sample:?}",
            case.name
        );
        if let Some(method) = sample.label("http_request_method") {
            assert!(METHODS.contains(&method), "{}: {sample:?}", case.name);
        }
        assert_ne!(
            sample.label("http_route"),
            Some("/metrics"),
            "{}: the scrape route is excluded",
            case.name
        );
        if sample.name == "http_server_active_requests" {
            assert_eq!(
                sample.value, 0.0,
                "{}: left in flight: {sample:?}",
                case.name
            );
            continue;
        }
        let moved = before
            .iter()
            .find(|b| b.name == sample.name && b.labels == sample.labels)
            .is_none_or(|b| b.value != sample.value);
        assert!(
            !moved || case.series.iter().any(|s| s.holds(sample)),
            "{}: {sample:?} changed, but no expected series has its labels",
            case.name
        );
    }
}

/// Sends `n` concurrent `GET /slow?ms=3000` to the app at `base_url`, and checks that the
/// active-requests gauge counts all `n` while they are in flight (the scrapes themselves are
/// excluded, so they never show), then returns to 0 with all `n` recorded as 200.
pub async fn check_in_flight_requests(base_url: &str, n: usize) {
    let mut slow = Vec::new();
    for _ in 0..n {
        let url = format!("{base_url}/slow?ms=3000");
        slow.push(tokio::spawn(async move { client().get(url).send().await }));
    }
    eventually(base_url, &format!("{n} GET requests in flight"), |s| {
        active(s, "GET") == n as f64
    })
    .await;
    for request in slow {
        let res = request.await.expect("task").expect("response");
        assert_eq!(res.status(), 200);
        res.bytes().await.expect("body");
    }
    let s = scrape(base_url).await;
    assert_eq!(active(&s, "GET"), 0.0);
    assert_eq!(requests(&s, "/slow", "GET", "200"), n as f64);
}

/// A client that gives up on a slow request: it sends `GET /slow?ms=1500` to the app at
/// `base_url` (`http://ADDR`), waits 300 ms and closes its socket, as a client whose timeout
/// fired does. Checks that the request is recorded once, as `499` (nobody received the
/// handler's 200), and that nothing stays in flight.
pub async fn check_client_that_gives_up(base_url: &str) {
    use tokio::io::AsyncWriteExt;

    let addr = base_url.trim_start_matches("http://");
    let mut tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    tcp.write_all(b"GET /slow?ms=1500 HTTP/1.1\r\nHost: test\r\n\r\n")
        .await
        .expect("send the request");
    tokio::time::sleep(Duration::from_millis(300)).await;
    // A plain close (FIN), not a reset: what a client library does when its timeout fires.
    drop(tcp);
    let slow = |s: &[Sample], status| requests(s, "/slow", "GET", status);
    let s = eventually(base_url, "the abandoned request is recorded", |s| {
        active(s, "GET") == 0.0 && slow(s, "499") + slow(s, "200") >= 1.0
    })
    .await;
    assert_eq!(slow(&s, "499"), 1.0, "recorded as 499");
    assert_eq!(slow(&s, "200"), 0.0, "not as the response nobody received");
}

/// Body sizes are the bytes transferred, for the app at `base_url`: the request size is what
/// the handler read (a `Content-Length` upload and a chunked one without a length to trust,
/// nothing for a body the handler ignored or a `GET`), the response size what was sent.
pub async fn check_body_sizes(base_url: &str) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let res = client()
        .post(format!("{base_url}/echo"))
        .body(vec![b'x'; 1000])
        .send()
        .await
        .expect("upload");
    assert_eq!(res.bytes().await.expect("echo").len(), 1000);
    // A chunked upload of 10 x 300 bytes, written on the socket: no Content-Length.
    let addr = base_url.trim_start_matches("http://");
    let mut tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let mut upload = b"POST /echo HTTP/1.1\r\nHost: test\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    for _ in 0..10 {
        upload.extend_from_slice(b"12c\r\n");
        upload.extend_from_slice(&[b'y'; 300]);
        upload.extend_from_slice(b"\r\n");
    }
    upload.extend_from_slice(b"0\r\n\r\n");
    tcp.write_all(&upload).await.expect("chunked upload");
    let mut answer = Vec::new();
    tcp.read_to_end(&mut answer).await.expect("echo");
    assert!(
        answer.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&answer)
    );
    let res = client()
        .post(format!("{base_url}/ignore-body"))
        .body(vec![b'z'; 500])
        .send()
        .await
        .expect("ignored upload");
    assert_eq!(res.text().await.expect("body"), "ignored");
    assert_eq!(send(base_url, "GET", "/users/1").await, 200);

    let s = eventually(base_url, "the uploads are recorded", |s| {
        value(
            s,
            "http_server_request_body_size_bytes_count",
            &[("http_route", "/echo")],
        ) == 2.0
    })
    .await;
    let echo = [("http_route", "/echo")];
    let echo_sum = |name| value(&s, name, &echo);
    assert_eq!(echo_sum("http_server_request_body_size_bytes_sum"), 4000.0);
    assert_eq!(echo_sum("http_server_response_body_size_bytes_sum"), 4000.0);
    // 1000 B falls in le=1024, 3000 B in le=4096.
    let request_bucket = |le| {
        let labels = [("http_route", "/echo"), ("le", le)];
        value(&s, "http_server_request_body_size_bytes_bucket", &labels)
    };
    assert_eq!(request_bucket("1024"), 1.0);
    assert_eq!(request_bucket("4096"), 2.0);
    let ignored = [("http_route", "/ignore-body")];
    assert_eq!(
        value(&s, "http_server_request_body_size_bytes_sum", &ignored),
        0.0
    );
    assert_eq!(
        value(&s, "http_server_request_body_size_bytes_count", &ignored),
        1.0
    );
    assert_eq!(
        value(&s, "http_server_response_body_size_bytes_sum", &ignored),
        7.0
    );
    let users = [("http_route", "/users/{id}")];
    assert_eq!(
        value(&s, "http_server_request_body_size_bytes_sum", &users),
        0.0
    );
}

/// `/metrics` of the app at `base_url`, whose metrics carry `service="{service}"`: plain text
/// 0.0.4 by default, OpenMetrics or protobuf when `Accept` asks for them (as Prometheus asks),
/// each gzipped only when `Accept-Encoding` accepts gzip (by weight), `Vary: accept,
/// accept-encoding` always, and `HEAD` answered. Sends one `GET /users/1` first.
pub async fn check_metrics_encoding(base_url: &str, service: &str) {
    use std::io::Read;

    assert_eq!(send(base_url, "GET", "/users/1").await, 200);
    let get = |accept: Option<&'static str>| {
        let mut request = client().get(format!("{base_url}/metrics"));
        if let Some(accept) = accept {
            request = request.header("accept-encoding", accept);
        }
        request.send()
    };
    let line = format!(
        r#"http_server_requests_total{{http_request_method="GET",http_response_status_code="200",http_route="/users/{{id}}",service="{service}"}} 1"#
    );
    let plain = get(None).await.expect("plain");
    assert_eq!(plain.status(), 200);
    assert_eq!(plain.headers()["content-type"], TEXT_FORMAT);
    assert_eq!(plain.headers()["vary"], "accept, accept-encoding");
    assert!(plain.headers().get("content-encoding").is_none());
    let plain = plain.text().await.expect("text");
    assert!(plain.contains(&line), "{line}\nnot in\n{plain}");

    let gzipped = get(Some("br, gzip;q=0.8")).await.expect("gzipped");
    assert_eq!(gzipped.headers()["content-encoding"], "gzip");
    assert_eq!(gzipped.headers()["vary"], "accept, accept-encoding");
    assert_eq!(gzipped.headers()["content-type"], TEXT_FORMAT);
    let bytes = gzipped.bytes().await.expect("bytes");
    let mut text = String::new();
    flate2::read::GzDecoder::new(&bytes[..])
        .read_to_string(&mut text)
        .expect("valid gzip");
    assert!(bytes.len() < text.len(), "gzip makes it smaller");
    assert!(text.contains(&line));

    for refused in ["gzip;q=0, identity", "br"] {
        let answer = get(Some(refused)).await.expect("refused");
        assert!(
            answer.headers().get("content-encoding").is_none(),
            "{refused}"
        );
    }
    // The other formats, as Prometheus 2.42 asks for them with native histograms on, and off.
    let gunzip = |bytes: &[u8]| {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(bytes)
            .read_to_end(&mut out)
            .expect("valid gzip");
        out
    };
    for (accept, content_type, marker) in [
        (
            PROMETHEUS_NATIVE_ACCEPT,
            PROTOBUF_FORMAT,
            &b"http_server_requests_total"[..],
        ),
        (
            PROMETHEUS_ACCEPT,
            OPENMETRICS_FORMAT,
            &b"# TYPE http_server_requests counter\n"[..],
        ),
    ] {
        for gzip in [false, true] {
            let mut request = client()
                .get(format!("{base_url}/metrics"))
                .header("accept", accept);
            if gzip {
                request = request.header("accept-encoding", "gzip");
            }
            let answer = request.send().await.expect("scrape");
            assert_eq!(answer.status(), 200);
            assert_eq!(answer.headers()["content-type"], content_type);
            assert_eq!(answer.headers()["vary"], "accept, accept-encoding");
            assert_eq!(answer.headers().get("content-encoding").is_some(), gzip);
            let bytes = answer.bytes().await.expect("body").to_vec();
            let body = if gzip { gunzip(&bytes) } else { bytes };
            assert!(
                body.windows(marker.len()).any(|w| w == marker),
                "{accept}: {}",
                String::from_utf8_lossy(&body)
            );
            assert!(
                body.windows(29)
                    .any(|w| w == b"process_resident_memory_bytes"),
                "every family of the registry, in {content_type}"
            );
        }
    }
    let head = client()
        .head(format!("{base_url}/metrics"))
        .send()
        .await
        .expect("head");
    assert_eq!(head.status(), 200);
}

/// `Content-Type` of the Prometheus text format 0.0.4.
const TEXT_FORMAT: &str = "text/plain; version=0.0.4; charset=utf-8";
/// `Content-Type` of OpenMetrics 1.0.
const OPENMETRICS_FORMAT: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// `Content-Type` of the protobuf format.
const PROTOBUF_FORMAT: &str =
    "application/vnd.google.protobuf; proto=io.prometheus.client.MetricFamily; encoding=delimited";
/// The `Accept` header of Prometheus 2.42's scrapes (captured from a real one).
pub const PROMETHEUS_ACCEPT: &str = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
/// The same with `--enable-feature=native-histograms`.
pub const PROMETHEUS_NATIVE_ACCEPT: &str = "application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=delimited,application/openmetrics-text;version=1.0.0;q=0.8,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";

/// Sends a `GET` for each of `paths` and a `BREW /users/1` to the app at `base_url`, then runs
/// `promtool check metrics` on its `/metrics`, which must also carry the process metrics.
/// Returns the exposition for further checks.
pub async fn check_promtool_accepts(base_url: &str, paths: &[&str]) -> String {
    for path in paths {
        send(base_url, "GET", path).await;
    }
    send(base_url, "BREW", "/users/1").await;
    let text = scrape_text(base_url).await;
    assert!(text.contains("process_resident_memory_bytes"));
    assert_promtool_accepts(&text);
    text
}

/// A client that never goes through a proxy: the tests talk to loopback.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("HTTP client")
}

/// Sends `method path` (e.g. `"BREW", "/users/1"`) to `base_url`, reads the whole answer and
/// returns its status.
pub async fn send(base_url: &str, method: &str, path: &str) -> u16 {
    send_request(&client(), base_url, method, path, None).await
}

async fn send_request(
    client: &reqwest::Client,
    base_url: &str,
    method: &str,
    path: &str,
    body: Option<&'static str>,
) -> u16 {
    let method = reqwest::Method::from_bytes(method.as_bytes()).expect("a method token");
    let mut request = client.request(method, format!("{base_url}{path}"));
    if let Some(body) = body {
        request = request.body(body);
    }
    let res = request.send().await.expect("response");
    let status = res.status().as_u16();
    res.bytes().await.expect("whole body");
    status
}

/// `GET /metrics` from `base_url`, parsed.
pub async fn scrape(base_url: &str) -> Vec<Sample> {
    parse_exposition(&scrape_text(base_url).await)
}

/// `GET /metrics` from `base_url`, as served.
pub async fn scrape_text(base_url: &str) -> String {
    client()
        .get(format!("{base_url}/metrics"))
        .send()
        .await
        .expect("scrape")
        .text()
        .await
        .expect("exposition text")
}

/// Scrapes `base_url` until `check` holds (a dropped connection is recorded on the server's
/// schedule, not the client's), for at most 20 s, and returns the samples that satisfied it;
/// panics naming `what` when it never does.
pub async fn eventually(
    base_url: &str,
    what: &str,
    check: impl Fn(&[Sample]) -> bool,
) -> Vec<Sample> {
    for _ in 0..400 {
        let samples = scrape(base_url).await;
        if check(&samples) {
            return samples;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let last: Vec<String> = scrape(base_url)
        .await
        .iter()
        .filter(|s| {
            s.name == "http_server_requests_total" || s.name == "http_server_active_requests"
        })
        .map(|s| format!("{s:?}"))
        .collect();
    panic!("never happened: {what}; last scrape: {last:#?}");
}

/// The one sample of `name` whose labels include all of `labels`; 0 when there is none.
/// Panics when several match: use [`sum`] to add them up on purpose.
pub fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    let found: Vec<&Sample> = matching(samples, name, labels).collect();
    assert!(found.len() <= 1, "{name} {labels:?} matches {found:?}");
    found.first().map_or(0.0, |s| s.value)
}

/// The sum of the samples of `name` whose labels include all of `labels`.
pub fn sum(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    matching(samples, name, labels).map(|s| s.value).sum()
}

fn matching<'a>(
    samples: &'a [Sample],
    name: &'a str,
    labels: &'a [(&str, &str)],
) -> impl Iterator<Item = &'a Sample> {
    samples
        .iter()
        .filter(move |s| s.name == name && labels.iter().all(|(k, v)| s.label(k) == Some(v)))
}

/// `http_server_requests_total` for one route, method and status, after checking that the
/// duration histogram's `_count` agrees (both are written by the same observation).
pub fn requests(samples: &[Sample], route: &str, method: &str, status: &str) -> f64 {
    let labels = [
        ("http_route", route),
        ("http_request_method", method),
        ("http_response_status_code", status),
    ];
    let count = value(samples, "http_server_requests_total", &labels);
    let durations = value(
        samples,
        "http_server_request_duration_seconds_count",
        &labels,
    );
    assert_eq!(
        count, durations,
        "requests_total vs duration count for {labels:?}"
    );
    count
}

/// `http_server_active_requests` for `method`.
pub fn active(samples: &[Sample], method: &str) -> f64 {
    value(
        samples,
        "http_server_active_requests",
        &[("http_request_method", method)],
    )
}

/// Runs `promtool check metrics` on `exposition` and panics with its complaints unless it
/// passes.
pub fn assert_promtool_accepts(exposition: &str) {
    let out = crate::run_with_input(&promtool(), &["check", "metrics"], exposition.as_bytes());
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A collector whose `collect` waits while the gate is closed: registered on an app's
/// registry, it holds a `/metrics` encoding in flight for as long as a test needs.
#[derive(Clone, Default)]
pub struct Gate(std::sync::Arc<(std::sync::Mutex<GateState>, std::sync::Condvar)>);

/// Whether the gate is closed, and how many scrapes have reached it.
#[derive(Default)]
pub struct GateState {
    closed: bool,
    arrived: usize,
}

impl Gate {
    /// A closed gate (scrapes wait in `collect`).
    pub fn closed() -> Gate {
        let gate = Gate::default();
        gate.0 .0.lock().unwrap().closed = true;
        gate
    }

    /// Lets every waiting and future scrape through.
    pub fn open(&self) {
        self.0 .0.lock().unwrap().closed = false;
        self.0 .1.notify_all();
    }

    /// How many scrapes have reached the gate (been admitted and begun gathering).
    pub fn arrived(&self) -> usize {
        self.0 .0.lock().unwrap().arrived
    }
}

impl observe_core::prometheus::core::Collector for Gate {
    fn desc(&self) -> Vec<&observe_core::prometheus::core::Desc> {
        Vec::new()
    }

    fn collect(&self) -> Vec<observe_core::prometheus::proto::MetricFamily> {
        let (state, opened) = &*self.0;
        let mut state = state.lock().unwrap();
        state.arrived += 1;
        while state.closed {
            state = opened.wait(state).unwrap();
        }
        Vec::new()
    }
}

/// `/metrics` of an app built with `max_concurrent_scrapes(1)` and `scrape_timeout(300 ms)`,
/// whose registry holds `gate` (closed), service `service`: a scrape held in the gate makes
/// the next one `503` at once; the held one is `503` after the timeout and still counts in
/// flight (the next is refused again) until the gate opens; then scrapes answer `200`, and the
/// handler's own counters say 3 × `503` and no `200` before that one's.
pub async fn check_scrape_limits(base_url: &str, service: &str, gate: &Gate) {
    /// `GET /metrics`: the status and the body.
    async fn scrape_answer(base_url: String) -> (u16, String) {
        let answer = client()
            .get(format!("{base_url}/metrics"))
            .timeout(Duration::from_secs(10))
            .send()
            .await
            .expect("scrape");
        let status = answer.status().as_u16();
        (status, answer.text().await.expect("body"))
    }
    let scrape = || scrape_answer(base_url.to_owned());
    let held = tokio::spawn(scrape_answer(base_url.to_owned()));
    // Once the held scrape waits in the gate, the next one is refused at once.
    for _ in 0..500 {
        if gate.arrived() == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    assert_eq!(gate.arrived(), 1, "the held scrape reached the gate");
    let (status, refused) = scrape().await;
    assert_eq!(status, 503, "{refused}");
    assert!(refused.contains("too many concurrent scrapes"), "{refused}");
    let (status, body) = held.await.expect("held scrape");
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("took longer than 300ms"), "{body}");
    // Timed out, but still encoding in the gate: it still holds the only place.
    let (status, body) = scrape().await;
    assert_eq!((status, body.contains("too many")), (503, true), "{body}");
    gate.open();
    // Refused again until the held encoding has ended (it is finishing in the background).
    let (mut text, mut refused_meanwhile) = (String::new(), 0.0);
    for _ in 0..100 {
        let (status, body) = scrape().await;
        if status == 200 {
            text = body;
            break;
        }
        refused_meanwhile += 1.0;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let samples = parse_exposition(&text);
    let handled = |code: &str| {
        value(
            &samples,
            "observe_metrics_handler_requests_total",
            &[("service", service), ("code", code)],
        )
    };
    assert_eq!(handled("503"), 3.0 + refused_meanwhile, "{text}");
    // The held encoding ended after its 503 was sent: it is not counted again, as a 200 nobody
    // received (this scrape's own 200 is counted once it is answered).
    assert_eq!(handled("200"), 0.0, "{text}");
    assert_eq!(
        value(
            &samples,
            "observe_metrics_handler_requests_in_flight",
            &[("service", service)]
        ),
        1.0,
        "this scrape"
    );
    assert!(
        value(
            &samples,
            "observe_metrics_handler_encode_duration_seconds_count",
            &[("service", service)]
        ) >= 1.0
    );
}
