//! The Prometheus protobuf format (`io.prometheus.client.MetricFamily`, length-delimited): the
//! only one that carries native histograms. The messages are those of `client_model`'s
//! `metrics.proto`, declared by hand with their field numbers (no build step, no `protoc`).

use prost::Message;

use super::model::{self, Family, Kind, Value};

#[derive(Clone, PartialEq, Message)]
struct MetricFamily {
    #[prost(string, optional, tag = "1")]
    name: Option<String>,
    #[prost(string, optional, tag = "2")]
    help: Option<String>,
    #[prost(int32, optional, tag = "3")]
    r#type: Option<i32>,
    #[prost(message, repeated, tag = "4")]
    metric: Vec<Metric>,
}

#[derive(Clone, PartialEq, Message)]
struct Metric {
    #[prost(message, repeated, tag = "1")]
    label: Vec<LabelPair>,
    #[prost(message, optional, tag = "2")]
    gauge: Option<Gauge>,
    #[prost(message, optional, tag = "3")]
    counter: Option<Counter>,
    #[prost(message, optional, tag = "4")]
    summary: Option<Summary>,
    #[prost(message, optional, tag = "5")]
    untyped: Option<Gauge>,
    #[prost(int64, optional, tag = "6")]
    timestamp_ms: Option<i64>,
    #[prost(message, optional, tag = "7")]
    histogram: Option<Histogram>,
}

#[derive(Clone, PartialEq, Message)]
struct LabelPair {
    #[prost(string, optional, tag = "1")]
    name: Option<String>,
    #[prost(string, optional, tag = "2")]
    value: Option<String>,
}

/// Also `Untyped`: the same single field.
#[derive(Clone, PartialEq, Message)]
struct Gauge {
    #[prost(double, optional, tag = "1")]
    value: Option<f64>,
}

#[derive(Clone, PartialEq, Message)]
struct Counter {
    #[prost(double, optional, tag = "1")]
    value: Option<f64>,
    #[prost(message, optional, tag = "2")]
    exemplar: Option<Exemplar>,
    #[prost(message, optional, tag = "3")]
    created_timestamp: Option<Timestamp>,
}

#[derive(Clone, PartialEq, Message)]
struct Quantile {
    #[prost(double, optional, tag = "1")]
    quantile: Option<f64>,
    #[prost(double, optional, tag = "2")]
    value: Option<f64>,
}

#[derive(Clone, PartialEq, Message)]
struct Summary {
    #[prost(uint64, optional, tag = "1")]
    sample_count: Option<u64>,
    #[prost(double, optional, tag = "2")]
    sample_sum: Option<f64>,
    #[prost(message, repeated, tag = "3")]
    quantile: Vec<Quantile>,
    #[prost(message, optional, tag = "4")]
    created_timestamp: Option<Timestamp>,
}

#[derive(Clone, PartialEq, Message)]
struct Histogram {
    #[prost(uint64, optional, tag = "1")]
    sample_count: Option<u64>,
    #[prost(double, optional, tag = "2")]
    sample_sum: Option<f64>,
    #[prost(message, repeated, tag = "3")]
    bucket: Vec<Bucket>,
    #[prost(sint32, optional, tag = "5")]
    schema: Option<i32>,
    #[prost(double, optional, tag = "6")]
    zero_threshold: Option<f64>,
    #[prost(uint64, optional, tag = "7")]
    zero_count: Option<u64>,
    #[prost(message, repeated, tag = "12")]
    positive_span: Vec<BucketSpan>,
    #[prost(sint64, repeated, packed = "false", tag = "13")]
    positive_delta: Vec<i64>,
    #[prost(message, optional, tag = "15")]
    created_timestamp: Option<Timestamp>,
}

#[derive(Clone, PartialEq, Message)]
struct Bucket {
    #[prost(uint64, optional, tag = "1")]
    cumulative_count: Option<u64>,
    #[prost(double, optional, tag = "2")]
    upper_bound: Option<f64>,
    #[prost(message, optional, tag = "3")]
    exemplar: Option<Exemplar>,
}

#[derive(Clone, PartialEq, Message)]
struct BucketSpan {
    #[prost(sint32, optional, tag = "1")]
    offset: Option<i32>,
    #[prost(uint32, optional, tag = "2")]
    length: Option<u32>,
}

#[derive(Clone, PartialEq, Message)]
struct Exemplar {
    #[prost(message, repeated, tag = "1")]
    label: Vec<LabelPair>,
    #[prost(double, optional, tag = "2")]
    value: Option<f64>,
    #[prost(message, optional, tag = "3")]
    timestamp: Option<Timestamp>,
}

/// `google.protobuf.Timestamp`, wire-compatible.
#[derive(Clone, PartialEq, Message)]
struct Timestamp {
    #[prost(int64, tag = "1")]
    seconds: i64,
    #[prost(int32, tag = "2")]
    nanos: i32,
}

/// Writes `families` as length-delimited `MetricFamily` messages.
pub(crate) fn write(families: &[Family], out: &mut Vec<u8>) {
    for family in families.iter().filter(|f| !f.metrics.is_empty()) {
        // Encoding into a `Vec` cannot fail: it grows as needed.
        let _ = convert(family).encode_length_delimited(out);
    }
}

fn convert(family: &Family) -> MetricFamily {
    let kind = match family.kind {
        Kind::Counter => 0,
        Kind::Gauge => 1,
        Kind::Summary => 2,
        Kind::Untyped => 3,
        Kind::Histogram => 4,
    };
    let metric = family
        .metrics
        .iter()
        .map(|sample| {
            let mut m = Metric {
                label: labels(sample.labels.iter().map(|(k, v)| (k.as_str(), v.as_str()))),
                timestamp_ms: sample.timestamp_ms,
                ..Metric::default()
            };
            let created = sample.created.map(timestamp);
            match &sample.value {
                Value::Counter(v, exemplar) => {
                    m.counter = Some(Counter {
                        value: Some(*v),
                        exemplar: exemplar.as_ref().map(convert_exemplar),
                        created_timestamp: created,
                    })
                }
                Value::Gauge(v) if family.kind == Kind::Untyped => {
                    m.untyped = Some(Gauge { value: Some(*v) })
                }
                Value::Gauge(v) => m.gauge = Some(Gauge { value: Some(*v) }),
                Value::Summary {
                    count,
                    sum,
                    quantiles,
                } => {
                    m.summary = Some(Summary {
                        sample_count: Some(*count),
                        sample_sum: Some(*sum),
                        quantile: quantiles
                            .iter()
                            .map(|&(q, v)| Quantile {
                                quantile: Some(q),
                                value: Some(v),
                            })
                            .collect(),
                        created_timestamp: created,
                    })
                }
                Value::Histogram(h) => m.histogram = Some(histogram(h, created)),
            }
            m
        })
        .collect();
    MetricFamily {
        name: Some(family.name.clone()),
        help: Some(family.help.clone()),
        r#type: Some(kind),
        metric,
    }
}

fn histogram(h: &model::Histogram, created: Option<Timestamp>) -> Histogram {
    let mut out = Histogram {
        sample_count: Some(h.count),
        sample_sum: Some(h.sum),
        // `+Inf` is implied by the count, and Go's client leaves it out, unless it carries an
        // exemplar.
        bucket: h
            .buckets
            .iter()
            .filter(|b| b.upper.is_finite() || b.exemplar.is_some())
            .map(|b| Bucket {
                cumulative_count: Some(b.cumulative),
                upper_bound: Some(b.upper),
                exemplar: b.exemplar.as_ref().map(convert_exemplar),
            })
            .collect(),
        created_timestamp: created,
        ..Histogram::default()
    };
    if let Some(native) = &h.native {
        let (spans, counts) = native.spans();
        out.schema = Some(native.schema);
        out.zero_threshold = Some(native.zero_threshold);
        out.zero_count = Some(native.zero_count);
        // A native histogram without observations still needs something that says it is one:
        // an empty span, as Go's client sends.
        out.positive_span = if spans.is_empty() {
            vec![BucketSpan {
                offset: Some(0),
                length: Some(0),
            }]
        } else {
            spans
                .into_iter()
                .map(|(offset, length)| BucketSpan {
                    offset: Some(offset),
                    length: Some(length),
                })
                .collect()
        };
        let mut previous = 0i64;
        out.positive_delta = counts
            .into_iter()
            .map(|count| {
                let delta = count as i64 - previous;
                previous = count as i64;
                delta
            })
            .collect();
    }
    out
}

fn labels<'a>(pairs: impl Iterator<Item = (&'a str, &'a str)>) -> Vec<LabelPair> {
    pairs
        .map(|(k, v)| LabelPair {
            name: Some(k.to_owned()),
            value: Some(v.to_owned()),
        })
        .collect()
}

fn convert_exemplar(e: &model::Exemplar) -> Exemplar {
    Exemplar {
        label: labels(e.labels.iter().map(|(k, v)| (*k, v.as_str()))),
        value: Some(e.value),
        timestamp: Some(timestamp(e.timestamp)),
    }
}

fn timestamp(seconds: f64) -> Timestamp {
    Timestamp {
        seconds: seconds.floor() as i64,
        nanos: ((seconds - seconds.floor()) * 1e9) as i32,
    }
}
