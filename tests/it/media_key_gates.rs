//! Key gates end to end: the voicemail guard (`require_keypress`: a random digit is
//! said and must be keyed) and session-bound calls (`bind_digits`: the two digits of
//! the login screen must be keyed). The code must never reach the RTP unless the
//! right keys came after the request was said.
//!
//! Callees: SIPp keying by SIP INFO at fixed times (`uas_info_keys_early.xml` while
//! the request plays, `uas_info_keys_at_gate.xml` after it), SIPp pressing `#` with
//! RFC 4733, SIPp never keying, and for the one case where the callee must understand
//! what it hears (which digit was asked for) a receiver in this test that compares the
//! audio with the pack and answers with RFC 4733 events from its RTP socket.
//!
//! What was sent is checked against the exact payload bytes the script would send
//! ([`CallScript::payload`]): a stream that stops at the gate is byte-for-byte the
//! request and the wait, and nothing of the code.

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use otpdial::app::DialerMode;
use otpdial::domain::CallStatus;
use otpdial::media::{CallScript, Keys, Phrase, PromptLibrary, ScriptItem, G711};
use otpdial::verify::VerificationView;
use serde_json::json;

use crate::helpers::{base_settings, free_udp_port, spawn_app, Db, Sipp, TestApp};

/// Everything a receiver got: payloads in arrival order and the sender's address.
struct Heard {
    payload: Vec<u8>,
    from: Option<SocketAddr>,
}

/// Receives RTP on `socket` until `idle` without packets (after the first) or
/// `within`. `on_packet` may answer (it gets the socket, the source and the bytes
/// received so far).
fn receive(
    socket: &UdpSocket,
    within: Duration,
    idle: Duration,
    mut on_packet: impl FnMut(&UdpSocket, SocketAddr, &[u8]),
) -> Heard {
    let mut heard = Heard {
        payload: Vec::new(),
        from: None,
    };
    socket
        .set_read_timeout(Some(Duration::from_millis(50)))
        .expect("timeout");
    let start = Instant::now();
    let mut last = Instant::now();
    let mut buf = [0u8; 2048];
    while start.elapsed() < within {
        match socket.recv_from(&mut buf) {
            Ok((n, from)) => {
                last = Instant::now();
                let Ok(p) = rtp_rs::RtpReader::new(&buf[..n]) else {
                    continue;
                };
                if p.payload_type() != 8 {
                    continue;
                }
                heard.from = Some(from);
                heard.payload.extend_from_slice(p.payload());
                on_packet(socket, from, &heard.payload);
            }
            Err(_) => {
                if heard.from.is_some() && last.elapsed() > idle {
                    break;
                }
            }
        }
    }
    heard
}

/// The script up to and including its key gate: what a call that never passes
/// the gate sends, in full.
fn until_gate(script: &CallScript) -> CallScript {
    let gate = script.gate_from(0).expect("a gated script");
    CallScript {
        items: script.items[..=gate].to_vec(),
    }
}

fn en() -> std::sync::Arc<otpdial::media::PromptPack> {
    PromptLibrary::builtin().get("en").expect("en pack")
}

async fn start(t: &TestApp, body: serde_json::Value) -> VerificationView {
    t.start_verification(body).await
}

fn info_keys(scenario: &str, rtp_port: u16, k1: char, k2: char) -> Sipp {
    info_keys_on(free_udp_port(), scenario, rtp_port, k1, k2)
}

fn info_keys_on(sip_port: u16, scenario: &str, rtp_port: u16, k1: char, k2: char) -> Sipp {
    Sipp::spawn_uas(
        scenario,
        &[
            ("rtp_port", rtp_port.to_string()),
            ("k1", k1.to_string()),
            ("k2", k2.to_string()),
        ],
        &[],
        sip_port,
        "127.0.0.1",
    )
}

fn rtp_socket() -> (UdpSocket, u16) {
    let s = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let port = s.local_addr().expect("addr").port();
    (s, port)
}

async fn receive_in_background(socket: UdpSocket) -> Heard {
    tokio::task::spawn_blocking(move || {
        receive(
            &socket,
            Duration::from_secs(60),
            Duration::from_millis(1500),
            |_, _, _| {},
        )
    })
    .await
    .expect("receiver")
}

fn reason(v: &VerificationView) -> String {
    v.call
        .attempts
        .first()
        .and_then(|a| a.reason.clone())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keypress_keys_during_the_request_count_for_nothing_and_the_code_is_not_sent() {
    let (rtp, rtp_port) = rtp_socket();
    // Two keys while "To hear your code, press ..." plays: whatever digit is asked
    // for, they are ignored (SPEC §6), and the gate then waits in vain.
    let sipp = info_keys("uas_info_keys_early.xml", rtp_port, '1', '2');
    let mut settings = base_settings(sipp.port);
    settings.verification.require_keypress = true;
    let t = spawn_app(settings, Db::Sqlite, DialerMode::Background).await;
    let v = start(
        &t,
        json!({ "to": "+31612345678", "code": "1234", "locale": "en" }),
    )
    .await;
    let heard = receive_in_background(rtp).await;
    let done = t.wait_call_final(&v.id, Duration::from_secs(30)).await;
    sipp.finish(Duration::from_secs(10))
        .await
        .expect("SIPp's INFOs got their 200s, then our BYE");

    assert_eq!(done.call.status, CallStatus::Failed, "{done:?}");
    assert_eq!(reason(&done), "no_keypress");
    assert_eq!(done.call.times_played, 0);
    // Byte for byte: the lead-in, "To hear your code, press", one digit, 15 s of
    // silence. Which digit is random; exactly one of the ten fits.
    let pack = en();
    let fits: Vec<u8> = (0..=9)
        .filter(|&d| {
            let s = CallScript::with_keypress(&pack, &[1, 2, 3, 4], 2, Keys::one(d).unwrap());
            until_gate(&s).payload(&pack, G711::Alaw) == heard.payload
        })
        .collect();
    assert_eq!(fits.len(), 1, "the stream is the request and the wait only");
    t.app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keypress_a_key_other_than_the_digit_asked_for_ends_the_call_unread() {
    // '#' by RFC 4733 at the gate: a line that forwards any key, or a greeting with
    // tones. It is never the digit asked for.
    let media_port = loop {
        let s = UdpSocket::bind("127.0.0.1:0").unwrap();
        let p = s.local_addr().unwrap().port();
        if p % 2 == 0 && p < 65534 && UdpSocket::bind(("127.0.0.1", p + 1)).is_ok() {
            break p;
        }
    };
    let sipp = Sipp::uas_with_args(
        "uas_dtmf_rfc4733_hash.xml",
        &[],
        &["-mp", &media_port.to_string()],
    );
    let mut settings = base_settings(sipp.port);
    settings.verification.require_keypress = true;
    let t = spawn_app(settings, Db::Sqlite, DialerMode::Background).await;
    let v = start(
        &t,
        json!({ "to": "+31612345678", "code": "1234", "locale": "en" }),
    )
    .await;
    let done = t.wait_call_final(&v.id, Duration::from_secs(30)).await;
    sipp.finish(Duration::from_secs(10))
        .await
        .expect("SIPp got our BYE");
    assert_eq!(done.call.status, CallStatus::Failed, "{done:?}");
    assert_eq!(reason(&done), "no_keypress");
    assert_eq!(done.call.times_played, 0);
    // Ended at the key (6 s after the answer), not after the 15 s wait.
    let answered = done.call.answered_at.clone().expect("answered");
    let ended = done.call.ended_at.clone().expect("ended");
    let secs = |s: &str| {
        time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).unwrap()
    };
    let took = secs(&ended) - secs(&answered);
    assert!(
        took < time::Duration::seconds(14),
        "ended {took} after the answer"
    );
    t.app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keypress_the_digit_asked_for_opens_the_code() {
    let (rtp, rtp_port) = rtp_socket();
    let sipp = Sipp::uas("uas_answer.xml", &[("rtp_port", rtp_port.to_string())]);
    let mut settings = base_settings(sipp.port);
    settings.verification.require_keypress = true;
    let t = spawn_app(settings, Db::Sqlite, DialerMode::Background).await;
    let v = start(
        &t,
        json!({ "to": "+31612345678", "code": "1234", "locale": "en" }),
    )
    .await;

    // A listener: once the audio so far is exactly the request for digit d and a
    // little of the wait, it keys d with RFC 4733 (payload type 101, which the SIPp
    // answer declares) from its RTP socket to where the gateway's RTP comes from.
    let pack = en();
    let requests: Vec<(u8, Vec<u8>)> = (0..=9)
        .map(|d| {
            let s = CallScript::with_keypress(&pack, &[1, 2, 3, 4], 2, Keys::one(d).unwrap());
            let mut bytes = until_gate(&s).payload(&pack, G711::Alaw);
            // The request and 200 ms of the wait: the key comes after the request.
            bytes.truncate(bytes.len() - (750 - 10) * 160);
            (d, bytes)
        })
        .collect();
    let heard = tokio::task::spawn_blocking(move || {
        let mut keyed: Option<u8> = None;
        let heard = receive(
            &rtp,
            Duration::from_secs(60),
            Duration::from_millis(1500),
            |socket, from, so_far| {
                if keyed.is_some() {
                    return;
                }
                if let Some((d, _)) = requests.iter().find(|(_, r)| r.as_slice() == so_far) {
                    send_rfc4733_key(socket, from, *d);
                    keyed = Some(*d);
                }
            },
        );
        (heard, keyed)
    })
    .await
    .unwrap();
    let (heard, keyed) = heard;
    let done = t.wait_call_final(&v.id, Duration::from_secs(30)).await;
    sipp.finish(Duration::from_secs(10))
        .await
        .expect("SIPp got our BYE");
    let d = keyed.expect("heard the request for a digit, exactly as the pack says it");
    assert_eq!(done.call.status, CallStatus::Completed, "{done:?}");
    assert_eq!(done.call.times_played, 2);
    // After the key: the standard script, read twice.
    let full = CallScript::with_keypress(&pack, &[1, 2, 3, 4], 2, Keys::one(d).unwrap());
    let gate = full.gate_from(0).unwrap();
    let after = CallScript {
        items: full.items[gate + 1..].to_vec(),
    }
    .payload(&pack, G711::Alaw);
    assert!(
        heard.payload.ends_with(&after),
        "the code was read after the key ({} bytes heard, {} after the gate)",
        heard.payload.len(),
        after.len()
    );
    assert!(heard.from.is_some());
    t.app.stop().await;
}

/// An RFC 4733 event for digit `d`: three packets of the event (start with the
/// marker), then three End packets, as phones send them.
fn send_rfc4733_key(socket: &UdpSocket, to: SocketAddr, d: u8) {
    let ssrc = 0x0a0b_0c0d_u32;
    let timestamp = 8000_u32;
    for (i, (end, duration)) in [
        (false, 160u16),
        (false, 320),
        (false, 480),
        (true, 640),
        (true, 640),
        (true, 640),
    ]
    .into_iter()
    .enumerate()
    {
        let mut p = Vec::with_capacity(16);
        p.push(0x80);
        p.push(101 | if i == 0 { 0x80 } else { 0 });
        p.extend_from_slice(&(100 + i as u16).to_be_bytes());
        p.extend_from_slice(&timestamp.to_be_bytes());
        p.extend_from_slice(&ssrc.to_be_bytes());
        p.push(d);
        p.push(if end { 0x80 | 10 } else { 10 });
        p.extend_from_slice(&duration.to_be_bytes());
        socket.send_to(&p, to).expect("send RFC 4733");
    }
}

/// Starts a `bind_digits` verification; returns it and its two digits.
async fn start_bound(t: &TestApp) -> (VerificationView, Keys) {
    let v = start(
        t,
        json!({ "to": "+31612345678", "code": "1234", "locale": "en", "bind_digits": true }),
    )
    .await;
    let text = v.bind_digits.clone().expect("the 201 carries bind_digits");
    let keys = Keys::parse(&text).expect("two digits");
    assert_eq!(keys.digits().len(), 2, "{text:?}");
    (v, keys)
}

fn digit_char(d: u8) -> char {
    char::from(b'0' + d)
}

/// One `bind_digits` call to a SIPp callee that keys two digits by SIP INFO
/// (`scenario` says when): `keyed` picks them from the two shown. The callee must
/// know them when it starts, so it listens on a port chosen first, and the INVITE
/// sent before it is up is retransmitted (Timer A). Returns the final view, what
/// the callee's RTP port received, and the script the call played.
async fn bound_call(
    scenario: &str,
    keyed: impl Fn(u8, u8) -> (u8, u8),
) -> (VerificationView, Option<String>, Heard, CallScript) {
    let (rtp, rtp_port) = rtp_socket();
    let sip_port = free_udp_port();
    let t = spawn_app(base_settings(sip_port), Db::Sqlite, DialerMode::Background).await;
    let (v, keys) = start_bound(&t).await;
    // Never again after the start answer.
    assert_eq!(t.view(&v.id).await.bind_digits, None);
    let (a, b) = keyed(keys.digits()[0], keys.digits()[1]);
    let sipp = info_keys_on(sip_port, scenario, rtp_port, digit_char(a), digit_char(b));
    let heard = receive_in_background(rtp).await;
    let done = t.wait_call_final(&v.id, Duration::from_secs(30)).await;
    let wire_reason = t.call_reason(&v.id).await;
    sipp.finish(Duration::from_secs(10))
        .await
        .expect("SIPp keyed and got our BYE");
    t.app.stop().await;
    let script = CallScript::with_bind(&en(), &[1, 2, 3, 4], 2, keys);
    (done, wire_reason, heard, script)
}

/// What a script sends after its key gate.
fn after_gate(script: &CallScript) -> Vec<u8> {
    let gate = script.gate_from(0).expect("a gated script");
    CallScript {
        items: script.items[gate + 1..].to_vec(),
    }
    .payload(&en(), G711::Alaw)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bind_right_digits_read_the_code_and_reads_never_show_them() {
    let (done, wire_reason, heard, script) =
        bound_call("uas_info_keys_at_gate.xml", |a, b| (a, b)).await;
    assert_eq!(wire_reason, None, "a completed call has no reason");
    assert_eq!(done.call.status, CallStatus::Completed, "{done:?}");
    assert_eq!(done.call.times_played, 2);
    // The digits are never said: the request is the bind phrase alone.
    assert!(!script.items[..script.gate_from(0).unwrap()]
        .iter()
        .any(|i| matches!(i, ScriptItem::Say(Phrase::Digit(_) | Phrase::FinalDigit(_)))));
    assert!(
        heard.payload.ends_with(&after_gate(&script)),
        "the code was read after the digits"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bind_digits_keyed_while_the_request_plays_count() {
    // Someone who reads the digits off the screen keys them at once (0.3 s after
    // the answer, during "To hear your code, enter ..."): only the screen tells
    // them, so they count, and the code follows.
    let (done, _, heard, script) = bound_call("uas_info_keys_early.xml", |a, b| (a, b)).await;
    assert_eq!(done.call.status, CallStatus::Completed, "{done:?}");
    assert_eq!(done.call.times_played, 2);
    let after = after_gate(&script);
    assert!(
        heard.payload.ends_with(&after),
        "the code was read after the digits"
    );
    // The request was cut short by the keys: less than all of it was sent.
    let request = until_gate(&script).payload(&en(), G711::Alaw);
    assert!(heard.payload.len() < request.len() + after.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bind_wrong_digits_fail_with_bind_mismatch_and_no_code() {
    // The first digit right, the second wrong: a relay that guesses.
    let (done, wire_reason, heard, script) =
        bound_call("uas_info_keys_at_gate.xml", |a, b| (a, (b + 1) % 10)).await;
    assert_eq!(done.call.status, CallStatus::Failed, "{done:?}");
    assert_eq!(reason(&done), "bind_mismatch");
    // The call says why too (it used to say nothing: docs/api.md `call.reason`).
    assert_eq!(wire_reason.as_deref(), Some("bind_mismatch"));
    assert_eq!(done.call.times_played, 0);
    // What was sent is a prefix of the request and the wait: nothing of the code.
    let request = until_gate(&script).payload(&en(), G711::Alaw);
    assert!(!heard.payload.is_empty());
    assert!(
        request.starts_with(&heard.payload),
        "only the request and part of the wait were sent"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bind_no_digits_fail_with_no_keypress_and_no_code() {
    let (rtp, rtp_port) = rtp_socket();
    let sipp = Sipp::uas("uas_answer.xml", &[("rtp_port", rtp_port.to_string())]);
    let t = spawn_app(base_settings(sipp.port), Db::Sqlite, DialerMode::Background).await;
    let (v, keys) = start_bound(&t).await;
    let heard = receive_in_background(rtp).await;
    let done = t.wait_call_final(&v.id, Duration::from_secs(40)).await;
    assert_eq!(t.call_reason(&v.id).await.as_deref(), Some("no_keypress"));
    sipp.finish(Duration::from_secs(10))
        .await
        .expect("SIPp got our BYE");
    assert_eq!(done.call.status, CallStatus::Failed, "{done:?}");
    assert_eq!(reason(&done), "no_keypress");
    let pack = en();
    let request = until_gate(&CallScript::with_bind(&pack, &[1, 2, 3, 4], 2, keys))
        .payload(&pack, G711::Alaw);
    assert_eq!(
        heard.payload, request,
        "the request and 15 s of waiting, no code"
    );
    t.app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bind_digits_need_a_pack_that_can_ask_for_them() {
    let dir = tempfile::tempdir().unwrap();
    let pack_dir = dir.path().join("xx");
    std::fs::create_dir(&pack_dir).unwrap();
    // The fixture pack without its bind.wav.
    let fixture =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/prompts/en");
    for entry in std::fs::read_dir(&fixture).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name();
        if name != "bind.wav" {
            std::fs::copy(entry.path(), pack_dir.join(&name)).unwrap();
        }
    }
    let toml = std::fs::read_to_string(pack_dir.join("pack.toml")).unwrap();
    std::fs::write(
        pack_dir.join("pack.toml"),
        toml.replace("bind = \"bind.wav\"\n", ""),
    )
    .unwrap();
    let mut settings = base_settings(1);
    settings.prompts.dir = Some(dir.path().to_path_buf());
    settings.verification.default_locale = "xx".into();
    let t = spawn_app(settings, Db::Sqlite, DialerMode::Manual).await;
    let (status, body) = t
        .post(
            "/v1/verifications",
            json!({ "to": "+31612345678", "locale": "xx", "bind_digits": true }),
        )
        .await;
    assert_eq!(status.as_u16(), 422);
    let text = body.to_string();
    assert!(
        text.contains("bind_digits") && text.contains("bind.wav"),
        "{text}"
    );
    // Without bind_digits the same pack serves calls.
    let (status, _) = t
        .post(
            "/v1/verifications",
            json!({ "to": "+31612345678", "locale": "xx" }),
        )
        .await;
    assert_eq!(status.as_u16(), 201);
    t.app.stop().await;
}
