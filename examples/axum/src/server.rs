//! The HTTP/1 server loop `axum::serve` would run, with the limits it does not let you set:
//! a connection must send a whole request head within [`HEADER_READ_TIMEOUT`] of opening, and
//! of its previous response, or it is closed; a head may be at most [`MAX_HEAD_SIZE`]; a
//! client that stops reading its answer is closed once writing to it has made no progress for
//! [`WRITE_STALL_TIMEOUT`] (hyper has no write timeout: the unsent answer stayed in memory
//! for as long as the connection stayed open).
//!
//! `axum::serve` sets no timer, so hyper's `header_read_timeout` never fires there: a client
//! that opens a connection and sends nothing, half a head, or a head one byte at a time, holds
//! the connection and its buffers for as long as it likes (tested in
//! `integration-tests/tests/slow_clients.rs`). See `docs/pprof.md`, "Clients that hold
//! connections".

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::Router;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Sleep;
use tower::ServiceExt;

/// How long a connection may take to send a whole request head, counted from its opening or
/// from its previous response (so it is the keep-alive idle timeout too). actix-web's
/// defaults (`client_request_timeout`, `keep_alive`) are the same 5 s.
pub(crate) const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);

/// The longest request head (request line and headers) a connection may send, which is also
/// what it may make the server buffer while sending it slowly: actix-web's fixed limit,
/// 128 KiB (hyper's own is its ~400 KiB read buffer). A longer head is answered `431`.
pub(crate) const MAX_HEAD_SIZE: usize = 128 * 1024;

/// How long a write to a client may wait without any byte taken before the connection is
/// closed: the client stopped reading (a profile or a stream nobody reads), and what is left of
/// its answer is freed. A client that reads, however slowly, is never cut off.
pub(crate) const WRITE_STALL_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a graceful shutdown waits for requests in flight.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Serves `app` on `listener` until `shutdown` completes, then lets requests in flight finish
/// (at most [`SHUTDOWN_GRACE`]). Handlers see the client's address as axum's
/// `ConnectInfo<SocketAddr>`, as with `into_make_service_with_connect_info`.
pub(crate) async fn serve(
    listener: tokio::net::TcpListener,
    app: Router,
    shutdown: impl Future<Output = ()>,
) {
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_header_size(MAX_HEAD_SIZE);
    let graceful = GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                // A client that gave up before its connection was taken: the next one.
                Err(e) if matches!(
                    e.kind(),
                    std::io::ErrorKind::ConnectionAborted | std::io::ErrorKind::ConnectionReset
                ) => continue,
                // Out of file descriptors or similar: say so, and wait instead of spinning.
                Err(e) => {
                    eprintln!("example-axum: accepting a connection failed: {e}; retrying in 50 ms");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = tcp.set_nodelay(true);
        let app = app.clone();
        let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
            req.extensions_mut().insert(ConnectInfo::<SocketAddr>(peer));
            app.clone().oneshot(req)
        });
        let tcp = WriteStallTimeout { tcp, stalled: None };
        let connection = graceful.watch(http.serve_connection(TokioIo::new(tcp), service));
        tokio::spawn(async move {
            // A client that went away or broke the protocol: nothing to do but close.
            let _ = connection.await;
        });
    }
    drop(listener);
    let _ = tokio::time::timeout(SHUTDOWN_GRACE, graceful.shutdown()).await;
}

/// A connection whose writes fail with `TimedOut` once the client has taken nothing for
/// [`WRITE_STALL_TIMEOUT`]; hyper then closes it. The timer exists only while a write waits.
struct WriteStallTimeout {
    tcp: TcpStream,
    stalled: Option<Pin<Box<Sleep>>>,
}

impl WriteStallTimeout {
    /// After a write that could not proceed: `Pending` until the stall lasts too long.
    fn stall<T>(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<T>> {
        let timer = self
            .stalled
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(WRITE_STALL_TIMEOUT)));
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the client read nothing for the write stall timeout",
            ))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn progressed<T>(
        &mut self,
        done: Poll<io::Result<T>>,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<T>> {
        match done {
            Poll::Pending => self.stall(cx),
            done => {
                self.stalled = None;
                done
            }
        }
    }
}

impl AsyncRead for WriteStallTimeout {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_read(cx, buf)
    }
}

impl AsyncWrite for WriteStallTimeout {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let done = Pin::new(&mut self.tcp).poll_write(cx, buf);
        self.progressed(done, cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let done = Pin::new(&mut self.tcp).poll_write_vectored(cx, bufs);
        self.progressed(done, cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.tcp.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let done = Pin::new(&mut self.tcp).poll_shutdown(cx);
        self.progressed(done, cx)
    }
}
