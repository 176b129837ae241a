//! The dashboard's calling-by-country panel (SPEC §7): per trunk and destination
//! country the recent answer rate and calls (what `routing = "quality"` compares),
//! and each caller ID with its pool, answer rate and rest. Built from the same views
//! as `GET /v1/trunks` and `GET /v1/caller-ids`.

use std::collections::HashMap;
use std::fmt::Write as _;

use super::page::Esc;
use crate::api::{CallerIdView, TrunkCountryView};

/// What the panel shows.
pub(in crate::api) struct RoutingPanel {
    /// `priority` or `quality`.
    pub routing: &'static str,
    pub countries: HashMap<String, Vec<TrunkCountryView>>,
    pub caller_ids: Vec<CallerIdView>,
}

fn percent(rate: Option<f64>) -> String {
    rate.map_or_else(|| "–".to_string(), |r| format!("{:.0} %", r * 100.0))
}

/// Appends the panel.
pub(super) fn render(out: &mut String, p: &RoutingPanel) {
    let _ = write!(
        out,
        "<p class=\"muted\">Routing: <strong>{}</strong>. Answer rates over <code>[dialer] quality_window</code>, all instances.</p>",
        Esc(p.routing)
    );
    let mut trunks: Vec<&String> = p.countries.keys().collect();
    trunks.sort();
    if trunks.is_empty() {
        out.push_str("<p class=\"muted\">No calls in the window yet.</p>");
    } else {
        out.push_str(
            "<table><thead><tr><th>Trunk</th><th>Country</th><th class=\"num\">Calls</th>\
             <th class=\"num\">Answer rate</th></tr></thead><tbody>",
        );
        for t in trunks {
            for c in &p.countries[t] {
                let _ = write!(
                    out,
                    "<tr><td>{}</td><td><code>{}</code></td><td class=\"num\">{}</td><td class=\"num\">{}</td></tr>",
                    Esc(t),
                    Esc(&c.country),
                    c.calls,
                    percent(Some(c.answer_rate))
                );
            }
        }
        out.push_str("</tbody></table>");
    }
    out.push_str("<h3 style=\"font-size:13px;margin:12px 0 4px\">Caller IDs</h3>");
    if p.caller_ids.is_empty() {
        out.push_str("<p class=\"muted\">No caller ID pools configured (<code>[[caller_ids]]</code>); every call shows its trunk's <code>from</code>.</p>");
        return;
    }
    out.push_str(
        "<table><thead><tr><th>Caller ID</th><th>Pool</th><th class=\"num\">Calls (24 h)</th>\
         <th class=\"num\">Answer rate</th><th class=\"num\">Pool's</th><th>State</th></tr></thead><tbody>",
    );
    for c in &p.caller_ids {
        let state = match &c.resting_until {
            Some(until) => format!(
                "<span class=\"b warn\">resting</span> <span class=\"muted\">until {}</span>",
                Esc(until)
            ),
            None => "<span class=\"b ok\">in rotation</span>".to_string(),
        };
        let _ = write!(
            out,
            "<tr><td><code>{}</code></td><td><code>{}</code></td><td class=\"num\">{}</td>\
             <td class=\"num\">{}</td><td class=\"num\">{}</td><td>{state}</td></tr>",
            Esc(&c.number),
            Esc(&c.pool),
            c.calls,
            percent(c.answer_rate),
            percent(c.pool_answer_rate)
        );
    }
    out.push_str("</tbody></table>");
}
