use std::future::{ready, Ready};
use std::rc::Rc;

use actix_web::body::MessageBody;
use actix_web::dev::{Service, ServiceRequest, ServiceResponse, Transform};
use actix_web::Error;
use observe_core::{HttpMetrics, ObserveBuilder};

use crate::body::ResponseBody;
use crate::route::RouteCache;
use crate::service::ObserveMiddleware;

/// The actix-web middleware that records per-route RED metrics: `.wrap(Observe::new("svc"))`.
///
/// Cheap to clone (an `Arc`): build it once, outside `HttpServer::new`, and move clones into
/// the app factory, so that every worker's `App` records into the same series.
///
/// ```
/// use observe_actix::Observe;
///
/// let plain = Observe::new("checkout");
/// let tuned = Observe::builder("checkout")
///     .buckets(&[0.01, 0.05, 0.25, 1.0])?
///     .const_label("region", "eu-west-1")?
///     .exclude_routes(["/metrics", "/healthz"])
///     .build()?;
/// # Ok::<(), observe_actix::ObserveError>(())
/// ```
///
/// Wrap the `App` (not a scope) so that every request, including unmatched ones, is recorded
/// and `http_route` is the full template through `web::scope` nesting.
#[derive(Debug, Clone)]
pub struct Observe {
    pub(crate) metrics: HttpMetrics,
    /// What `routes()` serves under `/debug/pprof`; `None`: nothing.
    #[cfg(feature = "pprof")]
    pub(crate) pprof: Option<observe_pprof::Pprof>,
}

impl Observe {
    /// Metrics for `service` with the defaults, on a registry of their own.
    pub fn new(service: impl Into<String>) -> Self {
        HttpMetrics::new(service).into()
    }

    /// Configures buckets, labels, registry, exclusions; see [`ObserveBuilder`].
    pub fn builder(service: impl Into<String>) -> ObserveBuilder<Observe> {
        ObserveBuilder::new(service)
    }

    /// The metrics this middleware records into (and their registry).
    pub fn metrics(&self) -> &HttpMetrics {
        &self.metrics
    }
}

impl From<HttpMetrics> for Observe {
    fn from(metrics: HttpMetrics) -> Self {
        Observe {
            metrics,
            #[cfg(feature = "pprof")]
            pprof: Some(observe_pprof::Pprof::new()),
        }
    }
}

impl<S, B> Transform<S, ServiceRequest> for Observe
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = Error>,
    B: MessageBody,
{
    type Response = ServiceResponse<ResponseBody<B>>;
    type Error = Error;
    type Transform = ObserveMiddleware<S>;
    type InitError = ();
    type Future = Ready<Result<Self::Transform, Self::InitError>>;

    fn new_transform(&self, service: S) -> Self::Future {
        // Called once per worker: the route cache is the worker's own, so it needs no lock,
        // and the worker's current-thread runtime is watched from its own thread.
        #[cfg(feature = "runtime-metrics")]
        observe_core::runtime::watch_current();
        ready(Ok(ObserveMiddleware {
            service,
            routes: Rc::new(RouteCache::new(self.metrics.clone())),
        }))
    }
}
