//! Docker-style output: borderless, upper-case column tables, human times and sizes, JSON.

use comfy_table::{presets, ContentArrangement, Table};
use serde::Serialize;

/// A table like Docker's: no borders, columns three spaces apart.
pub fn table(header: &[&str], rows: Vec<Vec<String>>) -> String {
    let mut t = Table::new();
    t.load_preset(presets::NOTHING)
        .set_content_arrangement(ContentArrangement::Disabled)
        .set_header(header.iter().map(|h| h.to_string()));
    for row in rows {
        t.add_row(row);
    }
    for column in t.column_iter_mut() {
        column.set_padding((0, 3));
    }
    let text = t.to_string();
    text.lines()
        .map(str::trim_end)
        .collect::<Vec<_>>()
        .join("\n")
}

pub fn print_json<T: Serialize>(value: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// "5 seconds ago", "About a minute ago", "3 hours ago" (Docker's wording).
pub fn ago(timestamp_ms: i64) -> String {
    if timestamp_ms <= 0 {
        return "N/A".into();
    }
    let secs = ((shoal_proto::now_ms() - timestamp_ms) / 1000).max(0);
    let text = match secs {
        0 => "Less than a second".to_string(),
        1 => "1 second".to_string(),
        2..=59 => format!("{secs} seconds"),
        60..=119 => "About a minute".to_string(),
        120..=3599 => format!("{} minutes", secs / 60),
        3600..=7199 => "About an hour".to_string(),
        7200..=172_799 => format!("{} hours", secs / 3600),
        _ => format!("{} days", secs / 86_400),
    };
    format!("{text} ago")
}

/// 1.23MB, like Docker (decimal units).
pub fn size(bytes: u64) -> String {
    let b = bytes as f64;
    match bytes {
        0..=999 => format!("{bytes}B"),
        1000..=999_999 => format!("{:.3}kB", b / 1e3),
        1_000_000..=999_999_999 => format!("{:.3}MB", b / 1e6),
        _ => format!("{:.3}GB", b / 1e9),
    }
    .replace(".000", "")
}

pub fn short_id(id: &str) -> &str {
    let id = id.strip_prefix("sha256:").unwrap_or(id);
    &id[..id.len().min(12)]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_have_no_borders() {
        let t = table(&["ID", "NAME"], vec![vec!["abc".into(), "web".into()]]);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 2);
        assert!(lines[0].starts_with("ID"));
        assert!(lines[1].starts_with("abc"));
        assert!(lines[1].contains("web"));
    }

    #[test]
    fn sizes_and_ids() {
        assert_eq!(size(512), "512B");
        assert_eq!(size(1_500_000), "1.500MB");
        assert_eq!(short_id("sha256:0123456789abcdef"), "0123456789ab");
    }
}
