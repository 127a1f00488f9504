//! Test hosts: every node of a multi-node test is a real `shoal daemon` in a network namespace
//! of its own, so one host can be killed, frozen, cut off or restarted while the others go on.
//!
//! Layout (nothing touches this machine's own network namespace):
//!
//! ```text
//!   netns shl-<tag>-sw:  bridge br0 ── p1 ── p2 ── p3 ...      (the "switch")
//!                                       │     │     │   veth pairs
//!   netns shl-<tag>-h1:  eth0 198.18.X.11/24  │     │
//!   netns shl-<tag>-h2:              eth0 198.18.X.12/24 ...
//! ```
//!
//! `<tag>` and `X` are random per [`Lab`], so concurrent tests never share a name; the subnet
//! lies in 198.18.0.0/15 (set aside for tests), away from the daemons' own container pools
//! (10.<octet>.0.0/16). The daemons' managers listen on `<host ip>:4242`; the CLI reaches each
//! through its unix socket, which works across network namespaces. Cutting a host's link sets
//! its port on the switch down: its packets go nowhere, as with a pulled cable.
//!
//! Everything is removed when the [`Lab`] drops, also when the test panics: the daemons (and
//! their containers, networks, cgroups, data dirs, via [`TestDaemon`]'s guard) first, then the
//! namespaces, which takes every link in them along.

use std::net::Ipv4Addr;
use std::ops::{Deref, DerefMut};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::daemon::TestDaemon;

/// The manager port every host's daemon listens on (each host has its own addresses).
pub const MANAGER_PORT: u16 = 4242;

/// A set of test hosts on one switch.
pub struct Lab {
    tag: String,
    subnet: [u8; 3],
    /// Dropped before the namespaces (see `Drop`).
    hosts: Vec<Host>,
    /// Every namespace made so far, switch first: what `Drop` deletes.
    namespaces: Vec<String>,
    /// Environment variables every host's daemon gets (set before adding hosts).
    pub env: Vec<(String, String)>,
}

/// One test host: its namespace, address, and the daemon running in it.
pub struct Host {
    pub index: usize,
    pub netns: String,
    pub ip: Ipv4Addr,
    /// The host's port on the switch (in the switch's namespace).
    port: String,
    switch: String,
    pub daemon: TestDaemon,
}

impl Lab {
    /// An empty switch in a namespace of its own.
    pub fn new() -> Lab {
        let random = super::random_u64();
        let tag = format!("{:06x}", random & 0xff_ffff);
        let subnet = [198, 18 + ((random >> 24) & 1) as u8, (random >> 32) as u8];
        let mut lab = Lab {
            tag,
            subnet,
            hosts: Vec::new(),
            namespaces: Vec::new(),
            env: Vec::new(),
        };
        let switch = lab.switch();
        lab.add_netns(&switch);
        ip(&["-n", &switch, "link", "add", "br0", "type", "bridge"]);
        ip(&["-n", &switch, "link", "set", "br0", "up"]);
        lab
    }

    fn switch(&self) -> String {
        format!("shl-{}-sw", self.tag)
    }

    /// Creates a namespace and records it for removal first, so nothing leaks if a later
    /// step panics.
    fn add_netns(&mut self, name: &str) {
        ip(&["netns", "add", name]);
        self.namespaces.push(name.to_string());
        ip(&["-n", name, "link", "set", "lo", "up"]);
    }

    /// A new host on the switch, its link up, no daemon yet.
    fn add_link(&mut self) -> (usize, String, Ipv4Addr, String) {
        let index = self.hosts.len() + 1;
        let netns = format!("shl-{}-h{index}", self.tag);
        self.add_netns(&netns);
        let switch = self.switch();
        let port = format!("p{index}");
        ip(&[
            "-n", &switch, "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns",
            &netns,
        ]);
        ip(&["-n", &switch, "link", "set", &port, "master", "br0"]);
        ip(&["-n", &switch, "link", "set", &port, "up"]);
        let [a, b, c] = self.subnet;
        let addr = Ipv4Addr::new(a, b, c, 10 + index as u8);
        ip(&[
            "-n",
            &netns,
            "addr",
            "add",
            &format!("{addr}/24"),
            "dev",
            "eth0",
        ]);
        ip(&["-n", &netns, "link", "set", "eth0", "up"]);
        (index, netns, addr, port)
    }

    /// A host whose daemon makes (or, with `extra_args`, joins) a cluster.
    pub fn add_host(&mut self, extra_args: Vec<String>) -> &mut Host {
        let (index, netns, addr, port) = self.add_link();
        let daemon = TestDaemon::start_in_netns(
            PathBuf::from("/run/netns").join(&netns),
            format!("{addr}:{MANAGER_PORT}"),
            extra_args,
            self.env.clone(),
        );
        self.hosts.push(Host {
            index,
            netns,
            ip: addr,
            port,
            switch: self.switch(),
            daemon,
        });
        self.hosts.last_mut().expect("just pushed")
    }

    /// The first host: a one-manager cluster.
    pub fn add_first_manager(&mut self) -> &mut Host {
        self.add_host(Vec::new())
    }

    /// A host that joins through `via` (a host index) with the `role` token ("manager" or
    /// "worker").
    /// A manager and two workers, every node ready, busybox on each.
    #[allow(dead_code)] // shared by path; not every test file needs three hosts
    pub fn three_ready_nodes_with_busybox() -> Lab {
        let mut lab = Lab::new();
        lab.add_first_manager();
        lab.add_joined(0, "worker");
        lab.add_joined(0, "worker");
        for h in lab.hosts() {
            h.ok(&["image", "bootstrap", "busybox"]);
        }
        lab.wait_for("three ready nodes", Duration::from_secs(60), || {
            let nodes = lab.host(0).json(&["node", "ls", "--format", "json"]);
            nodes
                .as_array()
                .is_some_and(|n| n.iter().filter(|n| n["status"]["state"] == "ready").count() == 3)
        });
        lab
    }

    pub fn add_joined(&mut self, via: usize, role: &str) -> &mut Host {
        let seed = &self.hosts[via];
        let token = seed.ok(&["join-token", role, "-q"]).trim().to_string();
        let addr = seed.manager_addr();
        self.add_host(vec!["--join".into(), addr, "--token".into(), token])
    }

    /// The node id of host `i`, as the managers know it (by the address it comes from),
    /// asked through host `via`.
    pub fn node_id(&self, via: usize, i: usize) -> String {
        let nodes = self.host(via).json(&["node", "ls", "--format", "json"]);
        let ip = self.host(i).ip.to_string();
        nodes
            .as_array()
            .into_iter()
            .flatten()
            .find(|n| n["status"]["addr"] == ip.as_str())
            .and_then(|n| n["id"].as_str())
            .map(str::to_string)
            .unwrap_or_else(|| panic!("no node at {ip}: {nodes}"))
    }

    pub fn hosts(&self) -> &[Host] {
        &self.hosts
    }

    pub fn host(&self, i: usize) -> &Host {
        &self.hosts[i]
    }

    pub fn host_mut(&mut self, i: usize) -> &mut Host {
        &mut self.hosts[i]
    }

    /// The namespaces this lab made (for the leak check).
    pub fn namespaces(&self) -> Vec<String> {
        self.namespaces.clone()
    }

    /// Prints every host's daemon log: call before a failing assertion.
    pub fn logs(&self) -> String {
        self.hosts
            .iter()
            .map(|h| format!("===== host {} ({}) =====\n{}", h.index, h.ip, h.log()))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Polls `check` until it holds or `timeout` passes; on a timeout, panics with every
    /// host's log.
    pub fn wait_for(&self, what: &str, timeout: Duration, mut check: impl FnMut() -> bool) {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if check() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!(
            "timed out after {timeout:?} waiting for {what}\n{}",
            self.logs()
        );
    }
}

impl Default for Lab {
    fn default() -> Self {
        Lab::new()
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        // Daemons first: a namespace goes away only once no process is left in it.
        self.hosts.clear();
        for name in self.namespaces.iter().rev() {
            let _ = Command::new("ip")
                .args(["netns", "del", name])
                .stderr(Stdio::null())
                .status();
        }
    }
}

impl Host {
    /// Sets the host's port on the switch down: nothing goes in or out (a cut cable).
    pub fn cut_link(&self) {
        ip(&["-n", &self.switch, "link", "set", &self.port, "down"]);
    }

    /// Sets the host's port up again.
    pub fn restore_link(&self) {
        ip(&["-n", &self.switch, "link", "set", &self.port, "up"]);
    }

    /// SIGSTOP: the daemon freezes (its containers do not).
    pub fn freeze(&self) {
        self.daemon.signal(nix::sys::signal::Signal::SIGSTOP);
    }

    /// SIGCONT.
    pub fn thaw(&self) {
        self.daemon.signal(nix::sys::signal::Signal::SIGCONT);
    }

    /// `kill -9` of the daemon (its containers keep running).
    pub fn kill9(&mut self) {
        self.daemon.kill9();
    }

    /// Starts the daemon again on the same data dir, in the same namespace.
    pub fn restart(&mut self) {
        self.daemon.spawn();
    }
}

impl Deref for Host {
    type Target = TestDaemon;
    fn deref(&self) -> &TestDaemon {
        &self.daemon
    }
}

impl DerefMut for Host {
    fn deref_mut(&mut self) -> &mut TestDaemon {
        &mut self.daemon
    }
}

/// Runs `ip ARGS`, which must succeed.
fn ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run ip {args:?}: {e}"));
    assert!(
        out.status.success(),
        "ip {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
}

/// The network namespaces (`ip netns list`) whose names start with `prefix`.
pub fn namespaces_named(prefix: &str) -> Vec<String> {
    let out = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    out.lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with(prefix))
        .map(str::to_string)
        .collect()
}
