//! Continuous profiling: every 10 s (configurable) the CPU samples of the last window go to a
//! Pyroscope server as pprof, from the process's one sampler, which `/debug/pprof/profile`
//! shares meanwhile (no second timer, no 409); and, where `ProfiledAllocator` samples the
//! heap, the window's allocation profile beside it (allocations of the window, what is
//! allocated at its end), as Pyroscope's Go client pushes one.
//!
//! A slow, failing or absent server never reaches requests and never grows memory: pushes
//! run on one thread of their own with timeouts, a window is tried twice at most and then
//! dropped, the next window starts while one is pushed (its stacks are bounded like any
//! profile's), and `observe_profile_uploads_total{result}` counts what happened. A failure is
//! written to standard error at most once a minute.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use observe_core::prometheus::core::{Collector, Desc};
use observe_core::prometheus::proto::MetricFamily;
use observe_core::prometheus::{IntCounterVec, Opts, Registry};
use observe_core::HttpMetrics;

use crate::cpu::CpuProfile;
use crate::error::PprofError;
use crate::heap;
use crate::params::{DEFAULT_FREQUENCY, MAX_FREQUENCY};
use crate::pyroscope::{self, Endpoint, Outcome, Push};
use crate::sampler;

/// The counter of pushes, by result: `ok`, `refused` (the server answered 4xx), `failed`
/// (no answer or 5xx twice; the window is dropped).
pub const UPLOADS_METRIC: &str = "observe_profile_uploads_total";

/// How often a warning about failing pushes may be written.
const WARN_EVERY: Duration = Duration::from_secs(60);

/// Where and how to push CPU profiles continuously. Adapters start it for their service
/// (`with_continuous_profiling`); [`start`](Self::start) does it by hand.
///
/// ```no_run
/// use std::time::Duration;
/// use observe_pprof::ContinuousProfiling;
///
/// let profiling = ContinuousProfiling::to("http://pyroscope:4040")?
///     .app_name("checkout")
///     .label("version", env!("CARGO_PKG_VERSION"))?
///     .every(Duration::from_secs(10))?
///     .tenant("team-a")
///     .basic_auth("user", "password");
/// let registry = observe_core::prometheus::Registry::new();
/// let running = profiling.start(&registry)?; // stops when dropped
/// # Ok::<(), observe_pprof::PprofError>(())
/// ```
#[derive(Debug, Clone)]
#[must_use]
pub struct ContinuousProfiling {
    endpoint: Endpoint,
    app_name: Option<String>,
    labels: Vec<(String, String)>,
    every: Duration,
    frequency: u32,
    authorization: Option<String>,
    tenant: Option<String>,
    timeout: Duration,
}

impl ContinuousProfiling {
    /// Pushes to the Pyroscope server (or Grafana Alloy's `pyroscope.receive_http`) at
    /// `http://host[:port][/prefix]`, every 10 s, sampling at 99 Hz.
    pub fn to(url: &str) -> Result<Self, PprofError> {
        Ok(ContinuousProfiling {
            endpoint: Endpoint::parse(url).map_err(PprofError::InvalidContinuousProfiling)?,
            app_name: None,
            labels: Vec::new(),
            every: Duration::from_secs(10),
            frequency: DEFAULT_FREQUENCY,
            authorization: None,
            tenant: None,
            timeout: Duration::from_secs(5),
        })
    }

    /// The application name in Pyroscope (`{name}.cpu`); adapters default it to the
    /// service name, which is also set as the `service` label.
    pub fn app_name(mut self, name: impl Into<String>) -> Self {
        self.app_name = Some(name.into());
        self
    }

    /// A label on every profile (`version`, `region`); names are Prometheus label names.
    pub fn label(
        mut self,
        name: impl Into<String>,
        value: impl Into<String>,
    ) -> Result<Self, PprofError> {
        let (name, value) = (name.into(), value.into());
        let valid = name
            .chars()
            .enumerate()
            .all(|(i, c)| c == '_' || c.is_ascii_alphabetic() || (i > 0 && c.is_ascii_digit()));
        if name.is_empty() || !valid || value.contains(['{', '}', ',', '=']) {
            return Err(PprofError::InvalidContinuousProfiling(format!(
                "label {name:?}={value:?}: names are [a-zA-Z_][a-zA-Z0-9_]*, values without {{}},="
            )));
        }
        self.labels.retain(|(n, _)| *n != name);
        self.labels.push((name, value));
        Ok(self)
    }

    /// How much CPU time each push covers (1 s to 5 min; default 10 s, as Pyroscope's
    /// clients do).
    pub fn every(mut self, every: Duration) -> Result<Self, PprofError> {
        if every < Duration::from_secs(1) || every > Duration::from_secs(300) {
            return Err(PprofError::InvalidContinuousProfiling(format!(
                "every must be from 1 s to 300 s, got {every:?}"
            )));
        }
        self.every = every;
        Ok(self)
    }

    /// Sampling frequency in Hz (1 to 1000, default 99). While continuous profiling runs,
    /// on-demand profiles are taken at this frequency too.
    pub fn frequency(mut self, hz: u32) -> Result<Self, PprofError> {
        if !(1..=MAX_FREQUENCY).contains(&hz) {
            return Err(PprofError::InvalidContinuousProfiling(format!(
                "frequency must be from 1 to {MAX_FREQUENCY} Hz, got {hz}"
            )));
        }
        self.frequency = hz;
        Ok(self)
    }

    /// HTTP basic auth on every push (Grafana Cloud: the instance id and an API token).
    pub fn basic_auth(mut self, user: &str, password: &str) -> Self {
        self.authorization = Some(pyroscope::basic_auth(user, password));
        self
    }

    /// The tenant of a multi-tenant Pyroscope (`X-Scope-OrgID`).
    pub fn tenant(mut self, tenant: impl Into<String>) -> Self {
        self.tenant = Some(tenant.into());
        self
    }

    /// The longest a push may take to connect, send or be answered (default 5 s).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout.max(Duration::from_millis(100));
        self
    }

    /// Starts sampling and pushing, with the counter of pushes on `registry`. Profiling
    /// stops when the returned handle is dropped.
    pub fn start(self, registry: &Registry) -> Result<ContinuousProfilingGuard, PprofError> {
        let (running, uploads) = self.spawn(None)?;
        registry.register(Box::new(uploads)).map_err(|e| {
            PprofError::InvalidContinuousProfiling(format!("{UPLOADS_METRIC}: {e}"))
        })?;
        Ok(running)
    }

    /// Starts profiling for a service's metrics, as the adapters' `with_continuous_profiling`
    /// does: the service name is the default app name and the `service` label, the counter of
    /// pushes goes on the metrics' registry, and profiling runs as long as that registry
    /// does (what `/metrics` serves), whoever holds it.
    pub fn start_for_service(self, metrics: &HttpMetrics) -> Result<(), PprofError> {
        let (running, uploads) = self.spawn(Some(metrics.service()))?;
        let collector = Uploads {
            counter: uploads,
            _running: running,
        };
        metrics
            .registry()
            .register(Box::new(collector))
            .map_err(|e| PprofError::InvalidContinuousProfiling(format!("{UPLOADS_METRIC}: {e}")))
    }

    fn spawn(
        mut self,
        service: Option<&str>,
    ) -> Result<(ContinuousProfilingGuard, IntCounterVec), PprofError> {
        let uploads = IntCounterVec::new(
            Opts::new(
                UPLOADS_METRIC,
                "Continuous-profiling pushes to Pyroscope, by result (ok, refused, failed).",
            ),
            &["result"],
        )
        .map_err(|e| PprofError::InvalidContinuousProfiling(e.to_string()))?;
        for result in ["ok", "refused", "failed"] {
            uploads.with_label_values(&[result]);
        }
        if let Some(service) = service {
            if !self.labels.iter().any(|(n, _)| n == "service") {
                self = self.label("service", service)?;
            }
        }
        let app = self
            .app_name
            .clone()
            .or_else(|| service.map(str::to_owned))
            .unwrap_or_else(|| "rust-app".to_owned());
        let labels: Vec<String> = self
            .labels
            .iter()
            .map(|(n, v)| format!("{n}={v}"))
            .collect();
        let name = format!("{app}{{{}}}", labels.join(","));
        let subscription = sampler::subscribe(self.frequency)?;
        let stop = Arc::new(AtomicBool::new(false));
        let pusher = Pusher {
            config: self,
            name,
            uploads: uploads.clone(),
            stop: stop.clone(),
            last_warning: None,
        };
        let thread = std::thread::Builder::new()
            .name("observe-pyroscope".into())
            .spawn(move || pusher.run(subscription))
            .map_err(|e| PprofError::Sampler(format!("cannot start the push thread: {e}")))?;
        let running = ContinuousProfilingGuard {
            stop,
            thread: Some(thread),
        };
        Ok((running, uploads))
    }
}

/// The counter of pushes, on the service's registry, holding the profiler: dropping the
/// registry stops it.
struct Uploads {
    counter: IntCounterVec,
    _running: ContinuousProfilingGuard,
}

impl Collector for Uploads {
    fn desc(&self) -> Vec<&Desc> {
        self.counter.desc()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        self.counter.collect()
    }
}

/// Continuous profiling while it lives; dropping it stops the pushes (the window in
/// progress is not sent) and, if nothing else samples, the sampler.
#[derive(Debug)]
pub struct ContinuousProfilingGuard {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for ContinuousProfilingGuard {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(thread) = self.thread.take() {
            thread.thread().unpark();
            let _ = thread.join();
        }
    }
}

struct Pusher {
    config: ContinuousProfiling,
    name: String,
    uploads: IntCounterVec,
    stop: Arc<AtomicBool>,
    last_warning: Option<Instant>,
}

impl Pusher {
    fn run(mut self, subscription: sampler::Subscription) {
        let mut next = Instant::now() + self.config.every;
        // The heap samples at the last window's end: each push has the allocations since.
        let mut heap_before = None;
        let mut heap_since = SystemTime::now();
        loop {
            // Wait for the window's end, or for the handle's drop.
            loop {
                if self.stop.load(Ordering::Acquire) {
                    return;
                }
                let left = next.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    break;
                }
                std::thread::park_timeout(left);
            }
            next += self.config.every;
            let window = subscription.take();
            if window.samples() > 0 {
                let (from, until) = (window.started, window.started + window.duration);
                let frequency = window.frequency;
                let profile = CpuProfile::new(window);
                match profile.to_pprof() {
                    Ok(pprof) => {
                        drop(profile);
                        if !self.send(from, until, frequency, None, &pprof) {
                            return;
                        }
                    }
                    Err(e) => self.count("failed", &e.to_string()),
                }
            }
            // The allocation profile beside it, as Pyroscope's Go client pushes one.
            let until = SystemTime::now();
            let duration = until.duration_since(heap_since).unwrap_or_default();
            if let Some(pprof) = heap::window_profile(&mut heap_before, heap_since, duration) {
                let types = Some(heap::PYROSCOPE_SAMPLE_TYPES);
                if !self.send(heap_since, until, self.config.frequency, types, &pprof) {
                    return;
                }
            }
            heap_since = until;
        }
    }

    /// Pushes one profile (once more a second later if it failed) and counts how it went;
    /// `false` when the handle was dropped meanwhile.
    fn send(
        &mut self,
        from: SystemTime,
        until: SystemTime,
        sample_rate: u32,
        sample_type_config: Option<&str>,
        pprof: &[u8],
    ) -> bool {
        let push = Push {
            name: &self.name,
            from,
            until,
            sample_rate,
            authorization: self.config.authorization.as_deref(),
            tenant: self.config.tenant.as_deref(),
            timeout: self.config.timeout,
            sample_type_config,
        };
        let mut outcome = pyroscope::push(&self.config.endpoint, &push, pprof);
        if let Outcome::Failed(_) = outcome {
            // One retry, a second later: enough for a restart, never a queue.
            std::thread::park_timeout(Duration::from_secs(1));
            if self.stop.load(Ordering::Acquire) {
                return false;
            }
            outcome = pyroscope::push(&self.config.endpoint, &push, pprof);
        }
        match outcome {
            Outcome::Accepted => self.uploads.with_label_values(&["ok"]).inc(),
            Outcome::Refused(status) => {
                self.count("refused", &format!("the server answered {status}"))
            }
            Outcome::Failed(why) => self.count("failed", &why),
        }
        true
    }

    fn count(&mut self, result: &str, why: &str) {
        self.uploads.with_label_values(&[result]).inc();
        let now = Instant::now();
        if self.last_warning.is_none_or(|t| now - t >= WARN_EVERY) {
            self.last_warning = Some(now);
            eprintln!(
                "observe: a profile push to Pyroscope was dropped ({result}: {why}); \
                 {UPLOADS_METRIC} counts them, this warning repeats at most once a minute"
            );
        }
    }
}
