//! Unpacking a layer tarball into a directory, safely.
//!
//! The tarball is untrusted. What this module guarantees, whatever the archive contains:
//!
//! - nothing is written outside the destination: `..` components are refused, absolute paths are
//!   taken relative to the layer root, and every path is walked component by component with
//!   `lstat`, refusing to go through a symlink (so `a -> /etc` then `a/passwd` is refused; an
//!   entry that *replaces* `a` itself is fine, the old symlink is unlinked, never followed);
//! - files are created with `O_CREAT|O_EXCL|O_NOFOLLOW` after unlinking whatever was there, so a
//!   later entry never writes through an earlier symlink or hardlink;
//! - hardlinks must point at an entry already in the layer (a missing or escaping target is
//!   refused) and never at a directory;
//! - device nodes are refused (the runtime provides `/dev`); FIFOs are allowed;
//! - a decompression bomb is bounded: the uncompressed stream and the sum of file sizes (sparse
//!   files at full size) are capped by [`ImportLimits::max_bytes`], the entry count by
//!   [`ImportLimits::max_entries`], the expansion by [`ImportLimits::max_ratio`] (past the first
//!   [`ImportLimits::ratio_floor`] bytes, the uncompressed stream may not outgrow the compressed
//!   bytes read so far by more than that factor), and the metadata the tar reader buffers for one
//!   entry (PAX and GNU long-name headers) by 1 MiB.
//!
//! Layers may be plain, gzip or zstd (detected by magic bytes, whatever the media type says).
//! Whiteouts are turned into what overlayfs reads: `dir/.wh.NAME` becomes a character device
//! 0:0 at `dir/NAME` (after removing whatever an earlier entry of the same layer put there), and
//! `dir/.wh..wh..opq` sets `trusted.overlay.opaque=y` on `dir` (hiding the lower layers' content,
//! not this layer's). Other `.wh..wh.*` names (aufs metadata) are skipped. Both need root
//! (CAP_MKNOD, CAP_SYS_ADMIN), as overlay mounts do.
//!
//! Modes (including setuid/setgid/sticky), mtimes, symlinks and hardlinks are preserved; owners
//! too when running as root (unprivileged, files belong to the caller, as with GNU tar).
//! Directory modes and mtimes are applied at the end, deepest first, so that a read-only
//! directory can still receive its entries. Extended attributes (`SCHILY.xattr.*`, e.g. file
//! capabilities) are not applied yet.
//!
//! The layer digest (the OCI "diff id") is the sha256 of the whole uncompressed tar stream,
//! trailing padding included, computed while streaming.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fs::{self, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::rc::Rc;

use nix::sys::stat::{utimensat, Mode, UtimensatFlags};
use nix::sys::time::TimeSpec;
use sha2::{Digest, Sha256};
use tar::EntryType;

use super::error::ImageError;
use super::fsutil::{remove_tree, start_writeback};

/// Bounds on what one import may unpack (decompression bombs, runaway archives).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ImportLimits {
    /// Cap on the uncompressed tar stream (headers included) and, separately, on the sum of the
    /// sizes of the files it contains. Default: 16 GiB.
    pub max_bytes: u64,
    /// Cap on the number of entries. Default: 1 000 000 (a full distribution has ~100 000).
    pub max_entries: u64,
    /// Cap on the expansion of a compressed layer: uncompressed bytes ≤ `max_ratio` × compressed
    /// bytes, once past [`ImportLimits::ratio_floor`]. Real layers expand 2–10×; gzip of zeros
    /// expands ~1000×. Default: 100.
    pub max_ratio: u64,
    /// Uncompressed bytes a layer may always have, whatever its ratio (small layers of sparse or
    /// zero-filled files are fine). Default: 512 MiB.
    pub ratio_floor: u64,
}

impl Default for ImportLimits {
    fn default() -> Self {
        ImportLimits {
            max_bytes: 16 << 30,
            max_entries: 1_000_000,
            max_ratio: 100,
            ratio_floor: 512 << 20,
        }
    }
}

/// The prefix of whiteout names (OCI image spec, from aufs).
const WHITEOUT_PREFIX: &str = ".wh.";
/// The name of an opaque-directory marker.
const OPAQUE_WHITEOUT: &str = ".wh..wh..opq";

/// What the tar reader may buffer in memory for one entry (PAX records, GNU long names).
const MAX_ENTRY_METADATA: u64 = 1 << 20;

/// Files at least this large start their writeback as soon as they are written (see
/// [`start_writeback`]); smaller ones are left for the kernel to batch.
const WRITEBACK_MIN: u64 = 64 << 10;

/// The result of a successful unpack.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct UnpackedLayer {
    /// `sha256:<hex>` of the uncompressed tar stream.
    pub digest: String,
    /// Sum of the regular files' sizes, in bytes.
    pub size: u64,
    /// Number of entries in the archive.
    pub entries: u64,
}

/// Unpacks a plain or gzip tarball (detected by its magic bytes) into `dest`, an existing empty
/// directory. On error, `dest` holds a partial tree: the caller removes it.
pub(crate) fn unpack_layer<R: Read>(
    mut reader: R,
    dest: &Path,
    limits: &ImportLimits,
) -> Result<UnpackedLayer, ImageError> {
    let mut magic = [0u8; 6];
    let n = read_prefix(&mut reader, &mut magic).map_err(|e| ImageError::BadArchive {
        entry: None,
        detail: format!("cannot read the input: {e}"),
    })?;
    if n == 0 {
        return Err(ImageError::EmptyInput);
    }
    let head = &magic[..n];
    let compressed = Rc::new(Cell::new(0u64));
    let stream = Counting {
        inner: io::Cursor::new(head.to_vec()).chain(reader),
        count: Rc::clone(&compressed),
    };
    let unsupported = |format| Err(ImageError::UnsupportedCompression { format });
    if head.starts_with(&[0x1f, 0x8b]) {
        let gz = flate2::read::MultiGzDecoder::new(stream);
        unpack_tar(gz, dest, limits, Some(compressed))
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        let zst = zstd::stream::read::Decoder::new(stream).map_err(|e| ImageError::BadArchive {
            entry: None,
            detail: format!("cannot start zstd decompression: {e}"),
        })?;
        unpack_tar(zst, dest, limits, Some(compressed))
    } else if head.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0]) {
        unsupported("xz")
    } else if head.len() >= 4 && head.starts_with(b"BZh") && (b'1'..=b'9').contains(&head[3]) {
        unsupported("bzip2")
    } else {
        unpack_tar(stream, dest, limits, None)
    }
}

/// What a stream's magic bytes say it is compressed with (`None`: not compressed, as far as
/// shoal knows).
pub(crate) fn compression_of(head: &[u8]) -> Option<&'static str> {
    if head.starts_with(&[0x1f, 0x8b]) {
        Some("gzip")
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Some("zstd")
    } else {
        None
    }
}

/// Counts the bytes read through it (the compressed side, for the expansion ratio).
struct Counting<R> {
    inner: R,
    count: Rc<Cell<u64>>,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count.set(self.count.get() + n as u64);
        Ok(n)
    }
}

/// Reads until `buf` is full or the input ends; returns the count.
fn read_prefix<R: Read>(r: &mut R, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Which limit the metered reader tripped.
#[derive(Clone, Copy, Debug)]
enum Trip {
    Stream,
    Ratio,
    EntryMetadata,
}

/// Shared between the reader the tar crate owns and the unpack loop.
struct Meter {
    hasher: Sha256,
    total: u64,
    max_total: u64,
    /// Some while the tar reader looks for the next entry: what it may still consume.
    metadata_budget: Option<u64>,
    tripped: Option<Trip>,
    /// Compressed bytes read so far (`None` for a plain tar) and the ratio bound.
    compressed: Option<Rc<Cell<u64>>>,
    max_ratio: u64,
    ratio_floor: u64,
}

/// Hashes and counts every uncompressed byte, enforcing the stream and metadata caps.
struct Metered<S> {
    inner: S,
    meter: Rc<RefCell<Meter>>,
}

impl<S: Read> Read for Metered<S> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut m = self.meter.borrow_mut();
        if m.tripped.is_some() {
            return Err(io::Error::other("import limit exceeded"));
        }
        let n = self.inner.read(buf)?;
        m.hasher.update(&buf[..n]);
        m.total += n as u64;
        if m.total > m.max_total {
            m.tripped = Some(Trip::Stream);
            return Err(io::Error::other("import limit exceeded"));
        }
        if let Some(c) = &m.compressed {
            if m.total > m.ratio_floor && m.total / m.max_ratio.max(1) > c.get() {
                m.tripped = Some(Trip::Ratio);
                return Err(io::Error::other("import limit exceeded"));
            }
        }
        if let Some(budget) = m.metadata_budget {
            match budget.checked_sub(n as u64) {
                Some(left) => m.metadata_budget = Some(left),
                None => {
                    m.tripped = Some(Trip::EntryMetadata);
                    return Err(io::Error::other("import limit exceeded"));
                }
            }
        }
        Ok(n)
    }
}

fn unpack_tar<S: Read>(
    stream: S,
    dest: &Path,
    limits: &ImportLimits,
    compressed: Option<Rc<Cell<u64>>>,
) -> Result<UnpackedLayer, ImageError> {
    let meter = Rc::new(RefCell::new(Meter {
        hasher: Sha256::new(),
        total: 0,
        max_total: limits.max_bytes,
        metadata_budget: None,
        tripped: None,
        compressed,
        max_ratio: limits.max_ratio,
        ratio_floor: limits.ratio_floor,
    }));
    let mut archive = tar::Archive::new(Metered {
        inner: stream,
        meter: Rc::clone(&meter),
    });
    let mut u = Unpacker {
        root: dest.to_path_buf(),
        as_root: nix::unistd::geteuid().is_root(),
        dirs: BTreeMap::new(),
        size: 0,
        limits: *limits,
        meter: Rc::clone(&meter),
        buf: vec![0; 64 * 1024],
    };
    let mut count = 0u64;
    let mut last: Option<String> = None;
    {
        let mut entries = archive.entries().map_err(|e| u.read_error(e, None))?;
        loop {
            meter.borrow_mut().metadata_budget = Some(MAX_ENTRY_METADATA);
            let next = entries.next();
            meter.borrow_mut().metadata_budget = None;
            let mut entry = match next {
                None => break,
                Some(Ok(entry)) => entry,
                Some(Err(e)) => return Err(u.read_error(e, last.as_deref())),
            };
            count += 1;
            if count > limits.max_entries {
                return Err(ImageError::LimitExceeded {
                    what: "entries",
                    limit: limits.max_entries,
                });
            }
            let name = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
            u.apply(&mut entry, &name)?;
            // Whatever data the entry still has (a symlink with a body, say) is consumed here,
            // not inside the next `entries.next()`, where it would count as metadata.
            io::copy(&mut entry, &mut io::sink()).map_err(|e| u.read_error(e, Some(&name)))?;
            last = Some(name);
        }
    }
    if count == 0 {
        return Err(ImageError::BadArchive {
            entry: None,
            detail: "the archive has no entries".into(),
        });
    }
    // The digest covers the whole stream: the end-of-archive blocks and any padding after them.
    let mut rest = archive.into_inner();
    io::copy(&mut rest, &mut io::sink()).map_err(|e| u.read_error(e, last.as_deref()))?;
    drop(rest);
    u.finish_dirs()?;
    let hasher = std::mem::take(&mut meter.borrow_mut().hasher);
    Ok(UnpackedLayer {
        digest: format!("sha256:{}", hex::encode(hasher.finalize())),
        size: u.size,
        entries: count,
    })
}

/// Mode, owner and mtime of an entry (PAX records override the header).
#[derive(Clone, Copy, Debug)]
struct EntryMeta {
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: (i64, i64),
}

struct Unpacker {
    root: PathBuf,
    as_root: bool,
    /// Directory metadata applied at the end, keyed by path relative to the root.
    dirs: BTreeMap<PathBuf, EntryMeta>,
    size: u64,
    limits: ImportLimits,
    meter: Rc<RefCell<Meter>>,
    buf: Vec<u8>,
}

impl Unpacker {
    /// Turns an error from the tar/gzip reader into the right `ImageError`.
    fn read_error(&self, e: io::Error, entry: Option<&str>) -> ImageError {
        match self.meter.borrow().tripped {
            Some(Trip::Stream) => ImageError::LimitExceeded {
                what: "uncompressed bytes",
                limit: self.limits.max_bytes,
            },
            Some(Trip::Ratio) => ImageError::LimitExceeded {
                what: "times the compressed size (the expansion ratio, past ImportLimits::ratio_floor)",
                limit: self.limits.max_ratio,
            },
            Some(Trip::EntryMetadata) => ImageError::LimitExceeded {
                what: "bytes of PAX / long-name metadata for a single entry",
                limit: MAX_ENTRY_METADATA,
            },
            None => ImageError::BadArchive {
                entry: entry.map(str::to_string),
                detail: e.to_string(),
            },
        }
    }

    fn write_error(&self, name: &str) -> impl FnOnce(io::Error) -> ImageError {
        let (entry, dir) = (name.to_string(), self.root.clone());
        move |source| ImageError::Unpack { entry, dir, source }
    }

    fn apply<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        name: &str,
    ) -> Result<(), ImageError> {
        let refuse = |reason: String| ImageError::UnsafeEntry {
            entry: name.to_string(),
            reason,
        };
        let raw_path = entry.path_bytes().into_owned();
        let rel = normalize(Path::new(OsStr::from_bytes(&raw_path))).map_err(refuse)?;
        let mut kind = entry.header().entry_type();
        // Old (v7) archives mark directories with a trailing slash only.
        if kind == EntryType::Regular && raw_path.ends_with(b"/") {
            kind = EntryType::Directory;
        }
        let meta = self.entry_meta(entry, name)?;
        if let Some(base) = rel.file_name().and_then(|b| b.to_str()) {
            if let Some(hidden) = base.strip_prefix(WHITEOUT_PREFIX) {
                if kind == EntryType::Directory {
                    return Err(refuse("a whiteout cannot be a directory".into()));
                }
                let parent = rel.parent().unwrap_or(Path::new("")).to_path_buf();
                return if base == OPAQUE_WHITEOUT {
                    self.make_opaque(&parent, name)
                } else if hidden.starts_with(WHITEOUT_PREFIX) {
                    // `.wh..wh.plnk` and the like: aufs bookkeeping, meaningless here.
                    Ok(())
                } else if hidden.is_empty() || hidden == "." || hidden == ".." {
                    Err(refuse(format!("`{base}` is not a valid whiteout")))
                } else {
                    self.make_whiteout(&parent.join(hidden), name)
                };
            }
        }
        if rel.as_os_str().is_empty()
            && kind != EntryType::Directory
            && kind != EntryType::XGlobalHeader
        {
            return Err(refuse(
                "it names the layer root, which can only be a directory".into(),
            ));
        }
        match kind {
            EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => {
                self.write_file(entry, &rel, meta, name)
            }
            EntryType::Directory => self.make_dir(&rel, meta, name),
            EntryType::Symlink => {
                let target = match entry.link_name_bytes() {
                    Some(t) if !t.is_empty() => t.into_owned(),
                    _ => return Err(refuse("it is a symlink without a target".into())),
                };
                self.make_symlink(&rel, &target, meta, name)
            }
            EntryType::Link => {
                let target = match entry.link_name_bytes() {
                    Some(t) if !t.is_empty() => t.into_owned(),
                    _ => return Err(refuse("it is a hardlink without a target".into())),
                };
                self.make_hardlink(&rel, &target, name)
            }
            EntryType::Fifo => self.make_fifo(&rel, meta, name),
            EntryType::Char | EntryType::Block => Err(refuse(
                "device nodes are not allowed in imported images (the container runtime \
                 provides /dev)"
                    .into(),
            )),
            // Global PAX headers carry nothing shoal uses.
            EntryType::XGlobalHeader => Ok(()),
            other => Err(refuse(format!(
                "unsupported tar entry type {other:?} (type byte {:?})",
                char::from(other.as_byte())
            ))),
        }
    }

    fn entry_meta<R: Read>(
        &self,
        entry: &mut tar::Entry<'_, R>,
        name: &str,
    ) -> Result<EntryMeta, ImageError> {
        let bad = |what: &str, e: &dyn std::fmt::Display| ImageError::BadArchive {
            entry: Some(name.to_string()),
            detail: format!("invalid {what} field: {e}"),
        };
        let h = entry.header();
        let old = h.as_old();
        // An all-blank numeric field means 0, as in Go's archive/tar (which Docker uses).
        let mode = numeric(&old.mode, h.mode().map(u64::from)).map_err(|e| bad("mode", &e))?;
        let mode = (mode & 0o7777) as u32;
        let mut uid = numeric(&old.uid, h.uid()).map_err(|e| bad("uid", &e))?;
        let mut gid = numeric(&old.gid, h.gid()).map_err(|e| bad("gid", &e))?;
        let mtime = numeric(&old.mtime, h.mtime()).map_err(|e| bad("mtime", &e))?;
        let mut mtime = (i64::try_from(mtime).unwrap_or(i64::MAX), 0i64);
        if let Some(exts) = entry.pax_extensions().map_err(|e| bad("PAX", &e))? {
            for ext in exts {
                let ext = ext.map_err(|e| bad("PAX", &e))?;
                let (Ok(key), Ok(value)) = (ext.key(), ext.value()) else {
                    continue;
                };
                match key {
                    "uid" => uid = value.parse().map_err(|e| bad("PAX uid", &e))?,
                    "gid" => gid = value.parse().map_err(|e| bad("PAX gid", &e))?,
                    "mtime" => {
                        mtime = parse_pax_time(value).ok_or_else(|| bad("PAX mtime", &value))?
                    }
                    _ => {}
                }
            }
        }
        let id = |v: u64, what: &str| {
            u32::try_from(v).map_err(|_| ImageError::UnsafeEntry {
                entry: name.to_string(),
                reason: format!("its {what} {v} is out of range"),
            })
        };
        Ok(EntryMeta {
            mode,
            uid: id(uid, "uid")?,
            gid: id(gid, "gid")?,
            mtime,
        })
    }

    /// Walks the parents of `rel` from the root, creating missing ones (mode 0755) when
    /// `create`, and refusing symlinks and non-directories on the way.
    fn check_parents(&self, rel: &Path, create: bool, name: &str) -> Result<(), ImageError> {
        let mut cur = self.root.clone();
        let mut walked = PathBuf::new();
        let Some(parent) = rel.parent() else {
            return Ok(());
        };
        for comp in parent.components() {
            cur.push(comp);
            walked.push(comp);
            let refuse = |reason: String| ImageError::UnsafeEntry {
                entry: name.to_string(),
                reason,
            };
            match fs::symlink_metadata(&cur) {
                Ok(m) if m.file_type().is_dir() => {}
                Ok(m) if m.file_type().is_symlink() => {
                    return Err(refuse(format!(
                        "`{}` is a symlink in the layer, and writing through it could reach \
                         outside the layer",
                        walked.display()
                    )))
                }
                Ok(_) => {
                    return Err(refuse(format!(
                        "`{}` is not a directory in the layer",
                        walked.display()
                    )))
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound && create => {
                    fs::DirBuilder::new()
                        .mode(0o755)
                        .create(&cur)
                        .and_then(|()| fs::set_permissions(&cur, fs::Permissions::from_mode(0o755)))
                        .map_err(self.write_error(name))?;
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    return Err(refuse(format!(
                        "`{}` does not exist in the layer",
                        walked.display()
                    )))
                }
                Err(e) => return Err(self.write_error(name)(e)),
            }
        }
        Ok(())
    }

    /// Makes way for a new non-directory entry at `rel`: parents exist and are real
    /// directories, and whatever was at `rel` is gone (unlinked, never followed).
    fn prepare(&mut self, rel: &Path, name: &str) -> Result<PathBuf, ImageError> {
        self.check_parents(rel, true, name)?;
        let path = self.root.join(rel);
        match fs::symlink_metadata(&path) {
            Ok(m) if m.is_dir() => {
                remove_tree(&path).map_err(self.write_error(name))?;
                self.dirs.retain(|k, _| !k.starts_with(rel));
            }
            Ok(_) => fs::remove_file(&path).map_err(self.write_error(name))?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(self.write_error(name)(e)),
        }
        Ok(path)
    }

    fn write_file<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        rel: &Path,
        meta: EntryMeta,
        name: &str,
    ) -> Result<(), ImageError> {
        self.size = self.size.saturating_add(entry.size());
        if self.size > self.limits.max_bytes {
            return Err(ImageError::LimitExceeded {
                what: "bytes of file content",
                limit: self.limits.max_bytes,
            });
        }
        let path = self.prepare(rel, name)?;
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&path)
            .map_err(self.write_error(name))?;
        let mut buf = std::mem::take(&mut self.buf);
        let copied = (|| loop {
            let n = match entry.read(&mut buf) {
                Ok(0) => return Ok(()),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(self.read_error(e, Some(name))),
            };
            f.write_all(&buf[..n]).map_err(self.write_error(name))?;
        })();
        self.buf = buf;
        copied?;
        if entry.size() >= WRITEBACK_MIN {
            start_writeback(&f, 0, 0);
        }
        if self.as_root {
            std::os::unix::fs::fchown(&f, Some(meta.uid), Some(meta.gid))
                .map_err(self.write_error(name))?;
        }
        // After chown, which clears setuid/setgid.
        f.set_permissions(fs::Permissions::from_mode(meta.mode))
            .map_err(self.write_error(name))?;
        drop(f);
        self.set_mtime(&path, meta, name)
    }

    fn make_dir(&mut self, rel: &Path, meta: EntryMeta, name: &str) -> Result<(), ImageError> {
        self.check_parents(rel, true, name)?;
        let path = self.root.join(rel);
        match fs::symlink_metadata(&path) {
            Ok(m) if m.is_dir() => {}
            other => {
                match other {
                    Ok(_) => fs::remove_file(&path).map_err(self.write_error(name))?,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(self.write_error(name)(e)),
                }
                // Owner-writable until `finish_dirs` applies the real mode.
                fs::DirBuilder::new()
                    .mode(0o700)
                    .create(&path)
                    .map_err(self.write_error(name))?;
            }
        }
        self.dirs.insert(rel.to_path_buf(), meta);
        Ok(())
    }

    fn make_symlink(
        &mut self,
        rel: &Path,
        target: &[u8],
        meta: EntryMeta,
        name: &str,
    ) -> Result<(), ImageError> {
        // The target is stored verbatim: it is resolved inside the container's root, and this
        // module never follows it.
        let path = self.prepare(rel, name)?;
        std::os::unix::fs::symlink(OsStr::from_bytes(target), &path)
            .map_err(self.write_error(name))?;
        if self.as_root {
            std::os::unix::fs::lchown(&path, Some(meta.uid), Some(meta.gid))
                .map_err(self.write_error(name))?;
        }
        self.set_mtime(&path, meta, name)
    }

    fn make_hardlink(&mut self, rel: &Path, target: &[u8], name: &str) -> Result<(), ImageError> {
        let refuse = |reason: String| ImageError::UnsafeEntry {
            entry: name.to_string(),
            reason,
        };
        let shown = String::from_utf8_lossy(target).into_owned();
        let target_rel = normalize(Path::new(OsStr::from_bytes(target)))
            .map_err(|r| refuse(format!("its hardlink target `{shown}` is unsafe: {r}")))?;
        if target_rel.as_os_str().is_empty() {
            return Err(refuse("it is a hardlink to the layer root".into()));
        }
        if target_rel == rel {
            return Err(refuse("it is a hardlink to itself".into()));
        }
        let missing = || {
            refuse(format!(
                "its hardlink target `{shown}` is not in the layer (it is missing, or outside \
                 the layer); a hardlink may only point at an earlier entry"
            ))
        };
        self.check_parents(&target_rel, false, name)
            .map_err(|e| match e {
                ImageError::UnsafeEntry { reason, .. } if reason.contains("does not exist") => {
                    missing()
                }
                ImageError::UnsafeEntry { reason, .. } => {
                    refuse(format!("its hardlink target `{shown}` is unsafe: {reason}"))
                }
                other => other,
            })?;
        let target_path = self.root.join(&target_rel);
        match fs::symlink_metadata(&target_path) {
            Ok(m) if m.is_dir() => {
                return Err(refuse(format!(
                    "its hardlink target `{shown}` is a directory"
                )))
            }
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(missing()),
            Err(e) => return Err(self.write_error(name)(e)),
        }
        let path = self.prepare(rel, name)?;
        // linkat(2) without AT_SYMLINK_FOLLOW: a symlink target is linked itself, not followed.
        fs::hard_link(&target_path, &path).map_err(|e| {
            if e.kind() == io::ErrorKind::NotFound {
                missing()
            } else {
                self.write_error(name)(e)
            }
        })
    }

    /// `.wh.NAME`: an overlay whiteout (char device 0:0) at `NAME`, replacing whatever an
    /// earlier entry of this layer put there.
    fn make_whiteout(&mut self, rel: &Path, name: &str) -> Result<(), ImageError> {
        let path = self.prepare(rel, name)?;
        nix::sys::stat::mknod(
            &path,
            nix::sys::stat::SFlag::S_IFCHR,
            Mode::from_bits_truncate(0o000),
            0,
        )
        .map_err(|e| self.write_error(name)(e.into()))
    }

    /// `.wh..wh..opq`: the directory hides the lower layers' content (overlay's opaque xattr).
    fn make_opaque(&mut self, dir: &Path, name: &str) -> Result<(), ImageError> {
        let path = if dir.as_os_str().is_empty() {
            self.root.clone()
        } else {
            // Walks and creates the parents, refusing symlinks, then the directory itself.
            self.check_parents(&dir.join("x"), true, name)?;
            self.root.join(dir)
        };
        let c_path = std::ffi::CString::new(path.as_os_str().as_bytes()).map_err(|_| {
            ImageError::UnsafeEntry {
                entry: name.to_string(),
                reason: "its path contains a NUL byte".into(),
            }
        })?;
        // SAFETY: valid NUL-terminated strings and a buffer of the given length; lsetxattr
        // never follows a symlink (and check_parents made sure `path` is a real directory).
        let rc = unsafe {
            libc::lsetxattr(
                c_path.as_ptr(),
                c"trusted.overlay.opaque".as_ptr(),
                b"y".as_ptr().cast(),
                1,
                0,
            )
        };
        if rc != 0 {
            return Err(self.write_error(name)(io::Error::last_os_error()));
        }
        Ok(())
    }

    fn make_fifo(&mut self, rel: &Path, meta: EntryMeta, name: &str) -> Result<(), ImageError> {
        let path = self.prepare(rel, name)?;
        nix::unistd::mkfifo(&path, Mode::from_bits_truncate(0o600))
            .map_err(|e| self.write_error(name)(e.into()))?;
        if self.as_root {
            std::os::unix::fs::lchown(&path, Some(meta.uid), Some(meta.gid))
                .map_err(self.write_error(name))?;
        }
        fs::set_permissions(&path, fs::Permissions::from_mode(meta.mode))
            .map_err(self.write_error(name))?;
        self.set_mtime(&path, meta, name)
    }

    fn set_mtime(&self, path: &Path, meta: EntryMeta, name: &str) -> Result<(), ImageError> {
        let t = TimeSpec::new(meta.mtime.0 as libc::time_t, meta.mtime.1 as _);
        utimensat(
            nix::fcntl::AT_FDCWD,
            path,
            &t,
            &t,
            UtimensatFlags::NoFollowSymlink,
        )
        .map_err(|e| self.write_error(name)(e.into()))
    }

    /// Applies directory owners, modes and mtimes, deepest first. A directory that was since
    /// replaced (by a file, or a path through a symlink) is skipped.
    fn finish_dirs(&mut self) -> Result<(), ImageError> {
        let mut dirs: Vec<(PathBuf, EntryMeta)> =
            std::mem::take(&mut self.dirs).into_iter().collect();
        dirs.sort_by_key(|(p, _)| std::cmp::Reverse(p.components().count()));
        for (rel, meta) in dirs {
            let name = rel.display().to_string();
            if self.check_parents(&rel, false, &name).is_err() {
                continue;
            }
            let path = self.root.join(&rel);
            match fs::symlink_metadata(&path) {
                Ok(m) if m.is_dir() => {}
                _ => continue,
            }
            if self.as_root {
                std::os::unix::fs::lchown(&path, Some(meta.uid), Some(meta.gid))
                    .map_err(self.write_error(&name))?;
            }
            fs::set_permissions(&path, fs::Permissions::from_mode(meta.mode))
                .map_err(self.write_error(&name))?;
            self.set_mtime(&path, meta, &name)?;
        }
        Ok(())
    }
}

/// Makes an archive path relative to the layer root: `/` and `.` components are dropped, `..`
/// is refused.
fn normalize(path: &Path) -> Result<PathBuf, String> {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::RootDir | Component::CurDir => {}
            Component::ParentDir => {
                return Err(
                    "its path has a `..` component, which could reach outside the layer".into(),
                )
            }
            Component::Prefix(_) => return Err("its path has a non-Unix prefix".into()),
            Component::Normal(part) => out.push(part),
        }
    }
    Ok(out)
}

/// A header's numeric field: `parsed`, or 0 when the raw field is blank (NULs and spaces).
fn numeric(raw: &[u8], parsed: io::Result<u64>) -> io::Result<u64> {
    if raw.iter().all(|b| *b == 0 || *b == b' ') {
        Ok(0)
    } else {
        parsed
    }
}

/// Parses a PAX time (`1700000000`, `1700000000.123456789`, `-1.5`) to (seconds, nanoseconds).
fn parse_pax_time(s: &str) -> Option<(i64, i64)> {
    let (int, frac) = s.split_once('.').unwrap_or((s, ""));
    let secs: i64 = int.parse().ok()?;
    if !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let digits = &frac[..frac.len().min(9)];
    let mut nanos: i64 = if digits.is_empty() {
        0
    } else {
        digits.parse().ok()?
    };
    nanos *= 10i64.pow(9 - digits.len() as u32);
    if int.starts_with('-') && nanos > 0 {
        // -1.5 is 1.5 s before the epoch: -2 s + 0.5 s.
        Some((secs - 1, 1_000_000_000 - nanos))
    } else {
        Some((secs, nanos))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_unpack_normalize_paths() {
        let n = |s: &str| normalize(Path::new(s));
        assert_eq!(n("./a/b/").expect("ok"), PathBuf::from("a/b"));
        assert_eq!(n("/etc/passwd").expect("ok"), PathBuf::from("etc/passwd"));
        assert_eq!(n("//a//./b").expect("ok"), PathBuf::from("a/b"));
        assert_eq!(n("./").expect("ok"), PathBuf::new());
        assert!(n("../x").is_err());
        assert!(n("a/../../x").is_err());
        assert!(n("/../x").is_err());
    }

    #[test]
    fn image_unpack_pax_times() {
        assert_eq!(parse_pax_time("1700000000"), Some((1_700_000_000, 0)));
        assert_eq!(parse_pax_time("1.5"), Some((1, 500_000_000)));
        assert_eq!(parse_pax_time("1.1234567891"), Some((1, 123_456_789)));
        assert_eq!(parse_pax_time("-1.5"), Some((-2, 500_000_000)));
        assert_eq!(parse_pax_time("x"), None);
    }
}
