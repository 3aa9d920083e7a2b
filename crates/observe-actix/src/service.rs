use std::rc::Rc;

use actix_web::body::MessageBody;
use actix_web::dev::{forward_ready, Payload, Service, ServiceRequest, ServiceResponse};
use actix_web::http::header::{HeaderMap, HeaderName};
use actix_web::{Error, HttpMessage};
use observe_core::adapter::sole_header;
use observe_core::TraceHeaders;

use crate::body::{RequestPayload, ResponseBody};
use crate::future::ResponseFuture;
use crate::route::{RequestPath, RouteCache};

/// The service [`Observe`](crate::Observe) wraps around an app; one per worker.
#[doc(hidden)]
pub struct ObserveMiddleware<S> {
    pub(crate) service: S,
    pub(crate) routes: Rc<RouteCache>,
}

impl<S, B> Service<ServiceRequest> for ObserveMiddleware<S>
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = Error>,
    B: MessageBody,
{
    type Response = ServiceResponse<ResponseBody<B>>;
    type Error = Error;
    type Future = ResponseFuture<S::Future>;

    forward_ready!(service);

    fn call(&self, mut req: ServiceRequest) -> Self::Future {
        // actix routes inside the app, after this middleware: the template is only known from
        // the response. A literal excluded template equals its path, so `/metrics` is skipped
        // here, before it could touch the active-requests gauge.
        let metrics = &self.routes.metrics;
        let mut record = if metrics.is_excluded_path(req.path()) {
            None
        } else {
            let headers = Headers(req.headers());
            self.routes
                .id
                .start_with(req.method().as_str(), None, &headers)
        };
        let mut path = None;
        if let Some(record) = &mut record {
            match req.take_payload() {
                // No body (GET and most others): nothing to count, nothing allocated.
                Payload::None => {}
                payload => {
                    let counted = RequestPayload::new(payload, record.request_tally());
                    req.set_payload(Payload::Stream {
                        payload: Box::pin(counted),
                    });
                }
            }
            self.routes.remember_resource_map(&req);
            // An inner `Err` comes back without the request, a panic or a dropped connection
            // not at all: the path is what names the route then.
            path = Some(RequestPath::new(req.uri()));
        }
        ResponseFuture::new(self.service.call(req), record, self.routes.clone(), path)
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
        sole_header(self.0.len_keys(), self.0.keys(), &TRACEPARENT, || {
            self.0.get_all(&TRACEPARENT).map(|v| v.as_bytes())
        })
    }
}
