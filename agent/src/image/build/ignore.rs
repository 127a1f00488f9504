//! Glob patterns and `.dockerignore` rules, as Docker applies them (pure).
//!
//! Patterns use Go's `filepath.Match` syntax with Docker's `**` extension, on `/`-separated
//! paths relative to the context root:
//!
//! - `*` matches any run of characters other than `/`; `?` one character other than `/`;
//!   `[a-z]`, `[^0-9]` a character class (never `/`); `\x` the character `x`;
//! - `**` matches any run of characters, `/` included; `**/` matches zero or more whole
//!   directories (so `**/*.go` matches `a.go` and `x/y/a.go`).
//!
//! `.dockerignore`: one pattern a line; blank lines and lines starting with `#` are skipped;
//! blanks around a pattern are trimmed; a leading `/` is dropped and the pattern cleaned
//! (`a//b/./c` is `a/b/c`). A pattern matches a path when it matches the path itself or one of
//! its parent directories (`node_modules` excludes `node_modules/x/y`). A pattern starting with
//! `!` is an exception that re-includes what it matches. The last matching line wins.

/// A compiled glob.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Glob {
    text: String,
    tokens: Vec<Token>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Token {
    Char(char),
    /// `?`
    One,
    /// `*`
    Star,
    /// `**`, with `slash` when followed by `/` (which it then includes).
    DoubleStar {
        slash: bool,
    },
    Class {
        negated: bool,
        ranges: Vec<(char, char)>,
    },
}

impl Glob {
    /// Compiles `pattern`; a malformed class (`[a-`, `[]`, `[z-a]`) is an error.
    pub fn new(pattern: &str) -> Result<Glob, String> {
        let chars: Vec<char> = pattern.chars().collect();
        let bad = |why: &str| format!("invalid pattern {pattern:?}: {why}");
        let mut tokens = Vec::new();
        let mut i = 0;
        while i < chars.len() {
            match chars[i] {
                '*' if chars.get(i + 1) == Some(&'*') => {
                    i += 2;
                    let slash = chars.get(i) == Some(&'/');
                    if slash {
                        i += 1;
                    }
                    tokens.push(Token::DoubleStar { slash });
                    continue;
                }
                '*' => tokens.push(Token::Star),
                '?' => tokens.push(Token::One),
                '\\' => {
                    i += 1;
                    match chars.get(i) {
                        Some(&c) => tokens.push(Token::Char(c)),
                        None => return Err(bad("it ends with an escape")),
                    }
                }
                '[' => {
                    i += 1;
                    let negated = chars.get(i) == Some(&'^');
                    if negated {
                        i += 1;
                    }
                    let mut ranges = Vec::new();
                    let mut first = true;
                    loop {
                        let Some(&c) = chars.get(i) else {
                            return Err(bad("unterminated character class"));
                        };
                        if c == ']' && !first {
                            break;
                        }
                        if c == ']' {
                            return Err(bad("empty character class"));
                        }
                        first = false;
                        let lo = class_char(&chars, &mut i).ok_or_else(|| bad("bad class"))?;
                        let hi = if chars.get(i) == Some(&'-') && chars.get(i + 1) != Some(&']') {
                            i += 1;
                            class_char(&chars, &mut i).ok_or_else(|| bad("bad range"))?
                        } else {
                            lo
                        };
                        if hi < lo {
                            return Err(bad("a range goes backwards"));
                        }
                        ranges.push((lo, hi));
                    }
                    tokens.push(Token::Class { negated, ranges });
                }
                c => tokens.push(Token::Char(c)),
            }
            i += 1;
        }
        Ok(Glob {
            text: pattern.to_string(),
            tokens,
        })
    }

    /// The pattern as given.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Whether the pattern has any wildcard (else it names one path).
    pub fn has_wildcards(&self) -> bool {
        self.tokens.iter().any(|t| !matches!(t, Token::Char(_)))
    }

    /// The literal text before the first wildcard.
    pub fn literal_prefix(&self) -> String {
        self.tokens
            .iter()
            .map_while(|t| match t {
                Token::Char(c) => Some(*c),
                _ => None,
            })
            .collect()
    }

    /// Whether the whole of `name` matches.
    pub fn matches(&self, name: &str) -> bool {
        let name: Vec<char> = name.chars().collect();
        let (n, m) = (name.len(), self.tokens.len());
        // ok[i][j]: tokens[i..] match name[j..]; computed from the end.
        let mut next = vec![false; n + 1];
        next[n] = true;
        for i in (0..m).rev() {
            let mut cur = vec![false; n + 1];
            match &self.tokens[i] {
                Token::Star => {
                    for j in (0..=n).rev() {
                        cur[j] = next[j] || (j < n && name[j] != '/' && cur[j + 1]);
                    }
                }
                Token::DoubleStar { slash: false } => {
                    for j in (0..=n).rev() {
                        cur[j] = next[j] || (j < n && cur[j + 1]);
                    }
                }
                Token::DoubleStar { slash: true } => {
                    // Zero directories, or anything up to and including a '/'.
                    let mut later = false;
                    for j in (0..=n).rev() {
                        if j < n && name[j] == '/' && next[j + 1] {
                            later = true;
                        }
                        cur[j] = next[j] || later;
                    }
                }
                single => {
                    for j in 0..n {
                        cur[j] = next[j + 1] && single_matches(single, name[j]);
                    }
                }
            }
            next = cur;
        }
        next[0]
    }
}

fn class_char(chars: &[char], i: &mut usize) -> Option<char> {
    let mut c = *chars.get(*i)?;
    if c == '\\' {
        *i += 1;
        c = *chars.get(*i)?;
    }
    *i += 1;
    Some(c)
}

fn single_matches(token: &Token, c: char) -> bool {
    match token {
        Token::Char(x) => *x == c,
        Token::One => c != '/',
        Token::Class { negated, ranges } => {
            c != '/' && (ranges.iter().any(|(lo, hi)| (*lo..=*hi).contains(&c)) != *negated)
        }
        Token::Star | Token::DoubleStar { .. } => false,
    }
}

/// Cleans a `/`-separated relative path like Go's `path.Clean`, without a leading `/`: `.`
/// for the root itself. `..` components that would climb above the root are kept (callers
/// refuse them).
pub fn clean_path(path: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                if parts.last().is_some_and(|p| *p != "..") {
                    parts.pop();
                } else {
                    parts.push("..");
                }
            }
            p => parts.push(p),
        }
    }
    if parts.is_empty() {
        ".".into()
    } else {
        parts.join("/")
    }
}

/// One `.dockerignore` line.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Rule {
    glob: Glob,
    exception: bool,
}

/// The rules of a `.dockerignore` file.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IgnoreRules {
    rules: Vec<Rule>,
}

impl IgnoreRules {
    /// Parses a `.dockerignore` file's text; an invalid pattern is an error naming its line.
    pub fn parse(text: &str) -> Result<IgnoreRules, String> {
        let mut rules = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (exception, pattern) = match line.strip_prefix('!') {
                Some(p) => (true, p.trim()),
                None => (false, line),
            };
            let cleaned = clean_path(pattern.trim_start_matches('/'));
            if cleaned == "." && exception {
                continue;
            }
            let glob =
                Glob::new(&cleaned).map_err(|e| format!(".dockerignore line {}: {e}", n + 1))?;
            rules.push(Rule { glob, exception });
        }
        Ok(IgnoreRules { rules })
    }

    /// Whether there are no rules.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// Whether `path` (relative, `/`-separated, cleaned) is left out of the context.
    pub fn is_excluded(&self, path: &str) -> bool {
        let mut excluded = false;
        for rule in &self.rules {
            // Only a rule that could change the verdict needs matching.
            if rule.exception != excluded {
                continue;
            }
            if matches_self_or_parent(&rule.glob, path) {
                excluded = !rule.exception;
            }
        }
        excluded
    }

    /// Whether an exception rule might re-include something below the excluded directory
    /// `dir` (so the walk must go in). Conservative: when unsure, yes.
    pub fn may_include_below(&self, dir: &str) -> bool {
        let dir_slash = format!("{dir}/");
        self.rules.iter().filter(|r| r.exception).any(|r| {
            let prefix = r.glob.literal_prefix();
            prefix.starts_with(&dir_slash)
                || (r.glob.has_wildcards() && dir_slash.starts_with(&prefix))
        })
    }
}

fn matches_self_or_parent(glob: &Glob, path: &str) -> bool {
    if glob.matches(path) {
        return true;
    }
    let mut at = 0;
    while let Some(i) = path[at..].find('/') {
        if glob.matches(&path[..at + i]) {
            return true;
        }
        at += i + 1;
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(p: &str, n: &str) -> bool {
        Glob::new(p).expect("pattern").matches(n)
    }

    #[test]
    fn build_glob_basics() {
        assert!(m("a.txt", "a.txt"));
        assert!(!m("a.txt", "b.txt"));
        assert!(m("*.txt", "a.txt"));
        assert!(m("*.txt", ".txt"));
        assert!(!m("*.txt", "d/a.txt"), "* stops at /");
        assert!(m("*/a.txt", "d/a.txt"));
        assert!(m("a?c", "abc"));
        assert!(!m("a?c", "a/c"));
        assert!(m("[abc]x", "bx"));
        assert!(!m("[abc]x", "dx"));
        assert!(m("[a-c]x", "cx"));
        assert!(m("[^a-c]x", "dx"));
        assert!(!m("[^a-c]x", "ax"));
        assert!(!m("[^a]", "/"));
        assert!(m("\\*", "*"));
        assert!(!m("\\*", "x"));
        assert!(m("[\\]]", "]"));
        assert!(m("*", ""));
        assert!(m("a*b*c", "axxbyyc"));
        assert!(!m("a*b*c", "axxbyy"));
    }

    #[test]
    fn build_glob_double_star() {
        assert!(m("**/*.go", "a.go"));
        assert!(m("**/*.go", "x/y/a.go"));
        assert!(!m("**/*.go", "x/y/a.rs"));
        assert!(m("**", "anything/at/all"));
        assert!(m("a/**", "a/b/c"));
        assert!(m("a/**/z", "a/z"));
        assert!(m("a/**/z", "a/b/c/z"));
        assert!(!m("a/**/z", "a/bz"));
        assert!(m("**.log", "x/y.log"));
        assert!(m("a**b", "a/x/b"));
    }

    #[test]
    fn build_glob_errors_and_prefixes() {
        for bad in ["[", "[a", "[]", "[z-a]", "x\\"] {
            assert!(Glob::new(bad).is_err(), "{bad}");
        }
        let g = Glob::new("src/*.rs").unwrap();
        assert!(g.has_wildcards());
        assert_eq!(g.literal_prefix(), "src/");
        assert!(!Glob::new("plain/name").unwrap().has_wildcards());
    }

    #[test]
    fn build_glob_pathological_is_fast() {
        let name = "a".repeat(200);
        assert!(!m("*a*a*a*a*a*a*a*a*a*a*b", &name));
    }

    #[test]
    fn build_clean_path() {
        assert_eq!(clean_path("a//b/./c/"), "a/b/c");
        assert_eq!(clean_path("./"), ".");
        assert_eq!(clean_path("a/../b"), "b");
        assert_eq!(clean_path("../x"), "../x");
        assert_eq!(clean_path("a/../../x"), "../x");
        assert_eq!(clean_path(""), ".");
    }

    #[test]
    fn build_ignore_rules() {
        let r = IgnoreRules::parse(
            "# comment\n\n  *.log  \n/build\nnode_modules\n!keep.log\ndocs/**/*.md\n!docs/README.md\n",
        )
        .unwrap();
        assert!(r.is_excluded("a.log"));
        assert!(!r.is_excluded("keep.log"));
        assert!(!r.is_excluded("x/a.log"), "*.log is relative to the root");
        assert!(r.is_excluded("build"));
        assert!(r.is_excluded("build/out/bin"), "a parent matches");
        assert!(r.is_excluded("node_modules/a/b.js"));
        assert!(!r.is_excluded("src/node_modules_not"));
        assert!(r.is_excluded("docs/a.md"));
        assert!(r.is_excluded("docs/x/y/a.md"));
        assert!(!r.is_excluded("docs/README.md"));
        assert!(!r.is_excluded("main.rs"));
        assert!(!r.is_excluded("# comment"));
    }

    #[test]
    fn build_ignore_last_match_wins_and_exceptions() {
        let r = IgnoreRules::parse("*\n!src\nsrc/*.tmp\n").unwrap();
        assert!(r.is_excluded("Dockerfile"));
        assert!(!r.is_excluded("src"));
        assert!(!r.is_excluded("src/main.c"));
        assert!(r.is_excluded("src/x.tmp"));
        assert!(r.may_include_below("src") || !r.is_excluded("src"));
        let r = IgnoreRules::parse("dir\n!dir/keep\n").unwrap();
        assert!(r.is_excluded("dir"));
        assert!(r.is_excluded("dir/other"));
        assert!(!r.is_excluded("dir/keep"));
        assert!(r.may_include_below("dir"));
        assert!(!r.may_include_below("elsewhere"));
        let r = IgnoreRules::parse("dir\n!**/keep\n").unwrap();
        assert!(r.may_include_below("dir"), "wildcards: unsure, so yes");
        let r = IgnoreRules::parse("dir\n").unwrap();
        assert!(!r.may_include_below("dir"));
    }

    #[test]
    fn build_ignore_bad_pattern_names_the_line() {
        let e = IgnoreRules::parse("ok\n[bad\n").unwrap_err();
        assert!(e.contains("line 2"), "{e}");
    }

    #[test]
    fn build_ignore_cleans_patterns() {
        let r = IgnoreRules::parse("./a//b/\n/c/./d\n").unwrap();
        assert!(r.is_excluded("a/b"));
        assert!(r.is_excluded("c/d/e"));
        assert!(!r.is_excluded("a"));
    }
}
