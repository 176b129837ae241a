//! One round of a claimed call: the checks before dialling, the risk hook, then
//! one attempt per trunk (failover) or the one attempt to a QA phone, with its
//! progress recorded as it happens.

use tokio::sync::mpsc;
use tracing::Instrument;

use super::country::Seen;
use super::policy::breaker_signal;
use super::settle::Settle;
use super::{Dialer, Outcome};
use crate::call::{AttemptOutcome, Hangup, KeyGate, PlaceCall, Progress};
use crate::domain::Keys;
use crate::domain::{self, CallReason, CallStatus, OtpCode, VerificationStatus};
use crate::risk::RiskQuery;
use crate::store::{AfterAttempt, AuditEntry, CallUpdate, ClaimedCall, StoreError};
use crate::sync::lock;
use crate::trunks::CallSlot;

/// Removes a call from `Dialer::inflight` when its run ends, however it ends.
struct Inflight<'a> {
    dialer: &'a Dialer,
    verification_id: &'a str,
}

/// What one trunk of a round came to.
enum TrunkTry {
    /// No free channel on it (or its settings vanished): not tried.
    Skipped,
    /// Tried; the outcome allows the next trunk (the attempt is recorded as ended).
    FailedOver(AttemptOutcome),
    /// Tried and the round is over: its settled outcome.
    Ended(Outcome),
}

impl Drop for Inflight<'_> {
    fn drop(&mut self) {
        lock(&self.dialer.inflight).remove(self.verification_id);
    }
}

/// What a claimed call will say and ask for, opened from its sealed code.
struct CallSecrets {
    code: OtpCode,
    /// `bind_digits`: the two digits the person must key first.
    bind: Option<Keys>,
}

/// Where one attempt goes.
enum Route {
    /// With the From URI when a caller-ID pool gives one (else the trunk's `from`).
    Trunk(crate::trunks::TrunkSlot, Option<String>),
    /// A registered QA phone (no trunk, no slot).
    Qa(crate::sip::QaBinding),
}

impl Dialer {
    /// What must hold before a claimed call is placed: its verification
    /// still pending and unexpired, its code readable, a trunk for the
    /// number. Otherwise the outcome to record without placing it.
    fn ready_to_place(
        &self,
        claimed: &ClaimedCall,
    ) -> Result<(CallSecrets, Vec<String>), AttemptOutcome> {
        let expired = || AttemptOutcome::because(CallReason::Expired);
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
    pub(super) async fn run_claimed(&self, claimed: ClaimedCall, _slot: CallSlot) -> Outcome {
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
        let (code, routes) = match self.ready_to_place(claimed) {
            Ok(ready) => ready,
            Err(outcome) => return self.not_placed(claimed, outcome).await,
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
        let routes = self.order_routes(&claimed.phone, routes).await;
        let mut last: Option<AttemptOutcome> = None;
        for trunk in &routes {
            if hangup.cause().is_some() {
                break;
            }
            match self
                .try_trunk(claimed, &code, trunk, settle, &hangup)
                .await?
            {
                TrunkTry::Skipped => {}
                TrunkTry::FailedOver(outcome) => last = Some(outcome),
                TrunkTry::Ended(outcome) => return Ok(outcome),
            }
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
                self.persist(|| self.store.unclaim(&claimed.call_id, domain::now_ms()))
                    .await?;
                tracing::debug!("no trunk slot for the claimed call; queued again");
                Ok(Outcome::Idle)
            }
        }
    }

    /// A claimed call that is not placed at all (its verification ended, or its code
    /// cannot be opened): the call ends with that reason.
    async fn not_placed(
        &self,
        claimed: &ClaimedCall,
        outcome: AttemptOutcome,
    ) -> Result<Outcome, StoreError> {
        let call_id = claimed.call_id.as_str();
        let status = outcome.status;
        self.persist(|| {
            self.store.advance_call(
                call_id,
                status,
                domain::now_ms(),
                CallUpdate {
                    reason: outcome.reason,
                    fail_verification: status != CallStatus::Canceled,
                    ..CallUpdate::default()
                },
            )
        })
        .await?;
        self.metrics.call_finished(status.as_str());
        tracing::info!(
            status = status.as_str(),
            reason = outcome.attempt_reason().unwrap_or(""),
            "call not placed"
        );
        Ok(Outcome::Finished {
            call_id: call_id.to_string(),
            status,
        })
    }

    /// One attempt on `trunk`: skipped when it has no free channel (here or, on
    /// PostgreSQL, across the instances), else placed, recorded and judged; an outcome
    /// that allows failover ends the attempt and lets the round try the next trunk.
    async fn try_trunk(
        &self,
        claimed: &ClaimedCall,
        code: &CallSecrets,
        trunk: &str,
        settle: &mut Settle,
        hangup: &Hangup,
    ) -> Result<TrunkTry, StoreError> {
        let call_id = claimed.call_id.as_str();
        // A full trunk is no failover target; the claim made sure the first trunk with
        // room for this number is among the routes.
        let Some(slot) = self.board.try_slot(trunk) else {
            return Ok(TrunkTry::Skipped);
        };
        let Some(settings) = self.trunk_settings(trunk).cloned() else {
            return Ok(TrunkTry::Skipped);
        };
        // On PostgreSQL the trunk's channels are counted over every instance.
        let _shared = if self.shared_slots() {
            match self.take_shared_slot(&settings, call_id).await {
                Ok(Some(s)) => Some(s),
                Ok(None) => {
                    tracing::debug!(trunk = %trunk, "every channel of the trunk is held by some instance");
                    return Ok(TrunkTry::Skipped);
                }
                Err(e) => {
                    tracing::warn!(trunk = %trunk, error = %e, "cannot take a shared trunk slot");
                    return Ok(TrunkTry::Skipped);
                }
            }
        } else {
            None
        };
        let caller = self.caller_id_for(&claimed.phone, &settings).await;
        let seq = self
            .persist(|| {
                self.store
                    .start_attempt(call_id, &claimed.phone, trunk, domain::now_ms())
            })
            .await?;
        settle.attempt = Some(seq);
        tracing::info!(
            trunk = %trunk,
            attempt = seq,
            round = claimed.round,
            caller_id = caller.as_ref().map_or("", |c| c.number.as_str()),
            "dialing"
        );
        let attempt_span = tracing::info_span!(
            "attempt",
            trunk = %trunk,
            sip_call_id = tracing::field::Empty
        );
        let from = caller.as_ref().map(|c| c.from.clone());
        let (outcome, seen) = self
            .place_one(claimed, code, trunk, Route::Trunk(slot, from), hangup)
            .instrument(attempt_span)
            .await?;
        self.note_outcome(trunk, &claimed.phone, caller.as_ref(), &outcome, seen)
            .await;
        self.board.record_outcome(trunk, breaker_signal(&outcome));
        self.metrics.call_attempt(trunk, outcome.status.as_str());
        tracing::info!(
            trunk = %trunk,
            status = outcome.status.as_str(),
            sip_code = outcome.sip_code,
            reason = outcome.attempt_reason().unwrap_or(""),
            "attempt ended"
        );
        if outcome.failover && hangup.cause().is_none() {
            self.persist(|| {
                self.store.end_attempt(
                    call_id,
                    seq,
                    outcome.status,
                    outcome.sip_code.map(i64::from),
                    outcome.attempt_reason(),
                    outcome.received.as_ref(),
                    domain::now_ms(),
                    AfterAttempt::Continue,
                )
            })
            .await?;
            settle.attempt = None;
            return Ok(TrunkTry::FailedOver(outcome));
        }
        let result = self.end_round(claimed, Some(seq), &outcome).await;
        settle.attempt = None;
        result.map(TrunkTry::Ended)
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
                    .0
            }
            None => AttemptOutcome::failed(format!("QA phone {username} is not registered"), false),
        };
        self.metrics.call_attempt(&route, outcome.status.as_str());
        tracing::info!(
            route = %route,
            status = outcome.status.as_str(),
            sip_code = outcome.sip_code,
            reason = outcome.attempt_reason().unwrap_or(""),
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
        self.metrics.refused(CallReason::RiskDenied.as_str());
        Some(AttemptOutcome::because(CallReason::RiskDenied))
    }

    /// Places one attempt and records its progress as it happens.
    async fn place_one(
        &self,
        claimed: &ClaimedCall,
        code: &CallSecrets,
        trunk: &str,
        route: Route,
        hangup: &Hangup,
    ) -> Result<(AttemptOutcome, Seen), StoreError> {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let mut seen = Seen::default();
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
                Route::Trunk(slot, from) => self.engine.place_from(call, slot, from, tx).await,
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
                    seen.answered |= answered;
                    seen.rang |= p == Progress::Ringing;
                    self.record_progress(&claimed.call_id, trunk, p).await;
                    #[cfg(feature = "test-hooks")]
                    if answered {
                        if let Some(end) = self.fire_injected_fault() {
                            return end.map(|o| (o, seen));
                        }
                    }
                }
                outcome = &mut place => break outcome,
            }
        };
        // Progress sent just before the end still counts.
        while let Ok(p) = rx.try_recv() {
            seen.answered |= p == Progress::Answered;
            seen.rang |= p == Progress::Ringing;
            self.record_progress(&claimed.call_id, trunk, p).await;
        }
        Ok((outcome, seen))
    }

    /// Progress is worth recording but not worth dropping a call for: if
    /// the database is gone the call goes on and its end is recorded when
    /// it is back.
    async fn record_progress(&self, call_id: &str, trunk: &str, p: Progress) {
        // Readings after the first are not written as they happen: the first tells
        // the API (and a take-over after a crash) that the code was heard, and the
        // end of the attempt writes the final count anyway. One write transaction
        // less per further reading (issue 16: about 9 per call before).
        if matches!(p, Progress::Played(n) if n > 1) {
            return;
        }
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
}
