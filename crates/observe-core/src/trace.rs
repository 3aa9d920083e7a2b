//! Trace context: which trace a request belongs to, so its latency bucket can carry the trace
//! id as an exemplar. Taken from the W3C `traceparent` header by default, or from a hook the
//! user gives [`ObserveBuilder::trace_context`](crate::ObserveBuilder::trace_context) (an
//! OpenTelemetry or `tracing` context).

use std::fmt::Write;
use std::sync::Arc;

/// The request headers, as an adapter shows them to trace-context extraction.
pub trait TraceHeaders {
    /// The value of header `name` (lower case), if present once or more (the first).
    fn get(&self, name: &str) -> Option<&[u8]>;

    /// The `traceparent` header: adapters answer it without parsing the name each time.
    fn traceparent(&self) -> Option<&[u8]> {
        self.get("traceparent")
    }
}

/// No headers: what [`MetricsId::start`](crate::adapter::MetricsId::start) looks at.
pub(crate) struct NoHeaders;

impl TraceHeaders for NoHeaders {
    #[inline]
    fn get(&self, _: &str) -> Option<&[u8]> {
        None
    }
}

/// A sampled trace: the ids an exemplar carries.
///
/// ```
/// use observe_core::TraceContext;
///
/// let t = TraceContext::from_traceparent(b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").unwrap();
/// assert_eq!(t.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
/// assert_eq!(t.span_id_hex(), "00f067aa0ba902b7");
/// // Not sampled (flags 00): no exemplar.
/// assert!(TraceContext::from_traceparent(b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00").is_none());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceContext {
    trace_id: [u8; 16],
    span_id: [u8; 8],
}

impl TraceContext {
    /// A context from its ids; `None` when either is all zeros (invalid in W3C trace context).
    pub fn new(trace_id: [u8; 16], span_id: [u8; 8]) -> Option<Self> {
        (trace_id != [0; 16] && span_id != [0; 8]).then_some(TraceContext { trace_id, span_id })
    }

    /// Parses a W3C `traceparent` header value (`version-traceid-parentid-flags`, lower-case
    /// hex). `None` unless it is well-formed and its `sampled` flag is set: an unsampled trace
    /// is not kept by the tracing backend, so an exemplar would point nowhere. Versions other
    /// than `00` are read as the specification says (the first four fields, more may follow
    /// after a `-`); `ff` is invalid.
    #[inline]
    pub fn from_traceparent(value: &[u8]) -> Option<Self> {
        if value.len() < 55 || (value.len() > 55 && value[55] != b'-') {
            return None;
        }
        let version = hex_byte(value[0], value[1])?;
        if version == 0xff || (version == 0 && value.len() != 55) {
            return None;
        }
        if value[2] != b'-' || value[35] != b'-' || value[52] != b'-' {
            return None;
        }
        let flags = hex_byte(value[53], value[54])?;
        if flags & 1 == 0 {
            return None;
        }
        let mut trace_id = [0u8; 16];
        for (i, byte) in trace_id.iter_mut().enumerate() {
            *byte = hex_byte(value[3 + 2 * i], value[4 + 2 * i])?;
        }
        let mut span_id = [0u8; 8];
        for (i, byte) in span_id.iter_mut().enumerate() {
            *byte = hex_byte(value[36 + 2 * i], value[37 + 2 * i])?;
        }
        TraceContext::new(trace_id, span_id)
    }

    /// The trace id, 32 lower-case hex digits.
    pub fn trace_id_hex(&self) -> String {
        hex(&self.trace_id)
    }

    /// The span id, 16 lower-case hex digits.
    pub fn span_id_hex(&self) -> String {
        hex(&self.span_id)
    }

    /// The trace id as a number (big-endian), as exemplar cells store it.
    pub(crate) fn words(&self) -> [u64; 3] {
        let (hi, lo) = self.trace_id.split_at(8);
        [
            u64::from_be_bytes(hi.try_into().unwrap_or_default()),
            u64::from_be_bytes(lo.try_into().unwrap_or_default()),
            u64::from_be_bytes(self.span_id),
        ]
    }

    /// The inverse of [`words`](Self::words).
    pub(crate) fn from_words([hi, lo, span]: [u64; 3]) -> Option<Self> {
        let mut trace_id = [0u8; 16];
        trace_id[..8].copy_from_slice(&hi.to_be_bytes());
        trace_id[8..].copy_from_slice(&lo.to_be_bytes());
        TraceContext::new(trace_id, span.to_be_bytes())
    }
}

/// Two lower-case hex digits (W3C trace context allows no upper case).
#[inline]
fn hex_byte(hi: u8, lo: u8) -> Option<u8> {
    #[inline]
    fn digit(c: u8) -> Option<u8> {
        match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            _ => None,
        }
    }
    Some((digit(hi)? << 4) | digit(lo)?)
}

fn hex(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(out, "{b:02x}");
    }
    out
}

/// A user's way to find a request's trace (see
/// [`ObserveBuilder::trace_context`](crate::ObserveBuilder::trace_context)).
#[derive(Clone)]
pub(crate) struct TraceHook(pub(crate) Arc<TraceFn>);

/// The hook's function.
pub(crate) type TraceFn = dyn Fn(&dyn TraceHeaders) -> Option<TraceContext> + Send + Sync;

impl std::fmt::Debug for TraceHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TraceHook")
    }
}

/// The request's trace: the hook's answer if one is set, else its `traceparent`.
#[inline]
pub(crate) fn extract(
    hook: Option<&TraceHook>,
    headers: &impl TraceHeaders,
) -> Option<TraceContext> {
    match hook {
        None => TraceContext::from_traceparent(headers.traceparent()?),
        Some(hook) => (hook.0)(headers),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &[u8] = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn well_formed_sampled_traceparents_parse_and_round_trip() {
        let t = TraceContext::from_traceparent(GOOD).unwrap();
        assert_eq!(TraceContext::from_words(t.words()), Some(t));
        // A later version may append fields; flags other than `sampled` are ignored.
        let v1 = b"01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-03-whatever";
        assert_eq!(TraceContext::from_traceparent(v1), Some(t));
    }

    #[test]
    fn malformed_oversized_and_unsampled_traceparents_give_nothing() {
        let mut bad: Vec<Vec<u8>> = vec![
            b"".to_vec(),
            b"00".to_vec(),
            GOOD[..54].to_vec(),
            [GOOD, b"-00"].concat(),   // version 00 has exactly four fields
            [GOOD, b"x"].concat(),     // more must follow a dash
            vec![b'0'; 4096],          // oversized
            GOOD.to_ascii_uppercase(), // upper-case hex
            b"ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".to_vec(),
            b"00-00000000000000000000000000000000-00f067aa0ba902b7-01".to_vec(),
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01".to_vec(),
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00".to_vec(),
            b"00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".to_vec(),
            b"00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01".to_vec(),
        ];
        // Every single-byte corruption of a good value that changes what it says.
        for i in 0..GOOD.len() {
            let mut v = GOOD.to_vec();
            v[i] = b'z';
            bad.push(v);
        }
        for value in bad {
            assert_eq!(
                TraceContext::from_traceparent(&value),
                None,
                "{}",
                String::from_utf8_lossy(&value)
            );
        }
    }
}
