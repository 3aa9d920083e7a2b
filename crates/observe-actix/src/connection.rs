//! A second handle on each client connection, so observe notices a client that left while its
//! request was still being handled: actix-web keeps running the handler after the client closed
//! its connection and then writes the response into the socket, which the kernel accepts.

use std::any::Any;
use std::mem::MaybeUninit;
use std::rc::Rc;
use std::time::Duration;

use actix_web::dev::Extensions;
use actix_web::HttpRequest;

/// A connection hook for `HttpServer::on_connect`: with it, observe records `499` for a client
/// that closed its connection before its response was ready (its timeout fired), as nginx and
/// the axum adapter do, and a CPU profile whose client left ends early instead of holding the
/// profiler for its full length.
///
/// Without the hook such a request is recorded with the status the handler returned, although
/// nobody received the response. It costs one `dup` of each accepted plain-TCP socket; TLS
/// connections are not watched. A request is checked only when its handler waited (returned
/// `Pending`) and took at least 10 ms: one non-blocking `recv(MSG_PEEK)` when its response is
/// ready. Requests answered faster cost nothing.
///
/// ```no_run
/// use actix_web::{App, HttpServer};
/// use observe_actix::Observe;
///
/// # fn run() -> std::io::Result<()> {
/// let observe = Observe::new("checkout");
/// let server = HttpServer::new(move || App::new().configure(observe.routes()).wrap(observe.clone()))
///     .on_connect(observe_actix::on_connect)
///     .bind("127.0.0.1:3000")?;
/// # Ok(()) }
/// ```
pub fn on_connect(connection: &dyn Any, data: &mut Extensions) {
    if let Some(tcp) = connection.downcast_ref::<actix_web::rt::net::TcpStream>() {
        if let Ok(socket) = socket2::SockRef::from(tcp).try_clone() {
            data.insert(ClientSocket(Rc::new(socket)));
        }
    }
}

/// Requests that took less than this are not checked for a client that left: a client's
/// timeout is longer, and the check is a system call.
pub(crate) const CHECK_CLIENT_AFTER: Duration = Duration::from_millis(10);

/// A second handle on a request's connection, to notice the client leaving.
#[derive(Clone)]
pub(crate) struct ClientSocket(Rc<socket2::Socket>);

impl ClientSocket {
    /// The connection of `req`, when [`on_connect`] is installed.
    pub(crate) fn of(req: &HttpRequest) -> Option<ClientSocket> {
        req.conn_data::<ClientSocket>().cloned()
    }

    /// Whether the peer has closed or reset the connection.
    pub(crate) fn is_closed(&self) -> bool {
        let mut byte = [MaybeUninit::<u8>::uninit(); 1];
        // The socket is non-blocking (tokio made it so): `Ok(0)` is the peer's FIN,
        // `WouldBlock` an open and quiet connection, data a pipelined next request.
        match self.0.peek(&mut byte) {
            Ok(0) => true,
            Ok(_) => false,
            Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
        }
    }

    /// Resolves once the peer has closed or reset the connection (checked every 100 ms).
    #[cfg_attr(not(feature = "pprof"), allow(dead_code))]
    pub(crate) async fn closed(self) {
        loop {
            actix_web::rt::time::sleep(Duration::from_millis(100)).await;
            if self.is_closed() {
                return;
            }
        }
    }
}
