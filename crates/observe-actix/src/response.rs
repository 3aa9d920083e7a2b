//! What observe's endpoints (`/metrics`, `/debug/pprof`) need from actix-web: their responses
//! as actix-web responses, and actix's blocking pool and timer to run them with.

use std::future::Future;
use std::time::Duration;

use actix_web::http::header::{HeaderName, HeaderValue, CONTENT_TYPE};
use actix_web::http::StatusCode;
use actix_web::HttpResponse;
use observe_core::adapter::{BlockingWork, EndpointResponse, Executor};

/// An observe endpoint's response as an actix-web response.
pub(crate) fn into_response(response: EndpointResponse) -> HttpResponse {
    let status = StatusCode::from_u16(response.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut out = HttpResponse::build(status);
    out.insert_header((CONTENT_TYPE, response.content_type));
    for (name, value) in response.headers {
        if let Ok(value) = HeaderValue::from_str(&value) {
            out.insert_header((HeaderName::from_static(name), value));
        }
    }
    out.body(response.body)
}

/// actix's blocking pool and timer (tokio's, under actix-rt), for the endpoints' blocking work
/// and time limits.
pub(crate) struct Actix;

impl Executor for Actix {
    fn spawn_blocking<W: BlockingWork>(
        work: W,
    ) -> impl Future<Output = Result<EndpointResponse, String>> + Send {
        let job = actix_web::rt::task::spawn_blocking(move || work.run());
        async move { job.await.map_err(|e| e.to_string()) }
    }

    fn sleep(duration: Duration) -> impl Future<Output = ()> + Send {
        actix_web::rt::time::sleep(duration)
    }
}
