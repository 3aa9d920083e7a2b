use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};

use actix_web::body::MessageBody;
use actix_web::dev::ServiceResponse;
use actix_web::Error;
use observe_core::adapter::{poll_labelled, RequestRecord};
use pin_project_lite::pin_project;

use crate::body::ResponseBody;
use crate::connection::{ClientSocket, CHECK_CLIENT_AFTER};
use crate::route::{RequestPath, RouteCache};

pin_project! {
    /// Response future of [`Observe`](crate::Observe): names the route once actix has routed
    /// the request, then hands the record to the response body.
    ///
    /// Dropped before it resolves (actix drops a connection's in-flight request when the
    /// socket fails), it records `499`; dropped while a handler panic unwinds through it, `500`.
    /// A response that comes after its client closed the connection is recorded `499` too, with
    /// [`on_connect`](crate::on_connect) installed.
    #[doc(hidden)]
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        record: Option<RequestRecord>,
        routes: Rc<RouteCache>,
        path: Option<RequestPath>,
        // The handler returned `Pending` at least once: only then can its client have given up.
        waited: bool,
        // The route was named from the path for a profile's labels (actix routes after the
        // middleware, so the record does not know it yet).
        labelled: bool,
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
            waited: false,
            labelled: false,
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
        let (record, routes, path, labelled) =
            (&mut *this.record, &*this.routes, &*this.path, this.labelled);
        let labels = || {
            let record = record.as_mut()?;
            if !*labelled {
                // Once per request, only while a profile wants labels: the record learns its
                // route from actix's routing when the response comes.
                *labelled = true;
                record
                    .set_route(routes.resolve_path(path.as_ref().map_or("", RequestPath::as_str)));
            }
            Some(record.labels())
        };
        let Poll::Ready(result) = poll_labelled(labels, || this.inner.poll(cx)) else {
            *this.waited = true;
            return Poll::Pending;
        };
        let record = this.record.take();
        Poll::Ready(match result {
            Ok(response) => {
                let record = record.and_then(|mut record| {
                    record.set_route(this.routes.resolve(response.request()));
                    let client_left = *this.waited
                        && record.elapsed() >= CHECK_CLIENT_AFTER
                        && ClientSocket::of(response.request()).is_some_and(|c| c.is_closed());
                    // Dropped here, the record counts what the client got: nothing (499).
                    (!client_left).then(|| record.respond(response.status().as_u16()))
                });
                Ok(response.map_body(|_, body| ResponseBody::new(body, record)))
            }
            Err(error) => {
                if let Some(mut record) = record {
                    // actix turns the error into this response; the error carries no request,
                    // so the route comes from the path.
                    let path = this.path.as_ref().map_or("", RequestPath::as_str);
                    record.set_route(this.routes.resolve_path(path));
                    let status = error.as_response_error().status_code().as_u16();
                    record.respond(status).finish();
                }
                Err(error)
            }
        })
    }
}
