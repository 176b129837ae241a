//! The sans-IO user agent, in layers (each file opens with what it holds):
//! - [`transaction`]: client and server transactions and their RFC 3261 timers;
//! - [`dialog`]: the call we place and its dialog (INVITE, ACK, CANCEL, BYE, routes);
//! - [`auth`]: digest answers to 401/407 challenges;
//! - [`server`]: requests the far end sends us (OPTIONS, BYE, INFO, re-INVITE);
//! - [`trunk`]: per-trunk REGISTER and OPTIONS keepalive, unregistration at shutdown and
//!   the public address learned from the registrar (`received`/`rport`).
//!
//! This file holds the [`UserAgent`] itself (its queues, `handle_*` and `poll_*`), what
//! our messages say about us ([`Ident`]: Via, the one Contact builder, User-Agent/Server)
//! and small helpers the layers share. Sans-IO: time comes in as `now`, datagrams go out
//! via a queue.

mod auth;
mod dialog;
mod droplog;
mod inbound;
mod keys;
mod registrar;
mod retransmits;
mod server;
mod timers;
mod transaction;
mod trunk;

use super::message::{self, Message, ParseError, StartLine};
use super::policy::{DropReason, PolicyCounters, RequestFacts, SourcePolicy, Verdict};
use super::render;
use super::{
    sdp, CallHandle, EndReason, Event, OutgoingCall, Transmit, Transport, TrunkId, UaConfig,
};
use auth::AuthSession;
use dialog::{Call, NO_CALL};
use retransmits::Repeated;
pub use retransmits::Retransmissions;
use rsip::headers::UntypedHeader;
use rsip::{headers as h, Header, Method};
use std::collections::{HashMap, HashSet, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};
use timers::Timers;
use tracing::{debug, warn};
use transaction::{ClientTx, ServerTx, TxMethod};

/// The sans-IO SIP user agent. See the module docs of [`crate::sip`].
#[derive(Debug)]
pub struct UserAgent {
    ident: Ident,
    next_handle: u64,
    calls: HashMap<CallHandle, Call>,
    by_call_id: HashMap<String, CallHandle>,
    client_txs: HashMap<(String, TxMethod), ClientTx>,
    server_txs: HashMap<keys::ServerKey, ServerTx>,
    /// Deadlines of the transactions and ended calls above.
    timers: Timers,
    transmits: VecDeque<Transmit>,
    events: VecDeque<Event>,
    trunks: Vec<trunk::TrunkState>,
    /// Peers reached over TCP (trunks configured so, and whoever sent us a request over
    /// TCP); everything else is UDP. Transport follows the address, not the call.
    tcp_peers: HashMap<SocketAddr, Transport>,
    /// Of those, the connections the peer opened (a QA phone's flow): when one closes it
    /// is not dialled again (its port is the phone's, not a listener).
    client_flows: HashSet<SocketAddr>,
    /// The listener policy: every request from outside our dialogs passes it first.
    policy: SourcePolicy,
    /// The QA registrar, when `[[qa.phones]]` are configured.
    registrar: Option<registrar::Registrar>,
    /// Inbound calls we answer (canary answer numbers), when turned on.
    inbound: inbound::Inbound,
    /// When malformed messages were last logged, per source.
    drop_log: droplog::DropLog,
    /// Retransmissions sent and received so far.
    retransmits: Retransmissions,
}

fn random_token() -> String {
    format!("{:016x}", rand::random::<u64>())
}

fn new_branch() -> String {
    // The magic cookie marks an RFC 3261 branch (§8.1.1.7).
    format!("z9hG4bK{}", random_token())
}

/// rsip accepts almost any text as a URI; insist on a SIP scheme and no blanks first.
fn parse_sip_uri(text: &str) -> Result<rsip::Uri, message::UriError> {
    let looks_sip = (text.starts_with("sip:") || text.starts_with("sips:"))
        && !text.contains(|c: char| c.is_whitespace() || c == '<' || c == '>');
    if !looks_sip {
        return Err(message::UriError::NotSip);
    }
    message::parse_uri(text)
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
    transport: Transport,
) -> Vec<Header> {
    let mut headers: Vec<Header> = vec![h::Via::new(format!(
        "SIP/2.0/{} {};branch={};rport",
        transport.via_name(),
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
    if !ident.server_header.is_empty() {
        headers.push(h::UserAgent::new(ident.server_header.clone()).into());
    }
    headers
}

/// What our messages say about us.
#[derive(Debug)]
struct Ident {
    /// host:port for Via, Contact and Call-ID.
    host_port: String,
    /// User-Agent / Server value; empty = omitted.
    server_header: String,
}

/// Our Contact value: `<sip:user@host:port>`, with `;transport=tcp` when the peer
/// reaches us over TCP (RFC 3261 §8.1.1.8: the Contact must be reachable as written,
/// and a UDP default would send the far end's requests to a port that may not listen).
/// `host_port` is ours, or towards a trunk the address its registrar saw us at
/// (`UserAgent::contact_towards`). Every Contact we send is built here.
fn contact_value(user: &str, host_port: &str, transport: Transport) -> String {
    let params = match transport {
        Transport::Udp => "",
        Transport::Tcp => ";transport=tcp",
        Transport::Tls => ";transport=tls",
    };
    format!("<sip:{user}@{host_port}{params}>")
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
        let mut policy = SourcePolicy::new(config.policy);
        policy.registrar_on = config.registrar.is_some();
        UserAgent {
            ident: Ident {
                host_port,
                server_header: config.server_header,
            },
            next_handle: 1,
            calls: HashMap::new(),
            by_call_id: HashMap::new(),
            client_txs: HashMap::new(),
            server_txs: HashMap::new(),
            timers: Timers::default(),
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            trunks: Vec::new(),
            tcp_peers: HashMap::new(),
            client_flows: HashSet::new(),
            policy,
            registrar: config.registrar.map(registrar::Registrar::new),
            inbound: inbound::Inbound::default(),
            drop_log: droplog::DropLog::default(),
            retransmits: Retransmissions::default(),
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
            && self.inbound.calls.is_empty()
    }

    /// What the listener policy dropped (or refused) so far, by reason, and its bans.
    pub fn policy_counters(&self) -> PolicyCounters {
        *self.policy.counters()
    }

    /// Retransmissions sent and received so far, by method and kind (see
    /// [`Retransmissions`]).
    pub fn retransmissions(&self) -> Retransmissions {
        self.retransmits
    }

    /// Accepts requests from `ip` as from a trunk (never limited or banned), e.g. the
    /// peer of `otpdial call --to sip:...`. Trunks added with `add_trunk` are trusted
    /// already.
    pub fn trust_source(&mut self, ip: IpAddr) {
        self.policy.add_trunk(ip);
    }

    /// The next datagram to send, oldest first. Queued by every `handle_*` call and by
    /// the commands (`call`, `hangup`, `answer`, ...); the driver sends until `None`
    /// after each of them.
    #[must_use]
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    /// The next event for the application (call progress, answers, ends, trunk status),
    /// oldest first; queued by the same calls as [`Self::poll_transmit`].
    #[must_use]
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// The earliest instant at which [`Self::handle_timeout`] has work to do (a peek at
    /// the deadline heap, plus the trunks' and the QA registrar's own few deadlines).
    /// It changes after any call that takes `now`: `handle_datagram` and
    /// `handle_stream_message` (a response stops or starts a transaction's timers),
    /// `handle_connection_closed` (what ran on that flow ends),
    /// `handle_timeout` (a retransmission moves its timer on, an expiry removes it) and
    /// the commands (`call`, `hangup`, `answer`, `reject`, `add_trunk`, which start
    /// timers). The driver reads it again after each of them; reading it is cheap.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        let trunks = self.trunks.iter().filter_map(|t| t.next_deadline());
        let registrar = self.registrar.as_ref().and_then(|r| r.next_deadline());
        trunks
            .chain(registrar)
            .chain(self.inbound_deadline())
            .chain(self.timers.next())
            .min()
    }

    /// Feeds one SIP message read from a stream connection (framed by
    /// [`crate::sip::frame_stream`]). Answers and later requests to `from` use TCP too.
    pub fn handle_stream_message(&mut self, now: Instant, from: SocketAddr, data: &[u8]) {
        // A connection we opened keeps its transport (TLS); one a peer opened is TCP.
        if let std::collections::hash_map::Entry::Vacant(e) = self.tcp_peers.entry(from) {
            e.insert(Transport::Tcp);
            self.client_flows.insert(from);
        }
        self.handle_datagram(now, from, data);
    }

    /// The driver's word that the TCP or TLS connection with `peer` closed. One we
    /// opened (a trunk's) is opened again by the next message. One the peer opened is a
    /// flow (RFC 5626 §5.3): QA bindings that came on it become unreachable until the
    /// phone registers again, calls on it end, and nothing is sent to it any more (not
    /// over UDP either: its port is the phone's end of the connection).
    pub fn handle_connection_closed(&mut self, now: Instant, peer: SocketAddr) {
        if !self.client_flows.remove(&peer) {
            return;
        }
        self.tcp_peers.remove(&peer);
        if let Some(r) = self.registrar.as_mut() {
            for (username, binding) in r.flow_closed(peer) {
                debug!(%peer, user = %username, "QA registrar: the phone's connection closed");
                self.events.push_back(Event::QaRegistration {
                    username,
                    binding: Some(binding),
                });
            }
        }
        let pinned: Vec<(CallHandle, bool)> = self
            .calls
            .iter()
            .filter(|(_, c)| c.pin_flow && c.destination == peer && !c.ended)
            .map(|(h, c)| (*h, c.dialog.is_some()))
            .collect();
        for (handle, answered) in pinned {
            let reason = if answered {
                EndReason::RemoteHangup
            } else {
                EndReason::Rejected {
                    status: 430,
                    reason: "Flow Failed (the phone's connection closed)".into(),
                }
            };
            self.end_call(now, handle, reason);
        }
    }

    /// Feeds one received UDP datagram. Anything malformed is logged and dropped.
    pub fn handle_datagram(&mut self, now: Instant, from: SocketAddr, data: &[u8]) {
        if self.policy.is_banned(now, from.ip()) {
            // Not even parsed: a banned flood costs a hash lookup.
            self.policy.count(DropReason::Banned);
            return;
        }
        match message::parse(data) {
            Ok(msg) => match msg.start {
                StartLine::Request { .. } => self.on_request(now, from, msg),
                StartLine::Response { .. } => self.on_response(now, msg),
            },
            Err(ParseError::KeepAlive) => {}
            Err(ParseError::MissingHeader(name, req)) => {
                debug!(%from, header = name, "request lacks a mandatory header");
                let facts = RequestFacts {
                    in_dialog: false,
                    is_register: req.method == Method::Register,
                    registered_phone: self.is_registered_phone(now, from),
                };
                match self.policy.check_request(now, from.ip(), facts) {
                    Verdict::Accept => self.reply_bad_request(from, &req, name),
                    // Without Call-ID/CSeq not even a uniform 403 can be built: drop.
                    Verdict::Drop(_) | Verdict::Forbid(_) => {}
                }
            }
            Err(e) => {
                self.policy.count(DropReason::Malformed);
                if self.drop_log.should_log(now, from.ip()) {
                    warn!(
                        source = %from,
                        error = %e,
                        "dropped a malformed SIP message (more from this address are not logged for a minute)"
                    );
                }
            }
        }
        self.drop_stale_timers();
    }

    /// Runs every timer due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.trunk_timers(now);
        self.registrar_timers(now);
        self.inbound_timers(now);
        self.run_due_timers(now);
    }

    // ---- building blocks -------------------------------------------------------------

    fn transmit(&mut self, destination: SocketAddr, payload: Vec<u8>) {
        self.transmits.push_back(Transmit {
            destination,
            transport: self.transport_to(destination),
            payload,
        });
    }

    /// Whether `from` is the address of a registered QA phone.
    fn is_registered_phone(&self, now: Instant, from: SocketAddr) -> bool {
        self.registrar
            .as_ref()
            .is_some_and(|r| r.is_registered_source(now, from))
    }

    /// How we reach `peer`: TCP when it is a TCP trunk or talked TCP to us, else UDP.
    fn transport_to(&self, peer: SocketAddr) -> Transport {
        transaction::transport_for(&self.tcp_peers, peer)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn contact_names_the_transport_when_not_udp() {
        assert_eq!(
            contact_value("otpdial", "192.0.2.1:5060", Transport::Udp),
            "<sip:otpdial@192.0.2.1:5060>"
        );
        assert_eq!(
            contact_value("3150", "192.0.2.1:5060", Transport::Tcp),
            "<sip:3150@192.0.2.1:5060;transport=tcp>"
        );
        assert_eq!(
            contact_value("otpdial", "[2001:db8::1]:5080", Transport::Tcp),
            "<sip:otpdial@[2001:db8::1]:5080;transport=tcp>"
        );
    }
}
