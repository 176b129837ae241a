//! The user agent state machine: client INVITE/non-INVITE transactions (RFC 3261 §17.1,
//! RFC 6026 "Accepted" state), the UAC side of dialogs, and small server non-INVITE
//! transactions for requests the far end sends inside a call (BYE, INFO, OPTIONS,
//! re-INVITE/UPDATE). Sans-IO: time comes in as `now`, datagrams go out via a queue.
//!
//! Layout, chosen so digest auth, REGISTER, TCP and forking policies can be added later:
//! - client transactions keyed by (Via branch, method), as RFC 3261 §17.1.3 matches them;
//! - server transactions keyed by (top Via branch, method), a response cache for
//!   retransmitted requests;
//! - calls keyed by [`CallHandle`], with a Call-ID index for incoming requests.

mod trunk;

use super::digest::{self, Challenge, Credentials};
use super::message::{self, Message, ParseError, StartLine};
use super::{
    sdp, CallHandle, EndReason, Event, OutgoingCall, Transmit, Transport, TrunkId, UaConfig,
};
use rsip::headers::UntypedHeader;
use rsip::{headers as h, Header, Method};
use std::collections::{HashMap, HashSet, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};
use tracing::debug;

/// RTT estimate (RFC 3261 §17.1.1.1).
const T1: Duration = Duration::from_millis(500);
/// Cap on non-INVITE and 2xx retransmission intervals.
const T2: Duration = Duration::from_secs(4);
/// How long the network may hold a message.
const T4: Duration = Duration::from_secs(5);
/// 64*T1: Timer B (INVITE), Timer F (non-INVITE), Timer J, Timer M, 2xx retransmission.
const TIMEOUT_64T1: Duration = Duration::from_secs(32);
/// Timer D: absorb retransmitted non-2xx finals (at least 32 s for UDP).
const TIMER_D: Duration = Duration::from_secs(32);
/// Timer K: absorb retransmitted non-INVITE finals.
const TIMER_K: Duration = T4;
/// How long an ended call's record stays to answer stragglers (e.g. late 2xx retransmits).
const CALL_LINGER: Duration = Duration::from_secs(32);

/// Handles start at 1, so 0 marks transactions that belong to no call.
const NO_CALL: CallHandle = CallHandle(0);

/// How many challenged requests one call or probe may resend before giving up.
const MAX_AUTH_TRIES: u32 = 4;

/// Upper bound on cached server transactions (each lives Timer J = 32 s).
const MAX_SERVER_TXS: usize = 10_000;

const ALLOW: &str = "INVITE, ACK, CANCEL, BYE, OPTIONS, INFO, UPDATE";

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum TxMethod {
    Invite,
    Bye,
    Cancel,
    Register,
    Options,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum TxState {
    /// Calling (INVITE) / Trying (non-INVITE): retransmitting.
    Calling,
    Proceeding,
    /// Final non-2xx seen (INVITE) or any final (non-INVITE): absorbing retransmissions.
    Completed,
    /// INVITE got a 2xx: stays to route retransmitted and forked 2xx (RFC 6026).
    Accepted,
}

/// What finishing a BYE means for the call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ByePurpose {
    /// Our hangup: the call ends (LocalHangup) when the BYE completes.
    Hangup,
    /// Clean-up of a fork or of a media failure already reported: no event.
    Silent,
}

#[derive(Debug)]
struct ClientTx {
    /// The call it belongs to; `NO_CALL` for a trunk's REGISTER/OPTIONS.
    call: CallHandle,
    /// The trunk a REGISTER/OPTIONS belongs to.
    trunk: Option<TrunkId>,
    sent_at: Instant,
    method: TxMethod,
    destination: SocketAddr,
    request: Vec<u8>,
    state: TxState,
    retransmit_at: Option<Instant>,
    interval: Duration,
    /// Timer B / F (or the 64*T1 guard after CANCEL).
    timeout_at: Option<Instant>,
    /// Timer D / K / M: when the transaction is forgotten.
    remove_at: Option<Instant>,
    /// ACK for a non-2xx final, resent when the final is retransmitted.
    ack: Option<Vec<u8>>,
    bye_purpose: ByePurpose,
}

#[derive(Debug)]
struct ServerTx {
    destination: SocketAddr,
    response: Vec<u8>,
    remove_at: Instant,
    awaiting_ack: Option<AckWait>,
}

/// A 2xx to a re-INVITE is retransmitted by the UAS core until the ACK (RFC 3261 §13.3.1.4).
#[derive(Debug)]
struct AckWait {
    call_id: String,
    cseq: u32,
    retransmit_at: Instant,
    interval: Duration,
    give_up_at: Instant,
}

impl Peer {
    /// Request-URI and Route headers for an in-dialog request (RFC 3261 §12.2.1.1): with
    /// a loose-routing first hop (`;lr`) the remote target and the route set as is; with
    /// a strict router (RFC 2543) its URI becomes the Request-URI and the remote target
    /// goes last in the Route headers.
    fn request_line(&self) -> (rsip::Uri, Vec<String>) {
        let strict = self
            .route_set
            .first()
            .filter(|first| {
                !message::addr_uri(first)
                    .to_ascii_lowercase()
                    .contains(";lr")
            })
            .and_then(|first| parse_sip_uri(message::addr_uri(first)).ok());
        match strict {
            Some(uri) => {
                let mut routes: Vec<String> = self.route_set[1..].to_vec();
                routes.push(format!("<{}>", self.target));
                (uri, routes)
            }
            None => (self.target.clone(), self.route_set.clone()),
        }
    }
}

/// The far side of a confirmed dialog: everything an in-dialog request needs.
#[derive(Debug, Clone)]
struct Peer {
    /// The To header of the 2xx, tag included, echoed in our requests.
    to_header: String,
    remote_tag: String,
    target: rsip::Uri,
    route_set: Vec<String>,
    destination: SocketAddr,
}

/// Digest state of one call or trunk: the challenges answered so far (one per realm,
/// WWW and Proxy kept apart) and a nonce count per nonce.
#[derive(Debug, Default)]
struct AuthSession {
    credentials: Option<Credentials>,
    challenges: Vec<(bool, Challenge)>,
    nonce_counts: HashMap<String, u32>,
    tries: u32,
}

impl AuthSession {
    fn new(credentials: Option<Credentials>) -> Self {
        AuthSession {
            credentials,
            ..AuthSession::default()
        }
    }

    /// Takes in the challenges of a 401/407. Ok = resend with [`Self::headers`]; Err =
    /// give up, with the reason. A challenge for a realm we already answered means the
    /// credentials were refused, unless it says `stale=true` (only the nonce expired).
    fn on_challenge(&mut self, status: u16, msg: &Message) -> Result<(), String> {
        if self.credentials.is_none() {
            return Err(format!("{status} challenge but no credentials configured"));
        }
        if self.tries >= MAX_AUTH_TRIES {
            return Err(format!(
                "{status} again after {} authenticated tries",
                self.tries
            ));
        }
        let proxy = status == 407;
        let offered = msg
            .challenges
            .iter()
            .filter(|(p, _)| *p == proxy)
            .map(|(_, v)| v.as_str());
        let challenge = Challenge::pick(offered)
            .map_err(|e| format!("{status} with an unusable challenge: {e}"))?;
        match self
            .challenges
            .iter_mut()
            .find(|(p, c)| *p == proxy && c.realm == challenge.realm)
        {
            Some(slot) if challenge.stale => slot.1 = challenge,
            Some(_) => {
                return Err(format!(
                    "{status}: credentials refused for realm {:?}",
                    challenge.realm
                ))
            }
            None => self.challenges.push((proxy, challenge)),
        }
        self.tries += 1;
        Ok(())
    }

    /// (Proxy-)Authorization headers answering every stored challenge for this request.
    fn headers(&mut self, method: Method, uri: &str, body: &[u8]) -> Vec<Header> {
        let Some(creds) = &self.credentials else {
            return Vec::new();
        };
        let method = method.to_string();
        let mut out = Vec::new();
        for (proxy, ch) in &self.challenges {
            let nc = self.nonce_counts.entry(ch.nonce.clone()).or_insert(0);
            *nc += 1;
            let value = digest::answer(
                ch,
                creds,
                digest::RequestParts {
                    method: &method,
                    uri,
                    body,
                },
                *nc,
                &digest::new_cnonce(),
            );
            out.push(if *proxy {
                h::ProxyAuthorization::new(value).into()
            } else {
                h::Authorization::new(value).into()
            });
        }
        out
    }

    fn answered(&self) -> bool {
        !self.challenges.is_empty()
    }
}

#[derive(Debug)]
struct Call {
    call_id: String,
    from_header: String,
    local_tag: String,
    /// To of the INVITE (no tag); also used by CANCEL.
    to_header: String,
    request_uri: rsip::Uri,
    destination: SocketAddr,
    invite_branch: String,
    invite_cseq: u32,
    next_cseq: u32,
    offer_sdp: String,
    media: sdp::MediaOffer,
    extra_headers: Vec<Header>,
    auth: AuthSession,
    provisional_seen: bool,
    hangup_requested: bool,
    cancel_sent: bool,
    bye_sent: bool,
    dialog: Option<Peer>,
    /// ACK to the first 2xx, resent on retransmitted 2xx.
    ack: Option<(SocketAddr, Vec<u8>)>,
    /// Other forks that answered: (To tag, where, ACK), all BYEd.
    forks: Vec<(String, SocketAddr, Vec<u8>)>,
    ended: bool,
    remove_at: Option<Instant>,
}

/// The sans-IO SIP user agent. See the module docs of [`crate::sip`].
#[derive(Debug)]
pub struct UserAgent {
    ident: Ident,
    next_handle: u64,
    calls: HashMap<CallHandle, Call>,
    by_call_id: HashMap<String, CallHandle>,
    client_txs: HashMap<(String, TxMethod), ClientTx>,
    server_txs: HashMap<(String, String), ServerTx>,
    transmits: VecDeque<Transmit>,
    events: VecDeque<Event>,
    trunks: Vec<trunk::TrunkState>,
    /// Peers reached over TCP (trunks configured so, and whoever sent us a request over
    /// TCP); everything else is UDP. Transport follows the address, not the call.
    tcp_peers: HashSet<SocketAddr>,
}

fn transport_for(tcp_peers: &HashSet<SocketAddr>, dest: SocketAddr) -> Transport {
    if tcp_peers.contains(&dest) {
        Transport::Tcp
    } else {
        Transport::Udp
    }
}

/// Our Contact URI, with `;transport=tcp` when the peer talks TCP to us.
fn contact_value(user: &str, host_port: &str, tcp: bool) -> String {
    if tcp {
        format!("<sip:{user}@{host_port};transport=tcp>")
    } else {
        format!("<sip:{user}@{host_port}>")
    }
}

fn random_token() -> String {
    format!("{:016x}", rand::random::<u64>())
}

fn new_branch() -> String {
    // The magic cookie marks an RFC 3261 branch (§8.1.1.7).
    format!("z9hG4bK{}", random_token())
}

/// Where to send a request for `uri`, when its host is an IP literal. Names would need
/// DNS (RFC 3263), which is the driver's business; callers fall back to the trunk address.
fn uri_destination(uri: &str) -> Option<SocketAddr> {
    let rest = uri
        .strip_prefix("sip:")
        .or_else(|| uri.strip_prefix("SIP:"))?;
    let rest = rest.split([';', '?']).next()?;
    let hostport = rest.rsplit_once('@').map(|(_, h)| h).unwrap_or(rest);
    if let Some(v6) = hostport.strip_prefix('[') {
        let (host, tail) = v6.split_once(']')?;
        let ip: IpAddr = host.parse().ok()?;
        let port = match tail.strip_prefix(':') {
            Some(p) => p.parse().ok()?,
            None => 5060,
        };
        return Some(SocketAddr::new(ip, port));
    }
    let (host, port) = match hostport.rsplit_once(':') {
        Some((h, p)) => (h, p.parse().ok()?),
        None => (hostport, 5060),
    };
    Some(SocketAddr::new(host.parse().ok()?, port))
}

/// rsip accepts almost any text as a URI; insist on a SIP scheme and no blanks first.
fn parse_sip_uri(text: &str) -> Result<rsip::Uri, String> {
    let looks_sip = (text.starts_with("sip:") || text.starts_with("sips:"))
        && !text.contains(|c: char| c.is_whitespace() || c == '<' || c == '>');
    if !looks_sip {
        return Err("not a sip: URI".to_string());
    }
    rsip::Uri::try_from(text).map_err(|e| e.to_string())
}

/// Digit from a SIP INFO body (application/dtmf-relay `Signal=5`, or application/dtmf `5`).
fn dtmf_from_info(content_type: Option<&str>, body: &str) -> Option<char> {
    let ct = content_type?;
    let raw = if ct.starts_with("application/dtmf-relay") {
        body.lines().find_map(|l| {
            let (k, v) = l.split_once('=')?;
            k.trim().eq_ignore_ascii_case("signal").then(|| v.trim())
        })?
    } else if ct.starts_with("application/dtmf") {
        body.trim()
    } else {
        return None;
    };
    match raw {
        "10" => Some('*'),
        "11" => Some('#'),
        "12" => Some('A'),
        "13" => Some('B'),
        "14" => Some('C'),
        "15" => Some('D'),
        s if s.len() == 1 => {
            let c = s.chars().next()?.to_ascii_uppercase();
            "0123456789*#ABCD".contains(c).then_some(c)
        }
        _ => None,
    }
}

/// Via, Route, Max-Forwards, From, To, Call-ID, CSeq, User-Agent of a request we send.
#[allow(clippy::too_many_arguments)]
fn common_headers(
    ident: &Ident,
    branch: &str,
    route_set: &[String],
    from: &str,
    to: &str,
    call_id: &str,
    cseq: u32,
    method: Method,
    tcp: bool,
) -> Vec<Header> {
    let mut headers: Vec<Header> = vec![h::Via::new(format!(
        "SIP/2.0/{} {};branch={};rport",
        if tcp { "TCP" } else { "UDP" },
        ident.host_port,
        branch
    ))
    .into()];
    headers.extend(route_set.iter().map(|r| h::Route::new(r.clone()).into()));
    headers.push(h::MaxForwards::new("70").into());
    headers.push(h::From::new(from).into());
    headers.push(h::To::new(to).into());
    headers.push(h::CallId::new(call_id).into());
    headers.push(h::CSeq::new(format!("{cseq} {method}")).into());
    headers.push(h::UserAgent::new(ident.user_agent.clone()).into());
    headers
}

/// What our messages say about us.
#[derive(Debug)]
struct Ident {
    /// host:port for Via, Contact and Call-ID.
    host_port: String,
    user_agent: String,
}

impl UserAgent {
    pub fn new(config: UaConfig) -> Self {
        let host_port = match &config.advertised_host {
            Some(host) => match host.parse::<std::net::Ipv6Addr>() {
                Ok(v6) => format!("[{}]:{}", v6, config.local_addr.port()),
                Err(_) => format!("{}:{}", host, config.local_addr.port()),
            },
            None => config.local_addr.to_string(),
        };
        UserAgent {
            ident: Ident {
                host_port,
                user_agent: config.user_agent,
            },
            next_handle: 1,
            calls: HashMap::new(),
            by_call_id: HashMap::new(),
            client_txs: HashMap::new(),
            server_txs: HashMap::new(),
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            trunks: Vec::new(),
            tcp_peers: HashSet::new(),
        }
    }

    /// The SIP Call-ID of a call we placed (for logs).
    pub fn call_id(&self, call: CallHandle) -> Option<&str> {
        self.calls.get(&call).map(|c| c.call_id.as_str())
    }

    /// Calls whose state is still kept (ended calls linger briefly to absorb stragglers).
    pub fn active_calls(&self) -> usize {
        self.calls.len()
    }

    /// True when no call, transaction or cached response is held: nothing leaks.
    pub fn is_idle(&self) -> bool {
        self.calls.is_empty()
            && self.by_call_id.is_empty()
            && self.client_txs.is_empty()
            && self.server_txs.is_empty()
    }

    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// The earliest instant at which [`Self::handle_timeout`] has work to do.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let mut next: Option<Instant> = None;
        let mut consider = |t: Option<Instant>| {
            if let Some(t) = t {
                next = Some(next.map_or(t, |n| n.min(t)));
            }
        };
        let mut busy: HashSet<CallHandle> = HashSet::new();
        for tx in self.client_txs.values() {
            busy.insert(tx.call);
            consider(tx.retransmit_at);
            consider(tx.timeout_at);
            consider(tx.remove_at);
        }
        for stx in self.server_txs.values() {
            consider(Some(stx.remove_at));
            if let Some(w) = &stx.awaiting_ack {
                consider(Some(w.retransmit_at));
                consider(Some(w.give_up_at));
            }
        }
        for t in &self.trunks {
            consider(t.next_deadline());
        }
        for (handle, call) in &self.calls {
            // A call still referenced by a transaction is reconsidered when that one goes;
            // offering its past deadline here would make the driver spin.
            if call.ended && !busy.contains(handle) {
                consider(call.remove_at);
            }
        }
        next
    }

    /// Starts a call: queues the INVITE and returns the handle all its events carry.
    pub fn invite(&mut self, now: Instant, call: OutgoingCall) -> CallHandle {
        let handle = CallHandle(self.next_handle);
        self.next_handle += 1;
        if call.tcp {
            self.tcp_peers.insert(call.destination);
        }
        let parsed = parse_sip_uri(&call.request_uri);
        let request_uri = match parsed {
            Ok(uri) => uri,
            Err(e) => {
                debug!(uri = %call.request_uri, error = %e, "invalid request URI, call not placed");
                self.events.push_back(Event::Ended {
                    call: handle,
                    reason: EndReason::Rejected {
                        status: 400,
                        reason: format!("invalid request URI (not sent): {e}"),
                    },
                });
                return handle;
            }
        };
        let local_tag = random_token();
        let from_header = match &call.from_display {
            Some(name) => format!(
                "\"{}\" <{}>;tag={}",
                name.replace('\\', "\\\\").replace('"', "\\\""),
                call.from_uri,
                local_tag
            ),
            None => format!("<{}>;tag={}", call.from_uri, local_tag),
        };
        let host = self.ident.host_port.clone();
        let extra_headers = call
            .extra_headers
            .iter()
            .map(|(n, v)| Header::Other(n.clone(), v.clone()))
            .collect();
        let c = Call {
            call_id: format!("{}@{}", random_token(), host),
            from_header,
            local_tag,
            to_header: format!("<{}>", call.request_uri),
            request_uri,
            destination: call.destination,
            invite_branch: new_branch(),
            invite_cseq: 1,
            next_cseq: 2,
            // SDP session ids must fit in 63 bits for some parsers.
            offer_sdp: sdp::build_offer(&call.media, rand::random::<u64>() >> 2),
            media: call.media,
            extra_headers,
            auth: AuthSession::new(call.credentials),
            provisional_seen: false,
            hangup_requested: false,
            cancel_sent: false,
            bye_sent: false,
            dialog: None,
            ack: None,
            forks: Vec::new(),
            ended: false,
            remove_at: None,
        };
        self.by_call_id.insert(c.call_id.clone(), handle);
        self.calls.insert(handle, c);
        self.send_invite(now, handle);
        handle
    }

    /// Sends the INVITE of a call with its current branch and CSeq, answering any stored
    /// challenges (the first INVITE has none; a challenged one is resent with new ones).
    fn send_invite(&mut self, now: Instant, handle: CallHandle) {
        let Some(c) = self.calls.get_mut(&handle) else {
            return;
        };
        let mut headers = common_headers(
            &self.ident,
            &c.invite_branch,
            &[],
            &c.from_header,
            &c.to_header,
            &c.call_id,
            c.invite_cseq,
            Method::Invite,
            self.tcp_peers.contains(&c.destination),
        );
        let tcp = self.tcp_peers.contains(&c.destination);
        headers.push(h::Contact::new(contact_value("otpdial", &self.ident.host_port, tcp)).into());
        headers.push(h::Allow::new(ALLOW).into());
        headers.extend(c.extra_headers.iter().cloned());
        let uri = c.request_uri.to_string();
        headers.extend(c.auth.headers(Method::Invite, &uri, c.offer_sdp.as_bytes()));
        headers.push(h::ContentType::new("application/sdp").into());
        let request = message::render_request(
            Method::Invite,
            &c.request_uri,
            headers,
            c.offer_sdp.as_bytes(),
        );
        let key = (c.invite_branch.clone(), TxMethod::Invite);
        let destination = c.destination;
        self.transmit(destination, request.clone());
        self.client_txs.insert(
            key,
            ClientTx {
                call: handle,
                trunk: None,
                sent_at: now,
                method: TxMethod::Invite,
                destination,
                request,
                state: TxState::Calling,
                // Timer A only on unreliable transports (RFC 3261 §17.1.1.2).
                retransmit_at: (!tcp).then_some(now + T1),
                interval: T1,
                timeout_at: Some(now + TIMEOUT_64T1),
                remove_at: None,
                ack: None,
                bye_purpose: ByePurpose::Silent,
            },
        );
    }

    /// Ends a call from our side: BYE once confirmed; CANCEL once a provisional came;
    /// before that, remembers to CANCEL on the first 1xx or ACK+BYE a 2xx.
    pub fn hangup(&mut self, now: Instant, call: CallHandle) {
        let Some(c) = self.calls.get_mut(&call) else {
            return;
        };
        if c.ended {
            return;
        }
        if let Some(peer) = c.dialog.clone() {
            if !c.bye_sent {
                c.bye_sent = true;
                self.send_bye(now, call, &peer, ByePurpose::Hangup);
            }
            return;
        }
        if c.hangup_requested {
            return;
        }
        c.hangup_requested = true;
        if c.provisional_seen && !c.cancel_sent {
            self.send_cancel(now, call);
        }
    }

    /// Feeds one complete message received on a TCP connection from `from` (framed with
    /// [`crate::sip::frame_stream`]). Answers and later requests to `from` use TCP too.
    pub fn handle_stream_message(&mut self, now: Instant, from: SocketAddr, data: &[u8]) {
        self.tcp_peers.insert(from);
        self.handle_datagram(now, from, data);
    }

    /// Feeds one received UDP datagram. Anything malformed is logged and dropped.
    pub fn handle_datagram(&mut self, now: Instant, from: SocketAddr, data: &[u8]) {
        match message::parse(data) {
            Ok(msg) => match msg.start {
                StartLine::Request { .. } => self.on_request(now, from, msg),
                StartLine::Response { .. } => self.on_response(now, msg),
            },
            Err(ParseError::KeepAlive) => {}
            Err(ParseError::MissingHeader(name, req)) => {
                debug!(%from, header = name, "request lacks a mandatory header");
                self.reply_bad_request(from, &req, name);
            }
            Err(e) => debug!(%from, error = %e, "dropping unparseable datagram"),
        }
    }

    /// Runs every timer due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.trunk_timers(now);
        let keys: Vec<(String, TxMethod)> = self.client_txs.keys().cloned().collect();
        for key in keys {
            let Some(tx) = self.client_txs.get_mut(&key) else {
                continue;
            };
            if tx.remove_at.is_some_and(|t| t <= now) {
                self.client_txs.remove(&key);
                continue;
            }
            if tx.timeout_at.is_some_and(|t| t <= now) {
                let (handle, method, purpose, trunk) =
                    (tx.call, tx.method, tx.bye_purpose, tx.trunk);
                self.client_txs.remove(&key);
                match method {
                    TxMethod::Invite => {
                        let reason = match self.calls.get(&handle) {
                            Some(c) if c.hangup_requested => EndReason::Canceled,
                            _ => EndReason::Timeout,
                        };
                        self.end_call(now, handle, reason);
                    }
                    TxMethod::Bye if purpose == ByePurpose::Hangup => {
                        self.end_call(now, handle, EndReason::LocalHangup)
                    }
                    TxMethod::Register | TxMethod::Options => {
                        if let Some(trunk) = trunk {
                            self.on_trunk_timeout(now, trunk, method);
                        }
                    }
                    TxMethod::Bye | TxMethod::Cancel => {}
                }
                continue;
            }
            if let Some(at) = tx.retransmit_at.filter(|t| *t <= now) {
                tx.interval = match tx.method {
                    TxMethod::Invite => tx.interval * 2,
                    _ => (tx.interval * 2).min(T2),
                };
                // Scheduled from the previous deadline, so a late wake-up does not drift.
                tx.retransmit_at = Some(at + tx.interval);
                let t = Transmit {
                    destination: tx.destination,
                    transport: transport_for(&self.tcp_peers, tx.destination),
                    payload: tx.request.clone(),
                };
                self.transmits.push_back(t);
            }
        }

        let mut resend = Vec::new();
        self.server_txs.retain(|_, stx| {
            if stx.remove_at <= now {
                return false;
            }
            if let Some(w) = &mut stx.awaiting_ack {
                if w.give_up_at <= now {
                    stx.awaiting_ack = None;
                } else if w.retransmit_at <= now {
                    w.interval = (w.interval * 2).min(T2);
                    w.retransmit_at += w.interval;
                    resend.push(Transmit {
                        destination: stx.destination,
                        transport: Transport::Udp,
                        payload: stx.response.clone(),
                    });
                }
            }
            true
        });
        self.transmits.extend(resend);

        let busy: HashSet<CallHandle> = self.client_txs.values().map(|t| t.call).collect();
        let done: Vec<CallHandle> = self
            .calls
            .iter()
            .filter(|(hd, c)| {
                c.ended && c.remove_at.is_some_and(|t| t <= now) && !busy.contains(hd)
            })
            .map(|(hd, _)| *hd)
            .collect();
        for hd in done {
            if let Some(c) = self.calls.remove(&hd) {
                self.by_call_id.remove(&c.call_id);
            }
        }
    }

    // ---- building blocks -------------------------------------------------------------

    fn transmit(&mut self, destination: SocketAddr, payload: Vec<u8>) {
        self.transmits.push_back(Transmit {
            destination,
            transport: transport_for(&self.tcp_peers, destination),
            payload,
        });
    }

    fn contact_header(&self, tcp: bool) -> Header {
        h::Contact::new(contact_value("otpdial", &self.ident.host_port, tcp)).into()
    }

    fn end_call(&mut self, now: Instant, handle: CallHandle, reason: EndReason) {
        let Some(c) = self.calls.get_mut(&handle) else {
            return;
        };
        if c.ended {
            return;
        }
        c.ended = true;
        c.remove_at = Some(now + CALL_LINGER);
        debug!(call = %handle, %reason, "call ended");
        self.events.push_back(Event::Ended {
            call: handle,
            reason,
        });
    }

    fn start_client_tx(
        &mut self,
        now: Instant,
        key: (String, TxMethod),
        call: CallHandle,
        destination: SocketAddr,
        request: Vec<u8>,
        bye_purpose: ByePurpose,
    ) {
        self.transmit(destination, request.clone());
        let method = key.1;
        let tcp = self.tcp_peers.contains(&destination);
        self.client_txs.insert(
            key,
            ClientTx {
                call,
                trunk: None,
                sent_at: now,
                method,
                destination,
                request,
                state: TxState::Calling,
                // Timer E only on unreliable transports (RFC 3261 §17.1.2.2).
                retransmit_at: (!tcp).then_some(now + T1),
                interval: T1,
                timeout_at: Some(now + TIMEOUT_64T1),
                remove_at: None,
                ack: None,
                bye_purpose,
            },
        );
    }

    fn send_bye(&mut self, now: Instant, handle: CallHandle, peer: &Peer, purpose: ByePurpose) {
        self.send_bye_with(now, handle, peer, purpose, false);
    }

    /// BYE; `with_auth` answers the challenges stored for the call (after a 401/407 to a
    /// first BYE: in-dialog requests may be challenged too).
    fn send_bye_with(
        &mut self,
        now: Instant,
        handle: CallHandle,
        peer: &Peer,
        purpose: ByePurpose,
        with_auth: bool,
    ) {
        let Some(c) = self.calls.get_mut(&handle) else {
            return;
        };
        let cseq = c.next_cseq;
        c.next_cseq += 1;
        let branch = new_branch();
        let (uri, routes) = peer.request_line();
        let mut headers = common_headers(
            &self.ident,
            &branch,
            &routes,
            &c.from_header,
            &peer.to_header,
            &c.call_id,
            cseq,
            Method::Bye,
            self.tcp_peers.contains(&peer.destination),
        );
        if with_auth {
            headers.extend(c.auth.headers(Method::Bye, &uri.to_string(), b""));
        }
        let request = message::render_request(Method::Bye, &uri, headers, b"");
        self.start_client_tx(
            now,
            (branch, TxMethod::Bye),
            handle,
            peer.destination,
            request,
            purpose,
        );
    }

    fn send_cancel(&mut self, now: Instant, handle: CallHandle) {
        let Some(c) = self.calls.get_mut(&handle) else {
            return;
        };
        c.cancel_sent = true;
        // CANCEL copies the INVITE's Request-URI, Via branch, From, To, Call-ID and CSeq
        // number (RFC 3261 §9.1), so it matches the INVITE's server transaction.
        let headers = common_headers(
            &self.ident,
            &c.invite_branch,
            &[],
            &c.from_header,
            &c.to_header,
            &c.call_id,
            c.invite_cseq,
            Method::Cancel,
            self.tcp_peers.contains(&c.destination),
        );
        let request = message::render_request(Method::Cancel, &c.request_uri, headers, b"");
        let branch = c.invite_branch.clone();
        let destination = c.destination;
        // If the INVITE never gets its final (487), give up 64*T1 after the CANCEL.
        if let Some(itx) = self.client_txs.get_mut(&(branch.clone(), TxMethod::Invite)) {
            itx.timeout_at = Some(now + TIMEOUT_64T1);
        }
        self.start_client_tx(
            now,
            (branch, TxMethod::Cancel),
            handle,
            destination,
            request,
            ByePurpose::Silent,
        );
    }

    // ---- responses -------------------------------------------------------------------

    fn on_response(&mut self, now: Instant, msg: Message) {
        let StartLine::Response { status, reason } = &msg.start else {
            return;
        };
        let (status, reason) = (*status, reason.clone());
        let Some(branch) = msg.top_branch() else {
            debug!("response without a Via branch dropped");
            return;
        };
        let method = match msg.cseq_method {
            Method::Invite => TxMethod::Invite,
            Method::Bye => TxMethod::Bye,
            Method::Cancel => TxMethod::Cancel,
            Method::Register => TxMethod::Register,
            Method::Options => TxMethod::Options,
            other => {
                debug!(method = %other, "response to a method we never send");
                return;
            }
        };
        let key = (branch, method);
        if !self.client_txs.contains_key(&key) {
            // A 2xx outliving its INVITE transaction (e.g. after Timer B) still creates a
            // dialog at the far end: ACK it and BYE it rather than let it dangle.
            let late_2xx_of = (method == TxMethod::Invite && (200..300).contains(&status))
                .then(|| self.by_call_id.get(&msg.call_id).copied())
                .flatten()
                .filter(|h| self.calls.get(h).is_some_and(|c| c.invite_branch == key.0));
            match late_2xx_of {
                Some(handle) => self.on_invite_2xx(now, handle, &msg),
                None => debug!(branch = %key.0, status, "response matches no transaction"),
            }
            return;
        }
        match method {
            TxMethod::Invite => self.on_invite_response(now, key, status, reason, &msg),
            _ => self.on_non_invite_response(now, key, status, reason, &msg),
        }
    }

    fn on_non_invite_response(
        &mut self,
        now: Instant,
        key: (String, TxMethod),
        status: u16,
        reason: String,
        msg: &Message,
    ) {
        let Some(tx) = self.client_txs.get_mut(&key) else {
            return;
        };
        if status < 200 {
            if tx.state == TxState::Calling {
                // Proceeding: keep retransmitting, at T2 (RFC 3261 §17.1.2.2).
                tx.state = TxState::Proceeding;
                tx.interval = T2;
            }
            return;
        }
        if tx.state == TxState::Completed {
            return;
        }
        tx.state = TxState::Completed;
        tx.retransmit_at = None;
        tx.timeout_at = None;
        // Timer K is zero on reliable transports: no retransmitted finals to absorb.
        let reliable = self.tcp_peers.contains(&tx.destination);
        tx.remove_at = Some(now + if reliable { Duration::ZERO } else { TIMER_K });
        let (handle, purpose, sent_at) = (tx.call, tx.bye_purpose, tx.sent_at);
        if let Some(trunk) = tx.trunk {
            self.on_trunk_response(now, trunk, key.1, status, &reason, now - sent_at, msg);
            return;
        }
        if key.1 != TxMethod::Bye {
            return;
        }
        if status == 401 || status == 407 {
            // A challenged BYE: answer it once per challenge; the call is over either way.
            let retry = self.calls.get_mut(&handle).and_then(|c| {
                let peer = c.dialog.clone()?;
                c.auth.on_challenge(status, msg).ok().map(|()| peer)
            });
            if let Some(peer) = retry {
                self.send_bye_with(now, handle, &peer, purpose, true);
                return;
            }
        }
        if purpose == ByePurpose::Hangup {
            self.end_call(now, handle, EndReason::LocalHangup);
        }
    }

    fn on_invite_response(
        &mut self,
        now: Instant,
        key: (String, TxMethod),
        status: u16,
        reason: String,
        msg: &Message,
    ) {
        let Some(tx) = self.client_txs.get_mut(&key) else {
            return;
        };
        let handle = tx.call;
        match status {
            0..=199 => {
                if !matches!(tx.state, TxState::Calling | TxState::Proceeding) {
                    return;
                }
                tx.state = TxState::Proceeding;
                tx.retransmit_at = None;
                let Some(c) = self.calls.get_mut(&handle) else {
                    return;
                };
                if !c.cancel_sent {
                    // Timer B only runs in Calling; ringing is bounded by the caller's
                    // ring timeout (hangup -> CANCEL).
                    tx.timeout_at = None;
                }
                if c.ended {
                    return;
                }
                c.provisional_seen = true;
                let early_media = if msg.body.is_empty() {
                    None
                } else {
                    msg.body_str()
                        .and_then(|b| sdp::parse_answer(b, &c.media).ok())
                };
                let cancel = c.hangup_requested && !c.cancel_sent;
                self.events.push_back(Event::Progress {
                    call: handle,
                    status,
                    early_media,
                });
                if cancel {
                    self.send_cancel(now, handle);
                }
            }
            200..=299 => {
                match tx.state {
                    TxState::Calling | TxState::Proceeding => {
                        tx.state = TxState::Accepted;
                        tx.retransmit_at = None;
                        tx.timeout_at = None;
                        tx.remove_at = Some(now + TIMEOUT_64T1);
                    }
                    TxState::Accepted => {}
                    TxState::Completed => return,
                }
                self.on_invite_2xx(now, handle, msg);
            }
            _ => match tx.state {
                TxState::Calling | TxState::Proceeding => {
                    let ack = self.build_non2xx_ack(handle, msg);
                    let Some(tx) = self.client_txs.get_mut(&key) else {
                        return;
                    };
                    tx.state = TxState::Completed;
                    tx.retransmit_at = None;
                    tx.timeout_at = None;
                    let reliable = self.tcp_peers.contains(&tx.destination);
                    tx.remove_at = Some(now + if reliable { Duration::ZERO } else { TIMER_D });
                    tx.ack = ack.clone();
                    let dest = tx.destination;
                    if let Some(ack) = ack {
                        self.transmit(dest, ack);
                    }
                    let end = match self.calls.get_mut(&handle) {
                        Some(c) if c.hangup_requested => EndReason::Canceled,
                        Some(c) if status == 401 || status == 407 => {
                            match c.auth.on_challenge(status, msg) {
                                Ok(()) => {
                                    // Same dialog attempt, new transaction (RFC 3261 §22.2):
                                    // same Call-ID and From tag, next CSeq, new branch.
                                    c.invite_branch = new_branch();
                                    c.invite_cseq = c.next_cseq;
                                    c.next_cseq += 1;
                                    c.provisional_seen = false;
                                    debug!(call = %handle, status, "INVITE challenged, resending with credentials");
                                    self.send_invite(now, handle);
                                    return;
                                }
                                Err(why) => {
                                    debug!(call = %handle, %why, "INVITE authentication failed");
                                    EndReason::Rejected {
                                        status,
                                        reason: format!("{reason} (authentication failed: {why})"),
                                    }
                                }
                            }
                        }
                        _ => EndReason::Rejected { status, reason },
                    };
                    self.end_call(now, handle, end);
                }
                TxState::Completed => {
                    if let Some(ack) = tx.ack.clone() {
                        let dest = tx.destination;
                        self.transmit(dest, ack);
                    }
                }
                TxState::Accepted => {}
            },
        }
    }

    /// ACK for a non-2xx final: part of the INVITE transaction, so same branch, same
    /// Request-URI, To from the response (RFC 3261 §17.1.1.3).
    fn build_non2xx_ack(&self, handle: CallHandle, msg: &Message) -> Option<Vec<u8>> {
        let c = self.calls.get(&handle)?;
        let headers = common_headers(
            &self.ident,
            &c.invite_branch,
            &[],
            &c.from_header,
            &msg.to,
            &c.call_id,
            c.invite_cseq,
            Method::Ack,
            self.tcp_peers.contains(&c.destination),
        );
        Some(message::render_request(
            Method::Ack,
            &c.request_uri,
            headers,
            b"",
        ))
    }

    fn on_invite_2xx(&mut self, now: Instant, handle: CallHandle, msg: &Message) {
        let to_tag = msg.tag_in_to().unwrap_or_default();
        let Some(c) = self.calls.get(&handle) else {
            return;
        };
        if c.dialog.as_ref().is_some_and(|d| d.remote_tag == to_tag) {
            // Retransmitted 2xx: our ACK got lost (RFC 3261 §13.2.2.4).
            if let Some((dest, ack)) = c.ack.clone() {
                self.transmit(dest, ack);
            }
            return;
        }
        if let Some((_, dest, ack)) = c.forks.iter().find(|f| f.0 == to_tag).cloned() {
            self.transmit(dest, ack);
            return;
        }
        let target = msg
            .contact_uri
            .as_deref()
            .and_then(|u| parse_sip_uri(u).ok())
            .unwrap_or_else(|| c.request_uri.clone());
        let route_set: Vec<String> = msg.record_route.iter().rev().cloned().collect();
        let destination = match route_set.first() {
            Some(first) => uri_destination(message::addr_uri(first)),
            None => msg.contact_uri.as_deref().and_then(uri_destination),
        }
        .unwrap_or(c.destination);
        let peer = Peer {
            to_header: msg.to.clone(),
            remote_tag: to_tag.clone(),
            target,
            route_set,
            destination,
        };
        let (uri, routes) = peer.request_line();
        let headers = common_headers(
            &self.ident,
            &new_branch(),
            &routes,
            &c.from_header,
            &peer.to_header,
            &c.call_id,
            c.invite_cseq,
            Method::Ack,
            self.tcp_peers.contains(&peer.destination),
        );
        let ack = message::render_request(Method::Ack, &uri, headers, b"");
        let first = c.dialog.is_none() && !c.ended;
        let hangup_requested = c.hangup_requested;
        let answer = msg
            .body_str()
            .ok_or(sdp::SdpError::Empty)
            .and_then(|b| sdp::parse_answer(b, &c.media));
        self.transmit(peer.destination, ack.clone());
        let Some(c) = self.calls.get_mut(&handle) else {
            return;
        };
        if !first {
            // A second fork answered (or a late 2xx after we gave up): ACK and BYE it.
            debug!(call = %handle, tag = %to_tag, "extra 2xx: ACK and BYE");
            c.forks.push((to_tag, peer.destination, ack));
            self.send_bye(now, handle, &peer, ByePurpose::Silent);
            return;
        }
        c.dialog = Some(peer.clone());
        c.ack = Some((peer.destination, ack));
        if hangup_requested {
            c.bye_sent = true;
            self.send_bye(now, handle, &peer, ByePurpose::Hangup);
            return;
        }
        match answer {
            Ok(media) => self.events.push_back(Event::Answered {
                call: handle,
                media,
            }),
            Err(e) => {
                c.bye_sent = true;
                self.send_bye(now, handle, &peer, ByePurpose::Silent);
                self.end_call(
                    now,
                    handle,
                    EndReason::MediaFailed {
                        reason: e.to_string(),
                    },
                );
            }
        }
    }

    // ---- requests from the far end -----------------------------------------------------

    /// The confirmed, live call an in-dialog request belongs to (Call-ID and both tags).
    fn find_dialog(&self, msg: &Message) -> Option<CallHandle> {
        let handle = *self.by_call_id.get(&msg.call_id)?;
        let c = self.calls.get(&handle)?;
        let peer = c.dialog.as_ref()?;
        let matches = !c.ended
            && msg.tag_in_from().as_deref() == Some(peer.remote_tag.as_str())
            && msg.tag_in_to().as_deref() == Some(c.local_tag.as_str());
        matches.then_some(handle)
    }

    fn on_request(&mut self, now: Instant, from: SocketAddr, msg: Message) {
        let StartLine::Request { method } = &msg.start else {
            return;
        };
        let method = *method;
        if method == Method::Ack {
            // ACK for a 2xx we sent to a re-INVITE stops its retransmission.
            for stx in self.server_txs.values_mut() {
                if stx
                    .awaiting_ack
                    .as_ref()
                    .is_some_and(|w| w.call_id == msg.call_id && w.cseq == msg.cseq)
                {
                    stx.awaiting_ack = None;
                }
            }
            return;
        }
        let method_name = msg
            .extension_method
            .clone()
            .unwrap_or_else(|| method.to_string());
        let key = msg.top_branch().map(|b| (b, method_name));
        if let Some(stx) = key.as_ref().and_then(|k| self.server_txs.get(k)) {
            // Retransmitted request: same answer again (server transaction).
            let t = Transmit {
                destination: stx.destination,
                transport: transport_for(&self.tcp_peers, stx.destination),
                payload: stx.response.clone(),
            };
            self.transmits.push_back(t);
            return;
        }
        let Some(top_via) = msg.vias.first() else {
            return;
        };
        let (mut destination, top_via) = message::response_route(top_via, from);
        if self.tcp_peers.contains(&from) {
            // Reliable transport: the response goes back on the request's connection.
            destination = from;
        }
        let dialog = self.find_dialog(&msg);

        let mut extra: Vec<Header> = Vec::new();
        let mut body: Vec<u8> = Vec::new();
        let mut awaiting_ack = None;
        let status = match (method, dialog) {
            _ if msg.unsupported_uri_scheme => 416,
            // An extension method (the parser put OPTIONS in its place).
            _ if msg.extension_method.is_some() => {
                extra.push(h::Allow::new(ALLOW).into());
                501
            }
            (Method::Options, _) => {
                extra.push(h::Allow::new(ALLOW).into());
                extra.push(h::Accept::new("application/sdp").into());
                200
            }
            (Method::Bye, Some(hd)) => {
                self.end_call(now, hd, EndReason::RemoteHangup);
                200
            }
            (Method::Info, Some(hd)) => {
                let digit = msg
                    .body_str()
                    .and_then(|b| dtmf_from_info(msg.content_type.as_deref(), b));
                if let Some(digit) = digit {
                    self.events.push_back(Event::Dtmf { call: hd, digit });
                }
                200
            }
            (Method::Invite | Method::Update, Some(hd)) => {
                // Session refresh or re-offer: keep our media as it is, answer with the
                // same SDP (RFC 3264 §8: unchanged version is allowed).
                extra.push(self.contact_header(self.tcp_peers.contains(&from)));
                let offer = self
                    .calls
                    .get(&hd)
                    .map(|c| c.offer_sdp.clone())
                    .unwrap_or_default();
                if method == Method::Invite || !msg.body.is_empty() {
                    extra.push(h::ContentType::new("application/sdp").into());
                    body = offer.into_bytes();
                }
                if method == Method::Invite && !self.tcp_peers.contains(&from) {
                    awaiting_ack = Some(AckWait {
                        call_id: msg.call_id.clone(),
                        cseq: msg.cseq,
                        retransmit_at: now + T1,
                        interval: T1,
                        give_up_at: now + TIMEOUT_64T1,
                    });
                }
                200
            }
            (Method::Invite, None) if msg.tag_in_to().is_none() => 603, // we only place calls
            (_, Some(_)) => {
                extra.push(h::Allow::new(ALLOW).into());
                501
            }
            (_, None) => 481,
        };
        let response = self.build_response(&msg, top_via, status, extra, &body);
        self.transmit(destination, response.clone());
        // Cached responses are an optimisation; under a flood of distinct requests stop
        // caching rather than grow without bound.
        if let Some(key) = key.filter(|_| self.server_txs.len() < MAX_SERVER_TXS) {
            let remove_at = now + TIMEOUT_64T1;
            self.server_txs.insert(
                key,
                ServerTx {
                    destination,
                    response,
                    remove_at,
                    awaiting_ack,
                },
            );
        }
    }

    fn build_response(
        &self,
        msg: &Message,
        top_via: String,
        status: u16,
        extra: Vec<Header>,
        body: &[u8],
    ) -> Vec<u8> {
        let mut headers: Vec<Header> = vec![h::Via::new(top_via).into()];
        headers.extend(
            msg.vias
                .iter()
                .skip(1)
                .map(|v| h::Via::new(v.clone()).into()),
        );
        headers.push(h::From::new(msg.from.clone()).into());
        // A UAS adds a To tag to a final response outside a dialog (RFC 3261 §8.2.6.2).
        let to = if msg.tag_in_to().is_none() {
            format!("{};tag={}", msg.to, random_token())
        } else {
            msg.to.clone()
        };
        headers.push(h::To::new(to).into());
        headers.push(h::CallId::new(msg.call_id.clone()).into());
        let cseq_method = msg
            .extension_method
            .clone()
            .unwrap_or_else(|| msg.cseq_method.to_string());
        headers.push(h::CSeq::new(format!("{} {cseq_method}", msg.cseq)).into());
        headers.push(h::Server::new(self.ident.user_agent.clone()).into());
        headers.extend(extra);
        message::render_response(status, headers, body)
    }

    /// 400 to a request missing mandatory headers, echoing whatever it did have.
    fn reply_bad_request(&mut self, from: SocketAddr, req: &rsip::Request, missing: &str) {
        if req.method == Method::Ack {
            return;
        }
        let vias: Vec<String> = req
            .headers
            .iter()
            .filter_map(|hd| match hd {
                Header::Via(v) => Some(message::split_list(v.value())),
                _ => None,
            })
            .flatten()
            .collect();
        let Some(top) = vias.first() else {
            return;
        };
        let (destination, top) = message::response_route(top, from);
        let mut headers: Vec<Header> = vec![h::Via::new(top).into()];
        headers.extend(vias.iter().skip(1).map(|v| h::Via::new(v.clone()).into()));
        for hd in req.headers.iter() {
            if matches!(
                hd,
                Header::From(_) | Header::To(_) | Header::CallId(_) | Header::CSeq(_)
            ) {
                headers.push(hd.clone());
            }
        }
        headers.push(h::Warning::new(format!("399 otpdial \"missing {missing}\"")).into());
        let response = message::render_response(400, headers, b"");
        self.transmit(destination, response);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn dtmf_bodies() {
        assert_eq!(
            dtmf_from_info(
                Some("application/dtmf-relay"),
                "Signal=5\r\nDuration=160\r\n"
            ),
            Some('5')
        );
        assert_eq!(
            dtmf_from_info(Some("application/dtmf-relay"), "Signal= 11\r\n"),
            Some('#')
        );
        assert_eq!(dtmf_from_info(Some("application/dtmf"), "*"), Some('*'));
        assert_eq!(dtmf_from_info(Some("text/plain"), "5"), None);
        assert_eq!(dtmf_from_info(Some("application/dtmf"), "x"), None);
    }

    #[test]
    fn uri_destinations() {
        assert_eq!(
            uri_destination("sip:+316@127.0.0.1:5070;transport=udp"),
            Some("127.0.0.1:5070".parse().unwrap())
        );
        assert_eq!(
            uri_destination("sip:10.1.1.1;lr"),
            Some("10.1.1.1:5060".parse().unwrap())
        );
        assert_eq!(
            uri_destination("sip:u@[::1]:5080"),
            Some("[::1]:5080".parse().unwrap())
        );
        assert_eq!(uri_destination("sip:proxy.example.com;lr"), None);
    }
}
