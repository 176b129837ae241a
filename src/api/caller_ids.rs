//! Caller IDs (scope `admin`, SPEC §7): each `[[caller_ids]]` number with its pool,
//! what its calls achieved, and whether it rests; and the per-country figures of each
//! trunk that `/v1/trunks` and `/admin` show. Read from the store, so every instance
//! answers with the figures of all.

use std::collections::HashMap;

use axum::extract::State;
use axum::Json;
use serde::{Deserialize, Serialize};

use super::auth::Caller;
use super::error::{ApiError, Problem};
use super::AppState;
use crate::config::Scope;
use crate::domain;

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CallerIdView {
    /// E.164.
    pub number: String,
    /// The pool: its prefix, and `@trunk` when bound to one (`+31@carrier-a`).
    pub pool: String,
    /// Calls that reached the callee in the last 24 hours (after its latest rest).
    pub calls: i64,
    pub answered: i64,
    /// answered / calls, 0..1; null without calls.
    pub answer_rate: Option<f64>,
    /// The pool's answer rate over the same calls, 0..1; null without calls.
    pub pool_answer_rate: Option<f64>,
    /// Out of rotation until then (RFC 3339); null when in rotation.
    pub resting_until: Option<String>,
    /// When it was last rested, and its rate and the pool's then.
    pub rested_at: Option<String>,
}

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CallerIdList {
    pub caller_ids: Vec<CallerIdView>,
}

/// One trunk's figures for one destination country.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TrunkCountryView {
    /// Country calling code (`+31`).
    pub country: String,
    /// Attempts over `[dialer] quality_window`, all instances.
    pub calls: i64,
    /// Answered / attempts, 0..1.
    pub answer_rate: f64,
}

fn rate(answered: i64, calls: i64) -> Option<f64> {
    (calls > 0).then(|| answered as f64 / calls as f64)
}

/// Every configured caller ID with its figures.
pub(super) async fn caller_id_views(state: &AppState) -> Result<Vec<CallerIdView>, ApiError> {
    let now = domain::now_ms();
    let window = i64::try_from(crate::dialer::CALLER_ID_WINDOW.as_millis()).unwrap_or(i64::MAX);
    let tallies = state.store.caller_id_tallies(None, now - window).await?;
    let rests = state.store.caller_id_rests().await?;
    let mut out = Vec::new();
    for pool in &state.settings.caller_ids {
        let name = pool.name();
        let of = |n: &String| tallies.iter().find(|t| &t.key == n);
        let pool_calls: i64 = pool.numbers.iter().filter_map(of).map(|t| t.calls).sum();
        let pool_answered: i64 = pool.numbers.iter().filter_map(of).map(|t| t.answered).sum();
        for n in &pool.numbers {
            let (calls, answered) = of(n).map_or((0, 0), |t| (t.calls, t.answered));
            let rest = rests.iter().find(|r| &r.number == n);
            out.push(CallerIdView {
                number: n.clone(),
                pool: name.clone(),
                calls,
                answered,
                answer_rate: rate(answered, calls),
                pool_answer_rate: rate(pool_answered, pool_calls),
                resting_until: rest
                    .filter(|r| r.resting_until > now)
                    .map(|r| domain::format_ms(r.resting_until)),
                rested_at: rest.map(|r| domain::format_ms(r.rested_at)),
            });
        }
    }
    Ok(out)
}

/// Per trunk, its figures by destination country over `[dialer] quality_window`.
pub(super) async fn trunk_countries(
    state: &AppState,
) -> Result<HashMap<String, Vec<TrunkCountryView>>, ApiError> {
    let window =
        i64::try_from(state.settings.dialer.quality_window.as_millis()).unwrap_or(i64::MAX);
    let all = state
        .store
        .all_route_tallies(domain::now_ms() - window)
        .await?;
    let mut out: HashMap<String, Vec<TrunkCountryView>> = HashMap::new();
    for t in all {
        out.entry(t.trunk).or_default().push(TrunkCountryView {
            country: t.country,
            calls: t.calls,
            answer_rate: rate(t.answered, t.calls).unwrap_or(0.0),
        });
    }
    Ok(out)
}

/// Each configured caller ID: its pool, calls, answer rate and `resting_until`.
#[utoipa::path(
    get,
    path = "/v1/caller-ids",
    tag = "operations",
    responses(
        (status = 200, body = CallerIdList),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json"),
        (status = 503, body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub(super) async fn list(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<CallerIdList>, ApiError> {
    caller.require(Scope::Admin)?;
    Ok(Json(CallerIdList {
        caller_ids: caller_id_views(&state).await?,
    }))
}
