//! runtime-bench: what one container costs on shoal's runtime, against crun, runc and Docker on
//! the same machine, in one run.
//!
//! 1. create → exit → remove of `/bin/true` (busybox) through shoal's runtime in-process
//!    (`Runtime::create_and_start` + `wait` + `remove`, the real `shoal` binary as supervisor),
//!    against `crun run` and `runc run` of an OCI bundle on the same busybox rootfs (namespaces
//!    pid, mnt, uts, ipc, net; no terminal). The three are interleaved, after warm-up runs. crun
//!    runs in a private mount namespace without /sys/fs/cgroup/unified (it refuses the hybrid
//!    cgroup layout of this machine kind otherwise); so does the runc helper's (it is not needed
//!    there, but keeps the two helpers alike).
//! 2. One-shot end to end: `shoal run --rm busybox true` through a private daemon and
//!    `docker run --rm` of an imported busybox image, each with its default network (a bridge)
//!    and with `--network none`.
//! 3. Supervisor memory: K long-running containers (`sleep 1000`), VmRSS and Pss of each
//!    supervisor; containerd-shim-runc-v2 of Docker containers beside it.
//! 4. Idle daemon memory: a private `shoal daemon`, 2 s after it answers; dockerd and
//!    containerd beside it.
//! 5. Where shoal's start time goes: a few runs re-executed under `strace -f --seccomp-bpf`
//!    (only the syscalls that mark the phases stop the tracee), as a timeline; and crun's
//!    cgroup attach under the same tracing.
//!
//! ```text
//! cargo build --release      # the shoal binary (the supervisor)
//! cargo run --release -p shoal-bench --bin runtime-bench -- [--runs 100] [--shoal PATH]
//!     [--e2e-only] [--e2e-runs 30] [--no-docker]
//! ```
//!
//! Runs as root. Needs busybox-static; peers are used when installed (crun, runc, docker.io,
//! strace). If `docker info` fails, dockerd is started in the background and stopped at the end,
//! by PID. Everything made (containers, bundles, cgroups, data dirs, processes, the Docker image)
//! carries a random tag and is removed at the end, also on error.

#[path = "../table.rs"]
mod table;

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::symlink;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use clap::Parser;

use shoal_agent::network::{AddressPool, Ipv4Net, NetworkConfig, NetworkManager};
use shoal_agent::runtime::{ContainerConfig, ContainerStatus, Runtime};

const BUSYBOX: &str = "/bin/busybox";
const OCI_HELPER_ARG: &str = "__runtime-bench-oci-helper";
const TRACE_ARG: &str = "__runtime-bench-trace";
/// The syscalls the breakdown traces (strace -e).
const TRACE_SET: &str = "trace=execve,clone,clone3,fork,vfork,unshare,mount,pivot_root,mkdir,\
                         rmdir,unlinkat,fsync,fdatasync,write";
/// Targets printed next to the figures.
const TARGET_SUPERVISOR_KIB: f64 = 1024.0;
const TARGET_DAEMON_KIB: f64 = 30.0 * 1024.0;

#[derive(Parser)]
#[command(
    name = "runtime-bench",
    about = "Container start/exit time and per-container memory: shoal's runtime against crun, runc and Docker"
)]
struct Args {
    /// Measured create→exit runs per runtime (after the warm-up runs).
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..))]
    runs: u64,
    /// Warm-up runs per runtime, not counted.
    #[arg(long, default_value_t = 5)]
    warmup: u64,
    /// Runs per variant of the one-shot end-to-end section (`docker run --rm`).
    #[arg(long, default_value_t = 30)]
    e2e_runs: u64,
    /// Long-running containers for the supervisor memory section.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u64).range(1..))]
    containers: u64,
    /// Runs traced with strace for the breakdown of shoal's start (0: none).
    #[arg(long, default_value_t = 10)]
    trace_runs: u64,
    /// The shoal binary (supervisor and daemon) [default: `shoal` next to this binary].
    #[arg(long)]
    shoal: Option<PathBuf>,
    /// Leave Docker out.
    #[arg(long)]
    no_docker: bool,
    /// Only the one-shot end-to-end section (2): what a `run --rm` costs with and without
    /// the default network.
    #[arg(long)]
    e2e_only: bool,
}

fn main() {
    let argv: Vec<String> = std::env::args().collect();
    if argv.get(1).map(String::as_str) == Some(OCI_HELPER_ARG) {
        std::process::exit(oci_helper_main(&argv[2..]));
    }
    if argv.get(1).map(String::as_str) == Some(TRACE_ARG) {
        std::process::exit(match trace_child_main(&argv[2..]) {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("runtime-bench (traced child): {e:#}");
                1
            }
        });
    }
    let args = Args::parse();
    match run_all(&args) {
        Ok(()) => {}
        Err(e) => {
            println!("runtime-bench: FAILED: {e:#}");
            std::process::exit(1);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Small helpers

fn run(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("could not start {:?}", cmd.get_program()))?;
    if !out.status.success() {
        bail!(
            "`{:?} {:?}` failed ({}): {}",
            cmd.get_program(),
            cmd.get_args().collect::<Vec<_>>(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn succeeds(cmd: &mut Command) -> bool {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn on_path(program: &str) -> Option<PathBuf> {
    let paths = std::env::var_os("PATH")?;
    std::env::split_paths(&paths)
        .map(|d| d.join(program))
        .find(|p| p.is_file())
}

fn unique_tag() -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("{:05x}", (std::process::id() ^ nanos) & 0xf_ffff)
}

fn epoch() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// SIGTERM to a child we started, SIGKILL after `grace`.
fn stop_child(child: &mut Child, grace: Duration) {
    if let Ok(Some(_)) = child.try_wait() {
        return;
    }
    // SAFETY: kill(2) on the PID of our own child, not reaped yet.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    let start = Instant::now();
    while start.elapsed() < grace {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Median, p90 (nearest rank), min, max of a sample.
#[derive(Clone, Copy)]
struct Stats {
    p50: f64,
    p90: f64,
    min: f64,
    max: f64,
    n: usize,
}

impl Stats {
    fn of(v: &[f64]) -> Option<Stats> {
        if v.is_empty() {
            return None;
        }
        let mut s = v.to_vec();
        s.sort_by(f64::total_cmp);
        let n = s.len();
        let p50 = if n % 2 == 1 {
            s[n / 2]
        } else {
            (s[n / 2 - 1] + s[n / 2]) / 2.0
        };
        let rank = ((0.9 * n as f64).ceil() as usize).clamp(1, n);
        Some(Stats {
            p50,
            p90: s[rank - 1],
            min: s[0],
            max: s[n - 1],
            n,
        })
    }
}

/// VmRSS (from status) and Pss (from smaps_rollup) of a process, in KiB.
fn memory_kib(pid: i32) -> Option<(f64, f64)> {
    let field = |text: &str, key: &str| {
        text.lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<f64>().ok())
    };
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rollup = fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
    Some((
        field(&status, "VmRSS:")?,
        field(&rollup, "Pss:").unwrap_or(f64::NAN),
    ))
}

/// Every live process: (pid, comm, cmdline with spaces).
fn processes() -> Vec<(i32, String, String)> {
    let mut out = Vec::new();
    let Ok(entries) = fs::read_dir("/proc") else {
        return out;
    };
    for e in entries.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let comm = fs::read_to_string(format!("/proc/{pid}/comm"))
            .map(|c| c.trim().to_string())
            .unwrap_or_default();
        let cmdline = fs::read(format!("/proc/{pid}/cmdline"))
            .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
            .unwrap_or_default();
        out.push((pid, comm, cmdline));
    }
    out
}

fn kib(v: f64) -> String {
    if v.is_nan() {
        "-".into()
    } else if v >= 10240.0 {
        format!("{:.1} MiB", v / 1024.0)
    } else {
        format!("{v:.0} KiB")
    }
}

/// Removes `<hierarchy>/<parent>` and everything below it (cgroup dirs: rmdir, deepest first) in
/// every cgroup hierarchy. Only ever called with this run's tagged names.
fn remove_cgroup_tree(parent: &str) -> Vec<String> {
    fn rmdir_tree(dir: &Path, problems: &mut Vec<String>) {
        if let Ok(entries) = fs::read_dir(dir) {
            for e in entries.flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    rmdir_tree(&e.path(), problems);
                }
            }
        }
        if let Err(e) = fs::remove_dir(dir) {
            if e.kind() != std::io::ErrorKind::NotFound {
                problems.push(format!("rmdir {}: {e}", dir.display()));
            }
        }
    }
    let root = Path::new("/sys/fs/cgroup");
    let mut dirs = vec![root.join(parent)];
    if let Ok(entries) = fs::read_dir(root) {
        dirs.extend(entries.flatten().map(|e| e.path().join(parent)));
    }
    let mut problems = Vec::new();
    for d in dirs.into_iter().filter(|d| d.is_dir()) {
        rmdir_tree(&d, &mut problems);
    }
    problems
}

// ---------------------------------------------------------------------------------------------
// The rootfs and the OCI bundle

/// The same layer tests use: /bin/busybox, a symlink per applet, /etc/passwd and /etc/group,
/// plus the mount points an OCI runtime wants.
fn busybox_layer(dir: &Path) -> Result<()> {
    let bin = dir.join("bin");
    fs::create_dir_all(&bin)?;
    fs::copy(BUSYBOX, bin.join("busybox"))
        .context("copy /bin/busybox (apt-get install busybox-static)")?;
    let list = run(Command::new(BUSYBOX).arg("--list"))?;
    for applet in list.lines() {
        if applet.is_empty() || applet == "busybox" || applet.contains('/') {
            continue;
        }
        symlink("busybox", bin.join(applet))?;
    }
    let etc = dir.join("etc");
    fs::create_dir_all(&etc)?;
    fs::write(
        etc.join("passwd"),
        "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
    )?;
    fs::write(etc.join("group"), "root:x:0:\nnogroup:x:65534:\n")?;
    for d in ["tmp", "root", "proc", "sys", "dev"] {
        fs::create_dir_all(dir.join(d))?;
    }
    Ok(())
}

/// Docker's default capability set (shoal's default too).
const DEFAULT_CAPS: [&str; 14] = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

/// A minimal config.json: `/bin/true`, namespaces pid/mnt/uts/ipc/net, the usual mounts,
/// masked and read-only paths as `runc spec` makes them, no terminal, no seccomp profile.
fn oci_config(rootfs: &Path, cgroups_path: &str, args: &[&str]) -> serde_json::Value {
    let caps: Vec<&str> = DEFAULT_CAPS.to_vec();
    serde_json::json!({
        "ociVersion": "1.0.2",
        "process": {
            "terminal": false,
            "user": {"uid": 0, "gid": 0},
            "args": args,
            "env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
            "cwd": "/",
            "capabilities": {
                "bounding": caps, "effective": caps, "permitted": caps
            },
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
            "noNewPrivileges": true
        },
        "root": {"path": rootfs, "readonly": false},
        "hostname": "bench",
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
             "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
            {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
             "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]},
            {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
             "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
            {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
             "options": ["nosuid", "noexec", "nodev"]},
            {"destination": "/sys", "type": "sysfs", "source": "sysfs",
             "options": ["nosuid", "noexec", "nodev", "ro"]}
        ],
        "linux": {
            "cgroupsPath": cgroups_path,
            "resources": {"devices": [{"allow": false, "access": "rwm"}]},
            "namespaces": [
                {"type": "pid"}, {"type": "network"}, {"type": "ipc"},
                {"type": "uts"}, {"type": "mount"}
            ],
            "maskedPaths": [
                "/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
                "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/sys/firmware",
                "/proc/scsi"
            ],
            "readonlyPaths": [
                "/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"
            ]
        }
    })
}

// ---------------------------------------------------------------------------------------------
// The OCI helper: a child process (this binary re-executed, single-threaded) that runs
// `<runtime> run` on request and times it. With `private`, it first moves to a private mount
// namespace without /sys/fs/cgroup/unified; nothing is unmounted in the host's namespace.
//
// Protocol (lines): "run <bundle> <id>" → "ok <nanoseconds>" | "err <message>";
// "delete <id>" → "ok 0".

fn oci_helper_main(args: &[String]) -> i32 {
    let [bin, root, private] = args else {
        eprintln!("usage: runtime-bench {OCI_HELPER_ARG} <runtime> <state root> <0|1>");
        return 2;
    };
    if private == "1" {
        if let Err(e) = private_mount_namespace() {
            println!("err {e}");
            return 1;
        }
    }
    println!("ready");
    let _ = std::io::stdout().flush();
    let stdin = std::io::stdin();
    for line in stdin.lock().lines() {
        let Ok(line) = line else { break };
        let words: Vec<&str> = line.split_whitespace().collect();
        let reply = match words.as_slice() {
            ["run", bundle, id] => {
                let start = Instant::now();
                let out = Command::new(bin)
                    .args(["--root", root, "run", "--bundle", bundle, id])
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::piped())
                    .output();
                let took = start.elapsed();
                match out {
                    Ok(o) if o.status.success() => format!("ok {}", took.as_nanos()),
                    Ok(o) => {
                        let _ = Command::new(bin)
                            .args(["--root", root, "delete", "-f", id])
                            .stdin(Stdio::null())
                            .stdout(Stdio::null())
                            .stderr(Stdio::null())
                            .status();
                        format!(
                            "err {} {}",
                            o.status,
                            String::from_utf8_lossy(&o.stderr)
                                .trim()
                                .replace('\n', " | ")
                        )
                    }
                    Err(e) => format!("err could not start {bin}: {e}"),
                }
            }
            ["trace", strace, log, bundle, id] => {
                let start = Instant::now();
                let out = Command::new(strace)
                    .args(["-f", "--seccomp-bpf", "-ttt", "-T", "-q", "-y", "-o", log])
                    .args(["-e", TRACE_SET, "-e", "signal=none", bin])
                    .args(["--root", root, "run", "--bundle", bundle, id])
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::piped())
                    .output();
                let took = start.elapsed();
                match out {
                    Ok(o) if o.status.success() => format!("ok {}", took.as_nanos()),
                    Ok(o) => format!(
                        "err {} {}",
                        o.status,
                        String::from_utf8_lossy(&o.stderr)
                            .trim()
                            .replace('\n', " | ")
                    ),
                    Err(e) => format!("err could not start {strace}: {e}"),
                }
            }
            ["delete", id] => {
                let _ = Command::new(bin)
                    .args(["--root", root, "delete", "-f", id])
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status();
                "ok 0".to_string()
            }
            _ => format!("err unknown request {line:?}"),
        };
        println!("{reply}");
        let _ = std::io::stdout().flush();
    }
    0
}

fn private_mount_namespace() -> Result<()> {
    // SAFETY: unshare/mount/umount2 with valid C strings, in this single-threaded helper.
    unsafe {
        if libc::unshare(libc::CLONE_NEWNS) != 0 {
            bail!("unshare(CLONE_NEWNS): {}", std::io::Error::last_os_error());
        }
        if libc::mount(
            std::ptr::null(),
            c"/".as_ptr(),
            std::ptr::null(),
            libc::MS_REC | libc::MS_PRIVATE,
            std::ptr::null(),
        ) != 0
        {
            bail!("making / private: {}", std::io::Error::last_os_error());
        }
    }
    let unified = fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .any(|l| l.split_whitespace().nth(4) == Some("/sys/fs/cgroup/unified"));
    if unified {
        // SAFETY: as above; only in the private mount namespace made just now.
        if unsafe { libc::umount2(c"/sys/fs/cgroup/unified".as_ptr(), libc::MNT_DETACH) } != 0 {
            bail!(
                "umount /sys/fs/cgroup/unified (private namespace): {}",
                std::io::Error::last_os_error()
            );
        }
    }
    Ok(())
}

/// The bench's end of one helper.
struct OciRuntime {
    name: &'static str,
    version: String,
    child: Child,
    to: Option<ChildStdin>,
    from: BufReader<ChildStdout>,
    bundle: PathBuf,
}

impl OciRuntime {
    fn start(
        name: &'static str,
        bin: &Path,
        state_root: &Path,
        bundle: &Path,
        private: bool,
    ) -> Result<OciRuntime> {
        let version = run(Command::new(bin).arg("--version"))
            .map(|v| v.lines().next().unwrap_or("").trim().to_string())
            .unwrap_or_else(|_| "version unknown".into());
        let mut child = Command::new(std::env::current_exe()?)
            .arg(OCI_HELPER_ARG)
            .arg(bin)
            .arg(state_root)
            .arg(if private { "1" } else { "0" })
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .context("starting the OCI helper")?;
        let to = child.stdin.take().context("helper stdin")?;
        let from = BufReader::new(child.stdout.take().context("helper stdout")?);
        let mut rt = OciRuntime {
            name,
            version,
            child,
            to: Some(to),
            from,
            bundle: bundle.to_path_buf(),
        };
        let first = rt.reply()?;
        if first != "ready" {
            bail!("{name} helper: {first}");
        }
        Ok(rt)
    }

    fn reply(&mut self) -> Result<String> {
        let mut line = String::new();
        if self.from.read_line(&mut line)? == 0 {
            bail!("the {} helper exited", self.name);
        }
        Ok(line.trim().to_string())
    }

    /// One `run` of `/bin/true`: its wall time, measured in the helper.
    fn run_once(&mut self, id: &str) -> Result<Duration> {
        let to = self.to.as_mut().context("helper closed")?;
        writeln!(to, "run {} {id}", self.bundle.display())?;
        to.flush()?;
        let r = self.reply()?;
        match r.strip_prefix("ok ") {
            Some(n) => Ok(Duration::from_nanos(n.parse()?)),
            None => bail!("{} run {id}: {r}", self.name),
        }
    }
}

impl OciRuntime {
    /// One `run` under strace (log written to `log`): its wall time.
    fn trace_once(&mut self, strace: &Path, log: &Path, id: &str) -> Result<Duration> {
        let to = self.to.as_mut().context("helper closed")?;
        writeln!(
            to,
            "trace {} {} {} {id}",
            strace.display(),
            log.display(),
            self.bundle.display()
        )?;
        to.flush()?;
        let r = self.reply()?;
        match r.strip_prefix("ok ") {
            Some(n) => Ok(Duration::from_nanos(n.parse()?)),
            None => bail!("{} traced run {id}: {r}", self.name),
        }
    }
}

/// What a traced `crun run` shows: wall time, time in cgroup.procs writes (all hierarchies,
/// and the first one), and when the workload was exec'd, from crun's own execve (ms).
fn oci_trace_costs(log: &str, wall: Duration) -> [f64; 4] {
    let calls = parse_strace(log);
    let t0 = calls.first().map_or(0.0, |c| c.t);
    let procs: Vec<&Call> = calls
        .iter()
        .filter(|c| {
            c.name == "write" && (c.text.contains("cgroup.procs>") || c.text.contains("/tasks>"))
        })
        .collect();
    let exec_true = calls
        .iter()
        .find(|c| c.name == "execve" && c.text.contains("\"/bin/true\""))
        .map_or(f64::NAN, |c| (c.t - t0) * 1000.0);
    [
        ms(wall),
        procs.iter().fold(0.0, |a, c| a + c.dur) * 1000.0,
        procs.first().map_or(f64::NAN, |c| c.dur * 1000.0),
        exec_true,
    ]
}

impl Drop for OciRuntime {
    fn drop(&mut self) {
        // EOF on its stdin ends the helper (and its mount namespace).
        drop(self.to.take());
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        stop_child(&mut self.child, Duration::from_secs(10));
    }
}

// ---------------------------------------------------------------------------------------------
// shoal's runtime, in process

struct ShoalRt {
    tokio: tokio::runtime::Runtime,
    rt: Runtime,
    layer: PathBuf,
}

impl ShoalRt {
    fn new(root: &Path, shoal: &Path, parent: &str, layer: &Path) -> Result<ShoalRt> {
        let tokio = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let rt = Runtime::new(root.to_path_buf(), shoal.to_path_buf(), parent.to_string())?;
        Ok(ShoalRt {
            tokio,
            rt,
            layer: layer.to_path_buf(),
        })
    }

    fn config(&self, id: &str, args: &[&str]) -> ContainerConfig {
        ContainerConfig {
            id: id.to_string(),
            name: id.to_string(),
            layers: vec![self.layer.clone()],
            args: args.iter().map(|s| s.to_string()).collect(),
            stop_grace: Duration::from_secs(1),
            ..ContainerConfig::default()
        }
    }

    /// create_and_start, wait, remove of `/bin/true`: the three phase times.
    fn run_true(&self, id: &str) -> Result<[Duration; 3]> {
        let t0 = Instant::now();
        let r = self.run_true_inner(id, t0);
        if r.is_err() {
            let _ = self.tokio.block_on(self.rt.remove(id));
        }
        r
    }

    fn run_true_inner(&self, id: &str, t0: Instant) -> Result<[Duration; 3]> {
        self.tokio
            .block_on(self.rt.create_and_start(self.config(id, &["/bin/true"])))?;
        let t1 = Instant::now();
        let exit = self.tokio.block_on(self.rt.wait(id))?;
        let t2 = Instant::now();
        if exit.code != 0 || exit.signal.is_some() {
            bail!("{id}: /bin/true exited {exit:?}");
        }
        self.tokio.block_on(self.rt.remove(id))?;
        let t3 = Instant::now();
        Ok([t1 - t0, t2 - t1, t3 - t2])
    }

    fn remove_all(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if let Ok(list) = self.rt.list() {
            for c in list {
                if let Err(e) = self.tokio.block_on(self.rt.remove(&c.id)) {
                    problems.push(format!("remove {}: {e}", c.id));
                }
            }
        }
        if let Ok(entries) = fs::read_dir(self.rt.root()) {
            for e in entries.flatten() {
                let id = e.file_name().to_string_lossy().into_owned();
                let _ = self.tokio.block_on(self.rt.remove(&id));
            }
        }
        problems
    }
}

impl Drop for ShoalRt {
    fn drop(&mut self) {
        for p in self.remove_all() {
            eprintln!("runtime-bench: cleanup: {p}");
        }
        let _ = self.rt.remove_cgroup_parent();
    }
}

// ---------------------------------------------------------------------------------------------
// Docker

const DOCKER_IMAGE_REPO: &str = "shoal-runtime-bench-busybox";

struct Docker {
    dockerd: Option<Child>,
    image: String,
    imported: bool,
    names: Vec<String>,
    version: String,
}

impl Docker {
    /// Uses the running engine, or starts dockerd (stopped again on drop); imports the image.
    fn start(dir: &Path, tag: &str, layer: &Path) -> Result<Docker> {
        let mut d = Docker {
            dockerd: None,
            image: format!("{DOCKER_IMAGE_REPO}:{tag}"),
            imported: false,
            names: Vec::new(),
            version: String::new(),
        };
        if !succeeds(Command::new("docker").arg("info")) {
            let log = File::create(dir.join("dockerd.log"))?;
            eprintln!("runtime-bench: starting dockerd (it is stopped at the end)");
            let child = Command::new("dockerd")
                .stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log)
                .process_group(0)
                .spawn()
                .context("starting dockerd")?;
            d.dockerd = Some(child);
            let deadline = Instant::now() + Duration::from_secs(60);
            while !succeeds(Command::new("docker").arg("info")) {
                if Instant::now() > deadline {
                    bail!("dockerd did not answer within 60 s");
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        }
        d.version = run(Command::new("docker").args(["version", "-f", "{{.Server.Version}}"]))
            .map(|v| v.trim().to_string())
            .unwrap_or_default();
        let tarball = dir.join("rootfs.tar");
        {
            let mut tar = tar::Builder::new(File::create(&tarball)?);
            tar.follow_symlinks(false);
            tar.append_dir_all(".", layer)?;
            tar.into_inner()?.sync_all()?;
        }
        run(Command::new("docker")
            .arg("import")
            .arg(&tarball)
            .arg(&d.image))?;
        d.imported = true;
        let _ = fs::remove_file(&tarball);
        Ok(d)
    }

    fn started_dockerd(&self) -> bool {
        self.dockerd.is_some()
    }
}

impl Drop for Docker {
    fn drop(&mut self) {
        if !self.names.is_empty() {
            let _ = succeeds(Command::new("docker").args(["rm", "-f"]).args(&self.names));
        }
        if self.imported {
            let _ = succeeds(Command::new("docker").args(["rmi", &self.image]));
        }
        if let Some(c) = &mut self.dockerd {
            stop_child(c, Duration::from_secs(30));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// One-shot end-to-end runs

/// One end-to-end one-shot system: a closure that does one run and returns its wall time, or
/// why the system cannot be measured.
enum OneShot<'a> {
    Ready(Box<dyn FnMut() -> Result<Duration> + 'a>),
    Unavailable(String),
}

/// `shoal --host SOCK run --rm busybox /bin/true` against a private daemon that has the
/// image (`image bootstrap busybox`).
fn shoal_run<'a>(
    shoal: &'a Path,
    daemon: &'a Result<Daemon>,
    extra: &'static [&'static str],
) -> OneShot<'a> {
    let d = match daemon {
        Ok(d) => d,
        Err(e) => return OneShot::Unavailable(format!("shoal daemon: {e:#}")),
    };
    let socket = d.dir.join("s.sock");
    OneShot::Ready(Box::new(move || {
        let start = Instant::now();
        run(Command::new(shoal)
            .arg("--host")
            .arg(&socket)
            .args(["run", "--rm"])
            .args(extra)
            .args(["busybox", "/bin/true"]))?;
        Ok(start.elapsed())
    }))
}

/// A private daemon with the busybox image, for the end-to-end runs.
fn daemon_with_busybox(shoal: &Path, base: &Path, tag: &str, octet: u8) -> Result<Daemon> {
    let d = Daemon::start(shoal, base, tag, octet)?;
    run(Command::new(shoal)
        .arg("--host")
        .arg(d.dir.join("s.sock"))
        .args(["image", "bootstrap", "busybox"]))?;
    Ok(d)
}

fn docker_run(image: &str, extra: &'static [&'static str]) -> OneShot<'static> {
    let image = image.to_string();
    OneShot::Ready(Box::new(move || {
        let start = Instant::now();
        run(Command::new("docker")
            .args(["run", "--rm"])
            .args(extra)
            .arg(&image)
            .arg("/bin/true"))?;
        Ok(start.elapsed())
    }))
}

// ---------------------------------------------------------------------------------------------
// The idle daemon

struct Daemon {
    child: Child,
    dir: PathBuf,
    cgroup_parent: String,
    net: NetworkConfig,
}

impl Daemon {
    fn start(shoal: &Path, base: &Path, tag: &str, octet: u8) -> Result<Daemon> {
        let dir = base.join("d");
        fs::create_dir_all(&dir)?;
        let socket = dir.join("s.sock");
        let data = dir.join("data");
        let cgroup_parent = format!("rtb-{tag}-d");
        // Link names: at most 5 of [a-z0-9].
        let prefix = format!("r{}", &tag[tag.len() - 4..]);
        let nft = format!("rtb{tag}");
        let pool = format!("base=10.{octet}.0.0/16,size=24");
        let log = File::create(dir.join("daemon.log"))?;
        let child = Command::new(shoal)
            .arg("daemon")
            .arg("--data-dir")
            .arg(&data)
            .arg("--socket")
            .arg(&socket)
            .args([
                "--listen-addr",
                "127.0.0.1:0",
                "--cgroup-parent",
                &cgroup_parent,
            ])
            .args(["--network-prefix", &prefix, "--nft-table", &nft])
            .args(["--default-address-pool", &pool, "--dns-upstream", "none"])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .process_group(0)
            .spawn()
            .context("starting shoal daemon")?;
        let mut net = NetworkConfig::new(data.join("network"), data.join("run"));
        net.name_prefix = prefix;
        net.nft_table = nft;
        net.pools = Ipv4Net::new(std::net::Ipv4Addr::new(10, octet, 0, 0), 16)
            .and_then(|b| AddressPool::new(b, 24))
            .into_iter()
            .collect();
        let mut d = Daemon {
            child,
            dir,
            cgroup_parent,
            net,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = d.child.try_wait()? {
                bail!(
                    "shoal daemon exited at start ({status}): {}",
                    fs::read_to_string(d.dir.join("daemon.log")).unwrap_or_default()
                );
            }
            if succeeds(
                Command::new(shoal)
                    .arg("--host")
                    .arg(&socket)
                    .args(["image", "ls", "-q"]),
            ) {
                break;
            }
            if Instant::now() > deadline {
                bail!("shoal daemon did not answer within 60 s");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(d)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        stop_child(&mut self.child, Duration::from_secs(20));
        // Whatever networks it made (an idle daemon should have made none).
        if let Ok(manager) = NetworkManager::open(self.net.clone()) {
            if let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                let state = manager.state();
                for id in state.containers.keys() {
                    let _ = rt.block_on(manager.release_container(id));
                }
                for id in state.networks.keys() {
                    let _ = rt.block_on(manager.remove_network(id));
                }
            }
        }
        for p in remove_cgroup_tree(&self.cgroup_parent) {
            eprintln!("runtime-bench: cleanup: {p}");
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}

// ---------------------------------------------------------------------------------------------
// The traced runs (breakdown of shoal's start)

/// The traced child: `n` runs of `/bin/true`, printing "MARK <run> <name> <epoch>" lines.
fn trace_child_main(args: &[String]) -> Result<()> {
    let [root, shoal, parent, layer, n] = args else {
        bail!("usage: runtime-bench {TRACE_ARG} <root> <shoal> <cgroup parent> <layer> <runs>");
    };
    let rt = ShoalRt::new(Path::new(root), Path::new(shoal), parent, Path::new(layer))?;
    let n: usize = n.parse()?;
    for i in 0..n {
        let id = format!("t{i}");
        let cfg = rt.config(&id, &["/bin/true"]);
        println!("MARK {i} begin {:.6}", epoch());
        let st = rt.tokio.block_on(rt.rt.create_and_start(cfg))?;
        println!("MARK {i} started {:.6}", epoch());
        if !matches!(
            st.status,
            ContainerStatus::Running { .. } | ContainerStatus::Exited(_)
        ) {
            bail!("{id}: unexpected state {:?}", st.status);
        }
        rt.tokio.block_on(rt.rt.wait(&id))?;
        println!("MARK {i} waited {:.6}", epoch());
        rt.tokio.block_on(rt.rt.remove(&id))?;
        println!("MARK {i} removed {:.6}", epoch());
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// One traced syscall (or process exit), with unfinished/resumed halves joined.
struct Call {
    pid: i32,
    /// Entry time (epoch seconds).
    t: f64,
    /// Syscall name, or "+++" for a process exit.
    name: String,
    /// The whole text (arguments and result).
    text: String,
    /// Time spent in the syscall (strace -T), seconds.
    dur: f64,
}

impl Call {
    fn ret(&self) -> Option<i64> {
        let (_, r) = self.text.rsplit_once(" = ")?;
        r.split_whitespace().next()?.parse().ok()
    }
}

fn trailing_duration(text: &str) -> f64 {
    text.trim_end()
        .strip_suffix('>')
        .and_then(|s| s.rsplit_once('<'))
        .and_then(|(_, d)| d.parse().ok())
        .unwrap_or(0.0)
}

/// Parses `strace -f -ttt -T` output (`PID TIME TEXT` lines).
fn parse_strace(log: &str) -> Vec<Call> {
    let mut calls = Vec::new();
    let mut pending: BTreeMap<i32, (f64, String, String)> = BTreeMap::new();
    for line in log.lines() {
        // "PID TIME TEXT"; strace pads the PID with spaces.
        let Some((pid, r)) = line.trim_start().split_once(' ') else {
            continue;
        };
        let Some((t, rest)) = r.trim_start().split_once(' ') else {
            continue;
        };
        let (Ok(pid), Ok(t)) = (pid.parse::<i32>(), t.parse::<f64>()) else {
            continue;
        };
        let rest = rest.trim_start();
        if rest.starts_with("+++") {
            calls.push(Call {
                pid,
                t,
                name: "+++".into(),
                text: rest.to_string(),
                dur: 0.0,
            });
        } else if let Some(head) = rest.strip_suffix("<unfinished ...>") {
            let name = head.split('(').next().unwrap_or("").to_string();
            pending.insert(pid, (t, name, head.to_string()));
        } else if rest.starts_with("<... ") {
            if let Some((t0, name, head)) = pending.remove(&pid) {
                let tail = rest.split_once("resumed>").map_or("", |(_, r)| r);
                calls.push(Call {
                    pid,
                    t: t0,
                    name,
                    text: format!("{head}{tail}"),
                    dur: trailing_duration(rest),
                });
            }
        } else {
            let name = rest.split('(').next().unwrap_or("").to_string();
            calls.push(Call {
                pid,
                t,
                name,
                text: rest.to_string(),
                dur: trailing_duration(rest),
            });
        }
    }
    calls.sort_by(|a, b| a.t.total_cmp(&b.t));
    calls
}

/// The named points of one traced run, in ms from the call of create_and_start, plus a few
/// measured costs (also ms).
struct Timeline {
    events: Vec<(&'static str, f64)>,
    costs: Vec<(&'static str, f64)>,
}

fn trace_timelines(log: &str, marks: &[BTreeMap<String, f64>], shoal: &Path) -> Vec<Timeline> {
    let calls = parse_strace(log);
    let shoal_exec = format!("execve(\"{}\"", supervisor_binary(shoal).display());
    let mut out = Vec::new();
    for m in marks {
        let (Some(&b), Some(&s), Some(&w), Some(&r)) = (
            m.get("begin"),
            m.get("started"),
            m.get("waited"),
            m.get("removed"),
        ) else {
            continue;
        };
        let window: Vec<&Call> = calls.iter().filter(|c| c.t >= b && c.t <= r).collect();
        let find = |from: f64, pred: &dyn Fn(&Call) -> bool| -> Option<&Call> {
            window.iter().copied().find(|c| c.t >= from && pred(c))
        };
        let Some(exec) = find(b, &|c| c.text.starts_with(&shoal_exec)) else {
            continue;
        };
        let p0 = exec.pid;
        let fork_p1 = find(exec.t, &|c| c.pid == p0 && c.name.starts_with("clone"));
        let p1 = fork_p1.and_then(|c| c.ret()).unwrap_or(-1) as i32;
        let p1_fsync = find(exec.t, &|c| c.pid == p1 && c.name == "fsync");
        let cg = find(exec.t, &|c| {
            c.pid == p1 && c.name == "mkdir" && c.text.contains("\"/sys/fs/cgroup")
        });
        let unshare_pid = find(exec.t, &|c| {
            c.pid == p1 && c.name == "unshare" && c.text.contains("CLONE_NEWPID")
        });
        let fork_init =
            unshare_pid.and_then(|u| find(u.t, &|c| c.pid == p1 && c.name.starts_with("clone")));
        let init = fork_init.and_then(|c| c.ret()).unwrap_or(-1) as i32;
        let procs_writes = |from: f64| {
            window
                .iter()
                .copied()
                .filter(|c| {
                    c.t >= from
                        && c.pid == p1
                        && c.name == "write"
                        && c.text.contains("cgroup.procs>")
                })
                .collect::<Vec<&Call>>()
        };
        let procs = fork_init.map(|f| procs_writes(f.t)).unwrap_or_default();
        let first_procs = procs.first().copied();
        let go = fork_init.and_then(|f| {
            find(f.t, &|c| {
                c.pid == p1
                    && c.name == "write"
                    && c.text.contains("<pipe:")
                    && c.text.contains("\"1\", 1)")
            })
        });
        let init_unshare = find(exec.t, &|c| {
            c.pid == init && c.name == "unshare" && c.text.contains("CLONE_NEWNS")
        });
        let overlay = find(exec.t, &|c| {
            c.pid == init && c.name == "mount" && c.text.contains("\"overlay\"")
        });
        let pivot = find(exec.t, &|c| c.pid == init && c.name == "pivot_root");
        let exec_true = find(exec.t, &|c| {
            c.pid == init && c.name == "execve" && c.text.contains("\"/bin/true\"")
        });
        let report = find(exec.t, &|c| {
            c.pid == p0 && c.name == "write" && c.text.contains("result")
        });
        let p0_exit = find(exec.t, &|c| c.pid == p0 && c.name == "+++");
        let true_exit = find(exec.t, &|c| c.pid == init && c.name == "+++");
        let p1_exit = find(exec.t, &|c| c.pid == p1 && c.name == "+++");
        let exit_json = find(exec.t, &|c| {
            c.pid == p1 && c.name == "write" && c.text.contains(".exit.json.tmp>")
        });
        let p1_rmdir = find(exec.t, &|c| c.pid == p1 && c.name == "rmdir");
        let in_remove = |c: &Call| c.t >= w && c.t <= r;
        let at = |c: Option<&Call>| c.map_or(f64::NAN, |c| (c.t - b) * 1000.0);
        let end = |c: Option<&Call>| c.map_or(f64::NAN, |c| (c.t + c.dur - b) * 1000.0);
        let sum = |pred: &dyn Fn(&Call) -> bool| -> f64 {
            window
                .iter()
                .filter(|c| pred(c))
                .fold(0.0, |a, c| a + c.dur)
                * 1000.0
        };
        let count = |pred: &dyn Fn(&Call) -> bool| window.iter().filter(|c| pred(c)).count();
        let creating = |c: &Call| c.t < s;
        out.push(Timeline {
            events: vec![
                (
                    "execve of the supervisor (daemon-side prep done)",
                    at(Some(exec)),
                ),
                ("P0 forks P1 (binary loaded, P0 setup)", at(fork_p1)),
                ("P1: first fsync (state.json)", at(p1_fsync)),
                ("P1: first cgroup mkdir", at(cg)),
                (
                    "P1: unshare(CLONE_NEWPID) (cgroups set up)",
                    at(unshare_pid),
                ),
                ("P1 forks the init", at(fork_init)),
                ("P1: first cgroup.procs write (memory)", at(first_procs)),
                ("P1: releases the init (go)", at(go)),
                (
                    "init: unshare(NEWNS|NEWUTS|NEWIPC|NEWNET) called",
                    at(init_unshare),
                ),
                ("init: unshare returned", end(init_unshare)),
                ("init: mount overlay rootfs", at(overlay)),
                ("init: pivot_root", at(pivot)),
                ("init: execve(/bin/true)", at(exec_true)),
                ("P0 relays the report", at(report)),
                ("P0 exited", at(p0_exit)),
                ("/bin/true exited (namespaces torn down)", at(true_exit)),
                ("create_and_start returned", (s - b) * 1000.0),
                ("P1: writes exit.json", at(exit_json)),
                ("P1: cgroup rmdir", at(p1_rmdir)),
                ("supervisor P1 exited", at(p1_exit)),
                ("wait returned", (w - b) * 1000.0),
                ("remove returned", (r - b) * 1000.0),
            ],
            costs: vec![
                (
                    "fsync calls before create_and_start returned (count)",
                    count(&|c| creating(c) && c.name == "fsync") as f64,
                ),
                ("  time in them", sum(&|c| creating(c) && c.name == "fsync")),
                (
                    "fsync calls after create_and_start returned (count)",
                    count(&|c| !creating(c) && c.name == "fsync") as f64,
                ),
                (
                    "  time in them",
                    sum(&|c| !creating(c) && c.name == "fsync"),
                ),
                (
                    "P1: cgroup.procs writes (all hierarchies)",
                    procs.iter().fold(0.0, |a, c| a + c.dur) * 1000.0,
                ),
                (
                    "  of which the first (memory)",
                    first_procs.map_or(f64::NAN, |c| c.dur * 1000.0),
                ),
                (
                    "init: unshare(NEWNS|NEWUTS|NEWIPC|NEWNET)",
                    init_unshare.map_or(f64::NAN, |c| c.dur * 1000.0),
                ),
                (
                    "init: mount overlay",
                    overlay.map_or(f64::NAN, |c| c.dur * 1000.0),
                ),
                (
                    "init: pivot_root",
                    pivot.map_or(f64::NAN, |c| c.dur * 1000.0),
                ),
                (
                    "remove: unlinkat/rmdir calls (state dir)",
                    sum(&|c| in_remove(c) && (c.name == "unlinkat" || c.name == "rmdir")),
                ),
            ],
        });
    }
    out
}

fn traced_breakdown(
    strace: &Path,
    base: &Path,
    shoal: &Path,
    parent: &str,
    layer: &Path,
    runs: u64,
) -> Result<Vec<Timeline>> {
    let log = base.join("strace.log");
    let root = base.join("tc");
    let out = Command::new(strace)
        .args(["-f", "--seccomp-bpf", "-ttt", "-T", "-q", "-y", "-o"])
        .arg(&log)
        .args(["-e", TRACE_SET, "-e", "signal=none"])
        .arg(std::env::current_exe()?)
        .arg(TRACE_ARG)
        .arg(&root)
        .arg(shoal)
        .arg(parent)
        .arg(layer)
        .arg(runs.to_string())
        .stdin(Stdio::null())
        .output()
        .context("running strace")?;
    // The traced child cleans up itself; a second pass here in case it failed half-way.
    if let Ok(rt) = ShoalRt::new(&root, shoal, parent, layer) {
        drop(rt);
    }
    if !out.status.success() {
        bail!(
            "traced runs failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let mut marks: Vec<BTreeMap<String, f64>> = vec![BTreeMap::new(); runs as usize];
    for l in String::from_utf8_lossy(&out.stdout).lines() {
        let w: Vec<&str> = l.split_whitespace().collect();
        if let ["MARK", i, name, t] = w.as_slice() {
            if let (Ok(i), Ok(t)) = (i.parse::<usize>(), t.parse::<f64>()) {
                if let Some(m) = marks.get_mut(i) {
                    m.insert(name.to_string(), t);
                }
            }
        }
    }
    let text = fs::read_to_string(&log)?;
    let _ = fs::remove_file(&log);
    Ok(trace_timelines(&text, &marks, shoal))
}

fn print_breakdown(lines: &[Timeline]) {
    println!(
        "breakdown of one shoal run under strace -f --seccomp-bpf -T ({} runs; medians; ms from \
         the call of create_and_start; each traced syscall adds a tracing stop, so absolute \
         values run high):",
        lines.len()
    );
    let Some(first) = lines.first() else {
        return;
    };
    let median_of = |pick: &dyn Fn(&Timeline) -> f64| {
        let v: Vec<f64> = lines.iter().map(pick).filter(|x| !x.is_nan()).collect();
        Stats::of(&v).map_or(f64::NAN, |s| s.p50)
    };
    let mut events: Vec<(&str, f64)> = (0..first.events.len())
        .map(|k| (first.events[k].0, median_of(&|t| t.events[k].1)))
        .collect();
    events.sort_by(|a, b| a.1.total_cmp(&b.1));
    let mut rows = Vec::new();
    let mut prev = 0.0;
    for (name, at) in events {
        if at.is_nan() {
            rows.push(vec![name.to_string(), "-".into(), "-".into()]);
            continue;
        }
        rows.push(vec![
            name.to_string(),
            format!("{at:.2}"),
            format!("+{:.2}", at - prev),
        ]);
        prev = at;
    }
    println!(
        "{}",
        table::format_table(&["event", "at", "since previous"], &rows)
    );
    let rows: Vec<Vec<String>> = (0..first.costs.len())
        .map(|k| {
            let v = median_of(&|t| t.costs[k].1);
            vec![
                first.costs[k].0.to_string(),
                if v.is_nan() {
                    "-".into()
                } else {
                    format!("{v:.2}")
                },
            ]
        })
        .collect();
    println!(
        "{}",
        table::format_table(
            &[
                "time in syscalls, same traced runs (ms; counts as noted)",
                "median"
            ],
            &rows
        )
    );
}

// ---------------------------------------------------------------------------------------------
// The run

fn shoal_binary(explicit: Option<&Path>) -> Result<PathBuf> {
    let bin = match explicit {
        Some(p) => p.to_path_buf(),
        None => std::env::current_exe()?.with_file_name("shoal"),
    };
    if !bin.is_file() {
        bail!(
            "no shoal binary at {}: build it with `cargo build --release`, or pass --shoal PATH",
            bin.display()
        );
    }
    Ok(fs::canonicalize(&bin)?)
}

/// What the runtime starts as a container's supervisor: `shoal-relay` beside `shoal` when it
/// is there (as `Runtime` picks it), else `shoal`.
fn supervisor_binary(shoal: &Path) -> PathBuf {
    let relay = shoal.with_file_name(shoal_agent::runtime::RELAY_BIN);
    if relay.is_file() {
        relay
    } else {
        shoal.to_path_buf()
    }
}

fn row(name: &str, s: Option<Stats>, extra: &str) -> Vec<String> {
    match s {
        Some(s) => vec![
            name.to_string(),
            format!("{:.2}", s.p50),
            format!("{:.2}", s.p90),
            format!("{:.2}–{:.2}", s.min, s.max),
            s.n.to_string(),
            extra.to_string(),
        ],
        None => vec![
            name.to_string(),
            "-".into(),
            "-".into(),
            "-".into(),
            "0".into(),
            extra.to_string(),
        ],
    }
}

/// Section 2: `shoal run --rm` with its default bridge network and with `--network none`
/// through a private daemon, and `docker run --rm` likewise when there is a Docker; then what
/// the network adds to a start (bridge p50 − none p50).
fn one_shot_section(args: &Args, shoal: &Path, base: &Path, tag: &str, docker: Option<&Docker>) {
    let octet = 200 + (u32::from_str_radix(tag, 16).unwrap_or(0) % 50) as u8;
    let daemon = daemon_with_busybox(shoal, base, tag, octet);
    let mut sides: Vec<(String, OneShot)> = vec![
        (
            "shoal run --rm busybox /bin/true".into(),
            shoal_run(shoal, &daemon, &[]),
        ),
        (
            "shoal run --rm --network none busybox /bin/true".into(),
            shoal_run(shoal, &daemon, &["--network", "none"]),
        ),
    ];
    if let Some(d) = docker {
        sides.push((
            "docker run --rm busybox /bin/true".into(),
            docker_run(&d.image, &[]),
        ));
        sides.push((
            "docker run --rm --network none busybox /bin/true".into(),
            docker_run(&d.image, &["--network", "none"]),
        ));
    }
    let mut samples: Vec<Vec<f64>> = vec![Vec::new(); sides.len()];
    let mut failed: Vec<Option<String>> = vec![None; sides.len()];
    let warm = 2;
    eprintln!("runtime-bench: one-shot end-to-end runs");
    for i in 0..(warm + args.e2e_runs) {
        for (k, (_, side)) in sides.iter_mut().enumerate() {
            if failed[k].is_some() {
                continue;
            }
            if let OneShot::Ready(f) = side {
                match f() {
                    Ok(d) if i >= warm => samples[k].push(ms(d)),
                    Ok(_) => {}
                    Err(e) => failed[k] = Some(format!("{e:#}")),
                }
            }
        }
    }
    println!(
        "2. one-shot end to end ({} runs per variant after {warm} warm-up; ms)",
        args.e2e_runs
    );
    let mut rows = Vec::new();
    for (k, (name, side)) in sides.iter().enumerate() {
        match side {
            OneShot::Unavailable(why) => rows.push(row(name, None, why)),
            OneShot::Ready(_) => {
                let s = Stats::of(&samples[k]);
                // Docker's rows (2, 3) against shoal's with the same network (0, 1).
                let shoal_p50 = k
                    .checked_sub(2)
                    .and_then(|j| Stats::of(&samples[j]))
                    .map(|s| s.p50);
                let extra = match (&failed[k], shoal_p50, s) {
                    (Some(e), _, _) => format!("FAILED: {e}"),
                    (None, Some(a), Some(b)) => format!(
                        "docker / shoal p50 = {:.1}× (target ≥ 8×: {})",
                        b.p50 / a,
                        if b.p50 / a >= 8.0 { "met" } else { "NOT met" }
                    ),
                    _ => String::new(),
                };
                rows.push(row(name, s, &extra));
            }
        }
    }
    println!(
        "{}",
        table::format_table(&["system", "p50", "p90", "min–max", "n", "note"], &rows)
    );
    // What the default network adds to a one-shot run: bridge row minus none row.
    for (who, bridge, none) in [("shoal", 0, 1), ("docker", 2, 3)] {
        let p50 = |k: usize| {
            (k < samples.len() && failed[k].is_none())
                .then(|| Stats::of(&samples[k]))
                .flatten()
                .map(|s| s.p50)
        };
        if let (Some(b), Some(n)) = (p50(bridge), p50(none)) {
            let added = b - n;
            let target = if who == "shoal" {
                format!(
                    " (target ≤ 5 ms: {})",
                    if added <= 5.0 { "met" } else { "NOT met" }
                )
            } else {
                String::new()
            };
            println!(
                "{who}: the default bridge network adds {added:.2} ms to a run \
                 (p50 {b:.2} − p50 {n:.2} with --network none){target}"
            );
        }
    }
    println!();
    drop(sides);
    drop(daemon);
}

/// Docker for sections 2 and 3, unless left out or not installed (then says why).
fn start_docker(args: &Args, base: &Path, tag: &str, layer: &Path) -> Option<Docker> {
    let docker = if args.no_docker {
        Err("--no-docker".to_string())
    } else if on_path("docker").is_none() || on_path("dockerd").is_none() {
        Err("docker.io not installed".to_string())
    } else {
        Docker::start(base, tag, layer).map_err(|e| format!("{e:#}"))
    };
    let docker = match docker {
        Ok(d) => Some(d),
        Err(why) => {
            println!("docker: not measured: {why}");
            None
        }
    };
    if let Some(d) = &docker {
        println!(
            "docker: Engine {}{}; image {} (docker import of the same rootfs)",
            d.version,
            if d.started_dockerd() {
                ", dockerd started by the bench"
            } else {
                ", dockerd already running"
            },
            d.image
        );
    }
    docker
}

fn run_all(args: &Args) -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("runtime-bench needs root (namespaces, mounts, cgroups)");
    }
    let shoal = shoal_binary(args.shoal.as_deref())?;
    let tag = unique_tag();
    let tmp = tempfile::Builder::new()
        .prefix("rtb")
        .tempdir_in("/tmp")
        .context("tempdir")?;
    let base = tmp.path();
    let layer = base.join("l");
    busybox_layer(&layer)?;

    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let cgroup = if Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
        "cgroup v2"
    } else {
        "cgroup v1 (hybrid)"
    };
    println!(
        "runtime-bench: {cpus} CPUs, Linux {}, {cgroup}; tag {tag}",
        kernel.trim()
    );
    println!(
        "shoal: {} ({})",
        run(Command::new(&shoal).arg("version"))
            .map(|v| v.trim().to_string())
            .unwrap_or_default(),
        shoal.display()
    );
    println!();

    if args.e2e_only {
        let docker = start_docker(args, base, &tag, &layer);
        one_shot_section(args, &shoal, base, &tag, docker.as_ref());
        return Ok(());
    }

    // ---- 1. create → exit → remove of /bin/true
    let rt = ShoalRt::new(&base.join("c"), &shoal, &format!("rtb-{tag}"), &layer)?;
    let oci_parent = format!("rtb-{tag}-oci");
    let bundle = base.join("b");
    fs::create_dir_all(&bundle)?;
    // One bundle for both runtimes. The cgroup path is taken as is, so every run uses the same
    // leaf (runs never overlap; each runtime removes it when its container is deleted).
    fs::write(
        bundle.join("config.json"),
        serde_json::to_vec_pretty(&oci_config(
            &layer,
            &format!("/{oci_parent}/c"),
            &["/bin/true"],
        ))?,
    )?;
    let mut ocis: Vec<OciRuntime> = Vec::new();
    let mut skipped: Vec<String> = Vec::new();
    for (name, private) in [("crun", true), ("runc", false)] {
        match on_path(name) {
            Some(bin) => {
                let state = base.join(format!("{name}-state"));
                fs::create_dir_all(&state)?;
                match OciRuntime::start(name, &bin, &state, &bundle, private) {
                    Ok(r) => ocis.push(r),
                    Err(e) => skipped.push(format!("{name}: {e:#}")),
                }
            }
            None => skipped.push(format!("{name}: not installed (apt-get install -y {name})")),
        }
    }
    let total = args.warmup + args.runs;
    eprintln!(
        "runtime-bench: {} warm-up + {} runs each of shoal, {}",
        args.warmup,
        args.runs,
        ocis.iter().map(|o| o.name).collect::<Vec<_>>().join(", ")
    );
    let mut shoal_phases: Vec<[Duration; 3]> = Vec::new();
    let mut oci_times: Vec<Vec<Duration>> = vec![Vec::new(); ocis.len()];
    let mut oci_failed: Vec<Option<String>> = vec![None; ocis.len()];
    let systems = 1 + ocis.len();
    for i in 0..total {
        for k in 0..systems {
            // Rotate the order each round, so no system always follows another.
            let which = (k + i as usize) % systems;
            if which == 0 {
                let p = rt
                    .run_true(&format!("s{i}"))
                    .with_context(|| format!("shoal run {i}"))?;
                if i >= args.warmup {
                    shoal_phases.push(p);
                }
            } else {
                let j = which - 1;
                if oci_failed[j].is_some() {
                    continue;
                }
                match ocis[j].run_once(&format!("rtb{tag}{i}")) {
                    Ok(d) if i >= args.warmup => oci_times[j].push(d),
                    Ok(_) => {}
                    Err(e) => oci_failed[j] = Some(format!("{e:#}")),
                }
            }
        }
    }
    let shoal_total: Vec<f64> = shoal_phases
        .iter()
        .map(|p| ms(p[0] + p[1] + p[2]))
        .collect();
    let shoal_stats = Stats::of(&shoal_total);
    let crun_idx = ocis.iter().position(|o| o.name == "crun");
    let crun_stats =
        crun_idx.and_then(|j| Stats::of(&oci_times[j].iter().map(|d| ms(*d)).collect::<Vec<_>>()));

    println!(
        "1. create → exit → remove of /bin/true (busybox), same rootfs; ms; {} measured runs each after {} warm-up, interleaved",
        args.runs, args.warmup
    );
    let mut rows = Vec::new();
    let verdict = match (shoal_stats, crun_stats) {
        (Some(s), Some(c)) => format!(
            "target p50 ≤ crun's p50: {}",
            if s.p50 <= c.p50 { "met" } else { "NOT met" }
        ),
        _ => "target p50 ≤ crun's p50: no crun figure".into(),
    };
    rows.push(row(
        "shoal runtime (create_and_start+wait+remove)",
        shoal_stats,
        &verdict,
    ));
    for (ph, name) in [
        (0, "  of which create_and_start (to exec'd)"),
        (1, "  of which wait (exec → exit seen)"),
        (2, "  of which remove"),
    ] {
        let v: Vec<f64> = shoal_phases.iter().map(|p| ms(p[ph])).collect();
        rows.push(row(name, Stats::of(&v), ""));
    }
    for (j, o) in ocis.iter().enumerate() {
        let v: Vec<f64> = oci_times[j].iter().map(|d| ms(*d)).collect();
        let st = Stats::of(&v);
        let ratio = match (shoal_stats, st) {
            (Some(s), Some(x)) if x.p50 > 0.0 => format!(
                "shoal/{} p50 = {:.2}×, p90 = {:.2}×",
                o.name,
                s.p50 / x.p50,
                s.p90 / x.p90
            ),
            _ => String::new(),
        };
        let label = if o.name == "crun" {
            format!("crun run ({}; private mount ns)", o.version)
        } else {
            format!("{} run ({})", o.name, o.version)
        };
        rows.push(row(&label, st, &ratio));
    }
    println!(
        "{}",
        table::format_table(&["system", "p50", "p90", "min–max", "n", "vs"], &rows)
    );
    for (j, f) in oci_failed.iter().enumerate() {
        if let Some(f) = f {
            println!("{}: FAILED: {f}", ocis[j].name);
        }
    }
    for s in &skipped {
        println!("skipped {s}");
    }
    println!(
        "note: crun/runc run the bundle's rootfs directory directly (no overlay), with no seccomp \
         profile and no log relay; shoal mounts an overlay over the layer, writes managed /etc \
         files, applies Docker's seccomp filter and relays stdout/stderr into its log."
    );
    println!();
    let mut crun_traced: Result<Vec<[f64; 4]>> = Ok(Vec::new());
    if let (Some(j), Some(strace), true) = (crun_idx, on_path("strace"), args.trace_runs > 0) {
        let log = base.join("crun-strace.log");
        for i in 0..args.trace_runs {
            let r = ocis[j]
                .trace_once(&strace, &log, &format!("rtb{tag}t{i}"))
                .and_then(|wall| Ok(oci_trace_costs(&fs::read_to_string(&log)?, wall)));
            match r {
                Ok(c) => {
                    if let Ok(v) = &mut crun_traced {
                        v.push(c);
                    }
                }
                Err(e) => {
                    crun_traced = Err(e);
                    break;
                }
            }
            let _ = fs::remove_file(&log);
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    drop(ocis);
    let mut problems = remove_cgroup_tree(&oci_parent);

    // ---- Supervisor binary start cost (exec of the supervisor binary alone).
    {
        let supervisor = supervisor_binary(&shoal);
        let mut v = Vec::new();
        for _ in 0..20 {
            let t = Instant::now();
            let _ = Command::new(&supervisor)
                .arg(shoal_agent::runtime::SUPERVISOR_ARG)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
            v.push(ms(t.elapsed()));
        }
        let size = fs::metadata(&supervisor).map(|m| m.len()).unwrap_or(0);
        let st = Stats::of(&v[5..]);
        if let Some(s) = st {
            println!(
                "exec of the supervisor binary {} ({:.0} MiB on disk) as `{}` with no arguments \
                 (parse error, report, exit): p50 {:.2} ms, p90 {:.2} ms (n={})",
                supervisor.display(),
                size as f64 / (1 << 20) as f64,
                shoal_agent::runtime::SUPERVISOR_ARG,
                s.p50,
                s.p90,
                s.n
            );
        }
        println!();
    }

    // ---- 5 (printed here, next to section 1). Breakdown of shoal's start.
    if args.trace_runs > 0 {
        match on_path("strace") {
            None => println!("breakdown: skipped (strace not installed)"),
            Some(strace) => {
                match traced_breakdown(
                    &strace,
                    base,
                    &shoal,
                    &format!("rtb-{tag}-t"),
                    &layer,
                    args.trace_runs,
                ) {
                    Ok(lines) => {
                        print_breakdown(&lines);
                        match &crun_traced {
                            Ok(v) if !v.is_empty() => {
                                let med = |k: usize| {
                                    let x: Vec<f64> =
                                        v.iter().map(|c| c[k]).filter(|x| !x.is_nan()).collect();
                                    Stats::of(&x).map_or(f64::NAN, |s| s.p50)
                                };
                                println!(
                                    "crun run under the same strace ({} runs, same pacing; medians, ms): \
                                     whole run {:.2}; execve(/bin/true) at {:.2} from crun's execve; \
                                     cgroup.procs writes {:.2}, of which the first {:.2}",
                                    v.len(),
                                    med(0),
                                    med(3),
                                    med(1),
                                    med(2)
                                );
                            }
                            Ok(_) => {}
                            Err(e) => println!("crun under strace: FAILED: {e:#}"),
                        }
                    }
                    Err(e) => println!("breakdown: FAILED: {e:#}"),
                }
                problems.extend(remove_cgroup_tree(&format!("rtb-{tag}-t")));
            }
        }
        println!();
    }

    // ---- Docker (sections 2 and 3)
    let mut docker = start_docker(args, base, &tag, &layer);

    // ---- 2. one-shot end to end
    one_shot_section(args, &shoal, base, &tag, docker.as_ref());

    // ---- 3. supervisor memory
    {
        let k = args.containers as usize;
        println!("3. per-container memory with {k} containers running `sleep 1000`");
        let mut sup = Vec::new();
        let mut rows = Vec::new();
        let started: Result<()> = (|| {
            for i in 0..k {
                let id = format!("m{i}");
                let st = rt
                    .tokio
                    .block_on(rt.rt.create_and_start(rt.config(&id, &["sleep", "1000"])))?;
                sup.push(st.supervisor_pid.context("no supervisor pid")?);
            }
            Ok(())
        })();
        std::thread::sleep(Duration::from_secs(1));
        let mems: Vec<(f64, f64)> = sup.iter().filter_map(|&p| memory_kib(p)).collect();
        let rss = Stats::of(&mems.iter().map(|m| m.0).collect::<Vec<_>>());
        let pss = Stats::of(&mems.iter().map(|m| m.1).collect::<Vec<_>>());
        let ok = rss.is_some_and(|r| r.p50 <= TARGET_SUPERVISOR_KIB);
        rows.push(vec![
            format!(
                "shoal supervisor ({})",
                supervisor_binary(&shoal)
                    .file_name()
                    .map_or("?".into(), |n| n.to_string_lossy())
            ),
            rss.map_or("-".into(), |s| kib(s.p50)),
            rss.map_or("-".into(), |s| format!("{}–{}", kib(s.min), kib(s.max))),
            pss.map_or("-".into(), |s| kib(s.p50)),
            mems.len().to_string(),
            format!(
                "target VmRSS ≤ 1 MiB: {}",
                if ok { "met" } else { "NOT met" }
            ),
        ]);
        if let Err(e) = started {
            println!("shoal: starting containers FAILED: {e:#}");
        }
        problems.extend(rt.remove_all());

        if let Some(d) = &mut docker {
            let mut ids = Vec::new();
            let r: Result<()> = (|| {
                for i in 0..k {
                    let name = format!("rtb-{tag}-m{i}");
                    d.names.push(name.clone());
                    let out = run(Command::new("docker")
                        .args(["run", "-d", "--network", "none", "--name", &name])
                        .arg(&d.image)
                        .args(["/bin/sleep", "1000"]))?;
                    ids.push(out.trim().to_string());
                }
                Ok(())
            })();
            std::thread::sleep(Duration::from_secs(1));
            let procs = processes();
            let shims: Vec<i32> = ids
                .iter()
                .filter_map(|id| {
                    procs
                        .iter()
                        .find(|(_, comm, cmd)| {
                            comm.starts_with("containerd-shim")
                                && cmd.contains(&format!("-id {id}"))
                        })
                        .map(|p| p.0)
                })
                .collect();
            let mems: Vec<(f64, f64)> = shims.iter().filter_map(|&p| memory_kib(p)).collect();
            let rss = Stats::of(&mems.iter().map(|m| m.0).collect::<Vec<_>>());
            let pss = Stats::of(&mems.iter().map(|m| m.1).collect::<Vec<_>>());
            rows.push(vec![
                "docker: containerd-shim-runc-v2 (one per container)".into(),
                rss.map_or("-".into(), |s| kib(s.p50)),
                rss.map_or("-".into(), |s| format!("{}–{}", kib(s.min), kib(s.max))),
                pss.map_or("-".into(), |s| kib(s.p50)),
                mems.len().to_string(),
                String::new(),
            ]);
            if let Err(e) = r {
                println!("docker: starting containers FAILED: {e:#}");
            }
            if !d.names.is_empty() {
                let _ = succeeds(Command::new("docker").args(["rm", "-f"]).args(&d.names));
                d.names.clear();
            }
        }
        println!(
            "{}",
            table::format_table(
                &[
                    "process",
                    "VmRSS p50",
                    "VmRSS min–max",
                    "Pss p50",
                    "n",
                    "target"
                ],
                &rows
            )
        );
        println!(
            "note: VmRSS counts the binary's shared pages in every process; Pss divides them among \
             the processes that share them."
        );
        println!();
    }
    drop(rt);
    problems.extend(remove_cgroup_tree(&format!("rtb-{tag}")));

    // ---- 4. idle daemon memory
    {
        println!("4. idle daemon memory (2 s after it answers)");
        let octet = 200 + (u32::from_str_radix(&tag, 16).unwrap_or(0) % 50) as u8;
        let mut rows = Vec::new();
        match Daemon::start(&shoal, base, &tag, octet) {
            Ok(d) => {
                std::thread::sleep(Duration::from_secs(2));
                let m = memory_kib(d.child.id() as i32);
                let threads = fs::read_to_string(format!("/proc/{}/status", d.child.id()))
                    .ok()
                    .and_then(|s| {
                        s.lines()
                            .find(|l| l.starts_with("Threads:"))
                            .map(|l| l.split_whitespace().nth(1).unwrap_or("").to_string())
                    })
                    .unwrap_or_default();
                let ok = m.is_some_and(|m| m.0 <= TARGET_DAEMON_KIB);
                rows.push(vec![
                    "shoal daemon (manager + agent)".into(),
                    m.map_or("-".into(), |m| kib(m.0)),
                    m.map_or("-".into(), |m| kib(m.1)),
                    threads,
                    format!(
                        "target VmRSS ≤ 30 MiB: {}",
                        if ok { "met" } else { "NOT met" }
                    ),
                ]);
                drop(d);
            }
            Err(e) => println!("shoal daemon: FAILED: {e:#}"),
        }
        if docker.is_some() {
            for (pid, comm, _) in processes() {
                if comm == "dockerd" || comm == "containerd" {
                    if let Some(m) = memory_kib(pid) {
                        let threads = fs::read_to_string(format!("/proc/{pid}/status"))
                            .ok()
                            .and_then(|s| {
                                s.lines()
                                    .find(|l| l.starts_with("Threads:"))
                                    .map(|l| l.split_whitespace().nth(1).unwrap_or("").to_string())
                            })
                            .unwrap_or_default();
                        rows.push(vec![
                            format!(
                                "{comm} (pid {pid}; not idle-controlled: it is the running engine)"
                            ),
                            kib(m.0),
                            kib(m.1),
                            threads,
                            String::new(),
                        ]);
                    }
                }
            }
        }
        println!(
            "{}",
            table::format_table(&["process", "VmRSS", "Pss", "threads", "target"], &rows)
        );
        println!();
    }
    drop(docker);

    problems.extend(remove_cgroup_tree(&format!("rtb-{tag}-d")));
    if !problems.is_empty() {
        println!("cleanup problems:");
        for p in problems {
            println!("  {p}");
        }
    }
    Ok(())
}
