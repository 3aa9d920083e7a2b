//! Harness for the end-to-end tests: runs the example services (and, in the tests that need
//! them, real Prometheus, Alertmanager and `go tool pprof`) on loopback ports.
//!
//! The examples are the binaries cargo builds for `example-axum` and `example-actix`; the
//! test command (`.ci/run`) builds them first, and [`Example::start`] builds a missing one.
//!
//! [`contract`] holds the metric contract as one table of cases that the framework crates'
//! own `tests/contract.rs` run against their test apps.

pub mod allocations;
pub mod bench;
pub mod contract;
mod dashboard;
pub mod load;
mod profiling;
pub mod pyroscope;
mod tools;

pub use dashboard::{
    expand_variables, grafana_regex, parse_label_values, variable_query, Dashboard, PanelQuery,
};
pub use profiling::{chromium_screenshot, fetch, go_tool_pprof, pprof_traces, Answer, Load, Trace};
pub use tools::{
    amtool, free_port, has_data, http_get, promtool, run_with_input, tool, url_encode, wait_until,
    Alertmanager, Prometheus, TempDir,
};

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// The workspace root.
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("integration-tests sits in the workspace root")
        .to_path_buf()
}

/// Where cargo puts this workspace's debug binaries.
pub fn target_debug_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => PathBuf::from(dir).join("debug"),
        None => workspace_root().join("target").join("debug"),
    }
}

/// The path of a workspace binary, building its package if it is missing.
pub fn binary(package: &str) -> PathBuf {
    let path = target_debug_dir().join(package);
    if !path.exists() {
        let status = Command::new(env!("CARGO"))
            .args(["build", "-p", package])
            .current_dir(workspace_root())
            .status()
            .expect("cargo runs");
        assert!(status.success(), "cargo build -p {package} failed");
    }
    path
}

/// Where `scripts/test.sh` puts the build with `--cfg tokio_unstable` (tokio's unstable
/// metrics and task dump), in a target directory of its own so the main build is not rebuilt:
/// `<target>/unstable`.
pub fn unstable_target_dir() -> PathBuf {
    target_debug_dir().with_file_name("unstable")
}

/// The path of `package` built with `--release` and `--cfg tokio_unstable`, building it if it
/// is missing: the build the measurements and load tests run (a debug build would distort
/// them), and the one whose tasks can be dumped. `OBSERVE_RELEASE_DIR` points elsewhere (e.g.
/// at an older build, to measure before and after with the same test).
pub fn release_binary(package: &str) -> PathBuf {
    let dir = match std::env::var_os("OBSERVE_RELEASE_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => unstable_target_dir().join("release"),
    };
    let path = dir.join(package);
    if !path.exists() {
        let status = Command::new(env!("CARGO"))
            .args(["build", "--release", "-p", package])
            .env("RUSTFLAGS", "--cfg tokio_unstable")
            .env("CARGO_TARGET_DIR", unstable_target_dir())
            .current_dir(workspace_root())
            .status()
            .expect("cargo runs");
        assert!(
            status.success(),
            "RUSTFLAGS=\"--cfg tokio_unstable\" cargo build --release -p {package} failed"
        );
    }
    path
}

/// A running example service, killed when dropped.
pub struct Example {
    child: Child,
    /// Where it listens.
    pub addr: SocketAddr,
}

impl Example {
    /// Starts `package` (e.g. `example-axum`) on a free loopback port, with `envs` set, and
    /// waits until it listens. The examples print `... listening on http://ADDR` first.
    pub fn start(package: &str, envs: &[(&str, &str)]) -> Example {
        Example::start_binary(package, binary(package), envs)
    }

    /// [`start`](Self::start) with the `--release` build of `package` ([`release_binary`]),
    /// which can also dump its tasks.
    pub fn start_release(package: &str, envs: &[(&str, &str)]) -> Example {
        Example::start_binary(package, release_binary(package), envs)
    }

    fn start_binary(package: &str, path: PathBuf, envs: &[(&str, &str)]) -> Example {
        let mut child = Command::new(path)
            .arg("127.0.0.1:0")
            .envs(envs.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {package}: {e}"));
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            if let Some(Ok(line)) = lines.next() {
                let _ = tx.send(line);
            }
            // Keep draining so the child never blocks on a full pipe.
            for _ in lines {}
        });
        let line = rx
            .recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|_| panic!("{package} did not say where it listens"));
        let addr = line
            .rsplit("http://")
            .next()
            .and_then(|a| a.trim().parse().ok())
            .unwrap_or_else(|| panic!("{package} printed {line:?}, not its address"));
        Example { child, addr }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The process's resident memory (`VmRSS`), in bytes.
    pub fn rss(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .expect("the example runs");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .expect("VmRSS in /proc/PID/status")
            * 1024
    }

    /// `http://ADDR` + `path`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }
}

impl Drop for Example {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One sample of a Prometheus text exposition: `name{labels} value`.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// Metric name, e.g. `http_server_requests_total`.
    pub name: String,
    /// Label pairs in exposition order.
    pub labels: Vec<(String, String)>,
    /// The value.
    pub value: f64,
}

impl Sample {
    /// The value of label `name`, if present.
    pub fn label(&self, name: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Parses the samples of a text exposition (comments skipped). Label values in observe's
/// output never contain `"` or `,` escapes except through `\"`, which this handles.
pub fn parse_exposition(text: &str) -> Vec<Sample> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(parse_sample)
        .collect()
}

fn parse_sample(line: &str) -> Option<Sample> {
    let (series, value) = line.rsplit_once(' ')?;
    let value = value.parse().ok()?;
    let Some((name, rest)) = series.split_once('{') else {
        return Some(Sample {
            name: series.to_owned(),
            labels: vec![],
            value,
        });
    };
    let body = rest.strip_suffix('}')?;
    let mut labels = Vec::new();
    let mut chars = body.chars().peekable();
    loop {
        let key: String = chars.by_ref().take_while(|&c| c != '=').collect();
        if key.is_empty() {
            break;
        }
        if chars.next() != Some('"') {
            return None;
        }
        let mut value = String::new();
        while let Some(c) = chars.next() {
            match c {
                '\\' => value.push(chars.next()?),
                '"' => break,
                c => value.push(c),
            }
        }
        labels.push((key.trim_start_matches(',').to_owned(), value));
        if chars.peek() == Some(&',') {
            chars.next();
        }
    }
    Some(Sample {
        name: name.to_owned(),
        labels,
        value,
    })
}

/// One `#[test]` per scenario and example: `for_both_examples!(a, b)` at a test file's root
/// makes `axum::a`, `actix::a`, ... each calling the scenario function `a(package)` with
/// `"example-axum"` or `"example-actix"`: the same behaviour proven on both frameworks.
#[macro_export]
macro_rules! for_both_examples {
    ($($scenario:ident),* $(,)?) => {
        mod axum {
            $(#[test]
            fn $scenario() {
                super::$scenario("example-axum");
            })*
        }
        mod actix {
            $(#[test]
            fn $scenario() {
                super::$scenario("example-actix");
            })*
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_labels_and_values() {
        let s = parse_exposition("# HELP x y\nx_total{a=\"1\",b=\"q\\\"z\"} 3\nup 1\n");
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].label("b"), Some("q\"z"));
        assert_eq!(s[0].value, 3.0);
        assert_eq!(s[1].name, "up");
    }
}
