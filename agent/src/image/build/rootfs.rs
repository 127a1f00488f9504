//! A read-only view of an image's root filesystem, merged from its unpacked layers the way
//! overlayfs merges them, without mounting anything: what `COPY` reads from (the build context
//! is a one-layer view too), what `COPY --chown` looks names up in, and what destinations are
//! resolved against.
//!
//! Overlay's rules, as the store lays layers out (`unpack.rs`): a character device 0:0 is a
//! whiteout (the name is deleted below); a directory with `trusted.overlay.opaque=y` hides the
//! content of the layers below; a directory over a non-directory (or a whiteout) below hides
//! what is below it too.
//!
//! Symlinks are resolved inside the view: in [`Scope::Image`] an absolute target starts at the
//! image's root and `..` stops there (as in a container); in [`Scope::Context`] a symlink that
//! points outside the root is an error (a build context must not reach the host).

use std::collections::BTreeMap;
use std::ffi::CString;
use std::fs::{self, Metadata};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

/// How symlinks that leave the root are treated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    /// Absolute targets start at the root, `..` stops at it.
    Image,
    /// A symlink leading outside the root is an error.
    Context,
}

/// What can go wrong looking a path up.
#[derive(Debug, thiserror::Error)]
pub enum FsError {
    #[error("{path}: not a directory")]
    NotADirectory { path: String },
    #[error("{path}: the symlink {link} points outside the build context")]
    Escapes { path: String, link: String },
    #[error("{path}: too many levels of symbolic links")]
    Loop { path: String },
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: io::Error,
    },
}

/// One entry of the view: the file on the host that provides it, and its metadata.
#[derive(Clone, Debug)]
pub struct Node {
    pub host_path: PathBuf,
    pub meta: Metadata,
}

impl Node {
    pub fn is_dir(&self) -> bool {
        self.meta.is_dir()
    }
    pub fn is_symlink(&self) -> bool {
        self.meta.file_type().is_symlink()
    }
    pub fn is_file(&self) -> bool {
        self.meta.is_file()
    }
}

/// A path resolved in the view: its real components (symlinks followed), and the node when
/// it exists.
#[derive(Clone, Debug)]
pub struct Resolved {
    pub components: Vec<String>,
    pub node: Option<Node>,
}

/// The merged view of some layer directories (lowest first).
#[derive(Clone, Debug)]
pub struct Rootfs {
    layers: Vec<PathBuf>,
    scope: Scope,
}

const MAX_SYMLINKS: usize = 40;

pub fn is_whiteout(meta: &Metadata) -> bool {
    meta.file_type().is_char_device() && meta.rdev() == 0
}

/// Whether `dir` carries overlay's opaque mark.
pub fn is_opaque(dir: &Path) -> bool {
    let Ok(c) = CString::new(dir.as_os_str().as_bytes()) else {
        return false;
    };
    let mut buf = [0u8; 2];
    // SAFETY: valid NUL-terminated strings and a buffer of the given length; lgetxattr does
    // not follow symlinks.
    let n = unsafe {
        libc::lgetxattr(
            c.as_ptr(),
            c"trusted.overlay.opaque".as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    n == 1 && buf[0] == b'y'
}

fn lstat(path: &Path) -> io::Result<Option<Metadata>> {
    match fs::symlink_metadata(path) {
        Ok(m) => Ok(Some(m)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) if e.raw_os_error() == Some(libc::ENOTDIR) => Ok(None),
        Err(e) => Err(e),
    }
}

fn join(base: &Path, comps: &[String]) -> PathBuf {
    let mut p = base.to_path_buf();
    for c in comps {
        p.push(c);
    }
    p
}

fn display(comps: &[String]) -> String {
    format!("/{}", comps.join("/"))
}

/// Splits a path into its components (`.` and empty ones dropped; `..` kept).
pub fn components(path: &str) -> Vec<String> {
    path.split('/')
        .filter(|c| !c.is_empty() && *c != ".")
        .map(str::to_string)
        .collect()
}

impl Rootfs {
    pub fn new(layers: Vec<PathBuf>, scope: Scope) -> Rootfs {
        Rootfs { layers, scope }
    }

    /// A one-directory view (the build context).
    pub fn context(dir: &Path) -> Rootfs {
        Rootfs::new(vec![dir.to_path_buf()], Scope::Context)
    }

    /// The topmost visible entry at `comps`, whose parent is a directory in the view; no
    /// symlink is followed.
    pub fn entry(&self, comps: &[String]) -> Result<Option<Node>, FsError> {
        let io_err = |source| FsError::Io {
            path: display(comps),
            source,
        };
        if comps.is_empty() {
            // The root: the topmost layer's root directory.
            let Some(top) = self.layers.last() else {
                return Ok(None);
            };
            let meta = fs::symlink_metadata(top).map_err(io_err)?;
            return Ok(Some(Node {
                host_path: top.clone(),
                meta,
            }));
        }
        'layers: for layer in self.layers.iter().rev() {
            let mut hides_below = false;
            for i in 1..comps.len() {
                let p = join(layer, &comps[..i]);
                match lstat(&p).map_err(io_err)? {
                    // An opaque directory above hides the lower layers' copies.
                    None if hides_below => return Ok(None),
                    None => continue 'layers,
                    Some(m) if m.is_dir() => {
                        if is_opaque(&p) {
                            hides_below = true;
                        }
                    }
                    // A whiteout or a non-directory: nothing below shows through.
                    Some(_) => return Ok(None),
                }
            }
            let p = join(layer, comps);
            match lstat(&p).map_err(io_err)? {
                Some(m) if is_whiteout(&m) => return Ok(None),
                Some(meta) => {
                    return Ok(Some(Node { host_path: p, meta }));
                }
                None if hides_below => return Ok(None),
                None => {}
            }
        }
        Ok(None)
    }

    /// The names in directory `comps` (which must be a directory in the view), merged across
    /// layers, sorted.
    pub fn read_dir(&self, comps: &[String]) -> Result<Vec<(String, Node)>, FsError> {
        let io_err = |source| FsError::Io {
            path: display(comps),
            source,
        };
        let mut seen: BTreeMap<String, Option<Node>> = BTreeMap::new();
        'layers: for layer in self.layers.iter().rev() {
            let mut hides_below = false;
            for i in 1..=comps.len() {
                let p = join(layer, &comps[..i]);
                match lstat(&p).map_err(io_err)? {
                    None if hides_below => break 'layers,
                    None => continue 'layers,
                    Some(m) if m.is_dir() => {
                        if is_opaque(&p) && i < comps.len() {
                            hides_below = true;
                        }
                    }
                    Some(_) => break 'layers,
                }
            }
            let dir = join(layer, comps);
            if is_opaque(&dir) {
                hides_below = true;
            }
            for entry in fs::read_dir(&dir).map_err(io_err)? {
                let entry = entry.map_err(io_err)?;
                let name = entry.file_name().to_string_lossy().into_owned();
                if seen.contains_key(&name) {
                    continue;
                }
                let meta = entry.metadata().map_err(io_err)?;
                if is_whiteout(&meta) {
                    seen.insert(name, None);
                } else {
                    seen.insert(
                        name,
                        Some(Node {
                            host_path: entry.path(),
                            meta,
                        }),
                    );
                }
            }
            if hides_below {
                break;
            }
        }
        Ok(seen
            .into_iter()
            .filter_map(|(n, node)| node.map(|node| (n, node)))
            .collect())
    }

    /// Resolves `path` (absolute in the view, or relative to its root), following symlinks in
    /// every component but the last (and the last too with `follow_last`). Missing trailing
    /// components are fine (`existing` says how many exist); a missing component followed by
    /// more is fine too (all after it are missing); a non-directory in the middle is an error.
    pub fn resolve(&self, path: &str, follow_last: bool) -> Result<Resolved, FsError> {
        let mut pending: Vec<String> = components(path);
        pending.reverse();
        let mut done: Vec<String> = Vec::new();
        let mut missing = false;
        let mut hops = 0;
        let mut node: Option<Node> = self.entry(&[])?;
        while let Some(comp) = pending.pop() {
            if comp == ".." {
                if done.is_empty() {
                    if self.scope == Scope::Context {
                        return Err(FsError::Escapes {
                            path: path.to_string(),
                            link: "..".into(),
                        });
                    }
                } else if !missing {
                    done.pop();
                    node = self.entry(&done)?;
                } else {
                    done.pop();
                }
                continue;
            }
            done.push(comp);
            if missing {
                continue;
            }
            let last = pending.is_empty();
            match self.entry(&done)? {
                None => {
                    missing = true;
                    node = None;
                }
                Some(n) if n.is_symlink() && (!last || follow_last) => {
                    hops += 1;
                    if hops > MAX_SYMLINKS {
                        return Err(FsError::Loop {
                            path: path.to_string(),
                        });
                    }
                    let target = fs::read_link(&n.host_path).map_err(|source| FsError::Io {
                        path: display(&done),
                        source,
                    })?;
                    let target = target.to_string_lossy().into_owned();
                    let link = display(&done);
                    done.pop();
                    if target.starts_with('/') {
                        if self.scope == Scope::Context {
                            return Err(FsError::Escapes {
                                path: path.to_string(),
                                link: format!("{link} -> {target}"),
                            });
                        }
                        done.clear();
                    } else if self.scope == Scope::Context {
                        // Relative: must not climb above the root.
                        let mut depth = done.len() as isize;
                        for c in components(&target) {
                            depth += if c == ".." { -1 } else { 1 };
                            if depth < 0 {
                                return Err(FsError::Escapes {
                                    path: path.to_string(),
                                    link: format!("{link} -> {target}"),
                                });
                            }
                        }
                    }
                    for c in components(&target).into_iter().rev() {
                        pending.push(c);
                    }
                    node = self.entry(&done)?;
                }
                Some(n) if !last && !n.is_dir() => {
                    return Err(FsError::NotADirectory {
                        path: display(&done),
                    })
                }
                Some(n) => node = Some(n),
            }
        }
        Ok(Resolved {
            components: done,
            node: if missing { None } else { node },
        })
    }

    /// Reads a whole (small) file of the view, following symlinks; None when missing.
    pub fn read_file(&self, path: &str) -> Result<Option<Vec<u8>>, FsError> {
        let r = match self.resolve(path, true) {
            Ok(r) => r,
            Err(FsError::NotADirectory { .. }) => return Ok(None),
            Err(e) => return Err(e),
        };
        match r.node {
            Some(n) if n.is_file() => {
                fs::read(&n.host_path)
                    .map(Some)
                    .map_err(|source| FsError::Io {
                        path: path.to_string(),
                        source,
                    })
            }
            _ => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn write(p: &Path, text: &str) {
        fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        fs::write(p, text).expect("write");
    }

    fn read(fs_: &Rootfs, path: &str) -> Option<String> {
        fs_.read_file(path)
            .expect("read")
            .map(|b| String::from_utf8(b).expect("utf8"))
    }

    #[test]
    fn build_rootfs_upper_layers_win_and_dirs_merge() {
        let t = tempfile::tempdir().expect("tempdir");
        let (l1, l2) = (t.path().join("1"), t.path().join("2"));
        write(&l1.join("etc/a"), "a1");
        write(&l1.join("etc/b"), "b1");
        write(&l2.join("etc/a"), "a2");
        write(&l2.join("bin/x"), "x2");
        let v = Rootfs::new(vec![l1.clone(), l2.clone()], Scope::Image);
        assert_eq!(read(&v, "/etc/a").as_deref(), Some("a2"));
        assert_eq!(read(&v, "etc/b").as_deref(), Some("b1"));
        assert_eq!(read(&v, "/bin/x").as_deref(), Some("x2"));
        assert_eq!(read(&v, "/nope"), None);
        let names: Vec<String> = v
            .read_dir(&components("/etc"))
            .expect("readdir")
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        assert_eq!(names, vec!["a", "b"]);
        let root: Vec<String> = v
            .read_dir(&[])
            .expect("root")
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        assert_eq!(root, vec!["bin", "etc"]);
    }

    #[test]
    fn build_rootfs_symlinks_in_image_scope() {
        let t = tempfile::tempdir().expect("tempdir");
        let l = t.path().join("l");
        write(&l.join("usr/lib/f"), "f");
        fs::create_dir_all(l.join("etc")).expect("mkdir");
        symlink("/usr/lib", l.join("lib")).expect("symlink");
        symlink("../usr/lib/f", l.join("etc/rel")).expect("symlink");
        symlink("../../../../usr/lib/f", l.join("etc/climb")).expect("symlink");
        symlink("loop2", l.join("loop1")).expect("symlink");
        symlink("loop1", l.join("loop2")).expect("symlink");
        let v = Rootfs::new(vec![l.clone()], Scope::Image);
        assert_eq!(read(&v, "/lib/f").as_deref(), Some("f"));
        assert_eq!(read(&v, "/etc/rel").as_deref(), Some("f"));
        assert_eq!(read(&v, "/etc/climb").as_deref(), Some("f"), "stops at /");
        let r = v.resolve("/lib/new/deeper", false).expect("resolve");
        assert_eq!(r.components.join("/"), "usr/lib/new/deeper");
        assert!(r.node.is_none());
        let r = v.resolve("/lib", false).expect("resolve");
        assert!(r.node.expect("node").is_symlink(), "last not followed");
        assert!(matches!(
            v.resolve("/loop1/x", false),
            Err(FsError::Loop { .. })
        ));
        assert!(matches!(
            v.resolve("/usr/lib/f/x", false),
            Err(FsError::NotADirectory { .. })
        ));
    }

    #[test]
    fn build_rootfs_context_scope_refuses_escapes() {
        let t = tempfile::tempdir().expect("tempdir");
        let c = t.path().join("ctx");
        write(&c.join("dir/f"), "f");
        symlink("/etc/passwd", c.join("abs")).expect("symlink");
        symlink("../outside", c.join("up")).expect("symlink");
        symlink("dir/f", c.join("inside")).expect("symlink");
        symlink("../dir/f", c.join("dir/back")).expect("symlink");
        let v = Rootfs::context(&c);
        assert_eq!(read(&v, "inside").as_deref(), Some("f"));
        assert_eq!(read(&v, "dir/back").as_deref(), Some("f"));
        for bad in ["abs", "up", "../x", "dir/../../x"] {
            assert!(
                matches!(v.resolve(bad, true), Err(FsError::Escapes { .. })),
                "{bad}"
            );
        }
    }

    #[test]
    fn build_rootfs_whiteouts_and_opaque_dirs() {
        if !nix::unistd::geteuid().is_root() {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "whiteouts need root, and CI=true: failing rather than skipping"
            );
            eprintln!("skipping: whiteouts need root");
            return;
        }
        let t = tempfile::tempdir().expect("tempdir");
        let (l1, l2) = (t.path().join("1"), t.path().join("2"));
        write(&l1.join("etc/gone"), "g");
        write(&l1.join("etc/kept"), "k");
        write(&l1.join("data/old"), "o");
        write(&l1.join("dir/sub/x"), "x");
        fs::create_dir_all(l2.join("etc")).expect("mkdir");
        nix::sys::stat::mknod(
            &l2.join("etc/gone"),
            nix::sys::stat::SFlag::S_IFCHR,
            nix::sys::stat::Mode::empty(),
            0,
        )
        .expect("mknod");
        nix::sys::stat::mknod(
            &l2.join("dir"),
            nix::sys::stat::SFlag::S_IFCHR,
            nix::sys::stat::Mode::empty(),
            0,
        )
        .expect("mknod");
        write(&l2.join("data/new"), "n");
        let c = CString::new(l2.join("data").as_os_str().as_bytes()).expect("cstring");
        // SAFETY: valid C strings and value buffer.
        let rc = unsafe {
            libc::lsetxattr(
                c.as_ptr(),
                c"trusted.overlay.opaque".as_ptr(),
                b"y".as_ptr().cast(),
                1,
                0,
            )
        };
        assert_eq!(rc, 0, "set opaque");
        let v = Rootfs::new(vec![l1, l2], Scope::Image);
        assert_eq!(read(&v, "/etc/gone"), None);
        assert_eq!(read(&v, "/etc/kept").as_deref(), Some("k"));
        assert_eq!(read(&v, "/data/old"), None);
        assert_eq!(read(&v, "/data/new").as_deref(), Some("n"));
        assert_eq!(read(&v, "/dir/sub/x"), None);
        let etc: Vec<String> = v
            .read_dir(&components("etc"))
            .expect("etc")
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        assert_eq!(etc, vec!["kept"]);
        let data: Vec<String> = v
            .read_dir(&components("data"))
            .expect("data")
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        assert_eq!(data, vec!["new"]);
        let root: Vec<String> = v
            .read_dir(&[])
            .expect("root")
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        assert_eq!(root, vec!["data", "etc"]);
    }
}
