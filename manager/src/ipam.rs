//! Cluster-wide address management for overlay networks. Pure.
//!
//! An overlay network spans every node, so its subnet, its VXLAN id and every task's address
//! on it must be the same on all of them: the manager chooses them and the store records them
//! (Swarm's allocator does the same). Bridge networks are left to each node.
//!
//! - A network created without a subnet gets the first free /24 of the cluster's overlay
//!   pool (default [`OVERLAY_POOL`], Swarm's), skipping every subnet another network has; its gateway is the
//!   subnet's first address (every node puts it on its own bridge: a distributed gateway).
//! - Its VNI is the smallest free one from [`FIRST_VNI`].
//! - A task gets its addresses when it is placed on a node, in the same write: the lowest
//!   free host address of each overlay network it joins (inside the ip range when there is
//!   one). A task holds its addresses until it ends (a terminal state); then they are free.
//! - A service in endpoint mode vip (the default) gets a virtual address on each overlay
//!   network it joins, from the same space, held while the service exists.

use std::collections::{HashMap, HashSet};
use std::net::Ipv4Addr;

use shoal_proto::{Network, NetworkAddress, NetworkSpec, Service, Task, TaskState};

use crate::control::network::parse_subnet;
use crate::store::State;

/// Where overlay subnets come from: 10.0.0.0/8 in /24s, as Swarm does.
pub const OVERLAY_POOL: (Ipv4Addr, u8) = (Ipv4Addr::new(10, 0, 0, 0), 8);
pub const OVERLAY_SUBNET_LEN: u8 = 24;
/// VXLAN ids below this are left alone (Swarm starts at 4096 too).
pub const FIRST_VNI: u32 = 4096;

pub const OVERLAY: &str = "overlay";

/// Whether a network is an overlay network.
pub fn is_overlay(network: &Network) -> bool {
    network.spec.as_ref().is_some_and(|s| s.driver == OVERLAY)
}

fn mask(len: u8) -> u32 {
    u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0)
}

fn overlaps(a: (Ipv4Addr, u8), b: (Ipv4Addr, u8)) -> bool {
    let len = a.1.min(b.1);
    u32::from(a.0) & mask(len) == u32::from(b.0) & mask(len)
}

/// Fills an overlay network's subnet and gateway when the spec leaves them out, and picks its
/// VNI, given the networks that exist (`others`: the store's, and any made in the same write).
pub fn allocate_network<'a>(
    spec: &mut NetworkSpec,
    others: impl Iterator<Item = &'a Network> + Clone,
    pool: &str,
) -> Result<u32, String> {
    if spec.subnet.is_empty() {
        let pool = match pool {
            "" => OVERLAY_POOL,
            text => parse_subnet(text)
                .ok()
                .filter(|p| p.1 <= OVERLAY_SUBNET_LEN)
                .ok_or_else(|| format!("the cluster's overlay address pool {text:?} is not a CIDR of /24 or larger"))?,
        };
        let taken: Vec<(Ipv4Addr, u8)> = others
            .clone()
            .filter_map(|n| parse_subnet(&n.spec.as_ref()?.subnet).ok())
            .collect();
        let count = 1u32 << (OVERLAY_SUBNET_LEN - pool.1);
        let step = 1u32 << (32 - OVERLAY_SUBNET_LEN);
        let free = (0..count)
            .map(|i| (Ipv4Addr::from(u32::from(pool.0) + i * step), OVERLAY_SUBNET_LEN))
            .find(|candidate| !taken.iter().any(|t| overlaps(*candidate, *t)))
            .ok_or_else(|| {
                format!(
                    "no free /24 left in the overlay pool {}/{}: remove unused networks or give --subnet",
                    pool.0, pool.1
                )
            })?;
        spec.subnet = format!("{}/{}", free.0, free.1);
    }
    if spec.gateway.is_empty() {
        let (base, _) = parse_subnet(&spec.subnet)?;
        spec.gateway = Ipv4Addr::from(u32::from(base) + 1).to_string();
    }
    let used: HashSet<u32> = others.map(|n| n.vni).collect();
    (FIRST_VNI..(1 << 24))
        .find(|v| !used.contains(v))
        .ok_or_else(|| "no free VXLAN id left".to_string())
}

/// Whether a task still holds its overlay addresses: until it ends.
fn holds_addresses(task: &Task) -> bool {
    let state = task.status.as_ref().map(|s| s.state()).unwrap_or_default();
    state < TaskState::Complete
}

/// One overlay network's address space, as far as tasks go.
struct Space {
    base: u32,
    len: u8,
    /// Where task addresses may come from (the ip range, else the subnet).
    range: (u32, u32),
    gateway: u32,
    used: HashSet<u32>,
}

impl Space {
    fn new(spec: &NetworkSpec) -> Option<Space> {
        let (base, len) = parse_subnet(&spec.subnet).ok()?;
        let base = u32::from(base);
        let last = base | !mask(len);
        let range = match parse_subnet(&spec.ip_range) {
            Ok((r, rlen)) => (u32::from(r), u32::from(r) | !mask(rlen)),
            Err(_) => (base, last),
        };
        Some(Space {
            base,
            len,
            // Neither the network address nor the broadcast address.
            range: (range.0.max(base + 1), range.1.min(last - 1)),
            gateway: spec
                .gateway
                .parse::<Ipv4Addr>()
                .map(u32::from)
                .unwrap_or(base + 1),
            used: HashSet::new(),
        })
    }

    fn take(&mut self) -> Option<u32> {
        let free =
            (self.range.0..=self.range.1).find(|a| *a != self.gateway && !self.used.contains(a))?;
        self.used.insert(free);
        Some(free)
    }

    fn cidr(&self, addr: u32) -> String {
        format!("{}/{}", Ipv4Addr::from(addr), self.len)
    }

    fn contains(&self, addr: u32) -> bool {
        addr & mask(self.len) == self.base
    }
}

/// Task addresses on the overlay networks: built from the store once per scheduling pass,
/// then [`TaskIpam::assign`] for each task placed.
pub struct TaskIpam {
    spaces: HashMap<String, Space>,
}

impl TaskIpam {
    pub fn new(state: &State) -> TaskIpam {
        let mut spaces: HashMap<String, Space> = state
            .networks
            .values()
            .filter(|n| is_overlay(n))
            .filter_map(|n| Some((n.id.clone(), Space::new(n.spec.as_ref()?)?)))
            .collect();
        if !spaces.is_empty() {
            let held = state
                .tasks
                .values()
                .filter(|t| holds_addresses(t))
                .flat_map(|t| &t.network_addresses)
                .chain(state.services.values().flat_map(|s| &s.virtual_ips));
            for a in held {
                if let (Some(space), Some(ip)) =
                    (spaces.get_mut(&a.network_id), address_of(&a.address))
                {
                    space.used.insert(u32::from(ip));
                }
            }
        }
        TaskIpam { spaces }
    }

    /// The virtual addresses `service` should have, when they are not the ones it has: one
    /// on each overlay network it joins, unless its endpoint mode is dnsrr. Those it keeps
    /// stay the same.
    pub fn virtual_ips(&mut self, service: &Service) -> Option<Vec<NetworkAddress>> {
        let spec = service.spec.as_ref()?;
        let dnsrr = spec.endpoint.as_ref().is_some_and(|e| e.mode == "dnsrr");
        let mut wanted = Vec::new();
        for attachment in spec.networks.iter().filter(|_| !dnsrr) {
            let Some(space) = self.spaces.get_mut(&attachment.target) else {
                continue;
            };
            let kept = service
                .virtual_ips
                .iter()
                .find(|a| a.network_id == attachment.target)
                .filter(|a| address_of(&a.address).is_some_and(|ip| space.contains(ip.into())));
            let address = match kept {
                Some(a) => a.address.clone(),
                // A full network leaves the service without one: DNS then gives its tasks.
                None => space.take().map(|ip| space.cidr(ip))?,
            };
            wanted.push(NetworkAddress {
                network_id: attachment.target.clone(),
                address,
            });
        }
        (wanted != service.virtual_ips).then_some(wanted)
    }

    /// Whether there is any overlay network at all (nothing to do otherwise).
    pub fn is_empty(&self) -> bool {
        self.spaces.is_empty()
    }

    /// The task's addresses on the overlay networks its spec joins: those it has, and a new
    /// one on each network where it has none.
    pub fn assign(&mut self, task: &Task) -> Result<Vec<NetworkAddress>, String> {
        let Some(spec) = task.spec.as_ref() else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        for attachment in &spec.networks {
            let Some(space) = self.spaces.get_mut(&attachment.target) else {
                continue;
            };
            let kept = task
                .network_addresses
                .iter()
                .filter(|a| a.network_id == attachment.target)
                .find(|a| address_of(&a.address).is_some_and(|ip| space.contains(ip.into())));
            let address = match kept {
                Some(a) => a.address.clone(),
                None => {
                    let ip = space.take().ok_or_else(|| {
                        format!(
                            "overlay network {} has no free address left: use a larger subnet",
                            attachment.target
                        )
                    })?;
                    space.cidr(ip)
                }
            };
            out.push(NetworkAddress {
                network_id: attachment.target.clone(),
                address,
            });
        }
        Ok(out)
    }
}

/// The address part of `a.b.c.d/n`.
pub fn address_of(cidr: &str) -> Option<Ipv4Addr> {
    cidr.split('/').next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_proto::{NetworkAttachmentConfig, ServiceSpec, SharedSpec, TaskStatus};

    fn overlay(id: &str, subnet: &str, vni: u32) -> Network {
        Network {
            id: id.into(),
            meta: None,
            spec: Some(NetworkSpec {
                name: id.into(),
                driver: OVERLAY.into(),
                subnet: subnet.into(),
                gateway: String::new(),
                ..Default::default()
            }),
            vni,
        }
    }

    #[test]
    fn networks_get_the_first_free_subnet_and_vni() {
        let existing = [
            overlay("a", "10.0.0.0/24", 4096),
            overlay("b", "10.0.2.0/23", 4098),
        ];
        let mut spec = NetworkSpec {
            driver: OVERLAY.into(),
            ..Default::default()
        };
        let vni = allocate_network(&mut spec, existing.iter(), "").expect("allocates");
        assert_eq!(spec.subnet, "10.0.1.0/24");
        assert_eq!(spec.gateway, "10.0.1.1");
        assert_eq!(vni, 4097);
        let mut spec = NetworkSpec {
            driver: OVERLAY.into(),
            subnet: "10.9.0.0/16".into(),
            ..Default::default()
        };
        allocate_network(&mut spec, existing.iter(), "").expect("allocates");
        assert_eq!(
            (spec.subnet.as_str(), spec.gateway.as_str()),
            ("10.9.0.0/16", "10.9.0.1")
        );
        let mut spec = NetworkSpec::default();
        allocate_network(&mut spec, existing.iter(), "10.77.128.0/17").expect("allocates");
        assert_eq!(spec.subnet, "10.77.128.0/24", "from the cluster's pool");
    }

    fn task(id: &str, networks: &[&str], addresses: &[(&str, &str)], state: TaskState) -> Task {
        Task {
            id: id.into(),
            spec: Some(SharedSpec::new(ServiceSpec {
                networks: networks
                    .iter()
                    .map(|n| NetworkAttachmentConfig {
                        target: n.to_string(),
                        aliases: vec![],
                    })
                    .collect(),
                ..Default::default()
            })),
            status: Some(TaskStatus {
                state: state as i32,
                ..Default::default()
            }),
            network_addresses: addresses
                .iter()
                .map(|(n, a)| NetworkAddress {
                    network_id: n.to_string(),
                    address: a.to_string(),
                })
                .collect(),
            ..Default::default()
        }
    }

    fn state_with(networks: Vec<Network>, tasks: Vec<Task>) -> State {
        let mut state = State::default();
        for mut n in networks {
            if let Some(s) = n.spec.as_mut() {
                s.gateway = "10.0.0.1".into();
            }
            state.networks.insert(n.id.clone(), n);
        }
        for t in tasks {
            state.tasks.insert(t.id.clone(), Box::new(t));
        }
        state
    }

    #[test]
    fn tasks_get_the_lowest_free_address_and_keep_theirs() {
        let state = state_with(
            vec![overlay("o", "10.0.0.0/24", 4096)],
            vec![
                task("live", &["o"], &[("o", "10.0.0.2/24")], TaskState::Running),
                task("ended", &["o"], &[("o", "10.0.0.3/24")], TaskState::Failed),
            ],
        );
        let mut ipam = TaskIpam::new(&state);
        let new = task("new", &["o", "bridge-net"], &[], TaskState::Pending);
        let got = ipam.assign(&new).expect("assigns");
        assert_eq!(got.len(), 1, "bridge networks get no cluster address");
        assert_eq!(
            got[0].address, "10.0.0.3/24",
            "an ended task's address is free again"
        );
        let next = ipam.assign(&new).expect("assigns");
        assert_eq!(next[0].address, "10.0.0.4/24", "taken within the pass");
        let kept = task("k", &["o"], &[("o", "10.0.0.2/24")], TaskState::Assigned);
        assert_eq!(ipam.assign(&kept).expect("keeps")[0].address, "10.0.0.2/24");
    }

    #[test]
    fn services_get_a_virtual_ip_per_overlay_network_unless_dnsrr() {
        use shoal_proto::EndpointSpec;
        let state = state_with(
            vec![overlay("o", "10.0.0.0/24", 4096)],
            vec![task(
                "live",
                &["o"],
                &[("o", "10.0.0.2/24")],
                TaskState::Running,
            )],
        );
        let mut ipam = TaskIpam::new(&state);
        let mut service = Service {
            spec: task("x", &["o", "b"], &[], TaskState::New)
                .spec
                .map(SharedSpec::into_inner),
            ..Default::default()
        };
        let vips = ipam.virtual_ips(&service).expect("new");
        assert_eq!(vips.len(), 1);
        assert_eq!(vips[0].address, "10.0.0.3/24");
        service.virtual_ips = vips;
        assert_eq!(ipam.virtual_ips(&service), None, "kept as it is");
        if let Some(spec) = service.spec.as_mut() {
            spec.endpoint = Some(EndpointSpec {
                ports: vec![],
                mode: "dnsrr".into(),
            });
        }
        assert_eq!(
            ipam.virtual_ips(&service),
            Some(vec![]),
            "dnsrr gives its VIP back"
        );
    }

    #[test]
    fn a_full_network_is_an_error() {
        let state = state_with(vec![overlay("o", "10.0.0.0/30", 4096)], vec![]);
        let mut ipam = TaskIpam::new(&state);
        let t = task("t", &["o"], &[], TaskState::Pending);
        // /30: .1 is the gateway, .2 the only host address left.
        assert_eq!(ipam.assign(&t).expect("one")[0].address, "10.0.0.2/30");
        assert!(ipam
            .assign(&t)
            .expect_err("full")
            .contains("no free address"));
    }
}
