/// Label names of the metric contract (`docs/metrics.md`).
pub(crate) const SERVICE: &str = "service";
pub(crate) const ROUTE: &str = "http_route";
pub(crate) const METHOD: &str = "http_request_method";
pub(crate) const STATUS: &str = "http_response_status_code";

/// The value of `http_request_method`: one of the nine standard methods, or `_OTHER`.
///
/// Any other method a client invents is folded into `_OTHER`, so the label can take at most
/// ten values whatever clients send.
///
/// ```
/// use observe_core::adapter::MethodLabel;
/// assert_eq!(MethodLabel::from_method("PATCH").as_str(), "PATCH");
/// assert_eq!(MethodLabel::from_method("PURGE").as_str(), "_OTHER");
/// assert_eq!(MethodLabel::from_method("get").as_str(), "_OTHER"); // methods are case-sensitive
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MethodLabel(u8);

impl MethodLabel {
    /// How many distinct values the label can take.
    pub const COUNT: usize = 10;

    const NAMES: [&'static str; Self::COUNT] = [
        "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH", "_OTHER",
    ];

    /// Classifies a request method by its name as sent on the wire.
    pub fn from_method(method: &str) -> Self {
        let index = match method {
            "GET" => 0,
            "HEAD" => 1,
            "POST" => 2,
            "PUT" => 3,
            "DELETE" => 4,
            "CONNECT" => 5,
            "OPTIONS" => 6,
            "TRACE" => 7,
            "PATCH" => 8,
            _ => 9,
        };
        MethodLabel(index)
    }

    /// The label value.
    pub fn as_str(self) -> &'static str {
        Self::NAMES[self.0 as usize]
    }

    pub(crate) fn index(self) -> usize {
        self.0 as usize
    }

    pub(crate) fn from_index(index: usize) -> Self {
        MethodLabel(index.min(Self::COUNT - 1) as u8)
    }

    pub(crate) fn all() -> impl Iterator<Item = MethodLabel> {
        (0..Self::COUNT as u8).map(MethodLabel)
    }

    /// Whether a response to this method carries no body on the wire (`HEAD`).
    pub fn is_head(self) -> bool {
        self.0 == 1
    }
}

/// Whether `name` is a valid Prometheus label name (`[a-zA-Z_][a-zA-Z0-9_]*`, not `__` reserved).
pub(crate) fn is_valid_label_name(name: &str) -> bool {
    let mut chars = name.chars();
    match chars.next() {
        Some(c) if c.is_ascii_alphabetic() || c == '_' => {}
        _ => return false,
    }
    !name.starts_with("__") && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_standard_method_keeps_its_name() {
        for m in [
            "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH",
        ] {
            assert_eq!(MethodLabel::from_method(m).as_str(), m);
        }
    }

    #[test]
    fn invented_methods_fold_into_other() {
        for m in ["PURGE", "BREW", "", "get", "GETX", "\u{1F600}"] {
            assert_eq!(MethodLabel::from_method(m).as_str(), "_OTHER", "{m:?}");
        }
    }

    #[test]
    fn label_names_follow_prometheus_rules() {
        assert!(is_valid_label_name("region"));
        assert!(is_valid_label_name("_x1"));
        assert!(!is_valid_label_name("1x"));
        assert!(!is_valid_label_name("a-b"));
        assert!(!is_valid_label_name("__reserved"));
        assert!(!is_valid_label_name(""));
    }
}
