//! Every query of every dashboard, run against a real Prometheus scraping both examples under
//! real traffic, returns data: a panel that would be empty is a bug in the dashboard (or in
//! the metrics).
//!
//! Variables are resolved the way Grafana resolves them: each `label_values(...)` query is
//! asked of Prometheus with the previous variables already expanded, every value is selected
//! (multi-select), and the selection is written as Grafana's Prometheus data source writes it.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use integration_tests::pyroscope::{Mode, Receiver};
use integration_tests::{
    expand_variables, grafana_regex, has_data, parse_label_values, variable_query, wait_until,
    Dashboard, Example, Prometheus,
};

const EXAMPLES: &[&str] = &["example-axum", "example-actix"];

/// What `$__rate_interval` is for a 1 s scrape interval: Grafana takes at least four scrape
/// intervals; 15 s leaves room for a late scrape on a busy CI machine.
const RATE_INTERVAL: &str = "15s";
/// The dashboard's time range, for `$__range`: longer than the test runs, as a real range is.
const RANGE: &str = "5m";

/// The routes the traffic below reaches, as the metric contract names them.
const ROUTES: &[&str] = &[
    "/users/{id}",
    "/api/items/{id}",
    "/fail",
    "/slow",
    "/stream",
    "/work",
    "unmatched",
];

fn scrape_config(examples: &[Example]) -> String {
    let mut config = String::from(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n",
    );
    for (name, example) in EXAMPLES.iter().zip(examples) {
        config.push_str(&format!(
            "  - job_name: {name}\n    static_configs:\n      - targets: [\"{}\"]\n",
            example.addr
        ));
    }
    config
}

/// Requests every route of `base` in a loop until `stop`: successes, 5xx, slow and streamed
/// responses, unknown paths (route `unmatched`) and clients that give up early (499).
fn drive_traffic(rt: &tokio::runtime::Runtime, base: String, stop: Arc<AtomicBool>) {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .expect("reqwest client");
    let fast = {
        let (client, base, stop) = (client.clone(), base.clone(), stop.clone());
        async move {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                for path in [
                    format!("/users/{i}"),
                    format!("/api/items/{i}"),
                    // CPU for the "CPU by route" panel (continuous profiling samples it).
                    "/work?ms=5".to_owned(),
                    "/fail".to_owned(),
                    "/stream?chunks=20&delay_ms=2".to_owned(),
                    format!("/wp-login.php?x={i}"),
                    format!("/no/such/path/{i}"),
                ] {
                    let _ = client
                        .get(format!("{base}{path}"))
                        .send()
                        .await
                        .map(|r| r.bytes());
                }
                i += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    let slow = {
        let (client, base, stop) = (client.clone(), base.clone(), stop.clone());
        async move {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let ms = [30, 120, 300, 700][(i % 4) as usize];
                let _ = client.get(format!("{base}/slow?ms={ms}")).send().await;
                i += 1;
            }
        }
    };
    let impatient = async move {
        while !stop.load(Ordering::Relaxed) {
            // The client hangs up after 50 ms on a 400 ms answer: recorded as 499.
            let _ = client
                .get(format!("{base}/slow?ms=400"))
                .timeout(Duration::from_millis(50))
                .send()
                .await;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    rt.spawn(fast);
    rt.spawn(slow);
    rt.spawn(impatient);
}

/// Every dashboard variable's values, resolved in order against Prometheus, all selected.
fn resolve_variables(prom: &Prometheus, d: &Dashboard) -> BTreeMap<String, Vec<String>> {
    let mut values: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for var in d.variables() {
        let name = var["name"].as_str().unwrap_or_default().to_owned();
        if var["type"] != "query" {
            continue;
        }
        let query = variable_query(var).unwrap_or_default();
        let (selector, label) = parse_label_values(query)
            .unwrap_or_else(|| panic!("{}: variable {name}: {query:?}", d.name()));
        let selector = expand_variables(&selector.unwrap_or_default(), &|n, _| {
            values.get(n).map(|v| grafana_regex(v))
        });
        let found = prom
            .label_values(&label, &selector)
            .unwrap_or_else(|e| panic!("{}: variable {name}: {e}", d.name()));
        assert!(
            !found.is_empty(),
            "{}: variable {name} ({query}) has no values",
            d.name()
        );
        values.insert(name, found);
    }
    values
}

fn expand(expr: &str, values: &BTreeMap<String, Vec<String>>) -> String {
    expand_variables(expr, &|name, _format| match name {
        "__rate_interval" => Some(RATE_INTERVAL.to_owned()),
        "__range" => Some(RANGE.to_owned()),
        name => values.get(name).map(|v| grafana_regex(v)),
    })
}

/// Runs every query of `d` with `values`; returns (queries, the failures: what, expanded query).
fn run_queries(
    prom: &Prometheus,
    d: &Dashboard,
    values: &BTreeMap<String, Vec<String>>,
) -> (usize, Vec<(String, String)>) {
    let queries = d.queries();
    let mut failures = Vec::new();
    for q in &queries {
        let expr = expand(&q.expr, values);
        // A scrape can land late on a loaded machine: give an empty answer two more looks,
        // a second apart. A broken query stays empty.
        let mut outcome = String::from("no data");
        let ok = (0..3).any(|attempt| {
            if attempt > 0 {
                std::thread::sleep(Duration::from_secs(1));
            }
            match prom.query(&expr) {
                Ok(data) if has_data(&data) => true,
                Ok(data) => {
                    outcome = format!("no data: {data}");
                    false
                }
                Err(e) => {
                    outcome = e;
                    false
                }
            }
        });
        if !ok {
            failures.push((
                format!("{} / {} {}: {outcome}", d.name(), q.panel, q.ref_id),
                expr,
            ));
        }
    }
    (queries.len(), failures)
}

#[test]
fn every_dashboard_query_returns_data_on_real_traffic() {
    // Continuous profiling on, to a local stand-in for Pyroscope's ingest API: the profiling
    // row's queries need its counter.
    let pyroscope = Receiver::start(Mode::Accept);
    let url = pyroscope.url();
    let profiling = [
        ("OBSERVE_PYROSCOPE_URL", url.as_str()),
        ("OBSERVE_PYROSCOPE_EVERY_SECONDS", "1"),
    ];
    let examples: Vec<Example> = EXAMPLES
        .iter()
        .map(|name| Example::start(name, &profiling))
        .collect();
    // Two servers scrape the same examples: one as Prometheus scrapes by default (text, classic
    // buckets), one with native histograms on (protobuf; 2.42 then keeps only the native
    // series of the duration histogram). Every query must show data on both.
    let config = scrape_config(&examples);
    let text_prom = Prometheus::start(&[], &config);
    let native_prom = Prometheus::start_with_flags(
        &[],
        &config,
        &["--enable-feature=exemplar-storage,native-histograms"],
    );

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let stop = Arc::new(AtomicBool::new(false));
    for example in &examples {
        drive_traffic(&rt, example.url(""), stop.clone());
    }

    // Wait until every route of every example has a rate (two scrapes with traffic between)
    // and five scrapes of each are in, so the windows below hold data.
    let want = EXAMPLES.len() * ROUTES.len();
    let ready = format!(
        "count(sum by (job, http_route) (rate(http_server_requests_total[{RATE_INTERVAL}])) > 0) \
         and on () count(count_over_time(up[{RATE_INTERVAL}]) >= 5) == {}",
        EXAMPLES.len()
    );
    let mut failures = Vec::new();
    for (kind, prom) in [("text", &text_prom), ("native-histogram", &native_prom)] {
        wait_until(
            &format!("every route of both examples in the {kind} Prometheus"),
            Duration::from_secs(60),
            || {
                let data = prom.query(&ready).ok()?;
                let n: f64 = data["result"][0]["value"][1].as_str()?.parse().ok()?;
                (n as usize >= want).then_some(())
            },
        );

        // What each server holds of the duration histogram: the queries below must find their
        // data in the classic buckets on one and in the native histogram on the other.
        let holds = |expr: &str| prom.query(expr).map(|d| has_data(&d)).unwrap_or(false);
        let classic = holds("count(http_server_request_duration_seconds_bucket)");
        let native = holds("http_server_request_duration_seconds");
        assert_eq!(
            (classic, native),
            (kind == "text", kind == "native-histogram"),
            "{kind} Prometheus: classic duration buckets {classic}, native histogram {native}"
        );
        for d in Dashboard::load_all() {
            let values = resolve_variables(prom, &d);
            for (name, want) in [
                ("job", EXAMPLES.len()),
                ("instance", EXAMPLES.len()),
                ("service", EXAMPLES.len()),
            ] {
                assert_eq!(
                    values[name].len(),
                    want,
                    "{}: variable {name} = {:?}",
                    d.name(),
                    values[name]
                );
            }
            for route in ROUTES {
                assert!(
                    values["route"].iter().any(|r| r == route),
                    "{}: route {route} missing from {:?}",
                    d.name(),
                    values["route"]
                );
            }
            let (total, failed) = run_queries(prom, &d, &values);
            println!(
                "{} on the {kind} Prometheus: {} panels, {} queries, {} returned data (every job, instance, service and route selected)",
                d.name(),
                d.data_panels().len(),
                total,
                total - failed.len()
            );
            failures.extend(
                failed
                    .into_iter()
                    .map(|(what, expr)| (format!("{kind}: {what}"), expr)),
            );
            // The route dashboard is usually opened on one route (the overview's table links there):
            // it must show data for each route on its own too, including routes without errors.
            if d.variables().iter().any(|v| v["name"] == "route") && d.name().starts_with("route") {
                let mut per_route_total = 0;
                let mut per_route_ok = 0;
                for route in values["route"].clone() {
                    let mut one = values.clone();
                    one.insert("route".to_owned(), vec![route]);
                    let (total, failed) = run_queries(prom, &d, &one);
                    per_route_total += total;
                    per_route_ok += total - failed.len();
                    failures.extend(
                        failed
                            .into_iter()
                            .map(|(what, expr)| (format!("{kind}: {what}"), expr)),
                    );
                }
                println!(
                    "{} on the {kind} Prometheus: one route at a time ({} routes): {} queries, {} returned data",
                    d.name(),
                    values["route"].len(),
                    per_route_total,
                    per_route_ok
                );
            }
        }
    }
    // The runtime row reads the `tokio_*` families, which carry no `service`: each example
    // must fill every one of its panels on its own (its runtime, not the other's).
    let overview = Dashboard::load_all()
        .into_iter()
        .find(|d| d.name() == "service-overview.json")
        .expect("the service overview");
    let prom = &text_prom;
    let values = resolve_variables(prom, &overview);
    let runtime: Vec<_> = overview
        .queries()
        .into_iter()
        .filter(|q| q.expr.contains("tokio_"))
        .collect();
    assert!(runtime.len() >= 5, "the Runtime row's queries: {runtime:?}");
    for job in EXAMPLES {
        let mut one = values.clone();
        one.insert("job".to_owned(), vec![(*job).to_owned()]);
        for q in &runtime {
            let expr = expand(&q.expr, &one);
            let data = prom.query(&expr).unwrap_or_default();
            if !has_data(&data) {
                failures.push((
                    format!("{job} alone / {} {}: no data", q.panel, q.ref_id),
                    expr,
                ));
            }
        }
    }
    println!(
        "service-overview.json: the {} runtime queries return data for each example alone",
        runtime.len()
    );
    stop.store(true, Ordering::Relaxed);
    rt.shutdown_timeout(Duration::from_secs(2));

    let report: Vec<String> = failures
        .iter()
        .map(|(what, expr)| format!("{what}\n    {expr}"))
        .collect();
    assert!(
        failures.is_empty(),
        "dashboard queries without data:\n{}",
        report.join("\n")
    );
}
