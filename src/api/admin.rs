//! The operator dashboard (SPEC §6 `GET /admin`): one server-rendered HTML
//! page with the trunks, active calls, a chart of calls and answer rate,
//! the latest calls and the QA phones. No JavaScript.
//!
//! Access: an admin-scope token as `Authorization: Bearer`, or a session
//! after `POST /admin/login` with that token. The session id lives in an
//! HttpOnly, SameSite=Strict cookie (Secure when the request came over
//! https through a proxy that says so in `X-Forwarded-Proto`/`Forwarded`),
//! mapped server-side ([`session::Sessions`]) and expiring after 8 hours.
//! POSTs are refused when the browser says they come from another site
//! (`Sec-Fetch-Site`, `Origin`), and logout also needs the session's CSRF
//! token. Depends on the store and the trunk board, like the other routes.

mod canaries;
mod chart;
mod format;
mod page;
mod routing;
mod session;

pub use page::QaPhoneRow;

use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Form, Router};
use serde::Deserialize;

use super::auth::Caller;
use super::error::ApiError;
use super::AppState;
use crate::config::Scope;
use crate::domain;
use crate::store::AuditEntry;
use session::Sessions;

const COOKIE: &str = "otpdial_admin";
/// Calls listed under "Latest calls".
const LATEST_CALLS: i64 = 25;

#[derive(Clone)]
struct AdminState {
    app: AppState,
    sessions: Arc<Sessions>,
}

/// The dashboard routes, with their own session store.
pub(super) fn router<S>(app: AppState) -> Router<S> {
    Router::new()
        .route("/admin", get(dashboard))
        .route("/admin/", get(dashboard))
        .route("/admin/login", get(login_form).post(login))
        .route("/admin/logout", post(logout))
        .with_state(AdminState {
            app,
            sessions: Arc::new(Sessions::default()),
        })
}

/// The QA softphones of `[[qa.phones]]` and their registrations, for the dashboard
/// (numbers masked).
pub fn qa_phones(app: &AppState) -> Vec<QaPhoneRow> {
    let registrations = (app.qa)();
    app.settings
        .qa
        .phones
        .iter()
        .map(|p| {
            let r = registrations.get(&p.username);
            QaPhoneRow {
                username: p.username.clone(),
                number: crate::domain::PhoneNumber::from_trusted(p.number.clone()).masked(),
                registered: r.is_some(),
                contact: r.map(|r| r.contact.clone()),
                expires_in: r.map(|r| r.expires_in.as_secs()),
            }
        })
        .collect()
}

/// Headers every page carries: no caching, no framing, nothing loaded from
/// anywhere (the page has inline CSS and SVG, and no script).
fn html(status: StatusCode, body: String) -> Response {
    let mut resp = (status, body).into_response();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; style-src 'unsafe-inline'; img-src data:; form-action 'self'; \
             frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    resp
}

fn redirect(to: &'static str) -> Response {
    (StatusCode::SEE_OTHER, [(header::LOCATION, to)]).into_response()
}

/// The session cookie's value, if the request has one.
fn session_id(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value.trim())
        .filter(|v| !v.is_empty())
}

/// Whether the browser reached us over https (through a TLS proxy).
fn over_https(headers: &HeaderMap) -> bool {
    let forwarded_proto = headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("https"));
    let forwarded = headers
        .get(header::FORWARDED)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.to_ascii_lowercase().contains("proto=https"));
    forwarded_proto || forwarded
}

fn cookie(headers: &HeaderMap, value: &str, max_age: u64) -> HeaderValue {
    let secure = if over_https(headers) { "; Secure" } else { "" };
    let text = format!(
        "{COOKIE}={value}; Path=/admin; HttpOnly; SameSite=Strict; Max-Age={max_age}{secure}"
    );
    HeaderValue::from_str(&text).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// A POST that the browser marks as coming from another site (or whose
/// Origin names another host) is refused: a form on another site cannot
/// log someone in or out here.
fn cross_site(headers: &HeaderMap) -> bool {
    let fetch_site = headers
        .get("sec-fetch-site")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if fetch_site.eq_ignore_ascii_case("cross-site") || fetch_site.eq_ignore_ascii_case("same-site")
    {
        return true;
    }
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok());
    match (
        headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()),
        host,
    ) {
        (None, _) => false,
        (Some(origin), Some(host)) => {
            let origin_host = origin.split_once("://").map_or(origin, |(_, rest)| rest);
            !origin_host.eq_ignore_ascii_case(host)
        }
        (Some(_), None) => true,
    }
}

/// Who may see the page, and how they came in.
enum Access {
    Bearer(Caller),
    Session { key_name: String, csrf: String },
}

/// `Ok(None)`: nobody signed in (send them to the login form).
fn access(state: &AdminState, headers: &HeaderMap) -> Result<Option<Access>, ApiError> {
    if let Some(value) = headers.get(header::AUTHORIZATION) {
        let caller = value
            .to_str()
            .ok()
            .and_then(|v| v.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .and_then(|(_, token)| Caller::for_token(&state.app, token))
            .ok_or_else(ApiError::unauthorized)?;
        caller.require(Scope::Admin)?;
        return Ok(Some(Access::Bearer(caller)));
    }
    Ok(session_id(headers)
        .and_then(|id| state.sessions.get(id))
        .map(|s| Access::Session {
            key_name: s.key_name,
            csrf: s.csrf,
        }))
}

#[derive(Debug, Deserialize)]
struct Window {
    hours: Option<String>,
}

async fn dashboard(
    State(state): State<AdminState>,
    headers: HeaderMap,
    Query(window): Query<Window>,
) -> Response {
    let access = match access(&state, &headers) {
        Ok(Some(a)) => a,
        Ok(None) => return redirect("/admin/login"),
        Err(e) => {
            let mut resp = e.into_response();
            if resp.status() == StatusCode::UNAUTHORIZED {
                resp.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"otpdial admin\""),
                );
            }
            return resp;
        }
    };
    let (viewer, csrf) = match &access {
        Access::Bearer(c) => (c.name.clone(), None),
        Access::Session { key_name, csrf } => (key_name.clone(), Some(csrf.clone())),
    };
    let hours = window
        .hours
        .and_then(|h| h.parse::<i64>().ok())
        .unwrap_or(3)
        .clamp(1, 24);
    // Per minute for short windows, per 5 minutes beyond two hours.
    let bucket_ms: i64 = if hours <= 2 { 60_000 } else { 300_000 };
    let now = domain::now_ms();
    let until = (now.div_euclid(bucket_ms) + 1) * bucket_ms;
    let since = until - hours * 3_600_000;
    let app = &state.app;
    const UNREADABLE: &str = "The database could not be read; see the gateway's log.";
    let buckets = app
        .store
        .call_buckets(since, until, bucket_ms)
        .await
        .map_err(|e| {
            tracing::warn!(error = %e, "dashboard: cannot read call counts");
            UNREADABLE
        });
    let latest = app.store.latest_calls(LATEST_CALLS).await.map_err(|e| {
        tracing::warn!(error = %e, "dashboard: cannot read the latest calls");
        UNREADABLE
    });
    let trunks = app.trunks.snapshot();
    let qa = qa_phones(app);
    let canaries = super::canaries::canary_views(app, 10).await.map_err(|_| {
        tracing::warn!("dashboard: cannot read the canaries");
        UNREADABLE
    });
    let routing = async {
        Ok::<_, ApiError>(routing::RoutingPanel {
            routing: app.settings.dialer.routing.as_str(),
            countries: crate::api::caller_ids::trunk_countries(app).await?,
            caller_ids: crate::api::caller_ids::caller_id_views(app).await?,
        })
    }
    .await
    .map_err(|_| {
        tracing::warn!("dashboard: cannot read the routing figures");
        UNREADABLE
    });
    let body = page::dashboard(&page::Dashboard {
        now_ms: now,
        viewer: &viewer,
        csrf: csrf.as_deref(),
        trunks: &trunks,
        active_calls: app.trunks.active_calls(),
        capacity: app.trunks.overall_capacity(),
        hours,
        bucket_ms,
        buckets,
        latest,
        qa_phones: &qa,
        canaries,
        routing,
    });
    html(StatusCode::OK, body)
}

async fn login_form(State(state): State<AdminState>, headers: HeaderMap) -> Response {
    if session_id(&headers).is_some_and(|id| state.sessions.get(id).is_some()) {
        return redirect("/admin");
    }
    html(StatusCode::OK, page::login(None))
}

#[derive(Deserialize)]
struct LoginForm {
    #[serde(default)]
    token: String,
}

async fn login(
    State(state): State<AdminState>,
    headers: HeaderMap,
    form: Result<Form<LoginForm>, axum::extract::rejection::FormRejection>,
) -> Response {
    if cross_site(&headers) {
        tracing::warn!("admin login refused: cross-site request");
        return html(
            StatusCode::FORBIDDEN,
            page::login(Some("Refused: the form was sent from another site.")),
        );
    }
    let Ok(Form(form)) = form else {
        return html(
            StatusCode::BAD_REQUEST,
            page::login(Some("Send the form with a token.")),
        );
    };
    let Some(caller) = Caller::for_token(&state.app, &form.token) else {
        tracing::warn!("admin login refused: unknown token");
        return html(
            StatusCode::UNAUTHORIZED,
            page::login(Some("That token was not accepted.")),
        );
    };
    if !caller.has(Scope::Admin) {
        tracing::warn!(key = %caller.name, "admin login refused: token lacks the admin scope");
        return html(
            StatusCode::FORBIDDEN,
            page::login(Some("That token has no admin scope.")),
        );
    }
    let Some((id, _)) = state.sessions.create(&caller.name) else {
        tracing::error!("admin login: OS RNG failed");
        return ApiError::internal().into_response();
    };
    let audit = AuditEntry {
        actor: &caller.name,
        action: "admin.login",
        target: None,
        outcome: "ok",
        detail: None,
    };
    if let Err(e) = state.app.store.audit(audit, domain::now_ms()).await {
        tracing::warn!(error = %e, "cannot write the audit record of an admin login");
    }
    tracing::info!(key = %caller.name, "admin signed in to the dashboard");
    let mut resp = redirect("/admin");
    resp.headers_mut().insert(
        header::SET_COOKIE,
        cookie(&headers, &id, Sessions::max_age_secs()),
    );
    resp
}

#[derive(Deserialize)]
struct LogoutForm {
    #[serde(default)]
    csrf: String,
}

async fn logout(
    State(state): State<AdminState>,
    headers: HeaderMap,
    form: Result<Form<LogoutForm>, axum::extract::rejection::FormRejection>,
) -> Response {
    let csrf = form.map(|Form(f)| f.csrf).unwrap_or_default();
    let Some(id) = session_id(&headers) else {
        return redirect("/admin/login");
    };
    if cross_site(&headers) || !state.sessions.end(id, &csrf) {
        return html(
            StatusCode::FORBIDDEN,
            page::login(Some("Log out from the dashboard's own button.")),
        );
    }
    let mut resp = redirect("/admin/login");
    resp.headers_mut()
        .insert(header::SET_COOKIE, cookie(&headers, "", 0));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn reads_the_session_cookie_among_others() {
        let h = headers(&[("cookie", "a=1; otpdial_admin=abc ; b=2")]);
        assert_eq!(session_id(&h), Some("abc"));
        assert_eq!(session_id(&headers(&[("cookie", "otpdial_admin=")])), None);
        assert_eq!(session_id(&HeaderMap::new()), None);
    }

    #[test]
    fn cookie_is_http_only_strict_and_secure_behind_https() {
        let plain = cookie(&HeaderMap::new(), "id", 60);
        let plain = plain.to_str().unwrap_or_default();
        assert!(plain.contains("HttpOnly") && plain.contains("SameSite=Strict"));
        assert!(!plain.contains("Secure"));
        let tls = cookie(&headers(&[("x-forwarded-proto", "https")]), "id", 60);
        assert!(tls.to_str().unwrap_or_default().ends_with("; Secure"));
    }

    #[test]
    fn cross_site_posts_are_recognised() {
        assert!(!cross_site(&headers(&[("host", "gw:8080")])));
        assert!(!cross_site(&headers(&[
            ("host", "gw:8080"),
            ("origin", "http://gw:8080"),
            ("sec-fetch-site", "same-origin"),
        ])));
        assert!(cross_site(&headers(&[
            ("host", "gw:8080"),
            ("origin", "https://evil.example"),
        ])));
        assert!(cross_site(&headers(&[
            ("host", "gw:8080"),
            ("sec-fetch-site", "cross-site"),
        ])));
    }
}
