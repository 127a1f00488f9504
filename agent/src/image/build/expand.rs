//! Variable substitution in Dockerfile words, as Docker's builder does it (pure).
//!
//! Docker substitutes variables itself (not through a shell) in `ADD`, `COPY`, `ENV`, `EXPOSE`,
//! `FROM`, `LABEL`, `STOPSIGNAL`, `USER`, `VOLUME`, `WORKDIR` and `ARG` defaults; `RUN`, `CMD`
//! and `ENTRYPOINT` are left to the container's shell. The rules, which this module follows:
//!
//! - `$NAME` and `${NAME}`: the value, or nothing when unset. A `$` not followed by a name is
//!   kept as it is. Names are letters, digits and `_` (a leading digit run is a name too).
//! - `${NAME:-word}` (unset or empty → word), `${NAME-word}` (unset → word), `${NAME:+word}`
//!   (set and non-empty → word, else nothing), `${NAME+word}` (set → word), `${NAME:?msg}` and
//!   `${NAME?msg}` (an error when unset, or empty with the colon). `word` is itself expanded.
//! - Single quotes keep everything literal; double quotes expand variables and allow the escape
//!   character before `"`, `$` and itself only (other escapes stay as written); outside quotes
//!   the escape character makes the next character literal. Quotes are removed.

/// Expands one word. `escape` is the Dockerfile's escape character (`\` or `` ` ``); `lookup`
/// gives a variable's value (None: unset).
pub fn expand_word(
    word: &str,
    escape: char,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<String, String> {
    let mut lexer = Lexer {
        chars: word.chars().collect(),
        pos: 0,
        escape,
        lookup,
    };
    lexer.until(None)
}

struct Lexer<'a> {
    chars: Vec<char>,
    pos: usize,
    escape: char,
    lookup: &'a dyn Fn(&str) -> Option<String>,
}

impl Lexer<'_> {
    fn peek(&self) -> Option<char> {
        self.chars.get(self.pos).copied()
    }

    fn next(&mut self) -> Option<char> {
        let c = self.peek();
        if c.is_some() {
            self.pos += 1;
        }
        c
    }

    /// Processes up to `stop` (consumed) or the end.
    fn until(&mut self, stop: Option<char>) -> Result<String, String> {
        let mut out = String::new();
        while let Some(c) = self.peek() {
            if Some(c) == stop {
                self.pos += 1;
                return Ok(out);
            }
            match c {
                '\'' => out.push_str(&self.single_quoted()?),
                '"' => out.push_str(&self.double_quoted()?),
                '$' => out.push_str(&self.dollar()?),
                _ => {
                    self.pos += 1;
                    if c == self.escape {
                        match self.next() {
                            Some(n) => out.push(n),
                            None => break,
                        }
                    } else {
                        out.push(c);
                    }
                }
            }
        }
        if stop.is_some() {
            return Err("syntax error: missing '}'".into());
        }
        Ok(out)
    }

    fn single_quoted(&mut self) -> Result<String, String> {
        self.pos += 1;
        let mut out = String::new();
        loop {
            match self.next() {
                None => {
                    return Err(
                        "unexpected end of statement while looking for matching single-quote"
                            .into(),
                    )
                }
                Some('\'') => return Ok(out),
                Some(c) => out.push(c),
            }
        }
    }

    fn double_quoted(&mut self) -> Result<String, String> {
        self.pos += 1;
        let mut out = String::new();
        loop {
            match self.peek() {
                None => {
                    return Err(
                        "unexpected end of statement while looking for matching double-quote"
                            .into(),
                    )
                }
                Some('"') => {
                    self.pos += 1;
                    return Ok(out);
                }
                Some('$') => out.push_str(&self.dollar()?),
                Some(c) => {
                    self.pos += 1;
                    if c == self.escape {
                        match self.peek() {
                            Some(n) if n == '"' || n == '$' || n == self.escape => {
                                self.pos += 1;
                                out.push(n);
                            }
                            _ => out.push(c),
                        }
                    } else {
                        out.push(c);
                    }
                }
            }
        }
    }

    fn name(&mut self) -> String {
        let mut name = String::new();
        if self.peek().is_some_and(|c| c.is_ascii_digit()) {
            while let Some(c) = self.peek().filter(|c| c.is_ascii_digit()) {
                name.push(c);
                self.pos += 1;
            }
            return name;
        }
        while let Some(c) = self.peek().filter(|c| c.is_alphanumeric() || *c == '_') {
            name.push(c);
            self.pos += 1;
        }
        name
    }

    fn dollar(&mut self) -> Result<String, String> {
        self.pos += 1; // '$'
        if self.peek() != Some('{') {
            let name = self.name();
            if name.is_empty() {
                return Ok("$".into());
            }
            return Ok((self.lookup)(&name).unwrap_or_default());
        }
        self.pos += 1; // '{'
        match self.peek() {
            None => return Err("syntax error: missing '}'".into()),
            Some('{') | Some('}') | Some(':') => {
                return Err("syntax error: bad substitution".into())
            }
            _ => {}
        }
        let name = self.name();
        if name.is_empty() {
            return Err("syntax error: bad substitution".into());
        }
        let value = (self.lookup)(&name);
        match self.next() {
            Some('}') => Ok(value.unwrap_or_default()),
            Some(':') => {
                let op = self.next();
                let word = self.until(Some('}'))?;
                let set_nonempty = value.as_deref().is_some_and(|v| !v.is_empty());
                match op {
                    Some('-') => Ok(if set_nonempty {
                        value.unwrap_or_default()
                    } else {
                        word
                    }),
                    Some('+') => Ok(if set_nonempty { word } else { String::new() }),
                    Some('?') if set_nonempty => Ok(value.unwrap_or_default()),
                    Some('?') => Err(required_message(&name, &word)),
                    Some(c) => Err(format!("unsupported modifier ({c}) in substitution")),
                    None => Err("syntax error: missing '}'".into()),
                }
            }
            Some(op @ ('-' | '+' | '?')) => {
                let word = self.until(Some('}'))?;
                match (op, value) {
                    ('-', Some(v)) => Ok(v),
                    ('-', None) => Ok(word),
                    ('+', Some(_)) => Ok(word),
                    ('+', None) => Ok(String::new()),
                    ('?', Some(v)) => Ok(v),
                    _ => Err(required_message(&name, &word)),
                }
            }
            Some(c) => Err(format!("unsupported modifier ({c}) in substitution")),
            None => Err("syntax error: missing '}'".into()),
        }
    }
}

fn required_message(name: &str, word: &str) -> String {
    if word.is_empty() {
        format!("{name}: is not allowed to be unset")
    } else {
        format!("{name}: {word}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn expand(word: &str) -> Result<String, String> {
        let vars: BTreeMap<&str, &str> = [
            ("A", "alpha"),
            ("EMPTY", ""),
            ("SP", "two words"),
            ("_x1", "under"),
        ]
        .into_iter()
        .collect();
        expand_word(word, '\\', &|n| vars.get(n).map(|v| v.to_string()))
    }

    #[test]
    fn build_expand_plain_and_braced_names() {
        assert_eq!(expand("$A").unwrap(), "alpha");
        assert_eq!(expand("${A}").unwrap(), "alpha");
        assert_eq!(expand("x${A}y").unwrap(), "xalphay");
        assert_eq!(expand("$A/bin").unwrap(), "alpha/bin");
        assert_eq!(expand("$Ax").unwrap(), "", "the name runs on: Ax is unset");
        assert_eq!(expand("$_x1").unwrap(), "under");
        assert_eq!(expand("$UNSET-x").unwrap(), "-x");
        assert_eq!(expand("no vars").unwrap(), "no vars");
        assert_eq!(expand("cost: 5$").unwrap(), "cost: 5$");
        assert_eq!(expand("$ $/ $-").unwrap(), "$ $/ $-");
        assert_eq!(expand("$1").unwrap(), "");
    }

    #[test]
    fn build_expand_modifiers() {
        assert_eq!(expand("${A:-d}").unwrap(), "alpha");
        assert_eq!(expand("${EMPTY:-d}").unwrap(), "d");
        assert_eq!(expand("${UNSET:-d}").unwrap(), "d");
        assert_eq!(expand("${EMPTY-d}").unwrap(), "");
        assert_eq!(expand("${UNSET-d}").unwrap(), "d");
        assert_eq!(expand("${A:+set}").unwrap(), "set");
        assert_eq!(expand("${EMPTY:+set}").unwrap(), "");
        assert_eq!(expand("${EMPTY+set}").unwrap(), "set");
        assert_eq!(expand("${UNSET+set}").unwrap(), "");
        assert_eq!(expand("${UNSET:-$A}").unwrap(), "alpha", "nested");
        assert_eq!(expand("${UNSET:-${EMPTY:-deep}}").unwrap(), "deep");
        assert_eq!(expand("${UNSET:-a b}").unwrap(), "a b");
        assert_eq!(expand("${A:?must}").unwrap(), "alpha");
        assert_eq!(expand("${EMPTY?must}").unwrap(), "");
    }

    #[test]
    fn build_expand_errors() {
        assert_eq!(
            expand("${UNSET:?give it}").unwrap_err(),
            "UNSET: give it".to_string()
        );
        assert!(expand("${UNSET?}")
            .unwrap_err()
            .contains("not allowed to be unset"));
        assert!(expand("${A").unwrap_err().contains("missing '}'"));
        assert!(expand("${}").unwrap_err().contains("bad substitution"));
        assert!(expand("${:-x}").unwrap_err().contains("bad substitution"));
        assert!(expand("${A%x}")
            .unwrap_err()
            .contains("unsupported modifier"));
        assert!(expand("'open").unwrap_err().contains("single-quote"));
        assert!(expand("\"open").unwrap_err().contains("double-quote"));
        assert!(expand("${UNSET:-x").unwrap_err().contains("missing '}'"));
    }

    #[test]
    fn build_expand_quotes_and_escapes() {
        assert_eq!(expand("'$A'").unwrap(), "$A");
        assert_eq!(expand("\"$A\"").unwrap(), "alpha");
        assert_eq!(expand("\"a  b\"").unwrap(), "a  b");
        assert_eq!(expand("\\$A").unwrap(), "$A");
        assert_eq!(expand("a\\ b").unwrap(), "a b");
        assert_eq!(expand("\"\\$A \\\" \\\\ \\n\"").unwrap(), "$A \" \\ \\n");
        assert_eq!(expand("'a\\b'").unwrap(), "a\\b");
        assert!(expand("it's\"\"").unwrap_err().contains("single-quote"));
        assert_eq!(expand("x\\").unwrap(), "x", "a trailing escape is dropped");
        assert_eq!(expand("\"${SP}\"").unwrap(), "two words");
    }

    #[test]
    fn build_expand_backtick_escape() {
        let vars = |n: &str| (n == "A").then(|| "v".to_string());
        assert_eq!(expand_word("`$A", '`', &vars).unwrap(), "$A");
        assert_eq!(
            expand_word("c:\\dir\\$A", '`', &vars).unwrap(),
            "c:\\dir\\v"
        );
    }
}
