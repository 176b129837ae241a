//! The header-value grammar: hand-picked values real user agents send, values it must
//! refuse, and property tests that generate values from RFC 3261 §25.1 (display names,
//! URIs, generic-params with token / host / quoted-string values, optional blanks) and
//! check parse → render → parse.
#![allow(clippy::unwrap_used)]

use super::*;
use proptest::prelude::*;

#[test]
fn quoted_parameter_values_keep_brackets_semicolons_and_commas() {
    let v = r#"<sip:qa-alice@127.0.0.1:53654;transport=udp>;+sip.instance="<urn:uuid:9491fedb-0f7e-4b4e-8a3c-2c1e5c0c1f2a>";reg-id=1;expires=600"#;
    let a = NameAddr::parse(v).unwrap();
    assert_eq!(a.uri, "sip:qa-alice@127.0.0.1:53654;transport=udp");
    assert_eq!(
        a.param("+SIP.Instance").unwrap().unquoted().unwrap(),
        "<urn:uuid:9491fedb-0f7e-4b4e-8a3c-2c1e5c0c1f2a>"
    );
    assert_eq!(a.param("reg-id").unwrap().value, Some("1"));
    assert_eq!(a.param("expires").unwrap().value, Some("600"));

    let v = r#"<sip:u@h>;foo="a<b>;c,d=e \"f\" é😀";bar"#;
    let a = NameAddr::parse(v).unwrap();
    assert_eq!(
        a.param("foo").unwrap().unquoted().unwrap(),
        r#"a<b>;c,d=e "f" é😀"#
    );
    assert_eq!(a.param("bar").unwrap().value, None);
    assert_eq!(a.params.len(), 2);
}

#[test]
fn display_names_with_commas_quotes_and_utf8() {
    let list = r#""Doe, John \"JD\"" <sip:jd@example.com>;tag=1 , Jürgen Müller <sip:jm@example.com>, sip:plain@example.com;expires=60"#;
    let items = split_list(list).unwrap();
    assert_eq!(items.len(), 3);
    let first = NameAddr::parse(items[0]).unwrap();
    assert_eq!(first.display_name().unwrap(), r#"Doe, John "JD""#);
    assert_eq!(first.param("tag").unwrap().value, Some("1"));
    let second = NameAddr::parse(items[1]).unwrap();
    assert_eq!(second.display, Some("Jürgen Müller"));
    assert_eq!(second.uri, "sip:jm@example.com");
    let third = NameAddr::parse(items[2]).unwrap();
    assert!(!third.angled);
    assert_eq!(third.uri, "sip:plain@example.com");
    assert_eq!(third.param("expires").unwrap().value, Some("60"));
}

#[test]
fn angle_brackets_protect_uri_parameters_and_commas() {
    let a = NameAddr::parse("<sip:a,b@x;lr;transport=tcp?Subject=x>;tag=9").unwrap();
    assert_eq!(a.uri, "sip:a,b@x;lr;transport=tcp?Subject=x");
    assert_eq!(
        a.params,
        vec![Param {
            name: "tag",
            value: Some("9")
        }]
    );
    assert_eq!(
        split_list("<sip:a,b@x;lr>, \"x,y\" <sip:c@d>").unwrap(),
        vec!["<sip:a,b@x;lr>", "\"x,y\" <sip:c@d>"]
    );
}

#[test]
fn refused_values_say_what_and_where() {
    for (value, what) in [
        (r#""Bob <sip:b@h>"#, "unterminated quoted string"),
        ("<sip:b@h", "`<` without `>`"),
        ("<sip:b@h>;;tag=1", "empty or bad parameter name"),
        ("<sip:b@h>;=1", "empty or bad parameter name"),
        ("<sip:b@h>;tag=", "parameter value expected after `=`"),
        ("<sip:b@h>;tag=<x>", "parameter value expected after `=`"),
        ("Bell, Alexander <sip:b@h>", "URI expected"),
        ("sip:a@b?Subject=x", "character not allowed in this URI"),
        ("<sip:a @b>", "character not allowed in this URI"),
        ("<>", "URI expected"),
        ("<sip:b@h> junk", "unexpected character"),
        ("\"a\\\u{e9}\" <sip:b@h>", "bad escape in quoted string"),
        ("\"a\u{1}\" <sip:b@h>", "control character in quoted string"),
    ] {
        let err = NameAddr::parse(value).unwrap_err();
        assert_eq!(err.what, what, "{value:?}");
        assert!(err.at <= value.len());
    }
    let err = NameAddr::parse(r#"<sip:b@h>;x="open"#).unwrap_err();
    assert_eq!(err.to_string(), "unterminated quoted string at byte 12");
    assert_eq!(
        split_list("<sip:a@b>,,<sip:c@d>").unwrap_err().what,
        "empty list element"
    );
    assert_eq!(
        split_list("<sip:a@b>, ").unwrap_err().what,
        "empty list element"
    );
}

#[test]
fn via_sent_by_and_parameters() {
    let v = Via::parse(
        "SIP / 2.0 / UDP 192.0.2.1 : 5062 ; branch=z9hG4bK.x;rport;received=[2001:db8::1]",
    )
    .unwrap();
    assert_eq!(
        (v.transport, v.host, v.port),
        ("UDP", "192.0.2.1", Some(5062))
    );
    assert_eq!(v.param("BRANCH").unwrap().value, Some("z9hG4bK.x"));
    assert_eq!(v.param("rport").unwrap().value, None);
    let v6 = Via::parse("SIP/2.0/TCP [2001:db8::9]:5060;branch=z9hG4bK1;x=\"a;b\"").unwrap();
    assert_eq!((v6.host, v6.port), ("2001:db8::9", Some(5060)));
    assert_eq!(Via::parse(&v6.render()).unwrap(), v6);
    for bad in [
        "SIP/2.0/UDP",
        "SIP/2.0 UDP host",
        "SIP/3.0/UDP host",
        "SIP/2.0/UDPhost",
        "SIP/2.0/UDP host:99999",
        "SIP/2.0/UDP host;;branch=1",
        "SIP/2.0/UDP [::1;branch=1",
    ] {
        assert!(Via::parse(bad).is_err(), "{bad}");
    }
}

#[test]
fn unquote_and_quote_are_inverse() {
    assert_eq!(unquote(r#""a\"b\\c""#), r#"a"b\c"#);
    assert_eq!(unquote("token"), "token");
    assert_eq!(quote(r#"a"b\c"#), r#""a\"b\\c""#);
}

// ---- property tests: values generated from the grammar -----------------------------

const TOKEN: &str = "[A-Za-z0-9.!%*_+`'~-]{1,10}";

/// Text of a quoted-string's content: anything printable, the characters that broke
/// the old splitter, quotes and backslashes (escaped by `quote`), blanks and UTF-8.
fn qd_content() -> impl Strategy<Value = String> {
    proptest::collection::vec(
        prop_oneof![
            4 => proptest::char::range(' ', '~'),
            2 => proptest::sample::select(vec!['<', '>', ';', ',', '=', '"', '\\', ':', '\t']),
            1 => proptest::sample::select(vec!['é', 'ü', 'ß', '€', '中', '😀']),
        ],
        0..24,
    )
    .prop_map(|cs| cs.into_iter().collect())
}

/// Blanks the grammar allows around `;`, `=`, `,` and before `<`.
fn sws() -> impl Strategy<Value = &'static str> {
    proptest::sample::select(vec!["", "", "", " ", "  ", "\t", " \t "])
}

fn host() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z][a-z0-9-]{0,8}(\\.[a-z][a-z0-9]{0,5}){0,2}",
        (0u8..=255, 0u8..=255, 0u8..=255, 1u8..=254)
            .prop_map(|(a, b, c, d)| format!("{a}.{b}.{c}.{d}")),
        any::<[u16; 8]>().prop_map(|s| format!("[{}]", std::net::Ipv6Addr::from(s))),
    ]
}

#[derive(Debug, Clone)]
enum Value {
    Token(String),
    Host(String),
    Quoted(String),
}

impl Value {
    fn written(&self) -> String {
        match self {
            Value::Token(t) | Value::Host(t) => t.clone(),
            Value::Quoted(q) => quote(q),
        }
    }
    fn meaning(&self) -> String {
        match self {
            Value::Token(t) | Value::Host(t) => t.clone(),
            Value::Quoted(q) => q.clone(),
        }
    }
}

fn generic_param() -> impl Strategy<Value = (String, Option<Value>)> {
    let value = prop_oneof![
        TOKEN.prop_map(Value::Token),
        host().prop_map(Value::Host),
        qd_content().prop_map(Value::Quoted),
    ];
    (TOKEN, proptest::option::of(value))
}

#[derive(Debug, Clone)]
enum Display {
    Tokens(Vec<String>),
    Quoted(String),
}

#[derive(Debug, Clone)]
struct GenAddr {
    display: Option<Display>,
    uri: String,
    angled: bool,
    params: Vec<(String, Option<Value>)>,
    blanks: Vec<&'static str>,
}

impl GenAddr {
    fn text(&self) -> String {
        let mut out = String::new();
        let mut blank = self.blanks.iter().cycle();
        match &self.display {
            Some(Display::Tokens(t)) => out.push_str(&format!("{} ", t.join(" "))),
            Some(Display::Quoted(q)) => {
                out.push_str(&format!("{}{}", quote(q), blank.next().unwrap()))
            }
            None => {}
        }
        if self.angled {
            out.push_str(&format!("<{}>", self.uri));
        } else {
            out.push_str(&self.uri);
        }
        for (name, value) in &self.params {
            out.push_str(&format!(
                "{};{}{}",
                blank.next().unwrap(),
                blank.next().unwrap(),
                name
            ));
            if let Some(v) = value {
                let (b1, b2) = (blank.next().unwrap(), blank.next().unwrap());
                out.push_str(&format!("{b1}={b2}{}", v.written()));
            }
        }
        out
    }

    /// What a parse of `text()` must find.
    fn check(&self, a: &NameAddr<'_>) {
        match &self.display {
            Some(Display::Tokens(t)) => assert_eq!(a.display, Some(t.join(" ").as_str())),
            Some(Display::Quoted(q)) => assert_eq!(a.display_name().unwrap(), q.as_str()),
            None => assert_eq!(a.display, None),
        }
        assert_eq!(a.uri, self.uri);
        assert_eq!(a.params.len(), self.params.len());
        for (p, (name, value)) in a.params.iter().zip(&self.params) {
            assert_eq!(p.name, name);
            assert_eq!(
                p.unquoted().map(|v| v.into_owned()),
                value.as_ref().map(Value::meaning)
            );
        }
    }
}

fn name_addr() -> impl Strategy<Value = GenAddr> {
    let display = proptest::option::of(prop_oneof![
        proptest::collection::vec(TOKEN, 1..4).prop_map(Display::Tokens),
        qd_content().prop_map(Display::Quoted),
    ]);
    // URI parameters and headers, which need the angle brackets when present.
    let uri_tail = proptest::sample::select(vec![
        "",
        "",
        ";transport=udp",
        ";transport=TCP;lr",
        ";gr=urn:uuid:f81d4fae-7dec-11d0-a765-00a0c91e6bf6",
        ";ob",
        "?Subject=hi%20there&Priority=urgent",
    ]);
    (
        display,
        "[a-z0-9._-]{1,10}",
        host(),
        proptest::option::of(1u16..),
        uri_tail,
        any::<bool>(),
        proptest::collection::vec(generic_param(), 0..5),
        proptest::collection::vec(sws(), 1..8),
    )
        .prop_map(
            |(display, user, host, port, tail, angled, params, blanks)| {
                let port = port.map(|p| format!(":{p}")).unwrap_or_default();
                let uri = format!("sip:{user}@{host}{port}{tail}");
                let angled = angled || display.is_some() || !tail.is_empty();
                GenAddr {
                    display,
                    uri,
                    angled,
                    params,
                    blanks,
                }
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn name_addr_parse_render_parse(g in name_addr()) {
        let text = g.text();
        let a = NameAddr::parse(&text).map_err(|e| TestCaseError::fail(format!("{text:?}: {e}")))?;
        g.check(&a);
        let rendered = a.render();
        let again = NameAddr::parse(&rendered).map_err(|e| TestCaseError::fail(format!("{rendered:?}: {e}")))?;
        prop_assert_eq!(&again, &a);
        prop_assert_eq!(again.render(), rendered);
    }

    #[test]
    fn lists_split_where_the_grammar_says(gs in proptest::collection::vec(name_addr(), 1..5), b1 in sws(), b2 in sws()) {
        let texts: Vec<String> = gs.iter().map(GenAddr::text).collect();
        let joined = texts.join(&format!("{b1},{b2}"));
        let items = split_list(&joined).map_err(|e| TestCaseError::fail(format!("{joined:?}: {e}")))?;
        prop_assert_eq!(items.len(), gs.len());
        for (item, g) in items.iter().zip(&gs) {
            g.check(&NameAddr::parse(item).unwrap());
        }
    }

    #[test]
    fn via_parse_render_parse(
        transport in proptest::sample::select(vec!["UDP", "TCP", "TLS", "WS", "SCTP"]),
        host in host(),
        port in proptest::option::of(any::<u16>()),
        branch in "z9hG4bK[A-Za-z0-9.-]{1,16}",
        params in proptest::collection::vec(generic_param(), 0..4),
        blanks in proptest::collection::vec(sws(), 4),
    ) {
        let port_text = port.map(|p| format!("{}:{}{p}", blanks[0], blanks[1])).unwrap_or_default();
        let mut text = format!("SIP{b}/{b}2.0/{b}{transport} {host}{port_text}{b};{b}branch={branch}", b = blanks[2]);
        for (name, value) in &params {
            text.push_str(&format!("{};{name}", blanks[3]));
            if let Some(v) = value {
                text.push_str(&format!("={}", v.written()));
            }
        }
        let via = Via::parse(&text).map_err(|e| TestCaseError::fail(format!("{text:?}: {e}")))?;
        prop_assert_eq!(via.transport, transport);
        prop_assert_eq!(via.host, host.trim_start_matches('[').trim_end_matches(']'));
        prop_assert_eq!(via.port, port);
        let first = via.param("branch").unwrap();
        prop_assert_eq!(first.value, Some(branch.as_str()));
        prop_assert_eq!(via.params.len(), params.len() + 1);
        let rendered = via.render();
        prop_assert_eq!(Via::parse(&rendered).unwrap(), via);
    }

    /// Anything at all: an answer, never a panic, and offsets inside the value.
    #[test]
    fn arbitrary_text_never_panics(s in "\\PC{0,60}") {
        if let Err(e) = NameAddr::parse(&s) {
            prop_assert!(e.at <= s.len());
        }
        let _ = Via::parse(&s);
        let _ = split_list(&s);
    }
}

/// Whole messages: a REGISTER whose From has a generated display name and whose Contact
/// header holds a generated list goes through the pre-pass, rsip and our checks with
/// every contact and parameter intact.
fn register_with(from: &GenAddr, contacts: &[GenAddr]) -> String {
    let list: Vec<String> = contacts.iter().map(GenAddr::text).collect();
    format!(
        "REGISTER sip:192.0.2.10 SIP/2.0\r\n\
         Via: SIP/2.0/UDP 192.0.2.20:5062;branch=z9hG4bKprop;rport\r\n\
         From: {};tag=f1\r\n\
         To: <sip:qa-alice@192.0.2.10>\r\n\
         Call-ID: prop@192.0.2.20\r\n\
         CSeq: 1 REGISTER\r\n\
         Contact: {}\r\n\
         Content-Length: 0\r\n\r\n",
        from.text(),
        list.join(", ")
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(500))]

    #[test]
    fn whole_registers_keep_every_contact(
        from in name_addr().prop_filter("the tag is ours", |g| {
            g.params.iter().all(|(n, _)| !n.eq_ignore_ascii_case("tag"))
        }),
        contacts in proptest::collection::vec(name_addr(), 1..4),
    ) {
        let text = register_with(&from, &contacts);
        let msg = crate::sip::message::parse(text.as_bytes())
            .map_err(|e| TestCaseError::fail(format!("{text:?}: {e}")))?;
        let tag = msg.tag_in_from();
        prop_assert_eq!(tag.as_deref(), Some("f1"));
        prop_assert_eq!(msg.contacts.len(), contacts.len());
        for (c, g) in msg.contacts.iter().zip(&contacts) {
            g.check(&NameAddr::parse(c).unwrap());
        }
        prop_assert_eq!(msg.contact_uri.as_deref(), Some(contacts[0].uri.as_str()));
    }
}
