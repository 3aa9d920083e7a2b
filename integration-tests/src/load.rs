//! A keep-alive HTTP/1.1 load client over plain TCP that counts every response it read whole,
//! by the series observe should have recorded it under, and the raw exchanges the fault tests
//! send (bytes in, the status line out) that no ordinary client would produce.

use std::collections::BTreeMap;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

/// A request the load client sends, and the route template observe labels it with.
#[derive(Debug, Clone)]
pub struct Target {
    /// The method, e.g. `GET`.
    pub method: &'static str,
    /// Path and query, e.g. `/users/7`.
    pub path: String,
    /// The expected `http_route` label, e.g. `/users/{id}`.
    pub route: &'static str,
}

impl Target {
    /// A `GET` of `path`, labelled `route`.
    pub fn get(path: impl Into<String>, route: &'static str) -> Target {
        Target {
            method: "GET",
            path: path.into(),
            route,
        }
    }
}

/// `(http_request_method, http_route, http_response_status_code)`: one series of
/// `http_server_requests_total`, without `service`.
pub type SeriesKey = (String, String, u16);

/// What a [`LoadClient`] saw.
#[derive(Debug, Default, Clone)]
pub struct LoadReport {
    /// Responses read whole, by the series they belong to.
    pub completed: BTreeMap<SeriesKey, u64>,
    /// Requests that got no whole response (connection refused, reset, timed out, or a
    /// response that could not be parsed). Whether the server recorded them is unknown.
    pub failed: u64,
    /// Connections opened, the first of each worker included.
    pub connections: u64,
}

impl LoadReport {
    /// All responses read whole.
    pub fn total(&self) -> u64 {
        self.completed.values().sum()
    }

    fn merge(&mut self, other: LoadReport) {
        for (key, n) in other.completed {
            *self.completed.entry(key).or_default() += n;
        }
        self.failed += other.failed;
        self.connections += other.connections;
    }
}

/// `connections` threads, each with one keep-alive connection, sending the targets in turn
/// (each thread starting at a different one) until stopped. A thread finishes the request it
/// is in before it stops, so after [`finish`](LoadClient::finish) nothing it sent is still in
/// flight on its side.
pub struct LoadClient {
    stop: Arc<AtomicBool>,
    workers: Vec<JoinHandle<LoadReport>>,
}

impl LoadClient {
    /// Starts the load against `addr`.
    pub fn start(addr: SocketAddr, connections: usize, targets: &[Target]) -> LoadClient {
        assert!(!targets.is_empty(), "nothing to send");
        let stop = Arc::new(AtomicBool::new(false));
        let workers = (0..connections)
            .map(|i| {
                let stop = stop.clone();
                let mut targets = targets.to_vec();
                let first = i % targets.len();
                targets.rotate_left(first);
                std::thread::spawn(move || worker(addr, &targets, &stop))
            })
            .collect();
        LoadClient { stop, workers }
    }

    /// Stops the load, waits for every thread's last request, and adds up what they saw.
    pub fn finish(mut self) -> LoadReport {
        self.stop.store(true, Ordering::Relaxed);
        let mut report = LoadReport::default();
        for w in self.workers.drain(..) {
            report.merge(w.join().expect("a load thread panicked"));
        }
        report
    }
}

impl Drop for LoadClient {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn worker(addr: SocketAddr, targets: &[Target], stop: &AtomicBool) -> LoadReport {
    let mut report = LoadReport::default();
    let mut conn: Option<BufReader<TcpStream>> = None;
    for target in targets.iter().cycle() {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        if conn.is_none() {
            match connect(addr) {
                Ok(c) => {
                    report.connections += 1;
                    conn = Some(c);
                }
                Err(_) => {
                    report.failed += 1;
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                }
            }
        }
        let c = conn.as_mut().expect("connected above");
        let request = format!(
            "{} {} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: observe-load\r\n\r\n",
            target.method, target.path
        );
        let exchanged = c
            .get_mut()
            .write_all(request.as_bytes())
            .and_then(|()| read_response(c));
        match exchanged {
            Ok(response) => {
                let key = (
                    target.method.to_owned(),
                    target.route.to_owned(),
                    response.status,
                );
                *report.completed.entry(key).or_default() += 1;
                if response.close {
                    conn = None;
                }
            }
            Err(_) => {
                report.failed += 1;
                conn = None;
            }
        }
    }
    report
}

fn connect(addr: SocketAddr) -> io::Result<BufReader<TcpStream>> {
    let tcp = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    tcp.set_nodelay(true)?;
    tcp.set_read_timeout(Some(Duration::from_secs(20)))?;
    Ok(BufReader::new(tcp))
}

/// A response read whole from a keep-alive connection.
#[derive(Debug, Clone)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// Whether the server will close the connection after it.
    pub close: bool,
    /// The body, de-chunked.
    pub body: Vec<u8>,
}

/// Reads one response (status line, headers, a `Content-Length` or chunked body) from `conn`.
pub fn read_response(conn: &mut BufReader<TcpStream>) -> io::Result<Response> {
    let mut line = String::new();
    if conn.read_line(&mut line)? == 0 {
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| io::Error::other(format!("not a status line: {line:?}")))?;
    let http10 = line.starts_with("HTTP/1.0");
    let (mut length, mut chunked, mut close) = (None, false, http10);
    loop {
        line.clear();
        if conn.read_line(&mut line)? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        let header = line.trim_end();
        if header.is_empty() {
            break;
        }
        let Some((name, value)) = header.split_once(':') else {
            continue;
        };
        let value = value.trim();
        match name.trim().to_ascii_lowercase().as_str() {
            "content-length" => length = value.parse::<usize>().ok(),
            "transfer-encoding" => chunked = value.eq_ignore_ascii_case("chunked"),
            "connection" => close = value.eq_ignore_ascii_case("close"),
            _ => {}
        }
    }
    let mut body = Vec::new();
    if chunked {
        loop {
            line.clear();
            conn.read_line(&mut line)?;
            let size = usize::from_str_radix(line.trim().split(';').next().unwrap_or(""), 16)
                .map_err(|_| io::Error::other(format!("bad chunk size {line:?}")))?;
            let start = body.len();
            body.resize(start + size, 0);
            conn.read_exact(&mut body[start..])?;
            line.clear();
            conn.read_line(&mut line)?;
            if size == 0 {
                break;
            }
        }
    } else if let Some(length) = length {
        body.resize(length, 0);
        conn.read_exact(&mut body)?;
    } else {
        conn.read_to_end(&mut body)?;
        close = true;
    }
    Ok(Response {
        status,
        close,
        body,
    })
}

/// Sends `raw` on a new connection and returns the status of the answer, or `None` when the
/// server closed the connection without one. Waits at most `timeout` for it.
pub fn raw_exchange(addr: SocketAddr, raw: &[u8], timeout: Duration) -> io::Result<Option<u16>> {
    let mut tcp = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    tcp.set_read_timeout(Some(timeout))?;
    // A server may answer and close before it read everything (an oversized head): a failed
    // write is then not the end of the exchange.
    let _ = tcp.write_all(raw);
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tcp.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                answer.extend_from_slice(&buf[..n]);
                if answer.windows(4).any(|w| w == b"\r\n\r\n") {
                    break;
                }
            }
            // A reset after the answer (the server closed with unread bytes) still leaves
            // the answer.
            Err(e) if !answer.is_empty() && e.kind() == io::ErrorKind::ConnectionReset => break,
            Err(e) if answer.is_empty() && e.kind() == io::ErrorKind::ConnectionReset => {
                return Ok(None)
            }
            Err(e) => return Err(e),
        }
    }
    if answer.is_empty() {
        return Ok(None);
    }
    let head = String::from_utf8_lossy(&answer);
    head.split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .map(Some)
        .ok_or_else(|| io::Error::other(format!("not an HTTP answer: {head:?}")))
}
