//! ha-bench: how long a cluster of managers cannot take writes when its leader dies.
//!
//! Three `shoal daemon` managers on loopback (the second and third joined with the manager
//! token). Each run: `kill -9` the leader, then run a write (`node update --label-add`, one
//! Raft entry, forwarded to the leader) on a surviving follower in a loop until one
//! succeeds; the time from the kill to that success is the figure. The killed manager is then
//! restarted and the next run waits until all three managers are reachable again. Prints
//! every run and the median (goal ≤ 1 s; Swarm's election alone takes 10–20 s).
//!
//! The figure includes starting the `shoal` CLI process for each attempt (a few ms).
//!
//!     cargo build --release --bin shoal -p shoal-bench --bin ha-bench
//!     target/release/ha-bench [--runs 10] [--shoal target/release/shoal]
//!
//! Runs as root (each daemon is also an agent). Every daemon has its own data dir, socket,
//! port, cgroup parent and nftables table, all removed at the end, also on error.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;

#[derive(Parser)]
#[command(name = "ha-bench", about = "Leader kill → first successful write")]
struct Args {
    /// How many leader kills to time.
    #[arg(long, default_value_t = 10)]
    runs: usize,
    /// The shoal binary (default: `shoal` next to this one).
    #[arg(long)]
    shoal: Option<PathBuf>,
}

struct Daemon {
    bin: PathBuf,
    dir: tempfile::TempDir,
    tag: String,
    pool_octet: u8,
    extra: Vec<String>,
    child: Option<Child>,
}

impl Daemon {
    fn start(bin: &Path, n: usize, extra: Vec<String>) -> Result<Daemon> {
        let dir = tempfile::Builder::new()
            .prefix("shoal-ha-bench-")
            .tempdir()?;
        let tag = format!("h{:03x}{n}", std::process::id() & 0xfff);
        let mut d = Daemon {
            bin: bin.to_path_buf(),
            dir,
            tag,
            pool_octet: 60 + n as u8,
            extra,
            child: None,
        };
        d.spawn()?;
        Ok(d)
    }

    fn socket(&self) -> PathBuf {
        self.dir.path().join("s.sock")
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("daemon.log")).unwrap_or_default()
    }

    fn spawn(&mut self) -> Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("daemon.log"))?;
        let child = Command::new(&self.bin)
            .arg("daemon")
            .arg("--data-dir")
            .arg(self.data())
            .arg("--socket")
            .arg(self.socket())
            .args(["--listen-addr", "127.0.0.1:0", "--cgroup-parent"])
            .arg(format!("shoal-ha-bench-{}", self.tag))
            .args(["--network-prefix", &self.tag, "--nft-table"])
            .arg(format!("shoalbench-{}", self.tag))
            .arg("--default-address-pool")
            .arg(format!("base=10.{}.0.0/16,size=24", self.pool_octet))
            .args(["--dns-upstream", "none"])
            .args(&self.extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("starting shoal daemon")?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if self.socket().exists() && self.cli(&["info", "--format", "json"]).is_ok() {
                return Ok(());
            }
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                bail!("the daemon exited ({status}):\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        bail!("the daemon did not answer within 60 s:\n{}", self.log())
    }

    fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn cli(&self, args: &[&str]) -> Result<String> {
        let out = Command::new(&self.bin)
            .arg("--host")
            .arg(self.socket())
            .args(args)
            .stdin(Stdio::null())
            .output()?;
        if !out.status.success() {
            bail!("{}", String::from_utf8_lossy(&out.stderr).trim());
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn info(&self) -> Result<serde_json::Value> {
        Ok(serde_json::from_str(
            &self.cli(&["info", "--format", "json"])?,
        )?)
    }

    fn is_leader(&self) -> bool {
        self.info().is_ok_and(|i| i["is_leader"] == true)
    }

    fn manager_addr(&self) -> Result<String> {
        self.log()
            .lines()
            .filter(|l| l.contains("shoal daemon ready"))
            .find_map(|l| l.split("addr=").nth(1))
            .and_then(|rest| rest.split_whitespace().next())
            .map(str::to_string)
            .context("no manager address in the daemon log")
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill9();
        // The nftables tables the daemon's agent made (no container ever ran).
        for table in [
            format!("shoalbench-{}", self.tag),
            format!("shoalbench-{}-ports", self.tag),
        ] {
            for family in ["inet", "ip"] {
                let _ = Command::new("nft")
                    .args(["delete", "table", family, &table])
                    .stderr(Stdio::null())
                    .status();
            }
        }
        for root in std::fs::read_dir("/sys/fs/cgroup")
            .into_iter()
            .flatten()
            .flatten()
        {
            let _ = std::fs::remove_dir(root.path().join(format!("shoal-ha-bench-{}", self.tag)));
        }
    }
}

fn wait_until(what: &str, timeout: Duration, mut check: impl FnMut() -> bool) -> Result<()> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if check() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    bail!("timed out waiting for {what}")
}

/// All three managers reachable from `d`, one of them leading.
fn healthy(d: &Daemon) -> bool {
    let Ok(text) = d.cli(&["node", "ls", "--format", "json"]) else {
        return false;
    };
    let nodes: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
    let nodes = nodes.as_array().cloned().unwrap_or_default();
    let reachable = nodes
        .iter()
        .filter(|n| n["manager_status"]["reachability"] == "reachable")
        .count();
    let leaders = nodes
        .iter()
        .filter(|n| n["manager_status"]["leader"] == true)
        .count();
    reachable == 3 && leaders == 1
}

fn main() -> Result<()> {
    let args = Args::parse();
    let bin = match args.shoal {
        Some(b) => b,
        None => std::env::current_exe()?.with_file_name("shoal"),
    };
    if !bin.exists() {
        bail!("{} not found: build it, or pass --shoal", bin.display());
    }
    let mut managers = vec![Daemon::start(&bin, 0, Vec::new())?];
    let token = managers[0]
        .cli(&["join-token", "manager", "-q"])?
        .trim()
        .to_string();
    let seed = managers[0].manager_addr()?;
    for n in 1..3 {
        let extra = vec![
            "--join".into(),
            seed.clone(),
            "--token".into(),
            token.clone(),
        ];
        managers.push(Daemon::start(&bin, n, extra)?);
    }
    let mut times = Vec::new();
    for run in 0..args.runs {
        wait_until("three healthy managers", Duration::from_secs(30), || {
            managers.iter().all(healthy)
        })?;
        let leader = (0..3)
            .find(|&i| managers[i].is_leader())
            .context("no leader")?;
        let writer = (0..3).find(|&i| i != leader).context("no follower")?;
        let node = managers[writer].info()?["node_id"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let label = format!("run={run}");
        let killed = Instant::now();
        managers[leader].kill9();
        let took = loop {
            if managers[writer]
                .cli(&["node", "update", "--label-add", &label, &node])
                .is_ok()
            {
                break killed.elapsed();
            }
            if killed.elapsed() > Duration::from_secs(30) {
                bail!(
                    "no write succeeded within 30 s:\n{}",
                    managers[writer].log()
                );
            }
        };
        println!(
            "run {:>2}: leader kill -9 → first successful write: {:>7.1} ms",
            run + 1,
            took.as_secs_f64() * 1e3
        );
        times.push(took);
        managers[leader].spawn()?;
    }
    times.sort();
    let median = if times.len() % 2 == 1 {
        times[times.len() / 2]
    } else {
        (times[times.len() / 2 - 1] + times[times.len() / 2]) / 2
    };
    println!(
        "leader kill → first successful write, median of {} runs: {:.1} ms (min {:.1}, max {:.1}; goal ≤ 1000 ms)",
        times.len(),
        median.as_secs_f64() * 1e3,
        times[0].as_secs_f64() * 1e3,
        times[times.len() - 1].as_secs_f64() * 1e3
    );
    Ok(())
}
