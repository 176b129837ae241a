//! The pre-dial risk hook over real HTTP: allow, deny, timeout and a badly
//! signed answer, each with what reached the callee and the audit log.

use std::net::UdpSocket;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use otpdial::app::DialerMode;
use otpdial::config::{RiskDecision, SecretString};
use otpdial::dialer::Outcome;
use otpdial::domain::{CallStatus, VerificationStatus};
use serde_json::{json, Value};

use crate::helpers::{base_settings, free_udp_port, spawn_app, Db, Sipp, TestApp};
use crate::procs::fast_prompts_dir;

const KEY: &str = "risk-test-key";

#[derive(Clone, Copy)]
enum Hook {
    Answer(&'static str),
    /// Answers `allow` only after the gateway's timeout.
    Slow,
    /// Answers `allow`, signed with another key.
    BadSignature,
}

/// A hook on loopback; returns its URL and what it received (signature
/// valid?, body).
async fn start_hook(mode: Hook) -> (String, Arc<Mutex<Vec<(bool, Value)>>>) {
    let seen: Arc<Mutex<Vec<(bool, Value)>>> = Arc::default();
    let log = seen.clone();
    let handler = move |headers: HeaderMap, body: Bytes| {
        let log = log.clone();
        async move {
            let now = otpdial::domain::now_ms() / 1000;
            let sig = headers
                .get("otpdial-signature")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            let valid = otpdial::risk::signature_valid(KEY.as_bytes(), sig, &body, now);
            log.lock()
                .unwrap()
                .push((valid, serde_json::from_slice(&body).unwrap_or(Value::Null)));
            let (decision, key) = match mode {
                Hook::Answer(d) => (d, KEY),
                Hook::Slow => {
                    tokio::time::sleep(Duration::from_secs(3)).await;
                    ("allow", KEY)
                }
                Hook::BadSignature => ("allow", "not-the-key"),
            };
            let answer = json!({ "decision": decision }).to_string();
            let signature = otpdial::risk::sign_answer(key.as_bytes(), now, answer.as_bytes());
            (
                StatusCode::OK,
                [
                    ("content-type", "application/json".to_string()),
                    ("otpdial-signature", signature),
                ],
                answer,
            )
        }
    };
    let app = axum::Router::new().route("/risk", axum::routing::post(handler));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/risk", listener.local_addr().unwrap());
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (url, seen)
}

async fn gateway(
    hook: Hook,
    on_timeout: RiskDecision,
    trunk_port: u16,
) -> (TestApp, Arc<Mutex<Vec<(bool, Value)>>>) {
    let (url, seen) = start_hook(hook).await;
    let mut s = base_settings(trunk_port);
    s.prompts.dir = Some(fast_prompts_dir());
    s.verification.repeat = 1;
    s.risk.hook_url = url;
    s.risk.secret = Some(SecretString::from(KEY));
    s.risk.timeout = Duration::from_millis(500);
    s.risk.on_timeout = on_timeout;
    (spawn_app(s, Db::Sqlite, DialerMode::Manual).await, seen)
}

async fn denied(t: &TestApp, id: &str) {
    let outcome = t.app.dialer.claim_and_run_one().await.unwrap();
    assert!(
        matches!(
            outcome,
            Outcome::Finished {
                status: CallStatus::Failed,
                ..
            }
        ),
        "{outcome:?}"
    );
    let v = t.view(id).await;
    assert_eq!(v.status, VerificationStatus::Failed);
    assert_eq!(
        v.call.reason.map(|r| r.as_str()),
        Some("risk_denied"),
        "{v:?}"
    );
    assert!(v.call.attempts.is_empty(), "never dialled: {v:?}");
    let audited = t
        .app
        .store
        .audit_count("call.risk", id, Some("deny"))
        .await
        .unwrap();
    assert_eq!(audited, 1);
}

async fn allowed(t: &TestApp, id: &str, sipp: Sipp) {
    let outcome = t.app.dialer.claim_and_run_one().await.unwrap();
    assert!(
        matches!(
            outcome,
            Outcome::Finished {
                status: CallStatus::Completed,
                ..
            }
        ),
        "{outcome:?}"
    );
    sipp.finish(Duration::from_secs(10))
        .await
        .expect("the callee was called");
    let audited = t
        .app
        .store
        .audit_count("call.risk", id, Some("allow"))
        .await
        .unwrap();
    assert_eq!(audited, 1);
}

fn callee() -> (Sipp, UdpSocket) {
    let rtp = UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = rtp.local_addr().unwrap().port().to_string();
    (Sipp::uas("uas_answer.xml", &[("rtp_port", port)]), rtp)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn risk_hook_deny_is_obeyed_and_the_query_is_signed() {
    let (t, seen) = gateway(Hook::Answer("deny"), RiskDecision::Allow, free_udp_port()).await;
    let v = t
        .start_verification(json!({ "to": "+31612000401", "user_id": "u-risk" }))
        .await;
    denied(&t, &v.id).await;
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 1);
    let (signed, q) = &seen[0];
    assert!(signed, "the query carries a valid Otpdial-Signature");
    assert_eq!(q["number"], "+31612000401");
    assert_eq!(q["user_id"], "u-risk");
    assert_eq!(q["country"], "+31");
    assert_eq!(q["line_type"], "mobile");
    assert_eq!(q["verification_id"], v.id.as_str());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn risk_hook_allow_places_the_call() {
    let (sipp, _rtp) = callee();
    let (t, _) = gateway(Hook::Answer("allow"), RiskDecision::Deny, sipp.port).await;
    let v = t.start_verification(json!({ "to": "+31612000402" })).await;
    allowed(&t, &v.id, sipp).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn risk_hook_timeout_falls_back_to_on_timeout() {
    let (sipp, _rtp) = callee();
    let (t, _) = gateway(Hook::Slow, RiskDecision::Allow, sipp.port).await;
    let v = t.start_verification(json!({ "to": "+31612000403" })).await;
    allowed(&t, &v.id, sipp).await;
    let (t, _) = gateway(Hook::Slow, RiskDecision::Deny, free_udp_port()).await;
    let v = t.start_verification(json!({ "to": "+31612000404" })).await;
    denied(&t, &v.id).await;
}

/// An `allow` that is not signed with the key cannot let a call through:
/// it counts as no answer (`on_timeout = deny` here).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn risk_hook_answer_with_a_bad_signature_is_ignored() {
    let (t, _) = gateway(Hook::BadSignature, RiskDecision::Deny, free_udp_port()).await;
    let v = t.start_verification(json!({ "to": "+31612000405" })).await;
    denied(&t, &v.id).await;
    let metrics = t.metrics_text().await;
    assert!(
        metrics.contains("otpdial_verification_refusals_total{reason=\"risk_denied\"} 1"),
        "{metrics}"
    );
}
