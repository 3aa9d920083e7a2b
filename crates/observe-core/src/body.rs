//! Body byte bookkeeping for adapters' body wrappers: what each poll of a response body means
//! for its record, once for every framework. The wrappers only forward polls and report them.

use crate::record::ResponseRecord;
use crate::request_labels::RequestLabels;

/// What one poll of a response body gave, as a body wrapper reports it to [`BodyTracker`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyEvent {
    /// A chunk of `bytes` body bytes (0 for a trailers frame); `last`: the body says it is at
    /// its end now (hyper polls no further).
    Data {
        /// Body bytes in the chunk.
        bytes: u64,
        /// The body is complete after this chunk.
        last: bool,
    },
    /// The body failed mid-stream: recorded as `500`.
    Error,
    /// The body ended.
    End,
}

/// The record a response body carries: counts the bytes sent and finishes the record exactly
/// once, when the body ends (or fails). Dropped before, the record's own drop records `499`
/// (`500` while a panic unwinds).
///
/// ```
/// use observe_core::adapter::{BodyTracker, BodyEvent};
///
/// let metrics = observe_core::HttpMetrics::new("svc");
/// let record = metrics.id().start("GET", Some("/x")).unwrap().respond(200);
/// let mut body = BodyTracker::new(Some(record), false);
/// body.polled(BodyEvent::Data { bytes: 42, last: false });
/// assert!(body.is_recording());
/// body.polled(BodyEvent::End);
/// assert!(!body.is_recording());
/// assert_eq!(metrics.active_requests("GET"), 0);
/// ```
#[derive(Debug)]
pub struct BodyTracker(Option<ResponseRecord>);

impl BodyTracker {
    /// Tracks the body of the response `record` is for (`None`: an excluded route, nothing to
    /// track). `empty`: the body holds no bytes and the server will never poll it; such a
    /// response, or one without a body on the wire (`HEAD`, 1xx, 204, 304), is complete as
    /// soon as it exists and is recorded now.
    #[inline]
    pub fn new(record: Option<ResponseRecord>, empty: bool) -> Self {
        let mut tracker = BodyTracker(record);
        if empty || tracker.0.as_ref().is_some_and(ResponseRecord::is_bodiless) {
            tracker.end(false);
        }
        tracker
    }

    /// The labels of the request whose body this is, while its record is open.
    #[inline]
    pub fn labels(&self) -> Option<RequestLabels> {
        self.0.as_ref().map(ResponseRecord::labels)
    }

    /// Whether the record is still open (nothing to count once it has been recorded).
    #[inline]
    pub fn is_recording(&self) -> bool {
        self.0.is_some()
    }

    /// Reports one poll of the body.
    #[inline]
    pub fn polled(&mut self, polled: BodyEvent) {
        let Some(record) = self.0.as_mut() else {
            return;
        };
        match polled {
            BodyEvent::Data { bytes, last } => {
                record.add_response_bytes(bytes);
                if last {
                    self.end(false);
                }
            }
            BodyEvent::Error => self.end(true),
            BodyEvent::End => self.end(false),
        }
    }

    /// Finishes the record; `failed`: as `500`.
    #[inline]
    fn end(&mut self, failed: bool) {
        if let Some(record) = self.0.take() {
            if failed {
                record.fail();
            } else {
                record.finish();
            }
        }
    }
}
