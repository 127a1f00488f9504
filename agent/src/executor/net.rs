//! The network side of a task: which networks its container joins, made on this node when
//! first needed, and released with the container.
//!
//! - `network_mode: host` shares the host's stack; `none` gives a namespace with only `lo`.
//! - `container:NAME` (NAME: a container of this node, by id, name or unique id prefix) joins
//!   the network namespace of that running container, as Docker does: same addresses, ports
//!   and loopback, and the same /etc/hosts, /etc/resolv.conf and hostname (its files are
//!   bind-mounted). The joiner has no endpoint of its own: no address, no DNS name, no
//!   published port; ports, a hostname, DNS settings, extra hosts or networks given with it
//!   are refused ("conflicting options", Docker's words). If NAME runs with `host`, the
//!   joiner gets the host's stack too; if NAME runs with `none`, the joiner shares NAME's
//!   lo-only namespace; if NAME itself joined a third container, the joiner joins that one.
//! - `service:NAME` (compose's form; the stack conversion gives the full service name) joins
//!   the namespace of a running task container of service NAME on this node: the one with the
//!   same slot, else the lowest slot. The scheduler only places such a task on a node that
//!   has a task of NAME; with none running here yet the task fails and is retried.
//! - A shared namespace's owner outlives its joiners: when the owner's endpoints are
//!   released (the task stopped, the standalone container removed) its joiners are stopped
//!   first, so that no process keeps an address that goes back to the pool. A joined task
//!   stopped that way fails with a message naming the owner; after a daemon restart a joiner
//!   whose owner is gone is stopped the same way.
//! - Otherwise the container joins each of the service's networks (in order; the first
//!   non-internal one carries the default route), or the node's default `bridge` network
//!   when the service names none (Docker's `docker run` default).
//! - A store network is made on this node under its cluster-wide name, with its subnet if
//!   it has one, else one from the node's address pools. Networks no task needs any more are
//!   removed by [`TaskNetworks::prune`].
//! - Service discovery: the node's DNS server answers on each network's gateway (port 53);
//!   containers name the gateway in their resolv.conf. A task in rotation (running, healthy,
//!   not held out by the manager: see [`super::rotation`]) answers to its container name, its
//!   service name, its aliases, and `tasks.<service|alias>`, on each of its networks.

use std::collections::{HashMap, HashSet};
use std::net::{Ipv4Addr, SocketAddr};

use shoal_proto::{Network, NetworkAddress, PortConfig, Task};

use super::overlay::{RemoteView, Vip};
use super::published::PublishedPorts;
use super::rotation::{Endpoint, Member, Rotation};
use super::vip;
use crate::dns::DnsServer;
use crate::network::{
    Attachment, NetworkManager, NetworkSpec, NetworkState, OverlaySpec, PoolPolicy,
};
use crate::runtime::{ContainerState, ContainerStatus, NetworkMode, Runtime};

/// The node-local network of services that name none.
pub const DEFAULT_NETWORK: &str = "bridge";

/// What a task's container gets.
#[derive(Debug, Clone, PartialEq)]
pub struct Prepared {
    pub mode: NetworkMode,
    /// Its endpoints, in attach order (empty for `host`, `none` and a shared namespace).
    pub attachments: Vec<Attachment>,
    /// The container whose namespace it shares (`container:` and `service:` modes).
    pub joined: Option<Joined>,
}

/// The container a joiner shares its network namespace and /etc files with.
#[derive(Debug, Clone, PartialEq)]
pub struct Joined {
    /// The owner's id (the end of the chain when the owner itself joined another).
    pub id: String,
    /// The owner's hostname: the joiner's too, as in Docker.
    pub hostname: String,
    /// The owner's state dir, holding its managed `hosts`, `hostname` and `resolv.conf`
    /// (`None`: it has none, the joiner keeps the image's).
    pub etc_dir: Option<std::path::PathBuf>,
}

/// Which networks a task asks for: (local network name, store network if any, aliases).
#[derive(Debug, Clone, PartialEq)]
enum Wanted {
    Host,
    None,
    /// Another container's namespace, by id, name or unique id prefix.
    Container(String),
    /// The namespace of a task of this service (its full name) on this node.
    Service(String),
    Networks(Vec<(String, Option<Network>, Vec<String>)>),
}

/// Reads the task's wishes against the networks the manager sent. Pure.
fn wanted(task: &Task, known: &HashMap<String, Network>) -> Result<Wanted, String> {
    let spec = task
        .spec
        .as_ref()
        .ok_or_else(|| format!("task {} carries no service spec", task.id))?;
    let mode = spec
        .container
        .as_ref()
        .map(|c| c.network_mode.as_str())
        .unwrap_or("");
    match mode {
        "host" => return Ok(Wanted::Host),
        "none" => return Ok(Wanted::None),
        "" | "bridge" | "default" => {}
        other => {
            let shared = match other.split_once(':') {
                Some(("container", name)) if !name.trim().is_empty() => {
                    Wanted::Container(name.trim().to_string())
                }
                Some(("service", name)) if !name.trim().is_empty() => {
                    Wanted::Service(name.trim().to_string())
                }
                _ => {
                    return Err(format!(
                        "network_mode {other:?} is not supported: use host, none, \
                         container:NAME, service:NAME or networks"
                    ))
                }
            };
            if let Some(what) = conflict_with_shared(spec) {
                return Err(format!(
                    "conflicting options: {what} and network_mode {other}: a container that \
                     shares another's network namespace has that container's {what}"
                ));
            }
            return Ok(shared);
        }
    }
    if spec.networks.is_empty() {
        return Ok(Wanted::Networks(vec![(
            DEFAULT_NETWORK.to_string(),
            None,
            Vec::new(),
        )]));
    }
    spec.networks
        .iter()
        .map(|a| {
            let network = known.get(&a.target).ok_or_else(|| {
                format!(
                    "network {} is unknown to this node (removed while the task was starting?)",
                    a.target
                )
            })?;
            let name = network
                .spec
                .as_ref()
                .map(|s| s.name.clone())
                .unwrap_or_else(|| network.id.clone());
            Ok((name, Some(network.clone()), a.aliases.clone()))
        })
        .collect::<Result<_, String>>()
        .map(Wanted::Networks)
}

/// What a container sharing another's network namespace cannot have of its own. Pure.
fn conflict_with_shared(spec: &shoal_proto::ServiceSpec) -> Option<&'static str> {
    let c = spec.container.clone().unwrap_or_default();
    let ports = spec.endpoint.as_ref().is_some_and(|e| !e.ports.is_empty());
    [
        (!spec.networks.is_empty(), "networks"),
        (ports, "published ports"),
        (!c.hostname.is_empty(), "hostname"),
        (
            !c.dns.is_empty() || !c.dns_search.is_empty(),
            "DNS settings",
        ),
        (!c.extra_hosts.is_empty(), "extra hosts"),
    ]
    .into_iter()
    .find(|(conflicts, _)| *conflicts)
    .map(|(_, what)| what)
}

/// The task's slot, read from its container's name (`service.slot.taskid`); `None` when the
/// name is not of that form.
fn slot_of(c: &ContainerState, service: &str) -> Option<u64> {
    c.name
        .strip_prefix(service)?
        .strip_prefix('.')?
        .split('.')
        .next()?
        .parse()
        .ok()
}

/// Label of a task's container naming its service (Swarm's).
const SERVICE_NAME_LABEL: &str = "com.docker.swarm.service.name";

fn is_running(c: &ContainerState) -> bool {
    matches!(c.status, ContainerStatus::Running { .. })
}

/// The running container whose network namespace the task shares, among this node's
/// containers (`all`), following a chain of joiners to its end. Pure.
fn owner_of<'a>(
    wanted: &Wanted,
    slot: u64,
    all: &'a [ContainerState],
) -> Result<&'a ContainerState, String> {
    let first = match wanted {
        Wanted::Container(reference) => {
            let reference = reference.trim_start_matches('/');
            let by_prefix: Vec<&ContainerState> =
                all.iter().filter(|c| c.id.starts_with(reference)).collect();
            let found = all
                .iter()
                .find(|c| c.id == reference)
                .or_else(|| all.iter().find(|c| c.name == reference));
            let c: &ContainerState = match (found, by_prefix.as_slice()) {
                (Some(c), _) => c,
                (None, [c]) => c,
                (None, []) => {
                    return Err(format!(
                        "network_mode container:{reference}: no such container on this node"
                    ))
                }
                (None, many) => {
                    return Err(format!(
                        "network_mode container:{reference}: the id prefix is ambiguous (it \
                         matches {} containers): give more characters or the name",
                        many.len()
                    ))
                }
            };
            if !is_running(c) {
                return Err(format!(
                    "network_mode container:{reference}: container {} is not running: start \
                     it first",
                    c.name
                ));
            }
            c
        }
        Wanted::Service(service) => {
            let mut tasks: Vec<(u64, &ContainerState)> = all
                .iter()
                .filter(|c| is_running(c))
                .filter(|c| c.labels.get(SERVICE_NAME_LABEL) == Some(service))
                .map(|c| (slot_of(c, service).unwrap_or(u64::MAX), c))
                .collect();
            tasks.sort_by(|a, b| (a.0, &a.1.id).cmp(&(b.0, &b.1.id)));
            let same_slot = tasks.iter().find(|(s, _)| *s == slot && slot > 0);
            match same_slot.or(tasks.first()) {
                Some((_, c)) => *c,
                None => {
                    return Err(format!(
                        "network_mode service:{service}: no task of service {service} runs on \
                         this node to share the network namespace of (it is retried once one \
                         does)"
                    ))
                }
            }
        }
        _ => return Err("the task shares no other container's network".into()),
    };
    // A joiner's owner: the namespace is the one at the end of the chain.
    let mut owner = first;
    for _ in 0..8 {
        if owner.config.network_container.is_empty() {
            return Ok(owner);
        }
        owner = all
            .iter()
            .find(|c| c.id == owner.config.network_container && is_running(c))
            .ok_or_else(|| {
                format!(
                    "container {} shares the network namespace of container {}, which is not \
                     running",
                    owner.name, owner.config.network_container
                )
            })?;
    }
    Err(format!(
        "container {}: the chain of shared network namespaces is too long",
        first.name
    ))
}

/// The network side of a container joining `owner`'s namespace. Pure but for the owner's
/// state dir (`dir`), which is only named.
fn join(owner: &ContainerState, dir: std::path::PathBuf) -> Result<Prepared, String> {
    let mode = match &owner.config.network {
        NetworkMode::Host => NetworkMode::Host,
        NetworkMode::Join(path) => NetworkMode::Join(path.clone()),
        // `none`: its own lo-only namespace, named through its first process.
        NetworkMode::New => match &owner.status {
            ContainerStatus::Running { pid } => {
                NetworkMode::Join(format!("/proc/{pid}/ns/net").into())
            }
            _ => return Err(format!("container {} is not running", owner.name)),
        },
    };
    let hostname = crate::runtime::effective_hostname(&owner.config, &dir);
    Ok(Prepared {
        mode,
        attachments: Vec::new(),
        joined: Some(Joined {
            id: owner.id.clone(),
            hostname,
            etc_dir: owner.config.manage_etc.then_some(dir),
        }),
    })
}

/// The node-local spec of a store network.
fn local_spec(name: &str, network: Option<&Network>) -> Result<NetworkSpec, String> {
    let mut local = NetworkSpec::named(name);
    let Some(spec) = network.and_then(|n| n.spec.as_ref()) else {
        return Ok(local);
    };
    fn parse<T: std::str::FromStr>(name: &str, what: &str, text: &str) -> Result<T, String> {
        text.parse()
            .map_err(|_| format!("network {name}: invalid {what} {text:?}"))
    }
    if !spec.subnet.is_empty() {
        local.subnet = Some(parse(name, "subnet", &spec.subnet)?);
    }
    if !spec.gateway.is_empty() {
        local.gateway = Some(parse(name, "gateway", &spec.gateway)?);
    }
    if !spec.ip_range.is_empty() {
        local.ip_range = Some(parse(name, "ip range", &spec.ip_range)?);
    }
    local.internal = spec.internal;
    local.mtu = spec.mtu;
    if spec.driver == "overlay" {
        let vni = network.map(|n| n.vni).unwrap_or_default();
        local.overlay = Some(OverlaySpec { vni });
    }
    Ok(local)
}

/// The names a task answers to on one network: its container name first (the reverse
/// lookup's answer), then its service name and aliases, then their `tasks.` forms. With a
/// virtual address (`vip`), the service name and aliases are the VIP's: only the `tasks.`
/// forms stay the task's. Pure.
pub fn dns_names(
    container_name: &str,
    service: &str,
    aliases: &[String],
    vip: bool,
) -> Vec<String> {
    let mut names = vec![container_name.to_string()];
    for n in std::iter::once(service).chain(aliases.iter().map(String::as_str)) {
        if !n.is_empty() && !names.iter().any(|x| x == n) {
            names.push(n.to_string());
        }
    }
    let tasks: Vec<String> = names[1..].iter().map(|n| format!("tasks.{n}")).collect();
    if vip {
        names.truncate(1);
    }
    names.extend(tasks);
    names
}

/// The node's networks as the executor uses them.
#[derive(Clone)]
pub struct TaskNetworks {
    manager: NetworkManager,
    dns: DnsServer,
    ports: PublishedPorts,
    /// What the assigned tasks needed at the last [`TaskNetworks::prune`], so a standalone
    /// container's removal can prune too.
    needed: std::sync::Arc<std::sync::Mutex<HashSet<String>>>,
    rotation: Rotation,
    remote: std::sync::Arc<Remote>,
    /// The node's containers: the owners of shared namespaces and their joiners.
    runtime: std::sync::Arc<Runtime>,
    /// Joiners stopped because their namespace's owner went: container id → why.
    lost: std::sync::Arc<std::sync::Mutex<HashMap<String, String>>>,
}

/// The other nodes' tasks on this node's overlay networks: the latest view from the manager,
/// and what of it is applied. Every apply applies the latest view, so applies may run in any
/// order; one at a time.
#[derive(Default)]
struct Remote {
    view: std::sync::Mutex<RemoteView>,
    applied: tokio::sync::Mutex<AppliedRemote>,
}

/// A DNS table entry: (endpoint id, local network id, address, names).
type DnsEntry = (String, String, Ipv4Addr, Vec<String>);

#[derive(Default)]
struct AppliedRemote {
    /// Networks given peers (so that one leaving the view gets an empty set).
    networks: HashSet<String>,
    /// DNS entries by task: (endpoint id, local network id, address, names).
    records: HashMap<String, Vec<DnsEntry>>,
    /// The VIP table loaded in each container's namespace (see [`super::vip`]).
    vip_rules: HashMap<String, String>,
}

/// Runs blocking port-layer work off the async threads.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Option<T> {
    tokio::task::spawn_blocking(f).await.ok()
}

impl TaskNetworks {
    /// Turns the manager's warm pool on: a container start takes a namespace plugged in
    /// beforehand, and a stop leaves the deletion of its namespace to the background.
    pub fn new(
        manager: NetworkManager,
        dns: DnsServer,
        ports: PublishedPorts,
        runtime: std::sync::Arc<Runtime>,
    ) -> Self {
        manager.enable_pool(PoolPolicy::default());
        let rotation = Rotation::new(dns.table().clone(), ports.clone());
        TaskNetworks {
            manager,
            dns,
            ports,
            needed: Default::default(),
            rotation,
            remote: Default::default(),
            runtime,
            lost: Default::default(),
        }
    }

    /// Why the container was stopped by this node, if it was stopped because the owner of
    /// the network namespace it shared went away.
    /// Asked once: the answer is forgotten.
    pub fn lost_network(&self, container_id: &str) -> Option<String> {
        self.lost
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(container_id)
    }

    /// Stops the running containers that share `owner_id`'s network namespace (and says
    /// why: see [`Self::lost_network`]), before the owner's addresses go back.
    async fn stop_joiners(&self, owner_id: &str) {
        let runtime = self.runtime.clone();
        let Some(Ok(all)) = blocking(move || runtime.list()).await else {
            return;
        };
        let joiners: Vec<&ContainerState> = all
            .iter()
            .filter(|c| c.config.network_container == owner_id && is_running(c))
            .collect();
        if joiners.is_empty() {
            return;
        }
        let owner = all
            .iter()
            .find(|c| c.id == owner_id)
            .map_or(owner_id, |c| c.name.as_str());
        let mut stops = tokio::task::JoinSet::new();
        for j in joiners {
            tracing::info!(container = %j.name, owner, "stopping: the network it shares goes");
            self.lost.lock().unwrap_or_else(|e| e.into_inner()).insert(
                j.id.clone(),
                format!(
                    "the network namespace it shared went away: container {owner} stopped \
                     (network_mode container:{owner})"
                ),
            );
            let (runtime, id, grace) = (self.runtime.clone(), j.id.clone(), j.config.stop_grace);
            stops.spawn(async move {
                if let Err(e) = runtime.stop(&id, grace).await {
                    tracing::warn!(container = %id, "stopping a joined container: {e}");
                }
            });
        }
        while stops.join_next().await.is_some() {}
    }

    /// After a daemon restart: a running joiner whose namespace's owner is no longer running
    /// is stopped (as it would have been, had the daemon seen the owner stop). Returns
    /// whether it was.
    pub async fn stop_if_orphaned(&self, container_id: &str) -> bool {
        let runtime = self.runtime.clone();
        let Some(Ok(all)) = blocking(move || runtime.list()).await else {
            return false;
        };
        let Some(me) = all.iter().find(|c| c.id == container_id) else {
            return false;
        };
        let owner_id = me.config.network_container.as_str();
        if owner_id.is_empty() || !is_running(me) {
            return false;
        }
        if all.iter().any(|c| c.id == owner_id && is_running(c)) {
            return false;
        }
        self.stop_joiners(owner_id).await;
        true
    }

    /// Takes the manager's latest view of the other nodes' tasks on the overlay networks, in
    /// the order the assignments came (so synchronous: an older view never replaces a newer
    /// one); [`Self::apply_remote`] programs it.
    pub fn set_remote(&self, view: RemoteView) {
        *self.remote.view.lock().unwrap_or_else(|e| e.into_inner()) = view;
    }

    /// Applies the latest remote view: each network's peers to the driver, the serving
    /// endpoints' names to the DNS table (of networks this node has; a network made later
    /// gets them when it is made).
    pub async fn apply_remote(&self) {
        let mut applied = self.remote.applied.lock().await;
        let view = self
            .remote
            .view
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let gone: Vec<String> = applied
            .networks
            .iter()
            .filter(|n| !view.peers.contains_key(*n))
            .cloned()
            .collect();
        let updates = view
            .peers
            .iter()
            .map(|(n, p)| (n.clone(), p.clone()))
            .chain(gone.into_iter().map(|n| (n, Vec::new())));
        for (network, peers) in updates {
            if let Err(e) = self.manager.set_overlay_peers(&network, peers).await {
                tracing::warn!(%network, "programming the overlay's peers: {e}");
            }
        }
        applied.networks = view.peers.keys().cloned().collect();
        let state = self.manager.read_state().await;
        let wanted: HashMap<String, Vec<DnsEntry>> = view
            .records
            .iter()
            .map(|(task, records)| {
                let entries = records
                    .iter()
                    .filter_map(|(network, ip, names)| {
                        let id = state.network(network)?.id.clone();
                        Some((format!("{task}/{id}"), id, *ip, names.clone()))
                    })
                    .collect::<Vec<_>>();
                (task.clone(), entries)
            })
            .filter(|(_, entries)| !entries.is_empty())
            .collect();
        let leaving: Vec<String> = applied
            .records
            .iter()
            .filter(|(task, old)| wanted.get(*task) != Some(old))
            .map(|(task, _)| task.clone())
            .collect();
        let entering: Vec<_> = wanted
            .iter()
            .filter(|(task, new)| applied.records.get(*task) != Some(new))
            .flat_map(|(_, entries)| entries.iter().cloned())
            .collect();
        if !leaving.is_empty() || !entering.is_empty() {
            self.dns.table().swap(&leaving, entering);
        }
        applied.records = wanted;
        self.apply_vip_rules(&view, &state, &mut applied.vip_rules)
            .await;
    }

    /// Loads, in each of this node's containers on an overlay network, the VIPs of its
    /// networks where they changed.
    async fn apply_vip_rules(
        &self,
        view: &RemoteView,
        state: &NetworkState,
        applied: &mut HashMap<String, String>,
    ) {
        let mut wanted: HashMap<String, (std::path::PathBuf, String)> = HashMap::new();
        for (container, net) in &state.containers {
            let vips: Vec<Vip> = net
                .attachments
                .iter()
                .filter_map(|a| view.vips.get(&a.network_name))
                .flatten()
                .cloned()
                .collect();
            if vips.is_empty() && !applied.contains_key(container) {
                continue;
            }
            wanted.insert(
                container.clone(),
                (net.netns_path.clone(), vip::ruleset(&vips)),
            );
        }
        applied.retain(|container, _| wanted.contains_key(container));
        for (container, (netns, script)) in wanted {
            if applied.get(&container) == Some(&script) {
                continue;
            }
            let s = script.clone();
            match blocking(move || vip::apply(&netns, &s)).await {
                Some(Ok(())) if script.contains("chain") => {
                    applied.insert(container, script);
                }
                Some(Ok(())) => {
                    applied.remove(&container);
                }
                Some(Err(e)) => tracing::warn!(%container, "virtual addresses: {e}"),
                None => {}
            }
        }
    }

    pub fn ports(&self) -> &PublishedPorts {
        &self.ports
    }

    /// The task runs (and is healthy): it joins the rotation, so that its names resolve on
    /// its networks and its published ports (through its first non-internal network) reach
    /// it, unless the manager holds it out. Makes sure the DNS server listens on those
    /// networks' gateways (also after a daemon restart). Returns its published ports with
    /// their host ports resolved.
    pub async fn announce(&self, task: &Task, container_name: &str) -> Vec<PortConfig> {
        let service = task.spec.as_ref().map(|s| s.name.as_str()).unwrap_or("");
        let state = self.manager.read_state().await;
        let attachments = state.attachments(&task.id);
        // Already so since it was attached, unless this daemon restarted since.
        self.register_client(&task.id, &attachments);
        let dnsrr = task
            .spec
            .as_ref()
            .and_then(|s| s.endpoint.as_ref())
            .is_some_and(|e| e.mode == "dnsrr");
        let mut endpoints = Vec::new();
        for a in &attachments {
            // On an overlay network the service's name is its virtual address's (see
            // `super::overlay`), unless it resolves to its tasks (dnsrr).
            let vip = !dnsrr
                && state
                    .network(&a.network_id)
                    .is_some_and(|n| n.overlay.is_some());
            let listen = SocketAddr::new(a.gateway.into(), 53);
            if let Err(e) = self.dns.listen(listen).await {
                tracing::warn!(network = %a.network_name, "no DNS on this network: {e}");
            }
            endpoints.push(Endpoint {
                id: format!("{}/{}", task.id, a.network_id),
                network_id: a.network_id.clone(),
                ip: a.ip,
                names: dns_names(container_name, service, &a.aliases, vip),
            });
        }
        let reachable = attachments
            .iter()
            .find(|a| state.network(&a.network_id).is_some_and(|n| !n.internal));
        let (ports, rotation, task) = (self.ports.clone(), self.rotation.clone(), task.clone());
        let backend = reachable.map(|a| a.ip);
        let published = blocking(move || {
            let published = match backend.map(|_| ports.ensure(&task)) {
                Some(Ok(p)) => p,
                Some(Err(e)) => {
                    tracing::warn!("publishing ports: {e}");
                    Vec::new()
                }
                None => Vec::new(),
            };
            let member = Member {
                service_id: task.service_id.clone(),
                endpoints,
                backend: backend.filter(|_| !published.is_empty()),
            };
            rotation.join(&task.id, member);
            rotation.sync();
            published
        })
        .await;
        published.unwrap_or_default()
    }

    /// The task stops: its names go, its published ports stop sending it new connections.
    /// Returns when it last left rotation (`None`: it never served), from which its drain
    /// period runs.
    pub async fn withdraw(&self, container_id: &str) -> Option<std::time::Instant> {
        let (rotation, id) = (self.rotation.clone(), container_id.to_string());
        blocking(move || {
            rotation.leave(&id);
            rotation.sync();
            rotation.left_at(&id)
        })
        .await
        .flatten()
    }

    /// Resolves once the container, out of rotation since `left`, serves nobody any more and
    /// no DNS answer naming it can still be cached (see [`super::drain`]); pending forever
    /// when that cannot be told (its sockets are unreadable), so the full period applies.
    pub async fn idle_after(&self, container_id: &str, pid: i32, left: std::time::Instant) {
        use super::drain::{serving_in, LastRead, MIN_DRAIN, POLL, QUIET_FOR};
        let ips: Vec<_> = self
            .manager
            .read_attachments(container_id)
            .await
            .iter()
            .map(|a| a.ip)
            .collect();
        let ttl = std::time::Duration::from_secs(u64::from(crate::dns::LOCAL_TTL_SECS));
        let table = self.dns.table().clone();
        let cached = |now: std::time::Instant| {
            ips.iter().any(|ip| {
                table
                    .handed_out_at(*ip)
                    .is_some_and(|at| now.saturating_duration_since(at) < ttl)
            })
        };
        let mut quiet_since = None;
        let mut last = LastRead::default();
        // Nothing ends the drain before MIN_DRAIN: looking earlier would be wasted.
        tokio::time::sleep_until((left + MIN_DRAIN).into()).await;
        loop {
            let now = std::time::Instant::now();
            let (serving, read) = tokio::task::spawn_blocking(move || {
                let serving = serving_in(pid, &mut last);
                (serving, last)
            })
            .await
            .unwrap_or((None, last));
            last = read;
            let idle = now >= left + MIN_DRAIN && !cached(now) && serving == Some(false);
            tracing::trace!(
                container = container_id,
                ?serving,
                dns_cached = cached(now),
                "draining"
            );
            if !idle {
                quiet_since = None;
            } else if now.saturating_duration_since(*quiet_since.get_or_insert(now)) >= QUIET_FOR {
                return;
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// The task serves while another running task of its service is held out of rotation
    /// here: a blue-green standby the manager may switch back to.
    pub fn has_standby(&self, task_id: &str, service_id: &str) -> bool {
        self.rotation.has_standby(task_id, service_id)
    }

    /// The manager's word on which of this node's tasks are held out of rotation (the
    /// complete set); applied at once, every service in one go.
    pub fn set_held(&self, held: HashSet<String>) {
        if self.rotation.set_held(held) {
            let rotation = self.rotation.clone();
            tokio::task::spawn_blocking(move || rotation.sync());
        }
    }

    pub fn manager(&self) -> &NetworkManager {
        &self.manager
    }

    /// Makes the task's networks on this node if needed and attaches its container. On error
    /// nothing of the container's is left attached.
    pub async fn prepare(
        &self,
        task: &Task,
        known: &HashMap<String, Network>,
    ) -> Result<Prepared, String> {
        let networks = match wanted(task, known)? {
            Wanted::Host => {
                return Ok(Prepared {
                    mode: NetworkMode::Host,
                    attachments: Vec::new(),
                    joined: None,
                })
            }
            Wanted::None => {
                return Ok(Prepared {
                    mode: NetworkMode::New,
                    attachments: Vec::new(),
                    joined: None,
                })
            }
            shared @ (Wanted::Container(_) | Wanted::Service(_)) => {
                let runtime = self.runtime.clone();
                let all = blocking(move || runtime.list())
                    .await
                    .ok_or("listing the node's containers crashed")?
                    .map_err(|e| format!("listing the node's containers: {e}"))?;
                let owner = owner_of(&shared, task.slot, &all)?;
                return join(owner, self.runtime.container_dir(&owner.id));
            }
            Wanted::Networks(n) => n,
        };
        let mut result = self
            .attach_all(&task.id, networks, &task.network_addresses)
            .await;
        if result.is_ok() {
            let (ports, t) = (self.ports.clone(), task.clone());
            if let Some(Err(e)) = blocking(move || ports.reserve(&t)).await {
                result = Err(e);
            }
        }
        if result.is_err() {
            self.release(&task.id).await;
        }
        result
    }

    async fn attach_all(
        &self,
        container_id: &str,
        networks: Vec<(String, Option<Network>, Vec<String>)>,
        addresses: &[NetworkAddress],
    ) -> Result<Prepared, String> {
        let mut attachments = Vec::new();
        let mut on_overlay = false;
        for (name, network, aliases) in networks {
            let spec = local_spec(&name, network.as_ref())?;
            // The address the manager chose for the task (overlay networks).
            let ip = network
                .as_ref()
                .and_then(|n| addresses.iter().find(|a| a.network_id == n.id))
                .and_then(|a| a.address.split('/').next()?.parse().ok());
            let made = self
                .manager
                .ensure_network(spec)
                .await
                .map_err(|e| format!("network {name}: {e}"))?;
            on_overlay |= made.overlay.is_some();
            let attachment = self
                .manager
                .attach(container_id, &name, aliases, ip)
                .await
                .map_err(|e| format!("attach to network {name}: {e}"))?;
            attachments.push(attachment);
        }
        if on_overlay {
            // The other nodes' names on a network made just now (it has its local id only
            // now), and the VIPs in the new container's namespace, before it starts.
            self.apply_remote().await;
        }
        let netns = attachments
            .first()
            .map(|a| a.netns_path.clone())
            .ok_or("the task has no network to join")?;
        self.register_client(container_id, &attachments);
        Ok(Prepared {
            mode: NetworkMode::Join(netns),
            attachments,
            joined: None,
        })
    }

    /// Lets the embedded DNS answer the container as one of its networks' members from now
    /// on: its process may look a name up before it joins rotation (a one-off's first act).
    fn register_client(&self, container_id: &str, attachments: &[Attachment]) {
        let addresses = attachments
            .iter()
            .map(|a| (a.network_id.clone(), a.ip))
            .collect();
        self.dns.table().set_client(container_id, addresses);
    }

    /// Releases the container's names, addresses, veths and netns file, once the containers
    /// sharing its namespace are stopped. Idempotent.
    pub async fn release(&self, container_id: &str) {
        self.withdraw(container_id).await;
        self.stop_joiners(container_id).await;
        self.dns.table().remove_client(container_id);
        let (ports, rotation, id) = (
            self.ports.clone(),
            self.rotation.clone(),
            container_id.to_string(),
        );
        blocking(move || {
            ports.release(&id);
            rotation.forget(&id);
        })
        .await;
        if let Err(e) = self.manager.release_container(container_id).await {
            tracing::warn!(
                container = container_id,
                "releasing its network endpoints: {e}"
            );
        }
        // Read by then (a task's worker asks before it releases); a standalone joiner's is
        // never asked for.
        self.lost
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(container_id);
    }

    /// Removes the networks that no container uses and no assigned task needs (`needed`,
    /// by local name); the default network stays.
    pub async fn prune(&self, needed: &HashSet<String>) {
        needed.clone_into(&mut self.needed.lock().unwrap_or_else(|e| e.into_inner()));
        self.prune_unused().await;
    }

    /// [`TaskNetworks::prune`] with what the tasks needed last time.
    pub async fn prune_unused(&self) {
        let needed = self
            .needed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let state = self.manager.read_state().await;
        let used: HashSet<&str> = state
            .containers
            .values()
            .flat_map(|c| c.attachments.iter().map(|a| a.network_id.as_str()))
            .collect();
        for n in state.networks.values() {
            if n.name == DEFAULT_NETWORK || needed.contains(&n.name) || used.contains(n.id.as_str())
            {
                continue;
            }
            self.dns
                .unlisten(SocketAddr::new(n.gateway.into(), 53))
                .await;
            if let Err(e) = self.manager.remove_network(&n.id).await {
                tracing::debug!(network = %n.name, "not removed: {e}");
            }
        }
    }

    /// The local network names the tasks need.
    pub fn needed_by(tasks: &[Task], known: &HashMap<String, Network>) -> HashSet<String> {
        tasks
            .iter()
            .filter_map(|t| match wanted(t, known) {
                Ok(Wanted::Networks(n)) => Some(n.into_iter().map(|(name, _, _)| name)),
                _ => None,
            })
            .flatten()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_proto::{ContainerSpec, NetworkAttachmentConfig, ServiceSpec};

    fn task(mode: &str, networks: &[&str]) -> Task {
        Task {
            id: "t".into(),
            spec: Some(
                ServiceSpec {
                    container: Some(ContainerSpec {
                        network_mode: mode.into(),
                        ..Default::default()
                    }),
                    networks: networks
                        .iter()
                        .map(|n| NetworkAttachmentConfig {
                            target: n.to_string(),
                            aliases: vec!["a".into()],
                        })
                        .collect(),
                    ..Default::default()
                }
                .into(),
            ),
            ..Default::default()
        }
    }

    fn known() -> HashMap<String, Network> {
        let n = Network {
            id: "n1".into(),
            meta: None,
            spec: Some(shoal_proto::NetworkSpec {
                name: "app_front".into(),
                subnet: "10.7.0.0/24".into(),
                internal: true,
                ..Default::default()
            }),
            vni: 0,
        };
        HashMap::from([("n1".to_string(), n)])
    }

    #[test]
    fn modes_and_networks_are_read() {
        assert_eq!(wanted(&task("host", &[]), &known()), Ok(Wanted::Host));
        assert_eq!(wanted(&task("none", &[]), &known()), Ok(Wanted::None));
        assert_eq!(
            wanted(&task("container:x", &[]), &known()),
            Ok(Wanted::Container("x".into()))
        );
        assert_eq!(
            wanted(&task("service:app_web", &[]), &known()),
            Ok(Wanted::Service("app_web".into()))
        );
        for bad in ["container:", "service:", "bogus", "other:x"] {
            let err = wanted(&task(bad, &[]), &known()).unwrap_err();
            assert!(err.contains("not supported"), "{bad}: {err}");
        }
        match wanted(&task("", &[]), &known()) {
            Ok(Wanted::Networks(n)) => assert_eq!(n[0].0, DEFAULT_NETWORK),
            other => panic!("{other:?}"),
        }
        match wanted(&task("", &["n1"]), &known()) {
            Ok(Wanted::Networks(n)) => {
                assert_eq!(n[0].0, "app_front");
                assert_eq!(n[0].2, ["a"]);
            }
            other => panic!("{other:?}"),
        }
        let err = wanted(&task("", &["gone"]), &known()).unwrap_err();
        assert!(err.contains("unknown"), "{err}");
    }

    #[test]
    fn a_shared_namespace_refuses_endpoints_of_its_own() {
        let with = |f: &dyn Fn(&mut shoal_proto::ServiceSpec)| {
            let mut t = task("container:x", &[]);
            if let Some(spec) = t.spec.as_mut() {
                let mut s = (**spec).clone();
                f(&mut s);
                *spec = s.into();
            }
            wanted(&t, &known()).unwrap_err()
        };
        let ports = with(&|s| {
            s.endpoint = Some(shoal_proto::EndpointSpec {
                ports: vec![PortConfig::default()],
                mode: String::new(),
            })
        });
        assert_eq!(
            ports,
            "conflicting options: published ports and network_mode container:x: a container \
             that shares another's network namespace has that container's published ports"
        );
        let hostname = with(&|s| {
            if let Some(c) = s.container.as_mut() {
                c.hostname = "h".into();
            }
        });
        assert!(
            hostname.starts_with("conflicting options: hostname"),
            "{hostname}"
        );
        let networks = with(&|s| {
            s.networks = vec![NetworkAttachmentConfig {
                target: "n1".into(),
                aliases: Vec::new(),
            }]
        });
        assert!(
            networks.starts_with("conflicting options: networks"),
            "{networks}"
        );
    }

    fn container(id: &str, name: &str, running: bool) -> ContainerState {
        ContainerState {
            id: id.into(),
            name: name.into(),
            labels: Default::default(),
            supervisor_pid: None,
            pid: running.then_some(42),
            started_at: None,
            status: if running {
                ContainerStatus::Running { pid: 42 }
            } else {
                ContainerStatus::Created
            },
            paused: false,
            config: Default::default(),
        }
    }

    fn task_of(service: &str, slot: u64, id: &str) -> ContainerState {
        let mut c = container(id, &format!("{service}.{slot}.{id}"), true);
        c.labels
            .insert(SERVICE_NAME_LABEL.into(), service.to_string());
        c
    }

    #[test]
    fn the_owner_is_found_by_id_name_or_unique_prefix_and_must_run() {
        let all = [
            container("abc123", "web", true),
            container("abd456", "db", true),
            container("ffff", "stopped", false),
        ];
        let by = |r: &str| owner_of(&Wanted::Container(r.into()), 0, &all).map(|c| c.id.clone());
        assert_eq!(by("abc123"), Ok("abc123".into()));
        assert_eq!(by("db"), Ok("abd456".into()));
        assert_eq!(by("abd"), Ok("abd456".into()));
        assert!(by("ab").unwrap_err().contains("ambiguous"));
        assert!(by("nope").unwrap_err().contains("no such container"));
        let err = by("stopped").unwrap_err();
        assert!(err.contains("is not running"), "{err}");
    }

    #[test]
    fn a_service_task_shares_the_same_slot_else_the_lowest() {
        let all = [
            task_of("app_web", 3, "c3"),
            task_of("app_web", 2, "c2"),
            task_of("app_webber", 1, "x1"),
            container("c9", "app_web.1.c9", true), // not a task of the service (no label)
        ];
        let of =
            |slot| owner_of(&Wanted::Service("app_web".into()), slot, &all).map(|c| c.id.clone());
        assert_eq!(of(3), Ok("c3".into()));
        assert_eq!(of(1), Ok("c2".into()));
        assert_eq!(of(0), Ok("c2".into()));
        let none = owner_of(&Wanted::Service("app_db".into()), 1, &all).unwrap_err();
        assert!(
            none.contains("no task of service app_db runs on this node"),
            "{none}"
        );
    }

    #[test]
    fn a_joiner_of_a_joiner_shares_the_first_owners_namespace() {
        let mut owner = container("o1", "owner", true);
        owner.config.network = NetworkMode::Join("/run/netns/o1".into());
        owner.config.hostname = "owner-host".into();
        let mut middle = container("m1", "middle", true);
        middle.config.network_container = "o1".into();
        let all = [owner, middle];
        let found = owner_of(&Wanted::Container("middle".into()), 0, &all).expect("owner");
        assert_eq!(found.id, "o1");
        let prepared = join(found, "/data/containers/o1".into()).expect("joined");
        assert_eq!(prepared.mode, NetworkMode::Join("/run/netns/o1".into()));
        assert!(prepared.attachments.is_empty());
        let joined = prepared.joined.expect("joined");
        assert_eq!(joined.hostname, "owner-host");
        assert_eq!(joined.etc_dir, Some("/data/containers/o1".into()));
        // The chain's end not running: refused.
        let mut lone = container("m2", "lone", true);
        lone.config.network_container = "gone".into();
        let err = owner_of(&Wanted::Container("lone".into()), 0, &[lone]).unwrap_err();
        assert!(err.contains("not running"), "{err}");
    }

    #[test]
    fn host_and_none_owners_give_their_mode() {
        let mut host = container("h1", "h", true);
        host.config.network = NetworkMode::Host;
        assert_eq!(
            join(&host, "/d/h1".into()).expect("host").mode,
            NetworkMode::Host
        );
        let none = container("n1", "n", true);
        assert_eq!(
            join(&none, "/d/n1".into()).expect("none").mode,
            NetworkMode::Join("/proc/42/ns/net".into())
        );
    }

    #[test]
    fn a_task_answers_to_its_names_and_their_tasks_forms() {
        let names = dns_names(
            "app_web.1.abc",
            "app_web",
            &["web".into(), "app_web".into()],
            false,
        );
        assert_eq!(
            names,
            [
                "app_web.1.abc",
                "app_web",
                "web",
                "tasks.app_web",
                "tasks.web"
            ]
        );
        let behind_a_vip = dns_names("app_web.1.abc", "app_web", &["web".into()], true);
        assert_eq!(
            behind_a_vip,
            ["app_web.1.abc", "tasks.app_web", "tasks.web"]
        );
    }

    #[test]
    fn store_specs_become_local_ones() {
        let k = known();
        let local = local_spec("app_front", k.get("n1")).expect("valid");
        assert_eq!(
            local.subnet.map(|s| s.to_string()),
            Some("10.7.0.0/24".into())
        );
        assert!(local.internal);
        let default = local_spec(DEFAULT_NETWORK, None).expect("valid");
        assert_eq!(default.subnet, None);
    }
}
