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
