//! Trace context: which trace a request belongs to, so its latency bucket can carry the trace
//! id as an exemplar. Taken from the W3C `traceparent` header by default, or from a hook the
//! user gives [`ObserveBuilder::trace_context`](crate::ObserveBuilder::trace_context) (an
//! OpenTelemetry or `tracing` context).

use std::num::NonZeroU64;
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

/// Requests with at most this many header names are searched for `traceparent` by comparing
/// names, before any lookup: see [`sole_header`].
const FEW_HEADERS: usize = 8;

/// The value of header `name` when a request carries it exactly once: `None` without it, and
/// `None` with two or more (two `traceparent`s are no trace context, as W3C Trace Context's
/// test suite expects). Adapters call it from [`TraceHeaders::traceparent`] with their header
/// map's `count` of names, its `names` and a lookup of all values of `name`.
///
/// Every request without trace context pays for this: with a handful of header names,
/// comparing each (a standard name differs from a custom one at once) costs a third of hashing
/// the name for a lookup (`docs/performance.md`).
///
/// ```
/// use observe_core::adapter::sole_header;
///
/// let headers: &[(&str, &[u8])] = &[("host", b"a"), ("traceparent", b"00-1"), ("accept", b"*/*")];
/// let names = || headers.iter().map(|(name, _)| name);
/// let all = |wanted: &'static str| {
///     move || headers.iter().filter(move |(n, _)| *n == wanted).map(|(_, v)| *v)
/// };
/// assert_eq!(sole_header(3, names(), &"traceparent", all("traceparent")), Some(&b"00-1"[..]));
/// assert_eq!(sole_header(3, names(), &"tracestate", all("tracestate")), None);
/// ```
#[inline]
pub fn sole_header<'a, N, I>(
    count: usize,
    mut names: impl Iterator<Item = &'a N>,
    name: &N,
    values: impl FnOnce() -> I,
) -> Option<&'a [u8]>
where
    N: PartialEq + ?Sized + 'a,
    I: Iterator<Item = &'a [u8]>,
{
    if count <= FEW_HEADERS && !names.any(|n| n == name) {
        return None;
    }
    let mut values = values();
    let value = values.next()?;
    values.next().is_none().then_some(value)
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
    /// The trace id, big-endian, in two words (never both zero).
    hi: u64,
    lo: u64,
    /// The span id (never zero: so `Option<TraceContext>` takes no more room).
    span: NonZeroU64,
}

impl TraceContext {
    /// A context from its ids; `None` when either is all zeros (invalid in W3C trace context).
    pub fn new(trace_id: [u8; 16], span_id: [u8; 8]) -> Option<Self> {
        let (hi, lo) = (
            u128::from_be_bytes(trace_id) >> 64,
            u128::from_be_bytes(trace_id),
        );
        TraceContext::from_words([hi as u64, lo as u64, u64::from_be_bytes(span_id)])
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
        if value[2] != b'-' || value[35] != b'-' || value[52] != b'-' {
            return None;
        }
        let head = hex_byte(value[0], value[1])?;
        let flags = hex_byte(value[53], value[54])?;
        if head == 0xff || (head == 0 && value.len() != 55) || flags & 1 == 0 {
            return None;
        }
        // Six words of eight digits, decoded independently; one test of all of them at the end.
        let word = |at: usize| match value.get(at..at + 8) {
            Some(&[a, b, c, d, e, f, g, h]) => hex8([a, b, c, d, e, f, g, h]),
            _ => (0, 1),
        };
        let (a, bad_a) = word(3);
        let (b, bad_b) = word(11);
        let (c, bad_c) = word(19);
        let (d, bad_d) = word(27);
        let (e, bad_e) = word(36);
        let (f, bad_f) = word(44);
        if (bad_a | bad_b | bad_c | bad_d | bad_e | bad_f) != 0 {
            return None;
        }
        let hi = ((a as u64) << 32) | b as u64;
        let lo = ((c as u64) << 32) | d as u64;
        let span = ((e as u64) << 32) | f as u64;
        TraceContext::from_words([hi, lo, span])
    }

    /// The trace id, 32 lower-case hex digits.
    pub fn trace_id_hex(&self) -> String {
        format!("{:016x}{:016x}", self.hi, self.lo)
    }

    /// The span id, 16 lower-case hex digits.
    pub fn span_id_hex(&self) -> String {
        format!("{:016x}", self.span)
    }

    /// The ids as exemplar cells store them: trace id (two words, big-endian), span id.
    #[inline]
    pub(crate) fn words(&self) -> [u64; 3] {
        [self.hi, self.lo, self.span.get()]
    }

    /// The inverse of [`words`](Self::words); `None` for a zero trace or span id.
    pub(crate) fn from_words([hi, lo, span]: [u64; 3]) -> Option<Self> {
        let span = NonZeroU64::new(span)?;
        (hi | lo != 0).then_some(TraceContext { hi, lo, span })
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

/// Eight lower-case hex digits as a number, all at once in a word (SWAR): each byte is turned
/// into its value without a branch per digit. The second value is zero unless a byte is not
/// `0-9` or `a-f`.
#[inline]
fn hex8(digits: [u8; 8]) -> (u32, u64) {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    // Byte order: the first digit in the lowest byte.
    let v = u64::from_le_bytes(digits);
    // The high bit of each byte of `at_least(k)` / `at_most(k)` says whether that byte is
    // >= k / <= k; exact for bytes below 0x80 (the others are bad anyway), and no borrow
    // crosses bytes.
    let at_least = |k: u64| (v | HIGH).wrapping_sub(ONES * k);
    let at_most = |k: u64| (HIGH | (ONES * k)).wrapping_sub(v & !HIGH);
    let digit = at_least(b'0' as u64) & at_most(b'9' as u64);
    let letter = at_least(b'a' as u64) & at_most(b'f' as u64);
    let bad = (v & HIGH) | (!(digit | letter) & HIGH);
    // '0'-'9' are 0x30-0x39 and 'a'-'f' 0x61-0x66: the low nibble, plus 9 for letters (bit 6).
    let nibbles = (v & (ONES * 0x0f)) + 9 * ((v >> 6) & ONES);
    // Pack the eight nibbles, first digit most significant.
    let pairs = ((nibbles << 4) | (nibbles >> 8)) & 0x00ff_00ff_00ff_00ff;
    let quads = ((pairs << 8) | (pairs >> 16)) & 0x0000_ffff_0000_ffff;
    ((((quads << 16) | (quads >> 32)) & 0xffff_ffff) as u32, bad)
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
    fn hex_words_decode_every_digit() {
        assert_eq!(hex8(*b"01234567"), (0x0123_4567, 0));
        assert_eq!(hex8(*b"89abcdef"), (0x89ab_cdef, 0));
        for c in 0..=255u8 {
            let valid = c.is_ascii_digit() || (b'a'..=b'f').contains(&c);
            for at in [0, 3, 7] {
                let mut digits = *b"00000000";
                digits[at] = c;
                assert_eq!(hex8(digits).1 == 0, valid, "{c:#x} at {at}");
            }
        }
    }

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
