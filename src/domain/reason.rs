//! Why a call ended as it did, when its status alone does not say (`call.reason` in
//! the API, `calls.reason` in the database). One type for the dialer, the call engine,
//! the store and the API; it is written and read as the strings docs/api.md lists.

use serde::{Deserialize, Serialize};

/// The machine reason of a call's end (docs/api.md `call.reason`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum CallReason {
    /// Still queued when the verification expired.
    Expired,
    /// Its instance died after dialling; never dialled again.
    GatewayRestart,
    /// Hung up when the gateway stopped (`shutdown_grace` ran out).
    Shutdown,
    /// A key gate got no key in time, or (`require_keypress`) not the digit asked for.
    NoKeypress,
    /// `bind_digits`: the digits keyed are not the two shown on the login screen.
    BindMismatch,
    /// The trunk requires SRTP and the answer offered no usable key.
    SrtpUnavailable,
    /// The pre-dial risk hook said no.
    RiskDenied,
    /// The verification was canceled (or approved) while the call was up.
    Canceled,
    /// The call's task ended without settling it (an error or a panic).
    InternalError,
    /// The attempt failed on the gateway before anything was sent to the trunk (a
    /// Request-URI that cannot be built, a trunk name that does not resolve): no SIP
    /// status, the trunk never saw it.
    NotSent,
}

impl CallReason {
    /// Every reason, in the order docs/api.md lists them.
    pub const ALL: [CallReason; 10] = [
        Self::Expired,
        Self::GatewayRestart,
        Self::Shutdown,
        Self::NoKeypress,
        Self::BindMismatch,
        Self::SrtpUnavailable,
        Self::RiskDenied,
        Self::Canceled,
        Self::InternalError,
        Self::NotSent,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Expired => "expired",
            Self::GatewayRestart => "gateway_restart",
            Self::Shutdown => "shutdown",
            Self::NoKeypress => "no_keypress",
            Self::BindMismatch => "bind_mismatch",
            Self::SrtpUnavailable => "srtp_unavailable",
            Self::RiskDenied => "risk_denied",
            Self::Canceled => "canceled",
            Self::InternalError => "internal_error",
            Self::NotSent => "not_sent",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.as_str() == s)
    }
}

impl std::fmt::Display for CallReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_read_back_as_written_and_serialise_to_the_same_string() {
        for r in CallReason::ALL {
            assert_eq!(CallReason::parse(r.as_str()), Some(r));
            let json = serde_json::to_string(&r).unwrap_or_default();
            assert_eq!(json, format!("\"{}\"", r.as_str()));
        }
        assert_eq!(CallReason::parse("486 Busy Here"), None);
    }
}
