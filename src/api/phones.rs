//! `/v1/users/{user_id}/phones`: a user's registered numbers.

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;

use super::auth::Caller;
use super::error::{ApiError, Problem};
use super::verifications::json_body;
use super::AppState;
use crate::config::Scope;
use crate::verify::PhoneList;

/// Replace the user's registered numbers (at most 8, exactly one primary).
#[utoipa::path(
    put,
    path = "/v1/users/{user_id}/phones",
    tag = "phones",
    params(("user_id" = String, Path, min_length = 1, max_length = 128, pattern = "^[^/\\x00-\\x1f\\x7f-\\x9f]+$")),
    request_body = PhoneList,
    responses(
        (status = 200, body = PhoneList),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json"),
        (status = 422, body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub(super) async fn put(
    State(state): State<AppState>,
    caller: Caller,
    Path(user_id): Path<String>,
    body: Result<Json<PhoneList>, JsonRejection>,
) -> Result<Json<PhoneList>, ApiError> {
    caller.require(Scope::Verify)?;
    let list = json_body(body)?;
    Ok(Json(
        state
            .verifier
            .set_phones(&user_id, list, &caller.name)
            .await?,
    ))
}

/// The user's registered numbers, primary first.
#[utoipa::path(
    get,
    path = "/v1/users/{user_id}/phones",
    tag = "phones",
    params(("user_id" = String, Path, min_length = 1, max_length = 128, pattern = "^[^/\\x00-\\x1f\\x7f-\\x9f]+$")),
    responses(
        (status = 200, body = PhoneList),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json"),
        (status = 422, body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub(super) async fn get(
    State(state): State<AppState>,
    caller: Caller,
    Path(user_id): Path<String>,
) -> Result<Json<PhoneList>, ApiError> {
    caller.require(Scope::Verify)?;
    Ok(Json(state.verifier.phones(&user_id).await?))
}

/// Remove one registered number.
#[utoipa::path(
    delete,
    path = "/v1/users/{user_id}/phones/{number}",
    tag = "phones",
    params(("user_id" = String, Path, min_length = 1, max_length = 128, pattern = "^[^/\\x00-\\x1f\\x7f-\\x9f]+$"), ("number" = String, Path, description = "E.164, e.g. +31612345678", pattern = "^\\+[1-9][0-9]{6,14}$")),
    responses(
        (status = 204, description = "Removed"),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 422, body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub(super) async fn delete(
    State(state): State<AppState>,
    caller: Caller,
    Path((user_id, number)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    caller.require(Scope::Verify)?;
    state
        .verifier
        .delete_phone(&user_id, &number, &caller.name)
        .await
        .map_err(|e| match e {
            crate::verify::VerifyError::NotFound => ApiError::not_found("registered number"),
            other => other.into(),
        })?;
    Ok(StatusCode::NO_CONTENT)
}
