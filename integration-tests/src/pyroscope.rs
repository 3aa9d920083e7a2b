//! A local stand-in for a Pyroscope server's ingest endpoint, for tests: it takes each push
//! over a real socket, checks it against Pyroscope's documented HTTP ingest API (`POST
//! /ingest`, the query parameters, a `multipart/form-data` body with the pprof in a file
//! field named `profile`, then optionally a JSON file field named `sample_type_config`) and
//! keeps what it received. It can also fail the way a real server
//! does: answer 500, or accept the connection and never answer.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How the receiver answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Mode {
    /// `200 OK`.
    Accept = 0,
    /// `500 Internal Server Error`.
    Fail = 1,
    /// Reads the push, then holds the connection without answering.
    Stall = 2,
    /// `401 Unauthorized`, as a server with other credentials answers.
    Unauthorized = 3,
}

/// One push as received.
#[derive(Debug, Clone)]
pub struct Push {
    /// The request method.
    pub method: String,
    /// The path, without the query.
    pub path: String,
    /// Query parameters, decoded.
    pub query: HashMap<String, String>,
    /// Headers, names lowercased.
    pub headers: HashMap<String, String>,
    /// The `profile` part of the multipart body; `Err` says why it could not be found.
    pub profile: Result<Vec<u8>, String>,
    /// The `sample_type_config` part (JSON, parsed), if the push has one.
    pub sample_type_config: Option<serde_json::Value>,
}

/// The receiver, listening on a loopback port until dropped (the process ends with it).
pub struct Receiver {
    /// Where it listens.
    pub addr: SocketAddr,
    mode: Arc<AtomicU8>,
    pushes: Arc<Mutex<Vec<Push>>>,
}

impl Receiver {
    /// Listens on a free loopback port, in `mode`.
    pub fn start(mode: Mode) -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
        Receiver::serve(listener, mode)
    }

    /// Listens on `addr` (a port a test kept free to be refused on first).
    pub fn start_on(addr: SocketAddr, mode: Mode) -> Receiver {
        let listener = TcpListener::bind(addr).expect("bind the kept port");
        Receiver::serve(listener, mode)
    }

    fn serve(listener: TcpListener, mode: Mode) -> Receiver {
        let addr = listener.local_addr().expect("bound");
        let mode = Arc::new(AtomicU8::new(mode as u8));
        let pushes = Arc::new(Mutex::new(Vec::new()));
        let (m, p) = (mode.clone(), pushes.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (m, p) = (m.clone(), p.clone());
                std::thread::spawn(move || handle(stream, &m, &p));
            }
        });
        Receiver { addr, mode, pushes }
    }

    /// `http://ADDR`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Answers from now on as `mode` says.
    pub fn set_mode(&self, mode: Mode) {
        self.mode.store(mode as u8, Ordering::Relaxed);
    }

    /// Every push received so far.
    pub fn pushes(&self) -> Vec<Push> {
        self.pushes.lock().expect("not poisoned").clone()
    }
}

fn handle(stream: TcpStream, mode: &AtomicU8, pushes: &Mutex<Vec<Push>>) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    if reader.read_line(&mut line).is_err() {
        return;
    }
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or_default().to_owned();
    let target = parts.next().unwrap_or_default().to_owned();
    let mut headers = HashMap::new();
    loop {
        let mut header = String::new();
        match reader.read_line(&mut header) {
            Ok(0) | Err(_) => return,
            Ok(_) if header == "\r\n" => break,
            Ok(_) => {
                if let Some((name, value)) = header.trim_end().split_once(':') {
                    headers.insert(name.trim().to_ascii_lowercase(), value.trim().to_owned());
                }
            }
        }
    }
    let length = headers
        .get("content-length")
        .and_then(|l| l.parse().ok())
        .unwrap_or(0usize);
    let mut body = vec![0; length];
    if reader.read_exact(&mut body).is_err() {
        return;
    }
    let (path, query) = target.split_once('?').unwrap_or((&target, ""));
    let query = query
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .map(|(k, v)| (decode(k), decode(v)))
        .collect();
    let parts = multipart_fields(headers.get("content-type").map(String::as_str), &body);
    let (profile, sample_type_config) = match parts {
        Ok((profile, config)) => (Ok(profile), config),
        Err(e) => (Err(e), None),
    };
    pushes.lock().expect("not poisoned").push(Push {
        method,
        path: path.to_owned(),
        query,
        headers,
        profile,
        sample_type_config,
    });
    let mut stream = reader.into_inner();
    match mode.load(Ordering::Relaxed) {
        0 => {
            let _ = stream
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
        }
        1 => {
            let _ = stream.write_all(
                b"HTTP/1.1 500 Internal Server Error\r\ncontent-length: 4\r\nconnection: close\r\n\r\ndown",
            );
        }
        3 => {
            let _ = stream.write_all(
                b"HTTP/1.1 401 Unauthorized\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
            );
        }
        _ => {
            // Never answer; hold the connection until the client gives up.
            let mut sink = [0u8; 64];
            while matches!(stream.read(&mut sink), Ok(n) if n > 0) {}
            std::thread::sleep(Duration::from_secs(30));
        }
    }
}

/// The bytes of the file field `profile` of a `multipart/form-data` body, and its
/// `sample_type_config` file field (JSON, parsed) if there is one after it.
fn multipart_fields(
    content_type: Option<&str>,
    body: &[u8],
) -> Result<(Vec<u8>, Option<serde_json::Value>), String> {
    let content_type = content_type.ok_or("no content-type")?;
    let boundary = content_type
        .strip_prefix("multipart/form-data; boundary=")
        .ok_or_else(|| format!("not multipart/form-data: {content_type}"))?;
    let delimiter = format!("--{boundary}");
    let find = |hay: &[u8], needle: &[u8], from: usize| {
        hay[from..]
            .windows(needle.len())
            .position(|w| w == needle)
            .map(|i| i + from)
    };
    let start = find(body, delimiter.as_bytes(), 0).ok_or("no first boundary")?;
    let closing =
        find(body, format!("\r\n{delimiter}--").as_bytes(), start).ok_or("no closing boundary")?;
    // Each part: its headers, a blank line, its bytes up to the next delimiter.
    let mut fields = Vec::new();
    let mut at = start;
    while at < closing {
        let head_end = find(body, b"\r\n\r\n", at).ok_or("no part headers")? + 4;
        let end = find(body, format!("\r\n{delimiter}").as_bytes(), head_end)
            .ok_or("no boundary after a part")?;
        let head = String::from_utf8_lossy(&body[at..head_end]).into_owned();
        fields.push((head, body[head_end..end].to_vec()));
        at = end + 2;
    }
    let mut fields = fields.into_iter();
    let (head, profile) = fields.next().ok_or("no parts")?;
    if !head.contains("Content-Disposition: form-data; name=\"profile\"; filename=") {
        return Err(format!(
            "the first part is not the profile file field: {head}"
        ));
    }
    let config = match fields.next() {
        None => None,
        Some((head, json)) => {
            if !head
                .contains("Content-Disposition: form-data; name=\"sample_type_config\"; filename=")
            {
                return Err(format!("an unknown part: {head}"));
            }
            Some(
                serde_json::from_slice(&json)
                    .map_err(|e| format!("sample_type_config is not JSON: {e}"))?,
            )
        }
    };
    if let Some((head, _)) = fields.next() {
        return Err(format!("an unknown part: {head}"));
    }
    Ok((profile, config))
}

fn decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                out.push(u8::from_str_radix(hex, 16).unwrap_or(b'?'));
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}
