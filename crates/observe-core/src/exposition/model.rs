//! The one model every exposition format is written from: what a scrape gathered, with what
//! the `prometheus` crate's own model cannot carry (exemplars, native histograms, creation
//! times). observe's families are built in it directly; everything else on the registry
//! (process metrics, the user's own) is converted from the `prometheus` crate's model.

use prometheus::proto::{self, MetricType};

/// One metric family: a name, its help, its type, and its samples.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Family {
    pub(crate) name: String,
    pub(crate) help: String,
    pub(crate) kind: Kind,
    pub(crate) metrics: Vec<Sample>,
}

/// A family's type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Counter,
    Gauge,
    Histogram,
    Summary,
    Untyped,
}

/// One labelled metric of a family.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Sample {
    /// Sorted by name.
    pub(crate) labels: Vec<(String, String)>,
    pub(crate) value: Value,
    /// When the series was created, in seconds since the Unix epoch (counters and histograms).
    pub(crate) created: Option<f64>,
    pub(crate) timestamp_ms: Option<i64>,
}

/// What a sample holds, by family type.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Value {
    /// A counter's value and its exemplar.
    Counter(f64, Option<Exemplar>),
    /// A gauge's or an untyped metric's value.
    Gauge(f64),
    Summary {
        count: u64,
        sum: f64,
        /// `(quantile, value)`.
        quantiles: Vec<(f64, f64)>,
    },
    Histogram(Histogram),
}

/// A histogram: classic buckets, and native buckets when it has them.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Histogram {
    pub(crate) count: u64,
    pub(crate) sum: f64,
    /// Ascending, the last one `+Inf` (holding `count`).
    pub(crate) buckets: Vec<Bucket>,
    pub(crate) native: Option<NativeBuckets>,
}

/// One classic bucket.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Bucket {
    pub(crate) upper: f64,
    pub(crate) cumulative: u64,
    pub(crate) exemplar: Option<Exemplar>,
}

/// The buckets of a native (exponential) histogram: bucket `i` holds values in
/// `(2^((i-1)/2^schema), 2^(i/2^schema)]`, values at most `zero_threshold` are in the zero
/// bucket. Only positive values (durations are never negative).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct NativeBuckets {
    pub(crate) schema: i32,
    pub(crate) zero_threshold: f64,
    pub(crate) zero_count: u64,
    /// `(index, count)`, ascending by index, counts not zero.
    pub(crate) positive: Vec<(i32, u64)>,
}

/// A trace a value came from.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Exemplar {
    pub(crate) labels: Vec<(&'static str, String)>,
    pub(crate) value: f64,
    /// Seconds since the Unix epoch.
    pub(crate) timestamp: f64,
}

impl NativeBuckets {
    /// Runs of consecutive bucket indexes, as `(offset from the previous run's end, length)`,
    /// with each bucket's count: what the protobuf format's spans and deltas are made of. Gaps
    /// of one or two empty buckets are filled with zeros rather than starting a new span, as
    /// Go's client does.
    pub(crate) fn spans(&self) -> (Vec<(i32, u32)>, Vec<u64>) {
        let mut spans: Vec<(i32, u32)> = Vec::new();
        let mut counts = Vec::new();
        let mut next = None::<i32>;
        for &(index, count) in &self.positive {
            match next {
                Some(expected) if index - expected <= 2 => {
                    let gap = (index - expected) as usize;
                    counts.extend(std::iter::repeat_n(0, gap));
                    if let Some(span) = spans.last_mut() {
                        span.1 += gap as u32 + 1;
                    }
                }
                Some(expected) => spans.push((index - expected, 1)),
                None => spans.push((index, 1)),
            }
            counts.push(count);
            next = Some(index + 1);
        }
        (spans, counts)
    }
}

impl Family {
    /// A family of the `prometheus` crate's model (everything on the registry but observe's
    /// own families).
    pub(crate) fn from_proto(family: &proto::MetricFamily) -> Family {
        let kind = match family.get_field_type() {
            MetricType::COUNTER => Kind::Counter,
            MetricType::GAUGE => Kind::Gauge,
            MetricType::HISTOGRAM => Kind::Histogram,
            MetricType::SUMMARY => Kind::Summary,
            MetricType::UNTYPED => Kind::Untyped,
        };
        let metrics = family
            .get_metric()
            .iter()
            .map(|m| {
                let mut labels: Vec<(String, String)> = m
                    .get_label()
                    .iter()
                    .map(|l| (l.name().to_owned(), l.value().to_owned()))
                    .collect();
                labels.sort();
                let value = match kind {
                    Kind::Counter => Value::Counter(m.get_counter().value(), None),
                    Kind::Gauge => Value::Gauge(m.get_gauge().value()),
                    Kind::Untyped => Value::Gauge(m.untyped.as_ref().map_or(0.0, |u| u.value())),
                    Kind::Summary => {
                        let s = m.get_summary();
                        Value::Summary {
                            count: s.sample_count(),
                            sum: s.sample_sum(),
                            quantiles: s
                                .get_quantile()
                                .iter()
                                .map(|q| (q.quantile(), q.value()))
                                .collect(),
                        }
                    }
                    Kind::Histogram => {
                        let h = m.get_histogram();
                        let count = h.get_sample_count();
                        let buckets = h
                            .get_bucket()
                            .iter()
                            .filter(|b| b.upper_bound() != f64::INFINITY)
                            .map(|b| Bucket {
                                upper: b.upper_bound(),
                                cumulative: b.cumulative_count(),
                                exemplar: None,
                            })
                            .chain([Bucket {
                                upper: f64::INFINITY,
                                cumulative: count,
                                exemplar: None,
                            }])
                            .collect();
                        Value::Histogram(Histogram {
                            count,
                            sum: h.get_sample_sum(),
                            buckets,
                            native: None,
                        })
                    }
                };
                Sample {
                    labels,
                    value,
                    created: None,
                    timestamp_ms: (m.timestamp_ms() != 0).then(|| m.timestamp_ms()),
                }
            })
            .collect();
        Family {
            name: family.name().to_owned(),
            help: family.help().to_owned(),
            kind,
            metrics,
        }
    }

    /// This family in the `prometheus` crate's model, for `Registry::gather` callers: what it
    /// cannot carry (exemplars, native buckets, creation times) is left out.
    pub(crate) fn to_proto(&self) -> proto::MetricFamily {
        let mut family = proto::MetricFamily::default();
        family.set_name(self.name.clone());
        family.set_help(self.help.clone());
        family.set_field_type(match self.kind {
            Kind::Counter => MetricType::COUNTER,
            Kind::Gauge => MetricType::GAUGE,
            Kind::Histogram => MetricType::HISTOGRAM,
            Kind::Summary => MetricType::SUMMARY,
            Kind::Untyped => MetricType::UNTYPED,
        });
        let metrics = self
            .metrics
            .iter()
            .map(|sample| {
                let labels = sample
                    .labels
                    .iter()
                    .map(|(k, v)| {
                        let mut pair = proto::LabelPair::default();
                        pair.set_name(k.clone());
                        pair.set_value(v.clone());
                        pair
                    })
                    .collect();
                let mut m = proto::Metric::from_label(labels);
                match &sample.value {
                    Value::Counter(v, _) => {
                        let mut c = proto::Counter::default();
                        c.set_value(*v);
                        m.set_counter(c);
                    }
                    Value::Gauge(v) => {
                        let mut g = proto::Gauge::default();
                        g.set_value(*v);
                        m.set_gauge(g);
                    }
                    Value::Summary {
                        count,
                        sum,
                        quantiles,
                    } => {
                        let mut s = proto::Summary::default();
                        s.set_sample_count(*count);
                        s.set_sample_sum(*sum);
                        s.set_quantile(
                            quantiles
                                .iter()
                                .map(|&(q, v)| {
                                    let mut quantile = proto::Quantile::default();
                                    quantile.set_quantile(q);
                                    quantile.set_value(v);
                                    quantile
                                })
                                .collect(),
                        );
                        m.set_summary(s);
                    }
                    Value::Histogram(h) => {
                        let mut out = proto::Histogram::default();
                        out.set_sample_count(h.count);
                        out.set_sample_sum(h.sum);
                        out.set_bucket(
                            h.buckets
                                .iter()
                                .filter(|b| b.upper.is_finite())
                                .map(|b| {
                                    let mut bucket = proto::Bucket::default();
                                    bucket.set_upper_bound(b.upper);
                                    bucket.set_cumulative_count(b.cumulative);
                                    bucket
                                })
                                .collect(),
                        );
                        m.set_histogram(out);
                    }
                }
                if let Some(ts) = sample.timestamp_ms {
                    m.set_timestamp_ms(ts);
                }
                m
            })
            .collect();
        family.set_metric(metrics);
        family
    }
}

#[cfg(test)]
mod tests {
    use super::NativeBuckets;

    #[test]
    fn spans_fill_small_gaps_and_start_a_new_span_after_large_ones() {
        let native = NativeBuckets {
            schema: 3,
            zero_threshold: 0.0,
            zero_count: 0,
            positive: vec![(-2, 1), (-1, 2), (1, 3), (7, 4), (8, 5)],
        };
        let (spans, counts) = native.spans();
        assert_eq!(spans, vec![(-2, 4), (5, 2)]);
        assert_eq!(counts, vec![1, 2, 0, 3, 4, 5]);
        let empty = NativeBuckets {
            positive: vec![],
            ..native
        };
        assert_eq!(empty.spans(), (vec![], vec![]));
    }
}
