//! `/debug/pprof/*` for actix-web: mounts observe-pprof's [`Pprof`] (see `docs/pprof.md`).

use std::net::{Ipv4Addr, SocketAddr};

use actix_web::{guard, web, App, HttpRequest, HttpResponse, HttpServer};
use observe_pprof::{AccessRequest, ContinuousProfiling, Pprof, PprofError, ProfileJob};

use crate::connection::ClientSocket;
use crate::middleware::Observe;
use crate::routes::into_response;

impl Observe {
    /// Serves `pprof` under `/debug/pprof` from [`routes`](Self::routes) instead of the
    /// default ([`Pprof::new`]: loopback clients only, at most 60 s, no `cmdline`).
    ///
    /// ```
    /// use observe_actix::{Access, Observe, Pprof};
    ///
    /// let token = std::env::var("PPROF_TOKEN").unwrap_or_else(|_| "change-me".into());
    /// let observe = Observe::new("checkout")
    ///     .with_pprof(Pprof::builder().access(Access::bearer_token(token)?).build());
    /// # Ok::<(), observe_actix::observe_pprof::PprofError>(())
    /// ```
    pub fn with_pprof(mut self, pprof: Pprof) -> Self {
        self.pprof = Some(pprof);
        self
    }

    /// Pushes a CPU profile of the process to Pyroscope every 10 s (see
    /// [`ContinuousProfiling`]), from now for as long as this service's registry lives (what
    /// `/metrics` serves). The app name defaults to the service name, which is also the
    /// `service` label; `observe_profile_uploads_total{result}` on the registry counts the
    /// pushes. `/debug/pprof/profile` shares the sampling meanwhile.
    ///
    /// ```no_run
    /// use observe_actix::{ContinuousProfiling, Observe};
    ///
    /// let observe = Observe::new("checkout")
    ///     .with_continuous_profiling(ContinuousProfiling::to("http://pyroscope:4040")?)?;
    /// # Ok::<(), observe_actix::observe_pprof::PprofError>(())
    /// ```
    pub fn with_continuous_profiling(
        self,
        profiling: ContinuousProfiling,
    ) -> Result<Self, PprofError> {
        profiling.start_for_service(&self.metrics)?;
        Ok(self)
    }

    /// [`routes`](Self::routes) serves `/metrics` only; serve the profiles elsewhere, e.g.
    /// with [`serve_pprof_on_loopback`](crate::serve_pprof_on_loopback).
    pub fn without_pprof(mut self) -> Self {
        self.pprof = None;
        self
    }
}

/// Registers `pprof` under `/debug/pprof` (what [`Observe::routes`] adds), for an `App` or
/// scope of your own: `.configure(observe_actix::pprof_routes(pprof))`.
pub fn pprof_routes(pprof: Pprof) -> impl Fn(&mut web::ServiceConfig) + Clone + 'static {
    move |config: &mut web::ServiceConfig| configure(config, pprof.clone())
}

pub(crate) fn configure(config: &mut web::ServiceConfig, pprof: Pprof) {
    let get = || web::route().guard(guard::Any(guard::Get()).or(guard::Head()));
    let index = pprof.clone();
    config
        .route(
            "/debug/pprof",
            get().to(|| async { into_response(Pprof::redirect_to_index()) }),
        )
        .route(
            "/debug/pprof/",
            get().to(move |req: HttpRequest| serve(index.clone(), req)),
        )
        .route(
            "/debug/pprof/{profile}",
            get().to(move |req: HttpRequest| serve(pprof.clone(), req)),
        );
}

/// Serves `pprof` on `127.0.0.1:port` (port 0: any free one) with a one-worker actix server
/// of its own, apart from the application's public listener, and returns the bound address.
/// Call it from within the actix runtime (e.g. in `#[actix_web::main]`).
///
/// ```no_run
/// # async fn run() -> std::io::Result<()> {
/// use observe_actix::{Observe, Pprof};
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
    let run = |job: ProfileJob| web::block(move || job.run());
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
            .answer(&access, profile, query, run, client_gone)
            .await,
    )
}
