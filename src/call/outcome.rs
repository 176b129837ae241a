//! How an attempt ended: the typed outcome, why we hung up, and the mapping from
//! SIP endings and final responses to call statuses.

use crate::domain::CallStatus;
use crate::sip::EndReason;

/// How an attempt ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttemptOutcome {
    pub status: CallStatus,
    pub sip_code: Option<u16>,
    pub reason: Option<String>,
    pub times_played: u32,
    /// Worth trying the next trunk (5xx, 6xx other than busy/decline, no
    /// response at all, or no trunk capacity).
    pub failover: bool,
}

impl AttemptOutcome {
    pub fn failed(reason: impl Into<String>, failover: bool) -> Self {
        Self {
            status: CallStatus::Failed,
            sip_code: None,
            reason: Some(reason.into()),
            times_played: 0,
            failover,
        }
    }
}

/// Why we hang up a call ourselves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HangupCause {
    /// The verification stopped being pending (canceled, approved, expired).
    Canceled,
    /// Nobody answered within the trunk's `ring_timeout`.
    RingTimeout,
    /// A key gate (`require_keypress`, `bind_digits`): no key within the time allowed,
    /// or (`require_keypress`) not the digit asked for.
    NoKeypress,
    /// `bind_digits`: the digits keyed are not the two on the login screen.
    BindMismatch,
    /// The gateway is stopping and the call outlived `shutdown_grace`.
    Shutdown,
    /// `srtp = "required"` and the answer gave no key we can use: not one packet of
    /// plain RTP goes out.
    SrtpUnavailable,
}

impl HangupCause {
    /// The reason recorded for the attempt (and the call).
    pub fn reason(self) -> &'static str {
        match self {
            Self::Canceled => "canceled",
            Self::RingTimeout => "no answer within ring_timeout",
            Self::NoKeypress => "no_keypress",
            Self::BindMismatch => "bind_mismatch",
            Self::Shutdown => "shutdown",
            Self::SrtpUnavailable => "srtp_unavailable",
        }
    }
}

/// Maps how the SIP call ended to a call status (SPEC §4). `ours` is why we
/// hung up, if we did.
pub(super) fn end_outcome(
    reason: EndReason,
    answered: bool,
    times_played: u32,
    ours: Option<HangupCause>,
) -> AttemptOutcome {
    let canceled = ours == Some(HangupCause::Canceled);
    let unanswered_status = match ours {
        Some(HangupCause::Canceled) => CallStatus::Canceled,
        Some(HangupCause::RingTimeout) => CallStatus::NoAnswer,
        Some(
            HangupCause::NoKeypress
            | HangupCause::BindMismatch
            | HangupCause::Shutdown
            | HangupCause::SrtpUnavailable,
        )
        | None => CallStatus::Failed,
    };
    let ours_reason = ours.map(|c| c.reason().to_string());
    match reason {
        EndReason::RemoteHangup | EndReason::LocalHangup if answered => AttemptOutcome {
            status: if times_played > 0 {
                CallStatus::Completed
            } else if canceled {
                CallStatus::Canceled
            } else {
                CallStatus::Failed
            },
            sip_code: Some(200),
            reason: match (&reason, times_played) {
                (_, n) if n > 0 => None,
                (EndReason::RemoteHangup, _) => {
                    Some("callee hung up before the code was read".into())
                }
                _ => ours_reason.or_else(|| Some("hung up before the code was read".into())),
            },
            times_played,
            failover: false,
        },
        EndReason::MediaFailed { reason } => AttemptOutcome {
            status: CallStatus::Failed,
            sip_code: Some(200),
            reason: Some(reason),
            times_played: 0,
            failover: false,
        },
        EndReason::Rejected { status, reason } => {
            let (call_status, failover) = classify_final(status);
            let (call_status, failover) = match (status, ours) {
                // The 487 that answers our CANCEL: our cause decides.
                (487, Some(_)) => (unanswered_status, false),
                _ => (call_status, failover && ours.is_none()),
            };
            AttemptOutcome {
                status: call_status,
                sip_code: Some(status),
                reason: Some(match &ours_reason {
                    Some(r) if status == 487 => r.clone(),
                    _ => format!("{status} {reason}"),
                }),
                times_played: 0,
                failover,
            }
        }
        EndReason::Canceled => AttemptOutcome {
            status: match ours {
                Some(_) => unanswered_status,
                None => CallStatus::NoAnswer,
            },
            sip_code: None,
            reason: ours_reason,
            times_played: 0,
            failover: false,
        },
        EndReason::Timeout if ours.is_none() => {
            AttemptOutcome::failed("no response from the trunk (timeout)", true)
        }
        EndReason::Timeout | EndReason::RemoteHangup | EndReason::LocalHangup => AttemptOutcome {
            status: match ours {
                Some(_) => unanswered_status,
                None => CallStatus::Failed,
            },
            sip_code: None,
            reason: ours_reason.or_else(|| Some("call ended before it was answered".into())),
            times_played: 0,
            failover: false,
        },
    }
}

/// Final non-2xx response -> call status, and whether to try the next trunk.
pub fn classify_final(status: u16) -> (CallStatus, bool) {
    match status {
        486 | 600 => (CallStatus::Busy, false),
        // 408 from a trunk: nothing downstream answered its INVITE, worth
        // another trunk (issue 8); 480/487: the callee did not pick up.
        408 => (CallStatus::Failed, true),
        480 | 487 => (CallStatus::NoAnswer, false),
        603 => (CallStatus::Rejected, false),
        488 | 606 => (CallStatus::Failed, false),
        400..=499 => (CallStatus::Rejected, false),
        500..=599 | 601..=699 => (CallStatus::Failed, true),
        _ => (CallStatus::Failed, false),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn final_responses_map_to_statuses() {
        assert_eq!(classify_final(486), (CallStatus::Busy, false));
        assert_eq!(classify_final(600), (CallStatus::Busy, false));
        assert_eq!(classify_final(603), (CallStatus::Rejected, false));
        assert_eq!(classify_final(404), (CallStatus::Rejected, false));
        assert_eq!(classify_final(480), (CallStatus::NoAnswer, false));
        assert_eq!(classify_final(503), (CallStatus::Failed, true));
        assert_eq!(classify_final(604), (CallStatus::Failed, true));
        assert_eq!(classify_final(488), (CallStatus::Failed, false));
    }

    #[test]
    fn answered_call_completes_only_if_code_was_read() {
        let o = end_outcome(EndReason::LocalHangup, true, 3, None);
        assert_eq!(o.status, CallStatus::Completed);
        let o = end_outcome(EndReason::RemoteHangup, true, 0, None);
        assert_eq!(o.status, CallStatus::Failed);
        assert!(o.reason.unwrap().contains("hung up"));
        let o = end_outcome(EndReason::RemoteHangup, true, 1, None);
        assert_eq!(o.status, CallStatus::Completed);
    }

    #[test]
    fn canceled_answered_call_is_canceled_unless_the_code_was_read() {
        let c = Some(HangupCause::Canceled);
        let o = end_outcome(EndReason::LocalHangup, true, 0, c);
        assert_eq!(o.status, CallStatus::Canceled);
        let o = end_outcome(EndReason::LocalHangup, true, 1, c);
        assert_eq!(o.status, CallStatus::Completed);
    }

    #[test]
    fn ring_timeout_cancel_is_no_answer() {
        let rt = Some(HangupCause::RingTimeout);
        let o = end_outcome(EndReason::Canceled, false, 0, rt);
        assert_eq!(o.status, CallStatus::NoAnswer);
        let o = end_outcome(
            EndReason::Rejected {
                status: 487,
                reason: "Request Terminated".into(),
            },
            false,
            0,
            rt,
        );
        assert_eq!(o.status, CallStatus::NoAnswer);
    }

    #[test]
    fn shutdown_hangup_fails_unread_calls_and_never_fails_over() {
        let s = Some(HangupCause::Shutdown);
        let o = end_outcome(EndReason::LocalHangup, true, 0, s);
        assert_eq!(o.status, CallStatus::Failed);
        assert_eq!(o.reason.as_deref(), Some("shutdown"));
        let o = end_outcome(EndReason::Canceled, false, 0, s);
        assert_eq!((o.status, o.failover), (CallStatus::Failed, false));
        let o = end_outcome(EndReason::Timeout, false, 0, s);
        assert_eq!((o.status, o.failover), (CallStatus::Failed, false));
        let o = end_outcome(EndReason::LocalHangup, true, 2, s);
        assert_eq!(o.status, CallStatus::Completed);
    }

    #[test]
    fn a_408_fails_over_to_the_next_trunk() {
        assert_eq!(classify_final(408), (CallStatus::Failed, true));
    }
}
