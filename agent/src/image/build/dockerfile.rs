//! The Dockerfile parser (pure): text in, stages of instructions out, or an error naming the
//! line.
//!
//! What it follows (Docker's Dockerfile reference and its parser's behaviour):
//!
//! - Parser directives (`# syntax=…`, `# escape=\` or `` ` ``, `# check=…`) only at the very
//!   top, before any comment that is not a directive, blank line or instruction; names are
//!   case-insensitive; a directive given twice is an error; an unknown one is a comment (and
//!   ends the directives). `syntax` is recorded and otherwise ignored.
//! - Comments are lines whose first non-blank character is `#`; inside a continued instruction
//!   such lines, and blank lines, are skipped. A line ending in the escape character (trailing
//!   blanks allowed) continues on the next; the escape character is removed and the lines are
//!   joined as they are.
//! - Instructions are case-insensitive. Leading `--name[=value]` words are flags; each
//!   instruction takes only its own (unknown ones are errors).
//! - Argument forms: `RUN`/`CMD`/`ENTRYPOINT` are exec form when the arguments are a JSON array
//!   of strings, shell form otherwise; `SHELL` must be JSON; `COPY`/`ADD`/`VOLUME` take a JSON
//!   array or blank-separated words; `ENV`/`LABEL` take `k=v …` pairs (quotes kept here,
//!   removed by the expansion) or the legacy `KEY value` form; `ARG` takes `name[=default] …`.
//! - Values are kept as written: variable substitution (`expand.rs`) happens when the build
//!   runs, with the variables in scope there.
//!
//! Refused with a clear error: `ONBUILD` (and instructions shoal does not know), heredocs
//! (`<<EOF`), `RUN --mount/--network/--security` (BuildKit extensions).

use std::collections::BTreeSet;
use std::fmt;
use std::time::Duration;

/// A parsed Dockerfile.
#[derive(Clone, Debug, PartialEq)]
pub struct Dockerfile {
    /// The `# syntax=` directive, if any (recorded, not acted on).
    pub syntax: Option<String>,
    /// The escape character: `\` unless `# escape=`` ` `` says otherwise.
    pub escape: char,
    /// `ARG`s before the first `FROM`: usable in `FROM` lines (and re-declared in stages).
    pub global_args: Vec<Instruction>,
    /// The stages, in order.
    pub stages: Vec<Stage>,
}

/// One `FROM` and what follows it.
#[derive(Clone, Debug, PartialEq)]
pub struct Stage {
    /// The line of its `FROM`.
    pub line: usize,
    /// The base as written (`busybox`, `${BASE}`, `scratch`, or an earlier stage's name);
    /// expanded with the global args when the build runs.
    pub base: String,
    /// `AS name`, lowercased.
    pub name: Option<String>,
    /// `--platform=…`, as written.
    pub platform: Option<String>,
    /// The `FROM` line as written.
    pub text: String,
    pub instructions: Vec<Instruction>,
}

/// One instruction with where it was.
#[derive(Clone, Debug, PartialEq)]
pub struct Instruction {
    /// Its first line (1-based).
    pub line: usize,
    /// The instruction as written, continuation lines joined (for messages and history).
    pub text: String,
    pub kind: Instr,
}

/// Shell form (run by the image's shell) or exec form (argv as given).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CommandForm {
    Shell(String),
    Exec(Vec<String>),
}

/// `COPY` / `ADD` arguments (sources and destination unexpanded).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CopyArgs {
    pub sources: Vec<String>,
    pub dest: String,
    /// `--from=stage|image` (COPY only).
    pub from: Option<String>,
    pub chown: Option<String>,
    pub chmod: Option<String>,
}

/// `ARG name[=default]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ArgDecl {
    pub name: String,
    /// As written (quotes and variables still in), expanded when the build runs.
    pub default: Option<String>,
}

/// `HEALTHCHECK`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Healthcheck {
    /// `HEALTHCHECK NONE`: disable the base image's check.
    None,
    Check {
        /// `CMD` in exec form → `["CMD", …]`, shell form → `["CMD-SHELL", "…"]`.
        test: Vec<String>,
        interval: Option<Duration>,
        timeout: Option<Duration>,
        start_period: Option<Duration>,
        start_interval: Option<Duration>,
        retries: Option<i64>,
    },
}

/// The instructions shoal builds with.
#[derive(Clone, Debug, PartialEq)]
pub enum Instr {
    Run(CommandForm),
    Cmd(CommandForm),
    Entrypoint(CommandForm),
    Shell(Vec<String>),
    Copy(CopyArgs),
    Add(CopyArgs),
    Env(Vec<(String, String)>),
    Label(Vec<(String, String)>),
    Arg(Vec<ArgDecl>),
    Workdir(String),
    User(String),
    Expose(Vec<String>),
    Volume(Vec<String>),
    StopSignal(String),
    Healthcheck(Healthcheck),
    /// Deprecated; sets the image's author.
    Maintainer(String),
}

impl Instr {
    /// The instruction's keyword, upper case.
    pub fn keyword(&self) -> &'static str {
        match self {
            Instr::Run(_) => "RUN",
            Instr::Cmd(_) => "CMD",
            Instr::Entrypoint(_) => "ENTRYPOINT",
            Instr::Shell(_) => "SHELL",
            Instr::Copy(_) => "COPY",
            Instr::Add(_) => "ADD",
            Instr::Env(_) => "ENV",
            Instr::Label(_) => "LABEL",
            Instr::Arg(_) => "ARG",
            Instr::Workdir(_) => "WORKDIR",
            Instr::User(_) => "USER",
            Instr::Expose(_) => "EXPOSE",
            Instr::Volume(_) => "VOLUME",
            Instr::StopSignal(_) => "STOPSIGNAL",
            Instr::Healthcheck(_) => "HEALTHCHECK",
            Instr::Maintainer(_) => "MAINTAINER",
        }
    }
}

/// A Dockerfile that cannot be parsed: the line (1-based) and what is wrong there.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParseError {
    pub line: usize,
    pub message: String,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Dockerfile line {}: {}", self.line, self.message)
    }
}

impl std::error::Error for ParseError {}

fn err<T>(line: usize, message: impl Into<String>) -> Result<T, ParseError> {
    Err(ParseError {
        line,
        message: message.into(),
    })
}

/// Parses a whole Dockerfile.
pub fn parse(text: &str) -> Result<Dockerfile, ParseError> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let lines: Vec<&str> = text
        .split('\n')
        .map(|l| l.strip_suffix('\r').unwrap_or(l))
        .collect();
    let mut syntax = None;
    let mut escape = None;
    let mut check = false;
    let mut first = 0;
    // Parser directives: only at the very top.
    while let Some(line) = lines.get(first) {
        let Some((name, value)) = directive(line) else {
            break;
        };
        let n = first + 1;
        match name.as_str() {
            "syntax" => {
                if syntax.replace(value).is_some() {
                    return err(n, "only one syntax parser directive can be used");
                }
            }
            "escape" => {
                let c = match value.as_str() {
                    "\\" => '\\',
                    "`" => '`',
                    other => {
                        return err(
                            n,
                            format!("invalid escape token {other:?}: it must be ` or \\"),
                        )
                    }
                };
                if escape.replace(c).is_some() {
                    return err(n, "only one escape parser directive can be used");
                }
            }
            "check" => {
                if check {
                    return err(n, "only one check parser directive can be used");
                }
                check = true;
            }
            // An unknown directive is a comment, and ends the directives.
            _ => break,
        }
        first += 1;
    }
    let escape = escape.unwrap_or('\\');

    let mut global_args = Vec::new();
    let mut stages: Vec<Stage> = Vec::new();
    let mut names = BTreeSet::new();
    let mut i = first;
    while i < lines.len() {
        let line = lines[i];
        i += 1;
        if is_comment(line) || line.trim().is_empty() {
            continue;
        }
        let start = i; // 1-based line number of this instruction
        let (mut joined, mut ended) = trim_continuation(line.trim_start(), escape);
        while !ended && i < lines.len() {
            let next = lines[i];
            i += 1;
            if is_comment(next) || next.trim().is_empty() {
                continue;
            }
            let (part, end) = trim_continuation(next, escape);
            joined.push_str(&part);
            ended = end;
        }
        let joined = joined.trim().to_string();
        if joined.is_empty() {
            continue;
        }
        let (keyword, rest) = split_keyword(&joined);
        let lower = keyword.to_ascii_lowercase();
        if lower == "from" {
            let stage = parse_from(start, &joined, rest)?;
            if let Some(name) = &stage.name {
                if !names.insert(name.clone()) {
                    return err(start, format!("duplicate stage name {name:?}"));
                }
            }
            stages.push(stage);
            continue;
        }
        let kind = parse_instruction(start, &lower, keyword, rest, escape)?;
        let instruction = Instruction {
            line: start,
            text: joined.clone(),
            kind,
        };
        match stages.last_mut() {
            Some(stage) => stage.instructions.push(instruction),
            None if matches!(instruction.kind, Instr::Arg(_)) => global_args.push(instruction),
            None => {
                return err(
                    start,
                    format!(
                        "{} before the first FROM: a Dockerfile starts with FROM (only ARG may \
                         come before it)",
                        keyword.to_ascii_uppercase()
                    ),
                )
            }
        }
    }
    if stages.is_empty() {
        return err(
            lines.len().max(1),
            "the Dockerfile has no FROM instruction: it needs at least one build stage",
        );
    }
    Ok(Dockerfile {
        syntax,
        escape,
        global_args,
        stages,
    })
}

/// `# name=value` at the top of the file: (lowercased name, value).
fn directive(line: &str) -> Option<(String, String)> {
    let rest = line.trim_start().strip_prefix('#')?;
    let (name, value) = rest.split_once('=')?;
    let name = name.trim();
    if name.is_empty()
        || !name.starts_with(|c: char| c.is_ascii_alphabetic())
        || !name.chars().all(|c| c.is_ascii_alphanumeric())
    {
        return None;
    }
    let value = value.trim();
    if value.is_empty() {
        return None;
    }
    Some((name.to_ascii_lowercase(), value.to_string()))
}

fn is_comment(line: &str) -> bool {
    line.trim_start().starts_with('#')
}

/// Removes a trailing escape character (and the blanks after it): (line, ended).
fn trim_continuation(line: &str, escape: char) -> (String, bool) {
    let trimmed = line.trim_end_matches([' ', '\t']);
    match trimmed.strip_suffix(escape) {
        Some(head) => (head.to_string(), false),
        None => (line.to_string(), true),
    }
}

/// The first word, and the rest with its leading blanks removed.
fn split_keyword(line: &str) -> (&str, &str) {
    match line.find(char::is_whitespace) {
        Some(at) => (&line[..at], line[at..].trim_start()),
        None => (line, ""),
    }
}

/// Leading `--flag[=value]` words (quotes and backslashes handled as Docker does); returns
/// the flags and the rest of the line.
fn extract_flags(line: &str) -> (Vec<String>, &str) {
    let chars: Vec<(usize, char)> = line.char_indices().collect();
    let mut flags = Vec::new();
    let mut i = 0;
    loop {
        while i < chars.len() && chars[i].1.is_whitespace() {
            i += 1;
        }
        if i >= chars.len() {
            return (flags, "");
        }
        let starts_flag = chars[i].1 == '-' && chars.get(i + 1).is_some_and(|c| c.1 == '-');
        if !starts_flag {
            return (flags, &line[chars[i].0..]);
        }
        let mut word = String::new();
        let mut quote: Option<char> = None;
        while i < chars.len() {
            let c = chars[i].1;
            match quote {
                None if c.is_whitespace() => break,
                None if c == '\'' || c == '"' => quote = Some(c),
                Some(q) if c == q => quote = None,
                _ if c == '\\' => {
                    i += 1;
                    if let Some(&(_, n)) = chars.get(i) {
                        word.push(n);
                    }
                }
                _ => word.push(c),
            }
            i += 1;
        }
        if word == "--" {
            let rest = chars.get(i).map_or("", |&(at, _)| line[at..].trim_start());
            return (flags, rest);
        }
        flags.push(word);
    }
}

/// Flags parsed against what an instruction allows: (name, value) with value None for a bare
/// `--name`.
fn parse_flags(
    line: usize,
    keyword: &str,
    flags: Vec<String>,
    allowed: &[&str],
) -> Result<Vec<(String, Option<String>)>, ParseError> {
    let mut out: Vec<(String, Option<String>)> = Vec::new();
    for f in flags {
        let body = &f[2..];
        let (name, value) = match body.split_once('=') {
            Some((n, v)) => (n.to_string(), Some(v.to_string())),
            None => (body.to_string(), None),
        };
        if name.is_empty() {
            return err(line, format!("{keyword}: empty flag name in {f:?}"));
        }
        if !allowed.contains(&name.as_str()) {
            let hint = match (keyword, name.as_str()) {
                ("RUN", "mount" | "network" | "security") => {
                    format!(
                        "RUN --{name} is a BuildKit extension shoal does not support; remove it"
                    )
                }
                _ if allowed.is_empty() => format!("{keyword} takes no flags, got --{name}"),
                _ => format!(
                    "unknown flag --{name} for {keyword} (it takes {})",
                    allowed
                        .iter()
                        .map(|a| format!("--{a}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            };
            return err(line, hint);
        }
        if out.iter().any(|(n, _)| *n == name) {
            return err(line, format!("{keyword}: duplicate flag --{name}"));
        }
        out.push((name, value));
    }
    Ok(out)
}

fn flag_value(
    line: usize,
    keyword: &str,
    flags: &[(String, Option<String>)],
    name: &str,
) -> Result<Option<String>, ParseError> {
    match flags.iter().find(|(n, _)| n == name) {
        None => Ok(None),
        Some((_, Some(v))) if !v.is_empty() => Ok(Some(v.clone())),
        Some(_) => err(
            line,
            format!("{keyword}: --{name} needs a value (--{name}=…)"),
        ),
    }
}

fn parse_from(line: usize, text: &str, rest: &str) -> Result<Stage, ParseError> {
    let (flags, rest) = extract_flags(rest);
    let flags = parse_flags(line, "FROM", flags, &["platform"])?;
    let platform = flag_value(line, "FROM", &flags, "platform")?;
    let words: Vec<&str> = rest.split_whitespace().collect();
    let (base, name) = match words.as_slice() {
        [base] => (*base, None),
        [base, as_kw, name] if as_kw.eq_ignore_ascii_case("as") => {
            (*base, Some(name.to_ascii_lowercase()))
        }
        [] => return err(line, "FROM requires an image (or scratch)"),
        _ => {
            return err(
                line,
                "FROM requires either one or three arguments: FROM image [AS name]",
            )
        }
    };
    if let Some(name) = &name {
        let valid = name.starts_with(|c: char| c.is_ascii_lowercase())
            && name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "-_.".contains(c));
        if !valid {
            return err(
                line,
                format!(
                    "invalid stage name {name:?}: it must start with a letter and contain only \
                     letters, digits, '-', '_' and '.'"
                ),
            );
        }
        if name.parse::<usize>().is_ok() || name == "scratch" || name == "context" {
            return err(line, format!("stage name {name:?} is reserved"));
        }
    }
    Ok(Stage {
        line,
        base: base.to_string(),
        name,
        platform,
        text: text.to_string(),
        instructions: Vec::new(),
    })
}

fn parse_instruction(
    line: usize,
    lower: &str,
    keyword: &str,
    rest: &str,
    escape: char,
) -> Result<Instr, ParseError> {
    let upper = keyword.to_ascii_uppercase();
    let (flags, rest) = extract_flags(rest);
    let allowed: &[&str] = match lower {
        "copy" => &["from", "chown", "chmod", "link"],
        "add" => &["chown", "chmod", "link"],
        "healthcheck" => &[
            "interval",
            "timeout",
            "start-period",
            "start-interval",
            "retries",
        ],
        _ => &[],
    };
    let flags = parse_flags(line, &upper, flags, allowed)?;
    let rest = rest.trim();
    let need_args = |what: &str| -> Result<(), ParseError> {
        if rest.is_empty() {
            err(line, format!("{upper} requires {what}"))
        } else {
            Ok(())
        }
    };
    if rest.starts_with("<<") && matches!(lower, "run" | "copy" | "add") {
        return err(
            line,
            format!("{upper} with a heredoc (<<) is not supported by shoal build: put the text in a file of the build context"),
        );
    }
    Ok(match lower {
        "run" => {
            need_args("a command")?;
            Instr::Run(command_form(rest))
        }
        "cmd" => {
            need_args("a command")?;
            Instr::Cmd(command_form(rest))
        }
        "entrypoint" => {
            need_args("a command")?;
            Instr::Entrypoint(command_form(rest))
        }
        "shell" => match json_array(rest) {
            Some(v) if !v.is_empty() => Instr::Shell(v),
            _ => return err(
                line,
                "SHELL requires the arguments to be in JSON form, e.g. SHELL [\"/bin/sh\", \"-c\"]",
            ),
        },
        "copy" | "add" => {
            let mut words = json_array(rest)
                .unwrap_or_else(|| rest.split_whitespace().map(str::to_string).collect());
            if words.len() < 2 {
                return err(
                    line,
                    format!(
                        "{upper} requires at least two arguments (sources and a destination), \
                         got {}",
                        words.len()
                    ),
                );
            }
            let dest = words.pop().unwrap_or_default();
            let args = CopyArgs {
                sources: words,
                dest,
                from: flag_value(line, &upper, &flags, "from")?,
                chown: flag_value(line, &upper, &flags, "chown")?,
                chmod: flag_value(line, &upper, &flags, "chmod")?,
            };
            if lower == "copy" {
                Instr::Copy(args)
            } else {
                Instr::Add(args)
            }
        }
        "env" => Instr::Env(name_values(line, "ENV", rest, escape)?),
        "label" => Instr::Label(name_values(line, "LABEL", rest, escape)?),
        "arg" => {
            need_args("a name: ARG name[=default]")?;
            let mut decls = Vec::new();
            for word in split_words(rest, escape) {
                let (name, default) = match word.split_once('=') {
                    Some((n, d)) => (n.to_string(), Some(d.to_string())),
                    None => (word.clone(), None),
                };
                if name.is_empty()
                    || !name.chars().all(|c| c.is_alphanumeric() || c == '_')
                    || name.starts_with(|c: char| c.is_ascii_digit())
                {
                    return err(
                        line,
                        format!("ARG: invalid name {name:?}: use letters, digits and '_'"),
                    );
                }
                decls.push(ArgDecl { name, default });
            }
            Instr::Arg(decls)
        }
        "workdir" => {
            need_args("a path")?;
            Instr::Workdir(rest.to_string())
        }
        "user" => {
            need_args("a user: USER name|uid[:group|gid]")?;
            Instr::User(rest.to_string())
        }
        "expose" => {
            need_args("at least one port")?;
            Instr::Expose(rest.split_whitespace().map(str::to_string).collect())
        }
        "volume" => {
            need_args("at least one path")?;
            let paths = json_array(rest)
                .unwrap_or_else(|| rest.split_whitespace().map(str::to_string).collect());
            if paths.iter().any(|p| p.trim().is_empty()) {
                return err(line, "VOLUME specified can not be an empty string");
            }
            Instr::Volume(paths)
        }
        "stopsignal" => {
            need_args("a signal")?;
            Instr::StopSignal(rest.to_string())
        }
        "maintainer" => {
            need_args("a name")?;
            Instr::Maintainer(rest.to_string())
        }
        "healthcheck" => Instr::Healthcheck(healthcheck(line, rest, &flags)?),
        "onbuild" => {
            return err(
                line,
                "ONBUILD is not supported by shoal build: put the instructions in the \
                 Dockerfiles that build on this image",
            )
        }
        _ => {
            return err(
                line,
                format!(
                    "unknown instruction: {upper} (expected FROM, RUN, CMD, ENTRYPOINT, SHELL, \
                     COPY, ADD, ENV, ARG, LABEL, WORKDIR, USER, EXPOSE, VOLUME, STOPSIGNAL, \
                     HEALTHCHECK or MAINTAINER)"
                ),
            )
        }
    })
}

/// Exec form when `rest` is a JSON array of strings, shell form otherwise (as Docker does).
fn command_form(rest: &str) -> CommandForm {
    match json_array(rest) {
        Some(v) => CommandForm::Exec(v),
        None => CommandForm::Shell(rest.to_string()),
    }
}

fn json_array(rest: &str) -> Option<Vec<String>> {
    if !rest.trim_start().starts_with('[') {
        return None;
    }
    serde_json::from_str::<Vec<String>>(rest.trim()).ok()
}

/// `ENV`/`LABEL`: `k=v …` (quotes kept for the expansion to remove) or legacy `KEY value`.
fn name_values(
    line: usize,
    keyword: &str,
    rest: &str,
    escape: char,
) -> Result<Vec<(String, String)>, ParseError> {
    let words = split_words(rest, escape);
    let Some(first) = words.first() else {
        return err(line, format!("{keyword} names can not be blank"));
    };
    if !first.contains('=') {
        let (key, value) = match rest.find(char::is_whitespace) {
            Some(at) => (&rest[..at], rest[at..].trim_start()),
            None => {
                return err(
                    line,
                    format!(
                        "{keyword} must have two arguments: {keyword} name=value (or name value)"
                    ),
                )
            }
        };
        return Ok(vec![(key.to_string(), value.to_string())]);
    }
    let mut out = Vec::new();
    for word in words {
        let Some((k, v)) = word.split_once('=') else {
            return err(
                line,
                format!("Syntax error - can't find = in {word:?}. Must be of the form: name=value"),
            );
        };
        if k.is_empty() {
            return err(line, format!("{keyword} names can not be blank"));
        }
        out.push((k.to_string(), v.to_string()));
    }
    Ok(out)
}

/// Splits on blanks outside quotes; quotes and escapes are kept in the words (the expansion
/// removes them). An escape character at the very end is dropped.
fn split_words(rest: &str, escape: char) -> Vec<String> {
    let chars: Vec<char> = rest.chars().collect();
    let mut words = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut quote: Option<char> = None;
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        match quote {
            None => {
                if c.is_whitespace() {
                    if in_word {
                        words.push(std::mem::take(&mut word));
                        in_word = false;
                    }
                } else {
                    in_word = true;
                    if c == '\'' || c == '"' {
                        quote = Some(c);
                        word.push(c);
                    } else if c == escape {
                        if i + 1 < chars.len() {
                            word.push(c);
                            word.push(chars[i + 1]);
                            i += 1;
                        }
                    } else {
                        word.push(c);
                    }
                }
            }
            Some(q) => {
                if c == q {
                    quote = None;
                    word.push(c);
                } else if c == escape && q != '\'' {
                    if i + 1 < chars.len() {
                        word.push(c);
                        word.push(chars[i + 1]);
                        i += 1;
                    } else {
                        quote = None;
                    }
                } else {
                    word.push(c);
                }
            }
        }
        i += 1;
    }
    if in_word {
        words.push(word);
    }
    words
}

fn healthcheck(
    line: usize,
    rest: &str,
    flags: &[(String, Option<String>)],
) -> Result<Healthcheck, ParseError> {
    let (kind, cmd) = split_keyword(rest);
    if kind.eq_ignore_ascii_case("none") {
        if !cmd.is_empty() {
            return err(line, "HEALTHCHECK NONE takes no arguments");
        }
        if !flags.is_empty() {
            return err(line, "HEALTHCHECK NONE takes no options");
        }
        return Ok(Healthcheck::None);
    }
    if !kind.eq_ignore_ascii_case("cmd") {
        return err(
            line,
            format!("unknown type {kind:?} in HEALTHCHECK (use CMD or NONE)"),
        );
    }
    if cmd.trim().is_empty() {
        return err(line, "HEALTHCHECK CMD requires a command");
    }
    let test = match command_form(cmd) {
        CommandForm::Exec(v) => std::iter::once("CMD".to_string()).chain(v).collect(),
        CommandForm::Shell(s) => vec!["CMD-SHELL".to_string(), s],
    };
    let duration = |name: &str| -> Result<Option<Duration>, ParseError> {
        let Some(text) = flag_value(line, "HEALTHCHECK", flags, name)? else {
            return Ok(None);
        };
        let d = parse_go_duration(&text).ok_or_else(|| ParseError {
            line,
            message: format!(
                "HEALTHCHECK --{name}={text}: not a duration (use e.g. 30s, 1m30s, 500ms)"
            ),
        })?;
        if !d.is_zero() && d < Duration::from_millis(1) {
            return err(
                line,
                format!("HEALTHCHECK --{name}={text}: cannot be less than 1ms"),
            );
        }
        Ok(Some(d))
    };
    let retries = match flag_value(line, "HEALTHCHECK", flags, "retries")? {
        None => None,
        Some(t) => match t.parse::<i64>() {
            Ok(n) if n >= 0 => Some(n),
            _ => {
                return err(
                    line,
                    format!("HEALTHCHECK --retries={t}: must be a whole number, 0 or more"),
                )
            }
        },
    };
    Ok(Healthcheck::Check {
        test,
        interval: duration("interval")?,
        timeout: duration("timeout")?,
        start_period: duration("start-period")?,
        start_interval: duration("start-interval")?,
        retries,
    })
}

/// Go's duration syntax (`300ms`, `1.5h`, `2h45m`, `0`): what Docker's flags take.
pub fn parse_go_duration(text: &str) -> Option<Duration> {
    let s = text.trim();
    if s == "0" {
        return Some(Duration::ZERO);
    }
    if s.is_empty() {
        return None;
    }
    let mut total = 0f64;
    let mut rest = s;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if num_len == 0 {
            return None;
        }
        let value: f64 = rest[..num_len].parse().ok()?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "ns" => 1e-9,
            "us" | "µs" | "μs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return None,
        };
        rest = &rest[unit_len..];
        total += value * scale;
    }
    if !total.is_finite() || total > 1e12 {
        return None;
    }
    Some(Duration::from_secs_f64(total))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(text: &str) -> Instr {
        let df = parse(&format!("FROM busybox\n{text}\n")).expect("parse");
        df.stages[0].instructions[0].kind.clone()
    }

    fn fails(text: &str) -> ParseError {
        parse(text).expect_err("should fail")
    }

    #[test]
    fn build_parse_minimal_and_stage_names() {
        let df = parse("FROM busybox\n").unwrap();
        assert_eq!(df.stages.len(), 1);
        assert_eq!(df.stages[0].base, "busybox");
        assert_eq!(df.stages[0].name, None);
        assert_eq!(df.escape, '\\');
        let df = parse("from busybox AS Build\nFROM build as final\n").unwrap();
        assert_eq!(df.stages[0].name.as_deref(), Some("build"));
        assert_eq!(df.stages[1].base, "build");
        assert_eq!(df.stages[1].name.as_deref(), Some("final"));
        assert_eq!(df.stages[1].line, 2);
    }

    #[test]
    fn build_parse_from_platform_and_errors() {
        let df = parse("FROM --platform=linux/amd64 busybox AS b\n").unwrap();
        assert_eq!(df.stages[0].platform.as_deref(), Some("linux/amd64"));
        assert!(fails("FROM a b\n").message.contains("one or three"));
        assert!(fails("FROM\n").message.contains("requires an image"));
        assert!(fails("FROM a AS 1x\n")
            .message
            .contains("invalid stage name"));
        assert!(fails("FROM a AS b\nFROM c AS B\n")
            .message
            .contains("duplicate stage name"));
        let e = fails("FROM --plat=x a\n");
        assert_eq!(e.line, 1);
        assert!(e.message.contains("unknown flag --plat"), "{e}");
        assert!(fails("FROM a to b\n").message.contains("one or three"));
    }

    #[test]
    fn build_parse_requires_from_first() {
        let e = fails("# comment\nRUN echo\nFROM x\n");
        assert_eq!(e.line, 2);
        assert!(e.message.contains("before the first FROM"), "{e}");
        let e = fails("ARG X=1\n");
        assert!(e.message.contains("no FROM"), "{e}");
        let e = fails("");
        assert!(e.message.contains("no FROM"), "{e}");
    }

    #[test]
    fn build_parse_global_args() {
        let df = parse("ARG BASE=busybox\nARG V\nFROM ${BASE}\nARG V\n").unwrap();
        assert_eq!(df.global_args.len(), 2);
        assert_eq!(
            df.global_args[0].kind,
            Instr::Arg(vec![ArgDecl {
                name: "BASE".into(),
                default: Some("busybox".into())
            }])
        );
        assert_eq!(df.stages[0].base, "${BASE}");
        assert_eq!(df.stages[0].instructions.len(), 1);
    }

    #[test]
    fn build_parse_directives() {
        let df =
            parse("# syntax=docker/dockerfile:1\n# escape=`\nFROM a\nRUN echo `\n  hi\n").unwrap();
        assert_eq!(df.syntax.as_deref(), Some("docker/dockerfile:1"));
        assert_eq!(df.escape, '`');
        assert_eq!(
            df.stages[0].instructions[0].kind,
            Instr::Run(CommandForm::Shell("echo   hi".into()))
        );
        // Case-insensitive names, blanks around.
        let df = parse("#  ESCAPE = `\nFROM a\n").unwrap();
        assert_eq!(df.escape, '`');
        // After a comment, a blank line or an instruction, a directive is only a comment.
        for text in [
            "# hello\n# escape=`\nFROM a\n",
            "\n# escape=`\nFROM a\n",
            "FROM a\n# escape=`\n",
            "# unknown=1\n# escape=`\nFROM a\n",
        ] {
            assert_eq!(parse(text).unwrap().escape, '\\', "{text:?}");
        }
        assert!(fails("# escape=`\n# escape=\\\nFROM a\n")
            .message
            .contains("only one escape"));
        assert!(fails("# escape=x\nFROM a\n")
            .message
            .contains("invalid escape"));
        assert!(fails("# syntax=a\n# syntax=b\nFROM a\n")
            .message
            .contains("only one syntax"));
        let df = parse("# check=skip=all\nFROM a\n").unwrap();
        assert_eq!(df.stages.len(), 1);
    }

    #[test]
    fn build_parse_continuations_and_comments() {
        let df =
            parse("FROM a\nRUN echo one \\\n  two \\   \n# a comment inside\n\n   three\nRUN x\n")
                .unwrap();
        let ins = &df.stages[0].instructions;
        assert_eq!(
            ins[0].kind,
            Instr::Run(CommandForm::Shell("echo one   two    three".into()))
        );
        assert_eq!(ins[0].line, 2);
        assert_eq!(ins[1].line, 7);
        // A continuation at the end of the file ends the instruction.
        let df = parse("FROM a\nRUN echo \\").unwrap();
        assert_eq!(
            df.stages[0].instructions[0].kind,
            Instr::Run(CommandForm::Shell("echo".into()))
        );
        // Indented comments and CRLF line ends.
        let df = parse("FROM a\r\n   # indented\r\nCMD [\"x\"]\r\n").unwrap();
        assert_eq!(
            df.stages[0].instructions[0].kind,
            Instr::Cmd(CommandForm::Exec(vec!["x".into()]))
        );
        // A BOM is ignored.
        assert!(parse("\u{feff}FROM a\n").is_ok());
        // `#` inside an instruction is not a comment.
        assert_eq!(
            one("RUN echo a # b"),
            Instr::Run(CommandForm::Shell("echo a # b".into()))
        );
    }

    #[test]
    fn build_parse_run_cmd_entrypoint_forms() {
        assert_eq!(
            one("RUN [\"/bin/echo\", \"a b\"]"),
            Instr::Run(CommandForm::Exec(vec!["/bin/echo".into(), "a b".into()]))
        );
        assert_eq!(
            one("run echo hi"),
            Instr::Run(CommandForm::Shell("echo hi".into()))
        );
        // Not valid JSON: shell form, as Docker does.
        assert_eq!(
            one("RUN [echo, hi]"),
            Instr::Run(CommandForm::Shell("[echo, hi]".into()))
        );
        assert_eq!(
            one("CMD [\"a\", 1]"),
            Instr::Cmd(CommandForm::Shell("[\"a\", 1]".into()))
        );
        assert_eq!(one("CMD []"), Instr::Cmd(CommandForm::Exec(vec![])));
        assert_eq!(
            one("ENTRYPOINT [\"/x\"]"),
            Instr::Entrypoint(CommandForm::Exec(vec!["/x".into()]))
        );
        assert!(fails("FROM a\nRUN\n").message.contains("RUN requires"));
        assert!(fails("FROM a\nCMD\n").message.contains("CMD requires"));
        let e = fails("FROM a\nRUN --mount=type=cache,target=/x echo\n");
        assert!(e.message.contains("BuildKit extension"), "{e}");
        let e = fails("FROM a\nRUN <<EOF\necho\nEOF\n");
        assert!(e.message.contains("heredoc"), "{e}");
    }

    #[test]
    fn build_parse_shell() {
        assert_eq!(
            one("SHELL [\"/bin/bash\", \"-c\"]"),
            Instr::Shell(vec!["/bin/bash".into(), "-c".into()])
        );
        assert!(fails("FROM a\nSHELL /bin/bash -c\n")
            .message
            .contains("JSON form"));
        assert!(fails("FROM a\nSHELL []\n").message.contains("JSON form"));
    }

    #[test]
    fn build_parse_copy_and_add() {
        assert_eq!(
            one("COPY a b /dst/"),
            Instr::Copy(CopyArgs {
                sources: vec!["a".into(), "b".into()],
                dest: "/dst/".into(),
                ..Default::default()
            })
        );
        assert_eq!(
            one("COPY --from=build --chown=app:app --chmod=0755 [\"a b\", \"/c d\"]"),
            Instr::Copy(CopyArgs {
                sources: vec!["a b".into()],
                dest: "/c d".into(),
                from: Some("build".into()),
                chown: Some("app:app".into()),
                chmod: Some("0755".into()),
            })
        );
        assert_eq!(
            one("ADD --chown=1:2 x.tar.gz /opt"),
            Instr::Add(CopyArgs {
                sources: vec!["x.tar.gz".into()],
                dest: "/opt".into(),
                chown: Some("1:2".into()),
                ..Default::default()
            })
        );
        // --link is accepted (and has no effect here).
        assert!(matches!(one("COPY --link a /b"), Instr::Copy(_)));
        let e = fails("FROM a\nCOPY onlyone\n");
        assert_eq!(e.line, 2);
        assert!(e.message.contains("at least two"), "{e}");
        assert!(fails("FROM a\nADD --from=x a b\n")
            .message
            .contains("unknown flag --from"));
        assert!(fails("FROM a\nCOPY --from a b\n")
            .message
            .contains("needs a value"));
        assert!(fails("FROM a\nCOPY --chown=1 --chown=2 a b\n")
            .message
            .contains("duplicate flag"));
        // Flag values with quotes.
        assert_eq!(
            one("COPY --chown=\"a b\" x y"),
            Instr::Copy(CopyArgs {
                sources: vec!["x".into()],
                dest: "y".into(),
                chown: Some("a b".into()),
                ..Default::default()
            })
        );
    }

    #[test]
    fn build_parse_env_and_label_forms() {
        assert_eq!(
            one("ENV A=1 B=\"two words\" C=three\\ words"),
            Instr::Env(vec![
                ("A".into(), "1".into()),
                ("B".into(), "\"two words\"".into()),
                ("C".into(), "three\\ words".into()),
            ])
        );
        assert_eq!(
            one("ENV LEGACY value with  spaces"),
            Instr::Env(vec![("LEGACY".into(), "value with  spaces".into())])
        );
        assert_eq!(
            one("LABEL org.a=\"x y\" b='$z'"),
            Instr::Label(vec![
                ("org.a".into(), "\"x y\"".into()),
                ("b".into(), "'$z'".into()),
            ])
        );
        assert_eq!(one("ENV A="), Instr::Env(vec![("A".into(), "".into())]));
        assert!(fails("FROM a\nENV A=1 B\n")
            .message
            .contains("can't find ="));
        assert!(fails("FROM a\nENV ONLY\n")
            .message
            .contains("two arguments"));
        assert!(fails("FROM a\nENV\n").message.contains("can not be blank"));
        assert!(fails("FROM a\nLABEL =x\n")
            .message
            .contains("can not be blank"));
    }

    #[test]
    fn build_parse_arg() {
        assert_eq!(
            one("ARG A B=2 C=\"x y\""),
            Instr::Arg(vec![
                ArgDecl {
                    name: "A".into(),
                    default: None
                },
                ArgDecl {
                    name: "B".into(),
                    default: Some("2".into())
                },
                ArgDecl {
                    name: "C".into(),
                    default: Some("\"x y\"".into())
                },
            ])
        );
        assert!(fails("FROM a\nARG\n").message.contains("ARG requires"));
        assert!(fails("FROM a\nARG a-b\n").message.contains("invalid name"));
    }

    #[test]
    fn build_parse_simple_string_instructions() {
        assert_eq!(one("WORKDIR /app"), Instr::Workdir("/app".into()));
        assert_eq!(one("USER app:app"), Instr::User("app:app".into()));
        assert_eq!(
            one("STOPSIGNAL SIGQUIT"),
            Instr::StopSignal("SIGQUIT".into())
        );
        assert_eq!(
            one("MAINTAINER Jane <j@x>"),
            Instr::Maintainer("Jane <j@x>".into())
        );
        assert_eq!(
            one("EXPOSE 80 53/udp"),
            Instr::Expose(vec!["80".into(), "53/udp".into()])
        );
        assert_eq!(
            one("VOLUME /data /logs"),
            Instr::Volume(vec!["/data".into(), "/logs".into()])
        );
        assert_eq!(one("VOLUME [\"/a b\"]"), Instr::Volume(vec!["/a b".into()]));
        assert!(fails("FROM a\nWORKDIR\n").message.contains("requires"));
        assert!(fails("FROM a\nUSER\n").message.contains("requires"));
        assert!(fails("FROM a\nEXPOSE\n").message.contains("requires"));
        assert!(fails("FROM a\nVOLUME [\"\"]\n")
            .message
            .contains("empty string"));
        assert!(fails("FROM a\nWORKDIR --x /a\n")
            .message
            .contains("takes no flags"));
    }

    #[test]
    fn build_parse_healthcheck() {
        assert_eq!(
            one("HEALTHCHECK NONE"),
            Instr::Healthcheck(Healthcheck::None)
        );
        assert_eq!(
            one("HEALTHCHECK --interval=5s --timeout=1m30s --start-period=0 --start-interval=500ms --retries=4 CMD wget -q localhost || exit 1"),
            Instr::Healthcheck(Healthcheck::Check {
                test: vec!["CMD-SHELL".into(), "wget -q localhost || exit 1".into()],
                interval: Some(Duration::from_secs(5)),
                timeout: Some(Duration::from_secs(90)),
                start_period: Some(Duration::ZERO),
                start_interval: Some(Duration::from_millis(500)),
                retries: Some(4),
            })
        );
        assert_eq!(
            one("HEALTHCHECK CMD [\"/bin/check\", \"-v\"]"),
            Instr::Healthcheck(Healthcheck::Check {
                test: vec!["CMD".into(), "/bin/check".into(), "-v".into()],
                interval: None,
                timeout: None,
                start_period: None,
                start_interval: None,
                retries: None,
            })
        );
        assert!(fails("FROM a\nHEALTHCHECK --interval=5 CMD x\n")
            .message
            .contains("not a duration"));
        assert!(fails("FROM a\nHEALTHCHECK --interval=1ns CMD x\n")
            .message
            .contains("less than 1ms"));
        assert!(fails("FROM a\nHEALTHCHECK --retries=-1 CMD x\n")
            .message
            .contains("--retries"));
        assert!(fails("FROM a\nHEALTHCHECK NONE x\n")
            .message
            .contains("no arguments"));
        assert!(fails("FROM a\nHEALTHCHECK --retries=1 NONE\n")
            .message
            .contains("no options"));
        assert!(fails("FROM a\nHEALTHCHECK RUN x\n")
            .message
            .contains("unknown type"));
        assert!(fails("FROM a\nHEALTHCHECK CMD\n")
            .message
            .contains("requires a command"));
        assert!(fails("FROM a\nHEALTHCHECK --bogus=1 CMD x\n")
            .message
            .contains("unknown flag --bogus"));
    }

    #[test]
    fn build_parse_unknown_and_refused_instructions_name_the_line() {
        let e = fails("FROM a\n\nRUN x\nFOO bar\n");
        assert_eq!(e.line, 4);
        assert!(e.message.contains("unknown instruction: FOO"), "{e}");
        assert!(e.to_string().starts_with("Dockerfile line 4: "), "{e}");
        let e = fails("FROM a\nONBUILD RUN x\n");
        assert_eq!(e.line, 2);
        assert!(e.message.contains("ONBUILD is not supported"), "{e}");
        // A multi-line instruction is reported at its first line.
        let e = fails("FROM a\nCOPY \\\n  onlyone\n");
        assert_eq!(e.line, 2);
    }

    #[test]
    fn build_parse_keeps_text_for_history() {
        let df = parse("FROM a\nRUN   echo \\\n  hi\n").unwrap();
        assert_eq!(df.stages[0].instructions[0].text, "RUN   echo   hi");
        assert_eq!(df.stages[0].text, "FROM a");
    }

    #[test]
    fn build_parse_multi_stage() {
        let df = parse(
            "ARG V=1\nFROM busybox AS build\nRUN make\nFROM scratch\nCOPY --from=build /out /\nCMD [\"/app\"]\n",
        )
        .unwrap();
        assert_eq!(df.stages.len(), 2);
        assert_eq!(df.stages[0].instructions.len(), 1);
        assert_eq!(df.stages[1].base, "scratch");
        assert_eq!(df.stages[1].instructions.len(), 2);
        assert_eq!(df.stages[1].instructions[0].line, 5);
    }

    #[test]
    fn build_parse_flags_extraction() {
        assert_eq!(
            extract_flags("--a=1 --b  rest of it"),
            (vec!["--a=1".to_string(), "--b".to_string()], "rest of it")
        );
        assert_eq!(extract_flags("-x y"), (vec![], "-x y"));
        assert_eq!(
            extract_flags("--a -- --not-a-flag"),
            (vec!["--a".to_string()], "--not-a-flag")
        );
        assert_eq!(extract_flags("--only"), (vec!["--only".to_string()], ""));
        assert_eq!(
            extract_flags("--q='a b' x"),
            (vec!["--q=a b".to_string()], "x")
        );
    }

    #[test]
    fn build_parse_words_keep_quotes() {
        assert_eq!(
            split_words("a=\"b c\" d='e f' g\\ h", '\\'),
            vec!["a=\"b c\"", "d='e f'", "g\\ h"]
        );
        assert_eq!(split_words("  x   y ", '\\'), vec!["x", "y"]);
        assert_eq!(split_words("a=\"x\\\" y\"", '\\'), vec!["a=\"x\\\" y\""]);
        assert_eq!(split_words("end\\", '\\'), vec!["end"]);
        assert!(split_words("", '\\').is_empty());
    }

    #[test]
    fn build_parse_go_durations() {
        assert_eq!(parse_go_duration("30s"), Some(Duration::from_secs(30)));
        assert_eq!(parse_go_duration("1m30s"), Some(Duration::from_secs(90)));
        assert_eq!(parse_go_duration("1.5h"), Some(Duration::from_secs(5400)));
        assert_eq!(parse_go_duration("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(parse_go_duration("0"), Some(Duration::ZERO));
        for bad in ["", "5", "s", "1x", "-1s", "1s2"] {
            assert_eq!(parse_go_duration(bad), None, "{bad}");
        }
    }
}
