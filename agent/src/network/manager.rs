//! [`NetworkManager`]: bridge networks, container attachments, persistence and reconciliation.
//!
//! The logic lives in a synchronous core over a [`NetOps`]; the async API runs each call on
//! `spawn_blocking` under one mutex (network changes on a node are rare and short). Every
//! operation either completes or undoes what it did, and the state is saved (write, fsync,
//! rename) after each change.

use std::collections::{BTreeMap, HashSet};
use std::io::Write;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use super::firewall::{self, FirewallNetwork};
use super::ipam::{AddressPool, Ipam, Ipv4Net, SubnetRequest};
use super::{
    bridge_name, format_mac, mac_for_ip, validate_prefix, veth_names, NetError, NetOps, RealNetOps,
    VethPlug,
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
    pub mtu: Option<u32>,
}

impl NetworkSpec {
    pub fn named(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            ..Default::default()
        }
    }
}

/// A bridge network on this node.
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

/// Everything the manager persists.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkState {
    pub networks: BTreeMap<String, Network>,
    pub ipam: Ipam,
    /// Container id → its netns file and attachments.
    pub containers: BTreeMap<String, ContainerNet>,
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
}

struct Core<N: NetOps> {
    cfg: NetworkConfig,
    ops: Arc<N>,
    st: NetworkState,
    /// Attachments planned but not recorded yet (their links are being made), by container:
    /// their networks are in use, and no one may remove them meanwhile.
    plugging: Vec<(String, String)>,
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
            .networks
            .values()
            .find(|n| n.name == name_or_id || n.id == name_or_id)
            .or_else(|| {
                // A unique id prefix also works, as in Docker.
                let mut m = self
                    .st
                    .networks
                    .values()
                    .filter(|n| name_or_id.len() >= 4 && n.id.starts_with(name_or_id));
                match (m.next(), m.next()) {
                    (Some(n), None) => Some(n),
                    _ => None,
                }
            })
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
        let mtu = spec.mtu.unwrap_or(self.cfg.default_mtu);
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
            if !links.contains(&bridge) && !self.st.networks.values().any(|n| n.bridge == bridge) {
                break (id, bridge);
            }
        };
        let routes = self.ops.list_routes(None)?;
        let req = SubnetRequest {
            subnet: spec.subnet,
            gateway: spec.gateway,
            ip_range: spec.ip_range,
        };
        let addrs = self
            .st
            .ipam
            .allocate_subnet(&id, &req, &routes)
            .map_err(|e| match e {
                // Name the network, not its id.
                super::IpamError::OverlapsNetwork {
                    subnet,
                    other_network,
                    other_subnet,
                } => super::IpamError::OverlapsNetwork {
                    subnet,
                    other_network: self
                        .st
                        .networks
                        .get(&other_network)
                        .map(|n| n.name.clone())
                        .unwrap_or(other_network),
                    other_subnet,
                },
                e => e,
            })?
            .clone();
        let net = Network {
            id: id.clone(),
            name: spec.name,
            bridge: bridge.clone(),
            subnet: addrs.subnet,
            gateway: addrs.gateway,
            ip_range: addrs.ip_range,
            internal: spec.internal,
            mtu,
        };
        let r = (|| {
            self.ops.create_bridge(&bridge, mtu)?;
            self.ops
                .add_address(None, &bridge, net.gateway, net.subnet.prefix())?;
            self.st.networks.insert(id.clone(), net.clone());
            self.apply_firewall()
        })();
        if let Err(e) = r {
            self.st.networks.remove(&id);
            self.st.ipam.release_subnet(&id);
            let _ = self.ops.delete_link(None, &bridge);
            let _ = self.apply_firewall();
            return Err(e);
        }
        self.save()?;
        Ok(net)
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
        self.ops.delete_link(None, &net.bridge)?;
        self.st.networks.remove(&net.id);
        self.st.ipam.release_subnet(&net.id);
        let r = self.apply_firewall();
        self.save()?;
        r
    }

    /// Decides an attachment under the lock: its address, names and routes, and the
    /// container's entry (with its netns path) when it is the first. Nothing on the host yet.
    fn plan_attach(
        &mut self,
        container_id: &str,
        network: &str,
        aliases: Vec<String>,
    ) -> Result<PlannedAttach, NetError> {
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
        let ip = match self.st.ipam.allocate_address(&net.id, container_id) {
            Ok(ip) => ip,
            Err(e) => {
                if created_ns {
                    self.st.containers.remove(container_id);
                }
                return Err(e.into());
            }
        };
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
        Ok(PlannedAttach {
            created_ns,
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
        })
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
            self.st.ipam.release_address(&att.network_id, att.ip);
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

    fn reconcile(&mut self, live: &HashSet<String>) -> Result<ReconcileReport, NetError> {
        let mut report = ReconcileReport::default();
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
        let known_veths: HashSet<&str> = self
            .st
            .containers
            .values()
            .flat_map(|c| &c.attachments)
            .map(|a| a.host_ifname.as_str())
            .collect();
        let bridges: HashSet<&str> = self
            .st
            .networks
            .values()
            .map(|n| n.bridge.as_str())
            .collect();
        let (vp, cp, bp) = (
            format!("v{prefix}"),
            format!("c{prefix}"),
            format!("{prefix}-"),
        );
        let links = self.ops.list_links(None)?;
        let mut stale = Vec::new();
        for l in &links {
            let ours_veth = l.kind == "veth"
                && ((l.name.starts_with(&vp) && !known_veths.contains(l.name.as_str()))
                    || l.name.starts_with(&cp));
            let ours_bridge =
                l.kind == "bridge" && l.name.starts_with(&bp) && !bridges.contains(l.name.as_str());
            if ours_veth || ours_bridge {
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
        let known_ns: HashSet<PathBuf> = self
            .st
            .containers
            .values()
            .map(|c| c.netns_path.clone())
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
        self.apply_firewall()?;
        self.save()?;
        Ok(report)
    }
}

/// An attachment decided by [`Core::plan_attach`], to be made on the host.
struct PlannedAttach {
    /// The plan made the container's entry: the netns is to be created too.
    created_ns: bool,
    veth: VethPlug,
    att: Attachment,
}

impl PlannedAttach {
    /// Makes the planned netns and links (the slow part, outside the manager's lock).
    fn plug<N: NetOps>(&self, ops: &N) -> Result<(), NetError> {
        if self.created_ns {
            // A file no state knows is a leftover of a crash before the state was saved.
            ops.delete_netns(&self.veth.netns)?;
            ops.create_netns(&self.veth.netns)?;
        }
        ops.plug_veth(&self.veth)
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
            })),
        })
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
    pub async fn ensure_network(&self, spec: NetworkSpec) -> Result<Network, NetError> {
        self.call(
            move |c| match c.st.networks.values().find(|n| n.name == spec.name) {
                Some(n) => Ok(n.clone()),
                None => c.create_network(spec),
            },
        )
        .await
    }

    /// Removes a network (by name, id or unique id prefix) that has no attachments.
    pub async fn remove_network(&self, name_or_id: &str) -> Result<(), NetError> {
        let n = name_or_id.to_string();
        self.call(move |c| c.remove_network(&n)).await
    }

    /// Attaches a container to a network, creating its netns file on first use. Only the
    /// bookkeeping holds the manager's lock: the namespace and links of several containers
    /// starting at once are made side by side.
    pub async fn attach(
        &self,
        container_id: &str,
        network: &str,
        aliases: Vec<String>,
    ) -> Result<Attachment, NetError> {
        let (cid, net) = (container_id.to_string(), network.to_string());
        let plan = self
            .call(move |c| c.plan_attach(&cid, &net, aliases))
            .await?;
        let ops = self.ops();
        let (plugged, plan) = tokio::task::spawn_blocking(move || (plan.plug(&*ops), plan))
            .await
            .map_err(|e| NetError::Invalid(format!("network task failed: {e}")))?;
        self.call(move |c| c.finish_attach(plan, plugged)).await
    }

    /// Detaches a container from one network; its netns file stays.
    pub async fn detach(&self, container_id: &str, network: &str) -> Result<(), NetError> {
        let (cid, net) = (container_id.to_string(), network.to_string());
        self.call(move |c| c.detach(&cid, &net)).await
    }

    /// Removes all of a container's attachments and its netns file. Idempotent.
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
        c.st.containers
            .get(container_id)
            .map(|c| c.attachments.clone())
            .unwrap_or_default()
    }

    /// The netns file of a container, if it has one.
    pub fn netns_path(&self, container_id: &str) -> Option<PathBuf> {
        let c = self.core.lock().unwrap_or_else(|e| e.into_inner());
        c.st.containers
            .get(container_id)
            .map(|c| c.netns_path.clone())
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
        let plan = m
            .core
            .lock()
            .unwrap()
            .plan_attach("c1", "n", vec![])
            .unwrap();
        let busy = m.remove_network("n").await.unwrap_err().to_string();
        assert!(busy.contains("c1"), "{busy}");
        plan.plug(&*m.ops()).unwrap();
        m.core.lock().unwrap().finish_attach(plan, Ok(())).unwrap();
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

        let x1 = m.attach("c1", "back", vec![]).await.unwrap();
        assert_eq!(x1.ifname, "eth0");
        assert!(!x1.default_route, "internal networks give no default route");
        let x2 = m.attach("c1", "front", vec!["web".into()]).await.unwrap();
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
        assert!(m.attach("c1", "front", vec![]).await.is_err());
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
        let x = m.attach("c", "a", vec![]).await.unwrap();
        let y = m.attach("c", "b", vec![]).await.unwrap();
        assert!(x.default_route && !y.default_route);
        m.detach("c", "a").await.unwrap();
        assert!(m.attachments("c")[0].default_route);
        assert_eq!(
            m.ops().default_gateway(Some(&x.netns_path)),
            Some(b.gateway)
        );
        // A re-attach reuses eth0.
        assert_eq!(m.attach("c", "a", vec![]).await.unwrap().ifname, "eth0");
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
        assert!(m.attach("c", "a", vec![]).await.is_err());
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
        assert!(m.attach("../x", "a", vec![]).await.is_err());
        assert!(m.attach("c", "nope", vec![]).await.is_err());
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
        m.attach("c1", "tiny", vec![]).await.unwrap();
        let e = m.attach("c2", "tiny", vec![]).await.unwrap_err();
        assert!(e.to_string().contains("no free address"), "{e}");
        assert_eq!(m.ops().netns_count(), 1, "c2's netns was rolled back");
    }

    #[tokio::test]
    async fn reconcile_releases_dead_containers_and_strays() {
        let dir = tempfile::tempdir().unwrap();
        let m = mgr(dir.path());
        m.create_network(NetworkSpec::named("a")).await.unwrap();
        m.attach("alive", "a", vec![]).await.unwrap();
        m.attach("dead", "a", vec![]).await.unwrap();
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
        m.attach("c9", "a", vec![]).await.unwrap();
        assert_eq!(r.removed_links.len(), 1, "{r:?}");
        assert_eq!(m.ops().netns_count(), 2);
        let names = links(&m, None);
        assert!(names.contains(&"vethother".to_string()), "not ours: kept");
        assert_eq!(names.iter().filter(|n| n.starts_with("vsh")).count(), 2);
    }
}
