use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::Arc;

use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::Registry;

use crate::error::ObserveError;
use crate::exemplar::Recorded;
use crate::exposition::model::{self, Bucket, Exemplar, Family, Kind, Sample, Value};
use crate::histogram::{Bounds, HistogramSnapshot};
use crate::labels::{MethodLabel, METHOD, ROUTE, SERVICE, STATUS};
use crate::store::{Histogram, MetricsStore, StoreOwner};
use crate::sync::read;

pub(crate) const DURATION: &str = "http_server_request_duration_seconds";
pub(crate) const REQUESTS: &str = "http_server_requests_total";
pub(crate) const ACTIVE: &str = "http_server_active_requests";
pub(crate) const REQUEST_SIZE: &str = "http_server_request_body_size_bytes";
pub(crate) const RESPONSE_SIZE: &str = "http_server_response_body_size_bytes";
pub(crate) const CPU: &str = "http_server_cpu_seconds_total";

/// Exposes one service's [`MetricsStore`] to a `prometheus::Registry`.
pub(crate) struct HttpCollector {
    /// Keeps the metrics open while the registry holds this collector.
    owner: Arc<StoreOwner>,
    descs: Vec<Desc>,
}

impl HttpCollector {
    pub(crate) fn new(owner: Arc<StoreOwner>) -> Result<Self, ObserveError> {
        let store = &owner.store;
        let mut const_labels: HashMap<String, String> =
            store.const_labels.iter().cloned().collect();
        const_labels.insert(SERVICE.to_owned(), store.service.clone());
        let per_request = || vec![ROUTE.to_owned(), METHOD.to_owned(), STATUS.to_owned()];
        let mut families = vec![
            (DURATION, "Duration of HTTP server requests, from entering the middleware to the end of the response body.", per_request()),
            (REQUESTS, "HTTP server requests, counted once each when recorded.", per_request()),
            (ACTIVE, "HTTP server requests in flight.", vec![METHOD.to_owned()]),
            (CPU, "CPU time spent on requests, by route, as the CPU profiler sampled it (it counts only while a profile or continuous profiling runs).", vec![ROUTE.to_owned(), METHOD.to_owned()]),
        ];
        if store.size_bounds.is_some() {
            families.push((
                REQUEST_SIZE,
                "Request body bytes read by the server, counted when the request is recorded.",
                per_request(),
            ));
            families.push((
                RESPONSE_SIZE,
                "Response body bytes sent by the server, counted when the response body ends.",
                per_request(),
            ));
        }
        let descs = families
            .into_iter()
            .map(|(name, help, labels)| {
                Desc::new(
                    name.to_owned(),
                    help.to_owned(),
                    labels,
                    const_labels.clone(),
                )
            })
            .collect::<Result<_, _>>()
            .map_err(ObserveError::Registration)?;
        Ok(HttpCollector { owner, descs })
    }

    fn store(&self) -> &MetricsStore {
        &self.owner.store
    }

    fn help(&self, name: &str) -> String {
        self.descs
            .iter()
            .find(|d| d.fq_name == name)
            .map(|d| d.help.clone())
            .unwrap_or_default()
    }

    fn family(&self, name: &str, kind: Kind, metrics: Vec<Sample>) -> Family {
        Family {
            name: name.to_owned(),
            help: self.help(name),
            kind,
            metrics,
        }
    }

    /// Label pairs sorted by name, as every format writes them.
    fn labels(&self, variable: &[(&'static str, &str)]) -> Vec<(String, String)> {
        let mut pairs: Vec<(String, String)> = self
            .store()
            .const_labels
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .chain([(SERVICE.to_owned(), self.store().service.clone())])
            .chain(
                variable
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
            )
            .collect();
        pairs.sort_unstable();
        pairs
    }

    /// This service's families, with everything the formats can carry.
    pub(crate) fn families(&self) -> Vec<Family> {
        let store = self.store();
        let mut durations = Vec::new();
        let mut counts = Vec::new();
        let mut request_sizes = Vec::new();
        let mut response_sizes = Vec::new();
        {
            let series = read(&store.series);
            // Names after the series: a route is named before any series of it exists, so
            // every series in this map has its name in this copy. (Copied before the lock, a
            // route interned in between had none: `http_route=""`, duplicate samples.)
            let routes = store.routes.names();
            for (key, s) in series.iter() {
                let Some(route) = routes.get(key.route()) else {
                    debug_assert!(false, "series of an unnamed route {}", key.route());
                    continue;
                };
                let status = key.status().to_string();
                let labels = self.labels(&[
                    (ROUTE, &**route),
                    (METHOD, key.method().as_str()),
                    (STATUS, &status),
                ]);
                let sample = |value| Sample {
                    labels: labels.clone(),
                    value,
                    created: Some(s.created()),
                    timestamp_ms: None,
                };
                // Native buckets before the classic ones: they are written after, so the
                // classic count read next is never below what the native buckets hold.
                let native = s.native_snapshot(store);
                let snapshot = s.snapshot(store, Histogram::Duration);
                let exemplars: Vec<Option<Exemplar>> = s
                    .exemplars()
                    .into_iter()
                    .map(|e| e.map(|e| exemplar(&e, e.nanos as f64 / 1e9)))
                    .collect();
                // The counter's exemplar: the newest of the buckets' (each request counts 1).
                let newest = exemplars
                    .iter()
                    .flatten()
                    .max_by(|a, b| a.timestamp.total_cmp(&b.timestamp))
                    .map(|e| Exemplar {
                        value: 1.0,
                        ..e.clone()
                    });
                counts.push(sample(Value::Counter(snapshot.count as f64, newest)));
                if let Some(bounds) = &store.size_bounds {
                    let request = s.snapshot(store, Histogram::RequestSize);
                    request_sizes.push(sample(histogram(&request, bounds)));
                    let response = s.snapshot(store, Histogram::ResponseSize);
                    response_sizes.push(sample(histogram(&response, bounds)));
                }
                let mut duration = histogram(&snapshot, &store.duration_bounds);
                if let Value::Histogram(h) = &mut duration {
                    for (bucket, exemplar) in h.buckets.iter_mut().zip(exemplars) {
                        bucket.exemplar = exemplar;
                    }
                    if let Some(native) = native {
                        // The native buckets are the count (Prometheus checks they add up to
                        // it); a classic bucket may hold a request whose native bucket was
                        // not read yet: never above the count.
                        h.count =
                            native.zero_count + native.positive.iter().map(|b| b.1).sum::<u64>();
                        for bucket in &mut h.buckets {
                            bucket.cumulative = bucket.cumulative.min(h.count);
                        }
                        if let Some(inf) = h.buckets.last_mut() {
                            inf.cumulative = h.count;
                        }
                        h.native = Some(native);
                    }
                }
                durations.push(sample(duration));
            }
        }
        let active = MethodLabel::all()
            .filter_map(|m| Some((m, store.active_requests(m)?)))
            .map(|(m, active)| Sample {
                labels: self.labels(&[(METHOD, m.as_str())]),
                value: Value::Gauge(active as f64),
                created: None,
                timestamp_ms: None,
            })
            .collect();
        let cpu: Vec<Sample> = {
            let cpu = store.cpu.lock().unwrap_or_else(|e| e.into_inner());
            let routes = store.routes.names();
            cpu.iter()
                .filter_map(|((route, method), &seconds)| {
                    let route = routes.get(route.0 as usize)?;
                    Some(Sample {
                        labels: self.labels(&[(ROUTE, route), (METHOD, method.as_str())]),
                        value: Value::Counter(seconds, None),
                        created: None,
                        timestamp_ms: None,
                    })
                })
                .collect()
        };
        let mut families = vec![
            self.family(DURATION, Kind::Histogram, durations),
            self.family(REQUESTS, Kind::Counter, counts),
            self.family(ACTIVE, Kind::Gauge, active),
        ];
        if !cpu.is_empty() {
            families.push(self.family(CPU, Kind::Counter, cpu));
        }
        if store.size_bounds.is_some() {
            families.push(self.family(REQUEST_SIZE, Kind::Histogram, request_sizes));
            families.push(self.family(RESPONSE_SIZE, Kind::Histogram, response_sizes));
        }
        families
    }
}

fn exemplar(recorded: &Recorded, value: f64) -> Exemplar {
    Exemplar {
        labels: vec![
            ("trace_id", recorded.trace.trace_id_hex()),
            ("span_id", recorded.trace.span_id_hex()),
        ],
        value,
        timestamp: recorded.timestamp,
    }
}

fn histogram(snapshot: &HistogramSnapshot, bounds: &Bounds) -> Value {
    let buckets = bounds
        .exposed()
        .iter()
        .zip(&snapshot.cumulative)
        .map(|(&upper, &cumulative)| Bucket {
            upper,
            cumulative,
            exemplar: None,
        })
        .chain([Bucket {
            upper: f64::INFINITY,
            cumulative: snapshot.count,
            exemplar: None,
        }])
        .collect();
    Value::Histogram(model::Histogram {
        count: snapshot.count,
        sum: snapshot.sum / bounds.units_per_exposed,
        buckets,
        native: None,
    })
}

impl Collector for HttpCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        if HANDOVER.with(|h| h.borrow().is_some()) {
            let families = self.families();
            HANDOVER.with(|h| {
                if let Some(gathered) = &mut *h.borrow_mut() {
                    gathered.extend(families);
                }
            });
            return vec![marker()];
        }
        self.families().iter().map(Family::to_proto).collect()
    }
}

/// The name of the one family a collector gives `Registry::gather` while it hands its own
/// over: the registry renames and labels it as every family it returns (the prefix and common
/// labels of `Registry::new_custom`), which tells [`gather`] what to do to the handed-over ones.
const MARKER: &str = "__observe_handover__";

fn marker() -> MetricFamily {
    let mut family = MetricFamily::default();
    family.set_name(MARKER.to_owned());
    family.set_field_type(prometheus::proto::MetricType::UNTYPED);
    family.set_metric(vec![prometheus::proto::Metric::default()]);
    family
}

thread_local! {
    /// Set while [`gather`] runs on this thread: the collectors of observe's families hand
    /// them over here instead of answering in the `prometheus` crate's model, which has no
    /// room for exemplars, native histograms or creation times.
    static HANDOVER: RefCell<Option<Vec<Family>>> = const { RefCell::new(None) };
}

/// Puts back what [`HANDOVER`] held before `gather` began, however it ends (a user's collector
/// may panic, or gather another registry from inside a scrape: the outer scrape's families
/// must survive the inner one).
struct Handover(Option<Vec<Family>>);

impl Drop for Handover {
    fn drop(&mut self) {
        let outer = self.0.take();
        HANDOVER.with(|h| *h.borrow_mut() = outer);
    }
}

/// Everything on `registry`, sorted by name: observe's families as built here, with their
/// exemplars and native buckets, and every other family (process metrics, the user's own) as
/// its collector gives it.
pub(crate) fn gather(registry: &Registry) -> Vec<Family> {
    let handover = Handover(HANDOVER.with(|h| h.borrow_mut().replace(Vec::new())));
    let mut others = registry.gather();
    let mut ours = HANDOVER.with(|h| h.borrow_mut().take()).unwrap_or_default();
    drop(handover);
    // What the registry did to the marker, it does to every family: do it to ours.
    if let Some(at) = others.iter().position(|f| f.name().ends_with(MARKER)) {
        let marker = others.remove(at);
        let prefix = marker.name().strip_suffix(MARKER).unwrap_or_default();
        let common: Vec<(String, String)> = marker
            .get_metric()
            .first()
            .map(|m| {
                m.get_label()
                    .iter()
                    .map(|l| (l.name().to_owned(), l.value().to_owned()))
                    .collect()
            })
            .unwrap_or_default();
        for family in &mut ours {
            family.name.insert_str(0, prefix);
            for sample in &mut family.metrics {
                if !common.is_empty() {
                    sample.labels.extend(common.iter().cloned());
                    sample.labels.sort();
                }
            }
        }
    }
    let mut families: Vec<Family> = others.iter().map(Family::from_proto).collect();
    families.extend(ours);
    // Two services on one registry give two families of each name: one family each.
    families.sort_by(|a, b| a.name.cmp(&b.name));
    families.dedup_by(|next, kept| {
        let same = next.name == kept.name;
        if same {
            kept.metrics.append(&mut next.metrics);
        }
        same
    });
    // Samples in label order, as `Registry::gather` gives them: the same registry always
    // encodes to the same bytes.
    for family in &mut families {
        family.metrics.sort_by(|a, b| a.labels.cmp(&b.labels));
    }
    families
}
