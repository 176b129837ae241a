//! Reading and cancelling a verification, and the shapes it is shown in.

use serde::Serialize;

use super::{Verifier, VerifyError};
use crate::domain::{self, CallReason, CallStatus, PhoneNumber, RtpReceived, VerificationStatus};
use crate::store::{CallRow, StoreError, VerificationRow};

/// What the auth service sends to start a verification.
#[derive(Debug, Default, Clone, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StartRequest {
    /// The user whose registered number to call (the primary one unless `to`
    /// names another of theirs).
    #[schema(min_length = 1, max_length = 128)]
    pub user_id: Option<String>,
    /// E.164 (`+31612345678`), or national with the configured default region.
    #[schema(min_length = 3, max_length = 32, pattern = "^\\+?[0-9 ().-]+$")]
    pub to: Option<String>,
    /// One of the installed prompt packs (e.g. `nl`, `en`).
    #[schema(min_length = 1, max_length = 16)]
    pub locale: Option<String>,
    /// A code chosen by the caller; otherwise the gateway generates one.
    #[schema(pattern = "^[0-9]{4,10}$")]
    pub code: Option<String>,
    /// Receives signed webhooks on every status change.
    #[schema(max_length = 2048, pattern = "^https?://")]
    pub callback_url: Option<String>,
    /// Session-bound call: the 201 answer carries two random digits
    /// (`bind_digits`) for the login screen, and the call reads the code only
    /// after the person keys them (SPEC §6).
    #[serde(default)]
    pub bind_digits: bool,
}

/// The verification object of SPEC §3.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq, utoipa::ToSchema)]
pub struct VerificationView {
    pub id: String,
    pub status: VerificationStatus,
    pub to: String,
    pub locale: String,
    pub expires_at: String,
    pub attempts_left: i64,
    pub call: CallView,
    /// Only in the answer to the start (and its idempotent replay) of a
    /// verification asked with `"bind_digits": true`: the two digits to show on
    /// the login screen. Never in later reads.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub bind_digits: Option<String>,
}

#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq, utoipa::ToSchema)]
pub struct CallView {
    pub status: CallStatus,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub sip_code: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub trunk: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub answered_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub ended_at: Option<String>,
    pub times_played: i64,
    /// Why the call ended as it did when its status alone does not say:
    /// `expired` (still queued when the verification expired),
    /// `gateway_restart` (its instance died after dialling), `shutdown`,
    /// `no_keypress` (a key gate got no key, or not the digit asked for),
    /// `bind_mismatch` (not the `bind_digits` shown), `srtp_unavailable`,
    /// `risk_denied`, `canceled`, `internal_error`.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub reason: Option<CallReason>,
    pub attempts: Vec<AttemptView>,
}

#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq, utoipa::ToSchema)]
pub struct AttemptView {
    pub to: String,
    pub trunk: String,
    pub status: String,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub sip_code: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub reason: Option<String>,
    pub started_at: String,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub ended_at: Option<String>,
    /// What the gateway measured of the far end's RTP during this attempt; absent
    /// when no media came (unanswered, or nothing arrived).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub received: Option<ReceivedView>,
}

/// The far end's RTP as the gateway received it during one attempt (RFC 3550
/// receive statistics, taken when the attempt ended, however it ended).
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq, utoipa::ToSchema)]
pub struct ReceivedView {
    /// RTP packets received (with SRTP: those that authenticated).
    pub packets: u64,
    /// Packets lost on the way, from the sequence numbers (expected − received).
    pub lost: u64,
    /// `lost / (packets + lost)`, 0–1.
    pub loss: f64,
    /// Interarrival jitter at the end of the call (RFC 3550 A.8), milliseconds.
    pub jitter_ms: f64,
    /// `PCMU` or `PCMA`: the law of the far end's audio; absent when none came.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub codec: Option<String>,
    /// Packets dropped for failing SRTP authentication or the replay check.
    pub srtp_rejected: u64,
}

impl From<RtpReceived> for ReceivedView {
    fn from(r: RtpReceived) -> Self {
        Self {
            packets: r.packets,
            lost: r.lost,
            // Four decimals are as many as the figures carry.
            loss: (r.loss() * 10_000.0).round() / 10_000.0,
            jitter_ms: r.jitter_ms(),
            codec: r.codec,
            srtp_rejected: r.srtp_rejected,
        }
    }
}

#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq, utoipa::ToSchema)]
pub struct CheckResult {
    pub id: String,
    pub status: VerificationStatus,
    pub valid: bool,
    pub attempts_left: i64,
}

impl Verifier {
    /// The stored status, with a pending verification past its expiry
    /// marked expired on the way (the housekeeping sweep may not have run).
    pub(super) async fn current_status(
        &self,
        v: &VerificationRow,
        now: i64,
    ) -> Result<VerificationStatus, VerifyError> {
        if v.status == VerificationStatus::Pending && now >= v.expires_at {
            self.store
                .finish_verification(&v.id, VerificationStatus::Expired, now)
                .await?;
            return Ok(VerificationStatus::Expired);
        }
        Ok(v.status)
    }

    pub async fn view(&self, id: &str) -> Result<VerificationView, VerifyError> {
        // The call first: a call's end and its verification's end are written
        // in one transaction, so reading the call before the verification
        // never shows an ended call beside a verification that looks pending
        // (two statements are two snapshots under READ COMMITTED).
        //
        // The call and its attempts are two reads too: an attempt's end and its call's
        // end commit together, so attempts read after the call may already show the
        // end the call row did not (a cancel answered `answered` beside an attempt
        // `canceled`). Read the call again after the attempts; if it moved, read both
        // again (a call changes a few times in its life: this settles at once).
        let mut c = self.store.get_call_of(id).await?;
        let mut attempts = match &c {
            Some(c) => self.store.attempts(&c.id).await?,
            None => Vec::new(),
        };
        for _ in 0..5 {
            let again = self.store.get_call_of(id).await?;
            if same_call(c.as_ref(), again.as_ref()) {
                break;
            }
            c = again;
            attempts = match &c {
                Some(c) => self.store.attempts(&c.id).await?,
                None => Vec::new(),
            };
        }
        let v = self
            .store
            .get_verification(id)
            .await?
            .ok_or(VerifyError::NotFound)?;
        let status = self.current_status(&v, domain::now_ms()).await?;
        let c = c.ok_or_else(|| {
            VerifyError::Store(StoreError::Corrupt(format!(
                "verification {id} has no call"
            )))
        })?;
        let attempts = attempts
            .into_iter()
            .map(|a| AttemptView {
                to: PhoneNumber::from_trusted(a.number).masked(),
                trunk: a.trunk,
                status: a.status,
                sip_code: a.sip_code,
                reason: a.reason,
                started_at: domain::format_ms(a.started_at),
                ended_at: a.ended_at.map(domain::format_ms),
                received: a.received.map(ReceivedView::from),
            })
            .collect();
        Ok(VerificationView {
            id: v.id,
            status,
            to: PhoneNumber::from_trusted(v.phone).masked(),
            locale: v.locale,
            expires_at: domain::format_ms(v.expires_at),
            attempts_left: v.attempts_left,
            call: CallView {
                status: c.status,
                sip_code: c.sip_code,
                trunk: c.trunk,
                answered_at: c.answered_at.map(domain::format_ms),
                ended_at: c.ended_at.map(domain::format_ms),
                times_played: c.times_played,
                reason: c.reason,
                attempts,
            },
            bind_digits: None,
        })
    }

    /// Cancels a pending verification (and hangs up its call). Canceling a
    /// canceled one again is harmless; any other final status is a conflict.
    pub async fn cancel(&self, id: &str, actor: &str) -> Result<VerificationView, VerifyError> {
        let now = domain::now_ms();
        if self.store.cancel_verification(id, now).await? {
            self.cancel_wake.notify_waiters();
            self.audit(actor, "verification.cancel", Some(id), "canceled", None)
                .await;
            return self.view(id).await;
        }
        let view = self.view(id).await?;
        match view.status {
            VerificationStatus::Canceled => Ok(view),
            VerificationStatus::Pending => Err(VerifyError::Conflict("changing")),
            other => Err(VerifyError::Conflict(other.as_str())),
        }
    }
}

/// Whether two reads of a call show the same state (what the view shows of it).
fn same_call(a: Option<&CallRow>, b: Option<&CallRow>) -> bool {
    match (a, b) {
        (None, None) => true,
        (Some(a), Some(b)) => {
            a.id == b.id
                && a.status == b.status
                && a.sip_code == b.sip_code
                && a.trunk == b.trunk
                && a.answered_at == b.answered_at
                && a.ended_at == b.ended_at
                && a.times_played == b.times_played
                && a.reason == b.reason
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(status: CallStatus, ended_at: Option<i64>) -> CallRow {
        CallRow {
            id: "c1".into(),
            verification_id: "v1".into(),
            status,
            sip_code: Some(200),
            trunk: Some("qa:qa-alice".into()),
            answered_at: Some(1),
            ended_at,
            times_played: 1,
            reason: None,
        }
    }

    #[test]
    fn a_call_that_ended_between_two_reads_is_not_the_same() {
        let answered = call(CallStatus::Answered, None);
        assert!(same_call(Some(&answered), Some(&answered.clone())));
        assert!(same_call(None, None));
        let canceled = CallRow {
            reason: Some(CallReason::Canceled),
            ..call(CallStatus::Canceled, Some(2))
        };
        assert!(!same_call(Some(&answered), Some(&canceled)));
        assert!(!same_call(Some(&answered), None));
        let played = CallRow {
            times_played: 2,
            ..answered.clone()
        };
        assert!(!same_call(Some(&answered), Some(&played)));
    }
}
