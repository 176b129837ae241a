//! A user's registered numbers: replace, list, delete.

use serde::Serialize;

use super::{invalid, validate_user_id, Verifier, VerifyError};
use crate::domain::{self, PhoneNumber};
use crate::store::PhoneRow;

/// At most this many registered numbers per user (SPEC §3).
pub const MAX_PHONES: usize = 8;

/// A registered number as the API shows it.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq, utoipa::ToSchema)]
pub struct PhoneEntry {
    /// E.164 (`+31612345678`), or national with the configured default region.
    #[schema(min_length = 3, max_length = 32, pattern = "^\\+?[0-9 ().-]+$")]
    pub number: String,
    #[serde(default)]
    pub primary: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(max_length = 64)]
    pub label: Option<String>,
    /// Prompt pack this number hears when a verification names none (one of the
    /// installed packs); unset = by the number's country (`locale_by_prefix`), else
    /// `default_locale`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(max_length = 16, example = "nl")]
    pub locale: Option<String>,
}

#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PhoneList {
    /// At most 8; exactly one primary (none when empty).
    #[schema(max_items = 8)]
    pub phones: Vec<PhoneEntry>,
}

impl Verifier {
    /// Replaces a user's registered numbers: at most 8, exactly one
    /// primary, each a valid number (normalised to E.164), no duplicates.
    pub async fn set_phones(
        &self,
        user_id: &str,
        list: PhoneList,
        actor: &str,
    ) -> Result<PhoneList, VerifyError> {
        validate_user_id(user_id)?;
        if list.phones.len() > MAX_PHONES {
            return Err(invalid(
                "phones",
                format!("at most {MAX_PHONES} numbers per user"),
            ));
        }
        let primaries = list.phones.iter().filter(|p| p.primary).count();
        if !list.phones.is_empty() && primaries != 1 {
            return Err(invalid(
                "phones",
                format!("exactly one number must be primary, got {primaries}"),
            ));
        }
        let mut rows: Vec<PhoneRow> = Vec::with_capacity(list.phones.len());
        for (i, p) in list.phones.iter().enumerate() {
            let n = PhoneNumber::parse(&p.number, self.settings.verification.region())
                .map_err(|e| invalid("phones", format!("phones[{i}].number: {e}")))?;
            if rows.iter().any(|r| r.number == n.as_str()) {
                return Err(invalid(
                    "phones",
                    format!("phones[{i}].number: listed twice"),
                ));
            }
            if let Some(label) = &p.label {
                if label.chars().count() > 64 || label.chars().any(char::is_control) {
                    return Err(invalid(
                        "phones",
                        format!("phones[{i}].label: at most 64 printable characters"),
                    ));
                }
            }
            if let Some(locale) = &p.locale {
                if !self.locales.contains(locale) {
                    return Err(invalid(
                        "phones",
                        format!(
                            "phones[{i}].locale: no prompt pack {locale:?}; installed: {}",
                            self.locales.join(", ")
                        ),
                    ));
                }
            }
            rows.push(PhoneRow {
                number: n.as_str().to_string(),
                primary: p.primary,
                label: p.label.clone(),
                locale: p.locale.clone(),
            });
        }
        self.store
            .replace_phones(user_id, &rows, domain::now_ms())
            .await?;
        self.audit(
            actor,
            "phones.replace",
            Some(user_id),
            "ok",
            Some(&format!("{} numbers", rows.len())),
        )
        .await;
        self.phones(user_id).await
    }

    pub async fn phones(&self, user_id: &str) -> Result<PhoneList, VerifyError> {
        validate_user_id(user_id)?;
        let rows = self.store.phones(user_id).await?;
        Ok(PhoneList {
            phones: rows
                .into_iter()
                .map(|r| PhoneEntry {
                    number: r.number,
                    primary: r.primary,
                    label: r.label,
                    locale: r.locale,
                })
                .collect(),
        })
    }

    pub async fn delete_phone(
        &self,
        user_id: &str,
        number: &str,
        actor: &str,
    ) -> Result<(), VerifyError> {
        validate_user_id(user_id)?;
        let n = PhoneNumber::parse(number, self.settings.verification.region())
            .map_err(|e| invalid("number", e.to_string()))?;
        if !self.store.delete_phone(user_id, n.as_str()).await? {
            return Err(VerifyError::NotFound);
        }
        self.audit(
            actor,
            "phones.delete",
            Some(user_id),
            "ok",
            Some(&n.masked()),
        )
        .await;
        Ok(())
    }
}
