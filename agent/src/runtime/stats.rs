//! `docker stats` and `docker top`: resource usage from the container's cgroup files, and its
//! processes (its cgroup's `cgroup.procs`) with what `/proc` says about them.

use std::fs;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::user::parse_passwd;
use super::{now_ms, parse_proc_stat, CgroupStats, Runtime, RuntimeError};

/// A container's resource usage at one moment. CPU percentages are computed from two samples,
/// as Docker does: `(Δcpu_usage_ns / Δsystem_cpu_ns) × online_cpus × 100`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerStats {
    /// Unix milliseconds of the sample.
    pub read_at: u64,
    /// CPU time of the container's processes, ever.
    pub cpu_usage_ns: u64,
    pub cpu_user_ns: u64,
    pub cpu_system_ns: u64,
    /// CPU time of the whole host (every CPU, every state), from /proc/stat.
    pub system_cpu_ns: u64,
    pub online_cpus: u32,
    /// Memory charged to the cgroup, page cache included.
    pub memory_bytes: u64,
    /// `None`: no limit.
    pub memory_limit: Option<u64>,
    /// Inactive page cache: Docker's CLI shows `memory_bytes - memory_inactive_file`.
    pub memory_inactive_file: u64,
    pub pids: u64,
    pub pids_limit: Option<u64>,
    /// Sums over the container's network interfaces but `lo` (none with a host network, where
    /// the host's are not the container's).
    pub net_rx_bytes: u64,
    pub net_tx_bytes: u64,
}

impl ContainerStats {
    /// Memory as Docker's CLI shows it (usage minus inactive page cache).
    pub fn memory_working_set(&self) -> u64 {
        self.memory_bytes.saturating_sub(self.memory_inactive_file)
    }

    /// CPU use between `prev` and `self` in percent of one CPU (100 = one CPU busy), as
    /// `docker stats` computes it.
    pub fn cpu_percent(&self, prev: &ContainerStats) -> f64 {
        let cpu = self.cpu_usage_ns.saturating_sub(prev.cpu_usage_ns) as f64;
        let system = self.system_cpu_ns.saturating_sub(prev.system_cpu_ns) as f64;
        if system <= 0.0 {
            return 0.0;
        }
        cpu / system * f64::from(self.online_cpus.max(1)) * 100.0
    }
}

/// One process of a container (`docker top`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessInfo {
    /// Host pid.
    pub pid: i32,
    /// Host pid of the parent (for an exec'd process: its exec helper, outside the container).
    pub ppid: i32,
    /// The pid inside the container (`NSpid`), if known.
    pub container_pid: Option<i32>,
    pub uid: u32,
    /// The user's name in the container's /etc/passwd, else the uid.
    pub user: String,
    /// `R`, `S`, `D`, `Z`, `T`, ...
    pub state: char,
    /// Clock ticks after boot.
    pub start_ticks: u64,
    /// User + system CPU time, milliseconds.
    pub cpu_ms: u64,
    pub rss_bytes: u64,
    /// The command line (arguments joined by spaces), or `[comm]` when it has none.
    pub cmd: String,
}

impl Runtime {
    /// The container's resource usage (`docker stats`, one sample).
    pub fn stats(&self, id: &str) -> Result<ContainerStats, RuntimeError> {
        let (cgroup, pid, host_net) = self.running_parts(id)?;
        let cg = cgroup.stats()?;
        let (rx, tx) = if host_net {
            (0, 0)
        } else {
            fs::read_to_string(format!("/proc/{pid}/net/dev"))
                .map(|t| parse_net_dev(&t))
                .unwrap_or((0, 0))
        };
        let (system, cpus) = fs::read_to_string("/proc/stat")
            .map(|t| parse_proc_stat_cpu(&t, super::cgroup::user_hz()))
            .unwrap_or((0, 0));
        Ok(from_cgroup(cg, now_ms(), system, cpus, rx, tx))
    }

    /// The container's processes (`docker top`), by host pid.
    pub fn top(&self, id: &str) -> Result<Vec<ProcessInfo>, RuntimeError> {
        let (cgroup, pid, _) = self.running_parts(id)?;
        let users = fs::read_to_string(format!("/proc/{pid}/root/etc/passwd"))
            .map(|t| parse_passwd(&t))
            .unwrap_or_default();
        let page = page_size();
        let hz = super::cgroup::user_hz();
        let mut out: Vec<ProcessInfo> = cgroup
            .processes()?
            .into_iter()
            .filter_map(|p| process_info(Path::new("/proc"), p, page, hz))
            .map(|mut info| {
                info.user = users
                    .iter()
                    .find(|u| u.uid == info.uid)
                    .map_or_else(|| info.uid.to_string(), |u| u.name.clone());
                info
            })
            .collect();
        out.sort_by_key(|p| p.pid);
        Ok(out)
    }

    /// The cgroup, init pid and host-network flag of a running container.
    fn running_parts(&self, id: &str) -> Result<(Box<dyn super::Cgroup>, i32, bool), RuntimeError> {
        let state = self.state(id)?;
        let super::ContainerStatus::Running { pid } = state.status else {
            return Err(RuntimeError::NotRunning { id: id.to_string() });
        };
        let cgroup = self.running_cgroup(id)?;
        Ok((
            cgroup,
            pid,
            state.config.network == super::NetworkMode::Host,
        ))
    }
}

fn from_cgroup(
    cg: CgroupStats,
    read_at: u64,
    system_cpu_ns: u64,
    online_cpus: u32,
    rx: u64,
    tx: u64,
) -> ContainerStats {
    ContainerStats {
        read_at,
        cpu_usage_ns: cg.cpu_usage_ns,
        cpu_user_ns: cg.cpu_user_ns,
        cpu_system_ns: cg.cpu_system_ns,
        system_cpu_ns,
        online_cpus,
        memory_bytes: cg.memory_bytes,
        memory_limit: cg.memory_limit,
        memory_inactive_file: cg.memory_inactive_file,
        pids: cg.pids,
        pids_limit: cg.pids_limit,
        net_rx_bytes: rx,
        net_tx_bytes: tx,
    }
}

fn page_size() -> u64 {
    // SAFETY: sysconf(3) with a valid name.
    let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if p > 0 {
        p as u64
    } else {
        4096
    }
}

/// (received, transmitted) bytes over every interface but `lo` of a `/proc/<pid>/net/dev`.
fn parse_net_dev(text: &str) -> (u64, u64) {
    let mut rx = 0u64;
    let mut tx = 0u64;
    for line in text.lines().skip(2) {
        let Some((name, rest)) = line.split_once(':') else {
            continue;
        };
        if name.trim() == "lo" {
            continue;
        }
        let f: Vec<u64> = rest
            .split_whitespace()
            .map(|v| v.parse().unwrap_or(0))
            .collect();
        if f.len() >= 9 {
            rx = rx.saturating_add(f[0]);
            tx = tx.saturating_add(f[8]);
        }
    }
    (rx, tx)
}

/// (host CPU time in ns summed over every state, number of CPUs) from /proc/stat.
fn parse_proc_stat_cpu(text: &str, hz: u64) -> (u64, u32) {
    let mut total = 0u64;
    let mut cpus = 0u32;
    for line in text.lines() {
        let mut it = line.split_whitespace();
        match it.next() {
            Some("cpu") => {
                total = it
                    .take(8) // user nice system idle iowait irq softirq steal
                    .map(|v| v.parse::<u64>().unwrap_or(0))
                    .sum();
            }
            Some(c) if c.starts_with("cpu") => cpus += 1,
            _ => {}
        }
    }
    (total.saturating_mul(1_000_000_000 / hz.max(1)), cpus)
}

/// What `<proc>/<pid>/{stat,status,cmdline}` say about a process (`None` if it is gone).
fn process_info(proc: &Path, pid: i32, page: u64, hz: u64) -> Option<ProcessInfo> {
    let dir = proc.join(pid.to_string());
    let stat_text = fs::read_to_string(dir.join("stat")).ok()?;
    let st = parse_proc_stat(&stat_text)?;
    let comm = stat_text
        .find('(')
        .zip(stat_text.rfind(')'))
        .map(|(a, b)| stat_text[a + 1..b].to_string())
        .unwrap_or_default();
    let fields: Vec<&str> = stat_text[stat_text.rfind(')')? + 1..]
        .split_whitespace()
        .collect();
    // fields[11], [12]: utime, stime (fields 14, 15); fields[21]: rss in pages (field 24).
    let num = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    let cpu_ms = (num(11) + num(12)).saturating_mul(1000) / hz.max(1);
    let status = fs::read_to_string(dir.join("status")).unwrap_or_default();
    let field = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .map(str::trim)
            .unwrap_or("")
            .to_string()
    };
    let uid = field("Uid:")
        .split_whitespace()
        .nth(1) // effective
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let container_pid = field("NSpid:")
        .split_whitespace()
        .last()
        .and_then(|v| v.parse().ok());
    let cmdline = fs::read(dir.join("cmdline")).unwrap_or_default();
    let cmd = if cmdline.is_empty() {
        format!("[{comm}]")
    } else {
        cmdline
            .split(|&b| b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect::<Vec<_>>()
            .join(" ")
    };
    Some(ProcessInfo {
        pid,
        ppid: st.ppid,
        container_pid,
        uid,
        user: uid.to_string(),
        state: st.state,
        start_ticks: st.start,
        cpu_ms,
        rss_bytes: num(21).saturating_mul(page),
        cmd,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn net_dev_sums_all_but_lo() {
        let text = "Inter-|   Receive                                                |  Transmit\n \
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed\n    \
lo:    1000      10    0    0    0     0          0         0     1000      10    0    0    0     0       0          0\n  \
eth0:    5000      50    0    0    0     0          0         0     7000      60    0    0    0     0       0          0\n  \
eth1:     100       1    0    0    0     0          0         0       20       1    0    0    0     0       0          0\n";
        assert_eq!(parse_net_dev(text), (5100, 7020));
    }

    #[test]
    fn proc_stat_totals() {
        let text = "cpu  100 0 50 1000 10 0 5 0 0 0\ncpu0 50 0 25 500 5 0 2 0 0 0\ncpu1 50 0 25 500 5 0 3 0 0 0\nintr 1\n";
        assert_eq!(parse_proc_stat_cpu(text, 100), (1165 * 10_000_000, 2));
    }

    #[test]
    fn cpu_percent_like_docker() {
        let a = ContainerStats {
            cpu_usage_ns: 1_000,
            system_cpu_ns: 10_000,
            online_cpus: 2,
            ..ContainerStats::default()
        };
        let b = ContainerStats {
            cpu_usage_ns: 2_000,
            system_cpu_ns: 20_000,
            ..a
        };
        assert!((b.cpu_percent(&a) - 20.0).abs() < 1e-9);
        assert_eq!(a.cpu_percent(&a), 0.0);
        let m = ContainerStats {
            memory_bytes: 100,
            memory_inactive_file: 30,
            ..a
        };
        assert_eq!(m.memory_working_set(), 70);
    }

    #[test]
    fn process_info_from_a_fake_proc() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let d = tmp.path().join("77");
        fs::create_dir(&d).expect("mkdir");
        fs::write(
            d.join("stat"),
            "77 (my (odd) cmd) S 5 77 77 0 -1 0 0 0 0 0 150 50 0 0 20 0 1 0 4242 1000 25 0\n",
        )
        .expect("stat");
        fs::write(
            d.join("status"),
            "Name:\tx\nUid:\t1000\t1000\t1000\t1000\nNSpid:\t77\t3\n",
        )
        .expect("status");
        fs::write(d.join("cmdline"), b"sleep\x00100\x00").expect("cmdline");
        let p = process_info(tmp.path(), 77, 4096, 100).expect("info");
        assert_eq!(
            p,
            ProcessInfo {
                pid: 77,
                ppid: 5,
                container_pid: Some(3),
                uid: 1000,
                user: "1000".into(),
                state: 'S',
                start_ticks: 4242,
                cpu_ms: 2000,
                rss_bytes: 25 * 4096,
                cmd: "sleep 100".into(),
            }
        );
        fs::write(d.join("cmdline"), b"").expect("cmdline");
        assert_eq!(
            process_info(tmp.path(), 77, 4096, 100).expect("info").cmd,
            "[my (odd) cmd]"
        );
        assert!(process_info(tmp.path(), 78, 4096, 100).is_none());
    }
}
