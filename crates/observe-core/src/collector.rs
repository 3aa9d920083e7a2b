use std::collections::HashMap;
use std::sync::Arc;

use prometheus::core::{Collector, Desc};
use prometheus::proto::{self, LabelPair, Metric, MetricFamily, MetricType};

use crate::error::ObserveError;
use crate::histogram::{Bounds, HistogramSnapshot};
use crate::labels::{MethodLabel, METHOD, ROUTE, SERVICE, STATUS};
use crate::state::{Histogram, Owner, State};
use crate::sync::read;

pub(crate) const DURATION: &str = "http_server_request_duration_seconds";
pub(crate) const REQUESTS: &str = "http_server_requests_total";
pub(crate) const ACTIVE: &str = "http_server_active_requests";
pub(crate) const REQUEST_SIZE: &str = "http_server_request_body_size_bytes";
pub(crate) const RESPONSE_SIZE: &str = "http_server_response_body_size_bytes";

/// Exposes one service's [`State`] to a `prometheus::Registry`.
pub(crate) struct HttpCollector {
    /// Keeps the metrics open while the registry holds this collector.
    owner: Arc<Owner>,
    descs: Vec<Desc>,
}

impl HttpCollector {
    pub(crate) fn new(owner: Arc<Owner>) -> Result<Self, ObserveError> {
        let state = &owner.state;
        let mut const_labels: HashMap<String, String> =
            state.const_labels.iter().cloned().collect();
        const_labels.insert(SERVICE.to_owned(), state.service.clone());
        let per_request = || vec![ROUTE.to_owned(), METHOD.to_owned(), STATUS.to_owned()];
        let mut families = vec![
            (DURATION, "Duration of HTTP server requests, from entering the middleware to the end of the response body.", per_request()),
            (REQUESTS, "HTTP server requests, counted once each when recorded.", per_request()),
            (ACTIVE, "HTTP server requests in flight.", vec![METHOD.to_owned()]),
        ];
        if state.size_bounds.is_some() {
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

    fn state(&self) -> &State {
        &self.owner.state
    }

    fn family(&self, name: &str, kind: MetricType, metrics: Vec<Metric>) -> MetricFamily {
        let mut family = MetricFamily::default();
        family.set_name(name.to_owned());
        let help = self
            .descs
            .iter()
            .find(|d| d.fq_name == name)
            .map(|d| d.help.clone());
        family.set_help(help.unwrap_or_default());
        family.set_field_type(kind);
        family.set_metric(metrics);
        family
    }

    /// Label pairs sorted by name, as the text encoder expects them.
    fn labels(&self, variable: &[(&'static str, &str)]) -> Vec<LabelPair> {
        let mut pairs: Vec<(&str, &str)> = self
            .state()
            .const_labels
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .chain([(SERVICE, self.state().service.as_str())])
            .chain(variable.iter().copied())
            .collect();
        pairs.sort_unstable_by_key(|(k, _)| *k);
        pairs
            .into_iter()
            .map(|(k, v)| {
                let mut pair = LabelPair::default();
                pair.set_name(k.to_owned());
                pair.set_value(v.to_owned());
                pair
            })
            .collect()
    }
}

fn histogram(snapshot: &HistogramSnapshot, bounds: &Bounds) -> proto::Histogram {
    let mut h = proto::Histogram::default();
    h.set_sample_count(snapshot.count);
    h.set_sample_sum(snapshot.sum / bounds.units_per_exposed);
    let buckets = bounds
        .exposed()
        .iter()
        .zip(&snapshot.cumulative)
        .map(|(&upper, &count)| {
            let mut b = proto::Bucket::default();
            b.set_upper_bound(upper);
            b.set_cumulative_count(count);
            b
        })
        .collect();
    h.set_bucket(buckets);
    h
}

impl Collector for HttpCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let state = self.state();
        let mut durations = Vec::new();
        let mut counts = Vec::new();
        let mut request_sizes = Vec::new();
        let mut response_sizes = Vec::new();
        {
            let series = read(&state.series);
            // Names after the series: a route is named before any series of it exists, so
            // every series in this map has its name in this copy. (Copied before the lock, a
            // route interned in between had none: `http_route=""`, duplicate samples.)
            let routes = state.routes.names();
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
                let snapshot = s.snapshot(state, Histogram::Duration);
                let mut counter = proto::Counter::default();
                counter.set_value(snapshot.count as f64);
                let mut m = Metric::from_label(labels.clone());
                m.set_counter(counter);
                counts.push(m);
                if let Some(bounds) = &state.size_bounds {
                    let mut m = Metric::from_label(labels.clone());
                    let request = s.snapshot(state, Histogram::RequestSize);
                    m.set_histogram(histogram(&request, bounds));
                    request_sizes.push(m);
                    let mut m = Metric::from_label(labels.clone());
                    let response = s.snapshot(state, Histogram::ResponseSize);
                    m.set_histogram(histogram(&response, bounds));
                    response_sizes.push(m);
                }
                let mut m = Metric::from_label(labels);
                m.set_histogram(histogram(&snapshot, &state.duration_bounds));
                durations.push(m);
            }
        }
        let active = MethodLabel::all()
            .filter_map(|m| Some((m, state.active_requests(m)?)))
            .map(|(m, active)| {
                let mut g = proto::Gauge::default();
                g.set_value(active as f64);
                let mut metric = Metric::from_label(self.labels(&[(METHOD, m.as_str())]));
                metric.set_gauge(g);
                metric
            })
            .collect();
        let mut families = vec![
            self.family(DURATION, MetricType::HISTOGRAM, durations),
            self.family(REQUESTS, MetricType::COUNTER, counts),
            self.family(ACTIVE, MetricType::GAUGE, active),
        ];
        if state.size_bounds.is_some() {
            families.push(self.family(REQUEST_SIZE, MetricType::HISTOGRAM, request_sizes));
            families.push(self.family(RESPONSE_SIZE, MetricType::HISTOGRAM, response_sizes));
        }
        families
    }
}
