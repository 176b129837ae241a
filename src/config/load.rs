//! Loading: figment layering of the file and `OTPDIAL_*` environment overrides,
//! secrets read from the variables `*_env` keys name, and error descriptions that
//! name the key and the file.

use std::path::Path;

use figment::providers::{Env, Format, Toml};
use figment::Figment;

use super::{ConfigError, SecretString, Settings};

/// The defaults, overlaid by the file at `path` (if any), overlaid by the
/// `OTPDIAL_*` environment overrides; not yet validated, secrets not read.
pub(super) fn layered(path: Option<&Path>) -> Result<Settings, ConfigError> {
    let mut figment = Figment::new();
    if let Some(path) = path {
        // Figment treats a missing file as empty; an operator who names
        // a file means it, so a missing or unreadable one is an error.
        std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        figment = figment.merge(Toml::file_exact(path));
    }
    figment
        .merge(env_overrides())
        .extract()
        .map_err(|e| ConfigError::Parse(describe_figment_error(e)))
}

/// The defaults overlaid by TOML text, without the environment.
pub(super) fn parse_str(text: &str) -> Result<Settings, ConfigError> {
    Figment::new()
        .merge(Toml::string(text))
        .extract()
        .map_err(|e| ConfigError::Parse(describe_figment_error(e)))
}

impl Settings {
    pub(super) fn resolve_secrets(&mut self, origin: &str) -> Result<(), ConfigError> {
        if !self.risk.hook_url.trim().is_empty() {
            let var = &self.risk.secret_env;
            let value = std::env::var(var).ok().filter(|v| !v.is_empty());
            self.risk.secret = Some(SecretString::from(value.ok_or_else(|| ConfigError::Invalid {
                origin: origin.to_string(),
                key: "risk.secret_env".into(),
                message: format!(
                    "risk.hook_url is set, so the signing key must be in environment variable {var}, which is not set"
                ),
            })?));
        }
        if !self.webhooks.secret_env.is_empty() {
            self.webhooks.secret = std::env::var(&self.webhooks.secret_env)
                .ok()
                .filter(|s| !s.is_empty())
                .map(SecretString::from);
        }
        for (i, p) in self.qa.phones.iter_mut().enumerate() {
            let var = &p.password_env;
            let value = std::env::var(var)
                .ok()
                .filter(|v| !v.is_empty())
                .ok_or_else(|| ConfigError::Invalid {
                    origin: origin.to_string(),
                    key: format!("qa.phones[{i}].password_env"),
                    message: format!("environment variable {var} is not set"),
                })?;
            p.password = Some(SecretString::from(value));
        }
        for (i, t) in self.trunks.iter_mut().enumerate() {
            if let Some(var) = &t.password_env {
                let value = std::env::var(var).map_err(|_| ConfigError::Invalid {
                    origin: origin.to_string(),
                    key: format!("trunks[{i}].password_env"),
                    message: format!("environment variable {var} is not set"),
                })?;
                t.password = Some(SecretString::from(value));
            }
        }
        Ok(())
    }
}

/// `OTPDIAL_A__B=v` sets `a.b`. Variables without `__` (such as
/// `OTPDIAL_CONFIG` or `OTPDIAL_CODE_KEY`) are not settings and are skipped.
fn env_overrides() -> Env {
    Env::prefixed("OTPDIAL_")
        .filter(|k| k.as_str().contains("__"))
        .split("__")
}

fn describe_figment_error(e: figment::Error) -> String {
    e.into_iter()
        .map(|e| {
            let key = if e.path.is_empty() {
                String::new()
            } else {
                format!(" (key `{}`)", e.path.join("."))
            };
            let source = e
                .metadata
                .as_ref()
                .map(|m| match &m.source {
                    Some(s) => format!(" in {s}"),
                    None => format!(" from {}", m.name),
                })
                .unwrap_or_default();
            let what = match &e.kind {
                // figment's own text nests backquotes ("expected `one of `a`, `b``").
                figment::error::Kind::UnknownField(found, expected) => format!(
                    "unknown key `{found}`; the keys here are: {}",
                    expected.join(", ")
                ),
                figment::error::Kind::UnknownVariant(found, expected) => format!(
                    "unknown value `{found}`; one of: {}",
                    expected.join(", ")
                ),
                // humantime-serde says only "expected a duration": show the form.
                figment::error::Kind::InvalidValue(actual, expected)
                    if expected.contains("duration") =>
                {
                    format!(
                        "invalid value {actual}, expected a duration such as \"500ms\", \"30s\", \"10m\" or \"1h 30m\""
                    )
                }
                kind => kind.to_string(),
            };
            format!("{what}{key}{source}")
        })
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_key_is_named() {
        let e = Settings::from_toml("[verification]\ncode_lenght = 6\n").unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("code_lenght"), "{msg}");
        assert!(
            msg.contains("unknown key `code_lenght`; the keys here are: code_length, ttl"),
            "{msg}"
        );
    }

    #[test]
    fn a_named_file_must_exist_and_its_errors_name_it() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.toml");
        let e = layered(Some(&missing)).unwrap_err();
        assert!(matches!(e, ConfigError::Read { .. }), "{e}");
        assert!(e.to_string().contains("missing.toml"), "{e}");

        let file = dir.path().join("bad.toml");
        std::fs::write(&file, "[dialer]\nlease = \"soon\"\n").unwrap();
        let e = layered(Some(&file)).unwrap_err().to_string();
        assert!(
            e.contains("dialer.lease") && e.contains("bad.toml"),
            "key and file named: {e}"
        );
    }
}
