//! The container's init before `execve`: runs in the child the supervisor forked into the new
//! pid namespace. It sets up its namespaces and mounts while the supervisor moves it into the
//! cgroup, and waits for the supervisor's release (`go`) before rlimits and anything after.
//!
//! Order: stdio → capability set and seccomp program computed (pure; errors before anything
//! changes) → unshare(mnt, uts, ipc[, net]) / setns(net) → `/` rprivate → overlay rootfs →
//! copy-up into fresh volumes, mount sources cloned (`mounts.rs`) → pivot_root → /proc, /sys,
//! /dev, /dev/pts, /dev/shm → tmpfs, bind and volume mounts, managed /etc files → sysctls →
//! masked and read-only paths → hostname, domainname → `lo` up → user lookup (in the image's
//! /etc) → workdir → read-only root → wait for `go` (in the cgroup) → rlimits, oom_score_adj → bounding set →
//! setgroups/setgid/setuid → chdir → PDEATHSIG → capset (effective, permitted, inheritable;
//! ambient cleared) → no_new_privs → PATH lookup → setsid → signals reset → seccomp →
//! (`init: true`: fork; PID 1 stays as the init, see `tinit.rs`) → execve. Every failure
//! becomes a [`StartError`] naming its stage. See [`super::security`] for the policy.
//!
//! With `allow_new_privileges` (no no_new_privs) the seccomp filter is installed before the
//! user switch instead: without no_new_privs the kernel requires CAP_SYS_ADMIN to install it.

use std::convert::Infallible;
use std::ffi::CString;
use std::fs;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::{symlink, DirBuilderExt};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{open, OFlag};
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{unshare, CloneFlags};
use nix::sys::signal::{sigprocmask, SigSet, SigmaskHow, Signal};
use nix::sys::stat::{mknod, umask, Mode, SFlag};
use nix::unistd::{
    access, chdir, execve, fchdir, pivot_root, setgroups, sethostname, setresgid, setresuid,
    AccessFlags, Gid, Uid,
};
use seccompiler::BpfProgram;

use super::lookup::{self, FileKind, DEFAULT_PATH};
use super::mounts;
use super::security;
use super::supervisor::{write_json_fd, StartError};
use super::tinit;
use super::user::{parse_group, resolve_user, ExecUser};
use super::{ulimit_resource, ContainerConfig, NetworkMode, Stage, TmpfsMount};

/// Docker's default /dev/shm size.
const DEFAULT_SHM_BYTES: u64 = 64 << 20;

pub(crate) struct InitContext<'a> {
    pub config: &'a ContainerConfig,
    pub dir: &'a Path,
    pub hostname: String,
    /// The supervisor put the container under a device cgroup allow-list (else the seccomp
    /// filter refuses mknod of device nodes).
    pub device_cgroup: bool,
    /// Files to write "0" to first, joining the container's cgroup on our own (v1; see
    /// `Cgroup::self_join_files`). Empty: the supervisor moves us.
    pub cgroup_join: Vec<std::path::PathBuf>,
    /// Read end of the sync pipe: one byte = in the cgroup, go on; EOF = the supervisor died.
    pub go: OwnedFd,
    /// Write end (close-on-exec) of the error pipe.
    pub report: OwnedFd,
    pub stdout: OwnedFd,
    pub stderr: OwnedFd,
}

/// Never returns: execs the workload, or reports why not and exits.
pub(crate) fn run(ctx: InitContext) -> ! {
    let err = match setup(&ctx) {
        Ok(never) => match never {},
        Err(e) => e,
    };
    let _ = write_json_fd(&ctx.report, &err);
    // SAFETY: leaving a forked child without running anything of the parent's.
    unsafe { libc::_exit(127) }
}

/// Blocks until the supervisor has moved this process into the container's cgroup (one byte
/// on the sync pipe); exits quietly if the supervisor died instead (EOF).
fn wait_for_go(go: &OwnedFd) {
    let mut byte = [0u8; 1];
    loop {
        match nix::unistd::read(go, &mut byte) {
            Ok(1) => return,
            Err(Errno::EINTR) => continue,
            // SAFETY: leaving a forked child without running anything of the parent's.
            _ => unsafe { libc::_exit(1) },
        }
    }
}

fn setup(ctx: &InitContext) -> Result<Infallible, StartError> {
    let cfg = ctx.config;
    // Into the cgroup before anything else (still in the host's mount namespace).
    for file in &ctx.cgroup_join {
        std::fs::write(file, "0").map_err(|e| {
            StartError::new(
                Stage::Cgroup,
                format!("join the cgroup: write {}: {e}", file.display()),
            )
        })?;
    }
    // Modes below are exact; the workload gets the usual 022.
    umask(Mode::empty());
    for (fd, target) in [(&ctx.stdout, 1), (&ctx.stderr, 2)] {
        // SAFETY: dup2 onto a standard fd.
        if unsafe { libc::dup2(fd.as_raw_fd(), target) } < 0 {
            return Err(StartError::errno(
                Stage::Supervisor,
                Errno::last(),
                "dup2 stdio",
            ));
        }
    }

    // The policy first: a bad capability name or an uncompilable filter changes nothing.
    let caps_mask = security::capability_mask(&cfg.cap_add, &cfg.cap_drop, cfg.privileged)
        .map_err(|m| StartError::new(Stage::Capabilities, m))?;
    let seccomp = if cfg.privileged || cfg.seccomp_unconfined {
        None
    } else {
        Some(
            security::seccomp_programs(caps_mask, !ctx.device_cgroup)
                .map_err(|m| StartError::new(Stage::Seccomp, m))?,
        )
    };

    // A network namespace to join is named by a host path: open it before leaving the host's
    // mount namespace view.
    let join_netns = match &cfg.network {
        NetworkMode::Join(path) => Some(
            open(path, OFlag::O_RDONLY | OFlag::O_CLOEXEC, Mode::empty()).map_err(|e| {
                StartError::errno(
                    Stage::Network,
                    e,
                    format!("open network namespace {}", path.display()),
                )
            })?,
        ),
        NetworkMode::New | NetworkMode::Host => None,
    };
    let mut flags = CloneFlags::CLONE_NEWNS | CloneFlags::CLONE_NEWUTS | CloneFlags::CLONE_NEWIPC;
    if cfg.network == NetworkMode::New {
        flags |= CloneFlags::CLONE_NEWNET;
    }
    unshare(flags)
        .map_err(|e| StartError::errno(Stage::Namespaces, e, format!("unshare({flags:?})")))?;
    if let Some(fd) = join_netns {
        nix::sched::setns(&fd, CloneFlags::CLONE_NEWNET).map_err(|e| {
            StartError::errno(Stage::Network, e, "setns into the network namespace")
        })?;
    }

    // Nothing we mount from here on propagates back to the host.
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(|e| StartError::errno(Stage::Rootfs, e, "make / rprivate"))?;

    let rootfs = ctx.dir.join("rootfs");
    let (opts_dir, opts) =
        overlay_options(&cfg.layers, &ctx.dir.join("upper"), &ctx.dir.join("work"))
            .map_err(|m| StartError::new(Stage::Rootfs, m))?;
    if let Some(d) = &opts_dir {
        chdir(d)
            .map_err(|e| StartError::errno(Stage::Rootfs, e, format!("chdir {}", d.display())))?;
    }
    mount(
        Some("overlay"),
        &rootfs,
        Some("overlay"),
        MsFlags::empty(),
        Some(opts.as_str()),
    )
    .map_err(|e| {
        StartError::errno(
            Stage::Rootfs,
            e,
            format!(
                "mount the overlay rootfs ({} layers) on {}",
                cfg.layers.len(),
                rootfs.display()
            ),
        )
    })?;

    // Bind mounts, volumes and the managed /etc files: sources cloned while host paths are
    // reachable, attached after /proc and /dev exist (see mounts.rs).
    let prepared = prepare_mounts(ctx, &rootfs)?;
    pivot_into(&rootfs)?;
    mount_filesystems(cfg.privileged, cfg.shm_size.unwrap_or(DEFAULT_SHM_BYTES))?;
    mount_all(cfg, prepared)?;
    write_sysctls(cfg)?;
    if !cfg.privileged {
        mask_paths()?;
    }

    sethostname(&ctx.hostname).map_err(|e| {
        StartError::errno(
            Stage::Hostname,
            e,
            format!("sethostname {:?}", ctx.hostname),
        )
    })?;
    if !cfg.domainname.is_empty() {
        set_domainname(&cfg.domainname).map_err(|e| {
            StartError::errno(
                Stage::Hostname,
                e,
                format!("setdomainname {:?}", cfg.domainname),
            )
        })?;
    }
    if cfg.network == NetworkMode::New {
        loopback_up().map_err(|e| StartError::errno(Stage::Network, e, "bring up lo"))?;
    }

    let passwd = read_optional("/etc/passwd")?;
    let group = read_optional("/etc/group")?;
    let mut user = resolve_user(&cfg.user, passwd.as_deref(), group.as_deref())
        .map_err(|e| StartError::new(Stage::User, e.to_string()))?;
    add_groups(&mut user, &cfg.group_add, group.as_deref())?;
    let env = build_env(&cfg.env, &ctx.hostname, &user.home);

    let cwd = if cfg.cwd.is_empty() {
        "/"
    } else {
        cfg.cwd.as_str()
    };
    if !Path::new(cwd).exists() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(cwd)
            .map_err(|e| {
                io_start_error(Stage::Cwd, &e, format!("create working directory {cwd:?}"))
            })?;
    }
    if cfg.read_only {
        mount(
            None::<&str>,
            "/",
            None::<&str>,
            MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_RDONLY,
            None::<&str>,
        )
        .map_err(|e| StartError::errno(Stage::Mounts, e, "remount / read-only"))?;
    }
    // The supervisor attaches us to the cgroup while we set up the namespaces and mounts
    // above (the first cgroup.procs write of a v1 host can take ~10 ms in the kernel); nothing
    // of the workload's runs before it is done.
    wait_for_go(&ctx.go);
    set_rlimits(cfg)?;
    if let Some(adj) = cfg.oom_score_adj {
        fs::write("/proc/self/oom_score_adj", adj.to_string())
            .map_err(|e| io_start_error(Stage::Rlimits, &e, format!("set oom_score_adj {adj}")))?;
    }

    if cfg.init {
        tinit::hide_cmdline();
    }
    // Still root with every capability: shrink the bounding set (needs CAP_SETPCAP).
    security::drop_bounding(caps_mask).map_err(|m| StartError::new(Stage::Capabilities, m))?;
    let mut seccomp = seccomp;
    if cfg.allow_new_privileges {
        if let Some(programs) = seccomp.take() {
            // Without no_new_privs the kernel wants CAP_SYS_ADMIN: install it now.
            security::install_seccomp(&programs)
                .map_err(|e| StartError::errno(Stage::Seccomp, e, "install the seccomp filter"))?;
        }
    }
    switch_user(&user)?;
    chdir(cwd).map_err(|e| {
        StartError::errno(Stage::Cwd, e, format!("chdir to working directory {cwd:?}"))
    })?;

    finalize(cfg, &env, security::cap_sets(caps_mask, user.uid), seccomp)
}

/// The last steps before exec: capability sets, no_new_privs, the executable, the seccomp
/// filter.
fn finalize(
    cfg: &ContainerConfig,
    env: &[String],
    caps: security::CapSets,
    seccomp: Option<Vec<BpfProgram>>,
) -> Result<Infallible, StartError> {
    // After the user switch: a credential change clears the parent-death signal.
    nix::sys::prctl::set_pdeathsig(Signal::SIGKILL)
        .map_err(|e| StartError::errno(Stage::Supervisor, e, "set the parent-death signal"))?;
    security::apply_cap_sets(&caps).map_err(|m| StartError::new(Stage::Capabilities, m))?;
    if !cfg.allow_new_privileges {
        security::set_no_new_privs()
            .map_err(|e| StartError::errno(Stage::Capabilities, e, "set no_new_privs"))?;
    }

    let path =
        lookup::find_executable(&cfg.args[0], lookup::path_from_env(env), probe).map_err(|e| {
            let errno = match e {
                lookup::LookupError::NotExecutable { .. } => Errno::EACCES,
                lookup::LookupError::IsDir { .. } => Errno::EISDIR,
                _ => Errno::ENOENT,
            };
            StartError {
                stage: Stage::Exec,
                errno: Some(errno as i32),
                message: e.to_string(),
            }
        })?;
    let cstr = |s: &str| {
        CString::new(s)
            .map_err(|_| StartError::new(Stage::Exec, format!("{s:?} contains a NUL byte")))
    };
    let c_path = CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|_| StartError::new(Stage::Exec, "the executable path contains a NUL byte"))?;
    let argv = cfg
        .args
        .iter()
        .map(|a| cstr(a))
        .collect::<Result<Vec<_>, _>>()?;
    let envp = env.iter().map(|a| cstr(a)).collect::<Result<Vec<_>, _>>()?;

    // Its own session (no controlling terminal: none is inherited anyway).
    let _ = nix::unistd::setsid();
    umask(Mode::from_bits_truncate(0o022));
    reset_signals();
    // Nothing but 0, 1, 2 may leak into the workload.
    // SAFETY: close_range(2) with the CLOEXEC flag only marks fds.
    unsafe {
        libc::syscall(
            libc::SYS_close_range,
            3u32,
            u32::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        );
    }

    // Last: from here on the filter applies (it allows everything below).
    if let Some(programs) = &seccomp {
        security::install_seccomp(programs)
            .map_err(|e| StartError::errno(Stage::Seccomp, e, "install the seccomp filter"))?;
    }
    if cfg.init {
        // PID 1 stays as the init; the child goes on to exec the workload.
        tinit::fork_init()?;
    }
    let Err(e) = execve(&c_path, &argv, &envp);
    let hint = match e {
        Errno::ENOENT => " (a missing interpreter or dynamic loader? check its #! line)",
        Errno::ENOEXEC => " (not an executable for this machine, or a script without #!)",
        _ => "",
    };
    Err(StartError::errno(
        Stage::Exec,
        e,
        format!("exec {:?}{hint}", path.display().to_string()),
    ))
}

pub(crate) fn io_start_error(stage: Stage, e: &io::Error, what: String) -> StartError {
    StartError {
        stage,
        errno: e.raw_os_error(),
        message: format!("{what}: {e}"),
    }
}

/// The longest mount data the kernel takes (one page, with its NUL).
const MAX_MOUNT_DATA: usize = 4095;

/// The overlay mount options for `layers` (lowest first: overlay lists the top-most first).
/// When absolute paths would exceed a page, the paths are given relative to their deepest
/// common ancestor, which is returned to chdir into before mounting.
pub(crate) fn overlay_options(
    layers: &[PathBuf],
    upper: &Path,
    work: &Path,
) -> Result<(Option<PathBuf>, String), String> {
    let render = |f: &dyn Fn(&Path) -> String| {
        let lower: Vec<String> = layers.iter().rev().map(|l| f(l)).collect();
        format!(
            "lowerdir={},upperdir={},workdir={}",
            lower.join(":"),
            f(upper),
            f(work)
        )
    };
    let abs = render(&|p: &Path| p.display().to_string());
    if abs.len() <= MAX_MOUNT_DATA {
        return Ok((None, abs));
    }
    let mut common: PathBuf = upper.to_path_buf();
    for p in layers.iter().map(PathBuf::as_path).chain([work]) {
        while !p.starts_with(&common) {
            if !common.pop() {
                break;
            }
        }
    }
    let rel = render(&|p: &Path| {
        let r = p.strip_prefix(&common).unwrap_or(p).display().to_string();
        if r.is_empty() {
            ".".to_string()
        } else {
            r
        }
    });
    if rel.len() <= MAX_MOUNT_DATA {
        return Ok((Some(common), rel));
    }
    Err(format!(
        "the overlay mount options for {} layers are {} bytes, over the kernel's limit of \
         {MAX_MOUNT_DATA} (even relative to {}): keep layer directory paths short or flatten \
         the image",
        layers.len(),
        rel.len(),
        common.display()
    ))
}

/// pivot_root into `rootfs` (a mount point) and drop the old root.
fn pivot_into(rootfs: &Path) -> Result<(), StartError> {
    let err = |e, what: &str| StartError::errno(Stage::PivotRoot, e, what.to_string());
    let new_root = open(
        rootfs,
        OFlag::O_DIRECTORY | OFlag::O_RDONLY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| err(e, &format!("open {}", rootfs.display())))?;
    fchdir(&new_root).map_err(|e| err(e, "fchdir to the new root"))?;
    // The old root ends up stacked on the new one at "."; unmount it lazily.
    pivot_root(".", ".").map_err(|e| err(e, "pivot_root"))?;
    umount2(".", MntFlags::MNT_DETACH).map_err(|e| err(e, "unmount the old root"))?;
    chdir("/").map_err(|e| err(e, "chdir /"))?;
    Ok(())
}

/// A directory to mount on: made if missing; anything else (a symlink, a file) is refused.
fn ensure_dir(path: &str, mode: u32) -> Result<(), StartError> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => Err(StartError::new(
            Stage::Mounts,
            format!(
                "{path} in the image is not a directory (a symlink or a file); cannot mount on it"
            ),
        )),
        Err(e) if e.kind() == io::ErrorKind::NotFound => fs::DirBuilder::new()
            .mode(mode)
            .create(path)
            .map_err(|e| io_start_error(Stage::Mounts, &e, format!("create {path}"))),
        Err(e) => Err(io_start_error(Stage::Mounts, &e, format!("stat {path}"))),
    }
}

fn mount_fs(
    fstype: &str,
    target: &str,
    flags: MsFlags,
    data: Option<&str>,
) -> Result<(), StartError> {
    mount(Some(fstype), target, Some(fstype), flags, data)
        .map_err(|e| StartError::errno(Stage::Mounts, e, format!("mount {fstype} on {target}")))
}

/// The character devices every container gets: (name, major, minor).
const DEVICES: &[(&str, u32, u32)] = &[
    ("null", 1, 3),
    ("zero", 1, 5),
    ("full", 1, 7),
    ("random", 1, 8),
    ("urandom", 1, 9),
    ("tty", 5, 0),
];

fn mount_filesystems(privileged: bool, shm_bytes: u64) -> Result<(), StartError> {
    let common = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    ensure_dir("/proc", 0o555)?;
    mount_fs("proc", "/proc", common, None)?;
    ensure_dir("/sys", 0o555)?;
    let sys_flags = if privileged {
        common
    } else {
        common | MsFlags::MS_RDONLY
    };
    mount_fs("sysfs", "/sys", sys_flags, None)?;
    ensure_dir("/dev", 0o755)?;
    mount_fs(
        "tmpfs",
        "/dev",
        MsFlags::MS_NOSUID | MsFlags::MS_STRICTATIME,
        Some("mode=755,size=65536k"),
    )?;
    for &(name, major, minor) in DEVICES {
        let path = format!("/dev/{name}");
        mknod(
            path.as_str(),
            SFlag::S_IFCHR,
            Mode::from_bits_truncate(0o666),
            libc::makedev(major, minor),
        )
        .map_err(|e| StartError::errno(Stage::Mounts, e, format!("mknod {path}")))?;
    }
    ensure_dir("/dev/pts", 0o755)?;
    mount_fs(
        "devpts",
        "/dev/pts",
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some("newinstance,ptmxmode=0666,mode=0620,gid=5"),
    )?;
    ensure_dir("/dev/shm", 0o1777)?;
    mount_fs(
        "tmpfs",
        "/dev/shm",
        common,
        Some(&format!("mode=1777,size={shm_bytes}")),
    )?;
    for (target, link) in [
        ("pts/ptmx", "/dev/ptmx"),
        ("/proc/self/fd", "/dev/fd"),
        ("/proc/self/fd/0", "/dev/stdin"),
        ("/proc/self/fd/1", "/dev/stdout"),
        ("/proc/self/fd/2", "/dev/stderr"),
    ] {
        symlink(target, link).map_err(|e| {
            io_start_error(Stage::Mounts, &e, format!("symlink {link} -> {target}"))
        })?;
    }
    Ok(())
}

/// The managed /etc files: (file in the state dir, target).
pub(crate) const ETC_FILES: [(&str, &str); 3] = [
    ("hosts", "/etc/hosts"),
    ("hostname", "/etc/hostname"),
    ("resolv.conf", "/etc/resolv.conf"),
];

/// Before pivot_root: copy-up into fresh volumes, then a detached clone of every mount source
/// (the config's mounts, then the managed /etc files not overridden by a mount).
fn prepare_mounts(ctx: &InitContext, rootfs: &Path) -> Result<Vec<mounts::Prepared>, StartError> {
    let cfg = ctx.config;
    let mut out = Vec::with_capacity(cfg.mounts.len() + ETC_FILES.len());
    for m in &cfg.mounts {
        if m.copy_up && m.kind == mounts::MountKind::Volume {
            mounts::copy_up(rootfs, &m.target, &m.source)?;
        }
        out.push(mounts::prepare(
            &m.source,
            &m.target,
            m.read_only,
            m.propagation.as_deref(),
        )?);
    }
    if cfg.manage_etc {
        for (file, target) in ETC_FILES {
            // A mount of the config at the file, or above it (e.g. a bind of a host dir on
            // /etc), wins: its mount point would be made in the bound host directory.
            let covered = out.iter().any(|p| {
                p.target == target
                    || target
                        .strip_prefix(p.target.as_str())
                        .is_some_and(|rest| rest.starts_with('/'))
            });
            if covered {
                continue;
            }
            out.push(mounts::prepare(&ctx.dir.join(file), target, false, None)?);
        }
    }
    Ok(out)
}

/// After pivot_root and /proc, /dev: the tmpfs mounts and the prepared binds, parents first
/// (by target depth; the config's order among equals, tmpfs first).
fn mount_all(cfg: &ContainerConfig, prepared: Vec<mounts::Prepared>) -> Result<(), StartError> {
    enum Item<'a> {
        Tmpfs(&'a TmpfsMount),
        Bind(mounts::Prepared),
    }
    let depth = |p: &str| p.split('/').filter(|c| !c.is_empty()).count();
    let mut items: Vec<(usize, Item)> = cfg
        .tmpfs
        .iter()
        .map(|t| (depth(&t.path), Item::Tmpfs(t)))
        .chain(
            prepared
                .into_iter()
                .map(|p| (depth(&p.target), Item::Bind(p))),
        )
        .collect();
    items.sort_by_key(|(d, _)| *d);
    let root = open(
        "/",
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| StartError::errno(Stage::Mounts, e, "open /"))?;
    for (_, item) in &items {
        match item {
            Item::Tmpfs(t) => mount_one_tmpfs(t)?,
            Item::Bind(p) => mounts::attach(&root, p)?,
        }
    }
    Ok(())
}

/// A tmpfs mount of the config: nosuid, nodev, noexec (Docker's defaults), mode 1777 unless
/// set.
fn mount_one_tmpfs(t: &TmpfsMount) -> Result<(), StartError> {
    match fs::symlink_metadata(&t.path) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => {
            return Err(StartError::new(
                Stage::Mounts,
                format!(
                    "tmpfs mount point {} in the image is not a directory",
                    t.path
                ),
            ))
        }
        Err(_) => fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(&t.path)
            .map_err(|e| io_start_error(Stage::Mounts, &e, format!("create {}", t.path)))?,
    }
    let mut data = format!("mode={:o}", t.mode.unwrap_or(0o1777));
    if let Some(size) = t.size {
        data.push_str(&format!(",size={size}"));
    }
    mount_fs(
        "tmpfs",
        &t.path,
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        Some(&data),
    )?;
    Ok(())
}

/// Writes the (validated, namespaced) sysctls under /proc/sys, before it is made read-only.
fn write_sysctls(cfg: &ContainerConfig) -> Result<(), StartError> {
    let own_netns = cfg.network != NetworkMode::Host;
    for (name, value) in &cfg.sysctls {
        let rel = security::sysctl_path(name, own_netns)
            .map_err(|m| StartError::new(Stage::Sysctl, m))?;
        let path = format!("/proc/sys/{rel}");
        fs::write(&path, value).map_err(|e| {
            io_start_error(Stage::Sysctl, &e, format!("set sysctl {name}={value:?}"))
        })?;
    }
    Ok(())
}

/// Docker's masked paths (/dev/null over files, an empty read-only tmpfs over directories) and
/// read-only paths (a read-only bind of themselves). Paths the kernel does not have are skipped.
fn mask_paths() -> Result<(), StartError> {
    for path in security::MASKED_PATHS {
        let meta = match fs::symlink_metadata(path) {
            Ok(m) => m,
            Err(_) => continue,
        };
        let r = if meta.is_dir() {
            mount(
                Some("tmpfs"),
                *path,
                Some("tmpfs"),
                MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
                Some("size=0,mode=0555"),
            )
        } else {
            mount(
                Some("/dev/null"),
                *path,
                None::<&str>,
                MsFlags::MS_BIND,
                None::<&str>,
            )
        };
        r.map_err(|e| StartError::errno(Stage::Mounts, e, format!("mask {path}")))?;
    }
    for path in security::READONLY_PATHS {
        if fs::symlink_metadata(path).is_err() {
            continue;
        }
        mount(
            Some(*path),
            *path,
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None::<&str>,
        )
        .map_err(|e| StartError::errno(Stage::Mounts, e, format!("bind {path}")))?;
        mount(
            None::<&str>,
            *path,
            None::<&str>,
            MsFlags::MS_BIND
                | MsFlags::MS_REMOUNT
                | MsFlags::MS_RDONLY
                | MsFlags::MS_NOSUID
                | MsFlags::MS_NODEV
                | MsFlags::MS_NOEXEC,
            None::<&str>,
        )
        .map_err(|e| StartError::errno(Stage::Mounts, e, format!("make {path} read-only")))?;
    }
    Ok(())
}

/// The config's ulimits (`-1` = unlimited).
pub(crate) fn set_rlimits(cfg: &ContainerConfig) -> Result<(), StartError> {
    for u in &cfg.ulimits {
        let resource = ulimit_resource(&u.name).ok_or_else(|| {
            StartError::new(Stage::Rlimits, format!("unknown ulimit {:?}", u.name))
        })?;
        let lim = |v: i64| {
            if v < 0 {
                libc::RLIM_INFINITY
            } else {
                v as libc::rlim_t
            }
        };
        nix::sys::resource::setrlimit(resource, lim(u.soft), lim(u.hard)).map_err(|e| {
            StartError::errno(
                Stage::Rlimits,
                e,
                format!("set ulimit {} to {}:{}", u.name, u.soft, u.hard),
            )
        })?;
    }
    Ok(())
}

/// `group_add`: names from the image's /etc/group, or numeric gids.
pub(crate) fn add_groups(
    user: &mut ExecUser,
    extra: &[String],
    group: Option<&str>,
) -> Result<(), StartError> {
    let entries = group.map(parse_group).unwrap_or_default();
    for g in extra {
        let gid = match g.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => entries
                .iter()
                .find(|e| e.name == *g)
                .map(|e| e.gid)
                .ok_or_else(|| {
                    StartError::new(
                        Stage::User,
                        format!("group_add: no group {g:?} in the image's /etc/group"),
                    )
                })?,
        };
        if !user.groups.contains(&gid) {
            user.groups.push(gid);
        }
    }
    Ok(())
}

fn set_domainname(name: &str) -> Result<(), Errno> {
    // SAFETY: setdomainname(2) reads `len` bytes of the string.
    let r = unsafe { libc::setdomainname(name.as_ptr().cast(), name.len()) };
    if r != 0 {
        return Err(Errno::last());
    }
    Ok(())
}

/// `ip link set lo up`, with the SIOCSIFFLAGS ioctl on an AF_INET socket of the new netns.
fn loopback_up() -> Result<(), Errno> {
    // SAFETY: socket(2); the fd is owned right away.
    let raw = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        return Err(Errno::last());
    }
    // SAFETY: a fresh fd from socket(2).
    let sock = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(raw) };
    // SAFETY: ifreq is plain old data; all-zero is a valid value.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in ifr.ifr_name.iter_mut().zip(b"lo") {
        *dst = *src as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS/SIOCSIFFLAGS read/write the flags member of a valid ifreq.
    unsafe {
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS as _, &mut ifr) < 0 {
            return Err(Errno::last());
        }
        ifr.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS as _, &ifr) < 0 {
            return Err(Errno::last());
        }
    }
    Ok(())
}

pub(crate) fn read_optional(path: &str) -> Result<Option<String>, StartError> {
    match fs::read(path) {
        Ok(b) => Ok(Some(String::from_utf8_lossy(&b).into_owned())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_start_error(Stage::User, &e, format!("read {path}"))),
    }
}

pub(crate) fn switch_user(user: &ExecUser) -> Result<(), StartError> {
    let groups: Vec<Gid> = user.groups.iter().map(|&g| Gid::from_raw(g)).collect();
    setgroups(&groups).map_err(|e| StartError::errno(Stage::User, e, "setgroups"))?;
    let gid = Gid::from_raw(user.gid);
    setresgid(gid, gid, gid)
        .map_err(|e| StartError::errno(Stage::User, e, format!("setgid {}", user.gid)))?;
    let uid = Uid::from_raw(user.uid);
    setresuid(uid, uid, uid)
        .map_err(|e| StartError::errno(Stage::User, e, format!("setuid {}", user.uid)))?;
    Ok(())
}

/// What `argv[0]` candidates are (following symlinks, as the current user).
pub(crate) fn probe(p: &Path) -> FileKind {
    match fs::metadata(p) {
        Err(_) => FileKind::Missing,
        Ok(m) if m.is_dir() => FileKind::Dir,
        Ok(m) if !m.is_file() => FileKind::NotExecutable,
        Ok(_) => {
            if access(p, AccessFlags::X_OK).is_ok() {
                FileKind::Executable
            } else {
                FileKind::NotExecutable
            }
        }
    }
}

/// The workload's environment: the config's, plus PATH, HOSTNAME and HOME when missing.
pub(crate) fn build_env(env: &[String], hostname: &str, home: &str) -> Vec<String> {
    let has = |key: &str| {
        env.iter()
            .any(|kv| kv.split_once('=').map(|(k, _)| k) == Some(key))
    };
    let mut out = Vec::with_capacity(env.len() + 3);
    if !has("PATH") {
        out.push(format!("PATH={DEFAULT_PATH}"));
    }
    if !has("HOSTNAME") {
        out.push(format!("HOSTNAME={hostname}"));
    }
    out.extend(env.iter().cloned());
    if !has("HOME") {
        out.push(format!("HOME={home}"));
    }
    out
}

/// Default dispositions and an empty mask for the workload (Rust ignores SIGPIPE at start, the
/// supervisor blocks the signals it forwards, and ignored signals survive exec — including
/// glibc's reserved 32 and 33, which only the raw syscall can reset).
pub(crate) fn reset_signals() {
    // The kernel's struct sigaction, all zero: SIG_DFL, no flags, (no restorer,) empty mask.
    // Four words cover the layouts with and without sa_restorer.
    let default_action = [0u64; 4];
    for sig in 1..65 {
        if sig == libc::SIGKILL || sig == libc::SIGSTOP {
            continue;
        }
        // SAFETY: rt_sigaction(2) reads a zeroed struct sigaction; no old action is written.
        unsafe {
            libc::syscall(
                libc::SYS_rt_sigaction,
                sig,
                default_action.as_ptr(),
                std::ptr::null_mut::<libc::c_void>(),
                8usize,
            );
        }
    }
    let _ = sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlay_lists_the_top_layer_first() {
        let layers = vec![PathBuf::from("/img/l/0"), PathBuf::from("/img/l/1")];
        let (dir, opts) = overlay_options(&layers, Path::new("/c/x/upper"), Path::new("/c/x/work"))
            .expect("short");
        assert_eq!(dir, None);
        assert_eq!(
            opts,
            "lowerdir=/img/l/1:/img/l/0,upperdir=/c/x/upper,workdir=/c/x/work"
        );
    }

    #[test]
    fn long_options_fall_back_to_relative_paths() {
        let base = format!("/var/lib/shoal/{}", "d".repeat(100));
        let layers: Vec<PathBuf> = (0..40)
            .map(|i| PathBuf::from(format!("{base}/layers/{i:02}")))
            .collect();
        let upper = PathBuf::from(format!("{base}/containers/abc/upper"));
        let work = PathBuf::from(format!("{base}/containers/abc/work"));
        let (dir, opts) = overlay_options(&layers, &upper, &work).expect("fits when relative");
        assert_eq!(dir, Some(PathBuf::from(&base)));
        assert!(opts.starts_with("lowerdir=layers/39:layers/38:"), "{opts}");
        assert!(
            opts.ends_with(",upperdir=containers/abc/upper,workdir=containers/abc/work"),
            "{opts}"
        );
        assert!(opts.len() <= MAX_MOUNT_DATA);

        let many: Vec<PathBuf> = (0..300)
            .map(|i| PathBuf::from(format!("/a/{}{i}", "x".repeat(20))))
            .collect();
        let err = overlay_options(&many, Path::new("/b/upper"), Path::new("/b/work"))
            .expect_err("too long");
        assert!(err.contains("300 layers") && err.contains("limit"), "{err}");
    }

    #[test]
    fn env_gets_defaults_only_when_missing() {
        let env = build_env(&["A=1".into()], "h1", "/root");
        assert_eq!(
            env,
            [
                format!("PATH={DEFAULT_PATH}"),
                "HOSTNAME=h1".into(),
                "A=1".into(),
                "HOME=/root".into()
            ]
        );
        let given: Vec<String> = vec!["PATH=/x".into(), "HOME=/h".into(), "HOSTNAME=mine".into()];
        assert_eq!(build_env(&given, "h1", "/root"), given);
    }
}
