//! What an adapter lends observe's endpoints from its framework: a way to run blocking work
//! off the async workers, and a timer. Each adapter implements [`Executor`] once (tokio's
//! `spawn_blocking`, actix-web's blocking pool) and every endpoint (`/metrics`,
//! `/debug/pprof`) is then one async call.

use std::future::Future;
use std::pin::pin;
use std::task::Poll;
use std::time::Duration;

use crate::response::EndpointResponse;

/// Work an endpoint does off the async workers (encoding `/metrics`, taking a profile): the
/// [`Executor`] runs it on a thread that may block.
pub trait BlockingWork: Send + 'static {
    /// Does the work, blocking the calling thread, and gives the endpoint's response.
    fn run(self) -> EndpointResponse;
}

/// How a framework runs observe's blocking work and waits. Adapters implement it once.
///
/// ```
/// use std::future::Future;
/// use std::time::Duration;
/// use observe_core::adapter::{BlockingWork, EndpointResponse, Executor};
///
/// /// A thread per job, and a sleeping thread per timer: enough for a test.
/// struct Threads;
///
/// impl Executor for Threads {
///     fn spawn_blocking<W: BlockingWork>(
///         work: W,
///     ) -> impl Future<Output = Result<EndpointResponse, String>> + Send {
///         let job = std::thread::spawn(move || work.run());
///         async move { job.join().map_err(|_| "the job panicked".to_owned()) }
///     }
///
///     fn sleep(duration: Duration) -> impl Future<Output = ()> + Send {
///         async move { std::thread::sleep(duration) }
///     }
/// }
/// ```
pub trait Executor {
    /// Runs `work` where it may block (tokio's `spawn_blocking`, `actix_web::rt::task::
    /// spawn_blocking`); `Err` says why it gave no response (the pool shut down, it panicked).
    fn spawn_blocking<W: BlockingWork>(
        work: W,
    ) -> impl Future<Output = Result<EndpointResponse, String>> + Send;

    /// Completes after `duration`.
    fn sleep(duration: Duration) -> impl Future<Output = ()> + Send;
}

/// The output of whichever of `first` and `second` completes first (`first` when both are
/// ready at once); the other is dropped.
pub async fn race<T>(first: impl Future<Output = T>, second: impl Future<Output = T>) -> T {
    let (mut first, mut second) = (pin!(first), pin!(second));
    std::future::poll_fn(|cx| {
        if let Poll::Ready(out) = first.as_mut().poll(cx) {
            return Poll::Ready(out);
        }
        second.as_mut().poll(cx)
    })
    .await
}
