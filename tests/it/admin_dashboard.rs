//! The operator dashboard (`GET /admin`) on a real `otpdial serve` that placed a real
//! call through a SIPp callee: who gets in (admin bearer, login session) and who does
//! not (no token, wrong token, verify-only token, cross-site form, logout), what the
//! page shows and never shows, and the page as headless Chromium (Debian `chromium`)
//! renders it, with a screenshot kept for a person to look at.
//!
//! Chromium cannot send a header from its command line, so it loads the page through
//! a small proxy in the test that adds the admin's `Authorization` (or the session's
//! `Cookie`) to each request, as a TLS proxy in front of the gateway could.

use std::path::{Path, PathBuf};
use std::time::Duration;

use axum::body::Body;
use axum::extract::Request;
use axum::http::HeaderName;
use axum::response::Response;
use otpdial::domain::CallStatus;
use reqwest::header::{COOKIE, LOCATION, SET_COOKIE};
use reqwest::redirect::Policy;
use reqwest::StatusCode;
use serde_json::json;

use crate::callee::SippUas;
use crate::helpers::{Db, ADMIN_TOKEN, TOKEN};
use crate::procs::{nl_mobile, ServeConfig, ServeProc};

/// Chromium's flags for a run that touches nothing but the page it is given.
fn chromium_flags(profile: &Path) -> Vec<String> {
    [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--hide-scrollbars",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .chain([format!("--user-data-dir={}", profile.display())])
    .collect()
}

/// Runs headless Chromium on `url` with `extra` flags in a new empty profile under
/// `dir`; returns its stdout. Fails the test if it does not finish within 90 s.
async fn chromium(dir: &Path, extra: &[String], url: &str) -> String {
    let profile = tempfile::tempdir_in(dir).expect("profile dir");
    let mut cmd = tokio::process::Command::new("chromium");
    cmd.args(chromium_flags(profile.path()))
        .args(extra)
        .arg(url)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(90), cmd.output())
        .await
        .expect("chromium finished within 90 s")
        .expect("chromium runs (Debian package chromium: scripts/test.sh installs it)");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "chromium {url}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// An HTTP proxy on 127.0.0.1 that forwards every request to `upstream` with the
/// header `name: value` added. Stops when the runtime does.
async fn header_proxy(upstream: String, name: HeaderName, value: String) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind proxy");
    let addr = listener.local_addr().expect("proxy addr");
    let client = reqwest::Client::builder()
        .redirect(Policy::none())
        .build()
        .expect("client");
    let app = axum::Router::new().fallback(move |req: Request| {
        let client = client.clone();
        let upstream = upstream.clone();
        let name = name.clone();
        let value = value.clone();
        async move {
            let (parts, body) = req.into_parts();
            let body = axum::body::to_bytes(body, 1 << 20)
                .await
                .unwrap_or_default();
            let path = parts
                .uri
                .path_and_query()
                .map_or("/", |p| p.as_str())
                .to_owned();
            let mut fwd = client.request(parts.method.clone(), format!("{upstream}{path}"));
            for (k, v) in &parts.headers {
                if k != "host" && k != "content-length" {
                    fwd = fwd.header(k, v);
                }
            }
            let answer = fwd.header(&name, &value).body(body).send().await;
            let Ok(answer) = answer else {
                return Response::builder()
                    .status(502)
                    .body(Body::from("upstream down"))
                    .expect("response");
            };
            let mut resp = Response::builder().status(answer.status());
            for (k, v) in answer.headers() {
                if k != "transfer-encoding" && k != "content-length" && k != "connection" {
                    resp = resp.header(k, v);
                }
            }
            let bytes = answer.bytes().await.unwrap_or_default();
            resp.body(Body::from(bytes)).expect("response")
        }
    });
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    format!("http://{addr}")
}

/// A gateway with one trunk (a SIPp callee that answers) that has placed one call,
/// completed; returns it, the callee and the number called.
async fn gateway_with_a_call() -> (ServeProc, SippUas, String) {
    gateway_on(Db::Sqlite).await
}

async fn gateway_on(db: Db) -> (ServeProc, SippUas, String) {
    let callee = SippUas::answer_many(Duration::from_millis(300)).await;
    let cfg = ServeConfig::on(db)
        .await
        .trunk("carrier-a", callee.port(), "");
    let gw = ServeProc::start(cfg).await;
    let number = nl_mobile(4242);
    let v = gw
        .start_verification(json!({ "to": number, "code": "4812" }))
        .await;
    let done = gw
        .wait_calls_final(std::slice::from_ref(&v.id), Duration::from_secs(20))
        .await;
    assert_eq!(done[0].call.status, CallStatus::Completed, "{done:?}");
    (gw, callee, number)
}

fn no_redirects() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(Policy::none())
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client")
}

/// What the page must show for the call, and must never show.
fn assert_dashboard(html: &str, number: &str) {
    assert!(html.contains("Trunks"), "{html}");
    assert!(html.contains("carrier-a"), "trunk listed: {html}");
    assert!(html.contains("closed"), "breaker state shown");
    assert!(html.contains("Latest calls"));
    assert!(html.contains("completed"), "the call's status");
    assert!(html.contains(">200<"), "the call's SIP outcome");
    let masked = otpdial::domain::PhoneNumber::from_trusted(number.to_owned()).masked();
    assert!(html.contains(&masked), "masked number {masked}");
    assert!(
        !html.contains(number),
        "the full number is never in the page"
    );
    assert!(!html.contains("4812"), "the code is never in the page");
    assert!(!html.contains(ADMIN_TOKEN) && !html.contains(TOKEN));
    assert!(html.contains("<svg"), "the chart");
    assert!(html.contains("No QA phones configured"));
}

crate::on_both_databases!(dashboard_counts_the_call);

/// The chart's and the table's queries on each database: the call is counted as
/// placed and answered in its bucket, and listed.
async fn dashboard_counts_the_call(db: Db) {
    let (gw, _callee, number) = gateway_on(db).await;
    for hours in ["1", "3", "24"] {
        let r = no_redirects()
            .get(gw.url(&format!("/admin?hours={hours}")))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        let html = r.text().await.unwrap();
        assert_dashboard(&html, &number);
        assert!(
            html.contains("1 placed") && html.contains("1 answered"),
            "{html}"
        );
        assert!(html.contains("1 call, 1 placed, 1 answered, answer rate 100%"));
        assert!(html.contains(&format!("last {hours} hours")));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_access_bearer_session_and_refusals() {
    let (gw, _callee, number) = gateway_with_a_call().await;
    let http = no_redirects();
    let admin = gw.url("/admin");

    // No credentials: to the login form.
    let r = http.get(&admin).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    assert_eq!(r.headers()[LOCATION], "/admin/login");
    let r = http.get(gw.url("/admin/login")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let form = r.text().await.unwrap();
    assert!(form.contains("name=\"token\"") && form.contains("action=\"/admin/login\""));

    // Bearer: wrong token 401, verify-only token 403, admin token the page.
    for (token, status) in [
        ("wrong-token", StatusCode::UNAUTHORIZED),
        (TOKEN, StatusCode::FORBIDDEN),
    ] {
        let r = http.get(&admin).bearer_auth(token).send().await.unwrap();
        assert_eq!(r.status(), status, "bearer {token}");
        assert!(!r.text().await.unwrap().contains("carrier-a"));
    }
    let r = http
        .get(&admin)
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let csp = r.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(csp.contains("default-src 'none'"), "{csp}");
    assert_eq!(r.headers()["cache-control"], "no-store");
    let html = r.text().await.unwrap();
    assert_dashboard(&html, &number);
    assert!(!html.contains("Log out"), "no session, no logout form");

    // Login: wrong and verify-only tokens are refused and set no cookie.
    for (token, status) in [
        ("wrong-token", StatusCode::UNAUTHORIZED),
        (TOKEN, StatusCode::FORBIDDEN),
        ("", StatusCode::UNAUTHORIZED),
    ] {
        let r = http
            .post(gw.url("/admin/login"))
            .form(&[("token", token)])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), status, "login with {token:?}");
        assert!(r.headers().get(SET_COOKIE).is_none());
    }
    // A form posted from another site is refused even with the right token.
    let r = http
        .post(gw.url("/admin/login"))
        .header("origin", "https://evil.example")
        .form(&[("token", ADMIN_TOKEN)])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    assert!(r.headers().get(SET_COOKIE).is_none());

    // The right token: a session cookie, HttpOnly, SameSite=Strict, not Secure over
    // plain http; Secure when a TLS proxy says the browser came over https.
    let r = http
        .post(gw.url("/admin/login"))
        .header("origin", gw.base_url())
        .form(&[("token", ADMIN_TOKEN)])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    assert_eq!(r.headers()[LOCATION], "/admin");
    let set = r.headers()[SET_COOKIE].to_str().unwrap().to_owned();
    for attr in ["HttpOnly", "SameSite=Strict", "Path=/admin", "Max-Age="] {
        assert!(set.contains(attr), "{attr} in {set}");
    }
    assert!(!set.contains("Secure"), "{set}");
    assert!(
        !set.contains(ADMIN_TOKEN),
        "the cookie is a session id, not the token"
    );
    let cookie = set.split(';').next().unwrap().to_owned();
    let r = http
        .post(gw.url("/admin/login"))
        .header("x-forwarded-proto", "https")
        .form(&[("token", ADMIN_TOKEN)])
        .send()
        .await
        .unwrap();
    assert!(r.headers()[SET_COOKIE]
        .to_str()
        .unwrap()
        .contains("; Secure"));

    // The cookie opens the page, with a logout form carrying a CSRF token.
    let r = http
        .get(&admin)
        .header(COOKIE, &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let html = r.text().await.unwrap();
    assert_dashboard(&html, &number);
    assert!(html.contains("signed in as <strong>ops</strong>"), "{html}");
    let csrf = html
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .expect("csrf field")
        .to_owned();
    assert_eq!(csrf.len(), 64);
    // A made-up cookie opens nothing.
    let r = http
        .get(&admin)
        .header(COOKIE, "otpdial_admin=0123456789abcdef")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::SEE_OTHER);

    // Logout needs the session's CSRF token; then the cookie is dead.
    let r = http
        .post(gw.url("/admin/logout"))
        .header(COOKIE, &cookie)
        .form(&[("csrf", "not-the-token")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let r = http
        .get(&admin)
        .header(COOKIE, &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK, "still signed in");
    let r = http
        .post(gw.url("/admin/logout"))
        .header(COOKIE, &cookie)
        .form(&[("csrf", csrf.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    assert!(r.headers()[SET_COOKIE]
        .to_str()
        .unwrap()
        .contains("Max-Age=0"));
    let r = http
        .get(&admin)
        .header(COOKIE, &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::SEE_OTHER, "logged out");

    // Nothing secret reached the log either.
    let log = gw.log();
    assert!(!log.contains(ADMIN_TOKEN) && !log.contains("4812"), "{log}");
    assert!(log.contains("admin signed in to the dashboard"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_in_headless_chromium() {
    let (gw, _callee, number) = gateway_with_a_call().await;
    let out = tempfile::Builder::new()
        .prefix("otpdial-dashboard-")
        .tempdir()
        .expect("tempdir")
        .keep();

    // Without credentials Chromium follows the redirect to the login form.
    let dom = chromium(&out, &["--dump-dom".to_owned()], &gw.url("/admin")).await;
    assert!(
        dom.contains("Sign in") && dom.contains("name=\"token\""),
        "{dom}"
    );
    assert!(!dom.contains("carrier-a"));

    // With the admin token as bearer.
    let bearer = header_proxy(
        gw.base_url(),
        HeaderName::from_static("authorization"),
        format!("Bearer {ADMIN_TOKEN}"),
    )
    .await;
    let dom = chromium(&out, &["--dump-dom".to_owned()], &format!("{bearer}/admin")).await;
    assert_dashboard(&dom, &number);

    // With a session from a real login, and a screenshot for a person to look at.
    let r = no_redirects()
        .post(gw.url("/admin/login"))
        .form(&[("token", ADMIN_TOKEN)])
        .send()
        .await
        .unwrap();
    let cookie = r.headers()[SET_COOKIE]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    let session = header_proxy(gw.base_url(), HeaderName::from_static("cookie"), cookie).await;
    let shot: PathBuf = out.join("dashboard.png");
    chromium(
        &out,
        &[
            format!("--screenshot={}", shot.display()),
            "--window-size=1280,1600".to_owned(),
        ],
        &format!("{session}/admin"),
    )
    .await;
    let png = std::fs::read(&shot).expect("screenshot written");
    assert!(png.starts_with(b"\x89PNG"), "a PNG");
    assert!(
        png.len() > 20_000,
        "a page with content, not a blank: {} bytes",
        png.len()
    );
    println!("dashboard screenshot: {}", shot.display());
}
