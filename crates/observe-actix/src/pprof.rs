//! `/debug/pprof/*` for actix-web: mounts observe-pprof's [`Pprof`] (see `docs/pprof.md`).

use std::net::{Ipv4Addr, SocketAddr};

use actix_web::{guard, web, App, HttpRequest, HttpResponse, HttpServer};
use observe_core::HttpMetrics;
use observe_pprof::{AccessRequest, Pprof, ProfilingSettings, PPROF_ROUTES};

use crate::connection::ClientSocket;
use crate::middleware::Observe;
use crate::response::{into_response, Actix};

impl ProfilingSettings for Observe {
    fn pprof_setting(&mut self) -> &mut Option<Pprof> {
        &mut self.pprof
    }

    fn profiled_metrics(&self) -> &HttpMetrics {
        &self.metrics
    }
}

/// Registers `pprof` under `/debug/pprof` (what [`Observe::routes`] adds), for an `App` or
/// scope of your own: `.configure(observe_actix::pprof_routes(pprof))`.
pub fn pprof_routes(pprof: Pprof) -> impl Fn(&mut web::ServiceConfig) + Clone + 'static {
    move |config: &mut web::ServiceConfig| configure(config, pprof.clone())
}

pub(crate) fn configure(config: &mut web::ServiceConfig, pprof: Pprof) {
    let get = || web::route().guard(guard::Any(guard::Get()).or(guard::Head()));
    let [redirect, index, profile] = PPROF_ROUTES;
    let index_pprof = pprof.clone();
    config
        .route(
            redirect,
            get().to(|| async { into_response(Pprof::redirect_to_index()) }),
        )
        .route(
            index,
            get().to(move |req: HttpRequest| serve(index_pprof.clone(), req)),
        )
        .route(
            profile,
            get().to(move |req: HttpRequest| serve(pprof.clone(), req)),
        );
}

/// Serves `pprof` on `127.0.0.1:port` (port 0: any free one) with a one-worker actix server
/// of its own, apart from the application's public listener, and returns the bound address.
/// Call it from within the actix runtime (e.g. in `#[actix_web::main]`).
///
/// ```no_run
/// # async fn run() -> std::io::Result<()> {
/// use observe_actix::{Observe, Pprof, ProfilingSettings};
///
/// let observe = Observe::new("checkout").without_pprof();
/// let admin = observe_actix::serve_pprof_on_loopback(6060, Pprof::new())?;
/// println!("pprof on http://{admin}/debug/pprof/");
/// # Ok(()) }
/// ```
pub fn serve_pprof_on_loopback(port: u16, pprof: Pprof) -> std::io::Result<SocketAddr> {
    let server = HttpServer::new(move || App::new().configure(pprof_routes(pprof.clone())))
        .workers(1)
        .disable_signals()
        .bind((Ipv4Addr::LOCALHOST, port))?;
    let addr = server
        .addrs()
        .first()
        .copied()
        .unwrap_or_else(|| SocketAddr::from((Ipv4Addr::LOCALHOST, port)));
    // The debug server lives as long as the runtime; its errors must not take the service down.
    actix_web::rt::spawn(server.run());
    Ok(addr)
}

async fn serve(pprof: Pprof, req: HttpRequest) -> HttpResponse {
    let profile = req.match_info().get("profile").unwrap_or("");
    let peer = req.peer_addr().map(|addr| addr.ip());
    let headers = req.headers().iter();
    let access = AccessRequest::new(req.path(), peer)
        .with_headers(headers.map(|(name, value)| (name.as_str(), value.as_bytes())));
    let query = Some(req.query_string()).filter(|q| !q.is_empty());
    // actix drops this future only when the connection fails; a client that closed its side
    // is seen on the socket (with `on_connect` installed).
    let socket = ClientSocket::of(&req);
    let client_gone = async move {
        match socket {
            Some(socket) => socket.closed().await,
            None => std::future::pending().await,
        }
    };
    into_response(
        pprof
            .respond::<Actix>(&access, profile, query, client_gone)
            .await,
    )
}
