//! `/v1/verifications`: start, read, check.

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;

use super::auth::Caller;
use super::error::ApiError;
use super::AppState;
use crate::config::Scope;
use crate::verify::{StartRequest, Started, VerificationView};

pub(super) fn json_body<T>(body: Result<Json<T>, JsonRejection>) -> Result<T, ApiError> {
    body.map(|Json(v)| v).map_err(|e| match e {
        JsonRejection::MissingJsonContentType(_) => {
            ApiError::bad_request("expected `Content-Type: application/json`")
        }
        JsonRejection::JsonDataError(e) => ApiError::unprocessable(e.body_text()),
        other => ApiError::bad_request(other.body_text()),
    })
}

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
    let started = state.verifier.start(req, &caller.name, idem).await?;
    let view = match started {
        Started::Created(v) | Started::Repeated(v) => v,
    };
    Ok(created(view))
}

fn created(view: VerificationView) -> Response {
    let location = format!("/v1/verifications/{}", view.id);
    let mut resp = (StatusCode::CREATED, Json(view)).into_response();
    if let Ok(v) = HeaderValue::from_str(&location) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    resp
}

pub(super) async fn get(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<VerificationView>, ApiError> {
    caller.require(Scope::Verify)?;
    valid_id(&id)?;
    Ok(Json(state.verifier.view(&id).await?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct CheckBody {
    code: String,
}

pub(super) async fn check(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    body: Result<Json<CheckBody>, JsonRejection>,
) -> Result<Response, ApiError> {
    caller.require(Scope::Verify)?;
    valid_id(&id)?;
    let body = json_body(body)?;
    if body.code.len() > 64 {
        return Err(ApiError::unprocessable("code: too long"));
    }
    let result = state.verifier.check(&id, &body.code).await?;
    Ok(Json(result).into_response())
}
