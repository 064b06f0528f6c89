//! Line charts drawn as SVG on the server: a time axis, a value axis from zero with round
//! ticks and units, one polyline per series, broken where data is missing. Only numbers and
//! this module's own labels go into the SVG, never text a rig sent. Colours come from CSS
//! classes (the CSP allows no inline styles).

use std::fmt::Write;

/// What the values measure (axis labels and scaling).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unit {
    /// H/s, scaled to kH/s, MH/s…
    HashRate,
    /// °C.
    Celsius,
    /// %.
    Percent,
    /// W.
    Watts,
    /// Shares per point.
    Shares,
}

/// One line.
pub struct Series {
    /// Legend text (ours, not a rig's).
    pub name: &'static str,
    /// `(Unix ms, value)` in time order.
    pub points: Vec<(i64, f64)>,
}

const W: f64 = 640.0;
const H: f64 = 220.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 12.0;
const TOP: f64 = 26.0;
const BOTTOM: f64 = 30.0;

/// A round step near `raw` (1, 2, 2.5, 5 × 10ⁿ).
fn nice_step(raw: f64) -> f64 {
    if !(raw.is_finite() && raw > 0.0) {
        return 1.0;
    }
    let mag = 10f64.powf(raw.log10().floor());
    let f = raw / mag;
    let n = if f <= 1.0 {
        1.0
    } else if f <= 2.0 {
        2.0
    } else if f <= 2.5 {
        2.5
    } else if f <= 5.0 {
        5.0
    } else {
        10.0
    };
    n * mag
}

fn value_label(unit: Unit, v: f64, prefix_div: f64, prefix: &str) -> String {
    match unit {
        Unit::HashRate => format!("{} {prefix}H/s", super::fmt::num3(v / prefix_div)),
        Unit::Celsius => format!("{v:.0} °C"),
        Unit::Percent => format!("{v:.0} %"),
        Unit::Watts => format!("{} {prefix}W", super::fmt::num3(v / prefix_div)),
        Unit::Shares => super::fmt::num3(v),
    }
}

fn time_label(ts_ms: i64, span_ms: i64) -> String {
    let (_, mo, d, h, mi, _) = super::fmt::civil(ts_ms);
    if span_ms <= 2 * 86_400_000 {
        format!("{h:02}:{mi:02}")
    } else {
        format!("{mo:02}-{d:02}")
    }
}

/// The chart as an `<svg>` element. `title` names what is drawn (our text).
pub fn line_chart(title: &str, unit: Unit, from_ms: i64, to_ms: i64, series: &[Series]) -> String {
    let span = (to_ms - from_ms).max(1);
    let max = series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.1))
        .filter(|v| v.is_finite())
        .fold(0.0f64, f64::max);
    let (top_raw, floor) = match unit {
        Unit::Percent => (max.max(100.0), 0.0),
        _ => (if max > 0.0 { max * 1.1 } else { 1.0 }, 0.0),
    };
    let step = nice_step((top_raw - floor) / 4.0);
    let top = (top_raw / step).ceil() * step;
    let (_, prefix) = super::fmt::scale(top);
    let prefix_div = match prefix {
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        _ => 1.0,
    };
    let pw = W - LEFT - RIGHT;
    let ph = H - TOP - BOTTOM;
    let x = |t: i64| LEFT + pw * ((t - from_ms) as f64 / span as f64);
    let y = |v: f64| TOP + ph * (1.0 - (v - floor) / (top - floor).max(f64::MIN_POSITIVE));
    let n_points: usize = series.iter().map(|s| s.points.len()).sum();

    let mut out = String::with_capacity(4096);
    let _ = write!(
        out,
        r#"<svg class="chart" viewBox="0 0 {W} {H}" role="img" aria-label="{title}" data-points="{n_points}" xmlns="http://www.w3.org/2000/svg">"#
    );
    let _ = write!(out, r#"<text class="ct" x="{LEFT}" y="16">{title}</text>"#);
    for (i, s) in series.iter().enumerate() {
        let _ = write!(
            out,
            r#"<text class="lg s{i}" x="{}" y="16" text-anchor="end">{}</text>"#,
            W - RIGHT - (series.len() - 1 - i) as f64 * 90.0,
            s.name
        );
    }
    let mut v = floor;
    while v <= top + step / 2.0 {
        let yy = y(v);
        let _ = write!(
            out,
            r#"<line class="grid" x1="{LEFT}" x2="{}" y1="{yy:.1}" y2="{yy:.1}"/><text class="ax" x="{}" y="{:.1}" text-anchor="end">{}</text>"#,
            W - RIGHT,
            LEFT - 6.0,
            yy + 4.0,
            value_label(unit, v, prefix_div, prefix)
        );
        v += step;
    }
    for i in 0..=5 {
        let t = from_ms + span * i / 5;
        let xx = x(t);
        let anchor = match i {
            0 => "start",
            5 => "end",
            _ => "middle",
        };
        let _ = write!(
            out,
            r#"<line class="tick" x1="{xx:.1}" x2="{xx:.1}" y1="{}" y2="{}"/><text class="ax" x="{xx:.1}" y="{}" text-anchor="{anchor}">{}</text>"#,
            H - BOTTOM,
            H - BOTTOM + 4.0,
            H - 10.0,
            time_label(t, span)
        );
    }
    let _ = write!(
        out,
        r#"<line class="axis" x1="{LEFT}" x2="{LEFT}" y1="{TOP}" y2="{}"/><line class="axis" x1="{LEFT}" x2="{}" y1="{}" y2="{}"/>"#,
        H - BOTTOM,
        W - RIGHT,
        H - BOTTOM,
        H - BOTTOM
    );
    for (i, s) in series.iter().enumerate() {
        // A gap much longer than the usual spacing is missing data, not a straight line.
        let mut gaps: Vec<i64> = s.points.windows(2).map(|w| w[1].0 - w[0].0).collect();
        gaps.sort_unstable();
        let usual = gaps.get(gaps.len() / 2).copied().unwrap_or(span);
        let mut segment = String::new();
        let mut prev: Option<i64> = None;
        let flush = |seg: &mut String, out: &mut String| {
            if !seg.is_empty() {
                let _ = write!(
                    out,
                    r#"<polyline class="ln s{i}" points="{}"/>"#,
                    seg.trim()
                );
                seg.clear();
            }
        };
        for &(t, v) in &s.points {
            if !v.is_finite() {
                continue;
            }
            if prev.is_some_and(|p| t - p > usual * 5) {
                flush(&mut segment, &mut out);
            }
            let _ = write!(segment, "{:.1},{:.1} ", x(t), y(v.max(floor)));
            prev = Some(t);
        }
        flush(&mut segment, &mut out);
        if s.points.len() == 1 {
            let (t, v) = s.points[0];
            let _ = write!(
                out,
                r#"<circle class="pt s{i}" cx="{:.1}" cy="{:.1}" r="2.5"/>"#,
                x(t),
                y(v.max(floor))
            );
        }
    }
    if n_points == 0 {
        let _ = write!(
            out,
            r#"<text class="ax" x="{}" y="{}" text-anchor="middle">no data in this range</text>"#,
            LEFT + pw / 2.0,
            TOP + ph / 2.0
        );
    }
    out.push_str("</svg>");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_axes_units_and_lines() {
        let pts: Vec<(i64, f64)> = (0..60).map(|i| (i * 60_000, 1.2e9 + i as f64)).collect();
        let svg = line_chart(
            "Hash rate",
            Unit::HashRate,
            0,
            3_600_000,
            &[Series {
                name: "total",
                points: pts,
            }],
        );
        assert!(svg.contains("GH/s"));
        assert!(svg.contains("<polyline"));
        assert!(svg.contains("data-points=\"60\""));
        assert!(svg.contains(">00:00<"));
        assert!(!svg.contains("style="));
        let empty = line_chart("T", Unit::Celsius, 0, 1000, &[]);
        assert!(empty.contains("no data"));
        assert_eq!(nice_step(0.37), 0.5);
        assert_eq!(nice_step(1800.0), 2000.0);
    }
}
