//! SRTP per trunk (RFC 3711 keyed by SDES, RFC 4568) against real peers:
//!
//! - `required`, SIPp answering RTP/SAVP with its own `a=crypto`, the media end played
//!   by libsrtp (PyPI `pylibsrtp`, `tests/peers/srtp_peer.py`): libsrtp decrypts every
//!   RTP and RTCP packet with the key from our INVITE, the decrypted audio is the code,
//!   no payload on the wire is a frame of the prompt in clear, a key the callee
//!   presses under SRTP (RFC 4733) restarts the reading, and one pressed in plain RTP
//!   is dropped and counted.
//! - baresip (Debian `baresip-core`, its `srtp` module): `required` to `srtp-mand`
//!   and `optional` to best-effort `srtp`: SRTP is on at both ends, the code it heard
//!   and recorded is recognised, and its SRTP and SRTCP back to us all authenticate.
//! - `required` against a callee that answers plain RTP: not one datagram of media,
//!   the attempt fails with `srtp_unavailable`.
//! - `optional` against the same plain callee: the call completes in plain RTP.
//! - SIP over TLS through Kamailio (`tests/it/sip_kamailio.rs`) and SRTP together: the
//!   keys travel only inside TLS, the media only as SRTP that libsrtp decrypts.

use std::collections::HashSet;
use std::io::{BufRead, BufReader};
use std::net::UdpSocket;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use otpdial::app::DialerMode;
use otpdial::config::{Settings, SrtpMode};
use otpdial::domain::CallStatus;
use otpdial::media::{g711, CallScript, PromptLibrary, ScriptItem, G711};
use otpdial::testphone::recognize::{readings, Recognizer};
use otpdial::verify::VerificationView;
use serde_json::{json, Value};

use crate::baresip::Baresip;
use crate::helpers::{base_settings, spawn_app, Db, Sipp, TestApp};

const CODE: &str = "1234";

fn settings(trunk_port: u16, srtp: SrtpMode) -> Settings {
    let mut s = base_settings(trunk_port);
    s.trunks[0].srtp = srtp;
    // The callees here answer PCMA.
    assert_eq!(s.verification.repeat, 2);
    s
}

async fn call(t: &TestApp) -> VerificationView {
    let v = t
        .start_verification(json!({ "to": "+31612345678", "code": CODE, "locale": "en" }))
        .await;
    t.wait_call_final(&v.id, Duration::from_secs(90)).await
}

/// Every distinct A-law frame the call's script can send: the spoken phrases and the
/// silence between them.
fn plain_frames() -> HashSet<Vec<u8>> {
    let lib = PromptLibrary::builtin();
    let pack = lib.get("en").unwrap();
    let script = CallScript::build(&pack, &[1, 2, 3, 4], 2);
    let mut frames: HashSet<Vec<u8>> = script
        .items
        .iter()
        .filter_map(|i| match i {
            ScriptItem::Say(p) => Some(*p),
            _ => None,
        })
        .flat_map(|p| pack.frames(p, G711::Alaw).iter().map(|f| f.to_vec()))
        .collect();
    frames.insert(vec![g711::ALAW_SILENCE; 160]);
    frames
}

/// The code read in A-law audio, one string per reading.
fn readings_in_alaw(alaw: &[u8]) -> Vec<String> {
    let pcm = g711::decode(G711::Alaw, alaw);
    let recognizer = Recognizer::new(&PromptLibrary::builtin());
    let phrases: Vec<_> = recognizer
        .recognize(&pcm)
        .into_iter()
        .map(|m| m.phrase)
        .collect();
    readings(&phrases)
}

/// An even port with the odd one above it free (RTP and RTCP).
fn free_port_pair() -> u16 {
    loop {
        let s = UdpSocket::bind("127.0.0.1:0").unwrap();
        let p = s.local_addr().unwrap().port();
        if p % 2 == 0 && p < 65534 && UdpSocket::bind(("127.0.0.1", p + 1)).is_ok() {
            return p;
        }
    }
}

/// `tests/peers/srtp_peer.py`, started and ready to receive. Killed on drop.
struct LibsrtpPeer {
    child: Child,
    out: PathBuf,
}

impl LibsrtpPeer {
    fn start(
        rtp_port: u16,
        key_b64: &str,
        message_log: &Path,
        dtmf_after: u32,
        key_in_srtp: bool,
        dir: &Path,
    ) -> Self {
        let out = dir.join("srtp_peer.json");
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/peers/srtp_peer.py");
        let mut child = Command::new("python3")
            .arg(script)
            .arg(rtp_port.to_string())
            .arg(key_b64)
            .arg(message_log)
            .arg(dtmf_after.to_string())
            .arg(if key_in_srtp { "srtp" } else { "plain" })
            .arg(&out)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("python3 runs");
        let stdout = child.stdout.take().unwrap();
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).unwrap();
        assert_eq!(
            line.trim(),
            "ready",
            "srtp_peer.py did not start (pip install pylibsrtp: scripts/test.sh does)"
        );
        LibsrtpPeer { child, out }
    }

    /// Waits for the peer to finish (it stops 2 s after the last packet) and returns
    /// what it wrote.
    async fn result(mut self, within: Duration) -> Value {
        let deadline = Instant::now() + within;
        loop {
            match self.child.try_wait().unwrap() {
                Some(status) => {
                    assert!(status.success(), "srtp_peer.py failed: {status}");
                    break;
                }
                None => {
                    assert!(Instant::now() < deadline, "srtp_peer.py did not finish");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
        serde_json::from_str(&std::fs::read_to_string(&self.out).unwrap()).unwrap()
    }
}

impl Drop for LibsrtpPeer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn unhex(v: &Value) -> Vec<u8> {
    hex::decode(v.as_str().unwrap()).unwrap()
}

/// What a `required` call to SIPp + libsrtp showed.
struct LibsrtpCall {
    done: VerificationView,
    /// What srtp_peer.py wrote.
    got: Value,
    metrics: String,
    /// SIPp's message log (our INVITE).
    invite: String,
}

/// A `required` call reading [`CODE`] to SIPp answering SDES-SRTP, its media at
/// libsrtp, which presses key 5 after 6 s of media (during the second reading: the
/// first ends about 5 s in), under SRTP or in plain RTP.
async fn call_libsrtp(key_in_srtp: bool) -> LibsrtpCall {
    let dir = tempfile::tempdir().unwrap();
    let rtp_port = free_port_pair();
    // The callee's own key, as its answer declares it.
    let mut their_key = [0u8; 30];
    getrandom::fill(&mut their_key).unwrap();
    let their_key = base64::engine::general_purpose::STANDARD.encode(their_key);
    let message_log = dir.path().join("sipp_messages.log");
    let peer = LibsrtpPeer::start(
        rtp_port,
        &their_key,
        &message_log,
        300,
        key_in_srtp,
        dir.path(),
    );
    let log_arg = message_log.to_str().unwrap().to_string();
    let sipp = Sipp::uas_with_args(
        "uas_answer_srtp.xml",
        &[
            ("rtp_port", rtp_port.to_string()),
            ("srtp_key", their_key.clone()),
        ],
        &["-trace_msg", "-message_file", &log_arg],
    );
    let t = spawn_app(
        settings(sipp.port, SrtpMode::Required),
        Db::Sqlite,
        DialerMode::Background,
    )
    .await;
    let done = call(&t).await;
    sipp.finish(Duration::from_secs(10))
        .await
        .expect("SIPp scenario passed");
    let got = peer.result(Duration::from_secs(30)).await;
    let metrics = t.metrics_text().await;
    t.app.stop().await;
    LibsrtpCall {
        done,
        got,
        metrics,
        invite: std::fs::read_to_string(&message_log).unwrap(),
    }
}

/// libsrtp decrypted every RTP and RTCP packet, none was a frame of the prompt in
/// clear; returns the readings heard in the decrypted audio.
fn check_all_srtp(got: &Value, min_packets: usize) -> Vec<String> {
    let plain = plain_frames();
    let rtp = got["rtp"].as_array().unwrap();
    assert!(rtp.len() >= min_packets, "{} RTP packets", rtp.len());
    let mut audio = Vec::new();
    for (i, p) in rtp.iter().enumerate() {
        let wire = unhex(&p[0]);
        // 12-byte header, 160 bytes of encrypted payload, 10-byte tag.
        assert_eq!(wire.len(), 12 + 160 + 10, "packet {i}");
        assert!(
            !plain.contains(&wire[12..172]),
            "packet {i} carries a frame of the prompt in clear"
        );
        assert!(!p[1].is_null(), "libsrtp refused packet {i}");
        let clear = unhex(&p[1]);
        assert_eq!(clear.len(), 172);
        assert_eq!(clear[1] & 0x7f, 8, "PCMA");
        audio.extend_from_slice(&clear[12..]);
    }
    let rtcp = got["rtcp"].as_array().unwrap();
    assert!(!rtcp.is_empty(), "at least the closing report and BYE");
    for (i, p) in rtcp.iter().enumerate() {
        assert!(!p[1].is_null(), "libsrtp refused SRTCP packet {i}");
        let clear = unhex(&p[1]);
        assert_eq!(clear[1], 200, "a sender report first");
    }
    let heard = readings_in_alaw(&audio);
    println!(
        "libsrtp decrypted {} RTP and {} RTCP packets; heard {heard:?}",
        rtp.len(),
        rtcp.len()
    );
    heard
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn required_srtp_to_libsrtp_nothing_in_clear_and_dtmf_works() {
    let LibsrtpCall {
        done,
        got,
        metrics,
        invite,
    } = call_libsrtp(true).await;
    assert_eq!(done.call.status, CallStatus::Completed, "{done:?}");
    assert_eq!(got["pressed"], true);
    assert_eq!(
        done.call.times_played, 3,
        "the key pressed under SRTP restarted the reading: {done:?}"
    );
    assert!(metrics.contains("otpdial_srtp_packets_rejected_total 0\n"));
    // Our offer: RTP/SAVP with both suites.
    assert!(invite.contains("RTP/SAVP 8 0 101"), "{invite}");
    assert!(invite.contains("a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:"));
    assert!(invite.contains("a=crypto:2 AES_CM_128_HMAC_SHA1_32 inline:"));
    // Read, then read again from the start of a reading after the key: the recogniser
    // may join readings that follow each other without the "I repeat" pause.
    let heard = check_all_srtp(&got, 500);
    let all = heard.concat();
    assert!(
        all.matches(CODE).count() >= 3 && all.replace(CODE, "").is_empty(),
        "{heard:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_pressed_in_plain_rtp_during_an_srtp_call_is_dropped() {
    let LibsrtpCall {
        done, got, metrics, ..
    } = call_libsrtp(false).await;
    assert_eq!(done.call.status, CallStatus::Completed, "{done:?}");
    assert_eq!(got["pressed"], true);
    assert_eq!(
        done.call.times_played, 2,
        "the plain key did not restart the reading: {done:?}"
    );
    assert!(
        metrics.contains("otpdial_srtp_packets_rejected_total 5\n"),
        "the 5 plain key-press packets: {metrics}"
    );
    assert_eq!(check_all_srtp(&got, 500), vec![CODE; 2]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn required_srtp_against_a_plain_answer_sends_no_media_and_fails() {
    let rtp = UdpSocket::bind("127.0.0.1:0").unwrap();
    let sipp = Sipp::uas(
        "uas_answer.xml",
        &[("rtp_port", rtp.local_addr().unwrap().port().to_string())],
    );
    let t = spawn_app(
        settings(sipp.port, SrtpMode::Required),
        Db::Sqlite,
        DialerMode::Background,
    )
    .await;
    let done = call(&t).await;
    sipp.finish(Duration::from_secs(10))
        .await
        .expect("SIPp got its BYE");
    assert_eq!(done.call.status, CallStatus::Failed, "{done:?}");
    assert_eq!(done.call.times_played, 0);
    let reason = done.call.attempts[0].reason.clone().unwrap_or_default();
    assert!(reason.starts_with("srtp_unavailable"), "{reason}");
    assert_eq!(
        t.call_reason(&done.id).await.as_deref(),
        Some("srtp_unavailable")
    );
    // The call is over (BYE answered): had the pacer sent anything, it would be here.
    rtp.set_nonblocking(true).unwrap();
    let mut buf = [0u8; 2048];
    assert!(rtp.recv_from(&mut buf).is_err(), "media was sent");
    t.app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn optional_srtp_against_a_plain_answer_completes_in_plain_rtp() {
    let rtp = UdpSocket::bind("127.0.0.1:0").unwrap();
    let sipp = Sipp::uas(
        "uas_answer.xml",
        &[("rtp_port", rtp.local_addr().unwrap().port().to_string())],
    );
    let t = spawn_app(
        settings(sipp.port, SrtpMode::Optional),
        Db::Sqlite,
        DialerMode::Background,
    )
    .await;
    let v = t
        .start_verification(json!({ "to": "+31612345678", "code": CODE, "locale": "en" }))
        .await;
    let audio = tokio::task::spawn_blocking(move || {
        rtp.set_read_timeout(Some(Duration::from_millis(1500)))
            .unwrap();
        let mut audio = Vec::new();
        let mut buf = [0u8; 2048];
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(60) {
            match rtp.recv(&mut buf) {
                Ok(n) => audio.extend_from_slice(&buf[12..n]),
                Err(_) if !audio.is_empty() => break,
                Err(_) => {}
            }
        }
        audio
    })
    .await
    .unwrap();
    let done = t.wait_call_final(&v.id, Duration::from_secs(30)).await;
    sipp.finish(Duration::from_secs(10))
        .await
        .expect("SIPp got its BYE");
    assert_eq!(done.call.status, CallStatus::Completed, "{done:?}");
    // Plain RTP: 160-byte payloads, no tag, and the code audible as is.
    assert_eq!(audio.len() % 160, 0);
    assert_eq!(readings_in_alaw(&audio), vec![CODE; 2]);
    t.app.stop().await;
}

/// The code read in a recording (8 kHz mono PCM16 WAV); nothing while it is not one.
fn readings_in_wav(wav: &Path) -> Vec<String> {
    let Ok(mut reader) = hound::WavReader::open(wav) else {
        return Vec::new();
    };
    let pcm: Vec<i16> = reader.samples::<i16>().map_while(Result::ok).collect();
    let recognizer = Recognizer::new(&PromptLibrary::builtin());
    let phrases: Vec<_> = recognizer
        .recognize(&pcm)
        .into_iter()
        .map(|m| m.phrase)
        .collect();
    readings(&phrases)
}

// ---- baresip with its srtp module ---------------------------------------------------

/// baresip as the trunk's callee on 127.0.0.47, no registration, answering at once
/// with SDES-SRTP (`mediaenc`: `srtp-mand` answers RTP/SAVP, `srtp` best effort on
/// RTP/AVP) and recording what it decrypts.
fn srtp_baresip(mediaenc: &str) -> Baresip {
    Baresip::start(
        "127.0.0.47",
        "rtp_ports 36000-36999\nmodule srtp.so\n",
        &format!(
            "<sip:+31612345678@127.0.0.47>;regint=0;answermode=auto;mediaenc={mediaenc};audio_codecs=PCMA"
        ),
    )
}

async fn srtp_to_baresip(mode: SrtpMode, mediaenc: &str) {
    let phone = srtp_baresip(mediaenc);
    let started = crate::procs::poll_until(Duration::from_secs(10), || {
        crate::procs::udp_port_bound(phone.addr.port())
    })
    .await;
    assert!(started, "baresip did not start\n{}", phone.log());
    let mut s = base_settings(phone.addr.port());
    s.trunks[0].proxy = format!("sip:{}", phone.addr).parse().unwrap();
    s.trunks[0].srtp = mode;
    let t = spawn_app(s, Db::Sqlite, DialerMode::Background).await;
    let done = call(&t).await;
    assert_eq!(
        done.call.status,
        CallStatus::Completed,
        "{done:?}\n{}",
        phone.log()
    );
    // baresip writes the recording as it goes and completes it when the call ends:
    // wait until it holds both readings.
    let deadline = Instant::now() + Duration::from_secs(10);
    let heard = loop {
        let heard = phone
            .heard()
            .map(|w| readings_in_wav(&w))
            .unwrap_or_default();
        if heard.len() >= 2 || Instant::now() > deadline {
            break heard;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    println!("baresip ({mediaenc}) heard {heard:?}");
    let log = phone.log();
    assert!(
        log.contains("SRTP is Enabled (cryptosuite=AES_CM_128_HMAC_SHA1_80)"),
        "{log}"
    );
    // baresip sends its own audio and RTCP back (aubridge source), as SRTP and SRTCP
    // under its key: none of it failed our checks.
    let metrics = t.metrics_text().await;
    assert!(
        metrics.contains("otpdial_srtp_packets_rejected_total 0\n"),
        "{metrics}"
    );
    assert_eq!(heard, vec![CODE; 2], "{}", phone.log());
    t.app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn required_srtp_to_baresip_it_hears_the_code() {
    srtp_to_baresip(SrtpMode::Required, "srtp-mand").await;
}

/// Best effort both ways: our RTP/AVP offer with a=crypto, baresip's `srtp` answering
/// RTP/AVP with its key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn optional_srtp_to_baresip_best_effort_srtp_is_taken_up() {
    srtp_to_baresip(SrtpMode::Optional, "srtp").await;
}

// ---- TLS signalling and SRTP together ------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_through_kamailio_and_srtp_to_libsrtp() {
    use crate::sip_kamailio::{make_certificates, trunk_settings, Kamailio, PASSWORD};
    let dir = tempfile::tempdir().unwrap();
    let rtp_port = free_port_pair();
    let mut their_key = [0u8; 30];
    getrandom::fill(&mut their_key).unwrap();
    let their_key = base64::engine::general_purpose::STANDARD.encode(their_key);
    let message_log = dir.path().join("sipp_messages.log");
    // No key press (the threshold is never reached).
    let peer = LibsrtpPeer::start(
        rtp_port,
        &their_key,
        &message_log,
        u32::MAX,
        true,
        dir.path(),
    );
    let log_arg = message_log.to_str().unwrap().to_string();
    let sipp = Sipp::uas_with_args(
        "uas_answer_srtp_via_proxy.xml",
        &[
            ("rtp_port", rtp_port.to_string()),
            ("srtp_key", their_key.clone()),
        ],
        &["-trace_msg", "-message_file", &log_arg],
    );
    let certs = tempfile::tempdir().unwrap();
    make_certificates(certs.path());
    let kamailio = Kamailio::start_tls(sipp.port, "SHA-256", certs.path());
    let mut s = trunk_settings(kamailio.port, PASSWORD);
    s.trunks[0].proxy.transport = otpdial::config::Transport::Tls;
    s.trunks[0].proxy.port = kamailio.tls_port.unwrap();
    s.trunks[0].tls_ca = certs.path().join("ca.pem").display().to_string();
    s.trunks[0].srtp = SrtpMode::Required;
    let report = otpdial::ops::call(
        &s,
        otpdial::ops::CallRequest {
            to: "+31612345678".into(),
            code: Some(CODE.into()),
            locale: Some("en".into()),
            trunk: Some("trunk-a".into()),
        },
    )
    .await
    .unwrap();
    sipp.finish(Duration::from_secs(10))
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}\n{}", report.render(), kamailio.log()));
    assert_eq!(
        report.outcome.status,
        CallStatus::Completed,
        "{}\n{}",
        report.render(),
        kamailio.log()
    );
    let log = kamailio.log();
    assert!(
        log.lines()
            .any(|l| l.contains("trunk: INVITE ") && l.contains(" from tls:")),
        "the INVITE (and its keys) went over TLS: {log}"
    );
    let invite = std::fs::read_to_string(&message_log).unwrap();
    assert!(invite.contains("RTP/SAVP 8 0 101"), "{invite}");
    let got = peer.result(Duration::from_secs(30)).await;
    assert_eq!(check_all_srtp(&got, 300), vec![CODE; 1], "repeat = 1 here");
}
