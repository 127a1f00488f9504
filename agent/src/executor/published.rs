//! A service's published ports on this node: one port-layer key per service, whose backends
//! are the service's running tasks here. (Swarm's routing mesh on one node: every replica
//! answers on the port; the cluster-wide mesh extends the backend set to other nodes.)
//!
//! - A task that is about to start reserves the ports (a clash is its start error, as with
//!   `docker run -p`); which tasks are backends is the rotation's decision
//!   ([`super::rotation`]): running, healthy and not held out by the manager; a stopping task
//!   leaves the backends before its drain period and its stop signal;
//! - when the node has no task of the service left, the ports are freed.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};

use shoal_proto::{IngressService, PortConfig, PortProtocol, PublishMode, Task};
use tokio::sync::watch;

use crate::ports::{PortManager, PortMapping, Protocol};

/// One service's host-mode ports on this node.
#[derive(Default)]
struct Published {
    mappings: Vec<PortMapping>,
    /// Tasks here that hold the reservation.
    tasks: BTreeSet<String>,
}

/// One service's ingress ports (the routing mesh), open on this node whether or not it runs a
/// task of the service.
#[derive(Clone, Default, PartialEq, Eq)]
struct Ingress {
    mappings: Vec<PortMapping>,
    /// Other nodes with serving tasks: (underlay address, serving tasks).
    remotes: Vec<(Ipv4Addr, u32)>,
}

#[derive(Default)]
struct State {
    host: HashMap<String, Published>,
    ingress: HashMap<String, Ingress>,
    /// Per service: the rotation's backends here (task → address).
    backends: HashMap<String, BTreeMap<String, Ipv4Addr>>,
    /// Underlay addresses of every cluster node.
    peers: Vec<Ipv4Addr>,
    /// The last assignments applied by [`PublishedPorts::set_ingress`] (they run on blocking
    /// threads, possibly out of order: an older one is skipped).
    ingress_seq: u64,
}

impl State {
    fn backends(&self, service: &str) -> Vec<Ipv4Addr> {
        self.backends
            .get(service)
            .map(|b| b.values().copied().collect())
            .unwrap_or_default()
    }
}

/// The port-layer key of a service's host-mode ports; its ingress ports use the service id.
pub fn host_key(service: &str) -> String {
    format!("{service}.host")
}

#[derive(Clone)]
pub struct PublishedPorts {
    ports: PortManager,
    state: Arc<Mutex<State>>,
    /// Numbers the calls of [`PublishedPorts::next_ingress_seq`].
    seq: Arc<std::sync::atomic::AtomicU64>,
    /// The `seq` of the ingress assignment applied last: a task that went live before its
    /// service's ingress ports were applied here learns them when this moves.
    ingress_applied: Arc<watch::Sender<u64>>,
}

fn mapping_of(p: &PortConfig) -> Result<PortMapping, String> {
    let port = |n: u32, what: &str| {
        u16::try_from(n).map_err(|_| format!("{what} port {n} is out of range"))
    };
    Ok(PortMapping {
        host_ip: if p.host_ip.is_empty() {
            None
        } else {
            Some(
                p.host_ip.parse().map_err(|_| {
                    format!("published port: {:?} is not an IPv4 address", p.host_ip)
                })?,
            )
        },
        host_port: port(p.published_port, "published")?,
        container_port: match port(p.target_port, "target")? {
            0 => return Err("a published port needs a target port".into()),
            n => n,
        },
        protocol: match p.protocol() {
            PortProtocol::Tcp => Protocol::Tcp,
            PortProtocol::Udp => Protocol::Udp,
        },
    })
}

fn task_ports(task: &Task) -> &[PortConfig] {
    task.spec
        .as_ref()
        .and_then(|s| s.endpoint.as_ref())
        .map(|e| e.ports.as_slice())
        .unwrap_or_default()
}

/// The port layer's mappings of a task's host-mode published ports (its ingress ports are the
/// cluster's, see [`PublishedPorts::set_ingress`]). Pure.
pub fn mappings(task: &Task) -> Result<Vec<PortMapping>, String> {
    task_ports(task)
        .iter()
        .filter(|p| p.publish_mode() == PublishMode::Host)
        .map(mapping_of)
        .collect()
}

/// The task status form of its ports: host-mode ones as resolved here, ingress ones as the
/// cluster resolved them (when known).
fn configs(task: &Task, host: &[PortMapping], ingress: &[PortMapping]) -> Vec<PortConfig> {
    let mut host = host.iter();
    let mut ingress = ingress.iter();
    task_ports(task)
        .iter()
        .cloned()
        .map(|mut p| {
            let resolved = if p.publish_mode() == PublishMode::Host {
                host.next()
            } else {
                ingress.next()
            };
            if let Some(m) = resolved {
                p.published_port = u32::from(m.host_port);
            }
            p
        })
        .collect()
}

/// `ports` with their ingress-mode entries' published ports taken, in order, from `ingress`.
/// Pure.
fn with_ingress(ports: &[PortConfig], ingress: &[PortMapping]) -> Vec<PortConfig> {
    let mut ingress = ingress.iter();
    ports
        .iter()
        .cloned()
        .map(|mut p| {
            if p.publish_mode() == PublishMode::Ingress {
                if let Some(m) = ingress.next() {
                    p.published_port = u32::from(m.host_port);
                }
            }
            p
        })
        .collect()
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// An ingress service's mappings and remote nodes, as this node publishes them. Pure.
fn ingress_of(service: &IngressService, own_node_id: &str) -> Result<Ingress, String> {
    let mappings = service
        .ports
        .iter()
        .map(mapping_of)
        .collect::<Result<Vec<_>, _>>()?;
    let mut remotes: Vec<(Ipv4Addr, u32)> = service
        .backends
        .iter()
        .filter(|b| b.node_id != own_node_id && b.tasks > 0)
        .filter_map(|b| Some((parse_node_addr(&b.node_addr)?, b.tasks)))
        .collect();
    remotes.sort();
    Ok(Ingress { mappings, remotes })
}

/// A node's underlay address, given as `IP` or `IP:port`.
pub fn parse_node_addr(addr: &str) -> Option<Ipv4Addr> {
    addr.parse::<Ipv4Addr>().ok().or_else(|| {
        addr.parse::<std::net::SocketAddr>()
            .ok()
            .and_then(|s| match s.ip() {
                std::net::IpAddr::V4(ip) => Some(ip),
                std::net::IpAddr::V6(_) => None,
            })
    })
}

/// Connections from other machines that this node forwards to a peer pass the forward hook:
/// `net.ipv4.ip_forward=1` (the network layer sets it too, but a node with no task may have no
/// network yet).
fn enable_forwarding() {
    const PATH: &str = "/proc/sys/net/ipv4/ip_forward";
    if std::fs::read_to_string(PATH).is_ok_and(|v| v.trim() == "1") {
        return;
    }
    if let Err(e) = std::fs::write(PATH, "1") {
        tracing::warn!("routing mesh: cannot enable {PATH}: {e}");
    }
}

impl PublishedPorts {
    pub fn new(ports: PortManager) -> Self {
        PublishedPorts {
            ports,
            state: Arc::new(Mutex::new(State::default())),
            seq: Arc::new(std::sync::atomic::AtomicU64::new(0)),
            ingress_applied: Arc::new(watch::Sender::new(0)),
        }
    }

    /// Changes whenever an ingress assignment was applied (see [`Self::ingress_ready`]).
    pub fn ingress_applied(&self) -> watch::Receiver<u64> {
        self.ingress_applied.subscribe()
    }

    /// After a daemon restart: drops the ports of services with no container left here (the
    /// ingress ports come back with the next assignments).
    pub fn reconcile(&self, live_services: &HashSet<String>) {
        let live: HashSet<String> = live_services
            .iter()
            .flat_map(|s| [s.clone(), host_key(s)])
            .collect();
        match self.ports.reconcile(&live) {
            Ok(report) => tracing::info!(?report, "published ports reconciled"),
            Err(e) => tracing::warn!("reconciling published ports: {e}"),
        }
    }

    /// Takes a number for the next [`set_ingress`](Self::set_ingress), in the order the
    /// assignments arrived.
    pub fn next_ingress_seq(&self) -> u64 {
        self.seq.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1
    }

    /// The cluster's ingress services (from the assignments numbered `seq`): every one of them is published
    /// here, to this node's serving tasks and the other nodes that have some; the others are
    /// unpublished. Blocking.
    pub fn set_ingress(
        &self,
        seq: u64,
        services: &[IngressService],
        node_addrs: &[String],
        own_node_id: &str,
    ) {
        let peers: Vec<Ipv4Addr> = node_addrs
            .iter()
            .filter_map(|a| parse_node_addr(a))
            .collect();
        let mut state = lock(&self.state);
        if seq <= state.ingress_seq {
            return; // newer assignments were applied already
        }
        state.ingress_seq = seq;
        state.peers = peers.clone();
        let wanted: HashSet<&str> = services.iter().map(|s| s.service_id.as_str()).collect();
        let gone: Vec<String> = state
            .ingress
            .keys()
            .filter(|k| !wanted.contains(k.as_str()))
            .cloned()
            .collect();
        for service in gone {
            state.ingress.remove(&service);
            if let Err(e) = self.ports.unpublish(&service) {
                tracing::warn!(%service, "unpublishing ingress ports: {e}");
            }
        }
        for svc in services {
            let id = svc.service_id.as_str();
            let next = match ingress_of(svc, own_node_id) {
                Ok(i) => i,
                Err(e) => {
                    tracing::warn!(service = id, "ingress ports: {e}");
                    continue;
                }
            };
            let old = state.ingress.get(id).cloned();
            if old.as_ref().map(|o| &o.mappings) != Some(&next.mappings) {
                if let Err(e) = self.ports.publish(id, &next.mappings, &state.backends(id)) {
                    tracing::warn!(service = id, "publishing ingress ports: {e}");
                    continue;
                }
            }
            if let Err(e) = self.ports.set_remotes(id, &next.remotes, &peers) {
                tracing::warn!(service = id, "routing mesh of ingress ports: {e}");
            }
            state.ingress.insert(id.to_string(), next);
        }
        if state.ingress.values().any(|i| !i.remotes.is_empty()) {
            enable_forwarding();
        }
        drop(state);
        self.ingress_applied.send_replace(seq);
    }

    /// Reserves the task's host-mode ports before it starts. Blocking (the port layer runs
    /// `nft`).
    pub fn reserve(&self, task: &Task) -> Result<(), String> {
        let mappings = mappings(task)?;
        if mappings.is_empty() {
            return Ok(());
        }
        let mut state = lock(&self.state);
        let backends = state.backends(&task.service_id);
        let key = host_key(&task.service_id);
        let result = self.ports.publish(&key, &mappings, &backends);
        let entry = state.host.entry(task.service_id.clone()).or_default();
        match result {
            Ok(resolved) => {
                entry.mappings = resolved;
                entry.tasks.insert(task.id.clone());
                Ok(())
            }
            Err(e) => {
                if entry.tasks.is_empty() {
                    state.host.remove(&task.service_id);
                }
                Err(e.to_string())
            }
        }
    }

    /// Whether the task's ingress ports are known here: it has none, or the cluster's
    /// assignment of its service's ingress ports was applied ([`Self::set_ingress`] runs on a
    /// blocking thread, and may still be under way when the task starts).
    pub fn ingress_ready(&self, task: &Task) -> bool {
        let wants_ingress = task
            .spec
            .as_ref()
            .and_then(|s| s.endpoint.as_ref())
            .is_some_and(|e| {
                e.ports
                    .iter()
                    .any(|p| p.publish_mode() == PublishMode::Ingress)
            });
        !wants_ingress || lock(&self.state).ingress.contains_key(&task.service_id)
    }

    /// `reported` (the task's ports as its status gave them) with its ingress ports as the
    /// cluster resolved them, once their assignment was applied here; `None` before.
    pub fn resolve_ingress(&self, task: &Task, reported: &[PortConfig]) -> Option<Vec<PortConfig>> {
        let state = lock(&self.state);
        let ingress = state.ingress.get(&task.service_id)?;
        Some(with_ingress(reported, &ingress.mappings))
    }

    /// The task runs: its service's host-mode ports are published (again, after a daemon
    /// restart, when the task was adopted rather than started). Returns its ports with the
    /// host ports resolved. Whether it gets connections is the rotation's business
    /// ([`PublishedPorts::set_backends`]). Blocking.
    pub fn ensure(&self, task: &Task) -> Result<Vec<PortConfig>, String> {
        let mappings = mappings(task)?;
        let mut state = lock(&self.state);
        let ingress = state
            .ingress
            .get(&task.service_id)
            .map(|i| i.mappings.clone())
            .unwrap_or_default();
        if mappings.is_empty() {
            return Ok(configs(task, &[], &ingress));
        }
        let backends = state.backends(&task.service_id);
        let entry = state.host.entry(task.service_id.clone()).or_default();
        entry.tasks.insert(task.id.clone());
        if entry.mappings.is_empty() {
            let resolved = self
                .ports
                .publish(&host_key(&task.service_id), &mappings, &backends)
                .map_err(|e| e.to_string())?;
            entry.mappings = resolved;
        }
        Ok(configs(task, &entry.mappings, &ingress))
    }

    /// The service's published ports (host-mode and ingress) now reach exactly `backends`
    /// here (task → address), each key switched in one port-layer transaction. Blocking.
    pub fn set_backends(&self, service: &str, backends: &BTreeMap<String, Ipv4Addr>) {
        let mut state = lock(&self.state);
        state.backends.insert(service.to_string(), backends.clone());
        let list = state.backends(service);
        if state
            .host
            .get(service)
            .is_some_and(|e| !e.mappings.is_empty())
        {
            if let Err(e) = self.ports.set_backends(&host_key(service), &list) {
                tracing::warn!(%service, "updating published port backends: {e}");
            }
        }
        if state.ingress.contains_key(service) {
            if let Err(e) = self.ports.set_backends(service, &list) {
                tracing::warn!(%service, "updating ingress port backends: {e}");
            }
        }
    }

    /// The task's container is gone: the service's host-mode ports are freed once no task of
    /// it is left here. Blocking.
    pub fn release(&self, task_id: &str) {
        let mut state = lock(&self.state);
        for backends in state.backends.values_mut() {
            // The rotation took it out of the backends already (the task left it first).
            backends.remove(task_id);
        }
        state.backends.retain(|_, b| !b.is_empty());
        let mut emptied = Vec::new();
        for (service, entry) in state.host.iter_mut() {
            if entry.tasks.remove(task_id) && entry.tasks.is_empty() {
                emptied.push(service.clone());
            }
        }
        for service in emptied {
            state.host.remove(&service);
            if let Err(e) = self.ports.unpublish(&host_key(&service)) {
                tracing::warn!(%service, "freeing published ports: {e}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_proto::{EndpointSpec, ServiceSpec};

    fn task(ports: Vec<PortConfig>) -> Task {
        Task {
            id: "t1".into(),
            service_id: "s1".into(),
            spec: Some(
                ServiceSpec {
                    endpoint: Some(EndpointSpec {
                        ports,
                        mode: String::new(),
                    }),
                    ..Default::default()
                }
                .into(),
            ),
            ..Default::default()
        }
    }

    #[test]
    fn port_configs_become_mappings() {
        let t = task(vec![
            PortConfig {
                target_port: 80,
                published_port: 8080,
                host_ip: "127.0.0.1".into(),
                publish_mode: PublishMode::Host as i32,
                ..Default::default()
            },
            PortConfig {
                protocol: PortProtocol::Udp as i32,
                target_port: 53,
                publish_mode: PublishMode::Host as i32,
                ..Default::default()
            },
        ]);
        let m = mappings(&t).expect("valid");
        assert_eq!(m[0].host_ip, Some(Ipv4Addr::LOCALHOST));
        assert_eq!((m[0].host_port, m[0].container_port), (8080, 80));
        assert_eq!(m[1].protocol, Protocol::Udp);
        assert_eq!(m[1].host_port, 0);
        let mut resolved = m.clone();
        resolved[1].host_port = 40000;
        assert_eq!(configs(&t, &resolved, &[])[1].published_port, 40000);
        let bad = task(vec![PortConfig {
            target_port: 70000,
            publish_mode: PublishMode::Host as i32,
            ..Default::default()
        }]);
        assert!(mappings(&bad).is_err());
    }

    #[test]
    fn ingress_ports_learned_later_fill_in_the_reported_ones() {
        let host = PortConfig {
            target_port: 80,
            published_port: 8080,
            publish_mode: PublishMode::Host as i32,
            ..Default::default()
        };
        let ingress = |target_port| PortConfig {
            target_port,
            publish_mode: PublishMode::Ingress as i32,
            ..Default::default()
        };
        let reported = vec![ingress(443), host.clone(), ingress(53)];
        let assigned = [PortMapping::tcp(30001, 443), PortMapping::tcp(30002, 53)];
        let resolved = with_ingress(&reported, &assigned);
        let published: Vec<u32> = resolved.iter().map(|p| p.published_port).collect();
        assert_eq!(published, [30001, 8080, 30002]);
        assert_eq!(resolved[1], host);
        // Not assigned (yet): left as reported.
        assert_eq!(with_ingress(&reported, &[]), reported);
    }
}

#[cfg(test)]
mod ingress_tests {
    use super::*;
    use shoal_proto::IngressBackend;

    #[test]
    fn remotes_are_the_other_nodes_weighted_by_tasks() {
        let svc = IngressService {
            service_id: "s".into(),
            ports: vec![PortConfig {
                target_port: 80,
                published_port: 8080,
                ..Default::default()
            }],
            backends: vec![
                IngressBackend {
                    node_id: "me".into(),
                    node_addr: "10.0.0.1".into(),
                    tasks: 1,
                },
                IngressBackend {
                    node_id: "b".into(),
                    node_addr: "10.0.0.2:4242".into(),
                    tasks: 2,
                },
            ],
        };
        let i = ingress_of(&svc, "me").expect("valid");
        assert_eq!(i.mappings, vec![PortMapping::tcp(8080, 80)]);
        assert_eq!(i.remotes, vec![(Ipv4Addr::new(10, 0, 0, 2), 2)]);
        assert_eq!(parse_node_addr("bad"), None);
    }
}
