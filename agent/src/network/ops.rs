//! The host-networking operations the network manager needs, behind one small trait: the real
//! implementation ([`super::RealNetOps`]) talks netlink, mounts netns files and calls `nft`; the
//! fake ([`FakeNetOps`]) keeps everything in memory for unit tests.
//!
//! The trait is synchronous on purpose: every real operation runs on a dedicated thread (a
//! network-namespace switch must never touch a tokio worker), and the manager calls it from
//! `spawn_blocking`. `ns = None` means the namespace of the calling process (the host).

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use super::ipam::Ipv4Net;
use super::overlay::OverlayEntries;
use super::{format_mac, NetError};

/// A link as listed by [`NetOps::list_links`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinkInfo {
    pub index: u32,
    pub name: String,
    /// `bridge`, `veth`, `dummy`, …; empty when the kernel says nothing.
    pub kind: String,
    pub mtu: u32,
    /// The name of the bridge this link is enslaved to, if any.
    pub master: Option<String>,
    pub up: bool,
    pub mac: Option<[u8; 6]>,
}

/// An IPv4 address on a link, as listed by [`NetOps::list_addresses`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AddrInfo {
    pub link: String,
    pub addr: Ipv4Addr,
    pub prefix: u8,
}

/// Host networking operations. See the module docs.
/// A container's link on a bridge network: what [`NetOps::plug_veth`] makes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VethPlug {
    /// The host end, enslaved to `bridge`.
    pub host: String,
    /// The container end's temporary name in the host namespace.
    pub peer: String,
    pub bridge: String,
    /// The container's netns file, and the container end's name, MAC and address there.
    pub netns: PathBuf,
    pub ifname: String,
    pub mac: [u8; 6],
    pub mtu: u32,
    pub ip: Ipv4Addr,
    pub prefix: u8,
    /// The default route's gateway, if this link carries it.
    pub gateway: Option<Ipv4Addr>,
}

/// An overlay network's vxlan device: what [`NetOps::create_vxlan`] makes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VxlanLink {
    pub name: String,
    /// The VXLAN network identifier.
    pub vni: u32,
    /// UDP destination port (4789).
    pub port: u16,
    pub mtu: u32,
    /// The bridge it is enslaved to.
    pub bridge: String,
}

pub trait NetOps: Send + Sync + 'static {
    /// Makes the veth pair of `p` and plugs it in: the host end on the bridge (hairpin, up),
    /// the other moved into the netns, renamed, addressed and up, with the default route if
    /// asked. The default runs the single steps below, in this order.
    fn plug_veth(&self, p: &VethPlug) -> Result<(), NetError> {
        self.create_veth(&p.host, &p.peer, p.mtu)?;
        self.set_master(&p.host, &p.bridge)?;
        self.set_hairpin(&p.host)?;
        self.set_up(None, &p.host)?;
        self.move_to_netns(&p.peer, &p.netns)?;
        let ns = Some(p.netns.as_path());
        self.rename_link(ns, &p.peer, &p.ifname)?;
        self.set_mac(ns, &p.ifname, p.mac)?;
        self.set_mtu(ns, &p.ifname, p.mtu)?;
        self.add_address(ns, &p.ifname, p.ip, p.prefix)?;
        self.set_up(ns, &p.ifname)?;
        if let Some(gateway) = p.gateway {
            self.set_default_route(ns, gateway)?;
        }
        Ok(())
    }

    /// Creates a bridge with this MTU and sets it up.
    fn create_bridge(&self, name: &str, mtu: u32) -> Result<(), NetError>;
    /// Creates a vxlan device in the host namespace: no learning, ARP proxy on (ARP requests
    /// for remote addresses are answered from its neighbour table), no default remote (nothing
    /// flooded), enslaved to its bridge and up.
    fn create_vxlan(&self, v: &VxlanLink) -> Result<(), NetError>;
    /// Adds (or replaces) the FDB entry `mac` → tunnel endpoint `vtep` on vxlan device `dev`
    /// (`bridge fdb replace MAC dev DEV dst VTEP self permanent`).
    fn add_fdb(&self, dev: &str, mac: [u8; 6], vtep: Ipv4Addr) -> Result<(), NetError>;
    /// Deletes that FDB entry; `Ok(false)` when there was none.
    fn del_fdb(&self, dev: &str, mac: [u8; 6], vtep: Ipv4Addr) -> Result<bool, NetError>;
    /// Adds (or replaces) the permanent neighbour entry `ip` → `mac` on `dev`
    /// (`ip neigh replace IP lladdr MAC dev DEV nud permanent`).
    fn add_neighbour(&self, dev: &str, ip: Ipv4Addr, mac: [u8; 6]) -> Result<(), NetError>;
    /// Deletes the neighbour entry of `ip` on `dev`; `Ok(false)` when there was none.
    fn del_neighbour(&self, dev: &str, ip: Ipv4Addr) -> Result<bool, NetError>;
    /// The unicast FDB entries with a remote, and the neighbour entries, of vxlan device `dev`.
    fn list_overlay_entries(&self, dev: &str) -> Result<OverlayEntries, NetError>;
    /// Creates a veth pair `name` ↔ `peer` (both down) in the host namespace.
    fn create_veth(&self, name: &str, peer: &str, mtu: u32) -> Result<(), NetError>;
    /// Creates a dummy link (used by tests and diagnostics).
    fn create_dummy(&self, ns: Option<&Path>, name: &str) -> Result<(), NetError>;
    /// Enslaves `name` to bridge `master`.
    fn set_master(&self, name: &str, master: &str) -> Result<(), NetError>;
    /// Lets a bridge port send a frame back out of the port it came in on, so that a container
    /// reaches its own published port through a host address (Docker does the same).
    fn set_hairpin(&self, name: &str) -> Result<(), NetError>;
    /// Moves host link `name` into the namespace of the netns file `netns`.
    fn move_to_netns(&self, name: &str, netns: &Path) -> Result<(), NetError>;
    /// Renames a (down) link.
    fn rename_link(&self, ns: Option<&Path>, name: &str, new_name: &str) -> Result<(), NetError>;
    fn set_mtu(&self, ns: Option<&Path>, name: &str, mtu: u32) -> Result<(), NetError>;
    fn set_mac(&self, ns: Option<&Path>, name: &str, mac: [u8; 6]) -> Result<(), NetError>;
    fn set_up(&self, ns: Option<&Path>, name: &str) -> Result<(), NetError>;
    fn add_address(
        &self,
        ns: Option<&Path>,
        name: &str,
        addr: Ipv4Addr,
        prefix: u8,
    ) -> Result<(), NetError>;
    /// Adds (or replaces) the IPv4 default route via `gateway`.
    fn set_default_route(&self, ns: Option<&Path>, gateway: Ipv4Addr) -> Result<(), NetError>;
    /// Deletes a link (a veth takes its peer with it). `Ok(false)` when there was no such link.
    fn delete_link(&self, ns: Option<&Path>, name: &str) -> Result<bool, NetError>;
    fn list_links(&self, ns: Option<&Path>) -> Result<Vec<LinkInfo>, NetError>;
    fn list_addresses(&self, ns: Option<&Path>) -> Result<Vec<AddrInfo>, NetError>;
    /// Destinations of the IPv4 routes of the main table (the IPAM's "host routes").
    fn list_routes(&self, ns: Option<&Path>) -> Result<Vec<Ipv4Net>, NetError>;
    /// Creates a persistent network namespace bound to the (new) file `path`, with `lo` up.
    fn create_netns(&self, path: &Path) -> Result<(), NetError>;
    /// Unmounts and removes a netns file. `Ok(false)` when it did not exist.
    fn delete_netns(&self, path: &Path) -> Result<bool, NetError>;
    /// Loads an nftables script atomically (`nft -f`).
    fn apply_nft(&self, script: &str) -> Result<(), NetError>;
    /// Lists the nftables tables as `(family, name)`.
    fn list_nft_tables(&self) -> Result<Vec<(String, String)>, NetError>;
    /// Reads a sysctl by its dotted name (`net.ipv4.ip_forward`).
    fn read_sysctl(&self, key: &str) -> Result<String, NetError>;
    fn write_sysctl(&self, key: &str, value: &str) -> Result<(), NetError>;
    /// Makes the ACCEPT rules tagged `tag` in Docker's `DOCKER-USER` chain be exactly one
    /// `-i bridge` and one `-o bridge` rule per bridge of `bridges` (none when empty). A no-op when
    /// the chain does not exist. See `firewall` for why.
    fn sync_docker_user(&self, tag: &str, bridges: &[String]) -> Result<(), NetError>;
}

#[derive(Debug, Default, Clone)]
struct FakeNs {
    links: BTreeMap<String, LinkInfo>,
    /// The vxlan devices' settings, by name.
    vxlans: BTreeMap<String, VxlanLink>,
    /// FDB entries of vxlan devices: (device, MAC) → tunnel endpoint.
    fdb: BTreeMap<(String, [u8; 6]), Ipv4Addr>,
    /// Neighbour entries: (device, address) → MAC.
    neighbours: BTreeMap<(String, Ipv4Addr), [u8; 6]>,
    addrs: Vec<AddrInfo>,
    routes: Vec<Ipv4Net>,
    default_gw: Option<Ipv4Addr>,
}

/// Everything [`FakeNetOps`] holds; public so tests can look at it.
#[derive(Debug, Default, Clone)]
pub struct FakeState {
    host: FakeNs,
    netns: BTreeMap<PathBuf, FakeNs>,
    /// The last nft script applied.
    pub nft_script: String,
    pub nft_applies: usize,
    pub sysctls: BTreeMap<String, String>,
    pub docker_user: BTreeMap<String, Vec<String>>,
    /// Operations whose name is in here fail (to test rollback).
    pub fail_ops: Vec<&'static str>,
    /// Every FDB and neighbour change, in order: `fdb add DEV MAC VTEP`, `fdb del DEV MAC VTEP`,
    /// `neigh add DEV IP MAC`, `neigh del DEV IP`.
    pub overlay_log: Vec<String>,
    next_index: u32,
}

/// In-memory [`NetOps`] for unit tests.
#[derive(Debug, Default)]
pub struct FakeNetOps {
    pub state: Mutex<FakeState>,
}

impl FakeNetOps {
    pub fn new() -> Self {
        let f = Self::default();
        f.state
            .lock()
            .unwrap()
            .sysctls
            .insert("net.ipv4.ip_forward".into(), "0".into());
        f
    }

    /// Host routes the IPAM will see.
    pub fn add_host_route(&self, route: Ipv4Net) {
        self.state.lock().unwrap().host.routes.push(route);
    }

    /// The default gateway of a namespace, if any.
    pub fn default_gateway(&self, ns: Option<&Path>) -> Option<Ipv4Addr> {
        let s = self.state.lock().unwrap();
        match ns {
            None => s.host.default_gw,
            Some(p) => s.netns.get(p).and_then(|n| n.default_gw),
        }
    }

    /// A host vxlan device's settings, if it exists.
    pub fn vxlan(&self, name: &str) -> Option<VxlanLink> {
        self.state.lock().unwrap().host.vxlans.get(name).cloned()
    }

    /// The FDB entries of a host vxlan device: (MAC, tunnel endpoint).
    pub fn fdb(&self, dev: &str) -> Vec<([u8; 6], Ipv4Addr)> {
        let s = self.state.lock().unwrap();
        s.host
            .fdb
            .iter()
            .filter(|((d, _), _)| d == dev)
            .map(|((_, mac), vtep)| (*mac, *vtep))
            .collect()
    }

    /// The neighbour entries of a host link: (address, MAC).
    pub fn neighbours(&self, dev: &str) -> Vec<(Ipv4Addr, [u8; 6])> {
        let s = self.state.lock().unwrap();
        s.host
            .neighbours
            .iter()
            .filter(|((d, _), _)| d == dev)
            .map(|((_, ip), mac)| (*ip, *mac))
            .collect()
    }

    /// Number of netns files that exist.
    pub fn netns_count(&self) -> usize {
        self.state.lock().unwrap().netns.len()
    }

    fn with<T>(
        &self,
        op: &'static str,
        ns: Option<&Path>,
        f: impl FnOnce(&mut FakeNs, &mut u32) -> Result<T, NetError>,
    ) -> Result<T, NetError> {
        let mut s = self.state.lock().unwrap();
        if s.fail_ops.contains(&op) {
            return Err(NetError::Netlink(format!("fake failure of {op}")));
        }
        let s = &mut *s;
        let n = match ns {
            None => &mut s.host,
            Some(p) => s
                .netns
                .get_mut(p)
                .ok_or_else(|| NetError::NotFound(format!("netns {}", p.display())))?,
        };
        f(n, &mut s.next_index)
    }
}

impl FakeNetOps {
    /// Records a successful FDB or neighbour change in [`FakeState::overlay_log`].
    fn log<T>(&self, r: &Result<T, NetError>, what: String) {
        if r.is_ok() {
            self.state.lock().unwrap().overlay_log.push(what);
        }
    }
}

fn new_link(idx: &mut u32, name: &str, kind: &str, mtu: u32) -> LinkInfo {
    *idx += 1;
    LinkInfo {
        index: *idx,
        name: name.to_string(),
        kind: kind.to_string(),
        mtu,
        master: None,
        up: false,
        mac: None,
    }
}

fn exists(n: &FakeNs, name: &str) -> Result<(), NetError> {
    if n.links.contains_key(name) {
        Err(NetError::Netlink(format!("link {name} exists")))
    } else {
        Ok(())
    }
}

fn link<'a>(n: &'a mut FakeNs, name: &str) -> Result<&'a mut LinkInfo, NetError> {
    n.links
        .get_mut(name)
        .ok_or_else(|| NetError::NotFound(format!("link {name}")))
}

impl NetOps for FakeNetOps {
    fn create_bridge(&self, name: &str, mtu: u32) -> Result<(), NetError> {
        self.with("create_bridge", None, |n, idx| {
            exists(n, name)?;
            let mut l = new_link(idx, name, "bridge", mtu);
            l.up = true;
            n.links.insert(name.into(), l);
            Ok(())
        })
    }

    fn create_vxlan(&self, v: &VxlanLink) -> Result<(), NetError> {
        self.with("create_vxlan", None, |n, idx| {
            exists(n, &v.name)?;
            link(n, &v.bridge)?;
            if let Some(o) = n
                .vxlans
                .values()
                .find(|o| o.vni == v.vni && o.port == v.port)
            {
                return Err(NetError::Netlink(format!(
                    "vxlan {} already has VNI {}",
                    o.name, v.vni
                )));
            }
            let mut l = new_link(idx, &v.name, "vxlan", v.mtu);
            l.master = Some(v.bridge.clone());
            l.up = true;
            n.links.insert(v.name.clone(), l);
            n.vxlans.insert(v.name.clone(), v.clone());
            Ok(())
        })
    }

    fn add_fdb(&self, dev: &str, mac: [u8; 6], vtep: Ipv4Addr) -> Result<(), NetError> {
        let r = self.with("add_fdb", None, |n, _| {
            if !n.vxlans.contains_key(dev) {
                return Err(NetError::NotFound(format!("vxlan {dev}")));
            }
            n.fdb.insert((dev.to_string(), mac), vtep);
            Ok(())
        });
        self.log(&r, format!("fdb add {dev} {} {vtep}", format_mac(mac)));
        r
    }

    fn del_fdb(&self, dev: &str, mac: [u8; 6], vtep: Ipv4Addr) -> Result<bool, NetError> {
        let r = self.with("del_fdb", None, |n, _| {
            let key = (dev.to_string(), mac);
            if n.fdb.get(&key) == Some(&vtep) {
                n.fdb.remove(&key);
                return Ok(true);
            }
            Ok(false)
        });
        self.log(&r, format!("fdb del {dev} {} {vtep}", format_mac(mac)));
        r
    }

    fn add_neighbour(&self, dev: &str, ip: Ipv4Addr, mac: [u8; 6]) -> Result<(), NetError> {
        let r = self.with("add_neighbour", None, |n, _| {
            link(n, dev)?;
            n.neighbours.insert((dev.to_string(), ip), mac);
            Ok(())
        });
        self.log(&r, format!("neigh add {dev} {ip} {}", format_mac(mac)));
        r
    }

    fn del_neighbour(&self, dev: &str, ip: Ipv4Addr) -> Result<bool, NetError> {
        let r = self.with("del_neighbour", None, |n, _| {
            Ok(n.neighbours.remove(&(dev.to_string(), ip)).is_some())
        });
        self.log(&r, format!("neigh del {dev} {ip}"));
        r
    }

    fn list_overlay_entries(&self, dev: &str) -> Result<OverlayEntries, NetError> {
        self.with("list_overlay_entries", None, |n, _| {
            link(n, dev)?;
            Ok(OverlayEntries {
                fdb: n
                    .fdb
                    .iter()
                    .filter(|((d, _), _)| d == dev)
                    .map(|((_, mac), vtep)| (*mac, *vtep))
                    .collect(),
                neighbours: n
                    .neighbours
                    .iter()
                    .filter(|((d, _), _)| d == dev)
                    .map(|((_, ip), mac)| (*ip, *mac))
                    .collect(),
            })
        })
    }

    fn create_veth(&self, name: &str, peer: &str, mtu: u32) -> Result<(), NetError> {
        self.with("create_veth", None, |n, idx| {
            exists(n, name)?;
            exists(n, peer)?;
            // A pair takes the indices (even, even + 1): the peer of index i is i ^ 1.
            if *idx % 2 == 0 {
                *idx += 1;
            }
            let a = new_link(idx, name, "veth", mtu);
            let b = new_link(idx, peer, "veth", mtu);
            n.links.insert(name.into(), a);
            n.links.insert(peer.into(), b);
            Ok(())
        })
    }

    fn create_dummy(&self, ns: Option<&Path>, name: &str) -> Result<(), NetError> {
        self.with("create_dummy", ns, |n, idx| {
            exists(n, name)?;
            n.links
                .insert(name.into(), new_link(idx, name, "dummy", 1500));
            Ok(())
        })
    }

    fn set_master(&self, name: &str, master: &str) -> Result<(), NetError> {
        self.with("set_master", None, |n, _| {
            link(n, master)?;
            link(n, name)?.master = Some(master.to_string());
            Ok(())
        })
    }

    fn set_hairpin(&self, name: &str) -> Result<(), NetError> {
        self.with("set_hairpin", None, |n, _| {
            link(n, name)?;
            Ok(())
        })
    }

    fn move_to_netns(&self, name: &str, netns: &Path) -> Result<(), NetError> {
        let mut s = self.state.lock().unwrap();
        if s.fail_ops.contains(&"move_to_netns") {
            return Err(NetError::Netlink("fake failure of move_to_netns".into()));
        }
        let l = s
            .host
            .links
            .remove(name)
            .ok_or_else(|| NetError::NotFound(format!("link {name}")))?;
        let target = s
            .netns
            .get_mut(netns)
            .ok_or_else(|| NetError::NotFound(format!("netns {}", netns.display())))?;
        target.links.insert(name.into(), l);
        Ok(())
    }

    fn rename_link(&self, ns: Option<&Path>, name: &str, new_name: &str) -> Result<(), NetError> {
        self.with("rename_link", ns, |n, _| {
            exists(n, new_name)?;
            let mut l = n
                .links
                .remove(name)
                .ok_or_else(|| NetError::NotFound(format!("link {name}")))?;
            l.name = new_name.to_string();
            n.links.insert(new_name.into(), l);
            Ok(())
        })
    }

    fn set_mtu(&self, ns: Option<&Path>, name: &str, mtu: u32) -> Result<(), NetError> {
        self.with("set_mtu", ns, |n, _| {
            link(n, name)?.mtu = mtu;
            Ok(())
        })
    }

    fn set_mac(&self, ns: Option<&Path>, name: &str, mac: [u8; 6]) -> Result<(), NetError> {
        self.with("set_mac", ns, |n, _| {
            link(n, name)?.mac = Some(mac);
            Ok(())
        })
    }

    fn set_up(&self, ns: Option<&Path>, name: &str) -> Result<(), NetError> {
        self.with("set_up", ns, |n, _| {
            link(n, name)?.up = true;
            Ok(())
        })
    }

    fn add_address(
        &self,
        ns: Option<&Path>,
        name: &str,
        addr: Ipv4Addr,
        prefix: u8,
    ) -> Result<(), NetError> {
        self.with("add_address", ns, |n, _| {
            link(n, name)?;
            n.addrs.push(AddrInfo {
                link: name.to_string(),
                addr,
                prefix,
            });
            n.routes
                .push(Ipv4Net::new(addr, prefix).expect("prefix ≤ 32"));
            Ok(())
        })
    }

    fn set_default_route(&self, ns: Option<&Path>, gateway: Ipv4Addr) -> Result<(), NetError> {
        self.with("set_default_route", ns, |n, _| {
            n.default_gw = Some(gateway);
            Ok(())
        })
    }

    fn delete_link(&self, ns: Option<&Path>, name: &str) -> Result<bool, NetError> {
        // A veth takes its peer along, wherever the peer is.
        let mut s = self.state.lock().unwrap();
        if s.fail_ops.contains(&"delete_link") {
            return Err(NetError::Netlink("fake failure of delete_link".into()));
        }
        let s = &mut *s;
        let n = match ns {
            None => &mut s.host,
            Some(p) => match s.netns.get_mut(p) {
                Some(n) => n,
                None => return Ok(false),
            },
        };
        let Some(l) = n.links.remove(name) else {
            return Ok(false);
        };
        // Its addresses go, and the routes to their subnets.
        let gone: Vec<Ipv4Net> = n
            .addrs
            .iter()
            .filter(|a| a.link == name)
            .filter_map(|a| Ipv4Net::new(a.addr, a.prefix).ok())
            .collect();
        n.routes.retain(|r| !gone.contains(r));
        n.addrs.retain(|a| a.link != name);
        // A link's FDB and neighbour entries go with it; its ports are set free.
        n.vxlans.remove(name);
        n.fdb.retain(|(d, _), _| d != name);
        n.neighbours.retain(|(d, _), _| d != name);
        for port in n.links.values_mut() {
            if port.master.as_deref() == Some(name) {
                port.master = None;
            }
        }
        if l.kind == "veth" {
            let peer_idx = l.index ^ 1;
            for ns in std::iter::once(&mut s.host).chain(s.netns.values_mut()) {
                if let Some(peer) = ns
                    .links
                    .values()
                    .find(|p| p.index == peer_idx && p.kind == "veth")
                    .map(|p| p.name.clone())
                {
                    ns.links.remove(&peer);
                    let gone: Vec<_> = ns
                        .addrs
                        .iter()
                        .filter(|a| a.link == peer)
                        .map(|a| Ipv4Net::new(a.addr, a.prefix).unwrap())
                        .collect();
                    ns.addrs.retain(|a| a.link != peer);
                    ns.routes.retain(|r| !gone.contains(r));
                    if ns.addrs.is_empty() {
                        ns.default_gw = None;
                    }
                }
            }
        }
        Ok(true)
    }

    fn list_links(&self, ns: Option<&Path>) -> Result<Vec<LinkInfo>, NetError> {
        self.with("list_links", ns, |n, _| {
            Ok(n.links.values().cloned().collect())
        })
    }

    fn list_addresses(&self, ns: Option<&Path>) -> Result<Vec<AddrInfo>, NetError> {
        self.with("list_addresses", ns, |n, _| Ok(n.addrs.clone()))
    }

    fn list_routes(&self, ns: Option<&Path>) -> Result<Vec<Ipv4Net>, NetError> {
        self.with("list_routes", ns, |n, _| Ok(n.routes.clone()))
    }

    fn create_netns(&self, path: &Path) -> Result<(), NetError> {
        let mut s = self.state.lock().unwrap();
        if s.fail_ops.contains(&"create_netns") {
            return Err(NetError::Netlink("fake failure of create_netns".into()));
        }
        if s.netns.contains_key(path) {
            return Err(NetError::Invalid(format!("{} exists", path.display())));
        }
        s.next_index += 1;
        let mut lo = new_link(&mut 0, "lo", "", 65536);
        lo.up = true;
        let mut ns = FakeNs::default();
        ns.links.insert("lo".into(), lo);
        s.netns.insert(path.to_path_buf(), ns);
        Ok(())
    }

    fn delete_netns(&self, path: &Path) -> Result<bool, NetError> {
        Ok(self.state.lock().unwrap().netns.remove(path).is_some())
    }

    fn apply_nft(&self, script: &str) -> Result<(), NetError> {
        let mut s = self.state.lock().unwrap();
        if s.fail_ops.contains(&"apply_nft") {
            return Err(NetError::Firewall("fake failure of apply_nft".into()));
        }
        s.nft_script = script.to_string();
        s.nft_applies += 1;
        Ok(())
    }

    fn list_nft_tables(&self) -> Result<Vec<(String, String)>, NetError> {
        Ok(Vec::new())
    }

    fn read_sysctl(&self, key: &str) -> Result<String, NetError> {
        Ok(self
            .state
            .lock()
            .unwrap()
            .sysctls
            .get(key)
            .cloned()
            .unwrap_or_default())
    }

    fn write_sysctl(&self, key: &str, value: &str) -> Result<(), NetError> {
        self.state
            .lock()
            .unwrap()
            .sysctls
            .insert(key.into(), value.into());
        Ok(())
    }

    fn sync_docker_user(&self, tag: &str, bridges: &[String]) -> Result<(), NetError> {
        let mut s = self.state.lock().unwrap();
        if bridges.is_empty() {
            s.docker_user.remove(tag);
        } else {
            s.docker_user.insert(tag.into(), bridges.to_vec());
        }
        Ok(())
    }
}
