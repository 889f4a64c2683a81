//! The quantities specs are written in, parsed strictly: an unknown unit is an error, never
//! a guess.
//!
//! - CPU in millicores: `500m`, `2` (cores), `0.5` (cores).
//! - Memory in bytes: `256Mi`, `1Gi`, `512M`, `1G`, `1024` (plain bytes); also `KiB`-style.
//! - Durations: `250ms`, `30s`, `5m`, `2h`, or a plain number of seconds.

/// Seconds since the Unix epoch as a UTC date and time, `(year, month, day, h, m, s)`
/// (days to a civil date by Howard Hinnant's algorithm): how kiln prints times without a
/// calendar crate.
pub fn utc(secs: i64) -> (i64, i64, i64, i64, i64, i64) {
    let (days, rest) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day, rest / 3600, rest % 3600 / 60, rest % 60)
}

/// Parses a CPU quantity into millicores.
pub fn parse_cpu(text: &str) -> Result<u64, String> {
    let t = text.trim();
    if let Some(milli) = t.strip_suffix('m') {
        return parse_non_negative(milli)
            .map(|v| v.round() as u64)
            .ok_or_else(|| format!("{text:?} is not a CPU quantity (examples: 500m, 2, 0.5)"));
    }
    parse_non_negative(t)
        .map(|cores| (cores * 1000.0).round() as u64)
        .ok_or_else(|| format!("{text:?} is not a CPU quantity (examples: 500m, 2, 0.5)"))
}

/// Parses a memory quantity into bytes.
pub fn parse_memory(text: &str) -> Result<u64, String> {
    const UNITS: &[(&str, f64)] = &[
        ("KiB", 1024.0),
        ("MiB", 1048576.0),
        ("GiB", 1073741824.0),
        ("TiB", 1099511627776.0),
        ("Ki", 1024.0),
        ("Mi", 1048576.0),
        ("Gi", 1073741824.0),
        ("Ti", 1099511627776.0),
        ("KB", 1e3),
        ("MB", 1e6),
        ("GB", 1e9),
        ("TB", 1e12),
        ("K", 1e3),
        ("M", 1e6),
        ("G", 1e9),
        ("T", 1e12),
        ("B", 1.0),
    ];
    let t = text.trim();
    let split = t.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let factor =
        if unit.is_empty() {
            1.0
        } else {
            UNITS.iter().find(|(u, _)| *u == unit).map(|(_, f)| *f).ok_or_else(|| {
            format!("unknown memory unit {unit:?} in {text:?} (use Ki, Mi, Gi, Ti, K, M, G or T)")
        })?
        };
    parse_non_negative(number)
        .map(|v| (v * factor).round() as u64)
        .ok_or_else(|| format!("{text:?} is not a memory quantity (examples: 256Mi, 1Gi)"))
}

/// Parses a duration into milliseconds.
pub fn parse_duration_ms(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let factor = match unit {
        "" | "s" => 1000.0,
        "ms" => 1.0,
        "m" => 60_000.0,
        "h" => 3_600_000.0,
        "d" => 86_400_000.0,
        other => {
            return Err(format!(
                "unknown duration unit {other:?} in {text:?} (use ms, s, m, h or d)"
            ));
        }
    };
    parse_non_negative(number)
        .map(|v| (v * factor).round() as u64)
        .ok_or_else(|| format!("{text:?} is not a duration (examples: 30s, 5m, 1h)"))
}

fn parse_non_negative(number: &str) -> Option<f64> {
    let v: f64 = number.trim().parse().ok()?;
    (v.is_finite() && v >= 0.0).then_some(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu() {
        assert_eq!(parse_cpu("500m"), Ok(500));
        assert_eq!(parse_cpu("2"), Ok(2000));
        assert_eq!(parse_cpu("0.25"), Ok(250));
        assert!(parse_cpu("-1").is_err());
        assert!(parse_cpu("two").is_err());
    }

    #[test]
    fn memory() {
        assert_eq!(parse_memory("256Mi"), Ok(256 << 20));
        assert_eq!(parse_memory("1G"), Ok(1_000_000_000));
        assert_eq!(parse_memory("1GiB"), Ok(1 << 30));
        assert_eq!(parse_memory("4096"), Ok(4096));
        assert!(parse_memory("12 parsecs").is_err());
        assert!(parse_memory("-5Mi").is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration_ms("250ms"), Ok(250));
        assert_eq!(parse_duration_ms("30s"), Ok(30_000));
        assert_eq!(parse_duration_ms("5m"), Ok(300_000));
        assert_eq!(parse_duration_ms("10"), Ok(10_000));
        assert!(parse_duration_ms("5 fortnights").is_err());
    }
}
