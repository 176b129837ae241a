//! The dialer: claims queued calls from the store when a trunk has room for
//! them, places each round through the call engine (trunks by health and
//! priority, failover on trunk failures), records every status and attempt,
//! retries by `[dialer]` policy, keeps the leases of its calls alive, takes
//! over calls whose instance died, and on shutdown lets calls finish for
//! `shutdown_grace` before hanging them up.
//!
//! `claim_and_run_one` is the testable unit; `run` loops it concurrently.
//! Every claimed call is settled: a task that returns early, errors, panics
//! or is dropped leaves a guard that hangs the call up (see `call`) and
//! records a terminal status.

mod callerid;
mod country;
#[cfg(feature = "test-hooks")]
mod fault;
mod lease;
mod policy;
mod round;
pub mod routing;
mod settle;

pub use country::CALLER_ID_WINDOW;
#[cfg(feature = "test-hooks")]
pub use fault::Fault;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::call::{CallEngine, Hangup, HangupCause};
use crate::config::Settings;
use crate::domain::{self, CallStatus};
use crate::metrics::Metrics;
use crate::risk::RiskHook;
use crate::store::{ClaimedCall, Store, StoreError};
use crate::sync::lock;
use crate::trunks::TrunkBoard;
use crate::verify::CodeKeys;

/// Poll interval when nobody wakes the dialer (other instances' work,
/// retries that become due).
const IDLE_POLL: Duration = Duration::from_secs(1);
/// The same with trunk slots shared through PostgreSQL.
const SHARED_IDLE_POLL: Duration = Duration::from_millis(200);
/// After `shutdown_grace`, how long hung-up calls get to say BYE and record
/// their end before their tasks are dropped.
const HANGUP_WAIT: Duration = Duration::from_secs(5);
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Idle,
    Finished {
        call_id: String,
        status: CallStatus,
    },
    /// The round ended and the call is queued again for a retry.
    Retrying {
        call_id: String,
        status: CallStatus,
    },
}

pub struct Dialer {
    store: Store,
    keys: CodeKeys,
    engine: Arc<CallEngine>,
    board: Arc<TrunkBoard>,
    settings: Arc<Settings>,
    instance: String,
    wake: Arc<Notify>,
    cancel_wake: Arc<Notify>,
    metrics: Arc<Metrics>,
    /// Calls in progress here: verification id -> hang-up request.
    inflight: Mutex<HashMap<String, Hangup>>,
    #[cfg(feature = "test-hooks")]
    fault: fault::FaultSlot,
    risk: Option<RiskHook>,
    /// Exploration draws of `routing = "quality"`.
    draws: routing::EvenDraws,
    /// Calls placed per caller-ID pool (the rotation).
    turns: Mutex<HashMap<String, u64>>,
    /// The shared trunk slot rows exist (PostgreSQL).
    slots_ready: tokio::sync::OnceCell<()>,
    last_prune: Mutex<Option<std::time::Instant>>,
}

impl Dialer {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        store: Store,
        keys: CodeKeys,
        engine: Arc<CallEngine>,
        board: Arc<TrunkBoard>,
        settings: Arc<Settings>,
        wake: Arc<Notify>,
        cancel_wake: Arc<Notify>,
        metrics: Arc<Metrics>,
        risk: Option<RiskHook>,
    ) -> Self {
        Self {
            store,
            keys,
            engine,
            board,
            settings,
            instance: format!("otpdial-{}", ulid::Ulid::new()),
            wake,
            cancel_wake,
            metrics,
            inflight: Default::default(),
            #[cfg(feature = "test-hooks")]
            fault: Default::default(),
            risk,
            draws: routing::EvenDraws::new(),
            turns: Mutex::default(),
            slots_ready: tokio::sync::OnceCell::new(),
            last_prune: Mutex::default(),
        }
    }

    /// How long to wait for work when nobody wakes the dialer. Shorter with shared
    /// trunk slots: another instance freeing one does not wake this one.
    fn idle_poll(&self) -> Duration {
        if self.shared_slots() {
            SHARED_IDLE_POLL
        } else {
            IDLE_POLL
        }
    }

    /// This instance's name in `calls.claimed_by`.
    pub fn instance(&self) -> &str {
        &self.instance
    }

    fn lease_ms(&self) -> i64 {
        i64::try_from(self.settings.dialer.lease.as_millis()).unwrap_or(i64::MAX)
    }

    /// Whether placing another call now would exceed
    /// `limits.global_calls_per_second`, counted over all instances.
    async fn over_global_rate(&self) -> Result<bool, StoreError> {
        let cps = i64::from(self.settings.limits.global_calls_per_second);
        if cps == 0 {
            return Ok(false);
        }
        let placed = self.store.claims_since(domain::now_ms() - 1000).await?;
        Ok(placed >= cps)
    }

    /// Claims one queued call that a trunk has room for and runs it to the
    /// end of its round.
    pub async fn claim_and_run_one(&self) -> Result<Outcome, StoreError> {
        let Some(slot) = self.board.call_slot().await else {
            return Ok(Outcome::Idle);
        };
        match self.claim().await? {
            Some(claimed) => Ok(self.run_claimed(claimed, slot).await),
            None => Ok(Outcome::Idle),
        }
    }

    async fn claim(&self) -> Result<Option<ClaimedCall>, StoreError> {
        let mut prefixes = self.claimable_prefixes().await;
        if let Some(p) = prefixes.as_mut() {
            // A QA phone's number needs no trunk: claimable whenever the instance has a
            // slot (a full number is its own prefix).
            p.extend(self.settings.qa.phones.iter().map(|q| q.number.clone()));
        }
        let now = domain::now_ms();
        self.store
            .claim_next_call(
                &self.instance,
                now,
                now + self.lease_ms(),
                prefixes.as_deref(),
            )
            .await
    }

    /// Claims and runs calls until `shutdown`, then stops claiming, lets the
    /// calls in progress finish for `shutdown_grace`, and hangs up the rest.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let mut running = JoinSet::new();
        loop {
            while running.try_join_next().is_some() {}
            // A slot in the instance-wide limit first: a peak waits in the
            // database queue, not in memory.
            let slot = tokio::select! {
                s = self.board.call_slot() => s,
                _ = shutdown.cancelled() => break,
            };
            let Some(slot) = slot else { break };
            if shutdown.is_cancelled() {
                break;
            }
            match self.over_global_rate().await {
                Ok(true) => {
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_millis(50)) => continue,
                        _ = shutdown.cancelled() => break,
                    }
                }
                Ok(false) => {}
                Err(e) => tracing::error!(error = %e, "reading the global call rate failed"),
            }
            match self.claim().await {
                Ok(Some(claimed)) => {
                    let me = self.clone();
                    running.spawn(async move {
                        me.run_claimed(claimed, slot).await;
                    });
                    continue;
                }
                Ok(None) => {}
                Err(e) => tracing::error!(error = %e, "claiming a queued call failed"),
            }
            drop(slot);
            tokio::select! {
                _ = self.wake.notified() => {}
                _ = self.board.freed().notified() => {}
                _ = tokio::time::sleep(self.idle_poll()) => {}
                _ = shutdown.cancelled() => break,
            }
        }
        self.drain(running).await;
    }

    /// Shutdown: calls in progress may finish for `shutdown_grace`; then
    /// they are hung up (BYE/CANCEL) and given a moment to record it.
    async fn drain(&self, mut running: JoinSet<()>) {
        if running.is_empty() {
            return;
        }
        let grace = self.settings.dialer.shutdown_grace;
        tracing::info!(
            calls = running.len(),
            ?grace,
            "waiting for calls in progress"
        );
        let deadline = tokio::time::Instant::now() + grace;
        while !running.is_empty() {
            tokio::select! {
                _ = running.join_next() => {}
                _ = tokio::time::sleep_until(deadline) => break,
            }
        }
        if running.is_empty() {
            return;
        }
        tracing::warn!(
            calls = running.len(),
            "shutdown_grace is over: hanging up the calls still in progress"
        );
        for h in lock(&self.inflight).values() {
            h.request(HangupCause::Shutdown);
        }
        let deadline = tokio::time::Instant::now() + HANGUP_WAIT;
        while !running.is_empty() {
            tokio::select! {
                _ = running.join_next() => {}
                _ = tokio::time::sleep_until(deadline) => break,
            }
        }
        if !running.is_empty() {
            tracing::error!(
                calls = running.len(),
                "calls did not end after hang-up; dropping them"
            );
            running.abort_all();
            while running.join_next().await.is_some() {}
        }
    }
}
