//! The call and its dialog, UAC side (RFC 3261 §13, §12): the INVITE client (challenges
//! answered, provisional and early media, forked and retransmitted 2xx), ACK, CANCEL and
//! BYE, and the route set from Record-Route (loose and strict routers).

use super::keys::TimerKey;
use super::transaction::{ByePurpose, TxMethod, TxState, TIMEOUT_64T1, TIMER_D};
use super::*;

/// How long an ended call's record stays to answer stragglers (e.g. late 2xx retransmits).
pub(super) const CALL_LINGER: Duration = Duration::from_secs(32);

/// Handles start at 1, so 0 marks transactions that belong to no call.
pub(super) const NO_CALL: CallHandle = CallHandle(0);

/// The far side of a confirmed dialog: everything an in-dialog request needs.
#[derive(Debug, Clone)]
pub(super) struct Peer {
    /// The To header of the 2xx, tag included, echoed in our requests.
    pub(super) to_header: String,
    pub(super) remote_tag: String,
    pub(super) target: rsip::Uri,
    pub(super) route_set: Vec<String>,
    pub(super) destination: SocketAddr,
}

impl Peer {
    /// Request-URI and Route headers for an in-dialog request (RFC 3261 §12.2.1.1): with
    /// a loose-routing first hop (`;lr`) the remote target and the route set as is; with
    /// a strict router (RFC 2543) its URI becomes the Request-URI and the remote target
    /// goes last in the Route headers.
    pub(super) fn request_line(&self) -> (rsip::Uri, Vec<String>) {
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

#[derive(Debug)]
pub(super) struct Call {
    pub(super) call_id: String,
    pub(super) from_header: String,
    pub(super) local_tag: String,
    /// To of the INVITE (no tag); also used by CANCEL.
    pub(super) to_header: String,
    pub(super) request_uri: rsip::Uri,
    pub(super) destination: SocketAddr,
    /// In-dialog requests go to `destination` too (see [`OutgoingCall::pin_flow`]).
    pub(super) pin_flow: bool,
    pub(super) invite_branch: String,
    pub(super) invite_cseq: u32,
    pub(super) next_cseq: u32,
    pub(super) offer_sdp: String,
    pub(super) media: sdp::MediaOffer,
    pub(super) extra_headers: Vec<Header>,
    pub(super) auth: AuthSession,
    pub(super) provisional_seen: bool,
    pub(super) hangup_requested: bool,
    pub(super) cancel_sent: bool,
    pub(super) bye_sent: bool,
    pub(super) dialog: Option<Peer>,
    /// ACK to the first 2xx, resent on retransmitted 2xx.
    pub(super) ack: Option<(SocketAddr, Vec<u8>)>,
    /// Other forks that answered: (To tag, where, ACK), all BYEd.
    pub(super) forks: Vec<(String, SocketAddr, Vec<u8>)>,
    pub(super) ended: bool,
    pub(super) remove_at: Option<Instant>,
    /// Client transactions of this call still kept: an ended call is forgotten only at 0.
    pub(super) open_txs: u32,
    /// Where it sits in the deadline heap ([`super::timers`]).
    pub(super) queued: Option<Instant>,
}

/// Where to send a request for `uri`, when its host is an IP literal. Names would need
/// DNS (RFC 3263), which is the driver's business; callers fall back to the trunk address.
pub(super) fn uri_destination(uri: &str) -> Option<SocketAddr> {
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

impl UserAgent {
    pub fn invite(&mut self, now: Instant, call: OutgoingCall) -> CallHandle {
        let handle = CallHandle(self.next_handle);
        self.next_handle += 1;
        if call.transport.is_reliable() {
            self.tcp_peers.insert(call.destination, call.transport);
        }
        let parsed = parse_sip_uri(&call.request_uri);
        let request_uri = match parsed {
            Ok(uri) => uri,
            Err(e) => {
                debug!(uri = %call.request_uri, error = %e, "invalid request URI, call not placed");
                self.events.push_back(Event::Ended {
                    call: handle,
                    reason: EndReason::NotSent {
                        reason: format!("invalid request URI {:?}: {e}", call.request_uri),
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
            pin_flow: call.pin_flow,
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
            open_txs: 0,
            queued: None,
        };
        self.by_call_id.insert(c.call_id.clone(), handle);
        self.calls.insert(handle, c);
        self.send_invite(now, handle);
        handle
    }

    /// Sends the INVITE of a call with its current branch and CSeq, answering any stored
    /// challenges (the first INVITE has none; a challenged one is resent with new ones).
    pub(super) fn send_invite(&mut self, now: Instant, handle: CallHandle) {
        let Some(dest) = self.calls.get(&handle).map(|c| c.destination) else {
            return;
        };
        let contact = self.contact_towards(dest);
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
            transaction::transport_for(&self.tcp_peers, c.destination),
        );
        headers.push(contact);
        headers.push(h::Allow::new(server::ALLOW).into());
        headers.extend(c.extra_headers.iter().cloned());
        let uri = c.request_uri.to_string();
        headers.extend(c.auth.headers(Method::Invite, &uri, c.offer_sdp.as_bytes()));
        headers.push(h::ContentType::new("application/sdp").into());
        let request = render::render_request(
            Method::Invite,
            &c.request_uri,
            headers,
            c.offer_sdp.as_bytes(),
        );
        let key = (c.invite_branch.clone(), TxMethod::Invite);
        let destination = c.destination;
        self.start_client_tx(now, key, handle, destination, request, ByePurpose::Silent);
    }

    /// Ends a call from our side: BYE once confirmed; CANCEL once a provisional came;
    /// before that, remembers to CANCEL on the first 1xx or ACK+BYE a 2xx.
    pub fn hangup(&mut self, now: Instant, call: CallHandle) {
        if self.inbound.calls.contains_key(&call) {
            return self.hangup_inbound(now, call);
        }
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

    pub(super) fn end_call(&mut self, now: Instant, handle: CallHandle, reason: EndReason) {
        if self.inbound.calls.contains_key(&handle) {
            return self.end_inbound(now, handle, reason);
        }
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
        self.schedule(TimerKey::Call(handle));
    }

    pub(super) fn send_bye(
        &mut self,
        now: Instant,
        handle: CallHandle,
        peer: &Peer,
        purpose: ByePurpose,
    ) {
        self.send_bye_with(now, handle, peer, purpose, false);
    }

    /// BYE; `with_auth` answers the challenges stored for the call (after a 401/407 to a
    /// first BYE: in-dialog requests may be challenged too).
    pub(super) fn send_bye_with(
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
            transaction::transport_for(&self.tcp_peers, peer.destination),
        );
        if with_auth {
            headers.extend(c.auth.headers(Method::Bye, &uri.to_string(), b""));
        }
        let request = render::render_request(Method::Bye, &uri, headers, b"");
        self.start_client_tx(
            now,
            (branch, TxMethod::Bye),
            handle,
            peer.destination,
            request,
            purpose,
        );
    }

    pub(super) fn send_cancel(&mut self, now: Instant, handle: CallHandle) {
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
            transaction::transport_for(&self.tcp_peers, c.destination),
        );
        let request = render::render_request(Method::Cancel, &c.request_uri, headers, b"");
        let branch = c.invite_branch.clone();
        let destination = c.destination;
        // If the INVITE never gets its final (487), give up 64*T1 after the CANCEL.
        if let Some(itx) = self.client_txs.get_mut(&(branch.clone(), TxMethod::Invite)) {
            itx.timeout_at = Some(now + TIMEOUT_64T1);
        }
        self.schedule(TimerKey::Client((branch.clone(), TxMethod::Invite)));
        self.start_client_tx(
            now,
            (branch, TxMethod::Cancel),
            handle,
            destination,
            request,
            ByePurpose::Silent,
        );
    }

    pub(super) fn on_invite_response(
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
                    let reliable = self.tcp_peers.contains_key(&tx.destination);
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
                    // A retransmitted non-2xx final: our ACK got lost; the same again.
                    self.retransmits
                        .count_received(Method::Invite, Repeated::Response);
                    if let Some(ack) = tx.ack.clone() {
                        let dest = tx.destination;
                        self.transmit(dest, ack);
                        self.retransmits.count_sent(Method::Ack, Repeated::Request);
                    }
                }
                TxState::Accepted => {}
            },
        }
    }

    /// ACK for a non-2xx final: part of the INVITE transaction, so same branch, same
    /// Request-URI, To from the response (RFC 3261 §17.1.1.3).
    pub(super) fn build_non2xx_ack(&self, handle: CallHandle, msg: &Message) -> Option<Vec<u8>> {
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
            transaction::transport_for(&self.tcp_peers, c.destination),
        );
        Some(render::render_request(
            Method::Ack,
            &c.request_uri,
            headers,
            b"",
        ))
    }

    pub(super) fn on_invite_2xx(&mut self, now: Instant, handle: CallHandle, msg: &Message) {
        let to_tag = msg.tag_in_to().unwrap_or_default();
        let Some(c) = self.calls.get(&handle) else {
            return;
        };
        if c.dialog.as_ref().is_some_and(|d| d.remote_tag == to_tag) {
            // Retransmitted 2xx: our ACK got lost (RFC 3261 §13.2.2.4).
            self.retransmits
                .count_received(Method::Invite, Repeated::Response);
            if let Some((dest, ack)) = c.ack.clone() {
                self.transmit(dest, ack);
                self.retransmits.count_sent(Method::Ack, Repeated::Request);
            }
            return;
        }
        if let Some((_, dest, ack)) = c.forks.iter().find(|f| f.0 == to_tag).cloned() {
            self.retransmits
                .count_received(Method::Invite, Repeated::Response);
            self.transmit(dest, ack);
            self.retransmits.count_sent(Method::Ack, Repeated::Request);
            return;
        }
        let target = msg
            .contact_uri
            .as_deref()
            .and_then(|u| parse_sip_uri(u).ok())
            .unwrap_or_else(|| c.request_uri.clone());
        let route_set: Vec<String> = msg.record_route.iter().rev().cloned().collect();
        let destination = match route_set.first() {
            _ if c.pin_flow => None,
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
            transaction::transport_for(&self.tcp_peers, peer.destination),
        );
        let ack = render::render_request(Method::Ack, &uri, headers, b"");
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
            Ok(media) => {
                // What we answer to a re-INVITE from now on: our SDP with only the
                // crypto attribute the far end took up (none if it answered plain RTP).
                c.offer_sdp = sdp::keep_crypto(&c.offer_sdp, media.srtp.as_ref().map(|s| s.tag));
                self.events.push_back(Event::Answered {
                    call: handle,
                    media,
                })
            }
            Err(e) => {
                c.bye_sent = true;
                self.send_bye(now, handle, &peer, ByePurpose::Silent);
                self.end_call(now, handle, EndReason::MediaFailed { error: e });
            }
        }
    }

    // ---- requests from the far end -----------------------------------------------------

    /// The confirmed, live call an in-dialog request belongs to (Call-ID and both tags).
    pub(super) fn find_dialog(&self, msg: &Message) -> Option<CallHandle> {
        let handle = *self.by_call_id.get(&msg.call_id)?;
        let c = self.calls.get(&handle)?;
        let peer = c.dialog.as_ref()?;
        let matches = !c.ended
            && msg.tag_in_from().as_deref() == Some(peer.remote_tag.as_str())
            && msg.tag_in_to().as_deref() == Some(c.local_tag.as_str());
        matches.then_some(handle)
    }

    /// Our BYE got its final response (`status`): answer a challenge once, else the call
    /// is over if the BYE was our hangup.
    pub(super) fn on_bye_final(
        &mut self,
        now: Instant,
        handle: CallHandle,
        purpose: ByePurpose,
        status: u16,
        msg: &Message,
    ) {
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

    /// Forgets an ended call whose linger time is over, once no transaction needs it.
    pub(super) fn forget_call_if_done(&mut self, now: Instant, handle: CallHandle) {
        let done = self
            .calls
            .get(&handle)
            .is_some_and(|c| c.ended && c.open_txs == 0 && c.remove_at.is_some_and(|t| t <= now));
        if done {
            if let Some(c) = self.calls.remove(&handle) {
                self.by_call_id.remove(&c.call_id);
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

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

    fn peer(route_set: &[&str]) -> Peer {
        Peer {
            to_header: "<sip:b@x>;tag=t".into(),
            remote_tag: "t".into(),
            target: parse_sip_uri("sip:b@10.0.0.2:5070").unwrap(),
            route_set: route_set.iter().map(|s| s.to_string()).collect(),
            destination: "10.0.0.2:5070".parse().unwrap(),
        }
    }

    #[test]
    fn loose_route_keeps_the_remote_target() {
        let (uri, routes) = peer(&["<sip:10.9.9.1;lr>"]).request_line();
        assert_eq!(uri.to_string(), "sip:b@10.0.0.2:5070");
        assert_eq!(routes, vec!["<sip:10.9.9.1;lr>"]);
        let (uri, routes) = peer(&[]).request_line();
        assert_eq!(uri.to_string(), "sip:b@10.0.0.2:5070");
        assert!(routes.is_empty());
    }

    #[test]
    fn strict_router_becomes_the_request_uri() {
        let (uri, routes) = peer(&["<sip:10.9.9.2:5070>", "<sip:10.9.9.3;lr>"]).request_line();
        assert_eq!(uri.to_string(), "sip:10.9.9.2:5070");
        assert_eq!(routes, vec!["<sip:10.9.9.3;lr>", "<sip:b@10.0.0.2:5070>"]);
    }
}
