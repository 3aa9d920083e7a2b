use thiserror::Error;

/// Why a `/debug/pprof` request got no profile. Each becomes a one-line `text/plain` answer
/// with `X-Go-Pprof: 1` (so `go tool pprof` prints it) and the status of [`status`](Self::status).
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum PprofError {
    /// `seconds` was not an integer in range.
    #[error("seconds must be an integer from 1 to {max}, got {value:?}")]
    InvalidSeconds {
        /// The value as given (shortened).
        value: String,
        /// The configured maximum.
        max: u64,
    },
    /// `frequency` was not an integer in range.
    #[error("frequency must be an integer from 1 to 1000 (Hz), got {value:?}")]
    InvalidFrequency {
        /// The value as given (shortened).
        value: String,
    },
    /// A query parameter that is neither a profile's own nor a label samples carry.
    #[error("unknown label {name:?}: profiles filter by http_route, http_request_method, trace_id and span_id (e.g. ?http_route=/users/{{id}})")]
    UnknownLabel {
        /// The parameter's name as given (shortened).
        name: String,
    },
    /// The frequency is higher than this process's timers can deliver.
    #[error("frequency must be at most {max} Hz here, got {asked}: per-thread CPU timers are not available in this process ({why}), and the process-wide timer delivers at most about {max} samples a second in all")]
    FrequencyTooHigh {
        /// The frequency asked for.
        asked: u32,
        /// The highest that can be delivered.
        max: u32,
        /// Why per-thread timers are not available.
        why: String,
    },
    /// The builder was given a maximum of 0 seconds.
    #[error("max_seconds must be at least 1, got {0}")]
    InvalidMaxSeconds(u64),
    /// An empty bearer token would let anyone in.
    #[error("the bearer token must not be empty")]
    EmptyToken,
    /// Another CPU profile is running in this process.
    #[error("profiling is already in use: one CPU profile runs at a time per process; retry when it ends")]
    Busy,
    /// No such profile at this server.
    #[error("unknown profile {name:?}: this server serves {served} (see /debug/pprof/)")]
    UnknownProfile {
        /// The name asked for (shortened).
        name: String,
        /// The profiles this build serves, comma-separated.
        served: String,
    },
    /// `/debug/pprof/cmdline` was asked for but is off.
    #[error("cmdline is disabled: command-line arguments can hold secrets; enable it with Pprof::builder().cmdline(true)")]
    CmdlineDisabled,
    /// Heap profiling is not available in this binary or process; the message says how to
    /// enable it.
    #[error("{0}")]
    HeapUnavailable(String),
    /// Task dumps are not available in this binary; the message says which flags to build with.
    #[error("{0}")]
    TasksUnavailable(String),
    /// No task dump now: no runtime answered in time, or one would not (a worker is stalled,
    /// an earlier dump still waits for one, too many tasks are queued); the message says which.
    #[error("{0}")]
    TaskDumpTimeout(String),
    /// The profile could need more memory than the configured budget allows.
    #[error("{0}")]
    OverBudget(String),
    /// The client went away before the profile was complete.
    #[error("the client went away; profiling stopped early")]
    Cancelled,
    /// The sampler could not start (the signal handler, the timer, or its thread).
    #[error("CPU profiler failed: {0}")]
    Sampler(String),
    /// A continuous-profiling setting is invalid (the message says which and why).
    #[error("continuous profiling: {0}")]
    InvalidContinuousProfiling(String),
    /// Writing the profile failed.
    #[error("could not encode the profile: {0}")]
    Encode(String),
}

/// The offending value as it goes back in a one-line error: bounded, printable.
pub(crate) fn shown(raw: &str) -> String {
    let mut s: String = raw
        .chars()
        .take(32)
        // Anything `{:?}` would escape (controls, unassigned code points, quotes) is shown as
        // `?`, so the message stays as short as the value.
        .map(|c| {
            if c.escape_debug().count() == 1 {
                c
            } else {
                '?'
            }
        })
        .collect();
    if raw.chars().count() > 32 {
        s.push('…');
    }
    s
}

impl PprofError {
    /// The HTTP status this error is answered with.
    pub fn status(&self) -> u16 {
        match self {
            PprofError::InvalidSeconds { .. }
            | PprofError::InvalidFrequency { .. }
            | PprofError::UnknownLabel { .. }
            | PprofError::FrequencyTooHigh { .. }
            | PprofError::InvalidMaxSeconds(_)
            | PprofError::EmptyToken
            | PprofError::InvalidContinuousProfiling(_) => 400,
            PprofError::Busy => 409,
            PprofError::UnknownProfile { .. } | PprofError::CmdlineDisabled => 404,
            PprofError::HeapUnavailable(_) | PprofError::TasksUnavailable(_) => 501,
            PprofError::OverBudget(_) | PprofError::TaskDumpTimeout(_) => 503,
            // nginx's "client closed request": nobody reads it, but logs do.
            PprofError::Cancelled => 499,
            PprofError::Sampler(_) | PprofError::Encode(_) => 500,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::shown;

    #[test]
    fn echoed_values_are_bounded_and_printable() {
        assert_eq!(shown("a\u{7}b"), "a?b");
        assert_eq!(shown("\u{2ee5e}\"x"), "??x");
        assert_eq!(shown(&"9".repeat(500)).chars().count(), 33);
    }
}
