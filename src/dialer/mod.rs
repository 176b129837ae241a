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

use std::collections::HashMap;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, Notify};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::call::{AttemptOutcome, CallEngine, Hangup, HangupCause, KeyGate, PlaceCall, Progress};
use crate::config::{RetryOn, Settings};
use crate::domain::{self, CallStatus, OtpCode, VerificationStatus};
use crate::media::Keys;
use crate::metrics::Metrics;
use crate::risk::{RiskHook, RiskQuery};
use crate::store::{
    AfterAttempt, AuditEntry, CallUpdate, ClaimedCall, Recovered, Store, StoreError,
};
use crate::sync::lock;
use crate::trunks::{CallSlot, TrunkBoard};
use crate::verify::CodeKeys;

/// Poll interval when nobody wakes the dialer (other instances' work,
/// retries that become due).
const IDLE_POLL: Duration = Duration::from_secs(1);
/// How often the calls in progress are checked against their
/// verifications, to hang up when another instance canceled or approved it.
const CANCEL_POLL: Duration = Duration::from_secs(1);
/// After `shutdown_grace`, how long hung-up calls get to say BYE and record
/// their end before their tasks are dropped.
const HANGUP_WAIT: Duration = Duration::from_secs(5);
/// Back-off bounds for writes that must land (the final status of a call).
const PERSIST_BACKOFF: (Duration, Duration) = (Duration::from_millis(200), Duration::from_secs(5));

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

/// A fault to inject into the next answered call, to test that every way a
/// call task can end early still hangs up, frees the slot and settles the
/// call. For tests only; `None` in production.
#[doc(hidden)]
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
    fault: AtomicU8,
    risk: Option<RiskHook>,
}

/// Removes a call from `Dialer::inflight` when its run ends, however it ends.
struct Inflight<'a> {
    dialer: &'a Dialer,
    verification_id: &'a str,
}

impl Drop for Inflight<'_> {
    fn drop(&mut self) {
        lock(&self.dialer.inflight).remove(self.verification_id);
    }
}

/// Settles a claimed call that its task left without recording an end (an
/// error, a panic, a dropped future): the call ends `failed`, reason
/// `internal_error`, from a task of its own. Should even that fail (no
/// runtime, no database), the lease runs out and the take-over settles it.
struct Settle {
    store: Store,
    call_id: String,
    attempt: Option<i64>,
    done: bool,
}

impl Drop for Settle {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let store = self.store.clone();
        let call_id = std::mem::take(&mut self.call_id);
        let attempt = self.attempt;
        tracing::error!(call = %call_id, "call task ended without settling the call");
        rt.spawn(async move {
            let update = CallUpdate {
                reason: Some("internal_error"),
                fail_verification: true,
                ..CallUpdate::default()
            };
            let now = domain::now_ms();
            let write = match attempt {
                Some(seq) => {
                    store
                        .end_attempt(
                            &call_id,
                            seq,
                            CallStatus::Failed,
                            None,
                            Some("internal_error"),
                            now,
                            AfterAttempt::Finish(CallStatus::Failed, update),
                        )
                        .await
                }
                None => store
                    .advance_call(&call_id, CallStatus::Failed, now, update)
                    .await
                    .map(|_| ()),
            };
            if let Err(e) = write {
                tracing::error!(call = %call_id, error = %e, "cannot settle the call; its lease will");
            }
        });
    }
}

/// What a claimed call will say and ask for, opened from its sealed code.
struct CallSecrets {
    code: OtpCode,
    /// `bind_digits`: the two digits the person must key first.
    bind: Option<Keys>,
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
            fault: AtomicU8::new(Fault::None as u8),
            risk,
        }
    }

    /// This instance's name in `calls.claimed_by`.
    pub fn instance(&self) -> &str {
        &self.instance
    }

    /// Test hook: the next answered call suffers `fault`.
    #[doc(hidden)]
    pub fn inject_fault(&self, fault: Fault) {
        self.fault.store(fault as u8, Ordering::SeqCst);
    }

    fn take_fault(&self) -> Fault {
        match self.fault.swap(Fault::None as u8, Ordering::SeqCst) {
            1 => Fault::Error,
            2 => Fault::Panic,
            3 => Fault::Drop,
            _ => Fault::None,
        }
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

    /// Hangs up the calls of this instance whose verification stopped
    /// being pending (canceled through the API of any instance, approved,
    /// expired) or that are no longer this instance's (taken over after a
    /// lapsed lease). One query per second for all calls, not one per call.
    pub async fn watch_cancellations(self: Arc<Self>, shutdown: CancellationToken) {
        loop {
            tokio::select! {
                _ = self.cancel_wake.notified() => {}
                _ = tokio::time::sleep(CANCEL_POLL) => {}
                _ = shutdown.cancelled() => return,
            }
            if lock(&self.inflight).is_empty() {
                continue;
            }
            // Calls that started before the query are judged by it; one
            // that started after it is judged next time.
            let before: Vec<String> = lock(&self.inflight).keys().cloned().collect();
            match self.store.verifications_held_by(&self.instance).await {
                Ok(held) => {
                    let held: std::collections::HashSet<String> = held.into_iter().collect();
                    let inflight = lock(&self.inflight);
                    for id in before.iter().filter(|id| !held.contains(*id)) {
                        if let Some(h) = inflight.get(id) {
                            h.request(HangupCause::Canceled);
                        }
                    }
                }
                Err(e) => tracing::warn!(error = %e, "cannot read verification statuses"),
            }
        }
    }

    /// Keeps this instance's leases alive and takes over calls whose lease
    /// ran out (at start-up, then every third of a lease). Runs until
    /// `shutdown`; the leases of calls still finishing then lapse on their
    /// own if the process dies.
    pub async fn maintain_leases(self: Arc<Self>, shutdown: CancellationToken) {
        let every = self.settings.dialer.lease / 3;
        loop {
            let now = domain::now_ms();
            let wait = match self
                .store
                .renew_leases(&self.instance, now + self.lease_ms())
                .await
            {
                Ok(_) => {
                    self.recover_once().await;
                    every
                }
                Err(e) => {
                    // Renew again soon: after an outage our leases must be
                    // back before another instance decides we are dead.
                    tracing::warn!(error = %e, "cannot renew call leases");
                    Duration::from_secs(1).min(every)
                }
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = shutdown.cancelled() => return,
            }
        }
    }

    /// One take-over pass; returns what it did.
    pub async fn recover_once(&self) -> Vec<Recovered> {
        match self
            .store
            .recover_abandoned(&self.instance, domain::now_ms())
            .await
        {
            Ok(done) => {
                for r in &done {
                    match r {
                        Recovered::Failed { call_id } => {
                            tracing::warn!(call = %call_id, reason = "gateway_restart",
                                "took over a call whose instance died after dialling: ended failed");
                            self.metrics.recovered("failed");
                        }
                        Recovered::Requeued { call_id } => {
                            tracing::info!(call = %call_id,
                                "took over a call whose instance died before dialling: queued again");
                            self.metrics.recovered("requeued");
                        }
                    }
                }
                if done.iter().any(|r| matches!(r, Recovered::Requeued { .. })) {
                    self.wake.notify_one();
                }
                done
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot take over abandoned calls");
                Vec::new()
            }
        }
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
        let mut prefixes = self.board.claimable_prefixes();
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
                _ = tokio::time::sleep(IDLE_POLL) => {}
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

    /// What must hold before a claimed call is placed: its verification
    /// still pending and unexpired, its code readable, a trunk for the
    /// number. Otherwise the outcome to record without placing it.
    fn ready_to_place(
        &self,
        claimed: &ClaimedCall,
    ) -> Result<(CallSecrets, Vec<String>), AttemptOutcome> {
        let expired = || AttemptOutcome::failed("expired", false);
        match claimed.verification_status {
            VerificationStatus::Pending => {}
            VerificationStatus::Expired => return Err(expired()),
            // Approved or canceled before its call was placed: the user
            // needs no call any more.
            other => {
                return Err(AttemptOutcome {
                    status: CallStatus::Canceled,
                    ..AttemptOutcome::failed(
                        format!("verification already {}", other.as_str()),
                        false,
                    )
                })
            }
        }
        if domain::now_ms() >= claimed.expires_at {
            return Err(expired());
        }
        let code = match claimed.code_sealed.as_deref() {
            Some(sealed) => self
                .keys
                .open(&claimed.verification_id, sealed)
                .map(|(code, bind)| CallSecrets { code, bind })
                .map_err(|e| AttemptOutcome::failed(format!("cannot open the code: {e}"), false))?,
            None => {
                return Err(AttemptOutcome::failed(
                    "the code is no longer stored",
                    false,
                ))
            }
        };
        let routes = self.board.routes(&claimed.phone);
        if routes.is_empty() && self.settings.qa.phone_for(&claimed.phone).is_none() {
            return Err(AttemptOutcome::failed(
                format!("no trunk routes {}", claimed.phone),
                false,
            ));
        }
        Ok((code, routes))
    }

    /// Runs one round of a claimed call; every way out settles the call.
    async fn run_claimed(&self, claimed: ClaimedCall, _slot: CallSlot) -> Outcome {
        let call_id = claimed.call_id.clone();
        let span =
            tracing::info_span!("call", verification = %claimed.verification_id, call = %call_id);
        let mut settle = Settle {
            store: self.store.clone(),
            call_id: call_id.clone(),
            attempt: None,
            done: false,
        };
        let outcome = self.run_round(&claimed, &mut settle).instrument(span).await;
        match outcome {
            Ok(o) => {
                settle.done = true;
                o
            }
            Err(e) => {
                // `settle` records the end from its own task.
                tracing::error!(call = %call_id, error = %e, "call task failed");
                Outcome::Finished {
                    call_id,
                    status: CallStatus::Failed,
                }
            }
        }
    }

    async fn run_round(
        &self,
        claimed: &ClaimedCall,
        settle: &mut Settle,
    ) -> Result<Outcome, StoreError> {
        let call_id = claimed.call_id.as_str();
        let (code, routes) = match self.ready_to_place(claimed) {
            Ok(ready) => ready,
            Err(outcome) => {
                let status = outcome.status;
                self.persist(|| {
                    self.store.advance_call(
                        call_id,
                        status,
                        domain::now_ms(),
                        CallUpdate {
                            reason: short_reason(outcome.reason.as_deref()),
                            fail_verification: status != CallStatus::Canceled,
                            ..CallUpdate::default()
                        },
                    )
                })
                .await?;
                self.metrics.call_finished(status.as_str());
                tracing::info!(
                    status = status.as_str(),
                    reason = outcome.reason.as_deref().unwrap_or(""),
                    "call not placed"
                );
                return Ok(Outcome::Finished {
                    call_id: call_id.to_string(),
                    status,
                });
            }
        };

        if let Some(denied) = self.risk_check(claimed).await {
            return self.end_round(claimed, None, &denied).await;
        }

        let hangup = Hangup::default();
        lock(&self.inflight).insert(claimed.verification_id.clone(), hangup.clone());
        let _inflight = Inflight {
            dialer: self,
            verification_id: &claimed.verification_id,
        };
        if let Some(qa) = self.settings.qa.phone_for(&claimed.phone) {
            // A QA phone's number rings its registered contact, ahead of any trunk.
            return self
                .run_qa_round(claimed, &code, &qa.username, settle, &hangup)
                .await;
        }
        let mut last: Option<AttemptOutcome> = None;
        for trunk in &routes {
            if hangup.cause().is_some() {
                break;
            }
            // A full trunk is no failover target; the claim made sure the
            // first trunk with room for this number is among the routes.
            let Some(slot) = self.board.try_slot(trunk) else {
                continue;
            };
            let seq = self
                .persist(|| {
                    self.store
                        .start_attempt(call_id, &claimed.phone, trunk, domain::now_ms())
                })
                .await?;
            settle.attempt = Some(seq);
            tracing::info!(trunk = %trunk, attempt = seq, round = claimed.round, "dialing");
            let attempt_span = tracing::info_span!(
                "attempt",
                trunk = %trunk,
                sip_call_id = tracing::field::Empty
            );
            let outcome = self
                .place_one(claimed, &code, trunk, Route::Trunk(slot), &hangup)
                .instrument(attempt_span)
                .await?;
            self.board.record_outcome(trunk, breaker_signal(&outcome));
            self.metrics.call_attempt(trunk, outcome.status.as_str());
            tracing::info!(
                trunk = %trunk,
                status = outcome.status.as_str(),
                sip_code = outcome.sip_code,
                reason = outcome.reason.as_deref().unwrap_or(""),
                "attempt ended"
            );
            if outcome.failover && hangup.cause().is_none() {
                self.persist(|| {
                    self.store.end_attempt(
                        call_id,
                        seq,
                        outcome.status,
                        outcome.sip_code.map(i64::from),
                        outcome.reason.as_deref(),
                        domain::now_ms(),
                        AfterAttempt::Continue,
                    )
                })
                .await?;
                settle.attempt = None;
                last = Some(outcome);
                continue;
            }
            let result = self.end_round(claimed, Some(seq), &outcome).await;
            settle.attempt = None;
            return result;
        }
        match last {
            Some(outcome) => self.end_round(claimed, None, &outcome).await,
            None if hangup.cause().is_some() => {
                let outcome = AttemptOutcome {
                    status: CallStatus::Canceled,
                    ..AttemptOutcome::failed("canceled before dialling", false)
                };
                self.end_round(claimed, None, &outcome).await
            }
            None => {
                // No route had a slot after all (a trunk filled up between
                // the claim and now): back to the queue, round not counted.
                self.persist(|| self.store.unclaim(call_id, domain::now_ms()))
                    .await?;
                tracing::debug!("no trunk slot for the claimed call; queued again");
                Ok(Outcome::Idle)
            }
        }
    }

    /// The one attempt of a round to a QA phone (SPEC §6 `[[qa.phones]]`): its
    /// registered contact, or a failed attempt saying it is not registered.
    async fn run_qa_round(
        &self,
        claimed: &ClaimedCall,
        code: &CallSecrets,
        username: &str,
        settle: &mut Settle,
        hangup: &Hangup,
    ) -> Result<Outcome, StoreError> {
        let call_id = claimed.call_id.as_str();
        let route = format!("qa:{username}");
        let seq = self
            .persist(|| {
                self.store
                    .start_attempt(call_id, &claimed.phone, &route, domain::now_ms())
            })
            .await?;
        settle.attempt = Some(seq);
        let binding = lock(&self.engine.qa_bindings())
            .get(username)
            .filter(|b| b.expires_at > std::time::Instant::now())
            .cloned();
        let outcome = match binding {
            Some(b) if b.flow_closed => AttemptOutcome::failed(
                format!(
                    "QA phone {username} is unreachable: the {} connection it registered on closed; it must register again",
                    b.transport.via_name()
                ),
                false,
            ),
            Some(b) => {
                tracing::info!(route = %route, attempt = seq, contact = %b.contact, "dialing a QA phone");
                let span = tracing::info_span!(
                    "attempt",
                    trunk = %route,
                    sip_call_id = tracing::field::Empty
                );
                self.place_one(claimed, code, &route, Route::Qa(b), hangup)
                    .instrument(span)
                    .await?
            }
            None => AttemptOutcome::failed(format!("QA phone {username} is not registered"), false),
        };
        self.metrics.call_attempt(&route, outcome.status.as_str());
        tracing::info!(
            route = %route,
            status = outcome.status.as_str(),
            sip_code = outcome.sip_code,
            reason = outcome.reason.as_deref().unwrap_or(""),
            "attempt ended"
        );
        let result = self.end_round(claimed, Some(seq), &outcome).await;
        settle.attempt = None;
        result
    }

    /// Asks the pre-dial risk hook, if there is one; the outcome to record
    /// when the call must not be placed. Every decision is audited.
    async fn risk_check(&self, claimed: &ClaimedCall) -> Option<AttemptOutcome> {
        let hook = self.risk.as_ref()?;
        let query = RiskQuery::new(
            &claimed.verification_id,
            &claimed.phone,
            claimed.user_id.as_deref(),
        );
        let verdict = hook.decide(&query).await;
        let denied = verdict.decision == crate::config::RiskDecision::Deny;
        let outcome = if denied { "deny" } else { "allow" };
        tracing::info!(decision = outcome, source = %verdict.source, "risk hook");
        let audit = AuditEntry {
            actor: "dialer",
            action: "call.risk",
            target: Some(&claimed.verification_id),
            outcome,
            detail: Some(&verdict.source),
        };
        if let Err(e) = self.store.audit(audit, domain::now_ms()).await {
            tracing::warn!(error = %e, "cannot audit the risk decision");
        }
        if !denied {
            return None;
        }
        self.metrics.refused("risk_denied");
        Some(AttemptOutcome::failed("risk_denied", false))
    }

    /// Places one attempt and records its progress as it happens.
    async fn place_one(
        &self,
        claimed: &ClaimedCall,
        code: &CallSecrets,
        trunk: &str,
        route: Route,
        hangup: &Hangup,
    ) -> Result<AttemptOutcome, StoreError> {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let call = PlaceCall {
            to: &claimed.phone,
            digits: code.code.digit_values(),
            locale: &claimed.locale,
            repeat: self.settings.verification.repeat,
            gate: match code.bind {
                Some(keys) => KeyGate::Bind(keys),
                None if self.settings.verification.require_keypress => KeyGate::Keypress,
                None => KeyGate::Open,
            },
            hangup: hangup.clone(),
        };
        let place = async {
            match route {
                Route::Trunk(slot) => self.engine.place(call, slot, tx).await,
                Route::Qa(binding) => {
                    let ring = self.settings.qa.ring_timeout;
                    self.engine.place_qa(call, trunk, &binding, ring, tx).await
                }
            }
        };
        tokio::pin!(place);
        let outcome = loop {
            tokio::select! {
                biased;
                Some(p) = rx.recv() => {
                    let answered = p == Progress::Answered;
                    self.record_progress(&claimed.call_id, trunk, p).await;
                    if answered {
                        match self.take_fault() {
                            Fault::None => {}
                            Fault::Error => {
                                return Err(StoreError::Corrupt("injected fault".into()));
                            }
                            Fault::Panic => panic!("injected fault"),
                            Fault::Drop => return Ok(AttemptOutcome::failed("injected drop", false)),
                        }
                    }
                }
                outcome = &mut place => break outcome,
            }
        };
        // Progress sent just before the end still counts.
        while let Ok(p) = rx.try_recv() {
            self.record_progress(&claimed.call_id, trunk, p).await;
        }
        Ok(outcome)
    }

    /// Progress is worth recording but not worth dropping a call for: if
    /// the database is gone the call goes on and its end is recorded when
    /// it is back.
    async fn record_progress(&self, call_id: &str, trunk: &str, p: Progress) {
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
        if let Err(e) = self.store.advance_call(call_id, status, now, update).await {
            tracing::warn!(error = %e, status = status.as_str(), "cannot record call progress; the call goes on");
        }
    }

    /// Ends the round: the call finishes, or is queued again when the
    /// retry policy allows another round.
    async fn end_round(
        &self,
        claimed: &ClaimedCall,
        seq: Option<i64>,
        outcome: &AttemptOutcome,
    ) -> Result<Outcome, StoreError> {
        let call_id = claimed.call_id.as_str();
        let retry_at = self.retry_at(claimed, outcome);
        let next_phone = match (&retry_at, &claimed.user_id) {
            (Some(_), Some(user)) if self.settings.dialer.next_number => self
                .store
                .next_number(user, &claimed.phone)
                .await
                .unwrap_or_else(|e| {
                    tracing::warn!(error = %e, "cannot read the user's numbers; retrying the same");
                    claimed.phone.clone()
                }),
            _ => claimed.phone.clone(),
        };
        let reason = outcome.reason.as_deref();
        let update = CallUpdate {
            sip_code: outcome.sip_code.map(i64::from),
            times_played: Some(i64::from(outcome.times_played)),
            reason: short_reason(reason),
            fail_verification: !matches!(
                outcome.status,
                CallStatus::Completed | CallStatus::Canceled
            ),
            ..CallUpdate::default()
        };
        let then = match retry_at {
            Some(at) => AfterAttempt::Retry {
                at,
                phone: &next_phone,
            },
            None => AfterAttempt::Finish(outcome.status, update),
        };
        self.persist(|| async {
            let now = domain::now_ms();
            match seq {
                Some(seq) => {
                    self.store
                        .end_attempt(
                            call_id,
                            seq,
                            outcome.status,
                            outcome.sip_code.map(i64::from),
                            reason,
                            now,
                            then,
                        )
                        .await
                }
                None => match then {
                    AfterAttempt::Finish(status, update) => self
                        .store
                        .advance_call(call_id, status, now, update)
                        .await
                        .map(|_| ()),
                    AfterAttempt::Retry { at, phone } => {
                        self.store.requeue(call_id, at, phone, now).await
                    }
                    AfterAttempt::Continue => Ok(()),
                },
            }
        })
        .await?;
        if retry_at.is_some() {
            tracing::info!(
                status = outcome.status.as_str(),
                round = claimed.round,
                "round ended; retry queued"
            );
            self.wake.notify_one();
            return Ok(Outcome::Retrying {
                call_id: call_id.to_string(),
                status: outcome.status,
            });
        }
        self.metrics.call_finished(outcome.status.as_str());
        tracing::info!(
            status = outcome.status.as_str(),
            times_played = outcome.times_played,
            reason = reason.unwrap_or(""),
            "call finished"
        );
        Ok(Outcome::Finished {
            call_id: call_id.to_string(),
            status: outcome.status,
        })
    }

    /// When the next round may start, if the policy allows one.
    fn retry_at(&self, claimed: &ClaimedCall, outcome: &AttemptOutcome) -> Option<i64> {
        let d = &self.settings.dialer;
        let retriable = d.retry_on.iter().any(|r| {
            matches!(
                (r, outcome.status),
                (RetryOn::NoAnswer, CallStatus::NoAnswer)
                    | (RetryOn::Busy, CallStatus::Busy)
                    | (RetryOn::Rejected, CallStatus::Rejected)
                    | (RetryOn::Failed, CallStatus::Failed)
            )
        });
        let refused = outcome.reason.as_deref() == Some("risk_denied");
        if !retriable || refused || claimed.round >= d.max_attempts || outcome.times_played > 0 {
            return None;
        }
        let at = domain::now_ms() + i64::try_from(d.retry_delay.as_millis()).unwrap_or(i64::MAX);
        // A retry after the verification expired reaches nobody.
        (at < claimed.expires_at).then_some(at)
    }

    /// Runs a write that must land, retrying with back-off while the
    /// database is unreachable. Gives up only on errors that retrying
    /// cannot fix (a corrupt row).
    async fn persist<T, F, Fut>(&self, mut op: F) -> Result<T, StoreError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, StoreError>>,
    {
        let mut wait = PERSIST_BACKOFF.0;
        loop {
            match op().await {
                Ok(v) => return Ok(v),
                Err(e @ StoreError::Corrupt(_)) => return Err(e),
                Err(e) => {
                    tracing::warn!(error = %e, retry_in = ?wait, "database write failed; retrying");
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(PERSIST_BACKOFF.1);
                }
            }
        }
    }
}

/// What an attempt's outcome says about the trunk, for its breaker:
/// `Some(true)` the trunk failed (5xx, 408, no response, transport error),
/// `Some(false)` it answered for itself, `None` nothing either way.
/// Where one attempt goes.
enum Route {
    Trunk(crate::trunks::TrunkSlot),
    /// A registered QA phone (no trunk, no slot).
    Qa(crate::sip::QaBinding),
}

fn breaker_signal(outcome: &AttemptOutcome) -> Option<bool> {
    if outcome.failover {
        Some(true)
    } else if outcome.sip_code.is_some() {
        Some(false)
    } else {
        None
    }
}

/// The call-level reason: the machine tokens a client can act on; other
/// details stay on the attempt.
fn short_reason(reason: Option<&str>) -> Option<&str> {
    match reason {
        Some(
            r @ ("expired" | "gateway_restart" | "no_keypress" | "shutdown" | "canceled"
            | "risk_denied"),
        ) => Some(r),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn breaker_hears_only_trunk_trouble_and_trunk_answers() {
        assert_eq!(
            breaker_signal(&AttemptOutcome::failed("503", true)),
            Some(true)
        );
        let busy = AttemptOutcome {
            status: CallStatus::Busy,
            sip_code: Some(486),
            ..AttemptOutcome::failed("486 Busy Here", false)
        };
        assert_eq!(breaker_signal(&busy), Some(false));
        assert_eq!(
            breaker_signal(&AttemptOutcome::failed("canceled", false)),
            None
        );
    }

    #[test]
    fn only_machine_reasons_reach_the_call() {
        assert_eq!(short_reason(Some("no_keypress")), Some("no_keypress"));
        assert_eq!(short_reason(Some("503 Service Unavailable")), None);
        assert_eq!(short_reason(None), None);
    }
}
