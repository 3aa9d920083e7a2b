//! The profiling settings of an adapter's middleware (`ObserveLayer` in observe-tower,
//! `Observe` in observe-actix), written once for every adapter.

use observe_core::HttpMetrics;

use crate::continuous::ContinuousProfiling;
use crate::endpoints::Pprof;
use crate::error::PprofError;

/// Profiling settings on an adapter's middleware: what its `routes()` serve under
/// `/debug/pprof`, and continuous profiling. Each adapter re-exports this trait at its root
/// (bring it into scope with the middleware: `use observe_tower::{ObserveLayer,
/// ProfilingSettings}`).
///
/// ```
/// use observe_pprof::{Access, Pprof, ProfilingSettings};
/// # // What an adapter writes once for its middleware:
/// # struct ObserveLayer { metrics: observe_core::HttpMetrics, pprof: Option<Pprof> }
/// # impl ObserveLayer {
/// #     fn new(service: &str) -> Self {
/// #         ObserveLayer { metrics: observe_core::HttpMetrics::new(service), pprof: Some(Pprof::new()) }
/// #     }
/// # }
/// # impl ProfilingSettings for ObserveLayer {
/// #     fn pprof_setting(&mut self) -> &mut Option<Pprof> { &mut self.pprof }
/// #     fn profiled_metrics(&self) -> &observe_core::HttpMetrics { &self.metrics }
/// # }
///
/// let token = std::env::var("PPROF_TOKEN").unwrap_or_else(|_| "change-me".into());
/// let observe = ObserveLayer::new("checkout") // observe_tower::ObserveLayer, observe_actix::Observe
///     .with_pprof(Pprof::builder().access(Access::bearer_token(token)?).build());
/// # assert!(observe.pprof.is_some());
/// # Ok::<(), observe_pprof::PprofError>(())
/// ```
pub trait ProfilingSettings: Sized {
    /// For adapters: where the middleware keeps what `routes()` serve under `/debug/pprof`.
    fn pprof_setting(&mut self) -> &mut Option<Pprof>;

    /// For adapters: the metrics the middleware records into.
    fn profiled_metrics(&self) -> &HttpMetrics;

    /// Serves `pprof` under `/debug/pprof` from `routes()` instead of the default
    /// ([`Pprof::new`]: loopback clients only, at most 60 s, no `cmdline`).
    fn with_pprof(mut self, pprof: Pprof) -> Self {
        *self.pprof_setting() = Some(pprof);
        self
    }

    /// `routes()` serves `/metrics` only; serve the profiles elsewhere, e.g. with the
    /// adapter's `serve_pprof_on_loopback`.
    fn without_pprof(mut self) -> Self {
        *self.pprof_setting() = None;
        self
    }

    /// Pushes a CPU profile of the process to Pyroscope every 10 s (see
    /// [`ContinuousProfiling`]), from now for as long as this service's registry lives (what
    /// `/metrics` serves). The app name defaults to the service name, which is also the
    /// `service` label; `observe_profile_uploads_total{result}` on the registry counts the
    /// pushes. `/debug/pprof/profile` shares the sampling meanwhile.
    ///
    /// ```no_run
    /// use observe_pprof::{ContinuousProfiling, Pprof, ProfilingSettings};
    /// # struct ObserveLayer { metrics: observe_core::HttpMetrics, pprof: Option<Pprof> }
    /// # impl ObserveLayer {
    /// #     fn new(service: &str) -> Self {
    /// #         ObserveLayer { metrics: observe_core::HttpMetrics::new(service), pprof: None }
    /// #     }
    /// # }
    /// # impl ProfilingSettings for ObserveLayer {
    /// #     fn pprof_setting(&mut self) -> &mut Option<Pprof> { &mut self.pprof }
    /// #     fn profiled_metrics(&self) -> &observe_core::HttpMetrics { &self.metrics }
    /// # }
    ///
    /// let observe = ObserveLayer::new("checkout") // observe_tower::ObserveLayer, observe_actix::Observe
    ///     .with_continuous_profiling(ContinuousProfiling::to("http://pyroscope:4040")?)?;
    /// # Ok::<(), observe_pprof::PprofError>(())
    /// ```
    fn with_continuous_profiling(self, profiling: ContinuousProfiling) -> Result<Self, PprofError> {
        profiling.start_for_service(self.profiled_metrics())?;
        Ok(self)
    }
}
