//! Clients that hold a connection without using it, against the release examples over TCP:
//! one that asks for a profile and never reads the answer, and many that open a connection
//! and send nothing, half a request head, a head one byte at a time, or nothing more after a
//! first request. None of them may hold the profiler beyond the profile's own length, nor a
//! connection (and its memory) beyond the server's header read timeout; and one that stops
//! reading a long answer is closed by example-axum's write stall timeout
//! (`docs/pprof.md`, "Clients that hold connections").
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use integration_tests::{fetch, Example};

const MIB: u64 = 1024 * 1024;
/// The examples close a connection whose request head is not complete 5 s after they began
/// waiting for it (axum: hyper's `header_read_timeout`; actix: `client_request_timeout` and
/// `keep_alive`). A connection still open this long after its last byte was not closed.
const CLOSED_WITHIN: Duration = Duration::from_secs(15);
/// What 200 idle connections may leave behind once closed.
const RSS_LEFT_BOUND: u64 = 4 * MIB;
/// What a profile may leave behind, read or not (`docs/pprof.md`, "Memory": the sampler's
/// buffers and symbol tables stay for the next profile).
const PROFILE_LEFT_BOUND: u64 = 8 * MIB;

/// How a held connection behaves.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Hold {
    /// Opens and sends nothing.
    Silent,
    /// Sends half a request head, then nothing.
    HalfHead,
    /// Sends a request head one byte every 500 ms, never finishing it.
    Trickle,
    /// Sends one whole request, reads its answer, then nothing (an idle keep-alive).
    IdleKeepAlive,
    /// Asks for a 2 s CPU profile and never reads the answer.
    UnreadProfile,
}

/// When the server closed the connection, counted from when it began waiting for a request
/// head (the connection's opening, or the end of its previous answer), and the status it
/// answered, if any.
#[derive(Debug)]
struct Held {
    hold: Hold,
    closed_after: Option<Duration>,
    answered: Option<u16>,
}

fn hold(addr: SocketAddr, hold: Hold) -> std::thread::JoinHandle<Held> {
    let mut tcp = TcpStream::connect(addr).expect("connect");
    let tick = Duration::from_millis(500);
    tcp.set_read_timeout(Some(tick)).expect("timeout");
    match hold {
        Hold::Silent | Hold::Trickle => {}
        Hold::HalfHead => tcp
            .write_all(b"GET /users/1 HTTP/1.1\r\nHost: x\r\nX-A:")
            .expect("send"),
        Hold::IdleKeepAlive => {
            tcp.write_all(b"GET /users/1 HTTP/1.1\r\nHost: x\r\n\r\n")
                .expect("send");
        }
        Hold::UnreadProfile => tcp
            .write_all(b"GET /debug/pprof/profile?seconds=2 HTTP/1.1\r\nHost: x\r\n\r\n")
            .expect("send"),
    }
    std::thread::spawn(move || {
        if hold == Hold::UnreadProfile {
            // Never read while the profile runs and is written, then see what is left.
            std::thread::sleep(Duration::from_secs(3));
        }
        let trickle = b"GET /users/1 HTTP/1.1\r\nHost: x\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
        let mut sent = 0;
        let mut since = Instant::now();
        let mut answer = Vec::new();
        let mut buf = [0u8; 8192];
        let closed_after = loop {
            if hold == Hold::Trickle
                && sent < trickle.len()
                && tcp.write_all(&trickle[sent..=sent]).is_ok()
            {
                sent += 1;
            }
            match tcp.read(&mut buf) {
                Ok(0) => break Some(since.elapsed()),
                Ok(n) => {
                    answer.extend_from_slice(&buf[..n]);
                    if matches!(hold, Hold::IdleKeepAlive | Hold::UnreadProfile) {
                        // The server waits for the next head once its answer is out.
                        since = Instant::now();
                    }
                }
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(_) => break Some(since.elapsed()),
            }
            if since.elapsed() > CLOSED_WITHIN {
                break None;
            }
        };
        let answered = String::from_utf8_lossy(&answer)
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok());
        Held {
            hold,
            closed_after,
            answered,
        }
    })
}

fn held_connections_are_closed_and_leave_nothing(package: &str) {
    let example = Example::start_release(package, &[]);
    let addr = example.addr;
    for _ in 0..20 {
        assert_eq!(
            fetch(addr, "/users/1", Duration::from_secs(10))
                .unwrap()
                .status,
            200
        );
    }
    std::thread::sleep(Duration::from_millis(500));
    let rss_before = example.rss();
    let mut holds = Vec::new();
    for (kind, n) in [
        (Hold::Silent, 100),
        (Hold::HalfHead, 60),
        (Hold::Trickle, 20),
        (Hold::IdleKeepAlive, 20),
    ] {
        holds.extend((0..n).map(|_| hold(addr, kind)));
    }
    // Meanwhile the service answers everyone else.
    std::thread::sleep(Duration::from_secs(1));
    let rss_holding = example.rss();
    assert_eq!(
        fetch(addr, "/users/2", Duration::from_secs(10))
            .unwrap()
            .status,
        200,
        "the service answers while 200 connections are held"
    );
    let held: Vec<Held> = holds
        .into_iter()
        .map(|h| h.join().expect("holder"))
        .collect();
    let open: Vec<&Held> = held.iter().filter(|h| h.closed_after.is_none()).collect();
    let slowest = held.iter().filter_map(|h| h.closed_after).max();
    let answers: Vec<(Hold, Option<u16>)> = held.iter().map(|h| (h.hold, h.answered)).collect();
    std::thread::sleep(Duration::from_millis(500));
    let rss_after = example.rss();
    let mib = |b: u64| b as f64 / MIB as f64;
    println!(
        "{package}: 200 held connections; {} still open after {CLOSED_WITHIN:?}, the last closed {slowest:?} after the server began waiting for its head; \
         RSS before {:.1} MiB, holding {:.1} MiB, after {:.1} MiB; answers {:?}",
        open.len(),
        mib(rss_before),
        mib(rss_holding),
        mib(rss_after),
        distinct(&answers),
    );
    assert!(
        open.is_empty(),
        "{package}: not closed by the server: {open:?}"
    );
    for h in &held {
        if h.hold == Hold::IdleKeepAlive {
            assert_eq!(h.answered, Some(200), "{h:?}");
        }
    }
    assert!(
        rss_after.saturating_sub(rss_before) <= RSS_LEFT_BOUND,
        "{package}: {:.1} MiB left behind",
        mib(rss_after.saturating_sub(rss_before))
    );
    assert_eq!(
        fetch(addr, "/users/3", Duration::from_secs(10))
            .unwrap()
            .status,
        200
    );
}

fn distinct(answers: &[(Hold, Option<u16>)]) -> Vec<(Hold, Option<u16>, usize)> {
    let mut out: Vec<(Hold, Option<u16>, usize)> = Vec::new();
    for &(hold, status) in answers {
        match out.iter_mut().find(|(h, s, _)| *h == hold && *s == status) {
            Some(entry) => entry.2 += 1,
            None => out.push((hold, status, 1)),
        }
    }
    out
}

fn a_client_that_never_reads_its_profile_holds_nothing(package: &str) {
    let example = Example::start_release(package, &[]);
    let addr = example.addr;
    std::thread::sleep(Duration::from_millis(500));
    let rss_before = example.rss();
    let started = Instant::now();
    let unread = hold(addr, Hold::UnreadProfile);
    std::thread::sleep(Duration::from_millis(500));
    // It runs: a second profile is refused.
    assert_eq!(
        fetch(
            addr,
            "/debug/pprof/profile?seconds=1",
            Duration::from_secs(10)
        )
        .unwrap()
        .status,
        409
    );
    // Once its 2 s are over, the profiler is free although nobody read the profile.
    std::thread::sleep(Duration::from_secs(2));
    let mut statuses = Vec::new();
    while started.elapsed() < Duration::from_secs(10) {
        let status = fetch(
            addr,
            "/debug/pprof/profile?seconds=1",
            Duration::from_secs(10),
        )
        .unwrap()
        .status;
        statuses.push(status);
        if status == 200 {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        statuses.last(),
        Some(&200),
        "the profiler stayed busy: {statuses:?}"
    );
    let unread = unread.join().expect("holder");
    let rss_after = example.rss();
    println!(
        "{package}: a profile nobody read: profiler free again after {statuses:?}, connection closed {:?} after the profile was read, RSS {:.1} -> {:.1} MiB",
        unread.closed_after,
        rss_before as f64 / MIB as f64,
        rss_after as f64 / MIB as f64
    );
    assert_eq!(
        unread.answered,
        Some(200),
        "the profile was sent: {unread:?}"
    );
    assert!(
        unread.closed_after.is_some(),
        "{package}: the connection was never closed"
    );
    assert!(
        rss_after.saturating_sub(rss_before) <= PROFILE_LEFT_BOUND,
        "{package}: {:.1} MiB left behind",
        rss_after.saturating_sub(rss_before) as f64 / MIB as f64
    );
}

/// A client that stops reading a long answer: `example-axum` closes the connection once its
/// writes have made no progress for its write stall timeout (10 s), and what was not sent is
/// dropped. Reading afterwards gets what the kernel held, then the end: never the whole answer.
#[test]
fn a_client_that_stops_reading_is_closed_after_the_write_stall_timeout() {
    const WRITE_STALL_TIMEOUT: Duration = Duration::from_secs(10);
    let example = Example::start_release("example-axum", &[]);
    // A small receive buffer, so the answer stops at the server, not in the kernel.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .expect("runtime");
    let tcp = runtime.block_on(async {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket.set_recv_buffer_size(4096).expect("SO_RCVBUF");
        socket.connect(example.addr).await.expect("connect")
    });
    let mut tcp = tcp.into_std().expect("std stream");
    tcp.set_nonblocking(false).expect("blocking");
    // 64 lines of 256 KiB: 16 MiB, more than the kernel's buffers hold.
    tcp.write_all(b"GET /stream?chunks=64&pad=262144 HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("send");
    let started = Instant::now();
    std::thread::sleep(WRITE_STALL_TIMEOUT + Duration::from_secs(3));
    tcp.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let mut answer = Vec::new();
    let mut buf = [0u8; 65536];
    let ended = loop {
        match tcp.read(&mut buf) {
            Ok(0) => break "closed",
            Ok(n) => answer.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                break "still open"
            }
            Err(_) => break "reset",
        }
    };
    let text = String::from_utf8_lossy(&answer);
    println!(
        "example-axum: a /stream answer nobody read for {:?}: {} bytes arrived afterwards, then the connection was {ended}",
        started.elapsed(),
        answer.len()
    );
    assert!(text.starts_with("HTTP/1.1 200"), "{text:.200}");
    assert!(
        !text.contains("chunk 63 "),
        "the whole answer was still there to read ({} bytes)",
        answer.len()
    );
    assert_ne!(ended, "still open");
}

integration_tests::for_both_examples!(
    held_connections_are_closed_and_leave_nothing,
    a_client_that_never_reads_its_profile_holds_nothing,
);
