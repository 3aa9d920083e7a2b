//! End to end: the SLO rules, evaluated by a real Prometheus on a fast copy of `rules.yml`,
//! fire on `/fail` traffic from example-axum; a real Alertmanager, configured from the example
//! `alertmanager.yml`, holds the alert and notifies a webhook receiver that runs in this test.
//!
//! The fast copy is generated here from `prometheus/rules.yml` (there is no second rule file to
//! keep in step): every range window and every `for:` is shortened, nothing else changes.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use integration_tests::{wait_until, workspace_root, Alertmanager, Example, Prometheus};
use serde_json::Value;

const ALERT: &str = "HTTPAvailabilityBudgetBurnFast";

/// Real window → test window. With a 1 s scrape and evaluation interval every window still
/// holds several samples, and the long/short pairs keep their order.
const WINDOWS: &[(&str, &str)] = &[
    ("5m", "4s"),
    ("30m", "8s"),
    ("1h", "12s"),
    ("2h", "16s"),
    ("6h", "20s"),
    ("1d", "24s"),
    ("3d", "30s"),
];
const HOLDS: &[(&str, &str)] = &[("2m", "2s"), ("1h", "3s")];

/// `rules.yml` with its windows and `for:` holds shortened; panics if any is left unmapped.
fn fast_rules() -> String {
    let path = workspace_root().join("prometheus/rules.yml");
    let mut text = std::fs::read_to_string(&path).expect("prometheus/rules.yml");
    for (real, fast) in WINDOWS {
        text = text.replace(&format!("[{real}]"), &format!("[{fast}]"));
    }
    for (real, fast) in HOLDS {
        text = text.replace(&format!("for: {real}\n"), &format!("for: {fast}\n"));
    }
    for range in text
        .split('[')
        .skip(1)
        .filter_map(|s| s.split_once(']').map(|(r, _)| r))
    {
        assert!(
            WINDOWS.iter().any(|(_, f)| *f == range),
            "window [{range}] in rules.yml has no fast twin here"
        );
    }
    for line in text.lines().filter_map(|l| l.trim().strip_prefix("for: ")) {
        assert!(
            HOLDS.iter().any(|(_, f)| *f == line),
            "`for: {line}` in rules.yml has no fast twin here"
        );
    }
    text
}

/// The example `alertmanager.yml`, sending to `webhook` and grouping without delay.
fn alertmanager_config(webhook: &str) -> String {
    let path = workspace_root().join("prometheus/alertmanager.yml");
    let mut text = std::fs::read_to_string(&path).expect("prometheus/alertmanager.yml");
    for (from, to) in [
        (
            "url: http://127.0.0.1:5001/alerts",
            format!("url: {webhook}"),
        ),
        ("group_wait: 30s", "group_wait: 1s".to_owned()),
        ("group_interval: 5m", "group_interval: 1s".to_owned()),
    ] {
        assert!(
            text.contains(from),
            "prometheus/alertmanager.yml no longer has `{from}`"
        );
        text = text.replace(from, &to);
    }
    text
}

/// A webhook receiver on a loopback port: records every POSTed body, answers 200.
struct Webhook {
    addr: SocketAddr,
    bodies: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Webhook {
    fn start() -> Webhook {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind webhook");
        listener
            .set_nonblocking(true)
            .expect("nonblocking listener");
        let addr = listener.local_addr().expect("webhook address");
        let bodies = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (bodies, stop) = (bodies.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((stream, _)) => {
                            if let Ok(body) = Webhook::receive(stream) {
                                bodies.lock().expect("bodies lock").push(body);
                            }
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(20)),
                    }
                }
            })
        };
        Webhook {
            addr,
            bodies,
            stop,
            thread: Some(thread),
        }
    }

    /// Reads one HTTP/1.1 request with a `Content-Length` body and answers 200.
    fn receive(stream: TcpStream) -> std::io::Result<String> {
        stream.set_nonblocking(false)?;
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        let mut reader = BufReader::new(stream.try_clone()?);
        let mut length = 0;
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line)? == 0 || line == "\r\n" {
                break;
            }
            if let Some((name, value)) = line.split_once(':') {
                if name.eq_ignore_ascii_case("content-length") {
                    length = value.trim().parse().unwrap_or(0);
                }
            }
        }
        let mut body = vec![0; length];
        reader.read_exact(&mut body)?;
        let mut stream = stream;
        stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")?;
        Ok(String::from_utf8_lossy(&body).into_owned())
    }

    fn bodies(&self) -> Vec<String> {
        self.bodies.lock().expect("bodies lock").clone()
    }
}

impl Drop for Webhook {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Requests `paths` of `base` in a loop until `stop`.
fn drive(
    rt: &tokio::runtime::Runtime,
    base: String,
    paths: &'static [&'static str],
    stop: Arc<AtomicBool>,
) {
    rt.spawn(async move {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .expect("reqwest client");
        while !stop.load(Ordering::Relaxed) {
            for path in paths {
                let _ = client.get(format!("{base}{path}")).send().await;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    });
}

fn label<'a>(alert: &'a Value, name: &str) -> &'a str {
    alert["labels"][name].as_str().unwrap_or_default()
}

#[test]
fn fail_traffic_pages_through_alertmanager_to_the_webhook() {
    let example = Example::start("example-axum", &[]);
    let webhook = Webhook::start();
    let am = Alertmanager::start(&alertmanager_config(&format!(
        "http://{}/alerts",
        webhook.addr
    )));
    let config = format!(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
         rule_files: [rules.yml]\n\
         alerting:\n  alertmanagers:\n    - static_configs:\n        - targets: [\"{}\"]\n\
         scrape_configs:\n  - job_name: example-axum\n    static_configs:\n      - targets: [\"{}\"]\n",
        am.addr(),
        example.addr
    );
    let prom = Prometheus::start(&[("rules.yml", &fast_rules())], &config);

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");

    // Healthy traffic first: the rules see it (the guard is met) and nothing fires.
    let healthy = Arc::new(AtomicBool::new(false));
    drive(
        &rt,
        example.url(""),
        &["/users/1", "/api/items/2"],
        healthy.clone(),
    );
    let guard = "job_service:http_server_requests:rate1h{job=\"example-axum\"} * 3600 >= 100";
    wait_until(
        "healthy traffic in the recording rules",
        Duration::from_secs(30),
        || {
            let data = prom.query(guard).ok()?;
            (!data["result"].as_array()?.is_empty()).then_some(())
        },
    );
    let alerts = prom
        .query(&format!("ALERTS{{alertname=\"{ALERT}\"}}"))
        .expect("ALERTS query");
    assert_eq!(
        alerts["result"],
        Value::Array(vec![]),
        "{ALERT} is pending or firing on healthy traffic"
    );

    // Now a third of the requests fail, far over the 14.4 x 0.1 % fast-burn threshold.
    let failing = Arc::new(AtomicBool::new(false));
    drive(&rt, example.url(""), &["/fail"], failing.clone());

    let in_alertmanager = wait_until(
        "the alert in Alertmanager's /api/v2/alerts",
        Duration::from_secs(60),
        || {
            am.alerts()
                .ok()?
                .into_iter()
                .find(|a| label(a, "alertname") == ALERT)
        },
    );
    assert_eq!(label(&in_alertmanager, "job"), "example-axum");
    assert_eq!(label(&in_alertmanager, "service"), "example-axum");
    assert_eq!(label(&in_alertmanager, "severity"), "page");
    assert_eq!(label(&in_alertmanager, "slo"), "availability");
    assert_eq!(
        in_alertmanager["status"]["state"], "active",
        "{in_alertmanager}"
    );
    println!(
        "Alertmanager holds {ALERT}: labels {}, summary {:?}",
        in_alertmanager["labels"], in_alertmanager["annotations"]["summary"]
    );

    let notification = wait_until("the webhook notification", Duration::from_secs(30), || {
        webhook.bodies().into_iter().find_map(|body| {
            let json: Value = serde_json::from_str(&body).ok()?;
            let ours = json["alerts"]
                .as_array()?
                .iter()
                .any(|a| label(a, "alertname") == ALERT);
            ours.then_some(json)
        })
    });
    healthy.store(true, Ordering::Relaxed);
    failing.store(true, Ordering::Relaxed);
    rt.shutdown_timeout(Duration::from_secs(2));

    assert_eq!(notification["status"], "firing", "{notification}");
    assert_eq!(notification["receiver"], "webhook", "{notification}");
    assert_eq!(
        notification["groupLabels"]["alertname"], ALERT,
        "{notification}"
    );
    let alert = notification["alerts"]
        .as_array()
        .and_then(|alerts| alerts.iter().find(|a| label(a, "alertname") == ALERT))
        .expect("our alert in the notification");
    assert_eq!(alert["status"], "firing");
    assert_eq!(label(alert, "service"), "example-axum");
    let description = alert["annotations"]["description"]
        .as_str()
        .unwrap_or_default();
    assert!(
        description.contains("of requests failed with a 5xx"),
        "{description}"
    );
    println!(
        "webhook received: status {}, receiver {}, {} alert(s), description {description:?}",
        notification["status"],
        notification["receiver"],
        notification["alerts"].as_array().map_or(0, Vec::len)
    );
    // Keep the tools alive until the assertions are done, for their logs on failure.
    drop((prom, am, example));
}
