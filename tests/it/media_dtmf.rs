//! DTMF end to end: SIPp as the callee presses a key with RFC 4733 telephone-events
//! (its `play_dtmf`, sent over RTP from its media port) while the gateway reads the
//! code, and the gateway reads the code again. A key sent as SIP INFO
//! (application/dtmf-relay) restarts the reading the same way. The key gates
//! (`require_keypress`, `bind_digits`) are in `media_key_gates.rs`.
//!
//! A real peer rather than hand-built packets: SIPp builds its own event packets
//! (timestamps, repeats, End packets, after a few warm-up packets of another payload
//! type) on payload type 96, which its SDP answer declares instead of the 101 we
//! offer, so this also checks that the answer's telephone-event type reaches the pacer.

use std::net::UdpSocket;
use std::time::Duration;

use otpdial::app::DialerMode;
use otpdial::domain::CallStatus;
use otpdial::media::{CallScript, PromptLibrary};
use otpdial::verify::VerificationView;
use serde_json::json;

use crate::helpers::{base_settings, receive_rtp, spawn_app, Db, Sipp, TestApp};

/// A SIPp callee whose scenario sends media (play_dtmf): like `Sipp::uas`, plus
/// `-mp` on a free port, since SIPp's default media port 6000 is shared by every SIPp
/// on the machine (a second one cannot bind it and never answers).
fn sipp_with_media(scenario: &str) -> Sipp {
    let media_port = loop {
        // SIPp binds the media port and the one above it (RTCP): pick an even free pair.
        let s = UdpSocket::bind("127.0.0.1:0").unwrap();
        let p = s.local_addr().unwrap().port();
        if p % 2 == 0 && p < 65534 && UdpSocket::bind(("127.0.0.1", p + 1)).is_ok() {
            break p;
        }
    };
    Sipp::uas_with_args(scenario, &[], &["-mp", &media_port.to_string()])
}

/// Asks for a call reading "1234" in English, waits (up to 60 s) for it to end, then
/// for `sipp` to pass its scenario.
async fn call_1234_with(t: &TestApp, sipp: Sipp) -> VerificationView {
    let v = t
        .start_verification(json!({ "to": "+31612345678", "code": "1234", "locale": "en" }))
        .await;
    let done = t.wait_call_final(&v.id, Duration::from_secs(60)).await;
    sipp.finish(Duration::from_secs(10))
        .await
        .expect("SIPp scenario passed");
    done
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rfc4733_key_during_playback_reads_the_code_again() {
    let sipp = sipp_with_media("uas_dtmf_rfc4733.xml");
    let settings = base_settings(sipp.port);
    let repeat = settings.verification.repeat;
    assert_eq!(repeat, 2);
    let t = spawn_app(settings, Db::Sqlite, DialerMode::Background).await;

    // "1234" read twice takes about 11 s; the first reading ends about 5 s after the
    // answer and the key comes 6 s after it: during the second reading or "I repeat".
    let done = call_1234_with(&t, sipp).await;

    assert_eq!(done.call.status, CallStatus::Completed, "{done:?}");
    // One reading before the key, then all `repeat` readings again.
    assert_eq!(
        done.call.times_played,
        i64::from(repeat) + 1,
        "the key restarted the reading: {done:?}"
    );
    t.app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sip_info_key_during_playback_reads_the_code_again() {
    let rtp = UdpSocket::bind("127.0.0.1:0").unwrap();
    let rtp_port = rtp.local_addr().unwrap().port();
    let sipp = Sipp::uas(
        "uas_dtmf_sip_info.xml",
        &[("rtp_port", rtp_port.to_string())],
    );
    let t = spawn_app(base_settings(sipp.port), Db::Sqlite, DialerMode::Background).await;
    let v = t
        .start_verification(json!({ "to": "+31612345678", "code": "1234", "locale": "en" }))
        .await;
    let packets = tokio::task::spawn_blocking(move || {
        receive_rtp(&rtp, Duration::from_secs(60), Duration::from_millis(1500))
    })
    .await
    .unwrap();
    let done = t.wait_call_final(&v.id, Duration::from_secs(60)).await;
    sipp.finish(Duration::from_secs(10))
        .await
        .expect("SIPp scenario passed (its INFO got a 200)");
    assert_eq!(done.call.status, CallStatus::Completed, "{done:?}");
    assert_eq!(
        done.call.times_played, 3,
        "2 readings + 1 after the restart"
    );
    // The RTP shows it too: one stream, gap-free, longer than the plain script by
    // the readings played again.
    let lib = PromptLibrary::builtin();
    let pack = lib.get("en").unwrap();
    let plain = CallScript::build(&pack, &[1, 2, 3, 4], 2).frame_count(&pack) as usize;
    assert!(packets.len() > plain, "{} <= {plain}", packets.len());
    for pair in packets.windows(2) {
        assert_eq!(pair[1].seq, pair[0].seq.wrapping_add(1));
        assert_eq!(pair[1].timestamp, pair[0].timestamp.wrapping_add(160));
    }
    t.app.stop().await;
}
