//! Per-thread memos of the shared lookups every request makes: route template to [`RouteId`]
//! when it starts; its metrics' [`State`] and `(route, method, status)` to its series when it
//! ends.
//!
//! A hit costs no lock and no atomic operation, which keeps worker threads from contending on
//! the maps' lock words and on reference counts under load. Entries are keyed by a table id
//! that is never reused, and neither routes nor series are ever removed from their maps, so an
//! entry is never stale.
//!
//! A request in flight holds only its metrics' id, not a reference: it finds the [`State`]
//! here when it ends. A thread keeps the states it met alive (at most [`STATE_SLOTS`]); one
//! that is gone everywhere (every handle, and the registry holding its collector, dropped) has
//! nobody left to read what the request would add, and the request is not recorded.

use std::cell::RefCell;
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, RwLock, Weak};

use crate::metrics::{Series, SeriesKey, State};
use crate::routes::{read, write, RouteId};

const SLOTS: usize = 64;

/// A fresh id for a route table or series map; ids are never reused.
pub(crate) fn new_table_id() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// A fresh id for a [`State`]; ids are never reused, and consecutive so that a process's first
/// [`STATE_SLOTS`] states never collide in the per-thread cache.
pub(crate) fn new_state_id() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// States a thread remembers, and states it found gone (ids are never reused, so a gone state
/// stays gone: a layer whose metrics nobody can read any more pays no lock per request).
const STATE_SLOTS: usize = 8;

type RouteSlot = Option<(u64, Arc<str>, RouteId)>;
type SeriesSlot = Option<(u64, SeriesKey, Arc<Series>)>;
type StateSlot = Option<(u64, Option<Arc<State>>)>;

thread_local! {
    static ROUTES: RefCell<[RouteSlot; SLOTS]> = const { RefCell::new([const { None }; SLOTS]) };
    static SERIES: RefCell<[SeriesSlot; SLOTS]> = const { RefCell::new([const { None }; SLOTS]) };
    static STATES: RefCell<[StateSlot; STATE_SLOTS]> =
        const { RefCell::new([const { None }; STATE_SLOTS]) };
}

/// Every state alive, by id, for threads that have not met it yet.
static LIVE: LazyLock<RwLock<HashMap<u64, Weak<State>>>> = LazyLock::new(Default::default);

/// Makes `state` findable by [`with_state`]; [`forget_state`] undoes it when it drops.
pub(crate) fn register_state(state: &Arc<State>) {
    write(&LIVE).insert(state.id, Arc::downgrade(state));
}

/// `state` is being dropped.
pub(crate) fn forget_state(id: u64) {
    write(&LIVE).remove(&id);
}

/// Runs `f` on the state `id`; `None` if it is gone.
#[inline]
pub(crate) fn with_state<R>(id: u64, f: impl FnOnce(&State) -> R) -> Option<R> {
    let slot = id as usize % STATE_SLOTS;
    let mut f = Some(f);
    // `Some(None)`: known to be gone.
    let hit = STATES
        .try_with(|cache| match &cache.borrow()[slot] {
            Some((i, state)) if *i == id => {
                Some(state.as_deref().and_then(|s| f.take().map(|f| f(s))))
            }
            _ => None,
        })
        .ok()
        .flatten();
    match hit {
        Some(result) => result,
        None => with_state_uncached(id, slot, f?),
    }
}

#[cold]
fn with_state_uncached<R>(id: u64, slot: usize, f: impl FnOnce(&State) -> R) -> Option<R> {
    let state = read(&LIVE).get(&id).and_then(Weak::upgrade);
    let result = state.as_deref().map(f);
    let evicted = STATES.try_with(|cache| cache.borrow_mut()[slot].replace((id, state)));
    // Dropped outside the borrow: it may be a state's last reference.
    drop(evicted);
    result
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
