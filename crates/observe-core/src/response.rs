//! What observe's own endpoints (`/metrics`, `/debug/pprof`) respond, before an adapter turns
//! it into its framework's response type.

/// A framework-neutral HTTP response: what observe's own endpoints (`/metrics`,
/// `/debug/pprof`) respond. Each adapter converts it into its framework's response type, in
/// one place.
///
/// ```
/// use observe_core::adapter::EndpointResponse;
///
/// let response = EndpointResponse::text(404, "no such profile").with_header("x-go-pprof", "1");
/// assert_eq!(response.status, 404);
/// assert_eq!(response.header("x-go-pprof"), Some("1"));
/// assert_eq!(response.body_text(), "no such profile\n");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointResponse {
    /// HTTP status code.
    pub status: u16,
    /// `Content-Type`.
    pub content_type: &'static str,
    /// Further headers, names in lower case, e.g. `content-encoding`, `vary`, `location`.
    pub headers: Vec<(&'static str, String)>,
    /// The body, sent as is (profiles and gzipped metrics are already compressed).
    pub body: Vec<u8>,
}

/// `Content-Type` of plain-text responses and errors.
pub const TEXT_PLAIN: &str = "text/plain; charset=utf-8";

impl EndpointResponse {
    /// `200` with `body` of `content_type`.
    pub fn ok(content_type: &'static str, body: Vec<u8>) -> Self {
        EndpointResponse {
            status: 200,
            content_type,
            headers: Vec::new(),
            body,
        }
    }

    /// A one-line `text/plain` response, e.g. an error.
    pub fn text(status: u16, message: &str) -> Self {
        EndpointResponse {
            status,
            content_type: TEXT_PLAIN,
            headers: Vec::new(),
            body: format!("{message}\n").into_bytes(),
        }
    }

    /// The same response with one more header.
    pub fn with_header(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.headers.push((name, value.into()));
        self
    }

    /// The value of header `name` (lower case), if set.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The body as text, for errors and the index.
    pub fn body_text(&self) -> std::borrow::Cow<'_, str> {
        String::from_utf8_lossy(&self.body)
    }
}
