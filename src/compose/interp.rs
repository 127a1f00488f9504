//! Variable interpolation (`${VAR:-default}` and friends) and `.env` file parsing, as Compose does.

use std::collections::BTreeMap;

use serde_yaml::Value;

use super::error::{ComposeError, Result};

/// Where variables come from: the process environment first, then the `.env` values.
pub trait Lookup {
    fn get(&self, name: &str) -> Option<String>;
}

impl Lookup for BTreeMap<String, String> {
    fn get(&self, name: &str) -> Option<String> {
        BTreeMap::get(self, name).cloned()
    }
}

impl<F: Fn(&str) -> Option<String>> Lookup for F {
    fn get(&self, name: &str) -> Option<String> {
        self(name)
    }
}

fn is_name_start(c: char) -> bool {
    c == '_' || c.is_ascii_alphabetic()
}

fn is_name_char(c: char) -> bool {
    c == '_' || c.is_ascii_alphanumeric()
}

/// Substitutes the variables in `text`. Unset variables without a default become empty strings
/// and are reported through `unset` (Compose warns about them).
pub fn interpolate(
    text: &str,
    env: &dyn Lookup,
    unset: &mut Vec<String>,
) -> Result<String, String> {
    if !text.contains('$') {
        return Ok(text.to_string());
    }
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c != '$' {
            out.push(c);
            i += 1;
            continue;
        }
        match chars.get(i + 1) {
            Some('$') => {
                out.push('$');
                i += 2;
            }
            Some('{') => {
                let start = i + 2;
                let end = matching_brace(&chars, start).ok_or_else(|| {
                    format!("invalid interpolation format for {text:?}: unclosed \"${{\"")
                })?;
                let inner: String = chars[start..end].iter().collect();
                out.push_str(&braced(&inner, text, env, unset)?);
                i = end + 1;
            }
            Some(&n) if is_name_start(n) => {
                let mut j = i + 1;
                while j < chars.len() && is_name_char(chars[j]) {
                    j += 1;
                }
                let name: String = chars[i + 1..j].iter().collect();
                match env.get(&name) {
                    Some(v) => out.push_str(&v),
                    None => unset.push(name),
                }
                i = j;
            }
            _ => {
                // A `$` not followed by a name, `{` or `$` is literal.
                out.push('$');
                i += 1;
            }
        }
    }
    Ok(out)
}

/// Index of the `}` closing a `${` whose body starts at `start`, counting nested `${...}`.
fn matching_brace(chars: &[char], start: usize) -> Option<usize> {
    let mut depth = 0usize;
    let mut i = start;
    while i < chars.len() {
        match chars[i] {
            '$' if chars.get(i + 1) == Some(&'$') => i += 1,
            '$' if chars.get(i + 1) == Some(&'{') => {
                depth += 1;
                i += 1;
            }
            '}' if depth == 0 => return Some(i),
            '}' => depth -= 1,
            _ => {}
        }
        i += 1;
    }
    None
}

/// The body of `${...}`: a name, optionally followed by an operator and a word.
fn braced(
    inner: &str,
    whole: &str,
    env: &dyn Lookup,
    unset: &mut Vec<String>,
) -> Result<String, String> {
    let bad = || {
        format!("invalid interpolation format for {whole:?}: \"${{{inner}}}\" is not a variable name with an optional :-, -, :?, ?, :+ or + modifier")
    };
    let name_len = inner
        .char_indices()
        .find(|&(_, c)| !is_name_char(c))
        .map(|(i, _)| i)
        .unwrap_or(inner.len());
    let name = &inner[..name_len];
    if name.is_empty() || !name.starts_with(is_name_start) {
        return Err(bad());
    }
    let rest = &inner[name_len..];
    let value = env.get(name);
    let (op, word) = if rest.is_empty() {
        ("", "")
    } else if let Some(op) = [":-", ":?", ":+", "-", "?", "+"]
        .into_iter()
        .find(|op| rest.starts_with(op))
    {
        (op, &rest[op.len()..])
    } else {
        return Err(bad());
    };
    let set = value.is_some();
    let non_empty = value.as_deref().is_some_and(|v| !v.is_empty());
    Ok(match op {
        "" => match value {
            Some(v) => v,
            None => {
                unset.push(name.to_string());
                String::new()
            }
        },
        ":-" if non_empty => value.unwrap_or_default(),
        "-" if set => value.unwrap_or_default(),
        ":-" | "-" => interpolate(word, env, unset)?,
        ":?" if non_empty => value.unwrap_or_default(),
        "?" if set => value.unwrap_or_default(),
        ":?" | "?" => {
            let message = interpolate(word, env, unset)?;
            let what = if op == ":?" {
                "is missing a value"
            } else {
                "is not set"
            };
            return Err(if message.is_empty() {
                format!("required variable {name} {what}")
            } else {
                format!("required variable {name} {what}: {message}")
            });
        }
        ":+" if non_empty => interpolate(word, env, unset)?,
        "+" if set => interpolate(word, env, unset)?,
        _ => String::new(),
    })
}

/// Interpolates every string value (not the keys, as the spec says) of a YAML tree.
pub fn interpolate_value(
    value: &mut Value,
    path: &str,
    env: &dyn Lookup,
    unset: &mut Vec<String>,
) -> Result<()> {
    match value {
        Value::String(s) => {
            *s = interpolate(s, env, unset).map_err(|m| ComposeError::at(path, m))?;
        }
        Value::Sequence(seq) => {
            for (i, v) in seq.iter_mut().enumerate() {
                interpolate_value(v, &format!("{path}[{i}]"), env, unset)?;
            }
        }
        Value::Mapping(map) => {
            for (k, v) in map.iter_mut() {
                let key = super::yaml::key_string(k);
                let child = if path.is_empty() {
                    key
                } else {
                    format!("{path}.{key}")
                };
                interpolate_value(v, &child, env, unset)?;
            }
        }
        Value::Tagged(t) => interpolate_value(&mut t.value, path, env, unset)?,
        Value::Null | Value::Bool(_) | Value::Number(_) => {}
    }
    Ok(())
}

/// Parses a `.env` file like Compose: `KEY=VALUE` lines, an optional `export ` prefix, `#`
/// comments, single quotes (literal), double quotes (escapes, may span lines), inline comments
/// after unquoted values when a blank precedes the `#`. Unquoted and double-quoted values are
/// interpolated with `env` and the earlier entries of the file. A bare `KEY` takes its value
/// from `env` or is skipped. Returns the entries in file order.
pub fn parse_dotenv(text: &str, env: &dyn Lookup) -> Result<Vec<(String, String)>, String> {
    let chars: Vec<char> = text.chars().collect();
    let mut entries: Vec<(String, String)> = Vec::new();
    let mut i = 0;
    let mut line = 1;
    let n = chars.len();
    while i < n {
        // Skip blanks and blank lines.
        while i < n && (chars[i] == ' ' || chars[i] == '\t' || chars[i] == '\r' || chars[i] == '\n')
        {
            if chars[i] == '\n' {
                line += 1;
            }
            i += 1;
        }
        if i >= n {
            break;
        }
        if chars[i] == '#' {
            while i < n && chars[i] != '\n' {
                i += 1;
            }
            continue;
        }
        let rest: String = chars[i..n.min(i + 7)].iter().collect();
        if rest == "export " || rest == "export\t" {
            i += 7;
            while i < n && (chars[i] == ' ' || chars[i] == '\t') {
                i += 1;
            }
        }
        let key_start = i;
        while i < n && chars[i] != '=' && chars[i] != '\n' && chars[i] != '#' {
            i += 1;
        }
        let key: String = chars[key_start..i]
            .iter()
            .collect::<String>()
            .trim()
            .to_string();
        if key.is_empty() || key.contains(char::is_whitespace) {
            return Err(format!("line {line}: invalid variable name {key:?}"));
        }
        if i >= n || chars[i] != '=' {
            // `KEY` alone: from the environment, or skipped.
            while i < n && chars[i] != '\n' {
                i += 1;
            }
            if let Some(v) = env.get(&key) {
                entries.push((key, v));
            }
            continue;
        }
        i += 1; // '='
        let start_line = line;
        while i < n && (chars[i] == ' ' || chars[i] == '\t') {
            i += 1;
        }
        let lookup = |name: &str| {
            env.get(name).or_else(|| {
                entries
                    .iter()
                    .rev()
                    .find(|(k, _)| k == name)
                    .map(|(_, v)| v.clone())
            })
        };
        let value = match chars.get(i) {
            Some('\'') => {
                let start = i + 1;
                let end = (start..n)
                    .find(|&j| chars[j] == '\'')
                    .ok_or_else(|| format!("line {start_line}: unterminated single quote"))?;
                let v: String = chars[start..end].iter().collect();
                line += v.matches('\n').count();
                i = end + 1;
                v
            }
            Some('"') => {
                let mut v = String::new();
                let mut j = i + 1;
                loop {
                    match chars.get(j) {
                        None => {
                            return Err(format!("line {start_line}: unterminated double quote"))
                        }
                        Some('"') => break,
                        Some('\\') => {
                            match chars.get(j + 1) {
                                Some('n') => v.push('\n'),
                                Some('r') => v.push('\r'),
                                Some('t') => v.push('\t'),
                                Some('\\') => v.push('\\'),
                                Some('"') => v.push('"'),
                                Some('$') => v.push_str("$$"),
                                Some(&c) => {
                                    v.push('\\');
                                    v.push(c);
                                }
                                None => v.push('\\'),
                            }
                            j += 2;
                        }
                        Some(&c) => {
                            if c == '\n' {
                                line += 1;
                            }
                            v.push(c);
                            j += 1;
                        }
                    }
                }
                i = j + 1;
                let mut unset = Vec::new();
                interpolate(&v, &lookup, &mut unset).map_err(|e| format!("line {line}: {e}"))?
            }
            _ => {
                let start = i;
                while i < n && chars[i] != '\n' {
                    if chars[i] == '#' && i > start && (chars[i - 1] == ' ' || chars[i - 1] == '\t')
                    {
                        break;
                    }
                    i += 1;
                }
                let raw: String = chars[start..i].iter().collect();
                let mut unset = Vec::new();
                interpolate(raw.trim(), &lookup, &mut unset)
                    .map_err(|e| format!("line {line}: {e}"))?
            }
        };
        // Whatever follows a quoted value on its line is a comment.
        while i < n && chars[i] != '\n' {
            i += 1;
        }
        entries.retain(|(k, _)| *k != key);
        entries.push((key, value));
    }
    Ok(entries)
}
