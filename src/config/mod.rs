//! Typed settings (SPEC §2): a TOML file layered with `OTPDIAL_*` environment
//! overrides (`OTPDIAL_DATABASE__URL` sets `database.url`), secrets read from
//! the variables named by `*_env` keys, and validation whose messages name
//! the key and the file.
//!
//! `schema` holds the sections and their defaults, `values` the value types
//! (secrets, rate limits, SIP targets, ...), `load` the layering and the secrets,
//! `validate` the checks; this module the entry points, and every public type is
//! re-exported here (`otpdial::config::TrunkSettings`).

use std::path::{Path, PathBuf};

mod canary;
mod load;
mod routing;
mod schema;
mod validate;
mod values;

pub use canary::{CanaryEntry, CanarySettings};
pub use routing::{longest_prefix, CallerIdPool, RoutingMode};
pub use schema::*;
pub use validate::MIN_RETENTION;
pub use values::*;

pub use crate::domain::NumberKind;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config error: {0}")]
    Parse(String),
    #[error("config error in {origin}: key `{key}`: {message}")]
    Invalid {
        origin: String,
        key: String,
        message: String,
    },
}

impl Settings {
    /// Reads `path` (if any), applies `OTPDIAL_*` overrides, resolves secrets
    /// from the environment and validates everything.
    pub fn load(path: Option<&Path>) -> Result<Settings, ConfigError> {
        let mut settings = load::layered(path)?;
        let origin = path.map_or_else(|| "environment".to_string(), |p| p.display().to_string());
        settings.resolve_secrets(&origin)?;
        settings.validate(&origin)?;
        Ok(settings)
    }

    /// Parses a TOML string (tests and embedded defaults); no environment.
    pub fn from_toml(text: &str) -> Result<Settings, ConfigError> {
        let mut settings = load::parse_str(text)?;
        settings.resolve_secrets("inline config")?;
        settings.validate("inline config")?;
        Ok(settings)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_masked_when_printed() {
        let s = Settings::from_toml(
            "[[trunks]]\nname = \"a\"\nproxy = \"sip:127.0.0.1\"\nusername = \"u\"\npassword = \"hunter2\"\nfrom = \"sip:1@x\"\n",
        )
        .unwrap();
        let shown = toml::to_string(&s).unwrap();
        assert!(!shown.contains("hunter2"));
        assert!(format!("{s:?}").contains("[REDACTED]"));
        assert!(!format!("{s:?}").contains("hunter2"));
    }
}
