//! The other nodes' tasks on this node's overlay networks, as the manager sends them
//! (`Assignments.overlay_peers`): where to send their frames (the network driver's
//! forwarding and neighbour entries) and which names they answer to (this node's DNS server).
//!
//! This node's own tasks are left out: the driver reaches them on the bridge, and the
//! rotation ([`super::rotation`]) keeps their names. Pure; [`super::net::TaskNetworks`]
//! applies the result.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use shoal_proto::OverlayPeers;

use super::net::dns_names;
use crate::network::OverlayPeer;

/// A remote endpoint's DNS record, keyed by its task: (network name, address, names).
pub type RemoteRecord = (String, Ipv4Addr, Vec<String>);

/// A service's virtual address on one network and where connections to it go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vip {
    pub ip: Ipv4Addr,
    /// The serving endpoints of the service on the network, on every node, sorted.
    pub backends: Vec<Ipv4Addr>,
}

/// What the other nodes' tasks need here, per overlay network (by local name).
#[derive(Debug, Default, Clone, PartialEq)]
pub struct RemoteView {
    /// Every remote endpoint of each network (serving or not: all are reachable).
    pub peers: BTreeMap<String, Vec<OverlayPeer>>,
    /// The DNS records of the serving ones, by task id, and of the virtual addresses, by
    /// `vip:<service id>`.
    pub records: BTreeMap<String, Vec<RemoteRecord>>,
    /// The virtual addresses on each network.
    pub vips: BTreeMap<String, Vec<Vip>>,
}

/// The view from node `own_node` of `overlay_peers`, whose networks are named by
/// `name_of(store network id)` here (`None`: not a network of this node's tasks).
pub fn remote_view(
    overlay_peers: &[OverlayPeers],
    own_node: &str,
    name_of: impl Fn(&str) -> Option<String>,
) -> RemoteView {
    let mut view = RemoteView::default();
    for network in overlay_peers {
        let Some(name) = name_of(&network.network_id) else {
            continue;
        };
        let peers = view.peers.entry(name.clone()).or_default();
        for e in network.endpoints.iter().filter(|e| e.node_id != own_node) {
            let (Some(ip), Ok(vtep)) = (address_of(&e.address), e.node_addr.parse::<Ipv4Addr>())
            else {
                tracing::warn!(task = %e.task_id, address = %e.address, node = %e.node_addr, "overlay endpoint with an unreadable address: skipped");
                continue;
            };
            peers.push(OverlayPeer { ip, vtep });
            if e.serving {
                let vip = network
                    .virtual_ips
                    .iter()
                    .any(|v| v.service_id == e.service_id);
                view.records.entry(e.task_id.clone()).or_default().push((
                    name.clone(),
                    ip,
                    dns_names(&e.container_name, &e.service_name, &e.aliases, vip),
                ));
            }
        }
        peers.sort();
        for vip in &network.virtual_ips {
            let Some(ip) = address_of(&vip.address) else {
                continue;
            };
            let mut backends: Vec<Ipv4Addr> = network
                .endpoints
                .iter()
                .filter(|e| e.serving && e.service_id == vip.service_id)
                .filter_map(|e| address_of(&e.address))
                .collect();
            backends.sort();
            view.vips
                .entry(name.clone())
                .or_default()
                .push(Vip { ip, backends });
            let mut names = vec![vip.service_name.clone()];
            names.extend(vip.aliases.iter().cloned());
            view.records
                .entry(format!("vip:{}", vip.service_id))
                .or_default()
                .push((name.clone(), ip, names));
        }
    }
    view
}

/// The address part of `a.b.c.d/n`.
fn address_of(cidr: &str) -> Option<Ipv4Addr> {
    cidr.split('/').next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_proto::OverlayEndpoint;

    fn endpoint(task: &str, node: &str, address: &str, serving: bool) -> OverlayEndpoint {
        OverlayEndpoint {
            task_id: task.into(),
            node_id: node.into(),
            node_addr: format!("198.18.0.{}", if node == "n1" { 11 } else { 12 }),
            address: address.into(),
            container_name: format!("web.1.{task}"),
            service_name: "web".into(),
            aliases: vec![],
            serving,
            service_id: "s".into(),
        }
    }

    #[test]
    fn the_view_keeps_other_nodes_tasks_and_names_only_serving_ones() {
        let peers = vec![
            OverlayPeers {
                network_id: "o".into(),
                endpoints: vec![
                    endpoint("a", "n1", "10.0.0.2/24", true),
                    endpoint("b", "n2", "10.0.0.3/24", true),
                    endpoint("c", "n2", "10.0.0.4/24", false),
                ],
                virtual_ips: vec![],
            },
            OverlayPeers {
                network_id: "unknown".into(),
                endpoints: vec![endpoint("d", "n2", "10.0.9.2/24", true)],
                virtual_ips: vec![],
            },
        ];
        let view = remote_view(&peers, "n1", |id| (id == "o").then(|| "net".to_string()));
        let ip = |s: &str| s.parse::<Ipv4Addr>().expect("ip");
        let vtep = ip("198.18.0.12");
        assert_eq!(
            view.peers["net"],
            vec![
                OverlayPeer {
                    ip: ip("10.0.0.3"),
                    vtep
                },
                OverlayPeer {
                    ip: ip("10.0.0.4"),
                    vtep
                }
            ]
        );
        assert_eq!(view.records.len(), 1);
        let (network, address, names) = &view.records["b"][0];
        assert_eq!((network.as_str(), *address), ("net", ip("10.0.0.3")));
        assert_eq!(names[..2], ["web.1.b".to_string(), "web".to_string()]);
    }

    #[test]
    fn a_virtual_ip_takes_the_service_name_and_balances_over_every_serving_task() {
        let peers = vec![OverlayPeers {
            network_id: "o".into(),
            endpoints: vec![
                endpoint("a", "n1", "10.0.0.2/24", true),
                endpoint("b", "n2", "10.0.0.3/24", true),
                endpoint("c", "n2", "10.0.0.4/24", false),
            ],
            virtual_ips: vec![shoal_proto::VirtualIp {
                service_id: "s".into(),
                service_name: "web".into(),
                aliases: vec!["www".into()],
                address: "10.0.0.9/24".into(),
            }],
        }];
        let view = remote_view(&peers, "n1", |_| Some("net".to_string()));
        let ip = |s: &str| s.parse::<Ipv4Addr>().expect("ip");
        assert_eq!(
            view.vips["net"],
            vec![Vip {
                ip: ip("10.0.0.9"),
                backends: vec![ip("10.0.0.2"), ip("10.0.0.3")]
            }],
            "local and remote serving tasks are backends"
        );
        assert_eq!(
            view.records["vip:s"],
            vec![(
                "net".to_string(),
                ip("10.0.0.9"),
                vec!["web".to_string(), "www".to_string()]
            )]
        );
        let (_, _, names) = &view.records["b"][0];
        assert!(
            !names.contains(&"web".to_string()),
            "the VIP answers for the service: {names:?}"
        );
        assert!(names.contains(&"tasks.web".to_string()));
    }
}
