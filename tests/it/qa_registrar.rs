//! The QA registrar end to end (SPEC §6 `[[qa.phones]]`, issue 9): baresip (Debian
//! `baresip-core`) registers to the gateway with digest auth, auto-answers the
//! verification call to its number, records what it hears to a WAV (its `sndfile`
//! module); the project's recogniser reads the digits from that WAV and the API approves
//! them. And SIPVicious `svcrack` guessing the phone's password is banned before it gets
//! to the right one. Loopback only: the phone is on 127.0.0.44/45, not the trunk's
//! 127.0.0.1.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use otpdial::app::DialerMode;
use otpdial::config::{QaPhoneSettings, SecretString, Settings};
use otpdial::domain::{CallStatus, VerificationStatus};
use otpdial::media::PromptLibrary;
use otpdial::testphone::recognize::{readings, Recognizer};
use serde_json::{json, Value};

use crate::baresip::Baresip;
use crate::helpers::{
    admin_page, base_settings, free_udp_port, settled_file, spawn_app, Db, TestApp, ADMIN_TOKEN,
};

pub(crate) const NUMBER: &str = "+31612000001";
pub(crate) const PASSWORD: &str = "alice-Secret-42";

pub(crate) fn qa_settings() -> Settings {
    // The trunk of base_settings listens nowhere: a call that went to it would fail.
    let mut s = base_settings(free_udp_port());
    s.qa.phones = vec![QaPhoneSettings {
        username: "qa-alice".into(),
        password: Some(SecretString::from(PASSWORD)),
        password_env: "QA_ALICE_PASSWORD".into(),
        number: NUMBER.into(),
    }];
    s.database.acquire_timeout = Duration::from_secs(10);
    s
}

/// baresip as a QA softphone on `ip`, registered to `registrar`, answering every call
/// at once and recording the audio it receives.
fn qa_baresip(ip: &str, registrar: std::net::SocketAddr, password: &str) -> Baresip {
    Baresip::start(
        ip,
        "",
        &format!(
            "<sip:qa-alice@{registrar};transport=udp>;auth_pass={password};answermode=auto;regint=600"
        ),
    )
}

async fn admin_get(t: &TestApp, path: &str) -> Value {
    let (status, v) = t.get_as(ADMIN_TOKEN, path).await;
    assert_eq!(status, 200, "{path}: {v}");
    v
}

async fn phone_view(t: &TestApp) -> Value {
    admin_get(t, "/v1/qa/phones").await["phones"][0].clone()
}

/// The digits read in a recording (8 kHz mono PCM16 WAV), one string per reading.
pub(crate) fn readings_in(wav: &Path) -> Vec<String> {
    let mut reader = hound::WavReader::open(wav).expect("a WAV recording");
    let spec = reader.spec();
    assert_eq!(
        (spec.channels, spec.sample_rate, spec.bits_per_sample),
        (1, 8000, 16),
        "{spec:?}"
    );
    let pcm: Vec<i16> = reader.samples::<i16>().map_while(Result::ok).collect();
    let recognizer = Recognizer::new(&PromptLibrary::builtin());
    let phrases: Vec<_> = recognizer
        .recognize(&pcm)
        .into_iter()
        .map(|m| m.phrase)
        .collect();
    readings(&phrases)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn baresip_registers_answers_and_the_code_it_heard_is_approved() {
    let t = spawn_app(qa_settings(), Db::Sqlite, DialerMode::Background).await;
    let (status, v) = t.get("/v1/qa/phones").await;
    assert_eq!(status, 403, "admin scope only: {v}");
    let before = phone_view(&t).await;
    assert_eq!(before["registered"], false, "{before}");

    let phone = qa_baresip("127.0.0.44", t.app.sip_addr, PASSWORD);
    let deadline = Instant::now() + Duration::from_secs(15);
    let view = loop {
        let v = phone_view(&t).await;
        if v["registered"] == true {
            break v;
        }
        assert!(
            Instant::now() < deadline,
            "baresip did not register: {v}\n{}",
            phone.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    println!("GET /v1/qa/phones: {view}");
    assert_eq!(view["username"], "qa-alice");
    assert_eq!(view["number"], NUMBER);
    assert!(
        view["contact"].as_str().unwrap().contains("@127.0.0.44:"),
        "{view}"
    );
    assert!(view["source"]
        .as_str()
        .unwrap()
        .starts_with("udp:127.0.0.44:"));
    let left = view["expires_in"].as_u64().unwrap();
    assert!((500..=600).contains(&left), "{view}");
    assert!(view["expires"].as_str().unwrap().ends_with('Z'));

    // The dashboard lists the phone from the same registrations, number masked.
    let page = admin_page(&t.http, t.url("/admin"), ADMIN_TOKEN).await;
    let qa = &page[page.find("id=\"qa-phones\"").expect("QA panel")..];
    assert!(qa.contains("<td>qa-alice</td>"), "{qa}");
    assert!(
        qa.contains("registered</span>") && !qa.contains("not registered"),
        "{qa}"
    );
    assert!(qa.contains("@127.0.0.44:"), "{qa}");
    assert!(!qa.contains(NUMBER), "the number is masked: {qa}");

    // A verification to the phone's number rings baresip, not the trunk.
    let (status, _) = t
        .http
        .put(t.url("/v1/users/qa-alice/phones"))
        .bearer_auth(&t.token)
        .json(&json!({ "phones": [{ "number": NUMBER, "primary": true }] }))
        .send()
        .await
        .map(|r| (r.status(), ()))
        .unwrap();
    assert_eq!(status, 200);
    let v = t
        .start_verification(json!({ "user_id": "qa-alice", "locale": "en" }))
        .await;
    let done = t.wait_call_final(&v.id, Duration::from_secs(60)).await;
    assert_eq!(
        done.call.status,
        CallStatus::Completed,
        "{done:?}\n{}",
        phone.log()
    );
    assert_eq!(done.call.trunk.as_deref(), Some("qa:qa-alice"));
    assert_eq!(done.call.times_played, 2);

    // baresip closes its recording when the call ends.
    let deadline = Instant::now() + Duration::from_secs(10);
    let wav = loop {
        if let Some(w) = phone.heard() {
            if std::fs::metadata(&w).map(|m| m.len()).unwrap_or(0) > 8000 {
                break w;
            }
        }
        assert!(Instant::now() < deadline, "no recording\n{}", phone.log());
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    settled_file(&wav, 8001, Duration::from_secs(10), || phone.log()).await;
    let heard = readings_in(&wav);
    println!(
        "baresip heard the code read {} times: {heard:?}",
        heard.len()
    );
    assert_eq!(heard.len(), 2, "two readings: {heard:?}");
    assert_eq!(heard[0], heard[1]);
    assert_eq!(heard[0].len(), 6);
    let (status, body) = t.check(&v.id, &heard[0]).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["valid"], true, "{body}");
    assert_eq!(t.view(&v.id).await.status, VerificationStatus::Approved);

    let metrics = t.metrics_text().await;
    assert!(
        metrics.contains("otpdial_qa_registrations_total{result=\"registered\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("otpdial_qa_phones_registered 1"));
    t.app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_qa_phone_that_is_not_registered_fails_the_call_with_a_reason() {
    let mut s = qa_settings();
    s.verification.allow_unregistered_numbers = true;
    let t = spawn_app(s, Db::Sqlite, DialerMode::Background).await;
    let v = t
        .start_verification(json!({ "to": NUMBER, "locale": "en" }))
        .await;
    let done = t.wait_call_final(&v.id, Duration::from_secs(30)).await;
    assert_eq!(done.call.status, CallStatus::Failed, "{done:?}");
    assert_eq!(done.call.attempts.len(), 1);
    let attempt = &done.call.attempts[0];
    assert_eq!(attempt.trunk, "qa:qa-alice", "no trunk was tried");
    assert_eq!(
        attempt.reason.as_deref(),
        Some("QA phone qa-alice is not registered"),
        "{done:?}"
    );
    t.app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn svcrack_is_banned_before_it_finds_the_password() {
    // svcrack 0.3.8 ignores its -b option and always sends from 127.0.0.1 (its
    // bindingip never reaches the socket), so here no trunk sits on 127.0.0.1: the
    // attacker's address must not be a trusted one.
    let mut s = qa_settings();
    s.trunks.clear();
    let t = spawn_app(s, Db::Sqlite, DialerMode::Manual).await;
    let port = t.app.sip_addr.port().to_string();
    let dir = tempfile::tempdir().unwrap();
    // The right password is the 21st guess: a ban after 10 failures stops it before.
    let mut words: Vec<String> = (1..=20).map(|i| format!("guess{i}")).collect();
    words.push(PASSWORD.into());
    words.extend((21..=30).map(|i| format!("guess{i}")));
    let dict = dir.path().join("dict.txt");
    std::fs::write(&dict, words.join("\n") + "\n").unwrap();
    let out = Command::new("timeout")
        .args([
            "120",
            "sipvicious_svcrack",
            "-b",
            "127.0.0.66",
            "-u",
            "qa-alice",
        ])
        .arg("-d")
        .arg(&dict)
        .args(["-p", &port, "127.0.0.1"])
        .stdin(Stdio::null())
        .output()
        .expect("sipvicious_svcrack runs (pip install sipvicious)");
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    println!("svcrack:\n{printed}");
    let metrics = t.metrics_text().await;
    assert!(
        !printed.contains(PASSWORD),
        "password found:\n{printed}\n{metrics}"
    );
    for line in [
        "otpdial_qa_registrations_total{result=\"auth_failed\"} 10",
        "otpdial_sip_bans_total 1",
        "otpdial_sip_banned_sources 1",
    ] {
        assert!(metrics.contains(line), "{line} in\n{metrics}");
    }
    // The phone itself can still register from its own address.
    let phone = qa_baresip("127.0.0.45", t.app.sip_addr, PASSWORD);
    let deadline = Instant::now() + Duration::from_secs(15);
    while phone_view(&t).await["registered"] != true {
        assert!(Instant::now() < deadline, "{}", phone.log());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    t.app.stop().await;
}

/// Calls to a `[[qa.phones]]` number are test traffic: the per-number (3/10m) and
/// per-user (5/1h) limits and the daily budget do not stop a tester's eighth call in a
/// row, while the API key's limit still does. A real number is held to all of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qa_phone_calls_skip_the_number_user_and_budget_limits_not_the_api_key() {
    let mut s = qa_settings();
    s.limits.per_api_key = otpdial::config::RateLimit {
        count: 10,
        per: Duration::from_secs(600),
    };
    s.fraud.default_daily_budget = 2;
    // No calls are placed: only the starts are under test.
    let t = spawn_app(s, Db::Sqlite, DialerMode::Manual).await;
    let real = "+31612345678";
    for i in 1..=3 {
        let (status, body) = t
            .post("/v1/verifications", json!({ "to": real, "locale": "en" }))
            .await;
        let want = if i <= 2 { 201 } else { 422 };
        assert_eq!(status.as_u16(), want, "real number, start {i}: {body}");
        if i == 3 {
            assert!(body.to_string().contains("budget"), "{body}");
        }
    }
    for i in 1..=8 {
        let (status, body) = t
            .post(
                "/v1/verifications",
                json!({ "to": NUMBER, "user_id": "qa-alice", "locale": "en" }),
            )
            .await;
        assert_eq!(status.as_u16(), 201, "QA number, start {i}: {body}");
    }
    // 2 + 8 = 10: the API key's limit.
    let (status, body) = t
        .post("/v1/verifications", json!({ "to": NUMBER, "locale": "en" }))
        .await;
    assert_eq!(status.as_u16(), 429, "{body}");
    assert!(body.to_string().contains("limits.per_api_key"), "{body}");
    t.app.stop().await;
}
