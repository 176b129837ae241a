//! The dashboard's canary panel (SPEC §7): per trunk under test, each canary with its
//! state, its last run's figures (post-dial delay, MOS, loss, jitter) and its latest
//! results at a glance. Built from the same views as `GET /v1/canaries`.

use maud::{html, Markup};

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

/// The panel: one table per trunk (or "normal routing").
pub(super) fn render(canaries: &[CanaryView]) -> Markup {
    let mut trunks: Vec<Option<&str>> = canaries.iter().map(|c| c.trunk.as_deref()).collect();
    trunks.sort();
    trunks.dedup();
    html! {
        @if canaries.is_empty() {
            p.muted { "No canaries configured (" code { "[[canaries]]" } ")." }
        }
        @for trunk in trunks {
            h3 style="font-size:13px;margin:10px 0 4px" {
                @match trunk {
                    Some(t) => { "Trunk " strong { (t) } },
                    None => { "Normal routing" },
                }
            }
            table {
                thead { tr {
                    th { "Canary" } th { "Number" } th { "State" } th { "Last run" }
                    th.num { "Post-dial delay" } th.num { "MOS" } th.num { "Loss" }
                    th.num { "Jitter" } th { "Last success (UTC)" } th { "Latest results" }
                } }
                tbody {
                    @for c in canaries.iter().filter(|c| c.trunk.as_deref() == trunk) {
                        (row(c))
                    }
                }
            }
        }
    }
}

fn row(c: &CanaryView) -> Markup {
    let failing = c.state == "failing";
    // The latest finished run carries the figures; one in progress shows as such.
    let last = c.runs.iter().find(|r| r.result.is_some());
    html! {
        tr {
            td { strong { (c.name) } " " span.muted { "every " (c.interval) } }
            td { code { (c.number) } }
            td {
                span class={ "b " (if failing { "bad" } else { "ok" }) } { (c.state) }
                @if failing {
                    " " span.muted { (c.consecutive_failures) " failed in a row" }
                }
            }
            td {
                @if let Some(r) = last {
                    @let result = r.result.as_deref();
                    span class={ "b " (result_class(result)) } { (result.unwrap_or("")) }
                    @if let Some(h) = &r.heard {
                        " " span.muted { "heard " (h) }
                    }
                    " " span.muted { (r.at) }
                } @else {
                    span.muted { "no run yet" }
                }
            }
            td.num { (figure(last.and_then(|r| r.post_dial_delay_ms), " ms")) }
            td.num { (figure(last.and_then(|r| r.mos).map(|m| format!("{m:.2}")), "")) }
            td.num { (figure(last.and_then(|r| r.loss).map(|l| format!("{:.1}", l * 100.0)), " %")) }
            td.num { (figure(last.and_then(|r| r.jitter_ms).map(|j| format!("{j:.1}")), " ms")) }
            td { (c.last_success_at.as_deref().unwrap_or("never")) }
            td {
                @for (i, r) in c.runs.iter().rev().enumerate() {
                    @if i > 0 { " " }
                    span class={ "b " (result_class(r.result.as_deref())) }
                        title={ (r.at) " " (r.result.as_deref().unwrap_or("running")) } {
                        @match r.result.as_deref() {
                            Some("ok") => { "✓" },
                            None => { "…" },
                            Some(_) => { "✗" },
                        }
                    }
                }
            }
        }
    }
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
        let out = render(&[view]).into_string();
        assert!(out.contains("Trunk <strong>t&lt;1&gt;</strong>"), "{out}");
        assert!(out.contains("nl&lt;x&gt;"));
        assert!(!out.contains("nl<x>"));
        assert!(out.contains("wrong_digits</span> <span class=\"muted\">heard 1234"));
        assert!(out.contains("120 ms") && out.contains("4.32") && out.contains("1.5 %"));
        assert!(out.contains("3 failed in a row"));
        assert!(out.contains("never"));
        let empty = render(&[]).into_string();
        assert!(empty.contains("No canaries configured"));
    }
}
