//! Operations routes (scope `admin`): trunk state and call records.

use axum::extract::{Query, State};
use axum::Json;
use serde::{Deserialize, Serialize};

use super::auth::Caller;
use super::error::{ApiError, Problem};
use super::AppState;
use crate::config::Scope;
use crate::domain::{self, CallStatus, PhoneNumber};
use crate::verify::ReceivedView;

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TrunkView {
    pub name: String,
    /// Registration state; null for trunks with `register = false`
    /// (IP-authenticated).
    pub registered: Option<bool>,
    /// Whether the last OPTIONS/REGISTER got an answer; null before the
    /// first probe (or with keepalive off).
    pub reachable: Option<bool>,
    pub last_error: Option<String>,
    /// Circuit breaker: `closed` (in use), `open` (marked down after
    /// consecutive failures; tried only when no other trunk can take the
    /// call), `half_open` (down, next call may try it).
    pub breaker: String,
    /// Failures in a row (5xx, 408, no response, transport error).
    pub consecutive_failures: u32,
    pub active_calls: u32,
    pub max_concurrent_calls: u32,
    pub calls_total: u64,
    /// Answered calls / calls placed, 0..1 (0 before the first call).
    pub answer_rate: f64,
    /// Per destination country over `[dialer] quality_window`, counted by every
    /// instance (what `routing = "quality"` compares).
    pub countries: Vec<super::TrunkCountryView>,
    /// As configured; null when unset (counted as 0).
    pub cost_per_minute: Option<f64>,
    /// Where the proxy resolved the last time (RFC 3263: NAPTR, SRV, A/AAAA), in the
    /// order calls try them; empty before the first resolution or when it failed.
    pub targets: Vec<TrunkTargetView>,
    /// Why the proxy's name did not resolve the last time; null when it did.
    pub dns_error: Option<String>,
}

/// One resolved target of a trunk's proxy.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TrunkTargetView {
    /// `IP:port`.
    pub address: String,
    /// `udp`, `tcp` or `tls`.
    pub transport: String,
    /// The record it came from, e.g. `SRV _sip._udp.carrier.example 10 60 5060
    /// sip1.carrier.example (A)`.
    pub record: String,
}

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TrunkList {
    pub trunks: Vec<TrunkView>,
}

/// Each configured trunk with its live counters.
#[utoipa::path(
    get,
    path = "/v1/trunks",
    tag = "operations",
    responses(
        (status = 200, body = TrunkList),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json"),
        (status = 503, body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub(super) async fn trunks(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<TrunkList>, ApiError> {
    caller.require(Scope::Admin)?;
    let mut countries = super::caller_ids::trunk_countries(&state).await?;
    let trunks = state
        .trunks
        .snapshot()
        .into_iter()
        .map(|t| TrunkView {
            countries: countries.remove(&t.name).unwrap_or_default(),
            cost_per_minute: state
                .settings
                .trunks
                .iter()
                .find(|s| s.name == t.name)
                .and_then(|s| s.cost_per_minute),
            registered: t.register.then_some(t.status.registered),
            reachable: t.status.reachable,
            last_error: t.status.last_error.clone(),
            breaker: t.breaker.as_str().to_string(),
            consecutive_failures: t.consecutive_failures,
            active_calls: t.active_calls,
            max_concurrent_calls: t.max_concurrent_calls,
            calls_total: t.calls_total,
            answer_rate: t.answer_rate(),
            targets: match &t.dns {
                Some(Ok(r)) => r
                    .targets
                    .iter()
                    .map(|d| TrunkTargetView {
                        address: d.addr.to_string(),
                        transport: d.transport_name().to_string(),
                        record: d.record.clone(),
                    })
                    .collect(),
                _ => Vec::new(),
            },
            dns_error: match &t.dns {
                Some(Err(e)) => Some(e.to_string()),
                _ => None,
            },
            name: t.name,
        })
        .collect();
    Ok(Json(TrunkList { trunks }))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(super) struct CallsQuery {
    /// RFC 3339 time or unix seconds; default: 24 hours ago.
    #[param(value_type = String, required = false)]
    since: Option<String>,
    /// At most this many records (1..1000, default 100).
    #[param(value_type = i64, required = false, minimum = 1, maximum = 1000)]
    limit: Option<String>,
}

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CallRecordView {
    pub id: String,
    pub verification_id: String,
    /// Masked destination.
    pub to: String,
    pub status: CallStatus,
    pub sip_code: Option<i64>,
    pub trunk: Option<String>,
    pub created_at: String,
    pub answered_at: Option<String>,
    pub ended_at: Option<String>,
    pub times_played: i64,
    /// What the gateway measured of the far end's RTP in the call's latest attempt
    /// that received media (as in a verification's `call.attempts[].received`);
    /// absent when none did.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub received: Option<ReceivedView>,
}

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CallList {
    pub calls: Vec<CallRecordView>,
}

fn parse_since(s: &str) -> Result<i64, ApiError> {
    if let Ok(secs) = s.parse::<i64>() {
        return Ok(secs.saturating_mul(1000));
    }
    time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .map(|t| (t.unix_timestamp_nanos() / 1_000_000) as i64)
        .map_err(|_| ApiError::unprocessable("since: expected RFC 3339 time or unix seconds"))
}

/// Call records since a time, oldest first (no codes, masked numbers).
#[utoipa::path(
    get,
    path = "/v1/calls",
    tag = "operations",
    params(CallsQuery),
    responses(
        (status = 200, body = CallList),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json"),
        (status = 422, body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub(super) async fn calls(
    State(state): State<AppState>,
    caller: Caller,
    query: Result<Query<CallsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<CallList>, ApiError> {
    caller.require(Scope::Admin)?;
    let Query(q) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let since = match q.since.as_deref() {
        Some(s) => parse_since(s)?,
        None => domain::now_ms() - 24 * 3600 * 1000,
    };
    let limit = match q.limit.as_deref() {
        None => 100,
        Some(l) => l
            .parse::<i64>()
            .ok()
            .filter(|n| (1..=1000).contains(n))
            .ok_or_else(|| ApiError::unprocessable("limit: must be a whole number 1..1000"))?,
    };
    let rows = state.store.calls_since(since, limit).await?;
    Ok(Json(CallList {
        calls: rows
            .into_iter()
            .map(|r| CallRecordView {
                id: r.call_id,
                verification_id: r.verification_id,
                to: PhoneNumber::from_trusted(r.phone).masked(),
                status: r.status,
                sip_code: r.sip_code,
                trunk: r.trunk,
                created_at: domain::format_ms(r.created_at),
                answered_at: r.answered_at.map(domain::format_ms),
                ended_at: r.ended_at.map(domain::format_ms),
                times_played: r.times_played,
                received: r.received.map(ReceivedView::from),
            })
            .collect(),
    }))
}
