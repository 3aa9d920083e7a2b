//! Per-thread memos of the shared lookups every request makes: its metrics' [`State`] from
//! their id and the route template to its [`RouteId`] when it starts; the state and
//! `(route, method, status)` to its series when it ends.
//!
//! A hit costs no lock and no atomic read-modify-write, which keeps worker threads from
//! contending on the maps' lock words and on reference counts under load
//! (`docs/performance.md` gives what each saves, measured against the plain design). Entries
//! are keyed by ids that are never reused, and neither routes nor series are ever removed from
//! their maps, so an entry is never stale.
//!
//! A request in flight holds its metrics' id, not a reference: it finds the [`State`] here.
//! A thread keeps the states it met (at most [`STATE_SLOTS`]) until they close (every handle
//! and the registry dropped, see [`Owner`](crate::metrics::Owner)): closing bumps [`CLOSED`],
//! and each thread drops its closed states at its next request, or when it exits. A request
//! whose state closed ends unrecorded: nobody could read it. Route names and series (their
//! counters) a thread cached stay until their slots are reused, at most [`SLOTS`] of each.

use std::cell::RefCell;
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, RwLock, Weak};

use crate::metrics::{Series, SeriesKey, State};
use crate::routes::{read, write, RouteId};

const SLOTS: usize = 64;

/// A fresh id for a route table; ids are never reused.
pub(crate) fn new_table_id() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// A fresh id for a [`State`] (and its series map); ids are never reused, and consecutive so
/// that a process's first [`STATE_SLOTS`] states never collide in the per-thread cache.
pub(crate) fn new_state_id() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// States a thread remembers, and states it found closed (ids are never reused, so a closed
/// state stays closed: a layer whose metrics nobody can read pays no lock per request).
const STATE_SLOTS: usize = 8;

type RouteSlot = Option<(u64, Arc<str>, RouteId)>;
type SeriesSlot = Option<(u64, SeriesKey, Arc<Series>)>;
/// `(id, None)`: known to be closed.
type StateSlot = Option<(u64, Option<Arc<State>>)>;

/// A thread's states, and the [`CLOSED`] count it last saw.
struct States {
    closed_seen: u64,
    slots: [StateSlot; STATE_SLOTS],
}

thread_local! {
    static ROUTES: RefCell<[RouteSlot; SLOTS]> = const { RefCell::new([const { None }; SLOTS]) };
    static SERIES: RefCell<[SeriesSlot; SLOTS]> = const { RefCell::new([const { None }; SLOTS]) };
    static STATES: RefCell<States> = const {
        RefCell::new(States { closed_seen: 0, slots: [const { None }; STATE_SLOTS] })
    };
}

/// Every open state, by id, for threads that have not met it yet.
static LIVE: LazyLock<RwLock<HashMap<u64, Weak<State>>>> = LazyLock::new(Default::default);

/// How many states have closed so far: a thread that sees it change drops its closed states.
/// Written once per close, read by every request (a cache line that stays shared).
static CLOSED: AtomicU64 = AtomicU64::new(0);

/// Makes `state` findable by [`with_state`].
pub(crate) fn open_state(state: &Arc<State>) {
    write(&LIVE).insert(state.id, Arc::downgrade(state));
}

/// Nobody can read state `id` any more: no thread finds it again, and threads holding it let
/// go at their next request.
pub(crate) fn close_state(id: u64) {
    write(&LIVE).remove(&id);
    CLOSED.fetch_add(1, Ordering::Release);
}

/// Runs `f` on the open state `id`; `None` if it is closed.
#[inline]
pub(crate) fn with_state<R>(id: u64, f: impl FnOnce(&State) -> R) -> Option<R> {
    let slot = id as usize % STATE_SLOTS;
    let closed = CLOSED.load(Ordering::Acquire);
    let mut f = Some(f);
    let hit = STATES
        .try_with(|cache| {
            let cache = cache.try_borrow().ok()?;
            if cache.closed_seen != closed {
                return None;
            }
            match &cache.slots[slot] {
                Some((i, state)) if *i == id => {
                    Some(state.as_deref().and_then(|s| f.take().map(|f| f(s))))
                }
                _ => None,
            }
        })
        .ok()
        .flatten();
    match hit {
        Some(result) => result,
        None => with_state_uncached(id, slot, closed, f?),
    }
}

#[cold]
fn with_state_uncached<R>(
    id: u64,
    slot: usize,
    closed: u64,
    f: impl FnOnce(&State) -> R,
) -> Option<R> {
    let state = read(&LIVE).get(&id).and_then(Weak::upgrade);
    let result = state.as_deref().map(f);
    let mut dropped: [StateSlot; STATE_SLOTS] = [const { None }; STATE_SLOTS];
    let _ = STATES.try_with(|cache| {
        let Ok(mut cache) = cache.try_borrow_mut() else {
            return;
        };
        if cache.closed_seen != closed {
            // Some state closed since this thread last looked: let go of the closed ones.
            for (kept, dropped) in cache.slots.iter_mut().zip(&mut dropped) {
                if let Some((_, Some(s))) = kept {
                    if s.closed.load(Ordering::Acquire) {
                        *dropped = kept.take();
                    }
                }
            }
            cache.closed_seen = closed;
        }
        let evicted = cache.slots[slot].replace((id, state));
        if evicted.is_some() {
            dropped[slot] = evicted;
        }
    });
    // Dropped outside the borrow: they may be states' last references.
    drop(dropped);
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
