//! The dashboard's HTML, written with maud's `html!`: every value spliced in
//! is escaped unless it is marked otherwise, so nothing that comes from
//! outside the binary (trunk names, errors, ids, numbers) can reach the page
//! as markup by a forgotten call. Numbers are masked; codes and tokens are
//! never in the data given here.

use maud::{html, Markup, PreEscaped, DOCTYPE};

use super::format::{bucket, date_time, seconds};
use crate::domain::{CallStatus, PhoneNumber, RtpReceived};
use crate::store::{CallBucket, CallRecord};
use crate::trunks::{BreakerState, TrunkSnapshot};

/// A QA softphone as the dashboard shows it (filled in by the registrar).
#[derive(Debug, Clone)]
pub struct QaPhoneRow {
    pub username: String,
    /// The configured number, masked.
    pub number: String,
    pub registered: bool,
    /// Where its registration points (`sip:…`), while registered.
    pub contact: Option<String>,
    /// Seconds until the registration runs out.
    pub expires_in: Option<u64>,
}

/// Everything the dashboard shows.
pub(super) struct Dashboard<'a> {
    pub now_ms: i64,
    /// Who is looking (API key name) and, for a session, its CSRF token for
    /// the logout form.
    pub viewer: &'a str,
    pub csrf: Option<&'a str>,
    pub trunks: &'a [TrunkSnapshot],
    pub active_calls: u32,
    pub capacity: u32,
    pub hours: i64,
    pub bucket_ms: i64,
    /// `Err` holds what to say when the database could not be read.
    pub buckets: Result<Vec<CallBucket>, &'static str>,
    pub latest: Result<Vec<CallRecord>, &'static str>,
    pub qa_phones: &'a [QaPhoneRow],
    /// The canary panel (SPEC §7), or why it could not be read.
    pub canaries: Result<Vec<crate::api::canaries::CanaryView>, &'static str>,
    /// Calling by country: answer rate per trunk × country, caller IDs (SPEC §7).
    pub routing: Result<super::routing::RoutingPanel, &'static str>,
}

const STYLE: &str = r#"
*{box-sizing:border-box}
body{margin:0;font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;color:#1d2430;background:#f4f6f8}
header{display:flex;align-items:center;gap:16px;padding:12px 24px;background:#1d2c3c;color:#fff}
header h1{font-size:18px;margin:0;font-weight:600}
header .who{margin-left:auto;opacity:.85}
header form{margin:0}
header button{background:transparent;color:#fff;border:1px solid #8aa0b6;border-radius:4px;padding:4px 10px;cursor:pointer}
main{padding:16px 24px;max-width:1200px}
section{background:#fff;border:1px solid #dfe3e8;border-radius:6px;padding:14px 18px;margin-bottom:16px}
h2{font-size:15px;margin:0 0 10px}
.tiles{display:flex;gap:12px;flex-wrap:wrap;margin-bottom:16px}
.tile{background:#fff;border:1px solid #dfe3e8;border-radius:6px;padding:10px 16px;min-width:170px}
.tile .v{font-size:24px;font-weight:600}
.tile .k{color:#5b6673;font-size:12px;text-transform:uppercase;letter-spacing:.04em}
table{border-collapse:collapse;width:100%}
th,td{text-align:left;padding:6px 8px;border-bottom:1px solid #edf0f2;vertical-align:top}
th{font-size:12px;color:#5b6673;font-weight:600;text-transform:uppercase;letter-spacing:.03em}
td.num,th.num{text-align:right;font-variant-numeric:tabular-nums}
code{font:12px ui-monospace,"DejaVu Sans Mono",monospace}
.b{display:inline-block;padding:1px 8px;border-radius:10px;font-size:12px;font-weight:600;white-space:nowrap}
.ok{background:#dff3e6;color:#1d6b3e}.bad{background:#fbe1df;color:#9c2a20}.warn{background:#fdf0d8;color:#8a5a00}
.info{background:#e2ecf8;color:#1f4f86}.mute{background:#eceff2;color:#4d5763}
.err{color:#9c2a20;font-size:12px}
.muted{color:#6b7682}
.legend{display:flex;gap:18px;font-size:12px;color:#4d5763;margin:0 0 6px}
.legend i{display:inline-block;width:12px;height:12px;border-radius:2px;margin-right:5px;vertical-align:-1px}
.chart .ax{font-size:11px;fill:#5b6673}.chart .rate{fill:#b3661a}
nav.win{margin-bottom:4px}nav.win a,nav.win strong{margin:0 6px}
"#;

/// The page around `main`: head, style and the header bar.
fn layout(title: &str, refresh: bool, header_right: Markup, main: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width,initial-scale=1";
                meta name="robots" content="noindex";
                @if refresh {
                    meta http-equiv="refresh" content="30";
                }
                title { (title) }
                style { (PreEscaped(STYLE)) }
            }
            body {
                header {
                    h1 { "otpdial" }
                    span { "operator dashboard" }
                    (header_right)
                }
                main { (main) }
            }
        }
    }
}

/// A badge: `<span class="b CLASS">TEXT</span>`.
fn badge(class: &str, text: &str) -> Markup {
    html! { span class={ "b " (class) } { (text) } }
}

fn status_badge(status: CallStatus) -> Markup {
    let class = match status {
        CallStatus::Completed => "ok",
        CallStatus::Answered | CallStatus::Ringing | CallStatus::Dialing => "info",
        CallStatus::Busy | CallStatus::NoAnswer => "warn",
        CallStatus::Rejected | CallStatus::Failed => "bad",
        CallStatus::Queued | CallStatus::Canceled => "mute",
    };
    badge(class, status.as_str())
}

fn trunk_rows(trunks: &[TrunkSnapshot]) -> Markup {
    if trunks.is_empty() {
        return html! { p.muted { "No trunks configured." } };
    }
    html! {
        table {
            thead { tr {
                th { "Trunk" } th { "Registration" } th { "Reachable" } th { "Breaker" }
                th.num { "Active" } th.num { "Calls" } th.num { "Answer rate" } th { "Last error" }
            } }
            tbody {
                @for t in trunks {
                    @let registration = match (t.register, t.status.registered) {
                        (false, _) => ("mute", "IP-authenticated"),
                        (true, true) => ("ok", "registered"),
                        (true, false) => ("bad", "not registered"),
                    };
                    @let reachable = match t.status.reachable {
                        Some(true) => ("ok", "yes"),
                        Some(false) => ("bad", "no"),
                        None => ("mute", "unknown"),
                    };
                    @let breaker = match t.breaker {
                        BreakerState::Closed => ("ok", "closed"),
                        BreakerState::HalfOpen => ("warn", "half-open"),
                        BreakerState::Open => ("bad", "open (down)"),
                    };
                    tr {
                        td { strong { (t.name) } }
                        td { (badge(registration.0, registration.1)) }
                        td { (badge(reachable.0, reachable.1)) }
                        td {
                            (badge(breaker.0, breaker.1))
                            @if t.consecutive_failures > 0 {
                                " " span.muted { (t.consecutive_failures) " failed in a row" }
                            }
                        }
                        td.num { (t.active_calls) " / " (t.max_concurrent_calls) }
                        td.num { (t.calls_total) }
                        td.num {
                            @if t.calls_total == 0 { "–" } @else { (format!("{:.0}%", t.answer_rate() * 100.0)) }
                        }
                        td.err { (t.status.last_error.as_deref().unwrap_or("")) }
                    }
                }
            }
        }
    }
}

fn call_rows(calls: &[CallRecord]) -> Markup {
    if calls.is_empty() {
        return html! { p.muted { "No calls yet." } };
    }
    html! {
        table {
            thead { tr {
                th { "Created (UTC)" } th { "Number" } th { "Trunk" } th { "Status" }
                th.num { "SIP" } th.num { "Duration" } th.num { "Code read" } th.num { "Far-end RTP" }
                th { "Verification" }
            } }
            tbody {
                @for c in calls {
                    tr {
                        td { (date_time(c.created_at)) }
                        td { code { (PhoneNumber::from_trusted(c.phone.clone()).masked()) } }
                        td { (c.trunk.as_deref().unwrap_or("–")) }
                        td { (status_badge(c.status)) }
                        td.num {
                            @match c.sip_code { Some(s) => { (s) }, None => { "–" }, }
                        }
                        td.num {
                            @match (c.answered_at, c.ended_at) {
                                (Some(a), Some(e)) => { (seconds(e - a)) },
                                (Some(_), None) => { "in call" },
                                (None, Some(e)) => {
                                    span.muted { (seconds(e - c.created_at)) " unanswered" }
                                },
                                (None, None) => { "–" },
                            }
                        }
                        td.num { (c.times_played) "×" }
                        td.num { (received_cell(c.received.as_ref())) }
                        td { code { (c.verification_id) } }
                    }
                }
            }
        }
    }
}

/// What the call's far end sent, as measured: loss and jitter (a bad path shows
/// here), with the packet counts and codec in the tooltip.
fn received_cell(r: Option<&RtpReceived>) -> Markup {
    let Some(r) = r else {
        return html! { span.muted { "–" } };
    };
    let mut title = format!("{} packets received, {} lost", r.packets, r.lost);
    if let Some(c) = &r.codec {
        title.push_str(&format!(", {c}"));
    }
    if r.srtp_rejected > 0 {
        title.push_str(&format!(", {} failed SRTP checks", r.srtp_rejected));
    }
    html! {
        span title=(title) {
            (format!("{:.1}% lost · {:.1} ms jitter", r.loss() * 100.0, r.jitter_ms()))
        }
    }
}

fn qa_rows(phones: &[QaPhoneRow]) -> Markup {
    if phones.is_empty() {
        return html! { p.muted { "No QA phones configured." } };
    }
    html! {
        table {
            thead { tr {
                th { "User" } th { "Number" } th { "Registration" } th { "Contact" }
                th.num { "Expires in" }
            } }
            tbody {
                @for p in phones {
                    tr {
                        td { (p.username) }
                        td { code { (p.number) } }
                        td {
                            @if p.registered { (badge("ok", "registered")) }
                            @else { (badge("mute", "not registered")) }
                        }
                        td { code { (p.contact.as_deref().unwrap_or("–")) } }
                        td.num {
                            @match p.expires_in {
                                Some(s) => { (seconds(i64::try_from(s.saturating_mul(1000)).unwrap_or(i64::MAX))) },
                                None => { "–" },
                            }
                        }
                    }
                }
            }
        }
    }
}

/// A section whose content could not be read shows why.
fn or_error<T>(read: &Result<T, &'static str>, show: impl FnOnce(&T) -> Markup) -> Markup {
    match read {
        Ok(v) => show(v),
        Err(e) => html! { p.err { (e) } },
    }
}

/// Totals over the chart's window: (calls, placed, answered, completed).
fn totals(buckets: &Result<Vec<CallBucket>, &'static str>) -> (i64, i64, i64, i64) {
    match buckets {
        Ok(b) => b.iter().fold((0, 0, 0, 0), |a, b| {
            (
                a.0 + b.calls,
                a.1 + b.dialled,
                a.2 + b.answered,
                a.3 + b.completed,
            )
        }),
        Err(_) => (0, 0, 0, 0),
    }
}

fn pct(n: i64, of: i64) -> String {
    if of == 0 {
        "–".to_string()
    } else {
        format!("{:.0}%", n as f64 * 100.0 / of as f64)
    }
}

fn tile(key: &str, value: &str, note: &str) -> Markup {
    html! {
        div.tile { div.k { (key) } div.v { (value) } div.muted { (note) } }
    }
}

/// The whole dashboard page.
pub(super) fn dashboard(d: &Dashboard<'_>) -> String {
    let (calls, placed, answered, completed) = totals(&d.buckets);
    let usable = d.trunks.iter().filter(|t| t.usable()).count();
    let h = d.hours;
    let who = html! {
        span.who { (date_time(d.now_ms)) " UTC · signed in as " strong { (d.viewer) } }
        @if let Some(csrf) = d.csrf {
            form method="post" action="/admin/logout" {
                input type="hidden" name="csrf" value=(csrf);
                button type="submit" { "Log out" }
            }
        }
    };
    let main = html! {
        div.tiles {
            (tile("Active calls", &d.active_calls.to_string(), &format!("of {} slots", d.capacity)))
            (tile("Trunks usable", &format!("{usable} / {}", d.trunks.len()), "registered, reachable, breaker closed"))
            (tile(&format!("Calls, last {h} h"), &calls.to_string(), &format!("{placed} placed")))
            (tile(&format!("Answer rate, last {h} h"), &pct(answered, placed), &format!("{answered} answered")))
            (tile(&format!("Code read, last {h} h"), &pct(completed, placed), &format!("{completed} completed")))
        }
        section #trunks { h2 { "Trunks" } (trunk_rows(d.trunks)) }
        section #chart {
            h2 { "Calls per " (bucket(d.bucket_ms)) " and answer rate, last " (h) " hours (UTC)" }
            nav.win {
                "Window:"
                @for w in [1, 3, 6, 24] {
                    " "
                    @if w == h { strong { (w) " h" } } @else { a href={ "?hours=" (w) } { (w) " h" } }
                }
            }
            p.legend {
                span { i style="background:#9db4cc" {} "calls" }
                span { i style="background:#2e9b5f" {} "answered" }
                span { i style="background:#d9822b" {} "answer rate (right axis)" }
            }
            (or_error(&d.buckets, |b| super::chart::render(b, d.bucket_ms)))
        }
        section #calls { h2 { "Latest calls" } (or_error(&d.latest, |c| call_rows(c))) }
        section #routing { h2 { "Routes and caller IDs" } (or_error(&d.routing, super::routing::render)) }
        section #canaries { h2 { "Canaries" } (or_error(&d.canaries, |c| super::canaries::render(c))) }
        section #qa-phones { h2 { "QA phones" } (qa_rows(d.qa_phones)) }
        p.muted {
            "Refreshes every 30 s. Numbers are masked; codes are never shown. Machine-readable: "
            code { "/v1/trunks" } ", " code { "/v1/calls" } ", " code { "/v1/canaries" } ", " code { "/v1/caller-ids" } ", "
            code { "/metrics" } "."
        }
    };
    layout("otpdial · dashboard", true, who, main).into_string()
}

/// The login form; `error` is shown above it.
pub(super) fn login(error: Option<&str>) -> String {
    let main = html! {
        section style="max-width:460px" {
            h2 { "Sign in" }
            @if let Some(e) = error {
                p.err role="alert" { (e) }
            }
            form method="post" action="/admin/login" {
                label for="token" { "Admin API token" }
                br;
                input #token name="token" type="password" autocomplete="off" required
                    style="width:100%;padding:6px;margin:6px 0 10px";
                br;
                button type="submit" style="padding:6px 16px" { "Sign in" }
            }
            p.muted {
                "A token with the " code { "admin" } " scope, from "
                code { "otpdial apikey new --name ops --scope admin" } ". The session lasts 8 hours."
            }
        }
    };
    layout("otpdial · sign in", false, html! {}, main).into_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_escaped_in_text_and_attributes() {
        let page = login(Some(r#"<a href="x">'&'</a>"#));
        assert!(
            page.contains("&lt;a href=&quot;x&quot;&gt;'&amp;'&lt;/a&gt;"),
            "{page}"
        );
        assert!(!page.contains("<a href=\"x\">"));
        let rows = qa_rows(&[QaPhoneRow {
            username: "qa<b>".into(),
            number: "+31 6 **** 78".into(),
            registered: true,
            contact: Some("sip:x@1.2.3.4;a=\"<>\"".into()),
            expires_in: Some(517),
        }])
        .into_string();
        assert!(
            rows.contains("qa&lt;b&gt;") && !rows.contains("qa<b>"),
            "{rows}"
        );
        assert!(rows.contains("a=&quot;&lt;&gt;&quot;"), "{rows}");
        assert!(rows.contains("8m 37s"), "{rows}");
    }
}
