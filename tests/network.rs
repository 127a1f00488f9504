//! Privileged tests of the bridge and overlay networks (agent/src/network) with the real
//! NetworkManager.
//!
//! "Containers" here are netns files; traffic is a TCP listener in one namespace and a
//! connector in another, each on a thread that `setns`es into its namespace (no extra
//! packages). Every resource carries a random prefix and is removed by a guard, also on panic.
//! The only addresses used are in the test's own subnets (on its own bridges), on a veth pair
//! the test makes between the host namespace and an "outside" namespace of its own, and no
//! traffic leaves the machine. The overlay test runs two managers, each in a namespace of its
//! own that plays a node, joined by a veth pair; it pings with busybox (`busybox-static`). The tests run one at a time: they share the host's
//! `net.ipv4.ip_forward`, and Docker's `DOCKER-USER` chain when there is one.

mod common;

use std::collections::HashSet;
use std::fs::File;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use shoal_agent::network::{
    create_netns_file, delete_netns_file, firewall, AddrInfo, AddressPool, Ipv4Net, NetOps,
    NetworkConfig, NetworkManager, NetworkSpec, OverlayEntries, OverlayPeer, OverlaySpec,
    RealNetOps,
};

static SERIAL: Mutex<()> = Mutex::new(());

/// Everything one test makes, torn down on drop (also on panic).
struct Env {
    rt: tokio::runtime::Runtime,
    mgr: NetworkManager,
    ops: RealNetOps,
    prefix: String,
    table: String,
    dir: tempfile::TempDir,
    /// Netns files the test made itself (outside the manager).
    extra_ns: Vec<PathBuf>,
    /// Second octet of the test's pool, 10.<octet>.0.0/16.
    octet: u8,
    _serial: std::sync::MutexGuard<'static, ()>,
}

impl Env {
    fn new() -> Env {
        let serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        let r = common::random_u64();
        let prefix = format!("t{:04x}", r & 0xffff);
        let table = format!("shoaltest-{prefix}");
        let octet = 100 + ((r >> 16) % 150) as u8;
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = NetworkConfig::new(dir.path().join("data"), dir.path().join("run"));
        cfg.name_prefix = prefix.clone();
        cfg.nft_table = table.clone();
        cfg.pools = vec![AddressPool::new(
            Ipv4Net::new(Ipv4Addr::new(10, octet, 0, 0), 16).unwrap(),
            24,
        )
        .unwrap()];
        let mgr = NetworkManager::open(cfg).unwrap();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        Env {
            rt,
            mgr,
            ops: RealNetOps::new(),
            prefix,
            table,
            dir,
            extra_ns: Vec::new(),
            octet,
            _serial: serial,
        }
    }

    fn netns_dir(&self) -> PathBuf {
        self.dir.path().join("run/netns")
    }

    /// Host links whose name carries the test prefix.
    fn our_links(&self) -> Vec<String> {
        self.ops
            .list_links(None)
            .unwrap()
            .into_iter()
            .map(|l| l.name)
            .filter(|n| n.contains(&self.prefix))
            .collect()
    }

    /// Host addresses on a link of the test's or in its address ranges.
    fn our_addresses(&self) -> Vec<AddrInfo> {
        let pool = Ipv4Net::new(Ipv4Addr::new(10, self.octet, 0, 0), 16).unwrap();
        self.ops
            .list_addresses(None)
            .unwrap()
            .into_iter()
            .filter(|a| {
                a.link.contains(&self.prefix)
                    || pool.contains(a.addr)
                    || (a.addr.octets()[..3] == [198, 18, self.octet])
            })
            .collect()
    }

    /// A pair host `<prefix>o0` (198.18.X.1/30) ↔ `<prefix>o1` (198.18.X.2/30) in a netns of
    /// the test's own: a stand-in for "the outside world" that never leaves the machine.
    fn make_outside(&mut self) -> (PathBuf, Ipv4Addr, Ipv4Addr) {
        let ns = self.dir.path().join("outside");
        create_netns_file(&ns).unwrap();
        self.extra_ns.push(ns.clone());
        let (host, peer) = (format!("{}o0", self.prefix), format!("{}o1", self.prefix));
        let x = self.octet;
        let (a, b) = (Ipv4Addr::new(198, 18, x, 1), Ipv4Addr::new(198, 18, x, 2));
        self.ops.create_veth(&host, &peer, 1500).unwrap();
        self.ops.add_address(None, &host, a, 30).unwrap();
        self.ops.set_up(None, &host).unwrap();
        self.ops.move_to_netns(&peer, &ns).unwrap();
        self.ops.add_address(Some(&ns), &peer, b, 30).unwrap();
        self.ops.set_up(Some(&ns), &peer).unwrap();
        // A way back to every test subnet, so that only the firewall (not a missing route)
        // keeps an internal network's packets from getting an answer.
        self.ops.set_default_route(Some(&ns), a).unwrap();
        (ns, a, b)
    }

    /// Asserts that nothing with the test's prefix is left: links, addresses, nft tables,
    /// DOCKER-USER rules, netns files, mounts.
    fn assert_clean(&self) {
        // Both: a link whose message the netlink crates fail to parse (a bridge can be in such a
        // state for a while) is missing from a link dump, while its addresses still show.
        let (links, addrs) = (self.our_links(), self.our_addresses());
        assert!(
            links.is_empty() && addrs.is_empty(),
            "links left: {links:?}; addresses left: {addrs:?}"
        );
        let tables = self.ops.list_nft_tables().unwrap();
        assert!(
            !tables.iter().any(|(_, n)| n.starts_with(&self.table)),
            "nft tables left: {tables:?}"
        );
        if let Ok(o) = std::process::Command::new("iptables")
            .args(["-w", "-S", "DOCKER-USER"])
            .output()
        {
            let s = String::from_utf8_lossy(&o.stdout);
            assert!(!s.contains(&self.table), "DOCKER-USER rules left:\n{s}");
        }
        let left: Vec<_> = std::fs::read_dir(self.netns_dir())
            .map(|rd| rd.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        assert!(left.is_empty(), "netns files left: {left:?}");
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        let d = self.dir.path().to_string_lossy().to_string();
        assert!(!mounts.contains(&d), "mounts left under {d}");
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        // Through the manager first (that also restores ip_forward if it switched it on).
        let st = self.mgr.state();
        let mgr = self.mgr.clone();
        self.rt.block_on(async {
            for c in st.containers.keys() {
                let _ = mgr.release_container(c).await;
            }
            for n in st.networks.values() {
                let _ = mgr.remove_network(&n.id).await;
            }
        });
        // Then a sweep by prefix, whatever the manager thinks.
        for l in self.our_links() {
            let _ = self.ops.delete_link(None, &l);
        }
        let _ = self.ops.apply_nft(&firewall::ruleset(&self.table, &[]));
        let _ = self.ops.sync_docker_user(&self.table, &[]);
        if let Ok(rd) = std::fs::read_dir(self.netns_dir()) {
            for e in rd.flatten() {
                let _ = delete_netns_file(&e.path());
            }
        }
        for ns in &self.extra_ns {
            let _ = delete_netns_file(ns);
        }
    }
}

/// Runs `f` on a thread inside the network namespace of `ns`.
fn in_netns<T: Send + 'static>(ns: &Path, f: impl FnOnce() -> T + Send + 'static) -> T {
    let file = File::open(ns).unwrap();
    std::thread::spawn(move || {
        nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        f()
    })
    .join()
    .unwrap()
}

/// A TCP listener on `ip` inside `ns`; the thread returns the peer address of the first
/// connection, or None when none came within `wait`.
fn listen(
    ns: &Path,
    ip: Ipv4Addr,
    wait: Duration,
) -> (u16, std::thread::JoinHandle<Option<SocketAddr>>) {
    let file = File::open(ns).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let h = std::thread::spawn(move || {
        nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        let l = TcpListener::bind((ip, 0)).unwrap();
        l.set_nonblocking(true).unwrap();
        tx.send(l.local_addr().unwrap().port()).unwrap();
        let deadline = Instant::now() + wait;
        while Instant::now() < deadline {
            match l.accept() {
                Ok((_, peer)) => return Some(peer),
                Err(_) => std::thread::sleep(Duration::from_millis(10)),
            }
        }
        None
    });
    (rx.recv().unwrap(), h)
}

/// Whether a TCP connection from `ns` to `ip:port` succeeds within a second.
fn connects(ns: &Path, ip: Ipv4Addr, port: u16) -> bool {
    in_netns(ns, move || {
        TcpStream::connect_timeout(
            &SocketAddr::V4(SocketAddrV4::new(ip, port)),
            Duration::from_secs(1),
        )
        .is_ok()
    })
}

#[test]
fn bridge_networks_connect_and_isolate() {
    if !common::require_root() {
        return;
    }
    let env = Env::new();
    let m = env.mgr.clone();
    let (a, b, a1, a2, b1) = env.rt.block_on(async {
        let a = m.create_network(NetworkSpec::named("A")).await.unwrap();
        let b = m
            .create_network(NetworkSpec {
                mtu: Some(1400),
                ..NetworkSpec::named("B")
            })
            .await
            .unwrap();
        let a1 = m.attach("a1", "A", vec![], None).await.unwrap();
        let a2 = m.attach("a2", "A", vec!["db".into()], None).await.unwrap();
        let b1 = m.attach("b1", "B", vec![], None).await.unwrap();
        (a, b, a1, a2, b1)
    });
    assert!(a.bridge.starts_with(&env.prefix) && a.bridge.len() <= 15);
    assert!(!a.subnet.overlaps(&b.subnet));
    assert!(a.subnet.contains(a1.ip) && a.subnet.contains(a2.ip) && b.subnet.contains(b1.ip));
    assert_eq!(a1.ifname, "eth0");
    assert!(a1.netns_path.starts_with(env.netns_dir()));

    // Inside the container: lo, eth0 with the address, MAC, MTU, default route via gateway.
    let links = env.ops.list_links(Some(&a1.netns_path)).unwrap();
    let eth0 = links.iter().find(|l| l.name == "eth0").expect("eth0");
    assert!(eth0.up && eth0.mtu == 1500);
    assert_eq!(
        eth0.mac.map(shoal_agent::network::format_mac),
        Some(a1.mac.clone())
    );
    assert!(links.iter().any(|l| l.name == "lo" && l.up));
    let addrs = env.ops.list_addresses(Some(&a1.netns_path)).unwrap();
    assert!(addrs
        .iter()
        .any(|x| x.link == "eth0" && x.addr == a1.ip && x.prefix == 24));
    let host_veth = env
        .ops
        .list_links(None)
        .unwrap()
        .into_iter()
        .find(|l| l.name == a1.host_ifname)
        .expect("host veth");
    assert_eq!(host_veth.master.as_deref(), Some(a.bridge.as_str()));
    // Network B's MTU: on its bridge and inside the container.
    let b_eth0 = env.ops.list_links(Some(&b1.netns_path)).unwrap();
    assert_eq!(b_eth0.iter().find(|l| l.name == "eth0").unwrap().mtu, 1400);
    let host_links = env.ops.list_links(None).unwrap();
    let b_bridge = host_links.iter().find(|l| l.name == b.bridge).unwrap();
    assert_eq!((b_bridge.kind.as_str(), b_bridge.mtu), ("bridge", 1400));

    // a1 → a2: same network, reachable, no NAT in between.
    let (port, h) = listen(&a2.netns_path, a2.ip, Duration::from_secs(5));
    assert!(connects(&a1.netns_path, a2.ip, port), "a1 cannot reach a2");
    assert_eq!(h.join().unwrap().map(|p| p.ip()), Some(a1.ip.into()));
    // a2 → a1 too.
    let (port, h) = listen(&a1.netns_path, a1.ip, Duration::from_secs(5));
    assert!(connects(&a2.netns_path, a1.ip, port), "a2 cannot reach a1");
    assert!(h.join().unwrap().is_some());

    // a1 → b1: another network, dropped.
    let (port, h) = listen(&b1.netns_path, b1.ip, Duration::from_secs(2));
    let t = Instant::now();
    assert!(!connects(&a1.netns_path, b1.ip, port), "a1 reached b1");
    assert!(t.elapsed() < Duration::from_secs(3));
    assert_eq!(h.join().unwrap(), None);

    // Tear down through the API; nothing may be left.
    env.rt.block_on(async {
        assert!(
            m.remove_network("A").await.is_err(),
            "A still has endpoints"
        );
        m.detach("a2", "A").await.unwrap();
        for c in ["a1", "a2", "b1"] {
            m.release_container(c).await.unwrap();
        }
        m.remove_network("A").await.unwrap();
        m.remove_network("B").await.unwrap();
    });
    env.assert_clean();
}

#[test]
fn egress_is_masqueraded_and_internal_networks_are_closed() {
    if !common::require_root() {
        return;
    }
    let mut env = Env::new();
    let (outside, host_side, far) = env.make_outside();
    let m = env.mgr.clone();
    let (internal, n1, i1) = env.rt.block_on(async {
        m.create_network(NetworkSpec::named("pub")).await.unwrap();
        let internal = m
            .create_network(NetworkSpec {
                internal: true,
                ..NetworkSpec::named("priv")
            })
            .await
            .unwrap();
        let n1 = m.attach("n1", "pub", vec![], None).await.unwrap();
        let i1 = m.attach("i1", "priv", vec![], None).await.unwrap();
        (internal, n1, i1)
    });
    assert!(n1.default_route && !i1.default_route);

    // n1 → the outside namespace: forwarded by the host, source masqueraded to the host side
    // of the outside link.
    let (port, h) = listen(&outside, far, Duration::from_secs(5));
    assert!(connects(&n1.netns_path, far, port), "n1 cannot get out");
    assert_eq!(h.join().unwrap().map(|p| p.ip()), Some(host_side.into()));

    // i1 (internal): no default route, so no way out...
    let (port, h) = listen(&outside, far, Duration::from_secs(2));
    assert!(!connects(&i1.netns_path, far, port));
    assert_eq!(h.join().unwrap(), None);
    // ...and even with a route added by hand (a container with NET_ADMIN could), the
    // firewall drops it.
    env.ops
        .set_default_route(Some(&i1.netns_path), internal.gateway)
        .unwrap();
    let (port, h) = listen(&outside, far, Duration::from_secs(2));
    assert!(
        !connects(&i1.netns_path, far, port),
        "internal network got out"
    );
    assert_eq!(h.join().unwrap(), None);

    env.rt.block_on(async {
        m.release_container("n1").await.unwrap();
        m.release_container("i1").await.unwrap();
        m.remove_network("pub").await.unwrap();
        m.remove_network("priv").await.unwrap();
    });
    // The test's own outside pair goes too, then nothing may be left.
    env.ops
        .delete_link(None, &format!("{}o0", env.prefix))
        .unwrap();
    delete_netns_file(&outside).unwrap();
    env.extra_ns.clear();
    env.assert_clean();
}

/// Removing a link, a neighbour or a forwarding entry that is not there answers "nothing to
/// remove" (the kernel's ENODEV), not an error, and not a silent success on a link that exists.
#[test]
fn removing_what_is_gone_answers_false() {
    if !common::require_root() {
        return;
    }
    let env = Env::new();
    let missing = format!("{}gone", env.prefix);
    let ip = Ipv4Addr::new(10, env.octet, 9, 9);
    assert!(!env.ops.delete_link(None, &missing).unwrap());
    assert!(!env.ops.del_neighbour(&missing, ip).unwrap());
    assert!(!env.ops.del_fdb(&missing, [2, 0, 0, 0, 0, 1], ip).unwrap());
    // A link that exists is found and removed.
    let (a, b) = (format!("{}ga", env.prefix), format!("{}gb", env.prefix));
    env.ops.create_veth(&a, &b, 1500).unwrap();
    assert!(!env.ops.del_neighbour(&a, ip).unwrap());
    assert!(env.ops.delete_link(None, &a).unwrap());
    env.assert_clean();
}

#[test]
fn fifty_attachments_come_and_go_without_leaks() {
    if !common::require_root() {
        return;
    }
    let env = Env::new();
    let m = env.mgr.clone();
    env.rt.block_on(async {
        m.create_network(NetworkSpec::named("churn")).await.unwrap();
        m.create_network(NetworkSpec::named("other")).await.unwrap();
        let mut seen = HashSet::new();
        for i in 0..50 {
            let c = format!("c{i}");
            let a = m.attach(&c, "churn", vec![], None).await.unwrap();
            seen.insert(a.ip);
            if i % 5 == 0 {
                let b = m.attach(&c, "other", vec![], None).await.unwrap();
                assert_eq!(b.ifname, "eth1");
                assert!(!b.default_route);
                m.detach(&c, "other").await.unwrap();
            }
            m.release_container(&c).await.unwrap();
        }
        // Released addresses are not reused at once.
        assert_eq!(seen.len(), 50);
        // A restart: a new manager on the same state reconciles; a container that died while
        // the agent was away is cleaned up.
        m.attach("ghost", "churn", vec![], None).await.unwrap();
    });
    // And a link of ours that no state knows (a crash between creating it and saving).
    let stray = format!("v{}dead", env.prefix);
    env.ops
        .create_veth(&stray, &format!("c{}dead", env.prefix), 1500)
        .unwrap();
    let again = NetworkManager::open(env.mgr.config()).unwrap();
    let report = env.rt.block_on(again.reconcile(HashSet::new())).unwrap();
    assert_eq!(report.released_containers, ["ghost"]);
    assert!(report.recreated_bridges.is_empty());
    assert!(report.removed_links.contains(&stray), "{report:?}");
    env.rt.block_on(async {
        again.remove_network("churn").await.unwrap();
        again.remove_network("other").await.unwrap();
    });
    env.assert_clean();
}

/// Two simulated nodes for the overlay test: each a network namespace of the test's own
/// (joined by a veth pair, the underlay) with a NetworkManager whose "host" is that namespace.
/// Torn down on drop, also on panic: the managers' containers and networks, then the
/// namespaces (their links, vxlan devices and nft tables go with them).
struct TwoNodes {
    rt: tokio::runtime::Runtime,
    dir: tempfile::TempDir,
    /// (node netns file, its manager)
    nodes: Vec<(PathBuf, NetworkManager)>,
    prefix: String,
    octet: u8,
    _serial: std::sync::MutexGuard<'static, ()>,
}

impl TwoNodes {
    fn new() -> TwoNodes {
        let serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        let r = common::random_u64();
        let prefix = format!("t{:04x}", r & 0xffff);
        let octet = 100 + ((r >> 16) % 150) as u8;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let mut me = TwoNodes {
            rt,
            dir: tempfile::tempdir().unwrap(),
            nodes: Vec::new(),
            prefix,
            octet,
            _serial: serial,
        };
        for name in ["a", "b"] {
            let ns = me.dir.path().join(format!("node-{name}"));
            create_netns_file(&ns).unwrap();
            let mgr = NetworkManager::with_ops(me.config(name), RealNetOps::in_netns(&ns));
            me.nodes.push((ns, mgr.unwrap()));
        }
        // The underlay: u0 (198.18.X.1/24) in node a ↔ u1 (198.18.X.2/24) in node b.
        let (a, b) = (me.ops(0), me.ops(1));
        a.create_veth("u0", "u1", 1500).unwrap();
        a.move_to_netns("u1", &me.nodes[1].0).unwrap();
        a.add_address(None, "u0", me.vtep(0), 24).unwrap();
        a.set_up(None, "u0").unwrap();
        b.add_address(None, "u1", me.vtep(1), 24).unwrap();
        b.set_up(None, "u1").unwrap();
        me
    }

    fn config(&self, node: &str) -> NetworkConfig {
        let d = self.dir.path().join(node);
        let mut cfg = NetworkConfig::new(d.join("data"), d.join("run"));
        cfg.name_prefix = self.prefix.clone();
        cfg.nft_table = format!("shoaltest-{}", self.prefix);
        cfg
    }

    fn ops(&self, node: usize) -> RealNetOps {
        RealNetOps::in_netns(&self.nodes[node].0)
    }

    fn mgr(&self, node: usize) -> NetworkManager {
        self.nodes[node].1.clone()
    }

    /// The underlay address of node 0 or 1.
    fn vtep(&self, node: usize) -> Ipv4Addr {
        Ipv4Addr::new(198, 18, self.octet, 1 + node as u8)
    }
}

impl Drop for TwoNodes {
    fn drop(&mut self) {
        for (ns, mgr) in &self.nodes {
            let st = mgr.state();
            let mgr = mgr.clone();
            self.rt.block_on(async {
                for c in st.containers.keys() {
                    let _ = mgr.release_container(c).await;
                }
                for n in st.networks.values() {
                    let _ = mgr.remove_network(&n.id).await;
                }
            });
            if let Ok(rd) = std::fs::read_dir(mgr.config().run_dir.join("netns")) {
                for e in rd.flatten() {
                    let _ = delete_netns_file(&e.path());
                }
            }
            let _ = delete_netns_file(ns);
        }
    }
}

/// Whether one `ping` from the network namespace `ns` to `ip` gets an answer (busybox's
/// `ping`, run by a thread that has joined the namespace: the child inherits it).
fn pings(ns: &Path, ip: Ipv4Addr) -> bool {
    let target = ip.to_string();
    in_netns(ns, move || {
        std::process::Command::new("busybox")
            .args(["ping", "-c", "1", "-W", "1", &target])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .expect("run busybox ping (Debian package busybox-static)")
            .success()
    })
}

/// Pings until an answer comes, for up to 20 s (a loaded machine may be slow to start).
fn pings_within(ns: &Path, ip: Ipv4Addr) -> bool {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if pings(ns, ip) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}

#[test]
fn overlay_network_spans_two_nodes() {
    if !common::require_root() {
        return;
    }
    let nodes = TwoNodes::new();
    let (a, b) = (nodes.mgr(0), nodes.mgr(1));
    let x = nodes.octet;
    let subnet = Ipv4Net::new(Ipv4Addr::new(10, x, 0, 0), 24).unwrap();
    let vni = 1 + (common::random_u64() % 0xfffff) as u32;
    let spec = NetworkSpec {
        subnet: Some(subnet),
        gateway: Some(subnet.first_host()),
        overlay: Some(OverlaySpec { vni }),
        ..NetworkSpec::named("ov")
    };
    let (ip1, ip2) = (Ipv4Addr::new(10, x, 0, 2), Ipv4Addr::new(10, x, 0, 3));
    // c1 on node a and c2 on node b, the same network on both.
    let (net_a, c1, c2) = nodes.rt.block_on(async {
        let net_a = a.create_network(spec.clone()).await.unwrap();
        let net_b = b.create_network(spec.clone()).await.unwrap();
        assert_eq!(
            (net_a.gateway, net_a.mtu),
            (net_b.gateway, net_b.mtu),
            "one distributed gateway"
        );
        assert!(a.attach("c1", "ov", vec![], None).await.is_err());
        let c1 = a.attach("c1", "ov", vec![], Some(ip1)).await.unwrap();
        let c2 = b.attach("c2", "ov", vec![], Some(ip2)).await.unwrap();
        (net_a, c1, c2)
    });
    let vx = net_a.vxlan().unwrap();
    let links = nodes.ops(0).list_links(None).unwrap();
    let l = links.iter().find(|l| l.name == vx).expect("vxlan device");
    assert_eq!(l.kind, "vxlan");
    assert_eq!(l.master.as_deref(), Some(net_a.bridge.as_str()));
    assert!(l.up);
    let eth0 = nodes.ops(0).list_links(Some(&c1.netns_path)).unwrap();
    assert_eq!(eth0.iter().find(|l| l.name == "eth0").unwrap().mtu, 1450);

    // No peers: nothing reaches the other node.
    assert!(!pings(&c1.netns_path, ip2), "reached c2 without peers");

    let to_c2 = OverlayPeer {
        ip: ip2,
        vtep: nodes.vtep(1),
    };
    let to_c1 = OverlayPeer {
        ip: ip1,
        vtep: nodes.vtep(0),
    };
    nodes.rt.block_on(async {
        a.set_overlay_peers("ov", vec![to_c2]).await.unwrap();
        b.set_overlay_peers("ov", vec![to_c1]).await.unwrap();
    });
    assert!(pings_within(&c1.netns_path, ip2), "c1 cannot ping c2");
    assert!(pings_within(&c2.netns_path, ip1), "c2 cannot ping c1");
    // What the kernel holds: one FDB and one neighbour entry for the peer, nothing flooded.
    let want = OverlayEntries::of(&[to_c2].into());
    assert_eq!(nodes.ops(0).list_overlay_entries(&vx).unwrap(), want);

    // Node a's daemon restarts: its overlay device goes on working, and the resent (now
    // empty) peer set removes what the kernel held.
    let a2 = NetworkManager::with_ops(a.config(), nodes.ops(0)).unwrap();
    let live: HashSet<String> = ["c1".to_string()].into();
    let r = nodes.rt.block_on(a2.reconcile(live)).unwrap();
    assert!(
        r.removed_links.is_empty() && r.recreated_vxlans.is_empty(),
        "{r:?}"
    );
    assert!(pings_within(&c1.netns_path, ip2), "broken by the restart");
    nodes
        .rt
        .block_on(a2.set_overlay_peers("ov", vec![]))
        .unwrap();
    assert_eq!(
        nodes.ops(0).list_overlay_entries(&vx).unwrap(),
        OverlayEntries::default()
    );
    for _ in 0..2 {
        assert!(
            !pings(&c1.netns_path, ip2),
            "c1 reached c2 after its peer entry went"
        );
    }
    // And back.
    nodes
        .rt
        .block_on(a2.set_overlay_peers("ov", vec![to_c2]))
        .unwrap();
    assert!(pings_within(&c1.netns_path, ip2), "c1 cannot ping c2 again");

    // Tear down through the API: the vxlan device goes with the network.
    nodes.rt.block_on(async {
        a2.release_container("c1").await.unwrap();
        b.release_container("c2").await.unwrap();
        a2.remove_network("ov").await.unwrap();
        b.remove_network("ov").await.unwrap();
    });
    let left: Vec<String> = nodes
        .ops(0)
        .list_links(None)
        .unwrap()
        .into_iter()
        .map(|l| l.name)
        .filter(|n| n.contains(&nodes.prefix))
        .collect();
    assert!(left.is_empty(), "links left on node a: {left:?}");
}
