//! The dashboard's canary panel (SPEC §7): per trunk under test, each canary with its
//! state, its last run's figures (post-dial delay, MOS, loss, jitter) and its latest
//! results at a glance. Built from the same views as `GET /v1/canaries`.

use std::fmt::Write as _;

use super::page::Esc;
use crate::api::canaries::CanaryView;

fn result_class(result: Option<&str>) -> &'static str {
    match result {
        Some("ok") => "ok",
        Some("not_answered" | "wrong_digits" | "not_heard") => "warn",
        Some(_) => "bad",
        None => "info",
    }
}

fn figure<T: std::fmt::Display>(v: Option<T>, unit: &str) -> String {
    v.map_or_else(|| "–".to_string(), |v| format!("{v}{unit}"))
}

/// Appends the panel: one table per trunk (or "normal routing").
pub(super) fn render(out: &mut String, canaries: &[CanaryView]) {
    if canaries.is_empty() {
        out.push_str("<p class=\"muted\">No canaries configured (<code>[[canaries]]</code>).</p>");
        return;
    }
    let mut trunks: Vec<Option<&str>> = canaries.iter().map(|c| c.trunk.as_deref()).collect();
    trunks.sort();
    trunks.dedup();
    for trunk in trunks {
        let _ = write!(
            out,
            "<h3 style=\"font-size:13px;margin:10px 0 4px\">{}</h3>",
            match trunk {
                Some(t) => format!("Trunk <strong>{}</strong>", Esc(t)),
                None => "Normal routing".to_string(),
            }
        );
        out.push_str(
            "<table><thead><tr><th>Canary</th><th>Number</th><th>State</th><th>Last run</th>\
             <th class=\"num\">Post-dial delay</th><th class=\"num\">MOS</th><th class=\"num\">Loss</th>\
             <th class=\"num\">Jitter</th><th>Last success (UTC)</th><th>Latest results</th></tr></thead><tbody>",
        );
        for c in canaries.iter().filter(|c| c.trunk.as_deref() == trunk) {
            row(out, c);
        }
        out.push_str("</tbody></table>");
    }
}

fn row(out: &mut String, c: &CanaryView) {
    let (state_class, failures) = if c.state == "failing" {
        (
            "bad",
            format!(
                " <span class=\"muted\">{} failed in a row</span>",
                c.consecutive_failures
            ),
        )
    } else {
        ("ok", String::new())
    };
    // The latest finished run carries the figures; one in progress shows as such.
    let last = c.runs.iter().find(|r| r.result.is_some());
    let last_badge = match last {
        Some(r) => {
            let result = r.result.as_deref();
            let heard = r
                .heard
                .as_deref()
                .map(|h| format!(" <span class=\"muted\">heard {}</span>", Esc(h)))
                .unwrap_or_default();
            format!(
                "<span class=\"b {}\">{}</span>{heard} <span class=\"muted\">{}</span>",
                result_class(result),
                Esc(result.unwrap_or("")),
                Esc(&r.at),
            )
        }
        None => "<span class=\"muted\">no run yet</span>".to_string(),
    };
    let history: String = c
        .runs
        .iter()
        .rev()
        .map(|r| {
            format!(
                "<span class=\"b {}\" title=\"{} {}\">{}</span>",
                result_class(r.result.as_deref()),
                Esc(&r.at),
                Esc(r.result.as_deref().unwrap_or("running")),
                match r.result.as_deref() {
                    Some("ok") => "✓",
                    None => "…",
                    Some(_) => "✗",
                }
            )
        })
        .collect::<Vec<_>>()
        .join(" ");
    let _ = write!(
        out,
        "<tr><td><strong>{name}</strong> <span class=\"muted\">every {interval}</span></td>\
         <td><code>{number}</code></td><td><span class=\"b {state_class}\">{state}</span>{failures}</td>\
         <td>{last_badge}</td><td class=\"num\">{pdd}</td><td class=\"num\">{mos}</td>\
         <td class=\"num\">{loss}</td><td class=\"num\">{jitter}</td><td>{success}</td><td>{history}</td></tr>",
        name = Esc(&c.name),
        interval = Esc(&c.interval),
        number = Esc(&c.number),
        state = Esc(&c.state),
        pdd = figure(last.and_then(|r| r.post_dial_delay_ms), " ms"),
        mos = figure(last.and_then(|r| r.mos).map(|m| format!("{m:.2}")), ""),
        loss = figure(last.and_then(|r| r.loss).map(|l| format!("{:.1}", l * 100.0)), " %"),
        jitter = figure(last.and_then(|r| r.jitter_ms).map(|j| format!("{j:.1}")), " ms"),
        success = Esc(c.last_success_at.as_deref().unwrap_or("never")),
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::canaries::CanaryRunView;

    fn run(result: Option<&str>, heard: Option<&str>) -> CanaryRunView {
        CanaryRunView {
            id: "cr_1".into(),
            result: result.map(str::to_string),
            reason: None,
            trunk: Some("t<1>".into()),
            sip_code: Some(200),
            post_dial_delay_ms: Some(120),
            setup_ms: Some(900),
            loss: Some(0.015),
            jitter_ms: Some(2.25),
            mos: Some(4.32),
            codec: Some("PCMA".into()),
            heard: heard.map(str::to_string),
            at: "2026-11-27T14:10:00Z".into(),
            placed_by: "a".into(),
            answered_by: Some("b".into()),
        }
    }

    #[test]
    fn groups_by_trunk_escapes_and_shows_the_last_finished_run() {
        let view = CanaryView {
            name: "nl<x>".into(),
            number: "+31201234567".into(),
            trunk: Some("t<1>".into()),
            interval: "15m".into(),
            far_end: "answer_number".into(),
            state: "failing".into(),
            consecutive_failures: 3,
            last_success_at: None,
            next_run_at: None,
            runs: vec![run(None, None), run(Some("wrong_digits"), Some("1234"))],
        };
        let mut out = String::new();
        render(&mut out, &[view]);
        assert!(out.contains("Trunk <strong>t&lt;1&gt;</strong>"), "{out}");
        assert!(out.contains("nl&lt;x&gt;"));
        assert!(!out.contains("nl<x>"));
        assert!(out.contains("wrong_digits</span> <span class=\"muted\">heard 1234"));
        assert!(out.contains("120 ms") && out.contains("4.32") && out.contains("1.5 %"));
        assert!(out.contains("3 failed in a row"));
        assert!(out.contains("never"));
        let mut empty = String::new();
        render(&mut empty, &[]);
        assert!(empty.contains("No canaries configured"));
    }
}
