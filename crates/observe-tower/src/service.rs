use std::task::{Context, Poll};

use http::header::HeaderName;
use http::{HeaderMap, Request, Response};
use observe_core::adapter::{MetricsId, RequestRecord};
use observe_core::TraceHeaders;
use tower_service::Service;

use crate::body::{count_request_body, ResponseBody};
use crate::future::ResponseFuture;
use crate::layer::RouteFn;

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
            None => match nested::lookup(req.extensions()) {
                nested::Lookup::Template(template) => {
                    metrics.start_with(req.method().as_str(), template, &Headers(req.headers()))
                }
                nested::Lookup::ObservedOutside => None,
                nested::Lookup::Unknown => {
                    slot = Some((nested::RouteSlot::wait(req.extensions_mut()), metrics));
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

    /// A request without trace context pays for this on every request: with a handful of
    /// header names, comparing each (a standard name differs from a custom one at once) costs
    /// a third of hashing the name for a lookup (measured in `docs/performance.md`).
    #[inline]
    fn traceparent(&self) -> Option<&[u8]> {
        if self.0.keys_len() <= 8 && !self.0.keys().any(|name| *name == TRACEPARENT) {
            return None;
        }
        // Two `traceparent` headers are no trace context (as W3C Trace Context's test suite
        // expects: a new trace, not either of them).
        let mut values = self.0.get_all(&TRACEPARENT).iter();
        let value = values.next()?;
        values.next().is_none().then(|| value.as_bytes())
    }
}

#[cfg(feature = "axum")]
pub(crate) mod nested {
    //! How the route template reaches the layer in axum, including through `nest_service`.
    use std::sync::{Arc, OnceLock};

    use axum::extract::MatchedPath;
    use http::Extensions;

    /// Where an inner `ObserveLayer` (on a router mounted by `nest_service`) leaves the full
    /// template for the outer one, which saw none.
    #[derive(Clone, Debug, Default)]
    pub(crate) struct RouteSlot(Arc<OnceLock<MatchedPath>>);

    impl RouteSlot {
        /// A slot, left in the request for a nested layer to fill in.
        pub(crate) fn wait(extensions: &mut Extensions) -> Self {
            let slot = RouteSlot::default();
            extensions.insert(slot.clone());
            slot
        }

        pub(crate) fn template(&self) -> Option<&str> {
            self.0.get().map(MatchedPath::as_str)
        }
    }

    /// Where a request's template comes from.
    pub(crate) enum Lookup<'a> {
        /// The template axum matched (`None`: nothing matched, and nothing will name it).
        Template(Option<&'a str>),
        /// An outer layer records this request; it was told the template, if any.
        ObservedOutside,
        /// No template yet: a 404, or a nested service that may name it later.
        Unknown,
    }

    pub(crate) fn lookup(extensions: &Extensions) -> Lookup<'_> {
        let path = extensions.get::<MatchedPath>();
        if let Some(slot) = extensions.get::<RouteSlot>() {
            if let Some(path) = path {
                let _ = slot.0.set(path.clone());
            }
            return Lookup::ObservedOutside;
        }
        match path {
            Some(path) => Lookup::Template(Some(path.as_str())),
            None => Lookup::Unknown,
        }
    }
}

#[cfg(not(feature = "axum"))]
pub(crate) mod nested {
    //! Without axum there is no template in the request: everything is `unmatched` unless a
    //! route function is given.
    use http::Extensions;

    #[derive(Clone, Debug, Default)]
    pub(crate) struct RouteSlot;

    impl RouteSlot {
        #[allow(dead_code)]
        pub(crate) fn wait(_: &mut Extensions) -> Self {
            RouteSlot
        }

        pub(crate) fn template(&self) -> Option<&str> {
            None
        }
    }

    #[allow(dead_code)]
    pub(crate) enum Lookup<'a> {
        Template(Option<&'a str>),
        ObservedOutside,
        Unknown,
    }

    pub(crate) fn lookup(_: &Extensions) -> Lookup<'static> {
        Lookup::Template(None)
    }
}
