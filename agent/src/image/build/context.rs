//! The client side of a build context: a directory, filtered by `.dockerignore`, written as a
//! tar stream for the daemon.
//!
//! Entries keep their modes and mtimes; owners are 0:0 (what `COPY` gives anyway). Regular
//! files, directories and symlinks (as links, never followed) are sent; sockets, FIFOs and
//! devices are skipped. An excluded directory is not walked unless an exception (`!pattern`)
//! may re-include something below it. Names starting with `.wh.` are refused: layers use them
//! for deletions, so the daemon could not tell them apart.

use std::fs::{self, File};
use std::io::{self, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use super::ignore::IgnoreRules;

/// What went wrong packing a context.
#[derive(Debug, thiserror::Error)]
pub enum ContextError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{0}")]
    Invalid(String),
}

/// The `.dockerignore` that applies: `<Dockerfile>.dockerignore` beside the Dockerfile if there
/// is one (BuildKit's rule), else `<context>/.dockerignore`, else none.
pub fn ignore_rules(
    context: &Path,
    dockerfile: Option<&Path>,
) -> Result<IgnoreRules, ContextError> {
    let mut candidates = Vec::new();
    if let Some(df) = dockerfile {
        let mut name = df.as_os_str().to_owned();
        name.push(".dockerignore");
        candidates.push(PathBuf::from(name));
    }
    candidates.push(context.join(".dockerignore"));
    for path in candidates {
        match fs::read_to_string(&path) {
            Ok(text) => {
                return IgnoreRules::parse(&text)
                    .map_err(|e| ContextError::Invalid(format!("{}: {e}", path.display())))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(source) => return Err(ContextError::Io { path, source }),
        }
    }
    Ok(IgnoreRules::default())
}

/// Writes the context `dir` (filtered by `rules`) as a tar stream into `out`; returns the
/// number of entries.
pub fn pack(dir: &Path, rules: &IgnoreRules, out: impl Write) -> Result<u64, ContextError> {
    let meta = fs::metadata(dir).map_err(|source| ContextError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    if !meta.is_dir() {
        return Err(ContextError::Invalid(format!(
            "the build context {} is not a directory",
            dir.display()
        )));
    }
    let mut b = tar::Builder::new(out);
    b.follow_symlinks(false);
    let mut n = 0;
    walk(dir, "", rules, &mut b, &mut n)?;
    b.into_inner().map_err(|source| ContextError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    Ok(n)
}

fn walk<W: Write>(
    dir: &Path,
    rel: &str,
    rules: &IgnoreRules,
    b: &mut tar::Builder<W>,
    n: &mut u64,
) -> Result<(), ContextError> {
    let io_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| ContextError::Io { path, source }
    };
    let mut names: Vec<std::ffi::OsString> = fs::read_dir(dir)
        .map_err(io_err(dir))?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<io::Result<_>>()
        .map_err(io_err(dir))?;
    names.sort();
    for name in names {
        let host = dir.join(&name);
        let name = name.to_str().ok_or_else(|| {
            ContextError::Invalid(format!(
                "{}: file names in a build context must be UTF-8",
                host.display()
            ))
        })?;
        let rel_path = if rel.is_empty() {
            name.to_string()
        } else {
            format!("{rel}/{name}")
        };
        let meta = fs::symlink_metadata(&host).map_err(io_err(&host))?;
        let excluded = rules.is_excluded(&rel_path);
        if excluded {
            if meta.is_dir() && rules.may_include_below(&rel_path) {
                walk(&host, &rel_path, rules, b, n)?;
            }
            continue;
        }
        if name.starts_with(".wh.") {
            return Err(ContextError::Invalid(format!(
                "{}: names starting with .wh. cannot be sent in a build context (image layers \
                 use them for deletions); rename it or add it to .dockerignore",
                host.display()
            )));
        }
        let mut h = tar::Header::new_gnu();
        h.set_mode(meta.mode() & 0o7777);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(u64::try_from(meta.mtime()).unwrap_or(0));
        let ft = meta.file_type();
        if ft.is_dir() {
            h.set_entry_type(tar::EntryType::Directory);
            h.set_size(0);
            b.append_data(&mut h, format!("{rel_path}/"), io::empty())
                .map_err(io_err(&host))?;
            *n += 1;
            walk(&host, &rel_path, rules, b, n)?;
        } else if ft.is_symlink() {
            let target = fs::read_link(&host).map_err(io_err(&host))?;
            h.set_entry_type(tar::EntryType::Symlink);
            h.set_size(0);
            b.append_link(&mut h, &rel_path, &target)
                .map_err(io_err(&host))?;
            *n += 1;
        } else if ft.is_file() {
            let f = File::open(&host).map_err(io_err(&host))?;
            let len = f.metadata().map_err(io_err(&host))?.len();
            h.set_entry_type(tar::EntryType::Regular);
            h.set_size(len);
            b.append_data(&mut h, &rel_path, io::Read::take(f, len))
                .map_err(io_err(&host))?;
            *n += 1;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(tar_bytes: &[u8]) -> Vec<String> {
        let mut a = tar::Archive::new(tar_bytes);
        a.entries()
            .expect("entries")
            .map(|e| {
                e.expect("entry")
                    .path()
                    .expect("path")
                    .to_string_lossy()
                    .into_owned()
            })
            .collect()
    }

    #[test]
    fn build_context_pack_honours_dockerignore() {
        let t = tempfile::tempdir().expect("tempdir");
        let c = t.path();
        fs::create_dir_all(c.join("node_modules/dep")).expect("mkdir");
        fs::create_dir_all(c.join("logs")).expect("mkdir");
        fs::create_dir_all(c.join("src")).expect("mkdir");
        fs::write(c.join("node_modules/dep/x.js"), "x").expect("write");
        fs::write(c.join("logs/a.log"), "a").expect("write");
        fs::write(c.join("logs/keep.log"), "k").expect("write");
        fs::write(c.join("src/main.rs"), "fn main(){}").expect("write");
        fs::write(c.join("Dockerfile"), "FROM x").expect("write");
        fs::write(
            c.join(".dockerignore"),
            "node_modules\nlogs\n!logs/keep.log\n**/*.tmp\n",
        )
        .expect("write");
        fs::write(c.join("src/junk.tmp"), "j").expect("write");
        std::os::unix::fs::symlink("src/main.rs", c.join("link")).expect("symlink");
        let rules = ignore_rules(c, None).expect("rules");
        let mut out = Vec::new();
        pack(c, &rules, &mut out).expect("pack");
        assert_eq!(
            names(&out),
            [
                ".dockerignore",
                "Dockerfile",
                "link",
                "logs/keep.log",
                "src/",
                "src/main.rs"
            ]
        );
    }

    #[test]
    fn build_context_dockerfile_specific_ignore_wins() {
        let t = tempfile::tempdir().expect("tempdir");
        let c = t.path();
        fs::write(c.join(".dockerignore"), "a\n").expect("write");
        fs::write(c.join("prod.Dockerfile.dockerignore"), "b\n").expect("write");
        let rules = ignore_rules(c, Some(&c.join("prod.Dockerfile"))).expect("rules");
        assert!(rules.is_excluded("b"));
        assert!(!rules.is_excluded("a"));
        let rules = ignore_rules(c, Some(&c.join("Dockerfile"))).expect("rules");
        assert!(rules.is_excluded("a"));
    }

    #[test]
    fn build_context_refuses_whiteout_names_and_files() {
        let t = tempfile::tempdir().expect("tempdir");
        fs::write(t.path().join(".wh.x"), "").expect("write");
        let e = pack(t.path(), &IgnoreRules::default(), Vec::new()).unwrap_err();
        assert!(e.to_string().contains(".wh."), "{e}");
        let e = pack(&t.path().join(".wh.x"), &IgnoreRules::default(), Vec::new()).unwrap_err();
        assert!(e.to_string().contains("not a directory"), "{e}");
    }
}
