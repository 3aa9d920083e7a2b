use crate::profiling::error::PprofError;

/// A finished `/debug/pprof` answer, for an adapter to turn into its framework's response.
///
/// ```
/// use observe_core::profiling::{AccessRequest, Pprof, PprofRequest};
///
/// let pprof = Pprof::builder().anyone().build();
/// let PprofRequest::Ready(answer) = pprof.handle(&AccessRequest::new("/debug/pprof/", None), "", None) else {
///     unreachable!("the index is ready at once")
/// };
/// assert_eq!(answer.status, 200);
/// assert_eq!(answer.content_type, "text/html; charset=utf-8");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DebugResponse {
    /// HTTP status code.
    pub status: u16,
    /// `Content-Type`.
    pub content_type: &'static str,
    /// Further headers, e.g. `Content-Disposition`, `X-Go-Pprof`, `WWW-Authenticate`.
    pub headers: Vec<(&'static str, String)>,
    /// The body, sent as is (profiles are already gzipped).
    pub body: Vec<u8>,
}

/// `Content-Type` of errors and plain answers.
pub(crate) const TEXT: &str = "text/plain; charset=utf-8";

impl DebugResponse {
    pub(crate) fn ok(content_type: &'static str, body: Vec<u8>) -> Self {
        DebugResponse {
            status: 200,
            content_type,
            headers: Vec::new(),
            body,
        }
    }

    /// A profile download: `go tool pprof` and browsers save it as `filename`.
    pub(crate) fn attachment(body: Vec<u8>, filename: &str) -> Self {
        let mut response = DebugResponse::ok("application/octet-stream", body);
        response.headers.push((
            "content-disposition",
            format!("attachment; filename=\"{filename}\""),
        ));
        response
    }

    /// A one-line `text/plain` error that `go tool pprof` shows as is.
    pub fn error(status: u16, message: &str) -> Self {
        DebugResponse {
            status,
            content_type: TEXT,
            headers: vec![("x-go-pprof", "1".to_owned())],
            body: format!("{message}\n").into_bytes(),
        }
    }

    /// The body as text, for errors and the index.
    pub fn text(&self) -> std::borrow::Cow<'_, str> {
        String::from_utf8_lossy(&self.body)
    }
}

impl From<PprofError> for DebugResponse {
    fn from(error: PprofError) -> Self {
        DebugResponse::error(error.status(), &error.to_string())
    }
}
