//! Private `shoal daemon`s on loopback for the cluster benchmarks (ha-bench, failover-bench,
//! raft-bench, scheduler-bench): each has its own data dir, socket, port, cgroup parent,
//! link prefix, nftables tables and address pool, and its guard removes all of it (its
//! containers and their networks included), also on error.

#![allow(dead_code)] // each benchmark uses a part

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

pub struct Daemon {
    bin: PathBuf,
    dir: tempfile::TempDir,
    /// Link prefix and name part of the nftables tables and cgroup parent (≤ 5 of [a-z0-9]).
    tag: String,
    pool_octet: u8,
    extra: Vec<String>,
    env: Vec<(String, String)>,
    child: Option<Child>,
}

impl Daemon {
    /// Starts daemon number `n` (0–9) of this benchmark with `extra` flags; waits until it
    /// answers.
    pub fn start(bin: &Path, n: usize, extra: Vec<String>) -> Result<Daemon> {
        Daemon::start_with_env(bin, n, extra, Vec::new())
    }

    pub fn start_with_env(
        bin: &Path,
        n: usize,
        extra: Vec<String>,
        env: Vec<(String, String)>,
    ) -> Result<Daemon> {
        let dir = tempfile::Builder::new().prefix("shoal-bench-").tempdir()?;
        let tag = format!("b{:03x}{}", std::process::id() & 0xfff, n % 10);
        let mut d = Daemon {
            bin: bin.to_path_buf(),
            dir,
            tag,
            pool_octet: 60 + (n % 10) as u8,
            extra,
            env,
            child: None,
        };
        d.spawn()?;
        Ok(d)
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("s.sock")
    }

    pub fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("daemon.log")).unwrap_or_default()
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    fn cgroup_parent(&self) -> String {
        format!("shoal-bench-{}", self.tag)
    }

    fn nft_table(&self) -> String {
        format!("shoalbench-{}", self.tag)
    }

    /// (Re)starts the process on the same data dir and waits until it answers.
    pub fn spawn(&mut self) -> Result<()> {
        self.kill9();
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
            .arg(self.cgroup_parent())
            .args(["--network-prefix", &self.tag, "--nft-table"])
            .arg(self.nft_table())
            .arg("--default-address-pool")
            .arg(format!("base=10.{}.0.0/16,size=24", self.pool_octet))
            .args(["--dns-upstream", "none"])
            .args(&self.extra)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("starting shoal daemon")?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            // `image ls` answers on managers and workers alike.
            if self.socket().exists() && self.cli(&["image", "ls", "-q"]).is_ok() {
                return Ok(());
            }
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                bail!("the daemon exited ({status}):\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        bail!("the daemon did not answer within 60 s:\n{}", self.log())
    }

    /// `kill -9`: no shutdown path runs; containers keep running.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn cli(&self, args: &[&str]) -> Result<String> {
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

    pub fn json(&self, args: &[&str]) -> Result<serde_json::Value> {
        Ok(serde_json::from_str(&self.cli(args)?)?)
    }

    pub fn info(&self) -> Result<serde_json::Value> {
        self.json(&["info", "--format", "json"])
    }

    pub fn is_leader(&self) -> bool {
        self.info().is_ok_and(|i| i["is_leader"] == true)
    }

    /// The manager port, from the "shoal daemon ready ... addr=..." log line.
    pub fn manager_addr(&self) -> Result<String> {
        self.log()
            .lines()
            .filter(|l| l.contains("shoal daemon ready"))
            .find_map(|l| l.split("addr=").nth(1))
            .and_then(|rest| rest.split_whitespace().next())
            .map(str::to_string)
            .context("no manager address in the daemon log")
    }

    /// `--join ADDR --token T` for a daemon that joins this one as `role`.
    pub fn join_args(&self, role: &str) -> Result<Vec<String>> {
        let token = self.cli(&["join-token", role, "-q"])?.trim().to_string();
        Ok(vec![
            "--join".into(),
            self.manager_addr()?,
            "--token".into(),
            token,
        ])
    }

    /// Removes the containers, then every network piece, the daemon made.
    fn clean_up(&self) {
        let containers = self.data().join("containers");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build();
        if let (Ok(runtime), Ok(rt)) = (
            shoal_agent::runtime::Runtime::new(containers, self.bin.clone(), self.cgroup_parent()),
            rt,
        ) {
            for c in runtime.list().unwrap_or_default() {
                let _ = rt.block_on(runtime.remove(&c.id));
            }
            let mut config = shoal_agent::network::NetworkConfig::new(
                self.data().join("network"),
                self.data().join("run"),
            );
            config.name_prefix = self.tag.clone();
            config.nft_table = self.nft_table();
            if let Ok(networks) = shoal_agent::network::NetworkManager::open(config) {
                let state = networks.state();
                for id in state.containers.keys() {
                    let _ = rt.block_on(networks.release_container(id));
                }
                for id in state.networks.keys() {
                    let _ = rt.block_on(networks.remove_network(id));
                }
            }
            if let Ok(entries) = std::fs::read_dir(self.data().join("run/netns")) {
                for e in entries.flatten() {
                    let _ = shoal_agent::network::delete_netns_file(&e.path());
                }
            }
        }
        for table in [self.nft_table(), format!("{}-ports", self.nft_table())] {
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
            let _ = std::fs::remove_dir(root.path().join(self.cgroup_parent()));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill9();
        self.clean_up();
    }
}

/// Polls `check` every 20 ms until it holds or `timeout` passes.
pub fn wait_until(what: &str, timeout: Duration, mut check: impl FnMut() -> bool) -> Result<()> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if check() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    bail!("timed out waiting for {what}")
}

/// The median of `times` (sorted here).
pub fn median(times: &mut [Duration]) -> Duration {
    times.sort();
    let n = times.len();
    if n == 0 {
        return Duration::ZERO;
    }
    if n % 2 == 1 {
        times[n / 2]
    } else {
        (times[n / 2 - 1] + times[n / 2]) / 2
    }
}

/// The `shoal` binary: `--shoal`, else the one next to this benchmark.
pub fn shoal_bin(given: Option<PathBuf>) -> Result<PathBuf> {
    let bin = match given {
        Some(b) => b,
        None => std::env::current_exe()?.with_file_name("shoal"),
    };
    if !bin.exists() {
        bail!("{} not found: build it, or pass --shoal", bin.display());
    }
    Ok(bin)
}
