//! Domain types: values that are valid by construction (`PhoneNumber`,
//! `OtpCode`, ids) and the status enums with their legal transitions.
//! Depends on nothing else in the crate.

mod code;
mod keys;
mod phone;
mod reason;
mod rtp;
pub mod sdes;

pub use code::{OtpCode, OtpCodeError};
pub use keys::Keys;
pub use phone::{NumberKind, PhoneNumber, PhoneNumberError, Region};
pub use reason::CallReason;
pub use rtp::RtpReceived;

use serde::{Deserialize, Serialize};

/// `vf_` + ULID: sortable by creation time, unguessable enough to be a handle
/// but never an authorisation (every route needs a bearer token).
pub fn new_verification_id() -> String {
    format!("vf_{}", ulid::Ulid::new())
}

pub fn new_call_id() -> String {
    format!("call_{}", ulid::Ulid::new())
}

/// Status of a verification as the auth service sees it (SPEC §3).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum VerificationStatus {
    Pending,
    Approved,
    Expired,
    Canceled,
    Failed,
}

impl VerificationStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Approved => "approved",
            Self::Expired => "expired",
            Self::Canceled => "canceled",
            Self::Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "pending" => Self::Pending,
            "approved" => Self::Approved,
            "expired" => Self::Expired,
            "canceled" => Self::Canceled,
            "failed" => Self::Failed,
            _ => return None,
        })
    }

    pub fn is_final(self) -> bool {
        self != Self::Pending
    }
}

/// Status of the phone call of a verification (SPEC §3).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum CallStatus {
    Queued,
    Dialing,
    Ringing,
    Answered,
    Completed,
    Busy,
    NoAnswer,
    Rejected,
    Failed,
    Canceled,
}

impl CallStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Dialing => "dialing",
            Self::Ringing => "ringing",
            Self::Answered => "answered",
            Self::Completed => "completed",
            Self::Busy => "busy",
            Self::NoAnswer => "no_answer",
            Self::Rejected => "rejected",
            Self::Failed => "failed",
            Self::Canceled => "canceled",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "queued" => Self::Queued,
            "dialing" => Self::Dialing,
            "ringing" => Self::Ringing,
            "answered" => Self::Answered,
            "completed" => Self::Completed,
            "busy" => Self::Busy,
            "no_answer" => Self::NoAnswer,
            "rejected" => Self::Rejected,
            "failed" => Self::Failed,
            "canceled" => Self::Canceled,
            _ => return None,
        })
    }

    pub fn is_final(self) -> bool {
        matches!(
            self,
            Self::Completed
                | Self::Busy
                | Self::NoAnswer
                | Self::Rejected
                | Self::Failed
                | Self::Canceled
        )
    }

    fn rank(self) -> u8 {
        match self {
            Self::Queued => 0,
            Self::Dialing => 1,
            Self::Ringing => 2,
            Self::Answered => 3,
            _ => 4,
        }
    }

    /// Whether a call may move from `self` to `next`. Calls only move
    /// forward; a final status never changes. `Dialing` may repeat when the
    /// dialer fails over to the next trunk, and a call in progress can go
    /// back to `Queued` when its instance gives it up or a retry follows.
    pub fn can_become(self, next: CallStatus) -> bool {
        if self.is_final() {
            return false;
        }
        if next == Self::Queued {
            return self != Self::Queued;
        }
        next.rank() > self.rank() || (self == Self::Dialing && next == Self::Dialing)
    }
}

/// Wall-clock time as unix milliseconds, the unit every stored time uses.
pub fn now_ms() -> i64 {
    let now = time::OffsetDateTime::now_utc();
    (now.unix_timestamp_nanos() / 1_000_000) as i64
}

/// RFC 3339 (UTC, second precision) for API responses.
pub fn format_ms(ms: i64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp(ms.div_euclid(1000))
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn call_status_moves_forward_only() {
        use CallStatus::*;
        assert!(Queued.can_become(Dialing));
        assert!(Dialing.can_become(Ringing));
        assert!(Ringing.can_become(Answered));
        assert!(Answered.can_become(Completed));
        assert!(Ringing.can_become(NoAnswer));
        assert!(Dialing.can_become(Failed));
        assert!(Queued.can_become(Canceled));
        assert!(!Answered.can_become(Ringing));
        assert!(!Completed.can_become(Failed));
        assert!(!Busy.can_become(Completed));
        // A round that ends in a retry queues the call again.
        assert!(Ringing.can_become(Queued));
        assert!(!Queued.can_become(Queued));
        assert!(!NoAnswer.can_become(Queued));
    }

    #[test]
    fn statuses_round_trip_through_text() {
        for s in [
            CallStatus::Queued,
            CallStatus::NoAnswer,
            CallStatus::Completed,
            CallStatus::Canceled,
        ] {
            assert_eq!(CallStatus::parse(s.as_str()), Some(s));
        }
        for s in [VerificationStatus::Pending, VerificationStatus::Approved] {
            assert_eq!(VerificationStatus::parse(s.as_str()), Some(s));
        }
        assert_eq!(CallStatus::parse("nope"), None);
    }

    #[test]
    fn ids_have_prefixes_and_are_unique() {
        let a = new_verification_id();
        let b = new_verification_id();
        assert!(a.starts_with("vf_"));
        assert_ne!(a, b);
        assert!(new_call_id().starts_with("call_"));
    }
}
