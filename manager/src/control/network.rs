//! Networks in the store: checks on `network create`, and how a service's network targets
//! (names, ids or id prefixes) become network ids before the service is written. Pure.
//!
//! Bridge networks are node-local in effect: the object is cluster-wide (so every node that
//! runs a task of the service makes the same network), the bridge and the addresses are each
//! node's own. Overlay networks span the cluster: [`crate::ipam`] gives them their subnet,
//! VNI and task addresses. A service that names no network goes on the node's default `bridge`.

use std::net::Ipv4Addr;

use shoal_proto::{Network, NetworkSpec, ServiceSpec};

use super::validate::valid_name;
use crate::store::State;

/// The drivers a network may have.
pub const DRIVERS: &[&str] = &["bridge", crate::ipam::OVERLAY];

/// The node-local network of services that name none; not a store object.
pub const DEFAULT_NETWORK: &str = "bridge";

/// Names that `network create` refuses: Docker's predefined networks.
const RESERVED: &[&str] = &["bridge", "host", "none", "default", "ingress"];

/// Parses `a.b.c.d/n` into its network address and prefix length.
pub fn parse_subnet(text: &str) -> Result<(Ipv4Addr, u8), String> {
    let (addr, len) = text
        .split_once('/')
        .ok_or_else(|| format!("invalid subnet {text:?}: use CIDR notation, e.g. 10.1.0.0/24"))?;
    let addr: Ipv4Addr = addr
        .parse()
        .map_err(|_| format!("invalid subnet {text:?}: {addr:?} is not an IPv4 address"))?;
    let len: u8 = len
        .parse()
        .ok()
        .filter(|l| (8..=30).contains(l))
        .ok_or_else(|| format!("invalid subnet {text:?}: the prefix length must be 8 to 30"))?;
    let mask = u32::MAX << (32 - len);
    if u32::from(addr) & !mask != 0 {
        let base = Ipv4Addr::from(u32::from(addr) & mask);
        return Err(format!(
            "invalid subnet {text:?}: host bits are set; did you mean {base}/{len}?"
        ));
    }
    Ok((addr, len))
}

fn contains(net: (Ipv4Addr, u8), ip: Ipv4Addr) -> bool {
    let mask = u32::MAX << (32 - net.1);
    u32::from(ip) & mask == u32::from(net.0)
}

fn overlaps(a: (Ipv4Addr, u8), b: (Ipv4Addr, u8)) -> bool {
    contains(a, b.0) || contains(b, a.0)
}

/// Checks a network spec against itself and the stored networks. Fills the default driver.
pub fn check_network(state: &State, spec: &mut NetworkSpec) -> Result<(), String> {
    if !valid_name(&spec.name) {
        return Err(format!(
            "invalid network name {:?}: use 1-63 letters, digits, '_', '.' or '-', starting with a letter or digit",
            spec.name
        ));
    }
    if RESERVED.contains(&spec.name.as_str()) {
        return Err(format!(
            "network name {:?} is reserved for a predefined network: pick another",
            spec.name
        ));
    }
    if spec.driver.is_empty() {
        spec.driver = "bridge".into();
    }
    if !DRIVERS.contains(&spec.driver.as_str()) {
        return Err(format!(
            "network driver {:?} is not supported: use one of {}",
            spec.driver,
            DRIVERS.join(", ")
        ));
    }
    if let Some(mtu) = spec.mtu {
        if !(68..=65535).contains(&mtu) {
            return Err(format!("invalid MTU {mtu}: use 68 to 65535"));
        }
    }
    if spec.subnet.is_empty() {
        if !spec.gateway.is_empty() || !spec.ip_range.is_empty() {
            return Err("--gateway and --ip-range need --subnet".into());
        }
        return Ok(());
    }
    let subnet = parse_subnet(&spec.subnet)?;
    if !spec.gateway.is_empty() {
        let gw: Ipv4Addr = spec
            .gateway
            .parse()
            .map_err(|_| format!("invalid gateway {:?}: not an IPv4 address", spec.gateway))?;
        if !contains(subnet, gw) {
            return Err(format!(
                "gateway {gw} is outside subnet {}: pick an address inside it",
                spec.subnet
            ));
        }
    }
    if !spec.ip_range.is_empty() {
        let range = parse_subnet(&spec.ip_range)?;
        if range.1 < subnet.1 || !contains(subnet, range.0) {
            return Err(format!(
                "ip range {} is not inside subnet {}",
                spec.ip_range, spec.subnet
            ));
        }
    }
    for other in state.networks.values() {
        let Some(o) = other.spec.as_ref().filter(|o| !o.subnet.is_empty()) else {
            continue;
        };
        if parse_subnet(&o.subnet).is_ok_and(|theirs| overlaps(subnet, theirs)) {
            return Err(format!(
                "subnet {} overlaps subnet {} of network {}: pick another",
                spec.subnet, o.subnet, o.name
            ));
        }
    }
    Ok(())
}

/// A network to create with id `id`: `spec` checked against the store and the networks made
/// in the same write (`planned`), and, for an overlay network, its subnet and VNI chosen.
pub fn new_network(
    state: &State,
    mut spec: NetworkSpec,
    id: String,
    planned: &[&Network],
) -> Result<Network, String> {
    check_network(state, &mut spec)?;
    let vni = if spec.driver == crate::ipam::OVERLAY {
        crate::ipam::allocate_network(
            &mut spec,
            state.networks.values().chain(planned.iter().copied()),
            state
                .cluster
                .as_ref()
                .map(|c| c.overlay_address_pool.as_str())
                .unwrap_or(""),
        )?
    } else {
        0
    };
    Ok(Network {
        id,
        meta: None,
        spec: Some(spec),
        vni,
    })
}

fn name_of(n: &Network) -> &str {
    n.spec.as_ref().map(|s| s.name.as_str()).unwrap_or("")
}

/// A network by id, name, or unique id prefix (Docker's order).
pub fn find_network<'a>(state: &'a State, key: &str) -> Result<&'a Network, String> {
    if let Some(n) = state.networks.get(key) {
        return Ok(n);
    }
    if let Some(n) = state.networks.values().find(|n| name_of(n) == key) {
        return Ok(n);
    }
    let matches: Vec<&Network> = state
        .networks
        .values()
        .filter(|n| !key.is_empty() && n.id.starts_with(key))
        .collect();
    match matches.as_slice() {
        [one] => Ok(one),
        [] => Err(format!("no such network: {key}")),
        _ => Err(format!("network {key:?} is ambiguous: give more of its id")),
    }
}

/// Replaces each network target of `spec` by the network's id. `local` resolves first (a
/// stack's own networks by their short names, to ids not yet stored).
pub fn resolve_targets(
    state: &State,
    spec: &mut ServiceSpec,
    local: &dyn Fn(&str) -> Option<String>,
) -> Result<(), String> {
    let mut seen = Vec::new();
    for attachment in &mut spec.networks {
        let id = match local(&attachment.target) {
            Some(id) => id,
            None => find_network(state, &attachment.target)?.id.clone(),
        };
        if seen.contains(&id) {
            return Err(format!(
                "network {} is given twice: merge its aliases into one entry",
                attachment.target
            ));
        }
        seen.push(id.clone());
        attachment.target = id;
    }
    let mode = spec
        .container
        .as_ref()
        .map(|c| c.network_mode.as_str())
        .unwrap_or("");
    if !mode.is_empty() && !spec.networks.is_empty() {
        return Err(format!(
            "network_mode {mode:?} cannot be combined with networks: give one or the other"
        ));
    }
    let shared = mode.starts_with("container:") || mode.starts_with("service:");
    let ports = spec.endpoint.as_ref().is_some_and(|e| !e.ports.is_empty());
    let hostname = spec
        .container
        .as_ref()
        .is_some_and(|c| !c.hostname.is_empty());
    if shared && (ports || hostname) {
        let what = if ports { "published ports" } else { "hostname" };
        return Err(format!(
            "conflicting options: {what} and network_mode {mode}: a task that shares another \
             container's network namespace has that container's {what}"
        ));
    }
    Ok(())
}

/// The names of the services attached to network `id`.
pub fn users_of(state: &State, id: &str) -> Vec<String> {
    state
        .services
        .values()
        .filter_map(|s| s.spec.as_ref())
        .filter(|s| s.networks.iter().any(|n| n.target == id))
        .map(|s| s.name.clone())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_proto::{ChangeKind, NetworkAttachmentConfig, StoreCommand};

    use crate::store::change;
    use shoal_proto::store_object::Object;

    fn with_network(id: &str, name: &str, subnet: &str) -> State {
        let mut state = State::default();
        let network = Network {
            id: id.into(),
            meta: None,
            spec: Some(NetworkSpec {
                name: name.into(),
                driver: "bridge".into(),
                subnet: subnet.into(),
                ..Default::default()
            }),
            vni: 0,
        };
        let command = StoreCommand {
            request_id: "r".into(),
            changes: vec![change(ChangeKind::Create, Object::Network(network))],
            timestamp: 1,
        };
        state.apply(1, command.clone()).expect("applies");
        state
    }

    fn spec(name: &str, subnet: &str) -> NetworkSpec {
        NetworkSpec {
            name: name.into(),
            subnet: subnet.into(),
            ..Default::default()
        }
    }

    #[test]
    fn subnets_are_checked() {
        assert_eq!(
            parse_subnet("10.1.0.0/24"),
            Ok((Ipv4Addr::new(10, 1, 0, 0), 24))
        );
        assert!(parse_subnet("10.1.0.1/24")
            .unwrap_err()
            .contains("10.1.0.0/24"));
        assert!(parse_subnet("10.1.0.0").is_err());
        assert!(parse_subnet("10.1.0.0/31").is_err());
        let state = with_network("n1", "front", "10.1.0.0/16");
        let err = check_network(&state, &mut spec("back", "10.1.2.0/24")).unwrap_err();
        assert!(err.contains("overlaps") && err.contains("front"), "{err}");
        let mut ok = spec("back", "10.2.0.0/24");
        check_network(&state, &mut ok).expect("no overlap");
        assert_eq!(ok.driver, "bridge");
        let mut gw = spec("gw", "10.3.0.0/24");
        gw.gateway = "10.4.0.1".into();
        assert!(check_network(&state, &mut gw)
            .unwrap_err()
            .contains("outside"));
        assert!(check_network(&state, &mut spec("host", "")).is_err());
        let mut overlay = spec("o", "");
        overlay.driver = "macvlan".into();
        assert!(check_network(&state, &mut overlay)
            .unwrap_err()
            .contains("not supported"));
    }

    #[test]
    fn a_shared_namespace_refuses_ports_and_hostname() {
        let state = State::default();
        let shared = |hostname: &str, ports: bool| ServiceSpec {
            container: Some(shoal_proto::ContainerSpec {
                network_mode: "service:app_web".into(),
                hostname: hostname.into(),
                ..Default::default()
            }),
            endpoint: ports.then(|| shoal_proto::EndpointSpec {
                ports: vec![shoal_proto::PortConfig::default()],
                mode: String::new(),
            }),
            ..Default::default()
        };
        resolve_targets(&state, &mut shared("", false), &|_| None).expect("plain sharing");
        let err = resolve_targets(&state, &mut shared("", true), &|_| None).unwrap_err();
        assert!(
            err.starts_with("conflicting options: published ports and network_mode service:"),
            "{err}"
        );
        let err = resolve_targets(&state, &mut shared("h", false), &|_| None).unwrap_err();
        assert!(err.starts_with("conflicting options: hostname"), "{err}");
    }

    #[test]
    fn targets_become_ids() {
        let state = with_network("abcdef", "front", "");
        let mut s = ServiceSpec {
            networks: vec![
                NetworkAttachmentConfig {
                    target: "front".into(),
                    aliases: vec![],
                },
                NetworkAttachmentConfig {
                    target: "mine".into(),
                    aliases: vec![],
                },
            ],
            ..Default::default()
        };
        let local = |t: &str| (t == "mine").then(|| "new-id".to_string());
        resolve_targets(&state, &mut s, &local).expect("resolves");
        assert_eq!(s.networks[0].target, "abcdef");
        assert_eq!(s.networks[1].target, "new-id");
        let mut s = ServiceSpec {
            networks: vec![NetworkAttachmentConfig {
                target: "nope".into(),
                aliases: vec![],
            }],
            ..Default::default()
        };
        let none = |_: &str| None;
        assert!(resolve_targets(&state, &mut s, &none)
            .unwrap_err()
            .contains("no such network"));
        assert_eq!(
            find_network(&state, "abc").map(|n| n.id.as_str()),
            Ok("abcdef")
        );
    }
}
