//! The dashboard's chart as inline SVG, drawn on the server: calls per time
//! bucket as bars (the answered part in green) and the answer rate as a
//! line on a 0-100 % axis. Every bar has a `<title>` so a hover shows its
//! numbers without JavaScript.

use std::fmt::Write as _;

use maud::{html, Markup};

use super::format::{bucket, clock};
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

/// One bar: all calls of a bucket, the answered part over it in green.
struct Bar {
    x: f64,
    y_all: f64,
    y_ans: f64,
    title: String,
}

/// The SVG for `buckets` of `bucket_ms` each (oldest first). Elements are
/// closed explicitly (`<path …></path>`): inside HTML, SVG has no void tags.
pub(super) fn render(buckets: &[CallBucket], bucket_ms: i64) -> Markup {
    let plot_w = WIDTH - LEFT - RIGHT;
    let plot_h = HEIGHT - TOP - BOTTOM;
    let bottom = TOP + plot_h;
    let max_calls = axis_top(buckets.iter().map(|b| b.calls).max().unwrap_or(0));
    let n = buckets.len().max(1) as f64;
    let slot = plot_w / n;
    let bar_w = (slot * 0.8).max(1.0);
    let y_of = |v: f64| bottom - plot_h * v / max_calls as f64;
    let f1 = |v: f64| format!("{v:.1}");

    // Horizontal grid: (y, calls on the left, percent on the right).
    let grid: Vec<(f64, i64, i64)> = (0..=4)
        .map(|i: i64| (bottom - plot_h * i as f64 / 4.0, max_calls / 4 * i, i * 25))
        .collect();
    // Time labels on whole label-steps of the clock: (x, label).
    let mut ticks = Vec::new();
    if let Some(first) = buckets.first() {
        let span_min = (buckets.len() as i64 * bucket_ms) / 60_000;
        let every_ms = label_every_minutes(span_min) * 60_000;
        let mut t = first.start_ms.div_euclid(every_ms) * every_ms;
        if t < first.start_ms {
            t += every_ms;
        }
        let end = first.start_ms + buckets.len() as i64 * bucket_ms;
        while t <= end {
            let x = LEFT + plot_w * (t - first.start_ms) as f64 / (end - first.start_ms) as f64;
            ticks.push((x, clock(t)));
            t += every_ms;
        }
    }
    let bars: Vec<Bar> = buckets
        .iter()
        .enumerate()
        .filter(|(_, b)| b.calls > 0)
        .map(|(i, b)| Bar {
            x: LEFT + slot * i as f64 + (slot - bar_w) / 2.0,
            y_all: y_of(b.calls as f64),
            y_ans: y_of(b.answered as f64),
            title: format!(
                "{}: {} call{}, {} placed, {} answered{}",
                clock(b.start_ms),
                b.calls,
                if b.calls == 1 { "" } else { "s" },
                b.dialled,
                b.answered,
                b.answer_rate()
                    .map(|r| format!(", answer rate {:.0}%", r * 100.0))
                    .unwrap_or_default()
            ),
        })
        .collect();
    // Answer-rate line, broken where nothing was placed; where a stretch
    // starts, a dot (so a lone point still shows).
    let mut path = String::new();
    let mut dots = Vec::new();
    let mut pen_down = false;
    for (i, b) in buckets.iter().enumerate() {
        match b.answer_rate() {
            Some(r) => {
                let x = LEFT + slot * (i as f64 + 0.5);
                let y = bottom - plot_h * r;
                let _ = write!(path, "{}{x:.1},{y:.1} ", if pen_down { "L" } else { "M" });
                if !pen_down {
                    dots.push((x, y));
                }
                pen_down = true;
            }
            None => pen_down = false,
        }
    }
    let label = format!("Calls per {} and answer rate", bucket(bucket_ms));
    html! {
        svg class="chart" viewBox={ (WIDTH) " " (HEIGHT) } width="100%" role="img"
            aria-label=(label) xmlns="http://www.w3.org/2000/svg" {
            @for (y, calls, pct) in &grid {
                line x1=(LEFT) y1=(f1(*y)) x2=(LEFT + plot_w) y2=(f1(*y)) stroke="#e3e6ea" {}
                text x=(LEFT - 6.0) y=(f1(y + 4.0)) text-anchor="end" class="ax" { (calls) }
                text x=(LEFT + plot_w + 6.0) y=(f1(y + 4.0)) class="ax rate" { (pct) "%" }
            }
            @for (x, t) in &ticks {
                line x1=(f1(*x)) y1=(TOP) x2=(f1(*x)) y2=(bottom) stroke="#f0f2f4" {}
                text x=(f1(*x)) y=(HEIGHT - 10.0) text-anchor="middle" class="ax" { (t) }
            }
            @for b in &bars {
                g {
                    title { (b.title) }
                    rect x=(f1(b.x)) y=(f1(b.y_all)) width=(f1(bar_w)) height=(f1(bottom - b.y_all)) fill="#9db4cc" {}
                    rect x=(f1(b.x)) y=(f1(b.y_ans)) width=(f1(bar_w)) height=(f1(bottom - b.y_ans)) fill="#2e9b5f" {}
                }
            }
            @for (x, y) in &dots {
                circle cx=(f1(*x)) cy=(f1(*y)) r="2.5" fill="#d9822b" {}
            }
            @if !path.is_empty() {
                path d=(path.trim_end()) fill="none" stroke="#d9822b" stroke-width="2" stroke-linejoin="round" {}
            }
            rect x=(LEFT) y=(TOP) width=(plot_w) height=(plot_h) fill="none" stroke="#c9ced4" {}
        }
    }
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
        let svg = render(&[b(0, 0, 0), b(1, 4, 3), b(2, 2, 2)], 60_000).into_string();
        assert_eq!(svg.matches("<title>").count(), 2);
        assert!(svg.contains("4 calls, 4 placed, 3 answered, answer rate 75%"));
        assert!(svg.contains("<path d=\"M"));
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>"));
    }

    #[test]
    fn an_empty_window_draws_axes_only() {
        let svg = render(&[CallBucket::default(); 3], 300_000).into_string();
        assert!(!svg.contains("<title>"));
        assert!(!svg.contains("<path"));
    }
}
