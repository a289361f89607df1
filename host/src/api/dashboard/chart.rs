//! The overview's two charts, drawn on the server as inline SVG (no
//! script, no chart library shipped to the browser): runs per minute
//! over the last hour (failed runs stacked on top), and the wait from due
//! to start per minute (average and longest). Only numbers reach the SVG.

use crate::queue::{Millis, MinuteRuns};
use crate::worker::run_minutes::MINUTE_MS;
use std::fmt::Write as _;

/// Minutes a chart spans.
pub const MINUTES: usize = 60;

/// One minute of the chart, summed over hosts, queues and kinds.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Minute {
    pub runs: u64,
    pub failures: u64,
    pub delay_ms_sum: i64,
    pub delay_ms_max: i64,
}

impl Minute {
    pub fn delay_avg_ms(&self) -> f64 {
        if self.runs == 0 { 0.0 } else { self.delay_ms_sum as f64 / self.runs as f64 }
    }
}

/// The last [`MINUTES`] minutes up to `now`'s (oldest first) of the rows `keep` passes.
pub fn minutes(rows: &[MinuteRuns], now: Millis, keep: impl Fn(&MinuteRuns) -> bool) -> Vec<Minute> {
    let current = now - now.rem_euclid(MINUTE_MS);
    let first = current - (MINUTES as Millis - 1) * MINUTE_MS;
    let mut out = vec![Minute::default(); MINUTES];
    for r in rows.iter().filter(|r| r.minute >= first && r.minute <= current && keep(r)) {
        let m = &mut out[((r.minute - first) / MINUTE_MS) as usize];
        m.runs += r.runs;
        m.failures += r.failures;
        m.delay_ms_sum = m.delay_ms_sum.saturating_add(r.delay_ms_sum);
        m.delay_ms_max = m.delay_ms_max.max(r.delay_ms_max);
    }
    out
}

const WIDTH: f64 = 600.0;
const HEIGHT: f64 = 150.0;
const LEFT: f64 = 46.0;
const BOTTOM: f64 = 18.0;

/// A round number at or above `max` for the top of the axis.
fn axis_top(max: f64) -> f64 {
    if max <= 0.0 {
        return 1.0;
    }
    let step = 10f64.powf(max.log10().floor());
    [1.0, 2.0, 5.0, 10.0].iter().map(|m| m * step).find(|top| *top >= max).unwrap_or(10.0 * step)
}

fn frame(svg: &mut String, label: &str, top: f64, unit: &str) {
    let _ = write!(
        svg,
        r#"<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-label="{label}"><line x1="{LEFT}" y1="4" x2="{LEFT}" y2="{y0}" class="axis"/><line x1="{LEFT}" y1="{y0}" x2="{WIDTH}" y2="{y0}" class="axis"/><text x="{tx}" y="12" class="tick" text-anchor="end">{top}{unit}</text><text x="{tx}" y="{y0}" class="tick" text-anchor="end">0</text><text x="{LEFT}" y="{HEIGHT}" class="tick">−60 min</text><text x="{WIDTH}" y="{HEIGHT}" class="tick" text-anchor="end">now</text>"#,
        y0 = HEIGHT - BOTTOM,
        tx = LEFT - 4.0,
        top = format_number(top),
    );
}

fn format_number(n: f64) -> String {
    if n >= 1000.0 && n % 1000.0 == 0.0 { format!("{}k", n / 1000.0) } else if n.fract() == 0.0 { format!("{n}") } else { format!("{n:.1}") }
}

fn y_of(value: f64, top: f64) -> f64 {
    let plot = HEIGHT - BOTTOM - 4.0;
    HEIGHT - BOTTOM - plot * (value / top).min(1.0)
}

/// Runs per minute as bars: completed-or-retried below, failed on top.
pub fn throughput(minutes: &[Minute]) -> String {
    let top = axis_top(minutes.iter().map(|m| m.runs).max().unwrap_or(0) as f64);
    let mut svg = String::new();
    frame(&mut svg, "runs per minute over the last hour", top, "");
    let slot = (WIDTH - LEFT) / minutes.len().max(1) as f64;
    for (i, m) in minutes.iter().enumerate().filter(|(_, m)| m.runs > 0) {
        let x = LEFT + i as f64 * slot + 1.0;
        let ok = (m.runs - m.failures) as f64;
        let y_ok = y_of(ok, top);
        let y_all = y_of(m.runs as f64, top);
        let _ = write!(
            svg,
            r#"<rect class="ok" x="{x:.1}" y="{y_ok:.1}" width="{w:.1}" height="{h:.1}"><title>{runs} runs, {failures} failed</title></rect>"#,
            w = slot - 2.0,
            h = HEIGHT - BOTTOM - y_ok,
            runs = m.runs,
            failures = m.failures,
        );
        if m.failures > 0 {
            let _ = write!(svg, r#"<rect class="failed" x="{x:.1}" y="{y_all:.1}" width="{w:.1}" height="{h:.1}"/>"#, w = slot - 2.0, h = y_ok - y_all);
        }
    }
    svg.push_str("</svg>");
    svg
}

/// The wait from due to start per minute: average (line) and longest (dashed), in ms.
pub fn queue_delay(minutes: &[Minute]) -> String {
    let top = axis_top(minutes.iter().map(|m| m.delay_ms_max as f64).fold(0.0, f64::max));
    let mut svg = String::new();
    frame(&mut svg, "queue delay per minute over the last hour", top, " ms");
    let slot = (WIDTH - LEFT) / minutes.len().max(1) as f64;
    let line = |value: &dyn Fn(&Minute) -> f64| {
        minutes
            .iter()
            .enumerate()
            .filter(|(_, m)| m.runs > 0)
            .map(|(i, m)| format!("{:.1},{:.1}", LEFT + (i as f64 + 0.5) * slot, y_of(value(m), top)))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let _ = write!(svg, r#"<polyline class="max" points="{}"/>"#, line(&|m| m.delay_ms_max as f64));
    let _ = write!(svg, r#"<polyline class="avg" points="{}"/>"#, line(&|m| m.delay_avg_ms()));
    // A dot per minute that ran, so a lone minute shows too, with its numbers.
    for (i, m) in minutes.iter().enumerate().filter(|(_, m)| m.runs > 0) {
        let _ = write!(
            svg,
            r#"<circle class="avg" cx="{:.1}" cy="{:.1}" r="2.5"><title>average {:.1} ms, longest {} ms</title></circle>"#,
            LEFT + (i as f64 + 0.5) * slot,
            y_of(m.delay_avg_ms(), top),
            m.delay_avg_ms(),
            m.delay_ms_max,
        );
    }
    svg.push_str("</svg>");
    svg
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(minute: Millis, kind: &str, runs: u64, failures: u64, delay_max: i64) -> MinuteRuns {
        MinuteRuns { minute, host: "h".into(), queue: "default".into(), kind: kind.into(), runs, failures, delay_ms_sum: runs as i64 * 5, delay_ms_max: delay_max }
    }

    #[test]
    fn minutes_sum_hosts_and_kinds_into_the_last_hour_and_leave_out_what_is_not_kept() {
        let now = 100 * MINUTE_MS + 30_000;
        let rows = [
            row(100 * MINUTE_MS, "echo", 4, 1, 9),
            row(100 * MINUTE_MS, "echo", 2, 0, 20),
            row(41 * MINUTE_MS, "echo", 3, 0, 1),
            row(40 * MINUTE_MS, "echo", 99, 0, 1),
            row(100 * MINUTE_MS, "beta/x", 50, 0, 1),
        ];
        let m = minutes(&rows, now, |r| !r.kind.starts_with("beta/"));
        assert_eq!(m.len(), MINUTES);
        assert_eq!(m[MINUTES - 1], Minute { runs: 6, failures: 1, delay_ms_sum: 30, delay_ms_max: 20 });
        assert_eq!(m[0].runs, 3, "minute 41 is the first of the hour; 40 is before it");
        assert_eq!(m.iter().map(|m| m.runs).sum::<u64>(), 9);
        assert_eq!(m[MINUTES - 1].delay_avg_ms(), 5.0);
    }

    #[test]
    fn the_axis_rounds_up_and_the_bars_say_their_numbers() {
        assert_eq!(axis_top(0.0), 1.0);
        assert_eq!(axis_top(7.0), 10.0);
        assert_eq!(axis_top(120.0), 200.0);
        assert_eq!(axis_top(5000.0), 5000.0);
        let mut m = vec![Minute::default(); MINUTES];
        m[10] = Minute { runs: 12, failures: 2, delay_ms_sum: 0, delay_ms_max: 3 };
        let svg = throughput(&m);
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>"));
        assert_eq!(svg.matches("class=\"ok\"").count(), 1);
        assert_eq!(svg.matches("class=\"failed\"").count(), 1);
        assert!(svg.contains("12 runs, 2 failed"), "{svg}");
        let delay = queue_delay(&m);
        assert!(delay.contains("polyline") && delay.matches("<circle").count() == 1, "{delay}");
        assert!(delay.contains("longest 3 ms"), "{delay}");
    }
}
