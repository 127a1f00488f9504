//! A real `shoal daemon` for a test: its own data dir, socket, port and cgroup parent, and a
//! guard that removes everything it made (containers included) even when the test panics.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const SHOAL: &str = env!("CARGO_BIN_EXE_shoal");

pub struct TestDaemon {
    pub dir: tempfile::TempDir,
    pub cgroup_parent: String,
    /// This daemon's link-name prefix, nftables table and address pool (10.<octet>.0.0/16):
    /// its own, so daemons of concurrent tests never touch each other's networks.
    pub net_prefix: String,
    pub nft_table: String,
    pub pool_octet: u8,
    /// Flags beyond the defaults, e.g. `--join ADDR --token T` for a worker.
    extra_args: Vec<String>,
    /// `--listen-addr`: loopback with a free port, unless the daemon runs on a test host.
    pub listen_addr: String,
    /// The network namespace (a `/run/netns/NAME` file) the daemon runs in: a test host's
    /// (see `hosts.rs`); `None`: this machine's own.
    pub netns: Option<PathBuf>,
    /// Environment variables for the daemon (e.g. `SHOAL_SNAPSHOT_EVERY`).
    pub env: Vec<(String, String)>,
    child: Option<Child>,
}

impl TestDaemon {
    pub fn start() -> TestDaemon {
        TestDaemon::start_with(Vec::new())
    }

    /// A daemon with the busybox image already bootstrapped: where most tests begin.
    pub fn with_busybox() -> TestDaemon {
        let d = TestDaemon::start();
        d.ok(&["image", "bootstrap", "busybox"]);
        d
    }

    /// A worker that joins `manager`'s cluster.
    pub fn start_worker(manager: &TestDaemon) -> TestDaemon {
        let token = manager
            .ok(&["join-token", "worker", "-q"])
            .trim()
            .to_string();
        TestDaemon::start_with(vec![
            "--join".into(),
            manager.manager_addr(),
            "--token".into(),
            token,
        ])
    }

    pub fn start_with(extra_args: Vec<String>) -> TestDaemon {
        let mut daemon = TestDaemon::new(extra_args);
        daemon.spawn();
        daemon
    }

    /// A daemon that runs in the network namespace `netns` and listens on `listen_addr`
    /// (a test host: see `hosts.rs`).
    pub fn start_in_netns(
        netns: PathBuf,
        listen_addr: String,
        extra_args: Vec<String>,
        env: Vec<(String, String)>,
    ) -> TestDaemon {
        let mut daemon = TestDaemon::new(extra_args);
        daemon.netns = Some(netns);
        daemon.env = env;
        daemon.listen_addr = listen_addr;
        daemon.spawn();
        daemon
    }

    /// Everything but the process: its dir and unique names.
    fn new(extra_args: Vec<String>) -> TestDaemon {
        let dir = tempfile::Builder::new()
            .prefix("shoal-e2e-")
            .tempdir()
            .expect("a temp dir");
        let unique = dir
            .path()
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("shoal-e2e")
            .to_string();
        let random = super::random_u64();
        let net_prefix = format!("t{:04x}", random & 0xffff);
        TestDaemon {
            dir,
            cgroup_parent: unique,
            nft_table: format!("shoaltest-{net_prefix}"),
            net_prefix,
            pool_octet: next_pool_octet(),
            extra_args,
            listen_addr: "127.0.0.1:0".into(),
            netns: None,
            env: Vec::new(),
            child: None,
        }
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// The cluster's range for ingress ports asked as 0 (see `spawn`).
    pub fn ingress_port_range(&self) -> String {
        let first = 30000 + (u32::from(self.pool_octet) % 150) * 16;
        format!("{first}-{}", first + 15)
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("shoal.sock")
    }

    /// (Re)starts the daemon process on the same data dir and waits until it answers.
    pub fn spawn(&mut self) {
        // Never two daemons on one data dir: an orphaned one would outlive the guard.
        self.kill9();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("daemon.log"))
            .expect("daemon log file");
        let mut command = Command::new(SHOAL);
        if let Some(netns) = &self.netns {
            enter_netns_on_exec(&mut command, netns);
        }
        let child = command
            .arg("daemon")
            .arg("--data-dir")
            .arg(self.data_dir())
            .arg("--socket")
            .arg(self.socket())
            .args([
                "--listen-addr",
                &self.listen_addr,
                "--cgroup-parent",
                &self.cgroup_parent,
                "--network-prefix",
                &self.net_prefix,
                "--nft-table",
                &self.nft_table,
                // The test's own 10.X.0.0/16: local networks in its lower half, overlay
                // networks in its upper half.
                "--default-address-pool",
                &format!("base=10.{}.0.0/17,size=24", self.pool_octet),
                "--overlay-address-pool",
                &format!("10.{}.128.0/17", self.pool_octet),
                // Ingress ports asked as 0 are host ports: 16 of its own per pool octet, so
                // that daemons of tests running side by side never pick the same one.
                "--ingress-port-range",
                &self.ingress_port_range(),
                // Tests send nothing off the machine: unknown names fail at once.
                "--dns-upstream",
                "none",
            ])
            .args(&self.extra_args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn shoal daemon");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            // `image ls` answers on managers and workers alike.
            if self.socket().exists() && self.shoal(&["image", "ls", "-q"]).status.success() {
                return;
            }
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    panic!("shoal daemon exited early ({status}):\n{}", self.log());
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("shoal daemon did not answer within 20 s:\n{}", self.log());
    }

    /// Restarts the daemon with `args` added to its flags for this start only (e.g.
    /// `--force-new-cluster`).
    pub fn spawn_once_with(&mut self, args: &[&str]) {
        let saved = self.extra_args.clone();
        self.extra_args.extend(args.iter().map(|a| a.to_string()));
        self.spawn();
        self.extra_args = saved;
    }

    /// The manager port, from the daemon's "shoal daemon ready ... addr=..." log line.
    pub fn manager_addr(&self) -> String {
        let log = self.log();
        log.lines()
            .filter(|l| l.contains("shoal daemon ready"))
            .find_map(|l| l.split("addr=").nth(1))
            .and_then(|rest| rest.split_whitespace().next())
            .map(str::to_string)
            .unwrap_or_else(|| panic!("no manager address in the daemon log:\n{log}"))
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("daemon.log")).unwrap_or_default()
    }

    /// The daemon's process id, while it runs.
    pub fn pid(&self) -> Option<i32> {
        self.child.as_ref().map(|c| c.id() as i32)
    }

    /// Sends `signal` to the daemon process (SIGSTOP / SIGCONT freeze and thaw it).
    pub fn signal(&self, signal: nix::sys::signal::Signal) {
        if let Some(pid) = self.pid() {
            nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal)
                .unwrap_or_else(|e| panic!("kill -{signal} {pid}: {e}"));
        }
    }

    /// `kill -9`: no shutdown path runs.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn shoal(&self, args: &[&str]) -> Output {
        Command::new(SHOAL)
            .arg("--host")
            .arg(self.socket())
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run shoal")
    }

    /// Runs a CLI command with `input` on its stdin.
    pub fn shoal_with_input(&self, args: &[&str], input: &[u8]) -> Output {
        use std::io::Write;
        let mut child = Command::new(SHOAL)
            .arg("--host")
            .arg(self.socket())
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run shoal");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(input)
            .expect("write stdin");
        child.wait_with_output().expect("shoal output")
    }

    /// Where the daemon writes its containers' secret files (a tmpfs).
    pub fn secrets_root(&self) -> PathBuf {
        shoal_agent::executor::secrets_root(&self.data_dir().join("containers"))
    }

    /// Runs a CLI command that must succeed; returns its stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.shoal(args);
        assert!(
            out.status.success(),
            "shoal {args:?} failed:\nstdout: {}\nstderr: {}\ndaemon log:\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs a CLI command that must fail; returns its stderr.
    pub fn fails(&self, args: &[&str]) -> String {
        let out = self.shoal(args);
        assert!(
            !out.status.success(),
            "shoal {args:?} should have failed:\n{}",
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        let text = self.ok(args);
        serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{args:?} printed no JSON ({e}): {text}"))
    }

    /// Polls `check` until it holds or `timeout` passes.
    pub fn wait_for(&self, what: &str, timeout: Duration, mut check: impl FnMut() -> bool) {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if check() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("timed out waiting for {what}\ndaemon log:\n{}", self.log());
    }

    /// The running tasks of a service, from `service ps --format json`.
    pub fn running_tasks(&self, service: &str) -> Vec<serde_json::Value> {
        let tasks = self.json(&["service", "ps", service, "--format", "json"]);
        tasks
            .as_array()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .filter(|t| t["desired_state"] == "running" && t["status"]["state"] == "running")
            .collect()
    }
}

/// A second octet (100–249) for a daemon's address pool, and so its ingress port range: the
/// daemons of one test binary, which run side by side, each get another. A random pick let
/// two share them (about one run in 25 with four daemons), and then the second one's ingress
/// ports could not be published. The first is random, so that binaries run one after another
/// vary.
fn next_pool_octet() -> u8 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static BASE: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    static TAKEN: AtomicU64 = AtomicU64::new(0);
    let base = *BASE.get_or_init(|| super::random_u64() % 150);
    100 + ((base + TAKEN.fetch_add(1, Ordering::Relaxed)) % 150) as u8
}

impl Drop for TestDaemon {
    fn drop(&mut self) {
        self.kill9();
        // Containers outlive the daemon by design: remove them through the runtime itself.
        let containers = self.data_dir().join("containers");
        if let Ok(runtime) = shoal_agent::runtime::Runtime::new(
            containers.clone(),
            PathBuf::from(SHOAL),
            self.cgroup_parent.clone(),
        ) {
            if let Ok(list) = runtime.list() {
                if let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    for c in list {
                        let _ = rt.block_on(runtime.remove(&c.id));
                    }
                }
            }
        }
        self.remove_networks();
        remove_cgroup_parent(&self.cgroup_parent);
        let _ = std::fs::remove_dir_all(self.secrets_root());
    }
}

impl TestDaemon {
    /// The links on the host whose names carry this daemon's network prefix (its bridges and
    /// veths).
    pub fn host_links(&self) -> Vec<String> {
        let links = std::process::Command::new("ip")
            .args(["-o", "link", "show"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        links
            .lines()
            .filter_map(|l| l.split(':').nth(1))
            .map(|n| n.trim().split('@').next().unwrap_or("").to_string())
            .filter(|n| n.contains(&self.net_prefix))
            .collect()
    }

    /// The network config the daemon runs with (see `spawn`).
    pub fn network_config(&self) -> shoal_agent::network::NetworkConfig {
        use shoal_agent::network::{AddressPool, Ipv4Net, NetworkConfig};
        let mut config =
            NetworkConfig::new(self.data_dir().join("network"), self.data_dir().join("run"));
        config.name_prefix = self.net_prefix.clone();
        config.nft_table = self.nft_table.clone();
        let base = Ipv4Net::new(std::net::Ipv4Addr::new(10, self.pool_octet, 0, 0), 17);
        config.pools = base
            .and_then(|b| AddressPool::new(b, 24))
            .into_iter()
            .collect();
        config
    }

    /// Releases every endpoint and removes every network the daemon made: veths, bridges,
    /// netns files, nftables tables; in the daemon's network namespace when it has one.
    fn remove_networks(&self) {
        let Some(netns) = &self.netns else {
            return self.remove_networks_here();
        };
        std::thread::scope(|s| {
            s.spawn(|| {
                // setns affects this thread only.
                match std::fs::File::open(netns) {
                    Ok(ns)
                        if nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET).is_ok() =>
                    {
                        self.remove_networks_here()
                    }
                    // The namespace is gone, and what was in it with it: only the netns
                    // files (mounts in this mount namespace) remain to remove.
                    _ => self.remove_netns_files(),
                }
            });
        });
    }

    fn remove_networks_here(&self) {
        let manager = shoal_agent::network::NetworkManager::open(self.network_config());
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build();
        if let (Ok(manager), Ok(rt)) = (manager, rt) {
            let state = manager.state();
            for id in state.containers.keys() {
                let _ = rt.block_on(manager.release_container(id));
            }
            for id in state.networks.keys() {
                let _ = rt.block_on(manager.remove_network(id));
            }
        }
        let ports = shoal_agent::ports::PortManager::open(shoal_agent::ports::PortConfig {
            state_dir: self.data_dir().join("ports"),
            nft_table: format!("{}-ports", self.nft_table),
        });
        if let Ok(ports) = ports {
            let _ = ports.remove_all();
        }
        self.remove_netns_files();
        // A link the state never recorded (the daemon killed between making a bridge or veth
        // and saving its state) carries the prefix all the same.
        for link in self.host_links() {
            let _ = std::process::Command::new("ip")
                .args(["link", "del", &link])
                .output();
        }
    }

    /// Netns files whose endpoint the state no longer knew (a daemon killed mid-attach).
    fn remove_netns_files(&self) {
        if let Ok(entries) = std::fs::read_dir(self.data_dir().join("run/netns")) {
            for e in entries.flatten() {
                let _ = shoal_agent::network::delete_netns_file(&e.path());
            }
        }
    }
}

/// Makes `command` enter the network namespace at `netns` (a `/run/netns/NAME` file) between
/// fork and exec; only the network namespace changes (unlike `ip netns exec`, which also
/// remounts /sys and so would hide the cgroup hierarchies).
pub fn enter_netns_on_exec(command: &mut Command, netns: &Path) {
    use std::os::unix::process::CommandExt;
    let ns = std::fs::File::open(netns)
        .unwrap_or_else(|e| panic!("open network namespace {}: {e}", netns.display()));
    // SAFETY: setns is async-signal-safe; `ns` lives in the closure until exec.
    unsafe {
        command.pre_exec(move || {
            nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET)
                .map_err(std::io::Error::from)
        });
    }
}

/// Removes `<hierarchy>/<parent>` in every cgroup hierarchy (v1 and v2), if empty.
pub fn remove_cgroup_parent(parent: &str) {
    for dir in cgroup_dirs(parent) {
        let _ = std::fs::remove_dir(&dir);
    }
}

/// Every existing `<hierarchy>/<parent>` directory.
pub fn cgroup_dirs(parent: &str) -> Vec<PathBuf> {
    let root = Path::new("/sys/fs/cgroup");
    let mut found = Vec::new();
    if root.join(parent).is_dir() {
        found.push(root.join(parent));
    }
    if let Ok(entries) = std::fs::read_dir(root) {
        for e in entries.flatten() {
            let dir = e.path().join(parent);
            if dir.is_dir() {
                found.push(dir);
            }
        }
    }
    found
}
