use std::io::Write;

use flate2::write::GzEncoder;
use flate2::Compression;
use prometheus::{Encoder, Registry, TextEncoder};

use crate::answer::Answer;
use crate::error::ObserveError;

/// `Content-Type` of the Prometheus text exposition format 0.0.4.
pub const TEXT_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Encodes a registry for a `/metrics` response, negotiating gzip.
///
/// Encoding walks every series: call it off the async worker threads
/// (`tokio::task::spawn_blocking`, `actix_web::web::block`), as the adapters' routes do.
///
/// ```
/// use observe_core::{HttpMetrics, MetricsEncoder};
///
/// let metrics = HttpMetrics::new("svc");
/// let encoder = MetricsEncoder::new(metrics.registry().clone());
/// let plain = encoder.encode(None)?;
/// assert_eq!(plain.content_encoding, None);
/// let gzipped = encoder.encode(Some("gzip, deflate, br"))?;
/// assert_eq!(gzipped.content_encoding, Some("gzip"));
/// # Ok::<(), observe_core::ObserveError>(())
/// ```
#[derive(Debug, Clone)]
pub struct MetricsEncoder {
    registry: Registry,
}

/// A ready `/metrics` response body and the headers that describe it.
#[derive(Debug)]
pub struct EncodedMetrics {
    /// The body, compressed when `content_encoding` says so.
    pub body: Vec<u8>,
    /// Always [`TEXT_CONTENT_TYPE`].
    pub content_type: &'static str,
    /// `Some("gzip")` when the body is gzipped.
    pub content_encoding: Option<&'static str>,
}

impl MetricsEncoder {
    /// An encoder for everything registered on `registry`.
    pub fn new(registry: Registry) -> Self {
        MetricsEncoder { registry }
    }

    /// Gathers and encodes the registry; gzips when `accept_encoding` (the request's
    /// `Accept-Encoding` header, if any) accepts gzip.
    pub fn encode(&self, accept_encoding: Option<&str>) -> Result<EncodedMetrics, ObserveError> {
        let families = self.registry.gather();
        let mut text = Vec::with_capacity(64 * 1024);
        TextEncoder::new()
            .encode(&families, &mut text)
            .map_err(ObserveError::Encode)?;
        if !accept_encoding.is_some_and(accepts_gzip) {
            return Ok(EncodedMetrics {
                body: text,
                content_type: TEXT_CONTENT_TYPE,
                content_encoding: None,
            });
        }
        let mut gz = GzEncoder::new(Vec::with_capacity(text.len() / 4), Compression::fast());
        gz.write_all(&text).map_err(ObserveError::Compress)?;
        Ok(EncodedMetrics {
            body: gz.finish().map_err(ObserveError::Compress)?,
            content_type: TEXT_CONTENT_TYPE,
            content_encoding: Some("gzip"),
        })
    }
}

impl MetricsEncoder {
    /// The whole `/metrics` answer for a request whose `Accept-Encoding` header is
    /// `accept_encoding`: the exposition (gzipped when accepted) with its `Content-Type`,
    /// `Content-Encoding` and `Vary`, or a `500` naming what failed. Blocks while it encodes:
    /// call it off the async workers.
    pub fn respond(&self, accept_encoding: Option<&str>) -> Answer {
        let answer = match self.encode(accept_encoding) {
            Ok(metrics) => {
                let answer = Answer::ok(metrics.content_type, metrics.body);
                match metrics.content_encoding {
                    Some(encoding) => answer.with_header("content-encoding", encoding),
                    None => answer,
                }
            }
            Err(error) => Answer::text(500, &error.to_string()),
        };
        answer.with_header("vary", "accept-encoding")
    }
}

/// Whether an `Accept-Encoding` value accepts gzip (RFC 9110 §12.5.3): `gzip`, `x-gzip` or
/// `*` with a non-zero weight, unless gzip itself is refused with `q=0`.
pub(crate) fn accepts_gzip(accept_encoding: &str) -> bool {
    let mut gzip = None;
    let mut star = None;
    for item in accept_encoding.split(',') {
        let mut parts = item.split(';');
        let coding = parts.next().unwrap_or("").trim();
        let q = parts
            .filter_map(|p| {
                let (k, v) = p.split_once('=')?;
                k.trim()
                    .eq_ignore_ascii_case("q")
                    .then(|| v.trim().parse::<f32>().ok())?
            })
            .next()
            .unwrap_or(1.0);
        if coding.eq_ignore_ascii_case("gzip") || coding.eq_ignore_ascii_case("x-gzip") {
            gzip = Some(q > 0.0);
        } else if coding == "*" {
            star = Some(q > 0.0);
        }
    }
    gzip.or(star).unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::accepts_gzip;

    #[test]
    fn gzip_negotiation_follows_weights() {
        for yes in [
            "gzip",
            "GZIP",
            "deflate, gzip;q=0.5",
            "x-gzip",
            "*",
            "br, *;q=0.1",
            " gzip ; q=1",
        ] {
            assert!(accepts_gzip(yes), "{yes:?}");
        }
        for no in [
            "",
            "identity",
            "br",
            "gzip;q=0",
            "*;q=0",
            "gzip;q=0, *",
            "gzip;q=bogus-is-not-zero-but",
            ";;;",
        ] {
            if no == "gzip;q=bogus-is-not-zero-but" {
                // An unparsable weight is ignored: the coding counts as accepted.
                assert!(accepts_gzip(no));
                continue;
            }
            assert!(!accepts_gzip(no), "{no:?}");
        }
    }
}
