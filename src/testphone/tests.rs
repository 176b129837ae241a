//! Loopback tests of the test phone against hand-written SIP and the real pacer.
#![allow(clippy::unwrap_used)] // tests may unwrap

use super::*;
use crate::media::{CallScript, Pacer, PlayoutEvent, PlayoutSpec, ScriptItem};

const OFFER: &str = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
    m=audio {PORT} RTP/AVP 8 0 101\r\na=rtpmap:8 PCMA/8000\r\na=rtpmap:0 PCMU/8000\r\n\
    a=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-16\r\na=ptime:20\r\n";

fn request(
    method: &str,
    call_id: &str,
    cseq: u32,
    local: SocketAddr,
    to_tag: &str,
    body: &str,
) -> String {
    let ctype = if body.is_empty() {
        ""
    } else {
        "Content-Type: application/sdp\r\n"
    };
    format!(
        "{method} sip:+31612345678@127.0.0.1 SIP/2.0\r\n\
         Via: SIP/2.0/UDP {local};branch=z9hG4bK{call_id}{cseq}{method}\r\n\
         Max-Forwards: 70\r\n\
         From: <sip:+31508200000@127.0.0.1>;tag=gw1\r\n\
         To: <sip:+31612345678@127.0.0.1>{to_tag}\r\n\
         Call-ID: {call_id}\r\n\
         CSeq: {cseq} {method}\r\n\
         Contact: <sip:gw@{local}>\r\n\
         {ctype}Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

async fn recv_response(sock: &UdpSocket) -> rsip::Response {
    let mut buf = vec![0u8; 65_535];
    let (n, _) = tokio::time::timeout(Duration::from_secs(5), sock.recv_from(&mut buf))
        .await
        .expect("no SIP response within 5 s")
        .unwrap();
    match SipMessage::try_from(&buf[..n]).unwrap() {
        SipMessage::Response(r) => r,
        SipMessage::Request(r) => panic!("expected a response, got {r}"),
    }
}

async fn start_phone(answer: AnswerMode) -> (TestPhone, UdpSocket) {
    let phone = TestPhone::start(TestPhoneConfig {
        bind: "127.0.0.1:0".parse().unwrap(),
        answer,
        library: Arc::new(PromptLibrary::builtin()),
    })
    .await
    .unwrap();
    let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    sock.connect(phone.sip_addr()).await.unwrap();
    (phone, sock)
}

#[tokio::test]
async fn answers_hears_the_code_and_hangs_up_on_bye() {
    let (mut phone, sip) = start_phone(AnswerMode::Answer {
        ring: Duration::from_millis(50),
    })
    .await;
    let local = sip.local_addr().unwrap();
    let rtp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let offer = OFFER.replace("{PORT}", &rtp.local_addr().unwrap().port().to_string());
    let invite = request("INVITE", "call-1", 1, local, "", &offer);
    sip.send(invite.as_bytes()).await.unwrap();

    assert_eq!(recv_response(&sip).await.status_code.code(), 100);
    let ringing = recv_response(&sip).await;
    assert_eq!(ringing.status_code.code(), 180);
    // A retransmitted INVITE gets the same answer again, not a second call.
    sip.send(invite.as_bytes()).await.unwrap();
    assert_eq!(recv_response(&sip).await.to_string(), ringing.to_string());

    let ok = recv_response(&sip).await;
    assert_eq!(ok.status_code.code(), 200);
    let to = ok.to_header().unwrap().value().to_owned();
    let tag = &to[to.find(";tag=").unwrap()..];
    let answer = sdp::parse_offer(&String::from_utf8(ok.body.clone()).unwrap()).unwrap();
    assert_eq!(answer.codec, G711::Alaw, "first offered codec");
    assert_eq!(answer.telephone_event, Some(101));
    sip.send(request("ACK", "call-1", 1, local, tag, "").as_bytes())
        .await
        .unwrap();

    // OPTIONS in between is answered too.
    sip.send(request("OPTIONS", "opt-1", 1, local, "", "").as_bytes())
        .await
        .unwrap();
    assert_eq!(recv_response(&sip).await.status_code.code(), 200);

    let pack = PromptLibrary::builtin().get("en").unwrap();
    let mut script = CallScript::build(&pack, &[4, 8, 1, 5, 2, 6], 2);
    // Pauses of 100 ms keep the test short (the real ones make this call 15 s long);
    // the phone must still split the words.
    for item in &mut script.items {
        if let ScriptItem::Silence { frames } = item {
            *frames = (*frames).min(5);
        }
    }
    let pacer = Pacer::start().unwrap();
    let mut playout = pacer.play(PlayoutSpec {
        socket: rtp,
        remote: answer.rtp,
        codec: answer.codec,
        payload_type: answer.payload_type,
        rtcp_socket: None,
        telephone_event_pt: None,
        pack,
        script,
        srtp: None,
    });
    let mut sent = 0;
    while let Some(ev) = playout.events.recv().await {
        if let PlayoutEvent::Finished {
            packets_sent,
            times_played,
            ..
        } = ev
        {
            assert_eq!(times_played, 2);
            sent = packets_sent;
        }
    }

    sip.send(request("BYE", "call-1", 2, local, tag, "").as_bytes())
        .await
        .unwrap();
    assert_eq!(recv_response(&sip).await.status_code.code(), 200);

    // A bound, not a timing check: recognition runs on hang-up, and a debug
    // build on a loaded test machine can take a while.
    let heard = tokio::time::timeout(Duration::from_secs(120), phone.next_call())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(heard.call_id, "call-1");
    assert_eq!(heard.status, 200);
    assert_eq!(heard.codec, Some(G711::Alaw));
    assert_eq!(heard.rtp_packets, sent);
    assert_eq!(heard.readings, vec!["481526", "481526"]);
    assert_eq!(heard.code(), Some("481526"));
    assert_eq!(heard.locale.as_deref(), Some("en"));
    assert_eq!(heard.request_uri, "sip:+31612345678@127.0.0.1");
    assert!(heard.from.contains("+31508200000"));
    assert_eq!(heard.phrases.first(), Some(&Phrase::Intro));
    assert_eq!(heard.phrases.last(), Some(&Phrase::Outro));

    // A BYE for a call that is over gets 481.
    sip.send(request("BYE", "call-1", 3, local, tag, "").as_bytes())
        .await
        .unwrap();
    assert_eq!(recv_response(&sip).await.status_code.code(), 481);
}

#[tokio::test]
async fn rejects_with_the_configured_status() {
    let (mut phone, sip) = start_phone(AnswerMode::Reject { status: 486 }).await;
    let local = sip.local_addr().unwrap();
    let invite = request(
        "INVITE",
        "call-2",
        1,
        local,
        "",
        &OFFER.replace("{PORT}", "4000"),
    );
    sip.send(invite.as_bytes()).await.unwrap();
    assert_eq!(recv_response(&sip).await.status_code.code(), 100);
    let busy = recv_response(&sip).await;
    assert_eq!(busy.status_code.code(), 486);
    assert!(busy.to_header().unwrap().value().contains(";tag="));
    let heard = phone.next_call().await.unwrap();
    assert_eq!((heard.status, heard.codec, heard.code()), (486, None, None));
    // Retransmission: the same final response again, no new call.
    sip.send(invite.as_bytes()).await.unwrap();
    assert_eq!(recv_response(&sip).await.status_code.code(), 486);
}

#[tokio::test]
async fn cancel_while_ringing_ends_with_487() {
    let (mut phone, sip) = start_phone(AnswerMode::Answer {
        ring: Duration::from_secs(30),
    })
    .await;
    let local = sip.local_addr().unwrap();
    let invite = request(
        "INVITE",
        "call-3",
        1,
        local,
        "",
        &OFFER.replace("{PORT}", "4000"),
    );
    sip.send(invite.as_bytes()).await.unwrap();
    assert_eq!(recv_response(&sip).await.status_code.code(), 100);
    assert_eq!(recv_response(&sip).await.status_code.code(), 180);
    sip.send(request("CANCEL", "call-3", 1, local, "", "").as_bytes())
        .await
        .unwrap();
    let mut codes = vec![
        recv_response(&sip).await.status_code.code(),
        recv_response(&sip).await.status_code.code(),
    ];
    codes.sort();
    assert_eq!(codes, vec![200, 487]);
    let heard = phone.next_call().await.unwrap();
    assert_eq!((heard.status, heard.rtp_packets), (487, 0));
}

#[tokio::test]
async fn offer_without_g711_gets_488() {
    let (mut phone, sip) = start_phone(AnswerMode::Answer {
        ring: Duration::ZERO,
    })
    .await;
    let local = sip.local_addr().unwrap();
    let offer = "v=0\r\nc=IN IP4 127.0.0.1\r\nm=audio 4000 RTP/AVP 18\r\na=rtpmap:18 G729/8000\r\n";
    sip.send(request("INVITE", "call-4", 1, local, "", offer).as_bytes())
        .await
        .unwrap();
    assert_eq!(recv_response(&sip).await.status_code.code(), 100);
    assert_eq!(recv_response(&sip).await.status_code.code(), 488);
    assert_eq!(phone.next_call().await.unwrap().status, 488);
}

#[test]
fn code_needs_agreeing_readings() {
    let mut h = HeardCall {
        call_id: String::new(),
        request_uri: String::new(),
        from: String::new(),
        status: 200,
        codec: None,
        rtp_packets: 0,
        phrases: vec![],
        readings: vec![],
        locale: None,
    };
    assert_eq!(h.code(), None);
    h.readings = vec!["123".into(), "123".into()];
    assert_eq!(h.code(), Some("123"));
    h.readings.push("124".into());
    assert_eq!(h.code(), None);
}

/// Interop with an independent UAC: SIPp's built-in `uac` scenario (INVITE, 100/180/
/// 200, ACK, BYE). Needs `sipp` on PATH (scripts/test.sh installs it).
#[tokio::test]
async fn sipp_uac_scenario_completes() {
    let (mut phone, _sock) = start_phone(AnswerMode::Answer {
        ring: Duration::from_millis(100),
    })
    .await;
    let status = tokio::process::Command::new("sipp")
        .args(["-sn", "uac", "-i", "127.0.0.1", "-p", "0", "-m", "1"])
        .args([
            "-timeout",
            "15s",
            "-timeout_error",
            "-nostdin",
            "-trace_err",
        ])
        .arg(phone.sip_addr().to_string())
        .current_dir(std::env::temp_dir())
        .stdout(std::process::Stdio::null())
        .status()
        .await
        .unwrap();
    assert!(status.success(), "sipp exited with {status}");
    let heard = phone.next_call().await.unwrap();
    assert_eq!(heard.status, 200);
    assert_eq!(heard.codec, Some(G711::Ulaw));
}

/// RTP reordered and with a lost packet mid-word still yields the code: the capture
/// places payloads by timestamp, the gap becomes silence, the word still correlates.
#[test]
fn capture_survives_reordering_and_a_lost_packet() {
    use crate::media::rtp::{RtpStreamHeader, PACKET_LEN};
    let lib = PromptLibrary::builtin();
    let pack = lib.get("nl").unwrap();
    let codec = G711::Ulaw;
    let script = CallScript::build(&pack, &[2, 7, 0, 9], 2);
    let mut frames: Vec<[u8; 160]> = Vec::new();
    for item in &script.items {
        match *item {
            ScriptItem::Say(p) => frames.extend_from_slice(pack.frames(p, codec)),
            ScriptItem::Silence { frames: n } => {
                frames.extend(std::iter::repeat_n([codec.silence(); 160], n as usize))
            }
            _ => {}
        }
    }
    let header = RtpStreamHeader::random(0);
    let mut order: Vec<usize> = (0..frames.len()).collect();
    // Swap neighbours every 7 packets; lose one packet in the middle of the intro.
    for i in (0..order.len() - 1).step_by(7) {
        order.swap(i, i + 1);
    }
    let intro_middle = 10 + pack.frames(Phrase::Intro, codec).len() / 2;
    order.retain(|&i| i != intro_middle);

    let mut capture = capture::RtpCapture::new(codec, 0);
    let mut buf = [0u8; PACKET_LEN];
    for &i in &order {
        let n = header.write(i as u64, false, &frames[i], &mut buf);
        capture.push(&buf[..n]);
    }
    assert_eq!(capture.packets, frames.len() as u64 - 1);
    let matches = Recognizer::new(&lib).recognize(&capture.into_pcm());
    let phrases: Vec<Phrase> = matches.iter().map(|m| m.phrase).collect();
    assert_eq!(recognize::readings(&phrases), vec!["2709", "2709"]);
    assert_eq!(
        phrases.first(),
        Some(&Phrase::Intro),
        "intro despite the loss"
    );
}
