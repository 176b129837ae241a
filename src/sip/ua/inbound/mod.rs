//! Inbound calls, UAS side (RFC 3261 §13.3, §17.2.1): an INVITE from a trunk's address
//! for one of our answer numbers (the canaries' far end, SPEC §7) becomes a server
//! dialog that the application answers with its SDP, or rejects. Every other new INVITE
//! is refused as before (see `server`).
//!
//! A canary that a proxy routes back to us arrives with the Call-ID and From tag of our
//! own outgoing INVITE; so dialogs are told apart by role and both tags, never by Call-ID
//! alone: a server dialog's local tag is the To tag we put in our answer, its remote tag
//! the From tag of the INVITE; a client dialog (`dialog`) has them the other way round.
//!
//! Deadlines (2xx until ACK, Timer G/H for a refusal, the application's time to answer,
//! forgetting an ended call) are few, one per inbound call, so they are scanned rather
//! than queued.

use super::dialog::{uri_destination, Peer, CALL_LINGER};
use super::transaction::{ByePurpose, TxMethod, T1, T2, TIMEOUT_64T1};
use super::*;
use crate::sip::{InboundConfig, IncomingInvite};

mod timers;

/// How long the application has to answer or refuse an inbound INVITE.
pub(super) const ANSWER_WAIT: Duration = Duration::from_secs(16);

/// Where an inbound call is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// 100 Trying sent, the application decides.
    Offered,
    /// 200 OK sent; `acked` once the ACK came.
    Answered { acked: bool },
    /// A final non-2xx sent (resent until its ACK, Timer G/H).
    Refused { acked: bool },
}

#[derive(Debug)]
pub(super) struct InboundCall {
    /// The INVITE as received (Via, From, To, Call-ID, CSeq, Record-Route, Contact).
    invite: Message,
    invite_branch: String,
    local_tag: String,
    remote_tag: String,
    /// Where responses go, and the top Via as they carry it.
    reply_to: SocketAddr,
    top_via: String,
    /// Who our in-dialog requests (BYE) go to.
    peer: Peer,
    /// Our From in requests: their To with our tag.
    local_header: String,
    next_cseq: u32,
    stage: Stage,
    /// The last response to the INVITE, resent on a retransmitted INVITE or by a timer.
    last_response: Vec<u8>,
    /// Our SDP answer, repeated in answers to a re-INVITE.
    answer_sdp: String,
    /// Next resend of `last_response` (unreliable transports), with its interval.
    resend: Option<(Instant, Duration)>,
    /// When the current stage gives up: no answer from the application, no ACK.
    give_up_at: Option<Instant>,
    bye_sent: bool,
    ended: bool,
    remove_at: Option<Instant>,
}

impl InboundCall {
    fn next_deadline(&self) -> Option<Instant> {
        [self.resend.map(|r| r.0), self.give_up_at, self.remove_at]
            .into_iter()
            .flatten()
            .min()
    }
}

/// Inbound call handling: its settings and its calls.
#[derive(Debug, Default)]
pub(super) struct Inbound {
    config: Option<InboundConfig>,
    pub(super) calls: HashMap<CallHandle, InboundCall>,
}

impl Inbound {
    fn live(&self) -> usize {
        self.calls.values().filter(|c| !c.ended).count()
    }

    /// The configured number `uri`'s user part stands for, if any.
    fn number_for(&self, uri: &str) -> Option<String> {
        let user = uri_user(uri)?;
        let config = self.config.as_ref()?;
        config
            .numbers
            .iter()
            .find(|n| n.aliases.contains(&user))
            .map(|n| n.number.clone())
    }
}

/// The user part of a `sip:`/`sips:`/`tel:` URI (in angle brackets or not), without
/// user parameters and visual separators: `<sip:+31 20-123@x;user=phone>` → `+3120123`.
pub(super) fn uri_user(uri: &str) -> Option<String> {
    // A bare URI (a Request-URI) may carry user parameters before the `@`, which
    // header-parameter splitting would cut; a name-addr is taken from its brackets.
    let uri = match (uri.find('<'), uri.find('>')) {
        (Some(open), Some(close)) if open < close => &uri[open + 1..close],
        _ => uri.trim(),
    };
    let lower = uri
        .get(..5)
        .map(str::to_ascii_lowercase)
        .unwrap_or_default();
    let rest = if lower.starts_with("sips:") {
        &uri[5..]
    } else if lower.starts_with("sip:") || lower.starts_with("tel:") {
        &uri[4..]
    } else {
        return None;
    };
    let user = match rest.split_once('@') {
        Some((user, _)) => user,
        None if lower.starts_with("tel:") => rest,
        None => return None,
    };
    let user = user.split(';').next().unwrap_or_default();
    let cleaned: String = user
        .chars()
        .filter(|c| !matches!(c, '-' | '.' | ' ' | '(' | ')'))
        .collect();
    (!cleaned.is_empty()).then_some(cleaned)
}

impl UserAgent {
    /// Turns on answering inbound INVITEs for `config`'s numbers (from trunks only).
    pub fn set_inbound(&mut self, config: InboundConfig) {
        self.inbound.config = Some(config);
    }

    /// Inbound calls not yet ended.
    pub fn inbound_calls(&self) -> usize {
        self.inbound.live()
    }

    /// The server dialog a request belongs to: Call-ID, our tag in To, theirs in From.
    pub(super) fn find_inbound(&self, msg: &Message) -> Option<CallHandle> {
        let to_tag = msg.tag_in_to()?;
        let from_tag = msg.tag_in_from()?;
        self.inbound
            .calls
            .iter()
            .find(|(_, c)| {
                c.invite.call_id == msg.call_id && c.local_tag == to_tag && c.remote_tag == from_tag
            })
            .map(|(h, _)| *h)
    }

    /// The inbound call whose INVITE transaction a request (a retransmitted INVITE, a
    /// CANCEL) belongs to: same top Via branch and Call-ID.
    pub(super) fn find_inbound_tx(&self, msg: &Message) -> Option<CallHandle> {
        let branch = msg.top_branch()?;
        self.inbound
            .calls
            .iter()
            .find(|(_, c)| c.invite_branch == branch && c.invite.call_id == msg.call_id)
            .map(|(h, _)| *h)
    }

    /// Handles a request (that the listener policy accepted) if it concerns inbound
    /// calls; false leaves it to the rest of the server side.
    pub(super) fn on_inbound_request(
        &mut self,
        now: Instant,
        from: SocketAddr,
        method: Method,
        msg: &Message,
    ) -> bool {
        if let Some(h) = self.find_inbound(msg) {
            self.in_inbound_dialog(now, from, h, method, msg);
            return true;
        }
        if msg.tag_in_to().is_some() {
            return false;
        }
        if let Some(h) = self.find_inbound_tx(msg) {
            match method {
                Method::Invite => self.resend_inbound(h),
                Method::Cancel => self.cancel_inbound(now, from, h, msg),
                _ => return false,
            }
            return true;
        }
        method == Method::Invite && self.new_inbound(now, from, msg)
    }

    /// A new INVITE: ours to answer when it comes from a trunk for one of our numbers.
    fn new_inbound(&mut self, now: Instant, from: SocketAddr, msg: &Message) -> bool {
        if self.inbound.config.is_none() || !self.policy.is_trunk(from.ip()) {
            return false;
        }
        let number = msg
            .request_uri
            .as_deref()
            .and_then(|u| self.inbound.number_for(u))
            .or_else(|| self.inbound.number_for(&msg.to));
        let Some(number) = number else {
            return false;
        };
        let (Some(branch), Some(remote_tag), Some(top)) =
            (msg.top_branch(), msg.tag_in_from(), msg.vias.first())
        else {
            return false;
        };
        let (mut reply_to, top_via) = message::response_route(top, from);
        if self.tcp_peers.contains_key(&from) {
            reply_to = from;
        }
        let max = self.inbound.config.as_ref().map_or(0, |c| c.max_calls);
        if self.inbound.live() >= max {
            debug!(%from, %number, "inbound call refused: at max_inbound_calls");
            let busy = self.build_response(msg, top_via, 486, Vec::new(), b"");
            self.transmit(reply_to, busy);
            return true;
        }
        let handle = CallHandle(self.next_handle);
        self.next_handle += 1;
        let local_tag = random_token();
        let Some(peer) = caller_peer(msg, from, remote_tag.clone()) else {
            return false;
        };
        let call = InboundCall {
            invite: msg.clone(),
            invite_branch: branch,
            local_header: format!("{};tag={local_tag}", msg.to),
            local_tag,
            remote_tag,
            reply_to,
            top_via,
            peer,
            next_cseq: 1,
            stage: Stage::Offered,
            last_response: Vec::new(),
            answer_sdp: String::new(),
            resend: None,
            give_up_at: Some(now + ANSWER_WAIT),
            bye_sent: false,
            ended: false,
            remove_at: None,
        };
        self.inbound.calls.insert(handle, call);
        self.respond_to_invite(now, handle, 100, Vec::new(), b"");
        let invite = IncomingInvite {
            number,
            call_id: msg.call_id.clone(),
            from: msg.from.clone(),
            request_uri: msg.request_uri.clone().unwrap_or_default(),
            source: from,
            offer: msg.body_str().unwrap_or_default().to_string(),
        };
        debug!(call = %handle, number = %invite.number, %from, "inbound call offered");
        self.events.push_back(Event::Incoming {
            call: handle,
            invite,
        });
        true
    }

    /// Answers an inbound call with `sdp` (200 OK, resent until the ACK).
    pub fn answer(&mut self, now: Instant, call: CallHandle, sdp: String) {
        let reply_to = match self.inbound.calls.get(&call) {
            Some(c) if c.stage == Stage::Offered && !c.ended => c.reply_to,
            _ => return,
        };
        let headers = vec![
            self.contact_towards(reply_to),
            h::Allow::new(server::ALLOW).into(),
            h::ContentType::new("application/sdp").into(),
        ];
        self.respond_to_invite(now, call, 200, headers, sdp.as_bytes());
        if let Some(c) = self.inbound.calls.get_mut(&call) {
            c.answer_sdp = sdp;
            c.stage = Stage::Answered { acked: false };
            c.give_up_at = Some(now + TIMEOUT_64T1);
        }
    }

    /// Refuses an inbound call that is not answered yet (e.g. 488, 503); it ends at once.
    pub fn reject(&mut self, now: Instant, call: CallHandle, status: u16) {
        let offered = self
            .inbound
            .calls
            .get(&call)
            .is_some_and(|c| c.stage == Stage::Offered && !c.ended);
        if !offered || !(300..700).contains(&status) {
            return;
        }
        self.refuse(now, call, status);
        self.end_inbound(
            now,
            call,
            EndReason::Rejected {
                status,
                reason: "refused by us".into(),
            },
        );
    }

    /// Sends a final non-2xx to the INVITE, resent until its ACK (Timer G) for 64*T1.
    fn refuse(&mut self, now: Instant, call: CallHandle, status: u16) {
        self.respond_to_invite(now, call, status, Vec::new(), b"");
        if let Some(c) = self.inbound.calls.get_mut(&call) {
            c.stage = Stage::Refused { acked: false };
            c.give_up_at = Some(now + TIMEOUT_64T1);
        }
    }

    /// Our hangup of an inbound call: BYE once answered, else a refusal (480).
    pub(super) fn hangup_inbound(&mut self, now: Instant, call: CallHandle) {
        let Some(c) = self.inbound.calls.get(&call) else {
            return;
        };
        if c.ended {
            return;
        }
        match c.stage {
            Stage::Offered => self.reject(now, call, 480),
            Stage::Answered { .. } => self.send_inbound_bye(now, call),
            Stage::Refused { .. } => {}
        }
    }

    fn send_inbound_bye(&mut self, now: Instant, call: CallHandle) {
        let Some(c) = self.inbound.calls.get_mut(&call) else {
            return;
        };
        if c.bye_sent {
            return;
        }
        c.bye_sent = true;
        let cseq = c.next_cseq;
        c.next_cseq += 1;
        let (uri, routes) = c.peer.request_line();
        let destination = c.peer.destination;
        let (from, to, call_id) = (
            c.local_header.clone(),
            c.peer.to_header.clone(),
            c.invite.call_id.clone(),
        );
        let branch = new_branch();
        let transport = self.transport_to(destination);
        let headers = common_headers(
            &self.ident,
            &branch,
            &routes,
            &from,
            &to,
            &call_id,
            cseq,
            Method::Bye,
            transport,
        );
        let request = render::render_request(Method::Bye, &uri, headers, b"");
        // Its final response (or Timer F) ends the call through `end_call`.
        self.start_client_tx(
            now,
            (branch, TxMethod::Bye),
            call,
            destination,
            request,
            ByePurpose::Hangup,
        );
    }

    /// Ends an inbound call once: the `Ended` event, then it lingers to absorb
    /// retransmissions.
    pub(super) fn end_inbound(&mut self, now: Instant, call: CallHandle, reason: EndReason) {
        let Some(c) = self.inbound.calls.get_mut(&call) else {
            return;
        };
        if c.ended {
            return;
        }
        c.ended = true;
        c.remove_at = Some(now + CALL_LINGER);
        if matches!(c.stage, Stage::Answered { .. }) {
            // Nothing more to resend once the call is over.
            c.resend = None;
            c.give_up_at = None;
        }
        debug!(call = %call, %reason, "inbound call ended");
        self.events.push_back(Event::Ended { call, reason });
    }

    /// Sends a response to the INVITE of `call`, and remembers it for retransmissions.
    fn respond_to_invite(
        &mut self,
        now: Instant,
        call: CallHandle,
        status: u16,
        extra: Vec<Header>,
        body: &[u8],
    ) {
        let Some(c) = self.inbound.calls.get(&call) else {
            return;
        };
        let mut headers: Vec<Header> = vec![h::Via::new(c.top_via.clone()).into()];
        headers.extend(
            c.invite
                .vias
                .iter()
                .skip(1)
                .map(|v| h::Via::new(v.clone()).into()),
        );
        if (101..300).contains(&status) {
            // The route set the far end keeps (RFC 3261 §12.1.1).
            headers.extend(
                c.invite
                    .record_route
                    .iter()
                    .map(|r| h::RecordRoute::new(r.clone()).into()),
            );
        }
        headers.push(h::From::new(c.invite.from.clone()).into());
        let to = if status == 100 {
            c.invite.to.clone()
        } else {
            c.local_header.clone()
        };
        headers.push(h::To::new(to).into());
        headers.push(h::CallId::new(c.invite.call_id.clone()).into());
        headers.push(h::CSeq::new(format!("{} INVITE", c.invite.cseq)).into());
        if !self.ident.server_header.is_empty() {
            headers.push(h::Server::new(self.ident.server_header.clone()).into());
        }
        headers.extend(extra);
        let response = render::render_response(status, headers, body);
        let reply_to = c.reply_to;
        let reliable = self.tcp_peers.contains_key(&reply_to);
        if let Some(c) = self.inbound.calls.get_mut(&call) {
            c.last_response = response.clone();
            // Finals are resent until the ACK over UDP (2xx: §13.3.1.4; others: Timer G).
            c.resend = (status >= 200 && !reliable).then_some((now + T1, T1));
        }
        self.transmit(reply_to, response);
    }

    /// A retransmitted INVITE: absorbed, the last response again.
    fn resend_inbound(&mut self, call: CallHandle) {
        if let Some(c) = self.inbound.calls.get(&call) {
            self.retransmits
                .count_received(Method::Invite, Repeated::Request);
            if !c.last_response.is_empty() {
                let (to, payload) = (c.reply_to, c.last_response.clone());
                self.transmit(to, payload);
                self.retransmits
                    .count_sent(Method::Invite, Repeated::Response);
            }
        }
    }

    fn cancel_inbound(&mut self, now: Instant, from: SocketAddr, call: CallHandle, msg: &Message) {
        if let Some(top) = msg.vias.first() {
            let (mut to, top) = message::response_route(top, from);
            if self.tcp_peers.contains_key(&from) {
                to = from;
            }
            let ok = self.build_response(msg, top, 200, Vec::new(), b"");
            self.transmit(to, ok);
        }
        let offered = self
            .inbound
            .calls
            .get(&call)
            .is_some_and(|c| c.stage == Stage::Offered && !c.ended);
        if offered {
            self.refuse(now, call, 487);
            self.end_inbound(now, call, EndReason::Canceled);
        }
    }

    /// A request inside an inbound call's dialog (ACK, BYE, INFO, re-INVITE, ...).
    fn in_inbound_dialog(
        &mut self,
        now: Instant,
        from: SocketAddr,
        call: CallHandle,
        method: Method,
        msg: &Message,
    ) {
        if method == Method::Ack {
            if let Some(c) = self.inbound.calls.get_mut(&call) {
                match &mut c.stage {
                    Stage::Answered { acked } | Stage::Refused { acked } => *acked = true,
                    Stage::Offered => {}
                }
                c.resend = None;
                c.give_up_at = None;
            }
            return;
        }
        let Some(top) = msg.vias.first() else {
            return;
        };
        let (mut to, top) = message::response_route(top, from);
        if self.tcp_peers.contains_key(&from) {
            to = from;
        }
        let ended = self.inbound.calls.get(&call).is_none_or(|c| c.ended);
        let mut extra: Vec<Header> = Vec::new();
        let mut body: Vec<u8> = Vec::new();
        let status = match method {
            Method::Bye => {
                self.end_inbound(now, call, EndReason::RemoteHangup);
                200
            }
            _ if ended => 481,
            Method::Info => {
                let digit = msg
                    .body_str()
                    .and_then(|b| server::dtmf_from_info(msg.content_type.as_deref(), b));
                if let Some(digit) = digit {
                    self.events.push_back(Event::Dtmf { call, digit });
                }
                200
            }
            Method::Options => 200,
            Method::Invite | Method::Update => {
                extra.push(self.contact_towards(from));
                if method == Method::Invite || !msg.body.is_empty() {
                    extra.push(h::ContentType::new("application/sdp").into());
                    body = self
                        .inbound
                        .calls
                        .get(&call)
                        .map(|c| c.answer_sdp.clone().into_bytes())
                        .unwrap_or_default();
                }
                200
            }
            _ => {
                extra.push(h::Allow::new(server::ALLOW).into());
                501
            }
        };
        let response = self.build_response(msg, top, status, extra, &body);
        self.transmit(to, response);
    }
}

/// The far end of an inbound call's dialog as its INVITE describes it (RFC 3261
/// §12.1.1): its Contact (else the Request-URI) as the remote target, the Record-Route
/// set, and where in-dialog requests go (the first route, else the Contact, else the
/// INVITE's source). None when no usable target URI is given.
fn caller_peer(msg: &Message, from: SocketAddr, remote_tag: String) -> Option<Peer> {
    let target = msg
        .contact_uri
        .as_deref()
        .and_then(|u| parse_sip_uri(u).ok())
        .or_else(|| {
            msg.request_uri
                .as_deref()
                .and_then(|u| parse_sip_uri(u).ok())
        })?;
    let route_set = msg.record_route.clone();
    let destination = match route_set.first() {
        Some(first) => uri_destination(message::addr_uri(first)),
        None => msg.contact_uri.as_deref().and_then(uri_destination),
    }
    .unwrap_or(from);
    Some(Peer {
        to_header: msg.from.clone(),
        remote_tag,
        target,
        route_set,
        destination,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_parts_of_uris() {
        assert_eq!(
            uri_user("\"Canary\" <sip:+31-20-(123).45@x;user=phone>;tag=1").as_deref(),
            Some("+312012345")
        );
        assert_eq!(
            uri_user("sip:0201234567;npdi@10.0.0.1:5060").as_deref(),
            Some("0201234567")
        );
        assert_eq!(
            uri_user("tel:+31201234567").as_deref(),
            Some("+31201234567")
        );
        assert_eq!(
            uri_user("SIPS:31201234567@x").as_deref(),
            Some("31201234567")
        );
        assert_eq!(uri_user("sip:host.example"), None);
        assert_eq!(uri_user("http://x@y"), None);
        assert_eq!(uri_user("sip:@x"), None);
    }
}
