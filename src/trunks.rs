//! The trunk board: one shared read model of every trunk's state that the
//! dialer, the call engine, the API and the metrics read. Each field has one
//! writer: registration and keepalive status come from the SIP driver (the
//! `TrunkStatusMap` it fills), call slots and counters from [`TrunkSlot`]s,
//! the circuit breaker from the dialer's attempt outcomes.
//!
//! Capacity is a semaphore per trunk (`max_concurrent_calls`) plus one over
//! all trunks (`dialer.max_concurrent_calls`); a slot is a permit held by a
//! guard whose `Drop` gives it back, so no exit path of a call can keep one.
//! Depends on `config`, `sip` (status type) and `sync`; no I/O.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

use crate::config::TrunkSettings;
use crate::dns::{DnsStatus, DnsStatusMap};
use crate::sip::TrunkStatus;
use crate::sync::lock;

/// What a circuit breaker says about a trunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    /// Calls go through.
    Closed,
    /// Marked down after consecutive failures: tried only when no other
    /// trunk can take the call.
    Open,
    /// Down, but the cool-down passed without a keepalive to tell: the next
    /// call may try it once.
    HalfOpen,
}

impl BreakerState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Closed => "closed",
            Self::Open => "open",
            Self::HalfOpen => "half_open",
        }
    }
}

/// Consecutive-failure circuit breaker (pure: time and probe counts are
/// passed in).
#[derive(Debug, Clone, Default)]
pub struct Breaker {
    failures: u32,
    /// When it opened, and how many good probes the trunk had then: it
    /// closes once a later probe succeeds.
    opened: Option<(Instant, u64)>,
}

impl Breaker {
    /// A call attempt failed in a way that says the trunk is in trouble
    /// (5xx, 408, no response, transport error).
    pub fn failure(&mut self, now: Instant, threshold: u32, probes_ok: u64) {
        self.failures = self.failures.saturating_add(1);
        if self.failures >= threshold {
            // (Re)open: a failed trial call starts a new cool-down.
            self.opened = Some((now, probes_ok));
        }
    }

    /// The trunk gave a final answer of its own (2xx, busy, decline, 404…).
    pub fn success(&mut self) {
        self.failures = 0;
        self.opened = None;
    }

    pub fn state(&mut self, now: Instant, cooldown: Duration, probes_ok: u64) -> BreakerState {
        match self.opened {
            None => BreakerState::Closed,
            Some((_, probes_then)) if probes_ok > probes_then => {
                // OPTIONS/REGISTER answered since it opened: back up.
                self.success();
                BreakerState::Closed
            }
            Some((since, _)) if now.saturating_duration_since(since) >= cooldown => {
                BreakerState::HalfOpen
            }
            Some(_) => BreakerState::Open,
        }
    }

    pub fn consecutive_failures(&self) -> u32 {
        self.failures
    }
}

/// One trunk's live state.
#[derive(Debug)]
pub struct TrunkState {
    pub settings: TrunkSettings,
    permits: Arc<Semaphore>,
    active: AtomicU32,
    total: AtomicU64,
    answered: AtomicU64,
    breaker: Mutex<Breaker>,
}

/// A snapshot of one trunk for the API and metrics.
#[derive(Debug, Clone)]
pub struct TrunkSnapshot {
    pub name: String,
    pub register: bool,
    pub status: TrunkStatus,
    pub breaker: BreakerState,
    pub consecutive_failures: u32,
    pub active_calls: u32,
    pub max_concurrent_calls: u32,
    pub calls_total: u64,
    pub calls_answered: u64,
    /// The proxy's latest RFC 3263 resolution (targets in order, or the DNS error);
    /// `None` before the first.
    pub dns: Option<DnsStatus>,
}

impl TrunkSnapshot {
    /// Whether a call should be offered to this trunk now: registered when
    /// it must register, not known unreachable, breaker not open.
    pub fn usable(&self) -> bool {
        (!self.register || self.status.registered)
            && self.status.reachable != Some(false)
            && self.breaker != BreakerState::Open
    }

    pub fn answer_rate(&self) -> f64 {
        if self.calls_total == 0 {
            0.0
        } else {
            self.calls_answered as f64 / self.calls_total as f64
        }
    }
}

/// Every trunk's state, in configuration order.
#[derive(Debug)]
pub struct TrunkBoard {
    trunks: Vec<Arc<TrunkState>>,
    signalling: crate::sip_io::TrunkStatusMap,
    overall: Arc<Semaphore>,
    overall_capacity: u32,
    freed: Arc<Notify>,
    /// Each trunk's latest resolution, written by the call engine.
    dns: DnsStatusMap,
}

/// A call slot on one trunk; dropping it frees the slot.
#[derive(Debug)]
pub struct TrunkSlot {
    trunk: Arc<TrunkState>,
    freed: Arc<Notify>,
    _permit: OwnedSemaphorePermit,
}

impl TrunkSlot {
    pub fn trunk(&self) -> &TrunkSettings {
        &self.trunk.settings
    }

    /// A call is placed on this slot (`calls_total`; the call engine says so when it
    /// places one). Not counted when the slot is taken: a round may give it back unused
    /// (on PostgreSQL, when every channel of the trunk is held by some instance), and
    /// that is no call.
    pub fn dialing(&self) {
        self.trunk.total.fetch_add(1, Ordering::Relaxed);
    }

    /// The call was answered (for the answer rate).
    pub fn answered(&self) {
        self.trunk.answered.fetch_add(1, Ordering::Relaxed);
    }
}

impl Drop for TrunkSlot {
    fn drop(&mut self) {
        self.trunk.active.fetch_sub(1, Ordering::Relaxed);
        // The permit goes back when this struct's fields drop, right after;
        // the dialer re-checks capacity when it wakes, so the order is fine.
        // notify_one keeps the wake-up if the dialer is not waiting yet.
        self.freed.notify_one();
    }
}

/// A slot in the instance-wide call limit; dropping it frees the slot (the
/// dialer waits for it on the semaphore itself, so no wake-up is needed).
#[derive(Debug)]
pub struct CallSlot {
    _permit: OwnedSemaphorePermit,
}

impl TrunkBoard {
    /// `max_calls` = 0 means the sum of the trunks' limits.
    pub fn new(
        trunks: &[TrunkSettings],
        signalling: crate::sip_io::TrunkStatusMap,
        max_calls: u32,
    ) -> TrunkBoard {
        let sum: u32 = trunks
            .iter()
            .map(|t| t.max_concurrent_calls)
            .fold(0, u32::saturating_add);
        let overall_capacity = if max_calls == 0 { sum } else { max_calls }.max(1);
        TrunkBoard {
            trunks: trunks
                .iter()
                .map(|t| {
                    Arc::new(TrunkState {
                        settings: t.clone(),
                        permits: Arc::new(Semaphore::new(t.max_concurrent_calls as usize)),
                        active: AtomicU32::new(0),
                        total: AtomicU64::new(0),
                        answered: AtomicU64::new(0),
                        breaker: Mutex::new(Breaker::default()),
                    })
                })
                .collect(),
            signalling,
            overall: Arc::new(Semaphore::new(overall_capacity as usize)),
            overall_capacity,
            freed: Arc::new(Notify::new()),
            dns: DnsStatusMap::default(),
        }
    }

    /// Shows the resolutions the call engine keeps in `dns` (see
    /// [`crate::call::CallEngine::dns_status_map`]).
    pub fn with_dns(mut self, dns: DnsStatusMap) -> TrunkBoard {
        self.dns = dns;
        self
    }

    pub fn settings(&self) -> impl Iterator<Item = &TrunkSettings> {
        self.trunks.iter().map(|t| &t.settings)
    }

    fn get(&self, name: &str) -> Option<&Arc<TrunkState>> {
        self.trunks.iter().find(|t| t.settings.name == name)
    }

    fn signalling_status(&self, name: &str) -> TrunkStatus {
        lock(&self.signalling)
            .get(name)
            .cloned()
            .unwrap_or_default()
    }

    fn snapshot_of(&self, t: &TrunkState, now: Instant) -> TrunkSnapshot {
        let status = self.signalling_status(&t.settings.name);
        let mut breaker = lock(&t.breaker);
        let state = breaker.state(now, t.settings.breaker_cooldown, status.probes_ok);
        TrunkSnapshot {
            name: t.settings.name.clone(),
            register: t.settings.register,
            breaker: state,
            consecutive_failures: breaker.consecutive_failures(),
            status,
            active_calls: t.active.load(Ordering::Relaxed),
            max_concurrent_calls: t.settings.max_concurrent_calls,
            calls_total: t.total.load(Ordering::Relaxed),
            calls_answered: t.answered.load(Ordering::Relaxed),
            dns: lock(&self.dns).get(&t.settings.name).cloned(),
        }
    }

    /// Every trunk as it is now.
    pub fn snapshot(&self) -> Vec<TrunkSnapshot> {
        let now = Instant::now();
        self.trunks
            .iter()
            .map(|t| self.snapshot_of(t, now))
            .collect()
    }

    /// Whether some trunk can take a call now (for `/readyz`).
    pub fn any_usable_with_capacity(&self) -> bool {
        self.snapshot()
            .iter()
            .any(|t| t.usable() && t.active_calls < t.max_concurrent_calls)
    }

    /// Trunks that carry `number`, in the order to try them: usable ones
    /// first, each group by priority. A down trunk stays at the end: a
    /// carrier may still take the call, and a failed probe may be stale.
    pub fn routes(&self, number: &str) -> Vec<String> {
        let now = Instant::now();
        let mut routes: Vec<(bool, u32, usize, String)> = self
            .trunks
            .iter()
            .enumerate()
            .filter(|(_, t)| t.settings.routes(number))
            .map(|(i, t)| {
                let snap = self.snapshot_of(t, now);
                (!snap.usable(), t.settings.priority, i, snap.name)
            })
            .collect();
        routes.sort();
        routes.into_iter().map(|(_, _, _, name)| name).collect()
    }

    /// The E.164 prefixes a call may have to be claimable now: those of
    /// trunks with a free slot. `None`: a trunk that carries every number
    /// has one (no filter). `Some(empty)`: no trunk has a free slot.
    pub fn claimable_prefixes(&self) -> Option<Vec<String>> {
        let mut prefixes = Vec::new();
        for t in &self.trunks {
            if t.permits.available_permits() == 0 {
                continue;
            }
            if t.settings.prefixes.is_empty() {
                return None;
            }
            prefixes.extend(t.settings.prefixes.iter().cloned());
        }
        Some(prefixes)
    }

    /// Takes a slot on `trunk` if one is free.
    pub fn try_slot(&self, trunk: &str) -> Option<TrunkSlot> {
        let t = self.get(trunk)?;
        let permit = t.permits.clone().try_acquire_owned().ok()?;
        t.active.fetch_add(1, Ordering::Relaxed);
        Some(TrunkSlot {
            trunk: t.clone(),
            freed: self.freed.clone(),
            _permit: permit,
        })
    }

    /// Waits for a slot in the instance-wide limit (`None` only if the
    /// limit was closed, which nothing does).
    pub async fn call_slot(&self) -> Option<CallSlot> {
        let permit = self.overall.clone().acquire_owned().await.ok()?;
        Some(CallSlot { _permit: permit })
    }

    pub fn overall_capacity(&self) -> u32 {
        self.overall_capacity
    }

    /// Calls in progress on this instance.
    pub fn active_calls(&self) -> u32 {
        self.overall_capacity - self.overall.available_permits() as u32
    }

    /// Resolves when some slot is given back.
    pub fn freed(&self) -> &Notify {
        &self.freed
    }

    /// Feeds the breaker with how an attempt on `trunk` ended: `Some(true)`
    /// for a trunk failure, `Some(false)` for an answer of the trunk's own,
    /// `None` for neither (e.g. we hung up before any response).
    pub fn record_outcome(&self, trunk: &str, trunk_failed: Option<bool>) {
        let Some(t) = self.get(trunk) else { return };
        let mut breaker = lock(&t.breaker);
        match trunk_failed {
            Some(true) => {
                let probes = self.signalling_status(trunk).probes_ok;
                let was_open = breaker.opened.is_some();
                breaker.failure(Instant::now(), t.settings.breaker_failures, probes);
                if !was_open && breaker.opened.is_some() {
                    tracing::warn!(
                        trunk,
                        failures = breaker.consecutive_failures(),
                        "trunk marked down"
                    );
                }
            }
            Some(false) => {
                if breaker.opened.is_some() {
                    tracing::info!(trunk, "trunk back up after a good answer");
                }
                breaker.success();
            }
            None => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn breaker_opens_after_threshold_and_closes_on_a_good_probe() {
        let t0 = Instant::now();
        let cool = Duration::from_secs(30);
        let mut b = Breaker::default();
        b.failure(t0, 2, 5);
        assert_eq!(b.state(t0, cool, 5), BreakerState::Closed);
        b.failure(t0, 2, 5);
        assert_eq!(b.state(t0, cool, 5), BreakerState::Open);
        // Still open while no probe succeeded and the cool-down runs.
        assert_eq!(
            b.state(t0 + Duration::from_secs(10), cool, 5),
            BreakerState::Open
        );
        // A good OPTIONS answer closes it.
        assert_eq!(b.state(t0, cool, 6), BreakerState::Closed);
        assert_eq!(b.consecutive_failures(), 0);
    }

    #[test]
    fn breaker_half_opens_after_cooldown_and_reopens_on_a_failed_trial() {
        let t0 = Instant::now();
        let cool = Duration::from_secs(30);
        let mut b = Breaker::default();
        b.failure(t0, 1, 0);
        let later = t0 + cool;
        assert_eq!(b.state(later, cool, 0), BreakerState::HalfOpen);
        b.failure(later, 1, 0);
        assert_eq!(b.state(later, cool, 0), BreakerState::Open);
        b.success();
        assert_eq!(b.state(later, cool, 0), BreakerState::Closed);
    }

    #[test]
    fn a_success_between_failures_resets_the_count() {
        let t0 = Instant::now();
        let mut b = Breaker::default();
        b.failure(t0, 2, 0);
        b.success();
        b.failure(t0, 2, 0);
        assert_eq!(b.state(t0, Duration::from_secs(1), 0), BreakerState::Closed);
    }

    fn trunk(name: &str, prefixes: &[&str], priority: u32, max: u32) -> TrunkSettings {
        let s = crate::config::Settings::from_toml(&format!(
            r#"
[[trunks]]
name = "{name}"
proxy = "sip:127.0.0.1:5060"
from = "sip:+31508200000@otpdial.test"
prefixes = [{}]
priority = {priority}
max_concurrent_calls = {max}
breaker_failures = 1
"#,
            prefixes
                .iter()
                .map(|p| format!("{p:?}"))
                .collect::<Vec<_>>()
                .join(", ")
        ))
        .expect("trunk settings");
        s.trunks[0].clone()
    }

    #[test]
    fn a_slot_given_back_unused_is_no_call() {
        let board = TrunkBoard::new(&[trunk("a", &[], 10, 2)], Default::default(), 0);
        drop(board.try_slot("a").expect("slot"));
        assert_eq!(board.snapshot()[0].calls_total, 0, "taken and given back");
        let slot = board.try_slot("a").expect("slot");
        slot.dialing();
        slot.answered();
        drop(slot);
        let t = &board.snapshot()[0];
        assert_eq!((t.calls_total, t.calls_answered), (1, 1));
    }

    #[test]
    fn slots_are_bounded_and_come_back_on_drop() {
        let board = TrunkBoard::new(&[trunk("a", &[], 10, 2)], Default::default(), 0);
        let one = board.try_slot("a").expect("first slot");
        let two = board.try_slot("a").expect("second slot");
        assert!(board.try_slot("a").is_none(), "only two slots");
        assert_eq!(board.claimable_prefixes(), Some(vec![]));
        drop(one);
        assert_eq!(board.snapshot()[0].active_calls, 1);
        assert_eq!(board.claimable_prefixes(), None);
        assert!(board.try_slot("a").is_some());
        drop(two);
    }

    #[test]
    fn claimable_prefixes_name_trunks_with_room() {
        let board = TrunkBoard::new(
            &[trunk("nl", &["+31"], 10, 1), trunk("be", &["+32"], 10, 1)],
            Default::default(),
            0,
        );
        assert_eq!(
            board.claimable_prefixes(),
            Some(vec!["+31".to_string(), "+32".to_string()])
        );
        let _nl = board.try_slot("nl").expect("slot");
        assert_eq!(board.claimable_prefixes(), Some(vec!["+32".to_string()]));
        assert_eq!(board.overall_capacity(), 2);
    }

    #[test]
    fn routes_put_down_trunks_last() {
        let board = TrunkBoard::new(
            &[trunk("a", &[], 10, 5), trunk("b", &[], 20, 5)],
            Default::default(),
            0,
        );
        assert_eq!(board.routes("+31612345678"), vec!["a", "b"]);
        board.record_outcome("a", Some(true)); // threshold 1: down
        assert_eq!(board.routes("+31612345678"), vec!["b", "a"]);
        board.record_outcome("a", Some(false));
        assert_eq!(board.routes("+31612345678"), vec!["a", "b"]);
    }
}
