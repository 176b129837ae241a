//! The pre-dial risk hook (SPEC §6 `[risk]`): before each round of a call,
//! otpdial POSTs the number, user, country and line type to the operator's
//! hook, signed `Otpdial-Signature: t=<unix>,v1=<hex hmac-sha256 of
//! "t.body">`, and obeys `{"decision": "allow" | "deny"}`. The answer must
//! be signed the same way with the same key (so nobody on the path can
//! allow a call), and arrive within `timeout`; otherwise `on_timeout`
//! decides. An operator plugs SIM-swap, porting and deny-list checks in
//! here (NIST SP 800-63B asks for them on the phone channel).

use std::time::Duration;

use crate::config::{ExposeSecret, RiskDecision, RiskSettings, SecretString};
use crate::domain::{self, PhoneNumber};

/// How old a signed answer may be (clock skew and transit).
const ANSWER_MAX_AGE_S: i64 = 300;

/// What the dialer asks about one call.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RiskQuery<'a> {
    pub verification_id: &'a str,
    pub number: &'a str,
    pub user_id: Option<&'a str>,
    /// Country calling code, e.g. `+31`.
    pub country: String,
    /// libphonenumber line type, e.g. `mobile`.
    pub line_type: crate::domain::NumberKind,
}

impl<'a> RiskQuery<'a> {
    pub fn new(verification_id: &'a str, number: &'a str, user_id: Option<&'a str>) -> Self {
        let parsed = PhoneNumber::from_trusted(number.to_string());
        RiskQuery {
            verification_id,
            number,
            user_id,
            country: parsed.country_code(),
            line_type: parsed.kind(),
        }
    }
}

/// The decision and how it was reached (for the audit log and metrics).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RiskVerdict {
    pub decision: RiskDecision,
    /// `hook`, or why the default was used: `timeout`, `bad_signature`,
    /// `error: …`.
    pub source: String,
}

pub struct RiskHook {
    url: String,
    secret: SecretString,
    timeout: Duration,
    on_timeout: RiskDecision,
    http: reqwest::Client,
}

#[derive(serde::Deserialize)]
struct Answer {
    decision: RiskDecision,
}

/// Checks an `Otpdial-Signature` header over a hook's answer `body`, signed
/// at most `ANSWER_MAX_AGE_S` from `now_unix`.
pub fn signature_valid(secret: &[u8], header: &str, body: &[u8], now_unix: i64) -> bool {
    crate::signing::verify(secret, header, body, now_unix, ANSWER_MAX_AGE_S)
}

impl RiskHook {
    /// The hook of `settings`, if one is configured.
    pub fn from_settings(settings: &RiskSettings) -> anyhow::Result<Option<RiskHook>> {
        let url = settings.hook_url.trim();
        if url.is_empty() {
            return Ok(None);
        }
        let secret = settings
            .secret
            .clone()
            .ok_or_else(|| anyhow::anyhow!("risk.hook_url is set but no signing key was loaded"))?;
        let http = reqwest::Client::builder()
            .timeout(settings.timeout)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("otpdial/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Some(RiskHook {
            url: url.to_string(),
            secret,
            timeout: settings.timeout,
            on_timeout: settings.on_timeout,
            http,
        }))
    }

    /// Asks the hook; never fails: without a usable answer `on_timeout`
    /// decides.
    pub async fn decide(&self, query: &RiskQuery<'_>) -> RiskVerdict {
        let fallback = |source: String| RiskVerdict {
            decision: self.on_timeout,
            source,
        };
        let body = match serde_json::to_vec(query) {
            Ok(b) => b,
            Err(e) => return fallback(format!("error: {e}")),
        };
        let unix = domain::now_ms() / 1000;
        let request = self
            .http
            .post(&self.url)
            .header("content-type", "application/json")
            .header(
                "Otpdial-Signature",
                crate::signing::sign(self.secret.expose_secret().as_bytes(), unix, &body),
            )
            .body(body)
            .send();
        let answer = async {
            let resp = request.await?;
            let status = resp.status();
            let sig = resp
                .headers()
                .get("Otpdial-Signature")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            let bytes = resp.bytes().await?;
            Ok::<_, reqwest::Error>((status, sig, bytes))
        };
        let (status, sig, bytes) = match tokio::time::timeout(self.timeout, answer).await {
            Err(_) => return fallback("timeout".into()),
            Ok(Err(e)) if e.is_timeout() => return fallback("timeout".into()),
            Ok(Err(e)) => return fallback(format!("error: {}", e.without_url())),
            Ok(Ok(a)) => a,
        };
        if !status.is_success() {
            return fallback(format!("error: HTTP {}", status.as_u16()));
        }
        let signed = sig.is_some_and(|s| {
            signature_valid(
                self.secret.expose_secret().as_bytes(),
                &s,
                &bytes,
                domain::now_ms() / 1000,
            )
        });
        if !signed {
            return fallback("bad_signature".into());
        }
        match serde_json::from_slice::<Answer>(&bytes) {
            Ok(a) => RiskVerdict {
                decision: a.decision,
                source: "hook".into(),
            },
            Err(e) => fallback(format!("error: unreadable answer: {e}")),
        }
    }
}

/// Signs a hook's answer the way otpdial checks it (for hook authors and
/// tests).
pub fn sign_answer(secret: &[u8], unix: i64, body: &[u8]) -> String {
    crate::signing::sign(secret, unix, body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_query_names_country_and_line_type() {
        let q = RiskQuery::new("vf_1", "+31612345678", Some("u-1"));
        let json = serde_json::to_value(&q).expect("json");
        assert_eq!(json["country"], "+31");
        assert_eq!(json["line_type"], "mobile");
        assert_eq!(json["user_id"], "u-1");
    }
}
