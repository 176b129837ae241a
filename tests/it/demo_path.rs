//! The demo path: the built-in test phone hears exactly the code that was
//! asked for, the right code approves once, a wrong one is refused.

use std::sync::Arc;
use std::time::Duration;

use otpdial::app::DialerMode;
use otpdial::domain::{CallStatus, VerificationStatus};
use otpdial::media::PromptLibrary;
use otpdial::testphone::{AnswerMode, TestPhone, TestPhoneConfig};
use serde_json::json;

use crate::helpers::{base_settings, spawn_app, Db};

async fn phone_hears_the_code(db: Db, locale: &str, code: &str) {
    let mut phone = TestPhone::start(TestPhoneConfig {
        bind: "127.0.0.1:0".parse().unwrap(),
        answer: AnswerMode::Answer {
            ring: Duration::from_millis(100),
        },
        library: Arc::new(PromptLibrary::builtin()),
    })
    .await
    .unwrap();
    let t = spawn_app(
        base_settings(phone.sip_addr().port()),
        db,
        DialerMode::Background,
    )
    .await;
    let v = t
        .start_verification(json!({ "to": "0612345678", "code": code, "locale": locale }))
        .await;
    let heard = tokio::time::timeout(Duration::from_secs(60), phone.next_call())
        .await
        .expect("call within 60 s")
        .expect("phone running");
    assert_eq!(heard.readings.len(), 2, "read twice: {:?}", heard.phrases);
    assert_eq!(heard.code(), Some(code), "heard {:?}", heard.readings);
    assert_eq!(heard.locale.as_deref(), Some(locale));
    assert!(
        heard.request_uri.contains("+31612345678"),
        "{}",
        heard.request_uri
    );

    let done = t.wait_call_final(&v.id, Duration::from_secs(10)).await;
    assert_eq!(done.call.status, CallStatus::Completed);

    let wrong = if code.starts_with('9') { "1" } else { "9" }.repeat(code.len());
    let (status, r) = t.check(&v.id, &wrong).await;
    assert_eq!(status, 200);
    assert_eq!(r["valid"], false);
    assert_eq!(r["status"], "pending");
    assert_eq!(r["attempts_left"], 4);

    let (_, r) = t.check(&v.id, code).await;
    assert_eq!(r["valid"], true, "{r}");
    assert_eq!(r["status"], "approved");

    let (_, r) = t.check(&v.id, code).await;
    assert_eq!(r["valid"], false, "approved only once: {r}");
    assert_eq!(t.view(&v.id).await.status, VerificationStatus::Approved);
    t.app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_phone_hears_the_code_sqlite_en() {
    phone_hears_the_code(Db::Sqlite, "en", "739164").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_phone_hears_the_code_postgres_nl() {
    phone_hears_the_code(Db::Postgres, "nl", "05528103").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_command_approves_the_code_the_phone_heard() {
    let mut out = Vec::new();
    let ok = otpdial::demo::run(&mut out).await.unwrap();
    let text = String::from_utf8(out).unwrap();
    assert!(ok, "{text}");
    assert!(text.contains("valid=true status=approved"), "{text}");
    assert!(text.contains("demo OK"), "{text}");
}

/// Canceling through the API hangs up a call that is up: the phone gets a
/// BYE before the code is read, and the call ends `canceled`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_hangs_up_a_call_in_progress() {
    let mut phone = TestPhone::start(TestPhoneConfig {
        bind: "127.0.0.1:0".parse().unwrap(),
        answer: AnswerMode::Answer {
            ring: Duration::from_millis(50),
        },
        library: Arc::new(PromptLibrary::builtin()),
    })
    .await
    .unwrap();
    let t = spawn_app(
        base_settings(phone.sip_addr().port()),
        Db::Sqlite,
        DialerMode::Background,
    )
    .await;
    let v = t
        .start_verification(json!({ "to": "+31612345678", "code": "8080", "locale": "en" }))
        .await;
    for _ in 0..200 {
        if t.view(&v.id).await.call.status == CallStatus::Answered {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(t.view(&v.id).await.call.status, CallStatus::Answered);
    let started = std::time::Instant::now();
    let (status, c) = t
        .post(&format!("/v1/verifications/{}/cancel", v.id), json!({}))
        .await;
    assert_eq!(status, 200, "{c}");
    assert_eq!(c["status"], "canceled");
    let heard = tokio::time::timeout(Duration::from_secs(10), phone.next_call())
        .await
        .expect("phone saw the call end")
        .expect("phone running");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "hung up promptly, not after the whole script"
    );
    assert!(
        heard.readings.is_empty(),
        "code never read: {:?}",
        heard.readings
    );
    let done = t.wait_call_final(&v.id, Duration::from_secs(10)).await;
    assert_eq!(done.call.status, CallStatus::Canceled, "{done:?}");
    assert_eq!(done.call.times_played, 0);
    t.app.stop().await;
}
