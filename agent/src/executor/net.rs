//! The network side of a task: which networks its container joins, made on this node when
//! first needed, and released with the container.
//!
//! - `network_mode: host` shares the host's stack; `none` gives a namespace with only `lo`.
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
use crate::network::{Attachment, NetworkManager, NetworkSpec, OverlaySpec, PoolPolicy};
use crate::runtime::NetworkMode;

/// The node-local network of services that name none.
pub const DEFAULT_NETWORK: &str = "bridge";

/// What a task's container gets.
#[derive(Debug, Clone, PartialEq)]
pub struct Prepared {
    pub mode: NetworkMode,
    /// Its endpoints, in attach order (empty for `host` and `none`).
    pub attachments: Vec<Attachment>,
}

/// Which networks a task asks for: (local network name, store network if any, aliases).
#[derive(Debug, Clone, PartialEq)]
enum Wanted {
    Host,
    None,
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
            return Err(format!(
                "network_mode {other:?} is not supported: use host, none or networks"
            ))
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
    pub fn new(manager: NetworkManager, dns: DnsServer, ports: PublishedPorts) -> Self {
        manager.enable_pool(PoolPolicy::default());
        let rotation = Rotation::new(dns.table().clone(), ports.clone());
        TaskNetworks {
            manager,
            dns,
            ports,
            needed: Default::default(),
            rotation,
            remote: Default::default(),
        }
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
        let wanted: HashMap<String, Vec<DnsEntry>> = view
            .records
            .iter()
            .map(|(task, records)| {
                let entries = records
                    .iter()
                    .filter_map(|(network, ip, names)| {
                        let id = self.manager.network(network).ok()?.id;
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
        self.apply_vip_rules(&view, &mut applied.vip_rules).await;
    }

    /// Loads, in each of this node's containers on an overlay network, the VIPs of its
    /// networks where they changed.
    async fn apply_vip_rules(&self, view: &RemoteView, applied: &mut HashMap<String, String>) {
        let state = self.manager.state();
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
        let attachments = self.manager.attachments(&task.id);
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
                && self
                    .manager
                    .network(&a.network_id)
                    .is_ok_and(|n| n.overlay.is_some());
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
        let reachable = attachments.iter().find(|a| {
            self.manager
                .network(&a.network_id)
                .is_ok_and(|n| !n.internal)
        });
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
            .attachments(container_id)
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
                })
            }
            Wanted::None => {
                return Ok(Prepared {
                    mode: NetworkMode::New,
                    attachments: Vec::new(),
                })
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
        Ok(Prepared {
            mode: NetworkMode::Join(netns),
            attachments,
        })
    }

    /// Releases the container's names, addresses, veths and netns file. Idempotent.
    pub async fn release(&self, container_id: &str) {
        self.withdraw(container_id).await;
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
        let state = self.manager.state();
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
        assert!(wanted(&task("container:x", &[]), &known()).is_err());
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
