//! The `/debug/pprof` flavours of [`EndpointResponse`]: downloads, and errors `go tool pprof`
//! shows.

use crate::error::PprofError;
use observe_core::adapter::EndpointResponse;

/// A profile download: `go tool pprof` and browsers save it as `filename`.
pub(crate) fn attachment(body: Vec<u8>, filename: &str) -> EndpointResponse {
    EndpointResponse::ok("application/octet-stream", body).with_header(
        "content-disposition",
        format!("attachment; filename=\"{filename}\""),
    )
}

/// A one-line `text/plain` error that `go tool pprof` shows as is (`X-Go-Pprof: 1`).
pub(crate) fn error(status: u16, message: &str) -> EndpointResponse {
    EndpointResponse::text(status, message).with_header("x-go-pprof", "1")
}

impl From<PprofError> for EndpointResponse {
    fn from(error: PprofError) -> Self {
        self::error(error.status(), &error.to_string())
    }
}
