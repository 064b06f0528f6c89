//! Numbers as people read them: scaled hash rates, durations, UTC times.

/// `1.23 GH/s`.
pub fn hashrate(hps: f64) -> String {
    let (v, unit) = scale(hps);
    format!("{} {unit}H/s", num3(v))
}

/// A value scaled to k/M/G/T/P/E and its prefix.
pub fn scale(v: f64) -> (f64, &'static str) {
    const PREFIXES: [&str; 7] = ["", "k", "M", "G", "T", "P", "E"];
    let mut v = if v.is_finite() { v } else { 0.0 };
    let mut i = 0;
    while v.abs() >= 1000.0 && i + 1 < PREFIXES.len() {
        v /= 1000.0;
        i += 1;
    }
    (v, PREFIXES[i])
}

/// Three significant digits or so.
pub fn num3(v: f64) -> String {
    if v == 0.0 {
        "0".into()
    } else if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else if v.abs() >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

/// `61 °C` or `–`.
pub fn temp(t: Option<f32>) -> String {
    t.map_or_else(dash, |t| format!("{t:.0} °C"))
}

/// `40 %` or `–`.
pub fn percent(p: Option<f32>) -> String {
    p.map_or_else(dash, |p| format!("{p:.0} %"))
}

/// `150 W` or `–`.
pub fn watts(w: Option<f32>) -> String {
    w.map_or_else(dash, |w| {
        if w >= 10_000.0 {
            format!("{:.1} kW", w / 1000.0)
        } else {
            format!("{w:.0} W")
        }
    })
}

/// `≈ 12.34 USD/day (0.000123 BTC)`.
pub fn revenue(coin: &crate::coins::CoinData, r: crate::coins::Revenue) -> String {
    format!(
        "≈ {:.2} {}/day ({} {})",
        r.money,
        coin.currency,
        significant(r.coins, 3),
        coin.coin
    )
}

/// `v` with `digits` significant digits, without an exponent (coin amounts are often tiny).
pub fn significant(v: f64, digits: usize) -> String {
    if v == 0.0 || !v.is_finite() {
        return "0".into();
    }
    let magnitude = v.abs().log10().floor() as i64;
    let decimals = (digits as i64 - 1 - magnitude).clamp(0, 12) as usize;
    format!("{v:.decimals$}")
}

/// The placeholder for a missing value.
pub fn dash() -> String {
    "–".into()
}

/// `3d 4h`, `5h 2m`, `42s`.
pub fn duration(secs: u64) -> String {
    let (d, h, m) = (secs / 86_400, secs / 3_600 % 24, secs / 60 % 60);
    if d > 0 {
        format!("{d}d {h}h")
    } else if h > 0 {
        format!("{h}h {m}m")
    } else if m > 0 {
        format!("{m}m {}s", secs % 60)
    } else {
        format!("{secs}s")
    }
}

/// `12s ago`, or `never`.
pub fn ago(ts_ms: Option<i64>, now_ms: i64) -> String {
    match ts_ms {
        None => "never".into(),
        Some(t) => format!("{} ago", duration(((now_ms - t).max(0) / 1000) as u64)),
    }
}

/// `2026-11-28 01:02:03 UTC`.
pub fn utc(ts_ms: i64) -> String {
    let (y, mo, d, h, mi, s) = civil(ts_ms);
    format!("{y:04}-{mo:02}-{d:02} {h:02}:{mi:02}:{s:02} UTC")
}

/// Year, month, day, hour, minute, second of a Unix ms time (UTC).
pub fn civil(ts_ms: i64) -> (i64, u32, u32, u32, u32, u32) {
    let secs = ts_ms.div_euclid(1000);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Howard Hinnant's days-to-civil.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = if m <= 2 { y + 1 } else { y };
    (
        y,
        m,
        d,
        (rem / 3600) as u32,
        (rem / 60 % 60) as u32,
        (rem % 60) as u32,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coin_amounts_keep_three_significant_digits() {
        assert_eq!(significant(0.000123456, 3), "0.000123");
        assert_eq!(significant(1234.5, 3), "1234");
        assert_eq!(significant(1.5, 3), "1.50");
        assert_eq!(significant(0.0, 3), "0");
        assert_eq!(significant(f64::NAN, 3), "0");
    }

    #[test]
    fn formats() {
        assert_eq!(hashrate(1.5e9), "1.50 GH/s");
        assert_eq!(hashrate(0.0), "0 H/s");
        assert_eq!(hashrate(123_456.0), "123 kH/s");
        assert_eq!(duration(90_061), "1d 1h");
        assert_eq!(utc(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(utc(1_709_251_199_000), "2024-02-29 23:59:59 UTC");
        assert_eq!(watts(Some(12_345.0)), "12.3 kW");
    }
}
