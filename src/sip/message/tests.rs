//! The pre-pass and the parse of whole messages: compact and folded headers, stream
//! framing, truncation, response routing.
#![allow(clippy::unwrap_used)]

use super::*;

#[test]
fn compact_and_folded_headers_parse() {
    let raw = "SIP/2.0 180 Ringing\n\
v: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bKabc;rport\n\
f: <sip:a@b>;tag=1\n\
t: <sip:c@d>\n ;tag=2\n\
i: xyz@host\n\
CSeq : 1 INVITE\n\
m: <sip:c@10.0.0.2:5070>\n\
l: 0\n\n";
    let m = parse(raw.as_bytes()).unwrap();
    assert_eq!(m.top_branch().as_deref(), Some("z9hG4bKabc"));
    assert_eq!(m.tag_in_from().as_deref(), Some("1"));
    assert_eq!(m.tag_in_to().as_deref(), Some("2"));
    assert_eq!(m.call_id, "xyz@host");
    assert_eq!(m.cseq, 1);
    assert_eq!(m.contact_uri.as_deref(), Some("sip:c@10.0.0.2:5070"));
    assert!(matches!(m.start, StartLine::Response { status: 180, .. }));
}

#[test]
fn truncated_body_is_an_error() {
    let raw = "SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\nFrom: <sip:a@b>;tag=1\r\nTo: <sip:c@d>\r\nCall-ID: x\r\nCSeq: 1 INVITE\r\nContent-Length: 100\r\n\r\nv=0\r\n";
    assert!(matches!(
        parse(raw.as_bytes()),
        Err(ParseError::Truncated { .. })
    ));
}

#[test]
fn stream_framing() {
    let msg = b"OPTIONS sip:a@b SIP/2.0\r\nl: 4\r\nVia: x\r\n\r\nbody";
    assert_eq!(frame(&msg[..10]).unwrap(), None);
    assert_eq!(frame(&msg[..msg.len() - 1]).unwrap(), None);
    assert_eq!(frame(msg).unwrap(), Some((0, msg.len())));
    let mut two = b"\r\n\r\n".to_vec();
    two.extend_from_slice(msg);
    two.extend_from_slice(msg);
    assert_eq!(frame(&two).unwrap(), Some((4, msg.len())));
    assert!(frame(b"SIP/2.0 200 OK\r\nVia: x\r\n\r\n").is_err());
    assert!(frame(b"SIP/2.0 200 OK\r\nContent-Length: -1\r\n\r\n").is_err());
}

#[test]
fn lists_and_params() {
    assert_eq!(
        split_list("<sip:a,b@x;lr>, \"x,y\" <sip:c@d>"),
        vec!["<sip:a,b@x;lr>", "\"x,y\" <sip:c@d>"]
    );
    assert_eq!(
        addr_param("\"A\" <sip:a@b;transport=udp>;tag=9", "tag").as_deref(),
        Some("9")
    );
    assert_eq!(addr_param("<sip:a@b;tag=no>", "tag"), None);
    assert_eq!(addr_uri("sip:a@b;tag=1"), "sip:a@b");
}

#[test]
fn rport_routing() {
    let from: SocketAddr = "192.0.2.1:40000".parse().unwrap();
    let (dest, via) = response_route("SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bK1;rport", from);
    assert_eq!(dest, from);
    assert!(via.contains(";received=192.0.2.1"));
    assert!(via.ends_with(";rport=40000"));
    let (dest, _) = response_route("SIP/2.0/UDP 10.0.0.1:5080;branch=z9hG4bK1", from);
    assert_eq!(dest, "192.0.2.1:5080".parse().unwrap());
}

#[test]
fn garbage_never_panics() {
    for data in [
        &b""[..],
        b"\r\n\r\n",
        b"\xff\xfe\x00garbage",
        b"INVITE",
        b"INVITE sip:x SIP/2.0\r\nVia",
        b"SIP/2.0 999999999 X\r\n\r\n",
        b": \r\n\r\n",
        b"INVITE sip:x SIP/2.0\r\n CSeq: 1\r\n\r\n",
    ] {
        assert!(parse(data).is_err());
        let _ = parse(data);
    }
}
