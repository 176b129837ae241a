//! Plain `[sip]` and `[qa]` settings translated into the SIP user agent's own types: the
//! one place where configuration meets `sip`, so that `config` names no SIP type.

use secrecy::ExposeSecret;

use crate::config::{QaSettings, SipSettings, UnknownSourcesSetting};
use crate::sip::policy::{PolicyConfig, UnknownSources};
use crate::sip::{QaAccount, RegistrarConfig};

/// The listener policy `[sip]` describes.
pub(super) fn policy(sip: &SipSettings) -> PolicyConfig {
    PolicyConfig {
        unknown_sources: match sip.unknown_sources {
            UnknownSourcesSetting::Drop => UnknownSources::Drop,
            UnknownSourcesSetting::Forbid => UnknownSources::Forbid,
        },
        ban_after_failures: sip.ban_after_failures,
        ban_time: sip.ban_time,
        request_limit: sip.request_limit.count,
        request_window: sip.request_limit.per,
    }
}

/// The registrar the SIP user agent runs for `[[qa.phones]]`; None without phones.
pub(super) fn registrar(qa: &QaSettings) -> Option<RegistrarConfig> {
    if qa.phones.is_empty() {
        return None;
    }
    Some(RegistrarConfig {
        realm: qa.realm.clone(),
        accounts: qa
            .phones
            .iter()
            .map(|p| QaAccount {
                username: p.username.clone(),
                password: p
                    .password
                    .as_ref()
                    .map(|s| s.expose_secret().to_string())
                    .unwrap_or_default(),
            })
            .collect(),
        min_expires: qa.min_expires,
        max_expires: qa.max_expires,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap
mod tests {
    use super::*;
    use crate::config::Settings;
    use std::time::Duration;

    #[test]
    fn sip_settings_become_the_listener_policy() {
        let s = Settings::from_toml(
            "[sip]\nunknown_sources = \"403\"\nban_after_failures = 3\nban_time = \"1h\"",
        )
        .unwrap();
        let p = policy(&s.sip);
        assert_eq!(p.unknown_sources, UnknownSources::Forbid);
        assert_eq!(
            (p.ban_after_failures, p.ban_time, p.request_limit),
            (3, Duration::from_secs(3600), s.sip.request_limit.count)
        );
        let p = policy(&Settings::from_toml("").unwrap().sip);
        assert_eq!(p.unknown_sources, UnknownSources::Drop);
    }

    #[test]
    fn a_registrar_only_with_qa_phones() {
        assert!(registrar(&Settings::from_toml("").unwrap().qa).is_none());
    }
}
