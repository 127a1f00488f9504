//! The `busybox:latest` image, built from the host's busybox-static.
//!
//! The rootfs is written as a tarball and imported through the same (safe) path as any other
//! import. Every entry has owner 0:0 and mtime 0, in a fixed order, so the layer digest and the
//! image id depend only on the busybox binary: bootstrapping twice gives the same image (like
//! reproducible images, e.g. distroless, its creation time is the epoch).
//!
//! Layout: `/bin/busybox` plus a relative symlink `/bin/<applet> -> busybox` for each applet of
//! `busybox --list`; `/etc/passwd` and `/etc/group` with root and nobody; directories `/tmp`
//! (1777), `/root` (0700), `/proc`, `/sys`, `/dev`, `/etc`, `/var`, `/usr/bin`, `/home`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::error::ImageError;

/// Where busybox-static is looked for, in order (Debian installs `/bin/busybox`; with merged
/// /usr it is also `/usr/bin/busybox`).
pub(crate) const BUSYBOX_PATHS: [&str; 2] = ["/bin/busybox", "/usr/bin/busybox"];

/// `PATH` of the images shoal makes (Docker's default).
pub(crate) const DEFAULT_PATH_ENV: &str =
    "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

const PASSWD: &str =
    "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n";
const GROUP: &str = "root:x:0:\nnogroup:x:65534:\n";

/// The first busybox found on the host, or the "install busybox-static" error.
pub(crate) fn find_busybox() -> Result<PathBuf, ImageError> {
    BUSYBOX_PATHS
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .ok_or_else(|| ImageError::BusyboxMissing {
            looked: BUSYBOX_PATHS.iter().map(PathBuf::from).collect(),
        })
}

/// Checks that `path` is a statically linked busybox that runs, and builds the rootfs tarball.
pub(crate) fn rootfs_tar(path: &Path) -> Result<Vec<u8>, ImageError> {
    let unusable = |reason: String| ImageError::BusyboxUnusable {
        path: path.to_path_buf(),
        reason,
    };
    let binary = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(ImageError::BusyboxMissing {
                looked: vec![path.to_path_buf()],
            })
        }
        Err(e) => return Err(ImageError::io("read", path)(e)),
    };
    match elf_interpreter(&binary) {
        Err(why) => {
            return Err(unusable(format!(
                "{why}; run `apt-get install busybox-static`"
            )))
        }
        Ok(Some(interp)) => {
            return Err(unusable(format!(
                "it is dynamically linked (it needs {interp}), so it cannot run inside a \
                 container: run `apt-get install busybox-static`"
            )))
        }
        Ok(None) => {}
    }
    let applets = list_applets(path)?;
    if !applets.contains("sh") {
        return Err(unusable(
            "it has no `sh` applet; install Debian's busybox-static".into(),
        ));
    }
    build_tar(&binary, &applets).map_err(|e| unusable(format!("cannot build the rootfs: {e}")))
}

/// Runs `busybox --list`: proves the binary runs standalone and gives the applet names.
fn list_applets(path: &Path) -> Result<BTreeSet<String>, ImageError> {
    let unusable = |reason: String| ImageError::BusyboxUnusable {
        path: path.to_path_buf(),
        reason,
    };
    let out = Command::new(path)
        .arg("--list")
        .env_clear()
        .output()
        .map_err(|e| unusable(format!("cannot run `{} --list`: {e}", path.display())))?;
    if !out.status.success() {
        return Err(unusable(format!(
            "`{} --list` failed ({}): {}",
            path.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(text
        .lines()
        .map(str::trim)
        .filter(|a| {
            !a.is_empty()
                && *a != "busybox"
                && a.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'['))
                && *a != "."
                && *a != ".."
        })
        .map(str::to_string)
        .collect())
}

/// The deterministic rootfs tarball.
fn build_tar(binary: &[u8], applets: &BTreeSet<String>) -> std::io::Result<Vec<u8>> {
    let mut b = tar::Builder::new(Vec::with_capacity(
        binary.len() + 512 * (applets.len() + 32),
    ));
    let header = |kind: tar::EntryType, mode: u32, size: u64| {
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h.set_size(size);
        h
    };
    for (dir, mode) in [
        ("bin/", 0o755),
        ("dev/", 0o755),
        ("etc/", 0o755),
        ("home/", 0o755),
        ("proc/", 0o755),
        ("root/", 0o700),
        ("sys/", 0o755),
        ("tmp/", 0o1777),
        ("usr/", 0o755),
        ("usr/bin/", 0o755),
        ("var/", 0o755),
    ] {
        let mut h = header(tar::EntryType::Directory, mode, 0);
        b.append_data(&mut h, dir, std::io::empty())?;
    }
    let mut h = header(tar::EntryType::Regular, 0o755, binary.len() as u64);
    b.append_data(&mut h, "bin/busybox", binary)?;
    for applet in applets {
        let mut h = header(tar::EntryType::Symlink, 0o777, 0);
        b.append_link(&mut h, format!("bin/{applet}"), "busybox")?;
    }
    for (path, body) in [("etc/group", GROUP), ("etc/passwd", PASSWD)] {
        let mut h = header(tar::EntryType::Regular, 0o644, body.len() as u64);
        b.append_data(&mut h, path, body.as_bytes())?;
    }
    b.into_inner()
}

/// The `PT_INTERP` of an ELF executable: `None` when statically linked.
pub(crate) fn elf_interpreter(bytes: &[u8]) -> Result<Option<String>, String> {
    const PT_INTERP: u32 = 3;
    if bytes.len() < 52 || &bytes[..4] != b"\x7fELF" {
        return Err("it is not an ELF executable".into());
    }
    let is64 = match bytes[4] {
        1 => false,
        2 => true,
        _ => return Err("it has an unknown ELF class".into()),
    };
    let le = match bytes[5] {
        1 => true,
        2 => false,
        _ => return Err("it has an unknown ELF byte order".into()),
    };
    let truncated = || "it is a truncated ELF file".to_string();
    let uint = |off: usize, len: usize| -> Result<u64, String> {
        let b = bytes
            .get(off..off.checked_add(len).ok_or_else(truncated)?)
            .ok_or_else(truncated)?;
        let mut v = 0u64;
        for i in 0..len {
            let byte = if le { b[len - 1 - i] } else { b[i] };
            v = (v << 8) | u64::from(byte);
        }
        Ok(v)
    };
    let to_usize = |v: u64| usize::try_from(v).map_err(|_| truncated());
    let (phoff, phentsize, phnum) = if is64 {
        (uint(0x20, 8)?, uint(0x36, 2)?, uint(0x38, 2)?)
    } else {
        (uint(0x1c, 4)?, uint(0x2a, 2)?, uint(0x2c, 2)?)
    };
    for i in 0..phnum {
        let off = to_usize(phoff)?
            .checked_add(to_usize(i * phentsize)?)
            .ok_or_else(truncated)?;
        if uint(off, 4)? as u32 != PT_INTERP {
            continue;
        }
        let (p_offset, p_filesz) = if is64 {
            (uint(off + 8, 8)?, uint(off + 32, 8)?)
        } else {
            (uint(off + 4, 4)?, uint(off + 16, 4)?)
        };
        let start = to_usize(p_offset)?;
        let end = start
            .checked_add(to_usize(p_filesz)?)
            .ok_or_else(truncated)?;
        let raw = bytes.get(start..end).ok_or_else(truncated)?;
        let interp = String::from_utf8_lossy(raw)
            .trim_end_matches('\0')
            .to_string();
        return Ok(Some(interp));
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_busybox_elf_interpreter_detects_dynamic_binaries() {
        // Whatever runs this test is dynamically linked on Debian.
        let exe = std::fs::read("/proc/self/exe").expect("read self");
        let interp = elf_interpreter(&exe).expect("elf");
        if let Some(i) = &interp {
            assert!(i.contains("ld"), "{i}");
        }
        assert!(
            elf_interpreter(b"#!/bin/sh\necho not elf, padding padding padding padding").is_err()
        );
        assert!(elf_interpreter(&exe[..60]).is_err() || interp.is_none());
    }

    #[test]
    fn image_busybox_missing_binary_says_how_to_install() {
        let err = rootfs_tar(Path::new("/nonexistent/busybox")).expect_err("missing");
        let msg = err.to_string();
        assert!(
            msg.contains("busybox-static is not installed: run `apt-get install busybox-static`"),
            "{msg}"
        );
    }
}
