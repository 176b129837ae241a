//! `otpdial serve --log-format json`: every line is a JSON object, a call's
//! lines carry its verification id and SIP Call-ID, and neither the code
//! nor the API token ever appears.

use std::time::Duration;

use otpdial::domain::CallStatus;
use serde_json::{json, Value};

use crate::callee::SippUas;
use crate::helpers::TOKEN;
use crate::procs::{nl_mobile, ServeConfig, ServeProc};

/// Whether `needle` occurs in `text` as a whole token (delimited by
/// non-alphanumeric characters): random ids cannot contain it by chance.
fn has_token(text: &str, needle: &str) -> bool {
    text.split(|c: char| !c.is_ascii_alphanumeric())
        .any(|t| t == needle)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn json_logs_name_the_call_and_never_the_code() {
    let callee = SippUas::answer_many(Duration::from_millis(100)).await;
    let cfg = ServeConfig::new()
        .trunk("t", callee.port(), "")
        .env("OTPDIAL_LOG_FORMAT", "json")
        .env("RUST_LOG", "debug");
    let gw = ServeProc::start(cfg).await;
    let code = "4815260937";
    let v = gw
        .start_verification(json!({ "to": nl_mobile(7000), "code": code }))
        .await;
    let done = &gw
        .wait_calls_final(std::slice::from_ref(&v.id), Duration::from_secs(30))
        .await[0];
    assert_eq!(done.call.status, CallStatus::Completed, "{done:?}");
    let (status, _) = gw
        .post(
            &format!("/v1/verifications/{}/check", v.id),
            json!({ "code": code }),
        )
        .await;
    assert!(status.is_success());

    let log = gw.log();
    let sip_call_id = callee.calls().calls[0].call_id.clone();
    let mut call_lines = 0;
    let mut with_sip_id = 0;
    for line in log.lines().filter(|l| l.starts_with('{')) {
        let entry: Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        let spans = entry["spans"].as_array().cloned().unwrap_or_default();
        if spans.iter().any(|s| s["verification"] == v.id.as_str()) {
            call_lines += 1;
            if spans
                .iter()
                .any(|s| s["sip_call_id"] == sip_call_id.as_str())
            {
                with_sip_id += 1;
            }
        }
    }
    assert!(call_lines >= 3, "a call logs its progress: {log}");
    assert!(
        with_sip_id >= 1,
        "the attempt's lines name the SIP Call-ID {sip_call_id}: {log}"
    );
    assert!(!has_token(&log, code), "the code is in the log");
    assert!(!log.contains(TOKEN), "the API token is in the log");
}
