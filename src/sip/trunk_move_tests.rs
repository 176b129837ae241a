//! A trunk whose proxy resolves elsewhere (RFC 3263 re-resolution): after
//! `set_trunk_destination` its OPTIONS go to the new address. No sockets.
#![allow(clippy::unwrap_used)]

use super::message;
use super::*;
use std::time::{Duration, Instant};

const OLD: &str = "192.0.2.10:5060";
const NEW: &str = "192.0.2.20:5060";

fn ua() -> UserAgent {
    UserAgent::new(UaConfig {
        local_addr: "192.0.2.1:5060".parse().unwrap(),
        advertised_host: None,
        server_header: String::new(),
        policy: Default::default(),
        registrar: None,
    })
}

fn options_trunk() -> TrunkConfig {
    TrunkConfig {
        name: "carrier".into(),
        destination: OLD.parse().unwrap(),
        registrar_uri: "sip:carrier.example".into(),
        aor: "sip:+31508200000@carrier.example".into(),
        credentials: None,
        register: false,
        register_expires: 3600,
        options_interval: Some(Duration::from_secs(30)),
        one_shot: false,
        transport: Transport::Udp,
        tls: None,
    }
}

/// Everything the user agent sent: (destination, text).
fn sent(ua: &mut UserAgent) -> Vec<(SocketAddr, String)> {
    std::iter::from_fn(|| ua.poll_transmit())
        .map(|t| (t.destination, String::from_utf8(t.payload).unwrap()))
        .collect()
}

/// The 200 OK a trunk sends for `request`.
fn ok_for(request: &str) -> String {
    let msg = message::parse(request.as_bytes()).unwrap();
    let mut ok = String::from("SIP/2.0 200 OK\r\n");
    for v in &msg.vias {
        ok.push_str(&format!("Via: {v}\r\n"));
    }
    ok.push_str(&format!(
        "From: {}\r\nTo: {};tag=t\r\nCall-ID: {}\r\nCSeq: {} OPTIONS\r\nContent-Length: 0\r\n\r\n",
        msg.from, msg.to, msg.call_id, msg.cseq
    ));
    ok
}

#[test]
fn options_follow_the_trunk_to_its_new_address() {
    let mut ua = ua();
    let mut now = Instant::now();
    ua.add_trunk(now, options_trunk());
    let first = sent(&mut ua);
    assert_eq!(first.len(), 1, "{first:?}");
    assert_eq!(first[0].0, OLD.parse::<SocketAddr>().unwrap());
    assert!(first[0]
        .1
        .starts_with("OPTIONS sip:carrier.example SIP/2.0"));
    ua.handle_datagram(now, OLD.parse().unwrap(), ok_for(&first[0].1).as_bytes());

    let old = ua.set_trunk_destination(now, "carrier", NEW.parse().unwrap(), Transport::Udp);
    assert_eq!(old, Some(OLD.parse().unwrap()));
    assert_eq!(
        ua.set_trunk_destination(now, "nobody", NEW.parse().unwrap(), Transport::Udp),
        None
    );
    // Nothing is due yet; the next keepalive goes to the new address.
    assert!(sent(&mut ua).is_empty());
    now += Duration::from_secs(31);
    ua.handle_timeout(now);
    let next = sent(&mut ua);
    assert_eq!(next.len(), 1, "{next:?}");
    assert_eq!(next[0].0, NEW.parse::<SocketAddr>().unwrap());
    assert!(next[0].1.starts_with("OPTIONS "));
}
