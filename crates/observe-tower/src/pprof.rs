//! `/debug/pprof/*` for axum: mounts observe-pprof's [`Pprof`] (see `docs/pprof.md`).

use std::net::{Ipv4Addr, SocketAddr};

use axum::extract::{ConnectInfo, Path, Request};
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use observe_core::HttpMetrics;
use observe_pprof::{AccessRequest, Pprof, ProfilingSettings, PPROF_ROUTES};

use crate::layer::ObserveLayer;
use crate::response::{into_response, Tokio};

impl ProfilingSettings for ObserveLayer {
    fn pprof_setting(&mut self) -> &mut Option<Pprof> {
        &mut self.pprof
    }

    fn profiled_metrics(&self) -> &HttpMetrics {
        &self.metrics
    }
}

/// An axum router serving `pprof` under `/debug/pprof` (what [`ObserveLayer::routes`] merges
/// in), for mounting on a router of your own.
///
/// The client address the default access rule needs comes from axum's [`ConnectInfo`]: serve
/// the app with `into_make_service_with_connect_info::<SocketAddr>()`.
pub fn pprof_routes<S>(pprof: Pprof) -> Router<S>
where
    S: Clone + Send + Sync + 'static,
{
    let [redirect, index, profile] = PPROF_ROUTES;
    let index_pprof = pprof.clone();
    Router::new()
        .route(
            redirect,
            get(|| async { into_response(Pprof::redirect_to_index()) }),
        )
        .route(
            index,
            get(move |req: Request| serve(index_pprof.clone(), String::new(), req)),
        )
        .route(
            profile,
            get(move |Path(profile): Path<String>, req: Request| {
                serve(pprof.clone(), profile, req)
            }),
        )
}

/// Serves `pprof` on `127.0.0.1:port` (port 0: any free one) from a spawned task, apart from
/// the application's public listener, and returns the bound address. Reach it with
/// `ssh -L 6060:127.0.0.1:6060 host`, or from the host itself.
///
/// ```no_run
/// # async fn run() -> std::io::Result<()> {
/// use observe_tower::{ObserveLayer, Pprof, ProfilingSettings};
///
/// let observe = ObserveLayer::new("checkout").without_pprof();
/// let admin = observe_tower::serve_pprof_on_loopback(6060, Pprof::new()).await?;
/// println!("pprof on http://{admin}/debug/pprof/");
/// # Ok(()) }
/// ```
pub async fn serve_pprof_on_loopback(port: u16, pprof: Pprof) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, port)).await?;
    let addr = listener.local_addr()?;
    let app: Router = pprof_routes(pprof);
    tokio::spawn(async move {
        // `axum::serve` only returns when the listener fails for good; the main service
        // must not go down with its debug port, so there is nothing more to do here.
        let _ = axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await;
    });
    Ok(addr)
}

async fn serve(pprof: Pprof, profile: String, req: Request) -> Response {
    // Only the head: the body is not `Sync`, and this future must be `Send`.
    let (req, _) = req.into_parts();
    let peer = req
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(addr)| addr.ip());
    let headers = req.headers.iter();
    let access = AccessRequest::new(req.uri.path(), peer)
        .with_headers(headers.map(|(name, value)| (name.as_str(), value.as_bytes())));
    // hyper drops this future when the client goes away, which stops the profile.
    let client_gone = std::future::pending();
    into_response(
        pprof
            .respond::<Tokio>(&access, &profile, req.uri.query(), client_gone)
            .await,
    )
}
