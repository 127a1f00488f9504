//! Parsing of the human units Docker's flags take: sizes (`64m`), CPUs (`0.5`), durations (`10s`).

use std::time::Duration;

/// `512`, `64k`, `64m`, `1.5g`, `1gb`: bytes, with binary multiples like Docker.
pub fn parse_bytes(text: &str) -> Result<i64, String> {
    let t = text.trim().to_ascii_lowercase();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let multiplier: f64 = match unit.trim_end_matches('b') {
        "" => 1.0,
        "k" => 1024.0,
        "m" => 1024.0 * 1024.0,
        "g" => 1024.0 * 1024.0 * 1024.0,
        "t" => 1024.0 * 1024.0 * 1024.0 * 1024.0,
        _ => return Err(bad_size(text)),
    };
    let value: f64 = number.parse().map_err(|_| bad_size(text))?;
    let bytes = value * multiplier;
    if !bytes.is_finite() || bytes < 0.0 || bytes > i64::MAX as f64 {
        return Err(bad_size(text));
    }
    Ok(bytes as i64)
}

fn bad_size(text: &str) -> String {
    format!("invalid size {text:?}: use a number with an optional unit b, k, m or g (e.g. 64m)")
}

/// `0.5` CPUs → 500 000 000 nano-CPUs.
pub fn parse_cpus(text: &str) -> Result<i64, String> {
    let value: f64 = text.trim().parse().map_err(|_| {
        format!("invalid CPU count {text:?}: use a decimal number such as 0.5 or 2")
    })?;
    if !value.is_finite() || !(0.0..=1e6).contains(&value) {
        return Err(format!("invalid CPU count {text:?}: it must be 0 or more"));
    }
    Ok((value * 1e9).round() as i64)
}

/// `300ms`, `10s`, `1m30s`, `2h`; a bare number is seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let bad = || format!("invalid duration {text:?}: use e.g. 500ms, 10s, 1m30s");
    let t = text.trim();
    if let Ok(secs) = t.parse::<f64>() {
        return Duration::try_from_secs_f64(secs).map_err(|_| bad());
    }
    let mut total = Duration::ZERO;
    let mut rest = t;
    while !rest.is_empty() {
        let split = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(bad)?;
        let (number, tail) = rest.split_at(split);
        let unit_len = tail
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(tail.len());
        let (unit, next) = tail.split_at(unit_len);
        let value: f64 = number.parse().map_err(|_| bad())?;
        let seconds = match unit {
            "ns" => value / 1e9,
            "us" | "µs" => value / 1e6,
            "ms" => value / 1e3,
            "s" => value,
            "m" => value * 60.0,
            "h" => value * 3600.0,
            _ => return Err(bad()),
        };
        total += Duration::try_from_secs_f64(seconds).map_err(|_| bad())?;
        rest = next;
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_bytes("64m"), Ok(64 << 20));
        assert_eq!(parse_bytes("1G"), Ok(1 << 30));
        assert_eq!(parse_bytes("512"), Ok(512));
        assert_eq!(parse_bytes("2kb"), Ok(2048));
        assert!(parse_bytes("abc").is_err());
        assert!(parse_bytes("12q").is_err());
        assert!(parse_bytes("-5m").is_err());
    }

    #[test]
    fn cpus() {
        assert_eq!(parse_cpus("0.5"), Ok(500_000_000));
        assert_eq!(parse_cpus("2"), Ok(2_000_000_000));
        assert!(parse_cpus("x").is_err());
        assert!(parse_cpus("-1").is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("3"), Ok(Duration::from_secs(3)));
        assert!(parse_duration("5x").is_err());
    }
}
