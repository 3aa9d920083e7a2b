//! The `/debug/pprof` flavours of [`Answer`]: downloads, and errors `go tool pprof` shows.

use crate::error::PprofError;
use observe_core::adapter::Answer;

/// A profile download: `go tool pprof` and browsers save it as `filename`.
pub(crate) fn attachment(body: Vec<u8>, filename: &str) -> Answer {
    Answer::ok("application/octet-stream", body).with_header(
        "content-disposition",
        format!("attachment; filename=\"{filename}\""),
    )
}

/// A one-line `text/plain` error that `go tool pprof` shows as is.
///
/// ```
/// let answer = observe_pprof::adapter::error(500, "profiling failed: no thread");
/// assert_eq!(answer.status, 500);
/// assert_eq!(answer.header("x-go-pprof"), Some("1"));
/// assert_eq!(answer.body_text(), "profiling failed: no thread\n");
/// ```
pub fn error(status: u16, message: &str) -> Answer {
    Answer::text(status, message).with_header("x-go-pprof", "1")
}

impl From<PprofError> for Answer {
    fn from(error: PprofError) -> Self {
        self::error(error.status(), &error.to_string())
    }
}
