//! API latency by route: a middleware that times every request and records
//! it under the matched route pattern (`/v1/verifications/{id}`), never the
//! path itself, so ids and numbers stay out of the labels and the series
//! stay few. Requests that match no route count as `unmatched`.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::Response;

use crate::metrics::Metrics;

pub(super) async fn track(
    State(metrics): State<Arc<Metrics>>,
    req: Request,
    next: Next,
) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_string(), |p| p.as_str().to_string());
    let method = match *req.method() {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::PATCH => "PATCH",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    };
    let started = Instant::now();
    let resp = next.run(req).await;
    metrics.http_request(method, &route, resp.status().as_u16(), started.elapsed());
    resp
}
