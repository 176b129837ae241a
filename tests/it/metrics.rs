//! `/metrics` after real calls: a real `otpdial serve` calls a SIPp callee that rings
//! 300 ms and answers, then the test scrapes the Prometheus text and checks each
//! family with the values those calls must have given: calls by status and trunk,
//! setup time and post-dial delay, RTP packets, API latency by route pattern, limit
//! and fraud refusals, trunk breaker and answer rate, calls in progress.
//! (Trunk registration is checked against Kamailio in `docker_configs`.)

use std::collections::BTreeMap;
use std::time::Duration;

use otpdial::domain::CallStatus;
use reqwest::StatusCode;
use serde_json::json;

use crate::callee::SippUas;
use crate::procs::{nl_mobile, ServeConfig, ServeProc};

/// The samples of a Prometheus text exposition: `name{labels}` → value.
#[derive(Debug)]
pub(crate) struct Scrape {
    pub(crate) text: String,
    samples: BTreeMap<String, f64>,
}

impl Scrape {
    pub(crate) async fn of(gw: &ServeProc) -> Scrape {
        let r = gw.http.get(gw.url("/metrics")).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        let ctype = r.headers()["content-type"].to_str().unwrap().to_owned();
        assert!(ctype.starts_with("text/plain"), "{ctype}");
        Scrape::parse(r.text().await.unwrap())
    }

    pub(crate) fn parse(text: String) -> Scrape {
        let samples = text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
            .filter_map(|l| {
                let (series, value) = l.rsplit_once(' ')?;
                Some((series.to_owned(), value.parse().ok()?))
            })
            .collect();
        Scrape { text, samples }
    }

    /// The value of one series, written as the exposition writes it
    /// (`otpdial_active_calls{trunk="a"}`); fails the test if it is missing.
    pub(crate) fn value(&self, series: &str) -> f64 {
        *self
            .samples
            .get(series)
            .unwrap_or_else(|| panic!("no series {series} in\n{}", self.text))
    }

    /// Whether the family has a `# TYPE` line.
    pub(crate) fn has_family(&self, name: &str) -> bool {
        self.text
            .lines()
            .any(|l| l.starts_with(&format!("# TYPE {name} ")))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_after_real_calls() {
    let callee = SippUas::answer_many(Duration::from_millis(300)).await;
    let cfg = ServeConfig::new()
        .trunk("carrier-a", callee.port(), "")
        .merge_toml("[limits]\nper_number = \"1/10m\"\n[fraud]\nallowed_prefixes = [\"+31\"]\n");
    let gw = ServeProc::start(cfg).await;

    let mut ids = Vec::new();
    for i in 0..2 {
        let v = gw
            .start_verification(json!({ "to": nl_mobile(7100 + i), "code": "4812" }))
            .await;
        ids.push(v.id);
    }
    let done = gw.wait_calls_final(&ids, Duration::from_secs(20)).await;
    assert!(
        done.iter().all(|v| v.call.status == CallStatus::Completed),
        "{done:?}"
    );
    // A second call to a number within its limit, and a number outside the allowed
    // prefixes: refused, and counted.
    let (status, _) = gw
        .post(
            "/v1/verifications",
            json!({ "to": nl_mobile(7100), "code": "4812" }),
        )
        .await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    let (status, _) = gw
        .post(
            "/v1/verifications",
            json!({ "to": "+32470123456", "code": "4812" }),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    let (status, _) = gw.get("/no/such/route").await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    let m = Scrape::of(&gw).await;
    let trunk = r#"trunk="carrier-a""#;

    // Calls by final status, and per trunk.
    assert_eq!(
        m.value(r#"otpdial_calls_finished_total{status="completed"}"#),
        2.0
    );
    assert_eq!(
        m.value(r#"otpdial_call_attempts_total{trunk="carrier-a",status="completed"}"#),
        2.0
    );
    // Setup time INVITE → 200 (the callee rings 300 ms first) and post-dial delay
    // INVITE → 180, per trunk.
    assert_eq!(
        m.value(&format!("otpdial_call_setup_seconds_count{{{trunk}}}")),
        2.0
    );
    let setup = m.value(&format!("otpdial_call_setup_seconds_sum{{{trunk}}}")) / 2.0;
    assert!((0.3..5.0).contains(&setup), "mean setup {setup} s");
    assert_eq!(
        m.value(&format!(
            "otpdial_call_setup_seconds_bucket{{le=\"0.25\",{trunk}}}"
        )),
        0.0,
        "nobody answered before the 300 ms of ringing"
    );
    assert_eq!(
        m.value(&format!("otpdial_post_dial_delay_seconds_count{{{trunk}}}")),
        2.0
    );
    let pdd = m.value(&format!("otpdial_post_dial_delay_seconds_sum{{{trunk}}}")) / 2.0;
    assert!(pdd < setup, "180 came before the 200: {pdd} < {setup}");
    // RTP: every packet the callee's sink got was counted as sent.
    let sent = m.value("otpdial_rtp_packets_sent_total");
    let heard = callee.rtp().expect("rtp sink").datagrams() as f64;
    assert!(
        sent > 0.0 && sent >= heard,
        "sent {sent}, the callee got {heard}"
    );
    let late = m.value("otpdial_rtp_packets_late_total");
    assert!((0.0..=sent).contains(&late));
    // Calls in progress, now none.
    assert_eq!(m.value("otpdial_calls_in_progress"), 0.0);
    assert_eq!(m.value(&format!("otpdial_active_calls{{{trunk}}}")), 0.0);
    // Trunk state: breaker closed, answer rate 1, not down.
    assert_eq!(
        m.value(r#"otpdial_trunk_breaker{trunk="carrier-a",state="closed"}"#),
        1.0
    );
    assert_eq!(
        m.value(r#"otpdial_trunk_breaker{trunk="carrier-a",state="open"}"#),
        0.0
    );
    assert_eq!(
        m.value(&format!("otpdial_trunk_answer_rate{{{trunk}}}")),
        1.0
    );
    assert_eq!(m.value(&format!("otpdial_trunk_down{{{trunk}}}")), 0.0);
    assert!(m.has_family("otpdial_trunk_registered"));
    // Refusals.
    assert_eq!(
        m.value(r#"otpdial_rate_limited_total{reason="per_number"}"#),
        1.0
    );
    assert_eq!(
        m.value(r#"otpdial_verification_refusals_total{reason="prefix_not_allowed"}"#),
        1.0
    );
    // API latency by route pattern (never the id itself), method and status.
    let route = |method: &str, route: &str, status: u16| {
        m.value(&format!(
            "otpdial_http_request_duration_seconds_count{{method=\"{method}\",route=\"{route}\",status=\"{status}\"}}"
        ))
    };
    assert_eq!(route("POST", "/v1/verifications", 201), 2.0);
    assert_eq!(route("POST", "/v1/verifications", 429), 1.0);
    assert_eq!(route("POST", "/v1/verifications", 422), 1.0);
    assert!(route("GET", "/v1/verifications/{id}", 200) >= 2.0);
    assert_eq!(route("GET", "/healthz", 200), 1.0);
    assert_eq!(route("GET", "unmatched", 404), 1.0);
    for id in &ids {
        assert!(!m.text.contains(id.as_str()), "no ids in labels");
    }
    assert!(!m.text.contains("4812") && !m.text.contains(&nl_mobile(7100)));
}
