//! Which request a thread is working for, as the CPU profiler reads it from a signal handler:
//! the adapters install a request's labels for each poll of its response future and body, on
//! whatever worker thread polls them, and restore what was there after. Work a handler hands
//! off keeps them with [`InCurrentRequest::in_current_request`] (futures) or
//! [`in_current_request`] (closures).
//!
//! Nothing happens while no profile wants labels ([`labels_wanted`] is one relaxed load). The
//! slot is a thread-local pointer with a constant initializer and no destructor, so reading it
//! from a signal handler takes no lock, allocates nothing and never runs a lazy initializer.
//! (That holds for code linked into the executable, as Rust builds it. Built into a shared
//! library loaded with `dlopen`, a thread's first access to that library's thread-locals can
//! allocate, which a signal handler must not: do not profile such a process.)
#![allow(unsafe_code)]

use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{compiler_fence, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use crate::labels::MethodLabel;
use crate::routes::RouteId;
use crate::store::with_store;
use crate::trace::TraceContext;

/// Profiles that want labels now (a count, so that two samplers never switch each other off).
static WANTED: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    /// The labels of the request this thread is polling for, or null.
    static CURRENT: Cell<*const RequestLabels> = const { Cell::new(std::ptr::null()) };
}

/// Whether a profile wants request labels now. Adapters install labels only then.
#[inline]
pub fn labels_wanted() -> bool {
    WANTED.load(Ordering::Relaxed) != 0
}

/// Asks for request labels until dropped: held by the CPU sampler while it runs.
#[derive(Debug)]
pub struct WantLabels(());

impl WantLabels {
    /// Starts asking.
    pub fn new() -> Self {
        WANTED.fetch_add(1, Ordering::Relaxed);
        WantLabels(())
    }
}

impl Default for WantLabels {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for WantLabels {
    fn drop(&mut self) {
        WANTED.fetch_sub(1, Ordering::Relaxed);
    }
}

/// What a profile sample records of the request it interrupted: its metrics, route and
/// method, and its sampled trace if it has one. Plain data, copied by the signal handler.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(C)]
pub struct RequestLabels {
    metrics: u64,
    route: RouteId,
    method: MethodLabel,
    /// The trace id (two words) and span id; all zero without a sampled trace.
    trace: [u64; 3],
}

impl RequestLabels {
    #[inline]
    pub(crate) fn new(
        metrics: u64,
        route: RouteId,
        method: MethodLabel,
        trace: Option<&TraceContext>,
    ) -> Self {
        RequestLabels {
            metrics,
            route,
            method,
            trace: trace.map_or([0; 3], TraceContext::words),
        }
    }

    /// The labels installed on this thread now, if any. Async-signal-safe: a signal handler
    /// may call it (it reads a thread-local pointer and copies what it points to).
    #[inline]
    pub fn current() -> Option<RequestLabels> {
        let labels = CURRENT.try_with(Cell::get).ok()?;
        if labels.is_null() {
            return None;
        }
        // SAFETY: a non-null pointer in CURRENT points to labels borrowed by a `scope` that is
        // still running on this thread (it restores the previous pointer before it returns or
        // unwinds), so they are alive; a volatile read, as a signal handler may interrupt the
        // scope anywhere.
        Some(unsafe { std::ptr::read_volatile(labels) })
    }

    /// Runs `f` with these labels installed on this thread, then restores what was installed
    /// before (also when `f` panics).
    #[inline]
    pub fn scope<R>(&self, f: impl FnOnce() -> R) -> R {
        struct Restore(*const RequestLabels);
        impl Drop for Restore {
            fn drop(&mut self) {
                let _ = CURRENT.try_with(|c| c.set(self.0));
            }
        }
        // The labels are complete before a signal handler can see the pointer to them.
        compiler_fence(Ordering::SeqCst);
        let previous = CURRENT.try_with(|c| c.replace(self)).ok();
        let _restore = previous.map(Restore);
        f()
    }

    /// The labels as five words, for a store of atomics (the profiler's ring): the inverse of
    /// [`from_words`](Self::from_words).
    #[inline]
    pub fn to_words(&self) -> [u64; 5] {
        let packed = u64::from(self.route.0) | (self.method.index() as u64) << 32 | 1 << 40;
        [
            self.metrics,
            packed,
            self.trace[0],
            self.trace[1],
            self.trace[2],
        ]
    }

    /// Labels from [`to_words`](Self::to_words); `None` for all zeros (no labels).
    #[inline]
    pub fn from_words(words: [u64; 5]) -> Option<Self> {
        let [metrics, packed, hi, lo, span] = words;
        (packed >> 40 & 1 == 1).then(|| RequestLabels {
            metrics,
            route: RouteId(packed as u32),
            method: MethodLabel::from_index((packed >> 32 & 0xff) as usize),
            trace: [hi, lo, span],
        })
    }

    /// The same labels without the trace: what a route's CPU counter is keyed by.
    #[inline]
    pub fn without_trace(&self) -> RequestLabels {
        RequestLabels {
            trace: [0; 3],
            ..*self
        }
    }

    /// The route's template (`/users/{id}`), `None` once its metrics are closed.
    pub fn route_name(&self) -> Option<Arc<str>> {
        with_store(self.metrics, |store| store.routes.name(self.route)).flatten()
    }

    /// The method label's value (`GET`, ..., `_OTHER`).
    pub fn method_name(&self) -> &'static str {
        self.method.as_str()
    }

    /// The request's sampled trace.
    pub fn trace(&self) -> Option<TraceContext> {
        TraceContext::from_words(self.trace)
    }

    /// Counts `seconds` of CPU time the profiler sampled on this request's route, for the
    /// route's CPU counter in `/metrics`.
    pub fn add_cpu_seconds(&self, seconds: f64) {
        with_store(self.metrics, |store| {
            store.add_cpu_seconds(self.route, self.method, seconds)
        });
    }
}

/// Runs `poll` with the request's labels installed when a profile wants them; `labels` is
/// asked only then. What adapters wrap each poll of a response future and body in.
#[inline]
pub fn poll_labelled<R>(
    labels: impl FnOnce() -> Option<RequestLabels>,
    poll: impl FnOnce() -> R,
) -> R {
    if !labels_wanted() {
        return poll();
    }
    match labels() {
        Some(labels) => labels.scope(poll),
        None => poll(),
    }
}

/// Hands the current request's labels on to a future that runs elsewhere (a spawned task):
/// `tokio::spawn(work.in_current_request())`. Its samples then count for the request that
/// spawned it, as Go's goroutines inherit their profiler labels.
pub trait InCurrentRequest: Future + Sized {
    /// This future, polled with the labels of the request being polled now (none if no
    /// request is, or no profile ran when it was called).
    fn in_current_request(self) -> InRequest<Self> {
        InRequest {
            inner: self,
            labels: RequestLabels::current(),
        }
    }
}

impl<F: Future> InCurrentRequest for F {}

/// A future polled with a request's labels: see [`InCurrentRequest`].
#[derive(Debug)]
pub struct InRequest<F> {
    inner: F,
    labels: Option<RequestLabels>,
}

impl<F: Future> Future for InRequest<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        // SAFETY: `inner` is structurally pinned: it is never moved out of `self`, and
        // `labels` is plain data.
        let this = unsafe { self.get_unchecked_mut() };
        let labels = this.labels;
        let inner = unsafe { Pin::new_unchecked(&mut this.inner) };
        poll_labelled(|| labels, || inner.poll(cx))
    }
}

/// Hands the current request's labels on to a closure that runs elsewhere:
/// `tokio::task::spawn_blocking(in_current_request(move || work()))`, or a rayon job.
pub fn in_current_request<R>(f: impl FnOnce() -> R) -> impl FnOnce() -> R {
    let labels = RequestLabels::current();
    move || poll_labelled(|| labels, f)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(route: u32) -> RequestLabels {
        RequestLabels::new(7, RouteId(route), MethodLabel::from_method("GET"), None)
    }

    #[test]
    fn labels_survive_their_words() {
        let trace = TraceContext::new([1; 16], [2; 8]).unwrap();
        for labels in [
            labels(3),
            RequestLabels::new(
                u64::MAX,
                RouteId(u32::MAX),
                MethodLabel::from_method("PURGE"),
                Some(&trace),
            ),
        ] {
            assert_eq!(RequestLabels::from_words(labels.to_words()), Some(labels));
        }
        assert_eq!(RequestLabels::from_words([0; 5]), None);
    }

    #[test]
    fn a_scope_installs_its_labels_and_restores_the_previous_ones_even_on_panic() {
        assert_eq!(RequestLabels::current(), None);
        labels(2).scope(|| {
            assert_eq!(RequestLabels::current(), Some(labels(2)));
            let inner = std::panic::catch_unwind(|| labels(3).scope(|| panic!("handler")));
            assert!(inner.is_err());
            assert_eq!(RequestLabels::current(), Some(labels(2)));
        });
        assert_eq!(RequestLabels::current(), None);
    }

    #[test]
    fn labels_follow_handed_off_work_only_while_a_profile_wants_them() {
        let seen = || RequestLabels::current();
        // No profile: the adapters' poll installs nothing.
        assert_eq!(poll_labelled(|| Some(labels(2)), seen), None);
        let _wanted = WantLabels::new();
        assert_eq!(poll_labelled(|| Some(labels(2)), seen), Some(labels(2)));
        let job = poll_labelled(|| Some(labels(4)), || in_current_request(seen));
        assert_eq!(std::thread::spawn(job).join().unwrap(), Some(labels(4)));
        let task = poll_labelled(|| Some(labels(5)), || async { seen() }.in_current_request());
        let waker = std::task::Waker::noop();
        let mut task = std::pin::pin!(task);
        assert_eq!(
            task.as_mut().poll(&mut Context::from_waker(waker)),
            Poll::Ready(Some(labels(5)))
        );
    }
}
