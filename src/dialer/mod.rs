//! The dialer: claims queued calls from the store, picks trunks for the
//! number (prefix match, priority, capacity), asks the call engine to place
//! each attempt, fails over on 5xx/timeout, and records every `call.status`
//! transition and attempt. `claim_and_run_one` is the testable unit; `run`
//! loops it with concurrency until shutdown.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, Notify};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::call::{AttemptOutcome, CallEngine, PlaceCall, Progress};
use crate::config::{Settings, TrunkSettings};
use crate::domain::{self, CallStatus, OtpCode, VerificationStatus};
use crate::metrics::Metrics;
use crate::store::{CallUpdate, ClaimedCall, Store, StoreError};
use crate::verify::CodeKeys;

/// How long a claim is held before another instance may take the call over.
const LEASE: Duration = Duration::from_secs(300);
/// Poll interval when nobody wakes the dialer (other instances' work,
/// retries that become due).
const IDLE_POLL: Duration = Duration::from_secs(1);
/// How often the calls in progress are checked against their
/// verifications, to hang up when another instance canceled or approved it.
const CANCEL_POLL: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Idle,
    Finished { call_id: String, status: CallStatus },
}

pub struct Dialer {
    store: Store,
    keys: CodeKeys,
    engine: Arc<CallEngine>,
    settings: Arc<Settings>,
    instance: String,
    wake: Arc<Notify>,
    cancel_wake: Arc<Notify>,
    metrics: Arc<Metrics>,
    /// Calls in progress here: verification id -> hang-up token.
    inflight: std::sync::Mutex<HashMap<String, CancellationToken>>,
}

/// Removes a call from `Dialer::inflight` when its run ends, however it ends.
struct Inflight<'a> {
    dialer: &'a Dialer,
    verification_id: &'a str,
}

impl Drop for Inflight<'_> {
    fn drop(&mut self) {
        self.dialer.inflight_lock().remove(self.verification_id);
    }
}

impl Dialer {
    pub fn new(
        store: Store,
        keys: CodeKeys,
        engine: Arc<CallEngine>,
        settings: Arc<Settings>,
        wake: Arc<Notify>,
        cancel_wake: Arc<Notify>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            store,
            keys,
            engine,
            settings,
            instance: format!("otpdial-{}", ulid::Ulid::new()),
            wake,
            cancel_wake,
            metrics,
            inflight: Default::default(),
        }
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

    /// Hangs up the calls of this instance whose verification stopped
    /// being pending (canceled through the API of any instance, approved,
    /// expired). One query per second for all calls, not one per call.
    pub async fn watch_cancellations(self: Arc<Self>, shutdown: CancellationToken) {
        loop {
            tokio::select! {
                _ = self.cancel_wake.notified() => {}
                _ = tokio::time::sleep(CANCEL_POLL) => {}
                _ = shutdown.cancelled() => return,
            }
            if self.inflight_lock().is_empty() {
                continue;
            }
            match self.store.finished_verifications_of(&self.instance).await {
                Ok(ids) => {
                    let inflight = self.inflight_lock();
                    for id in ids {
                        if let Some(token) = inflight.get(&id) {
                            token.cancel();
                        }
                    }
                }
                Err(e) => tracing::warn!(error = %e, "cannot read verification statuses"),
            }
        }
    }

    fn inflight_lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, CancellationToken>> {
        match self.inflight.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// Claims one queued call and runs it to its end.
    pub async fn claim_and_run_one(&self) -> Result<Outcome, StoreError> {
        match self.claim().await? {
            Some(claimed) => {
                let call_id = claimed.call_id.clone();
                let status = self.run_claimed(claimed).await?;
                Ok(Outcome::Finished { call_id, status })
            }
            None => Ok(Outcome::Idle),
        }
    }

    async fn claim(&self) -> Result<Option<ClaimedCall>, StoreError> {
        let now = domain::now_ms();
        let lease = i64::try_from(LEASE.as_millis()).unwrap_or(i64::MAX);
        self.store
            .claim_next_call(&self.instance, now, now + lease)
            .await
    }

    /// Claims and runs calls until `shutdown`, then stops claiming and lets
    /// the calls in progress finish.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let mut running = JoinSet::new();
        loop {
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
                        let id = claimed.call_id.clone();
                        if let Err(e) = me.run_claimed(claimed).await {
                            tracing::error!(call = %id, error = %e, "recording the call failed");
                        }
                    });
                    continue;
                }
                Ok(None) => {}
                Err(e) => tracing::error!(error = %e, "claiming a queued call failed"),
            }
            while running.try_join_next().is_some() {}
            tokio::select! {
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(IDLE_POLL) => {}
                _ = shutdown.cancelled() => break,
            }
        }
        if !running.is_empty() {
            tracing::info!(calls = running.len(), "waiting for calls in progress");
        }
        while running.join_next().await.is_some() {}
    }

    /// Trunks that carry `number`, lowest priority value first.
    fn routes(&self, number: &str) -> Vec<&TrunkSettings> {
        let mut routes: Vec<&TrunkSettings> = self
            .settings
            .trunks
            .iter()
            .filter(|t| t.routes(number))
            .collect();
        // Healthy trunks first (registered when they must be, not known to
        // be unreachable), each group by priority. An unhealthy trunk is
        // still tried last: a carrier may take an authenticated INVITE
        // without a registration, and a failed probe may be stale.
        routes.sort_by_key(|t| (!self.engine.trunk_usable(t), t.priority));
        routes
    }

    /// What must hold before a claimed call is placed: its verification
    /// still pending and unexpired, its code readable, a trunk for the
    /// number. Otherwise the outcome to record without placing it.
    fn ready_to_place(
        &self,
        claimed: &ClaimedCall,
    ) -> Result<(OtpCode, Vec<&TrunkSettings>), AttemptOutcome> {
        if claimed.verification_status != VerificationStatus::Pending {
            // Approved, canceled or expired before its call was placed: the
            // user needs no call any more.
            return Err(AttemptOutcome {
                status: CallStatus::Canceled,
                ..AttemptOutcome::failed(
                    format!(
                        "verification already {}",
                        claimed.verification_status.as_str()
                    ),
                    false,
                )
            });
        }
        let code = match claimed.code_sealed.as_deref() {
            Some(sealed) => self
                .keys
                .open(&claimed.verification_id, sealed)
                .map_err(|e| AttemptOutcome::failed(format!("cannot open the code: {e}"), false))?,
            None => {
                return Err(AttemptOutcome::failed(
                    "the code is no longer stored",
                    false,
                ))
            }
        };
        if domain::now_ms() >= claimed.expires_at {
            return Err(AttemptOutcome::failed(
                "verification expired before the call",
                false,
            ));
        }
        let routes = self.routes(&claimed.phone);
        if routes.is_empty() {
            return Err(AttemptOutcome::failed(
                format!("no trunk routes {}", claimed.phone),
                false,
            ));
        }
        Ok((code, routes))
    }

    async fn run_claimed(&self, claimed: ClaimedCall) -> Result<CallStatus, StoreError> {
        let call_id = claimed.call_id.as_str();
        let (code, routes) = match self.ready_to_place(&claimed) {
            Ok(ready) => ready,
            Err(outcome) => return self.finish(&claimed, outcome).await,
        };

        let cancel = CancellationToken::new();
        self.inflight_lock()
            .insert(claimed.verification_id.clone(), cancel.clone());
        let _inflight = Inflight {
            dialer: self,
            verification_id: &claimed.verification_id,
        };
        let mut last = AttemptOutcome::failed("no trunk could take the call", false);
        for trunk in routes {
            if cancel.is_cancelled() {
                break;
            }
            let now = domain::now_ms();
            let seq = self
                .store
                .start_attempt(call_id, &claimed.phone, &trunk.name, now)
                .await?;
            self.store
                .advance_call(
                    call_id,
                    CallStatus::Dialing,
                    now,
                    CallUpdate {
                        trunk: Some(&trunk.name),
                        ..CallUpdate::default()
                    },
                )
                .await?;
            tracing::info!(trunk = %trunk.name, attempt = seq, "dialing");
            let (tx, mut rx) = mpsc::unbounded_channel();
            let place = self.engine.place(
                PlaceCall {
                    to: &claimed.phone,
                    trunk,
                    digits: code.digit_values(),
                    locale: &claimed.locale,
                    repeat: self.settings.verification.repeat,
                    require_keypress: self.settings.verification.require_keypress,
                    cancel: cancel.clone(),
                },
                tx,
            );
            tokio::pin!(place);
            let outcome = loop {
                tokio::select! {
                    biased;
                    Some(p) = rx.recv() => self.record_progress(call_id, &trunk.name, p).await?,
                    outcome = &mut place => break outcome,
                }
            };
            // Progress sent just before the end still counts.
            while let Ok(p) = rx.try_recv() {
                self.record_progress(call_id, &trunk.name, p).await?;
            }
            self.store
                .finish_attempt(
                    call_id,
                    seq,
                    outcome.status,
                    outcome.sip_code.map(i64::from),
                    outcome.reason.as_deref(),
                    domain::now_ms(),
                )
                .await?;
            tracing::info!(
                trunk = %trunk.name,
                status = outcome.status.as_str(),
                sip_code = outcome.sip_code,
                reason = outcome.reason.as_deref().unwrap_or(""),
                "attempt ended"
            );
            self.metrics
                .call_attempt(&trunk.name, outcome.status.as_str());
            let failover = outcome.failover;
            last = outcome;
            if !failover {
                break;
            }
        }
        self.finish(&claimed, last).await
    }

    async fn record_progress(
        &self,
        call_id: &str,
        trunk: &str,
        p: Progress,
    ) -> Result<(), StoreError> {
        let now = domain::now_ms();
        let (status, update) = match p {
            Progress::Ringing => (CallStatus::Ringing, CallUpdate::default()),
            Progress::Answered => (
                CallStatus::Answered,
                CallUpdate {
                    trunk: Some(trunk),
                    answered_at: Some(now),
                    sip_code: Some(200),
                    ..CallUpdate::default()
                },
            ),
            Progress::Played(n) => (
                CallStatus::Answered,
                CallUpdate {
                    times_played: Some(i64::from(n)),
                    ..CallUpdate::default()
                },
            ),
        };
        self.store
            .advance_call(call_id, status, now, update)
            .await?;
        Ok(())
    }

    /// Records the final call status; a call that ended without the code
    /// being read fails its verification (SPEC §3).
    async fn finish(
        &self,
        claimed: &ClaimedCall,
        outcome: AttemptOutcome,
    ) -> Result<CallStatus, StoreError> {
        let now = domain::now_ms();
        self.store
            .advance_call(
                &claimed.call_id,
                outcome.status,
                now,
                CallUpdate {
                    sip_code: outcome.sip_code.map(i64::from),
                    times_played: Some(i64::from(outcome.times_played)),
                    fail_verification: !matches!(
                        outcome.status,
                        CallStatus::Completed | CallStatus::Canceled
                    ),
                    ..CallUpdate::default()
                },
            )
            .await?;
        self.metrics.call_finished(outcome.status.as_str());
        tracing::info!(
            call = %claimed.call_id,
            status = outcome.status.as_str(),
            times_played = outcome.times_played,
            reason = outcome.reason.as_deref().unwrap_or(""),
            "call finished"
        );
        Ok(outcome.status)
    }
}
