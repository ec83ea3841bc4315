//! Small pictures drawn on the server as inline SVG: no script, no
//! external assets, nothing the page's strict CSP has to allow. Colours
//! come from CSS classes in the page's own stylesheet (style attributes
//! would be refused by the CSP), so they follow light and dark mode.
//!
//! Every picture is 360 units wide, the width of a phone, and scales with
//! its box.

use std::fmt::Write;

use jiff::Timestamp;

use super::history::INTERVAL;
use super::words::{self, Clock};

const W: f64 = 360.0;
/// The plot area inside the picture: room on the left for the scale,
/// below for the times.
const LEFT: f64 = 34.0;
const RIGHT: f64 = 354.0;
const TOP: f64 = 8.0;

/// One line on a chart.
pub struct Series {
    /// CSS class giving its colour (`s1`, `s2`, `s3`).
    pub class: &'static str,
    /// Its name in the legend.
    pub label: &'static str,
    /// Values over time; `None` where there is none (no call).
    pub values: Vec<(Timestamp, Option<f64>)>,
}

/// A stretch of time on a session bar chart.
pub struct Bar {
    /// When it started.
    pub from: Timestamp,
    /// When it ended, or now.
    pub to: Timestamp,
    /// CSS class: `running`, `ended` or `failed`.
    pub class: &'static str,
    /// The tooltip.
    pub title: String,
}

/// The window the pictures show: the hour up to `now`, on `clock`.
pub struct Window<'a> {
    /// The right edge.
    pub now: Timestamp,
    /// For the times under the axis.
    pub clock: &'a Clock,
}

impl Window<'_> {
    const SPAN_S: f64 = 3600.0;

    fn start(&self) -> Timestamp {
        self.now
            .checked_sub(jiff::SignedDuration::from_secs(Self::SPAN_S as i64))
            .unwrap_or(self.now)
    }

    fn x(&self, t: Timestamp) -> f64 {
        let s = t.duration_since(self.start()).as_secs_f64();
        LEFT + (s / Self::SPAN_S).clamp(0.0, 1.0) * (RIGHT - LEFT)
    }

    /// Ticks at the local quarter hours within the window.
    fn time_axis(&self, out: &mut String, bottom: f64) {
        let start = self.start();
        let local = start.to_zoned(self.clock.zone().clone());
        let past = i64::from(local.minute() % 15) * 60 + i64::from(local.second());
        let mut t = start
            .checked_add(jiff::SignedDuration::from_secs(900 - past))
            .unwrap_or(start);
        while t < self.now {
            let x = self.x(t);
            let label = t
                .to_zoned(self.clock.zone().clone())
                .strftime("%H:%M")
                .to_string();
            let _ = write!(
                out,
                r#"<line class="grid" x1="{x:.1}" y1="{TOP}" x2="{x:.1}" y2="{bottom}"/><text x="{x:.1}" y="{:.1}" text-anchor="middle">{label}</text>"#,
                bottom + 12.0
            );
            t = t
                .checked_add(jiff::SignedDuration::from_secs(900))
                .unwrap_or(self.now);
        }
    }
}

fn open_svg(out: &mut String, height: f64, label: &str) {
    let _ = write!(
        out,
        r#"<svg class="chart" viewBox="0 0 {W} {height}" role="img" aria-label="{}">"#,
        escape(label)
    );
}

/// A line chart of the last hour with its scale from `range` (widened to
/// fit the data) in `unit`.
pub fn lines(
    window: &Window<'_>,
    label: &str,
    unit: &str,
    range: (f64, f64),
    series: &[Series],
) -> String {
    const H: f64 = 120.0;
    const BOTTOM: f64 = H - 18.0;
    let (lo, mut hi) = range;
    for v in series
        .iter()
        .flat_map(|s| s.values.iter().filter_map(|(_, v)| *v))
    {
        hi = hi.max(v);
    }
    let y = |v: f64| BOTTOM - ((v - lo) / (hi - lo)).clamp(0.0, 1.0) * (BOTTOM - TOP);
    let mut out = String::with_capacity(4096);
    open_svg(&mut out, H, label);
    window.time_axis(&mut out, BOTTOM);
    for v in [lo, (lo + hi) / 2.0, hi] {
        let _ = write!(
            out,
            r#"<line class="grid" x1="{LEFT}" y1="{y:.1}" x2="{RIGHT}" y2="{y:.1}"/><text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"#,
            LEFT - 3.0,
            y(v) + 4.0,
            tidy(v),
            y = y(v)
        );
    }
    let _ = write!(
        out,
        r#"<text x="{LEFT}" y="{:.1}" class="unit">{}</text>"#,
        TOP - 1.0 + 8.0,
        escape(unit)
    );
    for s in series {
        for run in runs(&s.values) {
            if let [(t, v)] = run.as_slice() {
                let _ = write!(
                    out,
                    r#"<circle class="{}" cx="{:.1}" cy="{:.1}" r="1.8"/>"#,
                    s.class,
                    window.x(*t),
                    y(*v)
                );
                continue;
            }
            let _ = write!(out, r#"<polyline class="{}" points=""#, s.class);
            for (t, v) in &run {
                let _ = write!(out, "{:.1},{:.1} ", window.x(*t), y(*v));
            }
            out.push_str(r#""/>"#);
        }
    }
    out.push_str("</svg>");
    out
}

/// Consecutive values without a gap longer than two intervals.
fn runs(values: &[(Timestamp, Option<f64>)]) -> Vec<Vec<(Timestamp, f64)>> {
    let mut runs: Vec<Vec<(Timestamp, f64)>> = Vec::new();
    let mut last: Option<Timestamp> = None;
    for (t, v) in values {
        let Some(v) = v else {
            last = None;
            continue;
        };
        let joined =
            last.is_some_and(|l| t.duration_since(l).as_secs_f64() <= 2.0 * INTERVAL.as_secs_f64());
        match runs.last_mut() {
            Some(run) if joined => run.push((*t, *v)),
            _ => runs.push(vec![(*t, *v)]),
        }
        last = Some(*t);
    }
    runs
}

/// Sessions as bars on the hour's time line.
pub fn bars(window: &Window<'_>, label: &str, bars: &[Bar]) -> String {
    const H: f64 = 56.0;
    const BOTTOM: f64 = H - 18.0;
    let mut out = String::with_capacity(2048);
    open_svg(&mut out, H, label);
    window.time_axis(&mut out, BOTTOM);
    let _ = write!(
        out,
        r#"<line class="axis" x1="{LEFT}" y1="{BOTTOM}" x2="{RIGHT}" y2="{BOTTOM}"/>"#
    );
    for b in bars {
        let x = window.x(b.from);
        let w = (window.x(b.to) - x).max(2.0);
        let _ = write!(
            out,
            r#"<rect class="{}" x="{x:.1}" y="{:.1}" width="{w:.1}" height="{:.1}"><title>{}</title></rect>"#,
            b.class,
            TOP + 6.0,
            BOTTOM - TOP - 10.0,
            escape(&b.title)
        );
    }
    out.push_str("</svg>");
    out
}

/// Sessions started in each of the last 24 local hours; failed ones
/// stacked on top in their own colour.
pub fn per_hour(clock: &Clock, label: &str, hours: &[(Timestamp, u32, u32)]) -> String {
    const H: f64 = 110.0;
    const BOTTOM: f64 = H - 18.0;
    let max = hours.iter().map(|(_, n, _)| *n).max().unwrap_or(0).max(1);
    let slot = (RIGHT - LEFT) / hours.len().max(1) as f64;
    let mut out = String::with_capacity(4096);
    open_svg(&mut out, H, label);
    let _ = write!(
        out,
        r#"<line class="axis" x1="{LEFT}" y1="{BOTTOM}" x2="{RIGHT}" y2="{BOTTOM}"/><text x="{:.1}" y="{:.1}" text-anchor="end">{max}</text><text x="{:.1}" y="{BOTTOM}" text-anchor="end">0</text>"#,
        LEFT - 3.0,
        TOP + 8.0,
        LEFT - 3.0
    );
    let scale = (BOTTOM - TOP - 10.0) / f64::from(max);
    for (k, (start, total, failed)) in hours.iter().enumerate() {
        let x = LEFT + k as f64 * slot;
        let local = start.to_zoned(clock.zone().clone());
        if local.hour() % 6 == 0 {
            let _ = write!(
                out,
                r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
                x + slot / 2.0,
                BOTTOM + 12.0,
                local.strftime("%H:00")
            );
        }
        if *total == 0 {
            continue;
        }
        let h_all = f64::from(*total) * scale;
        let h_failed = f64::from(*failed) * scale;
        let title = format!(
            "{}: {}, {} failed",
            local.strftime("%H:00"),
            words::count(u64::from(*total), "session"),
            failed
        );
        let _ = write!(
            out,
            r#"<g><title>{}</title><rect class="ended" x="{:.1}" y="{:.1}" width="{:.1}" height="{:.1}"/>"#,
            escape(&title),
            x + 1.0,
            BOTTOM - h_all,
            slot - 2.0,
            h_all - h_failed
        );
        if *failed > 0 {
            let _ = write!(
                out,
                r#"<rect class="failed" x="{:.1}" y="{:.1}" width="{:.1}" height="{h_failed:.1}"/>"#,
                x + 1.0,
                BOTTOM - h_all,
                slot - 2.0
            );
        }
        let _ = write!(
            out,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{total}</text></g>"#,
            x + slot / 2.0,
            BOTTOM - h_all - 2.0
        );
    }
    out.push_str("</svg>");
    out
}

/// A scale label without needless decimals.
fn tidy(v: f64) -> String {
    if v.abs() >= 10.0 || v.fract() == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

/// Text made safe for SVG markup.
fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;
    use jiff::tz::TimeZone;

    fn at(s: i64) -> Timestamp {
        Timestamp::from_second(1_764_600_000 + s).unwrap()
    }

    #[test]
    fn gaps_split_the_line_and_lone_points_are_dots() {
        let values = vec![
            (at(0), Some(1.0)),
            (at(10), Some(2.0)),
            (at(20), None),
            (at(30), Some(3.0)),
            (at(100), Some(4.0)),
            (at(110), Some(5.0)),
        ];
        let r = runs(&values);
        assert_eq!(r.iter().map(Vec::len).collect::<Vec<_>>(), [2, 1, 2]);
        let clock = Clock::new(TimeZone::UTC);
        let svg = lines(
            &Window {
                now: at(120),
                clock: &clock,
            },
            "test <chart>",
            "ms",
            (0.0, 10.0),
            &[Series {
                class: "s1",
                label: "rtt",
                values,
            }],
        );
        assert_eq!(svg.matches("<polyline").count(), 2);
        assert_eq!(svg.matches("<circle").count(), 1);
        assert!(svg.contains("aria-label=\"test &lt;chart&gt;\""));
        assert!(!svg.contains("style="), "the CSP refuses style attributes");
    }

    #[test]
    fn hours_stack_failures_on_top() {
        let clock = Clock::new(TimeZone::UTC);
        let hours: Vec<(Timestamp, u32, u32)> = (0..24)
            .map(|h| (at(h * 3600), (h % 3) as u32, u32::from(h == 4)))
            .collect();
        let svg = per_hour(&clock, "sessions", &hours);
        assert_eq!(svg.matches(r#"class="failed""#).count(), 1);
        assert_eq!(svg.matches(r#"class="ended""#).count(), 16);
    }
}
