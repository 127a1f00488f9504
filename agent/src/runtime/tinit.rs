//! `init: true` (Docker's `--init`): a tiny init as the container's PID 1, like tini.
//!
//! It forwards the signals it receives to the workload, reaps every child that is reparented
//! to it (orphans of the workload: no zombies pile up), and exits with the workload's exit code
//! (128 + signal if a signal killed it); the kernel then kills whatever is left in the pid
//! namespace.
//!
//! Unlike Docker, which bind-mounts a static `docker-init` (tini) into the container and execs
//! it, our init is not exec'd at all: the container's PID 1 is already the `shoal` binary
//! (forked from the supervisor), and that binary is dynamically linked against the host's
//! libc, so exec'ing it inside an image without that libc (busybox, scratch, Alpine) would
//! fail. So PID 1 forks right before the exec: the child execs the workload, PID 1 stays and
//! runs [`supervise`]. PID 1 has already dropped its capabilities, set no_new_privs and
//! installed the seccomp filter (it needs only fork, wait, kill and signals), and closes every
//! fd but stdio. Its name (`comm`) and `/proc/1/cmdline` are `shoal-init` (the latter where the
//! kernel has PR_SET_MM; else the supervisor's arguments show there).

use std::convert::Infallible;

use nix::errno::Errno;
use nix::sys::signal::{kill, sigprocmask, SigSet, SigmaskHow, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{fork, ForkResult, Pid};

use super::supervisor::StartError;
use super::Stage;

/// Signals that mean a fault of the process itself: never blocked (tini's list).
const SYNCHRONOUS: [Signal; 9] = [
    Signal::SIGFPE,
    Signal::SIGILL,
    Signal::SIGSEGV,
    Signal::SIGBUS,
    Signal::SIGABRT,
    Signal::SIGTRAP,
    Signal::SIGSYS,
    Signal::SIGTTIN,
    Signal::SIGTTOU,
];

fn waited_set() -> SigSet {
    let mut set = SigSet::all();
    for s in SYNCHRONOUS {
        set.remove(s);
    }
    set
}

/// `/proc/1/cmdline` would show the supervisor's arguments (host paths): make it
/// `shoal-init`. With CAP_SYS_RESOURCE (call this before the capabilities are dropped)
/// PR_SET_MM points the argument area at a static; without it the original argument area (on
/// our stack, `/proc/self/stat` fields 48-49) is overwritten in place. Best effort.
pub(crate) fn hide_cmdline() {
    static NAME: &[u8] = b"shoal-init\0";
    let start = NAME.as_ptr() as libc::c_ulong;
    let end = start + NAME.len() as libc::c_ulong;
    // SAFETY: prctl(2) PR_SET_MM only changes what /proc shows as the argument area; the
    // static lives as long as the process.
    unsafe {
        if libc::prctl(libc::PR_SET_MM, libc::PR_SET_MM_ARG_START, start, 0, 0) == 0
            && libc::prctl(libc::PR_SET_MM, libc::PR_SET_MM_ARG_END, end, 0, 0) == 0
        {
            return;
        }
    }
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return;
    };
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return;
    };
    // After the comm: field 3 is index 0; arg_start is field 48, arg_end 49.
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let (Some(Ok(a)), Some(Ok(b))) = (
        fields.get(45).map(|f| f.parse::<usize>()),
        fields.get(46).map(|f| f.parse::<usize>()),
    ) else {
        return;
    };
    if a == 0 || b <= a || b - a < NAME.len() || b - a > 1 << 20 {
        return;
    }
    // SAFETY: [a, b) is this process's argument area, mapped and writable (the initial stack);
    // nothing in this process reads the arguments any more (std copied what it needed at
    // start, and the init only forks and waits from here on).
    unsafe {
        let p = a as *mut u8;
        std::ptr::write_bytes(p, 0, b - a);
        std::ptr::copy_nonoverlapping(NAME.as_ptr(), p, NAME.len());
    }
}

/// Forks: returns `Ok(())` in the child (which goes on to exec the workload, with the signal
/// mask it had); never returns in the parent, which becomes the init.
pub(crate) fn fork_init() -> Result<(), StartError> {
    let set = waited_set();
    let mut old = SigSet::empty();
    sigprocmask(SigmaskHow::SIG_SETMASK, Some(&set), Some(&mut old))
        .map_err(|e| StartError::errno(Stage::Exec, e, "block signals for the init"))?;
    // SAFETY: the container's init is single-threaded.
    match unsafe { fork() } {
        Err(e) => {
            let _ = sigprocmask(SigmaskHow::SIG_SETMASK, Some(&old), None);
            Err(StartError::errno(
                Stage::Exec,
                e,
                "fork the workload under the init",
            ))
        }
        Ok(ForkResult::Child) => {
            let _ = sigprocmask(SigmaskHow::SIG_SETMASK, Some(&old), None);
            // Its own session and process group, as tini does for its child.
            let _ = nix::unistd::setsid();
            Ok(())
        }
        Ok(ForkResult::Parent { child }) => {
            // Nothing but stdio: in particular not the start error pipe, whose EOF (at the
            // child's exec) tells the supervisor the start worked.
            // SAFETY: close_range(2) on fds nothing else in this process uses.
            unsafe {
                libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32);
                libc::prctl(libc::PR_SET_NAME, c"shoal-init".as_ptr(), 0, 0, 0);
            }
            let code = match supervise(child, &set) {
                Ok(code) => code,
                Err(never) => match never {},
            };
            // SAFETY: leaving without running anything of the parent's.
            unsafe { libc::_exit(code) }
        }
    }
}

/// The init's loop: forwards signals to `child`, reaps everything, returns `child`'s exit code.
fn supervise(child: Pid, set: &SigSet) -> Result<i32, Infallible> {
    loop {
        // SAFETY: sigwaitinfo(2) with a valid set; the siginfo is plain old data.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        let sig = unsafe { libc::sigwaitinfo(set.as_ref(), &mut info) };
        if sig < 0 {
            continue; // EINTR
        }
        if sig == libc::SIGCHLD {
            if let Some(code) = reap(child) {
                return Ok(code);
            }
            continue;
        }
        if let Ok(s) = Signal::try_from(sig) {
            // The workload may be gone already (ESRCH): then SIGCHLD follows.
            let _ = kill(child, s);
        }
    }
}

/// Reaps every exited child; the exit code of `child` if it was among them.
fn reap(child: Pid) -> Option<i32> {
    let mut code = None;
    loop {
        match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(pid, c)) if pid == child => code = Some(c),
            Ok(WaitStatus::Signaled(pid, s, _)) if pid == child => code = Some(128 + s as i32),
            Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => return code,
            Ok(_) | Err(Errno::EINTR) => {}
            Err(_) => return code,
        }
    }
}
