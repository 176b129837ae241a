//! The HTTP contract without calls (the dialer is stopped): auth, problem
//! responses, validation, idempotency, attempts and approval, on SQLite and
//! PostgreSQL.

use otpdial::app::DialerMode;
use otpdial::dialer::Outcome;
use otpdial::domain::CallStatus;
use serde_json::json;

use crate::helpers::{base_settings, free_udp_port, spawn_app, Db, TestApp};

async fn app(db: Db) -> TestApp {
    spawn_app(base_settings(free_udp_port()), db, DialerMode::Manual).await
}

async fn auth_and_problems(db: Db) {
    let t = app(db).await;
    let url = t.url("/v1/verifications");

    let resp = t
        .http
        .post(&url)
        .json(&json!({"to": "+31612345678"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    assert_eq!(
        resp.headers()["content-type"],
        "application/problem+json",
        "errors are RFC 9457"
    );
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["status"], 401);

    let resp = t
        .http
        .post(&url)
        .bearer_auth("not-the-token")
        .json(&json!({"to": "+31612345678"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);

    for (body, field) in [
        (json!({"to": "+31abc"}), "to"),
        (json!({"to": "+3161234"}), "to"),
        (json!({"to": "+31612345678", "code": "12"}), "code"),
        (json!({"to": "+31612345678", "code": "12345a"}), "code"),
        (json!({"to": "+31612345678", "locale": "xx"}), "locale"),
        (json!({}), "to"),
    ] {
        let (status, problem) = t.post("/v1/verifications", body.clone()).await;
        assert_eq!(status, 422, "{body} -> {problem}");
        assert!(
            problem["detail"].as_str().unwrap_or("").starts_with(field),
            "{body} -> {problem}"
        );
    }
    let (status, _) = t
        .post(
            "/v1/verifications",
            json!({"to": "+31612345678", "bogus": 1}),
        )
        .await;
    assert_eq!(status, 422, "unknown fields are refused");

    let resp = t
        .http
        .post(&url)
        .bearer_auth(&t.token)
        .body("{not json")
        .header("content-type", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);

    let (status, _) = t.get("/v1/verifications/vf_01NOTTHERE").await;
    assert_eq!(status, 404);
    let (status, _) = t.get("/v1/verifications/..%2F..%2Fetc").await;
    assert_eq!(status, 404);

    let health = t.http.get(t.url("/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    let ready = t.http.get(t.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 200);
    t.app.stop().await;
}

async fn checks_and_idempotency(db: Db) {
    let t = app(db).await;

    // Idempotency-Key: the repeat returns the first answer, no new call.
    let send = |key: &'static str| {
        t.http
            .post(t.url("/v1/verifications"))
            .bearer_auth(&t.token)
            .header("Idempotency-Key", key)
            .json(&json!({"to": "0612345678", "code": "4815"}))
            .send()
    };
    let first = send("k-1").await.unwrap();
    assert_eq!(first.status(), 201);
    let location = first.headers()["location"].to_str().unwrap().to_string();
    let first: serde_json::Value = first.json().await.unwrap();
    assert_eq!(
        location,
        format!("/v1/verifications/{}", first["id"].as_str().unwrap())
    );
    assert_eq!(first["to"], "+316******78");
    assert_eq!(first["attempts_left"], 5);
    assert_eq!(first["call"]["status"], "queued");
    assert!(
        first.get("code").is_none(),
        "the code is never in a response"
    );
    let again: serde_json::Value = send("k-1").await.unwrap().json().await.unwrap();
    assert_eq!(again["id"], first["id"]);
    let other: serde_json::Value = send("k-2").await.unwrap().json().await.unwrap();
    assert_ne!(other["id"], first["id"]);

    // The second verification for the number superseded the first.
    let id = first["id"].as_str().unwrap();
    let v1 = t.view(id).await;
    assert_eq!(v1.status, otpdial::domain::VerificationStatus::Canceled);
    assert_eq!(v1.call.status, CallStatus::Canceled);
    let (_, r) = t.check(id, "4815").await;
    assert_eq!(r["valid"], false, "a canceled verification never approves");
    assert_eq!(r["status"], "canceled");

    // Five wrong checks fail it; then even the right code is refused.
    let id = other["id"].as_str().unwrap();
    for left in (0..5).rev() {
        let (status, r) = t.check(id, "0000").await;
        assert_eq!(status, 200);
        assert_eq!(r["valid"], false);
        assert_eq!(r["attempts_left"], left);
        assert_eq!(r["status"], if left == 0 { "failed" } else { "pending" });
    }
    let (_, r) = t.check(id, "4815").await;
    assert_eq!(r["valid"], false);
    assert_eq!(r["status"], "failed");

    // A third one approves with the right code, once. (The brute-force
    // guard across verifications is off in the test settings; it has its
    // own test in api_rules.)
    let third: serde_json::Value = send("k-3").await.unwrap().json().await.unwrap();
    let id2 = third["id"].as_str().unwrap();
    let (_, r) = t.check(id2, "4815").await;
    assert_eq!(r["valid"], true, "{r}");
    assert_eq!(r["status"], "approved");
    let (_, r) = t.check(id2, "4815").await;
    assert_eq!(r["valid"], false);

    // The code is stored only as a keyed hash: 64 hex digits in the only
    // column that holds anything of it (a code in clear would be 4 digits).
    let row = t.app.store.get_verification(id2).await.unwrap().unwrap();
    assert_eq!(row.code_hash.len(), 64);
    assert!(row.code_hash.bytes().all(|b| b.is_ascii_hexdigit()));
    let call = t.app.store.get_call_of(id2).await.unwrap().unwrap();
    assert_eq!(call.status, CallStatus::Queued);

    // Nobody needs those calls any more: the dialer cancels them unplaced.
    for _ in 0..2 {
        match t.app.dialer.claim_and_run_one().await.unwrap() {
            Outcome::Finished { status, .. } => assert_eq!(status, CallStatus::Canceled),
            other => panic!("two calls were queued, got {other:?}"),
        }
    }
    assert_eq!(
        t.app.dialer.claim_and_run_one().await.unwrap(),
        Outcome::Idle
    );
    let v = t.view(id2).await;
    assert_eq!(v.call.status, CallStatus::Canceled);
    assert_eq!(v.status, otpdial::domain::VerificationStatus::Approved);
    assert!(v.call.attempts.is_empty(), "no call was placed");
    t.app.stop().await;
}

crate::on_both_databases!(auth_and_problems, checks_and_idempotency);
