//! One push to a Pyroscope server, as its HTTP ingest API documents it and its Go client
//! sends it: `POST {url}/ingest?name=…&from=…&until=…&format=pprof&sampleRate=…&spyName=…`,
//! the gzipped pprof in a `multipart/form-data` file field named `profile`, optional basic
//! auth and `X-Scope-OrgID`. Plain HTTP/1.1 over a socket with timeouts on every step, so a
//! slow or absent server costs the pushing thread at most those timeouts and nothing else.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Where pushes go: `http://host[:port][/prefix]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Endpoint {
    pub(crate) host: String,
    pub(crate) port: u16,
    /// Path prefix without a trailing slash (`""` or `/pyroscope`).
    pub(crate) prefix: String,
}

impl Endpoint {
    /// Parses `http://host[:port][/prefix]`; `https` needs a TLS-terminating proxy or agent
    /// (Grafana Alloy) in between, and says so.
    pub(crate) fn parse(url: &str) -> Result<Endpoint, String> {
        let rest = match url.split_once("://") {
            Some(("http", rest)) => rest,
            Some(("https", _)) => {
                return Err(format!(
                    "{url}: https is not supported; push to a local Grafana Alloy \
                     (pyroscope.receive_http) or a TLS-terminating proxy over http"
                ))
            }
            _ => return Err(format!("{url}: expected http://host[:port][/path]")),
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => rest.split_at(i),
            None => (rest, ""),
        };
        if authority.is_empty() || authority.contains('@') {
            return Err(format!(
                "{url}: expected http://host[:port][/path] (credentials go to basic_auth)"
            ));
        }
        let (host, port) = match authority.rsplit_once(':') {
            Some((host, port)) if !host.ends_with(']') || authority.starts_with('[') => {
                let port = port
                    .parse::<u16>()
                    .map_err(|_| format!("{url}: {port:?} is not a port"))?;
                (host, port)
            }
            _ => (authority, 80),
        };
        if path.contains(['?', '#']) {
            return Err(format!("{url}: no query or fragment, only a path prefix"));
        }
        Ok(Endpoint {
            host: host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned(),
            port,
            prefix: path.trim_end_matches('/').to_owned(),
        })
    }
}

/// What one push sends, besides the profile.
#[derive(Debug, Clone)]
pub(crate) struct Push<'a> {
    /// `app{label=value,…}`; Pyroscope appends the profile type (`app.cpu{…}`).
    pub(crate) name: &'a str,
    pub(crate) from: SystemTime,
    pub(crate) until: SystemTime,
    pub(crate) sample_rate: u32,
    /// `Basic …` header value.
    pub(crate) authorization: Option<&'a str>,
    pub(crate) tenant: Option<&'a str>,
    pub(crate) timeout: Duration,
    /// How the server is to read each sample type (the `sample_type_config` part, JSON), for
    /// profiles other than CPU.
    pub(crate) sample_type_config: Option<&'a str>,
}

/// How a push went.
#[derive(Debug)]
pub(crate) enum Outcome {
    /// 2xx.
    Accepted,
    /// 4xx: the server refuses this profile (auth, limits); retrying would not help.
    Refused(u16),
    /// 5xx, or no answer: worth one more try.
    Failed(String),
}

/// Sends `pprof` (gzipped protobuf) to `endpoint`.
pub(crate) fn push(endpoint: &Endpoint, push: &Push<'_>, pprof: &[u8]) -> Outcome {
    match send(endpoint, push, pprof) {
        Ok(status) if (200..300).contains(&status) => Outcome::Accepted,
        Ok(status) if (400..500).contains(&status) => Outcome::Refused(status),
        Ok(status) => Outcome::Failed(format!("HTTP {status}")),
        Err(e) => Outcome::Failed(e.to_string()),
    }
}

fn send(endpoint: &Endpoint, push: &Push<'_>, pprof: &[u8]) -> std::io::Result<u16> {
    let seconds = |t: SystemTime| t.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
    let query = [
        ("name", push.name.to_owned()),
        ("from", seconds(push.from).to_string()),
        ("until", seconds(push.until).to_string()),
        ("format", "pprof".to_owned()),
        ("sampleRate", push.sample_rate.to_string()),
        ("spyName", "observe".to_owned()),
        ("units", "samples".to_owned()),
        ("aggregationType", "sum".to_owned()),
    ]
    .iter()
    .map(|(k, v)| format!("{k}={}", percent_encode(v)))
    .collect::<Vec<_>>()
    .join("&");
    let boundary = format!(
        "observe-{:016x}",
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos() as u64
    );
    let mut body = Vec::with_capacity(pprof.len() + 256);
    write!(
        body,
        "--{boundary}\r\nContent-Disposition: form-data; name=\"profile\"; filename=\"profile.pprof\"\r\nContent-Type: application/octet-stream\r\n\r\n"
    )?;
    body.extend_from_slice(pprof);
    if let Some(config) = push.sample_type_config {
        write!(
            body,
            "\r\n--{boundary}\r\nContent-Disposition: form-data; name=\"sample_type_config\"; filename=\"sample_type_config.json\"\r\nContent-Type: application/json\r\n\r\n{config}"
        )?;
    }
    write!(body, "\r\n--{boundary}--\r\n")?;

    let mut head = format!(
        "POST {}/ingest?{query} HTTP/1.1\r\nHost: {}:{}\r\nUser-Agent: observe-pprof/{}\r\nContent-Type: multipart/form-data; boundary={boundary}\r\nContent-Length: {}\r\nConnection: close\r\n",
        endpoint.prefix,
        endpoint.host,
        endpoint.port,
        env!("CARGO_PKG_VERSION"),
        body.len()
    );
    if let Some(authorization) = push.authorization {
        head.push_str(&format!("Authorization: {authorization}\r\n"));
    }
    if let Some(tenant) = push.tenant {
        head.push_str(&format!("X-Scope-OrgID: {tenant}\r\n"));
    }
    head.push_str("\r\n");

    let addr = (endpoint.host.as_str(), endpoint.port)
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| std::io::Error::other(format!("{} has no address", endpoint.host)))?;
    let mut stream = TcpStream::connect_timeout(&addr, push.timeout)?;
    stream.set_write_timeout(Some(push.timeout))?;
    stream.set_read_timeout(Some(push.timeout))?;
    stream.write_all(head.as_bytes())?;
    stream.write_all(&body)?;
    // The status line is all we need; read at most a little of the answer.
    let mut answer = [0u8; 512];
    let mut read = 0;
    while read < answer.len() {
        let n = stream.read(&mut answer[read..])?;
        if n == 0 || answer[..read + n].contains(&b'\n') {
            read += n;
            break;
        }
        read += n;
    }
    let line = String::from_utf8_lossy(&answer[..read]);
    line.split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("not an HTTP answer: {line:?}")))
}

/// `application/x-www-form-urlencoded` escaping of a query value.
fn percent_encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// `Basic base64(user:password)`.
pub(crate) fn basic_auth(user: &str, password: &str) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let input = format!("{user}:{password}").into_bytes();
    let mut out = String::from("Basic ");
    for chunk in input.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i)) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_are_http_host_port_and_prefix() {
        let e = Endpoint::parse("http://pyroscope:4040").unwrap();
        assert_eq!(
            (e.host.as_str(), e.port, e.prefix.as_str()),
            ("pyroscope", 4040, "")
        );
        let e = Endpoint::parse("http://10.0.0.1/pyroscope/").unwrap();
        assert_eq!(
            (e.host.as_str(), e.port, e.prefix.as_str()),
            ("10.0.0.1", 80, "/pyroscope")
        );
        let e = Endpoint::parse("http://[::1]:4040").unwrap();
        assert_eq!((e.host.as_str(), e.port), ("::1", 4040));
        for bad in [
            "https://x",
            "pyroscope:4040",
            "http://",
            "http://u:p@x",
            "http://x:port",
            "http://x/?a=b",
        ] {
            assert!(Endpoint::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn basic_auth_is_rfc_7617() {
        assert_eq!(
            basic_auth("Aladdin", "open sesame"),
            "Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ=="
        );
        assert_eq!(basic_auth("a", "b"), "Basic YTpi");
        assert_eq!(basic_auth("ab", "c"), "Basic YWI6Yw==");
    }

    #[test]
    fn query_values_are_escaped() {
        assert_eq!(
            percent_encode("app{service=checkout,v=1.2}"),
            "app%7Bservice%3Dcheckout%2Cv%3D1.2%7D"
        );
    }
}
