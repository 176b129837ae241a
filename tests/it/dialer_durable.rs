//! The durable dialer inside one process: take-over of calls whose instance
//! died, calls that expire in the queue, every early exit of a call task
//! (error, panic, dropped future, shutdown) hanging up and freeing its slot,
//! and retries to the user's next number. Real SIPp callees, real SQLite and
//! PostgreSQL.

use std::time::{Duration, Instant};

use otpdial::app::DialerMode;
use otpdial::dialer::Fault;
use otpdial::domain::{self, CallStatus, VerificationStatus};
use otpdial::store::Recovered;
use serde_json::json;

use crate::helpers::{base_settings, free_udp_port, spawn_app, spawn_app_on, Db, Sipp, TestApp};
use crate::on_both_databases;

on_both_databases!(
    abandoned_calls_are_taken_over_by_one_rule,
    queued_call_that_expires_fails_expired
);

async fn call_id_of(t: &TestApp, verification: &str) -> String {
    t.app
        .store
        .get_call_of(verification)
        .await
        .unwrap()
        .expect("call row")
        .id
}

/// A dead instance left three claimed calls: one dialled (an attempt is
/// open), one claimed but never dialled, one whose lease is still running.
async fn abandoned_calls_are_taken_over_by_one_rule(db: Db) {
    let t = spawn_app(base_settings(free_udp_port()), db, DialerMode::Manual).await;
    let mut ids = Vec::new();
    for n in ["+31612000001", "+31612000002", "+31612000003"] {
        ids.push(t.start_verification(json!({ "to": n })).await.id);
    }
    let store = &t.app.store;
    let now = domain::now_ms();
    let dialled = store
        .claim_next_call("dead-instance", now, now - 1, None)
        .await
        .unwrap()
        .expect("first queued call");
    store
        .start_attempt(&dialled.call_id, &dialled.phone, "trunk-a", now)
        .await
        .unwrap();
    let undialled = store
        .claim_next_call("dead-instance", now, now - 1, None)
        .await
        .unwrap()
        .expect("second queued call");
    let alive = store
        .claim_next_call("live-instance", now, now + 60_000, None)
        .await
        .unwrap()
        .expect("third queued call");
    assert_eq!(dialled.verification_id, ids[0]);
    assert_eq!(undialled.verification_id, ids[1]);
    assert_eq!(alive.verification_id, ids[2]);

    let mut done = t.app.dialer.recover_once().await;
    done.sort_by_key(|r| format!("{r:?}"));
    assert_eq!(
        done,
        vec![
            Recovered::Failed {
                call_id: dialled.call_id.clone()
            },
            Recovered::Requeued {
                call_id: undialled.call_id.clone()
            },
        ]
    );

    // The dialled one is never dialled again: failed, gateway_restart.
    let v = t.view(&ids[0]).await;
    assert_eq!(v.status, VerificationStatus::Failed);
    assert_eq!(v.call.status, CallStatus::Failed);
    assert_eq!(v.call.reason.map(|r| r.as_str()), Some("gateway_restart"));
    assert_eq!(v.call.attempts.len(), 1);
    assert_eq!(
        v.call.attempts[0].reason.as_deref(),
        Some("gateway_restart")
    );

    // The undialled one is queued and placed normally by the next claim.
    let v = t.view(&ids[1]).await;
    assert_eq!(v.status, VerificationStatus::Pending);
    assert_eq!(v.call.status, CallStatus::Queued);
    let again = store
        .claim_next_call("new-instance", now, now + 60_000, None)
        .await
        .unwrap()
        .expect("requeued call is claimable");
    assert_eq!(again.call_id, undialled.call_id);
    assert_eq!(again.round, 1, "the lost claim does not count as a round");

    // A live lease is left alone, and so are a second pass's findings.
    assert_eq!(t.view(&ids[2]).await.call.status, CallStatus::Dialing);
    assert!(t.app.dialer.recover_once().await.is_empty());
}

async fn queued_call_that_expires_fails_expired(db: Db) {
    let t = spawn_app(base_settings(free_udp_port()), db, DialerMode::Manual).await;
    let v = t.start_verification(json!({ "to": "+31612000004" })).await;
    // Past any allowed ttl (at most 24 h).
    let later = domain::now_ms() + 25 * 3600 * 1000;
    let expired = t.app.store.expire_due(later).await.unwrap();
    assert_eq!(expired, vec![v.id.clone()]);
    let v = t.view(&v.id).await;
    assert_eq!(v.status, VerificationStatus::Expired);
    assert_eq!(v.call.status, CallStatus::Failed);
    assert_eq!(v.call.reason.map(|r| r.as_str()), Some("expired"));
    assert!(v.call.attempts.is_empty(), "never dialled");
    let events = t
        .app
        .store
        .call_events(&call_id_of(&t, &v.id).await)
        .await
        .unwrap();
    assert_eq!(events.last(), Some(&CallStatus::Failed));
}

/// Waits until no call holds a trunk slot.
async fn wait_slots_free(t: &TestApp, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let active: u32 = t.app.trunks.snapshot().iter().map(|s| s.active_calls).sum();
        if active == 0 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{active} trunk slot(s) still held"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A call task that errors, panics or drops the call right after the answer:
/// the callee still gets a BYE (SIPp's scenario fails without one), the
/// verification ends failed with `internal_error`, the trunk's only slot
/// comes back, and the next call goes through it.
async fn early_exit_hangs_up_and_frees_the_slot(fault: Fault) {
    let port = free_udp_port();
    let mut s = base_settings(port);
    s.trunks[0].max_concurrent_calls = 1;
    s.verification.repeat = 3;
    let rtp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let rtp_port = rtp.local_addr().unwrap().port().to_string();
    let sipp = Sipp::spawn_uas(
        "uas_answer.xml",
        &[("rtp_port", rtp_port.clone())],
        &[],
        port,
        "127.0.0.1",
    );
    let t = spawn_app(s, Db::Sqlite, DialerMode::Background).await;
    t.app.dialer.inject_fault(fault);

    let v = t.start_verification(json!({ "to": "+31612000005" })).await;
    let done = t.wait_call_final(&v.id, Duration::from_secs(30)).await;
    sipp.finish(Duration::from_secs(15))
        .await
        .unwrap_or_else(|e| panic!("{fault:?}: the callee got no BYE: {e}"));
    assert_eq!(done.call.status, CallStatus::Failed, "{fault:?}: {done:?}");
    if fault != Fault::Drop {
        assert_eq!(
            done.call.reason.map(|r| r.as_str()),
            Some("internal_error"),
            "{fault:?}"
        );
    }
    assert_eq!(t.view(&v.id).await.status, VerificationStatus::Failed);
    wait_slots_free(&t, Duration::from_secs(5)).await;

    // The freed slot carries the next call to its end.
    let sipp = Sipp::spawn_uas(
        "uas_answer.xml",
        &[("rtp_port", rtp_port)],
        &[],
        port,
        "127.0.0.1",
    );
    let v = t.start_verification(json!({ "to": "+31612000006" })).await;
    let done = t.wait_call_final(&v.id, Duration::from_secs(60)).await;
    assert_eq!(
        done.call.status,
        CallStatus::Completed,
        "{fault:?}: {done:?}"
    );
    sipp.finish(Duration::from_secs(10))
        .await
        .expect("second call");
    drop(rtp);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn task_error_mid_call_hangs_up() {
    early_exit_hangs_up_and_frees_the_slot(Fault::Error).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn task_panic_mid_call_hangs_up() {
    early_exit_hangs_up_and_frees_the_slot(Fault::Panic).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dropped_call_future_hangs_up() {
    early_exit_hangs_up_and_frees_the_slot(Fault::Drop).await;
}

/// Shutdown with a short grace: the call outlives it, is hung up with a
/// BYE, and its verification is terminal (failed, reason `shutdown`) in
/// the database that the next start reads.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn shutdown_hangs_up_after_grace_and_settles_the_call() {
    let port = free_udp_port();
    let mut s = base_settings(port);
    s.verification.repeat = 5; // ~20 s of audio: it cannot finish in the grace
    s.dialer.shutdown_grace = Duration::from_secs(1);
    let rtp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let rtp_port = rtp.local_addr().unwrap().port().to_string();
    let sipp = Sipp::spawn_uas(
        "uas_answer.xml",
        &[("rtp_port", rtp_port)],
        &[],
        port,
        "127.0.0.1",
    );
    let t = spawn_app(s.clone(), Db::Sqlite, DialerMode::Background).await;
    let v = t.start_verification(json!({ "to": "+31612000007" })).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while t.view(&v.id).await.call.status != CallStatus::Answered {
        assert!(Instant::now() < deadline, "call not answered");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let stopping = Instant::now();
    let (url, dir) = t.stop_keep_db().await;
    let took = stopping.elapsed();
    assert!(took < Duration::from_secs(8), "stop took {took:?}");
    sipp.finish(Duration::from_secs(10))
        .await
        .expect("the callee got a BYE");

    let t = spawn_app_on(s, url, dir, DialerMode::Manual).await;
    let v = t.view(&v.id).await;
    assert_eq!(v.call.status, CallStatus::Failed, "{v:?}");
    assert_eq!(v.call.reason.map(|r| r.as_str()), Some("shutdown"));
    assert_eq!(v.status, VerificationStatus::Failed);
}

/// Busy on the primary number, then the retry rings the user's second
/// number and completes: two rounds, two attempts, two numbers.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn busy_round_is_retried_on_the_next_number() {
    let port = free_udp_port();
    let mut s = base_settings(port);
    s.verification.allow_unregistered_numbers = false;
    s.dialer.max_attempts = 2;
    s.dialer.retry_delay = Duration::from_secs(2);
    let busy = Sipp::spawn_uas("uas_busy.xml", &[], &[], port, "127.0.0.1");
    let t = spawn_app(s, Db::Sqlite, DialerMode::Background).await;
    let resp = t
        .http
        .put(t.url("/v1/users/u-retry/phones"))
        .bearer_auth(&t.token)
        .json(&json!({ "phones": [
            { "number": "+31612000010", "primary": true },
            { "number": "+31612000011" }
        ]}))
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success(), "{:?}", resp.text().await);
    let v = t.start_verification(json!({ "user_id": "u-retry" })).await;
    busy.finish(Duration::from_secs(20))
        .await
        .expect("busy round");

    // Between the rounds the call is queued again, not final.
    let mid = t.view(&v.id).await;
    assert_eq!(mid.status, VerificationStatus::Pending, "{mid:?}");
    let rtp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let rtp_port = rtp.local_addr().unwrap().port().to_string();
    let answer = Sipp::spawn_uas(
        "uas_answer.xml",
        &[("rtp_port", rtp_port)],
        &[],
        port,
        "127.0.0.1",
    );
    let done = t.wait_call_final(&v.id, Duration::from_secs(60)).await;
    answer
        .finish(Duration::from_secs(10))
        .await
        .expect("second round");
    assert_eq!(done.call.status, CallStatus::Completed, "{done:?}");
    let a = &done.call.attempts;
    assert_eq!(a.len(), 2, "{a:?}");
    assert_eq!(
        (a[0].status.as_str(), a[0].to.as_str()),
        ("busy", "+316******10")
    );
    assert_eq!(
        (a[1].status.as_str(), a[1].to.as_str()),
        ("completed", "+316******11")
    );
    drop(rtp);
}
