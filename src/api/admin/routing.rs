//! The dashboard's calling-by-country panel (SPEC §7): per trunk and destination
//! country the recent answer rate and calls (what `routing = "quality"` compares),
//! and each caller ID with its pool, answer rate and rest. Built from the same views
//! as `GET /v1/trunks` and `GET /v1/caller-ids`.

use std::collections::HashMap;

use maud::{html, Markup};

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

/// The panel.
pub(super) fn render(p: &RoutingPanel) -> Markup {
    let mut trunks: Vec<&String> = p.countries.keys().collect();
    trunks.sort();
    html! {
        p.muted {
            "Routing: " strong { (p.routing) } ". Answer rates over "
            code { "[dialer] quality_window" } ", all instances."
        }
        @if trunks.is_empty() {
            p.muted { "No calls in the window yet." }
        } @else {
            table {
                thead { tr { th { "Trunk" } th { "Country" } th.num { "Calls" } th.num { "Answer rate" } } }
                tbody {
                    @for t in &trunks {
                        @for c in &p.countries[*t] {
                            tr {
                                td { (t) } td { code { (c.country) } }
                                td.num { (c.calls) } td.num { (percent(Some(c.answer_rate))) }
                            }
                        }
                    }
                }
            }
        }
        h3 style="font-size:13px;margin:12px 0 4px" { "Caller IDs" }
        @if p.caller_ids.is_empty() {
            p.muted {
                "No caller ID pools configured (" code { "[[caller_ids]]" }
                "); every call shows its trunk's " code { "from" } "."
            }
        } @else {
            table {
                thead { tr {
                    th { "Caller ID" } th { "Pool" } th.num { "Calls (24 h)" }
                    th.num { "Answer rate" } th.num { "Pool's" } th { "State" }
                } }
                tbody {
                    @for c in &p.caller_ids {
                        tr {
                            td { code { (c.number) } } td { code { (c.pool) } }
                            td.num { (c.calls) } td.num { (percent(c.answer_rate)) }
                            td.num { (percent(c.pool_answer_rate)) }
                            td {
                                @match &c.resting_until {
                                    Some(until) => { span.b.warn { "resting" } " " span.muted { "until " (until) } },
                                    None => { span.b.ok { "in rotation" } },
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}
