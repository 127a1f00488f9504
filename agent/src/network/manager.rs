//! [`NetworkManager`]: bridge and overlay networks, container attachments, overlay peers,
//! persistence and reconciliation.
//!
//! The logic lives in a synchronous core over a [`NetOps`]; the async API runs each call on
//! `spawn_blocking` under one mutex (network changes on a node are rare and short). Every
//! operation either completes or undoes what it did, and the state is saved (write, fsync,
//! rename) after each change.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::io::Write;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex, Weak};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::firewall::{self, FirewallNetwork};
use super::ipam::{AddressPool, Ipam, IpamError, Ipv4Net, SubnetRequest};
use super::overlay::{
    self, vxlan_name, OverlayEntries, OverlayPeer, OverlaySpec, VXLAN_OVERHEAD, VXLAN_PORT,
};
use super::pool::{self, NetworkUse, PoolPolicy, Retiring, RetiringLink, Sandbox};
use super::{
    bridge_name, format_mac, mac_for_ip, validate_prefix, veth_names, NetError, NetOps, RealNetOps,
    VethPlug, VxlanLink,
};

const STATE_FILE: &str = "network.json";
const IP_FORWARD: &str = "net.ipv4.ip_forward";

/// Where and how the manager works.
#[derive(Clone, Debug)]
pub struct NetworkConfig {
    /// The agent's data dir: `network.json` lives here.
    pub state_dir: PathBuf,
    /// Runtime dir: netns files live in `<run_dir>/netns/`.
    pub run_dir: PathBuf,
    /// Prefix of every link name (1–5 chars of `[a-z0-9]`); `sh` by default.
    pub name_prefix: String,
    /// Base name of the nftables tables (`inet <t>` and `ip <t>-nat`); `shoal` by default.
    pub nft_table: String,
    pub pools: Vec<AddressPool>,
    pub default_mtu: u32,
}

impl NetworkConfig {
    /// Defaults (prefix `sh`, tables `shoal`, Docker's pools, MTU 1500) for these dirs.
    pub fn new(state_dir: impl Into<PathBuf>, run_dir: impl Into<PathBuf>) -> Self {
        Self {
            state_dir: state_dir.into(),
            run_dir: run_dir.into(),
            name_prefix: "sh".into(),
            nft_table: "shoal".into(),
            pools: AddressPool::defaults(),
            default_mtu: 1500,
        }
    }

    /// The netns file of a container.
    pub fn netns_path(&self, container_id: &str) -> PathBuf {
        self.run_dir.join("netns").join(container_id)
    }
}

/// What `network create` asks for.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkSpec {
    pub name: String,
    pub subnet: Option<Ipv4Net>,
    pub gateway: Option<Ipv4Addr>,
    pub ip_range: Option<Ipv4Net>,
    /// No traffic in or out of the network's bridge (Docker's `--internal`).
    pub internal: bool,
    /// Default: 1500, or 1450 on an overlay network (room for the VXLAN header).
    pub mtu: Option<u32>,
    /// Makes it an overlay network (VXLAN): `subnet` and `gateway` are then required (the
    /// manager picks them, the same on every node), and every attach gives the address.
    #[serde(default)]
    pub overlay: Option<OverlaySpec>,
}

impl NetworkSpec {
    pub fn named(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            ..Default::default()
        }
    }
}

/// A bridge or overlay network on this node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Network {
    pub id: String,
    pub name: String,
    pub bridge: String,
    pub subnet: Ipv4Net,
    pub gateway: Ipv4Addr,
    pub ip_range: Option<Ipv4Net>,
    pub internal: bool,
    pub mtu: u32,
    /// Set on an overlay network: its bridge has a vxlan device
    /// ([`overlay::vxlan_name`] of the bridge) as a port.
    #[serde(default)]
    pub overlay: Option<OverlaySpec>,
}

impl Network {
    /// The vxlan device of an overlay network.
    pub fn vxlan(&self) -> Option<String> {
        self.overlay.map(|_| vxlan_name(&self.bridge))
    }
}

/// A container's endpoint on one network.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attachment {
    pub container_id: String,
    pub network_id: String,
    pub network_name: String,
    /// The netns file the container joins.
    pub netns_path: PathBuf,
    /// The interface inside the container (`eth0`, `eth1`, …).
    pub ifname: String,
    /// The host end of the veth pair, enslaved to the bridge.
    pub host_ifname: String,
    pub ip: Ipv4Addr,
    pub prefix_len: u8,
    pub mac: String,
    pub gateway: Ipv4Addr,
    pub aliases: Vec<String>,
    /// True when the container's default route goes through this network.
    pub default_route: bool,
}

/// A container's network side: its netns file and its attachments.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerNet {
    pub netns_path: PathBuf,
    pub attachments: Vec<Attachment>,
}

impl NetworkState {
    /// A network by name, id or unique id prefix (of 4 characters at least), as in Docker.
    pub fn network(&self, name_or_id: &str) -> Option<&Network> {
        let networks = || self.networks.values();
        networks()
            .find(|n| n.name == name_or_id || n.id == name_or_id)
            .or_else(|| {
                let mut m =
                    networks().filter(|n| name_or_id.len() >= 4 && n.id.starts_with(name_or_id));
                match (m.next(), m.next()) {
                    (Some(n), None) => Some(n),
                    _ => None,
                }
            })
    }

    /// A container's endpoints (none if it has none here).
    pub fn attachments(&self, container_id: &str) -> Vec<Attachment> {
        self.containers
            .get(container_id)
            .map(|c| c.attachments.clone())
            .unwrap_or_default()
    }
}

/// Everything the manager persists.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkState {
    pub networks: BTreeMap<String, Network>,
    pub ipam: Ipam,
    /// Container id → its netns file and attachments.
    pub containers: BTreeMap<String, ContainerNet>,
    /// Warm sandboxes, ready for a container to take (see [`super::pool`]).
    #[serde(default)]
    pub pool: Vec<Sandbox>,
    /// Namespaces and links being deleted; their addresses are held until they are gone.
    #[serde(default)]
    pub retiring: Vec<Retiring>,
    /// Bridge networks removed whose bridge the pool's worker has yet to delete (after their
    /// retiring namespaces): their subnets stay held until then.
    #[serde(default)]
    pub removed: Vec<Network>,
    /// True when shoal switched `net.ipv4.ip_forward` on (and so may switch it off again).
    pub ip_forward_enabled: bool,
}

/// What [`NetworkManager::reconcile`] cleaned up.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReconcileReport {
    pub released_containers: Vec<String>,
    pub removed_links: Vec<String>,
    pub removed_netns: Vec<PathBuf>,
    pub recreated_bridges: Vec<String>,
    pub recreated_vxlans: Vec<String>,
    /// Warm sandboxes and retiring namespaces of the previous run, deleted.
    pub removed_sandboxes: Vec<PathBuf>,
    /// Addresses IPAM held for no container, sandbox or retiring namespace: released.
    pub released_addresses: Vec<Ipv4Addr>,
}

struct Core<N: NetOps> {
    cfg: NetworkConfig,
    ops: Arc<N>,
    st: NetworkState,
    /// Attachments planned but not recorded yet (their links are being made), by container:
    /// their networks are in use, and no one may remove them meanwhile.
    plugging: Vec<(String, String)>,
    /// Remote endpoints of overlay networks, by network name (also of networks not created
    /// here yet). Not persisted: the cluster manager resends them.
    peers: BTreeMap<String, Peers>,
    /// The warm pool's bookkeeping; `None` while the pool is off (then releases delete
    /// namespaces and links before they return).
    pool: Option<PoolBook>,
}

/// What the pool's worker and the attach path share, besides the persisted sandboxes.
struct PoolBook {
    policy: PoolPolicy,
    /// The last attach to each network that could have taken a sandbox.
    last_used: BTreeMap<String, Instant>,
    /// The last failure to make a sandbox, by network.
    failed_at: BTreeMap<String, Instant>,
    /// Sandboxes being made (their addresses are allocated); a sandbox no longer here when
    /// it is done was cancelled (its network went).
    making: Vec<Sandbox>,
    /// Retiring namespaces the worker is deleting now, by netns file.
    busy: HashSet<PathBuf>,
    /// Bridges of removed networks the worker is deleting now.
    busy_bridges: HashSet<String>,
    /// The last failure to delete a retiring namespace or a removed network's bridge: the
    /// worker waits before retrying.
    retire_failed_at: Option<Instant>,
    wake: Arc<Wake>,
}

/// Wakes the pool's worker.
#[derive(Default)]
struct Wake {
    kicked: Mutex<bool>,
    cv: Condvar,
}

impl Wake {
    fn kick(&self) {
        *self.kicked.lock().unwrap_or_else(|e| e.into_inner()) = true;
        self.cv.notify_one();
    }

    /// Waits for a kick, at most `timeout`.
    fn wait(&self, timeout: Duration) {
        let g = self.kicked.lock().unwrap_or_else(|e| e.into_inner());
        let (mut g, _) = self
            .cv
            .wait_timeout_while(g, timeout, |k| !*k)
            .unwrap_or_else(|e| e.into_inner());
        *g = false;
    }
}

/// A piece of the pool worker's work, done outside the manager's lock.
enum PoolJob {
    /// Make this sandbox: its netns, then its veth.
    Make { sandbox: Sandbox, veth: VethPlug },
    /// Delete these links and this netns.
    Retire(Retiring),
    /// Delete a removed network's bridge.
    RemoveBridge(Network),
}

impl PoolJob {
    fn run<N: NetOps>(&self, ops: &N) -> Result<(), NetError> {
        match self {
            PoolJob::Make { veth, .. } => {
                ops.create_netns(&veth.netns)?;
                ops.plug_veth(veth)
            }
            PoolJob::Retire(r) => retire(ops, r),
            PoolJob::RemoveBridge(net) => ops.delete_link(None, &net.bridge).map(|_| ()),
        }
    }
}

/// Deletes a retiring namespace's links (the host ends; a container end whose host end is
/// gone too) and its netns file.
fn retire<N: NetOps>(ops: &N, r: &Retiring) -> Result<(), NetError> {
    for l in &r.links {
        if !ops.delete_link(None, &l.host_ifname)? {
            ops.delete_link(Some(r.netns_path.as_path()), &l.ifname)?;
        }
    }
    ops.delete_netns(&r.netns_path)?;
    Ok(())
}

/// The longest the pool's worker sleeps: it notices within this time that its manager went.
const POOL_IDLE_CHECK: Duration = Duration::from_secs(1);
/// How long an attach that asks for an address a sandbox or a retiring namespace still
/// holds waits for it to be free, before it fails with "in use".
const HELD_ADDRESS_WAIT: Duration = Duration::from_secs(10);

/// One overlay network's remote endpoints.
#[derive(Clone, Debug, Default)]
struct Peers {
    /// The complete set the cluster manager sent last.
    wanted: BTreeSet<OverlayPeer>,
    /// What is on the vxlan device; `None` when unknown (after a daemon restart, or a failed
    /// change): read back from the kernel before the next change.
    programmed: Option<OverlayEntries>,
}

fn new_key() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

fn check_container_id(id: &str) -> Result<(), NetError> {
    if id.is_empty()
        || id.len() > 128
        || id == "."
        || id == ".."
        || !id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.')
    {
        return Err(NetError::Invalid(format!(
            "container id {id:?} must be 1 to 128 characters of [A-Za-z0-9_.-]"
        )));
    }
    Ok(())
}

impl<N: NetOps> Core<N> {
    /// Saves the state durably (networks changed: they must outlive a machine crash).
    fn save(&self) -> Result<(), NetError> {
        self.write_state(true)
    }

    /// Saves the state after a change of attachments only: replaced atomically (rename), not
    /// fsync'd. Attachments describe live containers, which a machine crash ends along with
    /// their netns; a daemon crash leaves the page cache, so a restart reads the new file. Two
    /// fsyncs per container start and stop, under the manager's lock, would serialise them.
    fn save_attachments(&self) -> Result<(), NetError> {
        self.write_state(false)
    }

    fn write_state(&self, durable: bool) -> Result<(), NetError> {
        let dir = &self.cfg.state_dir;
        let io = |what: &str| {
            let what = format!("{what} {}", dir.join(STATE_FILE).display());
            move |source| NetError::Io { what, source }
        };
        std::fs::create_dir_all(dir).map_err(io("create dir for"))?;
        let tmp = dir.join(format!("{STATE_FILE}.tmp"));
        let json = serde_json::to_vec_pretty(&self.st).expect("state serialises");
        let mut f = std::fs::File::create(&tmp).map_err(io("write"))?;
        f.write_all(&json).map_err(io("write"))?;
        if durable {
            f.sync_all().map_err(io("fsync"))?;
        }
        std::fs::rename(&tmp, dir.join(STATE_FILE)).map_err(io("rename"))?;
        if durable {
            if let Ok(d) = std::fs::File::open(dir) {
                let _ = d.sync_all();
            }
        }
        Ok(())
    }

    fn find_network(&self, name_or_id: &str) -> Result<Network, NetError> {
        self.st
            .network(name_or_id)
            .cloned()
            .ok_or_else(|| NetError::NotFound(format!("network {name_or_id:?}")))
    }

    /// Makes nftables, the DOCKER-USER rules and ip_forward match the networks.
    fn apply_firewall(&mut self) -> Result<(), NetError> {
        let fw: Vec<FirewallNetwork> = self
            .st
            .networks
            .values()
            .map(|n| FirewallNetwork {
                bridge: n.bridge.clone(),
                subnet: n.subnet,
                internal: n.internal,
            })
            .collect();
        self.ops
            .apply_nft(&firewall::ruleset(&self.cfg.nft_table, &fw))?;
        let bridges: Vec<String> = fw.iter().map(|n| n.bridge.clone()).collect();
        self.ops.sync_docker_user(&self.cfg.nft_table, &bridges)?;
        let need_forward = fw.iter().any(|n| !n.internal);
        if need_forward {
            if self.ops.read_sysctl(IP_FORWARD)? != "1" {
                self.ops.write_sysctl(IP_FORWARD, "1")?;
                self.st.ip_forward_enabled = true;
            }
        } else if self.st.ip_forward_enabled {
            self.ops.write_sysctl(IP_FORWARD, "0")?;
            self.st.ip_forward_enabled = false;
        }
        Ok(())
    }

    fn create_network(&mut self, spec: NetworkSpec) -> Result<Network, NetError> {
        if spec.name.is_empty()
            || spec.name.len() > 128
            || spec.name.chars().any(|c| c.is_whitespace() || c == '/')
        {
            return Err(NetError::Invalid(format!(
                "network name {:?} must be 1 to 128 characters without spaces or '/'",
                spec.name
            )));
        }
        if self.st.networks.values().any(|n| n.name == spec.name) {
            return Err(NetError::Invalid(format!(
                "network with name {:?} already exists",
                spec.name
            )));
        }
        if let Some(o) = spec.overlay {
            self.check_overlay(&spec.name, &spec, o)?;
        }
        // VXLAN's header must fit in the underlay's MTU.
        let default_mtu = match spec.overlay {
            Some(_) => self.cfg.default_mtu.saturating_sub(VXLAN_OVERHEAD),
            None => self.cfg.default_mtu,
        };
        let mtu = spec.mtu.unwrap_or(default_mtu);
        if !(68..=65535).contains(&mtu) {
            return Err(NetError::Invalid(format!(
                "mtu {mtu} must be between 68 and 65535"
            )));
        }
        let links: HashSet<String> = self
            .ops
            .list_links(None)?
            .into_iter()
            .map(|l| l.name)
            .collect();
        let (id, bridge) = loop {
            let id = new_key();
            let bridge = bridge_name(&self.cfg.name_prefix, &id);
            if !links.contains(&bridge)
                && !links.contains(&vxlan_name(&bridge))
                && !self.st.networks.values().any(|n| n.bridge == bridge)
            {
                break (id, bridge);
            }
        };
        if spec.subnet.is_some() || spec.overlay.is_some() {
            // It may ask for a subnet a removed network still holds.
            self.finish_removed()?;
        }
        let routes = self.ops.list_routes(None)?;
        let req = SubnetRequest {
            subnet: spec.subnet,
            gateway: spec.gateway,
            ip_range: spec.ip_range,
        };
        let addrs = match self.st.ipam.allocate_subnet(&id, &req, &routes) {
            Ok(a) => a.clone(),
            Err(e) => return Err(self.name_ipam_error(e).into()),
        };
        let net = Network {
            id: id.clone(),
            name: spec.name,
            bridge: bridge.clone(),
            subnet: addrs.subnet,
            gateway: addrs.gateway,
            ip_range: addrs.ip_range,
            internal: spec.internal,
            mtu,
            overlay: spec.overlay,
        };
        let r = (|| {
            self.ops.create_bridge(&bridge, mtu)?;
            self.ops
                .add_address(None, &bridge, net.gateway, net.subnet.prefix())?;
            if let Some(o) = net.overlay {
                self.ops.create_vxlan(&VxlanLink {
                    name: vxlan_name(&bridge),
                    vni: o.vni,
                    port: VXLAN_PORT,
                    mtu,
                    bridge: bridge.clone(),
                })?;
                self.adopt_pending_peers(&net);
                self.program_peers(&net)?;
            }
            self.st.networks.insert(id.clone(), net.clone());
            self.apply_firewall()
        })();
        if let Err(e) = r {
            self.st.networks.remove(&id);
            self.st.ipam.release_subnet(&id);
            if let Some(vx) = net.vxlan() {
                let _ = self.ops.delete_link(None, &vx);
            }
            if let Some(p) = self.peers.get_mut(&net.name) {
                p.programmed = None;
            }
            let _ = self.ops.delete_link(None, &bridge);
            let _ = self.apply_firewall();
            return Err(e);
        }
        self.save()?;
        Ok(net)
    }

    /// An overlay spec needs a VNI of its own on this node, and the subnet and gateway the
    /// cluster manager picked (the same on every node: a distributed gateway).
    fn check_overlay(
        &self,
        name: &str,
        spec: &NetworkSpec,
        o: OverlaySpec,
    ) -> Result<(), NetError> {
        if spec.subnet.is_none() || spec.gateway.is_none() {
            return Err(NetError::Invalid(format!(
                "overlay network {name:?} needs its subnet and gateway from the manager"
            )));
        }
        overlay::check_vni(o.vni)
            .map_err(|e| NetError::Invalid(format!("overlay network {name:?}: {e}")))?;
        if let Some(other) = self
            .st
            .networks
            .values()
            .find(|n| n.overlay.is_some_and(|x| x.vni == o.vni))
        {
            return Err(NetError::Invalid(format!(
                "overlay network {name:?}: VNI {} is already used by network {:?} on this node",
                o.vni, other.name
            )));
        }
        Ok(())
    }

    /// IPAM errors name networks by id: name them by name.
    fn name_ipam_error(&self, e: IpamError) -> IpamError {
        let name = |id: String| {
            self.st
                .networks
                .get(&id)
                .map(|n| n.name.clone())
                .unwrap_or(id)
        };
        match e {
            IpamError::OverlapsNetwork {
                subnet,
                other_network,
                other_subnet,
            } => IpamError::OverlapsNetwork {
                subnet,
                other_network: name(other_network),
                other_subnet,
            },
            IpamError::AddressInUse { ip, network, owner } => IpamError::AddressInUse {
                ip,
                network: name(network),
                owner,
            },
            IpamError::AddressNotUsable { ip, network, range } => IpamError::AddressNotUsable {
                ip,
                network: name(network),
                range,
            },
            IpamError::AddressesExhausted { network, range } => IpamError::AddressesExhausted {
                network: name(network),
                range,
            },
            e => e,
        }
    }

    /// Peers heard of before the network was made here: keeps those that fit its subnet
    /// (a set sent for an older network of that name may not), and notes that its fresh
    /// vxlan device holds none yet.
    fn adopt_pending_peers(&mut self, net: &Network) {
        let entry = self.peers.entry(net.name.clone()).or_default();
        let fits: Vec<OverlayPeer> = entry
            .wanted
            .iter()
            .filter(|p| {
                let one = [**p];
                overlay::check_peers(&net.name, net.subnet, net.gateway, &one)
                    .map_err(|e| tracing::warn!("overlay peer left out: {e}"))
                    .is_ok()
            })
            .copied()
            .collect();
        entry.wanted = fits.into_iter().collect();
        entry.programmed = Some(OverlayEntries::default());
    }

    /// Makes the vxlan device of overlay network `net` hold exactly the wanted peers: adds and
    /// removes the difference with what it holds.
    fn program_peers(&mut self, net: &Network) -> Result<(), NetError> {
        let Some(vx) = net.vxlan() else {
            return Ok(());
        };
        let entry = self.peers.entry(net.name.clone()).or_default();
        let have = match entry.programmed.take() {
            Some(p) => p,
            None => self.ops.list_overlay_entries(&vx)?,
        };
        let want = OverlayEntries::of(&entry.wanted);
        let d = overlay::diff(&have, &want);
        let ops = &self.ops;
        let apply = || -> Result<(), NetError> {
            for (mac, vtep) in &d.fdb_del {
                ops.del_fdb(&vx, *mac, *vtep)?;
            }
            for ip in &d.neigh_del {
                ops.del_neighbour(&vx, *ip)?;
            }
            for (mac, vtep) in &d.fdb_add {
                ops.add_fdb(&vx, *mac, *vtep)?;
            }
            for (ip, mac) in &d.neigh_add {
                ops.add_neighbour(&vx, *ip, *mac)?;
            }
            Ok(())
        };
        let r = apply();
        if r.is_ok() {
            // On error it stays unknown: the next change reads the kernel back.
            entry.programmed = Some(want);
        }
        r.map_err(|e| match e {
            NetError::Netlink(m) => NetError::Netlink(format!(
                "program the peers of overlay network {:?} on {vx}: {m}",
                net.name
            )),
            e => e,
        })
    }

    fn set_overlay_peers(
        &mut self,
        network: &str,
        peers: Vec<OverlayPeer>,
    ) -> Result<(), NetError> {
        let net = match self.find_network(network) {
            Ok(net) => net,
            Err(NetError::NotFound(_)) => {
                // Not here yet: remembered for when it is made. Only what needs no subnet is
                // checked now.
                let any = Ipv4Net::new(Ipv4Addr::UNSPECIFIED, 0).expect("/0 is valid");
                let wanted = overlay::check_peers(network, any, Ipv4Addr::UNSPECIFIED, &peers)
                    .map_err(NetError::Invalid)?;
                if wanted.is_empty() {
                    self.peers.remove(network);
                } else {
                    self.peers.entry(network.to_string()).or_default().wanted = wanted;
                }
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        if net.overlay.is_none() {
            return Err(NetError::Invalid(format!(
                "network {:?} is not an overlay network: it has no remote peers",
                net.name
            )));
        }
        let wanted = overlay::check_peers(&net.name, net.subnet, net.gateway, &peers)
            .map_err(NetError::Invalid)?;
        self.peers.entry(net.name.clone()).or_default().wanted = wanted;
        self.program_peers(&net)
    }

    fn ensure_network(&mut self, spec: NetworkSpec) -> Result<Network, NetError> {
        let Some(n) = self
            .st
            .networks
            .values()
            .find(|n| n.name == spec.name)
            .cloned()
        else {
            return self.create_network(spec);
        };
        let differs = (n.overlay.is_some() || spec.overlay.is_some())
            && (n.overlay != spec.overlay
                || spec.subnet.is_some_and(|s| s != n.subnet)
                || spec.gateway.is_some_and(|g| g != n.gateway));
        if !differs {
            return Ok(n);
        }
        self.remove_network(&n.id).map_err(|e| {
            NetError::Invalid(format!(
                "network {:?} exists on this node with another definition (VNI {}, subnet {}, \
                 gateway {}) and cannot be replaced: {e}",
                n.name,
                n.overlay.map_or("none".to_string(), |o| o.vni.to_string()),
                n.subnet,
                n.gateway
            ))
        })?;
        self.create_network(spec)
    }

    fn remove_network(&mut self, name_or_id: &str) -> Result<(), NetError> {
        let net = self.find_network(name_or_id)?;
        let users: Vec<&str> = self
            .st
            .containers
            .values()
            .flat_map(|c| &c.attachments)
            .filter(|a| a.network_id == net.id)
            .map(|a| a.container_id.as_str())
            .chain(
                self.plugging
                    .iter()
                    .filter(|(_, n)| *n == net.id)
                    .map(|(c, _)| c.as_str()),
            )
            .collect();
        if !users.is_empty() {
            return Err(NetError::Invalid(format!(
                "network {:?} has active endpoints: {}",
                net.name,
                users.join(", ")
            )));
        }
        self.st.networks.remove(&net.id);
        if self.pool.is_some() && net.overlay.is_none() {
            // A bridge goes in the background, after the namespaces still plugged into it,
            // so a `compose down` then `up` does not wait for the kernel's teardown. An
            // overlay's VXLAN device goes at once: a new network may want its VNI.
            self.drain_network(&net.id, false);
            self.st.removed.push(net);
            if let Some(book) = &self.pool {
                book.wake.kick();
            }
        } else {
            self.drain_network(&net.id, true);
            if let Err(e) = self.delete_network_links(&net) {
                self.st.networks.insert(net.id.clone(), net);
                return Err(e);
            }
            self.st.ipam.release_subnet(&net.id);
        }
        let r = self.apply_firewall();
        self.save()?;
        r
    }

    /// Deletes a removed network's VXLAN device (if any) and bridge.
    fn delete_network_links(&mut self, net: &Network) -> Result<(), NetError> {
        if let Some(vx) = net.vxlan() {
            // Its FDB and neighbour entries go with it.
            self.ops.delete_link(None, &vx)?;
            if let Some(p) = self.peers.get_mut(&net.name) {
                p.programmed = None;
            }
        }
        self.ops.delete_link(None, &net.bridge)?;
        Ok(())
    }

    /// Finishes, here and now, the removal of the networks the pool's worker has yet to
    /// delete (their namespaces, then their bridges), so their subnets are free: before a
    /// network asks for a subnet of its own, and at a restart.
    fn finish_removed(&mut self) -> Result<(), NetError> {
        for net in std::mem::take(&mut self.st.removed) {
            self.drain_network(&net.id, true);
            if let Err(e) = self.delete_network_links(&net) {
                self.st.removed.push(net);
                return Err(e);
            }
            self.st.ipam.release_subnet(&net.id);
        }
        Ok(())
    }

    /// Decides an attachment under the lock: its address, names and routes, and the
    /// container's entry (with its netns path) when it is the first. Nothing on the host yet,
    /// unless a warm sandbox does it all: then the attachment is made and recorded.
    ///
    /// `may_wait`: an asked-for address that a sandbox being made or a retiring namespace
    /// still holds gives [`Planned::Wait`] (it is free soon) rather than "in use".
    fn plan_attach(
        &mut self,
        container_id: &str,
        network: &str,
        aliases: Vec<String>,
        ip: Option<Ipv4Addr>,
        may_wait: bool,
    ) -> Result<Planned, NetError> {
        check_container_id(container_id)?;
        let net = self.find_network(network)?;
        if let Some(c) = self.st.containers.get(container_id) {
            if c.attachments.iter().any(|a| a.network_id == net.id) {
                return Err(NetError::Invalid(format!(
                    "container {container_id} is already attached to network {:?}",
                    net.name
                )));
            }
        }
        // Only an address IPAM picks can come from a sandbox.
        if ip.is_none() && net.overlay.is_none() {
            if let Some(att) = self.take_sandbox(container_id, &net, &aliases)? {
                return Ok(Planned::Done(att));
            }
        }
        let mut evicted = None;
        let ip = match ip {
            Some(ip) => {
                if !net.subnet.contains(ip)
                    || ip == net.subnet.network()
                    || ip == net.subnet.broadcast()
                {
                    return Err(NetError::Invalid(format!(
                        "container {container_id}: address {ip} is not a host address of \
                         subnet {} of network {:?}",
                        net.subnet, net.name
                    )));
                }
                if ip == net.gateway {
                    return Err(NetError::Invalid(format!(
                        "container {container_id}: address {ip} is the gateway of network {:?}",
                        net.name
                    )));
                }
                if may_wait && self.address_settling(&net.id, ip) {
                    return Ok(Planned::Wait);
                }
                // A warm sandbox holding the address gives way: the address is the
                // container's, and the sandbox's links go before the container's are made.
                if let Some(sb) = pool::take_holder(&mut self.st.pool, &net.id, ip) {
                    if self
                        .st
                        .ipam
                        .reassign(&net.id, ip, &sb.owner(), container_id)
                    {
                        evicted = Some(sb);
                    } else {
                        self.st.retiring.push(Retiring::of_sandbox(&sb));
                    }
                }
                if evicted.is_none() {
                    self.st
                        .ipam
                        .allocate_specific(&net.id, ip, container_id)
                        .map_err(|e| self.name_ipam_error(e))?;
                }
                ip
            }
            // The cluster manager gives every overlay address: a node picking one itself
            // could pick one that a container elsewhere has.
            None if net.overlay.is_some() => {
                return Err(NetError::Invalid(format!(
                    "container {container_id}: overlay network {:?} needs an address from the \
                     manager",
                    net.name
                )))
            }
            None => self
                .st
                .ipam
                .allocate_address(&net.id, container_id)
                .map_err(|e| self.name_ipam_error(e))?,
        };
        let created_ns = !self.st.containers.contains_key(container_id);
        let entry = self
            .st
            .containers
            .entry(container_id.to_string())
            .or_insert_with(|| ContainerNet {
                netns_path: self.cfg.netns_path(container_id),
                attachments: Vec::new(),
            });
        let netns = entry.netns_path.clone();
        let existing = &self.st.containers[container_id].attachments;
        let ifname = (0..)
            .map(|i| format!("eth{i}"))
            .find(|n| !existing.iter().any(|a| &a.ifname == n))
            .expect("a free ethN");
        let default_route = !net.internal && !existing.iter().any(|a| a.default_route);
        let (host, peer) = veth_names(&self.cfg.name_prefix, &new_key());
        let mac = mac_for_ip(ip);
        self.plugging
            .push((container_id.to_string(), net.id.clone()));
        Ok(Planned::Plug(Box::new(PlannedAttach {
            created_ns,
            evicted,
            veth: VethPlug {
                host: host.clone(),
                peer,
                bridge: net.bridge.clone(),
                netns: netns.clone(),
                ifname: ifname.clone(),
                mac,
                mtu: net.mtu,
                ip,
                prefix: net.subnet.prefix(),
                gateway: default_route.then_some(net.gateway),
            },
            att: Attachment {
                container_id: container_id.to_string(),
                network_id: net.id.clone(),
                network_name: net.name.clone(),
                netns_path: netns,
                ifname,
                host_ifname: host,
                ip,
                prefix_len: net.subnet.prefix(),
                mac: format_mac(mac),
                gateway: net.gateway,
                aliases,
                default_route,
            },
        })))
    }

    /// Gives a container with no namespace yet a warm sandbox of `net` as its namespace and
    /// first attachment, if one is ready. Notes the network as in use as a first network
    /// either way (its pool is filled, or kept filled).
    fn take_sandbox(
        &mut self,
        container_id: &str,
        net: &Network,
        aliases: &[String],
    ) -> Result<Option<Attachment>, NetError> {
        let Some(book) = &mut self.pool else {
            return Ok(None);
        };
        if self.st.containers.contains_key(container_id) {
            return Ok(None);
        }
        book.last_used.insert(net.id.clone(), Instant::now());
        book.wake.kick();
        while let Some(sb) = pool::take(&mut self.st.pool, &net.id) {
            if sb.default_route == net.internal
                || !self
                    .st
                    .ipam
                    .reassign(&net.id, sb.ip, &sb.owner(), container_id)
            {
                // Not what this network's first attachment needs (not expected): it goes.
                tracing::warn!(sandbox = %sb.key, network = %net.name, "inconsistent sandbox");
                self.st.retiring.push(Retiring::of_sandbox(&sb));
                continue;
            }
            let att = Attachment {
                container_id: container_id.to_string(),
                network_id: net.id.clone(),
                network_name: net.name.clone(),
                netns_path: sb.netns_path.clone(),
                ifname: "eth0".into(),
                host_ifname: sb.host_ifname.clone(),
                ip: sb.ip,
                prefix_len: net.subnet.prefix(),
                mac: format_mac(mac_for_ip(sb.ip)),
                gateway: net.gateway,
                aliases: aliases.to_vec(),
                default_route: sb.default_route,
            };
            self.st.containers.insert(
                container_id.to_string(),
                ContainerNet {
                    netns_path: sb.netns_path,
                    attachments: vec![att.clone()],
                },
            );
            self.save_attachments()?;
            return Ok(Some(att));
        }
        Ok(None)
    }

    /// True when address `ip` of network `network_id` is held by a sandbox being made or by
    /// a retiring namespace: it is free once the pool's worker is done with it.
    fn address_settling(&self, network_id: &str, ip: Ipv4Addr) -> bool {
        let Some(book) = &self.pool else {
            return false;
        };
        let making = book
            .making
            .iter()
            .any(|s| s.network_id == network_id && s.ip == ip);
        let retiring = self.st.retiring.iter().any(|r| {
            self.st.ipam.owner(network_id, ip) == Some(r.owner.as_str())
                && r.links
                    .iter()
                    .any(|l| l.network_id == network_id && l.ip == ip)
        });
        if making || retiring {
            book.wake.kick();
        }
        making || retiring
    }

    /// Records a planned attachment once its links are in place, or undoes the plan (links,
    /// address, the container's entry and netns if the plan made them) if they are not.
    fn finish_attach(
        &mut self,
        plan: PlannedAttach,
        plugged: Result<(), NetError>,
    ) -> Result<Attachment, NetError> {
        let PlannedAttach {
            created_ns,
            evicted,
            veth,
            att,
        } = plan;
        let mine = (att.container_id.clone(), att.network_id.clone());
        if let Some(i) = self.plugging.iter().position(|p| *p == mine) {
            self.plugging.swap_remove(i);
        }
        if let Err(e) = plugged {
            let _ = self.ops.delete_link(None, &veth.host);
            let _ = self.ops.delete_link(None, &veth.peer);
            match evicted {
                // Its links may still carry the address: it is held until they are gone.
                Some(sb) => {
                    self.st
                        .ipam
                        .reassign(&att.network_id, att.ip, &att.container_id, &sb.owner());
                    self.st.retiring.push(Retiring::of_sandbox(&sb));
                    if let Some(b) = &self.pool {
                        b.wake.kick();
                    }
                }
                None => {
                    self.st.ipam.release_address(&att.network_id, att.ip);
                }
            }
            if created_ns {
                self.st.containers.remove(&att.container_id);
                let _ = self.ops.delete_netns(&att.netns_path);
            }
            return Err(e);
        }
        self.st
            .containers
            .get_mut(&att.container_id)
            .expect("container entry")
            .attachments
            .push(att.clone());
        self.save_attachments()?;
        Ok(att)
    }

    /// Tears one attachment down (links and address); no route re-election, no save.
    fn teardown(&mut self, att: &Attachment) -> Result<(), NetError> {
        if !self.ops.delete_link(None, &att.host_ifname)? {
            // The host end is gone (the veth died with it); make sure the peer is too.
            self.ops
                .delete_link(Some(att.netns_path.as_path()), &att.ifname)?;
        }
        self.st.ipam.release_address(&att.network_id, att.ip);
        Ok(())
    }

    fn detach(&mut self, container_id: &str, network: &str) -> Result<(), NetError> {
        let net = self.find_network(network)?;
        let c = self
            .st
            .containers
            .get(container_id)
            .ok_or_else(|| NetError::NotFound(format!("container {container_id}")))?;
        let att = c
            .attachments
            .iter()
            .find(|a| a.network_id == net.id)
            .cloned()
            .ok_or_else(|| {
                NetError::NotFound(format!(
                    "container {container_id} is not attached to network {:?}",
                    net.name
                ))
            })?;
        self.teardown(&att)?;
        let c = self
            .st
            .containers
            .get_mut(container_id)
            .expect("container entry");
        c.attachments.retain(|a| a.network_id != att.network_id);
        let mut result = Ok(());
        if att.default_route {
            let internal: HashSet<&str> = self
                .st
                .networks
                .values()
                .filter(|n| n.internal)
                .map(|n| n.id.as_str())
                .collect();
            if let Some(next) = c
                .attachments
                .iter_mut()
                .find(|a| !internal.contains(a.network_id.as_str()))
            {
                result = self
                    .ops
                    .set_default_route(Some(next.netns_path.as_path()), next.gateway);
                next.default_route = result.is_ok();
            }
        }
        self.save_attachments()?;
        result
    }

    fn release_container(&mut self, container_id: &str) -> Result<(), NetError> {
        check_container_id(container_id)?;
        if let Some(book) = &self.pool {
            // The pool's worker deletes the namespace and links; the addresses stay held
            // until it has.
            if let Some(c) = self.st.containers.remove(container_id) {
                self.st.retiring.push(Retiring {
                    owner: container_id.to_string(),
                    netns_path: c.netns_path,
                    links: c
                        .attachments
                        .iter()
                        .map(|a| RetiringLink {
                            network_id: a.network_id.clone(),
                            host_ifname: a.host_ifname.clone(),
                            ifname: a.ifname.clone(),
                            ip: a.ip,
                        })
                        .collect(),
                });
                book.wake.kick();
                return self.save_attachments();
            }
        }
        let mut first_err = None;
        let netns = match self.st.containers.get(container_id).cloned() {
            Some(c) => {
                for a in &c.attachments {
                    if let Err(e) = self.teardown(a) {
                        first_err.get_or_insert(e);
                    }
                }
                c.netns_path
            }
            None => self.cfg.netns_path(container_id),
        };
        if let Err(e) = self.ops.delete_netns(&netns) {
            first_err.get_or_insert(e);
        }
        if first_err.is_none() {
            self.st.containers.remove(container_id);
        }
        self.save_attachments()?;
        first_err.map_or(Ok(()), Err)
    }

    /// Before network `network_id` goes: its warm sandboxes go and those being made are
    /// cancelled (the worker deletes them when done). With `now`, the retiring namespaces
    /// with a link on it that the worker is not at are deleted here; failures are logged: the
    /// bridge's removal does not depend on them, and the worker (or the next restart) retries.
    fn drain_network(&mut self, network_id: &str, now: bool) {
        let (mine, keep): (Vec<Sandbox>, Vec<Sandbox>) = std::mem::take(&mut self.st.pool)
            .into_iter()
            .partition(|s| s.network_id == network_id);
        self.st.pool = keep;
        self.st
            .retiring
            .extend(mine.iter().map(Retiring::of_sandbox));
        let busy = match &mut self.pool {
            Some(b) => {
                b.making.retain(|s| s.network_id != network_id);
                b.last_used.remove(network_id);
                b.failed_at.remove(network_id);
                b.busy.clone()
            }
            None => HashSet::new(),
        };
        if !now {
            return;
        }
        let plugged: Vec<Retiring> = self
            .st
            .retiring
            .iter()
            .filter(|r| !busy.contains(&r.netns_path))
            .filter(|r| r.links.iter().any(|l| l.network_id == network_id))
            .cloned()
            .collect();
        for r in plugged {
            let done = retire(&*self.ops, &r);
            self.retired(&r, done);
        }
    }

    /// Records the end of a retiring namespace's deletion: on success its entry goes and its
    /// addresses are given back (where it still holds them).
    fn retired(&mut self, r: &Retiring, done: Result<(), NetError>) {
        if let Some(b) = &mut self.pool {
            b.busy.remove(&r.netns_path);
        }
        if let Err(e) = done {
            tracing::warn!(netns = %r.netns_path.display(), "deleting a released namespace: {e}");
            if let Some(b) = &mut self.pool {
                b.retire_failed_at = Some(Instant::now());
            }
            return;
        }
        if let Some(i) = self.st.retiring.iter().position(|x| x == r) {
            self.st.retiring.swap_remove(i);
        }
        for l in &r.links {
            self.st.ipam.release_if_owner(&l.network_id, l.ip, &r.owner);
        }
    }

    /// Records the end of a removed network's bridge deletion: on success its subnet is free.
    fn bridge_removed(&mut self, net: &Network, done: Result<(), NetError>) {
        if let Some(b) = &mut self.pool {
            b.busy_bridges.remove(&net.bridge);
        }
        if let Err(e) = done {
            tracing::warn!(bridge = %net.bridge, "deleting a removed network's bridge: {e}");
            if let Some(b) = &mut self.pool {
                b.retire_failed_at = Some(Instant::now());
            }
            return;
        }
        // Not there when it was finished meanwhile (see `finish_removed`).
        if let Some(i) = self.st.removed.iter().position(|n| n.id == net.id) {
            self.st.removed.swap_remove(i);
            self.st.ipam.release_subnet(&net.id);
        }
    }

    /// Each bridge network's pool, for [`pool::plan`].
    fn pool_uses(&self, book: &PoolBook) -> BTreeMap<String, NetworkUse> {
        let mut uses: BTreeMap<String, NetworkUse> = self
            .st
            .networks
            .values()
            .filter(|n| n.overlay.is_none())
            .map(|n| {
                let u = NetworkUse {
                    last_used: book.last_used.get(&n.id).copied(),
                    failed_at: book.failed_at.get(&n.id).copied(),
                    ..Default::default()
                };
                (n.id.clone(), u)
            })
            .collect();
        // A sandbox of a network that is not (or no longer) here counts as cold.
        for s in &self.st.pool {
            uses.entry(s.network_id.clone()).or_default().ready += 1;
        }
        for s in &book.making {
            uses.entry(s.network_id.clone()).or_default().making += 1;
        }
        uses
    }

    /// The pool worker's next jobs: retiring namespaces to delete (cold pools drained into
    /// them first), and sandboxes to make (their addresses allocated now). Empty when the
    /// pool is off or there is nothing to do.
    fn pool_jobs(&mut self, now: Instant) -> Vec<PoolJob> {
        let Some(book) = &self.pool else {
            return Vec::new();
        };
        let plan = pool::plan(&book.policy, now, &self.pool_uses(book));
        let mut changed = false;
        for id in &plan.drain {
            let (cold, keep): (Vec<Sandbox>, Vec<Sandbox>) = std::mem::take(&mut self.st.pool)
                .into_iter()
                .partition(|s| &s.network_id == id);
            self.st.pool = keep;
            self.st
                .retiring
                .extend(cold.iter().map(Retiring::of_sandbox));
            changed = true;
        }
        let mut jobs = Vec::new();
        let Some(book) = &mut self.pool else {
            return jobs;
        };
        let may_retire = book
            .retire_failed_at
            .is_none_or(|t| now.saturating_duration_since(t) >= book.policy.retry_after);
        if may_retire {
            for r in &self.st.retiring {
                if book.busy.insert(r.netns_path.clone()) {
                    jobs.push(PoolJob::Retire(r.clone()));
                }
            }
            // A removed network's bridge once no namespace is plugged into it.
            for net in &self.st.removed {
                let plugged = self
                    .st
                    .retiring
                    .iter()
                    .any(|r| r.links.iter().any(|l| l.network_id == net.id));
                if !plugged && book.busy_bridges.insert(net.bridge.clone()) {
                    jobs.push(PoolJob::RemoveBridge(net.clone()));
                }
            }
        }
        for (id, n) in plan.make {
            let Some(net) = self.st.networks.get(&id).cloned() else {
                continue;
            };
            for _ in 0..n {
                let key = new_key();
                let sandbox_owner = pool::owner_of(&key);
                let ip = match self.st.ipam.allocate_address(&id, &sandbox_owner) {
                    Ok(ip) => ip,
                    Err(e) => {
                        // A full network: no sandbox until the back-off ends.
                        tracing::debug!(network = %net.name, "no warm sandbox: {e}");
                        book.failed_at.insert(id.clone(), now);
                        break;
                    }
                };
                changed = true;
                let netns = self.cfg.run_dir.join("netns").join(pool::netns_name(&key));
                let (host, peer) = veth_names(&self.cfg.name_prefix, &key);
                let default_route = !net.internal;
                let sandbox = Sandbox {
                    key,
                    network_id: id.clone(),
                    netns_path: netns.clone(),
                    host_ifname: host.clone(),
                    ip,
                    default_route,
                };
                let veth = VethPlug {
                    host,
                    peer,
                    bridge: net.bridge.clone(),
                    netns,
                    ifname: "eth0".into(),
                    mac: mac_for_ip(ip),
                    mtu: net.mtu,
                    ip,
                    prefix: net.subnet.prefix(),
                    gateway: default_route.then_some(net.gateway),
                };
                book.making.push(sandbox.clone());
                jobs.push(PoolJob::Make { sandbox, veth });
            }
        }
        if changed {
            if let Err(e) = self.save_attachments() {
                tracing::warn!("saving the network state: {e}");
            }
        }
        jobs
    }

    /// Records the end of a pool job.
    fn pool_done(&mut self, job: PoolJob, done: Result<(), NetError>) {
        match job {
            PoolJob::Retire(r) => self.retired(&r, done),
            PoolJob::RemoveBridge(net) => self.bridge_removed(&net, done),
            PoolJob::Make { sandbox, .. } => {
                let now = Instant::now();
                let Some(book) = &mut self.pool else {
                    return;
                };
                let wanted = match book.making.iter().position(|s| s.key == sandbox.key) {
                    Some(i) => {
                        book.making.swap_remove(i);
                        true
                    }
                    // Cancelled: its network went.
                    None => false,
                };
                if let Err(e) = &done {
                    if wanted {
                        tracing::warn!(network = %sandbox.network_id, "making a warm sandbox: {e}");
                        book.failed_at.insert(sandbox.network_id.clone(), now);
                    }
                }
                if wanted && done.is_ok() && self.st.networks.contains_key(&sandbox.network_id) {
                    self.st.pool.push(sandbox);
                } else {
                    // What was made of it goes; its address once that is gone.
                    self.st.retiring.push(Retiring::of_sandbox(&sandbox));
                }
            }
        }
        if let Err(e) = self.save_attachments() {
            tracing::warn!("saving the network state: {e}");
        }
    }

    /// When the pool's worker should look again unasked.
    fn pool_next_wake(&self, now: Instant) -> Option<Duration> {
        let book = self.pool.as_ref()?;
        let retry = book
            .retire_failed_at
            .filter(|_| !self.st.retiring.is_empty() || !self.st.removed.is_empty())
            .map(|t| (t + book.policy.retry_after).saturating_duration_since(now));
        pool::next_wake(&book.policy, now, &self.pool_uses(book))
            .into_iter()
            .chain(retry)
            .min()
    }

    fn reconcile(&mut self, live: &HashSet<String>) -> Result<ReconcileReport, NetError> {
        let mut report = ReconcileReport::default();
        // The last run's warm sandboxes and retiring namespaces go (a warm pool refills on
        // the next attach). Those the worker of this run is at are left to it.
        let leftover = std::mem::take(&mut self.st.pool);
        self.st
            .retiring
            .extend(leftover.iter().map(Retiring::of_sandbox));
        let busy = self
            .pool
            .as_ref()
            .map(|b| b.busy.clone())
            .unwrap_or_default();
        let now: Vec<Retiring> = self
            .st
            .retiring
            .iter()
            .filter(|r| !busy.contains(&r.netns_path))
            .cloned()
            .collect();
        for r in now {
            let done = retire(&*self.ops, &r);
            if done.is_ok() {
                report.removed_sandboxes.push(r.netns_path.clone());
            }
            self.retired(&r, done);
        }
        if let Err(e) = self.finish_removed() {
            tracing::warn!("deleting the bridge of a removed network: {e}");
        }
        let dead: Vec<String> = self
            .st
            .containers
            .keys()
            .filter(|c| !live.contains(*c))
            .cloned()
            .collect();
        for c in dead {
            self.release_container(&c)?;
            report.released_containers.push(c);
        }
        let prefix = &self.cfg.name_prefix;
        let making: &[Sandbox] = self.pool.as_ref().map_or(&[], |b| &b.making);
        let known_veths: HashSet<&str> = self
            .st
            .containers
            .values()
            .flat_map(|c| &c.attachments)
            .map(|a| a.host_ifname.as_str())
            .chain(
                self.st
                    .retiring
                    .iter()
                    .flat_map(|r| &r.links)
                    .map(|l| l.host_ifname.as_str()),
            )
            .chain(self.st.pool.iter().map(|s| s.host_ifname.as_str()))
            .chain(making.iter().map(|s| s.host_ifname.as_str()))
            .collect();
        let bridges: HashSet<&str> = self
            .st
            .networks
            .values()
            .map(|n| n.bridge.as_str())
            .collect();
        let vxlans: HashSet<String> = self
            .st
            .networks
            .values()
            .filter_map(Network::vxlan)
            .collect();
        let (vp, cp, bp, xp) = (
            format!("v{prefix}"),
            format!("c{prefix}"),
            format!("{prefix}-"),
            format!("x{prefix}"),
        );
        let links = self.ops.list_links(None)?;
        let mut stale = Vec::new();
        for l in &links {
            let ours_veth = l.kind == "veth"
                && ((l.name.starts_with(&vp) && !known_veths.contains(l.name.as_str()))
                    || l.name.starts_with(&cp));
            let ours_bridge =
                l.kind == "bridge" && l.name.starts_with(&bp) && !bridges.contains(l.name.as_str());
            let ours_vxlan =
                l.kind == "vxlan" && l.name.starts_with(&xp) && !vxlans.contains(&l.name);
            if ours_veth || ours_bridge || ours_vxlan {
                stale.push(l.name.clone());
            }
        }
        let missing: Vec<Network> = self
            .st
            .networks
            .values()
            .filter(|n| !links.iter().any(|l| l.name == n.bridge))
            .cloned()
            .collect();
        // Host ends first: deleting one takes its peer along.
        stale.sort_by_key(|n| !n.starts_with(&vp));
        for name in stale {
            if self.ops.delete_link(None, &name)? {
                report.removed_links.push(name);
            }
        }
        for n in missing {
            self.ops.create_bridge(&n.bridge, n.mtu)?;
            self.ops
                .add_address(None, &n.bridge, n.gateway, n.subnet.prefix())?;
            report.recreated_bridges.push(n.bridge);
        }
        // Overlay networks: a vxlan device that survived the restart goes on as it is (its
        // entries too, read back at the next peer change); a lost one is made again, with the
        // peers known so far.
        let overlays: Vec<Network> = self
            .st
            .networks
            .values()
            .filter(|n| n.overlay.is_some())
            .cloned()
            .collect();
        for n in overlays {
            let (Some(o), Some(vx)) = (n.overlay, n.vxlan()) else {
                continue;
            };
            match links.iter().find(|l| l.name == vx && l.kind == "vxlan") {
                Some(l) => {
                    if l.master.as_deref() != Some(n.bridge.as_str()) {
                        // Its bridge was made again.
                        self.ops.set_master(&vx, &n.bridge)?;
                    }
                    if !l.up {
                        self.ops.set_up(None, &vx)?;
                    }
                }
                None => {
                    if links.iter().any(|l| l.name == vx) {
                        // Not a vxlan device: not ours to keep under that name.
                        self.ops.delete_link(None, &vx)?;
                    }
                    self.ops.create_vxlan(&VxlanLink {
                        name: vx.clone(),
                        vni: o.vni,
                        port: VXLAN_PORT,
                        mtu: n.mtu,
                        bridge: n.bridge.clone(),
                    })?;
                    self.peers.entry(n.name.clone()).or_default().programmed =
                        Some(OverlayEntries::default());
                    self.program_peers(&n)?;
                    report.recreated_vxlans.push(vx);
                }
            }
        }
        let making: &[Sandbox] = self.pool.as_ref().map_or(&[], |b| &b.making);
        let known_ns: HashSet<PathBuf> = self
            .st
            .containers
            .values()
            .map(|c| c.netns_path.clone())
            .chain(self.st.retiring.iter().map(|r| r.netns_path.clone()))
            .chain(self.st.pool.iter().map(|s| s.netns_path.clone()))
            .chain(making.iter().map(|s| s.netns_path.clone()))
            .collect();
        let dir = self.cfg.run_dir.join("netns");
        if let Ok(rd) = std::fs::read_dir(&dir) {
            for e in rd.flatten() {
                let p = e.path();
                if !known_ns.contains(&p) && self.ops.delete_netns(&p)? {
                    report.removed_netns.push(p);
                }
            }
        }
        // Addresses held for no one (a crash between an allocation and its record).
        let mut owners: HashSet<String> = self.st.containers.keys().cloned().collect();
        owners.extend(self.st.retiring.iter().map(|r| r.owner.clone()));
        owners.extend(self.st.pool.iter().map(Sandbox::owner));
        if let Some(b) = &self.pool {
            owners.extend(b.making.iter().map(Sandbox::owner));
        }
        for n in self.st.ipam.networks.values_mut() {
            let stray: Vec<Ipv4Addr> = n
                .allocated
                .iter()
                .filter(|(_, o)| !owners.contains(*o))
                .map(|(ip, _)| *ip)
                .collect();
            for ip in stray {
                n.allocated.remove(&ip);
                report.released_addresses.push(ip);
            }
        }
        self.apply_firewall()?;
        self.save()?;
        Ok(report)
    }
}

/// What [`Core::plan_attach`] decided.
enum Planned {
    /// A warm sandbox was taken: attached and recorded.
    Done(Attachment),
    /// The asked-for address is about to be free: ask again shortly.
    Wait,
    /// Links to make on the host.
    Plug(Box<PlannedAttach>),
}

/// An attachment decided by [`Core::plan_attach`], to be made on the host.
struct PlannedAttach {
    /// The plan made the container's entry: the netns is to be created too.
    created_ns: bool,
    /// A warm sandbox that held the asked-for address: deleted first.
    evicted: Option<Sandbox>,
    veth: VethPlug,
    att: Attachment,
}

impl PlannedAttach {
    /// Makes the planned netns and links (the slow part, outside the manager's lock).
    fn plug<N: NetOps>(&self, ops: &N) -> Result<(), NetError> {
        if let Some(sb) = &self.evicted {
            retire(ops, &Retiring::of_sandbox(sb))?;
        }
        if self.created_ns {
            // A file no state knows is a leftover of a crash before the state was saved.
            ops.delete_netns(&self.veth.netns)?;
            ops.create_netns(&self.veth.netns)?;
        }
        ops.plug_veth(&self.veth)
    }
}

/// The pool's worker: does the pool's work whenever kicked (or when a pool goes cold),
/// until its manager is dropped.
fn pool_worker<N: NetOps>(core: Weak<Mutex<Core<N>>>, wake: Arc<Wake>) {
    loop {
        let Some(strong) = core.upgrade() else {
            return;
        };
        let next = pool_rounds(&strong);
        drop(strong);
        wake.wait(next.map_or(POOL_IDLE_CHECK, |d| d.min(POOL_IDLE_CHECK)));
    }
}

/// Runs pool jobs until there are none; returns when to look again unasked. Each job runs
/// outside the manager's lock and is recorded as soon as it is done, so a sandbox is ready
/// for the next container at once. Namespaces to delete go first: they hold addresses.
fn pool_rounds<N: NetOps>(core: &Mutex<Core<N>>) -> Option<Duration> {
    let lock = || core.lock().unwrap_or_else(|e| e.into_inner());
    loop {
        let (mut jobs, ops) = {
            let mut c = lock();
            (c.pool_jobs(Instant::now()), c.ops.clone())
        };
        if jobs.is_empty() {
            return lock().pool_next_wake(Instant::now());
        }
        jobs.sort_by_key(|j| matches!(j, PoolJob::Make { .. }));
        for job in jobs {
            let done = job.run(&*ops);
            lock().pool_done(job, done);
        }
    }
}

/// Bridge networks of one node. Cheap to clone (shared state).
pub struct NetworkManager<N: NetOps = RealNetOps> {
    core: Arc<Mutex<Core<N>>>,
}

impl<N: NetOps> Clone for NetworkManager<N> {
    fn clone(&self) -> Self {
        Self {
            core: self.core.clone(),
        }
    }
}

impl NetworkManager<RealNetOps> {
    /// The real manager: loads `network.json` from `cfg.state_dir` if there is one.
    pub fn open(cfg: NetworkConfig) -> Result<Self, NetError> {
        Self::with_ops(cfg, RealNetOps::new())
    }
}

impl<N: NetOps> NetworkManager<N> {
    /// A manager over any [`NetOps`] (the fake in unit tests).
    pub fn with_ops(cfg: NetworkConfig, ops: N) -> Result<Self, NetError> {
        validate_prefix(&cfg.name_prefix)?;
        if cfg.nft_table.is_empty()
            || cfg.nft_table.len() > 60
            || !cfg
                .nft_table
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            return Err(NetError::Invalid(format!(
                "nft table name {:?} must be 1 to 60 characters of [A-Za-z0-9_-]",
                cfg.nft_table
            )));
        }
        let path = cfg.state_dir.join(STATE_FILE);
        let st = match std::fs::read(&path) {
            Ok(bytes) => {
                let mut st: NetworkState = serde_json::from_slice(&bytes).map_err(|e| {
                    NetError::Invalid(format!("corrupt network state {}: {e}", path.display()))
                })?;
                // The configured pools govern new subnets; existing ones stay as they are.
                st.ipam.pools = cfg.pools.clone();
                st
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => NetworkState {
                ipam: Ipam::new(cfg.pools.clone()),
                ..Default::default()
            },
            Err(source) => {
                return Err(NetError::Io {
                    what: format!("read {}", path.display()),
                    source,
                })
            }
        };
        Ok(Self {
            core: Arc::new(Mutex::new(Core {
                cfg,
                ops: Arc::new(ops),
                st,
                plugging: Vec::new(),
                peers: BTreeMap::new(),
                pool: None,
            })),
        })
    }

    /// Turns the warm pool on (see [`super::pool`]): containers take ready sandboxes of the
    /// bridge networks in use, and a worker thread makes them, drains cold pools and deletes
    /// released namespaces in the background. Once per manager; later calls change nothing.
    pub fn enable_pool(&self, policy: PoolPolicy) {
        if let Some(wake) = self.start_pool(policy) {
            let core = Arc::downgrade(&self.core);
            let spawned = std::thread::Builder::new()
                .name("shoal-netpool".into())
                .spawn(move || pool_worker(core, wake));
            if let Err(e) = spawned {
                // Without a worker nothing would ever be made or deleted: stay off.
                tracing::warn!("no warm network pool: cannot start its thread: {e}");
                self.core.lock().unwrap_or_else(|e| e.into_inner()).pool = None;
            }
        }
    }

    /// Turns the pool on without a worker: [`Self::settle_pool`] does its work (tests).
    #[cfg(test)]
    fn enable_pool_by_hand(&self, policy: PoolPolicy) {
        self.start_pool(policy);
    }

    fn start_pool(&self, policy: PoolPolicy) -> Option<Arc<Wake>> {
        let mut c = self.core.lock().unwrap_or_else(|e| e.into_inner());
        if c.pool.is_some() {
            return None;
        }
        let wake = Arc::new(Wake::default());
        c.pool = Some(PoolBook {
            policy,
            last_used: BTreeMap::new(),
            failed_at: BTreeMap::new(),
            making: Vec::new(),
            busy: HashSet::new(),
            busy_bridges: HashSet::new(),
            retire_failed_at: None,
            wake: wake.clone(),
        });
        Some(wake)
    }

    /// Does the pool's pending work (sandboxes to make, namespaces and bridges to delete)
    /// here, until there is none and the worker is not at a job either. The worker does the
    /// same on its own; this lets a caller wait for it.
    pub async fn settle_pool(&self) {
        let core = self.core.clone();
        let _ = tokio::task::spawn_blocking(move || loop {
            pool_rounds(&core);
            let c = core.lock().unwrap_or_else(|e| e.into_inner());
            let idle = c.pool.as_ref().is_none_or(|b| {
                b.busy.is_empty() && b.busy_bridges.is_empty() && b.making.is_empty()
            });
            if idle {
                return;
            }
            drop(c);
            std::thread::sleep(Duration::from_millis(2));
        })
        .await;
    }

    /// The daemon stops: the pool keeps nothing ready any more, and its sandboxes and the
    /// released namespaces waiting for deletion are deleted now (a stopped daemon leaves
    /// mounted only its containers' namespaces, and its data dir can be removed). Returns
    /// once the worker is done; one that fails is left to the next start, as after a crash.
    pub async fn empty_pool(&self) {
        {
            let mut c = self.core.lock().unwrap_or_else(|e| e.into_inner());
            match c.pool.as_mut() {
                Some(book) => book.policy.size = 0,
                None => return,
            }
        }
        self.settle_pool().await;
    }

    /// The warm sandboxes ready now.
    pub fn pool(&self) -> Vec<Sandbox> {
        let c = self.core.lock().unwrap_or_else(|e| e.into_inner());
        c.st.pool.clone()
    }

    /// The [`NetOps`] the manager uses.
    pub fn ops(&self) -> Arc<N> {
        self.core
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .ops
            .clone()
    }

    async fn call<T, F>(&self, f: F) -> Result<T, NetError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Core<N>) -> Result<T, NetError> + Send + 'static,
    {
        let core = self.core.clone();
        tokio::task::spawn_blocking(move || {
            let mut c = core.lock().unwrap_or_else(|e| e.into_inner());
            f(&mut c)
        })
        .await
        .map_err(|e| NetError::Invalid(format!("network task failed: {e}")))?
    }

    /// Creates a bridge network: a subnet from IPAM, the bridge with the gateway address, the
    /// firewall rules. Changes nothing on error.
    pub async fn create_network(&self, spec: NetworkSpec) -> Result<Network, NetError> {
        self.call(move |c| c.create_network(spec)).await
    }

    /// The network named `spec.name`, created first if there is none (one step under the
    /// manager's lock, so concurrent tasks that need the same network make it once).
    ///
    /// An overlay network here whose VNI, subnet or gateway differ from the spec's (the
    /// cluster's network of that name was replaced while this node kept the old one) is
    /// replaced when no container uses it, and an error otherwise.
    pub async fn ensure_network(&self, spec: NetworkSpec) -> Result<Network, NetError> {
        self.call(move |c| c.ensure_network(spec)).await
    }

    /// Sets the complete set of remote endpoints of overlay network `network` (name or id):
    /// the FDB and neighbour entries of its vxlan device are changed by the difference with
    /// what they hold. For a network not on this node yet, the set is kept and programmed when
    /// the network is created.
    pub async fn set_overlay_peers(
        &self,
        network: &str,
        peers: Vec<OverlayPeer>,
    ) -> Result<(), NetError> {
        let n = network.to_string();
        self.call(move |c| c.set_overlay_peers(&n, peers)).await
    }

    /// The peers last set for an overlay network (by name), sorted; empty when none.
    pub fn overlay_peers(&self, network: &str) -> Vec<OverlayPeer> {
        let c = self.core.lock().unwrap_or_else(|e| e.into_inner());
        c.peers
            .get(network)
            .map(|p| p.wanted.iter().copied().collect())
            .unwrap_or_default()
    }

    /// Removes a network (by name, id or unique id prefix) that has no attachments.
    pub async fn remove_network(&self, name_or_id: &str) -> Result<(), NetError> {
        let n = name_or_id.to_string();
        self.call(move |c| c.remove_network(&n)).await
    }

    /// Attaches a container to a network, creating its netns file on first use. Only the
    /// bookkeeping holds the manager's lock: the namespace and links of several containers
    /// starting at once are made side by side.
    ///
    /// `ip`: the container's address (Docker's `--ip`): a host address of the subnet, not the
    /// gateway, not in use. `None` lets the node's IPAM pick one, except on an overlay network,
    /// whose addresses only the cluster manager gives.
    pub async fn attach(
        &self,
        container_id: &str,
        network: &str,
        aliases: Vec<String>,
        ip: Option<Ipv4Addr>,
    ) -> Result<Attachment, NetError> {
        let deadline = Instant::now() + HELD_ADDRESS_WAIT;
        let plan = loop {
            let (cid, net, aliases) = (
                container_id.to_string(),
                network.to_string(),
                aliases.clone(),
            );
            let may_wait = Instant::now() < deadline;
            match self
                .call(move |c| c.plan_attach(&cid, &net, aliases, ip, may_wait))
                .await?
            {
                Planned::Done(att) => return Ok(att),
                Planned::Wait => tokio::time::sleep(Duration::from_millis(10)).await,
                Planned::Plug(plan) => break *plan,
            }
        };
        // The ops are taken on the blocking thread too: the lock may be held a while.
        let core = self.core.clone();
        let (plugged, plan) = tokio::task::spawn_blocking(move || {
            let ops = core.lock().unwrap_or_else(|e| e.into_inner()).ops.clone();
            (plan.plug(&*ops), plan)
        })
        .await
        .map_err(|e| NetError::Invalid(format!("network task failed: {e}")))?;
        self.call(move |c| c.finish_attach(plan, plugged)).await
    }

    /// Detaches a container from one network; its netns file stays.
    pub async fn detach(&self, container_id: &str, network: &str) -> Result<(), NetError> {
        let (cid, net) = (container_id.to_string(), network.to_string());
        self.call(move |c| c.detach(&cid, &net)).await
    }

    /// Removes all of a container's attachments and its netns file. Idempotent. With the
    /// warm pool on, the links and the netns file are deleted in the background, and the
    /// addresses are given back once they are.
    pub async fn release_container(&self, container_id: &str) -> Result<(), NetError> {
        let cid = container_id.to_string();
        self.call(move |c| c.release_container(&cid)).await
    }

    /// After a restart: releases containers not in `live`, deletes our links and netns files
    /// that the state does not know, recreates missing bridges, reloads the firewall.
    pub async fn reconcile(&self, live: HashSet<String>) -> Result<ReconcileReport, NetError> {
        self.call(move |c| c.reconcile(&live)).await
    }

    pub fn networks(&self) -> Vec<Network> {
        let c = self.core.lock().unwrap_or_else(|e| e.into_inner());
        c.st.networks.values().cloned().collect()
    }

    pub fn network(&self, name_or_id: &str) -> Result<Network, NetError> {
        let c = self.core.lock().unwrap_or_else(|e| e.into_inner());
        c.find_network(name_or_id)
    }

    pub fn attachments(&self, container_id: &str) -> Vec<Attachment> {
        let c = self.core.lock().unwrap_or_else(|e| e.into_inner());
        c.st.attachments(container_id)
    }

    /// [`Self::attachments`] for async code (see [`Self::read_state`]).
    pub async fn read_attachments(&self, container_id: &str) -> Vec<Attachment> {
        let id = container_id.to_string();
        self.call(move |c| Ok(c.st.attachments(&id)))
            .await
            .unwrap_or_default()
    }

    /// The netns file of a container, if it has one.
    pub fn netns_path(&self, container_id: &str) -> Option<PathBuf> {
        let c = self.core.lock().unwrap_or_else(|e| e.into_inner());
        c.st.containers
            .get(container_id)
            .map(|c| c.netns_path.clone())
    }

    /// [`Self::state`] for async code: read on a blocking thread, because the lock may be held
    /// by an operation doing slow kernel work (deleting a bridge or a veth waits for RCU grace
    /// periods, ~50 ms each), and a runtime worker waiting for it stalls every task queued
    /// behind it (the daemon's gRPC connections included).
    pub async fn read_state(&self) -> NetworkState {
        self.call(|c| Ok(c.st.clone())).await.unwrap_or_default()
    }

    /// A copy of the whole persisted state.
    pub fn state(&self) -> NetworkState {
        self.core
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .st
            .clone()
    }

    /// The config in use.
    pub fn config(&self) -> NetworkConfig {
        self.core
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .cfg
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use super::super::FakeNetOps;
    use super::*;
    use std::path::Path;

    fn mgr(dir: &Path) -> NetworkManager<FakeNetOps> {
        let ops = FakeNetOps::new();
        ops.add_host_route("0.0.0.0/0".parse().unwrap());
        ops.add_host_route("172.17.0.0/16".parse().unwrap());
        NetworkManager::with_ops(NetworkConfig::new(dir.join("state"), dir.join("run")), ops)
            .unwrap()
    }

    #[tokio::test]
    async fn a_network_being_plugged_into_cannot_be_removed() {
        let d = tempfile::tempdir().unwrap();
        let m = mgr(d.path());
        m.create_network(NetworkSpec::named("n")).await.unwrap();
        let Planned::Plug(plan) = m
            .core
            .lock()
            .unwrap()
            .plan_attach("c1", "n", vec![], None, true)
            .unwrap()
        else {
            panic!("no pool: links to make");
        };
        let busy = m.remove_network("n").await.unwrap_err().to_string();
        assert!(busy.contains("c1"), "{busy}");
        plan.plug(&*m.ops()).unwrap();
        m.core.lock().unwrap().finish_attach(*plan, Ok(())).unwrap();
        assert!(m.remove_network("n").await.is_err(), "attached now");
        m.release_container("c1").await.unwrap();
        m.remove_network("n").await.unwrap();
    }

    fn links(m: &NetworkManager<FakeNetOps>, ns: Option<&Path>) -> Vec<String> {
        m.ops()
            .list_links(ns)
            .unwrap()
            .into_iter()
            .map(|l| l.name)
            .collect()
    }

    #[tokio::test]
    async fn create_attach_detach_release() {
        let dir = tempfile::tempdir().unwrap();
        let m = mgr(dir.path());
        let a = m.create_network(NetworkSpec::named("front")).await.unwrap();
        assert_eq!(
            a.subnet.to_string(),
            "172.18.0.0/16",
            "skips the host route"
        );
        assert_eq!(a.gateway, "172.18.0.1".parse::<Ipv4Addr>().unwrap());
        assert!(a.bridge.starts_with("sh-") && a.bridge.len() <= 15);
        let b = m
            .create_network(NetworkSpec {
                internal: true,
                ..NetworkSpec::named("back")
            })
            .await
            .unwrap();
        let ops = m.ops();
        {
            let s = ops.state.lock().unwrap();
            assert!(s.nft_script.contains(&format!(
                "iifname \"{}\" oifname != \"{}\" drop",
                b.bridge, b.bridge
            )));
            assert_eq!(s.sysctls[IP_FORWARD], "1");
            assert_eq!(s.docker_user["shoal"].len(), 2);
        }
        assert!(m.state().ip_forward_enabled);

        let e = m
            .create_network(NetworkSpec::named("front"))
            .await
            .unwrap_err();
        assert!(e.to_string().contains("already exists"), "{e}");
        let e = m
            .create_network(NetworkSpec {
                subnet: Some("172.18.5.0/24".parse().unwrap()),
                ..NetworkSpec::named("x")
            })
            .await
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "subnet 172.18.5.0/24 overlaps subnet 172.18.0.0/16 of network \"front\""
        );

        let x1 = m.attach("c1", "back", vec![], None).await.unwrap();
        assert_eq!(x1.ifname, "eth0");
        assert!(!x1.default_route, "internal networks give no default route");
        let x2 = m
            .attach("c1", "front", vec!["web".into()], None)
            .await
            .unwrap();
        assert_eq!(x2.ifname, "eth1");
        assert!(x2.default_route);
        assert_eq!(x2.ip, "172.18.0.2".parse::<Ipv4Addr>().unwrap());
        assert_eq!(x2.mac, "02:42:ac:12:00:02");
        assert_eq!(x1.netns_path, x2.netns_path);
        assert!(x1.netns_path.starts_with(dir.path().join("run/netns")));
        let ns = Some(x1.netns_path.as_path());
        assert_eq!(ops.default_gateway(ns), Some(a.gateway));
        let mut names = links(&m, ns);
        names.sort();
        assert_eq!(names, ["eth0", "eth1", "lo"]);
        assert!(m.attach("c1", "front", vec![], None).await.is_err());
        assert!(m
            .remove_network("front")
            .await
            .unwrap_err()
            .to_string()
            .contains("c1"));

        // The state survives a restart.
        let again = NetworkManager::with_ops(
            NetworkConfig::new(dir.path().join("state"), dir.path().join("run")),
            FakeNetOps::new(),
        )
        .unwrap();
        assert_eq!(again.state(), m.state());

        m.detach("c1", "front").await.unwrap();
        assert_eq!(links(&m, ns), ["eth0", "lo"]);
        assert_eq!(m.attachments("c1").len(), 1);
        m.release_container("c1").await.unwrap();
        assert_eq!(ops.netns_count(), 0);
        assert!(m.attachments("c1").is_empty());
        m.release_container("c1").await.unwrap();
        m.remove_network("front").await.unwrap();
        m.remove_network(&b.id).await.unwrap();
        assert!(links(&m, None).is_empty(), "{:?}", links(&m, None));
        let s = ops.state.lock().unwrap();
        assert_eq!(s.nft_script, firewall::ruleset("shoal", &[]));
        assert_eq!(
            s.sysctls[IP_FORWARD], "0",
            "restored: shoal had switched it on"
        );
        assert!(s.docker_user.is_empty());
    }

    #[tokio::test]
    async fn default_route_moves_to_the_next_network() {
        let dir = tempfile::tempdir().unwrap();
        let m = mgr(dir.path());
        m.create_network(NetworkSpec::named("a")).await.unwrap();
        let b = m.create_network(NetworkSpec::named("b")).await.unwrap();
        let x = m.attach("c", "a", vec![], None).await.unwrap();
        let y = m.attach("c", "b", vec![], None).await.unwrap();
        assert!(x.default_route && !y.default_route);
        m.detach("c", "a").await.unwrap();
        assert!(m.attachments("c")[0].default_route);
        assert_eq!(
            m.ops().default_gateway(Some(&x.netns_path)),
            Some(b.gateway)
        );
        // A re-attach reuses eth0.
        assert_eq!(
            m.attach("c", "a", vec![], None).await.unwrap().ifname,
            "eth0"
        );
    }

    /// The state without the IPAM cursors (a failed attempt may advance them).
    fn essentials(s: &NetworkState) -> String {
        let allocated: Vec<_> = s.ipam.networks.values().map(|n| &n.allocated).collect();
        format!("{:?} {:?} {:?}", s.networks, allocated, s.containers)
    }

    #[tokio::test]
    async fn failures_roll_back() {
        let dir = tempfile::tempdir().unwrap();
        let m = mgr(dir.path());
        m.create_network(NetworkSpec::named("a")).await.unwrap();
        let before = m.state();
        m.ops()
            .state
            .lock()
            .unwrap()
            .fail_ops
            .push("set_default_route");
        assert!(m.attach("c", "a", vec![], None).await.is_err());
        assert_eq!(essentials(&m.state()), essentials(&before));
        assert_eq!(m.ops().netns_count(), 0);
        assert_eq!(links(&m, None).len(), 1, "only the bridge");
        m.ops().state.lock().unwrap().fail_ops = vec!["add_address"];
        assert!(m.create_network(NetworkSpec::named("b")).await.is_err());
        assert_eq!(essentials(&m.state()), essentials(&before));
        assert_eq!(links(&m, None).len(), 1);
        m.ops().state.lock().unwrap().fail_ops.clear();
        let e = m
            .create_network(NetworkSpec {
                gateway: Some("10.0.0.1".parse().unwrap()),
                ..NetworkSpec::named("b")
            })
            .await
            .unwrap_err();
        assert!(e.to_string().contains("--subnet"), "{e}");
        assert!(m.attach("../x", "a", vec![], None).await.is_err());
        assert!(m.attach("c", "nope", vec![], None).await.is_err());
    }

    #[tokio::test]
    async fn exhaustion_of_a_small_subnet() {
        let dir = tempfile::tempdir().unwrap();
        let m = mgr(dir.path());
        m.create_network(NetworkSpec {
            subnet: Some("10.5.0.0/30".parse().unwrap()),
            ..NetworkSpec::named("tiny")
        })
        .await
        .unwrap();
        m.attach("c1", "tiny", vec![], None).await.unwrap();
        let e = m.attach("c2", "tiny", vec![], None).await.unwrap_err();
        assert!(e.to_string().contains("no free address"), "{e}");
        assert_eq!(m.ops().netns_count(), 1, "c2's netns was rolled back");
    }

    #[tokio::test]
    async fn reconcile_releases_dead_containers_and_strays() {
        let dir = tempfile::tempdir().unwrap();
        let m = mgr(dir.path());
        m.create_network(NetworkSpec::named("a")).await.unwrap();
        m.attach("alive", "a", vec![], None).await.unwrap();
        m.attach("dead", "a", vec![], None).await.unwrap();
        m.ops()
            .create_veth("vshdeadbeef", "cshdeadbeef", 1500)
            .unwrap();
        m.ops()
            .create_veth("vethother", "vethother2", 1500)
            .unwrap();
        let live: HashSet<String> = ["alive".to_string()].into();
        let r = m.reconcile(live).await.unwrap();
        assert_eq!(r.released_containers, ["dead"]);
        // A netns file left by a crash before the state was saved does not block an attach.
        let cfg = m.config();
        m.ops().create_netns(&cfg.netns_path("c9")).unwrap();
        m.attach("c9", "a", vec![], None).await.unwrap();
        assert_eq!(r.removed_links.len(), 1, "{r:?}");
        assert_eq!(m.ops().netns_count(), 2);
        let names = links(&m, None);
        assert!(names.contains(&"vethother".to_string()), "not ours: kept");
        assert_eq!(names.iter().filter(|n| n.starts_with("vsh")).count(), 2);
    }

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    fn peer(a: &str, vtep: &str) -> OverlayPeer {
        OverlayPeer {
            ip: ip(a),
            vtep: ip(vtep),
        }
    }

    fn overlay_spec(name: &str, subnet: &str, vni: u32) -> NetworkSpec {
        let subnet: Ipv4Net = subnet.parse().unwrap();
        NetworkSpec {
            subnet: Some(subnet),
            gateway: Some(subnet.first_host()),
            overlay: Some(OverlaySpec { vni }),
            ..NetworkSpec::named(name)
        }
    }

    /// Takes the FDB and neighbour changes logged so far.
    fn overlay_log(m: &NetworkManager<FakeNetOps>) -> Vec<String> {
        std::mem::take(&mut m.ops().state.lock().unwrap().overlay_log)
    }

    #[tokio::test]
    async fn overlay_network_create_attach_remove() {
        let dir = tempfile::tempdir().unwrap();
        let m = mgr(dir.path());
        let n = m
            .create_network(overlay_spec("ov", "10.77.0.0/24", 4242))
            .await
            .unwrap();
        assert_eq!(n.overlay, Some(OverlaySpec { vni: 4242 }));
        assert_eq!(n.gateway, ip("10.77.0.1"));
        assert_eq!(n.mtu, 1450, "room for the VXLAN header");
        let vx = n.vxlan().unwrap();
        assert_eq!(vx, format!("x{}", n.bridge.replace('-', "")));
        assert!(vx.len() <= 15);
        let ops = m.ops();
        assert_eq!(
            ops.vxlan(&vx),
            Some(VxlanLink {
                name: vx.clone(),
                vni: 4242,
                port: 4789,
                mtu: 1450,
                bridge: n.bridge.clone(),
            })
        );
        let host = ops.list_links(None).unwrap();
        let l = host.iter().find(|l| l.name == vx).unwrap();
        assert_eq!(
            (l.kind.as_str(), l.master.as_deref(), l.up),
            ("vxlan", Some(n.bridge.as_str()), true)
        );
        let br = host.iter().find(|l| l.name == n.bridge).unwrap();
        assert_eq!(br.mtu, 1450);
        assert!(
            ops.fdb(&vx).is_empty(),
            "nothing flooded: no all-zero entry"
        );
        {
            let s = ops.state.lock().unwrap();
            assert!(s.nft_script.contains(&format!(
                "ip saddr 10.77.0.0/24 oifname != \"{}\" masquerade",
                n.bridge
            )));
        }

        let a = m
            .attach("c1", "ov", vec![], Some(ip("10.77.0.5")))
            .await
            .unwrap();
        assert_eq!((a.ip, a.prefix_len), (ip("10.77.0.5"), 24));
        assert_eq!(a.mac, "02:42:0a:4d:00:05");
        assert!(a.default_route, "egress through this node's gateway");
        let eth0 = ops
            .list_links(Some(&a.netns_path))
            .unwrap()
            .into_iter()
            .find(|l| l.name == "eth0")
            .unwrap();
        assert_eq!(eth0.mtu, 1450);

        // The record survives a restart; a record written before overlays loads too.
        let again = NetworkManager::with_ops(m.config(), FakeNetOps::new()).unwrap();
        assert_eq!(again.network("ov").unwrap(), n);
        let mut old = serde_json::to_value(&n).unwrap();
        old.as_object_mut().unwrap().remove("overlay");
        let old: Network = serde_json::from_value(old).unwrap();
        assert_eq!(old.overlay, None);

        assert!(m.remove_network("ov").await.is_err(), "c1 is attached");
        m.release_container("c1").await.unwrap();
        m.remove_network("ov").await.unwrap();
        assert!(links(&m, None).is_empty(), "{:?}", links(&m, None));
        assert_eq!(ops.vxlan(&vx), None);

        // A given MTU wins.
        let n = m
            .create_network(NetworkSpec {
                mtu: Some(1400),
                ..overlay_spec("ov", "10.77.0.0/24", 4242)
            })
            .await
            .unwrap();
        assert_eq!(ops.vxlan(&n.vxlan().unwrap()).unwrap().mtu, 1400);
    }

    #[tokio::test]
    async fn overlay_refusals() {
        let dir = tempfile::tempdir().unwrap();
        let m = mgr(dir.path());
        let invalid = |r: Result<Network, NetError>| match r {
            Err(NetError::Invalid(e)) => e,
            other => panic!("expected Invalid, got {other:?}"),
        };
        let e = invalid(
            m.create_network(NetworkSpec {
                gateway: None,
                ..overlay_spec("o", "10.77.0.0/24", 7)
            })
            .await,
        );
        assert!(e.contains("needs its subnet and gateway"), "{e}");
        let e = invalid(
            m.create_network(NetworkSpec {
                subnet: None,
                gateway: None,
                ..overlay_spec("o", "10.77.0.0/24", 7)
            })
            .await,
        );
        assert!(e.contains("needs its subnet and gateway"), "{e}");
        assert!(
            invalid(m.create_network(overlay_spec("o", "10.77.0.0/24", 0)).await).contains("VNI 0")
        );
        assert!(invalid(
            m.create_network(overlay_spec("o", "10.77.0.0/24", 1 << 24))
                .await
        )
        .contains("VNI"));
        assert!(m.state().networks.is_empty(), "nothing was made");
        assert!(links(&m, None).is_empty());

        m.create_network(overlay_spec("o", "10.77.0.0/24", 7))
            .await
            .unwrap();
        let e = invalid(m.create_network(overlay_spec("p", "10.78.0.0/24", 7)).await);
        assert!(e.contains("VNI 7 is already used by network \"o\""), "{e}");

        // Attaching: the address comes from the manager, and must fit.
        let e = m.attach("c1", "o", vec![], None).await.unwrap_err();
        assert!(matches!(e, NetError::Invalid(_)), "{e:?}");
        assert!(
            e.to_string()
                .contains("overlay network \"o\" needs an address from the manager"),
            "{e}"
        );
        for (bad, what) in [
            ("10.78.0.5", "is not a host address of subnet 10.77.0.0/24"),
            ("10.77.0.255", "is not a host address"),
            ("10.77.0.0", "is not a host address"),
            ("10.77.0.1", "is the gateway of network \"o\""),
        ] {
            let e = m
                .attach("c1", "o", vec![], Some(ip(bad)))
                .await
                .unwrap_err();
            assert!(e.to_string().contains(what), "{bad}: {e}");
        }
        m.attach("c1", "o", vec![], Some(ip("10.77.0.9")))
            .await
            .unwrap();
        let e = m
            .attach("c2", "o", vec![], Some(ip("10.77.0.9")))
            .await
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "address 10.77.0.9 is already in use in network \"o\" (by c1)"
        );
        assert_eq!(m.ops().netns_count(), 1, "c2 got no netns");
        assert!(m.attachments("c2").is_empty());

        // Peers must fit the network; a bridge network has none.
        let before = overlay_log(&m);
        let e = m
            .set_overlay_peers("o", vec![peer("10.78.0.2", "198.18.0.2")])
            .await
            .unwrap_err();
        assert!(matches!(e, NetError::Invalid(_)), "{e:?}");
        let e = m
            .set_overlay_peers(
                "o",
                vec![
                    peer("10.77.0.2", "198.18.0.2"),
                    peer("10.77.0.2", "198.18.0.3"),
                ],
            )
            .await
            .unwrap_err();
        assert!(e.to_string().contains("twice"), "{e}");
        assert!(overlay_log(&m).is_empty(), "{before:?}");
        m.create_network(NetworkSpec::named("br")).await.unwrap();
        let e = m
            .set_overlay_peers("br", vec![peer("172.18.0.9", "198.18.0.2")])
            .await
            .unwrap_err();
        assert!(e.to_string().contains("not an overlay network"), "{e}");
    }

    #[tokio::test]
    async fn a_given_address_on_a_bridge_network() {
        let dir = tempfile::tempdir().unwrap();
        let m = mgr(dir.path());
        m.create_network(NetworkSpec {
            subnet: Some("10.5.0.0/24".parse().unwrap()),
            ip_range: Some("10.5.0.0/28".parse().unwrap()),
            ..NetworkSpec::named("b")
        })
        .await
        .unwrap();
        let a = m
            .attach("c1", "b", vec![], Some(ip("10.5.0.2")))
            .await
            .unwrap();
        assert_eq!(
            (a.ip, a.mac.as_str()),
            (ip("10.5.0.2"), "02:42:0a:05:00:02")
        );
        // Outside the ip range but in the subnet, as Docker allows.
        let b = m
            .attach("c2", "b", vec![], Some(ip("10.5.0.200")))
            .await
            .unwrap();
        assert_eq!(b.ip, ip("10.5.0.200"));
        // IPAM's own pick skips the taken address.
        assert_eq!(
            m.attach("c3", "b", vec![], None).await.unwrap().ip,
            ip("10.5.0.3")
        );
        let e = m
            .attach("c4", "b", vec![], Some(ip("10.5.0.3")))
            .await
            .unwrap_err();
        assert!(
            e.to_string().contains("in use in network \"b\" (by c3)"),
            "{e}"
        );
        // Released: free again.
        m.release_container("c1").await.unwrap();
        m.attach("c4", "b", vec![], Some(ip("10.5.0.2")))
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn overlay_peers_are_programmed_by_difference() {
        let dir = tempfile::tempdir().unwrap();
        let m = mgr(dir.path());
        let n = m
            .create_network(overlay_spec("ov", "10.77.0.0/24", 42))
            .await
            .unwrap();
        let vx = n.vxlan().unwrap();
        overlay_log(&m);
        let (a, b, c) = (
            peer("10.77.0.2", "198.18.0.2"),
            peer("10.77.0.3", "198.18.0.2"),
            peer("10.77.0.4", "198.18.0.3"),
        );
        m.set_overlay_peers("ov", vec![b, a]).await.unwrap();
        assert_eq!(
            overlay_log(&m),
            [
                format!("fdb add {vx} 02:42:0a:4d:00:02 198.18.0.2"),
                format!("fdb add {vx} 02:42:0a:4d:00:03 198.18.0.2"),
                format!("neigh add {vx} 10.77.0.2 02:42:0a:4d:00:02"),
                format!("neigh add {vx} 10.77.0.3 02:42:0a:4d:00:03"),
            ]
        );
        assert_eq!(m.overlay_peers("ov"), [a, b]);
        // The same set again: nothing to do.
        m.set_overlay_peers("ov", vec![a, b]).await.unwrap();
        assert!(overlay_log(&m).is_empty());
        // a goes, c comes (by id works too).
        m.set_overlay_peers(&n.id, vec![b, c]).await.unwrap();
        assert_eq!(
            overlay_log(&m),
            [
                format!("fdb del {vx} 02:42:0a:4d:00:02 198.18.0.2"),
                format!("neigh del {vx} 10.77.0.2"),
                format!("fdb add {vx} 02:42:0a:4d:00:04 198.18.0.3"),
                format!("neigh add {vx} 10.77.0.4 02:42:0a:4d:00:04"),
            ]
        );
        // b moves to another node: only its FDB entry changes.
        let b2 = peer("10.77.0.3", "198.18.0.9");
        m.set_overlay_peers("ov", vec![b2, c]).await.unwrap();
        assert_eq!(
            overlay_log(&m),
            [
                format!("fdb del {vx} 02:42:0a:4d:00:03 198.18.0.2"),
                format!("fdb add {vx} 02:42:0a:4d:00:03 198.18.0.9"),
            ]
        );
        let ops = m.ops();
        assert_eq!(
            ops.fdb(&vx),
            [(mac_for_ip(b2.ip), b2.vtep), (mac_for_ip(c.ip), c.vtep)]
        );
        assert_eq!(
            ops.neighbours(&vx),
            [(b2.ip, mac_for_ip(b2.ip)), (c.ip, mac_for_ip(c.ip))]
        );
        // A failure midway: the next call finds out from the kernel what is there.
        ops.state.lock().unwrap().fail_ops.push("add_neighbour");
        assert!(m.set_overlay_peers("ov", vec![a, b2, c]).await.is_err());
        ops.state.lock().unwrap().fail_ops.clear();
        overlay_log(&m);
        m.set_overlay_peers("ov", vec![a, b2, c]).await.unwrap();
        assert_eq!(
            overlay_log(&m),
            [format!("neigh add {vx} 10.77.0.2 02:42:0a:4d:00:02")]
        );
        // All gone.
        m.set_overlay_peers("ov", vec![]).await.unwrap();
        assert_eq!(overlay_log(&m).len(), 6);
        assert!(ops.fdb(&vx).is_empty() && ops.neighbours(&vx).is_empty());
    }

    #[tokio::test]
    async fn peers_heard_of_before_the_network_is_made() {
        let dir = tempfile::tempdir().unwrap();
        let m = mgr(dir.path());
        let a = peer("10.77.0.2", "198.18.0.2");
        let stray = peer("10.99.0.2", "198.18.0.2");
        m.set_overlay_peers("later", vec![a, stray]).await.unwrap();
        assert!(overlay_log(&m).is_empty(), "nothing to program yet");
        assert_eq!(m.overlay_peers("later"), [a, stray]);
        // Structural errors are refused at once.
        assert!(m
            .set_overlay_peers("later", vec![peer("10.77.0.2", "0.0.0.0")])
            .await
            .is_err());
        let n = m
            .create_network(overlay_spec("later", "10.77.0.0/24", 9))
            .await
            .unwrap();
        let vx = n.vxlan().unwrap();
        // The one outside the subnet is left out.
        assert_eq!(m.ops().fdb(&vx), [(mac_for_ip(a.ip), a.vtep)]);
        assert_eq!(m.ops().neighbours(&vx), [(a.ip, mac_for_ip(a.ip))]);
        assert_eq!(m.overlay_peers("later"), [a]);
        // Removed and made again: the last set is programmed again.
        m.remove_network("later").await.unwrap();
        m.create_network(overlay_spec("later", "10.77.0.0/24", 9))
            .await
            .unwrap();
        assert_eq!(
            m.ops()
                .fdb(&m.network("later").unwrap().vxlan().unwrap())
                .len(),
            1
        );
        // An empty set for an unknown network is forgotten.
        m.set_overlay_peers("other", vec![a]).await.unwrap();
        m.set_overlay_peers("other", vec![]).await.unwrap();
        assert!(m.overlay_peers("other").is_empty());
    }

    #[tokio::test]
    async fn a_failed_overlay_create_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let m = mgr(dir.path());
        let before = m.state();
        for op in ["create_vxlan", "add_fdb"] {
            m.set_overlay_peers("o", vec![peer("10.77.0.2", "198.18.0.2")])
                .await
                .unwrap();
            m.ops().state.lock().unwrap().fail_ops = vec![op];
            assert!(m
                .create_network(overlay_spec("o", "10.77.0.0/24", 5))
                .await
                .is_err());
            m.ops().state.lock().unwrap().fail_ops.clear();
            assert_eq!(essentials(&m.state()), essentials(&before), "{op}");
            assert!(links(&m, None).is_empty(), "{op}: {:?}", links(&m, None));
        }
        m.create_network(overlay_spec("o", "10.77.0.0/24", 5))
            .await
            .unwrap();
        assert_eq!(
            m.ops().fdb(&m.network("o").unwrap().vxlan().unwrap()).len(),
            1
        );
    }

    #[tokio::test]
    async fn ensure_network_replaces_an_unused_overlay_of_another_definition() {
        let dir = tempfile::tempdir().unwrap();
        let m = mgr(dir.path());
        let a = m
            .ensure_network(overlay_spec("o", "10.77.0.0/24", 5))
            .await
            .unwrap();
        assert_eq!(
            m.ensure_network(overlay_spec("o", "10.77.0.0/24", 5))
                .await
                .unwrap(),
            a
        );
        m.attach("c", "o", vec![], Some(ip("10.77.0.3")))
            .await
            .unwrap();
        let e = m
            .ensure_network(overlay_spec("o", "10.88.0.0/24", 6))
            .await
            .unwrap_err();
        assert!(e.to_string().contains("another definition"), "{e}");
        m.release_container("c").await.unwrap();
        let b = m
            .ensure_network(overlay_spec("o", "10.88.0.0/24", 6))
            .await
            .unwrap();
        assert_eq!(
            (b.overlay.unwrap().vni, b.subnet.to_string()),
            (6, "10.88.0.0/24".into())
        );
        assert_eq!(m.networks().len(), 1);
    }

    #[tokio::test]
    async fn a_restart_keeps_overlay_devices_and_reads_their_entries_back() {
        let dir = tempfile::tempdir().unwrap();
        let m = mgr(dir.path());
        let n = m
            .create_network(overlay_spec("ov", "10.77.0.0/24", 42))
            .await
            .unwrap();
        let vx = n.vxlan().unwrap();
        let (a, b, c) = (
            peer("10.77.0.2", "198.18.0.2"),
            peer("10.77.0.3", "198.18.0.2"),
            peer("10.77.0.4", "198.18.0.3"),
        );
        m.set_overlay_peers("ov", vec![a, b]).await.unwrap();
        // A stray vxlan device of ours that no state knows.
        let stray = format!("x{}dead", m.config().name_prefix);
        m.ops()
            .create_vxlan(&VxlanLink {
                name: stray.clone(),
                vni: 99,
                port: 4789,
                mtu: 1450,
                bridge: n.bridge.clone(),
            })
            .unwrap();

        // The daemon restarts; the kernel keeps its links and entries.
        let mut kernel = m.ops().state.lock().unwrap().clone();
        kernel.overlay_log.clear();
        let ops = FakeNetOps {
            state: std::sync::Mutex::new(kernel),
        };
        let again = NetworkManager::with_ops(m.config(), ops).unwrap();
        let r = again.reconcile(HashSet::new()).await.unwrap();
        assert_eq!(r.removed_links, [stray]);
        assert!(r.recreated_vxlans.is_empty() && r.recreated_bridges.is_empty());
        assert!(again.ops().vxlan(&vx).is_some());
        assert_eq!(again.ops().fdb(&vx).len(), 2, "entries kept");
        // The manager resends the complete set: only the difference is made.
        again.set_overlay_peers("ov", vec![a, c]).await.unwrap();
        assert_eq!(
            overlay_log(&again),
            [
                format!("fdb del {vx} 02:42:0a:4d:00:03 198.18.0.2"),
                format!("neigh del {vx} 10.77.0.3"),
                format!("fdb add {vx} 02:42:0a:4d:00:04 198.18.0.3"),
                format!("neigh add {vx} 10.77.0.4 02:42:0a:4d:00:04"),
            ]
        );

        // A vxlan device lost meanwhile is made again, with the known peers.
        again.ops().delete_link(None, &vx).unwrap();
        let r = again.reconcile(HashSet::new()).await.unwrap();
        assert_eq!(r.recreated_vxlans, std::slice::from_ref(&vx));
        let l = again
            .ops()
            .list_links(None)
            .unwrap()
            .into_iter()
            .find(|l| l.name == vx)
            .unwrap();
        assert_eq!(l.master.as_deref(), Some(n.bridge.as_str()));
        assert_eq!(again.ops().fdb(&vx).len(), 2);
        assert_eq!(again.ops().neighbours(&vx).len(), 2);

        // A lost bridge is made again and the surviving vxlan device put back on it.
        again.ops().delete_link(None, &n.bridge).unwrap();
        let r = again.reconcile(HashSet::new()).await.unwrap();
        assert_eq!(r.recreated_bridges, std::slice::from_ref(&n.bridge));
        assert!(r.recreated_vxlans.is_empty());
        let l = again
            .ops()
            .list_links(None)
            .unwrap()
            .into_iter()
            .find(|l| l.name == vx)
            .unwrap();
        assert_eq!(l.master.as_deref(), Some(n.bridge.as_str()));
    }

    fn pooled(dir: &Path, policy: PoolPolicy) -> NetworkManager<FakeNetOps> {
        let m = mgr(dir);
        m.enable_pool_by_hand(policy);
        m
    }

    /// A pooled manager with network "n": `running` and `released` were attached, the pool
    /// filled, then `released` let go (its namespace is retiring, not yet deleted).
    async fn pool_with_one_released(
        dir: &Path,
        running: &str,
        released: &str,
    ) -> NetworkManager<FakeNetOps> {
        let m = pooled(dir, PoolPolicy::default());
        m.create_network(NetworkSpec::named("n")).await.unwrap();
        m.attach(running, "n", vec![], None).await.unwrap();
        m.attach(released, "n", vec![], None).await.unwrap();
        m.settle_pool().await;
        m.release_container(released).await.unwrap();
        m
    }

    fn has_netns(m: &NetworkManager<FakeNetOps>, p: &Path) -> bool {
        m.ops().list_links(Some(p)).is_ok()
    }

    fn owner(m: &NetworkManager<FakeNetOps>, net: &str, a: Ipv4Addr) -> Option<String> {
        let id = m.network(net).unwrap().id;
        m.state().ipam.owner(&id, a).map(str::to_string)
    }

    #[tokio::test]
    async fn warm_sandboxes_are_taken_refilled_and_retired() {
        let dir = tempfile::tempdir().unwrap();
        let m = pooled(dir.path(), PoolPolicy::default());
        let n = m.create_network(NetworkSpec::named("n")).await.unwrap();
        m.settle_pool().await;
        assert!(
            m.pool().is_empty(),
            "lazily: not before the network is used"
        );
        // The first attach finds nothing ready and plugs as before; the pool fills up.
        let a = m.attach("c1", "n", vec![], None).await.unwrap();
        assert!(a.netns_path.ends_with("c1"));
        m.settle_pool().await;
        let pool = m.pool();
        assert_eq!(pool.len(), 2);
        assert_eq!(m.ops().netns_count(), 3);
        for s in &pool {
            assert_eq!(owner(&m, "n", s.ip), Some(s.owner()));
            let ns = Some(s.netns_path.as_path());
            let mut names = links(&m, ns);
            names.sort();
            assert_eq!(names, ["eth0", "lo"]);
            assert_eq!(m.ops().default_gateway(ns), Some(n.gateway));
            let host = m
                .ops()
                .list_links(None)
                .unwrap()
                .into_iter()
                .find(|l| l.name == s.host_ifname)
                .expect("host end");
            assert_eq!(host.master.as_deref(), Some(n.bridge.as_str()));
            assert!(host.up);
        }
        // The next container takes the oldest, as it is; another is made in its place.
        let b = m.attach("c2", "n", vec!["web".into()], None).await.unwrap();
        assert_eq!(b.netns_path, pool[0].netns_path);
        assert_eq!((b.ip, b.ifname.as_str()), (pool[0].ip, "eth0"));
        assert_eq!(b.mac, format_mac(mac_for_ip(b.ip)));
        assert_eq!(b.aliases, ["web"]);
        assert!(b.default_route);
        assert_eq!(owner(&m, "n", b.ip).as_deref(), Some("c2"));
        assert_eq!(m.netns_path("c2"), Some(b.netns_path.clone()));
        assert_eq!(m.pool().len(), 1);
        m.settle_pool().await;
        assert_eq!(m.pool().len(), 2);
        // A second network goes into the same namespace, the slow way.
        m.create_network(NetworkSpec::named("m")).await.unwrap();
        let b2 = m.attach("c2", "m", vec![], None).await.unwrap();
        assert_eq!(
            (b2.ifname.as_str(), b2.netns_path.clone()),
            ("eth1", b.netns_path.clone())
        );
        assert!(!b2.default_route);

        // A release returns at once; the namespace, links and addresses go in the background.
        m.release_container("c2").await.unwrap();
        assert!(m.attachments("c2").is_empty());
        assert_eq!(m.state().retiring.len(), 1);
        assert_eq!(
            owner(&m, "n", b.ip).as_deref(),
            Some("c2"),
            "held until gone"
        );
        assert!(has_netns(&m, &b.netns_path));
        m.settle_pool().await;
        assert!(m.state().retiring.is_empty());
        assert_eq!(owner(&m, "n", b.ip), None);
        assert_eq!(owner(&m, "m", b2.ip), None);
        assert!(!has_netns(&m, &b.netns_path));
        assert!(!links(&m, None).contains(&b.host_ifname));
        assert!(!links(&m, None).contains(&b2.host_ifname));
        // The network "m" was never a first network: no pool of its own.
        let m_id = m.network("m").unwrap().id;
        assert!(m.pool().iter().all(|s| s.network_id != m_id));
    }

    #[tokio::test]
    async fn an_internal_network_s_sandboxes_have_no_default_route() {
        let dir = tempfile::tempdir().unwrap();
        let m = pooled(dir.path(), PoolPolicy::default());
        m.create_network(NetworkSpec {
            internal: true,
            ..NetworkSpec::named("i")
        })
        .await
        .unwrap();
        m.attach("c1", "i", vec![], None).await.unwrap();
        m.settle_pool().await;
        let a = m.attach("c2", "i", vec![], None).await.unwrap();
        assert!(a.netns_path.to_string_lossy().contains("pool:"));
        assert!(!a.default_route);
        assert_eq!(m.ops().default_gateway(Some(&a.netns_path)), None);
    }

    #[tokio::test]
    async fn an_asked_for_address_evicts_a_sandbox_or_waits_for_a_release() {
        let dir = tempfile::tempdir().unwrap();
        let m = pooled(dir.path(), PoolPolicy::default());
        m.create_network(NetworkSpec {
            subnet: Some("10.5.0.0/24".parse().unwrap()),
            ..NetworkSpec::named("b")
        })
        .await
        .unwrap();
        m.attach("c1", "b", vec![], None).await.unwrap();
        m.settle_pool().await;
        let held = m.pool()[1].clone();
        assert_eq!(held.ip, ip("10.5.0.4"));
        let a = m.attach("c2", "b", vec![], Some(held.ip)).await.unwrap();
        assert_eq!(a.ip, held.ip);
        assert!(a.netns_path.ends_with("c2"), "its own namespace");
        assert_eq!(owner(&m, "b", held.ip).as_deref(), Some("c2"));
        assert!(!m.pool().iter().any(|s| s.key == held.key));
        assert!(!has_netns(&m, &held.netns_path));
        assert!(!links(&m, None).contains(&held.host_ifname));

        // Released, the address is held until the namespace is gone: an attach asking for
        // it waits for that rather than failing.
        m.release_container("c2").await.unwrap();
        let worker = {
            let m = m.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(50)).await;
                m.settle_pool().await;
            })
        };
        let again = m.attach("c3", "b", vec![], Some(held.ip)).await.unwrap();
        assert_eq!(again.ip, held.ip);
        worker.await.unwrap();
        // Someone else's address is still refused.
        let e = m
            .attach("c4", "b", vec![], Some(held.ip))
            .await
            .unwrap_err();
        assert!(e.to_string().contains("(by c3)"), "{e}");
    }

    #[tokio::test]
    async fn a_stopping_daemon_empties_its_pool() {
        let dir = tempfile::tempdir().unwrap();
        let m = pool_with_one_released(dir.path(), "c1", "c2").await;
        assert_eq!(m.pool().len(), 2);
        assert_eq!(m.state().retiring.len(), 1);
        m.empty_pool().await;
        let st = m.state();
        assert!(st.pool.is_empty() && st.retiring.is_empty(), "{st:?}");
        assert_eq!(m.ops().netns_count(), 1, "the running container's alone");
        // It stays empty: nothing is made for the next start.
        m.attach("c3", "n", vec![], None).await.unwrap();
        m.settle_pool().await;
        assert!(m.pool().is_empty());
        assert_eq!(m.ops().netns_count(), 2);
    }

    #[tokio::test]
    async fn removing_a_network_drains_its_pool() {
        let dir = tempfile::tempdir().unwrap();
        let m = pooled(dir.path(), PoolPolicy::default());
        let first = m.create_network(NetworkSpec::named("n")).await.unwrap();
        m.attach("c1", "n", vec![], None).await.unwrap();
        m.settle_pool().await;
        assert_eq!(m.pool().len(), 2);
        m.release_container("c1").await.unwrap();
        // Not settled: the released namespace is still retiring.
        m.remove_network("n").await.unwrap();
        assert!(m.pool().is_empty());
        assert!(m.state().networks.is_empty(), "the name is free at once");
        // Its namespaces, then its bridge, go in the background; its subnet after them.
        m.settle_pool().await;
        let st = m.state();
        assert!(st.retiring.is_empty() && st.removed.is_empty());
        assert!(st.ipam.network(&first.id).is_none());
        assert_eq!(m.ops().netns_count(), 0, "nothing made for a network gone");
        assert!(links(&m, None).is_empty(), "{:?}", links(&m, None));

        // Without a pool of its own (a fresh manager over the state a daemon left), too.
        let n = m.create_network(NetworkSpec::named("n")).await.unwrap();
        m.attach("c1", "n", vec![], None).await.unwrap();
        m.settle_pool().await;
        m.release_container("c1").await.unwrap();
        let kernel = m.ops().state.lock().unwrap().clone();
        let fresh = NetworkManager::with_ops(
            m.config(),
            FakeNetOps {
                state: std::sync::Mutex::new(kernel),
            },
        )
        .unwrap();
        assert_eq!(fresh.state().pool.len(), 2);
        fresh.remove_network(&n.id).await.unwrap();
        assert_eq!(fresh.ops().netns_count(), 0);
        assert!(links(&fresh, None).is_empty());
        assert!(fresh.state().pool.is_empty() && fresh.state().retiring.is_empty());
    }

    #[tokio::test]
    async fn a_removed_networks_subnet_is_free_for_one_that_asks_for_it() {
        let dir = tempfile::tempdir().unwrap();
        let m = pooled(dir.path(), PoolPolicy::default());
        let old = m.create_network(NetworkSpec::named("n")).await.unwrap();
        m.attach("c1", "n", vec![], None).await.unwrap();
        m.release_container("c1").await.unwrap();
        m.remove_network("n").await.unwrap();
        // Unsettled, an automatic subnet is another one...
        let other = m.create_network(NetworkSpec::named("o")).await.unwrap();
        assert_ne!(other.subnet, old.subnet);
        // ...and one asked for by name finishes the removal first.
        let mut spec = NetworkSpec::named("n");
        spec.subnet = Some(old.subnet);
        let again = m.create_network(spec).await.unwrap();
        assert_eq!(again.subnet, old.subnet);
        assert!(m.state().removed.is_empty());
        assert!(!links(&m, None).contains(&old.bridge));
        m.settle_pool().await;
        assert!(links(&m, None).contains(&again.bridge));
    }

    #[tokio::test]
    async fn a_network_being_made_a_sandbox_for_can_go_meanwhile() {
        let dir = tempfile::tempdir().unwrap();
        let m = pooled(dir.path(), PoolPolicy::default());
        m.create_network(NetworkSpec::named("n")).await.unwrap();
        m.attach("c1", "n", vec![], None).await.unwrap();
        m.release_container("c1").await.unwrap();
        // The worker has planned its jobs when the network goes.
        let jobs = m.core.lock().unwrap().pool_jobs(Instant::now());
        assert_eq!(jobs.len(), 3, "one release, two sandboxes");
        m.remove_network("n").await.unwrap();
        let ops = m.ops();
        for job in jobs {
            let done = job.run(&*ops);
            m.core.lock().unwrap().pool_done(job, done);
        }
        assert!(m.pool().is_empty());
        m.settle_pool().await;
        assert_eq!(ops.netns_count(), 0);
        assert!(links(&m, None).is_empty(), "{:?}", links(&m, None));
        assert!(m.state().retiring.is_empty());
    }

    #[tokio::test]
    async fn cold_pools_drain_and_failures_back_off() {
        let dir = tempfile::tempdir().unwrap();
        let policy = PoolPolicy {
            size: 1,
            keep_warm: Duration::from_millis(300),
            retry_after: Duration::from_millis(200),
        };
        let m = pooled(dir.path(), policy);
        m.create_network(NetworkSpec::named("n")).await.unwrap();
        m.ops().state.lock().unwrap().fail_ops = vec!["set_hairpin"];
        m.attach("c1", "n", vec![], None).await.unwrap_err();
        m.settle_pool().await;
        assert!(m.pool().is_empty());
        assert!(m.state().retiring.is_empty(), "the failed one is gone");
        assert_eq!(m.ops().netns_count(), 0);
        let id = m.network("n").unwrap().id;
        assert!(m.state().ipam.network(&id).unwrap().allocated.is_empty());
        m.ops().state.lock().unwrap().fail_ops.clear();
        m.settle_pool().await;
        assert!(m.pool().is_empty(), "backing off");
        tokio::time::sleep(policy.retry_after).await;
        m.settle_pool().await;
        assert_eq!(m.pool().len(), 1);
        let wake = m.core.lock().unwrap().pool_next_wake(Instant::now());
        assert!(wake.is_some_and(|d| d <= policy.keep_warm), "{wake:?}");
        tokio::time::sleep(policy.keep_warm).await;
        m.settle_pool().await;
        assert!(m.pool().is_empty(), "cold");
        assert_eq!(m.ops().netns_count(), 0);
        assert!(m.state().ipam.network(&id).unwrap().allocated.is_empty());
    }

    #[tokio::test]
    async fn a_restart_removes_the_last_run_s_sandboxes_and_stray_addresses() {
        let dir = tempfile::tempdir().unwrap();
        let m = pool_with_one_released(dir.path(), "alive", "dead").await;
        let id = m.network("n").unwrap().id;
        m.core
            .lock()
            .unwrap()
            .st
            .ipam
            .allocate_address(&id, "ghost")
            .unwrap();
        m.core.lock().unwrap().save_attachments().unwrap();
        assert_eq!(m.ops().netns_count(), 4);

        let kernel = m.ops().state.lock().unwrap().clone();
        let again = NetworkManager::with_ops(
            m.config(),
            FakeNetOps {
                state: std::sync::Mutex::new(kernel),
            },
        )
        .unwrap();
        again.enable_pool_by_hand(PoolPolicy::default());
        let r = again.reconcile(["alive".to_string()].into()).await.unwrap();
        assert_eq!(r.removed_sandboxes.len(), 3, "{r:?}");
        assert_eq!(r.released_addresses.len(), 1, "{r:?}");
        let st = again.state();
        assert!(st.pool.is_empty() && st.retiring.is_empty());
        assert_eq!(again.ops().netns_count(), 1);
        let held: Vec<&String> = st.ipam.network(&id).unwrap().allocated.values().collect();
        assert_eq!(held, ["alive"]);
        let veths: Vec<String> = links(&again, None)
            .into_iter()
            .filter(|l| l.starts_with("vsh"))
            .collect();
        assert_eq!(veths, [again.attachments("alive")[0].host_ifname.clone()]);
    }
}
