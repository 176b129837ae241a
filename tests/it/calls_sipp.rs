//! Calls to SIPp as the callee: the answered call streams the code as
//! correctly paced, numbered and timestamped RTP; a busy callee gets none.

use std::net::UdpSocket;
use std::time::Duration;

use otpdial::app::DialerMode;
use otpdial::domain::{CallStatus, VerificationStatus};
use serde_json::json;

use crate::helpers::{base_settings, expected_frames, receive_rtp, spawn_app, Db, Sipp};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sipp_answers_and_receives_the_code_as_paced_rtp() {
    let rtp = UdpSocket::bind("127.0.0.1:0").unwrap();
    let rtp_port = rtp.local_addr().unwrap().port();
    let sipp = Sipp::uas("uas_answer.xml", &[("rtp_port", rtp_port.to_string())]);
    let t = spawn_app(base_settings(sipp.port), Db::Sqlite, DialerMode::Background).await;

    let v = t
        .start_verification(json!({ "to": "+31612345678", "code": "481526", "locale": "en" }))
        .await;
    assert_eq!(v.call.status, CallStatus::Queued);
    assert_eq!(v.to, "+316******78");

    let packets = tokio::task::spawn_blocking(move || {
        receive_rtp(&rtp, Duration::from_secs(60), Duration::from_millis(1500))
    })
    .await
    .unwrap();
    let done = t.wait_call_final(&v.id, Duration::from_secs(30)).await;
    sipp.finish(Duration::from_secs(10))
        .await
        .expect("SIPp scenario passed");

    assert_eq!(done.call.status, CallStatus::Completed, "{done:?}");
    assert_eq!(done.call.sip_code, Some(200));
    assert_eq!(done.call.times_played, 2);
    assert_eq!(done.call.trunk.as_deref(), Some("trunk-a"));
    assert!(done.call.answered_at.is_some() && done.call.ended_at.is_some());
    assert_eq!(done.call.attempts.len(), 1);
    assert_eq!(
        done.status,
        VerificationStatus::Pending,
        "code not checked yet"
    );

    // Every frame of the script arrived, in one stream, gap-free.
    let expected = expected_frames(&[4, 8, 1, 5, 2, 6], 2);
    assert_eq!(packets.len(), expected, "RTP packets received");
    let first = &packets[0];
    assert!(first.marker, "first packet starts a talk spurt");
    for (i, pair) in packets.windows(2).enumerate() {
        let (a, b) = (&pair[0], &pair[1]);
        assert_eq!(b.seq, a.seq.wrapping_add(1), "sequence gap at packet {i}");
        assert_eq!(
            b.timestamp,
            a.timestamp.wrapping_add(160),
            "timestamp step at {i}"
        );
        assert_eq!(b.ssrc, first.ssrc, "SSRC changed at {i}");
    }
    assert!(
        packets.iter().all(|p| p.payload_type == 8),
        "PCMA as answered"
    );
    assert!(
        packets.iter().all(|p| p.payload_len == 160),
        "20 ms of G.711"
    );
    // About 50 packets per second of audio: paced in real time, not burst.
    // The bounds are loose on purpose: arrival times are read in user space,
    // and a loaded machine (the suite runs tests in parallel) delays the
    // receiver or the pacer by a little; a burst would be far below 0.9 and
    // a pacer stuck on relative sleeps far above 1.25. Pacing precision is
    // measured by the playout benchmark, not here.
    let span = packets[packets.len() - 1].at - first.at;
    let nominal = Duration::from_millis(20 * (packets.len() as u64 - 1));
    assert!(
        span > nominal.mul_f64(0.9) && span < nominal.mul_f64(1.25),
        "{} packets over {span:?}, nominal {nominal:?}",
        packets.len()
    );

    let call = t.app.store.get_call_of(&v.id).await.unwrap().unwrap();
    let events = t.app.store.call_events(&call.id).await.unwrap();
    assert_eq!(
        events,
        vec![
            CallStatus::Queued,
            CallStatus::Dialing,
            CallStatus::Ringing,
            CallStatus::Answered,
            CallStatus::Completed
        ]
    );
    t.app.stop().await;
}

async fn busy_callee(db: Db) {
    let sipp = Sipp::uas("uas_busy.xml", &[]);
    let t = spawn_app(base_settings(sipp.port), db, DialerMode::Background).await;
    let v = t
        .start_verification(json!({ "to": "+31612345678", "code": "1234" }))
        .await;
    let done = t.wait_call_final(&v.id, Duration::from_secs(30)).await;
    sipp.finish(Duration::from_secs(10))
        .await
        .expect("SIPp got its ACK");

    assert_eq!(done.call.status, CallStatus::Busy);
    assert_eq!(done.call.sip_code, Some(486));
    assert_eq!(done.call.times_played, 0);
    assert!(done.call.answered_at.is_none());
    assert_eq!(
        done.status,
        VerificationStatus::Failed,
        "call ended without the code"
    );
    let call = t.app.store.get_call_of(&v.id).await.unwrap().unwrap();
    let events = t.app.store.call_events(&call.id).await.unwrap();
    // Never answered, so no playout (RTP) was ever started.
    assert_eq!(
        events,
        vec![CallStatus::Queued, CallStatus::Dialing, CallStatus::Busy]
    );
    let (status, check) = t.check(&v.id, "1234").await;
    assert_eq!(status, 200);
    assert_eq!(
        check["valid"], false,
        "a failed verification never approves"
    );
    t.app.stop().await;
}

crate::on_both_databases!(busy_callee);
