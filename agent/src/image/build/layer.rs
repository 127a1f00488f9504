//! Writing a build step's layer: an uncompressed tar (the OCI layer format, whiteouts as
//! `.wh.` files), hashed while it is written so that its diff id is known at the end.
//!
//! - [`LayerWriter`]: entries in, a tar file under the store's `tmp/` out.
//! - [`diff_upper`]: what a `RUN` changed (its overlay upper directory) as layer entries:
//!   overlay's whiteouts (character devices 0:0) become `.wh.NAME`, opaque directories
//!   (`trusted.overlay.opaque=y`) get `.wh..wh..opq`, files hard-linked together stay linked.
//!   The mount points the runtime makes in a container whose image lacks them (`/proc`, `/sys`,
//!   `/dev`, and `/etc/hosts`, `/etc/hostname`, `/etc/resolv.conf`, which are bind-mounted) are
//!   left out, as Docker leaves them out. Overlay's `redirect_dir` and `metacopy` features
//!   (off by default, and not used by the runtime's mounts) would need the lower layers to make
//!   a layer; an upper directory that uses them is refused.

use std::collections::{BTreeSet, HashMap};
use std::ffi::CString;
use std::fs::{self, File, Metadata};
use std::io::{self, BufWriter, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::rootfs::{is_opaque, is_whiteout, Rootfs};

/// Metadata of one layer entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EntryMeta {
    /// Permission bits (with setuid/setgid/sticky).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// Seconds since the epoch.
    pub mtime: u64,
}

impl EntryMeta {
    pub fn of(meta: &Metadata) -> EntryMeta {
        EntryMeta {
            mode: meta.mode() & 0o7777,
            uid: meta.uid(),
            gid: meta.gid(),
            mtime: u64::try_from(meta.mtime()).unwrap_or(0),
        }
    }
}

/// The layer being written.
pub struct LayerWriter {
    /// Taken by `finish`.
    builder: Option<tar::Builder<Hashing<BufWriter<File>>>>,
    path: PathBuf,
    entries: u64,
    done: bool,
}

/// A finished layer tar.
#[derive(Debug)]
pub struct WrittenLayer {
    pub path: PathBuf,
    /// `sha256:<hex>`: the diff id (and, as the tar is stored uncompressed, the blob digest).
    pub digest: String,
    pub size: u64,
}

struct Hashing<W> {
    inner: W,
    hasher: Sha256,
    size: u64,
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.size += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

fn header(kind: tar::EntryType, meta: EntryMeta, size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(meta.mode);
    h.set_uid(u64::from(meta.uid));
    h.set_gid(u64::from(meta.gid));
    h.set_mtime(meta.mtime);
    h.set_size(size);
    h
}

impl LayerWriter {
    /// A new layer file in `dir` (the store's `tmp/`).
    pub fn create(dir: &Path) -> io::Result<LayerWriter> {
        let path = dir.join(format!("layer-{}.tar", uuid::Uuid::new_v4().simple()));
        let file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)?;
        let mut builder = tar::Builder::new(Hashing {
            inner: BufWriter::with_capacity(1 << 20, file),
            hasher: Sha256::new(),
            size: 0,
        });
        builder.mode(tar::HeaderMode::Complete);
        Ok(LayerWriter {
            builder: Some(builder),
            path,
            entries: 0,
            done: false,
        })
    }

    /// Entries written so far.
    pub fn entries(&self) -> u64 {
        self.entries
    }

    pub fn dir(&mut self, path: &str, meta: EntryMeta) -> io::Result<()> {
        let mut h = header(tar::EntryType::Directory, meta, 0);
        self.entries += 1;
        self.b()?.append_data(
            &mut h,
            format!("{}/", path.trim_end_matches('/')),
            io::empty(),
        )
    }

    pub fn file(
        &mut self,
        path: &str,
        meta: EntryMeta,
        size: u64,
        content: impl Read,
    ) -> io::Result<()> {
        let mut h = header(tar::EntryType::Regular, meta, size);
        self.entries += 1;
        // A file that changes size while it is read would make a corrupt tar: take exactly
        // `size` bytes, and fail if fewer come.
        let mut limited = content.take(size);
        let mut counting = CountingReader {
            inner: &mut limited,
            n: 0,
        };
        self.b()?.append_data(&mut h, path, &mut counting)?;
        if counting.n != size {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("{path} shrank while it was read"),
            ));
        }
        Ok(())
    }

    pub fn symlink(&mut self, path: &str, meta: EntryMeta, target: &Path) -> io::Result<()> {
        let mut h = header(tar::EntryType::Symlink, meta, 0);
        self.entries += 1;
        self.b()?.append_link(&mut h, path, target)
    }

    pub fn hardlink(&mut self, path: &str, meta: EntryMeta, target: &str) -> io::Result<()> {
        let mut h = header(tar::EntryType::Link, meta, 0);
        self.entries += 1;
        self.b()?.append_link(&mut h, path, target)
    }

    pub fn fifo(&mut self, path: &str, meta: EntryMeta) -> io::Result<()> {
        let mut h = header(tar::EntryType::Fifo, meta, 0);
        self.entries += 1;
        self.b()?.append_data(&mut h, path, io::empty())
    }

    /// `.wh.NAME` beside `path`: `path` is deleted in this layer.
    pub fn whiteout(&mut self, path: &str) -> io::Result<()> {
        let (dir, name) = split_parent(path);
        let wh = if dir.is_empty() {
            format!(".wh.{name}")
        } else {
            format!("{dir}/.wh.{name}")
        };
        let meta = EntryMeta {
            mode: 0o644,
            uid: 0,
            gid: 0,
            mtime: 0,
        };
        self.file(&wh, meta, 0, io::empty())
    }

    /// `DIR/.wh..wh..opq`: the lower layers' content of `dir` is hidden.
    pub fn opaque(&mut self, dir: &str) -> io::Result<()> {
        let meta = EntryMeta {
            mode: 0o644,
            uid: 0,
            gid: 0,
            mtime: 0,
        };
        let path = if dir.is_empty() {
            ".wh..wh..opq".to_string()
        } else {
            format!("{dir}/.wh..wh..opq")
        };
        self.file(&path, meta, 0, io::empty())
    }

    fn b(&mut self) -> io::Result<&mut tar::Builder<Hashing<BufWriter<File>>>> {
        self.builder
            .as_mut()
            .ok_or_else(|| io::Error::other("the layer is already finished"))
    }

    /// Ends the archive, flushes it to disk and returns its digest.
    pub fn finish(mut self) -> io::Result<WrittenLayer> {
        let mut builder = self
            .builder
            .take()
            .ok_or_else(|| io::Error::other("the layer is already finished"))?;
        builder.finish()?;
        let mut hashing = builder.into_inner()?;
        hashing.flush()?;
        let file = hashing
            .inner
            .into_inner()
            .map_err(|e| io::Error::other(e.to_string()))?;
        file.sync_all()?;
        self.done = true;
        Ok(WrittenLayer {
            path: self.path.clone(),
            digest: format!("sha256:{}", hex::encode(hashing.hasher.finalize())),
            size: hashing.size,
        })
    }
}

impl Drop for LayerWriter {
    fn drop(&mut self) {
        if !self.done {
            let _ = fs::remove_file(&self.path);
        }
    }
}

struct CountingReader<'a, R> {
    inner: &'a mut R,
    n: u64,
}

impl<R: Read> Read for CountingReader<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.n += n as u64;
        Ok(n)
    }
}

/// (`a/b`, `c`) of `a/b/c`; (``, `c`) of `c`.
pub fn split_parent(path: &str) -> (&str, &str) {
    match path.rsplit_once('/') {
        Some((d, n)) => (d, n),
        None => ("", path),
    }
}

/// Why a `RUN`'s changes cannot become a layer.
#[derive(Debug, thiserror::Error)]
pub enum DiffError {
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("the command created {what} at /{path}, which an image layer cannot hold")]
    Unsupported { path: String, what: &'static str },
    #[error(
        "/{path} uses overlayfs {feature}: turn it off for the overlay module \
         (e.g. `options overlay redirect_dir=off metacopy=off`) to build here"
    )]
    OverlayFeature { path: String, feature: &'static str },
}

fn has_xattr(path: &Path, name: &std::ffi::CStr) -> bool {
    let Ok(c) = CString::new(path.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: valid NUL-terminated strings; a zero-length query only returns the size.
    let n = unsafe { libc::lgetxattr(c.as_ptr(), name.as_ptr(), std::ptr::null_mut(), 0) };
    n >= 0
}

/// Paths the runtime makes as mount points when the image lacks them (see the module docs).
const MOUNT_POINT_DIRS: [&str; 3] = ["dev", "proc", "sys"];
const MOUNT_POINT_FILES: [&str; 3] = ["etc/hosts", "etc/hostname", "etc/resolv.conf"];

/// Writes what the upper directory `upper` holds (a `RUN`'s changes over `lower`) into `w`.
pub fn diff_upper(upper: &Path, lower: &Rootfs, w: &mut LayerWriter) -> Result<(), DiffError> {
    let mut skip: BTreeSet<String> = BTreeSet::new();
    let absent_below = |rel: &str| -> bool {
        let comps: Vec<String> = rel.split('/').map(str::to_string).collect();
        matches!(lower.entry(&comps), Ok(None))
    };
    for d in MOUNT_POINT_DIRS {
        let p = upper.join(d);
        let empty_dir = fs::symlink_metadata(&p).is_ok_and(|m| m.is_dir())
            && fs::read_dir(&p).is_ok_and(|mut r| r.next().is_none());
        if empty_dir && absent_below(d) {
            skip.insert(d.to_string());
        }
    }
    for f in MOUNT_POINT_FILES {
        let p = upper.join(f);
        let empty_file = fs::symlink_metadata(&p).is_ok_and(|m| m.is_file() && m.len() == 0);
        if empty_file && absent_below(f) {
            skip.insert(f.to_string());
        }
    }
    // /etc itself, when it exists only to hold those mount points.
    let etc = upper.join("etc");
    if fs::symlink_metadata(&etc).is_ok_and(|m| m.is_dir()) && absent_below("etc") {
        let only_mount_points = fs::read_dir(&etc).is_ok_and(|entries| {
            entries
                .flatten()
                .all(|e| skip.contains(&format!("etc/{}", e.file_name().to_string_lossy())))
        });
        if only_mount_points {
            skip.insert("etc".into());
        }
    }
    let mut links: HashMap<(u64, u64), String> = HashMap::new();
    walk(upper, "", &skip, &mut links, w)
}

fn walk(
    dir: &Path,
    rel: &str,
    skip: &BTreeSet<String>,
    links: &mut HashMap<(u64, u64), String>,
    w: &mut LayerWriter,
) -> Result<(), DiffError> {
    let mut names: Vec<std::ffi::OsString> = fs::read_dir(dir)?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<io::Result<_>>()?;
    names.sort();
    for name in names {
        let name_s = name.to_string_lossy().into_owned();
        let rel_path = if rel.is_empty() {
            name_s.clone()
        } else {
            format!("{rel}/{name_s}")
        };
        if skip.contains(&rel_path) {
            continue;
        }
        let host = dir.join(&name);
        let meta = fs::symlink_metadata(&host)?;
        let ft = meta.file_type();
        if has_xattr(&host, c"trusted.overlay.redirect") {
            return Err(DiffError::OverlayFeature {
                path: rel_path,
                feature: "redirect_dir",
            });
        }
        if has_xattr(&host, c"trusted.overlay.metacopy") {
            return Err(DiffError::OverlayFeature {
                path: rel_path,
                feature: "metacopy",
            });
        }
        let em = EntryMeta::of(&meta);
        if is_whiteout(&meta) {
            w.whiteout(&rel_path)?;
        } else if ft.is_dir() {
            w.dir(&rel_path, em)?;
            if is_opaque(&host) {
                w.opaque(&rel_path)?;
            }
            walk(&host, &rel_path, skip, links, w)?;
        } else if ft.is_symlink() {
            let target = fs::read_link(&host)?;
            w.symlink(&rel_path, em, &target)?;
        } else if ft.is_file() {
            let key = (meta.dev(), meta.ino());
            if meta.nlink() > 1 {
                if let Some(first) = links.get(&key) {
                    let first = first.clone();
                    w.hardlink(&rel_path, em, &first)?;
                    continue;
                }
                links.insert(key, rel_path.clone());
            }
            let f = File::open(&host)?;
            w.file(&rel_path, em, meta.len(), f)?;
        } else if ft.is_fifo() {
            w.fifo(&rel_path, em)?;
        } else if ft.is_socket() {
            // A socket a process left behind: meaningless in an image (Docker drops them too).
            continue;
        } else {
            return Err(DiffError::Unsupported {
                path: rel_path,
                what: "a device node",
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::build::rootfs::Scope;

    fn entries(path: &Path) -> Vec<(String, tar::EntryType)> {
        let mut a = tar::Archive::new(File::open(path).expect("open"));
        a.entries()
            .expect("entries")
            .map(|e| {
                let e = e.expect("entry");
                (
                    e.path().expect("path").to_string_lossy().into_owned(),
                    e.header().entry_type(),
                )
            })
            .collect()
    }

    #[test]
    fn build_layer_writer_hashes_what_it_writes() {
        let t = tempfile::tempdir().expect("tempdir");
        let mut w = LayerWriter::create(t.path()).expect("create");
        let m = EntryMeta {
            mode: 0o755,
            uid: 0,
            gid: 0,
            mtime: 1,
        };
        w.dir("app", m).expect("dir");
        w.file("app/x", m, 3, &b"abc"[..]).expect("file");
        let long = format!("app/{}", "n".repeat(150));
        w.file(&long, m, 0, io::empty()).expect("long name");
        w.symlink("app/l", m, Path::new("/x")).expect("symlink");
        w.whiteout("app/gone").expect("whiteout");
        w.opaque("app").expect("opaque");
        assert!(
            w.file("app/short", m, 10, &b"abc"[..]).is_err(),
            "short read"
        );
        let done = w.finish().expect("finish");
        let bytes = fs::read(&done.path).expect("read");
        assert_eq!(
            done.digest,
            format!("sha256:{}", hex::encode(Sha256::digest(&bytes)))
        );
        assert_eq!(done.size, bytes.len() as u64);
        let names: Vec<String> = entries(&done.path).into_iter().map(|e| e.0).collect();
        assert_eq!(names[..3], ["app/", "app/x", long.as_str()]);
        assert!(names.contains(&"app/.wh.gone".to_string()));
        assert!(names.contains(&"app/.wh..wh..opq".to_string()));
    }

    #[test]
    fn build_layer_writer_drop_removes_the_file() {
        let t = tempfile::tempdir().expect("tempdir");
        let w = LayerWriter::create(t.path()).expect("create");
        let path = w.path.clone();
        assert!(path.exists());
        drop(w);
        assert!(!path.exists());
    }

    #[test]
    fn build_layer_diff_skips_mount_points_and_keeps_links() {
        let t = tempfile::tempdir().expect("tempdir");
        let lower = t.path().join("lower");
        fs::create_dir_all(lower.join("etc")).expect("mkdir");
        fs::create_dir_all(lower.join("dev")).expect("mkdir");
        fs::write(lower.join("etc/hostname"), "").expect("write");
        let upper = t.path().join("upper");
        for d in ["proc", "sys", "dev", "etc", "app"] {
            fs::create_dir_all(upper.join(d)).expect("mkdir");
        }
        for f in ["etc/hosts", "etc/resolv.conf", "etc/hostname"] {
            fs::write(upper.join(f), "").expect("write");
        }
        fs::write(upper.join("app/a"), "data").expect("write");
        fs::hard_link(upper.join("app/a"), upper.join("app/b")).expect("link");
        std::os::unix::fs::symlink("a", upper.join("app/s")).expect("symlink");
        let lower_fs = Rootfs::new(vec![lower], Scope::Image);
        let mut w = LayerWriter::create(t.path()).expect("create");
        diff_upper(&upper, &lower_fs, &mut w).expect("diff");
        let done = w.finish().expect("finish");
        let got = entries(&done.path);
        let names: Vec<&str> = got.iter().map(|(n, _)| n.as_str()).collect();
        // /dev and /etc exist below (kept as copied-up dirs); /etc/hostname existed below,
        // so its (empty) upper copy is a real change; hosts/resolv.conf are mount points.
        assert_eq!(
            names,
            [
                "app/",
                "app/a",
                "app/b",
                "app/s",
                "dev/",
                "etc/",
                "etc/hostname"
            ]
        );
        assert_eq!(got[2].1, tar::EntryType::Link);
    }

    #[test]
    fn build_layer_diff_whiteouts_and_opaque() {
        if !nix::unistd::geteuid().is_root() {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "whiteouts need root, and CI=true: failing rather than skipping"
            );
            return;
        }
        let t = tempfile::tempdir().expect("tempdir");
        let upper = t.path().join("upper");
        fs::create_dir_all(upper.join("data")).expect("mkdir");
        nix::sys::stat::mknod(
            &upper.join("gone"),
            nix::sys::stat::SFlag::S_IFCHR,
            nix::sys::stat::Mode::empty(),
            0,
        )
        .expect("mknod");
        let c = CString::new(upper.join("data").as_os_str().as_bytes()).expect("c");
        // SAFETY: valid C strings and buffer.
        let rc = unsafe {
            libc::lsetxattr(
                c.as_ptr(),
                c"trusted.overlay.opaque".as_ptr(),
                b"y".as_ptr().cast(),
                1,
                0,
            )
        };
        assert_eq!(rc, 0);
        let lower_fs = Rootfs::new(vec![t.path().join("none")], Scope::Image);
        fs::create_dir_all(t.path().join("none")).expect("mkdir");
        let mut w = LayerWriter::create(t.path()).expect("create");
        diff_upper(&upper, &lower_fs, &mut w).expect("diff");
        let done = w.finish().expect("finish");
        let names: Vec<String> = entries(&done.path).into_iter().map(|e| e.0).collect();
        assert_eq!(names, ["data/", "data/.wh..wh..opq", ".wh.gone"]);
    }
}
