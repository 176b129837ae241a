//! The dialer's decisions: when to retry, and what an attempt tells a trunk's breaker.

use super::Dialer;
use crate::call::AttemptOutcome;
use crate::config::RetryOn;
use crate::domain::{self, CallReason, CallStatus};
use crate::store::ClaimedCall;

impl Dialer {
    /// When the next round may start, if the policy allows one.
    pub(super) fn retry_at(&self, claimed: &ClaimedCall, outcome: &AttemptOutcome) -> Option<i64> {
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
        let refused = outcome.reason == Some(CallReason::RiskDenied);
        if !retriable || refused || claimed.round >= d.max_attempts || outcome.times_played > 0 {
            return None;
        }
        let at = domain::now_ms() + i64::try_from(d.retry_delay.as_millis()).unwrap_or(i64::MAX);
        // A retry after the verification expired reaches nobody.
        (at < claimed.expires_at).then_some(at)
    }
}

/// What an attempt's outcome says about the trunk, for its breaker:
/// `Some(true)` the trunk failed (5xx, 408, no response, transport error),
/// `Some(false)` it answered for itself, `None` nothing either way.
pub(super) fn breaker_signal(outcome: &AttemptOutcome) -> Option<bool> {
    if outcome.failover {
        Some(true)
    } else if outcome.sip_code.is_some() {
        Some(false)
    } else {
        None
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
}
