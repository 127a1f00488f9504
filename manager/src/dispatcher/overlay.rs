//! What a node needs to know of the tasks on other nodes. Pure: read from the store for every
//! session message.
//!
//! - On its overlay networks: where each task is (its address, and the address of its node
//!   as the VXLAN tunnel end) and whether DNS and the VIPs give it out. A task is an endpoint
//!   while it holds its address (not ended) and its node is up: a node marked down takes its
//!   tasks out at once, from forwarding, DNS and the VIPs.
//! - For the routing mesh (every node, whatever it runs): each service with ingress ports,
//!   and how many serving tasks it has on which node.

use std::collections::{BTreeMap, BTreeSet};

use shoal_proto::{
    IngressBackend, IngressService, Node, NodeState, OverlayEndpoint, OverlayPeers, ServiceSpec,
    Task, TaskState, VirtualIp,
};

use crate::store::State;

/// The endpoints of each overlay network among `networks` (ids), in task id order.
pub fn overlay_peers(state: &State, networks: &BTreeSet<&str>) -> Vec<OverlayPeers> {
    let overlays: Vec<&str> = networks
        .iter()
        .copied()
        .filter(|id| state.networks.get(*id).is_some_and(crate::ipam::is_overlay))
        .collect();
    if overlays.is_empty() {
        return Vec::new();
    }
    let mut peers: Vec<OverlayPeers> = overlays
        .iter()
        .map(|id| OverlayPeers {
            network_id: id.to_string(),
            endpoints: Vec::new(),
            virtual_ips: Vec::new(),
        })
        .collect();
    for service in state.services.values() {
        for vip in &service.virtual_ips {
            if let Some(p) = peers.iter_mut().find(|p| p.network_id == vip.network_id) {
                let spec = service.spec.as_ref();
                p.virtual_ips.push(VirtualIp {
                    service_id: service.id.clone(),
                    service_name: spec.map(|s| s.name.clone()).unwrap_or_default(),
                    aliases: aliases_on(spec, &vip.network_id),
                    address: vip.address.clone(),
                });
            }
        }
    }
    for task in state.tasks.values() {
        if task.network_addresses.is_empty() || status_of(task).is_terminal() {
            continue;
        }
        let Some(node) = state.nodes.get(&task.node_id).filter(|n| is_up(n)) else {
            continue;
        };
        for address in &task.network_addresses {
            if let Some(p) = peers
                .iter_mut()
                .find(|p| p.network_id == address.network_id)
            {
                p.endpoints
                    .push(endpoint(task, node, &address.network_id, &address.address));
            }
        }
    }
    peers
}

fn status_of(task: &Task) -> TaskState {
    task.status.as_ref().map(|s| s.state()).unwrap_or_default()
}

fn is_up(node: &Node) -> bool {
    node.status
        .as_ref()
        .is_some_and(|s| s.state() == NodeState::Ready)
}

/// Whether a task is in rotation: running (healthy, with a healthcheck), wanted running and
/// not held out by the manager. (Its node being up is the caller's check.)
fn serving(task: &Task) -> bool {
    let healthy = task
        .status
        .as_ref()
        .is_none_or(|s| s.health.is_empty() || s.health == "healthy");
    status_of(task) == TaskState::Running
        && healthy
        && !task.out_of_rotation
        && task.desired_state() == TaskState::Running
}

/// The underlay address of every up node, sorted (the routing mesh's peers).
pub fn up_node_addrs(state: &State) -> Vec<String> {
    let mut addrs: Vec<String> = state
        .nodes
        .values()
        .filter(|n| is_up(n))
        .filter_map(|n| n.status.as_ref().map(|s| s.addr.clone()))
        .filter(|a| !a.is_empty())
        .collect();
    addrs.sort();
    addrs.dedup();
    addrs
}

/// Every service with ingress ports, and how many serving tasks it has on each up node.
pub fn ingress_services(state: &State) -> Vec<IngressService> {
    state
        .services
        .values()
        .filter(|s| !s.ingress_ports.is_empty())
        .map(|s| {
            let mut counts: BTreeMap<&str, u32> = BTreeMap::new();
            for task in state.tasks_of(&s.id).filter(|t| serving(t)) {
                *counts.entry(task.node_id.as_str()).or_default() += 1;
            }
            let backends = counts
                .into_iter()
                .filter_map(|(node_id, tasks)| {
                    let node = state.nodes.get(node_id).filter(|n| is_up(n))?;
                    Some(IngressBackend {
                        node_id: node_id.to_string(),
                        node_addr: node.status.as_ref()?.addr.clone(),
                        tasks,
                    })
                })
                .collect();
            IngressService {
                service_id: s.id.clone(),
                ports: s.ingress_ports.clone(),
                backends,
            }
        })
        .collect()
}

fn endpoint(task: &Task, node: &Node, network_id: &str, address: &str) -> OverlayEndpoint {
    let spec = task.spec.as_deref();
    OverlayEndpoint {
        task_id: task.id.clone(),
        node_id: task.node_id.clone(),
        node_addr: node
            .status
            .as_ref()
            .map(|s| s.addr.clone())
            .unwrap_or_default(),
        address: address.to_string(),
        container_name: task.container_name(),
        service_name: spec.map(|s| s.name.clone()).unwrap_or_default(),
        aliases: aliases_on(spec, network_id),
        serving: serving(task),
        service_id: task.service_id.clone(),
    }
}

fn aliases_on(spec: Option<&ServiceSpec>, network_id: &str) -> Vec<String> {
    spec.and_then(|s| s.networks.iter().find(|n| n.target == network_id))
        .map(|n| n.aliases.clone())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_proto::{
        Network, NetworkAddress, NetworkAttachmentConfig, NetworkSpec, NodeStatus, SharedSpec,
        TaskStatus,
    };

    fn node(id: &str, addr: &str, state: NodeState) -> Node {
        Node {
            id: id.into(),
            status: Some(NodeStatus {
                state: state as i32,
                message: String::new(),
                addr: addr.into(),
            }),
            ..Default::default()
        }
    }

    fn task(id: &str, node: &str, state: TaskState, address: &str) -> Task {
        Task {
            id: id.into(),
            node_id: node.into(),
            slot: 1,
            spec: Some(SharedSpec::new(ServiceSpec {
                name: "web".into(),
                networks: vec![NetworkAttachmentConfig {
                    target: "o".into(),
                    aliases: vec!["www".into()],
                }],
                ..Default::default()
            })),
            desired_state: TaskState::Running as i32,
            status: Some(TaskStatus {
                state: state as i32,
                ..Default::default()
            }),
            network_addresses: vec![NetworkAddress {
                network_id: "o".into(),
                address: address.into(),
            }],
            ..Default::default()
        }
    }

    #[test]
    fn endpoints_are_the_live_tasks_on_up_nodes() {
        let mut state = State::default();
        state.networks.insert(
            "o".into(),
            Network {
                id: "o".into(),
                spec: Some(NetworkSpec {
                    driver: "overlay".into(),
                    ..Default::default()
                }),
                ..Default::default()
            },
        );
        state
            .nodes
            .insert("n1".into(), node("n1", "198.18.0.11", NodeState::Ready));
        state
            .nodes
            .insert("n2".into(), node("n2", "198.18.0.12", NodeState::Down));
        for t in [
            task("a", "n1", TaskState::Running, "10.0.0.2/24"),
            task("b", "n1", TaskState::Starting, "10.0.0.3/24"),
            task("c", "n1", TaskState::Failed, "10.0.0.4/24"),
            task("d", "n2", TaskState::Running, "10.0.0.5/24"),
        ] {
            state.tasks.insert(t.id.clone(), Box::new(t));
        }
        let peers = overlay_peers(&state, &["o", "bridge"].into_iter().collect());
        assert_eq!(peers.len(), 1);
        let got: Vec<(&str, bool)> = peers[0]
            .endpoints
            .iter()
            .map(|e| (e.task_id.as_str(), e.serving))
            .collect();
        assert_eq!(got, vec![("a", true), ("b", false)]);
        let mut web = shoal_proto::Service {
            id: "web".into(),
            ..Default::default()
        };
        web.ingress_ports.push(shoal_proto::PortConfig {
            published_port: 8080,
            target_port: 80,
            ..Default::default()
        });
        state.services.insert("web".into(), web);
        for t in state.tasks.values_mut() {
            t.service_id = "web".into();
        }
        let ingress = ingress_services(&state);
        assert_eq!(ingress.len(), 1);
        let backends: Vec<(&str, &str, u32)> = ingress[0]
            .backends
            .iter()
            .map(|b| (b.node_id.as_str(), b.node_addr.as_str(), b.tasks))
            .collect();
        assert_eq!(
            backends,
            vec![("n1", "198.18.0.11", 1)],
            "serving tasks of up nodes"
        );
        let a = &peers[0].endpoints[0];
        assert_eq!(a.node_addr, "198.18.0.11");
        assert_eq!(a.container_name, "web.1.a");
        assert_eq!(a.aliases, vec!["www".to_string()]);
    }
}
