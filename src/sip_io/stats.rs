//! Counters the SIP driver copies out of the user agent, read by `/metrics`.

use crate::sip::policy::{DropReason, PolicyCounters};
use crate::sip::Retransmissions;
use crate::sync::lock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// Counters of the listener policy, copied from the user agent by the driver after
/// each step; read by `/metrics`.
#[derive(Debug, Default)]
pub struct SipStats {
    /// Indexed like [`DropReason::ALL`].
    dropped: [AtomicU64; 5],
    bans: AtomicU64,
    banned_now: AtomicU64,
    /// QA registrar: REGISTERs that bound or refreshed a phone, bindings removed
    /// (unregistered or expired), refused authentications.
    pub(super) qa_registered: AtomicU64,
    pub(super) qa_removed: AtomicU64,
    pub(super) qa_auth_failed: AtomicU64,
    pub(super) qa_bound: AtomicU64,
    /// The user agent's retransmission counts, copied when they change.
    retransmits: Mutex<Retransmissions>,
}

impl SipStats {
    pub(super) fn store(&self, c: &PolicyCounters) {
        for (slot, v) in self.dropped.iter().zip(c.dropped) {
            slot.store(v, Ordering::Relaxed);
        }
        self.bans.store(c.bans, Ordering::Relaxed);
        self.banned_now.store(c.banned_now, Ordering::Relaxed);
    }

    /// Copies the user agent's retransmission counts, when they changed since `last`
    /// (which is updated).
    pub(super) fn store_retransmits(&self, now: Retransmissions, last: &mut Retransmissions) {
        if now != *last {
            *last = now;
            *lock(&self.retransmits) = now;
        }
    }

    /// Retransmissions sent and received so far, by method and kind.
    pub fn retransmissions(&self) -> Retransmissions {
        *lock(&self.retransmits)
    }

    /// Dropped (or 403-refused) messages so far, by reason label.
    pub fn dropped(&self) -> Vec<(&'static str, u64)> {
        DropReason::ALL
            .iter()
            .zip(&self.dropped)
            .map(|(r, v)| (r.as_str(), v.load(Ordering::Relaxed)))
            .collect()
    }

    /// Sources banned so far.
    pub fn bans(&self) -> u64 {
        self.bans.load(Ordering::Relaxed)
    }

    /// Sources under a ban now.
    pub fn banned_now(&self) -> u64 {
        self.banned_now.load(Ordering::Relaxed)
    }

    /// QA phones registered now.
    pub fn qa_registered_now(&self) -> u64 {
        self.qa_bound.load(Ordering::Relaxed)
    }

    /// QA registrar outcomes so far: (registered, removed, auth_failed).
    pub fn registrations(&self) -> [(&'static str, u64); 3] {
        [
            ("registered", self.qa_registered.load(Ordering::Relaxed)),
            ("removed", self.qa_removed.load(Ordering::Relaxed)),
            ("auth_failed", self.qa_auth_failed.load(Ordering::Relaxed)),
        ]
    }
}
