use std::task::{Context, Poll};

use http::header::HeaderName;
use http::{HeaderMap, Request, Response};
use observe_core::adapter::{sole_header, MetricsId, RequestRecord};
use observe_core::TraceHeaders;
use tower_service::Service;

use crate::body::{count_request_body, ResponseBody};
use crate::future::ResponseFuture;
use crate::route::{self, Lookup, NestedTemplate, RouteFn};

/// The service [`ObserveLayer`](crate::ObserveLayer) wraps around an inner service.
///
/// axum clones it for every request, so it holds its metrics' `Copy` id, not an `Arc`: no
/// worker writes a reference count the others share (see [`MetricsId`]).
#[derive(Debug, Clone)]
pub struct Observe<S> {
    pub(crate) inner: S,
    pub(crate) metrics: MetricsId,
    pub(crate) route_fn: Option<RouteFn>,
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for Observe<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    ReqBody: http_body::Body + 'static,
    ResBody: http_body::Body,
{
    type Response = Response<ResponseBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<ReqBody>) -> Self::Future {
        let metrics = self.metrics;
        let mut slot = None;
        let mut record: Option<RequestRecord> = match &self.route_fn {
            Some(RouteFn(route_fn)) => {
                let (parts, body) = req.into_parts();
                let headers = Headers(&parts.headers);
                let record = metrics.start_with(parts.method.as_str(), route_fn(&parts), &headers);
                req = Request::from_parts(parts, body);
                record
            }
            None => match route::lookup(req.extensions()) {
                Lookup::Template(template) => {
                    metrics.start_with(req.method().as_str(), template, &Headers(req.headers()))
                }
                Lookup::ObservedOutside => None,
                Lookup::Unknown => {
                    slot = Some((NestedTemplate::wait(req.extensions_mut()), metrics));
                    metrics.start_with(req.method().as_str(), None, &Headers(req.headers()))
                }
            },
        };
        if let Some(record) = &mut record {
            count_request_body(req.body_mut(), record);
        }
        ResponseFuture::new(self.inner.call(req), record, slot)
    }
}

/// A request's headers, as trace-context extraction reads them.
struct Headers<'a>(&'a HeaderMap);

static TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");

impl TraceHeaders for Headers<'_> {
    fn get(&self, name: &str) -> Option<&[u8]> {
        self.0.get(name).map(|v| v.as_bytes())
    }

    #[inline]
    fn traceparent(&self) -> Option<&[u8]> {
        sole_header(self.0.keys_len(), self.0.keys(), &TRACEPARENT, || {
            self.0.get_all(&TRACEPARENT).iter().map(|v| v.as_bytes())
        })
    }
}
