//! `http_route` from actix's matched resource pattern, without allocating per request.
//!
//! actix only offers the full pattern as `HttpRequest::match_pattern()`, which builds a new
//! `String` on every call. What a request keeps after routing is its match info: the path,
//! how much of it the matched resource definitions consumed, and each captured segment with
//! its name. actix-router leaks every segment name once per `ResourceDef`, so a name's address
//! identifies the definition that captured it. The path with each captured value replaced by
//! its name's address is therefore the same for every request routed to one resource
//! (`/users/7` and `/users/8` both become `/users/` + `&"id"`): its hash keys a per-worker
//! cache of [`RouteId`]s. A miss asks `match_pattern()` once and remembers the answer.

use std::cell::{OnceCell, RefCell};
use std::collections::HashMap;
use std::hash::{BuildHasher, BuildHasherDefault, Hasher};

use actix_web::dev::{Path, ResourceMap, ServiceRequest, Url};
use actix_web::http::Uri;
use actix_web::HttpRequest;
use observe_core::adapter::{MetricsId, RouteId};
use observe_core::HttpMetrics;

/// At most this many shapes are remembered per worker. Only fully routed requests are looked
/// up, whose shapes are as many as the app's resources; the cap only guards against a shape
/// per request if that ever stops holding (then the rest are resolved uncached).
const MAX_CACHED_SHAPES: usize = 4096;

/// Shapes are already seeded hashes: the map uses them as they are instead of hashing again.
type Shapes = HashMap<u64, RouteId, BuildHasherDefault<ShapeHasher>>;

/// Passes a shape (a `u64` hash) through unchanged.
#[derive(Default)]
struct ShapeHasher(u64);

impl Hasher for ShapeHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only `u64` keys reach this hasher; fold anything else in rather than drop it.
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }

    fn write_u64(&mut self, shape: u64) {
        self.0 = shape;
    }
}

/// One worker's route resolution: the metrics, its cache of route shapes and, for requests
/// that come back as an `Err`, the app's resource map.
pub(crate) struct RouteCache {
    pub(crate) metrics: HttpMetrics,
    /// What requests start with: no reference count per request.
    pub(crate) id: MetricsId,
    seed: foldhash::fast::RandomState,
    shapes: RefCell<Shapes>,
    resource_map: OnceCell<ResourceMap>,
}

impl RouteCache {
    pub(crate) fn new(metrics: HttpMetrics) -> Self {
        RouteCache {
            id: metrics.id(),
            metrics,
            seed: foldhash::fast::RandomState::default(),
            shapes: RefCell::new(Shapes::default()),
            resource_map: OnceCell::new(),
        }
    }

    /// Keeps a copy of the app's resource map (once per worker) for [`Self::resolve_path`].
    #[inline]
    pub(crate) fn remember_resource_map(&self, req: &ServiceRequest) {
        if self.resource_map.get().is_none() {
            let _ = self.resource_map.set(req.resource_map().clone());
        }
    }

    /// The route of a request actix has routed (the response phase).
    #[inline]
    pub(crate) fn resolve(&self, req: &HttpRequest) -> RouteId {
        let info = req.match_info();
        // A matched resource consumes the whole path. Anything left is either a service
        // mounted on a prefix (actix-files' `Files::new("/static", ..)`: `match_pattern()` names
        // it) or no resource matched: the default service answered.
        if !info.unprocessed().is_empty() {
            return self.resolve_partial(req, info);
        }
        let Some(shape) = self.shape(info) else {
            return self.metrics.route(req.match_pattern().as_deref());
        };
        if let Some(route) = self.shapes.borrow().get(&shape) {
            return *route;
        }
        self.learn(shape, req)
    }

    /// A request whose path was not consumed to its end. When nothing consumed any of it (a
    /// 404 at the app's root: scanners, typos), it matched nothing, with no allocation;
    /// otherwise actix's resource map tells a prefix service (`/static`) from a scope's
    /// default service (`None`). Allocates the pattern: static files read a disk anyway.
    #[inline]
    fn resolve_partial(&self, req: &HttpRequest, info: &Path<Url>) -> RouteId {
        if info.unprocessed().len() == info.as_str().len() {
            return RouteId::UNMATCHED;
        }
        self.prefix_route(req)
    }

    #[cold]
    fn prefix_route(&self, req: &HttpRequest) -> RouteId {
        self.metrics.route(req.match_pattern().as_deref())
    }

    #[cold]
    fn learn(&self, shape: u64, req: &HttpRequest) -> RouteId {
        let route = self.metrics.route(req.match_pattern().as_deref());
        let mut shapes = self.shapes.borrow_mut();
        if shapes.len() < MAX_CACHED_SHAPES {
            shapes.insert(shape, route);
        }
        route
    }

    /// The route of a request that came back as an `Err`, or never came back (panic, dropped
    /// connection), so without its routing: the resource pattern actix's resource map gives
    /// for the path (what `match_pattern()` falls back to). Allocates; off the hot path.
    #[cold]
    pub(crate) fn resolve_path(&self, path: &str) -> RouteId {
        let pattern = self
            .resource_map
            .get()
            .and_then(|map| map.match_pattern(path));
        self.metrics.route(pattern.as_deref())
    }

    /// Hash of the path with every captured segment replaced by its name's address; `None`
    /// when a segment value is not a piece of the path (set by hand with `Path::add_static`).
    fn shape(&self, info: &Path<Url>) -> Option<u64> {
        let path = info.as_str();
        let base = path.as_ptr() as usize;
        let mut hasher = self.seed.build_hasher();
        let mut done = 0;
        for (name, value) in info.iter() {
            let start = (value.as_ptr() as usize).wrapping_sub(base);
            let end = start.checked_add(value.len())?;
            let literal = path.get(done..start)?;
            if end > path.len() {
                return None;
            }
            // Lengths keep the encoding unambiguous: literal text never passes for an address.
            hasher.write_usize(literal.len());
            hasher.write(literal.as_bytes());
            hasher.write_usize(name.as_ptr() as usize);
            done = end;
        }
        let rest = path.get(done..)?;
        hasher.write_usize(rest.len());
        hasher.write(rest.as_bytes());
        Some(hasher.finish())
    }
}

/// Paths up to this long are copied into the response future instead of sharing the `Uri`.
const INLINE_PATH: usize = 64;

/// The request path, kept for a request that never comes back routed (an inner `Err`, a
/// panic, a dropped connection) so that its route can still be named.
///
/// A copy of a short path is a few bytes moved; cloning the `Uri` instead costs two atomic
/// reference-count updates per request, which on a virtual machine weigh more than the copy.
pub(crate) enum RequestPath {
    Inline(InlinePath),
    Shared(Uri),
}

/// A short path copied whole; aligned so that the copy is read back in aligned words.
#[repr(C, align(8))]
pub(crate) struct InlinePath {
    bytes: [u8; INLINE_PATH],
    len: usize,
}

impl RequestPath {
    #[inline]
    pub(crate) fn new(uri: &Uri) -> Self {
        let path = uri.path();
        if path.len() <= INLINE_PATH {
            let mut inline = InlinePath {
                bytes: [0; INLINE_PATH],
                len: path.len(),
            };
            inline.bytes[..path.len()].copy_from_slice(path.as_bytes());
            RequestPath::Inline(inline)
        } else {
            RequestPath::Shared(uri.clone())
        }
    }

    pub(crate) fn as_str(&self) -> &str {
        match self {
            // A whole `&str` was copied: always valid UTF-8.
            RequestPath::Inline(InlinePath { bytes, len }) => {
                std::str::from_utf8(bytes.get(..*len).unwrap_or_default()).unwrap_or("")
            }
            RequestPath::Shared(uri) => uri.path(),
        }
    }
}
