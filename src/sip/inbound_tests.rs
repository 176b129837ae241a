//! Scenario tests for inbound calls (the canaries' far end): a fake clock, and a test
//! proxy that routes our own INVITE back to us the way Kamailio does (its Via on top,
//! Record-Route, same Call-ID and From tag). No sockets, no sleeping.
#![allow(clippy::unwrap_used)]

use super::message;
use super::policy::{DropReason, PolicyConfig, UnknownSources};
use super::sdp::{AudioCodec, MediaOffer};
use super::*;
use std::time::{Duration, Instant};

const PROXY: &str = "127.0.0.1:5070";
const LOCAL: &str = "127.0.0.1:5060";
const STRANGER: &str = "127.0.0.66:5099";
const NUMBER: &str = "+31201234567";

const ANSWER_SDP: &str = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\n\
t=0 0\r\nm=audio 31000 RTP/AVP 8\r\na=rtpmap:8 PCMA/8000\r\n";

struct Net {
    ua: UserAgent,
    now: Instant,
    hop: u32,
}

fn ua(unknown: UnknownSources, max_calls: usize) -> UserAgent {
    let mut ua = UserAgent::new(UaConfig {
        local_addr: LOCAL.parse().unwrap(),
        advertised_host: None,
        server_header: String::new(),
        policy: PolicyConfig {
            unknown_sources: unknown,
            ..PolicyConfig::default()
        },
        registrar: None,
    });
    ua.trust_source(PROXY.parse::<SocketAddr>().unwrap().ip());
    ua.set_inbound(InboundConfig {
        numbers: vec![InboundNumber::new(NUMBER).with_alias("0201234567")],
        max_calls,
    });
    ua
}

fn status(text: &str) -> Option<u16> {
    let mut it = text.split(' ');
    (it.next() == Some("SIP/2.0")).then(|| it.next().unwrap().parse().unwrap())
}

fn method(text: &str) -> &str {
    text.split(' ').next().unwrap()
}

/// `text` with its first line followed by `line`.
fn insert_after_start(text: &str, line: &str) -> String {
    let (start, rest) = text.split_once("\r\n").unwrap();
    format!("{start}\r\n{line}\r\n{rest}")
}

/// `text` without the first header line starting with `name:`, or without all of them.
fn drop_headers(text: &str, name: &str, all: bool) -> String {
    let mut out = Vec::new();
    let mut done = false;
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    for line in head.split("\r\n") {
        let hit = line
            .split(':')
            .next()
            .is_some_and(|n| n.trim().eq_ignore_ascii_case(name));
        if hit && (all || !done) {
            done = true;
            continue;
        }
        out.push(line);
    }
    format!("{}\r\n\r\n{body}", out.join("\r\n"))
}

impl Net {
    fn new(ua: UserAgent) -> Net {
        Net {
            ua,
            now: Instant::now(),
            hop: 0,
        }
    }

    fn sent(&mut self) -> Vec<(SocketAddr, String)> {
        std::iter::from_fn(|| self.ua.poll_transmit())
            .map(|t| (t.destination, String::from_utf8(t.payload).unwrap()))
            .collect()
    }

    fn events(&mut self) -> Vec<Event> {
        std::iter::from_fn(|| self.ua.poll_event()).collect()
    }

    fn deliver(&mut self, from: &str, text: &str) {
        self.ua
            .handle_datagram(self.now, from.parse().unwrap(), text.as_bytes());
    }

    /// What the proxy does with a message the UA sent it: a request gets the proxy's Via
    /// (and, for an INVITE, a Record-Route) and loses its Route; a response loses the
    /// proxy's Via. Either goes back to the UA from the proxy.
    fn proxy(&mut self, text: &str) {
        let forwarded = if status(text).is_some() {
            drop_headers(text, "Via", false)
        } else {
            self.hop += 1;
            let mut t = drop_headers(text, "Route", true);
            if method(&t) == "INVITE" {
                t = insert_after_start(&t, &format!("Record-Route: <sip:{PROXY};lr>"));
            }
            insert_after_start(
                &t,
                &format!("Via: SIP/2.0/UDP {PROXY};branch=z9hG4bKpx{}", self.hop),
            )
        };
        self.deliver(PROXY, &forwarded);
    }

    /// Relays everything the UA sends to the proxy until nothing is left; what went
    /// elsewhere is returned.
    fn relay_all(&mut self) -> Vec<(SocketAddr, String)> {
        let mut elsewhere = Vec::new();
        loop {
            let out = self.sent();
            if out.is_empty() {
                return elsewhere;
            }
            for (to, text) in out {
                if to == PROXY.parse::<SocketAddr>().unwrap() {
                    self.proxy(&text);
                } else {
                    elsewhere.push((to, text));
                }
            }
        }
    }

    fn advance(&mut self, d: Duration) {
        let end = self.now + d;
        while let Some(t) = self.ua.poll_timeout().filter(|t| *t <= end) {
            self.now = t.max(self.now);
            self.ua.handle_timeout(self.now);
        }
        self.now = end;
    }
}

fn offer() -> MediaOffer {
    MediaOffer {
        address: "127.0.0.1".parse().unwrap(),
        port: 40000,
        codecs: vec![AudioCodec::Pcma],
        telephone_event_pt: 101,
        ptime_ms: 20,
        srtp: None,
    }
}

fn place(net: &mut Net, user: &str) -> CallHandle {
    net.ua.invite(
        net.now,
        OutgoingCall {
            request_uri: format!("sip:{user}@{PROXY}"),
            destination: PROXY.parse().unwrap(),
            from_uri: "sip:+31508200000@trunk.example".into(),
            from_display: None,
            media: offer(),
            credentials: None,
            extra_headers: Vec::new(),
            transport: Transport::Udp,
            pin_flow: false,
        },
    )
}

fn incoming(events: &[Event]) -> Option<(CallHandle, IncomingInvite)> {
    events.iter().find_map(|e| match e {
        Event::Incoming { call, invite } => Some((*call, invite.clone())),
        _ => None,
    })
}

#[test]
fn our_own_call_routed_back_is_a_second_dialog_in_the_other_role() {
    let mut net = Net::new(ua(UnknownSources::Drop, 4));
    let out = place(&mut net, NUMBER);
    net.relay_all();
    let events = net.events();
    let (inb, invite) = incoming(&events).expect("the routed-back INVITE is offered");
    assert_ne!(inb, out);
    assert_eq!(invite.number, NUMBER);
    assert_eq!(invite.call_id, net.ua.call_id(out).unwrap(), "same Call-ID");
    assert!(invite.offer.contains("m=audio 40000"), "{}", invite.offer);
    assert_eq!(invite.source, PROXY.parse().unwrap());
    // 100 Trying reached the caller side through the proxy.
    assert!(events
        .iter()
        .any(|e| matches!(e, Event::Progress { call, status: 100, .. } if *call == out)));

    net.ua.answer(net.now, inb, ANSWER_SDP.to_string());
    net.relay_all(); // 200 -> proxy -> UAC; ACK -> proxy -> UAS
    let events = net.events();
    let answered = events.iter().find_map(|e| match e {
        Event::Answered { call, media } if *call == out => Some(media.port),
        _ => None,
    });
    assert_eq!(answered, Some(31000), "{events:?}");
    // The ACK reached the server side: no 200 is resent any more.
    net.advance(Duration::from_secs(2));
    assert!(net.sent().is_empty(), "200 resent after its ACK");

    // The caller hangs up: its BYE ends the server dialog, its 200 the client one.
    net.ua.hangup(net.now, out);
    net.relay_all();
    let ends: Vec<(CallHandle, EndReason)> = net
        .events()
        .into_iter()
        .filter_map(|e| match e {
            Event::Ended { call, reason } => Some((call, reason)),
            _ => None,
        })
        .collect();
    assert!(ends.contains(&(inb, EndReason::RemoteHangup)), "{ends:?}");
    assert!(ends.contains(&(out, EndReason::LocalHangup)), "{ends:?}");
    net.advance(Duration::from_secs(40));
    net.relay_all();
    assert!(net.ua.is_idle(), "both dialogs forgotten");
}

#[test]
fn the_answering_side_can_hang_up_first() {
    let mut net = Net::new(ua(UnknownSources::Drop, 4));
    let out = place(&mut net, "0201234567"); // the national alias
    net.relay_all();
    let (inb, invite) = incoming(&net.events()).unwrap();
    assert_eq!(invite.number, NUMBER);
    net.ua.answer(net.now, inb, ANSWER_SDP.to_string());
    net.relay_all();
    net.events();
    net.ua.hangup(net.now, inb);
    net.relay_all();
    let ends: Vec<_> = net
        .events()
        .into_iter()
        .filter(|e| matches!(e, Event::Ended { .. }))
        .collect();
    assert!(ends.contains(&Event::Ended {
        call: out,
        reason: EndReason::RemoteHangup
    }));
    assert!(ends.contains(&Event::Ended {
        call: inb,
        reason: EndReason::LocalHangup
    }));
}

fn invite_from(from: &str, user: &str, branch: &str) -> String {
    format!(
        "INVITE sip:{user}@{LOCAL} SIP/2.0\r\nVia: SIP/2.0/UDP {from};branch={branch}\r\n\
         Max-Forwards: 70\r\nFrom: <sip:+3150@x>;tag=ft{branch}\r\nTo: <sip:{user}@x>\r\n\
         Call-ID: cid-{branch}\r\nCSeq: 1 INVITE\r\nContact: <sip:c@{from}>\r\n\
         Content-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{ANSWER_SDP}",
        ANSWER_SDP.len()
    )
}

#[test]
fn strangers_are_dropped_or_refused_never_offered() {
    let mut net = Net::new(ua(UnknownSources::Drop, 4));
    net.deliver(STRANGER, &invite_from(STRANGER, NUMBER, "z9hG4bKs1"));
    assert!(net.sent().is_empty(), "dropped: nothing back");
    assert!(net.events().is_empty(), "nothing offered");
    let dropped = net.ua.policy_counters().dropped[DropReason::UnknownSource as usize];
    assert_eq!(dropped, 1);

    let mut net = Net::new(ua(UnknownSources::Forbid, 4));
    net.deliver(STRANGER, &invite_from(STRANGER, NUMBER, "z9hG4bKs2"));
    let sent = net.sent();
    assert_eq!(sent.len(), 1);
    assert_eq!(status(&sent[0].1), Some(403));
    assert!(net.events().is_empty());
    assert!(net.ua.is_idle());
}

#[test]
fn trunk_invites_for_other_numbers_are_refused_as_before() {
    let mut net = Net::new(ua(UnknownSources::Drop, 4));
    net.deliver(PROXY, &invite_from(PROXY, "+31201234999", "z9hG4bKo1"));
    let sent = net.sent();
    assert_eq!(status(&sent[0].1), Some(603), "{}", sent[0].1);
    assert!(incoming(&net.events()).is_none());
}

#[test]
fn over_the_limit_is_busy() {
    let mut net = Net::new(ua(UnknownSources::Drop, 1));
    net.deliver(PROXY, &invite_from(PROXY, NUMBER, "z9hG4bKl1"));
    assert_eq!(status(&net.sent()[0].1), Some(100));
    assert!(incoming(&net.events()).is_some());
    net.deliver(PROXY, &invite_from(PROXY, NUMBER, "z9hG4bKl2"));
    let sent = net.sent();
    assert_eq!(status(&sent[0].1), Some(486));
    assert!(incoming(&net.events()).is_none());
    assert_eq!(net.ua.inbound_calls(), 1);
}

#[test]
fn retransmissions_and_a_missing_ack() {
    let mut net = Net::new(ua(UnknownSources::Drop, 4));
    let invite = invite_from(PROXY, NUMBER, "z9hG4bKr1");
    net.deliver(PROXY, &invite);
    net.sent();
    let (call, _) = incoming(&net.events()).unwrap();
    net.deliver(PROXY, &invite);
    assert_eq!(status(&net.sent()[0].1), Some(100), "same answer again");
    assert!(incoming(&net.events()).is_none(), "offered once");
    net.ua.answer(net.now, call, ANSWER_SDP.into());
    let ok = net.sent();
    assert_eq!(status(&ok[0].1), Some(200));
    assert!(ok[0].1.contains(";tag="), "{}", ok[0].1);
    net.deliver(PROXY, &invite);
    assert_eq!(status(&net.sent()[0].1), Some(200));
    // 200 resent at 0.5, 1.5, 3.5, 7.5 ... s (T1 doubling to T2), then BYE at 32 s.
    let start = net.now;
    let mut resent = Vec::new();
    let mut bye = None;
    for _ in 0..80 {
        net.advance(Duration::from_millis(500));
        for (_, text) in net.sent() {
            if status(&text) == Some(200) {
                resent.push((net.now - start).as_millis());
            } else if method(&text) == "BYE" {
                bye.get_or_insert((net.now - start).as_millis());
                assert!(text.contains(&format!("BYE sip:c@{PROXY}")), "{text}");
            }
        }
    }
    assert_eq!(&resent[..4], &[500, 1500, 3500, 7500]);
    assert_eq!(bye, Some(32_000));
}

#[test]
fn cancel_before_the_answer_and_no_answer_in_time() {
    let mut net = Net::new(ua(UnknownSources::Drop, 4));
    net.deliver(PROXY, &invite_from(PROXY, NUMBER, "z9hG4bKc1"));
    net.sent();
    let (call, _) = incoming(&net.events()).unwrap();
    let cancel = format!(
        "CANCEL sip:{NUMBER}@{LOCAL} SIP/2.0\r\nVia: SIP/2.0/UDP {PROXY};branch=z9hG4bKc1\r\n\
         Max-Forwards: 70\r\nFrom: <sip:+3150@x>;tag=ftz9hG4bKc1\r\nTo: <sip:{NUMBER}@x>\r\n\
         Call-ID: cid-z9hG4bKc1\r\nCSeq: 1 CANCEL\r\nContent-Length: 0\r\n\r\n"
    );
    net.deliver(PROXY, &cancel);
    let codes: Vec<_> = net.sent().iter().map(|(_, t)| status(t)).collect();
    assert_eq!(codes, vec![Some(200), Some(487)]);
    assert_eq!(
        net.events(),
        vec![Event::Ended {
            call,
            reason: EndReason::Canceled
        }]
    );
    // Answering a cancelled call does nothing.
    net.ua.answer(net.now, call, ANSWER_SDP.into());
    assert!(net.sent().is_empty());

    net.deliver(PROXY, &invite_from(PROXY, NUMBER, "z9hG4bKc2"));
    net.sent();
    let (late, _) = incoming(&net.events()).unwrap();
    net.advance(Duration::from_secs(17));
    let sent = net.sent();
    assert!(sent.iter().any(|(_, t)| status(t) == Some(480)), "{sent:?}");
    assert!(net.events().contains(&Event::Ended {
        call: late,
        reason: EndReason::Timeout
    }));
}

#[test]
fn the_application_may_refuse() {
    let mut net = Net::new(ua(UnknownSources::Drop, 4));
    net.deliver(PROXY, &invite_from(PROXY, NUMBER, "z9hG4bKj1"));
    net.sent();
    let (call, _) = incoming(&net.events()).unwrap();
    net.ua.reject(net.now, call, 488);
    let sent = net.sent();
    assert_eq!(status(&sent[0].1), Some(488));
    assert!(matches!(
        net.events()[..],
        [Event::Ended {
            reason: EndReason::Rejected { status: 488, .. },
            ..
        }]
    ));
    // The ACK (same branch, our To tag) stops the resends.
    let to_tag = message::parse(sent[0].1.as_bytes())
        .unwrap()
        .tag_in_to()
        .unwrap();
    let ack = format!(
        "ACK sip:{NUMBER}@{LOCAL} SIP/2.0\r\nVia: SIP/2.0/UDP {PROXY};branch=z9hG4bKj1\r\n\
         Max-Forwards: 70\r\nFrom: <sip:+3150@x>;tag=ftz9hG4bKj1\r\nTo: <sip:{NUMBER}@x>;tag={to_tag}\r\n\
         Call-ID: cid-z9hG4bKj1\r\nCSeq: 1 ACK\r\nContent-Length: 0\r\n\r\n"
    );
    net.deliver(PROXY, &ack);
    net.advance(Duration::from_secs(5));
    assert!(net.sent().is_empty());
    net.advance(Duration::from_secs(40));
    assert!(net.ua.is_idle());
}

#[test]
fn malformed_invites_to_an_answer_number_are_never_offered() {
    let mut net = Net::new(ua(UnknownSources::Drop, 4));
    let good = invite_from(PROXY, NUMBER, "z9hG4bKm1");
    // No Call-ID: a 400 from the trunk's address, nothing from a stranger.
    let no_call_id = drop_headers(&good, "Call-ID", true);
    net.deliver(PROXY, &no_call_id);
    let sent = net.sent();
    assert_eq!(sent.len(), 1);
    assert_eq!(status(&sent[0].1), Some(400), "{}", sent[0].1);
    net.deliver(STRANGER, &no_call_id.replace(PROXY, STRANGER));
    assert!(net.sent().is_empty());
    // Garbage, a truncated INVITE and a CSeq that names another method.
    for bad in [
        "INVITE sip:+31201234567@127.0.0.1 SIP/2.0\r\n\r\n".to_string(),
        good[..good.len() / 2].to_string(),
        good.replace("CSeq: 1 INVITE", "CSeq: 1 BYE"),
        "\u{0}\u{1}garbage".to_string(),
    ] {
        net.deliver(PROXY, &bad);
        net.deliver(STRANGER, &bad);
    }
    for (_, text) in net.sent() {
        assert_ne!(status(&text), Some(200), "{text}");
        assert_ne!(status(&text), Some(100), "{text}");
    }
    assert!(incoming(&net.events()).is_none(), "nothing offered");
    assert_eq!(net.ua.inbound_calls(), 0);
}
