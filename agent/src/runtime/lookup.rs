//! Finding `argv[0]` on the container's `PATH` (pure; the probe is injected).

use std::fmt;
use std::path::{Path, PathBuf};

/// The PATH a container gets when its environment has none (Docker's).
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// What a probe found at a path (following symlinks).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    Missing,
    Dir,
    NotExecutable,
    Executable,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LookupError {
    /// Not found in any PATH entry.
    NotInPath {
        cmd: String,
        path: String,
    },
    /// A command with a `/` that does not exist.
    NoSuchFile {
        cmd: String,
    },
    /// Found, but not executable for the container's user.
    NotExecutable {
        cmd: String,
        found: PathBuf,
    },
    IsDir {
        cmd: String,
    },
    Empty,
}

impl fmt::Display for LookupError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LookupError::NotInPath { cmd, path } => {
                write!(f, "exec {cmd:?}: no such file in the image's PATH ({path})")
            }
            LookupError::NoSuchFile { cmd } => {
                write!(f, "exec {cmd:?}: no such file in the image")
            }
            LookupError::NotExecutable { cmd, found } => write!(
                f,
                "exec {cmd:?}: permission denied ({} is not executable by the container's user)",
                found.display()
            ),
            LookupError::IsDir { cmd } => write!(f, "exec {cmd:?}: is a directory"),
            LookupError::Empty => write!(f, "exec: empty command (argv[0] is \"\")"),
        }
    }
}

impl std::error::Error for LookupError {}

/// The PATH from a `KEY=VALUE` environment, else [`DEFAULT_PATH`].
pub fn path_from_env(env: &[String]) -> &str {
    env.iter()
        .rev()
        .find_map(|kv| kv.strip_prefix("PATH="))
        .unwrap_or(DEFAULT_PATH)
}

/// Resolves `cmd` like `execvp` does: a name with a `/` is used as is; otherwise the first
/// executable regular file in `path`'s entries wins (an empty entry means the current directory).
pub fn find_executable(
    cmd: &str,
    path: &str,
    probe: impl Fn(&Path) -> FileKind,
) -> Result<PathBuf, LookupError> {
    if cmd.is_empty() {
        return Err(LookupError::Empty);
    }
    if cmd.contains('/') {
        let p = PathBuf::from(cmd);
        return match probe(&p) {
            FileKind::Executable => Ok(p),
            FileKind::Missing => Err(LookupError::NoSuchFile { cmd: cmd.into() }),
            FileKind::Dir => Err(LookupError::IsDir { cmd: cmd.into() }),
            FileKind::NotExecutable => Err(LookupError::NotExecutable {
                cmd: cmd.into(),
                found: p,
            }),
        };
    }
    let mut not_exec = None;
    for dir in path.split(':') {
        let dir = if dir.is_empty() { "." } else { dir };
        let candidate = Path::new(dir).join(cmd);
        match probe(&candidate) {
            FileKind::Executable => return Ok(candidate),
            FileKind::NotExecutable => {
                not_exec.get_or_insert(candidate);
            }
            FileKind::Missing | FileKind::Dir => {}
        }
    }
    match not_exec {
        Some(found) => Err(LookupError::NotExecutable {
            cmd: cmd.into(),
            found,
        }),
        None => Err(LookupError::NotInPath {
            cmd: cmd.into(),
            path: path.into(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn fs(entries: &[(&str, FileKind)]) -> impl Fn(&Path) -> FileKind {
        let map: HashMap<PathBuf, FileKind> = entries
            .iter()
            .map(|(p, k)| (PathBuf::from(p), *k))
            .collect();
        move |p: &Path| map.get(p).copied().unwrap_or(FileKind::Missing)
    }

    #[test]
    fn finds_first_executable_in_order() {
        let probe = fs(&[
            ("/usr/bin/sh", FileKind::Executable),
            ("/bin/sh", FileKind::Executable),
        ]);
        assert_eq!(
            find_executable("sh", DEFAULT_PATH, &probe),
            Ok(PathBuf::from("/usr/bin/sh"))
        );
        assert_eq!(
            find_executable("sh", "/bin:/usr/bin", &probe),
            Ok(PathBuf::from("/bin/sh"))
        );
    }

    #[test]
    fn skips_dirs_and_non_executables() {
        let probe = fs(&[
            ("/a/tool", FileKind::Dir),
            ("/b/tool", FileKind::NotExecutable),
            ("/c/tool", FileKind::Executable),
        ]);
        assert_eq!(
            find_executable("tool", "/a:/b:/c", &probe),
            Ok(PathBuf::from("/c/tool"))
        );
        let e = find_executable("tool", "/a:/b", &probe).expect_err("not executable");
        assert_eq!(
            e,
            LookupError::NotExecutable {
                cmd: "tool".into(),
                found: "/b/tool".into()
            }
        );
        assert!(e.to_string().contains("permission denied"), "{e}");
    }

    #[test]
    fn missing_command_names_the_path() {
        let e = find_executable("foo", DEFAULT_PATH, fs(&[])).expect_err("missing");
        assert_eq!(
            e.to_string(),
            format!("exec \"foo\": no such file in the image's PATH ({DEFAULT_PATH})")
        );
    }

    #[test]
    fn slash_commands_are_not_searched() {
        let probe = fs(&[
            ("/bin/sh", FileKind::Executable),
            ("./run", FileKind::Executable),
        ]);
        assert_eq!(
            find_executable("/bin/sh", "", &probe),
            Ok(PathBuf::from("/bin/sh"))
        );
        assert_eq!(
            find_executable("./run", "/bin", &probe),
            Ok(PathBuf::from("./run"))
        );
        assert_eq!(
            find_executable("/bin/nope", DEFAULT_PATH, &probe),
            Err(LookupError::NoSuchFile {
                cmd: "/bin/nope".into()
            })
        );
        assert_eq!(
            find_executable("/bin", DEFAULT_PATH, fs(&[("/bin", FileKind::Dir)])),
            Err(LookupError::IsDir { cmd: "/bin".into() })
        );
        assert_eq!(
            find_executable("", DEFAULT_PATH, &probe),
            Err(LookupError::Empty)
        );
    }

    #[test]
    fn empty_path_entry_is_cwd() {
        let probe = fs(&[("./tool", FileKind::Executable)]);
        assert_eq!(
            find_executable("tool", "/x::/y", &probe),
            Ok(PathBuf::from("./tool"))
        );
    }

    #[test]
    fn path_comes_from_env_last_wins() {
        let env = vec![
            "A=1".to_string(),
            "PATH=/x".to_string(),
            "PATH=/y:/z".to_string(),
        ];
        assert_eq!(path_from_env(&env), "/y:/z");
        assert_eq!(path_from_env(&["PATHX=1".to_string()]), DEFAULT_PATH);
    }
}
