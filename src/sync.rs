//! Locking that survives a panic elsewhere: a poisoned mutex still holds
//! consistent data here (every critical section is a plain read or a single
//! insert/remove), so the gateway keeps going instead of cascading the panic.

use std::sync::{Mutex, MutexGuard};

pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(poisoned) => poisoned.into_inner(),
    }
}
