//! `/v1/verifications`: start, read, check, cancel.

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;

use super::auth::Caller;
use super::error::{ApiError, Problem};
use super::AppState;
use crate::config::Scope;
use crate::verify::{CheckResult, StartRequest, VerificationView};

pub(super) fn json_body<T>(body: Result<Json<T>, JsonRejection>) -> Result<T, ApiError> {
    body.map(|Json(v)| v).map_err(|e| match e {
        JsonRejection::MissingJsonContentType(_) => {
            ApiError::bad_request("expected `Content-Type: application/json`")
        }
        JsonRejection::JsonDataError(e) => ApiError::unprocessable(e.body_text()),
        other => ApiError::bad_request(other.body_text()),
    })
}

/// Ids are `vf_` + a ULID; anything else cannot exist.
fn valid_id(id: &str) -> Result<(), ApiError> {
    if id.len() <= 64
        && id.starts_with("vf_")
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
    {
        Ok(())
    } else {
        Err(ApiError::not_found("verification"))
    }
}

/// Start a verification: the gateway calls the number and reads the code.
#[utoipa::path(
    post,
    path = "/v1/verifications",
    tag = "verifications",
    request_body = StartRequest,
    params(("Idempotency-Key" = Option<String>, Header, description = "A repeat with the same key returns the first answer")),
    responses(
        (status = 201, description = "Created; the call is queued", body = VerificationView,
         headers(("Location" = String, description = "/v1/verifications/{id}"))),
        (status = 400, description = "Malformed request", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or wrong token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Token lacks the verify scope", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid or refused input", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "A rate limit is reached (see Retry-After)", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub(super) async fn start(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    body: Result<Json<StartRequest>, JsonRejection>,
) -> Result<Response, ApiError> {
    caller.require(Scope::Verify)?;
    let req = json_body(body)?;
    let idem = match headers.get("idempotency-key") {
        Some(v) => Some(
            v.to_str()
                .map_err(|_| ApiError::bad_request("Idempotency-Key must be visible ASCII"))?,
        ),
        None => None,
    };
    let view = state.verifier.start(req, &caller.name, idem).await?;
    let location = format!("/v1/verifications/{}", view.id);
    let mut resp = (StatusCode::CREATED, Json(view)).into_response();
    if let Ok(v) = HeaderValue::from_str(&location) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    Ok(resp)
}

/// Read a verification and its call's progress.
#[utoipa::path(
    get,
    path = "/v1/verifications/{id}",
    tag = "verifications",
    params(("id" = String, Path, description = "Verification id (vf_...)", pattern = "^vf_[0-9A-Za-z_]{1,61}$")),
    responses(
        (status = 200, body = VerificationView),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub(super) async fn get(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<VerificationView>, ApiError> {
    caller.require(Scope::Verify)?;
    valid_id(&id)?;
    Ok(Json(state.verifier.view(&id).await?))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct CheckBody {
    /// The digits the user typed.
    #[schema(max_length = 64)]
    code: String,
}

/// Check the code the user typed. Each wrong code costs an attempt.
#[utoipa::path(
    post,
    path = "/v1/verifications/{id}/check",
    tag = "verifications",
    params(("id" = String, Path, description = "Verification id (vf_...)", pattern = "^vf_[0-9A-Za-z_]{1,61}$")),
    request_body = CheckBody,
    responses(
        (status = 200, description = "Checked; `valid` says whether it matched (an unknown id answers like a closed verification)", body = CheckResult),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "Not a verification id at all (malformed)", body = Problem, content_type = "application/problem+json"),
        (status = 422, body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub(super) async fn check(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    body: Result<Json<CheckBody>, JsonRejection>,
) -> Result<Json<CheckResult>, ApiError> {
    caller.require(Scope::Verify)?;
    valid_id(&id)?;
    let body = json_body(body)?;
    if body.code.chars().count() > 64 {
        return Err(ApiError::unprocessable("code: too long"));
    }
    Ok(Json(
        state.verifier.check(&id, &body.code, &caller.name).await?,
    ))
}

/// Cancel a pending verification; hangs up its call if it is still up.
#[utoipa::path(
    post,
    path = "/v1/verifications/{id}/cancel",
    tag = "verifications",
    params(("id" = String, Path, description = "Verification id (vf_...)", pattern = "^vf_[0-9A-Za-z_]{1,61}$")),
    responses(
        (status = 200, body = VerificationView),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Already approved, failed or expired", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub(super) async fn cancel(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<VerificationView>, ApiError> {
    caller.require(Scope::Verify)?;
    valid_id(&id)?;
    Ok(Json(state.verifier.cancel(&id, &caller.name).await?))
}
