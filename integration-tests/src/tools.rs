//! Real Prometheus and Alertmanager processes on loopback ports, and the small pieces the tests
//! that drive them share: free ports, temporary directories, bounded waits, a plain HTTP GET.

use std::fs;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// A loopback port that was free a moment ago (bound to port 0, then released), for tools
/// that cannot report the port they picked themselves.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1:0")
        .port()
}

/// A directory under the system temp dir, removed when dropped (kept, and its path printed,
/// when the test is panicking, so the tool logs in it can be read).
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    /// Creates a fresh, empty directory whose name starts with `prefix`.
    pub fn new(prefix: &str) -> TempDir {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let path = std::env::temp_dir().join(format!(
            "{prefix}-{}-{}-{nanos}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        fs::create_dir_all(&path)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", path.display()));
        TempDir { path }
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes `contents` to `name` inside the directory and returns its path.
    pub fn write(&self, name: &str, contents: &str) -> PathBuf {
        let file = self.path.join(name);
        fs::write(&file, contents)
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", file.display()));
        file
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("kept {} for inspection", self.path.display());
        } else {
            let _ = fs::remove_dir_all(&self.path);
        }
    }
}

/// The path of an external tool: the first of `names` found on `PATH` (then in `/usr/bin`).
/// Panics with the Debian package to install when none is there.
pub fn tool(names: &[&str], debian_package: &str) -> PathBuf {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    dirs.push(PathBuf::from("/usr/bin"));
    for name in names {
        for dir in &dirs {
            let candidate = dir.join(name);
            if candidate.is_file() {
                return candidate;
            }
        }
    }
    panic!("none of {names:?} is installed: apt-get install {debian_package}")
}

/// `promtool`, from the Debian package `prometheus`.
pub fn promtool() -> PathBuf {
    tool(&["promtool"], "prometheus")
}

/// `amtool`, from the Debian package `prometheus-alertmanager`.
pub fn amtool() -> PathBuf {
    tool(&["amtool"], "prometheus-alertmanager")
}

/// Polls `probe` every 200 ms until it returns `Some`, at most `timeout` and at most
/// `timeout / 200 ms + 1` times; panics naming `what` when it never does.
pub fn wait_until<T>(what: &str, timeout: Duration, mut probe: impl FnMut() -> Option<T>) -> T {
    let step = Duration::from_millis(200);
    let attempts = timeout.as_millis() / step.as_millis() + 1;
    let deadline = Instant::now() + timeout;
    for _ in 0..attempts {
        if let Some(value) = probe() {
            return value;
        }
        if Instant::now() >= deadline {
            break;
        }
        std::thread::sleep(step);
    }
    panic!("timed out after {timeout:?} waiting for {what}")
}

/// An HTTP answer with its headers and undecoded body.
#[derive(Debug, Clone)]
pub struct Answer {
    /// Status code.
    pub status: u16,
    /// Header names lowercased, in order.
    pub headers: Vec<(String, String)>,
    /// The body as sent.
    pub body: Vec<u8>,
}

impl Answer {
    /// The first value of header `name` (lowercase).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// `GET path_and_query` over HTTP/1.0 (the server closes after the body), reading for at most
/// `timeout`.
pub fn fetch(addr: SocketAddr, path_and_query: &str, timeout: Duration) -> std::io::Result<Answer> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(timeout))?;
    write!(
        stream,
        "GET {path_and_query} HTTP/1.0\r\nHost: {addr}\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| std::io::Error::other("no end of headers"))?;
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("not an HTTP answer: {head:?}")))?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    Ok(Answer {
        status,
        headers,
        body: raw[split + 4..].to_vec(),
    })
}

/// A blocking HTTP/1.0 GET (so the answer is never chunked): the status code and the body.
pub fn http_get(addr: SocketAddr, path_and_query: &str) -> std::io::Result<(u16, String)> {
    fetch(addr, path_and_query, Duration::from_secs(10)).map(|a| (a.status, a.text()))
}

/// `text` percent-encoded for a URL query string.
pub fn url_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len() * 3);
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// GETs `path_and_query` from `addr` and parses the answer as JSON; any failure as a message.
fn get_json(addr: SocketAddr, path_and_query: &str) -> Result<serde_json::Value, String> {
    let (status, body) =
        http_get(addr, path_and_query).map_err(|e| format!("GET {path_and_query}: {e}"))?;
    if status != 200 {
        return Err(format!("GET {path_and_query}: HTTP {status}: {body}"));
    }
    serde_json::from_str(&body).map_err(|e| format!("GET {path_and_query}: not JSON ({e}): {body}"))
}

/// A tool process with its working directory, killed (then its directory removed) on drop.
struct Daemon {
    child: Child,
    name: &'static str,
    addr: SocketAddr,
    dir: TempDir,
}

impl Daemon {
    fn spawn(
        name: &'static str,
        binary: PathBuf,
        dir: TempDir,
        addr: SocketAddr,
        args: Vec<String>,
    ) -> Daemon {
        let log = fs::File::create(dir.path().join("log")).expect("create log file");
        let child = Command::new(&binary)
            .args(&args)
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log file"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", binary.display()));
        let mut daemon = Daemon {
            child,
            name,
            addr,
            dir,
        };
        daemon.wait_ready();
        daemon
    }

    fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("log")).unwrap_or_default()
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        for _ in 0..150 {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "{} exited ({status}) before it was ready:\n{}",
                    self.name,
                    self.log()
                );
            }
            if matches!(http_get(self.addr, "/-/ready"), Ok((200, _))) {
                return;
            }
            if Instant::now() >= deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        panic!(
            "{} was not ready on {} within 30 s:\n{}",
            self.name,
            self.addr,
            self.log()
        );
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `program` with `args`, writes `input` to its standard input, and returns what it did.
/// Panics if it cannot be started.
pub fn run_with_input(program: &Path, args: &[&str], input: &[u8]) -> std::process::Output {
    use std::io::Write;
    use std::process::{Command, Stdio};

    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", program.display()));
    // A program that exits early closes its input: what it says matters, not the write.
    let _ = child.stdin.take().expect("piped stdin").write_all(input);
    child
        .wait_with_output()
        .unwrap_or_else(|e| panic!("{} did not run: {e}", program.display()))
}

/// A real Prometheus server (the Debian package `prometheus`) on a loopback port, with its
/// TSDB in a temporary directory.
pub struct Prometheus {
    daemon: Daemon,
}

impl Prometheus {
    /// Writes `files` (e.g. rule files, named relative to the config) and `config` (a
    /// `prometheus.yml`) into a fresh directory, starts Prometheus on it and waits until ready.
    pub fn start(files: &[(&str, &str)], config: &str) -> Prometheus {
        Prometheus::start_with_flags(files, config, &[])
    }

    /// [`start`](Self::start) with more command-line flags, e.g.
    /// `--enable-feature=exemplar-storage,native-histograms`.
    pub fn start_with_flags(files: &[(&str, &str)], config: &str, flags: &[&str]) -> Prometheus {
        let dir = TempDir::new("observe-prometheus");
        for (name, contents) in files {
            dir.write(name, contents);
        }
        let config_file = dir.write("prometheus.yml", config);
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let args = vec![
            format!("--config.file={}", config_file.display()),
            format!("--storage.tsdb.path={}", dir.path().join("data").display()),
            format!("--web.listen-address={addr}"),
            "--log.level=warn".to_owned(),
        ];
        let args = args
            .into_iter()
            .chain(flags.iter().map(|f| (*f).to_owned()))
            .collect();
        let binary = tool(&["prometheus"], "prometheus");
        Prometheus {
            daemon: Daemon::spawn("prometheus", binary, dir, addr, args),
        }
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.daemon.addr
    }

    /// `http://ADDR` + `path`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.daemon.addr, path)
    }

    /// What it logged so far.
    pub fn log(&self) -> String {
        self.daemon.log()
    }

    /// Evaluates `expr` now through `/api/v1/query`; returns the `data` object (`resultType`
    /// and `result`), or Prometheus's error.
    pub fn query(&self, expr: &str) -> Result<serde_json::Value, String> {
        let answer = get_json(
            self.addr(),
            &format!("/api/v1/query?query={}", url_encode(expr)),
        )?;
        if answer["status"] != "success" {
            return Err(format!("query {expr}: {answer}"));
        }
        Ok(answer["data"].clone())
    }

    /// The exemplars Prometheus stored for the series `selector` matches, over the last
    /// `seconds`, through `/api/v1/query_exemplars`: the `data` array, one entry per series
    /// (`seriesLabels`, `exemplars`).
    pub fn query_exemplars(
        &self,
        selector: &str,
        seconds: u64,
    ) -> Result<serde_json::Value, String> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let path = format!(
            "/api/v1/query_exemplars?query={}&start={}&end={}",
            url_encode(selector),
            now.saturating_sub(seconds),
            now + 1
        );
        let answer = get_json(self.addr(), &path)?;
        if answer["status"] != "success" {
            return Err(format!("{path}: {answer}"));
        }
        Ok(answer["data"].clone())
    }

    /// The values of `label` on the series that `selector` matches, through
    /// `/api/v1/label/LABEL/values` (what Grafana's `label_values(selector, label)` calls).
    pub fn label_values(&self, label: &str, selector: &str) -> Result<Vec<String>, String> {
        let path = format!(
            "/api/v1/label/{label}/values?match[]={}",
            url_encode(selector)
        );
        let answer = get_json(self.addr(), &path)?;
        let values = answer["data"]
            .as_array()
            .ok_or_else(|| format!("{path}: {answer}"))?;
        Ok(values
            .iter()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect())
    }
}

/// Whether a `/api/v1/query` answer (its `data`) holds at least one finite number or native
/// histogram with observations: a result that is empty, or only NaN (0/0, a quantile of no
/// observations), shows nothing in Grafana.
pub fn has_data(data: &serde_json::Value) -> bool {
    let finite = |pair: &serde_json::Value| {
        pair.get(1)
            .and_then(|v| v.as_str())
            .and_then(|v| v.parse::<f64>().ok())
            .is_some_and(f64::is_finite)
    };
    // A native histogram sample: `[time, {count, sum, buckets}]`, data when it counted any.
    let histogram = |pair: &serde_json::Value| {
        pair.get(1)
            .and_then(|h| h["count"].as_str())
            .and_then(|c| c.parse::<f64>().ok())
            .is_some_and(|c| c.is_finite() && c > 0.0)
    };
    match data["resultType"].as_str() {
        Some("vector") => data["result"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|s| finite(&s["value"]) || histogram(&s["histogram"])),
        Some("scalar") => finite(&data["result"]),
        Some("matrix") => data["result"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|s| s["values"].as_array().into_iter().flatten().any(finite)),
        _ => false,
    }
}

/// A real Alertmanager (the Debian package `prometheus-alertmanager`) on a loopback port,
/// clustering off, its state in a temporary directory.
pub struct Alertmanager {
    daemon: Daemon,
}

impl Alertmanager {
    /// Writes `config` (an `alertmanager.yml`) into a fresh directory, starts Alertmanager on it
    /// and waits until ready.
    pub fn start(config: &str) -> Alertmanager {
        let dir = TempDir::new("observe-alertmanager");
        let config_file = dir.write("alertmanager.yml", config);
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let args = vec![
            format!("--config.file={}", config_file.display()),
            format!("--storage.path={}", dir.path().join("data").display()),
            format!("--web.listen-address={addr}"),
            "--cluster.listen-address=".to_owned(),
            "--log.level=warn".to_owned(),
        ];
        let binary = tool(
            &["prometheus-alertmanager", "alertmanager"],
            "prometheus-alertmanager",
        );
        Alertmanager {
            daemon: Daemon::spawn("alertmanager", binary, dir, addr, args),
        }
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.daemon.addr
    }

    /// `http://ADDR` + `path`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.daemon.addr, path)
    }

    /// The alerts it holds now, from `/api/v2/alerts`.
    pub fn alerts(&self) -> Result<Vec<serde_json::Value>, String> {
        let answer = get_json(self.addr(), "/api/v2/alerts")?;
        answer
            .as_array()
            .cloned()
            .ok_or_else(|| format!("/api/v2/alerts: {answer}"))
    }

    /// What it logged so far.
    pub fn log(&self) -> String {
        self.daemon.log()
    }
}
