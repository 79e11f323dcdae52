//! Usage charts, drawn on the server: an SVG of bars stacked by outcome
//! (no chart library, no script; colours from console.css by class), and
//! the same numbers as a table for screen readers. No data draws an empty
//! chart, not an error.

use maud::{html, Markup};

use crate::stats::{Point, OUTCOMES};

const WIDTH: f64 = 720.0;
const HEIGHT: f64 = 140.0;
/// Room under the bars for the first and last period's names.
const AXIS: f64 = 18.0;

/// One chart: a bar per point, its total series stacked by outcome.
/// `short` names a period on the axis and in tooltips (`13:00`, `12-01`).
pub fn bars(id: &str, title: &str, points: &[Point], short: impl Fn(&Point) -> String) -> Markup {
    let totals: Vec<u64> = points.iter().map(total).collect();
    let highest = totals.iter().copied().max().unwrap_or(0).max(1) as f64;
    let slot = WIDTH / points.len().max(1) as f64;
    let shown: Vec<&str> = OUTCOMES
        .iter()
        .copied()
        .filter(|outcome| points.iter().any(|point| count(point, outcome) > 0))
        .collect();
    html! {
        figure.usage #(id) {
            figcaption { (title) }
            svg role="img" aria-labelledby=(format!("{id}-title")) viewBox=(format!("0 0 {WIDTH} {}", HEIGHT + AXIS)) width="100%" {
                title id=(format!("{id}-title")) { (title) }
                line.axis x1="0" y1=(HEIGHT) x2=(WIDTH) y2=(HEIGHT) {}
                @for (index, point) in points.iter().enumerate() {
                    @let x = index as f64 * slot;
                    g.bar data-period=(point.date) data-total=(totals[index]) {
                        @for (outcome, n, y, height) in segments(point, highest) {
                            rect class=(format!("o-{outcome}")) data-outcome=(outcome) x=(fmt(x + slot * 0.1)) y=(fmt(y)) width=(fmt(slot * 0.8)) height=(fmt(height)) {
                                title { (short(point)) ": " (n) " " (outcome) }
                            }
                        }
                    }
                }
                @if let (Some(first), Some(last)) = (points.first(), points.last()) {
                    text.tick x="0" y=(HEIGHT + AXIS - 4.0) { (short(first)) }
                    text.tick x=(WIDTH) y=(HEIGHT + AXIS - 4.0) text-anchor="end" { (short(last)) }
                }
                @if totals.iter().all(|total| *total == 0) {
                    text.empty x=(WIDTH / 2.0) y=(HEIGHT / 2.0) text-anchor="middle" { "No decisions in this period." }
                }
            }
            @if !shown.is_empty() {
                p.legend {
                    @for outcome in &shown { span class=(format!("swatch o-{outcome}")) {} " " (outcome) " " }
                }
            }
            table.sr-only {
                caption { (title) }
                thead { tr { th { "Period" } th { "Total" } @for outcome in &shown { th { (outcome) } } } }
                tbody {
                    @for (index, point) in points.iter().enumerate() {
                        tr { td { (point.date) } td { (totals[index]) } @for outcome in &shown { td { (count(point, outcome)) } } }
                    }
                }
            }
        }
    }
}

/// A bar's stacked parts, bottom up: (outcome, count, y, height).
fn segments(point: &Point, highest: f64) -> Vec<(&'static str, u64, f64, f64)> {
    let mut top = HEIGHT;
    OUTCOMES
        .iter()
        .filter_map(|outcome| {
            let n = count(point, outcome);
            (n > 0).then(|| {
                let height = (n as f64 / highest * (HEIGHT - 4.0)).max(1.0);
                top -= height;
                (*outcome, n, top, height)
            })
        })
        .collect()
}

fn count(point: &Point, outcome: &str) -> u64 {
    point
        .series
        .first()
        .and_then(|series| series.metrics.get(outcome))
        .copied()
        .unwrap_or(0)
}

fn total(point: &Point) -> u64 {
    point
        .series
        .first()
        .map_or(0, |series| series.metrics.values().sum())
}

fn fmt(value: f64) -> String {
    format!("{value:.1}")
}
