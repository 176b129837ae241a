//! Every call outcome against SIPp as the callee (scenarios in `tests/sipp/`), placed
//! through `otpdial call`'s code path (`ops::call`: trunk settings -> call engine -> SIP
//! UA over UDP). Each test asserts both sides: SIPp's scenario passed (it saw the ACK,
//! CANCEL, BYE, auth headers, routes it expects) and the outcome we report.

use std::net::UdpSocket;
use std::time::Duration;

use otpdial::call::Progress;
use otpdial::config::{SecretString, Settings, TrunkSettings};
use otpdial::domain::CallStatus;
use otpdial::ops::{self, CallReport, CallRequest};

use crate::helpers::{base_settings, receive_rtp, Received, Sipp};

const CODE: &str = "4815";

fn settings(port: u16, tweak: impl FnOnce(&mut TrunkSettings)) -> Settings {
    let mut s = base_settings(port);
    s.verification.repeat = 1;
    s.trunks[0].ring_timeout = Duration::from_secs(1);
    tweak(&mut s.trunks[0]);
    s
}

async fn place(s: &Settings) -> CallReport {
    ops::call(
        s,
        CallRequest {
            to: "+31612345678".into(),
            code: Some(CODE.into()),
            locale: Some("en".into()),
            trunk: None,
        },
    )
    .await
    .expect("call placed")
}

/// Every frame of the script for `CODE` (4815) read once.
fn expected_frames() -> usize {
    crate::helpers::expected_frames(&[4, 8, 1, 5], 1)
}

/// A loopback RTP receiver and its port.
fn rtp_receiver() -> (UdpSocket, u16) {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = s.local_addr().unwrap().port();
    (s, port)
}

async fn collect_rtp(socket: UdpSocket, within: Duration) -> Vec<Received> {
    tokio::task::spawn_blocking(move || receive_rtp(&socket, within, Duration::from_millis(1200)))
        .await
        .unwrap()
}

/// An answered call through `scenario`: the code is read once, RTP arrives in full.
async fn answered(
    scenario: &str,
    tweak: impl FnOnce(&mut TrunkSettings),
) -> (CallReport, Vec<Received>) {
    let (rtp, rtp_port) = rtp_receiver();
    let sipp = Sipp::uas(scenario, &[("rtp_port", rtp_port.to_string())]);
    let s = settings(sipp.port, tweak);
    let packets = tokio::spawn(collect_rtp(rtp, Duration::from_secs(30)));
    let report = place(&s).await;
    sipp.finish(Duration::from_secs(10))
        .await
        .unwrap_or_else(|e| panic!("SIPp {scenario}: {e}\n{}", report.render()));
    let packets = packets.await.unwrap();
    assert_eq!(
        report.outcome.status,
        CallStatus::Completed,
        "{}",
        report.render()
    );
    assert_eq!(report.outcome.sip_code, Some(200));
    assert_eq!(report.outcome.times_played, 1);
    assert_eq!(
        packets.len(),
        expected_frames(),
        "all RTP of the script arrived"
    );
    (report, packets)
}

/// A call `scenario` ends without an answer; returns our report.
async fn unanswered(scenario: &str, tweak: impl FnOnce(&mut TrunkSettings)) -> CallReport {
    let sipp = Sipp::uas(scenario, &[]);
    let s = settings(sipp.port, tweak);
    let report = place(&s).await;
    sipp.finish(Duration::from_secs(10))
        .await
        .unwrap_or_else(|e| panic!("SIPp {scenario}: {e}\n{}", report.render()));
    assert_eq!(report.outcome.times_played, 0);
    report
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sip_answer_with_only_pcma_gets_pcma() {
    let (_, packets) = answered("uas_pcma_only.xml", |t| {
        t.codecs = vec![
            otpdial::config::CodecName::Pcmu,
            otpdial::config::CodecName::Pcma,
        ]
    })
    .await;
    assert!(
        packets.iter().all(|p| p.payload_type == 8),
        "PCMA as answered"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sip_ringing_then_answer_with_pcmu_and_event_pt_96() {
    let (report, packets) = answered("uas_ring_answer_pt96.xml", |_| {}).await;
    assert_eq!(
        report.progress[..2],
        [Progress::Ringing, Progress::Answered],
        "{:?}",
        report.progress
    );
    assert!(
        packets.iter().all(|p| p.payload_type == 0),
        "PCMU as answered"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sip_early_media_183_then_200_final_sdp_wins() {
    let (rtp, rtp_port) = rtp_receiver();
    let (early, early_port) = rtp_receiver();
    let sipp = Sipp::uas(
        "uas_early_media.xml",
        &[
            ("rtp_port", rtp_port.to_string()),
            ("early_port", early_port.to_string()),
        ],
    );
    let s = settings(sipp.port, |_| {});
    let packets = tokio::spawn(collect_rtp(rtp, Duration::from_secs(30)));
    let early_packets = tokio::spawn(collect_rtp(early, Duration::from_secs(12)));
    let report = place(&s).await;
    sipp.finish(Duration::from_secs(10)).await.unwrap();
    assert_eq!(
        report.outcome.status,
        CallStatus::Completed,
        "{}",
        report.render()
    );
    assert_eq!(packets.await.unwrap().len(), expected_frames());
    assert!(
        early_packets.await.unwrap().is_empty(),
        "nothing sent to the 183's SDP address"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sip_486_is_busy() {
    let r = unanswered("uas_busy.xml", |_| {}).await;
    assert_eq!(r.outcome.status, CallStatus::Busy);
    assert_eq!(r.outcome.sip_code, Some(486));
    assert!(!r.outcome.failover);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sip_603_is_rejected() {
    let r = unanswered("uas_decline.xml", |_| {}).await;
    assert_eq!(r.outcome.status, CallStatus::Rejected);
    assert_eq!(r.outcome.sip_code, Some(603));
    assert!(!r.outcome.failover);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sip_480_is_no_answer() {
    let r = unanswered("uas_unavailable.xml", |_| {}).await;
    assert_eq!(r.outcome.status, CallStatus::NoAnswer);
    assert_eq!(r.outcome.sip_code, Some(480));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sip_503_is_reported_for_failover() {
    let r = unanswered("uas_service_unavailable.xml", |_| {}).await;
    assert_eq!(r.outcome.status, CallStatus::Failed);
    assert_eq!(r.outcome.sip_code, Some(503));
    assert!(r.outcome.failover, "the dialer tries the next trunk");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sip_488_is_failed_with_reason() {
    let r = unanswered("uas_not_acceptable.xml", |_| {}).await;
    assert_eq!(r.outcome.status, CallStatus::Failed);
    assert_eq!(r.outcome.sip_code, Some(488));
    assert!(r.outcome.detail.as_deref().unwrap().contains("488"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sip_200_without_common_codec_is_acked_byed_and_failed() {
    let r = unanswered("uas_g729_only.xml", |_| {}).await;
    assert_eq!(r.outcome.status, CallStatus::Failed);
    assert!(
        r.outcome.detail.as_deref().unwrap().contains("codec"),
        "{}",
        r.render()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sip_no_answer_cancels_after_ring_timeout() {
    let started = std::time::Instant::now();
    let r = unanswered("uas_no_answer.xml", |_| {}).await;
    assert_eq!(r.outcome.status, CallStatus::NoAnswer, "{}", r.render());
    assert!(r
        .outcome
        .detail
        .as_deref()
        .unwrap()
        .contains("ring_timeout"));
    assert!(started.elapsed() < Duration::from_secs(8));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sip_200_racing_the_cancel_is_acked_then_byed() {
    let (_rtp, rtp_port) = rtp_receiver();
    let sipp = Sipp::uas(
        "uas_answer_races_cancel.xml",
        &[("rtp_port", rtp_port.to_string())],
    );
    let s = settings(sipp.port, |_| {});
    let r = place(&s).await;
    sipp.finish(Duration::from_secs(10))
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", r.render()));
    assert_eq!(r.outcome.status, CallStatus::NoAnswer, "{}", r.render());
    assert_eq!(r.outcome.times_played, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sip_forked_200s_ack_both_bye_the_second() {
    answered("uas_forked_200s.xml", |_| {}).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sip_record_route_is_used_for_ack_and_bye() {
    answered("uas_record_route.xml", |_| {}).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sip_reinvite_mid_call_is_answered_and_playback_continues() {
    answered("uas_reinvite.xml", |_| {}).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sip_remote_bye_mid_playback_ends_the_call() {
    let (rtp, rtp_port) = rtp_receiver();
    let sipp = Sipp::uas("uas_remote_bye.xml", &[("rtp_port", rtp_port.to_string())]);
    let s = settings(sipp.port, |_| {});
    let packets = tokio::spawn(collect_rtp(rtp, Duration::from_secs(15)));
    let r = place(&s).await;
    sipp.finish(Duration::from_secs(10)).await.unwrap();
    assert_eq!(r.outcome.status, CallStatus::Failed, "{}", r.render());
    assert!(r.outcome.detail.as_deref().unwrap().contains("hung up"));
    let n = packets.await.unwrap().len();
    assert!(
        n > 10 && n < expected_frames(),
        "playback stopped early: {n} packets"
    );
}

fn with_credentials(t: &mut TrunkSettings) {
    t.username = Some("31508200000".into());
    t.auth_username = Some("otp-auth".into());
    t.password = Some(SecretString::from("s3cret-pass"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sip_401_then_200_with_md5_digest_checked_by_sipp() {
    answered("uas_auth_401.xml", with_credentials).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sip_401_with_wrong_password_is_rejected() {
    let sipp = Sipp::uas("uas_auth_401.xml", &[("rtp_port", "9".into())]);
    let s = settings(sipp.port, |t| {
        with_credentials(t);
        t.password = Some(SecretString::from("wrong"));
    });
    let r = place(&s).await;
    // SIPp took the 403 branch of its scenario: it still passes.
    sipp.finish(Duration::from_secs(10)).await.unwrap();
    assert_eq!(r.outcome.status, CallStatus::Rejected, "{}", r.render());
    assert_eq!(r.outcome.sip_code, Some(403));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sip_407_with_sha256_is_answered() {
    answered("uas_auth_407_sha256.xml", with_credentials).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sip_lost_invite_is_retransmitted() {
    let (rtp, rtp_port) = rtp_receiver();
    let sipp = Sipp::uas_with_args(
        "uas_lost_invite.xml",
        &[("rtp_port", rtp_port.to_string())],
        &["-trace_screen"],
    );
    let s = settings(sipp.port, |_| {});
    let packets = tokio::spawn(collect_rtp(rtp, Duration::from_secs(30)));
    let r = place(&s).await;
    let screen = sipp
        .finish_with_screen(Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(r.outcome.status, CallStatus::Completed, "{}", r.render());
    assert_eq!(packets.await.unwrap().len(), expected_frames());
    // SIPp's row for the INVITE: "----------> INVITE  <messages> <retrans> ...".
    let row = screen
        .lines()
        .find(|l| l.contains("----------> INVITE"))
        .unwrap_or_else(|| panic!("no INVITE row in {screen}"));
    let numbers: Vec<u32> = row
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    assert_eq!(numbers[0], 1, "{row}");
    assert!(
        numbers[1] >= 1,
        "Timer A retransmission seen by SIPp: {row}"
    );
}
