//! What the `/debug/pprof` tests drive: `go tool pprof`, headless Chromium, a bounded load
//! generator, and an HTTP GET that keeps the headers and the raw bytes (profiles are gzip).

use std::io::Read;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

pub use crate::tools::{fetch, Answer};
use crate::tools::{tool, TempDir};

/// Runs `go tool pprof ARGS` with its own `HOME`, `GOCACHE` and `PPROF_TMPDIR`, killing it
/// after `timeout`.
pub fn go_tool_pprof(args: &[&str], timeout: Duration) -> Output {
    let go = tool(&["go"], "golang-go");
    let dir = TempDir::new("observe-go-pprof");
    for sub in ["home", "gocache", "pprof"] {
        std::fs::create_dir_all(dir.path().join(sub)).expect("temp dirs");
    }
    let child = Command::new(go)
        .args(["tool", "pprof"])
        .args(args)
        .env("HOME", dir.path().join("home"))
        .env("GOCACHE", dir.path().join("gocache"))
        .env("PPROF_TMPDIR", dir.path().join("pprof"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("go tool pprof starts");
    wait_output(child, timeout, "go tool pprof")
}

/// One sample of a profile as `go tool pprof -traces` prints it.
#[derive(Debug, Clone)]
pub struct Trace {
    /// The sample's value in the profile's unit: seconds for a CPU profile, bytes for a heap
    /// profile.
    pub value: f64,
    /// Function names, innermost first, inlined ones included (without the "(inline)" mark).
    pub frames: Vec<String>,
    /// String labels, by key (`http_route`, ...).
    pub labels: Vec<(String, String)>,
}

impl Trace {
    /// The value of the label `key`, if the sample has it.
    pub fn label(&self, key: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Whether a frame's name contains `name`.
    pub fn has_frame(&self, name: &str) -> bool {
        self.frames.iter().any(|f| f.contains(name))
    }
}

/// Every sample of the profile in `file`, read by `go tool pprof -traces` (with `args` before
/// the file, e.g. a `-tagfocus`).
pub fn pprof_traces(file: &str, args: &[&str]) -> Vec<Trace> {
    let out = go_tool_pprof(
        &[&["-traces"], args, &[file]].concat(),
        Duration::from_secs(120),
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "go tool pprof -traces failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    parse_traces(&stdout)
}

/// What `go tool pprof -traces` prints between samples.
const SEPARATOR: &str = "-----------+-------------------------------------------------------";

fn parse_traces(text: &str) -> Vec<Trace> {
    let mut traces = Vec::new();
    for block in text.split(SEPARATOR).skip(1) {
        let mut trace = Trace {
            value: 0.0,
            frames: Vec::new(),
            labels: Vec::new(),
        };
        for line in block.lines().filter(|l| !l.trim().is_empty()) {
            // Labels come first, as `%10s:  %s`; stack lines as `%10s   %s`.
            if trace.frames.is_empty() {
                if let Some((key, value)) = line.trim_start().split_once(":  ") {
                    if !key.contains(' ') {
                        trace.labels.push((key.to_owned(), value.trim().to_owned()));
                        continue;
                    }
                }
            }
            let (value, name) = match line.get(..10) {
                Some(head) if !head.trim().is_empty() => (head.trim(), line[10..].trim()),
                _ => ("", line.trim()),
            };
            if trace.frames.is_empty() && !value.is_empty() {
                trace.value = parse_value(value);
            }
            trace
                .frames
                .push(name.trim_end_matches(" (inline)").to_owned());
        }
        if !trace.frames.is_empty() {
            traces.push(trace);
        }
    }
    traces
}

/// `1.50s`, `20ms`, `10us`, `300ns`, `2.5MB`, `512kB`, `12` as seconds or bytes.
fn parse_value(text: &str) -> f64 {
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: f64 = number.parse().unwrap_or(0.0);
    let scale = match unit {
        "hrs" => 3600.0,
        "mins" => 60.0,
        "s" | "B" | "" => 1.0,
        "ms" => 1e-3,
        "us" | "µs" => 1e-6,
        "ns" => 1e-9,
        "kB" => 1024.0,
        "MB" => 1024.0 * 1024.0,
        "GB" => 1024.0 * 1024.0 * 1024.0,
        _ => f64::NAN,
    };
    number * scale
}

/// Loads `url` in headless Chromium and writes a `width`x`height` PNG screenshot to `png`.
pub fn chromium_screenshot(url: &str, png: &Path, width: u32, height: u32) -> Output {
    let chromium = tool(&["chromium", "chromium-browser"], "chromium");
    let profile = TempDir::new("observe-chromium");
    let child = Command::new(chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(format!("--screenshot={}", png.display()))
        .arg(format!("--window-size={width},{height}"))
        .arg(url)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("chromium starts");
    wait_output(child, Duration::from_secs(60), "chromium")
}

fn wait_output(mut child: std::process::Child, timeout: Duration, what: &str) -> Output {
    let started = Instant::now();
    // Drain both pipes while waiting, so a chatty tool never blocks on a full pipe.
    let mut stdout = child.stdout.take().expect("piped");
    let mut stderr = child.stderr.take().expect("piped");
    let out = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = stdout.read_to_end(&mut v);
        v
    });
    let err = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = stderr.read_to_end(&mut v);
        v
    });
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if started.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} did not finish within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    Output {
        status,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    }
}

/// A bounded load generator: `workers` threads GET `path` in a loop until stopped, at most
/// `max_requests` in all, counting answers that were not 200.
pub struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    workers: Vec<JoinHandle<()>>,
}

impl Load {
    /// Starts the load against `addr`.
    pub fn start(addr: SocketAddr, path: &str, workers: usize, max_requests: u64) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        let workers = (0..workers)
            .map(|_| {
                let (stop, ok, failed, path) =
                    (stop.clone(), ok.clone(), failed.clone(), path.to_owned());
                std::thread::spawn(move || {
                    while !stop.load(Ordering::Relaxed)
                        && ok.load(Ordering::Relaxed) + failed.load(Ordering::Relaxed)
                            < max_requests
                    {
                        match fetch(addr, &path, Duration::from_secs(10)) {
                            Ok(a) if a.status == 200 => ok.fetch_add(1, Ordering::Relaxed),
                            _ => failed.fetch_add(1, Ordering::Relaxed),
                        };
                    }
                })
            })
            .collect();
        Load {
            stop,
            ok,
            failed,
            workers,
        }
    }

    /// Stops the load and returns `(ok, failed)` request counts.
    pub fn finish(mut self) -> (u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
        (
            self.ok.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
        )
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traces_parse_with_their_labels_and_inlined_frames() {
        let text = [
            "File: x",
            "Type: cpu",
            SEPARATOR,
            "http_request_method:  GET",
            "  http_route:  /work",
            "     1.50s   busy_work",
            "             black_box (inline)",
            "             main",
            SEPARATOR,
            "      10ms   poll",
            SEPARATOR,
        ]
        .join("\n");
        let text = text.as_str();
        let traces = parse_traces(text);
        assert_eq!(traces.len(), 2);
        assert_eq!(traces[0].value, 1.5);
        assert_eq!(traces[0].frames, ["busy_work", "black_box", "main"]);
        assert_eq!(traces[0].label("http_route"), Some("/work"));
        assert_eq!(traces[0].label("http_request_method"), Some("GET"));
        assert!((traces[1].value - 0.01).abs() < 1e-12);
        assert!(traces[1].labels.is_empty());
    }
}
