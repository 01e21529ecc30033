//! The one poisoned-mutex policy: a lock whose holder panicked is taken anyway. The guarded
//! maps (single-flight slots, verdict caches) stay consistent across a panic, since every
//! change to them is one insert or remove.

use std::sync::{Mutex, MutexGuard};

pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
