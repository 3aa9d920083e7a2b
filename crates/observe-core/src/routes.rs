use std::cell::RefCell;
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use crate::sync::{cache_slot, read, write, CACHE_SLOTS};

/// `http_route` value of a request that matched no route template (404 fallback, scanners).
pub const UNMATCHED_ROUTE: &str = "unmatched";
/// `http_route` value of templates beyond the configured `max_routes`.
pub const OVERFLOW_ROUTE: &str = "_overflow";

/// A route template interned by [`HttpMetrics::route`](crate::HttpMetrics::route).
///
/// Cheap to copy; resolving a template once per request is a single hash lookup and no
/// allocation once the template has been seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RouteId(pub(crate) u32);

impl RouteId {
    /// The request matched no route template.
    pub const UNMATCHED: RouteId = RouteId(0);
    /// The template was one too many for `max_routes`.
    pub const OVERFLOW: RouteId = RouteId(1);
    /// The template is excluded from recording.
    pub const EXCLUDED: RouteId = RouteId(u32::MAX);

    /// Whether requests on this route are left unrecorded.
    pub fn is_excluded(self) -> bool {
        self == RouteId::EXCLUDED
    }
}

type Map<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// Interns route templates into [`RouteId`]s, at most `max_routes` of them.
#[derive(Debug)]
pub(crate) struct RouteTable {
    /// Never reused, so per-thread caches can key on it.
    id: u64,
    ids: RwLock<Map<Arc<str>, RouteId>>,
    /// The excluded templates again, for a lock-free check of a raw path (see
    /// [`HttpMetrics::is_excluded_path`](crate::HttpMetrics::is_excluded_path)).
    excluded: Box<[Box<str>]>,
    names: RwLock<Vec<Arc<str>>>,
    max_routes: usize,
}

impl RouteTable {
    pub(crate) fn new(excluded: &[String], max_routes: usize) -> Self {
        let mut ids = Map::default();
        for route in excluded {
            ids.insert(Arc::from(route.as_str()), RouteId::EXCLUDED);
        }
        RouteTable {
            id: new_table_id(),
            ids: RwLock::new(ids),
            excluded: excluded.iter().map(|r| r.as_str().into()).collect(),
            names: RwLock::new(vec![Arc::from(UNMATCHED_ROUTE), Arc::from(OVERFLOW_ROUTE)]),
            max_routes,
        }
    }

    pub(crate) fn resolve(&self, template: Option<&str>) -> RouteId {
        let Some(template) = template else {
            return RouteId::UNMATCHED;
        };
        cached(self.id, template, || {
            // Bound first: a read guard alive in a match would deadlock `insert`.
            let known = read(&self.ids)
                .get_key_value(template)
                .map(|(name, id)| (*id, name.clone()));
            match known {
                Some((id, name)) => (id, Some(name)),
                // Overflowing templates are not remembered anywhere, so not cached either.
                None => match self.insert(template) {
                    RouteId::OVERFLOW => (RouteId::OVERFLOW, None),
                    id => (id, Some(read(&self.names)[id.0 as usize].clone())),
                },
            }
        })
    }

    /// Whether `path` equals an excluded template. A literal template is equal to the only
    /// path it matches, so adapters that learn the template after the request started (actix)
    /// can skip such requests before they touch any metric.
    #[inline]
    pub(crate) fn is_excluded_path(&self, path: &str) -> bool {
        self.excluded.iter().any(|e| **e == *path)
    }

    #[cold]
    fn insert(&self, template: &str) -> RouteId {
        let mut ids = write(&self.ids);
        if let Some(id) = ids.get(template) {
            return *id;
        }
        let mut names = write(&self.names);
        let interned = names.len() - 2;
        if interned >= self.max_routes {
            // Not remembered: the table stays bounded whatever a custom route function returns.
            return RouteId::OVERFLOW;
        }
        let name: Arc<str> = Arc::from(template);
        let id = RouteId(names.len() as u32);
        names.push(name.clone());
        ids.insert(name, id);
        id
    }

    /// The template of `id`; `None` for an id this table never gave (or `EXCLUDED`).
    pub(crate) fn name(&self, id: RouteId) -> Option<Arc<str>> {
        read(&self.names).get(id.0 as usize).cloned()
    }

    pub(crate) fn names(&self) -> Vec<Arc<str>> {
        read(&self.names).clone()
    }
}

type CachedRoute = Option<(u64, Arc<str>, RouteId)>;

thread_local! {
    /// Per-thread memo of template -> [`RouteId`], keyed by table id (never reused, and routes
    /// are never removed, so an entry is never stale). A hit takes no lock: under load, worker
    /// threads do not contend on the table's lock word (`docs/performance.md`).
    static ROUTES: RefCell<[CachedRoute; CACHE_SLOTS]> =
        const { RefCell::new([const { None }; CACHE_SLOTS]) };
}

/// A fresh id for a route table; ids are never reused.
fn new_table_id() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// The cached id of `template` in table `table`, or `miss()`'s answer, remembered when it
/// returns the interned name too.
#[inline]
fn cached(
    table: u64,
    template: &str,
    miss: impl FnOnce() -> (RouteId, Option<Arc<str>>),
) -> RouteId {
    let slot = cache_slot(
        table,
        foldhash::fast::FixedState::default().hash_one(template),
    );
    let hit = ROUTES.try_with(|cache| match &cache.borrow()[slot] {
        Some((t, name, id)) if *t == table && **name == *template => Some(*id),
        _ => None,
    });
    if let Ok(Some(id)) = hit {
        return id;
    }
    let (id, name) = miss();
    if let Some(name) = name {
        let _ = ROUTES.try_with(|cache| cache.borrow_mut()[slot] = Some((table, name, id)));
    }
    id
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_intern_once_and_missing_ones_are_unmatched() {
        let table = RouteTable::new(&["/metrics".into()], 10);
        let a = table.resolve(Some("/users/{id}"));
        assert_eq!(table.resolve(Some("/users/{id}")), a);
        assert_ne!(table.resolve(Some("/items/{id}")), a);
        assert_eq!(table.resolve(None), RouteId::UNMATCHED);
        assert!(table.resolve(Some("/metrics")).is_excluded());
        assert_eq!(table.names()[a.0 as usize].as_ref(), "/users/{id}");
    }

    #[test]
    fn raw_paths_are_excluded_only_when_equal_to_an_excluded_template() {
        let table = RouteTable::new(&["/metrics".into(), "/jobs/{id}".into()], 10);
        assert!(table.is_excluded_path("/metrics"));
        assert!(!table.is_excluded_path("/metrics/"));
        assert!(
            !table.is_excluded_path("/jobs/7"),
            "templated exclusions need the template"
        );
        assert!(!table.is_excluded_path("/users"));
        // Checking a path interns nothing.
        assert_eq!(table.names().len(), 2);
    }

    #[test]
    fn routes_past_the_limit_share_the_overflow_label() {
        let table = RouteTable::new(&[], 3);
        for i in 0..3 {
            assert!(table.resolve(Some(&format!("/r{i}"))).0 >= 2);
        }
        for i in 3..1000 {
            assert_eq!(table.resolve(Some(&format!("/r{i}"))), RouteId::OVERFLOW);
        }
        assert_eq!(table.names().len(), 5);
    }
}
