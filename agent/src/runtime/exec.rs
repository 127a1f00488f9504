//! `docker exec`: a process run inside a running container.
//!
//! # Process model
//!
//! The daemon never forks (STACK.md): [`Runtime::exec`] spawns the `shoal` binary again with
//! the hidden first argument [`EXEC_ARG`] (dispatched by `src/main.rs` to [`exec_main`] before
//! any thread exists). Its stdin is one end of a `SOCK_SEQPACKET` socketpair, the control
//! socket; over it the daemon sends the request (JSON: state dir and [`ExecSpec`]) together
//! with the stdio pipes of the process (SCM_RIGHTS), and the helper answers with one
//! [`Report`] when the process started (with a pidfd of it and, with a TTY, the PTY master)
//! or failed, and one when it exited.
//!
//! The helper (single-threaded, host pid namespace) checks that the container's init is still
//! the process `state.json` names (pid and start time, through a pidfd), opens the files that
//! put a process into the container's cgroups (the host's cgroupfs is not visible inside: v1's
//! `tasks`, which the child writes "0" to itself, or v2's `cgroup.procs`, written for it),
//! computes the capability set and the seccomp program from the container's config (the same
//! [`security`] policy as the init), then joins the init's ipc, uts, net, pid and mount
//! namespaces (`setns` on the pidfd: all at once, exactly that process; `/proc/<pid>/ns/*` on
//! kernels before 5.8). Now inside the container's filesystem, it resolves the user in the
//! container's /etc/passwd and /etc/group and, with a TTY, opens `/dev/ptmx` of the
//! container's devpts (so the terminal is the container's `/dev/pts/N`). Then it forks: the
//! child is in the container's pid namespace (a `setns` of the pid namespace applies to
//! children). The helper releases it (sync pipe) once it is in every cgroup of the container
//! (v2: the helper writes it in first; v1: its first act is to write itself in). The child: setsid (and the controlling TTY), stdio, rlimits,
//! oom_score_adj, bounding set, user, working directory, capability sets, no_new_privs, PATH
//! lookup, seccomp, execve: the init's order (`init.rs`). A failure before the exec is sent as
//! JSON over a close-on-exec pipe, so [`RuntimeError::ExecFailed`] names the stage.
//!
//! The process dies with the container: it is in the container's pid namespace, which the
//! kernel empties when the init dies. It also gets `PR_SET_PDEATHSIG = SIGKILL` against the
//! helper, so it never outlives its exit reporter. The helper is not in the container's cgroup
//! (it is not counted, frozen or listed by `top`).
//!
//! # Choices
//! - Environment: the container's, then the exec's (same key: the exec's wins), then `PATH`,
//!   `HOSTNAME` and `HOME` (of the exec's user) when missing, as for the container.
//! - User: the exec's, else the container's; the config's `group_add` applies too (as Docker).
//! - Working directory: the exec's, else the container's, else `/`; it must exist.
//! - A paused container refuses exec ([`RuntimeError::Paused`]), as Docker does.
//! - Dropping an [`ExecHandle`] does not kill the process (as a detached `docker exec`).

use std::convert::Infallible;
use std::ffi::CString;
use std::fs;
use std::io::{self, IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::PathBuf;
use std::pin::Pin;
use std::process::Stdio;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use nix::errno::Errno;
use nix::fcntl::{open, OFlag};
use nix::sched::{setns, CloneFlags};
use nix::sys::signal::Signal;
use nix::sys::socket::{
    recvmsg, sendmsg, socketpair, AddressFamily, ControlMessage, ControlMessageOwned, MsgFlags,
    SockFlag, SockType,
};
use nix::sys::stat::{umask, Mode};
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::{chdir, execve, fork, pipe2, ForkResult};
use serde::{Deserialize, Serialize};
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, Interest, ReadBuf};

use super::cgroup::CgroupFs;
use super::init;
use super::lookup::{self, LookupError};
use super::relay::set_nonblocking;
use super::security;
use super::supervisor::{
    close_inherited_fds, read_to_end_fd, write_all_fd, write_json_fd, StartError,
};
use super::user::{resolve_user, validate_spec, ExecUser};
use super::{
    io_err, pidfd_open, pidfd_send_signal, proc_stat, read_json, ContainerConfig, ContainerStatus,
    Runtime, RuntimeError, Stage, StateFile, CONFIG_FILE, START_TIMEOUT, STATE_FILE,
};

/// The hidden first argument that turns the `shoal` binary into the exec helper.
pub const EXEC_ARG: &str = "__shoal-exec";

/// Largest request the control socket carries (args and env).
const MAX_MESSAGE: usize = 128 * 1024;

/// What to run in a container (Docker's `ExecConfig`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecSpec {
    /// The full argv; `args[0]` is looked up on the PATH of the process's environment.
    pub args: Vec<String>,
    /// `KEY=VALUE`, added to (and overriding) the container's environment.
    #[serde(default)]
    pub env: Vec<String>,
    /// `name|uid[:group|gid]`; `""` → the container's user.
    #[serde(default)]
    pub user: String,
    /// Absolute; `""` → the container's working directory.
    #[serde(default)]
    pub cwd: String,
    /// Allocate a terminal (in the container's devpts): stdout and stderr are the terminal,
    /// and stdin too when `stdin` is set.
    #[serde(default)]
    pub tty: bool,
    /// Keep stdin open (`-i`); else the process's stdin is /dev/null.
    #[serde(default)]
    pub stdin: bool,
    /// The terminal's initial size (rows, columns), with `tty`.
    #[serde(default)]
    pub console_size: Option<(u16, u16)>,
}

impl ExecSpec {
    /// A spec running `args` (no TTY, no stdin, the container's user and directory).
    pub fn new<S: Into<String>>(args: impl IntoIterator<Item = S>) -> ExecSpec {
        ExecSpec {
            args: args.into_iter().map(Into::into).collect(),
            ..ExecSpec::default()
        }
    }

    fn validate(&self) -> Result<(), String> {
        if self.args.is_empty() || self.args[0].is_empty() {
            return Err("no command: args is empty".into());
        }
        if let Some(a) = self.args.iter().find(|a| a.contains('\0')) {
            return Err(format!("argument {a:?} contains a NUL byte"));
        }
        for kv in &self.env {
            match kv.split_once('=') {
                Some((k, _)) if !k.is_empty() && !kv.contains('\0') => {}
                _ => return Err(format!("environment entry {kv:?} is not KEY=VALUE")),
            }
        }
        validate_spec(&self.user).map_err(|e| e.to_string())?;
        if !self.cwd.is_empty() && (!self.cwd.starts_with('/') || self.cwd.contains('\0')) {
            return Err(format!(
                "working directory {:?} is not an absolute path",
                self.cwd
            ));
        }
        Ok(())
    }
}

/// The daemon's request to the helper.
#[derive(Debug, Serialize, Deserialize)]
struct Request {
    dir: PathBuf,
    spec: ExecSpec,
}

/// The helper's reports over the control socket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "report", rename_all = "snake_case")]
enum Report {
    /// The process exec'd. Sent with its pidfd, then the PTY master (with a TTY).
    Started { pid: i32 },
    Failed {
        stage: Stage,
        errno: Option<i32>,
        message: String,
        /// The container is not running (any more).
        #[serde(default)]
        not_running: bool,
        #[serde(default)]
        paused: bool,
    },
    /// The exit code, or 128 + signal.
    Exited { code: i32, signal: Option<i32> },
}

// ---------------------------------------------------------------------------------------------
// The control socket

/// Sends one message with `fds` attached.
fn send_msg(fd: RawFd, data: &[u8], fds: &[RawFd]) -> nix::Result<()> {
    let iov = [IoSlice::new(data)];
    let cmsg = [ControlMessage::ScmRights(fds)];
    let cmsgs: &[ControlMessage] = if fds.is_empty() { &[] } else { &cmsg };
    loop {
        match sendmsg::<()>(fd, &iov, cmsgs, MsgFlags::MSG_NOSIGNAL, None) {
            Ok(_) => return Ok(()),
            Err(Errno::EINTR) => {}
            Err(e) => return Err(e),
        }
    }
}

/// Receives one message and the fds attached to it (close-on-exec); `None` at EOF.
fn recv_msg(fd: RawFd, flags: MsgFlags) -> nix::Result<Option<(Vec<u8>, Vec<OwnedFd>)>> {
    let mut buf = vec![0u8; MAX_MESSAGE];
    let mut space = nix::cmsg_space!([RawFd; 4]);
    loop {
        let mut iov = [IoSliceMut::new(&mut buf)];
        let msg = match recvmsg::<()>(
            fd,
            &mut iov,
            Some(&mut space),
            flags | MsgFlags::MSG_CMSG_CLOEXEC,
        ) {
            Ok(m) => m,
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(e),
        };
        let mut fds = Vec::new();
        for c in msg.cmsgs()? {
            if let ControlMessageOwned::ScmRights(raw) = c {
                // SAFETY: the kernel just installed these fds in our table for us.
                fds.extend(raw.into_iter().map(|f| unsafe { OwnedFd::from_raw_fd(f) }));
            }
        }
        let n = msg.bytes;
        if msg.flags.contains(MsgFlags::MSG_TRUNC) {
            return Err(Errno::EMSGSIZE);
        }
        if n == 0 && fds.is_empty() {
            return Ok(None);
        }
        buf.truncate(n);
        return Ok(Some((buf, fds)));
    }
}

// ---------------------------------------------------------------------------------------------
// The helper: `shoal __shoal-exec`

/// The entry point of `shoal __shoal-exec`: returns the process exit code. Must be called
/// before any other thread exists. fd 0 is the control socket.
pub fn exec_main() -> i32 {
    close_inherited_fds();
    // SAFETY: fcntl(F_DUPFD_CLOEXEC) on fd 0, which we own; the result is a fresh fd.
    let raw = unsafe { libc::fcntl(0, libc::F_DUPFD_CLOEXEC, 3) };
    if raw < 0 {
        eprintln!("shoal exec helper: fd 0 is not the control socket");
        return 2;
    }
    // SAFETY: fcntl just returned this fd.
    let control = unsafe { OwnedFd::from_raw_fd(raw) };
    // fd 0 must not keep the socket open for the process (it gets its own stdin anyway).
    if let Ok(null) = open("/dev/null", OFlag::O_RDWR, Mode::empty()) {
        // SAFETY: dup2 onto fd 0.
        unsafe { libc::dup2(null.as_raw_fd(), 0) };
    }
    let (data, fds) = match recv_msg(control.as_raw_fd(), MsgFlags::empty()) {
        Ok(Some(m)) => m,
        Ok(None) => return 2,
        Err(e) => {
            eprintln!("shoal exec helper: receiving the request: {e}");
            return 2;
        }
    };
    let request: Request = match serde_json::from_slice(&data) {
        Ok(r) => r,
        Err(e) => {
            report(
                &control,
                &failed(StartError::new(
                    Stage::Supervisor,
                    format!("bad exec request: {e}"),
                )),
                &[],
            );
            return 2;
        }
    };
    match run_helper(&control, &request, fds) {
        Ok(()) => 0,
        Err(r) => {
            report(&control, &r, &[]);
            1
        }
    }
}

fn failed(e: StartError) -> Report {
    Report::Failed {
        stage: e.stage,
        errno: e.errno,
        message: e.message,
        not_running: false,
        paused: false,
    }
}

/// Sends a report; a daemon that went away is not an error of ours.
fn report(control: &OwnedFd, r: &Report, fds: &[RawFd]) {
    let data = serde_json::to_vec(r).unwrap_or_default();
    if let Err(e) = send_msg(control.as_raw_fd(), &data, fds) {
        if e != Errno::EPIPE && e != Errno::ECONNRESET {
            eprintln!("shoal exec helper: sending a report: {e}");
        }
    }
}

/// What the child needs (everything computed before the fork).
struct ChildCtx<'a> {
    config: &'a ContainerConfig,
    args: &'a [String],
    env: Vec<String>,
    user: ExecUser,
    cwd: String,
    caps_mask: u64,
    seccomp: Option<Vec<seccompiler::BpfProgram>>,
    /// The terminal (slave side), or the three stdio fds.
    tty: Option<OwnedFd>,
    stdio: [Option<OwnedFd>; 3],
    go: OwnedFd,
    errors: OwnedFd,
    /// The container's v1 `tasks` files (opened on the host): written "0" first thing.
    cgroup_join: Vec<fs::File>,
}

fn run_helper(control: &OwnedFd, req: &Request, fds: Vec<OwnedFd>) -> Result<(), Report> {
    let err = |stage, msg: String| failed(StartError::new(stage, msg));
    let spec = &req.spec;
    spec.validate().map_err(|m| err(Stage::Config, m))?;
    let config: ContainerConfig = read_json(&req.dir.join(CONFIG_FILE))
        .map_err(|e| err(Stage::Config, e.to_string()))?
        .ok_or_else(|| err(Stage::Config, "the container has no config.json".into()))?;
    let not_running = || Report::Failed {
        stage: Stage::Supervisor,
        errno: None,
        message: format!("container {:?} is not running", config.id),
        not_running: true,
        paused: false,
    };
    let state: StateFile = read_json(&req.dir.join(STATE_FILE))
        .map_err(|e| err(Stage::Config, e.to_string()))?
        .ok_or_else(not_running)?;
    let init_pid = state.pid.ok_or_else(not_running)?;
    let pidfd = state.init_fd().ok_or_else(not_running)?;
    let cgroup =
        CgroupFs::new(state.cgroup_root.clone(), state.cgroup_version).cgroup(&state.cgroup);
    if cgroup.frozen() {
        return Err(Report::Failed {
            stage: Stage::Supervisor,
            errno: None,
            message: format!("container {:?} is paused, unpause it first", config.id),
            not_running: false,
            paused: true,
        });
    }
    // The host's cgroupfs is out of sight once in the container's mount namespace.
    // On v1 the child joins on its own (see `Cgroup::self_join_files`), else we move it.
    let self_join = cgroup.self_join_files();
    let child_joins = !self_join.is_empty();
    let join_files = if child_joins {
        self_join
    } else {
        cgroup.procs_files()
    };
    let mut procs = Vec::new();
    for file in join_files {
        let f = fs::OpenOptions::new()
            .write(true)
            .open(&file)
            .map_err(|e| err(Stage::Cgroup, format!("open {}: {e}", file.display())))?;
        procs.push(f);
    }
    if procs.is_empty() {
        return Err(err(
            Stage::Cgroup,
            format!("the cgroup {:?} of the container is gone", state.cgroup),
        ));
    }

    // The policy, as for the container's init.
    let caps_mask = security::capability_mask(&config.cap_add, &config.cap_drop, config.privileged)
        .map_err(|m| err(Stage::Capabilities, m))?;
    let seccomp = if config.privileged || config.seccomp_unconfined {
        None
    } else {
        let device_cgroup = state.cgroup_version == super::CgroupVersion::V2
            || state.cgroup_root.join("devices/cgroup.procs").is_file();
        Some(
            security::seccomp_programs(caps_mask, !device_cgroup)
                .map_err(|m| err(Stage::Seccomp, m))?,
        )
    };

    // The stdio the daemon sent: [stdout, stderr] or [stdin, stdout, stderr] (none with a TTY).
    let mut fds = fds.into_iter();
    let stdio: [Option<OwnedFd>; 3] = if spec.tty {
        [None, None, None]
    } else {
        let stdin = if spec.stdin { fds.next() } else { None };
        let (Some(out), Some(errfd)) = (fds.next(), fds.next()) else {
            return Err(err(
                Stage::Supervisor,
                "the daemon sent no stdio pipes".into(),
            ));
        };
        [stdin, Some(out), Some(errfd)]
    };

    join_namespaces(&pidfd, init_pid, &state)?;

    // Inside the container's filesystem now.
    let passwd = init::read_optional("/etc/passwd").map_err(failed)?;
    let group = init::read_optional("/etc/group").map_err(failed)?;
    let user_spec = if spec.user.is_empty() {
        &config.user
    } else {
        &spec.user
    };
    let mut user = resolve_user(user_spec, passwd.as_deref(), group.as_deref())
        .map_err(|e| err(Stage::User, e.to_string()))?;
    init::add_groups(&mut user, &config.group_add, group.as_deref()).map_err(failed)?;
    let hostname = super::effective_hostname(&config, &req.dir);
    let env = init::build_env(&merge_env(&config.env, &spec.env), &hostname, &user.home);
    let cwd = [spec.cwd.as_str(), config.cwd.as_str()]
        .into_iter()
        .find(|c| !c.is_empty())
        .unwrap_or("/")
        .to_string();

    let (master, slave) = if spec.tty {
        let (m, s) = open_pty(&user, spec.console_size)?;
        (Some(m), Some(s))
    } else {
        (None, None)
    };

    let pipe = |what: &str| {
        pipe2(OFlag::O_CLOEXEC).map_err(|e| {
            failed(StartError::errno(
                Stage::Supervisor,
                e,
                format!("{what} pipe"),
            ))
        })
    };
    let (go_r, go_w) = pipe("sync")?;
    let (err_r, err_w) = pipe("error")?;

    // SAFETY: this process is single-threaded (main.rs dispatches here before any thread).
    let child = match unsafe { fork() } {
        Err(e) => {
            return Err(failed(StartError::errno(
                Stage::Namespaces,
                e,
                "fork into the container",
            )))
        }
        Ok(ForkResult::Child) => {
            drop((go_w, err_r, master));
            let cgroup_join = if child_joins { procs } else { Vec::new() };
            run_child(ChildCtx {
                config: &config,
                args: &spec.args,
                env,
                user,
                cwd,
                caps_mask,
                seccomp,
                tty: slave,
                stdio,
                go: go_r,
                errors: err_w,
                cgroup_join,
            })
        }
        Ok(ForkResult::Parent { child }) => child,
    };
    drop((go_r, err_w, slave, stdio));
    let abort = |r: Report| {
        // SAFETY: kill(2) of our own child.
        unsafe { libc::kill(child.as_raw(), libc::SIGKILL) };
        let _ = waitpid(child, None);
        r
    };
    let child_fd = pidfd_open(child.as_raw()).ok();
    let procs = if child_joins { Vec::new() } else { procs };
    for mut f in procs {
        use std::io::Write;
        if let Err(e) = f.write_all(child.as_raw().to_string().as_bytes()) {
            return Err(abort(err(
                Stage::Cgroup,
                format!("join the container's cgroup: {e}"),
            )));
        }
    }
    if let Err(e) = write_all_fd(&go_w, b"1") {
        return Err(abort(failed(StartError::errno(
            Stage::Supervisor,
            e,
            "release the process",
        ))));
    }
    drop(go_w);
    // EOF without data: the exec worked (the pipe is close-on-exec).
    let data = read_to_end_fd(&err_r);
    if !data.is_empty() {
        let e = serde_json::from_slice::<StartError>(data.trim_ascii()).unwrap_or_else(|_| {
            StartError::new(
                Stage::Exec,
                format!("unreadable error: {}", String::from_utf8_lossy(&data)),
            )
        });
        let _ = waitpid(child, None);
        return Err(failed(e));
    }
    let mut attached = Vec::new();
    if let Some(fd) = &child_fd {
        attached.push(fd.as_raw_fd());
    }
    if let Some(m) = &master {
        attached.push(m.as_raw_fd());
    }
    report(
        control,
        &Report::Started {
            pid: child.as_raw(),
        },
        &attached,
    );
    drop((master, child_fd));
    let (code, signal) = loop {
        match waitpid(child, None) {
            Ok(WaitStatus::Exited(_, code)) => break (code, None),
            Ok(WaitStatus::Signaled(_, sig, _)) => break (128 + sig as i32, Some(sig as i32)),
            Ok(_) | Err(Errno::EINTR) => {}
            Err(e) => {
                eprintln!("shoal exec helper: waitpid: {e}");
                break (255, None);
            }
        }
    };
    report(control, &Report::Exited { code, signal }, &[]);
    Ok(())
}

/// The container's environment with the exec's entries added (same key: the exec's wins).
fn merge_env(base: &[String], extra: &[String]) -> Vec<String> {
    let key = |kv: &str| kv.split_once('=').map_or(kv, |(k, _)| k).to_string();
    let mut out: Vec<String> = base
        .iter()
        .filter(|kv| !extra.iter().any(|e| key(e) == key(kv)))
        .cloned()
        .collect();
    out.extend(extra.iter().cloned());
    out
}

/// Joins the init's ipc, uts, net, pid (for our children) and mount namespaces.
fn join_namespaces(pidfd: &OwnedFd, pid: i32, state: &StateFile) -> Result<(), Report> {
    let all = CloneFlags::CLONE_NEWIPC
        | CloneFlags::CLONE_NEWUTS
        | CloneFlags::CLONE_NEWNET
        | CloneFlags::CLONE_NEWPID
        | CloneFlags::CLONE_NEWNS;
    match setns(pidfd, all) {
        Ok(()) => return Ok(()),
        // Before Linux 5.8 setns does not take a pidfd.
        Err(Errno::EINVAL) | Err(Errno::EBADF) => {}
        Err(Errno::ESRCH) => {
            return Err(Report::Failed {
                stage: Stage::Namespaces,
                errno: None,
                message: "the container stopped".into(),
                not_running: true,
                paused: false,
            })
        }
        Err(e) => {
            return Err(failed(StartError::errno(
                Stage::Namespaces,
                e,
                "join the container's namespaces",
            )))
        }
    }
    let names = [
        ("ipc", CloneFlags::CLONE_NEWIPC),
        ("uts", CloneFlags::CLONE_NEWUTS),
        ("net", CloneFlags::CLONE_NEWNET),
        ("pid", CloneFlags::CLONE_NEWPID),
        ("mnt", CloneFlags::CLONE_NEWNS),
    ];
    let mut opened = Vec::new();
    for (name, flag) in names {
        let path = format!("/proc/{pid}/ns/{name}");
        let fd = open(
            path.as_str(),
            OFlag::O_RDONLY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| {
            failed(StartError::errno(
                Stage::Namespaces,
                e,
                format!("open {path}"),
            ))
        })?;
        opened.push((name, flag, fd));
    }
    // The files were the init's if it is still the same process now.
    let same = proc_stat(pid).is_some_and(|st| {
        state.pid_start.is_none_or(|s| s == st.start) && st.state != 'Z' && st.state != 'X'
    });
    if !same {
        return Err(Report::Failed {
            stage: Stage::Namespaces,
            errno: None,
            message: "the container stopped".into(),
            not_running: true,
            paused: false,
        });
    }
    for (name, flag, fd) in opened {
        setns(&fd, flag).map_err(|e| {
            failed(StartError::errno(
                Stage::Namespaces,
                e,
                format!("join the container's {name} namespace"),
            ))
        })?;
    }
    Ok(())
}

/// Opens a terminal in the container's devpts: (master, slave). The slave belongs to the
/// exec's user, as a login terminal would.
fn open_pty(user: &ExecUser, size: Option<(u16, u16)>) -> Result<(OwnedFd, OwnedFd), Report> {
    let e = |errno, what: &str| failed(StartError::errno(Stage::Mounts, errno, what.to_string()));
    let master = open(
        "/dev/ptmx",
        OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|er| e(er, "open /dev/ptmx in the container"))?;
    let unlock: libc::c_int = 0;
    // SAFETY: TIOCSPTLCK reads an int.
    if unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSPTLCK, &unlock) } < 0 {
        return Err(e(Errno::last(), "unlock the pty"));
    }
    // SAFETY: TIOCGPTPEER returns a new fd for the slave (no path lookup).
    let raw = unsafe {
        libc::ioctl(
            master.as_raw_fd(),
            libc::TIOCGPTPEER,
            libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
        )
    };
    if raw < 0 {
        return Err(e(Errno::last(), "open the pty's terminal (TIOCGPTPEER)"));
    }
    // SAFETY: the ioctl just returned this fd.
    let slave = unsafe { OwnedFd::from_raw_fd(raw) };
    // SAFETY: fchown(2) on our fd; -1 keeps the group (devpts' tty group).
    if unsafe { libc::fchown(slave.as_raw_fd(), user.uid, u32::MAX) } < 0 {
        return Err(e(Errno::last(), "chown the terminal"));
    }
    if let Some((rows, cols)) = size {
        set_winsize(master.as_raw_fd(), rows, cols).map_err(|er| e(er, "set the terminal size"))?;
    }
    Ok((master, slave))
}

fn set_winsize(fd: RawFd, rows: u16, cols: u16) -> Result<(), Errno> {
    let ws = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads a winsize.
    if unsafe { libc::ioctl(fd, libc::TIOCSWINSZ, &ws) } < 0 {
        return Err(Errno::last());
    }
    Ok(())
}

/// The child, in the container's pid namespace: never returns.
fn run_child(ctx: ChildCtx) -> ! {
    let mut byte = [0u8; 1];
    let released = loop {
        match nix::unistd::read(&ctx.go, &mut byte) {
            Ok(1) => break true,
            Err(Errno::EINTR) => continue,
            _ => break false,
        }
    };
    if !released {
        // SAFETY: leaving a forked child without running anything of the parent's.
        unsafe { libc::_exit(1) }
    }
    let e = match child_setup(&ctx) {
        Ok(never) => match never {},
        Err(e) => e,
    };
    let _ = write_json_fd(&ctx.errors, &e);
    // SAFETY: as above.
    unsafe { libc::_exit(127) }
}

fn child_setup(ctx: &ChildCtx) -> Result<Infallible, StartError> {
    let cfg = ctx.config;
    for mut f in &ctx.cgroup_join {
        use std::io::Write;
        f.write_all(b"0").map_err(|e| {
            StartError::new(Stage::Cgroup, format!("join the container's cgroup: {e}"))
        })?;
    }
    nix::unistd::setsid().map_err(|e| StartError::errno(Stage::Supervisor, e, "setsid"))?;
    let dup = |fd: RawFd, target: RawFd| {
        // SAFETY: dup2 onto a standard fd.
        if unsafe { libc::dup2(fd, target) } < 0 {
            return Err(StartError::errno(
                Stage::Supervisor,
                Errno::last(),
                "dup2 stdio",
            ));
        }
        Ok(())
    };
    if let Some(tty) = &ctx.tty {
        // SAFETY: TIOCSCTTY with arg 0 on a terminal we opened; we lead a new session.
        if unsafe { libc::ioctl(tty.as_raw_fd(), libc::TIOCSCTTY, 0) } < 0 {
            return Err(StartError::errno(
                Stage::Supervisor,
                Errno::last(),
                "make the terminal the controlling terminal",
            ));
        }
        for target in 0..3 {
            dup(tty.as_raw_fd(), target)?;
        }
    } else {
        let null = open("/dev/null", OFlag::O_RDWR | OFlag::O_CLOEXEC, Mode::empty())
            .map_err(|e| StartError::errno(Stage::Supervisor, e, "open /dev/null"))?;
        for (i, fd) in ctx.stdio.iter().enumerate() {
            let raw = fd.as_ref().map_or(null.as_raw_fd(), |f| f.as_raw_fd());
            dup(raw, i as RawFd)?;
        }
    }
    init::set_rlimits(cfg)?;
    if let Some(adj) = cfg.oom_score_adj {
        fs::write("/proc/self/oom_score_adj", adj.to_string()).map_err(|e| {
            init::io_start_error(Stage::Rlimits, &e, format!("set oom_score_adj {adj}"))
        })?;
    }
    security::drop_bounding(ctx.caps_mask).map_err(|m| StartError::new(Stage::Capabilities, m))?;
    let mut seccomp = ctx.seccomp.as_ref();
    if cfg.allow_new_privileges {
        if let Some(programs) = seccomp.take() {
            security::install_seccomp(programs)
                .map_err(|e| StartError::errno(Stage::Seccomp, e, "install the seccomp filter"))?;
        }
    }
    init::switch_user(&ctx.user)?;
    chdir(ctx.cwd.as_str()).map_err(|e| {
        StartError::errno(
            Stage::Cwd,
            e,
            format!("chdir to working directory {:?}", ctx.cwd),
        )
    })?;
    // After the user switch: a credential change clears the parent-death signal.
    nix::sys::prctl::set_pdeathsig(Signal::SIGKILL)
        .map_err(|e| StartError::errno(Stage::Supervisor, e, "set the parent-death signal"))?;
    security::apply_cap_sets(&security::cap_sets(ctx.caps_mask, ctx.user.uid))
        .map_err(|m| StartError::new(Stage::Capabilities, m))?;
    if !cfg.allow_new_privileges {
        security::set_no_new_privs()
            .map_err(|e| StartError::errno(Stage::Capabilities, e, "set no_new_privs"))?;
    }
    let path = lookup::find_executable(&ctx.args[0], lookup::path_from_env(&ctx.env), init::probe)
        .map_err(|e| {
            let errno = match e {
                LookupError::NotExecutable { .. } => Errno::EACCES,
                LookupError::IsDir { .. } => Errno::EISDIR,
                _ => Errno::ENOENT,
            };
            StartError {
                stage: Stage::Exec,
                errno: Some(errno as i32),
                message: exec_lookup_message(&e),
            }
        })?;
    let cstr = |s: &str| {
        CString::new(s)
            .map_err(|_| StartError::new(Stage::Exec, format!("{s:?} contains a NUL byte")))
    };
    let c_path = CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|_| StartError::new(Stage::Exec, "the executable path contains a NUL byte"))?;
    let argv = ctx
        .args
        .iter()
        .map(|a| cstr(a))
        .collect::<Result<Vec<_>, _>>()?;
    let envp = ctx
        .env
        .iter()
        .map(|a| cstr(a))
        .collect::<Result<Vec<_>, _>>()?;
    umask(Mode::from_bits_truncate(0o022));
    init::reset_signals();
    // SAFETY: close_range(2) with the CLOEXEC flag only marks fds.
    unsafe {
        libc::syscall(
            libc::SYS_close_range,
            3u32,
            u32::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        );
    }
    if let Some(programs) = seccomp {
        security::install_seccomp(programs)
            .map_err(|e| StartError::errno(Stage::Seccomp, e, "install the seccomp filter"))?;
    }
    let Err(e) = execve(&c_path, &argv, &envp);
    Err(StartError::errno(
        Stage::Exec,
        e,
        format!("exec {:?}", path.display().to_string()),
    ))
}

/// Docker's wording for a command that cannot be found.
fn exec_lookup_message(e: &LookupError) -> String {
    match e {
        LookupError::NotInPath { cmd, .. } => {
            format!("exec: {cmd:?}: executable file not found in $PATH")
        }
        LookupError::NoSuchFile { cmd } => {
            format!("exec: {cmd:?}: stat {cmd}: no such file or directory")
        }
        other => other.to_string(),
    }
}

// ---------------------------------------------------------------------------------------------
// The daemon's side

/// A stream of an exec'd process: its stdout or stderr (read), its stdin (write), or, with a
/// TTY, the terminal (read: everything the process writes; write: its input). A terminal
/// whose last process closed it reads as EOF.
#[derive(Debug)]
pub struct ExecStream {
    fd: Option<Arc<AsyncFd<OwnedFd>>>,
    pty: bool,
}

impl ExecStream {
    fn new(fd: Arc<AsyncFd<OwnedFd>>, pty: bool) -> ExecStream {
        ExecStream { fd: Some(fd), pty }
    }
}

/// Registers an fd with tokio (non-blocking from now on).
fn register(fd: OwnedFd) -> io::Result<Arc<AsyncFd<OwnedFd>>> {
    register_with(fd, Interest::READABLE | Interest::WRITABLE).map(Arc::new)
}

fn register_with(fd: OwnedFd, interest: Interest) -> io::Result<AsyncFd<OwnedFd>> {
    set_nonblocking(fd.as_raw_fd());
    // SAFETY: the OwnedFd moves into the AsyncFd and stays open (the same fd) until the
    // AsyncFd is dropped.
    unsafe { AsyncFd::register_with_interest(fd, interest) }.map_err(|e| e.into_parts().1)
}

impl AsyncRead for ExecStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let pty = self.pty;
        let Some(fd) = &self.fd else {
            return Poll::Ready(Ok(()));
        };
        loop {
            let mut guard = ready!(fd.poll_read_ready(cx))?;
            let unfilled = buf.initialize_unfilled();
            match guard.try_io(|inner| {
                nix::unistd::read(inner.get_ref(), unfilled).map_err(io::Error::from)
            }) {
                Ok(Ok(n)) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                // A terminal without a process on its other side.
                Ok(Err(e)) if pty && e.raw_os_error() == Some(libc::EIO) => {
                    return Poll::Ready(Ok(()))
                }
                Ok(Err(e)) => return Poll::Ready(Err(e)),
                Err(_would_block) => continue,
            }
        }
    }
}

impl AsyncWrite for ExecStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let Some(fd) = &self.fd else {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "stdin was closed",
            )));
        };
        loop {
            let mut guard = ready!(fd.poll_write_ready(cx))?;
            match guard
                .try_io(|inner| nix::unistd::write(inner.get_ref(), data).map_err(io::Error::from))
            {
                Ok(r) => return Poll::Ready(r),
                Err(_would_block) => continue,
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    /// Closes stdin (the process reads EOF). On a terminal this only drops this handle's
    /// reference (send `\x04` for an end-of-file at the terminal).
    fn poll_shutdown(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.fd = None;
        Poll::Ready(Ok(()))
    }
}

/// Resizes the terminal of an exec ([`ExecHandle::resizer`]).
#[derive(Debug, Clone)]
pub struct ExecResizer {
    id: String,
    pty: Arc<AsyncFd<OwnedFd>>,
}

impl ExecResizer {
    /// Sets the terminal size (rows, columns).
    pub fn resize(&self, rows: u16, cols: u16) -> Result<(), RuntimeError> {
        set_winsize(self.pty.get_ref().as_raw_fd(), rows, cols).map_err(|e| RuntimeError::Io {
            op: "resize the exec terminal",
            path: PathBuf::from("/dev/ptmx"),
            source: e.into(),
        })
    }

    /// The container's id.
    pub fn container(&self) -> &str {
        &self.id
    }
}

/// A process started by [`Runtime::exec`].
#[derive(Debug)]
pub struct ExecHandle {
    id: String,
    pid: i32,
    pidfd: Option<OwnedFd>,
    control: AsyncFd<OwnedFd>,
    helper: tokio::process::Child,
    pty: Option<Arc<AsyncFd<OwnedFd>>>,
    stdin: Option<ExecStream>,
    stdout: Option<ExecStream>,
    stderr: Option<ExecStream>,
    exit: Option<i32>,
}

impl ExecHandle {
    /// The process's pid (host view).
    pub fn pid(&self) -> i32 {
        self.pid
    }

    pub fn tty(&self) -> bool {
        self.pty.is_some()
    }

    /// Its stdin (`None` without `stdin`, or once taken). Shut it down (or drop it) to close.
    pub fn take_stdin(&mut self) -> Option<ExecStream> {
        self.stdin.take()
    }

    /// Its stdout; with a TTY, the terminal's output (stdout and stderr together).
    pub fn take_stdout(&mut self) -> Option<ExecStream> {
        self.stdout.take()
    }

    /// Its stderr (`None` with a TTY).
    pub fn take_stderr(&mut self) -> Option<ExecStream> {
        self.stderr.take()
    }

    /// Sets the terminal size (`docker exec -t` resize). An error without a TTY.
    pub fn resize(&self, rows: u16, cols: u16) -> Result<(), RuntimeError> {
        let pty = self
            .pty
            .as_ref()
            .ok_or_else(|| RuntimeError::InvalidConfig {
                id: self.id.clone(),
                reason: "resize: the exec has no terminal (tty is off)".into(),
            })?;
        set_winsize(pty.get_ref().as_raw_fd(), rows, cols).map_err(|e| RuntimeError::Io {
            op: "resize the exec terminal",
            path: PathBuf::from("/dev/ptmx"),
            source: e.into(),
        })
    }

    /// A handle that resizes the terminal while another task waits on this one (`None`
    /// without a TTY).
    pub fn resizer(&self) -> Option<ExecResizer> {
        self.pty.as_ref().map(|pty| ExecResizer {
            id: self.id.clone(),
            pty: pty.clone(),
        })
    }

    /// Sends `signal` to the process (through a pidfd: never to a recycled pid).
    pub fn signal(&self, signal: Signal) -> Result<(), RuntimeError> {
        let not_running = || RuntimeError::NotRunning {
            id: format!("{} (exec {})", self.id, self.pid),
        };
        let fd = self.pidfd.as_ref().ok_or_else(not_running)?;
        pidfd_send_signal(fd, signal).map_err(|source| {
            if source.raw_os_error() == Some(libc::ESRCH) {
                not_running()
            } else {
                RuntimeError::Signal {
                    id: self.id.clone(),
                    signal,
                    source,
                }
            }
        })
    }

    /// Waits for the process to exit: its exit code, or 128 + signal.
    pub async fn wait(&mut self) -> Result<i32, RuntimeError> {
        if let Some(code) = self.exit {
            return Ok(code);
        }
        let code = loop {
            match recv_report(&self.control).await {
                Ok(Some((Report::Exited { code, .. }, _))) => break Some(code),
                Ok(Some(_)) => continue,
                Ok(None) | Err(_) => break None,
            }
        };
        let status = self.helper.wait().await;
        match code {
            Some(code) => {
                self.exit = Some(code);
                Ok(code)
            }
            None => Err(helper_died(&self.id, &mut self.helper, status).await),
        }
    }
}

async fn helper_died(
    id: &str,
    helper: &mut tokio::process::Child,
    status: io::Result<std::process::ExitStatus>,
) -> RuntimeError {
    let mut stderr = String::new();
    if let Some(mut e) = helper.stderr.take() {
        let _ = tokio::time::timeout(
            std::time::Duration::from_secs(1),
            e.read_to_string(&mut stderr),
        )
        .await;
    }
    RuntimeError::ExecFailed {
        id: id.to_string(),
        stage: Stage::Supervisor,
        errno: None,
        message: format!(
            "the exec helper ended ({}) without reporting{}",
            status.map_or_else(|e| e.to_string(), |s| s.to_string()),
            if stderr.trim().is_empty() {
                String::new()
            } else {
                format!(": {}", stderr.trim())
            }
        ),
    }
}

async fn recv_report(control: &AsyncFd<OwnedFd>) -> io::Result<Option<(Report, Vec<OwnedFd>)>> {
    loop {
        let mut guard = control.readable().await?;
        match guard.try_io(|inner| {
            recv_msg(inner.get_ref().as_raw_fd(), MsgFlags::MSG_DONTWAIT).map_err(io::Error::from)
        }) {
            Ok(Ok(Some((data, fds)))) => {
                let r = serde_json::from_slice(&data)
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
                return Ok(Some((r, fds)));
            }
            Ok(Ok(None)) => return Ok(None),
            Ok(Err(e)) => return Err(e),
            Err(_would_block) => continue,
        }
    }
}

impl Runtime {
    /// Runs a process in the running container `id` (`docker exec`); returns once it has
    /// exec'd, or with why it could not (not running, paused, unknown user, executable not
    /// found: [`RuntimeError::ExecFailed`] with the stage). The module docs of `runtime/exec.rs`
    /// say what it shares with the container.
    pub async fn exec(&self, id: &str, spec: ExecSpec) -> Result<ExecHandle, RuntimeError> {
        spec.validate()
            .map_err(|reason| RuntimeError::InvalidConfig {
                id: id.to_string(),
                reason: format!("exec: {reason}"),
            })?;
        let state = self.state(id)?;
        if !matches!(state.status, ContainerStatus::Running { .. }) {
            return Err(RuntimeError::NotRunning { id: id.to_string() });
        }
        if state.paused {
            return Err(RuntimeError::Paused { id: id.to_string() });
        }
        let dir = self.dir_of(id)?;
        let sock_err = |e: Errno| io_err("exec control socket", &dir)(e.into());
        let (ours, theirs) = socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .map_err(sock_err)?;

        // The process's stdio: pipes whose far ends go to the helper (none with a TTY).
        let mut keep: Vec<Option<Arc<AsyncFd<OwnedFd>>>> = vec![None, None, None];
        let mut send: Vec<OwnedFd> = Vec::new();
        if !spec.tty {
            for (i, slot) in keep.iter_mut().enumerate() {
                if i == 0 && !spec.stdin {
                    continue;
                }
                let (r, w) = pipe2(OFlag::O_CLOEXEC).map_err(sock_err)?;
                let (mine, theirs) = if i == 0 { (w, r) } else { (r, w) };
                *slot = Some(register(mine).map_err(io_err("register exec pipe", &dir))?);
                send.push(theirs);
            }
        }

        let mut helper = tokio::process::Command::new(&self.helper)
            .arg(EXEC_ARG)
            .arg(&state.config.id)
            .env_clear()
            .env("RUST_BACKTRACE", "1")
            .stdin(Stdio::from(theirs))
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| RuntimeError::Supervisor {
                id: id.to_string(),
                helper: self.helper.clone(),
                what: format!("could not be spawned for exec: {e}"),
                log: String::new(),
            })?;
        let request = serde_json::to_vec(&Request {
            dir: dir.clone(),
            spec: spec.clone(),
        })
        .map_err(|e| RuntimeError::InvalidConfig {
            id: id.to_string(),
            reason: format!("exec: cannot encode the request: {e}"),
        })?;
        if request.len() > MAX_MESSAGE {
            let _ = helper.start_kill();
            let _ = helper.wait().await;
            return Err(RuntimeError::InvalidConfig {
                id: id.to_string(),
                reason: format!(
                    "exec: args and env are {} bytes, over the limit of {MAX_MESSAGE}",
                    request.len()
                ),
            });
        }
        let raw: Vec<RawFd> = send.iter().map(|f| f.as_raw_fd()).collect();
        if let Err(e) = send_msg(ours.as_raw_fd(), &request, &raw) {
            let _ = helper.start_kill();
            let _ = helper.wait().await;
            return Err(RuntimeError::ExecFailed {
                id: id.to_string(),
                stage: Stage::Supervisor,
                errno: Some(e as i32),
                message: format!("sending the request to the exec helper: {}", e.desc()),
            });
        }
        drop(send);
        let control = register_with(ours, Interest::READABLE)
            .map_err(io_err("register exec control socket", &dir))?;

        let first = tokio::time::timeout(START_TIMEOUT, recv_report(&control)).await;
        let (report, fds) = match first {
            Err(_) => {
                let _ = helper.start_kill();
                let _ = helper.wait().await;
                return Err(RuntimeError::Timeout {
                    id: id.to_string(),
                    what: "exec",
                    timeout: START_TIMEOUT,
                });
            }
            Ok(Ok(Some(r))) => r,
            Ok(Ok(None)) | Ok(Err(_)) => {
                let status = helper.wait().await;
                return Err(helper_died(id, &mut helper, status).await);
            }
        };
        match report {
            Report::Started { pid } => {
                let mut fds = fds.into_iter();
                let pidfd = fds.next();
                let pty = if spec.tty {
                    let master = fds.next().ok_or_else(|| RuntimeError::ExecFailed {
                        id: id.to_string(),
                        stage: Stage::Supervisor,
                        errno: None,
                        message: "the helper sent no terminal".into(),
                    })?;
                    Some(register(master).map_err(io_err("register exec terminal", &dir))?)
                } else {
                    None
                };
                let [stdin, stdout, stderr] = match &pty {
                    Some(m) => [
                        spec.stdin.then(|| ExecStream::new(m.clone(), true)),
                        Some(ExecStream::new(m.clone(), true)),
                        None,
                    ],
                    None => {
                        let mut k = keep.into_iter();
                        let mut next = || k.next().flatten().map(|f| ExecStream::new(f, false));
                        [next(), next(), next()]
                    }
                };
                Ok(ExecHandle {
                    id: id.to_string(),
                    pid,
                    pidfd,
                    control,
                    helper,
                    pty,
                    stdin,
                    stdout,
                    stderr,
                    exit: None,
                })
            }
            Report::Failed {
                stage,
                errno,
                message,
                not_running,
                paused,
            } => {
                let _ = helper.wait().await;
                Err(if not_running {
                    RuntimeError::NotRunning { id: id.to_string() }
                } else if paused {
                    RuntimeError::Paused { id: id.to_string() }
                } else {
                    RuntimeError::ExecFailed {
                        id: id.to_string(),
                        stage,
                        errno,
                        message,
                    }
                })
            }
            Report::Exited { .. } => {
                let status = helper.wait().await;
                Err(helper_died(id, &mut helper, status).await)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_merges_with_the_exec_winning() {
        let base = vec!["A=1".to_string(), "B=2".into(), "PATH=/bin".into()];
        let extra = vec!["B=3".to_string(), "C=".into()];
        assert_eq!(merge_env(&base, &extra), ["A=1", "PATH=/bin", "B=3", "C="]);
        assert_eq!(merge_env(&base, &[]), base);
    }

    #[test]
    fn specs_are_validated() {
        assert!(ExecSpec::new(["true"]).validate().is_ok());
        let bad = |f: &dyn Fn(&mut ExecSpec), want: &str| {
            let mut s = ExecSpec::new(["sh"]);
            f(&mut s);
            let e = s.validate().expect_err(want);
            assert!(e.contains(want), "{e:?} should mention {want:?}");
        };
        bad(&|s| s.args.clear(), "no command");
        bad(&|s| s.args = vec![String::new()], "no command");
        bad(&|s| s.args.push("a\0".into()), "NUL");
        bad(&|s| s.env.push("NOEQ".into()), "KEY=VALUE");
        bad(&|s| s.user = ":x".into(), "invalid user");
        bad(&|s| s.cwd = "rel".into(), "absolute");
    }

    #[test]
    fn not_found_reads_like_docker() {
        let e = LookupError::NotInPath {
            cmd: "foo".into(),
            path: "/bin".into(),
        };
        assert_eq!(
            exec_lookup_message(&e),
            "exec: \"foo\": executable file not found in $PATH"
        );
    }

    #[test]
    fn reports_and_fds_cross_the_socket() {
        let (a, b) = socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .expect("socketpair");
        let (r, w) = pipe2(OFlag::O_CLOEXEC).expect("pipe");
        let report = Report::Started { pid: 42 };
        send_msg(
            a.as_raw_fd(),
            &serde_json::to_vec(&report).expect("encode"),
            &[w.as_raw_fd()],
        )
        .expect("send");
        drop(w);
        let (data, fds) = recv_msg(b.as_raw_fd(), MsgFlags::empty())
            .expect("recv")
            .expect("a message");
        assert_eq!(
            serde_json::from_slice::<Report>(&data).expect("decode"),
            report
        );
        assert_eq!(fds.len(), 1);
        write_all_fd(&fds[0], b"hi").expect("write through the passed fd");
        drop(fds);
        assert_eq!(read_to_end_fd(&r), b"hi");
        drop(a);
        assert!(recv_msg(b.as_raw_fd(), MsgFlags::empty())
            .expect("recv")
            .is_none());
    }
}
