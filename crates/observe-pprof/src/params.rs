use std::time::Duration;

use crate::error::{shown, PprofError};
use crate::labels::LabelFilter;

/// Go's default CPU profile length.
pub const DEFAULT_SECONDS: u64 = 30;
/// Default longest CPU profile a request may ask for.
pub const DEFAULT_MAX_SECONDS: u64 = 60;
/// Default sampling frequency, in Hz: 99 rather than 100 so samples do not line up with
/// timers that tick at round rates.
pub const DEFAULT_FREQUENCY: u32 = 99;
/// Highest sampling frequency a request may ask for, in Hz.
pub const MAX_FREQUENCY: u32 = 1000;

/// The validated `seconds` and `frequency` of a CPU profile request, and its label filters
/// (`http_route=/work`: see [`LabelFilter`]).
///
/// ```
/// use observe_pprof::ProfileParams;
///
/// let p = ProfileParams::parse(Some("seconds=5&frequency=250"), 60)?;
/// assert_eq!((p.seconds(), p.frequency()), (5, 250));
/// let defaults = ProfileParams::parse(None, 60)?;
/// assert_eq!((defaults.seconds(), defaults.frequency()), (30, 99));
/// assert!(ProfileParams::parse(Some("seconds=61"), 60).is_err());
/// # Ok::<(), observe_pprof::PprofError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProfileParams {
    seconds: u64,
    frequency: u32,
    labels: LabelFilter,
}

impl ProfileParams {
    /// Reads `seconds` (1..=`max_seconds`, default 30 or `max_seconds` if lower) and
    /// `frequency` (1..=1000 Hz, default 99) from a raw query string. Other keys are ignored;
    /// of a repeated key the first counts, as in Go's `FormValue`.
    pub fn parse(query: Option<&str>, max_seconds: u64) -> Result<Self, PprofError> {
        let max_seconds = max_seconds.max(1);
        let seconds = match first_value(query, "seconds") {
            None => DEFAULT_SECONDS.min(max_seconds),
            Some(raw) => seconds(raw, max_seconds)?,
        };
        let frequency = match first_value(query, "frequency") {
            None => DEFAULT_FREQUENCY,
            Some(raw) => match raw.parse::<u32>() {
                Ok(n) if (1..=MAX_FREQUENCY).contains(&n) => n,
                _ => return Err(PprofError::InvalidFrequency { value: shown(raw) }),
            },
        };
        let labels = LabelFilter::parse(query)?;
        Ok(ProfileParams {
            seconds,
            frequency,
            labels,
        })
    }

    /// How long to sample, in seconds.
    pub fn seconds(&self) -> u64 {
        self.seconds
    }

    /// How long to sample.
    pub fn duration(&self) -> Duration {
        Duration::from_secs(self.seconds)
    }

    /// Which samples the profile keeps, by their request's labels.
    pub fn labels(&self) -> &LabelFilter {
        &self.labels
    }

    /// Samples per second of CPU time.
    pub fn frequency(&self) -> u32 {
        self.frequency
    }
}

/// The validated parameters of a heap or allocation profile request: `seconds` asks for a
/// delta profile (what was allocated and freed over that many seconds, as Go's `?seconds=`),
/// and label filters keep one request's samples.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct HeapParams {
    pub(crate) delta_seconds: Option<u64>,
    pub(crate) labels: LabelFilter,
}

impl HeapParams {
    /// Reads `seconds` (1..=`max_seconds`, absent: the profile now) and the label filters.
    pub(crate) fn parse(query: Option<&str>, max_seconds: u64) -> Result<Self, PprofError> {
        let delta_seconds = match first_value(query, "seconds") {
            None => None,
            Some(raw) => Some(seconds(raw, max_seconds.max(1))?),
        };
        Ok(HeapParams {
            delta_seconds,
            labels: LabelFilter::parse(query)?,
        })
    }
}

fn seconds(raw: &str, max_seconds: u64) -> Result<u64, PprofError> {
    match raw.parse::<u64>() {
        Ok(n) if (1..=max_seconds).contains(&n) => Ok(n),
        _ => Err(PprofError::InvalidSeconds {
            value: shown(raw),
            max: max_seconds,
        }),
    }
}

fn first_value<'q>(query: Option<&'q str>, key: &str) -> Option<&'q str> {
    query?
        .split('&')
        .filter_map(|pair| match pair.split_once('=') {
            Some((k, v)) => Some((k, v)),
            None if !pair.is_empty() => Some((pair, "")),
            None => None,
        })
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(q: &str) -> Result<ProfileParams, PprofError> {
        ProfileParams::parse(Some(q), 60)
    }

    #[test]
    fn defaults_are_go_s_thirty_seconds_at_99_hz() {
        let p = ProfileParams::parse(None, 60).unwrap();
        assert_eq!((p.seconds(), p.frequency()), (30, 99));
        assert_eq!(parse("").unwrap(), p);
        assert_eq!(parse("debug=1&gc=0").unwrap(), p);
        // A lower maximum lowers the default with it.
        assert_eq!(ProfileParams::parse(None, 10).unwrap().seconds(), 10);
    }

    #[test]
    fn bounds_are_inclusive() {
        assert_eq!(parse("seconds=1").unwrap().seconds(), 1);
        assert_eq!(parse("seconds=60").unwrap().seconds(), 60);
        assert_eq!(parse("frequency=1").unwrap().frequency(), 1);
        assert_eq!(parse("frequency=1000").unwrap().frequency(), 1000);
        assert_eq!(
            ProfileParams::parse(Some("seconds=120"), 120)
                .unwrap()
                .seconds(),
            120
        );
    }

    #[test]
    fn out_of_range_or_non_integer_seconds_are_refused_with_the_range() {
        for bad in [
            "0",
            "61",
            "-1",
            "1.5",
            "abc",
            "",
            "5s",
            "99999999999999999999999",
            " 5",
        ] {
            let err = parse(&format!("seconds={bad}")).unwrap_err();
            assert!(
                matches!(err, PprofError::InvalidSeconds { max: 60, .. }),
                "{bad:?}"
            );
            assert_eq!(err.status(), 400);
            let msg = err.to_string();
            assert!(msg.contains("1 to 60"), "{msg}");
            assert!(!msg.contains('\n'), "{msg}");
        }
        assert!(parse("seconds").is_err());
    }

    #[test]
    fn out_of_range_or_non_integer_frequency_is_refused() {
        for bad in ["0", "1001", "-5", "99.5", "fast", ""] {
            let err = parse(&format!("frequency={bad}")).unwrap_err();
            assert!(
                matches!(err, PprofError::InvalidFrequency { .. }),
                "{bad:?}"
            );
            assert!(err.to_string().contains("1 to 1000"));
        }
    }

    #[test]
    fn the_first_of_repeated_keys_counts() {
        assert_eq!(parse("seconds=2&seconds=1000").unwrap().seconds(), 2);
        assert_eq!(
            parse("debug=1&frequency=7&frequency=0")
                .unwrap()
                .frequency(),
            7
        );
    }

    #[test]
    fn a_heap_profile_is_a_snapshot_unless_it_asks_for_seconds() {
        let now = HeapParams::parse(None, 60).unwrap();
        assert_eq!(now.delta_seconds, None);
        let delta = HeapParams::parse(Some("seconds=5&http_route=/leak"), 60).unwrap();
        assert_eq!(delta.delta_seconds, Some(5));
        assert!(!delta.labels.is_empty());
        assert!(HeapParams::parse(Some("seconds=61"), 60).is_err());
        assert!(HeapParams::parse(Some("route=/leak"), 60).is_err());
    }

    #[test]
    fn echoed_values_are_bounded_and_printable() {
        let long = "9".repeat(500);
        let msg = parse(&format!("seconds={long}")).unwrap_err().to_string();
        assert!(msg.len() < 200, "{msg}");
    }
}
