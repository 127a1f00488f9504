//! `COPY` and `ADD`: finding the sources (in the build context, or another stage's or image's
//! filesystem), hashing them for the cache, and writing them as a layer.
//!
//! Docker's rules followed here:
//! - Sources are relative to the context root (a leading `/` too); they may be globs (Go's
//!   `filepath.Match` per path component). A source outside the context (`../x`, or through a
//!   symlink that leaves it) is refused; symlinks inside the context are followed for the named
//!   source itself, and copied as symlinks inside a copied directory.
//! - A directory source copies its content, not itself. Several sources (or a glob) need a
//!   destination directory (ending in `/`). A file goes to `dest/<name>` when the destination
//!   ends in `/` or is an existing directory, else to `dest`.
//! - New files and directories belong to 0:0, or to `--chown` (`user[:group]`, names looked
//!   up in the image's `/etc/passwd` and `/etc/group`; a user alone means the same number as
//!   group); `--chmod` (octal) replaces the mode of what is copied. Modes and mtimes are kept.
//!   Missing parent directories are made (0755); existing ones keep their metadata.
//! - `ADD` of a local tar archive (plain, gzip or zstd) extracts it into the destination,
//!   keeping the archive's owners and modes; bzip2 and xz archives are refused (not
//!   supported here), remote URLs too (see `state.rs`).

use std::collections::BTreeSet;
use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::FileTypeExt;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use sha2::{Digest, Sha256};

use super::ignore::{clean_path, Glob};
use super::layer::{EntryMeta, LayerWriter};
use super::rootfs::{components, FsError, Node, Rootfs};
use super::state::CopyPlan;

/// Why a `COPY`/`ADD` cannot be done.
#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Fs(#[from] FsError),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },
}

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> CopyError {
    let what = what.into();
    move |source| CopyError::Io { what, source }
}

/// One source found: its path in its filesystem (components, symlinks resolved) and node.
#[derive(Clone, Debug)]
pub struct Matched {
    /// As the user would name it (for messages), e.g. `src/a.txt`.
    pub shown: String,
    pub components: Vec<String>,
    pub node: Node,
}

/// Finds every source of `plan` in `fs` (the context, or a stage's/image's filesystem).
pub fn find_sources(plan: &CopyPlan, fs: &Rootfs) -> Result<Vec<Matched>, CopyError> {
    let context = plan.from.is_none();
    let mut out = Vec::new();
    for src in &plan.sources {
        let cleaned = clean_path(src.trim_start_matches('/'));
        if cleaned == ".." || cleaned.starts_with("../") {
            return Err(CopyError::Invalid(format!(
                "{src}: forbidden path outside the build context"
            )));
        }
        let glob = Glob::new(&cleaned).map_err(CopyError::Invalid)?;
        let before = out.len();
        if glob.has_wildcards() {
            expand_glob(fs, &components(&cleaned), 0, Vec::new(), &mut out)?;
            if out.len() == before {
                return Err(CopyError::Invalid(format!(
                    "no source files were specified: nothing matches {src}{}",
                    if context {
                        " in the build context (check .dockerignore)"
                    } else {
                        ""
                    }
                )));
            }
        } else {
            let r = fs.resolve(&cleaned, true)?;
            let Some(node) = r.node else {
                return Err(CopyError::Invalid(format!(
                    "{src}: not found{}",
                    if context {
                        " in the build context (or excluded by .dockerignore)"
                    } else {
                        ""
                    }
                )));
            };
            out.push(Matched {
                shown: cleaned,
                components: r.components,
                node,
            });
        }
    }
    Ok(out)
}

fn expand_glob(
    fs: &Rootfs,
    pattern: &[String],
    at: usize,
    prefix: Vec<String>,
    out: &mut Vec<Matched>,
) -> Result<(), CopyError> {
    if at == pattern.len() {
        let shown = prefix.join("/");
        let r = fs.resolve(&shown, true)?;
        if let Some(node) = r.node {
            out.push(Matched {
                shown,
                components: r.components,
                node,
            });
        }
        return Ok(());
    }
    let comp = &pattern[at];
    let glob = Glob::new(comp).map_err(CopyError::Invalid)?;
    if !glob.has_wildcards() {
        let mut next = prefix;
        next.push(comp.clone());
        return expand_glob(fs, pattern, at + 1, next, out);
    }
    let dir = match fs.resolve(&prefix.join("/"), true) {
        Ok(r) => r,
        Err(FsError::NotADirectory { .. }) => return Ok(()),
        Err(e) => return Err(e.into()),
    };
    if !dir.node.as_ref().is_some_and(Node::is_dir) {
        return Ok(());
    }
    for (name, _) in fs.read_dir(&dir.components)? {
        if glob.matches(&name) {
            let mut next = prefix.clone();
            next.push(name);
            expand_glob(fs, pattern, at + 1, next, out)?;
        }
    }
    Ok(())
}

/// A content digest of the sources (names, types, modes, contents, link targets): what the
/// cache keys a `COPY`/`ADD` from the context by.
pub fn hash_sources(fs: &Rootfs, sources: &[Matched]) -> Result<String, CopyError> {
    let mut h = Sha256::new();
    for m in sources {
        h.update(format!("source {}\0", m.shown));
        hash_node(fs, &m.components, &m.node, "", &mut h)?;
    }
    Ok(hex::encode(h.finalize()))
}

fn hash_node(
    fs: &Rootfs,
    comps: &[String],
    node: &Node,
    rel: &str,
    h: &mut Sha256,
) -> Result<(), CopyError> {
    let mode = EntryMeta::of(&node.meta).mode;
    if node.is_dir() {
        h.update(format!("d {rel} {mode:o}\0"));
        for (name, child) in fs.read_dir(comps)? {
            let mut c = comps.to_vec();
            c.push(name.clone());
            hash_node(fs, &c, &child, &format!("{rel}/{name}"), h)?;
        }
    } else if node.is_symlink() {
        let target = std::fs::read_link(&node.host_path)
            .map_err(io_err(format!("read link {}", node.host_path.display())))?;
        h.update(format!("l {rel} {}\0", target.display()));
    } else if node.is_file() {
        h.update(format!("f {rel} {mode:o} {}\0", node.meta.len()));
        let mut f = File::open(&node.host_path)
            .map_err(io_err(format!("open {}", node.host_path.display())))?;
        let mut buf = vec![0u8; 64 << 10];
        loop {
            let n = f
                .read(&mut buf)
                .map_err(io_err(format!("read {}", node.host_path.display())))?;
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
        }
    } else {
        h.update(format!("o {rel} {mode:o}\0"));
    }
    Ok(())
}

/// `--chown=user[:group]` → numeric ids, names looked up in `image`'s /etc/passwd and
/// /etc/group.
pub fn resolve_owner(spec: &str, image: &Rootfs) -> Result<(u32, u32), CopyError> {
    let (user, group) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    let lookup = |file: &str, name: &str, field: usize| -> Result<u32, CopyError> {
        if let Ok(n) = name.parse::<u32>() {
            return Ok(n);
        }
        let text = image.read_file(file)?.unwrap_or_default();
        String::from_utf8_lossy(&text)
            .lines()
            .map(|l| l.split(':').collect::<Vec<_>>())
            .find(|f| f.first() == Some(&name))
            .and_then(|f| f.get(field).and_then(|v| v.parse().ok()))
            .ok_or_else(|| {
                CopyError::Invalid(format!(
                    "--chown={spec}: unable to find {} {name:?} in the image's {file}",
                    if field == 2 && file.ends_with("passwd") {
                        "user"
                    } else {
                        "group"
                    }
                ))
            })
    };
    if user.is_empty() {
        return Err(CopyError::Invalid(format!("--chown={spec}: no user given")));
    }
    let uid = lookup("/etc/passwd", user, 2)?;
    let gid = match group {
        Some(g) if !g.is_empty() => lookup("/etc/group", g, 2)?,
        _ => uid,
    };
    Ok((uid, gid))
}

/// Writes the `COPY`/`ADD` as layer entries: `src` holds the sources (already found),
/// `image` is the stage's filesystem before the step (for the destination).
pub fn write_copy(
    plan: &CopyPlan,
    src: &Rootfs,
    sources: &[Matched],
    image: &Rootfs,
    owner: Option<(u32, u32)>,
    w: &mut LayerWriter,
) -> Result<(), CopyError> {
    let several = sources.len() > 1;
    if several && !plan.dest_is_dir {
        return Err(CopyError::Invalid(format!(
            "when copying more than one source ({}), the destination must be a directory and \
             end with a /",
            sources
                .iter()
                .map(|m| m.shown.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    let dest = image.resolve(&plan.dest, true)?;
    let dest_is_existing_dir = dest.node.as_ref().is_some_and(Node::is_dir);
    let mut out = Out {
        w,
        image,
        made: BTreeSet::new(),
        owner,
        now: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
    };
    for m in sources {
        if m.node.is_dir() {
            out.parents(&dest.components, true)?;
            copy_tree(src, &m.components, &dest.components, plan, &mut out)?;
            continue;
        }
        if plan.add && m.node.is_file() {
            if let Some(kind) = archive_kind(&m.node.host_path)? {
                out.parents(&dest.components, true)?;
                extract(&m.node.host_path, kind, &dest.components, &mut out).map_err(
                    |e| match e {
                        CopyError::Invalid(msg) => {
                            CopyError::Invalid(format!("ADD {}: {msg}", m.shown))
                        }
                        other => other,
                    },
                )?;
                continue;
            }
        }
        let name = m.components.last().cloned().unwrap_or_default();
        let target: Vec<String> = if plan.dest_is_dir || dest_is_existing_dir {
            let mut t = dest.components.clone();
            t.push(name);
            t
        } else {
            dest.components.clone()
        };
        if target.is_empty() {
            return Err(CopyError::Invalid(format!(
                "cannot copy the file {} onto /",
                m.shown
            )));
        }
        out.parents(&target[..target.len() - 1], true)?;
        out.entry(&target, &m.node, plan.chmod)?;
    }
    Ok(())
}

/// What is being written, and which directories are already in the layer.
struct Out<'a> {
    w: &'a mut LayerWriter,
    image: &'a Rootfs,
    made: BTreeSet<Vec<String>>,
    owner: Option<(u32, u32)>,
    now: u64,
}

impl Out<'_> {
    fn owned(&self, mut meta: EntryMeta) -> EntryMeta {
        let (uid, gid) = self.owner.unwrap_or((0, 0));
        meta.uid = uid;
        meta.gid = gid;
        meta
    }

    /// Makes sure `dir` and its parents are in the layer: existing directories of the image
    /// with their metadata, missing ones as new 0755 directories (owned like the copy when
    /// `owned_new`).
    fn parents(&mut self, dir: &[String], owned_new: bool) -> Result<(), CopyError> {
        for i in 1..=dir.len() {
            let prefix = dir[..i].to_vec();
            if self.made.contains(&prefix) {
                continue;
            }
            let path = prefix.join("/");
            let meta = match self.image.entry(&prefix)? {
                Some(n) if n.is_dir() => EntryMeta::of(&n.meta),
                _ => {
                    let fresh = EntryMeta {
                        mode: 0o755,
                        uid: 0,
                        gid: 0,
                        mtime: self.now,
                    };
                    if owned_new {
                        self.owned(fresh)
                    } else {
                        fresh
                    }
                }
            };
            self.w
                .dir(&path, meta)
                .map_err(io_err(format!("write the layer entry {path}")))?;
            self.made.insert(prefix);
        }
        Ok(())
    }

    /// One copied entry (not a directory's content).
    fn entry(
        &mut self,
        target: &[String],
        node: &Node,
        chmod: Option<u32>,
    ) -> Result<(), CopyError> {
        let path = target.join("/");
        let mut meta = self.owned(EntryMeta::of(&node.meta));
        if let Some(m) = chmod {
            if !node.is_symlink() {
                meta.mode = m;
            }
        }
        let fail = io_err(format!("write the layer entry {path}"));
        if node.is_dir() {
            self.made.insert(target.to_vec());
            self.w.dir(&path, meta).map_err(fail)
        } else if node.is_symlink() {
            let link = std::fs::read_link(&node.host_path)
                .map_err(io_err(format!("read link {}", node.host_path.display())))?;
            self.w.symlink(&path, meta, &link).map_err(fail)
        } else if node.is_file() {
            let f = File::open(&node.host_path)
                .map_err(io_err(format!("open {}", node.host_path.display())))?;
            self.w.file(&path, meta, node.meta.len(), f).map_err(fail)
        } else if node.meta.file_type().is_fifo() {
            self.w.fifo(&path, meta).map_err(fail)
        } else {
            // Sockets and the like are not copied (Docker skips them too).
            Ok(())
        }
    }
}

/// Copies the content of directory `from` (in `src`) into `to`.
fn copy_tree(
    src: &Rootfs,
    from: &[String],
    to: &[String],
    plan: &CopyPlan,
    out: &mut Out<'_>,
) -> Result<(), CopyError> {
    for (name, node) in src.read_dir(from)? {
        let mut f = from.to_vec();
        f.push(name.clone());
        let mut t = to.to_vec();
        t.push(name);
        out.entry(&t, &node, plan.chmod)?;
        if node.is_dir() {
            copy_tree(src, &f, &t, plan, out)?;
        }
    }
    Ok(())
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ArchiveKind {
    Tar,
    Gzip,
    Zstd,
}

/// Whether a file is a tar archive ADD extracts: by its magic bytes (gzip, zstd) or the tar
/// header's `ustar` mark. bzip2 and xz archives are an error (not supported).
fn archive_kind(path: &Path) -> Result<Option<ArchiveKind>, CopyError> {
    let mut head = [0u8; 512];
    let mut f = File::open(path).map_err(io_err(format!("open {}", path.display())))?;
    let mut n = 0;
    while n < head.len() {
        let r = f
            .read(&mut head[n..])
            .map_err(io_err(format!("read {}", path.display())))?;
        if r == 0 {
            break;
        }
        n += r;
    }
    let head = &head[..n];
    if head.starts_with(&[0x1f, 0x8b]) {
        return Ok(Some(ArchiveKind::Gzip));
    }
    if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        return Ok(Some(ArchiveKind::Zstd));
    }
    if head.starts_with(b"BZh") || head.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0]) {
        return Err(CopyError::Invalid(format!(
            "{}: bzip2 and xz archives are not supported by ADD here; use a plain, gzip or \
             zstd tar (or COPY it and RUN tar)",
            path.display()
        )));
    }
    if n == 512 && &head[257..262] == b"ustar" {
        return Ok(Some(ArchiveKind::Tar));
    }
    Ok(None)
}

/// Extracts a local archive into `dest`, refusing entries that would leave it.
fn extract(
    path: &Path,
    kind: ArchiveKind,
    dest: &[String],
    out: &mut Out<'_>,
) -> Result<(), CopyError> {
    let file = File::open(path).map_err(io_err(format!("open {}", path.display())))?;
    let reader: Box<dyn Read> = match kind {
        ArchiveKind::Tar => Box::new(file),
        ArchiveKind::Gzip => Box::new(flate2::read::MultiGzDecoder::new(file)),
        ArchiveKind::Zstd => Box::new(
            zstd::stream::read::Decoder::new(file)
                .map_err(io_err(format!("decompress {}", path.display())))?,
        ),
    };
    let mut archive = tar::Archive::new(reader);
    let bad = |what: String| CopyError::Invalid(what);
    let entries = archive
        .entries()
        .map_err(io_err(format!("read the archive {}", path.display())))?;
    for entry in entries {
        let mut entry = entry.map_err(io_err(format!("read the archive {}", path.display())))?;
        let raw = entry
            .path()
            .map_err(io_err("read an entry name"))?
            .to_string_lossy()
            .into_owned();
        let rel = components(&raw);
        if rel.iter().any(|c| c == "..") {
            return Err(bad(format!(
                "the archive entry {raw:?} points outside the destination"
            )));
        }
        if rel.is_empty() {
            continue;
        }
        if rel.last().is_some_and(|n| n.starts_with(".wh.")) {
            return Err(bad(format!(
                "the archive entry {raw:?} has a whiteout name (.wh.), which a layer would \
                 read as a deletion"
            )));
        }
        let mut target = dest.to_vec();
        target.extend(rel.iter().cloned());
        let h = entry.header();
        let meta = EntryMeta {
            mode: h.mode().unwrap_or(0o644) & 0o7777,
            uid: u32::try_from(h.uid().unwrap_or(0)).unwrap_or(0),
            gid: u32::try_from(h.gid().unwrap_or(0)).unwrap_or(0),
            mtime: h.mtime().unwrap_or(0),
        };
        let kind = h.entry_type();
        out.parents(&target[..target.len() - 1], false)?;
        let p = target.join("/");
        let fail = io_err(format!("write the layer entry {p}"));
        match kind {
            tar::EntryType::Directory => {
                if out.made.insert(target.clone()) {
                    out.w.dir(&p, meta).map_err(fail)?;
                }
            }
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                let size = entry.size();
                out.w.file(&p, meta, size, &mut entry).map_err(fail)?;
            }
            tar::EntryType::Symlink => {
                let link = entry
                    .link_name()
                    .map_err(io_err("read a link name"))?
                    .unwrap_or_default()
                    .into_owned();
                out.w.symlink(&p, meta, &link).map_err(fail)?;
            }
            tar::EntryType::Link => {
                let link = entry
                    .link_name()
                    .map_err(io_err("read a link name"))?
                    .unwrap_or_default()
                    .to_string_lossy()
                    .into_owned();
                let lrel = components(&link);
                if lrel.is_empty() || lrel.iter().any(|c| c == "..") {
                    return Err(bad(format!(
                        "the archive's hard link {raw:?} -> {link:?} points outside the \
                         destination"
                    )));
                }
                let mut lt = dest.to_vec();
                lt.extend(lrel);
                out.w.hardlink(&p, meta, &lt.join("/")).map_err(fail)?;
            }
            tar::EntryType::Fifo => out.w.fifo(&p, meta).map_err(fail)?,
            tar::EntryType::XGlobalHeader | tar::EntryType::XHeader => {}
            other => {
                return Err(bad(format!(
                    "the archive entry {raw:?} is a {other:?}, which ADD does not extract"
                )))
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::{symlink, PermissionsExt};

    fn plan(sources: &[&str], dest: &str, dest_is_dir: bool) -> CopyPlan {
        CopyPlan {
            add: false,
            sources: sources.iter().map(|s| s.to_string()).collect(),
            dest: dest.into(),
            dest_is_dir,
            from: None,
            chown: None,
            chmod: None,
        }
    }

    struct Fixture {
        t: tempfile::TempDir,
    }

    impl Fixture {
        fn new() -> Fixture {
            let t = tempfile::tempdir().expect("tempdir");
            let ctx = t.path().join("ctx");
            fs::create_dir_all(ctx.join("src/sub")).expect("mkdir");
            fs::write(ctx.join("a.txt"), "A").expect("write");
            fs::write(ctx.join("b.txt"), "B").expect("write");
            fs::write(ctx.join("src/main.c"), "int main;").expect("write");
            fs::write(ctx.join("src/sub/x"), "X").expect("write");
            symlink("main.c", ctx.join("src/link")).expect("symlink");
            let img = t.path().join("img");
            fs::create_dir_all(img.join("etc")).expect("mkdir");
            fs::create_dir_all(img.join("usr/local")).expect("mkdir");
            fs::set_permissions(img.join("usr"), fs::Permissions::from_mode(0o750)).expect("chmod");
            symlink("/usr/local", img.join("loc")).expect("symlink");
            fs::write(
                img.join("etc/passwd"),
                "root:x:0:0::/root:/bin/sh\napp:x:1000:1001::/home/app:/bin/sh\n",
            )
            .expect("write");
            fs::write(img.join("etc/group"), "root:x:0:\nstaff:x:50:\n").expect("write");
            Fixture { t }
        }
        fn ctx(&self) -> Rootfs {
            Rootfs::context(&self.t.path().join("ctx"))
        }
        fn img(&self) -> Rootfs {
            Rootfs::new(
                vec![self.t.path().join("img")],
                super::super::rootfs::Scope::Image,
            )
        }
        fn copy(&self, p: &CopyPlan) -> Result<Vec<(String, u32, u32, u32)>, CopyError> {
            let src = self.ctx();
            let sources = find_sources(p, &src)?;
            let owner = p
                .chown
                .as_deref()
                .map(|c| resolve_owner(c, &self.img()))
                .transpose()?;
            let mut w = LayerWriter::create(self.t.path()).expect("writer");
            write_copy(p, &src, &sources, &self.img(), owner, &mut w)?;
            let done = w.finish().expect("finish");
            let mut a = tar::Archive::new(File::open(&done.path).expect("open"));
            Ok(a.entries()
                .expect("entries")
                .map(|e| {
                    let e = e.expect("entry");
                    let h = e.header();
                    (
                        e.path().expect("path").to_string_lossy().into_owned(),
                        h.mode().expect("mode") & 0o7777,
                        h.uid().expect("uid") as u32,
                        h.gid().expect("gid") as u32,
                    )
                })
                .collect())
        }
    }

    fn names(v: &[(String, u32, u32, u32)]) -> Vec<&str> {
        v.iter().map(|e| e.0.as_str()).collect()
    }

    #[test]
    fn build_copy_file_to_file_and_into_dirs() {
        let f = Fixture::new();
        let got = f.copy(&plan(&["a.txt"], "/opt/new.txt", false)).unwrap();
        assert_eq!(names(&got), ["opt/", "opt/new.txt"]);
        let got = f.copy(&plan(&["a.txt"], "/opt", true)).unwrap();
        assert_eq!(names(&got), ["opt/", "opt/a.txt"]);
        // An existing directory receives the file even without a trailing slash; its
        // metadata is kept.
        let got = f.copy(&plan(&["/a.txt"], "/usr", false)).unwrap();
        assert_eq!(names(&got), ["usr/", "usr/a.txt"]);
        assert_eq!(got[0].1, 0o750);
        // Destination symlinks are followed inside the image.
        let got = f.copy(&plan(&["a.txt"], "/loc/", true)).unwrap();
        assert_eq!(names(&got), ["usr/", "usr/local/", "usr/local/a.txt"]);
    }

    #[test]
    fn build_copy_directory_copies_its_content() {
        let f = Fixture::new();
        let got = f.copy(&plan(&["src"], "/app", false)).unwrap();
        assert_eq!(
            names(&got),
            ["app/", "app/link", "app/main.c", "app/sub/", "app/sub/x"]
        );
    }

    #[test]
    fn build_copy_globs_and_several_sources() {
        let f = Fixture::new();
        let got = f.copy(&plan(&["*.txt"], "/d/", true)).unwrap();
        assert_eq!(names(&got), ["d/", "d/a.txt", "d/b.txt"]);
        let got = f.copy(&plan(&["src/*.c", "b.txt"], "/d/", true)).unwrap();
        assert_eq!(names(&got), ["d/", "d/main.c", "d/b.txt"]);
        let e = f.copy(&plan(&["*.txt"], "/d", false)).unwrap_err();
        assert!(e.to_string().contains("must be a directory"), "{e}");
        let e = f.copy(&plan(&["*.none"], "/d/", true)).unwrap_err();
        assert!(e.to_string().contains("no source files"), "{e}");
    }

    #[test]
    fn build_copy_refuses_escapes_and_missing_sources() {
        let f = Fixture::new();
        let ctx = f.t.path().join("ctx");
        symlink("/etc/shadow", ctx.join("evil")).expect("symlink");
        symlink("../img/etc/passwd", ctx.join("up")).expect("symlink");
        for (src, what) in [
            ("../x", "outside the build context"),
            ("evil", "outside the build context"),
            ("up", "outside the build context"),
            ("nope", "not found"),
        ] {
            let e = f.copy(&plan(&[src], "/d", false)).unwrap_err();
            assert!(e.to_string().contains(what), "{src}: {e}");
        }
        // A symlink inside the context is followed when named.
        let got = f.copy(&plan(&["src/link"], "/l", false)).unwrap();
        assert_eq!(names(&got), ["l"]);
    }

    #[test]
    fn build_copy_chown_and_chmod() {
        let f = Fixture::new();
        let mut p = plan(&["src"], "/app", false);
        p.chown = Some("app:staff".into());
        p.chmod = Some(0o700);
        let got = f.copy(&p).unwrap();
        for (name, mode, uid, gid) in &got {
            assert_eq!((*uid, *gid), (1000, 50), "{name}");
            // The destination directory is made (0755); the copied entries get the mode.
            if name != "app/link" && name != "app/" {
                assert_eq!(*mode, 0o700, "{name}");
            }
        }
        assert_eq!(resolve_owner("app", &f.img()).unwrap(), (1000, 1000));
        assert_eq!(resolve_owner("7:8", &f.img()).unwrap(), (7, 8));
        assert_eq!(resolve_owner("root:50", &f.img()).unwrap(), (0, 50));
        let e = resolve_owner("ghost", &f.img()).unwrap_err();
        assert!(e.to_string().contains("unable to find user"), "{e}");
        let e = resolve_owner("app:ghosts", &f.img()).unwrap_err();
        assert!(e.to_string().contains("group"), "{e}");
        // Without --chown, everything is 0:0.
        let got = f.copy(&plan(&["a.txt"], "/x", false)).unwrap();
        assert_eq!((got[0].2, got[0].3), (0, 0));
    }

    fn make_tar(entries: &[(&str, &[u8])]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (name, data) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o640);
            h.set_uid(5);
            // Raw names: the tar crate refuses to write `..` itself.
            h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
            h.set_cksum();
            b.append(&h, *data).expect("append");
        }
        b.into_inner().expect("tar")
    }

    #[test]
    fn build_copy_add_extracts_archives() {
        let f = Fixture::new();
        let ctx = f.t.path().join("ctx");
        let tar = make_tar(&[("pkg/a", b"1"), ("pkg/b/c", b"2")]);
        fs::write(ctx.join("p.tar"), &tar).expect("write");
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        io::Write::write_all(&mut gz, &tar).expect("gzip");
        fs::write(ctx.join("p.tar.gz"), gz.finish().expect("gzip")).expect("write");
        for src in ["p.tar", "p.tar.gz"] {
            let mut p = plan(&[src], "/opt", false);
            p.add = true;
            let got = f.copy(&p).unwrap();
            assert_eq!(
                names(&got),
                ["opt/", "opt/pkg/", "opt/pkg/a", "opt/pkg/b/", "opt/pkg/b/c"],
                "{src}"
            );
            assert_eq!((got[2].1, got[2].2), (0o640, 5), "archive metadata kept");
        }
        // COPY does not extract.
        let got = f.copy(&plan(&["p.tar"], "/opt/", true)).unwrap();
        assert_eq!(names(&got), ["opt/", "opt/p.tar"]);
        // A plain file given to ADD is copied.
        let mut p = plan(&["a.txt"], "/opt/", true);
        p.add = true;
        assert_eq!(names(&f.copy(&p).unwrap()), ["opt/", "opt/a.txt"]);
        // Entries that climb out are refused.
        fs::write(ctx.join("evil.tar"), make_tar(&[("../../etc/x", b"e")])).expect("write");
        let mut p = plan(&["evil.tar"], "/opt", false);
        p.add = true;
        let e = f.copy(&p).unwrap_err();
        assert!(e.to_string().contains("outside the destination"), "{e}");
        fs::write(ctx.join("x.bz2"), b"BZh91AY&SY").expect("write");
        let mut p = plan(&["x.bz2"], "/opt", false);
        p.add = true;
        assert!(f.copy(&p).unwrap_err().to_string().contains("bzip2"));
    }

    #[test]
    fn build_copy_hash_follows_content_and_modes() {
        let f = Fixture::new();
        let ctx = f.ctx();
        let p = plan(&["src", "a.txt"], "/d/", true);
        let h1 = hash_sources(&ctx, &find_sources(&p, &ctx).unwrap()).unwrap();
        let h2 = hash_sources(&ctx, &find_sources(&p, &ctx).unwrap()).unwrap();
        assert_eq!(h1, h2);
        let root = f.t.path().join("ctx");
        fs::write(root.join("src/sub/x"), "changed").expect("write");
        let h3 = hash_sources(&ctx, &find_sources(&p, &ctx).unwrap()).unwrap();
        assert_ne!(h1, h3);
        fs::set_permissions(root.join("a.txt"), fs::Permissions::from_mode(0o600)).expect("chmod");
        let h4 = hash_sources(&ctx, &find_sources(&p, &ctx).unwrap()).unwrap();
        assert_ne!(h3, h4);
    }
}
