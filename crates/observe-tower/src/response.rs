//! What observe's endpoints (`/metrics`, `/debug/pprof`) need from axum: their responses as
//! axum responses, and tokio's blocking pool and timer to run them with.

use std::future::Future;
use std::time::Duration;

use axum::body::Body;
use axum::response::Response;
use http::header::CONTENT_TYPE;
use http::{HeaderName, HeaderValue, StatusCode};
use observe_core::adapter::{BlockingWork, EndpointResponse, Executor};

/// An observe endpoint's response as an axum response.
pub(crate) fn into_response(response: EndpointResponse) -> Response {
    let mut out = Response::new(Body::from(response.body));
    *out.status_mut() =
        StatusCode::from_u16(response.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let headers = out.headers_mut();
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static(response.content_type),
    );
    for (name, value) in response.headers {
        if let Ok(value) = HeaderValue::from_str(&value) {
            headers.insert(HeaderName::from_static(name), value);
        }
    }
    out
}

/// tokio's blocking pool and timer, for the endpoints' blocking work and time limits.
pub(crate) struct Tokio;

impl Executor for Tokio {
    fn spawn_blocking<W: BlockingWork>(
        work: W,
    ) -> impl Future<Output = Result<EndpointResponse, String>> + Send {
        let job = tokio::task::spawn_blocking(move || work.run());
        async move { job.await.map_err(|e| e.to_string()) }
    }

    fn sleep(duration: Duration) -> impl Future<Output = ()> + Send {
        tokio::time::sleep(duration)
    }
}
