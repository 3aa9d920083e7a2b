use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::Buf;
use http_body::{Body, Frame, SizeHint};
use observe_core::adapter::{
    poll_labelled, BodyEvent, BodyTracker, ByteTally, RequestRecord, ResponseRecord,
};
use pin_project_lite::pin_project;

pin_project! {
    /// Response body of [`Observe`](crate::Observe): counts the bytes sent and finishes the
    /// record when the body ends.
    ///
    /// Dropped before its end (the client disconnected mid-stream), the request is recorded as
    /// `499`; a body that fails mid-stream, as `500`.
    pub struct ResponseBody<B> {
        #[pin]
        inner: B,
        tracker: BodyTracker,
    }
}

impl<B: Body> ResponseBody<B> {
    pub(crate) fn new(inner: B, record: Option<ResponseRecord>) -> Self {
        // Hyper never polls a body that is already at its end.
        let tracker = BodyTracker::new(record, inner.is_end_stream());
        ResponseBody { inner, tracker }
    }
}

impl<B: Body> Body for ResponseBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let mut this = self.project();
        let tracker = &this.tracker;
        let frame = ready!(poll_labelled(
            || tracker.labels(),
            || this.inner.as_mut().poll_frame(cx)
        ));
        if this.tracker.is_recording() {
            this.tracker.polled(match &frame {
                Some(Ok(frame)) => BodyEvent::Data {
                    bytes: frame.data_ref().map_or(0, |d| d.remaining() as u64),
                    last: this.inner.is_end_stream(),
                },
                Some(Err(_)) => BodyEvent::Error,
                None => BodyEvent::End,
            });
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

pin_project! {
    /// A request body that counts the bytes the handler reads, for
    /// `http_server_request_body_size_bytes`.
    pub(crate) struct RequestBody<B> {
        #[pin]
        inner: B,
        tally: ByteTally,
    }
}

// Only axum's and tonic's type-erased bodies can be re-wrapped without changing the request's
// type.
#[cfg_attr(not(any(feature = "axum", feature = "tonic")), allow(dead_code))]
impl<B> RequestBody<B> {
    /// Wraps `inner`, counting into `record`.
    pub(crate) fn new(inner: B, record: &mut RequestRecord) -> Self {
        RequestBody {
            inner,
            tally: record.request_tally(),
        }
    }
}

impl<B: Body> Body for RequestBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let frame = ready!(this.inner.poll_frame(cx));
        if let Some(Ok(frame)) = &frame {
            if let Some(data) = frame.data_ref() {
                this.tally.add(data.remaining() as u64);
            }
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Arranges for the size of a request body to reach `record`, keeping the body's type so the
/// layer fits wherever a `Service<Request<B>>` is expected (axum's `Router::layer`, tonic's
/// `Server::layer`).
///
/// axum's `Body` (and with the `tonic` feature tonic's) is wrapped to count the bytes the handler
/// actually reads; any other body type records its exact size hint (its `Content-Length`). A
/// request without a body costs nothing.
pub(crate) fn count_request_body<B: Body + 'static>(body: &mut B, record: &mut RequestRecord) {
    if body.is_end_stream() {
        return;
    }
    #[cfg(any(feature = "axum", feature = "tonic"))]
    let erased = body as &mut dyn std::any::Any;
    #[cfg(feature = "axum")]
    if let Some(body) = erased.downcast_mut::<axum::body::Body>() {
        return rewrap(body, record, axum::body::Body::new);
    }
    #[cfg(feature = "tonic")]
    if let Some(body) = erased.downcast_mut::<tonic::body::Body>() {
        return rewrap(body, record, tonic::body::Body::new);
    }
    record.add_request_bytes(body.size_hint().exact().unwrap_or(0));
}

/// Replaces a type-erased body with itself wrapped in a counting [`RequestBody`]. The
/// placeholder left while it moves is an empty body, which neither axum nor tonic boxes.
#[cfg(any(feature = "axum", feature = "tonic"))]
fn rewrap<T: Default>(body: &mut T, record: &mut RequestRecord, erase: fn(RequestBody<T>) -> T) {
    let inner = std::mem::take(body);
    *body = erase(RequestBody::new(inner, record));
}
