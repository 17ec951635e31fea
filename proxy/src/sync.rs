//! Locking that survives a poisoned mutex: every lock in the proxy guards state that stays
//! consistent between statements (queues, pools, caches), so a panic elsewhere while it was
//! held leaves nothing half-done.

use std::sync::{Mutex, MutexGuard};

/// Locks `m`, going on with its data if a panic poisoned it.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
