//! Faults with real processes: `otpdial serve` killed with SIGKILL mid-queue
//! and mid-call, two instances sharing one PostgreSQL database, a peak far
//! above a trunk's capacity, trunk failover with the circuit breaker, and
//! SIGTERM mid-call. SIPp is the callee and counts what reached it.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use otpdial::domain::{CallStatus, VerificationStatus};
use serde_json::json;

use crate::callee::{BlackHole, SippUas};
use crate::helpers::{Db, ADMIN_TOKEN};
use crate::on_both_databases;
use crate::procs::{nl_mobile, ServeConfig, ServeProc};
use crate::tempgres::TempGres;

on_both_databases!(kill9_mid_queue_and_mid_call_then_restart);

/// Numbers the callee saw more than one INVITE transaction for (across all
/// calls): must stay empty, a call is never placed twice.
fn numbers_invited_twice(log: &crate::callee::CalleeLog) -> Vec<String> {
    let mut per_number: HashMap<&str, usize> = HashMap::new();
    for c in &log.calls {
        *per_number.entry(c.user.as_str()).or_default() += c.invites;
    }
    let mut twice: Vec<String> = per_number
        .into_iter()
        .filter(|(_, n)| *n > 1)
        .map(|(u, n)| format!("{u} x{n}"))
        .collect();
    twice.sort();
    twice
}

async fn kill9_mid_queue_and_mid_call_then_restart(db: Db) {
    // Calls ring 1.5 s and are answered; 4 at a time: when the gateway dies
    // some are done, some are up and most still wait in the queue.
    let callee = SippUas::answer_many(Duration::from_millis(1500)).await;
    let cfg = ServeConfig::on(db)
        .await
        .trunk("t", callee.port(), "max_concurrent_calls = 4")
        .merge_toml("[dialer]\nlease = \"4s\"\n[limits]\nglobal_calls_per_second = 0");
    let mut gw = ServeProc::start(cfg).await;
    let mut ids = Vec::new();
    for i in 0..20 {
        let v = gw
            .start_verification(json!({ "to": nl_mobile(1000 + i) }))
            .await;
        ids.push(v.id);
    }
    // Die with calls up: wait until the callee has answered some.
    callee
        .wait_calls(Duration::from_secs(20), |log| {
            log.calls.iter().filter(|c| c.answered()).count() >= 2
        })
        .await;
    gw.kill9();
    let at_kill = callee.calls();
    let invited_before = at_kill.calls.len();
    assert!(
        invited_before < 20,
        "the queue must not be empty at the kill"
    );

    let restarted = Instant::now();
    gw.restart().await;
    let views = gw.wait_calls_final(&ids, Duration::from_secs(60)).await;
    let took = restarted.elapsed();

    let log = callee.calls();
    assert!(
        numbers_invited_twice(&log).is_empty(),
        "numbers INVITEd twice: {:?}",
        numbers_invited_twice(&log)
    );
    let mut restarts = 0;
    for v in &views {
        match v.call.status {
            CallStatus::Completed => assert_eq!(v.status, VerificationStatus::Pending),
            CallStatus::Failed => {
                assert_eq!(
                    v.call.reason.map(|r| r.as_str()),
                    Some("gateway_restart"),
                    "{v:?}"
                );
                assert_eq!(v.status, VerificationStatus::Failed);
                restarts += 1;
            }
            other => panic!("unexpected end {other:?}: {v:?}"),
        }
    }
    assert!(restarts >= 1, "calls up at the kill end gateway_restart");
    assert_eq!(log.calls.len(), 20, "every number called exactly once");
    assert!(gw.panics().is_empty(), "{}", gw.log());
    eprintln!(
        "kill -9 ({db:?}): {invited_before} of 20 invited before the kill, {restarts} ended gateway_restart, all final {took:?} after the restart"
    );
}

/// Two gateways on one PostgreSQL database: 200 verifications started
/// through both APIs are each INVITEd exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_instances_on_one_postgres_call_each_number_once() {
    let callee = SippUas::answer_many(Duration::ZERO).await;
    let cfg = ServeConfig::on(Db::Postgres)
        .await
        .trunk("t", callee.port(), "max_concurrent_calls = 40")
        .merge_toml("[limits]\nglobal_calls_per_second = 0");
    let a = ServeProc::start(cfg.clone()).await;
    let b = ServeProc::start(cfg).await;
    let mut ids = Vec::new();
    for i in 0..200u32 {
        let gw = if i % 2 == 0 { &a } else { &b };
        let v = gw
            .start_verification(json!({ "to": nl_mobile(2000 + i) }))
            .await;
        ids.push(v.id);
    }
    let views = a.wait_calls_final(&ids, Duration::from_secs(120)).await;
    for v in &views {
        assert_eq!(v.call.status, CallStatus::Completed, "{v:?}");
        assert_eq!(v.call.attempts.len(), 1, "{v:?}");
    }
    let log = callee.calls();
    assert_eq!(log.calls.len(), 200);
    assert!(
        numbers_invited_twice(&log).is_empty(),
        "{:?}",
        numbers_invited_twice(&log)
    );
    // Both instances took part.
    let mut by_trunk_owner = 0;
    for gw in [&a, &b] {
        let (_, trunks) = gw.get_as(ADMIN_TOKEN, "/v1/trunks").await;
        let total = trunks["trunks"][0]["calls_total"].as_u64().unwrap_or(0);
        assert!(total > 0, "an instance placed no call: {trunks}");
        by_trunk_owner += total;
    }
    assert_eq!(by_trunk_owner, 200);
    assert!(a.panics().is_empty() && b.panics().is_empty());
}

/// 300 verifications at once through a trunk that takes 20 calls: every
/// one completes, none fails for capacity, and the callee never has more
/// than 20 calls at a time.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn peak_waits_in_the_queue_for_trunk_capacity() {
    let callee = SippUas::answer_many(Duration::from_millis(200)).await;
    let cfg = ServeConfig::new()
        .trunk("t", callee.port(), "max_concurrent_calls = 20")
        .merge_toml("[limits]\nglobal_calls_per_second = 0");
    let gw = ServeProc::start(cfg).await;
    let mut ids = Vec::new();
    for i in 0..300u32 {
        let v = gw
            .start_verification(json!({ "to": nl_mobile(3000 + i) }))
            .await;
        ids.push(v.id);
    }
    let views = gw.wait_calls_final(&ids, Duration::from_secs(150)).await;
    let failed: Vec<_> = views
        .iter()
        .filter(|v| v.call.status != CallStatus::Completed)
        .collect();
    assert!(
        failed.is_empty(),
        "{} not completed: {:?}",
        failed.len(),
        failed.first()
    );
    let log = callee.calls();
    assert_eq!(log.calls.len(), 300);
    assert!(
        log.max_in_progress <= 20,
        "callee saw {} calls at once",
        log.max_in_progress
    );
    assert!(
        log.max_in_progress >= 10,
        "the trunk was not used in parallel: {}",
        log.max_in_progress
    );
    assert!(numbers_invited_twice(&log).is_empty());
    eprintln!(
        "peak: 300 calls, at most {} at once at the callee",
        log.max_in_progress
    );
}

async fn trunk_view(gw: &ServeProc, name: &str) -> serde_json::Value {
    let (_, list) = gw.get_as(ADMIN_TOKEN, "/v1/trunks").await;
    list["trunks"]
        .as_array()
        .and_then(|l| l.iter().find(|t| t["name"] == name).cloned())
        .unwrap_or_else(|| panic!("no trunk {name}: {list}"))
}

async fn wait_breaker(gw: &ServeProc, name: &str, state: &str, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let t = trunk_view(gw, name).await;
        if t["breaker"] == state {
            return;
        }
        assert!(Instant::now() < deadline, "trunk {name} not {state}: {t}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The first trunk answers 503, then nothing at all: each call completes on
/// the second; after two failures the first is marked down (and skipped to
/// the end of the routes); when it answers OPTIONS again it is back up.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn failover_marks_a_failing_trunk_down_and_up_again() {
    let first_port = crate::helpers::free_udp_port();
    let mut first = SippUas::unavailable_on(first_port).await;
    let second = SippUas::answer_many(Duration::ZERO).await;
    let cfg = ServeConfig::new()
        .trunk(
            "first",
            first_port,
            "priority = 10\nbreaker_failures = 2\noptions_interval = \"5s\"\nbreaker_cooldown = \"10m\"",
        )
        .trunk("second", second.port(), "priority = 20");
    let gw = ServeProc::start(cfg).await;

    // 503 on the first trunk: failover, completed on the second.
    let v = gw
        .start_verification(json!({ "to": nl_mobile(4000) }))
        .await;
    let done = &gw.wait_calls_final(&[v.id], Duration::from_secs(30)).await[0];
    assert_eq!(done.call.status, CallStatus::Completed, "{done:?}");
    let a = &done.call.attempts;
    assert_eq!(a.len(), 2, "{a:?}");
    assert_eq!((a[0].trunk.as_str(), a[0].sip_code), ("first", Some(503)));
    assert_eq!(
        (a[1].trunk.as_str(), a[1].status.as_str()),
        ("second", "completed")
    );
    assert_eq!(trunk_view(&gw, "first").await["consecutive_failures"], 1);

    // Now the first trunk does not answer at all (Timer B, 32 s).
    first.stop();
    let hole = BlackHole::bind_on(first_port);
    let v = gw
        .start_verification(json!({ "to": nl_mobile(4001) }))
        .await;
    let done = &gw.wait_calls_final(&[v.id], Duration::from_secs(60)).await[0];
    assert_eq!(done.call.status, CallStatus::Completed, "{done:?}");
    let a = &done.call.attempts;
    assert_eq!(a.len(), 2, "{a:?}");
    assert_eq!(
        (a[0].trunk.as_str(), a[0].status.as_str()),
        ("first", "failed")
    );
    assert!(
        a[0].reason.as_deref().unwrap_or("").contains("timeout"),
        "{a:?}"
    );
    wait_breaker(&gw, "first", "open", Duration::from_secs(2)).await;
    let metrics = crate::helpers::metrics_text(&gw.http, &gw.url("/metrics")).await;
    assert!(
        metrics.contains("otpdial_trunk_down{trunk=\"first\"} 1"),
        "{metrics}"
    );

    // While it is down a call goes to the second trunk first.
    let v = gw
        .start_verification(json!({ "to": nl_mobile(4002) }))
        .await;
    let done = &gw.wait_calls_final(&[v.id], Duration::from_secs(30)).await[0];
    assert_eq!(done.call.attempts.len(), 1, "{done:?}");
    assert_eq!(done.call.attempts[0].trunk, "second");

    // It answers OPTIONS again: back up.
    drop(hole);
    let _back = SippUas::unavailable_on(first_port).await;
    wait_breaker(&gw, "first", "closed", Duration::from_secs(15)).await;
    assert!(gw.panics().is_empty());
}

/// SIGTERM while a call plays: the call finishes within `shutdown_grace`,
/// the process exits 0, and after a restart the verification shows the
/// completed call.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_mid_call_lets_it_finish_within_the_grace() {
    let callee = SippUas::answer_many(Duration::from_millis(300)).await;
    let cfg = ServeConfig::new()
        .trunk("t", callee.port(), "")
        // The built-in pack read twice: several seconds of audio.
        .merge_toml("[verification]\nrepeat = 2\n[dialer]\nshutdown_grace = \"30s\"")
        .builtin_prompts();
    let mut gw = ServeProc::start(cfg).await;
    let v = gw
        .start_verification(json!({ "to": nl_mobile(5000) }))
        .await;
    callee
        .wait_calls(Duration::from_secs(20), |log| {
            log.calls.iter().any(|c| c.answered())
        })
        .await;
    let t0 = Instant::now();
    gw.sigterm();
    let status = gw.wait_exit(Duration::from_secs(40)).await;
    assert!(status.success(), "exit {status:?}: {}", gw.log());
    let took = t0.elapsed();
    let log = callee.calls();
    assert_eq!(log.calls[0].byes, 1, "the call ended with our BYE");
    gw.restart().await;
    let v = gw.view(&v.id).await;
    assert_eq!(v.call.status, CallStatus::Completed, "{v:?}");
    assert!(v.call.times_played >= 1);
    eprintln!("SIGTERM mid-call: exited {took:?} later, call completed");
}

/// The database (a PostgreSQL server of the test's own) stops mid-run: the
/// API answers 503 within a second, calls in progress play to their end
/// and hang up, nothing panics; when the server is back the calls' ends are
/// recorded and new verifications go through.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn database_gone_mid_run_then_back() {
    let pg = TempGres::start_new();
    let url = pg.fresh_database().await;
    let callee = SippUas::answer_many(Duration::from_millis(300)).await;
    let cfg = ServeConfig::new()
        .database(&url)
        .trunk("t", callee.port(), "")
        // The built-in pack: calls of several seconds, long enough to outlive
        // the database.
        .builtin_prompts()
        .merge_toml("[database]\nacquire_timeout = \"500ms\"");
    let gw = ServeProc::start(cfg).await;
    let mut ids = Vec::new();
    for i in 0..3 {
        ids.push(
            gw.start_verification(json!({ "to": nl_mobile(6000 + i) }))
                .await
                .id,
        );
    }
    callee
        .wait_calls(Duration::from_secs(20), |log| {
            log.calls.iter().filter(|c| c.answered()).count() == 3
        })
        .await;

    let pg = tokio::task::spawn_blocking(move || {
        let mut pg = pg;
        pg.stop();
        pg
    })
    .await
    .unwrap();
    let t0 = Instant::now();
    let (status, body) = gw
        .try_request(
            reqwest::Method::POST,
            "/v1/verifications",
            crate::helpers::TOKEN,
            Some(&json!({ "to": nl_mobile(6010) })),
        )
        .await
        .expect("an HTTP answer while the database is down");
    let took = t0.elapsed();
    assert_eq!(status, reqwest::StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(took < Duration::from_secs(1), "503 took {took:?}");
    let (status, _) = gw
        .try_request(reqwest::Method::GET, "/readyz", "", None)
        .await
        .unwrap();
    assert_eq!(status, reqwest::StatusCode::SERVICE_UNAVAILABLE);
    let (status, _) = gw
        .try_request(reqwest::Method::GET, "/healthz", "", None)
        .await
        .unwrap();
    assert_eq!(status, reqwest::StatusCode::OK, "the process stays up");

    // The calls play to their end and hang up without the database.
    let log = callee
        .wait_calls(Duration::from_secs(40), |log| {
            log.calls.iter().filter(|c| c.byes == 1).count() == 3
        })
        .await;
    assert_eq!(log.calls.len(), 3);

    let pg = tokio::task::spawn_blocking(move || {
        let mut pg = pg;
        pg.start();
        pg
    })
    .await
    .unwrap();
    let views = gw.wait_calls_final(&ids, Duration::from_secs(30)).await;
    for v in &views {
        assert_eq!(v.call.status, CallStatus::Completed, "{v:?}");
    }
    let v = gw
        .start_verification(json!({ "to": nl_mobile(6011) }))
        .await;
    let done = &gw.wait_calls_final(&[v.id], Duration::from_secs(30)).await[0];
    assert_eq!(done.call.status, CallStatus::Completed, "{done:?}");
    assert!(gw.panics().is_empty(), "{}", gw.log());
    eprintln!("database gone: 503 after {took:?}; 3 calls completed without it");
    drop(pg);
}
