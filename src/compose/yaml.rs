//! YAML reading: anchors, aliases (bounded), merge keys (nested too), and finding the line of a
//! key path in a file's text for error messages.

use serde_yaml::Value;

use super::error::{ComposeError, Result};

/// How many rounds of `apply_merge` a file may need: one per level of merge keys that bring in
/// further merge keys. Real files need two or three.
const MERGE_ROUNDS: usize = 32;

/// Parses one compose file to a YAML tree with all merge keys applied.
pub fn parse(text: &str, file: &std::path::Path) -> Result<Value> {
    parse_capped(text, file, MERGE_ROUNDS)
}

/// `parse` with a given bound on the rounds of merge-key application.
pub fn parse_capped(text: &str, file: &std::path::Path, max_rounds: usize) -> Result<Value> {
    let mut value: Value = serde_yaml::from_str(text).map_err(|e| {
        let line = e.location().map(|l| l.line());
        let msg = e.to_string();
        // serde_yaml appends " at line N column M"; the line is already in front.
        let msg = match msg.find(" at line ") {
            Some(i) => msg[..i].to_string(),
            None => msg,
        };
        let msg = if msg.contains("repetition limit exceeded") {
            "too many YAML alias expansions (a \"billion laughs\" file?): refusing to expand it"
                .to_string()
        } else if msg.contains("recursion limit exceeded") {
            "YAML nested too deeply (recursion limit exceeded)".to_string()
        } else {
            format!("invalid YAML: {msg}")
        };
        ComposeError::file(file, line, msg)
    })?;
    if value.is_null() {
        return Err(ComposeError::file(file, None, "empty compose file"));
    }
    let mut rounds = 0;
    while has_merge_key(&value) {
        if rounds == max_rounds {
            return Err(ComposeError::file(
                file,
                None,
                format!("merge keys (<<) still left after {max_rounds} rounds of merging"),
            ));
        }
        value
            .apply_merge()
            .map_err(|e| ComposeError::file(file, None, format!("invalid merge key (<<): {e}")))?;
        rounds += 1;
    }
    Ok(value)
}

fn has_merge_key(value: &Value) -> bool {
    match value {
        Value::Mapping(m) => m.contains_key("<<") || m.values().any(has_merge_key),
        Value::Sequence(s) => s.iter().any(has_merge_key),
        Value::Tagged(t) => has_merge_key(&t.value),
        _ => false,
    }
}

/// A mapping key as text (keys may be numbers or booleans in YAML).
pub fn key_string(key: &Value) -> String {
    match key {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        Value::Null => "null".to_string(),
        other => serde_yaml::to_string(other)
            .unwrap_or_default()
            .trim()
            .to_string(),
    }
}

/// Best-effort line (1-based) of a key path like `services.web.ports[1]` in a file's text: walks
/// block-style YAML by indentation. Returns the line and how many path segments were followed:
/// where the path goes on in flow style (`{...}`, `[...]`) the deepest line found is returned.
pub fn locate(text: &str, path: &str) -> Option<(usize, usize)> {
    let lines: Vec<&str> = text.lines().collect();
    let mut from = 0usize; // first line to search
    let mut to = lines.len(); // end of the current block
    let mut parent_indent: Option<usize> = None;
    let mut found: Option<(usize, usize)> = None;
    for (depth, (key, index)) in split_path(path).into_iter().enumerate() {
        if let Some(key) = key {
            let mut hit = None;
            for (n, line) in lines.iter().enumerate().take(to).skip(from) {
                let trimmed = line.trim_start();
                if trimmed.is_empty() || trimmed.starts_with('#') {
                    continue;
                }
                // A key on a sequence item's line (`- key: v`) is indented past the dash.
                let bare = trimmed.trim_start_matches("- ");
                let indent = line.len() - bare.len();
                if parent_indent.is_some_and(|p| indent <= p) {
                    break; // left the parent's block
                }
                let name = bare
                    .split(':')
                    .next()
                    .unwrap_or("")
                    .trim()
                    .trim_matches(['"', '\'']);
                if name == key && bare.contains(':') {
                    hit = Some((n, indent));
                    break;
                }
            }
            let Some((n, indent)) = hit else {
                return found;
            };
            found = Some((n + 1, depth + 1));
            from = n + 1;
            parent_indent = Some(indent);
            to = block_end(&lines, from, indent);
        }
        if let Some(index) = index {
            let mut count = 0;
            let mut hit = None;
            let mut item_indent = None;
            for (n, line) in lines.iter().enumerate().take(to).skip(from) {
                let trimmed = line.trim_start();
                let indent = line.len() - trimmed.len();
                if (trimmed.starts_with("- ") || trimmed == "-")
                    && *item_indent.get_or_insert(indent) == indent
                {
                    if count == index {
                        hit = Some((n, indent));
                        break;
                    }
                    count += 1;
                }
            }
            let Some((n, indent)) = hit else {
                return found;
            };
            found = Some((n + 1, depth + 1));
            from = n;
            parent_indent = Some(indent);
            to = block_end(&lines, n + 1, indent).max(n + 1);
        }
    }
    found
}

fn block_end(lines: &[&str], from: usize, indent: usize) -> usize {
    for (n, line) in lines.iter().enumerate().skip(from) {
        let trimmed = line.trim_start();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        if line.len() - trimmed.len() <= indent {
            return n;
        }
    }
    lines.len()
}

/// `services.web.ports[1]` → [(services, -), (web, -), (ports, 1)].
fn split_path(path: &str) -> Vec<(Option<&str>, Option<usize>)> {
    let mut out = Vec::new();
    for part in path.split('.') {
        match part.find('[') {
            Some(i) => {
                let key = &part[..i];
                let mut indices = part[i..]
                    .split('[')
                    .filter_map(|s| s.trim_end_matches(']').parse::<usize>().ok());
                out.push(((!key.is_empty()).then_some(key), indices.next()));
                for idx in indices {
                    out.push((None, Some(idx)));
                }
            }
            None => out.push((Some(part), None)),
        }
    }
    out
}
