//! `[[canaries]]` and `[canary]` (SPEC §7): scheduled test calls and the far end that
//! hears them, with their checks.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{ConfigError, Settings};

/// One `[[canaries]]` entry: a test call placed every `interval`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CanaryEntry {
    /// Names the canary in `/v1/canaries`, metrics and alerts.
    pub name: String,
    /// E.164: one of `[canary] answer_numbers` (a DID the carrier routes back to this
    /// gateway), or a `[[qa.phones]]` number.
    pub number: String,
    /// The trunk under test; empty = normal routing (by prefix and priority).
    #[serde(default)]
    pub trunk: String,
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// Prompt pack of the call; empty = `verification.default_locale`.
    #[serde(default)]
    pub locale: String,
}

impl CanaryEntry {
    /// The trunk under test, if one is named.
    pub fn trunk(&self) -> Option<&str> {
        (!self.trunk.trim().is_empty()).then_some(self.trunk.as_str())
    }
}

/// `[canary]`: the answering side and the alerts.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct CanarySettings {
    /// Inbound INVITEs from a trunk's address to one of these (E.164) are answered by
    /// the built-in test phone; every other inbound INVITE is refused.
    pub answer_numbers: Vec<String>,
    /// Consecutive failed runs before a canary turns `failing`.
    pub fail_after: u32,
    /// Signed POST (the webhook `Otpdial-Signature`) on `failing` and on recovery;
    /// empty = no alerts.
    pub alert_url: String,
    /// Canary calls placed per UTC day, all canaries together (user calls are not
    /// counted against it, nor canary calls against users' limits).
    pub daily_cap: u32,
    /// Inbound canary calls answered at once; more get 486 Busy Here.
    pub max_inbound_calls: u32,
    /// After the calling side's call ends, how long the answering side has to report
    /// (the call arrived and what was heard); no arrival by then is `not_delivered`.
    #[serde(with = "humantime_serde")]
    pub arrival_timeout: Duration,
    /// The answering side hangs up a call that lasts longer than this.
    #[serde(with = "humantime_serde")]
    pub max_call: Duration,
}

impl Default for CanarySettings {
    fn default() -> Self {
        Self {
            answer_numbers: Vec::new(),
            fail_after: 2,
            alert_url: String::new(),
            daily_cap: 200,
            max_inbound_calls: 4,
            arrival_timeout: Duration::from_secs(30),
            max_call: Duration::from_secs(120),
        }
    }
}

impl Settings {
    pub(super) fn validate_canaries(&self, origin: &str) -> Result<(), ConfigError> {
        let err = |key: String, message: String| ConfigError::Invalid {
            origin: origin.to_string(),
            key,
            message,
        };
        let c = &self.canary;
        for (i, n) in c.answer_numbers.iter().enumerate() {
            let key = format!("canary.answer_numbers[{i}]");
            if !is_e164(n) {
                return Err(err(
                    key,
                    format!("{n:?} is not an E.164 number such as +31201234567"),
                ));
            }
            if c.answer_numbers[..i].contains(n) {
                return Err(err(key, format!("{n} is listed twice")));
            }
            if self.qa.phone_for(n).is_some() {
                return Err(err(key, format!("{n} is also a [[qa.phones]] number")));
            }
        }
        if c.fail_after == 0 {
            return Err(err("canary.fail_after".into(), "must be at least 1".into()));
        }
        if c.daily_cap == 0 {
            return Err(err("canary.daily_cap".into(), "must be at least 1".into()));
        }
        if c.max_inbound_calls == 0 || c.max_inbound_calls > 1000 {
            return Err(err(
                "canary.max_inbound_calls".into(),
                "must be 1..=1000".into(),
            ));
        }
        if c.arrival_timeout < Duration::from_secs(1)
            || c.arrival_timeout > Duration::from_secs(3600)
        {
            return Err(err(
                "canary.arrival_timeout".into(),
                "must be between 1s and 1h".into(),
            ));
        }
        if c.max_call < Duration::from_secs(5) || c.max_call > Duration::from_secs(3600) {
            return Err(err(
                "canary.max_call".into(),
                "must be between 5s and 1h".into(),
            ));
        }
        let url = c.alert_url.trim();
        if !url.is_empty() {
            let parsed = url::Url::parse(url)
                .ok()
                .filter(|u| matches!(u.scheme(), "http" | "https") && u.host_str().is_some());
            if parsed.is_none() {
                return Err(err(
                    "canary.alert_url".into(),
                    format!("must be an http(s) URL, got {url:?}"),
                ));
            }
            if self.webhooks.secret.is_none() {
                return Err(err(
                    "canary.alert_url".into(),
                    format!(
                        "alerts are signed with the webhook secret, but environment variable {:?} (webhooks.secret_env) is not set",
                        self.webhooks.secret_env
                    ),
                ));
            }
        }
        for (i, entry) in self.canaries.iter().enumerate() {
            self.validate_canary(i, entry)
                .map_err(|(key, message)| err(key, message))?;
        }
        Ok(())
    }

    fn validate_canary(&self, i: usize, e: &CanaryEntry) -> Result<(), (String, String)> {
        let key = |k: &str| format!("canaries[{i}].{k}");
        let valid_name = !e.name.is_empty()
            && e.name.len() <= 64
            && e.name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
        if !valid_name {
            return Err((
                key("name"),
                format!("{:?}: 1 to 64 letters, digits, - _ . only", e.name),
            ));
        }
        if self.canaries[..i].iter().any(|o| o.name == e.name) {
            return Err((key("name"), format!("{:?} is used twice", e.name)));
        }
        if !is_e164(&e.number) {
            return Err((
                key("number"),
                format!("{:?} is not an E.164 number such as +31201234567", e.number),
            ));
        }
        let heard = self.canary.answer_numbers.contains(&e.number)
            || self.qa.phone_for(&e.number).is_some();
        if !heard {
            return Err((
                key("number"),
                format!(
                    "{} is neither in [canary] answer_numbers nor a [[qa.phones]] number: nothing would hear the call",
                    e.number
                ),
            ));
        }
        if let Some(t) = e.trunk() {
            if !self.trunks.iter().any(|tr| tr.name == t) {
                return Err((key("trunk"), format!("no trunk named {t:?}")));
            }
        }
        if e.interval < Duration::from_secs(1) || e.interval > Duration::from_secs(7 * 86_400) {
            return Err((key("interval"), "must be between 1s and 7d".into()));
        }
        Ok(())
    }
}

/// `+` and 8 to 15 digits, as the phone numbers of the config are written.
fn is_e164(n: &str) -> bool {
    crate::domain::PhoneNumber::parse(n, None).is_ok_and(|p| p.as_str() == n)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const TRUNK: &str =
        "[[trunks]]\nname = \"t1\"\nproxy = \"sip:127.0.0.1:5070\"\nfrom = \"sip:1@x\"\n";

    fn load(extra: &str) -> Result<Settings, ConfigError> {
        Settings::from_toml(&format!("{TRUNK}{extra}"))
    }

    #[test]
    fn a_canary_to_an_answer_number_loads() {
        let s = load(
            "[canary]\nanswer_numbers = [\"+31201234567\"]\nfail_after = 3\n\
             [[canaries]]\nname = \"nl-mobile\"\nnumber = \"+31201234567\"\ntrunk = \"t1\"\ninterval = \"2s\"\n",
        )
        .unwrap();
        assert_eq!(s.canaries[0].interval, Duration::from_secs(2));
        assert_eq!(s.canaries[0].trunk(), Some("t1"));
        assert_eq!(s.canary.fail_after, 3);
        assert_eq!(s.canary.daily_cap, 200);
        assert!(Settings::default().canaries.is_empty());
    }

    #[test]
    fn mistakes_are_named() {
        let cases = [
            (
                "[[canaries]]\nname = \"a\"\nnumber = \"+31201234567\"\ninterval = \"1m\"\n",
                "canaries[0].number",
                "nothing would hear",
            ),
            (
                "[canary]\nanswer_numbers = [\"+31201234567\"]\n[[canaries]]\nname = \"a\"\nnumber = \"+31201234567\"\ntrunk = \"nope\"\ninterval = \"1m\"\n",
                "canaries[0].trunk",
                "no trunk named",
            ),
            (
                "[canary]\nanswer_numbers = [\"0201234567\"]\n",
                "canary.answer_numbers[0]",
                "E.164",
            ),
            (
                "[canary]\nanswer_numbers = [\"+31201234567\"]\n[[canaries]]\nname = \"a b\"\nnumber = \"+31201234567\"\ninterval = \"1m\"\n",
                "canaries[0].name",
                "letters",
            ),
            (
                "[canary]\nanswer_numbers = [\"+31201234567\"]\n[[canaries]]\nname = \"a\"\nnumber = \"+31201234567\"\ninterval = \"100ms\"\n",
                "canaries[0].interval",
                "between",
            ),
            ("[canary]\nfail_after = 0\n", "canary.fail_after", "at least 1"),
            (
                "[canary]\nalert_url = \"ftp://x\"\n",
                "canary.alert_url",
                "http(s)",
            ),
        ];
        for (toml, key, words) in cases {
            let e = load(toml).unwrap_err().to_string();
            assert!(e.contains(key) && e.contains(words), "{toml}: {e}");
        }
        let e = load("[canary]\nsurprise = 1\n").unwrap_err().to_string();
        assert!(e.contains("surprise"), "{e}");
    }

    #[test]
    fn an_alert_url_needs_the_webhook_secret() {
        let e = load("[webhooks]\nsecret_env = \"OTPDIAL_TEST_NO_SUCH_SECRET\"\n[canary]\nalert_url = \"https://ops.example/alert\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("canary.alert_url") && e.contains("OTPDIAL_TEST_NO_SUCH_SECRET"),
            "{e}"
        );
    }
}
