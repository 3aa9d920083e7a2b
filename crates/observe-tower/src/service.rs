use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response};
use observe_core::{RequestRecord, RouteId};
use tower_service::Service;

use crate::body::{count_request_body, ResponseBody};
use crate::future::ResponseFuture;
use crate::layer::ObserveLayer;

/// The service [`ObserveLayer`] wraps around an inner service.
#[derive(Clone, Debug)]
pub struct Observe<S> {
    pub(crate) inner: S,
    pub(crate) layer: Arc<ObserveLayer>,
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
        let metrics = &self.layer.metrics;
        let mut slot = None;
        let route = match &self.layer.route_fn {
            Some(route_fn) => {
                let (parts, body) = req.into_parts();
                let route = metrics.route(route_fn(&parts));
                req = Request::from_parts(parts, body);
                route
            }
            None => match nested::route_of(req.extensions_mut(), metrics) {
                nested::Route::Resolved(route) => route,
                nested::Route::Unknown(s) => {
                    slot = Some(s);
                    RouteId::UNMATCHED
                }
                nested::Route::ObservedOutside => RouteId::EXCLUDED,
            },
        };
        let mut record: Option<RequestRecord> = metrics.start(req.method().as_str(), route);
        if let Some(record) = &mut record {
            count_request_body(req.body_mut(), record);
        }
        ResponseFuture::new(
            self.inner.call(req),
            record,
            slot.map(|s| (s, metrics.clone())),
        )
    }
}

#[cfg(feature = "axum")]
pub(crate) mod nested {
    //! How the route template reaches the layer in axum, including through `nest_service`.
    use std::sync::{Arc, OnceLock};

    use axum::extract::MatchedPath;
    use http::Extensions;
    use observe_core::{HttpMetrics, RouteId};

    /// Where an inner `ObserveLayer` (on a router mounted by `nest_service`) leaves the full
    /// template for the outer one, which saw none.
    #[derive(Clone, Debug, Default)]
    pub(crate) struct RouteSlot(Arc<OnceLock<MatchedPath>>);

    impl RouteSlot {
        pub(crate) fn resolve(&self, metrics: &HttpMetrics) -> Option<RouteId> {
            self.0.get().map(|p| metrics.route(Some(p.as_str())))
        }
    }

    pub(crate) enum Route {
        Resolved(RouteId),
        /// No template yet: a 404, or a nested service that may name it later.
        Unknown(RouteSlot),
        /// An outer layer records this request; we only told it the template.
        ObservedOutside,
    }

    pub(crate) fn route_of(extensions: &mut Extensions, metrics: &HttpMetrics) -> Route {
        let path = extensions.get::<MatchedPath>();
        if let Some(slot) = extensions.get::<RouteSlot>() {
            if let Some(path) = path {
                let _ = slot.0.set(path.clone());
            }
            return Route::ObservedOutside;
        }
        match path {
            Some(path) => Route::Resolved(metrics.route(Some(path.as_str()))),
            None => {
                let slot = RouteSlot::default();
                extensions.insert(slot.clone());
                Route::Unknown(slot)
            }
        }
    }
}

#[cfg(not(feature = "axum"))]
pub(crate) mod nested {
    //! Without axum there is no template in the request: everything is `unmatched` unless a
    //! route function is given.
    use http::Extensions;
    use observe_core::{HttpMetrics, RouteId};

    #[derive(Clone, Debug, Default)]
    pub(crate) struct RouteSlot;

    impl RouteSlot {
        pub(crate) fn resolve(&self, _: &HttpMetrics) -> Option<RouteId> {
            None
        }
    }

    pub(crate) enum Route {
        Resolved(RouteId),
        #[allow(dead_code)]
        Unknown(RouteSlot),
        #[allow(dead_code)]
        ObservedOutside,
    }

    pub(crate) fn route_of(_: &mut Extensions, _: &HttpMetrics) -> Route {
        Route::Resolved(RouteId::UNMATCHED)
    }
}
