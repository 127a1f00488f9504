//! The real [`NetOps`]: rtnetlink for links, addresses, routes, FDB and neighbour entries;
//! netns files; `nft`; `iptables` for Docker's `DOCKER-USER` chain; sysctls under `/proc/sys`.
//! "The host" is the caller's network namespace, or the one given to [`RealNetOps::in_netns`].
//!
//! A netlink socket belongs to the network namespace of the thread that opened it. So every
//! operation runs on a fresh, dedicated `std::thread` that first `setns`es into the target
//! namespace (when there is one), then opens the socket and drives rtnetlink on a
//! current-thread tokio runtime of its own. Threads, never fork; the namespace switch never
//! touches a thread of the daemon's runtime. The calls block: call them from `spawn_blocking`.

use std::fs::File;
use std::future::Future;
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use futures::TryStreamExt;
use nix::sched::CloneFlags;
use rtnetlink::packet_route::address::AddressAttribute;
use rtnetlink::packet_route::link::{LinkAttribute, LinkFlags, LinkInfo as NlLinkInfo};
use rtnetlink::packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use rtnetlink::packet_route::route::{RouteAddress, RouteAttribute, RouteHeader};
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::{
    Handle, LinkBridge, LinkDummy, LinkUnspec, LinkVeth, LinkVxlan, RouteMessageBuilder,
};

use super::ipam::Ipv4Net;
use super::ops::{AddrInfo, LinkInfo, NetOps, VethPlug, VxlanLink};
use super::overlay::OverlayEntries;
use super::NetError;

/// Host networking for real. Cheap to create and clone.
#[derive(Debug, Default, Clone)]
pub struct RealNetOps {
    /// The network namespace that plays "the host" (`ns = None`); the caller's when unset.
    host_ns: Option<PathBuf>,
}

impl RealNetOps {
    /// Operations on the caller's network namespace as the host.
    pub fn new() -> Self {
        Self::default()
    }

    /// Operations that take the network namespace bound to the file `netns` as the host: its
    /// links, routes, nftables, sysctls and `iptables`. Lets one process run a network manager
    /// per namespace (a test's simulated nodes), however its threads are scheduled.
    pub fn in_netns(netns: impl Into<PathBuf>) -> Self {
        Self {
            host_ns: Some(netns.into()),
        }
    }

    /// The namespace of an operation: `ns`, else the host's.
    fn ns<'a>(&'a self, ns: Option<&'a Path>) -> Option<&'a Path> {
        ns.or(self.host_ns.as_deref())
    }

    /// Runs `f` (a command, a /proc/sys access: both follow the calling thread's namespace) in
    /// the host namespace: on a thread of its own that `setns`es there when the host is not the
    /// caller's namespace, else right here.
    fn in_host<T, F>(&self, f: F) -> Result<T, NetError>
    where
        T: Send + 'static,
        F: FnOnce() -> Result<T, NetError> + Send + 'static,
    {
        let Some(ns) = &self.host_ns else {
            return f();
        };
        let file = File::open(ns).map_err(io_err(format!("open netns {}", ns.display())))?;
        std::thread::Builder::new()
            .name("shoal-netns".into())
            .spawn(move || {
                nix::sched::setns(&file, CloneFlags::CLONE_NEWNET)
                    .map_err(|e| NetError::Netlink(format!("setns: {e}")))?;
                f()
            })
            .map_err(io_err("spawn netns thread"))?
            .join()
            .map_err(|_| NetError::Netlink("netns thread panicked".into()))?
    }
}

fn nl(e: rtnetlink::Error) -> NetError {
    NetError::Netlink(e.to_string())
}

fn io_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> NetError {
    let what = what.into();
    move |source| NetError::Io { what, source }
}

fn is_errno(e: &rtnetlink::Error, errno: i32) -> bool {
    matches!(e, rtnetlink::Error::NetlinkError(m) if m.raw_code() == -errno)
}

/// A deletion's result: `Ok(false)` when there was nothing to delete.
fn gone_is_ok(r: Result<(), rtnetlink::Error>) -> Result<bool, NetError> {
    match r {
        Ok(()) => Ok(true),
        Err(e) if is_errno(&e, libc::ENOENT) || is_errno(&e, libc::ENODEV) => Ok(false),
        Err(e) => Err(nl(e)),
    }
}

/// An IPv4 neighbour or FDB destination (AF_BRIDGE dumps carry it as raw bytes).
fn ipv4_of(a: &NeighbourAddress) -> Option<Ipv4Addr> {
    match a {
        NeighbourAddress::Inet(v) => Some(*v),
        NeighbourAddress::Other(b) => <[u8; 4]>::try_from(b.as_slice()).ok().map(Ipv4Addr::from),
        _ => None,
    }
}

/// Runs `f` with an rtnetlink handle opened inside `ns` (or the caller's namespace), on a
/// dedicated thread.
fn run_in<T, F, Fut>(ns: Option<&Path>, f: F) -> Result<T, NetError>
where
    T: Send + 'static,
    F: FnOnce(Handle) -> Fut + Send + 'static,
    Fut: Future<Output = Result<T, NetError>>,
{
    let ns_file = ns
        .map(|p| File::open(p).map_err(io_err(format!("open netns {}", p.display()))))
        .transpose()?;
    std::thread::Builder::new()
        .name("shoal-netns".into())
        .spawn(move || {
            if let Some(file) = ns_file {
                nix::sched::setns(&file, CloneFlags::CLONE_NEWNET)
                    .map_err(|e| NetError::Netlink(format!("setns: {e}")))?;
            }
            block_on_netlink(f)
        })
        .map_err(io_err("spawn netns thread"))?
        .join()
        .map_err(|_| NetError::Netlink("netns thread panicked".into()))?
}

/// Opens a netlink connection in the current thread's namespace and runs `f` on a fresh
/// current-thread runtime.
fn block_on_netlink<T, F, Fut>(f: F) -> Result<T, NetError>
where
    F: FnOnce(Handle) -> Fut,
    Fut: Future<Output = Result<T, NetError>>,
{
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .map_err(io_err("tokio runtime"))?;
    rt.block_on(async move {
        let (conn, handle, _) = rtnetlink::new_connection().map_err(io_err("netlink socket"))?;
        let task = tokio::spawn(conn);
        let r = f(handle).await;
        task.abort();
        r
    })
}

/// The index of the link called `name`; `None` when the kernel says there is none.
async fn index_of(handle: &Handle, name: &str) -> Result<Option<u32>, NetError> {
    let mut s = handle.link().get().match_name(name.to_string()).execute();
    match s.try_next().await {
        Ok(Some(m)) => Ok(Some(m.header.index)),
        // A missing link is answered ENODEV: an answer with no message means the netlink
        // crates dropped one they could not decode. The link may well exist; saying it does
        // not would leave it behind.
        Ok(None) => Err(NetError::Netlink(format!(
            "the kernel's answer about link {name} could not be decoded (see the daemon log)"
        ))),
        Err(e) if is_errno(&e, libc::ENODEV) => Ok(None),
        Err(e) => Err(nl(e)),
    }
}

async fn must_index(handle: &Handle, name: &str) -> Result<u32, NetError> {
    index_of(handle, name)
        .await?
        .ok_or_else(|| NetError::NotFound(format!("link {name}")))
}

async fn set_link(
    handle: Handle,
    name: String,
    f: impl FnOnce(
        rtnetlink::LinkMessageBuilder<LinkUnspec>,
    ) -> rtnetlink::LinkMessageBuilder<LinkUnspec>,
) -> Result<(), NetError> {
    let idx = must_index(&handle, &name).await?;
    let msg = f(LinkUnspec::new_with_index(idx)).build();
    handle.link().set(msg).execute().await.map_err(nl)
}

async fn links(handle: &Handle) -> Result<Vec<LinkInfo>, NetError> {
    let mut out = Vec::new();
    let mut masters = Vec::new();
    let mut s = handle.link().get().execute();
    while let Some(m) = s.try_next().await.map_err(nl)? {
        let mut l = LinkInfo {
            index: m.header.index,
            name: String::new(),
            kind: String::new(),
            mtu: 0,
            master: None,
            up: m.header.flags.contains(LinkFlags::Up),
            mac: None,
        };
        let mut master = None;
        for a in &m.attributes {
            match a {
                LinkAttribute::IfName(n) => l.name = n.clone(),
                LinkAttribute::Mtu(v) => l.mtu = *v,
                LinkAttribute::Controller(i) => master = Some(*i),
                LinkAttribute::Address(mac) if mac.len() == 6 => {
                    l.mac = Some(mac.as_slice().try_into().expect("6 bytes"))
                }
                LinkAttribute::LinkInfo(infos) => {
                    for i in infos {
                        if let NlLinkInfo::Kind(k) = i {
                            l.kind = k.to_string();
                        }
                    }
                }
                _ => {}
            }
        }
        masters.push(master);
        out.push(l);
    }
    let names: Vec<(u32, String)> = out.iter().map(|l| (l.index, l.name.clone())).collect();
    for (l, m) in out.iter_mut().zip(masters) {
        l.master = m.and_then(|m| names.iter().find(|(i, _)| *i == m).map(|(_, n)| n.clone()));
    }
    Ok(out)
}

fn sysctl_path(key: &str) -> PathBuf {
    PathBuf::from("/proc/sys").join(key.replace('.', "/"))
}

/// Sets a bridge port's hairpin mode over netlink (`ip link set NAME type bridge_slave hairpin
/// on`), not /sys/class/net: sysfs shows the network namespace it was mounted in, which is not
/// this daemon's when it runs in a namespace of its own.
async fn hairpin_on(h: Handle, name: String) -> Result<(), NetError> {
    use rtnetlink::packet_route::link::{InfoBridgePort, InfoPortData, InfoPortKind};
    set_link(h, name, |b| {
        b.set_port_kind(InfoPortKind::Bridge)
            .set_port_data(InfoPortData::BridgePort(vec![InfoBridgePort::HairpinMode(
                true,
            )]))
    })
    .await
}

impl NetOps for RealNetOps {
    /// One thread, one runtime and two netlink connections (host, then container namespace)
    /// for the whole plug; the container end is born in the container's namespace with its
    /// name, MAC and MTU (no move, no rename). A thread and a connection per step, and moving
    /// the link between namespaces, made the plug cost tens of milliseconds.
    fn plug_veth(&self, p: &VethPlug) -> Result<(), NetError> {
        use rtnetlink::packet_route::link::{InfoData, InfoKind, InfoVeth};
        use rtnetlink::LinkMessageBuilder;
        let netns =
            File::open(&p.netns).map_err(io_err(format!("open netns {}", p.netns.display())))?;
        let host = self
            .host_ns
            .as_ref()
            .map(|h| File::open(h).map_err(io_err(format!("open netns {}", h.display()))))
            .transpose()?;
        let p = p.clone();
        std::thread::Builder::new()
            .name("shoal-netns".into())
            .spawn(move || {
                if let Some(host) = host {
                    nix::sched::setns(&host, CloneFlags::CLONE_NEWNET)
                        .map_err(|e| NetError::Netlink(format!("setns: {e}")))?;
                }
                let container_end = LinkMessageBuilder::<LinkUnspec>::new()
                    .name(p.ifname.clone())
                    .address(p.mac.to_vec())
                    .mtu(p.mtu)
                    .setns_by_fd(netns.as_raw_fd())
                    .build();
                let veth = LinkMessageBuilder::<LinkVeth>::new_with_info_kind(InfoKind::Veth)
                    .name(p.host.clone())
                    .mtu(p.mtu)
                    .set_info_data(InfoData::Veth(InfoVeth::Peer(container_end)))
                    .build();
                let (host, bridge) = (p.host.clone(), p.bridge.clone());
                block_on_netlink(|h| async move {
                    h.link().add(veth).execute().await.map_err(nl)?;
                    let master = must_index(&h, &bridge).await?;
                    set_link(h.clone(), host.clone(), |b| b.controller(master).up()).await?;
                    hairpin_on(h, host).await
                })?;
                nix::sched::setns(&netns, CloneFlags::CLONE_NEWNET)
                    .map_err(|e| NetError::Netlink(format!("setns: {e}")))?;
                block_on_netlink(|h| async move {
                    set_link(h.clone(), p.ifname.clone(), |b| b.up()).await?;
                    let idx = must_index(&h, &p.ifname).await?;
                    h.address()
                        .add(idx, IpAddr::V4(p.ip), p.prefix)
                        .execute()
                        .await
                        .map_err(nl)?;
                    if let Some(gateway) = p.gateway {
                        let msg = RouteMessageBuilder::<Ipv4Addr>::new()
                            .gateway(gateway)
                            .build();
                        h.route().add(msg).replace().execute().await.map_err(nl)?;
                    }
                    Ok(())
                })
            })
            .map_err(io_err("spawn netns thread"))?
            .join()
            .map_err(|_| NetError::Netlink("netns thread panicked".into()))?
    }

    fn create_bridge(&self, name: &str, mtu: u32) -> Result<(), NetError> {
        let name = name.to_string();
        run_in(self.ns(None), move |h| async move {
            let msg = LinkBridge::new(&name).mtu(mtu).build();
            h.link().add(msg).execute().await.map_err(nl)
        })
    }

    fn create_vxlan(&self, v: &VxlanLink) -> Result<(), NetError> {
        let v = v.clone();
        run_in(self.ns(None), move |h| async move {
            let master = must_index(&h, &v.bridge).await?;
            // No `remote`/`group`: without an all-zero FDB entry nothing is flooded.
            let msg = LinkVxlan::new(&v.name, v.vni)
                .port(v.port)
                .learning(false)
                .proxy(true)
                .mtu(v.mtu)
                .controller(master)
                .up()
                .build();
            h.link().add(msg).execute().await.map_err(nl)
        })
    }

    fn add_fdb(&self, dev: &str, mac: [u8; 6], vtep: Ipv4Addr) -> Result<(), NetError> {
        let dev = dev.to_string();
        run_in(self.ns(None), move |h| async move {
            let idx = must_index(&h, &dev).await?;
            h.neighbours()
                .add_bridge(idx, &mac)
                .flags(NeighbourFlags::Own)
                .state(NeighbourState::Permanent)
                .destination(IpAddr::V4(vtep))
                .replace()
                .execute()
                .await
                .map_err(nl)
        })
    }

    fn del_fdb(&self, dev: &str, mac: [u8; 6], vtep: Ipv4Addr) -> Result<bool, NetError> {
        let dev = dev.to_string();
        run_in(self.ns(None), move |h| async move {
            let Some(idx) = index_of(&h, &dev).await? else {
                return Ok(false);
            };
            let mut m = NeighbourMessage::default();
            m.header.family = AddressFamily::Bridge;
            m.header.ifindex = idx;
            m.header.flags = NeighbourFlags::Own;
            m.header.state = NeighbourState::Permanent;
            m.attributes
                .push(NeighbourAttribute::LinkLayerAddress(mac.to_vec()));
            m.attributes
                .push(NeighbourAttribute::Destination(NeighbourAddress::Inet(
                    vtep,
                )));
            gone_is_ok(h.neighbours().del(m).execute().await)
        })
    }

    fn add_neighbour(&self, dev: &str, ip: Ipv4Addr, mac: [u8; 6]) -> Result<(), NetError> {
        let dev = dev.to_string();
        run_in(self.ns(None), move |h| async move {
            let idx = must_index(&h, &dev).await?;
            h.neighbours()
                .add(idx, IpAddr::V4(ip))
                .state(NeighbourState::Permanent)
                .link_layer_address(&mac)
                .replace()
                .execute()
                .await
                .map_err(nl)
        })
    }

    fn del_neighbour(&self, dev: &str, ip: Ipv4Addr) -> Result<bool, NetError> {
        let dev = dev.to_string();
        run_in(self.ns(None), move |h| async move {
            let Some(idx) = index_of(&h, &dev).await? else {
                return Ok(false);
            };
            let mut m = NeighbourMessage::default();
            m.header.family = AddressFamily::Inet;
            m.header.ifindex = idx;
            m.attributes
                .push(NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)));
            gone_is_ok(h.neighbours().del(m).execute().await)
        })
    }

    fn list_overlay_entries(&self, dev: &str) -> Result<OverlayEntries, NetError> {
        let dev = dev.to_string();
        run_in(self.ns(None), move |h| async move {
            let idx = must_index(&h, &dev).await?;
            let mut out = OverlayEntries::default();
            let mut s = h
                .neighbours()
                .get()
                .set_address_family(AddressFamily::Bridge)
                .execute();
            while let Some(m) = s.try_next().await.map_err(nl)? {
                // The vxlan device's own table, not what the bridge learnt on that port.
                if m.header.ifindex != idx || m.header.flags.contains(NeighbourFlags::Controller) {
                    continue;
                }
                let (mut mac, mut dst) = (None, None);
                for a in &m.attributes {
                    match a {
                        NeighbourAttribute::LinkLayerAddress(l) => {
                            mac = <[u8; 6]>::try_from(l.as_slice()).ok()
                        }
                        NeighbourAttribute::Destination(d) => dst = ipv4_of(d),
                        _ => {}
                    }
                }
                if let (Some(mac), Some(dst)) = (mac, dst) {
                    if mac != [0; 6] && mac[0] & 1 == 0 {
                        out.fdb.insert((mac, dst));
                    }
                }
            }
            let mut s = h
                .neighbours()
                .get()
                .set_address_family(AddressFamily::Inet)
                .execute();
            while let Some(m) = s.try_next().await.map_err(nl)? {
                if m.header.ifindex != idx || m.header.state != NeighbourState::Permanent {
                    continue;
                }
                let (mut mac, mut ip) = (None, None);
                for a in &m.attributes {
                    match a {
                        NeighbourAttribute::LinkLayerAddress(l) => {
                            mac = <[u8; 6]>::try_from(l.as_slice()).ok()
                        }
                        NeighbourAttribute::Destination(d) => ip = ipv4_of(d),
                        _ => {}
                    }
                }
                if let (Some(ip), Some(mac)) = (ip, mac) {
                    out.neighbours.insert(ip, mac);
                }
            }
            Ok(out)
        })
    }

    fn create_veth(&self, name: &str, peer: &str, mtu: u32) -> Result<(), NetError> {
        let (name, peer) = (name.to_string(), peer.to_string());
        run_in(self.ns(None), move |h| async move {
            let msg = LinkVeth::new(&name, &peer).mtu(mtu).build();
            h.link().add(msg).execute().await.map_err(nl)
        })
    }

    fn create_dummy(&self, ns: Option<&Path>, name: &str) -> Result<(), NetError> {
        let name = name.to_string();
        run_in(self.ns(ns), move |h| async move {
            let msg = LinkDummy::new(&name).build();
            h.link().add(msg).execute().await.map_err(nl)
        })
    }

    fn set_master(&self, name: &str, master: &str) -> Result<(), NetError> {
        let (name, master) = (name.to_string(), master.to_string());
        run_in(self.ns(None), move |h| async move {
            let m = must_index(&h, &master).await?;
            set_link(h, name, |b| b.controller(m)).await
        })
    }

    fn move_to_netns(&self, name: &str, netns: &Path) -> Result<(), NetError> {
        let file = File::open(netns).map_err(io_err(format!("open netns {}", netns.display())))?;
        let name = name.to_string();
        run_in(self.ns(None), move |h| async move {
            let r = set_link(h, name, |b| b.setns_by_fd(file.as_raw_fd())).await;
            drop(file);
            r
        })
    }

    fn rename_link(&self, ns: Option<&Path>, name: &str, new_name: &str) -> Result<(), NetError> {
        let (name, new_name) = (name.to_string(), new_name.to_string());
        run_in(self.ns(ns), move |h| {
            set_link(h, name, move |b| b.name(new_name))
        })
    }

    fn set_mtu(&self, ns: Option<&Path>, name: &str, mtu: u32) -> Result<(), NetError> {
        let name = name.to_string();
        run_in(self.ns(ns), move |h| set_link(h, name, move |b| b.mtu(mtu)))
    }

    fn set_mac(&self, ns: Option<&Path>, name: &str, mac: [u8; 6]) -> Result<(), NetError> {
        let name = name.to_string();
        run_in(self.ns(ns), move |h| {
            set_link(h, name, move |b| b.address(mac.to_vec()))
        })
    }

    fn set_hairpin(&self, name: &str) -> Result<(), NetError> {
        let name = name.to_string();
        run_in(self.ns(None), move |h| hairpin_on(h, name))
    }

    fn set_up(&self, ns: Option<&Path>, name: &str) -> Result<(), NetError> {
        let name = name.to_string();
        run_in(self.ns(ns), move |h| set_link(h, name, |b| b.up()))
    }

    fn add_address(
        &self,
        ns: Option<&Path>,
        name: &str,
        addr: Ipv4Addr,
        prefix: u8,
    ) -> Result<(), NetError> {
        let name = name.to_string();
        run_in(self.ns(ns), move |h| async move {
            let idx = must_index(&h, &name).await?;
            h.address()
                .add(idx, IpAddr::V4(addr), prefix)
                .execute()
                .await
                .map_err(nl)
        })
    }

    fn set_default_route(&self, ns: Option<&Path>, gateway: Ipv4Addr) -> Result<(), NetError> {
        run_in(self.ns(ns), move |h| async move {
            let msg = RouteMessageBuilder::<Ipv4Addr>::new()
                .gateway(gateway)
                .build();
            h.route().add(msg).replace().execute().await.map_err(nl)
        })
    }

    fn delete_link(&self, ns: Option<&Path>, name: &str) -> Result<bool, NetError> {
        if ns.is_some_and(|p| !p.exists()) {
            return Ok(false);
        }
        let name = name.to_string();
        run_in(self.ns(ns), move |h| async move {
            // By name, in the kernel: no link message to parse first. The netlink crates drop
            // a message they cannot parse without a word, and a bridge's can fail to parse in
            // some states: looked up by index first, such a bridge was left behind as absent.
            let mut del = h.link().del(0);
            del.message_mut()
                .attributes
                .push(LinkAttribute::IfName(name));
            match del.execute().await {
                Ok(()) => Ok(true),
                Err(e) if is_errno(&e, libc::ENODEV) => Ok(false),
                Err(e) => Err(nl(e)),
            }
        })
    }

    fn list_links(&self, ns: Option<&Path>) -> Result<Vec<LinkInfo>, NetError> {
        run_in(self.ns(ns), |h| async move { links(&h).await })
    }

    fn list_addresses(&self, ns: Option<&Path>) -> Result<Vec<AddrInfo>, NetError> {
        run_in(self.ns(ns), |h| async move {
            let links = links(&h).await?;
            let mut out = Vec::new();
            let mut s = h.address().get().execute();
            while let Some(m) = s.try_next().await.map_err(nl)? {
                let mut local = None;
                let mut address = None;
                for a in &m.attributes {
                    match a {
                        AddressAttribute::Local(IpAddr::V4(v)) => local = Some(*v),
                        AddressAttribute::Address(IpAddr::V4(v)) => address = Some(*v),
                        _ => {}
                    }
                }
                if let Some(addr) = local.or(address) {
                    let link = links
                        .iter()
                        .find(|l| l.index == m.header.index)
                        .map(|l| l.name.clone())
                        .unwrap_or_default();
                    out.push(AddrInfo {
                        link,
                        addr,
                        prefix: m.header.prefix_len,
                    });
                }
            }
            Ok(out)
        })
    }

    fn list_routes(&self, ns: Option<&Path>) -> Result<Vec<Ipv4Net>, NetError> {
        run_in(self.ns(ns), |h| async move {
            let mut out = Vec::new();
            let mut s = h
                .route()
                .get(RouteMessageBuilder::<Ipv4Addr>::new().build())
                .execute();
            while let Some(m) = s.try_next().await.map_err(nl)? {
                let mut table = m.header.table as u32;
                let mut dst = Ipv4Addr::UNSPECIFIED;
                for a in &m.attributes {
                    match a {
                        RouteAttribute::Table(t) => table = *t,
                        RouteAttribute::Destination(RouteAddress::Inet(d)) => dst = *d,
                        _ => {}
                    }
                }
                if table == RouteHeader::RT_TABLE_MAIN as u32 {
                    if let Ok(net) = Ipv4Net::new(dst, m.header.destination_prefix_length) {
                        out.push(net);
                    }
                }
            }
            Ok(out)
        })
    }

    fn create_netns(&self, path: &Path) -> Result<(), NetError> {
        create_netns_file(path)
    }

    fn delete_netns(&self, path: &Path) -> Result<bool, NetError> {
        delete_netns_file(path)
    }

    fn apply_nft(&self, script: &str) -> Result<(), NetError> {
        let script = script.to_string();
        self.in_host(move || Here::apply_nft(&script))
    }

    fn list_nft_tables(&self) -> Result<Vec<(String, String)>, NetError> {
        self.in_host(Here::list_nft_tables)
    }

    fn read_sysctl(&self, key: &str) -> Result<String, NetError> {
        let key = key.to_string();
        self.in_host(move || Here::read_sysctl(&key))
    }

    fn write_sysctl(&self, key: &str, value: &str) -> Result<(), NetError> {
        let (key, value) = (key.to_string(), value.to_string());
        self.in_host(move || Here::write_sysctl(&key, &value))
    }

    fn sync_docker_user(&self, tag: &str, bridges: &[String]) -> Result<(), NetError> {
        let (tag, bridges) = (tag.to_string(), bridges.to_vec());
        self.in_host(move || Here::sync_docker_user(&tag, &bridges))
    }
}

/// The operations that act on the calling thread's network namespace (commands inherit it,
/// `/proc/sys/net` shows it): [`RealNetOps`] runs them through `in_host`.
struct Here;

impl Here {
    fn apply_nft(script: &str) -> Result<(), NetError> {
        let mut child = Command::new("nft")
            .args(["-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| {
                NetError::Firewall(format!(
                    "cannot run `nft` ({e}); install the nftables package"
                ))
            })?;
        child
            .stdin
            .take()
            .expect("piped stdin")
            .write_all(script.as_bytes())
            .map_err(io_err("write to nft"))?;
        let out = child.wait_with_output().map_err(io_err("wait for nft"))?;
        if !out.status.success() {
            return Err(NetError::Firewall(format!(
                "nft -f failed: {}\nscript:\n{script}",
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        Ok(())
    }

    fn list_nft_tables() -> Result<Vec<(String, String)>, NetError> {
        let out = Command::new("nft")
            .args(["list", "tables"])
            .output()
            .map_err(|e| NetError::Firewall(format!("cannot run `nft`: {e}")))?;
        if !out.status.success() {
            return Err(NetError::Firewall(format!(
                "nft list tables failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        Ok(String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| {
                let mut w = l.split_whitespace();
                match (w.next(), w.next(), w.next()) {
                    (Some("table"), Some(f), Some(n)) => Some((f.to_string(), n.to_string())),
                    _ => None,
                }
            })
            .collect())
    }

    fn read_sysctl(key: &str) -> Result<String, NetError> {
        let p = sysctl_path(key);
        std::fs::read_to_string(&p)
            .map(|s| s.trim().to_string())
            .map_err(io_err(format!("read {}", p.display())))
    }

    fn write_sysctl(key: &str, value: &str) -> Result<(), NetError> {
        let p = sysctl_path(key);
        std::fs::write(&p, value).map_err(io_err(format!("write {}", p.display())))
    }

    fn sync_docker_user(tag: &str, bridges: &[String]) -> Result<(), NetError> {
        let ipt = |args: &[&str]| Command::new("iptables").args(args).output();
        let listed = match ipt(&["-w", "-t", "filter", "-S", "DOCKER-USER"]) {
            Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout).to_string(),
            // No iptables, or no DOCKER-USER chain: no Docker to coexist with.
            _ => return Ok(()),
        };
        let comment = format!("shoal:{tag}");
        let rule = |dir: &str, br: &str| -> Vec<String> {
            [
                dir,
                br,
                "-m",
                "comment",
                "--comment",
                comment.as_str(),
                "-j",
                "ACCEPT",
            ]
            .iter()
            .map(|s| s.to_string())
            .collect()
        };
        let mut wanted: Vec<Vec<String>> = Vec::new();
        for b in bridges {
            wanted.push(rule("-i", b));
            wanted.push(rule("-o", b));
        }
        // Existing rules of ours: `-A DOCKER-USER -i X -m comment --comment shoal:tag -j ACCEPT`.
        let mut present: Vec<Vec<String>> = Vec::new();
        for line in listed.lines() {
            let words: Vec<String> = line
                .split_whitespace()
                .map(|w| w.trim_matches('"').to_string())
                .collect();
            if words.len() < 2 || words[0] != "-A" || !words.contains(&comment) {
                continue;
            }
            present.push(words[2..].to_vec());
        }
        for p in &present {
            if !wanted.contains(p) {
                let mut args = vec!["-w", "-t", "filter", "-D", "DOCKER-USER"];
                args.extend(p.iter().map(String::as_str));
                run_ok(ipt(&args), "iptables -D DOCKER-USER")?;
            }
        }
        for w in &wanted {
            if !present.contains(w) {
                let mut args = vec!["-w", "-t", "filter", "-I", "DOCKER-USER"];
                args.extend(w.iter().map(String::as_str));
                run_ok(ipt(&args), "iptables -I DOCKER-USER")?;
            }
        }
        Ok(())
    }
}

fn run_ok(r: std::io::Result<std::process::Output>, what: &str) -> Result<(), NetError> {
    match r {
        Ok(o) if o.status.success() => Ok(()),
        Ok(o) => Err(NetError::Firewall(format!(
            "{what}: {}",
            String::from_utf8_lossy(&o.stderr).trim()
        ))),
        Err(e) => Err(NetError::Firewall(format!("{what}: {e}"))),
    }
}

/// Creates a persistent network namespace bound to the new, empty file `path` (like
/// `ip netns add`), with `lo` up. Runs on a dedicated thread that unshares its own network
/// namespace, bind-mounts `/proc/thread-self/ns/net` onto the file, and exits.
pub fn create_netns_file(path: &Path) -> Result<(), NetError> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io_err(format!("create {}", dir.display())))?;
    }
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(io_err(format!("create netns file {}", path.display())))?;
    let target = path.to_path_buf();
    let r = std::thread::Builder::new()
        .name("shoal-netns-new".into())
        .spawn(move || -> Result<(), NetError> {
            nix::sched::unshare(CloneFlags::CLONE_NEWNET)
                .map_err(|e| NetError::Netlink(format!("unshare(CLONE_NEWNET): {e}")))?;
            nix::mount::mount(
                Some("/proc/thread-self/ns/net"),
                &target,
                None::<&str>,
                nix::mount::MsFlags::MS_BIND,
                None::<&str>,
            )
            .map_err(|e| {
                NetError::Netlink(format!("bind-mount netns onto {}: {e}", target.display()))
            })?;
            block_on_netlink(|h| set_link(h, "lo".into(), |b| b.up()))
        })
        .map_err(io_err("spawn netns thread"))?
        .join()
        .map_err(|_| NetError::Netlink("netns thread panicked".into()))?;
    if r.is_err() {
        let _ = delete_netns_file(path);
    }
    r
}

/// Unmounts (lazily) and removes a netns file; `Ok(false)` when there was none.
pub fn delete_netns_file(path: &Path) -> Result<bool, NetError> {
    if std::fs::symlink_metadata(path).is_err() {
        return Ok(false);
    }
    match nix::mount::umount2(path, nix::mount::MntFlags::MNT_DETACH) {
        Ok(()) | Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => {}
        Err(e) => {
            return Err(NetError::Netlink(format!(
                "umount netns {}: {e}",
                path.display()
            )))
        }
    }
    match std::fs::remove_file(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(io_err(format!("remove {}", path.display()))(e)),
    }
}
