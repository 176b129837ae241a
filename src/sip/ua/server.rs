//! Requests the far end sends us (the UAS side): OPTIONS outside a dialog, and inside one
//! of our calls BYE, INFO (DTMF) and re-INVITE/UPDATE (answered with our unchanged SDP);
//! everything else is refused with the proper code. Retransmitted requests get the cached
//! answer of their server transaction.

use super::keys::TimerKey;
use super::transaction::{AckWait, ServerTx, T1, TIMEOUT_64T1};
use super::*;

/// Upper bound on cached server transactions (each lives Timer J = 32 s).
pub(super) const MAX_SERVER_TXS: usize = 10_000;

pub(super) const ALLOW: &str = "INVITE, ACK, CANCEL, BYE, OPTIONS, INFO, UPDATE";
/// With the QA registrar on, REGISTER too.
pub(super) const ALLOW_WITH_REGISTER: &str =
    "INVITE, ACK, CANCEL, BYE, OPTIONS, INFO, UPDATE, REGISTER";

/// Requests that only make sense for a dialog or transaction we have: without one they
/// get 481 (RFC 3261 §12.2.2, §9.2). Other methods we do not serve get 405.
fn needs_a_dialog(method: Method) -> bool {
    matches!(
        method,
        Method::Bye | Method::Info | Method::Update | Method::Cancel | Method::PRack
    )
}

/// Digit from a SIP INFO body (application/dtmf-relay `Signal=5`, or application/dtmf `5`).
pub(super) fn dtmf_from_info(content_type: Option<&str>, body: &str) -> Option<char> {
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

impl UserAgent {
    pub(super) fn on_request(&mut self, now: Instant, from: SocketAddr, msg: Message) {
        let StartLine::Request { method } = &msg.start else {
            return;
        };
        let method = *method;
        let dialog = self.find_dialog(&msg);
        let inbound = self
            .find_inbound(&msg)
            .or_else(|| self.find_inbound_tx(&msg));
        let method_name = msg
            .extension_method
            .clone()
            .unwrap_or_else(|| method.to_string());
        // RFC 3261 §17.2.3: the same branch from another sent-by is another transaction.
        let key = msg
            .top_branch()
            .zip(msg.top_sent_by())
            .map(|(b, sent_by)| (b, sent_by, method_name));
        let retransmission = key
            .as_ref()
            .is_some_and(|k| self.server_txs.contains_key(k));
        let facts = RequestFacts {
            // A retransmission of a request we answered passed the policy the first time.
            in_dialog: dialog.is_some() || inbound.is_some() || retransmission,
            is_register: method == Method::Register,
            registered_phone: self.is_registered_phone(now, from),
        };
        let verdict = self.policy.check_request(now, from.ip(), facts);
        if let Verdict::Drop(reason) = verdict {
            debug!(%from, %method, reason = reason.as_str(), "request dropped by the listener policy");
            return;
        }
        if verdict == Verdict::Accept && self.on_inbound_request(now, from, method, &msg) {
            return;
        }
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
        if let Some(stx) = key.as_ref().and_then(|k| self.server_txs.get(k)) {
            // Retransmitted request: same answer again (server transaction).
            self.retransmits.count_received(method, Repeated::Request);
            self.retransmits.count_sent(method, Repeated::Response);
            let t = Transmit {
                destination: stx.destination,
                transport: self.transport_to(stx.destination),
                payload: stx.response.clone(),
            };
            self.transmits.push_back(t);
            return;
        }
        let Some(top_via) = msg.vias.first() else {
            return;
        };
        let (mut destination, top_via) = message::response_route(top_via, from);
        if self.tcp_peers.contains_key(&from) {
            // Reliable transport: the response goes back on the request's connection.
            destination = from;
        }
        if let Verdict::Forbid(reason) = verdict {
            // The same 403 for every such request, not cached: a flood of them must not
            // fill the server transaction table.
            debug!(%from, %method, reason = reason.as_str(), "request refused by the listener policy");
            let response = self.build_response(&msg, top_via, 403, Vec::new(), b"");
            self.transmit(destination, response);
            return;
        }

        let mut extra: Vec<Header> = Vec::new();
        let mut body: Vec<u8> = Vec::new();
        let mut awaiting_ack = None;
        let status = match (method, dialog) {
            _ if msg.unsupported_uri_scheme => 416,
            // An extension method (the parser put OPTIONS in its place).
            _ if msg.extension_method.is_some() => {
                extra.push(self.allow());
                501
            }
            (Method::Register, _) if self.registrar.is_some() => {
                match self.on_register(now, from, &msg) {
                    Some((status, headers)) => {
                        extra.extend(headers);
                        status
                    }
                    None => return,
                }
            }
            (Method::Options, _) => {
                extra.push(self.allow());
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
                extra.push(self.contact_towards(from));
                let offer = self
                    .calls
                    .get(&hd)
                    .map(|c| c.offer_sdp.clone())
                    .unwrap_or_default();
                if method == Method::Invite || !msg.body.is_empty() {
                    extra.push(h::ContentType::new("application/sdp").into());
                    body = offer.into_bytes();
                }
                if method == Method::Invite && !self.tcp_peers.contains_key(&from) {
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
            (Method::Invite, None) => 481,
            (m, None) if needs_a_dialog(m) => 481,
            (Method::Cancel | Method::PRack, Some(_)) => 481,
            // A method we know but do not serve (PUBLISH, SUBSCRIBE, NOTIFY, MESSAGE,
            // REFER, REGISTER without the QA registrar): 405 and what we do serve
            // (RFC 3261 §8.2.1).
            _ => {
                extra.push(self.allow());
                405
            }
        };
        let response = self.build_response(&msg, top_via, status, extra, &body);
        self.transmit(destination, response.clone());
        // Cached responses are an optimisation; under a flood of distinct requests stop
        // caching rather than grow without bound.
        if let Some(key) = key.filter(|_| self.server_txs.len() < MAX_SERVER_TXS) {
            let remove_at = now + TIMEOUT_64T1;
            self.server_txs.insert(
                key.clone(),
                ServerTx {
                    destination,
                    response,
                    remove_at,
                    awaiting_ack,
                    queued: None,
                },
            );
            self.schedule(TimerKey::Server(key));
        }
    }

    /// Our Allow header.
    fn allow(&self) -> Header {
        let methods = if self.registrar.is_some() {
            ALLOW_WITH_REGISTER
        } else {
            ALLOW
        };
        h::Allow::new(methods).into()
    }

    pub(super) fn build_response(
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
        if !self.ident.server_header.is_empty() {
            headers.push(h::Server::new(self.ident.server_header.clone()).into());
        }
        headers.extend(extra);
        render::render_response(status, headers, body)
    }

    /// 400 to a request missing mandatory headers, echoing whatever it did have.
    pub(super) fn reply_bad_request(
        &mut self,
        from: SocketAddr,
        req: &rsip::Request,
        missing: &str,
    ) {
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
            .map(str::to_string)
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
        let response = render::render_response(400, headers, b"");
        self.transmit(destination, response);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::sip::policy::{PolicyConfig, UnknownSources};

    const SOURCE: &str = "127.0.0.9";

    fn ua_with(server_header: &str, unknown: UnknownSources) -> UserAgent {
        UserAgent::new(UaConfig {
            local_addr: "127.0.0.1:5060".parse().unwrap(),
            advertised_host: None,
            server_header: server_header.into(),
            policy: PolicyConfig {
                unknown_sources: unknown,
                ..PolicyConfig::default()
            },
            registrar: None,
        })
    }

    /// A UA that trusts the test's source, as it trusts a trunk.
    fn ua() -> UserAgent {
        let mut ua = ua_with("ua-test", UnknownSources::Drop);
        ua.trust_source(SOURCE.parse().unwrap());
        ua
    }

    fn request(method: &str, branch: &str, to_tag: &str) -> String {
        format!(
            "{method} sip:otpdial@127.0.0.1:5060 SIP/2.0\r\n\
             Via: SIP/2.0/UDP 127.0.0.9:5070;branch={branch};rport\r\n\
             From: <sip:x@127.0.0.9>;tag=f1\r\nTo: <sip:otpdial@127.0.0.1>{to_tag}\r\n\
             Call-ID: srv-1\r\nCSeq: 3 {method}\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
        )
    }

    fn answer(ua: &mut UserAgent, text: &str) -> (SocketAddr, Message) {
        let now = Instant::now();
        ua.handle_datagram(now, "127.0.0.9:5070".parse().unwrap(), text.as_bytes());
        let t = ua.poll_transmit().unwrap();
        assert!(ua.poll_transmit().is_none());
        (t.destination, message::parse(&t.payload).unwrap())
    }

    fn status(msg: &Message) -> u16 {
        match msg.start {
            StartLine::Response { status, .. } => status,
            StartLine::Request { .. } => 0,
        }
    }

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
    fn options_outside_a_dialog_gets_200_with_allow_and_a_to_tag() {
        let mut ua = ua();
        let (dest, ok) = answer(&mut ua, &request("OPTIONS", "z9hG4bKo1", ""));
        assert_eq!(dest, "127.0.0.9:5070".parse().unwrap());
        assert_eq!(status(&ok), 200);
        assert!(ok.tag_in_to().is_some(), "a UAS adds a To tag");
        assert_eq!(ok.cseq, 3);
        assert!(ok.vias[0].contains("received=127.0.0.9") || ok.vias[0].contains("rport=5070"));
    }

    #[test]
    fn requests_for_no_dialog_are_refused() {
        let mut ua = ua();
        let (_, bye) = answer(&mut ua, &request("BYE", "z9hG4bKb1", ";tag=nope"));
        assert_eq!(status(&bye), 481);
        let (_, inv) = answer(&mut ua, &request("INVITE", "z9hG4bKi1", ""));
        assert_eq!(status(&inv), 603, "we only place calls");
    }

    #[test]
    fn retransmitted_request_gets_the_cached_answer() {
        let mut ua = ua();
        let req = request("BYE", "z9hG4bKr1", ";tag=nope");
        let (_, first) = answer(&mut ua, &req);
        let (_, again) = answer(&mut ua, &req);
        assert_eq!(first.to, again.to, "same To tag: same transaction");
        assert_eq!(ua.server_txs.len(), 1);
        let counted = ua.retransmissions();
        assert_eq!(
            (counted.received[2], counted.sent[2]),
            ([1, 0], [0, 1]),
            "BYE"
        );
    }

    fn feed(ua: &mut UserAgent, from: &str, text: &str) -> Vec<(Message, String)> {
        ua.handle_datagram(Instant::now(), from.parse().unwrap(), text.as_bytes());
        std::iter::from_fn(|| ua.poll_transmit())
            .map(|t| {
                let text = String::from_utf8(t.payload.clone()).unwrap();
                (message::parse(&t.payload).unwrap(), text)
            })
            .collect()
    }

    #[test]
    fn unknown_sources_get_nothing_by_default() {
        let mut ua = ua_with("", UnknownSources::Drop);
        for m in ["OPTIONS", "INVITE", "REGISTER", "BYE", "INFO"] {
            let sent = feed(&mut ua, "127.0.0.66:5080", &request(m, "z9hG4bKu", ""));
            assert!(sent.is_empty(), "{m} got an answer");
        }
        assert_eq!(
            ua.policy_counters().dropped[DropReason::UnknownSource as usize],
            5
        );
        assert!(ua.is_idle(), "nothing cached for strangers");
    }

    #[test]
    fn unknown_sources_get_a_uniform_403_when_configured() {
        let mut ua = ua_with("", UnknownSources::Forbid);
        let mut seen = Vec::new();
        for m in ["OPTIONS", "INVITE", "BYE"] {
            let sent = feed(&mut ua, "127.0.0.66:5080", &request(m, "z9hG4bKf", ""));
            assert_eq!(sent.len(), 1);
            let (msg, text) = &sent[0];
            assert_eq!(status(msg), 403, "{m}");
            assert!(!text.contains("\r\nServer:"), "{text}");
            assert!(!text.contains("\r\nAllow:"), "{text}");
            seen.push(msg.body.len());
        }
        assert!(seen.iter().all(|n| *n == 0));
        assert!(ua.is_idle(), "403s are not cached");
    }

    #[test]
    fn server_header_is_omitted_when_empty_and_sent_when_set() {
        let mut quiet = ua_with("", UnknownSources::Drop);
        quiet.trust_source(SOURCE.parse().unwrap());
        let from = format!("{SOURCE}:5070");
        let sent = feed(&mut quiet, &from, &request("OPTIONS", "z9hG4bKs1", ""));
        assert!(!sent[0].1.contains("\r\nServer:"), "{}", sent[0].1);
        let sent = feed(&mut ua(), &from, &request("OPTIONS", "z9hG4bKs2", ""));
        assert!(
            sent[0].1.contains("\r\nServer: ua-test\r\n"),
            "{}",
            sent[0].1
        );
    }
}
