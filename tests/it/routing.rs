//! Calling by country (issue 18, SPEC §7), against the `otpdial serve` binary as a
//! child process:
//! - the language by country: `[verification] locale_by_prefix`, a registered
//!   number's `locale`, the request's `locale`, heard by the built-in test phone's
//!   recogniser;
//! - caller IDs by destination: `[[caller_ids]]` pools in rotation, counted in the
//!   `From` of the INVITEs at a SIPp callee, and a caller ID the callee never answers
//!   rested;
//! - a trunk's `max_concurrent_calls` held by two instances on one PostgreSQL,
//!   counted at the callee (INVITE received to BYE received);
//! - `routing = "quality"`: the trunk that answers more gets the calls; at equal
//!   rates the cheaper one.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use otpdial::domain::CallStatus;
use otpdial::media::PromptLibrary;
use otpdial::testphone::{AnswerMode, TestPhone, TestPhoneConfig};
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::callee::SippUas;
use crate::helpers::{admin_page, metric_value, metrics_text, Db, ADMIN_TOKEN, TOKEN};
use crate::procs::{nl_mobile, ServeConfig, ServeProc};

/// Starts a verification and returns the pack the phone heard (by the recogniser) and
/// the `locale` the API answered with.
async fn heard_locale(gw: &ServeProc, phone: &mut TestPhone, body: Value) -> (String, String) {
    let v = gw.start_verification(body.clone()).await;
    let heard = tokio::time::timeout(Duration::from_secs(90), phone.next_call())
        .await
        .unwrap_or_else(|_| panic!("no call for {body} within 90 s\n{}", gw.log()))
        .expect("phone running");
    assert!(
        heard.code().is_some(),
        "{body}: the code was read: {:?}",
        heard.phrases
    );
    let locale = heard
        .locale
        .unwrap_or_else(|| panic!("{body}: no pack recognised in {:?}", heard.phrases));
    (locale, v.locale)
}

async fn put_phones(gw: &ServeProc, user: &str, phones: Value) -> (StatusCode, Value) {
    gw.try_request(
        reqwest::Method::PUT,
        &format!("/v1/users/{user}/phones"),
        TOKEN,
        Some(&json!({ "phones": phones })),
    )
    .await
    .expect("PUT phones answered")
}

/// Request > registered number > country (`locale_by_prefix`) > `default_locale`,
/// each checked on the audio the phone received (the built-in `en` and `nl` packs).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_language_follows_request_then_number_then_country() {
    let mut phone = TestPhone::start(TestPhoneConfig {
        bind: "127.0.0.1:0".parse().unwrap(),
        answer: AnswerMode::Answer {
            ring: Duration::from_millis(50),
        },
        library: Arc::new(PromptLibrary::builtin()),
    })
    .await
    .unwrap();
    let cfg = ServeConfig::new()
        .builtin_prompts()
        .trunk("carrier", phone.sip_addr().port(), "")
        .merge_toml(
            "[verification]\ndefault_locale = \"en\"\nlocale_by_prefix = { \"+31\" = \"nl\", \"+3161\" = \"en\" }\n",
        );
    let gw = ServeProc::start(cfg).await;

    // A registered number's locale must be an installed pack.
    let (status, body) = put_phones(
        &gw,
        "u-fr",
        json!([{ "number": "+31612345601", "primary": true, "locale": "fr" }]),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert!(body.to_string().contains("phones[0].locale"), "{body}");
    let (status, body) = put_phones(
        &gw,
        "u-en",
        json!([{ "number": "+31612345602", "primary": true, "locale": "en" }]),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["phones"][0]["locale"], "en", "{body}");

    let cases = [
        // The country: +31 is nl (the default is en).
        (json!({ "to": "+31201234567", "code": "1234" }), "nl"),
        // The longest prefix: +3161 is en.
        (json!({ "to": "+31612345603", "code": "2345" }), "en"),
        // The registered number's locale beats its country.
        (json!({ "user_id": "u-en", "code": "3456" }), "en"),
        // The request beats the registered number...
        (
            json!({ "user_id": "u-en", "code": "4567", "locale": "nl" }),
            "nl",
        ),
        // ...and the country.
        (
            json!({ "to": "+31201234568", "code": "5678", "locale": "en" }),
            "en",
        ),
        // No rule for +32: the default.
        (json!({ "to": "+32470123456", "code": "6789" }), "en"),
    ];
    for (body, want) in cases {
        let (heard, answered) = heard_locale(&gw, &mut phone, body.clone()).await;
        assert_eq!(heard, want, "{body}: the phone heard the {heard} pack");
        assert_eq!(answered, want, "{body}: the API said {answered}");
    }
}

/// A `locale_by_prefix` entry naming a pack that is not installed stops start-up,
/// naming the key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_locale_by_prefix_without_a_pack_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = ServeConfig::new()
        .merge_toml("[verification]\nlocale_by_prefix = { \"+49\" = \"de\" }\n")
        .set("http.listen", "127.0.0.1:0")
        .set("sip.listen", "127.0.0.1:0")
        .set(
            "database.url",
            format!("sqlite://{}", dir.path().join("x.db").display()),
        );
    let path = dir.path().join("otpdial.toml");
    std::fs::write(&path, cfg.to_toml()).unwrap();
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_otpdial"))
        .arg("serve")
        .arg("--config")
        .arg(&path)
        .env_remove("OTPDIAL_DATABASE__URL")
        .output()
        .await
        .unwrap();
    assert!(!out.status.success(), "serve must refuse to start");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("verification.locale_by_prefix.\"+49\"") && stderr.contains("\"de\""),
        "{stderr}"
    );
}

// ---- caller IDs -------------------------------------------------------------------

/// One INVITE as a SIPp callee logged it: the number dialled and the caller ID shown.
#[derive(Debug, Clone)]
struct Invite {
    to: String,
    from: String,
}

/// The user part of the first `sip:` URI in `text`.
fn sip_user(text: &str) -> String {
    let after = text.split_once("sip:").map_or("", |(_, a)| a);
    after.split(['@', ';', '>']).next().unwrap_or("").to_owned()
}

/// The INVITEs (first of each Call-ID, retransmissions skipped) in SIPp's
/// `-trace_msg` log, in the order they arrived.
fn invites(log: &str) -> Vec<Invite> {
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for entry in log.split("----------------------------------------------- ") {
        let Some((head, body)) = entry.split_once("\n\n") else {
            continue;
        };
        if !head.contains("message received") || !body.starts_with("INVITE ") {
            continue;
        }
        let header = |name: &str| {
            body.lines()
                .find(|l| {
                    l.split_once(':')
                        .is_some_and(|(n, _)| n.trim().eq_ignore_ascii_case(name))
                })
                .map(|l| l.split_once(':').map_or("", |(_, v)| v).trim().to_owned())
        };
        let Some(call_id) = header("Call-ID") else {
            continue;
        };
        if !seen.insert(call_id) {
            continue;
        }
        out.push(Invite {
            to: sip_user(body.lines().next().unwrap_or("")),
            from: sip_user(&header("From").unwrap_or_default()),
        });
    }
    out
}

fn counts<'a>(list: impl Iterator<Item = &'a str>) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for x in list {
        *out.entry(x.to_owned()).or_insert(0) += 1;
    }
    out
}

/// Places a verification to each number one after the other, each waiting for its
/// call's end (so that each call's outcome is known before the next is routed).
async fn call_one_by_one(gw: &ServeProc, numbers: &[String]) -> Vec<CallStatus> {
    let mut out = Vec::new();
    for n in numbers {
        let v = gw
            .start_verification(json!({ "to": n, "code": "2468" }))
            .await;
        let done = gw
            .wait_calls_final(std::slice::from_ref(&v.id), Duration::from_secs(60))
            .await;
        out.push(done[0].call.status);
    }
    out
}

/// 20 calls to +31 and 20 to +44 through one trunk: each pool's numbers take turns in
/// `From` (equal shares, never another country's), and numbers no pool covers keep
/// the trunk's `from`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caller_ids_rotate_within_each_country_pool() {
    let callee = SippUas::answer_many(Duration::from_millis(20)).await;
    let cfg = ServeConfig::new()
        .trunk("carrier", callee.port(), "max_concurrent_calls = 50")
        .merge_toml(
            r#"
[[caller_ids]]
prefix = "+31"
numbers = ["+31508200000", "+31508200001"]
[[caller_ids]]
prefix = "+44"
numbers = ["+442071838750", "+442071838751", "+442071838752"]
"#,
        );
    let gw = ServeProc::start(cfg).await;
    let mut ids = Vec::new();
    for i in 0..20u32 {
        for to in [nl_mobile(1000 + i), format!("+447911{:06}", 100 + i)] {
            ids.push(gw.start_verification(json!({ "to": to })).await.id);
        }
    }
    // One number no pool covers: the trunk's from.
    ids.push(
        gw.start_verification(json!({ "to": "+32470123456" }))
            .await
            .id,
    );
    let done = gw.wait_calls_final(&ids, Duration::from_secs(120)).await;
    assert!(
        done.iter().all(|v| v.call.status == CallStatus::Completed),
        "{:?}",
        done.iter().map(|v| v.call.status).collect::<Vec<_>>()
    );
    let seen = invites(&callee.messages());
    assert_eq!(seen.len(), 41, "{seen:?}");
    let nl = counts(
        seen.iter()
            .filter(|i| i.to.starts_with("+31"))
            .map(|i| i.from.as_str()),
    );
    let uk = counts(
        seen.iter()
            .filter(|i| i.to.starts_with("+44"))
            .map(|i| i.from.as_str()),
    );
    let be = counts(
        seen.iter()
            .filter(|i| i.to.starts_with("+32"))
            .map(|i| i.from.as_str()),
    );
    eprintln!("From at the callee: +31 {nl:?}, +44 {uk:?}, +32 {be:?}");
    assert_eq!(
        nl,
        BTreeMap::from([("+31508200000".into(), 10), ("+31508200001".into(), 10)]),
        "+31 calls take the +31 numbers in turn"
    );
    let mut uk_shares: Vec<usize> = uk.values().copied().collect();
    uk_shares.sort_unstable();
    assert_eq!(uk_shares, [6, 7, 7], "+44 calls: {uk:?}");
    assert!(
        uk.keys().all(|k| k.starts_with("+4420718387")),
        "+44 calls show only +44 numbers: {uk:?}"
    );
    assert_eq!(
        be,
        BTreeMap::from([("+31508200000".into(), 1)]),
        "the trunk's from"
    );

    let (status, list) = gw.get_as(ADMIN_TOKEN, "/v1/caller-ids").await;
    assert_eq!(status, StatusCode::OK, "{list}");
    let entries = list["caller_ids"].as_array().unwrap();
    assert_eq!(entries.len(), 5, "{list}");
    for e in entries {
        assert!(e["resting_until"].is_null(), "{e}");
        assert_eq!(e["answer_rate"], 1.0, "{e}");
    }
    let (status, _) = gw.get("/v1/caller-ids").await;
    assert_eq!(status, StatusCode::FORBIDDEN, "admin scope only");
}

/// A caller ID the callee never picks up is rested after `rest_min_calls` calls and
/// not shown again; the pool's other number carries the rest. Counted at the callee.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_id_nobody_answers_is_rested() {
    let callee = SippUas::answering("uas_answer_unless_from.xml", Duration::from_millis(20)).await;
    let cfg = ServeConfig::new()
        .trunk("carrier", callee.port(), "ring_timeout = \"2s\"")
        .merge_toml(
            r#"
[[caller_ids]]
prefix = "+31"
numbers = ["+31508200000", "+31508200009"]
rest_below = 0.5
rest_min_calls = 3
rest_time = "1h"
"#,
        );
    let gw = ServeProc::start(cfg).await;
    let numbers: Vec<String> = (0..12).map(|i| nl_mobile(2000 + i)).collect();
    let statuses = call_one_by_one(&gw, &numbers).await;
    let seen = invites(&callee.messages());
    let froms: Vec<&str> = seen.iter().map(|i| i.from.as_str()).collect();
    eprintln!("From, call by call: {froms:?}\nstatuses: {statuses:?}");
    assert_eq!(seen.len(), 12, "{froms:?}");
    // In turn until the silent number has had its 3 calls, then only the other.
    assert_eq!(
        &froms[..6],
        [
            "+31508200000",
            "+31508200009",
            "+31508200000",
            "+31508200009",
            "+31508200000",
            "+31508200009"
        ]
    );
    assert!(
        froms[6..].iter().all(|f| *f == "+31508200000"),
        "the rested number is not shown again: {froms:?}"
    );
    assert_eq!(
        statuses
            .iter()
            .filter(|s| **s == CallStatus::NoAnswer)
            .count(),
        3,
        "{statuses:?}"
    );
    let (status, list) = gw.get_as(ADMIN_TOKEN, "/v1/caller-ids").await;
    assert_eq!(status, StatusCode::OK, "{list}");
    let entry = |n: &str| {
        list["caller_ids"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["number"] == n)
            .cloned()
            .unwrap_or_else(|| panic!("{n} in {list}"))
    };
    let rested = entry("+31508200009");
    assert!(rested["resting_until"].is_string(), "{rested}");
    assert_eq!(rested["pool"], "+31", "{rested}");
    let kept = entry("+31508200000");
    assert!(kept["resting_until"].is_null(), "{kept}");
    assert_eq!(kept["calls"], 9, "{kept}");
    let metrics = metrics_text(&gw.http, &gw.url("/metrics")).await;
    assert_eq!(
        metric_value(&metrics, "otpdial_caller_id_rested_total{pool=\"+31\"}"),
        1,
        "{metrics}"
    );
    assert!(gw.log().contains("caller ID rested"), "{}", gw.log());
    let admin = admin_page(&gw.http, gw.url("/admin"), ADMIN_TOKEN).await;
    assert!(
        admin.contains("+31508200009") && admin.contains("resting"),
        "/admin shows the rest"
    );
}

// ---- channels shared by the instances ----------------------------------------------------

/// Two instances on one PostgreSQL, one trunk with 10 channels, 60 verifications
/// through both APIs: every call completes and the callee never has more than 10
/// calls between INVITE and BYE.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trunks_channels_hold_across_instances() {
    let callee = SippUas::answer_many(Duration::from_millis(800)).await;
    let trunk = "max_concurrent_calls = 10";
    let first = ServeConfig::on(Db::Postgres)
        .await
        .trunk("carrier", callee.port(), trunk);
    let a = ServeProc::start(first).await;
    let b = ServeProc::start(ServeConfig::new().database(a.db_url()).trunk(
        "carrier",
        callee.port(),
        trunk,
    ))
    .await;
    // Through both APIs, alternately; the dialers start calling at once.
    let mut started = Vec::new();
    for i in 0..60u32 {
        let gw = if i % 2 == 0 { &a } else { &b };
        let v = gw
            .start_verification(json!({ "to": nl_mobile(3000 + i) }))
            .await;
        started.push((i % 2, v.id));
    }
    let ids_of = |side: u32| -> Vec<String> {
        started
            .iter()
            .filter(|(s, _)| *s == side)
            .map(|(_, id)| id.clone())
            .collect()
    };
    let mut done = a
        .wait_calls_final(&ids_of(0), Duration::from_secs(240))
        .await;
    done.extend(
        b.wait_calls_final(&ids_of(1), Duration::from_secs(240))
            .await,
    );
    let log = callee.calls();
    eprintln!(
        "callee: {} calls, at most {} between INVITE and BYE, at most {} up",
        log.calls.len(),
        log.max_in_progress,
        log.max_up
    );
    assert!(
        done.iter().all(|v| v.call.status == CallStatus::Completed),
        "{:?}",
        done.iter().map(|v| v.call.status).collect::<Vec<_>>()
    );
    assert_eq!(log.calls.len(), 60);
    assert!(
        log.max_in_progress <= 10,
        "{} calls at once at the callee",
        log.max_in_progress
    );
    // The limit was reached (each instance alone could have put 10 up).
    assert!(log.max_in_progress >= 8, "{}", log.max_in_progress);
    for gw in [&a, &b] {
        let m = metrics_text(&gw.http, &gw.url("/metrics")).await;
        let placed = metric_value(
            &m,
            "otpdial_call_attempts_total{trunk=\"carrier\",status=\"completed\"}",
        );
        assert!(placed > 0, "both instances placed calls: {m}");
    }
}

// ---- routing by quality ----------------------------------------------------------------

/// Two trunks for +31, one answering one call in three (numbers ending in 0 of the
/// last digits 0, 1, 2), the other every call: after 30 calls, at least 24 of the
/// next 30 go to the better one. Its figures are in /v1/trunks and /metrics.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quality_routing_prefers_the_trunk_that_answers() {
    let weak = SippUas::answering("uas_answer_one_in_three.xml", Duration::from_millis(20)).await;
    let good = SippUas::answer_many(Duration::from_millis(20)).await;
    // The weak trunk comes first by priority and costs the same.
    let cfg = ServeConfig::new()
        .trunk(
            "weak",
            weak.port(),
            "priority = 10\nprefixes = [\"+31\"]\ncost_per_minute = 0.01",
        )
        .trunk(
            "good",
            good.port(),
            "priority = 20\nprefixes = [\"+31\"]\ncost_per_minute = 0.01",
        )
        .merge_toml("[dialer]\nrouting = \"quality\"\n");
    let gw = ServeProc::start(cfg).await;
    let numbers: Vec<String> = (0..60u32)
        .map(|i| format!("+3162{:06}{}", 4000 + i, i % 3))
        .collect();
    call_one_by_one(&gw, &numbers[..30]).await;
    let good_before = good.calls().calls.len();
    let weak_before = weak.calls().calls.len();
    call_one_by_one(&gw, &numbers[30..]).await;
    let good_next = good.calls().calls.len() - good_before;
    let weak_next = weak.calls().calls.len() - weak_before;
    eprintln!(
        "first 30: weak {weak_before}, good {good_before}; next 30: weak {weak_next}, good {good_next}"
    );
    assert_eq!(good_next + weak_next, 30);
    assert!(
        good_next >= 24,
        "next 30: good {good_next}, weak {weak_next}"
    );

    let (status, trunks) = gw.get_as(ADMIN_TOKEN, "/v1/trunks").await;
    assert_eq!(status, StatusCode::OK, "{trunks}");
    let country = |name: &str| {
        trunks["trunks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["name"] == name)
            .and_then(|t| t["countries"].as_array().and_then(|c| c.first().cloned()))
            .unwrap_or_else(|| panic!("{name} +31 figures in {trunks}"))
    };
    let (g, w) = (country("good"), country("weak"));
    assert_eq!(
        (g["country"].as_str(), g["answer_rate"].as_f64()),
        (Some("+31"), Some(1.0)),
        "{g}"
    );
    assert_eq!(
        g["calls"].as_u64(),
        Some((good_before + good_next) as u64),
        "{g}"
    );
    // The weak trunk's figure is what its callee did (it only got the exploring calls,
    // which of them end in 0 depends on where the draws start: compare, do not guess).
    let weak_log = weak.calls();
    assert_eq!(
        w["calls"].as_u64(),
        Some(weak_log.calls.len() as u64),
        "{w}"
    );
    let weak_rate = weak_log.answered() as f64 / weak_log.calls.len() as f64;
    assert!(
        (w["answer_rate"].as_f64().unwrap() - weak_rate).abs() < 1e-9,
        "{w} vs {weak_rate}"
    );
    let m = metrics_text(&gw.http, &gw.url("/metrics")).await;
    assert_eq!(
        metric_value(
            &m,
            "otpdial_route_calls_total{trunk=\"good\",country=\"+31\"}"
        ),
        (good_before + good_next) as u64,
        "{m}"
    );
}

/// Two trunks that answer every call: the cheaper carries at least 24 of 30, though
/// the dearer comes first by priority.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quality_routing_at_equal_rates_prefers_the_cheaper_trunk() {
    let dear = SippUas::answer_many(Duration::from_millis(20)).await;
    let cheap = SippUas::answer_many(Duration::from_millis(20)).await;
    let cfg = ServeConfig::new()
        .trunk("dear", dear.port(), "priority = 10\ncost_per_minute = 0.02")
        .trunk(
            "cheap",
            cheap.port(),
            "priority = 20\ncost_per_minute = 0.01",
        )
        .merge_toml("[dialer]\nrouting = \"quality\"\n");
    let gw = ServeProc::start(cfg).await;
    let numbers: Vec<String> = (0..30u32).map(|i| nl_mobile(5000 + i)).collect();
    let statuses = call_one_by_one(&gw, &numbers).await;
    assert!(
        statuses.iter().all(|s| *s == CallStatus::Completed),
        "{statuses:?}"
    );
    let (c, d) = (cheap.calls().calls.len(), dear.calls().calls.len());
    eprintln!("cheap {c}, dear {d}");
    assert_eq!(c + d, 30);
    assert!(c >= 24, "cheap {c}, dear {d}");
}
