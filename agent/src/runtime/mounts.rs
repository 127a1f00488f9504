//! Bind mounts and volumes of a container (`volumes:` in compose, `-v`/`--mount` in Docker).
//!
//! # How (inside the container's mount namespace, see `init.rs`)
//!
//! 1. Before `pivot_root`, while host paths are still reachable: a volume mount with
//!    [`Mount::copy_up`] whose host directory is empty gets the image's content at its target
//!    (Docker's copy-up: ownership, modes, times, symlinks, hard links and device nodes kept;
//!    xattrs are not copied). Then each source is cloned as a detached mount tree
//!    (`open_tree(OPEN_TREE_CLONE | AT_RECURSIVE)`, a recursive bind, as Docker's default).
//! 2. After `pivot_root` and /proc, /dev, ...: the trees and the tmpfs mounts are attached in
//!    order of target depth (parents first), each target resolved inside the rootfs with
//!    `openat2(RESOLVE_IN_ROOT)` (a symlink in the image can never point a mount outside the
//!    rootfs) and created when missing (a directory, or an empty file for a file source; a
//!    dangling symlink as the last component is replaced). `move_mount` attaches the tree;
//!    `mount_setattr` makes it read-only (recursively: submounts too, stricter than Docker's
//!    old behaviour) and sets its propagation.
//!
//! Mounts can so land anywhere, also under /dev or /proc (e.g. `/dev/log`), on a read-only
//! rootfs too (the root is remounted read-only only after every mount point exists).
//!
//! Propagation: the container's `/` is made rprivate before anything is mounted, so
//! `shared`/`slave` only relate mounts inside the container; host mounts made later under a
//! bind source do not propagate in (Docker needs a shared host mount for that, and we do not
//! change the host's mounts).

use std::collections::BTreeSet;
use std::ffi::CString;
use std::fs;
use std::io;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{openat, openat2, OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::{fstat, Mode};
use serde::{Deserialize, Serialize};

use super::supervisor::StartError;
use super::{ContainerConfig, Stage};

/// What a [`Mount`]'s source is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MountKind {
    /// A host path.
    #[default]
    Bind,
    /// A volume's data directory (resolved by the caller, see [`crate::volume`]).
    Volume,
}

/// A bind mount or a volume of the container. tmpfs mounts are [`super::TmpfsMount`]s.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mount {
    #[serde(default)]
    pub kind: MountKind,
    /// Absolute host path (for volumes: the volume's `_data` directory).
    pub source: PathBuf,
    /// Absolute path in the container, not `/`.
    pub target: String,
    #[serde(default)]
    pub read_only: bool,
    /// `private`, `rprivate` (the default), `shared`, `rshared`, `slave`, `rslave`.
    #[serde(default)]
    pub propagation: Option<String>,
    /// Volumes only: fill the volume from the image's content at `target` if the volume's
    /// directory is empty (Docker copies when the volume is empty and `nocopy` is not set, so
    /// callers set it for every volume mount without `nocopy`).
    #[serde(default)]
    pub copy_up: bool,
    /// Create a missing host directory at `source` (the short `-v /host:/ctr` syntax does).
    #[serde(default)]
    pub create_host_path: bool,
}

/// The kernel's propagation flag for a propagation name, and whether it is recursive.
pub(crate) fn propagation_flags(p: Option<&str>) -> Result<(u64, bool), String> {
    let (flag, rec) = match p.unwrap_or("rprivate") {
        "private" => (libc::MS_PRIVATE, false),
        "rprivate" => (libc::MS_PRIVATE, true),
        "shared" => (libc::MS_SHARED, false),
        "rshared" => (libc::MS_SHARED, true),
        "slave" => (libc::MS_SLAVE, false),
        "rslave" => (libc::MS_SLAVE, true),
        other => {
            return Err(format!(
                "unknown mount propagation {other:?} (expected private, rprivate, shared, \
                 rshared, slave or rslave)"
            ))
        }
    };
    Ok((flag, rec))
}

/// `/a//b/` → `/a/b`; `None` unless absolute without `.`/`..` components.
pub(crate) fn normalize_target(p: &str) -> Option<String> {
    if !p.starts_with('/') || p.contains('\0') {
        return None;
    }
    let mut out = String::new();
    for c in Path::new(p).components() {
        match c {
            Component::RootDir => {}
            Component::Normal(n) => {
                out.push('/');
                out.push_str(n.to_str()?);
            }
            _ => return None,
        }
    }
    Some(if out.is_empty() { "/".into() } else { out })
}

/// The pure checks of the mounts (part of `validate_config`).
pub(crate) fn validate_mounts(c: &ContainerConfig) -> Result<(), String> {
    let mut targets = BTreeSet::new();
    for t in &c.tmpfs {
        if let Some(n) = normalize_target(&t.path) {
            if !targets.insert(n) {
                return Err(format!("tmpfs mount point {:?} is given twice", t.path));
            }
        }
    }
    for m in &c.mounts {
        let target = normalize_target(&m.target).ok_or_else(|| {
            format!(
                "mount target {:?} is not an absolute path without '.' or '..'",
                m.target
            )
        })?;
        if target == "/" {
            return Err(format!(
                "mount of {} cannot replace the root filesystem (target \"/\")",
                m.source.display()
            ));
        }
        if !m.source.is_absolute() || m.source.as_os_str().as_bytes().contains(&0) {
            return Err(format!(
                "mount source {:?} for {:?} is not an absolute host path",
                m.source.display().to_string(),
                m.target
            ));
        }
        propagation_flags(m.propagation.as_deref())?;
        if m.copy_up && m.kind != MountKind::Volume {
            return Err(format!(
                "copy_up of {:?}: only volumes are filled from the image",
                m.target
            ));
        }
        if !targets.insert(target) {
            return Err(format!("duplicate mount point {:?}", m.target));
        }
    }
    Ok(())
}

/// Checks the mount sources on the host (the daemon side, before anything is made); returns
/// the missing host directories to create (`create_host_path`).
pub(crate) fn check_sources(c: &ContainerConfig) -> Result<Vec<PathBuf>, String> {
    let mut create = Vec::new();
    for m in &c.mounts {
        match fs::metadata(&m.source) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound && m.create_host_path => {
                create.push(m.source.clone())
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(match m.kind {
                    MountKind::Bind => format!(
                        "bind source path does not exist: {} (for {:?})",
                        m.source.display(),
                        m.target
                    ),
                    MountKind::Volume => format!(
                        "volume directory {} does not exist (for {:?}); create the volume first",
                        m.source.display(),
                        m.target
                    ),
                })
            }
            Err(e) => {
                return Err(format!(
                    "mount source {} (for {:?}): {e}",
                    m.source.display(),
                    m.target
                ))
            }
        }
    }
    Ok(create)
}

/// One mount ready to attach: a detached clone of its source.
pub(crate) struct Prepared {
    pub target: String,
    pub tree: OwnedFd,
    pub is_dir: bool,
    pub read_only: bool,
    pub propagation: (u64, bool),
}

const OPEN_TREE_CLONE: libc::c_uint = 1;
const OPEN_TREE_CLOEXEC: libc::c_uint = libc::O_CLOEXEC as libc::c_uint;
const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 0x4;
const MOVE_MOUNT_T_EMPTY_PATH: libc::c_uint = 0x40;
const MOUNT_ATTR_RDONLY: u64 = 0x1;

#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

fn cpath(p: &Path) -> Result<CString, Errno> {
    CString::new(p.as_os_str().as_bytes()).map_err(|_| Errno::EINVAL)
}

/// A detached recursive clone of the mount tree at `source` (a bind mount not yet attached).
pub(crate) fn open_tree_clone(source: &Path) -> Result<OwnedFd, Errno> {
    let c = cpath(source)?;
    // SAFETY: open_tree(2) with a NUL-terminated path; returns a new fd or -1.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_open_tree,
            libc::AT_FDCWD,
            c.as_ptr(),
            OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC | libc::AT_RECURSIVE as libc::c_uint,
        )
    };
    if fd < 0 {
        return Err(Errno::last());
    }
    // SAFETY: a fresh fd the kernel returned.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

fn move_mount(tree: &OwnedFd, target: &OwnedFd) -> Result<(), Errno> {
    // SAFETY: move_mount(2) with two valid fds and empty paths.
    let r = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            tree.as_raw_fd(),
            c"".as_ptr(),
            target.as_raw_fd(),
            c"".as_ptr(),
            MOVE_MOUNT_F_EMPTY_PATH | MOVE_MOUNT_T_EMPTY_PATH,
        )
    };
    if r < 0 {
        Err(Errno::last())
    } else {
        Ok(())
    }
}

fn mount_setattr(fd: &OwnedFd, recursive: bool, set: u64, propagation: u64) -> Result<(), Errno> {
    let attr = MountAttr {
        attr_set: set,
        attr_clr: 0,
        propagation,
        userns_fd: 0,
    };
    let mut flags = libc::AT_EMPTY_PATH as libc::c_uint;
    if recursive {
        flags |= libc::AT_RECURSIVE as libc::c_uint;
    }
    // SAFETY: mount_setattr(2) reads `size` bytes of a valid struct mount_attr.
    let r = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            fd.as_raw_fd(),
            c"".as_ptr(),
            flags,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if r < 0 {
        Err(Errno::last())
    } else {
        Ok(())
    }
}

fn in_root(root: impl AsFd, rel: &str, flags: OFlag) -> Result<OwnedFd, Errno> {
    let rel = if rel.is_empty() { "." } else { rel };
    openat2(
        root,
        rel,
        OpenHow::new()
            .flags(flags | OFlag::O_CLOEXEC)
            .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS),
    )
}

fn is_dir_fd(fd: &OwnedFd) -> Result<bool, Errno> {
    Ok(fstat(fd)?.st_mode & libc::S_IFMT == libc::S_IFDIR)
}

/// An `O_PATH` fd of `target` inside the root `root` (the process's `/`: run after
/// pivot_root), created when missing (directories, and a directory or an empty file as the
/// last component). Symlinks resolve inside the root, dangling ones too: their target is
/// created, as Docker does (at most 40 of them, like the kernel).
pub(crate) fn resolve_or_create(
    root: &OwnedFd,
    target: &str,
    dir: bool,
) -> Result<OwnedFd, String> {
    let mut comps: Vec<String> = target
        .split('/')
        .filter(|c| !c.is_empty())
        .map(str::to_string)
        .collect();
    let mut hops = 0;
    'restart: loop {
        let mut parent = in_root(root, "", OFlag::O_PATH | OFlag::O_DIRECTORY)
            .map_err(|e| format!("open the root: {}", e.desc()))?;
        for i in 0..comps.len() {
            let name = comps[i].as_str();
            let prefix = comps[..=i].join("/");
            let last = i + 1 == comps.len();
            let fd = match in_root(root, &prefix, OFlag::O_PATH) {
                Ok(fd) => fd,
                Err(Errno::ENOENT) => {
                    // Missing, or a dangling symlink: follow that one by hand.
                    if let Ok(link) = nix::fcntl::readlinkat(&parent, name) {
                        hops += 1;
                        if hops > 40 {
                            return Err(format!(
                                "cannot create mount point {target}: too many symlinks"
                            ));
                        }
                        let link = link.to_string_lossy().into_owned();
                        let mut next: Vec<String> = Vec::new();
                        if !link.starts_with('/') {
                            // Relative to the real parent directory (inside the root).
                            let here =
                                fs::read_link(format!("/proc/self/fd/{}", parent.as_raw_fd()))
                                    .map_err(|e| format!("resolve /{prefix}: {e}"))?;
                            next.extend(
                                here.to_string_lossy()
                                    .split('/')
                                    .filter(|c| !c.is_empty())
                                    .map(str::to_string),
                            );
                        }
                        for c in link.split('/') {
                            match c {
                                "" | "." => {}
                                ".." => {
                                    next.pop();
                                }
                                c => next.push(c.to_string()),
                            }
                        }
                        next.extend(comps[i + 1..].iter().cloned());
                        comps = next;
                        continue 'restart;
                    }
                    let made = if dir || !last {
                        nix::sys::stat::mkdirat(&parent, name, Mode::from_bits_truncate(0o755))
                    } else {
                        openat(
                            &parent,
                            name,
                            OFlag::O_CREAT
                                | OFlag::O_EXCL
                                | OFlag::O_WRONLY
                                | OFlag::O_NOFOLLOW
                                | OFlag::O_CLOEXEC,
                            Mode::from_bits_truncate(0o644),
                        )
                        .map(drop)
                    };
                    match made {
                        Ok(()) | Err(Errno::EEXIST) => {}
                        Err(e) => {
                            return Err(format!("create mount point /{prefix}: {}", e.desc()))
                        }
                    }
                    in_root(root, &prefix, OFlag::O_PATH)
                        .map_err(|e| format!("open mount point /{prefix}: {}", e.desc()))?
                }
                Err(e) => return Err(format!("resolve /{prefix}: {}", e.desc())),
            };
            let fd_is_dir = is_dir_fd(&fd).map_err(|e| format!("stat /{prefix}: {}", e.desc()))?;
            if !last && !fd_is_dir {
                return Err(format!(
                    "cannot mount on {target}: /{prefix} in the container is not a directory"
                ));
            }
            if last {
                if fd_is_dir != dir {
                    return Err(format!(
                        "cannot mount a {} on {target}: it is a {} in the container",
                        if dir { "directory" } else { "file" },
                        if fd_is_dir { "directory" } else { "file" }
                    ));
                }
                return Ok(fd);
            }
            parent = fd;
        }
        // Every component resolved away (a symlink to "/"): the root itself.
        return Err(format!("cannot mount on {target}: it resolves to /"));
    }
}

/// Attaches a prepared tree at its target inside `root` (the container's `/`, after
/// pivot_root), then applies read-only and propagation.
pub(crate) fn attach(root: &OwnedFd, p: &Prepared) -> Result<(), StartError> {
    let fail = |m: String| StartError::new(Stage::Mounts, m);
    let target_fd = resolve_or_create(root, &p.target, p.is_dir).map_err(fail)?;
    move_mount(&p.tree, &target_fd)
        .map_err(|e| StartError::errno(Stage::Mounts, e, format!("mount on {}", p.target)))?;
    // The tree fd now names the attached mount.
    if p.read_only {
        mount_setattr(&p.tree, true, MOUNT_ATTR_RDONLY, 0).map_err(|e| {
            StartError::errno(Stage::Mounts, e, format!("make {} read-only", p.target))
        })?;
    }
    let (flag, rec) = p.propagation;
    mount_setattr(&p.tree, rec, 0, flag).map_err(|e| {
        StartError::errno(
            Stage::Mounts,
            e,
            format!("set the propagation of {}", p.target),
        )
    })?;
    Ok(())
}

/// Clones a mount source (before pivot_root).
pub(crate) fn prepare(
    source: &Path,
    target: &str,
    read_only: bool,
    propagation: Option<&str>,
) -> Result<Prepared, StartError> {
    let tree = open_tree_clone(source).map_err(|e| {
        StartError::errno(
            Stage::Mounts,
            e,
            format!("open mount source {} (for {target})", source.display()),
        )
    })?;
    let is_dir = is_dir_fd(&tree)
        .map_err(|e| StartError::errno(Stage::Mounts, e, format!("stat {}", source.display())))?;
    Ok(Prepared {
        target: normalize_target(target).unwrap_or_else(|| target.to_string()),
        tree,
        is_dir,
        read_only,
        propagation: propagation_flags(propagation)
            .map_err(|m| StartError::new(Stage::Mounts, m))?,
    })
}

/// Docker's copy-up: if `volume` (a host directory) is empty and the image has a directory at
/// `target` (resolved inside `rootfs`), copy its content, and its owner and mode, into the
/// volume.
pub(crate) fn copy_up(rootfs: &Path, target: &str, volume: &Path) -> Result<(), StartError> {
    let fail = |what: String| move |e: Errno| StartError::errno(Stage::Mounts, e, what);
    // Two containers starting on one fresh volume: the second waits, then finds it filled.
    // The lock goes with the fd (closed at exec, or when this process exits).
    let lock = nix::fcntl::open(
        volume,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(fail(format!("open {}", volume.display())))?;
    // SAFETY: flock(2) on an fd we own.
    while unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) } < 0 {
        let e = Errno::last();
        if e != Errno::EINTR {
            return Err(fail(format!("lock {}", volume.display()))(e));
        }
    }
    let empty = fs::read_dir(volume)
        .map_err(|e| {
            StartError::new(
                Stage::Mounts,
                format!("read volume directory {}: {e}", volume.display()),
            )
        })?
        .next()
        .is_none();
    if !empty {
        return Ok(());
    }
    let root = nix::fcntl::open(
        rootfs,
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(fail(format!("open {}", rootfs.display())))?;
    let rel = target.trim_start_matches('/');
    let src = match in_root(&root, rel, OFlag::O_RDONLY | OFlag::O_DIRECTORY) {
        Ok(fd) => fd,
        // Nothing (or no directory) in the image there: nothing to copy.
        Err(Errno::ENOENT) | Err(Errno::ENOTDIR) => return Ok(()),
        Err(e) => return Err(fail(format!("open {target} in the image"))(e)),
    };
    let dst = nix::fcntl::open(
        volume,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(fail(format!("open {}", volume.display())))?;
    let mut links = std::collections::HashMap::new();
    copy_dir(&src, &dst, &dst, PathBuf::new(), &mut links).map_err(|e| StartError {
        stage: Stage::Mounts,
        errno: e.raw_os_error(),
        message: format!(
            "copy {target} from the image into the volume {}: {e}",
            volume.display()
        ),
    })?;
    copy_meta(&src, None, &dst, None, libc::S_IFDIR).map_err(|e| StartError {
        stage: Stage::Mounts,
        errno: e.raw_os_error(),
        message: format!("set the owner and mode of {}: {e}", volume.display()),
    })
}

fn c_name(name: &std::ffi::OsStr) -> io::Result<CString> {
    CString::new(name.as_bytes()).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

fn errno_io(e: Errno) -> io::Error {
    io::Error::from_raw_os_error(e as i32)
}

fn stat_at(dir: &OwnedFd, name: &CString) -> io::Result<libc::stat> {
    // SAFETY: fstatat(2) into a zeroed stat buffer.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    let r = unsafe {
        libc::fstatat(
            dir.as_raw_fd(),
            name.as_ptr(),
            &mut st,
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(st)
}

/// Owner, mode and times of `src` (the dir fd itself with `name` None, else the entry) onto
/// the matching `dst`.
fn copy_meta(
    src_dir: &OwnedFd,
    name: Option<&CString>,
    dst_dir: &OwnedFd,
    dst_name: Option<&CString>,
    kind: libc::mode_t,
) -> io::Result<()> {
    let empty = CString::default();
    let (sname, sflags) = match name {
        Some(n) => (n, libc::AT_SYMLINK_NOFOLLOW),
        None => (&empty, libc::AT_EMPTY_PATH | libc::AT_SYMLINK_NOFOLLOW),
    };
    let (dname, dflags) = match dst_name {
        Some(n) => (n, libc::AT_SYMLINK_NOFOLLOW),
        None => (&empty, libc::AT_EMPTY_PATH | libc::AT_SYMLINK_NOFOLLOW),
    };
    // SAFETY: plain *at(2) calls on fds we hold and NUL-terminated names.
    unsafe {
        let mut st: libc::stat = std::mem::zeroed();
        if libc::fstatat(src_dir.as_raw_fd(), sname.as_ptr(), &mut st, sflags) < 0 {
            return Err(io::Error::last_os_error());
        }
        if libc::fchownat(
            dst_dir.as_raw_fd(),
            dname.as_ptr(),
            st.st_uid,
            st.st_gid,
            dflags,
        ) < 0
        {
            return Err(io::Error::last_os_error());
        }
        if kind != libc::S_IFLNK {
            // After chown, which clears set-id bits. fchmodat has no flags on Linux: go
            // through an O_PATH fd of the entry.
            let fd = libc::openat(
                dst_dir.as_raw_fd(),
                dname.as_ptr(),
                libc::O_PATH | libc::O_NOFOLLOW | libc::O_CLOEXEC,
            );
            let target = if dst_name.is_some() {
                fd
            } else {
                dst_dir.as_raw_fd()
            };
            if dst_name.is_some() && fd < 0 {
                return Err(io::Error::last_os_error());
            }
            let proc_path = CString::new(format!("/proc/self/fd/{target}")).unwrap_or_default();
            let r = libc::chmod(proc_path.as_ptr(), st.st_mode & 0o7777);
            let err = io::Error::last_os_error();
            if fd >= 0 {
                libc::close(fd);
            }
            if r < 0 {
                return Err(err);
            }
        }
        let times = [
            libc::timespec {
                tv_sec: st.st_atime,
                tv_nsec: st.st_atime_nsec,
            },
            libc::timespec {
                tv_sec: st.st_mtime,
                tv_nsec: st.st_mtime_nsec,
            },
        ];
        if dst_name.is_some() {
            libc::utimensat(
                dst_dir.as_raw_fd(),
                dname.as_ptr(),
                times.as_ptr(),
                libc::AT_SYMLINK_NOFOLLOW,
            );
        } else {
            libc::futimens(dst_dir.as_raw_fd(), times.as_ptr());
        }
    }
    Ok(())
}

/// Copies the entries of `src` into `dst` (both directory fds) without following symlinks.
/// `rel` is `dst`'s path below `dst_root`, for hard links.
fn copy_dir(
    src: &OwnedFd,
    dst: &OwnedFd,
    dst_root: &OwnedFd,
    rel: PathBuf,
    links: &mut std::collections::HashMap<(u64, u64), PathBuf>,
) -> io::Result<()> {
    let names: Vec<std::ffi::OsString> =
        fs::read_dir(format!("/proc/self/fd/{}", src.as_raw_fd()))?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<io::Result<_>>()?;
    for os_name in names {
        let name = c_name(&os_name)?;
        let st = stat_at(src, &name)?;
        let kind = st.st_mode & libc::S_IFMT;
        let entry_rel = rel.join(&os_name);
        match kind {
            libc::S_IFDIR => {
                nix::sys::stat::mkdirat(dst, name.as_c_str(), Mode::from_bits_truncate(0o700))
                    .map_err(errno_io)?;
                let flags =
                    OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
                let s = openat(src, name.as_c_str(), flags, Mode::empty()).map_err(errno_io)?;
                let d = openat(dst, name.as_c_str(), flags, Mode::empty()).map_err(errno_io)?;
                copy_dir(&s, &d, dst_root, entry_rel, links)?;
                copy_meta(&s, None, &d, None, kind)?;
                continue;
            }
            libc::S_IFREG => {
                if st.st_nlink > 1 {
                    let key = (st.st_dev, st.st_ino);
                    if let Some(first) = links.get(&key) {
                        let first = c_name(first.as_os_str())?;
                        // SAFETY: linkat(2) between names under fds we hold.
                        let r = unsafe {
                            libc::linkat(
                                dst_root.as_raw_fd(),
                                first.as_ptr(),
                                dst.as_raw_fd(),
                                name.as_ptr(),
                                0,
                            )
                        };
                        if r < 0 {
                            return Err(io::Error::last_os_error());
                        }
                        continue;
                    }
                    links.insert(key, entry_rel.clone());
                }
                let s = openat(
                    src,
                    name.as_c_str(),
                    OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                    Mode::empty(),
                )
                .map_err(errno_io)?;
                let d = openat(
                    dst,
                    name.as_c_str(),
                    OFlag::O_WRONLY
                        | OFlag::O_CREAT
                        | OFlag::O_EXCL
                        | OFlag::O_NOFOLLOW
                        | OFlag::O_CLOEXEC,
                    Mode::from_bits_truncate(0o600),
                )
                .map_err(errno_io)?;
                let mut s = fs::File::from(s);
                let mut d = fs::File::from(d);
                io::copy(&mut s, &mut d)?;
            }
            libc::S_IFLNK => {
                let target = nix::fcntl::readlinkat(src, name.as_c_str()).map_err(errno_io)?;
                nix::unistd::symlinkat(target.as_os_str(), dst, name.as_c_str())
                    .map_err(errno_io)?;
            }
            libc::S_IFCHR | libc::S_IFBLK | libc::S_IFIFO => {
                // SAFETY: mknodat(2) of a name in a directory fd we hold.
                let r = unsafe {
                    libc::mknodat(dst.as_raw_fd(), name.as_ptr(), kind | 0o600, st.st_rdev)
                };
                if r < 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            // Sockets are not copied (Docker skips them too).
            _ => continue,
        }
        copy_meta(src, Some(&name), dst, Some(&name), kind)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_normalize() {
        assert_eq!(normalize_target("/a//b/").as_deref(), Some("/a/b"));
        assert_eq!(normalize_target("/").as_deref(), Some("/"));
        assert_eq!(normalize_target("a/b"), None);
        assert_eq!(normalize_target("/a/../b"), None);
        assert_eq!(normalize_target("/a/./b").as_deref(), Some("/a/b"));
    }

    #[test]
    fn propagation_names() {
        assert_eq!(propagation_flags(None), Ok((libc::MS_PRIVATE, true)));
        assert_eq!(
            propagation_flags(Some("slave")),
            Ok((libc::MS_SLAVE, false))
        );
        assert!(propagation_flags(Some("bogus")).is_err());
    }
}
