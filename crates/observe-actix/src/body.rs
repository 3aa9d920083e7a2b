use std::pin::Pin;
use std::task::{ready, Context, Poll};

use actix_web::body::{BodySize, MessageBody};
use actix_web::error::PayloadError;
use bytes::Bytes;
use futures_util::Stream;
use observe_core::adapter::{poll_labelled, BodyEvent, BodyTracker, ByteTally, ResponseRecord};
use pin_project_lite::pin_project;

pin_project! {
    /// Response body of [`Observe`](crate::Observe): counts the bytes sent and finishes the
    /// record when the body ends.
    ///
    /// Dropped before its end (actix drops it when writing to the client fails), the request
    /// is recorded as `499`; a body that fails mid-stream, as `500`.
    pub struct ResponseBody<B> {
        #[pin]
        inner: B,
        tracker: BodyTracker,
    }
}

impl<B: MessageBody> ResponseBody<B> {
    pub(crate) fn new(inner: B, record: Option<ResponseRecord>) -> Self {
        // actix never polls an empty body (`BodySize::None`, `Sized(0)`).
        let empty = matches!(inner.size(), BodySize::None | BodySize::Sized(0));
        ResponseBody {
            inner,
            tracker: BodyTracker::new(record, empty),
        }
    }
}

impl<B: MessageBody> MessageBody for ResponseBody<B> {
    type Error = B::Error;

    #[inline]
    fn size(&self) -> BodySize {
        self.inner.size()
    }

    fn poll_next(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Bytes, Self::Error>>> {
        let this = self.project();
        let tracker = &this.tracker;
        let item = ready!(poll_labelled(
            || tracker.labels(),
            || this.inner.poll_next(cx)
        ));
        this.tracker.polled(match &item {
            Some(Ok(chunk)) => BodyEvent::Data {
                bytes: chunk.len() as u64,
                last: false,
            },
            Some(Err(_)) => BodyEvent::Error,
            None => BodyEvent::End,
        });
        Poll::Ready(item)
    }

    /// Handing the whole body over at once is its end: boxing it (`BoxBody::new`) or
    /// collecting it stays allocation-free and the record finishes with the body's length.
    fn try_into_bytes(self) -> Result<Bytes, Self> {
        let ResponseBody { inner, mut tracker } = self;
        match inner.try_into_bytes() {
            Ok(bytes) => {
                tracker.polled(BodyEvent::Data {
                    bytes: bytes.len() as u64,
                    last: true,
                });
                Ok(bytes)
            }
            Err(inner) => Err(ResponseBody { inner, tracker }),
        }
    }
}

pin_project! {
    /// A request payload that counts the bytes the handler reads, for
    /// `http_server_request_body_size_bytes`.
    pub(crate) struct RequestPayload<S> {
        #[pin]
        inner: S,
        tally: ByteTally,
    }
}

impl<S> RequestPayload<S> {
    pub(crate) fn new(inner: S, tally: ByteTally) -> Self {
        RequestPayload { inner, tally }
    }
}

impl<S> Stream for RequestPayload<S>
where
    S: Stream<Item = Result<Bytes, PayloadError>>,
{
    type Item = Result<Bytes, PayloadError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.project();
        let item = ready!(this.inner.poll_next(cx));
        if let Some(Ok(chunk)) = &item {
            this.tally.add(chunk.len() as u64);
        }
        Poll::Ready(item)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.inner.size_hint()
    }
}
