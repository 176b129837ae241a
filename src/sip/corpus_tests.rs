//! Messages shaped as real user agents send them (`fuzz/corpus/parse_message/ua-*.sip`:
//! Linphone, baresip with RFC 5626 outbound, Twinkle over TCP, Zoiper, MicroSIP, Yealink,
//! Asterisk, FreeSWITCH, and a registrar's 200 with GRUUs and instance ids) parse, and
//! the fields the user agent reads come out right. The same files seed the fuzzer.
#![allow(clippy::unwrap_used)]

use super::grammar::NameAddr;
use super::message::{self, addr_param, Message, StartLine};

fn corpus_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/parse_message")
}

fn load(name: &str) -> Message {
    let path = corpus_dir().join(format!("{name}.sip"));
    let data = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    message::parse(&data).unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn display(value: &str) -> String {
    NameAddr::parse(value)
        .unwrap()
        .display_name()
        .unwrap()
        .into_owned()
}

type Check = fn(&Message);

/// Each file, and what must be read from it.
const CHECKS: &[(&str, Check)] = &[
    ("ua-linphone-register", |m| {
        assert_eq!(m.contacts.len(), 1);
        assert_eq!(
            addr_param(&m.contacts[0], "+sip.instance").as_deref(),
            Some("<urn:uuid:155f805c-4836-0083-be47-f6ff5553bb3c>")
        );
        assert_eq!(
            m.contact_uri.as_deref(),
            Some("sip:qa-alice@127.0.0.1:5072;transport=udp")
        );
        assert_eq!(m.expires, Some(600));
        assert!(m
            .authorization
            .as_deref()
            .unwrap()
            .contains("username=\"qa-alice\""));
    }),
    ("ua-linphone-invite", |m| {
        assert!(matches!(
            m.start,
            StartLine::Request {
                method: rsip::Method::Invite
            }
        ));
        assert_eq!(
            addr_param(&m.contacts[0], "expires").as_deref(),
            Some("600")
        );
        assert!(m.body_str().unwrap().contains("telephone-event/8000"));
    }),
    ("ua-linphone-200", |m| {
        assert!(matches!(m.start, StartLine::Response { status: 200, .. }));
        assert_eq!(m.tag_in_to().as_deref(), Some("wgJIIem"));
        assert_eq!(
            m.contact_uri.as_deref(),
            Some("sip:qa-alice@127.0.0.1:5072;transport=udp")
        );
    }),
    ("ua-linphone-desktop-register", |m| {
        let c = &m.contacts[0];
        assert_eq!(
            addr_param(c, "+org.linphone.specs").as_deref(),
            Some("conference/1.0,ephemeral/1.1,groupchat/1.1,lime")
        );
        assert_eq!(
            addr_param(c, "pn-prid").as_deref(),
            Some("d4Ffq8:APA91bHx,y=z;a")
        );
        assert_eq!(addr_param(c, "pn-provider").as_deref(), Some("fcm"));
        assert_eq!(
            m.contact_uri.as_deref(),
            Some("sip:qa-alice@10.0.0.23:41522;transport=tcp")
        );
        assert_eq!(m.tag_in_from().as_deref(), Some("Sn~2xYGm0"));
    }),
    ("ua-baresip-outbound-register", |m| {
        let c = &m.contacts[0];
        assert_eq!(addr_param(c, "reg-id").as_deref(), Some("1"));
        assert_eq!(addr_param(c, "expires").as_deref(), Some("600"));
        assert!(addr_param(c, "+sip.instance")
            .unwrap()
            .starts_with("<urn:uuid:c5b264ce"));
        assert_eq!(display(&m.from), "QA Alice, Desk 3");
    }),
    ("ua-baresip-200", |m| {
        assert!(
            matches!(&m.start, StartLine::Response { status: 200, reason } if reason == "Answering")
        );
        assert_eq!(
            m.contact_uri.as_deref(),
            Some("sip:qa-alice-0x55ef12755330@127.0.0.1:5076")
        );
    }),
    ("ua-twinkle-tcp-register", |m| {
        assert!(m.vias[0].starts_with("SIP/2.0/TCP 127.0.0.1:5074"));
        assert_eq!(
            m.contact_uri.as_deref(),
            Some("sip:qa-alice@127.0.0.1:5074;transport=tcp")
        );
        assert_eq!(
            addr_param(&m.contacts[0], "expires").as_deref(),
            Some("600")
        );
    }),
    ("ua-twinkle-200", |m| {
        assert_eq!(m.tag_in_to().as_deref(), Some("zkjvy"));
        assert_eq!(m.content_type.as_deref(), Some("application/sdp"));
    }),
    ("ua-zoiper-register", |m| {
        // `"qa-alice"<sip:…>`: no blank before `<`.
        assert_eq!(display(&m.from), "qa-alice");
        assert_eq!(m.tag_in_from().as_deref(), Some("0c6a8b2f"));
        assert_eq!(
            m.contact_uri.as_deref(),
            Some("sip:qa-alice@192.168.1.20:52341;rinstance=6d3c9fe2c1b5ad45;transport=UDP")
        );
        assert_eq!(
            m.top_branch().as_deref(),
            Some("z9hG4bK-524287-1---3a6f3c0b2b7d8e19")
        );
    }),
    ("ua-microsip-register", |m| {
        assert_eq!(display(&m.contacts[0]), "Alice (QA)");
        assert_eq!(
            m.contact_uri.as_deref(),
            Some("sip:qa-alice@192.168.1.30:5060;ob")
        );
        assert_eq!(addr_param(&m.contacts[0], "reg-id").as_deref(), Some("1"));
        assert_eq!(m.expires, Some(300));
    }),
    ("ua-yealink-register", |m| {
        assert_eq!(
            addr_param(&m.contacts[0], "+sip.instance").as_deref(),
            Some("<urn:uuid:00000000-0000-1000-8000-805EC0A1B2C3>")
        );
        assert_eq!(m.expires, Some(3600));
    }),
    ("ua-yealink-200", |m| {
        assert_eq!(m.tag_in_to().as_deref(), Some("1210986744"));
        assert_eq!(
            message::via_param(&m.vias[0], "received").as_deref(),
            Some("192.0.2.10")
        );
    }),
    ("ua-asterisk-invite", |m| {
        assert_eq!(display(&m.from), r#"Doe, John "JD""#);
        assert_eq!(
            m.tag_in_from().as_deref(),
            Some("4b7c1d2e-3f4a-4b5c-8d6e-7f8a9b0c1d2e")
        );
    }),
    ("ua-asterisk-200", |m| {
        assert_eq!(m.contact_uri.as_deref(), Some("sip:198.51.100.20:5060"));
        assert!(m.body_str().unwrap().contains("PCMA/8000"));
    }),
    ("ua-freeswitch-200", |m| {
        assert_eq!(m.tag_in_to().as_deref(), Some("Q8v3yUa1mK5pN"));
        assert_eq!(
            m.contact_uri.as_deref(),
            Some("sip:+31612000001@203.0.113.30:5080;transport=udp")
        );
    }),
    ("ua-freeswitch-invite", |m| {
        assert_eq!(display(&m.from), r#"Support; line "2""#);
        assert_eq!(m.tag_in_from().as_deref(), Some("8XyHmN3p2Uc0e"));
    }),
    ("ua-registrar-200-gruu", |m| {
        assert_eq!(m.contacts.len(), 3);
        assert_eq!(
            m.contact_uri.as_deref(),
            Some("sip:otpdial@192.0.2.10:5060")
        );
        assert_eq!(
            addr_param(&m.contacts[0], "expires").as_deref(),
            Some("3600")
        );
        let second = &m.contacts[1];
        assert_eq!(addr_param(second, "reg-id").as_deref(), Some("1"));
        assert_eq!(
            addr_param(second, "pub-gruu").as_deref(),
            Some("sip:+31508200000@sip.carrier.example;gr=urn:uuid:f81d4fae-7dec-11d0-a765-00a0c91e6bf6")
        );
        assert!(addr_param(second, "temp-gruu").unwrap().ends_with(";gr"));
        assert_eq!(display(&m.contacts[2]), "Desk phone, 2nd floor");
        assert_eq!(
            addr_param(&m.contacts[2], "expires").as_deref(),
            Some("300")
        );
    }),
];

#[test]
fn real_user_agent_messages_parse_with_their_fields() {
    for (name, check) in CHECKS {
        check(&load(name));
    }
}

/// A new `ua-*` file cannot be left out of the checks above.
#[test]
fn every_user_agent_message_in_the_corpus_is_checked() {
    let mut names: Vec<String> = std::fs::read_dir(corpus_dir())
        .unwrap()
        .filter_map(|e| {
            let name = e.unwrap().file_name().to_string_lossy().into_owned();
            name.strip_suffix(".sip")
                .filter(|n| n.starts_with("ua-"))
                .map(str::to_string)
        })
        .collect();
    names.sort();
    let mut checked: Vec<&str> = CHECKS.iter().map(|(n, _)| *n).collect();
    checked.sort();
    assert_eq!(names, checked);
}

/// What the parser used to refuse: any quoted parameter value holding `<`.
#[test]
fn a_quoted_angle_bracket_in_a_contact_parameter_is_not_malformed() {
    let text =
        String::from_utf8(std::fs::read(corpus_dir().join("ua-linphone-register.sip")).unwrap())
            .unwrap();
    let text = text.replace(
        "+sip.instance=\"<urn:uuid:155f805c-4836-0083-be47-f6ff5553bb3c>\"",
        "foo=\"a<b\"",
    );
    let m = message::parse(text.as_bytes()).unwrap();
    assert_eq!(addr_param(&m.contacts[0], "foo").as_deref(), Some("a<b"));
}

/// A parse error is logged with the source: it names what was wrong and where, and
/// never quotes the message (the digest response, nonce or cnonce of an Authorization
/// header, say). Each line of a REGISTER broken in the ways that reach each check.
#[test]
fn parse_errors_never_quote_the_message() {
    let text =
        String::from_utf8(std::fs::read(corpus_dir().join("ua-linphone-register.sip")).unwrap())
            .unwrap();
    let secrets = [
        "073d8c26d6f9c0c9c7d6d508e88afab4",
        "eFVk7RILxqvgzuET",
        "abc123",
        "qa-alice",
    ];
    let lines: Vec<&str> = text.split("\r\n").collect();
    let mut errors = 0;
    for i in 0..lines.len() {
        let breakages = [
            lines[i].replacen(':', "", 1),
            lines[i].replacen(": ", ": \"", 1),
            lines[i].replacen('<', "", 1),
            lines[i].replacen(", ", ",, ", 1),
            lines[i].replacen('=', "=\u{1}", 1),
            format!(" {}", lines[i]),
        ];
        for broken in breakages {
            let mut copy = lines.clone();
            copy[i] = &broken;
            if let Err(e) = message::parse(copy.join("\r\n").as_bytes()) {
                errors += 1;
                let said = e.to_string();
                for s in secrets {
                    assert!(!said.contains(s), "line {i}: {said}");
                }
            }
        }
    }
    assert!(errors > 20, "{errors}");
}
