//! The dashboard's HTML, built as strings: the page is one fixed layout
//! with a few tables, so a template engine would add a dependency and a
//! second language for no gain. Everything that comes from outside the
//! binary (trunk names, errors, ids, numbers) goes through [`Esc`].
//! Numbers are masked; codes and tokens are never in the data given here.

use std::fmt::{self, Write as _};

use crate::domain::{CallStatus, PhoneNumber};
use crate::store::{CallBucket, CallRecord};
use crate::trunks::{BreakerState, TrunkSnapshot};

/// Displays a string HTML-escaped (text and attribute values alike).
pub(super) struct Esc<'a>(pub &'a str);

impl fmt::Display for Esc<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut rest = self.0;
        while let Some(i) = rest.find(['&', '<', '>', '"', '\'']) {
            f.write_str(&rest[..i])?;
            f.write_str(match rest.as_bytes()[i] {
                b'&' => "&amp;",
                b'<' => "&lt;",
                b'>' => "&gt;",
                b'"' => "&quot;",
                _ => "&#39;",
            })?;
            rest = &rest[i + 1..];
        }
        f.write_str(rest)
    }
}

/// `HH:MM` UTC of a unix-millisecond time.
pub(super) fn clock(ms: i64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp(ms.div_euclid(1000))
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    format!("{:02}:{:02}", t.hour(), t.minute())
}

/// `YYYY-MM-DD HH:MM:SS` UTC.
fn date_time(ms: i64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp(ms.div_euclid(1000))
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    format!(
        "{}-{:02}-{:02} {:02}:{:02}:{:02}",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

fn seconds(ms: i64) -> String {
    let ms = ms.max(0);
    if ms < 60_000 {
        format!("{:.1} s", ms as f64 / 1000.0)
    } else {
        format!("{}m {:02}s", ms / 60_000, (ms % 60_000) / 1000)
    }
}

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

fn head(out: &mut String, title: &str, refresh: bool) {
    let _ = write!(
        out,
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">\
         <meta name=\"robots\" content=\"noindex\">{}<title>{}</title><style>{STYLE}</style></head>",
        if refresh {
            "<meta http-equiv=\"refresh\" content=\"30\">"
        } else {
            ""
        },
        Esc(title)
    );
}

fn status_badge(status: CallStatus) -> (&'static str, &'static str) {
    let class = match status {
        CallStatus::Completed => "ok",
        CallStatus::Answered | CallStatus::Ringing | CallStatus::Dialing => "info",
        CallStatus::Busy | CallStatus::NoAnswer => "warn",
        CallStatus::Rejected | CallStatus::Failed => "bad",
        CallStatus::Queued | CallStatus::Canceled => "mute",
    };
    (class, status.as_str())
}

fn trunk_rows(out: &mut String, trunks: &[TrunkSnapshot]) {
    if trunks.is_empty() {
        out.push_str("<p class=\"muted\">No trunks configured.</p>");
        return;
    }
    out.push_str(
        "<table><thead><tr><th>Trunk</th><th>Registration</th><th>Reachable</th><th>Breaker</th>\
         <th class=\"num\">Active</th><th class=\"num\">Calls</th><th class=\"num\">Answer rate</th>\
         <th>Last error</th></tr></thead><tbody>",
    );
    for t in trunks {
        let registration = match (t.register, t.status.registered) {
            (false, _) => ("mute", "IP-authenticated"),
            (true, true) => ("ok", "registered"),
            (true, false) => ("bad", "not registered"),
        };
        let reachable = match t.status.reachable {
            Some(true) => ("ok", "yes"),
            Some(false) => ("bad", "no"),
            None => ("mute", "unknown"),
        };
        let breaker = match t.breaker {
            BreakerState::Closed => ("ok", "closed"),
            BreakerState::HalfOpen => ("warn", "half-open"),
            BreakerState::Open => ("bad", "open (down)"),
        };
        let failures = if t.consecutive_failures > 0 {
            format!(
                " <span class=\"muted\">{} failed in a row</span>",
                t.consecutive_failures
            )
        } else {
            String::new()
        };
        let rate = if t.calls_total == 0 {
            "–".to_string()
        } else {
            format!("{:.0}%", t.answer_rate() * 100.0)
        };
        let _ = write!(
            out,
            "<tr><td><strong>{name}</strong></td><td><span class=\"b {rc}\">{rt}</span></td>\
             <td><span class=\"b {hc}\">{ht}</span></td><td><span class=\"b {bc}\">{bt}</span>{failures}</td>\
             <td class=\"num\">{active} / {max}</td><td class=\"num\">{total}</td><td class=\"num\">{rate}</td>\
             <td class=\"err\">{err}</td></tr>",
            name = Esc(&t.name),
            rc = registration.0,
            rt = registration.1,
            hc = reachable.0,
            ht = reachable.1,
            bc = breaker.0,
            bt = breaker.1,
            active = t.active_calls,
            max = t.max_concurrent_calls,
            total = t.calls_total,
            err = Esc(t.status.last_error.as_deref().unwrap_or("")),
        );
    }
    out.push_str("</tbody></table>");
}

fn call_rows(out: &mut String, calls: &[CallRecord]) {
    if calls.is_empty() {
        out.push_str("<p class=\"muted\">No calls yet.</p>");
        return;
    }
    out.push_str(
        "<table><thead><tr><th>Created (UTC)</th><th>Number</th><th>Trunk</th><th>Status</th>\
         <th class=\"num\">SIP</th><th class=\"num\">Duration</th><th class=\"num\">Code read</th>\
         <th>Verification</th></tr></thead><tbody>",
    );
    for c in calls {
        let (class, status) = status_badge(c.status);
        let number = PhoneNumber::from_trusted(c.phone.clone()).masked();
        let duration = match (c.answered_at, c.ended_at) {
            (Some(a), Some(e)) => seconds(e - a),
            (Some(_), None) => "in call".to_string(),
            (None, Some(e)) => format!(
                "<span class=\"muted\">{} unanswered</span>",
                seconds(e - c.created_at)
            ),
            (None, None) => "–".to_string(),
        };
        let _ = write!(
            out,
            "<tr><td>{created}</td><td><code>{number}</code></td><td>{trunk}</td>\
             <td><span class=\"b {class}\">{status}</span></td><td class=\"num\">{sip}</td>\
             <td class=\"num\">{duration}</td><td class=\"num\">{played}×</td><td><code>{vid}</code></td></tr>",
            created = date_time(c.created_at),
            number = Esc(&number),
            trunk = Esc(c.trunk.as_deref().unwrap_or("–")),
            sip = c.sip_code.map(|s| s.to_string()).unwrap_or_else(|| "–".into()),
            played = c.times_played,
            vid = Esc(&c.verification_id),
        );
    }
    out.push_str("</tbody></table>");
}

fn qa_rows(out: &mut String, phones: &[QaPhoneRow]) {
    if phones.is_empty() {
        out.push_str("<p class=\"muted\">No QA phones configured.</p>");
        return;
    }
    out.push_str(
        "<table><thead><tr><th>User</th><th>Number</th><th>Registration</th><th>Contact</th>\
         <th class=\"num\">Expires in</th></tr></thead><tbody>",
    );
    for p in phones {
        let (class, text) = if p.registered {
            ("ok", "registered")
        } else {
            ("mute", "not registered")
        };
        let _ = write!(
            out,
            "<tr><td>{user}</td><td><code>{number}</code></td><td><span class=\"b {class}\">{text}</span></td>\
             <td><code>{contact}</code></td><td class=\"num\">{expires}</td></tr>",
            user = Esc(&p.username),
            number = Esc(&p.number),
            contact = Esc(p.contact.as_deref().unwrap_or("–")),
            expires = p
                .expires_in
                .map(|s| seconds(i64::try_from(s.saturating_mul(1000)).unwrap_or(i64::MAX)))
                .unwrap_or_else(|| "–".into()),
        );
    }
    out.push_str("</tbody></table>");
}

/// The whole dashboard page.
pub(super) fn dashboard(d: &Dashboard<'_>) -> String {
    let mut out = String::with_capacity(48 * 1024);
    head(&mut out, "otpdial · dashboard", true);
    let _ = write!(
        out,
        "<body><header><h1>otpdial</h1><span>operator dashboard</span>\
         <span class=\"who\">{now} UTC · signed in as <strong>{viewer}</strong></span>",
        now = date_time(d.now_ms),
        viewer = Esc(d.viewer),
    );
    if let Some(csrf) = d.csrf {
        let _ = write!(
            out,
            "<form method=\"post\" action=\"/admin/logout\"><input type=\"hidden\" name=\"csrf\" value=\"{}\">\
             <button type=\"submit\">Log out</button></form>",
            Esc(csrf)
        );
    }
    out.push_str("</header><main>");

    // Tiles: now, and over the chart's window.
    let (calls, placed, answered, completed) = match &d.buckets {
        Ok(b) => b.iter().fold((0, 0, 0, 0), |a, b| {
            (
                a.0 + b.calls,
                a.1 + b.dialled,
                a.2 + b.answered,
                a.3 + b.completed,
            )
        }),
        Err(_) => (0, 0, 0, 0),
    };
    let pct = |n: i64, of: i64| {
        if of == 0 {
            "–".to_string()
        } else {
            format!("{:.0}%", n as f64 * 100.0 / of as f64)
        }
    };
    let usable = d.trunks.iter().filter(|t| t.usable()).count();
    let _ = write!(
        out,
        "<div class=\"tiles\">\
         <div class=\"tile\"><div class=\"k\">Active calls</div><div class=\"v\">{active}</div><div class=\"muted\">of {cap} slots</div></div>\
         <div class=\"tile\"><div class=\"k\">Trunks usable</div><div class=\"v\">{usable} / {trunks}</div><div class=\"muted\">registered, reachable, breaker closed</div></div>\
         <div class=\"tile\"><div class=\"k\">Calls, last {h} h</div><div class=\"v\">{calls}</div><div class=\"muted\">{placed} placed</div></div>\
         <div class=\"tile\"><div class=\"k\">Answer rate, last {h} h</div><div class=\"v\">{ar}</div><div class=\"muted\">{answered} answered</div></div>\
         <div class=\"tile\"><div class=\"k\">Code read, last {h} h</div><div class=\"v\">{cr}</div><div class=\"muted\">{completed} completed</div></div>\
         </div>",
        active = d.active_calls,
        cap = d.capacity,
        trunks = d.trunks.len(),
        h = d.hours,
        ar = pct(answered, placed),
        cr = pct(completed, placed),
    );

    out.push_str("<section id=\"trunks\"><h2>Trunks</h2>");
    trunk_rows(&mut out, d.trunks);
    out.push_str("</section>");

    let per = if d.bucket_ms >= 60_000 {
        format!("{} min", d.bucket_ms / 60_000)
    } else {
        format!("{} s", d.bucket_ms / 1000)
    };
    let _ = write!(
        out,
        "<section id=\"chart\"><h2>Calls per {per} and answer rate, last {h} hours (UTC)</h2>\
         <nav class=\"win\">Window: {links}</nav>\
         <p class=\"legend\"><span><i style=\"background:#9db4cc\"></i>calls</span><span><i style=\"background:#2e9b5f\"></i>answered</span>\
         <span><i style=\"background:#d9822b\"></i>answer rate (right axis)</span></p>",
        h = d.hours,
        links = [1, 3, 6, 24]
            .iter()
            .map(|h| if *h == d.hours {
                format!("<strong>{h} h</strong>")
            } else {
                format!("<a href=\"?hours={h}\">{h} h</a>")
            })
            .collect::<Vec<_>>()
            .join(" "),
    );
    match &d.buckets {
        Ok(b) => out.push_str(&super::chart::render(b, d.bucket_ms)),
        Err(e) => {
            let _ = write!(out, "<p class=\"err\">{}</p>", Esc(e));
        }
    }
    out.push_str("</section>");

    out.push_str("<section id=\"calls\"><h2>Latest calls</h2>");
    match &d.latest {
        Ok(c) => call_rows(&mut out, c),
        Err(e) => {
            let _ = write!(out, "<p class=\"err\">{}</p>", Esc(e));
        }
    }
    out.push_str("</section>");

    out.push_str("<section id=\"routing\"><h2>Routes and caller IDs</h2>");
    match &d.routing {
        Ok(r) => super::routing::render(&mut out, r),
        Err(e) => {
            let _ = write!(out, "<p class=\"err\">{}</p>", Esc(e));
        }
    }
    out.push_str("</section>");

    out.push_str("<section id=\"canaries\"><h2>Canaries</h2>");
    match &d.canaries {
        Ok(c) => super::canaries::render(&mut out, c),
        Err(e) => {
            let _ = write!(out, "<p class=\"err\">{}</p>", Esc(e));
        }
    }
    out.push_str("</section>");

    out.push_str("<section id=\"qa-phones\"><h2>QA phones</h2>");
    qa_rows(&mut out, d.qa_phones);
    out.push_str("</section>");

    out.push_str(
        "<p class=\"muted\">Refreshes every 30 s. Numbers are masked; codes are never shown. \
         Machine-readable: <code>/v1/trunks</code>, <code>/v1/calls</code>, <code>/v1/canaries</code>, <code>/v1/caller-ids</code>, <code>/metrics</code>.</p>\
         </main></body></html>",
    );
    out
}

/// The login form; `error` is shown above it.
pub(super) fn login(error: Option<&str>) -> String {
    let mut out = String::with_capacity(4096);
    head(&mut out, "otpdial · sign in", false);
    out.push_str(
        "<body><header><h1>otpdial</h1><span>operator dashboard</span></header>\
         <main><section style=\"max-width:460px\"><h2>Sign in</h2>",
    );
    if let Some(e) = error {
        let _ = write!(out, "<p class=\"err\" role=\"alert\">{}</p>", Esc(e));
    }
    out.push_str(
        "<form method=\"post\" action=\"/admin/login\">\
         <label for=\"token\">Admin API token</label><br>\
         <input id=\"token\" name=\"token\" type=\"password\" autocomplete=\"off\" required \
         style=\"width:100%;padding:6px;margin:6px 0 10px\"><br>\
         <button type=\"submit\" style=\"padding:6px 16px\">Sign in</button></form>\
         <p class=\"muted\">A token with the <code>admin</code> scope, from <code>otpdial apikey new --name ops --scope admin</code>. \
         The session lasts 8 hours.</p></section></main></body></html>",
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_markup_and_quotes() {
        assert_eq!(
            Esc(r#"<a href="x">'&'</a>"#).to_string(),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;"
        );
        assert_eq!(Esc("plain").to_string(), "plain");
    }

    #[test]
    fn times_and_durations() {
        assert_eq!(clock(3_600_000 + 5 * 60_000 + 59_000), "01:05");
        assert_eq!(date_time(0), "1970-01-01 00:00:00");
        assert_eq!(seconds(3_240), "3.2 s");
        assert_eq!(seconds(125_000), "2m 05s");
    }
}
