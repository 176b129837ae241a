//! Canaries (scope `admin`, SPEC §7): each configured canary with its state and its
//! latest runs, as the store holds them (any instance may have placed or heard a run).

use axum::extract::{Query, State};
use axum::Json;
use serde::{Deserialize, Serialize};

use super::auth::Caller;
use super::error::{ApiError, Problem};
use super::AppState;
use crate::config::Scope;
use crate::domain;
use crate::store::CanaryRunRow;

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CanaryRunView {
    pub id: String,
    /// `ok`, `wrong_digits`, `not_heard`, `not_answered`, `not_delivered`, `failed`;
    /// null while the run is in progress.
    pub result: Option<String>,
    /// Why it ended so, when there is more to say (the SIP status, `abandoned`, ...).
    pub reason: Option<String>,
    /// The trunk that carried it (`qa:<username>` for a QA phone).
    pub trunk: Option<String>,
    /// Final SIP status of the call, when there was one.
    pub sip_code: Option<i64>,
    /// INVITE to the first 18x (or to the answer when none came), ms.
    pub post_dial_delay_ms: Option<i64>,
    /// INVITE to the answer, ms.
    pub setup_ms: Option<i64>,
    /// Packets lost on the way to the answering side, as a fraction (0..1).
    pub loss: Option<f64>,
    /// Interarrival jitter at the answering side (RFC 3550), ms.
    pub jitter_ms: Option<f64>,
    /// Estimated MOS (ITU-T G.107 E-model from delay, loss and codec), 1..4.5.
    pub mos: Option<f64>,
    /// `PCMU` or `PCMA`, as the answering side received it.
    pub codec: Option<String>,
    /// The digits heard, only when they were not the code (`wrong_digits`).
    pub heard: Option<String>,
    /// When the run started (RFC 3339).
    pub at: String,
    /// The instance that placed it, and the one whose test phone answered it.
    pub placed_by: String,
    pub answered_by: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CanaryView {
    pub name: String,
    pub number: String,
    /// The trunk under test; null = normal routing.
    pub trunk: Option<String>,
    /// `15m`, as configured.
    pub interval: String,
    /// `answer_number` (heard by the built-in test phone) or `qa_phone` (answer and
    /// post-dial delay only).
    pub far_end: String,
    /// `ok` or `failing` (`[canary] fail_after` failed runs in a row).
    pub state: String,
    pub consecutive_failures: i64,
    pub last_success_at: Option<String>,
    pub next_run_at: Option<String>,
    /// Latest first.
    pub runs: Vec<CanaryRunView>,
}

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CanaryList {
    pub canaries: Vec<CanaryView>,
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(super) struct CanaryQuery {
    /// Runs per canary (1..100, default 10).
    #[param(value_type = i64, required = false, minimum = 1, maximum = 100)]
    runs: Option<String>,
}

fn run_view(r: CanaryRunRow) -> CanaryRunView {
    CanaryRunView {
        id: r.id,
        result: r.result,
        reason: r.reason,
        trunk: r.trunk,
        sip_code: r.sip_code,
        post_dial_delay_ms: r.post_dial_delay_ms,
        setup_ms: r.setup_ms,
        loss: r.loss,
        jitter_ms: r.jitter_ms,
        mos: r.mos,
        codec: r.codec,
        heard: r.heard,
        at: domain::format_ms(r.started_at),
        placed_by: r.placed_by,
        answered_by: r.answered_by,
    }
}

/// Every configured canary with its state and latest `runs` runs.
pub(super) async fn canary_views(state: &AppState, runs: i64) -> Result<Vec<CanaryView>, ApiError> {
    let states = state.store.canary_states().await?;
    let mut out = Vec::new();
    for c in &state.settings.canaries {
        let stored = states.iter().find(|s| s.canary == c.name);
        let recent = state.store.canary_recent_runs(&c.name, runs).await?;
        out.push(CanaryView {
            name: c.name.clone(),
            number: c.number.clone(),
            trunk: c.trunk().map(str::to_string),
            interval: humantime::format_duration(c.interval).to_string(),
            far_end: if state.settings.qa.phone_for(&c.number).is_some() {
                "qa_phone".into()
            } else {
                "answer_number".into()
            },
            state: stored.map_or("ok", |s| s.health.state.as_str()).into(),
            consecutive_failures: stored.map_or(0, |s| s.health.consecutive_failures),
            last_success_at: stored
                .and_then(|s| s.health.last_success_at)
                .map(domain::format_ms),
            next_run_at: stored.map(|s| domain::format_ms(s.next_run_at)),
            runs: recent.into_iter().map(run_view).collect(),
        });
    }
    Ok(out)
}

/// Each canary with its state and latest runs.
#[utoipa::path(
    get,
    path = "/v1/canaries",
    tag = "operations",
    params(CanaryQuery),
    responses(
        (status = 200, body = CanaryList),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json"),
        (status = 422, body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub(super) async fn list(
    State(state): State<AppState>,
    caller: Caller,
    query: Result<Query<CanaryQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<CanaryList>, ApiError> {
    caller.require(Scope::Admin)?;
    let Query(q) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let runs = match q.runs.as_deref() {
        None => 10,
        Some(n) => n
            .parse::<i64>()
            .ok()
            .filter(|n| (1..=100).contains(n))
            .ok_or_else(|| ApiError::unprocessable("runs: must be a whole number 1..100"))?,
    };
    Ok(Json(CanaryList {
        canaries: canary_views(&state, runs).await?,
    }))
}
