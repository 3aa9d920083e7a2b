//! `ObserveLayer` on a tonic (gRPC) server, over real TCP sockets: a tonic server with the
//! layer in `Server::layer`, a tonic client over a `Channel`, and the exact values recorded.
//!
//! The service is written by hand (no protoc, no build script): prost messages with
//! `#[derive(prost::Message)]`, and a `tower::Service` + `NamedService` that dispatches on the
//! path to `tonic::server::Grpc`, as tonic-build's output does for a unary and a
//! server-streaming method. Its metrics are served by `ObserveLayer::routes()` on a port of
//! their own, as a gRPC service would expose them, so the `contract` helpers scrape them.
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::Stream;
use http::uri::PathAndQuery;
use http_body::Body as _;
use integration_tests::contract::{active, eventually, requests, scrape, sum, value};
use integration_tests::Sample;
use observe_tower::{ObserveLayer, ResponseBody};
use prost::Message as _;
use tokio::net::TcpListener;
use tonic::body::Body;
use tonic::server::{Grpc, NamedService};
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Channel, Server};
use tonic::{Code, Status, Streaming};
use tonic_prost::ProstCodec;

// ---- The messages (what protoc would generate from a .proto) ----

/// `observe.test.HelloRequest`.
#[derive(Clone, PartialEq, prost::Message)]
struct HelloRequest {
    #[prost(string, tag = "1")]
    name: String,
    /// The handler answers with a `NOT_FOUND` status instead of a reply.
    #[prost(bool, tag = "2")]
    fail: bool,
}

/// `observe.test.HelloReply`.
#[derive(Clone, PartialEq, prost::Message)]
struct HelloReply {
    #[prost(string, tag = "1")]
    message: String,
}

/// `observe.test.TicksRequest`.
#[derive(Clone, PartialEq, prost::Message)]
struct TicksRequest {
    /// How many ticks the stream sends.
    #[prost(uint32, tag = "1")]
    count: u32,
    /// The pause before each tick, the first one included.
    #[prost(uint32, tag = "2")]
    delay_ms: u32,
    /// The stream yields an `ABORTED` status instead of this tick, and ends.
    #[prost(uint32, optional, tag = "3")]
    fail_at: Option<u32>,
}

/// `observe.test.Tick`.
#[derive(Clone, PartialEq, prost::Message)]
struct Tick {
    #[prost(uint32, tag = "1")]
    index: u32,
    #[prost(string, tag = "2")]
    payload: String,
}

/// Tick `i`: its payload grows with `i`, so every gRPC frame has another length.
fn tick(i: u32) -> Tick {
    Tick {
        index: i,
        payload: "x".repeat(10 * i as usize + 1),
    }
}

fn reply(name: &str) -> HelloReply {
    HelloReply {
        message: format!("hello {name}"),
    }
}

/// The bytes of `message` in a gRPC response body: a 5-byte frame header (compression flag,
/// big-endian length) and the encoded message; no compression is negotiated.
fn frame_len(message: &impl prost::Message) -> f64 {
    (5 + message.encoded_len()) as f64
}

// ---- The server (what tonic-build would generate, much smaller) ----

const SERVICE: &str = "observe.test.Greeter";
const SAY_HELLO: &str = "/observe.test.Greeter/SayHello";
const TICKS: &str = "/observe.test.Greeter/Ticks";

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;
type TickStream = Pin<Box<dyn Stream<Item = Result<Tick, Status>> + Send>>;

/// `service Greeter { rpc SayHello(HelloRequest) returns (HelloReply);
/// rpc Ticks(TicksRequest) returns (stream Tick); }`
#[derive(Clone, Debug)]
struct GreeterServer;

impl NamedService for GreeterServer {
    const NAME: &'static str = SERVICE;
}

impl tower::Service<http::Request<Body>> for GreeterServer {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        match req.uri().path() {
            SAY_HELLO => Box::pin(async move {
                let mut grpc = Grpc::new(ProstCodec::<HelloReply, HelloRequest>::default());
                Ok(grpc.unary(tower::service_fn(say_hello), req).await)
            }),
            TICKS => Box::pin(async move {
                let mut grpc = Grpc::new(ProstCodec::<Tick, TicksRequest>::default());
                Ok(grpc.server_streaming(tower::service_fn(ticks), req).await)
            }),
            _ => Box::pin(async { Ok(Status::unimplemented("no such method").into_http()) }),
        }
    }
}

async fn say_hello(
    req: tonic::Request<HelloRequest>,
) -> Result<tonic::Response<HelloReply>, Status> {
    let req = req.into_inner();
    if req.fail {
        return Err(Status::not_found(format!("no greeting for {}", req.name)));
    }
    Ok(tonic::Response::new(reply(&req.name)))
}

async fn ticks(req: tonic::Request<TicksRequest>) -> Result<tonic::Response<TickStream>, Status> {
    let TicksRequest {
        count,
        delay_ms,
        fail_at,
    } = req.into_inner();
    let delay = Duration::from_millis(delay_ms.into());
    let stream = futures_util::stream::unfold(0, move |i| async move {
        if i == count || fail_at.is_some_and(|f| i > f) {
            return None;
        }
        tokio::time::sleep(delay).await;
        if fail_at == Some(i) {
            return Some((Err(Status::aborted("the ticks ran out")), i + 1));
        }
        Some((Ok(tick(i)), i + 1))
    });
    Ok(tonic::Response::new(Box::pin(stream) as TickStream))
}

// ---- The client (what tonic-build would generate) ----

struct GreeterClient(tonic::client::Grpc<Channel>);

impl GreeterClient {
    async fn connect(addr: SocketAddr) -> GreeterClient {
        let channel = Channel::from_shared(format!("http://{addr}"))
            .expect("a valid URI")
            .connect()
            .await
            .expect("connected to the gRPC server");
        GreeterClient(tonic::client::Grpc::new(channel))
    }

    async fn say_hello(&mut self, req: HelloRequest) -> Result<HelloReply, Status> {
        self.0.ready().await.expect("channel ready");
        let codec = ProstCodec::<HelloRequest, HelloReply>::default();
        let path = PathAndQuery::from_static(SAY_HELLO);
        let res = self.0.unary(tonic::Request::new(req), path, codec).await?;
        Ok(res.into_inner())
    }

    async fn ticks(&mut self, req: TicksRequest) -> Result<Streaming<Tick>, Status> {
        self.0.ready().await.expect("channel ready");
        let codec = ProstCodec::<TicksRequest, Tick>::default();
        let path = PathAndQuery::from_static(TICKS);
        let res = self
            .0
            .server_streaming(tonic::Request::new(req), path, codec)
            .await?;
        Ok(res.into_inner())
    }
}

// ---- The served app ----

/// What the request body handed to `ObserveLayer` looked like.
#[derive(Debug, Clone, PartialEq)]
struct RequestSeen {
    path: String,
    content_length: Option<String>,
    /// `size_hint()`: lower bound, upper bound.
    size_hint: (u64, Option<u64>),
}

/// What the response leaving `ObserveLayer` looked like.
#[derive(Debug, Clone, PartialEq)]
struct ResponseSeen {
    status: u16,
    /// `grpc-status` among the response *headers* (a trailers-only response).
    grpc_status: Option<String>,
    body_is_end_stream: bool,
}

#[derive(Debug, Default)]
struct Seen {
    requests: Vec<RequestSeen>,
    responses: Vec<ResponseSeen>,
}

/// A tonic server with the layer on loopback, and its metrics on another port.
struct App {
    /// Held for the whole test, like a real server holds its layer.
    _observe: ObserveLayer,
    grpc: SocketAddr,
    /// `http://ADDR` of `GET /metrics`, what the `contract` helpers take.
    metrics: String,
    /// What passed into and out of the layer, seen by a probe just outside it.
    seen: Arc<Mutex<Seen>>,
}

impl App {
    async fn start() -> App {
        let observe = ObserveLayer::new("grpc").with_route_fn(|parts| Some(parts.uri.path()));
        let seen = Arc::new(Mutex::new(Seen::default()));
        let (on_request, on_response) = (seen.clone(), seen.clone());
        // The probe sits outside the layer, so it sees the exact request the layer gets and
        // the exact response it hands on; it changes neither.
        let layers = tower::ServiceBuilder::new()
            .map_request(move |req: http::Request<Body>| {
                let hint = req.body().size_hint();
                on_request.lock().unwrap().requests.push(RequestSeen {
                    path: req.uri().path().to_owned(),
                    content_length: req
                        .headers()
                        .get(http::header::CONTENT_LENGTH)
                        .map(|v| v.to_str().unwrap().to_owned()),
                    size_hint: (hint.lower(), hint.upper()),
                });
                req
            })
            .map_response(move |res: http::Response<ResponseBody<Body>>| {
                on_response.lock().unwrap().responses.push(ResponseSeen {
                    status: res.status().as_u16(),
                    grpc_status: res
                        .headers()
                        .get("grpc-status")
                        .map(|v| v.to_str().unwrap().to_owned()),
                    body_is_end_stream: res.body().is_end_stream(),
                });
                res
            })
            .layer(observe.clone())
            .into_inner();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let grpc = listener.local_addr().unwrap();
        let server = Server::builder().layer(layers).add_service(GreeterServer);
        tokio::spawn(async move {
            server
                .serve_with_incoming(TcpIncoming::from(listener))
                .await
                .unwrap()
        });

        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let metrics = format!("http://{}", listener.local_addr().unwrap());
        let routes: axum::Router = observe.routes();
        tokio::spawn(async move { axum::serve(listener, routes).await.unwrap() });
        App {
            _observe: observe,
            grpc,
            metrics,
            seen,
        }
    }

    async fn client(&self) -> GreeterClient {
        GreeterClient::connect(self.grpc).await
    }

    async fn scrape(&self) -> Vec<Sample> {
        scrape(&self.metrics).await
    }
}

/// The labels of one series of `service="grpc"`.
fn series<'a>(route: &'a str, status: &'a str) -> [(&'a str, &'a str); 4] {
    [
        ("service", "grpc"),
        ("http_route", route),
        ("http_request_method", "POST"),
        ("http_response_status_code", status),
    ]
}

/// Every request `service="grpc"` recorded, whatever its labels.
fn all_requests(s: &[Sample]) -> f64 {
    sum(s, "http_server_requests_total", &[("service", "grpc")])
}

// ---- The tests ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unary_calls_are_counted_per_grpc_method_as_post_200() {
    let app = App::start().await;
    let mut client = app.client().await;
    const N: u32 = 7;
    for i in 0..N {
        let name = format!("caller {i}");
        let got = client
            .say_hello(HelloRequest {
                name: name.clone(),
                fail: false,
            })
            .await
            .expect("a reply");
        assert_eq!(got, reply(&name));
    }
    let s = app.scrape().await;
    assert_eq!(
        value(&s, "http_server_requests_total", &series(SAY_HELLO, "200")),
        f64::from(N),
        "{s:#?}"
    );
    // `requests` also checks that the duration histogram counted the same calls.
    assert_eq!(requests(&s, SAY_HELLO, "POST", "200"), f64::from(N));
    assert_eq!(all_requests(&s), f64::from(N), "nothing else recorded");
    assert_eq!(active(&s, "POST"), 0.0);
    // Response bytes are exact: one gRPC frame per reply ("hello caller 0" .. "hello caller 6").
    let replied: f64 = (0..N)
        .map(|i| frame_len(&reply(&format!("caller {i}"))))
        .sum();
    assert_eq!(replied, f64::from(N) * (5.0 + 16.0));
    assert_eq!(
        value(
            &s,
            "http_server_response_body_size_bytes_sum",
            &series(SAY_HELLO, "200")
        ),
        replied
    );
}

/// A gRPC error is not an HTTP error. A handler's `Err(Status)` goes out as a trailers-only
/// response: HTTP status 200, `grpc-status` in the response headers, an empty body. A stream
/// that fails mid-way goes out as HTTP 200 with its messages, and `grpc-status` in the
/// trailers. The layer records HTTP status codes, so both are recorded as
/// `http_response_status_code="200"`, like successes: with observe-tower, `requests_total`
/// and the duration histogram of a gRPC service count calls and time them, but their error
/// rate (`status=~"5.."`) only sees transport failures (an inner `Err`, a panic, a body that
/// fails, `499` for cancellations), never a failed call's gRPC status code.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grpc_error_status_is_recorded_as_http_200() {
    let app = App::start().await;
    let mut client = app.client().await;

    let err = client
        .say_hello(HelloRequest {
            name: "nobody".into(),
            fail: true,
        })
        .await
        .expect_err("the handler fails");
    assert_eq!(err.code(), Code::NotFound);

    let mut stream = client
        .ticks(TicksRequest {
            count: 10,
            delay_ms: 0,
            fail_at: Some(2),
        })
        .await
        .expect("the stream starts");
    assert_eq!(stream.message().await.unwrap(), Some(tick(0)));
    assert_eq!(stream.message().await.unwrap(), Some(tick(1)));
    let err = stream.message().await.expect_err("the stream fails");
    assert_eq!(err.code(), Code::Aborted);

    let s = app.scrape().await;
    assert_eq!(
        value(&s, "http_server_requests_total", &series(SAY_HELLO, "200")),
        1.0,
        "{s:#?}"
    );
    assert_eq!(requests(&s, TICKS, "POST", "200"), 1.0, "{s:#?}");
    assert_eq!(all_requests(&s), 2.0, "no other status recorded: {s:#?}");
    assert_eq!(active(&s, "POST"), 0.0);
    // The failed unary call sent no message at all; the failed stream its two ticks.
    assert_eq!(
        value(
            &s,
            "http_server_response_body_size_bytes_sum",
            &series(SAY_HELLO, "200")
        ),
        0.0
    );
    assert_eq!(
        value(
            &s,
            "http_server_response_body_size_bytes_sum",
            &series(TICKS, "200")
        ),
        frame_len(&tick(0)) + frame_len(&tick(1))
    );

    // What the layer was handed: the unary error's grpc-status is in the response headers
    // (it could be read there), the stream's is not (it comes later, in the trailers).
    let responses = app.seen.lock().unwrap().responses.clone();
    assert_eq!(
        responses,
        [
            ResponseSeen {
                status: 200,
                grpc_status: Some((Code::NotFound as i32).to_string()),
                body_is_end_stream: true,
            },
            ResponseSeen {
                status: 200,
                grpc_status: None,
                body_is_end_stream: false,
            },
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_stream_is_timed_and_sized_whole() {
    const K: u32 = 6;
    const D: u32 = 80;
    let app = App::start().await;
    let mut client = app.client().await;
    let mut stream = client
        .ticks(TicksRequest {
            count: K,
            delay_ms: D,
            fail_at: None,
        })
        .await
        .expect("the stream starts");
    let mut got = Vec::new();
    while let Some(tick) = stream.message().await.expect("a tick") {
        got.push(tick);
    }
    assert_eq!(got, (0..K).map(tick).collect::<Vec<_>>());

    let s = app.scrape().await;
    assert_eq!(requests(&s, TICKS, "POST", "200"), 1.0, "{s:#?}");
    assert_eq!(all_requests(&s), 1.0);
    assert_eq!(active(&s, "POST"), 0.0);
    // The handler pauses D ms before each of its K ticks: the recorded duration runs to the
    // end of the stream, not to the response head (which left before the first tick). A lower
    // bound only; the 2 ms allow for the recorder's clock (quanta) and tokio's timer being
    // different clocks.
    let seconds = value(
        &s,
        "http_server_request_duration_seconds_sum",
        &series(TICKS, "200"),
    );
    let at_least = f64::from(K * D) / 1000.0;
    assert!(
        seconds >= at_least - 0.002,
        "recorded {seconds} s, the stream took at least {at_least} s"
    );
    // Exactly the bytes of the K gRPC frames: 5-byte header + encoded tick, per tick.
    let frames: f64 = (0..K).map(|i| frame_len(&tick(i))).sum();
    assert_eq!(
        frames,
        f64::from(K) * 5.0 + (0..K).map(|i| tick(i).encoded_len() as f64).sum::<f64>()
    );
    assert_eq!(
        value(
            &s,
            "http_server_response_body_size_bytes_sum",
            &series(TICKS, "200")
        ),
        frames
    );
    assert_eq!(
        value(
            &s,
            "http_server_response_body_size_bytes_count",
            &series(TICKS, "200")
        ),
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_the_client_drops_is_recorded_as_499_once() {
    const RECEIVED: u32 = 3;
    let app = App::start().await;
    let mut client = app.client().await;
    let mut stream = client
        .ticks(TicksRequest {
            count: 10_000,
            delay_ms: 100,
            fail_at: None,
        })
        .await
        .expect("the stream starts");
    for i in 0..RECEIVED {
        assert_eq!(stream.message().await.unwrap(), Some(tick(i)));
    }
    let s = app.scrape().await;
    assert_eq!(active(&s, "POST"), 1.0, "the stream is in flight");
    assert_eq!(all_requests(&s), 0.0, "and not recorded yet");

    // Dropping the response stream resets the HTTP/2 stream (RST_STREAM CANCEL); hyper drops
    // the response body when it reads the reset, on the server's schedule.
    drop(stream);
    let cancelled = series(TICKS, "499");
    let s = eventually(&app.metrics, "the dropped stream is recorded", |s| {
        value(s, "http_server_requests_total", &cancelled) >= 1.0 && active(s, "POST") == 0.0
    })
    .await;
    assert_eq!(requests(&s, TICKS, "POST", "499"), 1.0, "{s:#?}");
    assert_eq!(all_requests(&s), 1.0, "recorded once, as 499 only: {s:#?}");

    // The channel still works, and nothing more is recorded for the dropped stream later.
    let got = client
        .say_hello(HelloRequest {
            name: "after".into(),
            fail: false,
        })
        .await
        .expect("a reply");
    assert_eq!(got, reply("after"));
    tokio::time::sleep(Duration::from_millis(200)).await;
    let s = app.scrape().await;
    assert_eq!(requests(&s, TICKS, "POST", "499"), 1.0);
    assert_eq!(requests(&s, SAY_HELLO, "POST", "200"), 1.0);
    assert_eq!(all_requests(&s), 2.0, "{s:#?}");
    assert_eq!(active(&s, "POST"), 0.0);
    // Exactly the frames the server wrote: the RECEIVED ticks the client read whole, or, if
    // the next tick (100 ms later) left before the reset arrived, that one too.
    let sent = value(&s, "http_server_response_body_size_bytes_sum", &cancelled);
    let received: f64 = (0..RECEIVED).map(|i| frame_len(&tick(i))).sum();
    let one_more = received + frame_len(&tick(RECEIVED));
    assert!(
        sent == received || sent == one_more,
        "recorded {sent} response bytes; the client received {received}"
    );
}

/// The request side of `docs/metrics.md`: with observe-tower's `tonic` feature, tonic's `Body`
/// is wrapped like axum's and the request size is the bytes the handler read. Without it the
/// size would be the body's exact size hint, and a gRPC client sends no `Content-Length` (its
/// body is a stream of length-prefixed messages): every request would weigh 0 bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_request_bodies_count_the_bytes_the_handler_read() {
    let app = App::start().await;
    let mut client = app.client().await;
    let big = HelloRequest {
        name: "y".repeat(1000),
        fail: false,
    };
    // What crosses the wire in the request body: one frame of 5 + 1003 bytes.
    assert_eq!(frame_len(&big), 1008.0);
    client.say_hello(big).await.expect("a reply");
    let ticks = TicksRequest {
        count: 1,
        delay_ms: 0,
        fail_at: None,
    };
    let mut stream = client
        .ticks(ticks.clone())
        .await
        .expect("the stream starts");
    while stream.message().await.expect("a tick").is_some() {}

    let s = app.scrape().await;
    for (route, sent) in [(SAY_HELLO, 1008.0), (TICKS, frame_len(&ticks))] {
        let labels = series(route, "200");
        assert_eq!(
            value(&s, "http_server_request_body_size_bytes_count", &labels),
            1.0,
            "{route}: observed once"
        );
        assert_eq!(
            value(&s, "http_server_request_body_size_bytes_sum", &labels),
            sent,
            "{route}: every byte of its request"
        );
    }
    // ...while the response side counts every byte.
    assert_eq!(
        value(
            &s,
            "http_server_response_body_size_bytes_sum",
            &series(SAY_HELLO, "200")
        ),
        frame_len(&reply(&"y".repeat(1000)))
    );

    // Why the body must be wrapped: the layer is handed no Content-Length and no exact hint.
    let requests = app.seen.lock().unwrap().requests.clone();
    let unknown = |path: &str| RequestSeen {
        path: path.to_owned(),
        content_length: None,
        size_hint: (0, None),
    };
    assert_eq!(requests, [unknown(SAY_HELLO), unknown(TICKS)]);
}

/// Every call opens one HTTP/2 stream: concurrent calls on one connection are all in flight
/// at once in the gauge, and all back out of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_streams_on_one_connection_are_each_in_flight() {
    const STREAMS: usize = 4;
    let app = App::start().await;
    let client = app.client().await;
    let mut calls = Vec::new();
    for _ in 0..STREAMS {
        // `tonic::client::Grpc` over a `Channel` is cheap to clone: same connection.
        let mut grpc = GreeterClient(client.0.clone());
        calls.push(tokio::spawn(async move {
            let mut stream = grpc
                .ticks(TicksRequest {
                    count: 2,
                    delay_ms: 400,
                    fail_at: None,
                })
                .await
                .expect("the stream starts");
            let mut n = 0;
            while stream.message().await.expect("a tick").is_some() {
                n += 1;
            }
            n
        }));
    }
    eventually(&app.metrics, "all streams in flight", |s| {
        active(s, "POST") == STREAMS as f64
    })
    .await;
    for call in calls {
        assert_eq!(call.await.unwrap(), 2);
    }
    let s = app.scrape().await;
    assert_eq!(active(&s, "POST"), 0.0);
    assert_eq!(requests(&s, TICKS, "POST", "200"), STREAMS as f64);
}
