//! The QA registrar and calls to its phones, driven without sockets: every request of a
//! call to a QA phone follows the flow its REGISTER came on (a NAT's mapping, a TCP
//! connection), not the Contact; a closed connection ends the flow; methods we do not
//! serve get 405 with Allow; a query hears the time left; server transactions are
//! matched on branch, sent-by and method (RFC 3261 §17.2.3).
#![allow(clippy::unwrap_used)]

use super::message::{self, Message, StartLine};
use super::sdp::{AudioCodec, MediaOffer};
use super::*;
use std::time::{Duration, Instant};

const LOCAL: &str = "127.0.0.1:5060";
/// Where the phone's packets come from (its NAT's mapping, or its TCP connection).
const FLOW: &str = "198.51.100.7:40001";
/// What its Contact says: a private address nobody can reach.
const CONTACT: &str = "sip:qa-alice@10.1.1.5:5062";

const ANSWER: &str = "v=0\r\no=- 1 1 IN IP4 10.1.1.5\r\ns=-\r\nc=IN IP4 10.1.1.5\r\n\
t=0 0\r\nm=audio 7078 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n";

struct Phone {
    ua: UserAgent,
    now: Instant,
    flow: SocketAddr,
    tcp: bool,
}

#[derive(Debug)]
struct Out {
    to: SocketAddr,
    transport: Transport,
    text: String,
    msg: Message,
}

impl Out {
    fn status(&self) -> Option<u16> {
        match self.msg.start {
            StartLine::Response { status, .. } => Some(status),
            StartLine::Request { .. } => None,
        }
    }
    fn method(&self) -> Option<rsip::Method> {
        match self.msg.start {
            StartLine::Request { method } => Some(method),
            StartLine::Response { .. } => None,
        }
    }
    fn header(&self, name: &str) -> Option<String> {
        self.text.split("\r\n").find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.eq_ignore_ascii_case(name).then(|| v.trim().to_string())
        })
    }
}

impl Phone {
    fn new(tcp: bool) -> Phone {
        let ua = UserAgent::new(UaConfig {
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
        });
        Phone {
            ua,
            now: Instant::now(),
            flow: FLOW.parse().unwrap(),
            tcp,
        }
    }

    fn send(&mut self, text: &str) {
        if self.tcp {
            self.ua
                .handle_stream_message(self.now, self.flow, text.as_bytes());
        } else {
            self.ua
                .handle_datagram(self.now, self.flow, text.as_bytes());
        }
    }

    fn sent(&mut self) -> Vec<Out> {
        std::iter::from_fn(|| self.ua.poll_transmit())
            .map(|t| {
                let text = String::from_utf8(t.payload.clone()).unwrap();
                Out {
                    to: t.destination,
                    transport: t.transport,
                    msg: message::parse(&t.payload).unwrap(),
                    text,
                }
            })
            .collect()
    }

    fn one(&mut self) -> Out {
        let mut s = self.sent();
        assert_eq!(s.len(), 1, "{s:#?}");
        s.remove(0)
    }

    fn events(&mut self) -> Vec<Event> {
        std::iter::from_fn(|| self.ua.poll_event()).collect()
    }

    fn via(&self) -> String {
        let t = if self.tcp { "TCP" } else { "UDP" };
        format!("SIP/2.0/{t} 10.1.1.5:5062")
    }

    fn register_text(&self, branch: &str, cseq: u32, contact: &str, auth: Option<&str>) -> String {
        format!(
            "REGISTER sip:{LOCAL} SIP/2.0\r\n\
             Via: {};branch={branch};rport\r\n\
             From: <sip:qa-alice@{LOCAL}>;tag=ph\r\nTo: <sip:qa-alice@{LOCAL}>\r\n\
             Call-ID: qa-reg@10.1.1.5\r\nCSeq: {cseq} REGISTER\r\nMax-Forwards: 70\r\n\
             {contact}{}Content-Length: 0\r\n\r\n",
            self.via(),
            auth.map(|a| format!("Authorization: {a}\r\n"))
                .unwrap_or_default()
        )
    }

    /// REGISTER, 401, REGISTER with credentials: the final answer.
    fn register(&mut self, contact: &str) -> Out {
        let n = rand::random::<u32>();
        let text = self.register_text(&format!("z9hG4bKr{n}a"), 1, contact, None);
        self.send(&text);
        let challenge = self.one();
        assert_eq!(challenge.status(), Some(401), "{}", challenge.text);
        let ch = digest::Challenge::parse(&challenge.header("WWW-Authenticate").unwrap()).unwrap();
        let auth = digest::answer(
            &ch,
            &digest::Credentials {
                username: "qa-alice".into(),
                password: "pw-alice".into(),
            },
            digest::RequestParts {
                method: "REGISTER",
                uri: &format!("sip:{LOCAL}"),
                body: b"",
            },
            1,
            "cn",
        );
        let text = self.register_text(&format!("z9hG4bKr{n}b"), 2, contact, Some(&auth));
        self.send(&text);
        self.one()
    }

    fn registered(&mut self) -> QaBinding {
        let contact = format!(
            "Contact: <{CONTACT}{}>;+sip.instance=\"<urn:uuid:9491fedb-0f7e-4b4e-8a3c-2c1e5c0c1f2a>\";reg-id=1\r\n",
            if self.tcp { ";transport=tcp" } else { "" }
        );
        let ok = self.register(&contact);
        assert_eq!(ok.status(), Some(200), "{}", ok.text);
        match self.events().pop() {
            Some(Event::QaRegistration {
                binding: Some(b), ..
            }) => b,
            other => panic!("{other:?}"),
        }
    }

    /// A call as the dialer places one to this binding.
    fn call(&mut self, b: &QaBinding) -> (CallHandle, Out) {
        let call = self.ua.invite(
            self.now,
            OutgoingCall {
                request_uri: b.contact.clone(),
                destination: b.source,
                from_uri: format!("sip:otpdial@{LOCAL}"),
                from_display: Some("otpdial".into()),
                media: MediaOffer {
                    address: "127.0.0.1".parse().unwrap(),
                    port: 40000,
                    codecs: vec![AudioCodec::Pcmu],
                    telephone_event_pt: 101,
                    ptime_ms: 20,
                    srtp: None,
                },
                credentials: None,
                extra_headers: Vec::new(),
                transport: b.transport,
                pin_flow: true,
            },
        );
        (call, self.one())
    }

    /// The phone's answer to our INVITE: its Contact names its private address.
    fn answer(&mut self, invite: &Out) {
        let m = &invite.msg;
        let mut text = String::from("SIP/2.0 200 OK\r\n");
        for v in &m.vias {
            text.push_str(&format!("Via: {v}\r\n"));
        }
        text.push_str(&format!(
            "From: {}\r\nTo: {};tag=phone1\r\nCall-ID: {}\r\nCSeq: {} INVITE\r\n\
             Contact: <{CONTACT}{}>;+sip.instance=\"<urn:uuid:9491fedb-0f7e-4b4e-8a3c-2c1e5c0c1f2a>\"\r\n\
             Content-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{ANSWER}",
            m.from,
            m.to,
            m.call_id,
            m.cseq,
            if self.tcp { ";transport=tcp" } else { "" },
            ANSWER.len()
        ));
        self.send(&text);
    }
}

fn check_on_flow(p: &Phone, out: &Out, what: &str) {
    assert_eq!(out.to, p.flow, "{what} goes to the flow, not the Contact");
    let (transport, via) = if p.tcp {
        (Transport::Tcp, "SIP/2.0/TCP ")
    } else {
        (Transport::Udp, "SIP/2.0/UDP ")
    };
    assert_eq!(out.transport, transport, "{what}");
    assert!(
        out.msg.vias[0].starts_with(via),
        "{what}: {}",
        out.msg.vias[0]
    );
}

fn in_dialog_on_the_flow(tcp: bool) {
    let mut p = Phone::new(tcp);
    let b = p.registered();
    assert_eq!(b.source, p.flow);
    assert_eq!(b.contact.split(';').next(), Some(CONTACT));
    let (call, invite) = p.call(&b);
    check_on_flow(&p, &invite, "INVITE");
    assert!(
        invite.text.starts_with(&format!("INVITE {CONTACT}")),
        "Request-URI: the Contact"
    );
    p.answer(&invite);
    let ack = p.one();
    assert_eq!(ack.method(), Some(rsip::Method::Ack));
    check_on_flow(&p, &ack, "ACK");
    assert!(
        ack.text.starts_with(&format!("ACK {CONTACT}")),
        "{}",
        ack.text
    );
    assert!(matches!(p.events().last(), Some(Event::Answered { .. })));
    p.ua.hangup(p.now, call);
    let bye = p.one();
    assert_eq!(bye.method(), Some(rsip::Method::Bye));
    check_on_flow(&p, &bye, "BYE");
    if !tcp {
        // A lost BYE is retransmitted on the flow too.
        p.now += Duration::from_millis(600);
        p.ua.handle_timeout(p.now);
        let again = p.one();
        check_on_flow(&p, &again, "BYE retransmission");
    }
}

#[test]
fn ack_and_bye_to_a_phone_behind_nat_go_through_the_mapping() {
    in_dialog_on_the_flow(false);
}

#[test]
fn ack_and_bye_to_a_tcp_phone_go_over_its_connection() {
    in_dialog_on_the_flow(true);
}

#[test]
fn a_closed_connection_ends_the_flow_and_the_call_on_it() {
    let mut p = Phone::new(true);
    let b = p.registered();
    let (call, invite) = p.call(&b);
    p.answer(&invite);
    p.sent();
    p.events();
    p.ua.handle_connection_closed(p.now, p.flow);
    let events = p.events();
    assert!(
        events
            .iter()
            .any(|e| matches!(e, Event::QaRegistration { binding: Some(b), .. } if b.flow_closed)),
        "{events:?}"
    );
    assert!(
        events.iter().any(
            |e| matches!(e, Event::Ended { call: c, reason: EndReason::RemoteHangup } if *c == call)
        ),
        "{events:?}"
    );
    p.ua.hangup(p.now, call);
    assert!(
        p.sent().is_empty(),
        "nothing to a closed flow, not even over UDP"
    );
    // Not a registered source any more: its OPTIONS over UDP is an unknown source's.
    p.tcp = false;
    p.send(&format!(
        "OPTIONS sip:{LOCAL} SIP/2.0\r\nVia: SIP/2.0/UDP 10.1.1.5:5062;branch=z9hG4bKo;rport\r\n\
         From: <sip:qa-alice@{LOCAL}>;tag=o\r\nTo: <sip:{LOCAL}>\r\nCall-ID: o1\r\n\
         CSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
    ));
    assert!(p.sent().is_empty());
}

#[test]
fn a_ringing_call_on_a_flow_that_closes_fails_with_430() {
    let mut p = Phone::new(true);
    let b = p.registered();
    let (call, _invite) = p.call(&b);
    p.ua.handle_connection_closed(p.now, p.flow);
    let events = p.events();
    assert!(
        events.iter().any(|e| matches!(e, Event::Ended { call: c, reason: EndReason::Rejected { status: 430, .. } } if *c == call)),
        "{events:?}"
    );
}

#[test]
fn a_trunk_connection_that_closes_is_not_a_flow() {
    let mut p = Phone::new(true);
    // Our own connection to a TCP trunk: the next message opens it again.
    let trunk: SocketAddr = "192.0.2.50:5060".parse().unwrap();
    let b = QaBinding {
        source: trunk,
        transport: Transport::Tcp,
        contact: "sip:+31612000001@192.0.2.50".into(),
        instance: None,
        reg_id: None,
        flow_closed: false,
        expires: 60,
        expires_at: p.now,
    };
    let (call, invite) = p.call(&b);
    assert_eq!(invite.transport, Transport::Tcp);
    p.ua.handle_connection_closed(p.now, trunk);
    assert!(p.events().is_empty(), "no call ended, no binding touched");
    p.ua.hangup(p.now, call);
    assert!(p.sent().is_empty(), "no provisional yet: CANCEL waits");
}

#[test]
fn publish_from_a_registered_phone_gets_405_with_allow() {
    let mut p = Phone::new(false);
    p.registered();
    for method in ["PUBLISH", "SUBSCRIBE", "MESSAGE", "REFER", "NOTIFY"] {
        p.send(&format!(
            "{method} sip:qa-alice@{LOCAL} SIP/2.0\r\nVia: {};branch=z9hG4bK{method};rport\r\n\
             From: <sip:qa-alice@{LOCAL}>;tag=pub\r\nTo: <sip:qa-alice@{LOCAL}>\r\n\
             Call-ID: {method}@10.1.1.5\r\nCSeq: 1 {method}\r\nEvent: presence\r\n\
             Content-Length: 0\r\n\r\n",
            p.via()
        ));
        let out = p.one();
        assert!(
            out.text.starts_with("SIP/2.0 405 Method Not Allowed\r\n"),
            "{method}: {}",
            out.text
        );
        assert_eq!(
            out.header("Allow").as_deref(),
            Some("INVITE, ACK, CANCEL, BYE, OPTIONS, INFO, UPDATE, REGISTER")
        );
    }
    // A BYE for no dialog of ours is still 481.
    p.send(&format!(
        "BYE sip:qa-alice@{LOCAL} SIP/2.0\r\nVia: {};branch=z9hG4bKbye;rport\r\n\
         From: <sip:qa-alice@{LOCAL}>;tag=b\r\nTo: <sip:x@{LOCAL}>;tag=y\r\n\
         Call-ID: nobody@10.1.1.5\r\nCSeq: 1 BYE\r\nContent-Length: 0\r\n\r\n",
        p.via()
    ));
    assert_eq!(p.one().status(), Some(481));
}

#[test]
fn status_lines_carry_rfc_reason_phrases() {
    let mut p = Phone::new(false);
    let text = p.register_text(
        "z9hG4bKq1",
        1,
        "Contact: <sip:qa-alice@10.1.1.5:5062>;expires=10\r\n",
        None,
    );
    p.send(&text);
    let challenge = p.one();
    assert!(
        challenge.text.starts_with("SIP/2.0 401 Unauthorized\r\n"),
        "{}",
        challenge.text
    );
    let brief = p.register("Contact: <sip:qa-alice@10.1.1.5:5062>;expires=10\r\n");
    assert!(
        brief.text.starts_with("SIP/2.0 423 Interval Too Brief\r\n"),
        "{}",
        brief.text
    );
    assert_eq!(brief.header("Min-Expires").as_deref(), Some("60"));
}

#[test]
fn a_registration_query_hears_the_time_left() {
    let mut p = Phone::new(false);
    let b = p.registered();
    assert_eq!(b.expires, 3600);
    p.now += Duration::from_secs(83);
    let ok = p.register("");
    assert_eq!(ok.status(), Some(200));
    assert_eq!(ok.header("Expires").as_deref(), Some("3517"), "{}", ok.text);
    let contact = ok.header("Contact").unwrap();
    assert!(
        contact.starts_with(&format!("<{CONTACT}>;expires=3517")),
        "{contact}"
    );
    assert!(
        contact.contains(
            ";+sip.instance=\"<urn:uuid:9491fedb-0f7e-4b4e-8a3c-2c1e5c0c1f2a>\";reg-id=1"
        ),
        "RFC 5626 echo: {contact}"
    );
    assert!(p.events().is_empty(), "a query changes nothing");
}

/// RFC 3261 §17.2.3: a request with the branch of an answered one but another sent-by
/// is a new transaction (answered afresh), not a retransmission (answered from cache).
#[test]
fn server_transactions_match_on_branch_sent_by_and_method() {
    let mut p = Phone::new(false);
    p.registered();
    let options = |sent_by: &str, call_id: &str| {
        format!(
            "OPTIONS sip:{LOCAL} SIP/2.0\r\nVia: SIP/2.0/UDP {sent_by};branch=z9hG4bKsame;rport\r\n\
             From: <sip:qa-alice@{LOCAL}>;tag=o\r\nTo: <sip:{LOCAL}>\r\nCall-ID: {call_id}\r\n\
             CSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
        )
    };
    p.send(&options("10.1.1.5:5062", "first"));
    let first = p.one();
    p.send(&options("10.1.1.5:5062", "first"));
    assert_eq!(
        p.one().text,
        first.text,
        "a retransmission: the same answer"
    );
    p.send(&options("10.1.1.6:5062", "second"));
    let second = p.one();
    assert_eq!(second.status(), Some(200));
    assert_eq!(
        second.msg.call_id, "second",
        "a new transaction: {}",
        second.text
    );
}
