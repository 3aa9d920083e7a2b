use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use http::Response;
use observe_core::adapter::{poll_labelled, MetricsId, RequestRecord};
use pin_project_lite::pin_project;

use crate::body::ResponseBody;
use crate::route::NestedTemplate;

pin_project! {
    /// Response future of [`Observe`](crate::Observe): hands the record to the response body.
    ///
    /// Dropped before it resolves (the client went away), it records `499`; dropped while a
    /// panic unwinds through it, `500`.
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        record: Option<RequestRecord>,
        // A request axum had no template for: a nested layer may name it before it ends.
        slot: Option<(NestedTemplate, MetricsId)>,
    }
}

impl<F> ResponseFuture<F> {
    pub(crate) fn new(
        inner: F,
        record: Option<RequestRecord>,
        slot: Option<(NestedTemplate, MetricsId)>,
    ) -> Self {
        ResponseFuture {
            inner,
            record,
            slot,
        }
    }
}

impl<F, B, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
    B: http_body::Body,
{
    type Output = Result<Response<ResponseBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let record = &this.record;
        let result = ready!(poll_labelled(
            || record.as_ref().map(RequestRecord::labels),
            || this.inner.poll(cx)
        ));
        let mut record = this.record.take();
        if let (Some(record), Some((slot, metrics))) = (&mut record, this.slot.take()) {
            if let Some(template) = slot.template() {
                record.set_route(metrics.route(Some(template)));
            }
        }
        Poll::Ready(match result {
            Ok(response) => {
                let record = record.map(|record| record.respond(response.status().as_u16()));
                Ok(response.map(|body| ResponseBody::new(body, record)))
            }
            Err(error) => {
                if let Some(record) = record {
                    record.fail();
                }
                Err(error)
            }
        })
    }
}
