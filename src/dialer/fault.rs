//! Fault injection for the tests: the next answered call suffers a fault, to
//! show that every way a call task can end early still hangs up, frees the
//! slot and settles the call (tests/it/dialer_durable.rs).
//!
//! Compiled only with the `test-hooks` feature, which only the test build
//! enables (Cargo.toml's dev-dependency on this package): a release binary
//! contains none of it.

use std::sync::atomic::{AtomicU8, Ordering};

use super::Dialer;
use crate::call::AttemptOutcome;
use crate::store::StoreError;

/// A fault to inject into the next answered call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Fault {
    None = 0,
    /// The task returns an error from inside the call loop.
    Error = 1,
    /// The task panics.
    Panic = 2,
    /// The task stops polling the call and drops it (a cancelled future).
    Drop = 3,
}

/// The fault armed for the next answered call, if any.
#[derive(Debug, Default)]
pub(super) struct FaultSlot(AtomicU8);

impl FaultSlot {
    fn take(&self) -> Fault {
        match self.0.swap(Fault::None as u8, Ordering::SeqCst) {
            1 => Fault::Error,
            2 => Fault::Panic,
            3 => Fault::Drop,
            _ => Fault::None,
        }
    }
}

impl Dialer {
    /// The next answered call suffers `fault`.
    pub fn inject_fault(&self, fault: Fault) {
        self.fault.0.store(fault as u8, Ordering::SeqCst);
    }

    /// Called when a call is answered: fires the armed fault, if any. `Some`
    /// is what the round returns instead of going on.
    pub(super) fn fire_injected_fault(&self) -> Option<Result<AttemptOutcome, StoreError>> {
        match self.fault.take() {
            Fault::None => None,
            Fault::Error => Some(Err(StoreError::Corrupt("injected fault".into()))),
            Fault::Panic => panic!("injected fault"),
            Fault::Drop => Some(Ok(AttemptOutcome::failed("injected drop", false))),
        }
    }
}
