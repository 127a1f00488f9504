//! Plain-text tables for the benchmarks' reports (shared by every bench binary).

/// Left-aligned columns, three spaces apart, with a rule under the header.
pub fn format_table(header: &[&str], rows: &[Vec<String>]) -> String {
    let width = |i: usize| {
        rows.iter()
            .map(|r| r[i].chars().count())
            .chain([header[i].chars().count()])
            .max()
            .unwrap_or(0)
    };
    let widths: Vec<usize> = (0..header.len()).map(width).collect();
    let line = |cells: Vec<&str>| {
        cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c}{}", " ".repeat(w - c.chars().count())))
            .collect::<Vec<_>>()
            .join("   ")
            .trim_end()
            .to_string()
    };
    let mut out = vec![line(header.to_vec())];
    out.push(
        widths
            .iter()
            .map(|w| "-".repeat(*w))
            .collect::<Vec<_>>()
            .join("   "),
    );
    out.extend(
        rows.iter()
            .map(|r| line(r.iter().map(String::as_str).collect())),
    );
    out.join("\n")
}

/// Prints the table, then `runs` (one line per scenario and system, every sample in order)
/// under a heading, then a blank line.
#[allow(dead_code)] // shared by path; not every bench lists its runs
pub fn print_with_runs(header: &[&str], rows: &[Vec<String>], runs: &[String]) {
    println!("{}", format_table(header, rows));
    if !runs.is_empty() {
        println!();
        println!("every run, in order (ms):");
        for line in runs {
            println!("{line}");
        }
    }
    println!();
}
