//! The request labels a CPU sample carries (`observe_core::adapter::RequestLabels`), as pprof
//! string labels, and the query parameters that keep one request's samples
//! (`?http_route=/work`).

use observe_core::adapter::RequestLabels;

use crate::error::PprofError;

/// The label keys, named as the metric contract names them (`docs/metrics.md`), and the
/// trace's ids as exemplars name them.
pub(crate) const ROUTE: &str = "http_route";
pub(crate) const METHOD: &str = "http_request_method";
pub(crate) const TRACE_ID: &str = "trace_id";
pub(crate) const SPAN_ID: &str = "span_id";
pub(crate) const KEYS: [&str; 4] = [ROUTE, METHOD, TRACE_ID, SPAN_ID];

/// Query parameters that are not label filters: the profile's own, and those Go's tools send.
const PARAMETERS: [&str; 4] = ["seconds", "frequency", "debug", "gc"];

/// A sample's labels as key/value pairs: the route (while its metrics are open), the method,
/// and the trace and span ids of a sampled trace.
pub(crate) fn pairs(labels: &RequestLabels) -> Vec<(&'static str, String)> {
    let mut pairs = Vec::with_capacity(4);
    if let Some(route) = labels.route_name() {
        pairs.push((ROUTE, route.to_string()));
    }
    pairs.push((METHOD, labels.method_name().to_owned()));
    if let Some(trace) = labels.trace() {
        pairs.push((TRACE_ID, trace.trace_id_hex()));
        pairs.push((SPAN_ID, trace.span_id_hex()));
    }
    pairs
}

/// The label filters of a profile request: every pair must be a sample's for it to stay.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LabelFilter {
    pairs: Vec<(&'static str, String)>,
}

impl LabelFilter {
    /// The filters in `query`: each parameter named after a label (`http_route=/work`,
    /// percent-decoded). Any other parameter than the profile's own is an unknown label: `400`.
    pub fn parse(query: Option<&str>) -> Result<Self, PprofError> {
        let mut pairs = Vec::new();
        for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            if PARAMETERS.contains(&key) {
                continue;
            }
            let Some(key) = KEYS.iter().find(|k| **k == key) else {
                return Err(PprofError::UnknownLabel {
                    name: crate::error::shown(&decoded(key)),
                });
            };
            pairs.push((*key, decoded(value)));
        }
        Ok(LabelFilter { pairs })
    }

    /// Whether there is nothing to filter.
    pub fn is_empty(&self) -> bool {
        self.pairs.is_empty()
    }

    /// Whether a sample with `labels` stays.
    pub(crate) fn keeps(&self, labels: Option<&RequestLabels>) -> bool {
        if self.pairs.is_empty() {
            return true;
        }
        let Some(labels) = labels else {
            return false;
        };
        let have = pairs(labels);
        self.pairs
            .iter()
            .all(|(key, value)| have.iter().any(|(k, v)| k == key && v == value))
    }

    /// The filters as a line of the profile's comments.
    pub(crate) fn describe(&self) -> String {
        let pairs: Vec<String> = self.pairs.iter().map(|(k, v)| format!("{k}={v}")).collect();
        format!("observe: only samples with {}", pairs.join(", "))
    }
}

/// `value` with `%XX` escapes and `+` decoded (as a browser's form sends them); invalid UTF-8
/// is replaced.
fn decoded(value: &str) -> String {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                match hex {
                    Some(b) => {
                        out.push(b);
                        i += 3;
                        continue;
                    }
                    None => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_are_the_label_parameters_and_others_are_refused() {
        let filter =
            LabelFilter::parse(Some("seconds=5&http_route=%2Fusers%2F%7Bid%7D&debug=1")).unwrap();
        assert_eq!(filter.pairs, [(ROUTE, "/users/{id}".to_owned())]);
        assert!(LabelFilter::parse(Some("seconds=5")).unwrap().is_empty());
        assert!(LabelFilter::parse(None).unwrap().is_empty());
        let error = LabelFilter::parse(Some("http_rout=/work")).unwrap_err();
        assert!(error.to_string().contains("http_rout"), "{error}");
        assert!(error.to_string().contains("http_route"), "{error}");
        assert!(!filter.keeps(None), "a filter keeps no unlabelled sample");
        assert!(LabelFilter::default().keeps(None));
    }

    #[test]
    fn escapes_decode_and_broken_ones_stay() {
        assert_eq!(decoded("a%20b+c"), "a b c");
        assert_eq!(decoded("100%"), "100%");
        assert_eq!(decoded("%zz%4"), "%zz%4");
    }
}
