//! Calling by country (SPEC §7): `[[caller_ids]]` pools, `[verification]
//! locale_by_prefix`, `[dialer] routing`, and their checks. Longest-prefix lookups
//! are pure and live here so that the verification service and the dialer share them.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{ConfigError, Settings};

/// One `[[caller_ids]]` pool: the numbers shown to callees whose number starts with
/// `prefix`, used in rotation.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CallerIdPool {
    /// E.164 prefix of the destinations (`"+31"`); the longest matching pool wins.
    pub prefix: String,
    /// E.164 caller IDs, shown in rotation.
    pub numbers: Vec<String>,
    /// Only on this trunk; empty = on every trunk.
    #[serde(default)]
    pub trunk: String,
    /// A number whose answer rate falls below `rest_below` × its pool's is rested.
    #[serde(default = "default_rest_below")]
    pub rest_below: f64,
    /// How long a rested number stays out of rotation.
    #[serde(default = "default_rest_time", with = "humantime_serde")]
    pub rest_time: Duration,
    /// Calls a number must have placed (that reached the callee) in the window before
    /// its rate is judged.
    #[serde(default = "default_rest_min_calls")]
    pub rest_min_calls: u32,
}

fn default_rest_below() -> f64 {
    0.5
}
fn default_rest_time() -> Duration {
    Duration::from_secs(24 * 3600)
}
fn default_rest_min_calls() -> u32 {
    10
}

impl CallerIdPool {
    /// The trunk this pool is bound to, if any.
    pub fn trunk(&self) -> Option<&str> {
        (!self.trunk.trim().is_empty()).then_some(self.trunk.as_str())
    }

    /// Whether this pool applies to a call to `number` on `trunk`.
    pub fn applies(&self, number: &str, trunk: &str) -> bool {
        number.starts_with(self.prefix.as_str()) && self.trunk().is_none_or(|t| t == trunk)
    }

    /// The pool's name in the API, metrics and the store: its prefix, and its trunk
    /// when bound to one (`+31@carrier-a`).
    pub fn name(&self) -> String {
        match self.trunk() {
            Some(t) => format!("{}@{t}", self.prefix),
            None => self.prefix.clone(),
        }
    }
}

/// `[dialer] routing`: how the trunks that carry a number are ordered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RoutingMode {
    /// By `priority` (lower first), usable trunks before down ones.
    #[default]
    Priority,
    /// By recent answer rate for the destination country, near-ties by
    /// `cost_per_minute`, with a small exploratory share.
    Quality,
}

impl RoutingMode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Priority => "priority",
            Self::Quality => "quality",
        }
    }
}

/// The value of the longest key of `map` that `number` starts with.
pub fn longest_prefix<'a, V>(
    map: impl IntoIterator<Item = (&'a String, V)>,
    number: &str,
) -> Option<V> {
    map.into_iter()
        .filter(|(p, _)| number.starts_with(p.as_str()))
        .max_by_key(|(p, _)| p.len())
        .map(|(_, v)| v)
}

impl Settings {
    /// The pool that gives a call to `number` on `trunk` its caller ID: the longest
    /// matching prefix; at equal length a pool bound to the trunk beats an unbound one.
    pub fn caller_id_pool(&self, number: &str, trunk: &str) -> Option<&CallerIdPool> {
        self.caller_ids
            .iter()
            .filter(|p| p.applies(number, trunk))
            .max_by_key(|p| (p.prefix.len(), p.trunk().is_some()))
    }

    /// The prompt pack `[verification] locale_by_prefix` names for `number`.
    pub fn locale_by_country(&self, number: &str) -> Option<&str> {
        longest_prefix(&self.verification.locale_by_prefix, number).map(String::as_str)
    }

    pub(super) fn validate_routing(&self, origin: &str) -> Result<(), ConfigError> {
        let err = |key: String, message: String| ConfigError::Invalid {
            origin: origin.to_string(),
            key,
            message,
        };
        for (prefix, locale) in &self.verification.locale_by_prefix {
            let key = format!("verification.locale_by_prefix.\"{prefix}\"");
            if !super::validate::is_e164_prefix(prefix) {
                return Err(err(
                    key,
                    format!("{prefix:?} must be an E.164 prefix such as \"+31\""),
                ));
            }
            if locale.trim().is_empty() {
                return Err(err(key, "must name a prompt pack such as \"nl\"".into()));
            }
        }
        for (i, pool) in self.caller_ids.iter().enumerate() {
            let key = |k: &str| format!("caller_ids[{i}].{k}");
            if !super::validate::is_e164_prefix(&pool.prefix) {
                return Err(err(
                    key("prefix"),
                    format!("{:?} must be an E.164 prefix such as \"+31\"", pool.prefix),
                ));
            }
            if pool.numbers.is_empty() {
                return Err(err(
                    key("numbers"),
                    format!("the pool for {} has no numbers", pool.prefix),
                ));
            }
            for (j, n) in pool.numbers.iter().enumerate() {
                if !crate::domain::PhoneNumber::parse(n, None).is_ok_and(|p| p.as_str() == n) {
                    return Err(err(
                        format!("caller_ids[{i}].numbers[{j}]"),
                        format!("{n:?} is not an E.164 number such as +31508200000"),
                    ));
                }
                if pool.numbers[..j].contains(n) {
                    return Err(err(
                        format!("caller_ids[{i}].numbers[{j}]"),
                        format!("{n} is listed twice"),
                    ));
                }
            }
            if let Some(t) = pool.trunk() {
                if !self.trunks.iter().any(|x| x.name == t) {
                    return Err(err(key("trunk"), format!("no trunk is named {t:?}")));
                }
            }
            if !(pool.rest_below >= 0.0 && pool.rest_below <= 1.0) {
                return Err(err(
                    key("rest_below"),
                    format!("must be between 0 and 1, got {}", pool.rest_below),
                ));
            }
            if pool.rest_time < Duration::from_secs(1) {
                return Err(err(key("rest_time"), "must be at least 1s".into()));
            }
            if pool.rest_min_calls == 0 {
                return Err(err(key("rest_min_calls"), "must be at least 1".into()));
            }
            let name = pool.name();
            if self.caller_ids[..i].iter().any(|p| p.name() == name) {
                return Err(err(
                    key("prefix"),
                    format!("a pool for {name} is configured twice"),
                ));
            }
        }
        for (i, t) in self.trunks.iter().enumerate() {
            if let Some(c) = t.cost_per_minute {
                if !(c.is_finite() && c >= 0.0) {
                    return Err(err(
                        format!("trunks[{i}].cost_per_minute"),
                        format!("must be 0 or more, got {c}"),
                    ));
                }
            }
        }
        let w = self.dialer.quality_window;
        if w < Duration::from_secs(60) || w > Duration::from_secs(7 * 24 * 3600) {
            return Err(err(
                "dialer.quality_window".into(),
                "must be between 1m and 7d".into(),
            ));
        }
        if !(0.0..=0.5).contains(&self.dialer.explore_share) {
            return Err(err(
                "dialer.explore_share".into(),
                format!("must be 0..=0.5, got {}", self.dialer.explore_share),
            ));
        }
        Ok(())
    }

    /// With `routing = "quality"`: the trunks without `cost_per_minute` (counted as 0).
    pub fn trunks_without_cost(&self) -> Vec<&str> {
        if self.dialer.routing != RoutingMode::Quality {
            return Vec::new();
        }
        self.trunks
            .iter()
            .filter(|t| t.cost_per_minute.is_none())
            .map(|t| t.name.as_str())
            .collect()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const TRUNKS: &str = "[[trunks]]\nname = \"a\"\nproxy = \"sip:127.0.0.1:5070\"\nfrom = \"sip:+31508200000@x\"\n[[trunks]]\nname = \"b\"\nproxy = \"sip:127.0.0.1:5080\"\nfrom = \"sip:+31508200000@x\"\n";

    #[test]
    fn longest_prefix_wins() {
        let s = Settings::from_toml(&format!(
            "{TRUNKS}[verification]\nlocale_by_prefix = {{ \"+3\" = \"en\", \"+31\" = \"nl\", \"+316\" = \"en\" }}\n"
        ))
        .unwrap();
        assert_eq!(s.locale_by_country("+31201234567"), Some("nl"));
        assert_eq!(s.locale_by_country("+31612345678"), Some("en"));
        assert_eq!(s.locale_by_country("+32123"), Some("en"));
        assert_eq!(s.locale_by_country("+44123"), None);
    }

    #[test]
    fn pools_by_prefix_and_trunk() {
        let s = Settings::from_toml(&format!(
            "{TRUNKS}[[caller_ids]]\nprefix = \"+31\"\nnumbers = [\"+31508200000\"]\n\
             [[caller_ids]]\nprefix = \"+31\"\ntrunk = \"b\"\nnumbers = [\"+31508200001\"]\n\
             [[caller_ids]]\nprefix = \"+3161\"\nnumbers = [\"+31508200002\"]\n"
        ))
        .unwrap();
        let name = |n: &str, t: &str| s.caller_id_pool(n, t).map(CallerIdPool::name);
        assert_eq!(name("+31201234567", "a").as_deref(), Some("+31"));
        assert_eq!(name("+31201234567", "b").as_deref(), Some("+31@b"));
        assert_eq!(name("+31612345678", "b").as_deref(), Some("+3161"));
        assert_eq!(name("+44201234567", "a"), None);
        let p = &s.caller_ids[0];
        assert_eq!(
            (p.rest_below, p.rest_time),
            (0.5, Duration::from_secs(86400))
        );
    }

    #[test]
    fn bad_routing_keys_are_named() {
        let cases = [
            ("[[caller_ids]]\nprefix = \"31\"\nnumbers = [\"+31508200000\"]\n", "caller_ids[0].prefix"),
            ("[[caller_ids]]\nprefix = \"+31\"\nnumbers = []\n", "caller_ids[0].numbers"),
            ("[[caller_ids]]\nprefix = \"+31\"\nnumbers = [\"0508200000\"]\n", "caller_ids[0].numbers[0]"),
            ("[[caller_ids]]\nprefix = \"+31\"\nnumbers = [\"+31508200000\"]\ntrunk = \"zz\"\n", "caller_ids[0].trunk"),
            ("[[caller_ids]]\nprefix = \"+31\"\nnumbers = [\"+31508200000\"]\nrest_below = 2.0\n", "caller_ids[0].rest_below"),
            ("[verification]\nlocale_by_prefix = { \"31\" = \"nl\" }\n", "verification.locale_by_prefix.\"31\""),
            ("[dialer]\nrouting = \"cheapest\"\n", "routing"),
        ];
        for (extra, key) in cases {
            let e = Settings::from_toml(&format!("{TRUNKS}{extra}"))
                .unwrap_err()
                .to_string();
            assert!(e.contains(key), "{extra}: {e}");
        }
        let e = Settings::from_toml(&TRUNKS.replacen(
            "from = \"sip:+31508200000@x\"\n",
            "from = \"sip:+31508200000@x\"\ncost_per_minute = -1.0\n",
            1,
        ))
        .unwrap_err()
        .to_string();
        assert!(e.contains("trunks[0].cost_per_minute"), "{e}");
    }

    #[test]
    fn quality_routing_lists_trunks_without_a_cost() {
        let s = Settings::from_toml(&format!("{TRUNKS}[dialer]\nrouting = \"quality\"\n")).unwrap();
        assert_eq!(s.trunks_without_cost(), vec!["a", "b"]);
        let s = Settings::from_toml(TRUNKS).unwrap();
        assert!(
            s.trunks_without_cost().is_empty(),
            "priority routing needs no cost"
        );
    }
}
