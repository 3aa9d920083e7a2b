use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{ready, Context, Poll};

use actix_web::body::MessageBody;
use actix_web::dev::ServiceResponse;
use actix_web::Error;
use observe_core::RequestRecord;
use pin_project_lite::pin_project;

use crate::body::ResponseBody;
use crate::route_cache::{RequestPath, RouteCache};

pin_project! {
    /// Response future of [`Observe`](crate::Observe): names the route once actix has routed
    /// the request, then hands the record to the response body.
    ///
    /// Dropped before it resolves (actix drops a connection's in-flight request when the
    /// socket fails), it records `499`; dropped while a handler panic unwinds through it, `500`.
    #[doc(hidden)]
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        record: Option<RequestRecord>,
        routes: Rc<RouteCache>,
        path: Option<RequestPath>,
    }

    impl<F> PinnedDrop for ResponseFuture<F> {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            // No response, so no routing to read: name the route from the path before the
            // record's own drop decides between 499 and 500.
            if let Some(record) = this.record {
                let path = this.path.as_ref().map_or("", RequestPath::as_str);
                record.set_route(this.routes.resolve_path(path));
            }
        }
    }
}

impl<F> ResponseFuture<F> {
    pub(crate) fn new(
        inner: F,
        record: Option<RequestRecord>,
        routes: Rc<RouteCache>,
        path: Option<RequestPath>,
    ) -> Self {
        ResponseFuture {
            inner,
            record,
            routes,
            path,
        }
    }
}

impl<F, B> Future for ResponseFuture<F>
where
    F: Future<Output = Result<ServiceResponse<B>, Error>>,
    B: MessageBody,
{
    type Output = Result<ServiceResponse<ResponseBody<B>>, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = ready!(this.inner.poll(cx));
        let mut record = this.record.take();
        Poll::Ready(match result {
            Ok(response) => {
                if let Some(record) = &mut record {
                    record.set_route(this.routes.resolve(response.request()));
                    record.responded(response.status().as_u16());
                }
                Ok(response.map_body(|_, body| ResponseBody::new(body, record)))
            }
            Err(error) => {
                if let Some(mut record) = record {
                    // actix turns the error into this response; the error carries no request,
                    // so the route comes from the path.
                    let path = this.path.as_ref().map_or("", RequestPath::as_str);
                    record.set_route(this.routes.resolve_path(path));
                    record.responded(error.as_response_error().status_code().as_u16());
                    record.complete();
                }
                Err(error)
            }
        })
    }
}
