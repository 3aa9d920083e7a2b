//! What a scrape can see while requests are recorded on many threads at once: threads that
//! start and exit while recording, requests finished on another thread than they started,
//! routes interned while `/metrics` is encoded, and scrapes running concurrently.
//!
//! Every scrape is checked against the invariants a Prometheus server relies on, and against
//! the scrape before it: no empty or duplicate series, cumulative buckets ending at `_count`,
//! `http_server_requests_total` equal to the duration `_count`, counters, buckets and sums that
//! never go down, a gauge that is never negative. The final totals are exact.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc;

use observe_core::adapter::ResponseRecord;
use observe_core::{HttpMetrics, MetricsEncoder};

const DURATION: &str = "http_server_request_duration_seconds";
const REQUESTS: &str = "http_server_requests_total";
const ACTIVE: &str = "http_server_active_requests";

/// One scrape, parsed: sample name and label text (`{...}`) to value.
#[derive(Default)]
struct Scrape {
    samples: HashMap<(String, String), f64>,
}

impl Scrape {
    /// Encodes `metrics` as `/metrics` would and checks what holds within one exposition.
    fn take(metrics: &HttpMetrics) -> Scrape {
        let out = MetricsEncoder::new(metrics.registry().clone())
            .encode(observe_core::Format::Text, None)
            .expect("encodes");
        let text = String::from_utf8(out.body).expect("UTF-8");
        let mut scrape = Scrape::default();
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let (series, value) = line.rsplit_once(' ').expect("sample line");
            let value: f64 = value.parse().expect("sample value");
            let (name, labels) = series.split_once('{').unwrap_or((series, "}"));
            assert!(
                !labels.contains(r#"http_route="""#),
                "a series without its route name: {line}"
            );
            let key = (name.to_owned(), labels.to_owned());
            assert!(
                scrape.samples.insert(key, value).is_none(),
                "a duplicate sample: {line}"
            );
        }
        scrape.check_consistent();
        scrape
    }

    fn get(&self, name: &str, labels: &str) -> Option<f64> {
        self.samples
            .get(&(name.to_owned(), labels.to_owned()))
            .copied()
    }

    /// Buckets cumulative up to `+Inf` = `_count` = `requests_total`; gauges not negative.
    fn check_consistent(&self) {
        let mut buckets: HashMap<String, Vec<(f64, f64)>> = HashMap::new();
        for ((name, labels), value) in &self.samples {
            if name == &format!("{DURATION}_count") {
                assert_eq!(self.get(REQUESTS, labels), Some(*value), "{labels}");
            }
            if name == ACTIVE {
                assert!(*value >= 0.0, "{ACTIVE}{labels} = {value}");
            }
            if name == &format!("{DURATION}_bucket") {
                let (series, le) = labels.rsplit_once(",le=\"").expect("le is last");
                let le = le.trim_end_matches("\"}");
                let le = if le == "+Inf" {
                    f64::INFINITY
                } else {
                    le.parse().expect("le")
                };
                buckets
                    .entry(format!("{series}}}"))
                    .or_default()
                    .push((le, *value));
            }
        }
        for (series, mut bounds) in buckets {
            bounds.sort_by(|a, b| a.0.total_cmp(&b.0));
            assert!(
                bounds.windows(2).all(|w| w[0].1 <= w[1].1),
                "buckets not cumulative: {series} {bounds:?}"
            );
            let inf = bounds.last().expect("a bucket").1;
            let count = self.get(&format!("{DURATION}_count"), &series);
            assert_eq!(Some(inf), count, "+Inf vs _count of {series}");
        }
    }

    /// Nothing that only grows went down since `before`.
    fn check_grew_from(&self, before: &Scrape) {
        for ((name, labels), old) in &before.samples {
            if name == ACTIVE || name.starts_with("process_") {
                continue;
            }
            let new = self.get(name, labels);
            assert!(
                new.is_some_and(|new| new >= *old),
                "{name}{labels} went from {old} to {new:?}"
            );
        }
    }

    fn total(&self, name: &str) -> f64 {
        self.samples
            .iter()
            .filter(|((n, _), _)| n == name)
            .map(|(_, v)| v)
            .sum()
    }
}

/// Metrics of `service` that name up to `max_routes` routes.
fn metrics(service: &str, max_routes: usize) -> HttpMetrics {
    HttpMetrics::builder(service)
        .max_routes(max_routes)
        .unwrap()
        .build()
        .unwrap()
}

/// Runs `record` while `scrapers` threads scrape `metrics` over and over, each scrape checked
/// against the one before; `record` is given the count of scrapes done so far.
fn while_scraping(metrics: &HttpMetrics, scrapers: usize, record: impl FnOnce(&AtomicUsize)) {
    let done = AtomicBool::new(false);
    let scrapes = AtomicUsize::new(0);
    std::thread::scope(|s| {
        let scrapers: Vec<_> = (0..scrapers)
            .map(|_| {
                s.spawn(|| {
                    let mut last = Scrape::take(metrics);
                    while !done.load(Ordering::Acquire) {
                        let next = Scrape::take(metrics);
                        next.check_grew_from(&last);
                        last = next;
                        scrapes.fetch_add(1, Ordering::Release);
                    }
                })
            })
            .collect();
        record(&scrapes);
        done.store(true, Ordering::Release);
        for scraper in scrapers {
            scraper.join().unwrap();
        }
    });
}

#[test]
fn scrapes_see_consistent_growing_totals_while_threads_come_and_go() {
    const WAVES: usize = 12;
    // More threads at once than owned shards (16): some record into the shared one.
    const THREADS: usize = 20;
    const REQUESTS_PER_THREAD: usize = 300;
    let metrics = metrics("c", 10_000);
    while_scraping(&metrics, 2, |scrapes| {
        std::thread::scope(|s| {
            // Requests started on the wave threads and finished here, on a thread that outlives
            // them.
            let (handoff, finish_here) = mpsc::channel::<ResponseRecord>();
            let finisher =
                s.spawn(move || finish_here.into_iter().for_each(ResponseRecord::finish));
            for wave in 0..WAVES {
                let scraped = scrapes.load(Ordering::Acquire);
                std::thread::scope(|w| {
                    for t in 0..THREADS {
                        let (metrics, handoff) = (&metrics, handoff.clone());
                        w.spawn(move || {
                            for i in 0..REQUESTS_PER_THREAD {
                                // Halfway through, the wave's first thread waits for a whole
                                // scrape, so every wave is scraped while it records.
                                while t == 0
                                    && i == REQUESTS_PER_THREAD / 2
                                    && scrapes.load(Ordering::Acquire) < scraped + 2
                                {
                                    std::thread::yield_now();
                                }
                                // A few fixed routes, and a new one now and then while scraping.
                                let template = if i % 50 == 0 {
                                    format!("/new/{wave}/{t}/{i}")
                                } else {
                                    format!("/fixed/{}", i % 5)
                                };
                                let method = ["GET", "POST", "PUT"][i % 3];
                                let record = metrics.id().start(method, Some(&template)).unwrap();
                                match i % 4 {
                                    0 => handoff.send(record.respond(200)).unwrap(),
                                    1 => drop(record),
                                    2 => record.fail(),
                                    _ => {
                                        let mut response = record.respond(201);
                                        response.add_response_bytes(i as u64);
                                        response.finish();
                                    }
                                }
                            }
                        });
                    }
                });
            }
            drop(handoff);
            finisher.join().unwrap();
        })
    });
    let last = Scrape::take(&metrics);
    let expected = (WAVES * THREADS * REQUESTS_PER_THREAD) as f64;
    assert_eq!(last.total(REQUESTS), expected);
    assert_eq!(last.total(&format!("{DURATION}_count")), expected);
    assert_eq!(last.total(ACTIVE), 0.0);
    for method in ["GET", "POST", "PUT"] {
        assert_eq!(metrics.active_requests(method), 0);
    }
    let by_status = |status: &str| {
        last.samples
            .iter()
            .filter(|((n, l), _)| {
                n == REQUESTS && l.contains(&format!(r#"http_response_status_code="{status}""#))
            })
            .map(|(_, v)| v)
            .sum::<f64>()
    };
    for status in ["200", "499", "500", "201"] {
        assert_eq!(by_status(status), expected / 4.0, "status {status}");
    }
}

#[test]
fn routes_interned_during_a_scrape_are_never_exposed_without_their_name() {
    // Four threads name thousands of new routes, each recorded once, while four others
    // scrape: every scrape must name every series it shows, once. (Before names were read
    // after the series, this failed within a second on a 2-core machine.)
    const ROUTES: usize = 5_000;
    const WRITERS: usize = 4;
    let metrics = metrics("r", ROUTES);
    while_scraping(&metrics, 4, |_| {
        std::thread::scope(|w| {
            for writer in 0..WRITERS {
                let metrics = &metrics;
                w.spawn(move || {
                    for i in (writer..ROUTES).step_by(WRITERS) {
                        let template = format!("/route/{i}");
                        let record = metrics.id().start("GET", Some(&template)).unwrap();
                        record.respond(200).finish();
                    }
                });
            }
        });
    });
    assert_eq!(Scrape::take(&metrics).total(REQUESTS), ROUTES as f64);
}
