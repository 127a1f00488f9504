//! Small helpers: running commands, polling, signals, names.

use std::ffi::OsStr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// Both systems are polled at this interval, so polling costs the same on each side.
pub const POLL: Duration = Duration::from_millis(25);

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_sigint(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Ctrl-C sets a flag that every wait checks, so the run fails with an error and the cleanup
/// guards still run. (The daemons we start are in their own process group, so Ctrl-C in the
/// terminal does not reach them.)
pub fn install_sigint_handler() {
    let handler: extern "C" fn(libc::c_int) = on_sigint;
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe {
        libc::signal(libc::SIGINT, handler as libc::sighandler_t);
        libc::signal(libc::SIGTERM, handler as libc::sighandler_t);
    }
}

pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

pub fn check_interrupted() -> Result<()> {
    if interrupted() {
        bail!("interrupted");
    }
    Ok(())
}

/// A unique, short tag for the names of everything one bench run makes.
pub fn unique_tag() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("{:06x}", (std::process::id() ^ nanos) & 0xff_ffff)
}

pub fn display(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(OsStr::to_string_lossy)
        .collect::<Vec<_>>()
        .join(" ")
}

/// Runs `cmd` to completion; its stdout on success, an error naming the command and quoting its
/// stderr otherwise.
pub fn run(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("could not start `{}`", display(cmd)))?;
    if !out.status.success() {
        bail!(
            "`{}` failed ({}): {}",
            display(cmd),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Whether `cmd` exits 0 (its output is discarded).
pub fn succeeds(cmd: &mut Command) -> bool {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Calls `check` every [`POLL`] until it returns `Some`, or fails after `timeout` with `what`
/// and the last state `describe` gives. Ctrl-C ends the wait with an error.
pub fn poll<T>(
    what: &str,
    timeout: Duration,
    check: impl FnMut() -> Result<Option<T>>,
    describe: impl Fn() -> String,
) -> Result<T> {
    poll_inner(what, timeout, true, check, describe)
}

/// [`poll`] for cleanup, which must go on after Ctrl-C.
pub fn poll_during_cleanup<T>(
    what: &str,
    timeout: Duration,
    check: impl FnMut() -> Result<Option<T>>,
    describe: impl Fn() -> String,
) -> Result<T> {
    poll_inner(what, timeout, false, check, describe)
}

fn poll_inner<T>(
    what: &str,
    timeout: Duration,
    interruptible: bool,
    mut check: impl FnMut() -> Result<Option<T>>,
    describe: impl Fn() -> String,
) -> Result<T> {
    let start = Instant::now();
    loop {
        if interruptible {
            check_interrupted()?;
        }
        if let Some(v) = check()? {
            return Ok(v);
        }
        if start.elapsed() > timeout {
            bail!(
                "timed out after {timeout:?} waiting for {what} (last seen: {})",
                describe()
            );
        }
        std::thread::sleep(POLL);
    }
}

/// Whether `program` is on PATH.
pub fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(program).is_file()))
}

/// SIGTERM to a child we started, then SIGKILL if it has not exited within `grace`.
pub fn stop_child(child: &mut Child, grace: Duration) {
    if let Ok(Some(_)) = child.try_wait() {
        return;
    }
    // SAFETY: plain kill(2) on the PID of our own child, which we have not reaped yet.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    let start = Instant::now();
    while start.elapsed() < grace {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    eprintln!(
        "shoal-bench: pid {} ignored SIGTERM for {grace:?}; killing it",
        child.id()
    );
    let _ = child.kill();
    let _ = child.wait();
}

/// The last `n` lines of a log file, for error messages.
pub fn tail(path: &Path, n: usize) -> String {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let lines: Vec<&str> = text.lines().collect();
            lines[lines.len().saturating_sub(n)..].join("\n")
        }
        Err(e) => format!("(could not read {}: {e})", path.display()),
    }
}

/// CPUs, CPU model, kernel, cgroup mode.
pub fn machine() -> String {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, m)| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|k| k.trim().to_string())
        .unwrap_or_else(|_| "unknown".into());
    let cgroup = if std::path::Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
        "cgroup v2"
    } else {
        "cgroup v1"
    };
    format!("{cpus} CPUs ({model}), Linux {kernel}, {cgroup}")
}

/// `GET /` over a fresh connection to 127.0.0.1:`port` (HTTP/1.0, so the server closes it):
/// the page's last line, or why it failed (a status other than 200 counts as failed).
#[allow(dead_code)] // shared by path; not every bench loads a port
pub fn http_get(port: u16) -> Result<String, String> {
    use std::io::{Read, Write};
    let go = || -> std::io::Result<String> {
        let mut s = std::net::TcpStream::connect_timeout(
            &std::net::SocketAddr::from(([127, 0, 0, 1], port)),
            Duration::from_secs(2),
        )?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        s.write_all(b"GET / HTTP/1.0\r\n\r\n")?;
        let mut text = String::new();
        s.read_to_string(&mut text)?;
        if !text.contains(" 200 ") {
            return Err(std::io::Error::other(format!("bad answer {text:?}")));
        }
        Ok(text.lines().last().unwrap_or_default().trim().to_string())
    };
    go().map_err(|e| e.to_string())
}
