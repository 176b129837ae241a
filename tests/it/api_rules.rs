//! The verification rules of SPEC §3 over real HTTP, on SQLite and
//! PostgreSQL: registered numbers, limits, toll-fraud controls, cancel,
//! concurrency of checks, webhooks (signed, retried, surviving a restart),
//! the admin routes, metrics and the OpenAPI document.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::{HeaderMap, StatusCode};
use otpdial::app::DialerMode;
use otpdial::config::{SecretString, Settings};
use otpdial::dialer::Outcome;
use otpdial::domain::VerificationStatus;
use serde_json::{json, Value};

use crate::helpers::{
    base_settings, free_udp_port, spawn_app, spawn_app_on, Db, TestApp, ADMIN_TOKEN,
};

fn strict_settings() -> Settings {
    let mut s = base_settings(free_udp_port());
    s.verification.allow_unregistered_numbers = false;
    s
}

async fn put_phones(t: &TestApp, user: &str, body: Value) -> (StatusCode, Value) {
    let resp = t
        .http
        .put(t.url(&format!("/v1/users/{user}/phones")))
        .bearer_auth(&t.token)
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = resp.status();
    (status, resp.json().await.unwrap_or(Value::Null))
}

async fn registered_numbers(db: Db) {
    let t = spawn_app(strict_settings(), db, DialerMode::Manual).await;

    // Validation of the list.
    let nine: Vec<Value> = (0..9)
        .map(|i| json!({"number": format!("+3161234567{i}"), "primary": i == 0}))
        .collect();
    let (status, p) = put_phones(&t, "u-1", json!({ "phones": nine })).await;
    assert_eq!(status, 422, "at most 8: {p}");
    let (status, p) = put_phones(
        &t,
        "u-1",
        json!({"phones": [{"number": "+31612345678"}, {"number": "+31612345679"}]}),
    )
    .await;
    assert_eq!(status, 422, "exactly one primary: {p}");
    let (status, _) = put_phones(
        &t,
        "u-1",
        json!({"phones": [{"number": "+31612345678", "primary": true}, {"number": "0612345678"}]}),
    )
    .await;
    assert_eq!(status, 422, "duplicates after normalisation");
    let (status, _) = put_phones(
        &t,
        "u-1",
        json!({"phones": [{"number": "+3161", "primary": true}]}),
    )
    .await;
    assert_eq!(status, 422, "invalid number");

    let (status, list) = put_phones(
        &t,
        "u-1",
        json!({"phones": [
            {"number": "06 12345678", "primary": false, "label": "werk"},
            {"number": "+31687654321", "primary": true}
        ]}),
    )
    .await;
    assert_eq!(status, 200, "{list}");
    assert_eq!(list["phones"][0]["number"], "+31687654321", "primary first");
    assert_eq!(list["phones"][1]["number"], "+31612345678", "normalised");
    assert_eq!(list["phones"][1]["label"], "werk");
    let (_, got) = t.get("/v1/users/u-1/phones").await;
    assert_eq!(got, list);

    // user_id alone calls the primary number.
    let v = t.start_verification(json!({"user_id": "u-1"})).await;
    assert_eq!(v.to, "+316******21");
    // user_id + one of its numbers is fine; another number is not.
    let v = t
        .start_verification(json!({"user_id": "u-1", "to": "0612345678"}))
        .await;
    assert_eq!(v.to, "+316******78");
    let (status, p) = t
        .post(
            "/v1/verifications",
            json!({"user_id": "u-1", "to": "+31611111111"}),
        )
        .await;
    assert_eq!(status, 422, "{p}");
    // `to` alone must be someone's registered number.
    let (status, _) = t
        .post("/v1/verifications", json!({"to": "+31611111111"}))
        .await;
    assert_eq!(status, 422);
    // A user without numbers has no primary.
    let (status, p) = t
        .post("/v1/verifications", json!({"user_id": "nobody"}))
        .await;
    assert_eq!(status, 422);
    assert!(p["detail"].as_str().unwrap().contains("primary"), "{p}");

    // DELETE one number.
    let del = |n: &'static str| {
        t.http
            .delete(t.url(&format!("/v1/users/u-1/phones/{n}")))
            .bearer_auth(&t.token)
            .send()
    };
    assert_eq!(del("+31612345678").await.unwrap().status(), 204);
    assert_eq!(del("+31612345678").await.unwrap().status(), 404);
    let (_, got) = t.get("/v1/users/u-1/phones").await;
    assert_eq!(got["phones"].as_array().unwrap().len(), 1);
    t.app.stop().await;
}

async fn limits(db: Db) {
    let mut s = base_settings(free_udp_port());
    s.limits.per_number = "2/10m".parse().unwrap();
    s.limits.per_user = "3/1h".parse().unwrap();
    let t = spawn_app(s, db, DialerMode::Manual).await;

    for _ in 0..2 {
        t.start_verification(json!({"to": "+31612345678"})).await;
    }
    let resp = t
        .http
        .post(t.url("/v1/verifications"))
        .bearer_auth(&t.token)
        .json(&json!({"to": "+31612345678"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 429);
    let retry: u64 = resp.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=600).contains(&retry), "Retry-After {retry}");
    let p: Value = resp.json().await.unwrap();
    assert!(p["detail"].as_str().unwrap().contains("per_number"), "{p}");

    // Per user: three numbers, then the fourth start for that user is refused.
    for n in ["+31611111111", "+31622222222", "+31633333333"] {
        t.start_verification(json!({"user_id": "u-9", "to": n}))
            .await;
    }
    let (status, p) = t
        .post(
            "/v1/verifications",
            json!({"user_id": "u-9", "to": "+31644444444"}),
        )
        .await;
    assert_eq!(status, 429, "{p}");
    assert!(p["detail"].as_str().unwrap().contains("per_user"), "{p}");

    let text = t.metrics_text().await;
    assert!(
        text.contains("otpdial_rate_limited_total{reason=\"per_number\"} 1"),
        "{text}"
    );
    t.app.stop().await;
}

async fn toll_fraud(db: Db) {
    let mut s = base_settings(free_udp_port());
    s.trunks[0].prefixes = vec!["+31".into()];
    s.fraud.default_daily_budget = 2;
    let t = spawn_app(s, db, DialerMode::Manual).await;

    let refused = |to: &'static str| t.post("/v1/verifications", json!({"to": to}));
    let (status, p) = refused("+319001234567").await;
    assert_eq!(status, 422, "premium rate: {p}");
    assert_eq!(p["title"], "Destination Not Allowed");
    let (status, p) = refused("+4915123456789").await;
    assert_eq!(status, 422, "prefix not routed: {p}");

    t.start_verification(json!({"to": "+31612345678"})).await;
    t.start_verification(json!({"to": "+31201234567"})).await;
    let (status, p) = refused("+31687654321").await;
    assert_eq!(status, 422, "daily budget for +31: {p}");
    assert!(p["detail"].as_str().unwrap().contains("+31"), "{p}");

    // Every refusal is audited and counted, and none became a call.
    let text = t.metrics_text().await;
    for reason in ["number_type", "prefix_not_allowed", "daily_budget"] {
        assert!(
            text.contains(&format!(
                "otpdial_verification_refusals_total{{reason=\"{reason}\"}} 1"
            )),
            "{reason}: {text}"
        );
    }
    for (number, reason) in [
        ("+319001234567", "number_type"),
        ("+4915123456789", "prefix_not_allowed"),
        ("+31687654321", "daily_budget"),
    ] {
        let target = otpdial::domain::PhoneNumber::from_trusted(number.into()).masked();
        let n = t
            .app
            .store
            .audit_count("verification.start", &target, Some(reason))
            .await
            .unwrap();
        assert_eq!(n, 1, "audit of {target} {reason}");
    }
    let (_, calls) = t.get_as(ADMIN_TOKEN, "/v1/calls").await;
    assert_eq!(calls["calls"].as_array().unwrap().len(), 2, "{calls}");
    t.app.stop().await;
}

async fn mobile_only_and_unknown_ids(db: Db) {
    let mut s = base_settings(free_udp_port());
    s.verification.mobile_only = true;
    let t = spawn_app(s, db, DialerMode::Manual).await;
    let (status, p) = t
        .post("/v1/verifications", json!({"to": "+31201234567"}))
        .await;
    assert_eq!(status, 422, "fixed line refused: {p}");

    let v = t
        .start_verification(json!({"to": "+31612345678", "code": "123456"}))
        .await;
    let (s1, wrong) = t.check(&v.id, "000000").await;
    let (s2, unknown) = t.check("vf_01ZZZZZZZZZZZZZZZZZZZZZZZZ", "000000").await;
    assert_eq!((s1, s2), (StatusCode::OK, StatusCode::OK));
    let keys = |v: &Value| {
        v.as_object()
            .unwrap()
            .keys()
            .cloned()
            .collect::<BTreeSet<_>>()
    };
    assert_eq!(keys(&wrong), keys(&unknown), "same shape");
    assert_eq!(unknown["valid"], false);
    t.app.stop().await;
}

async fn cancel(db: Db) {
    let t = spawn_app(base_settings(free_udp_port()), db, DialerMode::Manual).await;
    let v = t
        .start_verification(json!({"to": "+31612345678", "code": "5555"}))
        .await;
    let path = format!("/v1/verifications/{}/cancel", v.id);
    let (status, c) = t.post(&path, json!({})).await;
    assert_eq!(status, 200, "{c}");
    assert_eq!(c["status"], "canceled");
    assert_eq!(c["call"]["status"], "canceled");
    let (status, _) = t.post(&path, json!({})).await;
    assert_eq!(status, 200, "canceling twice is harmless");
    let (_, r) = t.check(&v.id, "5555").await;
    assert_eq!(r["valid"], false);
    // Nothing left to dial.
    assert_eq!(
        t.app.dialer.claim_and_run_one().await.unwrap(),
        Outcome::Idle
    );

    let v2 = t
        .start_verification(json!({"to": "+31612345678", "code": "5555"}))
        .await;
    t.check(&v2.id, "5555").await;
    let (status, p) = t
        .post(&format!("/v1/verifications/{}/cancel", v2.id), json!({}))
        .await;
    assert_eq!(status, 409, "approved cannot be canceled: {p}");
    let (status, _) = t
        .post(
            "/v1/verifications/vf_01ZZZZZZZZZZZZZZZZZZZZZZZZ/cancel",
            json!({}),
        )
        .await;
    assert_eq!(status, 404);
    t.app.stop().await;
}

async fn concurrent_checks(db: Db) {
    let t = spawn_app(base_settings(free_udp_port()), db, DialerMode::Manual).await;
    let t = Arc::new(t);
    // Wrong codes: exactly max_check_attempts are evaluated.
    let v = t
        .start_verification(json!({"to": "+31612345678", "code": "777777"}))
        .await;
    let mut tasks = Vec::new();
    for _ in 0..200 {
        let t = t.clone();
        let id = v.id.clone();
        tasks.push(tokio::spawn(async move { t.check(&id, "123456").await }));
    }
    for task in tasks {
        let (status, r) = task.await.unwrap();
        // 429: held back by the brute-force guard once the user had five
        // wrong checks (it raced the verification turning failed).
        assert!(status == 200 || status == 429, "{status}: {r}");
        assert_eq!(
            r["valid"],
            if status == 200 {
                false.into()
            } else {
                serde_json::Value::Null
            }
        );
    }
    let evaluated = t
        .app
        .store
        .audit_count("verification.check", &v.id, Some("wrong"))
        .await
        .unwrap();
    assert_eq!(evaluated, 5, "only max_check_attempts checks evaluated");
    assert_eq!(t.view(&v.id).await.status, VerificationStatus::Failed);

    // Right code from 200 clients at once: approved exactly once.
    let v = t
        .start_verification(json!({"to": "+31612345679", "code": "777777"}))
        .await;
    let mut tasks = Vec::new();
    for _ in 0..200 {
        let t = t.clone();
        let id = v.id.clone();
        tasks.push(tokio::spawn(async move { t.check(&id, "777777").await }));
    }
    let mut approved = 0;
    for task in tasks {
        let (_, r) = task.await.unwrap();
        if r["valid"] == true {
            approved += 1;
        }
    }
    assert_eq!(approved, 1);
    let evaluated = t
        .app
        .store
        .audit_count("verification.check", &v.id, None)
        .await
        .unwrap();
    assert!(evaluated <= 5, "{evaluated} evaluated");
    match Arc::try_unwrap(t) {
        Ok(t) => t.app.stop().await,
        Err(_) => panic!("test app still shared"),
    }
}

/// A webhook receiver on loopback: records what it got and answers with the
/// scripted statuses (then 200).
#[derive(Clone, Default)]
struct Receiver {
    got: Arc<Mutex<Vec<(HeaderMap, String)>>>,
    script: Arc<Mutex<Vec<u16>>>,
}

impl Receiver {
    async fn start(script: Vec<u16>) -> (Receiver, String) {
        let r = Receiver {
            got: Default::default(),
            script: Arc::new(Mutex::new(script)),
        };
        let state = r.clone();
        let app = axum::Router::new().route(
            "/hook",
            axum::routing::post(
                |axum::extract::State(s): axum::extract::State<Receiver>,
                 headers: HeaderMap,
                 body: String| async move {
                    s.got.lock().unwrap().push((headers, body));
                    let mut script = s.script.lock().unwrap();
                    let code = if script.is_empty() {
                        200
                    } else {
                        script.remove(0)
                    };
                    StatusCode::from_u16(code).unwrap()
                },
            ),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app.with_state(state)).await });
        (r, url)
    }

    fn bodies(&self) -> Vec<(HeaderMap, String)> {
        self.got.lock().unwrap().clone()
    }
}

fn webhook_settings() -> Settings {
    let mut s = base_settings(free_udp_port());
    s.webhooks.secret = Some(SecretString::from("whsec-test"));
    s.webhooks.backoff = Duration::from_millis(100);
    // The test receiver listens on plain http on loopback.
    s.webhooks.allow_private_targets = true;
    s.webhooks.allow_http = true;
    s
}

/// SSRF: with the default rules a `callback_url` that is plain http, or
/// resolves to loopback, a private network, link-local (cloud metadata),
/// CGNAT or an IPv4-mapped internal address is refused with 422 and no
/// verification is created; a public https URL is accepted.
async fn callback_url_to_internal_targets_is_refused(db: Db) {
    let mut s = base_settings(free_udp_port());
    s.webhooks.secret = Some(SecretString::from("whsec-test"));
    let t = spawn_app(s, db, DialerMode::Manual).await;
    for (i, url) in [
        "http://93.184.216.34/hook",
        "https://127.0.0.1/hook",
        "https://localhost:8443/hook",
        "https://[::1]/hook",
        "https://10.0.0.7/hook",
        "https://172.20.1.1/hook",
        "https://192.168.1.10/hook",
        "https://169.254.169.254/latest/meta-data/",
        "https://100.100.100.200/hook",
        "https://[::ffff:10.1.1.1]/hook",
        "https://[fd00:ec2::254]/hook",
        "https://0.0.0.0/hook",
        "gopher://93.184.216.34/hook",
    ]
    .iter()
    .enumerate()
    {
        let (status, body) = t
            .post(
                "/v1/verifications",
                json!({ "to": format!("+3161200{:04}", 100 + i), "callback_url": url }),
            )
            .await;
        assert_eq!(status, 422, "{url}: {body}");
        assert!(
            body["detail"]
                .as_str()
                .unwrap_or("")
                .contains("callback_url"),
            "{url}: {body}"
        );
    }
    let (status, body) = t
        .post(
            "/v1/verifications",
            json!({ "to": "+31612000199", "callback_url": "https://93.184.216.34/hook" }),
        )
        .await;
    assert_eq!(status, 201, "a public https target is fine: {body}");
}

async fn wait_for<T>(mut f: impl FnMut() -> Option<T>, what: &str) -> T {
    for _ in 0..200 {
        if let Some(v) = f() {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for {what}");
}

async fn webhooks(db: Db) {
    let (rx, url) = Receiver::start(vec![500, 503]).await;
    let t = spawn_app(webhook_settings(), db, DialerMode::Manual).await;
    let v = t
        .start_verification(json!({"to": "+31612345678", "code": "2468", "callback_url": url}))
        .await;
    t.check(&v.id, "2468").await;

    // verification.approved: refused twice, delivered on the third try.
    let got = wait_for(
        || {
            let b = rx.bodies();
            (b.len() >= 3).then_some(b)
        },
        "three deliveries",
    )
    .await;
    for (headers, body) in &got {
        let sig = headers["otpdial-signature"].to_str().unwrap();
        let (t_part, v1) = sig.split_once(",v1=").unwrap();
        let unix: i64 = t_part.trim_start_matches("t=").parse().unwrap();
        assert_eq!(
            sig,
            otpdial::webhooks::signature(b"whsec-test", unix, body.as_bytes()),
            "signed with the secret over t.body"
        );
        assert_eq!(v1.len(), 64);
        let body: Value = serde_json::from_str(body).unwrap();
        assert_eq!(body["event"], "verification.approved");
        assert_eq!(body["verification"]["id"], v.id.as_str());
        assert_eq!(body["verification"]["status"], "approved");
        assert!(!body.to_string().contains("2468"), "no code in webhooks");
    }
    assert_eq!(got[0].1, got[2].1, "every retry sends the same body");
    let mut counts = (0, 0, 0);
    for _ in 0..100 {
        counts = t.app.store.webhook_counts(&v.id).await.unwrap();
        if counts.0 == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(counts, (1, 0, 0));
    t.app.stop().await;
}

/// A webhook queued while the receiver is down survives a restart of the
/// gateway and is delivered by the new process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_survives_restart() {
    let mut s = webhook_settings();
    s.webhooks.backoff = Duration::from_secs(1);
    s.webhooks.allow_private_targets = true;
    s.webhooks.allow_http = true;
    // Receiver not started yet: port reserved and closed.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let url = format!("http://127.0.0.1:{port}/hook");
    let t = spawn_app(s.clone(), Db::Sqlite, DialerMode::Manual).await;
    let v = t
        .start_verification(json!({"to": "+31612345678", "callback_url": url}))
        .await;
    t.post(&format!("/v1/verifications/{}/cancel", v.id), json!({}))
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (db_url, dir) = t.stop_keep_db().await;

    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .unwrap();
    let rx = Receiver::default();
    let state = rx.clone();
    let app = axum::Router::new()
        .route(
            "/hook",
            axum::routing::post(
                |axum::extract::State(s): axum::extract::State<Receiver>,
                 headers: HeaderMap,
                 body: String| async move {
                    s.got.lock().unwrap().push((headers, body));
                    StatusCode::NO_CONTENT
                },
            ),
        )
        .with_state(state);
    tokio::spawn(async move { axum::serve(listener, app).await });

    let t = spawn_app_on(s, db_url, dir, DialerMode::Manual).await;
    let got = wait_for(
        || {
            let b = rx.bodies();
            let events: BTreeSet<String> = b
                .iter()
                .map(|(_, body)| {
                    serde_json::from_str::<Value>(body).unwrap()["event"]
                        .as_str()
                        .unwrap()
                        .to_string()
                })
                .collect();
            (events.len() >= 2).then_some(events)
        },
        "deliveries after restart",
    )
    .await;
    assert!(got.contains("verification.canceled"), "{got:?}");
    assert!(got.contains("call.canceled"), "{got:?}");
    t.app.stop().await;
}

async fn admin_routes(db: Db) {
    let t = spawn_app(base_settings(free_udp_port()), db, DialerMode::Manual).await;
    let (status, _) = t.get("/v1/trunks").await;
    assert_eq!(status, 403, "verify scope is not admin");
    let (status, trunks) = t.get_as(ADMIN_TOKEN, "/v1/trunks").await;
    assert_eq!(status, 200);
    let trunk = &trunks["trunks"][0];
    assert_eq!(trunk["name"], "trunk-a");
    for key in [
        "registered",
        "last_error",
        "active_calls",
        "calls_total",
        "answer_rate",
    ] {
        assert!(trunk.get(key).is_some(), "{key} in {trunk}");
    }
    let (status, _) = t
        .post("/v1/verifications", json!({"to": "+31612345678"}))
        .await;
    assert_eq!(status, 201);
    let resp = t
        .http
        .post(t.url("/v1/verifications"))
        .bearer_auth(ADMIN_TOKEN)
        .json(&json!({"to": "+31612345678"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 403, "admin scope is not verify");
    let (status, calls) = t.get_as(ADMIN_TOKEN, "/v1/calls?since=0").await;
    assert_eq!(status, 200);
    let call = &calls["calls"][0];
    assert_eq!(call["to"], "+316******78");
    assert_eq!(call["status"], "queued");
    assert!(!calls.to_string().contains("+31612345678"), "masked");
    let (status, _) = t.get_as(ADMIN_TOKEN, "/v1/calls?since=yesterday-ish").await;
    assert_eq!(status, 422);
    let (status, none) = t
        .get_as(ADMIN_TOKEN, "/v1/calls?since=2999-01-01T00:00:00Z")
        .await;
    assert_eq!(status, 200);
    assert_eq!(none["calls"].as_array().unwrap().len(), 0);
    t.app.stop().await;
}

/// The OpenAPI document is 3.1, lists exactly the routes the router
/// serves, and each of them answers (not the router's 404/405).
#[tokio::test]
async fn openapi_matches_the_served_routes() {
    let t = spawn_app(
        base_settings(free_udp_port()),
        Db::Sqlite,
        DialerMode::Manual,
    )
    .await;
    let doc: Value = t
        .http
        .get(t.url("/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        doc["openapi"].as_str().unwrap().starts_with("3.1"),
        "{}",
        doc["openapi"]
    );
    let mut documented = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            documented.insert(format!("{} {path}", method.to_uppercase()));
        }
    }
    let expected: BTreeSet<String> = [
        "POST /v1/verifications",
        "GET /v1/verifications/{id}",
        "POST /v1/verifications/{id}/check",
        "POST /v1/verifications/{id}/cancel",
        "PUT /v1/users/{user_id}/phones",
        "GET /v1/users/{user_id}/phones",
        "DELETE /v1/users/{user_id}/phones/{number}",
        "GET /v1/trunks",
        "GET /v1/calls",
        "GET /v1/qa/phones",
        "GET /v1/canaries",
        "GET /v1/caller-ids",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    assert_eq!(documented, expected);
    assert!(doc["components"]["securitySchemes"]["bearer"].is_object());
    let params = doc["paths"]["/v1/calls"]["get"]["parameters"]
        .as_array()
        .unwrap();
    for p in params {
        assert_eq!(p["in"], "query", "{p}");
        assert_ne!(p["required"], true, "{p}");
    }
    let canaries = &doc["components"]["schemas"]["CanaryRunView"]["properties"];
    for field in [
        "result",
        "post_dial_delay_ms",
        "setup_ms",
        "loss",
        "jitter_ms",
        "mos",
        "heard",
        "at",
    ] {
        assert!(
            canaries[field].is_object(),
            "CanaryRunView.{field}: {canaries}"
        );
    }
    let schemas = &doc["components"]["schemas"];
    for field in ["number", "pool", "calls", "answer_rate", "resting_until"] {
        assert!(
            schemas["CallerIdView"]["properties"][field].is_object(),
            "CallerIdView.{field}: {}",
            schemas["CallerIdView"]
        );
    }
    for field in ["country", "calls", "answer_rate"] {
        assert!(
            schemas["TrunkCountryView"]["properties"][field].is_object(),
            "TrunkCountryView.{field}: {}",
            schemas["TrunkCountryView"]
        );
    }
    assert!(
        schemas["TrunkView"]["properties"]["countries"].is_object(),
        "{}",
        schemas["TrunkView"]
    );
    assert!(
        schemas["PhoneEntry"]["properties"]["locale"].is_object(),
        "{}",
        schemas["PhoneEntry"]
    );
    // Errors are documented as problem documents.
    let not_found = &doc["paths"]["/v1/verifications/{id}"]["get"]["responses"]["404"];
    assert!(
        not_found["content"]["application/problem+json"].is_object(),
        "{not_found}"
    );

    for route in &documented {
        let (method, path) = route.split_once(' ').unwrap();
        let path = path
            .replace("{id}", "vf_01ZZZZZZZZZZZZZZZZZZZZZZZZ")
            .replace("{user_id}", "u-1")
            .replace("{number}", "+31612345678");
        let req = t
            .http
            .request(method.parse().unwrap(), t.url(&path))
            .bearer_auth(&t.token);
        let resp = if method == "GET" || method == "DELETE" {
            req.send().await.unwrap()
        } else {
            req.json(&json!({})).send().await.unwrap()
        };
        assert_ne!(resp.status(), 405, "{route}");
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        assert_ne!(body["detail"], "route not found", "{route} is served");
    }
    // And an undocumented route is not.
    let (status, body) = t.get("/v1/secret-admin").await;
    assert_eq!(status, 404);
    assert_eq!(body["detail"], "route not found");
    t.app.stop().await;
}

/// Metrics are Prometheus text and count what happened.
#[tokio::test]
async fn metrics_are_prometheus_text() {
    let t = spawn_app(
        base_settings(free_udp_port()),
        Db::Sqlite,
        DialerMode::Manual,
    )
    .await;
    let v = t
        .start_verification(json!({"to": "+31612345678", "code": "1234"}))
        .await;
    t.check(&v.id, "9999").await;
    t.check(&v.id, "1234").await;
    let resp = t.http.get(t.url("/metrics")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain"));
    let text = resp.text().await.unwrap();
    assert!(
        text.contains("otpdial_verifications_started_total 1"),
        "{text}"
    );
    assert!(
        text.contains("otpdial_checks_total{result=\"wrong\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("otpdial_checks_total{result=\"approved\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("otpdial_active_calls{trunk=\"trunk-a\"} 0"),
        "{text}"
    );
    assert!(!text.contains("1234"), "no codes in metrics");
    assert!(text.trim_end().ends_with("# EOF"), "OpenMetrics-style end");
    t.app.stop().await;
}

/// POSTs a check and returns (status, Retry-After seconds, body).
async fn check_raw(t: &TestApp, id: &str, code: &str) -> (u16, Option<u64>, Value) {
    let resp = t
        .http
        .post(t.url(&format!("/v1/verifications/{id}/check")))
        .bearer_auth(&t.token)
        .json(&json!({ "code": code }))
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let retry = resp
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    (status, retry, resp.json().await.unwrap_or(Value::Null))
}

/// Brute force across verifications: a user's wrong codes count over all
/// their verifications; after five, each try waits a doubling back-off; at
/// `wrong_checks_per_user` even the right code is refused (429) until the
/// window moves. Another user is not affected, and unknown ids are never
/// locked out (that would lock every user of the API key). Back-offs are long
/// (20 s base) so that no step depends on how fast the machine runs; history
/// older than a back-off is written through the store, dated in the past.
async fn brute_force_across_verifications(db: Db) {
    let mut s = base_settings(free_udp_port());
    s.limits.wrong_checks_per_user = "10/1h".parse().unwrap();
    s.limits.wrong_check_backoff = Duration::from_secs(20);
    s.limits.per_user = "100/1h".parse().unwrap();
    s.limits.per_number = "100/1h".parse().unwrap();
    let t = spawn_app(s, db, DialerMode::Manual).await;
    let v1 = t
        .start_verification(json!({ "to": "+31612000301", "user_id": "u-bf", "code": "111111" }))
        .await;
    for _ in 0..5 {
        assert_eq!(check_raw(&t, &v1.id, "999999").await.0, 200);
    }
    // A new verification does not reset the count: the sixth try waits.
    let v2 = t
        .start_verification(json!({ "to": "+31612000301", "user_id": "u-bf", "code": "222222" }))
        .await;
    let (status, wait, body) = check_raw(&t, &v2.id, "222222").await;
    assert_eq!(status, 429, "back-off after five: {body}");
    assert!(
        (15..=20).contains(&wait.unwrap_or(0)),
        "first back-off 20 s: {wait:?}"
    );
    assert_eq!(
        t.view(&v2.id).await.attempts_left,
        5,
        "a held-back check costs nothing"
    );

    // Another user with eight wrong codes ten minutes ago: the back-off has
    // run out, one more wrong check, then the next waits 20 s * 2^4 (capped
    // at 5 min).
    let store = &t.app.store;
    let ten_min_ago = otpdial::domain::now_ms() - 600_000;
    for _ in 0..8 {
        store
            .record_wrong_check("user:u-bf2", ten_min_ago)
            .await
            .unwrap();
    }
    let v3 = t
        .start_verification(json!({ "to": "+31612000303", "user_id": "u-bf2", "code": "333333" }))
        .await;
    assert_eq!(
        check_raw(&t, &v3.id, "999999").await.0,
        200,
        "ninth, allowed"
    );
    let (status, wait, _) = check_raw(&t, &v3.id, "333333").await;
    assert_eq!(status, 429);
    assert!(
        (290..=300).contains(&wait.unwrap_or(0)),
        "doubled and capped: {wait:?}"
    );

    // The tenth makes the limit: locked out, the right code too, until the
    // oldest wrong check leaves the hour (about 50 min from now).
    store
        .record_wrong_check("user:u-bf2", ten_min_ago)
        .await
        .unwrap();
    let (status, wait, _) = check_raw(&t, &v3.id, "333333").await;
    assert_eq!(status, 429);
    assert!(
        (2900..=3000).contains(&wait.unwrap_or(0)),
        "locked for the window: {wait:?}"
    );
    assert_eq!(t.view(&v3.id).await.status, VerificationStatus::Pending);
    let audited = store
        .audit_count("verification.check", &v3.id, Some("locked_out"))
        .await
        .unwrap();
    assert_eq!(audited, 1);

    // Someone else is unaffected.
    let other = t
        .start_verification(json!({ "to": "+31612000302", "user_id": "u-other", "code": "444444" }))
        .await;
    let (status, _, body) = check_raw(&t, &other.id, "444444").await;
    assert_eq!((status, body["valid"].clone()), (200, json!(true)));

    // Unknown ids: same answer each time, never held back.
    for _ in 0..12 {
        let (status, _, body) = check_raw(&t, "vf_01ZZZZZZZZZZZZZZZZZZZZZZZZ", "123456").await;
        assert_eq!((status, body["valid"].clone()), (200, json!(false)));
    }
}

crate::on_both_databases!(
    brute_force_across_verifications,
    registered_numbers,
    limits,
    toll_fraud,
    mobile_only_and_unknown_ids,
    cancel,
    concurrent_checks,
    webhooks,
    callback_url_to_internal_targets_is_refused,
    admin_routes
);
