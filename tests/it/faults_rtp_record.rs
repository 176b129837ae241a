//! What the gateway measured of the far end's RTP is recorded in the call's attempt
//! however the call ends: our BYE after the code, the callee's BYE mid-playback, and a
//! cancel through the API. SIPp plays the signalling; the test is the far end's media:
//! it sends a known stream with known gaps back to the gateway, so the recorded
//! packets, loss and codec are exact.

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use otpdial::app::DialerMode;
use otpdial::domain::CallStatus;
use otpdial::verify::{ReceivedView, VerificationView};
use serde_json::{json, Value};

use crate::helpers::{base_settings, spawn_app, Db, Sipp, TestApp, ADMIN_TOKEN};

/// Packets the far end numbers; those at these indices are "lost" (never sent).
const STREAM: u16 = 30;
const GAPS: [u16; 3] = [7, 8, 19];

/// The far end's media: waits for the gateway's first RTP packet on `rtp` (that is the
/// address it sends from and receives on), then sends it `STREAM` A-law packets 15 ms
/// apart (faster than real time, to be done before SIPp's BYE 1 s after the answer),
/// leaving out `GAPS`. Returns the gateway's RTP address.
fn far_end_stream(rtp: UdpSocket) -> SocketAddr {
    rtp.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut buf = [0u8; 2048];
    let (_, gateway) = rtp.recv_from(&mut buf).expect("the gateway's RTP");
    let ssrc: u32 = 0x5eed_f00d;
    for i in 0..STREAM {
        if !GAPS.contains(&i) {
            let seq = 4000u16.wrapping_add(i);
            let ts = 80_000u32.wrapping_add(u32::from(i) * 160);
            let mut p = vec![0x80, if i == 0 { 0x80 | 8 } else { 8 }];
            p.extend_from_slice(&seq.to_be_bytes());
            p.extend_from_slice(&ts.to_be_bytes());
            p.extend_from_slice(&ssrc.to_be_bytes());
            p.extend_from_slice(&[0xd5; 160]);
            rtp.send_to(&p, gateway).expect("send RTP");
        }
        std::thread::sleep(Duration::from_millis(15));
    }
    gateway
}

fn expect_measured(r: Option<&ReceivedView>, what: &str) {
    let r = r.unwrap_or_else(|| panic!("{what}: no RTP figures recorded"));
    assert_eq!(
        r.packets,
        u64::from(STREAM) - GAPS.len() as u64,
        "{what}: {r:?}"
    );
    assert_eq!(r.lost, GAPS.len() as u64, "{what}: {r:?}");
    assert!((r.loss - 0.1).abs() < 1e-9, "{what}: {r:?}");
    assert_eq!(r.codec.as_deref(), Some("PCMA"), "{what}: {r:?}");
    assert_eq!(r.srtp_rejected, 0, "{what}: {r:?}");
    // Sent 15 ms apart for 20 ms of media each: the transit changes by 5 ms a packet,
    // which RFC 3550's estimator (1/16 gain) turns into a few milliseconds.
    assert!(r.jitter_ms > 0.5 && r.jitter_ms < 100.0, "{what}: {r:?}");
}

/// The call record of `GET /v1/calls` for this verification.
async fn call_record(t: &TestApp, verification: &str) -> Value {
    let (status, list) = t.get_as(ADMIN_TOKEN, "/v1/calls?limit=1000").await;
    assert_eq!(status, 200, "{list}");
    list["calls"]
        .as_array()
        .and_then(|calls| {
            calls
                .iter()
                .find(|c| c["verification_id"] == verification)
                .cloned()
        })
        .unwrap_or_else(|| panic!("no call record for {verification}: {list}"))
}

async fn check_call_record(t: &TestApp, done: &VerificationView) {
    let record = call_record(t, &done.id).await;
    let received: ReceivedView =
        serde_json::from_value(record["received"].clone()).expect("received in /v1/calls");
    assert_eq!(
        Some(&received),
        done.call.attempts[0].received.as_ref(),
        "/v1/calls shows the attempt's figures: {record}"
    );
}

/// Starts SIPp (`scenario`, its SDP naming the test's RTP socket), the gateway and one
/// verification; the far end streams back once the call is up.
async fn call_with_far_end(
    scenario: &str,
    db: Db,
) -> (
    Sipp,
    TestApp,
    VerificationView,
    tokio::task::JoinHandle<SocketAddr>,
) {
    let rtp = UdpSocket::bind("127.0.0.1:0").unwrap();
    let rtp_port = rtp.local_addr().unwrap().port();
    let sipp = Sipp::uas(scenario, &[("rtp_port", rtp_port.to_string())]);
    let t = spawn_app(base_settings(sipp.port), db, DialerMode::Background).await;
    let v = t
        .start_verification(json!({ "to": "+31612345678", "code": "4711", "locale": "en" }))
        .await;
    let far_end = tokio::task::spawn_blocking(move || far_end_stream(rtp));
    (sipp, t, v, far_end)
}

/// The callee hangs up 1 s into the playback: the stream is stopped on their BYE and
/// its figures still land in the attempt.
async fn their_bye_records_the_far_end(db: Db) {
    let (sipp, t, v, far_end) = call_with_far_end("uas_remote_bye.xml", db).await;
    far_end.await.unwrap();
    let done = t.wait_call_final(&v.id, Duration::from_secs(60)).await;
    sipp.finish(Duration::from_secs(10))
        .await
        .expect("SIPp scenario passed");
    assert_eq!(done.call.status, CallStatus::Failed, "{done:?}");
    assert_eq!(done.call.attempts.len(), 1, "{done:?}");
    assert!(
        done.call.attempts[0]
            .reason
            .as_deref()
            .is_some_and(|r| r.contains("hung up")),
        "{done:?}"
    );
    expect_measured(done.call.attempts[0].received.as_ref(), "their BYE");
    check_call_record(&t, &done).await;
    t.app.stop().await;
}

crate::on_both_databases!(their_bye_records_the_far_end);

/// The code is read twice and we hang up: the figures come with the stream's end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn our_bye_records_the_far_end() {
    let (sipp, t, v, far_end) = call_with_far_end("uas_answer.xml", Db::Sqlite).await;
    far_end.await.unwrap();
    let done = t.wait_call_final(&v.id, Duration::from_secs(60)).await;
    sipp.finish(Duration::from_secs(10))
        .await
        .expect("SIPp scenario passed");
    assert_eq!(done.call.status, CallStatus::Completed, "{done:?}");
    expect_measured(done.call.attempts[0].received.as_ref(), "our BYE");
    check_call_record(&t, &done).await;
    t.app.stop().await;
}

/// Canceled through the API while the code plays: we hang up, and the figures of the
/// stream we stopped are recorded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_records_the_far_end() {
    let (sipp, t, v, far_end) = call_with_far_end("uas_answer.xml", Db::Postgres).await;
    far_end.await.unwrap();
    let started = Instant::now();
    let (status, c) = t
        .post(&format!("/v1/verifications/{}/cancel", v.id), json!({}))
        .await;
    assert_eq!(status, 200, "{c}");
    let done = t.wait_call_final(&v.id, Duration::from_secs(30)).await;
    sipp.finish(Duration::from_secs(10))
        .await
        .expect("SIPp scenario passed");
    assert_eq!(done.call.status, CallStatus::Canceled, "{done:?}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "hung up promptly"
    );
    expect_measured(done.call.attempts[0].received.as_ref(), "cancel");
    check_call_record(&t, &done).await;
    t.app.stop().await;
}

/// An unanswered attempt received no media and records none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn busy_records_no_media() {
    let sipp = Sipp::uas("uas_busy.xml", &[]);
    let t = spawn_app(base_settings(sipp.port), Db::Sqlite, DialerMode::Background).await;
    let v = t
        .start_verification(json!({ "to": "+31612345678", "code": "4711" }))
        .await;
    let done = t.wait_call_final(&v.id, Duration::from_secs(30)).await;
    sipp.finish(Duration::from_secs(10))
        .await
        .expect("SIPp got its ACK");
    assert_eq!(done.call.status, CallStatus::Busy);
    assert_eq!(done.call.attempts[0].received, None, "{done:?}");
    let (_, raw) = t.get(&format!("/v1/verifications/{}", v.id)).await;
    assert!(
        raw["call"]["attempts"][0].get("received").is_none(),
        "absent, not null: {raw}"
    );
    assert!(call_record(&t, &v.id).await.get("received").is_none());
    t.app.stop().await;
}
