//! IPv6: the RFC 5118 torture messages (`tests/rfc5118/*.dat`) through the parser and a
//! live user agent, and a call placed from `[::1]` to an IPv6 peer: Request-URI, Via,
//! Contact and SDP carry bracketed references and `IN IP6`, in-dialog requests go back
//! to the peer's IPv6 Contact. No sockets.
#![allow(clippy::unwrap_used)]

use super::message::{self, StartLine};
use super::sdp::{AudioCodec, MediaOffer};
use super::*;
use std::net::IpAddr;
use std::time::Instant;

/// Each message of RFC 5118 §4 and whether a parser must accept it. All but §4.2 are
/// valid (§4.3 and §4.5's bracketed `received` by the RFC's call for robustness; §4.10's
/// three colons too: the message parses, only that Request-URI is not usable).
const TORTURE: &[(&str, bool)] = &[
    ("ipv6-good", true),
    ("ipv6-bad", false),
    ("port-ambiguous", true),
    ("port-unambiguous", true),
    ("via-received-param-with-delim", true),
    ("via-received-param-no-delim", true),
    ("ipv6-in-sdp", true),
    ("mult-ip-in-header", true),
    ("mult-ip-in-sdp", true),
    ("ipv4-mapped-ipv6", true),
    ("ipv6-bug-abnf-3-colons", true),
    ("ipv6-correct-abnf-2-colons", true),
];

fn torture(name: &str) -> Vec<u8> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/rfc5118")
        .join(format!("{name}.dat"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn parse(name: &str) -> message::Message {
    message::parse(&torture(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

#[test]
fn rfc5118_valid_messages_parse_and_the_bad_one_is_rejected() {
    let mut wrong = Vec::new();
    for (name, valid) in TORTURE {
        let result = message::parse(&torture(name));
        if result.is_ok() != *valid {
            wrong.push(format!("{name}: {result:?}"));
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
}

#[test]
fn rfc5118_fields_come_out_with_their_ipv6_references() {
    let m = parse("ipv6-good");
    assert_eq!(m.request_uri.as_deref(), Some("sip:[2001:db8::10]"));
    assert_eq!(m.contact_uri.as_deref(), Some("sip:caller@[2001:db8::1]"));
    assert_eq!(
        m.vias,
        vec!["SIP/2.0/UDP [2001:db8::9:1];branch=z9hG4bKas3-111".to_string()]
    );
    // §4.3: the last group is part of the address, not a port.
    let m = parse("port-ambiguous");
    assert_eq!(m.request_uri.as_deref(), Some("sip:[2001:db8::10:5070]"));
    // §4.4: the port outside the brackets.
    let m = parse("port-unambiguous");
    assert_eq!(m.request_uri.as_deref(), Some("sip:[2001:db8::10]:5070"));
    // §4.7: a mixed Via list, in order.
    let m = parse("mult-ip-in-header");
    assert_eq!(m.vias.len(), 3);
    assert!(m.vias[0].contains("[2001:db8::9:1]:6050"), "{:?}", m.vias);
    assert!(m.vias[2].contains("received=192.0.2.200"), "{:?}", m.vias);
    // §4.9: IPv4-mapped addresses stay what they are.
    let m = parse("ipv4-mapped-ipv6");
    assert_eq!(m.contact_uri.as_deref(), Some("sip:ted@[::ffff:192.0.2.2]"));
    assert_eq!(m.request_uri.as_deref(), Some("sip:user@example.com"));
    // §4.10: the correct two-colon form is read; the three-colon one is not an address.
    let m = parse("ipv6-correct-abnf-2-colons");
    assert_eq!(
        m.request_uri.as_deref(),
        Some("sip:user@[2001:db8::c000:201]")
    );
}

/// The SDP of §4.6/§4.9 (`c=IN IP6`, no brackets) is read as an answer to an offer of
/// G.711: its connection address is the IPv6 one. (§4.6 offers G.726 only, so it is
/// read with a PCMU line swapped in; the address is what is checked.)
#[test]
fn rfc5118_sdp_connection_addresses_are_ipv6() {
    let offer = MediaOffer {
        address: "::1".parse().unwrap(),
        port: 40000,
        codecs: vec![AudioCodec::Pcmu],
        telephone_event_pt: 101,
        ptime_ms: 20,
        srtp: None,
    };
    for (name, want) in [
        ("ipv6-in-sdp", "2001:db8::20"),
        ("ipv4-mapped-ipv6", "::ffff:192.0.2.2"),
    ] {
        let m = parse(name);
        let body = m
            .body_str()
            .unwrap()
            .replace("m=audio 6000 RTP/AVP 2", "m=audio 6000 RTP/AVP 0");
        let answer = sdp::parse_answer(&body, &offer).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(answer.address, want.parse::<IpAddr>().unwrap(), "{name}");
        assert_eq!(answer.port, 6000);
    }
}

const LOCAL6: &str = "[::1]:5060";
const PEER6: &str = "[::1]:5070";

fn ua6() -> UserAgent {
    let mut ua = UserAgent::new(UaConfig {
        local_addr: LOCAL6.parse().unwrap(),
        advertised_host: None,
        server_header: String::new(),
        policy: Default::default(),
        registrar: None,
    });
    ua.trust_source("::1".parse().unwrap());
    ua
}

fn sent(ua: &mut UserAgent) -> Vec<(SocketAddr, String)> {
    std::iter::from_fn(|| ua.poll_transmit())
        .map(|t| (t.destination, String::from_utf8(t.payload).unwrap()))
        .collect()
}

/// Every RFC 5118 message into a user agent listening on `[::1]`: nothing panics, the
/// requests it can read are answered to the sender's IPv6 address, and the unreadable
/// one (§4.2) is dropped.
#[test]
fn rfc5118_messages_into_a_user_agent_on_ipv6() {
    let mut ua = ua6();
    let now = Instant::now();
    let from: SocketAddr = "[2001:db8::9:1]:5060".parse().unwrap();
    // As from a trunk: the listener policy lets its requests through to be answered.
    ua.trust_source(from.ip());
    let mut answered = 0;
    for (name, valid) in TORTURE {
        ua.handle_datagram(now, from, &torture(name));
        let out = sent(&mut ua);
        if !valid {
            assert!(out.is_empty(), "{name}: {out:?}");
        }
        for (to, text) in &out {
            assert!(text.starts_with("SIP/2.0 "), "{name}: {text}");
            assert!(to.is_ipv6(), "{name}: {to}");
            answered += 1;
        }
        while ua.poll_event().is_some() {}
    }
    assert!(answered >= 6, "{answered}");
}

#[test]
fn a_call_over_ipv6_brackets_every_reference_and_offers_ip6_media() {
    let mut ua = ua6();
    let now = Instant::now();
    let peer: SocketAddr = PEER6.parse().unwrap();
    let call = ua.invite(
        now,
        OutgoingCall {
            request_uri: format!("sip:+31612345678@{PEER6}"),
            destination: peer,
            from_uri: "sip:+31508200000@[::1]".into(),
            from_display: None,
            media: MediaOffer {
                address: "::1".parse().unwrap(),
                port: 40000,
                codecs: vec![AudioCodec::Pcmu],
                telephone_event_pt: 101,
                ptime_ms: 20,
                srtp: None,
            },
            credentials: None,
            extra_headers: Vec::new(),
            transport: Transport::Udp,
            pin_flow: false,
        },
    );
    let out = sent(&mut ua);
    assert_eq!(out.len(), 1, "{out:?}");
    let (to, invite) = &out[0];
    assert_eq!(*to, peer);
    assert!(
        invite.starts_with("INVITE sip:+31612345678@[::1]:5070 SIP/2.0\r\n"),
        "{invite}"
    );
    assert!(
        invite.contains("Via: SIP/2.0/UDP [::1]:5060;branch="),
        "{invite}"
    );
    assert!(
        invite.contains("Contact: <sip:otpdial@[::1]:5060>"),
        "{invite}"
    );
    assert!(invite.contains("c=IN IP6 ::1\r\n"), "{invite}");
    let msg = message::parse(invite.as_bytes()).unwrap();
    assert!(matches!(msg.start, StartLine::Request { .. }));

    // 200 with an IPv6 Contact and IP6 media.
    let body = "v=0\r\no=- 1 1 IN IP6 ::1\r\ns=-\r\nc=IN IP6 ::1\r\nt=0 0\r\n\
                m=audio 30000 RTP/AVP 0\r\n";
    let mut ok = String::from("SIP/2.0 200 OK\r\n");
    for v in &msg.vias {
        ok.push_str(&format!("Via: {v}\r\n"));
    }
    ok.push_str(&format!(
        "From: {}\r\nTo: {};tag=callee\r\nCall-ID: {}\r\nCSeq: {} INVITE\r\n\
         Contact: <sip:callee@[::1]:5071>\r\nContent-Type: application/sdp\r\n\
         Content-Length: {}\r\n\r\n{body}",
        msg.from,
        msg.to,
        msg.call_id,
        msg.cseq,
        body.len()
    ));
    ua.handle_datagram(now, peer, ok.as_bytes());
    let events: Vec<Event> = std::iter::from_fn(|| ua.poll_event()).collect();
    match events.as_slice() {
        [Event::Answered { media, .. }] => {
            assert_eq!(media.address, "::1".parse::<IpAddr>().unwrap());
            assert_eq!(media.port, 30000);
        }
        other => panic!("{other:?}"),
    }
    // The ACK and the BYE go to the Contact's IPv6 address, with it as Request-URI.
    let contact: SocketAddr = "[::1]:5071".parse().unwrap();
    let out = sent(&mut ua);
    assert_eq!(out.len(), 1, "{out:?}");
    assert_eq!(out[0].0, contact);
    assert!(
        out[0].1.starts_with("ACK sip:callee@[::1]:5071 SIP/2.0"),
        "{}",
        out[0].1
    );
    ua.hangup(now, call);
    let out = sent(&mut ua);
    assert_eq!(out.len(), 1, "{out:?}");
    assert_eq!(out[0].0, contact);
    assert!(
        out[0].1.starts_with("BYE sip:callee@[::1]:5071 SIP/2.0"),
        "{}",
        out[0].1
    );
}

/// A Request-URI we cannot build ends the call as not sent: nothing leaves, and no SIP
/// status is made up for it.
#[test]
fn a_request_uri_that_cannot_be_built_is_not_sent_and_has_no_status() {
    let mut ua = ua6();
    let now = Instant::now();
    for bad in [
        "sip:+31612345678@[::1:5070",
        "sip:+31612345678@[2001:db8:::1]:5070",
    ] {
        let call = ua.invite(
            now,
            OutgoingCall {
                request_uri: bad.into(),
                destination: PEER6.parse().unwrap(),
                from_uri: "sip:a@[::1]".into(),
                from_display: None,
                media: MediaOffer {
                    address: "::1".parse().unwrap(),
                    port: 40000,
                    codecs: vec![AudioCodec::Pcmu],
                    telephone_event_pt: 101,
                    ptime_ms: 20,
                    srtp: None,
                },
                credentials: None,
                extra_headers: Vec::new(),
                transport: Transport::Udp,
                pin_flow: false,
            },
        );
        assert!(sent(&mut ua).is_empty(), "{bad}");
        match ua.poll_event() {
            Some(Event::Ended {
                call: c,
                reason: EndReason::NotSent { reason },
            }) => {
                assert_eq!(c, call);
                assert!(reason.contains("invalid request URI"), "{reason}");
            }
            other => panic!("{bad}: {other:?}"),
        }
    }
}

#[test]
fn parse_uri_round_trips_ipv6_references() {
    for text in [
        "sip:[::1]:5080",
        "sip:+31612345678@[2001:db8::1]:5060;user=phone",
        "sips:alice@[2001:db8::9:1]",
        "sip:[::ffff:192.0.2.2];lr",
        "sip:bob@example.com:5060",
    ] {
        let uri = message::parse_uri(text).unwrap_or_else(|e| panic!("{text}: {e}"));
        assert_eq!(uri.to_string(), text);
    }
    // Normalised the way Ipv6Addr prints.
    assert_eq!(
        message::parse_uri("sip:x@[2001:DB8:0::1]")
            .unwrap()
            .to_string(),
        "sip:x@[2001:db8::1]"
    );
    for bad in ["sip:[::1", "sip:[zz::1]:5060", "sip:x@[1:2:3:4:5:6:7:8:9]"] {
        assert!(message::parse_uri(bad).is_err(), "{bad}");
    }
}
