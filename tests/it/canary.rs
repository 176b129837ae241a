//! Canaries end to end (SPEC §7, issue 19), against Kamailio as a digest-auth trunk that
//! routes canary numbers back to a gateway as inbound calls (`tests/kamailio/canary.cfg`):
//! the built-in test phone hears the code (`ok`, with a MOS), a return leg whose audio is
//! sent nowhere (`not_heard`), a 503 (`failed`), a number routed to another callee
//! (`not_delivered`), a wrong prompt pack at the answering side (`wrong_digits`), two
//! instances on PostgreSQL (placed by one, answered by the other), and the alerts of
//! `fail_after` (signed, once on failing, once on recovery). Runs are waited for through
//! `GET /v1/canaries`, never by sleeping.

use std::net::UdpSocket;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use otpdial::app::DialerMode;
use otpdial::config::{CanaryEntry, SecretString, Settings};
use reqwest::StatusCode;
use serde_json::Value;

use crate::helpers::{
    admin_page, base_settings, fresh_database, metric_value, spawn_app_on, Db, Sipp, TestApp,
    ADMIN_TOKEN,
};
use crate::procs::free_sip_port;
use crate::sip_kamailio::{Kamailio, AUTH_USER, PASSWORD};

const HEARD: &str = "+31201234567";
const SILENT: &str = "+31201234568";
const REFUSED: &str = "+31201234569";
const ELSEWHERE: &str = "+31201234570";

/// Kamailio routing the canary numbers back to the gateway on `gateway_port`.
fn kamailio(gateway_port: u16, elsewhere_port: u16, port: Option<u16>, all_503: bool) -> Kamailio {
    let mut defines = vec![
        ("GATEWAY", format!("sip:127.0.0.1:{gateway_port}")),
        ("ELSEWHERE", format!("sip:127.0.0.1:{elsewhere_port}")),
        ("AUTH_USER", AUTH_USER.to_string()),
        ("PASSWORD", PASSWORD.to_string()),
        ("ALGORITHM", "MD5".to_string()),
    ];
    if all_503 {
        defines.push(("ALL_503", "1".to_string()));
    }
    Kamailio::start_config("canary.cfg", &defines, port)
}

fn canary(name: &str, number: &str, interval: Duration) -> CanaryEntry {
    CanaryEntry {
        name: name.into(),
        number: number.into(),
        trunk: "trunk-a".into(),
        interval,
        locale: "en".into(),
    }
}

/// A gateway on SIP port `sip_port` whose trunk is the Kamailio on `trunk_port`, with
/// the four canary numbers as answer numbers and short code and waits.
fn settings(sip_port: u16, trunk_port: u16) -> Settings {
    let mut s = base_settings(trunk_port);
    s.sip.listen = format!("127.0.0.1:{sip_port}").parse().unwrap();
    s.verification.code_length = 4;
    s.verification.repeat = 1;
    let t = &mut s.trunks[0];
    t.username = Some("31508200000".into());
    t.auth_username = Some(AUTH_USER.into());
    t.password = Some(SecretString::from(PASSWORD));
    t.ring_timeout = Duration::from_secs(5);
    s.canary.answer_numbers = [HEARD, SILENT, REFUSED, ELSEWHERE]
        .iter()
        .map(|n| n.to_string())
        .collect();
    s.canary.arrival_timeout = Duration::from_secs(3);
    s
}

async fn start(settings: Settings, url: String, dir: tempfile::TempDir) -> TestApp {
    spawn_app_on(settings, url, dir, DialerMode::Manual).await
}

/// `GET /v1/canaries` as the admin.
async fn canaries(t: &TestApp) -> Value {
    let (status, body) = t.get_as(ADMIN_TOKEN, "/v1/canaries?runs=20").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body
}

/// The canary `name` of a `/v1/canaries` body.
fn find<'a>(body: &'a Value, name: &str) -> &'a Value {
    body["canaries"]
        .as_array()
        .and_then(|a| a.iter().find(|c| c["name"] == name))
        .unwrap_or_else(|| panic!("no canary {name} in {body}"))
}

/// The finished runs of canary `name`, oldest first.
fn finished(body: &Value, name: &str) -> Vec<Value> {
    let mut runs: Vec<Value> = find(body, name)["runs"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter(|r| !r["result"].is_null())
        .collect();
    runs.reverse();
    runs
}

/// Polls `/v1/canaries` until `done` holds for it; the body then.
async fn wait_for(
    t: &TestApp,
    within: Duration,
    what: &str,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let body = canaries(t).await;
        if done(&body) {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not after {within:?}: {body:#}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn canary_results_through_kamailio() {
    let sip_port = free_sip_port();
    let sink = UdpSocket::bind("127.0.0.1:0").unwrap();
    let elsewhere = Sipp::uas(
        "uas_answer.xml",
        &[("rtp_port", sink.local_addr().unwrap().port().to_string())],
    );
    let kam = kamailio(sip_port, elsewhere.port, None, false);
    let mut s = settings(sip_port, kam.port);
    let hour = Duration::from_secs(3600);
    s.canaries = vec![
        canary("heard", HEARD, hour),
        canary("silent", SILENT, hour),
        canary("refused", REFUSED, hour),
        canary("elsewhere", ELSEWHERE, hour),
    ];
    let dir = tempfile::tempdir().unwrap();
    let url = fresh_database(Db::Sqlite, dir.path()).await;
    let t = start(s, url, dir).await;

    let names = ["heard", "silent", "refused", "elsewhere"];
    let body = wait_for(&t, Duration::from_secs(90), "a run of each canary", |b| {
        names.iter().all(|n| !finished(b, n).is_empty())
    })
    .await;
    let first = |name: &str| finished(&body, name).remove(0);
    for name in names {
        eprintln!("canary {name}: {}", first(name));
    }
    let log = kam.log();

    let heard = first("heard");
    assert_eq!(heard["result"], "ok", "{heard:#}\n{log}");
    assert!(heard["heard"].is_null(), "digits shown only when wrong");
    let mos = heard["mos"].as_f64().unwrap();
    assert!(mos >= 4.0, "MOS {mos}");
    assert_eq!(heard["loss"].as_f64(), Some(0.0), "{heard:#}");
    assert!(heard["jitter_ms"].as_f64().unwrap() < 20.0, "{heard:#}");
    assert!(heard["post_dial_delay_ms"].as_i64().unwrap() >= 0);
    assert!(heard["setup_ms"].as_i64().unwrap() >= heard["post_dial_delay_ms"].as_i64().unwrap());
    assert_eq!(heard["trunk"], "trunk-a");
    assert!(["PCMA", "PCMU"].contains(&heard["codec"].as_str().unwrap()));
    assert_eq!(
        heard["placed_by"], heard["answered_by"],
        "one instance, both ends"
    );
    assert_eq!(find(&body, "heard")["state"], "ok");
    assert!(!find(&body, "heard")["last_success_at"].is_null());

    let silent = first("silent");
    assert_eq!(silent["result"], "not_heard", "{silent:#}");
    assert!(
        silent["mos"].as_f64().unwrap() < 2.0,
        "nothing arrived: {silent:#}"
    );
    let refused = first("refused");
    assert_eq!(refused["result"], "failed", "{refused:#}");
    assert_eq!(refused["sip_code"], 503);
    let gone = first("elsewhere");
    assert_eq!(gone["result"], "not_delivered", "{gone:#}");
    assert!(gone["answered_by"].is_null());
    // Kamailio challenged the gateway's INVITEs and routed two of them back to it.
    assert!(
        log.contains("canary-trunk: INVITE sip:+31201234567@"),
        "{log}"
    );
    assert!(log.contains("canary-trunk: ACK"), "{log}");
    assert!(log.contains("canary-trunk: BYE"), "{log}");

    let metrics = t.metrics_text().await;
    let sample = |s: &str| metric_value(&metrics, s);
    assert_eq!(
        sample("otpdial_canary_runs_total{canary=\"heard\",result=\"ok\"}"),
        1
    );
    assert_eq!(
        sample("otpdial_canary_runs_total{canary=\"silent\",result=\"not_heard\"}"),
        1
    );
    assert_eq!(
        sample("otpdial_canary_runs_total{canary=\"refused\",result=\"failed\"}"),
        1
    );
    assert_eq!(
        sample("otpdial_canary_runs_total{canary=\"elsewhere\",result=\"not_delivered\"}"),
        1
    );
    assert!(
        sample("otpdial_canary_last_success_timestamp_seconds{canary=\"heard\"}") > 1_700_000_000
    );
    assert!(
        metrics.contains("otpdial_canary_mos{canary=\"heard\"} 4."),
        "{metrics}"
    );
    assert!(metrics.contains("otpdial_canary_post_dial_delay_seconds{canary=\"heard\"}"));
    assert_eq!(
        sample("otpdial_canary_inbound_calls_total{result=\"answered\"}"),
        2
    );

    let page = admin_page(&t.http, t.url("/admin"), ADMIN_TOKEN).await;
    assert!(
        page.contains("<section id=\"canaries\"><h2>Canaries</h2>"),
        "{page}"
    );
    assert!(page.contains("Trunk <strong>trunk-a</strong>"), "{page}");
    for name in names {
        assert!(
            page.contains(&format!("<strong>{name}</strong>")),
            "{name}: {page}"
        );
    }
    assert!(page.contains("not_delivered"), "{page}");
    // Canary calls are not verifications.
    let (_, calls) = t.get_as(ADMIN_TOKEN, "/v1/calls").await;
    assert_eq!(calls["calls"].as_array().map(Vec::len), Some(0), "{calls}");
    drop(elsewhere);
    t.app.stop().await;
}

/// A copy of the built-in `en` pack whose digit files are shifted by one: what the
/// caller says as "1" this pack knows as "0".
fn shifted_pack(dir: &std::path::Path) -> std::path::PathBuf {
    let src = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("prompts/en");
    let dst = dir.join("prompts/en");
    std::fs::create_dir_all(&dst).unwrap();
    for e in std::fs::read_dir(&src).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), dst.join(e.file_name())).unwrap();
    }
    let list = |suffix: &str| {
        (0..10)
            .map(|d| format!("\"{}{suffix}.wav\"", (d + 1) % 10))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let shifted = format!(
        "language = \"English, digits shifted\"\ndigit_pause = \"350ms\"\ngroup_pause = \"800ms\"\n\
         [files]\nintro = \"intro.wav\"\nrepeat = \"repeat.wav\"\noutro = \"outro.wav\"\n\
         press_key = \"press-key.wav\"\nbind = \"bind.wav\"\ndigits = [{}]\ndigits_final = [{}]\n",
        list(""),
        list("-final")
    );
    std::fs::write(dst.join("pack.toml"), shifted).unwrap();
    dir.join("prompts")
}

/// Two gateways on one database: `a` places the canary, Kamailio routes it to `b`,
/// whose test phone answers. Returns the first finished run and both instances' names.
async fn placed_by_one_answered_by_other(
    db: Db,
    b_prompts: Option<std::path::PathBuf>,
) -> (Value, String, String) {
    let (a_port, b_port) = (free_sip_port(), free_sip_port());
    let kam = kamailio(b_port, 9, None, false);
    let dir = tempfile::tempdir().unwrap();
    let url = fresh_database(db, dir.path()).await;
    let mut sa = settings(a_port, kam.port);
    sa.canaries = vec![canary("heard", HEARD, Duration::from_secs(3600))];
    let mut sb = settings(b_port, kam.port);
    sb.prompts.dir = b_prompts;
    let b = start(sb, url.clone(), tempfile::tempdir().unwrap()).await;
    let a = start(sa, url, dir).await;
    let body = wait_for(&a, Duration::from_secs(60), "the run", |b| {
        !finished(b, "heard").is_empty()
    })
    .await;
    let run = finished(&body, "heard").remove(0);
    let names = (
        a.app.dialer.instance().to_string(),
        b.app.dialer.instance().to_string(),
    );
    a.app.stop().await;
    b.app.stop().await;
    drop(kam);
    (run, names.0, names.1)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn canary_two_instances_on_postgres() {
    let (run, a, b) = placed_by_one_answered_by_other(Db::Postgres, None).await;
    assert_eq!(run["result"], "ok", "{run:#}");
    assert_eq!(run["placed_by"], a.as_str());
    assert_eq!(
        run["answered_by"],
        b.as_str(),
        "answered by the other instance"
    );
    assert!(run["mos"].as_f64().unwrap() >= 4.0, "{run:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn canary_wrong_pack_at_the_answering_side_is_wrong_digits() {
    let packs = tempfile::tempdir().unwrap();
    let prompts = shifted_pack(packs.path());
    let (run, _, b) = placed_by_one_answered_by_other(Db::Sqlite, Some(prompts)).await;
    assert_eq!(run["result"], "wrong_digits", "{run:#}");
    assert_eq!(run["answered_by"], b.as_str());
    let heard = run["heard"].as_str().expect("the digits heard are shown");
    assert_eq!(heard.len(), 4, "{run:#}");
    assert!(heard.bytes().all(|c| c.is_ascii_digit()));
}

/// An HTTP receiver for alerts: every POST's `Otpdial-Signature` and body.
#[derive(Clone, Default)]
struct Alerts(Arc<Mutex<Vec<(String, String)>>>);

impl Alerts {
    async fn serve(&self) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let me = self.clone();
        let app = axum::Router::new().route(
            "/alert",
            axum::routing::post(move |headers: axum::http::HeaderMap, body: String| {
                let me = me.clone();
                async move {
                    let sig = headers
                        .get("otpdial-signature")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("")
                        .to_string();
                    me.0.lock().unwrap().push((sig, body));
                    StatusCode::OK
                }
            }),
        );
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        format!("http://{addr}/alert")
    }

    fn events(&self) -> Vec<String> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .map(|(_, b)| {
                serde_json::from_str::<Value>(b).unwrap()["event"]
                    .as_str()
                    .unwrap()
                    .to_string()
            })
            .collect()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn canary_alerts_once_on_failing_and_once_on_recovery() {
    const SECRET: &str = "canary-alert-secret";
    let alerts = Alerts::default();
    let alert_url = alerts.serve().await;
    let sip_port = free_sip_port();
    let trunk_port = free_sip_port();
    // First the trunk refuses every call (503).
    let failing = kamailio(sip_port, 9, Some(trunk_port), true);
    let mut s = settings(sip_port, trunk_port);
    s.canaries = vec![canary("heard", HEARD, Duration::from_secs(2))];
    s.canary.fail_after = 2;
    s.canary.alert_url = alert_url;
    s.webhooks.secret = Some(SecretString::from(SECRET));
    s.webhooks.backoff = Duration::from_millis(200);
    let dir = tempfile::tempdir().unwrap();
    let url = fresh_database(Db::Sqlite, dir.path()).await;
    let t = start(s, url, dir).await;

    let body = wait_for(&t, Duration::from_secs(60), "three failed runs", |b| {
        finished(b, "heard").len() >= 3
    })
    .await;
    assert!(
        finished(&body, "heard")
            .iter()
            .all(|r| r["result"] == "failed"),
        "{body:#}"
    );
    assert_eq!(find(&body, "heard")["state"], "failing");
    let wait_alerts = |n: usize| {
        let alerts = alerts.clone();
        async move {
            let deadline = Instant::now() + Duration::from_secs(20);
            while alerts.events().len() < n {
                assert!(
                    Instant::now() < deadline,
                    "{n} alerts: {:?}",
                    alerts.events()
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    wait_alerts(1).await;
    // Three failures, one alert: it is not repeated while the canary stays failing.
    assert_eq!(alerts.events(), vec!["canary.failing"]);

    // The trunk comes back: the calls are routed back and heard.
    drop(failing);
    let _healthy = kamailio(sip_port, 9, Some(trunk_port), false);
    let body = wait_for(&t, Duration::from_secs(90), "two ok runs", |b| {
        finished(b, "heard")
            .iter()
            .filter(|r| r["result"] == "ok")
            .count()
            >= 2
    })
    .await;
    assert_eq!(find(&body, "heard")["state"], "ok");
    wait_alerts(2).await;
    assert_eq!(alerts.events(), vec!["canary.failing", "canary.recovered"]);

    let now = otpdial::domain::now_ms() / 1000;
    for (sig, body) in alerts.0.lock().unwrap().iter() {
        assert!(
            otpdial::signing::verify(SECRET.as_bytes(), sig, body.as_bytes(), now, 300),
            "signature {sig} over {body}"
        );
        assert!(!otpdial::signing::verify(
            b"other",
            sig,
            body.as_bytes(),
            now,
            300
        ));
        let v: Value = serde_json::from_str(body).unwrap();
        assert_eq!(v["canary"]["name"], "heard");
        assert_eq!(v["canary"]["number"], HEARD);
    }
    let (_, last) = alerts.0.lock().unwrap()[1].clone();
    let last: Value = serde_json::from_str(&last).unwrap();
    assert_eq!(last["run"]["result"], "ok");
    assert_eq!(last["canary"]["state"], "ok");
    t.app.stop().await;
}
