//! Carrier trunks (issue 18): IPv6 signalling and media against a real SIPp callee.

use std::net::UdpSocket;
use std::time::Duration;

use otpdial::app::DialerMode;
use otpdial::domain::CallStatus;
use serde_json::json;

use crate::helpers::{base_settings, receive_rtp, spawn_app, Db, Sipp};

/// A UDP port that was free a moment ago on ::1.
fn free_udp6_port() -> u16 {
    UdpSocket::bind("[::1]:0")
        .and_then(|s| s.local_addr())
        .map(|a| a.port())
        .expect("free IPv6 port")
}

/// The gateway listens on `[::1]` and its trunk is the literal `sip:[::1]:PORT`, where
/// SIPp answers on ::1: the INVITE leaves (no local 400), SIPp's 200 is ACKed, the code
/// arrives as RTP over IPv6 from an IPv6 address, and the call completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipv6_literal_trunk_call_completes_with_rtp_over_ipv6() {
    let rtp = UdpSocket::bind("[::1]:0").unwrap();
    let rtp_port = rtp.local_addr().unwrap().port();
    let sipp_port = free_udp6_port();
    let sipp = Sipp::spawn_uas(
        "uas_answer.xml",
        &[("rtp_port", rtp_port.to_string())],
        &[],
        sipp_port,
        "::1",
    );
    let mut settings = base_settings(sipp_port);
    settings.sip.listen = "[::1]:0".parse().unwrap();
    settings.trunks[0].proxy = format!("sip:[::1]:{sipp_port}").parse().unwrap();
    let t = spawn_app(settings, Db::Sqlite, DialerMode::Background).await;

    let v = t
        .start_verification(json!({ "to": "+31612345678", "code": "481526", "locale": "en" }))
        .await;
    let packets = tokio::task::spawn_blocking(move || {
        let packets = receive_rtp(&rtp, Duration::from_secs(60), Duration::from_millis(1500));
        (packets, rtp)
    })
    .await
    .unwrap()
    .0;
    let done = t.wait_call_final(&v.id, Duration::from_secs(30)).await;
    sipp.finish(Duration::from_secs(10))
        .await
        .expect("SIPp scenario passed over IPv6");

    assert_eq!(done.call.status, CallStatus::Completed, "{done:?}");
    assert_eq!(done.call.sip_code, Some(200));
    assert_eq!(done.call.times_played, 2);
    assert!(!packets.is_empty(), "RTP over IPv6 arrived");
    assert!(packets.iter().all(|p| p.payload_type == 8));
    t.app.stop().await;
}
