//! The one place that decides what a client sees of an error: RFC 9457
//! `application/problem+json`, internals logged but never shown.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::verify::VerifyError;

#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    title: &'static str,
    detail: String,
    retry_after: Option<u64>,
}

/// RFC 9457 problem details, as every error response carries them.
#[derive(Serialize, utoipa::ToSchema)]
pub struct Problem {
    /// Always `about:blank`: the status code and title say what happened.
    #[serde(rename = "type")]
    pub kind: String,
    pub title: String,
    pub status: u16,
    pub detail: String,
}

impl ApiError {
    pub fn new(status: StatusCode, title: &'static str, detail: impl Into<String>) -> Self {
        Self {
            status,
            title,
            detail: detail.into(),
            retry_after: None,
        }
    }

    pub fn unauthorized() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "Unauthorized",
            "a valid `Authorization: Bearer <token>` header is required",
        )
    }

    pub fn forbidden(scope: &str) -> Self {
        Self::new(
            StatusCode::FORBIDDEN,
            "Forbidden",
            format!("this API key lacks the `{scope}` scope"),
        )
    }

    pub fn not_found(what: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "Not Found",
            format!("{what} not found"),
        )
    }

    pub fn bad_request(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "Bad Request", detail)
    }

    pub fn unprocessable(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Unprocessable Content",
            detail,
        )
    }

    pub fn internal() -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "Internal Server Error",
            "the gateway could not complete the request; see its logs",
        )
    }

    pub fn unavailable(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "Service Unavailable",
            detail,
        )
    }

    pub fn too_many(detail: impl Into<String>, retry_after_secs: u64) -> Self {
        Self {
            retry_after: Some(retry_after_secs.max(1)),
            ..Self::new(StatusCode::TOO_MANY_REQUESTS, "Too Many Requests", detail)
        }
    }

    pub fn status(&self) -> StatusCode {
        self.status
    }
}

/// `Retry-After` of a 503 for a full database: freeing space takes an operator.
const STORAGE_FULL_RETRY_SECS: u64 = 30;

/// A database that cannot be reached, or whose storage is full, is a 503 with `Retry-After` (the
/// client may try again shortly, nothing was lost); anything else the store
/// says is a 500 whose details stay in the log.
impl From<crate::store::StoreError> for ApiError {
    fn from(e: crate::store::StoreError) -> Self {
        if e.is_storage_full() {
            tracing::error!(error = %e, "database storage is full: new data cannot be stored until space is freed");
            Self {
                retry_after: Some(STORAGE_FULL_RETRY_SECS),
                ..ApiError::unavailable(
                    "the gateway cannot store anything new: its database storage is full; \
                     try again later (operators: free space where the database lives)",
                )
            }
        } else if e.is_unavailable() {
            tracing::warn!(error = %e, "database unreachable while serving a request");
            Self {
                retry_after: Some(1),
                ..ApiError::unavailable("the database is unreachable; try again shortly")
            }
        } else {
            tracing::error!(error = %e, "store error while serving a request");
            ApiError::internal()
        }
    }
}

impl From<VerifyError> for ApiError {
    fn from(e: VerifyError) -> Self {
        match e {
            VerifyError::Invalid { .. } => ApiError::unprocessable(e.to_string()),
            VerifyError::Refused(_) => ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "Destination Not Allowed",
                e.to_string(),
            ),
            VerifyError::RateLimited {
                limit,
                retry_after_secs,
            } => ApiError::too_many(
                format!("rate limit `limits.{limit}` reached; retry after {retry_after_secs} s"),
                retry_after_secs,
            ),
            VerifyError::Conflict(_) => {
                ApiError::new(StatusCode::CONFLICT, "Conflict", e.to_string())
            }
            VerifyError::NotFound => ApiError::not_found("verification"),
            VerifyError::Store(inner) => ApiError::from(inner),
            VerifyError::Seal(inner) => {
                tracing::error!(error = %inner, "code sealing failed");
                ApiError::internal()
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::to_vec(&Problem {
            kind: "about:blank".into(),
            title: self.title.into(),
            status: self.status.as_u16(),
            detail: self.detail,
        })
        .unwrap_or_default();
        let mut resp = (self.status, body).into_response();
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if let Some(secs) = self.retry_after {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        resp
    }
}
