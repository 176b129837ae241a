//! HTTP API (axum): `router(state)` builds every route. Handlers only call
//! the verification service and the store; they know nothing of SIP or RTP.

mod auth;
mod error;
mod verifications;

pub use auth::{hash_token, new_token, ApiKey};
pub use error::ApiError;

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::Router;

use crate::store::Store;
use crate::verify::Verifier;

#[derive(Clone)]
pub struct AppState {
    pub verifier: Verifier,
    pub store: Store,
    pub api_keys: Arc<Vec<ApiKey>>,
    pub trunk_count: usize,
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/v1/verifications", post(verifications::start))
        .route("/v1/verifications/{id}", get(verifications::get))
        .route("/v1/verifications/{id}/check", post(verifications::check))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .fallback(|| async { ApiError::not_found("route") })
        .with_state(state)
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(state): State<AppState>) -> Result<(StatusCode, &'static str), ApiError> {
    if let Err(e) = state.store.ping().await {
        tracing::warn!(error = %e, "readiness: database unreachable");
        return Err(ApiError::unavailable("database unreachable"));
    }
    if state.trunk_count == 0 {
        return Err(ApiError::unavailable("no SIP trunk configured"));
    }
    Ok((StatusCode::OK, "ready\n"))
}
