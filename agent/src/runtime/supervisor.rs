//! The per-container supervisor: the `shoal` binary re-executed as
//! `shoal __shoal-supervise <state dir> <v1|v2> <cgroup root> <cgroup path>`.
//!
//! Single-threaded, no tokio. It starts the container, then becomes the relay (`relay.rs`:
//! exec of `shoal-relay`, or the same loop in-process). See the module docs of [`super`] for
//! the whole process model.

use std::ffi::OsString;
use std::fs;
use std::io::{self, Write};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sched::{unshare, CloneFlags};
use nix::sys::signal::{kill, Signal};
use nix::sys::wait::waitpid;
use nix::unistd::{fork, getpid, pipe2, setsid, ForkResult};
use serde::{Deserialize, Serialize};

use super::cgroup::{Cgroup, CgroupFs};
use super::init::{self, InitContext};
use super::log::LogWriter;
use super::relay::{self, forwarded_signalfd, Running, Supervised};
use super::security;
use super::{
    now_ms, proc_stat, read_json, write_replace, ContainerConfig, Stage, StateFile, CONFIG_FILE,
    LOG_FILE, STATE_FILE,
};

/// What the supervisor tells the daemon about a start (one JSON line on its stdout).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub(crate) enum StartReport {
    Started {
        supervisor_pid: i32,
        pid: i32,
    },
    Failed {
        stage: Stage,
        errno: Option<i32>,
        message: String,
    },
}

/// A failure inside the container's init before exec, sent to the supervisor over the
/// close-on-exec error pipe.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct StartError {
    pub stage: Stage,
    pub errno: Option<i32>,
    pub message: String,
}

impl StartError {
    pub fn new(stage: Stage, message: impl Into<String>) -> StartError {
        StartError {
            stage,
            errno: None,
            message: message.into(),
        }
    }

    pub fn errno(stage: Stage, errno: Errno, what: impl std::fmt::Display) -> StartError {
        StartError {
            stage,
            errno: Some(errno as i32),
            message: format!("{what}: {}", errno.desc()),
        }
    }

    fn into_report(self) -> StartReport {
        StartReport::Failed {
            stage: self.stage,
            errno: self.errno,
            message: self.message,
        }
    }
}

/// The supervisor's arguments: where the container lives.
type Args = Supervised;

fn parse_args(args: &[OsString]) -> Result<Args, String> {
    let [dir, version, root, rel] = args else {
        return Err(format!(
            "usage: shoal {} <state dir> <v1|v2> <cgroup root> <cgroup path> (got {} arguments)",
            super::SUPERVISOR_ARG,
            args.len()
        ));
    };
    Ok(Args {
        dir: PathBuf::from(dir),
        version: version.to_string_lossy().parse()?,
        cgroup_root: PathBuf::from(root),
        cgroup_rel: rel
            .to_str()
            .ok_or("the cgroup path is not UTF-8")?
            .to_string(),
    })
}

pub(crate) fn write_all_fd(fd: impl AsFd, mut data: &[u8]) -> nix::Result<()> {
    while !data.is_empty() {
        match nix::unistd::write(&fd, data) {
            Ok(0) => return Err(Errno::EIO),
            Ok(n) => data = &data[n..],
            Err(Errno::EINTR) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

pub(crate) fn write_json_fd<T: Serialize>(fd: impl AsFd, value: &T) -> nix::Result<()> {
    let mut data = serde_json::to_vec(value).map_err(|_| Errno::EINVAL)?;
    data.push(b'\n');
    write_all_fd(fd, &data)
}

pub(crate) fn read_to_end_fd(fd: impl AsFd) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match nix::unistd::read(&fd, &mut buf) {
            Ok(0) => return out,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(Errno::EINTR) => {}
            Err(_) => return out,
        }
    }
}

fn report_to_stdout(report: &StartReport) {
    let mut out = io::stdout().lock();
    let mut data = serde_json::to_vec(report).unwrap_or_default();
    data.push(b'\n');
    let _ = out.write_all(&data);
    let _ = out.flush();
}

/// The entry point of `shoal __shoal-supervise ...`: returns the process exit code. Must be
/// called before any other thread exists.
pub fn supervisor_main() -> i32 {
    let raw: Vec<OsString> = std::env::args_os().skip(2).collect();
    let args = match parse_args(&raw) {
        Ok(a) => a,
        Err(message) => {
            report_to_stdout(&StartReport::Failed {
                stage: Stage::Supervisor,
                errno: None,
                message,
            });
            return 2;
        }
    };
    // Hold nothing of the daemon's: any fd it leaked to us (one without O_CLOEXEC) would stay
    // open for the container's whole life.
    close_inherited_fds();
    // P0: leave the daemon's session and fork the real supervisor (P1), which reports to the
    // daemon itself over a close-on-exec copy of stdout (the daemon's pipe), so that P0 can exit
    // at once: the daemon reads the report as soon as P1 writes it (no relay, no wait for P0).
    let _ = setsid();
    // SAFETY: fcntl(F_DUPFD_CLOEXEC) on fd 1, which this process holds.
    let report = unsafe { libc::fcntl(1, libc::F_DUPFD_CLOEXEC, 3) };
    if report < 0 {
        report_to_stdout(
            &StartError::errno(Stage::Supervisor, Errno::last(), "dup the report pipe")
                .into_report(),
        );
        return 1;
    }
    // SAFETY: the fd was just returned by the kernel and is owned by nothing else.
    let report = unsafe { OwnedFd::from_raw_fd(report) };
    // SAFETY: this process is single-threaded (main.rs dispatches here before any thread).
    match unsafe { fork() } {
        Err(e) => {
            report_to_stdout(&StartError::errno(Stage::Supervisor, e, "fork").into_report());
            1
        }
        Ok(ForkResult::Child) => {
            let code = supervise(&args, report);
            // SAFETY: _exit skips nothing we need (all files were written and closed).
            unsafe { libc::_exit(code) }
        }
        Ok(ForkResult::Parent { .. }) => 0,
    }
}

/// Closes every fd above 2.
pub(crate) fn close_inherited_fds() {
    // SAFETY: close_range(2) on fds nothing in this process uses yet.
    let r = unsafe { libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32) };
    if r == 0 {
        return;
    }
    // Kernels before 5.9: walk /proc/self/fd (collect first: reading the dir opens an fd).
    let fds: Vec<RawFd> = fs::read_dir("/proc/self/fd")
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse().ok()))
                .collect()
        })
        .unwrap_or_default();
    for fd in fds.into_iter().filter(|&fd| fd > 2) {
        // SAFETY: as above; EBADF for the directory fd that is already gone is fine.
        unsafe {
            libc::close(fd);
        }
    }
}

/// Points fds 0 and 1 at /dev/null (2 stays: the daemon made it supervisor.log). fd 1 was the
/// daemon's pipe: the daemon reads it to EOF, which must come when P0 exits.
fn stdio_to_null() -> io::Result<()> {
    let null = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")?;
    for fd in [0, 1] {
        // SAFETY: dup2 onto a standard fd we own.
        if unsafe { libc::dup2(null.as_raw_fd(), fd) } < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// The daemon's report pipe. The daemon reads it to EOF: after a successful start the pipe is
/// closed at once; after a failure it stays open until this process exits, so that nothing of
/// the failed start is left when the daemon sees the error.
struct Reporter(Option<OwnedFd>);

impl Reporter {
    fn send(&mut self, report: &StartReport) {
        if let Some(fd) = self.0.take() {
            if let Err(e) = write_json_fd(&fd, report) {
                eprintln!("supervisor: sending the start report: {e}");
            }
            if matches!(report, StartReport::Failed { .. }) {
                // Closed by the kernel when this process exits.
                std::mem::forget(fd);
            }
        }
    }
}

/// P1: the real supervisor. Returns its exit code.
fn supervise(args: &Args, report: OwnedFd) -> i32 {
    let mut reporter = Reporter(Some(report));
    if let Err(e) = stdio_to_null() {
        eprintln!("supervisor: redirecting stdio: {e}");
    }
    let cgroup = CgroupFs::new(args.cgroup_root.clone(), args.version).cgroup(&args.cgroup_rel);
    match start(args, &*cgroup, &mut reporter) {
        Ok(running) => {
            // Returns only if the relay executable cannot run: then relay here.
            let running = relay::exec_relay(running, args);
            // The config, the serde buffers and the init's policy are gone: give the freed
            // heap and the start's pages back for the container's whole life.
            // SAFETY: malloc_trim only returns free memory of this (single-threaded) process.
            unsafe {
                libc::malloc_trim(0);
            }
            drop_startup_pages();
            let status = running.relay();
            relay::finish(args, &*cgroup, status);
            0
        }
        Err(e) => {
            eprintln!("supervisor: start failed ({}): {}", e.stage, e.message);
            if let Err(err) = cgroup.remove() {
                eprintln!("supervisor: removing the cgroup: {err}");
            }
            reporter.send(&e.into_report());
            1
        }
    }
}

fn start(args: &Args, cgroup: &dyn Cgroup, reporter: &mut Reporter) -> Result<Running, StartError> {
    let config_path = args.dir.join(CONFIG_FILE);
    let config: ContainerConfig = match read_json(&config_path) {
        Ok(Some(c)) => c,
        Ok(None) => {
            return Err(StartError::new(
                Stage::Config,
                format!("{} is missing", config_path.display()),
            ))
        }
        Err(e) => return Err(StartError::new(Stage::Config, e.to_string())),
    };
    let me = getpid().as_raw();
    let mut state = StateFile {
        supervisor_pid: me,
        supervisor_start: proc_stat(me).map(|s| s.start).unwrap_or(0),
        cgroup: args.cgroup_rel.clone(),
        cgroup_version: args.version,
        cgroup_root: args.cgroup_root.clone(),
        pid: None,
        pid_start: None,
        started_at: None,
    };
    write_state(&args.dir, &state)?;

    cgroup
        .create()
        .and_then(|()| cgroup.apply(&config.limits))
        .map_err(|e| StartError::new(Stage::Cgroup, e.to_string()))?;
    let device_rules = (!config.privileged).then_some(security::DEFAULT_DEVICE_RULES);
    let device_cgroup = cgroup
        .restrict_devices(device_rules)
        .map_err(|e| StartError::new(Stage::Cgroup, e.to_string()))?;
    if !device_cgroup && !config.privileged {
        eprintln!(
            "supervisor: note: no device cgroup (cgroup {} without a devices hierarchy): device \
             access is not restricted by a cgroup; the seccomp filter refuses mknod of device \
             nodes instead",
            args.version
        );
    }

    let log_path = args.dir.join(LOG_FILE);
    let log = LogWriter::open(&log_path, &config.logging).map_err(|e| {
        StartError::new(
            Stage::Supervisor,
            format!("open {}: {e}", log_path.display()),
        )
    })?;

    let pipe = |what: &str| {
        pipe2(OFlag::O_CLOEXEC)
            .map_err(|e| StartError::errno(Stage::Supervisor, e, format!("{what} pipe")))
    };
    let (out_r, out_w) = pipe("stdout")?;
    let (err_r, err_w) = pipe("stderr")?;
    let (go_r, go_w) = pipe("sync")?;
    let (fail_r, fail_w) = pipe("error")?;

    // Forwarded signals arrive on a signalfd; the init unblocks them before exec.
    let signals = forwarded_signalfd();

    // A new pid namespace for our next child: it becomes PID 1 there.
    unshare(CloneFlags::CLONE_NEWPID)
        .map_err(|e| StartError::errno(Stage::Namespaces, e, "unshare(CLONE_NEWPID)"))?;

    let hostname = super::effective_hostname(&config, &args.dir);
    let cgroup_join = cgroup.self_join_files();
    let joins_itself = !cgroup_join.is_empty();

    // SAFETY: single-threaded process.
    let child = match unsafe { fork() } {
        Err(e) => {
            return Err(StartError::errno(
                Stage::Namespaces,
                e,
                "fork the container init",
            ))
        }
        Ok(ForkResult::Child) => {
            drop((out_r, err_r, go_w, fail_r, log, signals));
            init::run(InitContext {
                config: &config,
                dir: &args.dir,
                hostname,
                device_cgroup,
                cgroup_join,
                go: go_r,
                report: fail_w,
                stdout: out_w,
                stderr: err_w,
            })
        }
        Ok(ForkResult::Parent { child }) => child,
    };
    drop((go_r, fail_w, out_w, err_w));

    let abort = |e: StartError| {
        let _ = kill(child, Signal::SIGKILL);
        let _ = waitpid(child, None);
        e
    };
    // The init's own error (it sets up its namespaces and mounts while we attach it to the
    // cgroup, and waits for `go` only before it runs anything of the workload's).
    let init_error = |fail_r: &OwnedFd| {
        let data = read_to_end_fd(fail_r);
        (!data.is_empty()).then(|| {
            serde_json::from_slice::<StartError>(data.trim_ascii()).unwrap_or_else(|_| {
                StartError::new(
                    Stage::Exec,
                    format!(
                        "unreadable error from the container init: {}",
                        String::from_utf8_lossy(&data)
                    ),
                )
            })
        })
    };

    // Into the cgroup before the init may run anything of the workload's (on v1 the init
    // joins on its own, first thing).
    let joined = if joins_itself {
        Ok(())
    } else {
        cgroup.add_process(child.as_raw())
    };
    if let Err(e) = joined {
        let _ = kill(child, Signal::SIGKILL);
        let e =
            init_error(&fail_r).unwrap_or_else(|| StartError::new(Stage::Cgroup, e.to_string()));
        let _ = waitpid(child, None);
        return Err(e);
    }
    // An init that failed already has closed the read end: EPIPE (SIGPIPE is ignored).
    let released = write_all_fd(&go_w, b"1");
    drop(go_w);

    // EOF without data: the exec succeeded (the pipe is close-on-exec).
    if let Some(e) = init_error(&fail_r) {
        let _ = waitpid(child, None);
        return Err(e);
    }
    if let Err(e) = released {
        return Err(abort(StartError::errno(
            Stage::Supervisor,
            e,
            "release the container init",
        )));
    }

    state.pid = Some(child.as_raw());
    state.pid_start = proc_stat(child.as_raw()).map(|s| s.start);
    state.started_at = Some(now_ms());
    if let Err(e) = write_state(&args.dir, &state) {
        return Err(abort(e));
    }
    reporter.send(&StartReport::Started {
        supervisor_pid: me,
        pid: child.as_raw(),
    });
    Ok(Running {
        child,
        stdout: out_r,
        stderr: err_r,
        signals,
        log,
    })
}

/// Unmaps the pages of code and read-only data that starting touched (the 100 MiB binary's
/// option parsing, serde, the init's setup, the dynamic loader's relocation table) from this
/// process: the relay loop faults back the little it uses. Only file mappings that are never
/// written are dropped (executable ones, and the executable's first read-only segment, which
/// holds its headers and relocation table), so nothing but clean page-cache pages is let go.
fn drop_startup_pages() {
    let Ok(maps) = fs::read_to_string("/proc/self/maps") else {
        return;
    };
    let exe = fs::read_link("/proc/self/exe").ok();
    for line in maps.lines() {
        let mut f = line.split_whitespace();
        let (Some(range), Some(perms), Some(offset), _, _, Some(path)) =
            (f.next(), f.next(), f.next(), f.next(), f.next(), f.next())
        else {
            continue;
        };
        if !path.starts_with('/') {
            continue;
        }
        let first_ro_of_exe = perms == "r--p"
            && offset.trim_start_matches('0').is_empty()
            && exe.as_deref() == Some(Path::new(path));
        if perms != "r-xp" && !first_ro_of_exe {
            continue;
        }
        let Some((start, end)) = range.split_once('-') else {
            continue;
        };
        let (Ok(start), Ok(end)) = (
            usize::from_str_radix(start, 16),
            usize::from_str_radix(end, 16),
        ) else {
            continue;
        };
        // SAFETY: the range is a private, never-written file mapping of this process: dropping
        // its pages only makes the next access read them again from the page cache.
        unsafe {
            libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_DONTNEED);
        }
    }
}

/// `state.json` is replaced atomically (rename) but not fsync'd: it describes live processes
/// only, all of which a machine crash ends; ext4 commits it with its journal within seconds
/// (rename over an existing file: new or old contents), and a file left unreadable by a crash
/// reads as "supervisor gone" (see `Runtime::state_of`).
fn write_state(dir: &Path, state: &StateFile) -> Result<(), StartError> {
    let path = dir.join(STATE_FILE);
    let data = serde_json::to_vec(state).unwrap_or_default();
    write_replace(&path, &data)
        .map(drop)
        .map_err(|e| StartError::new(Stage::Supervisor, format!("write {}: {e}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::CgroupVersion;

    #[test]
    fn report_wire_format() {
        let r = StartReport::Failed {
            stage: Stage::Exec,
            errno: Some(2),
            message: "exec \"foo\": no such file".into(),
        };
        let json = serde_json::to_string(&r).expect("encode");
        assert_eq!(
            json,
            r#"{"result":"failed","stage":"exec","errno":2,"message":"exec \"foo\": no such file"}"#
        );
        assert_eq!(
            serde_json::from_str::<StartReport>(&json).expect("decode"),
            r
        );
        let ok = StartReport::Started {
            supervisor_pid: 1,
            pid: 2,
        };
        let json = serde_json::to_string(&ok).expect("encode");
        assert_eq!(
            serde_json::from_str::<StartReport>(&json).expect("decode"),
            ok
        );
    }

    #[test]
    fn args_are_checked() {
        let ok: Vec<OsString> = ["/d", "v1", "/sys/fs/cgroup", "shoal/x"]
            .iter()
            .map(OsString::from)
            .collect();
        let a = parse_args(&ok).expect("valid");
        assert_eq!(a.version, CgroupVersion::V1);
        assert_eq!(a.cgroup_rel, "shoal/x");
        assert!(parse_args(&ok[..2]).is_err());
        let bad: Vec<OsString> = ["/d", "v9", "/r", "x"].iter().map(OsString::from).collect();
        assert!(parse_args(&bad).expect_err("bad version").contains("v9"));
    }
}
