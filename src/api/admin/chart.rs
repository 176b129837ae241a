//! The dashboard's chart as inline SVG, drawn on the server: calls per time
//! bucket as bars (the answered part in green) and the answer rate as a
//! line on a 0-100 % axis. Every bar has a `<title>` so a hover shows its
//! numbers without JavaScript.

use std::fmt::Write as _;

use super::page::{clock, Esc};
use crate::store::CallBucket;

const WIDTH: f64 = 1040.0;
const HEIGHT: f64 = 260.0;
const LEFT: f64 = 48.0;
const RIGHT: f64 = 52.0;
const TOP: f64 = 14.0;
const BOTTOM: f64 = 30.0;

/// The top of the call axis: four grid steps of 1, 2 or 5 times a power of ten, so
/// every grid line is a whole number of calls.
fn axis_top(max: i64) -> i64 {
    4 * nice_ceiling((max + 3) / 4)
}

/// The smallest 1, 2 or 5 times a power of ten at or above `n` (at least 1).
fn nice_ceiling(n: i64) -> i64 {
    let mut step = 1;
    loop {
        for m in [1, 2, 5] {
            if m * step >= n {
                return m * step;
            }
        }
        step *= 10;
    }
}

/// Minutes between time labels so that about 6-12 fit.
fn label_every_minutes(span_minutes: i64) -> i64 {
    [5, 10, 15, 30, 60, 120, 180, 240]
        .into_iter()
        .find(|m| span_minutes / m <= 12)
        .unwrap_or(360)
}

/// The SVG for `buckets` of `bucket_ms` each (oldest first).
pub(super) fn render(buckets: &[CallBucket], bucket_ms: i64) -> String {
    let mut svg = String::with_capacity(16 * 1024);
    let plot_w = WIDTH - LEFT - RIGHT;
    let plot_h = HEIGHT - TOP - BOTTOM;
    let per = if bucket_ms >= 60_000 {
        format!("{} min", bucket_ms / 60_000)
    } else {
        format!("{} s", bucket_ms / 1000)
    };
    let max_calls = axis_top(buckets.iter().map(|b| b.calls).max().unwrap_or(0));
    let _ = write!(
        svg,
        r#"<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" width="100%" role="img" aria-label="Calls per {per} and answer rate" xmlns="http://www.w3.org/2000/svg">"#
    );
    // Horizontal grid with the call count on the left, the rate on the right.
    for i in 0..=4 {
        let y = TOP + plot_h - plot_h * f64::from(i) / 4.0;
        let calls = max_calls / 4 * i64::from(i);
        let _ = write!(
            svg,
            r##"<line x1="{LEFT}" y1="{y:.1}" x2="{x2}" y2="{y:.1}" stroke="#e3e6ea"/><text x="{lx}" y="{ty:.1}" text-anchor="end" class="ax">{calls}</text><text x="{rx}" y="{ty:.1}" class="ax rate">{pct}%</text>"##,
            x2 = LEFT + plot_w,
            lx = LEFT - 6.0,
            rx = LEFT + plot_w + 6.0,
            ty = y + 4.0,
            pct = i * 25,
        );
    }
    let n = buckets.len().max(1) as f64;
    let slot = plot_w / n;
    let bar_w = (slot * 0.8).max(1.0);
    let y_of = |v: f64| TOP + plot_h - plot_h * v / max_calls as f64;
    // Time labels on whole label-steps of the clock.
    if let (Some(first), Some(_)) = (buckets.first(), buckets.last()) {
        let span_min = (buckets.len() as i64 * bucket_ms) / 60_000;
        let every_ms = label_every_minutes(span_min) * 60_000;
        let mut t = first.start_ms.div_euclid(every_ms) * every_ms;
        if t < first.start_ms {
            t += every_ms;
        }
        let end = first.start_ms + buckets.len() as i64 * bucket_ms;
        while t <= end {
            let x = LEFT + plot_w * (t - first.start_ms) as f64 / (end - first.start_ms) as f64;
            let _ = write!(
                svg,
                r##"<line x1="{x:.1}" y1="{top}" x2="{x:.1}" y2="{bottom}" stroke="#f0f2f4"/><text x="{x:.1}" y="{ly}" text-anchor="middle" class="ax">{label}</text>"##,
                top = TOP,
                bottom = TOP + plot_h,
                ly = HEIGHT - 10.0,
                label = clock(t),
            );
            t += every_ms;
        }
    }
    // Bars.
    for (i, b) in buckets.iter().enumerate() {
        if b.calls == 0 {
            continue;
        }
        let x = LEFT + slot * i as f64 + (slot - bar_w) / 2.0;
        let y_all = y_of(b.calls as f64);
        let y_ans = y_of(b.answered as f64);
        let rate = b
            .answer_rate()
            .map(|r| format!(", answer rate {:.0}%", r * 100.0))
            .unwrap_or_default();
        let _ = write!(
            svg,
            r##"<g><title>{t}: {calls} call{s}, {placed} placed, {answered} answered{rate}</title><rect x="{x:.1}" y="{y_all:.1}" width="{bar_w:.1}" height="{h_all:.1}" fill="#9db4cc"/><rect x="{x:.1}" y="{y_ans:.1}" width="{bar_w:.1}" height="{h_ans:.1}" fill="#2e9b5f"/></g>"##,
            t = Esc(&clock(b.start_ms)),
            calls = b.calls,
            s = if b.calls == 1 { "" } else { "s" },
            placed = b.dialled,
            answered = b.answered,
            h_all = TOP + plot_h - y_all,
            h_ans = TOP + plot_h - y_ans,
        );
    }
    // Answer-rate line, broken where nothing was placed.
    let mut path = String::new();
    let mut pen_down = false;
    for (i, b) in buckets.iter().enumerate() {
        match b.answer_rate() {
            Some(r) => {
                let x = LEFT + slot * (i as f64 + 0.5);
                let y = TOP + plot_h - plot_h * r;
                let _ = write!(path, "{}{x:.1},{y:.1} ", if pen_down { "L" } else { "M" });
                if !pen_down {
                    // A lone point still shows as a dot.
                    let _ = write!(
                        svg,
                        r##"<circle cx="{x:.1}" cy="{y:.1}" r="2.5" fill="#d9822b"/>"##
                    );
                }
                pen_down = true;
            }
            None => pen_down = false,
        }
    }
    if !path.is_empty() {
        let _ = write!(
            svg,
            r##"<path d="{}" fill="none" stroke="#d9822b" stroke-width="2" stroke-linejoin="round"/>"##,
            path.trim_end()
        );
    }
    let _ = write!(
        svg,
        r##"<rect x="{LEFT}" y="{TOP}" width="{plot_w}" height="{plot_h}" fill="none" stroke="#c9ced4"/></svg>"##
    );
    svg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nice_ceilings() {
        assert_eq!(nice_ceiling(0), 1);
        assert_eq!(nice_ceiling(1), 1);
        assert_eq!(nice_ceiling(3), 5);
        assert_eq!(nice_ceiling(7), 10);
        assert_eq!(nice_ceiling(11), 20);
        assert_eq!(nice_ceiling(420), 500);
        assert_eq!(axis_top(0), 4);
        assert_eq!(axis_top(1), 4);
        assert_eq!(axis_top(5), 8);
        assert_eq!(axis_top(9), 20);
        assert_eq!(axis_top(130), 200);
    }

    #[test]
    fn bars_and_rate_line_for_the_buckets_with_calls() {
        let b = |i: i64, calls, answered| CallBucket {
            start_ms: i * 60_000,
            calls,
            dialled: calls,
            answered,
            completed: answered,
        };
        let svg = render(&[b(0, 0, 0), b(1, 4, 3), b(2, 2, 2)], 60_000);
        assert_eq!(svg.matches("<title>").count(), 2);
        assert!(svg.contains("4 calls, 4 placed, 3 answered, answer rate 75%"));
        assert!(svg.contains("<path d=\"M"));
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>"));
    }

    #[test]
    fn an_empty_window_draws_axes_only() {
        let svg = render(&[CallBucket::default(); 3], 300_000);
        assert!(!svg.contains("<title>"));
        assert!(!svg.contains("<path"));
    }
}
