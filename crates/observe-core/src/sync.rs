//! The few shared-state helpers every other file uses: locks that never poison, and where a
//! key sits in a per-thread cache.

use std::sync::RwLock;

/// Locks never poison observe's state: every critical section leaves it consistent.
#[inline]
pub(crate) fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(|e| e.into_inner())
}

#[inline]
pub(crate) fn write<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(|e| e.into_inner())
}

/// Slots in each per-thread cache of routes and of series.
pub(crate) const CACHE_SLOTS: usize = 64;

/// The slot of `hash` in table `table`'s part of a per-thread cache. Inlined into both
/// caches' lookups (per request): it must not become a call across codegen units.
#[inline]
pub(crate) fn cache_slot(table: u64, hash: u64) -> usize {
    (hash ^ table.wrapping_mul(0x9e37_79b9_7f4a_7c15)) as usize % CACHE_SLOTS
}
