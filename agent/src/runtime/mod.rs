//! shoal's container runtime: overlayfs rootfs, Linux namespaces, cgroups, one small supervisor
//! process per container.
//!
//! # Process model
//!
//! The daemon is multi-threaded (tokio) and must never fork. To start a container it spawns
//! [`RELAY_BIN`] (installed beside `shoal`; `shoal` itself when it is missing) with the hidden
//! first argument [`SUPERVISOR_ARG`]; both `main`s hand that straight to [`supervisor_main`]
//! before any thread exists. The small binary loads in a fraction of `shoal`'s time. That process (P0) calls
//! `setsid`, forks the real supervisor (P1) and exits at once, so P1 is not the daemon's child
//! and survives a `kill -9` of it. P1 writes its start report itself on the daemon's pipe (P0's
//! stdout) and closes it; the daemon returns as soon as it has read it (it reaps P0 aside).
//!
//! P1 creates the cgroup and applies the limits, unshares a pid namespace and forks the
//! container's init. On v1 the init joins the cgroup itself, first thing (it writes "0" to
//! each hierarchy's `tasks`: moving only the calling thread spares the kernel's global lock
//! and its RCU grace period, milliseconds per `cgroup.procs` write); on v2 P1 moves it while
//! it sets up its namespaces and mounts. The init waits for the release (sync pipe) before
//! anything of the workload's. The init
//! unshares mount/uts/ipc/net namespaces, makes `/` rprivate, mounts the overlay rootfs (so the
//! mount exists only in the container's mount namespace), fills fresh volumes from the image
//! and clones the sources of its bind mounts and volumes ([`Mount`]), pivots into it, mounts
//! `/proc`, `/sys` (ro), `/dev` (tmpfs with mknod'ed null, zero, full, random, urandom, tty;
//! `/dev/pts`, `/dev/shm`), attaches the tmpfs, bind and volume mounts and the managed /etc
//! files, masks Docker's masked paths, sets the hostname, brings `lo` up, drops the capability
//! bounding set, switches user, sets the capability sets and no_new_privs, installs
//! the seccomp filter and execs (the full order is in `init.rs`, the policy in [`security`]).
//! Any failure before the exec is written as JSON over a close-on-exec pipe (`stage`, `errno`,
//! `message`), so the daemon's error says what went wrong where. P1 then relays stdout/stderr into `log.json`,
//! waits for the init, writes `exit.json` atomically and removes the cgroup: after the start
//! report it execs [`RELAY_BIN`] (`shoal-relay`, installed beside `shoal`; same pid, the init
//! stays its child) which does exactly that with a fraction of the big binary's memory, or,
//! when that file is missing or cannot be exec'd, does it in-process (see `relay.rs`). The
//! one-binary rule is about the daemon and the CLI; `shoal-relay` is an internal helper, as
//! containerd's shim is. Nothing identifies a supervisor by its executable or command line:
//! the daemon checks its pid and start time (both unchanged by the exec).
//!
//! The container's init gets `PR_SET_PDEATHSIG = SIGKILL`: a container never outlives its
//! supervisor, so a container is either supervised or gone (and then reported as lost).
//!
//! `docker exec` ([`Runtime::exec`]) re-executes the binary too, with [`EXEC_ARG`] (see
//! `exec.rs`): it joins the init's namespaces and cgroups and applies the container's security
//! policy. [`Runtime::pause`] uses the freezer (v1 `freezer` hierarchy, v2 `cgroup.freeze`);
//! [`Runtime::stats`] and [`Runtime::top`] read the cgroup files and /proc (`stats.rs`).
//!
//! # State on disk: `<root>/<dir>/`
//!
//! `config.json` ([`ContainerConfig`], written by the daemon) · `state.json` (supervisor pid and
//! start time, container pid and start time, started_at, cgroup path; written by the supervisor)
//! · `exit.json` ([`ExitStatus`]) · `log.json` (JSON lines, see [`read_log`]; rotated to
//! `log.json.1`… with [`LogOptions`]) ·
//! `supervisor.log` (the supervisor's own stderr) · `rootfs/` (the overlay mount point, empty on
//! the host), `upper/`, `work/` · `hosts`, `hostname`, `resolv.conf` (the managed /etc files,
//! bind-mounted into the container; see [`EtcFiles`] and [`Runtime::update_etc`]). `<dir>` is the container id, or for ids longer than 40 bytes
//! a 16-byte prefix plus a hash (overlay's option page limits path lengths).
//!
//! Pids are never trusted alone: the process start time recorded next to each pid is checked,
//! and signals go through pidfds, so a recycled pid is never signalled.
//!
//! # Security defaults (Docker's, see [`security`])
//! Docker's 14 default capabilities (bounding; effective/permitted for root only), a seccomp
//! deny-list at least as strict as Docker's default profile, masked and read-only /proc and
//! /sys paths, the device allow-list (v1: the devices cgroup; v2: an eBPF device program; a v1
//! host without the devices hierarchy: the seccomp filter refuses mknod of device nodes and the
//! supervisor says so in `supervisor.log`). Unlike Docker, no_new_privs is on by default
//! (`allow_new_privileges` turns it off). `privileged` turns all of it off.
//!
//! # Choices (where Docker differs or is silent)
//! - A limit of `Some(0)` means "no limit" (as Docker's `0`). Memory must be ≥ 6 MiB and CPUs
//!   ≥ 0.01 when set (Docker's minimums).
//! - An empty hostname becomes the first 12 characters of the container's directory name.
//! - `PATH` (Docker's default), `HOSTNAME` and `HOME` (from /etc/passwd, else `/`) are added to
//!   the environment when missing. The working directory is created when missing.
//! - A container whose supervisor vanished without writing `exit.json` exits with code 255 and
//!   [`ExitStatus::lost`] set (Docker reports 255 for containers it lost track of).

mod cgroup;
mod devices;
mod etc;
mod exec;
mod init;
mod log;
mod lookup;
mod mounts;
mod relay;
pub mod security;
mod stats;
mod supervisor;
mod tinit;
mod user;

use std::collections::BTreeMap;
use std::fmt;
use std::fs;
use std::io::{self, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use nix::sys::signal::Signal;
use serde::{Deserialize, Serialize};
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncReadExt, Interest};

pub use cgroup::{cpu_quota_us, Cgroup, CgroupFs, CgroupStats, CgroupVersion, CPU_PERIOD_US};
pub use etc::{
    parse_extra_host, render_hostname, render_hosts, render_resolv_conf, EtcFiles, HostEntry,
};
pub use exec::{exec_main, ExecHandle, ExecResizer, ExecSpec, ExecStream, EXEC_ARG};
pub use log::{parse_size, read_log, LogEntry, LogFollower, LogOptions, LogStream};
pub use lookup::DEFAULT_PATH;
pub use mounts::{Mount, MountKind};
pub use relay::{relay_main, RELAY_BIN};
pub use stats::{ContainerStats, ProcessInfo};
pub use supervisor::supervisor_main;
pub use user::{resolve_user, ExecUser, UserError};

/// The hidden first argument that turns the `shoal` binary into a container supervisor.
pub const SUPERVISOR_ARG: &str = "__shoal-supervise";

/// How long a start may take before the daemon gives up on it (pulling is not part of it).
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long to wait for a container to go away after SIGKILL.
const KILL_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest id kept verbatim as a directory name.
const MAX_PLAIN_DIR_NAME: usize = 40;
/// Docker's minimum memory limit.
pub const MIN_MEMORY_BYTES: u64 = 6 * 1024 * 1024;
/// 0.01 CPU: the smallest quota the kernel takes at a 100 ms period.
pub const MIN_NANO_CPUS: u64 = 10_000_000;

const CONFIG_FILE: &str = "config.json";
const STATE_FILE: &str = "state.json";
const EXIT_FILE: &str = "exit.json";
const LOG_FILE: &str = "log.json";
const SUPERVISOR_LOG: &str = "supervisor.log";

/// Resource limits. `None` and `Some(0)` both mean "no limit".
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    #[serde(default)]
    pub memory_bytes: Option<u64>,
    /// 1e9 = one CPU (Docker's `--cpus` × 1e9, the API's `NanoCPUs`).
    #[serde(default)]
    pub nano_cpus: Option<u64>,
    #[serde(default)]
    pub pids: Option<u64>,
}

impl Limits {
    pub fn memory(&self) -> Option<u64> {
        self.memory_bytes.filter(|&v| v > 0)
    }
    pub fn cpus(&self) -> Option<u64> {
        self.nano_cpus.filter(|&v| v > 0)
    }
    pub fn pids(&self) -> Option<u64> {
        self.pids.filter(|&v| v > 0)
    }
}

/// What to run. Written to `config.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerConfig {
    /// Chosen by the caller (the executor uses task ids): `[A-Za-z0-9_.-]`, 1..=128 bytes, not
    /// starting with `.` or `-`.
    pub id: String,
    /// Human name, e.g. "web.1.abc123".
    pub name: String,
    /// Image layer directories, lowest first.
    pub layers: Vec<PathBuf>,
    /// The full argv (entrypoint + cmd merged by the caller). `argv[0]` is looked up on the
    /// container's PATH.
    pub args: Vec<String>,
    /// `KEY=VALUE`.
    #[serde(default)]
    pub env: Vec<String>,
    /// `""` → `/`.
    #[serde(default)]
    pub cwd: String,
    /// `name|uid[:group|gid]`; `""` → root.
    #[serde(default)]
    pub user: String,
    /// `""` → the first 12 characters of the container's directory name.
    #[serde(default)]
    pub hostname: String,
    #[serde(default)]
    pub limits: Limits,
    /// Serialized as milliseconds.
    #[serde(with = "duration_ms", default = "default_stop_grace")]
    pub stop_grace: Duration,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,

    // Security (see [`security`]); every default is Docker's, except no_new_privs (on).
    /// Capabilities added to Docker's default set (`NET_ADMIN`, `CAP_NET_ADMIN`, `ALL`).
    #[serde(default)]
    pub cap_add: Vec<String>,
    /// Capabilities dropped from it (`ALL` drops all but the added ones).
    #[serde(default)]
    pub cap_drop: Vec<String>,
    /// Docker's `--privileged`: every capability, no seccomp filter, no masked or read-only
    /// paths, every device allowed in the device cgroup, /sys read-write.
    #[serde(default)]
    pub privileged: bool,
    /// No seccomp filter (`security_opt: [seccomp=unconfined]`).
    #[serde(default)]
    pub seccomp_unconfined: bool,
    /// Leave no_new_privs off (`security_opt: [no-new-privileges=false]`): setuid binaries and
    /// file capabilities may raise privileges again. Off by default: no_new_privs is set.
    #[serde(default)]
    pub allow_new_privileges: bool,

    // More of Docker's run options.
    /// The root filesystem is mounted read-only (`read_only: true`).
    #[serde(default)]
    pub read_only: bool,
    /// tmpfs mounts (`tmpfs:`), in order.
    #[serde(default)]
    pub tmpfs: Vec<TmpfsMount>,
    /// Size of /dev/shm in bytes; `None` → 64 MiB (Docker's default).
    #[serde(default)]
    pub shm_size: Option<u64>,
    /// Namespaced sysctls only (see [`security::sysctl_path`]).
    #[serde(default)]
    pub sysctls: BTreeMap<String, String>,
    /// Resource limits (setrlimit) of the workload.
    #[serde(default)]
    pub ulimits: Vec<Ulimit>,
    /// Extra supplementary groups (names from the image's /etc/group, or numeric gids).
    #[serde(default)]
    pub group_add: Vec<String>,
    /// The NIS domain name (`domainname:`); `""` → none.
    #[serde(default)]
    pub domainname: String,
    /// /proc/self/oom_score_adj of the workload (-1000..=1000); `None` → inherited (0).
    #[serde(default)]
    pub oom_score_adj: Option<i32>,
    /// The signal `stop` sends first (`SIGTERM`, `TERM`, `15`); `""` → SIGTERM.
    #[serde(default)]
    pub stop_signal: String,
    /// The network namespace.
    #[serde(default)]
    pub network: NetworkMode,
    /// The container whose network namespace (and /etc files) this one shares
    /// (`network_mode: container:<id>`); `""` → none. Kept so that the shared namespace's
    /// owner can stop its joiners before its address goes back (see the executor's `net`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub network_container: String,

    /// Bind mounts and volumes (`volumes:`), see [`Mount`].
    #[serde(default)]
    pub mounts: Vec<Mount>,
    /// Write /etc/hosts, /etc/hostname and /etc/resolv.conf into the state dir and bind-mount
    /// them over the image's (see [`EtcFiles`]). On by default, as in Docker.
    #[serde(default = "default_true")]
    pub manage_etc: bool,
    /// What the managed /etc files hold.
    #[serde(default)]
    pub etc: EtcFiles,
    /// A tiny init as PID 1 that forwards signals and reaps zombies (`init: true`).
    #[serde(default)]
    pub init: bool,
    /// Log rotation (`logging.options.max-size` / `max-file` of the json-file driver).
    #[serde(default)]
    pub logging: LogOptions,
}

fn default_true() -> bool {
    true
}

impl Default for ContainerConfig {
    /// An empty config (no id, layers or command: not valid as is) with every option at its
    /// default.
    fn default() -> ContainerConfig {
        ContainerConfig {
            id: String::new(),
            name: String::new(),
            layers: Vec::new(),
            args: Vec::new(),
            env: Vec::new(),
            cwd: String::new(),
            user: String::new(),
            hostname: String::new(),
            limits: Limits::default(),
            stop_grace: default_stop_grace(),
            labels: BTreeMap::new(),
            cap_add: Vec::new(),
            cap_drop: Vec::new(),
            privileged: false,
            seccomp_unconfined: false,
            allow_new_privileges: false,
            read_only: false,
            tmpfs: Vec::new(),
            shm_size: None,
            sysctls: BTreeMap::new(),
            ulimits: Vec::new(),
            group_add: Vec::new(),
            domainname: String::new(),
            oom_score_adj: None,
            stop_signal: String::new(),
            network: NetworkMode::New,
            network_container: String::new(),
            mounts: Vec::new(),
            manage_etc: true,
            etc: EtcFiles::default(),
            init: false,
            logging: LogOptions::default(),
        }
    }
}

/// A tmpfs mount of the container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TmpfsMount {
    /// Absolute path in the container.
    pub path: String,
    /// Bytes; `None` → the kernel's default (half of RAM).
    #[serde(default)]
    pub size: Option<u64>,
    /// Permission bits; `None` → 1777 (Docker's).
    #[serde(default)]
    pub mode: Option<u32>,
}

/// One resource limit (`ulimits:`). `-1` means unlimited, as in Docker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ulimit {
    /// `nofile`, `nproc`, `core`, ... (Docker's names, see [`ulimit_resource`]).
    pub name: String,
    pub soft: i64,
    pub hard: i64,
}

/// Which network namespace the container gets.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "mode", content = "path", rename_all = "snake_case")]
pub enum NetworkMode {
    /// A fresh network namespace with only `lo` (up).
    #[default]
    New,
    /// Join an existing network namespace (a file such as `/run/netns/<name>`), prepared by the
    /// networking code; `lo` is left as it is.
    Join(PathBuf),
    /// The host's network namespace (`network_mode: host`).
    Host,
}

/// The `RLIMIT_*` resource for a Docker ulimit name.
pub fn ulimit_resource(name: &str) -> Option<nix::sys::resource::Resource> {
    use nix::sys::resource::Resource;
    Some(match name {
        "as" => Resource::RLIMIT_AS,
        "core" => Resource::RLIMIT_CORE,
        "cpu" => Resource::RLIMIT_CPU,
        "data" => Resource::RLIMIT_DATA,
        "fsize" => Resource::RLIMIT_FSIZE,
        "locks" => Resource::RLIMIT_LOCKS,
        "memlock" => Resource::RLIMIT_MEMLOCK,
        "msgqueue" => Resource::RLIMIT_MSGQUEUE,
        "nice" => Resource::RLIMIT_NICE,
        "nofile" => Resource::RLIMIT_NOFILE,
        "nproc" => Resource::RLIMIT_NPROC,
        "rss" => Resource::RLIMIT_RSS,
        "rtprio" => Resource::RLIMIT_RTPRIO,
        "rttime" => Resource::RLIMIT_RTTIME,
        "sigpending" => Resource::RLIMIT_SIGPENDING,
        "stack" => Resource::RLIMIT_STACK,
        _ => return None,
    })
}

/// The signal named by a stop signal spec (`SIGTERM`, `term`, `15`); `""` → SIGTERM.
pub fn parse_signal(spec: &str) -> Result<Signal, String> {
    let s = spec.trim();
    if s.is_empty() {
        return Ok(Signal::SIGTERM);
    }
    if let Ok(n) = s.parse::<i32>() {
        return Signal::try_from(n).map_err(|_| format!("unknown signal number {n}"));
    }
    let upper = s.to_ascii_uppercase();
    let name = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    name.parse::<Signal>()
        .map_err(|_| format!("unknown signal {spec:?} (expected e.g. SIGTERM, QUIT or 15)"))
}

/// Any signal as `docker kill --signal` takes it: a name with or without `SIG` in any case
/// (`TERM`, `sigusr1`), a number 1..=64, or a real-time signal `RTMIN`, `RTMIN+3`, `RTMAX-2`
/// (`SIGRTMIN+3`). `""` → SIGKILL (Docker's default for kill).
pub fn parse_signal_number(spec: &str) -> Result<i32, String> {
    let s = spec.trim();
    if s.is_empty() {
        return Ok(libc::SIGKILL);
    }
    let bad = || {
        format!(
            "unknown signal {spec:?} (expected a name like TERM or SIGUSR1, a number 1-64, or \
             RTMIN+n)"
        )
    };
    if let Ok(n) = s.parse::<i32>() {
        return if (1..=libc::SIGRTMAX()).contains(&n) {
            Ok(n)
        } else {
            Err(bad())
        };
    }
    let upper = s.to_ascii_uppercase();
    let name = upper.strip_prefix("SIG").unwrap_or(&upper);
    let (min, max) = (libc::SIGRTMIN(), libc::SIGRTMAX());
    let rt = |base: i32, rest: &str, sign: i32| -> Result<i32, String> {
        let off: i32 = if rest.is_empty() {
            0
        } else {
            rest.parse().map_err(|_| bad())?
        };
        let n = base + sign * off;
        if (min..=max).contains(&n) {
            Ok(n)
        } else {
            Err(bad())
        }
    };
    if let Some(rest) = name.strip_prefix("RTMIN") {
        return match rest.strip_prefix('+') {
            Some(r) => rt(min, r, 1),
            None if rest.is_empty() => Ok(min),
            None => Err(bad()),
        };
    }
    if let Some(rest) = name.strip_prefix("RTMAX") {
        return match rest.strip_prefix('-') {
            Some(r) => rt(max, r, -1),
            None if rest.is_empty() => Ok(max),
            None => Err(bad()),
        };
    }
    format!("SIG{name}")
        .parse::<Signal>()
        .map(|s| s as i32)
        .map_err(|_| bad())
}

fn default_stop_grace() -> Duration {
    Duration::from_secs(10)
}

mod duration_ms {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        Ok(Duration::from_millis(u64::deserialize(d)?))
    }
}

/// How a container ended. Written to `exit.json` by the supervisor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitStatus {
    /// The exit code, or 128 + signal for a signal death (as Docker reports it).
    pub code: i32,
    /// The signal that killed the init, if any.
    #[serde(default)]
    pub signal: Option<i32>,
    /// The kernel's OOM killer killed a process of the container.
    #[serde(default)]
    pub oom_killed: bool,
    /// Unix milliseconds.
    pub finished_at: u64,
    /// The supervisor vanished without recording an exit (code is then 255, finished_at the
    /// moment this was noticed).
    #[serde(default)]
    pub lost: bool,
}

impl ExitStatus {
    fn lost() -> ExitStatus {
        ExitStatus {
            code: 255,
            signal: None,
            oom_killed: false,
            finished_at: now_ms(),
            lost: true,
        }
    }
}

/// Where a container is in its life.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "lowercase")]
pub enum ContainerStatus {
    /// Its directory exists but it has not started: a start in progress, or one that was
    /// interrupted (a daemon crash mid-start; remove it and start again).
    Created,
    /// Its supervisor is alive and its init has exec'd the workload.
    Running { pid: i32 },
    /// Exited (or lost: its supervisor vanished without recording an exit).
    Exited(ExitStatus),
}

/// A container as the runtime sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerState {
    pub id: String,
    pub name: String,
    pub labels: BTreeMap<String, String>,
    /// The supervisor's pid, once it has started.
    pub supervisor_pid: Option<i32>,
    /// The container init's pid (host view), once started.
    pub pid: Option<i32>,
    /// Unix milliseconds.
    pub started_at: Option<u64>,
    pub status: ContainerStatus,
    /// Running but frozen ([`Runtime::pause`]).
    #[serde(default)]
    pub paused: bool,
    pub config: ContainerConfig,
}

/// Where a start failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    Supervisor,
    Config,
    Cgroup,
    Namespaces,
    Rootfs,
    PivotRoot,
    Mounts,
    Hostname,
    Network,
    User,
    Cwd,
    Sysctl,
    Rlimits,
    Capabilities,
    Seccomp,
    Exec,
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Stage::Supervisor => "supervisor",
            Stage::Config => "config",
            Stage::Cgroup => "cgroup",
            Stage::Namespaces => "namespaces",
            Stage::Rootfs => "rootfs",
            Stage::PivotRoot => "pivot_root",
            Stage::Mounts => "mounts",
            Stage::Hostname => "hostname",
            Stage::Network => "network",
            Stage::User => "user",
            Stage::Cwd => "cwd",
            Stage::Sysctl => "sysctl",
            Stage::Rlimits => "rlimits",
            Stage::Capabilities => "capabilities",
            Stage::Seccomp => "seccomp",
            Stage::Exec => "exec",
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("invalid container config for {id:?}: {reason}")]
    InvalidConfig { id: String, reason: String },
    #[error("invalid runtime setup: {0}")]
    InvalidSetup(String),
    #[error("container {id:?} already exists (state dir {}); remove it first", path.display())]
    AlreadyExists { id: String, path: PathBuf },
    #[error("no such container {id:?} (no state dir under {})", root.display())]
    NotFound { id: String, root: PathBuf },
    #[error("container {id:?} is not running")]
    NotRunning { id: String },
    #[error("container {id:?} is paused, unpause it first")]
    Paused { id: String },
    #[error("exec in container {id:?} failed ({stage}): {message}")]
    ExecFailed {
        id: String,
        stage: Stage,
        errno: Option<i32>,
        message: String,
    },
    #[error("container {id:?} failed to start ({stage}): {message}")]
    StartFailed {
        id: String,
        stage: Stage,
        errno: Option<i32>,
        message: String,
    },
    #[error(
        "container {id:?}: the supervisor ({}) {what}{}",
        helper.display(),
        if log.is_empty() { String::new() } else { format!("; its log: {log}") }
    )]
    Supervisor {
        id: String,
        helper: PathBuf,
        what: String,
        log: String,
    },
    #[error("{op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cgroup {op} {}: {source}", path.display())]
    Cgroup {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cgroups: {what}")]
    CgroupUnsupported { what: String },
    #[error("corrupt state file {}: {source}; remove the container to clean up", path.display())]
    CorruptState {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("container {id:?}: {what} did not finish within {timeout:?}")]
    Timeout {
        id: String,
        what: &'static str,
        timeout: Duration,
    },
    #[error("signal {signal} to container {id:?}: {source}")]
    Signal {
        id: String,
        signal: Signal,
        #[source]
        source: io::Error,
    },
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> RuntimeError + 'a {
    move |source| RuntimeError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// What the supervisor records in `state.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct StateFile {
    pub supervisor_pid: i32,
    /// Start time (clock ticks since boot, /proc/<pid>/stat field 22) of the supervisor.
    pub supervisor_start: u64,
    /// The cgroup, relative to each hierarchy's root.
    pub cgroup: String,
    pub cgroup_version: CgroupVersion,
    pub cgroup_root: PathBuf,
    #[serde(default)]
    pub pid: Option<i32>,
    #[serde(default)]
    pub pid_start: Option<u64>,
    #[serde(default)]
    pub started_at: Option<u64>,
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Writes `path` atomically and durably: temp file, fsync, rename, fsync of the directory.
pub(crate) fn write_atomic(path: &Path, data: &[u8]) -> io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp"));
    {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
    }
    fs::rename(&tmp, path)?;
    fs::File::open(dir)?.sync_all()
}

/// Replaces `path` atomically (temp file, rename) without waiting for the disk: readers see the
/// old or the new contents, never a part. For files whose loss in a machine crash is harmless.
pub(crate) fn write_replace(path: &Path, data: &[u8]) -> io::Result<fs::File> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp"));
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(data)?;
    fs::rename(&tmp, path)?;
    Ok(f)
}

/// fsyncs a file written by [`write_replace`], then its directory and the directory's parent
/// (where a new container directory's own entry lives).
fn sync_written(file: &fs::File, dir: &Path) -> io::Result<()> {
    file.sync_all()?;
    fs::File::open(dir)?.sync_all()?;
    match dir.parent() {
        Some(parent) => fs::File::open(parent)?.sync_all(),
        None => Ok(()),
    }
}

/// Sets `mode` unless the file already has it (a chmod that changes nothing still costs a
/// journalled inode update).
fn ensure_mode(path: &Path, meta: io::Result<fs::Metadata>, mode: u32) -> io::Result<()> {
    if meta.is_ok_and(|m| m.permissions().mode() & 0o7777 == mode) {
        return Ok(());
    }
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
}

/// Reads `<dir>/state.json`: the state (if readable) and whether the file exists but is
/// unreadable. It is written without fsync (see `supervisor::write_state`): a machine crash
/// can leave it empty, and then no process it names is alive.
fn read_state(dir: &Path) -> Result<(Option<StateFile>, bool), RuntimeError> {
    match read_json(&dir.join(STATE_FILE)) {
        Ok(st) => Ok((st, false)),
        Err(RuntimeError::CorruptState { path, source }) => {
            tracing::warn!(path = %path.display(), error = %source, "unreadable state file (a crash?): its supervisor is gone");
            Ok((None, true))
        }
        Err(e) => Err(e),
    }
}

/// Reads `<dir>/exit.json`. The supervisor fsyncs it after renaming it into place (see
/// `relay::finish`): one a machine crash left unreadable reads as a lost exit.
fn read_exit(dir: &Path) -> Result<Option<ExitStatus>, RuntimeError> {
    match read_json(&dir.join(EXIT_FILE)) {
        Err(RuntimeError::CorruptState { path, source }) => {
            tracing::warn!(path = %path.display(), error = %source, "unreadable exit file (a crash?): exit lost");
            Ok(Some(ExitStatus::lost()))
        }
        r => r,
    }
}

/// Reads a JSON file; `Ok(None)` if it does not exist.
pub(crate) fn read_json<T: serde::de::DeserializeOwned>(
    path: &Path,
) -> Result<Option<T>, RuntimeError> {
    match fs::read(path) {
        Ok(bytes) => {
            serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|source| RuntimeError::CorruptState {
                    path: path.to_path_buf(),
                    source,
                })
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_err("read", path)(e)),
    }
}

/// What `/proc/<pid>/stat` says about a process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ProcStat {
    pub state: char,
    pub ppid: i32,
    /// Clock ticks after boot (field 22).
    pub start: u64,
}

pub(crate) fn proc_stat(pid: i32) -> Option<ProcStat> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_proc_stat(&text)
}

fn parse_proc_stat(text: &str) -> Option<ProcStat> {
    // comm may contain spaces and parentheses: the fields resume after the last ')'.
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // fields[0] is field 3 (state), fields[1] field 4 (ppid), fields[19] field 22 (starttime).
    Some(ProcStat {
        state: fields.first()?.chars().next()?,
        ppid: fields.get(1)?.parse().ok()?,
        start: fields.get(19)?.parse().ok()?,
    })
}

pub(crate) fn pidfd_open(pid: i32) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_open(2) takes a pid and flags and returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned this fd to us; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

fn pidfd_send_signal(fd: &OwnedFd, signal: Signal) -> io::Result<()> {
    pidfd_send_signo(fd, signal as libc::c_int)
}

fn pidfd_send_signo(fd: &OwnedFd, signo: libc::c_int) -> io::Result<()> {
    // SAFETY: pidfd_send_signal(2) with a valid pidfd, no siginfo, no flags.
    let r = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            fd.as_raw_fd(),
            signo,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// How a pid is known to still be the process we mean.
#[derive(Debug, Clone, Copy)]
enum Identity {
    /// It started at this time.
    StartedAt(u64),
    /// Its parent is this pid (a container init whose start time could not be read).
    ChildOf(i32),
}

/// A pidfd for `pid` if it is still the process `identity` describes and has not exited.
fn pidfd_verified(pid: i32, identity: Identity) -> Option<OwnedFd> {
    if pid <= 0 {
        return None;
    }
    let fd = pidfd_open(pid).ok()?;
    // The pidfd pins the process: if /proc shows the expected identity now, the fd refers to
    // it. A zombie has exited (nobody may be reaping it: it is not our child).
    let st = proc_stat(pid)?;
    let matches = match identity {
        Identity::StartedAt(start) => st.start == start,
        Identity::ChildOf(parent) => st.ppid == parent,
    };
    (matches && st.state != 'Z' && st.state != 'X').then_some(fd)
}

impl StateFile {
    /// The container's cgroup, as the supervisor recorded it.
    fn cgroup(&self) -> Box<dyn Cgroup> {
        CgroupFs::new(self.cgroup_root.clone(), self.cgroup_version).cgroup(&self.cgroup)
    }

    fn supervisor_fd(&self) -> Option<OwnedFd> {
        pidfd_verified(
            self.supervisor_pid,
            Identity::StartedAt(self.supervisor_start),
        )
    }

    fn init_fd(&self) -> Option<OwnedFd> {
        let pid = self.pid?;
        let identity = match self.pid_start {
            Some(start) => Identity::StartedAt(start),
            None => Identity::ChildOf(self.supervisor_pid),
        };
        pidfd_verified(pid, identity)
    }
}

/// Checks a config without touching the filesystem.
pub fn validate_config(c: &ContainerConfig) -> Result<(), RuntimeError> {
    let bad = |reason: String| RuntimeError::InvalidConfig {
        id: c.id.clone(),
        reason,
    };
    validate_id(&c.id).map_err(bad)?;
    if c.args.is_empty() || c.args[0].is_empty() {
        return Err(bad(
            "no command: args is empty (set an entrypoint or a command)".into(),
        ));
    }
    if let Some(a) = c.args.iter().find(|a| a.contains('\0')) {
        return Err(bad(format!("argument {a:?} contains a NUL byte")));
    }
    for kv in &c.env {
        match kv.split_once('=') {
            Some((k, _)) if !k.is_empty() && !kv.contains('\0') => {}
            _ => return Err(bad(format!("environment entry {kv:?} is not KEY=VALUE"))),
        }
    }
    if c.layers.is_empty() {
        return Err(bad("the image has no layers".into()));
    }
    for l in &c.layers {
        let s = l.to_string_lossy();
        if !l.is_absolute() {
            return Err(bad(format!("layer path {s:?} is not absolute")));
        }
        if s.contains([',', ':', '\\', '\0']) || l.to_str().is_none() {
            return Err(bad(format!(
                "layer path {s:?} contains a character overlayfs options cannot carry (, : \\)"
            )));
        }
    }
    if !c.cwd.is_empty() && (!c.cwd.starts_with('/') || c.cwd.contains('\0')) {
        return Err(bad(format!(
            "working directory {:?} is not an absolute path",
            c.cwd
        )));
    }
    if c.hostname.len() > 64
        || !c
            .hostname
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_')
    {
        return Err(bad(format!(
            "hostname {:?} must be at most 64 letters, digits, '-', '.' or '_'",
            c.hostname
        )));
    }
    user::validate_spec(&c.user).map_err(|e| bad(e.to_string()))?;
    if let Some(m) = c.limits.memory() {
        if m < MIN_MEMORY_BYTES {
            return Err(bad(format!(
                "memory limit {m} bytes is below the minimum of 6 MiB"
            )));
        }
    }
    if let Some(n) = c.limits.cpus() {
        if n < MIN_NANO_CPUS {
            return Err(bad(format!(
                "CPU limit {n} nano-CPUs is below the minimum of 0.01 CPU (10000000)"
            )));
        }
    }
    validate_options(c).map_err(bad)
}

/// The security and run options of a config (see [`validate_config`]).
fn validate_options(c: &ContainerConfig) -> Result<(), String> {
    security::capability_mask(&c.cap_add, &c.cap_drop, c.privileged)?;
    let abs_path = |what: &str, p: &str| -> Result<(), String> {
        if !p.starts_with('/')
            || p.contains('\0')
            || Path::new(p)
                .components()
                .any(|x| matches!(x, std::path::Component::ParentDir))
        {
            return Err(format!("{what} {p:?} is not an absolute path without '..'"));
        }
        Ok(())
    };
    for t in &c.tmpfs {
        abs_path("tmpfs mount", &t.path)?;
        if t.path == "/" {
            return Err("a tmpfs mount cannot replace the root filesystem".into());
        }
        if let Some(m) = t.mode {
            if m > 0o7777 {
                return Err(format!(
                    "tmpfs mode {m:o} of {:?} is not a permission mode",
                    t.path
                ));
            }
        }
    }
    if c.shm_size == Some(0) {
        return Err("shm_size must be positive (leave it unset for 64 MiB)".into());
    }
    let own_netns = !matches!(c.network, NetworkMode::Host);
    for (k, v) in &c.sysctls {
        security::sysctl_path(k, own_netns)?;
        if v.contains(['\0', '\n']) {
            return Err(format!(
                "sysctl {k:?} has a value with a newline or NUL byte"
            ));
        }
    }
    let mut seen = std::collections::BTreeSet::new();
    for u in &c.ulimits {
        if ulimit_resource(&u.name).is_none() {
            return Err(format!(
                "unknown ulimit {:?} (expected one of as, core, cpu, data, fsize, locks, memlock, \
                 msgqueue, nice, nofile, nproc, rss, rtprio, rttime, sigpending, stack)",
                u.name
            ));
        }
        if !seen.insert(u.name.as_str()) {
            return Err(format!("ulimit {:?} is given twice", u.name));
        }
        let lim = |v: i64| if v < 0 { u64::MAX } else { v as u64 };
        if u.soft < -1 || u.hard < -1 || lim(u.soft) > lim(u.hard) {
            return Err(format!(
                "ulimit {:?}: soft {} must not exceed hard {} (-1 = unlimited)",
                u.name, u.soft, u.hard
            ));
        }
    }
    for g in &c.group_add {
        if g.is_empty() || g.contains([':', '\0', '\n']) {
            return Err(format!("group_add entry {g:?} is not a group name or gid"));
        }
    }
    if c.domainname.len() > 64
        || !c
            .domainname
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_')
    {
        return Err(format!(
            "domainname {:?} must be at most 64 letters, digits, '-', '.' or '_'",
            c.domainname
        ));
    }
    if let Some(adj) = c.oom_score_adj {
        if !(-1000..=1000).contains(&adj) {
            return Err(format!("oom_score_adj {adj} is outside -1000..=1000"));
        }
    }
    parse_signal(&c.stop_signal)?;
    c.logging.validate()?;
    mounts::validate_mounts(c)?;
    etc::validate(&c.etc)?;
    if let NetworkMode::Join(p) = &c.network {
        if !p.is_absolute() {
            return Err(format!(
                "network namespace path {} is not absolute",
                p.display()
            ));
        }
    }
    Ok(())
}

fn validate_id(id: &str) -> Result<(), String> {
    if id.is_empty() || id.len() > 128 {
        return Err(format!("container id {id:?} must be 1 to 128 bytes long"));
    }
    if id.starts_with(['.', '-'])
        || !id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.' || b == b'-')
    {
        return Err(format!(
            "container id {id:?} may only hold letters, digits, '_', '.', '-' and must not \
             start with '.' or '-'"
        ));
    }
    Ok(())
}

/// The state directory name of an id (valid ids only): the id itself when short, else a
/// prefix and a hash, to keep overlay's upperdir/workdir paths short.
fn dir_name(id: &str) -> String {
    if id.len() <= MAX_PLAIN_DIR_NAME {
        return id.to_string();
    }
    use sha2::Digest;
    let digest = sha2::Sha256::digest(id.as_bytes());
    let prefix: String = id.chars().take(16).collect();
    format!("{prefix}-{}", &hex::encode(digest)[..16])
}

/// The container runtime of one node.
#[derive(Debug)]
pub struct Runtime {
    root: PathBuf,
    /// The `shoal` binary (`exec` runs it as its helper).
    helper: PathBuf,
    /// What supervises a container: [`RELAY_BIN`] beside `helper` when it is installed (it
    /// loads in a fraction of `shoal`'s time), else `helper` itself.
    supervisor: PathBuf,
    cgroup_parent: String,
    cgroups: CgroupFs,
}

impl Runtime {
    /// `root`: the runtime's state dir (e.g. /var/lib/shoal/containers); made if missing.
    /// `helper`: the `shoal` binary to re-exec as the supervisor. `cgroup_parent`: the cgroup
    /// below each hierarchy's root that holds the containers' cgroups, e.g. "shoal".
    pub fn new(
        root: PathBuf,
        helper: PathBuf,
        cgroup_parent: String,
    ) -> Result<Runtime, RuntimeError> {
        Runtime::with_cgroups(root, helper, cgroup_parent, CgroupFs::host())
    }

    /// As [`Runtime::new`], on the given cgroup filesystem instead of the host's detected one
    /// (e.g. the `unified` v2 tree of a hybrid host, for tests).
    pub fn with_cgroups(
        root: PathBuf,
        helper: PathBuf,
        cgroup_parent: String,
        cgroups: CgroupFs,
    ) -> Result<Runtime, RuntimeError> {
        if cgroup_parent.is_empty()
            || cgroup_parent.starts_with('/')
            || cgroup_parent
                .split('/')
                .any(|p| p.is_empty() || p == "." || p == "..")
            || !cgroup_parent
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_.-/".contains(&b))
        {
            return Err(RuntimeError::InvalidSetup(format!(
                "cgroup parent {cgroup_parent:?} must be a relative path of letters, digits, \
                 '_', '.', '-' (e.g. \"shoal\")"
            )));
        }
        if !helper.is_file() {
            return Err(RuntimeError::InvalidSetup(format!(
                "the supervisor helper {} is not a file (pass the path of the shoal binary)",
                helper.display()
            )));
        }
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&root)
            .map_err(io_err("create runtime root", &root))?;
        let root = fs::canonicalize(&root).map_err(io_err("resolve runtime root", &root))?;
        let s = root.to_string_lossy();
        if s.contains([',', ':', '\\']) || root.to_str().is_none() {
            return Err(RuntimeError::InvalidSetup(format!(
                "runtime root {s:?} contains a character overlayfs options cannot carry (, : \\)"
            )));
        }
        // Containers whose removal a previous daemon did not finish.
        let trash: Vec<PathBuf> = fs::read_dir(&root)
            .map(|d| {
                d.flatten()
                    .filter(|e| e.file_name().as_encoded_bytes().starts_with(b".trash-"))
                    .map(|e| e.path())
                    .collect()
            })
            .unwrap_or_default();
        if !trash.is_empty() {
            delete_in_background(trash);
        }
        let relay = helper.with_file_name(RELAY_BIN);
        let supervisor = if relay.is_file() {
            relay
        } else {
            helper.clone()
        };
        Ok(Runtime {
            root,
            helper,
            supervisor,
            cgroup_parent,
            cgroups,
        })
    }

    pub fn cgroup_version(&self) -> CgroupVersion {
        self.cgroups.version()
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn dir_of(&self, id: &str) -> Result<PathBuf, RuntimeError> {
        validate_id(id).map_err(|reason| RuntimeError::InvalidConfig {
            id: id.to_string(),
            reason,
        })?;
        Ok(self.root.join(dir_name(id)))
    }

    fn default_cgroup_rel(&self, id: &str) -> String {
        format!("{}/{}", self.cgroup_parent, dir_name(id))
    }

    /// Creates the container's state and starts it; returns once its process has exec'd the
    /// workload (or with the error that prevented it, leaving nothing behind).
    pub async fn create_and_start(
        &self,
        config: ContainerConfig,
    ) -> Result<ContainerState, RuntimeError> {
        validate_config(&config)?;
        for l in &config.layers {
            if !l.is_dir() {
                return Err(RuntimeError::InvalidConfig {
                    id: config.id.clone(),
                    reason: format!("layer directory {} does not exist", l.display()),
                });
            }
        }
        let missing =
            mounts::check_sources(&config).map_err(|reason| RuntimeError::InvalidConfig {
                id: config.id.clone(),
                reason,
            })?;
        let id = config.id.clone();
        let dir = self.dir_of(&id)?;
        if dir.exists() {
            return Err(RuntimeError::AlreadyExists { id, path: dir });
        }
        // The short `-v /host:/ctr` syntax makes a missing host directory (as Docker does).
        for p in missing {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o755)
                .create(&p)
                .map_err(io_err("create bind source", &p))?;
        }
        match fs::DirBuilder::new().mode(0o700).create(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                return Err(RuntimeError::AlreadyExists { id, path: dir })
            }
            Err(e) => return Err(io_err("create container dir", &dir)(e)),
        }
        let cgroup_rel = self.default_cgroup_rel(&id);
        match self
            .spawn_supervisor(&config, &dir, &cgroup_rel, false)
            .await
        {
            Ok(()) => self.state(&id),
            Err(e) => {
                self.discard(&dir, &cgroup_rel);
                Err(e)
            }
        }
    }

    /// Removes what a failed start left (the supervisor has already exited).
    fn discard(&self, dir: &Path, cgroup_rel: &str) {
        if let Err(e) = self.cgroups.cgroup(cgroup_rel).remove() {
            tracing::warn!(error = %e, "removing the cgroup of a failed start");
        }
        if let Err(e) = fs::remove_dir_all(dir) {
            if e.kind() != io::ErrorKind::NotFound {
                tracing::warn!(dir = %dir.display(), error = %e, "removing the state dir of a failed start");
            }
        }
    }

    /// Starts an exited container again (`docker start`): the same config and filesystem (its
    /// upper dir and managed /etc files are kept), a new supervisor and process; its log goes
    /// on. Returns once the process has exec'd. Nothing happens to a running container. If the
    /// start fails, the container stays exited (code 128) and the error says why.
    pub async fn start_existing(&self, id: &str) -> Result<ContainerState, RuntimeError> {
        let state = self.state(id)?;
        match &state.status {
            ContainerStatus::Running { .. } => return Ok(state),
            ContainerStatus::Created if state.supervisor_pid.is_none() => {}
            ContainerStatus::Created => {
                // A supervisor that is still starting it, or one that died mid-start.
                let dir = self.dir_of(id)?;
                let st: Option<StateFile> = read_json(&dir.join(STATE_FILE))?;
                if st.and_then(|s| s.supervisor_fd()).is_some() {
                    return Err(RuntimeError::InvalidConfig {
                        id: id.to_string(),
                        reason: "it is still starting".into(),
                    });
                }
            }
            ContainerStatus::Exited(_) => {}
        }
        // Its old supervisor writes exit.json just before it ends: let it end.
        self.wait(id).await?;
        let dir = self.dir_of(id)?;
        for file in [EXIT_FILE, STATE_FILE] {
            let p = dir.join(file);
            match fs::remove_file(&p) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err("remove", &p)(e)),
            }
        }
        let cgroup_rel = self.default_cgroup_rel(id);
        // A lost supervisor may have left its cgroup.
        let _ = self.cgroups.cgroup(&cgroup_rel).remove();
        match self
            .spawn_supervisor(&state.config, &dir, &cgroup_rel, true)
            .await
        {
            Ok(()) => self.state(id),
            Err(e) => {
                if let Err(e) = self.cgroups.cgroup(&cgroup_rel).remove() {
                    tracing::warn!(error = %e, "removing the cgroup of a failed restart");
                }
                let _ = fs::remove_file(dir.join(STATE_FILE));
                let exit = ExitStatus {
                    code: 128,
                    signal: None,
                    oom_killed: false,
                    finished_at: now_ms(),
                    lost: false,
                };
                if let Ok(data) = serde_json::to_vec(&exit) {
                    let _ = write_atomic(&dir.join(EXIT_FILE), &data);
                }
                Err(e)
            }
        }
    }

    /// `existing`: a restart in the container's dir (its subdirs and /etc files are kept).
    async fn spawn_supervisor(
        &self,
        config: &ContainerConfig,
        dir: &Path,
        cgroup_rel: &str,
        existing: bool,
    ) -> Result<(), RuntimeError> {
        let id = &config.id;
        for sub in ["rootfs", "upper", "work"] {
            let p = dir.join(sub);
            if existing && p.is_dir() {
                continue;
            }
            fs::DirBuilder::new()
                .mode(0o755)
                .create(&p)
                .map_err(io_err("create", &p))?;
            // Not left to the daemon's umask: the container's "/" takes the upper dir's mode.
            ensure_mode(&p, fs::metadata(&p), 0o755).map_err(io_err("chmod", &p))?;
        }
        if config.manage_etc && !(existing && dir.join("hostname").exists()) {
            write_etc_files(config, dir)?;
        }
        let json = serde_json::to_vec_pretty(config).map_err(|e| RuntimeError::InvalidConfig {
            id: id.clone(),
            reason: format!("cannot encode config: {e}"),
        })?;
        // Written (renamed into place) before the supervisor reads it; made durable on a
        // blocking thread while the supervisor starts, and awaited before this returns.
        let config_path = dir.join(CONFIG_FILE);
        let config_file =
            write_replace(&config_path, &json).map_err(io_err("write", &config_path))?;
        let sync_dir = dir.to_path_buf();
        let sync = tokio::task::spawn_blocking(move || sync_written(&config_file, &sync_dir));
        let log_path = dir.join(SUPERVISOR_LOG);
        let log = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&log_path)
            .map_err(io_err("create", &log_path))?;
        let _ = ensure_mode(&log_path, log.metadata(), 0o600);

        let spawned = tokio::process::Command::new(&self.supervisor)
            .arg(SUPERVISOR_ARG)
            .arg(dir)
            .arg(self.cgroups.version().to_string())
            .arg(self.cgroups.root())
            .arg(cgroup_rel)
            .env_clear()
            .env("RUST_BACKTRACE", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .spawn();
        let started = match spawned {
            Ok(child) => self.read_start_report(id, dir, child).await,
            Err(e) => Err(RuntimeError::Supervisor {
                id: id.clone(),
                helper: self.supervisor.clone(),
                what: format!("could not be spawned: {e}"),
                log: String::new(),
            }),
        };
        let synced = match sync.await {
            Ok(r) => r.map_err(io_err("fsync", &config_path)),
            Err(e) => Err(io_err("fsync", &config_path)(io::Error::other(
                e.to_string(),
            ))),
        };
        match (started, synced) {
            (Err(e), _) => Err(e),
            (Ok(()), Ok(())) => Ok(()),
            (Ok(()), Err(e)) => {
                // Started, but its config is not durable: undo the start.
                let _ = self.kill_all_of(dir).await;
                Err(e)
            }
        }
    }

    /// Reads the supervisor's start report: one JSON line the supervisor (P1) writes on the
    /// pipe that is the first process's stdout. The pipe reaches EOF once P1 has reported a
    /// start, or once it has exited after reporting a failure.
    async fn read_start_report(
        &self,
        id: &str,
        dir: &Path,
        mut child: tokio::process::Child,
    ) -> Result<(), RuntimeError> {
        let log_path = dir.join(SUPERVISOR_LOG);
        let mut report = Vec::new();
        let read = match child.stdout.take() {
            Some(mut out) => {
                tokio::time::timeout(START_TIMEOUT, out.read_to_end(&mut report)).await
            }
            None => Ok(Ok(0)),
        };
        if read.is_err() {
            let _ = child.start_kill();
            let _ = child.wait().await;
            // Kill whatever the supervisor started; `remove` reads its state.json.
            let _ = self.kill_all_of(dir).await;
            return Err(RuntimeError::Timeout {
                id: id.to_string(),
                what: "start",
                timeout: START_TIMEOUT,
            });
        }
        let parsed = serde_json::from_slice::<supervisor::StartReport>(report.trim_ascii());
        // The first process exits right after its fork: reap it, without waiting for it when
        // it is not gone yet (no zombie is left either way).
        let status = match (&parsed, child.try_wait()) {
            (Ok(_), Ok(None)) => {
                tokio::spawn(async move {
                    let _ = child.wait().await;
                });
                None
            }
            (Ok(_), Ok(Some(s))) => Some(Ok(s)),
            (Err(_), _) => Some(child.wait().await),
            (Ok(_), Err(e)) => Some(Err(e)),
        };
        let supervisor_log = || {
            let text = fs::read_to_string(&log_path).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            lines[lines.len().saturating_sub(5)..].join(" | ")
        };
        match parsed {
            Ok(supervisor::StartReport::Started { .. }) => Ok(()),
            Ok(supervisor::StartReport::Failed {
                stage,
                errno,
                message,
            }) => Err(RuntimeError::StartFailed {
                id: id.to_string(),
                stage,
                errno,
                message,
            }),
            Err(_) => Err(RuntimeError::Supervisor {
                id: id.to_string(),
                helper: self.supervisor.clone(),
                what: format!(
                    "exited ({}) without reporting the start (is it the shoal binary?)",
                    match status {
                        Some(Ok(s)) => s.to_string(),
                        Some(Err(e)) => e.to_string(),
                        None => "still running".to_string(),
                    }
                ),
                log: supervisor_log(),
            }),
        }
    }

    /// The container's state, from its files and the liveness of its supervisor.
    pub fn state(&self, id: &str) -> Result<ContainerState, RuntimeError> {
        let dir = self.dir_of(id)?;
        let config: ContainerConfig = match read_json(&dir.join(CONFIG_FILE))? {
            Some(c) => c,
            None => {
                return Err(RuntimeError::NotFound {
                    id: id.to_string(),
                    root: self.root.clone(),
                })
            }
        };
        if config.id != id {
            return Err(RuntimeError::NotFound {
                id: id.to_string(),
                root: self.root.clone(),
            });
        }
        self.state_of(&dir, config)
    }

    fn state_of(
        &self,
        dir: &Path,
        config: ContainerConfig,
    ) -> Result<ContainerState, RuntimeError> {
        let (state, unreadable) = read_state(dir)?;
        let exit: Option<ExitStatus> = read_exit(dir)?;
        let status = match (&exit, &state) {
            (Some(e), _) => ContainerStatus::Exited(*e),
            // Only a machine crash leaves state.json unreadable (it is replaced by rename), and
            // then its supervisor is gone.
            (None, None) if unreadable => ContainerStatus::Exited(ExitStatus::lost()),
            (None, None) => ContainerStatus::Created,
            (None, Some(st)) => {
                if st.supervisor_fd().is_some() {
                    match st.pid {
                        Some(pid) => ContainerStatus::Running { pid },
                        None => ContainerStatus::Created,
                    }
                } else if st.pid.is_none() {
                    // The supervisor died before the init started.
                    ContainerStatus::Created
                } else {
                    // It may have written exit.json just now.
                    match read_exit(dir)? {
                        Some(e) => ContainerStatus::Exited(e),
                        None => ContainerStatus::Exited(ExitStatus::lost()),
                    }
                }
            }
        };
        let paused = match (&status, &state) {
            (ContainerStatus::Running { .. }, Some(st)) => st.cgroup().frozen(),
            _ => false,
        };
        Ok(ContainerState {
            id: config.id.clone(),
            name: config.name.clone(),
            labels: config.labels.clone(),
            supervisor_pid: state.as_ref().map(|s| s.supervisor_pid),
            pid: state.as_ref().and_then(|s| s.pid),
            started_at: state.as_ref().and_then(|s| s.started_at),
            status,
            paused,
            config,
        })
    }

    /// Every container directory under the root (for re-adoption after a restart). Directories
    /// that cannot be read are skipped with a warning.
    pub fn list(&self) -> Result<Vec<ContainerState>, RuntimeError> {
        let mut out = Vec::new();
        let entries = fs::read_dir(&self.root).map_err(io_err("list", &self.root))?;
        for entry in entries {
            let entry = entry.map_err(io_err("list", &self.root))?;
            let dir = entry.path();
            // `.trash-*`: containers being deleted (ids never start with '.').
            if entry.file_name().as_encoded_bytes().starts_with(b".") || !dir.is_dir() {
                continue;
            }
            let config = match read_json::<ContainerConfig>(&dir.join(CONFIG_FILE)) {
                Ok(Some(c)) => c,
                Ok(None) => {
                    tracing::warn!(dir = %dir.display(), "container dir without config.json, skipped");
                    continue;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "unreadable container dir, skipped");
                    continue;
                }
            };
            match self.state_of(&dir, config) {
                Ok(s) => out.push(s),
                Err(e) => tracing::warn!(error = %e, "unreadable container state, skipped"),
            }
        }
        out.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(out)
    }

    /// Resolves once the container has exited, with its exit status. Works for containers this
    /// runtime did not start (adopted after a restart): it waits on the supervisor through a
    /// pidfd, then reads `exit.json`.
    pub async fn wait(&self, id: &str) -> Result<ExitStatus, RuntimeError> {
        let dir = self.dir_of(id)?;
        if !dir.join(CONFIG_FILE).exists() {
            return Err(RuntimeError::NotFound {
                id: id.to_string(),
                root: self.root.clone(),
            });
        }
        if let (Some(st), _) = read_state(&dir)? {
            if let Some(fd) = st.supervisor_fd() {
                wait_pidfd(fd)
                    .await
                    .map_err(io_err("wait for supervisor", &dir))?;
            }
        }
        Ok(read_exit(&dir)?.unwrap_or_else(ExitStatus::lost))
    }

    /// Sends `signal` to the container's init. A paused container is thawed after a SIGKILL
    /// (so that it dies, as Docker does); other signals stay pending until it is unpaused.
    pub fn kill(&self, id: &str, signal: Signal) -> Result<(), RuntimeError> {
        self.kill_signal_number(id, signal as i32)
    }

    /// [`Runtime::kill`] with any signal number (1..=64, real-time signals included; see
    /// [`parse_signal_number`]).
    pub fn kill_signal_number(&self, id: &str, signo: i32) -> Result<(), RuntimeError> {
        let dir = self.dir_of(id)?;
        let not_running = || RuntimeError::NotRunning { id: id.to_string() };
        let st: StateFile = read_json(&dir.join(STATE_FILE))?.ok_or_else(not_running)?;
        let fd = st.init_fd().ok_or_else(not_running)?;
        pidfd_send_signo(&fd, signo).map_err(|source| {
            if source.raw_os_error() == Some(libc::ESRCH) {
                not_running()
            } else {
                RuntimeError::Signal {
                    id: id.to_string(),
                    signal: Signal::try_from(signo).unwrap_or(Signal::SIGKILL),
                    source,
                }
            }
        })?;
        if signo == libc::SIGKILL {
            let cgroup = st.cgroup();
            if cgroup.frozen() {
                cgroup.freeze(false)?;
            }
        }
        Ok(())
    }

    /// Freezes every process of the container (`docker pause`): cgroup v1 `freezer.state`,
    /// v2 `cgroup.freeze`; returns once the kernel reports the cgroup frozen. Pausing a paused
    /// container is fine.
    pub fn pause(&self, id: &str) -> Result<(), RuntimeError> {
        self.running_cgroup(id)?.freeze(true)
    }

    /// Thaws a paused container (`docker unpause`); fine on one that is not paused.
    pub fn unpause(&self, id: &str) -> Result<(), RuntimeError> {
        let cgroup = self.running_cgroup(id)?;
        if cgroup.frozen() {
            cgroup.freeze(false)?;
        }
        Ok(())
    }

    /// The cgroup of a running container.
    fn running_cgroup(&self, id: &str) -> Result<Box<dyn Cgroup>, RuntimeError> {
        let state = self.state(id)?;
        if !matches!(state.status, ContainerStatus::Running { .. }) {
            return Err(RuntimeError::NotRunning { id: id.to_string() });
        }
        let dir = self.dir_of(id)?;
        let st: StateFile = read_json(&dir.join(STATE_FILE))?
            .ok_or_else(|| RuntimeError::NotRunning { id: id.to_string() })?;
        Ok(st.cgroup())
    }

    /// The config's stop signal (SIGTERM by default), up to `grace` for the container to exit,
    /// then SIGKILL. Fine on a container that is not running. Note: an init (PID 1) ignores
    /// SIGTERM unless it handles it (with `init: true` the workload is not PID 1, and the init
    /// forwards the signal to it).
    pub async fn stop(&self, id: &str, grace: Duration) -> Result<(), RuntimeError> {
        let state = self.state(id)?;
        if !matches!(state.status, ContainerStatus::Running { .. }) {
            return Ok(());
        }
        if state.paused {
            // Thawed first, as Docker does: a frozen process cannot act on the stop signal.
            match self.unpause(id) {
                Ok(()) | Err(RuntimeError::NotRunning { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        let signal = parse_signal(&state.config.stop_signal).unwrap_or(Signal::SIGTERM);
        match self.kill(id, signal) {
            Ok(()) => {}
            Err(RuntimeError::NotRunning { .. }) => return self.wait(id).await.map(drop),
            Err(e) => return Err(e),
        }
        if !grace.is_zero() {
            if let Ok(r) = tokio::time::timeout(grace, self.wait(id)).await {
                return r.map(drop);
            }
        }
        match self.kill(id, Signal::SIGKILL) {
            Ok(()) | Err(RuntimeError::NotRunning { .. }) => {}
            Err(e) => return Err(e),
        }
        match tokio::time::timeout(KILL_TIMEOUT, self.wait(id)).await {
            Ok(r) => r.map(drop),
            Err(_) => Err(RuntimeError::Timeout {
                id: id.to_string(),
                what: "stop (after SIGKILL)",
                timeout: KILL_TIMEOUT,
            }),
        }
    }

    /// Kills the container if it still runs, waits for its supervisor, kills its supervisor if
    /// need be; returns the cgroup path of the container.
    async fn kill_all_of(&self, dir: &Path) -> Result<Option<StateFile>, RuntimeError> {
        let st: Option<StateFile> = read_json(&dir.join(STATE_FILE)).unwrap_or(None);
        let Some(s) = &st else { return Ok(None) };
        let Some(sup) = s.supervisor_fd() else {
            return Ok(st);
        };
        if s.pid.is_some() {
            if let Some(fd) = s.init_fd() {
                let _ = pidfd_send_signal(&fd, Signal::SIGKILL);
            }
            // A frozen (v1) process does not die before it is thawed.
            let cgroup = s.cgroup();
            if cgroup.frozen() {
                if let Err(e) = cgroup.freeze(false) {
                    tracing::warn!(error = %e, "thawing a paused container to remove it");
                }
            }
        } else {
            // Still starting: stop the supervisor; its child dies with it (or with the cgroup).
            let _ = pidfd_send_signal(&sup, Signal::SIGKILL);
        }
        let sup = async_fd(sup).map_err(io_err("wait for supervisor", dir))?;
        if tokio::time::timeout(KILL_TIMEOUT, sup.readable())
            .await
            .is_err()
        {
            let _ = pidfd_send_signal(sup.get_ref(), Signal::SIGKILL);
            let _ = tokio::time::timeout(KILL_TIMEOUT, sup.readable()).await;
        }
        Ok(st)
    }

    /// Kills the container if it still runs, removes its cgroup and its whole state dir.
    /// Idempotent: removing a container that does not exist is fine.
    pub async fn remove(&self, id: &str) -> Result<(), RuntimeError> {
        let dir = self.dir_of(id)?;
        if !dir.exists() {
            return Ok(());
        }
        let st = self.kill_all_of(&dir).await?;
        let cgroup = match &st {
            Some(s) => CgroupFs::new(s.cgroup_root.clone(), s.cgroup_version).cgroup(&s.cgroup),
            None => self.cgroups.cgroup(&self.default_cgroup_rel(id)),
        };
        cgroup.remove()?;
        // One rename takes the container away at once; its files are deleted on a thread (a
        // dozen journalled unlinks that nothing needs to wait for). A daemon that dies first
        // leaves `.trash-*`, which the next `Runtime::new` deletes.
        let trash = self.root.join(format!(
            ".trash-{}-{:x}",
            dir_name(id),
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos())
        ));
        match fs::rename(&dir, &trash) {
            Ok(()) => {
                delete_in_background(vec![trash]);
                Ok(())
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(_) => match fs::remove_dir_all(&dir) {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(io_err("remove container dir", &dir)(e)),
            },
        }
    }

    /// Rewrites the managed /etc/hosts and /etc/resolv.conf of a container (running or not)
    /// from `etc`, in place: same inode, so a running container sees the change at once; and
    /// records `etc` in its config.
    pub fn update_etc(&self, id: &str, etc: EtcFiles) -> Result<(), RuntimeError> {
        let dir = self.dir_of(id)?;
        let config_path = dir.join(CONFIG_FILE);
        let mut config: ContainerConfig =
            read_json(&config_path)?.ok_or_else(|| RuntimeError::NotFound {
                id: id.to_string(),
                root: self.root.clone(),
            })?;
        etc::validate(&etc).map_err(|reason| RuntimeError::InvalidConfig {
            id: id.to_string(),
            reason,
        })?;
        if !config.manage_etc {
            return Err(RuntimeError::InvalidConfig {
                id: id.to_string(),
                reason: "its /etc files are not managed (manage_etc is off)".into(),
            });
        }
        config.etc = etc;
        let (hosts, resolv) = etc_contents(&config);
        for (file, data) in [("hosts", hosts), ("resolv.conf", resolv)] {
            let path = dir.join(file);
            let mut f = fs::OpenOptions::new()
                .write(true)
                .truncate(true)
                .open(&path)
                .map_err(io_err("rewrite", &path))?;
            f.write_all(data.as_bytes())
                .map_err(io_err("rewrite", &path))?;
        }
        let json = serde_json::to_vec_pretty(&config).map_err(|e| RuntimeError::InvalidConfig {
            id: id.to_string(),
            reason: format!("cannot encode config: {e}"),
        })?;
        write_atomic(&config_path, &json).map_err(io_err("write", &config_path))
    }

    /// The container's log file (JSON lines; see [`read_log`]).
    /// A pidfd of the container's supervisor (readable once it has exited), while it runs.
    pub fn supervisor_pidfd(&self, id: &str) -> Option<OwnedFd> {
        let dir = self.dir_of(id).ok()?;
        read_state(&dir).ok()?.0?.supervisor_fd()
    }

    pub fn log_path(&self, id: &str) -> PathBuf {
        self.root.join(dir_name(id)).join(LOG_FILE)
    }

    /// The container's state directory.
    pub fn container_dir(&self, id: &str) -> PathBuf {
        self.root.join(dir_name(id))
    }

    /// The container's memory cgroup directory.
    pub fn cgroup_path(&self, id: &str) -> PathBuf {
        self.cgroup_dir(id, "memory")
    }

    /// The container's cgroup directory for `controller` ("memory", "cpu", "pids", ...; on v2
    /// they are all the same directory).
    pub fn cgroup_dir(&self, id: &str, controller: &str) -> PathBuf {
        let recorded = read_json::<StateFile>(&self.container_dir(id).join(STATE_FILE))
            .ok()
            .flatten();
        match recorded {
            Some(s) => CgroupFs::new(s.cgroup_root, s.cgroup_version).cgroup(&s.cgroup),
            None => self.cgroups.cgroup(&self.default_cgroup_rel(id)),
        }
        .controller_dir(controller)
    }

    /// Removes this runtime's (empty) cgroup parent from every hierarchy, e.g. when a test or an
    /// uninstall is done with it.
    pub fn remove_cgroup_parent(&self) -> Result<(), RuntimeError> {
        self.cgroups.remove_dir(&self.cgroup_parent)
    }
}

/// The hostname a container gets: the config's, else the first 12 characters of its state
/// directory's name.
pub(crate) fn effective_hostname(config: &ContainerConfig, dir: &Path) -> String {
    if config.hostname.is_empty() {
        dir.file_name()
            .map(|n| n.to_string_lossy().chars().take(12).collect())
            .unwrap_or_else(|| "container".to_string())
    } else {
        config.hostname.clone()
    }
}

/// The contents of the managed /etc/hosts and /etc/resolv.conf (from the host's files where
/// they are the base).
fn etc_contents(config: &ContainerConfig) -> (String, String) {
    let host_file = |p: &str| fs::read_to_string(p).unwrap_or_default();
    let host_net = config.network == NetworkMode::Host;
    let host_hosts = host_net.then(|| host_file("/etc/hosts"));
    (
        render_hosts(&config.etc, host_hosts.as_deref()),
        render_resolv_conf(&config.etc, &host_file("/etc/resolv.conf"), !host_net),
    )
}

/// Writes `hosts`, `hostname` and `resolv.conf` into the state dir (0644: readable by any
/// user of the container).
fn write_etc_files(config: &ContainerConfig, dir: &Path) -> Result<(), RuntimeError> {
    let (hosts, resolv) = etc_contents(config);
    let hostname = render_hostname(&effective_hostname(config, dir));
    for (file, data) in [
        ("hosts", hosts),
        ("hostname", hostname),
        ("resolv.conf", resolv),
    ] {
        let path = dir.join(file);
        fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .open(&path)
            .and_then(|mut f| {
                f.write_all(data.as_bytes())?;
                ensure_mode(&path, f.metadata(), 0o644)
            })
            .map_err(io_err("write", &path))?;
    }
    Ok(())
}

/// Deletes directories on a detached thread (errors are logged).
fn delete_in_background(dirs: Vec<PathBuf>) {
    let work = move || {
        for d in dirs {
            if let Err(e) = fs::remove_dir_all(&d) {
                if e.kind() != io::ErrorKind::NotFound {
                    tracing::warn!(dir = %d.display(), error = %e, "deleting a removed container's files");
                }
            }
        }
    };
    if let Err(e) = std::thread::Builder::new()
        .name("shoal-rm".into())
        .spawn(work)
    {
        tracing::warn!(error = %e, "no thread to delete a removed container's files");
    }
}

/// Registers a pidfd with tokio: it becomes readable when the process exits.
fn async_fd(fd: OwnedFd) -> io::Result<AsyncFd<OwnedFd>> {
    // SAFETY: the OwnedFd is moved into the AsyncFd and stays open (and the same fd) until
    // the AsyncFd is dropped.
    unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) }.map_err(|e| e.into_parts().1)
}

/// Waits until the process behind the pidfd `fd` exits.
async fn wait_pidfd(fd: OwnedFd) -> io::Result<()> {
    async_fd(fd)?.readable().await.map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> ContainerConfig {
        ContainerConfig {
            id: "task-1".into(),
            name: "web.1.abc".into(),
            layers: vec!["/l/0".into(), "/l/1".into()],
            args: vec!["sh".into(), "-c".into(), "true".into()],
            env: vec!["A=1".into(), "EMPTY=".into()],
            cwd: String::new(),
            user: String::new(),
            hostname: "web-1".into(),
            limits: Limits::default(),
            stop_grace: Duration::from_millis(2500),
            labels: BTreeMap::from([("k".into(), "v".into())]),
            ..ContainerConfig::default()
        }
    }

    #[test]
    fn config_roundtrips_with_grace_as_millis() {
        let c = config();
        let json = serde_json::to_value(&c).expect("encode");
        assert_eq!(json["stop_grace"], 2500);
        let back: ContainerConfig = serde_json::from_value(json).expect("decode");
        assert_eq!(back, c);
        // Optional fields have defaults.
        let minimal: ContainerConfig =
            serde_json::from_str(r#"{"id":"a","name":"a","layers":["/x"],"args":["true"]}"#)
                .expect("minimal");
        assert_eq!(minimal.stop_grace, Duration::from_secs(10));
        assert!(minimal.env.is_empty());
    }

    fn mount(source: &str, target: &str) -> Mount {
        Mount {
            kind: MountKind::Bind,
            source: source.into(),
            target: target.into(),
            read_only: false,
            propagation: None,
            copy_up: false,
            create_host_path: false,
        }
    }

    #[test]
    fn mounts_etc_and_init_default_and_roundtrip() {
        let minimal: ContainerConfig =
            serde_json::from_str(r#"{"id":"a","name":"a","layers":["/x"],"args":["true"]}"#)
                .expect("minimal");
        assert!(minimal.manage_etc, "managed /etc files by default");
        assert!(!minimal.init && minimal.mounts.is_empty());
        let mut c = config();
        c.mounts.push(mount("/host/data", "/data"));
        let mut v = mount("/v/x/_data", "/var/lib/db");
        v.kind = MountKind::Volume;
        v.copy_up = true;
        v.read_only = true;
        v.propagation = Some("rslave".into());
        c.mounts.push(v);
        c.etc
            .hosts
            .push(HostEntry::new("10.0.0.2", &["web-1", "web"]));
        c.etc.dns_servers.push("10.0.0.1".into());
        c.init = true;
        validate_config(&c).expect("valid");
        let json = serde_json::to_value(&c).expect("encode");
        assert_eq!(json["mounts"][1]["kind"], "volume");
        let back: ContainerConfig = serde_json::from_value(json).expect("decode");
        assert_eq!(back, c);
        // A mount with only source and target is a read-write bind.
        let m: Mount = serde_json::from_str(r#"{"source":"/a","target":"/b"}"#).expect("mount");
        assert_eq!(m, mount("/a", "/b"));
    }

    #[test]
    fn validation_accepts_good_and_names_the_problem() {
        validate_config(&config()).expect("valid");
        type Mutation = Box<dyn Fn(&mut ContainerConfig)>;
        let cases: Vec<(Mutation, &str)> = vec![
            (Box::new(|c| c.id = String::new()), "1 to 128"),
            (Box::new(|c| c.id = "../x".into()), "may only hold"),
            (Box::new(|c| c.id = ".hidden".into()), "must not"),
            (Box::new(|c| c.args.clear()), "no command"),
            (Box::new(|c| c.args = vec![String::new()]), "no command"),
            (Box::new(|c| c.args.push("a\0b".into())), "NUL"),
            (Box::new(|c| c.env.push("NOVALUE".into())), "KEY=VALUE"),
            (Box::new(|c| c.env.push("=x".into())), "KEY=VALUE"),
            (Box::new(|c| c.layers.clear()), "no layers"),
            (
                Box::new(|c| c.layers.push("rel/dir".into())),
                "not absolute",
            ),
            (Box::new(|c| c.layers.push("/a:b".into())), "overlayfs"),
            (Box::new(|c| c.layers.push("/a,b".into())), "overlayfs"),
            (Box::new(|c| c.cwd = "relative".into()), "working directory"),
            (Box::new(|c| c.hostname = "has space".into()), "hostname"),
            (Box::new(|c| c.hostname = "x".repeat(65)), "hostname"),
            (Box::new(|c| c.user = ":1".into()), "invalid user"),
            (Box::new(|c| c.limits.memory_bytes = Some(1024)), "6 MiB"),
            (Box::new(|c| c.limits.nano_cpus = Some(1000)), "0.01 CPU"),
            (
                Box::new(|c| c.cap_add = vec!["NET_ADMIN".into(), "FLY".into()]),
                "unknown capability \"FLY\"",
            ),
            (
                Box::new(|c| c.cap_drop = vec!["cap_bogus".into()]),
                "unknown capability",
            ),
            (
                Box::new(|c| {
                    c.sysctls
                        .insert("vm.swappiness".into(), "1".into())
                        .map(drop)
                        .unwrap_or(())
                }),
                "namespaced",
            ),
            (
                Box::new(|c| {
                    c.network = NetworkMode::Host;
                    c.sysctls.insert("net.ipv4.ip_forward".into(), "1".into());
                }),
                "host network",
            ),
            (
                Box::new(|c| {
                    c.tmpfs.push(TmpfsMount {
                        path: "run".into(),
                        size: None,
                        mode: None,
                    })
                }),
                "absolute",
            ),
            (
                Box::new(|c| {
                    c.tmpfs.push(TmpfsMount {
                        path: "/a/../etc".into(),
                        size: None,
                        mode: None,
                    })
                }),
                "absolute",
            ),
            (
                Box::new(|c| {
                    c.ulimits.push(Ulimit {
                        name: "nofiles".into(),
                        soft: 1,
                        hard: 1,
                    })
                }),
                "unknown ulimit",
            ),
            (
                Box::new(|c| {
                    c.ulimits.push(Ulimit {
                        name: "nofile".into(),
                        soft: 10,
                        hard: 5,
                    })
                }),
                "must not exceed",
            ),
            (Box::new(|c| c.oom_score_adj = Some(1001)), "oom_score_adj"),
            (
                Box::new(|c| c.stop_signal = "SIGNOPE".into()),
                "unknown signal",
            ),
            (Box::new(|c| c.group_add.push("a:b".into())), "group_add"),
            (Box::new(|c| c.domainname = "a b".into()), "domainname"),
            (
                Box::new(|c| c.network = NetworkMode::Join("rel".into())),
                "not absolute",
            ),
            (Box::new(|c| c.shm_size = Some(0)), "shm_size"),
            (
                Box::new(|c| c.mounts.push(mount("/src", "data"))),
                "not an absolute path",
            ),
            (
                Box::new(|c| c.mounts.push(mount("/src", "/"))),
                "cannot replace the root",
            ),
            (
                Box::new(|c| c.mounts.push(mount("src", "/data"))),
                "not an absolute host path",
            ),
            (
                Box::new(|c| {
                    c.mounts.push(mount("/a", "/data"));
                    c.mounts.push(mount("/b", "/data/"));
                }),
                "duplicate mount point",
            ),
            (
                Box::new(|c| {
                    c.tmpfs.push(TmpfsMount {
                        path: "/run".into(),
                        size: None,
                        mode: None,
                    });
                    c.mounts.push(mount("/b", "/run"));
                }),
                "duplicate mount point",
            ),
            (
                Box::new(|c| {
                    let mut m = mount("/a", "/x");
                    m.propagation = Some("bogus".into());
                    c.mounts.push(m);
                }),
                "propagation",
            ),
            (
                Box::new(|c| {
                    let mut m = mount("/a", "/x");
                    m.copy_up = true;
                    c.mounts.push(m);
                }),
                "only volumes",
            ),
            (
                Box::new(|c| c.etc.dns_servers.push("dns.example".into())),
                "not an IP address",
            ),
            (
                Box::new(|c| c.etc.hosts.push(HostEntry::new("nope", &["x"]))),
                "invalid IP address",
            ),
        ];
        for (mutate, want) in cases {
            let mut c = config();
            mutate(&mut c);
            let err = validate_config(&c).expect_err(want).to_string();
            assert!(err.contains(want), "{err:?} should mention {want:?}");
        }
        // Zero limits mean "none".
        let mut c = config();
        c.limits = Limits {
            memory_bytes: Some(0),
            nano_cpus: Some(0),
            pids: Some(0),
        };
        validate_config(&c).expect("zeros are no limit");
        assert_eq!(
            (c.limits.memory(), c.limits.cpus(), c.limits.pids()),
            (None, None, None)
        );
    }

    #[test]
    fn new_options_default_like_docker_and_roundtrip() {
        let minimal: ContainerConfig =
            serde_json::from_str(r#"{"id":"a","name":"a","layers":["/x"],"args":["true"]}"#)
                .expect("minimal");
        assert_eq!(
            minimal,
            ContainerConfig {
                id: "a".into(),
                name: "a".into(),
                layers: vec!["/x".into()],
                args: vec!["true".into()],
                ..ContainerConfig::default()
            }
        );
        assert_eq!(minimal.network, NetworkMode::New);
        assert!(
            !minimal.privileged && !minimal.seccomp_unconfined && !minimal.allow_new_privileges
        );

        let mut c = config();
        c.cap_add = vec!["sys_ptrace".into()];
        c.cap_drop = vec!["ALL".into()];
        c.network = NetworkMode::Join("/run/netns/x".into());
        c.tmpfs.push(TmpfsMount {
            path: "/run".into(),
            size: Some(1 << 20),
            mode: Some(0o755),
        });
        c.ulimits.push(Ulimit {
            name: "nofile".into(),
            soft: 1024,
            hard: -1,
        });
        c.sysctls.insert("net.core.somaxconn".into(), "1024".into());
        c.stop_signal = "quit".into();
        validate_config(&c).expect("valid");
        let json = serde_json::to_value(&c).expect("encode");
        assert_eq!(json["network"]["mode"], "join");
        assert_eq!(json["network"]["path"], "/run/netns/x");
        assert_eq!(
            serde_json::to_value(NetworkMode::Host).expect("encode"),
            serde_json::json!({"mode": "host"})
        );
        let back: ContainerConfig = serde_json::from_value(json).expect("decode");
        assert_eq!(back, c);
    }

    #[test]
    fn stop_signals_parse_like_docker() {
        assert_eq!(parse_signal(""), Ok(Signal::SIGTERM));
        assert_eq!(parse_signal("SIGQUIT"), Ok(Signal::SIGQUIT));
        assert_eq!(parse_signal("int"), Ok(Signal::SIGINT));
        assert_eq!(parse_signal("9"), Ok(Signal::SIGKILL));
        assert!(parse_signal("99").is_err());
        assert!(parse_signal("SIGFOO").is_err());
    }

    #[test]
    fn any_signal_parses_like_docker_kill() {
        let rtmin = libc::SIGRTMIN();
        let rtmax = libc::SIGRTMAX();
        for (spec, want) in [
            ("", libc::SIGKILL),
            ("KILL", libc::SIGKILL),
            ("sigterm", libc::SIGTERM),
            ("SIGUSR1", libc::SIGUSR1),
            ("usr2", libc::SIGUSR2),
            ("hup", libc::SIGHUP),
            ("winch", libc::SIGWINCH),
            ("15", 15),
            ("1", 1),
            ("64", 64),
            ("RTMIN", rtmin),
            ("SIGRTMIN+3", rtmin + 3),
            ("rtmax-1", rtmax - 1),
            ("RTMAX", rtmax),
        ] {
            assert_eq!(parse_signal_number(spec), Ok(want), "{spec:?}");
        }
        for bad in [
            "0", "65", "-1", "SIGNOPE", "RTMIN+99", "RTMAX+1", "RTMIN-1", "1.5",
        ] {
            let err = parse_signal_number(bad).expect_err(bad);
            assert!(err.contains("unknown signal"), "{err}");
        }
        // Every standard name round-trips through its number.
        for s in Signal::iterator() {
            assert_eq!(parse_signal_number(s.as_str()), Ok(s as i32));
            assert_eq!(parse_signal_number(&(s as i32).to_string()), Ok(s as i32));
        }
    }

    #[test]
    fn dir_names_are_short_and_stable() {
        assert_eq!(dir_name("abc"), "abc");
        let long = "t".repeat(100);
        let d = dir_name(&long);
        assert!(d.len() <= 33, "{d}");
        assert_eq!(d, dir_name(&long));
        assert_ne!(d, dir_name(&"t".repeat(101)));
    }

    #[test]
    fn parses_proc_stat_with_odd_comm() {
        let line = "1234 (we ird) (x)) S 77 1234 1234 0 -1 4194560 100 0 0 0 0 0 0 0 20 0 1 0 987654 1000 10";
        assert_eq!(
            parse_proc_stat(line),
            Some(ProcStat {
                state: 'S',
                ppid: 77,
                start: 987654
            })
        );
        assert_eq!(parse_proc_stat("garbage"), None);
        let me = std::process::id() as i32;
        let st = proc_stat(me).expect("own stat");
        assert!(st.state == 'R' || st.state == 'S', "{}", st.state);
        assert_eq!(st.ppid, nix::unistd::getppid().as_raw());
        assert!(pidfd_verified(me, Identity::StartedAt(st.start)).is_some());
        assert!(pidfd_verified(me, Identity::StartedAt(st.start + 1)).is_none());
        assert!(pidfd_verified(me, Identity::ChildOf(st.ppid)).is_some());
        assert!(pidfd_verified(me, Identity::ChildOf(st.ppid + 1)).is_none());
    }

    #[test]
    fn exit_status_json_shape() {
        let e = ExitStatus {
            code: 137,
            signal: Some(9),
            oom_killed: true,
            finished_at: 5,
            lost: false,
        };
        let v = serde_json::to_value(e).expect("encode");
        assert_eq!(v["code"], 137);
        assert_eq!(v["signal"], 9);
        assert_eq!(v["oom_killed"], true);
        let back: ExitStatus =
            serde_json::from_str(r#"{"code":3,"finished_at":1}"#).expect("defaults");
        assert_eq!(
            (back.signal, back.oom_killed, back.lost),
            (None, false, false)
        );
    }

    #[test]
    fn atomic_write_replaces() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let p = tmp.path().join("x.json");
        write_atomic(&p, b"1").expect("write");
        write_atomic(&p, b"22").expect("rewrite");
        assert_eq!(fs::read(&p).expect("read"), b"22");
        assert_eq!(fs::read_dir(tmp.path()).expect("ls").count(), 1);
    }
}
