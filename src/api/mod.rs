//! HTTP API (axum): `router(state)` builds every route of SPEC §3. Handlers
//! call the verification service and read the store; they know nothing of
//! SIP or RTP. `/openapi.json` is generated from the same handlers.

mod admin;
mod auth;
mod caller_ids;
pub use caller_ids::{CallerIdList, CallerIdView, TrunkCountryView};
mod canaries;
pub use canaries::{CanaryList, CanaryRunView, CanaryView};
mod error;
mod latency;
mod ops;
pub use ops::{CallList, CallRecordView, TrunkList, TrunkTargetView, TrunkView};
mod phones;
mod qa;
mod verifications;

pub use admin::{qa_phones, QaPhoneRow};
pub use auth::{hash_token, new_token, ApiKey};
pub use error::{ApiError, Problem};
pub use qa::{QaRegistration, QaRegistrations};

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::OpenApi;

use crate::config::Settings;
use crate::metrics::{Metrics, TrunkLabel};
use crate::store::Store;
use crate::trunks::TrunkBoard;
use crate::verify::Verifier;

#[derive(Clone)]
pub struct AppState {
    pub verifier: Verifier,
    pub store: Store,
    pub api_keys: Arc<Vec<ApiKey>>,
    pub settings: Arc<Settings>,
    /// The shared read model of trunk state (no handle on the call engine).
    pub trunks: Arc<TrunkBoard>,
    pub metrics: Arc<Metrics>,
    /// The QA phones' live registrations (a read model over the SIP registrar).
    pub qa: QaRegistrations,
    /// Cancelled when the instance starts shutting down: `/readyz` then answers 503
    /// while calls in progress drain and the rest of the API still answers.
    pub draining: tokio_util::sync::CancellationToken,
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "otpdial",
        description = "Voice-call OTP gateway: start a verification, the gateway phones the number and reads the code; check the code the user typed."
    ),
    paths(
        verifications::start,
        verifications::get,
        verifications::check,
        verifications::cancel,
        phones::put,
        phones::get,
        phones::delete,
        ops::trunks,
        ops::calls,
        qa::phones,
        canaries::list,
        caller_ids::list,
    ),
    modifiers(&BearerAuth),
    tags(
        (name = "verifications", description = "Scope `verify`"),
        (name = "phones", description = "Registered numbers; scope `verify`"),
        (name = "operations", description = "Scope `admin`"),
    )
)]
pub struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

pub fn router(state: AppState) -> Router {
    let registry = state.metrics.clone();
    Router::new()
        .route("/v1/verifications", post(verifications::start))
        .route("/v1/verifications/{id}", get(verifications::get))
        .route("/v1/verifications/{id}/check", post(verifications::check))
        .route("/v1/verifications/{id}/cancel", post(verifications::cancel))
        .route(
            "/v1/users/{user_id}/phones",
            get(phones::get).put(phones::put),
        )
        .route(
            "/v1/users/{user_id}/phones/{number}",
            delete(phones::delete),
        )
        .route("/v1/trunks", get(ops::trunks))
        .route("/v1/calls", get(ops::calls))
        .route("/v1/qa/phones", get(qa::phones))
        .route("/v1/canaries", get(canaries::list))
        .route("/v1/caller-ids", get(caller_ids::list))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/openapi.json", get(openapi))
        .merge(admin::router(state.clone()))
        .fallback(|| async { ApiError::not_found("route") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "Method Not Allowed",
                "this route does not accept that method",
            )
        })
        .with_state(state)
        .layer(axum::middleware::from_fn_with_state(
            registry,
            latency::track,
        ))
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(state): State<AppState>) -> Result<(StatusCode, &'static str), ApiError> {
    if state.draining.is_cancelled() {
        return Err(ApiError::unavailable(
            "draining: shutting down, calls in progress are finishing",
        ));
    }
    if let Err(e) = state.store.ping().await {
        tracing::warn!(error = %e, "readiness: database unreachable");
        return Err(ApiError::unavailable("database unreachable"));
    }
    if !state.trunks.any_usable_with_capacity() {
        return Err(ApiError::unavailable("no SIP trunk can take a call"));
    }
    Ok((StatusCode::OK, "ready\n"))
}

async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    for t in state.trunks.snapshot() {
        let label = TrunkLabel { trunk: t.name };
        state
            .metrics
            .active_calls
            .get_or_create(&label)
            .set(i64::from(t.active_calls));
        state
            .metrics
            .trunk_down
            .get_or_create(&label)
            .set(i64::from(t.breaker == crate::trunks::BreakerState::Open));
    }
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.render(),
    )
}

async fn openapi() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}
