//! SIP protocol core (sans-IO): an outbound-calling user agent over UDP.
//!
//! [`UserAgent`] takes datagrams and the current time in (`handle_datagram`,
//! `handle_timeout`) and hands datagrams, events and its next deadline out (`poll_*`). It
//! never sleeps, spawns or touches a socket, so RFC 3261 timers are tested by moving a fake
//! clock. May depend on `rsip`, `rand`, `thiserror`, `tracing`, std; never on tokio.
//! `crate::sip_io` drives it with a real socket.
//!
//! Inside: `message` (normalise/parse/render on rsip), `sdp` (offer/answer), `ua`
//! (client/server transactions keyed by branch, calls/dialogs keyed by handle and Call-ID).

pub mod digest;
mod message;
pub mod sdp;
mod ua;

#[cfg(test)]
mod tests;

use std::fmt;
use std::net::SocketAddr;

pub use ua::UserAgent;

/// Static configuration of the user agent.
#[derive(Debug, Clone)]
pub struct UaConfig {
    /// The UDP address the socket is bound to.
    pub local_addr: SocketAddr,
    /// Host (or IP) to put in Via/Contact instead of `local_addr`'s IP, e.g. a NAT's
    /// public address. The port is always `local_addr`'s.
    pub advertised_host: Option<String>,
    /// Value of the User-Agent header.
    pub user_agent: String,
}

/// A datagram the driver must send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    pub destination: SocketAddr,
    pub payload: Vec<u8>,
}

/// Identifies one outgoing call for its whole life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CallHandle(u64);

impl fmt::Display for CallHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "call#{}", self.0)
    }
}

/// What to call and how.
#[derive(Debug, Clone)]
pub struct OutgoingCall {
    /// e.g. `sip:+31612345678@127.0.0.1:5070`
    pub request_uri: String,
    /// Where the INVITE goes (the resolved trunk proxy).
    pub destination: SocketAddr,
    /// Caller ID, e.g. `sip:+31508200000@sip.provider.example`.
    pub from_uri: String,
    pub from_display: Option<String>,
    pub media: sdp::MediaOffer,
}

/// Something the application must know about a call.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// Every provisional response, 100 included.
    Progress {
        call: CallHandle,
        status: u16,
        early_media: Option<sdp::MediaAnswer>,
    },
    /// A 2xx with a usable SDP answer; our ACK is already queued.
    Answered {
        call: CallHandle,
        media: sdp::MediaAnswer,
    },
    /// A key press sent as SIP INFO (application/dtmf-relay or application/dtmf).
    Dtmf { call: CallHandle, digit: char },
    /// Exactly once per call; the last event for that call.
    Ended { call: CallHandle, reason: EndReason },
}

/// Why a call ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EndReason {
    /// Final 3xx-6xx to the INVITE (ACKed at transaction level).
    Rejected { status: u16, reason: String },
    /// Timer B: no response at all.
    Timeout,
    /// The far end sent BYE (we answered 200).
    RemoteHangup,
    /// Our BYE completed (any final response, or Timer F).
    LocalHangup,
    /// We cancelled before the answer (CANCEL -> 487, or hangup before any response).
    Canceled,
    /// 2xx without a usable SDP answer: we ACKed, then sent BYE.
    MediaFailed { reason: String },
}

impl fmt::Display for EndReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EndReason::Rejected { status, reason } => write!(f, "rejected: {status} {reason}"),
            EndReason::Timeout => f.write_str("no response (timeout)"),
            EndReason::RemoteHangup => f.write_str("remote hangup"),
            EndReason::LocalHangup => f.write_str("local hangup"),
            EndReason::Canceled => f.write_str("canceled"),
            EndReason::MediaFailed { reason } => write!(f, "media negotiation failed: {reason}"),
        }
    }
}
