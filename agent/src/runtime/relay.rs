//! The relay: what a container's supervisor does once the container runs. It copies the
//! init's stdout/stderr into `log.json` (JSON lines, rotated), forwards SIGTERM/INT/HUP/QUIT to
//! the init, waits for it, writes `exit.json` durably and removes the cgroup.
//!
//! It runs for the container's whole life, so its memory is the per-container overhead. In the
//! `shoal` binary (PIE, ~100 MiB) the dynamic loader dirties every page of the large relocated
//! read-only data (`.data.rel.ro`) at start, and those pages stay private to each supervisor.
//! So once the container runs, the supervisor `execve`s [`RELAY_BIN`], a small executable
//! installed beside `shoal` (`src/bin/shoal-relay.rs`, only this module linked in): same pid
//! (state.json, the daemon's pidfds and the start time it checks stay valid), the init stays
//! its child (wait, pidfd), the blocked signal mask and pending signals carry over. What the
//! loop needs crosses the exec as inherited fds (stdout/stderr pipes, the open log) and argv
//! (see [`RelayArgs`]); no config is parsed. Without the file (a bare `cargo run --bin shoal`),
//! or if the exec fails, the supervisor runs the same [`Running::relay`] and [`finish`]
//! in-process and says so once in `supervisor.log`.

use std::ffi::{CString, OsString};
use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{sigprocmask, SigSet, SigmaskHow, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use super::cgroup::{Cgroup, CgroupFs, CgroupVersion};
use super::log::{LineSplitter, LogOptions, LogStream, LogWriter};
use super::{now_ms, pidfd_open, write_atomic, write_replace, ExitStatus, EXIT_FILE, LOG_FILE};

/// The relay executable's file name, looked up beside the running `shoal` binary.
pub const RELAY_BIN: &str = "shoal-relay";

/// Where a supervised container lives: its state directory and its cgroup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Supervised {
    pub dir: PathBuf,
    pub version: CgroupVersion,
    pub cgroup_root: PathBuf,
    pub cgroup_rel: String,
}

impl Supervised {
    fn cgroup(&self) -> Box<dyn Cgroup> {
        CgroupFs::new(self.cgroup_root.clone(), self.version).cgroup(&self.cgroup_rel)
    }
}

/// A running container as its supervisor holds it.
pub(crate) struct Running {
    pub child: Pid,
    pub stdout: OwnedFd,
    pub stderr: OwnedFd,
    pub signals: Option<SignalFd>,
    pub log: LogWriter,
}

/// The signals the supervisor forwards to the container's init.
fn forwarded_signals() -> SigSet {
    let mut set = SigSet::empty();
    for s in [
        Signal::SIGTERM,
        Signal::SIGINT,
        Signal::SIGHUP,
        Signal::SIGQUIT,
    ] {
        set.add(s);
    }
    set
}

/// Blocks the forwarded signals and returns a signalfd that receives them (`None` if the
/// kernel refused: the container then gets no forwarded signals, everything else works).
pub(crate) fn forwarded_signalfd() -> Option<SignalFd> {
    let mask = forwarded_signals();
    match sigprocmask(SigmaskHow::SIG_BLOCK, Some(&mask), None) {
        Ok(()) => SignalFd::with_flags(&mask, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK).ok(),
        Err(_) => None,
    }
}

pub(crate) fn set_nonblocking(fd: RawFd) {
    // SAFETY: fcntl on an fd we own.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        if flags >= 0 {
            libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK);
        }
    }
}

/// Sets or clears FD_CLOEXEC; false if `fd` is not open.
fn set_cloexec(fd: RawFd, on: bool) -> bool {
    // SAFETY: fcntl(F_GETFD/F_SETFD) only reads and sets the fd's flags.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFD);
        if flags < 0 {
            return false;
        }
        let flags = if on {
            flags | libc::FD_CLOEXEC
        } else {
            flags & !libc::FD_CLOEXEC
        };
        libc::fcntl(fd, libc::F_SETFD, flags) >= 0
    }
}

/// Upper bound of what is drained from the pipes after the init exited (something outside the
/// container could hold a write end and keep writing).
const MAX_DRAIN: usize = 64 << 20;

impl Running {
    /// Relays stdout/stderr into the log until the init exits; returns its wait status.
    pub(crate) fn relay(mut self) -> WaitStatus {
        set_nonblocking(self.stdout.as_raw_fd());
        set_nonblocking(self.stderr.as_raw_fd());
        let pidfd = pidfd_open(self.child.as_raw()).ok();
        let mut open = [true, true];
        let mut split = [
            LineSplitter::new(LogStream::Stdout),
            LineSplitter::new(LogStream::Stderr),
        ];
        let mut buf = vec![0u8; 64 * 1024];
        let mut out = Vec::new();
        let mut log_failed = false;

        let status = loop {
            let (status, readable) = {
                let mut fds = Vec::with_capacity(4);
                let mut slots = [None; 4];
                for (i, fd) in [&self.stdout, &self.stderr].into_iter().enumerate() {
                    if open[i] {
                        slots[i] = Some(fds.len());
                        fds.push(PollFd::new(fd.as_fd(), PollFlags::POLLIN));
                    }
                }
                if let Some(s) = &self.signals {
                    slots[2] = Some(fds.len());
                    fds.push(PollFd::new(s.as_fd(), PollFlags::POLLIN));
                }
                if let Some(p) = &pidfd {
                    slots[3] = Some(fds.len());
                    fds.push(PollFd::new(p.as_fd(), PollFlags::POLLIN));
                }
                let timeout = if pidfd.is_some() {
                    PollTimeout::NONE
                } else {
                    PollTimeout::from(200u16)
                };
                match poll(&mut fds, timeout) {
                    Ok(_) | Err(Errno::EINTR) => {}
                    Err(e) => {
                        eprintln!("supervisor: poll: {e}");
                        std::thread::sleep(std::time::Duration::from_millis(100));
                    }
                }
                let ready = |slot: Option<usize>| {
                    slot.and_then(|i| fds[i].revents())
                        .is_some_and(|r| !r.is_empty())
                };
                let readable = [
                    ready(slots[0]),
                    ready(slots[1]),
                    ready(slots[2]),
                    ready(slots[3]),
                ];
                (pidfd.is_none() || readable[3], readable)
            };
            let t = now_ms();
            for i in 0..2 {
                if readable[i] {
                    let fd = if i == 0 { &self.stdout } else { &self.stderr };
                    match nix::unistd::read(fd, &mut buf) {
                        Ok(0) => {
                            open[i] = false;
                            split[i].finish(t, &mut out);
                        }
                        Ok(n) => split[i].push(t, &buf[..n], &mut out),
                        Err(Errno::EAGAIN) | Err(Errno::EINTR) => {}
                        Err(e) => {
                            eprintln!("supervisor: read container output: {e}");
                            open[i] = false;
                            split[i].finish(t, &mut out);
                        }
                    }
                }
            }
            if readable[2] {
                if let Some(s) = &self.signals {
                    while let Ok(Some(info)) = s.read_signal() {
                        // SAFETY: kill(2) on our own child.
                        unsafe {
                            libc::kill(self.child.as_raw(), info.ssi_signo as libc::c_int);
                        }
                    }
                }
            }
            flush(&mut self.log, &mut out, &mut log_failed);
            if status {
                match waitpid(self.child, Some(WaitPidFlag::WNOHANG)) {
                    Ok(WaitStatus::StillAlive) => {}
                    Ok(s @ (WaitStatus::Exited(..) | WaitStatus::Signaled(..))) => break s,
                    Ok(_) => {}
                    Err(Errno::EINTR) => {}
                    Err(e) => {
                        eprintln!("supervisor: waitpid: {e}");
                        break WaitStatus::Signaled(self.child, Signal::SIGKILL, false);
                    }
                }
            }
        };

        // The init is gone and the kernel kills the rest of its pid namespace: drain what is
        // left in the pipes.
        let mut drained = 0usize;
        for i in 0..2 {
            let fd = if i == 0 { &self.stdout } else { &self.stderr };
            while open[i] && drained < MAX_DRAIN {
                match nix::unistd::read(fd, &mut buf) {
                    Ok(0) => open[i] = false,
                    Ok(n) => {
                        drained += n;
                        split[i].push(now_ms(), &buf[..n], &mut out);
                        flush(&mut self.log, &mut out, &mut log_failed);
                    }
                    Err(Errno::EINTR) => {}
                    Err(_) => break,
                }
            }
            split[i].finish(now_ms(), &mut out);
        }
        flush(&mut self.log, &mut out, &mut log_failed);
        status
    }
}

/// Appends the encoded lines to the log (one write per batch and file; O_APPEND), rotating it
/// as configured.
fn flush(log: &mut LogWriter, out: &mut Vec<u8>, failed: &mut bool) {
    if out.is_empty() {
        return;
    }
    if let Err(e) = log.write(out) {
        if !*failed {
            eprintln!("supervisor: writing the container log: {e} (output is dropped)");
            *failed = true;
        }
    }
    out.clear();
}

/// Records the exit and removes the cgroup.
pub(crate) fn finish(target: &Supervised, cgroup: &dyn Cgroup, status: WaitStatus) {
    let (code, signal) = match status {
        WaitStatus::Exited(_, code) => (code, None),
        WaitStatus::Signaled(_, sig, _) => (128 + sig as i32, Some(sig as i32)),
        _ => (255, None),
    };
    let exit = ExitStatus {
        code,
        signal,
        oom_killed: cgroup.oom_killed(),
        finished_at: now_ms(),
        lost: false,
    };
    // exit.json is durable before this process exits (the daemon's `wait` ends with it): it
    // is renamed into place, then fsync'd with its directory on a thread while the cgroup is
    // removed. fsync of the file after the rename commits the rename with it (one journal
    // commit; the directory's fsync then finds nothing left to do). A crash before the fsync
    // ends can leave it unreadable, which reads as a lost exit: as a crash just before it.
    let path = target.dir.join(EXIT_FILE);
    let data = serde_json::to_vec_pretty(&exit).unwrap_or_default();
    let sync = match write_replace(&path, &data) {
        Ok(file) => {
            let dir = target.dir.clone();
            let work = move || file.sync_all().and_then(|()| File::open(&dir)?.sync_all());
            match std::thread::Builder::new().spawn(work) {
                Ok(thread) => Some(thread),
                Err(_) => {
                    // No thread: write it again, fsync'd before the cgroup removal.
                    if let Err(e) = write_atomic(&path, &data) {
                        eprintln!("supervisor: writing {}: {e}", path.display());
                    }
                    None
                }
            }
        }
        Err(e) => {
            eprintln!("supervisor: writing {}: {e}", path.display());
            None
        }
    };
    if let Err(e) = cgroup.remove() {
        eprintln!("supervisor: removing the cgroup: {e}");
    }
    if let Some(thread) = sync {
        match thread.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => eprintln!("supervisor: fsync {}: {e}", path.display()),
            Err(_) => eprintln!("supervisor: fsync {}: the thread panicked", path.display()),
        }
    }
}

/// The relay's command line: `shoal-relay <state dir> <v1|v2> <cgroup root> <cgroup path>
/// <init pid> <stdout fd> <stderr fd> <log fd> <log max size|-> <log files>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RelayArgs {
    pub target: Supervised,
    pub child: i32,
    pub stdout: RawFd,
    pub stderr: RawFd,
    pub log: RawFd,
    pub log_options: LogOptions,
}

impl RelayArgs {
    /// The arguments after argv[0].
    fn encode(&self) -> Vec<OsString> {
        let t = &self.target;
        vec![
            t.dir.clone().into_os_string(),
            t.version.to_string().into(),
            t.cgroup_root.clone().into_os_string(),
            t.cgroup_rel.clone().into(),
            self.child.to_string().into(),
            self.stdout.to_string().into(),
            self.stderr.to_string().into(),
            self.log.to_string().into(),
            self.log_options
                .max_size
                .map_or_else(|| "-".to_string(), |n| n.to_string())
                .into(),
            self.log_options.max_files.unwrap_or(1).to_string().into(),
        ]
    }

    /// Parses the arguments after argv[0].
    fn parse(args: &[OsString]) -> Result<RelayArgs, String> {
        let [dir, version, root, rel, child, stdout, stderr, log, max_size, max_files] = args
        else {
            return Err(format!(
                "usage: {RELAY_BIN} <state dir> <v1|v2> <cgroup root> <cgroup path> <init pid> \
                 <stdout fd> <stderr fd> <log fd> <log max size|-> <log files> (got {} \
                 arguments; {RELAY_BIN} is started by the shoal supervisor of the same build)",
                args.len()
            ));
        };
        let text = |what: &str, v: &OsString| {
            v.to_str()
                .map(str::to_string)
                .ok_or_else(|| format!("the {what} argument is not UTF-8"))
        };
        let number = |what: &str, v: &OsString| {
            text(what, v)?
                .parse::<i64>()
                .map_err(|_| format!("the {what} {v:?} is not a number"))
        };
        let fd = |what: &str, v: &OsString| {
            let n = number(what, v)?;
            RawFd::try_from(n)
                .ok()
                .filter(|&fd| fd > 2)
                .ok_or_else(|| format!("the {what} {n} is not an fd above 2"))
        };
        let (stdout, stderr, log) = (
            fd("stdout fd", stdout)?,
            fd("stderr fd", stderr)?,
            fd("log fd", log)?,
        );
        if stdout == stderr || stdout == log || stderr == log {
            return Err(format!(
                "the stdout, stderr and log fds must differ (got {stdout}, {stderr}, {log})"
            ));
        }
        let child = i32::try_from(number("init pid", child)?)
            .ok()
            .filter(|&p| p > 0)
            .ok_or_else(|| format!("the init pid {child:?} is not a pid"))?;
        let max_size = match text("log max size", max_size)?.as_str() {
            "-" => None,
            n => Some(
                n.parse::<u64>()
                    .map_err(|_| format!("the log max size {n:?} is not a number of bytes"))?,
            ),
        };
        let max_files = u32::try_from(number("log files", max_files)?)
            .map_err(|_| format!("the log files {max_files:?} is out of range"))?;
        Ok(RelayArgs {
            target: Supervised {
                dir: PathBuf::from(dir),
                version: text("cgroup version", version)?.parse()?,
                cgroup_root: PathBuf::from(root),
                cgroup_rel: text("cgroup path", rel)?,
            },
            child,
            stdout,
            stderr,
            log,
            log_options: LogOptions {
                max_size,
                max_files: Some(max_files),
            },
        })
    }
}

/// The relay executable beside the running binary, if it is installed.
fn relay_path() -> Result<PathBuf, String> {
    let exe = std::env::current_exe().map_err(|e| format!("cannot find this executable: {e}"))?;
    let path = exe.with_file_name(RELAY_BIN);
    if path.is_file() {
        Ok(path)
    } else {
        Err(format!(
            "no {} beside {} (install both files side by side for the small relay)",
            path.display(),
            exe.display()
        ))
    }
}

fn cstring(s: &std::ffi::OsStr) -> Result<CString, String> {
    CString::new(s.as_bytes()).map_err(|_| format!("argument {s:?} contains a NUL byte"))
}

/// Replaces this process with [`RELAY_BIN`], which relays `running` to the end. Returns only
/// if that is not possible (no such file, exec failed): the caller then relays in-process.
/// Must be called while this process is single-threaded.
pub(crate) fn exec_relay(running: Running, target: &Supervised) -> Running {
    let fds = [
        running.stdout.as_raw_fd(),
        running.stderr.as_raw_fd(),
        running.log.file().as_raw_fd(),
    ];
    let args = RelayArgs {
        target: target.clone(),
        child: running.child.as_raw(),
        stdout: fds[0],
        stderr: fds[1],
        log: fds[2],
        log_options: running.log.options(),
    };
    let prepared = relay_path().and_then(|path| {
        let mut argv = vec![cstring(RELAY_BIN.as_ref())?];
        for a in args.encode() {
            argv.push(cstring(&a)?);
        }
        Ok((cstring(path.as_os_str())?, argv))
    });
    let (path, argv) = match prepared {
        Ok(p) => p,
        Err(e) => {
            eprintln!("supervisor: note: {e}: relaying in-process");
            return running;
        }
    };
    // Exactly these fds cross the exec; the signalfd does not (the relay makes its own: the
    // mask and any pending signal carry over).
    if fds.iter().all(|&fd| set_cloexec(fd, false)) {
        let Err(e) = nix::unistd::execv(&path, &argv);
        eprintln!(
            "supervisor: exec {}: {e}: relaying in-process",
            path.to_string_lossy()
        );
    } else {
        eprintln!("supervisor: cannot pass the relay's fds: relaying in-process");
    }
    for fd in fds {
        set_cloexec(fd, true);
    }
    running
}

/// The address ranges of `/proc/self/smaps` that are read-only file mappings holding only
/// clean page-cache pages (no private copy: `Anonymous: 0 kB`), whose pages can be dropped
/// and read again on the next access.
fn clean_file_ranges(smaps: &str) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut current: Option<(usize, usize)> = None;
    for line in smaps.lines() {
        let mut f = line.split_whitespace();
        let first = f.next().unwrap_or("");
        if let Some((start, end)) = first.split_once('-') {
            let (Ok(start), Ok(end)) = (
                usize::from_str_radix(start, 16),
                usize::from_str_radix(end, 16),
            ) else {
                current = None;
                continue;
            };
            let perms = f.next().unwrap_or("");
            let path = f.nth(3).unwrap_or("");
            current = (path.starts_with('/') && !perms.contains('w') && end > start)
                .then_some((start, end));
        } else if first == "Anonymous:" {
            if let Some(range) = current.take() {
                if f.next() == Some("0") {
                    out.push(range);
                }
            }
        }
    }
    out
}

/// Drops the pages of code and read-only data that the exec and the setup touched (the
/// kernel maps 64 KiB around every fault), and marks those mappings random-access so that the
/// relay loop faults back little more than the pages it runs.
fn drop_clean_file_pages() {
    let Ok(smaps) = std::fs::read_to_string("/proc/self/smaps") else {
        return;
    };
    for (start, end) in clean_file_ranges(&smaps) {
        // SAFETY: a read-only file mapping without private pages: dropping its pages only
        // makes the next access read them again from the page cache.
        unsafe {
            libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_RANDOM);
            libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_DONTNEED);
        }
    }
}

/// Takes an fd inherited across the exec (close-on-exec again from here on).
fn take_fd(fd: RawFd, what: &str) -> Result<OwnedFd, String> {
    if !set_cloexec(fd, true) {
        return Err(format!("the {what} fd {fd} is not open"));
    }
    // SAFETY: the fd is open, was handed to this process for this purpose alone, and
    // `RelayArgs::parse` checked it is distinct from the others taken here and above stdio.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The entry point of `shoal-relay`: returns the process exit code. If it fails before the
/// relay loop, this process exits and the container's init dies with it (parent-death
/// signal): the container is reported as lost, never left running unsupervised.
pub fn relay_main() -> i32 {
    let raw: Vec<OsString> = std::env::args_os().skip(1).collect();
    let running = RelayArgs::parse(&raw).and_then(|args| {
        let stdout = take_fd(args.stdout, "stdout")?;
        let stderr = take_fd(args.stderr, "stderr")?;
        let log = File::from(take_fd(args.log, "log")?);
        let log_path = args.target.dir.join(LOG_FILE);
        let log = LogWriter::with_file(&log_path, log, &args.log_options)
            .map_err(|e| format!("the log {}: {e}", log_path.display()))?;
        let running = Running {
            child: Pid::from_raw(args.child),
            stdout,
            stderr,
            signals: forwarded_signalfd(),
            log,
        };
        Ok((args.target, running))
    });
    match running {
        Ok((target, running)) => {
            let cgroup = target.cgroup();
            drop_clean_file_pages();
            let status = running.relay();
            finish(&target, &*cgroup, status);
            0
        }
        Err(e) => {
            eprintln!("{RELAY_BIN}: {e}");
            2
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> RelayArgs {
        RelayArgs {
            target: Supervised {
                dir: PathBuf::from("/var/lib/shoal/containers/abc"),
                version: CgroupVersion::V1,
                cgroup_root: PathBuf::from("/sys/fs/cgroup"),
                cgroup_rel: "shoal/abc".into(),
            },
            child: 4242,
            stdout: 5,
            stderr: 6,
            log: 7,
            log_options: LogOptions {
                max_size: Some(10 << 20),
                max_files: Some(3),
            },
        }
    }

    #[test]
    fn args_round_trip() {
        let a = sample();
        assert_eq!(RelayArgs::parse(&a.encode()).expect("parse"), a);
        let mut b = sample();
        b.log_options.max_size = None;
        b.target.version = CgroupVersion::V2;
        assert_eq!(RelayArgs::parse(&b.encode()).expect("parse"), b);
    }

    #[test]
    fn bad_args_are_refused() {
        let a = sample().encode();
        assert!(RelayArgs::parse(&a[..9])
            .expect_err("short")
            .contains("usage"));
        let with = |i: usize, v: &str| {
            let mut x = a.clone();
            x[i] = v.into();
            RelayArgs::parse(&x)
        };
        assert!(with(1, "v9").expect_err("version").contains("v9"));
        assert!(with(4, "0").expect_err("pid").contains("pid"));
        assert!(with(5, "1").expect_err("stdio fd").contains("above 2"));
        assert!(with(6, "5").expect_err("same fd").contains("differ"));
        assert!(with(8, "10m").expect_err("size").contains("bytes"));
        assert!(with(9, "x").expect_err("files").contains("number"));
    }

    #[test]
    fn only_clean_read_only_file_mappings_are_dropped() {
        let smaps = "\
1000-3000 r-xp 00000000 08:01 12 /usr/bin/shoal-relay
Rss:                   8 kB
Anonymous:             0 kB
3000-4000 r--p 00002000 08:01 12 /usr/bin/shoal-relay
Anonymous:             4 kB
4000-5000 rw-p 00003000 08:01 12 /usr/bin/shoal-relay
Anonymous:             0 kB
5000-6000 rw-p 00000000 00:00 0 [heap]
Anonymous:             0 kB
6000-7000 r--p 00000000 08:01 13 /usr/lib/libc.so.6
Anonymous:             0 kB
";
        assert_eq!(
            clean_file_ranges(smaps),
            [(0x1000, 0x3000), (0x6000, 0x7000)]
        );
    }

    #[test]
    fn relay_path_is_beside_the_executable() {
        // The test binary has no relay beside it in deps/: the error says where it looked.
        let e = relay_path().expect_err("no relay in deps/");
        assert!(e.contains(RELAY_BIN), "{e}");
    }
}
