//! Retention (`[database] retention`, `otpdial purge`), on SQLite and PostgreSQL with
//! rows the real gateway wrote and the test then dates in the past:
//!
//! - `otpdial purge --older-than 1h` (while the gateway runs) deletes finished
//!   verifications with their calls, attempts and events, and routine audit rows; keeps
//!   a pending verification and a canceled one whose call is still dialling; keeps the
//!   audit rows that are evidence (refusal, wrong and unknown-id checks) with every
//!   number, user id and verification id in them hashed; a second run finds nothing;
//!   evidence older than `audit_retention` goes too.
//! - The background job, with the default 90 days, removes 4,000 verifications dated
//!   100 days back in batches while the API answers and a new call is placed and
//!   completed, each request within a bound.

use std::process::{Command, Output};
use std::time::{Duration, Instant};

use otpdial::domain::{CallStatus, VerificationStatus};
use reqwest::StatusCode;
use serde_json::json;
use sqlx::Row as _;

use crate::callee::{BlackHole, SippUas};
use crate::faults_old_db::{connect, shift_times};
use crate::helpers::Db;
use crate::procs::{ServeConfig, ServeProc};

const HOUR_MS: i64 = 3600 * 1000;
const DAY_MS: i64 = 24 * HOUR_MS;

fn purge(url: &str, older_than: &str) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_otpdial"));
    cmd.args(["purge", "--older-than", older_than]);
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("OTPDIAL_") {
            cmd.env_remove(k);
        }
    }
    cmd.env("OTPDIAL_DATABASE__URL", url)
        .env("NO_COLOR", "1")
        .output()
        .expect("run otpdial purge")
}

fn purged(out: &Output, what: &str) -> u64 {
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "purge: {}\n{stdout}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{what}: ")))
        .unwrap_or_else(|| panic!("no {what:?} line in:\n{stdout}"))
        .trim()
        .parse()
        .expect("a count")
}

async fn count(url: &str, sql: &str) -> i64 {
    let mut conn = connect(url).await;
    sqlx::query(sql)
        .fetch_one(&mut conn)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .get(0)
}

/// A gateway that refuses unregistered numbers and keeps verifications 24 h (so a
/// pending one dated 2 h back stays pending) and its retention job off, with two trunks: `answer` (SIPp) for
/// +31610…, `hole` (never answers: a call stays dialling for 32 s) for +31650….
async fn gateway(db: Db, answer: u16, hole: u16) -> ServeProc {
    let cfg = ServeConfig::on(db)
        .await
        .trunk("answer", answer, "prefixes = [\"+31610\"]")
        .trunk("hole", hole, "prefixes = [\"+31650\"]")
        .merge_toml("[verification]\nallow_unregistered_numbers = false\nttl = \"24h\"")
        // The gateway's own job off: only the `otpdial purge` runs of the test purge.
        .set("database.retention", "0s");
    ServeProc::start(cfg).await
}

async fn put_phones(gw: &ServeProc, user: &str, numbers: &[&str]) {
    let phones: Vec<_> = numbers
        .iter()
        .enumerate()
        .map(|(i, n)| json!({ "number": n, "primary": i == 0 }))
        .collect();
    let r = gw
        .http
        .put(gw.url(&format!("/v1/users/{user}/phones")))
        .bearer_auth(crate::helpers::TOKEN)
        .json(&json!({ "phones": phones }))
        .send()
        .await
        .expect("PUT phones");
    assert_eq!(r.status(), StatusCode::OK);
}

async fn check(gw: &ServeProc, id: &str, code: &str) -> serde_json::Value {
    let (status, r) = gw
        .post(
            &format!("/v1/verifications/{id}/check"),
            json!({ "code": code }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{r}");
    r
}

async fn purge_on_demand_keeps_what_is_live_and_hashes_evidence(db: Db) {
    let callee = SippUas::answer_many(Duration::from_millis(20)).await;
    let hole = BlackHole::bind();
    let gw = gateway(db, callee.port(), hole.port()).await;
    let url = gw.db_url().to_owned();
    put_phones(&gw, "u-ret-1", &["+31610000001", "+31610000002"]).await;
    put_phones(&gw, "u-ret-2", &["+31650000001"]).await;

    // Approved, failed by wrong checks, pending: each after its call completed.
    let approved = gw
        .start_verification(json!({ "to": "+31610000001", "code": "1234" }))
        .await;
    gw.wait_calls_final(std::slice::from_ref(&approved.id), Duration::from_secs(20))
        .await;
    assert_eq!(check(&gw, &approved.id, "1234").await["valid"], true);
    let failed = gw
        .start_verification(json!({ "to": "+31610000002", "code": "5678" }))
        .await;
    gw.wait_calls_final(std::slice::from_ref(&failed.id), Duration::from_secs(20))
        .await;
    for _ in 0..5 {
        assert_eq!(check(&gw, &failed.id, "0000").await["valid"], false);
    }
    let pending = gw
        .start_verification(json!({ "user_id": "u-ret-1", "code": "4321" }))
        .await;
    gw.wait_calls_final(std::slice::from_ref(&pending.id), Duration::from_secs(20))
        .await;
    // Evidence: a refused start (unregistered number) and a check of an unknown id.
    let (status, _) = gw
        .post(
            "/v1/verifications",
            json!({ "to": "+31612345678", "code": "1111" }),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    let (status, _) = gw
        .post(
            "/v1/verifications/vf_01JUNKNOWN0000000000000000/check",
            json!({ "code": "1111" }),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    // Canceled while its INVITE is unanswered: the call is still dialling.
    let dialling = gw
        .start_verification(json!({ "to": "+31650000001", "code": "9999" }))
        .await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while gw.view(&dialling.id).await.call.status != CallStatus::Dialing {
        assert!(std::time::Instant::now() < deadline, "never dialled");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (status, _) = gw
        .post(
            &format!("/v1/verifications/{}/cancel", dialling.id),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let v = gw.view(&dialling.id).await;
    assert_eq!(v.status, VerificationStatus::Canceled);
    assert!(!v.call.status.is_final(), "still dialling: {v:?}");

    // Everything two hours old; then purge rows older than one hour.
    shift_times(&url, db, -2 * HOUR_MS).await;
    let audit_before = count(&url, "SELECT COUNT(*) FROM audit_log").await;
    let out = purge(&url, "1h");
    assert_eq!(
        purged(&out, "verifications deleted"),
        2,
        "approved and failed"
    );
    assert_eq!(purged(&out, "calls deleted"), 2);
    assert!(purged(&out, "call attempts deleted") >= 2);
    assert!(purged(&out, "call events deleted") >= 8);
    // Evidence: 5 wrong checks, the refusal, the unknown id.
    assert_eq!(
        purged(&out, "audit rows kept with numbers and user ids hashed"),
        7
    );
    let deleted_audit = purged(&out, "audit rows deleted");
    assert_eq!(
        audit_before - i64::try_from(deleted_audit).unwrap(),
        count(&url, "SELECT COUNT(*) FROM audit_log").await
    );

    let (status, _) = gw.get(&format!("/v1/verifications/{}", approved.id)).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "approved one purged");
    let (status, _) = gw.get(&format!("/v1/verifications/{}", failed.id)).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "failed one purged");
    let v = gw.view(&pending.id).await;
    assert_eq!(v.status, VerificationStatus::Pending, "pending is kept");
    assert_eq!(v.call.status, CallStatus::Completed, "with its call");
    assert_eq!(check(&gw, &pending.id, "4321").await["valid"], true);
    let v = gw.view(&dialling.id).await;
    assert_eq!(
        v.status,
        VerificationStatus::Canceled,
        "call in progress: kept"
    );
    let orphans = count(
        &url,
        "SELECT COUNT(*) FROM call_attempts a WHERE NOT EXISTS \
         (SELECT 1 FROM calls c WHERE c.id = a.call_id)",
    )
    .await;
    assert_eq!(orphans, 0);

    // The kept audit rows name nobody: no number, user id or verification id.
    let mut conn = connect(&url).await;
    let rows = sqlx::query(
        "SELECT action, outcome, target, detail FROM audit_log WHERE pseudonymised_at IS NOT NULL",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap();
    assert_eq!(rows.len(), 7);
    for r in &rows {
        let target: Option<String> = r.get(2);
        let detail: Option<String> = r.get(3);
        let text = format!("{target:?} {detail:?}");
        assert!(
            target.as_deref().is_some_and(|t| t.starts_with("h:")),
            "{text}"
        );
        for leak in ["+316", "vf_", "u-ret"] {
            assert!(!text.contains(leak), "{leak} in a kept audit row: {text}");
        }
    }
    let wrong_targets: Vec<String> = rows
        .iter()
        .filter(|r| r.get::<String, _>(1) == "wrong")
        .map(|r| r.get::<String, _>(2))
        .collect();
    assert_eq!(wrong_targets.len(), 5);
    assert!(
        wrong_targets.iter().all(|t| *t == wrong_targets[0]),
        "one verification, one hash: {wrong_targets:?}"
    );
    // Nothing older than the cutoff is left un-handled.
    let cutoff = otpdial::domain::now_ms() - HOUR_MS;
    let left = count(
        &url,
        &format!("SELECT COUNT(*) FROM audit_log WHERE at < {cutoff} AND pseudonymised_at IS NULL"),
    )
    .await;
    assert_eq!(left, 0);

    // Again: nothing re-hashed.
    // (The canceled one goes once its call has ended: the hole never answers, so the
    // INVITE times out, 32 s after it left, or is cancelled on a provisional.)
    let again = purge(&url, "1h");
    let (status, _) = gw.get(&format!("/v1/verifications/{}", dialling.id)).await;
    let gone = u64::from(status == StatusCode::NOT_FOUND);
    // The pending one was approved above: finished now, it goes too.
    assert_eq!(purged(&again, "verifications deleted"), 1 + gone);
    assert_eq!(
        purged(&again, "audit rows deleted"),
        0,
        "the approval is not 1 h old"
    );
    assert_eq!(
        purged(&again, "audit rows kept with numbers and user ids hashed"),
        0
    );
    // Evidence goes too once older than audit_retention (default 365 days).
    sqlx::query("UPDATE audit_log SET at = at - $1 WHERE pseudonymised_at IS NOT NULL")
        .bind(400 * DAY_MS)
        .execute(&mut conn)
        .await
        .unwrap();
    let old = purge(&url, "1h");
    assert_eq!(purged(&old, "audit rows deleted"), 7);
    assert!(gw.panics().is_empty(), "{}", gw.log());
}

crate::on_both_databases!(purge_on_demand_keeps_what_is_live_and_hashes_evidence);

/// Old verifications written in bulk: `n` copies of a finished one, each with its
/// call, an attempt, three call events and two audit rows, dated `age_ms` back.
async fn insert_old_rows(url: &str, n: i64, age_ms: i64) {
    let at = otpdial::domain::now_ms() - age_ms;
    let series =
        format!("WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < {n})");
    let statements = [
        format!(
            "{series} INSERT INTO verifications (id, user_id, phone, locale, code_hash, status, \
             attempts_left, expires_at, created_at, updated_at, callback_url, api_key, \
             idempotency_key) SELECT 'vf_old_' || i, 'u-old-' || i, '+31611111111', 'en', \
             'ab', 'expired', 5, {at} + 600000 + i, {at} + i, {at} + i, NULL, 'auth-service', \
             NULL FROM s"
        ),
        format!(
            "{series} INSERT INTO calls (id, verification_id, status, times_played, \
             next_attempt_at, created_at, updated_at) SELECT 'call_old_' || i, 'vf_old_' || i, \
             'completed', 1, {at} + i, {at} + i, {at} + i FROM s"
        ),
        format!(
            "{series} INSERT INTO call_attempts (call_id, seq, number, trunk, status, \
             started_at, ended_at) SELECT 'call_old_' || i, 1, '+31611111111', 'answer', \
             'completed', {at} + i, {at} + i + 9000 FROM s"
        ),
        format!(
            "{series} INSERT INTO call_events (call_id, seq, status, at) \
             SELECT 'call_old_' || i, k.seq, k.status, {at} + i FROM s, \
             (SELECT 1 AS seq, 'queued' AS status UNION ALL SELECT 2, 'dialing' \
              UNION ALL SELECT 3, 'completed') k"
        ),
        format!(
            "{series} INSERT INTO audit_log (id, at, actor, action, target, outcome, detail) \
             SELECT 'au_old_' || i || '_' || k.n, {at} + i, 'auth-service', k.action, \
             'vf_old_' || i, k.outcome, NULL FROM s, \
             (SELECT 1 AS n, 'verification.start' AS action, 'created' AS outcome \
              UNION ALL SELECT 2, 'verification.check', 'wrong') k"
        ),
    ];
    let mut conn = connect(url).await;
    for sql in statements {
        sqlx::query(&sql)
            .execute(&mut conn)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }
}

async fn background_job_purges_in_batches_while_the_api_answers(db: Db) {
    const OLD: i64 = 4000;
    let callee = SippUas::answer_many(Duration::from_millis(20)).await;
    let mut gw =
        ServeProc::start(ServeConfig::on(db).await.trunk("answer", callee.port(), "")).await;
    let url = gw.db_url().to_owned();
    let live = gw
        .start_verification(json!({ "to": crate::procs::nl_mobile(1), "code": "2580" }))
        .await;
    gw.wait_calls_final(std::slice::from_ref(&live.id), Duration::from_secs(20))
        .await;
    // The job runs 5 s after a start: stop, add 100-day-old rows, start again.
    gw.sigterm();
    assert!(gw.wait_exit(Duration::from_secs(30)).await.success());
    insert_old_rows(&url, OLD, 100 * DAY_MS).await;
    // Old rows still to handle: verifications, and audit rows neither deleted nor
    // pseudonymised.
    let old_rows = "SELECT (SELECT COUNT(*) FROM verifications WHERE id LIKE 'vf_old_%') + \
                    (SELECT COUNT(*) FROM audit_log WHERE id LIKE 'au_old_%' \
                     AND pseudonymised_at IS NULL)";
    assert_eq!(count(&url, old_rows).await, 3 * OLD);
    gw.restart().await;

    let deadline = Instant::now() + Duration::from_secs(90);
    let (mut during, mut slowest, mut started) = (0u32, Duration::ZERO, Vec::new());
    let mut i = 0u32;
    loop {
        let remaining = count(&url, old_rows).await;
        if remaining == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{remaining} old rows left after 90 s\n{}",
            gw.log()
        );
        let took = Instant::now();
        if i % 5 == 0 {
            let v = gw
                .start_verification(
                    json!({ "to": crate::procs::nl_mobile(100 + i), "code": "2580" }),
                )
                .await;
            started.push(v.id);
        } else {
            assert_eq!(gw.view(&live.id).await.status, VerificationStatus::Pending);
        }
        let took = took.elapsed();
        if remaining < 3 * OLD {
            during += 1;
            slowest = slowest.max(took);
        }
        i += 1;
    }
    eprintln!("retention: {during} requests while the job ran, slowest {slowest:?}");
    assert!(during >= 3, "the API was used while the job ran: {during}");
    assert!(
        slowest < Duration::from_secs(2),
        "a request waited {slowest:?} behind the retention job"
    );
    // The dialer went on: calls started meanwhile were placed and completed.
    let done = gw.wait_calls_final(&started, Duration::from_secs(60)).await;
    assert!(
        done.iter().all(|v| v.call.status == CallStatus::Completed),
        "{done:?}"
    );
    for table in ["calls", "call_attempts", "call_events"] {
        let left = count(
            &url,
            &format!(
                "SELECT COUNT(*) FROM {table} WHERE {} LIKE 'call_old_%'",
                if table == "calls" { "id" } else { "call_id" }
            ),
        )
        .await;
        assert_eq!(left, 0, "{table}");
    }
    assert_eq!(
        count(
            &url,
            "SELECT COUNT(*) FROM audit_log WHERE id LIKE 'au_old_%'"
        )
        .await,
        OLD,
        "the wrong checks are kept as evidence, the starts deleted"
    );
    assert_eq!(
        count(
            &url,
            "SELECT COUNT(*) FROM audit_log WHERE id LIKE 'au_old_%' AND target LIKE 'vf_%'"
        )
        .await,
        0
    );
    let metrics = crate::helpers::metrics_text(&gw.http, &gw.url("/metrics")).await;
    let deleted = crate::helpers::metric_value(
        &metrics,
        "otpdial_retention_rows_total{table=\"verifications\",action=\"deleted\"}",
    );
    assert_eq!(deleted, u64::try_from(OLD).unwrap(), "{metrics}");
    assert_eq!(gw.view(&live.id).await.status, VerificationStatus::Pending);
}

crate::on_both_databases!(background_job_purges_in_batches_while_the_api_answers);
