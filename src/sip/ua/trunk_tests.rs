//! Registration hygiene on a fake clock, no sockets: REGISTER `Expires: 0` at shutdown
//! (digest answered, overtaken refreshes ignored, nothing scheduled after), and the
//! public address learned from the registrar's `received`/`rport` (RFC 3581) becoming
//! the Contact of REGISTER and INVITE, the old binding removed in the same REGISTER.
#![allow(clippy::unwrap_used)]

use super::hygiene::learned_address;
use super::*;
use crate::sip::digest::Credentials;
use crate::sip::sdp::{AudioCodec, MediaOffer};
use crate::sip::OutgoingCall;

/// Our private address, and the registrar.
const LOCAL: &str = "10.0.0.5:5060";
const REGISTRAR: &str = "192.0.2.10:5060";
/// Where the registrar sees us (a NAT's public side).
const PUBLIC: &str = "203.0.113.7:40000";

struct Far {
    ua: UserAgent,
    now: Instant,
}

/// A message we sent, as text and parsed.
struct Sent {
    text: String,
    msg: Message,
}

impl Sent {
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

fn trunk(credentials: bool) -> TrunkConfig {
    TrunkConfig {
        name: "carrier".into(),
        destination: REGISTRAR.parse().unwrap(),
        registrar_uri: format!("sip:{REGISTRAR}"),
        aor: "sip:31508200000@carrier.example".into(),
        credentials: credentials.then(|| Credentials {
            username: "otp".into(),
            password: "pw".into(),
        }),
        register: true,
        register_expires: 3600,
        options_interval: None,
        one_shot: false,
        transport: Transport::Udp,
        tls: None,
    }
}

impl Far {
    fn new() -> Far {
        let ua = UserAgent::new(UaConfig {
            local_addr: LOCAL.parse().unwrap(),
            advertised_host: None,
            server_header: String::new(),
            policy: Default::default(),
            registrar: None,
        });
        Far {
            ua,
            now: Instant::now(),
        }
    }

    fn sent(&mut self) -> Vec<Sent> {
        let mut out = Vec::new();
        while let Some(t) = self.ua.poll_transmit() {
            let text = String::from_utf8(t.payload).unwrap();
            let msg = message::parse(text.as_bytes()).unwrap();
            out.push(Sent { text, msg });
        }
        out
    }

    fn only_sent(&mut self) -> Sent {
        let mut s = self.sent();
        assert_eq!(
            s.len(),
            1,
            "{:?}",
            s.iter().map(|s| &s.text).collect::<Vec<_>>()
        );
        s.remove(0)
    }

    /// The registrar's answer to `req`; `via` replaces the `;rport` of our top Via (the
    /// registrar filling in `received`/`rport`).
    fn answer(&mut self, req: &Sent, status: &str, via: &str, extra: &str) {
        let m = &req.msg;
        let top = m.vias[0].replace(";rport", via);
        let text = format!(
            "SIP/2.0 {status}\r\nVia: {top}\r\nFrom: {}\r\nTo: {};tag=reg\r\nCall-ID: {}\r\n\
             CSeq: {} REGISTER\r\n{extra}Content-Length: 0\r\n\r\n",
            m.from, m.to, m.call_id, m.cseq
        );
        self.ua
            .handle_datagram(self.now, REGISTRAR.parse().unwrap(), text.as_bytes());
    }

    fn advance(&mut self, by: Duration) {
        let until = self.now + by;
        while let Some(t) = self.ua.poll_timeout().filter(|t| *t <= until) {
            assert!(
                t >= self.now,
                "a deadline in the past would spin the driver"
            );
            self.now = t;
            self.ua.handle_timeout(t);
        }
        self.now = until;
    }

    /// Adds the trunk and gets it registered (200 with the address given in `via`).
    fn registered(credentials: bool, via: &str) -> (Far, TrunkId) {
        let mut far = Far::new();
        let id = far.ua.add_trunk(far.now, trunk(credentials));
        let reg = far.only_sent();
        let contact = format!("Contact: <sip:31508200000@{LOCAL}>;expires=3600\r\n");
        far.answer(&reg, "200 OK", via, &contact);
        assert!(far.ua.trunk_status(id).unwrap().registered);
        (far, id)
    }

    fn invite_contact(&mut self) -> Vec<String> {
        self.ua.invite(
            self.now,
            OutgoingCall {
                request_uri: format!("sip:+31612345678@{REGISTRAR}"),
                destination: REGISTRAR.parse().unwrap(),
                from_uri: "sip:+31508200000@carrier.example".into(),
                from_display: None,
                media: MediaOffer {
                    address: "10.0.0.5".parse().unwrap(),
                    port: 40000,
                    codecs: vec![AudioCodec::Pcma],
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
        self.only_sent().headers("Contact")
    }
}

#[test]
fn learned_address_reads_received_and_rport() {
    let via = |params: &str| format!("SIP/2.0/UDP {LOCAL};branch=z9hG4bKx{params}");
    let cases = [
        (";received=203.0.113.7;rport=40000", Some(PUBLIC)),
        (";rport=40000", Some("10.0.0.5:40000")),
        (";received=203.0.113.7;rport", Some("203.0.113.7:5060")),
        (";received=10.0.0.5;rport=5060", None),
        (";rport", None),
        ("", None),
    ];
    for (params, want) in cases {
        assert_eq!(
            learned_address(&via(params), LOCAL).as_deref(),
            want,
            "{params}"
        );
    }
    let v6 = "SIP/2.0/UDP [2001:db8::1]:5060;branch=z9hG4bKx;received=2001:db8::7;rport=5062";
    assert_eq!(
        learned_address(v6, "[2001:db8::1]:5060").as_deref(),
        Some("[2001:db8::7]:5062")
    );
    let same = "SIP/2.0/UDP [2001:db8::1]:5060;branch=z9hG4bKx;received=2001:db8:0::1;rport=5060";
    assert_eq!(learned_address(same, "[2001:db8::1]:5060"), None);
}

#[test]
fn registrar_seen_address_becomes_the_contact_and_the_old_binding_goes() {
    let via = ";received=203.0.113.7;rport=40000";
    let (mut far, id) = Far::registered(false, via);
    // Registered again at once, with the public Contact; the old one removed.
    far.advance(Duration::ZERO);
    let again = far.only_sent();
    let contacts = again.headers("Contact");
    assert_eq!(
        contacts,
        vec![
            format!("<sip:31508200000@{PUBLIC}>"),
            format!("<sip:31508200000@{LOCAL}>;expires=0"),
        ]
    );
    assert_eq!(again.headers("Expires"), vec!["3600"]);
    let granted = format!("Contact: <sip:31508200000@{PUBLIC}>;expires=1800\r\n");
    far.answer(&again, "200 OK", via, &granted);
    assert!(far.ua.trunk_status(id).unwrap().registered);
    // The same address again: nothing more to do, and the old Contact is not repeated.
    far.advance(Duration::from_secs(1));
    assert!(far.sent().is_empty());
    assert_eq!(
        far.invite_contact(),
        vec![format!("<sip:otpdial@{PUBLIC}>")],
        "INVITEs through the trunk name the public address too"
    );
    // The refresh (a minute before the 1800 s granted run out) keeps the public Contact.
    far.advance(Duration::from_secs(1738));
    assert!(!far
        .sent()
        .iter()
        .any(|s| s.msg.cseq_method == Method::Register));
    far.advance(Duration::from_secs(1));
    let refresh = far.only_sent();
    assert_eq!(refresh.msg.cseq_method, Method::Register);
    assert_eq!(
        refresh.headers("Contact"),
        vec![format!("<sip:31508200000@{PUBLIC}>")]
    );
}

#[test]
fn registrar_seeing_our_own_address_changes_nothing() {
    let (mut far, _) = Far::registered(false, ";received=10.0.0.5;rport=5060");
    far.advance(Duration::from_secs(1));
    assert!(far.sent().is_empty());
    assert_eq!(far.invite_contact(), vec![format!("<sip:otpdial@{LOCAL}>")]);
}

#[test]
fn unregister_sends_expires_0_answers_the_challenge_and_schedules_nothing() {
    let (mut far, id) = Far::registered(true, ";rport=5060;received=10.0.0.5");
    assert_eq!(far.ua.unregister_trunks(far.now), 1);
    assert_eq!(far.ua.unregistering(), vec!["carrier".to_string()]);
    let unreg = far.only_sent();
    assert_eq!(unreg.msg.cseq_method, Method::Register);
    assert_eq!(unreg.headers("Expires"), vec!["0"]);
    assert_eq!(
        unreg.headers("Contact"),
        vec![format!("<sip:31508200000@{LOCAL}>")],
        "our own binding, not `*`"
    );
    far.answer(
        &unreg,
        "401 Unauthorized",
        ";rport=5060",
        "WWW-Authenticate: Digest realm=\"carrier.example\", nonce=\"n1\", algorithm=MD5\r\n",
    );
    let answered = far.only_sent();
    assert_eq!(answered.headers("Expires"), vec!["0"]);
    assert_eq!(answered.msg.cseq, unreg.msg.cseq + 1);
    assert_eq!(answered.headers("Authorization").len(), 1);
    assert_eq!(far.ua.unregistering().len(), 1);
    far.answer(&answered, "200 OK", ";rport=5060", "");
    assert!(far.ua.unregistering().is_empty());
    let st = far.ua.trunk_status(id).unwrap();
    assert!(!st.registered);
    // No refresh, no retry: the trunk is done.
    assert_eq!(far.ua.trunks[0].next_deadline(), None);
    far.advance(Duration::from_secs(7200));
    assert!(far.sent().is_empty());
}

#[test]
fn unregister_ignores_the_answer_to_an_overtaken_refresh() {
    let (mut far, _) = Far::registered(false, ";rport=5060");
    far.advance(Duration::from_secs(3540));
    let refresh = far.only_sent();
    assert_eq!(refresh.headers("Expires"), vec!["3600"]);
    far.ua.unregister_trunks(far.now);
    let unreg = far.only_sent();
    assert_eq!(unreg.headers("Expires"), vec!["0"]);
    far.answer(&refresh, "200 OK", ";rport=5060", "Expires: 3600\r\n");
    assert_eq!(
        far.ua.unregistering().len(),
        1,
        "still waiting for its own answer"
    );
    far.answer(&unreg, "200 OK", ";rport=5060", "");
    assert!(far.ua.unregistering().is_empty());
    assert!(!far.ua.trunk_status(TrunkId(0)).unwrap().registered);
}

#[test]
fn unregister_skips_unregistered_trunks_and_gives_up_on_silence() {
    let mut far = Far::new();
    let mut cfg = trunk(false);
    cfg.register = false;
    far.ua.add_trunk(far.now, cfg);
    assert_eq!(far.ua.unregister_trunks(far.now), 0);
    assert!(far.sent().is_empty());

    let (mut far, id) = Far::registered(false, ";rport=5060");
    far.ua.unregister_trunks(far.now);
    let unreg = far.only_sent();
    assert_eq!(unreg.headers("Expires"), vec!["0"]);
    // Nobody answers: Timer F ends it (the driver stops waiting long before).
    far.advance(Duration::from_secs(33));
    assert!(far.ua.unregistering().is_empty());
    let st = far.ua.trunk_status(id).unwrap();
    assert!(!st.registered);
    assert!(st.last_error.unwrap().contains("Expires: 0"));
}

#[test]
fn a_re_invite_from_the_trunk_is_answered_with_the_public_contact() {
    let via = ";received=203.0.113.7;rport=40000";
    let (mut far, _) = Far::registered(false, via);
    far.advance(Duration::ZERO);
    let again = far.only_sent();
    far.answer(&again, "200 OK", via, "");
    far.invite_contact();
    // The INVITE went out; fetch it back from the call to answer it.
    let call = *far.ua.calls.keys().next().unwrap();
    let (call_id, from) = {
        let c = &far.ua.calls[&call];
        (c.call_id.clone(), c.from_header.clone())
    };
    let branch = far.ua.calls[&call].invite_branch.clone();
    let sdp = "v=0\r\no=- 1 1 IN IP4 192.0.2.10\r\ns=-\r\nc=IN IP4 192.0.2.10\r\nt=0 0\r\n\
               m=audio 30000 RTP/AVP 8\r\n";
    let to = format!("<sip:+31612345678@{REGISTRAR}>;tag=callee");
    let ok = format!(
        "SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP {LOCAL};branch={branch};rport\r\nFrom: {from}\r\n\
         To: {to}\r\nCall-ID: {call_id}\r\nCSeq: 1 INVITE\r\nContact: <sip:callee@{REGISTRAR}>\r\n\
         Content-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{sdp}",
        sdp.len()
    );
    far.ua
        .handle_datagram(far.now, REGISTRAR.parse().unwrap(), ok.as_bytes());
    assert_eq!(far.only_sent().msg.cseq_method, Method::Ack);
    let reinvite = format!(
        "INVITE sip:otpdial@{PUBLIC} SIP/2.0\r\nVia: SIP/2.0/UDP {REGISTRAR};branch=z9hG4bKre\r\n\
         From: {to}\r\nTo: {from}\r\nCall-ID: {call_id}\r\nCSeq: 7 INVITE\r\n\
         Contact: <sip:callee@{REGISTRAR}>\r\nMax-Forwards: 70\r\n\
         Content-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{sdp}",
        sdp.len()
    );
    far.ua
        .handle_datagram(far.now, REGISTRAR.parse().unwrap(), reinvite.as_bytes());
    let answer = far.only_sent();
    assert!(answer.text.starts_with("SIP/2.0 200"), "{}", answer.text);
    assert_eq!(
        answer.headers("Contact"),
        vec![format!("<sip:otpdial@{PUBLIC}>")]
    );
}
