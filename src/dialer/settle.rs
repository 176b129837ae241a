//! How a round ends in the database: the final status or a retry queued, writes
//! that must land (retried with back-off), and the guard that settles a call its
//! task left unsettled.

use std::time::Duration;

use super::{Dialer, Outcome};
use crate::call::AttemptOutcome;
use crate::domain::{self, CallReason, CallStatus};
use crate::store::{AfterAttempt, CallUpdate, ClaimedCall, Store, StoreError};

/// Back-off bounds for writes that must land (the final status of a call).
const PERSIST_BACKOFF: (Duration, Duration) = (Duration::from_millis(200), Duration::from_secs(5));

/// Settles a claimed call that its task left without recording an end (an
/// error, a panic, a dropped future): the call ends `failed`, reason
/// `internal_error`, from a task of its own. Should even that fail (no
/// runtime, no database), the lease runs out and the take-over settles it.
pub(super) struct Settle {
    pub(super) store: Store,
    pub(super) call_id: String,
    pub(super) attempt: Option<i64>,
    pub(super) done: bool,
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
                reason: Some(CallReason::InternalError),
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
                            Some(CallReason::InternalError.as_str()),
                            None,
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

impl Dialer {
    /// Ends the round: the call finishes, or is queued again when the
    /// retry policy allows another round.
    pub(super) async fn end_round(
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
        let reason = outcome.attempt_reason();
        let update = CallUpdate {
            sip_code: outcome.sip_code.map(i64::from),
            times_played: Some(i64::from(outcome.times_played)),
            reason: outcome.reason,
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
                            outcome.received.as_ref(),
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

    /// Runs a write that must land, retrying with back-off while the
    /// database is unreachable. Gives up only on errors that retrying
    /// cannot fix (a corrupt row).
    pub(super) async fn persist<T, F, Fut>(&self, mut op: F) -> Result<T, StoreError>
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
