//! How a request's route template reaches the layer: the user's route function
//! ([`RouteFn`]), or axum's `MatchedPath`, through `nest_service` too ([`NestedTemplate`]).

use std::sync::Arc;

use http::request::Parts;
use http::Extensions;

/// A route function: the template of a request, borrowed from it, or `None` for unmatched.
#[derive(Clone)]
pub(crate) struct RouteFn(pub(crate) Arc<RouteFnDyn>);

type RouteFnDyn = dyn for<'a> Fn(&'a Parts) -> Option<&'a str> + Send + Sync;

impl std::fmt::Debug for RouteFn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RouteFn")
    }
}

/// Where a request's template comes from.
pub(crate) enum Lookup<'a> {
    /// The template axum matched (`None`: nothing matched, and nothing will name it).
    Template(Option<&'a str>),
    /// An outer layer records this request; it was told the template, if any.
    #[cfg_attr(not(feature = "axum"), allow(dead_code))]
    ObservedOutside,
    /// No template yet: a 404, or a nested service that may name it later.
    #[cfg_attr(not(feature = "axum"), allow(dead_code))]
    Unknown,
}

/// Where an inner `ObserveLayer` (on a router mounted by `nest_service`) leaves the full
/// template for the outer one, which saw none.
#[cfg(feature = "axum")]
#[derive(Clone, Debug, Default)]
pub(crate) struct NestedTemplate(Arc<std::sync::OnceLock<axum::extract::MatchedPath>>);

/// Without axum no request carries a template: everything is `unmatched` unless a route
/// function is given.
#[cfg(not(feature = "axum"))]
#[derive(Clone, Debug, Default)]
pub(crate) struct NestedTemplate;

#[cfg(feature = "axum")]
impl NestedTemplate {
    /// A slot, left in the request for a nested layer to fill in.
    pub(crate) fn wait(extensions: &mut Extensions) -> Self {
        let slot = NestedTemplate::default();
        extensions.insert(slot.clone());
        slot
    }

    /// The template a nested layer left, if any.
    pub(crate) fn template(&self) -> Option<&str> {
        self.0.get().map(axum::extract::MatchedPath::as_str)
    }
}

#[cfg(not(feature = "axum"))]
impl NestedTemplate {
    /// Nothing can name the template later without axum.
    #[allow(dead_code)]
    pub(crate) fn wait(_: &mut Extensions) -> Self {
        NestedTemplate
    }

    /// Always `None` without axum.
    pub(crate) fn template(&self) -> Option<&str> {
        None
    }
}

/// The template of a request, from what axum left in its extensions.
#[cfg(feature = "axum")]
pub(crate) fn lookup(extensions: &Extensions) -> Lookup<'_> {
    use axum::extract::MatchedPath;

    let path = extensions.get::<MatchedPath>();
    if let Some(slot) = extensions.get::<NestedTemplate>() {
        if let Some(path) = path {
            let _ = slot.0.set(path.clone());
        }
        return Lookup::ObservedOutside;
    }
    match path {
        Some(path) => Lookup::Template(Some(path.as_str())),
        None => Lookup::Unknown,
    }
}

/// Without axum there is no template in the request.
#[cfg(not(feature = "axum"))]
pub(crate) fn lookup(_: &Extensions) -> Lookup<'static> {
    Lookup::Template(None)
}
