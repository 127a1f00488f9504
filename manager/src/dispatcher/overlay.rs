//! What a node needs to know of the other tasks on its overlay networks: where each one is
//! (its address, and the address of its node as the VXLAN tunnel end) and whether DNS gives
//! it out. Pure: read from the store for every session message of a node on such a network.
//!
//! A task is an endpoint while it holds its address (not ended) and its node is up: a node
//! marked down takes its tasks out at once, from forwarding and from DNS.

use std::collections::BTreeSet;

use shoal_proto::{
    Node, NodeState, OverlayEndpoint, OverlayPeers, ServiceSpec, Task, TaskState, VirtualIp,
};

use crate::store::State;

/// The endpoints of each overlay network among `networks` (ids), in task id order.
pub fn overlay_peers(state: &State, networks: &BTreeSet<&str>) -> Vec<OverlayPeers> {
    let overlays: Vec<&str> = networks
        .iter()
        .copied()
        .filter(|id| {
            state
                .networks
                .get(*id)
                .is_some_and(crate::ipam::is_overlay)
        })
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
            if let Some(p) = peers.iter_mut().find(|p| p.network_id == address.network_id) {
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
    node.status.as_ref().is_some_and(|s| s.state() == NodeState::Ready)
}

fn endpoint(task: &Task, node: &Node, network_id: &str, address: &str) -> OverlayEndpoint {
    let spec = task.spec.as_ref();
    let status = task.status.as_ref();
    let healthy = status.is_none_or(|s| s.health.is_empty() || s.health == "healthy");
    OverlayEndpoint {
        task_id: task.id.clone(),
        node_id: task.node_id.clone(),
        node_addr: node.status.as_ref().map(|s| s.addr.clone()).unwrap_or_default(),
        address: address.to_string(),
        container_name: task.container_name(),
        service_name: spec.map(|s| s.name.clone()).unwrap_or_default(),
        aliases: aliases_on(spec, network_id),
        serving: status_of(task) == TaskState::Running
            && healthy
            && !task.out_of_rotation
            && task.desired_state() == TaskState::Running,
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
        Network, NetworkAddress, NetworkAttachmentConfig, NetworkSpec, NodeStatus, TaskStatus,
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
            spec: Some(ServiceSpec {
                name: "web".into(),
                networks: vec![NetworkAttachmentConfig {
                    target: "o".into(),
                    aliases: vec!["www".into()],
                }],
                ..Default::default()
            }),
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
        state.nodes.insert("n1".into(), node("n1", "198.18.0.11", NodeState::Ready));
        state.nodes.insert("n2".into(), node("n2", "198.18.0.12", NodeState::Down));
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
        let a = &peers[0].endpoints[0];
        assert_eq!(a.node_addr, "198.18.0.11");
        assert_eq!(a.container_name, "web.1.a");
        assert_eq!(a.aliases, vec!["www".to_string()]);
    }
}
