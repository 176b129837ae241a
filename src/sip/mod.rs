//! SIP protocol core (sans-IO): an outbound-calling user agent over UDP.
//!
//! [`UserAgent`] takes datagrams and the current time in (`handle_datagram`,
//! `handle_timeout`) and hands datagrams, events and its next deadline out (`poll_*`). It
//! never sleeps, spawns or touches a socket, so RFC 3261 timers are tested by moving a fake
//! clock. May depend on `rsip`, `rand`, `thiserror`, `tracing`, std; never on tokio.
//! `crate::sip_io` drives it with a real socket.
//!
//! Inside: `message` (normalise/parse/render on rsip), `grammar` (the RFC 3261 §25.1
//! grammar of the header values we read: lists, name-addr with parameters, Via), `sdp`
//! (offer/answer), `digest` (RFC 7616 digest auth), `ua` (client/server transactions keyed by branch, calls/dialogs
//! keyed by handle and Call-ID, and per-trunk registration and OPTIONS keepalive in
//! `ua::trunk`).

pub mod digest;
mod grammar;
mod message;
pub mod policy;
mod render;
pub mod sdp;
mod ua;

#[cfg(test)]
mod corpus_tests;
#[cfg(test)]
mod inbound_tests;
#[cfg(test)]
mod ipv6_tests;
#[cfg(test)]
mod qa_tests;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod trunk_move_tests;

use std::fmt;
use std::net::SocketAddr;

pub use message::{FrameError, UriError};
pub use ua::{Retransmissions, UserAgent};

/// Why a datagram is not a usable SIP message ([`parse_message`]); the text names the
/// defect, never the message's content.
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct InvalidMessage(message::ParseError);

/// Parses a datagram the way the user agent does, for fuzzing and tests: `Ok` when it is
/// a usable SIP message. Never panics.
pub fn parse_message(data: &[u8]) -> Result<(), InvalidMessage> {
    message::parse(data).map(|_| ()).map_err(InvalidMessage)
}

/// Static configuration of the user agent.
#[derive(Debug, Clone)]
pub struct UaConfig {
    /// The UDP address the socket is bound to.
    pub local_addr: SocketAddr,
    /// Host (or IP) to put in Via/Contact instead of `local_addr`'s IP, e.g. a NAT's
    /// public address. The port is always `local_addr`'s.
    pub advertised_host: Option<String>,
    /// Value of our User-Agent (requests) and Server (responses) headers; empty = no
    /// such header (a scanner learns nothing from them).
    pub server_header: String,
    /// Who may talk to us (`[sip]` unknown_sources, bans, limits).
    pub policy: policy::PolicyConfig,
    /// The QA registrar (`[[qa.phones]]`); None = REGISTER is not served.
    pub registrar: Option<RegistrarConfig>,
}

/// A softphone account of the QA registrar. The password never appears in `Debug`.
#[derive(Clone, PartialEq, Eq)]
pub struct QaAccount {
    pub username: String,
    pub password: String,
}

impl fmt::Debug for QaAccount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("QaAccount")
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

/// The QA registrar: digest realm, accounts, and the registration lifetimes it grants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistrarConfig {
    pub realm: String,
    pub accounts: Vec<QaAccount>,
    /// Shorter asked lifetimes get 423 Interval Too Brief (RFC 3261 §10.3 step 7).
    pub min_expires: u32,
    /// Longer asked lifetimes are shortened to this.
    pub max_expires: u32,
}

/// Where a registered QA phone is reached: its Contact URI (the Request-URI of calls to
/// it), and the flow its REGISTER came on (address, port and transport), where calls and
/// every request inside them go, whatever the Contact says (RFC 3261 §18.2.2 with
/// RFC 3581 rport, RFC 5626): a phone behind NAT is reached through the mapping its
/// REGISTER opened, a phone on TCP over the connection it opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QaBinding {
    pub contact: String,
    pub source: SocketAddr,
    pub transport: Transport,
    /// The Contact's RFC 5626 `+sip.instance` (unquoted, `<urn:uuid:…>`) and `reg-id`,
    /// when the phone sent them. An un-REGISTER removes the binding only when it names
    /// the same instance (or, without one, the same Contact URI).
    pub instance: Option<String>,
    pub reg_id: Option<u32>,
    /// The TCP or TLS connection the REGISTER came on has closed: the phone cannot be
    /// reached (we never dial a phone's connection) until it registers again.
    pub flow_closed: bool,
    /// Lifetime granted, in seconds, and when it runs out.
    pub expires: u32,
    pub expires_at: std::time::Instant,
}

/// Inbound calls the user agent answers: INVITEs from a trunk's address for one of
/// these numbers (the canaries' far end, SPEC §7 `[canary] answer_numbers`).
#[derive(Debug, Clone, Default)]
pub struct InboundConfig {
    pub numbers: Vec<InboundNumber>,
    /// Inbound calls at once; more get 486 Busy Here.
    pub max_calls: usize,
}

/// One number we answer, and the Request-URI (or To) user parts that mean it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InboundNumber {
    /// E.164, e.g. `+31201234567`.
    pub number: String,
    /// User parts that stand for it: the E.164 form, the digits without `+`, with `00`
    /// instead of `+`, and whatever the application adds (the national form).
    pub aliases: Vec<String>,
}

impl InboundNumber {
    /// `e164` with its international spellings as aliases.
    pub fn new(e164: &str) -> InboundNumber {
        let digits = e164.trim_start_matches('+');
        InboundNumber {
            number: e164.to_string(),
            aliases: vec![e164.to_string(), digits.to_string(), format!("00{digits}")],
        }
    }

    /// Also answers to `alias` (e.g. the national form `0201234567`).
    pub fn with_alias(mut self, alias: impl Into<String>) -> InboundNumber {
        let alias = alias.into();
        if !alias.is_empty() && !self.aliases.contains(&alias) {
            self.aliases.push(alias);
        }
        self
    }
}

/// An inbound INVITE offered to the application (see [`Event::Incoming`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IncomingInvite {
    /// The configured number it is for (E.164).
    pub number: String,
    pub call_id: String,
    /// The From header as received.
    pub from: String,
    pub request_uri: String,
    /// Where it came from (a trunk).
    pub source: SocketAddr,
    /// The SDP offer (empty when the INVITE had none).
    pub offer: String,
}

/// How a message travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    Udp,
    /// One TCP connection per peer address, opened (or re-opened) by the driver.
    Tcp,
    /// Like TCP, with TLS on the connection (the driver verifies the certificate).
    Tls,
}

impl Transport {
    /// Reliable transports have no retransmission timers (RFC 3261 §17.1.1.2).
    pub fn is_reliable(self) -> bool {
        self != Transport::Udp
    }

    /// As written in Via (`SIP/2.0/UDP`).
    pub fn via_name(self) -> &'static str {
        match self {
            Transport::Udp => "UDP",
            Transport::Tcp => "TCP",
            Transport::Tls => "TLS",
        }
    }
}

/// What a TLS connection to a trunk checks: the host name its certificate must carry and
/// an optional CA file (PEM) instead of the public roots. Data only: the driver connects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsTarget {
    pub server_name: String,
    pub ca_file: Option<std::path::PathBuf>,
}

/// A message the driver must send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    pub destination: SocketAddr,
    pub transport: Transport,
    pub payload: Vec<u8>,
}

/// Where the first complete SIP message in a TCP byte stream ends (RFC 3261 §18.3:
/// Content-Length frames messages on streams). `Ok(None)`: need more bytes;
/// `Ok(Some((skip, len)))`: skip `skip` keep-alive CRLFs, then `len` bytes are one
/// message; `Err`: the stream cannot be framed (drop the connection).
pub fn frame_stream(buf: &[u8]) -> Result<Option<(usize, usize)>, FrameError> {
    message::frame(buf)
}

/// Identifies one outgoing call for its whole life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
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
    /// Answers 401/407 challenges (to the INVITE and to in-dialog requests) when set.
    pub credentials: Option<digest::Credentials>,
    /// Extra headers for the INVITE, e.g. `P-Asserted-Identity` and `Privacy`.
    pub extra_headers: Vec<(String, String)>,
    /// How to reach `destination`.
    pub transport: Transport,
    /// Every request of the call goes to `destination` over `transport`, whatever the
    /// answer's Contact and Record-Route say (the Request-URI is still the remote
    /// target): a QA phone is reached on the flow its REGISTER came on (RFC 5626 §5.3,
    /// RFC 3261 §18.2.2 with RFC 3581), never at the private address in its Contact.
    pub pin_flow: bool,
}

/// Index of a trunk added with [`UserAgent::add_trunk`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TrunkId(pub usize);

/// What the user agent needs to register with a trunk and keep an eye on it.
#[derive(Debug, Clone)]
pub struct TrunkConfig {
    pub name: String,
    /// Where REGISTER and OPTIONS go (the resolved proxy).
    pub destination: SocketAddr,
    /// Request-URI of REGISTER and OPTIONS, e.g. `sip:sip.provider.example:5060`.
    pub registrar_uri: String,
    /// Address of record: From/To of REGISTER, e.g. `sip:31508200000@sip.provider.example`.
    pub aor: String,
    pub credentials: Option<digest::Credentials>,
    /// Keep a registration (REGISTER, refresh before expiry, retry with backoff).
    pub register: bool,
    /// Expires we ask for (the registrar may shorten it, or demand more with 423).
    pub register_expires: u32,
    /// OPTIONS keepalive period; None = no keepalive.
    pub options_interval: Option<std::time::Duration>,
    /// Do each probe once and schedule nothing more (`otpdial trunk check`).
    pub one_shot: bool,
    /// How to reach the trunk.
    pub transport: Transport,
    /// With `Transport::Tls`: what its certificate must be.
    pub tls: Option<TlsTarget>,
}

/// Which request a probe used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProbeKind {
    Register,
    Options,
}

/// The outcome of one REGISTER or OPTIONS exchange with a trunk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeResult {
    pub kind: ProbeKind,
    /// Final status code; None when nothing answered (Timer F).
    pub status: Option<u16>,
    /// From the last request sent to its final response.
    pub rtt: Option<std::time::Duration>,
    /// A challenge came and our answer to it was accepted.
    pub authenticated: bool,
    /// Registered (REGISTER), or reachable and not refusing us (OPTIONS).
    pub ok: bool,
    /// Expires granted by the registrar.
    pub expires: Option<u32>,
    /// Human-readable reason when not ok; never contains secrets.
    pub error: Option<String>,
}

/// What the rest of the gateway may know about a trunk (e.g. `GET /v1/trunks`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrunkStatus {
    /// Holds a valid registration (always false for trunks with `register = false`).
    pub registered: bool,
    /// Whether the last OPTIONS or REGISTER got any answer; None before the first probe.
    pub reachable: Option<bool>,
    pub last_error: Option<String>,
    /// Probes (OPTIONS, REGISTER) that got a good answer so far: a circuit
    /// breaker closes when this moves after it opened.
    pub probes_ok: u64,
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
    /// An inbound call for one of our numbers from a trunk; 100 Trying is sent. The
    /// application answers ([`UserAgent::answer`]) or refuses ([`UserAgent::reject`]); its
    /// end comes as [`Event::Ended`] like an outgoing call's.
    Incoming {
        call: CallHandle,
        invite: IncomingInvite,
    },
    /// Exactly once per call; the last event for that call.
    Ended { call: CallHandle, reason: EndReason },
    /// A QA phone registered, refreshed, unregistered (`None`) or expired (`None`).
    QaRegistration {
        username: String,
        binding: Option<QaBinding>,
    },
    /// A REGISTER to the QA registrar was refused (bad credentials).
    QaAuthFailed { username: String },
    /// A REGISTER or OPTIONS to a trunk finished; the trunk's status may have changed.
    TrunkProbe {
        trunk: TrunkId,
        result: ProbeResult,
        status: TrunkStatus,
    },
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
    MediaFailed { error: sdp::SdpError },
    /// Nothing was sent: the call failed on our side before its INVITE could leave
    /// (a Request-URI we cannot build, a destination without an address). No SIP
    /// status: the trunk never saw it.
    NotSent { reason: String },
}

impl fmt::Display for EndReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EndReason::Rejected { status, reason } => write!(f, "rejected: {status} {reason}"),
            EndReason::Timeout => f.write_str("no response (timeout)"),
            EndReason::RemoteHangup => f.write_str("remote hangup"),
            EndReason::LocalHangup => f.write_str("local hangup"),
            EndReason::Canceled => f.write_str("canceled"),
            EndReason::MediaFailed { error } => write!(f, "media negotiation failed: {error}"),
            EndReason::NotSent { reason } => write!(f, "not sent: {reason}"),
        }
    }
}
