//! QA phones (scope `admin`): the softphones of `[[qa.phones]]` and whether they are
//! registered to the gateway's QA registrar now. The registrations come through a read
//! model ([`QaRegistrations`]) that `app.rs` builds over the SIP registrar's table, so
//! the API names no SIP type.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::Json;
use serde::{Deserialize, Serialize};

use super::auth::Caller;
use super::error::{ApiError, Problem};
use super::AppState;
use crate::config::Scope;
use crate::domain;

/// A QA phone's registration that can be called now (not expired, its connection
/// open), as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QaRegistration {
    /// The Contact URI it registered.
    pub contact: String,
    /// Where its REGISTER came from and calls go: `udp:203.0.113.5:5062`.
    pub source: String,
    /// Until the registration runs out.
    pub expires_in: Duration,
}

/// Reads the live registrations, by username.
pub type QaRegistrations = Arc<dyn Fn() -> HashMap<String, QaRegistration> + Send + Sync>;

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub(super) struct QaPhoneView {
    pub(super) username: String,
    /// Verifications to this number ring the phone.
    pub(super) number: String,
    pub(super) registered: bool,
    /// The Contact URI it registered (calls' Request-URI); null when not registered.
    pub(super) contact: Option<String>,
    /// Where its REGISTER came from and calls go (`udp:203.0.113.5:5062`).
    pub(super) source: Option<String>,
    /// When the registration runs out (RFC 3339); null when not registered.
    pub(super) expires: Option<String>,
    /// Seconds until then.
    pub(super) expires_in: Option<u64>,
}

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub(super) struct QaPhoneList {
    pub(super) phones: Vec<QaPhoneView>,
}

/// Each configured QA phone with its registration.
#[utoipa::path(
    get,
    path = "/v1/qa/phones",
    tag = "operations",
    responses(
        (status = 200, body = QaPhoneList),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub(super) async fn phones(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<QaPhoneList>, ApiError> {
    caller.require(Scope::Admin)?;
    let now_ms = domain::now_ms();
    let registrations = (state.qa)();
    let phones = state
        .settings
        .qa
        .phones
        .iter()
        .map(|p| {
            let r = registrations.get(&p.username);
            QaPhoneView {
                username: p.username.clone(),
                number: p.number.clone(),
                registered: r.is_some(),
                contact: r.map(|r| r.contact.clone()),
                source: r.map(|r| r.source.clone()),
                expires: r.map(|r| {
                    let ms = i64::try_from(r.expires_in.as_millis()).unwrap_or(i64::MAX);
                    domain::format_ms(now_ms.saturating_add(ms))
                }),
                expires_in: r.map(|r| r.expires_in.as_secs()),
            }
        })
        .collect();
    Ok(Json(QaPhoneList { phones }))
}
