//! Rolling upgrade (issue 20): two `otpdial serve` processes on one PostgreSQL
//! database and one SIPp callee; verifications are started through both APIs while
//! instance A gets SIGTERM, drains, and starts again from the binary (the "newer
//! build"), then B does the same. A poller asks both instances' `/healthz` and `/readyz`
//! every 50 ms throughout, as a load balancer would.
//!
//! Observed and asserted: every verification ends approved (its call completed, the
//! code checked through one of the APIs); each number was INVITEd once at the callee
//! and each call has one attempt in the database; at every sample at least one
//! instance answered `/readyz` 200; each stopping instance answered `/readyz` 503
//! `draining` while its calls finished (its API still up) before it exited.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use otpdial::domain::{CallStatus, VerificationStatus};
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::callee::SippUas;
use crate::helpers::{metric_value, Db, TOKEN};
use crate::procs::{nl_mobile, ServeConfig, ServeProc};

/// Verifications started over the whole rollout.
const N: u32 = 100;
/// One start every this long, alternating between the instances: the starts span
/// both restarts (100 x 150 ms = 15 s).
const START_EVERY: Duration = Duration::from_millis(150);
/// The callee rings this long before it answers: with the fast test prompts a call
/// lasts about 1.2 s, so each instance has calls in progress when it is stopped.
const RING: Duration = Duration::from_millis(1000);
const CODE: &str = "4812";
/// First number used (distinct numbers: the callee counts INVITEs per number).
const FIRST_NUMBER: u32 = 20_000;

/// What the poller saw of one instance at one moment.
#[derive(Debug, Clone)]
struct Probe {
    /// `/healthz` status; `None`: no HTTP answer (process down or not listening).
    health: Option<u16>,
    /// `/readyz` status and body; `None`: no HTTP answer.
    ready: Option<(u16, String)>,
}

impl Probe {
    fn ready(&self) -> bool {
        matches!(self.ready, Some((200, _)))
    }

    /// Answered `/readyz` with 503 naming the drain: up, but asking not to be sent work.
    fn draining(&self) -> bool {
        matches!(&self.ready, Some((503, body)) if body.contains("draining"))
    }
}

#[derive(Debug, Clone)]
struct Sample {
    at: Instant,
    a: Probe,
    b: Probe,
}

async fn probe(http: &reqwest::Client, base: &str) -> Probe {
    let get = |path: &'static str| {
        http.get(format!("{base}{path}"))
            .timeout(Duration::from_millis(1000))
            .send()
    };
    let (health, ready) = tokio::join!(get("/healthz"), get("/readyz"));
    let health = health.ok().map(|r| r.status().as_u16());
    let ready = match ready {
        Ok(r) => Some((r.status().as_u16(), r.text().await.unwrap_or_default())),
        Err(_) => None,
    };
    Probe { health, ready }
}

/// Samples both instances every 50 ms until `stop` is set.
fn spawn_poller(
    a: String,
    b: String,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<Vec<Sample>> {
    tokio::spawn(async move {
        let http = reqwest::Client::new();
        let mut samples = Vec::new();
        let mut tick = tokio::time::interval(Duration::from_millis(50));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        while !stop.load(Ordering::Relaxed) {
            tick.tick().await;
            let at = Instant::now();
            let (pa, pb) = tokio::join!(probe(&http, &a), probe(&http, &b));
            samples.push(Sample { at, a: pa, b: pb });
        }
        samples
    })
}

/// One started verification: its id, number and the instance whose API took it.
#[derive(Debug, Clone)]
struct Started {
    id: String,
    number: String,
    via: usize,
}

/// `POST /v1/verifications` on `base`; the id, or why not (no answer, not 201).
async fn try_start(http: &reqwest::Client, base: &str, number: &str) -> Result<String, String> {
    let resp = http
        .post(format!("{base}/v1/verifications"))
        .bearer_auth(TOKEN)
        .json(&json!({ "to": number, "code": CODE }))
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .map_err(|e| format!("no answer: {e}"))?;
    let status = resp.status();
    let body: Value = resp.json().await.unwrap_or(Value::Null);
    match body["id"].as_str() {
        Some(id) if status == StatusCode::CREATED => Ok(id.to_owned()),
        _ => Err(format!("{status}: {body}")),
    }
}

/// Starts [`N`] verifications, one every [`START_EVERY`], alternating between the
/// instances; when the chosen one does not take it (stopped, restarting), the other.
fn spawn_feeder(bases: [String; 2]) -> tokio::task::JoinHandle<Vec<Started>> {
    tokio::spawn(async move {
        let http = reqwest::Client::new();
        let mut started = Vec::new();
        let mut tick = tokio::time::interval(START_EVERY);
        for i in 0..N {
            tick.tick().await;
            let number = nl_mobile(FIRST_NUMBER + i);
            let first = (i % 2) as usize;
            let deadline = Instant::now() + Duration::from_secs(20);
            let mut errors = Vec::new();
            'retry: loop {
                for via in [first, 1 - first] {
                    match try_start(&http, &bases[via], &number).await {
                        Ok(id) => {
                            started.push(Started { id, number, via });
                            break 'retry;
                        }
                        Err(e) => errors.push(format!("{}: {e}", ["A", "B"][via])),
                    }
                }
                assert!(
                    Instant::now() < deadline,
                    "no instance started verification {i}: {errors:?}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        started
    })
}

/// Calls in progress on `gw` (its `/metrics`, trunk `carrier`).
async fn active_calls(gw: &ServeProc) -> u64 {
    match gw.http.get(gw.url("/metrics")).send().await {
        Ok(r) => metric_value(
            &r.text().await.unwrap_or_default(),
            "otpdial_active_calls{trunk=\"carrier\"}",
        ),
        Err(_) => 0,
    }
}

/// Waits until `gw` has at least one call in progress, so that its stop has calls to
/// drain.
async fn wait_busy(gw: &ServeProc, name: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while active_calls(gw).await == 0 {
        assert!(
            Instant::now() < deadline,
            "{name} never had a call in progress\n{}",
            gw.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Polls `/readyz` until it answers 200.
async fn wait_ready(gw: &ServeProc, name: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let r = gw.http.get(gw.url("/readyz")).send().await;
        if r.is_ok_and(|r| r.status() == StatusCode::OK) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{name}: /readyz not 200 after restart\n{}",
            gw.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// When one instance was stopped: SIGTERM sent, process exited, ready again.
#[derive(Debug, Clone, Copy)]
struct Stop {
    term: Instant,
    exited: Instant,
    ready: Instant,
}

/// SIGTERM while it has calls in progress, wait for the graceful exit, start it again
/// from the same binary and wait until it is ready.
async fn roll(gw: &mut ServeProc, name: &str) -> Stop {
    wait_busy(gw, name).await;
    let term = Instant::now();
    gw.sigterm();
    let status = gw.wait_exit(Duration::from_secs(40)).await;
    let exited = Instant::now();
    assert!(
        status.success(),
        "{name}: graceful exit, got {status}\n{}",
        gw.log()
    );
    gw.restart().await;
    wait_ready(gw, name).await;
    Stop {
        term,
        exited,
        ready: Instant::now(),
    }
}

/// The poller's record: at least one instance ready at every sample; the stopped one
/// seen draining (up, `/readyz` 503) between its SIGTERM and its exit.
fn check_samples(samples: &[Sample], stops: &[(&str, Stop); 2]) {
    assert!(samples.len() > 100, "the poller sampled: {}", samples.len());
    let none_ready: Vec<&Sample> = samples
        .iter()
        .filter(|s| !s.a.ready() && !s.b.ready())
        .collect();
    assert!(
        none_ready.is_empty(),
        "{} of {} samples had no instance ready, first: {:?}",
        none_ready.len(),
        samples.len(),
        none_ready.first()
    );
    for (i, (name, stop)) in stops.iter().enumerate() {
        let of = |s: &Sample| if i == 0 { s.a.clone() } else { s.b.clone() };
        let during: Vec<Probe> = samples
            .iter()
            .filter(|s| s.at >= stop.term && s.at < stop.exited)
            .map(of)
            .collect();
        let draining = during.iter().filter(|p| p.draining()).count();
        let down = samples
            .iter()
            .filter(|s| s.at >= stop.exited && s.at < stop.ready)
            .filter(|s| of(s).health.is_none())
            .count();
        println!(
            "{name}: SIGTERM -> exit {:?} ({} samples, {draining} answered /readyz 503 draining), \
             exit -> ready {:?} ({down} samples without an answer)",
            stop.exited - stop.term,
            during.len(),
            stop.ready - stop.exited
        );
        assert!(draining >= 1, "{name} was never seen draining: {during:?}");
        assert!(
            during
                .iter()
                .all(|p| p.health == Some(200) || p.health.is_none()),
            "{name}: /healthz while draining: {during:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rolling_upgrade_of_two_instances_on_postgresql() {
    let callee = SippUas::answer_many(RING).await;
    let cfg = ServeConfig::on(Db::Postgres)
        .await
        .trunk("carrier", callee.port(), "")
        .merge_toml("[dialer]\nshutdown_grace = \"30s\"");
    let mut a = ServeProc::start(cfg.clone()).await;
    let mut b = ServeProc::start(cfg).await;
    assert_eq!(a.db_url(), b.db_url(), "one database");
    wait_ready(&a, "A").await;
    wait_ready(&b, "B").await;

    let stop = Arc::new(AtomicBool::new(false));
    let poller = spawn_poller(a.base_url(), b.base_url(), stop.clone());
    let begun = Instant::now();
    let feeder = spawn_feeder([a.base_url(), b.base_url()]);
    let stop_a = roll(&mut a, "A").await;
    let stop_b = roll(&mut b, "B").await;
    let started = feeder.await.expect("feeder");
    assert_eq!(started.len(), N as usize);
    let ids: Vec<String> = started.iter().map(|s| s.id.clone()).collect();
    let done = a.wait_calls_final(&ids, Duration::from_secs(60)).await;
    stop.store(true, Ordering::Relaxed);
    let samples = poller.await.expect("poller");
    println!(
        "{N} verifications in {:?}; started via A {}, via B {}; {} samples",
        begun.elapsed(),
        started.iter().filter(|s| s.via == 0).count(),
        started.iter().filter(|s| s.via == 1).count(),
        samples.len()
    );
    check_samples(&samples, &[("A", stop_a), ("B", stop_b)]);
    assert!(started.iter().any(|s| s.via == 0) && started.iter().any(|s| s.via == 1));

    for v in &done {
        assert_eq!(v.call.status, CallStatus::Completed, "{v:?}");
        assert_eq!(
            v.call.attempts.len(),
            1,
            "one attempt in the database: {v:?}"
        );
    }
    let seen = callee.calls();
    assert_eq!(seen.calls.len(), N as usize, "{seen:#?}");
    assert!(
        seen.invited_twice().is_empty(),
        "{:?}",
        seen.invited_twice()
    );
    for s in &started {
        assert_eq!(seen.invites_per_user().get(&s.number), Some(&1), "{s:?}");
    }
    assert!(seen.calls.iter().all(|c| c.invites == 1 && c.byes == 1));

    // Terminal: each code checked through the other API than the one that started it.
    for s in &started {
        let gw = if s.via == 0 { &b } else { &a };
        let (status, body) = gw
            .post(
                &format!("/v1/verifications/{}/check", s.id),
                json!({ "code": CODE }),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{s:?}: {body}");
        assert_eq!(body["valid"], true, "{s:?}: {body}");
    }
    for s in &started {
        let v = a.view(&s.id).await;
        assert_eq!(v.status, VerificationStatus::Approved, "{v:?}");
    }
    for (name, gw) in [("A", &a), ("B", &b)] {
        assert!(gw.panics().is_empty(), "{name}\n{}", gw.log());
    }
    println!(
        "callee: {} calls, at most {} up at once",
        seen.calls.len(),
        seen.max_up
    );
}
