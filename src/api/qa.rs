//! QA phones (scope `admin`): the softphones of `[[qa.phones]]` and whether they are
//! registered to the gateway's QA registrar now.

use axum::extract::State;
use axum::Json;
use serde::{Deserialize, Serialize};

use super::auth::Caller;
use super::error::{ApiError, Problem};
use super::AppState;
use crate::config::Scope;
use crate::domain;
use crate::sync::lock;

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
    let now = std::time::Instant::now();
    let now_ms = domain::now_ms();
    let bindings = lock(&state.qa).clone();
    let phones = state
        .settings
        .qa
        .phones
        .iter()
        .map(|p| {
            // A binding whose TCP/TLS connection closed cannot be called: not registered.
            let b = bindings
                .get(&p.username)
                .filter(|b| b.expires_at > now && !b.flow_closed);
            let left = b.map(|b| b.expires_at.duration_since(now));
            QaPhoneView {
                username: p.username.clone(),
                number: p.number.clone(),
                registered: b.is_some(),
                contact: b.map(|b| b.contact.clone()),
                source: b.map(|b| {
                    let t = match b.transport {
                        crate::sip::Transport::Udp => "udp",
                        crate::sip::Transport::Tcp => "tcp",
                        crate::sip::Transport::Tls => "tls",
                    };
                    format!("{t}:{}", b.source)
                }),
                expires: left.map(|d| {
                    let ms = i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
                    domain::format_ms(now_ms.saturating_add(ms))
                }),
                expires_in: left.map(|d| d.as_secs()),
            }
        })
        .collect();
    Ok(Json(QaPhoneList { phones }))
}
