//! Property tests of what `/debug/pprof` reads from a request: the profile's query
//! parameters, the profile name, the `Authorization` header and the proxy headers. Whatever a
//! client sends, nothing panics, a profile's bounds hold, and every refusal is a one-line
//! answer of bounded length with the status `docs/pprof.md` gives.
use std::future::Future;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use observe_core::adapter::{BlockingWork, EndpointResponse, Executor};
use observe_pprof::{Access, AccessRequest, Pprof, ProfileParams, MAX_FREQUENCY};
use proptest::prelude::*;

const LOCAL: [u8; 4] = [127, 0, 0, 1];

/// An executor for requests that must not start a profile: it refuses to run one.
struct NoProfiles;

impl Executor for NoProfiles {
    fn spawn_blocking<W: BlockingWork>(
        _: W,
    ) -> impl Future<Output = Result<EndpointResponse, String>> + Send {
        panic!("this request must not start a profile");
        #[allow(unreachable_code)]
        std::future::pending()
    }

    fn sleep(_: Duration) -> impl Future<Output = ()> + Send {
        std::future::pending()
    }
}

/// The response to a request that must not start a profile.
fn respond(
    pprof: &Pprof,
    req: &AccessRequest<'_>,
    name: &str,
    query: Option<&str>,
) -> EndpointResponse {
    let mut response =
        std::pin::pin!(pprof.respond::<NoProfiles>(req, name, query, std::future::pending()));
    match response
        .as_mut()
        .poll(&mut Context::from_waker(Waker::noop()))
    {
        Poll::Ready(response) => response,
        Poll::Pending => panic!("a request that starts no profile is answered at once"),
    }
}

/// Query strings as clients write them: the two keys with numbers in and out of range, other
/// keys, repeated keys, and anything at all.
fn query() -> impl Strategy<Value = String> {
    let value = prop_oneof![
        (0u64..200).prop_map(|n| n.to_string()),
        (0u64..2000).prop_map(|n| n.to_string()),
        Just("-1".to_owned()),
        Just("1.5".to_owned()),
        Just(String::new()),
        Just("99999999999999999999999".to_owned()),
        ".{0,12}",
    ];
    let key = prop_oneof![
        Just("seconds".to_owned()),
        Just("frequency".to_owned()),
        Just("debug".to_owned()),
        "[a-z]{0,6}",
    ];
    let pair = prop_oneof![
        4 => (key, value).prop_map(|(k, v)| format!("{k}={v}")),
        1 => "[^&]{0,10}",
    ];
    prop_oneof![
        4 => proptest::collection::vec(pair, 0..5).prop_map(|pairs| pairs.join("&")),
        1 => ".{0,60}",
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn any_query_gives_bounded_parameters_or_a_one_line_400(
        query in query(),
        max_seconds in 0u64..300,
    ) {
        match ProfileParams::parse(Some(&query), max_seconds) {
            Ok(p) => {
                prop_assert!((1..=max_seconds.max(1)).contains(&p.seconds()), "{:?}", p);
                prop_assert!((1..=MAX_FREQUENCY).contains(&p.frequency()), "{:?}", p);
            }
            Err(e) => {
                prop_assert_eq!(e.status(), 400);
                let message = e.to_string();
                prop_assert!(!message.contains('\n'), "{:?}", message);
                prop_assert!(message.chars().count() < 200, "{:?}", message);
            }
        }
    }

    /// `seconds=S&frequency=F` is accepted exactly when both are in range, and read exactly.
    #[test]
    fn well_formed_parameters_are_read_exactly(seconds in 0u64..100, frequency in 0u32..1500) {
        let parsed = ProfileParams::parse(Some(&format!("seconds={seconds}&frequency={frequency}")), 60);
        let in_range = (1..=60).contains(&seconds) && (1..=MAX_FREQUENCY).contains(&frequency);
        prop_assert_eq!(parsed.is_ok(), in_range);
        if let Ok(p) = parsed {
            prop_assert_eq!((p.seconds(), p.frequency()), (seconds, frequency));
        }
    }

    /// Profile names nobody serves, with any query: a 404 of one bounded, printable line
    /// (the name is echoed, cut to 40 characters, control characters dropped).
    #[test]
    fn unknown_profile_names_are_a_bounded_one_line_404(name in ".{0,200}", query in query()) {
        prop_assume!(!["", "profile", "flamegraph", "heap", "cmdline"].contains(&name.as_str()));
        let req = AccessRequest::new("/debug/pprof/x", Some(LOCAL.into()));
        let answer = respond(&Pprof::new(), &req, &name, Some(&query));
        prop_assert_eq!(answer.status, 404);
        let body = answer.body_text();
        prop_assert_eq!(body.trim_end_matches('\n').lines().count(), 1, "{:?}", body);
        prop_assert!(!body.trim_end_matches('\n').chars().any(char::is_control), "{:?}", body);
        prop_assert!(body.chars().count() < 300, "{:?}", body);
    }
}

/// Authorization header values: the right token with the schemes and spaces the rule accepts,
/// near misses, and anything at all.
fn authorization(token: String) -> impl Strategy<Value = String> {
    let t = token.clone();
    prop_oneof![
        (
            proptest::sample::select(vec![
                "Bearer ", "bearer ", "BEARER ", "bEaReR ", "Basic ", "Bearer", "Bearer\t", ""
            ]),
            "[ \t]{0,2}",
            "[ \t]{0,2}",
        )
            .prop_map(move |(scheme, before, after)| format!("{scheme}{before}{t}{after}")),
        (0..token.len()).prop_map(move |cut| format!("Bearer {}", &token[..cut])),
        ".{0,60}",
    ]
}

/// Whether the bearer rule should let `header` in: the scheme `Bearer` in any case and a
/// space, then the token, surrounding whitespace ignored.
fn bearer_model(header: &str, token: &str) -> bool {
    let header = header.trim_start();
    header
        .get(..7)
        .is_some_and(|scheme| scheme.eq_ignore_ascii_case("bearer "))
        && header[7..].trim() == token
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn the_bearer_rule_admits_exactly_the_token(
        (token, header) in "[!-~]{1,24}".prop_flat_map(|t| (Just(t.clone()), authorization(t))),
        remote in proptest::bool::ANY,
    ) {
        let pprof = Pprof::builder().access(Access::bearer_token(token.clone()).unwrap()).build();
        let peer = if remote { [192, 0, 2, 1] } else { LOCAL };
        let req = AccessRequest::new("/debug/pprof/", Some(peer.into()))
            .with_header("Authorization", &header);
        let answer = respond(&pprof, &req, "", None);
        if bearer_model(&header, &token) {
            prop_assert_eq!(answer.status, 200, "{:?}", header);
        } else {
            prop_assert_eq!(answer.status, 401, "{:?}", header);
            prop_assert_eq!(answer.header("www-authenticate"), Some("Bearer realm=\"pprof\""));
            // The same words whatever was sent: nothing about the token is echoed.
            prop_assert_eq!(
                answer.body_text(),
                "unauthorized: /debug/pprof needs an Authorization: Bearer <token> header\n"
            );
        }
    }

    /// The loopback rule with any headers, in any case, as raw bytes: 403 exactly when a proxy
    /// header is present, whatever else the request carries.
    #[test]
    fn the_loopback_rule_refuses_exactly_what_came_through_a_proxy(
        headers in proptest::collection::vec(
            (
                prop_oneof![
                    Just("X-Forwarded-For".to_owned()),
                    Just("x-real-ip".to_owned()),
                    Just("FORWARDED".to_owned()),
                    Just("X-Forwarded-Host".to_owned()),
                    "[A-Za-z-]{1,16}",
                ],
                proptest::collection::vec(any::<u8>(), 0..20),
            ),
            0..6,
        ),
    ) {
        let req = AccessRequest::new("/debug/pprof/", Some(LOCAL.into()))
            .with_headers(headers.iter().map(|(n, v)| (n.as_str(), v.as_slice())));
        // A value that is not text still says the request came through a proxy: nginx
        // appends the client to whatever `X-Forwarded-For` the client sent, bytes included.
        let proxied = headers.iter().any(|(name, _)| {
            ["forwarded", "x-forwarded-for", "x-real-ip"].contains(&name.to_ascii_lowercase().as_str())
        });
        let answer = respond(&Pprof::new(), &req, "", None);
        prop_assert_eq!(answer.status, if proxied { 403 } else { 200 });
    }
}

/// Found by the property above: a label name of characters `{:?}` escapes made a 230-character
/// message.
#[test]
fn an_unknown_label_of_escaped_characters_still_gives_a_short_message() {
    let query =
        "\u{2ee5e}\u{18cd6}\u{2ebe1}¡A¡\0A\0\u{3347a}\u{3347a}a¡\u{1fff}\u{b}Aaa\u{b}\u{e000}a";
    let message = ProfileParams::parse(Some(query), 0)
        .unwrap_err()
        .to_string();
    assert!(message.chars().count() < 200, "{message}");
}
