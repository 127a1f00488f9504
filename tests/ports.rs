//! Privileged tests of the published ports (agent/src/ports) with the real PortManager, over a
//! real NetworkManager network.
//!
//! "Containers" are netns files attached to a bridge network of the test's own (random prefix,
//! own pool, own nft tables); in each one a thread that `setns`es into it runs a TCP line echo
//! ("NAME:LINE") and a UDP responder ("NAME"). The host side connects to 127.0.0.1:PORT and to
//! the bridge's gateway address; containers connect through the gateway (hairpin). Nothing
//! leaves the machine. A guard removes everything, also on panic, and the tests check that
//! nothing is left (nft tables, links, netns files, port reservations). Tests run one at a time.

mod common;

use std::collections::HashSet;
use std::fs::File;
use std::io::{BufRead, BufReader, ErrorKind, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream, UdpSocket};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use shoal_agent::network::{
    delete_netns_file, firewall, AddressPool, Attachment, Ipv4Net, NetOps, NetworkConfig,
    NetworkManager, NetworkSpec, RealNetOps,
};
use shoal_agent::ports::{PortConfig, PortError, PortManager, PortMapping};

static SERIAL: Mutex<()> = Mutex::new(());

/// Everything one test makes, torn down on drop (also on panic).
struct Env {
    rt: tokio::runtime::Runtime,
    net: NetworkManager,
    ports: Option<PortManager>,
    ops: RealNetOps,
    prefix: String,
    table: String,
    ports_table: String,
    dir: tempfile::TempDir,
    stop: Arc<AtomicBool>,
    servers: Vec<JoinHandle<()>>,
    /// Second octet of the test's pool, 10.<octet>.0.0/16; also names its outside link.
    octet: u8,
    /// Netns files the test made itself (outside the network manager).
    extra_ns: Vec<std::path::PathBuf>,
    _serial: std::sync::MutexGuard<'static, ()>,
}

impl Env {
    fn new() -> Env {
        let serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        let r = common::random_u64();
        let prefix = format!("p{:04x}", r & 0xffff);
        let table = format!("shoaltest-{prefix}");
        let ports_table = format!("shoalpt-{prefix}");
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
        let net = NetworkManager::open(cfg).unwrap();
        let ports = PortManager::open(PortConfig {
            state_dir: dir.path().join("ports"),
            nft_table: ports_table.clone(),
        })
        .unwrap();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        Env {
            rt,
            net,
            ports: Some(ports),
            ops: RealNetOps::new(),
            prefix,
            table,
            ports_table,
            dir,
            stop: Arc::new(AtomicBool::new(false)),
            servers: Vec::new(),
            octet,
            extra_ns: Vec::new(),
            _serial: serial,
        }
    }

    fn pm(&self) -> &PortManager {
        self.ports.as_ref().unwrap()
    }

    fn port_config(&self) -> PortConfig {
        self.pm().config().clone()
    }

    /// Network "n" with containers `names`, each running the echo servers.
    fn containers(&mut self, names: &[&str]) -> (Ipv4Addr, Vec<Attachment>) {
        let m = self.net.clone();
        let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        let (gw, atts) = self.rt.block_on(async {
            let n = m.create_network(NetworkSpec::named("n")).await.unwrap();
            let mut atts = Vec::new();
            for c in &names {
                atts.push(m.attach(c, "n", vec![], None).await.unwrap());
            }
            (n.gateway, atts)
        });
        for (a, name) in atts.iter().zip(&names) {
            let h = serve(&a.netns_path, name.clone(), self.stop.clone());
            self.servers.push(h);
        }
        (gw, atts)
    }

    /// A pair host `<prefix>o0` (198.18.X.1/30) ↔ `<prefix>o1` (198.18.X.2/30) in a netns of
    /// the test's own, routed through the host: "another machine" that never leaves this one.
    fn make_outside(&mut self) -> (std::path::PathBuf, Ipv4Addr) {
        let ns = self.dir.path().join("outside");
        shoal_agent::network::create_netns_file(&ns).unwrap();
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
        self.ops.set_default_route(Some(&ns), a).unwrap();
        (ns, a)
    }

    fn assert_clean(&self) {
        let tables = self.ops.list_nft_tables().unwrap();
        assert!(
            !tables
                .iter()
                .any(|(_, n)| n.starts_with(&self.table) || n == &self.ports_table),
            "nft tables left: {tables:?}"
        );
        let links: Vec<String> = self
            .ops
            .list_links(None)
            .unwrap()
            .into_iter()
            .map(|l| l.name)
            .filter(|n| n.contains(&self.prefix))
            .collect();
        assert!(links.is_empty(), "links left: {links:?}");
        let left: Vec<_> = std::fs::read_dir(self.dir.path().join("run/netns"))
            .map(|rd| rd.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        assert!(left.is_empty(), "netns files left: {left:?}");
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for h in self.servers.drain(..) {
            let _ = h.join();
        }
        if let Some(pm) = self.ports.take() {
            let _ = pm.remove_all();
        }
        let _ = std::process::Command::new("nft")
            .args(["delete", "table", "ip", &self.ports_table])
            .stderr(std::process::Stdio::null())
            .status();
        let st = self.net.state();
        let mgr = self.net.clone();
        self.rt.block_on(async {
            for c in st.containers.keys() {
                let _ = mgr.release_container(c).await;
            }
            for n in st.networks.values() {
                let _ = mgr.remove_network(&n.id).await;
            }
        });
        for l in self.ops.list_links(None).unwrap_or_default() {
            if l.name.contains(&self.prefix) {
                let _ = self.ops.delete_link(None, &l.name);
            }
        }
        let _ = self.ops.apply_nft(&firewall::ruleset(&self.table, &[]));
        let _ = self.ops.sync_docker_user(&self.table, &[]);
        if let Ok(rd) = std::fs::read_dir(self.dir.path().join("run/netns")) {
            for e in rd.flatten() {
                let _ = delete_netns_file(&e.path());
            }
        }
        for ns in &self.extra_ns {
            let _ = delete_netns_file(ns);
        }
    }
}

const TCP_PORT: u16 = 80;
const UDP_PORT: u16 = 53;

/// In netns `ns`: a TCP server on :80 that answers each line with "NAME:LINE", and a UDP
/// server on :53 that answers each datagram with "NAME". Runs until `stop`.
fn serve(ns: &Path, name: String, stop: Arc<AtomicBool>) -> JoinHandle<()> {
    let file = File::open(ns).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let h = std::thread::spawn(move || {
        nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        let tcp = TcpListener::bind((Ipv4Addr::UNSPECIFIED, TCP_PORT)).unwrap();
        tcp.set_nonblocking(true).unwrap();
        let udp = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, UDP_PORT)).unwrap();
        udp.set_read_timeout(Some(Duration::from_millis(5)))
            .unwrap();
        tx.send(()).unwrap();
        let mut conns = Vec::new();
        let mut buf = [0u8; 1500];
        while !stop.load(Ordering::SeqCst) {
            match tcp.accept() {
                Ok((s, _)) => {
                    let (name, stop) = (name.clone(), stop.clone());
                    conns.push(std::thread::spawn(move || echo(s, &name, &stop)));
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                Err(e) => panic!("accept: {e}"),
            }
            if let Ok((_, peer)) = udp.recv_from(&mut buf) {
                let _ = udp.send_to(name.as_bytes(), peer);
            }
        }
        for c in conns {
            let _ = c.join();
        }
    });
    rx.recv().unwrap();
    h
}

fn echo(s: TcpStream, name: &str, stop: &AtomicBool) {
    s.set_nonblocking(false).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
    let mut w = s.try_clone().unwrap();
    let mut r = BufReader::new(s);
    let mut line = String::new();
    while !stop.load(Ordering::SeqCst) {
        match r.read_line(&mut line) {
            Ok(0) => return,
            Ok(_) => {
                if w.write_all(format!("{name}:{line}").as_bytes()).is_err() {
                    return;
                }
                line.clear();
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => return,
        }
    }
}

/// A client connection with line requests.
struct Conn(BufReader<TcpStream>);

impl Conn {
    fn open(ip: Ipv4Addr, port: u16) -> std::io::Result<Conn> {
        let s = TcpStream::connect_timeout(
            &SocketAddr::V4(SocketAddrV4::new(ip, port)),
            Duration::from_secs(2),
        )?;
        s.set_read_timeout(Some(Duration::from_secs(2)))?;
        Ok(Conn(BufReader::new(s)))
    }

    /// Sends `msg`, returns the server's name from the "NAME:msg" answer.
    fn ask(&mut self, msg: &str) -> String {
        self.0
            .get_mut()
            .write_all(format!("{msg}\n").as_bytes())
            .unwrap();
        let mut line = String::new();
        self.0.read_line(&mut line).unwrap();
        let (name, rest) = line.trim_end().split_once(':').expect("NAME:LINE");
        assert_eq!(rest, msg);
        name.to_string()
    }
}

/// Which container answers a fresh connection to `ip:port`.
fn who(ip: Ipv4Addr, port: u16) -> String {
    Conn::open(ip, port)
        .unwrap_or_else(|e| panic!("connect {ip}:{port}: {e}"))
        .ask("hello")
}

/// The same from inside netns `ns`.
fn who_from(ns: &Path, ip: Ipv4Addr, port: u16) -> String {
    let file = File::open(ns).unwrap();
    std::thread::spawn(move || {
        nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        who(ip, port)
    })
    .join()
    .unwrap()
}

fn refused(ip: Ipv4Addr, port: u16) -> bool {
    match Conn::open(ip, port) {
        Err(e) => e.kind() == ErrorKind::ConnectionRefused,
        Ok(_) => false,
    }
}

/// Which container answers a UDP datagram to `ip:port`.
fn who_udp(ip: Ipv4Addr, port: u16) -> String {
    let s = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let mut buf = [0u8; 64];
    for _ in 0..4 {
        s.send_to(b"q", (ip, port)).unwrap();
        if let Ok(n) = s.recv(&mut buf) {
            return String::from_utf8_lossy(&buf[..n]).to_string();
        }
    }
    panic!("no UDP answer from {ip}:{port}");
}

/// A port that is free right now on the host (TCP and UDP).
fn free_port() -> u16 {
    loop {
        let l = TcpListener::bind((Ipv4Addr::UNSPECIFIED, 0)).unwrap();
        let p = l.local_addr().unwrap().port();
        if UdpSocket::bind((Ipv4Addr::UNSPECIFIED, p)).is_ok() {
            return p;
        }
    }
}

fn bindable(port: u16) -> bool {
    TcpListener::bind((Ipv4Addr::UNSPECIFIED, port)).is_ok()
}

#[test]
fn published_ports_answer_switch_and_go() {
    if !common::require_root() {
        return;
    }
    let mut env = Env::new();
    let (gw, atts) = env.containers(&["c1", "c2"]);
    let (c1, c2) = (&atts[0], &atts[1]);
    let pm = env.pm().clone();
    let udp_port = free_port();
    let out = pm
        .publish(
            "web",
            &[
                PortMapping::tcp(0, TCP_PORT),
                PortMapping::udp(udp_port, UDP_PORT),
            ],
            &[c1.ip],
        )
        .unwrap();
    let port = out[0].host_port;
    assert!(port >= 1024, "random port {port}");
    assert_eq!(out[1], PortMapping::udp(udp_port, UDP_PORT));
    let table = std::process::Command::new("nft")
        .args(["list", "table", "ip", &env.ports_table])
        .output()
        .unwrap();
    eprintln!("{}", String::from_utf8_lossy(&table.stdout));

    // From the host: loopback and the bridge's address; TCP and UDP.
    assert_eq!(who(Ipv4Addr::LOCALHOST, port), "c1");
    assert_eq!(who(gw, port), "c1");
    assert_eq!(who_udp(Ipv4Addr::LOCALHOST, udp_port), "c1");
    assert_eq!(who_udp(gw, udp_port), "c1");
    // Hairpin: another container, and the backend itself, through the host's address.
    assert_eq!(who_from(&c2.netns_path, gw, port), "c1");
    // Another machine, through the host's address on the link to it (prerouting + forward).
    let (outside, host_addr) = env.make_outside();
    assert_eq!(who(host_addr, port), "c1");
    assert_eq!(who_from(&outside, host_addr, port), "c1");
    // The backend itself: with br_netfilter loaded (bridge-nf-call-iptables=1, as on hosts
    // where Docker runs), the DNAT happens in the bridge path and the frame goes back out the
    // port it came in by, which a bridge only does with hairpin mode on that port (Docker sets
    // it on every container's veth when userland-proxy=false). The network layer does not set
    // it yet, so the test does it for c1.
    let hairpin = format!("/sys/class/net/{}/brport/hairpin_mode", c1.host_ifname);
    std::fs::write(&hairpin, "1").unwrap();
    assert_eq!(who_from(&c1.netns_path, gw, port), "c1");
    // The reservation: a host process cannot take the port.
    assert!(!bindable(port));

    // Conflicts: another key on the port; a port a host process listens on. Nothing changes.
    let e = pm
        .publish("other", &[PortMapping::tcp(port, 81)], &[c2.ip])
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        format!("port {port}/tcp is already allocated")
    );
    let squatter = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let busy = squatter.local_addr().unwrap().port();
    let e = pm
        .publish("other", &[PortMapping::tcp(busy, 80)], &[c2.ip])
        .unwrap_err();
    assert!(matches!(e, PortError::InUse { .. }), "{e}");
    assert!(
        e.to_string()
            .starts_with(&format!("port {busy}/tcp is already in use on the host")),
        "{e}"
    );
    drop(squatter);
    assert_eq!(pm.list().len(), 1);

    // Blue-green: an established connection to c1 survives the switch to c2 and keeps
    // talking to c1; new connections go to c2.
    let mut old = Conn::open(Ipv4Addr::LOCALHOST, port).unwrap();
    assert_eq!(old.ask("before"), "c1");
    pm.set_backends("web", &[c2.ip]).unwrap();
    for _ in 0..3 {
        assert_eq!(who(Ipv4Addr::LOCALHOST, port), "c2");
    }
    assert_eq!(who(gw, port), "c2");
    assert_eq!(who_udp(Ipv4Addr::LOCALHOST, udp_port), "c2");
    assert_eq!(old.ask("after"), "c1");
    assert_eq!(old.ask("still"), "c1");
    drop(old);

    // Both backends: new connections are spread over the two.
    pm.set_backends("web", &[c1.ip, c2.ip]).unwrap();
    let seen: HashSet<String> = (0..6).map(|_| who(Ipv4Addr::LOCALHOST, port)).collect();
    assert_eq!(seen, HashSet::from(["c1".to_string(), "c2".to_string()]));

    // No backends: the port stays reserved and refuses.
    pm.set_backends("web", &[]).unwrap();
    assert!(refused(Ipv4Addr::LOCALHOST, port));
    assert!(!bindable(port));

    // Unpublish: refused, and the port is free again.
    pm.set_backends("web", &[c1.ip]).unwrap();
    assert_eq!(who(Ipv4Addr::LOCALHOST, port), "c1");
    pm.unpublish("web").unwrap();
    assert!(refused(Ipv4Addr::LOCALHOST, port));
    assert!(refused(gw, port));
    assert!(bindable(port));
    assert!(UdpSocket::bind((Ipv4Addr::UNSPECIFIED, udp_port)).is_ok());
    assert!(pm.list().is_empty());

    pm.remove_all().unwrap();
    env.ports.take();
    env.stop.store(true, Ordering::SeqCst);
    for h in env.servers.drain(..) {
        h.join().unwrap();
    }
    env.ops
        .delete_link(None, &format!("{}o0", env.prefix))
        .unwrap();
    delete_netns_file(&outside).unwrap();
    env.extra_ns.clear();
    let net = env.net.clone();
    env.rt.block_on(async {
        net.release_container("c1").await.unwrap();
        net.release_container("c2").await.unwrap();
        net.remove_network("n").await.unwrap();
    });
    env.assert_clean();
}

#[test]
fn restart_keeps_ports_and_reconcile_drops_stale_keys() {
    if !common::require_root() {
        return;
    }
    let mut env = Env::new();
    let (gw, atts) = env.containers(&["k1"]);
    let k1 = atts[0].ip;
    let pm = env.pm().clone();
    let keep = pm
        .publish("keep", &[PortMapping::tcp(0, TCP_PORT)], &[k1])
        .unwrap()[0]
        .host_port;
    let gone = pm
        .publish("gone", &[PortMapping::tcp(0, TCP_PORT)], &[k1])
        .unwrap()[0]
        .host_port;
    assert_ne!(keep, gone);
    assert_eq!(who(Ipv4Addr::LOCALHOST, keep), "k1");

    // The "daemon" stops: its reservations go, the kernel's rules stay and keep answering.
    let cfg = env.port_config();
    drop(pm);
    env.ports.take();
    assert!(bindable(keep));
    assert_eq!(who(Ipv4Addr::LOCALHOST, keep), "k1");
    assert_eq!(who(gw, gone), "k1");

    // A new manager on the same state: "gone" is not live any more.
    env.ports = Some(PortManager::open(cfg).unwrap());
    let pm = env.pm().clone();
    let report = pm.reconcile(&HashSet::from(["keep".to_string()])).unwrap();
    assert_eq!(report.removed_keys, ["gone"]);
    assert!(report.unreserved.is_empty(), "{report:?}");
    assert_eq!(who(Ipv4Addr::LOCALHOST, keep), "k1");
    assert!(!bindable(keep), "reservation not taken again");
    assert!(refused(Ipv4Addr::LOCALHOST, gone));
    assert!(bindable(gone));
    // Republishing the key keeps its random port.
    let again = pm
        .publish("keep", &[PortMapping::tcp(0, TCP_PORT)], &[k1])
        .unwrap();
    assert_eq!(again[0].host_port, keep);

    pm.remove_all().unwrap();
    assert!(bindable(keep));
    assert!(refused(Ipv4Addr::LOCALHOST, keep));
    env.ports.take();
    env.stop.store(true, Ordering::SeqCst);
    for h in env.servers.drain(..) {
        h.join().unwrap();
    }
    let net = env.net.clone();
    env.rt.block_on(async {
        net.release_container("k1").await.unwrap();
        net.remove_network("n").await.unwrap();
    });
    env.assert_clean();
}
