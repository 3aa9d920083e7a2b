//! Per-thread memos of the shared lookups every request makes: route template to [`RouteId`]
//! when it starts, `(route, method, status)` to its series when it ends.
//!
//! A hit costs no lock and no atomic operation, which keeps worker threads from contending on
//! the maps' lock words under load (`docs/performance.md` gives the saving, measured against
//! the plain lookups). Entries are keyed by a table id that is never reused, and neither routes
//! nor series are ever removed from their maps, so an entry is never stale. A thread keeps at
//! most [`SLOTS`] route names and series alive after their metrics are dropped (the series'
//! counters, a few hundred bytes each), never the metrics themselves.

use std::cell::RefCell;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::metrics::{Series, SeriesKey};
use crate::routes::RouteId;

const SLOTS: usize = 64;

/// A fresh id for a route table or series map; ids are never reused.
pub(crate) fn new_table_id() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

type RouteSlot = Option<(u64, Arc<str>, RouteId)>;
type SeriesSlot = Option<(u64, SeriesKey, Arc<Series>)>;

thread_local! {
    static ROUTES: RefCell<[RouteSlot; SLOTS]> = const { RefCell::new([const { None }; SLOTS]) };
    static SERIES: RefCell<[SeriesSlot; SLOTS]> = const { RefCell::new([const { None }; SLOTS]) };
}

fn slot_of(table: u64, hash: u64) -> usize {
    (hash ^ table.wrapping_mul(0x9e37_79b9_7f4a_7c15)) as usize % SLOTS
}

/// The cached id of `template` in table `table`, or `miss()`'s answer, remembered when it
/// returns the interned name too.
#[inline]
pub(crate) fn route(
    table: u64,
    template: &str,
    miss: impl FnOnce() -> (RouteId, Option<Arc<str>>),
) -> RouteId {
    let slot = slot_of(
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

/// Runs `observe` on the series `key` of table `table`, found in the cache or by `miss()`.
#[inline]
pub(crate) fn with_series(
    table: u64,
    key: SeriesKey,
    miss: impl FnOnce() -> Arc<Series>,
    observe: impl FnOnce(&Series),
) {
    let slot = slot_of(table, key.0.wrapping_mul(0xff51_afd7_ed55_8ccd) >> 32);
    let mut observe = Some(observe);
    let hit = SERIES
        .try_with(|cache| match &cache.borrow()[slot] {
            Some((t, k, series)) if *t == table && *k == key => {
                if let Some(observe) = observe.take() {
                    observe(series);
                }
                true
            }
            _ => false,
        })
        .unwrap_or(false);
    if !hit {
        let series = miss();
        if let Some(observe) = observe.take() {
            observe(&series);
        }
        let _ = SERIES.try_with(|cache| cache.borrow_mut()[slot] = Some((table, key, series)));
    }
}
