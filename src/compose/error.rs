//! The loader's one error type: where (file, line, key path) and what.

use std::fmt;
use std::path::PathBuf;

/// A compose file that cannot be loaded. Displays as one line:
/// `<file>:<line>: <key path>: <message>`, leaving out the parts that are unknown.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ComposeError {
    /// The compose file the error is in, when known.
    pub file: Option<PathBuf>,
    /// 1-based line in `file`, when known (best effort after merging).
    pub line: Option<usize>,
    /// Key path such as `services.web.ports[1]`; empty for whole-file errors.
    pub path: String,
    /// What is wrong and, where it helps, what was expected.
    pub message: String,
}

impl ComposeError {
    /// An error at a key path, file and line to be filled in by the caller that knows them.
    pub fn at(path: impl Into<String>, message: impl Into<String>) -> Self {
        ComposeError {
            file: None,
            line: None,
            path: path.into(),
            message: message.into(),
        }
    }

    /// An error about a whole file (unreadable, not YAML, ...).
    pub fn file(file: impl Into<PathBuf>, line: Option<usize>, message: impl Into<String>) -> Self {
        ComposeError {
            file: Some(file.into()),
            line,
            path: String::new(),
            message: message.into(),
        }
    }

    /// Sets the file if none is set yet.
    pub fn in_file(mut self, file: impl Into<PathBuf>) -> Self {
        if self.file.is_none() {
            self.file = Some(file.into());
        }
        self
    }
}

impl fmt::Display for ComposeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(file) = &self.file {
            write!(f, "{}", file.display())?;
            if let Some(line) = self.line {
                write!(f, ":{line}")?;
            }
            f.write_str(": ")?;
        }
        if !self.path.is_empty() {
            write!(f, "{}: ", self.path)?;
        }
        f.write_str(&self.message)
    }
}

impl std::error::Error for ComposeError {}

pub type Result<T, E = ComposeError> = std::result::Result<T, E>;
