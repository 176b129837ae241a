//! How an attempt ended: the typed outcome, why we hung up, and the mapping from
//! SIP endings and final responses to call statuses.

use crate::domain::{CallReason, CallStatus, RtpReceived};
use crate::sip::sdp::SdpError;
use crate::sip::EndReason;

/// How an attempt ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttemptOutcome {
    pub status: CallStatus,
    pub sip_code: Option<u16>,
    /// The call's reason (docs/api.md `call.reason`), when its status alone does not
    /// say why it ended.
    pub reason: Option<CallReason>,
    /// What the attempt record says beyond the reason, for people (`486 Busy Here`).
    pub detail: Option<String>,
    pub times_played: u32,
    /// Worth trying the next trunk (5xx, 6xx other than busy/decline, no
    /// response at all, or no trunk capacity).
    pub failover: bool,
    /// What we measured of the far end's RTP, when any media was received.
    pub received: Option<RtpReceived>,
}

impl AttemptOutcome {
    /// Failed for a cause that only the attempt record tells.
    pub fn failed(detail: impl Into<String>, failover: bool) -> Self {
        Self {
            status: CallStatus::Failed,
            sip_code: None,
            reason: None,
            detail: Some(detail.into()),
            times_played: 0,
            failover,
            received: None,
        }
    }

    /// Failed on the gateway before anything reached the trunk (its name does not
    /// resolve, no target left): no SIP status; worth the next trunk.
    pub fn not_sent(detail: impl Into<String>) -> Self {
        Self {
            reason: Some(CallReason::NotSent),
            ..Self::failed(detail, true)
        }
    }

    /// Failed, for `reason`; never worth another trunk.
    pub fn because(reason: CallReason) -> Self {
        Self {
            status: CallStatus::Failed,
            sip_code: None,
            reason: Some(reason),
            detail: None,
            times_played: 0,
            failover: false,
            received: None,
        }
    }

    /// The attempt record's reason: the detail, else the call's reason.
    pub fn attempt_reason(&self) -> Option<&str> {
        self.detail
            .as_deref()
            .or(self.reason.map(CallReason::as_str))
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
    /// The call's reason when we hung up for this cause; none for a ring timeout
    /// (the status, `no_answer`, says it).
    pub fn reason(self) -> Option<CallReason> {
        match self {
            Self::Canceled => Some(CallReason::Canceled),
            Self::RingTimeout => None,
            Self::NoKeypress => Some(CallReason::NoKeypress),
            Self::BindMismatch => Some(CallReason::BindMismatch),
            Self::Shutdown => Some(CallReason::Shutdown),
            Self::SrtpUnavailable => Some(CallReason::SrtpUnavailable),
        }
    }

    /// The reason and detail an attempt we ended for this cause records.
    fn parts(self) -> (Option<CallReason>, Option<String>) {
        match self.reason() {
            Some(r) => (Some(r), None),
            None => (None, Some("no answer within ring_timeout".into())),
        }
    }

    /// The call status of an unanswered call we ended for this cause.
    fn unanswered_status(self) -> CallStatus {
        match self {
            Self::Canceled => CallStatus::Canceled,
            Self::RingTimeout => CallStatus::NoAnswer,
            Self::NoKeypress | Self::BindMismatch | Self::Shutdown | Self::SrtpUnavailable => {
                CallStatus::Failed
            }
        }
    }
}

/// An outcome that reached no final response and played nothing.
fn unanswered(status: CallStatus, parts: (Option<CallReason>, Option<String>)) -> AttemptOutcome {
    AttemptOutcome {
        status,
        sip_code: None,
        reason: parts.0,
        detail: parts.1,
        times_played: 0,
        failover: false,
        received: None,
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
    let ours_parts = ours.map(HangupCause::parts);
    match reason {
        EndReason::RemoteHangup | EndReason::LocalHangup if answered => {
            answered_end(&reason, times_played, ours)
        }
        EndReason::MediaFailed { error } => AttemptOutcome {
            status: CallStatus::Failed,
            sip_code: Some(200),
            reason: matches!(error, SdpError::SrtpUnavailable(_))
                .then_some(CallReason::SrtpUnavailable),
            detail: Some(error.to_string()),
            times_played: 0,
            failover: false,
            received: None,
        },
        EndReason::NotSent { reason } => AttemptOutcome {
            // Another trunk has another proxy: worth trying.
            failover: ours.is_none(),
            ..unanswered(
                CallStatus::Failed,
                (Some(CallReason::NotSent), Some(reason)),
            )
        },
        EndReason::Rejected { status, reason } => {
            let (call_status, failover) = classify_final(status);
            let (call_status, failover, parts) = match (status, ours) {
                // The 487 that answers our CANCEL: our cause decides.
                (487, Some(c)) => (c.unanswered_status(), false, c.parts()),
                _ => (
                    call_status,
                    failover && ours.is_none(),
                    (None, Some(format!("{status} {reason}"))),
                ),
            };
            AttemptOutcome {
                sip_code: Some(status),
                failover,
                ..unanswered(call_status, parts)
            }
        }
        EndReason::Canceled => match ours {
            Some(c) => unanswered(c.unanswered_status(), c.parts()),
            None => unanswered(CallStatus::NoAnswer, (None, None)),
        },
        EndReason::Timeout if ours.is_none() => {
            AttemptOutcome::failed("no response from the trunk (timeout)", true)
        }
        EndReason::Timeout | EndReason::RemoteHangup | EndReason::LocalHangup => unanswered(
            ours.map_or(CallStatus::Failed, HangupCause::unanswered_status),
            ours_parts.unwrap_or((None, Some("call ended before it was answered".into()))),
        ),
    }
}

/// An answered call that hung up: completed once the code was read.
fn answered_end(
    reason: &EndReason,
    times_played: u32,
    ours: Option<HangupCause>,
) -> AttemptOutcome {
    let status = if times_played > 0 {
        CallStatus::Completed
    } else if ours == Some(HangupCause::Canceled) {
        CallStatus::Canceled
    } else {
        CallStatus::Failed
    };
    let (reason, detail) = match (reason, times_played, ours) {
        (_, n, _) if n > 0 => (None, None),
        (EndReason::RemoteHangup, _, _) => {
            (None, Some("callee hung up before the code was read".into()))
        }
        (_, _, Some(c)) => c.parts(),
        (_, _, None) => (None, Some("hung up before the code was read".into())),
    };
    AttemptOutcome {
        status,
        sip_code: Some(200),
        reason,
        detail,
        times_played,
        failover: false,
        received: None,
    }
}

/// Whether an attempt that ended this way goes on to the same trunk's next DNS
/// target (RFC 3263 §4.3): nothing answered (Timer B, a transport failure, nothing
/// sent) or 503 Service Unavailable, and only when it would fail over anyway (not
/// canceled or hung up by us). Any other answer is the trunk's own, and the caller
/// also stops once the far end alerted (a provisional beyond 100).
pub(super) fn next_target(o: &AttemptOutcome) -> bool {
    o.failover && o.times_played == 0 && matches!(o.sip_code, None | Some(503))
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
        assert!(o.detail.unwrap().contains("hung up"));
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
        assert_eq!(o.reason, Some(CallReason::Shutdown));
        let o = end_outcome(EndReason::Canceled, false, 0, s);
        assert_eq!((o.status, o.failover), (CallStatus::Failed, false));
        let o = end_outcome(EndReason::Timeout, false, 0, s);
        assert_eq!((o.status, o.failover), (CallStatus::Failed, false));
        let o = end_outcome(EndReason::LocalHangup, true, 2, s);
        assert_eq!(o.status, CallStatus::Completed);
    }

    #[test]
    fn only_silence_transport_failures_and_503_move_to_the_next_target() {
        let rejected = |status: u16| {
            end_outcome(
                EndReason::Rejected {
                    status,
                    reason: "x".into(),
                },
                false,
                0,
                None,
            )
        };
        assert!(next_target(&end_outcome(
            EndReason::Timeout,
            false,
            0,
            None
        )));
        assert!(next_target(&rejected(503)));
        let not_sent = EndReason::NotSent {
            reason: "no route".into(),
        };
        assert!(next_target(&end_outcome(not_sent, false, 0, None)));
        assert!(next_target(&AttemptOutcome::not_sent("DNS: x")));
        // Answers of the trunk's own go to the next trunk, or nowhere.
        for status in [408, 500, 502, 504, 604, 486, 404, 480, 603] {
            assert!(!next_target(&rejected(status)), "{status}");
        }
        // Ours: a cancel or a ring timeout never tries another target.
        let canceled = Some(HangupCause::Canceled);
        assert!(!next_target(&end_outcome(
            EndReason::Timeout,
            false,
            0,
            canceled
        )));
        assert!(!next_target(&end_outcome(
            EndReason::Canceled,
            false,
            0,
            None
        )));
        assert!(!next_target(&end_outcome(
            EndReason::LocalHangup,
            true,
            2,
            None
        )));
    }

    #[test]
    fn a_408_fails_over_to_the_next_trunk() {
        assert_eq!(classify_final(408), (CallStatus::Failed, true));
    }
}
