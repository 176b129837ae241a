//! `otpdial demo`: the whole product on loopback with no setup. A built-in
//! test phone is the trunk; the demo starts a verification through the HTTP
//! API like an auth service would, lets the phone answer and listen, then
//! checks the code the phone heard, again through the API.

use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;

use crate::api::{hash_token, new_token};
use crate::app::{self, DialerMode};
use crate::config::{ApiKeySettings, Scope, Settings};
use crate::media::PromptLibrary;
use crate::testphone::{AnswerMode, TestPhone, TestPhoneConfig};
use crate::verify::{CheckResult, VerificationView};

const DEMO_CONFIG: &str = include_str!("../config/demo.toml");
const DEMO_NUMBER: &str = "+31612345678";

/// Runs the demo, writing a human-readable account to `out`. Ok(true) when
/// the verification ended `approved`.
pub async fn run(out: &mut impl Write) -> anyhow::Result<bool> {
    let dir = tempfile::tempdir().context("cannot create a temporary directory")?;
    let library = Arc::new(PromptLibrary::builtin());
    let mut phone = TestPhone::start(TestPhoneConfig {
        bind: "127.0.0.1:0".parse()?,
        answer: AnswerMode::Answer {
            ring: Duration::from_millis(300),
        },
        library,
    })
    .await
    .context("cannot start the test phone")?;

    let token = new_token()?;
    let mut settings = Settings::from_toml(DEMO_CONFIG)?;
    settings.database.url = format!("sqlite://{}", dir.path().join("otpdial.db").display());
    settings.api.keys = vec![ApiKeySettings {
        name: "demo".into(),
        hash: hash_token(&token),
        scopes: vec![Scope::Verify],
    }];
    for t in &mut settings.trunks {
        t.proxy.port = phone.sip_addr().port();
    }
    let app = app::start(settings, DialerMode::Background).await?;
    writeln!(
        out,
        "otpdial demo: API {} | SIP udp {} | test phone sip:{}",
        app.base_url(),
        app.sip_addr,
        phone.sip_addr()
    )?;

    let http = reqwest::Client::new();
    let started: VerificationView = http
        .post(format!("{}/v1/verifications", app.base_url()))
        .bearer_auth(&token)
        .json(&serde_json::json!({ "to": DEMO_NUMBER, "locale": "en" }))
        .send()
        .await?
        .error_for_status()
        .context("starting the verification failed")?
        .json()
        .await?;
    writeln!(
        out,
        "POST /v1/verifications -> {} calling {} (call {})",
        started.id,
        started.to,
        started.call.status.as_str()
    )?;

    let heard = tokio::time::timeout(Duration::from_secs(90), phone.next_call())
        .await
        .context("the test phone heard no call within 90 s")?
        .context("the test phone stopped")?;
    let codec = heard.codec.map_or("-".to_string(), |c| format!("{c:?}"));
    writeln!(
        out,
        "phone answered {} ({} RTP packets, {codec}), heard: {}",
        heard.request_uri,
        heard.rtp_packets,
        describe(&heard.phrases)
    )?;
    for (i, reading) in heard.readings.iter().enumerate() {
        writeln!(out, "  reading {}: {}", i + 1, spaced(reading))?;
    }

    let view = wait_final_call(&http, &app.base_url(), &token, &started.id).await?;
    writeln!(
        out,
        "call {} (sip {}, trunk {}, code read {}x)",
        view.call.status.as_str(),
        view.call.sip_code.map_or("-".into(), |c| c.to_string()),
        view.call.trunk.as_deref().unwrap_or("-"),
        view.call.times_played
    )?;

    let Some(code) = heard.code() else {
        writeln!(out, "FAILED: the phone did not hear one consistent code")?;
        app.stop().await;
        return Ok(false);
    };
    writeln!(out, "phone heard code: {code}")?;
    let result: CheckResult = http
        .post(format!(
            "{}/v1/verifications/{}/check",
            app.base_url(),
            started.id
        ))
        .bearer_auth(&token)
        .json(&serde_json::json!({ "code": code }))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    writeln!(
        out,
        "POST /v1/verifications/{}/check {{\"code\":\"{code}\"}} -> valid={} status={}",
        started.id,
        result.valid,
        result.status.as_str()
    )?;
    app.stop().await;
    let ok = result.valid && result.status == crate::domain::VerificationStatus::Approved;
    writeln!(out, "{}", if ok { "demo OK" } else { "demo FAILED" })?;
    Ok(ok)
}

async fn wait_final_call(
    http: &reqwest::Client,
    base: &str,
    token: &str,
    id: &str,
) -> anyhow::Result<VerificationView> {
    for _ in 0..100 {
        let v: VerificationView = http
            .get(format!("{base}/v1/verifications/{id}"))
            .bearer_auth(token)
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        if v.call.status.is_final() {
            return Ok(v);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    anyhow::bail!("the call did not reach a final status")
}

fn describe(phrases: &[crate::media::Phrase]) -> String {
    use crate::media::Phrase;
    phrases
        .iter()
        .map(|p| match p {
            Phrase::Digit(d) | Phrase::FinalDigit(d) => d.to_string(),
            Phrase::Intro => "[intro]".into(),
            Phrase::Repeat => "[repeat]".into(),
            Phrase::Outro => "[outro]".into(),
            Phrase::PressKey => "[press-key]".into(),
            Phrase::Bind => "[bind]".into(),
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn spaced(digits: &str) -> String {
    digits
        .chars()
        .map(String::from)
        .collect::<Vec<_>>()
        .join(" ")
}
