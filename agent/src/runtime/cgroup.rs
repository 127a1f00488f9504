//! cgroups v1 and v2 behind one interface, written over `std::fs`.
//!
//! The root of the cgroup filesystem is injectable ([`CgroupFs::new`]) so that the controllers
//! can be exercised against fixture directories in a tempdir, without root. On a real cgroupfs
//! the kernel creates the control files when a directory is made; in a fixture the test creates
//! them. Control files are therefore opened for writing without `O_CREAT`: a missing control file
//! means a missing controller, which is reported, never papered over with a regular file.
//!
//! Layout: the container's cgroup is `<parent>/<container dir name>` below each hierarchy:
//! - v1: `<root>/{memory,cpu,cpuacct,pids,devices}/<parent>/<name>` (hierarchies that are not
//!   mounted are skipped unless a limit needs them);
//! - v2: `<root>/<parent>/<name>`, with `memory cpu pids` enabled in the `cgroup.subtree_control`
//!   of every ancestor where available.
//!
//! Devices: on v1 the `devices` hierarchy gets `devices.deny a` and then the allow-list (Docker's
//! default, see `security::DEFAULT_DEVICE_RULES`). On v2 the same list becomes an eBPF program
//! (BPF_PROG_TYPE_CGROUP_DEVICE, see `devices.rs`) attached to the cgroup. A v1 host without the
//! devices hierarchy gets `false` from [`Cgroup::restrict_devices`]: the supervisor notes it in
//! its log and the init's seccomp filter refuses `mknod` of block and character devices
//! instead (the container's /dev only holds the default nodes).

use std::fmt;
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::{devices, Limits, RuntimeError};

/// The period of the CFS bandwidth controller, in µs (Docker's value).
pub const CPU_PERIOD_US: u64 = 100_000;
/// The smallest CFS quota the kernel accepts, in µs.
pub const CPU_MIN_QUOTA_US: u64 = 1_000;

/// Which cgroup hierarchy the host runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CgroupVersion {
    V1,
    V2,
}

impl fmt::Display for CgroupVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CgroupVersion::V1 => "v1",
            CgroupVersion::V2 => "v2",
        })
    }
}

impl FromStr for CgroupVersion {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "v1" => Ok(CgroupVersion::V1),
            "v2" => Ok(CgroupVersion::V2),
            other => Err(format!(
                "unknown cgroup version {other:?} (expected v1 or v2)"
            )),
        }
    }
}

/// The controllers a container cgroup is made in (v1) or enabled for (v2).
const V1_HIERARCHIES: &[&str] = &["memory", "cpu", "cpuacct", "pids", "devices", "freezer"];
const V2_CONTROLLERS: &[&str] = &["memory", "cpu", "pids"];

/// The CFS quota (µs per [`CPU_PERIOD_US`]) for a number of nano-CPUs (1e9 = one CPU).
pub fn cpu_quota_us(nano_cpus: u64) -> u64 {
    let quota = (u128::from(nano_cpus) * u128::from(CPU_PERIOD_US) / 1_000_000_000) as u64;
    quota.max(CPU_MIN_QUOTA_US)
}

/// One container's cgroup (in every hierarchy it uses).
pub trait Cgroup: fmt::Debug + Send + Sync {
    fn version(&self) -> CgroupVersion;
    /// Makes the cgroup directories (and, on v2, enables the controllers on the way down).
    fn create(&self) -> Result<(), RuntimeError>;
    /// Writes the limits. Call before any process joins.
    fn apply(&self, limits: &Limits) -> Result<(), RuntimeError>;
    /// Restricts device access to `rules` (`"c 1:3 rwm"` lines), or allows every device
    /// (`None`). Returns whether it is enforced: false when the host has no device cgroup
    /// (v1 without the devices hierarchy). Call before any process joins.
    fn restrict_devices(&self, rules: Option<&[&str]>) -> Result<bool, RuntimeError>;
    /// Moves `pid` into the cgroup (in every hierarchy).
    fn add_process(&self, pid: i32) -> Result<(), RuntimeError>;
    /// The pids in the cgroup (from the memory hierarchy on v1, or the first one present).
    fn processes(&self) -> Result<Vec<i32>, RuntimeError>;
    /// Whether the kernel OOM-killed a process of this cgroup. Best effort: false if unknown.
    fn oom_killed(&self) -> bool;
    /// The directory of `controller` ("memory", "cpu", "pids", ...). On v2 every controller
    /// lives in the one directory.
    fn controller_dir(&self, controller: &str) -> PathBuf;
    /// Kills what is left in the cgroup and removes its directories. Idempotent.
    fn remove(&self) -> Result<(), RuntimeError>;
    /// The `cgroup.procs` files a process must be written to in order to join the cgroup (one
    /// per hierarchy the cgroup exists in).
    fn procs_files(&self) -> Vec<PathBuf>;
    /// The files a single-threaded process writes "0" to in order to move itself into the
    /// cgroup: v1's `tasks` in each hierarchy. Moving only the calling thread spares the kernel
    /// the global threadgroup lock, whose RCU grace period makes a `cgroup.procs` write take
    /// milliseconds. Empty on v2 (a domain cgroup takes whole processes only):
    /// [`Cgroup::add_process`] then.
    fn self_join_files(&self) -> Vec<PathBuf>;
    /// Freezes (`true`) or thaws the cgroup and waits until the kernel reports the state
    /// reached (v1 `freezer.state`, v2 `cgroup.freeze` / `cgroup.events`).
    fn freeze(&self, frozen: bool) -> Result<(), RuntimeError>;
    /// Whether the cgroup is frozen (or freezing). False when it has no freezer.
    fn frozen(&self) -> bool;
    /// Resource usage from the control files. Fields whose file is missing are 0 / `None`.
    fn stats(&self) -> Result<CgroupStats, RuntimeError>;
}

/// What the cgroup files say about a container's resource use.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CgroupStats {
    /// CPU time of every process, ever (v1 `cpuacct.usage`, v2 `cpu.stat` usage_usec).
    pub cpu_usage_ns: u64,
    pub cpu_user_ns: u64,
    pub cpu_system_ns: u64,
    /// Memory charged to the cgroup, page cache included (v1 `memory.usage_in_bytes`, v2
    /// `memory.current`).
    pub memory_bytes: u64,
    /// `None`: no limit.
    pub memory_limit: Option<u64>,
    /// Inactive page cache (v1 `total_inactive_file`, v2 `inactive_file` of `memory.stat`):
    /// Docker's CLI shows `memory_bytes - memory_inactive_file` as the usage.
    pub memory_inactive_file: u64,
    pub pids: u64,
    /// `None`: no limit.
    pub pids_limit: Option<u64>,
}

/// How long [`Cgroup::freeze`] waits for the state to be reached.
const FREEZE_TIMEOUT: Duration = Duration::from_secs(10);

/// Reads a control file holding one number (`max` / missing → `None`).
fn read_u64(path: &Path) -> Option<u64> {
    fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// A v1 memory limit: the kernel shows "no limit" as a huge number (PAGE_COUNTER_MAX pages).
fn v1_limit(v: Option<u64>) -> Option<u64> {
    v.filter(|&n| n < (1 << 62))
}

/// A cgroup filesystem: its mount root and version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupFs {
    root: PathBuf,
    version: CgroupVersion,
}

impl CgroupFs {
    /// The host's cgroup filesystem at `/sys/fs/cgroup`, version detected.
    pub fn host() -> CgroupFs {
        CgroupFs::detect(Path::new("/sys/fs/cgroup"))
    }

    /// `cgroup.controllers` at the root → v2 (unified), else v1 (possibly hybrid, whose
    /// `unified` tree we ignore).
    pub fn detect(root: &Path) -> CgroupFs {
        let version = if root.join("cgroup.controllers").is_file() {
            CgroupVersion::V2
        } else {
            CgroupVersion::V1
        };
        CgroupFs::new(root.to_path_buf(), version)
    }

    pub fn new(root: PathBuf, version: CgroupVersion) -> CgroupFs {
        CgroupFs { root, version }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn version(&self) -> CgroupVersion {
        self.version
    }

    /// The cgroup at `rel` (e.g. "shoal/abc123") below the root of each hierarchy.
    pub fn cgroup(&self, rel: &str) -> Box<dyn Cgroup> {
        match self.version {
            CgroupVersion::V1 => Box::new(CgroupV1 {
                root: self.root.clone(),
                rel: rel.to_string(),
            }),
            CgroupVersion::V2 => Box::new(CgroupV2 {
                root: self.root.clone(),
                rel: rel.to_string(),
            }),
        }
    }

    /// Removes the (empty) directory `rel` in every hierarchy, e.g. a runtime's cgroup parent.
    /// Missing directories are fine; a non-empty one is an error.
    pub fn remove_dir(&self, rel: &str) -> Result<(), RuntimeError> {
        let dirs: Vec<PathBuf> = match self.version {
            CgroupVersion::V1 => V1_HIERARCHIES
                .iter()
                .map(|h| self.root.join(h).join(rel))
                .collect(),
            CgroupVersion::V2 => vec![self.root.join(rel)],
        };
        for dir in dirs {
            rmdir_retry(&dir)?;
        }
        Ok(())
    }
}

fn cg_err(op: &'static str, path: &Path, source: io::Error) -> RuntimeError {
    RuntimeError::Cgroup {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// Writes a control file (which must exist: no `O_CREAT`).
fn write_control(path: &Path, value: &str) -> Result<(), RuntimeError> {
    // O_TRUNC as runc does: cgroupfs ignores it, a fixture file gets replaced.
    let mut f = fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(path)
        .map_err(|e| cg_err("open control file", path, e))?;
    f.write_all(value.as_bytes())
        .map_err(|e| cg_err("write control file", path, e))
}

fn read_pids(path: &Path) -> Result<Vec<i32>, RuntimeError> {
    match fs::read_to_string(path) {
        Ok(s) => Ok(s
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(cg_err("read", path, e)),
    }
}

/// A `key value` line of a flat-keyed file (memory.events, memory.oom_control).
fn flat_key(path: &Path, key: &str) -> Option<u64> {
    let text = fs::read_to_string(path).ok()?;
    text.lines().find_map(|line| {
        let mut it = line.split_whitespace();
        if it.next()? == key {
            it.next()?.parse().ok()
        } else {
            None
        }
    })
}

fn kill_pids(pids: &[i32]) {
    for &pid in pids {
        if pid > 0 {
            // SAFETY: plain kill(2); an ESRCH for a process that just exited is fine.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
        }
    }
}

/// rmdir a cgroup directory: missing is success; EBUSY (processes still exiting) is retried for
/// up to two seconds, killing whatever `cgroup.procs` still lists.
fn rmdir_retry(dir: &Path) -> Result<(), RuntimeError> {
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        match fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) && Instant::now() < deadline => {
                kill_pids(&read_pids(&dir.join("cgroup.procs")).unwrap_or_default());
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => return Err(cg_err("remove", dir, e)),
        }
    }
}

#[derive(Debug)]
struct CgroupV1 {
    root: PathBuf,
    rel: String,
}

impl CgroupV1 {
    fn hierarchy_present(&self, h: &str) -> bool {
        self.root.join(h).join("cgroup.procs").is_file()
    }

    /// The hierarchies this cgroup lives in (those mounted).
    fn dirs(&self) -> Vec<PathBuf> {
        V1_HIERARCHIES
            .iter()
            .filter(|h| self.hierarchy_present(h))
            .map(|h| self.root.join(h).join(&self.rel))
            .collect()
    }

    /// `name` in each hierarchy the cgroup exists in.
    fn files_named(&self, name: &str) -> Vec<PathBuf> {
        self.dirs()
            .into_iter()
            .filter(|d| d.is_dir())
            .map(|d| d.join(name))
            .collect()
    }

    fn require(&self, h: &str, what: &str) -> Result<PathBuf, RuntimeError> {
        if self.hierarchy_present(h) {
            Ok(self.root.join(h).join(&self.rel))
        } else {
            Err(RuntimeError::CgroupUnsupported {
                what: format!(
                    "a {what} limit needs the cgroup v1 {h:?} hierarchy, which is not mounted at {}",
                    self.root.join(h).display()
                ),
            })
        }
    }
}

impl Cgroup for CgroupV1 {
    fn version(&self) -> CgroupVersion {
        CgroupVersion::V1
    }

    fn create(&self) -> Result<(), RuntimeError> {
        let dirs = self.dirs();
        if dirs.is_empty() {
            return Err(RuntimeError::CgroupUnsupported {
                what: format!(
                    "no cgroup v1 hierarchy (memory, cpu, cpuacct, pids, devices) is mounted \
                     under {}",
                    self.root.display()
                ),
            });
        }
        for dir in dirs {
            fs::create_dir_all(&dir).map_err(|e| cg_err("create", &dir, e))?;
        }
        Ok(())
    }

    fn apply(&self, limits: &Limits) -> Result<(), RuntimeError> {
        if let Some(bytes) = limits.memory() {
            let dir = self.require("memory", "memory")?;
            write_control(&dir.join("memory.limit_in_bytes"), &bytes.to_string())?;
        }
        if let Some(nano) = limits.cpus() {
            let dir = self.require("cpu", "CPU")?;
            write_control(&dir.join("cpu.cfs_period_us"), &CPU_PERIOD_US.to_string())?;
            write_control(
                &dir.join("cpu.cfs_quota_us"),
                &cpu_quota_us(nano).to_string(),
            )?;
        }
        if let Some(n) = limits.pids() {
            let dir = self.require("pids", "pids")?;
            write_control(&dir.join("pids.max"), &n.to_string())?;
        }
        Ok(())
    }

    fn restrict_devices(&self, rules: Option<&[&str]>) -> Result<bool, RuntimeError> {
        if !self.hierarchy_present("devices") {
            return Ok(false);
        }
        let dir = self.root.join("devices").join(&self.rel);
        match rules {
            None => write_control(&dir.join("devices.allow"), "a")?,
            Some(rules) => {
                write_control(&dir.join("devices.deny"), "a")?;
                // One rule per write: the kernel parses one per call.
                for r in rules {
                    write_control(&dir.join("devices.allow"), r)?;
                }
            }
        }
        Ok(true)
    }

    fn add_process(&self, pid: i32) -> Result<(), RuntimeError> {
        for dir in self.dirs() {
            write_control(&dir.join("cgroup.procs"), &pid.to_string())?;
        }
        Ok(())
    }

    fn processes(&self) -> Result<Vec<i32>, RuntimeError> {
        match self.dirs().first() {
            Some(dir) => read_pids(&dir.join("cgroup.procs")),
            None => Ok(Vec::new()),
        }
    }

    fn oom_killed(&self) -> bool {
        let file = self
            .root
            .join("memory")
            .join(&self.rel)
            .join("memory.oom_control");
        flat_key(&file, "oom_kill").is_some_and(|n| n > 0)
    }

    fn controller_dir(&self, controller: &str) -> PathBuf {
        self.root.join(controller).join(&self.rel)
    }

    fn remove(&self) -> Result<(), RuntimeError> {
        // A v1 frozen task does not die of SIGKILL until it is thawed.
        let freezer = self
            .root
            .join("freezer")
            .join(&self.rel)
            .join("freezer.state");
        if freezer.is_file() {
            let _ = write_control(&freezer, "THAWED");
        }
        let mut first_err = None;
        for h in V1_HIERARCHIES {
            let dir = self.root.join(h).join(&self.rel);
            if !dir.exists() {
                continue;
            }
            kill_pids(&read_pids(&dir.join("cgroup.procs")).unwrap_or_default());
            if let Err(e) = rmdir_retry(&dir) {
                first_err.get_or_insert(e);
            }
        }
        first_err.map_or(Ok(()), Err)
    }

    fn procs_files(&self) -> Vec<PathBuf> {
        self.files_named("cgroup.procs")
    }

    fn self_join_files(&self) -> Vec<PathBuf> {
        self.files_named("tasks")
    }

    fn freeze(&self, frozen: bool) -> Result<(), RuntimeError> {
        let file = self
            .root
            .join("freezer")
            .join(&self.rel)
            .join("freezer.state");
        if !file.is_file() {
            return Err(RuntimeError::CgroupUnsupported {
                what: format!(
                    "pausing needs the cgroup v1 freezer hierarchy ({} is missing)",
                    file.display()
                ),
            });
        }
        let want = if frozen { "FROZEN" } else { "THAWED" };
        let deadline = Instant::now() + FREEZE_TIMEOUT;
        loop {
            // Written again on every round, as runc does: a FREEZING cgroup can stay stuck
            // when a task was forking.
            write_control(&file, want)?;
            let state = fs::read_to_string(&file).map_err(|e| cg_err("read", &file, e))?;
            if state.trim() == want {
                return Ok(());
            }
            if Instant::now() >= deadline {
                if frozen {
                    let _ = write_control(&file, "THAWED");
                }
                return Err(RuntimeError::Cgroup {
                    op: if frozen { "freeze" } else { "thaw" },
                    path: file,
                    source: io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("still {} after {FREEZE_TIMEOUT:?}", state.trim()),
                    ),
                });
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn frozen(&self) -> bool {
        let file = self
            .root
            .join("freezer")
            .join(&self.rel)
            .join("freezer.state");
        fs::read_to_string(file).is_ok_and(|s| matches!(s.trim(), "FROZEN" | "FREEZING"))
    }

    fn stats(&self) -> Result<CgroupStats, RuntimeError> {
        let dir = |h: &str| self.root.join(h).join(&self.rel);
        if !self.dirs().iter().any(|d| d.is_dir()) {
            return Err(cg_err(
                "read stats of",
                &dir("memory"),
                io::Error::from(io::ErrorKind::NotFound),
            ));
        }
        // cpuacct.stat is in USER_HZ ticks.
        let hz = user_hz();
        let ticks = |key| flat_key(&dir("cpuacct").join("cpuacct.stat"), key).unwrap_or(0);
        let mem = dir("memory");
        Ok(CgroupStats {
            cpu_usage_ns: read_u64(&dir("cpuacct").join("cpuacct.usage")).unwrap_or(0),
            cpu_user_ns: ticks("user").saturating_mul(1_000_000_000 / hz),
            cpu_system_ns: ticks("system").saturating_mul(1_000_000_000 / hz),
            memory_bytes: read_u64(&mem.join("memory.usage_in_bytes")).unwrap_or(0),
            memory_limit: v1_limit(read_u64(&mem.join("memory.limit_in_bytes"))),
            memory_inactive_file: flat_key(&mem.join("memory.stat"), "total_inactive_file")
                .unwrap_or(0),
            pids: read_u64(&dir("pids").join("pids.current")).unwrap_or(0),
            pids_limit: read_u64(&dir("pids").join("pids.max")),
        })
    }
}

/// Clock ticks per second of /proc and cpuacct.stat.
pub(crate) fn user_hz() -> u64 {
    // SAFETY: sysconf(3) with a valid name.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if hz > 0 {
        hz as u64
    } else {
        100
    }
}

#[derive(Debug)]
struct CgroupV2 {
    root: PathBuf,
    rel: String,
}

impl CgroupV2 {
    fn dir(&self) -> PathBuf {
        self.root.join(&self.rel)
    }

    /// Enables our controllers in the `cgroup.subtree_control` of `dir` where available and
    /// not yet enabled.
    fn enable_controllers(&self, dir: &Path) -> Result<(), RuntimeError> {
        let available = fs::read_to_string(dir.join("cgroup.controllers"))
            .map_err(|e| cg_err("read", &dir.join("cgroup.controllers"), e))?;
        let control = dir.join("cgroup.subtree_control");
        let enabled = fs::read_to_string(&control).map_err(|e| cg_err("read", &control, e))?;
        let wanted: Vec<String> = V2_CONTROLLERS
            .iter()
            .filter(|c| available.split_whitespace().any(|a| a == **c))
            .filter(|c| !enabled.split_whitespace().any(|a| a == **c))
            .map(|c| format!("+{c}"))
            .collect();
        if wanted.is_empty() {
            return Ok(());
        }
        write_control(&control, &wanted.join(" "))
    }

    fn has_controller(&self, c: &str) -> bool {
        fs::read_to_string(self.dir().join("cgroup.controllers"))
            .map(|s| s.split_whitespace().any(|a| a == c))
            .unwrap_or(false)
    }

    fn require(&self, c: &str, what: &str) -> Result<PathBuf, RuntimeError> {
        if self.has_controller(c) {
            Ok(self.dir())
        } else {
            Err(RuntimeError::CgroupUnsupported {
                what: format!(
                    "a {what} limit needs the cgroup v2 {c:?} controller, which is not available \
                     in {} (check cgroup.subtree_control of its parents)",
                    self.dir().display()
                ),
            })
        }
    }
}

impl Cgroup for CgroupV2 {
    fn version(&self) -> CgroupVersion {
        CgroupVersion::V2
    }

    fn create(&self) -> Result<(), RuntimeError> {
        // Walk down from the root: enable controllers in each ancestor, then make the child.
        let mut dir = self.root.clone();
        let parts: Vec<&str> = self.rel.split('/').filter(|p| !p.is_empty()).collect();
        for part in parts {
            self.enable_controllers(&dir)?;
            dir.push(part);
            match fs::create_dir(&dir) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(cg_err("create", &dir, e)),
            }
        }
        Ok(())
    }

    fn apply(&self, limits: &Limits) -> Result<(), RuntimeError> {
        if let Some(bytes) = limits.memory() {
            let dir = self.require("memory", "memory")?;
            write_control(&dir.join("memory.max"), &bytes.to_string())?;
        }
        if let Some(nano) = limits.cpus() {
            let dir = self.require("cpu", "CPU")?;
            write_control(
                &dir.join("cpu.max"),
                &format!("{} {}", cpu_quota_us(nano), CPU_PERIOD_US),
            )?;
        }
        if let Some(n) = limits.pids() {
            let dir = self.require("pids", "pids")?;
            write_control(&dir.join("pids.max"), &n.to_string())?;
        }
        Ok(())
    }

    fn restrict_devices(&self, rules: Option<&[&str]>) -> Result<bool, RuntimeError> {
        // No program: every device is allowed (as the kernel does without one).
        let Some(rules) = rules else { return Ok(true) };
        let parsed = rules
            .iter()
            .map(|r| devices::parse_rule(r))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|what| RuntimeError::CgroupUnsupported { what })?;
        devices::attach(&self.dir(), &parsed)
            .map_err(|what| RuntimeError::CgroupUnsupported { what })?;
        Ok(true)
    }

    fn add_process(&self, pid: i32) -> Result<(), RuntimeError> {
        write_control(&self.dir().join("cgroup.procs"), &pid.to_string())
    }

    fn processes(&self) -> Result<Vec<i32>, RuntimeError> {
        read_pids(&self.dir().join("cgroup.procs"))
    }

    fn oom_killed(&self) -> bool {
        flat_key(&self.dir().join("memory.events"), "oom_kill").is_some_and(|n| n > 0)
    }

    fn controller_dir(&self, _controller: &str) -> PathBuf {
        self.dir()
    }

    fn remove(&self) -> Result<(), RuntimeError> {
        let dir = self.dir();
        if !dir.exists() {
            return Ok(());
        }
        let kill = dir.join("cgroup.kill");
        if kill.is_file() {
            let _ = write_control(&kill, "1");
        }
        kill_pids(&read_pids(&dir.join("cgroup.procs")).unwrap_or_default());
        rmdir_retry(&dir)
    }

    fn procs_files(&self) -> Vec<PathBuf> {
        vec![self.dir().join("cgroup.procs")]
    }

    fn self_join_files(&self) -> Vec<PathBuf> {
        Vec::new()
    }

    fn freeze(&self, frozen: bool) -> Result<(), RuntimeError> {
        let control = self.dir().join("cgroup.freeze");
        if !control.is_file() {
            return Err(RuntimeError::CgroupUnsupported {
                what: format!(
                    "pausing needs cgroup.freeze (Linux 5.2+), missing at {}",
                    control.display()
                ),
            });
        }
        write_control(&control, if frozen { "1" } else { "0" })?;
        let events = self.dir().join("cgroup.events");
        let want = u64::from(frozen);
        let deadline = Instant::now() + FREEZE_TIMEOUT;
        loop {
            match flat_key(&events, "frozen") {
                Some(v) if v == want => return Ok(()),
                // Kernels without the key in cgroup.events: trust the write.
                None if !events.is_file() => return Ok(()),
                _ => {}
            }
            if Instant::now() >= deadline {
                if frozen {
                    let _ = write_control(&control, "0");
                }
                return Err(RuntimeError::Cgroup {
                    op: if frozen { "freeze" } else { "thaw" },
                    path: events,
                    source: io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("the state was not reached within {FREEZE_TIMEOUT:?}"),
                    ),
                });
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn frozen(&self) -> bool {
        read_u64(&self.dir().join("cgroup.freeze")) == Some(1)
    }

    fn stats(&self) -> Result<CgroupStats, RuntimeError> {
        let dir = self.dir();
        if !dir.is_dir() {
            return Err(cg_err(
                "read stats of",
                &dir,
                io::Error::from(io::ErrorKind::NotFound),
            ));
        }
        let cpu = |key| {
            flat_key(&dir.join("cpu.stat"), key)
                .unwrap_or(0)
                .saturating_mul(1000)
        };
        Ok(CgroupStats {
            cpu_usage_ns: cpu("usage_usec"),
            cpu_user_ns: cpu("user_usec"),
            cpu_system_ns: cpu("system_usec"),
            memory_bytes: read_u64(&dir.join("memory.current")).unwrap_or(0),
            memory_limit: read_u64(&dir.join("memory.max")),
            memory_inactive_file: flat_key(&dir.join("memory.stat"), "inactive_file").unwrap_or(0),
            pids: read_u64(&dir.join("pids.current")).unwrap_or(0),
            pids_limit: read_u64(&dir.join("pids.max")),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn touch(path: &Path, content: &str) {
        fs::write(path, content).expect("write fixture file");
    }

    fn limits() -> Limits {
        Limits {
            memory_bytes: Some(64 << 20),
            nano_cpus: Some(500_000_000),
            pids: Some(42),
        }
    }

    /// A v1 fixture: each hierarchy root has a cgroup.procs file, as the kernel's would.
    fn v1_fixture(root: &Path, hierarchies: &[&str]) {
        for h in hierarchies {
            fs::create_dir_all(root.join(h)).expect("mkdir");
            touch(&root.join(h).join("cgroup.procs"), "");
        }
    }

    #[test]
    fn detects_version_from_root() {
        let tmp = tempfile::tempdir().expect("tempdir");
        assert_eq!(CgroupFs::detect(tmp.path()).version(), CgroupVersion::V1);
        touch(&tmp.path().join("cgroup.controllers"), "cpu memory pids\n");
        assert_eq!(CgroupFs::detect(tmp.path()).version(), CgroupVersion::V2);
        assert_eq!(CgroupVersion::V2.to_string(), "v2");
        assert_eq!("v1".parse::<CgroupVersion>(), Ok(CgroupVersion::V1));
        assert!("v3".parse::<CgroupVersion>().is_err());
    }

    #[test]
    fn cpu_quota_from_nano_cpus() {
        assert_eq!(cpu_quota_us(1_000_000_000), 100_000);
        assert_eq!(cpu_quota_us(500_000_000), 50_000);
        assert_eq!(cpu_quota_us(2_500_000_000), 250_000);
        assert_eq!(cpu_quota_us(1), CPU_MIN_QUOTA_US);
    }

    #[test]
    fn v1_create_apply_join_remove() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let root = tmp.path();
        v1_fixture(root, &["memory", "cpu", "cpuacct", "pids"]);
        let fs_ = CgroupFs::new(root.to_path_buf(), CgroupVersion::V1);
        let cg = fs_.cgroup("shoal/c1");
        cg.create().expect("create");
        for h in ["memory", "cpu", "cpuacct", "pids"] {
            assert!(root.join(h).join("shoal/c1").is_dir(), "{h}");
        }
        // The kernel would have made these.
        let mem = root.join("memory/shoal/c1");
        let cpu = root.join("cpu/shoal/c1");
        let pids = root.join("pids/shoal/c1");
        touch(&mem.join("memory.limit_in_bytes"), "9223372036854771712");
        touch(&cpu.join("cpu.cfs_quota_us"), "-1");
        touch(&cpu.join("cpu.cfs_period_us"), "100000");
        touch(&pids.join("pids.max"), "max");
        for h in ["memory", "cpu", "cpuacct", "pids"] {
            touch(&root.join(h).join("shoal/c1/cgroup.procs"), "");
        }
        cg.apply(&limits()).expect("apply");
        let read = |p: PathBuf| fs::read_to_string(p).expect("read");
        assert_eq!(
            read(mem.join("memory.limit_in_bytes")),
            (64u64 << 20).to_string()
        );
        assert_eq!(read(cpu.join("cpu.cfs_quota_us")), "50000");
        assert_eq!(read(cpu.join("cpu.cfs_period_us")), "100000");
        assert_eq!(read(pids.join("pids.max")), "42");
        assert_eq!(cg.controller_dir("memory"), mem);

        cg.add_process(4242).expect("join");
        for h in ["memory", "cpu", "cpuacct", "pids"] {
            assert_eq!(read(root.join(h).join("shoal/c1/cgroup.procs")), "4242");
        }
        assert!(!cg.oom_killed());
        touch(
            &mem.join("memory.oom_control"),
            "oom_kill_disable 0\nunder_oom 0\noom_kill 1\n",
        );
        assert!(cg.oom_killed());

        // Remove: the fixture dirs hold regular files, which a real cgroupfs would not.
        for h in ["memory", "cpu", "cpuacct", "pids"] {
            let d = root.join(h).join("shoal/c1");
            for entry in fs::read_dir(&d).expect("readdir") {
                fs::remove_file(entry.expect("entry").path()).expect("rm");
            }
        }
        cg.remove().expect("remove");
        cg.remove().expect("remove is idempotent");
        for h in ["memory", "cpu", "cpuacct", "pids"] {
            assert!(!root.join(h).join("shoal/c1").exists());
        }
        fs_.remove_dir("shoal").expect("remove parent");
        assert!(!root.join("memory/shoal").exists());
    }

    #[test]
    fn devices_allow_list_v1_and_v2() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let root = tmp.path();
        v1_fixture(root, &["memory", "devices"]);
        let cg = CgroupFs::new(root.to_path_buf(), CgroupVersion::V1).cgroup("p/c");
        cg.create().expect("create");
        let dir = root.join("devices/p/c");
        touch(&dir.join("devices.deny"), "");
        touch(&dir.join("devices.allow"), "");
        // A fixture file keeps only the last write: record every write through a FIFO would be
        // overkill; check the deny and the final allow line.
        assert!(cg
            .restrict_devices(Some(&["c 1:3 rwm", "c 136:* rwm"]))
            .expect("restrict"));
        assert_eq!(
            fs::read_to_string(dir.join("devices.deny")).expect("read"),
            "a"
        );
        assert_eq!(
            fs::read_to_string(dir.join("devices.allow")).expect("read"),
            "c 136:* rwm"
        );
        assert!(cg.restrict_devices(None).expect("allow all"));
        assert_eq!(
            fs::read_to_string(dir.join("devices.allow")).expect("read"),
            "a"
        );

        // No devices hierarchy: not enforced, and said so.
        let tmp2 = tempfile::tempdir().expect("tempdir");
        v1_fixture(tmp2.path(), &["memory"]);
        let cg = CgroupFs::new(tmp2.path().to_path_buf(), CgroupVersion::V1).cgroup("p/c");
        cg.create().expect("create");
        assert!(!cg
            .restrict_devices(Some(&["c 1:3 rwm"]))
            .expect("no hierarchy"));

        // v2: no program means every device; a program cannot attach to a fixture directory
        // (the real thing is tested in tests/runtime_security.rs).
        let tmp3 = tempfile::tempdir().expect("tempdir");
        touch(&tmp3.path().join("cgroup.controllers"), "memory\n");
        touch(&tmp3.path().join("cgroup.subtree_control"), "");
        let v2 = CgroupFs::detect(tmp3.path()).cgroup("c");
        v2.create().expect("create");
        assert!(v2.restrict_devices(None).expect("v2 allow all"));
        let err = v2
            .restrict_devices(Some(&["c 1:3 rwm"]))
            .expect_err("not a cgroup");
        assert!(err.to_string().contains("device filter"), "{err}");
        let err = v2
            .restrict_devices(Some(&["c 1:3 rwx"]))
            .expect_err("bad rule");
        assert!(err.to_string().contains("invalid device rule"), "{err}");
    }

    #[test]
    fn v1_missing_hierarchy_is_skipped_unless_needed() {
        let tmp = tempfile::tempdir().expect("tempdir");
        v1_fixture(tmp.path(), &["memory", "cpu"]);
        let cg = CgroupFs::new(tmp.path().to_path_buf(), CgroupVersion::V1).cgroup("p/c");
        cg.create().expect("create");
        assert!(!tmp.path().join("pids/p/c").exists());
        let err = cg
            .apply(&Limits {
                pids: Some(10),
                ..Limits::default()
            })
            .expect_err("pids limit without pids hierarchy");
        assert!(err.to_string().contains("pids"), "{err}");
        // No limits: nothing to write, nothing missing.
        cg.apply(&Limits::default()).expect("no limits");
    }

    #[test]
    fn v1_missing_control_file_is_an_error_not_a_new_file() {
        let tmp = tempfile::tempdir().expect("tempdir");
        v1_fixture(tmp.path(), &["memory"]);
        let cg = CgroupFs::new(tmp.path().to_path_buf(), CgroupVersion::V1).cgroup("p/c");
        cg.create().expect("create");
        let err = cg
            .apply(&Limits {
                memory_bytes: Some(64 << 20),
                ..Limits::default()
            })
            .expect_err("control file missing");
        assert!(err.to_string().contains("memory.limit_in_bytes"), "{err}");
        assert!(!tmp.path().join("memory/p/c/memory.limit_in_bytes").exists());
    }

    #[test]
    fn v2_create_enables_controllers_apply_join_remove() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let root = tmp.path();
        touch(
            &root.join("cgroup.controllers"),
            "cpuset cpu io memory hugetlb pids rdma\n",
        );
        touch(&root.join("cgroup.subtree_control"), "memory\n");
        let fs_ = CgroupFs::detect(root);
        assert_eq!(fs_.version(), CgroupVersion::V2);
        // The parent exists already (as the kernel would show it, after enabling at the root).
        let parent = root.join("shoal");
        fs::create_dir(&parent).expect("mkdir");
        touch(&parent.join("cgroup.controllers"), "cpu memory pids\n");
        touch(&parent.join("cgroup.subtree_control"), "");

        let cg = fs_.cgroup("shoal/c2");
        cg.create().expect("create");
        let read = |p: PathBuf| fs::read_to_string(p).expect("read");
        // "memory" was already enabled at the root: only the others are added.
        assert_eq!(read(root.join("cgroup.subtree_control")), "+cpu +pids");
        assert_eq!(
            read(parent.join("cgroup.subtree_control")),
            "+memory +cpu +pids"
        );
        let dir = parent.join("c2");
        assert!(dir.is_dir());
        assert_eq!(cg.controller_dir("memory"), dir);
        assert_eq!(cg.controller_dir("pids"), dir);

        touch(&dir.join("cgroup.controllers"), "cpu memory pids\n");
        for f in ["memory.max", "cpu.max", "pids.max", "cgroup.procs"] {
            touch(&dir.join(f), "");
        }
        cg.apply(&limits()).expect("apply");
        assert_eq!(read(dir.join("memory.max")), (64u64 << 20).to_string());
        assert_eq!(read(dir.join("cpu.max")), "50000 100000");
        assert_eq!(read(dir.join("pids.max")), "42");
        cg.add_process(77).expect("join");
        assert_eq!(read(dir.join("cgroup.procs")), "77");
        assert!(!cg.oom_killed());
        touch(
            &dir.join("memory.events"),
            "low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n",
        );
        assert!(cg.oom_killed());

        for entry in fs::read_dir(&dir).expect("readdir") {
            fs::remove_file(entry.expect("entry").path()).expect("rm");
        }
        cg.remove().expect("remove");
        assert!(!dir.exists());
        cg.remove().expect("idempotent");
    }

    #[test]
    fn v2_missing_controller_is_reported() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let root = tmp.path();
        // Like this machine kind's unified tree: only hugetlb.
        touch(&root.join("cgroup.controllers"), "hugetlb\n");
        touch(&root.join("cgroup.subtree_control"), "");
        let cg = CgroupFs::detect(root).cgroup("c3");
        cg.create().expect("create");
        touch(&root.join("c3/cgroup.controllers"), "");
        assert_eq!(
            fs::read_to_string(root.join("cgroup.subtree_control"))
                .ok()
                .as_deref(),
            Some("")
        );
        let err = cg
            .apply(&Limits {
                memory_bytes: Some(64 << 20),
                ..Limits::default()
            })
            .expect_err("no memory controller");
        let msg = err.to_string();
        assert!(msg.contains("memory") && msg.contains("v2"), "{msg}");
    }

    #[test]
    fn v2_stats_from_fixture_files() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let root = tmp.path();
        touch(&root.join("cgroup.controllers"), "cpu memory pids\n");
        let cg = CgroupFs::detect(root).cgroup("p/c");
        let dir = root.join("p/c");
        assert!(cg.stats().is_err(), "no cgroup directory yet");
        fs::create_dir_all(&dir).expect("mkdir");
        touch(
            &dir.join("cpu.stat"),
            "usage_usec 1500\nuser_usec 1000\nsystem_usec 500\nnr_periods 0\n",
        );
        touch(&dir.join("memory.current"), "8192\n");
        touch(&dir.join("memory.max"), "max\n");
        touch(
            &dir.join("memory.stat"),
            "anon 4096\nfile 4096\ninactive_file 1024\n",
        );
        touch(&dir.join("pids.current"), "3\n");
        touch(&dir.join("pids.max"), "100\n");
        assert_eq!(
            cg.stats().expect("stats"),
            CgroupStats {
                cpu_usage_ns: 1_500_000,
                cpu_user_ns: 1_000_000,
                cpu_system_ns: 500_000,
                memory_bytes: 8192,
                memory_limit: None,
                memory_inactive_file: 1024,
                pids: 3,
                pids_limit: Some(100),
            }
        );
        touch(&dir.join("memory.max"), "67108864\n");
        touch(&dir.join("pids.max"), "max\n");
        let st = cg.stats().expect("stats");
        assert_eq!((st.memory_limit, st.pids_limit), (Some(64 << 20), None));
        assert_eq!(cg.procs_files(), [dir.join("cgroup.procs")]);
    }

    #[test]
    fn v1_stats_from_fixture_files() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let root = tmp.path();
        v1_fixture(root, &["memory", "cpuacct", "pids"]);
        let cg = CgroupFs::new(root.to_path_buf(), CgroupVersion::V1).cgroup("p/c");
        assert!(cg.stats().is_err(), "no cgroup directory yet");
        cg.create().expect("create");
        let d = |h: &str| root.join(h).join("p/c");
        touch(&d("cpuacct").join("cpuacct.usage"), "123456789\n");
        touch(&d("cpuacct").join("cpuacct.stat"), "user 10\nsystem 5\n");
        touch(&d("memory").join("memory.usage_in_bytes"), "1048576\n");
        touch(
            &d("memory").join("memory.limit_in_bytes"),
            "9223372036854771712\n",
        );
        touch(
            &d("memory").join("memory.stat"),
            "cache 10\ninactive_file 7\ntotal_inactive_file 4096\n",
        );
        touch(&d("pids").join("pids.current"), "2\n");
        touch(&d("pids").join("pids.max"), "max\n");
        let st = cg.stats().expect("stats");
        let tick = 1_000_000_000 / user_hz();
        assert_eq!(
            st,
            CgroupStats {
                cpu_usage_ns: 123_456_789,
                cpu_user_ns: 10 * tick,
                cpu_system_ns: 5 * tick,
                memory_bytes: 1 << 20,
                memory_limit: None,
                memory_inactive_file: 4096,
                pids: 2,
                pids_limit: None,
            }
        );
        touch(&d("memory").join("memory.limit_in_bytes"), "67108864\n");
        assert_eq!(cg.stats().expect("stats").memory_limit, Some(64 << 20));
        // Every hierarchy the cgroup exists in is joined.
        let mut files = cg.procs_files();
        files.sort();
        assert_eq!(
            files,
            ["cpuacct", "memory", "pids"].map(|h| d(h).join("cgroup.procs"))
        );
    }

    #[test]
    fn freezer_v1_and_v2() {
        // v1: freezer.state; a fixture file reads back what was written.
        let tmp = tempfile::tempdir().expect("tempdir");
        v1_fixture(tmp.path(), &["memory", "freezer"]);
        let cg = CgroupFs::new(tmp.path().to_path_buf(), CgroupVersion::V1).cgroup("p/c");
        cg.create().expect("create");
        let state = tmp.path().join("freezer/p/c/freezer.state");
        assert!(cg.freeze(true).is_err(), "no freezer.state: not a freezer");
        touch(&state, "THAWED\n");
        assert!(!cg.frozen());
        cg.freeze(true).expect("freeze");
        assert_eq!(fs::read_to_string(&state).expect("read"), "FROZEN");
        assert!(cg.frozen());
        cg.freeze(false).expect("thaw");
        assert!(!cg.frozen());
        // A host without the freezer hierarchy says so.
        let tmp2 = tempfile::tempdir().expect("tempdir");
        v1_fixture(tmp2.path(), &["memory"]);
        let cg2 = CgroupFs::new(tmp2.path().to_path_buf(), CgroupVersion::V1).cgroup("p/c");
        cg2.create().expect("create");
        let err = cg2.freeze(true).expect_err("no freezer");
        assert!(err.to_string().contains("freezer"), "{err}");
        assert!(!cg2.frozen());

        // v2: cgroup.freeze, and cgroup.events says when the state is reached.
        let tmp3 = tempfile::tempdir().expect("tempdir");
        touch(&tmp3.path().join("cgroup.controllers"), "memory\n");
        touch(&tmp3.path().join("cgroup.subtree_control"), "");
        let v2 = CgroupFs::detect(tmp3.path()).cgroup("c");
        v2.create().expect("create");
        let dir = tmp3.path().join("c");
        assert!(v2.freeze(true).is_err(), "no cgroup.freeze");
        touch(&dir.join("cgroup.freeze"), "0\n");
        touch(&dir.join("cgroup.events"), "populated 1\nfrozen 1\n");
        v2.freeze(true).expect("freeze");
        assert_eq!(
            fs::read_to_string(dir.join("cgroup.freeze")).expect("read"),
            "1"
        );
        assert!(v2.frozen());
        touch(&dir.join("cgroup.events"), "populated 1\nfrozen 0\n");
        v2.freeze(false).expect("thaw");
        assert!(!v2.frozen());
    }
}
