use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use crate::error::PprofError;
use crate::response;
use observe_core::adapter::EndpointResponse;

/// What an [`Access`] rule sees of a `/debug/pprof` request. Adapters fill it in.
///
/// ```
/// use observe_pprof::AccessRequest;
///
/// let req = AccessRequest::new("/debug/pprof/profile", Some([127, 0, 0, 1].into()))
///     .with_header("Authorization", "Bearer s3cret");
/// assert_eq!(req.header("authorization"), Some("Bearer s3cret"));
/// ```
#[derive(Debug, Clone)]
pub struct AccessRequest<'a> {
    path: &'a str,
    peer: Option<IpAddr>,
    headers: Vec<(&'a str, &'a str)>,
    /// Headers whose value is not text: no rule reads their value, but their presence
    /// counts (a proxy appends to whatever `X-Forwarded-For` its client sent, bytes included).
    opaque: Vec<&'a str>,
}

impl<'a> AccessRequest<'a> {
    /// A request for `path` from `peer` (`None` when the server does not pass the peer
    /// address on, e.g. axum without `into_make_service_with_connect_info`).
    pub fn new(path: &'a str, peer: Option<IpAddr>) -> Self {
        AccessRequest {
            path,
            peer,
            headers: Vec::new(),
            opaque: Vec::new(),
        }
    }

    /// Adds a request header (name in any case).
    pub fn with_header(mut self, name: &'a str, value: &'a str) -> Self {
        self.headers.push((name, value));
        self
    }

    /// Adds every header. [`header`](Self::header) gives the values that are text; a header
    /// whose value is not still counts as present for [`has_header`](Self::has_header).
    /// Adapters pass their header map: `.with_headers(headers.iter().map(|(n, v)| (n.as_str(),
    /// v.as_bytes())))`.
    pub fn with_headers(mut self, headers: impl IntoIterator<Item = (&'a str, &'a [u8])>) -> Self {
        for (name, value) in headers {
            match std::str::from_utf8(value) {
                Ok(value) => self.headers.push((name, value)),
                Err(_) => self.opaque.push(name),
            }
        }
        self
    }

    /// The request path.
    pub fn path(&self) -> &str {
        self.path
    }

    /// The client's address, if the server knows it.
    pub fn peer(&self) -> Option<IpAddr> {
        self.peer
    }

    /// Whether the request carries header `name` (case-insensitive), whatever its value.
    pub fn has_header(&self, name: &str) -> bool {
        self.header(name).is_some() || self.opaque.iter().any(|k| k.eq_ignore_ascii_case(name))
    }

    /// The first text value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&'a str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| *v)
    }
}

type Predicate = dyn Fn(&AccessRequest<'_>) -> bool + Send + Sync;

/// Who may use the `/debug/pprof` endpoints. Checked before any of them runs.
///
/// The default, [`Access::loopback_only`], serves only clients on the same host, so enabling
/// the `pprof` feature does not expose profiles to the network by accident.
///
/// ```
/// use observe_pprof::Access;
///
/// let token = Access::bearer_token("s3cret")?; // Authorization: Bearer s3cret
/// let office = Access::predicate(|req| req.header("x-internal") == Some("yes"));
/// # Ok::<(), observe_pprof::PprofError>(())
/// ```
#[derive(Clone)]
pub struct Access(Rule);

#[derive(Clone)]
enum Rule {
    Loopback,
    Bearer(Arc<str>),
    Predicate(Arc<Predicate>),
    Anyone,
}

impl fmt::Debug for Access {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self.0 {
            Rule::Loopback => "Access::loopback_only",
            Rule::Bearer(_) => "Access::bearer_token(..)",
            Rule::Predicate(_) => "Access::predicate(..)",
            Rule::Anyone => "Access::anyone",
        })
    }
}

impl Default for Access {
    fn default() -> Self {
        Access::loopback_only()
    }
}

impl Access {
    /// Only clients whose address is loopback (`127.0.0.0/8`, `::1`), and that did not come
    /// through a proxy: behind a reverse proxy on the same host every client looks local, so a
    /// request carrying `Forwarded`, `X-Forwarded-For` or `X-Real-IP` is refused (403) with a
    /// message that says to use a token or the loopback admin listener there.
    pub fn loopback_only() -> Self {
        Access(Rule::Loopback)
    }

    /// Only requests with `Authorization: Bearer <token>`. Whitespace around `token` is not
    /// part of it (a token read from a file keeps no line end), as around the header's value.
    pub fn bearer_token(token: impl Into<String>) -> Result<Self, PprofError> {
        let token = token.into();
        let token = token.trim();
        if token.is_empty() {
            return Err(PprofError::EmptyToken);
        }
        Ok(Access(Rule::Bearer(token.into())))
    }

    /// Only requests for which `allow` returns `true`.
    pub fn predicate<F>(allow: F) -> Self
    where
        F: Fn(&AccessRequest<'_>) -> bool + Send + Sync + 'static,
    {
        Access(Rule::Predicate(Arc::new(allow)))
    }

    /// Everyone who can reach the route. Say so only when something in front of the
    /// service (a separate port, a network policy, an authenticating proxy) already decides.
    pub fn anyone() -> Self {
        Access(Rule::Anyone)
    }

    /// `Ok` to serve the request, or the 401/403 answer to send instead.
    pub(crate) fn check(&self, req: &AccessRequest<'_>) -> Result<(), EndpointResponse> {
        match &self.0 {
            Rule::Anyone => Ok(()),
            Rule::Loopback => match req.peer() {
                // A local proxy (nginx, a sidecar, a tunnel) makes every client look local;
                // the headers it adds say so.
                Some(ip) if is_loopback(ip) && proxied(req).is_some() => Err(response::error(
                    403,
                    &format!(
                        "forbidden: this request came through a proxy ({} header), so its loopback \
                         address says nothing about the client; behind a proxy use \
                         Access::bearer_token, or serve /debug/pprof on a loopback admin listener \
                         (serve_pprof_on_loopback); see docs/pprof.md",
                        proxied(req).unwrap_or_default()
                    ),
                )),
                Some(ip) if is_loopback(ip) => Ok(()),
                Some(_) => Err(response::error(
                    403,
                    "forbidden: /debug/pprof only answers loopback clients (Access::loopback_only); see docs/pprof.md",
                )),
                None => Err(response::error(
                    403,
                    "forbidden: /debug/pprof only answers loopback clients, but this server does not pass the client address on; \
                     serve the app with into_make_service_with_connect_info::<SocketAddr>() or choose another Access rule (docs/pprof.md)",
                )),
            },
            Rule::Bearer(token) => {
                let given = req
                    .header("authorization")
                    .and_then(|v| v.trim_start().split_once(' '))
                    // The scheme's case does not matter (RFC 9110).
                    .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
                    .map(|(_, given)| given.trim());
                match given {
                    Some(given) if constant_time_eq(given.as_bytes(), token.as_bytes()) => Ok(()),
                    _ => {
                        let mut response = response::error(
                            401,
                            "unauthorized: /debug/pprof needs an Authorization: Bearer <token> header",
                        );
                        response
                            .headers
                            .push(("www-authenticate", "Bearer realm=\"pprof\"".to_owned()));
                        Err(response)
                    }
                }
            }
            Rule::Predicate(allow) => {
                if allow(req) {
                    Ok(())
                } else {
                    Err(response::error(
                        403,
                        "forbidden: this request does not pass the server's /debug/pprof access rule",
                    ))
                }
            }
        }
    }
}

/// The headers reverse proxies add to say whom they forward for (RFC 7239 and the de facto
/// ones); a request that carries one came through a proxy.
const PROXY_HEADERS: [&str; 3] = ["forwarded", "x-forwarded-for", "x-real-ip"];

/// The first proxy header `req` carries.
fn proxied(req: &AccessRequest<'_>) -> Option<&'static str> {
    PROXY_HEADERS.into_iter().find(|name| req.has_header(name))
}

fn is_loopback(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_loopback(),
        IpAddr::V6(v6) => {
            v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
    }
}

/// Compares without stopping at the first difference, so response times do not reveal how
/// much of a guessed token was right.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(access: &Access, req: &AccessRequest<'_>) -> u16 {
        access.check(req).map_or_else(|r| r.status, |()| 200)
    }

    #[test]
    fn loopback_only_refuses_what_came_through_a_proxy() {
        let a = Access::default();
        for header in ["Forwarded", "X-Forwarded-For", "x-real-ip"] {
            let req = AccessRequest::new("/", Some([127, 0, 0, 1].into()))
                .with_header(header, "for=203.0.113.7");
            let answer = a.check(&req).expect_err(header);
            assert_eq!(answer.status, 403);
            let text = answer.body_text();
            assert!(text.contains(&header.to_ascii_lowercase()), "{text}");
            assert!(text.contains("Access::bearer_token"), "{text}");
            assert!(text.contains("serve_pprof_on_loopback"), "{text}");
        }
        // A value that is not text (nginx appends the client to what the client sent).
        let raw: &[u8] = b"\xff, 203.0.113.7";
        let req = AccessRequest::new("/", Some([127, 0, 0, 1].into()))
            .with_headers([("x-forwarded-for", raw)]);
        assert_eq!(a.check(&req).expect_err("not text").status, 403);
        // Other rules decide for themselves: a token works behind a proxy.
        let token = Access::bearer_token("t").unwrap();
        let req = AccessRequest::new("/", Some([127, 0, 0, 1].into()))
            .with_header("X-Forwarded-For", "203.0.113.7")
            .with_header("Authorization", "Bearer t");
        assert_eq!(status(&token, &req), 200);
    }

    #[test]
    fn loopback_only_needs_a_loopback_peer() {
        let a = Access::default();
        assert_eq!(
            status(&a, &AccessRequest::new("/", Some([127, 0, 0, 1].into()))),
            200
        );
        assert_eq!(
            status(&a, &AccessRequest::new("/", Some("::1".parse().unwrap()))),
            200
        );
        assert_eq!(
            status(
                &a,
                &AccessRequest::new("/", Some("::ffff:127.0.0.1".parse().unwrap()))
            ),
            200
        );
        assert_eq!(
            status(&a, &AccessRequest::new("/", Some([10, 0, 0, 1].into()))),
            403
        );
        assert_eq!(status(&a, &AccessRequest::new("/", None)), 403);
    }

    #[test]
    fn bearer_token_must_match_exactly() {
        let a = Access::bearer_token("s3cret").unwrap();
        let with = |v| AccessRequest::new("/", None).with_header("Authorization", v);
        assert_eq!(status(&a, &with("Bearer s3cret")), 200);
        assert_eq!(status(&a, &with("Bearer s3cre")), 401);
        assert_eq!(status(&a, &with("Basic s3cret")), 401);
        assert_eq!(
            status(&a, &AccessRequest::new("/", Some([127, 0, 0, 1].into()))),
            401
        );
        let denied = a.check(&with("Bearer nope")).unwrap_err();
        assert!(denied.headers.iter().any(|(k, _)| *k == "www-authenticate"));
        assert!(matches!(
            Access::bearer_token(" "),
            Err(PprofError::EmptyToken)
        ));
        // Any case of the scheme; the configured token without its file's line end.
        let from_file = Access::bearer_token("s3cret\n").unwrap();
        for header in [
            "Bearer s3cret",
            "BEARER s3cret",
            "bearer  s3cret ",
            "Bearer s3cret\t",
        ] {
            assert_eq!(status(&from_file, &with(header)), 200, "{header:?}");
        }
        for header in ["Bearers3cret", "Bearer", "Bearer s3cret x", "Basic s3cret"] {
            assert_eq!(status(&from_file, &with(header)), 401, "{header:?}");
        }
    }

    #[test]
    fn predicates_see_path_peer_and_headers() {
        let a = Access::predicate(|r| r.path().ends_with('/') && r.header("x-ok").is_some());
        assert_eq!(
            status(
                &a,
                &AccessRequest::new("/debug/pprof/", None).with_header("X-Ok", "1")
            ),
            200
        );
        assert_eq!(
            status(
                &a,
                &AccessRequest::new("/debug/pprof/heap", None).with_header("X-Ok", "1")
            ),
            403
        );
        assert_eq!(
            status(&Access::anyone(), &AccessRequest::new("/", None)),
            200
        );
    }
}
