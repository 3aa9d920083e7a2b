//! Continuous profiling for the examples: with `OBSERVE_PYROSCOPE_URL=http://host:4040` set, a
//! CPU profile goes to that Pyroscope server every 10 s. Optional: `OBSERVE_PYROSCOPE_EVERY_SECONDS`
//! (the window), `OBSERVE_PYROSCOPE_TENANT` (`X-Scope-OrgID`), `OBSERVE_PYROSCOPE_USER` and
//! `OBSERVE_PYROSCOPE_PASSWORD` (basic auth), `OBSERVE_PYROSCOPE_TIMEOUT_MS`. The example's
//! `main.rs` imports its adapter's `observe_pprof`.

use std::time::Duration;

use super::observe_pprof::{ContinuousProfiling, PprofError};

/// `observe` with continuous profiling turned on by `start` when the environment asks for it;
/// a bad setting ends the process with the reason.
pub(crate) fn from_env<T>(
    observe: T,
    start: impl FnOnce(T, ContinuousProfiling) -> Result<T, PprofError>,
) -> T {
    let Ok(url) = std::env::var("OBSERVE_PYROSCOPE_URL") else {
        return observe;
    };
    let every = std::env::var("OBSERVE_PYROSCOPE_EVERY_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .map_or(Duration::from_secs(10), Duration::from_secs);
    let var = |name: &str| std::env::var(name).ok();
    let started = ContinuousProfiling::to(&url)
        .and_then(|profiling| profiling.every(every))
        .map(|mut profiling| {
            if let Some(tenant) = var("OBSERVE_PYROSCOPE_TENANT") {
                profiling = profiling.tenant(tenant);
            }
            if let (Some(user), Some(password)) = (
                var("OBSERVE_PYROSCOPE_USER"),
                var("OBSERVE_PYROSCOPE_PASSWORD"),
            ) {
                profiling = profiling.basic_auth(&user, &password);
            }
            if let Some(ms) = var("OBSERVE_PYROSCOPE_TIMEOUT_MS").and_then(|s| s.parse().ok()) {
                profiling = profiling.timeout(Duration::from_millis(ms));
            }
            profiling
        })
        .and_then(|profiling| start(observe, profiling));
    match started {
        Ok(observe) => observe,
        Err(e) => {
            eprintln!("OBSERVE_PYROSCOPE_URL={url}: {e}");
            std::process::exit(2);
        }
    }
}
