//! Numbers, durations and times as people read them. Pure functions, unit-tested.

use std::time::{SystemTime, UNIX_EPOCH};

/// At most this much of an error text in a list (runs, batches, row errors, events).
pub const ERROR_IN_LIST: usize = 300;
/// At most this much of an error text as a page's main message.
pub const ERROR_ON_PAGE: usize = 2000;

/// The first `max` characters of `s`, with "…" when cut; and whether it was cut.
pub fn clip(s: &str, max: usize) -> (String, bool) {
    match s.char_indices().nth(max) {
        Some((at, _)) => (format!("{}…", &s[..at]), true),
        None => (s.to_string(), false),
    }
}

pub fn now_epoch() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// 1234567 -> "1,234,567".
pub fn count(n: i64) -> String {
    let digits = n.unsigned_abs().to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    if n < 0 {
        format!("-{out}")
    } else {
        out
    }
}

/// A size: "812 B", "33.7 kB", "1.2 MB" (powers of 1000).
pub fn bytes(n: i64) -> String {
    let n = n.max(0) as f64;
    if n < 1000.0 {
        return format!("{n} B");
    }
    for (unit, scale) in [("kB", 1e3), ("MB", 1e6), ("GB", 1e9)] {
        if n < scale * 1000.0 {
            return format!("{:.1} {unit}", n / scale);
        }
    }
    format!("{:.1} TB", n / 1e12)
}

/// Rows per second: "8,210/s", "12.5/s".
pub fn rate(r: Option<f64>) -> String {
    match r {
        None => "–".into(),
        Some(r) if r >= 100.0 => format!("{}/s", count(r.round() as i64)),
        Some(r) => format!("{r:.1}/s"),
    }
}

/// A duration: "0.35 s", "12 s", "4 min 05 s", "2 h 03 min", "3 d 4 h".
pub fn duration(secs: f64) -> String {
    if !secs.is_finite() || secs < 0.0 {
        return "–".into();
    }
    if secs < 1.0 {
        return format!("{} ms", (secs * 1000.0).round() as i64);
    }
    if secs < 10.0 {
        return format!("{secs:.1} s");
    }
    let s = secs.round() as i64;
    match s {
        0..=59 => format!("{s} s"),
        60..=3599 => format!("{} min {:02} s", s / 60, s % 60),
        3600..=86399 => format!("{} h {:02} min", s / 3600, (s % 3600) / 60),
        _ => format!("{} d {} h", s / 86400, (s % 86400) / 3600),
    }
}

pub fn opt_duration(secs: Option<f64>) -> String {
    secs.map(duration).unwrap_or_else(|| "–".into())
}

/// "3 min ago" / "in 2 h" relative to `now`.
pub fn relative(at: f64, now: f64) -> String {
    let d = now - at;
    let ahead = d < 0.0;
    let s = d.abs().round() as i64;
    let text = match s {
        0..=4 => return "just now".into(),
        5..=59 => format!("{s} s"),
        60..=3599 => format!("{} min", s / 60),
        3600..=86399 => format!("{} h", s / 3600),
        _ => format!("{} d", s / 86400),
    };
    if ahead {
        format!("in {text}")
    } else {
        format!("{text} ago")
    }
}

/// Absolute UTC time, "2026-11-22 08:30:12 UTC" (shown on hover).
pub fn absolute(at: f64) -> String {
    let secs = at.floor() as i64;
    let days = secs.div_euclid(86400);
    let rem = secs.rem_euclid(86400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

/// ISO 8601 for `<time datetime>`.
pub fn iso(at: f64) -> String {
    let a = absolute(at);
    // "YYYY-MM-DD HH:MM:SS UTC" -> "YYYY-MM-DDTHH:MM:SSZ"
    format!("{}T{}Z", &a[..10], &a[11..19])
}

/// Days since 1970-01-01 to (year, month, day) in the proleptic Gregorian calendar
/// (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// A key as text: "42" or "(7, 2024-01-01)".
pub fn key(k: &[String]) -> String {
    match k {
        [one] => one.clone(),
        many => format!("({})", many.join(", ")),
    }
}

pub fn opt_key(k: &Option<Vec<String>>) -> String {
    match k {
        None => "start".into(),
        Some(k) => key(k),
    }
}

/// The ETA as the issue asks: honest that it comes from the planner's estimate.
pub fn eta(eta_secs: Option<f64>, status: &str) -> String {
    match (status, eta_secs) {
        ("completed", _) => "done".into(),
        (_, Some(s)) => format!("~{}", duration(s)),
        _ => "–".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(bytes(812), "812 B");
        assert_eq!(bytes(33_700), "33.7 kB");
        assert_eq!(bytes(1_250_000), "1.2 MB");
    }

    #[test]
    fn clipping_keeps_characters_whole() {
        assert_eq!(clip("short", 10), ("short".to_string(), false));
        assert_eq!(clip("ééééé", 2), ("éé…".to_string(), true));
        assert_eq!(clip(&"x".repeat(1_000_000), 300).0.chars().count(), 301);
    }

    #[test]
    fn counts_group_thousands() {
        assert_eq!(count(0), "0");
        assert_eq!(count(999), "999");
        assert_eq!(count(1000), "1,000");
        assert_eq!(count(1234567), "1,234,567");
        assert_eq!(count(-1234), "-1,234");
    }

    #[test]
    fn durations_read_naturally() {
        assert_eq!(duration(0.35), "350 ms");
        assert_eq!(duration(2.25), "2.2 s");
        assert_eq!(duration(12.0), "12 s");
        assert_eq!(duration(245.0), "4 min 05 s");
        assert_eq!(duration(7380.0), "2 h 03 min");
        assert_eq!(duration(3.0 * 86400.0 + 4.0 * 3600.0), "3 d 4 h");
        assert_eq!(duration(f64::NAN), "–");
        assert_eq!(rate(Some(8210.4)), "8,210/s");
        assert_eq!(rate(Some(12.46)), "12.5/s");
        assert_eq!(rate(None), "–");
    }

    #[test]
    fn times_relative_and_absolute() {
        assert_eq!(relative(100.0, 102.0), "just now");
        assert_eq!(relative(100.0, 400.0), "5 min ago");
        assert_eq!(relative(8000.0, 800.0), "in 2 h");
        assert_eq!(absolute(0.0), "1970-01-01 00:00:00 UTC");
        assert_eq!(absolute(1_795_336_212.5), "2026-11-22 08:30:12 UTC");
        assert_eq!(absolute(951_782_400.0), "2000-02-29 00:00:00 UTC");
        assert_eq!(iso(1_795_336_212.0), "2026-11-22T08:30:12Z");
    }

    #[test]
    fn keys_and_eta() {
        assert_eq!(key(&["42".into()]), "42");
        assert_eq!(key(&["7".into(), "x".into()]), "(7, x)");
        assert_eq!(opt_key(&None), "start");
        assert_eq!(eta(Some(65.0), "running"), "~1 min 05 s");
        assert_eq!(eta(None, "completed"), "done");
    }
}
