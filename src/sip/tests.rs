//! Scenario tests for the user agent: a fake clock and a scripted far end that reads what
//! the UA sends and answers with hand-written SIP (after quinn-proto's test `Pair`).
//! No sockets, no sleeping.
#![allow(clippy::unwrap_used)]

use super::message::{self, Message, StartLine};
use super::sdp::{AudioCodec, MediaOffer};
use super::*;
use std::time::{Duration, Instant};

const PEER: &str = "127.0.0.1:5070";
const LOCAL: &str = "127.0.0.1:5060";

const ANSWER_PCMA: &str = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\n\
t=0 0\r\nm=audio 30000 RTP/AVP 8 96\r\na=rtpmap:8 PCMA/8000\r\n\
a=rtpmap:96 telephone-event/8000\r\na=ptime:20\r\n";

/// A sent datagram as the far end sees it.
#[derive(Debug, Clone)]
struct Sent {
    at: Duration,
    to: SocketAddr,
    text: String,
    /// None for what our parser refuses (a 400 to a request lacking a Call-ID, say).
    parsed: Option<Message>,
}

impl Sent {
    fn msg(&self) -> &Message {
        self.parsed.as_ref().unwrap()
    }
    fn method(&self) -> Option<rsip::Method> {
        match self.msg().start {
            StartLine::Request { method } => Some(method),
            StartLine::Response { .. } => None,
        }
    }
    fn status(&self) -> Option<u16> {
        let mut it = self.text.split(' ');
        (it.next() == Some("SIP/2.0")).then(|| it.next().unwrap().parse().unwrap())
    }
    fn request_uri(&self) -> &str {
        self.text.split(' ').nth(1).unwrap()
    }
    fn branch(&self) -> String {
        self.msg().top_branch().unwrap()
    }
    fn headers(&self, name: &str) -> Vec<String> {
        let head = self.text.split("\r\n\r\n").next().unwrap();
        head.lines()
            .skip(1)
            .filter_map(|l| {
                let (n, v) = l.split_once(':')?;
                n.trim()
                    .eq_ignore_ascii_case(name)
                    .then(|| v.trim().to_string())
            })
            .collect()
    }
}

struct Harness {
    ua: UserAgent,
    start: Instant,
    now: Instant,
    peer: SocketAddr,
    sent: Vec<Sent>,
    events: Vec<Event>,
    credentials: Option<digest::Credentials>,
    tcp: bool,
}

fn offer() -> MediaOffer {
    MediaOffer {
        address: "127.0.0.1".parse().unwrap(),
        port: 40000,
        codecs: vec![AudioCodec::Pcmu, AudioCodec::Pcma],
        telephone_event_pt: 101,
        ptime_ms: 20,
        srtp: None,
    }
}

impl Harness {
    /// A user agent whose far end (`PEER`) is trusted like a trunk.
    fn new() -> Self {
        let start = Instant::now();
        let mut ua = UserAgent::new(UaConfig {
            local_addr: LOCAL.parse().unwrap(),
            advertised_host: None,
            server_header: "otpdial-test".into(),
            policy: Default::default(),
            registrar: None,
        });
        ua.trust_source(PEER.parse::<SocketAddr>().unwrap().ip());
        Harness {
            ua,
            start,
            now: start,
            peer: PEER.parse().unwrap(),
            sent: Vec::new(),
            events: Vec::new(),
            credentials: None,
            tcp: false,
        }
    }

    fn call(&mut self) -> CallHandle {
        let h = self.ua.invite(
            self.now,
            OutgoingCall {
                request_uri: format!("sip:+31612345678@{PEER}"),
                destination: self.peer,
                from_uri: "sip:+31508200000@sip.provider.example".into(),
                from_display: Some("Otp \"Dial\"".into()),
                media: offer(),
                credentials: self.credentials.clone(),
                extra_headers: vec![(
                    "P-Asserted-Identity".into(),
                    "<sip:+31508200000@sip.provider.example>".into(),
                )],
                transport: if self.tcp {
                    Transport::Tcp
                } else {
                    Transport::Udp
                },
                pin_flow: false,
            },
        );
        self.drain();
        h
    }

    fn drain(&mut self) {
        while let Some(t) = self.ua.poll_transmit() {
            let text = String::from_utf8(t.payload.clone()).unwrap();
            let parsed = message::parse(&t.payload).ok();
            self.sent.push(Sent {
                at: self.now - self.start,
                to: t.destination,
                text,
                parsed,
            });
        }
        while let Some(e) = self.ua.poll_event() {
            self.events.push(e);
        }
    }

    /// Moves the fake clock forward, firing every timer on its exact deadline.
    fn advance(&mut self, d: Duration) {
        let target = self.now + d;
        while let Some(t) = self.ua.poll_timeout() {
            if t > target {
                break;
            }
            assert!(t >= self.now, "timer in the past would make a driver spin");
            self.now = t;
            self.ua.handle_timeout(t);
            self.drain();
        }
        self.now = target;
    }

    fn recv(&mut self, text: &str) {
        let from = self.peer;
        self.recv_from(from, text);
    }

    fn recv_from(&mut self, from: SocketAddr, text: &str) {
        self.ua.handle_datagram(self.now, from, text.as_bytes());
        self.drain();
    }

    fn take_sent(&mut self) -> Vec<Sent> {
        std::mem::take(&mut self.sent)
    }

    fn take_events(&mut self) -> Vec<Event> {
        std::mem::take(&mut self.events)
    }

    fn only_sent(&mut self) -> Sent {
        let mut s = self.take_sent();
        assert_eq!(s.len(), 1, "{s:#?}");
        s.remove(0)
    }
}

/// A response the far end builds for `req`, the way a UAS does (RFC 3261 §8.2.6).
fn respond(
    req: &Sent,
    status: u16,
    reason: &str,
    to_tag: Option<&str>,
    extra: &str,
    body: &str,
) -> String {
    let mut s = format!("SIP/2.0 {status} {reason}\r\n");
    for v in &req.msg().vias {
        s.push_str(&format!("Via: {v}\r\n"));
    }
    s.push_str(&format!("From: {}\r\n", req.msg().from));
    match to_tag {
        Some(t) if req.msg().tag_in_to().is_none() => {
            s.push_str(&format!("To: {};tag={t}\r\n", req.msg().to))
        }
        _ => s.push_str(&format!("To: {}\r\n", req.msg().to)),
    }
    s.push_str(&format!("Call-ID: {}\r\n", req.msg().call_id));
    s.push_str(&format!(
        "CSeq: {} {}\r\n",
        req.msg().cseq,
        req.msg().cseq_method
    ));
    s.push_str(extra);
    if !body.is_empty() {
        s.push_str("Content-Type: application/sdp\r\n");
    }
    s.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    s
}

fn ok_with_sdp(invite: &Sent, tag: &str) -> String {
    respond(
        invite,
        200,
        "OK",
        Some(tag),
        &format!("Contact: <sip:callee@{PEER}>\r\n"),
        ANSWER_PCMA,
    )
}

/// A request from the far end inside the dialog the INVITE created.
fn in_dialog_request(
    invite: &Sent,
    peer_tag: &str,
    method: &str,
    cseq: u32,
    branch: &str,
    extra: &str,
    body: &str,
) -> String {
    let our_from = &invite.msg().from;
    let our_tag = invite.msg().tag_in_from().unwrap();
    let our_uri = message::addr_uri(our_from);
    format!(
        "{method} sip:otpdial@{LOCAL} SIP/2.0\r\n\
         Via: SIP/2.0/UDP {PEER};branch={branch};rport\r\n\
         From: <sip:+31612345678@{PEER}>;tag={peer_tag}\r\n\
         To: <{our_uri}>;tag={our_tag}\r\n\
         Call-ID: {}\r\n\
         CSeq: {cseq} {method}\r\n\
         Max-Forwards: 70\r\n{extra}\
         Content-Length: {}\r\n\r\n{body}",
        invite.msg().call_id,
        body.len()
    )
}

fn answered_call(h: &mut Harness) -> (CallHandle, Sent) {
    let call = h.call();
    let invite = h.only_sent();
    h.recv(&respond(&invite, 180, "Ringing", Some("peer1"), "", ""));
    h.recv(&ok_with_sdp(&invite, "peer1"));
    let ack = h.only_sent();
    assert_eq!(ack.method(), Some(rsip::Method::Ack));
    let ev = h.take_events();
    assert!(matches!(ev.last(), Some(Event::Answered { .. })), "{ev:?}");
    (call, invite)
}

fn ended(events: &[Event], call: CallHandle) -> Vec<EndReason> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Ended { call: c, reason } if *c == call => Some(reason.clone()),
            _ => None,
        })
        .collect()
}

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s)
}

#[test]
fn invite_ring_answer_then_local_hangup() {
    let mut h = Harness::new();
    let call = h.call();
    let invite = h.only_sent();
    assert_eq!(invite.to, h.peer);
    assert_eq!(invite.method(), Some(rsip::Method::Invite));
    assert_eq!(invite.request_uri(), format!("sip:+31612345678@{PEER}"));
    let via = &invite.msg().vias[0];
    assert!(
        via.starts_with(&format!("SIP/2.0/UDP {LOCAL};branch=z9hG4bK")),
        "{via}"
    );
    assert!(via.ends_with(";rport"));
    assert_eq!(invite.headers("Max-Forwards"), vec!["70"]);
    assert!(invite
        .msg()
        .from
        .starts_with("\"Otp \\\"Dial\\\"\" <sip:+31508200000@sip.provider.example>;tag="));
    assert!(invite.msg().tag_in_to().is_none());
    assert!(invite.msg().call_id.ends_with(&format!("@{LOCAL}")));
    assert_eq!(invite.headers("CSeq"), vec!["1 INVITE"]);
    assert_eq!(
        invite.headers("Contact"),
        vec![format!("<sip:otpdial@{LOCAL}>")]
    );
    assert_eq!(invite.headers("User-Agent"), vec!["otpdial-test"]);
    assert_eq!(invite.headers("Content-Type"), vec!["application/sdp"]);
    assert!(!invite.headers("Allow").is_empty());
    let body = invite.text.split("\r\n\r\n").nth(1).unwrap();
    assert!(body.contains("m=audio 40000 RTP/AVP 0 8 101\r\n"));
    assert_eq!(
        invite.headers("Content-Length"),
        vec![body.len().to_string()]
    );

    h.recv(&respond(&invite, 100, "Trying", None, "", ""));
    h.recv(&respond(&invite, 180, "Ringing", Some("peer1"), "", ""));
    // After a provisional, Timer A stops: no retransmission while ringing.
    h.advance(secs(20.0));
    assert!(h.take_sent().is_empty());
    h.recv(&ok_with_sdp(&invite, "peer1"));

    let ack = h.only_sent();
    assert_eq!(ack.method(), Some(rsip::Method::Ack));
    assert_eq!(ack.request_uri(), format!("sip:callee@{PEER}"));
    assert_ne!(
        ack.branch(),
        invite.branch(),
        "ACK to 2xx is its own transaction"
    );
    assert!(ack.branch().starts_with("z9hG4bK"));
    assert_eq!(ack.headers("CSeq"), vec!["1 ACK"]);
    assert_eq!(ack.msg().tag_in_to().as_deref(), Some("peer1"));
    assert_eq!(ack.msg().from, invite.msg().from);
    assert_eq!(ack.msg().call_id, invite.msg().call_id);

    let ev = h.take_events();
    assert_eq!(
        ev[..2],
        [
            Event::Progress {
                call,
                status: 100,
                early_media: None
            },
            Event::Progress {
                call,
                status: 180,
                early_media: None
            },
        ]
    );
    match &ev[2] {
        Event::Answered { call: c, media } => {
            assert_eq!(*c, call);
            assert_eq!(media.codec, AudioCodec::Pcma);
            assert_eq!(media.port, 30000);
            assert_eq!(media.telephone_event_pt, Some(96));
        }
        other => panic!("{other:?}"),
    }

    h.ua.hangup(h.now, call);
    h.drain();
    let bye = h.only_sent();
    assert_eq!(bye.method(), Some(rsip::Method::Bye));
    assert_eq!(bye.request_uri(), format!("sip:callee@{PEER}"));
    assert_eq!(bye.to, h.peer);
    assert_eq!(bye.headers("CSeq"), vec!["2 BYE"]);
    assert_eq!(bye.msg().tag_in_to().as_deref(), Some("peer1"));
    assert_eq!(bye.msg().tag_in_from(), invite.msg().tag_in_from());
    h.recv(&respond(&bye, 200, "OK", None, "", ""));
    assert_eq!(
        h.take_events(),
        vec![Event::Ended {
            call,
            reason: EndReason::LocalHangup
        }]
    );

    // Hanging up again is harmless.
    h.ua.hangup(h.now, call);
    h.drain();
    assert!(h.take_sent().is_empty());
    assert_eq!(h.ua.active_calls(), 1);
    h.advance(secs(40.0));
    assert!(h.take_sent().is_empty());
    assert!(h.ua.is_idle(), "{:#?}", h.ua);
    assert_eq!(h.ua.active_calls(), 0);
    assert_eq!(h.ua.poll_timeout(), None);
}

#[test]
fn remote_bye_is_answered_and_ends_the_call_once() {
    let mut h = Harness::new();
    let (call, invite) = answered_call(&mut h);
    let bye = in_dialog_request(&invite, "peer1", "BYE", 7, "z9hG4bKbye1", "", "");
    h.recv_from("10.0.0.9:6000".parse().unwrap(), &bye);
    let ok = h.only_sent();
    assert_eq!(ok.status(), Some(200));
    assert_eq!(
        ok.to,
        "10.0.0.9:6000".parse().unwrap(),
        "rport: answer where it came from"
    );
    assert!(
        ok.msg().vias[0].contains(";received=10.0.0.9;rport=6000"),
        "{}",
        ok.msg().vias[0]
    );
    assert_eq!(ok.headers("CSeq"), vec!["7 BYE"]);
    assert_eq!(
        h.take_events(),
        vec![Event::Ended {
            call,
            reason: EndReason::RemoteHangup
        }]
    );

    // Retransmitted BYE: same 200 again, no second Ended.
    h.advance(secs(0.5));
    h.recv_from("10.0.0.9:6000".parse().unwrap(), &bye);
    let again = h.only_sent();
    assert_eq!(again.text, ok.text);
    assert!(h.take_events().is_empty());
    // A local hangup after that does nothing.
    h.ua.hangup(h.now, call);
    h.drain();
    assert!(h.take_sent().is_empty());

    h.advance(secs(40.0));
    assert!(h.ua.is_idle(), "{:#?}", h.ua);
}

#[test]
fn busy_is_acked_in_the_transaction_and_rejects() {
    let mut h = Harness::new();
    let call = h.call();
    let invite = h.only_sent();
    h.recv(&respond(&invite, 100, "Trying", None, "", ""));
    let busy = respond(&invite, 486, "Busy Here", Some("b1"), "", "");
    h.recv(&busy);
    let ack = h.only_sent();
    assert_eq!(ack.method(), Some(rsip::Method::Ack));
    assert_eq!(ack.branch(), invite.branch());
    assert_eq!(ack.request_uri(), invite.request_uri());
    assert_eq!(ack.headers("CSeq"), vec!["1 ACK"]);
    assert_eq!(ack.msg().tag_in_to().as_deref(), Some("b1"));
    let ev = h.take_events();
    assert_eq!(
        ended(&ev, call),
        vec![EndReason::Rejected {
            status: 486,
            reason: "Busy Here".into()
        }]
    );
    assert!(matches!(ev.last(), Some(Event::Ended { .. })));

    // Timer D absorbs the retransmitted 486: ACK again, no event.
    h.advance(secs(2.0));
    h.recv(&busy);
    assert_eq!(h.only_sent().text, ack.text);
    assert!(h.take_events().is_empty());
    h.advance(secs(33.0));
    assert!(h.ua.is_idle(), "{:#?}", h.ua);
    // After Timer D the straggler matches nothing.
    h.recv(&busy);
    assert!(h.take_sent().is_empty());
}

#[test]
fn no_response_retransmits_on_timer_a_then_times_out() {
    let mut h = Harness::new();
    let call = h.call();
    let first = h.only_sent();
    h.advance(secs(40.0));
    let sent = h.take_sent();
    let times: Vec<f64> = sent.iter().map(|s| s.at.as_secs_f64()).collect();
    assert_eq!(times, vec![0.5, 1.5, 3.5, 7.5, 15.5, 31.5]);
    assert!(sent.iter().all(|s| s.text == first.text && s.to == h.peer));
    assert_eq!(
        h.take_events(),
        vec![Event::Ended {
            call,
            reason: EndReason::Timeout
        }]
    );
    h.advance(secs(40.0));
    assert!(h.ua.is_idle(), "{:#?}", h.ua);
}

#[test]
fn timer_b_fires_at_32_seconds() {
    let mut h = Harness::new();
    let call = h.call();
    h.advance(secs(31.999));
    assert!(h.take_events().is_empty());
    h.advance(secs(0.001));
    assert_eq!(
        h.take_events(),
        vec![Event::Ended {
            call,
            reason: EndReason::Timeout
        }]
    );
}

#[test]
fn retransmitted_200_is_acked_again() {
    let mut h = Harness::new();
    let call = h.call();
    let invite = h.only_sent();
    let ok = ok_with_sdp(&invite, "peer1");
    h.recv(&ok);
    let ack = h.only_sent();
    h.advance(secs(0.5));
    h.recv(&ok);
    let ack2 = h.only_sent();
    assert_eq!(ack2.text, ack.text);
    let ev = h.take_events();
    assert_eq!(ev.len(), 1, "one Answered only: {ev:?}");
    assert!(matches!(ev[0], Event::Answered { call: c, .. } if c == call));
}

#[test]
fn forked_second_200_is_acked_and_byed_silently() {
    let mut h = Harness::new();
    let (call, invite) = answered_call(&mut h);
    let fork = respond(
        &invite,
        200,
        "OK",
        Some("fork2"),
        "Contact: <sip:other@127.0.0.1:5072>\r\n",
        ANSWER_PCMA,
    );
    h.recv(&fork);
    let sent = h.take_sent();
    assert_eq!(sent.len(), 2, "{sent:#?}");
    let (ack, bye) = (&sent[0], &sent[1]);
    assert_eq!(ack.method(), Some(rsip::Method::Ack));
    assert_eq!(ack.msg().tag_in_to().as_deref(), Some("fork2"));
    assert_eq!(ack.to, "127.0.0.1:5072".parse().unwrap());
    assert_eq!(bye.method(), Some(rsip::Method::Bye));
    assert_eq!(bye.msg().tag_in_to().as_deref(), Some("fork2"));
    assert_eq!(bye.request_uri(), "sip:other@127.0.0.1:5072");
    // The fork's 200 retransmitted: only the ACK again.
    h.recv(&fork);
    assert_eq!(h.only_sent().text, ack.text);
    h.recv(&respond(bye, 200, "OK", None, "", ""));
    assert!(h.take_events().is_empty(), "forks make no events");

    // The real call is untouched.
    h.ua.hangup(h.now, call);
    h.drain();
    let bye1 = h.only_sent();
    assert_eq!(bye1.msg().tag_in_to().as_deref(), Some("peer1"));
    h.recv(&respond(&bye1, 200, "OK", None, "", ""));
    assert_eq!(
        h.take_events(),
        vec![Event::Ended {
            call,
            reason: EndReason::LocalHangup
        }]
    );
    h.advance(secs(40.0));
    assert!(h.ua.is_idle(), "{:#?}", h.ua);
}

#[test]
fn record_route_becomes_the_route_set() {
    let mut h = Harness::new();
    let call = h.call();
    let invite = h.only_sent();
    let ok = respond(
        &invite,
        200,
        "OK",
        Some("rr"),
        &format!(
            "Record-Route: <sip:10.9.9.1:5060;lr>, <sip:10.9.9.2;lr;ftag=x>\r\n\
             Record-Route: <sip:10.9.9.3:5090;lr>\r\nContact: <sip:callee@{PEER}>\r\n"
        ),
        ANSWER_PCMA,
    );
    h.recv(&ok);
    let ack = h.only_sent();
    let want = vec![
        "<sip:10.9.9.3:5090;lr>".to_string(),
        "<sip:10.9.9.2;lr;ftag=x>".to_string(),
        "<sip:10.9.9.1:5060;lr>".to_string(),
    ];
    assert_eq!(ack.headers("Route"), want);
    assert_eq!(ack.request_uri(), format!("sip:callee@{PEER}"));
    assert_eq!(
        ack.to,
        "10.9.9.3:5090".parse().unwrap(),
        "sent to the first route"
    );
    h.ua.hangup(h.now, call);
    h.drain();
    let bye = h.only_sent();
    assert_eq!(bye.headers("Route"), want);
    assert_eq!(bye.to, "10.9.9.3:5090".parse().unwrap());
}

#[test]
fn requests_outside_any_dialog() {
    let mut h = Harness::new();
    let bye = "BYE sip:otpdial@127.0.0.1:5060 SIP/2.0\r\n\
               Via: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bKx1\r\n\
               From: <sip:a@127.0.0.1>;tag=a\r\nTo: <sip:b@127.0.0.1>;tag=b\r\n\
               Call-ID: nosuchcall\r\nCSeq: 5 BYE\r\nContent-Length: 0\r\n\r\n";
    h.recv(bye);
    let r = h.only_sent();
    assert_eq!(r.status(), Some(481));
    assert!(r
        .text
        .starts_with("SIP/2.0 481 Call/Transaction Does Not Exist\r\n"));
    assert!(
        r.text.ends_with("\r\nContent-Length: 0\r\n\r\n"),
        "{:?}",
        r.text
    );
    assert_eq!(r.to, h.peer, "no rport: sent-by port");
    assert_eq!(r.headers("CSeq"), vec!["5 BYE"]);

    let options = "OPTIONS sip:otpdial@127.0.0.1:5060 SIP/2.0\r\n\
               Via: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bKo1;rport\r\n\
               From: <sip:a@127.0.0.1>;tag=a\r\nTo: <sip:otpdial@127.0.0.1>\r\n\
               Call-ID: ping1\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n";
    h.recv(options);
    let r = h.only_sent();
    assert_eq!(r.status(), Some(200));
    assert!(r.msg().tag_in_to().is_some(), "UAS adds a To tag");
    assert!(r.headers("Allow")[0].contains("BYE"));

    let info = bye.replace("BYE", "INFO").replace("z9hG4bKx1", "z9hG4bKi1");
    h.recv(&info);
    assert_eq!(h.only_sent().status(), Some(481));

    let new_invite = options
        .replace("OPTIONS", "INVITE")
        .replace("z9hG4bKo1", "z9hG4bKn1");
    h.recv(&new_invite);
    assert_eq!(h.only_sent().status(), Some(603));
    assert!(h.take_events().is_empty());
    h.advance(secs(33.0));
    assert!(h.ua.is_idle(), "{:#?}", h.ua);
}

#[test]
fn garbage_and_truncated_messages_break_nothing() {
    let mut h = Harness::new();
    let call = h.call();
    let invite = h.only_sent();
    let mut junk: Vec<Vec<u8>> = vec![
        b"".to_vec(),
        b"\r\n\r\n".to_vec(),
        vec![0xff; 300],
        b"SIP/2.0 200".to_vec(),
        b"hello world\r\n\r\n".to_vec(),
    ];
    // Every prefix of a real INVITE and of the real 200.
    for n in 0..invite.text.len() {
        junk.push(invite.text.as_bytes()[..n].to_vec());
    }
    let ok = ok_with_sdp(&invite, "peer1");
    for n in (0..ok.len()).step_by(7) {
        junk.push(ok.as_bytes()[..n].to_vec());
    }
    for j in &junk {
        h.ua.handle_datagram(h.now, h.peer, j);
    }
    h.drain();
    // Truncated messages were dropped, or, when a prefix happened to be a complete request
    // (UDP needs no Content-Length), answered with a final response: never a new request.
    for s in h.take_sent() {
        assert!(matches!(s.status(), Some(400 | 603)), "{}", s.text);
    }
    assert!(h
        .take_events()
        .iter()
        .all(|e| matches!(e, Event::Progress { .. })));
    // The call still works.
    h.recv(&ok);
    assert_eq!(h.only_sent().method(), Some(rsip::Method::Ack));
    assert!(matches!(h.take_events()[..], [Event::Answered { call: c, .. }] if c == call));
}

#[test]
fn request_without_call_id_gets_400() {
    let mut h = Harness::new();
    h.recv(
        "OPTIONS sip:otpdial@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bKq\r\n\
         From: <sip:a@b>;tag=1\r\nTo: <sip:c@d>\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n",
    );
    let r = h.only_sent();
    assert_eq!(r.status(), Some(400));
    assert!(r.text.starts_with("SIP/2.0 400"));
    // Without Via there is nobody to answer.
    h.recv("OPTIONS sip:otpdial@127.0.0.1 SIP/2.0\r\nCall-ID: x\r\nCSeq: 1 OPTIONS\r\n\r\n");
    assert!(h.take_sent().is_empty());
}

#[test]
fn compact_headers_from_the_far_end_work() {
    let mut h = Harness::new();
    let call = h.call();
    let invite = h.only_sent();
    let ok = format!(
        "SIP/2.0 200 OK\r\nv: {}\r\nf: {}\r\nt: {}\r\n ;tag=c1\r\ni: {}\r\nCSeq : 1 INVITE\r\n\
         m: <sip:callee@{PEER}>\r\nc: application/sdp\r\nl: {}\r\n\r\n{}",
        invite.msg().vias[0],
        invite.msg().from,
        invite.msg().to,
        invite.msg().call_id,
        ANSWER_PCMA.len(),
        ANSWER_PCMA
    );
    h.recv(&ok);
    let ack = h.only_sent();
    assert_eq!(ack.msg().tag_in_to().as_deref(), Some("c1"));
    assert!(matches!(h.take_events()[..], [Event::Answered { call: c, .. }] if c == call));
}

#[test]
fn answer_without_sdp_is_media_failure() {
    let mut h = Harness::new();
    let call = h.call();
    let invite = h.only_sent();
    h.recv(&respond(
        &invite,
        200,
        "OK",
        Some("p"),
        &format!("Contact: <sip:callee@{PEER}>\r\n"),
        "",
    ));
    let sent = h.take_sent();
    let methods: Vec<_> = sent.iter().map(|s| s.method()).collect();
    assert_eq!(
        methods,
        vec![Some(rsip::Method::Ack), Some(rsip::Method::Bye)]
    );
    let ev = h.take_events();
    assert!(
        matches!(&ev[..], [Event::Ended { call: c, reason: EndReason::MediaFailed { .. } }] if *c == call),
        "{ev:?}"
    );
    h.recv(&respond(&sent[1], 200, "OK", None, "", ""));
    assert!(h.take_events().is_empty());
    h.advance(secs(40.0));
    assert!(h.ua.is_idle(), "{:#?}", h.ua);
}

#[test]
fn early_media_and_cancel() {
    let mut h = Harness::new();
    let call = h.call();
    let invite = h.only_sent();
    h.recv(&respond(
        &invite,
        183,
        "Session Progress",
        Some("e1"),
        "",
        ANSWER_PCMA,
    ));
    let ev = h.take_events();
    match &ev[..] {
        [Event::Progress {
            status: 183,
            early_media: Some(m),
            ..
        }] => assert_eq!(m.codec, AudioCodec::Pcma),
        other => panic!("{other:?}"),
    }
    h.ua.hangup(h.now, call);
    h.drain();
    let cancel = h.only_sent();
    assert_eq!(cancel.method(), Some(rsip::Method::Cancel));
    assert_eq!(cancel.branch(), invite.branch());
    assert_eq!(cancel.headers("CSeq"), vec!["1 CANCEL"]);
    assert_eq!(cancel.request_uri(), invite.request_uri());
    assert!(cancel.msg().tag_in_to().is_none());
    h.recv(&respond(&cancel, 200, "OK", Some("e1"), "", ""));
    assert!(h.take_sent().is_empty());
    h.recv(&respond(
        &invite,
        487,
        "Request Terminated",
        Some("e1"),
        "",
        "",
    ));
    let ack = h.only_sent();
    assert_eq!(ack.branch(), invite.branch());
    assert_eq!(
        h.take_events(),
        vec![Event::Ended {
            call,
            reason: EndReason::Canceled
        }]
    );
    h.advance(secs(40.0));
    assert!(h.ua.is_idle(), "{:#?}", h.ua);
}

#[test]
fn hangup_before_any_response_cancels_on_first_provisional() {
    let mut h = Harness::new();
    let call = h.call();
    let invite = h.only_sent();
    h.ua.hangup(h.now, call);
    h.drain();
    assert!(
        h.take_sent().is_empty(),
        "no CANCEL before a provisional (RFC 3261 §9.1)"
    );
    h.recv(&respond(&invite, 100, "Trying", None, "", ""));
    assert_eq!(h.only_sent().method(), Some(rsip::Method::Cancel));
}

#[test]
fn hangup_before_answer_then_200_is_acked_and_byed() {
    let mut h = Harness::new();
    let call = h.call();
    let invite = h.only_sent();
    h.ua.hangup(h.now, call);
    h.recv(&ok_with_sdp(&invite, "late"));
    let sent = h.take_sent();
    let methods: Vec<_> = sent.iter().map(|s| s.method()).collect();
    assert_eq!(
        methods,
        vec![Some(rsip::Method::Ack), Some(rsip::Method::Bye)]
    );
    assert!(
        h.take_events().is_empty(),
        "no Answered for a call we hung up"
    );
    h.recv(&respond(&sent[1], 200, "OK", None, "", ""));
    assert_eq!(
        h.take_events(),
        vec![Event::Ended {
            call,
            reason: EndReason::LocalHangup
        }]
    );
}

#[test]
fn bye_retransmits_on_timer_e_and_gives_up_on_timer_f() {
    let mut h = Harness::new();
    let (call, _invite) = answered_call(&mut h);
    let t0 = h.now - h.start;
    h.ua.hangup(h.now, call);
    h.drain();
    let bye = h.only_sent();
    h.advance(secs(40.0));
    let sent = h.take_sent();
    let times: Vec<f64> = sent.iter().map(|s| (s.at - t0).as_secs_f64()).collect();
    assert_eq!(
        times,
        vec![0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5, 23.5, 27.5, 31.5]
    );
    assert!(sent.iter().all(|s| s.text == bye.text));
    assert_eq!(
        h.take_events(),
        vec![Event::Ended {
            call,
            reason: EndReason::LocalHangup
        }]
    );
    h.advance(secs(40.0));
    assert!(h.ua.is_idle(), "{:#?}", h.ua);
}

#[test]
fn reinvite_info_and_dtmf_in_dialog() {
    let mut h = Harness::new();
    let (call, invite) = answered_call(&mut h);
    let offer_body = invite.text.split("\r\n\r\n").nth(1).unwrap().to_string();

    let reinvite = in_dialog_request(
        &invite,
        "peer1",
        "INVITE",
        2,
        "z9hG4bKre1",
        "Contact: <sip:callee@127.0.0.1:5070>\r\nContent-Type: application/sdp\r\n",
        ANSWER_PCMA,
    );
    h.recv(&reinvite);
    let ok = h.only_sent();
    assert_eq!(ok.status(), Some(200));
    assert_eq!(ok.text.split("\r\n\r\n").nth(1).unwrap(), offer_body);
    // 2xx retransmitted until the ACK arrives.
    h.advance(secs(0.5));
    assert_eq!(h.only_sent().text, ok.text);
    let ack = in_dialog_request(&invite, "peer1", "ACK", 2, "z9hG4bKack2", "", "");
    h.recv(&ack);
    assert!(h.take_sent().is_empty());
    h.advance(secs(5.0));
    assert!(h.take_sent().is_empty(), "ACK stopped the retransmission");

    let info = in_dialog_request(
        &invite,
        "peer1",
        "INFO",
        3,
        "z9hG4bKinfo",
        "Content-Type: application/dtmf-relay\r\n",
        "Signal=7\r\nDuration=160\r\n",
    );
    h.recv(&info);
    assert_eq!(h.only_sent().status(), Some(200));
    assert_eq!(h.take_events(), vec![Event::Dtmf { call, digit: '7' }]);
    assert_eq!(h.ua.active_calls(), 1);
}

#[test]
fn unparseable_request_uri_ends_the_call_without_sending() {
    let mut h = Harness::new();
    let call = h.ua.invite(
        h.now,
        OutgoingCall {
            request_uri: "not a uri".into(),
            destination: h.peer,
            from_uri: "sip:a@b".into(),
            from_display: None,
            media: offer(),
            credentials: None,
            extra_headers: Vec::new(),
            transport: Transport::Udp,
            pin_flow: false,
        },
    );
    h.drain();
    assert!(h.take_sent().is_empty());
    assert_eq!(ended(&h.take_events(), call).len(), 1);
    assert!(h.ua.is_idle());
}

#[test]
fn late_200_after_timer_b_is_acked_and_byed() {
    let mut h = Harness::new();
    let call = h.call();
    let invite = h.only_sent();
    h.advance(secs(32.0));
    h.take_sent();
    assert_eq!(
        h.take_events(),
        vec![Event::Ended {
            call,
            reason: EndReason::Timeout
        }]
    );
    h.recv(&ok_with_sdp(&invite, "late"));
    let sent = h.take_sent();
    let methods: Vec<_> = sent.iter().map(|s| s.method()).collect();
    assert_eq!(
        methods,
        vec![Some(rsip::Method::Ack), Some(rsip::Method::Bye)]
    );
    assert!(h.take_events().is_empty());
    h.recv(&respond(&sent[1], 200, "OK", None, "", ""));
    h.advance(secs(40.0));
    assert!(h.ua.is_idle(), "{:#?}", h.ua);
}

#[test]
fn response_for_unknown_transaction_is_ignored() {
    let mut h = Harness::new();
    let call = h.call();
    let invite = h.only_sent();
    let stray = respond(&invite, 200, "OK", Some("x"), "", ANSWER_PCMA)
        .replace(&invite.branch(), "z9hG4bKsomeoneelse");
    h.recv(&stray);
    assert!(h.take_sent().is_empty());
    assert!(h.take_events().is_empty());
    // Our INVITE is still being retransmitted.
    h.advance(secs(0.5));
    assert_eq!(h.only_sent().method(), Some(rsip::Method::Invite));
    let _ = call;
}

/// Cheap in-tree stand-in for a fuzz target: thousands of mutated real messages into a
/// UA with a live call. Only "no panic, timers sane" is asserted.
#[test]
fn mutated_messages_never_panic() {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x5eed);
    let mut h = Harness::new();
    let (_call, invite) = answered_call(&mut h);
    let seeds: Vec<Vec<u8>> = vec![
        invite.text.clone().into_bytes(),
        ok_with_sdp(&invite, "peer1").into_bytes(),
        respond(&invite, 486, "Busy Here", Some("b"), "", "").into_bytes(),
        in_dialog_request(&invite, "peer1", "BYE", 9, "z9hG4bKm", "", "").into_bytes(),
        in_dialog_request(
            &invite,
            "peer1",
            "INFO",
            9,
            "z9hG4bKn",
            "Content-Type: application/dtmf-relay\r\n",
            "Signal=1\r\n",
        )
        .into_bytes(),
    ];
    let alphabet = b" :;,<>\"=\r\n\t@[]0123456789abcdefvftimlSIP/2.0z9hG4bK";
    for i in 0..20_000 {
        let mut m = seeds[i % seeds.len()].clone();
        for _ in 0..rng.random_range(1..6) {
            if m.is_empty() {
                break;
            }
            let at = rng.random_range(0..m.len());
            match rng.random_range(0..4) {
                0 => m[at] = alphabet[rng.random_range(0..alphabet.len())],
                1 => {
                    m.remove(at);
                }
                2 => m.insert(at, alphabet[rng.random_range(0..alphabet.len())]),
                _ => m[at] = rng.random(),
            }
        }
        h.ua.handle_datagram(h.now, h.peer, &m);
        while h.ua.poll_transmit().is_some() {}
        while h.ua.poll_event().is_some() {}
    }
    h.advance(secs(120.0));
    assert!(h.ua.poll_timeout().is_none_or(|t| t > h.now));
}

// ---- digest auth, registration, keepalive ----------------------------------------------

fn mufasa() -> digest::Credentials {
    digest::Credentials {
        username: "auth-user".into(),
        password: "s3cret".into(),
    }
}

fn challenge(header: &str, nonce: &str, extra: &str) -> String {
    format!(
        "{header}: Digest realm=\"trunk.example\", nonce=\"{nonce}\", qop=\"auth,auth-int\", \
         algorithm=SHA-256, opaque=\"op1\"{extra}\r\n"
    )
}

/// The digest answer the UA put in `sent`, checked against our own computation.
fn check_digest(sent: &Sent, header: &str, method: &str, nonce: &str, nc: &str) {
    let value = sent.headers(header);
    assert_eq!(value.len(), 1, "{header} in {}", sent.text);
    let v = &value[0];
    assert!(v.contains("username=\"auth-user\""), "{v}");
    assert!(v.contains(&format!("nc={nc}")), "{v}");
    assert!(
        v.contains("qop=auth,") && v.contains("opaque=\"op1\""),
        "{v}"
    );
    assert!(v.contains("algorithm=SHA-256"), "{v}");
    assert!(!sent.text.contains("s3cret"), "password on the wire");
    let cnonce = v
        .split("cnonce=\"")
        .nth(1)
        .unwrap()
        .split('"')
        .next()
        .unwrap();
    let ch = digest::Challenge::parse(&format!(
        "Digest realm=\"trunk.example\", nonce=\"{nonce}\", qop=\"auth\", algorithm=SHA-256, opaque=\"op1\""
    ))
    .unwrap();
    let nc_n = u32::from_str_radix(nc, 16).unwrap();
    let want = digest::answer(
        &ch,
        &mufasa(),
        digest::RequestParts {
            method,
            uri: sent.request_uri(),
            body: b"",
        },
        nc_n,
        cnonce,
    );
    assert_eq!(digest::response_of(v), digest::response_of(&want), "{v}");
}

#[test]
fn invite_407_is_answered_with_proxy_authorization_then_call_proceeds() {
    let mut h = Harness::new();
    h.credentials = Some(mufasa());
    let call = h.call();
    let invite = h.only_sent();
    assert_eq!(
        invite.headers("P-Asserted-Identity"),
        vec!["<sip:+31508200000@sip.provider.example>"]
    );
    h.recv(&respond(
        &invite,
        407,
        "Proxy Authentication Required",
        Some("px"),
        &challenge("Proxy-Authenticate", "n1", ""),
        "",
    ));
    let sent = h.take_sent();
    assert_eq!(sent.len(), 2, "{sent:#?}");
    assert_eq!(sent[0].method(), Some(rsip::Method::Ack));
    assert_eq!(
        sent[0].branch(),
        invite.branch(),
        "ACK of a non-2xx is in the transaction"
    );
    let retry = &sent[1];
    assert_eq!(retry.method(), Some(rsip::Method::Invite));
    assert_eq!(retry.msg().call_id, invite.msg().call_id);
    assert_eq!(retry.msg().tag_in_from(), invite.msg().tag_in_from());
    assert_eq!(retry.msg().cseq, 2);
    assert_ne!(retry.branch(), invite.branch());
    check_digest(retry, "Proxy-Authorization", "INVITE", "n1", "00000001");
    assert!(h.take_events().is_empty(), "no call event for a challenge");

    // A retransmitted 407 of the first transaction is ACKed again, nothing else.
    h.recv(&respond(
        &invite,
        407,
        "Proxy Authentication Required",
        Some("px"),
        &challenge("Proxy-Authenticate", "n1", ""),
        "",
    ));
    assert_eq!(h.only_sent().method(), Some(rsip::Method::Ack));

    h.recv(&respond(retry, 180, "Ringing", Some("peer1"), "", ""));
    h.recv(&ok_with_sdp(retry, "peer1"));
    assert_eq!(h.only_sent().method(), Some(rsip::Method::Ack));
    let ev = h.take_events();
    assert!(matches!(ev.last(), Some(Event::Answered { call: c, .. }) if *c == call));
    // CANCEL/BYE after this use the authenticated transaction's CSeq space.
    h.ua.hangup(h.now, call);
    h.drain();
    let bye = h.only_sent();
    assert_eq!(bye.msg().cseq, 3);
}

#[test]
fn refused_credentials_end_the_call_but_stale_nonce_retries() {
    let mut h = Harness::new();
    h.credentials = Some(mufasa());
    let call = h.call();
    let invite = h.only_sent();
    h.recv(&respond(
        &invite,
        401,
        "Unauthorized",
        Some("u"),
        &challenge("WWW-Authenticate", "n1", ""),
        "",
    ));
    let retry = h.take_sent().pop().unwrap();
    check_digest(&retry, "Authorization", "INVITE", "n1", "00000001");
    // stale=true: the nonce expired, not the password; retry with the new nonce.
    h.recv(&respond(
        &retry,
        401,
        "Unauthorized",
        Some("u"),
        &challenge("WWW-Authenticate", "n2", ", stale=true"),
        "",
    ));
    let retry2 = h.take_sent().pop().unwrap();
    assert_eq!(retry2.msg().cseq, 3);
    check_digest(&retry2, "Authorization", "INVITE", "n2", "00000001");
    // Same realm, not stale: the credentials are wrong; give up.
    h.recv(&respond(
        &retry2,
        401,
        "Unauthorized",
        Some("u"),
        &challenge("WWW-Authenticate", "n3", ""),
        "",
    ));
    let sent = h.take_sent();
    assert_eq!(sent.len(), 1, "only the ACK: {sent:#?}");
    let reasons = ended(&h.take_events(), call);
    assert!(
        matches!(&reasons[..], [EndReason::Rejected { status: 401, reason }] if reason.contains("authentication failed")),
        "{reasons:?}"
    );
}

#[test]
fn challenge_without_credentials_rejects_the_call() {
    let mut h = Harness::new();
    let call = h.call();
    let invite = h.only_sent();
    h.recv(&respond(
        &invite,
        407,
        "Proxy Authentication Required",
        Some("u"),
        &challenge("Proxy-Authenticate", "n1", ""),
        "",
    ));
    assert_eq!(h.only_sent().method(), Some(rsip::Method::Ack));
    assert!(matches!(
        &ended(&h.take_events(), call)[..],
        [EndReason::Rejected { status: 407, .. }]
    ));
}

#[test]
fn challenged_bye_is_resent_with_credentials() {
    let mut h = Harness::new();
    h.credentials = Some(mufasa());
    let (call, _invite) = answered_call(&mut h);
    h.ua.hangup(h.now, call);
    h.drain();
    let bye = h.only_sent();
    h.recv(&respond(
        &bye,
        401,
        "Unauthorized",
        None,
        &challenge("WWW-Authenticate", "nb", ""),
        "",
    ));
    let bye2 = h.only_sent();
    assert_eq!(bye2.method(), Some(rsip::Method::Bye));
    assert_eq!(bye2.msg().cseq, bye.msg().cseq + 1);
    check_digest(&bye2, "Authorization", "BYE", "nb", "00000001");
    assert!(h.take_events().is_empty());
    h.recv(&respond(&bye2, 200, "OK", None, "", ""));
    assert_eq!(ended(&h.take_events(), call), vec![EndReason::LocalHangup]);
}

fn trunk_cfg(register: bool, options: Option<Duration>) -> TrunkConfig {
    TrunkConfig {
        name: "t1".into(),
        destination: PEER.parse().unwrap(),
        registrar_uri: format!("sip:{PEER}"),
        aor: "sip:31508200000@trunk.example".into(),
        credentials: Some(mufasa()),
        register,
        register_expires: 3600,
        options_interval: options,
        one_shot: false,
        transport: Transport::Udp,
        tls: None,
    }
}

fn probes(events: &[Event]) -> Vec<(ProbeResult, TrunkStatus)> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::TrunkProbe { result, status, .. } => Some((result.clone(), status.clone())),
            _ => None,
        })
        .collect()
}

#[test]
fn register_with_auth_423_and_refresh_before_expiry() {
    let mut h = Harness::new();
    let id = h.ua.add_trunk(h.now, trunk_cfg(true, None));
    h.drain();
    let reg = h.only_sent();
    assert_eq!(reg.method(), Some(rsip::Method::Register));
    assert_eq!(reg.request_uri(), format!("sip:{PEER}"));
    assert_eq!(reg.headers("Expires"), vec!["3600"]);
    assert!(reg.msg().from.contains("sip:31508200000@trunk.example"));
    assert!(reg.headers("Authorization").is_empty());

    h.recv(&respond(
        &reg,
        401,
        "Unauthorized",
        Some("r"),
        &challenge("WWW-Authenticate", "rn1", ""),
        "",
    ));
    let reg2 = h.only_sent();
    assert_eq!(
        reg2.msg().call_id,
        reg.msg().call_id,
        "one Call-ID per registration"
    );
    assert_eq!(reg2.msg().cseq, reg.msg().cseq + 1);
    check_digest(&reg2, "Authorization", "REGISTER", "rn1", "00000001");

    // The registrar wants longer registrations.
    h.recv(&respond(
        &reg2,
        423,
        "Interval Too Brief",
        Some("r"),
        "Min-Expires: 7200\r\n",
        "",
    ));
    let reg3 = h.only_sent();
    assert_eq!(reg3.headers("Expires"), vec!["7200"]);
    check_digest(&reg3, "Authorization", "REGISTER", "rn1", "00000002");
    assert!(!h.ua.trunk_status(id).unwrap().registered);

    let contact = format!("Contact: <sip:31508200000@{LOCAL}>;expires=120\r\n");
    h.recv(&respond(&reg3, 200, "OK", Some("r"), &contact, ""));
    let p = probes(&h.take_events());
    assert_eq!(p.len(), 1);
    assert!(p[0].0.ok && p[0].0.authenticated, "{p:?}");
    assert_eq!(p[0].0.expires, Some(120));
    assert!(p[0].1.registered && p[0].1.last_error.is_none());

    // Refreshed at 60 s (half of a short grant), starting a fresh auth round.
    h.advance(secs(59.9));
    assert!(h.take_sent().is_empty());
    h.advance(secs(0.2));
    let refresh = h.only_sent();
    assert_eq!(refresh.method(), Some(rsip::Method::Register));
    assert_eq!(refresh.msg().call_id, reg.msg().call_id);
    // Nobody answers: the registration runs out at 120 s, the REGISTER times out (F).
    h.advance(secs(61.0));
    assert!(!h.ua.trunk_status(id).unwrap().registered, "expired");
    h.advance(secs(40.0));
    let p = probes(&h.take_events());
    let last = p.last().unwrap();
    assert!(!last.0.ok && last.0.status.is_none(), "{p:?}");
    assert_eq!(last.1.reachable, Some(false));
    assert!(last
        .1
        .last_error
        .as_deref()
        .unwrap()
        .contains("no response"));
}

#[test]
fn failed_registration_retries_with_backoff() {
    let mut h = Harness::new();
    let id = h.ua.add_trunk(h.now, trunk_cfg(true, None));
    h.drain();
    let reg = h.only_sent();
    h.recv(&respond(&reg, 403, "Forbidden", Some("r"), "", ""));
    let st = h.ua.trunk_status(id).unwrap();
    assert!(!st.registered);
    assert_eq!(st.reachable, Some(true));
    assert_eq!(st.last_error.as_deref(), Some("REGISTER: 403 Forbidden"));
    h.advance(secs(9.9));
    assert!(h.take_sent().is_empty());
    h.advance(secs(0.2));
    let again = h.only_sent();
    h.recv(&respond(
        &again,
        503,
        "Service Unavailable",
        Some("r"),
        "",
        "",
    ));
    // Second failure: 20 s.
    h.advance(secs(19.9));
    assert!(h.take_sent().is_empty());
    h.advance(secs(0.2));
    let third = h.only_sent();
    h.recv(&respond(
        &third,
        200,
        "OK",
        Some("r"),
        "Expires: 600\r\n",
        "",
    ));
    let st = h.ua.trunk_status(id).unwrap();
    assert!(st.registered && st.last_error.is_none());
}

#[test]
fn options_keepalive_marks_a_silent_trunk_unreachable() {
    let mut h = Harness::new();
    let id = h.ua.add_trunk(h.now, trunk_cfg(false, Some(secs(30.0))));
    h.drain();
    let opt = h.only_sent();
    assert_eq!(opt.method(), Some(rsip::Method::Options));
    h.advance(secs(0.05));
    h.recv(&respond(&opt, 200, "OK", Some("o"), "", ""));
    let p = probes(&h.take_events());
    assert!(p[0].0.ok);
    assert_eq!(p[0].0.rtt, Some(secs(0.05)));
    assert_eq!(h.ua.trunk_status(id).unwrap().reachable, Some(true));
    // Next OPTIONS 30 s later; this one goes unanswered: retransmitted (Timer E) and
    // given up after 64*T1 (Timer F).
    h.advance(secs(30.0));
    let sent = h.take_sent();
    assert_eq!(sent.len(), 1);
    h.advance(secs(31.0));
    let retrans = h.take_sent();
    assert!(retrans.len() >= 5 && retrans.iter().all(|s| s.text == sent[0].text));
    h.advance(secs(2.0));
    let st = h.ua.trunk_status(id).unwrap();
    assert_eq!(st.reachable, Some(false));
    assert!(st.last_error.unwrap().contains("OPTIONS"));
    assert!(
        !h.ua.is_idle() || h.ua.poll_timeout().is_some(),
        "keepalive continues"
    );
}

// ---- RFC 4475 torture messages ---------------------------------------------------------

/// The 49 messages of RFC 4475 (bit-exact, `tests/rfc4475/*.dat`, named as in the RFC's
/// archive) and whether a SIP parser must accept them. Syntactically valid messages with
/// semantic problems (§3.2, §3.3 except the two that are parse errors) must parse; the UA
/// answers them (416, 501, 481, ...).
const TORTURE: &[(&str, bool)] = &[
    // §3.1.1 valid messages
    ("wsinv", true),
    ("intmeth", true),
    ("esc01", true),
    ("escnull", true),
    ("esc02", true),
    ("lwsdisp", true),
    ("longreq", true),
    ("dblreq", true),
    ("semiuri", true),
    ("transports", true),
    ("mpart01", true),
    ("unreason", true),
    ("noreason", true),
    // §3.1.2 invalid messages
    ("badinv01", false),
    ("clerr", false),
    ("ncl", false),
    ("scalar02", false),
    ("scalarlg", false),
    ("quotbal", false),
    ("ltgtruri", false),
    ("lwsruri", false),
    ("lwsstart", false),
    ("trws", false),
    ("escruri", false),
    ("baddate", false),
    ("regbadct", false),
    ("badaspec", false),
    ("baddn", false),
    ("badvers", false),
    ("mismatch01", false),
    ("mismatch02", false),
    ("bigcode", false),
    // §3.2 transaction layer
    ("badbranch", true),
    // §3.3 application layer
    ("insuf", false),
    ("unkscm", true),
    ("novelsc", true),
    ("unksm2", true),
    ("bext01", true),
    ("invut", true),
    ("regaut01", true),
    ("multi01", false),
    ("mcl01", false),
    ("bcast", true),
    ("zeromf", true),
    ("cparam01", true),
    ("cparam02", true),
    ("regescrt", true),
    ("sdp01", true),
    // §3.4 backwards compatibility
    ("inv2543", true),
];

fn torture(name: &str) -> Vec<u8> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/rfc4475")
        .join(format!("{name}.dat"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn rfc4475_valid_messages_parse_and_invalid_ones_are_rejected() {
    assert_eq!(TORTURE.len(), 49);
    let mut wrong = Vec::new();
    for (name, valid) in TORTURE {
        let result = parse_message(&torture(name));
        if result.is_ok() != *valid {
            wrong.push(format!("{name}: {result:?}"));
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
}

#[test]
fn rfc4475_messages_into_a_live_user_agent() {
    let mut h = Harness::new();
    let (call, _invite) = answered_call(&mut h);
    for (name, _) in TORTURE {
        h.recv(&String::from_utf8_lossy(&torture(name)));
    }
    // Requests the UA could read were answered: unknown scheme 416, extension method 501,
    // missing From/To/Call-ID 400; none of them touched the live call.
    let statuses: Vec<u16> = h.take_sent().iter().filter_map(|s| s.status()).collect();
    for want in [416, 501, 400] {
        assert!(statuses.contains(&want), "{want} in {statuses:?}");
    }
    assert!(h.take_events().is_empty());
    h.ua.hangup(h.now, call);
    h.drain();
    assert_eq!(h.only_sent().method(), Some(rsip::Method::Bye));
}

/// Inputs the fuzz target once crashed on (`tests/fuzz-regressions/`): they must stay
/// plain errors.
#[test]
fn fuzz_regressions_do_not_panic() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz-regressions");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let data = std::fs::read(entry.unwrap().path()).unwrap();
        let _ = parse_message(&data);
        let mut h = Harness::new();
        h.ua.handle_datagram(h.now, h.peer, &data);
        n += 1;
    }
    assert!(n > 0);
}

/// The fuzz target's entry point (`fuzz/fuzz_targets/parse_message.rs`) under a seeded
/// mutation loop over the torture messages, so CI exercises it without nightly.
#[test]
fn parse_message_survives_mutated_torture_messages() {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(4475);
    let seeds: Vec<Vec<u8>> = TORTURE.iter().map(|(n, _)| torture(n)).collect();
    let alphabet = b" :;,<>\"=\r\n\t@[]%?0123456789abcdefvftimlSIP/2.0z9hG4bK";
    for i in 0..30_000 {
        let mut m = seeds[i % seeds.len()].clone();
        for _ in 0..rng.random_range(1..8) {
            if m.is_empty() {
                break;
            }
            let at = rng.random_range(0..m.len());
            match rng.random_range(0..6) {
                0 => m[at] = alphabet[rng.random_range(0..alphabet.len())],
                1 => {
                    m.remove(at);
                }
                2 => m.insert(at, alphabet[rng.random_range(0..alphabet.len())]),
                3 => m.truncate(at),
                // Valid multi-byte UTF-8: byte-index slicing bugs only show with these
                // (the fuzzer found one).
                4 => {
                    let c = ['\u{2ab}', 'é', '€', '😀'][rng.random_range(0..4)];
                    let mut b = [0u8; 4];
                    let enc = c.encode_utf8(&mut b).as_bytes().to_vec();
                    m.splice(at..at, enc);
                }
                _ => m[at] = rng.random(),
            }
        }
        let _ = parse_message(&m);
    }
}

#[test]
fn tcp_call_has_no_retransmissions_and_answers_on_the_connection() {
    let mut h = Harness::new();
    h.tcp = true;
    let call = h.call();
    let invite = h.only_sent();
    let via = &invite.msg().vias[0];
    assert!(via.starts_with("SIP/2.0/TCP "), "{via}");
    assert!(invite.headers("Contact")[0].ends_with(";transport=tcp>"));
    let t = h.ua.poll_transmit();
    assert!(t.is_none());
    // No Timer A on a reliable transport; Timer B still bounds the wait.
    h.advance(secs(10.0));
    assert!(h.take_sent().is_empty(), "no retransmission over TCP");
    h.recv(&respond(&invite, 180, "Ringing", Some("p"), "", ""));
    h.recv(&ok_with_sdp(&invite, "p"));
    assert_eq!(h.only_sent().method(), Some(rsip::Method::Ack));
    // A request from the far end arriving on a TCP connection from an ephemeral port is
    // answered on that connection, whatever its Via says.
    let ephemeral: SocketAddr = "127.0.0.1:40123".parse().unwrap();
    let bye = in_dialog_request(&invite, "p", "BYE", 5, "z9hG4bKtcpbye", "", "");
    h.ua.handle_stream_message(h.now, ephemeral, bye.as_bytes());
    h.drain();
    let ok = h.only_sent();
    assert_eq!(ok.status(), Some(200));
    assert_eq!(ok.to, ephemeral);
    assert_eq!(ended(&h.take_events(), call), vec![EndReason::RemoteHangup]);
}

#[test]
fn external_address_goes_into_via_and_contact_of_calls_and_registrations() {
    let mut h = Harness::new();
    h.ua = UserAgent::new(UaConfig {
        local_addr: LOCAL.parse().unwrap(),
        advertised_host: Some("203.0.113.7".into()),
        server_header: "otpdial-test".into(),
        policy: Default::default(),
        registrar: None,
    });
    h.ua.trust_source(h.peer.ip());
    h.call();
    let invite = h.only_sent();
    assert!(invite.msg().vias[0].starts_with("SIP/2.0/UDP 203.0.113.7:5060;"));
    assert!(
        invite.msg().vias[0].ends_with(";rport"),
        "NAT: ask for rport"
    );
    assert_eq!(
        invite.headers("Contact"),
        vec!["<sip:otpdial@203.0.113.7:5060>"]
    );
    h.ua.add_trunk(h.now, trunk_cfg(true, None));
    h.drain();
    let reg = h.only_sent();
    assert_eq!(
        reg.headers("Contact"),
        vec!["<sip:31508200000@203.0.113.7:5060>"]
    );
}

#[test]
fn strict_router_in_record_route_gets_the_request_uri() {
    let mut h = Harness::new();
    let call = h.call();
    let invite = h.only_sent();
    let ok = respond(
        &invite,
        200,
        "OK",
        Some("sr"),
        &format!(
            "Record-Route: <sip:10.9.9.1:5060;lr>, <sip:10.9.9.2:5070>\r\n\
             Contact: <sip:callee@{PEER}>\r\n"
        ),
        ANSWER_PCMA,
    );
    h.recv(&ok);
    let ack = h.only_sent();
    // RFC 3261 §12.2.1.1: the strict router's URI is the Request-URI, the remote target
    // is appended to the Route headers, and the request goes to the strict router.
    assert_eq!(ack.request_uri(), "sip:10.9.9.2:5070");
    assert_eq!(
        ack.headers("Route"),
        vec![
            "<sip:10.9.9.1:5060;lr>".to_string(),
            format!("<sip:callee@{PEER}>")
        ]
    );
    assert_eq!(ack.to, "10.9.9.2:5070".parse().unwrap());
    h.ua.hangup(h.now, call);
    h.drain();
    let bye = h.only_sent();
    assert_eq!(bye.request_uri(), "sip:10.9.9.2:5070");
    assert_eq!(bye.to, "10.9.9.2:5070".parse().unwrap());
}

#[test]
fn register_and_options_over_tcp_advertise_a_tcp_contact() {
    // The Contact of a REGISTER is where the trunk sends our calls' requests: over TCP it
    // must say so, like the Contact of an INVITE (one builder for both).
    let mut h = Harness::new();
    let mut cfg = trunk_cfg(true, Some(Duration::from_secs(30)));
    cfg.transport = Transport::Tcp;
    h.ua.add_trunk(h.now, cfg);
    h.drain();
    let sent = h.take_sent();
    assert_eq!(sent.len(), 2, "REGISTER and OPTIONS");
    for s in &sent {
        assert!(s.msg().vias[0].starts_with("SIP/2.0/TCP "), "{}", s.text);
        assert_eq!(
            s.headers("Contact"),
            vec![format!("<sip:31508200000@{LOCAL};transport=tcp>")],
            "{}",
            s.text
        );
    }
    h.tcp = true;
    h.call();
    let invite = h.only_sent();
    assert_eq!(
        invite.headers("Contact"),
        vec![format!("<sip:otpdial@{LOCAL};transport=tcp>")]
    );
}

fn qa_ua() -> UserAgent {
    UserAgent::new(UaConfig {
        local_addr: LOCAL.parse().unwrap(),
        advertised_host: None,
        server_header: String::new(),
        policy: Default::default(),
        registrar: Some(RegistrarConfig {
            realm: "otpdial-qa".into(),
            accounts: vec![QaAccount {
                username: "qa-alice".into(),
                password: "pw-alice".into(),
            }],
            min_expires: 60,
            max_expires: 3600,
        }),
    })
}

fn qa_register(branch: &str, cseq: u32, auth: Option<&str>, expires: u32) -> String {
    format!(
        "REGISTER sip:{LOCAL} SIP/2.0\r\n\
         Via: SIP/2.0/UDP 10.1.1.5:5062;branch={branch};rport\r\n\
         From: <sip:qa-alice@{LOCAL}>;tag=ph\r\nTo: <sip:qa-alice@{LOCAL}>\r\n\
         Call-ID: qa-reg@10.1.1.5\r\nCSeq: {cseq} REGISTER\r\nMax-Forwards: 70\r\n\
         Contact: <sip:qa-alice@10.1.1.5:5062>\r\nExpires: {expires}\r\n{}\
         Content-Length: 0\r\n\r\n",
        auth.map(|a| format!("Authorization: {a}\r\n"))
            .unwrap_or_default()
    )
}

/// Sends `text` from `from` and returns the one answer (status, raw text).
fn exchange(
    ua: &mut UserAgent,
    now: Instant,
    from: SocketAddr,
    text: &str,
) -> Option<(u16, String)> {
    ua.handle_datagram(now, from, text.as_bytes());
    let t = ua.poll_transmit()?;
    assert!(ua.poll_transmit().is_none());
    assert_eq!(t.destination, from, "answered where it came from (rport)");
    let msg = message::parse(&t.payload).unwrap();
    let StartLine::Response { status, .. } = msg.start else {
        panic!("not a response")
    };
    Some((status, String::from_utf8(t.payload).unwrap()))
}

fn answer_challenge(resp: &str, password: &str) -> String {
    let value = resp
        .lines()
        .find_map(|l| l.strip_prefix("WWW-Authenticate: "))
        .unwrap();
    let ch = digest::Challenge::parse(value).unwrap();
    digest::answer(
        &ch,
        &digest::Credentials {
            username: "qa-alice".into(),
            password: password.into(),
        },
        digest::RequestParts {
            method: "REGISTER",
            uri: &format!("sip:{LOCAL}"),
            body: b"",
        },
        1,
        "cn1",
    )
}

#[test]
fn qa_phone_registers_through_nat_is_reachable_then_unregisters() {
    let mut ua = qa_ua();
    let now = Instant::now();
    // The phone sits behind a NAT: its packets come from 198.51.100.7:40001.
    let nat: SocketAddr = "198.51.100.7:40001".parse().unwrap();
    let (status, resp) =
        exchange(&mut ua, now, nat, &qa_register("z9hG4bK1", 1, None, 600)).unwrap();
    assert_eq!(status, 401, "REGISTER from anywhere is challenged");
    assert!(resp.contains("realm=\"otpdial-qa\""), "{resp}");
    assert!(
        resp.contains("received=198.51.100.7") && resp.contains("rport=40001"),
        "{resp}"
    );
    let auth = answer_challenge(&resp, "pw-alice");
    let (status, resp) = exchange(
        &mut ua,
        now,
        nat,
        &qa_register("z9hG4bK2", 2, Some(&auth), 600),
    )
    .unwrap();
    assert_eq!(status, 200, "{resp}");
    assert!(
        resp.contains("Contact: <sip:qa-alice@10.1.1.5:5062>;expires=600"),
        "{resp}"
    );
    let binding = match ua.poll_event() {
        Some(Event::QaRegistration {
            username,
            binding: Some(b),
        }) if username == "qa-alice" => b,
        other => panic!("{other:?}"),
    };
    assert_eq!(binding.source, nat, "calls go through the NAT binding");
    assert_eq!(binding.contact, "sip:qa-alice@10.1.1.5:5062");
    // Now the phone's address is known: its OPTIONS is answered.
    let options = format!(
        "OPTIONS sip:{LOCAL} SIP/2.0\r\nVia: SIP/2.0/UDP 10.1.1.5:5062;branch=z9hG4bKo;rport\r\n\
         From: <sip:qa-alice@{LOCAL}>;tag=o\r\nTo: <sip:{LOCAL}>\r\nCall-ID: o1\r\n\
         CSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
    );
    assert_eq!(
        exchange(&mut ua, now, nat, &options).map(|r| r.0),
        Some(200)
    );
    // Unregister (Expires: 0) with a fresh challenge.
    let (_, resp) = exchange(&mut ua, now, nat, &qa_register("z9hG4bK3", 3, None, 0)).unwrap();
    let auth = answer_challenge(&resp, "pw-alice");
    let (status, _) = exchange(
        &mut ua,
        now,
        nat,
        &qa_register("z9hG4bK4", 4, Some(&auth), 0),
    )
    .unwrap();
    assert_eq!(status, 200);
    assert!(matches!(
        ua.poll_event(),
        Some(Event::QaRegistration { binding: None, .. })
    ));
    // Gone: its OPTIONS is an unknown source's again.
    let options2 = options.replace("z9hG4bKo", "z9hG4bKo2");
    assert_eq!(exchange(&mut ua, now, nat, &options2), None);
}

#[test]
fn qa_binding_expires_on_the_clock() {
    let mut ua = qa_ua();
    let now = Instant::now();
    let nat: SocketAddr = "198.51.100.7:40001".parse().unwrap();
    let (_, resp) = exchange(&mut ua, now, nat, &qa_register("z9hG4bK1", 1, None, 120)).unwrap();
    let auth = answer_challenge(&resp, "pw-alice");
    exchange(
        &mut ua,
        now,
        nat,
        &qa_register("z9hG4bK2", 2, Some(&auth), 120),
    )
    .unwrap();
    assert!(ua.poll_event().is_some());
    assert_eq!(
        ua.poll_timeout(),
        Some(now + Duration::from_secs(32)),
        "server tx first"
    );
    ua.handle_timeout(now + Duration::from_secs(119));
    assert!(ua.poll_event().is_none());
    ua.handle_timeout(now + Duration::from_secs(120));
    assert_eq!(
        ua.poll_event(),
        Some(Event::QaRegistration {
            username: "qa-alice".into(),
            binding: None
        })
    );
}

#[test]
fn password_guessing_is_banned_after_ten_failures() {
    let mut ua = qa_ua();
    let now = Instant::now();
    let attacker: SocketAddr = "127.0.0.77:5099".parse().unwrap();
    let mut challenges = 0;
    for i in 0..10 {
        let (status, resp) = exchange(
            &mut ua,
            now,
            attacker,
            &qa_register(&format!("z9hG4bKa{i}"), 2 * i, None, 600),
        )
        .unwrap();
        assert_eq!(status, 401);
        challenges += 1;
        let auth = answer_challenge(&resp, &format!("guess{i}"));
        let answer = exchange(
            &mut ua,
            now,
            attacker,
            &qa_register(&format!("z9hG4bKb{i}"), 2 * i + 1, Some(&auth), 600),
        );
        if i < 9 {
            assert_eq!(answer.map(|a| a.0), Some(401), "guess {i} refused");
        } else {
            assert_eq!(answer, None, "the 10th failure bans: no answer");
        }
    }
    assert_eq!(challenges, 10);
    // Banned: even the right password gets nothing now.
    assert_eq!(
        exchange(
            &mut ua,
            now,
            attacker,
            &qa_register("z9hG4bKc", 99, None, 600)
        ),
        None
    );
    let c = ua.policy_counters();
    assert_eq!(c.bans, 1);
    assert!(c.dropped[policy::DropReason::Banned as usize] >= 1);
    // Another source is not affected; after ban_time the attacker is heard again.
    let other: SocketAddr = "127.0.0.78:5099".parse().unwrap();
    assert_eq!(
        exchange(&mut ua, now, other, &qa_register("z9hG4bKd", 1, None, 600)).map(|a| a.0),
        Some(401)
    );
    let later = now + Duration::from_secs(600);
    assert_eq!(
        exchange(
            &mut ua,
            later,
            attacker,
            &qa_register("z9hG4bKe", 100, None, 600)
        )
        .map(|a| a.0),
        Some(401)
    );
}

#[test]
fn tls_trunk_says_tls_in_via_and_contact_and_does_not_retransmit() {
    let mut h = Harness::new();
    let mut cfg = trunk_cfg(true, None);
    cfg.transport = Transport::Tls;
    cfg.tls = Some(TlsTarget {
        server_name: "trunk.example".into(),
        ca_file: None,
    });
    h.ua.add_trunk(h.now, cfg);
    h.drain();
    let reg = h.only_sent();
    assert!(
        reg.msg().vias[0].starts_with("SIP/2.0/TLS "),
        "{}",
        reg.text
    );
    assert_eq!(
        reg.headers("Contact"),
        vec![format!("<sip:31508200000@{LOCAL};transport=tls>")]
    );
    let t = h.ua.poll_transmit();
    assert!(t.is_none());
    h.advance(secs(10.0));
    assert!(h.take_sent().is_empty(), "no Timer E over TLS");
}
