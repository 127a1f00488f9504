//! Small file system helpers: durable atomic writes, directory fsync, robust tree removal.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use super::error::ImageError;

/// Writes `bytes` to `path` atomically and durably: a temporary file beside it, fsync, rename,
/// fsync of the directory. A crash leaves either the old content or the new, never a mix; a
/// leftover temporary file (named `.<name>.tmp-<uuid>`) is removed when the store is opened.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), ImageError> {
    let dir = path.parent().ok_or_else(|| ImageError::Corrupt {
        path: path.to_path_buf(),
        detail: "a metadata file has no parent directory".into(),
    })?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(
        ".{name}{TMP_MARKER}{}",
        uuid::Uuid::new_v4().simple()
    ));
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .custom_flags(libc::O_CLOEXEC | libc::O_NOFOLLOW)
            .open(&tmp)
            .map_err(ImageError::io("create", &tmp))?;
        f.write_all(bytes).map_err(ImageError::io("write", &tmp))?;
        f.sync_all().map_err(ImageError::io("fsync", &tmp))?;
        drop(f);
        fs::rename(&tmp, path).map_err(ImageError::io("rename a temporary file onto", path))?;
        fsync_dir(dir)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Starts writing `len` bytes of `file` from `offset` (`len` 0: to its end) back to disk,
/// without waiting (`sync_file_range(SYNC_FILE_RANGE_WRITE)`): the disk works while the rest
/// of a layer downloads and unpacks, and the sync that later makes the layer durable finds
/// most of the work done. A hint only: an error here shows up at that sync.
pub(crate) fn start_writeback(file: &File, offset: u64, len: u64) {
    use std::os::fd::AsRawFd;
    let (Ok(offset), Ok(len)) = (i64::try_from(offset), i64::try_from(len)) else {
        return;
    };
    // SAFETY: a syscall on a descriptor `file` keeps open; no memory is passed.
    unsafe {
        libc::sync_file_range(file.as_raw_fd(), offset, len, libc::SYNC_FILE_RANGE_WRITE);
    }
}

/// The infix that marks temporary metadata files (see [`write_atomic`]).
pub(crate) const TMP_MARKER: &str = ".tmp-";

/// fsyncs a directory, so that renames and unlinks in it are durable.
pub(crate) fn fsync_dir(dir: &Path) -> Result<(), ImageError> {
    let f = File::open(dir).map_err(ImageError::io("open directory", dir))?;
    f.sync_all().map_err(ImageError::io("fsync directory", dir))
}

/// Removes a file or a whole tree without following symlinks. Directories without write
/// permission (a layer may contain `0555` directories, and the store may run unprivileged) are
/// made writable first. A missing path is not an error.
pub(crate) fn remove_tree(path: &Path) -> io::Result<()> {
    let meta = match fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    if !meta.is_dir() {
        return fs::remove_file(path);
    }
    match fs::remove_dir_all(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
            make_dirs_writable(path)?;
            fs::remove_dir_all(path)
        }
        Err(e) => Err(e),
    }
}

/// `chmod 0700` on every directory of a tree (never through symlinks).
fn make_dirs_writable(dir: &Path) -> io::Result<()> {
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700))?;
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            make_dirs_writable(&entry.path())?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_fsutil_atomic_write_replaces_and_leaves_no_tmp() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("x.json");
        write_atomic(&p, b"one").expect("write");
        write_atomic(&p, b"two").expect("write");
        assert_eq!(fs::read(&p).expect("read"), b"two");
        let names: Vec<_> = fs::read_dir(dir.path())
            .expect("readdir")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("x.json")]);
    }

    #[test]
    fn image_fsutil_remove_tree_handles_readonly_dirs() {
        let dir = tempfile::tempdir().expect("tempdir");
        let t = dir.path().join("t");
        fs::create_dir_all(t.join("ro/sub")).expect("mkdir");
        fs::write(t.join("ro/sub/f"), b"x").expect("write");
        fs::set_permissions(t.join("ro/sub"), fs::Permissions::from_mode(0o555)).expect("chmod");
        fs::set_permissions(t.join("ro"), fs::Permissions::from_mode(0o555)).expect("chmod");
        remove_tree(&t).expect("remove");
        assert!(!t.exists());
        remove_tree(&t).expect("missing is fine");
    }
}
